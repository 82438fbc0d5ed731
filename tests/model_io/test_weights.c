/* test_weights.c — model folders through poc_layout: a model written by poc reads back
 * bit-identical, shards load exactly like the single file, tied embeddings, and every
 * missing, misshapen or broken piece is an error naming it. */
#include <string.h>
#include <unistd.h>

#include "../check.h"
#include "mio.h"
#include "pocrt.h"
#include "st.h"

static poc_config tiny(const char *type, int tied, int bias) {
  poc_config c;
  memset(&c, 0, sizeof c);
  snprintf(c.model_type, sizeof c.model_type, "%s", type);
  c.vocab_size = 97;
  c.hidden_size = 32;
  c.intermediate_size = 48;
  c.num_hidden_layers = 2;
  c.num_attention_heads = 4;
  c.num_key_value_heads = 2;
  c.head_dim = 8;
  c.max_position_embeddings = 128;
  c.rope_theta = 10000;
  c.rms_norm_eps = 1e-5;
  c.tie_word_embeddings = tied;
  c.attention_bias = bias;
  c.o_proj_bias = bias && !strcmp(type, "llama"); /* as config.json reads back */
  c.bos_token_id = 1;
  c.eos_token_id = 2;
  snprintf(c.torch_dtype, sizeof c.torch_dtype, "float32");
  return c;
}

/* Deterministic values that exercise the float range, with a few special ones. */
static float *random_weights(const poc_layout *lay, uint64_t seed) {
  float *w = malloc(lay->n_params * sizeof *w);
  poc_rng r;
  poc_rng_seed(&r, seed);
  for (size_t i = 0; i < lay->n_params; i++) w[i] = (float)((poc_rng_uniform(&r) - 0.5) * 0.2);
  w[0] = -0.0f;
  w[1] = 1e-40f;  /* subnormal */
  w[2] = 3.0e38f;
  return w;
}

static int bits_equal(const float *a, const float *b, size_t n) { return memcmp(a, b, n * sizeof *a) == 0; }

static void test_roundtrip(const char *type, int tied, int bias) {
  char err[POC_ERR_LEN] = "";
  poc_config c = tiny(type, tied, bias);
  poc_layout lay;
  CHECK_MSG(poc_layout_init(&lay, &c, err) == 0, "%s", err);
  float *w = random_weights(&lay, 7);
  char name[64];
  snprintf(name, sizeof name, "rt-%s-%d-%d", type, tied, bias);
  const char *dir = mio_path(name);
  CHECK_MSG(poc_model_save_f32(dir, &lay, w, "F32", err) == 0, "%s", err);

  /* the folder describes itself: config.json gives the same layout */
  poc_config c2;
  poc_layout lay2;
  CHECK_MSG(poc_config_load(dir, &c2, err) == 0, "%s", err);
  CHECK(poc_layout_init(&lay2, &c2, err) == 0 && lay2.n_params == lay.n_params &&
        lay2.n_tensors == lay.n_tensors);
  float *back = calloc(lay.n_params, sizeof *back);
  CHECK_MSG(poc_weights_load_f32(dir, &lay2, back, err) == 0, "%s", err);
  CHECK_MSG(bits_equal(w, back, lay.n_params), "%s: F32 round trip differs", name);
  double *d = calloc(lay.n_params, sizeof *d);
  CHECK_MSG(poc_weights_load_f64(dir, &lay2, d, err) == 0, "%s", err);
  int same = 1;
  for (size_t i = 0; i < lay.n_params; i++) same &= d[i] == (double)w[i];
  CHECK(same);

  /* the file holds exactly the layout's tensors: no lm_head when tied */
  char p[1300];
  snprintf(p, sizeof p, "%s/model.safetensors", dir);
  st_file f;
  CHECK_MSG(st_open(&f, p, err) == 0, "%s", err);
  CHECK(f.n == lay.n_tensors);
  CHECK((st_find(&f, "lm_head.weight") != NULL) == !tied);
  CHECK((st_find(&f, "model.layers.1.self_attn.k_proj.bias") != NULL) == (bias || !strcmp(type, "qwen2")));
  st_close(&f);

  /* BF16: every value comes back rounded to nearest even */
  snprintf(name, sizeof name, "rt16-%s-%d-%d", type, tied, bias);
  dir = mio_path(name);
  CHECK_MSG(poc_model_save_f32(dir, &lay, w, "BF16", err) == 0, "%s", err);
  CHECK_MSG(poc_weights_load_f32(dir, &lay, back, err) == 0, "%s", err);
  same = 1;
  for (size_t i = 0; i < lay.n_params; i++) same &= back[i] == st_bf16_to_f32(st_f32_to_bf16(w[i]));
  CHECK(same);
  CHECK(poc_config_load(dir, &c2, err) == 0 && !strcmp(c2.torch_dtype, "bfloat16"));

  CHECK(poc_model_save_f32(dir, &lay, w, "F16", err) == -1 && strstr(err, "F16"));
  free(d);
  free(back);
  free(w);
  poc_layout_free(&lay2);
  poc_layout_free(&lay);
}

