/* st_read.c — safetensors reader: map the file, validate the header completely before
 * any data is touched, convert elements exactly. Every error names the file, and the
 * tensor when there is one; no input, however malformed, reads outside the mapping. */
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cjson/cJSON.h>

#include "pocrt.h"
#include "st.h"

#if defined(__BYTE_ORDER__) && __BYTE_ORDER__ != __ORDER_LITTLE_ENDIAN__
#error "the safetensors reader assumes a little-endian host"
#endif

/* A JSON header larger than this is refused as corrupt (the format's own limit). */
#define ST_MAX_HEADER (100u << 20)
/* Offsets and shapes arrive as JSON numbers (doubles): only integers below 2^53 are exact. */
#define ST_MAX_INT 9007199254740992.0

static const struct { const char *name; size_t size; } dtypes[ST_NDTYPES] = {
    [ST_BOOL] = {"BOOL", 1},        [ST_U8] = {"U8", 1},   [ST_I8] = {"I8", 1},
    [ST_F8_E4M3] = {"F8_E4M3", 1},  [ST_F8_E5M2] = {"F8_E5M2", 1},
    [ST_I16] = {"I16", 2},          [ST_U16] = {"U16", 2}, [ST_F16] = {"F16", 2},
    [ST_BF16] = {"BF16", 2},        [ST_I32] = {"I32", 4}, [ST_U32] = {"U32", 4},
    [ST_F32] = {"F32", 4},          [ST_I64] = {"I64", 8}, [ST_U64] = {"U64", 8},
    [ST_F64] = {"F64", 8},
};

const char *st_dtype_name(enum st_dtype d) { return dtypes[d].name; }
size_t st_dtype_size(enum st_dtype d) { return dtypes[d].size; }

/* ---- element conversion ---------------------------------------------------------- */

static float bits_f32(uint32_t u) {
  float x;
  memcpy(&x, &u, 4);
  return x;
}

/* bf16 is the top half of an f32: widening is a shift. */
float st_bf16_to_f32(uint16_t h) { return bits_f32((uint32_t)h << 16); }

/* f16: 1 sign, 5 exponent (bias 15), 10 mantissa bits. Subnormals are m·2^-24, which
 * float holds exactly; the exponent 31 is inf (m = 0) or NaN (payload kept). */
float st_f16_to_f32(uint16_t h) {
  uint32_t sign = (uint32_t)(h >> 15) << 31, e = (h >> 10) & 0x1f, m = h & 0x3ff;
  if (e == 0) {
    float v = (float)m * 0x1p-24f;
    return sign ? -v : v;
  }
  if (e == 31) return bits_f32(sign | 0x7f800000u | (m << 13));
  return bits_f32(sign | ((e - 15 + 127) << 23) | (m << 13));
}

/* Round to nearest even: add 0x7fff plus the lowest kept bit, then truncate. A NaN
 * could carry into infinity that way, so it is kept quiet explicitly. */
uint16_t st_f32_to_bf16(float x) {
  uint32_t u;
  memcpy(&u, &x, 4);
  if ((u & 0x7fffffffu) > 0x7f800000u) return (uint16_t)((u >> 16) | 0x40);
  u += 0x7fffu + ((u >> 16) & 1);
  return (uint16_t)(u >> 16);
}

static int not_float(const st_file *f, const st_tensor *t, char *err) {
  snprintf(err, POC_ERR_LEN, "%s: tensor '%s' has dtype %s; weights must be F16, BF16, F32 or F64",
           f->path, t->name, st_dtype_name(t->dtype));
  return -1;
}

