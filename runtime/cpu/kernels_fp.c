/* kernels_fp.c — the kernels of device.h on the CPU: OpenMP loops on host memory, in float
 * (cpu), double (cpu64) or bf16 operands with float accumulators (cpu-bf16); see cpu_fp.h.
 * GEMMs are OpenBLAS's in the first two and oneDNN's in the third (cpu_dnnl.c). A poc_dptr
 * is the address of a buffer's first element: a `real` array for acc buffers, an `act_t`
 * array for act ones, exactly as device.h assigns the roles. Every act value is read with
 * LD and written with ST, so the arithmetic is in `real` and rounds once per stored act
 * element (in the one-type builds both are the identity).
 *
 * Determinism: every parallel loop owns its outputs (rows, heads, or the columns of a
 * reduction), so no sum depends on thread scheduling; GEMMs are the libraries' (OpenBLAS's
 * and oneDNN's give the same bits run to run at a given thread count). Loops with little
 * work (below CPU_PAR_MIN) stay on one thread.
 *
 * Sticky errors: once the device has failed every kernel returns at once (sumsq with NaN).
 */
#include <stdint.h>
#include <string.h>

#include "cpu_fp.h"

#define RP(p) ((real *)(uintptr_t)(p))
#define AP(p) ((act_t *)(uintptr_t)(p))
#define IP(p) ((int32_t *)(uintptr_t)(p))
#define CK_LIVE(k)                                                                         \
  do {                                                                                     \
    if ((k)->d->failed) return;                                                            \
  } while (0)

/* n act elements into acc, and back (rounding): copies where the types are one */
static inline void act_to_acc(real *y, const act_t *x, size_t n) {
#if ACT_IS_ACC
  memcpy(y, x, n * sizeof(real));
#else
  for (size_t i = 0; i < n; i++) y[i] = LD(x[i]);
#endif
}
static inline void acc_to_act(act_t *y, const real *x, size_t n) {
#if ACT_IS_ACC
  memcpy(y, x, n * sizeof(real));
#else
  for (size_t i = 0; i < n; i++) y[i] = ST(x[i]);
#endif
}

/* ---- GEMM, embedding, norms, sums -------------------------------------------------- */

static void ck_gemm(poc_kset *k, int ta, int tb, int M, int N, int K, poc_dptr A, int lda,
                    poc_dptr B, int ldb, float beta, poc_dptr C, int c_acc, int ldc) {
  CK_LIVE(k);
  if (M <= 0 || N <= 0) return; /* an empty pack: BLAS would call it an illegal argument */
#if ACT_IS_ACC
  (void)c_acc; /* acc and act are one type */
  GEMM(CblasRowMajor, ta ? CblasTrans : CblasNoTrans, tb ? CblasTrans : CblasNoTrans, M, N, K,
       1, RP(A), lda, RP(B), ldb, beta, RP(C), ldc);
#else
  poc_cpu_dnnl_gemm(k, ta, tb, M, N, K, (const void *)(uintptr_t)A, lda,
                    (const void *)(uintptr_t)B, ldb, beta, (void *)(uintptr_t)C, c_acc, ldc);
#endif
}

static void ck_embed_fwd(poc_kset *k, int T, poc_dptr tok_, poc_dptr E_, poc_dptr x_) {
  CK_LIVE(k);
  const int H = k->dm.H;
  const int32_t *tok = IP(tok_);
  const act_t *E = AP(E_);
  real *x = RP(x_);
#pragma omp parallel for schedule(static) if ((size_t)T * H >= CPU_PAR_MIN)
  for (int t = 0; t < T; t++) act_to_acc(x + (size_t)t * H, E + (size_t)tok[t] * H, (size_t)H);
}

/* Columns in parallel so each dE[token][j] sums its rows in row order, whatever the
 * thread count. */
static void ck_embed_bwd(poc_kset *k, int T, poc_dptr tok_, poc_dptr dx_, poc_dptr dE_) {
  CK_LIVE(k);
  const int H = k->dm.H;
  const int32_t *tok = IP(tok_);
  const real *dx = RP(dx_);
  real *dE = RP(dE_);
#pragma omp parallel for schedule(static) if ((size_t)T * H >= CPU_PAR_MIN)
  for (int j = 0; j < H; j++)
    for (int t = 0; t < T; t++) dE[(size_t)tok[t] * H + j] += dx[(size_t)t * H + j];
}

