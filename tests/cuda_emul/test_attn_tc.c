/* test_attn_tc.c — the tensor-core attention kernels (attention.cu) and their mma
 * primitive (poc_common.cuh), on the CUDA device against plain arithmetic and the CPU twin.
 *
 *   mma        mma_bf16_16816 on 8 warps' worth of random bf16 tiles, each lane loading
 *              and storing its fragments by the documented PTX layouts, against the
 *              matrix product in double: D = A·B + C for a 16×16 by 16×16 product (two
 *              8-column tiles), then E = bf16(D)·B2 with D's C fragments reused as the
 *              A fragment (mma_c_to_a). Under the emulation this checks the shuffle
 *              implementation against the layouts; on a GPU, that the hardware's layouts
 *              are the documented ones the kernels (and the emulation) assume.
 *   attention  packs of several sequences of uneven lengths, head dims 64, 128 and 40 (a
 *              multiple of 8 but not 16: padded tiles), GQA ratios 1 and 4 (and 2):
 *              forward out and lse, backward dq, dk, dv and D against the CPU device
 *              within the bf16-operand bounds of attn_bounds.h; a decode step (q0 > 0);
 *              then every output of a second run compared bit for bit with the first
 *              (under the emulation the second run has another thread order: the
 *              scheduler's random stream has moved on).
 * Under the emulation (POC_CUDA_EMULATE) a device that does not open is a failure;
 * elsewhere without a GPU the test is skipped (exit 77).
 */
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "attn_bounds.h"
#include "check.h"
#include "cuda_internal.h"
#include "device.h"
#define PAIR_SEED 0x2545f4914f6cdd1dull
#include "pair_buf.h"

static char err[POC_ERR_LEN];

static uint16_t to_bf(float f) { /* nearest bf16, ties to even (finite inputs) */
  uint32_t u;
  memcpy(&u, &f, 4);
  u += 0x7fffu + ((u >> 16) & 1u);
  return (uint16_t)(u >> 16);
}
static float from_bf(uint16_t b) {
  uint32_t u = (uint32_t)b << 16;
  float f;
  memcpy(&f, &u, 4);
  return f;
}

/* ---- the mma primitive ------------------------------------------------------------------ */

static const char *mma_src =
    "#define POC_H 64\n#define POC_F 64\n#define POC_V 64\n#define POC_NH 1\n#define POC_NKV 1\n"
    "#define POC_HD 16\n#define POC_EPS 1e-5f\n"
    "#include \"poc_common.cuh\"\n"
    /* tile w (one per warp): A 16×16 row-major, B 16×16 row-major (k × n), C 16×16 fp32,
       B2 16×8 row-major; D 16×16 and E 16×8 out. Fragments by the PTX ISA's layouts. */
    "extern \"C\" __global__ void mma_tiles(const bf16 *A, const bf16 *B, const float *C,\n"
    "                                       const bf16 *B2, float *D, float *E) {\n"
    "  const int w = blockIdx.x * (blockDim.x >> 5) + (threadIdx.x >> 5);\n"
    "  const int lane = threadIdx.x & 31, g = lane >> 2, t = lane & 3;\n"
    "  const bf16 *a = A + w * 256, *b = B + w * 256, *b2 = B2 + w * 128;\n"
    "  const float *c = C + w * 256;\n"
    "  unsigned af[4];\n"
    "  for (int j = 0; j < 4; j++) {\n"
    "    int r = g + 8 * (j & 1), k = 2 * t + 8 * (j >> 1);\n"
    "    af[j] = bf16x2(a[r * 16 + k], a[r * 16 + k + 1]);\n"
    "  }\n"
    "  float acc[2][4];\n"
    "  for (int n = 0; n < 2; n++) {\n"
    "    unsigned bfr[2];\n"
    "    for (int i = 0; i < 2; i++) {\n"
    "      int k = 2 * t + 8 * i, col = 8 * n + g;\n"
    "      bfr[i] = bf16x2(b[k * 16 + col], b[(k + 1) * 16 + col]);\n"
    "    }\n"
    "    for (int j = 0; j < 4; j++) acc[n][j] = c[(g + 8 * (j >> 1)) * 16 + 8 * n + 2 * t + (j & 1)];\n"
    "    mma_bf16_16816(acc[n], af, bfr);\n"
    "    for (int j = 0; j < 4; j++) D[w * 256 + (g + 8 * (j >> 1)) * 16 + 8 * n + 2 * t + (j & 1)] = acc[n][j];\n"
    "  }\n"
    "  unsigned pa[4], b2f[2];\n"
    "  mma_c_to_a(pa, acc[0], acc[1]);\n"
    "  for (int i = 0; i < 2; i++) {\n"
    "    int k = 2 * t + 8 * i;\n"
    "    b2f[i] = bf16x2(b2[k * 8 + g], b2[(k + 1) * 8 + g]);\n"
    "  }\n"
    "  float e[4] = {0.f, 0.f, 0.f, 0.f};\n"
    "  mma_bf16_16816(e, pa, b2f);\n"
    "  for (int j = 0; j < 4; j++) E[w * 128 + (g + 8 * (j >> 1)) * 8 + 2 * t + (j & 1)] = e[j];\n"
    "}\n";

