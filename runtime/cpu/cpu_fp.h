/* cpu_fp.h — one source, three devices, for the CPU.
 *
 * kernels_fp.c is compiled three times: POC_FP=32 (the "cpu" device), POC_FP=64 ("cpu64")
 * and POC_FP=16 ("cpu-bf16": fp32 accumulators, bf16 operands). Inside it:
 *
 *   real       the acc type (device.h): float, double, float
 *   act_t      the act type: real, real, bf16 stored as uint16_t
 *   LD(x)      an act element as a real;  ST(x) a real rounded to act (nearest even)
 *   FP(name)   appends _f32, _f64 or _b16 to a public name
 *   ACT_IS_ACC 1 where act and acc are one type: act rows are then copied with memcpy
 *
 * In the two one-type builds LD and ST are the identity, so their code is what it was
 * before the bf16 build existed, operation for operation. Everything that depends on the
 * precision stays behind these macros so the three builds cannot drift apart.
 */
#ifndef POC_CPU_FP_H
#define POC_CPU_FP_H

#include <cblas.h>
#include <math.h>
#include <stdint.h>
#include <string.h>

#include "cpu_internal.h"

#if POC_FP == 32
typedef float real;
typedef real act_t;
#define FP(name) name##_f32
#define GEMM cblas_sgemm
#elif POC_FP == 64
typedef double real;
typedef real act_t;
#define FP(name) name##_f64
#define GEMM cblas_dgemm
#elif POC_FP == 16
typedef float real;
typedef uint16_t act_t;
#define FP(name) name##_b16
#else
#error "compile kernels_fp.c with -DPOC_FP=32, -DPOC_FP=64 or -DPOC_FP=16"
#endif

#if POC_FP == 64
#define R_EXP exp
#define R_LOG log
#define R_SQRT sqrt
#else
#define R_EXP expf
#define R_LOG logf
#define R_SQRT sqrtf
#endif

#if POC_FP == 16
#define ACT_IS_ACC 0
/* bf16 is the top half of a float32. Rounding is to nearest even on the 16 dropped bits,
 * a NaN stays a quiet NaN: the same bits as device.h's poc_bf16_from_f32, written inline
 * so the compiler can vectorise the loops around it (plain integer operations, so the
 * binary runs on any x86-64). */
static inline float cpu_bf16_ld(uint16_t b) {
  uint32_t u = (uint32_t)b << 16;
  float f;
  memcpy(&f, &u, 4);
  return f;
}
static inline uint16_t cpu_bf16_st(float f) {
  uint32_t u;
  memcpy(&u, &f, 4);
  if ((u & 0x7fffffffu) > 0x7f800000u) return (uint16_t)((u >> 16) | 0x40);
  return (uint16_t)((u + 0x7fffu + ((u >> 16) & 1)) >> 16);
}
#define LD(x) cpu_bf16_ld(x)
#define ST(x) cpu_bf16_st(x)
#else
#define ACT_IS_ACC 1
#define LD(x) (x)
#define ST(x) (x)
#endif

#endif
