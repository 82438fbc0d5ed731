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
 * Nothing depends on wall time, so on the CPU k steps + resume gives the bytes an unbroken
 * run gives.
 */
#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include <cjson/cJSON.h>

#include "backend.h"
#include "cpu/cpu_kernels.h"
#include "st.h"
#include "train_internal.h"

#define PATHN 4096

typedef struct {
  const char *backend, *out, *resume;
  int64_t steps;
  int have_seed;
  uint64_t seed;
  int unfused;
  int n_set;
  char **set;
} trn_flags;

static void usage(const poc_program *p, FILE *f) {
  fprintf(f,
          "usage: %s [--backend cpu|cuda] [--steps N] [--out DIR] [--resume DIR]\n"
          "       %*s [--set knob=value ...] [--seed N] [--unfused-head]\n"
          "Trains the experiment built from %s.po.\n"
          "  --backend B     cpu (default) or cuda\n"
          "  --steps N       stop after optimizer step N (the schedule keeps its length)\n"
          "  --out DIR       run directory (default runs/%s-<timestamp>)\n"
          "  --resume DIR    continue the run in DIR from its newest complete checkpoint\n"
          "  --set k=v       set a knob (param) without rebuilding\n"
          "  --seed N        seed of every random draw (overrides the train block)\n"
          "  --unfused-head  compute the loss head the textbook way (full logits)\n",
          p->name, (int)strlen(p->name), "", p->name, p->name);
  if (p->n_knobs) {
    fprintf(f, "knobs:");
    for (int i = 0; i < p->n_knobs; i++) fprintf(f, " %s=%g", p->knobs[i].name, p->knobs[i].value);
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
  f->backend = "cpu";
  f->steps = -1;
  f->set = calloc((size_t)argc + 1, sizeof *f->set);
  if (!f->set) return 2;
  for (int i = 1; i < argc; i++) {
    const char *a = argv[i];
    const char *val = NULL;
    int needs = !strcmp(a, "--backend") || !strcmp(a, "--steps") || !strcmp(a, "--out") ||
                !strcmp(a, "--resume") || !strcmp(a, "--set") || !strcmp(a, "--seed");
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
      if (strcmp(val, "cpu") && strcmp(val, "cuda")) {
        fprintf(stderr, "%s: error: unknown backend '%s' (cpu or cuda)\n", p->name, val);
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
    } else if (!strcmp(a, "--out")) {
      f->out = val;
    } else if (!strcmp(a, "--resume")) {
      f->resume = val;
    } else if (!strcmp(a, "--set")) {
      f->set[f->n_set++] = (char *)val;
    } else if (!strcmp(a, "--unfused-head")) {
      f->unfused = 1;
    } else {
      fprintf(stderr, "%s: error: unknown argument '%s'\n", p->name, a);
      usage(p, stderr);
      return 2;
    }
  }
  if (!strcmp(f->backend, "cuda")) {
    /* the backend says why it cannot open (no CUDA compiled in, no driver, no device);
       when it can, the loop itself still runs on the CPU model only */
    char err[POC_ERR_LEN];
    poc_backend *be = poc_backend_open("cuda", err);
    if (!be) {
      fprintf(stderr, "%s: error: --backend cuda: %s\n", p->name, err);
    } else {
      fprintf(stderr, "%s: error: --backend cuda: the training loop does not drive the CUDA "
              "backend yet (%s); use --backend cpu\n", p->name, be->device);
      poc_backend_close(be);
    }
    return 2;
  }
  if (f->resume && f->out && strcmp(f->resume, f->out)) {
    fprintf(stderr, "%s: error: --resume %s continues in its own directory; drop --out %s\n",
            p->name, f->resume, f->out);
    return 2;
  }
  return 0;
}

static int apply_sets(const poc_program *p, const trn_flags *f, double *knobs) {
  for (int i = 0; i < f->n_set; i++) {
    const char *s = f->set[i], *eq = strchr(s, '=');
    if (!eq || eq == s) {
      fprintf(stderr, "%s: error: --set wants knob=value, got '%s'\n", p->name, s);
      return -1;
    }
    int k = -1;
    for (int j = 0; j < p->n_knobs; j++)
      if (strlen(p->knobs[j].name) == (size_t)(eq - s) && !strncmp(p->knobs[j].name, s, (size_t)(eq - s)))
        k = j;
    if (k < 0) {
      fprintf(stderr, "%s: error: --set: unknown knob '%.*s'; ", p->name, (int)(eq - s), s);
      if (!p->n_knobs) fprintf(stderr, "this program has no knobs\n");
      else {
        fprintf(stderr, "the knobs are:");
        for (int j = 0; j < p->n_knobs; j++) fprintf(stderr, " %s", p->knobs[j].name);
        fputc('\n', stderr);
      }
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
  FILE *f = fopen(path, "rb");
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

/* Greedy exact match on the evaluation set: the tokens generated before eos must equal
 * the answer. Up to eval_tokens new tokens, or the answer's length + 2 when unset. */
static int evaluate(poc_model_f32 *m, const trn_evalset *e, int eos, int eval_tokens,
                    double *acc, char *err) {
  int hits = 0, cap = 0;
  int32_t *out = NULL;
  for (int i = 0; i < e->n; i++) {
    int max_new = eval_tokens > 0 ? eval_tokens : e->a_len[i] + 2;
    if (max_new + 1 > cap) {
      cap = max_new + 1;
      int32_t *q = realloc(out, (size_t)cap * sizeof *q);
      if (!q) {
        free(out);
        trn_errf(err, "out of memory");
        return -1;
      }
      out = q;
    }
    poc_rng r = poc_rng_derive(0, 0, (uint64_t)i);
    int n = poc_generate_f32(m, e->tok + e->p_off[i], e->p_len[i], max_new, 0.0, 1.0, eos, &r,
                             out, err);
    if (n < 0) {
      free(out);
      return -1;
    }
    int k = 0;
    while (k < n && out[k] != eos) k++;
    if (k == e->a_len[i] &&
        !memcmp(out, e->tok + e->a_off[i], (size_t)k * sizeof(int32_t)))
      hits++;
  }
  free(out);
  *acc = e->n ? (double)hits / e->n : 0;
  return 0;
}

typedef struct {
  poc_layout lay[TRN_MAX_MODELS];
  int lay_ok[TRN_MAX_MODELS];
  float *w[TRN_MAX_MODELS], *g[TRN_MAX_MODELS], *m[TRN_MAX_MODELS], *v[TRN_MAX_MODELS];
  trn_models_f32 ms;
} run_models;

static void models_free(run_models *r) {
  for (int i = 0; i < TRN_MAX_MODELS; i++) {
    if (r->ms.m[i]) poc_model_free_f32(r->ms.m[i]);
    free(r->w[i]);
    free(r->g[i]);
    free(r->m[i]);
    free(r->v[i]);
    if (r->lay_ok[i]) poc_layout_free(&r->lay[i]);
  }
}

static int metric_line(const char *path, cJSON *o, char *err) {
  char *s = cJSON_PrintUnformatted(o);
  int rc = s ? trn_metrics_append(path, s, err) : -1;
  if (!s) trn_errf(err, "out of memory");
  cJSON_free(s);
  return rc;
}

int poc_train_main(const poc_program *p, int argc, char **argv) {
  char err[POC_ERR_LEN] = "";
  trn_flags fl;
  int rc = parse_flags(p, argc, argv, &fl);
  if (rc) {
    free(fl.set);
    return rc == 1 ? 0 : 2;
  }
  trn_data data = {0};
  trn_evalset ev = {0};
  trn_cache cache = {0};
  trn_order order = {0};
  run_models R;
  memset(&R, 0, sizeof R);
  int64_t *ex = NULL;
  double knobs[64];
  char out[PATHN], path[PATHN], ckdir[PATHN];
  rc = 2;

  if (check_program(p)) goto done;
  poc_cpu_report(NULL); /* the run's first line: device, BLAS, kernels, threads, features */
  const poc_train *T = &p->train;
  for (int k = 0; k < p->n_knobs; k++) knobs[k] = p->knobs[k].value;
  if (apply_sets(p, &fl, knobs)) goto done;

  /* configs and layouts (a frozen model shares its source's architecture) */
  int vocab = 1 << 30, policy = -1;
  for (int m = 0; m < p->n_models; m++) {
    const poc_model_decl *d = &p->models[m];
    const char *dir = d->frozen_of >= 0 ? p->models[d->frozen_of].path : d->path;
    poc_config cfg;
    if (poc_config_load(dir, &cfg, err) || poc_layout_init(&R.lay[m], &cfg, err)) {
      fprintf(stderr, "%s: error: model '%s': %s\n", p->name, d->name, err);
      goto done;
    }
    R.lay_ok[m] = 1;
    if (cfg.vocab_size < vocab) vocab = cfg.vocab_size;
    if (d->trainable && policy < 0) policy = m;
  }
  if (trn_data_load(&data, p, p->data_path, vocab, T->max_len)) goto done;
  if (data.n_truncated)
    fprintf(stderr, "%s: warning: %lld of %lld examples are longer than max_len = %d and were "
            "cut (responses at the end)\n", p->data_path, (long long)data.n_truncated,
            (long long)data.n, T->max_len);
  int eos = R.lay[policy].cfg.eos_token_id;
  if (p->eval_path && trn_evalset_load(&ev, p->eval_path, vocab, eos)) goto done;

  /* the run directory */
  int resuming = fl.resume != NULL;
  if (resuming) {
    trn_path(out, sizeof out, "%s", fl.resume);
  } else if (fl.out) {
    trn_path(out, sizeof out, "%s", fl.out);
  } else {
    time_t t = time(NULL);
    struct tm tm;
    localtime_r(&t, &tm);
    char ts[32];
    strftime(ts, sizeof ts, "%Y%m%d-%H%M%S", &tm);
    trn_path(out, sizeof out, "runs/%s-%s", p->name, ts);
  }
  char metrics[PATHN + 32];
  trn_path(metrics, sizeof metrics, "%s/metrics.jsonl", out);
  int64_t ck_step = -1;
  if (resuming) {
    ck_step = trn_ckpt_latest(out, ckdir, sizeof ckdir);
    if (ck_step < 0) {
      fprintf(stderr, "%s: error: --resume %s: no complete checkpoint (ckpt-<step>/) there\n",
              p->name, out);
      goto done;
    }
  } else {
    struct stat sb;
    if (stat(metrics, &sb) == 0 || trn_ckpt_latest(out, ckdir, sizeof ckdir) >= 0) {
      fprintf(stderr, "%s: error: %s already holds a run; continue it with --resume %s or "
              "choose another --out\n", p->name, out, out);
      goto done;
    }
  }

  /* weights: trainable models from the checkpoint when resuming, frozen ones always from
   * their source's original folder (the snapshot is of the initial weights) */
  rc = 1;
  for (int m = 0; m < p->n_models; m++) {
    const poc_model_decl *d = &p->models[m];
    size_t n = R.lay[m].n_params;
    R.w[m] = malloc(n * sizeof(float));
    if (d->trainable) {
      R.g[m] = calloc(n, sizeof(float));
      R.m[m] = calloc(n, sizeof(float));
      R.v[m] = calloc(n, sizeof(float));
    }
    if (!R.w[m] || (d->trainable && (!R.g[m] || !R.m[m] || !R.v[m]))) {
      fprintf(stderr, "%s: error: out of memory for model '%s' (%zu parameters)\n", p->name,
              d->name, n);
      goto done;
    }
    const char *dir = d->frozen_of >= 0 ? p->models[d->frozen_of].path : d->path;
    if (poc_weights_load_f32(dir, &R.lay[m], R.w[m], err)) {
      fprintf(stderr, "%s: error: model '%s': %s\n", p->name, d->name, err);
      rc = 2;
      goto done;
    }
  }
  trn_ckmodel cm[TRN_MAX_MODELS];
  int n_cm = 0;
  for (int m = 0; m < p->n_models; m++)
    if (p->models[m].trainable)
      cm[n_cm++] = (trn_ckmodel){p->models[m].name, &R.lay[m], R.w[m], R.m[m], R.v[m]};

  uint64_t prog_hash = trn_hash_str(trn_hash_str(0, p->name), p->source ? p->source : "");
  trn_state st = {0};
  st.seed = fl.have_seed ? fl.seed : T->seed;
  st.total = trn_total_steps(T, data.n);
  st.program_hash = prog_hash;
  if (resuming) {
    if (trn_ckpt_load(ckdir, &st, p, cm, n_cm, err)) {
      fprintf(stderr, "%s: error: %s\n", p->name, err);
      goto done;
    }
    if (st.program_hash != prog_hash) {
      fprintf(stderr, "%s: error: %s was made by a different program (its .po source "
              "differs); resume it with the binary that started it\n", p->name, out);
      rc = 2;
      goto done;
    }
    for (int k = 0; k < p->n_knobs; k++) knobs[k] = st.knobs[k];
    if (fl.n_set) {
      fprintf(stderr, "%s: note: --set changes knobs of a resumed run\n", p->name);
      if (apply_sets(p, &fl, knobs)) goto done;
    }
    if (fl.have_seed && fl.seed != st.seed) {
      fprintf(stderr, "%s: note: --seed %llu replaces the run's seed %llu from step %lld on\n",
              p->name, (unsigned long long)fl.seed, (unsigned long long)st.seed,
              (long long)st.step);
      st.seed = fl.seed;
    }
    fprintf(stderr, "%s: resuming %s at step %lld\n", p->name, ckdir, (long long)st.step);
  }
  st.n_knobs = p->n_knobs;
  memcpy(st.knobs, knobs, sizeof(double) * (size_t)p->n_knobs);

  if (mkdir_p(out)) {
    fprintf(stderr, "%s: error: %s: cannot create the run directory: %s\n", p->name, out,
            strerror(errno));
    goto done;
  }
  trn_path(path, sizeof path, "%s/%s.po", out, p->name);
  if (p->source && st_write_text_atomic(path, p->source, err)) {
    fprintf(stderr, "%s: error: %s\n", p->name, err);
    goto done;
  }
  if (resuming && trn_metrics_truncate(metrics, st.step, err)) {
    fprintf(stderr, "%s: error: %s\n", p->name, err);
    goto done;
  }

  /* model instances, their workspaces sized for the largest micro-batch */
  trn_ctx ctx = {.prog = p, .data = &data, .knobs = knobs, .seed = st.seed,
                 .micro_batch = T->micro_batch < T->batch ? T->micro_batch : T->batch,
                 .unfused = fl.unfused};
  for (int m = 0; m < p->n_models; m++) {
    ctx.lay[m] = &R.lay[m];
    ctx.eos[m] = R.lay[m].cfg.eos_token_id;
  }
  for (int m = 0; m < p->n_models; m++) {
    int longest;
    int mt = trn_max_pack_tokens(&ctx, m, ctx.micro_batch, &longest);
    int maxpos = R.lay[m].cfg.max_position_embeddings;
    if (maxpos > 0 && longest > maxpos) {
      fprintf(stderr, "%s: error: model '%s' would see a %d-token sequence (context + target) "
              "but has %d positions; lower max_len (now %d)\n", p->name, p->models[m].name,
              longest, maxpos, T->max_len);
      rc = 2;
      goto done;
    }
    ctx.max_tokens[m] = mt > 0 ? mt : 1;
    R.ms.m[m] = poc_model_new_f32(&R.lay[m], R.w[m], R.g[m], ctx.max_tokens[m]);
    if (!R.ms.m[m]) {
      fprintf(stderr, "%s: error: model '%s': cannot allocate a %d-token workspace\n", p->name,
              p->models[m].name, ctx.max_tokens[m]);
      goto done;
    }
  }

  /* hoisted calls: computed once, cached on disk, keyed by what they depend on */
  int n_hoisted = 0;
  for (int k = 0; k < p->n_calls; k++) n_hoisted += p->calls[k].hoisted;
  if (n_hoisted) {
    unsigned char *bytes;
    size_t nb;
    uint64_t key = trn_hash_str(0, "ref_cache v1");
    if (read_file(p->data_path, &bytes, &nb)) {
      fprintf(stderr, "%s: error: %s: cannot read\n", p->name, p->data_path);
      goto done;
    }
    key = trn_hash(key, bytes, nb);
    free(bytes);
    key = trn_hash(key, &T->max_len, sizeof T->max_len);
    for (int k = 0; k < p->n_calls; k++) {
      if (!p->calls[k].hoisted) continue;
      int m = p->calls[k].model;
      key = trn_hash_str(key, p->calls[k].key);
      key = trn_hash(key, &p->calls[k].want_entropy, sizeof(int));
      key = trn_hash(key, R.w[m], R.lay[m].n_params * sizeof(float));
    }
    if (trn_cache_alloc(&cache, p, data.n)) {
      fprintf(stderr, "%s: error: out of memory for the reference cache\n", p->name);
      goto done;
    }
    trn_path(path, sizeof path, "%s/ref_cache.bin", out);
    if (trn_cache_load(&cache, p, path, key) != 1) {
      double t0 = now_s();
      if (trn_hoist_f32(&ctx, &R.ms, &cache, err) || trn_cache_save(&cache, path, key, err)) {
        fprintf(stderr, "%s: error: %s\n", p->name, err);
        goto done;
      }
      fprintf(stderr, "%s: reference values of %d call%s over %lld examples cached in %.1fs\n",
              p->name, n_hoisted, n_hoisted > 1 ? "s" : "", (long long)data.n, now_s() - t0);
    }
    ctx.cache = &cache;
  }

  trn_order_init(&order, &data, st.seed);
  ex = malloc((size_t)T->batch * sizeof *ex);
  if (!order.perm || !ex) {
    fprintf(stderr, "%s: error: out of memory\n", p->name);
    goto done;
  }
  int64_t stop = fl.steps > 0 && fl.steps < st.total ? fl.steps : st.total;
  poc_model_f32 *pm = R.ms.m[policy];
  if (p->eval_path && !resuming) {
    double acc;
    if (evaluate(pm, &ev, eos, T->eval_tokens, &acc, err)) {
      fprintf(stderr, "%s: error: evaluation: %s\n", p->name, err);
      goto done;
    }
    cJSON *o = cJSON_CreateObject();
    cJSON_AddNumberToObject(o, "step", 0);
    cJSON_AddNumberToObject(o, "epoch", 0);
    cJSON_AddNumberToObject(o, "eval/accuracy", acc);
    int bad = metric_line(metrics, o, err);
    cJSON_Delete(o);
    if (bad) {
      fprintf(stderr, "%s: error: %s\n", p->name, err);
      goto done;
    }
    fprintf(stderr, "%s: eval/accuracy %.4f before training (%d prompts)\n", p->name, acc, ev.n);
  }

  int tty = isatty(2);
  int log_every = T->log_every > 0 ? T->log_every : 1;
  double t_start = now_s();
  int64_t first = st.step;
  int64_t last_ckpt = resuming ? st.step : -1;
  while (st.step < stop) {
    double t0 = now_s();
    int64_t step = st.step + 1;
    for (int b = 0; b < T->batch; b++) ex[b] = trn_order_at(&order, st.pos + b);
    for (int m = 0; m < p->n_models; m++)
      if (R.g[m]) memset(R.g[m], 0, R.lay[m].n_params * sizeof(float));
    trn_stepout so;
    if (trn_step_grad_f32(&ctx, &R.ms, ex, T->batch, step, &so, err)) {
      fprintf(stderr, "%s%s: error: step %lld: %s\n", tty ? "\n" : "", p->name,
              (long long)step, err);
      goto done;
    }
    double loss = so.loss_sum / T->batch;
    if (!isfinite(loss)) {
      fprintf(stderr, "%s%s: error: step %lld: the loss is %g; stopping (the last checkpoint "
              "is kept)\n", tty ? "\n" : "", p->name, (long long)step, loss);
      goto done;
    }
    double sq = 0;
    for (int m = 0; m < p->n_models; m++)
      if (R.g[m]) sq += trn_sq_norm(R.g[m], R.lay[m].n_params);
    double gnorm = sqrt(sq), gscale = 1;
    if (T->clip > 0 && gnorm > T->clip) gscale = T->clip / (gnorm + 1e-6);
    double lr = trn_lr(T, step, st.total);
    for (int m = 0; m < p->n_models; m++)
      if (R.g[m]) trn_adamw(&R.lay[m], R.w[m], R.g[m], R.m[m], R.v[m], step, lr, gscale, T);
    st.step = step;
    st.pos += T->batch;
    st.epoch = (double)st.pos / (double)data.n;
    double dt = now_s() - t0, tok_s = dt > 0 ? (double)so.tokens / dt : 0;

    int logged = step % log_every == 0 || step == stop;
    double eval_acc = -1;
    int do_eval = p->eval_path && (step == stop || (T->eval_every > 0 && step % T->eval_every == 0));
    if (logged || do_eval) {
      cJSON *o = cJSON_CreateObject();
      cJSON_AddNumberToObject(o, "step", (double)step);
      cJSON_AddNumberToObject(o, "epoch", st.epoch);
      if (logged) {
        cJSON_AddNumberToObject(o, "loss", loss);
        cJSON_AddNumberToObject(o, "lr", lr);
        cJSON_AddNumberToObject(o, "grad_norm", gnorm);
        cJSON_AddNumberToObject(o, "tokens_per_s", tok_s);
        for (int r = 0; r < p->n_reports; r++)
          cJSON_AddNumberToObject(o, p->reports[r], so.report_sum[r] / T->batch);
      }
      if (do_eval) {
        double acc;
        if (evaluate(pm, &ev, eos, T->eval_tokens, &acc, err)) {
          cJSON_Delete(o);
          fprintf(stderr, "%s: error: evaluation: %s\n", p->name, err);
          goto done;
        }
        cJSON_AddNumberToObject(o, "eval/accuracy", acc);
        eval_acc = acc;
      }
      int bad = metric_line(metrics, o, err);
      cJSON_Delete(o);
      if (bad) {
        fprintf(stderr, "%s: error: %s\n", p->name, err);
        goto done;
      }
    }
    if (tty || logged) {
      double per = (now_s() - t_start) / (double)(step - first);
      trn_progress(step, stop, loss, tok_s, per * (double)(stop - step), tty);
    }
    if (eval_acc >= 0)
      fprintf(stderr, "%s%s: eval/accuracy %.4f after step %lld\n", tty ? "\n" : "", p->name,
              eval_acc, (long long)step);
    if ((T->ckpt_every > 0 && step % T->ckpt_every == 0) || step == stop) {
      if (trn_ckpt_write(out, &st, p, cm, n_cm, err)) {
        fprintf(stderr, "%s%s: error: checkpoint at step %lld: %s (earlier checkpoints are "
                "intact)\n", tty ? "\n" : "", p->name, (long long)step, err);
        goto done;
      }
      last_ckpt = step;
    }
  }
  if (tty) fputc('\n', stderr);
  if (last_ckpt != st.step && trn_ckpt_write(out, &st, p, cm, n_cm, err)) {
    fprintf(stderr, "%s: error: checkpoint at step %lld: %s\n", p->name, (long long)st.step, err);
    goto done;
  }
  fprintf(stderr, "%s: done: %s/ckpt-%lld\n", p->name, out, (long long)st.step);
  rc = 0;
done:
  free(ex);
  trn_order_free(&order);
  trn_cache_free(&cache);
  trn_evalset_free(&ev);
  trn_data_free(&data);
  models_free(&R);
  free(fl.set);
  return rc;
}