static void ck_rmsnorm_fwd(poc_kset *k, int n, poc_dptr x_, poc_dptr rows_, poc_dptr w_,
                           poc_dptr y_, poc_dptr rstd_) {
  CK_LIVE(k);
  const int H = k->dm.H;
  const real eps = (real)k->dm.eps, *x = RP(x_);
  const act_t *w = AP(w_);
  const int32_t *rows = IP(rows_);
  act_t *y = AP(y_);
  real *rstd = RP(rstd_);
#pragma omp parallel for schedule(static) if ((size_t)n * H >= CPU_PAR_MIN)
  for (int i = 0; i < n; i++) {
    const real *xr = x + (size_t)(rows ? rows[i] : i) * H;
    act_t *yr = y + (size_t)i * H;
    real ss = 0;
    for (int j = 0; j < H; j++) ss += xr[j] * xr[j];
    real r = 1 / R_SQRT(ss / H + eps);
    for (int j = 0; j < H; j++) yr[j] = ST(LD(w[j]) * (xr[j] * r));
    if (rstd) rstd[i] = r;
  }
}

/* y = w ⊙ x·r with r = (mean(x²) + eps)^{-1/2}, so ∂r/∂x_k = −r³x_k/H:
 *   dx_k += r·(w_k dy_k − x_k·r²/H · Σ_j w_j dy_j x_j).
 * With `rows`, output row i scatters into dx[rows[i]]; the rows are distinct (each row
 * predicts one target), so the parallel rows never share an output. */
static void ck_rmsnorm_bwd(poc_kset *k, int n, poc_dptr x_, poc_dptr rows_, poc_dptr w_,
                           poc_dptr rstd_, poc_dptr dy_, poc_dptr dx_) {
  CK_LIVE(k);
  const int H = k->dm.H;
  const real *x = RP(x_), *rstd = RP(rstd_), *dy = RP(dy_);
  const act_t *w = AP(w_);
  const int32_t *rows = IP(rows_);
  real *dx = RP(dx_);
#pragma omp parallel for schedule(static) if ((size_t)n * H >= CPU_PAR_MIN)
  for (int i = 0; i < n; i++) {
    size_t ro = (size_t)(rows ? rows[i] : i) * H;
    const real *xr = x + ro, *dyr = dy + (size_t)i * H;
    real *dxr = dx + ro;
    real r = rstd[i], dot = 0;
    for (int j = 0; j < H; j++) dot += LD(w[j]) * dyr[j] * xr[j];
    real c = dot * r * r / H;
    for (int j = 0; j < H; j++) dxr[j] += r * (LD(w[j]) * dyr[j] - xr[j] * c);
  }
}

/* dw_j += Σ_i dy_ij x[r]_j rstd_i; columns in parallel, rows in order. */
static void ck_rmsnorm_dw(poc_kset *k, int n, poc_dptr x_, poc_dptr rows_, poc_dptr rstd_,
                          poc_dptr dy_, poc_dptr dw_) {
  CK_LIVE(k);
  const int H = k->dm.H;
  const real *x = RP(x_), *rstd = RP(rstd_), *dy = RP(dy_);
  const int32_t *rows = IP(rows_);
  real *dw = RP(dw_);
#pragma omp parallel for schedule(static) if ((size_t)n * H >= CPU_PAR_MIN)
  for (int j = 0; j < H; j++) {
    real s = 0;
    for (int i = 0; i < n; i++)
      s += dy[(size_t)i * H + j] * x[(size_t)(rows ? rows[i] : i) * H + j] * rstd[i];
    dw[j] += s;
  }
}

static void ck_colsum(poc_kset *k, int n, int width, poc_dptr y_, poc_dptr out_) {
  CK_LIVE(k);
  const real *y = RP(y_);
  real *out = RP(out_);
#pragma omp parallel for schedule(static) if ((size_t)n * width >= CPU_PAR_MIN)
  for (int j = 0; j < width; j++) {
    real s = 0;
    for (int t = 0; t < n; t++) s += y[(size_t)t * width + j];
    out[j] += s;
  }
}

/* y = beta·y + mul·keep_i·x (device.h); x act, y acc when y_acc else act (one type in
 * the one-type builds, where y_acc changes nothing) */
static void ck_drop_scale(poc_kset *k, size_t n, poc_dptr x_, poc_dptr y_, int y_acc,
                          float beta, float mul, uint32_t thr, uint64_t seed) {
  CK_LIVE(k);
  const act_t *x = AP(x_);
  real mu = (real)mul, be = (real)beta;
#if ACT_IS_ACC
  (void)y_acc;
#else
  if (!y_acc) {
    act_t *y = AP(y_);
#pragma omp parallel for schedule(static) if (n >= CPU_PAR_MIN)
    for (size_t i = 0; i < n; i++) {
      real v = poc_drop_keep(seed, i, thr) ? mu * LD(x[i]) : 0;
      y[i] = ST(beta != 0.f ? be * LD(y[i]) + v : v);
    }
    return;
  }
#endif
  real *y = RP(y_);
#pragma omp parallel for schedule(static) if (n >= CPU_PAR_MIN)
  for (size_t i = 0; i < n; i++) {
    real v = poc_drop_keep(seed, i, thr) ? mu * LD(x[i]) : 0;
    y[i] = beta != 0.f ? be * y[i] + v : v;
  }
}

