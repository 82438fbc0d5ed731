/* device_cuda.c — the CUDA device behind device.h: memory on the driver API, the kernels
 * of kernels/templates (NVRTC, one module per set of dimensions) and cuBLAS GEMMs.
 *
 * Types: acc is fp32, act is bf16 (GEMM and attention operands, the compute copy of the
 * weights). Every kernel member below launches the template kernel(s) of the same name
 * as docs/cuda.md's table says.
 *
 * Work is issued on the legacy default stream, so kernels, cuBLAS and copies run in order.
 * Launch errors are recorded at once (sticky, naming the kernel); faults inside a kernel
 * surface at the next synchronising call (sync, get, sumsq). POC_CUDA_SYNC=1 synchronises
 * after every launch so the error names the kernel that faulted and the model stage it
 * came from (the device's stage marker, set by runtime/model.c).
 *
 * The calling thread must have the device's context current: the memory calls, sync and
 * kernels() make it so, and the model calls those before launching anything.
 */
#include <limits.h>
#include <math.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cuda_internal.h"
#include "device.h"

#define DC_SLICES 64           /* column-sum partial slices (norm.cu's grid y) */
#define DC_NORM_BLOCKS 1024    /* sum-of-squares partials (adamw.cu's sumsq_partial) */
#define DC_HEAD_CHUNK 4096     /* vocabulary columns per fused-head block */
#define DC_STAGE_ELEMS (1u << 20)  /* host conversion buffer, elements of at most 8 bytes */

_Static_assert(sizeof(CUdeviceptr) == sizeof(poc_dptr), "a poc_dptr holds a CUdeviceptr");

/* A kernel set: the compiled module for one poc_dims plus the scratch its wrappers need. */
typedef struct dc_kset {
  poc_kset base;
  cu_kernels *K;
  CUdeviceptr part;            /* column-sum / norm-weight partials, DC_SLICES × width fp32 */
  size_t part_bytes;
  CUdeviceptr sq;              /* sumsq partials, DC_NORM_BLOCKS fp32 */
  CUdeviceptr dlog;            /* bf16 dlogits when the model asks for them in place */
  size_t dlog_bytes;
  struct dc_kset *next;
} dc_kset;

typedef struct dc_device {
  poc_device base;
  cu_ctx c;
  dc_kset *sets;
  void *stage;                 /* DC_STAGE_ELEMS × 8 bytes, on first conversion */
  int sync_each;               /* POC_CUDA_SYNC=1 */
} dc_device;

static dc_device *dc_of(poc_device *d) { return (dc_device *)d; }
static dc_kset *ks_of(poc_kset *k) { return (dc_kset *)k; }

/* The sticky error: the first message wins (device.h's poc_dev_fail contract; kept local
 * so this file links on its own). */
#define dc_fail poc_dev_fail

/* Errors a kernel leaves in the context: the driver reports them at whatever call comes
 * next, so they say nothing about that call or the model's current stage. */
static int dc_async_error(CUresult r) {
  return r == CUDA_ERROR_ILLEGAL_ADDRESS || r == CUDA_ERROR_LAUNCH_FAILED ||
         r == CUDA_ERROR_ILLEGAL_INSTRUCTION || r == CUDA_ERROR_MISALIGNED_ADDRESS ||
         r == CUDA_ERROR_INVALID_ADDRESS_SPACE || r == CUDA_ERROR_INVALID_PC ||
         r == CUDA_ERROR_HARDWARE_STACK_ERROR || r == CUDA_ERROR_ASSERT ||
         r == CUDA_ERROR_LAUNCH_TIMEOUT;
}

/* 0, or records "cuda: <what>: <driver error>" and returns -1. A kernel's fault met here
 * is reported as such, without the stage (it may come from any kernel since the last
 * synchronisation), and with the way to find the kernel. */
static int dc_check(poc_device *d, CUresult r, const char *what) {
  if (r == CUDA_SUCCESS) return 0;
  if (dc_async_error(r) && !dc_of(d)->sync_each)
    poc_dev_fail_unstaged(d, "cuda: a kernel failed before %s: %s (POC_CUDA_SYNC=1 names the "
                          "kernel and the model stage)", what, cu_errstr(r));
  else
    dc_fail(d, "cuda: %s: %s", what, cu_errstr(r));
  return -1;
}

static int dc_current(dc_device *dv) {
  return dc_check(&dv->base, cu.cuCtxSetCurrent(dv->c.ctx), "selecting the device");
}

/* ---- memory ------------------------------------------------------------------------- */

