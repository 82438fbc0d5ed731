/* cuemu_cublas.c — the cuBLAS entry points poc calls, on the CPU, for tests.
 *
 * cublasGemmEx in column-major storage, as cuBLAS:
 *   C[m×n] = α·op(A)[m×k]·op(B)[k×n] + β·C,   op(X) = X or Xᵀ,
 *   op(A)[i,l] = A[i + l·lda] (N) or A[l + i·lda] (T)
 * with bf16 or fp32 inputs, fp32 or bf16 output, fp32 accumulation (CUBLAS_COMPUTE_32F);
 * a bf16 result is rounded to nearest even. β = 0 does not read C (cuBLAS's rule, which
 * matters because fresh device memory holds NaN here). Every operand's extent must lie in
 * one live allocation; leading dimensions are checked as cuBLAS checks them.
 */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include <cublas_v2.h>

#include "cuemu_internal.h"

struct cublasContext { int live; };

cublasStatus_t cublasCreate(cublasHandle_t *h) {
  if (!h) return CUBLAS_STATUS_INVALID_VALUE;
  *h = calloc(1, sizeof **h);
  if (!*h) return CUBLAS_STATUS_ALLOC_FAILED;
  (*h)->live = 1;
  return CUBLAS_STATUS_SUCCESS;
}

cublasStatus_t cublasDestroy(cublasHandle_t h) {
  if (!h) return CUBLAS_STATUS_NOT_INITIALIZED;
  free(h);
  return CUBLAS_STATUS_SUCCESS;
}

cublasStatus_t cublasSetStream(cublasHandle_t h, cudaStream_t s) {
  if (!h) return CUBLAS_STATUS_NOT_INITIALIZED;
  if (s) {
    emu_report("cublasSetStream: streams are not emulated");
    return CUBLAS_STATUS_NOT_SUPPORTED;
  }
  return CUBLAS_STATUS_SUCCESS;
}

const char *cublasGetStatusString(cublasStatus_t s) {
  switch (s) {
    case CUBLAS_STATUS_SUCCESS: return "the operation completed successfully";
    case CUBLAS_STATUS_NOT_INITIALIZED: return "the library was not initialized";
    case CUBLAS_STATUS_ALLOC_FAILED: return "the resource allocation failed";
    case CUBLAS_STATUS_INVALID_VALUE: return "an invalid numeric value was used as an argument";
    case CUBLAS_STATUS_EXECUTION_FAILED: return "the GPU program failed to execute";
    case CUBLAS_STATUS_NOT_SUPPORTED: return "the functionality requested is not supported";
    default: return "unknown error";
  }
}

static float emu_bf2f(uint16_t x) {
  uint32_t u = (uint32_t)x << 16;
  float f;
  memcpy(&f, &u, 4);
  return f;
}

static uint16_t emu_f2bf(float f) {
  uint32_t u;
  memcpy(&u, &f, 4);
  if ((u & 0x7fffffffu) > 0x7f800000u) return (uint16_t)((u >> 16) | 0x40u);
  u += 0x7fffu + ((u >> 16) & 1u);
  return (uint16_t)(u >> 16);
}

/* op(X) of a rows×cols result into fp32, row r contiguous: out[r·cols + c] = op(X)[r, c],
 * or its transpose when `cols_major` (out[c·rows + r]); X is ld-strided column-major. */
static void emu_load(float *out, const void *x, cudaDataType t, int trans, int rows, int cols,
                     int ld, int cols_major) {
  for (int r = 0; r < rows; r++)
    for (int c = 0; c < cols; c++) {
      size_t at = trans ? (size_t)c + (size_t)r * ld : (size_t)r + (size_t)c * ld;
      float v = t == CUDA_R_16BF ? emu_bf2f(((const uint16_t *)x)[at]) : ((const float *)x)[at];
      out[cols_major ? (size_t)c * rows + r : (size_t)r * cols + c] = v;
    }
}

static int emu_extent(const char *what, const void *p, cudaDataType t, int trans, int rows,
                      int cols, int ld) {
  /* stored column-major as (trans ? cols×rows : rows×cols) */
  int sr = trans ? cols : rows, sc = trans ? rows : cols;
  size_t el = t == CUDA_R_16BF ? 2 : 4, n = ((size_t)(sc - 1) * ld + sr) * el;
  const char *why;
  if (!emu_mem_check((uintptr_t)p, n, &why)) return 0;
  emu_report("cublasGemmEx: %s (%p, %zu bytes) %s", what, p, n, why);
  return -1;
}

