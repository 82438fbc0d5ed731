/* config.c — Hugging Face config.json in and out for llama, mistral and qwen2.
 *
 * Reading accepts both spellings transformers has used: the 4.x keys (`rope_theta`,
 * `rope_scaling`, `torch_dtype`) and the 5.x ones (`rope_parameters`, `dtype`).
 * Defaults are the ones each transformers config class uses, so a file that leaves a
 * field out means what it means to HF. Writing emits both spellings, so either
 * generation of transformers loads the same architecture.
 */
#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cjson/cJSON.h>

#include "pocrt.h"
#include "st.h"

typedef struct cfg_reader {
  const char *path;
  const cJSON *root;
  char *err;
} cfg_reader;

static const cJSON *get(const cJSON *o, const char *key) {
  return cJSON_GetObjectItemCaseSensitive(o, key);
}

/* A short rendering of a JSON value for messages: `64.5`, `"64"`, `null`. */
static void show(const cJSON *v, char *buf, size_t n) {
  char *s = v ? cJSON_PrintUnformatted(v) : NULL;
  snprintf(buf, n, "%.60s%s", s ? s : "?", s && strlen(s) > 60 ? "..." : "");
  free(s);
}

/* An integer-valued JSON number within int range. */
static int as_int(cfg_reader *r, const char *key, const cJSON *v, int *out) {
  double d = cJSON_IsNumber(v) ? v->valuedouble : NAN;
  if (!(d == floor(d)) || d < -2147483648.0 || d > 2147483647.0) {
    char b[80];
    show(v, b, sizeof b);
    snprintf(r->err, POC_ERR_LEN, "%s: '%s' must be an integer, got %s", r->path, key, b);
    return -1;
  }
  *out = (int)d;
  return 0;
}

/* Reads an integer field. Absent or null: `def` when the field is optional (has_def),
 * else an error. */
static int get_int(cfg_reader *r, const cJSON *obj, const char *key, int has_def, int def,
                   int *out) {
  const cJSON *v = get(obj, key);
  if (!v || cJSON_IsNull(v)) {
    if (has_def) {
      *out = def;
      return 0;
    }
    snprintf(r->err, POC_ERR_LEN, "%s: missing required field '%s'", r->path, key);
    return -1;
  }
  return as_int(r, key, v, out);
}

static int get_num(cfg_reader *r, const cJSON *obj, const char *key, int has_def, double def,
                   double *out) {
  const cJSON *v = get(obj, key);
  if (!v || cJSON_IsNull(v)) {
    if (has_def) {
      *out = def;
      return 0;
    }
    snprintf(r->err, POC_ERR_LEN, "%s: missing required field '%s'", r->path, key);
    return -1;
  }
  if (!cJSON_IsNumber(v) || !isfinite(v->valuedouble)) {
    char b[80];
    show(v, b, sizeof b);
    snprintf(r->err, POC_ERR_LEN, "%s: '%s' must be a number, got %s", r->path, key, b);
    return -1;
  }
  *out = v->valuedouble;
  return 0;
}

static int get_bool(cfg_reader *r, const cJSON *obj, const char *key, int def, int *out) {
  const cJSON *v = get(obj, key);
  if (!v || cJSON_IsNull(v)) {
    *out = def;
    return 0;
  }
  if (!cJSON_IsBool(v)) {
    char b[80];
    show(v, b, sizeof b);
    snprintf(r->err, POC_ERR_LEN, "%s: '%s' must be true or false, got %s", r->path, key, b);
    return -1;
  }
  *out = cJSON_IsTrue(v);
  return 0;
}

/* bos/eos: an integer, null or absent (-1), or a list whose first entry is used. */
static int get_token(cfg_reader *r, const char *key, int *out) {
  const cJSON *v = get(r->root, key);
  if (cJSON_IsArray(v)) v = v->child;
  if (!v || cJSON_IsNull(v)) {
    *out = -1;
    return 0;
  }
  return as_int(r, key, v, out);
}

static int fail(cfg_reader *r, const char *fmt, const char *key, long long a, long long b) {
  char msg[256];
  snprintf(msg, sizeof msg, fmt, key, a, b);
  snprintf(r->err, POC_ERR_LEN, "%s: %s", r->path, msg);
  return -1;
}

