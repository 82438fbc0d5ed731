/* rope.cu — q/k/v bias and rotary position embedding, forward and backward.
 *
 * HF's rotate_half convention: within a head the pair (x_i, x_{i+hd/2}) turns by
 * θ = pos·inv_freq_i:
 *   (x_i, x_{i+hd/2}) ← (x_i cos θ − x_{i+hd/2} sin θ,  x_{i+hd/2} cos θ + x_i sin θ)
 * The backward is the rotation by −θ. cos/sin come from a [position × hd/2] table the host
 * fills in double (llama3 frequency scaling applied there), so no angle is formed in fp32.
 * When hd/2 is a multiple of 8 and a row's pointers are 16-byte aligned, a thread turns 8
 * pairs per 16-byte access (poc_vec.cuh); otherwise one pair at a time.
 */
#include "poc_common.cuh"
#include "poc_vec.cuh"

__device__ __forceinline__ void rope_pair(float &a, float &b, float c, float s) {
  float x1 = a, x2 = b;
  a = x1 * c - x2 * s;
  b = x2 * c + x1 * s;
}

#define POC_QKV (POC_QD + 2 * POC_KVD) /* a row of the fused projection: [q | k | v] */

#define POC_HALF8 (POC_HALF % 8 == 0 ? POC_HALF / 8 : 0) /* 8-pair groups per head */

/* From the fused projection's bf16 row t of qkv [T×QKV] to q [T×QD], k, v [T×KVD], adding
 * the biases (may be null) and rotating q and k. grid: one block per row. */
extern "C" __global__ void qkv_bias_rope(int T, const int *__restrict__ pos,
                                         const float *__restrict__ cosb,
                                         const float *__restrict__ sinb,
                                         const bf16 *__restrict__ qkv, bf16 *__restrict__ q,
                                         bf16 *__restrict__ k, bf16 *__restrict__ v,
                                         const bf16 *__restrict__ bq, const bf16 *__restrict__ bk,
                                         const bf16 *__restrict__ bv) {
  int t = blockIdx.x;
  if (t >= T) return;
  const float *c = cosb + (poc_size)pos[t] * POC_HALF, *s = sinb + (poc_size)pos[t] * POC_HALF;
  const bf16 *src = qkv + (poc_size)t * POC_QKV;
  bf16 *qt = q + (poc_size)t * POC_QD, *kt = k + (poc_size)t * POC_KVD, *vt = v + (poc_size)t * POC_KVD;
  const bf16 *sv = src + POC_QD + POC_KVD;
  const bool vec = POC_HALF8 > 0 && poc_al16(src) && poc_al16(qt) && poc_al16(kt) && poc_al16(vt) &&
                   poc_al16(c) && poc_al16(s) && (!bq || poc_al16(bq)) && (!bk || poc_al16(bk)) &&
                   (!bv || poc_al16(bv));
  if (vec) {
    for (int e = threadIdx.x; e < (POC_NH + POC_NKV) * POC_HALF8; e += blockDim.x) {
      int h = e / POC_HALF8, i = (e % POC_HALF8) * 8;
      const bf16 *x = src + h * POC_HD, *b = h < POC_NH ? (bq ? bq + h * POC_HD : 0)
                                                       : (bk ? bk + (h - POC_NH) * POC_HD : 0);
      bf16 *y = h < POC_NH ? qt + h * POC_HD : kt + (h - POC_NH) * POC_HD;
      float a1[8], a2[8], cv[8], sn[8];
      ld8h(x + i, a1);
      ld8h(x + i + POC_HALF, a2);
      if (b) {
        float b1[8], b2[8];
        ld8h(b + i, b1);
        ld8h(b + i + POC_HALF, b2);
#pragma unroll
        for (int j = 0; j < 8; j++) {
          a1[j] += b1[j];
          a2[j] += b2[j];
        }
      }
      ld8f(c + i, cv);
      ld8f(s + i, sn);
#pragma unroll
      for (int j = 0; j < 8; j++) rope_pair(a1[j], a2[j], cv[j], sn[j]);
      st8h(y + i, a1);
      st8h(y + i + POC_HALF, a2);
    }
    for (int e = threadIdx.x; e < POC_KVD / 8; e += blockDim.x) {
      float x[8];
      ld8h(sv + 8 * e, x);
      if (bv) {
        float b[8];
        ld8h(bv + 8 * e, b);
#pragma unroll
        for (int j = 0; j < 8; j++) x[j] += b[j];
      }
      st8h(vt + 8 * e, x);
    }
    return;
  }
  for (int e = threadIdx.x; e < (POC_NH + POC_NKV) * POC_HALF; e += blockDim.x) {
    int h = e / POC_HALF, i = e % POC_HALF;
    const bf16 *x = src + h * POC_HD, *b; /* k's heads follow q's in the row */
    bf16 *y;
    if (h < POC_NH) {
      y = qt + h * POC_HD;
      b = bq ? bq + h * POC_HD : 0;
    } else {
      y = kt + (h - POC_NH) * POC_HD;
      b = bk ? bk + (h - POC_NH) * POC_HD : 0;
    }
    float a1 = bf2f(x[i]), a2 = bf2f(x[i + POC_HALF]);
    if (b) {
      a1 += bf2f(b[i]);
      a2 += bf2f(b[i + POC_HALF]);
    }
    rope_pair(a1, a2, c[i], s[i]);
    y[i] = f2bf(a1);
    y[i + POC_HALF] = f2bf(a2);
  }
  for (int e = threadIdx.x; e < POC_KVD; e += blockDim.x)
    vt[e] = bv ? f2bf(bf2f(sv[e]) + bf2f(bv[e])) : sv[e];
}

