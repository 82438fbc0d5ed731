/* check.c — name-level checks of a parsed program (po_check).
 *
 * Scoping, decided for the language:
 *  - Values (bindings, params, fields) are define-before-use, like a script: a name
 *    used above its definition is an error that says where it is.
 *  - A def's parameters shadow top-level names inside its body. Other values in the
 *    body must be defined above the def.
 *  - Defs may be called anywhere in the file, above their definition too: they are
 *    inlined at each use, so what matters is that calls never loop, and a loop is
 *    reported as a recursive def with its cycle (f -> g -> f).
 *  - Built-in function names, the data sequences (prompt, chosen, rejected,
 *    response) and keywords cannot be redefined.
 *
 * Level and shape checks (per-token domains, the loss's level, a trainable path) are
 * not made here; lowering makes them with the same po_diag.
 *
 * Walks recurse over expressions; the parser bounds tree depth (PO_MAX_EXPR_DEPTH), so
 * the recursion is bounded too. Statements and the def call graph are walked with
 * loops and an explicit stack.
 */
#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "front.h"

/* ---- the symbol table: top-level names to their first statement ----------------- */

typedef struct sym {
  const char *name;
  const po_stmt *stmt;
  int index;          /* statement index, for define-before-use */
  po_builtin decl;    /* for a binding whose value is model(...), pairs(...) ...   */
  int def_id;         /* for a def: its number in the call graph                   */
} sym;

typedef struct table {
  sym *slots;
  size_t cap;         /* power of two */
  size_t n;
} table;

static uint64_t hash(const char *s) {
  uint64_t h = 1469598103934665603u; /* FNV-1a */
  for (; *s; s++) h = (h ^ (unsigned char)*s) * 1099511628211u;
  return h;
}

static void *xcalloc(size_t n, size_t size) {
  void *p = calloc(n ? n : 1, size);
  if (!p) {
    fprintf(stderr, "poc: out of memory\n");
    abort();
  }
  return p;
}

static void table_init(table *t, size_t expect) {
  t->cap = 16;
  while (t->cap < expect * 2) t->cap *= 2;
  t->slots = xcalloc(t->cap, sizeof(sym));
  t->n = 0;
}

static sym *table_find(const table *t, const char *name) {
  for (size_t i = hash(name) & (t->cap - 1);; i = (i + 1) & (t->cap - 1)) {
    if (!t->slots[i].name) return NULL;
    if (!strcmp(t->slots[i].name, name)) return &t->slots[i];
  }
}

/* Callers insert only names not yet present; the table is sized for every statement,
 * so it is never more than half full. */
static sym *table_add(table *t, const char *name) {
  size_t i = hash(name) & (t->cap - 1);
  while (t->slots[i].name) i = (i + 1) & (t->cap - 1);
  t->slots[i].name = name;
  t->n++;
  return &t->slots[i];
}

/* ---- checker state -------------------------------------------------------------- */

typedef struct edge {
  int to;
  po_loc loc;
} edge;

typedef struct ck {
  const po_program *prog;
  po_diag *d;
  table names;            /* bindings, params, defs, fields */
  po_builtin data_kind;   /* PO_B_PAIRS, PO_B_POINTS or PO_B_NONE */
  int cur;                /* index of the statement being checked */
  const po_stmt *def;     /* the def whose body is being checked, else NULL */
  int def_id;
  /* the def call graph: defs[i] is a def statement, calls[i] its edges */
  const po_stmt **defs;
  edge **calls;
  int *ncalls, *capcalls;
  int ndefs;
} ck;

static const char *const pairs_seqs[] = {"prompt", "chosen", "rejected", NULL};
static const char *const points_seqs[] = {"prompt", "response", NULL};
static const char *const all_seqs[] = {"prompt", "chosen", "rejected", "response", NULL};

static bool in_list(const char *const *list, const char *name) {
  for (; *list; list++)
    if (!strcmp(*list, name)) return true;
  return false;
}

static const char *const *data_seqs(po_builtin kind) {
  return kind == PO_B_PAIRS ? pairs_seqs : points_seqs;
}

static const char *data_word(po_builtin kind) { return kind == PO_B_PAIRS ? "pairs" : "points"; }

static const char *seq_list(po_builtin kind) {
  return kind == PO_B_PAIRS ? "prompt, chosen, rejected" : "prompt, response";
}

static const char *stmt_word(const po_stmt *s) {
  switch (s->kind) {
    case PO_S_PARAM: return "param";
    case PO_S_DEF: return "def";
    case PO_S_FIELD: return "field";
    case PO_S_SEQ: return "sequence";
    default: return "binding";
  }
}

static bool saturated(const ck *c) { return po_diag_saturated(c->d); }

/* ---- did you mean --------------------------------------------------------------- */

typedef struct cands {
  const char **v;
  int n, cap;
} cands;

static void cands_add(cands *cs, const char *s) {
  if (cs->n == cs->cap) {
    cs->cap = cs->cap ? cs->cap * 2 : 64;
    const char **v = realloc(cs->v, sizeof(char *) * (size_t)cs->cap);
    if (!v) {
      fprintf(stderr, "poc: out of memory\n");
      abort();
    }
    cs->v = v;
  }
  cs->v[cs->n++] = s;
}

