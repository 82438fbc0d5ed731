/* cmd_bench.c — `poc bench FILE.po [--backend cpu|cuda] [--steps N] [--rounds R]
 * [--out DIR] [--set k=v ...] [--arch sm_90,...]`: the fused and the unfused build of one
 * experiment, side by side.
 *
 *   front end (the file's errors, its trainable model's config.json)
 *   → poc build twice (the same function as `poc build`, with and without --unfused)
 *   → the device's GEMM peak (measured once per machine and kept in OUT/peak.json)
 *   → R rounds, each running the fused then the unfused binary as a child with
 *     `--profile --no-checkpoint --steps N`
 *   → one table: tokens/s, the step's time per stage, peak memory, MFU; OUT/bench.json
 *     and OUT/bench.md hold it.
 *
 * Numbers per variant come from its best round (the highest tokens/s), so a slow spell of
 * a shared machine, which falls on both variants alike as the rounds alternate, does not
 * decide the comparison; within a round each number is the median over the steps after
 * the first (the first pays for warm-up: page faults, kernel compilation, cuBLAS plans).
 *
 * Peak memory: the process's peak resident set (wait4's ru_maxrss) and the peak of the
 * bytes the run held through the device's allocator (the binary's
 * memory/device_peak_mib): on the CPU the first is what the machine must have, on a GPU
 * the second is the device memory the model needs (the CUDA context and cuBLAS's
 * workspace are outside it).
 *
 * MFU = tokens/s · FLOPs per trained token / the measured GEMM peak, where for a model of
 * hidden H, L layers, q width qd = heads·head_dim, kv width kvd, MLP width F, vocabulary V
 * (docs/language.md § poc bench has the derivation):
 *
 *   FLOPs/token = c·P + c·H·V·r_head + 12·L·qd·r_attn
 *   P      = L·(2·H·qd + 2·H·kvd + 3·H·F)       the layers' matmul weights
 *   c      = 6 (forward 2, backward 4: input and weight gradients); 4 for LoRA, whose base
 *            weights get no gradient (the adapters' own FLOPs are left out)
 *   r_head = rows through the loss head per trained token (targets only)
 *   r_attn = Σ_s L_s(L_s+1)/2 per trained token: causal attention's (query, key) pairs,
 *            2·qd FLOPs each for q·k and 2·qd for p·v, tripled for the backward
 *
 * Frozen models' forwards (a reference that is not hoisted) count as time, not FLOPs, as
 * they count as time and not as tokens in tokens/s.
 */
#define _XOPEN_SOURCE 700 /* nftw */
#include <errno.h>
#include <fcntl.h>
#include <ftw.h>
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include <cjson/cJSON.h>

#include "device.h"
#include "driver.h"
#include "ir.h"

#define BN_STAGES 7
static const char *const bn_stage[BN_STAGES] = {"forward", "head", "objective", "backward",
                                                "optimizer", "comm", "other"};
#define BN_MAX_SETS 64

typedef struct {
  const char *file, *backend, *out, *arch;
  int steps, rounds, gemm_n;       /* gemm_n: the peak's product size, 0 the device's default */
  const char *sets[BN_MAX_SETS];
  int n_sets;
} bn_opts;

/* One run of one binary: medians over the steps after the first. */
typedef struct {
  double tok_s, step_s, stage[BN_STAGES], dev_mib, head_rows, attn_pairs, rss_mib, wall_s;
  double *loss;                  /* every logged step's loss, in order */
  int n_loss;
} bn_run;

typedef struct {
  const char *name;              /* "fused", "unfused" */
  char bin[4200];
  bn_run best;                   /* the round with the highest tokens/s */
  double rss_mib;                /* the largest over the rounds */
  double mfu, flops;             /* FLOPs per trained token */
  char device[512];              /* the binary's first line */
  int have;
} bn_variant;

static double bn_now(void) {
  struct timespec t;
  clock_gettime(CLOCK_MONOTONIC, &t);
  return (double)t.tv_sec + 1e-9 * (double)t.tv_nsec;
}

/* A path from a format; the options limit --out's length, so nothing here is cut. */
static void bn_path(char *buf, size_t n, const char *fmt, ...) __attribute__((format(printf, 3, 4)));
static void bn_path(char *buf, size_t n, const char *fmt, ...) {
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(buf, n, fmt, ap);
  va_end(ap);
}

static int bn_cmp(const void *a, const void *b) {
  double x = *(const double *)a, y = *(const double *)b;
  return (x > y) - (x < y);
}