/* Rope: rope_theta at the top (4.x) or inside rope_parameters (5.x); scaling in
 * rope_scaling (4.x) or rope_parameters (5.x), keyed by rope_type (or the older `type`).
 * Only llama3 scaling is implemented; default/none means plain RoPE. */
static int read_rope(cfg_reader *r, poc_config *c) {
  const cJSON *params = get(r->root, "rope_parameters");
  const cJSON *scaling = get(r->root, "rope_scaling");
  const char *field = "rope_scaling";
  if (params && !cJSON_IsNull(params) && !cJSON_IsObject(params)) {
    snprintf(r->err, POC_ERR_LEN, "%s: 'rope_parameters' must be an object", r->path);
    return -1;
  }
  if (scaling && !cJSON_IsNull(scaling) && !cJSON_IsObject(scaling)) {
    snprintf(r->err, POC_ERR_LEN, "%s: 'rope_scaling' must be an object or null", r->path);
    return -1;
  }
  const cJSON *theta_from = cJSON_IsObject(params) && get(params, "rope_theta") ? params : r->root;
  if (get_num(r, theta_from, "rope_theta", 1, 10000.0, &c->rope_theta)) return -1;
  if (!cJSON_IsObject(scaling)) {
    scaling = cJSON_IsObject(params) ? params : NULL;
    field = "rope_parameters";
  }
  c->rope_llama3 = 0;
  c->rope_factor = 1;
  c->rope_low_freq_factor = 1;
  c->rope_high_freq_factor = 4;
  c->rope_original_max_position = c->max_position_embeddings;
  if (!scaling) return 0;
  const cJSON *type = get(scaling, "rope_type");
  if (!type) type = get(scaling, "type");
  if (!type || cJSON_IsNull(type) || (cJSON_IsString(type) && !strcmp(type->valuestring, "default")))
    return 0;
  if (!cJSON_IsString(type) || strcmp(type->valuestring, "llama3")) {
    char b[80];
    show(type, b, sizeof b);
    snprintf(r->err, POC_ERR_LEN,
             "%s: unsupported %s.rope_type %s (poc supports llama3 scaling or none)", r->path,
             field, b);
    return -1;
  }
  c->rope_llama3 = 1;
  if (get_num(r, scaling, "factor", 0, 0, &c->rope_factor) ||
      get_num(r, scaling, "low_freq_factor", 0, 0, &c->rope_low_freq_factor) ||
      get_num(r, scaling, "high_freq_factor", 0, 0, &c->rope_high_freq_factor) ||
      get_int(r, scaling, "original_max_position_embeddings", 0, 0, &c->rope_original_max_position))
    return -1;
  if (!(c->rope_factor > 0) || !(c->rope_low_freq_factor > 0) ||
      !(c->rope_high_freq_factor > c->rope_low_freq_factor) || c->rope_original_max_position <= 0) {
    snprintf(r->err, POC_ERR_LEN,
             "%s: %s for llama3 needs factor > 0, high_freq_factor > low_freq_factor > 0 and "
             "original_max_position_embeddings > 0 (got %g, %g, %g, %d)",
             r->path, field, c->rope_factor, c->rope_high_freq_factor, c->rope_low_freq_factor,
             c->rope_original_max_position);
    return -1;
  }
  return 0;
}

/* Sliding window: mistral's `sliding_window` (HF default 4096, null = none); qwen2 uses
 * one only when `use_sliding_window` is true. A window applied to some layers only
 * (qwen2's max_window_layers) is stricter than needed, but the runtime refuses sequences
 * longer than the window anyway, and below it every layer computes the same thing. */
static int read_window(cfg_reader *r, poc_config *c) {
  c->sliding_window = 0;
  int on = 1;
  if (!strcmp(c->model_type, "llama")) return 0;
  if (!strcmp(c->model_type, "qwen2") && get_bool(r, r->root, "use_sliding_window", 0, &on)) return -1;
  if (!on) return 0;
  const cJSON *v = get(r->root, "sliding_window");
  if (v && cJSON_IsNull(v)) return 0;
  if (get_int(r, r->root, "sliding_window", 1, 4096, &c->sliding_window)) return -1;
  /* 0 has always meant "no window" here; 1 would let a token see only itself, which no
   * trained model means. Windows shorter than the run's sequences are refused at setup,
   * where the data's longest sequence is known. */
  if (c->sliding_window < 0 || c->sliding_window == 1)
    return fail(r, "'%s' must be at least 2 (or null for none), got %lld", "sliding_window",
                c->sliding_window, 0);
  return 0;
}