enum { CAND_VALUES = 1, CAND_FUNCS = 2 };

/* "; did you mean 'x'?" or "" — names a value or function visible at this point. */
static const char *suggest(ck *c, const char *name, int what, char *buf, size_t n) {
  buf[0] = 0;
  if (saturated(c)) return buf; /* not printed anyway */
  cands cs = {0};
  if (what & CAND_FUNCS)
    for (int b = PO_B_NONE + 1; b < PO_B_COUNT; b++) cands_add(&cs, po_builtin_get(b)->name);
  for (size_t i = 0; i < c->names.cap; i++) {
    const sym *s = &c->names.slots[i];
    if (!s->name) continue;
    bool is_def = s->stmt->kind == PO_S_DEF;
    if ((what & CAND_FUNCS) && is_def) cands_add(&cs, s->name);
    if ((what & CAND_VALUES) && !is_def && s->index < c->cur) cands_add(&cs, s->name);
  }
  if (what & CAND_VALUES) {
    if (c->def)
      for (int i = 0; i < c->def->nparams; i++) cands_add(&cs, c->def->params[i]);
    if (c->data_kind)
      for (const char *const *q = data_seqs(c->data_kind); *q; q++) cands_add(&cs, *q);
  }
  const char *best = po_did_you_mean(name, cs.v, cs.n);
  if (best) snprintf(buf, n, "; did you mean '%s'?", best);
  free(cs.v);
  return buf;
}

/* ---- constant expressions ------------------------------------------------------- */

/* Value of an expression of numbers and + - * /, or false when it is anything else.
 * *bad receives the first node that is not constant. */
static bool const_value(const po_expr *e, double *out, const po_expr **bad) {
  double a, b;
  switch (e->kind) {
    case PO_E_NUM:
      *out = e->num;
      return true;
    case PO_E_UNARY:
      if (!const_value(e->lhs, &a, bad)) return false;
      *out = -a;
      return true;
    case PO_E_BINARY:
      if (e->op != PO_OP_ADD && e->op != PO_OP_SUB && e->op != PO_OP_MUL && e->op != PO_OP_DIV)
        break;
      if (!const_value(e->lhs, &a, bad) || !const_value(e->rhs, &b, bad)) return false;
      *out = e->op == PO_OP_ADD ? a + b : e->op == PO_OP_SUB ? a - b : e->op == PO_OP_MUL ? a * b : a / b;
      return true;
    default:
      break;
  }
  *bad = e;
  return false;
}

/* A whole number small enough to convert to an integer type exactly. */
static bool is_whole(double v) { return v == v && fabs(v) < 9e15 && floor(v) == v; }

/* ---- expressions ---------------------------------------------------------------- */

static void check_expr(ck *c, const po_expr *e);

static bool is_param_of(const po_stmt *def, const char *name) {
  if (!def) return false;
  for (int i = 0; i < def->nparams; i++)
    if (!strcmp(def->params[i], name)) return true;
  return false;
}

/* The statement a name refers to here, after reporting order problems; NULL when the
 * name is not a usable top-level name (the caller reports). */
static const sym *visible(ck *c, const char *name, po_loc loc, bool *reported) {
  const sym *s = table_find(&c->names, name);
  *reported = false;
  if (!s) return NULL;
  if (s->stmt->kind == PO_S_DEF) return s; /* defs are hoisted: see the top */
  int limit = c->cur; /* names must be above the current statement (or def) */
  if (s->index == limit) {
    po_error(c->d, loc, "'%s' is used in its own definition", name);
    *reported = true;
  } else if (s->index > limit) {
    po_error(c->d, loc, "'%s' is used before it is defined (line %d)", name, s->stmt->name_loc.line);
    *reported = true;
  }
  return s;
}

static bool was_dropped(const ck *c, const char *name) {
  for (int i = 0; i < c->prog->ndropped; i++)
    if (!strcmp(c->prog->dropped[i], name)) return true;
  return false;
}

/* A name used as a value. */
static void check_name(ck *c, const po_expr *e) {
  const char *name = e->str;
  if (is_param_of(c->def, name)) return;
  if (in_list(all_seqs, name)) {
    if (c->data_kind && !in_list(data_seqs(c->data_kind), name))
      po_error(c->d, e->loc, "'%s' is not a sequence of %s data (it has %s)", name,
               data_word(c->data_kind), seq_list(c->data_kind));
    return;
  }
  bool reported;
  const sym *s = visible(c, name, e->loc, &reported);
  if (reported) return;
  if (s) {
    if (s->stmt->kind == PO_S_SEQ) return; /* `sequence NAME`: a data sequence */
    if (s->stmt->kind == PO_S_DEF)
      po_error(c->d, e->loc, "'%s' is a def; call it as %s(...)", name, name);
    else if (s->decl == PO_B_MODEL_DECL || s->decl == PO_B_FROZEN || s->decl == PO_B_LORA)
      po_error(c->d, e->loc,
               "'%s' is a model; use it as the first argument of logp, entropy, logsumsq, "
               "sample or frozen",
               name);
    else if (s->decl)
      po_error(c->d, e->loc, "'%s' is a data set; use its sequences (%s) instead", name,
               s->decl == PO_B_PROMPTS ? "prompt" : seq_list(s->decl));
    return;
  }
  if (po_builtin_lookup(name)) {
    po_error(c->d, e->loc, "'%s' is a built-in function; call it as %s(...)", name, name);
    return;
  }
  if (was_dropped(c, name)) return;
  char hint[300];
  po_error(c->d, e->loc, "undefined name '%s'%s", name,
           suggest(c, name, CAND_VALUES, hint, sizeof hint));
}

