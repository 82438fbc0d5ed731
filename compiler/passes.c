/* passes.c — the rewrites between lowering and code generation, each a named function
 * followed by the verifier:
 *
 *   fold          numbers combine at compile time (knobs do not: they are runtime values)
 *   cse           structurally equal nodes become one: one forward per distinct call
 *   dce           what neither the loss, a report nor a gradient reads is dropped
 *   hoist         frozen-model calls on data alone, and what follows from them, are
 *                 computed once before training and cached per example
 *   batch         calls of one model that run together share one packed forward
 *   separability  whether any batch reduction or sort carries gradient into the loss
 *
 * and, in fuse.c, recompute and fuse: the objective kernel's stages and groups.
 */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "ir.h"

static int *identity_map(const ir_graph *g) {
  int *m = malloc(((size_t)g->n + 1) * sizeof *m);
  if (!m) {
    fprintf(stderr, "poc: out of memory\n");
    exit(1);
  }
  for (int i = 0; i < g->n; i++) m[i] = i;
  return m;
}

void ir_replace(ir_graph *g, const int *map0) {
  g->fusion.ngroups = 0; /* the groups name node ids: fuse runs again */
  /* a replacement always has a smaller id, so one walk in order resolves chains */
  int *map = identity_map(g);
  for (int i = 0; i < g->n; i++) map[i] = map0[i] == i ? i : map[map0[i]];
  for (int i = 0; i < g->n; i++)
    for (int k = 0; k < g->nodes[i].nin; k++) g->nodes[i].in[k] = map[g->nodes[i].in[k]];
  if (g->loss >= 0) g->loss = map[g->loss];
  for (int r = 0; r < g->nreports; r++) g->reports[r].node = map[g->reports[r].node];
  for (int k = 0; k < g->ngrads; k++) {
    g->grads[k].call = map[g->grads[k].call];
    g->grads[k].grad = map[g->grads[k].grad];
  }
  for (int p = 0; p < g->nplan; p++)
    for (int k = 0; k < g->plan[p].ncalls; k++) g->plan[p].calls[k] = map[g->plan[p].calls[k]];
  free(map);
}

/* ---- fold ------------------------------------------------------------------------ */

static bool is_num(const ir_graph *g, int x, double v) {
  return g->nodes[x].op == IR_CONST && g->nodes[x].num == v;
}

int ir_fold(ir_graph *g, char *err, size_t errlen) {
  (void)err;
  (void)errlen;
  ir_infer_flags(g); /* sg folds away only where nothing trainable flows */
  int *map = identity_map(g);
  for (int i = 0; i < g->n; i++) {
    ir_node *n = &g->nodes[i];
    ir_class cls = ir_op_info(n->op)->cls;
    if (cls != IR_ELEM && cls != IR_CTL) continue;
    bool consts = true;
    double v[3] = {0, 0, 0};
    for (int k = 0; k < n->nin; k++) {
      const ir_node *x = &g->nodes[n->in[k]];
      consts &= x->op == IR_CONST;
      v[k] = x->num;
    }
    if (consts) {
      double r = ir_scalar(n->op, v[0], v[1], v[2]);
      if (isfinite(r)) { /* log(-1) stays for the run to report, not the compiler to hide */
        n->op = IR_CONST;
        n->num = r;
        n->nin = 0;
        for (int k = 0; k < IR_MAX_IN; k++) n->in[k] = -1;
        n->level = IR_LCONST;
        n->dom = -1;
      }
      continue;
    }
    /* identities that keep the other operand's level and shape */
    int a = n->in[0], b = n->in[1], keep = -1;
    switch (n->op) {
    case IR_ADD:
      if (is_num(g, b, 0)) keep = a;
      else if (is_num(g, a, 0)) keep = b;
      break;
    case IR_SUB:
    case IR_DIV:
      if (is_num(g, b, n->op == IR_SUB ? 0 : 1)) keep = a;
      break;
    case IR_MUL:
      if (is_num(g, b, 1)) keep = a;
      else if (is_num(g, a, 1)) keep = b;
      break;
    case IR_NEG:
      if (g->nodes[a].op == IR_NEG) keep = g->nodes[a].in[0];
      break;
    case IR_SG: /* nothing to stop */
      if (!(g->nodes[a].flags & IR_F_TRAIN)) keep = a;
      break;
    default: break;
    }
    if (keep >= 0 && g->nodes[keep].level == n->level && g->nodes[keep].dom == n->dom) map[i] = keep;
  }
  ir_replace(g, map);
  free(map);
  return 0;
}

