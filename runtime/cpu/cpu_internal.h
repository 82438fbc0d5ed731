/* cpu_internal.h — what the CPU devices' files share: the kernel tables of the three
 * builds (kernels_fp.c) for the device (device_cpu.c) to install, the kernel set, and the
 * bf16 device's oneDNN GEMMs (cpu_dnnl.c). */
#ifndef POC_CPU_INTERNAL_H
#define POC_CPU_INTERNAL_H

#include <stddef.h>

#include "device.h"

/* Loops with less work than this (in multiply-adds, roughly) run on one thread: waking a
 * team costs more than they do. */
#define CPU_PAR_MIN ((size_t)1 << 15)

/* The CPU loss head's blocking (see poc_device.head_*): logits in flight per block stay
 * under CPU_HEAD_BLOCK values (8 MiB in fp32), small enough to stay in the last-level cache
 * between the GEMM that writes a block and the two that read it back. bench/model measured
 * this best on a 2-core EPYC: 384 rows × 4096 columns and 768 × 2048 both beat their
 * neighbours by 5–15%. */
#define CPU_HEAD_ROWS 1024
#define CPU_HEAD_BLOCK ((size_t)1 << 21)

/* Fills every member of k with the float (_f32), double (_f64) or bf16-operand (_b16)
 * kernels. */
void poc_cpu_kernels_f32(poc_kernels *k);
void poc_cpu_kernels_f64(poc_kernels *k);
void poc_cpu_kernels_b16(poc_kernels *k);

typedef struct cpu_gemm_cache cpu_gemm_cache;

/* The kernels for one set of dimensions: the bf16 device keeps its GEMM primitives here. */
typedef struct cpu_kset {
  poc_kset base;
  cpu_gemm_cache *gemms;   /* NULL on the one-type devices */
  struct cpu_kset *next;
} cpu_kset;

/* ---- oneDNN (cpu_dnnl.c, built where oneDNN is found: POC_HAVE_DNNL) ------------------ */

typedef struct cpu_dnnl cpu_dnnl;

/* The engine and stream of a bf16 device and the device line's oneDNN part ("oneDNN 2.6.3,
 * avx512_core_bf16, matmul brg:avx512_core_bf16"); NULL with a message in err. */
cpu_dnnl *poc_cpu_dnnl_open(char *desc, size_t n, char *err);
void poc_cpu_dnnl_close(cpu_dnnl *e);
/* A kernel set's primitive cache; freed with poc_cpu_dnnl_cache_free. */
cpu_gemm_cache *poc_cpu_dnnl_cache_new(cpu_dnnl *e);
void poc_cpu_dnnl_cache_free(cpu_gemm_cache *c);
/* device.h's gemm with A, B bf16 and C f32 (c_acc) or bf16. */
void poc_cpu_dnnl_gemm(poc_kset *k, int ta, int tb, int M, int N, int K, const void *A,
                       int lda, const void *B, int ldb, float beta, void *C, int c_acc, int ldc);
/* Primitives created so far by this kernel set (tests/cpu_bf16: repeated shapes create
 * none). */
long poc_cpu_dnnl_created(poc_kset *k);

#endif
