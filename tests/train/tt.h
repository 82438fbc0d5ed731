/* tt.h — shared pieces of the training-runtime tests: a tiny random Llama written to a
 * folder, random pairs data, and hand-written objectives standing in for generated code
 * (DPO, and a batch-coupled variant that needs the non-separable path). */
#ifndef POC_TT_H
#define POC_TT_H

#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "check.h"
#include "pocrt.h"
#include "program.h"

#define TT_VOCAB 32
#define TT_EOS 2

static inline poc_config tt_config(void) {
  poc_config c;
  memset(&c, 0, sizeof c);
  snprintf(c.model_type, sizeof c.model_type, "llama");
  c.vocab_size = TT_VOCAB;
  c.hidden_size = 16;
  c.intermediate_size = 24;
  c.num_hidden_layers = 2;
  c.num_attention_heads = 2;
  c.num_key_value_heads = 1;
  c.head_dim = 8;
  c.max_position_embeddings = 64;
  c.rope_theta = 10000;
  c.rms_norm_eps = 1e-5;
  c.bos_token_id = 1;
  c.eos_token_id = TT_EOS;
  snprintf(c.torch_dtype, sizeof c.torch_dtype, "float32");
  return c;
}

/* Random weights: linear ~ U(±1.7/√in), norms 1, embeddings U(±1). */
static inline int tt_make_model(const char *dir, uint64_t seed) {
  poc_config c = tt_config();
  poc_layout lay;
  char err[POC_ERR_LEN];
  if (poc_layout_init(&lay, &c, err)) {
    fprintf(stderr, "%s\n", err);
    return -1;
  }
  float *w = malloc(lay.n_params * sizeof *w);
  poc_rng r;
  poc_rng_seed(&r, seed);
  for (int i = 0; i < lay.n_tensors; i++) {
    const poc_tensor_info *t = &lay.tensors[i];
    double a = t->ndim == 2 ? 1.7 / sqrt((double)t->shape[1]) : 0;
    if (strstr(t->name, "embed_tokens")) a = 1;
    for (size_t j = 0; j < t->numel; j++)
      w[t->offset + j] = t->ndim == 1 ? 1.0f : (float)(a * (2 * poc_rng_uniform(&r) - 1));
  }
  int rc = poc_model_save_f32(dir, &lay, w, "F32", err);
  if (rc) fprintf(stderr, "%s\n", err);
  free(w);
  poc_layout_free(&lay);
  return rc;
}

static inline void tt_ids(FILE *f, poc_rng *r, int n, int eos_last) {
  fputc('[', f);
  for (int i = 0; i < n; i++) {
    int id = eos_last && i == n - 1 ? TT_EOS : 4 + (int)(poc_rng_next(r) % (TT_VOCAB - 4));
    fprintf(f, "%s%d", i ? "," : "", id);
  }
  fputc(']', f);
}

/* n pairs lines: prompt bos + 2..4 tokens, responses 1..4 tokens ending in eos, plus a
 * per-example field "margin" and per-token "chosen_scores". */
static inline int tt_write_pairs(const char *path, int n, uint64_t seed) {
  FILE *f = fopen(path, "w");
  if (!f) return -1;
  poc_rng r;
  poc_rng_seed(&r, seed);
  for (int i = 0; i < n; i++) {
    int lp = 2 + (int)(poc_rng_next(&r) % 3), lc = 1 + (int)(poc_rng_next(&r) % 4),
        lr = 1 + (int)(poc_rng_next(&r) % 4);
    fprintf(f, "{\"prompt\":[1");
    for (int j = 0; j < lp; j++) fprintf(f, ",%d", 4 + (int)(poc_rng_next(&r) % (TT_VOCAB - 4)));
    fprintf(f, "],\"chosen\":");
    tt_ids(f, &r, lc, 1);
    fprintf(f, ",\"rejected\":");
    tt_ids(f, &r, lr, 1);
    fprintf(f, ",\"margin\":%d,\"chosen_scores\":[", i % 3);
    for (int j = 0; j < lc; j++) fprintf(f, "%s%.2f", j ? "," : "", poc_rng_uniform(&r));
    fprintf(f, "]}\n");
  }
  return fclose(f);
}

/* ---- DPO by hand ------------------------------------------------------------------ */
/* Calls: 0 policy/chosen, 1 policy/rejected, 2 ref/chosen, 3 ref/rejected.
 *   h_e = (Sπw − Srw) − (Sπl − Srl),  loss_e = −log σ(β h_e) = softplus(−β h_e)
 *   ∂L/∂logp_πw,t = −β σ(−β h_e) / B_norm,  ∂L/∂logp_πl,t = +β σ(−β h_e) / B_norm
 * Reports: rewards/margins = β h_e, rewards/accuracies = [h_e > 0]. */
static inline double tt_sum(const double *x, const int32_t *off, int b) {
  double s = 0;
  for (int i = off[b]; i < off[b + 1]; i++) s += x[i];
  return s;
}

static inline double tt_softplus(double x) { return x > 0 ? x + log1p(exp(-x)) : log1p(exp(x)); }
static inline double tt_sigmoid(double x) { return 1 / (1 + exp(-x)); }

