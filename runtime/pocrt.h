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
} poc_config;

/* Reads DIR/config.json. An unsupported model type, activation, rope scaling type or
 * inconsistent shape is an error naming the field and its value. */
int poc_config_load(const char *model_dir, poc_config *cfg, char *err);
/* Writes DIR/config.json that HF transformers loads as the same architecture. */
int poc_config_save(const char *model_dir, const poc_config *cfg, char *err);

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
  size_t embed, norm, head;      /* head == embed when the embeddings are tied */
  int n_layers;
  poc_layer_offsets *layers;     /* [n_layers], malloc'd: free() it */
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

enum {
  POC_FWD_SAVE = 1,     /* keep activations for a backward pass */
  POC_FWD_ENTROPY = 2,  /* also produce per-token entropy of the next-token distribution */
  POC_FWD_UNFUSED = 4   /* textbook head: full N×V logits, log-softmax, gather */
};

/* A model instance: its weights (not owned), its gradient accumulator (not owned, may be
 * NULL for a frozen model) and a workspace sized for `max_tokens` packed tokens. */
typedef struct poc_model_f32 poc_model_f32;
typedef struct poc_model_f64 poc_model_f64;

poc_model_f32 *poc_model_new_f32(const poc_layout *lay, float *w, float *grad, int max_tokens);
void poc_model_free_f32(poc_model_f32 *m);
/* Per-token log-probs (and entropies when asked) of every target token of the pack. */
int poc_model_forward_f32(poc_model_f32 *m, const poc_pack *p, int flags, float *logp,
                          float *entropy, char *err);
/* Backward from per-target seeds dL/dlogp (and dL/dentropy, may be NULL) through the
 * whole model; gradients are accumulated (+=) into the model's grad array. Must follow a
 * forward with POC_FWD_SAVE on the same pack. */
int poc_model_backward_f32(poc_model_f32 *m, const poc_pack *p, const float *dlogp,
                           const float *dentropy, char *err);

poc_model_f64 *poc_model_new_f64(const poc_layout *lay, double *w, double *grad, int max_tokens);
void poc_model_free_f64(poc_model_f64 *m);
int poc_model_forward_f64(poc_model_f64 *m, const poc_pack *p, int flags, double *logp,
                          double *entropy, char *err);
int poc_model_backward_f64(poc_model_f64 *m, const poc_pack *p, const double *dlogp,
                           const double *dentropy, char *err);

/* ---- the loss head alone (exposed for tests and benchmarks) ---------------------- */
/* h [n×H] · W [V×H]ᵀ → per-row log-prob of target[i] (and entropy). The fused version
 * streams vocabulary chunks with an online log-sum-exp and never stores n×V logits;
 * backward recomputes the chunks: dlogits = g·(onehot − softmax) (+ the entropy term),
 * dW += dlogitsᵀ·h, dh = dlogits·W. */
#define POC_HEAD_CHUNK 4096
void poc_head_forward_f32(int n, int H, int V, const float *h, const float *W,
                          const int32_t *target, int fused, float *logp, float *entropy);
void poc_head_backward_f32(int n, int H, int V, const float *h, const float *W,
                           const int32_t *target, const float *dlogp, const float *dentropy,
                           int fused, float *dh, float *dW);
void poc_head_forward_f64(int n, int H, int V, const double *h, const double *W,
                          const int32_t *target, int fused, double *logp, double *entropy);
void poc_head_backward_f64(int n, int H, int V, const double *h, const double *W,
                           const int32_t *target, const double *dlogp, const double *dentropy,
                           int fused, double *dh, double *dW);

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
 * eos >= 0. temperature <= 0 means greedy; otherwise temperature then top-p (nucleus)
 * sampling drawn from rng. Returns the number of tokens written to out. */
int poc_generate_f32(poc_model_f32 *m, const int32_t *prompt, int n_prompt, int max_new,
                     double temperature, double top_p, int eos, poc_rng *rng, int32_t *out,
                     char *err);
int poc_generate_f64(poc_model_f64 *m, const int32_t *prompt, int n_prompt, int max_new,
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
