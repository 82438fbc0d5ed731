/* ckpt.c — checkpoints: OUT/ckpt-<step>/ holds the trainable model as HF transformers
 * loads it (config.json + model.safetensors, F32), the AdamW moments
 * (optimizer.safetensors: "exp_avg.<tensor>", "exp_avg_sq.<tensor>", F32, so they come
 * back exactly) and state.json (step, data position, seed, knobs, program hash). With
 * several trainable models the first sits at the top and each other one in a subfolder
 * named after it.
 *
 * A checkpoint appears whole or not at all: it is built in OUT/.tmp-ckpt-<step>/, every
 * file fsynced, then the folder is renamed into place and OUT fsynced. A failure (disk
 * full) removes the temporary folder and leaves every earlier checkpoint as it was.
 */
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cjson/cJSON.h>

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
  char *s = cJSON_Print(o);
  cJSON_Delete(o);
  return s;
}

int trn_ckpt_write(const char *out, const trn_state *st, const poc_program *prog,
                   const trn_ckmodel *cm, int n, char *err) {
  char tmp[PATHN], fin[PATHN], old[PATHN], dir[PATHN], path[PATHN];
  trn_path(tmp, sizeof tmp, "%s/.tmp-ckpt-%lld", out, (long long)st->step);
  trn_path(fin, sizeof fin, "%s/ckpt-%lld", out, (long long)st->step);
  trn_path(old, sizeof old, "%s/.old-ckpt-%lld", out, (long long)st->step);
  rm_tree(tmp);
  if (mkdir(tmp, 0777)) {
    trn_errf(err, "%s: cannot create: %s", tmp, strerror(errno));
    return -1;
  }
  for (int i = 0; i < n; i++) {
    model_dir(dir, sizeof dir, tmp, cm, i);
    if (poc_model_save_f32(dir, cm[i].lay, cm[i].w, "F32", err)) goto fail;
    if (write_optimizer(dir, &cm[i], err)) goto fail;
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
  rm_tree(tmp);
  return -1;
}

static int has_file(const char *dir, const char *name) {
  char p[PATHN];
  struct stat st;
  trn_path(p, sizeof p, "%s/%s", dir, name);
  return stat(p, &st) == 0 && S_ISREG(st.st_mode) && st.st_size > 0;
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
    if (!has_file(p, "state.json") || !has_file(p, "config.json") ||
        !has_file(p, "model.safetensors") || !has_file(p, "optimizer.safetensors"))
      continue;
    if (step > best) {
      best = step;
      trn_path(dir, dir_len, "%s", p);
    }
  }
  closedir(d);
  return best;
}

static int read_text(const char *path, char **out, char *err) {
  FILE *f = fopen(path, "rb");
  if (!f) {
    trn_errf(err, "%s: cannot read: %s", path, strerror(errno));
    return -1;
  }
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

static int load_optimizer(const char *dir, const trn_ckmodel *cm, char *err) {
  char path[PATHN];
  trn_path(path, sizeof path, "%s/optimizer.safetensors", dir);
  st_file f;
  if (st_open(&f, path, err)) return -1;
  int rc = 0;
  for (int i = 0; i < cm->lay->n_tensors && !rc; i++) {
    const poc_tensor_info *ti = &cm->lay->tensors[i];
    for (int k = 0; k < 2 && !rc; k++) {
      char name[160];
      trn_path(name, sizeof name, "%s.%s", k ? "exp_avg_sq" : "exp_avg", ti->name);
      const st_tensor *t = st_find(&f, name);
      if (!t || t->numel != ti->numel) {
        trn_errf(err, "%s: %s '%s'", path, t ? "wrong size of" : "missing tensor",
                 name);
        rc = -1;
      } else {
        rc = st_read_f32(&f, t, (k ? cm->v : cm->m) + ti->offset, err);
      }
    }
  }
  st_close(&f);
  return rc;
}

int trn_ckpt_load(const char *dir, trn_state *st, const poc_program *prog,
                  const trn_ckmodel *cm, int n, char *err) {
  char path[PATHN], sub[PATHN];
  trn_path(path, sizeof path, "%s/state.json", dir);
  char *text;
  if (read_text(path, &text, err)) return -1;
  cJSON *o = cJSON_Parse(text);
  free(text);
  const cJSON *step = cJSON_GetObjectItemCaseSensitive(o, "step"),
              *tot = cJSON_GetObjectItemCaseSensitive(o, "total_steps"),
              *pos = cJSON_GetObjectItemCaseSensitive(o, "data_position"),
              *seed = cJSON_GetObjectItemCaseSensitive(o, "seed"),
              *ph = cJSON_GetObjectItemCaseSensitive(o, "program_hash"),
              *kn = cJSON_GetObjectItemCaseSensitive(o, "knobs");
  if (!cJSON_IsNumber(step) || !cJSON_IsNumber(tot) || !cJSON_IsNumber(pos) ||
      !cJSON_IsString(seed) || !cJSON_IsString(ph) || !cJSON_IsObject(kn)) {
    cJSON_Delete(o);
    trn_errf(err, "%s: malformed checkpoint state", path);
    return -1;
  }
  memset(st, 0, sizeof *st);
  st->step = (int64_t)step->valuedouble;
  st->total = (int64_t)tot->valuedouble;
  st->pos = (int64_t)pos->valuedouble;
  st->seed = strtoull(seed->valuestring, NULL, 10);
  st->program_hash = strtoull(ph->valuestring, NULL, 16);
  st->n_knobs = prog->n_knobs;
  for (int i = 0; i < prog->n_knobs && i < 64; i++) {
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(kn, prog->knobs[i].name);
    st->knobs[i] = cJSON_IsNumber(v) ? v->valuedouble : prog->knobs[i].value;
  }
  cJSON_Delete(o);
  for (int i = 0; i < n; i++) {
    model_dir(sub, sizeof sub, dir, cm, i);
    if (poc_weights_load_f32(sub, cm[i].lay, cm[i].w, err)) return -1;
    if (load_optimizer(sub, &cm[i], err)) return -1;
  }
  return 0;
}
