/* cuemu_driver.c — the CUDA driver API on the CPU, for tests: one device, memory, modules
 * built by the NVRTC stand-in, and kernel launches run by a strict scheduler.
 *
 * Memory: device pointers are host addresses. Each allocation is its own mapping, filled
 * with 0xff bytes (fp32 and bf16 NaN: reading what was never written shows), its end
 * against an inaccessible page so a kernel running past it faults at once; copies and
 * memsets must lie inside one live allocation, and so must every pointer argument of a
 * launch (or be null). poc_cuemu_mem_range answers the same question for a library that
 * reads device memory itself (the NCCL stand-in). Kernels run on the legacy default
 * stream; other streams and events exist for a library that works on its own stream
 * (NCCL): their handles are checked (poc_cuemu_stream_live for such a library), and since
 * work runs at its call every stream is always complete.
 *
 * Launches: blocks run one after another in an order shuffled per launch. Within a block
 * every CUDA thread is a fibre (makecontext once per pooled stack, then _setjmp/_longjmp
 * switches) on the calling OS thread. A thread runs until it reaches __syncthreads, a warp
 * operation, or its end; then the scheduler resumes another runnable thread, by one of two
 * policies drawn per block: a uniformly random one (threads interleave finely), or the
 * most recently released group first, in random order (one warp runs ahead of the others
 * to the next barrier: the schedule that exposes a missing barrier between warps). The
 * random source is POC_CUDA_EMU_SEED (default 1), so a missing barrier or a race shows as
 * wrong numbers that change with the seed rather than luck. Checked as errors (the launch fails
 * with CUDA_ERROR_LAUNCH_FAILED, sticky as on a device, and the message names the kernel,
 * block and thread): threads meeting at different __syncthreads call sites, lanes of a
 * warp meeting at different warp operations or masks, reading a lane outside the mask,
 * deadlock (a live thread never reaches the barrier others wait at), launches beyond
 * __launch_bounds__ or the device's limits.
 *
 * For tests of poc's error and kernel-selection paths:
 *   POC_CUDA_EMU_CC=XY          the device reports compute capability X.Y (default 90); the
 *                               module loader accepts a cubin of the same major and no newer
 *                               minor, and PTX of compute_XY no newer than the device, as the
 *                               real driver does
 *   POC_CUDA_EMU_FAULT=NAME:N   the Nth launch (from 1) of kernel NAME faults as a kernel
 *                               does on a device: the launch returns success, and the next
 *                               call that checks the context gets CUDA_ERROR_ILLEGAL_ADDRESS
 */
#undef _FORTIFY_SOURCE /* __longjmp_chk refuses jumps between fibre stacks */
#include <dlfcn.h>
#include <setjmp.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <ucontext.h>
#include <unistd.h>

#include "cuda_emul.h"
#include "cuemu_internal.h"

#define EMU_MAX_THREADS 1024
#define EMU_STACK (64 << 10)
#define EMU_TOTAL_MEM ((size_t)80 << 30)

/* ---- errors ----------------------------------------------------------------------- */

static char emu_last[1024];
static CUresult emu_sticky; /* a failed kernel poisons the context until it is reset */

void emu_report(const char *fmt, ...) {
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(emu_last, sizeof emu_last, fmt, ap);
  va_end(ap);
  fprintf(stderr, "cuda emulation: %s\n", emu_last);
}

/* The last misuse or kernel fault reported, for tests that provoke them. */
const char *poc_cuemu_last_error(void) { return emu_last; }

/* ---- the device and its context ---------------------------------------------------- */

struct CUctx_st { int refs; };
static struct CUctx_st emu_ctx;
static int emu_inited;
static CUcontext emu_current;

static uint64_t emu_rng_state;

/* splitmix64 */
static uint64_t emu_rand(void) {
  uint64_t z = (emu_rng_state += 0x9e3779b97f4a7c15ull);
  z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
  z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
  return z ^ (z >> 31);
}

CUresult cuInit(unsigned flags) {
  if (flags) return CUDA_ERROR_INVALID_VALUE;
  if (!emu_inited) {
    const char *s = getenv("POC_CUDA_EMU_SEED");
    emu_rng_state = s && *s ? strtoull(s, NULL, 0) : 1;
    emu_inited = 1;
  }
  return CUDA_SUCCESS;
}

#define EMU_INIT() \
  if (!emu_inited) return CUDA_ERROR_NOT_INITIALIZED
#define EMU_CTX()                                       \
  EMU_INIT();                                           \
  if (emu_current != &emu_ctx || !emu_ctx.refs) return CUDA_ERROR_INVALID_CONTEXT; \
  if (emu_sticky) return emu_sticky

CUresult cuDriverGetVersion(int *v) {
  if (!v) return CUDA_ERROR_INVALID_VALUE;
  *v = 13000;
  return CUDA_SUCCESS;
}

CUresult cuDeviceGetCount(int *n) {
  EMU_INIT();
  if (!n) return CUDA_ERROR_INVALID_VALUE;
  *n = 1;
  return CUDA_SUCCESS;
}

CUresult cuDeviceGet(CUdevice *d, int ord) {
  EMU_INIT();
  if (!d) return CUDA_ERROR_INVALID_VALUE;
  if (ord != 0) return CUDA_ERROR_INVALID_DEVICE;
  *d = 0;
  return CUDA_SUCCESS;
}

CUresult cuDeviceGetName(char *name, int len, CUdevice d) {
  EMU_INIT();
  if (d != 0) return CUDA_ERROR_INVALID_DEVICE;
  if (!name || len <= 0) return CUDA_ERROR_INVALID_VALUE;
  snprintf(name, (size_t)len, "poc CUDA emulation (CPU)");
  return CUDA_SUCCESS;
}

