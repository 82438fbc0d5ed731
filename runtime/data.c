/* data.c — the training data set: pre-tokenised JSONL (pairs or points), every line
 * validated before training starts, then held in flat arrays; and the order examples are
 * visited in (a fresh permutation per epoch, derived from the seed).
 *
 * Errors name the file and line ("data.jsonl:7: error: ...") and are collected for the
 * whole file (up to a limit) so one run shows all of them.
 */
#include <errno.h>
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cjson/cJSON.h>

#include "st.h"
#include "train_internal.h"

#define DATA_MAX_ERRORS 20

static const char *const pair_seqs[] = {"prompt", "chosen", "rejected"};
static const char *const point_seqs[] = {"prompt", "response"};

int trn_seq_slot(poc_data_kind kind, int src) {
  if (src == POC_SRC_PROMPT) return 0;
  if (kind == POC_DATA_PAIRS) {
    if (src == POC_SRC_CHOSEN) return 1;
    if (src == POC_SRC_REJECTED) return 2;
  } else if (src == POC_SRC_RESPONSE) {
    return 1;
  }
  /* `sequence NAME` k follows the data kind's own sequences */
  if (src >= POC_SRC_EXTRA && src < POC_SRC_EXTRA + POC_MAX_EXTRA_SEQS)
    return (kind == POC_DATA_PAIRS ? 3 : 2) + (src - POC_SRC_EXTRA);
  return -1;
}

const char *trn_src_name(int src) {
  static const char *const names[] = {"prompt", "chosen", "rejected", "response", "anchor",
                                      "literal"};
  if (src >= POC_SRC_EXTRA) return "a declared sequence";
  return src >= 0 && src <= POC_SRC_LITERAL ? names[src] : "?";
}

/* Growable arrays. */
typedef struct {
  void *p;
  size_t n, cap, elt;
} dvec;

static int dv_reserve(dvec *v, size_t more) {
  if (v->n + more <= v->cap) return 0;
  size_t cap = v->cap ? v->cap : 1024;
  while (cap < v->n + more) cap *= 2;
  void *p = realloc(v->p, cap * v->elt);
  if (!p) return -1;
  v->p = p;
  v->cap = cap;
  return 0;
}

typedef struct {
  const char *path;
  long line;
  int n_err;
  int vocab;
} dctx;

