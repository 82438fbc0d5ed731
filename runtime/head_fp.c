/* head_fp.c — the loss head: hidden rows → per-token log-prob of the target (and the
 * entropy of the next-token distribution), forward and backward, fused and textbook.
 *
 * For one row with logits l = W·h (V entries) and target t:
 *   lse = log Σ_v e^{l_v},  p_v = e^{l_v − lse},  logp = l_t − lse,
 *   μ = Σ_v p_v l_v,        H = −Σ_v p_v log p_v = lse − μ.
 * Gradients with respect to the logits:
 *   ∂logp/∂l_v = 1[v=t] − p_v
 *   ∂H/∂l_v    = ∂lse/∂l_v − ∂μ/∂l_v = p_v − (p_v + p_v l_v − p_v μ) = −p_v (l_v − μ)
 * so dl_v = g·(1[v=t] − p_v) − e·p_v·(l_v − μ) for seeds g = dL/dlogp, e = dL/dH.
 *
 * The fused head streams chunks of up to POC_HEAD_CHUNK vocabulary columns (fewer for large
 * row blocks, see head_chunk) through a GEMM and keeps,
 * per row, a running max m, s = Σ e^{l−m} and a = Σ e^{l−m}(l − m); when a chunk raises the
 * max to m', both are rescaled: s ← e^{m−m'} s, a ← e^{m−m'} (a + (m − m') s). At the end
 * lse = m + log s, μ = m + a/s, H = log s − a/s (no cancellation of two large numbers).
 * Backward recomputes each chunk from the saved lse and μ.
 */
#include <stdio.h>
#include <stdlib.h>

#include "model_internal.h"

/* Logits in flight per block: rows × chunk ≤ HEAD_BLOCK values (8 MiB in fp32), small
 * enough to stay in the last-level cache between the GEMM that writes a block and the two
 * that read it back. bench/model measured this best on a 2-core EPYC: 384 rows × 4096
 * columns and 768 × 2048 both beat their neighbours by 5–15%. */
#define HEAD_BLOCK ((size_t)1 << 21)

static int head_chunk(int rows) {
  int c = POC_HEAD_CHUNK;
  while (c > 256 && (size_t)rows * (size_t)c > HEAD_BLOCK) c /= 2;
  return c;
}

/* Enough for every block of up to min(n, HEAD_ROWS) rows: r × head_chunk(r) never exceeds
 * HEAD_BLOCK, nor r × POC_HEAD_CHUNK. */
size_t FP(head_scratch_len)(int n, int V) {
  size_t rows = (size_t)(n < HEAD_ROWS ? n : HEAD_ROWS);
  size_t cols = (size_t)(V < POC_HEAD_CHUNK ? V : POC_HEAD_CHUNK);
  size_t buf = rows * cols < HEAD_BLOCK ? rows * cols : HEAD_BLOCK;
  return buf + 2 * (size_t)HEAD_ROWS;
}

