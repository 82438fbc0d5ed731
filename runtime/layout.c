/* layout.c — where every Hugging Face tensor lives in the flat parameter array.
 *
 * Order (a contract with checkpoints and the optimizer state): embed_tokens; per layer
 * input_layernorm, q_proj (+bias), k_proj (+bias), v_proj (+bias), o_proj,
 * post_attention_layernorm, gate_proj, up_proj, down_proj; the final norm; lm_head unless
 * the embeddings are tied, or, for a sequence-classification model, score.weight
 * [num_labels, hidden] in lm_head's place (transformers' *ForSequenceClassification has no
 * lm_head). The transformer's tensors are therefore a common prefix of both layouts.
 * Linear weights keep HF's [out, in] shape.
 */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "pocrt.h"

static int lay_check_config(const poc_config *c, char *err) {
  const struct { const char *name; int v; } pos[] = {
      {"vocab_size", c->vocab_size},
      {"hidden_size", c->hidden_size},
      {"intermediate_size", c->intermediate_size},
      {"num_hidden_layers", c->num_hidden_layers},
      {"num_attention_heads", c->num_attention_heads},
      {"num_key_value_heads", c->num_key_value_heads},
      {"head_dim", c->head_dim},
  };
  for (size_t i = 0; i < sizeof pos / sizeof pos[0]; i++)
    if (pos[i].v <= 0) {
      snprintf(err, POC_ERR_LEN, "model config: %s must be positive, got %d", pos[i].name,
               pos[i].v);
      return -1;
    }
  if (c->num_attention_heads % c->num_key_value_heads) {
    snprintf(err, POC_ERR_LEN,
             "model config: num_attention_heads (%d) is not a multiple of "
             "num_key_value_heads (%d)",
             c->num_attention_heads, c->num_key_value_heads);
    return -1;
  }
  if (c->head_dim % 2) {
    snprintf(err, POC_ERR_LEN, "model config: head_dim (%d) must be even for RoPE",
             c->head_dim);
    return -1;
  }
  if (!(c->rope_theta > 0) || !(c->rms_norm_eps >= 0)) {
    snprintf(err, POC_ERR_LEN, "model config: rope_theta (%g) must be positive and "
             "rms_norm_eps (%g) non-negative", c->rope_theta, c->rms_norm_eps);
    return -1;
  }
  if (c->rope_llama3 &&
      (!(c->rope_factor > 0) || !(c->rope_high_freq_factor > c->rope_low_freq_factor) ||
       !(c->rope_low_freq_factor > 0) || c->rope_original_max_position <= 0)) {
    snprintf(err, POC_ERR_LEN,
             "model config: llama3 rope_scaling needs factor > 0, 0 < low_freq_factor < "
             "high_freq_factor and original_max_position_embeddings > 0 (got %g, %g, %g, %d)",
             c->rope_factor, c->rope_low_freq_factor, c->rope_high_freq_factor,
             c->rope_original_max_position);
    return -1;
  }
  return 0;
}

static void lay_add(poc_layout *lay, const char *name, int ndim, int64_t d0, int64_t d1) {
  poc_tensor_info *t = &lay->tensors[lay->n_tensors++];
  snprintf(t->name, sizeof t->name, "%s", name);
  t->ndim = ndim;
  t->shape[0] = d0;
  t->shape[1] = ndim == 2 ? d1 : 0;
  t->numel = (size_t)d0 * (size_t)(ndim == 2 ? d1 : 1);
  t->offset = lay->n_params;
  lay->n_params += t->numel;
}

int poc_layout_init(poc_layout *lay, const poc_config *cfg, char *err) {
  memset(lay, 0, sizeof *lay);
  if (lay_check_config(cfg, err)) return -1;
  lay->cfg = *cfg;
  const int64_t V = cfg->vocab_size, H = cfg->hidden_size, I = cfg->intermediate_size;
  const int64_t qd = (int64_t)cfg->num_attention_heads * cfg->head_dim;
  const int64_t kvd = (int64_t)cfg->num_key_value_heads * cfg->head_dim;
  int per_layer = 9 + (cfg->attention_bias ? 3 : 0) + (cfg->o_proj_bias ? 1 : 0);
  int cap = 1 + cfg->num_hidden_layers * per_layer + 2;
  lay->tensors = calloc((size_t)cap, sizeof *lay->tensors);
  if (!lay->tensors) {
    snprintf(err, POC_ERR_LEN, "model layout: out of memory for %d tensors", cap);
    return -1;
  }
  char nm[96];
  lay_add(lay, "model.embed_tokens.weight", 2, V, H);
  for (int l = 0; l < cfg->num_hidden_layers; l++) {
#define LNAME(suffix) (snprintf(nm, sizeof nm, "model.layers.%d.%s", l, suffix), nm)
    lay_add(lay, LNAME("input_layernorm.weight"), 1, H, 0);
    lay_add(lay, LNAME("self_attn.q_proj.weight"), 2, qd, H);
    if (cfg->attention_bias) lay_add(lay, LNAME("self_attn.q_proj.bias"), 1, qd, 0);
    lay_add(lay, LNAME("self_attn.k_proj.weight"), 2, kvd, H);
    if (cfg->attention_bias) lay_add(lay, LNAME("self_attn.k_proj.bias"), 1, kvd, 0);
    lay_add(lay, LNAME("self_attn.v_proj.weight"), 2, kvd, H);
    if (cfg->attention_bias) lay_add(lay, LNAME("self_attn.v_proj.bias"), 1, kvd, 0);
    lay_add(lay, LNAME("self_attn.o_proj.weight"), 2, H, qd);
    if (cfg->o_proj_bias) lay_add(lay, LNAME("self_attn.o_proj.bias"), 1, H, 0);
    lay_add(lay, LNAME("post_attention_layernorm.weight"), 1, H, 0);
    lay_add(lay, LNAME("mlp.gate_proj.weight"), 2, I, H);
    lay_add(lay, LNAME("mlp.up_proj.weight"), 2, I, H);
    lay_add(lay, LNAME("mlp.down_proj.weight"), 2, H, I);
#undef LNAME
  }
  lay_add(lay, "model.norm.weight", 1, H, 0);
  if (cfg->num_labels > 0) lay_add(lay, "score.weight", 2, cfg->num_labels, H);
  else if (!cfg->tie_word_embeddings) lay_add(lay, "lm_head.weight", 2, V, H);
  return 0;
}

