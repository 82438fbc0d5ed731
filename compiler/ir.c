/* ir.c — the IR's graph: memory, the op table, builders, interned domains, derived
 * flags, the verifier that runs between passes, and the text and Graphviz printers. */
#include "ir.h"

#include <math.h>
#include <stdarg.h>
#include <stdlib.h>
#include <string.h>

/* ---- memory ---------------------------------------------------------------------- */

/* Strings, call descriptions and plan arrays live in chunks freed with the graph; nodes
 * and domains are growable arrays because passes append to them. */
struct ir_arena {
  struct ir_arena *next;
  size_t used, cap;
  max_align_t data[];
};

static void *xrealloc(void *p, size_t n) {
  void *q = realloc(p, n ? n : 1);
  if (!q) {
    fprintf(stderr, "poc: out of memory\n");
    exit(1);
  }
  return q;
}

void *ir_xcalloc(size_t n, size_t size) {
  void *p = calloc(n ? n : 1, size);
  if (!p) {
    fprintf(stderr, "poc: out of memory\n");
    exit(1);
  }
  return p;
}

void *ir_alloc(ir_graph *g, size_t n) {
  n = (n + sizeof(max_align_t) - 1) / sizeof(max_align_t) * sizeof(max_align_t);
  ir_arena *a = g->arena;
  if (!a || a->used + n > a->cap) {
    size_t cap = n > 65536 ? n : 65536;
    ir_arena *b = xrealloc(NULL, sizeof *b + cap);
    b->next = g->arena;
    b->used = 0;
    b->cap = cap;
    g->arena = a = b;
  }
  void *p = (char *)a->data + a->used;
  a->used += n;
  memset(p, 0, n);
  return p;
}

char *ir_strdup(ir_graph *g, const char *s) {
  size_t n = strlen(s);
  char *p = ir_alloc(g, n + 1);
  memcpy(p, s, n + 1);
  return p;
}

char *ir_fmt(ir_graph *g, const char *fmt, ...) {
  va_list ap;
  va_start(ap, fmt);
  int n = vsnprintf(NULL, 0, fmt, ap);
  va_end(ap);
  char *p = ir_alloc(g, (size_t)n + 1);
  va_start(ap, fmt);
  vsnprintf(p, (size_t)n + 1, fmt, ap);
  va_end(ap);
  return p;
}

ir_graph *ir_new(const po_source *src) {
  ir_graph *g = xrealloc(NULL, sizeof *g);
  memset(g, 0, sizeof *g);
  g->src = src;
  g->loss = -1;
  g->train_seed = 1;
  return g;
}

void ir_free(ir_graph *g) {
  if (!g) return;
  free(g->nodes);
  free(g->doms);
  for (ir_arena *a = g->arena, *next; a; a = next) {
    next = a->next;
    free(a);
  }
  free(g);
}

/* ---- the op table ---------------------------------------------------------------- */

static const ir_opinfo op_table[IR_OP_COUNT] = {
#define IR_X_INFO(id, name, nin, cls, cexpr) [IR_##id] = {name, nin, IR_##cls, cexpr},
    IR_OPS(IR_X_INFO)
#undef IR_X_INFO
};

const ir_opinfo *ir_op_info(ir_op op) { return &op_table[op]; }

double ir_scalar(ir_op op, double a, double b, double c) {
  switch (op) {
  case IR_ADD: return a + b;
  case IR_SUB: return a - b;
  case IR_MUL: return a * b;
  case IR_DIV: return a / b;
  case IR_NEG: return -a;
  case IR_LT: return a < b;
  case IR_LE: return a <= b;
  case IR_GT: return a > b;
  case IR_GE: return a >= b;
  case IR_EQ: return a == b;
  case IR_NE: return a != b;
  case IR_EXP: return exp(a);
  case IR_LOG: return log(a);
  case IR_LOG1P: return log1p(a);
  /* log(1 - e^a) for a < 0: expm1 is exact near 0, log1p near -inf (Mächler 2012) */
  case IR_LOG1MEXP: return a > -M_LN2 ? log(-expm1(a)) : log1p(-exp(a));
  case IR_SIGMOID: return a >= 0 ? 1 / (1 + exp(-a)) : exp(a) / (1 + exp(a));
  /* log σ(a) = min(a, 0) - log(1 + e^-|a|): no overflow at either end */
  case IR_LOGSIGMOID: return fmin(a, 0) - log1p(exp(-fabs(a)));
  case IR_SOFTPLUS: return fmax(a, 0) + log1p(exp(-fabs(a)));
  case IR_TANH: return tanh(a);
  case IR_ABS: return fabs(a);
  case IR_SQRT: return sqrt(a);
  case IR_POW: return pow(a, b);
  case IR_MIN: return a <= b ? a : b;
  case IR_MAX: return a >= b ? a : b;
  case IR_FLOOR: return floor(a);
  case IR_WHERE: return a != 0 ? b : c;
  case IR_SG: return a;
  default: return NAN;
  }
}

