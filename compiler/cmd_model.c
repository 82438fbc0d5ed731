/* cmd_model.c — `poc logp`, `poc generate` and `poc merge`: a model folder used directly,
 * without an objective. `logp --adapter DIR` adds a PEFT LoRA adapter to the model; `merge`
 * writes base + adapter as one model folder. `logp` is the seam the independent checks against transformers go through:
 * every number it prints comes from the same packed forward training uses.
 *
 * Exit status: 0 ok, 1 the model failed at run time, 2 bad arguments or bad input.
 */
#include "device.h"
#include <errno.h>
#include <limits.h>
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cjson/cJSON.h>

#include "driver.h"
#include "pocrt.h"

/* Lines with more errors than this are not all reported. */
#define MDL_MAX_REPORTED 20
/* Tokens per packed forward; a longer single line gets a pack of its own size. */
#define MDL_PACK_TOKENS 4096

/* ---- shared: load a model folder ------------------------------------------------- */

typedef struct mdl_loaded {
  poc_layout lay;
  float *w;
} mdl_loaded;

static int mdl_load(const char *cmd, const char *dir, mdl_loaded *m) {
  char err[POC_ERR_LEN];
  poc_config cfg;
  memset(m, 0, sizeof *m);
  if (poc_config_load(dir, &cfg, err) || poc_layout_init(&m->lay, &cfg, err)) {
    fprintf(stderr, "poc %s: %s\n", cmd, err);
    return 2;
  }
  if (cfg.num_labels > 0) { /* a score head: no token distribution */
    fprintf(stderr, "poc %s: %s%sconfig.json is a sequence-classification (reward) model, "
            "which has no language-model head; score data with it with poc score\n", cmd, dir,
            dir[0] && dir[strlen(dir) - 1] == '/' ? "" : "/");
    poc_layout_free(&m->lay);
    return 2;
  }
  m->w = malloc(m->lay.n_params * sizeof *m->w);
  if (!m->w) {
    fprintf(stderr, "poc %s: out of memory for %zu parameters\n", cmd, m->lay.n_params);
    poc_layout_free(&m->lay);
    return 1;
  }
  if (poc_weights_load_f32(dir, &m->lay, m->w, err)) {
    fprintf(stderr, "poc %s: %s\n", cmd, err);
    free(m->w);
    poc_layout_free(&m->lay);
    return 2;
  }
  return 0;
}

static void mdl_unload(mdl_loaded *m) {
  free(m->w);
  poc_layout_free(&m->lay);
}

/* A PEFT LoRA adapter for --adapter DIR, checked against the base. */
typedef struct mdl_adapter {
  poc_lora_cfg lc;
  poc_layout alay;
  float *a;                      /* NULL: no adapter */
} mdl_adapter;

static int mdl_adapter_open(const char *cmd, const char *dir, const mdl_loaded *m,
                            mdl_adapter *ad) {
  char err[POC_ERR_LEN];
  memset(ad, 0, sizeof *ad);
  if (!dir) return 0;
  if (poc_lora_open(dir, &m->lay, &ad->lc, &ad->alay, &ad->a, err)) {
    fprintf(stderr, "poc %s: %s\n", cmd, err);
    return 2;
  }
  return 0;
}

static void mdl_adapter_close(mdl_adapter *ad) {
  free(ad->a);
  if (ad->alay.tensors) poc_layout_free(&ad->alay);
}

/* The model a command runs with a workspace of max_tokens: the base alone, or with an
 * adapter a view (adapters on) of a LoRA model that holds the weights with a one-token
 * workspace (a trainable model would keep every layer's activations). *owner is that LoRA
 * model, to free after the view. NULL with err. */
static poc_model *mdl_instance(poc_device *dev, const mdl_loaded *m, const mdl_adapter *ad,
                               int max_tokens, poc_model **owner, char *err) {
  *owner = NULL;
  if (!ad->a) return poc_model_new(dev, &m->lay, m->w, POC_DT_F32, 0, max_tokens, err);
  *owner = poc_model_new_lora(dev, &m->lay, &ad->alay, &ad->lc, 1, err);
  if (!*owner || poc_model_set(*owner, POC_PART_WEIGHTS, m->w, POC_DT_F32, err) ||
      poc_model_set(*owner, POC_PART_ADAPTER, ad->a, POC_DT_F32, err))
    return NULL;
  return poc_model_view(*owner, 1, max_tokens, err);
}

