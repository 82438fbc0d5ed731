/* test_config.c — config.json: both transformers spellings, each model type's defaults,
 * every unsupported or inconsistent value refused with the field and value named, and a
 * save → load round trip. */
#include <string.h>

#include "../check.h"
#include "mio.h"
#include "pocrt.h"

/* Writes DIR/config.json with `body` and loads it. */
static int load(const char *name, const char *body, poc_config *c, char *err) {
  const char *dir = mio_dir(name);
  char path[1300];
  snprintf(path, sizeof path, "%s/config.json", dir);
  mio_write_text(path, body);
  return poc_config_load(dir, c, err);
}

#define BASE "\"hidden_size\":64,\"intermediate_size\":128,\"num_hidden_layers\":2,\"vocab_size\":300"

static void test_llama(void) {
  poc_config c;
  char err[POC_ERR_LEN] = "";
  /* the 4.x spelling, with GQA, llama3 rope scaling, an eos list */
  int rc = load("llama4x",
                "{\"model_type\":\"llama\"," BASE ",\"num_attention_heads\":8,\"num_key_value_heads\":2,"
                "\"max_position_embeddings\":256,\"rms_norm_eps\":1e-5,\"rope_theta\":500000.0,"
                "\"rope_scaling\":{\"rope_type\":\"llama3\",\"factor\":8.0,\"low_freq_factor\":1.0,"
                "\"high_freq_factor\":4.0,\"original_max_position_embeddings\":64},"
                "\"hidden_act\":\"silu\",\"tie_word_embeddings\":true,\"attention_bias\":true,"
                "\"bos_token_id\":1,\"eos_token_id\":[7,8],\"torch_dtype\":\"bfloat16\"}",
                &c, err);
  CHECK_MSG(rc == 0, "%s", err);
  CHECK(!strcmp(c.model_type, "llama") && c.hidden_size == 64 && c.intermediate_size == 128);
  CHECK(c.num_hidden_layers == 2 && c.vocab_size == 300 && c.num_attention_heads == 8);
  CHECK(c.num_key_value_heads == 2 && c.head_dim == 8 && c.max_position_embeddings == 256);
  CHECK(c.rms_norm_eps == 1e-5 && c.rope_theta == 500000.0);
  CHECK(c.rope_llama3 == 1 && c.rope_factor == 8 && c.rope_low_freq_factor == 1 &&
        c.rope_high_freq_factor == 4 && c.rope_original_max_position == 64);
  CHECK(c.tie_word_embeddings == 1 && c.attention_bias == 1 && c.sliding_window == 0);
  CHECK(c.bos_token_id == 1 && c.eos_token_id == 7 && !strcmp(c.torch_dtype, "bfloat16"));

  /* the 5.x spelling: rope_parameters holds theta and the scaling; defaults elsewhere */
  rc = load("llama5x",
            "{\"model_type\":\"llama\"," BASE ",\"num_attention_heads\":4,\"head_dim\":32,"
            "\"rope_parameters\":{\"rope_type\":\"llama3\",\"rope_theta\":123.0,\"factor\":2.0,"
            "\"low_freq_factor\":1.0,\"high_freq_factor\":2.0,\"original_max_position_embeddings\":32},"
            "\"eos_token_id\":null,\"dtype\":\"float32\"}",
            &c, err);
  CHECK_MSG(rc == 0, "%s", err);
  CHECK(c.num_key_value_heads == 4 && c.head_dim == 32 && c.rope_theta == 123.0 && c.rope_llama3);
  CHECK(c.rope_factor == 2 && c.rope_original_max_position == 32);
  CHECK(c.max_position_embeddings == 2048 && c.rms_norm_eps == 1e-6 && c.tie_word_embeddings == 0);
  CHECK(c.attention_bias == 0 && c.bos_token_id == -1 && c.eos_token_id == -1);
  CHECK(!strcmp(c.torch_dtype, "float32"));

  rc = load("llama-default-rope",
            "{\"model_type\":\"llama\"," BASE ",\"num_attention_heads\":4,"
            "\"rope_parameters\":{\"rope_type\":\"default\",\"rope_theta\":10000.0},\"rope_scaling\":null}",
            &c, err);
  CHECK_MSG(rc == 0, "%s", err);
  CHECK(c.rope_llama3 == 0 && c.rope_theta == 10000.0 && c.head_dim == 16);
}

