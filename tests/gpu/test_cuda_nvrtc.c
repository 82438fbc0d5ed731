/* test_cuda_nvrtc.c — the CUDA kernels compile, on any machine with the toolkit.
 *
 * Every template is instantiated for three models (the bundled tiny one, Llama-3.2-1B and
 * Llama-3-8B shapes, covering head_dim 16, 64 and 128) and compiled by NVRTC to cubins
 * for sm_80 and sm_90 plus PTX; each kernel the runtime looks up must be in the PTX. A
 * broken source must come back with NVRTC's log and the path of the source on disk, and
 * opening the CUDA device must give a message, never a crash, when there is no GPU.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "check.h"
#include "device.h"
#include "pocrt_cuda.h"

static const char *kernel_names[] = {
    "embed_fwd", "embed_bwd", "rmsnorm_fwd", "rmsnorm_bwd", "rmsnorm_dw_partial",
    "colsum_partial", "colsum_finish", "cast_f32_bf16", "cast_bf16_f32", "qkv_bias_rope",
    "rope_bwd", "swiglu_fwd", "swiglu_bwd", "attn_fwd", "attn_bwd_dq", "attn_bwd_dkv",
    "head_chunk_fwd", "head_finish", "head_chunk_bwd", "head_text_lse",
    "head_text_logsoftmax", "head_text_gather", "head_text_bwd", "adamw", "sumsq_partial"};

static double now(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return ts.tv_sec + 1e-9 * ts.tv_nsec;
}

static int has_entry(const char *ptx, const char *name) {
  char pat[96];
  snprintf(pat, sizeof pat, ".entry %s(", name);
  return strstr(ptx, pat) != NULL;
}

/* The parameter types the launches in runtime/cuda/device_cuda.c pass, in order: i an int
 * (.u32/.s32), f a float, p a pointer or poc_size (64 bits). A template whose signature
 * drifts from its launch fails here instead of corrupting arguments on a GPU. */
static const struct { const char *name, *sig; } kernel_sigs[] = {
    {"embed_fwd", "ippp"}, {"embed_bwd", "ippp"}, {"rmsnorm_fwd", "ippppp"},
    {"rmsnorm_bwd", "ipppppp"}, {"rmsnorm_dw_partial", "ippppp"}, {"colsum_partial", "iipp"},
    {"colsum_finish", "iipp"}, {"cast_f32_bf16", "ppp"}, {"qkv_bias_rope", "ipppppppppp"},
    {"rope_bwd", "ippppppp"}, {"swiglu_fwd", "ipp"}, {"swiglu_bwd", "ippp"},
    {"attn_fwd", "iipppppp"}, {"attn_bwd_dq", "ippppppppp"}, {"attn_bwd_dkv", "ipppppppppp"},
    {"head_chunk_fwd", "iiippppppp"}, {"head_finish", "ipppppppppp"},
    {"head_chunk_bwd", "iiippppppp"}, {"head_text_lse", "iipp"},
    {"head_text_logsoftmax", "iipp"}, {"head_text_gather", "iipppppp"},
    {"head_text_bwd", "iipppppp"}, {"adamw", "ppppppffffffff"}, {"sumsq_partial", "ppp"}};

/* "iipp..." from the .param list of `name`'s .entry in the PTX ("" when absent) */
static void entry_sig(const char *ptx, const char *name, char *sig, size_t cap) {
  char pat[96];
  size_t n = 0;
  snprintf(pat, sizeof pat, ".entry %s(", name);
  const char *p = strstr(ptx, pat), *end = p ? strchr(p, ')') : NULL;
  sig[0] = 0;
  if (!p || !end) return;
  while ((p = strstr(p, ".param .")) && p < end && n + 1 < cap) {
    p += strlen(".param .");
    sig[n++] = !strncmp(p, "f32", 3) ? 'f' : (!strncmp(p, "u64", 3) || !strncmp(p, "b64", 3)) ? 'p'
             : (!strncmp(p, "u32", 3) || !strncmp(p, "s32", 3)) ? 'i' : '?';
  }
  sig[n] = 0;
}

