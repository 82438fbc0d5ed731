/* cuemu_nvrtc.c — NVRTC on the CPU, for tests: the very source poc hands NVRTC is built
 * by the host C++ compiler into a shared object that cuModuleLoadDataEx loads.
 *
 *   c++ -std=c++17 -O1 -shared -fPIC -include cuda_emul.h -x c++ SRC -o k.so
 *
 * in a private temporary directory that also holds the program's headers. Before
 * compiling, every `extern "C" __global__ ... NAME(...) {` definition in the source gets
 * a registration line,
 *
 *   extern "C" int poc_emu_kernel_NAME(int mode, void **args)
 *     { return poc_emu_launch(NAME, mode, args, <launch bound>, <uses __shared__>); }
 *
 * whose variadic template (cuda_emul.h) unpacks cuLaunchKernel's kernelParams by NAME's
 * own parameter types. The "cubin" or "PTX" is the .so's bytes behind a small header
 * (emu_image) saying which architecture it was built for; a compile error is
 * NVRTC_ERROR_COMPILATION with the compiler's output as the program log.
 * POC_CUDA_EMU_CXX names another compiler. POC_CUDA_EMU_NVRTC_LOG=FILE appends one line
 * per nvrtcCompileProgram call ("nvrtcCompileProgram NAME ARCH"), so tests can tell a run
 * that compiled kernels from one that loaded them.
 */
#include <ctype.h>
#include <dirent.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <nvrtc.h>

#include "cuemu_internal.h"

#ifndef POC_CUEMU_HEADER
#error "POC_CUEMU_HEADER (the path of cuda_emul.h) comes from tests/cuda_emul/tests.cmake"
#endif

struct _nvrtcProgram {
  char *src, *name, *log;
  int nh;
  char **hsrc, **hname;
  unsigned char *image; /* emu_image + .so */
  size_t image_n;
  int arch, is_ptx;
};

static char *nve_strdup(const char *s) {
  size_t n = strlen(s) + 1;
  char *d = malloc(n);
  if (d) memcpy(d, s, n);
  return d;
}

const char *nvrtcGetErrorString(nvrtcResult r) {
  static const char *names[] = {"NVRTC_SUCCESS", "NVRTC_ERROR_OUT_OF_MEMORY",
                                "NVRTC_ERROR_PROGRAM_CREATION_FAILURE", "NVRTC_ERROR_INVALID_INPUT",
                                "NVRTC_ERROR_INVALID_PROGRAM", "NVRTC_ERROR_INVALID_OPTION",
                                "NVRTC_ERROR_COMPILATION"};
  return (unsigned)r < sizeof names / sizeof names[0] ? names[r] : "NVRTC_ERROR unknown";
}

nvrtcResult nvrtcVersion(int *major, int *minor) {
  if (!major || !minor) return NVRTC_ERROR_INVALID_INPUT;
  *major = 13;
  *minor = 0;
  return NVRTC_SUCCESS;
}

nvrtcResult nvrtcCreateProgram(nvrtcProgram *prog, const char *src, const char *name, int nh,
                               const char *const *hsrc, const char *const *hname) {
  if (!prog || !src || nh < 0 || (nh > 0 && (!hsrc || !hname))) return NVRTC_ERROR_INVALID_INPUT;
  struct _nvrtcProgram *p = calloc(1, sizeof *p);
  if (!p) return NVRTC_ERROR_OUT_OF_MEMORY;
  p->src = nve_strdup(src);
  p->name = nve_strdup(name ? name : "default_program");
  p->hsrc = calloc((size_t)nh + 1, sizeof *p->hsrc);
  p->hname = calloc((size_t)nh + 1, sizeof *p->hname);
  int ok = p->src && p->name && p->hsrc && p->hname;
  for (int i = 0; ok && i < nh; i++, p->nh++) {
    if (!hname[i] || strchr(hname[i], '/') || !hsrc[i]) ok = 0; /* flat header names only */
    else ok = (p->hsrc[i] = nve_strdup(hsrc[i])) && (p->hname[i] = nve_strdup(hname[i]));
  }
  if (!ok) {
    nvrtcDestroyProgram(&p);
    return NVRTC_ERROR_PROGRAM_CREATION_FAILURE;
  }
  *prog = p;
  return NVRTC_SUCCESS;
}

