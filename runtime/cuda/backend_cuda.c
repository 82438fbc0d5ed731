/* backend_cuda.c — opening the CUDA backend: the driver, the device, cuBLAS, and the
 * kernel modules compiled from the templates.
 *
 * Every failure becomes a message: a missing libcuda.so.1, a driver that finds no
 * device (cuInit's own error string), a device this NVRTC cannot target. Nothing here may
 * crash on a machine without a GPU.
 */
#include <dlfcn.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cuda_internal.h"

cu_driver cu;

#define CU_STR2(x) #x
#define CU_STR(x) CU_STR2(x)

int cu_driver_load(char *err) {
  if (cu.lib) return 0;
  void *lib = dlopen("libcuda.so.1", RTLD_NOW | RTLD_LOCAL);
  if (!lib) {
    const char *why = dlerror();
    snprintf(err, POC_ERR_LEN, "cuda: cannot load the CUDA driver (%s); is an NVIDIA driver "
             "installed?", why ? why : "libcuda.so.1 not found");
    return -1;
  }
  cu_driver d = {.lib = lib};
#define CU_LOAD(f)                                                                  \
  if (!(*(void **)&d.f = dlsym(lib, CU_STR(f)))) {                                  \
    snprintf(err, POC_ERR_LEN, "cuda: the CUDA driver lacks %s (driver too old?)",  \
             CU_STR(f));                                                            \
    dlclose(lib);                                                                   \
    return -1;                                                                      \
  }
  CU_FUNCS(CU_LOAD)
#undef CU_LOAD
  cu = d;
  return 0;
}

const char *cu_errstr(CUresult r) {
  static char buf[192];
  const char *name = NULL, *text = NULL;
  if (cu.cuGetErrorName) cu.cuGetErrorName(r, &name);
  if (cu.cuGetErrorString) cu.cuGetErrorString(r, &text);
  snprintf(buf, sizeof buf, "%s (%s)", name ? name : "CUDA error", text ? text : "no description");
  return buf;
}

/* ---- modules ------------------------------------------------------------------------ */

int poc_cuda_load(const poc_cuda_image *img, void **module, char *err) {
  CUdevice dev;
  int ma = 0, mi = 0;
  CUresult r = cu.lib ? cu.cuCtxGetDevice(&dev) : CUDA_ERROR_NOT_INITIALIZED;
  if (r == CUDA_SUCCESS) r = cu.cuDeviceGetAttribute(&ma, CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MAJOR, dev);
  if (r == CUDA_SUCCESS) r = cu.cuDeviceGetAttribute(&mi, CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MINOR, dev);
  if (r != CUDA_SUCCESS) {
    snprintf(err, POC_ERR_LEN, "cuda: no current device to load kernels on: %s",
             cu.lib ? cu_errstr(r) : "the driver is not loaded");
    return -1;
  }
  int cc = ma * 10 + mi;
  char want[16];
  snprintf(want, sizeof want, "sm_%d", cc);
  const poc_cuda_blob *pick = NULL;
  for (int i = 0; i < img->n && !pick; i++)
    if (!img->blob[i].is_ptx && !strcmp(img->blob[i].arch, want)) pick = &img->blob[i];
  for (int i = 0; i < img->n && !pick; i++)
    if (img->blob[i].is_ptx && atoi(img->blob[i].arch + 8) <= cc) pick = &img->blob[i];
  if (!pick) {
    snprintf(err, POC_ERR_LEN, "cuda: the embedded kernels have no cubin for %s and no PTX "
             "it can run; rebuild with --arch %s", want, want);
    return -1;
  }
  char log[4096] = "";
  CUjit_option opt[] = {CU_JIT_ERROR_LOG_BUFFER, CU_JIT_ERROR_LOG_BUFFER_SIZE_BYTES};
  void *val[] = {log, (void *)(size_t)sizeof log};
  CUmodule mod;
  r = cu.cuModuleLoadDataEx(&mod, pick->data, 2, opt, val);
  if (r != CUDA_SUCCESS) {
    snprintf(err, POC_ERR_LEN, "cuda: loading the %s kernels failed: %s %.300s", pick->arch,
             cu_errstr(r), log);
    return -1;
  }
  *module = mod;
  return 0;
}