/* ---- the batch's sort order ------------------------------------------------------ */

/* x before y: by value, NaN last, ties by example (so the merge below is stable). */
static bool order_before(const double *x, int i, int j) {
  bool ni = isnan(x[i]), nj = isnan(x[j]);
  if (ni != nj) return nj;
  if (!ni && x[i] != x[j]) return x[i] < x[j];
  return i < j;
}

void ir_batch_order(const double *x, int B, int *perm) {
  if (B <= 0) return;
  int *tmp = ir_xcalloc((size_t)B, sizeof *tmp);
  for (int i = 0; i < B; i++) perm[i] = i;
  /* bottom-up merge sort: O(B log B) and stable */
  for (int w = 1; w < B; w *= 2) {
    for (int lo = 0; lo < B; lo += 2 * w) {
      int mid = lo + w < B ? lo + w : B, hi = lo + 2 * w < B ? lo + 2 * w : B;
      int i = lo, j = mid, k = lo;
      while (i < mid && j < hi) tmp[k++] = order_before(x, perm[j], perm[i]) ? perm[j++] : perm[i++];
      while (i < mid) tmp[k++] = perm[i++];
      while (j < hi) tmp[k++] = perm[j++];
    }
    memcpy(perm, tmp, (size_t)B * sizeof *perm);
  }
  free(tmp);
}

/* ---- builders -------------------------------------------------------------------- */

int ir_push(ir_graph *g, ir_node n) {
  if (g->n == g->cap) {
    g->cap = g->cap ? g->cap * 2 : 64;
    g->nodes = xrealloc(g->nodes, (size_t)g->cap * sizeof *g->nodes);
  }
  g->nodes[g->n] = n;
  return g->n++;
}

static ir_node node_init(ir_op op, po_loc loc) {
  ir_node n;
  memset(&n, 0, sizeof n);
  n.op = op;
  n.dom = -1;
  n.hi = -1;
  n.grp = -1;
  n.loc = loc;
  for (int i = 0; i < IR_MAX_IN; i++) n.in[i] = -1;
  return n;
}

int ir_leaf(ir_graph *g, ir_op op, ir_level level, int dom, int idx, po_loc loc) {
  ir_node n = node_init(op, loc);
  n.level = level;
  n.dom = dom;
  n.idx = idx;
  return ir_push(g, n);
}

int ir_const(ir_graph *g, double v, po_loc loc) {
  ir_node n = node_init(IR_CONST, loc);
  n.level = IR_LCONST;
  n.num = v;
  return ir_push(g, n);
}

static int elem(ir_graph *g, ir_op op, int nin, const int *in, po_loc loc) {
  ir_node n = node_init(op, loc);
  n.nin = nin;
  n.level = IR_LCONST;
  for (int i = 0; i < nin; i++) {
    n.in[i] = in[i];
    const ir_node *x = &g->nodes[in[i]];
    if (x->level > n.level) n.level = x->level;
    if (x->level == IR_LTOKEN && n.dom < 0) n.dom = x->dom;
  }
  return ir_push(g, n);
}

int ir_unary(ir_graph *g, ir_op op, int a, po_loc loc) { return elem(g, op, 1, &a, loc); }

int ir_binary(ir_graph *g, ir_op op, int a, int b, po_loc loc) {
  int in[2] = {a, b};
  return elem(g, op, 2, in, loc);
}

int ir_ternary(ir_graph *g, ir_op op, int a, int b, int c, po_loc loc) {
  int in[3] = {a, b, c};
  return elem(g, op, 3, in, loc);
}

int ir_reduce(ir_graph *g, ir_op op, int a, int b, po_loc loc) {
  ir_node n = node_init(op, loc); /* also batch_sort and its adjoint: per example */
  n.in[0] = a;
  n.nin = 1;
  if (b >= 0) {
    n.in[1] = b;
    n.nin = 2;
  }
  n.level = op_table[op].cls == IR_BATR ? IR_LBATCH : IR_LEXAMPLE;
  return ir_push(g, n);
}

int ir_slice(ir_graph *g, int a, int lo, int hi, po_loc loc) {
  ir_node n = node_init(IR_SLICE, loc);
  n.in[0] = a;
  n.nin = 1;
  n.idx = lo;
  n.hi = hi;
  n.level = IR_LTOKEN;
  n.dom = ir_dom_of_slice(g, g->nodes[a].dom, lo, hi);
  return ir_push(g, n);
}

