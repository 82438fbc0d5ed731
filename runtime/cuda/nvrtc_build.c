/* nvrtc_build.c — kernel templates → CUDA source → cubin/PTX through NVRTC.
 *
 * Used by `poc build --arch` (the binary embeds the result) and by the CUDA device when
 * the binary has no usable image and the kernel cache (kcache.c) has no entry. A failed compile leaves the source on disk
 * and returns NVRTC's whole log, because a template error is only readable next to the
 * instantiated text.
 */
#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "cuda_internal.h"

const char *poc_cuda_template_text(const char *name) {
  for (int i = 0; i < poc_cuda_n_templates; i++)
    if (!strcmp(poc_cuda_templates[i].name, name)) return poc_cuda_templates[i].text;
  return NULL;
}

/* ---- a growable string ----------------------------------------------------------- */

typedef struct { char *s; size_t len, cap; int oom; } nvb_buf;

static void nvb_add(nvb_buf *b, const char *fmt, ...) {
  if (b->oom) return;
  for (;;) {
    va_list ap;
    va_start(ap, fmt);
    int n = vsnprintf(b->s ? b->s + b->len : NULL, b->s ? b->cap - b->len : 0, fmt, ap);
    va_end(ap);
    if (n < 0) {
      b->oom = 1;
      return;
    }
    if (b->s && b->len + (size_t)n < b->cap) {
      b->len += (size_t)n;
      return;
    }
    size_t cap = (b->cap ? b->cap : 4096);
    while (cap <= b->len + (size_t)n) cap *= 2;
    char *s = realloc(b->s, cap);
    if (!s) {
      b->oom = 1;
      return;
    }
    b->s = s;
    b->cap = cap;
  }
}

/* ---- instantiation --------------------------------------------------------------- */

/* Shared-memory tiles in attention.cu hold two buffers of K and V (or Q and dO) tiles of
 * 64, 32 or 16 padded rows as the head dim grows (see there): up to 256 dims they fit the
 * 48 KB a block gets without opting in. */
#define NVB_MAX_HD 256

char *poc_cuda_instantiate(const poc_dims *d, const char *const *names, int n_names,
                           char *err) {
  if (d->H <= 0 || d->F <= 0 || d->V <= 0 || d->nh <= 0 || d->nkv <= 0 || d->hd <= 0 ||
      d->nh % d->nkv || d->hd % 2 || d->hd > NVB_MAX_HD || !(d->eps >= 0)) {
    snprintf(err, POC_ERR_LEN,
             "cuda: the kernels cannot take these dimensions (hidden %d, intermediate %d, "
             "vocab %d, heads %d, kv heads %d, head_dim %d): head_dim must be even and at "
             "most %d, heads a multiple of kv heads", d->H, d->F, d->V, d->nh, d->nkv, d->hd,
             NVB_MAX_HD);
    return NULL;
  }
  nvb_buf b = {0};
  nvb_add(&b, "/* poc kernels for a Llama-family model: hidden %d, intermediate %d, vocab %d,\n"
          " * %d query heads, %d kv heads, head_dim %d. Instantiated from kernels/templates. */\n",
          d->H, d->F, d->V, d->nh, d->nkv, d->hd);
  nvb_add(&b, "#define POC_H %d\n#define POC_F %d\n#define POC_V %d\n#define POC_NH %d\n"
          "#define POC_NKV %d\n#define POC_HD %d\n#define POC_EPS %.9ef\n",
          d->H, d->F, d->V, d->nh, d->nkv, d->hd, d->eps);
  for (int i = 0; i < poc_cuda_n_templates; i++) {
    const poc_cuda_template *t = &poc_cuda_templates[i];
    size_t nl = strlen(t->name);
    if (nl < 3 || strcmp(t->name + nl - 3, ".cu")) continue;
    int want = names == NULL;
    for (int k = 0; k < n_names && !want; k++) want = !strcmp(names[k], t->name);
    if (want) nvb_add(&b, "\n#line 1 \"%s\"\n%s", t->name, t->text);
  }
  for (int k = 0; k < n_names; k++) {
    const char *t = poc_cuda_template_text(names[k]);
    size_t nl = strlen(names[k]);
    if (!t || nl < 3 || strcmp(names[k] + nl - 3, ".cu")) {
      snprintf(err, POC_ERR_LEN, "cuda: no kernel template named '%s'", names[k]);
      free(b.s);
      return NULL;
    }
  }
  if (b.oom) {
    snprintf(err, POC_ERR_LEN, "cuda: out of memory instantiating kernel templates");
    free(b.s);
    return NULL;
  }
  return b.s;
}

