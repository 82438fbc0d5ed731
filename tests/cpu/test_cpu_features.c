/* test_cpu_kernels.c — the CPU kernel choice as pure functions: CPUID words → features,
 * features → OpenBLAS core, and (features, environment, the BLAS's choice) → what
 * poc_cpu_start does. Machines in the table are written as the CPUID bits they report. */
#include <string.h>

#include "check.h"
#include "cpu/cpu_features.h"

/* CPUID bit positions (Intel SDM vol. 2, CPUID): leaf 1 ecx, leaf 7 ebx/edx, 7.1 eax */
#define L1_SSE3 (1u << 0)
#define L1_SSSE3 (1u << 9)
#define L1_FMA (1u << 12)
#define L1_SSE42 (1u << 20)
#define L1_OSXSAVE (1u << 27)
#define L1_AVX (1u << 28)
#define L7_AVX2 (1u << 5)
#define L7_AVX512 ((1u << 16) | (1u << 17) | (1u << 30) | (1u << 31)) /* F DQ BW VL */
#define L7D_AMX ((1u << 22) | (1u << 24))                            /* AMX-BF16, TILE */
#define L71_BF16 (1u << 5)
#define XCR0_AVX 0x7ull
#define XCR0_AVX512 0xe7ull
#define XCR0_AMX 0x600e7ull

static poc_cpu_features machine(const char *vendor, uint32_t l1, uint32_t l7b, uint32_t l7d,
                                uint32_t l71a, uint64_t xcr0) {
  poc_cpu_regs r;
  memset(&r, 0, sizeof r);
  strcpy(r.vendor, vendor);
  r.max_leaf = 0x1f;
  r.l1_ecx = l1;
  r.l7_ebx = l7b;
  r.l7_edx = l7d;
  r.l7s1_eax = l71a;
  r.xcr0 = xcr0;
  poc_cpu_features f;
  poc_cpu_decode(&r, &f);
  return f;
}

#define SSE (L1_SSE3 | L1_SSSE3 | L1_SSE42)
#define AVX2M (SSE | L1_FMA | L1_OSXSAVE | L1_AVX)

static void test_mapping(void) {
  static const struct {
    const char *what, *vendor;
    uint32_t l1, l7b, l7d, l71a;
    uint64_t xcr0;
    const char *v321, *v322;
  } t[] = {
      /* the VM: Xeon with AMX whose model 0.3.21 does not know (→ Prescott) */
      {"Intel Xeon VM, AVX-512 BF16 + AMX", "GenuineIntel", AVX2M, L7_AVX2 | L7_AVX512, L7D_AMX,
       L71_BF16, XCR0_AMX, "Cooperlake", "SapphireRapids"},
      {"the same VM, the OS without AMX state", "GenuineIntel", AVX2M, L7_AVX2 | L7_AVX512,
       L7D_AMX, L71_BF16, XCR0_AVX512, "Cooperlake", "Cooperlake"},
      {"Skylake-SP, AVX-512 without BF16", "GenuineIntel", AVX2M, L7_AVX2 | L7_AVX512, 0, 0,
       XCR0_AVX512, "SkylakeX", "SkylakeX"},
      {"AVX-512 CPU, the OS saves no ZMM state", "GenuineIntel", AVX2M, L7_AVX2 | L7_AVX512, 0,
       0, XCR0_AVX, "Haswell", "Haswell"},
      {"Intel AVX2-only (Haswell..Alder Lake)", "GenuineIntel", AVX2M, L7_AVX2, 0, 0, XCR0_AVX,
       "Haswell", "Haswell"},
      {"AMD Zen 2/3, AVX2", "AuthenticAMD", AVX2M, L7_AVX2, 0, 0, XCR0_AVX, "Zen", "Zen"},
      {"AMD Zen 4, AVX-512 with BF16", "AuthenticAMD", AVX2M, L7_AVX2 | L7_AVX512, 0, L71_BF16,
       XCR0_AVX512, "Cooperlake", "Cooperlake"},
      /* this machine: AMD EPYC (Zen 5 family 0x1A) with AVX-512 BF16, no AMX */
      {"AMD EPYC here, AVX-512 BF16", "AuthenticAMD", AVX2M, L7_AVX2 | L7_AVX512, 0, L71_BF16,
       XCR0_AVX512, "Cooperlake", "Cooperlake"},
      {"Sandy Bridge, AVX without AVX2", "GenuineIntel", SSE | L1_OSXSAVE | L1_AVX, 0, 0, 0,
       XCR0_AVX, "Sandybridge", "Sandybridge"},
      {"AVX CPU, OS without XSAVE", "GenuineIntel", SSE | L1_AVX | L1_FMA, L7_AVX2, 0, 0, 0,
       "Nehalem", "Nehalem"},
      {"no AVX: Westmere (SSE4.2)", "GenuineIntel", SSE, 0, 0, 0, 0, "Nehalem", "Nehalem"},
      {"no AVX: Core 2 (SSSE3)", "GenuineIntel", L1_SSE3 | L1_SSSE3, 0, 0, 0, 0, "Core2", "Core2"},
      {"no AVX: SSE3 only", "GenuineIntel", L1_SSE3, 0, 0, 0, 0, "Prescott", "Prescott"},
  };
  for (size_t i = 0; i < sizeof t / sizeof t[0]; i++) {
    poc_cpu_features f = machine(t[i].vendor, t[i].l1, t[i].l7b, t[i].l7d, t[i].l71a, t[i].xcr0);
    const char *a = poc_cpu_best_kernels(&f, 321), *b = poc_cpu_best_kernels(&f, 322);
    CHECK_MSG(!strcmp(a, t[i].v321), "%s: 0.3.21 gives %s, want %s", t[i].what, a, t[i].v321);
    CHECK_MSG(!strcmp(b, t[i].v322), "%s: 0.3.22 gives %s, want %s", t[i].what, b, t[i].v322);
  }
  poc_cpu_features vm = machine("GenuineIntel", AVX2M, L7_AVX2 | L7_AVX512, L7D_AMX, L71_BF16,
                                XCR0_AMX);
  CHECK(vm.avx512f && vm.avx512_bf16 && vm.amx_tile && vm.amx_bf16 && vm.os_amx && !vm.amd);
}

