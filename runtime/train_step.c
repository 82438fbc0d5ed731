/* train_step.c — one optimizer step's gradient, on whatever device the models live on
 * (float on "cpu" for training, double on "cpu64" for the gradient check against finite
 * differences, bf16/fp32 on "cuda").
 *
 * A step of B examples in micro-batches of b:
 *
 *   anchors   each `sample(...)` drawn for every example from the current weights
 *   separable for each micro-batch: forward (saving activations) → objective on the
 *             micro-batch → backward with its seeds. The objective's seeds already carry
 *             1/B (B_norm), so accumulating the micro-batches' gradients gives ∇ of the
 *             step's mean loss.
 *   otherwise (batch reductions): every micro-batch forward without saving → the
 *             objective once over the whole step → each micro-batch forward again, saving,
 *             and backward with its slice of the seeds. The second forward recomputes what
 *             the first one threw away: activations of only one micro-batch are ever held.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "comm.h"
#include "comm_nccl.h"
#include "train_internal.h"

typedef trn_models models;

/* Per-model host buffers of one pack: log-probs, entropies, log Σ p² and the seeds. */
typedef struct {
  double *lp, *en, *ls, *dl, *de;
  size_t cap;
} outbuf;

static void ob_free(outbuf *o) {
  free(o->lp);
  free(o->en);
  free(o->ls);
  free(o->dl);
  free(o->de);
  memset(o, 0, sizeof *o);
}

static int ob_reserve(outbuf *o, size_t n) {
  if (n == 0) n = 1;
  if (n <= o->cap) return 0;
  ob_free(o);
  o->lp = calloc(n, sizeof(double));
  o->en = calloc(n, sizeof(double));
  o->ls = calloc(n, sizeof(double));
  o->dl = malloc(n * sizeof(double));
  o->de = malloc(n * sizeof(double));
  if (!o->lp || !o->en || !o->ls || !o->dl || !o->de) {
    ob_free(o);
    return -1;
  }
  o->cap = n;
  return 0;
}

static poc_pack as_pack(const trn_pack *pk) {
  poc_pack p = {pk->n_seq, pk->n_tok, pk->tokens, pk->seq_start, pk->tgt_start};
  return p;
}

/* Forward of every model with something in the pack (only_save: just the models that will
 * run backward, with activations saved). */
static int forwards(const trn_ctx *c, models *ms, const trn_mb *mb, int save, int only_save,
                    outbuf *ob, trn_stepout *count, char *err) {
  for (int m = 0; m < c->prog->n_models; m++) {
    const trn_pack *pk = &mb->pk[m];
    int bwd = pk->save && c->prog->models[m].trainable;
    if (pk->n_seq == 0 || (only_save && !bwd)) continue;
    if (ob_reserve(&ob[m], (size_t)pk->n_tgt)) {
      trn_errf(err, "out of memory for %d log-probs", pk->n_tgt);
      return -1;
    }
    int flags = (save && bwd ? POC_FWD_SAVE : 0) | (pk->entropy ? POC_FWD_ENTROPY : 0) |
                (pk->logsumsq ? POC_FWD_LOGSUMSQ : 0) | (c->unfused ? POC_FWD_UNFUSED : 0);
    poc_pack p = as_pack(pk);
    poc_fwd_out fo = {ob[m].lp, pk->entropy ? ob[m].en : NULL, pk->logsumsq ? ob[m].ls : NULL};
    if (poc_model_forward_out(ms->m[m], &p, flags, &fo, err)) return -1;
    if (count && c->prog->models[m].trainable) {
      count->tokens += pk->n_tok;
      count->tokens_here += pk->n_tok;
      /* what the FLOP count of `poc bench` needs: rows through the head, and the
       * (query, key) pairs of causal attention, L(L+1)/2 for a sequence of L */
      count->head_rows += pk->n_tgt;
      for (int s = 0; s < pk->n_seq; s++) {
        double L = pk->seq_start[s + 1] - pk->seq_start[s];
        count->attn_pairs += L * (L + 1) / 2;
      }
    }
  }
  return 0;
}

/* Scatters the objective's seeds for examples [b0, b0 + mb->B) of the buffer into each
 * trainable model's pack order and runs its backward. */