static void test_mistral_qwen2(void) {
  poc_config c;
  char err[POC_ERR_LEN] = "";
  int rc = load("mistral", "{\"model_type\":\"mistral\"," BASE ",\"num_attention_heads\":4}", &c, err);
  CHECK_MSG(rc == 0, "%s", err);
  CHECK(c.sliding_window == 4096 && c.attention_bias == 0 && c.max_position_embeddings == 131072);
  rc = load("mistral-nowin", "{\"model_type\":\"mistral\"," BASE ",\"num_attention_heads\":4,\"sliding_window\":null}",
            &c, err);
  CHECK_MSG(rc == 0 && c.sliding_window == 0, "%s", err);
  rc = load("mistral-win", "{\"model_type\":\"mistral\"," BASE ",\"num_attention_heads\":4,\"sliding_window\":512}",
            &c, err);
  CHECK_MSG(rc == 0 && c.sliding_window == 512, "%s", err);

  /* qwen2: q/k/v biases always; the window only with use_sliding_window */
  rc = load("qwen2", "{\"model_type\":\"qwen2\"," BASE ",\"num_attention_heads\":4,\"num_key_value_heads\":2,"
            "\"sliding_window\":4096,\"use_sliding_window\":false,\"tie_word_embeddings\":true}",
            &c, err);
  CHECK_MSG(rc == 0, "%s", err);
  CHECK(c.attention_bias == 1 && c.sliding_window == 0 && c.tie_word_embeddings == 1);
  CHECK(c.max_position_embeddings == 32768);
  rc = load("qwen2-win", "{\"model_type\":\"qwen2\"," BASE ",\"num_attention_heads\":4,"
            "\"sliding_window\":1024,\"use_sliding_window\":true}", &c, err);
  CHECK_MSG(rc == 0 && c.sliding_window == 1024, "%s", err);
}

static void expect_error(const char *name, const char *body, const char *want) {
  poc_config c;
  char err[POC_ERR_LEN] = "";
  int rc = load(name, body, &c, err);
  CHECK_MSG(rc == -1, "%s: accepted", name);
  CHECK_MSG(strstr(err, "config.json") != NULL, "%s: message does not name the file: %s", name, err);
  CHECK_MSG(strstr(err, want) != NULL, "%s: message '%s' lacks '%s'", name, err, want);
}

