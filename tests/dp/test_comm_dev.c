/* test_comm_dev.c — the collectives on device buffers (runtime/comm_dev.c), run by every
 * rank of an mpirun (or alone): for each device named on the command line ("cpu", "cpu64":
 * MPI on the buffers themselves; "cuda" under tests/cuda_emul: staged through host
 * memory) and each of its element types, a sum, a reduce-scatter (into another buffer and
 * in place) and an all-gather (from another buffer and in place) of small integers, whose
 * sums every type holds exactly, against the values each rank can compute for all of
 * them. The counters of trn_comm_stats must grow by the bytes handed over. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "check.h"
#include "comm.h"
#include "device.h"

/* rank q's element i: a small integer (sums over 3 ranks stay below 256, exact in bf16) */
static double val(int q, size_t i) { return (double)(q + 1) + (double)(i % 61); }

static double sum_val(int R, size_t i) {
  double s = 0;
  for (int q = 0; q < R; q++) s += val(q, i);
  return s;
}

/* n elements of type t on the device from host doubles, and back */
static poc_dptr up(poc_device *d, const double *h, poc_dtype t, size_t n) {
  poc_dptr p = d->alloc(d, n * poc_dtype_size(t) + 8, "test buffer");
  if (p) d->put(d, p, t, h, POC_DT_F64, n);
  return p;
}

static void down(poc_device *d, double *h, poc_dptr p, poc_dtype t, size_t n) {
  d->get(d, h, POC_DT_F64, p, t, n);
}

static int same(const double *got, const double *want, size_t n, const char *what,
                const char *dev, const char *type) {
  for (size_t i = 0; i < n; i++)
    if (got[i] != want[i]) {
      fprintf(stderr, "rank %d: %s %s %s: element %zu is %g, want %g\n", trn_comm_rank(), dev,
              type, what, i, got[i], want[i]);
      return 0;
    }
  return 1;
}

static void run_type(poc_device *d, poc_dtype t, const char *dev) {
  const char *type = t == POC_DT_F32 ? "f32" : t == POC_DT_F64 ? "f64" : "bf16";
  int R = trn_comm_size(), r = trn_comm_rank();
  size_t count = 1003, n = count * (size_t)R; /* odd: no alignment hides a bug */
  char err[POC_ERR_LEN];
  double *h = malloc(n * sizeof *h), *want = malloc(n * sizeof *want);
  double *got = malloc(n * sizeof *got);
  for (size_t i = 0; i < n; i++) h[i] = val(r, i);

  /* sum in place */
  double s0;
  uint64_t b0, b1;
  trn_comm_stats(&s0, &b0);
  poc_dptr x = up(d, h, t, n);
  for (size_t i = 0; i < n; i++) want[i] = sum_val(R, i);
  if (t != POC_DT_BF16 || !d->host_memory) {
    CHECK_MSG(trn_comm_dev_sum(d, x, t, n, err) == 0, "%s", err);
    down(d, got, x, t, n);
    CHECK(same(got, want, n, "sum", dev, type));
  }

  /* reduce-scatter into another buffer, then in place (recv = send + rank·count) */
  if (t != POC_DT_BF16 || !d->host_memory) {
    poc_dptr s = up(d, h, t, n), y = up(d, h, t, count);
    CHECK_MSG(trn_comm_dev_reduce_scatter(d, s, y, t, count, err) == 0, "%s", err);
    down(d, got, y, t, count);
    CHECK(same(got, want + (size_t)r * count, count, "reduce-scatter", dev, type));
    d->put(d, s, t, h, POC_DT_F64, n);
    poc_dptr mine = s + (poc_dptr)((size_t)r * count * poc_dtype_size(t));
    CHECK_MSG(trn_comm_dev_reduce_scatter(d, s, mine, t, count, err) == 0, "%s", err);
    down(d, got, mine, t, count);
    CHECK(same(got, want + (size_t)r * count, count, "reduce-scatter in place", dev, type));
    d->free(d, s);
    d->free(d, y);
  }

  /* all-gather from another buffer, then in place (send = recv + rank·count) */
  for (int q = 0; q < R; q++)
    for (size_t i = 0; i < count; i++) want[(size_t)q * count + i] = val(q, i);
  poc_dptr mine = up(d, h, t, count), all = up(d, h, t, n);
  d->zero(d, all, n * poc_dtype_size(t));
  CHECK_MSG(trn_comm_dev_all_gather(d, mine, all, t, count, err) == 0, "%s", err);
  down(d, got, all, t, n);
  CHECK(same(got, want, n, "all-gather", dev, type));
  d->zero(d, all, n * poc_dtype_size(t));
  poc_dptr at = all + (poc_dptr)((size_t)r * count * poc_dtype_size(t));
  d->put(d, at, t, h, POC_DT_F64, count);
  CHECK_MSG(trn_comm_dev_all_gather(d, at, all, t, count, err) == 0, "%s", err);
  down(d, got, all, t, n);
  CHECK(same(got, want, n, "all-gather in place", dev, type));
  CHECK_MSG(poc_dev_sync(d, err) == 0, "%s", err);

  trn_comm_stats(&s0, &b1);
  CHECK(R == 1 || b1 > b0);
  d->free(d, x);
  d->free(d, mine);
  d->free(d, all);
  free(h);
  free(want);
  free(got);
}

int main(int argc, char **argv) {
  char err[POC_ERR_LEN];
  if (trn_comm_init(err)) {
    fprintf(stderr, "test_comm_dev: %s\n", err);
    return 1;
  }
  for (int a = 1; a < argc; a++) {
    poc_device *d = poc_device_open(argv[a], err);
    CHECK_MSG(d != NULL, "%s: %s", argv[a], err);
    if (!d) continue;
    run_type(d, d->acc, argv[a]);
    if (d->act != d->acc) run_type(d, d->act, argv[a]);
    poc_device_close(d);
  }
  int rc = check_summary("comm_dev");
  /* every rank reports; the job fails when any rank failed */
  int64_t ok = rc == 0;
  if (trn_comm_min_i64(&ok, 1, err)) return 1;
  trn_comm_finalize();
  return ok ? 0 : 1;
}
