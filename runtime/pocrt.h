/* pocrt.h — libpocrt, the runtime every training binary links against.
 *
 * The model is a Llama-family transformer (llama, mistral, qwen2) whose parameters live
 * in one flat array laid out by poc_layout: each Hugging Face tensor name has an offset,
 * so the optimizer, gradient clipping, checkpoints and data parallelism all see one
 * vector. Model code exists in two precisions, float (training) and double (gradient
 * checks); a function `poc_xxx_f32` has a twin `poc_xxx_f64` with `float` replaced by
 * `double` (see fp.h for how one source builds both).
 *
 * Conventions: functions that can fail return 0 on success and -1 on failure, with a
 * message that names the file and what is wrong written into `err` (POC_ERR_LEN bytes).
 */
#ifndef POC_RT_H
#define POC_RT_H

#include <stddef.h>
#include <stdint.h>

#define POC_ERR_LEN 512

/* ---- model configuration (HF config.json) ---------------------------------------- */

typedef struct poc_config {
  char model_type[16];           /* "llama", "mistral", "qwen2" */
  int vocab_size;
  int hidden_size;
  int intermediate_size;
  int num_hidden_layers;
  int num_attention_heads;
  int num_key_value_heads;       /* GQA: heads share K/V in groups of heads/kv_heads */
  int head_dim;                  /* hidden_size / heads unless config.json says */
  int max_position_embeddings;
  double rope_theta;
  double rms_norm_eps;
  int rope_llama3;               /* rope_scaling.rope_type == "llama3" */
  double rope_factor, rope_low_freq_factor, rope_high_freq_factor;
  int rope_original_max_position;
  int tie_word_embeddings;
  int attention_bias;            /* q/k/v biases (qwen2 always, llama when set) */
  int o_proj_bias;               /* an o_proj bias too: llama's attention_bias adds all
                                    four, qwen2's q/k/v bias leaves o_proj without */
  int sliding_window;            /* mistral; 0 = none. Longer sequences are refused. */
  int bos_token_id, eos_token_id;/* -1 when absent */
  char torch_dtype[16];          /* "bfloat16", "float16", "float32" */
  /* A sequence-classification model (architectures: *ForSequenceClassification): the
   * number of labels of its `score` head, [num_labels × hidden] with no bias, in place of
   * lm_head; 0 for a causal LM. poc's reward head reads one label (num_labels = 1). */
  int num_labels;
  int pad_token_id;              /* -1 when absent; saved for transformers' classifier,
                                    which scores the last token that is not padding */
} poc_config;

/* Reads DIR/config.json. An unsupported model type, activation, rope scaling type or
 * inconsistent shape is an error naming the field and its value. */
int poc_config_load(const char *model_dir, poc_config *cfg, char *err);
/* Writes DIR/config.json that HF transformers loads as the same architecture. */
int poc_config_save(const char *model_dir, const poc_config *cfg, char *err);

/* ---- tokenizer (HF tokenizer.json), decoding only (tok.c) ------------------------ */

/* A model folder's tokenizer.json read for turning ids into text: the model's pieces
 * (BPE, Unigram or WordLevel vocabulary), the added tokens and which are special, and
 * the decoder tokenizer.json declares (ByteLevel; Metaspace; a Sequence of Replace,
 * ByteFallback, Fuse, Strip). Encoding text is not done here (see poc generate). */
typedef struct poc_tok poc_tok;

/* Opens DIR/tokenizer.json: 1 with *out set, 0 when the folder has none (*out NULL), -1
 * on an error (unreadable, not a tokenizer, or a token id at or past vocab_size, which
 * names both files). vocab_size <= 0 skips that check. A decoder poc does not know
 * still opens: poc_tok_unsupported then says why it cannot decode (else NULL). */
int poc_tok_open(const char *model_dir, int vocab_size, poc_tok **out, char *err);
const char *poc_tok_unsupported(const poc_tok *t);
void poc_tok_free(poc_tok *t);
/* The text of ids as the tokenizers library decodes them, malloc'd and valid UTF-8 (a
 * cut multi-byte sequence reads as U+FFFD); ids with no token are left out, as are the
 * special added tokens when skip_special. The text may hold a zero byte (a decoded
 * U+0000): *len (when len is not NULL) is its length. NULL when out of memory or the
 * decoder is unsupported. */
