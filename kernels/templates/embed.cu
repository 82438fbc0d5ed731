/* embed.cu — token embedding lookup and its gradient.
 *   forward:  x[t] = E[tok[t]]              (bf16 table, fp32 residual stream)
 *   backward: dE[tok[t]] += dx[t]           rows sharing a token add up
 * The backward gives each thread one column and walks the rows in order, so the adds into
 * a row of dE happen in one fixed order (the CPU device's order too) and no atomics are
 * needed: the same bits on every run. It has only H threads, which is fine for a kernel
 * that moves T×H floats once; sorting rows by token would buy more parallelism.
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

/* grid: ceil(H / blockDim) blocks; thread j owns column j of every row of dE */
extern "C" __global__ void embed_bwd(int T, const int *__restrict__ tok,
                                     const float *__restrict__ dx, float *__restrict__ dE) {
  int j = blockIdx.x * blockDim.x + threadIdx.x;
  if (j >= POC_H) return;
  for (int t = 0; t < T; t++) dE[(poc_size)tok[t] * POC_H + j] += dx[(poc_size)t * POC_H + j];
}
