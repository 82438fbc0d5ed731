/* train_pack.c — from the program's calls to packed sequences, and from the packs'
 * outputs to the objective's ragged buffers.
 *
 * All live calls of one model in a micro-batch share ONE packed forward: the pack holds,
 * call after call, each example's `context ++ target` (call-major, so a call's values for
 * the micro-batch are one contiguous run of the pack's output). Hoisted calls are packed
 * the same way, but only when the cache is filled before training.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "comm.h"
#include "train_internal.h"

/* Python slice bounds on a sequence of length n. */
static void slice(int32_t lo, int32_t hi, int n, int *a, int *b) {
  int l = lo == POC_OPEN ? 0 : lo, h = hi == POC_OPEN ? n : hi;
  if (l < 0) l += n;
  if (h < 0) h += n;
  if (l < 0) l = 0;
  if (h < 0) h = 0;
  if (l > n) l = n;
  if (h > n) h = n;
  if (h < l) h = l;
  *a = l;
  *b = h;
}

int trn_segs_resolve(const trn_ctx *c, const poc_segment *s, int n, int64_t e,
                     const trn_anchors *anc, int b, int32_t *out) {
  int len = 0;
  for (int i = 0; i < n; i++) {
    const int32_t *src;
    int sl;
    if (s[i].src == POC_SRC_LITERAL) {
      src = s[i].lit;
      sl = s[i].n_lit;
    } else if (s[i].src == POC_SRC_ANCHOR) {
      if (!anc) { /* counting the worst case: the anchor at its full length */
        sl = c->prog->anchors[s[i].anchor].tokens;
        src = NULL;
      } else {
        src = anc->tok[s[i].anchor][b];
        sl = anc->len[s[i].anchor][b];
      }
    } else {
      int q = trn_seq_slot(c->data->kind, s[i].src);
      src = c->data->tok + c->data->seq_off[e * TRN_MAX_SEQ + q];
      sl = c->data->seq_len[e * TRN_MAX_SEQ + q];
    }
    int lo, hi;
    slice(s[i].lo, s[i].hi, sl, &lo, &hi);
    if (out && src) memcpy(out + len, src + lo, (size_t)(hi - lo) * sizeof *out);
    len += hi - lo;
  }
  return len;
}

static int call_in(const poc_call *k, int which) {
  return which == TRN_HOISTED ? k->hoisted : !k->hoisted;
}

int trn_max_pack_tokens(const trn_ctx *c, int m, int mb, int *longest) {
  const poc_program *p = c->prog;
  int64_t best = 0;
  int lng = 0;
  for (int64_t e = 0; e < c->data->n; e++) {
    int64_t tot = 0;
    for (int k = 0; k < p->n_calls; k++) {
      const poc_call *cl = &p->calls[k];
      if (cl->model != m) continue;
      int len = trn_segs_resolve(c, cl->context, cl->n_context, e, NULL, 0, NULL) +
                trn_segs_resolve(c, cl->target, cl->n_target, e, NULL, 0, NULL);
      tot += len;
      if (len > lng) lng = len;
    }
    if (tot > best) best = tot;
  }
  if (longest) *longest = lng;
  int64_t r = best * mb;
  return r > 0x3fffffff ? 0x3fffffff : (int)r;
}

void trn_mb_free(trn_mb *mb) {
  for (int m = 0; m < TRN_MAX_MODELS; m++) {
    free(mb->pk[m].tokens);
    free(mb->pk[m].seq_start);
    free(mb->pk[m].tgt_start);
  }
  if (mb->off)
    for (int k = 0; k < mb->n_calls; k++) free(mb->off[k]);
  free(mb->off);
  free(mb->base);
  memset(mb, 0, sizeof *mb);
}

static int grow(void **p, int *cap, int need, size_t elt) {
  if (need <= *cap) return 0;
  int nc = *cap ? *cap : 256;
  while (nc < need) nc *= 2;
  void *q = realloc(*p, (size_t)nc * elt);
  if (!q) return -1;
  *p = q;
  *cap = nc;
  return 0;
}

