/* test_mplan.c — the memory planner (runtime/mplan.c): packing against an independent
 * overlap check on random lifetimes, sharing where lives are disjoint, its verifier on
 * plans broken on purpose, and a model's arena: what the runtime allocates for it is
 * the peak of the plan poc_model_plan makes without a device (what poc build prints). */
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "check.h"
#include "device.h"
#include "mplan.h"

static uint64_t rng = 88172645463325252ULL;
static uint64_t next(void) {
  rng ^= rng << 13;
  rng ^= rng >> 7;
  rng ^= rng << 17;
  return rng;
}

/* Overlap by hand: no two buffers live in a common step share a byte. */
static int overlaps(const poc_mplan *p) {
  int bad = 0;
  for (int i = 0; i < p->n; i++)
    for (int j = 0; j < i; j++) {
      const poc_mbuf *a = &p->buf[i], *b = &p->buf[j];
      bool live = a->first <= b->last && b->first <= a->last;
      bool mem = a->bytes && b->bytes && a->offset < b->offset + b->bytes && b->offset < a->offset + a->bytes;
      bad += live && mem;
    }
  return bad;
}

static void test_random(void) {
  for (int trial = 0; trial < 200; trial++) {
    poc_mplan p;
    poc_mplan_init(&p, 256);
    int n = 1 + (int)(next() % 40);
    for (int i = 0; i < n; i++) {
      int a = (int)(next() % POC_MP_NSTEPS), b = (int)(next() % POC_MP_NSTEPS);
      poc_mplan_add(&p, "b", -1, (size_t)(next() % 5000), a < b ? a : b, a < b ? b : a);
    }
    char err[POC_ERR_LEN];
    CHECK(poc_mplan_solve(&p, err) == 0);
    CHECK(overlaps(&p) == 0);
    CHECK(poc_mplan_check(&p, err, sizeof err) == 0);
    CHECK(p.peak <= p.sum);
    /* the peak is at least what is live in any one step */
    for (int s = 0; s < POC_MP_NSTEPS; s++) {
      size_t live = 0;
      for (int i = 0; i < p.n; i++)
        if (p.buf[i].first <= s && s <= p.buf[i].last) live += p.buf[i].bytes;
      CHECK(p.peak >= live);
    }
    for (int i = 0; i < p.n; i++) CHECK(p.buf[i].offset % 256 == 0 && p.buf[i].offset + p.buf[i].bytes <= p.peak);
    poc_mplan_free(&p);
  }
}

static void test_sharing_and_verifier(void) {
  poc_mplan p;
  poc_mplan_init(&p, 256);
  int fwd = poc_mplan_add(&p, "logp", -1, 1000, POC_MP_HEAD, POC_MP_OBJ);
  int bwd = poc_mplan_add(&p, "dX", -1, 3000, POC_MP_HBWD, POC_MP_LBWD);
  int all = poc_mplan_add(&p, "x", -1, 512, POC_MP_FWD, POC_MP_LBWD);
  char err[POC_ERR_LEN];
  CHECK(poc_mplan_solve(&p, err) == 0);
  /* logp dies before dX is made: they share; x lives with both */
  CHECK(p.buf[fwd].offset == p.buf[bwd].offset);
  CHECK(p.peak == 3072 + 512);
  CHECK(p.sum == 1024 + 3072 + 512);
  CHECK(poc_mplan_check(&p, err, sizeof err) == 0);
  /* two buffers live together at one offset */
  p.buf[all].offset = p.buf[bwd].offset;
  CHECK(poc_mplan_check(&p, err, sizeof err) != 0);
  CHECK_MSG(strstr(err, "live together and overlap") != NULL, "%s", err);
  /* past the arena's end, and unaligned */
  p.buf[all].offset = p.peak;
  CHECK(poc_mplan_check(&p, err, sizeof err) != 0 && strstr(err, "past the arena"));
  p.buf[all].offset = 3072 + 8;
  CHECK(poc_mplan_check(&p, err, sizeof err) != 0 && strstr(err, "aligned"));
  /* a lifetime that ends before it starts */
  poc_mplan_add(&p, "bad", -1, 8, POC_MP_LBWD, POC_MP_FWD);
  CHECK(poc_mplan_solve(&p, err) != 0 && strstr(err, "before it is made"));
  poc_mplan_free(&p);
}