/* The products of bf16 pairs are exact in fp32 and a tile's sum has 16 of them plus C:
 * an fp32 accumulation of any order and grouping is within 2^-20 of Σ|terms| (17 terms ×
 * 2^-24, with room for the hardware's own accumulation); a fragment at the wrong place
 * is off by a whole term. */
static void test_mma(int cc) {
  enum { W = 8, THREADS = 64 };
  CHECK_MSG(cu_nvrtc_load(err) == 0, "%s", err);
  char arch[16];
  snprintf(arch, sizeof arch, "sm_%d", cc);
  const char *archs[] = {arch};
  poc_cuda_image img;
  char *log = NULL;
  int rc = poc_cuda_compile(mma_src, "mma_selftest.cu", archs, 1, &img, &log);
  CHECK_MSG(rc == 0, "%s", log ? log : "");
  free(log);
  void *m = NULL;
  if (rc || poc_cuda_load(&img, &m, err)) {
    CHECK_MSG(0, "mma test module: %s", err);
    if (!rc) poc_cuda_image_free(&img);
    return;
  }
  poc_cuda_image_free(&img);
  CUfunction f = NULL;
  CHECK(cu.cuModuleGetFunction(&f, (CUmodule)m, "mma_tiles") == CUDA_SUCCESS);
  uint16_t *A = malloc(W * 256 * 2), *B = malloc(W * 256 * 2), *B2 = malloc(W * 128 * 2);
  float *C = malloc(W * 256 * 4), *D = malloc(W * 256 * 4), *E = malloc(W * 128 * 4);
  /* distinct magnitudes per position (2^±3 spread) so a swapped element shows */
  for (int i = 0; i < W * 256; i++) {
    A[i] = to_bf((float)(urand() * exp2(3 * urand())));
    B[i] = to_bf((float)(urand() * exp2(3 * urand())));
    C[i] = (float)(4 * urand());
  }
  for (int i = 0; i < W * 128; i++) B2[i] = to_bf((float)urand());
  CUdeviceptr dA, dB, dC, dB2, dD, dE;
  CHECK(cu.cuMemAlloc(&dA, W * 256 * 2) == 0 && cu.cuMemAlloc(&dB, W * 256 * 2) == 0 &&
        cu.cuMemAlloc(&dC, W * 256 * 4) == 0 && cu.cuMemAlloc(&dB2, W * 128 * 2) == 0 &&
        cu.cuMemAlloc(&dD, W * 256 * 4) == 0 && cu.cuMemAlloc(&dE, W * 128 * 4) == 0);
  CHECK(cu.cuMemcpyHtoD(dA, A, W * 256 * 2) == 0 && cu.cuMemcpyHtoD(dB, B, W * 256 * 2) == 0 &&
        cu.cuMemcpyHtoD(dC, C, W * 256 * 4) == 0 && cu.cuMemcpyHtoD(dB2, B2, W * 128 * 2) == 0);
  void *args[] = {&dA, &dB, &dC, &dB2, &dD, &dE};
  CHECK(cu.cuLaunchKernel(f, W * 32 / THREADS, 1, 1, THREADS, 1, 1, 0, NULL, args, NULL) ==
        CUDA_SUCCESS);
  CHECK(cu.cuCtxSynchronize() == CUDA_SUCCESS);
  CHECK(cu.cuMemcpyDtoH(D, dD, W * 256 * 4) == 0 && cu.cuMemcpyDtoH(E, dE, W * 128 * 4) == 0);
  double worst_d = 0, worst_e = 0;
  int bad_d = 0, bad_e = 0;
  for (int w = 0; w < W; w++) {
    const uint16_t *a = A + w * 256, *b = B + w * 256, *b2 = B2 + w * 128;
    for (int r = 0; r < 16; r++)
      for (int n = 0; n < 16; n++) {
        double s = C[w * 256 + r * 16 + n], mag = fabs(s);
        for (int k = 0; k < 16; k++) {
          double p = (double)from_bf(a[r * 16 + k]) * from_bf(b[k * 16 + n]);
          s += p;
          mag += fabs(p);
        }
        double d = fabs(D[w * 256 + r * 16 + n] - s), tol = mag * exp2(-20);
        bad_d += !(d <= tol);
        worst_d = fmax(worst_d, d / tol);
      }
    /* E from the device's own D, rounded as the kernel rounds it */
    for (int r = 0; r < 16; r++)
      for (int n = 0; n < 8; n++) {
        double s = 0, mag = 0;
        for (int k = 0; k < 16; k++) {
          double p = (double)bf(D[w * 256 + r * 16 + k]) * from_bf(b2[k * 8 + n]);
          s += p;
          mag += fabs(p);
        }
        double d = fabs(E[w * 128 + r * 8 + n] - s), tol = mag * exp2(-20) + 1e-30;
        bad_e += !(d <= tol);
        worst_e = fmax(worst_e, d / tol);
      }
  }
  printf("mma m16n8k16 on %d tiles: D = A·B + C within %.0f%% of its bound, E = bf16(D)·B2 "
         "within %.0f%%\n", W, 100 * worst_d, 100 * worst_e);
  CHECK_MSG(bad_d == 0, "mma: %d of %d elements of A·B + C off", bad_d, W * 256);
  CHECK_MSG(bad_e == 0, "mma: %d of %d elements of the chained product off", bad_e, W * 128);
  cu.cuMemFree(dA);
  cu.cuMemFree(dB);
  cu.cuMemFree(dC);
  cu.cuMemFree(dB2);
  cu.cuMemFree(dD);
  cu.cuMemFree(dE);
  cu.cuModuleUnload((CUmodule)m);
  free(A);
  free(B);
  free(B2);
  free(C);
  free(D);
  free(E);
}

