/* test_cuda_device.c — the CUDA device (device.h) opens, or says in one line why not.
 *
 * Without a GPU (no driver, or the toolkit's stub driver: the cuda_device_stub test) the
 * open must fail with a "cuda: ..." message and no crash. With a GPU it checks the
 * device's description and types, host↔device conversions (bf16 rounds to nearest even),
 * a GEMM against the host, attention with a query offset (a decode row over a KV cache
 * equals the same row of the whole forward) against a host reference, the sum of squares,
 * and the out-of-memory message.
 */
#include <limits.h>
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "check.h"
#include "device.h"

static poc_dptr put_new(poc_device *d, poc_dtype dt, const void *src, poc_dtype st, size_t n,
                        const char *what) {
  poc_dptr p = d->alloc(d, n * (dt == POC_DT_BF16 ? 2 : 4), what);
  d->put(d, p, dt, src, st, n);
  return p;
}

static void test_members(poc_device *d) {
  CHECK(d->alloc && d->free && d->put && d->get && d->copy && d->zero && d->sync &&
        d->kernels && d->close);
  const poc_kernels *k = &d->k;
  CHECK(k->gemm && k->embed_fwd && k->embed_bwd && k->rmsnorm_fwd && k->rmsnorm_bwd &&
        k->rmsnorm_dw && k->colsum && k->cast && k->qkv_bias_rope && k->rope_bwd &&
        k->attn_fwd && k->attn_bwd && k->swiglu_fwd && k->swiglu_bwd && k->head_chunk_fwd &&
        k->head_finish && k->head_chunk_bwd && k->head_text_fwd && k->head_text_bwd &&
        k->adamw && k->sumsq);
}

static void test_copies(poc_device *d) {
  /* 1 + 2^-8 is halfway between bf16 1 and 1 + 2^-7: to even (1); 1 + 3·2^-8 is halfway
   * between 1 + 2^-7 and 1 + 2^-6: to even (1 + 2^-6) */
  const float f[4] = {1.f, 1.00390625f, 1.01171875f, -3.5f};
  /* just above the first tie, in double: one rounding gives 1 + 2^-7, where rounding to
   * float first would land on the tie and then go to even (1) */
  const double dd[4] = {1.0, 1.00390625, 1.00390625 + 1e-12, -3.5};
  const float want[4] = {1.f, 1.f, 1.015625f, -3.5f}, want_d[4] = {1.f, 1.f, 1.0078125f, -3.5f};
  poc_dptr b = put_new(d, POC_DT_BF16, f, POC_DT_F32, 4, "bf16 test");
  float back[4] = {0};
  d->get(d, back, POC_DT_F32, b, POC_DT_BF16, 4);
  for (int i = 0; i < 4; i++) CHECK_MSG(back[i] == want[i], "f32→bf16 %d: %g", i, back[i]);
  d->put(d, b, POC_DT_BF16, dd, POC_DT_F64, 4);
  double backd[4] = {0};
  d->get(d, backd, POC_DT_F64, b, POC_DT_BF16, 4);
  for (int i = 0; i < 4; i++) CHECK_MSG(backd[i] == want_d[i], "f64→bf16 %d: %g", i, backd[i]);
  const int32_t iv[3] = {7, -1, 1 << 30};
  int32_t ib[3] = {0};
  poc_dptr pi = put_new(d, POC_DT_I32, iv, POC_DT_I32, 3, "i32 test");
  poc_dptr pc = d->alloc(d, 12, "copy test");
  d->zero(d, pc, 12);
  d->copy(d, pc, pi, 12);
  d->get(d, ib, POC_DT_I32, pc, POC_DT_I32, 3);
  CHECK(!memcmp(iv, ib, sizeof iv));
  CHECK(d->sync(d, NULL) == 0);
  d->free(d, b);
  d->free(d, pi);
  d->free(d, pc);
}

