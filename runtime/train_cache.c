/* train_cache.c — OUT/ref_cache.bin: the hoisted calls' values for the whole data set,
 * computed once before training, reused by a resumed run.
 *
 * Layout (little-endian, as the machine writes it): "POCREF2\0", the 64-bit key, the
 * number of calls and of examples; then for each hoisted call in program order its index,
 * three flags (logp, entropy, logsumsq), the n+1 offsets and the values as doubles. The key hashes the
 * data file's bytes, the model's weights, max_len and every call's key, so a cache made
 * for other data, weights or calls is recomputed rather than trusted.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "st.h"
#include "train_internal.h"

static const char magic[8] = "POCREF2";

void trn_cache_free(trn_cache *k) {
  for (int i = 0; i < k->n_calls && k->off; i++) {
    free(k->off[i]);
    free(k->logp[i]);
    free(k->ent[i]);
    free(k->lss[i]);
  }
  free(k->off);
  free(k->logp);
  free(k->ent);
  free(k->lss);
  memset(k, 0, sizeof *k);
}

int trn_cache_alloc(trn_cache *k, const poc_program *prog, int64_t n) {
  memset(k, 0, sizeof *k);
  k->n_calls = prog->n_calls;
  k->n_examples = n;
  size_t nc = (size_t)prog->n_calls + 1;
  k->off = calloc(nc, sizeof *k->off);
  k->logp = calloc(nc, sizeof *k->logp);
  k->ent = calloc(nc, sizeof *k->ent);
  k->lss = calloc(nc, sizeof *k->lss);
  if (!k->off || !k->logp || !k->ent || !k->lss) return -1;
  for (int i = 0; i < prog->n_calls; i++)
    if (prog->calls[i].hoisted && !(k->off[i] = calloc((size_t)n + 1, sizeof **k->off)))
      return -1;
  return 0;
}

int trn_cache_save(const trn_cache *k, const char *path, uint64_t key, char *err) {
  char tmp[4200];
  trn_path(tmp, sizeof tmp, "%s.tmp", path);
  FILE *f = fopen(tmp, "wb");
  if (!f) {
    trn_errf(err, "%s: cannot create", tmp);
    return -1;
  }
  int32_t nc = k->n_calls;
  int64_t n = k->n_examples;
  fwrite(magic, 1, 8, f);
  fwrite(&key, sizeof key, 1, f);
  fwrite(&nc, sizeof nc, 1, f);
  fwrite(&n, sizeof n, 1, f);
  for (int32_t i = 0; i < nc; i++) {
    if (!k->off[i]) continue;
    int32_t hdr[4] = {i, k->logp[i] != NULL, k->ent[i] != NULL, k->lss[i] != NULL};
    fwrite(hdr, sizeof hdr, 1, f);
    fwrite(k->off[i], sizeof(int64_t), (size_t)n + 1, f);
    size_t len = (size_t)k->off[i][n];
    if (k->logp[i]) fwrite(k->logp[i], sizeof(double), len, f);
    if (k->ent[i]) fwrite(k->ent[i], sizeof(double), len, f);
    if (k->lss[i]) fwrite(k->lss[i], sizeof(double), len, f);
  }
  int bad = ferror(f) != 0;
  bad |= fclose(f) != 0;
  if (bad || rename(tmp, path)) {
    remove(tmp);
    trn_errf(err, "%s: cannot write the reference cache (disk full?)", path);
    return -1;
  }
  return 0;
}

int trn_cache_load(trn_cache *k, const poc_program *prog, const char *path, uint64_t key) {
  FILE *f = fopen(path, "rb");
  if (!f) return 0;
  char m[8];
  uint64_t kk;
  int32_t nc;
  int64_t n;
  int ok = fread(m, 1, 8, f) == 8 && !memcmp(m, magic, 8) && fread(&kk, sizeof kk, 1, f) == 1 &&
           kk == key && fread(&nc, sizeof nc, 1, f) == 1 && nc == prog->n_calls &&
           fread(&n, sizeof n, 1, f) == 1 && n == k->n_examples;
  for (int32_t i = 0; ok && i < nc; i++) {
    if (!prog->calls[i].hoisted) continue;
    int32_t hdr[4];
    ok = fread(hdr, sizeof hdr, 1, f) == 1 && hdr[0] == i &&
         hdr[1] == (prog->calls[i].want_logp != 0) && hdr[2] == (prog->calls[i].want_entropy != 0) &&
         hdr[3] == (prog->calls[i].want_logsumsq != 0) &&
         fread(k->off[i], sizeof(int64_t), (size_t)n + 1, f) == (size_t)n + 1 &&
         k->off[i][0] == 0;
    for (int64_t e = 0; ok && e < n; e++) ok = k->off[i][e + 1] >= k->off[i][e];
    if (!ok) break;
    size_t len = (size_t)k->off[i][n];
    if (hdr[1]) {
      ok = (k->logp[i] = malloc((len + 1) * sizeof(double))) &&
           fread(k->logp[i], sizeof(double), len, f) == len;
    }
    if (ok && hdr[2]) {
      ok = (k->ent[i] = malloc((len + 1) * sizeof(double))) &&
           fread(k->ent[i], sizeof(double), len, f) == len;
    }
    if (ok && hdr[3]) {
      ok = (k->lss[i] = malloc((len + 1) * sizeof(double))) &&
           fread(k->lss[i], sizeof(double), len, f) == len;
    }
  }
  if (ok) ok = fgetc(f) == EOF;
  fclose(f);
  if (!ok) {
    for (int i = 0; i < k->n_calls; i++) {
      free(k->logp[i]);
      free(k->ent[i]);
      free(k->lss[i]);
      k->logp[i] = k->ent[i] = k->lss[i] = NULL;
    }
    return 0;
  }
  return 1;
}