static double bn_median(double *v, int n) {
  if (n <= 0) return 0;
  qsort(v, (size_t)n, sizeof *v, bn_cmp);
  return n % 2 ? v[n / 2] : 0.5 * (v[n / 2 - 1] + v[n / 2]);
}

static int bn_rm(const char *path, const struct stat *st, int flag, struct FTW *ftw) {
  (void)st;
  (void)flag;
  (void)ftw;
  return remove(path);
}

/* Removes a run directory this command made in an earlier round or invocation. */
static void bn_rmtree(const char *dir) {
  struct stat st;
  if (stat(dir, &st) == 0) nftw(dir, bn_rm, 16, FTW_DEPTH | FTW_PHYS);
}

static char *bn_slurp(const char *path, size_t *len) {
  FILE *f = fopen(path, "rb");
  if (!f) return NULL;
  size_t cap = 1 << 16, n = 0;
  char *b = malloc(cap + 1);
  size_t k;
  while (b && (k = fread(b + n, 1, cap - n, f)) > 0) {
    n += k;
    if (n == cap) {
      char *q = realloc(b, 2 * cap + 1);
      if (!q) {
        free(b);
        b = NULL;
        break;
      }
      b = q;
      cap *= 2;
    }
  }
  fclose(f);
  if (b) b[n] = 0;
  if (len) *len = n;
  return b;
}

/* The last `max` bytes of a child's stderr, for the message when it fails. */
static void bn_tail(const char *path, size_t max) {
  size_t n;
  char *s = bn_slurp(path, &n);
  if (!s) return;
  const char *from = n > max ? s + n - max : s;
  fprintf(stderr, "---- the end of its stderr (%s) ----\n%s%s", path, from,
          n && s[n - 1] != '\n' ? "\n" : "");
  free(s);
}

static void bn_usage(FILE *f) {
  fprintf(f, "usage: poc bench FILE.po [--backend cpu|cuda] [--steps N] [--rounds R] [--out DIR]\n"
             "                 [--set k=v ...] [--arch sm_90,...] [--gemm-n N]\n"
             "Builds FILE.po fused and --unfused, runs the two binaries in alternating rounds\n"
             "and prints tokens/s, the step's time per stage, peak memory and MFU against the\n"
             "device's measured GEMM peak; writes OUT/bench.json and OUT/bench.md.\n"
             "  --backend B  cpu (default) or cuda\n"
             "  --steps N    optimizer steps per run (default 8; the first is not counted)\n"
             "  --rounds R   runs of each binary, alternating (default 2); the best is kept\n"
             "  --out DIR    where binaries, runs and results go (default runs/bench-NAME)\n"
             "  --set k=v    passed to both binaries (knobs, train.NAME=value)\n"
             "  --arch A     passed to poc build (GPU kernels built in)\n"
             "  --gemm-n N   the GEMM peak's N×N×N product (default 2048 on the CPU, 8192 on\n"
             "               a GPU; smaller is quicker and lower)\n");
}

static int bn_int(const char *flag, const char *v, int lo, int *out) {
  char *end;
  errno = 0;
  long x = strtol(v, &end, 10);
  if (!*v || *end || errno || x < lo || x > 1000000) {
    fprintf(stderr, "poc bench: %s wants an integer >= %d, got '%s'\n", flag, lo, v);
    return -1;
  }
  *out = (int)x;
  return 0;
}

