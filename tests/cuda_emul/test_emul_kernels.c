/* test_emul_kernels.c — every member of poc_kernels (device.h) on the CUDA device, run on
 * the emulation, against the same member on the "cpu" device, fed the same inputs.
 *
 * Inputs reach both devices through their own put: act (bf16 on CUDA) inputs are rounded
 * to bf16 on the host first, so both devices hold exactly the same numbers and only the
 * kernels' arithmetic differs. What may differ then, and so the tolerances:
 *   - an act (bf16) output is the fp32 value rounded once: at most half an ulp, 2^-8 of
 *     its magnitude (RT_BF16);
 *   - fp32 sums in another order: at most 2·n·u·Σ|terms| for n terms (u = 2^-24), which
 *     the GEMM, column-sum and norm-weight checks bound per element; elsewhere 1e-5 of
 *     the data's scale (the sums here have at most a few hundred terms);
 *   - cast is exact: fp32 → bf16 rounding to nearest even is one function.
 *   - attention rounds P and dS to bf16 for its second products (tensor cores): per
 *     element 2^-8 of the terms' magnitudes (attn_bounds.h), and an output rounded from
 *     two slightly different values may land one bf16 ulp apart (2·RT_BF16);
 * A kernel that drops a row, a chunk, a sequence boundary or a key tile is off by O(1),
 * orders of magnitude above these. Outputs are poisoned with NaN beforehand (the
 * emulation's allocations start as NaN too), so an element never written fails.
 *
 * Shapes are not multiples of the kernels' blocks and tiles (H = 72, F = 200, V = 300,
 * 6 query heads on 2 kv heads of 12 dims, padded to 16 by the attention kernels; attention
 * blocks of 64 rows, key tiles of 64): packs of 1-token sequences, several sequences, a 300-row pack, decode rows with
 * q0 > 0, the fused head over uneven vocabulary chunks down to one column.
 */
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "attn_bounds.h"
#include "check.h"
#include "device.h"
#include "pair_buf.h"

#define RT_BF16 (1.0 / 256)  /* half an ulp of bf16, relative */
#define U32 (1.0 / 16777216) /* fp32 unit roundoff */

enum { H = 72, F = 200, V = 300, NH = 6, NKV = 2, HD = 12, QD = NH * HD, KVD = NKV * HD,
       QKV = QD + 2 * KVD };

static poc_kset *KC, *KG;

typedef struct {
  poc_dptr c, g;
} pi;

static pi pi_new(const int32_t *v, size_t n) {
  pi b = {C->alloc(C, n * 4, "test ints"), G->alloc(G, n * 4, "test ints")};
  C->put(C, b.c, POC_DT_I32, v, POC_DT_I32, n);
  G->put(G, b.g, POC_DT_I32, v, POC_DT_I32, n);
  return b;
}

static void pi_free(pi *b) {
  C->free(C, b->c);
  G->free(G, b->g);
}

/* n elements of each device's copy, read as act or acc (a dlogits result lands as act in
 * an acc buffer) */
static void pb_read(poc_dptr pc, poc_dptr pg, int act, size_t n, double *hc, double *hg) {
  C->get(C, hc, POC_DT_F64, pc, ty(C, act), n);
  G->get(G, hg, POC_DT_F64, pg, ty(G, act), n);
}

/* ---- comparison --------------------------------------------------------------------- */

static double worst_seen; /* largest |Δ|/tol over the run, for the summary */

/* |g − c| ≤ atol + rtol·|c| (+ tol_el[i] when given) for every element; NaN fails. Prints
 * the largest difference and how much of its tolerance it used. */
static void cmp_arrays(const char *what, const double *hc, const double *hg, size_t n,
                       double atol, double rtol, const double *tol_el) {
  double maxd = 0, ratio = 0;
  size_t at = 0, nans = 0;
  for (size_t i = 0; i < n; i++) {
    if (hc[i] != hc[i] || hg[i] != hg[i]) {
      if (!nans++) at = i;
      continue;
    }
    double d = fabs(hg[i] - hc[i]), t = atol + rtol * fabs(hc[i]) + (tol_el ? tol_el[i] : 0);
    double r = d == 0 ? 0 : t > 0 ? d / t : INFINITY;
    if (d > maxd) maxd = d;
    if (r > ratio) {
      ratio = r;
      if (!nans) at = i;
    }
  }
  printf("  %-34s n=%-6zu max|Δ| %.3g (%.0f%% of tol)\n", what, n, maxd, 100 * ratio);
  if (ratio > worst_seen) worst_seen = ratio;
  CHECK_MSG(nans == 0, "%s: %zu NaN elements (first at %zu: cpu %g, cuda %g)", what, nans, at,
            hc[at], hg[at]);
  CHECK_MSG(ratio <= 1, "%s: element %zu: cpu %.9g, cuda %.9g (|Δ| %.3g, %.1f× tol)", what, at,
            hc[at], hg[at], fabs(hg[at] - hc[at]), ratio);
}

static void cmp_pb(const char *what, const pb *b, double atol, double rtol, const double *tol_el) {
  double *hc = malloc(b->n * 8), *hg = malloc(b->n * 8);
  pb_read(b->c, b->g, b->act, b->n, hc, hg);
  cmp_arrays(what, hc, hg, b->n, atol, rtol, tol_el);
  free(hc);
  free(hg);
}

/* atol = frac × the largest |cpu value|: for sums whose terms are as large as the result */
static void cmp_pb_scaled(const char *what, const pb *b, double frac, double rtol) {
  double *hc = malloc(b->n * 8), *hg = malloc(b->n * 8), m = 0;
  pb_read(b->c, b->g, b->act, b->n, hc, hg);
  for (size_t i = 0; i < b->n; i++) m = fabs(hc[i]) > m ? fabs(hc[i]) : m;
  cmp_arrays(what, hc, hg, b->n, frac * m, rtol, NULL);
  free(hc);
  free(hg);
}

/* both devices still healthy after a section: a launch error is sticky and would hide
 * every later check */
static void synced(const char *what) {
  char err[POC_ERR_LEN] = "";
  CHECK_MSG(C->sync(C, err) == 0, "%s: cpu: %s", what, err);
  CHECK_MSG(G->sync(G, err) == 0, "%s: cuda: %s", what, err);
}

/* ---- GEMM ----------------------------------------------------------------------------- */

/* C[M×N] = op(A)·op(B) + beta·C with row strides padded by `pad`; the padding of C must
 * come back untouched (a wrong ldc writes there). The per-element bound is 2·K·u·Σ|a b|
 * (both devices' fp32 sums, any order) plus |beta·c|·2u and, for a bf16 C, half an ulp. */
