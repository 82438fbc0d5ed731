/* test_emul_vec.c — the elementwise kernels' 128-bit paths (kernels/templates/poc_vec.cuh)
 * and their scalar fallbacks and tails, on the emulated CUDA device against the cpu
 * device, fed the same numbers.
 *
 * Two sets of dimensions choose the paths: "wide" (H = 72, F = 200, hd = 16) gives every
 * row kernel 8-wide groups with no tail, SwiGLU 8 columns per access and RoPE 8 pairs per
 * access; "odd" (H = 76, F = 100, hd = 12) gives the norms a 4-element tail and rows that
 * are aligned only every other row (bf16 rows of 152 bytes), SwiGLU and RoPE their scalar
 * fallbacks. Within each, buffers offset by one element from an allocation's start (a
 * tensor at an odd offset of the flat parameter array) take the scalar path, and AdamW
 * runs from offsets 0..5 of its arrays so its scalar head, 4-wide body and tail all run.
 * Tolerances are test_emul_kernels.c's: an act output is one bf16 rounding of the same
 * fp32 value (2^-8 relative), an fp32 output a few ulps, the norms' sums in another
 * grouping 1e-5 of the scale.
 */
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "check.h"
#include "device.h"

#define RT_BF16 (1.0 / 256)

static poc_device *C, *G;
static poc_kset *KC, *KG;
static poc_dims dm;

static uint64_t rs = 0x9e3779b97f4a7c15ull;
static double urand(void) { /* [-1, 1) */
  rs ^= rs << 13;
  rs ^= rs >> 7;
  rs ^= rs << 17;
  return (double)(rs >> 11) / 4503599627370496.0 - 1;
}

static float bf(float f) {
  uint32_t u;
  memcpy(&u, &f, 4);
  u += 0x7fffu + ((u >> 16) & 1u);
  u &= 0xffff0000u;
  memcpy(&f, &u, 4);
  return f;
}

/* a buffer on both devices; `off` elements into its allocation (0 or 1: misaligned) */
typedef struct {
  poc_dptr c0, g0, c, g;
  size_t n;
  int act;
  float *h;
} pb;

static poc_dtype ty(const poc_device *d, int act) { return act ? d->act : d->acc; }

static pb pb_make(size_t n, int act, int off, double scale) {
  pb b = {0, 0, 0, 0, n, act, malloc((n + 1) * sizeof(float))};
  size_t sc = poc_dtype_size(ty(C, act)), sg = poc_dtype_size(ty(G, act));
  b.c0 = C->alloc(C, (n + off) * sc, "test buffer");
  b.g0 = G->alloc(G, (n + off) * sg, "test buffer");
  b.c = b.c0 + (poc_dptr)off * sc;
  b.g = b.g0 + (poc_dptr)off * sg;
  for (size_t i = 0; i < n; i++) {
    float v = scale == scale ? (float)(scale * urand()) : NAN;
    b.h[i] = act ? bf(v) : v;
  }
  C->put(C, b.c, ty(C, act), b.h, POC_DT_F32, n);
  G->put(G, b.g, ty(G, act), b.h, POC_DT_F32, n);
  return b;
}

static void pb_free(pb *b) {
  C->free(C, b->c0);
  G->free(G, b->g0);
  free(b->h);
}

static void cmp(const char *what, const pb *b, double atol, double rtol) {
  double *hc = malloc(b->n * 8), *hg = malloc(b->n * 8), worst = 0;
  C->get(C, hc, POC_DT_F64, b->c, ty(C, b->act), b->n);
  G->get(G, hg, POC_DT_F64, b->g, ty(G, b->act), b->n);
  size_t bad = 0, at = 0;
  for (size_t i = 0; i < b->n; i++) {
    double d = fabs(hg[i] - hc[i]), t = atol + rtol * fabs(hc[i]);
    if (!(d <= t)) {
      if (!bad++) at = i;
    }
    if (d > worst) worst = d;
  }
  printf("  %-44s max|Δ| %.3g\n", what, worst);
  CHECK_MSG(bad == 0, "%s: %zu of %zu elements differ (first at %zu: cpu %.9g, cuda %.9g)",
            what, bad, b->n, at, hc[at], hg[at]);
  free(hc);
  free(hg);
}

