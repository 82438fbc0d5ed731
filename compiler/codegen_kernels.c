/* codegen_kernels.c — kernels.c: the objective kernel poc_objective (runtime/program.h)
 * from the differentiated IR, forward and backward, in double, group by group as the
 * fuse pass (fuse.c) laid them out.
 *
 * Fused (the default). Each stage is one loop over the examples; inside it the stage's
 * groups in order: per-example statements, and loops over one domain's tokens. Between
 * stages the batch groups reduce, and batch_sort (or its adjoint) permutes, from
 * per-example arrays, exactly as compiler/eval.c does. Per-token values live in locals;
 * only a value read by a later loop, or read at an offset (slices), goes to a
 * per-example scratch vector. A per-token value another stage needs is computed there
 * again (the recompute pass's mark), a per-example one is read from its array (the
 * store mark). Every group starts with a comment naming it (grp3_margin_L12: the
 * .po value it computes and its line), every statement with its IR node and line.
 *
 * Token vectors keep eval.c's lengths: a call's values are as long as the runtime says,
 * an elementwise op is as long as its shortest input (masks ANDed), fit and bcast take
 * their shape argument's length. Lengths are *classes* (the minimum over a set of
 * atoms, an atom being a call's or a field's count, possibly sliced), computed once per
 * example; a statement whose class is not its loop's bound is guarded.
 *
 * Unfused (--unfused: the fuse pass off, one group per node). One function per group
 * over the whole batch, named after it, every value in its own buffer: the textbook
 * baseline, and a second implementation of the same semantics that the end-to-end
 * tests compare against the fused one. */
#define _GNU_SOURCE /* open_memstream where _POSIX_C_SOURCE alone does not declare it */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "codegen.h"


/* ---- length classes ---------------------------------------------------------------- */

typedef struct atom {
  int call, field;   /* one of them >= 0 */
  int lo, hi;        /* slice of it; hi -1 open */
} atom;

typedef struct lclass {
  int n;
  int *atoms;        /* sorted atom ids */
  int base;          /* a sliced singleton: the class of the unsliced atom; else -1 */
} lclass;

typedef struct kg {
  const cg_prog *p;
  const ir_graph *g;
  atom *atoms;
  int natoms;
  lclass *cls;
  int ncls;
  int *cls_of;       /* token node → class; TOKR → length reduced over; SEQLEN, PICK: domain */
  int nstages;       /* g->fusion.nstages */
  /* per stage */
  char *need, *mat, *stored;
  int *blk, *pos;
  int *bdom;
  int nblk;
  char *cls_used;      /* [ncls + 1], grows with the classes */
  char *lp_used, *en_used, *ls_used, *dl_used, *de_used, *fd_used;
  char *mat_slot;       /* materialised in any stage: has a scratch vector */
  int stage;
} kg;

static int atom_intern(kg *K, atom a) {
  for (int i = 0; i < K->natoms; i++)
    if (!memcmp(&K->atoms[i], &a, sizeof a)) return i;
  K->atoms = realloc(K->atoms, (size_t)(K->natoms + 1) * sizeof *K->atoms);
  if (!K->atoms) exit(1);
  K->atoms[K->natoms] = a;
  return K->natoms++;
}

static int cmp_int(const void *x, const void *y) {
  int a = *(const int *)x, b = *(const int *)y;
  return (a > b) - (a < b);
}

static int cls_intern_set(kg *K, int *ids, int n, int base) {
  qsort(ids, (size_t)n, sizeof *ids, cmp_int);
  int m = 0;
  for (int i = 0; i < n; i++)
    if (!m || ids[m - 1] != ids[i]) ids[m++] = ids[i];
  for (int c = 0; c < K->ncls; c++)
    if (K->cls[c].n == m && !memcmp(K->cls[c].atoms, ids, (size_t)m * sizeof *ids)) return c;
  K->cls = realloc(K->cls, (size_t)(K->ncls + 1) * sizeof *K->cls);
  if (!K->cls) exit(1);
  int *a = ir_xcalloc((size_t)m, sizeof *a);
  memcpy(a, ids, (size_t)m * sizeof *a);
  K->cls[K->ncls] = (lclass){.n = m, .atoms = a, .base = base};
  K->cls_used = realloc(K->cls_used, (size_t)K->ncls + 2);
  if (!K->cls_used) exit(1);
  K->cls_used[K->ncls] = K->cls_used[K->ncls + 1] = 0;
  return K->ncls++;
}

/* The singleton class of an atom; a sliced atom's unsliced one is interned first. */
static int cls_atom(kg *K, atom a) {
  int base = -1;
  if (a.lo != 0 || a.hi >= 0) base = cls_atom(K, (atom){a.call, a.field, 0, -1});
  int id = atom_intern(K, a);
  return cls_intern_set(K, &id, 1, base);
}

static int cls_union(kg *K, int x, int y) {
  if (x == y || y < 0) return x;
  if (x < 0) return y;
  int n = K->cls[x].n + K->cls[y].n;
  int *ids = ir_xcalloc((size_t)n, sizeof *ids);
  memcpy(ids, K->cls[x].atoms, (size_t)K->cls[x].n * sizeof *ids);
  memcpy(ids + K->cls[x].n, K->cls[y].atoms, (size_t)K->cls[y].n * sizeof *ids);
  int r = cls_intern_set(K, ids, n, -1);
  free(ids);
  return r;
}

/* min(a, b)[lo:hi] = min(a[lo:hi], b[lo:hi]): slicing distributes over the minimum */
static int cls_slice(kg *K, int c, int lo, int hi) {
  int r = -1;
  for (int i = 0; i < K->cls[c].n; i++) {
    atom a = K->atoms[K->cls[c].atoms[i]];
    int lo1 = a.lo, hi1 = a.hi;
    a.lo = lo1 + lo;
    a.hi = hi < 0 ? hi1 : hi1 < 0 || lo1 + hi < hi1 ? lo1 + hi : hi1;
    r = cls_union(K, r, cls_atom(K, a));
  }
  return r;
}

static int cls_dom(kg *K, int d) {
  int call, field, lo, hi;
  if (cg_dom_source(K->p, d, &call, &field, &lo, &hi)) return -1;
  return cls_atom(K, (atom){call, field, lo, hi});
}

static void cls_mark(kg *K, int c) {
  if (c < 0 || K->cls_used[c]) return;
  K->cls_used[c] = 1;
  if (K->cls[c].base >= 0) cls_mark(K, K->cls[c].base);
  if (K->cls[c].n > 1)
    for (int i = 0; i < K->cls[c].n; i++) {
      atom a = K->atoms[K->cls[c].atoms[i]];
      cls_mark(K, cls_atom(K, a));
    }
}

/* The per-example token counts a stage reads, in dependency order (ids grow). */
static void emit_cls_decls(kg *K, FILE *f, const char *ind) {
  for (int c = 0; c < K->ncls; c++) {
    if (!K->cls_used[c]) continue;
    const lclass *L = &K->cls[c];
    fprintf(f, "%sconst int n%d = ", ind, c);
    if (L->n == 1) {
      atom a = K->atoms[L->atoms[0]];
      if (L->base >= 0) {
        fprintf(f, "poc_k_slice_len(n%d, %d, %d);", L->base, a.lo, a.hi);
      } else if (a.call >= 0) {
        fprintf(f, "a->off[%d][b + 1] - a->off[%d][b];", a.call, a.call);
      } else {
        fprintf(f, "a->field_off[%d][b + 1] - a->field_off[%d][b];", a.field, a.field);
      }
      if (a.call >= 0) fprintf(f, " /* tokens of call %d", a.call);
      else fprintf(f, " /* tokens of field %d", a.field);
      if (L->base >= 0) {
        fprintf(f, "[%d:", a.lo);
        if (a.hi >= 0) fprintf(f, "%d", a.hi);
        fputc(']', f);
      }
      fputs(" */\n", f);
    } else {
      for (int i = 0; i < L->n - 1; i++) fputs("poc_k_min(", f);
      for (int i = 0; i < L->n; i++) {
        int s = cls_atom(K, K->atoms[L->atoms[i]]);
        fprintf(f, i ? ", n%d)" : "n%d", s);
      }
      fputs("; /* the shortest: masks ANDed */\n", f);
    }
  }
}

