/* cpu_fp.h — one source, two precisions, for the CPU devices.
 *
 * kernels_fp.c is compiled twice, with POC_FP=32 (the "cpu" device) and POC_FP=64
 * ("cpu64"). Inside it, `real` is float or double, FP(name) appends _f32 or _f64 to a
 * public name, and the BLAS and libm calls pick the matching routine. Everything that
 * depends on the precision stays behind these macros so the two builds cannot drift apart.
 */
#ifndef POC_CPU_FP_H
#define POC_CPU_FP_H

#include <cblas.h>
#include <math.h>

#include "cpu_internal.h"

#if POC_FP == 32
typedef float real;
#define FP(name) name##_f32
#define GEMM cblas_sgemm
#define R_EXP expf
#define R_LOG logf
#define R_SQRT sqrtf
#elif POC_FP == 64
typedef double real;
#define FP(name) name##_f64
#define GEMM cblas_dgemm
#define R_EXP exp
#define R_LOG log
#define R_SQRT sqrt
#else
#error "compile kernels_fp.c with -DPOC_FP=32 or -DPOC_FP=64"
#endif

#endif
