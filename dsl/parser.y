/* parser.y — the grammar of .po files (bison, pure, with locations).
 *
 *   program  = { stmt | ';' }
 *   stmt     = NAME '=' full                              binding (LET)
 *            | 'param' NAME '=' full                      runtime knob
 *            | 'def' NAME '(' [ NAME { ',' NAME } ] ')' '=' full
 *            | 'report' NAME { '/' NAME } '=' full
 *            | 'field' NAME [ '[' NAME ']' ]
 *            | 'sequence' NAME                            one more token sequence a data line
 *            | 'train' '{' { NAME '=' full | ';' } '}'
 *   full     = expr [ '|' expr ]                          target | context
 *   expr     = expr ( '<' | '<=' | '>' | '>=' | '==' | '!=' ) expr   non-associative
 *            | expr '++' expr                             left
 *            | expr ( '+' | '-' ) expr                    left
 *            | expr ( '*' | '/' ) expr                    left
 *            | '-' expr
 *            | postfix
 *   postfix  = primary
 *            | NAME '(' [ arg { ',' arg } ] ')'           call
 *            | postfix '[' [ expr ] ':' [ expr ] ']'      slice
 *   arg      = full | NAME '=' full                       positional | keyword
 *   primary  = NUMBER | STRING | NAME | '[' [ NUMBER { ',' NUMBER } ] ']'
 *            | '[' NAME { ',' NAME } ']' | '(' full ')'      token literal | name list
 *
 * The scanner folds `NAME =` (but not `NAME ==`) into one token, BIND. That keeps the
 * grammar LALR(1) with newlines insignificant, and it gives error recovery a reliable
 * place to resume: after a syntax error, tokens are skipped until one that can start
 * a statement (BIND or a keyword), so one run reports the errors of many statements.
 *
 * `y | ctx` is accepted wherever a full expression is (statement values, arguments,
 * parentheses); the checker then says it is only allowed as the second argument of
 * logp/entropy/logsumsq, which is a better message than a syntax error.
 *
 * Syntax errors are worded here (yyreport_syntax_error) from the tokens the parser
 * expected; parse.lac makes that list exact rather than what default reductions left.
 * An unclosed bracket is named with its line ("expected ')' to close '(' at line 4").
 *
 * Nesting is bounded three ways, so neither this parser nor any later recursive walk
 * can run out of stack: the scanner stops at PO_MAX_BRACKETS open brackets, ast.c
 * cuts trees deeper than PO_MAX_EXPR_DEPTH, and bison's own stack limit (YYMAXDEPTH,
 * reached by e.g. ten thousand unary minus signs) is reported as nesting too deep.
 *
 * Actions only build the tree. Nodes live in the front end's arena, so neither error
 * recovery nor %destructor has anything to free.
 */

%define api.pure full
%define api.prefix {po_yy}
%define api.location.type {po_loc}
%define parse.error custom
%define parse.lac full
%locations
%expect 0
%lex-param {void *scanner}
%parse-param {void *scanner} {po_lex *lx}

%code requires {
#include "front.h"
}

%code provides {
int po_yylex(PO_YYSTYPE *lval, po_loc *lloc, void *scanner);
}

%code {
#include <string.h>

/* A construct spans from its first symbol's start to its last symbol's end; an empty
 * one sits just after what precedes it. */
#define YYLLOC_DEFAULT(Cur, Rhs, N)                                   \
  do {                                                                \
    if (N) {                                                          \
      (Cur) = YYRHSLOC(Rhs, 1);                                       \
      (Cur).end_line = YYRHSLOC(Rhs, N).end_line;                     \
      (Cur).end_col = YYRHSLOC(Rhs, N).end_col;                       \
    } else {                                                          \
      (Cur) = YYRHSLOC(Rhs, 0);                                       \
      (Cur).line = (Cur).end_line;                                    \
      (Cur).col = (Cur).end_col + 1;                                  \
      (Cur).end_col = (Cur).col;                                      \
    }                                                                 \
  } while (0)

static void po_yyerror(po_loc *loc, void *scanner, po_lex *lx, const char *msg);

static bool starts_stmt(int tok) {
  return tok == BIND || tok == PARAM || tok == DEF || tok == REPORT || tok == FIELD ||
         tok == SEQUENCE || tok == TRAIN;
}

static po_stmt *stmt_new(po_stmt_kind kind, po_loc loc) {
  po_stmt *s = po_alloc(sizeof *s);
  s->kind = kind;
  s->loc = loc;
  return s;
}

static po_expr *num_leaf(double v, po_loc loc) {
  po_expr *e = po_ast_leaf(PO_E_NUM, loc);
  e->num = v;
  return e;
}

static po_expr *str_leaf(po_expr_kind kind, const char *s, po_loc loc) {
  po_expr *e = po_ast_leaf(kind, loc);
  e->str = s;
  return e;
}

static po_vec *vec1(void *item) {
  po_vec *v = po_vec_new();
  po_vec_push(v, item);
  return v;
}

static po_loc *loc_copy(po_loc loc) {
  po_loc *p = po_alloc(sizeof *p);
  *p = loc;
  return p;
}

/* "a/b" from "a" and "b" */
static const char *join_path(const char *a, const char *b) {
  size_t la = strlen(a), lb = strlen(b);
  char *s = po_alloc(la + lb + 2);
  memcpy(s, a, la);
  s[la] = '/';
  memcpy(s + la + 1, b, lb + 1);
  return s;
}
}