static void test_names(void) {
  CHECK(poc_cpu_blas_version("OpenBLAS 0.3.21 NO_LAPACKE DYNAMIC_ARCH NO_AFFINITY USE_OPENMP "
                             "Haswell MAX_THREADS=64") == 321);
  CHECK(poc_cpu_blas_version("MKL") == 0 && poc_cpu_blas_version(NULL) == 0);
  CHECK(!strcmp(poc_cpu_kernels_name("cooperlake"), "Cooperlake"));
  CHECK(poc_cpu_kernels_name("Zen4") == NULL && poc_cpu_kernels_rank("Zen4") == 0);
  CHECK(poc_cpu_kernels_rank("Prescott") < poc_cpu_kernels_rank("Core2"));
  CHECK(poc_cpu_kernels_rank("Nehalem") < poc_cpu_kernels_rank("Sandybridge"));
  CHECK(poc_cpu_kernels_rank("Sandybridge") < poc_cpu_kernels_rank("Haswell"));
  CHECK(poc_cpu_kernels_rank("Haswell") == poc_cpu_kernels_rank("ZEN"));
  CHECK(poc_cpu_kernels_rank("Haswell") < poc_cpu_kernels_rank("SkylakeX"));
  CHECK(poc_cpu_kernels_rank("SkylakeX") < poc_cpu_kernels_rank("Cooperlake"));
  CHECK(poc_cpu_kernels_rank("Cooperlake") < poc_cpu_kernels_rank("SapphireRapids"));
}

static poc_cpu_plan decide(const poc_cpu_features *f, const char *kernels, const char *coretype,
                           const char *marker, const char *current, int dynamic) {
  poc_cpu_env e = {kernels, coretype, marker, current, dynamic, 321};
  poc_cpu_plan p;
  poc_cpu_decide(f, &e, &p);
  return p;
}

