/* lower.c — AST → IR. Defs are inlined (each call instantiates the body with its
 * arguments, which may be models or sequences as well as numbers), names are resolved,
 * and every value gets its level and, per token, its domain. What the language cannot
 * say is reported here with the position of the construct that says it:
 *
 *   a per-token vector combined with one over another sequence, a token reduction of a
 *   value that is not per-token, a batch reduction of one that is not per-example, a
 *   `loss` that is not one number per example or cannot train anything, a model or
 *   sequence argument that is not one, slice bounds that are not integer constants,
 *   misused sample()/pick(), a def applied to the wrong kinds of values.
 *
 * Errors do not cascade: a failed subexpression yields LV_ERR, which every consumer
 * passes on silently. */
#include <math.h>
#include <stdarg.h>
#include <stdlib.h>
#include <string.h>

#include "ir.h"

/* What an expression denotes before it becomes a number: the language has models,
 * sequences (data, slices, anchors), token literals and contexts besides values. */
typedef enum { LV_ERR, LV_NODE, LV_MODEL, LV_SEQ, LV_TOKS, LV_CTX, LV_DATA, LV_STR, LV_DEF, LV_GIVEN } lv_kind;

typedef struct lv {
  lv_kind kind;
  int node;              /* LV_NODE */
  int model;             /* LV_MODEL */
  int dom;               /* LV_SEQ */
  const ir_ctxpart *parts; /* LV_SEQ, LV_TOKS (one part), LV_CTX */
  int nparts;
  const char *text;      /* as written, for probe keys and messages */
  const struct lv *pair; /* LV_GIVEN: target and context of `y | ctx` passed to a def */
} lv;

typedef struct scope {
  const po_stmt *def;
  lv *vals;              /* one per def parameter */
  po_loc call_loc;
  struct scope *up;
} scope;

typedef struct lw {
  ir_graph *g;
  const po_program *prog;
  po_diag *d;
  lv *let_val;           /* per statement */
  char *let_state;       /* 0 not lowered, 1 in progress, 2 done */
  scope *sc;
  int depth;
  long inlined;          /* expressions lowered inside def bodies, against IR_MAX_INLINED */
  bool stopped;          /* a size limit was hit: everything after lowers to LV_ERR */
  const po_expr **picks; /* pick calls in source order */
  int npicks;
  int prompt_dom;
} lw;

static const lv LV_ERROR = {.kind = LV_ERR, .node = -1, .dom = -1, .model = -1};

static void lerr(lw *L, po_loc loc, const char *fmt, ...) __attribute__((format(printf, 3, 4)));
static void lerr(lw *L, po_loc loc, const char *fmt, ...) {
  char buf[1024];
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(buf, sizeof buf, fmt, ap);
  va_end(ap);
  po_error(L->d, loc, "%s", buf);
  for (scope *s = L->sc; s; s = s->up)
    po_note(L->d, s->call_loc, "in '%s' used here", s->def->name);
}

static lv lv_node(int node) {
  lv v = LV_ERROR;
  v.kind = LV_NODE;
  v.node = node;
  return v;
}

/* "one number per example", "per-token over 'chosen'", "a sequence" ... */
static const char *describe(lw *L, lv v, char *buf, size_t len) {
  switch (v.kind) {
  case LV_ERR: return "an error";
  case LV_MODEL: snprintf(buf, len, "'%s', a model", L->g->models[v.model].name); return buf;
  case LV_SEQ: snprintf(buf, len, "'%s', a sequence", v.text); return buf;
  case LV_TOKS: snprintf(buf, len, "the token literal %s", v.text); return buf;
  case LV_CTX: return "a concatenation of tokens (a context)";
  case LV_DATA: return "a data set";
  case LV_STR: return "a string";
  case LV_DEF: return "a function";
  case LV_GIVEN: return "a sequence with a context (y | ctx), which only logp, entropy and logsumsq take";
  case LV_NODE: break;
  }
  const ir_node *n = &L->g->nodes[v.node];
  switch (n->level) {
  case IR_LCONST: return "a constant";
  case IR_LBATCH: return "one number per batch";
  case IR_LEXAMPLE: return "one number per example";
  case IR_LTOKEN: snprintf(buf, len, "per-token over '%s'", L->g->doms[n->dom].name); return buf;
  }
  return "?";
}

static ir_level level_of(lw *L, lv v) { return L->g->nodes[v.node].level; }

/* The value an expression must be where a number is expected. */
static bool want_value(lw *L, lv v, po_loc loc, const char *where) {
  if (v.kind == LV_ERR) return false;
  if (v.kind == LV_NODE) return true;
  char b[256];
  if (v.kind == LV_SEQ)
    lerr(L, loc, "%s needs a number, but this is %s; its log-probabilities are logp(model, %s)",
         where, describe(L, v, b, sizeof b), v.text);
  else
    lerr(L, loc, "%s needs a number, but this is %s", where, describe(L, v, b, sizeof b));
  return false;
}

/* ---- constants ------------------------------------------------------------------- */

static lv lower_let(lw *L, int si);

/* Evaluates a constant expression (numbers, arithmetic, names bound to constants).
 * Knobs are runtime values and do not qualify. Returns 0, or -1 having said why. */
static int const_eval(lw *L, const po_expr *e, double *out, const char *what) {
  double a, b;
  switch (e->kind) {
  case PO_E_NUM: *out = e->num; return 0;
  case PO_E_UNARY:
    if (const_eval(L, e->lhs, &a, what)) return -1;
    *out = -a;
    return 0;
  case PO_E_BINARY:
    if (e->op == PO_OP_ADD || e->op == PO_OP_SUB || e->op == PO_OP_MUL || e->op == PO_OP_DIV) {
      if (const_eval(L, e->lhs, &a, what) || const_eval(L, e->rhs, &b, what)) return -1;
      *out = e->op == PO_OP_ADD ? a + b : e->op == PO_OP_SUB ? a - b : e->op == PO_OP_MUL ? a * b : a / b;
      return 0;
    }
    break;
  case PO_E_NAME: {
    for (int i = 0; i < L->prog->nstmts; i++) {
      const po_stmt *s = L->prog->stmts[i];
      if (!s->name || strcmp(s->name, e->str)) continue;
      if (s->kind == PO_S_PARAM) {
        lerr(L, e->loc, "%s must be a constant, but '%s' is a knob (a runtime value, set with --set)",
             what, e->str);
        return -1;
      }
      if (s->kind == PO_S_LET && L->depth < 64) {
        L->depth++;
        int r = const_eval(L, s->value, out, what);
        L->depth--;
        return r;
      }
    }
    break;
  }
  default: break;
  }
  lerr(L, e->loc, "%s must be a constant expression (numbers and + - * /)", what);
  return -1;
}

static int const_int(lw *L, const po_expr *e, const char *what, int *out) {
  double v;
  if (const_eval(L, e, &v, what)) return -1;
  if (!isfinite(v) || v != floor(v) || v < 0 || v > 1e9) {
    lerr(L, e->loc, "%s must be a non-negative integer, but it is %g", what, v);
    return -1;
  }
  *out = (int)v;
  return 0;
}