/* y (act) = x (acc) */
static void ck_cast(poc_kset *k, size_t n, poc_dptr x, poc_dptr y) {
  CK_LIVE(k);
  if (x == y || !n) return;
#if ACT_IS_ACC
  memcpy(RP(y), RP(x), n * sizeof(real));
#else
  act_t *yp = AP(y);
  const real *xp = RP(x);
#pragma omp parallel for schedule(static) if (n >= CPU_PAR_MIN)
  for (size_t i = 0; i < n; i++) yp[i] = ST(xp[i]);
#endif
}

/* ---- RoPE ---------------------------------------------------------------------------- */

/* HF's rotate_half convention: within each head the pair (x_i, x_{i+hd/2}) turns by
 * θ = pos·inv_freq_i:  (x_i, x_{i+hd/2}) ← (x_i cos θ − x_{i+hd/2} sin θ,
 * x_{i+hd/2} cos θ + x_i sin θ). The backward turns by −θ (dir = −1) on acc gradients;
 * the forward turns act q or k, adding the bias b (act, may be NULL) to the pair first,
 * in `real`, so an act element is rounded once. */
static void ck_rope_row(int nheads, int hd, real *x, const real *c, const real *s, real dir) {
  const int half = hd / 2;
  for (int h = 0; h < nheads; h++) {
    real *xh = x + (size_t)h * hd;
    for (int i = 0; i < half; i++) {
      real x1 = xh[i], x2 = xh[i + half], sn = dir * s[i];
      xh[i] = x1 * c[i] - x2 * sn;
      xh[i + half] = x2 * c[i] + x1 * sn;
    }
  }
}

static void ck_rope_row_act(int nheads, int hd, act_t *x, const act_t *b, const real *c,
                            const real *s) {
  const int half = hd / 2;
  for (int h = 0; h < nheads; h++) {
    act_t *xh = x + (size_t)h * hd;
    const act_t *bh = b ? b + (size_t)h * hd : NULL;
    for (int i = 0; i < half; i++) {
      real x1 = LD(xh[i]), x2 = LD(xh[i + half]);
      if (bh) {
        x1 += LD(bh[i]);
        x2 += LD(bh[i + half]);
      }
      xh[i] = ST(x1 * c[i] - x2 * s[i]);
      xh[i + half] = ST(x2 * c[i] + x1 * s[i]);
    }
  }
}

/* One pass per row: the bias is added before the rotation reads the pair, as a separate
 * bias pass followed by a RoPE pass would, so each element sees the same operations. */
static void ck_qkv_bias_rope(poc_kset *k, int T, poc_dptr pos_, poc_dptr cosb_, poc_dptr sinb_,
                             poc_dptr qkv_, poc_dptr q_, poc_dptr k_, poc_dptr v_, poc_dptr bq_,
                             poc_dptr bk_, poc_dptr bv_) {
  CK_LIVE(k);
  const int nh = k->dm.nh, nkv = k->dm.nkv, hd = k->dm.hd, half = hd / 2;
  const int qd = nh * hd, kvd = nkv * hd, N = qd + 2 * kvd;
  const int32_t *pos = IP(pos_);
  const real *cosb = RP(cosb_), *sinb = RP(sinb_);
  const act_t *qkv = AP(qkv_), *bq = AP(bq_), *bk = AP(bk_), *bv = AP(bv_);
  act_t *q = AP(q_), *kk = AP(k_), *v = AP(v_);
#pragma omp parallel for schedule(static) if ((size_t)T * N >= CPU_PAR_MIN)
  for (int t = 0; t < T; t++) {
    const act_t *src = qkv + (size_t)t * N;
    act_t *qt = q + (size_t)t * qd, *kt = kk + (size_t)t * kvd, *vt = v + (size_t)t * kvd;
    memcpy(qt, src, (size_t)qd * sizeof(act_t));
    memcpy(kt, src + qd, (size_t)kvd * sizeof(act_t));
    for (int j = 0; j < kvd; j++)
      vt[j] = bv ? ST(LD(src[qd + kvd + j]) + LD(bv[j])) : src[qd + kvd + j];
    const real *c = cosb + (size_t)pos[t] * half, *s = sinb + (size_t)pos[t] * half;
    ck_rope_row_act(nh, hd, qt, bq, c, s);
    ck_rope_row_act(nkv, hd, kt, bk, c, s);
  }
}

