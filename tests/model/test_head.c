/* test_head.c — the fused loss head against the textbook one (full logits, log-softmax,
 * gather, POC_FWD_UNFUSED), values and gradients, with entropy, on the float ("cpu") and
 * double ("cpu64") devices: vocabularies below, at and across the device's chunk
 * boundaries, more rows than one row block, and logits large enough that a naive exp
 * overflows.
 *
 * The head is reached through whole-model forwards and backwards. To know what it was
 * given, the models here have zero o_proj and down_proj weights: every layer then adds
 * nothing to the residual stream, the final hidden state of a row is its token's
 * embedding, and the head's input is rmsnorm(E[token])·w_norm — which a direct
 * long-double evaluation reproduces. The textbook head is itself checked against finite
 * differences. */
#include "mt.h"
#include "cpu/cpu_features.h"

/* Weights of the "identity layers" model: embeddings and lm_head ~ U(±1), the final norm
 * `scale` everywhere (it sets the logits' size), o_proj and down_proj zero. */
static void identity_weights(const poc_layout *lay, double *w, double scale, uint64_t seed) {
  mt_weights(lay, w, seed);
  poc_rng r;
  poc_rng_seed(&r, seed + 100);
  for (int i = 0; i < lay->n_tensors; i++) {
    const poc_tensor_info *t = &lay->tensors[i];
    double *p = w + t->offset;
    if (strstr(t->name, "o_proj.weight") || strstr(t->name, "down_proj.weight"))
      memset(p, 0, t->numel * sizeof *p);
    else if (!strcmp(t->name, "model.norm.weight"))
      for (size_t j = 0; j < t->numel; j++) p[j] = scale;
    else if (!strcmp(t->name, "lm_head.weight"))
      for (size_t j = 0; j < t->numel; j++) p[j] = mt_uniform(&r);
  }
}

/* Direct reference of one target: logp and entropy, in long double, from the token u
 * before it (whose embedding is the row's final hidden state). */
static void ref_row(const poc_layout *lay, const double *w, int u, int t, double *logp,
                    double *ent) {
  const int H = lay->cfg.hidden_size, V = lay->cfg.vocab_size;
  const double *E = w + poc_layout_find(lay, "model.embed_tokens.weight")->offset;
  const double *g = w + poc_layout_find(lay, "model.norm.weight")->offset;
  const double *W = w + poc_layout_find(lay, "lm_head.weight")->offset;
  long double ms = 0, h[64];
  for (int k = 0; k < H; k++) ms += (long double)E[(size_t)u * H + k] * E[(size_t)u * H + k];
  long double rs = 1 / sqrtl(ms / H + lay->cfg.rms_norm_eps);
  for (int k = 0; k < H; k++) h[k] = E[(size_t)u * H + k] * rs * g[k];
  long double mx = -1e300L, s = 0, sl = 0;
  long double *l = malloc((size_t)V * sizeof *l);
  for (int v = 0; v < V; v++) {
    long double z = 0;
    for (int k = 0; k < H; k++) z += h[k] * W[(size_t)v * H + k];
    l[v] = z;
    if (z > mx) mx = z;
  }
  for (int v = 0; v < V; v++) s += expl(l[v] - mx);
  long double lse = mx + logl(s);
  for (int v = 0; v < V; v++) sl += expl(l[v] - lse) * l[v];
  *logp = (double)(l[t] - lse);
  *ent = (double)(lse - sl);
  free(l);
}

/* A pack with n targets: sequences of one context token and up to 180 targets. Targets
 * span the whole vocabulary, the first two being the last and the first column. */
typedef struct {
  poc_pack p;
  int32_t *tok, *ss, *ts;
} hd_pack;

static void hd_pack_make(hd_pack *hp, int n, int V, poc_rng *r) {
  int nseq = (n + 179) / 180, T = n + nseq;
  hp->tok = malloc((size_t)T * sizeof(int32_t));
  hp->ss = malloc((size_t)(nseq + 1) * sizeof(int32_t));
  hp->ts = malloc((size_t)nseq * sizeof(int32_t));
  int at = 0, done = 0;
  for (int s = 0; s < nseq; s++) {
    int k = n - done < 180 ? n - done : 180;
    hp->ss[s] = at;
    hp->ts[s] = at + 1;
    hp->tok[at++] = (int32_t)(poc_rng_next(r) % V);
    for (int j = 0; j < k; j++, done++)
      hp->tok[at++] = done == 0 ? V - 1 : done == 1 ? 0 : (int32_t)(poc_rng_next(r) % V);
  }
  hp->ss[nseq] = at;
  hp->p = (poc_pack){nseq, at, hp->tok, hp->ss, hp->ts};
}

