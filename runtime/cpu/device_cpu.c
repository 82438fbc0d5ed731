/* device_cpu.c — the CPU devices: "cpu" (float), "cpu64" (double, for gradient checks)
 * and, where oneDNN was found, "cpu-bf16" (bf16 operands and compute weights, float
 * accumulators, master weights and optimizer state: device.h's roles as on CUDA).
 *
 * Device memory is host memory: a poc_dptr is (uintptr_t) of a pointer, allocations are
 * 64-byte aligned (a cache line, and what OpenBLAS's packed loads like) and zeroed. Work
 * runs synchronously on the calling thread and OpenMP's team, so sync only reports the
 * sticky error. On cpu and cpu64 act and acc are one type (shared_act), so the kernels'
 * casts are copies; cpu-bf16 keeps separate act buffers and rounds into them.
 */
#include <math.h>
#include <omp.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "cpu_features.h"
#include "cpu_internal.h"

typedef struct cpu_device {
  poc_device base;
  cpu_kset *ksets;   /* one per set of dimensions asked for, freed at close */
  cpu_dnnl *dnnl;    /* cpu-bf16: oneDNN's engine and stream */
} cpu_device;

/* No address space holds this much; refusing it up front gives the message below instead
 * of leaving it to an allocator that may abort (AddressSanitizer's does). */
#define CPU_ALLOC_MAX ((size_t)1 << 48)

/* ---- memory ----------------------------------------------------------------------------- */

static double cpu_gib(double bytes) { return bytes / (1024.0 * 1024.0 * 1024.0); }

static poc_dptr cpu_alloc(poc_device *d, size_t bytes, const char *what) {
  if (d->failed) return 0;
  /* at least one line, so a zero-sized buffer still has an address that is not "none" */
  size_t sz = bytes <= CPU_ALLOC_MAX ? (bytes + 63) & ~(size_t)63 : 0;
  void *raw = NULL;
  if (sz == 0 && bytes == 0) sz = 64;
  /* calloc rather than an aligned malloc and memset: a large calloc comes from fresh
     pages the kernel zeroes on first touch, so a buffer costs resident memory only where
     it is used (a workspace sized for the longest pack, a rarely full KV cache). The
     aligned address keeps calloc's pointer just below it for cpu_free. */
  if (sz == 0 || sz > SIZE_MAX - 72 || !(raw = calloc(1, sz + 72))) {
    long pages = sysconf(_SC_AVPHYS_PAGES), psz = sysconf(_SC_PAGESIZE);
    double avail = pages > 0 && psz > 0 ? (double)pages * (double)psz : 0;
    poc_dev_fail(d, "%s: out of memory for %s (%zu bytes = %.2f GiB; %.2f GiB free)",
                 d->name, what ? what : "a buffer", bytes, cpu_gib((double)bytes),
                 cpu_gib(avail));
    return 0;
  }
  uintptr_t a = ((uintptr_t)raw + sizeof(void *) + 63) & ~(uintptr_t)63;
  ((void **)a)[-1] = raw;
  return (poc_dptr)a;
}

static void cpu_free(poc_device *d, poc_dptr p) {
  (void)d;
  if (p) free(((void **)(uintptr_t)p)[-1]);
}

/* n elements of type st at src to type dt at dst (distinct buffers). */
static int cpu_convert(void *dst, poc_dtype dt, const void *src, poc_dtype st, size_t n) {
  if (dt == st) {
    if (n) memcpy(dst, src, n * poc_dtype_size(dt));
    return 0;
  }
  if (dt == POC_DT_I32 || st == POC_DT_I32) return -1;
  for (size_t i = 0; i < n; i++) {
    switch (dt) {
    case POC_DT_F32: {
      float v = st == POC_DT_F64 ? (float)((const double *)src)[i]
                                 : poc_bf16_to_f32(((const uint16_t *)src)[i]);
      ((float *)dst)[i] = v;
      break;
    }
    case POC_DT_F64:
      ((double *)dst)[i] = st == POC_DT_F32 ? (double)((const float *)src)[i]
                                            : poc_bf16_to_f32(((const uint16_t *)src)[i]);
      break;
    case POC_DT_BF16:
      ((uint16_t *)dst)[i] = st == POC_DT_F32 ? poc_bf16_from_f32(((const float *)src)[i])
                                              : poc_bf16_from_f64(((const double *)src)[i]);
      break;
    default:
      return -1;
    }
  }
  return 0;
}