/* ---- keeping sources on disk ----------------------------------------------------- */

static int nvb_write(const char *path, const char *text) {
  FILE *f = fopen(path, "w");
  if (!f) return -1;
  size_t n = strlen(text);
  int ok = fwrite(text, 1, n, f) == n;
  return (fclose(f) == 0 && ok) ? 0 : -1;
}

/* Writes the source as DIR/NAME (plus the .cuh helpers, so `nvcc -I DIR` reads it) and
 * returns the path in `path`; DIR is POC_KEEP_CU when that names a directory, else a
 * fresh directory under $TMPDIR. */
static int nvb_keep(const char *source, const char *name, char *path, size_t cap) {
  const char *keep = getenv("POC_KEEP_CU");
  char dir[512];
  if (keep && *keep && strcmp(keep, "1")) {
    snprintf(dir, sizeof dir, "%s", keep);
    if (mkdir(dir, 0777) && errno != EEXIST) return -1;
  } else {
    const char *tmp = getenv("TMPDIR");
    snprintf(dir, sizeof dir, "%s/poc-cuda-XXXXXX", tmp && *tmp ? tmp : "/tmp");
    if (!mkdtemp(dir)) return -1;
  }
  char base[128];
  size_t k = 0;
  for (const char *p = name; *p && k + 1 < sizeof base; p++)
    base[k++] = (char)((*p >= 'a' && *p <= 'z') || (*p >= 'A' && *p <= 'Z') ||
                       (*p >= '0' && *p <= '9') || *p == '.' || *p == '-' || *p == '_' ? *p : '_');
  base[k] = 0;
  for (int i = 0; i < poc_cuda_n_templates; i++) {
    const poc_cuda_template *t = &poc_cuda_templates[i];
    size_t nl = strlen(t->name);
    if (nl > 4 && !strcmp(t->name + nl - 4, ".cuh")) {
      char hp[768];
      snprintf(hp, sizeof hp, "%s/%s", dir, t->name);
      if (nvb_write(hp, t->text)) return -1;
    }
  }
  snprintf(path, cap, "%s/%s", dir, base);
  return nvb_write(path, source);
}

/* ---- compiling ------------------------------------------------------------------- */

static char nvb_version[16];

const char *poc_cuda_nvrtc_version(void) {
  int ma = 0, mi = 0;
  char err[POC_ERR_LEN];
  if (cu_nvrtc_load(err) || nv.nvrtcVersion(&ma, &mi) != NVRTC_SUCCESS) return "unknown";
  snprintf(nvb_version, sizeof nvb_version, "%d.%d", ma, mi);
  return nvb_version;
}

/* "sm_90" → 90, "sm_90a" → 90 with *suffix set; -1 when malformed. */
static int nvb_arch_number(const char *a, int *suffix) {
  if (strncmp(a, "sm_", 3)) return -1;
  const char *p = a + 3;
  int v = 0, digits = 0;
  while (*p >= '0' && *p <= '9' && digits < 4) v = v * 10 + (*p++ - '0'), digits++;
  *suffix = *p == 'a';
  if (*suffix) p++;
  return digits >= 2 && *p == 0 ? v : -1;
}