nvrtcResult nvrtcDestroyProgram(nvrtcProgram *prog) {
  if (!prog || !*prog) return NVRTC_ERROR_INVALID_PROGRAM;
  struct _nvrtcProgram *p = *prog;
  for (int i = 0; i < p->nh + 1 && p->hsrc && p->hname; i++) {
    free(p->hsrc[i]);
    free(p->hname[i]);
  }
  free(p->hsrc);
  free(p->hname);
  free(p->src);
  free(p->name);
  free(p->log);
  free(p->image);
  free(p);
  *prog = NULL;
  return NVRTC_SUCCESS;
}

/* ---- finding the kernels ------------------------------------------------------------ */

typedef struct { char *s; size_t len, cap; } nve_buf;

static void nve_add(nve_buf *b, const char *s, size_t n) {
  if (!b->s && b->cap == (size_t)-1) return;
  if (b->len + n + 1 > b->cap) {
    size_t cap = b->cap ? b->cap : 4096;
    while (cap < b->len + n + 1) cap *= 2;
    char *t = realloc(b->s, cap);
    if (!t) {
      free(b->s);
      *b = (nve_buf){NULL, 0, (size_t)-1};
      return;
    }
    b->s = t;
    b->cap = cap;
  }
  memcpy(b->s + b->len, s, n);
  b->len += n;
  b->s[b->len] = 0;
}

/* The source with comments and string/char literals blanked (same length), so the scan
 * below sees only code. */
static char *nve_code_only(const char *s) {
  size_t n = strlen(s);
  char *c = nve_strdup(s);
  if (!c) return NULL;
  for (size_t i = 0; i < n;) {
    if (s[i] == '/' && s[i + 1] == '/') {
      while (i < n && s[i] != '\n') c[i++] = ' ';
    } else if (s[i] == '/' && s[i + 1] == '*') {
      c[i] = c[i + 1] = ' ';
      i += 2;
      while (i < n && !(s[i] == '*' && s[i + 1] == '/')) c[i] = s[i] == '\n' ? '\n' : ' ', i++;
      if (i < n) c[i] = c[i + 1] = ' ', i += 2;
    } else if (s[i] == '"' || s[i] == '\'') {
      char q = s[i++];
      while (i < n && s[i] != q) {
        if (s[i] == '\\' && i + 1 < n) c[i++] = ' ';
        c[i++] = ' ';
      }
      i++;
    } else {
      i++;
    }
  }
  return c;
}

static int nve_ident(int ch) { return isalnum(ch) || ch == '_'; }

/* Index one past the parenthesis/brace group opening at c[i]. */
static size_t nve_group(const char *c, size_t i) {
  char open = c[i], close = open == '(' ? ')' : '}';
  int depth = 0;
  for (; c[i]; i++) {
    if (c[i] == open) depth++;
    if (c[i] == close && --depth == 0) return i + 1;
  }
  return i;
}

/* Appends a registration for each `extern "C" __global__` definition of `src` to `out`. */
static void nve_register(const char *src, nve_buf *out) {
  char *c = nve_code_only(src);
  if (!c) return;
  for (char *g = strstr(c, "__global__"); g; g = strstr(g + 10, "__global__")) {
    if ((g > c && nve_ident(g[-1])) || nve_ident(g[10])) continue;
    /* preceded by extern "C" (blanked to extern " ") */
    const char *b = g;
    while (b > c && isspace((unsigned char)b[-1])) b--;
    if (b - c < 3 || b[-1] != '"' || b[-3] != '"' || src[b - c - 2] != 'C') continue;
    b -= 3;
    while (b > c && isspace((unsigned char)b[-1])) b--;
    if (b - c < 6 || strncmp(b - 6, "extern", 6)) continue;
    size_t i = (size_t)(g - c) + 10;
    char name[128] = "", bound[128] = "0";
    while (c[i]) {
      while (isspace((unsigned char)c[i])) i++;
      if (c[i] == '(' && name[0]) break;
      if (!nve_ident(c[i])) {
        i++;
        continue;
      }
      size_t s = i;
      while (nve_ident(c[i])) i++;
      size_t k = i;
      while (isspace((unsigned char)c[k])) k++;
      if (i - s == 17 && !strncmp(c + s, "__launch_bounds__", 17) && c[k] == '(') {
        size_t e = nve_group(c, k), a = k + 1, z = a;
        while (z < e - 1 && c[z] != ',') z++;
        snprintf(bound, sizeof bound, "(%.*s)", (int)(z - a), c + a);
        i = e;
        continue;
      }
      snprintf(name, sizeof name, "%.*s", (int)(i - s), c + s);
    }
    if (!name[0] || c[i] != '(') continue;
    size_t k = nve_group(c, i);
    while (isspace((unsigned char)c[k])) k++;
    if (c[k] != '{') continue; /* a declaration */
    size_t e = nve_group(c, k);
    char save = c[e];
    c[e] = 0;
    int shared = strstr(c + k, "__shared__") != NULL;
    c[e] = save;
    char line[512];
    int n = snprintf(line, sizeof line,
                     "extern \"C\" int poc_emu_kernel_%s(int mode, void **args) {\n"
                     "  return poc_emu_launch(%s, mode, args, %s, %d);\n}\n",
                     name, name, bound, shared);
    nve_add(out, line, (size_t)n);
  }
  free(c);
}