/* The head: `architectures` naming a *ForSequenceClassification class makes the model a
 * classifier, whose label count is `num_labels` or, as transformers writes it, the size
 * of `id2label` (transformers' default is 2). poc's reward head is one score per
 * sequence, so only num_labels = 1 is accepted. */
static int read_head(cfg_reader *r, poc_config *c) {
  const cJSON *archs = get(r->root, "architectures"), *a;
  int cls = 0;
  if (!cJSON_IsArray(archs)) archs = NULL;
  cJSON_ArrayForEach(a, archs) {
    const char *suf = "ForSequenceClassification";
    size_t n = cJSON_IsString(a) ? strlen(a->valuestring) : 0, k = strlen(suf);
    if (n >= k && !strcmp(a->valuestring + n - k, suf)) cls = 1;
  }
  if (!cls) return 0;
  const cJSON *nl = get(r->root, "num_labels"), *ids = get(r->root, "id2label");
  if (nl && !cJSON_IsNull(nl)) {
    if (as_int(r, "num_labels", nl, &c->num_labels)) return -1;
  } else if (cJSON_IsObject(ids)) {
    c->num_labels = cJSON_GetArraySize(ids);
  } else {
    c->num_labels = 2;
  }
  if (c->num_labels != 1) {
    snprintf(r->err, POC_ERR_LEN,
             "%s: a sequence-classification head with %d labels (tensor 'score.weight' [%d, "
             "hidden_size]); poc's reward head has exactly one (num_labels = 1)",
             r->path, c->num_labels, c->num_labels);
    return -1;
  }
  return 0;
}

