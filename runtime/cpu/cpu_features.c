/* cpu_kernels.c — the CPU device's GEMM kernels: feature bits → OpenBLAS core, checked
 * and corrected before the first GEMM (see cpu_kernels.h for the rules). */
#include "cpu_features.h"

#include <cblas.h>
#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/syscall.h>
#include <unistd.h>

#if defined(__x86_64__) || defined(__i386__)
#include <cpuid.h>
#define POC_CPU_X86 1
#endif

/* ---- feature bits ------------------------------------------------------------------ */

#define BIT(w, b) ((int)(((w) >> (b)) & 1u))

void poc_cpu_decode(const poc_cpu_regs *r, poc_cpu_features *f) {
  memset(f, 0, sizeof *f);
  f->amd = !strcmp(r->vendor, "AuthenticAMD") || !strcmp(r->vendor, "HygonGenuine");
  if (r->max_leaf < 1) return;
  f->sse3 = BIT(r->l1_ecx, 0);
  f->ssse3 = BIT(r->l1_ecx, 9);
  f->fma = BIT(r->l1_ecx, 12);
  f->sse4_2 = BIT(r->l1_ecx, 20);
  f->avx = BIT(r->l1_ecx, 28);
  /* XCR0 is only there to read when the OS enabled XSAVE (OSXSAVE, leaf 1 ecx bit 27);
   * bits 1-2 are XMM/YMM, 5-7 the AVX-512 opmask and upper ZMM halves, 17-18 AMX tiles. */
  uint64_t x = BIT(r->l1_ecx, 27) ? r->xcr0 : 0;
  f->os_avx = (x & 0x6) == 0x6;
  f->os_avx512 = f->os_avx && (x & 0xe0) == 0xe0;
  f->os_amx = (x & 0x60000) == 0x60000;
  if (r->max_leaf < 7) return;
  f->avx2 = BIT(r->l7_ebx, 5);
  f->avx512f = BIT(r->l7_ebx, 16);
  f->avx512dq = BIT(r->l7_ebx, 17);
  f->avx512bw = BIT(r->l7_ebx, 30);
  f->avx512vl = BIT(r->l7_ebx, 31);
  f->amx_bf16 = BIT(r->l7_edx, 22);
  f->amx_tile = BIT(r->l7_edx, 24);
  f->avx512_bf16 = BIT(r->l7s1_eax, 5);
}

void poc_cpu_read(poc_cpu_features *f) {
  poc_cpu_regs r;
  memset(&r, 0, sizeof r);
#ifdef POC_CPU_X86
  unsigned a, b, c, d;
  if (__get_cpuid(0, &a, &b, &c, &d)) {
    r.max_leaf = a;
    memcpy(r.vendor, &b, 4);
    memcpy(r.vendor + 4, &d, 4);
    memcpy(r.vendor + 8, &c, 4);
  }
  if (r.max_leaf >= 1 && __get_cpuid(1, &a, &b, &c, &d)) {
    r.l1_ecx = c;
    r.l1_edx = d;
    if (BIT(c, 27)) {
      uint32_t lo, hi;
      __asm__ volatile("xgetbv" : "=a"(lo), "=d"(hi) : "c"(0));
      r.xcr0 = ((uint64_t)hi << 32) | lo;
    }
  }
  if (r.max_leaf >= 7) {
    __cpuid_count(7, 0, a, b, c, d);
    r.l7_ebx = b;
    r.l7_ecx = c;
    r.l7_edx = d;
    if (a >= 1) { /* leaf 7's eax is its last subleaf */
      __cpuid_count(7, 1, a, b, c, d);
      r.l7s1_eax = a;
    }
  }
#endif
  poc_cpu_decode(&r, f);
}

/* ---- cores ------------------------------------------------------------------------- */

/* OpenBLAS's x86-64 core names (driver/others/dynamic.c) by the instructions their
 * kernels use; cores of one ISA level share a rank, since poc cannot tell them apart
 * from feature bits and each runs fine on the other's processors. */
static const struct {
  const char *name;
  int rank;
} cores[] = {
    {"Katmai", 1},       {"Coppermine", 1}, {"Northwood", 1},   {"Banias", 1},
    {"Athlon", 1},       {"Opteron", 1},    {"Opteron_SSE3", 1}, {"Prescott", 1},
    {"Core2", 2},        {"Penryn", 2},     {"Dunnington", 2},  {"Atom", 2},
    {"Nano", 2},         {"Barcelona", 2},  {"Bobcat", 2},      {"Nehalem", 3},
    {"Sandybridge", 4},  {"Bulldozer", 4},  {"Piledriver", 4},  {"Steamroller", 4},
    {"Excavator", 4},    {"Haswell", 5},    {"Zen", 5},         {"SkylakeX", 6},
    {"Cooperlake", 7},   {"SapphireRapids", 8},
};
#define N_CORES (sizeof cores / sizeof cores[0])

