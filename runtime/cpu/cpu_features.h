/* cpu_features.h — which GEMM kernels the CPU device runs, chosen from the processor's
 * feature bits rather than from a table of model numbers.
 *
 * OpenBLAS (DYNAMIC_ARCH) picks its kernel family ("core") in a library constructor, from
 * CPUID family/model tables; a processor it does not know (a new Xeon in a VM that hides
 * its model name, a new AMD family) silently gets generic Prescott kernels, 3-6x slower.
 * OPENBLAS_CORETYPE overrides the choice, but only when set before the library loads, so
 * poc_cpu_start() — the first statement of every main() that computes — sets it and
 * re-executes the program when the BLAS's choice is weaker than the features allow.
 *
 * Environment: OPENBLAS_CORETYPE set by the user wins and is reported. POC_CPU_KERNELS=
 * blas keeps the BLAS's own choice, POC_CPU_KERNELS=NAME (an OpenBLAS core name) forces
 * one, POC_CPU_KERNELS=auto (or unset) is poc's choice. POC_CPU_KERNELS_SET is poc's own
 * marker ("CORE:FROM": poc set OPENBLAS_CORETYPE=CORE over the BLAS's FROM); while it is
 * set nothing re-executes again, so a BLAS that ignores the variable cannot cause a loop.
 */
#ifndef POC_CPU_KERNELS_H
#define POC_CPU_KERNELS_H

#include <stddef.h>
#include <stdint.h>

/* Raw CPUID/XGETBV words, so decoding is a pure function tests can feed. */
typedef struct poc_cpu_regs {
  char vendor[13];               /* leaf 0: "GenuineIntel", "AuthenticAMD", ... */
  uint32_t max_leaf;             /* leaf 0 eax */
  uint32_t l1_ecx, l1_edx;       /* leaf 1 */
  uint32_t l7_ebx, l7_ecx, l7_edx; /* leaf 7 subleaf 0 */
  uint32_t l7s1_eax;             /* leaf 7 subleaf 1 */
  uint64_t xcr0;                 /* XGETBV(0): state the OS saves; 0 when OSXSAVE is off */
} poc_cpu_regs;

typedef struct poc_cpu_features {
  int amd;                       /* AMD or Hygon: AVX2 without AVX-512 gets "Zen" kernels */
  int sse3, ssse3, sse4_2, avx, fma, avx2;
  int avx512f, avx512dq, avx512bw, avx512vl, avx512_bf16;
  int amx_tile, amx_bf16;
  int os_avx;                    /* XCR0 saves XMM+YMM */
  int os_avx512;                 /* ... and opmask, ZMM_Hi256, Hi16_ZMM */
  int os_amx;                    /* ... and XTILECFG, XTILEDATA (a process still has to ask
                                    Linux for permission, ARCH_REQ_XCOMP_PERM) */
} poc_cpu_features;

void poc_cpu_decode(const poc_cpu_regs *r, poc_cpu_features *f);
/* This processor's features (zeros off x86-64). */
void poc_cpu_read(poc_cpu_features *f);

/* "OpenBLAS 0.3.21 DYNAMIC_ARCH ..." → 321 (major·10000 + minor·100 + patch); 0 if not. */
int poc_cpu_blas_version(const char *config);
/* The strongest OpenBLAS core the features allow, among those the given OpenBLAS version
 * has (SapphireRapids needs 0.3.22). */
const char *poc_cpu_best_kernels(const poc_cpu_features *f, int blas_version);
/* A core's place in the order Prescott < Core2 < Nehalem < Sandybridge < Haswell = Zen <
 * SkylakeX < Cooperlake < SapphireRapids (older cores near their ISA); 0 for a name poc
 * does not know. Case-insensitive, as OpenBLAS reads OPENBLAS_CORETYPE. */
int poc_cpu_kernels_rank(const char *core);
/* OpenBLAS's spelling of a core name given in any case; NULL when unknown. */
const char *poc_cpu_kernels_name(const char *core);

/* What poc_cpu_start decides, as a pure function of the features and the environment. */
typedef struct poc_cpu_env {
  const char *kernels;           /* POC_CPU_KERNELS, or NULL */
  const char *coretype;          /* OPENBLAS_CORETYPE, or NULL */
  const char *marker;            /* POC_CPU_KERNELS_SET, or NULL */
  const char *current;           /* openblas_get_corename() */
  int dynamic;                   /* the BLAS reads OPENBLAS_CORETYPE (DYNAMIC_ARCH build) */
  int blas_version;
} poc_cpu_env;

enum { POC_CPU_BLAS, POC_CPU_CORRECTED, POC_CPU_USER_CORETYPE, POC_CPU_USER_POC };

typedef struct poc_cpu_plan {
  int reexec;                    /* set OPENBLAS_CORETYPE=target, the marker, and restart */
  int source;                    /* POC_CPU_*: whose choice the kernels are */
  char target[32];               /* the core to restart with */
  char from[32];                 /* POC_CPU_CORRECTED: the BLAS's own choice */
  char best[32];                 /* the strongest core the features allow */
  char warning[320];             /* "" or one line: the kernels are weaker than they could
                                    be, or a setting was refused, and what to do */
} poc_cpu_plan;

void poc_cpu_decide(const poc_cpu_features *f, const poc_cpu_env *e, poc_cpu_plan *p);

/* The first statement of main() in every program that computes: decides, and re-executes
 * /proc/self/exe with the same arguments when the kernels must change (argv may be NULL:
 * then /proc/self/cmdline gives them). Prints nothing; poc_cpu_describe reports. */
void poc_cpu_start(int argc, char **argv);

/* The device line, e.g. "cpu: OpenBLAS 0.3.21, SkylakeX kernels (corrected from Prescott),
 * 2 threads, avx2 fma avx512f", and, when there is one, "\ncpu: warning: ..." on a second
 * line. Returns the length snprintf would write. */
int poc_cpu_describe(char *buf, size_t n);
/* poc_cpu_describe to stderr, prefixed by `who: ` when who is not NULL. */
void poc_cpu_report(const char *who);

/* The kernels in use (openblas_get_corename()) and the BLAS's version string. */
const char *poc_cpu_kernels_in_use(void);

#endif
