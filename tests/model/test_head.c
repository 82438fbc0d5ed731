/* test_head.c — the fused loss head against the textbook one (full logits, log-softmax,
 * gather), values and gradients, with entropy, in both precisions: vocabularies below,
 * at and across chunk boundaries (V = 2·POC_HEAD_CHUNK + 37), more rows than one row
 * block, and logits large enough that a naive exp overflows. The textbook head is itself
 * checked against a direct long-double evaluation and finite differences. */
#include "mt.h"
#include "cpu/cpu_kernels.h"

/* Direct reference of one row: logp of target and entropy, in long double. */
static void ref_row(int H, int V, const double *h, const double *W, int t, double *logp,
                    double *ent) {
  long double mx = -1e300L, s = 0, sl = 0;
  long double *l = malloc((size_t)V * sizeof *l);
  for (int v = 0; v < V; v++) {
    long double z = 0;
    for (int k = 0; k < H; k++) z += (long double)h[k] * W[(size_t)v * H + k];
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

static void head_case(const char *name, int n, int H, int V, double scale, uint64_t seed) {
  poc_rng r;
  poc_rng_seed(&r, seed);
  size_t nh = (size_t)n * H, vh = (size_t)V * H;
  double *h = malloc(nh * sizeof *h), *W = malloc(vh * sizeof *W);
  int32_t *tgt = malloc((size_t)n * sizeof *tgt);
  double *g = malloc((size_t)n * sizeof *g), *e = malloc((size_t)n * sizeof *e);
  for (size_t i = 0; i < nh; i++) h[i] = scale * mt_uniform(&r);
  for (size_t i = 0; i < vh; i++) W[i] = mt_uniform(&r);
  for (int i = 0; i < n; i++) {
    /* targets across the whole vocabulary, including the last column of the last chunk */
    tgt[i] = i == 0 ? V - 1 : i == 1 ? 0 : (int32_t)(poc_rng_next(&r) % V);
    g[i] = mt_uniform(&r);
    e[i] = mt_uniform(&r);
  }
  /* float64: fused vs textbook */
  double *lp[2], *en[2], *dh[2], *dW[2];
  for (int f = 0; f < 2; f++) {
    lp[f] = malloc((size_t)n * sizeof(double));
    en[f] = malloc((size_t)n * sizeof(double));
    dh[f] = malloc(nh * sizeof(double));
    dW[f] = malloc(vh * sizeof(double));
    for (size_t i = 0; i < vh; i++) dW[f][i] = 0.5; /* accumulation onto existing values */
    poc_head_forward_f64(n, H, V, h, W, tgt, f, lp[f], en[f]);
    poc_head_backward_f64(n, H, V, h, W, tgt, g, e, f, dh[f], dW[f]);
  }
  int bad = 0;
  for (int i = 0; i < n; i++) {
    bad += fabs(lp[0][i] - lp[1][i]) > 1e-12 * (1 + fabs(lp[1][i]));
    bad += fabs(en[0][i] - en[1][i]) > 1e-12 * (1 + fabs(en[1][i]));
  }
  CHECK_MSG(bad == 0, "%s: f64 fused and textbook values differ in %d places", name, bad);
  double dmax = 0;
  for (size_t i = 0; i < nh; i++) dmax = fmax(dmax, fabs(dh[0][i] - dh[1][i]));
  for (size_t i = 0; i < vh; i++) dmax = fmax(dmax, fabs(dW[0][i] - dW[1][i]));
  CHECK_MSG(dmax < 1e-11, "%s: f64 fused and textbook gradients differ by %g", name, dmax);
  int rows = n < 6 ? n : 6;
  for (int i = 0; i < rows; i++) {
    double rl, re;
    ref_row(H, V, h + (size_t)i * H, W, tgt[i], &rl, &re);
    CHECK_NEAR(lp[0][i], rl, 1e-11);
    CHECK_NEAR(en[0][i], re, 1e-11);
  }
  for (int i = 0; i < n; i++) CHECK(lp[0][i] <= 0 && en[0][i] >= -1e-12 && en[0][i] <= log(V) + 1e-9);

  /* float32: fused vs textbook, and vs float64 */
  float *hf = malloc(nh * sizeof *hf), *Wf = malloc(vh * sizeof *Wf);
  float *gf = malloc((size_t)n * sizeof *gf), *ef = malloc((size_t)n * sizeof *ef);
  for (size_t i = 0; i < nh; i++) hf[i] = (float)h[i];
  for (size_t i = 0; i < vh; i++) Wf[i] = (float)W[i];
  for (int i = 0; i < n; i++) {
    gf[i] = (float)g[i];
    ef[i] = (float)e[i];
  }
  float *lpf[2], *enf[2], *dhf[2], *dWf[2];
  for (int f = 0; f < 2; f++) {
    lpf[f] = malloc((size_t)n * sizeof(float));
    enf[f] = malloc((size_t)n * sizeof(float));
    dhf[f] = malloc(nh * sizeof(float));
    dWf[f] = calloc(vh, sizeof(float));
    poc_head_forward_f32(n, H, V, hf, Wf, tgt, f, lpf[f], enf[f]);
    poc_head_backward_f32(n, H, V, hf, Wf, tgt, gf, ef, f, dhf[f], dWf[f]);
  }
  bad = 0;
  for (int i = 0; i < n; i++)
    for (int f = 0; f < 2; f++) {
      bad += fabs(lpf[f][i] - lp[1][i]) > 2e-5 * (1 + fabs(lp[1][i]));
      bad += fabs(enf[f][i] - en[1][i]) > 2e-5 * (1 + fabs(en[1][i]));
    }
  CHECK_MSG(bad == 0, "%s: f32 values off float64 in %d places", name, bad);
  double gmax = 0, gscale = 0;
  for (size_t i = 0; i < nh; i++) {
    gscale = fmax(gscale, fabs(dh[1][i]));
    for (int f = 0; f < 2; f++) gmax = fmax(gmax, fabs(dhf[f][i] - dh[1][i]));
  }
  for (size_t i = 0; i < vh; i++) {
    gscale = fmax(gscale, fabs(dW[1][i] - 0.5));
    for (int f = 0; f < 2; f++) gmax = fmax(gmax, fabs(dWf[f][i] - (dW[1][i] - 0.5)));
  }
  CHECK_MSG(gmax <= 1e-4 * fmax(gscale, 1), "%s: f32 gradients off float64 by %g (scale %g)",
            name, gmax, gscale);
  for (int f = 0; f < 2; f++) {
    free(lp[f]); free(en[f]); free(dh[f]); free(dW[f]);
    free(lpf[f]); free(enf[f]); free(dhf[f]); free(dWf[f]);
  }
  free(h); free(W); free(tgt); free(g); free(e); free(hf); free(Wf); free(gf); free(ef);
}

/* Finite differences of the textbook head in float64, with the entropy term. */
static void head_fd(void) {
  const int n = 3, H = 5, V = 11;
  poc_rng r;
  poc_rng_seed(&r, 5);
  double h[15], W[55], g[3], e[3], dh[15], dW[55] = {0}, lp[3], en[3];
  int32_t tgt[3] = {0, 10, 4};
  for (int i = 0; i < n * H; i++) h[i] = 2 * mt_uniform(&r);
  for (int i = 0; i < V * H; i++) W[i] = mt_uniform(&r);
  for (int i = 0; i < n; i++) {
    g[i] = mt_uniform(&r);
    e[i] = mt_uniform(&r);
  }
  poc_head_backward_f64(n, H, V, h, W, tgt, g, e, 0, dh, dW);
  double *xs[2] = {h, W}, *ds[2] = {dh, dW};
  int cnt[2] = {n * H, V * H};
  for (int which = 0; which < 2; which++)
    for (int i = 0; i < cnt[which]; i++) {
      double L[2], save = xs[which][i];
      for (int sgn = 0; sgn < 2; sgn++) {
        xs[which][i] = save + (sgn ? -1e-6 : 1e-6);
        poc_head_forward_f64(n, H, V, h, W, tgt, 0, lp, en);
        L[sgn] = 0;
        for (int k = 0; k < n; k++) L[sgn] += g[k] * lp[k] + e[k] * en[k];
      }
      xs[which][i] = save;
      CHECK_NEAR(ds[which][i], (L[0] - L[1]) / 2e-6, 1e-7);
    }
}

int main(void) {
  poc_cpu_start(0, NULL); /* the GEMM kernels the processor allows */
  head_fd();
  head_case("small_vocab", 9, 8, 37, 1.0, 1);
  head_case("one_full_chunk", 5, 8, POC_HEAD_CHUNK, 1.0, 2);
  head_case("two_chunks_and_a_bit", 7, 8, 2 * POC_HEAD_CHUNK + 37, 1.0, 3);
  head_case("many_row_blocks", 1100, 4, 45, 1.0, 4);
  head_case("threaded_rows", 600, 8, POC_HEAD_CHUNK + 52, 1.0, 6);
  /* two row blocks, each streaming the vocabulary in the narrower chunks of big blocks */
  head_case("row_blocks_and_chunks", 1100, 4, POC_HEAD_CHUNK + 52, 1.0, 7);
  /* logits of several hundred: exp(l) overflows in float32 without the running max */
  head_case("large_logits", 6, 8, POC_HEAD_CHUNK + 5, 60.0, 5);
  return check_summary("model_head");
}
