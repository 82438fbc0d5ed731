/* lora.c — LoRA adapters as files: the adapter layout (PEFT's key names), PEFT's
 * initialisation, an adapter folder in PEFT's format (adapter_config.json +
 * adapter_model.safetensors) read and written, and the merge W + (alpha/r)·B·A.
 * The adapters' math in the model is in model.c.
 *
 * PEFT's layout, for a Llama-family model wrapped by get_peft_model: the adapter of
 * model.layers.N.self_attn.q_proj is saved as
 *   base_model.model.model.layers.N.self_attn.q_proj.lora_A.weight   [r × in]
 *   base_model.model.model.layers.N.self_attn.q_proj.lora_B.weight   [out × r]
 * and adapter_config.json says peft_type "LORA", r, lora_alpha, lora_dropout,
 * target_modules, base_model_name_or_path, bias "none", task_type "CAUSAL_LM".
 */
#include <errno.h>
#include <stdarg.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include <cjson/cJSON.h>

#include "pocrt.h"
#include "st.h"

/* Messages through vsnprintf: a long path is cut rather than overflowing. */
__attribute__((format(printf, 2, 3))) static void lora_err(char *err, const char *fmt, ...) {
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(err, POC_ERR_LEN, fmt, ap);
  va_end(ap);
}

const char *const poc_lora_target_names[POC_LT_N] = {"q_proj", "k_proj", "v_proj", "o_proj",
                                                     "gate_proj", "up_proj", "down_proj"};

void poc_lora_dims(const poc_config *c, int t, int *in, int *out) {
  int H = c->hidden_size, F = c->intermediate_size, qd = c->num_attention_heads * c->head_dim,
      kvd = c->num_key_value_heads * c->head_dim;
  static const int kind[POC_LT_N] = {0, 1, 1, 2, 3, 3, 4};
  switch (kind[t]) {
  case 0: *in = H, *out = qd; break;
  case 1: *in = H, *out = kvd; break;
  case 2: *in = qd, *out = H; break;
  case 3: *in = H, *out = F; break;
  default: *in = F, *out = H; break;
  }
}

void poc_lora_key(char *buf, size_t n, int layer, int target, int b) {
  snprintf(buf, n, "base_model.model.model.layers.%d.%s.%s.lora_%c.weight", layer,
           target < POC_LT_GATE ? "self_attn" : "mlp", poc_lora_target_names[target],
           b ? 'B' : 'A');
}

int poc_lora_layout(const poc_layout *base, const poc_lora_cfg *lc, poc_layout *alay, char *err) {
  const poc_config *c = &base->cfg;
  memset(alay, 0, sizeof *alay);
  alay->cfg = *c;
  if (lc->r < 1) {
    lora_err(err, "LoRA: the rank r must be at least 1 (got %d)", lc->r);
    return -1;
  }
  if (!(lc->targets & ((1u << POC_LT_N) - 1))) {
    lora_err(err, "LoRA: no target projections");
    return -1;
  }
  int per = 0;
  for (int t = 0; t < POC_LT_N; t++) per += (lc->targets >> t & 1) * 2;
  int n = per * c->num_hidden_layers;
  alay->tensors = calloc((size_t)n + 1, sizeof *alay->tensors);
  if (!alay->tensors) {
    lora_err(err, "LoRA: out of memory");
    return -1;
  }
  size_t off = 0;
  for (int l = 0; l < c->num_hidden_layers; l++)
    for (int t = 0; t < POC_LT_N; t++) {
      if (!(lc->targets >> t & 1)) continue;
      int in, out;
      poc_lora_dims(c, t, &in, &out);
      for (int b = 0; b < 2; b++) {
        poc_tensor_info *ti = &alay->tensors[alay->n_tensors++];
        poc_lora_key(ti->name, sizeof ti->name, l, t, b);
        ti->ndim = 2;
        ti->shape[0] = b ? out : lc->r;
        ti->shape[1] = b ? lc->r : in;
        ti->offset = off;
        ti->numel = (size_t)ti->shape[0] * (size_t)ti->shape[1];
        off += ti->numel;
      }
    }
  alay->n_params = off;
  return 0;
}

/* kaiming_uniform_(A, a=√5): gain √(2/(1 + a²)) = √(1/3), bound gain·√(3/fan_in) = 1/√in.
 * Each tensor draws from its own stream (seed, 0x10A, index), so the values do not
 * depend on which other targets are adapted before it in the layout. */
