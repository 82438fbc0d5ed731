/* optim.c — AdamW with fp32 master weights, learning-rate schedules, gradient norm.
 *
 * The master weights are the training weights themselves on the CPU (fp32); m and v are
 * fp32 too, so a checkpoint stores them exactly and a resumed run continues bit for bit.
 *
 * Weight decay is decoupled (Loshchilov & Hutter): w ← w·(1 − lr·λ) before the Adam step,
 * not added to the gradient, so it is not rescaled by 1/√v. It applies to the 2-D tensors
 * (projections, embeddings, the head) only: RMSNorm gains are 1-D scales whose natural
 * value is 1, and pulling them towards 0 would fight the normalisation rather than
 * regularise; biases likewise carry no capacity worth shrinking.
 */
#include <math.h>

#include "train_internal.h"

int64_t trn_warmup_steps(const poc_train *t, int64_t total) {
  if (t->warmup <= 0) return 0;
  int64_t w = t->warmup < 1 ? (int64_t)llround(t->warmup * (double)total) : (int64_t)t->warmup;
  return w > total ? total : w;
}

/* Step s (1-based) of T with W warmup steps, i = s − 1:
 *   i < W:  lr · (i + 1) / W                         (the first step already moves)
 *   else:   p = (i − W) / (T − W) ∈ [0, 1)
 *           cosine lr · ½(1 + cos πp), linear lr · (1 − p), constant lr
 * so the first step after warmup runs at the peak and the decay never reaches 0 on a
 * step that is actually taken. */
double trn_lr(const poc_train *t, int64_t step, int64_t total) {
  int64_t w = trn_warmup_steps(t, total), i = step - 1;
  if (i < 0) i = 0;
  if (i < w) return t->lr * (double)(i + 1) / (double)w;
  if (total <= w) return t->lr;
  double p = (double)(i - w) / (double)(total - w);
  if (p > 1) p = 1;
  switch (t->schedule) {
  case POC_SCHED_COSINE: return t->lr * 0.5 * (1 + cos(M_PI * p));
  case POC_SCHED_LINEAR: return t->lr * (1 - p);
  default: return t->lr;
  }
}
