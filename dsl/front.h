/* front.h — what the front end's stages share and nothing outside dsl/ needs.
 * One section per file, in pipeline order: memory (arena.c), sources (source.c),
 * diagnostics helpers (diag.c), the scanner/parser state (lexer.l, parser.y),
 * tree construction (ast.c), name helpers (builtins.c). */
#ifndef POC_FRONT_H
#define POC_FRONT_H

#include <stdbool.h>
#include <stddef.h>

#include "dsl.h"

/* Limits that keep every stage's work and stack bounded on hostile input. */
#define PO_MAX_SOURCE_BYTES (16u << 20) /* a .po file larger than this is refused */
#define PO_MAX_NAME_LEN 256             /* bytes in a name                        */
#define PO_MAX_STRING_LEN 4096          /* bytes in a string literal              */
#define PO_MAX_BRACKETS 256             /* open ( [ { at one point                */
#define PO_MAX_EXPR_DEPTH 1000          /* levels of the expression tree          */

/* ---- arena.c -------------------------------------------------------------------- */
/* Sources, trees and their strings live until po_release_all(); nothing is freed
 * piecemeal. A short-lived compiler loses nothing by this, and error recovery in the
 * parser needs no destructors. Allocation failure aborts with a message. */
void *po_alloc(size_t n);                       /* zeroed */
char *po_strndup(const char *s, size_t n);
char *po_strdup(const char *s);

/* A growable array of pointers, itself in the arena (old blocks are abandoned). */
typedef struct po_vec {
  void **items;
  int n, cap;
} po_vec;
po_vec *po_vec_new(void);
void po_vec_push(po_vec *v, void *item);

/* ---- source.c ------------------------------------------------------------------- */
/* The bytes of line `line` (1-based) of src, without its newline; *len receives the
 * length. Returns NULL when the line does not exist. */
const char *po_source_line(const po_source *src, int line, size_t *len);

/* ---- diag.c --------------------------------------------------------------------- */
/* True once more errors were reported than are printed: stages stop early then. */
bool po_diag_saturated(const po_diag *d);

/* ---- lexer.l / parser.y ------------------------------------------------------------ */
typedef struct po_lex {
  const po_source *src;
  po_diag *diag;
  /* position tracking by byte offset: the start of the current token, and a cursor
   * (offset, line, col) that only moves forward */
  size_t tok_off, next_off;
  size_t cur_off;
  int cur_line, cur_col;
  po_loc last_tok;       /* the last token returned, for end-of-file positions */
  char tok_text[40];     /* its text, for syntax error messages (cut short) */
  int tok_kind;          /* its token number */
  /* open brackets, innermost last */
  char open[PO_MAX_BRACKETS];
  po_loc open_loc[PO_MAX_BRACKETS];
  int nopen;
  bool stop;             /* a limit was hit: the scanner returns end of file from now */
  bool depth_reported;   /* the expression depth error was already given */
  int last_syntax_line;  /* line of the last syntax error reported */
  po_vec *stmts;         /* statements as they are parsed */
  po_vec *dropped;       /* names of statements lost to syntax errors */
} po_lex;

/* Bison's parser, generated with prefix po_yy (parser.y). */
int po_yyparse(void *scanner, po_lex *lx);

/* ---- ast.c ---------------------------------------------------------------------- */
/* Node constructors for the grammar actions. Each records the tree depth beside the
 * node; past PO_MAX_EXPR_DEPTH one error is reported and a number stands in for the
 * subtree, so later stages never recurse deeper than the limit. */
po_expr *po_ast_leaf(po_expr_kind kind, po_loc loc);
po_expr *po_ast_unary(po_lex *lx, po_op op, po_expr *e, po_loc loc);
po_expr *po_ast_binary(po_lex *lx, po_op op, po_expr *l, po_expr *r, po_loc loc);
po_expr *po_ast_given(po_lex *lx, po_expr *target, po_expr *ctx, po_loc loc);
po_expr *po_ast_slice(po_lex *lx, po_expr *base, po_expr *lo, po_expr *hi, po_loc loc);
po_expr *po_ast_call(po_lex *lx, const char *callee, po_vec *args, po_loc loc);
po_expr *po_ast_tokens(po_lex *lx, po_vec *nums, po_loc loc); /* nums: po_expr NUM */
po_arg *po_ast_arg(const char *name, po_loc name_loc, po_expr *value);
/* [a, b, c]: a list of names (lora's targets) */
po_expr *po_ast_list(po_lex *lx, po_vec *names, po_loc loc);
int po_ast_depth(const po_expr *e);
/* Turns a vector of pointers into an arena array of `size`-byte elements copied from
 * each pointer (po_arg, po_item, po_loc ...). */
void *po_ast_array(po_vec *v, size_t size);

/* ---- builtins.c ----------------------------------------------------------------- */
/* Edit distance capped at `cap` (returns cap + 1 when larger). */
int po_edit_distance(const char *a, const char *b, int cap);
/* The candidate nearest to `name` if it is close enough to be a likely typo. */
const char *po_did_you_mean(const char *name, const char *const *cands, int ncands);

#endif