/* The CPU device with its alloc wrapped: the activation arena's size is recorded. */
static poc_dptr (*cpu_alloc)(poc_device *, size_t, const char *);
static size_t arena_bytes;
static poc_dptr rec_alloc(poc_device *d, size_t bytes, const char *what) {
  if (!strncmp(what, "activations for ", 16)) arena_bytes = bytes;
  return cpu_alloc(d, bytes, what);
}

static void arena_case(poc_device *d, int fp64, const poc_layout *lay, int trainable,
                       const poc_lora_cfg *lc, const poc_layout *alay, int tokens) {
  char err[POC_ERR_LEN];
  arena_bytes = 0;
  poc_model *m = lc ? poc_model_new_lora(d, lay, alay, lc, tokens, err)
                    : poc_model_new(d, lay, NULL, POC_DT_F32, trainable, tokens, err);
  CHECK_MSG(m != NULL, "%s", err);
  poc_mplan_model in;
  memset(&in, 0, sizeof in);
  in.cfg = lay->cfg;
  in.max_tokens = tokens;
  in.trainable = trainable || lc;
  in.lora = lc;
  poc_mplan_cpu(&in, fp64);
  poc_mplan p;
  poc_mplan_init(&p, 256);
  CHECK(poc_model_plan(&in, &p, err) == 0);
  CHECK(poc_mplan_solve(&p, err) == 0);
  CHECK(poc_mplan_check(&p, err, sizeof err) == 0);
  CHECK_MSG(p.peak == arena_bytes, "%s%s, %d tokens: planned %zu, allocated %zu",
            lc ? "lora" : trainable ? "trainable" : "frozen", fp64 ? " (cpu64)" : "", tokens, p.peak,
            arena_bytes);
  CHECK(p.peak <= p.sum);
  if (trainable || lc) CHECK_MSG(p.peak < p.sum, "nothing shared in a trainable model's arena");
  poc_mplan_free(&p);
  poc_model_free(m);
}

static void test_model_arena(const char *dir) {
  char err[POC_ERR_LEN];
  poc_config cfg;
  CHECK_MSG(poc_config_load(dir, &cfg, err) == 0, "%s", err);
  poc_layout lay, alay;
  CHECK(poc_layout_init(&lay, &cfg, err) == 0);
  poc_lora_cfg lc = {4, 8, 0.1, (1u << POC_LT_Q) | (1u << POC_LT_V) | (1u << POC_LT_DOWN)};
  CHECK(poc_lora_layout(&lay, &lc, &alay, err) == 0);
  for (int fp64 = 0; fp64 < 2; fp64++) {
    poc_device *d = poc_device_open(fp64 ? "cpu64" : "cpu", err);
    CHECK_MSG(d != NULL, "%s", err);
    if (!d) continue;
    cpu_alloc = d->alloc;
    d->alloc = rec_alloc;
    for (int tokens = 1; tokens <= 1500; tokens = tokens * 7 + 3) {
      arena_case(d, fp64, &lay, 1, NULL, NULL, tokens);
      arena_case(d, fp64, &lay, 0, NULL, NULL, tokens);
      arena_case(d, fp64, &lay, 1, &lc, &alay, tokens);
    }
    poc_device_close(d);
  }
  free(lay.tensors);
  free(alay.tensors);
}

int main(int argc, char **argv) {
  test_random();
  test_sharing_and_verifier();
  test_model_arena(argc > 1 ? argv[1] : "examples/tiny");
  return check_summary("passes.mplan");
}