static void t_gemm(int ta, int tb, int M, int N, int K, int c_acc, float beta, int pad) {
  int ra = ta ? K : M, ca = ta ? M : K, rb = tb ? N : K, cb = tb ? K : N;
  int lda = ca + pad, ldb = cb + pad, ldc = N + pad;
  pb A = pb_rand((size_t)ra * lda, 1, 1), B = pb_rand((size_t)rb * ldb, 1, 1);
  pb Cm = pb_rand((size_t)M * ldc, !c_acc, 2);
  C->k.gemm(KC, ta, tb, M, N, K, A.c, lda, B.c, ldb, beta, Cm.c, c_acc, ldc);
  G->k.gemm(KG, ta, tb, M, N, K, A.g, lda, B.g, ldb, beta, Cm.g, c_acc, ldc);
  size_t n = (size_t)M * ldc;
  double *tol = calloc(n, 8), *hc = malloc(n * 8), *hg = malloc(n * 8);
  for (int i = 0; i < M; i++)
    for (int j = 0; j < N; j++) {
      double s = 0;
      for (int k = 0; k < K; k++) {
        double a = A.h[ta ? (size_t)k * lda + i : (size_t)i * lda + k];
        double b = B.h[tb ? (size_t)j * ldb + k : (size_t)k * ldb + j];
        s += fabs(a * b);
      }
      tol[(size_t)i * ldc + j] = 2 * (K + 1) * U32 * (s + fabs(beta * Cm.h[(size_t)i * ldc + j]));
    }
  pb_read(Cm.c, Cm.g, Cm.act, n, hc, hg);
  char what[96];
  snprintf(what, sizeof what, "gemm %c%c %dx%dx%d %s b=%g pad=%d", ta ? 'T' : 'N', tb ? 'T' : 'N',
           M, N, K, c_acc ? "acc" : "act", beta, pad);
  cmp_arrays(what, hc, hg, n, 0, c_acc ? 0 : RT_BF16, tol);
  /* the padding columns kept what was put there */
  int kept = 1;
  for (int i = 0; i < M; i++)
    for (int j = N; j < ldc; j++)
      kept &= hg[(size_t)i * ldc + j] == Cm.h[(size_t)i * ldc + j];
  CHECK_MSG(kept, "%s: wrote outside the %d columns of C", what, N);
  free(tol);
  free(hc);
  free(hg);
  pb_free(&A);
  pb_free(&B);
  pb_free(&Cm);
  synced(what);
}

/* ---- embedding, norms, sums, cast -------------------------------------------------- */

static void t_embed(void) {
  const int T = 300;
  int32_t tok[300];
  for (int t = 0; t < T; t++) tok[t] = (int32_t)((t * 37 + (t % 7) * 101) % V);
  tok[0] = 0;
  tok[1] = V - 1;
  tok[2] = V - 1; /* a repeat: its rows add into one gradient row */
  pi tk = pi_new(tok, T);
  pb E = pb_rand((size_t)V * H, 1, 1), x = pb_nan((size_t)T * H, 0);
  C->k.embed_fwd(KC, T, tk.c, E.c, x.c);
  G->k.embed_fwd(KG, T, tk.g, E.g, x.g);
  cmp_pb("embed_fwd T=300 (exact)", &x, 0, 0, NULL);

  /* dE += dx[t] for every row of the token: starting from nonzero values catches "=" */
  pb dx = pb_rand((size_t)T * H, 0, 1), dE = pb_rand((size_t)V * H, 0, 1);
  C->k.embed_bwd(KC, T, tk.c, dx.c, dE.c);
  G->k.embed_bwd(KG, T, tk.g, dx.g, dE.g);
  /* one thread per column walks the rows in order, as the CPU does: the same bits */
  cmp_pb("embed_bwd T=300 (+=, repeats; the CPU's order, exact)", &dE, 0, 0, NULL);
  pi_free(&tk);
  pb_free(&E);
  pb_free(&x);
  pb_free(&dx);
  pb_free(&dE);
  synced("embedding");
}

static void t_rmsnorm(void) {
  const int R = 300, n = 37;
  int32_t rows[37];
  for (int i = 0; i < n; i++) rows[i] = (int32_t)((i * 113 + 5) % R); /* distinct, unordered */
  rows[n - 1] = R - 1;
  pi rw = pi_new(rows, n);
  pb x = pb_rand((size_t)R * H, 0, 3);
  /* a row so small that eps dominates its mean square: a wrong or missing eps shows */
  for (int j = 0; j < H; j++) x.h[(size_t)rows[3] * H + j] = (float)(1e-3 * urand());
  pb_put(&x);
  pb w = pb_rand(H, 1, 1);
  for (int j = 0; j < H; j++) w.h[j] += 1;
  pb_put(&w);

  pb y = pb_nan((size_t)n * H, 1), rstd = pb_nan(n, 0);
  C->k.rmsnorm_fwd(KC, n, x.c, rw.c, w.c, y.c, rstd.c);
  G->k.rmsnorm_fwd(KG, n, x.g, rw.g, w.g, y.g, rstd.g);
  cmp_pb("rmsnorm_fwd rows n=37: y", &y, 1e-6, RT_BF16 + 1e-5, NULL);
  cmp_pb("rmsnorm_fwd rows n=37: rstd", &rstd, 0, 1e-5, NULL);
  pb yall = pb_nan((size_t)R * H, 1);
  C->k.rmsnorm_fwd(KC, R, x.c, 0, w.c, yall.c, 0);
  G->k.rmsnorm_fwd(KG, R, x.g, 0, w.g, yall.g, 0);
  cmp_pb("rmsnorm_fwd all n=300, no rstd", &yall, 1e-6, RT_BF16 + 1e-5, NULL);

  /* backward into the gathered rows of dx; every other row must stay as it was. Both
     get the cpu's rstd, so only the sums differ: the dot has H terms, and the tiny row's
     rstd (~300) scales its gradient up, so the tolerance is relative to the largest */
  double *rc = malloc(n * 8), *rg = malloc(n * 8);
  pb_read(rstd.c, rstd.g, 0, n, rc, rg);
  float rcf[37];
  for (int i = 0; i < n; i++) rcf[i] = (float)rc[i];
  G->put(G, rstd.g, G->acc, rcf, POC_DT_F32, n);
  pb dy = pb_rand((size_t)n * H, 0, 1), dx = pb_rand((size_t)R * H, 0, 1);
  C->k.rmsnorm_bwd(KC, n, x.c, rw.c, w.c, rstd.c, dy.c, dx.c);
  G->k.rmsnorm_bwd(KG, n, x.g, rw.g, w.g, rstd.g, dy.g, dx.g);
  cmp_pb_scaled("rmsnorm_bwd rows (+=)", &dx, 1e-6, 1e-6);

  /* dw += Σ_i dy_i ⊙ x[r_i]·rstd_i, gathered and over all 300 rows (more rows than the
     kernel's 64 slices) */
  pb dw = pb_rand(H, 0, 1);
  C->k.rmsnorm_dw(KC, n, x.c, rw.c, rstd.c, dy.c, dw.c);
  G->k.rmsnorm_dw(KG, n, x.g, rw.g, rstd.g, dy.g, dw.g);
  double *tol = calloc(H, 8);
  for (int j = 0; j < H; j++) {
    double s = 0;
    for (int i = 0; i < n; i++) s += fabs(dy.h[(size_t)i * H + j] * x.h[(size_t)rows[i] * H + j] * rcf[i]);
    tol[j] = 2 * (n + 3) * U32 * (s + 1);
  }
  cmp_pb("rmsnorm_dw rows n=37 (+=)", &dw, 0, 0, tol);
  pb dyall = pb_rand((size_t)R * H, 0, 1), rall = pb_rand(R, 0, 1), dw2 = pb_rand(H, 0, 1);
  C->k.rmsnorm_dw(KC, R, x.c, 0, rall.c, dyall.c, dw2.c);
  G->k.rmsnorm_dw(KG, R, x.g, 0, rall.g, dyall.g, dw2.g);
  for (int j = 0; j < H; j++) {
    double s = 0;
    for (int i = 0; i < R; i++) s += fabs(dyall.h[(size_t)i * H + j] * x.h[(size_t)i * H + j] * rall.h[i]);
    tol[j] = 2 * (R + 3) * U32 * (s + 1);
  }
  cmp_pb("rmsnorm_dw all n=300 (+=)", &dw2, 0, 0, tol);
  free(tol);
  free(rc);
  free(rg);
  pi_free(&rw);
  pb *bs[] = {&x, &w, &y, &rstd, &yall, &dy, &dx, &dw, &dyall, &rall, &dw2};
  for (size_t i = 0; i < sizeof bs / sizeof bs[0]; i++) pb_free(bs[i]);
  synced("rmsnorm");
}

