/* test_cpu_kernels.c — every kernel of the CPU devices (cpu: float, cpu64: double) against
 * a plain double-precision reference written here from the math in device.h, on random
 * inputs with awkward shapes: H and head_dim not multiples of 8, a one-token sequence in
 * the pack, a decode step with q0 > 0, GQA (4 query heads on 2 kv heads), and the in-place
 * aliases the model uses. Inputs are float-representable, so both precisions see the same
 * numbers and the reference is exact up to its own double rounding.
 *
 * Tolerances (relative, absolute below 1): 1e-12 for cpu64 (the largest error seen is
 * 2e-14), 1e-5 for cpu (6e-6 seen, in sgemm sums of 261 products). A second, larger shape
 * puts every loop above the threshold where it goes parallel; the float kernels run it on
 * 1 and on 2 threads and must give the same bits (all but the GEMMs: OpenBLAS's sgemm
 * does not). Then put/get conversions (bf16 rounding to nearest even) and
 * the sticky errors: a huge allocation is refused with a message.
 */
#include <math.h>
#include <omp.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "check.h"
#include "device.h"
#include "cpu/cpu_features.h"

/* ---- plumbing ---------------------------------------------------------------------------- */

typedef struct {
  poc_device *d;
  poc_kset *k;
  const poc_kernels *K;
  double tol;
  poc_rng rng;
  double *keep; /* every output, when collecting for the determinism check */
  size_t nkeep, capkeep;
  int collect;
  const char *label[512]; /* what each run of kept values came from, and where it starts */
  size_t at[512];
  int nlabel;
} tc;

/* U(−a, a) rounded to float, so the float device holds exactly the reference's input */
static double rnd(tc *c, double a) {
  return (double)(float)(a * (2 * poc_rng_uniform(&c->rng) - 1));
}

static double *vec(tc *c, size_t n, double a) {
  double *v = malloc((n ? n : 1) * sizeof *v);
  for (size_t i = 0; i < n; i++) v[i] = rnd(c, a);
  return v;
}

static double *zeros(size_t n) { return calloc(n ? n : 1, sizeof(double)); }

static poc_dptr up(tc *c, const double *h, size_t n) {
  poc_dptr p = c->d->alloc(c->d, n * poc_dtype_size(c->d->acc), "test buffer");
  c->d->put(c->d, p, c->d->acc, h, POC_DT_F64, n);
  return p;
}

static poc_dptr upi(tc *c, const int32_t *h, size_t n) {
  poc_dptr p = c->d->alloc(c->d, n * 4, "test ints");
  c->d->put(c->d, p, POC_DT_I32, h, POC_DT_I32, n);
  return p;
}

static void keep(tc *c, const double *h, size_t n) {
  if (c->nkeep + n > c->capkeep) {
    c->capkeep = 2 * (c->nkeep + n);
    c->keep = realloc(c->keep, c->capkeep * sizeof *c->keep);
  }
  memcpy(c->keep + c->nkeep, h, n * sizeof *h);
  c->nkeep += n;
}

static void keep1(tc *c, double x) { keep(c, &x, 1); }

static double *down(tc *c, poc_dptr p, size_t n) {
  double *h = malloc((n ? n : 1) * sizeof *h);
  c->d->get(c->d, h, POC_DT_F64, p, c->d->acc, n);
  if (c->collect) keep(c, h, n);
  return h;
}

/* the largest error, relative above 1 and absolute below, with where it is */
static void cmp(tc *c, const char *what, const double *got, const double *ref, size_t n) {
  double worst = 0;
  size_t at = 0;
  for (size_t i = 0; i < n; i++) {
    double s = fmax(1, fmax(fabs(got[i]), fabs(ref[i])));
    double e = fabs(got[i] - ref[i]) / s;
    if (!(e <= worst)) {
      worst = e;
      at = i;
    }
  }
  CHECK_MSG(worst <= c->tol, "%s %s: error %.3g at %zu (%.17g vs reference %.17g), tol %g",
            c->d->name, what, worst, at, n ? got[at] : 0, n ? ref[at] : 0, c->tol);
}

/* compares a device buffer with a reference and frees the download */
static void check_buf(tc *c, const char *what, poc_dptr p, const double *ref, size_t n) {
  if (c->collect && c->nlabel < 512) {
    c->label[c->nlabel] = what;
    c->at[c->nlabel++] = c->nkeep;
  }
  double *g = down(c, p, n);
  cmp(c, what, g, ref, n);
  free(g);
}

typedef struct {
  int H, F, V, nh, nkv, hd;
  int nseq, seqlen[4]; /* the pack */
  int q0, Td;          /* the decode step: Td rows after q0 cached ones */
} shape;

/* ---- the kernels, one by one ---------------------------------------------------------- */

static void t_gemm(tc *c, int M, int N, int K) {
  for (int ta = 0; ta < 2; ta++)
    for (int tb = 0; tb < 2; tb++)
      for (int acc = 0; acc < 2; acc++) {
        /* strided operands: one row of A is lda wide with the matrix in its first columns */
        int ar = ta ? K : M, ac = ta ? M : K, br = tb ? N : K, bc = tb ? K : N;
        int lda = ac + 3, ldb = bc + 1, ldc = N + 2;
        double *A = vec(c, (size_t)ar * lda, 1), *B = vec(c, (size_t)br * ldb, 1);
        double *C = vec(c, (size_t)M * ldc, 1), *R = malloc((size_t)M * ldc * sizeof *R);
        float beta = acc ? 1.f : 0.f;
        /* the columns past N in each row of C are padding: left as they were */
        memcpy(R, C, (size_t)M * ldc * sizeof *R);
        for (int i = 0; i < M; i++)
          for (int j = 0; j < N; j++) {
            double s = 0;
            for (int l = 0; l < K; l++)
              s += (ta ? A[(size_t)l * lda + i] : A[(size_t)i * lda + l]) *
                   (tb ? B[(size_t)j * ldb + l] : B[(size_t)l * ldb + j]);
            R[(size_t)i * ldc + j] = s + beta * C[(size_t)i * ldc + j];
          }
        poc_dptr dA = up(c, A, (size_t)ar * lda), dB = up(c, B, (size_t)br * ldb),
                 dC = up(c, C, (size_t)M * ldc);
        c->K->gemm(c->k, ta, tb, M, N, K, dA, lda, dB, ldb, beta, dC, acc, ldc);
        static const char *what[8] = {"gemm N N beta 0", "gemm N N beta 1", "gemm N T beta 0",
                                      "gemm N T beta 1", "gemm T N beta 0", "gemm T N beta 1",
                                      "gemm T T beta 0", "gemm T T beta 1"};
        check_buf(c, what[ta * 4 + tb * 2 + acc], dC, R, (size_t)M * ldc);
        c->d->free(c->d, dA);
        c->d->free(c->d, dB);
        c->d->free(c->d, dC);
        free(A);
        free(B);
        free(C);
        free(R);
      }
}

