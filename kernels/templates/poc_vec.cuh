/* poc_vec.cuh — 128-bit loads and stores for the elementwise kernels (norm, swiglu, rope,
 * adamw).
 *
 * A 16-byte access moves 4 fp32 or 8 bf16 values in one instruction (LDG.128/STG.128)
 * where a scalar loop issues 4 or 8; the memory-bound kernels then need fewer
 * instructions per byte. The access must be 16-byte aligned: each kernel tests its
 * pointers (poc_al16) once per block or launch, runs the vector loop over the aligned
 * part and finishes with a scalar tail (or runs scalar throughout when a pointer is not
 * aligned: a weight at an odd offset of the flat parameter array, a row width that is
 * not a multiple of 8). Both paths do the same arithmetic per element, so only sums whose
 * terms a thread groups differently (the norms' Σx²) change, and in a fixed order.
 * bf16 words are little-endian pairs in a 32-bit word: element 2k is the low half.
 */
#ifndef POC_VEC_CUH
#define POC_VEC_CUH

#include "poc_common.cuh"

struct alignas(16) poc_v16 { unsigned u[4]; };
struct alignas(8) poc_v8 { unsigned u[2]; };

__device__ __forceinline__ bool poc_al16(const void *p) {
  return ((unsigned long long)p & 15ull) == 0;
}
__device__ __forceinline__ bool poc_al8(const void *p) {
  return ((unsigned long long)p & 7ull) == 0;
}

/* 4 fp32 ↔ v[0..3] at a 16-byte-aligned p */
__device__ __forceinline__ void ld4f(const float *p, float *v) {
  poc_v16 r = *reinterpret_cast<const poc_v16 *>(p);
#pragma unroll
  for (int k = 0; k < 4; k++) v[k] = __uint_as_float(r.u[k]);
}
__device__ __forceinline__ void st4f(float *p, const float *v) {
  poc_v16 r;
#pragma unroll
  for (int k = 0; k < 4; k++) r.u[k] = __float_as_uint(v[k]);
  *reinterpret_cast<poc_v16 *>(p) = r;
}
/* 8 fp32 as two 16-byte accesses */
__device__ __forceinline__ void ld8f(const float *p, float *v) {
  ld4f(p, v);
  ld4f(p + 4, v + 4);
}
__device__ __forceinline__ void st8f(float *p, const float *v) {
  st4f(p, v);
  st4f(p + 4, v + 4);
}
/* 8 bf16 ↔ 8 floats at a 16-byte-aligned p */
__device__ __forceinline__ void ld8h(const bf16 *p, float *v) {
  poc_v16 r = *reinterpret_cast<const poc_v16 *>(p);
#pragma unroll
  for (int k = 0; k < 4; k++) {
    v[2 * k] = __uint_as_float(r.u[k] << 16);
    v[2 * k + 1] = __uint_as_float(r.u[k] & 0xffff0000u);
  }
}
__device__ __forceinline__ void st8h(bf16 *p, const float *v) {
  poc_v16 r;
#pragma unroll
  for (int k = 0; k < 4; k++)
    r.u[k] = (unsigned)f2bf(v[2 * k]) | ((unsigned)f2bf(v[2 * k + 1]) << 16);
  *reinterpret_cast<poc_v16 *>(p) = r;
}
/* 4 bf16 from 4 floats at an 8-byte-aligned p (AdamW's compute copy next to 4 fp32) */
__device__ __forceinline__ void st4h(bf16 *p, const float *v) {
  poc_v8 r;
#pragma unroll
  for (int k = 0; k < 2; k++)
    r.u[k] = (unsigned)f2bf(v[2 * k]) | ((unsigned)f2bf(v[2 * k + 1]) << 16);
  *reinterpret_cast<poc_v8 *>(p) = r;
}

#endif
