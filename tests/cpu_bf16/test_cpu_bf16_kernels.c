/* test_cpu_bf16_kernels.c — every kernel of the bf16 CPU device ("cpu-bf16") against the
 * float device ("cpu"), its twin: the same source (runtime/cpu/kernels_fp.c) in another
 * build, so the two must agree to within what bf16 rounding allows.
 *
 * Inputs are rounded to bf16 first, so both devices read exactly the same values in act
 * and acc buffers alike. Then (RNE: a rounded value is within half an ulp, 2^-8 of its
 * magnitude for bf16's 8 significant bits):
 *   - acc outputs computed from those inputs go through the same float operations in the
 *     same order: equal to the float device's to 1e-6 (in practice bit for bit);
 *   - act outputs are the float device's value rounded once: within 2^-8·|value|;
 *   - GEMMs differ in summation order as well (OpenBLAS against oneDNN): within
 *     2^-8·|c| (a bf16 C) + 2K·2^-24·Σ_k |a_ik b_kj|;
 *   - casts, the act copies of rope_bwd and AdamW's compute copy are exactly
 *     poc_bf16_from_f32 of the float value (round to nearest even, ties included).
 * Also: the device line names oneDNN and its ISA, steady repeats of a GEMM create no
 * primitive, and K = 0 leaves beta·C.
 */
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "check.h"
#include "cpu_internal.h"
#include "device.h"

#define ULP8 (1.0 / 256) /* half an ulp of bf16, relative */

typedef struct {
  poc_device *d;
  poc_kset *k;
} dev;

static dev F, B; /* "cpu" and "cpu-bf16" */
static poc_dims DM = {16, 24, 40, 4, 2, 8, 1e-5};

static uint64_t rng = 88172645463325252ull;
static double urand(void) {
  rng ^= rng << 13;
  rng ^= rng >> 7;
  rng ^= rng << 17;
  return (double)(rng >> 11) / 9007199254740992.0;
}
static float bf(float x) { return poc_bf16_to_f32(poc_bf16_from_f32(x)); }
/* n bf16-representable values in [lo, hi) */
static float *rnd(size_t n, double lo, double hi) {
  float *v = malloc(n * sizeof *v);
  for (size_t i = 0; i < n; i++) v[i] = bf((float)(lo + (hi - lo) * urand()));
  return v;
}

/* Every device buffer the checks make, so that the end frees what they keep (drop frees
 * one earlier). */
static struct { poc_device *d; poc_dptr p; } live[1024];
static int n_live;
static poc_dptr track(poc_device *d, poc_dptr p) {
  if (p && n_live < (int)(sizeof live / sizeof live[0])) live[n_live].d = d, live[n_live++].p = p;
  return p;
}
static void drop(poc_device *d, poc_dptr p) {
  for (int i = 0; i < n_live; i++)
    if (live[i].d == d && live[i].p == p) live[i] = live[--n_live];
  d->free(d, p);
}
static void drop_all(void) {
  while (n_live) drop(live[n_live - 1].d, live[n_live - 1].p);
}

/* a buffer of role act (1) or acc (0) holding h */
static poc_dptr up(dev *D, int act, const float *h, size_t n) {
  poc_dtype t = act ? D->d->act : D->d->acc;
  poc_dptr p = track(D->d, D->d->alloc(D->d, (n ? n : 1) * poc_dtype_size(t), "test"));
  if (h) D->d->put(D->d, p, t, h, POC_DT_F32, n);
  return p;
}
static float *down(dev *D, int act, poc_dptr p, size_t n) {
  float *h = malloc((n ? n : 1) * sizeof *h);
  D->d->get(D->d, h, POC_DT_F32, p, act ? D->d->act : D->d->acc, n);
  return h;
}
static poc_dptr upi(dev *D, const int32_t *h, size_t n) {
  poc_dptr p = track(D->d, D->d->alloc(D->d, n * 4, "test ints"));
  D->d->put(D->d, p, POC_DT_I32, h, POC_DT_I32, n);
  return p;
}