static void build_classes(kg *K) {
  const ir_graph *g = K->g;
  for (int i = 0; i < g->n; i++) {
    const ir_node *n = &g->nodes[i];
    int c = -1;
    ir_class cls = ir_op_info(n->op)->cls;
    switch (n->op) {
    case IR_LOGP:
    case IR_ENTROPY:
    case IR_LOGSUMSQ: c = cls_atom(K, (atom){K->p->call_of[i], -1, 0, -1}); break;
    case IR_FIELD:
      if (n->level == IR_LTOKEN) c = cls_atom(K, (atom){-1, n->idx, 0, -1});
      break;
    case IR_SEQLEN:
    case IR_PICK:
    case IR_POS: c = cls_dom(K, n->dom); break;
    case IR_SAMPLE: break;
    case IR_SLICE: c = cls_slice(K, K->cls_of[n->in[0]], n->idx, n->hi); break;
    case IR_FIT: c = K->cls_of[n->in[1]]; break;
    case IR_BCAST:
      if (n->level == IR_LTOKEN) c = K->cls_of[n->in[1]];
      break;
    case IR_ARGMAX: c = K->cls_of[n->in[0]]; break;
    default:
      if ((cls == IR_ELEM || cls == IR_CTL) && n->level == IR_LTOKEN)
        for (int k = 0; k < n->nin; k++)
          if (g->nodes[n->in[k]].level == IR_LTOKEN) c = cls_union(K, c, K->cls_of[n->in[k]]);
      if (cls == IR_TOKR)
        for (int k = 0; k < n->nin; k++) c = cls_union(K, c, K->cls_of[n->in[k]]);
      break;
    }
    K->cls_of[i] = c;
  }
}

/* ---- node kinds and operands -------------------------------------------------------- */

static bool is_sample(const kg *K, int i) { return K->g->nodes[i].op == IR_SAMPLE; }

/* batch_sort and its adjoint: per-example values computed between stages, from whole
 * per-example arrays, into a stored array the later stages read. */
static bool is_perm(const kg *K, int i) { return ir_op_info(K->g->nodes[i].op)->cls == IR_BPERM; }

/* The C expression of node x's value at token index idx, as read from block cb of the
 * current stage (cb -1: between blocks). */
static void operand(kg *K, char *buf, size_t len, int x, const char *idx, int cb) {
  const ir_graph *g = K->g;
  const ir_node *n = &g->nodes[x];
  if (n->op == IR_CONST) {
    char num[40];
    snprintf(num, sizeof num, "%.17g", n->num);
    snprintf(buf, len, "%s%s%s%s", n->num < 0 ? "(" : "", num, strpbrk(num, ".eEin") ? "" : ".0",
             n->num < 0 ? ")" : "");
    return;
  }
  switch (n->level) {
  case IR_LCONST:
  case IR_LBATCH: snprintf(buf, len, "v%d", x); return;
  case IR_LEXAMPLE:
    if (K->g->nodes[x].stage < K->stage || is_perm(K, x)) {
      K->stored[x] = 1;
      snprintf(buf, len, "x%d[b]", x);
    } else {
      snprintf(buf, len, "v%d", x);
    }
    return;
  case IR_LTOKEN: break;
  }
  if (ir_head_call(n->op)) {
    int c = K->p->call_of[x];
    (n->op == IR_LOGP ? K->lp_used : n->op == IR_ENTROPY ? K->en_used : K->ls_used)[c] = 1;
    snprintf(buf, len, "%s%d[%s]", n->op == IR_LOGP ? "lp" : n->op == IR_ENTROPY ? "en" : "ls", c,
             idx);
  } else if (n->op == IR_FIELD) {
    K->fd_used[n->idx] = 1;
    snprintf(buf, len, "fd%d[%s]", n->idx, idx);
  } else if (n->op == IR_PICK) {
    snprintf(buf, len, "(double)pk%d[%s]", x, idx);
  } else if (n->op == IR_ARGMAX) {
    snprintf(buf, len, "(double)(%s == am%d)", idx, x);
  } else if (cb >= 0 && K->blk[x] == cb && !strcmp(idx, "t")) {
    snprintf(buf, len, "v%d", x);
  } else {
    K->mat[x] = 1;
    snprintf(buf, len, "m%d[%s]", x, idx);
  }
}

/* The op table's scalar C expression with a, b, c replaced by the operands. */
static void subst(char *out, size_t len, const char *cexpr, char ops[3][160]) {
  size_t o = 0;
  for (const char *s = cexpr; *s && o + 1 < len;) {
    bool ident = (*s >= 'a' && *s <= 'z') || (*s >= 'A' && *s <= 'Z') || *s == '_';
    if (!ident) {
      out[o++] = *s++;
      continue;
    }
    const char *e = s;
    while ((*e >= 'a' && *e <= 'z') || (*e >= 'A' && *e <= 'Z') || (*e >= '0' && *e <= '9') || *e == '_') e++;
    if (e - s == 1 && *s >= 'a' && *s <= 'c') {
      o += (size_t)snprintf(out + o, len - o, "%s", ops[*s - 'a']);
    } else {
      size_t k = (size_t)(e - s);
      if (o + k >= len) break;
      memcpy(out + o, s, k);
      o += k;
    }
    s = e;
  }
  out[o < len ? o : len - 1] = 0;
}

static void comment(kg *K, FILE *f, int id) {
  fputs(" /* ", f);
  cg_describe(f, K->p, id);
  const char *name = K->g->nodes[id].name;
  if (name) { /* the .po's name for the value; only bytes that cannot end a comment */
    fputs(" [", f);
    for (const char *c = name; *c; c++) {
      bool ok = (*c >= 'a' && *c <= 'z') || (*c >= 'A' && *c <= 'Z') || (*c >= '0' && *c <= '9') ||
                *c == '_' || *c == '.' || *c == '-' || *c == '(' || *c == ')' || (*c == '/' && c[1] != '*');
      fputc(ok ? *c : '?', f);
    }
    fputc(']', f);
  }
  fputs("   ", f);
  cg_where(f, K->p, K->g->nodes[id].loc);
  fputs(" */", f);
}

/* The value expression of an elementwise, ctl, bcast, slice or fit node at token index
 * t (or between blocks for per-example ones). */
static void value_expr(kg *K, char *out, size_t len, int id, int cb) {
  const ir_node *n = &K->g->nodes[id];
  char ops[3][160] = {"0", "0", "0"};
  switch (n->op) {
  case IR_SLICE: {
    char idx[32];
    snprintf(idx, sizeof idx, "t + %d", n->idx);
    operand(K, out, len, n->in[0], n->idx ? idx : "t", cb);
    return;
  }
  case IR_FIT: {
    char idx[32], v[160];
    if (n->idx) snprintf(idx, sizeof idx, "t - %d", n->idx);
    operand(K, v, sizeof v, n->in[0], n->idx ? idx : "t", cb);
    if (n->idx)
      snprintf(out, len, "(t >= %d && t - %d < n%d ? %s : 0)", n->idx, n->idx,
               K->cls_of[n->in[0]], v);
    else snprintf(out, len, "(t < n%d ? %s : 0)", K->cls_of[n->in[0]], v);
    cls_mark(K, K->cls_of[n->in[0]]);
    return;
  }
  case IR_BCAST: operand(K, out, len, n->in[0], "t", cb); return;
  case IR_POS: snprintf(out, len, "(double)t"); return;
  default: break;
  }
  for (int k = 0; k < n->nin && k < 3; k++) operand(K, ops[k], sizeof ops[k], n->in[k], "t", cb);
  char e[1200];
  subst(e, sizeof e, ir_op_info(n->op)->cexpr, ops);
  snprintf(out, len, "%s", e);
}

/* ---- one stage's groups ------------------------------------------------------------ */

/* need, blk, pos, bdom for stage s from the fuse pass's groups: a loop's members have
 * their block (a reduction's value is known after it), the per-example groups their
 * position among the loops. */
