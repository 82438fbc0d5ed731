/* test_emul_embed_det.c — the embedding backward gives the same bits under any thread
 * schedule.
 *
 * dE[tok[t]] += dx[t] is a scatter-add where many rows share a token; done with atomics the
 * fp32 additions into a shared row would happen in whatever order the threads reach them,
 * and the bits would change from run to run. embed.cu gives each thread one column and
 * walks the rows in order instead. The emulation draws a new block order and a new thread
 * interleaving for every launch (from POC_CUDA_EMU_SEED; ctest runs this under several
 * seeds), so repeated launches here are runs under different schedules: each must give
 * exactly the bits of the first and of the CPU device, which adds in row order too.
 * Tokens are few (8 for 600 rows) so every gradient row sums ~75 terms, and the hidden
 * size is not a multiple of the 128-thread blocks.
 */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "check.h"
#include "device.h"

enum { H = 200, F = 64, V = 40, NH = 2, NKV = 1, HD = 16, T = 600, RUNS = 4 };

static uint64_t rs = 0x2545f4914f6cdd1dull;
static float urand(void) { /* [-1, 1), rounded to fp32 */
  rs ^= rs << 13;
  rs ^= rs >> 7;
  rs ^= rs << 17;
  return (float)((double)(rs >> 11) / 4503599627370496.0 - 1);
}

int main(void) {
  char err[POC_ERR_LEN] = "";
  poc_device *G = poc_device_open("cuda", err);
  CHECK_MSG(G != NULL, "the emulated CUDA device does not open: %s", err);
  if (!G) return check_summary("cuda_emul_embed_det");
  poc_device *C = poc_device_open("cpu", err);
  CHECK_MSG(C != NULL, "%s", err);
  if (!C) return check_summary("cuda_emul_embed_det");
  const char *seed = getenv("POC_CUDA_EMU_SEED");
  printf("device: %s, schedule seed %s\n", G->desc, seed ? seed : "1 (default)");
  poc_dims dm = {H, F, V, NH, NKV, HD, 1e-5};
  poc_kset *KG = G->kernels(G, &dm), *KC = C->kernels(C, &dm);
  CHECK_MSG(KG && KC, "kernels: %s / %s", G->err, C->err);
  if (!KG || !KC) return check_summary("cuda_emul_embed_det");

  int32_t *tok = malloc(T * sizeof *tok);
  float *dx = malloc((size_t)T * H * 4), *dE0 = malloc((size_t)V * H * 4);
  float *want = malloc((size_t)V * H * 4), *got = malloc((size_t)V * H * 4);
  for (int t = 0; t < T; t++) tok[t] = (int32_t)((t * 7 + t / 13) % 8) * 5; /* 8 tokens */
  for (size_t i = 0; i < (size_t)T * H; i++) dx[i] = urand();
  for (size_t i = 0; i < (size_t)V * H; i++) dE0[i] = urand(); /* += onto nonzero rows */

  poc_dptr ct = C->alloc(C, T * 4, "tokens"), cx = C->alloc(C, (size_t)T * H * 4, "dx"),
           cE = C->alloc(C, (size_t)V * H * 4, "dE");
  poc_dptr gt = G->alloc(G, T * 4, "tokens"), gx = G->alloc(G, (size_t)T * H * 4, "dx"),
           gE = G->alloc(G, (size_t)V * H * 4, "dE");
  C->put(C, ct, POC_DT_I32, tok, POC_DT_I32, T);
  C->put(C, cx, C->acc, dx, POC_DT_F32, (size_t)T * H);
  C->put(C, cE, C->acc, dE0, POC_DT_F32, (size_t)V * H);
  C->k.embed_bwd(KC, T, ct, cx, cE);
  C->get(C, want, POC_DT_F32, cE, C->acc, (size_t)V * H);
  G->put(G, gt, POC_DT_I32, tok, POC_DT_I32, T);
  G->put(G, gx, G->acc, dx, POC_DT_F32, (size_t)T * H);
  /* the fp32 sums do depend on their order: the CPU's row order against the reverse
     differs somewhere, so "the same bits" below is a property of the order, not luck */
  {
    float *rev = malloc((size_t)V * H * 4);
    memcpy(rev, dE0, (size_t)V * H * 4);
    for (int t = T - 1; t >= 0; t--)
      for (int j = 0; j < H; j++) rev[(size_t)tok[t] * H + j] += dx[(size_t)t * H + j];
    CHECK_MSG(memcmp(rev, want, (size_t)V * H * 4) != 0,
              "summing the rows in reverse gives the same bits: the test cannot tell orders apart");
    free(rev);
  }
  uint32_t first_hash = 0;
  for (int r = 0; r < RUNS; r++) {
    G->put(G, gE, G->acc, dE0, POC_DT_F32, (size_t)V * H);
    G->k.embed_bwd(KG, T, gt, gx, gE);
    G->get(G, got, POC_DT_F32, gE, G->acc, (size_t)V * H);
    CHECK_MSG(poc_dev_sync(G, err) == 0, "%s", err);
    size_t diff = 0;
    for (size_t i = 0; i < (size_t)V * H; i++) diff += memcmp(&got[i], &want[i], 4) != 0;
    uint32_t h = 2166136261u; /* FNV-1a of the bits, printed to compare seeds by eye */
    const unsigned char *b = (const unsigned char *)got;
    for (size_t i = 0; i < (size_t)V * H * 4; i++) h = (h ^ b[i]) * 16777619u;
    if (r == 0) first_hash = h;
    printf("  launch %d: %zu of %d elements differ from the cpu device; bits %08x\n", r + 1,
           diff, V * H, h);
    CHECK_MSG(diff == 0, "embed_bwd launch %d: %zu elements differ from the cpu device's bits",
              r + 1, diff);
    CHECK_MSG(h == first_hash, "embed_bwd launch %d: bits differ from launch 1", r + 1);
  }
  poc_dptr cs[] = {ct, cx, cE}, gs[] = {gt, gx, gE};
  for (int i = 0; i < 3; i++) {
    C->free(C, cs[i]);
    G->free(G, gs[i]);
  }
  free(tok);
  free(dx);
  free(dE0);
  free(want);
  free(got);
  poc_device_close(C);
  poc_device_close(G);
  return check_summary("cuda_emul_embed_det");
}