static void t_embed(tc *c, int T, int V) {
  const int H = c->k->dm.H;
  int32_t *tok = malloc((size_t)T * sizeof *tok);
  for (int t = 0; t < T; t++) tok[t] = (int32_t)(poc_rng_next(&c->rng) % (uint64_t)(V < 5 ? V : 5));
  double *E = vec(c, (size_t)V * H, 1), *dx = vec(c, (size_t)T * H, 1);
  double *dE = vec(c, (size_t)V * H, 1), *R = malloc((size_t)T * H * sizeof *R);
  for (int t = 0; t < T; t++) memcpy(R + (size_t)t * H, E + (size_t)tok[t] * H, H * sizeof *R);
  poc_dptr dtok = upi(c, tok, T), dEm = up(c, E, (size_t)V * H),
           dX = c->d->alloc(c->d, (size_t)T * H * 8, "x");
  c->K->embed_fwd(c->k, T, dtok, dEm, dX);
  check_buf(c, "embed_fwd", dX, R, (size_t)T * H);
  /* several rows share a token (tokens are drawn from the first five) */
  double *RE = malloc((size_t)V * H * sizeof *RE);
  memcpy(RE, dE, (size_t)V * H * sizeof *RE);
  for (int t = 0; t < T; t++)
    for (int j = 0; j < H; j++) RE[(size_t)tok[t] * H + j] += dx[(size_t)t * H + j];
  poc_dptr ddx = up(c, dx, (size_t)T * H), ddE = up(c, dE, (size_t)V * H);
  c->K->embed_bwd(c->k, T, dtok, ddx, ddE);
  check_buf(c, "embed_bwd", ddE, RE, (size_t)V * H);
  poc_dptr all[] = {dtok, dEm, dX, ddx, ddE};
  for (size_t i = 0; i < sizeof all / sizeof *all; i++) c->d->free(c->d, all[i]);
  free(tok);
  free(E);
  free(dx);
  free(dE);
  free(R);
  free(RE);
}

/* rmsnorm on n rows gathered from a buffer of nx rows (rows[i] distinct), or all rows */
static void t_rmsnorm(tc *c, int nx, int gather) {
  const int H = c->k->dm.H;
  const double eps = c->k->dm.eps;
  int n = gather ? nx / 2 + 1 : nx;
  int32_t *rows = malloc((size_t)n * sizeof *rows);
  for (int i = 0; i < n; i++) rows[i] = gather ? (int32_t)((7 * i + 3) % nx) : i;
  /* 7 is coprime with the sizes used, so the rows are distinct */
  double *x = vec(c, (size_t)nx * H, 2), *w = vec(c, H, 1), *dy = vec(c, (size_t)n * H, 1);
  double *dx0 = vec(c, (size_t)nx * H, 1), *dw0 = vec(c, H, 1);
  double *Ry = malloc((size_t)n * H * sizeof *Ry), *Rr = malloc((size_t)n * sizeof *Rr);
  double *Rdx = malloc((size_t)nx * H * sizeof *Rdx), *Rdw = malloc((size_t)H * sizeof *Rdw);
  memcpy(Rdx, dx0, (size_t)nx * H * sizeof *Rdx);
  memcpy(Rdw, dw0, (size_t)H * sizeof *Rdw);
  for (int i = 0; i < n; i++) {
    const double *xr = x + (size_t)rows[i] * H;
    double ss = 0;
    for (int j = 0; j < H; j++) ss += xr[j] * xr[j];
    double r = 1 / sqrt(ss / H + eps);
    Rr[i] = r;
    for (int j = 0; j < H; j++) Ry[(size_t)i * H + j] = w[j] * xr[j] * r;
    /* backward through the Jacobian: ∂y_j/∂x_k = w_j (δ_jk r + x_j ∂r/∂x_k),
       ∂r/∂x_k = −r³ x_k / H */
    for (int kk = 0; kk < H; kk++) {
      double s = 0;
      for (int j = 0; j < H; j++)
        s += dy[(size_t)i * H + j] * w[j] * ((j == kk) * r - xr[j] * r * r * r * xr[kk] / H);
      Rdx[(size_t)rows[i] * H + kk] += s;
    }
    for (int j = 0; j < H; j++) Rdw[j] += dy[(size_t)i * H + j] * xr[j] * r;
  }
  poc_dptr drows = gather ? upi(c, rows, n) : 0, dxp = up(c, x, (size_t)nx * H), dwp = up(c, w, H);
  poc_dptr dyp = c->d->alloc(c->d, (size_t)n * H * 8, "y"),
           drs = c->d->alloc(c->d, (size_t)n * 8, "rstd");
  c->K->rmsnorm_fwd(c->k, n, dxp, drows, dwp, dyp, drs);
  check_buf(c, gather ? "rmsnorm_fwd rows y" : "rmsnorm_fwd y", dyp, Ry, (size_t)n * H);
  check_buf(c, "rmsnorm_fwd rstd", drs, Rr, n);
  c->K->rmsnorm_fwd(c->k, n, dxp, drows, dwp, dyp, 0); /* rstd not wanted */
  check_buf(c, "rmsnorm_fwd y (no rstd)", dyp, Ry, (size_t)n * H);
  poc_dptr rsp = up(c, Rr, n), ddy = up(c, dy, (size_t)n * H), ddx = up(c, dx0, (size_t)nx * H),
           ddw = up(c, dw0, H);
  c->K->rmsnorm_bwd(c->k, n, dxp, drows, dwp, rsp, ddy, ddx);
  check_buf(c, gather ? "rmsnorm_bwd rows" : "rmsnorm_bwd", ddx, Rdx, (size_t)nx * H);
  c->K->rmsnorm_dw(c->k, n, dxp, drows, rsp, ddy, ddw);
  check_buf(c, "rmsnorm_dw", ddw, Rdw, H);
  poc_dptr all[] = {drows, dxp, dwp, dyp, drs, rsp, ddy, ddx, ddw};
  for (size_t i = 0; i < sizeof all / sizeof *all; i++) c->d->free(c->d, all[i]);
  free(rows);
  free(x);
  free(w);
  free(dy);
  free(dx0);
  free(dw0);
  free(Ry);
  free(Rr);
  free(Rdx);
  free(Rdw);
}

