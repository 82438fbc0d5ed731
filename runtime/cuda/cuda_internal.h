/* cuda_internal.h — what the CUDA backend's files share: the driver entry points (loaded
 * with dlopen, never linked, so a machine without a driver still runs poc), the backend
 * and the compiled kernel set.
 */
#ifndef POC_CUDA_INTERNAL_H
#define POC_CUDA_INTERNAL_H

#include <cuda.h>
#include <cublas_v2.h>

#include "backend.h"
#include "pocrt_cuda.h"

/* Driver entry points by their cuda.h names; the header maps several to versioned
 * symbols (cuMemAlloc → cuMemAlloc_v2), and the table follows it because the member
 * names go through the same macros. */
#define CU_FUNCS(X)                                                                        \
  X(cuInit) X(cuDriverGetVersion) X(cuDeviceGetCount) X(cuDeviceGet) X(cuDeviceGetName)    \
  X(cuDeviceGetAttribute) X(cuDeviceTotalMem) X(cuDevicePrimaryCtxRetain)                  \
  X(cuDevicePrimaryCtxRelease) X(cuCtxSetCurrent) X(cuCtxGetDevice) X(cuCtxSynchronize)   \
  X(cuMemAlloc) X(cuMemFree) X(cuMemcpyHtoD) X(cuMemcpyDtoH) X(cuMemcpyDtoD) X(cuMemsetD8) \
  X(cuMemGetInfo) X(cuModuleLoadDataEx) X(cuModuleUnload) X(cuModuleGetFunction)          \
  X(cuLaunchKernel) X(cuGetErrorString) X(cuGetErrorName)

typedef struct cu_driver {
  void *lib;
#define CU_MEMBER(f) __typeof__(&f) f;
  CU_FUNCS(CU_MEMBER)
#undef CU_MEMBER
} cu_driver;

extern cu_driver cu;

/* Opens libcuda.so.1 once; -1 with the loader's message when it is missing. */
int cu_driver_load(char *err);
/* "CUDA_ERROR_OUT_OF_MEMORY (out of memory)" */
const char *cu_errstr(CUresult r);

/* Kernels of kernels/templates, one module per set of model dimensions. */
#define CU_KERNELS(X)                                                                      \
  X(embed_fwd) X(embed_bwd) X(rmsnorm_fwd) X(rmsnorm_bwd) X(rmsnorm_dw_partial)            \
  X(colsum_partial) X(colsum_finish) X(cast_f32_bf16) X(cast_bf16_f32) X(qkv_bias_rope)    \
  X(rope_bwd) X(swiglu_fwd) X(swiglu_bwd) X(attn_fwd) X(attn_bwd_dq) X(attn_bwd_dkv)       \
  X(head_chunk_fwd) X(head_finish) X(head_chunk_bwd) X(head_text_lse)                      \
  X(head_text_logsoftmax) X(head_text_gather) X(head_text_bwd) X(adamw) X(sumsq_partial)

typedef struct cu_kernels {
  poc_cuda_dims dims;
  CUmodule mod;
#define CU_KMEMBER(k) CUfunction k;
  CU_KERNELS(CU_KMEMBER)
#undef CU_KMEMBER
  struct cu_kernels *next;
} cu_kernels;

typedef struct cu_backend {
  poc_backend base;
  CUdevice dev;
  CUcontext ctx;
  int cc;                        /* compute capability, major·10 + minor */
  int n_sm;
  cublasHandle_t blas;
  cu_kernels *kernels;           /* compiled sets, by dimensions */
} cu_backend;

/* The kernel set for a model's dimensions, compiled by NVRTC on first use. */
cu_kernels *cu_kernels_get(cu_backend *b, const poc_cuda_dims *d, char *err);

/* model_cuda.c: the backend.h entry points of a CUDA model. */
void cu_model_install(poc_backend *b);

#endif