char *poc_tok_decode(const poc_tok *t, const int32_t *ids, int n, int skip_special, size_t *len);
/* s[0..n) as a JSON string literal (quotes, \uXXXX for control bytes and zero), malloc'd,
 * for cJSON_CreateRaw: cJSON itself stops a string at a zero byte. */
char *poc_tok_json(const char *s, size_t n);

/* ---- parameter layout ------------------------------------------------------------ */

typedef struct poc_tensor_info {
  char name[96];                 /* HF name: "model.layers.3.self_attn.q_proj.weight" */
  int ndim;                      /* 1 or 2 */
  int64_t shape[2];              /* HF order: [out, in] for linear weights */
  size_t offset;                 /* into the flat parameter array, in elements */
  size_t numel;
} poc_tensor_info;

typedef struct poc_layout {
  poc_config cfg;
  int n_tensors;
  poc_tensor_info *tensors;      /* fixed order: embed, per layer (input_layernorm, q,k,v,o
                                    (+ biases), post_attention_layernorm, gate, up, down),
                                    final norm, lm_head unless tied */
  size_t n_params;
} poc_layout;

int poc_layout_init(poc_layout *lay, const poc_config *cfg, char *err);

/* Where each model's tensors sit in the flat array, looked up once by name so every
 * backend reads the same layout. POC_NO_TENSOR marks an absent bias. */
#define POC_NO_TENSOR ((size_t)-1)
typedef struct poc_layer_offsets {
  size_t ln1, wq, bq, wk, bk, wv, bv, wo, bo, ln2, wg, wu, wd;
} poc_layer_offsets;
typedef struct poc_model_offsets {
  size_t embed, norm, head;      /* head == embed when the embeddings are tied (and for a
                                    classifier, which has no lm_head) */
  int n_layers;
  poc_layer_offsets *layers;     /* [n_layers], malloc'd: free() it */
  size_t score;                  /* score.weight of a classifier; POC_NO_TENSOR otherwise */
} poc_model_offsets;
int poc_layout_offsets(const poc_layout *lay, poc_model_offsets *o, char *err);

/* RoPE inverse frequencies inv_freq[head_dim/2], with Llama-3 scaling when the config asks
 * (the same rule on every backend). */
void poc_rope_inv_freq(const poc_config *c, double *inv_freq);
void poc_layout_free(poc_layout *lay);
const poc_tensor_info *poc_layout_find(const poc_layout *lay, const char *name);

/* ---- safetensors ----------------------------------------------------------------- */

/* Loads DIR's weights (model.safetensors, or the shards named by
 * model.safetensors.index.json) in bf16/fp16/fp32 into the flat array w[lay->n_params].
 * A missing tensor, a wrong shape, an unknown dtype, a truncated file or offsets that
 * overlap or run past the end are errors. */
int poc_weights_load_f32(const char *model_dir, const poc_layout *lay, float *w, char *err);
int poc_weights_load_f64(const char *model_dir, const poc_layout *lay, double *w, char *err);
/* Writes DIR/config.json and DIR/model.safetensors (dtype "F32" or "BF16"), through a
 * temporary name and a rename. */
int poc_model_save_f32(const char *model_dir, const poc_layout *lay, const float *w,
                       const char *dtype, char *err);

/* ---- reward models (runtime/reward.c) ------------------------------------------- */
/* A reward model's config from DIR: a sequence-classification folder as it is, or a causal
 * LM whose lm_head gives way to a fresh one-label score head (*fresh = 1). */
int poc_reward_config(const char *model_dir, poc_config *cfg, int *fresh, char *err);
/* Its weights into w[lay->n_params] for the classifier layout lay: a classifier folder's
 * own; for a causal LM (fresh) the transformer's tensors, which are a prefix of both
 * layouts, and score.weight drawn from N(0, 0.02²) (transformers' initializer_range
 * default) by the stream poc_rng_derive(seed, 0x73636f7265, 0). */
