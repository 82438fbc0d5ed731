/* sample.c — nucleus (top-p) sampling.
 *
 * Tokens are ranked by probability, descending, equal probabilities by token id, so the
 * nucleus and the draw depend only on (p, top_p, rng) and never on the sort's stability.
 */
#include <stdio.h>
#include <stdlib.h>

#include "pocrt.h"

typedef struct { double p; int id; } smp_entry;

static int smp_cmp(const void *a, const void *b) {
  const smp_entry *x = a, *y = b;
  if (x->p != y->p) return x->p > y->p ? -1 : 1;
  return (x->id > y->id) - (x->id < y->id);
}

/* Nucleus: the shortest prefix k of the ranking with Σ_{i<k} p_i >= top_p · Σ p (the
 * distribution may arrive unnormalised by rounding), then u ~ U[0, mass) picks the first
 * token whose running sum exceeds u. */
int poc_sample_top_p(const double *p, int V, double top_p, poc_rng *rng) {
  smp_entry *e = malloc((size_t)V * sizeof *e);
  double total = 0, pbest = 0;
  int best = 0;
  for (int v = 0; v < V; v++) {
    double pv = p[v] > 0 ? p[v] : 0; /* NaN and negatives count as zero */
    total += pv;
    if (pv > pbest) pbest = pv, best = v;
  }
  if (!e || !(total > 0)) {
    /* no memory for the ranking, or a degenerate distribution: the most likely token */
    free(e);
    return best;
  }
  for (int v = 0; v < V; v++) e[v] = (smp_entry){p[v] > 0 ? p[v] : 0, v};
  qsort(e, (size_t)V, sizeof *e, smp_cmp);
  double want = top_p < 1 ? top_p * total : total, mass = 0;
  int k = 0;
  while (k < V && e[k].p > 0) {
    mass += e[k++].p;
    if (mass >= want) break;
  }
  if (k == 0) k = 1;
  double u = poc_rng_uniform(rng) * mass, run = 0;
  int pick = e[k - 1].id;
  for (int i = 0; i < k; i++) {
    run += e[i].p;
    if (u < run) {
      pick = e[i].id;
      break;
    }
  }
  free(e);
  return pick;
}

int poc_generate_check(int V, const int32_t *prompt, int n_prompt, int max_new,
                       double temperature, const poc_rng *rng, char *err) {
  if (n_prompt <= 0 || max_new < 0) {
    snprintf(err, POC_ERR_LEN, "generate: the prompt must be non-empty and the token count "
             "non-negative (got %d prompt tokens, %d new)", n_prompt, max_new);
    return -1;
  }
  for (int i = 0; i < n_prompt; i++)
    if (prompt[i] < 0 || prompt[i] >= V) {
      snprintf(err, POC_ERR_LEN, "generate: prompt token %d (at %d) is outside the "
               "vocabulary (%d)", prompt[i], i, V);
      return -1;
    }
  if (temperature > 0 && !rng) {
    snprintf(err, POC_ERR_LEN, "generate: sampling needs a random stream");
    return -1;
  }
  return 0;
}