void poc_lora_init(const poc_layout *alay, uint64_t seed, float *a) {
  for (int i = 0; i < alay->n_tensors; i++) {
    const poc_tensor_info *ti = &alay->tensors[i];
    float *p = a + ti->offset;
    int is_b = strstr(ti->name, ".lora_B.") != NULL;
    if (is_b) {
      memset(p, 0, ti->numel * sizeof(float));
      continue;
    }
    double bound = 1.0 / sqrt((double)ti->shape[1]);
    poc_rng r = poc_rng_derive(seed, 0x10A, (uint64_t)i);
    for (size_t k = 0; k < ti->numel; k++)
      p[k] = (float)((2 * poc_rng_uniform(&r) - 1) * bound);
  }
}

/* ---- adapter folders -------------------------------------------------------------------- */

static char *lora_read_text(const char *path, char *err) {
  FILE *fp = st_fopen_regular(path, err);
  if (!fp) return NULL;
  size_t len = 0, cap = 8192;
  char *text = malloc(cap);
  while (text) {
    size_t got = fread(text + len, 1, cap - len - 1, fp);
    len += got;
    if (len + 1 < cap) break;
    if (cap > (16u << 20)) {
      free(text);
      text = NULL;
      break;
    }
    char *nt = realloc(text, cap *= 2);
    if (!nt) free(text);
    text = nt;
  }
  fclose(fp);
  if (!text) {
    lora_err(err, "%s: too large or out of memory", path);
    return NULL;
  }
  text[len] = 0;
  return text;
}

int poc_lora_target_index(const char *name) {
  for (int t = 0; t < POC_LT_N; t++)
    if (!strcmp(name, poc_lora_target_names[t])) return t;
  return -1;
}

int poc_lora_read_config(const char *dir, poc_lora_cfg *lc, char *base, size_t base_n,
                         char *err) {
  char path[4096];
  snprintf(path, sizeof path, "%s/adapter_config.json", dir);
  char *text = lora_read_text(path, err);
  if (!text) return -1;
  cJSON *o = cJSON_Parse(text);
  free(text);
  int rc = -1;
  if (!o || !cJSON_IsObject(o)) {
    lora_err(err, "%s: not a JSON object", path);
    goto done;
  }
#define GET(k) cJSON_GetObjectItemCaseSensitive(o, k)
  const cJSON *pt = GET("peft_type"), *r = GET("r"), *al = GET("lora_alpha"),
              *dr = GET("lora_dropout"), *tm = GET("target_modules"), *bm = GET("base_model_name_or_path");
  if (!cJSON_IsString(pt) || strcmp(pt->valuestring, "LORA")) {
    lora_err(err, "%s: 'peft_type' must be \"LORA\"", path);
    goto done;
  }
  if (!cJSON_IsNumber(r) || r->valuedouble < 1 || r->valuedouble != (int)r->valuedouble) {
    lora_err(err, "%s: 'r' must be a positive integer", path);
    goto done;
  }
  if (!cJSON_IsNumber(al) || !isfinite(al->valuedouble)) {
    lora_err(err, "%s: 'lora_alpha' must be a number", path);
    goto done;
  }
  if (dr && !cJSON_IsNull(dr) &&
      (!cJSON_IsNumber(dr) || !(dr->valuedouble >= 0 && dr->valuedouble < 1))) {
    lora_err(err, "%s: 'lora_dropout' must be a number in [0, 1)", path);
    goto done;
  }
  /* what poc does not compute: refused rather than loaded into other math */
  static const char *const off_keys[] = {"use_rslora", "use_dora", "fan_in_fan_out"};
  for (size_t i = 0; i < sizeof off_keys / sizeof off_keys[0]; i++)
    if (cJSON_IsTrue(GET(off_keys[i]))) {
      lora_err(err, "%s: '%s' is true; poc's LoRA supports plain LoRA only", path,
               off_keys[i]);
      goto done;
    }
  const cJSON *bias = GET("bias");
  if (bias && cJSON_IsString(bias) && strcmp(bias->valuestring, "none")) {
    lora_err(err, "%s: 'bias' is \"%s\"; poc trains no biases (\"none\" only)",
             path, bias->valuestring);
    goto done;
  }
  static const char *const null_keys[] = {"modules_to_save", "layers_to_transform",
                                          "rank_pattern", "alpha_pattern"};
  for (size_t i = 0; i < sizeof null_keys / sizeof null_keys[0]; i++) {
    const cJSON *v = GET(null_keys[i]);
    int empty = !v || cJSON_IsNull(v) || ((cJSON_IsObject(v) || cJSON_IsArray(v)) && !v->child);
    if (!empty) {
      lora_err(err, "%s: '%s' is set; poc's LoRA does not support it", path,
               null_keys[i]);
      goto done;
    }
  }
  lc->r = (int)r->valuedouble;
  lc->alpha = al->valuedouble;
  lc->dropout = dr && cJSON_IsNumber(dr) ? dr->valuedouble : 0;
  lc->targets = 0;
  if (!cJSON_IsArray(tm) || !tm->child) {
    lora_err(err, "%s: 'target_modules' must be a non-empty list of names (q_proj, "
             "k_proj, v_proj, o_proj, gate_proj, up_proj, down_proj)", path);
    goto done;
  }
  for (const cJSON *e = tm->child; e; e = e->next) {
    int t = cJSON_IsString(e) ? poc_lora_target_index(e->valuestring) : -1;
    if (t < 0) {
      lora_err(err, "%s: target module '%s' is not one poc adapts (q_proj, k_proj, "
               "v_proj, o_proj, gate_proj, up_proj, down_proj)", path,
               cJSON_IsString(e) ? e->valuestring : "?");
      goto done;
    }
    lc->targets |= 1u << t;
  }
  if (base && base_n)
    snprintf(base, base_n, "%s", cJSON_IsString(bm) ? bm->valuestring : "");
  rc = 0;
#undef GET
done:
  cJSON_Delete(o);
  return rc;
}