/* out[j] += Σ_t y[t][j]: wider than the kernel set's partials (which are sized for
 * max(H, nh·hd, nkv·hd) = 72 columns), so the scratch must grow; then a narrow one after */
static void t_colsum(int n, int width) {
  pb y = pb_rand((size_t)n * width, 0, 1), out = pb_rand(width, 0, 1);
  C->k.colsum(KC, n, width, y.c, out.c);
  G->k.colsum(KG, n, width, y.g, out.g);
  double *tol = calloc(width, 8);
  for (int j = 0; j < width; j++) {
    double s = fabs(out.h[j]);
    for (int t = 0; t < n; t++) s += fabs(y.h[(size_t)t * width + j]);
    tol[j] = 2 * (n + 1) * U32 * s;
  }
  char what[64];
  snprintf(what, sizeof what, "colsum %dx%d (+=)", n, width);
  cmp_pb(what, &out, 0, 0, tol);
  free(tol);
  pb_free(&y);
  pb_free(&out);
  synced(what);
}

/* fp32 → act: exact on both (bf16 rounding to nearest even on the device, a copy on the
 * cpu), so the device's result must be the host's rounding of the value, bit for bit */
static void t_cast(void) {
  const size_t n = 1001;
  pb x = pb_rand(n, 0, 100), y = pb_nan(n, 1);
  /* exact ties between two bf16 neighbours go to the even one; and the extremes */
  x.h[0] = 1.00390625f;  /* 1 + 2^-8: a tie, rounds down to 1 */
  x.h[1] = 1.01171875f;  /* 1 + 3·2^-8: a tie, rounds up to 1 + 2^-6 */
  x.h[2] = -0.0f;
  x.h[3] = 3.0e38f;
  x.h[4] = 1e-40f; /* subnormal */
  x.h[5] = -65504.f;
  pb_put(&x);
  C->k.cast(KC, n, x.c, y.c);
  G->k.cast(KG, n, x.g, y.g);
  double *hc = malloc(n * 8), *hg = malloc(n * 8);
  C->get(C, hc, POC_DT_F64, x.c, C->acc, n); /* the input as the cpu holds it */
  G->get(G, hg, POC_DT_F64, y.g, G->act, n);  /* the device's bf16 result */
  for (size_t i = 0; i < n; i++) hc[i] = bf((float)hc[i]);
  cmp_arrays("cast f32 -> act (bit-exact)", hc, hg, n, 0, 0, NULL);
  CHECK(hg[0] == 1.0 && hg[1] == 1.015625);
  /* the cpu's act is its acc: its cast copies */
  double *cc = malloc(n * 8);
  C->get(C, cc, POC_DT_F64, y.c, C->act, n);
  int same = 1;
  for (size_t i = 0; i < n; i++) same &= cc[i] == (double)x.h[i];
  CHECK_MSG(same, "cpu cast is not a copy");
  /* n = 0 launches nothing and is no error */
  G->k.cast(KG, 0, x.g, y.g);
  free(hc);
  free(hg);
  free(cc);
  pb_free(&x);
  pb_free(&y);
  synced("cast");
}

/* ---- RoPE ----------------------------------------------------------------------------- */

static void rope_tables(pb *cb, pb *sb, int npos) {
  *cb = pb_new((size_t)npos * HD / 2, 0);
  *sb = pb_new((size_t)npos * HD / 2, 0);
  for (int p = 0; p < npos; p++)
    for (int i = 0; i < HD / 2; i++) {
      double a = p * pow(10000.0, -2.0 * i / HD);
      cb->h[(size_t)p * HD / 2 + i] = (float)cos(a);
      sb->h[(size_t)p * HD / 2 + i] = (float)sin(a);
    }
  pb_put(cb);
  pb_put(sb);
}

static void t_rope(int bias) {
  const int T = 37, NP = 64;
  int32_t pos[37];
  for (int t = 0; t < T; t++) pos[t] = (int32_t)((t * 29 + 3) % NP);
  pos[0] = 0;
  pos[1] = NP - 1;
  pi ps = pi_new(pos, T);
  pb cb, sb;
  rope_tables(&cb, &sb, NP);
  /* the fused projection's rows [q | k | v] split into q, k, v */
  pb qkv = pb_rand((size_t)T * QKV, 1, 2), q = pb_nan((size_t)T * QD, 1),
     k = pb_nan((size_t)T * KVD, 1), v = pb_nan((size_t)T * KVD, 1);
  pb bq = pb_rand(QD, 1, 0.5), bk = pb_rand(KVD, 1, 0.5), bv = pb_rand(KVD, 1, 0.5);
  C->k.qkv_bias_rope(KC, T, ps.c, cb.c, sb.c, qkv.c, q.c, k.c, v.c, bias ? bq.c : 0,
                     bias ? bk.c : 0, bias ? bv.c : 0);
  G->k.qkv_bias_rope(KG, T, ps.g, cb.g, sb.g, qkv.g, q.g, k.g, v.g, bias ? bq.g : 0,
                     bias ? bk.g : 0, bias ? bv.g : 0);
  /* the same fp32 operations on both, then one bf16 rounding on the device; 1e-6 of the
     inputs' scale for an FMA or two */
  char w1[64], w2[64], w3[64];
  snprintf(w1, 64, "qkv_bias_rope %s: q", bias ? "bias" : "no bias");
  snprintf(w2, 64, "qkv_bias_rope %s: k", bias ? "bias" : "no bias");
  snprintf(w3, 64, "qkv_bias_rope %s: v", bias ? "bias" : "no bias");
  cmp_pb(w1, &q, 1e-5, RT_BF16, NULL);
  cmp_pb(w2, &k, 1e-5, RT_BF16, NULL);
  cmp_pb(w3, &v, 1e-5, RT_BF16, NULL);
  if (!bias) { /* v is a copy of its columns of qkv */
    double *hc = malloc((size_t)T * KVD * 8), *hg = malloc((size_t)T * KVD * 8);
    pb_read(v.c, v.g, 1, (size_t)T * KVD, hc, hg);
    int same = 1;
    for (int t = 0; t < T; t++)
      for (int j = 0; j < KVD; j++)
        same &= hg[(size_t)t * KVD + j] == qkv.h[(size_t)t * QKV + QD + KVD + j];
    CHECK_MSG(same, "qkv_bias_rope without bias: v is not qkv's v columns");
    free(hc);
    free(hg);
  }

  if (!bias) {
    /* backward: dq, dk rotated back in place (fp32), the bf16 rows [dq | dk | dv] */
    pb dq = pb_rand((size_t)T * QD, 0, 1), dk = pb_rand((size_t)T * KVD, 0, 1),
       dv = pb_rand((size_t)T * KVD, 0, 1);
    pb dqkv = pb_nan((size_t)T * QKV, 1);
    C->k.rope_bwd(KC, T, ps.c, cb.c, sb.c, dq.c, dk.c, dv.c, dqkv.c);
    G->k.rope_bwd(KG, T, ps.g, cb.g, sb.g, dq.g, dk.g, dv.g, dqkv.g);
    cmp_pb("rope_bwd: dq (in place)", &dq, 1e-6, 1e-6, NULL);
    cmp_pb("rope_bwd: dk (in place)", &dk, 1e-6, 1e-6, NULL);
    cmp_pb("rope_bwd: dv (untouched)", &dv, 0, 0, NULL);
    cmp_pb("rope_bwd: dqkv", &dqkv, 1e-6, RT_BF16, NULL);
    { /* the CPU's fused rows are its own dq, dk, dv side by side */
      double *r = malloc((size_t)T * QKV * 8), *g = malloc((size_t)T * QKV * 8);
      double *a = malloc((size_t)T * QD * 8), *b = malloc((size_t)T * QD * 8);
      pb_read(dqkv.c, dqkv.g, 1, (size_t)T * QKV, r, g);
      int same = 1;
      pb_read(dq.c, dq.g, 0, (size_t)T * QD, a, b);
      for (int t = 0; t < T; t++)
        for (int j = 0; j < QD; j++) same &= r[(size_t)t * QKV + j] == a[(size_t)t * QD + j];
      pb_read(dk.c, dk.g, 0, (size_t)T * KVD, a, b);
      for (int t = 0; t < T; t++)
        for (int j = 0; j < KVD; j++) same &= r[(size_t)t * QKV + QD + j] == a[(size_t)t * KVD + j];
      pb_read(dv.c, dv.g, 0, (size_t)T * KVD, a, b);
      for (int t = 0; t < T; t++)
        for (int j = 0; j < KVD; j++)
          same &= r[(size_t)t * QKV + QD + KVD + j] == a[(size_t)t * KVD + j];
      CHECK_MSG(same, "rope_bwd: the cpu device's dqkv rows are not [dq | dk | dv]");
      free(r);
      free(g);
      free(a);
      free(b);
    }
    pb *bs[] = {&dq, &dk, &dv, &dqkv};
    for (size_t i = 0; i < 4; i++) pb_free(bs[i]);
  }
  pi_free(&ps);
  pb *bs[] = {&cb, &sb, &qkv, &q, &k, &v, &bq, &bk, &bv};
  for (size_t i = 0; i < 9; i++) pb_free(bs[i]);
  synced("rope");
}