void FP(head_fused_fwd)(int n, int H, int V, const real *h, const real *W,
                        const int32_t *tgt, real *logp, real *ent, real *lse, real *mu,
                        real *scratch) {
  int rows_max = n < HEAD_ROWS ? n : HEAD_ROWS;
  const int chunk = head_chunk(rows_max);
  int cmax = V < chunk ? V : chunk;
  real *buf = scratch, *s = scratch + (size_t)rows_max * cmax, *a = s + HEAD_ROWS;
  real *m = lse; /* the running max lives where lse ends up */
  for (int r0 = 0; r0 < n; r0 += HEAD_ROWS) {
    int rb = n - r0 < HEAD_ROWS ? n - r0 : HEAD_ROWS;
    for (int v0 = 0; v0 < V; v0 += chunk) {
      int c = V - v0 < chunk ? V - v0 : chunk;
      GEMM(CblasRowMajor, CblasNoTrans, CblasTrans, rb, c, H, 1, h + (size_t)r0 * H, H,
           W + (size_t)v0 * H, H, 0, buf, c);
#pragma omp parallel for schedule(static) if ((size_t)rb * c >= MDL_PAR_MIN)
      for (int r = 0; r < rb; r++) {
        const real *l = buf + (size_t)r * c;
        int i = r0 + r;
        real mc = l[0];
        for (int j = 1; j < c; j++) mc = l[j] > mc ? l[j] : mc;
        real mn, sr, ar;
        if (v0 == 0) {
          mn = mc;
          sr = 0;
          ar = 0;
        } else {
          mn = m[i] > mc ? m[i] : mc;
          real sc = R_EXP(m[i] - mn);
          ar = sc * (a[r] + (m[i] - mn) * s[r]);
          sr = sc * s[r];
        }
        for (int j = 0; j < c; j++) {
          real d = l[j] - mn, e = R_EXP(d);
          sr += e;
          ar += e * d;
        }
        m[i] = mn;
        s[r] = sr;
        a[r] = ar;
        int t = tgt[i] - v0;
        if (t >= 0 && t < c) logp[i] = l[t];
      }
    }
    for (int r = 0; r < rb; r++) {
      int i = r0 + r;
      real ls = R_LOG(s[r]), am = a[r] / s[r];
      mu[i] = m[i] + am;
      lse[i] = m[i] + ls;
      logp[i] -= lse[i];
      if (ent) ent[i] = ls - am;
    }
  }
}

void FP(head_fused_bwd)(int n, int H, int V, const real *h, const real *W,
                        const int32_t *tgt, const real *lse, const real *mu, const real *dlogp,
                        const real *dent, real *dh, real *dW, real *scratch) {
  const int chunk = head_chunk(n < HEAD_ROWS ? n : HEAD_ROWS);
  real *buf = scratch;
  for (int r0 = 0; r0 < n; r0 += HEAD_ROWS) {
    int rb = n - r0 < HEAD_ROWS ? n - r0 : HEAD_ROWS;
    const real *hb = h + (size_t)r0 * H;
    for (int v0 = 0; v0 < V; v0 += chunk) {
      int c = V - v0 < chunk ? V - v0 : chunk;
      GEMM(CblasRowMajor, CblasNoTrans, CblasTrans, rb, c, H, 1, hb, H, W + (size_t)v0 * H, H,
           0, buf, c);
#pragma omp parallel for schedule(static) if ((size_t)rb * c >= MDL_PAR_MIN)
      for (int r = 0; r < rb; r++) {
        real *l = buf + (size_t)r * c;
        int i = r0 + r;
        real g = dlogp ? dlogp[i] : 0, e = dent ? dent[i] : 0;
        for (int j = 0; j < c; j++) {
          real p = R_EXP(l[j] - lse[i]);
          l[j] = -g * p - e * p * (l[j] - mu[i]);
        }
        int t = tgt[i] - v0;
        if (t >= 0 && t < c) l[t] += g;
      }
      /* dh_block (=|+=) dlogits·W_chunk;  dW_chunk += dlogitsᵀ·h_block */
      GEMM(CblasRowMajor, CblasNoTrans, CblasNoTrans, rb, H, c, 1, buf, c, W + (size_t)v0 * H,
           H, v0 == 0 ? 0 : 1, dh + (size_t)r0 * H, H);
      GEMM(CblasRowMajor, CblasTrans, CblasNoTrans, c, H, rb, 1, buf, c, hb, H, 1,
           dW + (size_t)v0 * H, H);
    }
  }
}

/* Textbook: logits = h·Wᵀ [n×V] materialised, log-softmax in place, gather. */
void FP(head_text_fwd)(int n, int H, int V, const real *h, const real *W, const int32_t *tgt,
                       real *logp, real *ent, real *logits) {
  GEMM(CblasRowMajor, CblasNoTrans, CblasTrans, n, V, H, 1, h, H, W, H, 0, logits, V);
#pragma omp parallel for schedule(static) if ((size_t)n * V >= MDL_PAR_MIN)
  for (int i = 0; i < n; i++) {
    real *l = logits + (size_t)i * V;
    real mx = l[0];
    for (int v = 1; v < V; v++) mx = l[v] > mx ? l[v] : mx;
    real s = 0;
    for (int v = 0; v < V; v++) s += R_EXP(l[v] - mx);
    real lse = mx + R_LOG(s);
    real hsum = 0;
    for (int v = 0; v < V; v++) {
      l[v] -= lse;
      hsum -= R_EXP(l[v]) * l[v];
    }
    logp[i] = l[tgt[i]];
    if (ent) ent[i] = hsum;
  }
}