static void ck_rope_bwd(poc_kset *k, int T, poc_dptr pos_, poc_dptr cosb_, poc_dptr sinb_,
                        poc_dptr dq_, poc_dptr dk_, poc_dptr dv_, poc_dptr dqkv_) {
  CK_LIVE(k);
  const int nh = k->dm.nh, nkv = k->dm.nkv, hd = k->dm.hd, half = hd / 2;
  const size_t qd = (size_t)nh * hd, kvd = (size_t)nkv * hd, N = qd + 2 * kvd;
  const int32_t *pos = IP(pos_);
  const real *cosb = RP(cosb_), *sinb = RP(sinb_), *dv = RP(dv_);
  real *dq = RP(dq_), *dk = RP(dk_);
  act_t *dqkv = AP(dqkv_);
#pragma omp parallel for schedule(static) if ((size_t)T * N >= CPU_PAR_MIN)
  for (int t = 0; t < T; t++) {
    const real *c = cosb + (size_t)pos[t] * half, *s = sinb + (size_t)pos[t] * half;
    real *dqt = dq + (size_t)t * qd, *dkt = dk + (size_t)t * kvd;
    act_t *out = dqkv + (size_t)t * N;
    ck_rope_row(nh, hd, dqt, c, s, -1);
    ck_rope_row(nkv, hd, dkt, c, s, -1);
    acc_to_act(out, dqt, qd);
    acc_to_act(out + qd, dkt, kvd);
    acc_to_act(out + qd + kvd, dv + (size_t)t * kvd, kvd);
  }
}

/* ---- attention ------------------------------------------------------------------------ */

/* Online softmax, one (row, head) per task:
 *   s_j = q·k_j/√hd for j in [kbeg, q0 + t],  out = Σ_j e^{s_j − lse} v_j,
 *   lse = log Σ_j e^{s_j} (kept for backward). The running max m rescales the partial
 * sum and output whenever it grows, so no score row is stored. The output accumulates in
 * `real` (ob, hd values on the task's stack) and is stored once. */
static void ck_attn_fwd(poc_kset *k, int T, int q0, poc_dptr q_, poc_dptr k_, poc_dptr v_,
                        poc_dptr kbeg_, poc_dptr out_, poc_dptr lse_) {
  CK_LIVE(k);
  const int nh = k->dm.nh, nkv = k->dm.nkv, hd = k->dm.hd;
  const int grp = nh / nkv, qd = nh * hd, kvd = nkv * hd;
  const real scale = 1 / R_SQRT((real)hd);
  const act_t *q = AP(q_), *kk = AP(k_), *v = AP(v_);
  const int32_t *kbeg = IP(kbeg_);
  act_t *out = AP(out_);
  real *lse = RP(lse_);
#pragma omp parallel for collapse(2) schedule(static) if ((size_t)T * nh * hd * 8 >= CPU_PAR_MIN)
  for (int t = 0; t < T; t++)
    for (int h = 0; h < nh; h++) {
      const act_t *qi = q + (size_t)t * qd + (size_t)h * hd;
      act_t *o = out + (size_t)t * qd + (size_t)h * hd;
      real ob[hd];
      size_t koff = (size_t)(h / grp) * hd;
      const int kb = kbeg[t], ke = q0 + t + 1;
      for (int d = 0; d < hd; d++) ob[d] = 0;
      real mx = 0, s = 0;
      for (int j = kb; j < ke; j++) {
        const act_t *kj = kk + (size_t)j * kvd + koff, *vj = v + (size_t)j * kvd + koff;
        real sc = 0;
        for (int d = 0; d < hd; d++) sc += LD(qi[d]) * LD(kj[d]);
        sc *= scale;
        if (j == kb)
          mx = sc;
        else if (sc > mx) {
          real r = R_EXP(mx - sc);
          s *= r;
          for (int d = 0; d < hd; d++) ob[d] *= r;
          mx = sc;
        }
        real e = R_EXP(sc - mx);
        s += e;
        for (int d = 0; d < hd; d++) ob[d] += e * LD(vj[d]);
      }
      for (int d = 0; d < hd; d++) o[d] = ST(ob[d] / s);
      lse[(size_t)t * nh + h] = mx + R_LOG(s);
    }
}

/* Backward, recomputing p_ij = e^{q_i·k_j/√hd − lse_i} instead of storing it:
 *   D_i = dO_i·O_i,  dS_ij = p_ij (dO_i·v_j − D_i),
 *   dq_i = Σ_j dS_ij k_j/√hd,  dk_j = Σ_i dS_ij q_i/√hd,  dv_j = Σ_i p_ij dO_i.
 * Two passes keep every output owned by one task: (query row, head) for dq, then
 * (key row, kv head) for dk and dv, summing over the group's query heads and the rows
 * i in [j, send[j]) of the same sequence. */
