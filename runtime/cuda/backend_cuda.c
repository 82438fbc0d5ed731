/* backend_cuda.c — opening the CUDA device: the driver, the context, cuBLAS, and the
 * kernel modules — built in by `poc build --arch`, cached on disk (kcache.c) or compiled
 * from the templates by NVRTC.
 *
 * Every failure becomes a message: a missing libcuda.so.1, libnvrtc or libcublas, a driver
 * that finds no device (cuInit's own error string), a device this NVRTC cannot target.
 * Nothing here may crash on a machine without a GPU.
 */
#include <dlfcn.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cuda_internal.h"

cu_driver cu;
cu_nvrtc nv;
cu_cublas cb;

#define CU_STR2(x) #x
#define CU_STR(x) CU_STR2(x)

/* Build-time names (runtime/cuda/CMakeLists.txt): the toolkit's major version picks the
 * sonames, and its library directory is the last place tried. */
#ifndef POC_NVRTC_SONAME
#define POC_NVRTC_SONAME "libnvrtc.so"
#endif
#ifndef POC_CUBLAS_SONAME
#define POC_CUBLAS_SONAME "libcublas.so"
#endif

/* dlopen of `name`, then of `fallback` and of `libdir/name` when given; the first failure's
 * message goes to `why` (the one a user can act on). */
static void *cu_dlopen(const char *name, const char *fallback, char *why, size_t cap) {
  void *lib = dlopen(name, RTLD_NOW | RTLD_LOCAL);
  if (lib) return lib;
  const char *e = dlerror();
  snprintf(why, cap, "%s", e ? e : name);
  if (fallback && (lib = dlopen(fallback, RTLD_NOW | RTLD_LOCAL))) return lib;
#ifdef POC_CUDA_LIBDIR
  char path[1024];
  snprintf(path, sizeof path, "%s/%s", POC_CUDA_LIBDIR, name);
  if ((lib = dlopen(path, RTLD_NOW | RTLD_LOCAL))) return lib;
#endif
  return NULL;
}

/* Opens the library behind a table: POC_CUDA_EMULATE's when that is set (all three
 * tables then come from the test emulation), else the real one. NULL with a one-line
 * message. */
static void *cu_open(const char *what, const char *name, const char *fallback, const char *hint,
                     char *err) {
  const char *emu = getenv("POC_CUDA_EMULATE");
  char why[512];
  if (emu && *emu) {
    void *lib = cu_dlopen(emu, NULL, why, sizeof why);
    if (!lib)
      snprintf(err, POC_ERR_LEN, "cuda: cannot load the CUDA emulation named by "
               "POC_CUDA_EMULATE (%.300s)", why);
    return lib;
  }
  void *lib = cu_dlopen(name, fallback, why, sizeof why);
  if (!lib) snprintf(err, POC_ERR_LEN, "cuda: cannot load %s (%.300s)%s", what, why, hint);
  return lib;
}

/* Fills a table member from its library by the entry point's (macro-expanded) name. */
#define CU_LOOKUP(tab, f, what)                                                      \
  if (!(*(void **)&tab.f = dlsym(tab.lib, CU_STR(f)))) {                              \
    snprintf(err, POC_ERR_LEN, "cuda: %s lacks %s (too old?)", what, CU_STR(f));      \
    dlclose(tab.lib);                                                                \
    return -1;                                                                       \
  }

int cu_driver_load(char *err) {
  if (cu.lib) return 0;
  cu_driver d = {0};
  if (!(d.lib = cu_open("the CUDA driver", "libcuda.so.1", NULL,
                        "; is an NVIDIA driver installed?", err)))
    return -1;
#define CU_LOOKUP_D(f) CU_LOOKUP(d, f, "the CUDA driver")
  CU_FUNCS(CU_LOOKUP_D)
#undef CU_LOOKUP_D
  cu = d;
  return 0;
}

int cu_nvrtc_load(char *err) {
  if (nv.lib) return 0;
  cu_nvrtc d = {0};
  if (!(d.lib = cu_open("NVRTC", POC_NVRTC_SONAME, "libnvrtc.so", "", err))) return -1;
#define CU_LOOKUP_N(f) CU_LOOKUP(d, f, "NVRTC")
  NV_FUNCS(CU_LOOKUP_N)
#undef CU_LOOKUP_N
  nv = d;
  return 0;
}