/* ---- source text ----------------------------------------------------------------- */

/* The text of a construct as written, whitespace and comments removed: the probe key
 * of a pick() call. NULL when the position does not cover the text. */
static const char *written(lw *L, po_loc loc) {
  const po_source *s = loc.src;
  if (!s || !s->text || loc.line < 1 || loc.end_line < loc.line) return NULL;
  size_t off = 0, start = (size_t)-1, end = (size_t)-1;
  int line = 1;
  for (;; off++) {
    size_t col = 0;
    size_t ls = off;
    while (off < s->len && s->text[off] != '\n') off++;
    col = off - ls;
    if (line == loc.line && (size_t)loc.col >= 1 && (size_t)loc.col <= col + 1) start = ls + (size_t)loc.col - 1;
    if (line == loc.end_line && (size_t)loc.end_col >= 1 && (size_t)loc.end_col <= col) end = ls + (size_t)loc.end_col;
    if (off >= s->len || line >= loc.end_line) break;
    line++;
  }
  if (start == (size_t)-1 || end == (size_t)-1 || end <= start) return NULL;
  char *buf = ir_alloc(L->g, end - start + 1);
  size_t n = 0;
  bool comment = false;
  for (size_t i = start; i < end; i++) {
    char c = s->text[i];
    if (c == '\n') comment = false;
    if (c == '#') comment = true;
    if (comment || c == ' ' || c == '\t' || c == '\r' || c == '\n') continue;
    buf[n++] = c;
  }
  buf[n] = 0;
  return buf;
}

/* ---- sequences and contexts ------------------------------------------------------ */

static int dom_sample(const ir_graph *g, int d) {
  while (d >= 0 && g->doms[d].kind == IR_DOM_SLICE) d = g->doms[d].base;
  return d >= 0 && g->doms[d].kind == IR_DOM_ANCHOR ? g->doms[d].sample : -1;
}

static lv seq_lv(lw *L, int dom, const char *text) {
  lv v = LV_ERROR;
  v.kind = LV_SEQ;
  v.dom = dom;
  ir_ctxpart *p = ir_alloc(L->g, sizeof *p);
  p->dom = dom;
  p->text = text;
  v.parts = p;
  v.nparts = 1;
  v.text = text;
  return v;
}

static bool is_tokens(lv v) { return v.kind == LV_SEQ || v.kind == LV_TOKS || v.kind == LV_CTX; }

/* The anchors (SAMPLE nodes) a call's tokens depend on, at most IR_MAX_IN. */
static int call_deps(lw *L, const ir_ctxpart *parts, int nparts, int *deps, po_loc loc) {
  int n = 0;
  for (int k = 0; k < nparts; k++) {
    int s = parts[k].dom >= 0 ? dom_sample(L->g, parts[k].dom) : -1;
    if (s < 0) continue;
    bool seen = false;
    for (int j = 0; j < n; j++) seen |= deps[j] == s;
    if (seen) continue;
    if (n == IR_MAX_IN) {
      lerr(L, loc, "a model call may read at most %d anchors", IR_MAX_IN);
      return -1;
    }
    deps[n++] = s;
  }
  return n;
}

/* ---- expressions ----------------------------------------------------------------- */

static lv lower_expr(lw *L, const po_expr *e);
static lv lower_call(lw *L, const po_expr *e, const char *bind);

/* Token vectors combine only within one domain. */
static bool same_domain(lw *L, const int *nodes, int n, po_loc loc) {
  int d = -1;
  for (int i = 0; i < n; i++) {
    const ir_node *x = &L->g->nodes[nodes[i]];
    if (x->level != IR_LTOKEN) continue;
    if (d < 0) d = x->dom;
    else if (x->dom != d) {
      lerr(L, loc,
           "cannot combine per-token values of '%s' and '%s'; slice both to a common prefix, "
           "e.g. x[:8]",
           L->g->doms[d].name, L->g->doms[x->dom].name);
      return false;
    }
  }
  return true;
}

static lv elementwise(lw *L, ir_op op, const lv *args, int n, po_loc loc, const char *what) {
  int in[3];
  bool ok = true;
  for (int i = 0; i < n; i++) {
    if (args[i].kind == LV_ERR) return LV_ERROR;
    ok &= want_value(L, args[i], loc, what);
    in[i] = args[i].node;
  }
  if (!ok || !same_domain(L, in, n, loc)) return LV_ERROR;
  if (n == 1) return lv_node(ir_unary(L->g, op, in[0], loc));
  if (n == 2) return lv_node(ir_binary(L->g, op, in[0], in[1], loc));
  return lv_node(ir_ternary(L->g, op, in[0], in[1], in[2], loc));
}

static lv lookup(lw *L, const po_expr *e) {
  const char *name = e->str;
  if (L->sc)
    for (int i = 0; i < L->sc->def->nparams; i++)
      if (!strcmp(L->sc->def->params[i], name)) return L->sc->vals[i];
  for (int i = 0; i < L->prog->nstmts; i++) {
    const po_stmt *s = L->prog->stmts[i];
    if (!s->name || strcmp(s->name, name)) continue;
    switch (s->kind) {
    case PO_S_LET: {
      lv v = lower_let(L, i);
      return v;
    }
    case PO_S_PARAM:
      for (int k = 0; k < L->g->nknobs; k++)
        if (!strcmp(L->g->knobs[k].name, name))
          return lv_node(ir_leaf(L->g, IR_PARAM, IR_LCONST, -1, k, e->loc));
      return LV_ERROR; /* its value was already diagnosed */
    case PO_S_FIELD:
      for (int k = 0; k < L->g->nfields; k++)
        if (!strcmp(L->g->fields[k].name, name)) {
          int dom = L->g->fields[k].dom;
          return lv_node(ir_leaf(L->g, IR_FIELD, dom < 0 ? IR_LEXAMPLE : IR_LTOKEN, dom, k, e->loc));
        }
      return LV_ERROR;
    case PO_S_SEQ:
      return seq_lv(L, ir_dom_seq(L->g, name), name);
    case PO_S_DEF: {
      lv v = LV_ERROR;
      v.kind = LV_DEF;
      v.text = name;
      return v;
    }
    default: break;
    }
  }
  const char *kind = L->g->data_kind;
  bool seq = !strcmp(name, "prompt") ||
             (kind && !strcmp(kind, "pairs") && (!strcmp(name, "chosen") || !strcmp(name, "rejected"))) ||
             (kind && !strcmp(kind, "points") && !strcmp(name, "response"));
  if (seq) return seq_lv(L, ir_dom_seq(L->g, name), name);
  if (!kind && (!strcmp(name, "chosen") || !strcmp(name, "rejected") || !strcmp(name, "response")))
    lerr(L, e->loc, "'%s' is a data sequence, but no data set is declared; add e.g. data = pairs(\"FILE.jsonl\")", name);
  else
    lerr(L, e->loc, "unknown name '%s'", name);
  return LV_ERROR;
}