/* POC_CUDA_EMU_CC, else 90 (sm_90) */
static int emu_cc(void) {
  const char *s = getenv("POC_CUDA_EMU_CC");
  int cc = s && *s ? atoi(s) : 90;
  return cc >= 10 && cc <= 199 ? cc : 90;
}

/* An H100-like device: what poc asks about, nothing else (an unknown attribute is an error,
 * so new uses get added here on purpose). */
CUresult cuDeviceGetAttribute(int *v, CUdevice_attribute a, CUdevice d) {
  EMU_INIT();
  if (d != 0) return CUDA_ERROR_INVALID_DEVICE;
  if (!v) return CUDA_ERROR_INVALID_VALUE;
  switch (a) {
    case CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MAJOR: *v = emu_cc() / 10; break;
    case CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MINOR: *v = emu_cc() % 10; break;
    case CU_DEVICE_ATTRIBUTE_MULTIPROCESSOR_COUNT: *v = 132; break;
    case CU_DEVICE_ATTRIBUTE_WARP_SIZE: *v = 32; break;
    case CU_DEVICE_ATTRIBUTE_MAX_THREADS_PER_BLOCK: *v = EMU_MAX_THREADS; break;
    case CU_DEVICE_ATTRIBUTE_MAX_BLOCK_DIM_X: *v = 1024; break;
    case CU_DEVICE_ATTRIBUTE_MAX_BLOCK_DIM_Y: *v = 1024; break;
    case CU_DEVICE_ATTRIBUTE_MAX_BLOCK_DIM_Z: *v = 64; break;
    case CU_DEVICE_ATTRIBUTE_MAX_GRID_DIM_X: *v = 0x7fffffff; break;
    case CU_DEVICE_ATTRIBUTE_MAX_GRID_DIM_Y: *v = 65535; break;
    case CU_DEVICE_ATTRIBUTE_MAX_GRID_DIM_Z: *v = 65535; break;
    case CU_DEVICE_ATTRIBUTE_MAX_SHARED_MEMORY_PER_BLOCK: *v = 48 << 10; break;
    case CU_DEVICE_ATTRIBUTE_MAX_SHARED_MEMORY_PER_BLOCK_OPTIN: *v = 227 << 10; break;
    case CU_DEVICE_ATTRIBUTE_MAX_SHARED_MEMORY_PER_MULTIPROCESSOR: *v = 228 << 10; break;
    case CU_DEVICE_ATTRIBUTE_MAX_REGISTERS_PER_BLOCK: *v = 65536; break;
    case CU_DEVICE_ATTRIBUTE_L2_CACHE_SIZE: *v = 50 << 20; break;
    default:
      emu_report("cuDeviceGetAttribute: attribute %d is not emulated", (int)a);
      return CUDA_ERROR_INVALID_VALUE;
  }
  return CUDA_SUCCESS;
}

CUresult cuDeviceTotalMem(size_t *b, CUdevice d) {
  EMU_INIT();
  if (d != 0) return CUDA_ERROR_INVALID_DEVICE;
  if (!b) return CUDA_ERROR_INVALID_VALUE;
  *b = EMU_TOTAL_MEM;
  return CUDA_SUCCESS;
}

CUresult cuDevicePrimaryCtxRetain(CUcontext *c, CUdevice d) {
  EMU_INIT();
  if (d != 0) return CUDA_ERROR_INVALID_DEVICE;
  if (!c) return CUDA_ERROR_INVALID_VALUE;
  emu_ctx.refs++;
  *c = &emu_ctx;
  return CUDA_SUCCESS;
}

/* The last release resets the context, and with it a sticky kernel error. */
CUresult cuDevicePrimaryCtxRelease(CUdevice d) {
  EMU_INIT();
  if (d != 0) return CUDA_ERROR_INVALID_DEVICE;
  if (emu_ctx.refs <= 0) return CUDA_ERROR_INVALID_CONTEXT;
  if (--emu_ctx.refs == 0) emu_sticky = CUDA_SUCCESS;
  return CUDA_SUCCESS;
}

CUresult cuCtxSetCurrent(CUcontext c) {
  EMU_INIT();
  if (c && (c != &emu_ctx || !emu_ctx.refs)) return CUDA_ERROR_INVALID_CONTEXT;
  emu_current = c;
  return CUDA_SUCCESS;
}

CUresult cuCtxGetDevice(CUdevice *d) {
  EMU_INIT();
  if (emu_current != &emu_ctx || !emu_ctx.refs) return CUDA_ERROR_INVALID_CONTEXT;
  if (!d) return CUDA_ERROR_INVALID_VALUE;
  *d = 0;
  return CUDA_SUCCESS;
}

/* Work runs at the call, so synchronising only reports what went wrong. */
CUresult cuCtxSynchronize(void) {
  EMU_CTX();
  return CUDA_SUCCESS;
}

CUresult cuCtxGetCurrent(CUcontext *c) {
  EMU_INIT();
  if (!c) return CUDA_ERROR_INVALID_VALUE;
  *c = emu_current;
  return CUDA_SUCCESS;
}

/* ---- streams and events ------------------------------------------------------------ */

/* Work runs at its call (the emulation's, and that of a library which works on a stream,
 * as the NCCL stand-in does), so every stream is always complete and any order of work the
 * program asks for already holds: what is checked is the handles (live, of this context)
 * and the flags. Kernels run on the default stream only (cuLaunchKernel). */
struct CUstream_st { struct CUstream_st *next; };
struct CUevent_st { struct CUevent_st *next; int recorded; };
static struct CUstream_st *emu_streams;
static struct CUevent_st *emu_events;

static int emu_stream_live(CUstream s) {
  if (!s) return 1; /* the legacy default stream */
  for (struct CUstream_st *t = emu_streams; t; t = t->next)
    if (t == s) return 1;
  return 0;
}