static char *nvb_strdup(const char *s) {
  size_t n = strlen(s) + 1;
  char *d = malloc(n);
  if (d) memcpy(d, s, n);
  return d;
}

/* One NVRTC run for `arch` ("sm_90" → cubin, "compute_80" → PTX). On failure *log gets
 * the message; on success a non-empty program log is appended to *warn. */
static int nvb_run(const char *source, const char *name, const char *arch, int ptx,
                   poc_cuda_blob *blob, char **log, nvb_buf *warn) {
  const char *hdr_text[16], *hdr_name[16];
  int nh = 0;
  for (int i = 0; i < poc_cuda_n_templates && nh < 16; i++) {
    size_t nl = strlen(poc_cuda_templates[i].name);
    if (nl > 4 && !strcmp(poc_cuda_templates[i].name + nl - 4, ".cuh")) {
      hdr_name[nh] = poc_cuda_templates[i].name;
      hdr_text[nh++] = poc_cuda_templates[i].text;
    }
  }
  nvrtcProgram prog;
  nvrtcResult r = nv.nvrtcCreateProgram(&prog, source, name, nh, hdr_text, hdr_name);
  if (r != NVRTC_SUCCESS) {
    nvb_buf b = {0};
    nvb_add(&b, "%s: NVRTC could not create the program: %s", name, nv.nvrtcGetErrorString(r));
    *log = b.s;
    return -1;
  }
  char opt_arch[48];
  snprintf(opt_arch, sizeof opt_arch, "--gpu-architecture=%s", arch);
  const char *opts[] = {opt_arch, "--std=c++17", "--device-as-default-execution-space"};
  r = nv.nvrtcCompileProgram(prog, (int)(sizeof opts / sizeof opts[0]), opts);
  size_t log_n = 0;
  char *plog = NULL;
  if (nv.nvrtcGetProgramLogSize(prog, &log_n) == NVRTC_SUCCESS && log_n > 1 &&
      (plog = malloc(log_n)) && nv.nvrtcGetProgramLog(prog, plog) != NVRTC_SUCCESS)
    plog[0] = 0;
  if (r != NVRTC_SUCCESS) {
    char path[1024];
    nvb_buf b = {0};
    if (nvb_keep(source, name, path, sizeof path))
      snprintf(path, sizeof path, "(could not be written to disk)");
    nvb_add(&b, "%s: NVRTC could not compile for %s (%s); source written to %s\n%s", name,
            arch, nv.nvrtcGetErrorString(r), path, plog ? plog : "");
    *log = b.s ? b.s : nvb_strdup("cuda: out of memory formatting the NVRTC log");
    free(plog);
    nv.nvrtcDestroyProgram(&prog);
    return -1;
  }
  if (plog && plog[0]) nvb_add(warn, "%s (%s):\n%s", name, arch, plog);
  free(plog);
  size_t n = 0;
  r = ptx ? nv.nvrtcGetPTXSize(prog, &n) : nv.nvrtcGetCUBINSize(prog, &n);
  blob->data = r == NVRTC_SUCCESS ? malloc(n ? n : 1) : NULL;
  if (blob->data) r = ptx ? nv.nvrtcGetPTX(prog, (char *)blob->data) : nv.nvrtcGetCUBIN(prog, (char *)blob->data);
  nv.nvrtcDestroyProgram(&prog);
  if (r != NVRTC_SUCCESS || !blob->data) {
    nvb_buf b = {0};
    nvb_add(&b, "%s: NVRTC produced no %s for %s: %s", name, ptx ? "PTX" : "cubin", arch,
            nv.nvrtcGetErrorString(r));
    *log = b.s;
    free(blob->data);
    blob->data = NULL;
    return -1;
  }
  blob->size = n;
  blob->is_ptx = ptx;
  snprintf(blob->arch, sizeof blob->arch, "%s", arch);
  return 0;
}