static void t_colsum_cast(tc *c, int n, int width) {
  double *y = vec(c, (size_t)n * width, 1), *o = vec(c, width, 1), *R = malloc(width * sizeof *R);
  for (int j = 0; j < width; j++) {
    R[j] = o[j];
    for (int t = 0; t < n; t++) R[j] += y[(size_t)t * width + j];
  }
  poc_dptr dy = up(c, y, (size_t)n * width), dout = up(c, o, width);
  c->K->colsum(c->k, n, width, dy, dout);
  check_buf(c, "colsum", dout, R, width);
  /* cast: a copy, and nothing on itself */
  poc_dptr dc = c->d->alloc(c->d, (size_t)n * width * 8, "cast");
  c->K->cast(c->k, (size_t)n * width, dy, dc);
  check_buf(c, "cast", dc, y, (size_t)n * width);
  c->K->cast(c->k, (size_t)n * width, dy, dy);
  check_buf(c, "cast in place", dy, y, (size_t)n * width);
  c->d->free(c->d, dy);
  c->d->free(c->d, dout);
  c->d->free(c->d, dc);
  free(y);
  free(o);
  free(R);
}

/* RoPE tables [P × hd/2] at angle p·θ_i, θ_i = 10000^(−2i/hd) */
static void rope_tables(int P, int half, double *cb, double *sb) {
  for (int p = 0; p < P; p++)
    for (int i = 0; i < half; i++) {
      double a = p * pow(10000.0, -2.0 * i / (2 * half));
      cb[(size_t)p * half + i] = (double)(float)cos(a);
      sb[(size_t)p * half + i] = (double)(float)sin(a);
    }
}

/* rotates every head of row x by the table angle (sign −1: backwards) */
static void rope_ref(double *x, int nheads, int hd, const double *c, const double *s, int sign) {
  int half = hd / 2;
  for (int h = 0; h < nheads; h++)
    for (int i = 0; i < half; i++) {
      double a = x[h * hd + i], b = x[h * hd + i + half], sn = sign * s[i];
      x[h * hd + i] = a * c[i] - b * sn;
      x[h * hd + i + half] = b * c[i] + a * sn;
    }
}

static void t_rope(tc *c, int T) {
  const int nh = c->k->dm.nh, nkv = c->k->dm.nkv, hd = c->k->dm.hd, half = hd / 2;
  const int qd = nh * hd, kvd = nkv * hd, P = T + 7;
  double *cb = malloc((size_t)P * half * sizeof *cb), *sb = malloc((size_t)P * half * sizeof *sb);
  rope_tables(P, half, cb, sb);
  int32_t *pos = malloc((size_t)T * sizeof *pos);
  for (int t = 0; t < T; t++) pos[t] = (int32_t)((5 * t + 2) % P); /* not in row order */
  poc_dptr dpos = upi(c, pos, T), dcb = up(c, cb, (size_t)P * half),
           dsb = up(c, sb, (size_t)P * half);
  const int N = qd + 2 * kvd; /* a row of the fused projection: [q | k | v] */
  for (int bias = 0; bias < 2; bias++) {
    double *q = vec(c, (size_t)T * qd, 1), *k = vec(c, (size_t)T * kvd, 1),
           *v = vec(c, (size_t)T * kvd, 1), *qkv = malloc((size_t)T * N * sizeof *qkv);
    double *bq = vec(c, qd, 0.5), *bk = vec(c, kvd, 0.5), *bv = vec(c, kvd, 0.5);
    for (int t = 0; t < T; t++) {
      memcpy(qkv + (size_t)t * N, q + (size_t)t * qd, (size_t)qd * sizeof *q);
      memcpy(qkv + (size_t)t * N + qd, k + (size_t)t * kvd, (size_t)kvd * sizeof *k);
      memcpy(qkv + (size_t)t * N + qd + kvd, v + (size_t)t * kvd, (size_t)kvd * sizeof *v);
    }
    poc_dptr dqkv = up(c, qkv, (size_t)T * N), dq = up(c, q, (size_t)T * qd),
             dk = up(c, k, (size_t)T * kvd), dv = up(c, v, (size_t)T * kvd);
    poc_dptr dbq = bias ? up(c, bq, qd) : 0, dbk = bias ? up(c, bk, kvd) : 0,
             dbv = bias ? up(c, bv, kvd) : 0;
    for (int t = 0; t < T; t++) {
      for (int j = 0; bias && j < qd; j++) q[(size_t)t * qd + j] += bq[j];
      for (int j = 0; bias && j < kvd; j++) {
        k[(size_t)t * kvd + j] += bk[j];
        v[(size_t)t * kvd + j] += bv[j];
      }
      rope_ref(q + (size_t)t * qd, nh, hd, cb + (size_t)pos[t] * half, sb + (size_t)pos[t] * half,
               1);
      rope_ref(k + (size_t)t * kvd, nkv, hd, cb + (size_t)pos[t] * half, sb + (size_t)pos[t] * half,
               1);
    }
    /* the outputs are written, not updated: zeroed first, so a missed element shows */
    c->d->zero(c->d, dq, (size_t)T * qd * poc_dtype_size(c->d->acc));
    c->d->zero(c->d, dk, (size_t)T * kvd * poc_dtype_size(c->d->acc));
    c->d->zero(c->d, dv, (size_t)T * kvd * poc_dtype_size(c->d->acc));
    c->K->qkv_bias_rope(c->k, T, dpos, dcb, dsb, dqkv, dq, dk, dv, dbq, dbk, dbv);
    check_buf(c, bias ? "qkv_bias_rope q (bias)" : "qkv_bias_rope q", dq, q, (size_t)T * qd);
    check_buf(c, bias ? "qkv_bias_rope k (bias)" : "qkv_bias_rope k", dk, k, (size_t)T * kvd);
    check_buf(c, bias ? "qkv_bias_rope v (bias)" : "qkv_bias_rope v", dv, v, (size_t)T * kvd);
    poc_dptr all[] = {dqkv, dq, dk, dv, dbq, dbk, dbv};
    for (size_t i = 0; i < sizeof all / sizeof *all; i++) c->d->free(c->d, all[i]);
    free(qkv);
    free(q);
    free(k);
    free(v);
    free(bq);
    free(bk);
    free(bv);
  }
  /* backward: dq, dk rotated back in place, and the rows [dq | dk | dv] */
  double *dq = vec(c, (size_t)T * qd, 1), *dk = vec(c, (size_t)T * kvd, 1),
         *dv = vec(c, (size_t)T * kvd, 1), *rows = malloc((size_t)T * N * sizeof *rows);
  poc_dptr ddq = up(c, dq, (size_t)T * qd), ddk = up(c, dk, (size_t)T * kvd),
           ddv = up(c, dv, (size_t)T * kvd);
  poc_dptr dqkv = c->d->alloc(c->d, (size_t)T * N * 8, "dqkv");
  for (int t = 0; t < T; t++) {
    rope_ref(dq + (size_t)t * qd, nh, hd, cb + (size_t)pos[t] * half, sb + (size_t)pos[t] * half,
             -1);
    rope_ref(dk + (size_t)t * kvd, nkv, hd, cb + (size_t)pos[t] * half, sb + (size_t)pos[t] * half,
             -1);
  }
  for (int t = 0; t < T; t++) {
    memcpy(rows + (size_t)t * N, dq + (size_t)t * qd, (size_t)qd * sizeof *dq);
    memcpy(rows + (size_t)t * N + qd, dk + (size_t)t * kvd, (size_t)kvd * sizeof *dk);
    memcpy(rows + (size_t)t * N + qd + kvd, dv + (size_t)t * kvd, (size_t)kvd * sizeof *dv);
  }
  c->K->rope_bwd(c->k, T, dpos, dcb, dsb, ddq, ddk, ddv, dqkv);
  check_buf(c, "rope_bwd dq", ddq, dq, (size_t)T * qd);
  check_buf(c, "rope_bwd dk", ddk, dk, (size_t)T * kvd);
  check_buf(c, "rope_bwd dqkv", dqkv, rows, (size_t)T * N);
  free(rows);
  poc_dptr all[] = {dpos, dcb, dsb, ddq, ddk, ddv, dqkv};
  for (size_t i = 0; i < sizeof all / sizeof *all; i++) c->d->free(c->d, all[i]);
  free(cb);
  free(sb);
  free(pos);
  free(dq);
  free(dk);
  free(dv);
}