/* ---- compiling --------------------------------------------------------------------- */

static int nve_write(const char *path, const char *text, size_t n) {
  FILE *f = fopen(path, "wb");
  if (!f) return -1;
  int ok = fwrite(text, 1, n, f) == n;
  return fclose(f) == 0 && ok ? 0 : -1;
}

static char *nve_read(const char *path, size_t *n) {
  FILE *f = fopen(path, "rb");
  if (!f) return NULL;
  fseek(f, 0, SEEK_END);
  long len = ftell(f);
  fseek(f, 0, SEEK_SET);
  char *s = len >= 0 ? malloc((size_t)len + 1) : NULL;
  if (s && fread(s, 1, (size_t)len, f) != (size_t)len) {
    free(s);
    s = NULL;
  }
  fclose(f);
  if (s) {
    s[len] = 0;
    *n = (size_t)len;
  }
  return s;
}

static void nve_rmdir(const char *dir) {
  DIR *d = opendir(dir);
  if (d) {
    struct dirent *e;
    char p[1024];
    while ((e = readdir(d)))
      if (strcmp(e->d_name, ".") && strcmp(e->d_name, "..")) {
        snprintf(p, sizeof p, "%s/%s", dir, e->d_name);
        unlink(p);
      }
    closedir(d);
  }
  rmdir(dir);
}

/* The last build, by everything that went into it: poc_cuda_compile asks for a cubin and
 * then PTX of the same source, and without __CUDA_ARCH__ in the source they are one build. */
static char *nve_last_key, *nve_last_so;
static size_t nve_last_n, nve_last_key_n;

static char *nve_key(const struct _nvrtcProgram *p, const char *const *argv, int argc, size_t *n) {
  nve_buf k = {0};
  for (int i = 0; i < argc; i++) nve_add(&k, argv[i], strlen(argv[i]) + 1);
  for (int i = 0; i < p->nh; i++) {
    nve_add(&k, p->hname[i], strlen(p->hname[i]) + 1);
    nve_add(&k, p->hsrc[i], strlen(p->hsrc[i]) + 1);
  }
  nve_add(&k, p->name, strlen(p->name) + 1);
  nve_add(&k, p->src, strlen(p->src));
  *n = k.len;
  return k.s;
}

/* "sm_90" → 90 (cubin), "compute_80" → 80 (PTX); -1 otherwise */
static int nve_arch(const char *a, int *is_ptx) {
  const char *d = NULL;
  if (!strncmp(a, "sm_", 3)) d = a + 3, *is_ptx = 0;
  else if (!strncmp(a, "compute_", 8)) d = a + 8, *is_ptx = 1;
  if (!d || !isdigit((unsigned char)d[0]) || !isdigit((unsigned char)d[1])) return -1;
  return atoi(d);
}