/* Textbook backward: with ls = log-softmax, p = e^{ls} and l − μ = ls − Σ p·ls. */
void FP(head_text_bwd)(int n, int H, int V, const real *h, const real *W, const int32_t *tgt,
                       const real *dlogp, const real *dent, real *logsm, real *dh, real *dW) {
#pragma omp parallel for schedule(static) if ((size_t)n * V >= MDL_PAR_MIN)
  for (int i = 0; i < n; i++) {
    real *l = logsm + (size_t)i * V;
    real g = dlogp ? dlogp[i] : 0, e = dent ? dent[i] : 0;
    real mean = 0;
    for (int v = 0; v < V; v++) mean += R_EXP(l[v]) * l[v];
    for (int v = 0; v < V; v++) {
      real p = R_EXP(l[v]);
      l[v] = -g * p - e * p * (l[v] - mean);
    }
    l[tgt[i]] += g;
  }
  GEMM(CblasRowMajor, CblasNoTrans, CblasNoTrans, n, H, V, 1, logsm, V, W, H, 0, dh, H);
  GEMM(CblasRowMajor, CblasTrans, CblasNoTrans, V, H, n, 1, logsm, V, h, H, 1, dW, H);
}

/* ---- public entry points: allocate their own scratch --------------------------------- */

static void head_nan(int n, real *a) {
  for (int i = 0; a && i < n; i++) a[i] = (real)NAN;
}

void FP(poc_head_forward)(int n, int H, int V, const real *h, const real *W,
                          const int32_t *target, int fused, real *logp, real *entropy) {
  if (n <= 0) return;
  if (fused) {
    real *scr = malloc(FP(head_scratch_len)(n, V) * sizeof(real));
    real *st = malloc(2 * (size_t)n * sizeof(real));
    if (scr && st)
      FP(head_fused_fwd)(n, H, V, h, W, target, logp, entropy, st, st + n, scr);
    else {
      fprintf(stderr, "poc: loss head: out of memory for %d rows\n", n);
      head_nan(n, logp);
      head_nan(n, entropy);
    }
    free(scr);
    free(st);
  } else {
    real *lg = malloc((size_t)n * V * sizeof(real));
    if (lg)
      FP(head_text_fwd)(n, H, V, h, W, target, logp, entropy, lg);
    else {
      fprintf(stderr, "poc: loss head: out of memory for %d×%d logits\n", n, V);
      head_nan(n, logp);
      head_nan(n, entropy);
    }
    free(lg);
  }
}

void FP(poc_head_backward)(int n, int H, int V, const real *h, const real *W,
                           const int32_t *target, const real *dlogp, const real *dentropy,
                           int fused, real *dh, real *dW) {
  if (n <= 0) return;
  real *st = malloc(3 * (size_t)n * sizeof(real));
  real *scr = fused ? malloc(FP(head_scratch_len)(n, V) * sizeof(real))
                    : malloc((size_t)n * V * sizeof(real));
  if (!st || !scr) {
    fprintf(stderr, "poc: loss head backward: out of memory for %d rows\n", n);
    head_nan(n * H, dh);
  } else if (fused) {
    FP(head_fused_fwd)(n, H, V, h, W, target, st, NULL, st + n, st + 2 * n, scr);
    FP(head_fused_bwd)(n, H, V, h, W, target, st + n, st + 2 * n, dlogp,
                       dentropy, dh, dW, scr);
  } else {
    FP(head_text_fwd)(n, H, V, h, W, target, st, NULL, scr);
    FP(head_text_bwd)(n, H, V, h, W, target, dlogp, dentropy, scr, dh, dW);
  }
  free(st);
  free(scr);
}
