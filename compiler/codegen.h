/* codegen.h — the back end: C from the lowered, differentiated IR. One section per file:
 * codegen.c (what both outputs share: the experiment's calls, anchors and token-count
 * sources, and C literal escaping), memplan.c (the memplan pass), codegen_plan.c (plan.c: the poc_program constant and
 * main), codegen_kernels.c (kernels.c: the objective kernel, fused or one function per
 * node). The generated files compile against runtime/program.h alone and link with
 * libpocrt.
 *
 * Nothing a .po file says reaches generated C as code: names are identifiers the lexer
 * already restricted, every string is a C literal with each byte outside
 * [A-Za-z0-9 _./-] written as an octal escape, numbers are printed with %.17g and
 * checked finite, and source text appears in comments only as line numbers. */
#ifndef POC_CODEGEN_H
#define POC_CODEGEN_H

#include <stdbool.h>
#include <stdio.h>

#include "ir.h"
#include "mplan.h"

typedef struct cg_options {
  bool unfused;      /* one kernel per IR node, every intermediate in its own buffer, and
                        the textbook loss head at run time */
  bool no_hoist;     /* frozen calls run every step instead of once (benchmarks) */
  const char *cc_line; /* how the files will be compiled, for the header; may be NULL */
  int n_kernel_images; /* poc build --arch: the GPU kernel images cuda_images.c defines as
                          poc_kernel_images[] (0: none, plan.c refers to nothing) */
} cg_options;

/* ---- codegen.c: the experiment as the runtime sees it ---------------------------- */

/* One distinct model call: the LOGP, ENTROPY and LOGSUMSQ nodes with the same key (any
 * of them). */
typedef struct cg_call {
  const char *key;
  int model;
  int logp, entropy, lss;  /* node ids, -1 when not read (lss: LOGSUMSQ) */
  int dlogp, dentropy;     /* adjoint node ids, -1 when no gradient is written */
  bool hoisted;
  bool reward;             /* a reward_score() call: logp/dlogp are its per-example score nodes */
  const ir_call *call;
} cg_call;

typedef struct cg_prog {
  const po_program *ast;
  ir_graph *g;
  const cg_options *opt;
  const char *name;        /* "dpo" */
  cg_call *calls;
  int ncalls;
  int *call_of;            /* node id → index into calls, -1 */
  int *anchors;            /* anchor index → SAMPLE node */
  int nanchors;
  /* where each domain's token count comes from, per example: a call (cg_call index)
     or a per-token field; SLICE domains follow their base */
  int *dom_call, *dom_field;
  bool separable;          /* g->separable and no batch reduction anywhere */
} cg_prog;

/* Builds the tables above; reports what the runtime ABI cannot express (a token count
 * no call or field gives, a literal token out of range) on d at the construct's line.
 * Returns 0, or -1 after reporting. */
int cg_prepare(cg_prog *p, const po_program *ast, ir_graph *g, const cg_options *opt, po_diag *d);
void cg_release(cg_prog *p);
/* Where domain d's per-example token count comes from: call (or field, the other -1)
 * sliced [lo:hi] (hi -1 when open). -1 when nothing gives it. */
int cg_dom_source(const cg_prog *p, int d, int *call, int *field, int *lo, int *hi);

/* Writes s as a C string literal: printable safe bytes as they are, every other byte as
 * a three-digit octal escape (so no "?\?" trigraph, no "*" "/" pair, no newline or quote
 * survives into the generated file). NULL is written as NULL. */
void cg_cstr(FILE *f, const char *s);
void cg_cstrn(FILE *f, const char *s, size_t n);
/* %.17g of a finite number (callers check finiteness first). */
void cg_num(FILE *f, double v);
/* The .po file's base name without directory or extension. */
const char *cg_base(const char *path);
/* "dpo.po:12" for a node: the file's base name (checked to be comment-safe, else
 * "line") and line. */
void cg_where(FILE *f, const cg_prog *p, po_loc loc);
/* The first node a call reads (logp, entropy or logsumsq): where it came from. */
int cg_call_node(const cg_call *c);
/* The .po file's base name, or a phrase when the name is not comment-safe. */
void cg_file(FILE *f, const cg_prog *p);
/* A template from kernels/templates, as installed with poc (home.h; POC_TEMPLATE_DIR
 * overrides where), read whole and NUL-terminated; NULL when it cannot be read. Caller
 * frees. */
char *cg_template(const char *name, size_t *len);
/* "%12 = logsigmoid %11" — an IR node described for a comment, without source text. */
void cg_describe(FILE *f, const cg_prog *p, int id);

/* ---- codegen_plan.c -------------------------------------------------------------- */
int cg_emit_plan(FILE *f, const cg_prog *p, po_diag *d);

/* ---- memplan.c: the memplan pass ------------------------------------------------- */
typedef struct cg_memplan {
  bool ok;                 /* false: why says which model folder could not be read */
  char why[600];
  int micro_batch, max_len;
  int nmodels;
  int *tokens;             /* per model: the token bound its arena is planned for */
  poc_mplan_device dev[2]; /* [0] the CPU device (cpu_prec), [1] the CUDA device (bf16) */
  const char *cpu_prec;    /* "fp32", or "bf16" where the run opens cpu-bf16 */
  poc_mplan *arena[2];     /* per device, per model: the solved activation arena */
} cg_memplan;
/* Plans every model's memory from the train block and its config.json (mp->ok false,
 * with why, when a folder cannot be read: the figure is then unknown, not an error). */
int cg_memplan_run(const cg_prog *p, cg_memplan *mp);
/* The plan's verifier: no two buffers live together share a byte, in any arena. */
int cg_memplan_verify(const cg_memplan *mp, char *err, size_t errlen);
/* "peak device memory: X GiB for micro_batch b, max_len T (...)" */
void cg_memplan_summary(const cg_memplan *mp, FILE *f);
/* The summary, the objective's host scratch plan, then per device and model the
 * arena's buffers, offsets and lifetimes. */
void cg_memplan_print(const cg_memplan *mp, const cg_prog *p, FILE *f);
void cg_memplan_free(cg_memplan *mp);

/* ---- codegen_kernels.c ----------------------------------------------------------- */
int cg_emit_kernels(FILE *f, const cg_prog *p, po_diag *d);
/* The objective's host memory as kernels.c allocates it: fused, the scratch vectors'
 * plan in units of T doubles (the longest token vector of the batch) with lifetimes over
 * the stages, the per-example arrays (B doubles each) and pick masks (T bytes each);
 * unfused, one buffer per node. */
typedef struct cg_objmem {
  poc_mplan scratch;
  int stored, masks, unfused;
} cg_objmem;
int cg_objective_memory(const cg_prog *p, cg_objmem *om);

#endif