/* |b - a| <= rel·|a| + abs for every element; a from "cpu", b from "cpu-bf16" */
static void near(const char *what, const float *a, const float *b, size_t n, double rel,
                 double abs) {
  size_t bad = 0, first = 0;
  for (size_t i = 0; i < n; i++)
    if (!(fabs((double)b[i] - a[i]) <= rel * fabs(a[i]) + abs)) {
      if (!bad) first = i;
      bad++;
    }
  CHECK_MSG(!bad, "%s: %zu of %zu elements off, first [%zu]: cpu %.9g, cpu-bf16 %.9g", what,
            bad, n, first, a[first], b[first]);
}
/* b is a rounded to bf16 exactly */
static void rounded(const char *what, const float *a, const float *b, size_t n) {
  size_t bad = 0, first = 0;
  for (size_t i = 0; i < n; i++)
    if (poc_bf16_to_f32(poc_bf16_from_f32(a[i])) != b[i]) {
      if (!bad) first = i;
      bad++;
    }
  CHECK_MSG(!bad, "%s: %zu of %zu not the rounded float, first [%zu]: %.9g -> %.9g", what,
            bad, n, first, a[first], b[first]);
}

/* Runs `body` on both devices with the same inputs; body fills out[dev] arrays. */
#define BOTH(D) for (dev *D = &F; D; D = D == &F ? &B : NULL)

/* ---- GEMM ------------------------------------------------------------------------------ */

static void gemm_case(int ta, int tb, int M, int N, int K, int pad, float beta, int c_acc) {
  int lda = (ta ? M : K) + pad, ldb = (tb ? K : N) + pad, ldc = N + pad;
  size_t na = (size_t)(ta ? K : M) * lda, nb = (size_t)(tb ? N : K) * ldb,
         nc = (size_t)M * ldc;
  float *A = rnd(na, -1, 1), *Bv = rnd(nb, -1, 1), *C0 = rnd(nc, -1, 1);
  float *out[2];
  int i = 0;
  BOTH(D) {
    poc_dptr a = up(D, 1, A, na), b = up(D, 1, Bv, nb), c = up(D, !c_acc, C0, nc);
    D->d->k.gemm(D->k, ta, tb, M, N, K, a, lda, b, ldb, beta, c, c_acc, ldc);
    out[i++] = down(D, !c_acc, c, nc);
    drop(D->d, a);
    drop(D->d, b);
    drop(D->d, c);
  }
  char what[96];
  snprintf(what, sizeof what, "gemm ta %d tb %d %dx%dx%d pad %d beta %g C %s", ta, tb, M, N, K,
           pad, beta, c_acc ? "acc" : "act");
  size_t bad = 0, first = 0;
  for (int m = 0; m < M; m++)
    for (int n = 0; n < N; n++) {
      double s = 0;
      for (int k = 0; k < K; k++) {
        double x = A[ta ? (size_t)k * lda + m : (size_t)m * lda + k];
        double y = Bv[tb ? (size_t)n * ldb + k : (size_t)k * ldb + n];
        s += fabs(x * y);
      }
      s += fabs(beta * C0[(size_t)m * ldc + n]);
      size_t o = (size_t)m * ldc + n;
      double tol = 2.0 * (K + 1) * ldexp(1, -24) * s + (c_acc ? 0 : ULP8 * fabs(out[0][o]));
      if (!(fabs((double)out[1][o] - out[0][o]) <= tol + 1e-30)) {
        if (!bad) first = o;
        bad++;
      }
    }
  CHECK_MSG(!bad, "%s: %zu off, first [%zu]: %.9g vs %.9g", what, bad, first, out[0][first],
            out[1][first]);
  /* the padding between rows is not written */
  for (int m = 0; m < M && pad; m++)
    CHECK_MSG(out[1][(size_t)m * ldc + N] == C0[(size_t)m * ldc + N], "%s: padding", what);
  free(A), free(Bv), free(C0), free(out[0]), free(out[1]);
}