static lv lower_slice(lw *L, const po_expr *e) {
  lv base = lower_expr(L, e->lhs);
  if (base.kind == LV_ERR) return base;
  int lo = 0, hi = -1;
  if (e->lo && const_int(L, e->lo, "a slice bound", &lo)) return LV_ERROR;
  if (e->hi && const_int(L, e->hi, "a slice bound", &hi)) return LV_ERROR;
  if (hi >= 0 && hi < lo) {
    lerr(L, e->loc, "slice [%d:%d] is empty: its end comes before its start", lo, hi);
    return LV_ERROR;
  }
  char lob[32] = "", hib[32] = "";
  if (lo) snprintf(lob, sizeof lob, "%d", lo);
  if (hi >= 0) snprintf(hib, sizeof hib, "%d", hi);
  if (base.kind == LV_SEQ) {
    if (lo == 0 && hi < 0) return base;
    int dom = ir_dom_slice(L->g, base.dom, lo, hi);
    return seq_lv(L, dom, ir_fmt(L->g, "%s[%s:%s]", base.text, lob, hib));
  }
  if (base.kind == LV_NODE && level_of(L, base) == IR_LTOKEN) {
    if (lo == 0 && hi < 0) return base;
    return lv_node(ir_slice(L->g, base.node, lo, hi, e->loc));
  }
  char b[256];
  lerr(L, e->loc, "only sequences and per-token values can be sliced, but this is %s",
       describe(L, base, b, sizeof b));
  return LV_ERROR;
}

/* Defs are inlined, so a def that uses another one twice doubles in size at each level:
 * forty such lines would take 2^40 nodes. Counting what is inlined and the nodes made
 * stops that within milliseconds, with the limit named, instead of running out of
 * memory. One error, then every later expression is LV_ERR and says nothing more. */
static bool over_limit(lw *L, const po_expr *e) {
  if (L->stopped) return true;
  if (L->sc && ++L->inlined > IR_MAX_INLINED) {
    const scope *top = L->sc;
    while (top->up) top = top->up;
    po_error(L->d, top->call_loc, "def expansion limit reached: expanding '%s' inlines more "
             "than %d expression nodes (a def that uses another def twice doubles in size)",
             top->def->name, IR_MAX_INLINED);
    L->stopped = true;
  } else if (L->g->n >= IR_MAX_NODES) {
    lerr(L, e->loc, "IR node limit reached: the program lowers to more than %d nodes",
         IR_MAX_NODES);
    L->stopped = true;
  }
  return L->stopped;
}

static lv lower_expr(lw *L, const po_expr *e) {
  if (over_limit(L, e)) return LV_ERROR;
  switch (e->kind) {
  case PO_E_NUM: return lv_node(ir_const(L->g, e->num, e->loc));
  case PO_E_STR: {
    lv v = LV_ERROR;
    v.kind = LV_STR;
    v.text = e->str;
    return v;
  }
  case PO_E_NAME: return lookup(L, e);
  case PO_E_TOKENS: {
    lv v = LV_ERROR;
    v.kind = LV_TOKS;
    size_t cap = 3 + (size_t)e->ntoks * 22;
    char *t = ir_alloc(L->g, cap);
    size_t o = (size_t)snprintf(t, cap, "[");
    for (int i = 0; i < e->ntoks; i++)
      o += (size_t)snprintf(t + o, cap - o, "%s%lld", i ? "," : "", (long long)e->toks[i]);
    snprintf(t + o, cap - o, "]");
    ir_ctxpart *p = ir_alloc(L->g, sizeof *p);
    p->dom = -1;
    p->toks = e->toks;
    p->ntoks = e->ntoks;
    p->text = t;
    v.parts = p;
    v.nparts = 1;
    v.text = t;
    return v;
  }
  case PO_E_UNARY: {
    lv a = lower_expr(L, e->lhs);
    return elementwise(L, IR_NEG, &a, 1, e->loc, "'-'");
  }
  case PO_E_BINARY: {
    lv ab[2] = {lower_expr(L, e->lhs), lower_expr(L, e->rhs)};
    if (ab[0].kind == LV_ERR || ab[1].kind == LV_ERR) return LV_ERROR;
    if (e->op == PO_OP_CONCAT) {
      for (int i = 0; i < 2; i++)
        if (!is_tokens(ab[i])) {
          char b[256];
          lerr(L, i ? e->rhs->loc : e->lhs->loc,
               "'++' joins sequences and token literals into a context, but this is %s",
               describe(L, ab[i], b, sizeof b));
          return LV_ERROR;
        }
      lv v = LV_ERROR;
      v.kind = LV_CTX;
      v.nparts = ab[0].nparts + ab[1].nparts;
      ir_ctxpart *p = ir_alloc(L->g, (size_t)v.nparts * sizeof *p);
      memcpy(p, ab[0].parts, (size_t)ab[0].nparts * sizeof *p);
      memcpy(p + ab[0].nparts, ab[1].parts, (size_t)ab[1].nparts * sizeof *p);
      v.parts = p;
      v.text = ir_fmt(L->g, "%s,%s", ab[0].text, ab[1].text); /* as probe keys write it */
      return v;
    }
    static const ir_op ops[] = {[PO_OP_ADD] = IR_ADD, [PO_OP_SUB] = IR_SUB, [PO_OP_MUL] = IR_MUL,
                                [PO_OP_DIV] = IR_DIV, [PO_OP_LT] = IR_LT,   [PO_OP_LE] = IR_LE,
                                [PO_OP_GT] = IR_GT,   [PO_OP_GE] = IR_GE,   [PO_OP_EQ] = IR_EQ,
                                [PO_OP_NE] = IR_NE};
    static const char *sym[] = {[PO_OP_ADD] = "'+'", [PO_OP_SUB] = "'-'", [PO_OP_MUL] = "'*'",
                                [PO_OP_DIV] = "'/'", [PO_OP_LT] = "'<'",  [PO_OP_LE] = "'<='",
                                [PO_OP_GT] = "'>'",  [PO_OP_GE] = "'>='", [PO_OP_EQ] = "'=='",
                                [PO_OP_NE] = "'!='"};
    if (e->op > PO_OP_NE) return LV_ERROR;
    return elementwise(L, ops[e->op], ab, 2, e->loc, sym[e->op]);
  }
  case PO_E_CALL: return lower_call(L, e, NULL);
  case PO_E_SLICE: return lower_slice(L, e);
  case PO_E_GIVEN:
    lerr(L, e->loc, "'|' gives a context only in the second argument of logp, entropy or logsumsq");
    return LV_ERROR;
  case PO_E_LIST:
    lerr(L, e->loc, "a list of names is only allowed as lora's targets");
    return LV_ERROR;
  }
  return LV_ERROR;
}

/* ---- calls ----------------------------------------------------------------------- */

static const po_expr *kwarg(const po_expr *e, const char *name) {
  for (int i = 0; i < e->nargs; i++)
    if (e->args[i].name && !strcmp(e->args[i].name, name)) return e->args[i].value;
  return NULL;
}

