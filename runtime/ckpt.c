/* ckpt.c — checkpoints: OUT/ckpt-<step>/ holds the trainable model as HF transformers
 * loads it (config.json + model.safetensors, F32), the AdamW moments
 * (optimizer.safetensors: "exp_avg.<tensor>", "exp_avg_sq.<tensor>", F32, so they come
 * back exactly) and state.json (step, data position, seed, knobs, program hash). With
 * several trainable models the first sits at the top and each other one in a subfolder
 * named after it.
 *
 * No checkpoint holds a non-finite number: the arrays are scanned before anything is
 * written, and a non-finite value refuses the write (the run's own checks stop it before
 * that; this is the last line). state.json also records the input files' content hashes,
 * which a resume compares.
 *
 * A checkpoint appears whole or not at all: it is built in OUT/.tmp-ckpt-<step>/, every
 * file fsynced, then the folder is renamed into place and OUT fsynced. A failure (disk
 * full) removes the temporary folder and leaves every earlier checkpoint as it was.
 *
 * ZeRO (trn_ckmodel.shards = R > 0): rank r holds the moments of [lo_r, hi_r) only and
 * writes them itself, as optim/shard-RRRRR-of-NNNNN.safetensors ("exp_avg",
 * "exp_avg_sq": 1-D F32 of hi_r − lo_r) in the model's folder; rank 0 writes
 * optimizer.index.json there in place of optimizer.safetensors:
 *   {"format": "poc-adamw-shards", "n": n, "ranks": R,
 *    "shards": [{"file": "optim/shard-00000-of-00002.safetensors", "lo": 0, "hi": h}, ...]}
 * (a rank whose shard is all padding has no file). The ranks build the one temporary
 * folder together: rank 0 makes it, every rank writes its files, and only after all of
 * them say so does rank 0 write state.json and rename the folder, so a rank killed at
 * any point leaves no complete checkpoint behind but the earlier ones.
 *
 * Loading reads whatever range [lo, hi) the loading run holds, from either layout: the
 * tensors of optimizer.safetensors that overlap it, or the shards the index names that
 * overlap it, so a run resumes under another number of ranks, or with ZeRO on or off.
 */
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cjson/cJSON.h>

#include "comm.h"
#include "st.h"
#include "train_internal.h"

#define PATHN 4096

static int rm_tree(const char *path) {
  struct stat st;
  if (lstat(path, &st)) return errno == ENOENT ? 0 : -1;
  if (S_ISDIR(st.st_mode)) {
    DIR *d = opendir(path);
    if (!d) return -1;
    struct dirent *e;
    char sub[PATHN];
    while ((e = readdir(d))) {
      if (!strcmp(e->d_name, ".") || !strcmp(e->d_name, "..")) continue;
      trn_path(sub, sizeof sub, "%s/%s", path, e->d_name);
      rm_tree(sub);
    }
    closedir(d);
    return rmdir(path);
  }
  return unlink(path);
}

static int fsync_path(const char *path) {
  int fd = open(path, O_RDONLY);
  if (fd < 0) return -1;
  int rc = fsync(fd);
  close(fd);
  return rc;
}

static const char *model_dir(char *buf, size_t n, const char *top, const trn_ckmodel *cm,
                             int i) {
  if (i == 0) trn_path(buf, n, "%s", top);
  else trn_path(buf, n, "%s/%s", top, cm[i].name);
  return buf;
}

static int write_optimizer(const char *dir, const trn_ckmodel *cm, char *err) {
  const poc_layout *lay = cm->lay;
  int n = lay->n_tensors;
  st_out *t = calloc((size_t)n * 2, sizeof *t);
  char (*names)[128] = calloc((size_t)n * 2, sizeof *names);
  if (!t || !names) {
    free(t);
    free(names);
    trn_errf(err, "%s: out of memory", dir);
    return -1;
  }
  for (int i = 0; i < n; i++) {
    const poc_tensor_info *ti = &lay->tensors[i];
    for (int k = 0; k < 2; k++) {
      st_out *o = &t[2 * i + k];
      trn_path(names[2 * i + k], 128, "%s.%s", k ? "exp_avg_sq" : "exp_avg", ti->name);
      o->name = names[2 * i + k];
      o->ndim = ti->ndim;
      for (int d = 0; d < ti->ndim; d++) o->shape[d] = ti->shape[d];
      o->data = (k ? cm->v : cm->m) + ti->offset;
    }
  }
  char path[PATHN];
  trn_path(path, sizeof path, "%s/optimizer.safetensors", dir);
  int rc = st_write_f32(path, t, 2 * n, "F32", err);
  free(t);
  free(names);
  return rc;
}

