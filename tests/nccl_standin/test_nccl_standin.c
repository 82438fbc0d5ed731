/* comm_nccl.h on the CUDA emulation with the NCCL stand-in, under mpirun (3 ranks, so that
 * a bf16 sum rounded once differs from one rounded per addition): every collective against
 * the host's arithmetic, a group, sums on NCCL's own stream, the reasons NCCL is not used,
 * and the stand-in's strictness — a buffer that is not device memory, and ranks that
 * disagree on the count, each failing on every rank with a message naming the ranks. */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "check.h"
#include "comm.h"
#include "comm_nccl.h"
#include "device.h"

static int R, rank;

/* rank r's element i: distinct per rank, not all exactly representable sums */
static float val(int r, size_t i) { return (float)(r + 1) * 0.1f * (float)(i % 97) + (float)r / 3.0f; }

static float sum_f32(size_t i) {
  float s = val(0, i);
  for (int r = 1; r < R; r++) s += val(r, i);
  return s;
}

static poc_dptr put_f32(poc_device *d, const float *h, poc_dtype t, size_t n) {
  poc_dptr p = d->alloc(d, n * poc_dtype_size(t), "test buffer");
  if (p) d->put(d, p, t, h, POC_DT_F32, n);
  return p;
}

static void sums(poc_device *d) {
  char err[POC_ERR_LEN] = "";
  /* f32, longer than one of the stand-in's exchanges (2^20 elements) */
  size_t n = ((size_t)1 << 20) + 37;
  float *h = malloc(n * sizeof *h);
  for (size_t i = 0; i < n; i++) h[i] = val(rank, i);
  poc_dptr x = put_f32(d, h, POC_DT_F32, n);
  CHECK_MSG(trn_nccl_sum(d, x, POC_DT_F32, n, err) == 0, "%s", err);
  d->get(d, h, POC_DT_F32, x, POC_DT_F32, n);
  size_t bad = 0;
  for (size_t i = 0; i < n; i++) bad += h[i] != sum_f32(i);
  CHECK_MSG(bad == 0, "f32 sum: %zu of %zu elements differ from the rank-order sum", bad, n);
  d->free(d, x);

  /* f64 */
  double hd[100], want[100];
  for (int i = 0; i < 100; i++) {
    hd[i] = 1e-3 * (rank + 1) * i + 1.0 / (rank + 7);
    want[i] = 0;
    for (int r = 0; r < R; r++) want[i] += 1e-3 * (r + 1) * i + 1.0 / (r + 7);
  }
  x = d->alloc(d, sizeof hd, "f64");
  d->put(d, x, POC_DT_F64, hd, POC_DT_F64, 100);
  CHECK_MSG(trn_nccl_sum(d, x, POC_DT_F64, 100, err) == 0, "%s", err);
  d->get(d, hd, POC_DT_F64, x, POC_DT_F64, 100);
  int badd = 0;
  for (int i = 0; i < 100; i++) badd += hd[i] != want[i];
  CHECK_MSG(badd == 0, "f64 sum: %d elements differ", badd);
  d->free(d, x);

  /* bf16: summed in fp32 and rounded once. 1 + 2^-8 + 2^-8 (ranks 0, 1, 2): rounded per
   * addition it stays 1 (each 1 + 2^-8 is a tie to even), once it is 1 + 2^-7. */
  float hb[64];
  for (int i = 0; i < 64; i++) hb[i] = rank == 0 ? 1.0f + (float)i : 0.00390625f * (1.0f + (float)i);
  x = put_f32(d, hb, POC_DT_BF16, 64);
  CHECK_MSG(trn_nccl_sum(d, x, POC_DT_BF16, 64, err) == 0, "%s", err);
  d->get(d, hb, POC_DT_F32, x, POC_DT_BF16, 64);
  int badb = 0;
  for (int i = 0; i < 64; i++) {
    float s = poc_bf16_to_f32(poc_bf16_from_f32(1.0f + (float)i));
    for (int r = 1; r < R; r++) s += poc_bf16_to_f32(poc_bf16_from_f32(0.00390625f * (1.0f + (float)i)));
    badb += hb[i] != poc_bf16_to_f32(poc_bf16_from_f32(s));
  }
  CHECK_MSG(badb == 0, "bf16 sum: %d elements differ from the fp32 sum rounded once", badb);
  if (R == 3) CHECK(hb[0] == 1.0078125f);
  d->free(d, x);
  free(h);
}