/* ---- attention ------------------------------------------------------------------------ */

/* A pack of sequences of the given lengths: forward, then backward from random dO with
 * the cpu's output and lse fed to both (the backward's inputs, identical on both). */
static void t_attn_pack(const char *label, const int *len, int nseq) {
  int T = 0;
  for (int s = 0; s < nseq; s++) T += len[s];
  int32_t *kbeg = malloc(T * 4), *send = malloc(T * 4);
  for (int s = 0, at = 0; s < nseq; at += len[s], s++)
    for (int j = 0; j < len[s]; j++) {
      kbeg[at + j] = at;
      send[at + j] = at + len[s];
    }
  pi kb = pi_new(kbeg, T), se = pi_new(send, T);
  /* scores up to ~|q||k|/√hd ≈ 6: softmaxes neither flat nor one-hot */
  pb q = pb_rand((size_t)T * QD, 1, 1.5), k = pb_rand((size_t)T * KVD, 1, 1.5),
     v = pb_rand((size_t)T * KVD, 1, 1);
  pb out = pb_nan((size_t)T * QD, 1), lse = pb_nan((size_t)T * NH, 0);
  C->k.attn_fwd(KC, T, 0, q.c, k.c, v.c, kb.c, out.c, lse.c);
  G->k.attn_fwd(KG, T, 0, q.g, k.g, v.g, kb.g, out.g, lse.g);
  char w[96];
  /* out is a convex combination of v (|v| ≤ 1): fp32 differences ~1e-6, P in bf16, then
     out's own rounding */
  ab_shape sh = {T, 0, NH, NKV, HD, kbeg, send};
  double *tol = malloc((size_t)T * QD * 8);
  ab_fwd(&sh, q.h, k.h, v.h, NULL, tol);
  snprintf(w, sizeof w, "attn_fwd %s T=%d: out", label, T);
  cmp_pb(w, &out, 1e-5, 2 * RT_BF16, tol);
  snprintf(w, sizeof w, "attn_fwd %s T=%d: lse", label, T);
  cmp_pb(w, &lse, 1e-5, 1e-5, NULL);
  /* a 1-token sequence attends to itself only: its output is its own v (exactly, after
     bf16 rounding of v·1) */
  for (int s = 0, at = 0; s < nseq; at += len[s], s++)
    if (len[s] == 1) {
      double o[QD], vv[KVD];
      G->get(G, o, POC_DT_F64, out.g + (poc_dptr)at * QD * 2, G->act, QD);
      for (int j = 0; j < KVD; j++) vv[j] = v.h[(size_t)at * KVD + j];
      int ok = 1;
      for (int h = 0; h < NH; h++)
        for (int d = 0; d < HD; d++) ok &= o[h * HD + d] == vv[(h / (NH / NKV)) * HD + d];
      CHECK_MSG(ok, "%s: a 1-token sequence at row %d does not return its own value", label, at);
    }

  /* backward */
  double *oc = malloc((size_t)T * QD * 8), *lc = malloc((size_t)T * NH * 8), *tmp = malloc((size_t)T * QD * 8);
  pb_read(out.c, out.g, 1, (size_t)T * QD, oc, tmp);
  pb_read(lse.c, lse.g, 0, (size_t)T * NH, lc, tmp);
  pb o = pb_new((size_t)T * QD, 1), l = pb_new((size_t)T * NH, 0);
  for (size_t i = 0; i < (size_t)T * QD; i++) o.h[i] = (float)oc[i];
  for (size_t i = 0; i < (size_t)T * NH; i++) l.h[i] = (float)lc[i];
  pb_put(&o);
  pb_put(&l);
  pb dO = pb_rand((size_t)T * QD, 1, 1);
  pb dq = pb_nan((size_t)T * QD, 0), dk = pb_nan((size_t)T * KVD, 0), dv = pb_nan((size_t)T * KVD, 0),
     D = pb_nan((size_t)T * NH, 0);
  C->k.attn_bwd(KC, T, q.c, k.c, v.c, o.c, dO.c, l.c, kb.c, se.c, dq.c, dk.c, dv.c, D.c);
  G->k.attn_bwd(KG, T, q.g, k.g, v.g, o.g, dO.g, l.g, kb.g, se.g, dq.g, dk.g, dv.g, D.g);
  /* fp32 sums over up to a sequence's length of terms of size ~1 (3× that for dk, dv over
     the group's heads): 1e-5 of the largest gradient covers 300 rows' worth of rounding;
     then P and dS in bf16 (attn_bounds.h) */
  double *gc = malloc((size_t)T * QD * 8), *gg = malloc((size_t)T * QD * 8);
  double *tq = malloc((size_t)T * QD * 8), *tk = malloc((size_t)T * KVD * 8),
         *tv = malloc((size_t)T * KVD * 8);
  ab_bwd(&sh, q.h, k.h, v.h, o.h, l.h, dO.h, tq, tk, tv);
  struct { const char *n; pb *b; const double *tol; } outs[] = {
      {"dq", &dq, tq}, {"dk", &dk, tk}, {"dv", &dv, tv}, {"D", &D, NULL}};
  for (int i = 0; i < 4; i++) {
    pb_read(outs[i].b->c, outs[i].b->g, 0, outs[i].b->n, gc, gg);
    double m = 0;
    for (size_t j = 0; j < outs[i].b->n; j++) m = fabs(gc[j]) > m ? fabs(gc[j]) : m;
    snprintf(w, sizeof w, "attn_bwd %s T=%d: %s", label, T, outs[i].n);
    cmp_arrays(w, gc, gg, outs[i].b->n, 1e-5 * m + 1e-6, 1e-5, outs[i].tol);
  }
  free(tol);
  free(tq);
  free(tk);
  free(tv);
  free(gc);
  free(gg);
  free(oc);
  free(lc);
  free(tmp);
  free(kbeg);
  free(send);
  pi_free(&kb);
  pi_free(&se);
  pb *bs[] = {&q, &k, &v, &out, &lse, &o, &l, &dO, &dq, &dk, &dv, &D};
  for (size_t i = 0; i < sizeof bs / sizeof bs[0]; i++) pb_free(bs[i]);
  synced(label);
}