static void shard_name(char *buf, size_t n, int rank, int ranks) {
  trn_path(buf, n, "optim/shard-%05d-of-%05d.safetensors", rank, ranks);
}

/* This rank's moments shard (nothing when its range is empty: all padding). */
static int write_shard(const char *dir, const trn_ckmodel *cm, char *err) {
  if (cm->hi <= cm->lo) return 0;
  st_out t[2];
  memset(t, 0, sizeof t);
  t[0].name = "exp_avg";
  t[1].name = "exp_avg_sq";
  for (int k = 0; k < 2; k++) {
    t[k].ndim = 1;
    t[k].shape[0] = (int64_t)(cm->hi - cm->lo);
    t[k].data = k ? cm->v : cm->m;
  }
  char name[64], path[PATHN];
  shard_name(name, sizeof name, cm->rank, cm->shards);
  trn_path(path, sizeof path, "%s/%s", dir, name);
  return st_write_f32(path, t, 2, "F32", err);
}

/* The index of the shards: where each rank's range is, for a run with any R to find. */
static int write_index(const char *dir, const trn_ckmodel *cm, char *err) {
  size_t n = cm->lay->n_params, R = (size_t)cm->shards, c = (n + R - 1) / R;
  cJSON *o = cJSON_CreateObject();
  cJSON_AddStringToObject(o, "format", "poc-adamw-shards");
  cJSON_AddNumberToObject(o, "n", (double)n);
  cJSON_AddNumberToObject(o, "ranks", (double)R);
  cJSON *a = cJSON_AddArrayToObject(o, "shards");
  for (size_t r = 0; r < R; r++) {
    size_t lo = r * c < n ? r * c : n, hi = (r + 1) * c < n ? (r + 1) * c : n;
    if (lo >= hi) continue;
    char name[64];
    shard_name(name, sizeof name, (int)r, (int)R);
    cJSON *e = cJSON_CreateObject();
    cJSON_AddStringToObject(e, "file", name);
    cJSON_AddNumberToObject(e, "lo", (double)lo);
    cJSON_AddNumberToObject(e, "hi", (double)hi);
    cJSON_AddItemToArray(a, e);
  }
  char *js = cJSON_Print(o);
  cJSON_Delete(o);
  char path[PATHN];
  trn_path(path, sizeof path, "%s/optimizer.index.json", dir);
  int rc = js ? st_write_text_atomic(path, js, err) : -1;
  if (!js) trn_errf(err, "%s: out of memory", path);
  cJSON_free(js);
  return rc;
}

/* Every rank's ok (1) or not (0): 0 when all are, else -1, with a message on a rank that
 * did not fail itself (the failing one's own message says why). */
static int agree(int ok, int sharded, char *err) {
  if (!sharded) return ok ? 0 : -1;
  int64_t v = ok;
  char e2[POC_ERR_LEN];
  if (trn_comm_min_i64(&v, 1, ok ? err : e2)) return -1;
  if (v) return 0;
  if (ok) trn_errf(err, "another rank could not write its part of the checkpoint (its "
                   "message says why)");
  return -1;
}

