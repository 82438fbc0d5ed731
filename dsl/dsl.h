/* dsl.h — the public face of poc's front end: source files, diagnostics, the AST,
 * the table of built-in functions, and the two entry points (parse, check).
 *
 * Every AST node keeps its source position so any later stage (lowering, level
 * inference, code generation) can point at the user's text. The tree is owned by an
 * arena that lives as long as the compilation: nothing in it is freed piecemeal.
 */
#ifndef POC_DSL_H
#define POC_DSL_H

#include <stddef.h>
#include <stdint.h>
#include <stdio.h>

/* ---- source positions ------------------------------------------------------------ */

typedef struct po_source {
  const char *path;   /* as given on the command line */
  const char *text;   /* whole file, NUL-terminated copy (embedded NULs are diagnosed) */
  size_t len;         /* bytes, not counting the terminating NUL */
} po_source;

typedef struct po_loc {
  const po_source *src;
  int line, col;          /* 1-based; col counts bytes */
  int end_line, end_col;  /* inclusive end of the construct, for carets spanning it */
} po_loc;

/* ---- diagnostics ----------------------------------------------------------------- */
/* Printed as
 *   file:line:col: error: message
 *     <the source line>
 *     ^~~~
 * Several per run; the driver exits 2 when any error was reported. */

typedef struct po_diag po_diag;

po_diag *po_diag_new(FILE *out);             /* out: where messages go (stderr normally) */
void po_diag_free(po_diag *d);
void po_error(po_diag *d, po_loc loc, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));
void po_note(po_diag *d, po_loc loc, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));
/* An error with no position inside the file (unreadable file, I/O failure). */
void po_error_file(po_diag *d, const char *path, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));
int po_diag_errors(const po_diag *d);
/* After this many errors further ones are counted but not printed. */
#define PO_MAX_PRINTED_ERRORS 20

/* ---- the AST --------------------------------------------------------------------- */

typedef enum po_expr_kind {
  PO_E_NUM,     /* 0.1, 5e-7, 8                       num                        */
  PO_E_STR,     /* "examples/tiny"                    str                        */
  PO_E_NAME,    /* chosen, beta                        str = the name             */
  PO_E_TOKENS,  /* [2] or [2, 13]: a token literal     toks, ntoks                */
  PO_E_UNARY,   /* -x                                  op, lhs                    */
  PO_E_BINARY,  /* x + y, x ++ y, x < y                op, lhs, rhs               */
  PO_E_CALL,    /* f(a, b, key=v)                      str = callee, args, nargs  */
  PO_E_SLICE,   /* x[lo:hi], either bound may be NULL  lhs = base, lo, hi         */
  PO_E_GIVEN,   /* y | ctx, only as the sequence argument of logp/entropy/logsumsq:
                                                       lhs = target, rhs = context */
  PO_E_LIST     /* [q, k, v]: a list of names, only as lora's targets
                                                       args (positional NAMEs), nargs */
} po_expr_kind;

typedef enum po_op {
  PO_OP_ADD, PO_OP_SUB, PO_OP_MUL, PO_OP_DIV,
  PO_OP_LT, PO_OP_LE, PO_OP_GT, PO_OP_GE, PO_OP_EQ, PO_OP_NE,
  PO_OP_CONCAT, /* ++ : sequences and token literals into a context */
  PO_OP_NEG
} po_op;

typedef struct po_expr po_expr;

typedef struct po_arg {
  const char *name;   /* NULL for a positional argument */
  po_loc name_loc;
  po_expr *value;
} po_arg;

struct po_expr {
  po_expr_kind kind;
  po_loc loc;
  double num;
  const char *str;
  po_op op;
  po_expr *lhs, *rhs;
  po_expr *lo, *hi;        /* PO_E_SLICE bounds (integer-valued expressions) */
  po_arg *args;
  int nargs;
  int64_t *toks;
  int ntoks;
};

/* `sequence NAME` declarations a file may make (runtime/program.h: POC_MAX_EXTRA_SEQS). */
#define PO_MAX_EXTRA_SEQS 4

