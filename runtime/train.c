/* train.c — poc_train_main: the training binary's command line, setup and loop.
 *
 * Order matters for "nothing in the run directory is lost": everything that can be wrong
 * with the input (flags, knobs, models' config, every data line, the evaluation set) is
 * checked before the run directory is created or touched.
 *
 *   flags → program checks → configs → data → eval set → run directory → weights
 *   (resume: newest complete checkpoint) → hoisted cache → eval@0 → steps → checkpoint
 *
 * One optimizer step: B = batch examples from the data stream, their gradient by
 * trn_step_grad (micro-batches, objective, backward), the global norm (reported before
 * clipping), clip, AdamW at lr(step), metrics, progress, maybe a checkpoint or an eval.
 * Nothing a checkpoint holds depends on wall time (only which steps get one, through
 * ckpt_minutes), so on the CPU k steps + resume gives the bytes an unbroken run gives.
 */
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <limits.h>
#include <math.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include <cjson/cJSON.h>

#include "comm.h"
#include "comm_nccl.h"
#include "device.h"
#include "st.h"
#include "train_internal.h"

#define PATHN 4096

typedef struct {
  const char *backend, *out, *resume;
  int64_t steps;
  int have_seed;
  uint64_t seed;
  int unfused;
  int allow_data_change;
  int profile;                   /* --profile: the step's time per stage, device memory */
  int no_checkpoint;             /* --no-checkpoint: a measurement, nothing to keep */
  int n_set;
  char **set;
  unsigned log;                  /* TRN_LOG_* sinks besides metrics.jsonl (--log) */
  double collective_timeout;     /* seconds a collective waits for the other ranks */
  int zero;                      /* --zero: -1 default (on with several ranks), 0, 1 */
  int overlap;                   /* --overlap: 1 default, 0 */
  const char *comm;              /* --comm: how ranks sum the gradient on a GPU */
} trn_flags;

static void usage(const poc_program *p, FILE *f) {
  fprintf(f,
          "usage: %s [--backend cpu|cuda|cpu64|cpu-bf16] [--steps N] [--out DIR] [--resume DIR]\n"
          "       %*s [--set knob=value ...] [--seed N] [--unfused-head]\n"
          "       %*s [--allow-data-change] [--kernel-images] [--log tensorboard,wandb]\n"
          "       %*s [--collective-timeout SECONDS] [--zero 0|1] [--overlap 0|1]\n"
          "       %*s [--comm nccl|mpi|auto]\n"
          "       %*s [--profile] [--no-checkpoint]\n"
          "Trains the experiment built from %s.po.\n"
          "  --backend B     cuda when a usable GPU is present, else cpu (the default);\n"
          "                  cpu64 runs in double (for checks); on the CPU, precision =\n"
          "                  bf16 runs the bf16 CPU device (cpu-bf16) where poc has one\n"
          "                  (--backend cpu-bf16 asks for it whatever the precision)\n"
          "  --steps N       stop after optimizer step N (the schedule keeps its length)\n"
          "  --out DIR       run directory (default runs/%s-<timestamp>)\n"
          "  --resume DIR    continue the run in DIR from its newest complete checkpoint\n"
          "  --set k=v       set a knob (param), or a train setting as train.NAME=v\n"
          "                  (train.lr=1e-6, train.epochs=2), without rebuilding\n"
          "  --seed N        seed of every random draw (overrides the train block)\n"
          "  --unfused-head  compute the loss head the textbook way (full logits)\n"
          "  --allow-data-change  resume although a data file's content changed since\n"
          "                  the checkpoint\n"
          "  --kernel-images list the GPU kernels built in by poc build --arch, and exit\n"
          "  --log L,...     also log the metrics for TensorBoard (OUT/tensorboard/) or\n"
          "                  Weights & Biases (offline, OUT/wandb/; upload with wandb sync);\n"
          "                  repeatable\n"
          "  --collective-timeout S  under mpirun: how long a rank waits for the others in\n"
          "                  a collective before every rank stops (default 600; 0: forever)\n"
          "  --zero 0|1      under mpirun: shard the AdamW state over the ranks (ZeRO stage\n"
          "                  1; default 1 with several ranks)\n"
          "  --overlap 0|1   under mpirun: start the gradient's reductions layer by layer\n"
          "                  during the last micro-batch's backward (default 1)\n"
          "  --profile       add each step's time per stage (time/forward, ...) and the\n"
          "                  device memory's peak to metrics.jsonl (synchronises a GPU at\n"
          "                  each stage's end)\n"
          "  --no-checkpoint write no checkpoint, not even the last (a measurement run)\n"
          "  --comm C        under mpirun on cuda: sum the gradient on the GPUs with NCCL\n"
          "                  (nccl), through host memory with MPI (mpi), or NCCL where it\n"
          "                  loads, else MPI (auto, the default)\n",
          p->name, (int)strlen(p->name), "", (int)strlen(p->name), "", (int)strlen(p->name), "",
          (int)strlen(p->name), "", (int)strlen(p->name), "", p->name, p->name);
  if (p->n_knobs) {
    fprintf(f, "knobs:");
    for (int i = 0; i < p->n_knobs; i++) fprintf(f, " %s=%g", p->knobs[i].name, p->knobs[i].value);
    fputc('\n', f);
  }
}

/* What `poc build --arch` embedded: one line per image and blob, so a user (and the tests)
 * can see which GPUs the binary runs on without NVRTC. */
static void kernel_images(const poc_program *p, FILE *f) {
  if (!p->n_kernel_images)
    fprintf(f, "%s: no GPU kernels built in (poc build --arch embeds them); a GPU run "
            "compiles them with NVRTC\n", p->name);
  for (int i = 0; i < p->n_kernel_images; i++) {
    const poc_kernel_image *k = &p->kernel_images[i];
    fprintf(f, "kernels for hidden %d, intermediate %d, vocab %d, heads %d/%d, head_dim %d, "
            "eps %g (source %016llx):", k->H, k->F, k->V, k->nh, k->nkv, k->hd, k->eps,
            (unsigned long long)k->source_hash);
    for (int b = 0; b < k->n_blobs; b++)
      fprintf(f, " %s %s (%zu bytes)%s", k->blobs[b].arch, k->blobs[b].is_ptx ? "PTX" : "cubin",
              k->blobs[b].size, b + 1 < k->n_blobs ? "," : "");
    fputc('\n', f);
  }
}

static int parse_i64(const char *s, int64_t *v) {
  char *end;
  errno = 0;
  long long x = strtoll(s, &end, 10);
  if (!*s || *end || errno || x < 0) return -1;
  *v = x;
  return 0;
}

/* 0 ok, 1 --help shown, 2 usage error. */
static int parse_flags(const poc_program *p, int argc, char **argv, trn_flags *f) {
  memset(f, 0, sizeof *f);
  f->backend = "auto";
  f->steps = -1;
  f->collective_timeout = 600;
  f->zero = -1;
  f->overlap = 1;
  f->comm = "auto";
  f->set = calloc((size_t)argc + 1, sizeof *f->set);
  if (!f->set) return 2;
  for (int i = 1; i < argc; i++) {
    const char *a = argv[i];
    const char *val = NULL;
    int needs = !strcmp(a, "--backend") || !strcmp(a, "--steps") || !strcmp(a, "--out") ||
                !strcmp(a, "--resume") || !strcmp(a, "--set") || !strcmp(a, "--seed") ||
                !strcmp(a, "--log") || !strcmp(a, "--collective-timeout") ||
                !strcmp(a, "--zero") || !strcmp(a, "--overlap") || !strcmp(a, "--comm");
    if (needs) {
      if (i + 1 >= argc) {
        fprintf(stderr, "%s: error: %s needs a value\n", p->name, a);
        return 2;
      }
      val = argv[++i];
    }
    if (!strcmp(a, "--help") || !strcmp(a, "-h")) {
      usage(p, stdout);
      return 1;
    } else if (!strcmp(a, "--backend")) {
      if (strcmp(val, "cpu") && strcmp(val, "cuda") && strcmp(val, "cpu64") &&
          strcmp(val, "cpu-bf16") && strcmp(val, "auto")) {
        fprintf(stderr, "%s: error: unknown backend '%s' (cpu, cuda, cpu64 or cpu-bf16)\n",
                p->name, val);
        return 2;
      }
      f->backend = val;
    } else if (!strcmp(a, "--steps")) {
      if (parse_i64(val, &f->steps) || f->steps == 0) {
        fprintf(stderr, "%s: error: --steps wants a positive integer, got '%s'\n", p->name, val);
        return 2;
      }
    } else if (!strcmp(a, "--seed")) {
      int64_t s;
      if (parse_i64(val, &s)) {
        fprintf(stderr, "%s: error: --seed wants a non-negative integer, got '%s'\n", p->name,
                val);
        return 2;
      }
      f->seed = (uint64_t)s;
      f->have_seed = 1;
    } else if (!strcmp(a, "--collective-timeout")) {
      char *end;
      errno = 0;
      double t = strtod(val, &end);
      if (!*val || *end || errno || !(t >= 0) || !isfinite(t)) {
        fprintf(stderr, "%s: error: --collective-timeout wants seconds >= 0, got '%s'\n",
                p->name, val);
        return 2;
      }
      f->collective_timeout = t;
    } else if (!strcmp(a, "--zero")) {
      if (strcmp(val, "0") && strcmp(val, "1")) {
        fprintf(stderr, "%s: error: --zero wants 0 or 1, got '%s'\n", p->name, val);
        return 2;
      }
      f->zero = val[0] - '0';
    } else if (!strcmp(a, "--overlap")) {
      if (strcmp(val, "0") && strcmp(val, "1")) {
        fprintf(stderr, "%s: error: --overlap wants 0 or 1, got '%s'\n", p->name, val);
        return 2;
      }
      f->overlap = val[0] - '0';
    } else if (!strcmp(a, "--comm")) {
      if (strcmp(val, "nccl") && strcmp(val, "mpi") && strcmp(val, "auto")) {
        fprintf(stderr, "%s: error: --comm wants nccl, mpi or auto, got '%s'\n", p->name, val);
        return 2;
      }
      f->comm = val;
    } else if (!strcmp(a, "--out")) {
      f->out = val;
    } else if (!strcmp(a, "--resume")) {
      f->resume = val;
    } else if (!strcmp(a, "--set")) {
      f->set[f->n_set++] = (char *)val;
    } else if (!strcmp(a, "--log")) {
      /* a comma list, and the flag repeats: --log tensorboard --log wandb */
      const char *q = val;
      do {
        size_t n = strcspn(q, ",");
        if (n == 11 && !strncmp(q, "tensorboard", n)) f->log |= TRN_LOG_TENSORBOARD;
        else if (n == 5 && !strncmp(q, "wandb", n)) f->log |= TRN_LOG_WANDB;
        else {
          fprintf(stderr, "%s: error: --log: unknown sink '%.*s' (tensorboard or wandb)\n",
                  p->name, (int)n, q);
          return 2;
        }
        q += n;
      } while (*q++ == ',');
    } else if (!strcmp(a, "--unfused-head")) {
      f->unfused = 1;
    } else if (!strcmp(a, "--kernel-images")) {
      kernel_images(p, stdout);
      return 1;
    } else if (!strcmp(a, "--allow-data-change")) {
      f->allow_data_change = 1;
    } else if (!strcmp(a, "--profile")) {
      f->profile = 1;
    } else if (!strcmp(a, "--no-checkpoint")) {
      f->no_checkpoint = 1;
    } else {
      fprintf(stderr, "%s: error: unknown argument '%s'\n", p->name, a);
      usage(p, stderr);
      return 2;
    }
  }
  if (f->resume && f->out && strcmp(f->resume, f->out)) {
    fprintf(stderr, "%s: error: --resume %s continues in its own directory; drop --out %s\n",
            p->name, f->resume, f->out);
    return 2;
  }
  return 0;
}