/* ---- attention ---------------------------------------------------------------------------- */

static poc_dptr ints(poc_device *d, const int32_t *v, size_t n) {
  poc_dptr p = d->alloc(d, n * 4, "test ints");
  d->put(d, p, POC_DT_I32, v, POC_DT_I32, n);
  return p;
}

/* |cuda − cpu| ≤ atol + rtol·|cpu| + tol[i] everywhere; NaN fails */
static void compare(const char *what, const pb *b, double atol, double rtol, const double *tol) {
  double *hc = malloc(b->n * 8), *hg = malloc(b->n * 8), ratio = 0;
  C->get(C, hc, POC_DT_F64, b->c, ty(C, b->act), b->n);
  G->get(G, hg, POC_DT_F64, b->g, ty(G, b->act), b->n);
  size_t at = 0, nans = 0;
  for (size_t i = 0; i < b->n; i++) {
    if (hc[i] != hc[i] || hg[i] != hg[i]) {
      nans++;
      at = i;
      continue;
    }
    double d = fabs(hg[i] - hc[i]), t = atol + rtol * fabs(hc[i]) + (tol ? tol[i] : 0);
    double r = d == 0 ? 0 : d / t;
    if (r > ratio) {
      ratio = r;
      if (!nans) at = i;
    }
  }
  printf("  %-44s n=%-7zu worst %3.0f%% of tol\n", what, b->n, 100 * ratio);
  CHECK_MSG(nans == 0 && ratio <= 1, "%s: element %zu: cpu %.9g, cuda %.9g (%.2f× tol, %zu NaN)",
            what, at, hc[at], hg[at], ratio, nans);
  free(hc);
  free(hg);
}