static void ck_attn_bwd(poc_kset *k, int T, poc_dptr q_, poc_dptr k_, poc_dptr v_, poc_dptr o_,
                        poc_dptr dO_, poc_dptr lse_, poc_dptr kbeg_, poc_dptr send_,
                        poc_dptr dq_, poc_dptr dk_, poc_dptr dv_, poc_dptr D_) {
  CK_LIVE(k);
  const int nh = k->dm.nh, nkv = k->dm.nkv, hd = k->dm.hd;
  const int grp = nh / nkv, qd = nh * hd, kvd = nkv * hd;
  const real scale = 1 / R_SQRT((real)hd);
  const act_t *q = AP(q_), *kk = AP(k_), *v = AP(v_), *o = AP(o_), *dO = AP(dO_);
  const real *lse = RP(lse_);
  const int32_t *kbeg = IP(kbeg_), *send = IP(send_);
  real *dq = RP(dq_), *dk = RP(dk_), *dv = RP(dv_), *D = RP(D_);
#pragma omp parallel for collapse(2) schedule(static) if ((size_t)T * qd >= CPU_PAR_MIN)
  for (int t = 0; t < T; t++)
    for (int h = 0; h < nh; h++) {
      size_t at = (size_t)t * qd + (size_t)h * hd;
      const act_t *a = dO + at, *b = o + at;
      real s = 0;
      for (int d = 0; d < hd; d++) s += LD(a[d]) * LD(b[d]);
      D[(size_t)t * nh + h] = s;
    }
#pragma omp parallel for collapse(2) schedule(static) if ((size_t)T * qd * 8 >= CPU_PAR_MIN)
  for (int i = 0; i < T; i++)
    for (int h = 0; h < nh; h++) {
      size_t qo = (size_t)i * qd + (size_t)h * hd, koff = (size_t)(h / grp) * hd;
      const act_t *qi = q + qo, *dOi = dO + qo;
      real *dqi = dq + qo, li = lse[(size_t)i * nh + h], Di = D[(size_t)i * nh + h];
      for (int d = 0; d < hd; d++) dqi[d] = 0;
      for (int j = kbeg[i]; j <= i; j++) {
        const act_t *kj = kk + (size_t)j * kvd + koff, *vj = v + (size_t)j * kvd + koff;
        real sc = 0, dp = 0;
        for (int d = 0; d < hd; d++) {
          sc += LD(qi[d]) * LD(kj[d]);
          dp += LD(dOi[d]) * LD(vj[d]);
        }
        real ds = R_EXP(sc * scale - li) * (dp - Di) * scale;
        for (int d = 0; d < hd; d++) dqi[d] += ds * LD(kj[d]);
      }
    }
#pragma omp parallel for collapse(2) schedule(static) if ((size_t)T * qd * 8 >= CPU_PAR_MIN)
  for (int j = 0; j < T; j++)
    for (int g = 0; g < nkv; g++) {
      size_t ko = (size_t)j * kvd + (size_t)g * hd;
      const act_t *kj = kk + ko, *vj = v + ko;
      real *dkj = dk + ko, *dvj = dv + ko;
      for (int d = 0; d < hd; d++) dkj[d] = dvj[d] = 0;
      for (int h = g * grp; h < (g + 1) * grp; h++)
        for (int i = j; i < send[j]; i++) {
          size_t qo = (size_t)i * qd + (size_t)h * hd;
          const act_t *qi = q + qo, *dOi = dO + qo;
          real sc = 0, dp = 0;
          for (int d = 0; d < hd; d++) {
            sc += LD(qi[d]) * LD(kj[d]);
            dp += LD(dOi[d]) * LD(vj[d]);
          }
          real p = R_EXP(sc * scale - lse[(size_t)i * nh + h]);
          real ds = p * (dp - D[(size_t)i * nh + h]) * scale;
          for (int d = 0; d < hd; d++) {
            dvj[d] += p * LD(dOi[d]);
            dkj[d] += ds * LD(qi[d]);
          }
        }
    }
}

/* ---- SwiGLU --------------------------------------------------------------------------- */

/* a = silu(g)·u with silu(g) = g·σ(g); row t of gu is [g_t | u_t] */
static void ck_swiglu_fwd(poc_kset *k, int T, poc_dptr gu_, poc_dptr a_) {
  CK_LIVE(k);
  const int F = k->dm.F;
  const act_t *gu = AP(gu_);
  act_t *a = AP(a_);
#pragma omp parallel for schedule(static) if ((size_t)T * F >= CPU_PAR_MIN)
  for (int t = 0; t < T; t++) {
    const act_t *g = gu + (size_t)t * 2 * F, *u = g + F;
    act_t *at = a + (size_t)t * F;
    for (int j = 0; j < F; j++) {
      real gj = LD(g[j]);
      at[j] = ST(gj / (1 + R_EXP(-gj)) * LD(u[j]));
    }
  }
}

