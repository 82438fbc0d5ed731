/* test_config.c — configs and layouts of reward (sequence-classification) models, and a
 * reward model started from a causal LM's folder:
 *   - `architectures` *ForSequenceClassification with `num_labels`, or a one-entry
 *     `id2label`, is a classifier of 1 label; with neither it has transformers' default of
 *     2, and 2 or more labels are an error naming the file and score.weight;
 *   - saving writes the *ForSequenceClassification class of the model type, num_labels,
 *     id2label, pad_token_id, and reads back the same;
 *   - the classifier layout is the causal one with score.weight [1, H] in lm_head's place;
 *   - poc_reward_load_f32 from a causal folder keeps its transformer and draws the same
 *     fresh head every time, N(0, 0.02²).
 * argv[1]: a causal LM folder (examples/tiny). */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "check.h"
#include "pocrt.h"

static char dir[256];

static int load_with(const char *json, poc_config *c, char *err) {
  char path[300];
  snprintf(path, sizeof path, "%s/config.json", dir);
  FILE *f = fopen(path, "w");
  fputs(json, f);
  fclose(f);
  return poc_config_load(dir, c, err);
}

#define BASE                                                                              \
  "\"model_type\": \"llama\", \"vocab_size\": 32, \"hidden_size\": 16, "                  \
  "\"intermediate_size\": 24, \"num_hidden_layers\": 2, \"num_attention_heads\": 4, "     \
  "\"num_key_value_heads\": 2, \"max_position_embeddings\": 64, \"pad_token_id\": 0"

static void test_heads(void) {
  char err[POC_ERR_LEN] = "";
  poc_config c;
  CHECK(load_with("{" BASE ", \"architectures\": [\"LlamaForCausalLM\"]}", &c, err) == 0);
  CHECK(c.num_labels == 0 && c.pad_token_id == 0);
  CHECK(load_with("{" BASE ", \"architectures\": [\"LlamaForSequenceClassification\"], "
                  "\"num_labels\": 1}", &c, err) == 0);
  CHECK(c.num_labels == 1);
  CHECK(load_with("{" BASE ", \"architectures\": [\"LlamaForSequenceClassification\"], "
                  "\"id2label\": {\"0\": \"LABEL_0\"}}", &c, err) == 0);
  CHECK(c.num_labels == 1);
  err[0] = 0;
  CHECK(load_with("{" BASE ", \"architectures\": [\"LlamaForSequenceClassification\"]}", &c,
                  err) != 0);
  CHECK_MSG(strstr(err, "config.json") && strstr(err, "score.weight") && strstr(err, "2 labels"),
            "%s", err);
  err[0] = 0;
  CHECK(load_with("{" BASE ", \"architectures\": [\"Qwen2ForSequenceClassification\"], "
                  "\"num_labels\": 3}", &c, err) != 0);
  CHECK_MSG(strstr(err, "3 labels") != NULL, "%s", err);
}