static int backwards(const trn_ctx *c, models *ms, const trn_mb *mb, const trn_objbuf *o,
                     int b0, outbuf *ob, char *err) {
  const poc_program *p = c->prog;
  for (int m = 0; m < p->n_models; m++) {
    const trn_pack *pk = &mb->pk[m];
    if (pk->n_seq == 0 || !pk->save || !p->models[m].trainable) continue;
    memset(ob[m].dl, 0, (size_t)pk->n_tgt * sizeof(double));
    memset(ob[m].de, 0, (size_t)pk->n_tgt * sizeof(double));
    for (int k = 0; k < p->n_calls; k++) {
      const poc_call *cl = &p->calls[k];
      if (cl->model != m || cl->hoisted || !cl->trainable) continue;
      for (int b = 0; b < mb->B; b++) {
        int n = mb->off[k][b + 1] - mb->off[k][b];
        int dst = mb->base[k] + mb->off[k][b], src = o->off[k][b0 + b];
        for (int i = 0; i < n; i++) {
          ob[m].dl[dst + i] = o->dlogp[k][src + i];
          if (cl->want_entropy) ob[m].de[dst + i] = o->dent[k][src + i];
        }
      }
    }
    poc_pack pp = as_pack(pk);
    if (poc_model_backward(ms->m[m], &pp, ob[m].dl, pk->entropy ? ob[m].de : NULL, err))
      return -1;
  }
  return 0;
}

static void anchors_free(trn_anchors *a) {
  for (int k = 0; k < a->n_anchors; k++) {
    for (int b = 0; b < a->B && a->tok[k]; b++) free(a->tok[k][b]);
    free(a->tok[k]);
    free(a->len[k]);
  }
  memset(a, 0, sizeof *a);
}

/* Anchor k of example e at step s: K tokens at most from the model's current weights
 * after the anchor's context, drawn from poc_rng_derive(seed + k, s, e). */
static int anchors_draw(const trn_ctx *c, models *ms, const int64_t *ex, int B, int64_t step,
                        trn_anchors *a, char *err) {
  const poc_program *p = c->prog;
  memset(a, 0, sizeof *a);
  if (p->n_anchors > 8) {
    trn_errf(err, "%d sample() anchors: at most 8 are supported", p->n_anchors);
    return -1;
  }
  a->n_anchors = p->n_anchors;
  a->B = B;
  int rc = 0;
  for (int k = 0; k < p->n_anchors && !rc; k++) {
    const poc_anchor *an = &p->anchors[k];
    a->tok[k] = calloc((size_t)B + 1, sizeof *a->tok[k]);
    a->len[k] = calloc((size_t)B + 1, sizeof *a->len[k]);
    if (!a->tok[k] || !a->len[k]) goto oom;
    for (int b = 0; b < B && !rc; b++) {
      int n = trn_segs_resolve(c, an->context, an->n_context, ex[b], a, b, NULL);
      int32_t *ctx = malloc(((size_t)n + 1) * sizeof *ctx);
      a->tok[k][b] = malloc(((size_t)an->tokens + 1) * sizeof(int32_t));
      if (!ctx || !a->tok[k][b]) {
        free(ctx);
        goto oom;
      }
      trn_segs_resolve(c, an->context, an->n_context, ex[b], a, b, ctx);
      poc_rng r = poc_rng_derive(c->seed + (uint64_t)k, (uint64_t)step, (uint64_t)ex[b]);
      int got = poc_model_generate(ms->m[an->model], ctx, n, an->tokens, an->temperature,
                                   an->top_p, c->eos[an->model], &r, a->tok[k][b], err);
      free(ctx);
      if (got < 0) rc = -1;
      else a->len[k][b] = got;
    }
  }
  if (rc) anchors_free(a);
  return rc;
oom:
  anchors_free(a);
  trn_errf(err, "out of memory drawing anchors");
  return -1;
}

static void sum_outputs(const trn_objbuf *o, int n_reports, trn_stepout *out) {
  for (int b = 0; b < o->B; b++) {
    out->loss_sum += o->loss[b];
    for (int r = 0; r < n_reports && r < 64; r++) out->report_sum[r] += o->report[r * o->B + b];
  }
}

/* LoRA dropout for the forwards of examples b0.. of step `step`: a stream from (seed,
 * step, b0), so the non-separable path's two forwards of a micro-batch draw the same
 * masks and a resumed run draws what an unbroken one would; off again after the step. */
static void lora_dropout(const trn_ctx *c, models *ms, int on, int64_t step, int b0) {
  for (int m = 0; m < c->prog->n_models; m++)
    if (c->prog->models[m].lora_r > 0 && c->prog->models[m].trainable)
      poc_model_lora_dropout(ms->m[m], on,
                             poc_rng_derive(c->seed ^ 0x4C6F52414472ull, (uint64_t)step,
                                            (uint64_t)b0).s);
}

