/* tok.c — ids → text with a model folder's tokenizer.json (pocrt.h, "tokenizer").
 *
 * Decoding is the tokenizers library's: each id becomes its piece (an added token's
 * content, else the model's vocabulary entry; an id with neither is dropped, a special
 * added token too when asked), the decoder turns the list of pieces into a list of
 * strings, and those are joined. The decoders the field's tokenizers declare:
 *   ByteLevel    (GPT-2, Llama-3, Qwen2) every character of a piece stands for one byte
 *                through GPT-2's byte↔unicode map; the bytes of all pieces together are
 *                read as UTF-8, each ill-formed part becoming U+FFFD
 *   Metaspace    (SentencePiece) ▁ → space, and none on the first piece when the
 *                pre-tokenizer prepends one
 *   Replace      a literal pattern replaced in every piece (▁ → space for Llama-2)
 *   ByteFallback runs of <0xNN> pieces become their bytes when they are UTF-8, else one
 *                U+FFFD per byte piece
 *   Fuse         all pieces joined into one
 *   Strip        up to `start` leading and `stop` trailing copies of `content` removed
 *   Sequence     the above applied in order
 * With no decoder the pieces are joined with spaces. Ids at or past config.json's
 * vocab_size mean the tokenizer belongs to another model: an error before any use. */
#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cjson/cJSON.h>

#include "pocrt.h"

enum { TD_BYTELEVEL, TD_METASPACE, TD_REPLACE, TD_BYTEFALLBACK, TD_FUSE, TD_STRIP };

typedef struct {
  int kind;
  char *a, *b;   /* Replace: pattern, content. Strip: content. Metaspace: replacement */
  int start, stop; /* Strip; Metaspace: start = 1 when the first piece loses its ▁ */
} tok_step;

struct poc_tok {
  int n;            /* ids 0..n-1 */
  char **piece;     /* NULL where an id has no token */
  unsigned char *special;
  tok_step *steps;
  int n_steps;
  int has_decoder;
  char why[POC_ERR_LEN]; /* why the decoder cannot be followed; "" when it can */
};

/* ---- growable strings and lists --------------------------------------------------- */

typedef struct {
  char *s;
  size_t n, cap;
  int oom;
} tok_buf;

static void buf_add(tok_buf *b, const char *s, size_t n) {
  if (b->oom) return;
  if (b->n + n + 1 > b->cap) {
    size_t nc = b->cap ? b->cap * 2 : 64;
    while (nc < b->n + n + 1) nc *= 2;
    char *q = realloc(b->s, nc);
    if (!q) {
      b->oom = 1;
      return;
    }
    b->s = q;
    b->cap = nc;
  }
  memcpy(b->s + b->n, s, n);
  b->n += n;
  b->s[b->n] = 0;
}

static char *buf_take(tok_buf *b) {
  if (!b->s && !b->oom) buf_add(b, "", 0);
  if (b->oom) {
    free(b->s);
    return NULL;
  }
  return b->s;
}

typedef struct {
  char **v;
  int n;
  int oom;
} tok_list;

static void list_push(tok_list *l, char *s) { /* takes s */
  if (!s) {
    l->oom = 1;
    return;
  }
  char **q = realloc(l->v, (size_t)(l->n + 1) * sizeof *q);
  if (!q) {
    free(s);
    l->oom = 1;
    return;
  }
  l->v = q;
  l->v[l->n++] = s;
}

static void list_free(tok_list *l) {
  for (int i = 0; i < l->n; i++) free(l->v[i]);
  free(l->v);
  l->v = NULL;
  l->n = 0;
}

/* ---- UTF-8 -------------------------------------------------------------------------- */

/* A decoded U+0000 travels through the decoders as C0 80 (which no well-formed piece holds)
 * so that pieces stay C strings; poc_tok_decode turns it back into a zero byte. */
#define TOK_NUL "\xC0\x80"

/* Length of the well-formed UTF-8 sequence at s (Unicode Table 3-7), or -(length of its
 * maximal ill-formed prefix, at least 1): the unit one U+FFFD replaces, as Rust's
 * from_utf8_lossy (and so the tokenizers library) counts it. */
