/* st.h — safetensors files, inside the runtime (not part of the public pocrt.h API).
 *
 * A safetensors file is an 8-byte little-endian header length N, N bytes of JSON
 * ({"name": {"dtype", "shape", "data_offsets": [begin, end]}, "__metadata__": {...}}),
 * then the data buffer; offsets are relative to the buffer's start. Sections:
 * st_read.c (open, validate, convert), st_write.c (atomic writer), and the model-folder
 * view used by the weight loader (one file or the shards of an index).
 */
#ifndef POC_ST_H
#define POC_ST_H

#include <stddef.h>
#include <stdint.h>
#include <stdio.h>

#define ST_MAX_DIMS 8

enum st_dtype {
  ST_BOOL, ST_U8, ST_I8, ST_F8_E4M3, ST_F8_E5M2, ST_I16, ST_U16, ST_F16, ST_BF16,
  ST_I32, ST_U32, ST_F32, ST_I64, ST_U64, ST_F64, ST_NDTYPES
};

typedef struct st_tensor {
  char *name;
  enum st_dtype dtype;
  int ndim;
  int64_t shape[ST_MAX_DIMS];
  uint64_t numel;
  uint64_t begin, end;             /* byte range within the data buffer */
} st_tensor;

typedef struct st_file {
  char *path;
  size_t size;                     /* whole file */
  const unsigned char *map;        /* the whole file, read-only */
  const unsigned char *data;       /* map + 8 + header length */
  uint64_t data_len;
  int n;
  st_tensor *t;                    /* sorted by name */
} st_file;

/* ---- st_read.c ---- */
const char *st_dtype_name(enum st_dtype d);
size_t st_dtype_size(enum st_dtype d);
/* Maps and validates the whole header: every entry well formed, offsets inside the
 * buffer, numel × dtype size equal to the byte span, no overlaps, no duplicate names. */
int st_open(st_file *f, const char *path, char *err);
void st_close(st_file *f);
const st_tensor *st_find(const st_file *f, const char *name);
/* Opens an input file for reading only if it is a regular file: a FIFO, a device
 * (/dev/urandom) or a directory is refused by name before a byte is read. The open is
 * non-blocking, so a FIFO without a writer cannot hang it; the file is then read
 * normally. "PATH: not a regular file (a FIFO)" in err, or "PATH: cannot open: ...". */
int st_open_regular(const char *path, char *err);
FILE *st_fopen_regular(const char *path, char *err);
/* Converts a tensor's elements exactly (bf16/f16/f32 → float or double; f64 → double, or
 * rounded to float). A non-floating dtype is an error naming the file and tensor. */
int st_read_f32(const st_file *f, const st_tensor *t, float *out, char *err);
int st_read_f64(const st_file *f, const st_tensor *t, double *out, char *err);
float st_bf16_to_f32(uint16_t h);
float st_f16_to_f32(uint16_t h);
uint16_t st_f32_to_bf16(float x);  /* round to nearest, ties to even; NaN stays NaN */

/* A model folder's weights: DIR/model.safetensors, or else the shards named by
 * DIR/model.safetensors.index.json (each shard opened once). */
typedef struct st_model {
  int n_files;
  st_file *files;
  int n_names;
  struct st_entry { char *name; int file; } *names;  /* index only: sorted by name */
  char *where;                     /* the file or index path, for messages */
} st_model;

int st_model_open(st_model *m, const char *dir, char *err);
void st_model_close(st_model *m);
/* The names of every tensor in the folder, i in [0, st_model_count). */
int st_model_count(const st_model *m);
const char *st_model_name(const st_model *m, int i);
/* Finds a tensor by name; NULL (and *file NULL) when absent. */
const st_tensor *st_model_find(const st_model *m, const char *name, const st_file **file);

/* ---- st_write.c ---- */
typedef struct st_out {
  const char *name;
  int ndim;
  int64_t shape[ST_MAX_DIMS];
  const float *data;
} st_out;

/* Writes `path` through a temporary file, fsync and rename: tensors sorted by name,
 * stored as F32 or BF16 (dtype "F32" / "BF16"), header padded with spaces to 8 bytes. */
int st_write_f32(const char *path, const st_out *t, int n, const char *dtype, char *err);
/* Writes a small text file atomically the same way (config.json). */
int st_write_text_atomic(const char *path, const char *text, char *err);

#endif