static int npositional(const po_expr *e) {
  int n = 0;
  for (int i = 0; i < e->nargs; i++) n += !e->args[i].name;
  return n;
}

static bool want_model(lw *L, lv v, const po_expr *arg, const char *fn) {
  if (v.kind == LV_ERR) return false;
  if (v.kind == LV_MODEL) return true;
  char b[256];
  lerr(L, arg->loc, "%s expects a model as its first argument (e.g. policy), but this is %s", fn,
       describe(L, v, b, sizeof b));
  return false;
}

/* The probe key of a call: model/target, or model/target|ctx with the context's names
 * as written, separated by commas. An explicit `| prompt` is the default context and
 * is keyed without it. */
static const char *call_key(lw *L, int model, const char *target, const char *ctx) {
  if (ctx) return ir_fmt(L->g, "%s/%s|%s", L->g->models[model].name, target, ctx);
  return ir_fmt(L->g, "%s/%s", L->g->models[model].name, target);
}

static lv lower_model_call(lw *L, const po_expr *e, po_builtin b) {
  const char *fn = po_builtin_get(b)->name;
  lv m = lower_expr(L, e->args[0].value);
  const po_expr *ye = e->args[1].value, *ce = NULL;
  if (ye->kind == PO_E_GIVEN) {
    ce = ye->rhs;
    ye = ye->lhs;
  }
  lv y = lower_expr(L, ye);
  lv c = ce ? lower_expr(L, ce) : LV_ERROR;
  if (y.kind == LV_GIVEN) { /* `y | ctx` handed through a def's parameter */
    c = y.pair[1];
    y = y.pair[0];
    ce = ye;
  }
  if (!want_model(L, m, e->args[0].value, fn) || y.kind == LV_ERR || (ce && c.kind == LV_ERR))
    return LV_ERROR;
  char buf[256];
  if (y.kind != LV_SEQ) {
    if (y.kind == LV_CTX)
      lerr(L, ye->loc, "the target of %s must be one sequence; put the tokens before it in the "
                       "context: %s(m, y | a ++ b)", fn, fn);
    else
      lerr(L, ye->loc, "%s expects a sequence as its second argument (e.g. chosen, or chosen | "
                       "prompt), but this is %s", fn, describe(L, y, buf, sizeof buf));
    return LV_ERROR;
  }
  if (ce && !is_tokens(c)) {
    lerr(L, ce->loc, "the context after '|' must be sequences and token literals joined with "
                     "'++', but this is %s", describe(L, c, buf, sizeof buf));
    return LV_ERROR;
  }
  ir_call *call = ir_alloc(L->g, sizeof *call);
  call->target = y.dom;
  if (ce && !(c.nparts == 1 && c.parts[0].dom == L->prompt_dom)) {
    call->ctx = c.parts;
    call->nctx = c.nparts;
  }
  ir_ctxpart all[64];
  int nall = 0;
  all[nall++] = y.parts[0];
  for (int k = 0; k < call->nctx && nall < 64; k++) all[nall++] = call->ctx[k];
  int deps[IR_MAX_IN];
  int nd = call_deps(L, all, nall, deps, e->loc);
  if (nd < 0) return LV_ERROR;
  ir_node n;
  memset(&n, 0, sizeof n);
  n.op = b == PO_B_LOGP      ? IR_LOGP
         : b == PO_B_ENTROPY ? IR_ENTROPY
         : b == PO_B_REWARD  ? IR_REWARD
                             : IR_LOGSUMSQ;
  n.nin = nd;
  for (int k = 0; k < IR_MAX_IN; k++) n.in[k] = k < nd ? deps[k] : -1;
  n.level = b == PO_B_REWARD ? IR_LEXAMPLE : IR_LTOKEN; /* a score per example */
  n.dom = b == PO_B_REWARD ? -1 : y.dom;
  n.idx = m.model;
  n.hi = -1;
  n.call = call;
  n.key = call_key(L, m.model, y.text, call->nctx ? c.text : NULL);
  n.loc = e->loc;
  return lv_node(ir_push(L->g, n));
}

static lv lower_sample(lw *L, const po_expr *e, const char *bind) {
  if (!bind) {
    lerr(L, e->loc, "sample(...) must be bound to a name, e.g. a = sample(policy, prompt, "
                    "tokens=8); probe keys name the anchor by it");
    return LV_ERROR;
  }
  lv m = lower_expr(L, e->args[0].value);
  lv c = lower_expr(L, e->args[1].value);
  if (!want_model(L, m, e->args[0].value, "sample") || c.kind == LV_ERR) return LV_ERROR;
  char buf[256];
  if (!is_tokens(c)) {
    lerr(L, e->args[1].value->loc, "sample expects a context to continue as its second argument "
         "(e.g. prompt), but this is %s", describe(L, c, buf, sizeof buf));
    return LV_ERROR;
  }
  const po_expr *te = kwarg(e, "tokens"), *tp = kwarg(e, "temperature"), *pp = kwarg(e, "top_p");
  int tokens = 0;
  double temp = 1, top_p = 1;
  if (!te) {
    lerr(L, e->loc, "sample needs tokens=K, the number of tokens to draw");
    return LV_ERROR;
  }
  if (const_int(L, te, "tokens", &tokens)) return LV_ERROR;
  if (tokens < 1) {
    lerr(L, te->loc, "tokens must be at least 1");
    return LV_ERROR;
  }
  if (tp && const_eval(L, tp, &temp, "temperature")) return LV_ERROR;
  if (pp && const_eval(L, pp, &top_p, "top_p")) return LV_ERROR;
  if (!(temp >= 0) || !isfinite(temp)) {
    lerr(L, tp->loc, "temperature must be a finite number >= 0 (0 is greedy)");
    return LV_ERROR;
  }
  if (!(top_p > 0 && top_p <= 1)) {
    lerr(L, pp->loc, "top_p must be in (0, 1]");
    return LV_ERROR;
  }
  int deps[IR_MAX_IN];
  int nd = call_deps(L, c.parts, c.nparts, deps, e->loc);
  if (nd < 0) return LV_ERROR;
  int dom = ir_dom_anchor(L->g, bind);
  ir_call *call = ir_alloc(L->g, sizeof *call);
  call->target = dom;
  if (!(c.nparts == 1 && c.parts[0].dom == L->prompt_dom)) {
    call->ctx = c.parts;
    call->nctx = c.nparts;
  }
  ir_node n;
  memset(&n, 0, sizeof n);
  n.op = IR_SAMPLE;
  n.nin = nd;
  for (int k = 0; k < IR_MAX_IN; k++) n.in[k] = k < nd ? deps[k] : -1;
  n.level = IR_LTOKEN;
  n.dom = dom;
  n.idx = m.model;
  n.hi = -1;
  n.call = call;
  n.key = L->g->doms[dom].name;
  n.loc = e->loc;
  int id = ir_push(L->g, n);
  ir_domain *d = &L->g->doms[dom];
  d->sample = id;
  d->tokens = tokens;
  d->temperature = temp;
  d->top_p = top_p;
  return seq_lv(L, dom, d->name);
}