const char *poc_cpu_kernels_name(const char *core) {
  if (!core) return NULL;
  for (size_t i = 0; i < N_CORES; i++)
    if (!strcasecmp(core, cores[i].name)) return cores[i].name;
  return NULL;
}

int poc_cpu_kernels_rank(const char *core) {
  if (!core) return 0;
  for (size_t i = 0; i < N_CORES; i++)
    if (!strcasecmp(core, cores[i].name)) return cores[i].rank;
  return 0;
}

int poc_cpu_blas_version(const char *config) {
  int a, b, c;
  if (!config || sscanf(config, "OpenBLAS %d.%d.%d", &a, &b, &c) != 3) return 0;
  return a * 10000 + b * 100 + c;
}

const char *poc_cpu_best_kernels(const poc_cpu_features *f, int v) {
  /* OpenBLAS's SkylakeX kernels need F, DQ, BW and VL (its own test is VL plus the OS
   * saving ZMM state); Cooperlake adds AVX512_BF16 (sbgemm); SapphireRapids adds AMX
   * tiles, a core name 0.3.21's list does not have yet. */
  int avx512 = f->avx512f && f->avx512dq && f->avx512bw && f->avx512vl && f->os_avx512 &&
               f->avx2 && f->fma;
  if (avx512) {
    if (f->avx512_bf16 && f->amx_tile && f->amx_bf16 && f->os_amx && v >= 322)
      return "SapphireRapids";
    return f->avx512_bf16 ? "Cooperlake" : "SkylakeX";
  }
  if (f->avx2 && f->fma && f->os_avx) return f->amd ? "Zen" : "Haswell";
  if (f->avx && f->os_avx) return "Sandybridge";
  if (f->sse4_2) return "Nehalem";
  if (f->ssse3) return "Core2";
  return "Prescott";
}

/* ---- the decision ------------------------------------------------------------------ */

static void copy(char *dst, size_t n, const char *s) { snprintf(dst, n, "%s", s ? s : ""); }

static void warn(poc_cpu_plan *p, const char *fmt, ...) {
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(p->warning, sizeof p->warning, fmt, ap);
  va_end(ap);
}

/* The marker "CORE:FROM" names the core poc set; NULL unless it is the one set now. */
static const char *marker_from(const poc_cpu_env *e) {
  if (!e->marker || !e->coretype) return NULL;
  const char *colon = strchr(e->marker, ':');
  if (!colon) return NULL;
  size_t n = (size_t)(colon - e->marker);
  if (strlen(e->coretype) != n || strncasecmp(e->marker, e->coretype, n)) return NULL;
  return colon + 1;
}

/* Restart with `core` unless this BLAS cannot take it or a restart already happened. */
static void restart_with(const poc_cpu_env *e, poc_cpu_plan *p, const char *core,
                         const char *why) {
  const char *cur = e->current ? e->current : "unknown";
  if (!e->dynamic) {
    warn(p, "%s asks for %s kernels but this OpenBLAS is built for %s alone and ignores "
            "OPENBLAS_CORETYPE; install a DYNAMIC_ARCH build (Debian: libopenblas0-openmp)",
         why, core, cur);
  } else if (e->marker) {
    warn(p, "OpenBLAS did not take OPENBLAS_CORETYPE=%s and runs %s kernels; upgrade OpenBLAS "
            "or set OPENBLAS_CORETYPE to a core it has", core, cur);
  } else {
    p->reexec = 1;
    copy(p->target, sizeof p->target, core);
    copy(p->from, sizeof p->from, cur);
  }
}