static void synced(const char *what) {
  char err[POC_ERR_LEN] = "";
  CHECK_MSG(poc_dev_sync(G, err) == 0, "%s: %s", what, err);
  CHECK_MSG(poc_dev_sync(C, err) == 0, "%s: %s", what, err);
}

static void t_rmsnorm(int off) {
  const int n = 9, H = dm.H;
  char w[96];
  int32_t rows[9] = {8, 0, 3, 5, 1, 2, 7, 4, 6};
  poc_dptr rc = C->alloc(C, sizeof rows, "rows"), rg = G->alloc(G, sizeof rows, "rows");
  C->put(C, rc, POC_DT_I32, rows, POC_DT_I32, n);
  G->put(G, rg, POC_DT_I32, rows, POC_DT_I32, n);
  for (int gather = 0; gather < 2; gather++) {
    pb x = pb_make((size_t)n * H, 0, off, 2), wt = pb_make(H, 1, off, 1);
    pb y = pb_make((size_t)n * H, 1, off, NAN), rstd = pb_make(n, 0, 0, NAN);
    poc_dptr r_c = gather ? rc : 0, r_g = gather ? rg : 0;
    C->k.rmsnorm_fwd(KC, n, x.c, r_c, wt.c, y.c, rstd.c);
    G->k.rmsnorm_fwd(KG, n, x.g, r_g, wt.g, y.g, rstd.g);
    snprintf(w, sizeof w, "rmsnorm_fwd%s off %d: y", gather ? " (rows)" : "", off);
    cmp(w, &y, 1e-5, RT_BF16 + 1e-5);
    snprintf(w, sizeof w, "rmsnorm_fwd%s off %d: rstd", gather ? " (rows)" : "", off);
    cmp(w, &rstd, 0, 1e-5);
    pb dy = pb_make((size_t)n * H, 0, off, 1), dx = pb_make((size_t)n * H, 0, off, 1);
    C->k.rmsnorm_bwd(KC, n, x.c, r_c, wt.c, rstd.c, dy.c, dx.c);
    G->k.rmsnorm_bwd(KG, n, x.g, r_g, wt.g, rstd.g, dy.g, dx.g);
    snprintf(w, sizeof w, "rmsnorm_bwd%s off %d: dx (+=)", gather ? " (rows)" : "", off);
    cmp(w, &dx, 1e-5, 1e-5);
    pb *bs[] = {&x, &wt, &y, &rstd, &dy, &dx};
    for (size_t i = 0; i < 6; i++) pb_free(bs[i]);
  }
  C->free(C, rc);
  G->free(G, rg);
  synced("rmsnorm");
}

static void t_swiglu(int off) {
  const int T = 13, F = dm.F;
  char w[96];
  pb gu = pb_make((size_t)T * 2 * F, 1, off, 6), a = pb_make((size_t)T * F, 1, off, NAN);
  C->k.swiglu_fwd(KC, T, gu.c, a.c);
  G->k.swiglu_fwd(KG, T, gu.g, a.g);
  snprintf(w, sizeof w, "swiglu_fwd off %d", off);
  cmp(w, &a, 1e-6, RT_BF16 + 1e-5);
  pb da = pb_make((size_t)T * F, 1, off, 1), dgu = pb_make((size_t)T * 2 * F, 1, off, NAN);
  C->k.swiglu_bwd(KC, T, gu.c, da.c, dgu.c);
  G->k.swiglu_bwd(KG, T, gu.g, da.g, dgu.g);
  snprintf(w, sizeof w, "swiglu_bwd off %d", off);
  cmp(w, &dgu, 1e-6, RT_BF16 + 1e-5);
  C->k.swiglu_bwd(KC, T, gu.c, da.c, gu.c);
  G->k.swiglu_bwd(KG, T, gu.g, da.g, gu.g);
  snprintf(w, sizeof w, "swiglu_bwd in place off %d", off);
  cmp(w, &gu, 1e-6, RT_BF16 + 1e-5);
  pb *bs[] = {&gu, &a, &da, &dgu};
  for (size_t i = 0; i < 4; i++) pb_free(bs[i]);
  synced("swiglu");
}

