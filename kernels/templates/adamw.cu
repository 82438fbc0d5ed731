/* adamw.cu — the optimizer step and the gradient norm.
 *
 * AdamW (decoupled weight decay, as torch.optim.AdamW), on fp32 master weights with fp32
 * moments, refreshing the bf16 copy the model computes with in the same pass:
 *   g ← s·g  (s folds gradient averaging and clipping)
 *   m ← β1 m + (1 − β1) g,   v ← β2 v + (1 − β2) g²
 *   w ← w·(1 − lr·λ) − lr · (m / bc1) / (√(v / bc2) + ε),   bc_k = 1 − β_k^step
 */
#include "poc_common.cuh"

extern "C" __global__ void adamw(poc_size n, float *__restrict__ w, const float *__restrict__ g,
                                 float *__restrict__ m, float *__restrict__ v, bf16 *__restrict__ w16,
                                 float lr, float b1, float b2, float eps, float wd, float bc1,
                                 float bc2, float gscale) {
  for (poc_size i = blockIdx.x * (poc_size)blockDim.x + threadIdx.x; i < n;
       i += (poc_size)gridDim.x * blockDim.x) {
    float gi = g[i] * gscale;
    float mi = b1 * m[i] + (1.f - b1) * gi, vi = b2 * v[i] + (1.f - b2) * gi * gi;
    m[i] = mi;
    v[i] = vi;
    float wi = w[i] * (1.f - lr * wd) - lr * (mi / bc1) / (sqrtf(vi / bc2) + eps);
    w[i] = wi;
    w16[i] = f2bf(wi);
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
