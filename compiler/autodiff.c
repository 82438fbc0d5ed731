/* autodiff.c — reverse mode over the IR. The differentiated quantity is the batch mean
 * of the per-example loss, L = (1/B) Σ_i loss_i, so the seed of `loss` is 1/B per
 * example. Walking the nodes from the loss down, each node's adjoint is pushed into its
 * inputs by one rule per op (rule()); every rule builds IR, so the backward graph is
 * ordinary nodes that the passes clean up, the interpreter runs, and a code generator
 * can emit. Only inputs that carry IR_F_TRAIN receive gradient: sg(), comparisons,
 * floor, counts and masks stop it. The outputs are dL/dlogp (and dL/dentropy) for every
 * call of a trainable model; a frozen model's calls get none. */
#include <string.h>
#include <stdlib.h>

#include "ir.h"

typedef struct ad {
  ir_graph *g;
  int *adj;         /* node → its accumulated adjoint, -1 while none */
  po_loc loc;       /* of the node being differentiated: backward nodes point there */
} ad;

static int B2(ad *A, ir_op op, int x, int y) { return ir_binary(A->g, op, x, y, A->loc); }
static int U1(ad *A, ir_op op, int x) { return ir_unary(A->g, op, x, A->loc); }
static int K(ad *A, double v) { return ir_const(A->g, v, A->loc); }
static int W3(ad *A, int c, int x, int y) { return ir_ternary(A->g, IR_WHERE, c, x, y, A->loc); }
static int NB(ad *A) { return ir_leaf(A->g, IR_NBATCH, IR_LBATCH, -1, 0, A->loc); }

/* x / y where y > 0, else 0: for norms and standard deviations that may vanish. */
static int safe_div(ad *A, int x, int y) {
  return W3(A, B2(A, IR_GT, y, K(A, 0)), B2(A, IR_DIV, x, y), K(A, 0));
}

/* Adds contribution c (computed at the consumer's level and shape) to x's adjoint,
 * summing over what was broadcast: tokens into an example, examples into a batch. */
static void acc(ad *A, int x, int c) {
  ir_graph *g = A->g;
  ir_level lx = g->nodes[x].level;
  if (lx == IR_LCONST) return;
  if (lx == IR_LTOKEN) {
    ir_dom_kind k = g->doms[g->nodes[x].dom].kind;
    /* vectors of one prefix or slice domain may differ in length */
    if ((k == IR_DOM_PREFIX || k == IR_DOM_SLICE) && g->nodes[c].op != IR_FIT)
      c = ir_fit(g, c, x, 0, A->loc);
  } else {
    if (g->nodes[c].level == IR_LTOKEN) c = ir_reduce(g, IR_SUM, c, -1, A->loc);
    if (lx == IR_LBATCH && g->nodes[c].level == IR_LEXAMPLE) c = ir_reduce(g, IR_BSUM, c, -1, A->loc);
  }
  A->adj[x] = A->adj[x] < 0 ? c : B2(A, IR_ADD, A->adj[x], c);
}

static bool wants(ad *A, const ir_node *n, int k) {
  return ir_input_differentiable(n, k) && (A->g->nodes[n->in[k]].flags & IR_F_TRAIN);
}

/* cos(a, b) over their common prefix m: with na, nb the norms there and c = cos,
 *   dc/da_t = b_t/(na·nb) − c·a_t/na²   (and symmetrically for b)                    */
static int cos_grad(ad *A, int id, int g, int a, int b) {
  int m = B2(A, IR_MUL, a, b);
  int ap = ir_fit(A->g, a, m, 0, A->loc), bp = ir_fit(A->g, b, m, 0, A->loc);
  int na = ir_reduce(A->g, IR_NORM, ap, -1, A->loc), nb = ir_reduce(A->g, IR_NORM, bp, -1, A->loc);
  int k1 = safe_div(A, g, B2(A, IR_MUL, na, nb));
  int k2 = safe_div(A, B2(A, IR_MUL, g, id), B2(A, IR_MUL, na, na));
  int bk = ir_bcast(A->g, k1, m, A->loc);
  return B2(A, IR_SUB, B2(A, IR_MUL, bk, bp), B2(A, IR_MUL, ir_bcast(A->g, k2, m, A->loc), ap));
}