static const char *cpu_dtype_name(poc_dtype t) {
  switch (t) {
  case POC_DT_F32: return "f32";
  case POC_DT_F64: return "f64";
  case POC_DT_BF16: return "bf16";
  case POC_DT_I32: return "i32";
  }
  return "?";
}

static void cpu_put(poc_device *d, poc_dptr dst, poc_dtype dt, const void *src, poc_dtype st,
                    size_t n) {
  if (d->failed) return;
  if (cpu_convert((void *)(uintptr_t)dst, dt, src, st, n))
    poc_dev_fail(d, "%s: cannot copy %s host data into a %s buffer", d->name,
                 cpu_dtype_name(st), cpu_dtype_name(dt));
}

static void cpu_get(poc_device *d, void *dst, poc_dtype dt, poc_dptr src, poc_dtype st,
                    size_t n) {
  if (d->failed) return;
  if (cpu_convert(dst, dt, (const void *)(uintptr_t)src, st, n))
    poc_dev_fail(d, "%s: cannot copy a %s buffer into %s host data", d->name,
                 cpu_dtype_name(st), cpu_dtype_name(dt));
}

static void cpu_copy(poc_device *d, poc_dptr dst, poc_dptr src, size_t bytes) {
  if (d->failed || dst == src || !bytes) return;
  memmove((void *)(uintptr_t)dst, (const void *)(uintptr_t)src, bytes);
}

static void cpu_zero(poc_device *d, poc_dptr dst, size_t bytes) {
  if (d->failed || !bytes) return;
  memset((void *)(uintptr_t)dst, 0, bytes);
}

static int cpu_sync(poc_device *d, char *err) {
  if (!d->failed) return 0;
  if (err) snprintf(err, POC_ERR_LEN, "%s", d->err);
  return -1;
}

/* ---- kernels ---------------------------------------------------------------------------- */

static int cpu_dims_equal(const poc_dims *a, const poc_dims *b) {
  return a->H == b->H && a->F == b->F && a->V == b->V && a->nh == b->nh && a->nkv == b->nkv &&
         a->hd == b->hd && a->eps == b->eps;
}

static poc_kset *cpu_kernels(poc_device *d, const poc_dims *dm) {
  cpu_device *c = (cpu_device *)d;
  if (d->failed) return NULL;
  for (cpu_kset *k = c->ksets; k; k = k->next)
    if (cpu_dims_equal(&k->base.dm, dm)) return &k->base;
  /* the kernels index heads by h / (nh/nkv) and rotate pairs (i, i + hd/2) */
  if (dm->H <= 0 || dm->F <= 0 || dm->V <= 0 || dm->nh <= 0 || dm->nkv <= 0 || dm->hd <= 0 ||
      dm->nh % dm->nkv || dm->hd % 2) {
    poc_dev_fail(d, "%s: unusable dimensions (H %d, F %d, V %d, %d heads, %d kv heads, "
                 "head_dim %d)", d->name, dm->H, dm->F, dm->V, dm->nh, dm->nkv, dm->hd);
    return NULL;
  }
  cpu_kset *k = calloc(1, sizeof *k);
  if (!k) {
    poc_dev_fail(d, "%s: out of memory for a kernel set", d->name);
    return NULL;
  }
  k->base.d = d;
  k->base.dm = *dm;
#ifdef POC_HAVE_DNNL
  if (c->dnnl && !(k->gemms = poc_cpu_dnnl_cache_new(c->dnnl))) {
    free(k);
    poc_dev_fail(d, "%s: out of memory for a kernel set", d->name);
    return NULL;
  }
#endif
  k->next = c->ksets;
  c->ksets = k;
  return &k->base;
}