/* Opens the device a command runs on ("auto": a usable GPU, else the CPU) and names it on
 * stderr, as a training run's first line does. NULL after a message. */
static poc_device *mdl_open_device(const char *cmd, const char *backend) {
  char err[POC_ERR_LEN];
  poc_device *d = poc_device_open(backend, err);
  if (!d) {
    fprintf(stderr, "poc %s: --backend %s: %s\n", cmd, backend, err);
    return NULL;
  }
  fprintf(stderr, "%s\n", d->desc);
  return d;
}

/* ---- poc logp -------------------------------------------------------------------- */

static const char *const lp_default_fields[] = {"chosen", "rejected", "response"};

typedef struct lp_seq {
  int field;                      /* index into the run's field names */
  int32_t *resp;
  int n_resp;
} lp_seq;

typedef struct lp_line {
  int line;                       /* 1-based line in the file */
  int32_t *prompt;
  int n_prompt;
  int n_seq;
  lp_seq seq[3];
} lp_line;

typedef struct lp_run {
  const char *path;
  int vocab, max_len, window;
  const char *const *fields;
  int n_fields;
  int explicit_field;             /* --field given: it must be on every line */
  int errors;
} lp_run;

static void lp_error(lp_run *r, int line, const char *fmt, ...) __attribute__((format(printf, 3, 4)));
static void lp_error(lp_run *r, int line, const char *fmt, ...) {
  if (++r->errors > MDL_MAX_REPORTED) return;
  va_list ap;
  va_start(ap, fmt);
  fprintf(stderr, "%s:%d: error: ", r->path, line);
  vfprintf(stderr, fmt, ap);
  fputc('\n', stderr);
  va_end(ap);
}

/* A JSON array of token ids, each an integer in [0, vocab). */
static int32_t *lp_ids(lp_run *r, int line, const cJSON *root, const char *key, int *n) {
  const cJSON *a = cJSON_GetObjectItemCaseSensitive(root, key);
  if (!a) {
    lp_error(r, line, "missing \"%s\"", key);
    return NULL;
  }
  if (!cJSON_IsArray(a)) {
    lp_error(r, line, "\"%s\" must be an array of token ids", key);
    return NULL;
  }
  int len = cJSON_GetArraySize(a);
  if (len == 0) {
    lp_error(r, line, "\"%s\" is empty%s", key,
             strcmp(key, "prompt") ? "" : " (log-probs are taken after the prompt, so it needs a token)");
    return NULL;
  }
  int32_t *ids = malloc((size_t)len * sizeof *ids);
  if (!ids) {
    lp_error(r, line, "out of memory");
    return NULL;
  }
  int i = 0;
  for (const cJSON *x = a->child; x; x = x->next, i++) {
    double d = cJSON_IsNumber(x) ? x->valuedouble : NAN;
    if (!(d == floor(d))) {
      char *s = cJSON_PrintUnformatted(x);
      lp_error(r, line, "%s[%d]: %.40s is not a token id", key, i, s ? s : "?");
      free(s);
      free(ids);
      return NULL;
    }
    if (d < 0 || d >= r->vocab) {
      lp_error(r, line, "%s[%d]: token id %.0f is outside the vocabulary (0..%d)", key, i, d, r->vocab - 1);
      free(ids);
      return NULL;
    }
    ids[i] = (int32_t)d;
  }
  *n = len;
  return ids;
}

static void lp_line_free(lp_line *l) {
  free(l->prompt);
  for (int s = 0; s < l->n_seq; s++) free(l->seq[s].resp);
  l->n_seq = 0;
  l->prompt = NULL;
}