%initial-action {
  @$ = (po_loc){lx->src, 1, 1, 1, 0};
}

%union {
  double num;
  const char *str;
  po_expr *expr;
  po_vec *vec;
  po_arg *arg;
  po_stmt *stmt;
  po_item *item;
}

%token <str> NAME "name"
%token <str> BIND "'name ='"
%token <num> NUMBER "number"
%token <str> STRING "string"
%token PARAM "'param'" DEF "'def'" REPORT "'report'" FIELD "'field'" TRAIN "'train'"
%token SEQUENCE "'sequence'"
%token LE "'<='" GE "'>='" EQ "'=='" NE "'!='" CONCAT "'++'"

%nonassoc '<' LE '>' GE EQ NE
%left CONCAT
%left '+' '-'
%left '*' '/'
%precedence NEG

%type <stmt> stmt
%type <expr> full expr postfix primary bound
%type <vec> args arglist names namelist items toks toklist
%type <arg> arg
%type <item> item
%type <str> rpath

%%

program
  : stmts
  ;

/* stmts = { stmt | ';' }; on a syntax error, skip to the next statement start */
stmts
  : %empty
  | stmts stmt      { if ($2) po_vec_push(lx->stmts, $2); lx->nopen = 0; }
  | stmts ';'
  | stmts error
      {
        lx->nopen = 0;
        /* Resynchronised on a statement start: its errors are new, report them.
         * (Bison would stay silent for three more tokens; the lookahead is read here
         * to know, which bison allows an action to do.) */
        if (yychar == PO_YYEMPTY) yychar = po_yylex(&yylval, &yylloc, scanner);
        if (starts_stmt(yychar)) yyerrok;
      }
  ;

stmt
  : BIND full
      { $$ = stmt_new(PO_S_LET, @$); $$->name = $1; $$->name_loc = @1; $$->value = $2; }
  | PARAM BIND full
      { $$ = stmt_new(PO_S_PARAM, @$); $$->name = $2; $$->name_loc = @2; $$->value = $3; }
  /* def NAME '(' params ')' '=' full */
  | DEF NAME '(' names ')' '=' full
      {
        $$ = stmt_new(PO_S_DEF, @$); $$->name = $2; $$->name_loc = @2; $$->value = $7;
        $$->nparams = $4->n;
        $$->params = po_alloc(sizeof(char *) * (size_t)($4->n + 1));
        $$->param_locs = po_alloc(sizeof(po_loc) * (size_t)($4->n + 1));
        for (int i = 0; i < $4->n; i++) {
          po_expr *p = $4->items[i];
          $$->params[i] = p->str;
          $$->param_locs[i] = p->loc;
        }
      }
  /* report NAME { '/' NAME } '=' full: the last component arrives as BIND */
  | REPORT BIND full
      { $$ = stmt_new(PO_S_REPORT, @$); $$->name = $2; $$->name_loc = @2; $$->value = $3; }
  | REPORT rpath '/' BIND full
      {
        $$ = stmt_new(PO_S_REPORT, @$); $$->name = join_path($2, $4);
        $$->name_loc = @2; $$->name_loc.end_line = @4.end_line; $$->name_loc.end_col = @4.end_col;
        $$->value = $5;
      }
  | FIELD NAME
      { $$ = stmt_new(PO_S_FIELD, @$); $$->name = $2; $$->name_loc = @2; }
  | FIELD NAME '[' NAME ']'
      {
        $$ = stmt_new(PO_S_FIELD, @$); $$->name = $2; $$->name_loc = @2;
        $$->field_seq = $4; $$->field_seq_loc = @4;
      }
  | SEQUENCE NAME
      { $$ = stmt_new(PO_S_SEQ, @$); $$->name = $2; $$->name_loc = @2; }
  /* a statement whose name was read before a syntax error: remember the name */
  | BIND error                { $$ = NULL; po_vec_push(lx->dropped, (void *)$1); }
  | PARAM BIND error          { $$ = NULL; po_vec_push(lx->dropped, (void *)$2); }
  | DEF NAME error            { $$ = NULL; po_vec_push(lx->dropped, (void *)$2); }
  | TRAIN '{' items '}'
      {
        $$ = stmt_new(PO_S_TRAIN, @$);
        $$->nitems = $3->n;
        $$->items = po_ast_array($3, sizeof(po_item));
      }
  ;