/* silu'(g) = σ(g)·(1 + g·(1 − σ(g))):  dg = da·u·silu'(g),  du = da·silu(g); all act */
static void ck_swiglu_bwd(poc_kset *k, int T, poc_dptr gu_, poc_dptr da_, poc_dptr dgu_) {
  CK_LIVE(k);
  const int F = k->dm.F;
  const act_t *gu = AP(gu_), *da = AP(da_);
  act_t *dgu = AP(dgu_);
#pragma omp parallel for schedule(static) if ((size_t)T * F >= CPU_PAR_MIN)
  for (int t = 0; t < T; t++) {
    const act_t *g = gu + (size_t)t * 2 * F, *u = g + F, *dat = da + (size_t)t * F;
    act_t *dg = dgu + (size_t)t * 2 * F, *du = dg + F;
    for (int j = 0; j < F; j++) {
      real gj = LD(g[j]), uj = LD(u[j]), daj = LD(dat[j]);
      real sg = 1 / (1 + R_EXP(-gj));
      real dgi = daj * uj * sg * (1 + gj * (1 - sg)), dui = daj * gj * sg;
      dg[j] = ST(dgi); /* both read before either is written: dgu may be gu */
      du[j] = ST(dui);
    }
  }
}

/* ---- the loss head ---------------------------------------------------------------------
 *
 * For one row with logits l (V entries) and target t:
 *   lse = log Σ_v e^{l_v},  p_v = e^{l_v − lse},  logp = l_t − lse,
 *   μ = Σ_v p_v l_v,        H = −Σ_v p_v log p_v = lse − μ,
 *   dl_v = g·(1[v=t] − p_v) − e·p_v·(l_v − μ)      (g = dL/dlogp, e = dL/dH).
 * Fused: chunks of logits are folded into a running max m, s = Σ e^{l−m} and
 * a = Σ e^{l−m}(l − m); when a chunk raises the max to m', s ← e^{m−m'} s and
 * a ← e^{m−m'} (a + (m − m') s). At the end lse = m + log s, μ = m + a/s and
 * H = log s − a/s (no cancellation of two large numbers).
 * log Σ_v p_v² (the weighting statistic of `logsumsq`) = log Σ e^{2l} − 2 lse: fused, a
 * fourth running sum q = Σ e^{2(l−m)}, rescaled by e^{2(m−m')}, gives log q − 2 log s;
 * q ≥ 1 (the maximum's own term) and s ≥ 1, so neither logarithm loses anything. */

static void ck_head_chunk_fwd(poc_kset *k, int n, int c, int v0, poc_dptr logits_,
                              poc_dptr tgt_, poc_dptr m_, poc_dptr s_, poc_dptr a_,
                              poc_dptr q_, poc_dptr tl_) {
  CK_LIVE(k);
  const real *logits = RP(logits_);
  const int32_t *tgt = IP(tgt_);
  real *m = RP(m_), *s = RP(s_), *a = RP(a_), *q = RP(q_), *tl = RP(tl_);
#pragma omp parallel for schedule(static) if ((size_t)n * c >= CPU_PAR_MIN)
  for (int i = 0; i < n; i++) {
    const real *l = logits + (size_t)i * c;
    real mc = l[0];
    for (int j = 1; j < c; j++) mc = l[j] > mc ? l[j] : mc;
    real mn, sr, ar, qr;
    if (v0 == 0) {
      mn = mc;
      sr = 0;
      ar = 0;
      qr = 0;
    } else {
      mn = m[i] > mc ? m[i] : mc;
      real sc = R_EXP(m[i] - mn);
      ar = sc * (a[i] + (m[i] - mn) * s[i]);
      sr = sc * s[i];
      qr = q ? sc * sc * q[i] : 0;
    }
    if (q) {
      for (int j = 0; j < c; j++) {
        real d = l[j] - mn, e = R_EXP(d);
        sr += e;
        ar += e * d;
        qr += e * e;
      }
    } else { /* the loop every objective without logsumsq runs, as it was */
      for (int j = 0; j < c; j++) {
        real d = l[j] - mn, e = R_EXP(d);
        sr += e;
        ar += e * d;
      }
    }
    m[i] = mn;
    s[i] = sr;
    a[i] = ar;
    if (q) q[i] = qr;
    int t = tgt[i] - v0;
    if (t >= 0 && t < c) tl[i] = l[t];
  }
}

