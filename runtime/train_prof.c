/* train_prof.c — `BIN --profile`: where a step's time goes, and the device memory a run
 * holds at its peak.
 *
 * A step is cut at its stage boundaries (train.c's run_step, train_step.c's
 * trn_step_grad). Each mark closes the interval since the previous one and books it to a
 * stage: the wall-clock time minus the seconds spent inside collectives meanwhile
 * (trn_comm_stats), which go to the communication stage instead, so the stages add up to
 * the step's time whatever overlaps what. A device that queues work (CUDA) is synchronised
 * at each boundary, or the time of queued kernels would land on whichever stage waits for
 * them first; this is why the boundaries are kept only when profiling is asked for, and a
 * normal run keeps its asynchrony.
 *
 * The loss head runs inside the model's forward and backward (runtime/model.c), which
 * says where it is through the device's stage marker ("the loss head", "the loss head
 * backward"). The kernels the head uses, and the first ones after it (the final norm's,
 * the GEMMs, the head's own), are wrapped: a call that finds the marker on the other side
 * of the head than the previous one is a boundary, and the time up to it goes to the head
 * or is kept for the stage the next mark names.
 *
 * Device memory: the device's alloc and free are wrapped to count the bytes held through
 * them and their peak: weights, gradients, moments, activations and workspaces, but not
 * what a library keeps outside the allocator (the CUDA context, cuBLAS's workspace). On the
 * CPU devices this is the part of the process's resident set the model owns. */
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "comm.h"
#include "device.h"
#include "train_internal.h"

const char *const trn_prof_names[TRN_PROF_N] = {
    [TRN_PROF_FORWARD] = "time/forward",     [TRN_PROF_HEAD] = "time/head",
    [TRN_PROF_OBJECTIVE] = "time/objective", [TRN_PROF_BACKWARD] = "time/backward",
    [TRN_PROF_OPTIMIZER] = "time/optimizer", [TRN_PROF_COMM] = "time/comm",
    [TRN_PROF_OTHER] = "time/other",
};

static double prof_now(void) {
  struct timespec t;
  clock_gettime(CLOCK_MONOTONIC, &t);
  return (double)t.tv_sec + 1e-9 * (double)t.tv_nsec;
}

void trn_prof_begin(trn_prof *p) {
  if (!p) return;
  uint64_t bytes;
  memset(p->s, 0, sizeof p->s);
  p->pend = 0;
  p->in_head = 0;
  p->active = 1;
  trn_comm_stats(&p->comm, &bytes);
  p->t = prof_now();
}

/* Closes the interval since the last boundary: its collectives' seconds to comm, the rest
 * to the head or to the pending time of the stage the next mark names. */
static void prof_cut(trn_prof *p) {
  /* a failure here is the device's sticky error, which the next checked call reports */
  if (p->dev && p->dev->sync) {
    char scratch[POC_ERR_LEN];
    poc_dev_sync(p->dev, scratch);
  }
  double t = prof_now(), comm;
  uint64_t bytes;
  trn_comm_stats(&comm, &bytes);
  double dc = comm - p->comm;
  if (p->in_head) p->s[TRN_PROF_HEAD] += (t - p->t) - dc;
  else p->pend += (t - p->t) - dc;
  p->s[TRN_PROF_COMM] += dc;
  p->t = t;
  p->comm = comm;
}

void trn_prof_mark(trn_prof *p, int stage) {
  if (!p) return;
  prof_cut(p);
  p->s[stage] += p->pend;
  p->pend = 0;
  p->in_head = 0; /* marks sit between model calls */
}

void trn_prof_end(trn_prof *p) {
  if (p) p->active = 0;
}

/* ---- the loss head's boundaries ------------------------------------------------------ */

static trn_prof *ph;             /* the profile the wrapped kernels report to */
static poc_kernels ph_k;         /* the device's own kernels */

static int ph_is_head(const char *stage) {
  return stage && (strstr(stage, "loss head") || strstr(stage, "score head"));
}

/* Before a wrapped kernel: a boundary when the model crossed into or out of its head. */
static void ph_check(poc_kset *k) {
  if (!ph || !ph->active) return;
  int h = ph_is_head(k->d->stage);
  if (h == ph->in_head) return;
  prof_cut(ph);
  ph->in_head = h;
}