/* The train block's settings --set can change without a rebuild (`--set train.lr=1e-6`),
 * with the range each must lie in. The enumerations take their .po spellings. */
typedef enum { TF_REAL, TF_INT, TF_SEED, TF_SCHEDULE, TF_PRECISION, TF_NONFINITE, TF_ORDER } trn_fkind;
typedef struct {
  const char *name;
  trn_fkind kind;
  size_t off;
  double lo, hi;                 /* inclusive, for numbers */
} trn_field;
#define TF(name, kind, lo, hi) {#name, kind, offsetof(poc_train, name), lo, hi}
static const trn_field trn_fields[] = {
    TF(lr, TF_REAL, 0, 1e30), TF(schedule, TF_SCHEDULE, 0, 0), TF(warmup, TF_REAL, 0, 1e12),
    TF(batch, TF_INT, 1, 1 << 24), TF(micro_batch, TF_INT, 1, 1 << 24),
    TF(epochs, TF_INT, 1, 1 << 24), TF(max_len, TF_INT, 2, 1 << 24),
    TF(clip, TF_REAL, 0, 1e30), TF(precision, TF_PRECISION, 0, 0),
    TF(seed, TF_SEED, 0, 9007199254740992.0), TF(weight_decay, TF_REAL, 0, 1e30),
    TF(adam_beta1, TF_REAL, 0, 0.999999999), TF(adam_beta2, TF_REAL, 0, 0.999999999),
    TF(adam_eps, TF_REAL, 1e-300, 1), TF(log_every, TF_INT, 1, INT_MAX),
    TF(ckpt_every, TF_INT, 0, INT_MAX), TF(eval_every, TF_INT, 0, INT_MAX),
    TF(eval_tokens, TF_INT, 0, 1 << 24), TF(steps, TF_INT, 0, INT_MAX),
    TF(on_nonfinite, TF_NONFINITE, 0, 0), TF(ckpt_minutes, TF_REAL, 0, 1e9),
    TF(order, TF_ORDER, 0, 0),
};
#undef TF
#define TRN_N_FIELDS ((int)(sizeof trn_fields / sizeof trn_fields[0]))

static const char *const trn_enum_names[][3] = {
    [TF_SCHEDULE] = {"cosine", "linear", "constant"},
    [TF_PRECISION] = {"fp32", "bf16", NULL},
    [TF_NONFINITE] = {"stop", "skip", NULL},
    [TF_ORDER] = {"shuffle", "sequential", NULL},
};

/* --set train.NAME=VALUE into t; -1 after a message naming what is wrong. */
static int set_train(const poc_program *p, const char *name, size_t nlen, const char *val,
                     poc_train *t) {
  const trn_field *f = NULL;
  for (int i = 0; i < TRN_N_FIELDS; i++)
    if (strlen(trn_fields[i].name) == nlen && !strncmp(trn_fields[i].name, name, nlen))
      f = &trn_fields[i];
  if (!f) {
    fprintf(stderr, "%s: error: --set: unknown train setting 'train.%.*s'; they are:", p->name,
            (int)nlen, name);
    for (int i = 0; i < TRN_N_FIELDS; i++) fprintf(stderr, " %s", trn_fields[i].name);
    fputc('\n', stderr);
    return -1;
  }
  char *at = (char *)t + f->off;
  if (f->kind >= TF_SCHEDULE) {
    for (int e = 0; e < 3 && trn_enum_names[f->kind][e]; e++)
      if (!strcmp(val, trn_enum_names[f->kind][e])) {
        *(int *)at = e; /* the enums' values are their .po spellings' positions */
        return 0;
      }
    fprintf(stderr, "%s: error: --set train.%s: '%s' is not one of", p->name, f->name, val);
    for (int e = 0; e < 3 && trn_enum_names[f->kind][e]; e++)
      fprintf(stderr, " %s", trn_enum_names[f->kind][e]);
    fputc('\n', stderr);
    return -1;
  }
  char *end;
  errno = 0;
  double v = strtod(val, &end);
  int integral = f->kind != TF_REAL;
  if (!*val || *end || errno || !isfinite(v) || v < f->lo || v > f->hi ||
      (integral && v != floor(v))) {
    fprintf(stderr, "%s: error: --set train.%s: '%s' is not %s in [%g, %g]\n", p->name, f->name,
            val, integral ? "an integer" : "a number", f->lo, f->hi);
    return -1;
  }
  if (f->kind == TF_REAL) *(double *)at = v;
  else if (f->kind == TF_SEED) *(uint64_t *)at = (uint64_t)v;
  else *(int *)at = (int)v;
  return 0;
}

/* --set: knobs (param) by name, and train settings as train.NAME (into t when it is not
 * NULL; a resumed run applies only the knobs again). */
static int apply_sets(const poc_program *p, const trn_flags *f, double *knobs, poc_train *t) {
  for (int i = 0; i < f->n_set; i++) {
    const char *s = f->set[i], *eq = strchr(s, '=');
    if (!eq || eq == s) {
      fprintf(stderr, "%s: error: --set wants knob=value or train.NAME=value, got '%s'\n",
              p->name, s);
      return -1;
    }
    if (!strncmp(s, "train.", 6)) {
      if (t && set_train(p, s + 6, (size_t)(eq - s - 6), eq + 1, t)) return -1;
      continue;
    }
    int k = -1;
    for (int j = 0; j < p->n_knobs; j++)
      if (strlen(p->knobs[j].name) == (size_t)(eq - s) && !strncmp(p->knobs[j].name, s, (size_t)(eq - s)))
        k = j;
    if (k < 0) {
      fprintf(stderr, "%s: error: --set: unknown knob '%.*s'; ", p->name, (int)(eq - s), s);
      if (!p->n_knobs) fprintf(stderr, "this program has no knobs");
      else {
        fprintf(stderr, "the knobs are:");
        for (int j = 0; j < p->n_knobs; j++) fprintf(stderr, " %s", p->knobs[j].name);
      }
      fprintf(stderr, " (train settings are set as train.NAME=value)\n");
      return -1;
    }
    char *end;
    errno = 0;
    double v = strtod(eq + 1, &end);
    if (!eq[1] || *end || errno || !isfinite(v)) {
      fprintf(stderr, "%s: error: --set %s: '%s' is not a finite number\n", p->name,
              p->knobs[k].name, eq + 1);
      return -1;
    }
    knobs[k] = v;
  }
  return 0;
}

/* The effective train settings as JSON, for OUT/train.json. */
static char *train_json(const poc_train *t) {
  cJSON *o = cJSON_CreateObject();
  for (int i = 0; o && i < TRN_N_FIELDS; i++) {
    const trn_field *f = &trn_fields[i];
    const char *at = (const char *)t + f->off;
    if (f->kind >= TF_SCHEDULE)
      cJSON_AddStringToObject(o, f->name, trn_enum_names[f->kind][*(const int *)at]);
    else if (f->kind == TF_REAL) cJSON_AddNumberToObject(o, f->name, *(const double *)at);
    else if (f->kind == TF_SEED) cJSON_AddNumberToObject(o, f->name, (double)*(const uint64_t *)at);
    else cJSON_AddNumberToObject(o, f->name, *(const int *)at);
  }
  char *s = o ? cJSON_Print(o) : NULL;
  cJSON_Delete(o);
  return s;
}

/* The program's internal consistency: what generated code must guarantee, checked so a
 * code-generation bug is a message rather than a crash. */
static int check_program(const poc_program *p) {
  const char *why = NULL;
  char buf[256];
  if (p->n_models < 1 || p->n_models > TRN_MAX_MODELS) why = "between 1 and 8 models";
  else if (p->n_knobs > 64 || p->n_reports > 64) why = "at most 64 knobs and 64 reports";
  else if (p->n_anchors > 8) why = "at most 8 sample() anchors";
  else if (!p->objective) why = "an objective";
  else if (p->train.batch < 1 || p->train.micro_batch < 1) why = "batch and micro_batch >= 1";
  for (int m = 0; !why && m < p->n_models; m++) {
    const poc_model_decl *d = &p->models[m];
    if (d->frozen_of >= p->n_models || d->frozen_of == m || (d->frozen_of >= 0 && d->trainable))
      why = "frozen models that snapshot another, untrainable";
    else if (d->frozen_of < 0 && !d->path)
      why = "a path for every model";
    else if (d->lora_r > 0 && (!d->trainable || d->frozen_of >= 0 || !(d->lora_alpha > 0) ||
                               !(d->lora_dropout >= 0 && d->lora_dropout < 1) ||
                               !(d->lora_targets & ((1u << POC_LT_N) - 1))))
      why = "LoRA models that are trainable, with alpha > 0, dropout in [0, 1) and a target";
  }
  int trainable = 0;
  for (int m = 0; m < p->n_models; m++) trainable |= p->models[m].trainable;
  if (!why && !trainable) why = "a trainable model";
  for (int k = 0; !why && k < p->n_calls; k++) {
    const poc_call *c = &p->calls[k];
    if (c->model < 0 || c->model >= p->n_models) why = "calls of declared models";
    else if (c->trainable && !p->models[c->model].trainable) why = "trainable calls of trainable models";
    else if (c->hoisted && p->models[c->model].trainable) why = "hoisted calls of frozen models only";
    const poc_segment *segs[2] = {c->target, c->context};
    int ns[2] = {c->n_target, c->n_context};
    for (int s = 0; !why && s < 2; s++)
      for (int i = 0; !why && i < ns[s]; i++) {
        const poc_segment *g = &segs[s][i];
        if (g->src == POC_SRC_ANCHOR && (c->hoisted || g->anchor < 0 || g->anchor >= p->n_anchors))
          why = "anchor segments naming a declared anchor, never hoisted";
        else if ((int)g->src >= POC_SRC_EXTRA && (int)g->src - POC_SRC_EXTRA >= p->n_extra_seqs)
          why = "sequence segments naming a declared sequence";
        else if (g->src <= POC_SRC_RESPONSE && trn_seq_slot(p->data_kind, g->src) < 0) {
          trn_path(buf, sizeof buf, "call '%s' reads '%s', which %s data has not", c->key,
                   trn_src_name(g->src), p->data_kind == POC_DATA_PAIRS ? "pairs" : "points");
          fprintf(stderr, "%s: error: %s\n", p->name, buf);
          return -1;
        }
      }
  }
  for (int a = 0; !why && a < p->n_anchors; a++)
    if (p->anchors[a].model < 0 || p->anchors[a].model >= p->n_models || p->anchors[a].tokens < 1)
      why = "anchors of declared models with tokens >= 1";
  if (why) {
    fprintf(stderr, "%s: error: malformed program: poc programs have %s\n", p->name, why);
    return -1;
  }
  return 0;
}

static int read_file(const char *path, unsigned char **out, size_t *n) {
  char why[POC_ERR_LEN];
  FILE *f = st_fopen_regular(path, why);
  if (!f) return -1;
  size_t cap = 1 << 16, len = 0;
  unsigned char *b = malloc(cap);
  size_t got;
  while (b && (got = fread(b + len, 1, cap - len, f)) > 0) {
    len += got;
    if (len == cap) {
      unsigned char *q = realloc(b, cap *= 2);
      if (!q) {
        free(b);
        b = NULL;
      } else {
        b = q;
      }
    }
  }
  fclose(f);
  if (!b) return -1;
  *out = b;
  *n = len;
  return 0;
}