void poc_cpu_decide(const poc_cpu_features *f, const poc_cpu_env *e, poc_cpu_plan *p) {
  memset(p, 0, sizeof *p);
  const char *best = poc_cpu_best_kernels(f, e->blas_version);
  copy(p->best, sizeof p->best, best);
  int rbest = poc_cpu_kernels_rank(best), rcur = poc_cpu_kernels_rank(e->current);

  const char *k = e->kernels && *e->kernels && strcasecmp(e->kernels, "auto") ? e->kernels : NULL;
  if (k && !strcasecmp(k, "blas")) {
    p->source = POC_CPU_USER_POC;
    return;
  }
  if (k) {
    const char *name = poc_cpu_kernels_name(k);
    if (!name) {
      warn(p, "POC_CPU_KERNELS=%s is not an OpenBLAS core name (nor auto or blas); ignored", k);
    } else if (poc_cpu_kernels_rank(name) > rbest) {
      /* kernels for instructions the processor lacks stop at the first GEMM (SIGILL) */
      warn(p, "POC_CPU_KERNELS=%s needs instructions this processor lacks (it allows up to "
              "%s); ignored", name, best);
    } else {
      p->source = POC_CPU_USER_POC;
      if (!e->current || strcasecmp(e->current, name)) restart_with(e, p, name, "POC_CPU_KERNELS");
      return;
    }
  }

  const char *from = marker_from(e);
  if (e->coretype && *e->coretype && !from) {
    p->source = POC_CPU_USER_CORETYPE;
    int ruser = poc_cpu_kernels_rank(e->coretype);
    if (ruser > rbest)
      warn(p, "OPENBLAS_CORETYPE=%s needs instructions this processor lacks (it allows up to "
              "%s); unset it or set %s", e->coretype, best, best);
    return;
  }
  if (from) {
    p->source = POC_CPU_CORRECTED;
    copy(p->from, sizeof p->from, from);
    if (!e->current || strcasecmp(e->current, e->coretype))
      warn(p, "OpenBLAS did not take OPENBLAS_CORETYPE=%s and runs %s kernels; upgrade OpenBLAS "
              "or set OPENBLAS_CORETYPE to a core it has", e->coretype,
           e->current ? e->current : "unknown");
    return;
  }
  p->source = POC_CPU_BLAS;
  /* an unknown name (a newer OpenBLAS's core) is left alone: poc cannot rank it */
  if (rcur == 0 || rcur >= rbest) return;
  restart_with(e, p, best, "the processor");
  if (p->reexec) p->source = POC_CPU_CORRECTED;
}

/* ---- this process ------------------------------------------------------------------ */

#define MARKER "POC_CPU_KERNELS_SET"
#define ARCH_REQ_XCOMP_PERM 0x1023
#define XFEATURE_XTILEDATA 18

static poc_cpu_features g_feat;
static poc_cpu_plan g_plan;
static int g_started;

const char *poc_cpu_kernels_in_use(void) {
  const char *c = openblas_get_corename();
  return c ? c : "unknown";
}

static void decide_here(void) {
  poc_cpu_read(&g_feat);
  const char *config = openblas_get_config();
  poc_cpu_env e = {getenv("POC_CPU_KERNELS"), getenv("OPENBLAS_CORETYPE"), getenv(MARKER),
                   poc_cpu_kernels_in_use(), config && strstr(config, "DYNAMIC_ARCH") != NULL,
                   poc_cpu_blas_version(config)};
  poc_cpu_decide(&g_feat, &e, &g_plan);
}

/* argv from /proc/self/cmdline, for mains declared without arguments. */
static char **cmdline_argv(void) {
  FILE *fp = fopen("/proc/self/cmdline", "rb");
  if (!fp) return NULL;
  size_t cap = 4096, n = 0;
  char *buf = malloc(cap + 1);
  size_t got;
  while (buf && (got = fread(buf + n, 1, cap - n, fp)) > 0) {
    n += got;
    if (n == cap) {
      char *nb = realloc(buf, 2 * cap + 1);
      if (!nb) {
        free(buf);
        buf = NULL;
        break;
      }
      buf = nb;
      cap *= 2;
    }
  }
  fclose(fp);
  if (!buf || !n) {
    free(buf);
    return NULL;
  }
  buf[n] = '\0';
  size_t words = 0;
  for (size_t i = 0; i < n; i++) words += buf[i] == '\0';
  if (buf[n - 1] != '\0') words++;
  char **av = calloc(words + 1, sizeof *av);
  if (!av) {
    free(buf);
    return NULL;
  }
  size_t w = 0;
  for (size_t i = 0; i < n && w < words; i += strlen(buf + i) + 1) av[w++] = buf + i;
  return av;
}