static void hd_pack_free(hd_pack *hp) {
  free(hp->tok);
  free(hp->ss);
  free(hp->ts);
}

/* Each target of the pack and the token before it, in target order. */
static void hd_targets(const hd_pack *hp, int32_t *u, int32_t *tgt) {
  int i = 0;
  for (int s = 0; s < hp->p.n_seq; s++)
    for (int t = hp->ts[s]; t < hp->ss[s + 1]; t++, i++) {
      u[i] = hp->tok[t - 1];
      tgt[i] = hp->tok[t];
    }
}

/* Forward with entropy and backward from seeds g, e on a fresh trainable model whose
 * gradient starts at 0.5 everywhere (the head must accumulate onto it); returns the
 * gradient minus that 0.5. */
static void run(poc_device *d, const poc_layout *lay, const double *w, const hd_pack *hp,
                int flags, const double *g, const double *e, double *lp, double *en,
                double *grad) {
  char err[POC_ERR_LEN];
  size_t P = lay->n_params;
  poc_model *m = mt_model(d, lay, w, 1, hp->p.n_tok);
  for (size_t i = 0; i < P; i++) grad[i] = 0.5;
  CHECK_MSG(poc_model_set(m, POC_PART_GRAD, grad, POC_DT_F64, err) == 0, "%s", err);
  CHECK_MSG(poc_model_forward(m, &hp->p, flags | POC_FWD_SAVE | POC_FWD_ENTROPY, lp, en, err) == 0,
            "%s", err);
  CHECK_MSG(poc_model_backward(m, &hp->p, g, e, err) == 0, "%s", err);
  mt_grad(m, grad);
  for (size_t i = 0; i < P; i++) grad[i] -= 0.5;
  poc_model_free(m);
}

static double max_abs_diff(const double *a, const double *b, size_t n, double *scale) {
  double d = 0;
  for (size_t i = 0; i < n; i++) {
    d = fmax(d, fabs(a[i] - b[i]));
    if (scale) *scale = fmax(*scale, fabs(b[i]));
  }
  return d;
}