/* Decode: T query rows at key positions q0..q0+T−1 over a cache of q0 + T keys (kbeg as
 * given: 0 for a whole context). The rows must also equal the same rows of a pack forward
 * over the whole cache on the cpu: the query offset is the only thing that differs. */
static void t_attn_decode(int T, int q0, int kb0) {
  const int NK = q0 + T;
  int32_t kbeg[64];
  for (int t = 0; t < T; t++) kbeg[t] = kb0;
  pi kb = pi_new(kbeg, T);
  pb qall = pb_rand((size_t)NK * QD, 1, 1.5), k = pb_rand((size_t)NK * KVD, 1, 1.5),
     v = pb_rand((size_t)NK * KVD, 1, 1);
  /* the query rows are the last T rows of qall */
  pb q = pb_new((size_t)T * QD, 1);
  memcpy(q.h, qall.h + (size_t)q0 * QD, (size_t)T * QD * 4);
  pb_put(&q);
  pb out = pb_nan((size_t)T * QD, 1), lse = pb_nan((size_t)T * NH, 0);
  C->k.attn_fwd(KC, T, q0, q.c, k.c, v.c, kb.c, out.c, lse.c);
  G->k.attn_fwd(KG, T, q0, q.g, k.g, v.g, kb.g, out.g, lse.g);
  char w[96];
  ab_shape sh = {T, q0, NH, NKV, HD, kbeg, NULL};
  double tol[64 * QD];
  ab_fwd(&sh, q.h, k.h, v.h, NULL, tol);
  snprintf(w, sizeof w, "attn_fwd decode T=%d q0=%d kbeg=%d: out", T, q0, kb0);
  cmp_pb(w, &out, 1e-5, 2 * RT_BF16, tol);
  snprintf(w, sizeof w, "attn_fwd decode T=%d q0=%d kbeg=%d: lse", T, q0, kb0);
  cmp_pb(w, &lse, 1e-5, 1e-5, NULL);

  /* the cpu pack forward over all NK rows, one sequence from kb0 */
  int32_t kball[128];
  for (int t = 0; t < NK; t++) kball[t] = t < kb0 ? 0 : kb0;
  pi kba = pi_new(kball, NK);
  pb outall = pb_nan((size_t)NK * QD, 1), lseall = pb_nan((size_t)NK * NH, 0);
  C->k.attn_fwd(KC, NK, 0, qall.c, k.c, v.c, kba.c, outall.c, lseall.c);
  double *pa = malloc((size_t)T * QD * 8), *pg = malloc((size_t)T * QD * 8);
  C->get(C, pa, POC_DT_F64, outall.c + (poc_dptr)q0 * QD * 4, C->act, (size_t)T * QD);
  G->get(G, pg, POC_DT_F64, out.g, G->act, (size_t)T * QD);
  snprintf(w, sizeof w, "  decode rows vs cpu pack rows");
  cmp_arrays(w, pa, pg, (size_t)T * QD, 1e-5, 2 * RT_BF16, tol);
  free(pa);
  free(pg);
  pi_free(&kb);
  pi_free(&kba);
  pb *bs[] = {&qall, &k, &v, &q, &out, &lse, &outall, &lseall};
  for (size_t i = 0; i < sizeof bs / sizeof bs[0]; i++) pb_free(bs[i]);
  synced("attn decode");
}

/* ---- SwiGLU ---------------------------------------------------------------------------- */

static void t_swiglu(void) {
  const int T = 37; /* T·F = 7400: not a multiple of the 256-thread blocks */
  const size_t n = (size_t)T * F;
  /* rows [g | u] of the fused gate/up projection: g up to ±8 (σ saturates at both ends;
     silu'(g) changes sign near −1.28), u up to ±2 */
  pb gu = pb_new(2 * n, 1), a = pb_nan(n, 1);
  for (int t = 0; t < T; t++)
    for (int j = 0; j < 2 * F; j++) gu.h[(size_t)t * 2 * F + j] = (float)((j < F ? 8 : 2) * urand());
  pb_put(&gu);
  C->k.swiglu_fwd(KC, T, gu.c, a.c);
  G->k.swiglu_fwd(KG, T, gu.g, a.g);
  /* e^x in fp32 on both (the device's __expf is a few ulp on a GPU): 1e-6 relative, then
     the bf16 rounding */
  cmp_pb("swiglu_fwd", &a, 1e-6, RT_BF16 + 1e-5, NULL);
  { /* against the definition on the host: a row's g and u come from its own columns */
    double *hc = malloc(n * 8), *hg = malloc(n * 8), worst = 0;
    pb_read(a.c, a.g, 1, n, hc, hg);
    for (int t = 0; t < T; t++)
      for (int j = 0; j < F; j++) {
        double g = gu.h[(size_t)t * 2 * F + j], u = gu.h[(size_t)t * 2 * F + F + j];
        double want = g / (1 + exp(-g)) * u, e = fabs(hc[(size_t)t * F + j] - want);
        worst = e > worst ? e : worst;
      }
    CHECK_MSG(worst < 1e-5, "swiglu_fwd on the cpu device is %.3g from silu(g)·u", worst);
    free(hc);
    free(hg);
  }
  pb da = pb_rand(n, 1, 1), dgu = pb_nan(2 * n, 1);
  C->k.swiglu_bwd(KC, T, gu.c, da.c, dgu.c);
  G->k.swiglu_bwd(KG, T, gu.g, da.g, dgu.g);
  cmp_pb("swiglu_bwd: dgu", &dgu, 1e-6, RT_BF16 + 1e-5, NULL);
  /* in place over gu (a copy of it) */
  pb gi = pb_new(2 * n, 1);
  memcpy(gi.h, gu.h, 2 * n * sizeof(float));
  pb_put(&gi);
  C->k.swiglu_bwd(KC, T, gi.c, da.c, gi.c);
  G->k.swiglu_bwd(KG, T, gi.g, da.g, gi.g);
  cmp_pb("swiglu_bwd: in place", &gi, 1e-6, RT_BF16 + 1e-5, NULL);
  {
    double *x = malloc(2 * n * 8), *y = malloc(2 * n * 8), *z = malloc(2 * n * 8);
    pb_read(gi.c, gi.g, 1, 2 * n, x, y);
    pb_read(dgu.c, dgu.g, 1, 2 * n, z, y);
    CHECK_MSG(!memcmp(x, z, 2 * n * 8), "swiglu_bwd in place differs from out of place");
    free(x);
    free(y);
    free(z);
  }
  pb *bs[] = {&gu, &a, &da, &dgu, &gi};
  for (size_t i = 0; i < 5; i++) pb_free(bs[i]);
  synced("swiglu");
}

/* ---- LoRA: drop_scale -------------------------------------------------------------------- */