void poc_cpu_start(int argc, char **argv) {
  (void)argc;
  if (g_started) return;
  g_started = 1;
  decide_here();
  if (g_plan.reexec) {
    /* OpenBLAS read OPENBLAS_CORETYPE in its constructor, before main; the only way to
     * change its kernels in this process image is to load it again. Nothing has run yet
     * (no thread, no output), so restarting the same executable with the same arguments
     * is invisible to the caller. The marker stops a second restart. */
    char mark[80];
    snprintf(mark, sizeof mark, "%s:%s", g_plan.target, g_plan.from);
    char **av = argv ? argv : cmdline_argv();
    if (av && !setenv("OPENBLAS_CORETYPE", g_plan.target, 1) && !setenv(MARKER, mark, 1)) {
      fflush(NULL);
      execv("/proc/self/exe", av);
    }
    int e = errno;
    unsetenv("OPENBLAS_CORETYPE");
    unsetenv(MARKER);
    g_plan.reexec = 0;
    g_plan.source = POC_CPU_BLAS;
    snprintf(g_plan.warning, sizeof g_plan.warning,
             "cannot restart with OPENBLAS_CORETYPE=%s (%s); set it yourself before running",
             g_plan.target, av ? strerror(e) : "no arguments");
  }
  /* AMX state is off for a Linux process until it asks; the kernels that use tiles
   * would otherwise stop at their first tile instruction. */
  if (!strcasecmp(poc_cpu_kernels_in_use(), "SapphireRapids") && g_feat.os_amx)
    (void)syscall(SYS_arch_prctl, ARCH_REQ_XCOMP_PERM, XFEATURE_XTILEDATA);
}

int poc_cpu_describe(char *buf, size_t n) {
  if (!g_started) {
    g_started = 1;
    decide_here(); /* report only: too late to restart */
  }
  const poc_cpu_features *f = &g_feat;
  const char *cur = poc_cpu_kernels_in_use();
  const char *config = openblas_get_config();
  int ver = poc_cpu_blas_version(config);
  char blas[48];
  if (ver)
    snprintf(blas, sizeof blas, "OpenBLAS %d.%d.%d", ver / 10000, ver / 100 % 100, ver % 100);
  else
    snprintf(blas, sizeof blas, "OpenBLAS");

  char why[160];
  const char *kern = getenv("POC_CPU_KERNELS");
  switch (g_plan.source) {
  case POC_CPU_CORRECTED:
    snprintf(why, sizeof why, "corrected from %s", g_plan.from);
    break;
  case POC_CPU_USER_CORETYPE:
    snprintf(why, sizeof why, "OPENBLAS_CORETYPE=%.40s, set by the user",
             getenv("OPENBLAS_CORETYPE") ? getenv("OPENBLAS_CORETYPE") : "");
    break;
  case POC_CPU_USER_POC:
    snprintf(why, sizeof why, "POC_CPU_KERNELS=%.40s, set by the user%s", kern ? kern : "",
             kern && !strcasecmp(kern, "blas") ? ": OpenBLAS's choice" : "");
    break;
  default:
    snprintf(why, sizeof why, "OpenBLAS's choice");
  }
  int rcur = poc_cpu_kernels_rank(cur), rbest = poc_cpu_kernels_rank(g_plan.best);
  if (g_plan.source != POC_CPU_BLAS && g_plan.source != POC_CPU_CORRECTED && rcur &&
      rcur < rbest) {
    size_t l = strlen(why);
    snprintf(why + l, sizeof why - l, "; the features allow %s", g_plan.best);
  }

  char feats[128] = "";
  size_t l = 0;
#define ADD(cond, name)                                                          \
  if (cond) l += (size_t)snprintf(feats + l, sizeof feats - l, "%s%s", l ? " " : "", name)
  ADD(f->avx2 && f->os_avx, "avx2");
  ADD(f->fma && f->os_avx, "fma");
  ADD(f->avx512f && f->os_avx512, "avx512f");
  ADD(f->avx512_bf16 && f->os_avx512, "avx512_bf16");
  ADD(f->amx_tile && f->amx_bf16 && f->os_amx, "amx");
  ADD(!l && f->avx && f->os_avx, "avx");
  ADD(!l, "no avx");
#undef ADD

  int threads = openblas_get_num_threads();
  int w = snprintf(buf, n, "cpu: %s, %s kernels (%s), %d thread%s, %s", blas, cur, why, threads,
                   threads == 1 ? "" : "s", feats);
  if (g_plan.warning[0] && w >= 0) {
    size_t at = (size_t)w < n ? (size_t)w : (n ? n - 1 : 0);
    w += snprintf(n ? buf + at : NULL, n > at ? n - at : 0, "\ncpu: warning: %s", g_plan.warning);
  }
  return w;
}

void poc_cpu_report(const char *who) {
  char line[768];
  poc_cpu_describe(line, sizeof line);
  /* each line of the report carries the program's name, like its other messages */
  for (char *s = line; s && *s;) {
    char *nl = strchr(s, '\n');
    if (nl) *nl = '\0';
    if (who) fprintf(stderr, "%s: %s\n", who, s);
    else fprintf(stderr, "%s\n", s);
    s = nl ? nl + 1 : NULL;
  }
}
