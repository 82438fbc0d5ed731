/* codegen.c — what plan.c and kernels.c share: the distinct model calls the runtime
 * runs (a logp and an entropy of the same call are one poc_call), the anchors, where
 * each token domain's count comes from, and the escaping that keeps .po text out of
 * generated code. */
#include <ctype.h>
#include <stdlib.h>
#include <string.h>

#include "codegen.h"
#include "home.h"


/* ---- escaping ---------------------------------------------------------------------- */

static bool safe_byte(unsigned char c) {
  return isalnum(c) || c == ' ' || c == '_' || c == '.' || c == '/' || c == '-';
}

void cg_cstrn(FILE *f, const char *s, size_t n) {
  fputc('"', f);
  for (size_t i = 0; i < n; i++) {
    unsigned char c = (unsigned char)s[i];
    /* "/" after "*" would still be harmless inside a literal, but a reader's eye (and a
       careless future edit moving text into a comment) deserves the escape */
    if (safe_byte(c) && !(c == '/' && i > 0 && s[i - 1] == '*')) fputc(c, f);
    else fprintf(f, "\\%03o", c);
    if (c == '\n' && i + 1 < n) fputs("\"\n    \"", f); /* one source line per literal line */
  }
  fputc('"', f);
}

void cg_cstr(FILE *f, const char *s) {
  if (!s) fputs("NULL", f);
  else cg_cstrn(f, s, strlen(s));
}

void cg_num(FILE *f, double v) {
  char buf[40];
  snprintf(buf, sizeof buf, "%.17g", v);
  /* "1e+20" and "3" are valid C doubles; "inf"/"nan" never get here */
  fputs(buf, f);
  if (!strpbrk(buf, ".eE")) fputs(".0", f);
}

const char *cg_base(const char *path) {
  const char *s = strrchr(path, '/');
  return s ? s + 1 : path;
}

/* Comment text: only bytes that cannot end a comment or a line. */
static void comment_text(FILE *f, const char *s) {
  for (; *s; s++) {
    unsigned char c = (unsigned char)*s;
    fputc(isalnum(c) || strchr(" _./|,:[]%=+-()#", c) ? c : '?', f);
  }
}

/* The .po file's base name when every byte of it is harmless in a comment. */
static const char *file_name(const cg_prog *p) {
  const char *b = cg_base(p->g->src && p->g->src->path ? p->g->src->path : "");
  bool ok = *b != 0;
  for (const char *q = b; *q; q++) ok &= isalnum((unsigned char)*q) || strchr("_.-", *q);
  return ok ? b : NULL;
}

void cg_file(FILE *f, const cg_prog *p) {
  const char *b = file_name(p);
  fputs(b ? b : "a .po file whose name is not printed here", f);
}

void cg_where(FILE *f, const cg_prog *p, po_loc loc) {
  if (loc.line < 1) return;
  const char *b = file_name(p);
  if (b) fprintf(f, "%s:%d", b, loc.line);
  else fprintf(f, "line %d", loc.line);
}

char *cg_template(const char *name, size_t *len) {
  const char *dir = getenv("POC_TEMPLATE_DIR");
  if (!dir || !*dir) {
    const poc_home *h = poc_home_get();
    if (!h) return NULL;
    dir = h->templates;
  }
  char path[4096];
  snprintf(path, sizeof path, "%s/%s", dir, name);
  FILE *f = fopen(path, "rb");
  if (!f) return NULL;
  size_t cap = 1 << 14, n = 0;
  char *buf = malloc(cap);
  for (size_t r; buf && (r = fread(buf + n, 1, cap - n - 1, f)) > 0;) {
    n += r;
    if (n + 1 == cap) {
      char *b2 = realloc(buf, cap *= 2);
      if (!b2) free(buf);
      buf = b2;
    }
  }
  fclose(f);
  if (!buf) return NULL;
  buf[n] = 0;
  if (len) *len = n;
  return buf;
}