static void ck_head_finish(poc_kset *k, int n, poc_dptr m_, poc_dptr s_, poc_dptr a_,
                           poc_dptr q_, poc_dptr tl_, poc_dptr logp_, poc_dptr ent_,
                           poc_dptr lss_, poc_dptr lse_, poc_dptr mu_) {
  CK_LIVE(k);
  const real *m = RP(m_), *s = RP(s_), *a = RP(a_), *q = RP(q_), *tl = RP(tl_);
  real *logp = RP(logp_), *ent = RP(ent_), *lss = RP(lss_), *lse = RP(lse_), *mu = RP(mu_);
  for (int i = 0; i < n; i++) {
    real ls = R_LOG(s[i]), am = a[i] / s[i];
    real mi = m[i], ti = tl[i]; /* read first: lse may be where m was kept */
    mu[i] = mi + am;
    lse[i] = mi + ls;
    logp[i] = ti - lse[i];
    if (ent) ent[i] = ls - am;
    if (lss) lss[i] = R_LOG(q[i]) - 2 * ls;
  }
}

/* In place when dlog is the logits buffer (one-type builds only: dlog is act, logits
 * acc): each element is read before it is written. */
/* The target's dlogit: g more than the others' formula. Added to the stored value where
 * that is exact (one type: the row may be the logits themselves, already overwritten);
 * recomputed from the logit l and rounded once where dlog is act. */
#if ACT_IS_ACC
#define HEAD_TARGET(stored, l, lse, mu, g, e) ((stored) + (g))
#else
static inline act_t head_target(real l, real lse, real mu, real g, real e) {
  real p = R_EXP(l - lse);
  return ST(-g * p - e * p * (l - mu) + g);
}
#define HEAD_TARGET(stored, l, lse, mu, g, e) head_target(l, lse, mu, g, e)
#endif

static void ck_head_chunk_bwd(poc_kset *k, int n, int c, int v0, poc_dptr logits_,
                              poc_dptr tgt_, poc_dptr lse_, poc_dptr mu_, poc_dptr dlogp_,
                              poc_dptr dent_, poc_dptr dlog_) {
  CK_LIVE(k);
  const real *logits = RP(logits_), *lse = RP(lse_), *mu = RP(mu_), *dlogp = RP(dlogp_),
             *dent = RP(dent_);
  const int32_t *tgt = IP(tgt_);
  act_t *dlog = AP(dlog_);
#pragma omp parallel for schedule(static) if ((size_t)n * c >= CPU_PAR_MIN)
  for (int i = 0; i < n; i++) {
    const real *l = logits + (size_t)i * c;
    act_t *dl = dlog + (size_t)i * c;
    real g = dlogp ? dlogp[i] : 0, e = dent ? dent[i] : 0;
    for (int j = 0; j < c; j++) {
      real p = R_EXP(l[j] - lse[i]);
      dl[j] = ST(-g * p - e * p * (l[j] - mu[i]));
    }
    int t = tgt[i] - v0;
    if (t >= 0 && t < c) dl[t] = HEAD_TARGET(dl[t], l[t], lse[i], mu[i], g, e);
  }
}

/* Textbook: log-softmax ls = l − lse in place, then with p = e^{ls}:
 *   logp = ls_t,  μ' = Σ p·ls = μ − lse,  H = −μ',  log Σ p² = log Σ e^{2·ls}.
 * mu receives μ' (not μ), because the backward works on ls: l − μ = ls − μ'. */
static void ck_head_text_fwd(poc_kset *k, int n, poc_dptr logits_, poc_dptr tgt_,
                             poc_dptr logp_, poc_dptr ent_, poc_dptr lss_, poc_dptr lse_,
                             poc_dptr mu_) {
  CK_LIVE(k);
  const int V = k->dm.V;
  const int32_t *tgt = IP(tgt_);
  real *logits = RP(logits_), *logp = RP(logp_), *ent = RP(ent_), *lss = RP(lss_),
       *lse = RP(lse_), *mu = RP(mu_);
#pragma omp parallel for schedule(static) if ((size_t)n * V >= CPU_PAR_MIN)
  for (int i = 0; i < n; i++) {
    real *l = logits + (size_t)i * V;
    real mx = l[0];
    for (int v = 1; v < V; v++) mx = l[v] > mx ? l[v] : mx;
    real s = 0;
    for (int v = 0; v < V; v++) s += R_EXP(l[v] - mx);
    real ls = mx + R_LOG(s);
    real hsum = 0, p2 = 0;
    for (int v = 0; v < V; v++) {
      l[v] -= ls;
      real p = R_EXP(l[v]);
      hsum -= p * l[v];
      p2 += p * p;
    }
    /* −hsum is bit for bit Σ p·ls summed in the same order: rounding to nearest commutes
       with negation */
    logp[i] = l[tgt[i]];
    lse[i] = ls;
    mu[i] = -hsum;
    if (ent) ent[i] = hsum;
    if (lss) lss[i] = R_LOG(p2);
  }
}