int cu_cublas_load(char *err) {
  if (cb.lib) return 0;
  cu_cublas d = {0};
  if (!(d.lib = cu_open("cuBLAS", POC_CUBLAS_SONAME, "libcublas.so", "", err))) return -1;
#define CU_LOOKUP_B(f) CU_LOOKUP(d, f, "cuBLAS")
  CB_FUNCS(CU_LOOKUP_B)
#undef CU_LOOKUP_B
  cb = d;
  return 0;
}

const char *cu_errstr(CUresult r) {
  static char buf[192];
  const char *name = NULL, *text = NULL;
  if (cu.cuGetErrorName) cu.cuGetErrorName(r, &name);
  if (cu.cuGetErrorString) cu.cuGetErrorString(r, &text);
  if (name)
    snprintf(buf, sizeof buf, "%s (%s)", name, text ? text : "no description");
  else  /* e.g. the toolkit's stub library, which names nothing */
    snprintf(buf, sizeof buf, "CUDA error %d", (int)r);
  return buf;
}

/* ---- modules ------------------------------------------------------------------------ */

/* Loads one cubin or PTX blob into the current context; `what` names it in the message. */
static int cu_module_load(const void *data, const char *what, CUmodule *mod, char *err) {
  char log[4096] = "";
  CUjit_option opt[] = {CU_JIT_ERROR_LOG_BUFFER, CU_JIT_ERROR_LOG_BUFFER_SIZE_BYTES};
  void *val[] = {log, (void *)(size_t)sizeof log};
  CUresult r = cu.cuModuleLoadDataEx(mod, data, 2, opt, val);
  if (r == CUDA_SUCCESS) return 0;
  for (char *p = log; *p; p++)  /* one line */
    if (*p == '\n') *p = ' ';
  snprintf(err, POC_ERR_LEN, "cuda: loading the %s kernels failed: %s %.300s", what,
           cu_errstr(r), log);
  return -1;
}

/* The device's compute capability as major·10 + minor, or -1 with a message. */
static int cu_current_cc(char *err) {
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
  return ma * 10 + mi;
}

/* "compute_80" → 80 */
static int cu_ptx_arch(const char *a) { return atoi(a + 8); }

int poc_cuda_load(const poc_cuda_image *img, void **module, char *err) {
  int cc = cu_current_cc(err);
  if (cc < 0) return -1;
  char want[16];
  snprintf(want, sizeof want, "sm_%d", cc);
  const poc_cuda_blob *pick = NULL;
  for (int i = 0; i < img->n && !pick; i++)
    if (!img->blob[i].is_ptx && !strcmp(img->blob[i].arch, want)) pick = &img->blob[i];
  for (int i = 0; i < img->n && !pick; i++)
    if (img->blob[i].is_ptx && cu_ptx_arch(img->blob[i].arch) <= cc) pick = &img->blob[i];
  if (!pick) {
    snprintf(err, POC_ERR_LEN, "cuda: the kernels have no cubin for %s and no PTX it can run; "
             "rebuild with --arch %s", want, want);
    return -1;
  }
  CUmodule mod;
  if (cu_module_load(pick->data, pick->arch, &mod, err)) return -1;
  *module = mod;
  return 0;
}

/* What `poc build --arch` embedded in the program, handed over by the registry. */
static const poc_kernel_image *cu_images;
static int cu_n_images;

void poc_cuda_use_images(const poc_kernel_image *img, int n) {
  cu_images = img;
  cu_n_images = img ? n : 0;
}

/* From the built-in images: a cubin for exactly the device's sm_XY, else the PTX when its
 * compute_XY is not newer than the device (the driver JIT-compiles it). 0 with *mod set,
 * or 1 (a note says why) when none can serve and NVRTC must. */