static int bn_parse(bn_opts *o, int argc, char **argv) {
  o->backend = "cpu";
  o->steps = 8;
  o->rounds = 2;
  for (int i = 1; i < argc; i++) {
    const char *a = argv[i];
    if (!strcmp(a, "--help") || !strcmp(a, "-h")) {
      bn_usage(stdout);
      return 1;
    }
    int needs = !strcmp(a, "--backend") || !strcmp(a, "--steps") || !strcmp(a, "--rounds") ||
                !strcmp(a, "--out") || !strcmp(a, "--set") || !strcmp(a, "--arch") ||
                !strcmp(a, "--gemm-n");
    if (needs && i + 1 >= argc) {
      fprintf(stderr, "poc bench: %s needs a value\n", a);
      return -1;
    }
    if (!strcmp(a, "--backend")) {
      o->backend = argv[++i];
      if (strcmp(o->backend, "cpu") && strcmp(o->backend, "cuda")) {
        fprintf(stderr, "poc bench: unknown backend '%s' (cpu or cuda)\n", o->backend);
        return -1;
      }
    } else if (!strcmp(a, "--steps")) {
      if (bn_int(a, argv[++i], 2, &o->steps)) return -1;
    } else if (!strcmp(a, "--rounds")) {
      if (bn_int(a, argv[++i], 1, &o->rounds)) return -1;
    } else if (!strcmp(a, "--gemm-n")) {
      if (bn_int(a, argv[++i], 64, &o->gemm_n)) return -1;
    } else if (!strcmp(a, "--out")) {
      o->out = argv[++i];
    } else if (!strcmp(a, "--arch")) {
      o->arch = argv[++i];
    } else if (!strcmp(a, "--set")) {
      if (o->n_sets == BN_MAX_SETS) {
        fprintf(stderr, "poc bench: at most %d --set\n", BN_MAX_SETS);
        return -1;
      }
      o->sets[o->n_sets++] = argv[++i];
    } else if (a[0] == '-') {
      fprintf(stderr, "poc bench: unknown option '%s'\n", a);
      bn_usage(stderr);
      return -1;
    } else if (o->file) {
      fprintf(stderr, "poc bench: one .po file at a time ('%s' is extra)\n", a);
      return -1;
    } else {
      o->file = a;
    }
  }
  if (!o->file) {
    bn_usage(stderr);
    return -1;
  }
  if (o->out && strlen(o->out) > 2048) {
    fprintf(stderr, "poc bench: --out: a path of at most 2048 characters\n");
    return -1;
  }
  return 0;
}

/* ---- the model's FLOPs ---------------------------------------------------------------- */

typedef struct {
  poc_config cfg;
  int lora;
  const char *path;
} bn_model;

/* The first trainable model of the file and its config.json (what tokens/s counts). */
static int bn_model_of(const ir_graph *g, const char *file, bn_model *m) {
  for (int i = 0; i < g->nmodels; i++) {
    const ir_model *x = &g->models[i];
    if (!x->trainable || !x->path) continue;
    char err[POC_ERR_LEN];
    if (poc_config_load(x->path, &m->cfg, err)) {
      fprintf(stderr, "%s:%d: error: model '%s': %s\n", file, x->loc.line, x->name, err);
      return -1;
    }
    m->lora = x->lora_r > 0;
    m->path = x->path;
    return 0;
  }
  fprintf(stderr, "%s: error: no trainable model to benchmark\n", file);
  return -1;
}

/* Matmul weights of the decoder layers (P in the header's formula). */
static double bn_layer_params(const poc_config *c) {
  double H = c->hidden_size, hd = c->head_dim > 0 ? c->head_dim : H / c->num_attention_heads;
  double qd = c->num_attention_heads * hd, kvd = c->num_key_value_heads * hd;
  return c->num_hidden_layers * (2 * H * qd + 2 * H * kvd + 3 * H * c->intermediate_size);
}

static double bn_flops(const bn_model *m, double head_rows, double attn_pairs) {
  const poc_config *c = &m->cfg;
  double H = c->hidden_size, hd = c->head_dim > 0 ? c->head_dim : H / c->num_attention_heads;
  double qd = c->num_attention_heads * hd, k = m->lora ? 4 : 6;
  return k * bn_layer_params(c) + k * H * c->vocab_size * head_rows +
         12.0 * c->num_hidden_layers * qd * attn_pairs;
}

/* ---- the GEMM peak -------------------------------------------------------------------- */

typedef struct {
  double gflops;
  int n;
  char what[64];                 /* "sgemm" or "bf16 GEMM, fp32 accumulation" */
  char device[512];
  int cached;
} bn_peak;

/* What makes a cached peak this machine's: the host, the backend, the thread count, the
 * product's size. */
static void bn_machine(char *buf, size_t n, const bn_opts *o) {
  char host[256] = "";
  gethostname(host, sizeof host - 1);
  const char *th = getenv("OMP_NUM_THREADS");
  snprintf(buf, n, "%s/%s/threads=%s/n=%d", host, o->backend, th ? th : "all", o->gemm_n);
}

/* The device's own GEMM kernel (OpenBLAS sgemm on the CPU; cuBLAS with bf16 operands and
 * fp32 accumulation on CUDA) on an n×n×n product shaped as a linear layer's (X·Wᵀ), best
 * of 5 after a warm-up, 2n³ FLOPs each. */