#define ST_CONVERT(NAME, T)                                                         \
  int NAME(const st_file *f, const st_tensor *t, T *out, char *err) {                \
    const unsigned char *p = f->data + t->begin;                                     \
    uint64_t n = t->numel;                                                           \
    switch (t->dtype) {                                                              \
    case ST_BF16:                                                                    \
      for (uint64_t i = 0; i < n; i++) {                                             \
        uint16_t h;                                                                  \
        memcpy(&h, p + 2 * i, 2);                                                    \
        out[i] = (T)st_bf16_to_f32(h);                                               \
      }                                                                              \
      return 0;                                                                      \
    case ST_F16:                                                                     \
      for (uint64_t i = 0; i < n; i++) {                                             \
        uint16_t h;                                                                  \
        memcpy(&h, p + 2 * i, 2);                                                    \
        out[i] = (T)st_f16_to_f32(h);                                                \
      }                                                                              \
      return 0;                                                                      \
    case ST_F32:                                                                     \
      for (uint64_t i = 0; i < n; i++) {                                             \
        float x;                                                                     \
        memcpy(&x, p + 4 * i, 4);                                                    \
        out[i] = (T)x;                                                               \
      }                                                                              \
      return 0;                                                                      \
    case ST_F64:                                                                     \
      for (uint64_t i = 0; i < n; i++) {                                             \
        double x;                                                                    \
        memcpy(&x, p + 8 * i, 8);                                                    \
        out[i] = (T)x;                                                               \
      }                                                                              \
      return 0;                                                                      \
    default:                                                                         \
      return not_float(f, t, err);                                                   \
    }                                                                                \
  }

ST_CONVERT(st_read_f32, float)
ST_CONVERT(st_read_f64, double)

/* ---- header validation ----------------------------------------------------------- */

static int json_u64(const cJSON *v, uint64_t *out) {
  if (!cJSON_IsNumber(v)) return -1;
  double d = v->valuedouble;
  if (!(d >= 0) || d >= ST_MAX_INT || d != floor(d)) return -1;
  *out = (uint64_t)d;
  return 0;
}

static int cmp_name(const void *a, const void *b) {
  return strcmp(((const st_tensor *)a)->name, ((const st_tensor *)b)->name);
}

static int cmp_begin(const void *a, const void *b) {
  const st_tensor *x = *(const st_tensor *const *)a, *y = *(const st_tensor *const *)b;
  if (x->begin != y->begin) return x->begin < y->begin ? -1 : 1;
  return x->end < y->end ? -1 : x->end > y->end;
}

/* One header entry: {"dtype": "BF16", "shape": [..], "data_offsets": [b, e]}. */
static int parse_entry(st_file *f, const cJSON *e, st_tensor *t, char *err) {
  const char *nm = t->name;
  if (!cJSON_IsObject(e)) {
    snprintf(err, POC_ERR_LEN, "%s: header entry '%s' is not an object", f->path, nm);
    return -1;
  }
  const cJSON *dt = cJSON_GetObjectItemCaseSensitive(e, "dtype");
  const cJSON *sh = cJSON_GetObjectItemCaseSensitive(e, "shape");
  const cJSON *off = cJSON_GetObjectItemCaseSensitive(e, "data_offsets");
  if (!cJSON_IsString(dt)) {
    snprintf(err, POC_ERR_LEN, "%s: tensor '%s': missing or non-string \"dtype\"", f->path, nm);
    return -1;
  }
  int d = -1;
  for (int i = 0; i < ST_NDTYPES; i++)
    if (!strcmp(dt->valuestring, dtypes[i].name)) d = i;
  if (d < 0) {
    snprintf(err, POC_ERR_LEN, "%s: tensor '%s': unknown dtype '%.40s'", f->path, nm, dt->valuestring);
    return -1;
  }
  t->dtype = (enum st_dtype)d;
  if (!cJSON_IsArray(sh)) {
    snprintf(err, POC_ERR_LEN, "%s: tensor '%s': missing or non-array \"shape\"", f->path, nm);
    return -1;
  }
  int nd = cJSON_GetArraySize(sh);
  if (nd > ST_MAX_DIMS) {
    snprintf(err, POC_ERR_LEN, "%s: tensor '%s': %d dimensions (at most %d)", f->path, nm, nd, ST_MAX_DIMS);
    return -1;
  }
  t->ndim = nd;
  /* numel is checked against the byte span, itself below 2^53, so a product that grows
   * past 2^53 is already wrong and is refused before it can overflow. */
  uint64_t numel = 1;
  int i = 0;
  for (const cJSON *x = sh->child; x; x = x->next, i++) {
    uint64_t v;
    if (json_u64(x, &v)) {
      snprintf(err, POC_ERR_LEN, "%s: tensor '%s': shape[%d] is not a non-negative integer", f->path, nm, i);
      return -1;
    }
    t->shape[i] = (int64_t)v;
    if (v && numel > (UINT64_C(1) << 53) / v) {
      snprintf(err, POC_ERR_LEN, "%s: tensor '%s': shape is impossibly large", f->path, nm);
      return -1;
    }
    numel *= v;
  }
  t->numel = numel;
  if (!cJSON_IsArray(off) || cJSON_GetArraySize(off) != 2 || json_u64(off->child, &t->begin) ||
      json_u64(off->child->next, &t->end)) {
    snprintf(err, POC_ERR_LEN, "%s: tensor '%s': \"data_offsets\" must be two non-negative integers",
             f->path, nm);
    return -1;
  }
  if (t->begin > t->end) {
    snprintf(err, POC_ERR_LEN, "%s: tensor '%s': data_offsets [%llu, %llu] run backwards", f->path, nm,
             (unsigned long long)t->begin, (unsigned long long)t->end);
    return -1;
  }
  if (t->end > f->data_len) {
    snprintf(err, POC_ERR_LEN,
             "%s: tensor '%s': data_offsets [%llu, %llu] run past the end of the data (%llu bytes; "
             "truncated file?)",
             f->path, nm, (unsigned long long)t->begin, (unsigned long long)t->end,
             (unsigned long long)f->data_len);
    return -1;
  }
  if (numel * dtypes[d].size != t->end - t->begin) {
    snprintf(err, POC_ERR_LEN,
             "%s: tensor '%s': %llu elements of %s need %llu bytes but data_offsets span %llu",
             f->path, nm, (unsigned long long)numel, dtypes[d].name,
             (unsigned long long)(numel * dtypes[d].size), (unsigned long long)(t->end - t->begin));
    return -1;
  }
  return 0;
}

