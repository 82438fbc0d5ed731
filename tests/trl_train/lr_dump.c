/* lr_dump.c — the learning-rate schedule as the training loop computes it (trn_lr), for
 * schedule_check.py to compare with transformers' schedulers without training.
 *
 * stdin: one schedule a line, "SCHEDULE WARMUP TOTAL LR" (SCHEDULE: cosine, linear or
 * constant; WARMUP as the train block's `warmup`). stdout: per line, the warmup steps
 * and then the rate of steps 1..TOTAL, space-separated, %.17g (every bit of the double).
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "train_internal.h"

int main(void) {
  char sched[32];
  double warmup, lr;
  long long total;
  int line = 0, n;
  while ((n = scanf("%31s %lf %lld %lf", sched, &warmup, &total, &lr)) == 4) {
    line++;
    poc_train t = POC_TRAIN_DEFAULTS;
    if (!strcmp(sched, "cosine")) t.schedule = POC_SCHED_COSINE;
    else if (!strcmp(sched, "linear")) t.schedule = POC_SCHED_LINEAR;
    else if (!strcmp(sched, "constant")) t.schedule = POC_SCHED_CONSTANT;
    else {
      fprintf(stderr, "lr_dump: <stdin>:%d: unknown schedule '%s' (cosine, linear, constant)\n",
              line, sched);
      return 2;
    }
    if (warmup < 0 || total < 1 || !(lr >= 0)) {
      fprintf(stderr, "lr_dump: <stdin>:%d: want warmup >= 0, total >= 1, lr >= 0\n", line);
      return 2;
    }
    t.warmup = warmup;
    t.lr = lr;
    printf("%lld", (long long)trn_warmup_steps(&t, total));
    for (long long s = 1; s <= total; s++) printf(" %.17g", trn_lr(&t, s, total));
    putchar('\n');
  }
  if (n != EOF) {
    fprintf(stderr, "lr_dump: <stdin>:%d: want \"SCHEDULE WARMUP TOTAL LR\"\n", line + 1);
    return 2;
  }
  return 0;
}