static void test_gemm(void) {
  for (int ta = 0; ta < 2; ta++)
    for (int tb = 0; tb < 2; tb++)
      for (int c_acc = 0; c_acc < 2; c_acc++) {
        gemm_case(ta, tb, 7, 13, 33, 0, 0.f, c_acc);
        gemm_case(ta, tb, 19, 5, 70, 3, 1.f, c_acc);
      }
  gemm_case(0, 1, 64, 96, 128, 0, 1.f, 1);
  gemm_case(1, 0, 3, 4, 1, 2, 0.5f, 0);
  /* steady state: the same shapes again create no primitive */
  long before = poc_cpu_dnnl_created(B.k);
  gemm_case(0, 1, 64, 96, 128, 0, 1.f, 1);
  gemm_case(0, 0, 7, 13, 33, 0, 0.f, 1);
  CHECK_MSG(poc_cpu_dnnl_created(B.k) == before, "%ld primitives made for repeated shapes",
            poc_cpu_dnnl_created(B.k) - before);
  /* K = 0: C = beta·C */
  float c0[6] = {1, -2, 3, 0.5f, 8, -1};
  poc_dptr c = up(&B, 0, c0, 6);
  B.d->k.gemm(B.k, 0, 0, 2, 3, 0, c, 1, c, 3, 2.f, c, 1, 3);
  float *r = down(&B, 0, c, 6);
  for (int i = 0; i < 6; i++) CHECK(r[i] == 2 * c0[i]);
  free(r);
  drop(B.d, c);
}

/* ---- the elementwise and row kernels ------------------------------------------------------ */

/* A pack of two sequences (rows 0..5 and 6..10): key windows and sequence ends. */
enum { T = 11 };
static const int32_t POS[T] = {0, 1, 2, 3, 4, 5, 0, 1, 2, 3, 4};
static const int32_t KBEG[T] = {0, 0, 0, 0, 0, 0, 6, 6, 6, 6, 6};
static const int32_t SEND[T] = {6, 6, 6, 6, 6, 6, 11, 11, 11, 11, 11};
static const int32_t TOK[T] = {3, 7, 7, 0, 39, 12, 5, 3, 21, 30, 8};