static int parse_header(st_file *f, const char *json, size_t len, char *err) {
  const char *end = NULL;
  cJSON *root = cJSON_ParseWithLengthOpts(json, len, &end, 0);
  if (!root) {
    size_t at = cJSON_GetErrorPtr() ? (size_t)(cJSON_GetErrorPtr() - json) : 0;
    snprintf(err, POC_ERR_LEN, "%s: header is not valid JSON (near byte %zu of %zu)", f->path,
             at < len ? at : len, len);
    return -1;
  }
  /* The writer pads with spaces; anything else after the JSON value is corruption. */
  for (const char *p = end; p < json + len; p++)
    if (*p != ' ' && *p != '\n' && *p != '\r' && *p != '\t') {
      snprintf(err, POC_ERR_LEN, "%s: header has trailing bytes after its JSON object", f->path);
      cJSON_Delete(root);
      return -1;
    }
  if (!cJSON_IsObject(root)) {
    snprintf(err, POC_ERR_LEN, "%s: header is not a JSON object", f->path);
    cJSON_Delete(root);
    return -1;
  }
  int n = 0;
  for (const cJSON *e = root->child; e; e = e->next)
    if (strcmp(e->string, "__metadata__")) n++;
  f->t = calloc(n ? (size_t)n : 1, sizeof *f->t);
  int rc = f->t ? 0 : -1;
  if (rc) snprintf(err, POC_ERR_LEN, "%s: out of memory", f->path);
  for (const cJSON *e = root->child; e && !rc; e = e->next) {
    if (!strcmp(e->string, "__metadata__")) {
      if (!cJSON_IsObject(e) && !cJSON_IsNull(e)) {
        snprintf(err, POC_ERR_LEN, "%s: \"__metadata__\" is not an object", f->path);
        rc = -1;
      }
      continue;
    }
    st_tensor *t = &f->t[f->n];
    t->name = strdup(e->string);
    if (!t->name) {
      snprintf(err, POC_ERR_LEN, "%s: out of memory", f->path);
      rc = -1;
      break;
    }
    f->n++;
    rc = parse_entry(f, e, t, err);
  }
  cJSON_Delete(root);
  if (rc) return -1;

  qsort(f->t, (size_t)f->n, sizeof *f->t, cmp_name);
  for (int i = 1; i < f->n; i++)
    if (!strcmp(f->t[i - 1].name, f->t[i].name)) {
      snprintf(err, POC_ERR_LEN, "%s: tensor '%s' appears twice in the header", f->path, f->t[i].name);
      return -1;
    }
  /* Entries may be listed in any order, but their byte ranges must not overlap. */
  const st_tensor **by = malloc((n ? (size_t)n : 1) * sizeof *by);
  if (!by) {
    snprintf(err, POC_ERR_LEN, "%s: out of memory", f->path);
    return -1;
  }
  for (int i = 0; i < f->n; i++) by[i] = &f->t[i];
  qsort(by, (size_t)f->n, sizeof *by, cmp_begin);
  const st_tensor *last = NULL;  /* the non-empty range reaching furthest so far */
  for (int i = 0; i < f->n; i++) {
    if (by[i]->begin == by[i]->end) continue;
    if (last && by[i]->begin < last->end) {
      snprintf(err, POC_ERR_LEN, "%s: tensors '%s' [%llu, %llu] and '%s' [%llu, %llu] overlap", f->path,
               last->name, (unsigned long long)last->begin, (unsigned long long)last->end, by[i]->name,
               (unsigned long long)by[i]->begin, (unsigned long long)by[i]->end);
      free(by);
      return -1;
    }
    if (!last || by[i]->end > last->end) last = by[i];
  }
  free(by);
  return 0;
}

