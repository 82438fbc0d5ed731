/* st_write.c — safetensors writer. Files appear whole or not at all: everything goes to
 * a temporary name in the same folder, is fsynced, then renamed over the target, and the
 * folder is fsynced so the rename itself survives a crash. */
#include <errno.h>
#include <fcntl.h>
#include <libgen.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <cjson/cJSON.h>

#include "pocrt.h"
#include "st.h"

typedef struct tmpfile_ {
  char *tmp;
  FILE *fp;
} tmpfile_;

static int tmp_open(tmpfile_ *t, const char *path, char *err) {
  size_t n = strlen(path) + 32;
  t->tmp = malloc(n);
  t->fp = NULL;
  if (!t->tmp) {
    snprintf(err, POC_ERR_LEN, "%s: out of memory", path);
    return -1;
  }
  snprintf(t->tmp, n, "%s.tmp.%ld", path, (long)getpid());
  t->fp = fopen(t->tmp, "wb");
  if (!t->fp) {
    snprintf(err, POC_ERR_LEN, "%s: cannot create: %s", t->tmp, strerror(errno));
    free(t->tmp);
    t->tmp = NULL;
    return -1;
  }
  return 0;
}

static void tmp_abandon(tmpfile_ *t) {
  if (t->fp) fclose(t->fp);
  if (t->tmp) {
    unlink(t->tmp);
    free(t->tmp);
  }
  t->fp = NULL;
  t->tmp = NULL;
}

/* Flush, fsync, close, rename over `path`, fsync the folder. */
static int tmp_commit(tmpfile_ *t, const char *path, char *err) {
  int bad = fflush(t->fp) != 0 || ferror(t->fp) || fsync(fileno(t->fp)) != 0;
  int e = errno;
  bad |= fclose(t->fp) != 0;
  t->fp = NULL;
  if (bad || rename(t->tmp, path) != 0) {
    snprintf(err, POC_ERR_LEN, "%s: cannot write: %s", path, strerror(bad ? e : errno));
    tmp_abandon(t);
    return -1;
  }
  free(t->tmp);
  t->tmp = NULL;
  char *copy = strdup(path);
  if (copy) {
    int dfd = open(dirname(copy), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (dfd >= 0) {
      fsync(dfd);
      close(dfd);
    }
    free(copy);
  }
  return 0;
}

int st_write_text_atomic(const char *path, const char *text, char *err) {
  tmpfile_ t;
  if (tmp_open(&t, path, err)) return -1;
  size_t n = strlen(text);
  if (fwrite(text, 1, n, t.fp) != n) {
    snprintf(err, POC_ERR_LEN, "%s: cannot write: %s", path, strerror(errno));
    tmp_abandon(&t);
    return -1;
  }
  return tmp_commit(&t, path, err);
}

static int cmp_out(const void *a, const void *b) {
  return strcmp((*(const st_out *const *)a)->name, (*(const st_out *const *)b)->name);
}

static uint64_t out_numel(const st_out *t) {
  uint64_t n = 1;
  for (int d = 0; d < t->ndim; d++) n *= (uint64_t)t->shape[d];
  return n;
}

/* Elements are converted a block at a time so a big tensor never needs a second copy. */
static int write_data(FILE *fp, const st_out *t, int bf16) {
  enum { BLOCK = 1 << 14 };
  uint16_t buf[BLOCK];
  uint64_t n = out_numel(t);
  if (!bf16) return n == 0 || fwrite(t->data, sizeof(float), n, fp) == n ? 0 : -1;
  for (uint64_t i = 0; i < n; i += BLOCK) {
    size_t k = n - i < BLOCK ? (size_t)(n - i) : BLOCK;
    for (size_t j = 0; j < k; j++) buf[j] = st_f32_to_bf16(t->data[i + j]);
    if (fwrite(buf, 2, k, fp) != k) return -1;
  }
  return 0;
}

int st_write_f32(const char *path, const st_out *t, int n, const char *dtype, char *err) {
  int bf16;
  if (!strcmp(dtype, "F32")) bf16 = 0;
  else if (!strcmp(dtype, "BF16")) bf16 = 1;
  else {
    snprintf(err, POC_ERR_LEN, "%s: cannot write dtype '%s' (F32 or BF16)", path, dtype);
    return -1;
  }
  size_t esize = bf16 ? 2 : 4;
  const st_out **order = malloc((n ? (size_t)n : 1) * sizeof *order);
  cJSON *root = cJSON_CreateObject();
  cJSON *meta = cJSON_AddObjectToObject(root, "__metadata__");
  if (!order || !root || !meta || !cJSON_AddStringToObject(meta, "format", "pt")) goto oom;
  for (int i = 0; i < n; i++) order[i] = &t[i];
  qsort(order, (size_t)n, sizeof *order, cmp_out);
  uint64_t off = 0;
  for (int i = 0; i < n; i++) {
    if (i && !strcmp(order[i - 1]->name, order[i]->name)) {
      snprintf(err, POC_ERR_LEN, "%s: tensor '%s' given twice", path, order[i]->name);
      free(order);
      cJSON_Delete(root);
      return -1;
    }
    cJSON *e = cJSON_AddObjectToObject(root, order[i]->name);
    cJSON *shape = e ? cJSON_AddArrayToObject(e, "shape") : NULL;
    cJSON *offs = shape ? cJSON_AddArrayToObject(e, "data_offsets") : NULL;
    if (!offs || !cJSON_AddStringToObject(e, "dtype", dtype)) goto oom;
    for (int d = 0; d < order[i]->ndim; d++)
      cJSON_AddItemToArray(shape, cJSON_CreateNumber((double)order[i]->shape[d]));
    uint64_t bytes = out_numel(order[i]) * esize;
    cJSON_AddItemToArray(offs, cJSON_CreateNumber((double)off));
    cJSON_AddItemToArray(offs, cJSON_CreateNumber((double)(off + bytes)));
    off += bytes;
  }
  char *json = cJSON_PrintUnformatted(root);
  cJSON_Delete(root);
  root = NULL;
  if (!json) goto oom;
  /* The buffer starts 8-aligned: pad the header with spaces to a multiple of 8. */
  size_t hlen = strlen(json), padded = (hlen + 7) & ~(size_t)7;
  unsigned char len8[8];
  for (int i = 0; i < 8; i++) len8[i] = (unsigned char)((uint64_t)padded >> (8 * i));
  tmpfile_ tf;
  if (tmp_open(&tf, path, err)) {
    free(json);
    free(order);
    return -1;
  }
  int bad = fwrite(len8, 1, 8, tf.fp) != 8 || fwrite(json, 1, hlen, tf.fp) != hlen;
  for (size_t i = hlen; i < padded && !bad; i++) bad = fputc(' ', tf.fp) == EOF;
  for (int i = 0; i < n && !bad; i++) bad = write_data(tf.fp, order[i], bf16);
  free(json);
  free(order);
  if (bad) {
    snprintf(err, POC_ERR_LEN, "%s: cannot write: %s", tf.tmp, strerror(errno));
    tmp_abandon(&tf);
    return -1;
  }
  return tmp_commit(&tf, path, err);
oom:
  snprintf(err, POC_ERR_LEN, "%s: out of memory", path);
  free(order);
  cJSON_Delete(root);
  return -1;
}
