/* comm_dev.c — the collectives of comm.h on device buffers (prefix trn_comm_dev_).
 *
 * Where device addresses are host pointers (the CPU devices), MPI works on them directly.
 * Elsewhere (the CUDA device) a collective is staged through host memory: d->get into a
 * host array, the host collective (comm.c), d->put back. Sums of bf16 buffers are made
 * in float on the host and rounded back once. The staging copies count as collective
 * time in trn_comm_stats, so the split of a step into compute and communication shows
 * what the copies cost. Where the run has NCCL (comm_nccl.h, --comm), it serves the
 * non-host devices instead: the buffers never leave the GPU.
 */
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "comm.h"
#include "comm_nccl.h"
#include "train_internal.h"

static double dev_mono_s(void) {
  struct timespec t;
  clock_gettime(CLOCK_MONOTONIC, &t);
  return (double)t.tv_sec + 1e-9 * (double)t.tv_nsec;
}

/* The host type a device buffer of type t is staged in: bf16 sums need float. */
static poc_dtype stage_type(poc_dtype t) { return t == POC_DT_BF16 ? POC_DT_F32 : t; }

static void *host_of(poc_dptr p) { return (void *)(uintptr_t)p; }

static void *stage_alloc(size_t n, poc_dtype t, const char *what, char *err) {
  void *h = malloc(n * poc_dtype_size(t) + 1);
  if (!h) trn_errf(err, "%s: out of memory for a host staging buffer of %zu elements", what, n);
  return h;
}

/* d->get / d->put with the device's sticky error checked, and their time counted */
static int stage_get(poc_device *d, void *h, poc_dtype ht, poc_dptr x, poc_dtype t, size_t n,
                     char *err) {
  double t0 = dev_mono_s();
  d->get(d, h, ht, x, t, n);
  int rc = poc_dev_sync(d, err);
  trn_comm_count(dev_mono_s() - t0, 0);
  return rc;
}

static int stage_put(poc_device *d, poc_dptr x, poc_dtype t, const void *h, poc_dtype ht,
                     size_t n, char *err) {
  double t0 = dev_mono_s();
  d->put(d, x, t, h, ht, n);
  int rc = poc_dev_sync(d, err);
  trn_comm_count(dev_mono_s() - t0, 0);
  return rc;
}

int trn_comm_dev_sum(poc_device *d, poc_dptr x, poc_dtype t, size_t n, char *err) {
  if (trn_comm_size() == 1 || n == 0) return 0;
  /* NCCL, when loaded, serves non-host devices here */
  if (!d->host_memory && trn_nccl_active(d)) return trn_nccl_sum(d, x, t, n, err);
  poc_dtype ht = d->host_memory ? t : stage_type(t);
  void *h = d->host_memory ? host_of(x) : stage_alloc(n, ht, "a device sum", err);
  if (!h) return -1;
  int rc = !d->host_memory && stage_get(d, h, ht, x, t, n, err) ? -1 : 0;
  if (!rc) {
    switch (ht) {
    case POC_DT_F32: rc = trn_comm_sum_f32(h, n, err); break;
    case POC_DT_F64: rc = trn_comm_sum_f64(h, n, err); break;
    default:
      trn_errf(err, "a device sum of %s elements is not supported",
               ht == POC_DT_I32 ? "int32" : "bf16");
      rc = -1;
    }
  }
  if (!rc && !d->host_memory) rc = stage_put(d, x, t, h, ht, n, err);
  if (!d->host_memory) free(h);
  return rc;
}

int trn_comm_dev_reduce_scatter(poc_device *d, poc_dptr send, poc_dptr recv, poc_dtype t,
                                size_t count, char *err) {
  size_t R = (size_t)trn_comm_size();
  /* NCCL, when loaded, serves non-host devices here */
  if (!d->host_memory && trn_nccl_active(d))
    return trn_nccl_reduce_scatter(d, send, recv, t, count, err);
  if (d->host_memory) {
    if (t == POC_DT_BF16) {
      trn_errf(err, "a reduce-scatter of bf16 host buffers is not supported");
      return -1;
    }
    return trn_comm_reduce_scatter(host_of(send), host_of(recv), t, count, err);
  }
  poc_dtype ht = stage_type(t);
  size_t hl = poc_dtype_size(ht);
  char *h = stage_alloc(R * count + count, ht, "a device reduce-scatter", err);
  if (!h) return -1;
  /* the host copy is whole before the sum, so recv may lie inside send */
  int rc = stage_get(d, h, ht, send, t, R * count, err) ||
           trn_comm_reduce_scatter(h, h + R * count * hl, ht, count, err) ||
           stage_put(d, recv, t, h + R * count * hl, ht, count, err);
  free(h);
  return rc ? -1 : 0;
}

int trn_comm_dev_all_gather(poc_device *d, poc_dptr send, poc_dptr recv, poc_dtype t,
                            size_t count, char *err) {
  size_t R = (size_t)trn_comm_size(), rank = (size_t)trn_comm_rank();
  /* NCCL, when loaded, serves non-host devices here */
  if (!d->host_memory && trn_nccl_active(d))
    return trn_nccl_all_gather(d, send, recv, t, count, err);
  if (d->host_memory) return trn_comm_all_gather(host_of(send), host_of(recv), t, count, err);
  poc_dtype ht = stage_type(t);
  size_t hl = poc_dtype_size(ht);
  char *h = stage_alloc(R * count, ht, "a device all-gather", err);
  if (!h) return -1;
  /* this rank's shard goes straight to its place: the gather is then in place */
  int rc = stage_get(d, h + rank * count * hl, ht, send, t, count, err) ||
           trn_comm_all_gather(h + rank * count * hl, h, ht, count, err) ||
           stage_put(d, recv, t, h, ht, R * count, err);
  free(h);
  return rc ? -1 : 0;
}