static double max_abs_cpu(const pb *b) {
  double *h = malloc(b->n * 8), m = 0;
  C->get(C, h, POC_DT_F64, b->c, ty(C, b->act), b->n);
  for (size_t i = 0; i < b->n; i++) m = fmax(m, fabs(h[i]));
  free(h);
  return m;
}

/* the device bytes of a buffer, for bit comparisons */
static void *raw(const pb *b) {
  size_t bytes = b->n * poc_dtype_size(ty(G, b->act));
  void *h = malloc(bytes);
  poc_dtype t = ty(G, b->act);
  G->get(G, h, t, b->g, t, b->n);
  return h;
}
static int same_bits(const pb *a, const pb *b) {
  void *x = raw(a), *y = raw(b);
  int same = !memcmp(x, y, a->n * poc_dtype_size(ty(G, a->act)));
  free(x);
  free(y);
  return same;
}

typedef struct {
  int hd, nh, nkv;
} shape;

static void test_pack(const shape *sp, const int *len, int nseq) {
  poc_dims dm = {128, 256, 512, sp->nh, sp->nkv, sp->hd, 1e-5};
  poc_kset *KC = C->kernels(C, &dm), *KG = G->kernels(G, &dm);
  CHECK_MSG(KC && KG, "kernels: %s / %s", C->err, G->err);
  if (!KC || !KG) return;
  const int qd = sp->nh * sp->hd, kvd = sp->nkv * sp->hd;
  int T = 0;
  for (int s = 0; s < nseq; s++) T += len[s];
  int32_t *kbeg = malloc(T * 4), *send = malloc(T * 4);
  for (int s = 0, at = 0; s < nseq; at += len[s], s++)
    for (int j = 0; j < len[s]; j++) {
      kbeg[at + j] = at;
      send[at + j] = at + len[s];
    }
  poc_dptr kbc = ints(C, kbeg, T), kbg = ints(G, kbeg, T), sec = ints(C, send, T),
           seg = ints(G, send, T);
  char w[128], tag[64];
  snprintf(tag, sizeof tag, "hd %d, %d/%d heads, T=%d", sp->hd, sp->nh, sp->nkv, T);
  printf("%s (%d sequences)\n", tag, nseq);

  /* scores up to ~6 in size: softmaxes neither flat nor one-hot */
  const double qs = 2.5 / pow(sp->hd, 0.25);
  pb q = pb_rand((size_t)T * qd, 1, qs), k = pb_rand((size_t)T * kvd, 1, qs),
      v = pb_rand((size_t)T * kvd, 1, 1);
  pb out = pb_nan((size_t)T * qd, 1), lse = pb_nan((size_t)T * sp->nh, 0);
  C->k.attn_fwd(KC, T, 0, q.c, k.c, v.c, kbc, out.c, lse.c);
  G->k.attn_fwd(KG, T, 0, q.g, k.g, v.g, kbg, out.g, lse.g);
  ab_shape sh = {T, 0, sp->nh, sp->nkv, sp->hd, kbeg, send};
  double *tol = malloc((size_t)T * qd * 8);
  ab_fwd(&sh, q.h, k.h, v.h, NULL, tol);
  snprintf(w, sizeof w, "forward out");
  compare(w, &out, 1e-5, 2 * AB_U_BF16, tol);
  snprintf(w, sizeof w, "forward lse");
  compare(w, &lse, 1e-5, 1e-5, NULL);

  /* backward from the cpu's out and lse, on both */
  pb o = pb_new((size_t)T * qd, 1), l = pb_new((size_t)T * sp->nh, 0);
  {
    double *h = malloc((size_t)T * qd * 8);
    C->get(C, h, POC_DT_F64, out.c, C->act, (size_t)T * qd);
    for (size_t i = 0; i < o.n; i++) o.h[i] = (float)h[i];
    C->get(C, h, POC_DT_F64, lse.c, C->acc, l.n);
    for (size_t i = 0; i < l.n; i++) l.h[i] = (float)h[i];
    free(h);
  }
  pb_put(&o);
  pb_put(&l);
  pb dO = pb_rand((size_t)T * qd, 1, 1);
  pb dq = pb_nan((size_t)T * qd, 0), dk = pb_nan((size_t)T * kvd, 0),
      dv = pb_nan((size_t)T * kvd, 0), D = pb_nan((size_t)T * sp->nh, 0);
  C->k.attn_bwd(KC, T, q.c, k.c, v.c, o.c, dO.c, l.c, kbc, sec, dq.c, dk.c, dv.c, D.c);
  G->k.attn_bwd(KG, T, q.g, k.g, v.g, o.g, dO.g, l.g, kbg, seg, dq.g, dk.g, dv.g, D.g);
  double *tq = malloc((size_t)T * qd * 8), *tk = malloc((size_t)T * kvd * 8),
         *tv = malloc((size_t)T * kvd * 8);
  ab_bwd(&sh, q.h, k.h, v.h, o.h, l.h, dO.h, tq, tk, tv);
  /* fp32 sums of up to a sequence's (times the group's) terms: 1e-5 of the largest */
  compare("backward dq", &dq, 1e-5 * max_abs_cpu(&dq), 1e-5, tq);
  compare("backward dk", &dk, 1e-5 * max_abs_cpu(&dk), 1e-5, tk);
  compare("backward dv", &dv, 1e-5 * max_abs_cpu(&dv), 1e-5, tv);
  compare("backward D", &D, 1e-5 * max_abs_cpu(&D), 1e-5, NULL);

  /* a second run, into fresh buffers: the same bits */
  pb out2 = pb_nan(out.n, 1), lse2 = pb_nan(lse.n, 0), dq2 = pb_nan(dq.n, 0),
      dk2 = pb_nan(dk.n, 0), dv2 = pb_nan(dv.n, 0), D2 = pb_nan(D.n, 0);
  G->k.attn_fwd(KG, T, 0, q.g, k.g, v.g, kbg, out2.g, lse2.g);
  G->k.attn_bwd(KG, T, q.g, k.g, v.g, o.g, dO.g, l.g, kbg, seg, dq2.g, dk2.g, dv2.g, D2.g);
  int same = same_bits(&out, &out2) && same_bits(&lse, &lse2) && same_bits(&dq, &dq2) &&
             same_bits(&dk, &dk2) && same_bits(&dv, &dv2) && same_bits(&D, &D2);
  printf("  %-44s %s\n", "second run, bit for bit", same ? "identical" : "DIFFERENT");
  CHECK_MSG(same, "%s: a second run gives other bits", tag);
  CHECK_MSG(G->sync(G, err) == 0, "%s: %s", tag, err);
  CHECK_MSG(C->sync(C, err) == 0, "%s: %s", tag, err);

  pb *bs[] = {&q, &k, &v, &out, &lse, &o, &l, &dO, &dq, &dk, &dv, &D,
               &out2, &lse2, &dq2, &dk2, &dv2, &D2};
  for (size_t i = 0; i < sizeof bs / sizeof bs[0]; i++) pb_free(bs[i]);
  C->free(C, kbc);
  G->free(G, kbg);
  C->free(C, sec);
  G->free(G, seg);
  free(kbeg);
  free(send);
  free(tol);
  free(tq);
  free(tk);
  free(tv);
}