int poc_reward_load_f32(const char *model_dir, const poc_layout *lay, int fresh, uint64_t seed,
                        float *w, char *err);

/* ---- packed batches -------------------------------------------------------------- */
/* Many sequences, each `context ++ target`, concatenated with no padding. Attention is
 * causal within a sequence only; positions restart at 0 for each sequence. Log-probs are
 * produced for target tokens only: target token j of sequence s is predicted from the
 * hidden state of the position before it, so every context must be non-empty. */
typedef struct poc_pack {
  int n_seq;
  int n_tok;                     /* total tokens, contexts included */
  const int32_t *tokens;         /* [n_tok] */
  const int32_t *seq_start;      /* [n_seq + 1]: sequence s is tokens[seq_start[s] .. seq_start[s+1]) */
  const int32_t *tgt_start;      /* [n_seq]: its target is tokens[tgt_start[s] .. seq_start[s+1]) */
} poc_pack;

/* Number of target tokens in a pack (the length of every per-token output). Outputs are
 * in pack order: sequence 0's targets, then sequence 1's, ... */
int poc_pack_targets(const poc_pack *p);

/* ---- the model ------------------------------------------------------------------- */
/* One transformer (runtime/model.c) on any device (device.h: "cpu" float, "cpu64" double
 * for gradient checks, "cuda" bf16 with fp32 master weights). A model owns its weights on
 * the device, a gradient accumulator and AdamW moments when trainable, and a workspace for
 * packs of up to max_tokens tokens. Host arrays crossing this interface are double
 * (log-probs, entropies and their seeds) or the caller's element type (weights, state). */

typedef enum poc_dtype { POC_DT_F32, POC_DT_F64, POC_DT_BF16, POC_DT_I32 } poc_dtype;
typedef struct poc_device poc_device;
typedef struct poc_model poc_model;

enum {
  POC_FWD_SAVE = 1,     /* keep activations for a backward pass */
  POC_FWD_ENTROPY = 2,  /* also produce per-token entropy of the next-token distribution */
  POC_FWD_UNFUSED = 4,  /* textbook head: full N×V logits, log-softmax, gather */
  POC_FWD_LOGSUMSQ = 8  /* also produce per-token log Σ_v p(v)² of the next-token
                           distribution (a statistic: no backward through it) */
};

/* A model from host weights w[lay->n_params] of type wt (copied; NULL leaves them zero,
 * for a caller that fills them with poc_model_set or through poc_model_host_f32 — on the
 * CPU, loading straight into the model's own buffer). The layout must outlive the model. NULL with a message (out of device memory names the buffer and its size). */
poc_model *poc_model_new(poc_device *d, const poc_layout *lay, const void *w, poc_dtype wt,
                         int trainable, int max_tokens, char *err);
void poc_model_free(poc_model *m);
const poc_layout *poc_model_layout(const poc_model *m);
poc_device *poc_model_device(const poc_model *m);

/* Per-token log-probs (and entropies when asked) of every target token of the pack, in
 * pack order, into logp/entropy [poc_model_outputs(m, p)].
 *
 * A sequence-classification model (cfg.num_labels == 1) has no per-token outputs: it
 * writes one score per pack sequence instead, r_s = norm(h_last)·score.weightᵀ with h_last
 * the final hidden state of the sequence's last token (transformers' last non-pad token of
 * an unpadded row), into logp[s]; backward takes dL/dr_s in dlogp[s]. POC_FWD_ENTROPY and
 * POC_FWD_UNFUSED do not apply to it. */
int poc_model_outputs(const poc_model *m, const poc_pack *p);
int poc_model_forward(poc_model *m, const poc_pack *p, int flags, double *logp,
                      double *entropy, char *err);
/* The same with every per-token output the head can give, each [poc_pack_targets(p)]:
 * logp always; entropy with POC_FWD_ENTROPY; logsumsq (log Σ_v π(v | ...)²) with
 * POC_FWD_LOGSUMSQ. poc_model_forward is this with logsumsq NULL. */
typedef struct poc_fwd_out {
  double *logp, *entropy, *logsumsq;
} poc_fwd_out;
int poc_model_forward_out(poc_model *m, const poc_pack *p, int flags, const poc_fwd_out *o,
                          char *err);