static char *state_json(const trn_state *st, const poc_program *prog) {
  cJSON *o = cJSON_CreateObject();
  char buf[32];
  cJSON_AddNumberToObject(o, "step", (double)st->step);
  cJSON_AddNumberToObject(o, "total_steps", (double)st->total);
  cJSON_AddNumberToObject(o, "data_position", (double)st->pos);
  cJSON_AddNumberToObject(o, "epoch", st->epoch);
  trn_path(buf, sizeof buf, "%" PRIu64, st->seed);
  cJSON_AddStringToObject(o, "seed", buf);
  /* Every draw is counter-based: the data order from (seed, epoch), anchors from
   * (seed, step, example), picks from (seed, step): (seed, step) is the whole state. This
   * is the step stream's word, for inspection. */
  poc_rng r = poc_rng_derive(st->seed, (uint64_t)st->step, 0);
  trn_path(buf, sizeof buf, "%016" PRIx64, r.s);
  cJSON_AddStringToObject(o, "rng_state", buf);
  trn_path(buf, sizeof buf, "%016" PRIx64, st->program_hash);
  cJSON_AddStringToObject(o, "program_hash", buf);
  cJSON *k = cJSON_AddObjectToObject(o, "knobs");
  for (int i = 0; i < st->n_knobs && i < prog->n_knobs; i++)
    cJSON_AddNumberToObject(k, prog->knobs[i].name, st->knobs[i]);
  cJSON_AddNumberToObject(o, "skipped_steps", (double)st->skipped);
  cJSON *fh = cJSON_AddObjectToObject(o, "input_hashes");
  for (int i = 0; i < st->n_files; i++) {
    trn_path(buf, sizeof buf, "%016" PRIx64, st->file_hash[i]);
    cJSON_AddStringToObject(fh, st->file_name[i], buf);
  }
  char *s = cJSON_Print(o);
  cJSON_Delete(o);
  return s;
}

/* The first non-finite element of a[0..n), or -1. */
static int64_t first_nonfinite(const float *a, size_t n) {
  for (size_t i = 0; i < n; i++)
    if (!isfinite(a[i])) return (int64_t)i;
  return -1;
}

/* The tensor of cm's layout that holds flat index i. */
static const char *tensor_at(const poc_layout *lay, int64_t i) {
  for (int t = 0; t < lay->n_tensors; t++)
    if ((size_t)i >= lay->tensors[t].offset &&
        (size_t)i < lay->tensors[t].offset + lay->tensors[t].numel)
      return lay->tensors[t].name;
  return "?";
}

/* A non-finite weight (rank 0, which writes them) or moment of this rank's range. */
static int check_finite(const trn_ckmodel *cm, int n, int weights, char *err) {
  for (int i = 0; i < n; i++) {
    const float *arr[3] = {cm[i].w, cm[i].m, cm[i].v};
    static const char *const what[3] = {"weight", "first moment", "second moment"};
    for (int k = weights ? 0 : 1; k < 3; k++) {
      size_t len = k ? cm[i].hi - cm[i].lo : cm[i].lay->n_params, off = k ? cm[i].lo : 0;
      int64_t at = first_nonfinite(arr[k], len);
      if (at >= 0) {
        trn_errf(err, "model '%s': a non-finite %s in '%s'; no checkpoint is written with one",
                 cm[i].name, what[k], tensor_at(cm[i].lay, at + (int64_t)off));
        return -1;
      }
    }
  }
  return 0;
}