/* Reference attention for query rows t (key position q0 + t) over keys [kbeg[t], q0 + t]:
 * the softmax row P written out (P [T × nkeys] per head), out and lse. */
static void attn_ref(int T, int q0, int nh, int nkv, int hd, const double *q, const double *k,
                     const double *v, const int32_t *kbeg, int nkeys, double *P, double *out,
                     double *lse) {
  const int qd = nh * hd, kvd = nkv * hd, grp = nh / nkv;
  for (int t = 0; t < T; t++)
    for (int h = 0; h < nh; h++) {
      double *p = P + ((size_t)h * T + t) * nkeys, mx = -INFINITY, s = 0;
      const double *qi = q + (size_t)t * qd + (size_t)h * hd;
      for (int j = 0; j < nkeys; j++) {
        p[j] = -INFINITY;
        if (j < kbeg[t] || j > q0 + t) continue;
        double sc = 0;
        for (int d = 0; d < hd; d++) sc += qi[d] * k[(size_t)j * kvd + (h / grp) * hd + d];
        p[j] = sc / sqrt((double)hd);
        mx = fmax(mx, p[j]);
      }
      for (int j = 0; j < nkeys; j++) s += p[j] == -INFINITY ? 0 : exp(p[j] - mx);
      lse[(size_t)t * nh + h] = mx + log(s);
      for (int j = 0; j < nkeys; j++) p[j] = p[j] == -INFINITY ? 0 : exp(p[j] - mx) / s;
      for (int d = 0; d < hd; d++) {
        double o = 0;
        for (int j = 0; j < nkeys; j++) o += p[j] * v[(size_t)j * kvd + (h / grp) * hd + d];
        out[(size_t)t * qd + (size_t)h * hd + d] = o;
      }
    }
}

static void t_attention(tc *c, const shape *sh) {
  const int nh = c->k->dm.nh, nkv = c->k->dm.nkv, hd = c->k->dm.hd, qd = nh * hd, kvd = nkv * hd;
  /* the pack: kbeg and send from the sequence lengths */
  int T = 0;
  for (int s = 0; s < sh->nseq; s++) T += sh->seqlen[s];
  int32_t *kbeg = malloc((size_t)T * sizeof *kbeg), *send = malloc((size_t)T * sizeof *send);
  for (int s = 0, a = 0; s < sh->nseq; a += sh->seqlen[s], s++)
    for (int t = a; t < a + sh->seqlen[s]; t++) {
      kbeg[t] = a;
      send[t] = a + sh->seqlen[s];
    }
  double *q = vec(c, (size_t)T * qd, 1.5), *k = vec(c, (size_t)T * kvd, 1.5),
         *v = vec(c, (size_t)T * kvd, 1);
  double *P = malloc((size_t)nh * T * T * sizeof *P), *o = malloc((size_t)T * qd * sizeof *o);
  double *lse = malloc((size_t)T * nh * sizeof *lse);
  attn_ref(T, 0, nh, nkv, hd, q, k, v, kbeg, T, P, o, lse);
  poc_dptr dq = up(c, q, (size_t)T * qd), dk = up(c, k, (size_t)T * kvd),
           dv = up(c, v, (size_t)T * kvd);
  poc_dptr dkb = upi(c, kbeg, T), dse = upi(c, send, T);
  poc_dptr dout = c->d->alloc(c->d, (size_t)T * qd * 8, "out"),
           dlse = c->d->alloc(c->d, (size_t)T * nh * 8, "lse");
  c->K->attn_fwd(c->k, T, 0, dq, dk, dv, dkb, dout, dlse);
  check_buf(c, "attn_fwd out", dout, o, (size_t)T * qd);
  check_buf(c, "attn_fwd lse", dlse, lse, (size_t)T * nh);

  /* backward through the written-out softmax: dP_ij = dO_i·v_j,
     dS_ij = P_ij (dP_ij − Σ_k P_ik dP_ik), dq_i = Σ_j dS_ij k_j/√hd, dk_j = Σ_i dS_ij q_i/√hd,
     dv_j = Σ_i P_ij dO_i (kv heads sum over their group) */
  const int grp = nh / nkv;
  const double sc = 1 / sqrt((double)hd);
  double *dO = vec(c, (size_t)T * qd, 1), *Rq = zeros((size_t)T * qd), *Rk = zeros((size_t)T * kvd),
         *Rv = zeros((size_t)T * kvd), *dP = malloc((size_t)T * sizeof *dP);
  for (int h = 0; h < nh; h++)
    for (int i = 0; i < T; i++) {
      const double *p = P + ((size_t)h * T + i) * T, *dOi = dO + (size_t)i * qd + (size_t)h * hd;
      double rowsum = 0;
      for (int j = 0; j < T; j++) {
        dP[j] = 0;
        for (int d = 0; d < hd; d++) dP[j] += dOi[d] * v[(size_t)j * kvd + (h / grp) * hd + d];
        rowsum += p[j] * dP[j];
      }
      for (int j = 0; j < T; j++) {
        double ds = p[j] * (dP[j] - rowsum);
        for (int d = 0; d < hd; d++) {
          size_t ko = (size_t)j * kvd + (h / grp) * hd + d,
                 qo = (size_t)i * qd + (size_t)h * hd + d;
          Rq[qo] += ds * k[ko] * sc;
          Rk[ko] += ds * q[qo] * sc;
          Rv[ko] += p[j] * dO[qo];
        }
      }
    }
  poc_dptr ddO = up(c, dO, (size_t)T * qd), dO_o = up(c, o, (size_t)T * qd),
           dO_l = up(c, lse, (size_t)T * nh);
  poc_dptr gq = c->d->alloc(c->d, (size_t)T * qd * 8, "dq"),
           gk = c->d->alloc(c->d, (size_t)T * kvd * 8, "dk");
  poc_dptr gv = c->d->alloc(c->d, (size_t)T * kvd * 8, "dv"),
           gD = c->d->alloc(c->d, (size_t)T * nh * 8, "D");
  c->K->attn_bwd(c->k, T, dq, dk, dv, dO_o, ddO, dO_l, dkb, dse, gq, gk, gv, gD);
  check_buf(c, "attn_bwd dq", gq, Rq, (size_t)T * qd);
  check_buf(c, "attn_bwd dk", gk, Rk, (size_t)T * kvd);
  check_buf(c, "attn_bwd dv", gv, Rv, (size_t)T * kvd);
  poc_dptr all[] = {dq, dk, dv, dkb, dse, dout, dlse, ddO, dO_o, dO_l, gq, gk, gv, gD};
  for (size_t i = 0; i < sizeof all / sizeof *all; i++) c->d->free(c->d, all[i]);
  free(q);
  free(k);
  free(v);
  free(P);
  free(o);
  free(lse);
  free(dO);
  free(Rq);
  free(Rk);
  free(Rv);
  free(dP);

  /* the decode step: Td new rows after q0 cached keys; the first attends from key 2 */
  const int Td = sh->Td, q0 = sh->q0, nk = q0 + Td;
  int32_t *kb = malloc((size_t)Td * sizeof *kb);
  for (int t = 0; t < Td; t++) kb[t] = t == 0 ? 2 : 0;
  q = vec(c, (size_t)Td * qd, 1.5);
  k = vec(c, (size_t)nk * kvd, 1.5);
  v = vec(c, (size_t)nk * kvd, 1);
  P = malloc((size_t)nh * Td * nk * sizeof *P);
  o = malloc((size_t)Td * qd * sizeof *o);
  lse = malloc((size_t)Td * nh * sizeof *lse);
  attn_ref(Td, q0, nh, nkv, hd, q, k, v, kb, nk, P, o, lse);
  dq = up(c, q, (size_t)Td * qd);
  dk = up(c, k, (size_t)nk * kvd);
  dv = up(c, v, (size_t)nk * kvd);
  dkb = upi(c, kb, Td);
  dout = c->d->alloc(c->d, (size_t)Td * qd * 8, "out");
  dlse = c->d->alloc(c->d, (size_t)Td * nh * 8, "lse");
  c->K->attn_fwd(c->k, Td, q0, dq, dk, dv, dkb, dout, dlse);
  check_buf(c, "attn_fwd decode out", dout, o, (size_t)Td * qd);
  check_buf(c, "attn_fwd decode lse", dlse, lse, (size_t)Td * nh);
  poc_dptr all2[] = {dq, dk, dv, dkb, dout, dlse};
  for (size_t i = 0; i < sizeof all2 / sizeof *all2; i++) c->d->free(c->d, all2[i]);
  free(kb);
  free(q);
  free(k);
  free(v);
  free(P);
  free(o);
  free(lse);
  free(kbeg);
  free(send);
}