/* The first argument of a model call, or an argument of a def (which may be a model):
 * a name bound to model(...) or frozen(...), or a parameter of the enclosing def. */
static bool is_model_name(ck *c, const po_expr *e) {
  if (e->kind != PO_E_NAME) return false;
  if (is_param_of(c->def, e->str)) return true;
  const sym *s = table_find(&c->names, e->str);
  return s && (s->decl == PO_B_MODEL_DECL || s->decl == PO_B_FROZEN || s->decl == PO_B_LORA);
}

static void check_model_arg(ck *c, const char *fn, const po_expr *e) {
  if (is_model_name(c, e)) {
    if (!is_param_of(c->def, e->str)) {
      bool reported;
      visible(c, e->str, e->loc, &reported);
    }
    return;
  }
  if (e->kind == PO_E_NAME) {
    const sym *s = table_find(&c->names, e->str);
    if (!s && !po_builtin_lookup(e->str) && !in_list(all_seqs, e->str)) {
      check_name(c, e); /* undefined: say so, with a suggestion */
      return;
    }
  }
  po_error(c->d, e->loc,
           "the first argument of '%s' must be a model (a name bound to model(...) or frozen(...))",
           fn);
}

static void given_misplaced(ck *c, const po_expr *e) {
  po_error(c->d, e->loc,
           "'|' (conditioning) is only allowed in the second argument of logp, entropy or "
           "logsumsq");
  check_expr(c, e->lhs);
  check_expr(c, e->rhs);
}

static void arity_error(ck *c, po_loc loc, const char *fn, int lo, int hi, int got) {
  if (hi == lo + 1)
    po_error(c->d, loc, "'%s' takes %d or %d arguments, got %d", fn, lo, hi, got);
  else if (lo == hi)
    po_error(c->d, loc, "'%s' takes %d argument%s, got %d", fn, lo, lo == 1 ? "" : "s", got);
  else
    po_error(c->d, loc, "'%s' takes %d to %d arguments, got %d", fn, lo, hi, got);
}

/* Keyword arguments: after the positional ones, known to the callee, each once. */
static int check_kwargs(ck *c, const po_expr *e, const char *const *allowed) {
  int npos = 0;
  bool seen_kw = false;
  for (int i = 0; i < e->nargs; i++) {
    const po_arg *a = &e->args[i];
    if (!a->name) {
      if (seen_kw) po_error(c->d, a->value->loc, "positional argument after keyword arguments");
      npos++;
      continue;
    }
    seen_kw = true;
    if (!allowed) {
      po_error(c->d, a->name_loc, "'%s' takes no keyword arguments", e->str);
      continue;
    }
    if (!in_list(allowed, a->name)) {
      int n = 0;
      while (allowed[n]) n++;
      const char *best = po_did_you_mean(a->name, (const char *const *)allowed, n);
      char list[200] = "";
      for (int k = 0; k < n; k++) {
        size_t used = strlen(list);
        snprintf(list + used, sizeof list - used, "%s%s", k ? ", " : "", allowed[k]);
      }
      if (best)
        po_error(c->d, a->name_loc, "unknown keyword argument '%s' for '%s'; did you mean '%s'?",
                 a->name, e->str, best);
      else
        po_error(c->d, a->name_loc, "unknown keyword argument '%s' for '%s' (it takes %s)", a->name,
                 e->str, list);
      continue;
    }
    for (int j = 0; j < i; j++)
      if (e->args[j].name && !strcmp(e->args[j].name, a->name)) {
        po_error(c->d, a->name_loc, "duplicate keyword argument '%s'", a->name);
        break;
      }
  }
  return npos;
}

static void add_call_edge(ck *c, int to, po_loc loc) {
  int from = c->def_id;
  if (c->ncalls[from] == c->capcalls[from]) {
    c->capcalls[from] = c->capcalls[from] ? c->capcalls[from] * 2 : 4;
    edge *v = realloc(c->calls[from], sizeof(edge) * (size_t)c->capcalls[from]);
    if (!v) {
      fprintf(stderr, "poc: out of memory\n");
      abort();
    }
    c->calls[from] = v;
  }
  c->calls[from][c->ncalls[from]++] = (edge){to, loc};
}

static void check_call(ck *c, const po_expr *e, bool top);

/* lora's keyword arguments: r (an integer >= 1), alpha (a number), dropout (in [0, 1)),
 * targets (a list of projection names), adapter (a PEFT adapter folder to start from). */
