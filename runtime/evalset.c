/* evalset.c — the prompts(...) evaluation set: one JSON object a line,
 * {"prompt": [ids], "answer": [ids]}. Accuracy is greedy exact match: the tokens the model
 * generates before eos must equal the answer (a trailing eos in the file is dropped).
 * Each evaluation's generations are kept as samples, OUT/eval/step-N.jsonl. */
#include <errno.h>
#include <inttypes.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include <cjson/cJSON.h>

#include "st.h"
#include "train_internal.h"

void trn_evalset_free(trn_evalset *e) {
  free(e->tok);
  free(e->p_off);
  free(e->a_off);
  free(e->p_len);
  free(e->a_len);
  memset(e, 0, sizeof *e);
}

static int ids(const char *path, long line, const cJSON *o, const char *name, int vocab,
               int32_t **tok, size_t *n, size_t *cap, int32_t *len) {
  const cJSON *a = cJSON_GetObjectItemCaseSensitive(o, name);
  if (!cJSON_IsArray(a)) {
    fprintf(stderr, "%s:%ld: error: '%s' %s\n", path, line, name,
            a ? "is not an array of token ids" : "is missing");
    return -1;
  }
  int k = 0;
  const cJSON *it;
  cJSON_ArrayForEach(it, a) {
    double d = cJSON_IsNumber(it) ? it->valuedouble : -1;
    if (!cJSON_IsNumber(it) || d != floor(d) || d < 0 || d >= vocab) {
      fprintf(stderr, "%s:%ld: error: '%s'[%d] is not a token id in [0, %d)\n", path, line,
              name, k, vocab);
      return -1;
    }
    if (*n + 1 > *cap) {
      size_t nc = *cap ? *cap * 2 : 1024;
      int32_t *q = realloc(*tok, nc * sizeof *q);
      if (!q) return -1;
      *tok = q;
      *cap = nc;
    }
    (*tok)[(*n)++] = (int32_t)d;
    k++;
  }
  *len = k;
  return 0;
}

int trn_evalset_load(trn_evalset *e, const char *path, int vocab, int eos) {
  memset(e, 0, sizeof *e);
  char why[POC_ERR_LEN];
  FILE *f = st_fopen_regular(path, why);
  if (!f) {
    fprintf(stderr, "%s: error: cannot read the evaluation set: %s\n", path, trn_after_path(why, path));
    return -1;
  }
  char *line = NULL;
  size_t lcap = 0, ntok = 0, tcap = 0;
  int cap = 0, bad = 0;
  long ln = 0;
  ssize_t got;
  while ((got = getline(&line, &lcap, f)) >= 0) {
    ln++;
    if ((size_t)got != strlen(line)) {
      /* the parser would stop at the NUL and miss whatever follows it */
      fprintf(stderr, "%s:%ld: error: contains a NUL byte\n", path, ln);
      bad++;
      continue;
    }
    const char *s = line;
    while (*s == ' ' || *s == '\t' || *s == '\r' || *s == '\n') s++;
    if (!*s) continue;
    char why[160];
    cJSON *o = trn_json_line(line, why, sizeof why);
    if (!cJSON_IsObject(o)) {
      fprintf(stderr, "%s:%ld: error: %s\n", path, ln, o ? "expected a JSON object" : why);
      cJSON_Delete(o);
      bad++;
      continue;
    }
    if (e->n == cap) {
      cap = cap ? cap * 2 : 64;
      e->p_off = realloc(e->p_off, (size_t)cap * sizeof *e->p_off);
      e->a_off = realloc(e->a_off, (size_t)cap * sizeof *e->a_off);
      e->p_len = realloc(e->p_len, (size_t)cap * sizeof *e->p_len);
      e->a_len = realloc(e->a_len, (size_t)cap * sizeof *e->a_len);
      if (!e->p_off || !e->a_off || !e->p_len || !e->a_len) {
        cJSON_Delete(o);
        bad++;
        break;
      }
    }
    size_t n0 = ntok;
    e->p_off[e->n] = (int64_t)ntok;
    if (ids(path, ln, o, "prompt", vocab, &e->tok, &ntok, &tcap, &e->p_len[e->n])) {
      cJSON_Delete(o);
      ntok = n0;
      bad++;
      continue;
    }
    e->a_off[e->n] = (int64_t)ntok;
    if (ids(path, ln, o, "answer", vocab, &e->tok, &ntok, &tcap, &e->a_len[e->n])) {
      cJSON_Delete(o);
      ntok = n0;
      bad++;
      continue;
    }
    cJSON_Delete(o);
    if (e->a_len[e->n] > 0 && eos >= 0 && e->tok[ntok - 1] == eos) e->a_len[e->n]--;
    if (e->p_len[e->n] == 0) {
      fprintf(stderr, "%s:%ld: error: 'prompt' is empty\n", path, ln);
      ntok = n0;
      bad++;
      continue;
    }
    e->n++;
  }
  free(line);
  fclose(f);
  if (!bad && e->n == 0) {
    fprintf(stderr, "%s: error: the evaluation set has no prompts\n", path);
    bad++;
  }
  if (bad) {
    trn_evalset_free(e);
    return -1;
  }
  return 0;
}

