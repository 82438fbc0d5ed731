/* cmd_score.c — `poc score MODEL DATA.jsonl [--field NAME] [--out FILE]`: every record of
 * a data file with a reward model's scores added, so that they feed the `field` inputs of
 * other objectives (RAO's `reward`, CoPO's per-token `chosen_scores`).
 *
 * MODEL is a sequence-classification folder with one label (a checkpoint of a `reward_score()`
 * objective, or transformers' *ForSequenceClassification). The score of a response y is
 * the model's score of prompt ⊕ y, from the last token's hidden state. A record keeps all
 * its keys and gains, for each response sequence it has:
 *
 *   "response"              NAME            (points; default NAME "reward")
 *   "chosen", "rejected"    NAME_chosen, NAME_rejected   (pairs)
 *
 * With --per-token, each of them is instead a list with one score per token of the
 * response, the score of the prompt ⊕ the response up to and including that token (the
 * prefix's reward; the last entry is the whole response's score), the shape of a per-token
 * field such as CoPO's `field chosen_scores[chosen]`.
 *
 * Records stream through: they are read, scored in packs of up to a few thousand tokens
 * and written in file order, so memory does not grow with the file. With --out the output
 * is written to a temporary file beside FILE and renamed into place only when every record
 * is scored: a bad record (file:line: error) leaves FILE as it was. Without --out records go
 * to stdout as they are scored.
 *
 * Exit status: 0 ok, 1 the model or the output failed, 2 bad arguments or bad input.
 */
#include <errno.h>
#include <limits.h>
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <cjson/cJSON.h>

#include "device.h"
#include "driver.h"
#include "pocrt.h"

#define SC_PACK_TOKENS 4096

static const char *const sc_seqs[] = {"response", "chosen", "rejected"};

typedef struct sc_rec {
  int line;
  cJSON *obj;
  int32_t *prompt;
  int n_prompt;
  int32_t *resp[3];              /* per sc_seqs entry; NULL when absent */
  int n_resp[3];
  double *score[3];              /* [n_resp] with --per-token, else [1] */
} sc_rec;

typedef struct sc_run {
  const char *path, *name;
  int per_token, vocab, maxpos, window;
  poc_model *model;
  int budget;
  int32_t *tok, *ss, *ts;
  double *out;
  FILE *fp;
} sc_run;

static void sc_error(const sc_run *r, int line, const char *fmt, ...) __attribute__((format(printf, 3, 4)));
static void sc_error(const sc_run *r, int line, const char *fmt, ...) {
  va_list ap;
  va_start(ap, fmt);
  fprintf(stderr, "%s:%d: error: ", r->path, line);
  vfprintf(stderr, fmt, ap);
  fputc('\n', stderr);
  va_end(ap);
}

static void sc_rec_free(sc_rec *c) {
  cJSON_Delete(c->obj);
  free(c->prompt);
  for (int s = 0; s < 3; s++) {
    free(c->resp[s]);
    free(c->score[s]);
  }
  memset(c, 0, sizeof *c);
}

/* A non-empty array of token ids in [0, vocab). */
static int32_t *sc_ids(const sc_run *r, int line, const cJSON *a, const char *key, int *n) {
  if (!cJSON_IsArray(a) || cJSON_GetArraySize(a) == 0) {
    sc_error(r, line, "\"%s\" must be a non-empty array of token ids", key);
    return NULL;
  }
  int len = cJSON_GetArraySize(a), i = 0;
  int32_t *ids = malloc((size_t)len * sizeof *ids);
  if (!ids) {
    sc_error(r, line, "out of memory");
    return NULL;
  }
  for (const cJSON *x = a->child; x; x = x->next, i++) {
    double d = cJSON_IsNumber(x) ? x->valuedouble : NAN;
    if (!(d == floor(d)) || d < 0 || d >= r->vocab) {
      char *s = cJSON_PrintUnformatted(x);
      sc_error(r, line, "%s[%d]: %.40s is not a token id of this model (0..%d)", key, i,
               s ? s : "?", r->vocab - 1);
      free(s);
      free(ids);
      return NULL;
    }
    ids[i] = (int32_t)d;
  }
  *n = len;
  return ids;
}