/* T query rows at positions q0 .. q0 + T − 1 over a cache of q0 + T keys from kbeg0 */
static void test_decode(const shape *sp, int T, int q0, int kbeg0) {
  poc_dims dm = {128, 256, 512, sp->nh, sp->nkv, sp->hd, 1e-5};
  poc_kset *KC = C->kernels(C, &dm), *KG = G->kernels(G, &dm);
  if (!KC || !KG) return;
  const int qd = sp->nh * sp->hd, kvd = sp->nkv * sp->hd, NK = q0 + T;
  int32_t *kbeg = malloc(T * 4);
  for (int t = 0; t < T; t++) kbeg[t] = kbeg0;
  poc_dptr kbc = ints(C, kbeg, T), kbg = ints(G, kbeg, T);
  const double qs = 2.5 / pow(sp->hd, 0.25);
  pb q = pb_rand((size_t)T * qd, 1, qs), k = pb_rand((size_t)NK * kvd, 1, qs),
      v = pb_rand((size_t)NK * kvd, 1, 1);
  pb out = pb_nan((size_t)T * qd, 1), lse = pb_nan((size_t)T * sp->nh, 0);
  C->k.attn_fwd(KC, T, q0, q.c, k.c, v.c, kbc, out.c, lse.c);
  G->k.attn_fwd(KG, T, q0, q.g, k.g, v.g, kbg, out.g, lse.g);
  ab_shape sh = {T, q0, sp->nh, sp->nkv, sp->hd, kbeg, NULL};
  double *tol = malloc((size_t)T * qd * 8);
  ab_fwd(&sh, q.h, k.h, v.h, NULL, tol);
  char w[128];
  snprintf(w, sizeof w, "decode hd %d T=%d q0=%d kbeg=%d: out", sp->hd, T, q0, kbeg0);
  compare(w, &out, 1e-5, 2 * AB_U_BF16, tol);
  snprintf(w, sizeof w, "decode hd %d T=%d q0=%d kbeg=%d: lse", sp->hd, T, q0, kbeg0);
  compare(w, &lse, 1e-5, 1e-5, NULL);
  CHECK_MSG(G->sync(G, err) == 0, "decode: %s", err);
  pb *bs[] = {&q, &k, &v, &out, &lse};
  for (size_t i = 0; i < sizeof bs / sizeof bs[0]; i++) pb_free(bs[i]);
  C->free(C, kbc);
  G->free(G, kbg);
  free(kbeg);
  free(tol);
}