rpath
  : NAME               { $$ = $1; }
  | rpath '/' NAME     { $$ = join_path($1, $3); }
  ;

names
  : %empty             { $$ = po_vec_new(); }
  | namelist
  ;

namelist
  : NAME               { $$ = vec1(str_leaf(PO_E_NAME, $1, @1)); }
  | namelist ',' NAME  { $$ = $1; po_vec_push($$, str_leaf(PO_E_NAME, $3, @3)); }
  ;

/* items = { NAME '=' full | ';' }; a bad item is skipped up to the next key or '}' */
items
  : %empty             { $$ = po_vec_new(); }
  | items item         { $$ = $1; po_vec_push($$, $2); }
  | items ';'          { $$ = $1; }
  | items error
      {
        $$ = $1;
        if (yychar == PO_YYEMPTY) yychar = po_yylex(&yylval, &yylloc, scanner);
        if (yychar == BIND || yychar == ';') yyerrok;
      }
  ;

item
  : BIND full
      { $$ = po_alloc(sizeof *$$); $$->key = $1; $$->loc = @1; $$->value = $2; }
  ;

/* full = expr [ '|' expr ] */
full
  : expr
  | expr '|' expr      { $$ = po_ast_given(lx, $1, $3, @$); }
  ;

expr
  : expr '<' expr      { $$ = po_ast_binary(lx, PO_OP_LT, $1, $3, @$); }
  | expr LE expr       { $$ = po_ast_binary(lx, PO_OP_LE, $1, $3, @$); }
  | expr '>' expr      { $$ = po_ast_binary(lx, PO_OP_GT, $1, $3, @$); }
  | expr GE expr       { $$ = po_ast_binary(lx, PO_OP_GE, $1, $3, @$); }
  | expr EQ expr       { $$ = po_ast_binary(lx, PO_OP_EQ, $1, $3, @$); }
  | expr NE expr       { $$ = po_ast_binary(lx, PO_OP_NE, $1, $3, @$); }
  | expr CONCAT expr   { $$ = po_ast_binary(lx, PO_OP_CONCAT, $1, $3, @$); }
  | expr '+' expr      { $$ = po_ast_binary(lx, PO_OP_ADD, $1, $3, @$); }
  | expr '-' expr      { $$ = po_ast_binary(lx, PO_OP_SUB, $1, $3, @$); }
  | expr '*' expr      { $$ = po_ast_binary(lx, PO_OP_MUL, $1, $3, @$); }
  | expr '/' expr      { $$ = po_ast_binary(lx, PO_OP_DIV, $1, $3, @$); }
  | '-' expr %prec NEG { $$ = po_ast_unary(lx, PO_OP_NEG, $2, @$); }
  | postfix
  ;

postfix
  : primary
  /* NAME '(' [ arg { ',' arg } ] ')' */
  | NAME '(' args ')'  { $$ = po_ast_call(lx, $1, $3, @$); }
  /* postfix '[' [ expr ] ':' [ expr ] ']' */
  | postfix '[' bound ':' bound ']'
      { $$ = po_ast_slice(lx, $1, $3, $5, @$); }
  ;

bound
  : %empty             { $$ = NULL; }
  | expr
  ;