/* The step's gradient as a sum over its micro-batches that does not depend on how they
 * are dealt to ranks. Where the gradient lives in host memory (the CPU), each
 * micro-batch's backward starts from zero and its gradient g_j is added to a double
 * accumulator; the accumulators are summed over ranks in double and rounded to float
 * once. Σ_j g_j in double is exact to ~1e-16 relative whatever the grouping, so the
 * float gradient, and the weights after AdamW, are those of one process but for an
 * element whose sum lies within that of a rounding boundary. Elsewhere (device memory)
 * the backwards accumulate in place and the ranks' float gradients are summed: on the
 * device by NCCL when the run has it (comm_nccl.h), else through host memory and MPI. */
/* Overlap (c->overlap, host accumulators, R > 1): during this rank's last micro-batch's
 * backward each gradient bucket (poc_model_grad_buckets: a decoder layer, or the rest) is
 * added to its accumulator as soon as the model's hook says it is final, and its
 * reduction starts (MPI_Iallreduce, or under ZeRO MPI_Ireduce_scatter into the shard).
 * Buckets start in one order on every rank — model by model, each in its backward order —
 * a bucket waiting for the ones before it; whatever a rank did not start during its
 * backward (no last micro-batch, a model with nothing in it) starts right after its
 * micro-batches, before any other collective. gradsum_finish waits for them all. The sums
 * are elementwise, as without overlap: the same numbers. */
typedef struct {
  int model, ready;
  size_t lo, hi;
} bucket;

typedef struct {
  double *acc[TRN_MAX_MODELS];   /* the run's (c->gacc) or, without one, this step's */
  float *g[TRN_MAX_MODELS];
  int on;                        /* accumulating in double */
  int owned;                     /* acc was allocated for this step */
  int dirty;                     /* acc holds sums that gradsum_finish has not taken */
  /* overlap */
  const trn_ctx *c;
  models *ms;
  int ovl;                       /* overlapping this step */
  int hooked;                    /* the hooks are on: this is the last micro-batch */
  int n_b, next;                 /* buckets, and the first not started */
  bucket *b;
  int first_b[TRN_MAX_MODELS];   /* model m's buckets start at b[first_b[m]] */
  double *shard[TRN_MAX_MODELS]; /* ZeRO: the reduce-scatter's result, cnt each */
  int failed;                    /* a start failed inside a hook: reported at the finish */
  char err[POC_ERR_LEN];
  int ov;                        /* m + 1: model m's gradient is summed by layer (NCCL),
                                    overlapping the backward of its last micro-batch */
} gradsum;

/* The accumulator's length: the trainable vector, padded to R whole shards under ZeRO (the
 * reduce-scatter's send buffer). */
static size_t acc_len(const trn_ctx *c, models *ms, int m) {
  size_t lo, hi, cnt;
  if (!c->zero) return c->n_train[m];
  poc_model_shard_range(ms->m[m], &lo, &hi, &cnt);
  return cnt * (size_t)trn_comm_size();
}

static int gradsum_init(gradsum *s, const trn_ctx *c, models *ms, int n_mb, char *err) {
  memset(s, 0, sizeof *s);
  /* one trainable model on a device with NCCL: its layers' sums overlap the backward (with
   * several, their layers would not come in one order on every rank; under ZeRO the
   * gradient is reduce-scattered, through trn_comm_dev_reduce_scatter, NCCL's too) */
  int only = -1, n_tr = 0;
  for (int m = 0; m < c->prog->n_models; m++)
    if (c->prog->models[m].trainable) only = m, n_tr++;
  if (n_tr == 1 && trn_comm_size() > 1 && !c->zero &&
      trn_nccl_overlap_init(poc_model_device(ms->m[only]), ms->m[only], c->lay[only]))
    s->ov = only + 1;
  if (n_mb <= 1 && trn_comm_size() == 1) return 0; /* one micro-batch: g_0 is the sum */
  s->on = 1;
  for (int m = 0; m < c->prog->n_models; m++) {
    if (!c->prog->models[m].trainable) continue;
    s->g[m] = poc_model_host_f32(ms->m[m], POC_PART_GRAD);
    if (!s->g[m]) s->on = 0;
  }
  for (int m = 0; s->on && m < c->prog->n_models; m++) {
    if (!s->g[m]) continue;
    if ((s->acc[m] = c->gacc[m])) continue; /* the run's, zero since the last step */
    s->owned = 1;
    if (!(s->acc[m] = calloc(acc_len(c, ms, m) + 1, sizeof(double)))) {
      trn_errf(err, "out of memory for the gradient accumulator");
      return -1;
    }
  }
  s->c = c;
  s->ms = ms;
  if (!s->on || !c->overlap || trn_comm_size() == 1) return 0;
  /* the buckets of every trainable model, in the order they start */
  int n = 0;
  for (int m = 0; m < c->prog->n_models; m++) {
    const size_t(*b)[2];
    if (s->acc[m]) n += poc_model_grad_buckets(ms->m[m], &b);
  }
  if (!(s->b = calloc((size_t)n + 1, sizeof *s->b))) {
    trn_errf(err, "out of memory for the gradient buckets");
    return -1;
  }
  for (int m = 0; m < c->prog->n_models; m++) {
    const size_t(*b)[2];
    if (!s->acc[m]) continue;
    int k = poc_model_grad_buckets(ms->m[m], &b);
    s->first_b[m] = s->n_b;
    for (int i = 0; i < k; i++) s->b[s->n_b++] = (bucket){m, 0, b[i][0], b[i][1]};
    if (c->zero) {
      size_t lo, hi, cnt;
      poc_model_shard_range(ms->m[m], &lo, &hi, &cnt);
      if (!(s->shard[m] = calloc(cnt + 1, sizeof(double)))) {
        trn_errf(err, "out of memory for the gradient's shard");
        return -1;
      }
    }
  }
  s->ovl = 1;
  return 0;
}