static int bn_measure_peak(const bn_opts *o, const bn_model *m, bn_peak *pk) {
  char err[POC_ERR_LEN];
  poc_device *d = poc_device_open(o->backend, err);
  if (!d) {
    fprintf(stderr, "poc bench: --backend %s: %s\n", o->backend, err);
    return -1;
  }
  int cuda = !d->host_memory;
  int n = o->gemm_n ? o->gemm_n : cuda ? 8192 : 2048, reps = cuda ? 10 : 5;
  poc_dims dm;
  poc_dims_from_config(&m->cfg, &dm);
  poc_kset *k = d->kernels(d, &dm);
  size_t nn = (size_t)n * n, es = poc_dtype_size(d->act);
  poc_dptr a = k ? d->alloc(d, nn * es, "the GEMM peak's A") : 0;
  poc_dptr b = a ? d->alloc(d, nn * es, "the GEMM peak's B") : 0;
  poc_dptr c = b ? d->alloc(d, nn * es, "the GEMM peak's C") : 0;
  float *h = c ? malloc(nn * sizeof *h) : NULL;
  int rc = -1;
  if (!h) {
    fprintf(stderr, "poc bench: the GEMM peak: %s\n", d->failed ? d->err : "out of memory");
    goto out;
  }
  /* not zeros: a GPU multiplying zeros draws less power and can clock higher */
  for (size_t i = 0; i < nn; i++) h[i] = (float)((i * 2654435761u) % 1000) * 1e-3f - 0.5f;
  d->put(d, a, d->act, h, POC_DT_F32, nn);
  d->put(d, b, d->act, h, POC_DT_F32, nn);
  double best = 1e30;
  for (int it = -1; it < reps; it++) {
    if (poc_dev_sync(d, err)) break;
    double t0 = bn_now();
    d->k.gemm(k, 0, 1, n, n, n, a, n, b, n, 0.f, c, 0, n);
    if (poc_dev_sync(d, err)) break;
    double t = bn_now() - t0;
    if (it >= 0 && t < best) best = t;
  }
  if (d->failed) {
    fprintf(stderr, "poc bench: the GEMM peak: %s\n", d->err);
    goto out;
  }
  pk->gflops = 2.0 * n * (double)n * n / best / 1e9;
  pk->n = n;
  snprintf(pk->what, sizeof pk->what, "%s", cuda ? "bf16 GEMM, fp32 accumulation" : "sgemm");
  snprintf(pk->device, sizeof pk->device, "%s", d->desc);
  rc = 0;
out:
  free(h);
  if (c) d->free(d, c);
  if (b) d->free(d, b);
  if (a) d->free(d, a);
  poc_device_close(d);
  return rc;
}

/* OUT/peak.json when it was measured on this machine, else a new measurement saved there. */
static int bn_peak_get(const bn_opts *o, const bn_model *m, const char *out, bn_peak *pk) {
  char path[4200], machine[512];
  bn_path(path, sizeof path, "%s/peak.json", out);
  bn_machine(machine, sizeof machine, o);
  char *s = bn_slurp(path, NULL);
  cJSON *j = s ? cJSON_Parse(s) : NULL;
  free(s);
  const cJSON *jm = cJSON_GetObjectItemCaseSensitive(j, "machine");
  const cJSON *jg = cJSON_GetObjectItemCaseSensitive(j, "gflops");
  const cJSON *jn = cJSON_GetObjectItemCaseSensitive(j, "n");
  const cJSON *jw = cJSON_GetObjectItemCaseSensitive(j, "gemm");
  const cJSON *jd = cJSON_GetObjectItemCaseSensitive(j, "device");
  if (cJSON_IsString(jm) && !strcmp(jm->valuestring, machine) && cJSON_IsNumber(jg) &&
      jg->valuedouble > 0 && cJSON_IsNumber(jn) && cJSON_IsString(jw) && cJSON_IsString(jd)) {
    pk->gflops = jg->valuedouble;
    pk->n = jn->valueint;
    snprintf(pk->what, sizeof pk->what, "%s", jw->valuestring);
    snprintf(pk->device, sizeof pk->device, "%s", jd->valuestring);
    pk->cached = 1;
    cJSON_Delete(j);
    return 0;
  }
  cJSON_Delete(j);
  if (bn_measure_peak(o, m, pk)) return -1;
  cJSON *w = cJSON_CreateObject();
  cJSON_AddStringToObject(w, "machine", machine);
  cJSON_AddStringToObject(w, "device", pk->device);
  cJSON_AddStringToObject(w, "gemm", pk->what);
  cJSON_AddNumberToObject(w, "n", pk->n);
  cJSON_AddNumberToObject(w, "gflops", pk->gflops);
  char *txt = cJSON_Print(w);
  cJSON_Delete(w);
  FILE *f = txt ? fopen(path, "w") : NULL;
  if (f) {
    fprintf(f, "%s\n", txt);
    fclose(f);
  }
  free(txt);
  return 0;
}

