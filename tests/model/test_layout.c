/* test_layout.c — the flat parameter layout (HF names, shapes, order, contiguous
 * offsets, biases, tying), its refusal of inconsistent configurations, and the RoPE
 * frequencies with Llama-3 scaling against values from HF's formula. */
#include "mt.h"

static void layout_order(void) {
  char err[POC_ERR_LEN];
  poc_config c = mt_config(16, 24, 47, 2, 4, 2, 4, 1, 0, 0);
  poc_layout lay;
  CHECK(poc_layout_init(&lay, &c, err) == 0);
  const char *want[] = {
      "model.embed_tokens.weight",
      "model.layers.0.input_layernorm.weight",
      "model.layers.0.self_attn.q_proj.weight",
      "model.layers.0.self_attn.q_proj.bias",
      "model.layers.0.self_attn.k_proj.weight",
      "model.layers.0.self_attn.k_proj.bias",
      "model.layers.0.self_attn.v_proj.weight",
      "model.layers.0.self_attn.v_proj.bias",
      "model.layers.0.self_attn.o_proj.weight",
      "model.layers.0.post_attention_layernorm.weight",
      "model.layers.0.mlp.gate_proj.weight",
      "model.layers.0.mlp.up_proj.weight",
      "model.layers.0.mlp.down_proj.weight",
  };
  int nw = (int)(sizeof want / sizeof want[0]);
  CHECK(lay.n_tensors == 1 + 2 * 12 + 2);
  for (int i = 0; i < nw && i < lay.n_tensors; i++)
    CHECK_MSG(!strcmp(lay.tensors[i].name, want[i]), "tensor %d is %s", i, lay.tensors[i].name);
  CHECK(!strcmp(lay.tensors[13].name, "model.layers.1.input_layernorm.weight"));
  CHECK(!strcmp(lay.tensors[lay.n_tensors - 2].name, "model.norm.weight"));
  CHECK(!strcmp(lay.tensors[lay.n_tensors - 1].name, "lm_head.weight"));
  size_t at = 0;
  for (int i = 0; i < lay.n_tensors; i++) {
    CHECK(lay.tensors[i].offset == at);
    at += lay.tensors[i].numel;
  }
  CHECK(at == lay.n_params);
  /* 47·16 embed, per layer 16 + (16·16+16) + 2·(8·16+8) + 16·16 + 16 + 3·24·16, norm 16,
     head 47·16 */
  size_t per = 16 + 272 + 2 * 136 + 256 + 16 + 3 * 384;
  CHECK(lay.n_params == 752 + 2 * per + 16 + 752);
  const poc_tensor_info *k = poc_layout_find(&lay, "model.layers.1.self_attn.k_proj.weight");
  CHECK(k && k->ndim == 2 && k->shape[0] == 8 && k->shape[1] == 16 && k->numel == 128);
  const poc_tensor_info *o = poc_layout_find(&lay, "model.layers.0.self_attn.o_proj.weight");
  CHECK(o && o->shape[0] == 16 && o->shape[1] == 16);
  const poc_tensor_info *dn = poc_layout_find(&lay, "model.layers.0.mlp.down_proj.weight");
  CHECK(dn && dn->shape[0] == 16 && dn->shape[1] == 24);
  const poc_tensor_info *b = poc_layout_find(&lay, "model.layers.0.self_attn.v_proj.bias");
  CHECK(b && b->ndim == 1 && b->shape[0] == 8);
  CHECK(poc_layout_find(&lay, "model.layers.2.input_layernorm.weight") == NULL);
  poc_layout_free(&lay);

  /* tied, no bias, head_dim·heads ≠ hidden */
  c = mt_config(24, 20, 53, 1, 4, 2, 8, 0, 1, 0);
  CHECK(poc_layout_init(&lay, &c, err) == 0);
  CHECK(lay.n_tensors == 1 + 9 + 1);
  CHECK(poc_layout_find(&lay, "lm_head.weight") == NULL);
  CHECK(poc_layout_find(&lay, "model.layers.0.self_attn.q_proj.bias") == NULL);
  const poc_tensor_info *q = poc_layout_find(&lay, "model.layers.0.self_attn.q_proj.weight");
  CHECK(q && q->shape[0] == 32 && q->shape[1] == 24);
  o = poc_layout_find(&lay, "model.layers.0.self_attn.o_proj.weight");
  CHECK(o && o->shape[0] == 24 && o->shape[1] == 32);
  poc_layout_free(&lay);
}

static void layout_errors(void) {
  char err[POC_ERR_LEN];
  poc_layout lay;
  poc_config c = mt_config(16, 24, 47, 2, 3, 2, 4, 0, 0, 0);
  CHECK(poc_layout_init(&lay, &c, err) == -1);
  CHECK(strstr(err, "num_key_value_heads") != NULL);
  c = mt_config(16, 24, 47, 2, 4, 2, 5, 0, 0, 0);
  CHECK(poc_layout_init(&lay, &c, err) == -1);
  CHECK(strstr(err, "head_dim") != NULL);
  c = mt_config(16, 24, 0, 2, 4, 2, 4, 0, 0, 0);
  CHECK(poc_layout_init(&lay, &c, err) == -1);
  CHECK(strstr(err, "vocab_size") != NULL);
  c = mt_config(16, 24, 47, 2, 4, 2, 4, 0, 0, 1);
  c.rope_high_freq_factor = 0.5;
  CHECK(poc_layout_init(&lay, &c, err) == -1);
  CHECK(strstr(err, "llama3") != NULL);
}

/* HF `_compute_llama3_parameters` for θ = 1e4, hd = 8, factor 8, low 1, high 4, original
 * context 64: the first frequency is kept, the second smoothed, the last two divided. */
static void rope_freqs(void) {
  char err[POC_ERR_LEN];
  poc_layout lay;
  poc_config c = mt_config(24, 20, 53, 1, 4, 2, 8, 0, 1, 1);
  CHECK(poc_layout_init(&lay, &c, err) == 0);
  /* the model computes its RoPE tables from exactly these frequencies (runtime/model.c) */
  double inv[4];
  poc_rope_inv_freq(&lay.cfg, inv);
  const double want[4] = {1.0, 0.013042256043820465, 0.00125, 0.000125};
  for (int i = 0; i < 4; i++) CHECK_NEAR(inv[i], want[i], 1e-15);
  lay.cfg.rope_llama3 = 0;
  lay.cfg.rope_theta = 500;
  poc_rope_inv_freq(&lay.cfg, inv);
  for (int i = 0; i < 4; i++) CHECK_NEAR(inv[i], pow(500, -2.0 * i / 8), 1e-15);
  poc_layout_free(&lay);
}

int main(void) {
  layout_order();
  layout_errors();
  rope_freqs();
  return check_summary("model_layout");
}