static int mkdir_p(const char *dir) {
  char p[PATHN];
  trn_path(p, sizeof p, "%s", dir);
  for (char *s = p + 1; *s; s++)
    if (*s == '/') {
      *s = 0;
      if (mkdir(p, 0777) && errno != EEXIST) return -1;
      *s = '/';
    }
  if (mkdir(p, 0777) && errno != EEXIST) return -1;
  struct stat st;
  return stat(p, &st) || !S_ISDIR(st.st_mode) ? -1 : 0;
}

static double now_s(void) {
  struct timespec t;
  clock_gettime(CLOCK_MONOTONIC, &t);
  return (double)t.tv_sec + 1e-9 * (double)t.tv_nsec;
}

int64_t trn_total_steps(const poc_train *t, int64_t n_examples) {
  int64_t epochs = t->epochs > 0 ? t->epochs : 1;
  int64_t s = epochs * n_examples / (t->batch > 0 ? t->batch : 1);
  if (s < 1) s = 1;
  if (t->steps > 0 && t->steps < s) s = t->steps;
  return s;
}

/* ---- the run: its state and its stages ------------------------------------------------ */

typedef struct {
  const poc_program *p;
  const poc_train *T;
  poc_train train;               /* the train block with --set train.NAME applied */
  trn_flags fl;
  char err[POC_ERR_LEN];
  poc_device *dev;
  char no_bf16[POC_ERR_LEN];     /* why precision = bf16 runs on the fp32 CPU device */
  poc_layout lay[TRN_MAX_MODELS];
  int lay_ok[TRN_MAX_MODELS];
  /* LoRA models: the adapters' layout and settings, the starting adapters (PEFT's
   * initialisation or an adapter folder's), the base weights' hash (a reference that is
   * the base with the adapters off keys the cache with it) */
  poc_layout alay[TRN_MAX_MODELS];
  poc_lora_cfg lc[TRN_MAX_MODELS];
  float *ainit[TRN_MAX_MODELS];
  uint64_t base_hash[TRN_MAX_MODELS];
  int fresh_head[TRN_MAX_MODELS]; /* a reward model started from a causal LM's folder */
  /* Host copies of a trainable model's weights and AdamW moments, for checkpoints: the
   * device's own buffers where its memory is the host's and f32 (the CPU), else staging
   * arrays filled before each write. */
  float *hw[TRN_MAX_MODELS], *hm[TRN_MAX_MODELS], *hv[TRN_MAX_MODELS];
  int staged[TRN_MAX_MODELS];
  poc_part part[TRN_MAX_MODELS]; /* the part hw holds: the weights, or the adapters */
  trn_models ms;
  trn_data data;
  trn_evalset ev;
  trn_evalgen eg;                /* the last evaluation's generations */
  poc_tok *tok;                  /* the policy folder's tokenizer.json; NULL none */
  trn_cache cache;
  trn_order order;
  trn_ctx ctx;
  trn_state st;
  trn_ckmodel cm[TRN_MAX_MODELS];
  int n_cm, policy, eos, resuming;
  int lock_fd;                   /* OUT/.lock, flock'ed for the run's life; -1 none */
  int created;                   /* this run made OUT (removed again if it fails early) */
  int opened;                    /* something was written into OUT */
  int restart;                   /* a fresh run in an OUT with no complete checkpoint */
  uint64_t file_hash[2];         /* the data set's and evaluation set's content */
  int64_t *ex;
  trn_tb tb;                     /* --log sinks */
  trn_wandb wb;
  double knobs[64];
  char out[PATHN], metrics[PATHN + 32], ckdir[PATHN], good_ckpt[PATHN];
  /* data parallelism (comm.h): this process's rank of `ranks`; rank 0 alone writes the
   * run directory, metrics, logs and checkpoints and says what the run does (say), the
   * others' messages carry their rank in the program's name */
  int rank, ranks, say;
  size_t state_bytes, state_full; /* AdamW state on this rank; unsharded */
  int agreed;                    /* every rank fails together: no abort needed */
  poc_program named;
  char rank_name[256];
  trn_prof prof;                 /* --profile: the last step's stages */
} trn_run;

static void run_free(trn_run *r) {
  for (int i = 0; i < TRN_MAX_MODELS; i++) {
    poc_model_free(r->ms.m[i]);
    if (r->staged[i]) {
      free(r->hw[i]);
      free(r->hm[i]);
      free(r->hv[i]);
    }
    if (r->lay_ok[i]) poc_layout_free(&r->lay[i]);
    if (r->alay[i].tensors) poc_layout_free(&r->alay[i]);
    free(r->ainit[i]);
    free(r->ctx.gacc[i]);
  }
  if (r->dev) trn_nccl_close(r->dev);
  poc_device_close(r->dev);
  free(r->ex);
  trn_order_free(&r->order);
  trn_cache_free(&r->cache);
  trn_evalset_free(&r->ev);
  trn_evalgen_free(&r->eg);
  poc_tok_free(r->tok);
  trn_data_free(&r->data);
  free(r->fl.set);
  if (r->lock_fd >= 0) {
    if (r->created && !r->opened) {
      /* a run that failed before writing anything leaves no directory behind */
      char path[PATHN + 8];
      trn_path(path, sizeof path, "%s/.lock", r->out);
      unlink(path);
      rmdir(r->out);
    }
    close(r->lock_fd); /* releases the lock (as the process's end would) */
  }
}

static int run_error(trn_run *r, int rc) {
  fprintf(stderr, "%s: error: %s\n", r->p->name, r->err);
  return rc;
}

/* Every rank's share of the evaluation generations onto every rank: each prompt's
 * generation lives on exactly one rank (zeros elsewhere), so sums of the lengths, the
 * correct flags and the zero-padded tokens are the gathered values. */
static int evaluate_gather(const trn_evalset *e, trn_evalgen *g, char *err) {
  int64_t n = e->n, total = 0;
  int64_t *v = malloc((size_t)(2 * n) * sizeof *v);
  if (!v) {
    trn_errf(err, "out of memory");
    return -1;
  }
  for (int64_t i = 0; i < n; i++) {
    v[i] = g->len[i];
    v[n + i] = g->correct[i];
  }
  int rc = trn_comm_sum_i64(v, (size_t)(2 * n), err);
  for (int64_t i = 0; !rc && i < n; i++) total += v[i];
  int64_t *t = rc ? NULL : calloc((size_t)total + 1, sizeof *t);
  int32_t *gen = rc ? NULL : malloc(((size_t)total + 1) * sizeof *gen);
  if (!rc && (!t || !gen)) {
    trn_errf(err, "out of memory");
    rc = -1;
  }
  if (!rc) {
    for (int64_t i = 0, o = 0; i < n; o += v[i], i++)
      for (int32_t k = 0; k < g->len[i]; k++) t[o + k] = g->gen[g->off[i] + k];
    rc = trn_comm_sum_i64(t, (size_t)total, err);
  }
  if (!rc) {
    for (int64_t i = 0; i < total; i++) gen[i] = (int32_t)t[i];
    for (int64_t i = 0, o = 0; i < n; o += v[i], i++) {
      g->off[i] = o;
      g->len[i] = (int32_t)v[i];
      g->correct[i] = (unsigned char)v[n + i];
    }
    free(g->gen);
    g->gen = gen;
    g->cap = total + 1;
    g->n_gen = total;
    gen = NULL;
  }
  free(gen);
  free(t);
  free(v);
  return rc;
}

/* Greedy exact match on the evaluation set: the tokens generated before eos must equal
 * the answer. Up to eval_tokens new tokens, or the answer's length + 2 when unset. The
 * generations go to OUT/eval/step-<step>.jsonl (with text when the policy has a tokenizer).
 * With data parallelism rank r answers prompts r, r + R, ...; the generations are then
 * gathered so that every rank holds all of them and rank 0 writes the samples. */
static int evaluate(trn_run *r, int64_t step, double *acc) {
  const trn_evalset *e = &r->ev;
  trn_evalgen *g = &r->eg;
  int hits = 0, eos = r->eos, eval_tokens = r->T->eval_tokens;
  char *err = r->err;
  if (!g->off) {
    g->off = malloc((size_t)e->n * sizeof *g->off);
    g->len = malloc((size_t)e->n * sizeof *g->len);
    g->correct = malloc((size_t)e->n);
    if (!g->off || !g->len || !g->correct) {
      trn_evalgen_free(g);
      trn_errf(err, "out of memory");
      return -1;
    }
  }
  g->n_gen = 0;
  memset(g->len, 0, (size_t)e->n * sizeof *g->len);
  memset(g->correct, 0, (size_t)e->n);
  int R = trn_comm_size();
  for (int i = trn_comm_rank(); i < e->n; i += R) {
    int max_new = eval_tokens > 0 ? eval_tokens : e->a_len[i] + 2;
    if (g->n_gen + max_new + 1 > g->cap) {
      int64_t nc = 2 * (g->n_gen + max_new + 1);
      int32_t *q = realloc(g->gen, (size_t)nc * sizeof *q);
      if (!q) {
        trn_errf(err, "out of memory");
        return -1;
      }
      g->gen = q;
      g->cap = nc;
    }
    int32_t *out = g->gen + g->n_gen;
    poc_rng rg = poc_rng_derive(0, 0, (uint64_t)i);
    int n = poc_model_generate(r->ms.m[r->policy], e->tok + e->p_off[i], e->p_len[i], max_new,
                               0.0, 1.0, eos, &rg, out, err);
    if (n < 0) return -1;
    int k = 0;
    while (k < n && out[k] != eos) k++;
    g->correct[i] = k == e->a_len[i] && !memcmp(out, e->tok + e->a_off[i], (size_t)k * sizeof(int32_t));
    hits += g->correct[i];
    g->off[i] = g->n_gen;
    g->len[i] = n;
    g->n_gen += n;
  }
  if (R > 1 && evaluate_gather(e, g, err)) return -1;
  hits = 0;
  for (int i = 0; i < e->n; i++) hits += g->correct[i];
  *acc = e->n ? (double)hits / e->n : 0;
  return trn_comm_rank() == 0 ? trn_eval_samples_write(r->out, step, e, g, r->tok, err) : 0;
}

/* A sink that fails is switched off with a warning: the run and metrics.jsonl go on. */
static void sink_failed(trn_run *r, int *on, const char *what, const char *err) {
  fprintf(stderr, "%s: warning: --log %s: %s; logging there stops (metrics.jsonl is "
          "complete)\n", r->p->name, what, err);
  *on = 0;
}

static void sinks_line(trn_run *r, const cJSON *o) {
  char err[POC_ERR_LEN];
  if (r->tb.on && trn_tb_line(&r->tb, o, err)) sink_failed(r, &r->tb.on, "tensorboard", err);
  if (r->wb.on && trn_wandb_line(&r->wb, o, err)) sink_failed(r, &r->wb.on, "wandb", err);
}

/* metrics.jsonl first; the sinks see only a line that is there */
static int metric_line(trn_run *r, cJSON *o) {
  char *s = cJSON_PrintUnformatted(o);
  int rc = s ? trn_metrics_append(r->metrics, s, r->err) : -1;
  if (!s) trn_errf(r->err, "out of memory");
  cJSON_free(s);
  if (!rc) sinks_line(r, o);
  return rc;
}

static int run_shapes(trn_run *r);

/* A LoRA model's settings and adapter layout; with adapter="DIR" the folder's
 * adapter_config.json gives r, alpha and the targets (the .po may repeat them, and then
 * they must agree) and its adapters are read and checked against the base now, before
 * anything is written. */