static void load_stage(kg *K, int s) {
  const ir_graph *g = K->g;
  memset(K->need, 0, (size_t)g->n);
  for (int i = 0; i < g->n; i++) K->blk[i] = K->pos[i] = -1;
  K->nblk = 0;
  for (int gi = 0; gi < g->fusion.ngroups; gi++) {
    const ir_group *gr = &g->fusion.groups[gi];
    if (gr->stage != s || (gr->kind != IR_G_EXAMPLE && gr->kind != IR_G_TOKENS)) continue;
    for (int k = 0; k < gr->nmem; k++) {
      int x = gr->mem[k];
      K->need[x] = 1;
      if (gr->kind == IR_G_EXAMPLE) {
        K->pos[x] = gr->at;
        continue;
      }
      K->blk[x] = gr->at;
      if (ir_op_info(g->nodes[x].op)->cls == IR_TOKR) K->pos[x] = gr->at + 1;
    }
    if (gr->kind == IR_G_TOKENS) {
      K->bdom[gr->at] = gr->dom;
      if (gr->at + 1 > K->nblk) K->nblk = gr->at + 1;
    }
  }
}

/* The group of stage s and kind at position `at`, or NULL. */
static const ir_group *stage_group(const kg *K, int s, ir_group_kind kind, int at) {
  for (int gi = 0; gi < K->g->fusion.ngroups; gi++) {
    const ir_group *gr = &K->g->fusion.groups[gi];
    if (gr->kind == kind && gr->stage == s && gr->at == at) return gr;
  }
  return NULL;
}

/* "grp3_margin_L12: stage 0, loop 1 over 'chosen', dpo.po:10-12" */
static void group_comment(kg *K, FILE *f, const ir_group *gr, const char *ind) {
  fprintf(f, "%s/* %s: %s", ind, gr->name, ir_group_kind_name(gr->kind));
  if (gr->kind == IR_G_TOKENS) fprintf(f, " loop %d over '%s'", gr->at, K->g->doms[gr->dom].name);
  if (gr->line_lo > 0) {
    fputs(", ", f);
    cg_file(f, K->p);
    if (gr->line_lo == gr->line_hi) fprintf(f, ":%d", gr->line_lo);
    else fprintf(f, ":%d-%d", gr->line_lo, gr->line_hi);
  }
  fputs(" */\n", f);
}

/* ---- emitting one stage ------------------------------------------------------------- */

static void emit_outputs(kg *K, FILE *f, int id, const char *ind) {
  const ir_graph *g = K->g;
  if (id == g->loss) fprintf(f, "%sa->loss[b] = v%d;\n", ind, id);
  for (int r = 0; r < g->nreports; r++)
    if (g->reports[r].node == id) fprintf(f, "%sa->report[%d * B + b] = v%d;\n", ind, r, id);
}

static void emit_scalar(kg *K, FILE *f, int id) {
  const ir_graph *g = K->g;
  const ir_node *n = &g->nodes[id];
  const char *ind = "    ";
  char e[1400];
  switch (n->op) {
  case IR_FIELD: snprintf(e, sizeof e, "a->field[%d][b]", n->idx); break;
  case IR_REWARD: { /* the call's one score for this example (none: an empty target) */
    int c = K->p->call_of[id];
    snprintf(e, sizeof e, "a->off[%d][b + 1] > a->off[%d][b] ? a->logp[%d][a->off[%d][b]] : 0",
             c, c, c, c);
    break;
  }
  case IR_SEQLEN:
  case IR_LEN:
    cls_mark(K, K->cls_of[id]);
    snprintf(e, sizeof e, "(double)n%d", K->cls_of[id]);
    break;
  case IR_SUM:
  case IR_DOT:
  case IR_TMAX: snprintf(e, sizeof e, "s%d", id); break;
  case IR_MEAN:
    cls_mark(K, K->cls_of[id]);
    snprintf(e, sizeof e, "n%d ? s%d / n%d : 0", K->cls_of[id], id, K->cls_of[id]);
    break;
  case IR_NORM: snprintf(e, sizeof e, "sqrt(s%d)", id); break;
  case IR_COS:
    snprintf(e, sizeof e, "q%d > 0 && r%d > 0 ? s%d / (sqrt(q%d) * sqrt(r%d)) : 0", id, id, id,
             id, id);
    break;
  case IR_PICK: {
    char cnt[160];
    operand(K, cnt, sizeof cnt, n->in[0], "t", -1);
    cls_mark(K, K->cls_of[id]);
    fprintf(f, "%spoc_k_pick(a->pick_seed, %d, a->example[b], n%d, %s, pk%d);", ind, n->idx,
            K->cls_of[id], cnt, id);
    comment(K, f, id);
    fputc('\n', f);
    return;
  }
  default: value_expr(K, e, sizeof e, id, -1); break;
  }
  fprintf(f, "%sconst double v%d = %s;", ind, id, e);
  comment(K, f, id);
  fputc('\n', f);
  emit_outputs(K, f, id, ind);
}

/* The calls whose gradient node is id, written in its block. */
static void emit_grad_writes(kg *K, FILE *f, int id, int bound, const char *ind) {
  for (int c = 0; c < K->p->ncalls; c++) {
    const cg_call *cc = &K->p->calls[c];
    for (int k = 0; k < 2; k++) {
      int d = k ? cc->dentropy : cc->dlogp;
      if (d != id) continue;
      int callcls = K->cls_of[k ? cc->entropy : cc->logp];
      int gc = cls_union(K, K->cls_of[id], callcls);
      (k ? K->de_used : K->dl_used)[c] = 1;
      cls_mark(K, gc);
      if (gc != bound) fprintf(f, "%sif (t < n%d) ", ind, gc);
      else fputs(ind, f);
      fprintf(f, "%s%d[t] = v%d;\n", k ? "de" : "dl", c, id);
    }
  }
}