int ir_fit(ir_graph *g, int a, int like, int lo, po_loc loc) {
  ir_node n = node_init(IR_FIT, loc);
  n.in[0] = a;
  n.in[1] = like;
  n.nin = 2;
  n.idx = lo;
  n.level = g->nodes[like].level;
  n.dom = g->nodes[like].dom;
  return ir_push(g, n);
}

int ir_bcast(ir_graph *g, int a, int like, po_loc loc) {
  ir_node n = node_init(IR_BCAST, loc);
  n.in[0] = a;
  n.in[1] = like;
  n.nin = 2;
  n.level = g->nodes[like].level;
  n.dom = g->nodes[like].dom;
  return ir_push(g, n);
}

/* ---- domains --------------------------------------------------------------------- */

static int dom_find(const ir_graph *g, const ir_domain *d) {
  for (int i = 0; i < g->ndoms; i++) {
    const ir_domain *e = &g->doms[i];
    if (e->kind != d->kind) continue;
    switch (d->kind) {
    case IR_DOM_SEQ:
    case IR_DOM_ANCHOR:
      if (!strcmp(e->name, d->name)) return i;
      break;
    case IR_DOM_SLICE:
      if (e->base == d->base && e->lo == d->lo && e->hi == d->hi) return i;
      break;
    case IR_DOM_PREFIX:
      if (e->hi == d->hi) return i;
      break;
    }
  }
  return -1;
}

static int dom_intern(ir_graph *g, ir_domain d) {
  int i = dom_find(g, &d);
  if (i >= 0) return i;
  if (g->ndoms == g->capdoms) {
    g->capdoms = g->capdoms ? g->capdoms * 2 : 16;
    g->doms = xrealloc(g->doms, (size_t)g->capdoms * sizeof *g->doms);
  }
  g->doms[g->ndoms] = d;
  return g->ndoms++;
}

static ir_domain dom_init(ir_dom_kind kind) {
  ir_domain d;
  memset(&d, 0, sizeof d);
  d.kind = kind;
  d.base = -1;
  d.hi = -1;
  d.sample = -1;
  return d;
}

int ir_dom_seq(ir_graph *g, const char *name) {
  ir_domain d = dom_init(IR_DOM_SEQ);
  d.name = name;
  int i = dom_find(g, &d);
  if (i >= 0) return i;
  d.name = ir_strdup(g, name);
  return dom_intern(g, d);
}

int ir_dom_anchor(ir_graph *g, const char *name) {
  ir_domain d = dom_init(IR_DOM_ANCHOR);
  d.name = name;
  int i = dom_find(g, &d);
  if (i >= 0) return i;
  d.name = ir_strdup(g, name);
  return dom_intern(g, d);
}

int ir_dom_slice(ir_graph *g, int base, int lo, int hi) {
  ir_domain d = dom_init(IR_DOM_SLICE);
  d.base = base;
  d.lo = lo;
  d.hi = hi;
  int i = dom_find(g, &d);
  if (i >= 0) return i;
  char lob[32] = "", hib[32] = "";
  if (lo) snprintf(lob, sizeof lob, "%d", lo);
  if (hi >= 0) snprintf(hib, sizeof hib, "%d", hi);
  d.name = ir_fmt(g, "%s[%s:%s]", g->doms[base].name, lob, hib);
  return dom_intern(g, d);
}

int ir_dom_prefix(ir_graph *g, int k) {
  ir_domain d = dom_init(IR_DOM_PREFIX);
  d.hi = k;
  int i = dom_find(g, &d);
  if (i >= 0) return i;
  d.name = ir_fmt(g, "prefix %d", k);
  return dom_intern(g, d);
}

int ir_dom_of_slice(ir_graph *g, int d, int lo, int hi) {
  if (lo == 0 && hi < 0) return d;
  if (lo == 0) {
    if (g->doms[d].kind == IR_DOM_PREFIX && g->doms[d].hi <= hi) return d;
    return ir_dom_prefix(g, hi);
  }
  return ir_dom_slice(g, d, lo, hi);
}

/* ---- derived flags --------------------------------------------------------------- */

/* Whether gradient can flow from node n into its input k: comparisons, floor, lengths,
 * masks and shape arguments pass none. */
bool ir_input_differentiable(const ir_node *n, int k) {
  switch (n->op) {
  case IR_LT: case IR_LE: case IR_GT: case IR_GE: case IR_EQ: case IR_NE:
  case IR_FLOOR: case IR_SG: case IR_LEN: case IR_ARGMAX: case IR_PICK:
  case IR_SEQLEN: case IR_SAMPLE: case IR_LOGP: case IR_ENTROPY: case IR_LOGSUMSQ:
  case IR_REWARD: case IR_POS:
    return false;
  case IR_BUNSORT: return k == 0; /* input 1 only orders */
  case IR_WHERE: return k > 0;
  case IR_FIT: case IR_BCAST: return k == 0;
  default: return true;
  }
}