int trn_mb_build(trn_mb *mb, const trn_ctx *c, const int64_t *ex, int B,
                 const trn_anchors *anc, int anc_b0, int which, char *err) {
  const poc_program *p = c->prog;
  if (!mb->off) {
    mb->n_calls = p->n_calls;
    mb->off = calloc((size_t)p->n_calls + 1, sizeof *mb->off);
    mb->base = calloc((size_t)p->n_calls + 1, sizeof *mb->base);
    if (!mb->off || !mb->base) goto oom;
  }
  if (B > mb->cap_B) {
    for (int k = 0; k < p->n_calls; k++) {
      int32_t *q = realloc(mb->off[k], (size_t)(B + 1) * sizeof *q);
      if (!q) goto oom;
      mb->off[k] = q;
    }
    mb->cap_B = B;
  }
  mb->B = B;
  for (int m = 0; m < p->n_models; m++) {
    trn_pack *pk = &mb->pk[m];
    pk->n_seq = pk->n_tok = pk->n_tgt = 0;
    pk->entropy = pk->logsumsq = pk->save = 0;
    if (grow((void **)&pk->seq_start, &pk->cap_seq, 1, sizeof(int32_t))) goto oom;
    pk->seq_start[0] = 0;
  }
  for (int k = 0; k < p->n_calls; k++) {
    const poc_call *cl = &p->calls[k];
    mb->off[k][0] = 0;
    if (!call_in(cl, which)) {
      for (int b = 0; b < B; b++) mb->off[k][b + 1] = 0;
      mb->base[k] = 0;
      continue;
    }
    trn_pack *pk = &mb->pk[cl->model];
    int max_pos = c->lay[cl->model]->cfg.max_position_embeddings;
    pk->entropy |= cl->want_entropy;
    pk->logsumsq |= cl->want_logsumsq;
    pk->save |= cl->trainable;
    mb->base[k] = pk->n_tgt;
    for (int b = 0; b < B; b++) {
      int64_t e = ex[b];
      int nc = trn_segs_resolve(c, cl->context, cl->n_context, e, anc, anc_b0 + b, NULL);
      int nt = trn_segs_resolve(c, cl->target, cl->n_target, e, anc, anc_b0 + b, NULL);
      int nout = cl->reward ? nt > 0 : nt; /* a reward call: one score per example */
      mb->off[k][b + 1] = mb->off[k][b] + nout;
      if (nt == 0) continue; /* nothing to score: no sequence in the pack */
      if (nc == 0) {
        snprintf(err, POC_ERR_LEN,
                 "%s: call '%s': the context is empty for data line %lld (the first target "
                 "token needs a context to be predicted from)",
                 c->data->path, cl->key, (long long)e + 1);
        return -1;
      }
      if (max_pos > 0 && nc + nt > max_pos) {
        snprintf(err, POC_ERR_LEN,
                 "%s: call '%s': data line %lld gives a %d-token sequence, longer than the "
                 "model's %d positions (lower max_len)",
                 c->data->path, cl->key, (long long)e + 1, nc + nt, max_pos);
        return -1;
      }
      if (grow((void **)&pk->tokens, &pk->cap_tok, pk->n_tok + nc + nt, sizeof(int32_t)) ||
          grow((void **)&pk->seq_start, &pk->cap_seq, pk->n_seq + 2, sizeof(int32_t)) ||
          grow((void **)&pk->tgt_start, &pk->cap_tgt, pk->n_seq + 2, sizeof(int32_t)))
        goto oom;
      int32_t *t = pk->tokens + pk->n_tok;
      trn_segs_resolve(c, cl->context, cl->n_context, e, anc, anc_b0 + b, t);
      trn_segs_resolve(c, cl->target, cl->n_target, e, anc, anc_b0 + b, t + nc);
      pk->tgt_start[pk->n_seq] = pk->n_tok + nc;
      pk->n_tok += nc + nt;
      pk->n_seq++;
      pk->seq_start[pk->n_seq] = pk->n_tok;
      pk->n_tgt += nout;
    }
  }
  for (int m = 0; m < p->n_models; m++)
    if (mb->pk[m].n_tok > c->max_tokens[m]) {
      trn_errf(err, "model '%s': a micro-batch packs %d tokens, more than the "
               "%d its workspace was sized for", p->models[m].name, mb->pk[m].n_tok,
               c->max_tokens[m]);
      return -1;
    }
  return 0;
oom:
  trn_errf(err, "out of memory laying out a micro-batch");
  return -1;
}

/* ---- the objective's buffers ------------------------------------------------------ */