static void test_errors(void) {
  /* the exact message of the brief, for an unsupported model type */
  poc_config c;
  char err[POC_ERR_LEN] = "";
  const char *dir = mio_dir("gpt2");
  char path[1300];
  snprintf(path, sizeof path, "%s/config.json", dir);
  mio_write_text(path, "{\"model_type\":\"gpt2\"," BASE ",\"num_attention_heads\":4}");
  CHECK(poc_config_load(dir, &c, err) == -1);
  char want[1400];
  snprintf(want, sizeof want, "%s: unsupported model_type 'gpt2' (poc supports llama, mistral, qwen2)", path);
  CHECK_MSG(!strcmp(err, want), "got '%s'", err);

  expect_error("no-type", "{" BASE ",\"num_attention_heads\":4}", "missing required field 'model_type'");
  expect_error("no-hidden",
               "{\"model_type\":\"llama\",\"intermediate_size\":128,\"num_hidden_layers\":2,"
               "\"vocab_size\":300,\"num_attention_heads\":4}",
               "missing required field 'hidden_size'");
  expect_error("frac", "{\"model_type\":\"llama\"," BASE ",\"num_attention_heads\":4.5}",
               "'num_attention_heads' must be an integer, got 4.5");
  expect_error("string-int", "{\"model_type\":\"llama\"," BASE ",\"num_attention_heads\":\"4\"}",
               "'num_attention_heads' must be an integer, got \"4\"");
  expect_error("huge-int", "{\"model_type\":\"llama\"," BASE ",\"num_attention_heads\":1e12}",
               "must be an integer");
  expect_error("zero", "{\"model_type\":\"llama\"," BASE ",\"num_attention_heads\":0}",
               "'num_attention_heads' must be positive, got 0");
  expect_error("indivisible", "{\"model_type\":\"llama\"," BASE ",\"num_attention_heads\":5,\"num_key_value_heads\":5}",
               "'hidden_size' = 64 is not divisible by num_attention_heads = 5");
  expect_error("gqa", "{\"model_type\":\"llama\"," BASE ",\"num_attention_heads\":8,\"num_key_value_heads\":3}",
               "'num_attention_heads' = 8 is not a multiple of num_key_value_heads = 3");
  const char *kinds[] = {"linear", "dynamic", "yarn"};
  for (int i = 0; i < 3; i++) {
    char body[512], nm[32], w[128];
    snprintf(body, sizeof body,
             "{\"model_type\":\"llama\"," BASE ",\"num_attention_heads\":4,"
             "\"rope_scaling\":{\"type\":\"%s\",\"factor\":2.0}}", kinds[i]);
    snprintf(nm, sizeof nm, "rope-%s", kinds[i]);
    snprintf(w, sizeof w, "unsupported rope_scaling.rope_type \"%s\"", kinds[i]);
    expect_error(nm, body, w);
  }
  expect_error("rope5-yarn",
               "{\"model_type\":\"qwen2\"," BASE ",\"num_attention_heads\":4,"
               "\"rope_parameters\":{\"rope_type\":\"yarn\",\"rope_theta\":1e6,\"factor\":4.0}}",
               "unsupported rope_parameters.rope_type \"yarn\"");
  expect_error("llama3-incomplete",
               "{\"model_type\":\"llama\"," BASE ",\"num_attention_heads\":4,"
               "\"rope_scaling\":{\"rope_type\":\"llama3\",\"factor\":8.0}}",
               "missing required field 'low_freq_factor'");
  expect_error("gelu", "{\"model_type\":\"llama\"," BASE ",\"num_attention_heads\":4,\"hidden_act\":\"gelu\"}",
               "unsupported hidden_act \"gelu\"");
  expect_error("mlp-bias", "{\"model_type\":\"llama\"," BASE ",\"num_attention_heads\":4,\"mlp_bias\":true}",
               "mlp_bias");
  expect_error("bias-type", "{\"model_type\":\"llama\"," BASE ",\"num_attention_heads\":4,\"attention_bias\":1}",
               "'attention_bias' must be true or false, got 1");
  expect_error("eos", "{\"model_type\":\"llama\"," BASE ",\"num_attention_heads\":4,\"eos_token_id\":[\"x\"]}",
               "'eos_token_id' must be an integer");
  expect_error("dtype", "{\"model_type\":\"llama\"," BASE ",\"num_attention_heads\":4,\"torch_dtype\":\"int8\"}",
               "unsupported dtype 'int8'");
  expect_error("eps", "{\"model_type\":\"llama\"," BASE ",\"num_attention_heads\":4,\"rms_norm_eps\":\"small\"}",
               "'rms_norm_eps' must be a number");
  /* every field that would break the model later is refused at load, by name */
  expect_error("window-1", "{\"model_type\":\"mistral\"," BASE ",\"num_attention_heads\":4,\"sliding_window\":1}",
               "'sliding_window' must be at least 2");
  expect_error("window-neg", "{\"model_type\":\"mistral\"," BASE ",\"num_attention_heads\":4,\"sliding_window\":-4}",
               "'sliding_window' must be at least 2");
  expect_error("eos-vocab", "{\"model_type\":\"llama\"," BASE ",\"num_attention_heads\":4,\"eos_token_id\":300}",
               "'eos_token_id' = 300 is outside the vocabulary");
  expect_error("bos-neg", "{\"model_type\":\"llama\"," BASE ",\"num_attention_heads\":4,\"bos_token_id\":-7}",
               "'bos_token_id' = -7 is outside the vocabulary");
  expect_error("theta-0", "{\"model_type\":\"llama\"," BASE ",\"num_attention_heads\":4,\"rope_theta\":0}",
               "'rope_theta' must be positive");
  expect_error("eps-0", "{\"model_type\":\"llama\"," BASE ",\"num_attention_heads\":4,\"rms_norm_eps\":0}",
               "'rms_norm_eps' must be positive");
  expect_error("eps-inf", "{\"model_type\":\"llama\"," BASE ",\"num_attention_heads\":4,\"rms_norm_eps\":1e999}",
               "'rms_norm_eps' must be a number");
  expect_error("vocab-0", "{\"model_type\":\"llama\",\"hidden_size\":64,\"intermediate_size\":128,"
               "\"num_hidden_layers\":2,\"vocab_size\":0,\"num_attention_heads\":4}",
               "'vocab_size' must be positive, got 0");
  expect_error("head-odd", "{\"model_type\":\"llama\"," BASE ",\"num_attention_heads\":4,\"head_dim\":7}",
               "'head_dim' must be positive and even");
  expect_error("hidden-odd-head", "{\"model_type\":\"llama\",\"hidden_size\":60,\"intermediate_size\":128,"
               "\"num_hidden_layers\":2,\"vocab_size\":300,\"num_attention_heads\":4}",
               "odd head dimension 15");
  expect_error("badjson", "{\"model_type\":\"llama\",\n\"hidden_size\":64,,}", "config.json:2: not valid JSON");
  expect_error("array", "[1,2]", "not a JSON object");
  CHECK(poc_config_load(mio_path("no-such-model"), &c, err) == -1 && strstr(err, "config.json: cannot open"));
}