/* y = beta·y + mul·keep·x into act and acc outputs, with and without a dropout mask, in
 * place too; the masks must agree exactly (the zeros are where they are on both), and the
 * kept fraction is near 1 − p. */
static void t_drop_scale(void) {
  const size_t n = (size_t)41 * H + 5;
  const double p = 0.3;
  const uint32_t thr = poc_drop_threshold(p);
  const float mul = (float)(2.0 / (1 - p));
  pb x = pb_rand(n, 1, 1), ya = pb_nan(n, 1), yc = pb_rand(n, 0, 1);
  C->k.drop_scale(KC, n, x.c, ya.c, 0, 0.f, mul, thr, 77);
  G->k.drop_scale(KG, n, x.g, ya.g, 0, 0.f, mul, thr, 77);
  cmp_pb("drop_scale act", &ya, 1e-6, RT_BF16 + 1e-6, NULL);
  double *hc = malloc(n * 8), *hg = malloc(n * 8);
  pb_read(ya.c, ya.g, 1, n, hc, hg);
  size_t kept = 0, same = 1;
  for (size_t i = 0; i < n; i++) {
    kept += hc[i] != 0;
    same &= (hc[i] == 0) == (hg[i] == 0) && (hc[i] == 0) == !poc_drop_keep(77, i, thr);
  }
  CHECK_MSG(same, "drop_scale: the masks differ between the devices or from poc_drop_keep");
  CHECK_MSG(fabs((double)kept / n - (1 - p)) < 0.03, "drop_scale kept %zu of %zu", kept, n);
  C->k.drop_scale(KC, n, x.c, yc.c, 1, 1.f, mul, thr, 78);
  G->k.drop_scale(KG, n, x.g, yc.g, 1, 1.f, mul, thr, 78);
  cmp_pb("drop_scale acc +=", &yc, 1e-6, 1e-6, NULL);
  C->k.drop_scale(KC, n, x.c, x.c, 0, 0.f, 0.5f, 0, 0); /* a plain scaling, in place */
  G->k.drop_scale(KG, n, x.g, x.g, 0, 0.f, 0.5f, 0, 0);
  cmp_pb("drop_scale scale in place", &x, 1e-7, RT_BF16, NULL);
  free(hc);
  free(hg);
  pb_free(&x);
  pb_free(&ya);
  pb_free(&yc);
  synced("drop_scale");
}

/* ---- the loss head -------------------------------------------------------------------- */

/* Fused: the [n × V] logits streamed in act (bf16) chunks of the widths given (uneven, the
 * last of one column), each folded into m, s, a, q, tl; then head_finish (with log Σ p²); then the backward chunk by chunk, into
 * a separate dlog and in place (dlog = the logits buffer). Textbook: the whole row. */