/* Parses one non-blank line into `l`; reports every problem with the line. */
static int lp_parse(lp_run *r, int line, const char *text, size_t len, lp_line *l) {
  memset(l, 0, sizeof *l);
  l->line = line;
  int before = r->errors;
  cJSON *root = cJSON_ParseWithLength(text, len);
  if (!root) {
    const char *at = cJSON_GetErrorPtr();
    long col = at && at >= text && at <= text + len ? (long)(at - text) + 1 : 1;
    lp_error(r, line, "malformed JSON (near column %ld)", col);
    return -1;
  }
  if (!cJSON_IsObject(root)) {
    lp_error(r, line, "expected a JSON object");
    cJSON_Delete(root);
    return -1;
  }
  l->prompt = lp_ids(r, line, root, "prompt", &l->n_prompt);
  for (int f = 0; f < r->n_fields; f++) {
    const char *key = r->fields[f];
    if (!r->explicit_field && !cJSON_GetObjectItemCaseSensitive(root, key)) continue;
    lp_seq *s = &l->seq[l->n_seq];
    s->field = f;
    s->resp = lp_ids(r, line, root, key, &s->n_resp);
    if (s->resp) l->n_seq++;
  }
  if (r->errors == before && l->n_seq == 0)
    lp_error(r, line, "no response field: a pairs line has \"chosen\" and \"rejected\", a points line "
                      "\"response\" (or name one with --field)");
  /* RoPE positions and the sliding window bound each sequence's length. */
  for (int s = 0; s < l->n_seq && l->prompt; s++) {
    long total = (long)l->n_prompt + l->seq[s].n_resp;
    if (total > r->max_len)
      lp_error(r, line, "prompt + %s is %ld tokens, more than max_position_embeddings (%d)",
               r->fields[l->seq[s].field], total, r->max_len);
    else if (r->window > 0 && total > r->window)
      lp_error(r, line, "prompt + %s is %ld tokens, more than the sliding window (%d)",
               r->fields[l->seq[s].field], total, r->window);
  }
  cJSON_Delete(root);
  if (r->errors != before) {
    lp_line_free(l);
    return -1;
  }
  return 0;
}

static long lp_line_tokens(const lp_line *l) {
  long n = 0;
  for (int s = 0; s < l->n_seq; s++) n += l->n_prompt + l->seq[s].n_resp;
  return n;
}

/* Log-probs print with 9 significant digits: enough to round-trip a float. */
static void lp_print_num(FILE *out, double x) {
  if (isfinite(x)) fprintf(out, "%.9g", x);
  else fputs("null", out);
}

/* One packed forward over lines [a, b); prints their results in order. */
static int lp_forward(poc_model *model, const lp_run *r, const lp_line *lines, int a, int b,
                      int32_t *tok, int32_t *seq_start, int32_t *tgt_start, double *logp, FILE *out) {
  int n_seq = 0, n_tok = 0;
  for (int i = a; i < b; i++)
    for (int s = 0; s < lines[i].n_seq; s++) {
      const lp_line *l = &lines[i];
      seq_start[n_seq] = n_tok;
      memcpy(tok + n_tok, l->prompt, (size_t)l->n_prompt * sizeof *tok);
      n_tok += l->n_prompt;
      tgt_start[n_seq] = n_tok;
      memcpy(tok + n_tok, l->seq[s].resp, (size_t)l->seq[s].n_resp * sizeof *tok);
      n_tok += l->seq[s].n_resp;
      n_seq++;
    }
  seq_start[n_seq] = n_tok;
  poc_pack pack = {n_seq, n_tok, tok, seq_start, tgt_start};
  char err[POC_ERR_LEN];
  if (poc_model_forward(model, &pack, 0, logp, NULL, err)) {
    fprintf(stderr, "poc logp: %s\n", err);
    return 1;
  }
  int k = 0;
  for (int i = a; i < b; i++) {
    const lp_line *l = &lines[i];
    fprintf(out, "{\"line\": %d", l->line);
    for (int s = 0; s < l->n_seq; s++) {
      double sum = 0;
      for (int j = 0; j < l->seq[s].n_resp; j++) sum += logp[k + j];
      fprintf(out, ", \"%s\": {\"sum\": ", r->fields[l->seq[s].field]);
      lp_print_num(out, sum);
      fputs(", \"tokens\": [", out);
      for (int j = 0; j < l->seq[s].n_resp; j++) {
        if (j) fputs(", ", out);
        lp_print_num(out, logp[k + j]);
      }
      fputs("]}", out);
      k += l->seq[s].n_resp;
    }
    fputs("}\n", out);
  }
  return 0;
}