static int sc_parse(const sc_run *r, int line, const char *text, size_t len, sc_rec *c) {
  memset(c, 0, sizeof *c);
  c->line = line;
  c->obj = cJSON_ParseWithLength(text, len);
  if (!c->obj) {
    const char *at = cJSON_GetErrorPtr();
    long col = at && at >= text && at <= text + len ? (long)(at - text) + 1 : 1;
    sc_error(r, line, "malformed JSON (near column %ld)", col);
    return -1;
  }
  if (!cJSON_IsObject(c->obj)) {
    sc_error(r, line, "expected a JSON object");
    return -1;
  }
  const cJSON *p = cJSON_GetObjectItemCaseSensitive(c->obj, "prompt");
  if (!p) {
    sc_error(r, line, "missing \"prompt\"");
    return -1;
  }
  if (!(c->prompt = sc_ids(r, line, p, "prompt", &c->n_prompt))) return -1;
  int any = 0;
  for (int s = 0; s < 3; s++) {
    const cJSON *a = cJSON_GetObjectItemCaseSensitive(c->obj, sc_seqs[s]);
    if (!a) continue;
    if (!(c->resp[s] = sc_ids(r, line, a, sc_seqs[s], &c->n_resp[s]))) return -1;
    long total = (long)c->n_prompt + c->n_resp[s];
    if (r->maxpos > 0 && total > r->maxpos) {
      sc_error(r, line, "prompt + %s is %ld tokens, more than max_position_embeddings (%d)",
               sc_seqs[s], total, r->maxpos);
      return -1;
    }
    if (r->window > 0 && total > r->window) {
      sc_error(r, line, "prompt + %s is %ld tokens, more than the sliding window (%d)",
               sc_seqs[s], total, r->window);
      return -1;
    }
    if (!(c->score[s] = calloc(r->per_token ? (size_t)c->n_resp[s] : 1, sizeof(double)))) {
      sc_error(r, line, "out of memory");
      return -1;
    }
    any = 1;
  }
  if (!any) {
    sc_error(r, line, "nothing to score: a points record has \"response\", a pairs record "
             "\"chosen\" and \"rejected\"");
    return -1;
  }
  return 0;
}

/* The scored sequences of a record, one per response (or per response prefix). */
static long sc_rec_tokens(const sc_run *r, const sc_rec *c) {
  long n = 0;
  for (int s = 0; s < 3; s++) {
    if (!c->resp[s]) continue;
    long k = c->n_resp[s];
    n += r->per_token ? k * c->n_prompt + k * (k + 1) / 2 : c->n_prompt + k;
  }
  return n;
}

/* Scores one pack of sequences; jobs[j] points where score j goes. */
static int sc_flush(sc_run *r, int n_seq, int n_tok, double **jobs) {
  if (!n_seq) return 0;
  r->ss[n_seq] = n_tok;
  poc_pack pack = {n_seq, n_tok, r->tok, r->ss, r->ts};
  char err[POC_ERR_LEN];
  if (poc_model_forward(r->model, &pack, 0, r->out, NULL, err)) {
    fprintf(stderr, "poc score: %s\n", err);
    return 1;
  }
  for (int j = 0; j < n_seq; j++) *jobs[j] = r->out[j];
  return 0;
}

/* Scores records [0, n) in packs of at most budget tokens, then writes them in order. */
static int sc_score(sc_run *r, sc_rec *recs, int n, double **jobs) {
  int n_seq = 0, n_tok = 0, rc = 0;
  for (int i = 0; i < n && !rc; i++) {
    sc_rec *c = &recs[i];
    for (int s = 0; s < 3 && !rc; s++) {
      if (!c->resp[s]) continue;
      int first = r->per_token ? 1 : c->n_resp[s];
      for (int k = first; k <= c->n_resp[s] && !rc; k++) {
        int len = c->n_prompt + k;
        if (n_tok + len > r->budget || n_seq + 1 >= r->budget) {
          rc = sc_flush(r, n_seq, n_tok, jobs);
          n_seq = n_tok = 0;
        }
        r->ss[n_seq] = n_tok;
        memcpy(r->tok + n_tok, c->prompt, (size_t)c->n_prompt * sizeof *r->tok);
        r->ts[n_seq] = n_tok + c->n_prompt;
        memcpy(r->tok + n_tok + c->n_prompt, c->resp[s], (size_t)k * sizeof *r->tok);
        jobs[n_seq++] = &c->score[s][r->per_token ? k - 1 : 0];
        n_tok += len;
      }
    }
  }
  if (!rc) rc = sc_flush(r, n_seq, n_tok, jobs);
  for (int i = 0; i < n && !rc; i++) {
    sc_rec *c = &recs[i];
    for (int s = 0; s < 3; s++) {
      if (!c->resp[s]) continue;
      char key[300];
      if (s == 0) snprintf(key, sizeof key, "%s", r->name);
      else snprintf(key, sizeof key, "%s_%s", r->name, sc_seqs[s]);
      cJSON *v = r->per_token ? cJSON_CreateDoubleArray(c->score[s], c->n_resp[s])
                              : cJSON_CreateNumber(c->score[s][0]);
      if (!v) {
        fprintf(stderr, "poc score: out of memory\n");
        return 1;
      }
      cJSON_DeleteItemFromObjectCaseSensitive(c->obj, key); /* a rescore replaces it */
      cJSON_AddItemToObject(c->obj, key, v);
    }
    char *s = cJSON_PrintUnformatted(c->obj);
    if (!s || fprintf(r->fp, "%s\n", s) < 0) {
      fprintf(stderr, "poc score: cannot write the output: %s\n", s ? strerror(errno) : "out of memory");
      rc = 1;
    }
    cJSON_free(s);
  }
  return rc;
}