static void check_lora_kwargs(ck *c, const po_expr *e) {
  for (int i = 0; i < e->nargs; i++) {
    const po_arg *a = &e->args[i];
    if (!a->name) continue;
    const po_expr *v = a->value, *bad = NULL;
    double x;
    if (!strcmp(a->name, "targets")) {
      if (v->kind != PO_E_LIST || v->nargs == 0) {
        po_error(c->d, v->loc, "'targets' takes a list of projections, e.g. targets = [q, k, v, "
                 "o, gate, up, down]");
        continue;
      }
      for (int k = 0; k < v->nargs; k++) {
        const po_expr *n = v->args[k].value;
        if (!in_list(po_lora_targets(), n->str)) {
          const char *best = po_did_you_mean(n->str, po_lora_targets(), 7);
          char hint[64] = "";
          if (best) snprintf(hint, sizeof hint, "; did you mean '%s'?", best);
          po_error(c->d, n->loc, "unknown LoRA target '%s' (one of q, k, v, o, gate, up, down)%s",
                   n->str, hint);
        }
        for (int j = 0; j < k; j++)
          if (!strcmp(v->args[j].value->str, n->str)) {
            po_error(c->d, n->loc, "LoRA target '%s' is listed twice", n->str);
            break;
          }
      }
    } else if (!strcmp(a->name, "adapter")) {
      if (v->kind != PO_E_STR || !v->str[0])
        po_error(c->d, v->loc, "'adapter' takes the path of a PEFT adapter folder in quotes");
    } else if (!const_value(v, &x, &bad)) {
      po_error(c->d, v->loc, "'%s' takes a number", a->name);
    } else if (!strcmp(a->name, "r") && (x < 1 || x != floor(x) || x > 65536)) {
      po_error(c->d, v->loc, "'r' (the adapters' rank) must be a whole number from 1 to 65536, "
               "not %g", x);
    } else if (!strcmp(a->name, "alpha") && !(x > 0 && isfinite(x))) {
      po_error(c->d, v->loc, "'alpha' must be a positive number (the scale is alpha / r), not %g",
               x);
    } else if (!strcmp(a->name, "dropout") && !(x >= 0 && x < 1)) {
      po_error(c->d, v->loc, "'dropout' must be in [0, 1), not %g", x);
    }
  }
}

/* The argument of a declaration: model/pairs/points/prompts take a path string,
 * frozen takes a model binding. */
static void check_decl_args(ck *c, const po_expr *e, po_builtin b) {
  const po_expr *arg = e->args[0].value;
  if (b == PO_B_FROZEN) {
    const sym *s = arg->kind == PO_E_NAME ? table_find(&c->names, arg->str) : NULL;
    if (s && (s->decl == PO_B_MODEL_DECL || s->decl == PO_B_LORA)) {
      bool reported;
      visible(c, arg->str, arg->loc, &reported);
    } else if (arg->kind == PO_E_NAME && !s && !po_builtin_lookup(arg->str) &&
               !in_list(all_seqs, arg->str)) {
      check_name(c, arg);
    } else {
      po_error(c->d, arg->loc, "'frozen' takes the name of a model, e.g. frozen(policy)");
    }
    return;
  }
  if (b == PO_B_LORA) {
    /* lora(model("DIR"), ...): the base is a model(...) call in place */
    po_builtin inner = arg->kind == PO_E_CALL ? po_builtin_lookup(arg->str) : PO_B_NONE;
    if (inner != PO_B_MODEL_DECL) {
      po_error(c->d, arg->loc, "'lora' takes a model declaration, e.g. "
               "lora(model(\"examples/tiny\"), r = 8, alpha = 16)");
      return;
    }
    check_call(c, arg, true);
    check_lora_kwargs(c, e);
    return;
  }
  /* the LoRA keywords model(...) once accepted and ignored: one error, at the first */
  if (b == PO_B_MODEL_DECL)
    for (int i = 0; i < e->nargs; i++)
      if (e->args[i].name && in_list(po_builtin_get(b)->kwargs, e->args[i].name)) {
        po_error(c->d, e->args[i].name_loc,
                 "'model' takes no LoRA settings; write lora(model(\"DIR\"), r = 8, "
                 "alpha = 16, dropout = 0.05, targets = [q, v]) for adapters on a frozen base");
        break;
      }
  if (arg->kind != PO_E_STR) {
    po_error(c->d, arg->loc, "'%s' takes a path in quotes, e.g. %s(\"%s\")",
             po_builtin_get(b)->name, po_builtin_get(b)->name,
             b == PO_B_MODEL_DECL ? "examples/tiny" : "data/train.jsonl");
    return;
  }
  if (!arg->str[0]) po_error(c->d, arg->loc, "empty path");
}

/* A call: arity, keyword arguments, then the arguments by the callee's rules.
 * `top` is true for the whole value of a binding, where declarations may appear. */