static int run_lora_inputs(trn_run *r, int m) {
  const poc_program *p = r->p;
  const poc_model_decl *d = &p->models[m];
  poc_lora_cfg *lc = &r->lc[m];
  *lc = (poc_lora_cfg){d->lora_r, d->lora_alpha, d->lora_dropout, d->lora_targets};
  if (d->lora_adapter) {
    poc_lora_cfg f;
    if (poc_lora_read_config(d->lora_adapter, &f, NULL, 0, r->err)) {
      fprintf(stderr, "%s: error: model '%s': %s\n", p->name, d->name, r->err);
      return -1;
    }
    const char *clash = (d->lora_set & 1) && f.r != lc->r             ? "r"
                        : (d->lora_set & 2) && f.alpha != lc->alpha   ? "lora_alpha (alpha)"
                        : (d->lora_set & 4) && f.targets != lc->targets ? "target_modules (targets)"
                                                                      : NULL;
    if (clash) {
      fprintf(stderr, "%s: error: model '%s': %s/adapter_config.json: '%s' differs from the "
              "program's lora(...); drop it from lora(...) to take the adapter's\n", p->name,
              d->name, d->lora_adapter, clash);
      return -1;
    }
    lc->r = f.r;
    lc->alpha = f.alpha;
    lc->targets = f.targets;
  }
  if (poc_lora_layout(&r->lay[m], lc, &r->alay[m], r->err)) {
    fprintf(stderr, "%s: error: model '%s': %s\n", p->name, d->name, r->err);
    return -1;
  }
  if (!d->lora_adapter) return 0;
  r->ainit[m] = malloc(r->alay[m].n_params * sizeof(float) + 1);
  if (!r->ainit[m] || poc_lora_load(d->lora_adapter, &r->alay[m], r->ainit[m], r->err)) {
    if (!r->ainit[m]) trn_errf(r->err, "out of memory for the adapters");
    fprintf(stderr, "%s: error: model '%s': %s\n", p->name, d->name, r->err);
    return -1;
  }
  return 0;
}

/* Configs and layouts (a frozen model shares its source's architecture), the data and the
 * evaluation set: every input checked before anything is written. */
static int run_inputs(trn_run *r) {
  const poc_program *p = r->p;
  int vocab = 1 << 30;
  r->policy = -1;
  for (int m = 0; m < p->n_models; m++) {
    const poc_model_decl *d = &p->models[m];
    const char *dir = d->frozen_of >= 0 ? p->models[d->frozen_of].path : d->path;
    poc_config cfg;
    /* a model reward_score() reads is a sequence classifier; one that logp(), entropy()
       or sample() reads is a causal LM (lowering keeps the two apart) */
    int reward = 0;
    for (int k = 0; k < p->n_calls; k++) reward |= p->calls[k].model == m && p->calls[k].reward;
    int bad = reward ? poc_reward_config(dir, &cfg, &r->fresh_head[m], r->err)
                     : poc_config_load(dir, &cfg, r->err);
    if (!bad && !reward && cfg.num_labels > 0) {
      trn_errf(r->err, "%s%sconfig.json is a sequence-classification model (a score head, no "
               "lm_head): read it with reward_score(%s, ...)", dir,
               dir[0] && dir[strlen(dir) - 1] == '/' ? "" : "/", d->name);
      bad = 1;
    }
    if (bad || poc_layout_init(&r->lay[m], &cfg, r->err)) {
      fprintf(stderr, "%s: error: model '%s': %s\n", p->name, d->name, r->err);
      return -1;
    }
    r->lay_ok[m] = 1;
    if (d->lora_r > 0 && run_lora_inputs(r, m)) return -1;
    if (cfg.vocab_size < vocab) vocab = cfg.vocab_size;
    /* the policy evaluation generates with: the first trainable causal LM */
    if (d->trainable && r->policy < 0 && !reward) r->policy = m;
  }
  if (trn_data_load(&r->data, p, p->data_path, vocab, r->T->max_len)) return -1;
  if (r->data.n_truncated && r->say)
    fprintf(stderr, "%s: warning: %lld of %lld examples are longer than max_len = %d and were "
            "cut (responses at the end)\n", p->data_path, (long long)r->data.n_truncated,
            (long long)r->data.n, r->T->max_len);
  if (r->policy < 0) { /* only reward models train: nothing generates */
    for (int m = 0; m < p->n_models && r->policy < 0; m++)
      if (p->models[m].trainable) r->policy = m;
    if (p->eval_path) {
      fprintf(stderr, "%s: error: %s: prompts() evaluates by generating with a trainable "
              "causal LM, but every trainable model here is a reward model (reward_score)\n",
              p->name, p->eval_path);
      return -1;
    }
  }
  r->eos = r->lay[r->policy].cfg.eos_token_id;
  /* each model folder's tokenizer.json against its config.json's vocab_size, before
     anything trains; the policy's gives the evaluation samples their text */
  for (int m = 0; m < p->n_models; m++) {
    if (p->models[m].frozen_of >= 0) continue;
    poc_tok *t;
    if (poc_tok_open(p->models[m].path, r->lay[m].cfg.vocab_size, &t, r->err) < 0) {
      fprintf(stderr, "%s: error: model '%s': %s\n", p->name, p->models[m].name, r->err);
      return -1;
    }
    if (m == r->policy && t && poc_tok_unsupported(t))
      fprintf(stderr, "%s: warning: model '%s': %s; evaluation samples carry ids only\n",
              p->name, p->models[m].name, poc_tok_unsupported(t));
    if (m == r->policy && t && !poc_tok_unsupported(t)) r->tok = t;
    else poc_tok_free(t);
  }
  if (p->eval_path && trn_evalset_load(&r->ev, p->eval_path, vocab, r->eos)) return -1;
  if (run_shapes(r)) return -1;
  /* content hashes, recorded in checkpoints so a resume notices changed inputs */
  const char *files[2] = {p->data_path, p->eval_path};
  for (int i = 0; i < 2 && files[i]; i++) {
    unsigned char *bytes;
    size_t nb;
    if (read_file(files[i], &bytes, &nb)) {
      fprintf(stderr, "%s: error: cannot read\n", files[i]);
      return -1;
    }
    r->file_hash[i] = trn_hash(0, bytes, nb);
    free(bytes);
  }
  return 0;
}

/* The step's context, and the longest sequence each model will see against its positions
 * and its sliding window (which the model refuses to exceed): an error now rather than at
 * some step hours in. Also the evaluation prompts with the tokens generated after them. */
static int run_shapes(trn_run *r) {
  const poc_program *p = r->p;
  const poc_train *T = r->T;
  r->ctx = (trn_ctx){.prog = p, .data = &r->data, .knobs = r->knobs,
                     .micro_batch = T->micro_batch < T->batch ? T->micro_batch : T->batch,
                     .unfused = r->fl.unfused,
                     /* ZeRO stage 1 by default whenever there are several ranks */
                     .zero = r->ranks > 1 && r->fl.zero != 0,
                     .overlap = r->fl.overlap};
  for (int m = 0; m < p->n_models; m++) {
    r->ctx.lay[m] = &r->lay[m];
    r->ctx.eos[m] = r->lay[m].cfg.eos_token_id;
  }
  for (int m = 0; m < p->n_models; m++) {
    const poc_model_decl *d = &p->models[m];
    const char *dir = d->frozen_of >= 0 ? p->models[d->frozen_of].path : d->path;
    int longest, mt = trn_max_pack_tokens(&r->ctx, m, r->ctx.micro_batch, &longest);
    int maxpos = r->lay[m].cfg.max_position_embeddings, win = r->lay[m].cfg.sliding_window;
    if (m == r->policy && p->eval_path)
      for (int i = 0; i < r->ev.n; i++) {
        int len = r->ev.p_len[i] + (T->eval_tokens > 0 ? T->eval_tokens : r->ev.a_len[i] + 2);
        if (len > longest) longest = len;
      }
    if (maxpos > 0 && longest > maxpos) {
      fprintf(stderr, "%s: error: model '%s' would see a %d-token sequence (context + target) "
              "but has %d positions; lower max_len (now %d)\n", p->name, d->name, longest,
              maxpos, T->max_len);
      return -1;
    }
    if (win > 0 && longest > win) {
      fprintf(stderr, "%s%sconfig.json: error: 'sliding_window' = %d is shorter than the "
              "longest sequence this run gives model '%s' (%d tokens, context + target); poc "
              "attends within the window only, so lower max_len (now %d)\n", dir,
              dir[0] && dir[strlen(dir) - 1] == '/' ? "" : "/", win, d->name, longest,
              T->max_len);
      return -1;
    }
    r->ctx.max_tokens[m] = mt > 0 ? mt : 1;
  }
  return 0;
}

/* Takes OUT/.lock with flock for the run's life, so one process owns a run directory; the
 * kernel drops the lock when the process ends however it ends, so a crash never leaves it
 * stuck. The holder's pid is written in the file for the message another run gives. */
static int run_lock(trn_run *r) {
  const poc_program *p = r->p;
  char path[PATHN + 8];
  trn_path(path, sizeof path, "%s/.lock", r->out);
  int fd = open(path, O_RDWR | O_CREAT | O_CLOEXEC, 0666);
  if (fd < 0) {
    fprintf(stderr, "%s: error: %s: cannot create: %s\n", p->name, path, strerror(errno));
    return -1;
  }
  if (flock(fd, LOCK_EX | LOCK_NB)) {
    int e = errno;
    char pid[32] = "";
    ssize_t n = e == EWOULDBLOCK ? pread(fd, pid, sizeof pid - 1, 0) : -1;
    pid[n > 0 ? n : 0] = 0;
    pid[strcspn(pid, "\n")] = 0;
    if (e == EWOULDBLOCK)
      fprintf(stderr, "%s: error: %s is in use by another run (pid %s)\n", p->name, r->out,
              pid[0] ? pid : "unknown");
    else
      fprintf(stderr, "%s: error: %s: cannot lock: %s\n", p->name, path, strerror(e));
    close(fd);
    return -1;
  }
  char pid[32];
  int n = snprintf(pid, sizeof pid, "%ld\n", (long)getpid());
  if (ftruncate(fd, 0) || pwrite(fd, pid, (size_t)n, 0) != n) {
    /* the lock holds without the pid; only the other run's message is poorer */
  }
  r->lock_fd = fd;
  return 0;
}

static int is_dir(const char *path) {
  struct stat sb;
  return stat(path, &sb) == 0 && S_ISDIR(sb.st_mode);
}

/* The run directory: --resume's, --out, or runs/NAME-<timestamp>[-k], locked (run_lock).
 * OUT "holds a run" when it has a complete checkpoint: a fresh run refuses it. Without
 * one (a run killed before its first checkpoint, or an empty folder) a fresh run starts
 * there afresh and --resume is refused. */