static void scatter_gather(poc_device *d) {
  char err[POC_ERR_LEN] = "";
  size_t c = 1000;
  float *h = malloc((size_t)R * c * sizeof *h), *o = malloc((size_t)R * c * sizeof *o);
  for (size_t i = 0; i < (size_t)R * c; i++) h[i] = val(rank, i);
  poc_dptr s = put_f32(d, h, POC_DT_F32, (size_t)R * c), r = d->alloc(d, c * 4, "recv");
  CHECK_MSG(trn_nccl_reduce_scatter(d, s, r, POC_DT_F32, c, err) == 0, "%s", err);
  d->get(d, o, POC_DT_F32, r, POC_DT_F32, c);
  int bad = 0;
  for (size_t i = 0; i < c; i++) bad += o[i] != sum_f32((size_t)rank * c + i);
  CHECK_MSG(bad == 0, "reduce-scatter: %d elements differ", bad);

  /* all-gather of each rank's block into every rank's R·c */
  CHECK_MSG(trn_nccl_all_gather(d, r, s, POC_DT_F32, c, err) == 0, "%s", err);
  d->get(d, o, POC_DT_F32, s, POC_DT_F32, (size_t)R * c);
  bad = 0;
  for (int q = 0; q < R; q++)
    for (size_t i = 0; i < c; i++) bad += o[(size_t)q * c + i] != sum_f32((size_t)q * c + i);
  CHECK_MSG(bad == 0, "all-gather: %d elements differ", bad);

  /* broadcast from rank 1 */
  for (size_t i = 0; i < c; i++) h[i] = val(rank, i);
  d->put(d, r, POC_DT_F32, h, POC_DT_F32, c);
  CHECK_MSG(trn_nccl_bcast(d, r, POC_DT_F32, c, 1, err) == 0, "%s", err);
  d->get(d, o, POC_DT_F32, r, POC_DT_F32, c);
  bad = 0;
  for (size_t i = 0; i < c; i++) bad += o[i] != val(1, i);
  CHECK_MSG(bad == 0, "broadcast: %d elements differ from rank 1's", bad);

  /* a group: both sums queued, issued at its end */
  d->put(d, s, POC_DT_F32, h, POC_DT_F32, c);
  d->put(d, r, POC_DT_F32, h, POC_DT_F32, c);
  trn_nccl_group_begin(d);
  CHECK_MSG(trn_nccl_sum(d, s, POC_DT_F32, c, err) == 0, "%s", err);
  CHECK_MSG(trn_nccl_sum(d, r, POC_DT_F32, c / 2, err) == 0, "%s", err);
  d->get(d, o, POC_DT_F32, r, POC_DT_F32, c);
  CHECK_MSG(o[0] == h[0] || R == 1, "a grouped collective ran before the group's end");
  CHECK_MSG(trn_nccl_group_end(d, err) == 0, "%s", err);
  d->get(d, o, POC_DT_F32, s, POC_DT_F32, c);
  bad = 0;
  for (size_t i = 0; i < c; i++) bad += o[i] != sum_f32(i);
  d->get(d, o, POC_DT_F32, r, POC_DT_F32, c);
  for (size_t i = 0; i < c; i++) bad += o[i] != (i < c / 2 ? sum_f32(i) : val(rank, i));
  CHECK_MSG(bad == 0, "group: %d elements differ", bad);

  /* on NCCL's own stream (the overlap's), joined by the device's stream */
  for (size_t i = 0; i < c; i++) h[i] = val(rank, i);
  d->put(d, s, POC_DT_F32, h, POC_DT_F32, c);
  d->put(d, r, POC_DT_F32, h, POC_DT_F32, c);
  CHECK_MSG(trn_nccl_sum_async(d, s, POC_DT_F32, c, err) == 0, "%s", err);
  CHECK_MSG(trn_nccl_sum_async(d, r, POC_DT_F32, c, err) == 0, "%s", err);
  CHECK_MSG(trn_nccl_join(d, err) == 0, "%s", err);
  CHECK_MSG(trn_nccl_join(d, err) == 0, "a second join with nothing queued: %s", err);
  bad = 0;
  d->get(d, o, POC_DT_F32, s, POC_DT_F32, c);
  for (size_t i = 0; i < c; i++) bad += o[i] != sum_f32(i);
  d->get(d, o, POC_DT_F32, r, POC_DT_F32, c);
  for (size_t i = 0; i < c; i++) bad += o[i] != sum_f32(i);
  CHECK_MSG(bad == 0, "sum_async: %d elements differ", bad);
  d->free(d, s);
  d->free(d, r);
  free(h);
  free(o);
}