/* ---- the runs ------------------------------------------------------------------------- */

/* Runs BIN as a child (stdout to /dev/null, stderr to ERR), waiting with wait4 for its
 * peak resident set. Returns its exit status (128 + signal when killed), -1 when it could
 * not start. */
static int bn_child(char *const *argv, const char *err_path, double *rss_mib) {
  fflush(NULL);
  pid_t pid = fork();
  if (pid < 0) return -1;
  if (pid == 0) {
    int nul = open("/dev/null", O_WRONLY);
    int e = open(err_path, O_WRONLY | O_CREAT | O_TRUNC, 0644);
    if (nul < 0 || e < 0) _exit(127);
    dup2(nul, 1);
    dup2(e, 2);
    execv(argv[0], argv);
    fprintf(stderr, "poc bench: cannot run %s: %s\n", argv[0], strerror(errno));
    _exit(127);
  }
  int status;
  struct rusage ru;
  while (wait4(pid, &status, 0, &ru) < 0)
    if (errno != EINTR) return -1;
  *rss_mib = (double)ru.ru_maxrss / 1024.0; /* kibibytes on Linux */
  return WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
}

static double bn_num(const cJSON *o, const char *key, int *missing) {
  const cJSON *x = cJSON_GetObjectItemCaseSensitive(o, key);
  if (cJSON_IsNumber(x)) return x->valuedouble;
  if (missing) *missing = 1;
  return NAN;
}

/* Reads a run's metrics.jsonl into r: the medians over the steps after the first. */
static int bn_read_metrics(const char *run, bn_run *r) {
  char path[4200];
  bn_path(path, sizeof path, "%s/metrics.jsonl", run);
  char *s = bn_slurp(path, NULL);
  if (!s) {
    fprintf(stderr, "poc bench: %s: %s\n", path, strerror(errno));
    return -1;
  }
  int cap = 64, n = 0, missing = 0;
  double *col[BN_STAGES + 5];
  for (int c = 0; c < BN_STAGES + 5; c++) col[c] = malloc((size_t)cap * sizeof(double));
  r->loss = malloc((size_t)cap * sizeof(double));
  r->n_loss = 0;
  for (char *line = strtok(s, "\n"); line; line = strtok(NULL, "\n")) {
    cJSON *j = cJSON_Parse(line);
    if (!j || !cJSON_GetObjectItemCaseSensitive(j, "tokens_per_s")) {
      cJSON_Delete(j);
      continue; /* the evaluation's line before training */
    }
    if (n == cap) {
      cap *= 2;
      for (int c = 0; c < BN_STAGES + 5; c++) col[c] = realloc(col[c], (size_t)cap * sizeof(double));
      r->loss = realloc(r->loss, (size_t)cap * sizeof(double));
    }
    r->loss[r->n_loss++] = bn_num(j, "loss", NULL);
    col[0][n] = bn_num(j, "tokens_per_s", &missing);
    col[1][n] = bn_num(j, "time/step", &missing);
    col[2][n] = bn_num(j, "memory/device_peak_mib", &missing);
    col[3][n] = bn_num(j, "count/head_rows_per_token", &missing);
    col[4][n] = bn_num(j, "count/attn_pairs_per_token", &missing);
    for (int k = 0; k < BN_STAGES; k++) {
      char key[64];
      snprintf(key, sizeof key, "time/%s", bn_stage[k]);
      col[5 + k][n] = bn_num(j, key, &missing);
    }
    n++;
    cJSON_Delete(j);
  }
  free(s);
  int rc = 0;
  if (n == 0 || missing) {
    fprintf(stderr, "poc bench: %s: %s\n", path,
            n == 0 ? "no step was logged" : "a step's line lacks the --profile keys (time/*)");
    rc = -1;
  } else {
    /* the first step pays for warm-up; with one step there is nothing else */
    int f = n > 1 ? 1 : 0, m = n - f;
    r->tok_s = bn_median(col[0] + f, m);
    r->step_s = bn_median(col[1] + f, m);
    r->dev_mib = col[2][n - 1]; /* a running peak: the last line has it */
    r->head_rows = bn_median(col[3] + f, m);
    r->attn_pairs = bn_median(col[4] + f, m);
    for (int k = 0; k < BN_STAGES; k++) r->stage[k] = bn_median(col[5 + k] + f, m);
  }
  for (int c = 0; c < BN_STAGES + 5; c++) free(col[c]);
  if (rc) {
    free(r->loss);
    r->loss = NULL;
  }
  return rc;
}

