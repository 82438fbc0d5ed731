/* test_parse.c — the scanner and the parser: tree shapes, precedence, locations,
 * lexical values, and syntax error recovery. */
#include "fe_test.h"

static void test_precedence(void) {
  CHECK_TREE("x = 1 + 2 * 3", "(+ 1 (* 2 3))");
  CHECK_TREE("x = (1 + 2) * 3", "(* (+ 1 2) 3)");
  CHECK_TREE("x = a - b - c", "(- (- a b) c)");
  CHECK_TREE("x = a / b / c", "(/ (/ a b) c)");
  CHECK_TREE("x = -a * b", "(* (neg a) b)");
  CHECK_TREE("x = - -a", "(neg (neg a))");
  CHECK_TREE("x = a - -b", "(- a (neg b))");
  CHECK_TREE("x = 1 + 2 < 3 * 4", "(< (+ 1 2) (* 3 4))");
  CHECK_TREE("x = a ++ b + c", "(++ a (+ b c))");
  CHECK_TREE("x = a ++ b ++ c", "(++ (++ a b) c)");
  CHECK_TREE("x = a < b ++ c", "(< a (++ b c))");
  CHECK_TREE("x = a <= b", "(<= a b)");
  CHECK_TREE("x = a >= b", "(>= a b)");
  CHECK_TREE("x = a > b", "(> a b)");
  CHECK_TREE("x = a == b", "(== a b)");
  CHECK_TREE("x = a != b", "(!= a b)");
  CHECK_TREE("x = -x[1:]", "(neg (slice x 1 _))");
  CHECK_TREE("x = -f(a) * 2", "(* (neg (call f a)) 2)");
  /* comparisons do not chain */
  fe_run r = fe_compile("x = a < b < c", 0);
  CHECK(r.errors == 1);
  fe_done(&r);
  r = fe_compile("x = a == b == c", 0);
  CHECK(r.errors == 1);
  fe_done(&r);
}

static void test_postfix(void) {
  CHECK_TREE("x = y[:]", "(slice y _ _)");
  CHECK_TREE("x = y[1:]", "(slice y 1 _)");
  CHECK_TREE("x = y[:k]", "(slice y _ k)");
  CHECK_TREE("x = y[1 + 1:2 * 4]", "(slice y (+ 1 1) (* 2 4))");
  CHECK_TREE("x = y[1:][:2]", "(slice (slice y 1 _) _ 2)");
  CHECK_TREE("x = sg(r)[:8]", "(slice (call sg r) _ 8)");
  CHECK_TREE("x = f()", "(call f)");
  CHECK_TREE("x = f(a, b, c)", "(call f a b c)");
  CHECK_TREE("a = sample(policy, prompt, tokens=8, temperature=0.7, top_p=0.9)",
             "(call sample policy prompt :tokens 8 :temperature 0.7 :top_p 0.9)");
  CHECK_TREE("a = f(k = 1 == 2)", "(call f :k (== 1 2))");
  CHECK_TREE("a = f(k == 2)", "(call f (== k 2))");
  CHECK_TREE("x = logp(policy, chosen | prompt ++ sep ++ rejected ++ sep)",
             "(call logp policy (| chosen (++ (++ (++ prompt sep) rejected) sep)))");
  CHECK_TREE("x = logp(m, prompt[1:] | prompt[:1])",
             "(call logp m (| (slice prompt 1 _) (slice prompt _ 1)))");
  CHECK_TREE("x = logp(m, y | [2] ++ c)", "(call logp m (| y (++ [2] c)))");
  CHECK_TREE("x = (a | b)", "(| a b)");
  CHECK_TREE("x = [1, 2, 13]", "[1 2 13]");
  CHECK_TREE("x = [0]", "[0]");
  CHECK_TREE("x = [2147483647]", "[2147483647]");
  CHECK_TREE("x = \"a\\\"b\\\\c\"", "\"a\"b\\c\"");
  /* `|` is one per argument */
  fe_run r = fe_compile("x = logp(m, a | b | c)", 0);
  CHECK(r.errors == 1 && fe_has(&r, "a context is written once"));
  fe_done(&r);
}