static poc_device *open_both(void) {
  char err[POC_ERR_LEN] = "";
  poc_device *d = poc_device_open("cuda", err);
  CHECK_MSG(d != NULL, "%s", err);
  if (!d) return NULL;
  int rc = trn_nccl_open(d, err);
  CHECK_MSG(rc == 0, "trn_nccl_open: %d: %s", rc, err);
  if (rc) {
    poc_device_close(d);
    return NULL;
  }
  return d;
}

int main(void) {
  char err[POC_ERR_LEN] = "";
  if (trn_comm_init(err)) {
    fprintf(stderr, "%s\n", err);
    return 1;
  }
  R = trn_comm_size();
  rank = trn_comm_rank();
  CHECK_MSG(R >= 2, "run under mpirun with 2 or more ranks (%d)", R);
  const char *lib = getenv("POC_NCCL_LIBRARY");
  CHECK_MSG(lib && *lib, "POC_NCCL_LIBRARY names the stand-in");
  char keep[1024];
  snprintf(keep, sizeof keep, "%s", lib ? lib : "");

  /* not used, for reasons every rank reports alike */
  poc_device *cpu = poc_device_open("cpu", err);
  CHECK(cpu && trn_nccl_open(cpu, err) == 1 && strstr(err, "not cuda"));
  poc_device_close(cpu);
  poc_device *d = poc_device_open("cuda", err);
  CHECK_MSG(d != NULL, "%s", err);
  if (!d) {
    trn_comm_abort(1);
    return 1;
  }
  unsetenv("POC_NCCL_LIBRARY");
  CHECK_MSG(trn_nccl_open(d, err) == 1 && strstr(err, "CUDA emulation"), "%s", err);
  /* a library missing on rank 1 only: every rank hears it from rank 1 */
  setenv("POC_NCCL_LIBRARY", rank == 1 ? "/nonexistent/libnccl.so.2" : keep, 1);
  CHECK_MSG(trn_nccl_open(d, err) == 1 && strstr(err, "cannot load NCCL") &&
                strstr(err, "/nonexistent/libnccl.so.2") && (rank == 1 || strstr(err, "rank 1")),
            "%s", err);
  CHECK(!trn_nccl_active(d));
  setenv("POC_NCCL_LIBRARY", keep, 1);

  CHECK_MSG(trn_nccl_open(d, err) == 0, "%s", err);
  CHECK(trn_nccl_active(d));
  CHECK_MSG(!strncmp(trn_nccl_desc(), "NCCL 2.", 7) && strstr(trn_nccl_desc(), "libnccl.so.2"),
            "%s", trn_nccl_desc());
  if (rank == 0) printf("%s\n", trn_nccl_desc());
  sums(d);
  scatter_gather(d);

  /* a host buffer on rank 1: refused there, and the others are told rather than left
   * waiting */
  float host[16] = {0};
  poc_dptr x = d->alloc(d, sizeof host, "x");
  int rc = trn_nccl_sum(d, rank == 1 ? (poc_dptr)(uintptr_t)host : x, POC_DT_F32, 16, err);
  CHECK_MSG(rc != 0 && d->failed, "a host pointer was summed");
  CHECK_MSG(rank == 1 ? strstr(err, "is not device memory") != NULL
                      : strstr(err, "rank 1 refused its arguments") != NULL, "%s", err);
  trn_nccl_close(d);
  CHECK(!trn_nccl_active(d));
  poc_device_close(d);

  /* ranks that disagree on the count: every rank fails, naming rank 1 and rank 0 */
  if ((d = open_both())) {
    size_t n = 10 + (size_t)rank;
    x = d->alloc(d, 64, "x");
    d->zero(d, x, 64);
    rc = trn_nccl_sum(d, x, POC_DT_F32, n, err);
    CHECK_MSG(rc != 0 && strstr(err, "the ranks disagree on collective #1: rank 1 calls "
                                     "ncclAllReduce of 11 float32, rank 0 calls ncclAllReduce "
                                     "of 10 float32"), "%s", err);
    trn_nccl_close(d);
    poc_device_close(d);
  }
  char name[32];
  snprintf(name, sizeof name, "nccl_standin rank %d", rank);
  rc = check_summary(name);
  int64_t all = rc;
  trn_comm_sum_i64(&all, 1, err);
  trn_comm_finalize();
  return all ? 1 : 0;
}