cu_kernels *cu_kernels_get(cu_backend *b, const poc_cuda_dims *d, char *err) {
  for (cu_kernels *k = b->kernels; k; k = k->next)
    if (!memcmp(&k->dims, d, sizeof *d)) return k;
  char *src = poc_cuda_instantiate(d, NULL, 0, err);
  if (!src) return NULL;
  char arch[16], *log = NULL;
  snprintf(arch, sizeof arch, "sm_%d", b->cc);
  const char *archs[] = {arch};
  poc_cuda_image img;
  int rc = poc_cuda_compile(src, "poc_model.cu", archs, 1, &img, &log);
  free(src);
  if (rc) {
    /* the whole log goes to stderr: it does not fit an error message */
    fprintf(stderr, "%s\n", log ? log : "");
    snprintf(err, POC_ERR_LEN, "cuda: NVRTC could not compile the model kernels for %s "
             "(log above)", arch);
    free(log);
    return NULL;
  }
  free(log);
  cu_kernels *k = calloc(1, sizeof *k);
  void *mod = NULL;
  if (!k || poc_cuda_load(&img, &mod, err)) {
    if (!k) snprintf(err, POC_ERR_LEN, "cuda: out of memory");
    poc_cuda_image_free(&img);
    free(k);
    return NULL;
  }
  poc_cuda_image_free(&img);
  k->dims = *d;
  k->mod = mod;
#define CU_GETK(name)                                                                   \
  if ((rc = cu.cuModuleGetFunction(&k->name, k->mod, #name)) != CUDA_SUCCESS) {         \
    snprintf(err, POC_ERR_LEN, "cuda: kernel %s missing from the module: %s", #name,    \
             cu_errstr(rc));                                                            \
    cu.cuModuleUnload(k->mod);                                                          \
    free(k);                                                                            \
    return NULL;                                                                        \
  }
  CU_KERNELS(CU_GETK)
#undef CU_GETK
  k->next = b->kernels;
  b->kernels = k;
  return k;
}

/* ---- the backend -------------------------------------------------------------------- */

static void cu_close(poc_backend *pb) {
  cu_backend *b = (cu_backend *)pb;
  if (!b) return;
  cu.cuCtxSetCurrent(b->ctx);
  for (cu_kernels *k = b->kernels, *next; k; k = next) {
    next = k->next;
    cu.cuModuleUnload(k->mod);
    free(k);
  }
  if (b->blas) cublasDestroy(b->blas);
  cu.cuDevicePrimaryCtxRelease(b->dev);
  free(b);
}

poc_backend *poc_backend_cuda_open(char *err) {
  if (cu_driver_load(err)) return NULL;
  CUresult r = cu.cuInit(0);
  if (r != CUDA_SUCCESS) {
    snprintf(err, POC_ERR_LEN, "cuda: the CUDA driver found no usable GPU: %s", cu_errstr(r));
    return NULL;
  }
  int n = 0;
  r = cu.cuDeviceGetCount(&n);
  if (r != CUDA_SUCCESS || n == 0) {
    snprintf(err, POC_ERR_LEN, "cuda: no CUDA device found%s%s", r ? ": " : "",
             r ? cu_errstr(r) : "");
    return NULL;
  }
  const char *env = getenv("POC_CUDA_DEVICE");
  int ord = env && *env ? atoi(env) : 0;
  if (ord < 0 || ord >= n) {
    snprintf(err, POC_ERR_LEN, "cuda: POC_CUDA_DEVICE=%s but there are %d devices", env, n);
    return NULL;
  }
  cu_backend *b = calloc(1, sizeof *b);
  if (!b) {
    snprintf(err, POC_ERR_LEN, "cuda: out of memory");
    return NULL;
  }
  int ma = 0, mi = 0;
  size_t mem = 0;
  char name[100] = "";
  if ((r = cu.cuDeviceGet(&b->dev, ord)) || (r = cu.cuDevicePrimaryCtxRetain(&b->ctx, b->dev))) {
    snprintf(err, POC_ERR_LEN, "cuda: cannot open device %d: %s", ord, cu_errstr(r));
    free(b);
    return NULL;
  }
  if ((r = cu.cuCtxSetCurrent(b->ctx)) ||
      (r = cu.cuDeviceGetAttribute(&ma, CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MAJOR, b->dev)) ||
      (r = cu.cuDeviceGetAttribute(&mi, CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MINOR, b->dev)) ||
      (r = cu.cuDeviceGetAttribute(&b->n_sm, CU_DEVICE_ATTRIBUTE_MULTIPROCESSOR_COUNT, b->dev)) ||
      (r = cu.cuDeviceGetName(name, sizeof name, b->dev)) || (r = cu.cuDeviceTotalMem(&mem, b->dev))) {
    snprintf(err, POC_ERR_LEN, "cuda: cannot query device %d: %s", ord, cu_errstr(r));
    cu_close(&b->base);
    return NULL;
  }
  b->cc = ma * 10 + mi;
  cublasStatus_t s = cublasCreate(&b->blas);
  if (s != CUBLAS_STATUS_SUCCESS) {
    snprintf(err, POC_ERR_LEN, "cuda: cuBLAS could not start: %s", cublasGetStatusString(s));
    b->blas = NULL;
    cu_close(&b->base);
    return NULL;
  }
  b->base.name = "cuda";
  snprintf(b->base.device, sizeof b->base.device, "%s (sm_%d, %d SMs, %.0f GiB)", name, b->cc,
           b->n_sm, (double)mem / (1 << 30));
  b->base.close = cu_close;
  cu_model_install(&b->base);
  return &b->base;
}