/* The program's image: emu_image, then the .so */
static nvrtcResult nve_image(struct _nvrtcProgram *p, const char *so, size_t n) {
  emu_image h = {EMU_IMAGE_MAGIC, (uint32_t)p->is_ptx, (uint32_t)p->arch, n};
  p->image = malloc(sizeof h + n);
  if (!p->image) return NVRTC_ERROR_OUT_OF_MEMORY;
  memcpy(p->image, &h, sizeof h);
  memcpy(p->image + sizeof h, so, n);
  p->image_n = sizeof h + n;
  if (!p->log) p->log = nve_strdup("");
  return NVRTC_SUCCESS;
}

/* One line per compile, appended in one write so concurrent processes do not interleave. */
static void nve_log_call(const struct _nvrtcProgram *p) {
  const char *path = getenv("POC_CUDA_EMU_NVRTC_LOG");
  if (!path || !*path) return;
  char line[300];
  int n = snprintf(line, sizeof line, "nvrtcCompileProgram %s %s_%d\n", p->name,
                   p->is_ptx ? "compute" : "sm", p->arch);
  int fd = open(path, O_WRONLY | O_CREAT | O_APPEND, 0644);
  if (fd < 0) return;
  if (n > 0 && write(fd, line, (size_t)n) < 0) n = 0;
  close(fd);
}

nvrtcResult nvrtcCompileProgram(nvrtcProgram p, int nopt, const char *const *opts) {
  if (!p) return NVRTC_ERROR_INVALID_PROGRAM;
  if (nopt < 0 || (nopt > 0 && !opts)) return NVRTC_ERROR_INVALID_INPUT;
  free(p->log);
  free(p->image);
  p->log = NULL;
  p->image = NULL;
  p->arch = 52; /* NVRTC's default */
  p->is_ptx = 1;
  const char *argv[96];
  int argc = 0;
  const char *cxx = getenv("POC_CUDA_EMU_CXX");
  argv[argc++] = cxx && *cxx ? cxx : "c++";
  const char *fixed[] = {"-std=c++17", "-O1", "-shared", "-fPIC", "-w", "-include", POC_CUEMU_HEADER};
  for (size_t i = 0; i < sizeof fixed / sizeof fixed[0]; i++) argv[argc++] = fixed[i];
  for (int i = 0; i < nopt; i++) {
    const char *o = opts[i], *a = NULL;
    if (!o) return NVRTC_ERROR_INVALID_OPTION;
    if (!strncmp(o, "--gpu-architecture=", 19)) a = o + 19;
    else if (!strncmp(o, "-arch=", 6)) a = o + 6;
    else if (!strcmp(o, "-arch") || !strcmp(o, "--gpu-architecture")) a = i + 1 < nopt ? opts[++i] : "";
    if (a) {
      if ((p->arch = nve_arch(a, &p->is_ptx)) < 0) return NVRTC_ERROR_INVALID_OPTION;
    } else if ((!strncmp(o, "-D", 2) || !strncmp(o, "-I", 2)) && argc < 80) {
      argv[argc++] = o; /* macros and include paths mean the same to c++ */
    } /* everything else (--std, -default-device, --use_fast_math, ...) has no CPU meaning */
  }
  nve_log_call(p);
  char arch_def[40];
  snprintf(arch_def, sizeof arch_def, "-D__CUDA_ARCH__=%d", p->arch * 10);
  if (strstr(p->src, "__CUDA_ARCH__")) argv[argc++] = arch_def;
  argv[argc++] = "-D__CUDACC_RTC__";
  argv[argc] = NULL;
  size_t key_n = 0;
  char *key = nve_key(p, argv, argc, &key_n);
  if (key && nve_last_key && key_n == nve_last_key_n && !memcmp(key, nve_last_key, key_n)) {
    free(key);
    return nve_image(p, nve_last_so, nve_last_n);
  }

  const char *tmp = getenv("TMPDIR");
  char dir[512], path[700], so[700], log[700], inc[720];
  snprintf(dir, sizeof dir, "%s/poc-nvrtc-emu-XXXXXX", tmp && *tmp ? tmp : "/tmp");
  if (!mkdtemp(dir)) {
    free(key);
    return NVRTC_ERROR_OUT_OF_MEMORY;
  }
  int ok = 1;
  for (int i = 0; ok && i < p->nh; i++) {
    snprintf(path, sizeof path, "%s/%s", dir, p->hname[i]);
    ok = !nve_write(path, p->hsrc[i], strlen(p->hsrc[i]));
  }
  nve_buf src = {0};
  char first[300];
  snprintf(first, sizeof first, "#line 1 \"%s\"\n", p->name); /* messages name the program */
  nve_add(&src, first, strlen(first));
  nve_add(&src, p->src, strlen(p->src));
  const char *reg = "\n#line 1 \"<cuda emulation: kernel registrations>\"\n";
  nve_add(&src, reg, strlen(reg));
  nve_register(p->src, &src);
  snprintf(path, sizeof path, "%s/program.cu", dir);
  ok = ok && src.s && !nve_write(path, src.s, src.len);
  free(src.s);
  snprintf(so, sizeof so, "%s/program.so", dir);
  snprintf(log, sizeof log, "%s/log.txt", dir);
  snprintf(inc, sizeof inc, "-I%s", dir);
  argv[argc++] = inc;
  argv[argc++] = "-o";
  argv[argc++] = so;
  argv[argc++] = "-x";
  argv[argc++] = "c++";
  argv[argc++] = path;
  argv[argc] = NULL;
  int status = -1;
  fflush(NULL); /* the child must not inherit unwritten stdio buffers */
  pid_t pid = ok ? fork() : -1;
  if (pid == 0) {
    int fd = open(log, O_WRONLY | O_CREAT | O_TRUNC, 0600);
    if (fd >= 0) dup2(fd, 1), dup2(fd, 2);
    execvp(argv[0], (char *const *)argv);
    static const char msg[] = "cuda emulation: cannot run the host C++ compiler\n";
    if (write(2, msg, sizeof msg - 1) < 0) _exit(126);
    _exit(127);
  }
  if (pid > 0) waitpid(pid, &status, 0);
  size_t n = 0;
  p->log = nve_read(log, &n);
  if (!p->log) p->log = nve_strdup(pid > 0 ? "" : "cuda emulation: could not run the compiler");
  nvrtcResult r = NVRTC_ERROR_COMPILATION;
  char *bytes = pid > 0 && WIFEXITED(status) && WEXITSTATUS(status) == 0 ? nve_read(so, &n) : NULL;
  nve_rmdir(dir);
  if (bytes) {
    r = nve_image(p, bytes, n);
    free(nve_last_key);
    free(nve_last_so);
    nve_last_key = key;
    nve_last_key_n = key_n;
    nve_last_so = bytes;
    nve_last_n = n;
  } else {
    free(key);
  }
  return r;
}