static void check_call(ck *c, const po_expr *e, bool top) {
  po_builtin b = po_builtin_lookup(e->str);
  if (b) {
    const po_builtin_info *info = po_builtin_get(b);
    int npos = check_kwargs(c, e, info->kwargs);
    bool arity_ok = npos >= info->min_args && npos <= info->max_args;
    if (!arity_ok) arity_error(c, e->loc, info->name, info->min_args, info->max_args, npos);
    if (info->kind == PO_BK_DECL) {
      if (!top) {
        po_error(c->d, e->loc, "'%s' can only be the whole value of a binding, e.g. x = %s(...)",
                 info->name, info->name);
        return;
      }
      if (arity_ok) check_decl_args(c, e, b);
      for (int i = 0; i < e->nargs; i++)
        if (e->args[i].name && b != PO_B_LORA && b != PO_B_MODEL_DECL) {
          const po_expr *bad = NULL;
          double v;
          if (!const_value(e->args[i].value, &v, &bad))
            po_error(c->d, e->args[i].value->loc, "'%s' takes a number", e->args[i].name);
        }
      return;
    }
    int pos = 0;
    for (int i = 0; i < e->nargs; i++) {
      const po_expr *v = e->args[i].value;
      if (e->args[i].name) {
        if (v->kind == PO_E_GIVEN) given_misplaced(c, v);
        else check_expr(c, v);
        continue;
      }
      if (info->kind == PO_BK_MODEL && pos == 0) {
        check_model_arg(c, info->name, v);
      } else if (v->kind == PO_E_GIVEN) {
        if ((b == PO_B_LOGP || b == PO_B_ENTROPY || b == PO_B_LOGSUMSQ || b == PO_B_REWARD) &&
            pos == 1) {
          check_expr(c, v->lhs);
          check_expr(c, v->rhs);
        } else {
          given_misplaced(c, v);
        }
      } else {
        check_expr(c, v);
      }
      pos++;
    }
    return;
  }

  const sym *s = table_find(&c->names, e->str);
  if (is_param_of(c->def, e->str)) {
    po_error(c->d, e->loc, "'%s' is a parameter of '%s', not a function", e->str, c->def->name);
  } else if (s && s->stmt->kind == PO_S_DEF) {
    const po_stmt *def = s->stmt;
    int npos = check_kwargs(c, e, NULL);
    if (npos != def->nparams) arity_error(c, e->loc, def->name, def->nparams, def->nparams, npos);
    if (c->def) add_call_edge(c, s->def_id, e->loc);
    /* Arguments are inlined into the body: models and `y | ctx` may be passed. */
    for (int i = 0; i < e->nargs; i++) {
      const po_expr *v = e->args[i].value;
      if (is_model_name(c, v)) {
        if (!is_param_of(c->def, v->str)) {
          bool reported;
          visible(c, v->str, v->loc, &reported);
        }
      } else if (v->kind == PO_E_GIVEN) {
        check_expr(c, v->lhs);
        check_expr(c, v->rhs);
      } else {
        check_expr(c, v);
      }
    }
    return;
  } else if (s || in_list(all_seqs, e->str)) {
    po_error(c->d, e->loc, "'%s' is not a function", e->str);
  } else if (!was_dropped(c, e->str)) {
    char hint[300];
    po_error(c->d, e->loc, "unknown function '%s'%s", e->str,
             suggest(c, e->str, CAND_FUNCS, hint, sizeof hint));
  }
  /* An unknown callee's arguments: still checked, but models and contexts may have
   * been meant for it, so they are not misuse. */
  for (int i = 0; i < e->nargs; i++) {
    const po_expr *v = e->args[i].value;
    if (is_model_name(c, v)) continue;
    if (v->kind == PO_E_GIVEN) {
      check_expr(c, v->lhs);
      check_expr(c, v->rhs);
    } else {
      check_expr(c, v);
    }
  }
}

static void check_expr(ck *c, const po_expr *e) {
  if (!e || saturated(c)) return;
  switch (e->kind) {
    case PO_E_NUM:
    case PO_E_TOKENS:
      break;
    case PO_E_LIST:
      po_error(c->d, e->loc, "a list of names is only allowed as lora's targets, e.g. "
               "targets = [q, v]");
      break;
    case PO_E_STR:
      po_error(c->d, e->loc,
               "a string is only allowed as the path of model, pairs, points or prompts");
      break;
    case PO_E_NAME:
      check_name(c, e);
      break;
    case PO_E_UNARY:
      check_expr(c, e->lhs);
      break;
    case PO_E_BINARY:
      check_expr(c, e->lhs);
      check_expr(c, e->rhs);
      break;
    case PO_E_CALL:
      check_call(c, e, false);
      break;
    case PO_E_SLICE:
      check_expr(c, e->lhs);
      check_expr(c, e->lo);
      check_expr(c, e->hi);
      break;
    case PO_E_GIVEN:
      given_misplaced(c, e);
      break;
  }
}

/* ---- statements ----------------------------------------------------------------- */

/* A name a statement introduces must not hide a built-in or a data sequence. */
static bool reserved_name(ck *c, const char *name, po_loc loc) {
  if (po_builtin_lookup(name)) {
    po_error(c->d, loc, "'%s' is a built-in function and cannot be redefined", name);
    return true;
  }
  if (in_list(all_seqs, name)) {
    po_error(c->d, loc, "'%s' is a data sequence and cannot be redefined", name);
    return true;
  }
  return false;
}

static po_builtin decl_of(const po_stmt *s) {
  if (s->kind != PO_S_LET || s->value->kind != PO_E_CALL) return PO_B_NONE;
  po_builtin b = po_builtin_lookup(s->value->str);
  return b && po_builtin_get(b)->kind == PO_BK_DECL ? b : PO_B_NONE;
}

static void duplicate(ck *c, const char *what, const char *name, po_loc loc, po_loc first) {
  po_error(c->d, loc, "duplicate %s '%s' (first defined at line %d)", what, name, first.line);
  po_note(c->d, first, "'%s' first defined here", name);
}

