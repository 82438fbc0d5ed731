/* model_tool.c — model folders for the command-line and HF checks, made through poc's
 * own I/O:
 *   model_tool resave SRC_DIR DST_DIR [F32|BF16]   load (config, layout, safetensors), save
 *   model_tool random TYPE DST_DIR SEED            a random tiny model (llama|mistral|qwen2) */
#include <stdio.h>
#include <stdlib.h>
#include <math.h>
#include <string.h>

#include "pocrt.h"

static int usage(void) {
  fprintf(stderr, "usage: model_tool resave SRC_DIR DST_DIR [F32|BF16]\n"
                  "       model_tool random llama|mistral|qwen2 DST_DIR SEED\n");
  return 2;
}

static int resave(const char *src, const char *dst, const char *dtype) {
  char err[POC_ERR_LEN];
  poc_config cfg;
  poc_layout lay;
  if (poc_config_load(src, &cfg, err) || poc_layout_init(&lay, &cfg, err)) {
    fprintf(stderr, "model_tool: %s\n", err);
    return 1;
  }
  float *w = malloc(lay.n_params * sizeof *w);
  int rc = !w || poc_weights_load_f32(src, &lay, w, err) || poc_model_save_f32(dst, &lay, w, dtype, err);
  if (rc) fprintf(stderr, "model_tool: %s\n", w ? err : "out of memory");
  free(w);
  poc_layout_free(&lay);
  return rc;
}

/* GQA (4 heads over 2), untied, eos 2; weights large enough that log-probs vary. */
static int random_model(const char *type, const char *dst, unsigned long long seed) {
  poc_config c;
  memset(&c, 0, sizeof c);
  snprintf(c.model_type, sizeof c.model_type, "%s", type);
  c.vocab_size = 97;
  c.hidden_size = 32;
  c.intermediate_size = 64;
  c.num_hidden_layers = 2;
  c.num_attention_heads = 4;
  c.num_key_value_heads = 2;
  c.head_dim = 8;
  c.max_position_embeddings = 256;
  c.rope_theta = 10000;
  c.rms_norm_eps = 1e-5;
  c.attention_bias = !strcmp(type, "qwen2");
  c.bos_token_id = 1;
  c.eos_token_id = 2;
  snprintf(c.torch_dtype, sizeof c.torch_dtype, "float32");
  char err[POC_ERR_LEN];
  poc_layout lay;
  if (poc_layout_init(&lay, &c, err)) {
    fprintf(stderr, "model_tool: %s\n", err);
    return 1;
  }
  float *w = malloc(lay.n_params * sizeof *w);
  poc_rng r;
  poc_rng_seed(&r, seed);
  for (int t = 0; w && t < lay.n_tensors; t++) {
    const poc_tensor_info *ti = &lay.tensors[t];
    int norm = strstr(ti->name, "norm") != NULL;
    double scale = ti->ndim == 2 ? 2.0 / sqrt((double)ti->shape[1]) : 0.3;
    for (size_t i = 0; i < ti->numel; i++)
      w[ti->offset + i] = (float)((norm ? 1 : 0) + (poc_rng_uniform(&r) - 0.5) * scale * (norm ? 0.5 : 1));
  }
  int rc = !w || poc_model_save_f32(dst, &lay, w, "F32", err);
  if (rc) fprintf(stderr, "model_tool: %s\n", w ? err : "out of memory");
  free(w);
  poc_layout_free(&lay);
  return rc;
}

int main(int argc, char **argv) {
  if (argc >= 4 && argc <= 5 && !strcmp(argv[1], "resave"))
    return resave(argv[2], argv[3], argc == 5 ? argv[4] : "F32");
  if (argc == 5 && !strcmp(argv[1], "random")) return random_model(argv[2], argv[3], strtoull(argv[4], NULL, 10));
  return usage();
}
