/* train_internal.h — the training runtime's insides, shared by its files (prefix trn_):
 *
 *   data.c          the data set: JSONL parsing, validation, truncation, visiting order
 *   evalset.c       the prompts(...) evaluation set
 *   optim.c         learning-rate schedules, transformers' own (AdamW and the norm are the
 *                   model's, model.c)
 *   ckpt.c          checkpoints: atomic write, discovery, load; state.json
 *   metrics.c       metrics.jsonl and the progress line
 *   metrics_pb.c    protocol-buffer encoding and the CRCs the logging sinks need
 *   metrics_tb.c    --log tensorboard: OUT/tensorboard/events.out.tfevents.*
 *   metrics_wandb.c --log wandb: OUT/wandb/offline-run-<time>-<id>/run-<id>.wandb
 *   train_pack.c    segments → packed sequences per model; the objective's buffers
 *   train_step.c    one optimizer step's gradient (anchors, forward, objective, backward)
 *                   and the hoisted reference values, on whatever device the models use
 *   train_cache.c   OUT/ref_cache.bin, the hoisted values on disk
 *   train_prof.c    --profile: the step's time per stage, the device memory's peak
 *   train.c         poc_train_run: flags, setup, the loop, evaluation
 *
 * Not a public header: generated code sees program.h only.
 */
#ifndef POC_TRAIN_INTERNAL_H
#define POC_TRAIN_INTERNAL_H

#include <stdint.h>
#include <stdio.h>

#include <cjson/cJSON.h>

#include "pocrt.h"
#include "program.h"

#define TRN_MAX_SEQ (3 + POC_MAX_EXTRA_SEQS) /* prompt, two responses, `sequence` ones */
#define TRN_MAX_FIELDS 32
#define TRN_MAX_MODELS 8

/* Messages and paths through vsnprintf: a path longer than the buffer is cut (and
 * trn_path says so with -1) rather than overflowing. */