int poc_lora_load(const char *dir, const poc_layout *alay, float *a, char *err) {
  char path[4096];
  snprintf(path, sizeof path, "%s/adapter_model.safetensors", dir);
  st_file f;
  if (st_open(&f, path, err)) return -1;
  int rc = -1;
  /* every tensor of the file must be one the layout has: an adapter on a module the base
     lacks (a layer past the last one, a misspelt module) is an error, not ignored */
  for (int i = 0; i < f.n; i++) {
    const char *name = f.t[i].name;
    if (!poc_layout_find(alay, name)) {
      const char *hint = strstr(name, "lora_") ? "an adapter for a layer or module this base "
                                                 "model and adapter_config.json do not have"
                                               : "not a LoRA adapter tensor";
      lora_err(err, "%s: tensor '%s' is %s", path, name, hint);
      goto done;
    }
  }
  for (int i = 0; i < alay->n_tensors; i++) {
    const poc_tensor_info *ti = &alay->tensors[i];
    const st_tensor *t = st_find(&f, ti->name);
    if (!t) {
      lora_err(err, "%s: tensor '%s' is missing", path, ti->name);
      goto done;
    }
    if (t->ndim != 2 || t->shape[0] != ti->shape[0] || t->shape[1] != ti->shape[1]) {
      lora_err(err, "%s: tensor '%s' has shape [%lld, %lld]; this base model and "
               "rank need [%lld, %lld]", path, ti->name, (long long)t->shape[0],
               t->ndim > 1 ? (long long)t->shape[1] : -1LL, (long long)ti->shape[0],
               (long long)ti->shape[1]);
      goto done;
    }
    if (st_read_f32(&f, t, a + ti->offset, err)) goto done;
    for (size_t k = 0; k < ti->numel; k++)
      if (!isfinite(a[ti->offset + k])) {
        lora_err(err, "%s: tensor '%s' holds a non-finite value", path, ti->name);
        goto done;
      }
  }
  rc = 0;
done:
  st_close(&f);
  return rc;
}

int poc_lora_open(const char *dir, const poc_layout *base, poc_lora_cfg *lc, poc_layout *alay,
                  float **a, char *err) {
  *a = NULL;
  memset(alay, 0, sizeof *alay);
  if (poc_lora_read_config(dir, lc, NULL, 0, err) || poc_lora_layout(base, lc, alay, err))
    return -1;
  *a = malloc((alay->n_params ? alay->n_params : 1) * sizeof(float));
  if (!*a) {
    lora_err(err, "%s: out of memory", dir);
  } else if (!poc_lora_load(dir, alay, *a, err)) {
    return 0;
  }
  free(*a);
  *a = NULL;
  poc_layout_free(alay);
  return -1;
}