static int emu_event_live(CUevent e) {
  for (struct CUevent_st *t = emu_events; t; t = t->next)
    if (t == e) return 1;
  return 0;
}

#define EMU_STREAM(call, s)                                                           \
  if (!emu_stream_live(s)) {                                                          \
    emu_report("%s(%p): not a live stream", call, (void *)(s));                       \
    return CUDA_ERROR_INVALID_HANDLE;                                                 \
  }
#define EMU_EVENT(call, e)                                                            \
  if (!(e) || !emu_event_live(e)) {                                                   \
    emu_report("%s(%p): not a live event", call, (void *)(e));                        \
    return CUDA_ERROR_INVALID_HANDLE;                                                 \
  }

CUresult cuStreamCreate(CUstream *s, unsigned flags) {
  EMU_CTX();
  if (!s || (flags & ~(unsigned)CU_STREAM_NON_BLOCKING)) return CUDA_ERROR_INVALID_VALUE;
  struct CUstream_st *t = calloc(1, sizeof *t);
  if (!t) return CUDA_ERROR_OUT_OF_MEMORY;
  t->next = emu_streams;
  emu_streams = t;
  *s = t;
  return CUDA_SUCCESS;
}

CUresult cuStreamDestroy(CUstream s) {
  EMU_INIT();
  for (struct CUstream_st **t = &emu_streams; *t; t = &(*t)->next)
    if (*t == s) {
      *t = s->next;
      free(s);
      return CUDA_SUCCESS;
    }
  emu_report("cuStreamDestroy(%p): not a live stream (the default one cannot be destroyed)",
             (void *)s);
  return CUDA_ERROR_INVALID_HANDLE;
}

/* always complete; a sticky kernel error is reported as the driver does */
CUresult cuStreamQuery(CUstream s) {
  EMU_CTX();
  EMU_STREAM("cuStreamQuery", s);
  return CUDA_SUCCESS;
}

/* For a library that works on streams (the NCCL stand-in): whether s is the default
 * stream or a live one. */
int poc_cuemu_stream_live(const void *s) { return emu_stream_live((CUstream)(uintptr_t)s); }

CUresult cuStreamWaitEvent(CUstream s, CUevent e, unsigned flags) {
  EMU_CTX();
  EMU_STREAM("cuStreamWaitEvent", s);
  EMU_EVENT("cuStreamWaitEvent", e);
  if (flags) return CUDA_ERROR_INVALID_VALUE;
  return CUDA_SUCCESS;
}

CUresult cuEventCreate(CUevent *e, unsigned flags) {
  EMU_CTX();
  unsigned known = CU_EVENT_BLOCKING_SYNC | CU_EVENT_DISABLE_TIMING;
  if (!e || (flags & ~known)) return CUDA_ERROR_INVALID_VALUE;
  struct CUevent_st *t = calloc(1, sizeof *t);
  if (!t) return CUDA_ERROR_OUT_OF_MEMORY;
  t->next = emu_events;
  emu_events = t;
  *e = t;
  return CUDA_SUCCESS;
}

CUresult cuEventDestroy(CUevent e) {
  EMU_INIT();
  for (struct CUevent_st **t = &emu_events; *t; t = &(*t)->next)
    if (*t == e) {
      *t = e->next;
      free(e);
      return CUDA_SUCCESS;
    }
  emu_report("cuEventDestroy(%p): not a live event", (void *)e);
  return CUDA_ERROR_INVALID_HANDLE;
}

CUresult cuEventRecord(CUevent e, CUstream s) {
  EMU_CTX();
  EMU_EVENT("cuEventRecord", e);
  EMU_STREAM("cuEventRecord", s);
  e->recorded = 1;
  return CUDA_SUCCESS;
}

CUresult cuEventQuery(CUevent e) {
  EMU_CTX();
  EMU_EVENT("cuEventQuery", e);
  return CUDA_SUCCESS;
}

/* ---- memory ------------------------------------------------------------------------ */

typedef struct { uintptr_t p; size_t n; char *map; size_t maplen; } emu_alloc;
static emu_alloc *emu_allocs;
static int emu_n_allocs, emu_cap_allocs;
static size_t emu_used;

static const emu_alloc *emu_find(uintptr_t p) {
  for (int i = 0; i < emu_n_allocs; i++)
    if (p >= emu_allocs[i].p && p <= emu_allocs[i].p + emu_allocs[i].n) return &emu_allocs[i];
  return NULL;
}

int emu_mem_check(uintptr_t p, size_t n, const char **why) {
  const emu_alloc *a = emu_find(p);
  if (!a) {
    *why = "not inside any live allocation (never allocated, or freed)";
    return -1;
  }
  if (n > a->n - (p - a->p)) {
    *why = "runs past the end of its allocation";
    return -1;
  }
  return 0;
}

/* For a stand-in of a library that reads device memory on the host (tests/nccl_standin):
 * 0 when [p, p + n) lies inside one live allocation, else -1 with *why. */
int poc_cuemu_mem_range(const void *p, size_t n, const char **why) {
  return emu_mem_check((uintptr_t)p, n, why);
}