void trn_errf(char *err, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
int trn_path(char *buf, size_t n, const char *fmt, ...) __attribute__((format(printf, 3, 4)));
/* A message "PATH: what" without its "PATH: " (for lines that name the path already). */
const char *trn_after_path(const char *msg, const char *path);

/* ---- data.c ---------------------------------------------------------------------- */

/* Sequence slots: 0 prompt, 1 chosen (pairs) / response (points), 2 rejected, then the
 * `sequence NAME` declarations in order (from slot 3 for pairs, 2 for points). Example
 * e's slot q is tok[seq_off[e*TRN_MAX_SEQ+q] .. + seq_len[e*TRN_MAX_SEQ+q]), already
 * truncated to max_len. */
typedef struct trn_data {
  char *path;
  poc_data_kind kind;
  int64_t n;
  int n_seq;                     /* slots in use: the data kind's, then the extra ones */
  int32_t *tok;
  int64_t n_tok;
  int64_t *seq_off;
  int32_t *seq_len;
  int n_fields;
  double *ex_field;              /* [n × n_fields]: per-example field values (0 for others) */
  double *tok_field;             /* per-token field values, */
  int64_t *tf_off;               /* [n × n_fields] where example e's values of field f start */
  int64_t n_truncated;           /* examples cut to max_len */
} trn_data;

/* Loads and validates the whole file; every bad line is reported on stderr as
 * "file:line: error: ..." (errors after the first 20 only counted). -1 on any error. */
int trn_data_load(trn_data *d, const poc_program *prog, const char *path, int vocab,
                  int max_len);
void trn_data_free(trn_data *d);
int trn_seq_slot(poc_data_kind kind, int src);   /* -1 when the data kind has no such seq */
const char *trn_src_name(int src);

typedef struct trn_order {
  int64_t n;
  uint64_t seed;
  int64_t epoch;                 /* whose permutation perm holds; -1 none yet */
  int sequential;                /* train.order = sequential: perm is the identity */
  int64_t *perm;
} trn_order;

/* sequential: the file's order every epoch (no permutation drawn) */
void trn_order_init(trn_order *o, const trn_data *d, uint64_t seed, int sequential);
void trn_order_free(trn_order *o);
/* The example at stream position pos: epoch pos / n, rank pos % n of that epoch's
 * permutation (the identity with train.order = sequential). */
int64_t trn_order_at(trn_order *o, int64_t pos);

/* One JSONL line, strictly: a single JSON value with nothing but white space after it,
 * and no object in it with the same key twice (JSON parsers disagree on which copy wins,
 * so a duplicate is an ambiguity, not a choice to make silently). NULL with the reason in
 * why ("malformed JSON near column 9", "trailing content after the JSON value at column
 * 14", "duplicate key 'prompt'"). */
struct cJSON;
struct cJSON *trn_json_line(const char *text, char *why, size_t why_len);

/* FNV-1a 64; h = 0 starts a new hash. */
uint64_t trn_hash(uint64_t h, const void *p, size_t n);
uint64_t trn_hash_str(uint64_t h, const char *s);

/* ---- evalset.c -------------------------------------------------------------------- */

typedef struct trn_evalset {
  int n;
  int32_t *tok;
  int64_t *p_off, *a_off;        /* [n] */
  int32_t *p_len, *a_len;        /* [n] */
} trn_evalset;

int trn_evalset_load(trn_evalset *e, const char *path, int vocab, int eos);
void trn_evalset_free(trn_evalset *e);

/* One evaluation's generations: for prompt i, gen[off[i] .. off[i] + len[i]) (what the
 * model produced, a final eos included) and whether it matched the answer. */
typedef struct trn_evalgen {
  int32_t *gen;
  int64_t *off;                  /* [n] */
  int32_t *len;                  /* [n] */
  unsigned char *correct;        /* [n] */
  int64_t n_gen, cap;
} trn_evalgen;

void trn_evalgen_free(trn_evalgen *g);
/* OUT/eval/step-<step>.jsonl, atomically: a line per prompt with its ids ("prompt",
 * "generated", "answer"), "correct", and with a tokenizer the same decoded
 * ("prompt_text", "generated_text", "answer_text"; special tokens left out). The same
 * step's evaluation after a resume rewrites it with the same content. */
int trn_eval_samples_write(const char *out, int64_t step, const trn_evalset *e,
                           const trn_evalgen *g, const poc_tok *tok, char *err);

/* ---- optim.c ---------------------------------------------------------------------- */

/* Warmup length in steps, as transformers' Trainer counts it: ceil(warmup · total) when
 * warmup < 1, else warmup's whole part. */
int64_t trn_warmup_steps(const poc_train *t, int64_t total);
/* The learning rate of optimizer step `step` (1-based) of `total`. */
double trn_lr(const poc_train *t, int64_t step, int64_t total);

/* ---- metrics.c -------------------------------------------------------------------- */

/* Keeps the lines of PATH whose "step" is <= max_step (a resumed run rewrites what came
 * after its checkpoint), atomically; a torn line (no newline, or not JSON) goes too.
 * max_step < 0 empties the file. A missing file is fine. */
int trn_metrics_truncate(const char *path, int64_t max_step, char *err);
/* Appends one JSON line with a single write(), so a line is whole or absent. */
int trn_metrics_append(const char *path, const char *line, char *err);
/* "1,234" */
void trn_fmt_thousands(char *buf, size_t n, double x);
/* Progress on stderr: carriage-return updates on a terminal, else a line each call. */
void trn_progress(int64_t step, int64_t total, double loss, double tok_s, double secs_left,
                  int tty);

/* ---- metrics_pb.c ----------------------------------------------------------------- */

/* A growing buffer a protocol-buffers message is written into; oom sticks. */
typedef struct trn_pb {
  unsigned char *b;
  size_t n, cap;
  int oom;
} trn_pb;
void trn_pb_raw(trn_pb *p, const void *d, size_t n);
void trn_pb_varint(trn_pb *p, uint64_t v);
void trn_pb_u64(trn_pb *p, int field, uint64_t v);   /* wire type 0 */
void trn_pb_f64(trn_pb *p, int field, double v);     /* wire type 1 */
void trn_pb_f32(trn_pb *p, int field, float v);      /* wire type 5 */
void trn_pb_bytes(trn_pb *p, int field, const void *d, size_t n);
void trn_pb_str(trn_pb *p, int field, const char *s);
void trn_pb_msg(trn_pb *p, int field, const trn_pb *m);
void trn_pb_free(trn_pb *p);
/* One field of a message: v for wire types 0, 1 and 5 (the raw bits), d/len for 2. */
typedef struct {
  int field, wire;
  uint64_t v;
  const unsigned char *d;
  size_t len;
} trn_pb_field;
/* The field at *pos, advancing it: 1 read, 0 end of message, -1 malformed. */
int trn_pb_next(const unsigned char *b, size_t n, size_t *pos, trn_pb_field *f);
uint32_t trn_crc32c(const void *d, size_t n);                   /* Castagnoli */
uint32_t trn_crc32(uint32_t crc, const void *d, size_t n);      /* IEEE, zlib's */
/* Appends n bytes with one write(); a short write is cut back off. */
int trn_append_bytes(const char *path, const void *d, size_t n, char *err);
/* The whole file into a malloc'ed buffer; -1 when it cannot be read. */
int trn_read_all(const char *path, unsigned char **out, size_t *n);

/* ---- metrics_tb.c, metrics_wandb.c: --log sinks ------------------------------------ *
 *
 * Views of metrics.jsonl in other tools' formats. Each metric line goes to metrics.jsonl
 * first and to the sinks after; a sink that fails is switched off with a warning and the
 * run goes on, so a sink can never cost a metric line. Opening a sink of a resumed run
 * cuts its file back to the checkpoint's step as metrics.jsonl is cut; a sink that has
 * no file yet (a resumed run that turns --log on) is filled from metrics.jsonl. */

enum { TRN_LOG_TENSORBOARD = 1, TRN_LOG_WANDB = 2 };

typedef struct trn_tb {
  int on;
  char path[4200];
} trn_tb;
/* keep_step < 0: a fresh file; else the existing one cut to steps <= keep_step.
 * Returns 1 when the file was created (nothing of the run in it yet), 0, or -1. */
int trn_tb_open(trn_tb *t, const char *out, int64_t keep_step, char *err);
/* One metrics line (a JSON object with "step") as one Event of scalar summaries. */
int trn_tb_line(trn_tb *t, const cJSON *line, char *err);

typedef struct trn_wandb {
  int on;
  char run_id[16];
  char dir[4200], path[4300];
  int64_t num;                   /* records written: the next Record.num is num + 1 */
  uint64_t off;                  /* the file's length: where the next record starts */
  double t0;                     /* this process's start, for _runtime */
} trn_wandb;
/* As trn_tb_open; `config` (an object: knobs and train settings) goes into the run
 * record, `name` is the run's display name. */
int trn_wandb_open(trn_wandb *w, const char *out, int64_t keep_step, const char *name,
                   const cJSON *config, char *err);
int trn_wandb_line(trn_wandb *w, const cJSON *line, char *err);
/* The exit record: the run ended (0) or failed (its exit status). */
int trn_wandb_exit(trn_wandb *w, int exit_code, char *err);

/* ---- ckpt.c ----------------------------------------------------------------------- */

typedef struct trn_state {
  int64_t step;                  /* optimizer steps done */
  int64_t total;                 /* steps the schedule spans */
  int64_t pos;                   /* data stream position (examples consumed) */
  double epoch;                  /* pos / examples in the data set */
  uint64_t seed;
  uint64_t program_hash;
  int n_knobs;
  double knobs[64];
  int64_t skipped;               /* steps skipped as non-finite (on_nonfinite = skip) */
  int n_files;                   /* input files and their content hashes at write time: */
  char file_name[2][1024];       /* the data set, the evaluation set */
  uint64_t file_hash[2];
} trn_state;

/* One trainable model as a checkpoint holds it. A LoRA model (lora set) is its adapters:
 * lay is the adapter layout, w the adapters, and the folder holds them in PEFT's format
 * (adapter_config.json naming `base` as base_model_name_or_path, adapter_model.safetensors)
 * instead of config.json + model.safetensors. */
typedef struct trn_ckmodel {
  const char *name;
  const poc_layout *lay;
  float *w, *m, *v;
  const poc_lora_cfg *lora;
  const char *base;
  /* m and v hold [lo, hi) of the trainable vector (ZeRO: this rank's shard; else [0, n));
   * shards: the R of a ZeRO run, whose checkpoints hold the moments as one file per
   * rank (each writing its own), 0 for one optimizer.safetensors written by rank 0 */
  size_t lo, hi;
  int shards, rank;
} trn_ckmodel;

/* Writes OUT/ckpt-<step>/ through OUT/.tmp-ckpt-<step>/ (fsync, rename). The only
 * trainable model goes at the folder's top (config.json, model.safetensors,
 * optimizer.safetensors); with several, each gets a subfolder by name. */
int trn_ckpt_write(const char *out, const trn_state *st, const poc_program *prog,
                   const trn_ckmodel *cm, int n, char *err);
/* The newest complete OUT/ckpt-<step> (state.json, optimizer.safetensors and the model:
 * config.json + model.safetensors, or a LoRA run's adapter_config.json +
 * adapter_model.safetensors): its step, or -1 when there is none. */
int64_t trn_ckpt_latest(const char *out, char *dir, size_t dir_len);
/* The steps of every complete checkpoint, newest first, up to max; their count. */
int trn_ckpt_list(const char *out, int64_t *steps, int max);
/* Loads OUT/ckpt-<step> = dir, validating everything it reads: state.json's fields (type,
 * range, the step matching the folder's name, the program's knobs exactly), the tensors'
 * shapes, and every weight and moment finite (second moments >= 0). A message naming the
 * file and what is wrong otherwise; the arrays may then hold part of the checkpoint. */
int trn_ckpt_load(const char *dir, int64_t step, trn_state *st, const poc_program *prog,
                  const trn_ckmodel *cm, int n, char *err);

/* ---- train_cache.c: hoisted call values ------------------------------------------- */

/* Call c's values for example e (global index) are val[c][off[c][e] .. off[c][e+1]); only
 * hoisted calls have arrays (logp, and entropy and log Σ p² when wanted). */
typedef struct trn_cache {
  int n_calls;
  int64_t n_examples;
  int64_t **off;                 /* [n_calls] → [n+1] or NULL */
  double **logp, **ent, **lss;   /* [n_calls] */
} trn_cache;

void trn_cache_free(trn_cache *k);
int trn_cache_alloc(trn_cache *k, const poc_program *prog, int64_t n);
int trn_cache_save(const trn_cache *k, const char *path, uint64_t key, char *err);
/* 1 loaded, 0 absent or stale (other key, unreadable), -1 on an I/O error. */
int trn_cache_load(trn_cache *k, const poc_program *prog, const char *path, uint64_t key);

/* ---- train_pack.c ----------------------------------------------------------------- */

/* The tokens of the anchors drawn this step: anchor a of step-local example b is
 * tok[a][b][0 .. len[a][b]). */
typedef struct trn_anchors {
  int n_anchors, B;
  int32_t **tok[8];
  int *len[8];
} trn_anchors;

/* ---- train_prof.c ----------------------------------------------------------------- */

/* The stages a profiled step's time is split into (metrics keys in trn_prof_names):
 * forward (the decoder layers of the policy's and reference's forwards, and sampled
 * anchors), head (the loss head, forward and backward: the final norm, the logits, the
 * log-softmax and their gradients), objective (the objective over the log-probs and its
 * seeds), backward (the layers' backward and the gradient sum), optimizer (gradient norm,
 * AdamW, the weights' check), comm (seconds inside collectives, whichever stage waited),
 * other (the rest: packing micro-batches, zeroing gradients). */
enum { TRN_PROF_FORWARD, TRN_PROF_HEAD, TRN_PROF_OBJECTIVE, TRN_PROF_BACKWARD,
       TRN_PROF_OPTIMIZER, TRN_PROF_COMM, TRN_PROF_OTHER, TRN_PROF_N };
extern const char *const trn_prof_names[TRN_PROF_N];

typedef struct trn_prof {
  poc_device *dev;               /* synchronised at each boundary */
  double t, comm;                /* the last boundary: wall clock, collectives' seconds */
  double pend;                   /* seconds outside the head since the last mark */
  int in_head;                   /* the model is in its loss head (device's stage marker) */
  int active;                    /* between trn_prof_begin and trn_prof_end */
  double s[TRN_PROF_N];          /* this step's seconds per stage */
} trn_prof;

/* All do nothing on NULL (profiling off). begin zeroes the stages and starts the clock;
 * mark books the time since the previous mark to `stage` (its loss-head part to head, its
 * collectives' share to comm); end stops watching the head until the next begin. */
void trn_prof_begin(trn_prof *p);
void trn_prof_mark(trn_prof *p, int stage);
void trn_prof_end(trn_prof *p);
/* Counts the bytes held through d's allocator from now on (the peak in bytes), and tells
 * the loss head's kernels from the rest for p's head stage. */
void trn_prof_watch(poc_device *d, trn_prof *p);
size_t trn_prof_device_peak(void);

/* Everything fixed for a run that the step needs. */
typedef struct trn_ctx {
  const poc_program *prog;
  const trn_data *data;
  const poc_layout *lay[TRN_MAX_MODELS];
  int eos[TRN_MAX_MODELS];
  const trn_cache *cache;        /* hoisted values, NULL when there are none */
  const double *knobs;
  uint64_t seed;
  int micro_batch;
  int unfused;
  int max_tokens[TRN_MAX_MODELS];/* workspace each model instance was made with */
  uint64_t frozen_hash[TRN_MAX_MODELS]; /* frozen models' initial weights, for the cache key */
  size_t n_train[TRN_MAX_MODELS];/* a trainable model's trainable vector (its gradient) */
  /* the run's double gradient accumulators (train_step.c, gradsum), n_train[m] each, zero
   * between steps; NULL where the step makes its own (one micro-batch, device memory) */
  double *gacc[TRN_MAX_MODELS];
  /* ZeRO stage 1 (R > 1, --zero 1): each trainable model holds AdamW state for its shard
   * (poc_model_shard); the step reduce-scatters the gradient (gacc padded to R shards) */
  int zero;
  /* overlap (--overlap 1, the default): the gradient's reductions start during the last
   * micro-batch's backward, bucket by bucket (train_step.c) */
  int overlap;
  trn_prof *prof;                /* --profile's stage clock; NULL when off */
} trn_ctx;

/* One model's packed forward. */
typedef struct trn_pack {
  int n_seq, n_tok, n_tgt, cap_seq, cap_tgt, cap_tok;
  int32_t *tokens, *seq_start, *tgt_start;
  int entropy;                   /* some call in it wants entropy */
  int logsumsq;                  /* some call in it wants log Σ p² */
  int save;                      /* some call in it is trainable */
} trn_pack;

/* Which calls a pack holds: the live ones (computed each step) or the hoisted ones. */
enum { TRN_LIVE = 0, TRN_HOISTED = 1 };

/* A micro-batch laid out: its packs, and where call c's values of example b sit in its
 * model's pack output: base[c] + off[c][b] .. base[c] + off[c][b+1]. */
typedef struct trn_mb {
  int B, cap_B, n_calls;
  trn_pack pk[TRN_MAX_MODELS];
  int32_t **off;                 /* [n_calls] → [B+1] */
  int32_t *base;                 /* [n_calls] */
} trn_mb;

void trn_mb_free(trn_mb *mb);
/* Lays out examples ex[0..B) (anchors of step-local examples anc_b0 .. anc_b0+B), for the
 * calls of kind `which`. A context that comes out empty or a sequence longer than the
 * model's positions is an error naming the call. */
int trn_mb_build(trn_mb *mb, const trn_ctx *c, const int64_t *ex, int B,
                 const trn_anchors *anc, int anc_b0, int which, char *err);
/* Resolves the tokens of a segment list for one example into out (NULL: count only). */
int trn_segs_resolve(const trn_ctx *c, const poc_segment *s, int n, int64_t e,
                     const trn_anchors *anc, int b, int32_t *out);
/* The largest packed length one micro-batch of `mb` examples can have for model m, with
 * anchors at their full token count; also the longest single sequence in *longest. */
int trn_max_pack_tokens(const trn_ctx *c, int m, int mb, int *longest);

/* The objective's inputs for up to B examples, appended micro-batch by micro-batch. */
typedef struct trn_objbuf {
  int B, cap_B, n_calls, n_fields, n_reports;
  int64_t *example;
  int32_t **off;                 /* [n_calls] → [B+1] */
  double **logp, **ent, **lss, **dlogp, **dent;
  size_t *cap_tok;               /* [n_calls] */
  int32_t **foff;                /* [n_fields] → [B+1] for per-token fields */
  double **fval;
  size_t *fcap;
  double *loss, *report;
} trn_objbuf;

int trn_objbuf_init(trn_objbuf *o, const poc_program *prog, int cap_B);
void trn_objbuf_free(trn_objbuf *o);
void trn_objbuf_reset(trn_objbuf *o);
/* Appends example b0.. of a laid-out micro-batch: per-call values from its model's pack
 * outputs (`logp[m]`, `ent[m]`, `lss[m]`, in double; the last two NULL where the pack has
 * none) or the cache for hoisted calls, and the fields. */
int trn_objbuf_append(trn_objbuf *o, const trn_ctx *c, const trn_mb *mb, const int64_t *ex,
                      const double *const *logp, const double *const *ent,
                      const double *const *lss);
/* Data parallelism: fills g (capacity >= B) with the whole step's B examples ex[0..B)
 * from every rank's loc, whose example b is the step's example pos[b]. Collective. */
int trn_objbuf_gather(trn_objbuf *g, const trn_ctx *c, const trn_objbuf *loc,
                      const int64_t *ex, int B, const int *pos, char *err);
/* Calls the objective on the buffer's B examples. */
int trn_objbuf_eval(trn_objbuf *o, const trn_ctx *c, int B_norm, uint64_t pick_seed,
                    char *err);

/* The step's seed for pick draws. */
uint64_t trn_pick_seed(uint64_t seed, int64_t step);

/* ---- train_step.c ---------------------------------------------------------------- */

typedef struct trn_stepout {
  double loss_sum;               /* Σ loss_e over the step's examples */
  double report_sum[64];         /* Σ report_r,e */
  int64_t tokens;                /* packed tokens through the trainable models' forwards:
                                    what tokens/s counts, so a frozen model's forward (or
                                    its absence, hoisted) shows as time, not as tokens */
  /* this rank's share (tokens is summed over ranks): its tokens, of which the rows
   * through the loss head (targets), and Σ over its sequences of L(L+1)/2 */
  int64_t tokens_here, head_rows;
  double attn_pairs;
} trn_stepout;

typedef struct trn_models { poc_model *m[TRN_MAX_MODELS]; } trn_models;

/* One optimizer step's gradient over examples ex[0..B) (B = the step's batch) at step
 * `step` (1-based): draws anchors, runs the forwards, the objective (per micro-batch when
 * separable, once for the step otherwise) and the backwards. Gradients are added to the
 * trainable models' grad arrays (the caller zeroes them). */
int trn_step_grad(const trn_ctx *c, trn_models *ms, const int64_t *ex, int B, int64_t step,
                  trn_stepout *o, char *err);
/* Fills the cache's hoisted calls for every example of the data set. */
int trn_hoist(const trn_ctx *c, trn_models *ms, trn_cache *k, char *err);

/* ---- train.c (exposed for tests) -------------------------------------------------- */

/* Steps the schedule spans: epochs · n / batch (at least 1), capped by train.steps. */
int64_t trn_total_steps(const poc_train *t, int64_t n_examples);

#endif
