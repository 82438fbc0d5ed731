/* swiglu.cu — the MLP's gate.
 *   a = silu(g)·u,  silu(g) = g·σ(g)
 *   silu'(g) = σ(g)·(1 + g·(1 − σ(g))):  dg = da·u·silu'(g),  du = da·silu(g)
 * g and u arrive side by side, one row of the fused gate/up GEMM's output. With F a
 * multiple of 8 and aligned buffers a thread takes 8 consecutive columns per 16-byte
 * access (poc_vec.cuh); otherwise one element at a time.
 */
#include "poc_common.cuh"
#include "poc_vec.cuh"

__device__ __forceinline__ float sigmoidf_(float x) { return 1.f / (1.f + __expf(-x)); }

__device__ __forceinline__ float swiglu_a(float g, float u) { return g * sigmoidf_(g) * u; }

/* dg, du from g, u, da (both computed before either is stored: dgu may be gu) */
__device__ __forceinline__ void swiglu_d(float g, float u, float d, float &dg, float &du) {
  float sg = sigmoidf_(g);
  dg = d * u * sg * (1.f + g * (1.f - sg));
  du = d * g * sg;
}

/* Row t of gu [T × 2F] is [g_t | u_t] (the fused gate/up projection); a, da [T × F]. */
extern "C" __global__ void swiglu_fwd(int T, const bf16 *__restrict__ gu, bf16 *__restrict__ a) {
  const poc_size stride = (poc_size)gridDim.x * blockDim.x,
                 first = blockIdx.x * (poc_size)blockDim.x + threadIdx.x;
  if (POC_F % 8 == 0 && poc_al16(gu) && poc_al16(a)) {
    /* group i8 covers columns [8·(i8 mod F/8), +8) of row i8 / (F/8): never two rows */
    poc_size n8 = (poc_size)T * (POC_F / 8);
    for (poc_size i8 = first; i8 < n8; i8 += stride) {
      poc_size t = i8 / (POC_F / 8), j = (i8 % (POC_F / 8)) * 8;
      float g[8], u[8];
      ld8h(gu + t * (2 * POC_F) + j, g);
      ld8h(gu + t * (2 * POC_F) + POC_F + j, u);
#pragma unroll
      for (int k = 0; k < 8; k++) g[k] = swiglu_a(g[k], u[k]);
      st8h(a + 8 * i8, g);
    }
    return;
  }
  poc_size n = (poc_size)T * POC_F;
  for (poc_size i = first; i < n; i += stride) {
    poc_size t = i / POC_F, j = i % POC_F;
    const bf16 *g = gu + t * (2 * POC_F);
    a[i] = f2bf(swiglu_a(bf2f(g[j]), bf2f(g[POC_F + j])));
  }
}

/* dgu [T × 2F] in gu's layout; each element pair is read and written by one thread, so dgu
 * may be gu */
extern "C" __global__ void swiglu_bwd(int T, const bf16 *gu, const bf16 *__restrict__ da,
                                      bf16 *dgu) {
  const poc_size stride = (poc_size)gridDim.x * blockDim.x,
                 first = blockIdx.x * (poc_size)blockDim.x + threadIdx.x;
  if (POC_F % 8 == 0 && poc_al16(gu) && poc_al16(da) && poc_al16(dgu)) {
    poc_size n8 = (poc_size)T * (POC_F / 8);
    for (poc_size i8 = first; i8 < n8; i8 += stride) {
      poc_size t = i8 / (POC_F / 8), o = t * (2 * POC_F) + (i8 % (POC_F / 8)) * 8;
      float g[8], u[8], d[8];
      ld8h(gu + o, g);
      ld8h(gu + o + POC_F, u);
      ld8h(da + 8 * i8, d);
#pragma unroll
      for (int k = 0; k < 8; k++) swiglu_d(g[k], u[k], d[k], g[k], u[k]);
      st8h(dgu + o, g);
      st8h(dgu + o + POC_F, u);
    }
    return;
  }
  poc_size n = (poc_size)T * POC_F;
  for (poc_size i = first; i < n; i += stride) {
    poc_size t = i / POC_F, j = i % POC_F, o = t * (2 * POC_F) + j;
    float dg, du;
    swiglu_d(bf2f(gu[o]), bf2f(gu[o + POC_F]), bf2f(da[i]), dg, du);
    dgu[o] = f2bf(dg);
    dgu[o + POC_F] = f2bf(du);
  }
}