static const char *file_kind(mode_t m) {
  return S_ISDIR(m) ? "a directory" : S_ISFIFO(m) ? "a FIFO" : S_ISCHR(m) ? "a character device"
         : S_ISBLK(m) ? "a block device" : S_ISSOCK(m) ? "a socket" : "not a plain file";
}

int st_open_regular(const char *path, char *err) {
  /* O_NONBLOCK: opening a FIFO for reading otherwise waits for a writer, forever */
  int fd = open(path, O_RDONLY | O_CLOEXEC | O_NONBLOCK);
  struct stat stt;
  if (fd < 0 || fstat(fd, &stt)) {
    snprintf(err, POC_ERR_LEN, "%s: cannot open: %s", path, strerror(errno));
    if (fd >= 0) close(fd);
    return -1;
  }
  if (!S_ISREG(stt.st_mode)) {
    snprintf(err, POC_ERR_LEN, "%s: not a regular file (%s)", path, file_kind(stt.st_mode));
    close(fd);
    return -1;
  }
  int fl = fcntl(fd, F_GETFL);
  if (fl >= 0) fcntl(fd, F_SETFL, fl & ~O_NONBLOCK);
  return fd;
}

FILE *st_fopen_regular(const char *path, char *err) {
  int fd = st_open_regular(path, err);
  if (fd < 0) return NULL;
  FILE *f = fdopen(fd, "rb");
  if (!f) {
    snprintf(err, POC_ERR_LEN, "%s: cannot open: %s", path, strerror(errno));
    close(fd);
  }
  return f;
}

int st_open(st_file *f, const char *path, char *err) {
  memset(f, 0, sizeof *f);
  f->path = strdup(path);
  if (!f->path) {
    snprintf(err, POC_ERR_LEN, "%s: out of memory", path);
    return -1;
  }
  int fd = st_open_regular(path, err);
  struct stat stt;
  if (fd < 0 || fstat(fd, &stt)) {
    if (fd >= 0) {
      snprintf(err, POC_ERR_LEN, "%s: cannot open: %s", path, strerror(errno));
      close(fd);
    }
    st_close(f);
    return -1;
  }
  f->size = (size_t)stt.st_size;
  if (f->size < 8) {
    snprintf(err, POC_ERR_LEN, "%s: truncated: %zu bytes, too short for the 8-byte header length", path,
             f->size);
    close(fd);
    st_close(f);
    return -1;
  }
  void *map = mmap(NULL, f->size, PROT_READ, MAP_PRIVATE, fd, 0);
  close(fd);
  if (map == MAP_FAILED) {
    snprintf(err, POC_ERR_LEN, "%s: cannot map: %s", path, strerror(errno));
    st_close(f);
    return -1;
  }
  f->map = map;
  uint64_t hlen = 0;
  for (int i = 7; i >= 0; i--) hlen = hlen << 8 | f->map[i];
  if (hlen > f->size - 8 || hlen > ST_MAX_HEADER) {
    snprintf(err, POC_ERR_LEN,
             "%s: header length %llu is larger than the file (%zu bytes; truncated or not safetensors)",
             path, (unsigned long long)hlen, f->size);
    st_close(f);
    return -1;
  }
  if (hlen < 2) {
    snprintf(err, POC_ERR_LEN, "%s: header length %llu is too short for a JSON object", path,
             (unsigned long long)hlen);
    st_close(f);
    return -1;
  }
  f->data = f->map + 8 + hlen;
  f->data_len = f->size - 8 - hlen;
  if (parse_header(f, (const char *)f->map + 8, (size_t)hlen, err)) {
    st_close(f);
    return -1;
  }
  return 0;
}