static void t_head(void) {
  const int n = 37, chunks[] = {128, 100, 71, 1};
  const int nch = 4;
  int32_t tgt[37];
  for (int i = 0; i < n; i++) tgt[i] = (int32_t)((i * 71 + 13) % V);
  tgt[0] = 0;
  tgt[1] = V - 1;     /* the one-column chunk */
  tgt[2] = 128;       /* the first column of the second chunk */
  tgt[3] = 127;       /* the last column of the first */
  pi tg = pi_new(tgt, n);
  /* logits: N(0, 3)-ish rows, one row with a huge maximum in the last chunk (the running
     max must rescale), one row that is constant (s = V, a = 0, entropy log V) */
  pb L = pb_rand((size_t)n * V, 0, 6);
  L.h[(size_t)4 * V + V - 1] = 60;
  for (int j = 0; j < V; j++) L.h[(size_t)5 * V + j] = 1.5f;
  L.h[(size_t)6 * V + 3] = -80; /* far below: e^{l−m} underflows to 0 */
  /* a chunk of logits is act (bf16 on CUDA, the GEMM's rounded output): the logits are
     bf16 values, so both devices fold the same numbers */
  for (size_t i = 0; i < (size_t)n * V; i++) L.h[i] = bf(L.h[i]);
  pb_put(&L);
  pb m = pb_nan(n, 0), s = pb_nan(n, 0), a = pb_nan(n, 0), q = pb_nan(n, 0), tl = pb_nan(n, 0);
  int v0 = 0;
  for (int c = 0; c < nch; v0 += chunks[c], c++) {
    pb ch = pb_new((size_t)n * chunks[c], 1);
    for (int i = 0; i < n; i++)
      memcpy(ch.h + (size_t)i * chunks[c], L.h + (size_t)i * V + v0, chunks[c] * 4);
    pb_put(&ch);
    C->k.head_chunk_fwd(KC, n, chunks[c], v0, ch.c, tg.c, m.c, s.c, a.c, q.c, tl.c);
    G->k.head_chunk_fwd(KG, n, chunks[c], v0, ch.g, tg.g, m.g, s.g, a.g, q.g, tl.g);
    pb_free(&ch);
  }
  CHECK(v0 == V);
  /* s and a are sums of V = 300 terms of one sign (e^{l−m} > 0, l − m ≤ 0), rescaled per
     chunk: within 2·(V + chunks)·u of each other, relative; m and tl are copies */
  cmp_pb("head_chunk_fwd x4 chunks: m", &m, 0, 0, NULL);
  cmp_pb("head_chunk_fwd x4 chunks: s", &s, 0, 2 * (V + 8) * U32, NULL);
  cmp_pb("head_chunk_fwd x4 chunks: a", &a, 1e-6, 2 * (V + 8) * U32, NULL);
  cmp_pb("head_chunk_fwd x4 chunks: q", &q, 0, 2 * (V + 8) * U32, NULL);
  cmp_pb("head_chunk_fwd x4 chunks: tl (exact)", &tl, 0, 0, NULL);
  pb logp = pb_nan(n, 0), ent = pb_nan(n, 0), lse = pb_nan(n, 0), mu = pb_nan(n, 0);
  pb lss = pb_nan(n, 0);
  C->k.head_finish(KC, n, m.c, s.c, a.c, q.c, tl.c, logp.c, ent.c, lss.c, lse.c, mu.c);
  G->k.head_finish(KG, n, m.g, s.g, a.g, q.g, tl.g, logp.g, ent.g, lss.g, lse.g, mu.g);
  /* log s carries s's relative error as an absolute one (~4e-5 at worst); a/s both, times
     |a/s| ≤ 12 here */
  cmp_pb("head_finish: logp", &logp, 1e-4, 1e-6, NULL);
  cmp_pb("head_finish: ent", &ent, 1e-3, 1e-6, NULL);
  cmp_pb("head_finish: lse", &lse, 1e-4, 1e-6, NULL);
  cmp_pb("head_finish: mu", &mu, 1e-3, 1e-6, NULL);
  /* log q − 2 log s: the two sums' relative errors as absolute ones */
  cmp_pb("head_finish: logsumsq", &lss, 2e-4, 1e-6, NULL);
  /* against the definition in double, on the host: the fold is the log-softmax */
  {
    double *lg = malloc(n * 8), *eg = malloc(n * 8), *qg = malloc(n * 8);
    G->get(G, lg, POC_DT_F64, logp.g, G->acc, n);
    G->get(G, eg, POC_DT_F64, ent.g, G->acc, n);
    G->get(G, qg, POC_DT_F64, lss.g, G->acc, n);
    double worst = 0;
    for (int i = 0; i < n; i++) {
      const float *l = L.h + (size_t)i * V;
      double mx = l[0], se = 0, sp = 0, p2 = 0;
      for (int j = 1; j < V; j++) mx = l[j] > mx ? l[j] : mx;
      for (int j = 0; j < V; j++) se += exp(l[j] - mx);
      double ls = mx + log(se);
      for (int j = 0; j < V; j++) sp -= exp(l[j] - ls) * (l[j] - ls);
      for (int j = 0; j < V; j++) p2 += exp(2 * (l[j] - ls));
      double e1 = fabs(lg[i] - (l[tgt[i]] - ls)), e2 = fabs(eg[i] - sp), e3 = fabs(qg[i] - log(p2));
      worst = e1 > worst ? e1 : worst;
      worst = e2 > worst ? e2 : worst;
      worst = e3 > worst ? e3 : worst;
    }
    printf("  %-34s max|Δ| %.3g\n", "fused head vs double definition", worst);
    CHECK_MSG(worst < 1e-4, "the fused head's logp/entropy/log Σ p² are %.3g from the definition",
              worst);
    CHECK_NEAR(eg[5], log((double)V), 1e-5);  /* the constant row: uniform */
    CHECK_NEAR(qg[5], -log((double)V), 1e-5); /* Σ (1/V)² = 1/V */
    CHECK_NEAR(qg[4], 0, 1e-5);               /* one logit 60 above the rest: p ≈ one-hot */
    free(lg);
    free(eg);
    free(qg);
  }

  /* backward: g = dL/dlogp and e = dL/dH per row; with both, with dent absent, and in
     place */
  pb dlogp = pb_rand(n, 0, 1), dent = pb_rand(n, 0, 0.5);
  for (int mode = 0; mode < 3; mode++) {
    const char *mn = mode == 0 ? "dlogp+dent" : mode == 1 ? "dlogp only" : "in place";
    v0 = 0;
    for (int c = 0; c < nch; v0 += chunks[c], c++) {
      size_t nc = (size_t)n * chunks[c];
      pb ch = pb_new(nc, 1);
      for (int i = 0; i < n; i++)
        memcpy(ch.h + (size_t)i * chunks[c], L.h + (size_t)i * V + v0, chunks[c] * 4);
      pb_put(&ch);
      pb dl = pb_nan(nc, 1);
      poc_dptr oc = mode == 2 ? ch.c : dl.c, og = mode == 2 ? ch.g : dl.g;
      poc_dptr ec = mode == 1 ? 0 : dent.c, eg = mode == 1 ? 0 : dent.g;
      C->k.head_chunk_bwd(KC, n, chunks[c], v0, ch.c, tg.c, lse.c, mu.c, dlogp.c, ec, oc);
      G->k.head_chunk_bwd(KG, n, chunks[c], v0, ch.g, tg.g, lse.g, mu.g, dlogp.g, eg, og);
      double *hc = malloc(nc * 8), *hg = malloc(nc * 8);
      pb_read(oc, og, 1, nc, hc, hg);
      char w[96];
      snprintf(w, sizeof w, "head_chunk_bwd %s c=%d", mn, chunks[c]);
      /* |dl| ≤ |g| + |e|·p·|l − μ|; p from expf on both */
      cmp_arrays(w, hc, hg, nc, 1e-5, RT_BF16 + 1e-5, NULL);
      free(hc);
      free(hg);
      pb_free(&ch);
      pb_free(&dl);
    }
  }

  /* textbook: the log-softmax in place, logp, entropy, lse and μ' = Σ p·ls */
  pb T1 = pb_new((size_t)n * V, 0);
  memcpy(T1.h, L.h, (size_t)n * V * 4);
  pb_put(&T1);
  pb tlogp = pb_nan(n, 0), tent = pb_nan(n, 0), tlse = pb_nan(n, 0), tmu = pb_nan(n, 0);
  pb tlss = pb_nan(n, 0);
  C->k.head_text_fwd(KC, n, T1.c, tg.c, tlogp.c, tent.c, tlss.c, tlse.c, tmu.c);
  G->k.head_text_fwd(KG, n, T1.g, tg.g, tlogp.g, tent.g, tlss.g, tlse.g, tmu.g);
  cmp_pb("head_text_fwd: log-softmax", &T1, 1e-5, 1e-6, NULL);
  cmp_pb("head_text_fwd: logp", &tlogp, 1e-5, 1e-5, NULL);
  cmp_pb("head_text_fwd: ent", &tent, 1e-5, 1e-5, NULL);
  cmp_pb("head_text_fwd: lse", &tlse, 1e-5, 1e-5, NULL);
  cmp_pb("head_text_fwd: mu'", &tmu, 1e-5, 1e-5, NULL);
  cmp_pb("head_text_fwd: logsumsq", &tlss, 1e-5, 1e-5, NULL);
  /* the two heads agree on the device */
  {
    double *x = malloc(n * 8), *y = malloc(n * 8);
    G->get(G, x, POC_DT_F64, tlogp.g, G->acc, n);
    G->get(G, y, POC_DT_F64, logp.g, G->acc, n);
    cmp_arrays("  cuda textbook vs fused logp", y, x, n, 1e-5, 1e-5, NULL);
    G->get(G, x, POC_DT_F64, tlss.g, G->acc, n);
    G->get(G, y, POC_DT_F64, lss.g, G->acc, n);
    cmp_arrays("  cuda textbook vs fused logsumsq", y, x, n, 1e-4, 1e-5, NULL);
    free(x);
    free(y);
  }
  for (int mode = 0; mode < 3; mode++) {
    const char *mn = mode == 0 ? "dlogp+dent" : mode == 1 ? "dlogp only" : "in place";
    pb T2 = pb_new((size_t)n * V, 0); /* a fresh copy of the log-softmax for each mode */
    double *ls = malloc((size_t)n * V * 8), *tmp = malloc((size_t)n * V * 8);
    pb_read(T1.c, T1.g, 0, (size_t)n * V, ls, tmp);
    for (size_t i = 0; i < (size_t)n * V; i++) T2.h[i] = (float)ls[i];
    pb_put(&T2);
    pb dl = pb_nan((size_t)n * V, 1);
    poc_dptr oc = mode == 2 ? T2.c : dl.c, og = mode == 2 ? T2.g : dl.g;
    poc_dptr ec = mode == 1 ? 0 : dent.c, eg = mode == 1 ? 0 : dent.g;
    C->k.head_text_bwd(KC, n, T2.c, tg.c, tmu.c, dlogp.c, ec, oc);
    G->k.head_text_bwd(KG, n, T2.g, tg.g, tmu.g, dlogp.g, eg, og);
    pb_read(oc, og, 1, (size_t)n * V, ls, tmp);
    char w[64];
    snprintf(w, sizeof w, "head_text_bwd %s", mn);
    cmp_arrays(w, ls, tmp, (size_t)n * V, 1e-5, RT_BF16 + 1e-5, NULL);
    free(ls);
    free(tmp);
    pb_free(&T2);
    pb_free(&dl);
  }
  pi_free(&tg);
  pb *bs[] = {&L, &m, &s, &a, &tl, &logp, &ent, &lse, &mu, &dlogp, &dent, &T1, &tlogp, &tent,
              &tlse, &tmu, &q, &lss, &tlss};
  for (size_t i = 0; i < sizeof bs / sizeof bs[0]; i++) pb_free(bs[i]);
  synced("head");
}

/* ---- optimizer, norm ------------------------------------------------------------------- */