static int utf8_len(const unsigned char *s, size_t n) {
  unsigned c = s[0];
  int need;
  unsigned lo = 0x80, hi = 0xBF;
  if (c < 0x80) return 1;
  if (c >= 0xC2 && c <= 0xDF) need = 1;
  else if (c >= 0xE0 && c <= 0xEF) {
    need = 2;
    if (c == 0xE0) lo = 0xA0;
    if (c == 0xED) hi = 0x9F;
  } else if (c >= 0xF0 && c <= 0xF4) {
    need = 3;
    if (c == 0xF0) lo = 0x90;
    if (c == 0xF4) hi = 0x8F;
  } else
    return -1;
  for (int k = 1; k <= need; k++) {
    if ((size_t)k >= n) return -k;
    unsigned d = s[k];
    if (k == 1 ? d < lo || d > hi : d < 0x80 || d > 0xBF) return -k;
  }
  return need + 1;
}

static void utf8_lossy(tok_buf *out, const unsigned char *s, size_t n) {
  size_t i = 0;
  while (i < n) {
    int k = utf8_len(s + i, n - i);
    if (k > 0) {
      if (!s[i]) buf_add(out, TOK_NUL, 2);
      else buf_add(out, (const char *)s + i, (size_t)k);
      i += (size_t)k;
    } else {
      buf_add(out, "\xEF\xBF\xBD", 3);
      i += (size_t)-k;
    }
  }
}

static int utf8_valid(const unsigned char *s, size_t n) {
  for (size_t i = 0; i < n;) {
    int k = utf8_len(s + i, n - i);
    if (k < 0) return 0;
    i += (size_t)k;
  }
  return 1;
}

/* The code point at s (valid UTF-8) and its length. */
static unsigned utf8_cp(const char *s, int *len) {
  const unsigned char *u = (const unsigned char *)s;
  if (utf8_len(u, strnlen(s, 4)) < 0) return *len = 1, 0xFFFFFFFFu; /* a stray byte in the file */
  if (u[0] < 0x80) return *len = 1, u[0];
  if (u[0] < 0xE0) return *len = 2, (u[0] & 0x1Fu) << 6 | (u[1] & 0x3Fu);
  if (u[0] < 0xF0) return *len = 3, (u[0] & 0x0Fu) << 12 | (u[1] & 0x3Fu) << 6 | (u[2] & 0x3Fu);
  return *len = 4, (u[0] & 0x07u) << 18 | (u[1] & 0x3Fu) << 12 | (u[2] & 0x3Fu) << 6 | (u[3] & 0x3Fu);
}

/* ---- the decoders ----------------------------------------------------------------- */

/* GPT-2's map: the printable bytes 33..126, 161..172, 174..255 stand for themselves;
 * the other 68 take the code points 256, 257, ... in byte order. cp → byte, -1 none. */
static int byte_of_cp(unsigned cp) {
  static short table[256 + 68];
  static int ready;
  if (!ready) {
    for (int i = 0; i < 256 + 68; i++) table[i] = -1;
    int next = 256;
    for (int b = 0; b < 256; b++) {
      int printable = (b >= 33 && b <= 126) || (b >= 161 && b <= 172) || b >= 174;
      table[printable ? b : next++] = (short)b;
    }
    ready = 1;
  }
  return cp < 256 + 68 ? table[cp] : -1;
}

/* One string: each piece's bytes (a piece with a character outside the map keeps its
 * own UTF-8 bytes), read as UTF-8 lossily. */
static void dec_bytelevel(tok_list *l) {
  tok_buf raw = {0};
  for (int i = 0; i < l->n; i++) {
    const char *p = l->v[i];
    size_t start = raw.n;
    int ok = 1;
    for (int len; *p; p += len) {
      int b = byte_of_cp(utf8_cp(p, &len));
      if (b < 0) {
        ok = 0;
        break;
      }
      char c = (char)b;
      buf_add(&raw, &c, 1);
    }
    if (!ok) {
      raw.n = start;
      buf_add(&raw, l->v[i], strlen(l->v[i]));
    }
  }
  tok_buf out = {0};
  utf8_lossy(&out, (const unsigned char *)raw.s, raw.n);
  free(raw.s);
  int oom = raw.oom;
  list_free(l);
  l->oom |= oom;
  list_push(l, buf_take(&out));
}