void ir_infer_flags(ir_graph *g) {
  for (int i = 0; i < g->n; i++) {
    ir_node *n = &g->nodes[i];
    unsigned f = 0;
    bool data = true;
    for (int k = 0; k < n->nin; k++) {
      unsigned fi = g->nodes[n->in[k]].flags;
      f |= fi & (IR_F_MODEL | IR_F_SAMPLED | IR_F_RANDOM);
      if (ir_input_differentiable(n, k)) f |= fi & IR_F_TRAIN;
      if (!(fi & IR_F_DATA)) data = false;
    }
    switch (n->op) {
    case IR_LOGP:
    case IR_ENTROPY:
    case IR_REWARD:
      f |= IR_F_MODEL;
      if (g->models[n->idx].trainable) f |= IR_F_TRAIN;
      data = false;
      break;
    case IR_LOGSUMSQ: /* a statistic without a gradient: lowering rejects any use that
                         would need one, so it never carries train */
      f |= IR_F_MODEL;
      data = false;
      break;
    case IR_SAMPLE:
      f |= IR_F_SAMPLED;
      data = false;
      break;
    case IR_PICK:
      f |= IR_F_RANDOM;
      data = false;
      break;
    case IR_BSORT:
    case IR_BUNSORT:
      data = false; /* the batch it orders changes every step: never hoisted */
      break;
    default:
      break;
    }
    if (data) f |= IR_F_DATA;
    n->flags = (n->flags & ~(unsigned)IR_F_DERIVED) | f;
  }
}

int *ir_use_counts(const ir_graph *g) {
  int *u = calloc((size_t)g->n + 1, sizeof *u);
  if (!u) {
    fprintf(stderr, "poc: out of memory\n");
    exit(1);
  }
  for (int i = 0; i < g->n; i++)
    for (int k = 0; k < g->nodes[i].nin; k++) u[g->nodes[i].in[k]]++;
  return u;
}

/* ---- the verifier ---------------------------------------------------------------- */

#define FAIL(...)                                   \
  do {                                              \
    snprintf(err, errlen, __VA_ARGS__);             \
    return -1;                                      \
  } while (0)

static const char *level_name(ir_level l) {
  switch (l) {
  case IR_LCONST: return "const";
  case IR_LBATCH: return "batch";
  case IR_LEXAMPLE: return "example";
  case IR_LTOKEN: return "token";
  }
  return "?";
}