/* rows [g | u] of the fused gate/up projection [T × 2F] */
static void t_swiglu(tc *c, int T) {
  const int F = c->k->dm.F;
  const size_t n = (size_t)T * F;
  double *g = vec(c, n, 4), *u = vec(c, n, 2), *da = vec(c, n, 1);
  double *gu_h = malloc(2 * n * sizeof *gu_h);
  double *Ra = malloc(n * sizeof *Ra), *Rgu = malloc(2 * n * sizeof *Rgu);
  for (size_t i = 0; i < n; i++) {
    size_t t = i / F, j = i % F;
    double s = 1 / (1 + exp(-g[i]));
    gu_h[t * 2 * F + j] = g[i];
    gu_h[t * 2 * F + F + j] = u[i];
    Ra[i] = g[i] * s * u[i];
    Rgu[t * 2 * F + j] = da[i] * u[i] * (s + g[i] * s * (1 - s)); /* d(g σ(g))/dg */
    Rgu[t * 2 * F + F + j] = da[i] * g[i] * s;
  }
  poc_dptr dgu_in = up(c, gu_h, 2 * n), dda = up(c, da, n);
  poc_dptr da_ = c->d->alloc(c->d, n * 8, "a"), dgu = c->d->alloc(c->d, 2 * n * 8, "dgu");
  c->K->swiglu_fwd(c->k, T, dgu_in, da_);
  check_buf(c, "swiglu_fwd", da_, Ra, n);
  c->K->swiglu_bwd(c->k, T, dgu_in, dda, dgu);
  check_buf(c, "swiglu_bwd dgu", dgu, Rgu, 2 * n);
  c->K->swiglu_bwd(c->k, T, dgu_in, dda, dgu_in);
  check_buf(c, "swiglu_bwd in place", dgu_in, Rgu, 2 * n);
  free(gu_h);
  free(Rgu);
  poc_dptr all[] = {dgu_in, dda, da_, dgu};
  for (size_t i = 0; i < sizeof all / sizeof *all; i++) c->d->free(c->d, all[i]);
  free(g);
  free(u);
  free(da);
  free(Ra);
}