static void test_model_source(const char *label, poc_dims d) {
  char err[POC_ERR_LEN] = "";
  char *src = poc_cuda_instantiate(&d, NULL, 0, err);
  CHECK_MSG(src != NULL, "%s: %s", label, err);
  if (!src) return;
  char def[64];
  snprintf(def, sizeof def, "#define POC_HD %d\n", d.hd);
  CHECK_MSG(strstr(src, def) != NULL, "%s: the prelude lacks %s", label, def);
  CHECK(strstr(src, "#line 1 \"attention.cu\"") != NULL);
  const char *archs[] = {"sm_80", "sm_90"};
  poc_cuda_image img;
  char *log = NULL;
  double t0 = now();
  int rc = poc_cuda_compile(src, "poc_model.cu", archs, 2, &img, &log);
  CHECK_MSG(rc == 0, "%s: %s", label, log ? log : "(no log)");
  if (rc == 0) {
    printf("%s: cubin sm_80 %zu B, sm_90 %zu B, PTX %zu B in %.1f s\n", label, img.blob[0].size,
           img.blob[1].size, img.blob[2].size, now() - t0);
    CHECK(img.n == 3);
    CHECK(!strcmp(img.blob[0].arch, "sm_80") && !img.blob[0].is_ptx);
    CHECK(!strcmp(img.blob[1].arch, "sm_90") && !img.blob[1].is_ptx);
    CHECK(!strcmp(img.blob[2].arch, "compute_80") && img.blob[2].is_ptx);
    for (int i = 0; i < 2; i++)
      CHECK_MSG(img.blob[i].size > 4 && !memcmp(img.blob[i].data, "\177ELF", 4),
                "%s: %s is not an ELF cubin", label, img.blob[i].arch);
    const char *ptx = (const char *)img.blob[2].data;
    CHECK(img.blob[2].size > 0 && ptx[img.blob[2].size - 1] == 0);
    CHECK(strstr(ptx, ".target sm_80") != NULL);
    for (size_t k = 0; k < sizeof kernel_names / sizeof kernel_names[0]; k++)
      CHECK_MSG(has_entry(ptx, kernel_names[k]), "%s: kernel %s missing", label, kernel_names[k]);
    for (size_t k = 0; k < sizeof kernel_sigs / sizeof kernel_sigs[0]; k++) {
      char sig[64];
      entry_sig(ptx, kernel_sigs[k].name, sig, sizeof sig);
      CHECK_MSG(!strcmp(sig, kernel_sigs[k].sig), "%s: %s takes (%s), its launch passes (%s)",
                label, kernel_sigs[k].name, sig, kernel_sigs[k].sig);
    }
    /* attention's per-lane accumulators are indexed by unrolled constants: no local memory */
    CHECK_MSG(!strstr(ptx, ".local"), "%s: a kernel spills to local memory", label);
  }
  free(log);
  poc_cuda_image_free(&img);
  free(src);
}

/* Each template compiles alone (it includes what it needs). */
static void test_each_template(poc_dims d) {
  int seen = 0;
  for (int i = 0; i < poc_cuda_n_templates; i++) {
    const char *name = poc_cuda_templates[i].name;
    size_t nl = strlen(name);
    if (nl < 3 || strcmp(name + nl - 3, ".cu")) continue;
    seen++;
    char err[POC_ERR_LEN] = "", *log = NULL;
    const char *names[] = {name};
    char *src = poc_cuda_instantiate(&d, names, 1, err);
    CHECK_MSG(src != NULL, "%s: %s", name, err);
    if (!src) continue;
    CHECK(strstr(src, poc_cuda_templates[i].text) != NULL);
    const char *archs[] = {"sm_90"};
    poc_cuda_image img;
    int rc = poc_cuda_compile(src, name, archs, 1, &img, &log);
    CHECK_MSG(rc == 0, "%s alone: %s", name, log ? log : "");
    if (rc == 0) CHECK(img.n == 2);
    poc_cuda_image_free(&img);
    free(log);
    free(src);
  }
  CHECK_MSG(seen >= 7, "only %d .cu templates embedded", seen);
  CHECK(poc_cuda_template_text("poc_common.cuh") != NULL);
}

/* A failed compile keeps its source and the helper headers in a fresh directory named in
 * the log; checks they are there and removes them. */
static void drop_kept(const char *log) {
  const char *at = log ? strstr(log, "source written to ") : NULL;
  if (!at) return;
  char path[1024];
  at += strlen("source written to ");
  snprintf(path, sizeof path, "%.*s", (int)strcspn(at, "\n"), at);
  CHECK(remove(path) == 0);
  char *slash = strrchr(path, '/');
  if (!slash) return;
  *slash = 0;
  for (int i = 0; i < poc_cuda_n_templates; i++) {
    char hp[1200];
    size_t nl = strlen(poc_cuda_templates[i].name);
    if (nl > 4 && !strcmp(poc_cuda_templates[i].name + nl - 4, ".cuh")) {
      snprintf(hp, sizeof hp, "%s/%s", path, poc_cuda_templates[i].name);
      CHECK_MSG(remove(hp) == 0, "helper %s was not kept beside the source", hp);
    }
  }
  CHECK(rmdir(path) == 0);
}

