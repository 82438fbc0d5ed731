/* norm.cu — RMSNorm forward and backward, column sums, casts.
 *
 *   y = w ⊙ x·r,  r = (mean_j x_j² + eps)^(-1/2)
 *   dx_k += r·(w_k dy_k − x_k·r²/H · Σ_j w_j dy_j x_j),   dw_k += Σ_t dy_tk x_tk r_t
 *
 * `rows` (may be null) gathers the input: row i of the output normalises x[rows[i]]; the
 * final norm uses it to run only on the rows that predict a target. Weight gradients go
 * through a two-stage column sum (per-slice partials, then one fixed-order pass), so they
 * do not depend on scheduling. The row kernels read and write 8 elements per 16-byte
 * access where the row's pointers are aligned (poc_vec.cuh), then a scalar tail.
 */
#include "poc_common.cuh"
#include "poc_vec.cuh"

/* grid: one block per output row */
extern "C" __global__ void rmsnorm_fwd(int n, const float *__restrict__ x, const int *__restrict__ rows,
                                       const bf16 *__restrict__ w, bf16 *__restrict__ y,
                                       float *__restrict__ rstd) {
  __shared__ float sh[32];
  int i = blockIdx.x;
  if (i >= n) return;
  const float *xr = x + (poc_size)(rows ? rows[i] : i) * POC_H;
  bf16 *yr = y + (poc_size)i * POC_H;
  /* 8-wide groups [0, 8·n8), then the scalar tail [8·n8, H); the same for every thread */
  const int n8 = poc_al16(xr) && poc_al16(w) && poc_al16(yr) ? POC_H / 8 : 0;
  float ss = 0.f;
  for (int c = threadIdx.x; c < n8; c += blockDim.x) {
    float xv[8];
    ld8f(xr + 8 * c, xv);
#pragma unroll
    for (int k = 0; k < 8; k++) ss += xv[k] * xv[k];
  }
  for (int j = 8 * n8 + threadIdx.x; j < POC_H; j += blockDim.x) ss += xr[j] * xr[j];
  ss = block_sum(ss, sh);
  float r = rsqrtf(ss / POC_H + POC_EPS);
  for (int c = threadIdx.x; c < n8; c += blockDim.x) {
    float xv[8], wv[8];
    ld8f(xr + 8 * c, xv);
    ld8h(w + 8 * c, wv);
#pragma unroll
    for (int k = 0; k < 8; k++) xv[k] = wv[k] * (xv[k] * r);
    st8h(yr + 8 * c, xv);
  }
  for (int j = 8 * n8 + threadIdx.x; j < POC_H; j += blockDim.x)
    yr[j] = f2bf(bf2f(w[j]) * (xr[j] * r));
  if (rstd && threadIdx.x == 0) rstd[i] = r;
}

/* dx[rows[i]] += ... for output-row gradient dy[i]; grid: one block per row */
extern "C" __global__ void rmsnorm_bwd(int n, const float *__restrict__ x, const int *__restrict__ rows,
                                       const bf16 *__restrict__ w, const float *__restrict__ rstd,
                                       const float *__restrict__ dy, float *__restrict__ dx) {
  __shared__ float sh[32];
  int i = blockIdx.x;
  if (i >= n) return;
  poc_size ro = (poc_size)(rows ? rows[i] : i) * POC_H;
  const float *xr = x + ro, *dyr = dy + (poc_size)i * POC_H;
  float *dxr = dx + ro;
  const int n8 =
      poc_al16(xr) && poc_al16(dyr) && poc_al16(dxr) && poc_al16(w) ? POC_H / 8 : 0;
  float r = rstd[i], dot = 0.f;
  for (int c = threadIdx.x; c < n8; c += blockDim.x) {
    float xv[8], wv[8], dv[8];
    ld8f(xr + 8 * c, xv);
    ld8h(w + 8 * c, wv);
    ld8f(dyr + 8 * c, dv);
#pragma unroll
    for (int k = 0; k < 8; k++) dot += wv[k] * dv[k] * xv[k];
  }
  for (int j = 8 * n8 + threadIdx.x; j < POC_H; j += blockDim.x) dot += bf2f(w[j]) * dyr[j] * xr[j];
  dot = block_sum(dot, sh);
  float c = dot * r * r / POC_H;
  for (int g = threadIdx.x; g < n8; g += blockDim.x) {
    float xv[8], wv[8], dv[8], ov[8];
    ld8f(xr + 8 * g, xv);
    ld8h(w + 8 * g, wv);
    ld8f(dyr + 8 * g, dv);
    ld8f(dxr + 8 * g, ov);
#pragma unroll
    for (int k = 0; k < 8; k++) ov[k] += r * (wv[k] * dv[k] - xv[k] * c);
    st8f(dxr + 8 * g, ov);
  }
  for (int j = 8 * n8 + threadIdx.x; j < POC_H; j += blockDim.x)
    dxr[j] += r * (bf2f(w[j]) * dyr[j] - xr[j] * c);
}

/* partial[s][j] = Σ_{t in slice s} dy[t][j]·x[rows[t]][j]·rstd[t]; grid (ceil(H/256), S) */
extern "C" __global__ void rmsnorm_dw_partial(int n, const float *__restrict__ x,
                                              const int *__restrict__ rows,
                                              const float *__restrict__ rstd,
                                              const float *__restrict__ dy,
                                              float *__restrict__ partial) {
  int j = blockIdx.x * blockDim.x + threadIdx.x;
  if (j >= POC_H) return;
  float acc = 0.f;
  for (int t = blockIdx.y; t < n; t += gridDim.y)
    acc += dy[(poc_size)t * POC_H + j] * x[(poc_size)(rows ? rows[t] : t) * POC_H + j] * rstd[t];
  partial[(poc_size)blockIdx.y * POC_H + j] = acc;
}

/* partial[s][j] = Σ_{t in slice s} y[t][j] for an n×width matrix; grid (ceil(width/256), S) */
extern "C" __global__ void colsum_partial(int n, int width, const float *__restrict__ y,
                                          float *__restrict__ partial) {
  int j = blockIdx.x * blockDim.x + threadIdx.x;
  if (j >= width) return;
  float acc = 0.f;
  for (int t = blockIdx.y; t < n; t += gridDim.y) acc += y[(poc_size)t * width + j];
  partial[(poc_size)blockIdx.y * width + j] = acc;
}

/* out[j] += Σ_s partial[s][j], slices in order */
extern "C" __global__ void colsum_finish(int width, int slices, const float *__restrict__ partial,
                                         float *__restrict__ out) {
  int j = blockIdx.x * blockDim.x + threadIdx.x;
  if (j >= width) return;
  float acc = 0.f;
  for (int s = 0; s < slices; s++) acc += partial[(poc_size)s * width + j];
  out[j] += acc;
}

extern "C" __global__ void cast_f32_bf16(poc_size n, const float *__restrict__ x, bf16 *__restrict__ y) {
  for (poc_size i = blockIdx.x * (poc_size)blockDim.x + threadIdx.x; i < n;
       i += (poc_size)gridDim.x * blockDim.x)
    y[i] = f2bf(x[i]);
}

extern "C" __global__ void cast_bf16_f32(poc_size n, const bf16 *__restrict__ x, float *__restrict__ y) {
  for (poc_size i = blockIdx.x * (poc_size)blockDim.x + threadIdx.x; i < n;
       i += (poc_size)gridDim.x * blockDim.x)
    y[i] = bf2f(x[i]);
}