/* off shifts the activations; boff the biases alone (a bias at an odd flat offset) */
static void t_rope(int off, int bias, int boff) {
  const int T = 11, NP = 32, half = dm.hd / 2, qd = dm.nh * dm.hd, kvd = dm.nkv * dm.hd;
  const int N = qd + 2 * kvd;
  char w[96];
  int32_t pos[11];
  for (int t = 0; t < T; t++) pos[t] = (t * 13 + 5) % NP;
  poc_dptr pc = C->alloc(C, sizeof pos, "pos"), pg = G->alloc(G, sizeof pos, "pos");
  C->put(C, pc, POC_DT_I32, pos, POC_DT_I32, T);
  G->put(G, pg, POC_DT_I32, pos, POC_DT_I32, T);
  pb cb = pb_make((size_t)NP * half, 0, 0, 1), sb = pb_make((size_t)NP * half, 0, 0, 1);
  for (int p = 0; p < NP; p++)
    for (int i = 0; i < half; i++) {
      double a = p * pow(10000.0, -2.0 * i / dm.hd);
      cb.h[(size_t)p * half + i] = (float)cos(a);
      sb.h[(size_t)p * half + i] = (float)sin(a);
    }
  C->put(C, cb.c, C->acc, cb.h, POC_DT_F32, cb.n);
  G->put(G, cb.g, G->acc, cb.h, POC_DT_F32, cb.n);
  C->put(C, sb.c, C->acc, sb.h, POC_DT_F32, sb.n);
  G->put(G, sb.g, G->acc, sb.h, POC_DT_F32, sb.n);
  pb qkv = pb_make((size_t)T * N, 1, off, 2), q = pb_make((size_t)T * qd, 1, off, NAN),
     k = pb_make((size_t)T * kvd, 1, off, NAN), v = pb_make((size_t)T * kvd, 1, off, NAN);
  pb bq = pb_make(qd, 1, boff, 0.5), bk = pb_make(kvd, 1, boff, 0.5), bv = pb_make(kvd, 1, boff, 0.5);
  C->k.qkv_bias_rope(KC, T, pc, cb.c, sb.c, qkv.c, q.c, k.c, v.c, bias ? bq.c : 0,
                     bias ? bk.c : 0, bias ? bv.c : 0);
  G->k.qkv_bias_rope(KG, T, pg, cb.g, sb.g, qkv.g, q.g, k.g, v.g, bias ? bq.g : 0,
                     bias ? bk.g : 0, bias ? bv.g : 0);
  const char *bn = bias ? (boff ? "bias off 1" : "bias") : "no bias";
  snprintf(w, sizeof w, "qkv_bias_rope %s, off %d: q", bn, off);
  cmp(w, &q, 1e-5, RT_BF16);
  snprintf(w, sizeof w, "qkv_bias_rope %s, off %d: k", bn, off);
  cmp(w, &k, 1e-5, RT_BF16);
  snprintf(w, sizeof w, "qkv_bias_rope %s, off %d: v", bn, off);
  cmp(w, &v, 1e-5, RT_BF16);
  if (!bias) {
    pb dq = pb_make((size_t)T * qd, 0, off, 1), dk = pb_make((size_t)T * kvd, 0, off, 1),
       dv = pb_make((size_t)T * kvd, 0, off, 1), dqkv = pb_make((size_t)T * N, 1, off, NAN);
    C->k.rope_bwd(KC, T, pc, cb.c, sb.c, dq.c, dk.c, dv.c, dqkv.c);
    G->k.rope_bwd(KG, T, pg, cb.g, sb.g, dq.g, dk.g, dv.g, dqkv.g);
    snprintf(w, sizeof w, "rope_bwd off %d: dq", off);
    cmp(w, &dq, 1e-6, 1e-6);
    snprintf(w, sizeof w, "rope_bwd off %d: dk", off);
    cmp(w, &dk, 1e-6, 1e-6);
    snprintf(w, sizeof w, "rope_bwd off %d: dqkv", off);
    cmp(w, &dqkv, 1e-6, RT_BF16);
    pb *bs[] = {&dq, &dk, &dv, &dqkv};
    for (size_t i = 0; i < 4; i++) pb_free(bs[i]);
  }
  pb *bs[] = {&cb, &sb, &qkv, &q, &k, &v, &bq, &bk, &bv};
  for (size_t i = 0; i < 9; i++) pb_free(bs[i]);
  C->free(C, pc);
  G->free(G, pg);
  synced("rope");
}