args
  : %empty             { $$ = po_vec_new(); }
  | arglist
  ;

arglist
  : arg                { $$ = vec1($1); }
  | arglist ',' arg    { $$ = $1; po_vec_push($$, $3); }
  ;

arg
  : full               { $$ = po_ast_arg(NULL, @1, $1); }
  | BIND full          { $$ = po_ast_arg($1, @1, $2); }
  ;

primary
  : NUMBER             { $$ = num_leaf($1, @1); }
  | STRING             { $$ = str_leaf(PO_E_STR, $1, @1); }
  | NAME               { $$ = str_leaf(PO_E_NAME, $1, @1); }
  | '[' toks ']'       { $$ = po_ast_tokens(lx, $2, @$); }
  | '[' namelist ']'   { $$ = po_ast_list(lx, $2, @$); }
  | '(' full ')'       { $$ = $2; }
  ;

toks
  : %empty             { $$ = po_vec_new(); }
  | toklist
  ;

toklist
  : NUMBER             { $$ = vec1(num_leaf($1, @1)); }
  | toklist ',' NUMBER { $$ = $1; po_vec_push($$, num_leaf($3, @3)); }
  ;

%%

/* ---- syntax error messages ------------------------------------------------------ */

/* Single-character tokens are numbered by bison in order of appearance; their names
 * are the quoted character. */
static bool is_char(yysymbol_kind_t k, char c) {
  const char *s = yysymbol_name(k);
  return s[0] == '\'' && s[1] == c && s[2] == '\'' && !s[3];
}

static bool is_expr_start(yysymbol_kind_t k) {
  return k == YYSYMBOL_NAME || k == YYSYMBOL_NUMBER || k == YYSYMBOL_STRING ||
         is_char(k, '(') || is_char(k, '[') || is_char(k, '-');
}

static bool is_stmt_start(yysymbol_kind_t k) {
  return k == YYSYMBOL_BIND || k == YYSYMBOL_PARAM || k == YYSYMBOL_DEF ||
         k == YYSYMBOL_REPORT || k == YYSYMBOL_FIELD || k == YYSYMBOL_TRAIN ||
         k == YYSYMBOL_SEQUENCE;
}

static bool is_operator(yysymbol_kind_t k) {
  switch (k) {
    case YYSYMBOL_LE: case YYSYMBOL_GE: case YYSYMBOL_EQ: case YYSYMBOL_NE:
    case YYSYMBOL_CONCAT:
      return true;
    default:
      return is_char(k, '+') || is_char(k, '-') || is_char(k, '*') || is_char(k, '/') ||
             is_char(k, '<') || is_char(k, '>') || is_char(k, '|') || is_char(k, '[');
  }
}

/* How a token kind is named in a message: 'x' for punctuation and keywords. */
static const char *kind_name(yysymbol_kind_t k) {
  if (k == YYSYMBOL_YYEOF) return "end of file";
  if (k == YYSYMBOL_BIND) return "'name = ...'";
  if (k == YYSYMBOL_NAME) return "a name";
  if (k == YYSYMBOL_NUMBER) return "a number";
  if (k == YYSYMBOL_STRING) return "a string";
  /* "'param'" for a %token alias: the text between the double quotes */
  const char *s = yysymbol_name(k);
  static const char *const aliases[] = {"'param'", "'def'", "'report'", "'field'", "'train'",
                                        "'sequence'",
                                        "'<='", "'>='", "'=='", "'!='", "'++'"};
  for (size_t i = 0; i < sizeof aliases / sizeof aliases[0]; i++) {
    size_t n = strlen(aliases[i]);
    if (s[0] == '"' && !strncmp(s + 1, aliases[i], n) && s[n + 1] == '"') return aliases[i];
  }
  return s;
}

/* The token the parser stumbled on, with its text where that helps. */
static void describe_lookahead(po_lex *lx, yysymbol_kind_t k, char *buf, size_t n) {
  switch (k) {
    case YYSYMBOL_YYEOF: snprintf(buf, n, "end of file"); break;
    case YYSYMBOL_NAME: snprintf(buf, n, "name '%s'", lx->tok_text); break;
    case YYSYMBOL_BIND: snprintf(buf, n, "'%s ='", lx->tok_text); break;
    case YYSYMBOL_NUMBER: snprintf(buf, n, "number '%s'", lx->tok_text); break;
    case YYSYMBOL_STRING: snprintf(buf, n, "string \"%s\"", lx->tok_text); break;
    default: snprintf(buf, n, "%s", kind_name(k)); break;
  }
}