static int cu_images_load(int cc, const poc_dims *d, uint64_t hash, CUmodule *mod) {
  const poc_kernel_image *im = NULL;
  int stale = 0;
  for (int i = 0; i < cu_n_images && !im; i++) {
    const poc_kernel_image *k = &cu_images[i];
    if (k->H == d->H && k->F == d->F && k->V == d->V && k->nh == d->nh && k->nkv == d->nkv &&
        k->hd == d->hd && k->eps == d->eps) {
      if (k->source_hash == hash) im = k;
      else stale = 1;
    }
  }
  if (!im) {
    if (stale)
      fprintf(stderr, "poc: note: the built-in GPU kernels were compiled from other kernel "
              "sources than this runtime's; compiling them with NVRTC\n");
    else if (cu_n_images)
      fprintf(stderr, "poc: note: no built-in GPU kernels for a model of hidden size %d, "
              "vocabulary %d; compiling them with NVRTC\n", d->H, d->V);
    return 1;
  }
  char want[16];
  snprintf(want, sizeof want, "sm_%d", cc);
  const poc_kernel_blob *pick = NULL;
  for (int i = 0; i < im->n_blobs && !pick; i++)
    if (!im->blobs[i].is_ptx && !strcmp(im->blobs[i].arch, want)) pick = &im->blobs[i];
  for (int i = 0; i < im->n_blobs && !pick; i++)
    if (im->blobs[i].is_ptx && cu_ptx_arch(im->blobs[i].arch) <= cc) {
      pick = &im->blobs[i];
      fprintf(stderr, "poc: note: no %s cubin built in; the driver compiles the %s PTX\n", want,
              pick->arch);
    }
  if (!pick) {
    fprintf(stderr, "poc: note: the built-in GPU kernels have no cubin for %s and no PTX it "
            "can run (poc build --arch %s adds them); compiling them with NVRTC\n", want, want);
    return 1;
  }
  char err[POC_ERR_LEN];
  if (cu_module_load(pick->data, pick->arch, mod, err)) {
    fprintf(stderr, "poc: note: %s; compiling them with NVRTC\n", err);
    return 1;
  }
  return 0;
}

/* From the kernel cache, else NVRTC for the device's sm_XY (then cached). */
static int cu_jit_load(int cc, const char *src, uint64_t hash, CUmodule *mod, char *err) {
  char arch[16];
  snprintf(arch, sizeof arch, "sm_%d", cc);
  unsigned char *data;
  size_t n;
  if (cu_cache_load(hash, arch, &data, &n) == 0) {
    char lerr[POC_ERR_LEN];
    int rc = cu_module_load(data, arch, mod, lerr);
    free(data);
    if (rc == 0) return 0;
    /* intact but refused (e.g. a driver change): replaced like a damaged entry */
    fprintf(stderr, "poc: note: the cached kernels could not be loaded (%s); recompiling\n", lerr);
  }
  const char *archs[] = {arch};
  poc_cuda_image img;
  char *log = NULL;
  if (poc_cuda_compile_cubins(src, "poc_model.cu", archs, 1, &img, &log)) {
    /* the whole log goes to stderr: it does not fit an error message */
    fprintf(stderr, "%s\n", log ? log : "");
    snprintf(err, POC_ERR_LEN, "cuda: NVRTC could not compile the model kernels for %s "
             "(log above)", arch);
    free(log);
    return -1;
  }
  free(log);
  int rc = cu_module_load(img.blob[0].data, arch, mod, err);
  if (rc == 0) cu_cache_store(hash, arch, img.blob[0].data, img.blob[0].size);
  poc_cuda_image_free(&img);
  return rc;
}

