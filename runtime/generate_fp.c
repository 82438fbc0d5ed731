/* generate_fp.c — decoding with a KV cache.
 *
 * The prompt is run once (prefill), writing every layer's roped keys and values into the
 * cache; each new token then runs as a single row at position p that attends to cache
 * rows [0, p]. The layer math is model_fp.c's, through the same concern functions, so a
 * cached step computes what the full forward would for that row.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "model_internal.h"

typedef struct FP(poc_model) model;

typedef struct {
  int rows;                     /* the most rows one step runs (the prompt) */
  int n_ctx;                    /* cache rows: prompt + new tokens */
  real *kc, *vc;                /* [L][n_ctx×kvd] */
  real *x, *xn, *a;             /* [rows×H] */
  real *q, *att, *lse;          /* [rows×qd], [rows×qd], [rows×nh] */
  real *g, *u;                  /* [rows×F] */
  real *cosb, *sinb;            /* [rows×hd/2] */
  int32_t *pos, *kbeg, *kend;   /* [rows] */
  real *logits;                 /* [V] of the last row */
  double *prob;                 /* [V] */
} gen_state;

static void gen_free(gen_state *g) {
  void *ps[] = {g->kc, g->vc, g->x, g->xn, g->a, g->q, g->att, g->lse, g->g, g->u,
                g->cosb, g->sinb, g->pos, g->kbeg, g->kend, g->logits, g->prob};
  for (size_t i = 0; i < sizeof ps / sizeof ps[0]; i++) free(ps[i]);
}

static int gen_alloc(gen_state *g, const model *m, int rows, int n_ctx) {
  memset(g, 0, sizeof *g);
  g->rows = rows;
  g->n_ctx = n_ctx;
  size_t R = (size_t)rows, cache = (size_t)m->L * n_ctx * m->kvd;
#define A(p, n) ((p) = malloc((size_t)(n) * sizeof *(p))) == NULL
  if (A(g->kc, cache) || A(g->vc, cache) || A(g->x, R * m->H) || A(g->xn, R * m->H) ||
      A(g->a, R * m->H) || A(g->q, R * m->qd) || A(g->att, R * m->qd) ||
      A(g->lse, R * m->nh) || A(g->g, R * m->F) || A(g->u, R * m->F) ||
      A(g->cosb, R * (m->hd / 2)) || A(g->sinb, R * (m->hd / 2)) || A(g->pos, R) ||
      A(g->kbeg, R) || A(g->kend, R) || A(g->logits, m->V) || A(g->prob, m->V)) {
#undef A
    gen_free(g);
    return -1;
  }
  return 0;
}

/* Runs n tokens at positions p0.. through the model with the cache, leaving the logits
 * of the last one in g->logits. */