int main(void) {
  const char *emu = getenv("POC_CUDA_EMULATE");
  const int emulated = emu && *emu;
  cu_ctx cx;
  memset(&cx, 0, sizeof cx);
  if (cu_ctx_open(&cx, err)) {
    cu_ctx_close(&cx);
    if (emulated) {
      CHECK_MSG(0, "the emulated CUDA device does not open: %s", err);
      return check_summary("attn_tc");
    }
    printf("skipped: no CUDA device (%s)\n", err);
    return 77;
  }
  printf("device: %s (sm_%d)%s\n", cx.name, cx.cc, emulated ? ", emulated" : "");
  test_mma(cx.cc);
  cu_ctx_close(&cx);

  G = poc_device_open("cuda", err);
  CHECK_MSG(G != NULL, "cuda: %s", err);
  C = poc_device_open("cpu", err);
  CHECK_MSG(C != NULL, "cpu: %s", err);
  if (!G || !C) return check_summary("attn_tc");

  /* uneven lengths: 1-token sequences, sequences ending inside and across tiles */
  const int packA[] = {1, 37, 100, 5, 70, 17}, packB[] = {130, 1, 61, 3},
            packC[] = {23, 1, 90, 8};
  const shape s64a = {64, 4, 4}, s64b = {64, 8, 2}, s128a = {128, 2, 2}, s128b = {128, 4, 1},
              s40 = {40, 4, 2};
  test_pack(&s64a, packA, 6);  /* GQA 1 */
  test_pack(&s64b, packB, 4);  /* GQA 4 */
  test_pack(&s128a, packC, 4); /* GQA 1 */
  test_pack(&s128b, packB, 4); /* GQA 4 */
  test_pack(&s40, packC, 4);   /* a head dim padded to 48 */
  test_decode(&s64b, 1, 77, 0);
  test_decode(&s128b, 3, 40, 0);
  test_decode(&s64a, 20, 70, 9); /* a prefill after a prompt, keys from 9 on */

  poc_device_close(C);
  poc_device_close(G);
  return check_summary("attn_tc");
}