static void test_rows(void) {
  const int H = DM.H, F_ = DM.F;
  float *x = rnd((size_t)T * H, -2, 2), *w = rnd((size_t)H, 0.5, 1.5), *dy = rnd((size_t)T * H, -1, 1);
  float *E = rnd((size_t)DM.V * H, -1, 1);
  int32_t rows[4] = {10, 2, 5, 7};
  float *o[2][8];
  int i = 0;
  BOTH(D) {
    poc_device *d = D->d;
    const poc_kernels *k = &d->k;
    poc_dptr px = up(D, 0, x, (size_t)T * H), pw = up(D, 1, w, H), pdy = up(D, 0, dy, (size_t)T * H);
    poc_dptr py = up(D, 1, NULL, (size_t)T * H), pr = up(D, 0, NULL, T), pdx = up(D, 0, x, (size_t)T * H);
    poc_dptr pdw = up(D, 0, w, H), prow = upi(D, rows, 4), pyr = up(D, 1, NULL, (size_t)4 * H);
    poc_dptr prr = up(D, 0, NULL, 4), pE = up(D, 1, E, (size_t)DM.V * H), ptok = upi(D, TOK, T);
    poc_dptr pxe = up(D, 0, NULL, (size_t)T * H), pdE = up(D, 0, E, (size_t)DM.V * H);
    poc_dptr pcs = up(D, 0, w, H);
    k->rmsnorm_fwd(D->k, T, px, 0, pw, py, pr);
    k->rmsnorm_fwd(D->k, 4, px, prow, pw, pyr, prr);
    k->rmsnorm_bwd(D->k, T, px, 0, pw, pr, pdy, pdx);
    k->rmsnorm_dw(D->k, T, px, 0, pr, pdy, pdw);
    k->embed_fwd(D->k, T, ptok, pE, pxe);
    k->embed_bwd(D->k, T, ptok, pdy, pdE);
    k->colsum(D->k, T, H, pdy, pcs);
    o[i][0] = down(D, 1, py, (size_t)T * H);
    o[i][1] = down(D, 0, pr, T);
    o[i][2] = down(D, 1, pyr, (size_t)4 * H);
    o[i][3] = down(D, 0, pdx, (size_t)T * H);
    o[i][4] = down(D, 0, pdw, H);
    o[i][5] = down(D, 0, pxe, (size_t)T * H);
    o[i][6] = down(D, 0, pdE, (size_t)DM.V * H);
    o[i][7] = down(D, 0, pcs, H);
    CHECK(d->sync(d, NULL) == 0);
    i++;
  }
  near("rmsnorm_fwd y (act)", o[0][0], o[1][0], (size_t)T * H, ULP8, 0);
  near("rmsnorm_fwd rstd", o[0][1], o[1][1], T, 1e-6, 0);
  near("rmsnorm_fwd rows (act)", o[0][2], o[1][2], (size_t)4 * H, ULP8, 0);
  near("rmsnorm_bwd dx", o[0][3], o[1][3], (size_t)T * H, 1e-6, 1e-7);
  near("rmsnorm_dw", o[0][4], o[1][4], H, 1e-6, 1e-7);
  near("embed_fwd (act -> acc: exact)", o[0][5], o[1][5], (size_t)T * H, 0, 0);
  near("embed_bwd", o[0][6], o[1][6], (size_t)DM.V * H, 1e-6, 1e-7);
  near("colsum", o[0][7], o[1][7], H, 1e-6, 1e-7);
  for (int a = 0; a < 2; a++)
    for (int b = 0; b < 8; b++) free(o[a][b]);
  /* SwiGLU, all act, on the fused rows [g_t | u_t] */
  size_t n = (size_t)T * F_;
  float *g = rnd(n, -4, 4), *u = rnd(n, -2, 2), *da = rnd(n, -1, 1);
  float *gu = malloc(2 * n * sizeof *gu);
  for (int t = 0; t < T; t++) {
    memcpy(gu + (size_t)t * 2 * F_, g + (size_t)t * F_, (size_t)F_ * sizeof *gu);
    memcpy(gu + (size_t)t * 2 * F_ + F_, u + (size_t)t * F_, (size_t)F_ * sizeof *gu);
  }
  float *s[2][3];
  i = 0;
  BOTH(D) {
    const poc_kernels *k = &D->d->k;
    poc_dptr pgu = up(D, 1, gu, 2 * n), pda = up(D, 1, da, n);
    poc_dptr pa = up(D, 1, NULL, n), pdgu = up(D, 1, NULL, 2 * n);
    k->swiglu_fwd(D->k, T, pgu, pa);
    k->swiglu_bwd(D->k, T, pgu, pda, pdgu);
    s[i][0] = down(D, 1, pa, n);
    float *dgu = down(D, 1, pdgu, 2 * n);
    s[i][1] = malloc(n * sizeof(float));
    s[i][2] = malloc(n * sizeof(float));
    for (int t = 0; t < T; t++) {
      memcpy(s[i][1] + (size_t)t * F_, dgu + (size_t)t * 2 * F_, (size_t)F_ * sizeof(float));
      memcpy(s[i][2] + (size_t)t * F_, dgu + (size_t)t * 2 * F_ + F_, (size_t)F_ * sizeof(float));
    }
    /* in place, as the model runs it: [dg | du] into [g | u] */
    k->swiglu_bwd(D->k, T, pgu, pda, pgu);
    float *ig = down(D, 1, pgu, 2 * n);
    near("swiglu_bwd in place", dgu, ig, 2 * n, 0, 0);
    free(ig), free(dgu);
    i++;
  }
  near("swiglu_fwd (act)", s[0][0], s[1][0], n, ULP8, 0);
  near("swiglu_bwd dg (act)", s[0][1], s[1][1], n, ULP8, 0);
  near("swiglu_bwd du (act)", s[0][2], s[1][2], n, ULP8, 0);
  for (int a = 0; a < 2; a++)
    for (int b = 0; b < 3; b++) free(s[a][b]);
  free(g), free(u), free(da), free(gu), free(x), free(w), free(dy), free(E);
}