/* The binary's first stderr line: the device it ran on. */
static void bn_first_line(const char *path, char *buf, size_t n) {
  FILE *f = fopen(path, "r");
  buf[0] = 0;
  if (f && fgets(buf, (int)n, f)) buf[strcspn(buf, "\n")] = 0;
  if (f) fclose(f);
}

static int bn_run_one(const bn_opts *o, const char *out, bn_variant *v, int round) {
  char run[4200], errp[4300], steps[32];
  bn_path(run, sizeof run, "%s/run-%s-%d", out, v->name, round);
  bn_path(errp, sizeof errp, "%s.stderr", run);
  snprintf(steps, sizeof steps, "%d", o->steps);
  bn_rmtree(run);
  char *argv[16 + 2 * BN_MAX_SETS];
  int a = 0;
  argv[a++] = v->bin;
  argv[a++] = "--backend";
  argv[a++] = (char *)o->backend;
  argv[a++] = "--steps";
  argv[a++] = steps;
  argv[a++] = "--out";
  argv[a++] = run;
  argv[a++] = "--profile";
  argv[a++] = "--no-checkpoint";
  for (int i = 0; i < o->n_sets; i++) {
    argv[a++] = "--set";
    argv[a++] = (char *)o->sets[i];
  }
  argv[a] = NULL;
  double t0 = bn_now(), rss = 0;
  int st = bn_child(argv, errp, &rss);
  if (st) {
    fprintf(stderr, "poc bench: the %s binary failed (%s %d) in round %d\n", v->name,
            st > 128 ? "signal" : "exit status", st > 128 ? st - 128 : st, round + 1);
    bn_tail(errp, 3000);
    return -1;
  }
  bn_run r;
  memset(&r, 0, sizeof r);
  if (bn_read_metrics(run, &r)) return -1;
  r.rss_mib = rss;
  r.wall_s = bn_now() - t0;
  if (!v->have || r.tok_s > v->best.tok_s) {
    free(v->best.loss);
    v->best = r;
  } else {
    free(r.loss);
  }
  if (rss > v->rss_mib) v->rss_mib = rss;
  if (!v->have) bn_first_line(errp, v->device, sizeof v->device);
  v->have = 1;
  printf("  round %d %-8s %10.0f tokens/s, step %.4g s (%.1f s wall)\n", round + 1, v->name,
         r.tok_s, r.step_s, r.wall_s);
  return 0;
}

/* ---- the report ----------------------------------------------------------------------- */

/* Largest |Δloss| over the steps both runs logged, relative to max(1, |loss|). */
static double bn_loss_gap(const bn_run *a, const bn_run *b, int *n) {
  double worst = 0;
  *n = a->n_loss < b->n_loss ? a->n_loss : b->n_loss;
  for (int i = 0; i < *n; i++) {
    double x = a->loss[i], y = b->loss[i];
    double g = fabs(x - y) / fmax(1.0, fabs(x));
    if (!(g <= worst)) worst = g; /* NaN wins */
  }
  return worst;
}

static void bn_table(FILE *f, const bn_opts *o, const bn_model *m, const bn_peak *pk,
                     bn_variant *v, int nv, double gap, int n_gap) {
  fprintf(f, "# poc bench %s\n\n", o->file);
  fprintf(f, "Device: `%s`. %d optimizer steps per run, %d round%s alternating the binaries; "
          "each variant's best round, medians over the steps after the first.\n\n",
          v[0].device[0] ? v[0].device : pk->device, o->steps, o->rounds,
          o->rounds == 1 ? "" : "s");
  fprintf(f, "GEMM peak: %s %d³, %.1f GFLOP/s (%s). Model: %s (%.1fM layer weights, "
          "hidden %d, %d layers, vocabulary %d%s); %.2f head rows and %.1f attention pairs per "
          "trained token, so %.1f MFLOP per trained token.\n\n",
          pk->what, pk->n, pk->gflops, pk->cached ? "cached in peak.json" : "measured now",
          m->path, bn_layer_params(&m->cfg) / 1e6, m->cfg.hidden_size,
          m->cfg.num_hidden_layers, m->cfg.vocab_size, m->lora ? ", LoRA" : "",
          v[0].best.head_rows, v[0].best.attn_pairs, v[0].flops / 1e6);
  fprintf(f, "| variant | tokens/s | step ms | forward | head | objective | backward | "
             "optimizer | comm | other | peak RSS MiB | device MiB | MFU |\n");
  fprintf(f, "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|\n");
  for (int i = 0; i < nv; i++) {
    const bn_run *r = &v[i].best;
    fprintf(f, "| %s | %.0f | %.2f |", v[i].name, r->tok_s, 1e3 * r->step_s);
    for (int k = 0; k < BN_STAGES; k++) fprintf(f, " %.2f |", 1e3 * r->stage[k]);
    fprintf(f, " %.0f | %.0f | %.2f%% |\n", v[i].rss_mib, r->dev_mib, 100 * v[i].mfu);
  }
  fprintf(f, "\nStage columns are milliseconds of the median step (they add up to it: "
             "`--profile` in docs/language.md). fused / unfused: %.2f× tokens/s, %.2f× device "
             "memory. Losses of the %d logged steps agree to %.1e (relative).\n",
          v[0].best.tok_s / v[1].best.tok_s,
          v[1].best.dev_mib > 0 ? v[0].best.dev_mib / v[1].best.dev_mib : 0, n_gap, gap);
}