cublasStatus_t cublasGemmEx(cublasHandle_t h, cublasOperation_t ta, cublasOperation_t tb, int m,
                            int n, int k, const void *alpha, const void *A, cudaDataType at,
                            int lda, const void *B, cudaDataType bt, int ldb, const void *beta,
                            void *C, cudaDataType ct, int ldc, cublasComputeType_t comp,
                            cublasGemmAlgo_t algo) {
  (void)algo;
  if (!h || !h->live) return CUBLAS_STATUS_NOT_INITIALIZED;
  int tra = ta != CUBLAS_OP_N, trb = tb != CUBLAS_OP_N;
  if ((ta != CUBLAS_OP_N && ta != CUBLAS_OP_T) || (tb != CUBLAS_OP_N && tb != CUBLAS_OP_T) ||
      m < 0 || n < 0 || k < 0 || lda < (tra ? (k > 1 ? k : 1) : (m > 1 ? m : 1)) ||
      ldb < (trb ? (n > 1 ? n : 1) : (k > 1 ? k : 1)) || ldc < (m > 1 ? m : 1) || !alpha || !beta) {
    emu_report("cublasGemmEx: invalid arguments (op %d/%d, m %d n %d k %d, lda %d ldb %d ldc %d)",
               ta, tb, m, n, k, lda, ldb, ldc);
    return CUBLAS_STATUS_INVALID_VALUE;
  }
  if (comp != CUBLAS_COMPUTE_32F || (at != CUDA_R_16BF && at != CUDA_R_32F) || bt != at ||
      (ct != CUDA_R_32F && ct != CUDA_R_16BF)) {
    emu_report("cublasGemmEx: type combination (A %d, B %d, C %d, compute %d) not emulated", at,
               bt, ct, comp);
    return CUBLAS_STATUS_NOT_SUPPORTED;
  }
  if (m == 0 || n == 0) return CUBLAS_STATUS_SUCCESS;
  const float al = *(const float *)alpha, be = *(const float *)beta;
  if ((k > 0 && (emu_extent("A", A, at, tra, m, k, lda) || emu_extent("B", B, bt, trb, k, n, ldb))) ||
      emu_extent("C", C, ct, 0, m, n, ldc))
    return CUBLAS_STATUS_INVALID_VALUE;
  float *a = malloc(((size_t)m * k + 1) * sizeof *a), *b = malloc(((size_t)n * k + 1) * sizeof *b);
  if (!a || !b) {
    free(a);
    free(b);
    return CUBLAS_STATUS_ALLOC_FAILED;
  }
  if (k > 0) {
    emu_load(a, A, at, tra, m, k, lda, 0); /* a[i·k + l] = op(A)[i, l] */
    emu_load(b, B, bt, trb, k, n, ldb, 1); /* b[j·k + l] = op(B)[l, j] */
  }
  for (int j = 0; j < n; j++)
    for (int i = 0; i < m; i++) {
      /* eight partial sums: a summation order of its own, like any GEMM's */
      const float *x = a + (size_t)i * k, *y = b + (size_t)j * k;
      float s[8] = {0};
      int l = 0;
      for (; l + 8 <= k; l += 8)
        for (int u = 0; u < 8; u++) s[u] += x[l + u] * y[l + u];
      for (; l < k; l++) s[0] += x[l] * y[l];
      float acc = ((s[0] + s[1]) + (s[2] + s[3])) + ((s[4] + s[5]) + (s[6] + s[7]));
      size_t at_c = (size_t)i + (size_t)j * ldc;
      float v = al * acc;
      if (ct == CUDA_R_32F) {
        float *c = (float *)C + at_c;
        *c = be != 0.f ? v + be * *c : v;
      } else {
        uint16_t *c = (uint16_t *)C + at_c;
        *c = emu_f2bf(be != 0.f ? v + be * emu_bf2f(*c) : v);
      }
    }
  free(a);
  free(b);
  return CUBLAS_STATUS_SUCCESS;
}
