/* poc_common.cuh — device helpers every poc kernel template includes.
 *
 * Templates are compiled by NVRTC with no CUDA headers on the include path (a machine may
 * have the driver and libnvrtc but no toolkit), so bf16 is handled as raw 16-bit words:
 * a bf16 is the top half of a float32, and rounding to it is round-to-nearest-even on the
 * 16 dropped bits.
 *
 * The model's dimensions arrive as a `#define` prelude written by poc_cuda_instantiate
 * (POC_H, POC_F, POC_V, POC_NH, POC_NKV, POC_HD, POC_EPS, ...), so loop bounds and
 * register arrays are compile-time constants.
 */
#ifndef POC_COMMON_CUH
#define POC_COMMON_CUH

typedef unsigned short bf16;
typedef unsigned long long poc_size;

#define POC_FULL_MASK 0xffffffffu
#define POC_NEG_INF __int_as_float(0xff800000)

#ifndef POC_HD
#error "instantiate templates through poc_cuda_instantiate (the dimension prelude is missing)"
#endif

#define POC_QD (POC_NH * POC_HD)   /* query width */
#define POC_KVD (POC_NKV * POC_HD) /* key/value width */
#define POC_GROUP (POC_NH / POC_NKV)
#define POC_HALF (POC_HD / 2)

__device__ __forceinline__ float bf2f(bf16 x) { return __uint_as_float(((unsigned)x) << 16); }

__device__ __forceinline__ bf16 f2bf(float f) {
  unsigned u = __float_as_uint(f);
  if ((u & 0x7fffffffu) > 0x7f800000u) return (bf16)((u >> 16) | 0x40u); /* keep NaN a NaN */
  u += 0x7fffu + ((u >> 16) & 1u);
  return (bf16)(u >> 16);
}

__device__ __forceinline__ float warp_sum(float v) {
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(POC_FULL_MASK, v, o);
  return v;
}

__device__ __forceinline__ float warp_max(float v) {
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) v = fmaxf(v, __shfl_xor_sync(POC_FULL_MASK, v, o));
  return v;
}

/* Sum over the block (blockDim.x a multiple of 32, at most 1024); every thread gets the
 * total. `sh` holds 32 floats; the leading barrier lets callers reuse it back to back. */
__device__ __forceinline__ float block_sum(float v, float *sh) {
  int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, nw = blockDim.x >> 5;
  v = warp_sum(v);
  __syncthreads();
  if (lane == 0) sh[warp] = v;
  __syncthreads();
  v = lane < nw ? sh[lane] : 0.f;
  return warp_sum(v);
}

__device__ __forceinline__ float block_max(float v, float *sh) {
  int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, nw = blockDim.x >> 5;
  v = warp_max(v);
  __syncthreads();
  if (lane == 0) sh[warp] = v;
  __syncthreads();
  v = lane < nw ? sh[lane] : POC_NEG_INF;
  return warp_max(v);
}

/* Online softmax state merge: (m, s) and (m2, s2) with s = Σ e^{x − m} become the pair
 * for the union, rescaling the side whose maximum is lower. */
__device__ __forceinline__ void softmax_merge(float &m, float &s, float m2, float s2) {
  float mn = fmaxf(m, m2);
  if (mn == POC_NEG_INF) return;
  s = s * __expf(m - mn) + s2 * __expf(m2 - mn);
  m = mn;
}

#endif
