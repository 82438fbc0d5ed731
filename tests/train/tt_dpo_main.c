/* tt_dpo_main.c — a training binary as generated code would make it, with the program
 * written by hand: DPO (or batch-centred DPO) over the model, data and evaluation set named
 * by the environment (TT_MODEL, TT_DATA, TT_EVAL), optionally with an anchor drawn from the
 * policy each step (TT_VARIANT=anchor). TT_LR, TT_ON_NONFINITE=skip, TT_CKPT_EVERY, TT_CKPT_MINUTES override the train
 * block. The flags are the binary's own. */
#include <stdlib.h>
#include <string.h>

#include "tt.h"
#include "cpu/cpu_features.h"

/* The anchor variant: calls 4 policy/a and 5 ref/a score a = sample(policy, prompt, 3
 * tokens); loss_e += λ (Σ_t π_t − ref_t)², so ∂L/∂π_t = 2λ (Σ_t π_t − ref_t) / B_norm. */
static int anchor_objective(const poc_objective_args *a) {
  tt_dpo(a);
  double lambda = 0.1;
  for (int b = 0; b < a->B; b++) {
    double d = tt_sum(a->logp[4], a->off[4], b) - tt_sum(a->logp[5], a->off[5], b);
    a->loss[b] += lambda * d * d;
    for (int i = a->off[4][b]; i < a->off[4][b + 1]; i++) a->dlogp[4][i] = 2 * lambda * d / a->B_norm;
  }
  return 0;
}

static const poc_segment anchor_seg[] = {{POC_SRC_ANCHOR, 0, POC_OPEN, POC_OPEN, 0, NULL}};
static const poc_anchor anchors[] = {{"a", 0, 1, tt_prompt, 3, 0.7, 0.9}};

int main(int argc, char **argv) {
  poc_cpu_start(argc, argv); /* the GEMM kernels the processor allows */
  const char *model = getenv("TT_MODEL"), *data = getenv("TT_DATA"), *eval = getenv("TT_EVAL");
  const char *variant = getenv("TT_VARIANT");
  if (!model || !data) {
    fprintf(stderr, "tt_dpo: set TT_MODEL and TT_DATA\n");
    return 2;
  }
  if (!variant) variant = "dpo";
  poc_program *p = tt_program(model, data, eval && *eval ? eval : NULL, 1,
                              !strcmp(variant, "centred"), 1);
  if (!strcmp(variant, "centred")) p->separable = 0;
  static poc_call calls[6];
  if (!strcmp(variant, "anchor")) {
    memcpy(calls, p->calls, 4 * sizeof *calls);
    calls[4] = (poc_call){"policy/a", 0, 1, 0, 1, 0, 1, anchor_seg, 1, tt_prompt, 0, 0};
    calls[5] = (poc_call){"ref/a", 1, 1, 0, 0, 0, 1, anchor_seg, 1, tt_prompt, 0, 0};
    p->calls = calls;
    p->n_calls = 6;
    p->n_anchors = 1;
    p->anchors = anchors;
    p->objective = anchor_objective;
  }
  p->train.batch = 4;
  p->train.micro_batch = 2;
  p->train.epochs = 3;
  p->train.lr = 5e-3;
  p->train.schedule = POC_SCHED_COSINE;
  p->train.warmup = 0.2;
  p->train.eval_tokens = 0;
  p->train.log_every = 1;
  p->train.ckpt_every = 5;
  /* train-block overrides for the reliability tests */
  const char *lr = getenv("TT_LR"), *nf = getenv("TT_ON_NONFINITE");
  if (lr) p->train.lr = atof(lr);
  if (nf && !strcmp(nf, "skip")) p->train.on_nonfinite = POC_NONFINITE_SKIP;
  const char *ce = getenv("TT_CKPT_EVERY"), *cm = getenv("TT_CKPT_MINUTES");
  if (ce) p->train.ckpt_every = atoi(ce);
  if (cm) p->train.ckpt_minutes = atof(cm);
  return poc_train_main(p, argc, argv);
}