static int read_config(cfg_reader *r, poc_config *c) {
  const cJSON *root = r->root;
  memset(c, 0, sizeof *c);
  const cJSON *mt = get(root, "model_type");
  if (!mt) {
    snprintf(r->err, POC_ERR_LEN, "%s: missing required field 'model_type'", r->path);
    return -1;
  }
  if (!cJSON_IsString(mt) || (strcmp(mt->valuestring, "llama") && strcmp(mt->valuestring, "mistral") &&
                              strcmp(mt->valuestring, "qwen2"))) {
    char b[80];
    if (cJSON_IsString(mt)) snprintf(b, sizeof b, "'%.60s'", mt->valuestring);
    else show(mt, b, sizeof b);
    snprintf(r->err, POC_ERR_LEN, "%s: unsupported model_type %s (poc supports llama, mistral, qwen2)",
             r->path, b);
    return -1;
  }
  snprintf(c->model_type, sizeof c->model_type, "%s", mt->valuestring);
  int is_llama = !strcmp(c->model_type, "llama"), is_qwen2 = !strcmp(c->model_type, "qwen2");

  const cJSON *act = get(root, "hidden_act");
  if (act && !(cJSON_IsString(act) && !strcmp(act->valuestring, "silu"))) {
    char b[80];
    show(act, b, sizeof b);
    snprintf(r->err, POC_ERR_LEN, "%s: unsupported hidden_act %s (poc supports \"silu\")", r->path, b);
    return -1;
  }
  int mlp_bias = 0;
  if (get_bool(r, root, "mlp_bias", 0, &mlp_bias)) return -1;
  if (mlp_bias) {
    snprintf(r->err, POC_ERR_LEN, "%s: unsupported mlp_bias true (poc's MLP has no biases)", r->path);
    return -1;
  }

  int max_pos_default = is_llama ? 2048 : is_qwen2 ? 32768 : 131072;
  if (get_int(r, root, "vocab_size", 0, 0, &c->vocab_size) ||
      get_int(r, root, "hidden_size", 0, 0, &c->hidden_size) ||
      get_int(r, root, "intermediate_size", 0, 0, &c->intermediate_size) ||
      get_int(r, root, "num_hidden_layers", 0, 0, &c->num_hidden_layers) ||
      get_int(r, root, "num_attention_heads", 0, 0, &c->num_attention_heads) ||
      get_int(r, root, "max_position_embeddings", 1, max_pos_default, &c->max_position_embeddings) ||
      get_num(r, root, "rms_norm_eps", 1, 1e-6, &c->rms_norm_eps))
    return -1;
  const char *pos[] = {"vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers",
                       "num_attention_heads", "max_position_embeddings"};
  const int val[] = {c->vocab_size, c->hidden_size, c->intermediate_size, c->num_hidden_layers,
                     c->num_attention_heads, c->max_position_embeddings};
  for (int i = 0; i < 6; i++)
    if (val[i] <= 0) return fail(r, "'%s' must be positive, got %lld", pos[i], val[i], 0);
  if (!(c->rms_norm_eps > 0)) {
    snprintf(r->err, POC_ERR_LEN, "%s: 'rms_norm_eps' must be positive, got %g", r->path, c->rms_norm_eps);
    return -1;
  }
  if (get_int(r, root, "num_key_value_heads", 1, c->num_attention_heads, &c->num_key_value_heads))
    return -1;
  if (c->num_key_value_heads <= 0)
    return fail(r, "'%s' must be positive, got %lld", "num_key_value_heads", c->num_key_value_heads, 0);
  if (c->num_attention_heads % c->num_key_value_heads)
    return fail(r, "'%s' = %lld is not a multiple of num_key_value_heads = %lld", "num_attention_heads",
                c->num_attention_heads, c->num_key_value_heads);
  const cJSON *hd = get(root, "head_dim");
  if (hd && !cJSON_IsNull(hd)) {
    if (get_int(r, root, "head_dim", 0, 0, &c->head_dim)) return -1;
    if (c->head_dim <= 0 || c->head_dim % 2)
      return fail(r, "'%s' must be positive and even, got %lld", "head_dim", c->head_dim, 0);
  } else {
    if (c->hidden_size % c->num_attention_heads)
      return fail(r, "'%s' = %lld is not divisible by num_attention_heads = %lld (and no head_dim is given)",
                  "hidden_size", c->hidden_size, c->num_attention_heads);
    c->head_dim = c->hidden_size / c->num_attention_heads;
    if (c->head_dim % 2)
      return fail(r, "'%s' gives an odd head dimension %lld; RoPE needs it even", "hidden_size",
                  c->head_dim, 0);
  }
  if (read_rope(r, c)) return -1;
  if (!(c->rope_theta > 0)) {
    snprintf(r->err, POC_ERR_LEN, "%s: 'rope_theta' must be positive, got %g", r->path, c->rope_theta);
    return -1;
  }
  if (get_bool(r, root, "tie_word_embeddings", 0, &c->tie_word_embeddings)) return -1;
  if (is_qwen2) c->attention_bias = 1;
  else if (is_llama && get_bool(r, root, "attention_bias", 0, &c->attention_bias)) return -1;
  c->o_proj_bias = is_llama && c->attention_bias;
  if (read_window(r, c)) return -1;
  if (get_token(r, "bos_token_id", &c->bos_token_id) || get_token(r, "eos_token_id", &c->eos_token_id) ||
      get_token(r, "pad_token_id", &c->pad_token_id) || read_head(r, c))
    return -1;
  /* generation compares sampled ids with eos, and data ids are checked against vocab_size:
   * a special id outside the vocabulary can never be produced or embedded */
  if (c->bos_token_id >= c->vocab_size || c->bos_token_id < -1)
    return fail(r, "'%s' = %lld is outside the vocabulary (vocab_size = %lld)", "bos_token_id",
                c->bos_token_id, c->vocab_size);
  if (c->eos_token_id >= c->vocab_size || c->eos_token_id < -1)
    return fail(r, "'%s' = %lld is outside the vocabulary (vocab_size = %lld)", "eos_token_id",
                c->eos_token_id, c->vocab_size);
  /* 5.x writes `dtype`, 4.x `torch_dtype`; the weights carry their own dtype anyway. */
  const cJSON *dt = get(root, "dtype");
  if (!cJSON_IsString(dt)) dt = get(root, "torch_dtype");
  snprintf(c->torch_dtype, sizeof c->torch_dtype, "%s", "float32");
  if (cJSON_IsString(dt)) {
    const char *s = dt->valuestring;
    if (!strncmp(s, "torch.", 6)) s += 6;
    if (strcmp(s, "bfloat16") && strcmp(s, "float16") && strcmp(s, "float32") && strcmp(s, "float64")) {
      snprintf(r->err, POC_ERR_LEN, "%s: unsupported dtype '%.40s' (bfloat16, float16, float32, float64)",
               r->path, dt->valuestring);
      return -1;
    }
    snprintf(c->torch_dtype, sizeof c->torch_dtype, "%s", s);
  }
  return 0;
}