static inline void tt_h(const poc_objective_args *a, double *h) {
  for (int b = 0; b < a->B; b++)
    h[b] = (tt_sum(a->logp[0], a->off[0], b) - tt_sum(a->logp[2], a->off[2], b)) -
           (tt_sum(a->logp[1], a->off[1], b) - tt_sum(a->logp[3], a->off[3], b));
}

static inline void tt_seed(const poc_objective_args *a, int b, double g) {
  for (int i = a->off[0][b]; i < a->off[0][b + 1]; i++) a->dlogp[0][i] = g;
  for (int i = a->off[1][b]; i < a->off[1][b + 1]; i++) a->dlogp[1][i] = -g;
}

static inline int tt_dpo(const poc_objective_args *a) {
  double beta = a->knobs[0];
  double *h = malloc((size_t)a->B * sizeof *h);
  tt_h(a, h);
  for (int b = 0; b < a->B; b++) {
    a->loss[b] = tt_softplus(-beta * h[b]);
    a->report[0 * a->B + b] = beta * h[b];
    a->report[1 * a->B + b] = h[b] > 0;
    tt_seed(a, b, -beta * tt_sigmoid(-beta * h[b]) / a->B_norm);
  }
  free(h);
  return 0;
}

/* Batch-centred DPO: loss_e = softplus(−β (h_e − μ)), μ = batch_mean(h). Every example's
 * seed depends on the whole batch:
 *   ∂L/∂h_j = (1/B_norm) [ f'(h_j − μ) − (1/B) Σ_e f'(h_e − μ) ],  f'(x) = −β σ(−β x). */
static inline int tt_dpo_centred(const poc_objective_args *a) {
  double beta = a->knobs[0];
  double *h = malloc((size_t)a->B * sizeof *h);
  tt_h(a, h);
  double mu = 0, fbar = 0;
  for (int b = 0; b < a->B; b++) mu += h[b] / a->B;
  for (int b = 0; b < a->B; b++) fbar += -beta * tt_sigmoid(-beta * (h[b] - mu)) / a->B;
  for (int b = 0; b < a->B; b++) {
    a->loss[b] = tt_softplus(-beta * (h[b] - mu));
    a->report[b] = beta * (h[b] - mu);
    a->report[a->B + b] = h[b] > mu;
    tt_seed(a, b, (-beta * tt_sigmoid(-beta * (h[b] - mu)) - fbar) / a->B_norm);
  }
  free(h);
  return 0;
}

static const poc_segment tt_prompt[] = {{POC_SRC_PROMPT, 0, POC_OPEN, POC_OPEN, 0, NULL}};
static const poc_segment tt_chosen[] = {{POC_SRC_CHOSEN, 0, POC_OPEN, POC_OPEN, 0, NULL}};
static const poc_segment tt_rejected[] = {{POC_SRC_REJECTED, 0, POC_OPEN, POC_OPEN, 0, NULL}};
static const char *const tt_reports[] = {"rewards/margins", "rewards/accuracies"};
static const poc_knob tt_knobs[] = {{"beta", 0.5}};
static const poc_field_decl tt_fields[] = {{"margin", -1}, {"chosen_scores", POC_SRC_CHOSEN}};

/* A DPO program over the given model and data (ref hoisted unless hoist = 0). The
 * returned program and its arrays live in static storage: one program at a time. */
static inline poc_program *tt_program(const char *model, const char *data, const char *eval,
                                      int separable, int centred, int hoist) {
  static poc_model_decl models[2];
  static poc_call calls[4];
  static poc_program p;
  models[0] = (poc_model_decl){.name = "policy", .trainable = 1, .frozen_of = -1};
  models[1] = (poc_model_decl){.name = "ref", .frozen_of = 0};
  models[0].path = model;
  models[1].path = model;
  const char *keys[4] = {"policy/chosen", "policy/rejected", "ref/chosen", "ref/rejected"};
  for (int k = 0; k < 4; k++) {
    calls[k] = (poc_call){keys[k], k / 2, 1, 0, k < 2, k >= 2 && hoist, 1,
                          k % 2 ? tt_rejected : tt_chosen, 1, tt_prompt, 0, 0};
  }
  poc_train t = POC_TRAIN_DEFAULTS;
  t.lr = 1e-2;
  t.batch = 8;
  t.micro_batch = 4;
  t.max_len = 32;
  t.warmup = 0;
  t.schedule = POC_SCHED_CONSTANT;
  t.precision = POC_PREC_FP32;
  memset(&p, 0, sizeof p);
  p.name = "tt_dpo";
  p.source = "# tt_dpo.po: DPO written by hand\nloss = -logsigmoid(beta * h)\n";
  p.n_models = 2;
  p.models = models;
  p.data_kind = POC_DATA_PAIRS;
  p.data_path = data;
  p.n_fields = 2;
  p.fields = tt_fields;
  p.eval_path = eval;
  p.n_calls = 4;
  p.calls = calls;
  p.n_knobs = 1;
  p.knobs = tt_knobs;
  p.n_reports = 2;
  p.reports = tt_reports;
  p.train = t;
  p.separable = separable;
  p.objective = centred ? tt_dpo_centred : tt_dpo;
  return &p;
}

#endif