/* AdamW on n elements starting `off` elements into each array (as a run of tensors starts
 * anywhere in the flat vector) */
static void t_adamw(size_t n, int off) {
  char w[96];
  pb wt = pb_make(n, 0, off, 1), g = pb_make(n, 0, off, 0.1), m = pb_make(n, 0, off, 0.01),
     v = pb_make(n, 0, off, 0), wc = pb_make(n, 1, off, NAN);
  for (size_t i = 0; i < n; i++) v.h[i] = (float)(1e-4 * (1 + urand()));
  C->put(C, v.c, C->acc, v.h, POC_DT_F32, n);
  G->put(G, v.g, G->acc, v.h, POC_DT_F32, n);
  for (int step = 1; step <= 2; step++) {
    float lr = 1e-2f, b1 = 0.9f, b2 = 0.95f, bc1 = 1 - powf(b1, step), bc2 = 1 - powf(b2, step);
    C->k.adamw(KC, n, wt.c, g.c, m.c, v.c, wc.c, lr, b1, b2, 1e-8f, 0.1f, bc1, bc2, 0.7f);
    G->k.adamw(KG, n, wt.g, g.g, m.g, v.g, wc.g, lr, b1, b2, 1e-8f, 0.1f, bc1, bc2, 0.7f);
  }
  snprintf(w, sizeof w, "adamw n %zu off %d: w", n, off);
  cmp(w, &wt, 1e-7, 1e-6);
  snprintf(w, sizeof w, "adamw n %zu off %d: m, v", n, off);
  cmp(w, &m, 1e-9, 1e-5);
  cmp(w, &v, 1e-12, 1e-5);
  snprintf(w, sizeof w, "adamw n %zu off %d: wc", n, off);
  cmp(w, &wc, 1e-7, 2 * RT_BF16);
  pb *bs[] = {&wt, &g, &m, &v, &wc};
  for (size_t i = 0; i < 5; i++) pb_free(bs[i]);
  synced("adamw");
}

static void run(const char *label, poc_dims d) {
  char err[POC_ERR_LEN];
  dm = d;
  KC = C->kernels(C, &dm);
  KG = G->kernels(G, &dm);
  CHECK_MSG(KC && KG, "kernels: %s / %s", C->err, G->err);
  if (!KC || !KG) return;
  printf("%s: H %d, F %d, %d/%d heads of %d\n", label, d.H, d.F, d.nh, d.nkv, d.hd);
  for (int off = 0; off < 2; off++) {
    t_rmsnorm(off);
    t_swiglu(off);
    t_rope(off, 0, 0);
    t_rope(off, 1, 0);
  }
  t_rope(0, 1, 1);
  for (int off = 0; off < 6; off++) t_adamw(off < 3 ? 3 : 1001, off);
  t_adamw(4096, 0);
  CHECK_MSG(poc_dev_sync(G, err) == 0, "%s", err);
}

int main(void) {
  char err[POC_ERR_LEN] = "";
  G = poc_device_open("cuda", err);
  CHECK_MSG(G != NULL, "the emulated CUDA device does not open: %s", err);
  if (!G) return check_summary("cuda_emul_vec");
  C = poc_device_open("cpu", err);
  CHECK_MSG(C != NULL, "%s", err);
  if (!C) return check_summary("cuda_emul_vec");
  run("wide", (poc_dims){72, 200, 300, 4, 2, 16, 1e-5});
  run("odd", (poc_dims){76, 100, 300, 2, 1, 12, 1e-5});
  poc_device_close(C);
  poc_device_close(G);
  return check_summary("cuda_emul_vec");
}