static int verify_node(const ir_graph *g, int id, char *err, size_t errlen) {
  const ir_node *n = &g->nodes[id];
  if ((unsigned)n->op >= IR_OP_COUNT) FAIL("%%%d: op %d out of range", id, (int)n->op);
  const ir_opinfo *oi = &op_table[n->op];
  if (n->nin < 0 || n->nin > IR_MAX_IN) FAIL("%%%d %s: %d inputs", id, oi->name, n->nin);
  if (oi->nin >= 0 && n->nin != oi->nin)
    FAIL("%%%d %s: %d inputs, expected %d", id, oi->name, n->nin, oi->nin);
  for (int k = 0; k < n->nin; k++) {
    if (n->in[k] < 0) FAIL("%%%d %s: input %d is dangling", id, oi->name, k);
    if (n->in[k] >= id)
      FAIL("%%%d %s: input %d is %%%d, not defined before it (SSA order)", id, oi->name, k,
           n->in[k]);
  }
  if ((unsigned)n->level > IR_LTOKEN) FAIL("%%%d: level %d out of range", id, (int)n->level);
  if (n->level == IR_LTOKEN) {
    if (n->dom < 0 || n->dom >= g->ndoms)
      FAIL("%%%d %s: per-token value without a valid domain", id, oi->name);
  } else if (n->dom != -1 && n->op != IR_SEQLEN) {
    FAIL("%%%d %s: %s value carries a domain", id, oi->name, level_name(n->level));
  }
  const ir_node *a = n->nin > 0 ? &g->nodes[n->in[0]] : NULL;
  const ir_node *b = n->nin > 1 ? &g->nodes[n->in[1]] : NULL;
  switch (oi->cls) {
  case IR_LEAF:
    switch (n->op) {
    case IR_CONST:
      if (n->level != IR_LCONST) FAIL("%%%d const: level %s", id, level_name(n->level));
      if (!isfinite(n->num)) FAIL("%%%d const: not finite", id);
      break;
    case IR_PARAM:
      if (n->level != IR_LCONST || n->idx < 0 || n->idx >= g->nknobs)
        FAIL("%%%d param: bad knob %d or level", id, n->idx);
      break;
    case IR_FIELD:
      if (n->idx < 0 || n->idx >= g->nfields) FAIL("%%%d field: bad field %d", id, n->idx);
      if (g->fields[n->idx].dom < 0 ? n->level != IR_LEXAMPLE
                                    : (n->level != IR_LTOKEN || n->dom != g->fields[n->idx].dom))
        FAIL("%%%d field %s: level or domain does not match its declaration", id,
             g->fields[n->idx].name);
      break;
    case IR_SEQLEN:
      if (n->level != IR_LEXAMPLE || n->dom < 0 || n->dom >= g->ndoms)
        FAIL("%%%d seqlen: needs a sequence domain and example level", id);
      if (n->nin > 1 || (n->nin == 1 && a->op != IR_SAMPLE))
        FAIL("%%%d seqlen: its only input may be the anchor it counts", id);
      break;
    case IR_NBATCH:
      if (n->level != IR_LBATCH) FAIL("%%%d nbatch: level %s", id, level_name(n->level));
      break;
    case IR_POS:
      if (n->level != IR_LTOKEN || n->dom < 0 || n->dom >= g->ndoms)
        FAIL("%%%d pos: needs a sequence domain and token level", id);
      if (n->nin > 1 || (n->nin == 1 && a->op != IR_SAMPLE))
        FAIL("%%%d pos: its only input may be the anchor it indexes", id);
      break;
    case IR_PICK:
      if (n->level != IR_LTOKEN) FAIL("%%%d pick: not per-token", id);
      if (n->nin < 1 || n->nin > 2 || a->level == IR_LTOKEN || (b && b->op != IR_SAMPLE))
        FAIL("%%%d pick: needs a count that is not per-token (and at most its anchor)", id);
      if (!n->key) FAIL("%%%d pick: no key", id);
      break;
    default:
      break;
    }
    break;
  case IR_CALL:
    if (n->idx < 0 || n->idx >= g->nmodels) FAIL("%%%d %s: bad model %d", id, oi->name, n->idx);
    if (n->op == IR_REWARD) {
      if (!n->call || n->level != IR_LEXAMPLE || n->dom != -1)
        FAIL("%%%d reward: must be one number per example", id);
    } else if (!n->call || n->level != IR_LTOKEN || n->dom != n->call->target) {
      FAIL("%%%d %s: must be per-token over its target", id, oi->name);
    }
    if (!n->key) FAIL("%%%d %s: no key", id, oi->name);
    for (int k = 0; k < n->nin; k++)
      if (g->nodes[n->in[k]].op != IR_SAMPLE)
        FAIL("%%%d %s: input %d is not an anchor", id, oi->name, k);
    if (n->op == IR_SAMPLE &&
        (g->doms[n->dom].kind != IR_DOM_ANCHOR || g->doms[n->dom].sample != id))
      FAIL("%%%d sample: its anchor domain does not name it", id);
    break;
  case IR_ELEM:
  case IR_CTL: {
    ir_level lv = IR_LCONST;
    for (int k = 0; k < n->nin; k++) {
      const ir_node *x = &g->nodes[n->in[k]];
      if (x->op == IR_SAMPLE) FAIL("%%%d %s: an anchor is not a number", id, oi->name);
      if (x->level > lv) lv = x->level;
      if (x->level == IR_LTOKEN && x->dom != n->dom)
        FAIL("%%%d %s: combines per-token values of '%s' and '%s'", id, oi->name,
             g->doms[x->dom].name, n->dom >= 0 ? g->doms[n->dom].name : "?");
    }
    if (lv != n->level)
      FAIL("%%%d %s: level %s, but its inputs make it %s", id, oi->name, level_name(n->level),
           level_name(lv));
    break;
  }
  case IR_TOKR:
    if (n->level != IR_LEXAMPLE) FAIL("%%%d %s: a token reduction gives one number per example", id, oi->name);
    for (int k = 0; k < n->nin; k++) {
      const ir_node *x = &g->nodes[n->in[k]];
      if (x->level != IR_LTOKEN || x->op == IR_SAMPLE)
        FAIL("%%%d %s: input %d is not a per-token value", id, oi->name, k);
      if (x->dom != a->dom)
        FAIL("%%%d %s: inputs over '%s' and '%s'", id, oi->name, g->doms[a->dom].name,
             g->doms[x->dom].name);
    }
    if ((n->op == IR_DOT || n->op == IR_COS) != (n->nin == 2))
      FAIL("%%%d %s: %d inputs", id, oi->name, n->nin);
    break;
  case IR_BATR:
    if (n->level != IR_LBATCH || a->level != IR_LEXAMPLE)
      FAIL("%%%d %s: must take a per-example value to a batch value", id, oi->name);
    break;
  case IR_BPERM:
    if (n->level != IR_LEXAMPLE || n->nin != oi->nin)
      FAIL("%%%d %s: must give one number per example from %d inputs", id, oi->name, oi->nin);
    for (int k = 0; k < n->nin; k++)
      if (g->nodes[n->in[k]].level != IR_LEXAMPLE)
        FAIL("%%%d %s: input %d is not per-example", id, oi->name, k);
    break;
  case IR_SHAPE:
    switch (n->op) {
    case IR_SLICE: {
      if (a->level != IR_LTOKEN) FAIL("%%%d slice: input is not per-token", id);
      if (n->idx < 0 || (n->hi >= 0 && n->hi < n->idx)) FAIL("%%%d slice: bad bounds", id);
      int want = dom_find(g, &(ir_domain){.kind = IR_DOM_SLICE, .base = a->dom, .lo = n->idx, .hi = n->hi});
      bool ok = n->dom == want;
      if (n->idx == 0) {
        if (n->hi < 0) ok = n->dom == a->dom;
        else if (g->doms[a->dom].kind == IR_DOM_PREFIX && g->doms[a->dom].hi <= n->hi)
          ok = n->dom == a->dom;
        else ok = g->doms[n->dom].kind == IR_DOM_PREFIX && g->doms[n->dom].hi == n->hi;
      }
      if (!ok) FAIL("%%%d slice: domain '%s' does not follow from '%s'", id,
                    g->doms[n->dom].name, g->doms[a->dom].name);
      break;
    }
    case IR_FIT:
      if (a->level != IR_LTOKEN || b->level != IR_LTOKEN || n->level != IR_LTOKEN ||
          n->dom != b->dom || n->idx < 0)
        FAIL("%%%d fit: both inputs and the result must be per-token, shaped like input 1", id);
      break;
    case IR_BCAST:
      if (a->level > b->level || n->level != b->level || n->dom != b->dom ||
          (a->level == IR_LTOKEN && a->dom != b->dom))
        FAIL("%%%d bcast: cannot broadcast %s to %s", id, level_name(a->level),
             level_name(b->level));
      break;
    case IR_ARGMAX:
      if (a->level != IR_LTOKEN || n->level != IR_LTOKEN || n->dom != a->dom)
        FAIL("%%%d argmax: must map a per-token value to one of the same domain", id);
      break;
    default:
      break;
    }
    break;
  }
  /* anchors are sequences, read only by what needs their tokens */
  for (int k = 0; k < n->nin; k++)
    if (g->nodes[n->in[k]].op == IR_SAMPLE && oi->cls != IR_CALL && n->op != IR_SEQLEN &&
        n->op != IR_PICK && n->op != IR_POS)
      FAIL("%%%d %s: reads anchor %%%d as a number", id, oi->name, n->in[k]);
  return 0;
}