static poc_dptr dc_alloc(poc_device *d, size_t bytes, const char *what) {
  dc_device *dv = dc_of(d);
  if (d->failed || dc_current(dv)) return 0;
  CUdeviceptr p = 0;
  /* 0 means "none", so an empty buffer still gets an address */
  CUresult r = cu.cuMemAlloc(&p, bytes ? bytes : 1);
  if (r == CUDA_SUCCESS) return (poc_dptr)p;
  size_t fr = 0, tot = 0;
  if (cu.cuMemGetInfo(&fr, &tot) != CUDA_SUCCESS) fr = tot = 0;
  /* the buffer's name says where; a stage after the advice would only blur it */
  poc_dev_fail_unstaged(d, "cuda: cannot allocate %s (%.2f GiB): %.2f GiB of %.2f GiB free on "
                        "the device (%s); try a smaller micro_batch", what ? what : "a buffer",
                        (double)bytes / (1 << 30), (double)fr / (1 << 30),
                        (double)tot / (1 << 30), cu_errstr(r));
  return 0;
}

static void dc_free(poc_device *d, poc_dptr p) {
  if (!p) return;
  dc_device *dv = dc_of(d);
  cu.cuCtxSetCurrent(dv->c.ctx);
  cu.cuMemFree((CUdeviceptr)p);
}

static const char *dc_tname(poc_dtype t) {
  switch (t) {
    case POC_DT_F32: return "f32";
    case POC_DT_F64: return "f64";
    case POC_DT_BF16: return "bf16";
    case POC_DT_I32: return "i32";
  }
  return "?";
}

static size_t dc_tsize(poc_dtype t) {
  return t == POC_DT_F64 ? 8 : t == POC_DT_BF16 ? 2 : 4;
}

/* Converts n elements from type st at src to type dt at dst (host memory). Floating types
 * convert among themselves; i32 only to i32. */
static int dc_convert(void *dst, poc_dtype dt, const void *src, poc_dtype st, size_t n) {
  if ((dt == POC_DT_I32) != (st == POC_DT_I32)) return -1;
  if (dt == st) {
    memcpy(dst, src, n * dc_tsize(dt));
    return 0;
  }
  for (size_t i = 0; i < n; i++) {
    double x = st == POC_DT_F32 ? ((const float *)src)[i]
             : st == POC_DT_F64 ? ((const double *)src)[i]
                                : poc_bf16_to_f32(((const uint16_t *)src)[i]);
    if (dt == POC_DT_F32) ((float *)dst)[i] = (float)x;
    else if (dt == POC_DT_F64) ((double *)dst)[i] = x;
    else if (st == POC_DT_F32) ((uint16_t *)dst)[i] = poc_bf16_from_f32(((const float *)src)[i]);
    else ((uint16_t *)dst)[i] = poc_bf16_from_f64(x);
  }
  return 0;
}

static void *dc_stage(dc_device *dv) {
  if (!dv->stage) dv->stage = malloc((size_t)DC_STAGE_ELEMS * 8);
  if (!dv->stage) dc_fail(&dv->base, "cuda: out of host memory for the staging buffer");
  return dv->stage;
}

/* host src (type st) → device dst (type dt), through the staging buffer when they differ */
static void dc_put(poc_device *d, poc_dptr dst, poc_dtype dt, const void *src, poc_dtype st,
                   size_t n) {
  dc_device *dv = dc_of(d);
  if (d->failed || n == 0 || dc_current(dv)) return;
  if ((dt == POC_DT_I32) != (st == POC_DT_I32)) {
    dc_fail(d, "cuda: put: cannot convert %s to %s", dc_tname(st), dc_tname(dt));
    return;
  }
  if (dt == st) {
    dc_check(d, cu.cuMemcpyHtoD((CUdeviceptr)dst, src, n * dc_tsize(dt)), "copying to the device");
    return;
  }
  char *stage = dc_stage(dv);
  if (!stage) return;
  /* a pageable-memory copy returns once the source has been read, so the buffer can be
   * refilled at once */
  for (size_t a = 0; a < n; a += DC_STAGE_ELEMS) {
    size_t m = n - a < DC_STAGE_ELEMS ? n - a : DC_STAGE_ELEMS;
    dc_convert(stage, dt, (const char *)src + a * dc_tsize(st), st, m);
    if (dc_check(d, cu.cuMemcpyHtoD((CUdeviceptr)dst + a * dc_tsize(dt), stage, m * dc_tsize(dt)),
                 "copying to the device"))
      return;
  }
}