static lv lower_pick(lw *L, const po_expr *e) {
  lv y = lower_expr(L, e->args[0].value);
  lv n = lower_expr(L, e->args[1].value);
  if (y.kind == LV_ERR || n.kind == LV_ERR) return LV_ERROR;
  char buf[256];
  if (y.kind != LV_SEQ) {
    lerr(L, e->args[0].value->loc, "pick expects a sequence as its first argument (the tokens "
         "to pick among, e.g. rejected), but this is %s", describe(L, y, buf, sizeof buf));
    return LV_ERROR;
  }
  if (!want_value(L, n, e->args[1].value->loc, "pick's count")) return LV_ERROR;
  if (level_of(L, n) == IR_LTOKEN) {
    lerr(L, e->args[1].value->loc, "pick's count must be one number per example, but it is %s; "
         "reduce it with sum or mean", describe(L, n, buf, sizeof buf));
    return LV_ERROR;
  }
  int index = -1;
  for (int i = 0; i < L->npicks; i++)
    if (L->picks[i] == e) index = i;
  ir_node p;
  memset(&p, 0, sizeof p);
  p.op = IR_PICK;
  p.in[0] = n.node;
  p.in[1] = p.in[2] = p.in[3] = -1;
  p.nin = 1;
  int s = dom_sample(L->g, y.dom);
  if (s >= 0) p.in[p.nin++] = s;
  p.level = IR_LTOKEN;
  p.dom = y.dom;
  p.idx = index;
  p.hi = -1;
  const char *key = written(L, e->loc);
  if (!key) key = ir_fmt(L->g, "pick#%d", index);
  /* one key per distinct draw: a pick inside a def used with other arguments */
  for (int i = 0; i < L->g->n; i++)
    if (L->g->nodes[i].op == IR_PICK && !strcmp(L->g->nodes[i].key, key) &&
        (L->g->nodes[i].in[0] != p.in[0] || L->g->nodes[i].dom != p.dom)) {
      key = ir_fmt(L->g, "%s#%d", key, L->g->n);
      break;
    }
  p.key = key;
  p.loc = e->loc;
  return lv_node(ir_push(L->g, p));
}

/* pos(y): each token's 0-based index in y, per-token over y; a count, so no gradient. */
static lv lower_pos(lw *L, const po_expr *e) {
  lv y = lower_expr(L, e->args[0].value);
  if (y.kind == LV_ERR) return LV_ERROR;
  char buf[256];
  if (y.kind != LV_SEQ) {
    lerr(L, e->args[0].value->loc, "pos expects a sequence (e.g. chosen, prompt[1:]) and gives "
         "each of its tokens' index, but this is %s", describe(L, y, buf, sizeof buf));
    return LV_ERROR;
  }
  int id = ir_leaf(L->g, IR_POS, IR_LTOKEN, y.dom, 0, e->loc);
  int s = dom_sample(L->g, y.dom);
  if (s >= 0) {
    L->g->nodes[id].in[0] = s;
    L->g->nodes[id].nin = 1;
  }
  return lv_node(id);
}

static lv lower_def_call(lw *L, const po_expr *e, const po_stmt *def) {
  if (e->nargs != def->nparams || npositional(e) != e->nargs) {
    lerr(L, e->loc, "'%s' takes %d argument%s, given %d", def->name, def->nparams,
         def->nparams == 1 ? "" : "s", e->nargs);
    return LV_ERROR;
  }
  if (L->depth >= 64) {
    lerr(L, e->loc, "defs nest more than 64 deep at '%s' (is it recursive?)", def->name);
    return LV_ERROR;
  }
  scope s = {.def = def, .call_loc = e->loc, .up = L->sc};
  s.vals = calloc((size_t)def->nparams + 1, sizeof *s.vals);
  if (!s.vals) return LV_ERROR;
  bool ok = true;
  for (int i = 0; i < def->nparams; i++) {
    const po_expr *a = e->args[i].value;
    if (a->kind == PO_E_GIVEN) { /* for a logp, entropy or logsumsq inside the def */
      lv *pair = ir_alloc(L->g, 2 * sizeof *pair);
      pair[0] = lower_expr(L, a->lhs);
      pair[1] = lower_expr(L, a->rhs);
      s.vals[i] = LV_ERROR;
      if (pair[0].kind != LV_ERR && pair[1].kind != LV_ERR) {
        s.vals[i].kind = LV_GIVEN;
        s.vals[i].pair = pair;
        s.vals[i].text = pair[0].text;
      }
      ok &= s.vals[i].kind != LV_ERR;
      continue;
    }
    s.vals[i] = lower_expr(L, a);
    ok &= s.vals[i].kind != LV_ERR;
  }
  lv r = LV_ERROR;
  if (ok) {
    L->sc = &s;
    L->depth++;
    r = lower_expr(L, def->value);
    L->depth--;
    L->sc = s.up;
  }
  free(s.vals);
  if (r.kind == LV_NODE && r.node >= 0 && !L->g->nodes[r.node].name)
    L->g->nodes[r.node].name = ir_fmt(L->g, "%s()", def->name);
  return r;
}