static int run_directory(trn_run *r) {
  const poc_program *p = r->p;
  r->resuming = r->fl.resume != NULL;
  if (r->resuming || r->fl.out) {
    trn_path(r->out, sizeof r->out, "%s", r->resuming ? r->fl.resume : r->fl.out);
    struct stat sb;
    if (stat(r->out, &sb) == 0 && !S_ISDIR(sb.st_mode)) {
      fprintf(stderr, "%s: error: %s exists and is not a directory\n", p->name, r->out);
      return -1;
    }
    if (r->resuming && !is_dir(r->out)) {
      fprintf(stderr, "%s: error: --resume %s: no such run directory\n", p->name, r->out);
      return -1;
    }
    if (!r->resuming && !is_dir(r->out)) {
      if (mkdir_p(r->out)) {
        fprintf(stderr, "%s: error: %s: cannot create the run directory: %s\n", p->name,
                r->out, strerror(errno));
        return -1;
      }
      r->created = 1;
    }
  } else {
    /* runs/NAME-<timestamp>, made with mkdir so two runs starting in the same second
     * cannot share it: the second gets a -2 suffix (and so on) */
    time_t t = time(NULL);
    struct tm tm;
    localtime_r(&t, &tm);
    char ts[32];
    strftime(ts, sizeof ts, "%Y%m%d-%H%M%S", &tm);
    if (mkdir_p("runs")) {
      fprintf(stderr, "%s: error: runs: cannot create: %s\n", p->name, strerror(errno));
      return -1;
    }
    for (int k = 1;; k++) {
      if (k == 1) trn_path(r->out, sizeof r->out, "runs/%s-%s", p->name, ts);
      else trn_path(r->out, sizeof r->out, "runs/%s-%s-%d", p->name, ts, k);
      if (mkdir(r->out, 0777) == 0) break;
      if (errno != EEXIST || k == 1000) {
        fprintf(stderr, "%s: error: %s: cannot create the run directory: %s\n", p->name,
                r->out, strerror(errno));
        return -1;
      }
    }
    r->created = 1;
  }
  trn_path(r->metrics, sizeof r->metrics, "%s/metrics.jsonl", r->out);
  if (run_lock(r)) return -1;
  if (r->resuming) {
    if (trn_ckpt_latest(r->out, r->ckdir, sizeof r->ckdir) < 0) {
      fprintf(stderr, "%s: error: --resume %s: no complete checkpoint (ckpt-<step>/) there; "
              "the run stopped before its first one, so start it again without --resume "
              "(--out %s)\n", p->name, r->out, r->out);
      return -1;
    }
  } else if (trn_ckpt_latest(r->out, r->ckdir, sizeof r->ckdir) >= 0) {
    fprintf(stderr, "%s: error: %s already holds a run; continue it with --resume %s or "
            "choose another --out\n", p->name, r->out, r->out);
    return -1;
  } else if (!r->created) {
    r->restart = 1;
  }
  return 0;
}

/* One model instance (run_models) */
static int run_model(trn_run *r, int m) {
  const poc_program *p = r->p;
  const poc_model_decl *d = &p->models[m];
  int lora = d->lora_r > 0;
  size_t n = r->lay[m].n_params;
  r->ms.m[m] = lora ? poc_model_new_lora(r->dev, &r->lay[m], &r->alay[m], &r->lc[m],
                                         r->ctx.max_tokens[m], r->err)
                    : poc_model_new(r->dev, &r->lay[m], NULL, POC_DT_F32, d->trainable,
                                    r->ctx.max_tokens[m], r->err);
  if (!r->ms.m[m]) {
    fprintf(stderr, "%s: error: model '%s': %s\n", p->name, d->name, r->err);
    return 1;
  }
  /* ZeRO: this rank's shard of the AdamW state, chosen before any of it is allocated */
  if (d->trainable && r->ctx.zero &&
      poc_model_shard(r->ms.m[m], r->rank, r->ranks, r->err)) {
    fprintf(stderr, "%s: error: model '%s': %s\n", p->name, d->name, r->err);
    return 1;
  }
  /* the weights go straight into the device's own buffer where that is host memory
     (the CPU), so the model is never held twice; elsewhere through a host copy */
  float *dev_w = poc_model_host_f32(r->ms.m[m], POC_PART_WEIGHTS);
  float *w = dev_w ? dev_w : malloc(n * sizeof(float));
  if (!w) {
    fprintf(stderr, "%s: error: out of memory for model '%s' (%zu parameters)\n", p->name,
            d->name, n);
    return 1;
  }
  const char *dir = d->frozen_of >= 0 ? p->models[d->frozen_of].path : d->path;
  int src = d->frozen_of >= 0 ? d->frozen_of : m;
  int bad = r->lay[m].cfg.num_labels > 0
                ? poc_reward_load_f32(dir, &r->lay[m], r->fresh_head[m], (uint64_t)src, w, r->err)
                : poc_weights_load_f32(dir, &r->lay[m], w, r->err);
  /* the reference cache's key covers the frozen weights */
  if (!bad && (!d->trainable || lora)) r->base_hash[m] = trn_hash(0, w, n * sizeof(float));
  if (!bad && !d->trainable) r->ctx.frozen_hash[m] = r->base_hash[m];
  if (!bad && !dev_w) bad = poc_model_set(r->ms.m[m], POC_PART_WEIGHTS, w, POC_DT_F32, r->err);
  if (!dev_w) free(w);
  if (bad) {
    fprintf(stderr, "%s: error: model '%s': %s\n", p->name, d->name, r->err);
    return 2;
  }
  if (!d->trainable) return 0;
  /* what trains and what checkpoints hold: the weights, or a LoRA model's adapters */
  poc_part part = lora ? POC_PART_ADAPTER : POC_PART_WEIGHTS;
  const poc_layout *tl = lora ? &r->alay[m] : &r->lay[m];
  size_t nt = tl->n_params;
  r->part[m] = part;
  size_t lo, hi, cnt;
  poc_model_shard_range(r->ms.m[m], &lo, &hi, &cnt);
  r->hw[m] = poc_model_host_f32(r->ms.m[m], part);
  r->hm[m] = poc_model_host_f32(r->ms.m[m], POC_PART_MOM);
  r->hv[m] = poc_model_host_f32(r->ms.m[m], POC_PART_VAR);
  if (!r->hw[m] || !r->hm[m] || !r->hv[m]) {
    r->staged[m] = 1;
    r->hw[m] = malloc(nt * sizeof(float) + 1);
    r->hm[m] = calloc(hi - lo + 1, sizeof(float));
    r->hv[m] = calloc(hi - lo + 1, sizeof(float));
    if (!r->hw[m] || !r->hm[m] || !r->hv[m]) {
      fprintf(stderr, "%s: error: out of memory staging model '%s'\n", p->name, d->name);
      return 1;
    }
  }
  if (lora) {
    /* the starting adapters: an adapter folder's, or PEFT's initialisation from the seed */
    if (r->ainit[m]) memcpy(r->hw[m], r->ainit[m], nt * sizeof(float));
    else poc_lora_init(tl, r->st.seed, r->hw[m]);
    if (r->staged[m] && poc_model_set(r->ms.m[m], part, r->hw[m], POC_DT_F32, r->err)) {
      fprintf(stderr, "%s: error: model '%s': %s\n", p->name, d->name, r->err);
      return 1;
    }
  }
  r->ctx.n_train[m] = nt;
  /* gradient accumulation over micro-batches or ranks sums in double in host memory
     (train_step.c): the accumulator is made once for the run */
  if ((r->T->micro_batch < r->T->batch || trn_comm_size() > 1) &&
      poc_model_host_f32(r->ms.m[m], POC_PART_GRAD) &&
      !(r->ctx.gacc[m] = calloc((r->ctx.zero ? cnt * (size_t)r->ranks : nt) + 1,
                                sizeof(double)))) {
    fprintf(stderr, "%s: error: out of memory for the gradient accumulator of model '%s' "
            "(%zu parameters)\n", p->name, d->name, nt);
    return 1;
  }
  r->cm[r->n_cm++] = (trn_ckmodel){d->name, tl, r->hw[m], r->hm[m], r->hv[m],
                                   lora ? &r->lc[m] : NULL, d->path, lo, hi,
                                   r->ctx.zero ? r->ranks : 0, r->rank};
  r->state_bytes += 2 * cnt * poc_dtype_size(r->dev->acc);
  r->state_full += 2 * nt * poc_dtype_size(r->dev->acc);
  return 0;
}

/* Model instances on the device, their workspaces sized for the largest micro-batch, with
 * weights from the model folders: trainable ones are replaced by the checkpoint's when
 * resuming, frozen ones always come from their source's original folder (the snapshot is
 * of the initial weights). Returns 2 for bad input, 1 for other failures. */
static int run_models(trn_run *r) {
  const poc_program *p = r->p;
  /* a frozen model of a LoRA model is a view of it (its base, adapters off), made after it */
  for (int pass = 0; pass < 2; pass++)
    for (int m = 0; m < p->n_models; m++) {
      const poc_model_decl *d = &p->models[m];
      int src = d->frozen_of, view = src >= 0 && p->models[src].lora_r > 0;
      if (view != pass) continue;
      if (view) {
        r->ms.m[m] = poc_model_view(r->ms.m[src], 0, r->ctx.max_tokens[m], r->err);
        if (!r->ms.m[m]) {
          fprintf(stderr, "%s: error: model '%s': %s\n", p->name, d->name, r->err);
          return 1;
        }
        r->ctx.frozen_hash[m] = r->base_hash[src];
        continue;
      }
      int rc = run_model(r, m);
      if (rc) return rc;
    }
  return 0;
}

/* Copies the trainable models' state to where checkpoints read it (nothing on the CPU). */
static int run_stage_state(trn_run *r, int to_device) {
  for (int m = 0; m < r->p->n_models; m++) {
    if (!r->p->models[m].trainable || !r->staged[m]) continue;
    poc_model *pm = r->ms.m[m];
    int bad = to_device
                  ? poc_model_set(pm, r->part[m], r->hw[m], POC_DT_F32, r->err) ||
                        poc_model_set(pm, POC_PART_MOM, r->hm[m], POC_DT_F32, r->err) ||
                        poc_model_set(pm, POC_PART_VAR, r->hv[m], POC_DT_F32, r->err)
                  : poc_model_get(pm, r->part[m], r->hw[m], POC_DT_F32, r->err) ||
                        poc_model_get(pm, POC_PART_MOM, r->hm[m], POC_DT_F32, r->err) ||
                        poc_model_get(pm, POC_PART_VAR, r->hv[m], POC_DT_F32, r->err);
    if (bad) return -1;
  }
  return 0;
}

/* Resuming: the checkpoint's weights, moments, position, seed and knobs (--set and --seed
 * still win, with a note). */
static int run_resume(trn_run *r, uint64_t prog_hash) {
  const poc_program *p = r->p;
  /* newest first; a damaged checkpoint (truncated, edited, non-finite) is reported and the
   * one before it is tried, so a crash during a checkpoint's write costs one interval */
  int64_t steps[256];
  int n = trn_ckpt_list(r->out, steps, 256), k;
  for (k = 0; k < n; k++) {
    trn_path(r->ckdir, sizeof r->ckdir, "%s/ckpt-%lld", r->out, (long long)steps[k]);
    int64_t ok = !trn_ckpt_load(r->ckdir, steps[k], &r->st, p, r->cm, r->n_cm, r->err);
    if (!ok)
      fprintf(stderr, "%s: note: skipping %s, which is damaged: %s\n", p->name, r->ckdir, r->err);
    /* every rank resumes from the same one (under ZeRO each reads other shards of it) */
    char e2[POC_ERR_LEN];
    if (r->ranks > 1 && trn_comm_min_i64(&ok, 1, e2)) {
      fprintf(stderr, "%s: error: %s\n", p->name, e2);
      return 1;
    }
    if (ok) break;
  }
  if (k == n) {
    fprintf(stderr, "%s: error: --resume %s: no usable checkpoint (every complete one is "
            "damaged)\n", p->name, r->out);
    return 2;
  }
  if (k > 0)
    fprintf(stderr, "%s: note: resuming from the previous complete checkpoint, %s\n", p->name,
            r->ckdir);
  if (run_stage_state(r, 1)) return run_error(r, 1);
  trn_path(r->good_ckpt, sizeof r->good_ckpt, "%s", r->ckdir);
  /* the inputs' content, as the checkpoint recorded it */
  const char *files[2] = {p->data_path, p->eval_path};
  for (int i = 0; i < r->st.n_files; i++) {
    int f = -1;
    for (int j = 0; j < 2; j++)
      if (files[j] && !strcmp(files[j], r->st.file_name[i])) f = j;
    if (f < 0 || r->file_hash[f] == r->st.file_hash[i]) continue;
    if (!r->fl.allow_data_change) {
      fprintf(stderr, "%s: error: %s changed since %s was written (content hash %016" PRIx64
              ", now %016" PRIx64 "); resuming would train on other data than the run "
              "began with. Restore it, or pass --allow-data-change to resume anyway\n",
              p->name, files[f], r->ckdir, r->st.file_hash[i], r->file_hash[f]);
      return 2;
    }
    fprintf(stderr, "%s: note: %s changed since %s was written; resuming anyway "
            "(--allow-data-change)\n", p->name, files[f], r->ckdir);
  }
  if (r->st.program_hash != prog_hash) {
    fprintf(stderr, "%s: error: %s was made by a different program (its .po source "
            "differs); resume it with the binary that started it\n", p->name, r->out);
    return 2;
  }
  for (int k = 0; k < p->n_knobs; k++) r->knobs[k] = r->st.knobs[k];
  if (r->fl.n_set) {
    fprintf(stderr, "%s: note: --set changes knobs of a resumed run\n", p->name);
    if (apply_sets(p, &r->fl, r->knobs, NULL)) return 2;
  }
  if (r->fl.have_seed && r->fl.seed != r->st.seed) {
    fprintf(stderr, "%s: note: --seed %llu replaces the run's seed %llu from step %lld on\n",
            p->name, (unsigned long long)r->fl.seed, (unsigned long long)r->st.seed,
            (long long)r->st.step);
    r->st.seed = r->fl.seed;
  }
  r->ctx.seed = r->st.seed;
  if (r->say)
    fprintf(stderr, "%s: resuming %s at step %lld\n", p->name, r->ckdir, (long long)r->st.step);
  return 0;
}