/* device src (type st) → host dst (type dt); synchronises (queued work finishes first) */
static void dc_get(poc_device *d, void *dst, poc_dtype dt, poc_dptr src, poc_dtype st, size_t n) {
  dc_device *dv = dc_of(d);
  if (d->failed || n == 0 || dc_current(dv)) return;
  if ((dt == POC_DT_I32) != (st == POC_DT_I32)) {
    dc_fail(d, "cuda: get: cannot convert %s to %s", dc_tname(st), dc_tname(dt));
    return;
  }
  if (dt == st) {
    dc_check(d, cu.cuMemcpyDtoH(dst, (CUdeviceptr)src, n * dc_tsize(dt)), "copying from the device");
    return;
  }
  char *stage = dc_stage(dv);
  if (!stage) return;
  for (size_t a = 0; a < n; a += DC_STAGE_ELEMS) {
    size_t m = n - a < DC_STAGE_ELEMS ? n - a : DC_STAGE_ELEMS;
    if (dc_check(d, cu.cuMemcpyDtoH(stage, (CUdeviceptr)src + a * dc_tsize(st), m * dc_tsize(st)),
                 "copying from the device"))
      return;
    dc_convert((char *)dst + a * dc_tsize(dt), dt, stage, st, m);
  }
}

static void dc_copy(poc_device *d, poc_dptr dst, poc_dptr src, size_t bytes) {
  if (d->failed || bytes == 0 || dst == src || dc_current(dc_of(d))) return;
  dc_check(d, cu.cuMemcpyDtoD((CUdeviceptr)dst, (CUdeviceptr)src, bytes), "copying on the device");
}

static void dc_zero(poc_device *d, poc_dptr dst, size_t bytes) {
  if (d->failed || bytes == 0 || dc_current(dc_of(d))) return;
  dc_check(d, cu.cuMemsetD8((CUdeviceptr)dst, 0, bytes), "clearing device memory");
}

static int dc_sync(poc_device *d, char *err) {
  dc_device *dv = dc_of(d);
  if (!d->failed && !dc_current(dv)) {
    CUresult r = cu.cuCtxSynchronize();
    if (r != CUDA_SUCCESS)
      poc_dev_fail_unstaged(d, "cuda: a kernel or copy failed: %s%s", cu_errstr(r),
                            dv->sync_each ? "" : " (POC_CUDA_SYNC=1 names the kernel and the "
                                                 "model stage)");
  }
  if (!d->failed) return 0;
  if (err) snprintf(err, POC_ERR_LEN, "%s", d->err);
  return -1;
}

/* ---- launching ---------------------------------------------------------------------- */

static void dc_launch(dc_kset *s, CUfunction f, const char *name, unsigned gx, unsigned gy,
                      unsigned bx, void **args) {
  poc_device *d = s->base.d;
  if (d->failed || gx == 0 || gy == 0) return;
  CUresult r = cu.cuLaunchKernel(f, gx, gy, 1, bx, 1, 1, 0, NULL, args, NULL);
  if (r != CUDA_SUCCESS) {
    char what[96];
    snprintf(what, sizeof what, "launching %s", name);
    dc_check(d, r, what);
    return;
  }
  if (dc_of(d)->sync_each && (r = cu.cuCtxSynchronize()) != CUDA_SUCCESS)
    dc_fail(d, "cuda: kernel %s failed: %s", name, cu_errstr(r));
}

/* LAUNCH(kernel, grid x, grid y, threads, &arg...): the arguments are addresses of locals
 * of exactly the kernel's parameter types (int, float, unsigned long long for poc_size,
 * CUdeviceptr for pointers). */