int ir_verify(const ir_graph *g, char *err, size_t errlen) {
  for (int d = 0; d < g->ndoms; d++) {
    const ir_domain *dm = &g->doms[d];
    if ((dm->kind == IR_DOM_SLICE) && (dm->base < 0 || dm->base >= d))
      FAIL("domain %s: bad base", dm->name);
    if (dm->kind == IR_DOM_ANCHOR && dm->sample >= g->n) FAIL("domain %s: bad sample", dm->name);
  }
  for (int i = 0; i < g->n; i++)
    if (verify_node(g, i, err, errlen)) return -1;
  if (g->loss >= 0) {
    if (g->loss >= g->n) FAIL("loss %%%d out of range", g->loss);
    if (g->nodes[g->loss].level != IR_LEXAMPLE) FAIL("loss %%%d is not per-example", g->loss);
  }
  for (int r = 0; r < g->nreports; r++) {
    int x = g->reports[r].node;
    if (x < 0 || x >= g->n) FAIL("report %s: node %d out of range", g->reports[r].name, x);
    if (g->nodes[x].level == IR_LTOKEN || g->nodes[x].op == IR_SAMPLE)
      FAIL("report %s: per-token", g->reports[r].name);
  }
  for (int k = 0; k < g->ngrads; k++) {
    int c = g->grads[k].call, d = g->grads[k].grad;
    if (c < 0 || c >= g->n || d < 0 || d >= g->n) FAIL("grad %d: node out of range", k);
    const ir_node *cn = &g->nodes[c], *dn = &g->nodes[d];
    if ((cn->op != IR_LOGP && cn->op != IR_ENTROPY && cn->op != IR_REWARD) ||
        !g->models[cn->idx].trainable)
      FAIL("grad %d: %%%d is not a call of a trainable model", k, c);
    if (dn->level != cn->level || dn->dom != cn->dom)
      FAIL("grad %d: %%%d is not shaped like %%%d", k, d, c);
  }
  for (int p = 0; p < g->nplan; p++)
    for (int k = 0; k < g->plan[p].ncalls; k++) {
      int c = g->plan[p].calls[k];
      if (c < 0 || c >= g->n || g->nodes[c].idx != g->plan[p].model ||
          !ir_model_call(g->nodes[c].op))
        FAIL("batch plan %d: entry %d is not a call of its model", p, k);
    }
  return ir_verify_fusion(g, err, errlen);
}