cu_kernels *cu_kernels_get(cu_ctx *b, const poc_dims *d, char *err) {
  for (cu_kernels *k = b->kernels; k; k = k->next)
    if (!memcmp(&k->dims, d, sizeof *d)) return k;
  int cc = cu_current_cc(err);
  if (cc < 0) return NULL;
  /* the source is instantiated even when an image serves: its hash is what proves the
   * image was compiled from these templates for these dimensions */
  char *src = poc_cuda_instantiate(d, NULL, 0, err);
  if (!src) return NULL;
  uint64_t hash = poc_cuda_source_hash(src);
  CUmodule mod = NULL;
  int rc = cu_images_load(cc, d, hash, &mod) == 0 ? 0 : cu_jit_load(cc, src, hash, &mod, err);
  free(src);
  if (rc) return NULL;
  cu_kernels *k = calloc(1, sizeof *k);
  if (!k) {
    snprintf(err, POC_ERR_LEN, "cuda: out of memory");
    cu.cuModuleUnload(mod);
    return NULL;
  }
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

/* ---- a context ---------------------------------------------------------------------- */

void cu_ctx_close(cu_ctx *c) {
  if (!c->ctx) return;
  cu.cuCtxSetCurrent(c->ctx);
  for (cu_kernels *k = c->kernels, *next; k; k = next) {
    next = k->next;
    cu.cuModuleUnload(k->mod);
    free(k);
  }
  c->kernels = NULL;
  if (c->blas) cb.cublasDestroy(c->blas);
  c->blas = NULL;
  cu.cuDevicePrimaryCtxRelease(c->dev);
  c->ctx = NULL;
}

int cu_ctx_open(cu_ctx *c, char *err) {
  memset(c, 0, sizeof *c);
  if (cu_driver_load(err)) return -1;
  /* A driver older than the toolkit cannot load what this NVRTC emits nor run this
   * cuBLAS; say so before anything fails with a less direct message. */
  int drv = 0;
  CUresult r = cu.cuDriverGetVersion(&drv);
  if (r == CUDA_SUCCESS && drv < CUDA_VERSION) {
    snprintf(err, POC_ERR_LEN, "cuda: the NVIDIA driver supports CUDA %d.%d but poc was built "
             "with CUDA %d.%d; update the driver", drv / 1000, drv % 1000 / 10,
             CUDA_VERSION / 1000, CUDA_VERSION % 1000 / 10);
    return -1;
  }
  c->driver = drv;
  r = cu.cuInit(0);
  if (r != CUDA_SUCCESS) {
    snprintf(err, POC_ERR_LEN, "cuda: the CUDA driver found no usable GPU: %s", cu_errstr(r));
    return -1;
  }
  int n = 0;
  r = cu.cuDeviceGetCount(&n);
  if (r != CUDA_SUCCESS || n == 0) {
    snprintf(err, POC_ERR_LEN, "cuda: no CUDA device found%s%s", r ? ": " : "",
             r ? cu_errstr(r) : "");
    return -1;
  }
  const char *env = getenv("POC_CUDA_DEVICE");
  int ord = env && *env ? atoi(env) : 0;
  if (ord < 0 || ord >= n) {
    snprintf(err, POC_ERR_LEN, "cuda: POC_CUDA_DEVICE=%s but there are %d devices", env, n);
    return -1;
  }
  int ma = 0, mi = 0;
  if ((r = cu.cuDeviceGet(&c->dev, ord)) || (r = cu.cuDevicePrimaryCtxRetain(&c->ctx, c->dev))) {
    snprintf(err, POC_ERR_LEN, "cuda: cannot open device %d: %s", ord, cu_errstr(r));
    c->ctx = NULL;
    return -1;
  }
  if ((r = cu.cuCtxSetCurrent(c->ctx)) ||
      (r = cu.cuDeviceGetAttribute(&ma, CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MAJOR, c->dev)) ||
      (r = cu.cuDeviceGetAttribute(&mi, CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MINOR, c->dev)) ||
      (r = cu.cuDeviceGetAttribute(&c->n_sm, CU_DEVICE_ATTRIBUTE_MULTIPROCESSOR_COUNT, c->dev)) ||
      (r = cu.cuDeviceGetName(c->name, sizeof c->name, c->dev)) ||
      (r = cu.cuDeviceTotalMem(&c->mem, c->dev))) {
    snprintf(err, POC_ERR_LEN, "cuda: cannot query device %d: %s", ord, cu_errstr(r));
    cu_ctx_close(c);
    return -1;
  }
  c->cc = ma * 10 + mi;
  /* bf16 GEMMs (cublasGemmEx with CUDA_R_16BF) need Ampere or newer */
  if (c->cc < 80) {
    snprintf(err, POC_ERR_LEN, "cuda: %s (sm_%d) has no bf16 support; poc needs sm_80 or newer",
             c->name, c->cc);
    cu_ctx_close(c);
    return -1;
  }
  if (cu_cublas_load(err)) {
    cu_ctx_close(c);
    return -1;
  }
  cublasStatus_t s = cb.cublasCreate(&c->blas);
  if (s != CUBLAS_STATUS_SUCCESS) {
    snprintf(err, POC_ERR_LEN, "cuda: cuBLAS could not start: %s", cb.cublasGetStatusString(s));
    c->blas = NULL;
    cu_ctx_close(c);
    return -1;
  }
  return 0;
}