static cJSON *bn_json(const bn_opts *o, const bn_model *m, const bn_peak *pk, bn_variant *v,
                      int nv, double gap, int n_gap) {
  cJSON *j = cJSON_CreateObject();
  cJSON_AddStringToObject(j, "file", o->file);
  cJSON_AddStringToObject(j, "backend", o->backend);
  cJSON_AddStringToObject(j, "device", v[0].device);
  cJSON_AddNumberToObject(j, "steps", o->steps);
  cJSON_AddNumberToObject(j, "rounds", o->rounds);
  cJSON *jp = cJSON_AddObjectToObject(j, "peak");
  cJSON_AddStringToObject(jp, "gemm", pk->what);
  cJSON_AddNumberToObject(jp, "n", pk->n);
  cJSON_AddNumberToObject(jp, "gflops", pk->gflops);
  cJSON_AddStringToObject(jp, "device", pk->device);
  cJSON_AddBoolToObject(jp, "cached", pk->cached);
  cJSON *jm = cJSON_AddObjectToObject(j, "model");
  cJSON_AddStringToObject(jm, "path", m->path);
  cJSON_AddNumberToObject(jm, "layer_params", bn_layer_params(&m->cfg));
  cJSON_AddNumberToObject(jm, "hidden_size", m->cfg.hidden_size);
  cJSON_AddNumberToObject(jm, "num_hidden_layers", m->cfg.num_hidden_layers);
  cJSON_AddNumberToObject(jm, "vocab_size", m->cfg.vocab_size);
  cJSON_AddBoolToObject(jm, "lora", m->lora);
  cJSON *jv = cJSON_AddObjectToObject(j, "variants");
  for (int i = 0; i < nv; i++) {
    const bn_run *r = &v[i].best;
    cJSON *x = cJSON_AddObjectToObject(jv, v[i].name);
    cJSON_AddStringToObject(x, "device", v[i].device);
    cJSON_AddNumberToObject(x, "tokens_per_s", r->tok_s);
    cJSON_AddNumberToObject(x, "step_s", r->step_s);
    cJSON *sp = cJSON_AddObjectToObject(x, "split_s");
    for (int k = 0; k < BN_STAGES; k++) cJSON_AddNumberToObject(sp, bn_stage[k], r->stage[k]);
    cJSON_AddNumberToObject(x, "peak_rss_mib", v[i].rss_mib);
    cJSON_AddNumberToObject(x, "device_peak_mib", r->dev_mib);
    cJSON_AddNumberToObject(x, "head_rows_per_token", r->head_rows);
    cJSON_AddNumberToObject(x, "attn_pairs_per_token", r->attn_pairs);
    cJSON_AddNumberToObject(x, "flops_per_token", v[i].flops);
    cJSON_AddNumberToObject(x, "mfu", v[i].mfu);
    cJSON_AddItemToObject(x, "loss", cJSON_CreateDoubleArray(r->loss, r->n_loss));
  }
  cJSON_AddNumberToObject(j, "loss_max_rel_gap", gap);
  cJSON_AddNumberToObject(j, "loss_steps_compared", n_gap);
  return j;
}

static int bn_write(const char *path, const char *text) {
  FILE *f = fopen(path, "w");
  if (!f || fputs(text, f) < 0 || fclose(f)) {
    fprintf(stderr, "poc bench: cannot write %s: %s\n", path, strerror(errno));
    return -1;
  }
  return 0;
}