/* Backward from per-target seeds dL/dlogp (and dL/dentropy; either may be NULL) through
 * the whole model; gradients accumulate (+=). Must follow a forward with POC_FWD_SAVE on
 * the same pack. */
int poc_model_backward(poc_model *m, const poc_pack *p, const double *dlogp,
                       const double *dentropy, char *err);

/* One AdamW step. The gradient is multiplied by grad_scale first (1/accumulation steps,
 * times min(1, clip/norm) for clipping), then torch.optim.AdamW's update with bias
 * correction for `step` (1 for the first step); decay applies to matrices only
 * (poc_model_decays). */
typedef struct poc_adamw {
  double lr, beta1, beta2, eps, weight_decay;
  long step;
  double grad_scale;
} poc_adamw;
int poc_model_zero_grad(poc_model *m, char *err);
/* ‖grad‖₂ over all parameters (over the shard's, when sharded), summed in double in a
 * fixed order. */
int poc_model_grad_norm(poc_model *m, double *norm, char *err);
/* Σ grad², the square of the above (several models' norms add up exactly). */
int poc_model_grad_sumsq(poc_model *m, double *sumsq, char *err);
/* Σ w² over the master weights (trainable models): a cheap finiteness check after an
 * update, on the device, in the device's sum-of-squares precision. */
int poc_model_weights_sumsq(poc_model *m, double *sumsq, char *err);
int poc_model_adamw(poc_model *m, const poc_adamw *h, char *err);
/* Whether AdamW decays tensor i of the layout (2-D tensors). */
int poc_model_decays(const poc_layout *lay, int i);

/* ZeRO stage 1: shard `rank` of `ranks` of the trainable vector (n elements) is
 * [rank·c, (rank + 1)·c), c = ⌈n/ranks⌉. After this, AdamW updates the shard only, its
 * moments are the only ones allocated (c elements each; POC_PART_MOM/VAR and
 * poc_model_host_f32 are the shard's [lo, hi) of poc_model_shard_range), the gradient
 * norm is the shard's (callers sum the squares over ranks), and the gradient and weights
 * buffers are padded with zeros to ranks·c elements, as equal-count collectives need.
 * Call it right after creating the model, before its weights or moments are read. */
int poc_model_shard(poc_model *m, int rank, int ranks, char *err);
/* The moments' range [lo, hi) of the trainable vector (clipped to n: the last shard may
 * hold fewer, or none) and the elements each moment has (c; n when not sharded). */
void poc_model_shard_range(const poc_model *m, size_t *lo, size_t *hi, size_t *count);
/* A collective on device buffers of d, shaped as comm.h's trn_comm_dev_reduce_scatter
 * and trn_comm_dev_all_gather (device addresses as uint64_t). */
typedef int (*poc_shard_fn)(poc_device *d, uint64_t send, uint64_t recv, poc_dtype t,
                            size_t count, char *err);
/* The gradient (ranks·c elements) reduced over ranks into this rank's shard of it. */
int poc_model_grad_reduce_scatter(poc_model *m, poc_shard_fn f, char *err);
/* Every rank's updated shard of the master weights gathered into all of them, and the
 * compute copy refreshed from them (where it is another buffer). */
int poc_model_weights_all_gather(poc_model *m, poc_shard_fn f, char *err);
/* Gradient buckets, for starting a reduction of each part of the gradient while
 * backward still runs: b[i] = [lo, hi) of the trainable vector; together they cover it
 * once. In the order a backward finishes them: the decoder layers last to first, then
 * [end of the layers, n) (final norm, head) and [0, start of the layers) (embeddings,
 * tied heads); a bucket may be empty. Their count; 0 for a frozen model. */
int poc_model_grad_buckets(poc_model *m, const size_t (**b)[2]);
/* fn(ctx, m, i) from backward once bucket i's gradient is final for that backward (the
 * device synchronised first), every bucket once per backward with tokens; NULL removes
 * it. */
typedef void (*poc_grad_hook)(void *ctx, poc_model *m, int bucket);
void poc_model_grad_hook(poc_model *m, poc_grad_hook fn, void *ctx);