int trn_ckpt_write(const char *out, const trn_state *st, const poc_program *prog,
                   const trn_ckmodel *cm, int n, char *err) {
  char tmp[PATHN], fin[PATHN], old[PATHN], dir[PATHN], path[PATHN];
  int sharded = n > 0 && cm[0].shards > 0, rank = sharded ? cm[0].rank : 0, ok;
  trn_path(tmp, sizeof tmp, "%s/.tmp-ckpt-%lld", out, (long long)st->step);
  trn_path(fin, sizeof fin, "%s/ckpt-%lld", out, (long long)st->step);
  trn_path(old, sizeof old, "%s/.old-ckpt-%lld", out, (long long)st->step);
  ok = !check_finite(cm, n, rank == 0, err);
  /* rank 0 makes the temporary folder and every model's optim/ for the shards */
  if (ok && rank == 0) {
    rm_tree(tmp);
    if (mkdir(tmp, 0777)) {
      trn_errf(err, "%s: cannot create: %s", tmp, strerror(errno));
      ok = 0;
    }
    for (int i = 0; i < n && ok && sharded; i++) {
      model_dir(dir, sizeof dir, tmp, cm, i);
      trn_path(path, sizeof path, "%s/optim", dir);
      if ((mkdir(dir, 0777) && errno != EEXIST) || mkdir(path, 0777)) {
        trn_errf(err, "%s: cannot create: %s", path, strerror(errno));
        ok = 0;
      }
    }
  }
  if (agree(ok, sharded, err)) goto fail;
  /* each rank its moments shard */
  for (int i = 0; i < n && sharded && ok; i++) {
    model_dir(dir, sizeof dir, tmp, cm, i);
    if (write_shard(dir, &cm[i], err)) ok = 0;
  }
  if (sharded) {
    if (agree(ok, sharded, err)) goto fail;
    if (rank) return 0; /* rank 0 finishes the folder; a failure of its own ends the run */
  }
  for (int i = 0; i < n; i++) {
    model_dir(dir, sizeof dir, tmp, cm, i);
    if (cm[i].lora ? poc_lora_save(dir, cm[i].lay, cm[i].lora, cm[i].w, cm[i].base, err)
                   : poc_model_save_f32(dir, cm[i].lay, cm[i].w, "F32", err))
      goto fail;
    if (sharded) {
      trn_path(path, sizeof path, "%s/optim", dir);
      fsync_path(path);
      if (write_index(dir, &cm[i], err)) goto fail;
    } else if (write_optimizer(dir, &cm[i], err)) {
      goto fail;
    }
    if (i) fsync_path(dir);
  }
  char *js = state_json(st, prog);
  trn_path(path, sizeof path, "%s/state.json", tmp);
  int rc = js ? st_write_text_atomic(path, js, err) : -1;
  if (!js) trn_errf(err, "%s: out of memory", path);
  cJSON_free(js);
  if (rc) goto fail;
  if (fsync_path(tmp)) {
    trn_errf(err, "%s: cannot sync: %s", tmp, strerror(errno));
    goto fail;
  }
  /* a folder cannot be renamed over a non-empty one: move a same-step checkpoint aside */
  struct stat sb;
  int had = stat(fin, &sb) == 0;
  if (had) {
    rm_tree(old);
    if (rename(fin, old)) {
      trn_errf(err, "%s: cannot replace: %s", fin, strerror(errno));
      goto fail;
    }
  }
  if (rename(tmp, fin)) {
    trn_errf(err, "%s: cannot rename into place: %s", fin, strerror(errno));
    if (had) rename(old, fin);
    goto fail;
  }
  fsync_path(out);
  if (had) rm_tree(old);
  return 0;
fail:
  if (rank == 0) rm_tree(tmp);
  return -1;
}

static int has_file(const char *dir, const char *name) {
  char p[PATHN];
  struct stat st;
  trn_path(p, sizeof p, "%s/%s", dir, name);
  return stat(p, &st) == 0 && S_ISREG(st.st_mode) && st.st_size > 0;
}

/* every file of a checkpoint: a full model's or a LoRA run's adapter */
static int ckpt_complete(const char *p) {
  return has_file(p, "state.json") &&
         (has_file(p, "optimizer.safetensors") || has_file(p, "optimizer.index.json")) &&
         ((has_file(p, "config.json") && has_file(p, "model.safetensors")) ||
          (has_file(p, "adapter_config.json") && has_file(p, "adapter_model.safetensors")));
}

int64_t trn_ckpt_latest(const char *out, char *dir, size_t dir_len) {
  DIR *d = opendir(out);
  if (!d) return -1;
  int64_t best = -1;
  struct dirent *e;
  char p[PATHN];
  while ((e = readdir(d))) {
    const char *s = e->d_name;
    if (strncmp(s, "ckpt-", 5) || !s[5]) continue;
    char *end;
    errno = 0;
    long long step = strtoll(s + 5, &end, 10);
    if (*end || errno || step < 0 || end == s + 5) continue;
    trn_path(p, sizeof p, "%s/%s", out, s);
    if (!ckpt_complete(p)) continue;
    if (step > best) {
      best = step;
      trn_path(dir, dir_len, "%s", p);
    }
  }
  closedir(d);
  return best;
}

static int cmp_desc(const void *a, const void *b) {
  int64_t x = *(const int64_t *)a, y = *(const int64_t *)b;
  return x < y ? 1 : x > y ? -1 : 0;
}