static char *config_path(const char *dir) {
  size_t n = strlen(dir);
  char *p = malloc(n + 16);
  if (p) snprintf(p, n + 16, "%s%sconfig.json", dir, n && dir[n - 1] == '/' ? "" : "/");
  return p;
}

int poc_config_load(const char *model_dir, poc_config *cfg, char *err) {
  char *path = config_path(model_dir);
  if (!path) {
    snprintf(err, POC_ERR_LEN, "%s: out of memory", model_dir);
    return -1;
  }
  FILE *fp = st_fopen_regular(path, err);
  if (!fp) {
    free(path);
    return -1;
  }
  char *text = NULL;
  size_t len = 0, cap = 0;
  for (;;) {
    if (len + 4096 + 1 > cap) {
      cap = cap ? cap * 2 : 8192;
      char *nt = realloc(text, cap);
      if (!nt || cap > (64u << 20)) {
        free(nt ? nt : text);
        fclose(fp);
        snprintf(err, POC_ERR_LEN, "%s: %s", path, nt ? "file too large for a config" : "out of memory");
        free(path);
        return -1;
      }
      text = nt;
    }
    size_t got = fread(text + len, 1, 4096, fp);
    len += got;
    if (got < 4096) break;
  }
  fclose(fp);
  text[len] = 0;
  cJSON *root = cJSON_ParseWithLength(text, len);
  int rc = -1;
  if (!root) {
    const char *at = cJSON_GetErrorPtr();
    int line = 1;
    for (const char *p = text; at && p < at && p < text + len; p++) line += *p == '\n';
    snprintf(err, POC_ERR_LEN, "%s:%d: not valid JSON", path, line);
  } else if (!cJSON_IsObject(root)) {
    snprintf(err, POC_ERR_LEN, "%s: not a JSON object", path);
  } else {
    cfg_reader r = {path, root, err};
    rc = read_config(&r, cfg);
  }
  cJSON_Delete(root);
  free(text);
  free(path);
  return rc;
}

static void add_token(cJSON *o, const char *key, int id) {
  if (id >= 0) cJSON_AddNumberToObject(o, key, id);
  else cJSON_AddNullToObject(o, key);
}

/* The rope block in the 5.x shape; the legacy rope_scaling is the same minus theta. */
static cJSON *rope_block(const poc_config *c, int with_theta) {
  if (!c->rope_llama3 && !with_theta) return cJSON_CreateNull();
  cJSON *o = cJSON_CreateObject();
  cJSON_AddStringToObject(o, "rope_type", c->rope_llama3 ? "llama3" : "default");
  if (with_theta) cJSON_AddNumberToObject(o, "rope_theta", c->rope_theta);
  if (c->rope_llama3) {
    cJSON_AddNumberToObject(o, "factor", c->rope_factor);
    cJSON_AddNumberToObject(o, "low_freq_factor", c->rope_low_freq_factor);
    cJSON_AddNumberToObject(o, "high_freq_factor", c->rope_high_freq_factor);
    cJSON_AddNumberToObject(o, "original_max_position_embeddings", c->rope_original_max_position);
  }
  return o;
}