/* Pass 1: every top-level name, the data set, duplicates of all kinds. */
static void declare(ck *c) {
  const po_program *p = c->prog;
  const po_stmt *data = NULL, *prompts = NULL, *train = NULL;
  int nseq = 0;
  table reports;
  table_init(&reports, (size_t)p->nstmts);
  for (int i = 0; i < p->nstmts && !saturated(c); i++) {
    const po_stmt *s = p->stmts[i];
    switch (s->kind) {
      case PO_S_LET:
      case PO_S_PARAM:
      case PO_S_DEF:
      case PO_S_FIELD:
      case PO_S_SEQ: {
        if (reserved_name(c, s->name, s->name_loc)) break;
        if (!strcmp(s->name, "loss") && s->kind != PO_S_LET) {
          po_error(c->d, s->name_loc, "'loss' is the objective and must be a binding: loss = ...");
          break;
        }
        const sym *old = table_find(&c->names, s->name);
        if (old) {
          duplicate(c, stmt_word(s), s->name, s->name_loc, old->stmt->name_loc);
          break;
        }
        if (s->kind == PO_S_SEQ && ++nseq > PO_MAX_EXTRA_SEQS) {
          po_error(c->d, s->name_loc, "at most %d sequence declarations are supported",
                   PO_MAX_EXTRA_SEQS);
          break;
        }
        sym *n = table_add(&c->names, s->name);
        n->stmt = s;
        n->index = i;
        n->decl = decl_of(s);
        if (s->kind == PO_S_DEF) {
          n->def_id = c->ndefs;
          c->defs[c->ndefs++] = s;
        }
        if (n->decl == PO_B_PAIRS || n->decl == PO_B_POINTS) {
          if (data) {
            po_error(c->d, s->value->loc,
                     "a file declares one data set, pairs(...) or points(...); "
                     "the first is at line %d", data->loc.line);
            po_note(c->d, data->value->loc, "first data set declared here");
          } else {
            data = s;
            c->data_kind = n->decl;
          }
        }
        if (n->decl == PO_B_PROMPTS) {
          if (prompts) {
            po_error(c->d, s->value->loc,
                     "a file declares at most one evaluation set prompts(...); the first is at "
                     "line %d", prompts->loc.line);
            po_note(c->d, prompts->value->loc, "first evaluation set declared here");
          } else {
            prompts = s;
          }
        }
        break;
      }
      case PO_S_REPORT: {
        const sym *old = table_find(&reports, s->name);
        if (old) duplicate(c, "report", s->name, s->name_loc, old->stmt->name_loc);
        else table_add(&reports, s->name)->stmt = s;
        break;
      }
      case PO_S_TRAIN:
        if (train) {
          po_error(c->d, s->loc, "duplicate train block (first at line %d)", train->loc.line);
          po_note(c->d, train->loc, "first train block here");
        } else {
          train = s;
        }
        break;
    }
  }
  free(reports.slots);
}

static void check_param(ck *c, const po_stmt *s) {
  const po_expr *bad = NULL;
  double v;
  if (!const_value(s->value, &v, &bad))
    po_error(c->d, bad->loc,
             "a param's value must be a constant number (e.g. 0.1, -0.5, 1/3); "
             "it can be changed at run time with --set %s=VALUE", s->name);
  else if (!isfinite(v))
    po_error(c->d, s->value->loc, "the value of param '%s' is not a finite number", s->name);
}

static void check_def(ck *c, const po_stmt *s, int i) {
  for (int k = 0; k < s->nparams; k++) {
    if (reserved_name(c, s->params[k], s->param_locs[k])) continue;
    for (int j = 0; j < k; j++)
      if (!strcmp(s->params[j], s->params[k])) {
        po_error(c->d, s->param_locs[k], "duplicate parameter '%s' in def '%s'", s->params[k],
                 s->name);
        break;
      }
  }
  const sym *me = table_find(&c->names, s->name);
  if (!me || me->stmt != s) return; /* a duplicate: its body is not checked */
  c->def = s;
  c->def_id = me->def_id;
  c->cur = i;
  check_expr(c, s->value);
  c->def = NULL;
}

static void check_field(ck *c, const po_stmt *s) {
  if (!s->field_seq || !c->data_kind) return;
  const char *q = s->field_seq;
  if (in_list(data_seqs(c->data_kind), q)) return;
  const sym *d = table_find(&c->names, q);
  if (d && d->stmt->kind == PO_S_SEQ) {
    bool reported;
    visible(c, q, s->field_seq_loc, &reported);
    return;
  }
  if (in_list(all_seqs, q)) {
    po_error(c->d, s->field_seq_loc, "'%s' is not a sequence of %s data (it has %s)", q,
             data_word(c->data_kind), seq_list(c->data_kind));
    return;
  }
  /* candidates: the data kind's sequences and the declared ones */
  const char *cand[3 + PO_MAX_EXTRA_SEQS];
  int ncand = 0;
  for (const char *const *k = data_seqs(c->data_kind); *k; k++) cand[ncand++] = *k;
  for (int i = 0; i < c->prog->nstmts && ncand < 3 + PO_MAX_EXTRA_SEQS; i++)
    if (c->prog->stmts[i]->kind == PO_S_SEQ && table_find(&c->names, c->prog->stmts[i]->name))
      cand[ncand++] = c->prog->stmts[i]->name;
  const char *best = po_did_you_mean(q, cand, ncand);
  if (best)
    po_error(c->d, s->field_seq_loc, "unknown sequence '%s'; did you mean '%s'?", q, best);
  else
    po_error(c->d, s->field_seq_loc, "unknown sequence '%s' (%s data has %s)", q,
             data_word(c->data_kind), seq_list(c->data_kind));
}

