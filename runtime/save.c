/* save.c — a model folder HF transformers loads: config.json and model.safetensors
 * (tensors under their HF names, F32 or BF16), each written atomically. */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "pocrt.h"
#include "st.h"

/* mkdir -p: each missing component in turn. */
static int make_dirs(const char *dir, char *err) {
  if (!*dir) {
    snprintf(err, POC_ERR_LEN, "cannot save a model to an empty folder name");
    return -1;
  }
  char *p = strdup(dir);
  if (!p) {
    snprintf(err, POC_ERR_LEN, "%s: out of memory", dir);
    return -1;
  }
  for (char *s = p + 1;; s++) {
    int end = *s == 0;
    if (*s == '/' || end) {
      *s = 0;
      if (mkdir(p, 0777) && errno != EEXIST) {
        snprintf(err, POC_ERR_LEN, "%s: cannot create folder: %s", p, strerror(errno));
        free(p);
        return -1;
      }
      if (end) break;
      *s = '/';
    }
  }
  free(p);
  struct stat st;
  if (stat(dir, &st) || !S_ISDIR(st.st_mode)) {
    snprintf(err, POC_ERR_LEN, "%s: not a folder", dir);
    return -1;
  }
  return 0;
}

int poc_model_save_f32(const char *model_dir, const poc_layout *lay, const float *w,
                       const char *dtype, char *err) {
  int bf16 = dtype && !strcmp(dtype, "BF16");
  if (!dtype || (!bf16 && strcmp(dtype, "F32"))) {
    snprintf(err, POC_ERR_LEN, "%s: cannot save weights as '%s' (F32 or BF16)", model_dir,
             dtype ? dtype : "(null)");
    return -1;
  }
  if (make_dirs(model_dir, err)) return -1;
  st_out *outs = calloc(lay->n_tensors ? (size_t)lay->n_tensors : 1, sizeof *outs);
  size_t n = strlen(model_dir) + 32;
  char *path = malloc(n);
  if (!outs || !path) {
    free(outs);
    free(path);
    snprintf(err, POC_ERR_LEN, "%s: out of memory", model_dir);
    return -1;
  }
  for (int i = 0; i < lay->n_tensors; i++) {
    const poc_tensor_info *ti = &lay->tensors[i];
    outs[i].name = ti->name;
    outs[i].ndim = ti->ndim;
    for (int d = 0; d < ti->ndim; d++) outs[i].shape[d] = ti->shape[d];
    outs[i].data = w + ti->offset;
  }
  snprintf(path, n, "%s/model.safetensors", model_dir);
  int rc = st_write_f32(path, outs, lay->n_tensors, dtype, err);
  free(outs);
  free(path);
  if (rc) return -1;
  poc_config cfg = lay->cfg;
  snprintf(cfg.torch_dtype, sizeof cfg.torch_dtype, "%s", bf16 ? "bfloat16" : "float32");
  return poc_config_save(model_dir, &cfg, err);
}
