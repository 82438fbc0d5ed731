/* program.h — the experiment ABI: what generated code (plan.c + kernels.c) hands the
 * training runtime, and the entry point its main() calls.
 *
 *     int main(int argc, char **argv) { return poc_train_main(&poc_this_program, argc, argv); }
 *
 * A `poc_program` is constant data describing one .po file after lowering: its models, its
 * data set, every distinct model call the objective reads, the anchors sampled each step,
 * the knobs, the reports, the train block, and the objective kernel. The runtime does all
 * the model work (packing, forward, backward, generation, caching); the objective kernel
 * does only the arithmetic of the .po file, in double, on ragged per-token arrays.
 *
 * Everything here is plain data with static storage in generated code; nothing is freed.
 */
#ifndef POC_PROGRAM_H
#define POC_PROGRAM_H

#include <stddef.h>
#include <stdint.h>

/* ---- sequences and segments -------------------------------------------------------- */

/* Where a segment's tokens come from. PROMPT/CHOSEN/REJECTED/RESPONSE are the data
 * sequences (pairs: prompt, chosen, rejected; points: prompt, response); ANCHOR is the
 * sequence drawn by `sample(...)` this step (index into poc_program.anchors); LITERAL is a
 * token literal like `[3]`. POC_SRC_EXTRA + k is the k-th `sequence NAME` declaration
 * (poc_program.extra_seqs[k]), one more token array of each data line under key NAME. */
typedef enum poc_src {
  POC_SRC_PROMPT,
  POC_SRC_CHOSEN,
  POC_SRC_REJECTED,
  POC_SRC_RESPONSE,
  POC_SRC_ANCHOR,
  POC_SRC_LITERAL,
  POC_SRC_EXTRA
} poc_src;

/* At most this many `sequence NAME` declarations (dsl.h: PO_MAX_EXTRA_SEQS). */
#define POC_MAX_EXTRA_SEQS 4

/* A slice bound that is absent (`x[:k]`, `x[k:]`, or no slice at all). */
#define POC_OPEN INT32_MIN

/* One segment: source[lo:hi] with Python semantics on the sequence's length n: a negative
 * bound counts from the end (n + bound), bounds are clamped to [0, n], and lo >= hi gives
 * an empty segment. A LITERAL has no slice (both bounds POC_OPEN). */
typedef struct poc_segment {
  poc_src src;
  int anchor;                    /* POC_SRC_ANCHOR: index into poc_program.anchors */
  int32_t lo, hi;                /* POC_OPEN when absent */
  int n_lit;                     /* POC_SRC_LITERAL: the token ids */
  const int32_t *lit;
} poc_segment;

/* ---- declarations ------------------------------------------------------------------ */

/* `policy = model("dir")` (trainable, frozen_of = -1) or `ref = frozen(policy)` (not
 * trainable, frozen_of = the index of the model whose *initial* weights it snapshots; its
 * path is that model's path). The frozen copy stays at the initial weights on resume.
 *
 * `policy = lora(model("dir"), r=, alpha=, dropout=, targets=[...], adapter="DIR")`:
 * lora_r > 0, the base frozen and adapters trained (lora_targets: bit t for the target
 * POC_LT_t of pocrt.h, q k v o gate up down); lora_adapter, when set, is a PEFT adapter
 * folder that gives the starting adapters (its shapes and targets must match). A frozen
 * model of a LoRA model is its base with the adapters off, sharing the base weights. */
typedef struct poc_model_decl {
  const char *name;
  const char *path;
  int trainable;
  int frozen_of;
  int lora_r;
  double lora_alpha, lora_dropout;
  unsigned lora_targets;
  const char *lora_adapter;
  unsigned lora_set;             /* which of r (1), alpha (2), targets (4) the .po wrote */
} poc_model_decl;

typedef enum poc_data_kind { POC_DATA_PAIRS, POC_DATA_POINTS } poc_data_kind;

/* `field NAME` (per example: seq = -1) or `field NAME[seq]` (per token, aligned with data
 * sequence seq, one of POC_SRC_PROMPT..POC_SRC_RESPONSE or POC_SRC_EXTRA + k: one number
 * per token of that
 * sequence, truncated with it when max_len cuts the sequence). */