void trn_evalgen_free(trn_evalgen *g) {
  free(g->gen);
  free(g->off);
  free(g->len);
  free(g->correct);
  memset(g, 0, sizeof *g);
}

static cJSON *id_array(const int32_t *t, int n) {
  cJSON *a = cJSON_CreateArray();
  for (int i = 0; a && i < n; i++) {
    cJSON *v = cJSON_CreateNumber(t[i]);
    if (!v || !cJSON_AddItemToArray(a, v)) {
      cJSON_Delete(v);
      cJSON_Delete(a);
      return NULL;
    }
  }
  return a;
}

/* key: the text of t[0..n) as a raw JSON string (it may hold a zero byte, which cJSON's own
 * strings cannot) */
static int add_text(cJSON *o, const char *key, const poc_tok *tok, const int32_t *t, int n) {
  size_t len;
  char *s = poc_tok_decode(tok, t, n, 1, &len);
  char *js = s ? poc_tok_json(s, len) : NULL;
  free(s);
  cJSON *raw = js ? cJSON_CreateRaw(js) : NULL;
  free(js);
  return raw && cJSON_AddItemToObject(o, key, raw) ? 0 : (cJSON_Delete(raw), -1);
}

int trn_eval_samples_write(const char *out, int64_t step, const trn_evalset *e,
                           const trn_evalgen *g, const poc_tok *tok, char *err) {
  char dir[4096 + 8], path[4096 + 64];
  trn_path(dir, sizeof dir, "%s/eval", out);
  if (mkdir(dir, 0777) && errno != EEXIST) {
    trn_errf(err, "%s: cannot make the folder: %s", dir, strerror(errno));
    return -1;
  }
  trn_path(path, sizeof path, "%s/step-%" PRId64 ".jsonl", dir, step);
  char *buf = NULL;
  size_t n = 0, cap = 0;
  int oom = 0;
  for (int i = 0; i < e->n && !oom; i++) {
    const int32_t *pt = e->tok + e->p_off[i], *at = e->tok + e->a_off[i], *gt = g->gen + g->off[i];
    cJSON *o = cJSON_CreateObject();
    oom = !o || !cJSON_AddNumberToObject(o, "index", i) ||
          !cJSON_AddItemToObject(o, "prompt", id_array(pt, e->p_len[i])) ||
          !cJSON_AddItemToObject(o, "generated", id_array(gt, g->len[i])) ||
          !cJSON_AddItemToObject(o, "answer", id_array(at, e->a_len[i])) ||
          !cJSON_AddBoolToObject(o, "correct", g->correct[i]);
    if (!oom && tok)
      oom = add_text(o, "prompt_text", tok, pt, e->p_len[i]) ||
            add_text(o, "generated_text", tok, gt, g->len[i]) ||
            add_text(o, "answer_text", tok, at, e->a_len[i]);
    char *line = oom ? NULL : cJSON_PrintUnformatted(o);
    cJSON_Delete(o);
    size_t ln = line ? strlen(line) : 0;
    if (line && n + ln + 2 > cap) {
      size_t nc = cap ? cap * 2 : 65536;
      while (nc < n + ln + 2) nc *= 2;
      char *q = realloc(buf, nc);
      if (q) buf = q, cap = nc;
      else oom = 1;
    }
    if (line && !oom) {
      memcpy(buf + n, line, ln);
      n += ln;
      buf[n++] = '\n';
      buf[n] = 0;
    }
    oom |= !line;
    cJSON_free(line);
  }
  int rc = -1;
  if (oom) trn_errf(err, "%s: out of memory", path);
  else rc = st_write_text_atomic(path, buf ? buf : "", err);
  free(buf);
  return rc;
}