/* g of bucket i into its accumulator (and g back to zero), then every bucket that is
 * ready and next in line starts its reduction */
static void ovl_ready(gradsum *s, int i) {
  bucket *k = &s->b[i];
  if (k->ready) return;
  k->ready = 1;
  double *a = s->acc[k->model];
  float *g = s->g[k->model];
  long lo = (long)k->lo, hi = (long)k->hi;
#pragma omp parallel for schedule(static)
  for (long j = lo; j < hi; j++) {
    a[j] += (double)g[j];
    g[j] = 0;
  }
  while (!s->failed && s->next < s->n_b && s->b[s->next].ready) {
    bucket *q = &s->b[s->next++];
    size_t lo2, hi2, cnt;
    int rc;
    if (s->c->zero) {
      poc_model_shard_range(s->ms->m[q->model], &lo2, &hi2, &cnt);
      rc = trn_comm_start_reduce_scatter_f64(s->acc[q->model], s->shard[q->model], q->lo, q->hi,
                                             cnt, s->err);
    } else {
      rc = trn_comm_start_sum_f64(s->acc[q->model] + q->lo, q->hi - q->lo, s->err);
    }
    if (rc) s->failed = 1;
  }
  trn_comm_progress();
}

static void ovl_hook(void *ctx, poc_model *pm, int i) {
  gradsum *s = ctx;
  for (int m = 0; m < s->c->prog->n_models; m++)
    if (s->ms->m[m] == pm && s->acc[m]) ovl_ready(s, s->first_b[m] + i);
}

/* the last micro-batch: hooks on for its backward */
static void ovl_hooks(gradsum *s, int on) {
  if (!s->ovl) return;
  s->hooked = on;
  for (int m = 0; m < s->c->prog->n_models; m++)
    if (s->acc[m]) poc_model_grad_hook(s->ms->m[m], on ? ovl_hook : NULL, s);
}

/* after the micro-batches: whatever has not started starts, in order */
static void ovl_start_rest(gradsum *s) {
  for (int i = 0; s->ovl && i < s->n_b; i++) ovl_ready(s, i);
}

/* before a micro-batch's backwards: the last one of the step on this rank starts the sums */
static void gradsum_arm(gradsum *s, models *ms, int last) {
  if (s->ov && last) trn_nccl_overlap_arm(ms->m[s->ov - 1], 1);
}

/* after the micro-batches' backwards, before any other collective (comm_nccl.h) */
static int gradsum_layers(gradsum *s, models *ms, char *err) {
  return s->ov ? trn_nccl_overlap_layers(ms->m[s->ov - 1], err) : 0;
}

static void gradsum_free(gradsum *s, const trn_ctx *c, models *ms) {
  if (s->ov) trn_nccl_overlap_arm(ms->m[s->ov - 1], 0);
  if (s->ovl) {
    /* a step that failed with reductions in flight: the run ends (every rank stops), so
       no wait for ranks that may never start theirs; the arrays MPI may still write stay
       allocated, and the run's accumulators are not touched */
    ovl_hooks(s, 0);
    free(s->b);
    memset(s, 0, sizeof *s);
    return;
  }
  free(s->b);
  for (int m = 0; m < TRN_MAX_MODELS; m++) {
    free(s->shard[m]);
    if (s->owned) free(s->acc[m]);
    else if (s->dirty && s->acc[m]) /* a step that failed midway: zero for the next */
      memset(s->acc[m], 0, acc_len(c, ms, m) * sizeof(double));
  }
  memset(s, 0, sizeof *s);
}