static char *replace_all(const char *s, const char *pat, const char *with) {
  tok_buf b = {0};
  size_t np = strlen(pat);
  if (!np) return strdup(s);
  for (const char *hit; (hit = strstr(s, pat)); s = hit + np) {
    buf_add(&b, s, (size_t)(hit - s));
    buf_add(&b, with, strlen(with));
  }
  buf_add(&b, s, strlen(s));
  return buf_take(&b);
}

/* "<0xNN>" → the byte, else -1 */
static int fallback_byte(const char *p) {
  unsigned v;
  char tail;
  if (strlen(p) != 6 || strncmp(p, "<0x", 3) || p[5] != '>') return -1;
  if (sscanf(p + 3, "%2x%c", &v, &tail) != 2 || tail != '>') return -1;
  return (int)v;
}

static void dec_bytefallback(tok_list *l) {
  tok_list out = {0};
  tok_buf bytes = {0};
  int run = 0;
  for (int i = 0; i <= l->n; i++) {
    int b = i < l->n ? fallback_byte(l->v[i]) : -1;
    if (b >= 0) {
      char c = (char)b;
      buf_add(&bytes, &c, 1);
      run++;
      continue;
    }
    if (run) {
      if (utf8_valid((const unsigned char *)bytes.s, bytes.n)) {
        tok_buf v = {0};
        for (size_t k = 0; k < bytes.n; k++)
          if (bytes.s[k]) buf_add(&v, bytes.s + k, 1);
          else buf_add(&v, TOK_NUL, 2);
        list_push(&out, buf_take(&v));
      } else
        for (int k = 0; k < run; k++) list_push(&out, strdup("\xEF\xBF\xBD"));
      bytes.n = 0;
      run = 0;
    }
    if (i < l->n) {
      list_push(&out, l->v[i]);
      l->v[i] = NULL;
    }
  }
  free(bytes.s);
  out.oom |= bytes.oom | l->oom;
  list_free(l);
  *l = out;
}

static void dec_step(const tok_step *st, tok_list *l) {
  switch (st->kind) {
  case TD_BYTELEVEL: dec_bytelevel(l); return;
  case TD_BYTEFALLBACK: dec_bytefallback(l); return;
  case TD_FUSE: {
    tok_buf b = {0};
    for (int i = 0; i < l->n; i++) buf_add(&b, l->v[i], strlen(l->v[i]));
    list_free(l);
    list_push(l, buf_take(&b));
    return;
  }
  case TD_REPLACE:
  case TD_METASPACE: /* ▁ → space, and nothing before the first piece when it was prepended */
    for (int i = 0; i < l->n; i++) {
      const char *to = st->kind == TD_REPLACE ? st->b : i == 0 && st->start ? "" : " ";
      char *r = replace_all(l->v[i], st->a, to);
      if (!r) {
        l->oom = 1;
        continue;
      }
      free(l->v[i]);
      l->v[i] = r;
    }
    return;
  case TD_STRIP: {
    size_t nc = strlen(st->a);
    for (int i = 0; i < l->n && nc; i++) {
      char *s = l->v[i];
      size_t n = strlen(s), a = 0;
      for (int k = 0; k < st->start && n - a >= nc && !memcmp(s + a, st->a, nc); k++) a += nc;
      for (int k = 0; k < st->stop && n - a >= nc && !memcmp(s + n - nc, st->a, nc); k++) n -= nc;
      memmove(s, s + a, n - a);
      s[n - a] = 0;
    }
    return;
  }
  }
}

const char *poc_tok_unsupported(const poc_tok *t) { return t->why[0] ? t->why : NULL; }