static int bn_mkdirs(const char *dir) {
  char p[4200];
  snprintf(p, sizeof p, "%s", dir);
  for (char *s = p + 1; *s; s++)
    if (*s == '/') {
      *s = 0;
      if (mkdir(p, 0755) && errno != EEXIST) return -1;
      *s = '/';
    }
  return mkdir(p, 0755) && errno != EEXIST ? -1 : 0;
}

int poc_cmd_bench(int argc, char **argv) {
  bn_opts o;
  memset(&o, 0, sizeof o);
  int pr = bn_parse(&o, argc, argv);
  if (pr) return pr > 0 ? 0 : 2;

  /* the front end first: a bad file is reported as `poc build` reports it, once */
  po_diag *dg = po_diag_new(stderr);
  ir_graph *g = ir_front(o.file, dg);
  int bad = !g || po_diag_errors(dg);
  po_diag_free(dg);
  bn_model m;
  memset(&m, 0, sizeof m);
  if (bad || bn_model_of(g, o.file, &m)) {
    ir_free(g);
    return 2;
  }
  m.path = strdup(m.path);
  ir_free(g);

  char outbuf[4200];
  if (!o.out) {
    const char *base = strrchr(o.file, '/');
    base = base ? base + 1 : o.file;
    size_t n = strcspn(base, ".");
    snprintf(outbuf, sizeof outbuf, "runs/bench-%.*s", (int)n, base);
    o.out = outbuf;
  }
  if (bn_mkdirs(o.out)) {
    fprintf(stderr, "poc bench: cannot make %s: %s\n", o.out, strerror(errno));
    return 1;
  }

  bn_variant v[2];
  memset(v, 0, sizeof v);
  v[0].name = "fused";
  v[1].name = "unfused";
  for (int i = 0; i < 2; i++) {
    bn_path(v[i].bin, sizeof v[i].bin, "%s/%s", o.out, v[i].name);
    char *bargv[8];
    int a = 0;
    bargv[a++] = "build";
    bargv[a++] = (char *)o.file;
    bargv[a++] = "-o";
    bargv[a++] = v[i].bin;
    if (i == 1) bargv[a++] = "--unfused";
    if (o.arch) {
      bargv[a++] = "--arch";
      bargv[a++] = (char *)o.arch;
    }
    bargv[a] = NULL;
    int rc = poc_cmd_build(a, bargv);
    if (rc) return rc;
  }

  bn_peak pk;
  memset(&pk, 0, sizeof pk);
  if (bn_peak_get(&o, &m, o.out, &pk)) return 1;
  printf("poc bench: GEMM peak %.1f GFLOP/s (%s %d³%s)\n", pk.gflops, pk.what, pk.n,
         pk.cached ? ", cached" : "");

  for (int r = 0; r < o.rounds; r++)
    for (int i = 0; i < 2; i++)
      if (bn_run_one(&o, o.out, &v[i], r)) return 1;

  for (int i = 0; i < 2; i++) {
    v[i].flops = bn_flops(&m, v[i].best.head_rows, v[i].best.attn_pairs);
    v[i].mfu = v[i].best.tok_s * v[i].flops / (pk.gflops * 1e9);
  }
  int n_gap;
  double gap = bn_loss_gap(&v[0].best, &v[1].best, &n_gap);

  char path[4300];
  char *md = NULL;
  size_t mdn = 0;
  FILE *mf = open_memstream(&md, &mdn);
  if (!mf) return 1;
  bn_table(mf, &o, &m, &pk, v, 2, gap, n_gap);
  fclose(mf);
  printf("\n%s", md);
  bn_path(path, sizeof path, "%s/bench.md", o.out);
  int rc = bn_write(path, md);
  free(md);
  cJSON *j = bn_json(&o, &m, &pk, v, 2, gap, n_gap);
  char *js = cJSON_Print(j);
  cJSON_Delete(j);
  bn_path(path, sizeof path, "%s/bench.json", o.out);
  if (js) {
    size_t n = strlen(js);
    char *t = malloc(n + 2);
    if (t) {
      memcpy(t, js, n);
      t[n] = '\n';
      t[n + 1] = 0;
      rc |= bn_write(path, t);
    }
    free(t);
  }
  free(js);
  printf("\npoc bench: wrote %s/bench.md and %s/bench.json\n", o.out, o.out);
  for (int i = 0; i < 2; i++) free(v[i].best.loss);
  free((char *)m.path);
  return rc ? 1 : 0;
}