static void gen_step(model *m, gen_state *g, const int32_t *tok, int n, int p0) {
  const int H = m->H, F = m->F;
  for (int i = 0; i < n; i++) {
    memcpy(g->x + (size_t)i * H, m->w + m->off_embed + (size_t)tok[i] * H,
           (size_t)H * sizeof(real));
    g->pos[i] = p0 + i;
    g->kbeg[i] = 0;
    g->kend[i] = p0 + i + 1;
  }
  FP(mdl_rope_tables)(m, n, g->pos, g->cosb, g->sinb);
  const size_t nH = (size_t)n * H;
  for (int l = 0; l < m->L; l++) {
    const FP(mdl_layer_off) *o = &m->lo[l];
    real *K = g->kc + (size_t)l * g->n_ctx * m->kvd, *Vc = g->vc + (size_t)l * g->n_ctx * m->kvd;
    real *Kn = K + (size_t)p0 * m->kvd, *Vn = Vc + (size_t)p0 * m->kvd;
    const real *bq = o->bq == MDL_NO_BIAS ? NULL : m->w + o->bq;
    const real *bk = o->bk == MDL_NO_BIAS ? NULL : m->w + o->bk;
    const real *bv = o->bv == MDL_NO_BIAS ? NULL : m->w + o->bv;
    FP(mdl_rmsnorm)(n, H, g->x, m->w + o->ln1, m->eps, g->xn, NULL);
    FP(mdl_linear)(n, H, m->qd, g->xn, m->w + o->wq, bq, g->q);
    FP(mdl_linear)(n, H, m->kvd, g->xn, m->w + o->wk, bk, Kn);
    FP(mdl_linear)(n, H, m->kvd, g->xn, m->w + o->wv, bv, Vn);
    FP(mdl_rope)(n, m->nh, m->hd, g->q, g->cosb, g->sinb);
    FP(mdl_rope)(n, m->nkv, m->hd, Kn, g->cosb, g->sinb);
    FP(mdl_attention)(n, m->nh, m->nkv, m->hd, g->q, K, Vc, g->kbeg, g->kend, g->att, g->lse);
    FP(mdl_linear)(n, m->qd, H, g->att, m->w + o->wo, o->bo == MDL_NO_BIAS ? NULL : m->w + o->bo, g->a);
    for (size_t i = 0; i < nH; i++) g->x[i] += g->a[i];
    FP(mdl_rmsnorm)(n, H, g->x, m->w + o->ln2, m->eps, g->xn, NULL);
    FP(mdl_linear)(n, H, F, g->xn, m->w + o->wg, NULL, g->g);
    FP(mdl_linear)(n, H, F, g->xn, m->w + o->wu, NULL, g->u);
    FP(mdl_swiglu)((size_t)n * F, g->g, g->u, g->g);
    FP(mdl_linear)(n, F, H, g->g, m->w + o->wd, NULL, g->a);
    for (size_t i = 0; i < nH; i++) g->x[i] += g->a[i];
  }
  const real *last = g->x + (size_t)(n - 1) * H;
  FP(mdl_rmsnorm)(1, H, last, m->w + m->off_norm, m->eps, g->xn, NULL);
  FP(mdl_linear)(1, H, m->V, g->xn, m->w + m->off_head, NULL, g->logits);
}

/* Greedy: the first token of highest logit. Sampling: p ∝ exp((l − max)/T), then top-p. */
static int gen_pick(const model *m, gen_state *g, double temperature, double top_p,
                    poc_rng *rng) {
  const real *l = g->logits;
  int best = 0;
  for (int v = 1; v < m->V; v++)
    if (l[v] > l[best]) best = v;
  if (temperature <= 0) return best;
  double mx = l[best], s = 0;
  for (int v = 0; v < m->V; v++) s += g->prob[v] = exp(((double)l[v] - mx) / temperature);
  for (int v = 0; v < m->V; v++) g->prob[v] /= s;
  return poc_sample_top_p(g->prob, m->V, top_p, rng);
}

int FP(poc_generate)(model *m, const int32_t *prompt, int n_prompt, int max_new,
                     double temperature, double top_p, int eos, poc_rng *rng, int32_t *out,
                     char *err) {
  if (poc_generate_check(m->V, prompt, n_prompt, max_new, temperature, rng, err)) return -1;
  if (max_new == 0) return 0;
  int n_ctx = n_prompt + max_new, win = m->lay->cfg.sliding_window;
  if (win > 0 && n_ctx > win) {
    snprintf(err, POC_ERR_LEN, "generate: %d prompt + %d new tokens exceed the sliding "
             "window (%d)", n_prompt, max_new, win);
    return -1;
  }
  gen_state g;
  if (gen_alloc(&g, m, n_prompt, n_ctx)) {
    snprintf(err, POC_ERR_LEN, "generate: out of memory for a %d-token KV cache", n_ctx);
    return -1;
  }
  gen_step(m, &g, prompt, n_prompt, 0);
  int k = 0;
  while (k < max_new) {
    int32_t tok = gen_pick(m, &g, temperature, top_p, rng);
    out[k++] = tok;
    if (tok == eos || k == max_new) break;
    gen_step(m, &g, &tok, 1, n_prompt + k - 1);
  }
  gen_free(&g);
  return k;
}