/* One rule per op: push adjoint g of node id into its inputs. */
static int rule(ad *A, int id, int g, char *err, size_t errlen) {
  ir_graph *G = A->g;
  ir_node n = G->nodes[id]; /* a copy: builders may move the array */
  int a = n.in[0], b = n.in[1], c = n.in[2];
  bool da = n.nin > 0 && wants(A, &n, 0), db = n.nin > 1 && wants(A, &n, 1),
       dc = n.nin > 2 && wants(A, &n, 2);
  switch (n.op) {
  case IR_ADD:
    if (da) acc(A, a, g);
    if (db) acc(A, b, g);
    break;
  case IR_SUB:
    if (da) acc(A, a, g);
    if (db) acc(A, b, U1(A, IR_NEG, g));
    break;
  case IR_MUL:
    if (da) acc(A, a, B2(A, IR_MUL, g, b));
    if (db) acc(A, b, B2(A, IR_MUL, g, a));
    break;
  case IR_DIV: /* d(a/b) = da/b − (a/b)·db/b */
    if (da) acc(A, a, B2(A, IR_DIV, g, b));
    if (db) acc(A, b, U1(A, IR_NEG, B2(A, IR_DIV, B2(A, IR_MUL, g, id), b)));
    break;
  case IR_NEG:
    if (da) acc(A, a, U1(A, IR_NEG, g));
    break;
  case IR_EXP:
    if (da) acc(A, a, B2(A, IR_MUL, g, id));
    break;
  case IR_LOG:
    if (da) acc(A, a, B2(A, IR_DIV, g, a));
    break;
  case IR_LOG1P:
    if (da) acc(A, a, B2(A, IR_DIV, g, B2(A, IR_ADD, K(A, 1), a)));
    break;
  case IR_LOG1MEXP: /* y = log(1 − eᵃ): dy/da = −eᵃ/(1 − eᵃ) = −exp(a − y) */
    if (da) acc(A, a, U1(A, IR_NEG, B2(A, IR_MUL, g, U1(A, IR_EXP, B2(A, IR_SUB, a, id)))));
    break;
  case IR_SIGMOID: /* σ' = σ(1 − σ) */
    if (da) acc(A, a, B2(A, IR_MUL, B2(A, IR_MUL, g, id), B2(A, IR_SUB, K(A, 1), id)));
    break;
  case IR_LOGSIGMOID: /* d log σ(a) = σ(−a) */
    if (da) acc(A, a, B2(A, IR_MUL, g, U1(A, IR_SIGMOID, U1(A, IR_NEG, a))));
    break;
  case IR_SOFTPLUS:
    if (da) acc(A, a, B2(A, IR_MUL, g, U1(A, IR_SIGMOID, a)));
    break;
  case IR_TANH: /* 1 − tanh² */
    if (da) acc(A, a, B2(A, IR_MUL, g, B2(A, IR_SUB, K(A, 1), B2(A, IR_MUL, id, id))));
    break;
  case IR_ABS: /* sign(a), 0 at 0 */
    if (da)
      acc(A, a, B2(A, IR_MUL, g, B2(A, IR_SUB, B2(A, IR_GT, a, K(A, 0)), B2(A, IR_LT, a, K(A, 0)))));
    break;
  case IR_SQRT:
    if (da) acc(A, a, B2(A, IR_DIV, g, B2(A, IR_MUL, K(A, 2), id)));
    break;
  case IR_POW: /* d aᵇ = b·aᵇ⁻¹ da + aᵇ·log a db (the latter only where a > 0) */
    if (da) acc(A, a, B2(A, IR_MUL, g, B2(A, IR_MUL, b, B2(A, IR_POW, a, B2(A, IR_SUB, b, K(A, 1))))));
    if (db)
      acc(A, b, B2(A, IR_MUL, g, W3(A, B2(A, IR_GT, a, K(A, 0)), B2(A, IR_MUL, id, U1(A, IR_LOG, a)), K(A, 0))));
    break;
  case IR_MIN: /* ties go to the first argument, as the forward picks it */
    if (da) acc(A, a, B2(A, IR_MUL, g, B2(A, IR_LE, a, b)));
    if (db) acc(A, b, B2(A, IR_MUL, g, B2(A, IR_GT, a, b)));
    break;
  case IR_MAX:
    if (da) acc(A, a, B2(A, IR_MUL, g, B2(A, IR_GE, a, b)));
    if (db) acc(A, b, B2(A, IR_MUL, g, B2(A, IR_LT, a, b)));
    break;
  case IR_WHERE: /* to the branch chosen */
    if (db) acc(A, b, W3(A, a, g, K(A, 0)));
    if (dc) acc(A, c, W3(A, a, K(A, 0), g));
    break;
  case IR_LT: case IR_LE: case IR_GT: case IR_GE: case IR_EQ: case IR_NE:
  case IR_FLOOR: case IR_SG: case IR_LEN: case IR_ARGMAX:
    break; /* zero gradient */
  case IR_BSORT: /* y_k = a_{p(k)}: the adjoint goes back through the permutation,
                    dL/da_{p(k)} = g_k, with p the order of a (ties by example) */
    if (da) acc(A, a, ir_reduce(G, IR_BUNSORT, g, a, A->loc));
    break;
  case IR_SUM:
    if (da) acc(A, a, ir_bcast(G, g, a, A->loc));
    break;
  case IR_MEAN: /* d mean = 1/len per token */
    if (da) acc(A, a, ir_bcast(G, safe_div(A, g, ir_reduce(G, IR_LEN, a, -1, A->loc)), a, A->loc));
    break;
  case IR_TMAX: /* to the first maximum */
    if (da) {
      ir_node m = G->nodes[a];
      m.op = IR_ARGMAX;
      m.nin = 1;
      m.in[0] = a;
      m.in[1] = m.in[2] = m.in[3] = -1;
      m.call = NULL;
      m.key = NULL;
      m.flags = 0;
      m.idx = 0;
      m.hi = -1;
      m.num = 0;
      m.loc = A->loc;
      int onehot = ir_push(G, m);
      acc(A, a, B2(A, IR_MUL, ir_bcast(G, g, a, A->loc), onehot));
    }
    break;
  case IR_DOT: /* over the common prefix: the product is as long as the shorter */
    if (da) acc(A, a, B2(A, IR_MUL, ir_bcast(G, g, a, A->loc), b));
    if (db) acc(A, b, B2(A, IR_MUL, ir_bcast(G, g, b, A->loc), a));
    break;
  case IR_NORM: /* d‖a‖ = a/‖a‖ */
    if (da) acc(A, a, B2(A, IR_MUL, ir_bcast(G, safe_div(A, g, id), a, A->loc), a));
    break;
  case IR_COS:
    if (da) acc(A, a, cos_grad(A, id, g, a, b));
    if (db) acc(A, b, cos_grad(A, id, g, b, a));
    break;
  case IR_BSUM:
    if (da) acc(A, a, ir_bcast(G, g, a, A->loc));
    break;
  case IR_BMEAN:
    if (da) acc(A, a, ir_bcast(G, B2(A, IR_DIV, g, NB(A)), a, A->loc));
    break;
  case IR_BSTD: /* population σ: dσ/dx_i = (x_i − μ)/(B·σ) */
    if (da) {
      int mu = ir_reduce(G, IR_BMEAN, a, -1, A->loc);
      int k = safe_div(A, g, B2(A, IR_MUL, NB(A), id));
      acc(A, a, B2(A, IR_MUL, k, B2(A, IR_SUB, a, mu)));
    }
    break;
  case IR_SLICE: /* back into place, zeros outside the slice */
    if (da) acc(A, a, ir_fit(G, g, a, n.idx, A->loc));
    break;
  case IR_BCAST:
    if (da) acc(A, a, g);
    break;
  case IR_LOGP:
  case IR_ENTROPY:
  case IR_LOGSUMSQ: /* never reached: it carries no train flag (ir_infer_flags) */
  case IR_REWARD:
    break; /* the outputs */
  default:
    snprintf(err, errlen, "%%%d %s: no gradient rule", id, ir_op_info(n.op)->name);
    return -1;
  }
  return 0;
}