static int yyreport_syntax_error(const yypcontext_t *ctx, void *scanner, po_lex *lx) {
  (void)scanner;
  if (lx->stop) return 0; /* the scanner already said why it stopped */
  po_loc loc = *yypcontext_location(ctx);
  /* One syntax error per line: a second one on the same line is nearly always the
   * first one seen again from the resynchronisation point. */
  if (loc.line == lx->last_syntax_line) return 0;
  lx->last_syntax_line = loc.line;
  yysymbol_kind_t la = yypcontext_token(ctx);
  char got[96];
  describe_lookahead(lx, la, got, sizeof got);

  yysymbol_kind_t exp[YYNTOKENS];
  int n = yypcontext_expected_tokens(ctx, exp, YYNTOKENS);

  /* The innermost bracket still open. When the lookahead itself opened one, that is
   * not the bracket the parser wants closed. */
  bool want_bind = false, want_colon = false;
  for (int i = 0; i < n; i++) {
    if (exp[i] == YYSYMBOL_BIND) want_bind = true;
    if (is_char(exp[i], ':')) want_colon = true;
  }
  if (is_char(la, '|')) {
    po_error(lx->diag, loc, "unexpected '|': a context is written once, y | ctx, "
                            "with ++ joining its parts");
    return 0;
  }
  int top = want_bind ? -1 : lx->nopen - 1;
  if (top >= 0 && (is_char(la, '(') || is_char(la, '[') || is_char(la, '{'))) top--;
  if (top >= 0) {
    char open = lx->open[top];
    char close = open == '(' ? ')' : open == '[' ? ']' : '}';
    for (int i = 0; i < n; i++)
      if (is_char(exp[i], close)) {
        po_error(lx->diag, loc, "expected '%c' to close '%c' at line %d, got %s", close, open,
                 lx->open_loc[top].line, got);
        return 0;
      }
  }

  bool ops = false, expr = false, stmt = false;
  const char *list[8];
  int nlist = 0;
  for (int i = 0; i < n; i++) {
    if (is_char(exp[i], '*')) ops = true; /* a complete expression could go on */
    if (exp[i] == YYSYMBOL_NUMBER) expr = true;
    if (exp[i] == YYSYMBOL_PARAM) stmt = true;
  }
  if (want_colon) {
    po_error(lx->diag, loc, "expected ':' (a slice is x[lo:hi], either bound optional), got %s",
             got);
    return 0;
  }
  if (ops) {
    po_error(lx->diag, loc, "unexpected %s after an expression", got);
    return 0;
  }
  if (stmt) list[nlist++] = "a statement";
  if (expr) list[nlist++] = "an expression";
  for (int i = 0; i < n && nlist < 8; i++) {
    if ((stmt && is_stmt_start(exp[i])) || (expr && is_expr_start(exp[i]))) continue;
    if (expr && is_char(exp[i], '-')) continue;
    if (is_operator(exp[i])) continue;
    if (stmt && (exp[i] == YYSYMBOL_YYEOF || is_char(exp[i], ';'))) continue;
    list[nlist++] = kind_name(exp[i]);
  }
  if (n == 0 || nlist == 0 || nlist > 4) {
    po_error(lx->diag, loc, "unexpected %s", got);
    return 0;
  }
  char want[160] = "";
  for (int i = 0; i < nlist; i++) {
    size_t used = strlen(want);
    snprintf(want + used, sizeof want - used, "%s%s",
             i == 0 ? "" : i == nlist - 1 ? " or " : ", ", list[i]);
  }
  po_error(lx->diag, loc, "expected %s, got %s", want, got);
  return 0;
}

/* Bison calls this only when its stack is full: nesting too deep to parse. */
static void po_yyerror(po_loc *loc, void *scanner, po_lex *lx, const char *msg) {
  (void)scanner;
  if (lx->stop) return;
  if (!strcmp(msg, "memory exhausted"))
    po_error(lx->diag, *loc, "expression is nested too deeply (the parser's stack limit is %d "
             "levels)", (int)YYMAXDEPTH);
  else
    po_error(lx->diag, *loc, "%s", msg);
  lx->stop = true;
}
