/* swiglu.cu — the MLP's gate.
 *   a = silu(g)·u,  silu(g) = g·σ(g)
 *   silu'(g) = σ(g)·(1 + g·(1 − σ(g))):  dg = da·u·silu'(g),  du = da·silu(g)
 */
#include "poc_common.cuh"

__device__ __forceinline__ float sigmoidf_(float x) { return 1.f / (1.f + __expf(-x)); }

extern "C" __global__ void swiglu_fwd(poc_size n, const bf16 *__restrict__ g, const bf16 *__restrict__ u,
                                      bf16 *__restrict__ a) {
  for (poc_size i = blockIdx.x * (poc_size)blockDim.x + threadIdx.x; i < n;
       i += (poc_size)gridDim.x * blockDim.x) {
    float gv = bf2f(g[i]);
    a[i] = f2bf(gv * sigmoidf_(gv) * bf2f(u[i]));
  }
}

extern "C" __global__ void swiglu_bwd(poc_size n, const bf16 *__restrict__ g, const bf16 *__restrict__ u,
                                      const bf16 *__restrict__ da, bf16 *__restrict__ dg,
                                      bf16 *__restrict__ du) {
  for (poc_size i = blockIdx.x * (poc_size)blockDim.x + threadIdx.x; i < n;
       i += (poc_size)gridDim.x * blockDim.x) {
    float gv = bf2f(g[i]), uv = bf2f(u[i]), d = bf2f(da[i]), sg = sigmoidf_(gv);
    dg[i] = f2bf(d * uv * sg * (1.f + gv * (1.f - sg)));
    du[i] = f2bf(d * gv * sg);
  }
}
