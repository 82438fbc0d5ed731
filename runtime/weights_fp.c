/* weights_fp.c — a model folder's safetensors into the flat parameter array, in the
 * order poc_layout gives. Each layout tensor must be present with its exact HF shape.
 * Buffers the layout does not name (rotary inv_freq) and an lm_head kept beside tied
 * embeddings are ignored; any other weight or bias the layout lacks means the file is a
 * different architecture than config.json describes to poc, and is refused rather than
 * silently dropped. */
#include <stdio.h>
#include <string.h>

#include "fp.h"
#include "pocrt.h"
#include "st.h"

#define ST_READ FP(st_read)

static void shape_str(char *buf, size_t n, int ndim, const int64_t *shape) {
  size_t k = (size_t)snprintf(buf, n, "[");
  for (int d = 0; d < ndim && k < n; d++)
    k += (size_t)snprintf(buf + k, n - k, "%s%lld", d ? ", " : "", (long long)shape[d]);
  if (k < n) snprintf(buf + k, n - k, "]");
}

static int ends_with(const char *s, const char *suffix) {
  size_t a = strlen(s), b = strlen(suffix);
  return a >= b && !strcmp(s + a - b, suffix);
}

int FP(poc_weights_load)(const char *model_dir, const poc_layout *lay, real *w, char *err) {
  st_model m;
  if (st_model_open(&m, model_dir, err)) return -1;
  int rc = 0;
  for (int i = 0; i < st_model_count(&m) && !rc; i++) {
    const char *name = st_model_name(&m, i);
    if (!(ends_with(name, ".weight") || ends_with(name, ".bias")) || poc_layout_find(lay, name)) continue;
    if (!strcmp(name, "lm_head.weight") && lay->cfg.tie_word_embeddings) continue;
    snprintf(err, POC_ERR_LEN,
             "%s: tensor '%s' is not part of the %s model poc builds from config.json "
             "(unsupported variant or mismatched config)",
             m.where, name, lay->cfg.model_type);
    rc = -1;
  }
  for (int i = 0; i < lay->n_tensors && !rc; i++) {
    const poc_tensor_info *ti = &lay->tensors[i];
    const st_file *f;
    const st_tensor *t = st_model_find(&m, ti->name, &f);
    char want[64], got[64];
    shape_str(want, sizeof want, ti->ndim, ti->shape);
    if (!t) {
      snprintf(err, POC_ERR_LEN, "%s: missing tensor '%s' (shape %s)%s", m.where, ti->name, want,
               !strcmp(ti->name, "lm_head.weight") ? "; config.json says tie_word_embeddings is false"
                                                   : "");
      rc = -1;
      break;
    }
    int same = t->ndim == ti->ndim;
    for (int d = 0; same && d < ti->ndim; d++) same = t->shape[d] == ti->shape[d];
    if (!same) {
      shape_str(got, sizeof got, t->ndim, t->shape);
      snprintf(err, POC_ERR_LEN, "%s: tensor '%s' has shape %s, config.json implies %s", f->path,
               ti->name, got, want);
      rc = -1;
      break;
    }
    rc = ST_READ(f, t, w + ti->offset, err);
  }
  st_model_close(&m);
  return rc;
}