static void emit_block(kg *K, FILE *f, int bk) {
  const ir_graph *g = K->g;
  /* the loop bound: the longest class any statement of the block needs */
  int *cl = ir_xcalloc((size_t)g->n + 1, sizeof *cl);
  int ncl = 0;
  for (int i = 0; i < g->n; i++) {
    if (!K->need[i]) continue;
    const ir_node *n = &g->nodes[i];
    bool in = (ir_tok_computed(n) || n->op == IR_ARGMAX ||
               (ir_op_info(n->op)->cls == IR_TOKR && n->op != IR_LEN)) && K->blk[i] == bk;
    if (!in) continue;
    int c = n->op == IR_ARGMAX ? K->cls_of[n->in[0]] : K->cls_of[i];
    bool seen = false;
    for (int j = 0; j < ncl; j++) seen |= cl[j] == c;
    if (!seen) cl[ncl++] = c;
  }
  /* accumulators first, so the loop body can add to them */
  for (int i = 0; i < g->n; i++) {
    const ir_node *n = &g->nodes[i];
    if (!K->need[i] || K->blk[i] != bk) continue;
    if (n->op == IR_ARGMAX) fprintf(f, "    int am%d = -1; /* the first maximum */\n    double amv%d = 0;\n", i, i);
    else if (ir_op_info(n->op)->cls == IR_TOKR && n->op != IR_LEN) {
      fprintf(f, "    double s%d = 0", i);
      if (n->op == IR_COS) fprintf(f, ", q%d = 0, r%d = 0", i, i);
      fputs(";\n", f);
    }
  }
  int bound = ncl == 1 ? cl[0] : -1;
  for (int j = 0; j < ncl; j++) cls_mark(K, cl[j]);
  const ir_group *gr = stage_group(K, K->stage, IR_G_TOKENS, bk);
  if (gr) group_comment(K, f, gr, "    ");
  if (bound >= 0) {
    fprintf(f, "    for (int t = 0; t < n%d; t++) {\n", bound);
  } else {
    fprintf(f, "    const int T%d = ", bk);
    for (int j = 0; j < ncl - 1; j++) fputs("poc_k_max(", f);
    for (int j = 0; j < ncl; j++) fprintf(f, j ? ", n%d)" : "n%d", cl[j]);
    fprintf(f, ";\n    for (int t = 0; t < T%d; t++) {\n", bk);
  }
  const char *ind = "      ";
  for (int i = 0; i < g->n; i++) {
    const ir_node *n = &g->nodes[i];
    if (!K->need[i] || K->blk[i] != bk) continue;
    char e[1400], x[160], y[160];
    if (ir_tok_computed(n)) {
      value_expr(K, e, sizeof e, i, bk);
      int c = K->cls_of[i];
      if (c == bound) {
        fprintf(f, "%sconst double v%d = %s;", ind, i, e);
        comment(K, f, i);
        fputc('\n', f);
        if (K->mat[i]) fprintf(f, "%sm%d[t] = v%d;\n", ind, i, i);
      } else {
        fprintf(f, "%sdouble v%d = 0;", ind, i);
        comment(K, f, i);
        fprintf(f, "\n%sif (t < n%d) {\n%s  v%d = %s;\n", ind, c, ind, i, e);
        if (K->mat[i]) fprintf(f, "%s  m%d[t] = v%d;\n", ind, i, i);
        fprintf(f, "%s}\n", ind);
      }
      emit_grad_writes(K, f, i, bound, ind);
      continue;
    }
    int c = n->op == IR_ARGMAX ? K->cls_of[n->in[0]] : K->cls_of[i];
    char guard[48] = "";
    if (c != bound) snprintf(guard, sizeof guard, "if (t < n%d) ", c);
    if (n->op == IR_ARGMAX) {
      operand(K, x, sizeof x, n->in[0], "t", bk);
      if (c != bound)
        fprintf(f, "%sif (t < n%d && (am%d < 0 || %s > amv%d)) am%d = t, amv%d = %s;", ind, c, i, x,
                i, i, i, x);
      else
        fprintf(f, "%sif (am%d < 0 || %s > amv%d) am%d = t, amv%d = %s;", ind, i, x, i, i, i, x);
      comment(K, f, i);
      fputc('\n', f);
      continue;
    }
    if (ir_op_info(n->op)->cls != IR_TOKR || n->op == IR_LEN) continue;
    operand(K, x, sizeof x, n->in[0], "t", bk);
    if (n->nin > 1) operand(K, y, sizeof y, n->in[1], "t", bk);
    switch (n->op) {
    case IR_SUM:
    case IR_MEAN: fprintf(f, "%s%ss%d += %s;", ind, guard, i, x); break;
    case IR_TMAX:
      if (c != bound)
        fprintf(f, "%sif (t < n%d && (t == 0 || %s > s%d)) s%d = %s;", ind, c, x, i, i, x);
      else
        fprintf(f, "%sif (t == 0 || %s > s%d) s%d = %s;", ind, x, i, i, x);
      break;
    case IR_DOT: fprintf(f, "%s%ss%d += %s * %s;", ind, guard, i, x, y); break;
    case IR_NORM: fprintf(f, "%s%ss%d += %s * %s;", ind, guard, i, x, x); break;
    case IR_COS:
      fprintf(f, "%s%s{\n%s  s%d += %s * %s;\n%s  q%d += %s * %s;\n%s  r%d += %s * %s;\n%s}", ind,
              guard, ind, i, x, y, ind, i, x, x, ind, i, y, y, ind);
      break;
    default: break;
    }
    comment(K, f, i);
    fputc('\n', f);
  }
  fputs("    }\n", f);
  free(cl);
}

/* Gradients of nodes that have no block (a leaf, a pick, an argmax): their own loop. */
static void emit_late_grads(kg *K, FILE *f) {
  for (int c = 0; c < K->p->ncalls; c++) {
    const cg_call *cc = &K->p->calls[c];
    for (int k = 0; k < 2; k++) {
      int d = k ? cc->dentropy : cc->dlogp;
      if (d < 0 || K->g->nodes[d].stage != K->stage || ir_tok_computed(&K->g->nodes[d])) continue;
      if (cc->reward) { /* one seed per example, at the score's place */
        char x[160];
        operand(K, x, sizeof x, d, "t", -1);
        fprintf(f, "    if (a->off[%d][b + 1] > a->off[%d][b]) a->dlogp[%d][a->off[%d][b]] = %s;\n",
                c, c, c, c, x);
        continue;
      }
      int gc = cls_union(K, K->cls_of[d], K->cls_of[k ? cc->entropy : cc->logp]);
      char x[160];
      operand(K, x, sizeof x, d, "t", -1);
      cls_mark(K, gc);
      (k ? K->de_used : K->dl_used)[c] = 1;
      fprintf(f, "    for (int t = 0; t < n%d; t++) %s%d[t] = %s;\n", gc, k ? "de" : "dl", c, x);
    }
  }
}

/* One stage's loop over the examples: the body goes to a buffer first, so that only
 * the counts and pointers it reads are declared. */
static void emit_stage(kg *K, FILE *f, int s) {
  const ir_graph *g = K->g;
  const cg_prog *p = K->p;
  K->stage = s;
  load_stage(K, s);
  memset(K->cls_used, 0, (size_t)K->ncls + 1);
  memset(K->lp_used, 0, (size_t)p->ncalls + 1);
  memset(K->en_used, 0, (size_t)p->ncalls + 1);
  memset(K->ls_used, 0, (size_t)p->ncalls + 1);
  memset(K->dl_used, 0, (size_t)p->ncalls + 1);
  memset(K->de_used, 0, (size_t)p->ncalls + 1);
  memset(K->fd_used, 0, (size_t)g->nfields + 1);
  /* materialisation is decided while emitting (operand marks it), so emit twice: the
     first pass only learns which values later blocks read from memory */
  for (int pass = 0; pass < 2; pass++) {
    char *body = NULL;
    size_t blen = 0;
    FILE *m = open_memstream(&body, &blen);
    if (!m) exit(1);
    for (int bk = 0; bk <= K->nblk; bk++) {
      const ir_group *eg = stage_group(K, s, IR_G_EXAMPLE, bk);
      if (eg) group_comment(K, m, eg, "    ");
      for (int i = 0; i < g->n; i++) {
        const ir_node *n = &g->nodes[i];
        if (!K->need[i]) continue;
        bool scalar = n->level == IR_LEXAMPLE || n->op == IR_PICK;
        if (scalar && K->pos[i] == bk) emit_scalar(K, m, i);
      }
      if (bk < K->nblk) emit_block(K, m, bk);
    }
    emit_late_grads(K, m);
    for (int i = 0; i < g->n; i++)
      if (K->need[i] && g->nodes[i].level == IR_LEXAMPLE && K->stored[i])
        fprintf(m, "    x%d[b] = v%d;\n", i, i);
    fclose(m);
    if (pass == 0) {
      free(body);
      continue;
    }
    fprintf(f, "  /* stage %d: per example%s */\n  for (int b = 0; b < B; b++) {\n", s,
            K->nstages > 1 ? (s == 0 ? ", before any batch reduction"
                                     : ", after the batch reductions above")
                           : "");
    for (int c = 0; c < p->ncalls; c++) {
      if (K->lp_used[c]) fprintf(f, "    const double *lp%d = a->logp[%d] + a->off[%d][b];\n", c, c, c);
      if (K->en_used[c]) fprintf(f, "    const double *en%d = a->entropy[%d] + a->off[%d][b];\n", c, c, c);
      if (K->ls_used[c]) fprintf(f, "    const double *ls%d = a->logsumsq[%d] + a->off[%d][b];\n", c, c, c);
      if (K->dl_used[c]) fprintf(f, "    double *dl%d = a->dlogp[%d] + a->off[%d][b];\n", c, c, c);
      if (K->de_used[c]) fprintf(f, "    double *de%d = a->dentropy[%d] + a->off[%d][b];\n", c, c, c);
    }
    for (int k = 0; k < g->nfields; k++)
      if (K->fd_used[k])
        fprintf(f, "    const double *fd%d = a->field[%d] + a->field_off[%d][b];\n", k, k, k);
    emit_cls_decls(K, f, "    ");
    fwrite(body, 1, blen, f);
    fputs("  }\n", f);
    free(body);
  }
}

/* A batch group (or the prologue): reductions over the per-example arrays, sorts, and
 * the arithmetic on batch values. */