typedef struct poc_field_decl {
  const char *name;
  int seq;
} poc_field_decl;

/* One distinct model call `logp(M, target | context)` / `entropy(M, ...)` /
 * `logsumsq(M, ...)`. The runtime packs `context ++ target` per example and hands the
 * objective one log-prob (and/or entropy, log Σ p²) per target token. The context must come out non-empty for every example (the
 * first target token is predicted from the context's last position); the default context
 * of the language is the prompt, which lowering writes out as one PROMPT segment.
 *
 * trainable: the call's model is trainable and the objective wants its gradient (it writes
 *   dL/dlogp, dL/dentropy for it). A call of a trainable model whose gradient is stopped
 *   everywhere (sg) may say 0 here and is then computed without saving activations.
 * hoisted: the model is frozen and the call reads only data sequences and literals, so
 *   its values are the same every step: the runtime computes them once for the whole data
 *   set before training and caches them in OUT/ref_cache.bin.
 * reward: `reward_score(M, target | context)`: one number per example instead of one per
 *   target token, the score head of the sequence-classification model M on the last token of
 *   `context ++ target` (off[c] then advances by 1 per example, by 0 when the target is
 *   empty; logp[c] holds the scores and dlogp[c] their seeds). Every call of M is then a
 *   reward call: the runtime loads M as a classifier (runtime/pocrt.h), giving a causal
 *   LM folder a freshly initialised score head. */
typedef struct poc_call {
  const char *key;               /* probe key: "policy/chosen|prompt,sep,rejected,sep" */
  int model;                     /* index into poc_program.models */
  int want_logp, want_entropy;
  int trainable;
  int hoisted;
  int n_target;
  const poc_segment *target;
  int n_context;
  const poc_segment *context;
  int want_logsumsq;             /* log Σ_v π(v | ...)²: a statistic, never differentiated */
  int reward;                    /* a reward model's score: one per example, in the logp
                                    arrays (last: generated code names every field) */
} poc_call;

/* `a = sample(M, ctx, tokens=K, temperature=T, top_p=P)`: drawn once per step and example
 * from the current weights of model M, after `context`, K tokens at most (fewer when eos is
 * drawn; eos is kept). Example e's draw at optimizer step s uses the stream
 * poc_rng_derive(seed + k, s, e) for the anchor of index k (so the first anchor uses
 * exactly poc_rng_derive(seed, s, e)), independent of micro-batching. No gradient flows
 * through the draw; calls with POC_SRC_ANCHOR segments then score the drawn tokens. */
typedef struct poc_anchor {
  const char *name;
  int model;
  int n_context;
  const poc_segment *context;
  int tokens;
  double temperature, top_p;
} poc_anchor;

/* `param NAME = default`; --set NAME=value replaces it at run time. */
typedef struct poc_knob {
  const char *name;
  double value;
} poc_knob;

typedef enum poc_schedule { POC_SCHED_COSINE, POC_SCHED_LINEAR, POC_SCHED_CONSTANT } poc_schedule;
typedef enum poc_precision { POC_PREC_FP32, POC_PREC_BF16 } poc_precision;
/* What a step with a non-finite loss or gradient norm does: stop the run (exit 2, the
 * step not applied, no checkpoint written) or skip it (no update; counted). */
typedef enum poc_nonfinite { POC_NONFINITE_STOP, POC_NONFINITE_SKIP } poc_nonfinite;
/* The order examples are visited in: a fresh permutation each epoch, or the file's order
 * (KTO's KL completions are made for consecutive lines of one batch). */
typedef enum poc_order { POC_ORDER_SHUFFLE, POC_ORDER_SEQUENTIAL } poc_order;

/* The train block. Generated code fills every field: the key's value when the .po file
 * sets it, else the default given in brackets (POC_TRAIN_DEFAULTS below spells them). */