static size_t lay_off(const poc_layout *lay, const char *name, int required, const char **missing) {
  const poc_tensor_info *t = poc_layout_find(lay, name);
  if (t) return t->offset;
  if (required && !*missing) *missing = name;
  return POC_NO_TENSOR;
}

int poc_layout_offsets(const poc_layout *lay, poc_model_offsets *mo, char *err) {
  const poc_config *c = &lay->cfg;
  const char *missing = NULL;
  char nm[8][96];  /* the names checked last stay valid for the message */
  memset(mo, 0, sizeof *mo);
  mo->n_layers = c->num_hidden_layers;
  mo->layers = calloc((size_t)(mo->n_layers > 0 ? mo->n_layers : 1), sizeof *mo->layers);
  if (!mo->layers) {
    snprintf(err, POC_ERR_LEN, "model layout: out of memory");
    return -1;
  }
  mo->embed = lay_off(lay, "model.embed_tokens.weight", 1, &missing);
  mo->norm = lay_off(lay, "model.norm.weight", 1, &missing);
  mo->head = c->tie_word_embeddings || c->num_labels > 0 ? mo->embed
                                                         : lay_off(lay, "lm_head.weight", 1, &missing);
  mo->score = lay_off(lay, "score.weight", c->num_labels > 0, &missing);
  for (int l = 0; l < mo->n_layers && !missing; l++) {
    poc_layer_offsets *o = &mo->layers[l];
    int k = 0;
#define OFF(field, suffix, req)                                            \
  (snprintf(nm[k & 7], sizeof nm[0], "model.layers.%d.%s", l, suffix),     \
   o->field = lay_off(lay, nm[k & 7], req, &missing), k++)
    OFF(ln1, "input_layernorm.weight", 1);
    OFF(wq, "self_attn.q_proj.weight", 1);
    OFF(wk, "self_attn.k_proj.weight", 1);
    OFF(wv, "self_attn.v_proj.weight", 1);
    OFF(wo, "self_attn.o_proj.weight", 1);
    OFF(bq, "self_attn.q_proj.bias", c->attention_bias);
    OFF(bk, "self_attn.k_proj.bias", c->attention_bias);
    OFF(bv, "self_attn.v_proj.bias", c->attention_bias);
    OFF(bo, "self_attn.o_proj.bias", c->o_proj_bias);
    OFF(ln2, "post_attention_layernorm.weight", 1);
    OFF(wg, "mlp.gate_proj.weight", 1);
    OFF(wu, "mlp.up_proj.weight", 1);
    OFF(wd, "mlp.down_proj.weight", 1);
#undef OFF
  }
  if (missing) {
    snprintf(err, POC_ERR_LEN, "model layout: no tensor '%.200s'", missing);
    free(mo->layers);
    mo->layers = NULL;
    return -1;
  }
  return 0;
}

void poc_layout_free(poc_layout *lay) {
  free(lay->tensors);
  lay->tensors = NULL;
  lay->n_tensors = 0;
  lay->n_params = 0;
}

const poc_tensor_info *poc_layout_find(const poc_layout *lay, const char *name) {
  for (int i = 0; i < lay->n_tensors; i++)
    if (!strcmp(lay->tensors[i].name, name)) return &lay->tensors[i];
  return NULL;
}

/* inv_freq_i = θ^(−2i/hd); with Llama-3 scaling (HF `_compute_llama3_parameters`), with
 * wavelength λ = 2π/inv_freq, λ_lo = L0/low_freq_factor, λ_hi = L0/high_freq_factor:
 *   λ > λ_lo: inv_freq / factor;  λ < λ_hi: unchanged;  otherwise, with
 *   s = (L0/λ − low)/(high − low):  (1 − s)·inv_freq/factor + s·inv_freq. */
void poc_rope_inv_freq(const poc_config *c, double *inv_freq) {
  int half = c->head_dim / 2;
  for (int i = 0; i < half; i++) {
    double f = pow(c->rope_theta, -(2.0 * i) / c->head_dim);
    if (c->rope_llama3) {
      const double pi = 3.14159265358979323846;
      double L0 = c->rope_original_max_position, lo = c->rope_low_freq_factor,
             hi = c->rope_high_freq_factor, wl = 2 * pi / f;
      if (wl > L0 / lo)
        f = f / c->rope_factor;
      else if (!(wl < L0 / hi)) {
        double s = (L0 / wl - lo) / (hi - lo);
        f = (1 - s) * f / c->rope_factor + s * f;
      }
    }
    inv_freq[i] = f;
  }
}
