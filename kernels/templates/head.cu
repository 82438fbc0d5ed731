/* head.cu — the loss head's row work; the GEMMs around it are cuBLAS's.
 *
 * For a row with logits l (V entries) and target t:
 *   lse = log Σ_v e^{l_v},  logp = l_t − lse,  μ = Σ_v p_v l_v,  H = lse − μ,
 *   dl_v = g·(1[v=t] − p_v) − e·p_v·(l_v − μ)      (g = dL/dlogp, e = dL/dH)
 *
 * Fused: the host GEMMs one vocabulary chunk of logits at a time into a bf16 [n × c] buffer
 * (cuBLAS accumulates in fp32 and rounds each logit once, as a bf16 lm_head's output is
 * rounded) and head_chunk_fwd folds it into per-row running state: max m, s = Σ e^{l−m} and
 * a = Σ e^{l−m}(l − m); a chunk that raises the max to m' rescales them,
 * s ← e^{m−m'} s,  a ← e^{m−m'} (a + (m − m') s).  Then lse = m + log s, μ = m + a/s and
 * H = log s − a/s.  When asked (q not null) a fourth sum q = Σ e^{2(l−m)}, rescaled by
 * e^{2(m−m')}, gives log Σ_v p_v² = log q − 2 log s (`logsumsq`, a weighting statistic
 * with no gradient of its own).  Backward regenerates each chunk and head_chunk_bwd turns
 * it into bf16 dlogits in place for the dW and dh GEMMs: no fp32 chunk goes through memory,
 * and the n×V logits never exist.
 *
 * Textbook (the --unfused baseline): full logits, then one kernel per step: row
 * log-sum-exp, log-softmax in place, gather + entropy + log Σ p²; backward from the stored
 * log-softmax.
 */
#include "poc_common.cuh"

/* grid: one block per row */
extern "C" __global__ void head_chunk_fwd(int n, int c, int v0, const bf16 *__restrict__ logits,
                                          const int *__restrict__ tgt, float *__restrict__ m,
                                          float *__restrict__ s, float *__restrict__ a,
                                          float *__restrict__ q, float *__restrict__ tl) {
  __shared__ float sh[32];
  int i = blockIdx.x;
  if (i >= n) return;
  const bf16 *lr = logits + (poc_size)i * c;
  float mc = POC_NEG_INF;
  for (int j = threadIdx.x; j < c; j += blockDim.x) mc = fmaxf(mc, bf2f(lr[j]));
  mc = block_max(mc, sh);
  const float mo = v0 == 0 ? POC_NEG_INF : m[i], mn = fmaxf(mo, mc);
  float sr = 0.f, ar = 0.f, qr = 0.f;
  for (int j = threadIdx.x; j < c; j += blockDim.x) {
    float d = bf2f(lr[j]) - mn, e = expf(d);
    sr += e;
    ar += e * d;
    qr += e * e;
  }
  sr = block_sum(sr, sh);
  ar = block_sum(ar, sh);
  if (q) qr = block_sum(qr, sh); /* q is the same pointer for every thread: no divergence */
  if (threadIdx.x == 0) {
    if (v0 > 0) {
      float sc = expf(mo - mn);
      ar += sc * (a[i] + (mo - mn) * s[i]);
      sr += sc * s[i];
      if (q) qr += sc * sc * q[i];
    }
    m[i] = mn;
    s[i] = sr;
    a[i] = ar;
    if (q) q[i] = qr;
    int t = tgt[i] - v0;
    if (t >= 0 && t < c) tl[i] = bf2f(lr[t]);
  }
}

extern "C" __global__ void head_finish(int n, const float *__restrict__ m, const float *__restrict__ s,
                                       const float *__restrict__ a, const float *__restrict__ q,
                                       const float *__restrict__ tl, float *__restrict__ logp,
                                       float *__restrict__ ent, float *__restrict__ lss,
                                       float *__restrict__ lse, float *__restrict__ mu) {
  int i = blockIdx.x * blockDim.x + threadIdx.x;
  if (i >= n) return;
  float ls = logf(s[i]), am = a[i] / s[i];
  mu[i] = m[i] + am;
  lse[i] = m[i] + ls;
  logp[i] = tl[i] - lse[i];
  if (ent) ent[i] = ls - am;
  if (lss) lss[i] = logf(q[i]) - 2.f * ls;
}