/* The loss head, fused (chunks of c columns) and textbook, against one reference. */
static void t_head(tc *c, int n, int chunk) {
  const int V = c->k->dm.V;
  double *L = malloc((size_t)n * V * sizeof *L);
  int32_t *tgt = malloc((size_t)n * sizeof *tgt);
  for (int i = 0; i < n; i++) {
    /* a spread of scales so the running max moves between chunks */
    double scale = 1 + 8 * (i % 3);
    for (int v = 0; v < V; v++) L[(size_t)i * V + v] = rnd(c, scale);
    tgt[i] = (int32_t)((i * 97 + 13) % V);
  }
  double *Rlse = malloc(n * sizeof(double)), *Rmu = malloc(n * sizeof(double));
  double *Rlp = malloc(n * sizeof(double)), *Rent = malloc(n * sizeof(double));
  double *Rlss = malloc(n * sizeof(double)); /* log Σ p², the direct sum of squares */
  double *g = vec(c, n, 1), *e = vec(c, n, 1), *RD = malloc((size_t)n * V * sizeof *RD),
         *RDg = malloc((size_t)n * V * sizeof *RDg);
  for (int i = 0; i < n; i++) {
    const double *l = L + (size_t)i * V;
    double mx = -INFINITY, s = 0, mu = 0;
    for (int v = 0; v < V; v++) mx = fmax(mx, l[v]);
    for (int v = 0; v < V; v++) s += exp(l[v] - mx);
    double lse = mx + log(s);
    for (int v = 0; v < V; v++) mu += exp(l[v] - lse) * l[v];
    Rlse[i] = lse;
    Rmu[i] = mu;
    Rlp[i] = l[tgt[i]] - lse;
    double H = 0;
    for (int v = 0; v < V; v++) H -= exp(l[v] - lse) * (l[v] - lse);
    Rent[i] = H;
    double p2 = 0;
    for (int v = 0; v < V; v++) p2 += exp(l[v] - lse) * exp(l[v] - lse);
    Rlss[i] = log(p2);
    for (int v = 0; v < V; v++) {
      double p = exp(l[v] - lse);
      RD[(size_t)i * V + v] = g[i] * ((v == tgt[i]) - p) - e[i] * p * (l[v] - mu);
      RDg[(size_t)i * V + v] = g[i] * ((v == tgt[i]) - p); /* no entropy seed */
    }
  }
  poc_dptr dtgt = upi(c, tgt, n), dm = c->d->alloc(c->d, n * 8, "m"),
           ds = c->d->alloc(c->d, n * 8, "s");
  poc_dptr dA = c->d->alloc(c->d, n * 8, "a"), dtl = c->d->alloc(c->d, n * 8, "tl");
  poc_dptr dlp = c->d->alloc(c->d, n * 8, "logp"), den = c->d->alloc(c->d, n * 8, "ent");
  poc_dptr dq = c->d->alloc(c->d, n * 8, "q"), dlss = c->d->alloc(c->d, n * 8, "lss");
  poc_dptr dlse = c->d->alloc(c->d, n * 8, "lse"), dmu = c->d->alloc(c->d, n * 8, "mu");
  poc_dptr dbuf = c->d->alloc(c->d, (size_t)n * chunk * 8, "chunk");
  poc_dptr dout = c->d->alloc(c->d, (size_t)n * chunk * 8, "dlog");
  double *cb = malloc((size_t)n * chunk * sizeof *cb);
  for (int v0 = 0; v0 < V; v0 += chunk) {
    int cc = V - v0 < chunk ? V - v0 : chunk;
    for (int i = 0; i < n; i++)
      memcpy(cb + (size_t)i * cc, L + (size_t)i * V + v0, cc * sizeof *cb);
    c->d->put(c->d, dbuf, c->d->acc, cb, POC_DT_F64, (size_t)n * cc);
    c->K->head_chunk_fwd(c->k, n, cc, v0, dbuf, dtgt, dm, ds, dA, dq, dtl);
  }
  c->K->head_finish(c->k, n, dm, ds, dA, dq, dtl, dlp, den, dlss, dlse, dmu);
  check_buf(c, "head fused logp", dlp, Rlp, n);
  check_buf(c, "head fused ent", den, Rent, n);
  check_buf(c, "head fused logsumsq", dlss, Rlss, n);
  /* without q and lss (neither entropy nor log Σ p² wanted) the rest is the same */
  for (int v0 = 0; v0 < V; v0 += chunk) {
    int cc = V - v0 < chunk ? V - v0 : chunk;
    for (int i = 0; i < n; i++)
      memcpy(cb + (size_t)i * cc, L + (size_t)i * V + v0, cc * sizeof *cb);
    c->d->put(c->d, dbuf, c->d->acc, cb, POC_DT_F64, (size_t)n * cc);
    c->K->head_chunk_fwd(c->k, n, cc, v0, dbuf, dtgt, dm, ds, dA, 0, dtl);
  }
  c->K->head_finish(c->k, n, dm, ds, dA, 0, dtl, dlp, 0, 0, dlse, dmu);
  check_buf(c, "head fused logp (no q)", dlp, Rlp, n);
  check_buf(c, "head fused lse", dlse, Rlse, n);
  check_buf(c, "head fused mu", dmu, Rmu, n);

  /* backward per chunk, from the reference lse and μ: into a separate buffer with both
     seeds, then in place with the entropy seed absent */
  poc_dptr rl = up(c, Rlse, n), rm = up(c, Rmu, n), dg = up(c, g, n), de = up(c, e, n);
  double *want = malloc((size_t)n * chunk * sizeof *want);
  for (int pass = 0; pass < 2; pass++)
    for (int v0 = 0; v0 < V; v0 += chunk) {
      int cc = V - v0 < chunk ? V - v0 : chunk;
      for (int i = 0; i < n; i++) {
        memcpy(cb + (size_t)i * cc, L + (size_t)i * V + v0, cc * sizeof *cb);
        memcpy(want + (size_t)i * cc, (pass ? RDg : RD) + (size_t)i * V + v0, cc * sizeof *cb);
      }
      c->d->put(c->d, dbuf, c->d->acc, cb, POC_DT_F64, (size_t)n * cc);
      poc_dptr dst = pass ? dbuf : dout;
      c->K->head_chunk_bwd(c->k, n, cc, v0, dbuf, dtgt, rl, rm, dg, pass ? 0 : de, dst);
      check_buf(c, pass ? "head_chunk_bwd in place, no dent" : "head_chunk_bwd", dst, want,
                (size_t)n * cc);
    }

  /* textbook: the [n × V] logits become the log-softmax; the backward in place and not */
  poc_dptr dL = up(c, L, (size_t)n * V), dD = c->d->alloc(c->d, (size_t)n * V * 8, "dlog");
  double *Rls = malloc((size_t)n * V * sizeof *Rls), *Rmu2 = malloc(n * sizeof(double));
  for (int i = 0; i < n; i++) {
    for (int v = 0; v < V; v++) Rls[(size_t)i * V + v] = L[(size_t)i * V + v] - Rlse[i];
    Rmu2[i] = Rmu[i] - Rlse[i];
  }
  c->K->head_text_fwd(c->k, n, dL, dtgt, dlp, 0, 0, dlse, dmu);
  check_buf(c, "head_text_fwd logp (no ent)", dlp, Rlp, n);
  c->d->put(c->d, dL, c->d->acc, L, POC_DT_F64, (size_t)n * V);
  c->K->head_text_fwd(c->k, n, dL, dtgt, dlp, den, dlss, dlse, dmu);
  check_buf(c, "head_text_fwd logsumsq", dlss, Rlss, n);
  check_buf(c, "head_text_fwd log-softmax", dL, Rls, (size_t)n * V);
  check_buf(c, "head_text_fwd logp", dlp, Rlp, n);
  check_buf(c, "head_text_fwd ent", den, Rent, n);
  check_buf(c, "head_text_fwd lse", dlse, Rlse, n);
  check_buf(c, "head_text_fwd mu (Σ p·ls)", dmu, Rmu2, n);
  c->K->head_text_bwd(c->k, n, dL, dtgt, dmu, dg, de, dD);
  check_buf(c, "head_text_bwd", dD, RD, (size_t)n * V);
  c->K->head_text_bwd(c->k, n, dL, dtgt, dmu, dg, 0, dL);
  check_buf(c, "head_text_bwd in place, no dent", dL, RDg, (size_t)n * V);
  poc_dptr all[] = {dtgt, dm, ds, dA, dtl, dlp, den, dlse, dmu, dbuf, dout, rl, rm, dg, de, dL, dD,
                    dq, dlss};
  for (size_t i = 0; i < sizeof all / sizeof *all; i++) c->d->free(c->d, all[i]);
  free(Rlss);
  free(L);
  free(tgt);
  free(Rlse);
  free(Rmu);
  free(Rlp);
  free(Rent);
  free(g);
  free(e);
  free(RD);
  free(RDg);
  free(cb);
  free(want);
  free(Rls);
  free(Rmu2);
}

