/* fe_test.h — helpers shared by the front end's C tests: run the front end on text in
 * memory, capture the diagnostics, and print expressions as s-expressions so a test
 * can state a tree's shape in one line. */
#ifndef POC_FE_TEST_H
#define POC_FE_TEST_H

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "check.h"
#include "dsl.h"

typedef struct fe_run {
  po_program *prog;
  int errors;      /* all errors: parse and check */
  char *out;       /* the diagnostics as printed */
  size_t outlen;
} fe_run;

/* Parses `text` (and checks it when `check` is set), diagnostics into r->out. */
static inline fe_run fe_compile(const char *text, int check) {
  fe_run r = {0};
  FILE *f = open_memstream(&r.out, &r.outlen);
  po_diag *d = po_diag_new(f);
  po_source *src = po_source_from_memory("t.po", text, strlen(text));
  r.prog = po_parse(src, d);
  if (check && r.prog) po_check(r.prog, d);
  r.errors = po_diag_errors(d);
  po_diag_free(d);
  fclose(f);
  return r;
}

static inline void fe_done(fe_run *r) { free(r->out); }

static inline int fe_has(const fe_run *r, const char *needle) {
  return r->out && strstr(r->out, needle) != NULL;
}

/* s-expressions: (+ a b) (neg a) (call f a b :key v) (slice x lo hi) (| y c) [1 2]
 * numbers printed with %g, strings in quotes, missing slice bounds as _. */
static inline void fe_sexpr_(const po_expr *e, char *buf, size_t n, size_t *at) {
#define PUT(...) (*at += (size_t)snprintf(buf + *at, *at < n ? n - *at : 0, __VA_ARGS__))
  static const char *ops[] = {"+", "-", "*", "/", "<", "<=", ">", ">=", "==", "!=", "++", "neg"};
  if (!e) {
    PUT("_");
    return;
  }
  switch (e->kind) {
    case PO_E_NUM: PUT("%g", e->num); break;
    case PO_E_STR: PUT("\"%s\"", e->str); break;
    case PO_E_NAME: PUT("%s", e->str); break;
    case PO_E_TOKENS:
      PUT("[");
      for (int i = 0; i < e->ntoks; i++) PUT("%s%lld", i ? " " : "", (long long)e->toks[i]);
      PUT("]");
      break;
    case PO_E_UNARY:
      PUT("(%s ", ops[e->op]);
      fe_sexpr_(e->lhs, buf, n, at);
      PUT(")");
      break;
    case PO_E_BINARY:
      PUT("(%s ", ops[e->op]);
      fe_sexpr_(e->lhs, buf, n, at);
      PUT(" ");
      fe_sexpr_(e->rhs, buf, n, at);
      PUT(")");
      break;
    case PO_E_GIVEN:
      PUT("(| ");
      fe_sexpr_(e->lhs, buf, n, at);
      PUT(" ");
      fe_sexpr_(e->rhs, buf, n, at);
      PUT(")");
      break;
    case PO_E_SLICE:
      PUT("(slice ");
      fe_sexpr_(e->lhs, buf, n, at);
      PUT(" ");
      fe_sexpr_(e->lo, buf, n, at);
      PUT(" ");
      fe_sexpr_(e->hi, buf, n, at);
      PUT(")");
      break;
    case PO_E_LIST:
      PUT("(list");
      for (int i = 0; i < e->nargs; i++) PUT(" %s", e->args[i].value->str);
      PUT(")");
      break;
    case PO_E_CALL:
      PUT("(call %s", e->str);
      for (int i = 0; i < e->nargs; i++) {
        PUT(" ");
        if (e->args[i].name) PUT(":%s ", e->args[i].name);
        fe_sexpr_(e->args[i].value, buf, n, at);
      }
      PUT(")");
      break;
  }
#undef PUT
}

static inline const char *fe_sexpr(const po_expr *e) {
  static char buf[4096];
  size_t at = 0;
  fe_sexpr_(e, buf, sizeof buf, &at);
  return buf;
}

/* The s-expression of the value of the only (or last) statement of `text`. */
static inline const char *fe_value(const char *text) {
  fe_run r = fe_compile(text, 0);
  const char *s = "<no statement>";
  if (r.errors) s = "<errors>";
  else if (r.prog && r.prog->nstmts) s = fe_sexpr(r.prog->stmts[r.prog->nstmts - 1]->value);
  fe_done(&r);
  return s;
}

#define CHECK_TREE(text, expect)                                      \
  do {                                                                \
    const char *got_ = fe_value(text);                                \
    CHECK_MSG(!strcmp(got_, expect), "%s\n  got    %s\n  wanted %s", text, got_, expect); \
  } while (0)

#endif