static void ck_head_text_bwd(poc_kset *k, int n, poc_dptr ls_, poc_dptr tgt_, poc_dptr mu_,
                             poc_dptr dlogp_, poc_dptr dent_, poc_dptr dlog_) {
  CK_LIVE(k);
  const int V = k->dm.V;
  const real *ls = RP(ls_), *mu = RP(mu_), *dlogp = RP(dlogp_), *dent = RP(dent_);
  const int32_t *tgt = IP(tgt_);
  act_t *dlog = AP(dlog_);
#pragma omp parallel for schedule(static) if ((size_t)n * V >= CPU_PAR_MIN)
  for (int i = 0; i < n; i++) {
    const real *l = ls + (size_t)i * V;
    act_t *dl = dlog + (size_t)i * V;
    real g = dlogp ? dlogp[i] : 0, e = dent ? dent[i] : 0, mean = mu[i];
    for (int v = 0; v < V; v++) {
      real p = R_EXP(l[v]);
      dl[v] = ST(-g * p - e * p * (l[v] - mean));
    }
    int t = tgt[i];
    dl[t] = HEAD_TARGET(dl[t], l[t], 0, mean, g, e);
  }
}

/* ---- the optimizer -------------------------------------------------------------------- */

/* torch.optim.AdamW: g ← s·g,  m ← β1 m + (1 − β1) g,  v ← β2 v + (1 − β2) g²,
 *   w ← w·(1 − lr·λ) − lr·(m/bc1)/(√(v/bc2) + ε),  bc_k = 1 − β_k^step.
 * The arithmetic is double in both precisions (the CPU training loop's AdamW has always
 * been): only the stored w, m and v are rounded, and the step reads the moments back as
 * stored, so it moves w by exactly what the saved state implies. */
static void ck_adamw(poc_kset *k, size_t n, poc_dptr w_, poc_dptr g_, poc_dptr m_, poc_dptr v_,
                     poc_dptr wc_, float lr_, float b1_, float b2_, float eps_, float wd_,
                     float bc1_, float bc2_, float gscale_) {
  CK_LIVE(k);
  const double lr = lr_, b1 = b1_, b2 = b2_, eps = eps_, bc1 = bc1_, bc2 = bc2_, gs = gscale_;
  const double decay = 1 - lr * wd_;
  const real *g = RP(g_);
  real *w = RP(w_), *mo = RP(m_), *va = RP(v_);
  act_t *wc = wc_ == w_ ? NULL : AP(wc_);
#pragma omp parallel for schedule(static)
  for (size_t i = 0; i < n; i++) {
    double gi = (double)g[i] * gs;
    mo[i] = (real)(b1 * mo[i] + (1 - b1) * gi);
    va[i] = (real)(b2 * va[i] + (1 - b2) * gi * gi);
    double wi = (double)w[i] * decay;
    w[i] = (real)(wi - lr * ((double)mo[i] / bc1) / (sqrt((double)va[i] / bc2) + eps));
    if (wc) wc[i] = ST(w[i]);
  }
}

/* Σ x² in double over 64 fixed slices added in order: the same bits for any thread count. */
static double ck_sumsq(poc_kset *k, size_t n, poc_dptr x_) {
  if (k->d->failed) return NAN;
  enum { SLICES = 64 };
  const real *x = RP(x_);
  double part[SLICES];
#pragma omp parallel for schedule(static)
  for (int s = 0; s < SLICES; s++) {
    size_t a = n * (size_t)s / SLICES, b = n * (size_t)(s + 1) / SLICES;
    double acc = 0;
    for (size_t i = a; i < b; i++) acc += (double)x[i] * x[i];
    part[s] = acc;
  }
  double total = 0;
  for (int s = 0; s < SLICES; s++) total += part[s];
  return total;
}

void FP(poc_cpu_kernels)(poc_kernels *k) {
  *k = (poc_kernels){
      .gemm = ck_gemm,
      .embed_fwd = ck_embed_fwd,
      .embed_bwd = ck_embed_bwd,
      .rmsnorm_fwd = ck_rmsnorm_fwd,
      .rmsnorm_bwd = ck_rmsnorm_bwd,
      .rmsnorm_dw = ck_rmsnorm_dw,
      .colsum = ck_colsum,
      .cast = ck_cast,
      .drop_scale = ck_drop_scale,
      .qkv_bias_rope = ck_qkv_bias_rope,
      .rope_bwd = ck_rope_bwd,
      .attn_fwd = ck_attn_fwd,
      .attn_bwd = ck_attn_bwd,
      .swiglu_fwd = ck_swiglu_fwd,
      .swiglu_bwd = ck_swiglu_bwd,
      .head_chunk_fwd = ck_head_chunk_fwd,
      .head_finish = ck_head_finish,
      .head_chunk_bwd = ck_head_chunk_bwd,
      .head_text_fwd = ck_head_text_fwd,
      .head_text_bwd = ck_head_text_bwd,
      .adamw = ck_adamw,
      .sumsq = ck_sumsq,
  };
}