/* Three AdamW steps. The cpu does the arithmetic in double and rounds w, m, v; the device
 * in fp32: a few fp32 roundings of each, so 1e-6 relative on w, m, v (a step moves w by
 * about lr = 1e-2 here, so a wrong bias correction or decay is 1e-3 off) and one bf16 ulp
 * on the compute copy (the two fp32 values may round to neighbours across a tie). */
static void t_adamw(void) {
  const size_t n = 5003;
  pb w = pb_rand(n, 0, 1), gr = pb_rand(n, 0, 0.1), m = pb_const(n, 0, 0), v = pb_const(n, 0, 0),
     wc = pb_nan(n, 1);
  gr.h[0] = 0; /* zero gradient: only decay moves w */
  pb_put(&gr);
  for (int step = 1; step <= 3; step++) {
    float lr = 1e-2f, b1 = 0.9f, b2 = 0.95f, bc1 = 1 - powf(b1, step), bc2 = 1 - powf(b2, step);
    C->k.adamw(KC, n, w.c, gr.c, m.c, v.c, wc.c, lr, b1, b2, 1e-8f, 0.1f, bc1, bc2, 0.7f);
    G->k.adamw(KG, n, w.g, gr.g, m.g, v.g, wc.g, lr, b1, b2, 1e-8f, 0.1f, bc1, bc2, 0.7f);
  }
  cmp_pb("adamw x3: w", &w, 1e-7, 1e-6, NULL);
  cmp_pb("adamw x3: m", &m, 1e-9, 1e-5, NULL);
  cmp_pb("adamw x3: v", &v, 1e-12, 1e-5, NULL);
  cmp_pb("adamw x3: wc (act)", &wc, 1e-7, 2 * RT_BF16, NULL);
  /* the zero-gradient element: w·(1 − lr·wd)³ on the device */
  double w0;
  G->get(G, &w0, POC_DT_F64, w.g, G->acc, 1);
  CHECK_NEAR(w0, w.h[0] * pow(1 - 1e-2 * 0.1, 3), 1e-6);
  pb *bs[] = {&w, &gr, &m, &v, &wc};
  for (size_t i = 0; i < 5; i++) pb_free(bs[i]);
  synced("adamw");
}

static void t_sumsq(size_t n) {
  pb x = pb_rand(n ? n : 1, 0, 1);
  double ref = 0, refa = 0;
  for (size_t i = 0; i < n; i++) ref += (double)x.h[i] * x.h[i];
  for (size_t i = 0; i < n; i++) refa += fabs((double)x.h[i] * x.h[i]);
  double sc = C->k.sumsq(KC, n, x.c), sg = G->k.sumsq(KG, n, x.g);
  /* the device adds fp32 within a block's grid-stride share (256 threads, 1024 blocks),
     then the 1024 partials in double */
  double tol = 2 * (256.0 * ((n + 262143) / 262144) + 8) * U32 * refa + 1e-12;
  printf("  sumsq n=%-7zu cpu %.9g cuda %.9g ref %.9g\n", n, sc, sg, ref);
  CHECK_MSG(fabs(sg - ref) <= tol, "sumsq n=%zu: cuda %.17g vs %.17g", n, sg, ref);
  CHECK_MSG(fabs(sc - ref) <= 1e-9 * refa + 1e-12, "sumsq n=%zu: cpu %.17g vs %.17g", n, sc, ref);
  /* the same bits every call: the norm must not depend on scheduling */
  CHECK(G->k.sumsq(KG, n, x.g) == sg);
  pb_free(&x);
  synced("sumsq");
}

int main(void) {
  char err[POC_ERR_LEN] = "";
  /* the device's chunk comes from the environment at open; the model reads it */
  setenv("POC_CUDA_HEAD_CHUNK", "100", 1);
  G = poc_device_open("cuda", err);
  CHECK_MSG(G != NULL, "the emulated CUDA device does not open: %s", err);
  if (!G) return check_summary("cuda_emul_kernels");
  printf("device: %s\n", G->desc);
  CHECK(G->head_chunk == 100);
  C = poc_device_open("cpu", err);
  CHECK_MSG(C != NULL, "%s", err);
  if (!C) return check_summary("cuda_emul_kernels");
  CHECK(G->acc == POC_DT_F32 && G->act == POC_DT_BF16 && !G->shared_act && !G->host_memory);

  poc_dims dm = {H, F, V, NH, NKV, HD, 1e-5};
  KC = C->kernels(C, &dm);
  KG = G->kernels(G, &dm);
  CHECK_MSG(KC && KG, "kernels: %s / %s", C->err, G->err);
  if (!KC || !KG) return check_summary("cuda_emul_kernels");
  CHECK(G->kernels(G, &dm) == KG); /* one module per set of dimensions */

  printf("gemm:\n");
  t_gemm(0, 1, 37, V, H, 1, 0.f, 0);   /* a linear layer: x·Wᵀ */
  t_gemm(1, 0, H, F, 37, 1, 1.f, 0);   /* a weight gradient: dYᵀ·X += */
  t_gemm(0, 0, 37, H, F, 0, 0.f, 0);   /* dX into bf16 */
  t_gemm(1, 1, 13, 29, 50, 1, 1.f, 3); /* both transposed, padded strides */
  t_gemm(0, 1, 1, V, H, 1, 0.f, 5);    /* one decode row */
  t_gemm(0, 0, 5, 7, 1, 1, 0.5f, 2);   /* rank 1 (the o_proj bias) with beta */
  t_gemm(0, 1, 37, F, 4, 0, 1.f, 0);   /* LoRA's B term added into a bf16 output */
  printf("embedding, norms, sums, cast:\n");
  t_embed();
  t_rmsnorm();
  t_colsum(300, 200);
  t_colsum(1, 72);
  t_colsum(70, 24);
  t_cast();
  printf("rope:\n");
  t_rope(0);
  t_rope(1);
  printf("attention:\n");
  {
    const int ones[] = {1, 1, 1}, mixed[] = {1, 5, 1, 40, 17, 1, 9}, longp[] = {300},
              two[] = {1, 299};
    t_attn_pack("1-token seqs", ones, 3);
    t_attn_pack("mixed", mixed, 7);
    t_attn_pack("one long", longp, 1);
    t_attn_pack("1+299", two, 2);
    t_attn_decode(1, 0, 0);
    t_attn_decode(1, 40, 0);
    t_attn_decode(3, 63, 0);  /* keys across two tiles */
    t_attn_decode(20, 37, 0); /* a prefill after a prompt: two query blocks */
    t_attn_decode(2, 50, 9);  /* keys from position 9 on */
  }
  printf("swiglu:\n");
  t_swiglu();
  t_drop_scale();
  printf("head:\n");
  t_head();
  printf("optimizer:\n");
  t_adamw();
  t_sumsq(0);
  t_sumsq(1);
  t_sumsq(100003);
  printf("worst difference: %.0f%% of its tolerance\n", 100 * worst_seen);

  /* errors are sticky: adamw without a separate compute copy fails the device, later
     kernels do nothing, sync reports the first message */
  pb w = pb_rand(8, 0, 1);
  G->k.adamw(KG, 8, w.g, w.g, w.g, w.g, w.g, 1e-3f, 0.9f, 0.95f, 1e-8f, 0, 1, 1, 1);
  CHECK(G->failed && strstr(G->err, "adamw"));
  CHECK(G->sync(G, err) == -1 && strstr(err, "adamw"));
  CHECK(isnan(G->k.sumsq(KG, 8, w.g)));
  pb_free(&w);

  poc_device_close(C);
  poc_device_close(G);
  return check_summary("cuda_emul_kernels");
}