/* Ranges of the numeric train keys: whole numbers where a count is meant. */
static const struct {
  const char *key;
  bool whole;
  double min;
  bool min_open; /* min itself not allowed */
  double max;    /* exclusive; 0: none */
} ranges[] = {
    {"lr", false, 0, true, 0},          {"warmup", false, 0, false, 0},
    {"batch", true, 1, false, 0},       {"micro_batch", true, 1, false, 0},
    {"epochs", true, 1, false, 0},      {"max_len", true, 2, false, 0},
    {"clip", false, 0, false, 0},       {"seed", true, 0, false, 0},
    {"weight_decay", false, 0, false, 0}, {"adam_beta1", false, 0, false, 1},
    {"adam_beta2", false, 0, false, 1}, {"adam_eps", false, 0, true, 0},
    {"log_every", true, 1, false, 0},   {"ckpt_every", true, 0, false, 0},
    {"eval_every", true, 0, false, 0},  {"eval_tokens", true, 1, false, 0},
    {"steps", true, 1, false, 0},       {"ckpt_minutes", false, 0, false, 0},
};

static void check_train_number(ck *c, const po_item *it, double *value) {
  const po_expr *bad = NULL;
  double v;
  if (!const_value(it->value, &v, &bad)) {
    po_error(c->d, it->value->loc, "train key '%s' takes a number", it->key);
    return;
  }
  *value = v;
  for (size_t r = 0; r < sizeof ranges / sizeof ranges[0]; r++) {
    if (strcmp(ranges[r].key, it->key)) continue;
    bool ok = isfinite(v) && (ranges[r].min_open ? v > ranges[r].min : v >= ranges[r].min) &&
              (!ranges[r].max || v < ranges[r].max);
    if (ranges[r].whole && !is_whole(v)) ok = false;
    if (ok) return;
    if (ranges[r].whole)
      po_error(c->d, it->value->loc, "train key '%s' must be a whole number of at least %g, got %g",
               it->key, ranges[r].min, v);
    else if (ranges[r].max)
      po_error(c->d, it->value->loc, "train key '%s' must be in [%g, %g), got %g", it->key,
               ranges[r].min, ranges[r].max, v);
    else
      po_error(c->d, it->value->loc, "train key '%s' must be %s %g, got %g", it->key,
               ranges[r].min_open ? "greater than" : "at least", ranges[r].min, v);
    return;
  }
}

static void check_train(ck *c, const po_stmt *s) {
  const po_train_key *keys = po_train_keys();
  int nkeys = 0;
  while (keys[nkeys].key) nkeys++;
  const char **names = xcalloc((size_t)nkeys + 1, sizeof(char *));
  for (int k = 0; k < nkeys; k++) names[k] = keys[k].key;
  double batch = 0, micro = 0;
  const po_item *micro_item = NULL;
  for (int i = 0; i < s->nitems && !saturated(c); i++) {
    const po_item *it = &s->items[i];
    const po_train_key *key = NULL;
    for (int k = 0; k < nkeys; k++)
      if (!strcmp(keys[k].key, it->key)) key = &keys[k];
    if (!key) {
      const char *best = po_did_you_mean(it->key, names, nkeys);
      if (best) po_error(c->d, it->loc, "unknown train key '%s'; did you mean '%s'?", it->key, best);
      else po_error(c->d, it->loc, "unknown train key '%s'", it->key);
      continue;
    }
    bool dup = false;
    for (int j = 0; j < i && !dup; j++)
      if (!strcmp(s->items[j].key, it->key)) {
        po_error(c->d, it->loc, "duplicate train key '%s' (first defined at line %d)", it->key,
                 s->items[j].loc.line);
        po_note(c->d, s->items[j].loc, "'%s' first defined here", it->key);
        dup = true;
      }
    if (dup) continue;
    if (key->type == PO_TK_NUMBER) {
      double v = 0;
      check_train_number(c, it, &v);
      if (!strcmp(it->key, "batch")) batch = v;
      if (!strcmp(it->key, "micro_batch")) micro = v, micro_item = it;
    } else if (key->type == PO_TK_NAME) {
      char list[200] = "";
      int n = 0;
      for (const char *const *q = key->choices; *q; q++, n++) {
        size_t used = strlen(list);
        snprintf(list + used, sizeof list - used, "%s%s", n == 0 ? "" : q[1] ? ", " : " or ", *q);
      }
      if (it->value->kind != PO_E_NAME) {
        po_error(c->d, it->value->loc, "train key '%s' takes one of %s", it->key, list);
      } else if (!in_list(key->choices, it->value->str)) {
        const char *best = po_did_you_mean(it->value->str, key->choices, n);
        if (best)
          po_error(c->d, it->value->loc, "unknown %s '%s'; did you mean '%s'?", it->key,
                   it->value->str, best);
        else
          po_error(c->d, it->value->loc, "unknown %s '%s' (expected %s)", it->key, it->value->str,
                   list);
      }
    } else if (it->value->kind != PO_E_STR) {
      po_error(c->d, it->value->loc, "train key '%s' takes a string in quotes", it->key);
    }
  }
  if (batch >= 1 && micro >= 1 && is_whole(batch) && is_whole(micro) && fmod(batch, micro) != 0)
    po_error(c->d, micro_item->value->loc, "batch (%g) must be a multiple of micro_batch (%g)",
             batch, micro);
  free(names);
}