/* after a micro-batch's backward: g_j into the accumulator, the gradient back to zero */
static void gradsum_add(gradsum *s, const trn_ctx *c) {
  if (!s->on) return;
  if (s->hooked) {
    /* the last micro-batch: its buckets went into the accumulators as they were final */
    ovl_hooks(s, 0);
    ovl_start_rest(s);
    return;
  }
  s->dirty = 1;
  for (int m = 0; m < c->prog->n_models; m++) {
    if (!s->acc[m]) continue;
    double *a = s->acc[m];
    float *g = s->g[m];
    long n = (long)c->n_train[m];
    /* elementwise: the result does not depend on the threads */
#pragma omp parallel for schedule(static)
    for (long i = 0; i < n; i++) {
      a[i] += (double)g[i];
      g[i] = 0;
    }
  }
}

/* ZeRO: the sum over ranks of this rank's shard only. The double accumulators (R·cnt,
 * the tail past n zero) are reduce-scattered in double in place, so shard r of the sum
 * lands at acc[r·cnt ..], and rounded to float once into the gradient's [lo, hi): the
 * numbers the all-reduce path gives there. The gradient outside the shard is left as the
 * last backward left it (zero); nothing reads it before the next step clears it. */
static int gradsum_finish_shard(gradsum *s, models *ms, int m, char *err) {
  poc_model *pm = ms->m[m];
  poc_device *d = poc_model_device(pm);
  if (!s->on) return poc_model_grad_reduce_scatter(pm, trn_comm_dev_reduce_scatter, err);
  size_t lo, hi, cnt, R = (size_t)trn_comm_size(), rank = (size_t)trn_comm_rank();
  poc_model_shard_range(pm, &lo, &hi, &cnt);
  double *a = s->acc[m], *sh = a + rank * cnt;
  if (trn_comm_dev_reduce_scatter(d, (poc_dptr)(uintptr_t)a, (poc_dptr)(uintptr_t)sh,
                                  POC_DT_F64, cnt, err))
    return -1;
  float *g = s->g[m];
  long nl = (long)(hi - lo), total = (long)(R * cnt);
#pragma omp parallel for schedule(static)
  for (long i = 0; i < nl; i++) g[lo + (size_t)i] = (float)sh[i];
  /* the accumulator left zero for the next step */
#pragma omp parallel for schedule(static)
  for (long i = 0; i < total; i++) a[i] = 0;
  return 0;
}

/* the sum over ranks into every rank's gradient (under ZeRO: into its shard) */
static int gradsum_finish(gradsum *s, const trn_ctx *c, models *ms, char *err) {
  const poc_program *p = c->prog;
  if (s->ovl) {
    ovl_start_rest(s);
    if (s->failed) {
      trn_errf(err, "%s", s->err);
      return -1;
    }
    if (trn_comm_wait(err)) return -1;
    for (int m = 0; m < p->n_models; m++) {
      if (!s->acc[m]) continue;
      float *g = s->g[m];
      double *a = s->acc[m];
      size_t lo = 0, hi = c->n_train[m], cnt, len = acc_len(c, ms, m);
      if (c->zero) poc_model_shard_range(ms->m[m], &lo, &hi, &cnt);
      const double *src = c->zero ? s->shard[m] : a + lo;
      long nl = (long)(hi - lo), total = (long)len;
      /* rounded once into the gradient (under ZeRO its shard); the accumulator zero */
#pragma omp parallel for schedule(static)
      for (long i = 0; i < nl; i++) g[lo + (size_t)i] = (float)src[i];
#pragma omp parallel for schedule(static)
      for (long i = 0; i < total; i++) a[i] = 0;
    }
    s->ovl = 0;
    s->dirty = 0;
    return 0;
  }
  for (int m = 0; m < p->n_models; m++) {
    if (!p->models[m].trainable) continue;
    size_t n = c->n_train[m];
    if (c->zero) {
      if (gradsum_finish_shard(s, ms, m, err)) return -1;
      continue;
    }
    if (s->on) {
      if (trn_comm_sum_f64(s->acc[m], n, err)) return -1;
      float *g = s->g[m];
      double *a = s->acc[m];
      long nl = (long)n;
      /* rounded once into the gradient; the accumulator left zero for the next step */
#pragma omp parallel for schedule(static)
      for (long i = 0; i < nl; i++) {
        g[i] = (float)a[i];
        a[i] = 0;
      }
      continue;
    }
    if (trn_comm_size() == 1) continue;
    poc_device *d = poc_model_device(ms->m[m]);
    if (s->ov == m + 1) { /* the layers' sums are under way: the rest, and wait */
      if (trn_nccl_overlap_finish(ms->m[m], err)) return -1;
      continue;
    }
    if (trn_nccl_active(d)) { /* summed where it lives (NCCL, --comm) */
      if (trn_nccl_sum(d, poc_model_part_addr(ms->m[m], POC_PART_GRAD), d->acc, n, err))
        return -1;
      continue;
    }
    float *h = malloc(n * sizeof *h + 1);
    int bad = !h || poc_model_get(ms->m[m], POC_PART_GRAD, h, POC_DT_F32, err) ||
              trn_comm_sum_f32(h, n, err) ||
              poc_model_set(ms->m[m], POC_PART_GRAD, h, POC_DT_F32, err);
    if (!h) trn_errf(err, "out of memory for the gradient of model '%s'", p->models[m].name);
    free(h);
    if (bad) return -1;
  }
  s->dirty = 0;
  return 0;
}