static void t_adamw_sumsq(tc *c, size_t n) {
  const float lr = 1e-2f, b1 = 0.9f, b2 = 0.999f, eps = 1e-8f, wd = 0.1f, gs = 0.5f;
  const float bc1 = (float)(1 - pow(0.9, 3)), bc2 = (float)(1 - pow(0.999, 3));
  for (int own = 0; own < 2; own++) {
    double *w = vec(c, n, 1), *g = vec(c, n, 1), *m = vec(c, n, 0.1), *v = vec(c, n, 0.01);
    for (size_t i = 0; i < n; i++) v[i] = fabs(v[i]);
    poc_dptr dw = up(c, w, n), dg = up(c, g, n), dm = up(c, m, n), dv = up(c, v, n);
    poc_dptr dwc = own ? dw : c->d->alloc(c->d, n * 8, "wc");
    for (size_t i = 0; i < n; i++) {
      double gi = g[i] * gs;
      m[i] = b1 * m[i] + (1 - (double)b1) * gi;
      v[i] = b2 * v[i] + (1 - (double)b2) * gi * gi;
      w[i] = w[i] * (1 - (double)lr * wd) - lr * (m[i] / bc1) / (sqrt(v[i] / bc2) + eps);
    }
    c->K->adamw(c->k, n, dw, dg, dm, dv, dwc, lr, b1, b2, eps, wd, bc1, bc2, gs);
    check_buf(c, "adamw w", dw, w, n);
    check_buf(c, "adamw m", dm, m, n);
    check_buf(c, "adamw v", dv, v, n);
    if (!own) check_buf(c, "adamw compute copy", dwc, w, n);
    /* Σ g² is summed in double from the stored values, so both devices get ~1e-15 */
    double ref = 0;
    for (size_t i = 0; i < n; i++) ref += g[i] * g[i];
    double got = c->K->sumsq(c->k, n, dg);
    CHECK_NEAR(got, ref, 1e-13);
    if (c->collect) keep1(c, got);
    poc_dptr all[] = {dw, dg, dm, dv};
    for (size_t i = 0; i < sizeof all / sizeof *all; i++) c->d->free(c->d, all[i]);
    if (!own) c->d->free(c->d, dwc);
    free(w);
    free(g);
    free(m);
    free(v);
  }
}

/* Every kernel on one shape; returns what the device recorded (0: nothing failed). */
static int suite(poc_device *d, const shape *sh, double tol, int collect, tc *res) {
  tc c = {.d = d, .K = &d->k, .tol = tol, .collect = collect};
  poc_rng_seed(&c.rng, 1234);
  poc_dims dm = {sh->H, sh->F, sh->V, sh->nh, sh->nkv, sh->hd, 1e-5};
  c.k = d->kernels(d, &dm);
  CHECK(c.k != NULL);
  if (!c.k) return -1;
  int T = 0;
  for (int s = 0; s < sh->nseq; s++) T += sh->seqlen[s];
  t_gemm(&c, T, sh->F, sh->H);
  t_embed(&c, T, sh->V);
  t_rmsnorm(&c, T, 0);
  t_rmsnorm(&c, T, 1);
  t_colsum_cast(&c, T, sh->nh * sh->hd);
  t_rope(&c, T);
  t_attention(&c, sh);
  t_swiglu(&c, T);
  t_head(&c, T, 64);
  t_adamw_sumsq(&c, (size_t)T * sh->H + 5);
  char err[POC_ERR_LEN];
  int rc = poc_dev_sync(d, err);
  CHECK_MSG(rc == 0, "%s", err);
  if (res)
    *res = c;
  else
    free(c.keep);
  return rc;
}

/* ---- put/get, errors, the table ------------------------------------------------------- */

static uint16_t bits_bf16(poc_device *d, poc_dptr buf, double x, int from_f64) {
  if (from_f64)
    d->put(d, buf, POC_DT_BF16, &x, POC_DT_F64, 1);
  else {
    float f = (float)x;
    d->put(d, buf, POC_DT_BF16, &f, POC_DT_F32, 1);
  }
  uint16_t b = 0;
  d->get(d, &b, POC_DT_BF16, buf, POC_DT_BF16, 1);
  return b;
}

static void t_conversions(void) {
  char err[POC_ERR_LEN];
  poc_device *d = poc_cpu_device_open(0, err);
  poc_dptr b = d->alloc(d, 64, "conversions");
  CHECK(b != 0 && b % 64 == 0);
  /* 1 + 2⁻⁸ is half-way between bf16 1 and 1 + 2⁻⁷: to the even one (1); 1 + 3·2⁻⁸
     half-way between 1 + 2⁻⁷ and 1 + 2⁻⁶: to 1 + 2⁻⁶; a hair above the half rounds up */
  CHECK(bits_bf16(d, b, 1.0, 0) == 0x3f80);
  CHECK(bits_bf16(d, b, 1 + 0x1p-8, 0) == 0x3f80);
  CHECK(bits_bf16(d, b, 1 + 3 * 0x1p-8, 0) == 0x3f82);
  CHECK(bits_bf16(d, b, 1 + 0x1p-8 + 0x1p-20, 0) == 0x3f81);
  CHECK(bits_bf16(d, b, -(1 + 0x1p-8), 0) == 0xbf80);
  CHECK(bits_bf16(d, b, 3.4e38, 0) == 0x7f80); /* past bf16's largest: infinity */
  uint16_t nb = bits_bf16(d, b, NAN, 0);
  CHECK((nb & 0x7f80) == 0x7f80 && (nb & 0x7f) != 0);
  /* from double: 1 + 2⁻⁸ + 2⁻⁴⁰ rounds to float 1 + 2⁻⁸ (a tie), but is above the half */
  CHECK(bits_bf16(d, b, 1 + 0x1p-8 + 0x1p-40, 1) == 0x3f81);
  CHECK(bits_bf16(d, b, 1 + 0x1p-8, 1) == 0x3f80);
  CHECK(bits_bf16(d, b, 1 + 3 * 0x1p-8, 1) == 0x3f82);
  /* bf16 → f32, f64 exactly; f64 → f32 rounds; i32 as is */
  uint16_t h[2] = {0x3f81, 0xc0a0};
  d->put(d, b, POC_DT_BF16, h, POC_DT_BF16, 2);
  float f[2];
  double x[2];
  d->get(d, f, POC_DT_F32, b, POC_DT_BF16, 2);
  d->get(d, x, POC_DT_F64, b, POC_DT_BF16, 2);
  CHECK(f[0] == 1 + 0x1p-7f && f[1] == -5.0f && x[0] == 1 + 0x1p-7 && x[1] == -5.0);
  double third = 1.0 / 3;
  d->put(d, b, POC_DT_F32, &third, POC_DT_F64, 1);
  d->get(d, f, POC_DT_F32, b, POC_DT_F32, 1);
  CHECK(f[0] == (float)third);
  d->get(d, x, POC_DT_F64, b, POC_DT_F32, 1);
  CHECK(x[0] == (double)(float)third);
  int32_t iv[3] = {-7, 0, 1 << 30}, io[3];
  d->put(d, b, POC_DT_I32, iv, POC_DT_I32, 3);
  d->get(d, io, POC_DT_I32, b, POC_DT_I32, 3);
  CHECK(!memcmp(iv, io, sizeof iv));
  /* copy and zero */
  poc_dptr b2 = d->alloc(d, 12, "copy");
  d->copy(d, b2, b, 12);
  d->get(d, io, POC_DT_I32, b2, POC_DT_I32, 3);
  CHECK(!memcmp(iv, io, sizeof iv));
  d->zero(d, b2, 12);
  d->get(d, io, POC_DT_I32, b2, POC_DT_I32, 3);
  CHECK(io[0] == 0 && io[1] == 0 && io[2] == 0);
  CHECK(poc_dev_sync(d, err) == 0);
  /* ints do not convert to floats: a sticky error */
  d->put(d, b, POC_DT_F32, iv, POC_DT_I32, 1);
  CHECK(d->failed && poc_dev_sync(d, err) == -1 && strstr(err, "i32"));
  d->free(d, b);
  d->free(d, b2);
  d->close(d);
}

