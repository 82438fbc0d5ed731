/* cuda_internal.h — what the CUDA backend's files share: the driver, NVRTC and cuBLAS
 * entry points (all three opened with dlopen, never linked, so a machine without a GPU
 * driver still runs poc and a CPU-only run maps none of them), the backend and the
 * compiled kernel set.
 */
#ifndef POC_CUDA_INTERNAL_H
#define POC_CUDA_INTERNAL_H

#include <cuda.h>
#include <cublas_v2.h>
#include <nvrtc.h>

#include "device.h"
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

/* NVRTC's entry points (libnvrtc.so.<major>); it needs no driver, so `poc build --arch`
 * runs on machines without a GPU. */
#define NV_FUNCS(X)                                                                        \
  X(nvrtcVersion) X(nvrtcGetErrorString) X(nvrtcCreateProgram) X(nvrtcCompileProgram)      \
  X(nvrtcDestroyProgram) X(nvrtcGetProgramLogSize) X(nvrtcGetProgramLog) X(nvrtcGetPTXSize) \
  X(nvrtcGetPTX) X(nvrtcGetCUBINSize) X(nvrtcGetCUBIN)

typedef struct cu_nvrtc {
  void *lib;
#define CU_MEMBER(f) __typeof__(&f) f;
  NV_FUNCS(CU_MEMBER)
#undef CU_MEMBER
} cu_nvrtc;

/* cuBLAS's entry points (libcublas.so.<major>, which brings cuBLASLt); cublas_v2.h maps
 * cublasCreate → cublasCreate_v2 and the table follows, as for the driver. */
#define CB_FUNCS(X)                                                                        \
  X(cublasCreate) X(cublasDestroy) X(cublasSetStream) X(cublasGemmEx) X(cublasGetStatusString)

typedef struct cu_cublas {
  void *lib;
#define CU_MEMBER(f) __typeof__(&f) f;
  CB_FUNCS(CU_MEMBER)
#undef CU_MEMBER
} cu_cublas;

extern cu_nvrtc nv;
extern cu_cublas cb;

/* Each opens its library once (later calls return 0 at once); -1 with a one-line message
 * ("cuda: cannot load ...") when it is missing or lacks an entry point.
 * POC_CUDA_EMULATE=/path/libpoc_cuemu.so (tests only) loads all three tables from that
 * one library instead: the CPU emulation in tests/cuda_emul. */
int cu_driver_load(char *err);
int cu_nvrtc_load(char *err);
int cu_cublas_load(char *err);
/* "CUDA_ERROR_OUT_OF_MEMORY (out of memory)" */
const char *cu_errstr(CUresult r);

/* Kernels of kernels/templates, one module per set of model dimensions. */
#define CU_KERNELS(X)                                                                      \
  X(embed_fwd) X(embed_bwd) X(rmsnorm_fwd) X(rmsnorm_bwd) X(rmsnorm_dw_partial)            \
  X(colsum_partial) X(colsum_finish) X(cast_f32_bf16) X(cast_bf16_f32) X(qkv_bias_rope)    \
  X(rope_bwd) X(swiglu_fwd) X(swiglu_bwd) X(attn_fwd) X(attn_bwd_dq) X(attn_bwd_dkv)       \
  X(head_chunk_fwd) X(head_finish) X(head_chunk_bwd) X(head_text_lse)                      \
  X(head_text_logsoftmax) X(head_text_gather) X(head_text_bwd) X(adamw) X(sumsq_partial)  \
  X(drop_scale_act) X(drop_scale_acc)

typedef struct cu_kernels {
  poc_dims dims;
  CUmodule mod;
#define CU_KMEMBER(k) CUfunction k;
  CU_KERNELS(CU_KMEMBER)
#undef CU_KMEMBER
  struct cu_kernels *next;
} cu_kernels;

/* One device's primary context with its cuBLAS handle and compiled kernel sets: what the
 * device (device.h, device_cuda.c) owns. */
typedef struct cu_ctx {
  CUdevice dev;
  CUcontext ctx;
  int cc;                        /* compute capability, major·10 + minor */
  int n_sm;
  int driver;                    /* cuDriverGetVersion: 1000·major + 10·minor */
  size_t mem;                    /* total device memory, bytes */
  char name[100];
  cublasHandle_t blas;
  cu_kernels *kernels;           /* compiled sets, by dimensions */
} cu_ctx;

/* Loads the driver and opens device POC_CUDA_DEVICE (default 0): -1 with a one-line
 * message for no driver, a driver older than the toolkit, no device, or a device
 * without bf16 (below sm_80). cu_ctx_close undoes it (also after a failed open). */
int cu_ctx_open(cu_ctx *c, char *err);
void cu_ctx_close(cu_ctx *c);

/* The kernel set for a model's dimensions, on first use: from the kernels the binary has
 * built in (poc_cuda_use_images) when one fits the device, else from the kernel cache,
 * else compiled by NVRTC (and cached). */
cu_kernels *cu_kernels_get(cu_ctx *c, const poc_dims *d, char *err);

/* kcache.c: the on-disk cache of NVRTC's cubins, keyed by the source's hash, the
 * architecture and NVRTC's version. load: 0 with a malloc'd *data, 1 no entry (or no
 * cache), 2 a damaged entry (one note printed; the caller recompiles and stores over it).
 * store: best effort; an unusable cache directory prints one note per process. */
int cu_cache_load(uint64_t source, const char *arch, unsigned char **data, size_t *n);
void cu_cache_store(uint64_t source, const char *arch, const unsigned char *data, size_t n);

#endif