/* Host copies of n_params elements of type dt (checkpoints, resume, tests). Weights read
 * back from a frozen model on a bf16 device are its bf16 compute copy; setting weights
 * refreshes the compute copy. */
typedef enum poc_part {
  POC_PART_WEIGHTS,              /* the base weights (lay->n_params) */
  POC_PART_GRAD, POC_PART_MOM, POC_PART_VAR, /* of the trainable vector: the base weights of a
                                    fully trained model, the adapters of a LoRA model */
  POC_PART_ADAPTER               /* a LoRA model's adapters (alay->n_params) */
} poc_part;
int poc_model_get(poc_model *m, poc_part part, void *dst, poc_dtype dt, char *err);
int poc_model_set(poc_model *m, poc_part part, const void *src, poc_dtype st, char *err);
/* The device's own f32 buffer where device memory is host memory (the CPU device), so
 * checkpoints read and resume writes it in place; NULL elsewhere (copy with get/set).
 * Gradients: NULL also on the bf16 CPU device, whose micro-batch gradients accumulate on
 * the device in fp32 as on CUDA (the training loop sums host gradients in double). */
float *poc_model_host_f32(poc_model *m, poc_part part);
/* The device address (device.h's poc_dptr) of a part's buffer of n_params elements of the
 * device's acc type, for collectives that run on the device itself (comm_nccl.h); 0 where
 * the model has no such part. */
uint64_t poc_model_part_addr(poc_model *m, poc_part part);
/* fn(ctx, l) after each decoder layer's backward has been issued (queued on the device),
 * layers L-1 down to 0: what can start on that layer's finished gradient while the rest of
 * the backward runs (comm_nccl.h's overlap). NULL removes it. */
void poc_model_set_layer_hook(poc_model *m, void (*fn)(void *ctx, int layer), void *ctx);
/* After writing master weights or adapters through that pointer: the compute copy (act)
 * is made from them again where it is a separate buffer (a bf16 device); nothing where
 * it is the same one. */
int poc_model_refresh_compute(poc_model *m, char *err);

/* ---- LoRA (runtime/lora.c; the math in model.c) ---------------------------------- */
/* Low-rank adapters on a model's linear layers: a target W [out × in] computes
 *   y = x·Wᵀ + (alpha/r)·drop(x)·Aᵀ·Bᵀ,   A [r × in], B [out × r]
 * with W frozen; only A and B have gradients and AdamW state. The adapters are a flat
 * array laid out like a model (a poc_layout whose tensor names are PEFT's keys,
 * "base_model.model.model.layers.N.self_attn.q_proj.lora_A.weight"), A before B, layer by
 * layer, targets in the order below. */
enum { POC_LT_Q, POC_LT_K, POC_LT_V, POC_LT_O, POC_LT_GATE, POC_LT_UP, POC_LT_DOWN, POC_LT_N };
extern const char *const poc_lora_target_names[POC_LT_N];   /* "q_proj", ..., "down_proj" */
typedef struct poc_lora_cfg {
  int r;
  double alpha, dropout;
  unsigned targets;              /* bit (1 << POC_LT_x) per adapted projection */
} poc_lora_cfg;
/* The target's input and output widths for a config. */
void poc_lora_dims(const poc_config *c, int target, int *in, int *out);
/* PEFT's key of layer l's target t, lora_A (b = 0) or lora_B (b = 1). */
void poc_lora_key(char *buf, size_t n, int layer, int target, int b);
/* The adapter layout for a base layout (alay->cfg is the base's config). */
int poc_lora_layout(const poc_layout *base, const poc_lora_cfg *lc, poc_layout *alay, char *err);
/* The index of a PEFT module name ("q_proj" → POC_LT_Q), -1 for others. */
int poc_lora_target_index(const char *name);
/* An adapter folder in PEFT's format. read_config: DIR/adapter_config.json (peft_type
 * LORA, r, lora_alpha, lora_dropout, target_modules; variants poc does not compute —
 * rsLoRA, DoRA, biases, modules_to_save, per-layer patterns — are errors naming the key);
 * base gets base_model_name_or_path (may be NULL). load: DIR/adapter_model.safetensors into
 * a[alay->n_params], every tensor present with its shape and no other tensor, errors
 * naming the file and the tensor. open: both, with the layout for a base. save: both
 * files, each written atomically. */