/* The lines metrics.jsonl holds, into a sink that was just created: a resumed run that
 * turns --log on gets the steps before the resume too. */
static void sink_replay(trn_run *r, int which) {
  FILE *f = fopen(r->metrics, "r");
  if (!f) return;
  char *line = NULL;
  size_t cap = 0;
  char err[POC_ERR_LEN];
  while (getline(&line, &cap, f) >= 0) {
    cJSON *o = cJSON_Parse(line);
    if (o && which == TRN_LOG_TENSORBOARD && r->tb.on && trn_tb_line(&r->tb, o, err))
      sink_failed(r, &r->tb.on, "tensorboard", err);
    if (o && which == TRN_LOG_WANDB && r->wb.on && trn_wandb_line(&r->wb, o, err))
      sink_failed(r, &r->wb.on, "wandb", err);
    cJSON_Delete(o);
  }
  free(line);
  fclose(f);
}

/* The --log sinks, cut back as metrics.jsonl was (a resume) or started afresh. */
static void run_open_sinks(trn_run *r) {
  const poc_program *p = r->p;
  int64_t keep = r->resuming ? r->st.step : -1;
  char err[POC_ERR_LEN];
  int rc;
  if (r->fl.log & TRN_LOG_TENSORBOARD) {
    if ((rc = trn_tb_open(&r->tb, r->out, keep, err)) < 0)
      sink_failed(r, &r->tb.on, "tensorboard", err);
    else if (rc == 1 && r->resuming)
      sink_replay(r, TRN_LOG_TENSORBOARD);
  }
  if (r->fl.log & TRN_LOG_WANDB) {
    /* the run's config: its knobs and the train settings it trains with */
    cJSON *cfg = cJSON_CreateObject();
    for (int k = 0; cfg && k < p->n_knobs; k++)
      cJSON_AddNumberToObject(cfg, p->knobs[k].name, r->knobs[k]);
    char *tj = train_json(r->T);
    cJSON *t = tj ? cJSON_Parse(tj) : NULL;
    cJSON_free(tj);
    if (cfg && t) cJSON_AddItemToObject(cfg, "train", t);
    else cJSON_Delete(t);
    const char *base = strrchr(r->out, '/');
    char name[512];
    trn_path(name, sizeof name, "%s %s", p->name, base && base[1] ? base + 1 : r->out);
    if ((rc = trn_wandb_open(&r->wb, r->out, keep, name, cfg, err)) < 0)
      sink_failed(r, &r->wb.on, "wandb", err);
    else if (rc == 1 && r->resuming)
      sink_replay(r, TRN_LOG_WANDB);
    cJSON_Delete(cfg);
  }
}

/* Creates the run directory with the program's source; a resumed run drops the metric
 * lines after its checkpoint. */
static int run_open_directory(trn_run *r) {
  const poc_program *p = r->p;
  char path[PATHN];
  if (mkdir_p(r->out)) {
    fprintf(stderr, "%s: error: %s: cannot create the run directory: %s\n", p->name, r->out,
            strerror(errno));
    return -1;
  }
  r->opened = 1;
  trn_path(path, sizeof path, "%s/%s.po", r->out, p->name);
  if (p->source && st_write_text_atomic(path, p->source, r->err)) return run_error(r, -1);
  /* the settings this invocation trains with, --set train.NAME included */
  char *tj = train_json(r->T);
  trn_path(path, sizeof path, "%s/train.json", r->out);
  int bad = !tj || st_write_text_atomic(path, tj, r->err);
  if (!tj) trn_errf(r->err, "out of memory");
  cJSON_free(tj);
  if (bad) return run_error(r, -1);
  if (r->restart) {
    struct stat sb;
    if (stat(r->metrics, &sb) == 0)
      fprintf(stderr, "%s: note: %s holds no complete checkpoint; starting the run there "
              "afresh (its metrics.jsonl too)\n", p->name, r->out);
  }
  /* resume: drop the lines after the checkpoint (and a torn last line); a restart: all */
  if ((r->resuming || r->restart) &&
      trn_metrics_truncate(r->metrics, r->resuming ? r->st.step : -1, r->err))
    return run_error(r, -1);
  run_open_sinks(r);
  return 0;
}

/* Hoisted calls: computed once before the first step, cached on disk, keyed by what they
 * depend on (the data file's bytes, max_len, the calls and the frozen weights). */
static int run_hoist(trn_run *r) {
  const poc_program *p = r->p;
  int n_hoisted = 0;
  for (int k = 0; k < p->n_calls; k++) n_hoisted += p->calls[k].hoisted;
  if (!n_hoisted) return 0;
  unsigned char *bytes;
  size_t nb;
  uint64_t key = trn_hash_str(0, "ref_cache v2");
  if (read_file(p->data_path, &bytes, &nb)) {
    fprintf(stderr, "%s: error: %s: cannot read\n", p->name, p->data_path);
    return -1;
  }
  key = trn_hash(key, bytes, nb);
  free(bytes);
  key = trn_hash(key, &r->T->max_len, sizeof r->T->max_len);
  for (int k = 0; k < p->n_calls; k++) {
    if (!p->calls[k].hoisted) continue;
    key = trn_hash_str(key, p->calls[k].key);
    key = trn_hash(key, &p->calls[k].want_entropy, sizeof(int));
    key = trn_hash(key, &p->calls[k].want_logsumsq, sizeof(int));
    key = trn_hash(key, &r->ctx.frozen_hash[p->calls[k].model], sizeof(uint64_t));
  }
  if (trn_cache_alloc(&r->cache, p, r->data.n)) {
    fprintf(stderr, "%s: error: out of memory for the reference cache\n", p->name);
    return -1;
  }
  char path[PATHN];
  trn_path(path, sizeof path, "%s/ref_cache.bin", r->out);
  /* every rank reads the cache (only rank 0 ever writes it, and only after this
   * agreement); unless all have it, all compute it, each rank its share */
  int64_t loaded = trn_cache_load(&r->cache, p, path, key) == 1;
  if (trn_comm_min_i64(&loaded, 1, r->err)) return run_error(r, -1);
  if (!loaded) {
    trn_cache_free(&r->cache);
    if (trn_cache_alloc(&r->cache, p, r->data.n)) {
      fprintf(stderr, "%s: error: out of memory for the reference cache\n", p->name);
      return -1;
    }
    double t0 = now_s();
    if (trn_hoist(&r->ctx, &r->ms, &r->cache, r->err) ||
        (r->rank == 0 && trn_cache_save(&r->cache, path, key, r->err)))
      return run_error(r, -1);
    if (r->say)
      fprintf(stderr, "%s: reference values of %d call%s over %lld examples cached in %.1fs\n",
              p->name, n_hoisted, n_hoisted > 1 ? "s" : "", (long long)r->data.n, now_s() - t0);
  }
  r->ctx.cache = &r->cache;
  return 0;
}

/* Evaluation before training, on a line of its own at step 0. */
static int run_eval0(trn_run *r) {
  const poc_program *p = r->p;
  if (!p->eval_path || r->resuming) return 0;
  double acc;
  if (evaluate(r, 0, &acc)) {
    fprintf(stderr, "%s: error: evaluation: %s\n", p->name, r->err);
    return -1;
  }
  if (r->rank) return 0;
  cJSON *o = cJSON_CreateObject();
  cJSON_AddNumberToObject(o, "step", 0);
  cJSON_AddNumberToObject(o, "epoch", 0);
  cJSON_AddNumberToObject(o, "eval/accuracy", acc);
  int bad = metric_line(r, o);
  cJSON_Delete(o);
  if (bad) return run_error(r, -1);
  fprintf(stderr, "%s: eval/accuracy %.4f before training (%d prompts)\n", p->name, acc, r->ev.n);
  return 0;
}

typedef struct {
  double loss, lr, gnorm, tok_s, dt;
  int skipped;                   /* the step was not applied (non-finite, skip policy) */
  trn_stepout so;
} run_step_out;

enum { STEP_OK = 0, STEP_SKIPPED = 1, STEP_ERROR = -1, STEP_NONFINITE = -2 };

/* One optimizer step: the gradient of the step's mean loss, its global norm (reported
 * before clipping), clipping folded into AdamW's gradient scale, AdamW at lr(step).
 *
 * Non-finite numbers never reach the weights: the loss, the gradient's sum of squares and
 * the learning rate are checked before AdamW runs, and a failing step is skipped
 * (on_nonfinite = skip: no update, the data position still advances) or stops the run
 * (STEP_NONFINITE) with weights and moments as the previous step left them. An update
 * that overflows although its inputs were finite (an enormous lr) is caught by the
 * weights' sum of squares afterwards; it cannot be undone, so it always stops the run,
 * and since checkpoints are written only after this check, none holds the result. */