/* Data parallelism: the step's micro-batches are those of one process (examples
 * [j·b, (j+1)·b) for micro-batch j, by position in the batch alone), dealt round-robin:
 * rank r of R computes micro-batches r, r + R, ... So every pack is the one a single
 * process would build, and its log-probs are the same numbers.
 *   separable   each micro-batch's objective with B_norm = the whole step's B, so every
 *               rank's gradient is its share of ∇L; the sum over ranks (the caller's
 *               all-reduce of the gradients) is ∇L. Loss, reports and tokens: sums too.
 *   otherwise   the objective's inputs of every rank's examples are gathered on every
 *               rank (trn_objbuf_gather) and the objective runs once over the whole step,
 *               the same on every rank, so batch reductions see the global batch in the
 *               forward and their seeds carry it into each rank's backward.
 * Anchors, pick masks and LoRA dropout are drawn from (seed, step, global example index
 * or micro-batch start): they do not depend on R. R = 1 is the single-process step. */
int trn_step_grad(const trn_ctx *c, models *ms, const int64_t *ex_all, int B, int64_t step,
                  trn_stepout *out, char *err) {
  const poc_program *p = c->prog;
  memset(out, 0, sizeof *out);
  int R = trn_comm_size(), rank = trn_comm_rank();
  int mbs = c->micro_batch > 0 ? c->micro_batch : B;
  /* this rank's examples, micro-batch after micro-batch, and their places in the step */
  int64_t *ex = malloc(((size_t)B + 1) * sizeof *ex);
  int *pos = malloc(((size_t)B + 1) * sizeof *pos);
  int Bl = 0;
  for (int g0 = rank * mbs; ex && pos && g0 < B; g0 += R * mbs)
    for (int b = g0; b < B && b < g0 + mbs; b++) {
      ex[Bl] = ex_all[b];
      pos[Bl++] = b;
    }
  trn_anchors anc;
  memset(&anc, 0, sizeof anc);
  trn_objbuf o, g;
  memset(&o, 0, sizeof o);
  memset(&g, 0, sizeof g);
  int have_g = 0;
  trn_mb mb = {0};
  outbuf ob[TRN_MAX_MODELS];
  memset(ob, 0, sizeof ob);
  gradsum gs;
  memset(&gs, 0, sizeof gs);
  int rc = -1;
  if (!ex || !pos) {
    trn_errf(err, "out of memory");
    goto done;
  }
  trn_prof *pf = c->prof;
  if (gradsum_init(&gs, c, ms, (B + mbs - 1) / mbs, err)) goto done;
  trn_prof_mark(pf, TRN_PROF_OTHER);
  if (anchors_draw(c, ms, ex, Bl, step, &anc, err)) goto done;
  trn_prof_mark(pf, TRN_PROF_FORWARD); /* sampling is forwards of the policy */
  int cap = p->separable ? (mbs < Bl ? mbs : Bl) : Bl;
  if (trn_objbuf_init(&o, p, cap > 0 ? cap : 1)) {
    trn_errf(err, "out of memory for the objective's buffers");
    goto done;
  }
  uint64_t ps = trn_pick_seed(c->seed, step);
  const double *lp[TRN_MAX_MODELS], *en[TRN_MAX_MODELS], *ls[TRN_MAX_MODELS];

  /* local micro-batch [b0, b0 + n) is the step's [pos[b0], pos[b0] + n) */
  if (p->separable) {
    for (int b0 = 0; b0 < Bl; b0 += mbs) {
      int n = Bl - b0 < mbs ? Bl - b0 : mbs;
      if (trn_mb_build(&mb, c, ex + b0, n, &anc, b0, TRN_LIVE, err)) goto done;
      lora_dropout(c, ms, 1, step, pos[b0]);
      trn_prof_mark(pf, TRN_PROF_OTHER);
      if (forwards(c, ms, &mb, 1, 0, ob, out, err)) goto done;
      trn_prof_mark(pf, TRN_PROF_FORWARD);
      for (int m = 0; m < p->n_models; m++) {
        lp[m] = ob[m].lp;
        en[m] = mb.pk[m].entropy ? ob[m].en : NULL;
        ls[m] = mb.pk[m].logsumsq ? ob[m].ls : NULL;
      }
      trn_objbuf_reset(&o);
      if (trn_objbuf_append(&o, c, &mb, ex + b0, lp, en, ls)) {
        trn_errf(err, "out of memory for the objective's inputs");
        goto done;
      }
      if (trn_objbuf_eval(&o, c, B, ps, err)) goto done;
      sum_outputs(&o, p->n_reports, out);
      trn_prof_mark(pf, TRN_PROF_OBJECTIVE);
      if (b0 + mbs >= Bl) ovl_hooks(&gs, 1);
      gradsum_arm(&gs, ms, b0 + mbs >= Bl);
      if (backwards(c, ms, &mb, &o, 0, ob, err)) goto done;
      gradsum_add(&gs, c);
      trn_prof_mark(pf, TRN_PROF_BACKWARD);
    }
    ovl_start_rest(&gs); /* before the sums below, in the same order on every rank */
    if (gradsum_layers(&gs, ms, err)) goto done;
    if (R > 1) {
      double v[66];
      int nr = p->n_reports < 64 ? p->n_reports : 64;
      v[0] = out->loss_sum;
      v[1] = (double)out->tokens;
      memcpy(v + 2, out->report_sum, (size_t)nr * sizeof(double));
      if (trn_comm_sum_f64(v, 2 + (size_t)nr, err)) goto done;
      out->loss_sum = v[0];
      out->tokens = (int64_t)v[1];
      memcpy(out->report_sum, v + 2, (size_t)nr * sizeof(double));
      trn_prof_mark(pf, TRN_PROF_OBJECTIVE);
    }
  } else {
    trn_objbuf_reset(&o);
    for (int b0 = 0; b0 < Bl; b0 += mbs) {
      int n = Bl - b0 < mbs ? Bl - b0 : mbs;
      if (trn_mb_build(&mb, c, ex + b0, n, &anc, b0, TRN_LIVE, err)) goto done;
      lora_dropout(c, ms, 1, step, pos[b0]);
      trn_prof_mark(pf, TRN_PROF_OTHER);
      if (forwards(c, ms, &mb, 0, 0, ob, out, err)) goto done;
      trn_prof_mark(pf, TRN_PROF_FORWARD);
      for (int m = 0; m < p->n_models; m++) {
        lp[m] = ob[m].lp;
        en[m] = mb.pk[m].entropy ? ob[m].en : NULL;
        ls[m] = mb.pk[m].logsumsq ? ob[m].ls : NULL;
      }
      if (trn_objbuf_append(&o, c, &mb, ex + b0, lp, en, ls)) {
        trn_errf(err, "out of memory for the objective's inputs");
        goto done;
      }
    }
    trn_objbuf *all = &o;
    if (R > 1) {
      have_g = 1;
      if (trn_objbuf_init(&g, p, B)) {
        trn_errf(err, "out of memory for the objective's buffers");
        goto done;
      }
      if (trn_objbuf_gather(&g, c, &o, ex_all, B, pos, err)) goto done;
      all = &g;
      double t = (double)out->tokens;
      if (trn_comm_sum_f64(&t, 1, err)) goto done;
      out->tokens = (int64_t)t;
    }
    if (trn_objbuf_eval(all, c, B, ps, err)) goto done;
    sum_outputs(all, p->n_reports, out);
    trn_prof_mark(pf, TRN_PROF_OBJECTIVE);
    for (int b0 = 0; b0 < Bl; b0 += mbs) {
      int n = Bl - b0 < mbs ? Bl - b0 : mbs;
      if (trn_mb_build(&mb, c, ex + b0, n, &anc, b0, TRN_LIVE, err)) goto done;
      lora_dropout(c, ms, 1, step, pos[b0]);
      trn_prof_mark(pf, TRN_PROF_OTHER);
      if (forwards(c, ms, &mb, 1, 1, ob, NULL, err)) goto done;
      trn_prof_mark(pf, TRN_PROF_FORWARD); /* the recomputing forward is forward time too */
      if (b0 + mbs >= Bl) ovl_hooks(&gs, 1);
      gradsum_arm(&gs, ms, b0 + mbs >= Bl);
      if (backwards(c, ms, &mb, all, R > 1 ? pos[b0] : b0, ob, err)) goto done;
      gradsum_add(&gs, c);
      trn_prof_mark(pf, TRN_PROF_BACKWARD);
    }
    if (gradsum_layers(&gs, ms, err)) goto done;
  }
  if (gradsum_finish(&gs, c, ms, err)) goto done;
  trn_prof_mark(pf, TRN_PROF_BACKWARD); /* the gradients' reduction (its waits: comm) */
  rc = 0;
done:
  lora_dropout(c, ms, 0, 0, 0);
  for (int m = 0; m < TRN_MAX_MODELS; m++) ob_free(&ob[m]);
  trn_mb_free(&mb);
  trn_objbuf_free(&o);
  if (have_g) trn_objbuf_free(&g);
  anchors_free(&anc);
  free(ex);
  free(pos);
  gradsum_free(&gs, c, ms);
  return rc;
}

