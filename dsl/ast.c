/* ast.c — building the tree from the grammar actions.
 *
 * Every expression node is allocated with its depth beside it (the longest path to a
 * leaf). Depth is bounded here, once, so that every later stage may walk the tree
 * recursively: a subtree deeper than PO_MAX_EXPR_DEPTH is reported and replaced by a
 * number. */
#include <math.h>
#include <stddef.h>
#include <string.h>

#include "front.h"

typedef struct node {
  po_expr e; /* first: a po_expr * is a node * */
  int depth;
} node;

int po_ast_depth(const po_expr *e) { return e ? ((const node *)e)->depth : 0; }

po_expr *po_ast_leaf(po_expr_kind kind, po_loc loc) {
  node *n = po_alloc(sizeof *n);
  n->e.kind = kind;
  n->e.loc = loc;
  n->depth = 1;
  return &n->e;
}

static int max2(int a, int b) { return a > b ? a : b; }

/* Gives `e` its depth from its children, or cuts it off when too deep. */
static po_expr *bounded(po_lex *lx, po_expr *e, int child_depth) {
  if (child_depth + 1 <= PO_MAX_EXPR_DEPTH) {
    ((node *)e)->depth = child_depth + 1;
    return e;
  }
  if (!lx->depth_reported) {
    po_error(lx->diag, e->loc, "expression is nested too deeply (more than %d levels)",
             PO_MAX_EXPR_DEPTH);
    lx->depth_reported = true;
  }
  return po_ast_leaf(PO_E_NUM, e->loc);
}

po_expr *po_ast_unary(po_lex *lx, po_op op, po_expr *x, po_loc loc) {
  po_expr *e = po_ast_leaf(PO_E_UNARY, loc);
  e->op = op;
  e->lhs = x;
  return bounded(lx, e, po_ast_depth(x));
}

po_expr *po_ast_binary(po_lex *lx, po_op op, po_expr *l, po_expr *r, po_loc loc) {
  po_expr *e = po_ast_leaf(PO_E_BINARY, loc);
  e->op = op;
  e->lhs = l;
  e->rhs = r;
  return bounded(lx, e, max2(po_ast_depth(l), po_ast_depth(r)));
}

po_expr *po_ast_given(po_lex *lx, po_expr *target, po_expr *ctx, po_loc loc) {
  po_expr *e = po_ast_leaf(PO_E_GIVEN, loc);
  e->lhs = target;
  e->rhs = ctx;
  return bounded(lx, e, max2(po_ast_depth(target), po_ast_depth(ctx)));
}

po_expr *po_ast_slice(po_lex *lx, po_expr *base, po_expr *lo, po_expr *hi, po_loc loc) {
  po_expr *e = po_ast_leaf(PO_E_SLICE, loc);
  e->lhs = base;
  e->lo = lo;
  e->hi = hi;
  return bounded(lx, e, max2(po_ast_depth(base), max2(po_ast_depth(lo), po_ast_depth(hi))));
}

po_arg *po_ast_arg(const char *name, po_loc name_loc, po_expr *value) {
  po_arg *a = po_alloc(sizeof *a);
  a->name = name;
  a->name_loc = name_loc;
  a->value = value;
  return a;
}

void *po_ast_array(po_vec *v, size_t size) {
  char *out = po_alloc(size * (size_t)(v->n ? v->n : 1));
  for (int i = 0; i < v->n; i++) memcpy(out + size * (size_t)i, v->items[i], size);
  return out;
}

po_expr *po_ast_call(po_lex *lx, const char *callee, po_vec *args, po_loc loc) {
  po_expr *e = po_ast_leaf(PO_E_CALL, loc);
  e->str = callee;
  e->nargs = args->n;
  e->args = po_ast_array(args, sizeof(po_arg));
  int d = 0;
  for (int i = 0; i < e->nargs; i++) d = max2(d, po_ast_depth(e->args[i].value));
  return bounded(lx, e, d);
}

/* [q, k, v]: the names become positional arguments, each a NAME leaf */
po_expr *po_ast_list(po_lex *lx, po_vec *names, po_loc loc) {
  po_expr *e = po_ast_leaf(PO_E_LIST, loc);
  e->nargs = names->n;
  e->args = po_alloc(sizeof(po_arg) * (size_t)(names->n ? names->n : 1));
  for (int i = 0; i < names->n; i++) {
    po_expr *x = names->items[i];
    e->args[i] = (po_arg){NULL, x->loc, x};
  }
  return bounded(lx, e, 1);
}

/* [2, 13]: token ids are integers in [0, 2^31) */
po_expr *po_ast_tokens(po_lex *lx, po_vec *nums, po_loc loc) {
  po_expr *e = po_ast_leaf(PO_E_TOKENS, loc);
  if (nums->n == 0) po_error(lx->diag, loc, "empty token literal (write at least one token id)");
  e->ntoks = nums->n;
  e->toks = po_alloc(sizeof(int64_t) * (size_t)(nums->n ? nums->n : 1));
  for (int i = 0; i < nums->n; i++) {
    po_expr *x = nums->items[i];
    if (x->num != floor(x->num) || x->num >= 2147483648.0)
      po_error(lx->diag, x->loc, "token id must be an integer from 0 to 2147483647");
    else
      e->toks[i] = (int64_t)x->num;
  }
  return e;
}