typedef enum po_stmt_kind {
  PO_S_LET,     /* name = expr  (model(...), frozen(...), pairs(...), points(...) too;
                   the binding named `loss` is the objective) */
  PO_S_PARAM,   /* param name = expr          runtime knob, --set name=value         */
  PO_S_DEF,     /* def name(p1, p2) = expr    inlined at each use; no recursion      */
  PO_S_REPORT,  /* report a/b = expr          a metric; name may contain '/'         */
  PO_S_FIELD,   /* field name                 per-example number of each data line
                   field name[seq]            one number per token of sequence seq   */
  PO_S_SEQ,     /* sequence name              one more token sequence of each data line */
  PO_S_TRAIN    /* train { key = value; ... }                                        */
} po_stmt_kind;

typedef struct po_item {  /* one `key = value` of a train block */
  const char *key;
  po_loc loc;             /* the key */
  po_expr *value;         /* number, name (cosine, bf16) or string */
} po_item;

typedef struct po_stmt {
  po_stmt_kind kind;
  po_loc loc;             /* the whole statement */
  const char *name;       /* LET, PARAM, DEF, REPORT, FIELD, SEQ */
  po_loc name_loc;
  const char **params;    /* DEF */
  po_loc *param_locs;
  int nparams;
  po_expr *value;         /* LET, PARAM, DEF (body), REPORT */
  const char *field_seq;  /* FIELD: the sequence a per-token field follows, else NULL */
  po_loc field_seq_loc;
  po_item *items;         /* TRAIN */
  int nitems;
} po_stmt;

typedef struct po_program {
  const po_source *src;
  po_stmt **stmts;
  int nstmts;
  /* Names of statements dropped after a syntax error (`x = f(a b` defines no x): the
   * checker does not call them undefined, which would only repeat the syntax error. */
  const char **dropped;
  int ndropped;
} po_program;

/* ---- built-in functions ---------------------------------------------------------- */
/* The language's vocabulary. X(id, name, min_args, max_args, kind)
 * kind says how level inference treats it:
 *   DECL  declarations (model, frozen, lora, pairs, points)
 *   MODEL model calls (logp, entropy, logsumsq, sample) — the boundary with the transformer
 *   TOKR  token reductions: a per-token vector to one number per example
 *   BATCH batch reductions: per-example values to one number per optimizer step
 *         (batch_sort: per-example values reordered over the step)
 *   ELEM  elementwise
 *   SEQ   functions of a sequence (pick, pos)
 *   GRAD  gradient control (sg)                                                     */
#define PO_BUILTINS(X)                         \
  X(MODEL_DECL, "model", 1, 1, DECL)           \
  X(FROZEN, "frozen", 1, 1, DECL)              \
  X(LORA, "lora", 1, 1, DECL)                  \
  X(PAIRS, "pairs", 1, 1, DECL)                \
  X(POINTS, "points", 1, 1, DECL)              \
  X(PROMPTS, "prompts", 1, 1, DECL)            \
  X(LOGP, "logp", 2, 2, MODEL)                 \
  X(ENTROPY, "entropy", 2, 2, MODEL)           \
  X(LOGSUMSQ, "logsumsq", 2, 2, MODEL)         \
  X(REWARD, "reward_score", 2, 2, MODEL)       \
  X(SAMPLE, "sample", 2, 2, MODEL)             \
  X(PICK, "pick", 2, 2, SEQ)                   \
  X(POS, "pos", 1, 1, SEQ)                     \
  X(SG, "sg", 1, 1, GRAD)                      \
  X(SUM, "sum", 1, 1, TOKR)                    \
  X(MEAN, "mean", 1, 1, TOKR)                  \
  X(TMAX, "max", 1, 2, TOKR) /* 1 arg: over tokens; 2 args: elementwise */ \
  X(LEN, "len", 1, 1, TOKR)                    \
  X(COS, "cos", 2, 2, TOKR)                    \
  X(DOT, "dot", 2, 2, TOKR)                    \
  X(NORM, "norm", 1, 1, TOKR)                  \
  X(BATCH_MEAN, "batch_mean", 1, 1, BATCH)     \
  X(BATCH_STD, "batch_std", 1, 1, BATCH)       \
  X(BATCH_SUM, "batch_sum", 1, 1, BATCH)       \
  X(BATCH_SORT, "batch_sort", 1, 1, BATCH) /* per example: the batch's i-th smallest */ \
  X(EXP, "exp", 1, 1, ELEM)                    \
  X(LOG, "log", 1, 1, ELEM)                    \
  X(LOG1P, "log1p", 1, 1, ELEM)                \
  X(LOG1MEXP, "log1mexp", 1, 1, ELEM)          \
  X(SIGMOID, "sigmoid", 1, 1, ELEM)            \
  X(LOGSIGMOID, "logsigmoid", 1, 1, ELEM)      \
  X(SOFTPLUS, "softplus", 1, 1, ELEM)          \
  X(TANH, "tanh", 1, 1, ELEM)                  \
  X(ABS, "abs", 1, 1, ELEM)                    \
  X(SQRT, "sqrt", 1, 1, ELEM)                  \
  X(POW, "pow", 2, 2, ELEM)                    \
  X(MIN, "min", 2, 2, ELEM)                    \
  X(CLAMP, "clamp", 3, 3, ELEM)                \
  X(FLOOR, "floor", 1, 1, ELEM)                \
  X(WHERE, "where", 3, 3, ELEM)