/* cast, drop_scale, AdamW's compute copy: the rounding itself */
static void test_rounding(void) {
  /* values that are not bf16: ties to even both ways, a NaN, infinities, tiny ones */
  enum { N = 4099 };
  float *x = malloc(N * sizeof *x);
  for (int i = 0; i < N; i++) x[i] = (float)((urand() - 0.5) * 64);
  x[0] = 1.00390625f;  /* tie: to 1 (even) */
  x[1] = 1.01171875f;  /* tie: to 1 + 2^-6 (even) */
  x[2] = -1.00390625f;
  x[3] = INFINITY;
  x[4] = -INFINITY;
  x[5] = NAN;
  x[6] = 1e-40f;
  x[7] = 3.4e38f;       /* above the largest bf16 by more than half an ulp: infinity */
  poc_dptr px = up(&B, 0, x, N), py = up(&B, 1, NULL, N);
  B.d->k.cast(B.k, N, px, py);
  uint16_t *y = malloc(N * 2);
  B.d->get(B.d, y, POC_DT_BF16, py, POC_DT_BF16, N);
  size_t bad = 0;
  for (int i = 0; i < N; i++) bad += y[i] != poc_bf16_from_f32(x[i]);
  CHECK_MSG(!bad, "cast: %zu of %d not poc_bf16_from_f32's bits", bad, N);
  CHECK(y[0] == 0x3f80 && y[1] == 0x3f82 && y[2] == 0xbf80 && y[3] == 0x7f80 &&
        y[4] == 0xff80 && (y[5] & 0x7fc0) == 0x7fc0 && y[7] == 0x7f80);
  free(y);
  drop(B.d, px);
  drop(B.d, py);

  /* drop_scale: act and acc targets, with and without beta and dropout */
  float *xa = rnd(N, -3, 3), *y0 = rnd(N, -3, 3);
  for (int y_acc = 0; y_acc < 2; y_acc++)
    for (int c = 0; c < 2; c++) {
      float beta = c ? 1.f : 0.f, mul = c ? 2.5f : 0.375f;
      uint32_t thr = c ? poc_drop_threshold(0.25) : 0;
      float *o[2];
      int i = 0;
      BOTH(D) {
        poc_dptr a = up(D, 1, xa, N), b = up(D, !y_acc, y0, N);
        D->d->k.drop_scale(D->k, N, a, b, y_acc, beta, mul, thr, 1234);
        o[i++] = down(D, !y_acc, b, N);
      }
      char what[64];
      snprintf(what, sizeof what, "drop_scale y_acc %d beta %g thr %u", y_acc, beta, thr);
      near(what, o[0], o[1], N, y_acc ? 1e-7 : ULP8, 0);
      free(o[0]), free(o[1]);
    }
  free(xa), free(y0), free(x);

  /* AdamW: master weights and moments as the float device's, compute copy their rounding */
  float *w = rnd(N, -1, 1), *g = rnd(N, -0.1, 0.1), *m = rnd(N, -0.01, 0.01),
        *v = rnd(N, 0, 1e-4);
  float *o[2][4];
  int i = 0;
  BOTH(D) {
    poc_dptr pw = up(D, 0, w, N), pg = up(D, 0, g, N), pm = up(D, 0, m, N), pv = up(D, 0, v, N);
    poc_dptr pc = D->d->shared_act ? pw : up(D, 1, NULL, N);
    D->d->k.adamw(D->k, N, pw, pg, pm, pv, pc, 1e-3f, 0.9f, 0.999f, 1e-8f, 0.01f, 0.19f,
                  0.002f, 0.5f);
    o[i][0] = down(D, 0, pw, N);
    o[i][1] = down(D, 0, pm, N);
    o[i][2] = down(D, 0, pv, N);
    o[i][3] = down(D, 1, pc, N);
    i++;
  }
  near("adamw w", o[0][0], o[1][0], N, 0, 0);
  near("adamw m", o[0][1], o[1][1], N, 0, 0);
  near("adamw v", o[0][2], o[1][2], N, 0, 0);
  rounded("adamw compute copy", o[1][0], o[1][3], N);
  for (int a = 0; a < 2; a++)
    for (int b = 0; b < 4; b++) free(o[a][b]);
  /* sumsq: the same double sum */
  poc_dptr pf = up(&F, 0, w, N), pb = up(&B, 0, w, N);
  CHECK(F.d->k.sumsq(F.k, N, pf) == B.d->k.sumsq(B.k, N, pb));
  free(w), free(g), free(m), free(v);
}

/* ---- RoPE and attention --------------------------------------------------------------- */