/* dlogits of one bf16 [n × c] chunk starting at vocabulary column v0 (dlogp/dent may be
 * null). Each element is read and written by one thread, so dlog may be logits: the model
 * turns the chunk into its dlogits in place. */
extern "C" __global__ void head_chunk_bwd(int n, int c, int v0, const bf16 *logits,
                                          const int *__restrict__ tgt, const float *__restrict__ lse,
                                          const float *__restrict__ mu, const float *__restrict__ dlogp,
                                          const float *__restrict__ dent, bf16 *dlog) {
  poc_size total = (poc_size)n * c;
  for (poc_size idx = blockIdx.x * (poc_size)blockDim.x + threadIdx.x; idx < total;
       idx += (poc_size)gridDim.x * blockDim.x) {
    int i = (int)(idx / c), j = (int)(idx % c);
    float l = bf2f(logits[idx]), p = expf(l - lse[i]);
    float g = dlogp ? dlogp[i] : 0.f, e = dent ? dent[i] : 0.f;
    float d = -g * p - e * p * (l - mu[i]);
    if (v0 + j == tgt[i]) d += g;
    dlog[idx] = f2bf(d);
  }
}

/* ---- textbook ------------------------------------------------------------------------ */

/* grid: one block per row */
extern "C" __global__ void head_text_lse(int n, int V, const float *__restrict__ logits,
                                         float *__restrict__ lse) {
  __shared__ float sh[32];
  int i = blockIdx.x;
  if (i >= n) return;
  const float *lr = logits + (poc_size)i * V;
  float mx = POC_NEG_INF;
  for (int j = threadIdx.x; j < V; j += blockDim.x) mx = fmaxf(mx, lr[j]);
  mx = block_max(mx, sh);
  float s = 0.f;
  for (int j = threadIdx.x; j < V; j += blockDim.x) s += expf(lr[j] - mx);
  s = block_sum(s, sh);
  if (threadIdx.x == 0) lse[i] = mx + logf(s);
}

extern "C" __global__ void head_text_logsoftmax(int n, int V, float *__restrict__ logits,
                                                const float *__restrict__ lse) {
  poc_size total = (poc_size)n * V;
  for (poc_size idx = blockIdx.x * (poc_size)blockDim.x + threadIdx.x; idx < total;
       idx += (poc_size)gridDim.x * blockDim.x)
    logits[idx] -= lse[idx / V];
}

/* logp = ls[t], H = −Σ e^{ls} ls, log Σ e^{2·ls}; also keeps μ' = Σ p·ls for the backward
 * (l − μ = ls − μ'). grid: one block per row */
extern "C" __global__ void head_text_gather(int n, int V, const float *__restrict__ ls,
                                            const int *__restrict__ tgt, float *__restrict__ logp,
                                            float *__restrict__ ent, float *__restrict__ lss,
                                            float *__restrict__ mu) {
  __shared__ float sh[32];
  int i = blockIdx.x;
  if (i >= n) return;
  const float *lr = ls + (poc_size)i * V;
  float acc = 0.f, p2 = 0.f;
  for (int j = threadIdx.x; j < V; j += blockDim.x) {
    float p = expf(lr[j]);
    acc += p * lr[j];
    p2 += p * p;
  }
  acc = block_sum(acc, sh);
  if (lss) p2 = block_sum(p2, sh);
  if (threadIdx.x == 0) {
    logp[i] = lr[tgt[i]];
    mu[i] = acc;
    if (ent) ent[i] = -acc;
    if (lss) lss[i] = logf(p2);
  }
}

extern "C" __global__ void head_text_bwd(int n, int V, const float *__restrict__ ls,
                                         const int *__restrict__ tgt, const float *__restrict__ mu,
                                         const float *__restrict__ dlogp, const float *__restrict__ dent,
                                         bf16 *__restrict__ dlog) {
  poc_size total = (poc_size)n * V;
  for (poc_size idx = blockIdx.x * (poc_size)blockDim.x + threadIdx.x; idx < total;
       idx += (poc_size)gridDim.x * blockDim.x) {
    int i = (int)(idx / V), j = (int)(idx % V);
    float l = ls[idx], p = expf(l);
    float g = dlogp ? dlogp[i] : 0.f, e = dent ? dent[i] : 0.f;
    float d = -g * p - e * p * (l - mu[i]);
    if (j == tgt[i]) d += g;
    dlog[idx] = f2bf(d);
  }
}
