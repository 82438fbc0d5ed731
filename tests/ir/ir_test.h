/* ir_test.h — helpers the IR test programs share: hand-built graphs with model-call
 * leaves, deterministic inputs, and evaluation of the batch-mean loss. */
#ifndef POC_IR_TEST_H
#define POC_IR_TEST_H

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "ir.h"

/* A graph with two models (policy trainable, ref frozen) and the sequences chosen and
 * rejected, as lowering would set them up. */
static inline ir_graph *t_graph(void) {
  ir_graph *g = ir_new(NULL);
  g->models = ir_alloc(g, 2 * sizeof *g->models);
  g->models[0] = (ir_model){.name = "policy", .trainable = true, .of = -1};
  g->models[1] = (ir_model){.name = "ref", .trainable = false, .of = 0};
  g->nmodels = 2;
  ir_dom_seq(g, "prompt");
  ir_dom_seq(g, "chosen");
  ir_dom_seq(g, "rejected");
  g->reports = ir_alloc(g, 8 * sizeof *g->reports);
  return g;
}

static inline int t_dom(ir_graph *g, const char *name) { return ir_dom_seq(g, name); }

/* A model call; ctx_tok >= 0 adds a one-token literal context so calls can differ. */
static inline int t_call(ir_graph *g, ir_op op, int model, const char *seq, int ctx_tok) {
  ir_call *c = ir_alloc(g, sizeof *c);
  c->target = t_dom(g, seq);
  if (ctx_tok >= 0) {
    ir_ctxpart *p = ir_alloc(g, sizeof *p);
    int64_t *t = ir_alloc(g, sizeof *t);
    *t = ctx_tok;
    p->dom = -1;
    p->toks = t;
    p->ntoks = 1;
    p->text = ir_fmt(g, "[%d]", ctx_tok);
    c->ctx = p;
    c->nctx = 1;
  }
  ir_node n;
  memset(&n, 0, sizeof n);
  n.op = op;
  for (int k = 0; k < IR_MAX_IN; k++) n.in[k] = -1;
  n.level = IR_LTOKEN;
  n.dom = c->target;
  n.idx = model;
  n.hi = -1;
  n.call = c;
  n.key = ctx_tok >= 0 ? ir_fmt(g, "%s/%s|[%d]", g->models[model].name, seq, ctx_tok)
                       : ir_fmt(g, "%s/%s", g->models[model].name, seq);
  return ir_push(g, n);
}

/* Inputs: B examples, per-domain token counts, and a value for every call and field,
 * kept by key so they survive the passes renumbering nodes. */
#define T_B 3
typedef struct t_inputs {
  int len[8][T_B];        /* by domain id */
  int nkeys;
  const char *keys[16];
  double *vals[16];
  double knobs[8];
} t_inputs;

static inline uint64_t t_rand(uint64_t *s) {
  *s = *s * 6364136223846793005ULL + 1442695040888963407ULL;
  return *s >> 11;
}

/* Values for key: uniform in [lo, hi), one per token of dom. */
static inline void t_fill(t_inputs *in, const char *key, int dom, double lo, double hi, uint64_t seed) {
  int n = 0;
  for (int i = 0; i < T_B; i++) n += in->len[dom][i];
  double *v = calloc((size_t)n + 1, sizeof *v);
  for (int j = 0; j < n; j++) v[j] = lo + (hi - lo) * (double)(t_rand(&seed) % 1000003) / 1000003.0;
  in->keys[in->nkeys] = key;
  in->vals[in->nkeys++] = v;
}

static inline void t_inputs_free(t_inputs *in) {
  for (int k = 0; k < in->nkeys; k++) free(in->vals[k]);
}

/* The leaf array ir_eval wants, found by key on the graph as it is now. */
static inline const double **t_leaves(const ir_graph *g, t_inputs *in) {
  const double **leaf = calloc((size_t)g->n + 1, sizeof *leaf);
  for (int i = 0; i < g->n; i++) {
    const ir_node *n = &g->nodes[i];
    if (n->op != IR_LOGP && n->op != IR_ENTROPY && n->op != IR_FIELD) continue;
    char key[256]; /* entropy calls are keyed "entropy:" + their call's key here */
    snprintf(key, sizeof key, "%s%s", n->op == IR_ENTROPY ? "entropy:" : "",
             n->op == IR_FIELD ? g->fields[n->idx].name : n->key);
    for (int k = 0; k < in->nkeys; k++)
      if (!strcmp(in->keys[k], key)) leaf[i] = in->vals[k];
  }
  return leaf;
}

/* The inputs entry a call node reads, -1 if none. */
static inline int t_slot(const ir_graph *g, const t_inputs *in, int node) {
  const ir_node *n = &g->nodes[node];
  char key[256];
  snprintf(key, sizeof key, "%s%s", n->op == IR_ENTROPY ? "entropy:" : "", n->key);
  for (int k = 0; k < in->nkeys; k++)
    if (!strcmp(in->keys[k], key)) return k;
  return -1;
}

static inline ir_val *t_eval(const ir_graph *g, t_inputs *in, char *err, size_t errlen) {
  int *dl[8];
  for (int d = 0; d < 8; d++) dl[d] = d < g->ndoms && g->doms[d].kind != IR_DOM_PREFIX &&
                                       g->doms[d].kind != IR_DOM_SLICE ? in->len[d] : NULL;
  const double **leaf = t_leaves(g, in);
  ir_env env = {.B = T_B, .seed = 7, .knobs = in->knobs, .domlen = dl, .leaf = leaf};
  ir_val *v = ir_eval(g, &env, err, errlen);
  free(leaf);
  return v;
}

static inline double t_loss(const ir_graph *g, t_inputs *in) {
  char err[256];
  ir_val *v = t_eval(g, in, err, sizeof err);
  if (!v) return NAN;
  double s = 0;
  for (int i = 0; i < T_B; i++) s += v[g->loss].v[i];
  ir_vals_free(g, v);
  return s / T_B;
}

#endif