int trn_objbuf_init(trn_objbuf *o, const poc_program *prog, int cap_B) {
  memset(o, 0, sizeof *o);
  o->n_calls = prog->n_calls;
  o->n_fields = prog->n_fields;
  o->n_reports = prog->n_reports;
  o->cap_B = cap_B;
  size_t nc = (size_t)prog->n_calls + 1, nf = (size_t)prog->n_fields + 1;
  o->example = calloc((size_t)cap_B, sizeof *o->example);
  o->off = calloc(nc, sizeof *o->off);
  o->logp = calloc(nc, sizeof *o->logp);
  o->ent = calloc(nc, sizeof *o->ent);
  o->lss = calloc(nc, sizeof *o->lss);
  o->dlogp = calloc(nc, sizeof *o->dlogp);
  o->dent = calloc(nc, sizeof *o->dent);
  o->cap_tok = calloc(nc, sizeof *o->cap_tok);
  o->foff = calloc(nf, sizeof *o->foff);
  o->fval = calloc(nf, sizeof *o->fval);
  o->fcap = calloc(nf, sizeof *o->fcap);
  o->loss = calloc((size_t)cap_B, sizeof *o->loss);
  o->report = calloc((size_t)cap_B * ((size_t)prog->n_reports + 1), sizeof *o->report);
  if (!o->example || !o->off || !o->logp || !o->ent || !o->lss || !o->dlogp || !o->dent ||
      !o->cap_tok || !o->foff || !o->fval || !o->fcap || !o->loss || !o->report)
    return -1;
  for (int k = 0; k < prog->n_calls; k++)
    if (!(o->off[k] = calloc((size_t)cap_B + 1, sizeof **o->off))) return -1;
  for (int f = 0; f < prog->n_fields; f++) {
    if (prog->fields[f].seq >= 0) {
      if (!(o->foff[f] = calloc((size_t)cap_B + 1, sizeof **o->foff))) return -1;
    } else if (!(o->fval[f] = calloc((size_t)cap_B, sizeof **o->fval))) {
      return -1;
    }
  }
  return 0;
}

void trn_objbuf_free(trn_objbuf *o) {
  for (int k = 0; k < o->n_calls && o->off; k++) {
    free(o->off[k]);
    free(o->logp[k]);
    free(o->ent[k]);
    free(o->lss[k]);
    free(o->dlogp[k]);
    free(o->dent[k]);
  }
  for (int f = 0; f < o->n_fields && o->foff; f++) {
    free(o->foff[f]);
    free(o->fval[f]);
  }
  free(o->example);
  free(o->off);
  free(o->logp);
  free(o->ent);
  free(o->lss);
  free(o->dlogp);
  free(o->dent);
  free(o->cap_tok);
  free(o->foff);
  free(o->fval);
  free(o->fcap);
  free(o->loss);
  free(o->report);
  memset(o, 0, sizeof *o);
}

void trn_objbuf_reset(trn_objbuf *o) { o->B = 0; }

static int reserve_d(double **p, size_t *cap, size_t need) {
  if (need <= *cap && *p) return 0;
  size_t nc = *cap ? *cap : 256;
  while (nc < need) nc *= 2;
  double *q = realloc(*p, nc * sizeof *q);
  if (!q) return -1;
  *p = q;
  *cap = nc;
  return 0;
}

/* The five per-token arrays of call k grow together. */
static int reserve5(trn_objbuf *o, int k, size_t need) {
  if (need <= o->cap_tok[k] && o->logp[k]) return 0;
  size_t nc = o->cap_tok[k] ? o->cap_tok[k] : 256;
  while (nc < need) nc *= 2;
  double **arr[5] = {&o->logp[k], &o->ent[k], &o->lss[k], &o->dlogp[k], &o->dent[k]};
  for (int i = 0; i < 5; i++) {
    double *q = realloc(*arr[i], nc * sizeof *q);
    if (!q) return -1;
    *arr[i] = q;
  }
  o->cap_tok[k] = nc;
  return 0;
}

/* The fields of examples ex[0..B) into the buffer from example B0 on (from the data). */
static int append_fields(trn_objbuf *o, const trn_ctx *c, const int64_t *ex, int B0, int B) {
  const poc_program *p = c->prog;
  const trn_data *d = c->data;
  for (int f = 0; f < p->n_fields; f++) {
    const poc_field_decl *fd = &p->fields[f];
    if (fd->seq < 0) {
      for (int b = 0; b < B; b++) o->fval[f][B0 + b] = d->ex_field[ex[b] * d->n_fields + f];
      continue;
    }
    int q = trn_seq_slot(d->kind, fd->seq);
    size_t need = (size_t)o->foff[f][B0] + 1;
    for (int b = 0; b < B; b++) need += (size_t)d->seq_len[ex[b] * TRN_MAX_SEQ + q];
    if (reserve_d(&o->fval[f], &o->fcap[f], need)) return -1;
    for (int b = 0; b < B; b++) {
      int n = d->seq_len[ex[b] * TRN_MAX_SEQ + q];
      const double *src = d->tok_field + d->tf_off[ex[b] * d->n_fields + f];
      memcpy(o->fval[f] + o->foff[f][B0 + b], src, (size_t)n * sizeof(double));
      o->foff[f][B0 + b + 1] = o->foff[f][B0 + b] + n;
    }
  }
  return 0;
}