static void test_numbers(void) {
  CHECK_TREE("x = 8", "8");
  CHECK_TREE("x = 0.1", "0.1");
  CHECK_TREE("x = 5e-7", "5e-07");
  CHECK_TREE("x = 1.5E+3", "1500");
  CHECK_TREE("x = 2e3", "2000");
  fe_run r = fe_compile("x = 1e999", 0);
  CHECK(r.errors == 1 && fe_has(&r, "t.po:1:5: error: number '1e999' is out of range"));
  fe_done(&r);
  r = fe_compile("x = 12ab + 1.", 0);
  CHECK(r.errors == 2 && fe_has(&r, "malformed number '12ab'") && fe_has(&r, "malformed number '1.'"));
  fe_done(&r);
  r = fe_compile("x = [1.5, 2]", 0);
  CHECK(r.errors >= 1 && fe_has(&r, "token id must be an integer"));
  fe_done(&r);
  r = fe_compile("x = [2147483648]", 0);
  CHECK(r.errors == 1 && fe_has(&r, "token id must be an integer from 0 to 2147483647"));
  fe_done(&r);
}

static void test_statements(void) {
  fe_run r = fe_compile(
      "policy = lora(model(\"m\"), r=8, targets=[q, v, down])\n"
      "param beta = 0.1; def S(m, y) = sum(logp(m, y))\n"
      "field f\n"
      "field g[chosen]\n"
      "report rewards/chosen/x = beta\n"
      "report acc = 1\n"
      "train { lr = 5e-7; schedule = cosine\n precision = bf16; }\n",
      0);
  CHECK(r.errors == 0);
  po_program *p = r.prog;
  CHECK(p->nstmts == 8);
  if (p->nstmts == 8) {
    po_stmt **s = p->stmts;
    CHECK(s[0]->kind == PO_S_LET && !strcmp(s[0]->name, "policy"));
    CHECK(!strcmp(fe_sexpr(s[0]->value),
                  "(call lora (call model \"m\") :r 8 :targets (list q v down))"));
    CHECK(s[1]->kind == PO_S_PARAM && !strcmp(s[1]->name, "beta") && s[1]->value->num == 0.1);
    CHECK(s[2]->kind == PO_S_DEF && s[2]->nparams == 2 && !strcmp(s[2]->params[0], "m") &&
          !strcmp(s[2]->params[1], "y"));
    CHECK(s[2]->param_locs[1].line == 2 && s[2]->param_locs[1].col == 28);
    CHECK(!strcmp(fe_sexpr(s[2]->value), "(call sum (call logp m y))"));
    CHECK(s[3]->kind == PO_S_FIELD && !strcmp(s[3]->name, "f") && !s[3]->field_seq);
    CHECK(s[4]->kind == PO_S_FIELD && !strcmp(s[4]->field_seq, "chosen"));
    CHECK(s[4]->field_seq_loc.line == 4 && s[4]->field_seq_loc.col == 9);
    CHECK(s[5]->kind == PO_S_REPORT && !strcmp(s[5]->name, "rewards/chosen/x"));
    /* the report name's span covers the whole path */
    CHECK(s[5]->name_loc.col == 8 && s[5]->name_loc.end_col == 23);
    CHECK(s[6]->kind == PO_S_REPORT && !strcmp(s[6]->name, "acc"));
    CHECK(s[7]->kind == PO_S_TRAIN && s[7]->nitems == 3);
    if (s[7]->nitems == 3) {
      CHECK(!strcmp(s[7]->items[0].key, "lr") && s[7]->items[0].value->num == 5e-7);
      CHECK(!strcmp(s[7]->items[1].key, "schedule") && s[7]->items[1].value->kind == PO_E_NAME &&
            !strcmp(s[7]->items[1].value->str, "cosine"));
      CHECK(!strcmp(s[7]->items[2].key, "precision") && s[7]->items[2].loc.line == 8 &&
            s[7]->items[2].loc.col == 2);
    }
  }
  fe_done(&r);
  r = fe_compile("def f() = 1\ntrain { }\n", 0);
  CHECK(r.errors == 0 && r.prog->nstmts == 2 && r.prog->stmts[0]->nparams == 0 &&
        r.prog->stmts[1]->nitems == 0);
  fe_done(&r);
}