static void emit_batch(kg *K, FILE *f, const ir_group *gr) {
  const ir_graph *g = K->g;
  for (int m = 0; m < gr->nmem; m++) {
    const int i = gr->mem[m];
    const ir_node *n = &g->nodes[i];
    if (n->level == IR_LCONST) { /* the prologue: knobs and what follows from them */
      if (n->op == IR_CONST) continue;
      char e[1400];
      if (n->op == IR_PARAM) snprintf(e, sizeof e, "a->knobs[%d]", n->idx);
      else value_expr(K, e, sizeof e, i, -1);
      fprintf(f, "  const double v%d = %s;", i, e);
      comment(K, f, i);
      fputc('\n', f);
      continue;
    }
    ir_class cls = ir_op_info(n->op)->cls;
    if (cls == IR_BPERM) {
      /* batch_sort: y_k = x_{p(k)}; its adjoint: y_{p(k)} = g_k; p the order of x */
      int v = n->in[0], x = n->op == IR_BSORT ? v : n->in[1];
      K->stored[v] = K->stored[x] = K->stored[i] = 1;
      fputs("  {", f);
      comment(K, f, i);
      fprintf(f, "\n    poc_k_batch_order(x%d, B, order, order + B);\n"
                 "    for (int k = 0; k < B; k++) x%d[%s] = x%d[%s];\n",
              x, i, n->op == IR_BSORT ? "k" : "order[k]", v, n->op == IR_BSORT ? "order[k]" : "k");
      if (i == g->loss) fprintf(f, "    for (int b = 0; b < B; b++) a->loss[b] = x%d[b];\n", i);
      for (int r = 0; r < g->nreports; r++)
        if (g->reports[r].node == i)
          fprintf(f, "    for (int b = 0; b < B; b++) a->report[%d * B + b] = x%d[b];\n", r, i);
      fputs("  }\n", f);
      continue;
    }
    if (cls == IR_BATR) {
      int x = n->in[0];
      K->stored[x] = 1;
      fprintf(f, "  double v%d = 0;", i);
      comment(K, f, i);
      fprintf(f, "\n  for (int b = 0; b < B; b++) v%d += x%d[b];\n", i, x);
      if (n->op == IR_BMEAN) fprintf(f, "  v%d /= B;\n", i);
      if (n->op == IR_BSTD)
        fprintf(f, "  {\n    const double mu = v%d / B;\n    double var = 0;\n"
                   "    for (int b = 0; b < B; b++) var += (x%d[b] - mu) * (x%d[b] - mu);\n"
                   "    v%d = sqrt(var / B);\n  }\n", i, x, x, i);
      continue;
    }
    char e[1400];
    if (n->op == IR_NBATCH) snprintf(e, sizeof e, "(double)a->B_norm");
    else value_expr(K, e, sizeof e, i, -1);
    fprintf(f, "  const double v%d = %s;", i, e);
    comment(K, f, i);
    fputc('\n', f);
  }
}

/* The groups between stage s's loop over the examples and the next stage's: batch
 * values these examples make possible (after the last stage, batch reports). */
static void emit_between(kg *K, FILE *f, int s) {
  for (int gi = 0; gi < K->g->fusion.ngroups; gi++) {
    const ir_group *gr = &K->g->fusion.groups[gi];
    if (gr->kind != IR_G_BATCH || gr->stage <= s) continue;
    if (s + 1 < K->nstages && gr->stage > s + 1) continue;
    fprintf(f, "\n  /* batch values after stage %d */\n", gr->stage - 1);
    group_comment(K, f, gr, "  ");
    emit_batch(K, f, gr);
    fputc('\n', f);
  }
}

static void header(kg *K, FILE *f, const char *mode) {
  fputs("/* kernels.c — generated by poc " POC_VERSION " from ", f);
  cg_file(f, K->p);
  fprintf(f, " (%s); do not edit.\n *\n", mode);
  fputs(" * The objective kernel: per-example loss, reports and dL/dlogp of every trainable\n"
        " * call, in double, on the ragged per-token arrays of runtime/program.h. Each\n"
        " * statement names the IR node it computes (`poc graph` prints the same ids) and the\n"
        " * line of the .po file it comes from.\n", f);
  if (K->p->opt->cc_line) {
    fputs(" * Compiled with: ", f);
    for (const char *s = K->p->opt->cc_line; *s; s++)
      fputc(*s == '*' || *s == '\n' ? '?' : *s, f);
    fputc('\n', f);
  }
  fputs(" */\n", f);
}

static int emit_prelude(FILE *f) {
  size_t len;
  char *t = cg_template("objective.c", &len);
  if (!t) return -1;
  fwrite(t, 1, len, f);
  fputc('\n', f);
  free(t);
  return 0;
}

/* ---- fused ------------------------------------------------------------------------------ */

/* A dry run of every stage's emission, to learn what is read from memory: scratch
 * vectors (K->mat_slot) and per-example arrays (K->stored). */
static void fused_dry_run(kg *K) {
  char *body = NULL;
  size_t blen = 0;
  FILE *m = open_memstream(&body, &blen);
  if (!m) exit(1);
  for (int s = 0; s < K->nstages; s++) {
    emit_stage(K, m, s);
    for (int i = 0; i < K->g->n; i++) K->mat_slot[i] |= K->mat[i];
    memset(K->mat, 0, (size_t)K->g->n);
    emit_between(K, m, s);
  }
  fclose(m);
  free(body);
}

/* The scratch vectors' memory plan, in units of T doubles: a materialised value is
 * written in every stage that computes it (its home and its recomputed copies), so it is
 * live over those stages; vectors of stages that do not overlap share a slot. slot[i]:
 * node i's buffer in sp. */
static int scratch_plan(kg *K, poc_mplan *sp, int *slot) {
  const ir_graph *g = K->g;
  for (int i = 0; i < g->n; i++) {
    slot[i] = -1;
    if (!K->mat_slot[i]) continue;
    int lo = -1, hi = -1;
    for (int gi = 0; gi < g->fusion.ngroups; gi++) {
      const ir_group *gr = &g->fusion.groups[gi];
      if (gr->kind != IR_G_EXAMPLE && gr->kind != IR_G_TOKENS) continue;
      for (int k = 0; k < gr->nmem; k++)
        if (gr->mem[k] == i) {
          if (lo < 0 || gr->stage < lo) lo = gr->stage;
          if (gr->stage > hi) hi = gr->stage;
        }
    }
    if (lo < 0) lo = hi = 0;
    slot[i] = poc_mplan_add(sp, g->nodes[i].name ? g->nodes[i].name : ir_op_info(g->nodes[i].op)->name,
                            -1, 1, lo, hi);
  }
  char err[POC_ERR_LEN];
  if (poc_mplan_solve(sp, err) || poc_mplan_check(sp, err, sizeof err)) return -1;
  return 0;
}