/* ---- printing -------------------------------------------------------------------- */

const char *ir_type_str(const ir_graph *g, const ir_node *n, char *buf, size_t len) {
  if (n->op == IR_SAMPLE) snprintf(buf, len, "anchor[%s]", g->doms[n->dom].name);
  else if (n->level == IR_LTOKEN) snprintf(buf, len, "token[%s]", g->doms[n->dom].name);
  else snprintf(buf, len, "%s", level_name(n->level));
  return buf;
}

static void ctx_str(const ir_call *c, char *buf, size_t len) {
  size_t o = 0;
  buf[0] = 0;
  if (c->nctx == 0) {
    snprintf(buf, len, "prompt");
    return;
  }
  for (int k = 0; k < c->nctx && o < len; k++)
    o += (size_t)snprintf(buf + o, len - o, "%s%s", k ? "," : "", c->ctx[k].text);
}

static void node_args(const ir_graph *g, const ir_node *n, char *buf, size_t len) {
  const ir_opinfo *oi = &op_table[n->op];
  char ctx[256];
  size_t o = 0;
  buf[0] = 0;
  switch (n->op) {
  case IR_CONST: snprintf(buf, len, "%.17g", n->num); return;
  case IR_PARAM: snprintf(buf, len, "%s", g->knobs[n->idx].name); return;
  case IR_FIELD: snprintf(buf, len, "%s", g->fields[n->idx].name); return;
  case IR_SEQLEN:
  case IR_POS: snprintf(buf, len, "%s", g->doms[n->dom].name); return;
  case IR_NBATCH: return;
  case IR_LOGP:
  case IR_ENTROPY:
  case IR_LOGSUMSQ:
  case IR_REWARD:
    ctx_str(n->call, ctx, sizeof ctx);
    snprintf(buf, len, "%s %s|%s", g->models[n->idx].name, g->doms[n->call->target].name, ctx);
    return;
  case IR_SAMPLE: {
    const ir_domain *d = &g->doms[n->dom];
    ctx_str(n->call, ctx, sizeof ctx);
    snprintf(buf, len, "%s %s tokens=%d temperature=%g top_p=%g", g->models[n->idx].name, ctx,
             d->tokens, d->temperature, d->top_p);
    return;
  }
  case IR_PICK: snprintf(buf, len, "%s, %%%d", g->doms[n->dom].name, n->in[0]); return;
  case IR_SLICE: {
    char hb[32] = "";
    if (n->hi >= 0) snprintf(hb, sizeof hb, "%d", n->hi);
    snprintf(buf, len, "%%%d[%d:%s]", n->in[0], n->idx, hb);
    return;
  }
  case IR_FIT:
    snprintf(buf, len, "%%%d into %%%d at %d", n->in[0], n->in[1], n->idx);
    return;
  default:
    break;
  }
  (void)oi;
  for (int k = 0; k < n->nin && o < len; k++)
    o += (size_t)snprintf(buf + o, len - o, "%s%%%d", k ? ", " : "", n->in[k]);
}

static const char *base_name(const char *p) {
  const char *s = strrchr(p, '/');
  return s ? s + 1 : p;
}

static void flags_str(unsigned f, char *buf, size_t len) {
  static const struct { unsigned bit; const char *name; } names[] = {
      {IR_F_TRAIN, "train"}, {IR_F_SAMPLED, "sampled"}, {IR_F_RANDOM, "random"},
      {IR_F_DATA, "data"}, {IR_F_HOIST, "hoist"}, {IR_F_CACHE, "cache"}, {IR_F_GRAD, "grad"},
      {IR_F_RECOMP, "recompute"}, {IR_F_STORE, "store"}};
  size_t o = 0;
  buf[0] = 0;
  for (size_t i = 0; i < sizeof names / sizeof names[0] && o < len; i++)
    if (f & names[i].bit) o += (size_t)snprintf(buf + o, len - o, "%s%s", o ? " " : "", names[i].name);
}