/* ---- cse ------------------------------------------------------------------------- */

static uint64_t mix(uint64_t h, uint64_t x) {
  h ^= x + 0x9e3779b97f4a7c15ULL + (h << 6) + (h >> 2);
  return h * 0xff51afd7ed558ccdULL;
}

static uint64_t dbits(double d) {
  uint64_t u;
  if (d == 0) d = 0; /* -0 and 0 fold together */
  memcpy(&u, &d, sizeof u);
  return u;
}

static bool same_call(const ir_call *a, const ir_call *b) {
  if (!a || !b) return a == b;
  if (a->target != b->target || a->nctx != b->nctx) return false;
  for (int k = 0; k < a->nctx; k++) {
    const ir_ctxpart *x = &a->ctx[k], *y = &b->ctx[k];
    if (x->dom != y->dom || x->ntoks != y->ntoks) return false;
    if (x->ntoks && memcmp(x->toks, y->toks, (size_t)x->ntoks * sizeof *x->toks)) return false;
  }
  return true;
}

static bool same_node(const ir_node *a, const ir_node *b) {
  if (a->op != b->op || a->nin != b->nin || a->level != b->level || a->dom != b->dom ||
      dbits(a->num) != dbits(b->num) || a->idx != b->idx || a->hi != b->hi)
    return false;
  for (int k = 0; k < a->nin; k++)
    if (a->in[k] != b->in[k]) return false;
  return same_call(a->call, b->call);
}

static uint64_t node_hash(const ir_node *n) {
  uint64_t h = mix((uint64_t)n->op, (uint64_t)n->nin);
  h = mix(h, (uint64_t)n->level * 1000003u + (uint64_t)(n->dom + 1));
  h = mix(h, dbits(n->num));
  h = mix(h, (uint64_t)(uint32_t)n->idx * 31u + (uint64_t)(uint32_t)n->hi);
  for (int k = 0; k < n->nin; k++) h = mix(h, (uint64_t)n->in[k]);
  if (n->call) h = mix(h, (uint64_t)n->call->target * 17u + (uint64_t)n->call->nctx);
  return h;
}

int ir_cse(ir_graph *g, char *err, size_t errlen) {
  (void)err;
  (void)errlen;
  size_t cap = 16;
  while (cap < (size_t)g->n * 2) cap *= 2;
  int *table = malloc(cap * sizeof *table);
  int *map = identity_map(g);
  if (!table) return -1;
  for (size_t i = 0; i < cap; i++) table[i] = -1;
  for (int i = 0; i < g->n; i++) {
    ir_node *n = &g->nodes[i];
    for (int k = 0; k < n->nin; k++) n->in[k] = map[n->in[k]];
    if (n->op == IR_SAMPLE) continue; /* each sample() is its own draw */
    size_t h = (size_t)node_hash(n) & (cap - 1);
    while (table[h] >= 0 && !same_node(&g->nodes[table[h]], n)) h = (h + 1) & (cap - 1);
    if (table[h] >= 0) map[i] = table[h];
    else table[h] = i;
  }
  ir_replace(g, map);
  free(map);
  free(table);
  return 0;
}

/* ---- dce ------------------------------------------------------------------------- */