static void test_locations(void) {
  fe_run r = fe_compile("# comment\n  x =\n   a +\n\tsum(b)\n", 0);
  CHECK(r.errors == 0 && r.prog->nstmts == 1);
  po_stmt *s = r.prog->stmts[0];
  /* the binding's location is its name, even though the `=` came with it */
  CHECK(s->name_loc.line == 2 && s->name_loc.col == 3 && s->name_loc.end_col == 3);
  CHECK(s->loc.line == 2 && s->loc.col == 3 && s->loc.end_line == 4 && s->loc.end_col == 7);
  po_expr *e = s->value;
  CHECK(e->kind == PO_E_BINARY && e->loc.line == 3 && e->loc.col == 4);
  CHECK(e->rhs->kind == PO_E_CALL && e->rhs->loc.line == 4 && e->rhs->loc.col == 2 &&
        e->rhs->loc.end_col == 7);
  CHECK(e->rhs->args[0].value->loc.col == 6);
  fe_done(&r);

  /* `name =` across a comment and a newline is still a binding */
  r = fe_compile("x # the name\n = 1\n", 0);
  CHECK(r.errors == 0 && r.prog->nstmts == 1 && !strcmp(r.prog->stmts[0]->name, "x"));
  fe_done(&r);
}

static void test_lexical_errors(void) {
  fe_run r = fe_compile("x = \"abc\ny = 2\n", 0);
  CHECK(fe_has(&r, "t.po:1:5: error: unterminated string"));
  fe_done(&r);
  r = fe_compile("x = \"a\\nb\"", 0);
  CHECK(r.errors == 1 && fe_has(&r, "t.po:1:7: error: unknown escape '\\n' in string"));
  fe_done(&r);
  r = fe_compile("x = 1 @ 2", 0);
  CHECK(fe_has(&r, "t.po:1:7: error: unexpected character '@'"));
  fe_done(&r);
  r = fe_compile("x = \x01", 0);
  CHECK(fe_has(&r, "unexpected control character 0x01"));
  fe_done(&r);
  r = fe_compile("x = \xc3\xa9", 0);
  CHECK(r.errors >= 1 && fe_has(&r, "t.po:1:5: error: stray byte 0xc3 outside a string or comment"));
  fe_done(&r);
  r = fe_compile("# caf\xc3\xa9 \xff\nx = model(\"\xc3\xa9\xff\")\n", 0);
  CHECK(r.errors == 0);
  fe_done(&r);
  char name[400];
  memset(name, 'n', 300);
  strcpy(name + 300, " = 1");
  r = fe_compile(name, 0);
  CHECK(r.errors == 1 && fe_has(&r, "name is too long (300 bytes; the limit is 256)"));
  CHECK(r.prog->nstmts == 1 && strlen(r.prog->stmts[0]->name) == 256);
  fe_done(&r);
  /* a NUL byte in memory (po_source_read refuses the file before parsing) */
  po_diag *d = po_diag_new(fopen("/dev/null", "w"));
  po_source *src = po_source_from_memory("t.po", "x = 1\0 + 2", 10);
  po_parse(src, d);
  CHECK(po_diag_errors(d) == 1);
  po_diag_free(d);
  /* keywords cannot be names */
  r = fe_compile("train = 3\n", 0);
  CHECK(r.errors == 1 && fe_has(&r, "expected '{', got '='"));
  fe_done(&r);
}