static int lp_usage(void) {
  fprintf(stderr, "usage: poc logp MODEL_DIR DATA.jsonl [--field NAME] [--adapter DIR] "
          "[--backend cpu|cuda]\n");
  return 2;
}

int poc_cmd_logp(int argc, char **argv) {
  const char *dir = NULL, *data = NULL, *field = NULL, *backend = "auto", *adapter = NULL;
  for (int i = 1; i < argc; i++) {
    if (!strcmp(argv[i], "--field") || !strcmp(argv[i], "--backend") ||
        !strcmp(argv[i], "--adapter")) {
      if (i + 1 >= argc) {
        fprintf(stderr, "poc logp: %s needs a value\n", argv[i]);
        return lp_usage();
      }
      if (!strcmp(argv[i], "--field")) field = argv[++i];
      else if (!strcmp(argv[i], "--adapter")) adapter = argv[++i];
      else backend = argv[++i];
    } else if (argv[i][0] == '-' && argv[i][1]) {
      fprintf(stderr, "poc logp: unknown option '%s'\n", argv[i]);
      return lp_usage();
    } else if (!dir) dir = argv[i];
    else if (!data) data = argv[i];
    else {
      fprintf(stderr, "poc logp: unexpected argument '%s'\n", argv[i]);
      return lp_usage();
    }
  }
  if (!dir || !data) return lp_usage();
  if (field && (!*field || !strcmp(field, "prompt"))) {
    fprintf(stderr, "poc logp: --field must name a response field, not '%s'\n", field);
    return 2;
  }
  poc_device *dev = mdl_open_device("logp", backend);
  if (!dev) return 2;
  int rc;

  FILE *in = fopen(data, "r");
  if (!in) {
    fprintf(stderr, "poc logp: %s: cannot open: %s\n", data, strerror(errno));
    poc_device_close(dev);
    return 2;
  }
  mdl_loaded m;
  if ((rc = mdl_load("logp", dir, &m))) {
    fclose(in);
    poc_device_close(dev);
    return rc;
  }
  /* a LoRA adapter, checked against the base before any forward */
  mdl_adapter ad;
  if ((rc = mdl_adapter_open("logp", adapter, &m, &ad))) {
    fclose(in);
    poc_device_close(dev);
    mdl_unload(&m);
    return rc;
  }
  const poc_config *cfg = &m.lay.cfg;
  const char *one[1] = {field};
  lp_run r = {data, cfg->vocab_size, cfg->max_position_embeddings, cfg->sliding_window,
              field ? one : lp_default_fields, field ? 1 : 3, field != NULL, 0};

  /* Every line is checked before any forward: bad data stops the run with nothing printed. */
  lp_line *lines = NULL;
  int n_lines = 0, cap = 0, lineno = 0;
  long longest = 0;
  char *buf = NULL;
  size_t bufcap = 0;
  ssize_t len;
  while ((len = getline(&buf, &bufcap, in)) >= 0) {
    lineno++;
    if (poc_blank_line(buf, (size_t)len)) continue;
    if (n_lines == cap) {
      cap = cap ? 2 * cap : 256;
      lp_line *nl = realloc(lines, (size_t)cap * sizeof *nl);
      if (!nl) {
        fprintf(stderr, "poc logp: out of memory reading %s\n", data);
        rc = 1;
        break;
      }
      lines = nl;
    }
    if (lp_parse(&r, lineno, buf, (size_t)len, &lines[n_lines]) == 0) {
      long t = lp_line_tokens(&lines[n_lines]);
      if (t > longest) longest = t;
      n_lines++;
    }
  }
  int read_err = ferror(in);
  free(buf);
  fclose(in);
  if (read_err && !rc) {
    fprintf(stderr, "poc logp: %s: read error\n", data);
    rc = 1;
  }
  if (!rc && r.errors) {
    if (r.errors > MDL_MAX_REPORTED)
      fprintf(stderr, "%s: %d more errors not shown\n", data, r.errors - MDL_MAX_REPORTED);
    rc = 2;
  }
  if (!rc && longest > INT_MAX / 2) {
    fprintf(stderr, "poc logp: %s: a line of %ld tokens is too long\n", data, longest);
    rc = 2;
  }

  poc_model *model = NULL;
  char err[POC_ERR_LEN] = "";
  int budget = longest > MDL_PACK_TOKENS ? (int)longest : MDL_PACK_TOKENS;
  int32_t *tok = NULL, *seq_start = NULL, *tgt_start = NULL;
  double *logp = NULL;
  poc_model *lora_owner = NULL;
  if (!rc && n_lines) {
    model = mdl_instance(dev, &m, &ad, budget, &lora_owner, err);
    /* at most one sequence per two tokens: each needs a prompt token and a target */
    tok = malloc((size_t)budget * sizeof *tok);
    seq_start = malloc(((size_t)budget / 2 + 2) * sizeof *seq_start);
    tgt_start = malloc(((size_t)budget / 2 + 2) * sizeof *tgt_start);
    logp = malloc((size_t)budget * sizeof *logp);
    if (!model || !tok || !seq_start || !tgt_start || !logp) {
      fprintf(stderr, "poc logp: cannot make a model for %d tokens: %s\n", budget,
              *err ? err : "out of memory");
      rc = 1;
    }
  }
  /* Whole lines go into each pack, in file order, so output streams line by line. */
  for (int a = 0; !rc && a < n_lines;) {
    int b = a;
    long used = 0;
    while (b < n_lines && used + lp_line_tokens(&lines[b]) <= budget) used += lp_line_tokens(&lines[b++]);
    rc = lp_forward(model, &r, lines, a, b, tok, seq_start, tgt_start, logp, stdout);
    a = b;
  }
  if (!rc && fflush(stdout)) {
    fprintf(stderr, "poc logp: cannot write the output: %s\n", strerror(errno));
    rc = 1;
  }
  poc_model_free(model);
  poc_model_free(lora_owner);
  poc_device_close(dev);
  free(tok);
  free(seq_start);
  free(tgt_start);
  free(logp);
  for (int i = 0; i < n_lines; i++) lp_line_free(&lines[i]);
  free(lines);
  mdl_unload(&m);
  mdl_adapter_close(&ad);
  return rc;
}