static void test_attention(void) {
  const int nh = DM.nh, nkv = DM.nkv, hd = DM.hd, half = hd / 2;
  const size_t qn = (size_t)T * nh * hd, kn = (size_t)T * nkv * hd;
  float *q = rnd(qn, -1, 1), *kk = rnd(kn, -1, 1), *v = rnd(kn, -1, 1);
  float *bq = rnd((size_t)nh * hd, -0.5, 0.5), *bk = rnd((size_t)nkv * hd, -0.5, 0.5),
        *bv = rnd((size_t)nkv * hd, -0.5, 0.5), *dO = rnd(qn, -1, 1);
  float *cosb = malloc((size_t)8 * half * sizeof(float)), *sinb = malloc((size_t)8 * half * sizeof(float));
  for (int p = 0; p < 8; p++)
    for (int j = 0; j < half; j++) {
      double th = p * pow(10000.0, -2.0 * j / hd);
      cosb[p * half + j] = (float)cos(th);
      sinb[p * half + j] = (float)sin(th);
    }
  float *o[2][12];
  int i = 0;
  BOTH(D) {
    poc_device *d = D->d;
    const poc_kernels *k = &d->k;
    poc_dptr pq = up(D, 1, q, qn), pk = up(D, 1, kk, kn), pv = up(D, 1, v, kn);
    poc_dptr pbq = up(D, 1, bq, (size_t)nh * hd), pbk = up(D, 1, bk, (size_t)nkv * hd),
             pbv = up(D, 1, bv, (size_t)nkv * hd);
    poc_dptr pc = up(D, 0, cosb, (size_t)8 * half), ps = up(D, 0, sinb, (size_t)8 * half);
    poc_dptr ppos = upi(D, POS, T), pkb = upi(D, KBEG, T), pse = upi(D, SEND, T);
    /* the fused projection's rows [q_t | k_t | v_t] */
    const size_t N = (size_t)(nh + 2 * nkv) * hd, qd = (size_t)nh * hd, kvd = (size_t)nkv * hd;
    float *qkv = malloc((size_t)T * N * sizeof *qkv);
    for (int t = 0; t < T; t++) {
      memcpy(qkv + t * N, q + t * qd, qd * sizeof *qkv);
      memcpy(qkv + t * N + qd, kk + t * kvd, kvd * sizeof *qkv);
      memcpy(qkv + t * N + qd + kvd, v + t * kvd, kvd * sizeof *qkv);
    }
    poc_dptr pqkv = up(D, 1, qkv, (size_t)T * N);
    free(qkv);
    k->qkv_bias_rope(D->k, T, ppos, pc, ps, pqkv, pq, pk, pv, pbq, pbk, pbv);
    drop(d, pqkv);
    o[i][0] = down(D, 1, pq, qn);
    o[i][1] = down(D, 1, pk, kn);
    o[i][2] = down(D, 1, pv, kn);
    i++;
    drop(d, pq), drop(d, pk), drop(d, pv);
    drop(d, pbq), drop(d, pbk), drop(d, pbv);
    drop(d, pc), drop(d, ps), drop(d, ppos), drop(d, pkb), drop(d, pse);
  }
  near("qkv_bias_rope q (act)", o[0][0], o[1][0], qn, ULP8, 0);
  near("qkv_bias_rope k (act)", o[0][1], o[1][1], kn, ULP8, 0);
  near("qkv_bias_rope v (act)", o[0][2], o[1][2], kn, ULP8, 0);

  /* attention forward and backward from the bf16 device's q, k, v (representable in both) */
  const float *Q = o[1][0], *K = o[1][1], *V = o[1][2];
  float *Obf = malloc(qn * sizeof *Obf);
  i = 0;
  BOTH(D) {
    poc_device *d = D->d;
    const poc_kernels *k = &d->k;
    poc_dptr pq = up(D, 1, Q, qn), pk = up(D, 1, K, kn), pv = up(D, 1, V, kn);
    poc_dptr pkb = upi(D, KBEG, T), pse = upi(D, SEND, T), pdO = up(D, 1, dO, qn);
    poc_dptr pout = up(D, 1, NULL, qn), plse = up(D, 0, NULL, (size_t)T * nh);
    poc_dptr pdq = up(D, 0, NULL, qn), pdk = up(D, 0, NULL, kn), pdv = up(D, 0, NULL, kn),
             pD = up(D, 0, NULL, (size_t)T * nh);
    k->attn_fwd(D->k, T, 0, pq, pk, pv, pkb, pout, plse);
    o[i][3] = down(D, 1, pout, qn);
    o[i][4] = down(D, 0, plse, (size_t)T * nh);
    /* the backward reads the same O on both: the float device's, rounded to bf16 */
    if (D == &F)
      for (size_t j = 0; j < qn; j++) Obf[j] = bf(o[0][3][j]);
    d->put(d, pout, d->act, Obf, POC_DT_F32, qn);
    k->attn_bwd(D->k, T, pq, pk, pv, pout, pdO, plse, pkb, pse, pdq, pdk, pdv, pD);
    o[i][5] = down(D, 0, pdq, qn);
    o[i][6] = down(D, 0, pdk, kn);
    o[i][7] = down(D, 0, pdv, kn);
    /* a decode row: query row 3 of the first sequence at offset q0 = 3 */
    poc_dptr pq1 = up(D, 1, Q + (size_t)3 * nh * hd, (size_t)nh * hd), pkb1 = upi(D, KBEG, 1);
    poc_dptr po1 = up(D, 1, NULL, (size_t)nh * hd), pl1 = up(D, 0, NULL, nh);
    k->attn_fwd(D->k, 1, 3, pq1, pk, pv, pkb1, po1, pl1);
    o[i][8] = down(D, 1, po1, (size_t)nh * hd);
    /* rope_bwd on dq, dk (acc) with act copies */
    poc_dptr ppos = upi(D, POS, T);
    poc_dptr pc = up(D, 0, cosb, (size_t)8 * half), ps = up(D, 0, sinb, (size_t)8 * half);
    const size_t N = qn / T + 2 * (kn / T), qd = qn / T, kvd = kn / T;
    poc_dptr pdqkv = up(D, 1, NULL, (size_t)T * N);
    k->rope_bwd(D->k, T, ppos, pc, ps, pdq, pdk, pdv, pdqkv);
    o[i][9] = down(D, 0, pdq, qn);
    /* the act rows [dq_t | dk_t | dv_t]: dq's and dv's parts */
    float *dqkv = down(D, 1, pdqkv, (size_t)T * N);
    drop(d, pdqkv);
    o[i][10] = malloc(qn * sizeof(float));
    o[i][11] = malloc(kn * sizeof(float));
    for (int t = 0; t < T; t++) {
      memcpy(o[i][10] + t * qd, dqkv + t * N, qd * sizeof(float));
      memcpy(o[i][11] + t * kvd, dqkv + t * N + qd + kvd, kvd * sizeof(float));
    }
    free(dqkv);
    CHECK(d->sync(d, NULL) == 0);
    i++;
  }
  near("attn_fwd out (act)", o[0][3], o[1][3], qn, ULP8, 0);
  near("attn_fwd lse", o[0][4], o[1][4], (size_t)T * nh, 1e-6, 0);
  near("attn_bwd dq", o[0][5], o[1][5], qn, 1e-5, 1e-6);
  near("attn_bwd dk", o[0][6], o[1][6], kn, 1e-5, 1e-6);
  near("attn_bwd dv", o[0][7], o[1][7], kn, 1e-5, 1e-6);
  near("attn_fwd decode row (act)", o[0][8], o[1][8], (size_t)nh * hd, ULP8, 0);
  near("rope_bwd dq", o[0][9], o[1][9], qn, 1e-5, 1e-6);
  rounded("rope_bwd dq16", o[1][9], o[1][10], qn);
  rounded("rope_bwd dv16", o[1][7], o[1][11], kn);
  for (int a = 0; a < 2; a++)
    for (int b = 0; b < 12; b++) free(o[a][b]);
  free(q), free(kk), free(v), free(bq), free(bk), free(bv), free(dO), free(cosb), free(sinb);
  free(Obf);
}