static void head_case(poc_device *d64, poc_device *d32, const char *name, int n, int H, int V,
                      double scale, uint64_t seed) {
  char err[POC_ERR_LEN];
  poc_config cfg = mt_config(H, 8, V, 1, H / 4, 1, 4, 0, 0, 0);
  poc_layout lay;
  CHECK(poc_layout_init(&lay, &cfg, err) == 0);
  size_t P = lay.n_params;
  double *w = malloc(P * sizeof *w);
  identity_weights(&lay, w, scale, seed);
  poc_rng r;
  poc_rng_seed(&r, seed + 1);
  hd_pack hp;
  hd_pack_make(&hp, n, V, &r);
  CHECK(poc_pack_targets(&hp.p) == n);
  double *g = malloc((size_t)n * sizeof *g), *e = malloc((size_t)n * sizeof *e);
  for (int i = 0; i < n; i++) {
    g[i] = mt_uniform(&r);
    e[i] = mt_uniform(&r);
  }
  /* [0] fused, [1] textbook: float64, then float32 */
  double *lp[2], *en[2], *gr[2], *lpf[2], *enf[2], *grf[2];
  for (int f = 0; f < 2; f++) {
    lp[f] = malloc((size_t)n * sizeof(double));
    en[f] = malloc((size_t)n * sizeof(double));
    lpf[f] = malloc((size_t)n * sizeof(double));
    enf[f] = malloc((size_t)n * sizeof(double));
    gr[f] = malloc(P * sizeof(double));
    grf[f] = malloc(P * sizeof(double));
    int flags = f ? POC_FWD_UNFUSED : 0;
    run(d64, &lay, w, &hp, flags, g, e, lp[f], en[f], gr[f]);
    run(d32, &lay, w, &hp, flags, g, e, lpf[f], enf[f], grf[f]);
  }

  /* float64: fused vs textbook */
  int bad = 0;
  for (int i = 0; i < n; i++) {
    bad += fabs(lp[0][i] - lp[1][i]) > 1e-12 * (1 + fabs(lp[1][i]));
    bad += fabs(en[0][i] - en[1][i]) > 1e-12 * (1 + fabs(en[1][i]));
  }
  CHECK_MSG(bad == 0, "%s: f64 fused and textbook values differ in %d places", name, bad);
  double gscale = 0, dmax = max_abs_diff(gr[0], gr[1], P, &gscale);
  CHECK_MSG(dmax < 1e-11 * fmax(gscale, 1), "%s: f64 fused and textbook gradients differ by %g",
            name, dmax);
  /* the head's input is known: every value against the long-double evaluation */
  int32_t *u = malloc((size_t)n * sizeof *u), *tgt = malloc((size_t)n * sizeof *tgt);
  hd_targets(&hp, u, tgt);
  CHECK(tgt[0] == V - 1 && tgt[1] == 0);
  int rows = n < 64 ? n : 64;
  for (int i = 0; i < rows; i++) {
    double rl, re;
    ref_row(&lay, w, u[i], tgt[i], &rl, &re);
    CHECK_NEAR(lp[0][i], rl, 1e-11);
    CHECK_NEAR(en[0][i], re, 1e-11);
  }
  for (int i = 0; i < n; i++)
    CHECK(lp[0][i] <= 0 && en[0][i] >= -1e-12 && en[0][i] <= log(V) + 1e-9);
  /* the head's gradient reached lm_head, the final norm and the embeddings */
  const char *must[] = {"lm_head.weight", "model.norm.weight", "model.embed_tokens.weight"};
  for (int k = 0; k < 3; k++) {
    const poc_tensor_info *ti = poc_layout_find(&lay, must[k]);
    double s = 0;
    for (size_t j = 0; j < ti->numel; j++) s += fabs(gr[0][ti->offset + j]);
    CHECK_MSG(s > 0, "%s: %s has no gradient", name, must[k]);
  }

  /* float32: fused and textbook vs float64 */
  bad = 0;
  for (int i = 0; i < n; i++)
    for (int f = 0; f < 2; f++) {
      bad += fabs(lpf[f][i] - lp[1][i]) > 2e-5 * (1 + fabs(lp[1][i]));
      bad += fabs(enf[f][i] - en[1][i]) > 2e-5 * (1 + fabs(en[1][i]));
    }
  CHECK_MSG(bad == 0, "%s: f32 values off float64 in %d places", name, bad);
  double gmax = fmax(max_abs_diff(grf[0], gr[1], P, NULL), max_abs_diff(grf[1], gr[1], P, NULL));
  CHECK_MSG(gmax <= 1e-4 * fmax(gscale, 1), "%s: f32 gradients off float64 by %g (scale %g)",
            name, gmax, gscale);
  printf("%s: %d rows, V %d: f64 fused vs textbook %.1e, f32 vs f64 gradients %.1e (scale %.2g)\n",
         name, n, V, dmax, gmax, gscale);
  for (int f = 0; f < 2; f++) {
    free(lp[f]); free(en[f]); free(gr[f]); free(lpf[f]); free(enf[f]); free(grf[f]);
  }
  free(w); free(g); free(e); free(u); free(tgt);
  hd_pack_free(&hp);
  poc_layout_free(&lay);
}

/* Finite differences of the textbook head in float64, with the entropy term, with respect
 * to lm_head, the final norm and the embeddings (the head's W and, through rmsnorm, h). */
