/* mio.h — helpers shared by the model I/O tests: a scratch folder per test program and
 * raw file writing, so broken files can be built byte by byte. */
#ifndef POC_TEST_MIO_H
#define POC_TEST_MIO_H

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

static char mio_root[1024];

/* The scratch folder comes from argv[1] (set by CMake), one subfolder per program. */
static inline void mio_init(int argc, char **argv, const char *suite) {
  const char *base = argc > 1 ? argv[1] : ".";
  mkdir(base, 0777);
  snprintf(mio_root, sizeof mio_root, "%s/%s", base, suite);
  mkdir(mio_root, 0777);
}

/* A path under the scratch folder; rotating buffers so a few can be live at once. */
static inline const char *mio_path(const char *name) {
  static char bufs[8][1200];
  static int k;
  char *b = bufs[k++ & 7];
  snprintf(b, sizeof bufs[0], "%s/%s", mio_root, name);
  return b;
}

static inline const char *mio_dir(const char *name) {
  const char *p = mio_path(name);
  mkdir(p, 0777);
  return p;
}

static inline void mio_write(const char *path, const void *data, size_t n) {
  FILE *f = fopen(path, "wb");
  if (!f || fwrite(data, 1, n, f) != n) {
    fprintf(stderr, "cannot write %s: %s\n", path, strerror(errno));
    exit(1);
  }
  fclose(f);
}

static inline void mio_write_text(const char *path, const char *text) { mio_write(path, text, strlen(text)); }

/* A safetensors file from a header text and a data buffer: length, header, data. */
static inline size_t mio_st_bytes(unsigned char *out, const char *header, const void *data, size_t ndata) {
  size_t h = strlen(header);
  for (int i = 0; i < 8; i++) out[i] = (unsigned char)((unsigned long long)h >> (8 * i));
  memcpy(out + 8, header, h);
  if (ndata) memcpy(out + 8 + h, data, ndata);
  return 8 + h + ndata;
}

static inline unsigned char *mio_read(const char *path, size_t *n) {
  FILE *f = fopen(path, "rb");
  if (!f) return NULL;
  fseek(f, 0, SEEK_END);
  long len = ftell(f);
  fseek(f, 0, SEEK_SET);
  unsigned char *b = malloc(len > 0 ? (size_t)len : 1);
  *n = b ? fread(b, 1, (size_t)len, f) : 0;
  fclose(f);
  return b;
}

#endif