void st_close(st_file *f) {
  if (f->map) munmap((void *)f->map, f->size);
  for (int i = 0; i < f->n; i++) free(f->t[i].name);
  free(f->t);
  free(f->path);
  memset(f, 0, sizeof *f);
}

const st_tensor *st_find(const st_file *f, const char *name) {
  int lo = 0, hi = f->n - 1;
  while (lo <= hi) {
    int mid = (lo + hi) / 2, c = strcmp(f->t[mid].name, name);
    if (!c) return &f->t[mid];
    if (c < 0) lo = mid + 1;
    else hi = mid - 1;
  }
  return NULL;
}

/* ---- a model folder: one file or an index of shards ------------------------------ */

static char *join(const char *dir, const char *name) {
  size_t a = strlen(dir), b = strlen(name);
  char *s = malloc(a + b + 2);
  if (!s) return NULL;
  memcpy(s, dir, a);
  size_t k = a;
  if (a && dir[a - 1] != '/') s[k++] = '/';
  memcpy(s + k, name, b + 1);
  return s;
}

static char *slurp(const char *path, size_t *len, char *err) {
  FILE *fp = st_fopen_regular(path, err);
  if (!fp) return NULL;
  size_t cap = 4096, n = 0;
  char *buf = malloc(cap);
  while (buf) {
    n += fread(buf + n, 1, cap - n - 1, fp);
    if (n < cap - 1) break;
    char *nb = realloc(buf, cap * 2);
    if (!nb) {
      free(buf);
      buf = NULL;
      break;
    }
    buf = nb;
    cap *= 2;
  }
  int bad = ferror(fp);
  fclose(fp);
  if (!buf || bad) {
    snprintf(err, POC_ERR_LEN, "%s: cannot read", path);
    free(buf);
    return NULL;
  }
  buf[n] = 0;
  *len = n;
  return buf;
}

static int cmp_entry(const void *a, const void *b) {
  return strcmp(((const struct st_entry *)a)->name, ((const struct st_entry *)b)->name);
}

