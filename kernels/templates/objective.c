/* ---- kernels/templates/objective.c: helpers every generated objective kernel uses ----
 * (copied verbatim into kernels.c by poc build; the semantics are those of
 * compiler/eval.c, the float64 interpreter behind `poc probe`) */
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "pocrt.h"
#include "program.h"

#ifndef M_LN2
#define M_LN2 0.69314718055994530942
#endif

static inline int poc_k_min(int x, int y) { return x < y ? x : y; }
static inline int poc_k_max(int x, int y) { return x > y ? x : y; }

/* Tokens in x[lo:hi] of a vector of n tokens (hi < 0: open); never negative. */
static inline int poc_k_slice_len(int n, int lo, int hi) {
  int h = hi < 0 || hi > n ? n : hi;
  return h > lo ? h - lo : 0;
}

/* pick(y, cnt): floor(cnt) positions (clamped to [0, len]) drawn by poc_pick from the
 * stream of (seed, pick index, example) — the same draw `poc probe` makes. */
static inline void poc_k_pick(uint64_t seed, int pick, int64_t example, int len, double cnt,
                              unsigned char *mask) {
  int k = cnt >= len ? len : cnt > 0 ? (int)floor(cnt) : 0;
  memset(mask, 0, (size_t)len);
  if (k > 0) poc_pick(seed, pick, example, len, k, mask);
}

/* A value over the batch, for the unfused kernels: one number (constant, batch), B
 * numbers (per example), or B ragged token vectors (v + off[b], len[b] entries). */
typedef struct poc_k_val {
  int *len, *off;
  double *v;
} poc_k_val;

static inline int poc_k_scalar(poc_k_val *x, int n) {
  x->v = calloc((size_t)(n > 0 ? n : 1), sizeof *x->v);
  return x->v ? 0 : -1;
}

static inline int poc_k_token(poc_k_val *x, int B, const int *len) {
  x->len = malloc((size_t)(B > 0 ? B : 1) * sizeof *x->len);
  x->off = malloc((size_t)(B + 1) * sizeof *x->off);
  if (!x->len || !x->off) return -1;
  x->off[0] = 0;
  for (int b = 0; b < B; b++) {
    x->len[b] = len[b];
    x->off[b + 1] = x->off[b] + len[b];
  }
  return poc_k_scalar(x, x->off[B]);
}

static inline void poc_k_free(poc_k_val *x) {
  free(x->len);
  free(x->off);
  free(x->v);
}
/* ---- end of the template ---------------------------------------------------------- */