typedef struct poc_train {
  double lr;                     /* [5e-7] peak learning rate */
  poc_schedule schedule;         /* [cosine] */
  double warmup;                 /* [0.1] a fraction of all steps if < 1, else steps */
  int batch;                     /* [128] examples per optimizer step */
  int micro_batch;               /* [8] examples per forward/backward */
  int epochs;                    /* [1] */
  int max_len;                   /* [512] prompt + response, longer ones are cut */
  double clip;                   /* [1.0] global gradient-norm clip, 0: off */
  poc_precision precision;       /* [bf16] GPU weights/activations; the CPU runs fp32 */
  uint64_t seed;                 /* [1] */
  double weight_decay;           /* [0.0] */
  double adam_beta1;             /* [0.9] */
  double adam_beta2;             /* [0.999] */
  double adam_eps;               /* [1e-8] */
  int log_every;                 /* [1] */
  int ckpt_every;                /* [500] steps between checkpoints; 0: no step trigger */
  int eval_every;                /* [0] 0: only before and after training */
  int eval_tokens;               /* [0] 0: the answer's length + 2 */
  int steps;                     /* [0] 0: epochs over the data decide */
  poc_nonfinite on_nonfinite;    /* [stop] */
  double ckpt_minutes;           /* [10] wall-clock minutes between checkpoints; 0: off */
  poc_order order;               /* [shuffle] */
} poc_train;

#define POC_TRAIN_DEFAULTS                                                               \
  {5e-7, POC_SCHED_COSINE, 0.1, 128, 8, 1, 512, 1.0, POC_PREC_BF16, 1, 0.0, 0.9, 0.999, \
   1e-8, 1, 500, 0, 0, 0, POC_NONFINITE_STOP, 10.0, POC_ORDER_SHUFFLE}

/* ---- the objective kernel ---------------------------------------------------------- */

/* Arguments of one objective evaluation over B examples (a micro-batch when the program is
 * separable, the whole optimizer step otherwise). Indices: b in [0, B) example, c in
 * [0, n_calls) call, f in [0, n_fields) field, r in [0, n_reports) report.
 *
 * Ragged per-token arrays: call c's values for example b are
 *     logp[c][off[c][b] .. off[c][b+1])
 * with off[c][0] = 0 and off[c][b+1] - off[c][b] = |target of call c for example b|
 * (after slicing and truncation; possibly 0). Likewise per-token field f of example b is
 *     field[f][field_off[f][b] .. field_off[f][b+1])
 * and a per-example field f is field[f][b] (field_off[f] is NULL).
 *
 * Inputs:
 *   logp[c][i]     log π(y_i | context, y_<i) of target token i, when want_logp (else NULL)
 *   entropy[c][i]  H_i = -Σ_v π(v | ...) log π(v | ...) of the distribution that predicts
 *                  target token i, when want_entropy (else NULL)
 *   logsumsq[c][i] log Σ_v π(v | ...)² of that same distribution, when want_logsumsq (else
 *                  NULL); it has no seed: no gradient flows into it
 *   example[b]     the example's index in the data file (line order, from 0): pick(y, n)
 *                  draws its mask from poc_rng_derive(pick_seed, pick_index, example[b])
 *                  (see poc_pick), so a mask depends on neither batching nor micro-batching
 *   pick_seed      this optimizer step's seed for pick draws (same for every micro-batch)
 *   knobs[k]       the current value of poc_program.knobs[k]
 *   B_norm         examples in the whole optimizer step: the step's loss is
 *                  L = (1/B_norm) Σ_{examples e of the step} loss_e
 *
 * Outputs (the kernel writes every element):
 *   loss[b]               loss_e of example b (per example, before the 1/B_norm)
 *   report[r * B + b]     report r for example b; a batch-level report writes its batch
 *                         value for every b. The runtime averages over the step's examples.
 *   dlogp[c][i]           ∂L/∂logp[c][i] of the step loss L above — so it carries the
 *                         1/B_norm — for every call with trainable set (NULL otherwise);
 *                         0 where the gradient is stopped
 *   dentropy[c][i]        ∂L/∂entropy[c][i] likewise (NULL unless trainable and
 *                         want_entropy)
 *
 * Batch reductions (batch_mean, batch_std, batch_sum) reduce over the B examples given;
 * a program that has them must set separable = 0, so that B is the whole step. Returns 0,
 * or -1 with a message in err (POC_ERR_LEN bytes) for a failure such as a non-finite
 * loss that the kernel chooses to report. */
