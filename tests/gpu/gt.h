/* gt.h — shared pieces of the device tests: small configurations, random weights and
 * packs, and relative-error helpers. */
#ifndef POC_GT_H
#define POC_GT_H

#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "check.h"
#include "device.h"
#include "../model/mt.h"

/* The model tests' tiny configurations, with room for longer packs. */
static inline poc_config gt_config(int H, int F, int V, int L, int nh, int nkv, int hd, int bias,
                                   int tied, int llama3) {
  poc_config c = mt_config(H, F, V, L, nh, nkv, hd, bias, tied, llama3);
  c.max_position_embeddings = 512;
  return c;
}

static inline double gt_uniform(poc_rng *r) { return 2 * poc_rng_uniform(r) - 1; }

/* Linear weights ~ U(±1.5/√in), norms around 1, biases and embeddings smaller. With
 * bf16 set, each weight is rounded to the nearest bf16 value, so a bf16 device holds
 * exactly the weights the fp32 reference uses. */
static inline void gt_weights(const poc_layout *lay, float *w, uint64_t seed, int bf16) {
  poc_rng r;
  poc_rng_seed(&r, seed);
  for (int i = 0; i < lay->n_tensors; i++) {
    const poc_tensor_info *t = &lay->tensors[i];
    float *p = w + t->offset;
    int norm = strstr(t->name, "norm") != NULL, bias = strstr(t->name, "bias") != NULL;
    double a = t->ndim == 2 ? 1.5 / sqrt((double)t->shape[1]) : 0.3;
    if (strstr(t->name, "embed_tokens")) a = 1;
    for (size_t j = 0; j < t->numel; j++) {
      float v = (float)(norm ? 1 + 0.3 * gt_uniform(&r) : bias ? 0.3 * gt_uniform(&r) : a * gt_uniform(&r));
      if (bf16) {
        uint32_t u;
        memcpy(&u, &v, 4);
        u += 0x7fffu + ((u >> 16) & 1u);
        u &= 0xffff0000u;
        memcpy(&v, &u, 4);
      }
      p[j] = v;
    }
  }
}

typedef struct {
  poc_pack p;
  int32_t tok[4096], ss[65], ts[64];
} gt_pack;

static inline void gt_pack_make(gt_pack *mp, int n, const int *ctx, const int *tgt, int V,
                                uint64_t seed) {
  poc_rng r;
  poc_rng_seed(&r, seed);
  int at = 0;
  for (int s = 0; s < n; s++) {
    mp->ss[s] = at;
    mp->ts[s] = at + ctx[s];
    for (int j = 0; j < ctx[s] + tgt[s]; j++) mp->tok[at++] = (int32_t)(poc_rng_next(&r) % V);
  }
  mp->ss[n] = at;
  mp->p.n_seq = n;
  mp->p.n_tok = at;
  mp->p.tokens = mp->tok;
  mp->p.seq_start = mp->ss;
  mp->p.tgt_start = mp->ts;
}

/* ‖a − b‖ / ‖b‖ (∞ when anything is NaN) */
static inline double gt_rel(const double *a, const double *b, size_t n) {
  double d = 0, s = 0;
  for (size_t i = 0; i < n; i++) {
    if (a[i] != a[i] || b[i] != b[i]) return INFINITY;
    d += (a[i] - b[i]) * (a[i] - b[i]);
    s += b[i] * b[i];
  }
  return s > 0 ? sqrt(d / s) : sqrt(d);
}

static inline void gt_fill(double *a, size_t n, double v) {
  for (size_t i = 0; i < n; i++) a[i] = v;
}

#endif