/* ---- poc generate ---------------------------------------------------------------- */

static int gen_usage(void) {
  fprintf(stderr, "usage: poc generate MODEL_DIR --prompt-ids 1,2,3 | --prompt TEXT [--chat] "
                  "[--tokens N] [--temperature T] [--top-p P] [--seed N] [--adapter DIR] "
                  "[--backend cpu|cuda] [--show-special]\n");
  return 2;
}

static int gen_number(const char *opt, const char *s, double lo, double hi, double *out) {
  char *end;
  errno = 0;
  double v = strtod(s, &end);
  if (!*s || *end || errno || !(v >= lo && v <= hi)) {
    fprintf(stderr, "poc generate: %s: '%s' is not a number in [%g, %g]\n", opt, s, lo, hi);
    return -1;
  }
  *out = v;
  return 0;
}

/* "1,2,3" → ids, each an integer in [0, vocab). */
static int32_t *gen_ids(const char *s, int vocab, int *n) {
  int cap = 1;
  for (const char *p = s; *p; p++) cap += *p == ',';
  int32_t *ids = malloc((size_t)cap * sizeof *ids);
  if (!ids) return NULL;
  *n = 0;
  const char *p = s;
  for (;;) {
    char *end;
    errno = 0;
    long v = strtol(p, &end, 10);
    if (end == p || errno || (*end && *end != ',')) {
      fprintf(stderr, "poc generate: --prompt-ids: '%s' is not a comma-separated list of token ids\n", s);
      free(ids);
      return NULL;
    }
    if (v < 0 || v >= vocab) {
      fprintf(stderr, "poc generate: --prompt-ids: token id %ld is outside the vocabulary (0..%d)\n", v,
              vocab - 1);
      free(ids);
      return NULL;
    }
    ids[(*n)++] = (int32_t)v;
    if (!*end) break;
    p = end + 1;
  }
  return ids;
}

