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

/* batch_sort's order of x[0..B): perm[k] is the example holding the k-th smallest value,
 * NaN after every number, ties in example order — compiler/ir.c's ir_batch_order. A
 * bottom-up merge sort (stable, O(B log B)); tmp holds B ints. */
static inline int poc_k_before(const double *x, int i, int j) {
  int ni = isnan(x[i]) != 0, nj = isnan(x[j]) != 0;
  if (ni != nj) return nj;
  if (!ni && x[i] != x[j]) return x[i] < x[j];
  return i < j;
}

static inline void poc_k_batch_order(const double *x, int B, int *perm, int *tmp) {
  for (int i = 0; i < B; i++) perm[i] = i;
  for (int w = 1; w < B; w *= 2) {
    for (int lo = 0; lo < B; lo += 2 * w) {
      int mid = lo + w < B ? lo + w : B, hi = lo + 2 * w < B ? lo + 2 * w : B;
      int i = lo, j = mid, k = lo;
      while (i < mid && j < hi) tmp[k++] = poc_k_before(x, perm[j], perm[i]) ? perm[j++] : perm[i++];
      while (i < mid) tmp[k++] = perm[i++];
      while (j < hi) tmp[k++] = perm[j++];
    }
    memcpy(perm, tmp, (size_t)B * sizeof *perm);
  }
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