int poc_lora_read_config(const char *dir, poc_lora_cfg *lc, char *base, size_t base_n,
                         char *err);
int poc_lora_load(const char *dir, const poc_layout *alay, float *a, char *err);
int poc_lora_open(const char *dir, const poc_layout *base, poc_lora_cfg *lc, poc_layout *alay,
                  float **a, char *err);
int poc_lora_save(const char *dir, const poc_layout *alay, const poc_lora_cfg *lc,
                  const float *a, const char *base, char *err);
/* w[lay->n_params] += (alpha/r)·B·A into each adapted projection (sums in double). */
void poc_lora_merge(const poc_layout *lay, const poc_layout *alay, const poc_lora_cfg *lc,
                    const float *a, float *w);
/* PEFT's initialisation from a seed: A kaiming-uniform with a = √5, i.e. U(−1/√in, 1/√in),
 * B = 0. */
void poc_lora_init(const poc_layout *alay, uint64_t seed, float *a);

/* A LoRA model: base weights frozen (act only: on a bf16 device no fp32 master copy),
 * adapters trainable. Base weights zero until POC_PART_WEIGHTS is set, adapters until
 * POC_PART_ADAPTER is. alay and lc must outlive the model. */
poc_model *poc_model_new_lora(poc_device *d, const poc_layout *lay, const poc_layout *alay,
                              const poc_lora_cfg *lc, int max_tokens, char *err);
/* A frozen view of src's weights with its own workspace: no weight is copied. adapters = 0
 * gives the base with the adapters off (a LoRA run's reference model); src must outlive
 * the view. */
poc_model *poc_model_view(poc_model *src, int adapters, int max_tokens, char *err);
/* Dropout of a LoRA model's adapters in the forwards that follow: on with a stream seed
 * (training, one seed per micro-batch), or off (evaluation, generation, poc logp). The
 * seed of a forward is kept for its backward. */
void poc_model_lora_dropout(poc_model *m, int on, uint64_t seed);
/* The length of the trainable vector (GRAD/MOM/VAR): n_params of the base, or of the
 * adapters for a LoRA model; its layout. */
const poc_layout *poc_model_train_layout(const poc_model *m);

/* ---- random numbers -------------------------------------------------------------- */
/* Counter-based and splittable, so a resumed run draws exactly what an unbroken one
 * would: the state is one 64-bit word, saved in checkpoints. */
typedef struct poc_rng { uint64_t s; } poc_rng;
void poc_rng_seed(poc_rng *r, uint64_t seed);
uint64_t poc_rng_next(poc_rng *r);              /* splitmix64 */
double poc_rng_uniform(poc_rng *r);             /* [0, 1) with 53 random bits */
/* A stream for one purpose derived from (seed, a, b): e.g. (seed, step, example). */
poc_rng poc_rng_derive(uint64_t seed, uint64_t a, uint64_t b);

/* ---- generation ------------------------------------------------------------------ */
/* Continues `prompt` by up to max_new tokens with a KV cache, stopping after eos when
 * eos >= 0. temperature <= 0 means greedy (the first token of highest logit); otherwise
 * temperature then top-p (nucleus) sampling drawn from rng. Returns the number of tokens
 * written to out, or -1. */
int poc_model_generate(poc_model *m, const int32_t *prompt, int n_prompt, int max_new,
                       double temperature, double top_p, int eos, poc_rng *rng, int32_t *out,
                       char *err);

/* Checks generation's arguments for a vocabulary of V tokens: a non-empty prompt of
 * in-vocabulary ids, max_new >= 0, a random stream when sampling. 0, or -1 with err. */
int poc_generate_check(int V, const int32_t *prompt, int n_prompt, int max_new,
                       double temperature, const poc_rng *rng, char *err);

/* Picks a token from probabilities p[V] (already tempered): the smallest set of most
 * likely tokens whose mass reaches top_p, renormalised, then one draw. */
int poc_sample_top_p(const double *p, int V, double top_p, poc_rng *rng);

#endif