int trn_ckpt_list(const char *out, int64_t *steps, int max) {
  DIR *d = opendir(out);
  if (!d) return 0;
  int k = 0;
  struct dirent *e;
  char p[PATHN];
  while ((e = readdir(d)) && k < max) {
    const char *s = e->d_name;
    if (strncmp(s, "ckpt-", 5) || !s[5] || s[5] < '0' || s[5] > '9') continue;
    char *end;
    errno = 0;
    long long step = strtoll(s + 5, &end, 10);
    if (*end || errno || step < 0) continue;
    trn_path(p, sizeof p, "%s/%s", out, s);
    if (ckpt_complete(p)) steps[k++] = step;
  }
  closedir(d);
  qsort(steps, (size_t)k, sizeof *steps, cmp_desc);
  return k;
}

static int read_text(const char *path, char **out, char *err) {
  FILE *f = st_fopen_regular(path, err);
  if (!f) return -1;
  fseek(f, 0, SEEK_END);
  long n = ftell(f);
  fseek(f, 0, SEEK_SET);
  char *s = n >= 0 ? malloc((size_t)n + 1) : NULL;
  if (!s || fread(s, 1, (size_t)n, f) != (size_t)n) {
    free(s);
    fclose(f);
    trn_errf(err, "%s: cannot read", path);
    return -1;
  }
  s[n] = 0;
  fclose(f);
  *out = s;
  return 0;
}

/* dst[0 .. b − a) = elements [a, b) of a 1-D or 2-D F32/BF16/F16 tensor (t's own order). */
static int read_part(const st_file *f, const st_tensor *t, size_t a, size_t b, float *dst,
                     float **tmp, size_t *tmp_n, char *err) {
  if (a == 0 && b == t->numel) return st_read_f32(f, t, dst, err);
  if (*tmp_n < t->numel) {
    free(*tmp);
    if (!(*tmp = malloc(t->numel * sizeof(float) + 1))) {
      *tmp_n = 0;
      trn_errf(err, "%s: out of memory reading '%s'", f->path, t->name);
      return -1;
    }
    *tmp_n = t->numel;
  }
  if (st_read_f32(f, t, *tmp, err)) return -1;
  memcpy(dst, *tmp + a, (b - a) * sizeof(float));
  return 0;
}

/* [cm->lo, cm->hi) of the moments from one optimizer.safetensors: each tensor's overlap. */
static int load_optimizer(const char *dir, const trn_ckmodel *cm, char *err) {
  char path[PATHN];
  trn_path(path, sizeof path, "%s/optimizer.safetensors", dir);
  st_file f;
  if (st_open(&f, path, err)) return -1;
  int rc = 0;
  float *tmp = NULL;
  size_t tmp_n = 0;
  for (int i = 0; i < cm->lay->n_tensors && !rc; i++) {
    const poc_tensor_info *ti = &cm->lay->tensors[i];
    for (int k = 0; k < 2 && !rc; k++) {
      char name[160];
      trn_path(name, sizeof name, "%s.%s", k ? "exp_avg_sq" : "exp_avg", ti->name);
      const st_tensor *t = st_find(&f, name);
      int same = t && t->ndim == ti->ndim && t->numel == ti->numel;
      for (int d = 0; same && d < ti->ndim; d++) same = t->shape[d] == ti->shape[d];
      if (!same) {
        trn_errf(err, "%s: %s '%s'", path, t ? "wrong shape of" : "missing tensor", name);
        rc = -1;
        continue;
      }
      size_t a = ti->offset > cm->lo ? ti->offset : cm->lo;
      size_t b = ti->offset + ti->numel < cm->hi ? ti->offset + ti->numel : cm->hi;
      if (a < b)
        rc = read_part(&f, t, a - ti->offset, b - ti->offset, (k ? cm->v : cm->m) + (a - cm->lo),
                       &tmp, &tmp_n, err);
    }
  }
  free(tmp);
  st_close(&f);
  return rc;
}

/* A whole number in [0, 2^53]. */
static int index_num(const cJSON *o, const char *key, size_t *out) {
  const cJSON *v = cJSON_GetObjectItemCaseSensitive(o, key);
  if (!cJSON_IsNumber(v) || !(v->valuedouble >= 0 && v->valuedouble <= 9007199254740992.0) ||
      v->valuedouble != floor(v->valuedouble))
    return -1;
  *out = (size_t)v->valuedouble;
  return 0;
}