char *poc_tok_decode(const poc_tok *t, const int32_t *ids, int n, int skip_special, size_t *len) {
  if (t->why[0]) return NULL;
  tok_list l = {0};
  for (int i = 0; i < n; i++) {
    if (ids[i] < 0 || ids[i] >= t->n || !t->piece[ids[i]]) continue;
    if (skip_special && t->special[ids[i]]) continue;
    list_push(&l, strdup(t->piece[ids[i]]));
  }
  for (int k = 0; k < t->n_steps && !l.oom; k++) dec_step(&t->steps[k], &l);
  tok_buf b = {0};
  for (int i = 0; i < l.n; i++) {
    if (i && !t->has_decoder) buf_add(&b, " ", 1);
    buf_add(&b, l.v[i], strlen(l.v[i]));
  }
  int oom = l.oom;
  list_free(&l);
  char *s = buf_take(&b);
  if (oom) {
    free(s);
    return NULL;
  }
  /* C0 80 back to a zero byte; bytes that are not UTF-8 (only a tokenizer.json holding
     stray bytes in a piece can bring them this far) become U+FFFD */
  tok_buf fin = {0};
  const unsigned char *u = (const unsigned char *)s;
  for (size_t i = 0; i < b.n;) {
    int k = u[i] == 0xC0 && i + 1 < b.n && u[i + 1] == 0x80 ? 0 : utf8_len(u + i, b.n - i);
    if (k == 0) buf_add(&fin, "", 1), i += 2;
    else if (k < 0) buf_add(&fin, "\xEF\xBF\xBD", 3), i += (size_t)-k;
    else buf_add(&fin, s + i, (size_t)k), i += (size_t)k;
  }
  free(s);
  size_t o = fin.n;
  s = buf_take(&fin);
  if (s && len) *len = o;
  return s;
}

char *poc_tok_json(const char *s, size_t n) {
  tok_buf b = {0};
  buf_add(&b, "\"", 1);
  for (size_t i = 0; i < n; i++) {
    unsigned char c = (unsigned char)s[i];
    char esc[8];
    if (c == '"' || c == '\\') {
      esc[0] = '\\', esc[1] = (char)c;
      buf_add(&b, esc, 2);
    } else if (c < 0x20 || c == 0x7F) {
      snprintf(esc, sizeof esc, "\\u%04x", c);
      buf_add(&b, esc, 6);
    } else
      buf_add(&b, s + i, 1);
  }
  buf_add(&b, "\"", 1);
  return buf_take(&b);
}

/* ---- reading tokenizer.json --------------------------------------------------------- */

