/* fp.h — one source, two precisions.
 *
 * A file named *_fp.c is compiled twice, with POC_FP=32 and POC_FP=64. Inside it, `real`
 * is float or double, FP(name) appends _f32 or _f64 to a public name, and the libm calls
 * pick the matching routine. (The core's only such file is weights_fp.c; the CPU device's
 * kernels, where the BLAS calls are, have their own copy in runtime/cpu/.) Keep everything
 * precision-dependent behind these macros so the two builds cannot drift apart.
 */
#ifndef POC_FP_H
#define POC_FP_H

#include <math.h>

#if POC_FP == 32
typedef float real;
#define FP(name) name##_f32
#define REAL_EPS 1.1920929e-07
#define R_EXP expf
#define R_LOG logf
#define R_SQRT sqrtf
#define R_COS cosf
#define R_SIN sinf
#define R_FABS fabsf
#elif POC_FP == 64
typedef double real;
#define FP(name) name##_f64
#define REAL_EPS 2.220446049250313e-16
#define R_EXP exp
#define R_LOG log
#define R_SQRT sqrt
#define R_COS cos
#define R_SIN sin
#define R_FABS fabs
#else
#error "compile *_fp.c files with -DPOC_FP=32 or -DPOC_FP=64"
#endif

#endif
