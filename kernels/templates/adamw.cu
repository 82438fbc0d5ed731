/* adamw.cu — the optimizer step and the gradient norm.
 *
 * AdamW (decoupled weight decay, as torch.optim.AdamW), on fp32 master weights with fp32
 * moments, refreshing the bf16 copy the model computes with in the same pass:
 *   g ← s·g  (s folds gradient averaging and clipping)
 *   m ← β1 m + (1 − β1) g,   v ← β2 v + (1 − β2) g²
 *   w ← w·(1 − lr·λ) − lr · (m / bc1) / (√(v / bc2) + ε),   bc_k = 1 − β_k^step
 * A launch covers a run of tensors starting anywhere in the flat array: the first
 * elements up to a 16-byte boundary of w go one at a time, then groups of 4 (16-byte
 * loads and stores of w, g, m, v, an 8-byte store of the bf16 copy), then the tail.
 */
#include "poc_common.cuh"
#include "poc_vec.cuh"

struct adamw_hp {
  float lr, b1, b2, eps, wd, bc1, bc2, gscale;
};

/* one element: w, m, v updated in place; returns the new w */
__device__ __forceinline__ float adamw_el(const adamw_hp &h, float &w, float g, float &m,
                                          float &v) {
  float gi = g * h.gscale;
  m = h.b1 * m + (1.f - h.b1) * gi;
  v = h.b2 * v + (1.f - h.b2) * gi * gi;
  w = w * (1.f - h.lr * h.wd) - h.lr * (m / h.bc1) / (sqrtf(v / h.bc2) + h.eps);
  return w;
}

extern "C" __global__ void adamw(poc_size n, float *__restrict__ w, const float *__restrict__ g,
                                 float *__restrict__ m, float *__restrict__ v, bf16 *__restrict__ w16,
                                 float lr, float b1, float b2, float eps, float wd, float bc1,
                                 float bc2, float gscale) {
  const adamw_hp h = {lr, b1, b2, eps, wd, bc1, bc2, gscale};
  const poc_size stride = (poc_size)gridDim.x * blockDim.x,
                 first = blockIdx.x * (poc_size)blockDim.x + threadIdx.x;
  /* head: elements before w's 16-byte boundary; the other arrays share w's offset in
     their own allocations, so one boundary serves all (checked, else all scalar) */
  poc_size head = ((16 - ((unsigned long long)w & 15ull)) & 15ull) / 4;
  if (head > n) head = n;
  bool vec = poc_al16(g + head) && poc_al16(m + head) && poc_al16(v + head) &&
             poc_al8(w16 + head) && poc_al16(w + head);
  if (!vec) head = n;
  poc_size n4 = (n - head) / 4, tail = head + 4 * n4;
  for (poc_size i = first; i < head; i += stride) {
    float wi = w[i], mi = m[i], vi = v[i];
    w16[i] = f2bf(adamw_el(h, wi, g[i], mi, vi));
    w[i] = wi;
    m[i] = mi;
    v[i] = vi;
  }
  for (poc_size i4 = first; i4 < n4; i4 += stride) {
    poc_size o = head + 4 * i4;
    float wv[4], gv[4], mv[4], vv[4];
    ld4f(w + o, wv);
    ld4f(g + o, gv);
    ld4f(m + o, mv);
    ld4f(v + o, vv);
#pragma unroll
    for (int k = 0; k < 4; k++) adamw_el(h, wv[k], gv[k], mv[k], vv[k]);
    st4f(w + o, wv);
    st4f(m + o, mv);
    st4f(v + o, vv);
    st4h(w16 + o, wv);
  }
  for (poc_size i = tail + first; i < n; i += stride) {
    float wi = w[i], mi = m[i], vi = v[i];
    w16[i] = f2bf(adamw_el(h, wi, g[i], mi, vi));
    w[i] = wi;
    m[i] = mi;
    v[i] = vi;
  }
}

/* partial[b] = Σ g² over block b's grid-stride share; the host adds the partials in double,
 * in order, so the norm is the same every run. */
extern "C" __global__ void sumsq_partial(poc_size n, const float *__restrict__ g,
                                         float *__restrict__ partial) {
  __shared__ float sh[32];
  float acc = 0.f;
  for (poc_size i = blockIdx.x * (poc_size)blockDim.x + threadIdx.x; i < n;
       i += (poc_size)gridDim.x * blockDim.x)
    acc += g[i] * g[i];
  acc = block_sum(acc, sh);
  if (threadIdx.x == 0) partial[blockIdx.x] = acc;
}