static int open_index(st_model *m, const char *dir, char *err) {
  size_t len;
  char *text = slurp(m->where, &len, err);
  if (!text) return -1;
  cJSON *root = cJSON_ParseWithLength(text, len);
  free(text);
  const cJSON *wm = root ? cJSON_GetObjectItemCaseSensitive(root, "weight_map") : NULL;
  if (!cJSON_IsObject(wm)) {
    snprintf(err, POC_ERR_LEN, "%s: %s", m->where,
             root ? "no \"weight_map\" object" : "not valid JSON");
    cJSON_Delete(root);
    return -1;
  }
  int n = cJSON_GetArraySize(wm);
  m->names = calloc((size_t)n + 1, sizeof *m->names);
  m->files = calloc((size_t)n + 1, sizeof *m->files);
  char **shard = calloc((size_t)n + 1, sizeof *shard);
  int rc = (m->names && m->files && shard) ? 0 : -1;
  if (rc) snprintf(err, POC_ERR_LEN, "%s: out of memory", m->where);
  for (const cJSON *e = wm->child; e && !rc; e = e->next) {
    if (!cJSON_IsString(e) || !*e->valuestring || strchr(e->valuestring, '/') ||
        !strcmp(e->valuestring, "..") || !strcmp(e->valuestring, ".")) {
      snprintf(err, POC_ERR_LEN, "%s: weight_map entry '%s' must name a shard file in the folder",
               m->where, e->string);
      rc = -1;
      break;
    }
    int k = 0;
    while (k < m->n_files && strcmp(shard[k], e->valuestring)) k++;
    if (k == m->n_files) {
      shard[k] = e->valuestring;
      char *p = join(dir, e->valuestring);
      rc = p ? st_open(&m->files[k], p, err) : -1;
      free(p);
      if (rc) break;
      m->n_files++;
    }
    if (!st_find(&m->files[k], e->string)) {
      snprintf(err, POC_ERR_LEN, "%s: tensor '%s' is listed in %s but that shard does not hold it",
               m->where, e->string, e->valuestring);
      rc = -1;
      break;
    }
    m->names[m->n_names].name = strdup(e->string);
    m->names[m->n_names].file = k;
    if (!m->names[m->n_names].name) rc = -1;
    else m->n_names++;
  }
  free(shard);
  cJSON_Delete(root);
  if (rc) return -1;
  qsort(m->names, (size_t)m->n_names, sizeof *m->names, cmp_entry);
  for (int i = 1; i < m->n_names; i++)
    if (!strcmp(m->names[i - 1].name, m->names[i].name)) {
      snprintf(err, POC_ERR_LEN, "%s: tensor '%s' appears twice in weight_map", m->where, m->names[i].name);
      return -1;
    }
  return 0;
}

int st_model_open(st_model *m, const char *dir, char *err) {
  memset(m, 0, sizeof *m);
  char *single = join(dir, "model.safetensors");
  if (!single) {
    snprintf(err, POC_ERR_LEN, "%s: out of memory", dir);
    return -1;
  }
  /* Like HF: the single file wins when both exist. */
  if (access(single, F_OK) == 0) {
    m->where = single;
    m->files = calloc(1, sizeof *m->files);
    if (!m->files || st_open(&m->files[0], single, err)) {
      if (!m->files) snprintf(err, POC_ERR_LEN, "%s: out of memory", single);
      st_model_close(m);
      return -1;
    }
    m->n_files = 1;
    return 0;
  }
  free(single);
  m->where = join(dir, "model.safetensors.index.json");
  if (!m->where) {
    snprintf(err, POC_ERR_LEN, "%s: out of memory", dir);
    return -1;
  }
  if (access(m->where, F_OK) != 0) {
    snprintf(err, POC_ERR_LEN, "%s: no model.safetensors or model.safetensors.index.json in the folder",
             dir);
    st_model_close(m);
    return -1;
  }
  if (open_index(m, dir, err)) {
    st_model_close(m);
    return -1;
  }
  return 0;
}

void st_model_close(st_model *m) {
  for (int i = 0; i < m->n_files; i++) st_close(&m->files[i]);
  free(m->files);
  for (int i = 0; i < m->n_names; i++) free(m->names[i].name);
  free(m->names);
  free(m->where);
  memset(m, 0, sizeof *m);
}

const st_tensor *st_model_find(const st_model *m, const char *name, const st_file **file) {
  *file = NULL;
  if (!m->names) {  /* one file */
    const st_tensor *t = m->n_files ? st_find(&m->files[0], name) : NULL;
    if (t) *file = &m->files[0];
    return t;
  }
  int lo = 0, hi = m->n_names - 1;
  while (lo <= hi) {
    int mid = (lo + hi) / 2, c = strcmp(m->names[mid].name, name);
    if (!c) {
      *file = &m->files[m->names[mid].file];
      return st_find(*file, name);
    }
    if (c < 0) lo = mid + 1;
    else hi = mid - 1;
  }
  return NULL;
}

int st_model_count(const st_model *m) {
  return m->names ? m->n_names : m->n_files ? m->files[0].n : 0;
}

const char *st_model_name(const st_model *m, int i) {
  return m->names ? m->names[i].name : m->files[0].t[i].name;
}