static lv lower_call(lw *L, const po_expr *e, const char *bind) {
  po_builtin b = po_builtin_lookup(e->str);
  if (b == PO_B_NONE) {
    const po_stmt *def = po_program_find(L->prog, e->str);
    if (def && def->kind == PO_S_DEF) return lower_def_call(L, e, def);
    lerr(L, e->loc, "unknown function '%s'", e->str);
    return LV_ERROR;
  }
  const po_builtin_info *bi = po_builtin_get(b);
  int np = npositional(e);
  if (np < bi->min_args || np > bi->max_args) {
    lerr(L, e->loc, "%s takes %d to %d arguments, given %d", bi->name, bi->min_args, bi->max_args, np);
    return LV_ERROR;
  }
  char buf[256];
  switch (bi->kind) {
  case PO_BK_DECL:
    lerr(L, e->loc, "%s(...) declares something and must be bound to a name at the top level, "
                    "e.g. x = %s(...)", bi->name, bi->name);
    return LV_ERROR;
  case PO_BK_MODEL:
    if (b == PO_B_SAMPLE) return lower_sample(L, e, bind);
    return lower_model_call(L, e, b);
  case PO_BK_SEQ: return b == PO_B_POS ? lower_pos(L, e) : lower_pick(L, e);
  case PO_BK_GRAD: {
    lv a = lower_expr(L, e->args[0].value);
    return elementwise(L, IR_SG, &a, 1, e->loc, "sg");
  }
  case PO_BK_TOKR: {
    lv a[2] = {LV_ERROR, LV_ERROR};
    for (int i = 0; i < np; i++) a[i] = lower_expr(L, e->args[i].value);
    for (int i = 0; i < np; i++)
      if (a[i].kind == LV_ERR) return LV_ERROR;
    if (b == PO_B_TMAX && np == 2) return elementwise(L, IR_MAX, a, 2, e->loc, "max");
    if (b == PO_B_LEN && a[0].kind == LV_SEQ) {
      int s = dom_sample(L->g, a[0].dom);
      int id = ir_leaf(L->g, IR_SEQLEN, IR_LEXAMPLE, a[0].dom, 0, e->loc);
      if (s >= 0) {
        L->g->nodes[id].in[0] = s;
        L->g->nodes[id].nin = 1;
      }
      return lv_node(id);
    }
    int in[2];
    for (int i = 0; i < np; i++) {
      if (!want_value(L, a[i], e->args[i].value->loc, bi->name)) return LV_ERROR;
      if (level_of(L, a[i]) != IR_LTOKEN) {
        lerr(L, e->args[i].value->loc, "%s reduces over tokens and expects a per-token value, "
             "but this is %s", bi->name, describe(L, a[i], buf, sizeof buf));
        return LV_ERROR;
      }
      in[i] = a[i].node;
    }
    if (!same_domain(L, in, np, e->loc)) return LV_ERROR;
    static const ir_op ops[PO_B_COUNT] = {[PO_B_SUM] = IR_SUM, [PO_B_MEAN] = IR_MEAN,
                                          [PO_B_TMAX] = IR_TMAX, [PO_B_LEN] = IR_LEN,
                                          [PO_B_COS] = IR_COS, [PO_B_DOT] = IR_DOT,
                                          [PO_B_NORM] = IR_NORM};
    return lv_node(ir_reduce(L->g, ops[b], in[0], np == 2 ? in[1] : -1, e->loc));
  }
  case PO_BK_BATCH: {
    lv a = lower_expr(L, e->args[0].value);
    if (!want_value(L, a, e->args[0].value->loc, bi->name)) return LV_ERROR;
    ir_level lv0 = level_of(L, a);
    if (lv0 != IR_LEXAMPLE) {
      lerr(L, e->args[0].value->loc, "%s %s the examples of a batch and expects one "
           "number per example, but this is %s%s", bi->name,
           b == PO_B_BATCH_SORT ? "sorts" : "reduces over", describe(L, a, buf, sizeof buf),
           lv0 == IR_LTOKEN ? "; reduce it over tokens first, e.g. with sum or mean" : "");
      return LV_ERROR;
    }
    ir_op op = b == PO_B_BATCH_MEAN ? IR_BMEAN : b == PO_B_BATCH_STD ? IR_BSTD
             : b == PO_B_BATCH_SORT ? IR_BSORT : IR_BSUM;
    return lv_node(ir_reduce(L->g, op, a.node, -1, e->loc));
  }
  case PO_BK_ELEM: {
    lv a[3] = {LV_ERROR, LV_ERROR, LV_ERROR};
    for (int i = 0; i < np; i++) a[i] = lower_expr(L, e->args[i].value);
    static const ir_op ops[PO_B_COUNT] = {
        [PO_B_EXP] = IR_EXP,       [PO_B_LOG] = IR_LOG,         [PO_B_LOG1P] = IR_LOG1P,
        [PO_B_LOG1MEXP] = IR_LOG1MEXP, [PO_B_SIGMOID] = IR_SIGMOID, [PO_B_LOGSIGMOID] = IR_LOGSIGMOID,
        [PO_B_SOFTPLUS] = IR_SOFTPLUS, [PO_B_TANH] = IR_TANH,   [PO_B_ABS] = IR_ABS,
        [PO_B_SQRT] = IR_SQRT,     [PO_B_POW] = IR_POW,         [PO_B_MIN] = IR_MIN,
        [PO_B_FLOOR] = IR_FLOOR,   [PO_B_WHERE] = IR_WHERE};
    if (b == PO_B_CLAMP) {
      /* clamp(x, lo, hi) = min(max(x, lo), hi): two ops with known gradients */
      lv m = elementwise(L, IR_MAX, a, 2, e->loc, "clamp");
      if (m.kind == LV_ERR) return m;
      lv mh[2] = {m, a[2]};
      return elementwise(L, IR_MIN, mh, 2, e->loc, "clamp");
    }
    return elementwise(L, ops[b], a, np, e->loc, bi->name);
  }
  }
  return LV_ERROR;
}

/* ---- statements ------------------------------------------------------------------ */

static lv lower_decl(lw *L, const po_stmt *s) {
  const po_expr *e = s->value;
  po_builtin b = po_builtin_lookup(e->str);
  lv v = LV_ERROR;
  ir_graph *g = L->g;
  if (b == PO_B_MODEL_DECL || b == PO_B_FROZEN || b == PO_B_LORA) {
    if (e->nargs < 1) return LV_ERROR;
    ir_model m = {.name = s->name, .trainable = b != PO_B_FROZEN, .of = -1, .loc = s->loc};
    if (b == PO_B_LORA) {
      /* peft's LoraConfig defaults: r 8, lora_alpha 8, lora_dropout 0, and for Llama,
         Mistral and Qwen2 the targets q_proj and v_proj */
      const po_expr *base = e->args[0].value;
      if (base->kind != PO_E_CALL || base->nargs < 1 || base->args[0].value->kind != PO_E_STR) {
        lerr(L, base->loc, "lora expects model(\"DIR\") as its first argument");
        return LV_ERROR;
      }
      m.path = base->args[0].value->str;
      m.lora_r = 8;
      m.lora_alpha = 8;
      m.lora_dropout = 0;
      m.lora_targets = 1u << 0 | 1u << 2;
      for (int i = 1; i < e->nargs; i++) {
        const po_arg *a = &e->args[i];
        if (!a->name) continue;
        if (!strcmp(a->name, "targets")) {
          const char *const *names = po_lora_targets();
          m.lora_targets = 0;
          for (int k = 0; k < a->value->nargs; k++)
            for (int t = 0; names[t]; t++)
              if (!strcmp(names[t], a->value->args[k].value->str)) m.lora_targets |= 1u << t;
          m.lora_set |= 4;
        } else if (!strcmp(a->name, "adapter")) {
          m.lora_adapter = a->value->str;
        } else {
          double x;
          if (const_eval(L, a->value, &x, a->name)) return LV_ERROR;
          if (!strcmp(a->name, "r")) m.lora_r = (int)x, m.lora_set |= 1;
          else if (!strcmp(a->name, "alpha")) m.lora_alpha = x, m.lora_set |= 2;
          else m.lora_dropout = x;
        }
      }
    } else if (b == PO_B_MODEL_DECL) {
      if (e->args[0].value->kind != PO_E_STR) {
        lerr(L, e->args[0].value->loc, "model expects the path of a model folder as a string");
        return LV_ERROR;
      }
      m.path = e->args[0].value->str;
    } else {
      lv of = lower_expr(L, e->args[0].value);
      if (!want_model(L, of, e->args[0].value, "frozen")) return LV_ERROR;
      m.of = of.model;
    }
    ir_model *mm = ir_alloc(g, (size_t)(g->nmodels + 1) * sizeof *mm);
    if (g->nmodels) memcpy(mm, g->models, (size_t)g->nmodels * sizeof *mm);
    mm[g->nmodels] = m;
    g->models = mm;
    v.kind = LV_MODEL;
    v.model = g->nmodels++;
    v.text = s->name;
    return v;
  }
  if (e->nargs < 1 || e->args[0].value->kind != PO_E_STR) {
    lerr(L, e->loc, "%s expects the path of a JSONL file as a string", e->str);
    return LV_ERROR;
  }
  v.kind = LV_DATA;
  v.text = s->name;
  return v;
}