/* ---- the loss head --------------------------------------------------------------------- */

static void test_head(void) {
  const int n = 5, V = DM.V, c = 16; /* chunks of 16, 16 and 8 columns */
  int32_t tgt[5] = {0, 17, 39, 16, 8};
  float *L = rnd((size_t)n * V, -6, 6), *dlogp = rnd(n, -1, 1), *dent = rnd(n, -0.5, 0.5);
  float *o[2][10];
  int i = 0;
  BOTH(D) {
    poc_device *d = D->d;
    const poc_kernels *k = &d->k;
    poc_dptr pt = upi(D, tgt, n), pm = up(D, 0, NULL, n), ps = up(D, 0, NULL, n),
             pa = up(D, 0, NULL, n), pq = up(D, 0, NULL, n), ptl = up(D, 0, NULL, n);
    poc_dptr plogp = up(D, 0, NULL, n), pent = up(D, 0, NULL, n), plss = up(D, 0, NULL, n),
             plse = up(D, 0, NULL, n), pmu = up(D, 0, NULL, n);
    poc_dptr pg = up(D, 0, dlogp, n), pe = up(D, 0, dent, n);
    poc_dptr chunk = up(D, 0, NULL, (size_t)n * c), dlog = up(D, 1, NULL, (size_t)n * c);
    float *dl = malloc((size_t)n * V * sizeof *dl), *part = malloc((size_t)n * c * sizeof *part);
    for (int v0 = 0; v0 < V; v0 += c) {
      int w = V - v0 < c ? V - v0 : c;
      for (int r = 0; r < n; r++) memcpy(part + (size_t)r * w, L + (size_t)r * V + v0, w * 4);
      d->put(d, chunk, d->acc, part, POC_DT_F32, (size_t)n * w);
      k->head_chunk_fwd(D->k, n, w, v0, chunk, pt, pm, ps, pa, pq, ptl);
    }
    k->head_finish(D->k, n, pm, ps, pa, pq, ptl, plogp, pent, plss, plse, pmu);
    for (int v0 = 0; v0 < V; v0 += c) {
      int w = V - v0 < c ? V - v0 : c;
      for (int r = 0; r < n; r++) memcpy(part + (size_t)r * w, L + (size_t)r * V + v0, w * 4);
      d->put(d, chunk, d->acc, part, POC_DT_F32, (size_t)n * w);
      k->head_chunk_bwd(D->k, n, w, v0, chunk, pt, plse, pmu, pg, pe, dlog);
      d->get(d, part, POC_DT_F32, dlog, d->act, (size_t)n * w);
      for (int r = 0; r < n; r++) memcpy(dl + (size_t)r * V + v0, part + (size_t)r * w, w * 4);
    }
    o[i][0] = down(D, 0, plogp, n);
    o[i][1] = down(D, 0, pent, n);
    o[i][2] = down(D, 0, plss, n);
    o[i][3] = down(D, 0, plse, n);
    o[i][4] = dl;
    /* textbook: the whole [n × V] logits, log-softmax in place */
    poc_dptr text = up(D, 0, L, (size_t)n * V), tdl = up(D, 1, NULL, (size_t)n * V);
    poc_dptr tmu = up(D, 0, NULL, n);
    k->head_text_fwd(D->k, n, text, pt, plogp, pent, plss, plse, tmu);
    k->head_text_bwd(D->k, n, text, pt, tmu, pg, pe, tdl);
    o[i][5] = down(D, 0, plogp, n);
    o[i][6] = down(D, 0, pent, n);
    o[i][7] = down(D, 0, plss, n);
    o[i][8] = down(D, 0, text, (size_t)n * V);
    o[i][9] = down(D, 1, tdl, (size_t)n * V);
    CHECK(d->sync(d, NULL) == 0);
    free(part);
    i++;
  }
  const char *names[10] = {"fused logp", "fused entropy", "fused log Σp²", "fused lse",
                           "fused dlogits (act)", "textbook logp", "textbook entropy",
                           "textbook log Σp²", "textbook log-softmax", "textbook dlogits (act)"};
  size_t len[10] = {n, n, n, n, (size_t)n * V, n, n, n, (size_t)n * V, (size_t)n * V};
  for (int j = 0; j < 10; j++)
    near(names[j], o[0][j], o[1][j], len[j], j == 4 || j == 9 ? ULP8 : 1e-6, 1e-30);
  for (int a = 0; a < 2; a++)
    for (int b = 0; b < 10; b++) free(o[a][b]);
  free(L), free(dlogp), free(dent);
}

int main(void) {
  char err[POC_ERR_LEN];
  F.d = poc_device_open("cpu", err);
  B.d = poc_device_open("cpu-bf16", err);
  if (!F.d || !B.d) {
    fprintf(stderr, "cannot open the devices: %s\n", err);
    return 1;
  }
  fprintf(stderr, "%s\n", B.d->desc);
  CHECK(!strcmp(B.d->name, "cpu-bf16") && B.d->acc == POC_DT_F32 && B.d->act == POC_DT_BF16 &&
        !B.d->shared_act && B.d->host_memory);
  CHECK(strstr(B.d->desc, "cpu-bf16: ") == B.d->desc && strstr(B.d->desc, "oneDNN ") &&
        strstr(B.d->desc, "matmul "));
  F.k = F.d->kernels(F.d, &DM);
  B.k = B.d->kernels(B.d, &DM);
  CHECK(F.k && B.k);
  if (!F.k || !B.k) return check_summary("cpu_bf16_kernels");
  test_gemm();
  test_rows();
  test_rounding();
  test_attention();
  test_head();
  CHECK(B.d->sync(B.d, err) == 0);
  drop_all();
  poc_device_close(F.d);
  poc_device_close(B.d);
  return check_summary("cpu_bf16_kernels");
}