/* Splits the layout's tensors over three shards (BF16, F32, F32), writes the index by
 * hand, and checks the load equals the single file's. */
static void test_sharded(void) {
  char err[POC_ERR_LEN] = "";
  poc_config c = tiny("llama", 0, 0);
  poc_layout lay;
  CHECK(poc_layout_init(&lay, &c, err) == 0);
  float *w = random_weights(&lay, 11);
  const char *single = mio_path("shard-single"), *dir = mio_dir("sharded");
  CHECK(poc_model_save_f32(single, &lay, w, "F32", err) == 0);
  CHECK(poc_config_save(dir, &c, err) == 0);

  const char *shard[3] = {"model-00001-of-00003.safetensors", "model-00002-of-00003.safetensors",
                          "model-00003-of-00003.safetensors"};
  st_out *outs[3];
  int n[3] = {0, 0, 0};
  for (int s = 0; s < 3; s++) outs[s] = calloc((size_t)lay.n_tensors + 1, sizeof(st_out));
  char index[16384];
  size_t k = (size_t)snprintf(index, sizeof index, "{\"metadata\":{\"total_size\":%zu},\"weight_map\":{",
                              lay.n_params * 4);
  for (int i = 0; i < lay.n_tensors; i++) {
    const poc_tensor_info *t = &lay.tensors[i];
    int s = i % 3;
    st_out *o = &outs[s][n[s]++];
    o->name = t->name;
    o->ndim = t->ndim;
    o->shape[0] = t->shape[0];
    o->shape[1] = t->shape[1];
    o->data = w + t->offset;
    k += (size_t)snprintf(index + k, sizeof index - k, "%s\"%s\":\"%s\"", i ? "," : "", t->name, shard[s]);
  }
  /* an extra buffer HF sometimes stores is ignored */
  float inv[4] = {1, 2, 3, 4};
  outs[1][n[1]++] = (st_out){"model.layers.0.self_attn.rotary_emb.inv_freq", 1, {4}, inv};
  k += (size_t)snprintf(index + k, sizeof index - k,
                        ",\"model.layers.0.self_attn.rotary_emb.inv_freq\":\"%s\"}}", shard[1]);
  for (int s = 0; s < 3; s++) {
    char p[1300];
    snprintf(p, sizeof p, "%s/%s", dir, shard[s]);
    CHECK_MSG(st_write_f32(p, outs[s], n[s], s == 0 ? "BF16" : "F32", err) == 0, "%s", err);
  }
  char ip[1300];
  snprintf(ip, sizeof ip, "%s/model.safetensors.index.json", dir);
  mio_write_text(ip, index);

  float *a = calloc(lay.n_params, sizeof *a), *b = calloc(lay.n_params, sizeof *b);
  CHECK_MSG(poc_weights_load_f32(single, &lay, a, err) == 0, "%s", err);
  CHECK_MSG(poc_weights_load_f32(dir, &lay, b, err) == 0, "%s", err);
  /* shard 0 went through BF16, the others are exact */
  int same = 1;
  for (int i = 0; i < lay.n_tensors; i++) {
    const poc_tensor_info *t = &lay.tensors[i];
    for (size_t j = 0; j < t->numel; j++) {
      float want = i % 3 == 0 ? st_bf16_to_f32(st_f32_to_bf16(a[t->offset + j])) : a[t->offset + j];
      same &= memcmp(&want, &b[t->offset + j], 4) == 0;
    }
  }
  CHECK_MSG(same, "sharded load differs from the single file");

  /* all-F32 shards load bit-identically to the single file */
  char p0[1300];
  snprintf(p0, sizeof p0, "%s/%s", dir, shard[0]);
  CHECK(st_write_f32(p0, outs[0], n[0], "F32", err) == 0);
  CHECK_MSG(poc_weights_load_f32(dir, &lay, b, err) == 0, "%s", err);
  CHECK(bits_equal(a, b, lay.n_params));

  /* broken indexes */
  const char *bad = mio_dir("sharded-bad");
  snprintf(ip, sizeof ip, "%s/model.safetensors.index.json", bad);
  mio_write_text(ip, "{\"weight_map\":{\"model.norm.weight\":\"missing.safetensors\"}}");
  CHECK(poc_weights_load_f32(bad, &lay, b, err) == -1 && strstr(err, "missing.safetensors: cannot open"));
  mio_write_text(ip, "{\"weight_map\":{\"model.norm.weight\":\"../x.safetensors\"}}");
  CHECK(poc_weights_load_f32(bad, &lay, b, err) == -1 && strstr(err, "must name a shard file"));
  mio_write_text(ip, "{\"metadata\":{}}");
  CHECK(poc_weights_load_f32(bad, &lay, b, err) == -1 && strstr(err, "no \"weight_map\""));
  mio_write_text(ip, "{\"weight_map\":");
  CHECK(poc_weights_load_f32(bad, &lay, b, err) == -1 && strstr(err, "not valid JSON"));
  /* the index names a shard that does not hold the tensor */
  char sp[1300];
  snprintf(sp, sizeof sp, "%s/%s", bad, shard[1]);
  CHECK(st_write_f32(sp, outs[1], n[1], "F32", err) == 0);
  snprintf(index, sizeof index, "{\"weight_map\":{\"model.norm.weight\":\"%s\",\"lm_head.weight\":\"%s\"}}",
           shard[1], shard[1]);
  mio_write_text(ip, index);
  CHECK(poc_weights_load_f32(bad, &lay, b, err) == -1 && strstr(err, "but that shard does not hold it"));
  /* a shard-complete index lacking one tensor */
  snprintf(index, sizeof index, "{\"weight_map\":{\"%s\":\"%s\"}}", outs[1][0].name, shard[1]);
  mio_write_text(ip, index);
  CHECK(poc_weights_load_f32(bad, &lay, b, err) == -1 && strstr(err, "missing tensor 'model.embed_tokens.weight'"));

  CHECK(poc_weights_load_f32(mio_dir("empty-folder"), &lay, b, err) == -1 &&
        strstr(err, "no model.safetensors or model.safetensors.index.json"));

  for (int s = 0; s < 3; s++) free(outs[s]);
  free(a);
  free(b);
  free(w);
  poc_layout_free(&lay);
}