/* Rotates fp32 gradients dq [T×QD], dk [T×KVD] back by −θ in place (the bias gradients
 * are column sums of these), and writes the bf16 row [dq | dk | dv] of dqkv [T×QKV] for
 * the fused projection's weight and input GEMMs. */
extern "C" __global__ void rope_bwd(int T, const int *__restrict__ pos, const float *__restrict__ cosb,
                                    const float *__restrict__ sinb, float *__restrict__ dq,
                                    float *__restrict__ dk, const float *__restrict__ dv,
                                    bf16 *__restrict__ dqkv) {
  int t = blockIdx.x;
  if (t >= T) return;
  const float *c = cosb + (poc_size)pos[t] * POC_HALF, *s = sinb + (poc_size)pos[t] * POC_HALF;
  float *dqt = dq + (poc_size)t * POC_QD, *dkt = dk + (poc_size)t * POC_KVD;
  const float *dvt = dv + (poc_size)t * POC_KVD;
  bf16 *out = dqkv + (poc_size)t * POC_QKV;
  const bool vec = POC_HALF8 > 0 && poc_al16(dqt) && poc_al16(dkt) && poc_al16(dvt) &&
                   poc_al16(out) && poc_al16(c) && poc_al16(s);
  if (vec) {
    for (int e = threadIdx.x; e < (POC_NH + POC_NKV) * POC_HALF8; e += blockDim.x) {
      int h = e / POC_HALF8, i = (e % POC_HALF8) * 8;
      float *x = h < POC_NH ? dqt + h * POC_HD : dkt + (h - POC_NH) * POC_HD;
      bf16 *x16 = out + h * POC_HD;
      float a1[8], a2[8], cv[8], sn[8];
      ld8f(x + i, a1);
      ld8f(x + i + POC_HALF, a2);
      ld8f(c + i, cv);
      ld8f(s + i, sn);
#pragma unroll
      for (int j = 0; j < 8; j++) rope_pair(a1[j], a2[j], cv[j], -sn[j]);
      st8f(x + i, a1);
      st8f(x + i + POC_HALF, a2);
      st8h(x16 + i, a1);
      st8h(x16 + i + POC_HALF, a2);
    }
    for (int e = threadIdx.x; e < POC_KVD / 8; e += blockDim.x) {
      float x[8];
      ld8f(dvt + 8 * e, x);
      st8h(out + POC_QD + POC_KVD + 8 * e, x);
    }
    return;
  }
  for (int e = threadIdx.x; e < (POC_NH + POC_NKV) * POC_HALF; e += blockDim.x) {
    int h = e / POC_HALF, i = e % POC_HALF;
    float *x = h < POC_NH ? dqt + h * POC_HD : dkt + (h - POC_NH) * POC_HD;
    bf16 *x16 = out + h * POC_HD;
    float a1 = x[i], a2 = x[i + POC_HALF];
    rope_pair(a1, a2, c[i], -s[i]);
    x[i] = a1;
    x[i + POC_HALF] = a2;
    x16[i] = f2bf(a1);
    x16[i + POC_HALF] = f2bf(a2);
  }
  for (int e = threadIdx.x; e < POC_KVD; e += blockDim.x)
    out[POC_QD + POC_KVD + e] = f2bf(dvt[e]);
}