static void test_recovery(void) {
  fe_run r = fe_compile(
      "a = 1\n"
      "b = f(1 2)\n"          /* error 1 */
      "c = 3\n"
      "d = (1 + \n"           /* error 2: runs into the next statement */
      "e = 5\n"
      "param p 0.1\n"         /* error 3 */
      "train { lr = 1; batch 8; epochs = 1 }\n" /* error 4, inside the block */
      "g = 7\n",
      0);
  CHECK_MSG(r.errors == 4, "%d errors:\n%s", r.errors, r.out);
  CHECK(fe_has(&r, "t.po:2:9: error: expected ')' to close '(' at line 2, got number '2'"));
  CHECK(fe_has(&r, "t.po:5:1: error: expected an expression, got 'e ='"));
  CHECK(fe_has(&r, "t.po:6:7: error: expected 'name = ...', got name 'p'"));
  /* the good statements survive, the train block keeps its good items */
  int n = r.prog->nstmts;
  CHECK(n == 5);
  if (n == 5) {
    CHECK(!strcmp(r.prog->stmts[0]->name, "a") && !strcmp(r.prog->stmts[1]->name, "c") &&
          !strcmp(r.prog->stmts[2]->name, "e") && !strcmp(r.prog->stmts[4]->name, "g"));
    CHECK(r.prog->stmts[3]->kind == PO_S_TRAIN && r.prog->stmts[3]->nitems == 2);
  }
  /* names of the dropped statements are known */
  CHECK(r.prog->ndropped == 2 && !strcmp(r.prog->dropped[0], "b") && !strcmp(r.prog->dropped[1], "d"));
  fe_done(&r);

  r = fe_compile("x = (1 + 2\n", 0);
  CHECK(r.errors == 1 && fe_has(&r, "t.po:1:11: error: expected ')' to close '(' at line 1, got end of file"));
  fe_done(&r);
  r = fe_compile("x = [1, 2\n", 0);
  CHECK(r.errors == 1 && fe_has(&r, "expected ']' to close '[' at line 1"));
  fe_done(&r);
  r = fe_compile("x = y[1]\n", 0);
  CHECK(r.errors == 1 && fe_has(&r, "expected ':' (a slice is x[lo:hi]"));
  fe_done(&r);
  r = fe_compile("", 0);
  CHECK(r.errors == 0 && r.prog->nstmts == 0);
  fe_done(&r);
}

static void test_limits(void) {
  /* 300 nested parentheses: stopped at 256 with one error */
  char buf[1000];
  strcpy(buf, "x = ");
  size_t n = strlen(buf);
  for (int i = 0; i < 300; i++) buf[n++] = '(';
  buf[n++] = '1';
  for (int i = 0; i < 300; i++) buf[n++] = ')';
  buf[n] = 0;
  fe_run r = fe_compile(buf, 1);
  CHECK(r.errors == 1 && fe_has(&r, "brackets are nested too deeply (the limit is 256)"));
  fe_done(&r);
  /* 200 levels are fine */
  n = 4;
  for (int i = 0; i < 200; i++) buf[n++] = '(';
  buf[n++] = '1';
  for (int i = 0; i < 200; i++) buf[n++] = ')';
  buf[n] = 0;
  r = fe_compile(buf, 0);
  CHECK(r.errors == 0);
  fe_done(&r);
  /* a sum of 2000 terms is a tree 2000 deep: cut at the depth limit */
  char *big = malloc(20000);
  if (!big) return;
  strcpy(big, "x = a");
  for (int i = 0; i < 2000; i++) strcat(big, " + a");
  r = fe_compile(big, 0);
  CHECK(r.errors == 1 && fe_has(&r, "expression is nested too deeply (more than 1000 levels)"));
  fe_done(&r);
  /* 20000 unary minus signs: bison's stack limit, reported, not a crash */
  strcpy(big, "x = ");
  memset(big + 4, '-', 15000);
  strcpy(big + 4 + 15000, "1");
  r = fe_compile(big, 0);
  CHECK(r.errors == 1 && fe_has(&r, "nested too deeply"));
  fe_done(&r);
  free(big);
}

int main(void) {
  test_precedence();
  test_postfix();
  test_numbers();
  test_statements();
  test_locations();
  test_lexical_errors();
  test_recovery();
  test_limits();
  po_release_all();
  return check_summary("dsl_parse");
}