/* C[3×5] = A[3×4]·Bᵀ for B [5×4], small integers (exact in bf16 and fp32) */
static void test_gemm(poc_device *d, poc_kset *ks) {
  float A[12], B[20], C[15], want[15];
  for (int i = 0; i < 12; i++) A[i] = (float)(i % 5 - 2);
  for (int i = 0; i < 20; i++) B[i] = (float)(i % 7 - 3);
  for (int m = 0; m < 3; m++)
    for (int n = 0; n < 5; n++) {
      float s = 0;
      for (int k = 0; k < 4; k++) s += A[m * 4 + k] * B[n * 4 + k];
      want[m * 5 + n] = s;
    }
  poc_dptr pa = put_new(d, POC_DT_BF16, A, POC_DT_F32, 12, "A");
  poc_dptr pb = put_new(d, POC_DT_BF16, B, POC_DT_F32, 20, "B");
  poc_dptr pc = d->alloc(d, 15 * 4, "C");
  d->k.gemm(ks, 0, 1, 3, 5, 4, pa, 4, pb, 4, 0.f, pc, 1, 5);
  d->get(d, C, POC_DT_F32, pc, POC_DT_F32, 15);
  for (int i = 0; i < 15; i++) CHECK_MSG(C[i] == want[i], "gemm %d: %g vs %g", i, C[i], want[i]);
  d->free(d, pa);
  d->free(d, pb);
  d->free(d, pc);
}

/* One sequence of T rows: the forward over all rows (q0 = 0) against a host reference,
 * and the last row alone at q0 = T − 1 over the same keys (the decode step). */
static void test_attention(poc_device *d, poc_kset *ks, const poc_dims *dm) {
  enum { T = 37 };
  const int qd = dm->nh * dm->hd, kvd = dm->nkv * dm->hd, grp = dm->nh / dm->nkv;
  float *q = malloc(sizeof(float) * T * qd), *k = malloc(sizeof(float) * T * kvd),
        *v = malloc(sizeof(float) * T * kvd), *o = malloc(sizeof(float) * T * qd),
        *o1 = malloc(sizeof(float) * qd);
  int32_t kbeg[T];
  for (int i = 0; i < T * qd; i++) q[i] = (float)((i * 37 % 29) - 14) / 16.f;
  for (int i = 0; i < T * kvd; i++) {
    k[i] = (float)((i * 53 % 31) - 15) / 16.f;
    v[i] = (float)((i * 17 % 23) - 11) / 8.f;
  }
  for (int t = 0; t < T; t++) kbeg[t] = 0;
  poc_dptr pq = put_new(d, POC_DT_BF16, q, POC_DT_F32, (size_t)T * qd, "q");
  poc_dptr pk = put_new(d, POC_DT_BF16, k, POC_DT_F32, (size_t)T * kvd, "k");
  poc_dptr pv = put_new(d, POC_DT_BF16, v, POC_DT_F32, (size_t)T * kvd, "v");
  poc_dptr pkb = put_new(d, POC_DT_I32, kbeg, POC_DT_I32, T, "kbeg");
  poc_dptr po = d->alloc(d, (size_t)T * qd * 2, "out"), plse = d->alloc(d, (size_t)T * dm->nh * 4, "lse");
  d->k.attn_fwd(ks, T, 0, pq, pk, pv, pkb, po, plse);
  d->get(d, o, POC_DT_F32, po, POC_DT_BF16, (size_t)T * qd);
  /* decode: the last query row alone, its output written to row 0 */
  d->k.attn_fwd(ks, 1, T - 1, pq + (poc_dptr)(T - 1) * qd * 2, pk, pv, pkb, po, plse);
  d->get(d, o1, POC_DT_F32, po, POC_DT_BF16, qd);
  CHECK(d->sync(d, NULL) == 0);
  double worst = 0;
  for (int t = 0; t < T; t++)
    for (int h = 0; h < dm->nh; h++) {
      const int g = h / grp;
      double s[T], mx = -INFINITY, sum = 0;
      for (int j = 0; j <= t; j++) {
        double dot = 0;
        for (int e = 0; e < dm->hd; e++)
          dot += (double)q[t * qd + h * dm->hd + e] * k[j * kvd + g * dm->hd + e];
        s[j] = dot / sqrt((double)dm->hd);
        if (s[j] > mx) mx = s[j];
      }
      for (int j = 0; j <= t; j++) sum += s[j] = exp(s[j] - mx);
      for (int e = 0; e < dm->hd; e++) {
        double ref = 0;
        for (int j = 0; j <= t; j++) ref += s[j] / sum * v[j * kvd + g * dm->hd + e];
        double err = fabs(o[t * qd + h * dm->hd + e] - ref);
        if (err > worst) worst = err;
      }
    }
  CHECK_MSG(worst < 2e-2, "attention vs host: max error %g", worst);
  double dec = 0;
  for (int i = 0; i < qd; i++) dec = fmax(dec, fabs(o1[i] - o[(T - 1) * qd + i]));
  CHECK_MSG(dec < 1e-2, "decode row vs the whole forward: max difference %g", dec);
  poc_dptr ps[] = {pq, pk, pv, pkb, po, plse};
  for (int i = 0; i < 6; i++) d->free(d, ps[i]);
  free(q);
  free(k);
  free(v);
  free(o);
  free(o1);
}

