/* pack.c — counting the per-token outputs of a packed batch. */
#include "pocrt.h"

int poc_pack_targets(const poc_pack *p) {
  int n = 0;
  for (int s = 0; s < p->n_seq; s++) n += p->seq_start[s + 1] - p->tgt_start[s];
  return n;
}
