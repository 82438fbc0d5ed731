/* lora.cu — the LoRA path's elementwise kernel (runtime/model.c):
 *   y_i = beta·y_i + mul·keep_i·x_i
 * keep_i is device.h's poc_drop_keep: the top 32 bits of splitmix64's finaliser of
 * seed + (i + 1)·φ compared with thr, so the CPU and the GPU draw the same dropout mask.
 * thr = 0 keeps everything (a plain scaling). beta = 0 does not read y.
 */
#include "poc_common.cuh"

__device__ __forceinline__ bool drop_keep(unsigned long long seed, poc_size i, unsigned thr) {
  if (thr == 0u) return true;
  unsigned long long z = seed + (i + 1ull) * 0x9E3779B97F4A7C15ull;
  z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
  z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
  return (unsigned)((z ^ (z >> 31)) >> 32) >= thr;
}

extern "C" __global__ void drop_scale_act(poc_size n, const bf16 *x, bf16 *y, float beta,
                                          float mul, unsigned thr, unsigned long long seed) {
  for (poc_size i = blockIdx.x * (poc_size)blockDim.x + threadIdx.x; i < n;
       i += (poc_size)gridDim.x * blockDim.x) {
    float v = drop_keep(seed, i, thr) ? mul * bf2f(x[i]) : 0.f;
    y[i] = f2bf(beta != 0.f ? beta * bf2f(y[i]) + v : v);
  }
}

extern "C" __global__ void drop_scale_acc(poc_size n, const bf16 *x, float *y, float beta,
                                          float mul, unsigned thr, unsigned long long seed) {
  for (poc_size i = blockIdx.x * (poc_size)blockDim.x + threadIdx.x; i < n;
       i += (poc_size)gridDim.x * blockDim.x) {
    float v = drop_keep(seed, i, thr) ? mul * bf2f(x[i]) : 0.f;
    y[i] = beta != 0.f ? beta * y[i] + v : v;
  }
}