static int run_step(trn_run *r, int64_t step, run_step_out *o) {
  const poc_program *p = r->p;
  const poc_train *T = r->T;
  double t0 = now_s();
  trn_prof *pf = r->ctx.prof;
  trn_prof_begin(pf);
  o->skipped = 0;
  for (int b = 0; b < T->batch; b++) r->ex[b] = trn_order_at(&r->order, r->st.pos + b);
  for (int m = 0; m < p->n_models; m++)
    if (p->models[m].trainable && poc_model_zero_grad(r->ms.m[m], r->err)) return STEP_ERROR;
  if (trn_step_grad(&r->ctx, &r->ms, r->ex, T->batch, step, &o->so, r->err)) return STEP_ERROR;
  o->loss = o->so.loss_sum / T->batch;
  /* ‖g‖² per model (under ZeRO each rank has its shard's: summed over ranks), then added
   * model by model in a fixed order */
  double sq = 0, msq[TRN_MAX_MODELS] = {0};
  for (int m = 0; m < p->n_models; m++)
    if (p->models[m].trainable && poc_model_grad_sumsq(r->ms.m[m], &msq[m], r->err))
      return STEP_ERROR;
  if (r->ctx.zero && trn_comm_sum_f64(msq, (size_t)p->n_models, r->err)) return STEP_ERROR;
  for (int m = 0; m < p->n_models; m++) sq += msq[m];
  o->gnorm = sqrt(sq);
  o->lr = trn_lr(T, step, r->st.total);
  const char *bad = !isfinite(o->loss) ? "loss" : !isfinite(o->gnorm) ? "gradient norm"
                    : !isfinite(o->lr) ? "learning rate" : NULL;
  if (bad) {
    double x = !isfinite(o->loss) ? o->loss : !isfinite(o->gnorm) ? o->gnorm : o->lr;
    const char *xs = isnan(x) ? "NaN" : x > 0 ? "+inf" : "-inf";
    if (T->on_nonfinite != POC_NONFINITE_SKIP) {
      trn_errf(r->err, "the %s is %s; the step was not applied", bad, xs);
      return STEP_NONFINITE;
    }
    fprintf(stderr, "%s: warning: step %lld skipped: the %s is %s (on_nonfinite = skip)\n",
            p->name, (long long)step, bad, xs);
    o->skipped = 1;
    r->st.skipped++;
  } else {
    double gscale = 1;
    if (T->clip > 0 && o->gnorm > T->clip) gscale = T->clip / (o->gnorm + 1e-6);
    /* AdamW's bias correction counts the updates actually made */
    poc_adamw h = {o->lr, T->adam_beta1, T->adam_beta2, T->adam_eps, T->weight_decay,
                   (long)(step - r->st.skipped), gscale};
    for (int m = 0; m < p->n_models; m++)
      if (p->models[m].trainable && poc_model_adamw(r->ms.m[m], &h, r->err)) return STEP_ERROR;
    /* ZeRO: each rank updated its shard; every rank gets all of them */
    for (int m = 0; m < p->n_models && r->ctx.zero; m++)
      if (p->models[m].trainable &&
          poc_model_weights_all_gather(r->ms.m[m], trn_comm_dev_all_gather, r->err))
        return STEP_ERROR;
    for (int m = 0; m < p->n_models; m++) {
      double s;
      if (!p->models[m].trainable) continue;
      if (poc_model_weights_sumsq(r->ms.m[m], &s, r->err)) return STEP_ERROR;
      if (!isfinite(s)) {
        trn_errf(r->err, "model '%s' has non-finite weights after the update (lr %g, gradient "
                 "norm %g)%s", p->models[m].name, o->lr, o->gnorm,
                 T->on_nonfinite == POC_NONFINITE_SKIP
                     ? "; an applied update cannot be skipped, so the run stops" : "");
        return STEP_NONFINITE;
      }
    }
  }
  trn_prof_mark(pf, TRN_PROF_OPTIMIZER);
  trn_prof_end(pf);
  r->st.step = step;
  r->st.pos += T->batch;
  r->st.epoch = (double)r->st.pos / (double)r->data.n;
  double dt = now_s() - t0;
  o->dt = dt;
  o->tok_s = dt > 0 ? (double)o->so.tokens / dt : 0;
  return o->skipped ? STEP_SKIPPED : STEP_OK;
}

/* The step's metrics line (and evaluation when due). eval_acc < 0 when none ran. */
static int run_log(trn_run *r, int64_t step, int logged, int do_eval, const run_step_out *o,
                   double *eval_acc) {
  const poc_program *p = r->p;
  *eval_acc = -1;
  if (r->rank) {
    /* the evaluation is sharded over every rank; the line is rank 0's */
    if (do_eval && evaluate(r, step, eval_acc)) return -1;
    return 0;
  }
  cJSON *j = cJSON_CreateObject();
  cJSON_AddNumberToObject(j, "step", (double)step);
  cJSON_AddNumberToObject(j, "epoch", r->st.epoch);
  if (logged) {
    cJSON_AddNumberToObject(j, "loss", o->loss);
    cJSON_AddNumberToObject(j, "lr", o->lr);
    cJSON_AddNumberToObject(j, "grad_norm", o->gnorm);
    cJSON_AddNumberToObject(j, "tokens_per_s", o->tok_s);
    for (int k = 0; k < p->n_reports; k++)
      cJSON_AddNumberToObject(j, p->reports[k], o->so.report_sum[k] / r->T->batch);
    /* cJSON writes a non-finite number as null: a skipped step's loss reads as null */
    if (o->skipped) cJSON_AddTrueToObject(j, "skipped");
    if (r->T->on_nonfinite == POC_NONFINITE_SKIP)
      cJSON_AddNumberToObject(j, "skipped_steps", (double)r->st.skipped);
    if (r->ctx.prof) {
      /* this step's split (train_prof.c); the stages add up to time/step */
      cJSON_AddNumberToObject(j, "time/step", o->dt);
      /* per trained token: rows through the loss head and causal attention's (query,
       * key) pairs, what `poc bench`'s FLOP count needs besides the model's shape */
      double n = o->so.tokens_here > 0 ? (double)o->so.tokens_here : 1;
      cJSON_AddNumberToObject(j, "count/head_rows_per_token", (double)o->so.head_rows / n);
      cJSON_AddNumberToObject(j, "count/attn_pairs_per_token", o->so.attn_pairs / n);
      for (int s = 0; s < TRN_PROF_N; s++)
        cJSON_AddNumberToObject(j, trn_prof_names[s], r->prof.s[s]);
      cJSON_AddNumberToObject(j, "memory/device_peak_mib",
                              (double)trn_prof_device_peak() / (1024.0 * 1024.0));
    }
  }
  if (do_eval) {
    double acc;
    if (evaluate(r, step, &acc)) {
      cJSON_Delete(j);
      char e2[POC_ERR_LEN];
      trn_path(e2, sizeof e2, "evaluation: %s", r->err);
      memcpy(r->err, e2, sizeof e2);
      return -1;
    }
    cJSON_AddNumberToObject(j, "eval/accuracy", acc);
    *eval_acc = acc;
  }
  int bad = metric_line(r, j);
  cJSON_Delete(j);
  return bad;
}

static int run_checkpoint(trn_run *r) {
  if (r->fl.no_checkpoint) return 0; /* a measurement run */
  /* the replicas are equal: rank 0 writes, but for ZeRO's moments, each rank its shard */
  if (r->rank && !r->ctx.zero) return 0;
  if (run_stage_state(r, 0)) return -1;
  if (trn_ckpt_write(r->out, &r->st, r->p, r->cm, r->n_cm, r->err)) return -1;
  trn_path(r->good_ckpt, sizeof r->good_ckpt, "%s/ckpt-%lld", r->out, (long long)r->st.step);
  return 0;
}

/* Whether a checkpoint is due after `step`: every ckpt_every steps, and when ckpt_minutes
 * of wall clock have passed since the last one (or the run's start). Which steps get one
 * may depend on time; what a checkpoint holds never does. */
static int ckpt_due(const poc_train *T, int64_t step, double since_s) {
  if (T->ckpt_every > 0 && step % T->ckpt_every == 0) return 1;
  return T->ckpt_minutes > 0 && since_s >= 60.0 * T->ckpt_minutes;
}

/* Steps until --steps or the schedule's end: metrics, progress, evaluation, checkpoints. */
static int run_loop(trn_run *r) {
  const poc_program *p = r->p;
  const poc_train *T = r->T;
  int64_t stop = r->fl.steps > 0 && r->fl.steps < r->st.total ? r->fl.steps : r->st.total;
  int tty = isatty(2), log_every = T->log_every > 0 ? T->log_every : 1;
  const char *nl = tty ? "\n" : "";
  double t_start = now_s();
  int64_t first = r->st.step, last_ckpt = r->resuming ? r->st.step : -1;
  double t_ckpt = t_start, steps_s = 0;
  /* the collectives of the steps alone (not evaluation's or checkpoints') */
  trn_comm_counters cs = {0}, ca, cb;
  while (r->st.step < stop) {
    int64_t step = r->st.step + 1;
    trn_comm_set_step(step);
    run_step_out o;
    double ts = now_s();
    trn_comm_counters_get(&ca);
    int sr = run_step(r, step, &o);
    trn_comm_counters_get(&cb);
    steps_s += now_s() - ts;
    cs.seconds += cb.seconds - ca.seconds;
    cs.exposed_s += cb.exposed_s - ca.exposed_s;
    cs.reduced += cb.reduced - ca.reduced;
    cs.gathered += cb.gathered - ca.gathered;
    cs.wire += cb.wire - ca.wire;
    if (sr == STEP_NONFINITE) {
      fprintf(stderr, "%s%s: error: step %lld: %s. Nothing was written; ", nl, p->name,
              (long long)step, r->err);
      if (r->good_ckpt[0])
        fprintf(stderr, "the last good checkpoint is %s (resume with --resume %s).",
                r->good_ckpt, r->out);
      else
        fprintf(stderr, "no checkpoint was written before it.");
      fprintf(stderr, " Lower lr or the knobs%s\n", r->T->on_nonfinite == POC_NONFINITE_SKIP
                                                     ? ""
                                                     : ", or set on_nonfinite = skip in the "
                                                       "train block to skip such steps");
      return -2;
    }
    if (sr == STEP_ERROR) {
      fprintf(stderr, "%s%s: error: step %lld: %s\n", nl, p->name, (long long)step, r->err);
      return -1;
    }
    int logged = step % log_every == 0 || step == stop;
    int do_eval = p->eval_path && (step == stop || (T->eval_every > 0 && step % T->eval_every == 0));
    double eval_acc = -1;
    if ((logged || do_eval) && run_log(r, step, logged, do_eval, &o, &eval_acc)) {
      fprintf(stderr, "%s%s: error: %s\n", nl, p->name, r->err);
      return -1;
    }
    if (r->say && (tty || logged)) {
      double per = (now_s() - t_start) / (double)(step - first);
      trn_progress(step, stop, o.loss, o.tok_s, per * (double)(stop - step), tty);
    }
    if (eval_acc >= 0 && r->say)
      fprintf(stderr, "%s%s: eval/accuracy %.4f after step %lld\n", nl, p->name, eval_acc,
              (long long)step);
    if (ckpt_due(T, step, now_s() - t_ckpt) || step == stop) {
      t_ckpt = now_s();
      if (run_checkpoint(r)) {
        fprintf(stderr, "%s%s: error: checkpoint at step %lld: %s (earlier checkpoints are "
                "intact)\n", nl, p->name, (long long)step, r->err);
        return -1;
      }
      last_ckpt = step;
    }
  }
  if (tty && r->say) fputc('\n', stderr);
  if (last_ckpt != r->st.step && run_checkpoint(r)) {
    fprintf(stderr, "%s: error: checkpoint at step %lld: %s\n", p->name, (long long)r->st.step,
            r->err);
    return -1;
  }
  if (r->say && (r->ranks > 1 || getenv("POC_DP_STATS")) && r->st.step > first) {
    /* what data parallelism cost per step (bench/dp reads this line; POC_DP_STATS=1 asks
     * a single process for it too) */
    double n = (double)(r->st.step - first);
    fprintf(stderr, "%s: data parallel: per step %.0f bytes reduced, %.0f gathered, %.0f sent "
            "(ring), %.4f s of %.4f s in collectives, %.4f s of it exposed (rank 0, waiting "
            "included; ZeRO %s, overlap %s)\n", p->name, (double)cs.reduced / n,
            (double)cs.gathered / n, (double)cs.wire / n, cs.seconds / n, steps_s / n,
            cs.exposed_s / n, r->ctx.zero ? "on" : "off",
            r->ctx.overlap && r->ranks > 1 ? "on" : "off");
  }
  if (r->say && r->fl.no_checkpoint)
    fprintf(stderr, "%s: done: step %lld in %s (--no-checkpoint: no checkpoint written)\n",
            p->name, (long long)r->st.step, r->out);
  else if (r->say)
    fprintf(stderr, "%s: done: %s/ckpt-%lld\n", p->name, r->out, (long long)r->st.step);
  return 0;
}

