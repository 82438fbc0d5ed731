/* pair_buf.h — what the emulation's kernel tests share: a buffer on both devices, the
 * cpu device C (the reference) and the CUDA one G, filled from one host array (rounded to
 * bf16 first where the buffer is act, so both devices start from the same values), and the
 * random numbers that fill it. A test sets C and G before its first buffer; PAIR_SEED,
 * defined before the include, seeds its sequence. */
#ifndef POC_PAIR_BUF_H
#define POC_PAIR_BUF_H

#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "device.h"

#ifndef PAIR_SEED
#define PAIR_SEED 0x9e3779b97f4a7c15ull
#endif

static poc_device *C, *G; /* the cpu device (reference) and the CUDA one */

static uint64_t rs = PAIR_SEED;
static double urand(void) { /* [-1, 1) */
  rs ^= rs << 13;
  rs ^= rs >> 7;
  rs ^= rs << 17;
  return (double)(rs >> 11) / 4503599627370496.0 - 1;
}

static float bf(float f) { /* to the nearest bf16, ties to even */
  uint32_t u;
  memcpy(&u, &f, 4);
  u += 0x7fffu + ((u >> 16) & 1u);
  u &= 0xffff0000u;
  memcpy(&f, &u, 4);
  return f;
}

typedef struct {
  poc_dptr c, g;
  size_t n;
  int act;
  float *h; /* what was put (bf16-rounded where act) */
} pb;

static poc_dtype ty(const poc_device *d, int act) { return act ? d->act : d->acc; }

static pb pb_new(size_t n, int act) {
  pb b = {0, 0, n, act, calloc(n ? n : 1, sizeof(float))};
  b.c = C->alloc(C, n * poc_dtype_size(ty(C, act)), "test buffer");
  b.g = G->alloc(G, n * poc_dtype_size(ty(G, act)), "test buffer");
  return b;
}

static void pb_put(pb *b) {
  if (b->act)
    for (size_t i = 0; i < b->n; i++) b->h[i] = bf(b->h[i]);
  C->put(C, b->c, ty(C, b->act), b->h, POC_DT_F32, b->n);
  G->put(G, b->g, ty(G, b->act), b->h, POC_DT_F32, b->n);
}

/* uniform in [-scale, scale) */
static pb pb_rand(size_t n, int act, double scale) {
  pb b = pb_new(n, act);
  for (size_t i = 0; i < n; i++) b.h[i] = (float)(scale * urand());
  pb_put(&b);
  return b;
}

static pb pb_const(size_t n, int act, float v) {
  pb b = pb_new(n, act);
  for (size_t i = 0; i < n; i++) b.h[i] = v;
  pb_put(&b);
  return b;
}

static pb pb_nan(size_t n, int act) { return pb_const(n, act, NAN); }

static void pb_free(pb *b) {
  C->free(C, b->c);
  G->free(G, b->g);
  free(b->h);
  memset(b, 0, sizeof *b);
}

#endif