/* ---- recursion: cycles in the def call graph ------------------------------------ */

static void find_recursion(ck *c) {
  enum { WHITE, GRAY, BLACK };
  int n = c->ndefs;
  int *color = xcalloc((size_t)n, sizeof(int));
  int *stack = xcalloc((size_t)n, sizeof(int)); /* the DFS path */
  int *next = xcalloc((size_t)n, sizeof(int));  /* next edge to follow from each def */
  for (int root = 0; root < n && !saturated(c); root++) {
    if (color[root] != WHITE) continue;
    int depth = 0;
    stack[depth++] = root;
    color[root] = GRAY;
    while (depth > 0) {
      int u = stack[depth - 1];
      if (next[u] == c->ncalls[u]) {
        color[u] = BLACK;
        depth--;
        continue;
      }
      const edge *ed = &c->calls[u][next[u]++];
      int v = ed->to;
      if (color[v] == WHITE) {
        color[v] = GRAY;
        stack[depth++] = v;
      } else if (color[v] == GRAY && !saturated(c)) {
        /* the cycle is the path from v to u, then back to v */
        size_t cap = 64, len = 0;
        char *path = xcalloc(cap, 1);
        int from = depth - 1;
        while (stack[from] != v) from--;
        for (int k = from; k <= depth; k++) {
          const char *nm = c->defs[k < depth ? stack[k] : v]->name;
          size_t need = len + strlen(nm) + 5;
          if (need > cap) {
            while (need > cap) cap *= 2;
            char *np = realloc(path, cap);
            if (!np) abort();
            path = np;
          }
          len += (size_t)sprintf(path + len, "%s%s", k > from ? " -> " : "", nm);
        }
        const po_stmt *def = c->defs[v];
        po_error(c->d, def->name_loc, "recursive def '%s' (%s)", def->name, path);
        po_note(c->d, ed->loc, "the call that closes the cycle");
        free(path);
      }
    }
  }
  free(color);
  free(stack);
  free(next);
}

/* ---- entry points --------------------------------------------------------------- */

int po_check(const po_program *prog, po_diag *d) {
  int before = po_diag_errors(d);
  if (!prog || po_diag_saturated(d)) return 0;
  ck c = {.prog = prog, .d = d};
  int n = prog->nstmts;
  table_init(&c.names, (size_t)n);
  c.defs = xcalloc((size_t)n, sizeof(po_stmt *));
  c.calls = xcalloc((size_t)n, sizeof(edge *));
  c.ncalls = xcalloc((size_t)n, sizeof(int));
  c.capcalls = xcalloc((size_t)n, sizeof(int));

  declare(&c);
  bool have_loss = false;
  for (int i = 0; i < n && !saturated(&c); i++) {
    const po_stmt *s = prog->stmts[i];
    c.cur = i;
    switch (s->kind) {
      case PO_S_LET:
        if (!strcmp(s->name, "loss")) have_loss = true;
        if (s->value->kind == PO_E_CALL) check_call(&c, s->value, true);
        else check_expr(&c, s->value);
        break;
      case PO_S_PARAM:
        check_param(&c, s);
        break;
      case PO_S_DEF:
        check_def(&c, s, i);
        break;
      case PO_S_REPORT:
        check_expr(&c, s->value);
        break;
      case PO_S_FIELD:
        check_field(&c, s);
        break;
      case PO_S_SEQ:
        break; /* its name was checked with the others */
      case PO_S_TRAIN:
        check_train(&c, s);
        break;
    }
  }
  find_recursion(&c);
  /* After syntax errors the missing statement may just have been dropped. */
  bool parsed_clean = before == 0;
  if (parsed_clean && !saturated(&c) && !c.data_kind)
    po_error_file(d, prog->src->path,
                  "no data set: declare one, e.g. data = pairs(\"train.jsonl\") or "
                  "data = points(\"train.jsonl\")");
  if (parsed_clean && !saturated(&c) && !have_loss)
    po_error_file(d, prog->src->path,
                  "no objective: bind the per-example loss, e.g. loss = -logsigmoid(margin)");

  for (int i = 0; i < c.ndefs; i++) free(c.calls[i]);
  free(c.calls);
  free(c.ncalls);
  free(c.capcalls);
  free(c.defs);
  free(c.names.slots);
  return po_diag_errors(d) - before;
}

const po_stmt *po_program_find(const po_program *prog, const char *name) {
  if (!prog || !name) return NULL;
  for (int i = 0; i < prog->nstmts; i++) {
    const po_stmt *s = prog->stmts[i];
    if ((s->kind == PO_S_LET || s->kind == PO_S_PARAM || s->kind == PO_S_DEF ||
         s->kind == PO_S_FIELD || s->kind == PO_S_SEQ) && !strcmp(s->name, name))
      return s;
  }
  return NULL;
}