int poc_cmd_generate(int argc, char **argv) {
  const char *dir = NULL, *prompt_s = NULL, *text = NULL, *backend = "auto", *adapter = NULL;
  int chat = 0, show_special = 0;
  double tokens = 16, temperature = 0, top_p = 1, seed = 0;
  for (int i = 1; i < argc; i++) {
    const char *a = argv[i];
    int takes = !strcmp(a, "--prompt-ids") || !strcmp(a, "--tokens") || !strcmp(a, "--temperature") ||
                !strcmp(a, "--top-p") || !strcmp(a, "--seed") || !strcmp(a, "--backend") ||
                !strcmp(a, "--adapter") || !strcmp(a, "--prompt");
    if (takes && i + 1 >= argc) {
      fprintf(stderr, "poc generate: %s needs a value\n", a);
      return gen_usage();
    }
    if (!strcmp(a, "--prompt-ids")) prompt_s = argv[++i];
    else if (!strcmp(a, "--prompt")) text = argv[++i];
    else if (!strcmp(a, "--chat")) chat = 1;
    else if (!strcmp(a, "--show-special")) show_special = 1;
    else if (!strcmp(a, "--backend")) backend = argv[++i];
    else if (!strcmp(a, "--adapter")) adapter = argv[++i];
    else if (!strcmp(a, "--tokens")) {
      if (gen_number(a, argv[++i], 0, 1 << 20, &tokens) || tokens != floor(tokens)) return gen_usage();
    } else if (!strcmp(a, "--temperature")) {
      if (gen_number(a, argv[++i], 0, 1e6, &temperature)) return 2;
    } else if (!strcmp(a, "--top-p")) {
      if (gen_number(a, argv[++i], 0, 1, &top_p)) return 2;
      if (top_p <= 0) {
        fprintf(stderr, "poc generate: --top-p must be greater than 0\n");
        return 2;
      }
    } else if (!strcmp(a, "--seed")) {
      if (gen_number(a, argv[++i], 0, 9007199254740991.0, &seed) || seed != floor(seed)) return gen_usage();
    } else if (a[0] == '-' && a[1]) {
      fprintf(stderr, "poc generate: unknown option '%s'\n", a);
      return gen_usage();
    } else if (!dir) dir = a;
    else {
      fprintf(stderr, "poc generate: unexpected argument '%s'\n", a);
      return gen_usage();
    }
  }
  if (!dir || !prompt_s == !text) {
    if (prompt_s && text) fprintf(stderr, "poc generate: give --prompt or --prompt-ids, not both\n");
    return gen_usage();
  }
  if (chat && !text) {
    fprintf(stderr, "poc generate: --chat applies the chat template to --prompt TEXT\n");
    return gen_usage();
  }
  poc_device *dev = mdl_open_device("generate", backend);
  if (!dev) return 2;
  mdl_loaded m;
  int rc;
  if ((rc = mdl_load("generate", dir, &m))) {
    poc_device_close(dev);
    return rc;
  }
  mdl_adapter ad;
  if ((rc = mdl_adapter_open("generate", adapter, &m, &ad))) {
    mdl_unload(&m);
    poc_device_close(dev);
    return rc;
  }
  const poc_config *cfg = &m.lay.cfg;
  int n_prompt = 0, n_new = (int)tokens;
  /* the folder's tokenizer, checked against config.json before anything runs */
  poc_tok *tok = NULL;
  char err[POC_ERR_LEN] = "";
  int has_tok = poc_tok_open(dir, cfg->vocab_size, &tok, err);
  int32_t *prompt = NULL;
  if (has_tok > 0 && poc_tok_unsupported(tok)) {
    fprintf(stderr, "poc generate: warning: %s; the output has ids only\n", poc_tok_unsupported(tok));
    poc_tok_free(tok);
    tok = NULL;
  }
  if (has_tok < 0) fprintf(stderr, "poc generate: %s\n", err);
  else if (text && !has_tok)
    fprintf(stderr, "poc generate: --prompt: %s has no tokenizer.json to encode text with; give "
            "the ids with --prompt-ids\n", dir);
  else if (text) {
    prompt = poc_text_encode("generate", dir, text, chat, &n_prompt);
    for (int i = 0; prompt && i < n_prompt; i++)
      if (prompt[i] < 0 || prompt[i] >= cfg->vocab_size) {
        fprintf(stderr, "poc generate: --prompt: the tokenizer gave token id %d, outside the "
                "model's vocabulary (0..%d)\n", prompt[i], cfg->vocab_size - 1);
        free(prompt);
        prompt = NULL;
      }
    if (prompt && !n_prompt) {
      fprintf(stderr, "poc generate: --prompt: the text encodes to no tokens\n");
      free(prompt);
      prompt = NULL;
    }
  } else
    prompt = gen_ids(prompt_s, cfg->vocab_size, &n_prompt);
  if (!prompt) {
    poc_tok_free(tok);
    mdl_unload(&m);
    mdl_adapter_close(&ad);
    poc_device_close(dev);
    return 2;
  }
  long total = (long)n_prompt + n_new;
  int limit = cfg->sliding_window > 0 && cfg->sliding_window < cfg->max_position_embeddings
                  ? cfg->sliding_window
                  : cfg->max_position_embeddings;
  if (total > limit) {
    fprintf(stderr, "poc generate: %d prompt + %d new tokens exceed the model's %d positions\n", n_prompt,
            n_new, limit);
    free(prompt);
    poc_tok_free(tok);
    mdl_unload(&m);
    mdl_adapter_close(&ad);
    poc_device_close(dev);
    return 2;
  }
  poc_model *owner;
  poc_model *model = mdl_instance(dev, &m, &ad, (int)total, &owner, err);
  int32_t *out = malloc(((size_t)n_new + 1) * sizeof *out);
  int n_out = -1;
  if (!model || !out)
    fprintf(stderr, "poc generate: cannot make a model for %ld tokens: %s\n", total,
            *err ? err : "out of memory");
  else {
    poc_rng rng;
    poc_rng_seed(&rng, (uint64_t)seed);
    n_out = poc_model_generate(model, prompt, n_prompt, n_new, temperature, top_p,
                               cfg->eos_token_id, &rng, out, err);
    if (n_out < 0) fprintf(stderr, "poc generate: %s\n", err);
  }
  if (n_out >= 0) {
    fputs("{\"prompt\": [", stdout);
    for (int i = 0; i < n_prompt; i++) printf("%s%d", i ? ", " : "", prompt[i]);
    fputs("], \"tokens\": [", stdout);
    for (int i = 0; i < n_out; i++) printf("%s%d", i ? ", " : "", out[i]);
    fputs("]", stdout);
    if (tok) { /* the text of each, as JSON strings (a cut UTF-8 sequence reads as U+FFFD) */
      size_t pn = 0, gn = 0;
      char *pt = poc_tok_decode(tok, prompt, n_prompt, !show_special, &pn);
      char *gt = poc_tok_decode(tok, out, n_out, !show_special, &gn);
      char *as = pt ? poc_tok_json(pt, pn) : NULL, *bs = gt ? poc_tok_json(gt, gn) : NULL;
      printf(", \"prompt_text\": %s, \"text\": %s", as ? as : "null", bs ? bs : "null");
      free(as);
      free(bs);
      free(pt);
      free(gt);
    }
    fputs("}\n", stdout);
  }
  poc_tok_free(tok);
  poc_model_free(model);
  poc_model_free(owner);
  poc_device_close(dev);
  free(out);
  free(prompt);
  mdl_unload(&m);
  mdl_adapter_close(&ad);
  return n_out >= 0 ? 0 : 1;
}