static void ph_gemm(poc_kset *k, int ta, int tb, int M, int N, int K, poc_dptr A, int lda,
                    poc_dptr B, int ldb, float beta, poc_dptr C, int c_acc, int ldc) {
  ph_check(k);
  ph_k.gemm(k, ta, tb, M, N, K, A, lda, B, ldb, beta, C, c_acc, ldc);
}
static void ph_rmsnorm_fwd(poc_kset *k, int n, poc_dptr x, poc_dptr rows, poc_dptr w, poc_dptr y,
                           poc_dptr rstd) {
  ph_check(k);
  ph_k.rmsnorm_fwd(k, n, x, rows, w, y, rstd);
}
static void ph_rmsnorm_bwd(poc_kset *k, int n, poc_dptr x, poc_dptr rows, poc_dptr w,
                           poc_dptr rstd, poc_dptr dy, poc_dptr dx) {
  ph_check(k);
  ph_k.rmsnorm_bwd(k, n, x, rows, w, rstd, dy, dx);
}
static void ph_embed_bwd(poc_kset *k, int T, poc_dptr tok, poc_dptr dx, poc_dptr dE) {
  ph_check(k);
  ph_k.embed_bwd(k, T, tok, dx, dE);
}
static void ph_head_chunk_fwd(poc_kset *k, int n, int c, int v0, poc_dptr logits, poc_dptr tgt,
                              poc_dptr m, poc_dptr s, poc_dptr a, poc_dptr q, poc_dptr tl) {
  ph_check(k);
  ph_k.head_chunk_fwd(k, n, c, v0, logits, tgt, m, s, a, q, tl);
}
static void ph_head_finish(poc_kset *k, int n, poc_dptr m, poc_dptr s, poc_dptr a, poc_dptr q,
                           poc_dptr tl, poc_dptr logp, poc_dptr ent, poc_dptr lss, poc_dptr lse,
                           poc_dptr mu) {
  ph_check(k);
  ph_k.head_finish(k, n, m, s, a, q, tl, logp, ent, lss, lse, mu);
}
static void ph_head_chunk_bwd(poc_kset *k, int n, int c, int v0, poc_dptr logits, poc_dptr tgt,
                              poc_dptr lse, poc_dptr mu, poc_dptr dlogp, poc_dptr dent,
                              poc_dptr dlog) {
  ph_check(k);
  ph_k.head_chunk_bwd(k, n, c, v0, logits, tgt, lse, mu, dlogp, dent, dlog);
}
static void ph_head_text_fwd(poc_kset *k, int n, poc_dptr logits, poc_dptr tgt, poc_dptr logp,
                             poc_dptr ent, poc_dptr lss, poc_dptr lse, poc_dptr mu) {
  ph_check(k);
  ph_k.head_text_fwd(k, n, logits, tgt, logp, ent, lss, lse, mu);
}
static void ph_head_text_bwd(poc_kset *k, int n, poc_dptr ls, poc_dptr tgt, poc_dptr mu,
                             poc_dptr dlogp, poc_dptr dent, poc_dptr dlog) {
  ph_check(k);
  ph_k.head_text_bwd(k, n, ls, tgt, mu, dlogp, dent, dlog);
}

/* ---- device memory ----------------------------------------------------------------- */

/* Open addressing over the live buffers (address → bytes); the table doubles when half
 * full. One device per process, so the counters are process-wide. */
static struct {
  poc_dptr *key;
  size_t *bytes, cap, n, held, peak;
  poc_dptr (*alloc)(poc_device *, size_t, const char *);
  void (*free)(poc_device *, poc_dptr);
} pm;

static size_t pm_slot(poc_dptr p) {
  uint64_t h = (uint64_t)p * 0x9E3779B97F4A7C15ull;
  return (size_t)(h >> 17) & (pm.cap - 1);
}

static int pm_grow(void) {
  size_t cap = pm.cap ? 2 * pm.cap : 1024;
  poc_dptr *key = calloc(cap, sizeof *key);
  size_t *bytes = calloc(cap, sizeof *bytes);
  if (!key || !bytes) {
    free(key);
    free(bytes);
    return -1;
  }
  poc_dptr *ok = pm.key;
  size_t *ob = pm.bytes, ocap = pm.cap;
  pm.key = key;
  pm.bytes = bytes;
  pm.cap = cap;
  for (size_t i = 0; i < ocap; i++)
    if (ok[i]) {
      size_t j = pm_slot(ok[i]);
      while (pm.key[j]) j = (j + 1) & (pm.cap - 1);
      pm.key[j] = ok[i];
      pm.bytes[j] = ob[i];
    }
  free(ok);
  free(ob);
  return 0;
}

static poc_dptr pm_alloc(poc_device *d, size_t bytes, const char *what) {
  poc_dptr p = pm.alloc(d, bytes, what);
  if (!p || ((pm.n + 1) * 2 > pm.cap && pm_grow())) return p; /* untracked when no room */
  size_t j = pm_slot(p);
  while (pm.key[j]) j = (j + 1) & (pm.cap - 1);
  pm.key[j] = p;
  pm.bytes[j] = bytes;
  pm.n++;
  pm.held += bytes;
  if (pm.held > pm.peak) pm.peak = pm.held;
  return p;
}

static void pm_free(poc_device *d, poc_dptr p) {
  if (p && pm.cap) {
    size_t j = pm_slot(p);
    while (pm.key[j] && pm.key[j] != p) j = (j + 1) & (pm.cap - 1);
    if (pm.key[j]) {
      pm.held -= pm.bytes[j];
      pm.n--;
      /* backward-shift deletion keeps every probe chain unbroken */
      size_t i = j;
      for (;;) {
        i = (i + 1) & (pm.cap - 1);
        if (!pm.key[i]) break;
        size_t h = pm_slot(pm.key[i]);
        if ((i > j && (h <= j || h > i)) || (i < j && h <= j && h > i)) {
          pm.key[j] = pm.key[i];
          pm.bytes[j] = pm.bytes[i];
          j = i;
        }
      }
      pm.key[j] = 0;
      pm.bytes[j] = 0;
    }
  }
  pm.free(d, p);
}

void trn_prof_watch(poc_device *d, trn_prof *p) {
  if (pm.alloc) return;
  pm.alloc = d->alloc;
  pm.free = d->free;
  d->alloc = pm_alloc;
  d->free = pm_free;
  /* the head begins with the final norm (forward) or a head kernel or GEMM (backward); the
   * layers after it begin with a norm or a GEMM; the backward ends with the embedding's */
  ph = p;
  ph_k = d->k;
  d->k.gemm = ph_gemm;
  d->k.rmsnorm_fwd = ph_rmsnorm_fwd;
  d->k.rmsnorm_bwd = ph_rmsnorm_bwd;
  d->k.embed_bwd = ph_embed_bwd;
  d->k.head_chunk_fwd = ph_head_chunk_fwd;
  d->k.head_finish = ph_head_finish;
  d->k.head_chunk_bwd = ph_head_chunk_bwd;
  d->k.head_text_fwd = ph_head_text_fwd;
  d->k.head_text_bwd = ph_head_text_bwd;
}

size_t trn_prof_device_peak(void) { return pm.peak; }