void ir_print(const ir_graph *g, FILE *f, bool plan) {
  for (int i = 0; i < g->n; i++) {
    const ir_node *n = &g->nodes[i];
    char args[512], lhs[640], ty[160], fl[128];
    node_args(g, n, args, sizeof args);
    snprintf(lhs, sizeof lhs, "%%%d = %s%s%s", i, op_table[n->op].name, args[0] ? " " : "", args);
    ir_type_str(g, n, ty, sizeof ty);
    flags_str(n->flags, fl, sizeof fl);
    fprintf(f, "  %-44s : %-18s", lhs, ty);
    if (n->loc.src && n->loc.line > 0)
      fprintf(f, "  # %s:%d", base_name(n->loc.src->path), n->loc.line);
    if (n->name) fprintf(f, " %s", n->name);
    if (fl[0]) fprintf(f, "  [%s]", fl);
    fputc('\n', f);
  }
  if (g->loss >= 0) fprintf(f, "  loss = %%%d\n", g->loss);
  for (int r = 0; r < g->nreports; r++)
    fprintf(f, "  report %s = %%%d\n", g->reports[r].name, g->reports[r].node);
  for (int k = 0; k < g->ngrads; k++)
    fprintf(f, "  grad%s %s = %%%d\n", g->nodes[g->grads[k].call].op == IR_ENTROPY  ? "_entropy"
                                      : g->nodes[g->grads[k].call].op == IR_REWARD ? "_reward"
                                                                                   : "",
            g->nodes[g->grads[k].call].key, g->grads[k].grad);
  if (!plan) return;
  fprintf(f, "batching plan:\n");
  if (g->nplan == 0) fprintf(f, "  (no model calls)\n");
  for (int p = 0; p < g->nplan; p++) {
    const ir_batch *b = &g->plan[p];
    fprintf(f, "  %s: one packed forward %s:", g->models[b->model].name,
            b->hoisted ? "before training (hoisted, cached per example)"
                       : b->after_sample ? "per micro-step, after sampling the anchors"
                                         : "per micro-step");
    for (int k = 0; k < b->ncalls; k++) {
      const ir_node *c = &g->nodes[b->calls[k]];
      fprintf(f, " %%%d %s%s", b->calls[k],
              c->op == IR_ENTROPY    ? "entropy:"
              : c->op == IR_LOGSUMSQ ? "logsumsq:"
              : c->op == IR_REWARD   ? "reward:"
                                     : "",
              c->key);
    }
    fputc('\n', f);
  }
  fprintf(f, "hoisted:");
  int nh = 0;
  for (int i = 0; i < g->n; i++)
    if (g->nodes[i].flags & IR_F_HOIST) fprintf(f, " %%%d", i), nh++;
  if (!nh) fprintf(f, " (none)");
  fprintf(f, "\ncached:");
  int nc = 0;
  for (int i = 0; i < g->n; i++)
    if (g->nodes[i].flags & IR_F_CACHE) fprintf(f, " %%%d", i), nc++;
  if (!nc) fprintf(f, " (none)");
  fprintf(f, "\nseparable: %s\n",
          g->separable ? "yes (no batch reduction carries gradient)"
                       : "no (a batch reduction carries gradient: the whole batch's forward "
                         "comes before any backward)");
}

static void dot_escape(FILE *f, const char *s) {
  for (; *s; s++) {
    if (*s == '"' || *s == '\\') fputc('\\', f);
    fputc(*s, f);
  }
}

void ir_print_dot(const ir_graph *g, FILE *f) {
  static const char *fill[] = {"#eeeeee", "#f4d6a0", "#cde3f5", "#d5efcf"};
  fprintf(f, "digraph poc {\n  rankdir=TB;\n  node [shape=box, style=\"rounded,filled\", "
             "fontname=\"monospace\", fontsize=10];\n");
  for (int i = 0; i < g->n; i++) {
    const ir_node *n = &g->nodes[i];
    char args[512], ty[160];
    node_args(g, n, args, sizeof args);
    ir_type_str(g, n, ty, sizeof ty);
    fprintf(f, "  n%d [label=\"%%%d %s ", i, i, op_table[n->op].name);
    dot_escape(f, args);
    fprintf(f, "\\n");
    dot_escape(f, ty);
    fprintf(f, "\", fillcolor=\"%s\"", fill[n->level]);
    if (n->flags & IR_F_HOIST) fprintf(f, ", style=\"rounded,filled,dashed\"");
    if (n->flags & IR_F_GRAD) fprintf(f, ", color=\"#b03030\"");
    fprintf(f, "];\n");
    for (int k = 0; k < n->nin; k++) fprintf(f, "  n%d -> n%d;\n", n->in[k], i);
  }
  if (g->loss >= 0)
    fprintf(f, "  loss [shape=ellipse, label=\"loss\"];\n  n%d -> loss;\n", g->loss);
  for (int r = 0; r < g->nreports; r++) {
    fprintf(f, "  r%d [shape=ellipse, label=\"", r);
    dot_escape(f, g->reports[r].name);
    fprintf(f, "\"];\n  n%d -> r%d;\n", g->reports[r].node, r);
  }
  for (int k = 0; k < g->ngrads; k++) {
    fprintf(f, "  gr%d [shape=ellipse, color=\"#b03030\", label=\"d/d ", k);
    dot_escape(f, g->nodes[g->grads[k].call].key);
    fprintf(f, "\"];\n  n%d -> gr%d;\n", g->grads[k].grad, k);
  }
  fprintf(f, "}\n");
}