/* [cm->lo, cm->hi) of the moments from the shards optimizer.index.json names: the index
 * must be this model's (n) and its shards must tile [0, n) in order; each shard that
 * overlaps the range is opened and must hold exp_avg and exp_avg_sq of its length. */
static int load_shards(const char *dir, const trn_ckmodel *cm, char *err) {
  char path[PATHN], fpath[PATHN];
  trn_path(path, sizeof path, "%s/optimizer.index.json", dir);
  FILE *fp = st_fopen_regular(path, err);
  if (!fp) return -1;
  fseek(fp, 0, SEEK_END);
  long len = ftell(fp);
  fseek(fp, 0, SEEK_SET);
  char *text = len >= 0 ? malloc((size_t)len + 1) : NULL;
  if (!text || fread(text, 1, (size_t)len, fp) != (size_t)len) {
    free(text);
    fclose(fp);
    trn_errf(err, "%s: cannot read", path);
    return -1;
  }
  text[len] = 0;
  fclose(fp);
  cJSON *o = cJSON_Parse(text);
  free(text);
  size_t n = cm->lay->n_params, in_n, R, at = 0;
  const cJSON *fmt = cJSON_GetObjectItemCaseSensitive(o, "format");
  const cJSON *sh = cJSON_GetObjectItemCaseSensitive(o, "shards");
  int rc = -1;
  if (!cJSON_IsObject(o) || !cJSON_IsString(fmt) || strcmp(fmt->valuestring, "poc-adamw-shards") ||
      index_num(o, "n", &in_n) || index_num(o, "ranks", &R) || R < 1 || !cJSON_IsArray(sh)) {
    trn_errf(err, "%s: not an index of optimizer shards (format \"poc-adamw-shards\" with n, "
             "ranks and shards)", path);
    goto done;
  }
  if (in_n != n) {
    trn_errf(err, "%s: the shards hold %zu moments per kind, but model '%s' trains %zu "
             "parameters: the index does not match this model", path, in_n, cm->name, n);
    goto done;
  }
  float *tmp = NULL;
  size_t tmp_n = 0;
  const cJSON *e;
  int k = 0;
  cJSON_ArrayForEach(e, sh) {
    size_t lo, hi;
    const cJSON *file = cJSON_GetObjectItemCaseSensitive(e, "file");
    const char *fn = cJSON_IsString(file) ? file->valuestring : NULL;
    if (!fn || !*fn || fn[0] == '/' || strstr(fn, "..") || index_num(e, "lo", &lo) ||
        index_num(e, "hi", &hi) || lo != at || hi <= lo || hi > n) {
      trn_errf(err, "%s: shard %d must have a file inside the checkpoint and lo = %zu < hi <= "
               "%zu (the shards tile [0, n) in order)", path, k, at, n);
      free(tmp);
      goto done;
    }
    at = hi;
    k++;
    if (hi <= cm->lo || lo >= cm->hi) continue;
    trn_path(fpath, sizeof fpath, "%s/%s", dir, fn);
    st_file f;
    if (st_open(&f, fpath, err)) {
      free(tmp);
      goto done;
    }
    int bad = 0;
    for (int q = 0; q < 2 && !bad; q++) {
      const char *name = q ? "exp_avg_sq" : "exp_avg";
      const st_tensor *t = st_find(&f, name);
      if (!t || t->ndim != 1 || t->numel != hi - lo) {
        trn_errf(err, "%s: %s '%s' (the index gives it [%zu, %zu): %zu elements, 1-D)", fpath,
                 t ? "wrong shape of" : "missing tensor", name, lo, hi, hi - lo);
        bad = 1;
        break;
      }
      size_t a = lo > cm->lo ? lo : cm->lo, b = hi < cm->hi ? hi : cm->hi;
      bad = read_part(&f, t, a - lo, b - lo, (q ? cm->v : cm->m) + (a - cm->lo), &tmp, &tmp_n,
                      err) != 0;
    }
    st_close(&f);
    if (bad) {
      free(tmp);
      goto done;
    }
  }
  free(tmp);
  if (at != n) {
    trn_errf(err, "%s: the shards cover [0, %zu) of the %zu moments: the index does not match "
             "its model", path, at, n);
    goto done;
  }
  (void)R;
  rc = 0;
done:
  cJSON_Delete(o);
  return rc;
}

