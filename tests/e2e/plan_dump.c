/* plan_dump.c — prints a generated plan.c's poc_program as JSON, so tests can check what
 * the code generator told the runtime (and that every string survived escaping byte for
 * byte). Linked with plan.c compiled with -Dpoc_train_main=poc_dump_main:
 *
 *     dump   → {"name", "source", "models", "data_kind", "data_path", "eval_path",
 *               "fields", "calls", "anchors", "knobs", "reports", "train", "separable"}
 */
#include <cjson/cJSON.h>
#include <stdio.h>
#include <stdlib.h>

#include "program.h"

int poc_dump_main(const poc_program *prog, int argc, char **argv);

static cJSON *segments(int n, const poc_segment *s) {
  static const char *const src[] = {"prompt", "chosen", "rejected", "response", "anchor", "literal"};
  cJSON *arr = cJSON_CreateArray();
  for (int i = 0; i < n; i++) {
    cJSON *o = cJSON_CreateObject();
    cJSON_AddStringToObject(o, "src", src[s[i].src]);
    if (s[i].src == POC_SRC_ANCHOR) cJSON_AddNumberToObject(o, "anchor", s[i].anchor);
    if (s[i].lo != POC_OPEN) cJSON_AddNumberToObject(o, "lo", s[i].lo);
    if (s[i].hi != POC_OPEN) cJSON_AddNumberToObject(o, "hi", s[i].hi);
    if (s[i].src == POC_SRC_LITERAL) {
      cJSON *lit = cJSON_AddArrayToObject(o, "lit");
      for (int k = 0; k < s[i].n_lit; k++) cJSON_AddItemToArray(lit, cJSON_CreateNumber(s[i].lit[k]));
    }
    cJSON_AddItemToArray(arr, o);
  }
  return arr;
}

int poc_dump_main(const poc_program *p, int argc, char **argv) {
  (void)argc;
  (void)argv;
  cJSON *o = cJSON_CreateObject();
  cJSON_AddStringToObject(o, "name", p->name);
  cJSON_AddStringToObject(o, "source", p->source);
  cJSON *models = cJSON_AddArrayToObject(o, "models");
  for (int m = 0; m < p->n_models; m++) {
    cJSON *x = cJSON_CreateObject();
    cJSON_AddStringToObject(x, "name", p->models[m].name);
    cJSON_AddStringToObject(x, "path", p->models[m].path);
    cJSON_AddNumberToObject(x, "trainable", p->models[m].trainable);
    cJSON_AddNumberToObject(x, "frozen_of", p->models[m].frozen_of);
    cJSON_AddItemToArray(models, x);
  }
  cJSON_AddStringToObject(o, "data_kind", p->data_kind == POC_DATA_POINTS ? "points" : "pairs");
  if (p->data_path) cJSON_AddStringToObject(o, "data_path", p->data_path);
  if (p->eval_path) cJSON_AddStringToObject(o, "eval_path", p->eval_path);
  cJSON *fields = cJSON_AddArrayToObject(o, "fields");
  for (int f = 0; f < p->n_fields; f++) {
    cJSON *x = cJSON_CreateObject();
    cJSON_AddStringToObject(x, "name", p->fields[f].name);
    cJSON_AddNumberToObject(x, "seq", p->fields[f].seq);
    cJSON_AddItemToArray(fields, x);
  }
  cJSON *calls = cJSON_AddArrayToObject(o, "calls");
  for (int c = 0; c < p->n_calls; c++) {
    const poc_call *pc = &p->calls[c];
    cJSON *x = cJSON_CreateObject();
    cJSON_AddStringToObject(x, "key", pc->key);
    cJSON_AddNumberToObject(x, "model", pc->model);
    cJSON_AddNumberToObject(x, "want_logp", pc->want_logp);
    cJSON_AddNumberToObject(x, "want_entropy", pc->want_entropy);
    cJSON_AddNumberToObject(x, "trainable", pc->trainable);
    cJSON_AddNumberToObject(x, "hoisted", pc->hoisted);
    cJSON_AddItemToObject(x, "target", segments(pc->n_target, pc->target));
    cJSON_AddItemToObject(x, "context", segments(pc->n_context, pc->context));
    cJSON_AddItemToArray(calls, x);
  }
  cJSON *anchors = cJSON_AddArrayToObject(o, "anchors");
  for (int k = 0; k < p->n_anchors; k++) {
    const poc_anchor *an = &p->anchors[k];
    cJSON *x = cJSON_CreateObject();
    cJSON_AddStringToObject(x, "name", an->name);
    cJSON_AddNumberToObject(x, "model", an->model);
    cJSON_AddNumberToObject(x, "tokens", an->tokens);
    cJSON_AddNumberToObject(x, "temperature", an->temperature);
    cJSON_AddNumberToObject(x, "top_p", an->top_p);
    cJSON_AddItemToObject(x, "context", segments(an->n_context, an->context));
    cJSON_AddItemToArray(anchors, x);
  }
  cJSON *knobs = cJSON_AddObjectToObject(o, "knobs");
  for (int k = 0; k < p->n_knobs; k++) cJSON_AddNumberToObject(knobs, p->knobs[k].name, p->knobs[k].value);
  cJSON *reports = cJSON_AddArrayToObject(o, "reports");
  for (int r = 0; r < p->n_reports; r++) cJSON_AddItemToArray(reports, cJSON_CreateString(p->reports[r]));
  const poc_train *t = &p->train;
  cJSON *tr = cJSON_AddObjectToObject(o, "train");
  cJSON_AddNumberToObject(tr, "lr", t->lr);
  cJSON_AddNumberToObject(tr, "schedule", t->schedule);
  cJSON_AddNumberToObject(tr, "warmup", t->warmup);
  cJSON_AddNumberToObject(tr, "batch", t->batch);
  cJSON_AddNumberToObject(tr, "micro_batch", t->micro_batch);
  cJSON_AddNumberToObject(tr, "epochs", t->epochs);
  cJSON_AddNumberToObject(tr, "max_len", t->max_len);
  cJSON_AddNumberToObject(tr, "clip", t->clip);
  cJSON_AddNumberToObject(tr, "precision", t->precision);
  cJSON_AddNumberToObject(tr, "seed", (double)t->seed);
  cJSON_AddNumberToObject(tr, "weight_decay", t->weight_decay);
  cJSON_AddNumberToObject(tr, "adam_beta1", t->adam_beta1);
  cJSON_AddNumberToObject(tr, "adam_beta2", t->adam_beta2);
  cJSON_AddNumberToObject(tr, "adam_eps", t->adam_eps);
  cJSON_AddNumberToObject(tr, "log_every", t->log_every);
  cJSON_AddNumberToObject(tr, "ckpt_every", t->ckpt_every);
  cJSON_AddNumberToObject(tr, "eval_every", t->eval_every);
  cJSON_AddNumberToObject(tr, "eval_tokens", t->eval_tokens);
  cJSON_AddNumberToObject(tr, "steps", t->steps);
  cJSON_AddNumberToObject(tr, "on_nonfinite", t->on_nonfinite);
  cJSON_AddNumberToObject(tr, "ckpt_minutes", t->ckpt_minutes);
  cJSON_AddNumberToObject(tr, "order", t->order);
  cJSON_AddNumberToObject(o, "separable", p->separable);
  char *s = cJSON_Print(o);
  puts(s);
  free(s);
  cJSON_Delete(o);
  return 0;
}