static void test_errors(void) {
  /* a broken kernel: the log names the error and the kept source */
  const char *bad = "#define POC_HD 16\n#include \"poc_common.cuh\"\n"
                    "extern \"C\" __global__ void k(float *x) { x[0] = undeclared_value; }\n";
  const char *archs[] = {"sm_90"};
  poc_cuda_image img;
  char *log = NULL;
  int rc = poc_cuda_compile(bad, "broken.cu", archs, 1, &img, &log);
  CHECK(rc == -1);
  CHECK(img.n == 0 && img.blob == NULL);
  CHECK_MSG(log && strstr(log, "undeclared_value") && strstr(log, "sm_90") &&
                strstr(log, "broken.cu"), "log: %s", log ? log : "(none)");
  /* the source was written where the message says */
  const char *at = log ? strstr(log, "source written to ") : NULL;
  CHECK(at != NULL);
  if (at) {
    char path[1024];
    at += strlen("source written to ");
    size_t n = strcspn(at, "\n");
    snprintf(path, sizeof path, "%.*s", (int)n, at);
    FILE *f = fopen(path, "r");
    CHECK_MSG(f != NULL, "kept source %s missing", path);
    if (f) {
      char buf[512] = "";
      size_t got = fread(buf, 1, sizeof buf - 1, f);
      buf[got] = 0;
      CHECK(strstr(buf, "undeclared_value") != NULL);
      fclose(f);
    }
  }
  drop_kept(log);
  free(log);

  /* the prelude's guard: a template without dimensions says how to instantiate */
  log = NULL;
  rc = poc_cuda_compile(poc_cuda_template_text("norm.cu"), "norm.cu", archs, 1, &img, &log);
  CHECK(rc == -1 && log && strstr(log, "poc_cuda_instantiate"));
  drop_kept(log);
  free(log);

  const char *bad_arch[] = {"sm_9x"};
  log = NULL;
  rc = poc_cuda_compile("", "x.cu", bad_arch, 1, &img, &log);
  CHECK(rc == -1 && log && strstr(log, "sm_9x"));
  free(log);
  log = NULL;
  rc = poc_cuda_compile("", "x.cu", archs, 0, &img, &log);
  CHECK(rc == -1 && log && strstr(log, "--arch"));
  free(log);

  char err[POC_ERR_LEN] = "";
  poc_dims odd = {64, 176, 32, 4, 2, 15, 1e-5};
  CHECK(poc_cuda_instantiate(&odd, NULL, 0, err) == NULL && strstr(err, "head_dim"));
  poc_dims ok = {64, 176, 32, 4, 2, 16, 1e-5};
  const char *nope[] = {"nope.cu"};
  CHECK(poc_cuda_instantiate(&ok, nope, 1, err) == NULL && strstr(err, "nope.cu"));
}

static void test_open(void) {
  char err[POC_ERR_LEN] = "";
  poc_device *d = poc_device_open("cuda", err);
  if (d) {
    printf("cuda device: %s\n", d->desc);
    CHECK(!strcmp(d->name, "cuda"));
    poc_device_close(d);
  } else {
    printf("cuda device unavailable here: %s\n", err);
    CHECK(!strncmp(err, "cuda: ", 6) && strlen(err) > 12);
  }
  CHECK(poc_device_open("tpu", err) == NULL && strstr(err, "tpu"));
  CHECK(strchr(poc_cuda_nvrtc_version(), '.') != NULL);
}

int main(void) {
  poc_dims tiny = {64, 176, 32, 4, 2, 16, 1e-5};
  poc_dims llama1b = {2048, 8192, 128256, 32, 8, 64, 1e-5};
  poc_dims llama8b = {4096, 14336, 128256, 32, 8, 128, 1e-5};
  test_errors();
  test_open();
  test_each_template(tiny);
  test_model_source("tiny", tiny);
  test_model_source("llama-1b", llama1b);
  test_model_source("llama-8b", llama8b);
  return check_summary("cuda_nvrtc");
}