int trn_objbuf_append(trn_objbuf *o, const trn_ctx *c, const trn_mb *mb, const int64_t *ex,
                      const double *const *logp, const double *const *ent,
                      const double *const *lss) {
  const poc_program *p = c->prog;
  int B0 = o->B, B = mb->B;
  if (B0 + B > o->cap_B) return -1;
  for (int b = 0; b < B; b++) o->example[B0 + b] = ex[b];
  for (int k = 0; k < p->n_calls; k++) {
    const poc_call *cl = &p->calls[k];
    int32_t *off = o->off[k];
    int32_t start = off[B0];
    size_t need = (size_t)start + (size_t)mb->off[k][B] + 1;
    if (cl->hoisted) {
      need = (size_t)start + 1;
      for (int b = 0; b < B; b++)
        need += (size_t)(c->cache->off[k][ex[b] + 1] - c->cache->off[k][ex[b]]);
    }
    if (reserve5(o, k, need)) return -1;
    for (int b = 0; b < B; b++) {
      const double *lp, *en, *ls;
      int n;
      if (cl->hoisted) {
        int64_t a = c->cache->off[k][ex[b]];
        n = (int)(c->cache->off[k][ex[b] + 1] - a);
        lp = c->cache->logp[k] ? c->cache->logp[k] + a : NULL;
        en = c->cache->ent[k] ? c->cache->ent[k] + a : NULL;
        ls = c->cache->lss[k] ? c->cache->lss[k] + a : NULL;
      } else {
        int a = mb->base[k] + mb->off[k][b];
        n = mb->off[k][b + 1] - mb->off[k][b];
        lp = logp[cl->model] + a;
        en = ent[cl->model] ? ent[cl->model] + a : NULL;
        ls = lss[cl->model] ? lss[cl->model] + a : NULL;
      }
      int32_t at = off[B0 + b];
      for (int i = 0; i < n; i++) {
        o->logp[k][at + i] = lp ? lp[i] : 0;
        o->ent[k][at + i] = en ? en[i] : 0;
        o->lss[k][at + i] = ls ? ls[i] : 0;
      }
      off[B0 + b + 1] = at + n;
    }
  }
  if (append_fields(o, c, ex, B0, B)) return -1;
  o->B = B0 + B;
  return 0;
}

/* Data parallelism: the objective's inputs of the whole step on every rank. Each rank
 * holds the per-token values of its share of the step's B examples (its example b is the
 * step's example pos[b]); the
 * lengths and then the values go through sums over ranks in which every other rank adds
 * zeros, so what arrives is exact (x + 0 = x) and identical on every rank. Fields come
 * from the data, which every rank has. */
int trn_objbuf_gather(trn_objbuf *g, const trn_ctx *c, const trn_objbuf *loc,
                      const int64_t *ex, int B, const int *pos, char *err) {
  const poc_program *p = c->prog;
  int nc = p->n_calls;
  if (B > g->cap_B) {
    trn_errf(err, "gathering %d examples into a buffer of %d", B, g->cap_B);
    return -1;
  }
  int64_t *len = calloc((size_t)nc * (size_t)B + 1, sizeof *len);
  if (!len) goto oom;
  for (int k = 0; k < nc; k++)
    for (int b = 0; b < loc->B; b++)
      len[(size_t)k * B + pos[b]] = loc->off[k][b + 1] - loc->off[k][b];
  if (trn_comm_sum_i64(len, (size_t)nc * (size_t)B, err)) {
    free(len);
    return -1;
  }
  size_t total = 0;
  for (int b = 0; b < B; b++) g->example[b] = ex[b];
  for (int k = 0; k < nc; k++) {
    g->off[k][0] = 0;
    for (int b = 0; b < B; b++) g->off[k][b + 1] = g->off[k][b] + (int32_t)len[(size_t)k * B + b];
    if (reserve5(g, k, (size_t)g->off[k][B] + 1)) {
      free(len);
      goto oom;
    }
    total += 3 * (size_t)g->off[k][B];
  }
  free(len);
  double *v = calloc(total + 1, sizeof *v);
  if (!v) goto oom;
  /* per call: logp, entropy, log Σ p², each over the whole step's tokens */
  size_t at = 0;
  for (int k = 0; k < nc; k++) {
    size_t n = (size_t)g->off[k][B];
    for (int b = 0; b < loc->B; b++) {
      size_t s = (size_t)g->off[k][pos[b]], a = (size_t)loc->off[k][b];
      size_t m = (size_t)(loc->off[k][b + 1] - loc->off[k][b]);
      memcpy(v + at + s, loc->logp[k] + a, m * sizeof *v);
      memcpy(v + at + n + s, loc->ent[k] + a, m * sizeof *v);
      memcpy(v + at + 2 * n + s, loc->lss[k] + a, m * sizeof *v);
    }
    at += 3 * n;
  }
  if (trn_comm_sum_f64(v, total, err)) {
    free(v);
    return -1;
  }
  at = 0;
  for (int k = 0; k < nc; k++) {
    size_t n = (size_t)g->off[k][B];
    memcpy(g->logp[k], v + at, n * sizeof *v);
    memcpy(g->ent[k], v + at + n, n * sizeof *v);
    memcpy(g->lss[k], v + at + 2 * n, n * sizeof *v);
    at += 3 * n;
  }
  free(v);
  g->B = 0;
  if (append_fields(g, c, ex, 0, B)) goto oom;
  g->B = B;
  return 0;
oom:
  trn_errf(err, "out of memory gathering the objective's inputs");
  return -1;
}