static void test_sumsq(poc_device *d, poc_kset *ks) {
  enum { N = 300001 };
  float *x = malloc(sizeof(float) * N);
  double want = 0;
  for (int i = 0; i < N; i++) {
    x[i] = (float)((i % 13) - 6) / 4.f;
    want += (double)x[i] * x[i];
  }
  poc_dptr p = put_new(d, POC_DT_F32, x, POC_DT_F32, N, "x");
  double got = d->k.sumsq(ks, N, p);
  CHECK_NEAR(got, want, 1e-5);
  d->free(d, p);
  free(x);
}

static void test_gpu(poc_device *d) {
  printf("%s\n", d->desc);
  CHECK(!strcmp(d->name, "cuda"));
  CHECK(!strncmp(d->desc, "cuda: ", 6) && strstr(d->desc, "sm_") && strstr(d->desc, "driver"));
  CHECK(d->acc == POC_DT_F32 && d->act == POC_DT_BF16 && !d->shared_act);
  CHECK(d->head_rows == INT_MAX && d->head_chunk > 0 && d->head_block == SIZE_MAX);
  test_members(d);
  test_copies(d);
  poc_dims dm = {64, 176, 32, 4, 2, 16, 1e-5};
  poc_kset *ks = d->kernels(d, &dm);
  CHECK_MSG(ks != NULL, "%s", d->err);
  if (ks) {
    CHECK(d->kernels(d, &dm) == ks);
    test_gemm(d, ks);
    test_attention(d, ks, &dm);
    test_sumsq(d, ks);
  }
  char err[POC_ERR_LEN] = "";
  CHECK_MSG(d->sync(d, err) == 0, "%s", err);
  /* last: an allocation no device has makes the device fail, with a message */
  CHECK(d->alloc(d, (size_t)1 << 52, "the test's huge buffer") == 0);
  CHECK(d->failed && strstr(d->err, "the test's huge buffer") && strstr(d->err, "micro_batch"));
  CHECK(d->sync(d, err) == -1 && !strcmp(err, d->err));
  printf("out of memory: %s\n", d->err);
}

int main(void) {
  char err[POC_ERR_LEN] = "";
  poc_device *d = poc_cuda_device_open(err);
  if (d) {
    test_gpu(d);
    d->close(d);
  } else {
    printf("cuda device unavailable here: %s\n", err);
    CHECK_MSG(!strncmp(err, "cuda: ", 6) && strlen(err) > 12, "%s", err);
    CHECK_MSG(!strchr(err, '\n'), "a one-line message: %s", err);
    /* a second try gives the same answer and does not crash either */
    char err2[POC_ERR_LEN] = "";
    CHECK(poc_cuda_device_open(err2) == NULL && !strcmp(err, err2));
  }
  return check_summary("cuda_device");
}