void cg_describe(FILE *f, const cg_prog *p, int id) {
  const ir_graph *g = p->g;
  const ir_node *n = &g->nodes[id];
  fprintf(f, "%%%d = %s", id, ir_op_info(n->op)->name);
  switch (n->op) {
  case IR_CONST: fputc(' ', f); cg_num(f, n->num); return;
  case IR_PARAM: fputc(' ', f); comment_text(f, g->knobs[n->idx].name); return;
  case IR_FIELD: fputc(' ', f); comment_text(f, g->fields[n->idx].name); return;
  case IR_SEQLEN:
  case IR_POS: fputc(' ', f); comment_text(f, g->doms[n->dom].name); return;
  case IR_LOGP:
  case IR_ENTROPY:
  case IR_LOGSUMSQ:
  case IR_REWARD:
  case IR_PICK:
    fputc(' ', f);
    comment_text(f, n->key);
    return;
  case IR_SLICE:
    fprintf(f, " %%%d[%d:", n->in[0], n->idx);
    if (n->hi >= 0) fprintf(f, "%d", n->hi);
    fputc(']', f);
    return;
  case IR_FIT: fprintf(f, " %%%d into %%%d at %d", n->in[0], n->in[1], n->idx); return;
  default: break;
  }
  for (int k = 0; k < n->nin; k++) fprintf(f, "%s%%%d", k ? ", " : " ", n->in[k]);
}

/* ---- the tables -------------------------------------------------------------------- */

int cg_call_node(const cg_call *c) {
  return c->logp >= 0 ? c->logp : c->entropy >= 0 ? c->entropy : c->lss;
}

/* A zero adjoint: broadcast of the constant 0 (autodiff's answer where sg stops every
 * path). Such a call needs no gradient from the runtime. */
static bool zero_grad(const ir_graph *g, int d) {
  const ir_node *n = &g->nodes[d];
  return n->op == IR_BCAST && g->nodes[n->in[0]].op == IR_CONST && g->nodes[n->in[0]].num == 0;
}

int cg_dom_source(const cg_prog *p, int d, int *call, int *field, int *lo, int *hi) {
  const ir_graph *g = p->g;
  if (p->dom_call[d] >= 0 || p->dom_field[d] >= 0) {
    *call = p->dom_call[d];
    *field = p->dom_field[d];
    *lo = 0;
    *hi = -1;
    return 0;
  }
  if (g->doms[d].kind != IR_DOM_SLICE) return -1;
  int lo1, hi1;
  if (cg_dom_source(p, g->doms[d].base, call, field, &lo1, &hi1)) return -1;
  /* x[lo1:hi1][lo2:hi2] = x[lo1+lo2 : min(hi1, lo1+hi2)] for non-negative bounds */
  int lo2 = g->doms[d].lo, hi2 = g->doms[d].hi;
  *lo = lo1 + lo2;
  *hi = hi2 < 0 ? hi1 : hi1 < 0 || lo1 + hi2 < hi1 ? lo1 + hi2 : hi1;
  return 0;
}