nvrtcResult nvrtcGetProgramLogSize(nvrtcProgram p, size_t *n) {
  if (!p) return NVRTC_ERROR_INVALID_PROGRAM;
  if (!n) return NVRTC_ERROR_INVALID_INPUT;
  *n = p->log ? strlen(p->log) + 1 : 1;
  return NVRTC_SUCCESS;
}

nvrtcResult nvrtcGetProgramLog(nvrtcProgram p, char *log) {
  if (!p) return NVRTC_ERROR_INVALID_PROGRAM;
  if (!log) return NVRTC_ERROR_INVALID_INPUT;
  strcpy(log, p->log ? p->log : "");
  return NVRTC_SUCCESS;
}

/* As NVRTC: a cubin exists only for sm_XY, PTX only for compute_XY. */
static nvrtcResult nve_get(nvrtcProgram p, int want_ptx, size_t *n, char *out) {
  if (!p) return NVRTC_ERROR_INVALID_PROGRAM;
  if (!p->image || p->is_ptx != want_ptx) return NVRTC_ERROR_INVALID_INPUT;
  if (n) *n = p->image_n;
  if (out) memcpy(out, p->image, p->image_n);
  return n || out ? NVRTC_SUCCESS : NVRTC_ERROR_INVALID_INPUT;
}

nvrtcResult nvrtcGetPTXSize(nvrtcProgram p, size_t *n) { return nve_get(p, 1, n, NULL); }
nvrtcResult nvrtcGetPTX(nvrtcProgram p, char *out) { return nve_get(p, 1, NULL, out); }
nvrtcResult nvrtcGetCUBINSize(nvrtcProgram p, size_t *n) { return nve_get(p, 0, n, NULL); }
nvrtcResult nvrtcGetCUBIN(nvrtcProgram p, char *out) { return nve_get(p, 0, NULL, out); }