/* A whole number in [lo, hi] (hi <= 2^53, where doubles stop being exact). */
static int whole_in(const cJSON *v, double lo, double hi, int64_t *out) {
  if (!cJSON_IsNumber(v)) return -1;
  double d = v->valuedouble;
  if (!(d >= lo && d <= hi) || d != floor(d)) return -1;
  *out = (int64_t)d;
  return 0;
}

static int hex64(const char *s, uint64_t *out) {
  size_t n = strlen(s);
  if (n == 0 || n > 16) return -1;
  for (size_t i = 0; i < n; i++)
    if (!((s[i] >= '0' && s[i] <= '9') || (s[i] >= 'a' && s[i] <= 'f'))) return -1;
  *out = strtoull(s, NULL, 16);
  return 0;
}

/* state.json, every field checked: a checkpoint written by poc always passes, so anything
 * else is damage (or an edit), and resuming from it would train from a made-up state. */
static int parse_state(const char *path, const char *text, int64_t dir_step, trn_state *st,
                       const poc_program *prog, char *err) {
  const double LIM = 9007199254740992.0; /* 2^53 */
  cJSON *o = cJSON_Parse(text);
  if (!cJSON_IsObject(o)) {
    cJSON_Delete(o);
    trn_errf(err, "%s: not a JSON object (truncated or damaged)", path);
    return -1;
  }
  const cJSON *v;
  const char *bad = NULL, *want = "";
  memset(st, 0, sizeof *st);
#define FIELD(name) (v = cJSON_GetObjectItemCaseSensitive(o, name), name)
  const char *f;
  if (whole_in(cJSON_GetObjectItemCaseSensitive(o, f = "step"), 0, LIM, &st->step))
    bad = f, want = "a whole number >= 0";
  else if (st->step != dir_step)
    bad = f, want = "the step in the folder's name";
  else if (whole_in(cJSON_GetObjectItemCaseSensitive(o, f = "total_steps"), 1, LIM, &st->total) ||
           st->total < st->step)
    bad = f, want = "a whole number >= 1 and >= step";
  else if (whole_in(cJSON_GetObjectItemCaseSensitive(o, f = "data_position"), 0, LIM, &st->pos))
    bad = f, want = "a whole number >= 0";
  else if (FIELD("epoch"), !cJSON_IsNumber(v) || !isfinite(v->valuedouble) || v->valuedouble < 0)
    bad = "epoch", want = "a finite number >= 0";
  else if (FIELD("skipped_steps"), v && (whole_in(v, 0, (double)st->step, &st->skipped)))
    bad = "skipped_steps", want = "a whole number in [0, step]";
  if (!bad) {
    FIELD("seed");
    const char *s = cJSON_IsString(v) ? v->valuestring : NULL;
    int ok = s && *s && strlen(s) <= 20;
    for (const char *q = s; ok && *q; q++) ok = *q >= '0' && *q <= '9';
    if (ok) {
      errno = 0;
      st->seed = strtoull(s, NULL, 10);
      ok = errno == 0;
    }
    if (!ok) bad = "seed", want = "a string of decimal digits below 2^64";
  }
  if (!bad && (FIELD("program_hash"), !cJSON_IsString(v) || hex64(v->valuestring, &st->program_hash)))
    bad = "program_hash", want = "a string of 16 hex digits";
  if (!bad) {
    FIELD("knobs");
    int n = 0, ok = cJSON_IsObject(v);
    for (const cJSON *k = ok ? v->child : NULL; k && ok; k = k->next, n++) {
      int found = -1;
      for (int i = 0; i < prog->n_knobs; i++)
        if (k->string && !strcmp(k->string, prog->knobs[i].name)) found = i;
      if (found < 0 || !cJSON_IsNumber(k) || !isfinite(k->valuedouble)) ok = 0;
      else st->knobs[found] = k->valuedouble;
    }
    if (!ok || n != prog->n_knobs) bad = "knobs", want = "the program's knobs, each a finite number";
    st->n_knobs = prog->n_knobs;
  }
  if (!bad && (FIELD("input_hashes"), v)) {
    int ok = cJSON_IsObject(v);
    for (const cJSON *k = ok ? v->child : NULL; k && ok; k = k->next) {
      if (st->n_files >= 2 || !k->string || !cJSON_IsString(k) ||
          strlen(k->string) >= sizeof st->file_name[0] ||
          hex64(k->valuestring, &st->file_hash[st->n_files])) {
        ok = 0;
        break;
      }
      trn_path(st->file_name[st->n_files], sizeof st->file_name[0], "%s", k->string);
      st->n_files++;
    }
    if (!ok) bad = "input_hashes", want = "an object of file names and 16-hex-digit hashes";
  }
#undef FIELD
  if (bad) {
    const cJSON *b = cJSON_GetObjectItemCaseSensitive(o, bad);
    char *shown = b ? cJSON_PrintUnformatted(b) : NULL;
    trn_errf(err, "%s: '%s' must be %s, got %.60s", path, bad, want, shown ? shown : "nothing");
    cJSON_free(shown);
    cJSON_Delete(o);
    return -1;
  }
  st->epoch = cJSON_GetObjectItemCaseSensitive(o, "epoch")->valuedouble;
  cJSON_Delete(o);
  return 0;
}

