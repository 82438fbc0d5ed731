/* wpo_head.c — the loss head's per-token outputs on a model folder, for the checks in
 * tests/wpo: logp, entropy and logsumsq (log Σ_v p(v)²) of every target token, one line a
 * token, "%.17g %.17g %.17g", in pack order.
 *
 *   wpo_head MODEL_DIR SEQS BACKEND fused|unfused CHUNK ROWS
 *
 * SEQS has one sequence a line, "context ids|target ids" as comma-separated token ids.
 * CHUNK > 0 narrows the fused head's vocabulary chunk (so the online rescaling between
 * chunks is exercised on a small vocabulary) and ROWS > 0 its row block; 0 keeps the
 * device's choice. BACKEND is a device name (cpu, cpu64, cuda). */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "device.h"
#include "pocrt.h"

#define MAXTOK 4096
#define MAXSEQ 256

static int parse_ids(char *s, int32_t *out, int cap) {
  int n = 0;
  for (char *t = strtok(s, ","); t; t = strtok(NULL, ",")) {
    char *end;
    long v = strtol(t, &end, 10);
    if (end == t || n == cap) return -1;
    out[n++] = (int32_t)v;
  }
  return n;
}

int main(int argc, char **argv) {
  if (argc != 7) {
    fprintf(stderr, "usage: wpo_head MODEL_DIR SEQS BACKEND fused|unfused CHUNK ROWS\n");
    return 2;
  }
  static int32_t tok[MAXTOK], seq_start[MAXSEQ + 1], tgt_start[MAXSEQ];
  int n_seq = 0, n_tok = 0;
  FILE *f = fopen(argv[2], "r");
  if (!f) {
    fprintf(stderr, "wpo_head: %s: cannot open\n", argv[2]);
    return 2;
  }
  char line[16384];
  while (fgets(line, sizeof line, f)) {
    char *bar = strchr(line, '|');
    if (!bar || n_seq == MAXSEQ) {
      fprintf(stderr, "wpo_head: %s: a line is not 'context|target' (or too many lines)\n", argv[2]);
      return 2;
    }
    *bar = 0;
    seq_start[n_seq] = n_tok;
    int nc = parse_ids(line, tok + n_tok, MAXTOK - n_tok);
    if (nc < 1) return 2;
    n_tok += nc;
    tgt_start[n_seq] = n_tok;
    int nt = parse_ids(bar + 1, tok + n_tok, MAXTOK - n_tok);
    if (nt < 0) return 2;
    n_tok += nt;
    n_seq++;
  }
  fclose(f);
  seq_start[n_seq] = n_tok;

  char err[POC_ERR_LEN] = "";
  poc_config cfg;
  poc_layout lay;
  if (poc_config_load(argv[1], &cfg, err) || poc_layout_init(&lay, &cfg, err)) {
    fprintf(stderr, "wpo_head: %s\n", err);
    return 2;
  }
  float *w = malloc(lay.n_params * sizeof *w);
  if (!w || poc_weights_load_f32(argv[1], &lay, w, err)) {
    fprintf(stderr, "wpo_head: %s\n", w ? err : "out of memory");
    return 2;
  }
  poc_device *d = poc_device_open(argv[3], err);
  if (!d) {
    fprintf(stderr, "wpo_head: %s: %s\n", argv[3], err);
    return 77;
  }
  int chunk = atoi(argv[5]), rows = atoi(argv[6]);
  if (chunk > 0) d->head_chunk = chunk;
  if (rows > 0) d->head_rows = rows;
  poc_model *m = poc_model_new(d, &lay, w, POC_DT_F32, 0, n_tok, err);
  if (!m) {
    fprintf(stderr, "wpo_head: %s\n", err);
    return 1;
  }
  poc_pack p = {n_seq, n_tok, tok, seq_start, tgt_start};
  int n = poc_pack_targets(&p);
  double *lp = malloc((size_t)(n + 1) * sizeof *lp), *en = malloc((size_t)(n + 1) * sizeof *en),
         *ls = malloc((size_t)(n + 1) * sizeof *ls);
  poc_fwd_out o = {lp, en, ls};
  int flags = POC_FWD_ENTROPY | POC_FWD_LOGSUMSQ |
              (!strcmp(argv[4], "unfused") ? POC_FWD_UNFUSED : 0);
  if (!lp || !en || !ls || poc_model_forward_out(m, &p, flags, &o, err)) {
    fprintf(stderr, "wpo_head: %s\n", lp && en && ls ? err : "out of memory");
    return 1;
  }
  for (int i = 0; i < n; i++) printf("%.17g %.17g %.17g\n", lp[i], en[i], ls[i]);
  poc_model_free(m);
  poc_device_close(d);
  poc_layout_free(&lay);
  free(w);
  free(lp);
  free(en);
  free(ls);
  return 0;
}