#define LAUNCH(kern, gx, gy, bx, ...)                                                   \
  do {                                                                                 \
    void *args_[] = {__VA_ARGS__};                                                     \
    dc_launch(s, s->K->kern, #kern, (unsigned)(gx), (unsigned)(gy), (bx), args_);      \
  } while (0)

/* blocks for a grid-stride loop over n elements: enough to fill the device, no more */
static unsigned dc_grid(const dc_kset *s, size_t n, unsigned threads) {
  size_t g = (n + threads - 1) / threads, cap = (size_t)dc_of(s->base.d)->c.n_sm * 16;
  return (unsigned)(g < cap ? g : cap);
}

/* A kset-owned device buffer of at least `bytes`, grown on demand. The old one is freed
 * only after queued work that may read it has finished. */
static CUdeviceptr dc_scratch(dc_kset *s, CUdeviceptr *p, size_t *have, size_t bytes,
                              const char *what) {
  poc_device *d = s->base.d;
  if (d->failed) return 0;
  if (*p && *have >= bytes) return *p;
  if (*p) {
    if (dc_check(d, cu.cuCtxSynchronize(), "growing a scratch buffer")) return 0;
    cu.cuMemFree(*p);
    *p = 0;
    *have = 0;
  }
  *p = (CUdeviceptr)dc_alloc(d, bytes, what);
  if (*p) *have = bytes;
  return *p;
}

/* ---- the kernels -------------------------------------------------------------------- */

/* The one cuBLAS call. Row-major C[M×N] = op(A)·op(B) + beta·C with bf16 A and B, fp32
 * accumulation, C fp32 or bf16. cuBLAS is column-major, so it computes Cᵀ = op(B)ᵀ·op(A)ᵀ
 * on the same memory with the operands swapped. */
static void dc_blas_gemm(poc_device *d, cublasHandle_t h, int ta, int tb, int M, int N, int K,
                         CUdeviceptr A, int lda, CUdeviceptr B, int ldb, float beta,
                         CUdeviceptr C, int c_f32, int ldc) {
  const float one = 1.f;
  cublasStatus_t st = cb.cublasGemmEx(
      h, tb ? CUBLAS_OP_T : CUBLAS_OP_N, ta ? CUBLAS_OP_T : CUBLAS_OP_N, N, M, K, &one,
      (const void *)B, CUDA_R_16BF, ldb, (const void *)A, CUDA_R_16BF, lda, &beta, (void *)C,
      c_f32 ? CUDA_R_32F : CUDA_R_16BF, ldc, CUBLAS_COMPUTE_32F, CUBLAS_GEMM_DEFAULT);
  if (st != CUBLAS_STATUS_SUCCESS)
    dc_fail(d, "cuda: cuBLAS GEMM %d×%d×%d failed: %s", M, N, K, cb.cublasGetStatusString(st));
}

static void k_gemm(poc_kset *k, int ta, int tb, int M, int N, int K, poc_dptr A, int lda,
                   poc_dptr B, int ldb, float beta, poc_dptr C, int c_acc, int ldc) {
  poc_device *d = k->d;
  if (d->failed || M == 0 || N == 0) return;
  dc_blas_gemm(d, dc_of(d)->c.blas, ta, tb, M, N, K, A, lda, B, ldb, beta, C, c_acc, ldc);
  CUresult r;
  if (!d->failed && dc_of(d)->sync_each && (r = cu.cuCtxSynchronize()) != CUDA_SUCCESS)
    dc_fail(d, "cuda: GEMM %d×%d×%d failed: %s", M, N, K, cu_errstr(r));
}

static void k_embed_fwd(poc_kset *k, int T, poc_dptr tok, poc_dptr E, poc_dptr x) {
  dc_kset *s = ks_of(k);
  CUdeviceptr p_tok = tok, p_E = E, p_x = x;
  LAUNCH(embed_fwd, T, 1, 256, &T, &p_tok, &p_E, &p_x);
}

static void k_embed_bwd(poc_kset *k, int T, poc_dptr tok, poc_dptr dx, poc_dptr dE) {
  dc_kset *s = ks_of(k);
  CUdeviceptr p_tok = tok, p_dx = dx, p_dE = dE;
  LAUNCH(embed_bwd, (k->dm.H + 127) / 128, 1, 128, &T, &p_tok, &p_dx, &p_dE);
}

static void k_rmsnorm_fwd(poc_kset *k, int n, poc_dptr x, poc_dptr rows, poc_dptr w, poc_dptr y,
                          poc_dptr rstd) {
  dc_kset *s = ks_of(k);
  CUdeviceptr p_x = x, p_rows = rows, p_w = w, p_y = y, p_rstd = rstd;
  LAUNCH(rmsnorm_fwd, n, 1, 256, &n, &p_x, &p_rows, &p_w, &p_y, &p_rstd);
}

static void k_rmsnorm_bwd(poc_kset *k, int n, poc_dptr x, poc_dptr rows, poc_dptr w,
                          poc_dptr rstd, poc_dptr dy, poc_dptr dx) {
  dc_kset *s = ks_of(k);
  CUdeviceptr p_x = x, p_rows = rows, p_w = w, p_rstd = rstd, p_dy = dy, p_dx = dx;
  LAUNCH(rmsnorm_bwd, n, 1, 256, &n, &p_x, &p_rows, &p_w, &p_rstd, &p_dy, &p_dx);
}

/* dw += Σ_i dy_i ⊙ x[r]·rstd_i: per-slice partials [DC_SLICES × H], then one pass adding
 * the slices in order, so the sum does not depend on scheduling */
static void k_rmsnorm_dw(poc_kset *k, int n, poc_dptr x, poc_dptr rows, poc_dptr rstd,
                         poc_dptr dy, poc_dptr dw) {
  dc_kset *s = ks_of(k);
  int width = k->dm.H, slices = DC_SLICES;
  CUdeviceptr part = dc_scratch(s, &s->part, &s->part_bytes, (size_t)DC_SLICES * width * 4,
                                "column-sum partials");
  if (!part) return;
  CUdeviceptr p_x = x, p_rows = rows, p_rstd = rstd, p_dy = dy, p_dw = dw;
  LAUNCH(rmsnorm_dw_partial, (width + 255) / 256, DC_SLICES, 256, &n, &p_x, &p_rows, &p_rstd,
         &p_dy, &part);
  LAUNCH(colsum_finish, (width + 255) / 256, 1, 256, &width, &slices, &part, &p_dw);
}

/* out[j] += Σ_t y[t][j], the same two stages */
static void k_colsum(poc_kset *k, int n, int width, poc_dptr y, poc_dptr out) {
  dc_kset *s = ks_of(k);
  if (k->d->failed || width <= 0) return;
  int slices = DC_SLICES;
  CUdeviceptr part = dc_scratch(s, &s->part, &s->part_bytes, (size_t)DC_SLICES * width * 4,
                                "column-sum partials");
  if (!part) return;
  CUdeviceptr p_y = y, p_out = out;
  LAUNCH(colsum_partial, (width + 255) / 256, DC_SLICES, 256, &n, &width, &p_y, &part);
  LAUNCH(colsum_finish, (width + 255) / 256, 1, 256, &width, &slices, &part, &p_out);
}

static void k_drop_scale(poc_kset *k, size_t n, poc_dptr x, poc_dptr y, int y_acc, float beta,
                         float mul, uint32_t thr, uint64_t seed) {
  dc_kset *s = ks_of(k);
  if (!n) return;
  unsigned long long nn = n, sd = seed;
  unsigned th = thr;
  CUdeviceptr p_x = x, p_y = y;
  if (y_acc)
    LAUNCH(drop_scale_acc, dc_grid(s, n, 256), 1, 256, &nn, &p_x, &p_y, &beta, &mul, &th, &sd);
  else
    LAUNCH(drop_scale_act, dc_grid(s, n, 256), 1, 256, &nn, &p_x, &p_y, &beta, &mul, &th, &sd);
}

static void k_cast(poc_kset *k, size_t n, poc_dptr x, poc_dptr y) {
  dc_kset *s = ks_of(k);
  if (x == y) return;
  unsigned long long nn = n;
  CUdeviceptr p_x = x, p_y = y;
  LAUNCH(cast_f32_bf16, dc_grid(s, n, 256), 1, 256, &nn, &p_x, &p_y);
}

static void k_qkv_bias_rope(poc_kset *k, int T, poc_dptr pos, poc_dptr cosb, poc_dptr sinb,
                            poc_dptr qkv, poc_dptr q, poc_dptr kk, poc_dptr v, poc_dptr bq,
                            poc_dptr bk, poc_dptr bv) {
  dc_kset *s = ks_of(k);
  CUdeviceptr p_pos = pos, p_cos = cosb, p_sin = sinb, p_qkv = qkv, p_q = q, p_k = kk, p_v = v,
              p_bq = bq, p_bk = bk, p_bv = bv;
  LAUNCH(qkv_bias_rope, T, 1, 128, &T, &p_pos, &p_cos, &p_sin, &p_qkv, &p_q, &p_k, &p_v, &p_bq,
         &p_bk, &p_bv);
}

static void k_rope_bwd(poc_kset *k, int T, poc_dptr pos, poc_dptr cosb, poc_dptr sinb,
                       poc_dptr dq, poc_dptr dk, poc_dptr dv, poc_dptr dqkv) {
  dc_kset *s = ks_of(k);
  CUdeviceptr p_pos = pos, p_cos = cosb, p_sin = sinb, p_dq = dq, p_dk = dk, p_dv = dv,
              p_dqkv = dqkv;
  LAUNCH(rope_bwd, T, 1, 128, &T, &p_pos, &p_cos, &p_sin, &p_dq, &p_dk, &p_dv, &p_dqkv);
}

/* one block per 64 query rows × head (attention.cu's ATT_BM: 4 warps of 16 rows) */
static void k_attn_fwd(poc_kset *k, int T, int q0, poc_dptr q, poc_dptr kk, poc_dptr v,
                       poc_dptr kbeg, poc_dptr out, poc_dptr lse) {
  dc_kset *s = ks_of(k);
  CUdeviceptr p_q = q, p_k = kk, p_v = v, p_kbeg = kbeg, p_out = out, p_lse = lse;
  LAUNCH(attn_fwd, (T + 63) / 64, k->dm.nh, 128, &T, &q0, &p_q, &p_k, &p_v, &p_kbeg, &p_out,
         &p_lse);
}

/* dq per 64 query rows × head, then dk, dv per 64 key rows × kv head (ATT_BM) */
static void k_attn_bwd(poc_kset *k, int T, poc_dptr q, poc_dptr kk, poc_dptr v, poc_dptr o,
                       poc_dptr dO, poc_dptr lse, poc_dptr kbeg, poc_dptr send, poc_dptr dq,
                       poc_dptr dk, poc_dptr dv, poc_dptr D) {
  dc_kset *s = ks_of(k);
  CUdeviceptr p_q = q, p_k = kk, p_v = v, p_o = o, p_dO = dO, p_lse = lse, p_kbeg = kbeg,
              p_send = send, p_dq = dq, p_dk = dk, p_dv = dv, p_D = D;
  LAUNCH(attn_bwd_dq, (T + 63) / 64, k->dm.nh, 128, &T, &p_q, &p_k, &p_v, &p_o, &p_dO, &p_lse,
         &p_kbeg, &p_dq, &p_D);
  LAUNCH(attn_bwd_dkv, (T + 63) / 64, k->dm.nkv, 128, &T, &p_q, &p_k, &p_v, &p_dO, &p_lse, &p_D,
         &p_kbeg, &p_send, &p_dk, &p_dv);
}

static void k_swiglu_fwd(poc_kset *k, int T, poc_dptr gu, poc_dptr a) {
  dc_kset *s = ks_of(k);
  CUdeviceptr p_gu = gu, p_a = a;
  LAUNCH(swiglu_fwd, dc_grid(s, (size_t)T * k->dm.F, 256), 1, 256, &T, &p_gu, &p_a);
}

static void k_swiglu_bwd(poc_kset *k, int T, poc_dptr gu, poc_dptr da, poc_dptr dgu) {
  dc_kset *s = ks_of(k);
  CUdeviceptr p_gu = gu, p_da = da, p_dgu = dgu;
  LAUNCH(swiglu_bwd, dc_grid(s, (size_t)T * k->dm.F, 256), 1, 256, &T, &p_gu, &p_da, &p_dgu);
}

static void k_head_chunk_fwd(poc_kset *k, int n, int c, int v0, poc_dptr logits, poc_dptr tgt,
                             poc_dptr m, poc_dptr sum, poc_dptr a, poc_dptr q, poc_dptr tl) {
  dc_kset *s = ks_of(k);
  CUdeviceptr p_l = logits, p_t = tgt, p_m = m, p_s = sum, p_a = a, p_q = q, p_tl = tl;
  LAUNCH(head_chunk_fwd, n, 1, 256, &n, &c, &v0, &p_l, &p_t, &p_m, &p_s, &p_a, &p_q, &p_tl);
}

static void k_head_finish(poc_kset *k, int n, poc_dptr m, poc_dptr sum, poc_dptr a, poc_dptr q,
                          poc_dptr tl, poc_dptr logp, poc_dptr ent, poc_dptr lss, poc_dptr lse,
                          poc_dptr mu) {
  dc_kset *s = ks_of(k);
  CUdeviceptr p_m = m, p_s = sum, p_a = a, p_q = q, p_tl = tl, p_logp = logp, p_ent = ent,
              p_lss = lss, p_lse = lse, p_mu = mu;
  LAUNCH(head_finish, (n + 255) / 256, 1, 256, &n, &p_m, &p_s, &p_a, &p_q, &p_tl, &p_logp, &p_ent,
         &p_lss, &p_lse, &p_mu);
}

/* head_text_bwd reads fp32 log-softmax and writes bf16 dlogits element by element from
 * many blocks; in one buffer a write would land on values another block has yet to read.
 * So "in place" goes through a kset-owned bf16 buffer and a copy back. (head_chunk_bwd
 * reads bf16 and writes bf16 at the same index, so it runs in place as it is.) */
static CUdeviceptr dc_dlog_target(dc_kset *s, poc_dptr src, poc_dptr dlog, size_t elems) {
  if (dlog != src) return (CUdeviceptr)dlog;
  return dc_scratch(s, &s->dlog, &s->dlog_bytes, elems * 2, "in-place dlogits");
}

static void k_head_chunk_bwd(poc_kset *k, int n, int c, int v0, poc_dptr logits, poc_dptr tgt,
                             poc_dptr lse, poc_dptr mu, poc_dptr dlogp, poc_dptr dent,
                             poc_dptr dlog) {
  dc_kset *s = ks_of(k);
  size_t nc = (size_t)(n > 0 ? n : 0) * (size_t)(c > 0 ? c : 0);
  if (k->d->failed || nc == 0) return;
  CUdeviceptr p_l = logits, p_t = tgt, p_lse = lse, p_mu = mu, p_g = dlogp, p_e = dent,
              p_d = dlog;
  LAUNCH(head_chunk_bwd, dc_grid(s, nc, 256), 1, 256, &n, &c, &v0, &p_l, &p_t, &p_lse, &p_mu,
         &p_g, &p_e, &p_d);
}

/* lse per row, the log-softmax in place, then logp, entropy, log Σ p² and μ' = Σ p·ls (the
 * mean of the log-softmax, which head_text_bwd takes as mu: l − μ = ls − μ') */
static void k_head_text_fwd(poc_kset *k, int n, poc_dptr logits, poc_dptr tgt, poc_dptr logp,
                            poc_dptr ent, poc_dptr lss, poc_dptr lse, poc_dptr mu) {
  dc_kset *s = ks_of(k);
  int V = k->dm.V;
  size_t nV = (size_t)(n > 0 ? n : 0) * (size_t)V;
  CUdeviceptr p_l = logits, p_t = tgt, p_logp = logp, p_ent = ent, p_lss = lss, p_lse = lse,
              p_mu = mu;
  LAUNCH(head_text_lse, n, 1, 256, &n, &V, &p_l, &p_lse);
  LAUNCH(head_text_logsoftmax, dc_grid(s, nV, 256), 1, 256, &n, &V, &p_l, &p_lse);
  LAUNCH(head_text_gather, n, 1, 256, &n, &V, &p_l, &p_t, &p_logp, &p_ent, &p_lss, &p_mu);
}

static void k_head_text_bwd(poc_kset *k, int n, poc_dptr ls, poc_dptr tgt, poc_dptr mu,
                            poc_dptr dlogp, poc_dptr dent, poc_dptr dlog) {
  dc_kset *s = ks_of(k);
  int V = k->dm.V;
  size_t nV = (size_t)(n > 0 ? n : 0) * (size_t)V;
  if (k->d->failed || nV == 0) return;
  CUdeviceptr p_ls = ls, p_t = tgt, p_mu = mu, p_g = dlogp, p_e = dent,
              p_d = dc_dlog_target(s, ls, dlog, nV);
  if (!p_d) return;
  LAUNCH(head_text_bwd, dc_grid(s, nV, 256), 1, 256, &n, &V, &p_ls, &p_t, &p_mu, &p_g, &p_e,
         &p_d);
  if (p_d != (CUdeviceptr)dlog) dc_copy(k->d, dlog, p_d, nV * 2);
}

static void k_adamw(poc_kset *k, size_t n, poc_dptr w, poc_dptr g, poc_dptr m, poc_dptr v,
                    poc_dptr wc, float lr, float b1, float b2, float eps, float wd, float bc1,
                    float bc2, float gscale) {
  dc_kset *s = ks_of(k);
  /* the kernel always refreshes a separate bf16 copy: wc may not be absent or w itself */
  if (!k->d->failed && (wc == 0 || wc == w)) {
    dc_fail(k->d, "cuda: adamw needs the bf16 compute copy of the weights (wc)");
    return;
  }
  unsigned long long nn = n;
  CUdeviceptr p_w = w, p_g = g, p_m = m, p_v = v, p_wc = wc;
  LAUNCH(adamw, dc_grid(s, n, 256), 1, 256, &nn, &p_w, &p_g, &p_m, &p_v, &p_wc, &lr, &b1, &b2,
         &eps, &wd, &bc1, &bc2, &gscale);
}

/* DC_NORM_BLOCKS fixed block partials (each a fixed grid-stride share), added on the host
 * in double and in order: the same sum every run. NaN once the device has failed. */
static double k_sumsq(poc_kset *k, size_t n, poc_dptr x) {
  dc_kset *s = ks_of(k);
  poc_device *d = k->d;
  if (d->failed) return NAN;
  if (n == 0) return 0;
  unsigned long long nn = n;
  CUdeviceptr p_x = x;
  LAUNCH(sumsq_partial, DC_NORM_BLOCKS, 1, 256, &nn, &p_x, &s->sq);
  float part[DC_NORM_BLOCKS];
  dc_get(d, part, POC_DT_F32, (poc_dptr)s->sq, POC_DT_F32, DC_NORM_BLOCKS);
  if (d->failed) return NAN;
  double sum = 0;
  for (int i = 0; i < DC_NORM_BLOCKS; i++) sum += part[i];
  return sum;
}

/* ---- kernel sets -------------------------------------------------------------------- */

static int dc_dims_eq(const poc_dims *a, const poc_dims *b) {
  return a->H == b->H && a->F == b->F && a->V == b->V && a->nh == b->nh && a->nkv == b->nkv &&
         a->hd == b->hd && a->eps == b->eps;
}

static void dc_kset_free(dc_kset *s) {
  CUdeviceptr ps[] = {s->part, s->sq, s->dlog};
  for (size_t i = 0; i < sizeof ps / sizeof ps[0]; i++)
    if (ps[i]) cu.cuMemFree(ps[i]);
  free(s);
}

static poc_kset *dc_kernels(poc_device *d, const poc_dims *dm) {
  dc_device *dv = dc_of(d);
  for (dc_kset *s = dv->sets; s; s = s->next)
    if (dc_dims_eq(&s->base.dm, dm)) return &s->base;
  if (d->failed || dc_current(dv)) return NULL;
  poc_dims cd = *dm;
  char err[POC_ERR_LEN] = "";
  cu_kernels *K = cu_kernels_get(&dv->c, &cd, err);
  if (!K) {
    dc_fail(d, "%s", err);
    return NULL;
  }
  dc_kset *s = calloc(1, sizeof *s);
  if (!s) {
    dc_fail(d, "cuda: out of memory");
    return NULL;
  }
  s->base.d = d;
  s->base.dm = *dm;
  s->K = K;
  /* partials for the widest column sum the model takes: H (norm weights), nh·hd and
   * nkv·hd (bias gradients); wider ones grow the buffer */
  size_t wide = (size_t)dm->H;
  if ((size_t)dm->nh * dm->hd > wide) wide = (size_t)dm->nh * dm->hd;
  if ((size_t)dm->nkv * dm->hd > wide) wide = (size_t)dm->nkv * dm->hd;
  s->sq = (CUdeviceptr)dc_alloc(d, DC_NORM_BLOCKS * 4, "sum-of-squares partials");
  if (s->sq) dc_scratch(s, &s->part, &s->part_bytes, DC_SLICES * wide * 4, "column-sum partials");
  if (d->failed) {
    dc_kset_free(s);
    return NULL;
  }
  s->next = dv->sets;
  dv->sets = s;
  return &s->base;
}

/* ---- the device --------------------------------------------------------------------- */

static void dc_close(poc_device *d) {
  if (!d) return;
  dc_device *dv = dc_of(d);
  if (dv->c.ctx) {
    cu.cuCtxSetCurrent(dv->c.ctx);
    cu.cuCtxSynchronize();  /* nothing queued may still use what is freed below */
    for (dc_kset *s = dv->sets, *next; s; s = next) {
      next = s->next;
      dc_kset_free(s);
    }
  }
  cu_ctx_close(&dv->c);
  free(dv->stage);
  free(dv);
}

poc_device *poc_cuda_device_open(char *err) {
  dc_device *dv = calloc(1, sizeof *dv);
  if (!dv) {
    snprintf(err, POC_ERR_LEN, "cuda: out of memory");
    return NULL;
  }
  if (cu_ctx_open(&dv->c, err)) {
    free(dv);
    return NULL;
  }
  poc_device *d = &dv->base;
  d->name = "cuda";
  snprintf(d->desc, sizeof d->desc, "cuda: %s (sm_%d, %.1f GiB, driver %d.%d)", dv->c.name,
           dv->c.cc, (double)dv->c.mem / (1 << 30), dv->c.driver / 1000,
           dv->c.driver % 1000 / 10);
  d->acc = POC_DT_F32;
  d->act = POC_DT_BF16;
  d->shared_act = 0;
  /* a GPU takes every row of a head block at once; the chunk bounds the [rows × chunk]
   * fp32 logits buffer */
  const char *ch = getenv("POC_CUDA_HEAD_CHUNK");
  d->head_rows = INT_MAX;
  d->head_chunk = ch && atoi(ch) > 0 ? atoi(ch) : DC_HEAD_CHUNK;
  d->head_block = SIZE_MAX;
  d->head_chunk_acc = 0; /* bf16 logits: no fp32 chunk through HBM */
  const char *sy = getenv("POC_CUDA_SYNC");
  dv->sync_each = sy && atoi(sy) > 0;

  d->alloc = dc_alloc;
  d->free = dc_free;
  d->put = dc_put;
  d->get = dc_get;
  d->copy = dc_copy;
  d->zero = dc_zero;
  d->sync = dc_sync;
  d->kernels = dc_kernels;
  d->close = dc_close;

  poc_kernels *k = &d->k;
  k->gemm = k_gemm;
  k->embed_fwd = k_embed_fwd;
  k->embed_bwd = k_embed_bwd;
  k->rmsnorm_fwd = k_rmsnorm_fwd;
  k->rmsnorm_bwd = k_rmsnorm_bwd;
  k->rmsnorm_dw = k_rmsnorm_dw;
  k->colsum = k_colsum;
  k->cast = k_cast;
  k->qkv_bias_rope = k_qkv_bias_rope;
  k->rope_bwd = k_rope_bwd;
  k->attn_fwd = k_attn_fwd;
  k->attn_bwd = k_attn_bwd;
  k->drop_scale = k_drop_scale;
  k->swiglu_fwd = k_swiglu_fwd;
  k->swiglu_bwd = k_swiglu_bwd;
  k->head_chunk_fwd = k_head_chunk_fwd;
  k->head_finish = k_head_finish;
  k->head_chunk_bwd = k_head_chunk_bwd;
  k->head_text_fwd = k_head_text_fwd;
  k->head_text_bwd = k_head_text_bwd;
  k->adamw = k_adamw;
  k->sumsq = k_sumsq;
  return d;
}