int trn_ckpt_load(const char *dir, int64_t step, trn_state *st, const poc_program *prog,
                  const trn_ckmodel *cm, int n, char *err) {
  char path[PATHN], sub[PATHN];
  trn_path(path, sizeof path, "%s/state.json", dir);
  char *text;
  if (read_text(path, &text, err)) return -1;
  int rc = parse_state(path, text, step, st, prog, err);
  free(text);
  if (rc) return -1;
  for (int i = 0; i < n; i++) {
    model_dir(sub, sizeof sub, dir, cm, i);
    if (cm[i].lora) {
      /* the adapter must be this run's: the same rank, scale and targets */
      poc_lora_cfg lc;
      if (poc_lora_read_config(sub, &lc, NULL, 0, err)) return -1;
      if (lc.r != cm[i].lora->r || lc.alpha != cm[i].lora->alpha ||
          lc.targets != cm[i].lora->targets) {
        trn_errf(err, "%s/adapter_config.json: r, lora_alpha or target_modules differ from the "
                 "program's lora(...)", sub);
        return -1;
      }
      if (poc_lora_load(sub, cm[i].lay, cm[i].w, err)) return -1;
    } else if (poc_weights_load_f32(sub, cm[i].lay, cm[i].w, err)) {
      return -1;
    }
    /* the moments: one file, or the shards of a ZeRO run (any R) */
    int shards = !has_file(sub, "optimizer.safetensors") && has_file(sub, "optimizer.index.json");
    if (shards ? load_shards(sub, &cm[i], err) : load_optimizer(sub, &cm[i], err)) return -1;
    const float *arr[3] = {cm[i].w, cm[i].m, cm[i].v};
    const char *file[3] = {cm[i].lora ? "adapter_model.safetensors" : "model.safetensors",
                           shards ? "optimizer.index.json's shards" : "optimizer.safetensors",
                           shards ? "optimizer.index.json's shards" : "optimizer.safetensors"};
    for (int k = 0; k < 3; k++) {
      size_t len = k ? cm[i].hi - cm[i].lo : cm[i].lay->n_params, off = k ? cm[i].lo : 0;
      int64_t at = first_nonfinite(arr[k], len);
      if (at < 0 && k == 2)
        for (size_t j = 0; j < len && at < 0; j++)
          if (arr[k][j] < 0) at = (int64_t)j;
      if (at >= 0) {
        trn_errf(err, "%s/%s: '%s%s' holds %s", sub, file[k],
                 k == 0 ? "" : k == 1 ? "exp_avg." : "exp_avg_sq.",
                 tensor_at(cm[i].lay, at + (int64_t)off),
                 k == 2 && isfinite(arr[k][at]) ? "a negative second moment"
                                                : "a non-finite value");
        return -1;
      }
    }
  }
  return 0;
}