static void test_roundtrip(void) {
  poc_config a, b;
  char err[POC_ERR_LEN] = "";
  int rc = load("rt-src",
                "{\"model_type\":\"qwen2\"," BASE ",\"num_attention_heads\":8,\"num_key_value_heads\":4,"
                "\"head_dim\":16,\"max_position_embeddings\":512,\"rms_norm_eps\":1e-5,"
                "\"rope_theta\":1000000.0,\"tie_word_embeddings\":true,\"use_sliding_window\":true,"
                "\"sliding_window\":256,\"bos_token_id\":3,\"eos_token_id\":4,\"torch_dtype\":\"float16\"}",
                &a, err);
  CHECK_MSG(rc == 0, "%s", err);
  const char *dst = mio_dir("rt-dst");
  CHECK_MSG(poc_config_save(dst, &a, err) == 0, "%s", err);
  CHECK_MSG(poc_config_load(dst, &b, err) == 0, "%s", err);
  CHECK(memcmp(&a, &b, sizeof a) == 0);

  rc = load("rt-src2",
            "{\"model_type\":\"llama\"," BASE ",\"num_attention_heads\":4,\"num_key_value_heads\":1,"
            "\"rope_theta\":500000.0,\"rope_scaling\":{\"rope_type\":\"llama3\",\"factor\":32.0,"
            "\"low_freq_factor\":1.0,\"high_freq_factor\":4.0,\"original_max_position_embeddings\":8192},"
            "\"attention_bias\":true,\"eos_token_id\":[5,6]}",
            &a, err);
  CHECK_MSG(rc == 0, "%s", err);
  dst = mio_dir("rt-dst2");
  CHECK_MSG(poc_config_save(dst, &a, err) == 0, "%s", err);
  CHECK_MSG(poc_config_load(dst, &b, err) == 0, "%s", err);
  CHECK(memcmp(&a, &b, sizeof a) == 0);
  CHECK(b.rope_llama3 && b.rope_factor == 32 && b.attention_bias && b.eos_token_id == 5);

  rc = load("rt-src3", "{\"model_type\":\"mistral\"," BASE ",\"num_attention_heads\":4}", &a, err);
  dst = mio_dir("rt-dst3");
  CHECK(rc == 0 && poc_config_save(dst, &a, err) == 0 && poc_config_load(dst, &b, err) == 0);
  CHECK(memcmp(&a, &b, sizeof a) == 0 && b.sliding_window == 4096);

  strcpy(a.model_type, "gpt2");
  CHECK(poc_config_save(dst, &a, err) == -1 && strstr(err, "gpt2"));
}

int main(int argc, char **argv) {
  mio_init(argc, argv, "config");
  test_llama();
  test_mistral_qwen2();
  test_errors();
  test_roundtrip();
  return check_summary("model_io_config");
}