static void head_fd(poc_device *d64) {
  char err[POC_ERR_LEN];
  const int n = 3, V = 11;
  poc_config cfg = mt_config(8, 8, V, 1, 2, 1, 4, 0, 0, 0);
  poc_layout lay;
  CHECK(poc_layout_init(&lay, &cfg, err) == 0);
  size_t P = lay.n_params;
  double *w = malloc(P * sizeof *w), *grad = malloc(P * sizeof *grad);
  identity_weights(&lay, w, 2.0, 5);
  int32_t tok[4] = {3, 0, 10, 4}, ss[2] = {0, 4}, ts[1] = {1};
  poc_pack p = {1, 4, tok, ss, ts};
  poc_rng r;
  poc_rng_seed(&r, 5);
  double g[3], e[3], lp[3], en[3];
  for (int i = 0; i < n; i++) {
    g[i] = mt_uniform(&r);
    e[i] = mt_uniform(&r);
  }
  poc_model *m = mt_model(d64, &lay, w, 1, 4);
  CHECK(poc_model_forward(m, &p, POC_FWD_UNFUSED | POC_FWD_SAVE | POC_FWD_ENTROPY, lp, en, err) == 0);
  CHECK(poc_model_backward(m, &p, g, e, err) == 0);
  mt_grad(m, grad);
  const char *names[] = {"lm_head.weight", "model.norm.weight", "model.embed_tokens.weight"};
  int checked = 0;
  for (int k = 0; k < 3; k++) {
    const poc_tensor_info *ti = poc_layout_find(&lay, names[k]);
    for (size_t j = 0; j < ti->numel; j++) {
      size_t i = ti->offset + j;
      double L[2], save = w[i];
      for (int sgn = 0; sgn < 2; sgn++) {
        w[i] = save + (sgn ? -1e-6 : 1e-6);
        CHECK(poc_model_set(m, POC_PART_WEIGHTS, w, POC_DT_F64, err) == 0);
        CHECK(poc_model_forward(m, &p, POC_FWD_UNFUSED | POC_FWD_ENTROPY, lp, en, err) == 0);
        L[sgn] = 0;
        for (int q = 0; q < n; q++) L[sgn] += g[q] * lp[q] + e[q] * en[q];
      }
      w[i] = save;
      CHECK_NEAR(grad[i], (L[0] - L[1]) / 2e-6, 1e-7);
      checked++;
    }
  }
  CHECK(checked > 100);
  poc_model_free(m);
  free(w);
  free(grad);
  poc_layout_free(&lay);
}

int main(void) {
  poc_cpu_start(0, NULL); /* the GEMM kernels the processor allows */
  poc_device *d64 = mt_device("cpu64"), *d32 = mt_device("cpu");
  /* The device's chunk for blocks of few rows; blocks of head_rows rows may stream it in
   * narrower chunks (device.h), which the 1100-row cases cross. */
  const int C = d32->head_chunk;
  CHECK(d64->head_chunk == C && C >= 256);
  head_fd(d64);
  head_case(d64, d32, "small_vocab", 9, 8, 37, 1.0, 1);
  head_case(d64, d32, "one_full_chunk", 5, 8, C, 1.0, 2);
  head_case(d64, d32, "two_chunks_and_a_bit", 7, 8, 2 * C + 37, 1.0, 3);
  head_case(d64, d32, "many_row_blocks", 1100, 4, 45, 1.0, 4);
  head_case(d64, d32, "threaded_rows", 600, 8, C + 52, 1.0, 6);
  /* two row blocks, each streaming the vocabulary in the narrower chunks of big blocks */
  head_case(d64, d32, "row_blocks_and_chunks", 1100, 4, C + 52, 1.0, 7);
  /* logits of several hundred: exp(l) overflows in float32 without the running max */
  head_case(d64, d32, "large_logits", 6, 8, C + 5, 60.0, 5);
  /* Blocks of 5 rows × 64 columns whatever the device's own sizes, so the streaming
   * loops' ragged last row block and last chunk are crossed many times. The model reads
   * these when it is made; they only shrink what the device planned for. */
  int rows[2] = {d64->head_rows, d32->head_rows}, chunk[2] = {d64->head_chunk, d32->head_chunk};
  d64->head_rows = d32->head_rows = 5;
  d64->head_chunk = d32->head_chunk = 64;
  head_case(d64, d32, "small_blocks", 23, 8, 300, 3.0, 8);
  d64->head_rows = rows[0];
  d32->head_rows = rows[1];
  d64->head_chunk = chunk[0];
  d32->head_chunk = chunk[1];
  poc_device_close(d32);
  poc_device_close(d64);
  return check_summary("model_head");
}