/* err ← the message, cut to POC_ERR_LEN (a path may be long) */
static void tok_errf(char *err, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static void tok_errf(char *err, const char *fmt, ...) {
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(err, POC_ERR_LEN, fmt, ap);
  va_end(ap);
}

void poc_tok_free(poc_tok *t) {
  if (!t) return;
  for (int i = 0; i < t->n; i++) free(t->piece[i]);
  for (int k = 0; k < t->n_steps; k++) {
    free(t->steps[k].a);
    free(t->steps[k].b);
  }
  free(t->piece);
  free(t->special);
  free(t->steps);
  free(t);
}

static const char *jstr(const cJSON *o, const char *key) {
  const cJSON *v = cJSON_GetObjectItemCaseSensitive(o, key);
  return cJSON_IsString(v) ? v->valuestring : NULL;
}

static int jint(const cJSON *o, const char *key, int dflt) {
  const cJSON *v = cJSON_GetObjectItemCaseSensitive(o, key);
  return cJSON_IsNumber(v) ? v->valueint : cJSON_IsBool(v) ? cJSON_IsTrue(v) : dflt;
}

static int add_step(poc_tok *t, const cJSON *d, const char *path, char *err) {
  const char *type = jstr(d, "type");
  if (!type) {
    tok_errf(err, "%s: a decoder has no \"type\"", path);
    return -1;
  }
  if (!strcmp(type, "Sequence")) {
    const cJSON *ds = cJSON_GetObjectItemCaseSensitive(d, "decoders"), *it;
    if (!cJSON_IsArray(ds)) {
      tok_errf(err, "%s: decoder Sequence has no \"decoders\" list", path);
      return -1;
    }
    cJSON_ArrayForEach(it, ds) if (add_step(t, it, path, err)) return -1;
    return 0;
  }
  tok_step st = {0};
  if (!strcmp(type, "ByteLevel")) st.kind = TD_BYTELEVEL;
  else if (!strcmp(type, "ByteFallback")) st.kind = TD_BYTEFALLBACK;
  else if (!strcmp(type, "Fuse")) st.kind = TD_FUSE;
  else if (!strcmp(type, "Replace")) {
    st.kind = TD_REPLACE;
    const cJSON *pat = cJSON_GetObjectItemCaseSensitive(d, "pattern");
    const char *lit = jstr(pat, "String"), *with = jstr(d, "content");
    if (!lit || !with) {
      tok_errf(err, "%s: decoder Replace: only a literal {\"String\": ...} pattern "
               "with a string \"content\" is supported", path);
      return -1;
    }
    st.a = strdup(lit);
    st.b = strdup(with);
  } else if (!strcmp(type, "Strip")) {
    st.kind = TD_STRIP;
    const char *c = jstr(d, "content");
    st.a = strdup(c ? c : " ");
    st.start = jint(d, "start", 0);
    st.stop = jint(d, "stop", 0);
  } else if (!strcmp(type, "Metaspace")) {
    st.kind = TD_METASPACE;
    const char *rep = jstr(d, "replacement"), *scheme = jstr(d, "prepend_scheme");
    st.a = strdup(rep ? rep : "\xE2\x96\x81");
    /* older files say add_prefix_space; newer ones prepend_scheme always|first|never */
    st.start = scheme ? strcmp(scheme, "never") != 0 : jint(d, "add_prefix_space", 1);
  } else {
    tok_errf(err, "%s: decoder type '%s' is not supported (poc decodes ByteLevel, "
             "Metaspace, and Sequence of Replace, ByteFallback, Fuse, Strip)", path, type);
    return -1;
  }
  tok_step *q = realloc(t->steps, (size_t)(t->n_steps + 1) * sizeof *q);
  if (q) t->steps = q;
  if (!q || (st.kind == TD_REPLACE && (!st.a || !st.b)) ||
      ((st.kind == TD_STRIP || st.kind == TD_METASPACE) && !st.a)) {
    free(st.a);
    free(st.b);
    tok_errf(err, "%s: out of memory", path);
    return -1;
  }
  t->steps[t->n_steps++] = st;
  return 0;
}

/* Grows the id table to hold id and sets its piece (the first setter wins for the model's
 * vocabulary; an added token replaces it, as the library looks added tokens up first). */
static int set_piece(poc_tok *t, long id, const char *s, int special, int added) {
  if (id >= t->n) {
    long nn = t->n ? t->n : 256;
    while (nn <= id) nn *= 2;
    char **p = realloc(t->piece, (size_t)nn * sizeof *p);
    if (!p) return -1;
    t->piece = p;
    unsigned char *sp = realloc(t->special, (size_t)nn);
    if (!sp) return -1;
    t->special = sp;
    memset(t->piece + t->n, 0, (size_t)(nn - t->n) * sizeof *p);
    memset(t->special + t->n, 0, (size_t)(nn - t->n));
    t->n = (int)nn;
  }
  if (t->piece[id] && !added) return 0;
  char *c = strdup(s);
  if (!c) return -1;
  free(t->piece[id]);
  t->piece[id] = c;
  t->special[id] = (unsigned char)special;
  return 0;
}

int poc_tok_open(const char *model_dir, int vocab_size, poc_tok **out, char *err) {
  *out = NULL;
  char path[4096], cfgpath[4096];
  const char *sep = model_dir[0] && model_dir[strlen(model_dir) - 1] == '/' ? "" : "/";
  snprintf(path, sizeof path, "%s%stokenizer.json", model_dir, sep);
  snprintf(cfgpath, sizeof cfgpath, "%s%sconfig.json", model_dir, sep);
  FILE *f = fopen(path, "rb");
  if (!f) {
    if (errno == ENOENT) return 0;
    tok_errf(err, "%s: cannot open: %s", path, strerror(errno));
    return -1;
  }
  tok_buf b = {0};
  char chunk[65536];
  size_t got;
  while ((got = fread(chunk, 1, sizeof chunk, f)) > 0) buf_add(&b, chunk, got);
  int rerr = ferror(f);
  fclose(f);
  if (rerr || b.oom) {
    free(b.s);
    tok_errf(err, "%s: cannot read%s", path, b.oom ? ": out of memory" : "");
    return -1;
  }
  cJSON *root = cJSON_ParseWithLength(b.s ? b.s : "", b.n);
  if (!root) {
    size_t at = b.s ? (size_t)(cJSON_GetErrorPtr() - b.s) : 0;
    long line = 1;
    for (size_t i = 0; i < at && i < b.n; i++) line += b.s[i] == '\n';
    free(b.s);
    tok_errf(err, "%s:%ld: not valid JSON", path, line);
    return -1;
  }
  free(b.s);
  poc_tok *t = calloc(1, sizeof *t);
  int rc = -1;
  const cJSON *model = cJSON_GetObjectItemCaseSensitive(root, "model");
  const cJSON *vocab = cJSON_GetObjectItemCaseSensitive(model, "vocab");
  const cJSON *added = cJSON_GetObjectItemCaseSensitive(root, "added_tokens");
  const cJSON *dec = cJSON_GetObjectItemCaseSensitive(root, "decoder");
  const cJSON *it;
  long max_id = -1;
  const char *max_piece = "";
  if (!t) {
    tok_errf(err, "%s: out of memory", path);
    goto done;
  }
  if (!cJSON_IsObject(vocab) && !cJSON_IsArray(vocab)) {
    tok_errf(err, "%s: not a tokenizer: no \"model\": {\"vocab\": ...}", path);
    goto done;
  }
  /* BPE / WordLevel / WordPiece: {piece: id}; Unigram: [[piece, score], ...] by id */
  long idx = 0;
  cJSON_ArrayForEach(it, vocab) {
    const char *s = cJSON_IsArray(vocab) ? (cJSON_IsString(cJSON_GetArrayItem(it, 0))
                                                ? cJSON_GetArrayItem(it, 0)->valuestring
                                                : NULL)
                                         : it->string;
    double id = cJSON_IsArray(vocab) ? (double)idx : cJSON_IsNumber(it) ? it->valuedouble : -1;
    idx++;
    if (!s || id < 0 || id > 1 << 30 || id != (double)(long)id) {
      tok_errf(err, "%s: model vocabulary entry %ld is not a piece with a token id",
               path, idx - 1);
      goto done;
    }
    if (set_piece(t, (long)id, s, 0, 0)) goto oom;
    if ((long)id > max_id) max_id = (long)id, max_piece = s;
  }
  cJSON_ArrayForEach(it, added) {
    const cJSON *id = cJSON_GetObjectItemCaseSensitive(it, "id");
    const char *s = jstr(it, "content");
    if (!cJSON_IsNumber(id) || !s || id->valuedouble < 0 || id->valuedouble > 1 << 30) {
      tok_errf(err, "%s: an added token has no valid \"id\" and \"content\"", path);
      goto done;
    }
    if (set_piece(t, id->valueint, s, cJSON_IsTrue(cJSON_GetObjectItemCaseSensitive(it, "special")), 1))
      goto oom;
    if (id->valueint > max_id) max_id = id->valueint, max_piece = s;
  }
  if (vocab_size > 0 && max_id >= vocab_size) {
    tok_errf(err, "%s has token id %ld ('%.40s') but %s says vocab_size %d: the "
             "tokenizer does not belong to this model", path, max_id, max_piece, cfgpath, vocab_size);
    goto done;
  }
  t->n = (int)(max_id + 1); /* the slots past it are empty */
  if (dec && !cJSON_IsNull(dec)) {
    t->has_decoder = 1;
    /* a decoder poc cannot follow leaves the vocabulary check standing: the model still
       trains and generates, with ids only (poc_tok_unsupported says why) */
    if (add_step(t, dec, path, t->why)) {
      for (int k = 0; k < t->n_steps; k++) {
        free(t->steps[k].a);
        free(t->steps[k].b);
      }
      t->n_steps = 0;
    }
  }
  *out = t;
  t = NULL;
  rc = 1;
  goto done;
oom:
  tok_errf(err, "%s: out of memory", path);
done:
  poc_tok_free(t);
  cJSON_Delete(root);
  return rc;
}