int poc_config_save(const char *model_dir, const poc_config *c, char *err) {
  const char *arch;
  int cls = c->num_labels > 0;
  if (!strcmp(c->model_type, "llama")) arch = cls ? "LlamaForSequenceClassification" : "LlamaForCausalLM";
  else if (!strcmp(c->model_type, "mistral")) arch = cls ? "MistralForSequenceClassification" : "MistralForCausalLM";
  else if (!strcmp(c->model_type, "qwen2")) arch = cls ? "Qwen2ForSequenceClassification" : "Qwen2ForCausalLM";
  else {
    snprintf(err, POC_ERR_LEN, "%s: cannot save model_type '%s'", model_dir, c->model_type);
    return -1;
  }
  cJSON *o = cJSON_CreateObject();
  cJSON *archs = cJSON_AddArrayToObject(o, "architectures");
  cJSON_AddItemToArray(archs, cJSON_CreateString(arch));
  cJSON_AddStringToObject(o, "model_type", c->model_type);
  cJSON_AddNumberToObject(o, "vocab_size", c->vocab_size);
  cJSON_AddNumberToObject(o, "hidden_size", c->hidden_size);
  cJSON_AddNumberToObject(o, "intermediate_size", c->intermediate_size);
  cJSON_AddNumberToObject(o, "num_hidden_layers", c->num_hidden_layers);
  cJSON_AddNumberToObject(o, "num_attention_heads", c->num_attention_heads);
  cJSON_AddNumberToObject(o, "num_key_value_heads", c->num_key_value_heads);
  cJSON_AddNumberToObject(o, "head_dim", c->head_dim);
  cJSON_AddNumberToObject(o, "max_position_embeddings", c->max_position_embeddings);
  cJSON_AddNumberToObject(o, "rms_norm_eps", c->rms_norm_eps);
  cJSON_AddStringToObject(o, "hidden_act", "silu");
  cJSON_AddNumberToObject(o, "rope_theta", c->rope_theta);
  cJSON_AddItemToObject(o, "rope_scaling", rope_block(c, 0));
  cJSON_AddItemToObject(o, "rope_parameters", rope_block(c, 1));
  cJSON_AddBoolToObject(o, "tie_word_embeddings", c->tie_word_embeddings);
  if (!strcmp(c->model_type, "llama")) {
    cJSON_AddBoolToObject(o, "attention_bias", c->attention_bias);
    cJSON_AddBoolToObject(o, "mlp_bias", 0);
  }
  if (!strcmp(c->model_type, "mistral")) {
    if (c->sliding_window > 0) cJSON_AddNumberToObject(o, "sliding_window", c->sliding_window);
    else cJSON_AddNullToObject(o, "sliding_window");
  }
  if (!strcmp(c->model_type, "qwen2")) {
    cJSON_AddBoolToObject(o, "use_sliding_window", c->sliding_window > 0);
    if (c->sliding_window > 0) cJSON_AddNumberToObject(o, "sliding_window", c->sliding_window);
    else cJSON_AddNullToObject(o, "sliding_window");
    cJSON_AddNumberToObject(o, "max_window_layers", c->num_hidden_layers);
  }
  add_token(o, "bos_token_id", c->bos_token_id);
  add_token(o, "eos_token_id", c->eos_token_id);
  add_token(o, "pad_token_id", c->pad_token_id);
  if (cls) { /* labels as transformers writes them, and their count said outright */
    cJSON_AddNumberToObject(o, "num_labels", c->num_labels);
    cJSON *i2l = cJSON_AddObjectToObject(o, "id2label"), *l2i = cJSON_AddObjectToObject(o, "label2id");
    for (int i = 0; i < c->num_labels; i++) {
      char k[16], v[24];
      snprintf(k, sizeof k, "%d", i);
      snprintf(v, sizeof v, "LABEL_%d", i);
      cJSON_AddStringToObject(i2l, k, v);
      cJSON_AddNumberToObject(l2i, v, i);
    }
  }
  const char *dt = c->torch_dtype[0] ? c->torch_dtype : "float32";
  cJSON_AddStringToObject(o, "torch_dtype", dt);
  cJSON_AddStringToObject(o, "dtype", dt);
  char *text = cJSON_Print(o);
  cJSON_Delete(o);
  char *path = config_path(model_dir);
  int rc = -1;
  if (!text || !path) snprintf(err, POC_ERR_LEN, "%s: out of memory", model_dir);
  else {
    size_t n = strlen(text);
    char *withnl = malloc(n + 2);
    if (withnl) {
      memcpy(withnl, text, n);
      memcpy(withnl + n, "\n", 2);
      rc = st_write_text_atomic(path, withnl, err);
      free(withnl);
    } else snprintf(err, POC_ERR_LEN, "%s: out of memory", model_dir);
  }
  free(text);
  free(path);
  return rc;
}