static void t_device(void) {
  char err[POC_ERR_LEN];
  CHECK(poc_dtype_size(POC_DT_F32) == 4 && poc_dtype_size(POC_DT_F64) == 8 &&
        poc_dtype_size(POC_DT_BF16) == 2 && poc_dtype_size(POC_DT_I32) == 4);
  poc_config cfg;
  memset(&cfg, 0, sizeof cfg);
  cfg.hidden_size = 37;
  cfg.intermediate_size = 45;
  cfg.vocab_size = 53;
  cfg.num_attention_heads = 4;
  cfg.num_key_value_heads = 2;
  cfg.head_dim = 10;
  cfg.rms_norm_eps = 1e-6;
  poc_dims dm;
  poc_dims_from_config(&cfg, &dm);
  CHECK(dm.H == 37 && dm.F == 45 && dm.V == 53 && dm.nh == 4 && dm.nkv == 2 && dm.hd == 10 &&
        dm.eps == 1e-6);

  for (int fp64 = 0; fp64 < 2; fp64++) {
    poc_device *d = poc_cpu_device_open(fp64, err);
    CHECK(d && !strcmp(d->name, fp64 ? "cpu64" : "cpu"));
    CHECK(!strncmp(d->desc, fp64 ? "cpu64: float64, OpenBLAS" : "cpu: OpenBLAS", fp64 ? 24 : 13));
    CHECK(d->acc == (fp64 ? POC_DT_F64 : POC_DT_F32) && d->act == d->acc && d->shared_act);
    CHECK(d->head_rows == 1024 && d->head_chunk == 4096 && d->head_block == (size_t)1 << 21);
    /* one kernel set per dimensions, kept */
    poc_kset *a = d->kernels(d, &dm), *b = d->kernels(d, &dm);
    poc_dims dm2 = dm;
    dm2.V = 54;
    poc_kset *c2 = d->kernels(d, &dm2);
    CHECK(a && a == b && c2 && c2 != a && c2->dm.V == 54 && a->d == d);
    /* a huge allocation: a message naming it, then every later call does nothing */
    poc_dptr p = d->alloc(d, (size_t)1 << 50, "the huge test buffer");
    CHECK(p == 0 && d->failed);
    CHECK(poc_dev_sync(d, err) == -1 && strstr(err, "the huge test buffer") &&
          strstr(err, "1125899906842624"));
    CHECK(d->alloc(d, 8, "after") == 0);
    CHECK(isnan(d->k.sumsq(a, 0, 0)));
    d->close(d);
  }
  poc_device *d = poc_cpu_device_open(0, err);
  poc_dims bad = dm;
  bad.nkv = 3;
  CHECK(d->kernels(d, &bad) == NULL && d->failed && strstr(d->err, "kv heads"));
  d->close(d);
}

int main(void) {
  poc_cpu_start(0, NULL); /* the GEMM kernels the processor allows */
  char err[POC_ERR_LEN];
  t_device();
  t_conversions();

  /* small and odd: H = 37, head_dim 10, a one-token sequence, decode after 5 cached keys */
  const shape small = {37, 45, 53, 4, 2, 10, 3, {4, 1, 4}, 5, 2};
  /* large enough that every loop runs on the team (work above CPU_PAR_MIN) */
  const shape big = {261, 300, 301, 4, 2, 66, 3, {50, 1, 79}, 20, 3};
  poc_device *d64 = poc_cpu_device_open(1, err), *d32 = poc_cpu_device_open(0, err);
  suite(d64, &small, 1e-12, 0, NULL);
  suite(d32, &small, 1e-5, 0, NULL);
  suite(d64, &big, 1e-12, 0, NULL);

  /* float on 1 thread and on 2: the same bits */
  int threads = omp_get_max_threads();
  tc r1, r2;
  omp_set_num_threads(1);
  suite(d32, &big, 1e-5, 1, &r1);
  omp_set_num_threads(2);
  suite(d32, &big, 1e-5, 1, &r2);
  omp_set_num_threads(threads);
  CHECK(r1.nkeep == r2.nkeep && r1.nkeep > 0 && r1.nlabel == r2.nlabel);
  for (int l = 0; l < r1.nlabel && r1.nkeep == r2.nkeep; l++) {
    /* OpenBLAS's own: sgemm's bits change with its thread count (it picks other kernels and
       splits for 2 threads), which no kernel of ours can undo */
    if (!strncmp(r1.label[l], "gemm", 4)) continue;
    size_t a = r1.at[l], b = l + 1 < r1.nlabel ? r1.at[l + 1] : r1.nkeep, diff = 0;
    for (size_t i = a; i < b; i++) diff += memcmp(&r1.keep[i], &r2.keep[i], sizeof(double)) != 0;
    CHECK_MSG(diff == 0, "%s: %zu of %zu values differ between 1 and 2 threads", r1.label[l], diff,
              b - a);
  }
  free(r1.keep);
  free(r2.keep);
  d64->close(d64);
  d32->close(d32);
  return check_summary("cpu_kernels");
}