/* The train block's precision is what the device computes in only where the device has
 * both: say so where it does not, rather than train in another precision silently. */
static void run_precision_note(const trn_run *r) {
  const poc_device *d = r->dev;
  int wants_bf16 = r->T->precision == POC_PREC_BF16, is_bf16 = d->act == POC_DT_BF16;
  if (wants_bf16 == is_bf16) return;
  fprintf(stderr, "%s: note: precision = %s, but the %s device computes in %s%s%s%s\n",
          r->p->name, wants_bf16 ? "bf16" : "fp32", d->name,
          is_bf16 ? "bf16 with fp32 master weights and optimizer state"
                  : d->act == POC_DT_F64 ? "fp64" : "fp32",
          is_bf16 ? "" : " (", is_bf16 ? "" : r->no_bf16[0] ? r->no_bf16 : "it has no bf16 path",
          is_bf16 ? "" : ")");
}

/* The device: --backend, where precision = bf16 asks the CPU for its bf16 device (cpu ->
 * cpu-bf16, auto -> auto-bf16); when there is none (no oneDNN in this build), the fp32
 * device and the reason, for the note. */
static int run_open_device(trn_run *r, poc_device_open_fn open_device) {
  const char *be = r->fl.backend, *name = be;
  if (r->T->precision == POC_PREC_BF16)
    name = !strcmp(be, "cpu") ? "cpu-bf16" : !strcmp(be, "auto") ? "auto-bf16" : be;
  r->dev = open_device(name, r->err);
  if (!r->dev && name != be) {
    snprintf(r->no_bf16, sizeof r->no_bf16, "%s", r->err);
    r->dev = open_device(be, r->err);
  }
  if (!r->dev) {
    fprintf(stderr, "%s: error: --backend %s: %s\n", r->p->name, be, r->err);
    return -1;
  }
  if (r->fl.profile) {
    /* before any model allocates, so the peak counts everything */
    r->prof.dev = r->dev;
    trn_prof_watch(r->dev, &r->prof);
  }
  if (r->say) {
    fprintf(stderr, "%s\n", r->dev->desc);
    if (r->ranks > 1)
      fprintf(stderr, "%s: data parallel: %s; the batch of %d is split over them\n", r->p->name,
              trn_comm_desc(), r->p->train.batch);
    run_precision_note(r);
  }
  return 0;
}

/* Data parallelism: every rank must run the same program on the same data with the same
 * flags, or their "sum" would be nonsense. Rank 0's program hash (name and .po source),
 * data and evaluation file hashes and command line go to every rank; each compares, and
 * the lowest rank that differs in each is named on every rank. 0 when all agree. */
static int run_agree(trn_run *r, const char *name0, int argc, char **argv) {
  enum { N_ITEMS = 4 };
  static const char *what[N_ITEMS] = {"program (its .po source)", "data file", "evaluation file",
                                      "command line (flags)"};
  uint64_t mine[N_ITEMS] = {trn_hash_str(trn_hash_str(0, name0), r->p->source ? r->p->source : ""),
                            r->file_hash[0], r->file_hash[1], trn_hash_str(0, "argv")};
  for (int i = 1; i < argc; i++) mine[3] = trn_hash_str(trn_hash(mine[3], "\0", 1), argv[i]);
  uint64_t root[N_ITEMS];
  memcpy(root, mine, sizeof root);
  if (trn_comm_bcast(root, sizeof root, 0, r->err)) return run_error(r, 1);
  int64_t who[N_ITEMS];
  for (int i = 0; i < N_ITEMS; i++) who[i] = mine[i] != root[i] ? r->rank : INT64_MAX;
  if (trn_comm_min_i64(who, N_ITEMS, r->err)) return run_error(r, 1);
  int bad = 0;
  for (int i = 0; i < N_ITEMS; i++) {
    if (who[i] == INT64_MAX) continue;
    bad = 1;
    if (r->rank == 0 || who[i] == r->rank)
      fprintf(stderr, "%s: error: the ranks disagree: rank %lld's %s differs from rank 0's "
              "(%016" PRIx64 " there); every rank must run the same binary, data and flags\n",
              r->p->name, (long long)who[i], what[i], root[i]);
  }
  r->agreed = bad;
  return bad ? -1 : 0;
}

/* How the ranks sum the gradient of a device whose memory is not the host's (--comm):
 * NCCL on the device, or MPI through host memory; said once by rank 0. The ranks agree on
 * the outcome (trn_nccl_open is collective), so a refusal stops them all alike. */
static int run_comm(trn_run *r) {
  /* the CPU's gradient is in host memory already: MPI sums it, and auto says nothing */
  if (!strcmp(r->fl.comm, "mpi") || (r->dev->host_memory && !strcmp(r->fl.comm, "auto")))
    return 0;
  char why[POC_ERR_LEN];
  int rc = trn_nccl_open(r->dev, why);
  if (rc == 0) {
    if (r->say)
      fprintf(stderr, "%s: data parallel: gradients summed on the device by %s\n", r->p->name,
              trn_nccl_desc());
    return 0;
  }
  if (rc == 1 && !strcmp(r->fl.comm, "auto")) {
    if (r->say)
      fprintf(stderr, "%s: data parallel: gradients summed by MPI through host memory, not "
              "NCCL: %s\n", r->p->name, why);
    return 0;
  }
  r->agreed = rc == 1;
  if (rc == -1 || r->say)
    fprintf(stderr, "%s: error: --comm %s: %s\n", r->p->name, r->fl.comm, why);
  return -1;
}

/*   flags → device → program check → inputs → run directory → models (resume) → hoist →
 *   eval@0 → loop → final checkpoint */
int poc_train_run(const poc_program *p, poc_device_open_fn open_device, int argc, char **argv) {
  trn_run *r = calloc(1, sizeof *r);
  if (!r) {
    fprintf(stderr, "%s: error: out of memory\n", p->name);
    return 1;
  }
  r->p = p;
  r->T = &p->train;
  r->lock_fd = -1;
  int rc;
  if (trn_comm_init(r->err)) {
    fprintf(stderr, "%s: error: %s\n", p->name, r->err);
    free(r);
    return 2;
  }
  r->rank = trn_comm_rank();
  r->ranks = trn_comm_size();
  r->say = r->rank == 0;
  const char *name0 = p->name;
  if (r->rank) {
    /* other ranks' messages name their rank: "dpo[rank 2]: error: ..." */
    r->named = *p;
    snprintf(r->rank_name, sizeof r->rank_name, "%s[rank %d]", p->name, r->rank);
    r->named.name = r->rank_name;
    r->p = p = &r->named;
  }
  trn_comm_set_name(p->name);
  rc = parse_flags(p, argc, argv, &r->fl);
  if (rc) {
    rc = rc == 1 ? 0 : 2;
    goto done;
  }
  rc = 2;
  if (check_program(p)) goto done;
  for (int k = 0; k < p->n_knobs; k++) r->knobs[k] = p->knobs[k].value;
  r->train = p->train;
  if (apply_sets(p, &r->fl, r->knobs, &r->train)) goto done;
  r->T = &r->train; /* the train block with --set train.NAME=value applied */
  /* after --set: train.precision picks the device */
  if (run_open_device(r, open_device)) goto done;
  if (run_inputs(r)) goto done;
  trn_comm_set_timeout(r->fl.collective_timeout);
  if (r->ranks > 1 && run_agree(r, name0, argc, argv)) goto done;
  if (r->ranks > 1 && run_comm(r)) goto done;
  /* rank 0 makes (or finds) the run directory and tells the others where it is */
  r->resuming = r->fl.resume != NULL;
  if (r->rank == 0 && run_directory(r)) goto done;
  if (r->ranks > 1 && trn_comm_bcast(r->out, sizeof r->out, 0, r->err)) {
    run_error(r, 1);
    goto done;
  }
  trn_path(r->metrics, sizeof r->metrics, "%s/metrics.jsonl", r->out);

  uint64_t prog_hash = trn_hash_str(trn_hash_str(0, name0), p->source ? p->source : "");
  r->st.seed = r->fl.have_seed ? r->fl.seed : r->T->seed;
  r->st.total = trn_total_steps(r->T, r->data.n);
  r->st.program_hash = prog_hash;
  r->st.n_files = 0;
  r->ctx.seed = r->st.seed;
  if ((rc = run_models(r)) || (r->resuming && (rc = run_resume(r, prog_hash)))) goto done;
  if (r->say && r->ranks > 1)
    fprintf(stderr, "%s: optimizer state (AdamW moments): %zu bytes per rank (%s; %zu "
            "unsharded)\n", p->name, r->state_bytes,
            r->ctx.zero ? "ZeRO-1, --zero 1: sharded over the ranks"
                        : "--zero 0: every rank holds all of it", r->state_full);
  /* the weights went into the master copies in place (poc_model_host_f32): the compute
     copies follow, where they are separate (the bf16 CPU device) */
  for (int m = 0; m < p->n_models; m++)
    if (p->models[m].trainable && !r->staged[m] &&
        poc_model_refresh_compute(r->ms.m[m], r->err)) {
      fprintf(stderr, "%s: error: model '%s': %s\n", p->name, p->models[m].name, r->err);
      rc = 1;
      goto done;
    }
  /* what a checkpoint records of the inputs (a resume keeps comparing with these) */
  r->st.n_files = 0;
  const char *files[2] = {p->data_path, p->eval_path};
  for (int i = 0; i < 2; i++)
    if (files[i] && strlen(files[i]) < sizeof r->st.file_name[0]) {
      trn_path(r->st.file_name[r->st.n_files], sizeof r->st.file_name[0], "%s", files[i]);
      r->st.file_hash[r->st.n_files++] = r->file_hash[i];
    }
  r->st.n_knobs = p->n_knobs;
  memcpy(r->st.knobs, r->knobs, sizeof(double) * (size_t)p->n_knobs);
  rc = 1;
  if ((r->rank == 0 && run_open_directory(r)) || run_hoist(r)) goto done;
  trn_order_init(&r->order, &r->data, r->st.seed, r->T->order == POC_ORDER_SEQUENTIAL);
  r->ex = malloc((size_t)r->T->batch * sizeof *r->ex);
  if (!r->order.perm || !r->ex) {
    fprintf(stderr, "%s: error: out of memory\n", p->name);
    goto done;
  }
  if (run_eval0(r)) goto done;
  if (r->fl.profile) r->ctx.prof = &r->prof; /* the steps' stages from here on */
  /* a run that diverges stops as bad input does: its settings (lr, knobs) are the cause */
  int loop_rc = run_loop(r);
  if (loop_rc) {
    rc = loop_rc == -2 ? 2 : 1;
    /* a non-finite step is seen by every rank alike (their numbers are the same) */
    r->agreed = loop_rc == -2;
    goto done;
  }
  rc = 0;
done:
  if (r->wb.on) {
    char err[POC_ERR_LEN];
    if (trn_wandb_exit(&r->wb, rc, err)) sink_failed(r, &r->wb.on, "wandb", err);
  }
  int agreed = r->agreed;
  run_free(r);
  free(r);
  /* a rank that fails ends them all (none waits in a collective for it); a clean end
   * is one every rank reaches, as is a failure they agreed on */
  if (rc && trn_comm_size() > 1 && !agreed) trn_comm_abort(rc);
  trn_comm_finalize();
  return rc;
}