int cg_prepare(cg_prog *p, const po_program *ast, ir_graph *g, const cg_options *opt, po_diag *d) {
  memset(p, 0, sizeof *p);
  p->ast = ast;
  p->g = g;
  p->opt = opt;
  const char *path = g->src && g->src->path ? g->src->path : "objective.po";
  const char *b = cg_base(path);
  size_t n = strlen(b);
  if (n > 3 && !strcmp(b + n - 3, ".po")) n -= 3;
  p->name = ir_fmt(g, "%.*s", (int)n, b);
  p->call_of = ir_xcalloc((size_t)g->n, sizeof *p->call_of);
  p->calls = ir_xcalloc((size_t)g->n, sizeof *p->calls);
  for (int i = 0; i < g->n; i++) p->call_of[i] = -1;
  int errors = 0;
  for (int i = 0; i < g->n; i++) {
    const ir_node *x = &g->nodes[i];
    if (!ir_model_call(x->op)) continue;
    int c = -1;
    for (int k = 0; k < p->ncalls; k++)
      if (p->calls[k].model == x->idx && !strcmp(p->calls[k].key, x->key) &&
          p->calls[k].reward == (x->op == IR_REWARD))
        c = k;
    if (c < 0) {
      c = p->ncalls++;
      p->calls[c] = (cg_call){.key = x->key, .model = x->idx, .logp = -1, .entropy = -1,
                              .lss = -1, .dlogp = -1, .dentropy = -1, .call = x->call,
                              .hoisted = true, .reward = x->op == IR_REWARD};
    }
    /* a reward call's scores travel in the logp arrays, one per example */
    if (x->op == IR_LOGP || x->op == IR_REWARD) p->calls[c].logp = i;
    else if (x->op == IR_ENTROPY) p->calls[c].entropy = i;
    else p->calls[c].lss = i;
    p->calls[c].hoisted &= (x->flags & IR_F_HOIST) && !opt->no_hoist;
    p->call_of[i] = c;
  }
  /* a call wants gradient when any of its adjoints is not the zero broadcast */
  for (int k = 0; k < g->ngrads; k++) {
    int c = p->call_of[g->grads[k].call];
    if (c < 0 || zero_grad(g, g->grads[k].grad)) continue;
    for (int j = 0; j < g->ngrads; j++) {
      if (p->call_of[g->grads[j].call] != c) continue;
      if (g->nodes[g->grads[j].call].op != IR_ENTROPY) p->calls[c].dlogp = g->grads[j].grad;
      else p->calls[c].dentropy = g->grads[j].grad;
    }
  }
  for (int c = 0; c < p->ncalls; c++) {
    /* literal tokens must be int32 ids */
    const ir_call *ic = p->calls[c].call;
    for (int k = 0; ic && k < ic->nctx; k++)
      for (int j = 0; j < ic->ctx[k].ntoks; j++)
        if (ic->ctx[k].toks[j] < 0 || ic->ctx[k].toks[j] > INT32_MAX) {
          po_error(d, g->nodes[cg_call_node(&p->calls[c])].loc,
                   "token id %lld in the context of '%s' is not a valid token id",
                   (long long)ic->ctx[k].toks[j], p->calls[c].key);
          errors++;
        }
  }
  p->anchors = ir_xcalloc((size_t)g->n, sizeof *p->anchors);
  for (int i = 0; i < g->n; i++)
    if (g->nodes[i].op == IR_SAMPLE) p->anchors[p->nanchors++] = i;
  /* token counts: the runtime hands the kernel a count per call and per token field */
  p->dom_call = ir_xcalloc((size_t)g->ndoms, sizeof *p->dom_call);
  p->dom_field = ir_xcalloc((size_t)g->ndoms, sizeof *p->dom_field);
  for (int dd = 0; dd < g->ndoms; dd++) {
    p->dom_call[dd] = p->dom_field[dd] = -1;
    for (int c = 0; c < p->ncalls && p->dom_call[dd] < 0; c++)
      if (p->calls[c].call->target == dd && !p->calls[c].reward) p->dom_call[dd] = c;
    for (int f = 0; f < g->nfields && p->dom_call[dd] < 0 && p->dom_field[dd] < 0; f++)
      if (g->fields[f].dom == dd) p->dom_field[dd] = f;
  }
  for (int i = 0; i < g->n; i++) {
    const ir_node *x = &g->nodes[i];
    if (x->op != IR_SEQLEN && x->op != IR_PICK && x->op != IR_POS) continue;
    int r = x->dom, cc, ff, lo, hi;
    if (!cg_dom_source(p, x->dom, &cc, &ff, &lo, &hi)) continue;
    while (g->doms[r].kind == IR_DOM_SLICE) r = g->doms[r].base;
    po_error(d, x->loc,
             "%s needs the token count of '%s', but no logp, entropy or logsumsq call scores '%s' and no "
             "per-token field follows it; the training runtime gives token counts only with "
             "those values",
             x->op == IR_PICK ? "pick" : x->op == IR_POS ? "pos" : "len", g->doms[x->dom].name,
             g->doms[r].name);
    errors++;
  }
  p->separable = g->separable;
  for (int i = 0; i < g->n; i++)
    if (ir_op_info(g->nodes[i].op)->cls == IR_BATR || ir_op_info(g->nodes[i].op)->cls == IR_BPERM)
      p->separable = false;
  return errors ? -1 : 0;
}

void cg_release(cg_prog *p) {
  free(p->call_of);
  free(p->calls);
  free(p->anchors);
  free(p->dom_call);
  free(p->dom_field);
  memset(p, 0, sizeof *p);
}