int ir_dce(ir_graph *g, char *err, size_t errlen) {
  (void)err;
  (void)errlen;
  char *live = calloc((size_t)g->n + 1, 1);
  int *map = identity_map(g);
  if (!live) return -1;
  if (g->loss >= 0) live[g->loss] = 1;
  for (int r = 0; r < g->nreports; r++) live[g->reports[r].node] = 1;
  for (int k = 0; k < g->ngrads; k++) live[g->grads[k].call] = live[g->grads[k].grad] = 1;
  for (int i = g->n - 1; i >= 0; i--)
    if (live[i])
      for (int k = 0; k < g->nodes[i].nin; k++) live[g->nodes[i].in[k]] = 1;
  int m = 0;
  for (int i = 0; i < g->n; i++) {
    if (!live[i]) {
      map[i] = -1;
      continue;
    }
    ir_node n = g->nodes[i];
    for (int k = 0; k < n.nin; k++) n.in[k] = map[n.in[k]];
    map[i] = m;
    g->nodes[m++] = n;
  }
  g->n = m;
  if (g->loss >= 0) g->loss = map[g->loss];
  for (int r = 0; r < g->nreports; r++) g->reports[r].node = map[g->reports[r].node];
  for (int k = 0; k < g->ngrads; k++) {
    g->grads[k].call = map[g->grads[k].call];
    g->grads[k].grad = map[g->grads[k].grad];
  }
  for (int d = 0; d < g->ndoms; d++)
    if (g->doms[d].kind == IR_DOM_ANCHOR && g->doms[d].sample >= 0)
      g->doms[d].sample = map[g->doms[d].sample];
  g->nplan = 0; /* call ids moved: the batching pass plans again */
  g->fusion.ngroups = 0;
  free(map);
  free(live);
  return 0;
}

/* ---- hoist ----------------------------------------------------------------------- */

int ir_hoist(ir_graph *g, char *err, size_t errlen) {
  (void)err;
  (void)errlen;
  ir_infer_flags(g);
  for (int i = 0; i < g->n; i++) {
    ir_node *n = &g->nodes[i];
    n->flags &= ~(unsigned)(IR_F_HOIST | IR_F_CACHE);
    bool h = false;
    ir_class cls = ir_op_info(n->op)->cls;
    if (ir_model_call(n->op) && !g->models[n->idx].trainable && n->nin == 0) {
      h = true; /* frozen weights, data tokens: the same every step */
    } else if (n->level >= IR_LEXAMPLE && cls != IR_LEAF && cls != IR_CALL && cls != IR_BATR &&
               cls != IR_BPERM) {
      /* per-example work on hoisted values and data alone; batch reductions and sorts
         are not, since the batch they reduce over or order changes every step */
      bool any = false, all = true;
      for (int k = 0; k < n->nin; k++) {
        unsigned f = g->nodes[n->in[k]].flags;
        any |= (f & IR_F_HOIST) != 0;
        all &= (f & (IR_F_HOIST | IR_F_DATA)) != 0 && g->nodes[n->in[k]].level != IR_LBATCH;
      }
      h = any && all;
    }
    if (h) n->flags |= IR_F_HOIST;
  }
  /* what per-step work reads is what the cache must hold */
  for (int i = 0; i < g->n; i++) {
    const ir_node *n = &g->nodes[i];
    if (n->flags & IR_F_HOIST) continue;
    for (int k = 0; k < n->nin; k++)
      if (g->nodes[n->in[k]].flags & IR_F_HOIST) g->nodes[n->in[k]].flags |= IR_F_CACHE;
  }
  if (g->loss >= 0 && (g->nodes[g->loss].flags & IR_F_HOIST)) g->nodes[g->loss].flags |= IR_F_CACHE;
  for (int r = 0; r < g->nreports; r++)
    if (g->nodes[g->reports[r].node].flags & IR_F_HOIST) g->nodes[g->reports[r].node].flags |= IR_F_CACHE;
  return 0;
}

/* ---- batch ----------------------------------------------------------------------- */