static int emit_fused(kg *K, FILE *f, po_diag *d) {
  const ir_graph *g = K->g;
  const cg_prog *p = K->p;
  fputs("int poc_objective(const poc_objective_args *a) {\n  const int B = a->B;\n", f);
  /* constants and knobs, then batch values that need no reduction */
  K->stage = 0;
  for (int gi = 0; gi < g->fusion.ngroups; gi++)
    if (g->fusion.groups[gi].kind == IR_G_PROLOGUE) {
      group_comment(K, f, &g->fusion.groups[gi], "  ");
      emit_batch(K, f, &g->fusion.groups[gi]);
    }
  fused_dry_run(K);
  /* scratch vectors: slots of T doubles from the plan */
  poc_mplan sp;
  poc_mplan_init(&sp, 1);
  int *slot = ir_xcalloc((size_t)g->n + 1, sizeof *slot);
  if (scratch_plan(K, &sp, slot)) {
    po_error_file(d, g->src ? g->src->path : "?", "internal error: the objective's scratch plan fails its check");
    poc_mplan_free(&sp);
    free(slot);
    return -1;
  }
  for (int i = 0; i < g->n; i++)
    if (K->stored[i] && !(g->nodes[i].flags & IR_F_STORE)) {
      po_error_file(d, g->src ? g->src->path : "?", "internal error: %%%d is read from a "
                    "per-example array but the recompute pass did not mark it stored", i);
      poc_mplan_free(&sp);
      free(slot);
      return -1;
    }
  /* slots */
  int nmat = (int)sp.peak, nmask = 0, nstore = 0, nperm = 0;
  for (int i = 0; i < g->n; i++) {
    nmask += g->nodes[i].op == IR_PICK;
    nstore += K->stored[i] != 0;
    nperm += is_perm(K, i);
  }
  if (nmat || nmask) {
    fputs("  /* per-example scratch, as long as the longest token vector of the batch */\n"
          "  int T = 1;\n  for (int b = 0; b < B; b++) {\n", f);
    for (int c = 0; c < p->ncalls; c++)
      fprintf(f, "    T = poc_k_max(T, a->off[%d][b + 1] - a->off[%d][b]);\n", c, c);
    for (int k = 0; k < g->nfields; k++)
      if (g->fields[k].dom >= 0)
        fprintf(f, "    T = poc_k_max(T, a->field_off[%d][b + 1] - a->field_off[%d][b]);\n", k, k);
    fputs("  }\n", f);
  }
  if (nmat) fprintf(f, "  double *scratch = malloc((size_t)T * %d * sizeof *scratch);\n", nmat);
  if (nmask) fprintf(f, "  unsigned char *masks = malloc((size_t)T * %d);\n", nmask);
  if (nstore) fprintf(f, "  double *stored = malloc((size_t)(B > 0 ? B : 1) * %d * sizeof *stored);\n", nstore);
  if (nperm) fputs("  int *order = malloc((size_t)(B > 0 ? B : 1) * 2 * sizeof *order); /* batch_sort */\n", f);
  if (nmat || nmask || nstore || nperm) {
    fputs("  if (", f);
    const char *sep = "";
    if (nmat) fprintf(f, "%s!scratch", sep), sep = " || ";
    if (nmask) fprintf(f, "%s!masks", sep), sep = " || ";
    if (nstore) fprintf(f, "%s!stored", sep), sep = " || ";
    if (nperm) fprintf(f, "%s!order", sep);
    fputs(") {\n", f);
    if (nmat) fputs("    free(scratch);\n", f);
    if (nmask) fputs("    free(masks);\n", f);
    if (nstore) fputs("    free(stored);\n", f);
    if (nperm) fputs("    free(order);\n", f);
    fputs("    snprintf(a->err, POC_ERR_LEN, \"objective: out of memory\");\n    return -1;\n  }\n", f);
  }
  int kk = 0, ks = 0;
  for (int i = 0; i < g->n; i++) {
    if (K->mat_slot[i]) {
      const poc_mbuf *b = &sp.buf[slot[i]];
      fprintf(f, "  double *m%d = scratch + (size_t)T * %zu; /* stage%s %d", i, b->offset,
              b->first == b->last ? "" : "s", b->first);
      if (b->last != b->first) fprintf(f, "-%d", b->last);
      fputs(" */\n", f);
    }
    if (g->nodes[i].op == IR_PICK) fprintf(f, "  unsigned char *pk%d = masks + (size_t)T * %d;\n", i, kk++);
    if (K->stored[i]) fprintf(f, "  double *x%d = stored + (size_t)B * %d;\n", i, ks++);
  }
  /* gradients default to 0: positions no adjoint reaches */
  for (int c = 0; c < p->ncalls; c++) {
    if (p->calls[c].dlogp >= 0 || p->calls[c].dentropy >= 0) {
      fprintf(f, "  if (a->dlogp[%d]) memset(a->dlogp[%d], 0, (size_t)a->off[%d][B] * sizeof(double));\n", c, c, c);
      if (p->calls[c].entropy >= 0)
        fprintf(f, "  if (a->dentropy[%d]) memset(a->dentropy[%d], 0, (size_t)a->off[%d][B] * sizeof(double));\n", c, c, c);
    }
  }
  fputc('\n', f);
  /* the real emission, with the materialisation decided by the dry run */
  for (int s = 0; s < K->nstages; s++) {
    memcpy(K->mat, K->mat_slot, (size_t)g->n);
    emit_stage(K, f, s);
    emit_between(K, f, s);
  }
  poc_mplan_free(&sp);
  free(slot);
  /* batch and constant reports hold for every example */
  for (int r = 0; r < g->nreports; r++) {
    int x = g->reports[r].node;
    if (g->nodes[x].level == IR_LEXAMPLE) continue;
    char e[160];
    operand(K, e, sizeof e, x, "t", -1);
    fprintf(f, "  for (int b = 0; b < B; b++) a->report[%d * B + b] = %s;\n", r, e);
  }
  if (nmat) fputs("  free(scratch);\n", f);
  if (nmask) fputs("  free(masks);\n", f);
  if (nstore) fputs("  free(stored);\n", f);
  if (nperm) fputs("  free(order);\n", f);
  fputs("  return 0;\n}\n", f);
  return 0;
}

/* ---- unfused -------------------------------------------------------------------------- */

static void un_at(const kg *K, char *buf, size_t len, int x, const char *idx) {
  const ir_node *n = &K->g->nodes[x];
  switch (n->level) {
  case IR_LCONST:
  case IR_LBATCH: snprintf(buf, len, "V[%d].v[0]", x); return;
  case IR_LEXAMPLE: snprintf(buf, len, "V[%d].v[b]", x); return;
  case IR_LTOKEN: snprintf(buf, len, "V[%d].v[V[%d].off[b] + %s]", x, x, idx); return;
  }
}