static void test_save_and_layout(void) {
  char err[POC_ERR_LEN] = "";
  poc_config c, back;
  CHECK(load_with("{" BASE ", \"architectures\": [\"LlamaForSequenceClassification\"], "
                  "\"num_labels\": 1, \"tie_word_embeddings\": false}", &c, err) == 0);
  snprintf(c.model_type, sizeof c.model_type, "qwen2");
  c.attention_bias = 1;
  CHECK_MSG(poc_config_save(dir, &c, err) == 0, "%s", err);
  char path[300], text[4096] = "";
  snprintf(path, sizeof path, "%s/config.json", dir);
  FILE *f = fopen(path, "r");
  size_t n = fread(text, 1, sizeof text - 1, f);
  text[n] = 0;
  fclose(f);
  CHECK(strstr(text, "Qwen2ForSequenceClassification") && strstr(text, "\"num_labels\":") &&
        strstr(text, "LABEL_0") && strstr(text, "\"pad_token_id\":"));
  CHECK_MSG(poc_config_load(dir, &back, err) == 0, "%s", err);
  CHECK(back.num_labels == 1 && back.pad_token_id == 0 && !strcmp(back.model_type, "qwen2"));

  poc_layout cls, causal;
  poc_config cc = c;
  cc.num_labels = 0;
  CHECK(poc_layout_init(&cls, &c, err) == 0 && poc_layout_init(&causal, &cc, err) == 0);
  const poc_tensor_info *s = poc_layout_find(&cls, "score.weight");
  CHECK(s && s->shape[0] == 1 && s->shape[1] == 16 && s == &cls.tensors[cls.n_tensors - 1]);
  CHECK(!poc_layout_find(&cls, "lm_head.weight") && poc_layout_find(&causal, "lm_head.weight"));
  CHECK(cls.n_tensors == causal.n_tensors);
  for (int i = 0; i + 1 < cls.n_tensors; i++)
    CHECK(!strcmp(cls.tensors[i].name, causal.tensors[i].name) &&
          cls.tensors[i].offset == causal.tensors[i].offset);
  poc_model_offsets mo;
  CHECK(poc_layout_offsets(&cls, &mo, err) == 0 && mo.score == s->offset);
  free(mo.layers);
  CHECK(poc_layout_offsets(&causal, &mo, err) == 0 && mo.score == POC_NO_TENSOR);
  free(mo.layers);
  poc_layout_free(&cls);
  poc_layout_free(&causal);
}

static void test_fresh(const char *tiny) {
  char err[POC_ERR_LEN] = "";
  poc_config c;
  int fresh = -1;
  CHECK_MSG(poc_reward_config(tiny, &c, &fresh, err) == 0, "%s", err);
  CHECK(fresh == 1 && c.num_labels == 1);
  poc_layout lay, causal;
  poc_config cc = c;
  cc.num_labels = 0;
  CHECK(poc_layout_init(&lay, &c, err) == 0 && poc_layout_init(&causal, &cc, err) == 0);
  float *a = malloc(lay.n_params * sizeof *a), *b = malloc(lay.n_params * sizeof *b),
        *w = malloc(causal.n_params * sizeof *w);
  CHECK_MSG(poc_reward_load_f32(tiny, &lay, 1, 0, a, err) == 0, "%s", err);
  CHECK(poc_reward_load_f32(tiny, &lay, 1, 0, b, err) == 0);
  CHECK(poc_weights_load_f32(tiny, &causal, w, err) == 0);
  const poc_tensor_info *s = poc_layout_find(&lay, "score.weight");
  CHECK(!memcmp(a, w, s->offset * sizeof *a));            /* the transformer, kept */
  CHECK(!memcmp(a, b, lay.n_params * sizeof *a));         /* the same head each time */
  double m = 0, v = 0;
  for (size_t i = 0; i < s->numel; i++) m += a[s->offset + i];
  m /= (double)s->numel;
  for (size_t i = 0; i < s->numel; i++) v += pow(a[s->offset + i] - m, 2);
  double sd = sqrt(v / (double)s->numel);
  CHECK_MSG(fabs(m) < 0.01 && sd > 0.01 && sd < 0.03, "fresh head: mean %g, sd %g", m, sd);
  /* read as a classifier already (not fresh), the causal folder's tensors do not fit */
  CHECK(poc_reward_load_f32(tiny, &lay, 0, 0, b, err) != 0);
  CHECK_MSG(strstr(err, "model.safetensors") && strstr(err, "lm_head.weight"), "%s", err);
  free(a);
  free(b);
  free(w);
  poc_layout_free(&lay);
  poc_layout_free(&causal);
}

int main(int argc, char **argv) {
  snprintf(dir, sizeof dir, "/tmp/poc-reward-config-XXXXXX");
  if (!mkdtemp(dir)) return 1;
  test_heads();
  test_save_and_layout();
  if (argc > 1) test_fresh(argv[1]);
  char path[300];
  snprintf(path, sizeof path, "%s/config.json", dir);
  unlink(path);
  rmdir(dir);
  return check_summary("reward config");
}