int ir_batch_plan(ir_graph *g, char *err, size_t errlen) {
  (void)err;
  (void)errlen;
  g->nplan = 0;
  g->plan = ir_alloc(g, (size_t)(3 * g->nmodels + 1) * sizeof *g->plan);
  /* per model: the hoisted pass before training, the per-step pass, and calls that
     read this step's anchors (after generation) */
  for (int m = 0; m < g->nmodels; m++)
    for (int stage = 0; stage < 3; stage++) {
      int cnt = 0;
      for (int pass = 0; pass < 2; pass++) {
        int *calls = NULL;
        if (pass == 1) {
          if (!cnt) break;
          calls = ir_alloc(g, (size_t)cnt * sizeof *calls);
          g->plan[g->nplan] = (ir_batch){.model = m, .hoisted = stage == 0,
                                         .after_sample = stage == 2, .ncalls = cnt, .calls = calls};
          cnt = 0;
        }
        for (int i = 0; i < g->n; i++) {
          const ir_node *n = &g->nodes[i];
          if (!ir_model_call(n->op) || n->idx != m) continue;
          int s = (n->flags & IR_F_HOIST) ? 0 : (n->flags & IR_F_SAMPLED) ? 2 : 1;
          if (s != stage) continue;
          if (calls) calls[cnt] = i;
          cnt++;
        }
        if (pass == 1) g->nplan++;
      }
    }
  return 0;
}

/* ---- separability ---------------------------------------------------------------- */

int ir_separability(ir_graph *g, char *err, size_t errlen) {
  (void)err;
  (void)errlen;
  ir_infer_flags(g);
  g->separable = true;
  if (g->loss < 0) return 0;
  char *up = calloc((size_t)g->n + 1, 1);
  if (!up) return -1;
  up[g->loss] = 1;
  for (int i = g->loss; i >= 0; i--) {
    if (!up[i]) continue;
    const ir_node *n = &g->nodes[i];
    ir_class cls = ir_op_info(n->op)->cls;
    if ((cls == IR_BATR || cls == IR_BPERM) && (n->flags & IR_F_TRAIN)) g->separable = false;
    for (int k = 0; k < n->nin; k++)
      if (ir_input_differentiable(n, k)) up[n->in[k]] = 1;
  }
  free(up);
  return 0;
}

/* ---- the pipeline ---------------------------------------------------------------- */

static int run(ir_graph *g, const ir_pass *p, FILE *trace, char *err, size_t errlen) {
  char e[512] = "";
  if (p->run(g, e, sizeof e)) {
    snprintf(err, errlen, "pass %s failed: %s", p->name, e);
    return -1;
  }
  ir_infer_flags(g);
  if (ir_verify(g, e, sizeof e)) {
    snprintf(err, errlen, "the verifier rejects the graph after %s: %s", p->name, e);
    return -1;
  }
  if (trace) fprintf(trace, "  %-13s %d nodes\n", p->name, g->n);
  return 0;
}

int ir_pipeline(ir_graph *g, FILE *trace, char *err, size_t errlen) {
  static const ir_pass passes[] = {
      {"fold", ir_fold},   {"cse", ir_cse},          {"dce", ir_dce},
      {"hoist", ir_hoist}, {"separability", ir_separability},
      {"autodiff", ir_autodiff},
      {"fold", ir_fold},   {"cse", ir_cse},          {"dce", ir_dce},
      {"hoist", ir_hoist}, {"batch", ir_batch_plan},
      {"recompute", ir_recompute}, {"fuse", ir_fuse},
  };
  char e[512];
  if (ir_verify(g, e, sizeof e)) {
    snprintf(err, errlen, "the verifier rejects the lowered graph: %s", e);
    return -1;
  }
  for (size_t i = 0; i < sizeof passes / sizeof passes[0]; i++)
    if (run(g, &passes[i], trace, err, errlen)) return -1;
  return 0;
}