/* adapter_config.json as PEFT writes it (the keys its LoraConfig reads back) */
static char *lora_config_json(const poc_lora_cfg *lc, const char *base) {
  cJSON *o = cJSON_CreateObject();
  cJSON_AddStringToObject(o, "peft_type", "LORA");
  cJSON_AddStringToObject(o, "task_type", "CAUSAL_LM");
  cJSON_AddStringToObject(o, "base_model_name_or_path", base ? base : "");
  cJSON_AddNumberToObject(o, "r", lc->r);
  cJSON_AddNumberToObject(o, "lora_alpha", lc->alpha);
  cJSON_AddNumberToObject(o, "lora_dropout", lc->dropout);
  cJSON *tm = cJSON_AddArrayToObject(o, "target_modules");
  for (int t = 0; t < POC_LT_N; t++)
    if (lc->targets >> t & 1) cJSON_AddItemToArray(tm, cJSON_CreateString(poc_lora_target_names[t]));
  cJSON_AddStringToObject(o, "bias", "none");
  cJSON_AddFalseToObject(o, "fan_in_fan_out");
  cJSON_AddFalseToObject(o, "use_rslora");
  cJSON_AddFalseToObject(o, "use_dora");
  cJSON_AddTrueToObject(o, "init_lora_weights");
  cJSON_AddTrueToObject(o, "inference_mode");
  cJSON_AddNullToObject(o, "modules_to_save");
  cJSON_AddNullToObject(o, "layers_to_transform");
  cJSON_AddStringToObject(o, "revision", "");
  char *s = cJSON_Print(o);
  cJSON_Delete(o);
  return s;
}

int poc_lora_save(const char *dir, const poc_layout *alay, const poc_lora_cfg *lc,
                  const float *a, const char *base, char *err) {
  if (mkdir(dir, 0777) && errno != EEXIST) {
    lora_err(err, "%s: cannot create folder: %s", dir, strerror(errno));
    return -1;
  }
  st_out *outs = calloc((size_t)alay->n_tensors + 1, sizeof *outs);
  if (!outs) {
    lora_err(err, "%s: out of memory", dir);
    return -1;
  }
  for (int i = 0; i < alay->n_tensors; i++) {
    const poc_tensor_info *ti = &alay->tensors[i];
    outs[i] = (st_out){.name = ti->name, .ndim = 2, .shape = {ti->shape[0], ti->shape[1]},
                       .data = a + ti->offset};
  }
  char path[4096];
  snprintf(path, sizeof path, "%s/adapter_model.safetensors", dir);
  int rc = st_write_f32(path, outs, alay->n_tensors, "F32", err);
  free(outs);
  if (rc) return -1;
  char *js = lora_config_json(lc, base);
  snprintf(path, sizeof path, "%s/adapter_config.json", dir);
  rc = js ? st_write_text_atomic(path, js, err) : -1;
  if (!js) lora_err(err, "%s: out of memory", path);
  cJSON_free(js);
  return rc;
}

void poc_lora_merge(const poc_layout *lay, const poc_layout *alay, const poc_lora_cfg *lc,
                    const float *a, float *w) {
  const double s = lc->alpha / lc->r;
  const int r = lc->r;
  for (int l = 0; l < lay->cfg.num_hidden_layers; l++)
    for (int t = 0; t < POC_LT_N; t++) {
      char ka[96], kb[96], kw[96];
      poc_lora_key(ka, sizeof ka, l, t, 0);
      poc_lora_key(kb, sizeof kb, l, t, 1);
      const poc_tensor_info *ta = poc_layout_find(alay, ka), *tb = poc_layout_find(alay, kb);
      if (!ta || !tb) continue;
      snprintf(kw, sizeof kw, "model.layers.%d.%s.%s.weight", l,
               t < POC_LT_GATE ? "self_attn" : "mlp", poc_lora_target_names[t]);
      const poc_tensor_info *tw = poc_layout_find(lay, kw);
      if (!tw) continue;
      int in, out;
      poc_lora_dims(&lay->cfg, t, &in, &out);
      const float *A = a + ta->offset, *B = a + tb->offset;
      float *W = w + tw->offset;
      /* W[o][i] += s·Σ_k B[o][k]·A[k][i], summed in double */
      for (int o = 0; o < out; o++)
        for (int i = 0; i < in; i++) {
          double acc = 0;
          for (int k = 0; k < r; k++) acc += (double)B[(size_t)o * r + k] * A[(size_t)k * in + i];
          W[(size_t)o * in + i] = (float)(W[(size_t)o * in + i] + s * acc);
        }
    }
}