int trn_objbuf_eval(trn_objbuf *o, const trn_ctx *c, int B_norm, uint64_t pick_seed,
                    char *err) {
  const poc_program *p = c->prog;
  const double *lp[TRN_MAX_MODELS * 8 + 64], *en[TRN_MAX_MODELS * 8 + 64],
      *ls[TRN_MAX_MODELS * 8 + 64];
  double *dl[TRN_MAX_MODELS * 8 + 64], *de[TRN_MAX_MODELS * 8 + 64];
  const int32_t *off[TRN_MAX_MODELS * 8 + 64];
  const int32_t *foff[TRN_MAX_FIELDS];
  const double *fv[TRN_MAX_FIELDS];
  if (p->n_calls > (int)(sizeof lp / sizeof *lp)) {
    trn_errf(err, "%d model calls: too many", p->n_calls);
    return -1;
  }
  for (int k = 0; k < p->n_calls; k++) {
    const poc_call *cl = &p->calls[k];
    off[k] = o->off[k];
    lp[k] = cl->want_logp ? o->logp[k] : NULL;
    en[k] = cl->want_entropy ? o->ent[k] : NULL;
    ls[k] = cl->want_logsumsq ? o->lss[k] : NULL;
    dl[k] = cl->trainable ? o->dlogp[k] : NULL;
    de[k] = cl->trainable && cl->want_entropy ? o->dent[k] : NULL;
    /* zeros wherever the kernel leaves a seed unwritten */
    size_t n = (size_t)o->off[k][o->B];
    if (n) {
      memset(o->dlogp[k], 0, n * sizeof(double));
      memset(o->dent[k], 0, n * sizeof(double));
    }
  }
  for (int f = 0; f < p->n_fields; f++) {
    foff[f] = o->foff[f];
    fv[f] = o->fval[f];
  }
  poc_objective_args a = {
      .B = o->B, .B_norm = B_norm, .example = o->example, .pick_seed = pick_seed,
      .knobs = c->knobs, .off = off, .logp = lp, .entropy = en, .logsumsq = ls, .field_off = foff,
      .field = fv, .loss = o->loss, .report = o->report, .dlogp = dl, .dentropy = de,
      .err = err};
  err[0] = 0;
  if (p->objective(&a)) {
    if (!err[0]) trn_errf(err, "the objective failed");
    return -1;
  }
  return 0;
}

uint64_t trn_pick_seed(uint64_t seed, int64_t step) {
  poc_rng r = poc_rng_derive(seed, (uint64_t)step, 0x7069636bULL /* "pick" */);
  return poc_rng_next(&r);
}

void poc_pick(uint64_t seed, int pick_index, int64_t example, int len, int n,
              unsigned char *mask) {
  if (len <= 0) return;
  memset(mask, 0, (size_t)len);
  if (n > len) n = len;
  if (n <= 0) return;
  int *idx = malloc((size_t)len * sizeof *idx);
  if (!idx) return;
  for (int i = 0; i < len; i++) idx[i] = i;
  poc_rng r = poc_rng_derive(seed, (uint64_t)pick_index, (uint64_t)example);
  for (int i = 0; i < n; i++) {
    int j = i + (int)(poc_rng_uniform(&r) * (double)(len - i));
    if (j >= len) j = len - 1;
    int t = idx[i];
    idx[i] = idx[j];
    idx[j] = t;
    mask[idx[i]] = 1;
  }
  free(idx);
}
