/* mt.h — shared pieces of the model tests: tiny hand-made configurations, random
 * weights, packs of context-conditioned sequences, and models on the CPU devices ("cpu"
 * float, "cpu64" double) made from double host weights. */
#ifndef POC_MT_H
#define POC_MT_H

#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "check.h"
#include "device.h"
#include "pocrt.h"

/* A tiny Llama: hidden H, heads nh sharing nkv K/V heads of size hd. */
static inline poc_config mt_config(int H, int F, int V, int L, int nh, int nkv, int hd, int bias,
                            int tied, int llama3) {
  poc_config c;
  memset(&c, 0, sizeof c);
  snprintf(c.model_type, sizeof c.model_type, "%s", bias ? "qwen2" : "llama");
  c.vocab_size = V;
  c.hidden_size = H;
  c.intermediate_size = F;
  c.num_hidden_layers = L;
  c.num_attention_heads = nh;
  c.num_key_value_heads = nkv;
  c.head_dim = hd;
  c.max_position_embeddings = 256;
  c.rope_theta = 10000;
  c.rms_norm_eps = 1e-5;
  c.tie_word_embeddings = tied;
  c.attention_bias = bias;
  c.bos_token_id = c.eos_token_id = -1;
  snprintf(c.torch_dtype, sizeof c.torch_dtype, "float32");
  if (llama3) {
    /* with hd = 8, θ = 1e4: wavelengths 6.3, 63, 628, 6283 against bands 16 and 64, so
       each of the three cases of the scaling rule is hit */
    c.rope_llama3 = 1;
    c.rope_factor = 8;
    c.rope_low_freq_factor = 1;
    c.rope_high_freq_factor = 4;
    c.rope_original_max_position = 64;
  }
  return c;
}

static inline double mt_uniform(poc_rng *r) { return 2 * poc_rng_uniform(r) - 1; }

/* Linear weights ~ U(±1.5/√in); norm weights around 1; embeddings ~ U(±1). */
static inline void mt_weights(const poc_layout *lay, double *w, uint64_t seed) {
  poc_rng r;
  poc_rng_seed(&r, seed);
  for (int i = 0; i < lay->n_tensors; i++) {
    const poc_tensor_info *t = &lay->tensors[i];
    double *p = w + t->offset;
    int norm = strstr(t->name, "norm") != NULL, bias = strstr(t->name, "bias") != NULL;
    double a = t->ndim == 2 ? 1.5 / sqrt((double)t->shape[1]) : 0.3;
    if (strstr(t->name, "embed_tokens")) a = 1;
    for (size_t j = 0; j < t->numel; j++)
      p[j] = norm ? 1 + 0.3 * mt_uniform(&r) : bias ? 0.3 * mt_uniform(&r) : a * mt_uniform(&r);
  }
}

/* A pack of n sequences with the given context and target lengths. */
typedef struct {
  poc_pack p;
  int32_t tok[1024], ss[65], ts[64];
} mt_pack;

static inline void mt_pack_make(mt_pack *mp, int n, const int *ctx, const int *tgt, int V,
                         uint64_t seed) {
  poc_rng r;
  poc_rng_seed(&r, seed);
  int at = 0;
  for (int s = 0; s < n; s++) {
    mp->ss[s] = at;
    mp->ts[s] = at + ctx[s];
    for (int j = 0; j < ctx[s] + tgt[s]; j++) mp->tok[at++] = (int32_t)(poc_rng_next(&r) % V);
  }
  mp->ss[n] = at;
  mp->p.n_seq = n;
  mp->p.n_tok = at;
  mp->p.tokens = mp->tok;
  mp->p.seq_start = mp->ss;
  mp->p.tgt_start = mp->ts;
}

/* Sequence s of a pack as a pack of its own. */
static inline void mt_pack_one(mt_pack *one, const mt_pack *all, int s) {
  int a = all->ss[s], b = all->ss[s + 1];
  memcpy(one->tok, all->tok + a, (size_t)(b - a) * sizeof(int32_t));
  one->ss[0] = 0;
  one->ss[1] = b - a;
  one->ts[0] = all->ts[s] - a;
  one->p.n_seq = 1;
  one->p.n_tok = b - a;
  one->p.tokens = one->tok;
  one->p.seq_start = one->ss;
  one->p.tgt_start = one->ts;
}

/* A device by name; a test cannot go on without it, so a failure ends the process. */
static inline poc_device *mt_device(const char *name) {
  char err[POC_ERR_LEN] = "";
  poc_device *d = poc_device_open(name, err);
  if (!d) {
    fprintf(stderr, "cannot open device %s: %s\n", name, err);
    exit(1);
  }
  return d;
}

/* A model from double host weights (the device rounds them to its own type). */
static inline poc_model *mt_model(poc_device *d, const poc_layout *lay, const double *w,
                                  int trainable, int max_tokens) {
  char err[POC_ERR_LEN] = "";
  poc_model *m = poc_model_new(d, lay, w, POC_DT_F64, trainable, max_tokens, err);
  CHECK_MSG(m != NULL, "model on %s: %s", d->name, err);
  if (!m) exit(1);
  return m;
}

/* The model's accumulated gradient as double, into g [n_params]. */
static inline void mt_grad(poc_model *m, double *g) {
  char err[POC_ERR_LEN] = "";
  int rc = poc_model_get(m, POC_PART_GRAD, g, POC_DT_F64, err);
  CHECK_MSG(rc == 0, "reading the gradient: %s", err);
}

#endif