static lv lower_let(lw *L, int si) {
  const po_stmt *s = L->prog->stmts[si];
  if (L->let_state[si] == 2) return L->let_val[si];
  if (L->let_state[si] == 1) {
    lerr(L, s->name_loc, "'%s' is defined in terms of itself", s->name);
    return LV_ERROR;
  }
  L->let_state[si] = 1;
  scope *saved = L->sc;
  L->sc = NULL;
  lv v;
  const po_expr *e = s->value;
  po_builtin b = e->kind == PO_E_CALL ? po_builtin_lookup(e->str) : PO_B_NONE;
  if (b != PO_B_NONE && po_builtin_get(b)->kind == PO_BK_DECL) v = lower_decl(L, s);
  else if (e->kind == PO_E_CALL) v = lower_call(L, e, s->name);
  else v = lower_expr(L, e);
  /* the value carries its name into generated code: a node keeps the first let that
     binds it, over the name of the def that made it ("S()") */
  if (v.kind == LV_NODE && v.node >= 0) {
    const char *old = L->g->nodes[v.node].name;
    if (!old || old[strlen(old) - 1] == ')') L->g->nodes[v.node].name = s->name;
  }
  /* a name bound to tokens is written by its name in probe keys */
  if (v.kind == LV_SEQ || v.kind == LV_TOKS || v.kind == LV_CTX) {
    ir_ctxpart *p = ir_alloc(L->g, (size_t)v.nparts * sizeof *p);
    memcpy(p, v.parts, (size_t)v.nparts * sizeof *p);
    if (v.nparts == 1) p[0].text = s->name;
    v.parts = p;
    v.text = s->name;
  }
  L->sc = saved;
  L->let_val[si] = v;
  L->let_state[si] = 2;
  return v;
}

static int pick_order(const void *a, const void *b) {
  const po_expr *x = *(const po_expr *const *)a, *y = *(const po_expr *const *)b;
  if (x->loc.line != y->loc.line) return x->loc.line < y->loc.line ? -1 : 1;
  return (x->loc.col > y->loc.col) - (x->loc.col < y->loc.col);
}

static void collect_picks(lw *L, const po_expr *e, int *cap) {
  if (!e) return;
  if (e->kind == PO_E_CALL && !strcmp(e->str, "pick")) {
    if (L->npicks == *cap) {
      *cap = *cap ? *cap * 2 : 8;
      const po_expr **p = realloc(L->picks, (size_t)*cap * sizeof *p);
      if (!p) return;
      L->picks = p;
    }
    L->picks[L->npicks++] = e;
  }
  collect_picks(L, e->lhs, cap);
  collect_picks(L, e->rhs, cap);
  collect_picks(L, e->lo, cap);
  collect_picks(L, e->hi, cap);
  for (int i = 0; i < e->nargs; i++) collect_picks(L, e->args[i].value, cap);
}

static void lower_globals(lw *L) {
  ir_graph *g = L->g;
  const po_program *p = L->prog;
  int nk = 0, nf = 0, nq = 0;
  for (int i = 0; i < p->nstmts; i++) {
    nk += p->stmts[i]->kind == PO_S_PARAM;
    nf += p->stmts[i]->kind == PO_S_FIELD;
    nq += p->stmts[i]->kind == PO_S_SEQ;
    const po_stmt *s = p->stmts[i];
    if (s->kind == PO_S_LET && s->value->kind == PO_E_CALL) {
      if (!strcmp(s->value->str, "pairs")) g->data_kind = "pairs";
      if (!strcmp(s->value->str, "points")) g->data_kind = "points";
    }
    if (s->kind == PO_S_TRAIN)
      for (int k = 0; k < s->nitems; k++)
        if (!strcmp(s->items[k].key, "seed") && s->items[k].value->kind == PO_E_NUM)
          g->train_seed = (int)s->items[k].value->num;
  }
  g->knobs = ir_alloc(g, (size_t)(nk + 1) * sizeof *g->knobs);
  g->fields = ir_alloc(g, (size_t)(nf + 1) * sizeof *g->fields);
  g->seqs = ir_alloc(g, (size_t)(nq + 1) * sizeof *g->seqs);
  for (int i = 0; i < p->nstmts; i++)
    if (p->stmts[i]->kind == PO_S_SEQ) g->seqs[g->nseqs++] = p->stmts[i]->name;
  L->prompt_dom = ir_dom_seq(g, "prompt");
  for (int i = 0; i < p->nstmts; i++) {
    const po_stmt *s = p->stmts[i];
    if (s->kind == PO_S_PARAM) {
      double v;
      if (const_eval(L, s->value, &v, "a param's value")) continue;
      if (!isfinite(v)) {
        lerr(L, s->value->loc, "param '%s' is not a finite number", s->name);
        continue;
      }
      g->knobs[g->nknobs++] = (ir_knob){.name = s->name, .value = v, .loc = s->loc};
    } else if (s->kind == PO_S_FIELD) {
      int dom = -1;
      if (s->field_seq) {
        const char *q = s->field_seq;
        bool ok = !strcmp(q, "prompt") ||
                  (g->data_kind && !strcmp(g->data_kind, "pairs") && (!strcmp(q, "chosen") || !strcmp(q, "rejected"))) ||
                  (g->data_kind && !strcmp(g->data_kind, "points") && !strcmp(q, "response"));
        for (int k = 0; k < g->nseqs; k++) ok = ok || !strcmp(q, g->seqs[k]);
        if (!ok) {
          lerr(L, s->field_seq_loc, "a per-token field follows a data sequence (%s), not '%s'",
               g->data_kind && !strcmp(g->data_kind, "points") ? "prompt or response"
                                                               : "prompt, chosen or rejected",
               q);
          continue;
        }
        dom = ir_dom_seq(g, q);
      }
      g->fields[g->nfields++] = (ir_field){.name = s->name, .dom = dom, .loc = s->loc};
    }
  }
  int cap = 0;
  for (int i = 0; i < p->nstmts; i++) {
    collect_picks(L, p->stmts[i]->value, &cap);
    for (int k = 0; k < p->stmts[i]->nitems; k++) collect_picks(L, p->stmts[i]->items[k].value, &cap);
  }
  if (L->npicks) qsort(L->picks, (size_t)L->npicks, sizeof *L->picks, pick_order);
}

/* logsumsq(M, y) has no gradient (it is a weighting statistic, e.g. WPO's weights, which
 * are constants of the step). Rather than drop a term silently, every logsumsq call of a
 * trainable model that 'loss' reaches along inputs reverse mode would differentiate (not
 * through sg, comparisons, floor, counts or masks) is an error at the call. Returns how
 * many it reported. */