/* ---- poc merge ---------------------------------------------------------------------- */

/* BASE + a PEFT LoRA adapter → OUT: each adapted projection W + (alpha/r)·B·A, every
 * other tensor as it was, saved in the base's dtype (bfloat16 stays bfloat16; float16,
 * which poc does not write, becomes float32, with a note). Every input is checked first
 * and OUT must not hold a model already: nothing is written over. */
static int mg_usage(void) {
  fprintf(stderr, "usage: poc merge BASE_DIR ADAPTER_DIR -o OUT_DIR\n");
  return 2;
}

/* The base folder's tokenizer and generation settings, copied beside the merged weights so
 * the merged folder is a whole model (transformers, poc generate --prompt). Each file is
 * written to a temporary name and renamed; a base without one of them is fine. */
static int mg_copy_extras(const char *base, const char *out) {
  static const char *const files[] = {
      "tokenizer.json",          "tokenizer_config.json", "special_tokens_map.json",
      "chat_template.jinja",     "chat_template.json",    "generation_config.json",
      "tokenizer.model",         "vocab.json",            "merges.txt",
      "added_tokens.json"};
  char src[4096], dst[4096], tmp[4200];
  for (size_t i = 0; i < sizeof files / sizeof files[0]; i++) {
    snprintf(src, sizeof src, "%s/%s", base, files[i]);
    FILE *in = fopen(src, "rb");
    if (!in) continue;
    snprintf(dst, sizeof dst, "%s/%s", out, files[i]);
    snprintf(tmp, sizeof tmp, "%s.tmp", dst);
    FILE *o = fopen(tmp, "wb");
    int bad = !o;
    char buf[65536];
    size_t n;
    while (!bad && (n = fread(buf, 1, sizeof buf, in)) > 0) bad = fwrite(buf, 1, n, o) != n;
    bad |= ferror(in);
    fclose(in);
    if (o) bad |= fclose(o) != 0;
    if (!bad) bad = rename(tmp, dst) != 0;
    if (bad) {
      fprintf(stderr, "poc merge: cannot copy %s to %s: %s\n", src, dst, strerror(errno));
      remove(tmp);
      return -1;
    }
  }
  return 0;
}

