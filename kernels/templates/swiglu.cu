/* swiglu.cu — the MLP's gate.
 *   a = silu(g)·u,  silu(g) = g·σ(g)
 *   silu'(g) = σ(g)·(1 + g·(1 − σ(g))):  dg = da·u·silu'(g),  du = da·silu(g)
 * g and u arrive side by side, one row of the fused gate/up GEMM's output.
 */
#include "poc_common.cuh"

__device__ __forceinline__ float sigmoidf_(float x) { return 1.f / (1.f + __expf(-x)); }

/* Row t of gu [T × 2F] is [g_t | u_t] (the fused gate/up projection); a, da [T × F]. */
extern "C" __global__ void swiglu_fwd(int T, const bf16 *__restrict__ gu, bf16 *__restrict__ a) {
  poc_size n = (poc_size)T * POC_F;
  for (poc_size i = blockIdx.x * (poc_size)blockDim.x + threadIdx.x; i < n;
       i += (poc_size)gridDim.x * blockDim.x) {
    poc_size t = i / POC_F, j = i % POC_F;
    const bf16 *g = gu + t * (2 * POC_F);
    float gv = bf2f(g[j]);
    a[i] = f2bf(gv * sigmoidf_(gv) * bf2f(g[POC_F + j]));
  }
}

/* dgu [T × 2F] in gu's layout; each element pair is read and written by one thread, so dgu
 * may be gu */
extern "C" __global__ void swiglu_bwd(int T, const bf16 *gu, const bf16 *__restrict__ da,
                                      bf16 *dgu) {
  poc_size n = (poc_size)T * POC_F;
  for (poc_size i = blockIdx.x * (poc_size)blockDim.x + threadIdx.x; i < n;
       i += (poc_size)gridDim.x * blockDim.x) {
    poc_size t = i / POC_F, j = i % POC_F, o = t * (2 * POC_F) + j;
    float gv = bf2f(gu[o]), uv = bf2f(gu[o + POC_F]), d = bf2f(da[i]), sg = sigmoidf_(gv);
    dgu[o] = f2bf(d * uv * sg * (1.f + gv * (1.f - sg)));
    dgu[o + POC_F] = f2bf(d * gv * sg);
  }
}