static int sc_usage(void) {
  fprintf(stderr, "usage: poc score MODEL_DIR DATA.jsonl [--field NAME] [--per-token] [--out FILE] "
                  "[--backend cpu|cuda]\n");
  return 2;
}

static int sc_name_ok(const char *s) {
  if (!*s || strlen(s) > 200) return 0;
  for (; *s; s++)
    if (!((*s >= 'a' && *s <= 'z') || (*s >= 'A' && *s <= 'Z') || (*s >= '0' && *s <= '9') ||
          *s == '_' || *s == '/' || *s == '-' || *s == '.'))
      return 0;
  return 1;
}

int poc_cmd_score(int argc, char **argv) {
  const char *dir = NULL, *data = NULL, *name = "reward", *out = NULL, *backend = "auto";
  int per_token = 0;
  for (int i = 1; i < argc; i++) {
    const char *a = argv[i];
    if (!strcmp(a, "--field") || !strcmp(a, "--out") || !strcmp(a, "--backend")) {
      if (i + 1 >= argc) {
        fprintf(stderr, "poc score: %s needs a value\n", a);
        return sc_usage();
      }
      if (!strcmp(a, "--field")) name = argv[++i];
      else if (!strcmp(a, "--out")) out = argv[++i];
      else backend = argv[++i];
    } else if (!strcmp(a, "--per-token")) {
      per_token = 1;
    } else if (a[0] == '-' && a[1]) {
      fprintf(stderr, "poc score: unknown option '%s'\n", a);
      return sc_usage();
    } else if (!dir) dir = a;
    else if (!data) data = a;
    else {
      fprintf(stderr, "poc score: unexpected argument '%s'\n", a);
      return sc_usage();
    }
  }
  if (!dir || !data) return sc_usage();
  if (!sc_name_ok(name) || !strcmp(name, "prompt")) {
    fprintf(stderr, "poc score: --field '%s': a field name of letters, digits and _ / - . "
            "other than prompt\n", name);
    return 2;
  }
  char err[POC_ERR_LEN];
  poc_config cfg;
  poc_layout lay;
  if (poc_config_load(dir, &cfg, err)) {
    fprintf(stderr, "poc score: %s\n", err);
    return 2;
  }
  if (cfg.num_labels != 1) {
    fprintf(stderr, "poc score: %s%sconfig.json is a causal language model, not a reward model; "
            "poc score needs a sequence-classification folder with one label (a checkpoint of a "
            ".po file that calls reward_score(), or transformers' *ForSequenceClassification)\n", dir,
            dir[0] && dir[strlen(dir) - 1] == '/' ? "" : "/");
    return 2;
  }
  if (poc_layout_init(&lay, &cfg, err)) {
    fprintf(stderr, "poc score: %s\n", err);
    return 2;
  }
  float *w = malloc(lay.n_params * sizeof *w);
  if (!w) {
    fprintf(stderr, "poc score: out of memory for %zu parameters\n", lay.n_params);
    poc_layout_free(&lay);
    return 1;
  }
  if (poc_weights_load_f32(dir, &lay, w, err)) {
    fprintf(stderr, "poc score: %s\n", err);
    free(w);
    poc_layout_free(&lay);
    return 2;
  }
  FILE *in = fopen(data, "r");
  if (!in) {
    fprintf(stderr, "poc score: %s: cannot open: %s\n", data, strerror(errno));
    free(w);
    poc_layout_free(&lay);
    return 2;
  }
  sc_run r = {.path = data, .name = name, .per_token = per_token, .vocab = cfg.vocab_size,
              .maxpos = cfg.max_position_embeddings, .window = cfg.sliding_window};
  r.budget = SC_PACK_TOKENS > r.maxpos ? SC_PACK_TOKENS : r.maxpos;
  int rc = 0;
  char *tmp = NULL;
  poc_device *dev = NULL;
  if (out) {
    size_t n = strlen(out) + 16;
    tmp = malloc(n);
    int fd = -1;
    if (tmp) {
      snprintf(tmp, n, "%s.tmp-XXXXXX", out);
      fd = mkstemp(tmp);
    }
    if (fd < 0 || !(r.fp = fdopen(fd, "w"))) {
      fprintf(stderr, "poc score: %s: cannot create a temporary file beside it: %s\n", out,
              strerror(errno));
      if (fd >= 0) close(fd);
      if (tmp && fd >= 0) unlink(tmp);
      free(tmp);
      tmp = NULL;
      rc = 1;
    }
  } else {
    r.fp = stdout;
  }
  if (!rc) {
    dev = poc_device_open(backend, err);
    if (!dev) {
      fprintf(stderr, "poc score: --backend %s: %s\n", backend, err);
      rc = 2;
    } else {
      fprintf(stderr, "%s\n", dev->desc);
      r.model = poc_model_new(dev, &lay, w, POC_DT_F32, 0, r.budget, err);
      r.tok = malloc((size_t)r.budget * sizeof *r.tok);
      r.ss = malloc(((size_t)r.budget + 2) * sizeof *r.ss);
      r.ts = malloc(((size_t)r.budget + 2) * sizeof *r.ts);
      r.out = malloc(((size_t)r.budget + 2) * sizeof *r.out);
      if (!r.model || !r.tok || !r.ss || !r.ts || !r.out) {
        fprintf(stderr, "poc score: cannot make a model for %d tokens: %s\n", r.budget,
                r.model ? "out of memory" : err);
        rc = 1;
      }
    }
  }
  free(w);
  /* pending records: scored and written whenever they hold a pack's worth of tokens */
  sc_rec *recs = NULL;
  double **jobs = malloc(((size_t)r.budget + 2) * sizeof *jobs);
  int n = 0, cap = 0, lineno = 0;
  long pending = 0, written = 0;
  char *buf = NULL;
  size_t bufcap = 0;
  ssize_t len;
  if (!jobs && !rc) {
    fprintf(stderr, "poc score: out of memory\n");
    rc = 1;
  }
  while (!rc && (len = getline(&buf, &bufcap, in)) >= 0) {
    lineno++;
    if (poc_blank_line(buf, (size_t)len)) continue;
    if (n == cap) {
      cap = cap ? 2 * cap : 64;
      sc_rec *nr = realloc(recs, (size_t)cap * sizeof *nr);
      if (!nr) {
        fprintf(stderr, "poc score: out of memory reading %s\n", data);
        rc = 1;
        break;
      }
      recs = nr;
    }
    if (sc_parse(&r, lineno, buf, (size_t)len, &recs[n])) {
      sc_rec_free(&recs[n]);
      rc = 2;
      break;
    }
    pending += sc_rec_tokens(&r, &recs[n++]);
    if (pending >= r.budget) {
      rc = sc_score(&r, recs, n, jobs);
      for (int i = 0; i < n; i++) sc_rec_free(&recs[i]);
      written += n;
      n = 0;
      pending = 0;
    }
  }
  if (!rc && ferror(in)) {
    fprintf(stderr, "poc score: %s: read error\n", data);
    rc = 1;
  }
  if (!rc && n) {
    rc = sc_score(&r, recs, n, jobs);
    written += n;
  }
  for (int i = 0; i < n; i++) sc_rec_free(&recs[i]);
  free(recs);
  free(jobs);
  free(buf);
  fclose(in);
  if (r.fp && r.fp != stdout) {
    int bad = fflush(r.fp) || fsync(fileno(r.fp));
    bad |= fclose(r.fp) != 0;
    if (!rc && bad) {
      fprintf(stderr, "poc score: %s: cannot write: %s\n", out, strerror(errno));
      rc = 1;
    }
    if (!rc && rename(tmp, out)) {
      fprintf(stderr, "poc score: %s: cannot rename into place: %s\n", out, strerror(errno));
      rc = 1;
    }
    if (rc) unlink(tmp);
  } else if (!rc && fflush(stdout)) {
    fprintf(stderr, "poc score: cannot write the output: %s\n", strerror(errno));
    rc = 1;
  }
  if (!rc) fprintf(stderr, "poc score: %ld records scored%s%s\n", written, out ? " into " : "",
                   out ? out : "");
  free(tmp);
  free(r.tok);
  free(r.ss);
  free(r.ts);
  free(r.out);
  poc_model_free(r.model);
  if (dev) poc_device_close(dev);
  poc_layout_free(&lay);
  return rc;
}