static int reject_nograd(lw *L, int loss) {
  ir_graph *g = L->g;
  char *reach = calloc((size_t)g->n + 1, 1);
  if (!reach) {
    fprintf(stderr, "poc: out of memory\n");
    exit(1);
  }
  int found = 0;
  reach[loss] = 1;
  for (int i = loss; i >= 0; i--) {
    if (!reach[i]) continue;
    const ir_node *n = &g->nodes[i];
    if (n->op == IR_LOGSUMSQ && g->models[n->idx].trainable) {
      lerr(L, n->loc, "logsumsq has no gradient, but 'loss' would carry one into this call "
           "(%s); use it under sg(...), as a weight is: sg(exp(mean(logp(m, y) - logsumsq(m, y))))",
           n->key);
      found++;
      continue;
    }
    for (int k = 0; k < n->nin; k++)
      if (ir_input_differentiable(n, k)) reach[n->in[k]] = 1;
  }
  free(reach);
  return found;
}

ir_graph *ir_lower(const po_program *prog, po_diag *d) {
  int errors0 = po_diag_errors(d);
  lw L0;
  memset(&L0, 0, sizeof L0);
  lw *L = &L0;
  L->g = ir_new(prog->src);
  L->prog = prog;
  L->d = d;
  L->let_val = calloc((size_t)prog->nstmts + 1, sizeof *L->let_val);
  L->let_state = calloc((size_t)prog->nstmts + 1, 1);
  if (!L->let_val || !L->let_state) {
    fprintf(stderr, "poc: out of memory\n");
    exit(1);
  }
  ir_graph *g = L->g;
  lower_globals(L);
  int loss_stmt = -1;
  for (int i = 0; i < prog->nstmts; i++) {
    const po_stmt *s = prog->stmts[i];
    if (s->kind != PO_S_LET) continue;
    lower_let(L, i);
    if (!strcmp(s->name, "loss")) loss_stmt = i;
  }
  ir_infer_flags(g);
  if (loss_stmt >= 0 && L->let_val[loss_stmt].kind != LV_ERR) {
    const po_stmt *s = prog->stmts[loss_stmt];
    lv v = L->let_val[loss_stmt];
    char buf[256];
    g->loss_loc = s->value->loc;
    if (v.kind != LV_NODE) {
      lerr(L, s->value->loc, "'loss' must be one number per example, but it is %s",
           describe(L, v, buf, sizeof buf));
    } else {
      const ir_node *n = &g->nodes[v.node];
      if (n->level == IR_LTOKEN)
        lerr(L, s->value->loc, "'loss' must be one number per example, but it is per-token over "
             "'%s'; reduce it with sum or mean", g->doms[n->dom].name);
      else if (n->level == IR_LBATCH)
        lerr(L, s->value->loc, "'loss' must be one number per example, but it is one number per "
             "batch; the per-example loss is averaged over the batch for you");
      else if (n->level == IR_LCONST)
        lerr(L, s->value->loc, "'loss' must be one number per example, but it is a constant");
      else if (reject_nograd(L, v.node))
        ; /* said at each call */
      else if (!(n->flags & IR_F_TRAIN)) {
        bool any = false;
        for (int m = 0; m < g->nmodels; m++) any |= g->models[m].trainable;
        if (!any)
          lerr(L, s->value->loc, "'loss' cannot train anything: no trainable model is declared "
               "(declare one with model(\"DIR\"))");
        else if (n->flags & IR_F_MODEL)
          lerr(L, s->value->loc, "'loss' does not depend on a trainable model: every model call "
               "it reaches is of a frozen model, under sg(), or only compared or counted");
        else
          lerr(L, s->value->loc, "'loss' does not depend on any model call, so it cannot train "
               "anything; use logp(policy, ...) or entropy(policy, ...)");
      }
      g->loss = v.node;
    }
  }
  int nr = 0;
  for (int i = 0; i < prog->nstmts; i++) nr += prog->stmts[i]->kind == PO_S_REPORT;
  g->reports = ir_alloc(g, (size_t)(nr + 1) * sizeof *g->reports);
  for (int i = 0; i < prog->nstmts; i++) {
    const po_stmt *s = prog->stmts[i];
    if (s->kind != PO_S_REPORT) continue;
    lv v = lower_expr(L, s->value);
    char buf[256];
    if (v.kind == LV_ERR) continue;
    if (v.kind != LV_NODE) {
      lerr(L, s->value->loc, "report '%s' must be a number, but it is %s", s->name,
           describe(L, v, buf, sizeof buf));
      continue;
    }
    if (g->nodes[v.node].level == IR_LTOKEN) {
      lerr(L, s->value->loc, "report '%s' must be one number per example or per batch, but it "
           "is %s; reduce it with sum or mean", s->name, describe(L, v, buf, sizeof buf));
      continue;
    }
    if (!g->nodes[v.node].name) g->nodes[v.node].name = s->name;
    g->reports[g->nreports++] = (ir_report){.name = s->name, .node = v.node, .loc = s->loc};
  }
  /* reward_score() makes its model a sequence classifier (a score head, no lm_head), which has no
     token distribution for logp, entropy or sample to read */
  for (int m = 0; m < g->nmodels; m++) {
    int rw = -1, lm = -1;
    for (int i = 0; i < g->n; i++) {
      if (g->nodes[i].idx != m || ir_op_info(g->nodes[i].op)->cls != IR_CALL) continue;
      if (g->nodes[i].op == IR_REWARD) { if (rw < 0) rw = i; }
      else if (lm < 0) lm = i;
    }
    if (rw >= 0 && lm >= 0)
      lerr(L, g->nodes[rw > lm ? rw : lm].loc, "model '%s' is read by both reward_score() (line "
           "%d) and %s() (line %d); reward_score() makes it a sequence-classification model with "
           "a score head and no token distribution, so declare a second model for %s()",
           g->models[m].name, g->nodes[rw].loc.line, ir_op_info(g->nodes[lm].op)->name,
           g->nodes[lm].loc.line, ir_op_info(g->nodes[lm].op)->name);
  }
  free(L->let_val);
  free(L->let_state);
  free(L->picks);
  ir_infer_flags(g);
  if (po_diag_errors(d) > errors0) {
    ir_free(g);
    return NULL;
  }
  if (g->loss < 0) {
    po_error_file(d, prog->src ? prog->src->path : "?", "no 'loss' is defined");
    ir_free(g);
    return NULL;
  }
  char err[512];
  if (ir_verify(g, err, sizeof err)) {
    po_error_file(d, prog->src ? prog->src->path : "?", "internal error: lowering produced "
                  "an ill-formed graph: %s", err);
    ir_free(g);
    return NULL;
  }
  return g;
}

ir_graph *ir_front(const char *path, po_diag *d) {
  po_source *src = po_source_read(path, d);
  if (!src) return NULL;
  po_program *prog = po_parse(src, d);
  if (!prog) return NULL;
  po_check(prog, d); /* after syntax errors too: it finds more on what did parse */
  if (po_diag_errors(d)) return NULL;
  return ir_lower(prog, d);
}