typedef struct poc_objective_args {
  int B;
  int B_norm;
  const int64_t *example;
  uint64_t pick_seed;
  const double *knobs;
  const int32_t *const *off;     /* [n_calls] */
  const double *const *logp;     /* [n_calls] */
  const double *const *entropy;  /* [n_calls] */
  const int32_t *const *field_off; /* [n_fields] */
  const double *const *field;    /* [n_fields] */
  double *loss;                  /* [B] */
  double *report;                /* [n_reports × B] */
  double *const *dlogp;          /* [n_calls] */
  double *const *dentropy;       /* [n_calls] */
  char *err;
  const double *const *logsumsq; /* [n_calls] */
} poc_objective_args;

typedef int (*poc_objective_fn)(const poc_objective_args *a);

/* ---- compiled GPU kernels ------------------------------------------------------------ */

/* What `poc build --arch sm_80,sm_90` embeds: the CUDA kernels compiled ahead of time for
 * one set of model dimensions (they are compile-time constants of the kernels), as a cubin
 * per architecture asked for plus PTX for compute_XY of the lowest. source_hash is the
 * FNV-1a hash of the CUDA source the blobs were compiled from: the runtime instantiates
 * the same source for a model and uses an image only when the hashes agree, so a binary
 * can never run kernels from other templates than the ones it links. */
typedef struct poc_kernel_blob {
  const char *arch;              /* "sm_90" (cubin) or "compute_80" (PTX) */
  int is_ptx;
  const unsigned char *data;     /* PTX is NUL-terminated; size counts the NUL */
  size_t size;
} poc_kernel_blob;

typedef struct poc_kernel_image {
  int H, F, V, nh, nkv, hd;      /* the dimensions, as poc_dims (device.h) */
  double eps;
  uint64_t source_hash;
  int n_blobs;
  const poc_kernel_blob *blobs;
} poc_kernel_image;

/* ---- the program ------------------------------------------------------------------- */

typedef struct poc_program {
  const char *name;              /* the .po file's base name: "dpo" */
  const char *source;            /* the .po text, copied into the run directory */
  int n_models;
  const poc_model_decl *models;
  poc_data_kind data_kind;
  const char *data_path;
  int n_fields;
  const poc_field_decl *fields;
  int n_extra_seqs;              /* `sequence NAME` declarations: data keys, in order */
  const char *const *extra_seqs;
  const char *eval_path;         /* prompts("...") or NULL */
  int n_calls;
  const poc_call *calls;
  int n_anchors;
  const poc_anchor *anchors;
  int n_knobs;
  const poc_knob *knobs;
  int n_reports;
  const char *const *reports;    /* names as written: "rewards/chosen" */
  poc_train train;
  int separable;                 /* 1: no batch reductions; one objective per micro-batch */
  poc_objective_fn objective;
  int n_kernel_images;           /* poc build --arch: one per distinct model config, else 0 */
  const poc_kernel_image *kernel_images;
} poc_program;

/* The training binary: BIN [--backend cpu|cuda] [--steps N] [--out DIR] [--resume DIR]
 * [--set k=v] [--seed N] [--unfused-head] [--kernel-images] [--help]. Returns the process exit status:
 * 0 done, 1 runtime failure (I/O, a device), 2 bad input or usage, and a run that diverged
 * (a non-finite step: its settings are the cause). */
int poc_train_main(const poc_program *prog, int argc, char **argv);
/* The first statement of a generated main: re-executes the program when the BLAS chose
 * GEMM kernels weaker than the processor allows (runtime/cpu/cpu_features.h). */
void poc_cpu_start(int argc, char **argv);
/* What poc_train_main (runtime/devices.c, the registry) calls with the registry's device
 * opener: the runtime core itself knows no device. */
typedef struct poc_device poc_device;
typedef poc_device *(*poc_device_open_fn)(const char *name, char *err);
int poc_train_run(const poc_program *prog, poc_device_open_fn open_device, int argc,
                  char **argv);

/* pick(y, n): a 0/1 mask over len positions with min(n, len) ones (n <= 0: none), drawn
 * by partial Fisher–Yates from poc_rng_derive(seed, pick_index, example): positions
 * idx = 0..len-1; for i < n: j = i + floor(u·(len − i)) with u = poc_rng_uniform, swap
 * idx[i], idx[j], mask[idx[i]] = 1. pick_index is the pick call's index in source order. */
void poc_pick(uint64_t seed, int pick_index, int64_t example, int len, int n,
              unsigned char *mask);

#endif