static void emit_un_node(kg *K, FILE *f, const ir_group *gr) {
  const ir_graph *g = K->g;
  const int id = gr->mem[0];
  const ir_node *n = &g->nodes[id];
  ir_class cls = ir_op_info(n->op)->cls;
  int a0 = n->in[0], a1 = n->in[1];
  char x[200], y[200], e[1400];
  fputc('\n', f);
  comment(K, f, id);
  fprintf(f, "\nstatic int %s(const poc_objective_args *a, poc_k_val *V) {\n  const int B = a->B;\n",
          gr->name);
  fputs("  (void)a;\n  (void)B;\n", f);
  /* the shape */
  if (n->level == IR_LTOKEN) {
    fputs("  int *len = malloc((size_t)(B > 0 ? B : 1) * sizeof *len);\n  if (!len) return -1;\n"
          "  for (int b = 0; b < B; b++) {\n", f);
    switch (n->op) {
    case IR_LOGP:
    case IR_ENTROPY:
    case IR_LOGSUMSQ:
    case IR_FIELD:
    case IR_PICK:
    case IR_POS:
      memset(K->cls_used, 0, (size_t)K->ncls + 1);
      cls_mark(K, K->cls_of[id]);
      emit_cls_decls(K, f, "    ");
      fprintf(f, "    len[b] = n%d;\n", K->cls_of[id]);
      break;
    case IR_SLICE: fprintf(f, "    len[b] = poc_k_slice_len(V[%d].len[b], %d, %d);\n", a0, n->idx, n->hi); break;
    case IR_FIT:
    case IR_BCAST: fprintf(f, "    len[b] = V[%d].len[b];\n", a1); break;
    case IR_ARGMAX: fprintf(f, "    len[b] = V[%d].len[b];\n", a0); break;
    default: {
      fputs("    len[b] = ", f);
      int k0 = 0;
      for (int k = 0; k < n->nin; k++)
        if (g->nodes[n->in[k]].level == IR_LTOKEN) k0++;
      for (int k = 1; k < k0; k++) fputs("poc_k_min(", f);
      int j = 0;
      for (int k = 0; k < n->nin; k++)
        if (g->nodes[n->in[k]].level == IR_LTOKEN) fprintf(f, j++ ? ", V[%d].len[b])" : "V[%d].len[b]", n->in[k]);
      fputs(";\n", f);
    }
    }
    fputs("  }\n", f);
    fprintf(f, "  int rc = poc_k_token(&V[%d], B, len);\n  free(len);\n  if (rc) return -1;\n", id);
  } else {
    fprintf(f, "  if (poc_k_scalar(&V[%d], %s)) return -1;\n", id, n->level == IR_LEXAMPLE ? "B" : "1");
  }
  /* the values */
  const char *vout = n->level == IR_LTOKEN ? "V[%d].v[V[%d].off[b] + t]" : n->level == IR_LEXAMPLE ? "V[%d].v[b]" : "V[%d].v[0]";
  char out[96];
  snprintf(out, sizeof out, vout, id, id);
  switch (cls) {
  case IR_LEAF:
  case IR_CALL:
    switch (n->op) {
    case IR_CONST: fprintf(f, "  V[%d].v[0] = %.17g;\n", id, n->num); break;
    case IR_PARAM: fprintf(f, "  V[%d].v[0] = a->knobs[%d];\n", id, n->idx); break;
    case IR_NBATCH: fprintf(f, "  V[%d].v[0] = (double)a->B_norm;\n", id); break;
    case IR_SEQLEN:
      memset(K->cls_used, 0, (size_t)K->ncls + 1);
      cls_mark(K, K->cls_of[id]);
      fputs("  for (int b = 0; b < B; b++) {\n", f);
      emit_cls_decls(K, f, "    ");
      fprintf(f, "    V[%d].v[b] = n%d;\n  }\n", id, K->cls_of[id]);
      break;
    case IR_FIELD:
      if (n->level == IR_LEXAMPLE) fprintf(f, "  memcpy(V[%d].v, a->field[%d], (size_t)B * sizeof(double));\n", id, n->idx);
      else fprintf(f, "  memcpy(V[%d].v, a->field[%d], (size_t)V[%d].off[B] * sizeof(double));\n", id, n->idx, id);
      break;
    case IR_LOGP:
    case IR_ENTROPY:
    case IR_LOGSUMSQ:
      fprintf(f, "  memcpy(V[%d].v, a->%s[%d], (size_t)V[%d].off[B] * sizeof(double));\n", id,
              n->op == IR_LOGP ? "logp" : n->op == IR_ENTROPY ? "entropy" : "logsumsq",
              K->p->call_of[id], id);
      break;
    case IR_REWARD: { /* one score per example; none for an empty target */
      int c = K->p->call_of[id];
      fprintf(f, "  for (int b = 0; b < B; b++)\n    V[%d].v[b] = a->off[%d][b + 1] > a->off[%d][b] ? "
                 "a->logp[%d][a->off[%d][b]] : 0;\n", id, c, c, c, c);
      break;
    }
    case IR_POS:
      fprintf(f, "  for (int b = 0; b < B; b++)\n    for (int t = 0; t < V[%d].len[b]; t++) %s = t;\n", id, out);
      break;
    case IR_PICK:
      un_at(K, x, sizeof x, a0, "0");
      fprintf(f, "  unsigned char *mask = malloc((size_t)(V[%d].off[B] + 1));\n  if (!mask) return -1;\n"
                 "  for (int b = 0; b < B; b++) {\n"
                 "    poc_k_pick(a->pick_seed, %d, a->example[b], V[%d].len[b], %s, mask + V[%d].off[b]);\n"
                 "    for (int t = 0; t < V[%d].len[b]; t++) %s = mask[V[%d].off[b] + t];\n  }\n  free(mask);\n",
              id, n->idx, id, x, id, id, out, id);
      break;
    default: break;
    }
    break;
  case IR_ELEM:
  case IR_CTL: {
    char ops[3][160];
    for (int k = 0; k < 3; k++) strcpy(ops[k], "0");
    for (int k = 0; k < n->nin && k < 3; k++) un_at(K, ops[k], sizeof ops[k], n->in[k], "t");
    subst(e, sizeof e, ir_op_info(n->op)->cexpr, ops);
    if (n->level == IR_LTOKEN)
      fprintf(f, "  for (int b = 0; b < B; b++)\n    for (int t = 0; t < V[%d].len[b]; t++) %s = %s;\n", id, out, e);
    else if (n->level == IR_LEXAMPLE)
      fprintf(f, "  for (int b = 0; b < B; b++) %s = %s;\n", out, e);
    else
      fprintf(f, "  {\n    const int b = 0;\n    (void)b;\n    %s = %s;\n  }\n", out, e);
    break;
  }
  case IR_TOKR:
    un_at(K, x, sizeof x, a0, "t");
    if (n->nin > 1) un_at(K, y, sizeof y, a1, "t");
    fprintf(f, "  for (int b = 0; b < B; b++) {\n    int m = V[%d].len[b];\n", a0);
    if (n->nin > 1) fprintf(f, "    if (V[%d].len[b] < m) m = V[%d].len[b];\n", a1, a1);
    fputs("    double s = 0, s2 = 0, s3 = 0;\n    (void)s2;\n    (void)s3;\n", f);
    switch (n->op) {
    case IR_SUM: fprintf(f, "    for (int t = 0; t < m; t++) s += %s;\n", x); break;
    case IR_MEAN: fprintf(f, "    for (int t = 0; t < m; t++) s += %s;\n    s = m ? s / m : 0;\n", x); break;
    case IR_TMAX:
      fprintf(f, "    for (int t = 0; t < m; t++)\n      if (t == 0 || %s > s) s = %s;\n", x, x);
      break;
    case IR_LEN: fputs("    s = m;\n", f); break;
    case IR_DOT: fprintf(f, "    for (int t = 0; t < m; t++) s += %s * %s;\n", x, y); break;
    case IR_NORM: fprintf(f, "    for (int t = 0; t < m; t++) s += %s * %s;\n    s = sqrt(s);\n", x, x); break;
    case IR_COS:
      fprintf(f, "    for (int t = 0; t < m; t++) s += %s * %s, s2 += %s * %s, s3 += %s * %s;\n"
                 "    s = s2 > 0 && s3 > 0 ? s / (sqrt(s2) * sqrt(s3)) : 0;\n", x, y, x, x, y, y);
      break;
    default: break;
    }
    fprintf(f, "    V[%d].v[b] = s;\n  }\n", id);
    break;
  case IR_BATR:
    fprintf(f, "  double s = 0;\n  for (int b = 0; b < B; b++) s += V[%d].v[b];\n", a0);
    if (n->op == IR_BMEAN) fputs("  s /= B;\n", f);
    if (n->op == IR_BSTD)
      fprintf(f, "  const double mu = s / B;\n  double var = 0;\n"
                 "  for (int b = 0; b < B; b++) var += (V[%d].v[b] - mu) * (V[%d].v[b] - mu);\n"
                 "  s = sqrt(var / B);\n", a0, a0);
    fprintf(f, "  V[%d].v[0] = s;\n", id);
    break;
  case IR_BPERM: {
    /* batch_sort: y_k = x_{p(k)}; its adjoint: y_{p(k)} = g_k; p the order of x */
    int ord = n->op == IR_BSORT ? a0 : a1;
    fprintf(f, "  int *order = malloc((size_t)(B > 0 ? B : 1) * 2 * sizeof *order);\n  if (!order) return -1;\n"
               "  poc_k_batch_order(V[%d].v, B, order, order + B);\n"
               "  for (int k = 0; k < B; k++) V[%d].v[%s] = V[%d].v[%s];\n  free(order);\n",
            ord, id, n->op == IR_BSORT ? "k" : "order[k]", a0, n->op == IR_BSORT ? "order[k]" : "k");
    break;
  }
  case IR_SHAPE:
    if (n->level != IR_LTOKEN) {
      un_at(K, x, sizeof x, a0, "0");
      if (n->level == IR_LEXAMPLE) fprintf(f, "  for (int b = 0; b < B; b++) V[%d].v[b] = %s;\n", id, x);
      else fprintf(f, "  {\n    const int b = 0;\n    (void)b;\n    V[%d].v[0] = %s;\n  }\n", id, x);
      break;
    }
    fprintf(f, "  for (int b = 0; b < B; b++) {\n");
    switch (n->op) {
    case IR_SLICE:
      fprintf(f, "    for (int t = 0; t < V[%d].len[b]; t++) %s = V[%d].v[V[%d].off[b] + %d + t];\n", id, out, a0, a0, n->idx);
      break;
    case IR_FIT:
      fprintf(f, "    for (int t = 0; t < V[%d].len[b]; t++) {\n      const int s = t - %d;\n"
                 "      %s = s >= 0 && s < V[%d].len[b] ? V[%d].v[V[%d].off[b] + s] : 0;\n    }\n",
              id, n->idx, out, a0, a0, a0);
      break;
    case IR_BCAST:
      un_at(K, x, sizeof x, a0, "t");
      fprintf(f, "    for (int t = 0; t < V[%d].len[b]; t++) %s = %s;\n", id, out, x);
      break;
    case IR_ARGMAX:
      fprintf(f, "    int best = -1;\n    for (int t = 0; t < V[%d].len[b]; t++)\n"
                 "      if (best < 0 || V[%d].v[V[%d].off[b] + t] > V[%d].v[V[%d].off[b] + best]) best = t;\n"
                 "    if (best >= 0) V[%d].v[V[%d].off[b] + best] = 1;\n",
              id, a0, a0, a0, a0, id, id);
      break;
    default: break;
    }
    fputs("  }\n", f);
    break;
  }
  fputs("  return 0;\n}\n", f);
}