static void test_decide(void) {
  poc_cpu_features vm = machine("GenuineIntel", AVX2M, L7_AVX2 | L7_AVX512, L7D_AMX, L71_BF16,
                                XCR0_AMX);
  poc_cpu_features avx2 = machine("GenuineIntel", AVX2M, L7_AVX2, 0, 0, XCR0_AVX);
  poc_cpu_plan p;

  /* the issue: 0.3.21 falls back to Prescott → restart with Cooperlake */
  p = decide(&vm, NULL, NULL, NULL, "Prescott", 1);
  CHECK(p.reexec && !strcmp(p.target, "Cooperlake") && !strcmp(p.from, "Prescott"));
  CHECK(p.source == POC_CPU_CORRECTED && !p.warning[0]);
  /* after the restart: the marker says poc set it → corrected, no second restart */
  p = decide(&vm, NULL, "Cooperlake", "Cooperlake:Prescott", "Cooperlake", 1);
  CHECK(!p.reexec && p.source == POC_CPU_CORRECTED && !strcmp(p.from, "Prescott") && !p.warning[0]);
  /* the BLAS ignored it: a warning, never a loop */
  p = decide(&vm, NULL, "Cooperlake", "Cooperlake:Prescott", "Prescott", 1);
  CHECK(!p.reexec && p.source == POC_CPU_CORRECTED && strstr(p.warning, "did not take"));
  /* the marker without the variable (someone unset it): no restart either */
  p = decide(&vm, NULL, NULL, "Cooperlake:Prescott", "Prescott", 1);
  CHECK(!p.reexec && p.warning[0]);
  /* a BLAS built for one core cannot be corrected: say what to install */
  p = decide(&vm, NULL, NULL, NULL, "Prescott", 0);
  CHECK(!p.reexec && strstr(p.warning, "DYNAMIC_ARCH"));
  /* already as good as the features allow, or an unknown newer core name: left alone */
  p = decide(&avx2, NULL, NULL, NULL, "Haswell", 1);
  CHECK(!p.reexec && p.source == POC_CPU_BLAS && !p.warning[0]);
  p = decide(&vm, NULL, NULL, NULL, "Zen4", 1);
  CHECK(!p.reexec && p.source == POC_CPU_BLAS && !p.warning[0]);
  /* this machine: OPENBLAS_CORETYPE=Haswell preset by the user wins */
  p = decide(&vm, NULL, "Haswell", NULL, "Haswell", 1);
  CHECK(!p.reexec && p.source == POC_CPU_USER_CORETYPE && !p.warning[0]);
  CHECK(!strcmp(p.best, "Cooperlake"));
  /* a user's core the processor cannot run: warned, still the user's */
  p = decide(&avx2, NULL, "SkylakeX", NULL, "SkylakeX", 1);
  CHECK(!p.reexec && p.source == POC_CPU_USER_CORETYPE && strstr(p.warning, "lacks"));
  /* POC_CPU_KERNELS=blas: the BLAS's choice, even a weak one */
  p = decide(&vm, "blas", NULL, NULL, "Prescott", 1);
  CHECK(!p.reexec && p.source == POC_CPU_USER_POC && !p.warning[0]);
  /* POC_CPU_KERNELS=NAME forces a core, over OPENBLAS_CORETYPE too */
  p = decide(&vm, "sandybridge", "Haswell", NULL, "Haswell", 1);
  CHECK(p.reexec && !strcmp(p.target, "Sandybridge") && p.source == POC_CPU_USER_POC);
  p = decide(&vm, "Sandybridge", "Sandybridge", "Sandybridge:Haswell", "Sandybridge", 1);
  CHECK(!p.reexec && p.source == POC_CPU_USER_POC && !p.warning[0]);
  p = decide(&vm, "Sandybridge", "Sandybridge", "Sandybridge:Haswell", "Haswell", 1);
  CHECK(!p.reexec && strstr(p.warning, "did not take"));
  /* refused: a name OpenBLAS lacks, a core beyond the processor; then poc's own choice */
  p = decide(&vm, "Bogus", NULL, NULL, "Prescott", 1);
  CHECK(p.reexec && !strcmp(p.target, "Cooperlake") && strstr(p.warning, "Bogus"));
  p = decide(&avx2, "SkylakeX", NULL, NULL, "Haswell", 1);
  CHECK(!p.reexec && p.source == POC_CPU_BLAS && strstr(p.warning, "lacks"));
  p = decide(&vm, "auto", NULL, NULL, "Prescott", 1);
  CHECK(p.reexec && !strcmp(p.target, "Cooperlake"));
}

int main(void) {
  test_mapping();
  test_names();
  test_decide();
  return check_summary("cpu_kernels");
}