int poc_cmd_merge(int argc, char **argv) {
  const char *base = NULL, *adapter = NULL, *out = NULL;
  for (int i = 1; i < argc; i++) {
    if (!strcmp(argv[i], "-o") || !strcmp(argv[i], "--out")) {
      if (i + 1 >= argc) {
        fprintf(stderr, "poc merge: %s needs a folder\n", argv[i]);
        return mg_usage();
      }
      out = argv[++i];
    } else if (argv[i][0] == '-' && argv[i][1]) {
      fprintf(stderr, "poc merge: unknown option '%s'\n", argv[i]);
      return mg_usage();
    } else if (!base) base = argv[i];
    else if (!adapter) adapter = argv[i];
    else {
      fprintf(stderr, "poc merge: unexpected argument '%s'\n", argv[i]);
      return mg_usage();
    }
  }
  if (!base || !adapter || !out) return mg_usage();
  char path[4096];
  static const char *const held[] = {"config.json", "model.safetensors",
                                     "model.safetensors.index.json"};
  for (size_t i = 0; i < sizeof held / sizeof held[0]; i++) {
    snprintf(path, sizeof path, "%s/%s", out, held[i]);
    FILE *f = fopen(path, "r");
    if (f) {
      fclose(f);
      fprintf(stderr, "poc merge: %s already holds a model (%s); choose an empty or new "
              "folder\n", out, held[i]);
      return 2;
    }
  }
  mdl_loaded m;
  int rc = mdl_load("merge", base, &m);
  if (rc) return rc;
  char err[POC_ERR_LEN];
  poc_lora_cfg lc;
  poc_layout alay;
  float *a;
  if (poc_lora_open(adapter, &m.lay, &lc, &alay, &a, err)) {
    fprintf(stderr, "poc merge: %s\n", err);
    mdl_unload(&m);
    return 2;
  }
  poc_lora_merge(&m.lay, &alay, &lc, a, m.w);
  const char *dt = m.lay.cfg.torch_dtype;
  const char *save = !strcmp(dt, "bfloat16") ? "BF16" : "F32";
  if (!strcmp(dt, "float16"))
    fprintf(stderr, "poc merge: note: the base is float16; the merged model is written as "
            "float32\n");
  rc = 0;
  if (poc_model_save_f32(out, &m.lay, m.w, save, err)) {
    fprintf(stderr, "poc merge: %s\n", err);
    rc = 1;
  } else if (mg_copy_extras(base, out)) {
    rc = 1;
  } else {
    int nt = 0;
    for (int t = 0; t < POC_LT_N; t++) nt += lc.targets >> t & 1;
    fprintf(stderr, "poc merge: %s + %s (r %d, alpha %g, %d projection%s per layer) -> %s\n",
            base, adapter, lc.r, lc.alpha, nt, nt == 1 ? "" : "s", out);
  }
  free(a);
  poc_layout_free(&alay);
  mdl_unload(&m);
  return rc;
}
