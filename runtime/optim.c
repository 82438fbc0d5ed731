/* optim.c — learning-rate schedules (AdamW and the gradient norm are the model's, model.c).
 *
 * The schedules are transformers' own (get_cosine_schedule_with_warmup,
 * get_linear_schedule_with_warmup, get_constant_schedule_with_warmup), with warmup steps
 * counted as its Trainer counts them, so a run logs the learning rates a transformers or
 * TRL run with the same settings logs, bit for bit (tests/trl_train). The rate is a
 * function of the step and the schedule's length alone, so a resumed run continues it
 * exactly.
 */
#include <math.h>

#include "train_internal.h"

/* W = ⌈warmup · total⌉ for a fraction (warmup < 1), else warmup's whole part: a ratio
 * rounds up, so any warmup > 0 gives at least one step at lr 0. Not capped at total: a
 * warmup longer than the run just never reaches the peak, as in transformers. */
int64_t trn_warmup_steps(const poc_train *t, int64_t total) {
  if (t->warmup <= 0) return 0;
  if (t->warmup < 1) return (int64_t)ceil(t->warmup * (double)total);
  return (int64_t)t->warmup;
}

/* Step s (1-based) of T with W warmup steps; i = s − 1 updates precede it:
 *   i < W:  lr · i / W                                     (lr 0 on the first update)
 *   else:   p = (i − W) / max(1, T − W)
 *           cosine   lr · max(0, ½(1 + cos πp))
 *           linear   lr · max(0, (T − i) / max(1, T − W))
 *           constant lr
 * The first step after warmup runs at the peak; the last step of a decaying schedule runs
 * at lr · (1 − cos(π/(T − W)))/2 (cosine) or lr/(T − W) (linear), never at 0. The
 * factor is computed in double in transformers' operation order and multiplied by lr last,
 * as torch's LambdaLR does. */
double trn_lr(const poc_train *t, int64_t step, int64_t total) {
  int64_t w = trn_warmup_steps(t, total), i = step - 1;
  if (i < 0) i = 0;
  if (i < w) return t->lr * ((double)i / (double)(w > 1 ? w : 1));
  double span = (double)(total - w > 1 ? total - w : 1), f;
  switch (t->schedule) {
  case POC_SCHED_COSINE:
    f = 0.5 * (1.0 + cos(M_PI * ((double)(i - w) / span)));
    break;
  case POC_SCHED_LINEAR: f = (double)(total - i) / span; break;
  default: return t->lr;
  }
  return t->lr * (f > 0 ? f : 0.0);
}