int trn_hoist(const trn_ctx *c, models *ms, trn_cache *k, char *err) {
  const poc_program *p = c->prog;
  const trn_data *d = c->data;
  /* offsets first: the values then go into arrays of their final size */
  for (int i = 0; i < p->n_calls; i++) {
    const poc_call *cl = &p->calls[i];
    if (!cl->hoisted) continue;
    k->off[i][0] = 0;
    for (int64_t e = 0; e < d->n; e++)
    {
      int nt = trn_segs_resolve(c, cl->target, cl->n_target, e, NULL, 0, NULL);
      k->off[i][e + 1] = k->off[i][e] + (cl->reward ? nt > 0 : nt); /* a score, or per token */
    }
    size_t n = (size_t)k->off[i][d->n] + 1;
    /* zeros: with several ranks each fills its share and the sum over ranks the rest */
    if (cl->want_logp && !(k->logp[i] = calloc(n, sizeof(double)))) goto oom;
    if (cl->want_entropy && !(k->ent[i] = calloc(n, sizeof(double)))) goto oom;
    if (cl->want_logsumsq && !(k->lss[i] = calloc(n, sizeof(double)))) goto oom;
  }
  int mbs = c->micro_batch > 0 ? c->micro_batch : 1;
  int64_t *ex = malloc((size_t)mbs * sizeof *ex);
  trn_mb mb = {0};
  outbuf ob[TRN_MAX_MODELS];
  memset(ob, 0, sizeof ob);
  int rc = ex ? 0 : -1;
  if (!ex) trn_errf(err, "out of memory");
  /* rank r of R computes micro-batches r, r + R, ...; the sum over ranks fills the rest */
  int R = trn_comm_size();
  for (int64_t e0 = (int64_t)trn_comm_rank() * mbs; e0 < d->n && !rc; e0 += (int64_t)mbs * R) {
    int n = d->n - e0 < mbs ? (int)(d->n - e0) : mbs;
    for (int b = 0; b < n; b++) ex[b] = e0 + b;
    if ((rc = trn_mb_build(&mb, c, ex, n, NULL, 0, TRN_HOISTED, err))) break;
    if ((rc = forwards(c, ms, &mb, 0, 0, ob, NULL, err))) break;
    for (int i = 0; i < p->n_calls; i++) {
      const poc_call *cl = &p->calls[i];
      if (!cl->hoisted) continue;
      const outbuf *o = &ob[cl->model];
      for (int b = 0; b < n; b++) {
        int src = mb.base[i] + mb.off[i][b], len = mb.off[i][b + 1] - mb.off[i][b];
        int64_t dst = k->off[i][ex[b]];
        for (int t = 0; t < len; t++) {
          if (k->logp[i]) k->logp[i][dst + t] = o->lp[src + t];
          if (k->ent[i]) k->ent[i][dst + t] = o->en[src + t];
          if (k->lss[i]) k->lss[i][dst + t] = o->ls[src + t];
        }
      }
    }
  }
  for (int m = 0; m < TRN_MAX_MODELS; m++) ob_free(&ob[m]);
  trn_mb_free(&mb);
  free(ex);
  /* every rank takes part in the sums even after a failure of its own, so none waits
   * for it; the failure then ends the run on every rank */
  char scratch[POC_ERR_LEN];
  for (int i = 0; i < p->n_calls && R > 1; i++) {
    double *arr[3] = {k->logp[i], k->ent[i], k->lss[i]};
    for (int j = 0; j < 3; j++)
      if (p->calls[i].hoisted && arr[j] &&
          trn_comm_sum_f64(arr[j], (size_t)k->off[i][d->n], rc ? scratch : err))
        rc = -1;
  }
  return rc;
oom:
  trn_errf(err, "out of memory for the reference cache");
  return -1;
}