static void emit_unfused(kg *K, FILE *f) {
  const ir_graph *g = K->g;
  const cg_prog *p = K->p;
  /* one group per node: the fuse pass with fusion off */
  for (int gi = 0; gi < g->fusion.ngroups; gi++) {
    const ir_group *gr = &g->fusion.groups[gi];
    if (!is_sample(K, gr->mem[0])) emit_un_node(K, f, gr);
  }
  fprintf(f, "\n/* every group in order: a topological order */\n"
             "static int (*const kernels[])(const poc_objective_args *, poc_k_val *) = {\n");
  for (int gi = 0; gi < g->fusion.ngroups; gi++)
    if (!is_sample(K, g->fusion.groups[gi].mem[0])) fprintf(f, "    %s,\n", g->fusion.groups[gi].name);
  fprintf(f, "};\n\nint poc_objective(const poc_objective_args *a) {\n  const int B = a->B;\n"
             "  poc_k_val *V = calloc(%d, sizeof *V);\n  int rc = V ? 0 : -1;\n"
             "  for (size_t k = 0; !rc && k < sizeof kernels / sizeof kernels[0]; k++) rc = kernels[k](a, V);\n"
             "  if (!rc) {\n", g->n);
  fprintf(f, "    for (int b = 0; b < B; b++) a->loss[b] = V[%d].v[b];\n", g->loss);
  for (int r = 0; r < g->nreports; r++) {
    int x = g->reports[r].node;
    fprintf(f, "    for (int b = 0; b < B; b++) a->report[%d * B + b] = V[%d].v[%s];\n", r, x,
            g->nodes[x].level == IR_LEXAMPLE ? "b" : "0");
  }
  for (int c = 0; c < p->ncalls; c++)
    for (int k = 0; k < 2; k++) {
      int d = k ? p->calls[c].dentropy : p->calls[c].dlogp;
      bool want = p->calls[c].dlogp >= 0 || p->calls[c].dentropy >= 0;
      if (!want || (k ? p->calls[c].entropy : p->calls[c].logp) < 0) continue;
      const char *arr = k ? "dentropy" : "dlogp";
      fprintf(f, "    if (a->%s[%d]) memset(a->%s[%d], 0, (size_t)a->off[%d][B] * sizeof(double));\n",
              arr, c, arr, c, c);
      if (d < 0) continue;
      if (p->calls[c].reward) {
        fprintf(f, "    for (int b = 0; b < B; b++)\n      if (a->off[%d][b + 1] > a->off[%d][b]) "
                   "a->dlogp[%d][a->off[%d][b]] = V[%d].v[b];\n", c, c, c, c, d);
        continue;
      }
      fprintf(f, "    for (int b = 0; b < B; b++) {\n      const int n = poc_k_min(V[%d].len[b], "
                 "a->off[%d][b + 1] - a->off[%d][b]);\n"
                 "      for (int t = 0; t < n; t++) a->%s[%d][a->off[%d][b] + t] = V[%d].v[V[%d].off[b] + t];\n    }\n",
              d, c, c, arr, c, c, d, d);
    }
  fprintf(f, "  } else {\n    snprintf(a->err, POC_ERR_LEN, \"objective: out of memory\");\n  }\n"
             "  for (int k = 0; V && k < %d; k++) poc_k_free(&V[k]);\n  free(V);\n  return rc;\n}\n", g->n);
}

/* ---- entry --------------------------------------------------------------------------- */

static void kg_init(kg *K, const cg_prog *p) {
  const ir_graph *g = p->g;
  memset(K, 0, sizeof *K);
  K->p = p;
  K->g = g;
  size_t n = (size_t)g->n + 1;
  K->cls_of = ir_xcalloc(n, sizeof *K->cls_of);
  K->need = ir_xcalloc(n, 1);
  K->mat = ir_xcalloc(n, 1);
  K->stored = ir_xcalloc(n, 1);
  K->blk = ir_xcalloc(n, sizeof *K->blk);
  K->pos = ir_xcalloc(n, sizeof *K->pos);
  K->bdom = ir_xcalloc(4 * n, sizeof *K->bdom);
  K->mat_slot = ir_xcalloc(n, 1);
  K->lp_used = ir_xcalloc((size_t)p->ncalls + 1, 1);
  K->en_used = ir_xcalloc((size_t)p->ncalls + 1, 1);
  K->ls_used = ir_xcalloc((size_t)p->ncalls + 1, 1);
  K->dl_used = ir_xcalloc((size_t)p->ncalls + 1, 1);
  K->de_used = ir_xcalloc((size_t)p->ncalls + 1, 1);
  K->fd_used = ir_xcalloc((size_t)g->nfields + 1, 1);
  K->cls_used = ir_xcalloc(2, 1); /* grows with the classes; an objective may have none */
  for (int i = 0; i < g->n; i++) K->blk[i] = -1;
  build_classes(K);
  K->nstages = g->fusion.nstages;
  /* the recompute pass's store marks: per-example arrays */
  for (int i = 0; i < g->n; i++) K->stored[i] = (g->nodes[i].flags & IR_F_STORE) != 0;
}

static void kg_free(kg *K) {
  for (int c = 0; c < K->ncls; c++) free(K->cls[c].atoms);
  free(K->cls);
  free(K->atoms);
  free(K->cls_of);
  free(K->need);
  free(K->mat);
  free(K->stored);
  free(K->blk);
  free(K->pos);
  free(K->bdom);
  free(K->mat_slot);
  free(K->lp_used);
  free(K->en_used);
  free(K->ls_used);
  free(K->dl_used);
  free(K->de_used);
  free(K->fd_used);
  free(K->cls_used);
}

int cg_objective_memory(const cg_prog *p, cg_objmem *om) {
  const ir_graph *g = p->g;
  memset(om, 0, sizeof *om);
  for (int i = 0; i < g->n; i++) om->masks += g->nodes[i].op == IR_PICK;
  if (p->opt->unfused) { /* every node its own buffer over the batch */
    om->unfused = g->n;
    return 0;
  }
  kg K;
  kg_init(&K, p);
  fused_dry_run(&K);
  for (int i = 0; i < g->n; i++) om->stored += K.stored[i] != 0;
  poc_mplan_init(&om->scratch, 1);
  om->scratch.unit = "x T doubles";
  int *slot = ir_xcalloc((size_t)g->n + 1, sizeof *slot);
  int rc = scratch_plan(&K, &om->scratch, slot);
  free(slot);
  kg_free(&K);
  return rc;
}

int cg_emit_kernels(FILE *f, const cg_prog *p, po_diag *d) {
  const ir_graph *g = p->g;
  kg K0;
  kg *K = &K0;
  kg_init(K, p);
  int rc = 0;
  if (g->fusion.ngroups == 0 || g->unfused != p->opt->unfused) {
    po_error_file(d, g->src ? g->src->path : "?", "internal error: the objective is emitted "
                  "before the fuse pass ran with fusion %s", p->opt->unfused ? "off" : "on");
    rc = -1;
  }
  header(K, f, p->opt->unfused ? "unfused: one function per IR node" : "fused");
  if (emit_prelude(f)) {
    po_error_file(d, g->src ? g->src->path : "?", "cannot read the kernel template objective.c "
                  "(set POC_TEMPLATE_DIR to the folder kernels/templates)");
    rc = -1;
  } else if (rc) {
  } else if (p->opt->unfused) {
    emit_unfused(K, f);
  } else {
    rc = emit_fused(K, f, d);
  }
  kg_free(K);
  return rc;
}
