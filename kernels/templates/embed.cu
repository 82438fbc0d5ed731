/* embed.cu — token embedding lookup and its gradient.
 *   forward:  x[t] = E[tok[t]]              (bf16 table, fp32 residual stream)
 *   backward: dE[tok[t]] += dx[t]           (fp32 atomics: rows sharing a token add up;
 *                                            the order of those adds is not fixed)
 */
#include "poc_common.cuh"

/* grid: one block per row */
extern "C" __global__ void embed_fwd(int T, const int *__restrict__ tok,
                                     const bf16 *__restrict__ E, float *__restrict__ x) {
  int t = blockIdx.x;
  if (t >= T) return;
  const bf16 *e = E + (poc_size)tok[t] * POC_H;
  for (int j = threadIdx.x; j < POC_H; j += blockDim.x) x[(poc_size)t * POC_H + j] = bf2f(e[j]);
}

extern "C" __global__ void embed_bwd(int T, const int *__restrict__ tok,
                                     const float *__restrict__ dx, float *__restrict__ dE) {
  int t = blockIdx.x;
  if (t >= T) return;
  float *d = dE + (poc_size)tok[t] * POC_H;
  for (int j = threadIdx.x; j < POC_H; j += blockDim.x) atomicAdd(d + j, dx[(poc_size)t * POC_H + j]);
}