static void derr(dctx *c, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static void derr(dctx *c, const char *fmt, ...) {
  c->n_err++;
  if (c->n_err > DATA_MAX_ERRORS) return;
  va_list ap;
  va_start(ap, fmt);
  fprintf(stderr, "%s:%ld: error: ", c->path, c->line);
  vfprintf(stderr, fmt, ap);
  fputc('\n', stderr);
  va_end(ap);
}

/* A JSON number that is an exact non-negative integer below the vocabulary size. cJSON
 * parses numbers as doubles, so 3.0 is accepted as 3 and 3.5 is not. */
static int read_ids(dctx *c, const cJSON *arr, const char *name, int32_t *out, int max) {
  int n = 0;
  const cJSON *it;
  cJSON_ArrayForEach(it, arr) {
    if (!cJSON_IsNumber(it)) {
      derr(c, "'%s'[%d] is not a number (token ids are integers)", name, n);
      return -1;
    }
    double d = it->valuedouble;
    if (d != floor(d) || !isfinite(d)) {
      derr(c, "'%s'[%d] = %g is not an integer token id", name, n, d);
      return -1;
    }
    if (d < 0 || d >= c->vocab) {
      derr(c, "'%s'[%d] = %.0f is outside the vocabulary [0, %d)", name, n, d, c->vocab);
      return -1;
    }
    if (n < max) out[n] = (int32_t)d;
    n++;
  }
  return n;
}

static int read_number(dctx *c, const cJSON *v, const char *name, int idx, double *out) {
  char where[160];
  if (idx >= 0) snprintf(where, sizeof where, "field '%s'[%d]", name, idx);
  else snprintf(where, sizeof where, "field '%s'", name);
  if (!cJSON_IsNumber(v)) {
    derr(c, "%s is not a number", where);
    return -1;
  }
  /* cJSON turns overflowing literals like 1e999 into inf */
  if (!isfinite(v->valuedouble)) {
    derr(c, "%s is not finite", where);
    return -1;
  }
  *out = v->valuedouble;
  return 0;
}

void trn_data_free(trn_data *d) {
  free(d->path);
  free(d->tok);
  free(d->seq_off);
  free(d->seq_len);
  free(d->ex_field);
  free(d->tok_field);
  free(d->tf_off);
  memset(d, 0, sizeof *d);
}

/* Parses one line into the arrays; 0 when the line is valid. */
static int data_line(dctx *c, trn_data *d, const poc_program *prog, const char *text,
                     dvec *tok, dvec *soff, dvec *slen, dvec *exf, dvec *tokf, dvec *tfoff,
                     int max_len) {
  char why[160];
  cJSON *j = trn_json_line(text, why, sizeof why);
  if (!j) {
    derr(c, "%s", why);
    return -1;
  }
  int rc = 0;
  if (!cJSON_IsObject(j)) {
    derr(c, "expected a JSON object, got %s", cJSON_IsArray(j) ? "an array" : "a scalar");
    cJSON_Delete(j);
    return -1;
  }
  /* the data kind's sequences, then the `sequence NAME` ones */
  const char *names[TRN_MAX_SEQ];
  int n_base = d->kind == POC_DATA_PAIRS ? 3 : 2;
  for (int q = 0; q < d->n_seq; q++)
    names[q] = q < n_base ? (d->kind == POC_DATA_PAIRS ? pair_seqs : point_seqs)[q]
                          : prog->extra_seqs[q - n_base];
  int32_t len[TRN_MAX_SEQ] = {0};
  const cJSON *arr[TRN_MAX_SEQ] = {0};
  size_t cur = tok->n; /* ids of this line go at tok->n.., sequence after sequence */
  for (int q = 0; q < d->n_seq; q++) {
    arr[q] = cJSON_GetObjectItemCaseSensitive(j, names[q]);
    if (!arr[q] && q >= n_base) {
      derr(c, "missing '%s' (declared by `sequence %s`)", names[q], names[q]);
      rc = -1;
      continue;
    }
    if (!arr[q]) {
      derr(c, "missing '%s' (a %s line has %s)", names[q],
           d->kind == POC_DATA_PAIRS ? "pairs" : "points",
           d->kind == POC_DATA_PAIRS ? "prompt, chosen, rejected" : "prompt, response");
      rc = -1;
      continue;
    }
    if (!cJSON_IsArray(arr[q])) {
      derr(c, "'%s' is not an array of token ids", names[q]);
      rc = -1;
      continue;
    }
    int n = cJSON_GetArraySize(arr[q]);
    if (n == 0) {
      derr(c, "'%s' is empty", names[q]);
      rc = -1;
      continue;
    }
    if (dv_reserve(tok, cur - tok->n + (size_t)n)) goto oom;
    int got = read_ids(c, arr[q], names[q], (int32_t *)tok->p + cur, n);
    if (got < 0) {
      rc = -1;
      continue;
    }
    len[q] = got;
    cur += (size_t)got;
  }
  /* fields */
  double exv[TRN_MAX_FIELDS];
  const cJSON *fv[TRN_MAX_FIELDS] = {0};
  for (int f = 0; f < prog->n_fields && !rc; f++) {
    const poc_field_decl *fd = &prog->fields[f];
    fv[f] = cJSON_GetObjectItemCaseSensitive(j, fd->name);
    if (!fv[f]) {
      derr(c, "missing field '%s' (declared by `field %s`)", fd->name, fd->name);
      rc = -1;
      continue;
    }
    exv[f] = 0;
    if (fd->seq < 0) {
      if (read_number(c, fv[f], fd->name, -1, &exv[f])) rc = -1;
    } else {
      int q = trn_seq_slot(d->kind, fd->seq);
      if (!cJSON_IsArray(fv[f])) {
        derr(c, "field '%s' is not an array (one number per token of '%s')", fd->name,
             names[q]);
        rc = -1;
        continue;
      }
      int n = cJSON_GetArraySize(fv[f]);
      if (n != len[q]) {
        derr(c, "field '%s' has %d numbers but '%s' has %d tokens", fd->name, n, names[q],
             len[q]);
        rc = -1;
        continue;
      }
      int i = 0;
      const cJSON *it;
      cJSON_ArrayForEach(it, fv[f]) {
        double x;
        if (read_number(c, it, fd->name, i++, &x)) {
          rc = -1;
          break;
        }
      }
    }
  }
  if (rc) {
    cJSON_Delete(j);
    return -1;
  }

  /* Truncation to max_len: each response keeps at most max_len - |prompt| tokens (and at
   * least one); a prompt longer than max_len - 1 keeps its last max_len - 1 tokens. */
  int32_t keep[TRN_MAX_SEQ] = {0}, skip[TRN_MAX_SEQ] = {0};
  int cut = 0;
  for (int q = 0; q < d->n_seq; q++) keep[q] = len[q];
  if (max_len > 1) {
    if (keep[0] > max_len - 1) {
      skip[0] = keep[0] - (max_len - 1);
      keep[0] = max_len - 1;
      cut = 1;
    }
    for (int q = 1; q < d->n_seq; q++)
      if (keep[0] + keep[q] > max_len) {
        keep[q] = max_len - keep[0];
        cut = 1;
      }
  }
  d->n_truncated += cut;
  /* the ids were read at tok->n in order prompt, a, b: compact each kept window */
  int64_t at = (int64_t)tok->n, w = at;
  int32_t *tk = tok->p;
  if (dv_reserve(soff, TRN_MAX_SEQ) || dv_reserve(slen, TRN_MAX_SEQ)) goto oom;
  for (int q = 0; q < TRN_MAX_SEQ; q++) {
    if (q < d->n_seq) {
      memmove(tk + w, tk + at + skip[q], (size_t)keep[q] * sizeof *tk);
      ((int64_t *)soff->p)[soff->n++] = w;
      ((int32_t *)slen->p)[slen->n++] = keep[q];
      w += keep[q];
      at += len[q];
    } else {
      ((int64_t *)soff->p)[soff->n++] = w;
      ((int32_t *)slen->p)[slen->n++] = 0;
    }
  }
  tok->n = (size_t)w;

  if (prog->n_fields) {
    if (dv_reserve(exf, (size_t)prog->n_fields) || dv_reserve(tfoff, (size_t)prog->n_fields))
      goto oom;
    for (int f = 0; f < prog->n_fields; f++) {
      const poc_field_decl *fd = &prog->fields[f];
      ((double *)exf->p)[exf->n++] = exv[f];
      ((int64_t *)tfoff->p)[tfoff->n++] = (int64_t)tokf->n;
      if (fd->seq < 0) continue;
      int q = trn_seq_slot(d->kind, fd->seq);
      if (dv_reserve(tokf, (size_t)keep[q])) goto oom;
      for (int i = 0; i < keep[q]; i++)
        ((double *)tokf->p)[tokf->n++] = cJSON_GetArrayItem(fv[f], skip[q] + i)->valuedouble;
    }
  }
  cJSON_Delete(j);
  return 0;
oom:
  cJSON_Delete(j);
  derr(c, "out of memory");
  return -2;
}

int trn_data_load(trn_data *d, const poc_program *prog, const char *path, int vocab,
                  int max_len) {
  memset(d, 0, sizeof *d);
  d->kind = prog->data_kind;
  d->n_seq = (d->kind == POC_DATA_PAIRS ? 3 : 2) + prog->n_extra_seqs;
  if (prog->n_extra_seqs < 0 || prog->n_extra_seqs > POC_MAX_EXTRA_SEQS) {
    fprintf(stderr, "%s: error: %d sequence declarations; at most %d are supported\n", path,
            prog->n_extra_seqs, POC_MAX_EXTRA_SEQS);
    return -1;
  }
  d->n_fields = prog->n_fields;
  if (prog->n_fields > TRN_MAX_FIELDS) {
    fprintf(stderr, "%s: error: %d data fields declared; at most %d are supported\n", path,
            prog->n_fields, TRN_MAX_FIELDS);
    return -1;
  }
  for (int f = 0; f < prog->n_fields; f++) {
    int s = prog->fields[f].seq;
    if (s >= 0 && (trn_seq_slot(d->kind, s) < 0 || trn_seq_slot(d->kind, s) >= d->n_seq)) {
      fprintf(stderr, "%s: error: field '%s' is aligned with '%s', which %s data has not\n",
              path, prog->fields[f].name, trn_src_name(s),
              d->kind == POC_DATA_PAIRS ? "pairs" : "points");
      return -1;
    }
  }
  char why[POC_ERR_LEN];
  FILE *fp = st_fopen_regular(path, why);
  if (!fp) {
    fprintf(stderr, "%s: error: cannot read the data file: %s\n", path, trn_after_path(why, path));
    return -1;
  }
  d->path = strdup(path);
  dctx c = {path, 0, 0, vocab};
  dvec tok = {.elt = sizeof(int32_t)}, soff = {.elt = sizeof(int64_t)},
       slen = {.elt = sizeof(int32_t)}, exf = {.elt = sizeof(double)},
       tokf = {.elt = sizeof(double)}, tfoff = {.elt = sizeof(int64_t)};
  char *line = NULL;
  size_t cap = 0;
  ssize_t got;
  int fatal = 0;
  while (!fatal && (got = getline(&line, &cap, fp)) >= 0) {
    c.line++;
    if ((size_t)got != strlen(line)) {
      derr(&c, "contains a NUL byte");
      continue;
    }
    const char *s = line;
    while (*s == ' ' || *s == '\t' || *s == '\r' || *s == '\n') s++;
    if (!*s) continue; /* blank lines (a trailing newline) carry nothing */
    int r = data_line(&c, d, prog, line, &tok, &soff, &slen, &exf, &tokf, &tfoff, max_len);
    if (r == -2) fatal = 1;
    if (r == 0) d->n++;
  }
  int rerr = ferror(fp);
  free(line);
  fclose(fp);
  if (rerr) {
    fprintf(stderr, "%s: error: read failed\n", path);
    c.n_err++;
  }
  if (!c.n_err && d->n == 0) {
    fprintf(stderr, "%s: error: the data file has no examples\n", path);
    c.n_err++;
  }
  d->tok = tok.p;
  d->n_tok = (int64_t)tok.n;
  d->seq_off = soff.p;
  d->seq_len = slen.p;
  d->ex_field = exf.p;
  d->tok_field = tokf.p;
  d->tf_off = tfoff.p;
  if (c.n_err) {
    if (c.n_err > DATA_MAX_ERRORS)
      fprintf(stderr, "%s: %d more errors not shown\n", path, c.n_err - DATA_MAX_ERRORS);
    trn_data_free(d);
    return -1;
  }
  return 0;
}

void trn_errf(char *err, const char *fmt, ...) {
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(err, POC_ERR_LEN, fmt, ap);
  va_end(ap);
}

int trn_path(char *buf, size_t n, const char *fmt, ...) {
  va_list ap;
  va_start(ap, fmt);
  int k = vsnprintf(buf, n, fmt, ap);
  va_end(ap);
  return k < 0 || (size_t)k >= n ? -1 : 0;
}

/* The first key that appears twice in an object of v (at any depth), or NULL. */
static const char *dup_key(const cJSON *v) {
  if (!cJSON_IsObject(v) && !cJSON_IsArray(v)) return NULL;
  for (const cJSON *a = v->child; a; a = a->next) {
    if (cJSON_IsObject(v))
      for (const cJSON *b = v->child; b != a; b = b->next)
        if (a->string && b->string && !strcmp(a->string, b->string)) return a->string;
    const char *d = dup_key(a);
    if (d) return d;
  }
  return NULL;
}

cJSON *trn_json_line(const char *text, char *why, size_t why_len) {
  const char *end = NULL;
  cJSON *j = cJSON_ParseWithOpts(text, &end, 0);
  if (!j) {
    const char *at = cJSON_GetErrorPtr();
    if (at && at >= text && at <= text + strlen(text))
      snprintf(why, why_len, "malformed JSON near column %ld", (long)(at - text) + 1);
    else snprintf(why, why_len, "malformed JSON");
    return NULL;
  }
  const char *s = end;
  while (*s == ' ' || *s == '\t' || *s == '\r' || *s == '\n') s++;
  if (*s) {
    snprintf(why, why_len, "trailing content after the JSON value at column %ld (one value "
             "a line)", (long)(s - text) + 1);
    cJSON_Delete(j);
    return NULL;
  }
  const char *d = dup_key(j);
  if (d) {
    snprintf(why, why_len, "duplicate key '%.60s'", d);
    cJSON_Delete(j);
    return NULL;
  }
  return j;
}

const char *trn_after_path(const char *msg, const char *path) {
  size_t n = strlen(path);
  return !strncmp(msg, path, n) && msg[n] == ':' && msg[n + 1] == ' ' ? msg + n + 2 : msg;
}

/* ---- content hash (FNV-1a, 64 bit) ------------------------------------------------- */

uint64_t trn_hash(uint64_t h, const void *p, size_t n) {
  const unsigned char *b = p;
  if (!h) h = 0xcbf29ce484222325ULL;
  for (size_t i = 0; i < n; i++) {
    h ^= b[i];
    h *= 0x100000001b3ULL;
  }
  return h;
}

uint64_t trn_hash_str(uint64_t h, const char *s) { return trn_hash(h, s, strlen(s) + 1); }

/* ---- visiting order ---------------------------------------------------------------- */

/* Epoch e's order: Fisher–Yates over 0..n-1 drawn from poc_rng_derive(seed, e, 0), so any
 * position of the stream is recomputed from (seed, position) alone — which is what makes
 * resume exact without saving the permutation. */
void trn_order_init(trn_order *o, const trn_data *d, uint64_t seed, int sequential) {
  o->n = d->n;
  o->seed = seed;
  o->sequential = sequential;
  o->epoch = -1;
  o->perm = malloc((size_t)d->n * sizeof *o->perm);
}

void trn_order_free(trn_order *o) {
  free(o->perm);
  o->perm = NULL;
}

int64_t trn_order_at(trn_order *o, int64_t pos) {
  int64_t e = pos / o->n, i = pos % o->n;
  if (o->sequential) return i;
  if (e != o->epoch) {
    for (int64_t k = 0; k < o->n; k++) o->perm[k] = k;
    poc_rng r = poc_rng_derive(o->seed, (uint64_t)e, 0);
    for (int64_t k = o->n - 1; k > 0; k--) {
      int64_t j = (int64_t)(poc_rng_uniform(&r) * (double)(k + 1));
      if (j > k) j = k;
      int64_t t = o->perm[k];
      o->perm[k] = o->perm[j];
      o->perm[j] = t;
    }
    o->epoch = e;
  }
  return o->perm[i];
}
