/* train_prof.c — `BIN --profile`: where a step's time goes, and the device memory a run
 * holds at its peak.
 *
 * A step is cut at its stage boundaries (train.c's run_step, train_step.c's
 * trn_step_grad). Each mark closes the interval since the previous one and books it to a
 * stage: the wall-clock time minus the seconds spent inside collectives meanwhile
 * (trn_comm_stats), which go to the communication stage instead, so the stages add up to
 * the step's time whatever overlaps what. A device that queues work (CUDA) is synchronised
 * at each mark, or the time of queued kernels would land on whichever stage waits for them
 * first; this is why the marks run only when profiling is asked for, and a normal run keeps
 * its asynchrony.
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
    [TRN_PROF_FORWARD] = "time/forward",     [TRN_PROF_OBJECTIVE] = "time/objective",
    [TRN_PROF_BACKWARD] = "time/backward",   [TRN_PROF_OPTIMIZER] = "time/optimizer",
    [TRN_PROF_COMM] = "time/comm",           [TRN_PROF_OTHER] = "time/other",
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
  trn_comm_stats(&p->comm, &bytes);
  p->t = prof_now();
}

void trn_prof_mark(trn_prof *p, int stage) {
  if (!p) return;
  /* a failure here is the device's sticky error, which the next checked call reports */
  if (p->dev && p->dev->sync) {
    char scratch[POC_ERR_LEN];
    poc_dev_sync(p->dev, scratch);
  }
  double t = prof_now(), comm;
  uint64_t bytes;
  trn_comm_stats(&comm, &bytes);
  double dc = comm - p->comm;
  p->s[stage] += (t - p->t) - dc;
  p->s[TRN_PROF_COMM] += dc;
  p->t = t;
  p->comm = comm;
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

void trn_prof_watch(poc_device *d) {
  if (pm.alloc) return;
  pm.alloc = d->alloc;
  pm.free = d->free;
  d->alloc = pm_alloc;
  d->free = pm_free;
}

size_t trn_prof_device_peak(void) { return pm.peak; }
