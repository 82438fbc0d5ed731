/* rope.cu — q/k/v bias and rotary position embedding, forward and backward.
 *
 * HF's rotate_half convention: within a head the pair (x_i, x_{i+hd/2}) turns by
 * θ = pos·inv_freq_i:
 *   (x_i, x_{i+hd/2}) ← (x_i cos θ − x_{i+hd/2} sin θ,  x_{i+hd/2} cos θ + x_i sin θ)
 * The backward is the rotation by −θ. cos/sin come from a [position × hd/2] table the host
 * fills in double (llama3 frequency scaling applied there), so no angle is formed in fp32.
 */
#include "poc_common.cuh"

__device__ __forceinline__ void rope_pair(float &a, float &b, float c, float s) {
  float x1 = a, x2 = b;
  a = x1 * c - x2 * s;
  b = x2 * c + x1 * s;
}

/* In place on bf16 q [T×QD], k, v [T×KVD]; biases may be null. grid: one block per row. */
extern "C" __global__ void qkv_bias_rope(int T, const int *__restrict__ pos,
                                         const float *__restrict__ cosb,
                                         const float *__restrict__ sinb, bf16 *__restrict__ q,
                                         bf16 *__restrict__ k, bf16 *__restrict__ v,
                                         const bf16 *__restrict__ bq, const bf16 *__restrict__ bk,
                                         const bf16 *__restrict__ bv) {
  int t = blockIdx.x;
  if (t >= T) return;
  const float *c = cosb + (poc_size)pos[t] * POC_HALF, *s = sinb + (poc_size)pos[t] * POC_HALF;
  for (int e = threadIdx.x; e < (POC_NH + POC_NKV) * POC_HALF; e += blockDim.x) {
    int h = e / POC_HALF, i = e % POC_HALF;
    bf16 *x;
    const bf16 *b;
    if (h < POC_NH) {
      x = q + (poc_size)t * POC_QD + h * POC_HD;
      b = bq ? bq + h * POC_HD : 0;
    } else {
      x = k + (poc_size)t * POC_KVD + (h - POC_NH) * POC_HD;
      b = bk ? bk + (h - POC_NH) * POC_HD : 0;
    }
    float a1 = bf2f(x[i]), a2 = bf2f(x[i + POC_HALF]);
    if (b) {
      a1 += bf2f(b[i]);
      a2 += bf2f(b[i + POC_HALF]);
    }
    rope_pair(a1, a2, c[i], s[i]);
    x[i] = f2bf(a1);
    x[i + POC_HALF] = f2bf(a2);
  }
  if (bv)
    for (int e = threadIdx.x; e < POC_KVD; e += blockDim.x) {
      bf16 *x = v + (poc_size)t * POC_KVD + e;
      *x = f2bf(bf2f(*x) + bf2f(bv[e]));
    }
}

/* Rotates fp32 gradients dq [T×QD], dk [T×KVD] back by −θ in place (the bias gradients
 * are column sums of these), and writes bf16 copies of dq, dk, dv for the weight GEMMs. */
extern "C" __global__ void rope_bwd(int T, const int *__restrict__ pos, const float *__restrict__ cosb,
                                    const float *__restrict__ sinb, float *__restrict__ dq,
                                    float *__restrict__ dk, const float *__restrict__ dv,
                                    bf16 *__restrict__ dq16, bf16 *__restrict__ dk16,
                                    bf16 *__restrict__ dv16) {
  int t = blockIdx.x;
  if (t >= T) return;
  const float *c = cosb + (poc_size)pos[t] * POC_HALF, *s = sinb + (poc_size)pos[t] * POC_HALF;
  for (int e = threadIdx.x; e < (POC_NH + POC_NKV) * POC_HALF; e += blockDim.x) {
    int h = e / POC_HALF, i = e % POC_HALF;
    poc_size o = h < POC_NH ? (poc_size)t * POC_QD + h * POC_HD
                            : (poc_size)t * POC_KVD + (h - POC_NH) * POC_HD;
    float *x = h < POC_NH ? dq + o : dk + o;
    bf16 *x16 = h < POC_NH ? dq16 + o : dk16 + o;
    float a1 = x[i], a2 = x[i + POC_HALF];
    rope_pair(a1, a2, c[i], -s[i]);
    x[i] = a1;
    x[i + POC_HALF] = a2;
    x16[i] = f2bf(a1);
    x16[i + POC_HALF] = f2bf(a2);
  }
  for (int e = threadIdx.x; e < POC_KVD; e += blockDim.x)
    dv16[(poc_size)t * POC_KVD + e] = f2bf(dv[(poc_size)t * POC_KVD + e]);
}