static void cpu_close(poc_device *d) {
  if (!d) return;
  cpu_device *c = (cpu_device *)d;
  while (c->ksets) {
    cpu_kset *n = c->ksets->next;
#ifdef POC_HAVE_DNNL
    poc_cpu_dnnl_cache_free(c->ksets->gemms);
#endif
    free(c->ksets);
    c->ksets = n;
  }
#ifdef POC_HAVE_DNNL
  poc_cpu_dnnl_close(c->dnnl);
#endif
  free(c);
}

/* The run's first line. A richer description of the processor goes here, in one place. */
/* The run's first line: the BLAS, its kernels and why, threads, CPU features
 * (cpu_features.c), e.g. "cpu: OpenBLAS 0.3.21, SkylakeX kernels (corrected from Prescott),
 * 2 threads, avx512f avx512_bf16"; the double device says so. */
static void cpu_describe(poc_device *d, int fp64) {
  char line[sizeof d->desc];
  poc_cpu_describe(line, sizeof line);
  size_t n = sizeof d->desc;
  if (fp64 && !strncmp(line, "cpu: ", 5))
    snprintf(d->desc, n, "cpu64: float64, %.*s", (int)(n - 32), line + 5);
  else
    snprintf(d->desc, n, "%s", line);
}

static cpu_device *cpu_new(const char *name, char *err) {
  cpu_device *c = calloc(1, sizeof *c);
  if (!c) {
    if (err) snprintf(err, POC_ERR_LEN, "%s: out of memory", name);
    return NULL;
  }
  poc_device *d = &c->base;
  d->name = name;
  d->head_rows = CPU_HEAD_ROWS;
  d->head_chunk = 4096; /* columns per fused-head chunk (head_block narrows it) */
  d->host_memory = 1;
  d->head_block = CPU_HEAD_BLOCK;
  d->head_chunk_acc = 1; /* a block in cache: fp32 logits cost nothing (device.h) */
  d->alloc = cpu_alloc;
  d->free = cpu_free;
  d->put = cpu_put;
  d->get = cpu_get;
  d->copy = cpu_copy;
  d->zero = cpu_zero;
  d->sync = cpu_sync;
  d->kernels = cpu_kernels;
  d->close = cpu_close;
  return c;
}

poc_device *poc_cpu_device_open(int fp64, char *err) {
  cpu_device *c = cpu_new(fp64 ? "cpu64" : "cpu", err);
  if (!c) return NULL;
  poc_device *d = &c->base;
  d->acc = d->act = fp64 ? POC_DT_F64 : POC_DT_F32;
  d->shared_act = 1;
  if (fp64)
    poc_cpu_kernels_f64(&d->k);
  else
    poc_cpu_kernels_f32(&d->k);
  cpu_describe(d, fp64);
  return d;
}

#ifdef POC_HAVE_DNNL
/* The device line: oneDNN's part, then the CPU's ("cpu-bf16: bf16 operands, fp32
 * accumulators; oneDNN 2.6.3, avx512_core_bf16, matmul brg:avx512_core_bf16; OpenBLAS ...,
 * 2 threads, ..."; OpenBLAS only names the machine here, it runs no GEMM). */
poc_device *poc_cpu_bf16_device_open(char *err) {
  char dn[160];
  cpu_dnnl *e = poc_cpu_dnnl_open(dn, sizeof dn, err);
  if (!e) return NULL;
  cpu_device *c = cpu_new("cpu-bf16", err);
  if (!c) {
    poc_cpu_dnnl_close(e);
    return NULL;
  }
  poc_device *d = &c->base;
  c->dnnl = e;
  d->acc = POC_DT_F32;
  d->act = POC_DT_BF16;
  d->shared_act = 0;
  poc_cpu_kernels_b16(&d->k);
  char line[sizeof d->desc];
  poc_cpu_describe(line, sizeof line);
  snprintf(d->desc, sizeof d->desc, "cpu-bf16: bf16 operands, fp32 accumulators; %s; %.*s", dn,
           (int)(sizeof d->desc - 240), !strncmp(line, "cpu: ", 5) ? line + 5 : line);
  return d;
}
#endif