typedef enum po_builtin {
  PO_B_NONE = 0,
#define PO_X_ENUM(id, name, lo, hi, kind) PO_B_##id,
  PO_BUILTINS(PO_X_ENUM)
#undef PO_X_ENUM
  PO_B_COUNT
} po_builtin;

typedef enum po_builtin_kind {
  PO_BK_DECL, PO_BK_MODEL, PO_BK_TOKR, PO_BK_BATCH, PO_BK_ELEM, PO_BK_SEQ, PO_BK_GRAD
} po_builtin_kind;

typedef struct po_builtin_info {
  const char *name;
  int min_args, max_args;     /* positional arguments */
  po_builtin_kind kind;
  const char *const *kwargs;  /* keyword arguments it accepts, NULL-terminated (or NULL) */
} po_builtin_info;

po_builtin po_builtin_lookup(const char *name);          /* PO_B_NONE if unknown */
const po_builtin_info *po_builtin_get(po_builtin b);
/* lora's target names in the order of the projections they adapt: q, k, v, o, gate, up,
 * down (q_proj ... down_proj), NULL-terminated. */
const char *const *po_lora_targets(void);

/* Keys a train { } block accepts, NULL-terminated, and whether each takes a number,
 * a name, or a string. */
typedef enum { PO_TK_NUMBER, PO_TK_NAME, PO_TK_STRING } po_train_type;
typedef struct po_train_key {
  const char *key;
  po_train_type type;
  const char *const *choices;  /* for PO_TK_NAME: the allowed names */
  const char *doc;
} po_train_key;
const po_train_key *po_train_keys(void);  /* terminated by an entry with key == NULL */

/* ---- entry points ---------------------------------------------------------------- */

/* Reads a whole file into a po_source; reports unreadable files on d. NULL on failure. */
po_source *po_source_read(const char *path, po_diag *d);
/* Wraps text already in memory (tests, fuzzing). The text is copied. */
po_source *po_source_from_memory(const char *path, const char *text, size_t len);

/* Parses; returns the program even when errors were reported (with error statements
 * dropped), so that checking can still find more. */
po_program *po_parse(const po_source *src, po_diag *d);

/* Name-level checks: undefined names, unknown functions and their arity and keyword
 * arguments, duplicate bindings and knobs, recursive defs, unknown data fields or train
 * keys, `loss` missing. Returns the number of errors it reported. Level and shape checks
 * happen in lowering (compiler/), which shares the same po_diag. */
int po_check(const po_program *prog, po_diag *d);

/* Looks a top-level statement up by name (LET, PARAM, DEF, FIELD); NULL if none. */
const po_stmt *po_program_find(const po_program *prog, const char *name);

/* Sources and trees live in one arena until this frees all of them at once (a
 * compilation never frees piecemeal). For programs that compile many inputs in one
 * process: tests, the fuzzer. Every po_source and po_program made so far is invalid
 * afterwards. */
void po_release_all(void);

#endif