/* The source names its headers (poc_common.cuh) only by #include, so their text is hashed
 * after it: a kernel changed in a header alone is a different cache entry too. */
uint64_t poc_cuda_source_hash(const char *source) {
  uint64_t h = 0xcbf29ce484222325ULL;
  for (const unsigned char *p = (const unsigned char *)source; *p; p++)
    h = (h ^ *p) * 0x100000001b3ULL;
  for (int i = 0; i < poc_cuda_n_templates; i++) {
    const poc_cuda_template *t = &poc_cuda_templates[i];
    size_t nl = strlen(t->name);
    if (nl < 4 || strcmp(t->name + nl - 4, ".cuh")) continue;
    for (const unsigned char *p = (const unsigned char *)t->name; *p; p++)
      h = (h ^ *p) * 0x100000001b3ULL;
    for (const unsigned char *p = (const unsigned char *)t->text; *p; p++)
      h = (h ^ *p) * 0x100000001b3ULL;
  }
  return h;
}

static int nvb_compile(const char *source, const char *name, const char *const *archs,
                       int n_arch, int with_ptx, poc_cuda_image *out, char **log) {
  memset(out, 0, sizeof *out);
  *log = NULL;
  nvb_buf msg = {0};
  if (n_arch <= 0) {
    nvb_add(&msg, "%s: no CUDA architecture asked for (e.g. --arch sm_90)", name);
    *log = msg.s;
    return -1;
  }
  int lowest = 0;
  for (int i = 0; i < n_arch; i++) {
    int sfx, v = nvb_arch_number(archs[i], &sfx);
    if (v < 75) {
      nvb_add(&msg, "%s: unsupported CUDA architecture '%s' (expected sm_XY with XY >= 75, "
              "e.g. sm_80 or sm_90)", name, archs[i]);
      *log = msg.s;
      return -1;
    }
    if (!lowest || v < lowest) lowest = v;
  }
  char lerr[POC_ERR_LEN];
  if (cu_nvrtc_load(lerr)) {
    *log = nvb_strdup(lerr);
    return -1;
  }
  out->blob = calloc((size_t)n_arch + 1, sizeof *out->blob);
  if (!out->blob) {
    *log = nvb_strdup("cuda: out of memory");
    return -1;
  }
  const char *keep = getenv("POC_KEEP_CU");
  if (keep && *keep) {
    char path[1024];
    if (nvb_keep(source, name, path, sizeof path))
      fprintf(stderr, "poc: POC_KEEP_CU: could not write %s\n", name);
    else
      fprintf(stderr, "poc: CUDA source kept at %s\n", path);
  }
  nvb_buf warn = {0};
  for (int i = 0; i < n_arch + with_ptx; i++) {
    char ptx_arch[16];
    snprintf(ptx_arch, sizeof ptx_arch, "compute_%d", lowest);
    int ptx = i == n_arch;
    if (nvb_run(source, name, ptx ? ptx_arch : archs[i], ptx, &out->blob[i], log, &warn)) {
      poc_cuda_image_free(out);
      free(warn.s);
      return -1;
    }
    out->n = i + 1;
  }
  *log = warn.s;
  return 0;
}

int poc_cuda_compile(const char *source, const char *name, const char *const *archs, int n_arch,
                     poc_cuda_image *out, char **log) {
  return nvb_compile(source, name, archs, n_arch, 1, out, log);
}

int poc_cuda_compile_cubins(const char *source, const char *name, const char *const *archs,
                            int n_arch, poc_cuda_image *out, char **log) {
  return nvb_compile(source, name, archs, n_arch, 0, out, log);
}

void poc_cuda_image_free(poc_cuda_image *img) {
  if (!img->blob) return;
  for (int i = 0; i < img->n; i++) free(img->blob[i].data);
  free(img->blob);
  img->blob = NULL;
  img->n = 0;
}