/* Mismatches between config.json and the weights. */
static void test_mismatch(void) {
  char err[POC_ERR_LEN] = "";
  poc_config tied = tiny("llama", 1, 0), untied = tiny("llama", 0, 0), wide = tiny("llama", 0, 0);
  wide.intermediate_size = 64;
  poc_layout lt, lu, lw;
  CHECK(poc_layout_init(&lt, &tied, err) == 0 && poc_layout_init(&lu, &untied, err) == 0 &&
        poc_layout_init(&lw, &wide, err) == 0);
  float *w = random_weights(&lw, 3), *o = calloc(lw.n_params, sizeof *o);
  const char *dt = mio_path("mm-tied"), *du = mio_path("mm-untied");
  CHECK(poc_model_save_f32(dt, &lt, w, "F32", err) == 0 && poc_model_save_f32(du, &lu, w, "F32", err) == 0);
  /* untied config, tied file: lm_head missing, said plainly */
  CHECK(poc_weights_load_f32(dt, &lu, o, err) == -1 && strstr(err, "missing tensor 'lm_head.weight'") &&
        strstr(err, "tie_word_embeddings is false"));
  /* tied config, untied file: the extra lm_head is ignored, the rest is the same */
  CHECK_MSG(poc_weights_load_f32(du, &lt, o, err) == 0, "%s", err);
  CHECK(bits_equal(o, w, lt.n_params));
  /* wrong shape names the tensor and both shapes */
  CHECK(poc_weights_load_f32(du, &lw, o, err) == -1 &&
        strstr(err, "tensor 'model.layers.0.mlp.gate_proj.weight' has shape [48, 32], config.json implies [64, 32]"));
  /* qwen2 needs biases a llama file lacks */
  poc_config q = tiny("qwen2", 0, 1);
  poc_layout lq;
  CHECK(poc_layout_init(&lq, &q, err) == 0);
  float *oq = calloc(lq.n_params, sizeof *oq);
  CHECK(poc_weights_load_f32(du, &lq, oq, err) == -1 && strstr(err, "missing tensor 'model.layers.0.self_attn.q_proj.bias'"));

  /* a llama config reading a file with biases: the extra weights are refused, not dropped */
  const char *dq = mio_path("mm-qwen2");
  CHECK(poc_model_save_f32(dq, &lq, oq, "F32", err) == 0);
  CHECK(poc_weights_load_f32(dq, &lu, o, err) == -1 &&
        strstr(err, "tensor 'model.layers.0.self_attn.k_proj.bias' is not part of the llama model"));

  /* a truncated model file, at several places */
  char p[1300];
  snprintf(p, sizeof p, "%s/model.safetensors", du);
  size_t n;
  unsigned char *bytes = mio_read(p, &n);
  size_t cuts[] = {4, 100, n / 2, n - 1};
  for (int i = 0; i < 4 && bytes; i++) {
    mio_write(p, bytes, cuts[i]);
    CHECK_MSG(poc_weights_load_f32(du, &lu, o, err) == -1 && strstr(err, p), "cut %zu: %s", cuts[i], err);
  }
  free(bytes);
  free(oq);
  free(o);
  free(w);
  poc_layout_free(&lq);
  poc_layout_free(&lt);
  poc_layout_free(&lu);
  poc_layout_free(&lw);
}

int main(int argc, char **argv) {
  mio_init(argc, argv, "weights");
  test_roundtrip("llama", 0, 0);
  test_roundtrip("llama", 1, 1);
  test_roundtrip("mistral", 0, 0);
  test_roundtrip("qwen2", 1, 1);
  test_sharded();
  test_mismatch();
  return check_summary("model_io_weights");
}