CUresult cuMemAlloc(CUdeviceptr *dp, size_t n) {
  EMU_CTX();
  if (!dp || n == 0) return CUDA_ERROR_INVALID_VALUE;
  if (n > EMU_TOTAL_MEM - emu_used) return CUDA_ERROR_OUT_OF_MEMORY;
  if (emu_n_allocs == emu_cap_allocs) {
    int cap = emu_cap_allocs ? 2 * emu_cap_allocs : 64;
    emu_alloc *a = realloc(emu_allocs, (size_t)cap * sizeof *a);
    if (!a) return CUDA_ERROR_OUT_OF_MEMORY;
    emu_allocs = a;
    emu_cap_allocs = cap;
  }
  size_t page = (size_t)sysconf(_SC_PAGESIZE), body = (n + page - 1) / page * page;
  char *map = mmap(NULL, body + page, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
  if (map == MAP_FAILED) return CUDA_ERROR_OUT_OF_MEMORY;
  mprotect(map + body, page, PROT_NONE);
  /* 256-byte aligned like the driver's, ending at most 255 bytes before the guard page */
  char *p = map + body - (n + 255) / 256 * 256;
  memset(p, 0xff, n);
  emu_allocs[emu_n_allocs++] = (emu_alloc){(uintptr_t)p, n, map, body + page};
  emu_used += n;
  *dp = (CUdeviceptr)(uintptr_t)p;
  return CUDA_SUCCESS;
}

CUresult cuMemFree(CUdeviceptr dp) {
  EMU_CTX();
  for (int i = 0; i < emu_n_allocs; i++)
    if (emu_allocs[i].p == dp) {
      munmap(emu_allocs[i].map, emu_allocs[i].maplen);
      emu_used -= emu_allocs[i].n;
      emu_allocs[i] = emu_allocs[--emu_n_allocs];
      return CUDA_SUCCESS;
    }
  emu_report("cuMemFree(0x%llx): not the start of a live allocation", (unsigned long long)dp);
  return CUDA_ERROR_INVALID_VALUE;
}

CUresult cuMemGetInfo(size_t *fr, size_t *total) {
  EMU_CTX();
  if (!fr || !total) return CUDA_ERROR_INVALID_VALUE;
  *total = EMU_TOTAL_MEM;
  *fr = EMU_TOTAL_MEM - emu_used;
  return CUDA_SUCCESS;
}

static CUresult emu_range(const char *call, const char *side, CUdeviceptr p, size_t n) {
  const char *why;
  if (!emu_mem_check((uintptr_t)p, n, &why)) return CUDA_SUCCESS;
  emu_report("%s: %s range [0x%llx, +%zu) %s", call, side, (unsigned long long)p, n, why);
  return CUDA_ERROR_INVALID_VALUE;
}

CUresult cuMemcpyHtoD(CUdeviceptr dst, const void *src, size_t n) {
  EMU_CTX();
  CUresult r = emu_range("cuMemcpyHtoD", "destination", dst, n);
  if (r) return r;
  if (n && !src) return CUDA_ERROR_INVALID_VALUE;
  if (n) memcpy((void *)(uintptr_t)dst, src, n);
  return CUDA_SUCCESS;
}

CUresult cuMemcpyDtoH(void *dst, CUdeviceptr src, size_t n) {
  EMU_CTX();
  CUresult r = emu_range("cuMemcpyDtoH", "source", src, n);
  if (r) return r;
  if (n && !dst) return CUDA_ERROR_INVALID_VALUE;
  if (n) memcpy(dst, (const void *)(uintptr_t)src, n);
  return CUDA_SUCCESS;
}

CUresult cuMemcpyDtoD(CUdeviceptr dst, CUdeviceptr src, size_t n) {
  EMU_CTX();
  CUresult r = emu_range("cuMemcpyDtoD", "source", src, n);
  if (!r) r = emu_range("cuMemcpyDtoD", "destination", dst, n);
  if (r) return r;
  if (n) memmove((void *)(uintptr_t)dst, (const void *)(uintptr_t)src, n);
  return CUDA_SUCCESS;
}

CUresult cuMemsetD8(CUdeviceptr dst, unsigned char v, size_t n) {
  EMU_CTX();
  CUresult r = emu_range("cuMemsetD8", "destination", dst, n);
  if (r) return r;
  if (n) memset((void *)(uintptr_t)dst, v, n);
  return CUDA_SUCCESS;
}

/* ---- modules ----------------------------------------------------------------------- */

struct CUfunc_st {
  char name[128];
  int (*launch)(int mode, void **args); /* poc_emu_kernel_NAME from cuda_emul.h */
  int bound, uses_shared;
  struct CUmod_st *mod;
  struct CUfunc_st *next;
};

struct CUmod_st {
  void *dl;
  char *shared_b, *shared_e; /* the module's __shared__ variables */
  struct CUfunc_st *funcs;
};

static poc_emu_rt emu_rt;

static CUresult emu_jit_fail(unsigned n, CUjit_option *opt, void **val, const char *msg) {
  emu_report("cuModuleLoadDataEx: %s", msg);
  char *buf = NULL;
  size_t cap = 0;
  for (unsigned i = 0; i < n && opt && val; i++) {
    if (opt[i] == CU_JIT_ERROR_LOG_BUFFER) buf = val[i];
    if (opt[i] == CU_JIT_ERROR_LOG_BUFFER_SIZE_BYTES) cap = (size_t)(uintptr_t)val[i];
  }
  if (buf && cap) snprintf(buf, cap, "%s", msg);
  return CUDA_ERROR_NO_BINARY_FOR_GPU;
}

/* The image is the NVRTC stand-in's: a cubin of the device's major version and no newer
 * minor, or PTX for compute_XY no newer than the device, as the device would accept. The
 * .so goes to a temporary file only for dlopen. */
CUresult cuModuleLoadDataEx(CUmodule *mod, const void *image, unsigned n, CUjit_option *opt,
                            void **val) {
  EMU_CTX();
  if (!mod || !image) return CUDA_ERROR_INVALID_VALUE;
  emu_image h;
  memcpy(&h, image, sizeof h);
  if (memcmp(h.magic, EMU_IMAGE_MAGIC, 8))
    return emu_jit_fail(n, opt, val, "not an image of the emulation's NVRTC (a real cubin?)");
  int cc = emu_cc();
  if (h.is_ptx ? (int)h.arch > cc : (int)h.arch / 10 != cc / 10 || (int)h.arch > cc)
    return emu_jit_fail(n, opt, val, h.is_ptx ? "PTX for a newer architecture than the device"
                                              : "cubin for another architecture than the device's");
  const char *tmp = getenv("TMPDIR");
  char path[512];
  snprintf(path, sizeof path, "%s/poc-cuemu-XXXXXX.so", tmp && *tmp ? tmp : "/tmp");
  int fd = mkstemps(path, 3);
  if (fd < 0) return emu_jit_fail(n, opt, val, "cannot write a temporary file");
  const char *so = (const char *)image + sizeof h;
  size_t left = h.size;
  while (left) {
    ssize_t w = write(fd, so + (h.size - left), left);
    if (w <= 0) break;
    left -= (size_t)w;
  }
  close(fd);
  void *dl = left ? NULL : dlopen(path, RTLD_NOW | RTLD_LOCAL);
  unlink(path);
  if (!dl) return emu_jit_fail(n, opt, val, "dlopen of the compiled kernels failed");
  poc_emu_rt **rt = dlsym(dl, "poc_emu_rt_ptr");
  void (*range)(char **, char **) = (void (*)(char **, char **))dlsym(dl, "poc_emu_shared_range");
  struct CUmod_st *m = calloc(1, sizeof *m);
  if (!rt || !range || !m) {
    free(m);
    dlclose(dl);
    return emu_jit_fail(n, opt, val, "the module was not built with cuda_emul.h");
  }
  *rt = &emu_rt;
  range(&m->shared_b, &m->shared_e);
  m->dl = dl;
  *mod = m;
  return CUDA_SUCCESS;
}

CUresult cuModuleUnload(CUmodule m) {
  EMU_INIT();
  if (!m) return CUDA_ERROR_INVALID_HANDLE;
  for (struct CUfunc_st *f = m->funcs, *next; f; f = next) {
    next = f->next;
    free(f);
  }
  dlclose(m->dl);
  free(m);
  return CUDA_SUCCESS;
}

CUresult cuModuleGetFunction(CUfunction *fn, CUmodule m, const char *name) {
  EMU_CTX();
  if (!fn || !m || !name) return CUDA_ERROR_INVALID_VALUE;
  for (struct CUfunc_st *f = m->funcs; f; f = f->next)
    if (!strcmp(f->name, name)) {
      *fn = f;
      return CUDA_SUCCESS;
    }
  char sym[160];
  snprintf(sym, sizeof sym, "poc_emu_kernel_%s", name);
  void *p = strlen(name) < 128 ? dlsym(m->dl, sym) : NULL;
  struct CUfunc_st *f = p ? calloc(1, sizeof *f) : NULL;
  if (!f) return CUDA_ERROR_NOT_FOUND;
  snprintf(f->name, sizeof f->name, "%s", name);
  *(void **)&f->launch = p;
  f->bound = f->launch(POC_EMU_BOUND, NULL);
  f->uses_shared = f->launch(POC_EMU_SHARED, NULL);
  f->mod = m;
  f->next = m->funcs;
  m->funcs = f;
  *fn = f;
  return CUDA_SUCCESS;
}

/* ---- the scheduler ----------------------------------------------------------------- */

enum { EMU_READY, EMU_RUNNING, EMU_BARRIER, EMU_WARP, EMU_EXITED };

typedef struct {
  jmp_buf jb;      /* where the fibre continues */
  char *mem;       /* its stack, an inaccessible page at the bottom */
  int made;        /* parked at the top of emu_fibre_main */
  int state;
  int op, arg, width;
  uint64_t val, res;
  const char *file;
  int line;
} emu_fibre;

typedef struct {
  unsigned arrived, mask;
  int op;
  const char *file;
  int line;
} emu_warp_state;

static struct {
  emu_fibre f[EMU_MAX_THREADS];
  jmp_buf jb;                   /* the scheduler's side of every switch */
  emu_fibre *boot;              /* the fibre being created */
  CUfunction fn;
  void **args;
  unsigned nthr, bx, by;
  int ready[EMU_MAX_THREADS], nready;
  int lifo;                     /* this block resumes the latest released group first */
  unsigned cur, live;
  unsigned bar_n;               /* threads waiting at the barrier */
  const char *bar_file;
  int bar_line;
  emu_warp_state warp[EMU_MAX_THREADS / 32];
  int in_kernel;
} S;

static void emu_yield(void) {
  emu_fibre *f = &S.f[S.cur];
  if (!_setjmp(f->jb)) _longjmp(S.jb, 1);
}

/* A fault inside a thread: report it with the thread's coordinates and leave the block. */
__attribute__((noreturn, format(printf, 1, 2))) static void emu_fail(const char *fmt, ...) {
  char msg[700];
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(msg, sizeof msg, fmt, ap);
  va_end(ap);
  emu_report("kernel %s, block (%u,%u,%u), thread (%u,%u,%u): %s", S.fn->name, emu_rt.bid.x,
             emu_rt.bid.y, emu_rt.bid.z, emu_rt.tid.x, emu_rt.tid.y, emu_rt.tid.z, msg);
  _longjmp(S.jb, 2);
}

static void emu_run_ready(unsigned t) {
  S.f[t].state = EMU_READY;
  S.ready[S.nready++] = (int)t;
}

/* Shuffles ready[from..]: the group just released, in a random order. */
static void emu_shuffle_from(int from) {
  for (int i = S.nready; i - from > 1; i--) {
    int j = from + (int)(emu_rand() % (uint64_t)(i - from)), t = S.ready[i - 1];
    S.ready[i - 1] = S.ready[j];
    S.ready[j] = t;
  }
}

static void emu_release_barrier(void) {
  int from = S.nready;
  for (unsigned t = 0; t < S.nthr; t++)
    if (S.f[t].state == EMU_BARRIER) emu_run_ready(t);
  emu_shuffle_from(from);
  S.bar_n = 0;
}

static void emu_sync(const char *file, int line) {
  emu_fibre *f = &S.f[S.cur];
  if (S.bar_n == 0) {
    S.bar_file = file;
    S.bar_line = line;
  } else if (line != S.bar_line || (file != S.bar_file && strcmp(file, S.bar_file))) {
    emu_fail("barrier divergence: __syncthreads at %s:%d while %u threads wait at %s:%d", file,
             line, S.bar_n, S.bar_file, S.bar_line);
  }
  f->state = EMU_BARRIER;
  f->file = file;
  f->line = line;
  if (++S.bar_n == S.live) emu_release_barrier();
  emu_yield();
}

/* Every lane of the mask has arrived: each gets its result, and all run again. */
static void emu_warp_release(unsigned w) {
  emu_warp_state *W = &S.warp[w];
  emu_fibre *lanes = &S.f[w * 32];
  unsigned ballot = 0;
  int from = S.nready;
  for (unsigned l = 0; l < 32; l++)
    if (W->mask >> l & 1 && lanes[l].val) ballot |= 1u << l;
  for (unsigned l = 0; l < 32; l++) {
    if (!(W->mask >> l & 1)) continue;
    emu_fibre *f = &lanes[l];
    unsigned wd = (unsigned)f->width, seg = l & ~(wd - 1), src = l;
    switch (W->op) {
      case POC_EMU_SHFL_IDX: src = seg + ((unsigned)f->arg & (wd - 1)); break;
      case POC_EMU_SHFL_XOR: src = l ^ (unsigned)f->arg; if ((src & ~(wd - 1)) != seg) src = l; break;
      case POC_EMU_SHFL_DOWN: if ((l & (wd - 1)) + (unsigned)f->arg < wd) src = l + (unsigned)f->arg; break;
      case POC_EMU_SHFL_UP: if ((l & (wd - 1)) >= (unsigned)f->arg) src = l - (unsigned)f->arg; break;
      default: break;
    }
    if (W->op <= POC_EMU_SHFL_UP) {
      if (src > 31 || !(W->mask >> src & 1)) {
        S.cur = w * 32 + l;
        emu_fail("a shuffle at %s:%d reads lane %u, which is not in the mask 0x%08x", W->file,
                 W->line, src, W->mask);
      }
      f->res = lanes[src].val;
    } else {
      f->res = W->op == POC_EMU_BALLOT ? ballot : 0;
    }
    emu_run_ready(w * 32 + l);
  }
  emu_shuffle_from(from);
  W->arrived = 0;
}

static uint64_t emu_warp(int op, unsigned mask, uint64_t v, int arg, int width, const char *file,
                         int line) {
  unsigned t = S.cur, w = t / 32, lane = t % 32;
  unsigned n_lanes = S.nthr - w * 32 < 32 ? S.nthr - w * 32 : 32;
  unsigned exists = n_lanes == 32 ? 0xffffffffu : (1u << n_lanes) - 1;
  emu_warp_state *W = &S.warp[w];
  emu_fibre *f = &S.f[t];
  if (!(mask >> lane & 1))
    emu_fail("lane %u calls a warp operation at %s:%d with mask 0x%08x, which leaves it out",
             lane, file, line, mask);
  if (mask & ~exists)
    emu_fail("the mask 0x%08x at %s:%d names lanes beyond the block's %u threads", mask, file,
             line, S.nthr);
  if (width < 1 || width > 32 || (width & (width - 1)) || arg < 0)
    emu_fail("warp operation at %s:%d: width %d / lane argument %d out of range", file, line,
             width, arg);
  if (W->arrived == 0) {
    W->mask = mask;
    W->op = op;
    W->file = file;
    W->line = line;
  } else if (W->mask != mask || W->op != op || W->line != line ||
             (W->file != file && strcmp(W->file, file))) {
    emu_fail("warp divergence: lane %u reaches %s:%d (mask 0x%08x) while lanes 0x%08x wait at "
             "%s:%d (mask 0x%08x)", lane, file, line, mask, W->arrived, W->file, W->line, W->mask);
  }
  f->op = op;
  f->arg = arg;
  f->width = width;
  f->val = v;
  f->file = file;
  f->line = line;
  f->state = EMU_WARP;
  W->arrived |= 1u << lane;
  if (W->arrived == mask) emu_warp_release(w);
  emu_yield();
  return f->res;
}

static int emu_check_ptr(const void *p, int arg) {
  const char *why;
  if (arg < 0) {
    emu_report("launch of %s: kernelParams[%d] is null", S.fn->name, -1 - arg);
    return 1;
  }
  if (!p || !emu_mem_check((uintptr_t)p, 0, &why)) return 0;
  emu_report("launch of %s: pointer argument %d (%p) is %s", S.fn->name, arg, p, why);
  return 1;
}

static void emu_trap(const char *what, const char *file, int line) {
  emu_fail("%s at %s:%d", what, file, line);
}

static poc_emu_rt emu_rt = {.sync = emu_sync, .warp = emu_warp, .check_ptr = emu_check_ptr,
                            .trap = emu_trap};

static void emu_thread_exit(void) {
  S.f[S.cur].state = EMU_EXITED;
  S.live--;
  /* threads that have returned do not hold the others' barrier */
  if (S.bar_n && S.bar_n == S.live) emu_release_barrier();
}

static void emu_fibre_main(void) {
  emu_fibre *f = S.boot;
  for (;;) {
    if (!_setjmp(f->jb)) _longjmp(S.jb, 1); /* parked until given a thread */
    S.fn->launch(POC_EMU_RUN, S.args);
    emu_thread_exit();
  }
}

static int emu_fibre_make(emu_fibre *f) {
  size_t page = (size_t)sysconf(_SC_PAGESIZE);
  if (!f->mem) {
    char *m = mmap(NULL, EMU_STACK + page, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (m == MAP_FAILED) return -1;
    mprotect(m, page, PROT_NONE); /* a stack overflow faults */
    f->mem = m;
  }
  static ucontext_t uc, here;
  getcontext(&uc);
  uc.uc_stack.ss_sp = f->mem;
  uc.uc_stack.ss_size = EMU_STACK + page;
  uc.uc_link = NULL;
  makecontext(&uc, emu_fibre_main, 0);
  S.boot = f;
  if (!_setjmp(S.jb)) swapcontext(&here, &uc);
  f->made = 1;
  return 0;
}

/* SIGSEGV inside a kernel: say which thread of which kernel, then let the fault proceed. */
static struct sigaction emu_old_segv;
static void emu_segv(int sig, siginfo_t *si, void *uc) {
  (void)uc;
  if (S.in_kernel)
    fprintf(stderr, "cuda emulation: kernel %s, block (%u,%u,%u), thread (%u,%u,%u): invalid "
            "memory access at %p (past an allocation's end, freed, or a stack overflow)\n",
            S.fn->name, emu_rt.bid.x, emu_rt.bid.y, emu_rt.bid.z, emu_rt.tid.x, emu_rt.tid.y,
            emu_rt.tid.z, si->si_addr);
  sigaction(sig, &emu_old_segv, NULL);
}

static void emu_segv_install(void) {
  static int done;
  if (done) return;
  done = 1;
  static char alt[64 << 10];
  stack_t ss = {.ss_sp = alt, .ss_size = sizeof alt};
  sigaltstack(&ss, NULL);
  struct sigaction sa;
  memset(&sa, 0, sizeof sa);
  sa.sa_sigaction = emu_segv;
  sa.sa_flags = SA_SIGINFO | SA_ONSTACK;
  sigemptyset(&sa.sa_mask);
  sigaction(SIGSEGV, &sa, &emu_old_segv);
}

/* Runs one block to the end; -1 when a thread failed or the block deadlocked. */
static int emu_run_block(void) {
  if (S.fn->uses_shared && S.fn->mod->shared_e > S.fn->mod->shared_b)
    memset(S.fn->mod->shared_b, 0xff, (size_t)(S.fn->mod->shared_e - S.fn->mod->shared_b));
  S.nready = 0;
  for (unsigned t = 0; t < S.nthr; t++) {
    if (!S.f[t].made && emu_fibre_make(&S.f[t])) {
      emu_report("cannot allocate fibre stacks");
      return -1;
    }
    emu_run_ready(t);
  }
  emu_shuffle_from(0);
  S.lifo = (int)(emu_rand() & 1);
  memset(S.warp, 0, sizeof S.warp);
  S.live = S.nthr;
  S.bar_n = 0;
  while (S.nready > 0) {
    int k = S.lifo ? S.nready - 1 : (int)(emu_rand() % (uint64_t)S.nready);
    S.cur = (unsigned)S.ready[k];
    S.ready[k] = S.ready[--S.nready];
    emu_rt.tid = (poc_emu_uint3){S.cur % S.bx, S.cur / S.bx % S.by, S.cur / (S.bx * S.by)};
    S.f[S.cur].state = EMU_RUNNING;
    int rc = _setjmp(S.jb);
    if (rc == 0) _longjmp(S.f[S.cur].jb, 1);
    if (rc == 2) {
      for (unsigned t = 0; t < S.nthr; t++) S.f[t].made = 0; /* abandoned mid-kernel */
      return -1;
    }
  }
  if (S.live == 0) return 0;
  /* nobody can run, yet some have not returned */
  unsigned at_bar = 0, at_warp = 0, first_warp = 0;
  for (unsigned t = S.nthr; t-- > 0;) {
    if (S.f[t].state == EMU_BARRIER) at_bar++;
    if (S.f[t].state == EMU_WARP) at_warp++, first_warp = t;
    S.f[t].made = 0;
  }
  emu_report("kernel %s, block (%u,%u,%u): deadlock: %u of %u threads wait at __syncthreads "
             "(%s:%d) and %u at a warp operation (%s:%d) that the others never reach",
             S.fn->name, emu_rt.bid.x, emu_rt.bid.y, emu_rt.bid.z, at_bar, S.nthr,
             at_bar ? S.bar_file : "-", at_bar ? S.bar_line : 0, at_warp,
             at_warp ? S.f[first_warp].file : "-", at_warp ? S.f[first_warp].line : 0);
  return -1;
}

/* POC_CUDA_EMU_FAULT=NAME:N: whether this launch of `name` is the one to fail. */
static int emu_injected_fault(const char *name) {
  static unsigned long count;
  const char *s = getenv("POC_CUDA_EMU_FAULT"), *colon = s ? strrchr(s, ':') : NULL;
  if (!colon || strlen(name) != (size_t)(colon - s) || strncmp(s, name, (size_t)(colon - s)))
    return 0;
  return ++count == strtoul(colon + 1, NULL, 10);
}

CUresult cuLaunchKernel(CUfunction f, unsigned gx, unsigned gy, unsigned gz, unsigned bx,
                        unsigned by, unsigned bz, unsigned shmem, CUstream stream, void **params,
                        void **extra) {
  EMU_CTX();
  if (!f) return CUDA_ERROR_INVALID_HANDLE;
  const char *bad = NULL;
  unsigned long long nthr = (unsigned long long)bx * by * bz;
  if (!gx || !gy || !gz || !bx || !by || !bz) bad = "a zero grid or block dimension";
  else if (bx > 1024 || by > 1024 || bz > 64 || nthr > EMU_MAX_THREADS) bad = "a block beyond 1024 threads";
  else if (gx > 0x7fffffffu || gy > 65535 || gz > 65535) bad = "a grid beyond the device's limits";
  else if (f->bound && nthr > (unsigned)f->bound) bad = "more threads than its __launch_bounds__";
  else if (shmem) bad = "dynamic shared memory (not emulated)";
  else if (stream) bad = "a stream other than the default one (not emulated)";
  else if (extra || !params) bad = "arguments through `extra` or none at all";
  if (bad) {
    emu_report("launch of %s (grid %u×%u×%u, block %u×%u×%u): %s", f->name, gx, gy, gz, bx, by,
               bz, bad);
    return f->bound && nthr > (unsigned)f->bound ? CUDA_ERROR_LAUNCH_OUT_OF_RESOURCES
                                                 : CUDA_ERROR_INVALID_VALUE;
  }
  S.fn = f;
  S.args = params;
  if (f->launch(POC_EMU_CHECK, params)) return emu_sticky = CUDA_ERROR_ILLEGAL_ADDRESS;
  if (emu_injected_fault(f->name)) {
    emu_report("kernel %s: injected fault (POC_CUDA_EMU_FAULT)", f->name);
    emu_sticky = CUDA_ERROR_ILLEGAL_ADDRESS;
    return CUDA_SUCCESS; /* as on a device: the launch was queued; the fault shows later */
  }
  unsigned long long nblk = (unsigned long long)gx * gy * gz;
  if (nblk > (1ull << 26)) {
    emu_report("launch of %s: %llu blocks is more than the emulation runs", f->name, nblk);
    return CUDA_ERROR_INVALID_VALUE;
  }
  uint32_t *order = malloc(nblk * sizeof *order);
  if (!order) return CUDA_ERROR_OUT_OF_MEMORY;
  for (uint32_t i = 0; i < nblk; i++) order[i] = i;
  for (uint32_t i = (uint32_t)nblk; i > 1; i--) { /* Fisher–Yates */
    uint32_t j = (uint32_t)(emu_rand() % i), t = order[i - 1];
    order[i - 1] = order[j];
    order[j] = t;
  }
  emu_segv_install();
  S.nthr = (unsigned)nthr;
  S.bx = bx;
  S.by = by;
  emu_rt.bdim = (poc_emu_uint3){bx, by, bz};
  emu_rt.gdim = (poc_emu_uint3){gx, gy, gz};
  S.in_kernel = 1;
  CUresult r = CUDA_SUCCESS;
  for (unsigned long long i = 0; i < nblk && r == CUDA_SUCCESS; i++) {
    uint32_t b = order[i];
    emu_rt.bid = (poc_emu_uint3){b % gx, b / gx % gy, b / (gx * gy)};
    if (emu_run_block()) r = emu_sticky = CUDA_ERROR_LAUNCH_FAILED;
  }
  S.in_kernel = 0;
  free(order);
  return r;
}

/* ---- error names ------------------------------------------------------------------- */

static const struct { CUresult r; const char *name, *text; } emu_errs[] = {
    {CUDA_SUCCESS, "CUDA_SUCCESS", "no error"},
    {CUDA_ERROR_INVALID_VALUE, "CUDA_ERROR_INVALID_VALUE", "invalid argument"},
    {CUDA_ERROR_OUT_OF_MEMORY, "CUDA_ERROR_OUT_OF_MEMORY", "out of memory"},
    {CUDA_ERROR_NOT_INITIALIZED, "CUDA_ERROR_NOT_INITIALIZED", "initialization error"},
    {CUDA_ERROR_NO_DEVICE, "CUDA_ERROR_NO_DEVICE", "no CUDA-capable device is detected"},
    {CUDA_ERROR_INVALID_DEVICE, "CUDA_ERROR_INVALID_DEVICE", "invalid device ordinal"},
    {CUDA_ERROR_INVALID_CONTEXT, "CUDA_ERROR_INVALID_CONTEXT", "invalid device context"},
    {CUDA_ERROR_NO_BINARY_FOR_GPU, "CUDA_ERROR_NO_BINARY_FOR_GPU", "no kernel image is available for execution on the device"},
    {CUDA_ERROR_INVALID_HANDLE, "CUDA_ERROR_INVALID_HANDLE", "invalid resource handle"},
    {CUDA_ERROR_NOT_FOUND, "CUDA_ERROR_NOT_FOUND", "named symbol not found"},
    {CUDA_ERROR_ILLEGAL_ADDRESS, "CUDA_ERROR_ILLEGAL_ADDRESS", "an illegal memory access was encountered"},
    {CUDA_ERROR_LAUNCH_OUT_OF_RESOURCES, "CUDA_ERROR_LAUNCH_OUT_OF_RESOURCES", "too many resources requested for launch"},
    {CUDA_ERROR_LAUNCH_FAILED, "CUDA_ERROR_LAUNCH_FAILED", "unspecified launch failure"},
};

CUresult cuGetErrorName(CUresult r, const char **s) {
  for (size_t i = 0; i < sizeof emu_errs / sizeof emu_errs[0]; i++)
    if (emu_errs[i].r == r) return *s = emu_errs[i].name, CUDA_SUCCESS;
  *s = NULL;
  return CUDA_ERROR_INVALID_VALUE;
}

CUresult cuGetErrorString(CUresult r, const char **s) {
  for (size_t i = 0; i < sizeof emu_errs / sizeof emu_errs[0]; i++)
    if (emu_errs[i].r == r) return *s = emu_errs[i].text, CUDA_SUCCESS;
  *s = NULL;
  return CUDA_ERROR_INVALID_VALUE;
}