int ir_autodiff(ir_graph *g, char *err, size_t errlen) {
  if (g->loss < 0) {
    snprintf(err, errlen, "no loss to differentiate");
    return -1;
  }
  ir_infer_flags(g);
  int n0 = g->n;
  ad A = {.g = g, .loc = g->nodes[g->loss].loc};
  A.adj = malloc((size_t)n0 * sizeof *A.adj);
  if (!A.adj) return -1;
  for (int i = 0; i < n0; i++) A.adj[i] = -1;
  if (g->nodes[g->loss].flags & IR_F_TRAIN)
    A.adj[g->loss] = ir_bcast(g, B2(&A, IR_DIV, K(&A, 1), NB(&A)), g->loss, A.loc);
  for (int i = g->loss; i >= 0; i--) {
    if (A.adj[i] < 0 || !(g->nodes[i].flags & IR_F_TRAIN)) continue;
    A.loc = g->nodes[i].loc;
    if (rule(&A, i, A.adj[i], err, errlen)) {
      free(A.adj);
      return -1;
    }
  }
  int ncalls = 0;
  for (int i = 0; i < n0; i++)
    ncalls += (g->nodes[i].op == IR_LOGP || g->nodes[i].op == IR_ENTROPY ||
               g->nodes[i].op == IR_REWARD) &&
              g->models[g->nodes[i].idx].trainable;
  g->grads = ir_alloc(g, (size_t)(ncalls + 1) * sizeof *g->grads);
  g->ngrads = 0;
  for (int i = 0; i < n0; i++) {
    const ir_node *n = &g->nodes[i];
    if ((n->op != IR_LOGP && n->op != IR_ENTROPY && n->op != IR_REWARD) ||
        !g->models[n->idx].trainable)
      continue;
    int d = A.adj[i];
    if (d < 0) { /* every path is stopped: an explicit zero */
      A.loc = n->loc;
      d = ir_bcast(g, K(&A, 0), i, A.loc);
    }
    g->grads[g->ngrads++] = (ir_grad){.call = i, .grad = d};
  }
  for (int i = n0; i < g->n; i++) g->nodes[i].flags |= IR_F_GRAD;
  free(A.adj);
  g->differentiated = true;
  ir_infer_flags(g);
  return ir_verify(g, err, errlen);
}
