/* ir.h — the compiler's internal header: poc's intermediate representation and the
 * stages that build, transform, differentiate and evaluate it. One section per file,
 * in pipeline order: ir.c (graph, builders, verifier, printer), lower.c (AST → IR),
 * passes.c (fold, cse, dce, hoist, batch), autodiff.c (reverse mode), fuse.c (recompute
 * and fuse: the objective kernel's stages, loops and what crosses them; memplan: the
 * step's memory), eval.c (the float64 interpreter behind `poc probe`).
 *
 * The IR is an SSA DAG stored as one array: a node's inputs always have smaller ids, so
 * walking the array in order is a topological walk (forward) and walking it backwards
 * is the order reverse mode needs. Every value has a level:
 *
 *   CONST    one number for the whole run (numbers, knobs)
 *   BATCH    one number per optimizer step (batch_mean, batch_std, batch_sum)
 *   EXAMPLE  one number per example (sum(logp(...)), data fields)
 *   TOKEN    a vector over one *domain*'s tokens per example (logp, entropy, logsumsq,
 *            pick)
 *
 * The enum order is the broadcast order: an elementwise op's level is the largest level
 * among its inputs, and lower levels broadcast into higher ones.
 *
 * Token vectors carry their own length per example. In a sequence domain (`chosen`,
 * `prompt[1:]`, an anchor) every vector has the domain's length. In a prefix domain
 * (`x[:8]`) vectors may be shorter than 8, and an elementwise op over several of them is
 * as long as the shortest: that is "masks ANDed" when every mask is a prefix mask.
 */
#ifndef POC_IR_H
#define POC_IR_H

#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>

#include "dsl.h"

/* ---- ops: one table holds every op's name, arity, class and scalar C expression -- */
/* X(id, name, nin, class, cexpr)
 *   nin   inputs (-1: variable, model calls)
 *   class LEAF, CALL (model calls), ELEM (elementwise, level = max of inputs),
 *         TOKR (token reduction: TOKEN → EXAMPLE), BATR (batch reduction: EXAMPLE →
 *         BATCH), BPERM (EXAMPLE → EXAMPLE through the batch's sort order),
 *         SHAPE (moves token vectors between shapes), CTL (sg)
 *   cexpr the scalar C expression of an elementwise op in a, b, c — what a code
 *         generator emits, and what ir_scalar() computes (the two must agree)          */
#define IR_OPS(X)                                                                     \
  X(CONST, "const", 0, LEAF, NULL)           /* num                                   */ \
  X(PARAM, "param", 0, LEAF, NULL)           /* knob idx: a runtime value, not folded */ \
  X(FIELD, "field", 0, LEAF, NULL)           /* data field idx (EXAMPLE or TOKEN)      */ \
  X(SEQLEN, "seqlen", -1, LEAF, NULL)        /* token count of sequence dom (EXAMPLE)  */ \
  X(NBATCH, "nbatch", 0, LEAF, NULL)         /* examples in the step, B (BATCH)        */ \
  X(SAMPLE, "sample", -1, CALL, NULL)        /* anchor drawn from model idx; dom      */ \
  X(LOGP, "logp", -1, CALL, NULL)            /* per-token log-probs, call             */ \
  X(ENTROPY, "entropy", -1, CALL, NULL)      /* per-token entropy, call               */ \
  X(LOGSUMSQ, "logsumsq", -1, CALL, NULL)    /* per-token log Σ_v p(v)², call; no     \
                                                gradient flows into it (lower.c)      */ \
  X(REWARD, "reward_score", -1, CALL, NULL)  /* a reward model's score of context ++   \
                                                target, one per example; call, dom -1 */ \
  X(PICK, "pick", -1, LEAF, NULL)            /* random 0/1 mask over dom, n = in0      */ \
  X(POS, "pos", -1, LEAF, NULL)              /* 0-based token index over dom (TOKEN)   */ \
  X(ADD, "add", 2, ELEM, "a + b")                                                       \
  X(SUB, "sub", 2, ELEM, "a - b")                                                       \
  X(MUL, "mul", 2, ELEM, "a * b")                                                       \
  X(DIV, "div", 2, ELEM, "a / b")                                                       \
  X(NEG, "neg", 1, ELEM, "-a")                                                          \
  X(LT, "lt", 2, ELEM, "(double)(a < b)")                                               \
  X(LE, "le", 2, ELEM, "(double)(a <= b)")                                              \
  X(GT, "gt", 2, ELEM, "(double)(a > b)")                                               \
  X(GE, "ge", 2, ELEM, "(double)(a >= b)")                                              \
  X(EQ, "eq", 2, ELEM, "(double)(a == b)")                                              \
  X(NE, "ne", 2, ELEM, "(double)(a != b)")                                              \
  X(EXP, "exp", 1, ELEM, "exp(a)")                                                      \
  X(LOG, "log", 1, ELEM, "log(a)")                                                      \
  X(LOG1P, "log1p", 1, ELEM, "log1p(a)")                                                \
  X(LOG1MEXP, "log1mexp", 1, ELEM, "(a > -M_LN2 ? log(-expm1(a)) : log1p(-exp(a)))")    \
  X(SIGMOID, "sigmoid", 1, ELEM, "(a >= 0 ? 1 / (1 + exp(-a)) : exp(a) / (1 + exp(a)))") \
  X(LOGSIGMOID, "logsigmoid", 1, ELEM, "(fmin(a, 0) - log1p(exp(-fabs(a))))")           \
  X(SOFTPLUS, "softplus", 1, ELEM, "(fmax(a, 0) + log1p(exp(-fabs(a))))")               \
  X(TANH, "tanh", 1, ELEM, "tanh(a)")                                                   \
  X(ABS, "abs", 1, ELEM, "fabs(a)")                                                     \
  X(SQRT, "sqrt", 1, ELEM, "sqrt(a)")                                                   \
  X(POW, "pow", 2, ELEM, "pow(a, b)")                                                   \
  X(MIN, "min", 2, ELEM, "(a <= b ? a : b)")                                            \
  X(MAX, "max", 2, ELEM, "(a >= b ? a : b)")                                            \
  X(FLOOR, "floor", 1, ELEM, "floor(a)")                                                \
  X(WHERE, "where", 3, ELEM, "(a != 0 ? b : c)")                                        \
  X(SG, "sg", 1, CTL, "a")                   /* identity forward, no gradient         */ \
  X(SUM, "sum", 1, TOKR, NULL)                                                          \
  X(MEAN, "mean", 1, TOKR, NULL)             /* sum / len; 0 over no tokens           */ \
  X(TMAX, "max", 1, TOKR, NULL)              /* over tokens; 0 over no tokens         */ \
  X(LEN, "len", 1, TOKR, NULL)               /* tokens counted                         */ \
  X(DOT, "dot", 2, TOKR, NULL)               /* over the common prefix                 */ \
  X(NORM, "norm", 1, TOKR, NULL)                                                        \
  X(COS, "cos", 2, TOKR, NULL)               /* 0 when either norm is 0               */ \
  X(BSUM, "batch_sum", 1, BATR, NULL)                                                   \
  X(BMEAN, "batch_mean", 1, BATR, NULL)                                                 \
  X(BSTD, "batch_std", 1, BATR, NULL)        /* population standard deviation         */ \
  X(BSORT, "batch_sort", 1, BPERM, NULL)     /* example i: the i-th smallest of in0    */ \
  X(BUNSORT, "batch_unsort", 2, BPERM, NULL) /* example j: in0 at the rank of j in in1's \
                                                order (the adjoint of batch_sort)      */ \
  X(SLICE, "slice", 1, SHAPE, NULL)          /* x[lo:hi] of a token vector             */ \
  X(FIT, "fit", 2, SHAPE, NULL)              /* in0 placed at offset lo in in1's shape, \
                                                zeros elsewhere (the adjoint of slice) */ \
  X(BCAST, "bcast", 2, SHAPE, NULL)          /* in0 broadcast to in1's level and shape */ \
  X(ARGMAX, "argmax", 1, SHAPE, NULL)        /* one-hot of the first maximum (TOKEN)   */

typedef enum ir_op {
#define IR_X_ENUM(id, name, nin, cls, cexpr) IR_##id,
  IR_OPS(IR_X_ENUM)
#undef IR_X_ENUM
  IR_OP_COUNT
} ir_op;

typedef enum ir_class { IR_LEAF, IR_CALL, IR_ELEM, IR_TOKR, IR_BATR, IR_BPERM, IR_SHAPE, IR_CTL } ir_class;

typedef struct ir_opinfo {
  const char *name;
  int nin;
  ir_class cls;
  const char *cexpr;
} ir_opinfo;

const ir_opinfo *ir_op_info(ir_op op);
/* The per-token quantities the model's loss head computes along a target: logp, entropy,
 * logsumsq. Calls of one model with one key share one forward. */
static inline bool ir_head_call(ir_op op) {
  return op == IR_LOGP || op == IR_ENTROPY || op == IR_LOGSUMSQ;
}
/* Every call of a model: the head's quantities and a reward model's per-example score. */
static inline bool ir_model_call(ir_op op) { return ir_head_call(op) || op == IR_REWARD; }
/* The scalar semantics of an elementwise op (ELEM and CTL): fold and eval use this. */
double ir_scalar(ir_op op, double a, double b, double c);

/* ---- levels, domains, models, knobs, fields -------------------------------------- */

typedef enum ir_level { IR_LCONST, IR_LBATCH, IR_LEXAMPLE, IR_LTOKEN } ir_level;

typedef enum ir_dom_kind {
  IR_DOM_SEQ,     /* a data sequence: prompt, chosen, rejected, response */
  IR_DOM_ANCHOR,  /* the tokens a sample() call draws                    */
  IR_DOM_SLICE,   /* base[lo:hi] (sequence slices, and token-vector slices that
                     do not start at 0)                                  */
  IR_DOM_PREFIX   /* x[:k] of any vector: combines with any other x[:k]  */
} ir_dom_kind;

typedef struct ir_domain {
  ir_dom_kind kind;
  const char *name;  /* "chosen", "prompt[1:]", "a", "prefix 8" */
  int base;          /* SLICE: the domain sliced */
  int lo, hi;        /* SLICE: bounds, hi = -1 when open; PREFIX: hi = k */
  int sample;        /* ANCHOR: the SAMPLE node; -1 once removed */
  /* ANCHOR: how it is drawn */
  int tokens;
  double temperature, top_p;
} ir_domain;

typedef struct ir_model {
  const char *name;   /* the binding: "policy", "ref" */
  bool trainable;     /* model(...) yes; frozen(...) no */
  int of;             /* frozen(x): the model it snapshots; -1 otherwise */
  const char *path;   /* model("DIR"): DIR; NULL for frozen */
  po_loc loc;
  /* lora(model("DIR"), ...): adapters on a frozen base; lora_r = 0 for a plain model */
  int lora_r;
  double lora_alpha, lora_dropout;
  unsigned lora_targets;       /* bit t: target t of po_lora_targets() */
  const char *lora_adapter;    /* a PEFT adapter folder to start from, or NULL */
  unsigned lora_set;           /* written in the .po: r 1, alpha 2, targets 4 */
} ir_model;

typedef struct ir_knob {
  const char *name;
  double value;       /* the default from `param name = value` */
  po_loc loc;
} ir_knob;

typedef struct ir_field {
  const char *name;
  int dom;            /* per-token fields: the sequence's domain; -1 per example */
  po_loc loc;
} ir_field;

/* One piece of a model call's context: a sequence (dom >= 0) or a token literal. */
typedef struct ir_ctxpart {
  int dom;
  const int64_t *toks;
  int ntoks;
  const char *text;   /* as written: "prompt", "sep", "[2]" */
} ir_ctxpart;

typedef struct ir_call {
  int target;         /* domain of the tokens scored (SAMPLE: the anchor drawn) */
  int nctx;
  const ir_ctxpart *ctx;  /* nctx == 0: the default context, the prompt */
} ir_call;

/* ---- nodes ----------------------------------------------------------------------- */

enum {
  IR_F_TRAIN = 1u << 0,   /* gradient flows from a trainable model call (not through sg) */
  IR_F_MODEL = 1u << 1,   /* depends on some model call, even through sg              */
  IR_F_SAMPLED = 1u << 2, /* depends on a sample() anchor                             */
  IR_F_RANDOM = 1u << 3,  /* depends on a pick() mask                                 */
  IR_F_DATA = 1u << 4,    /* depends only on data fields, sequence lengths, constants  */
  IR_F_HOIST = 1u << 5,   /* computable once before training, per example, and cached */
  IR_F_CACHE = 1u << 6,   /* a hoisted value that a per-step node reads: stored       */
  IR_F_GRAD = 1u << 7,    /* part of the backward graph                               */
  IR_F_RECOMP = 1u << 8,  /* a per-token value a later stage computes again (recompute)  */
  IR_F_STORE = 1u << 9    /* a per-example value kept in a per-example array, for a later
                             stage or a batch reduction or sort (recompute)          */
};
/* Flags recomputed from the graph by ir_infer_flags; HOIST and CACHE are the hoist
 * pass's marks and GRAD the differentiator's. */
#define IR_F_DERIVED (IR_F_TRAIN | IR_F_MODEL | IR_F_SAMPLED | IR_F_RANDOM | IR_F_DATA)

#define IR_MAX_IN 4

typedef struct ir_node {
  ir_op op;
  int nin;
  int in[IR_MAX_IN];
  ir_level level;
  int dom;           /* TOKEN values; SEQLEN, PICK, SAMPLE: their sequence. Else -1 */
  double num;        /* CONST */
  int idx;           /* PARAM: knob; FIELD: field; model calls: model; PICK: the pick
                        call's index in source order; SLICE/FIT: lo */
  int hi;            /* SLICE: hi, -1 when open */
  const ir_call *call;   /* LOGP, ENTROPY, LOGSUMSQ, REWARD, SAMPLE */
  const char *key;   /* model calls: probe key "policy/chosen|prompt,sep";
                        PICK: "pick(rejected,n_l)"; SAMPLE: the anchor's name */
  unsigned flags;
  po_loc loc;
  const char *name;  /* the .po name bound to this value (`margin = ...`, a report, a def
                        call's result), NULL when none: generated code carries it */
  int stage;         /* recompute: batch reductions and sorts on the longest path from the
                        inputs; the objective's loop over examples that computes it */
  int grp;           /* fuse: the node's home group, -1 before fusion */
} ir_node;

typedef struct ir_report {
  const char *name;
  int node;
  po_loc loc;
} ir_report;

/* dL/d(call) for one model call of a trainable model: the seed the runtime's backward
 * pass starts from. */
typedef struct ir_grad {
  int call;          /* LOGP, ENTROPY or REWARD node */
  int grad;          /* its adjoint, same shape */
} ir_grad;

/* One packed forward: every call of one model that runs at the same time. */
typedef struct ir_batch {
  int model;
  bool hoisted;      /* computed once before training */
  bool after_sample; /* needs the step's anchors first */
  int ncalls;
  int *calls;
} ir_batch;

/* One group of the fuse pass: a unit of the objective kernel that generated code emits
 * as one piece (a loop over one domain's tokens, the per-example statements between two
 * such loops, the batch reductions between two loops over examples), or one node when
 * fusion is off. */
typedef enum ir_group_kind {
  IR_G_INPUT,    /* what the runtime hands the objective: numbers, model outputs, per-token
                    fields, anchors; no statement */
  IR_G_PROLOGUE, /* knobs, and batch values that need no reduction, before the examples */
  IR_G_EXAMPLE,  /* per-example statements of stage `stage`, before token loop `at` */
  IR_G_TOKENS,   /* token loop `at` of stage `stage`, over domain `dom`: its elementwise
                    values, its reductions' accumulations, the gradients it writes */
  IR_G_BATCH,    /* batch reductions and sorts, and arithmetic on them, before stage
                    `stage` */
  IR_G_SHAPE,    /* per-token values read only for their length: no statement */
  IR_G_NODE      /* fusion off: one node, one function over the whole batch */
} ir_group_kind;

typedef struct ir_group {
  ir_group_kind kind;
  int stage;         /* EXAMPLE, TOKENS, BATCH; -1 otherwise */
  int at;            /* EXAMPLE: the position among the stage's loops; TOKENS: the loop */
  int dom;           /* TOKENS: the domain looped over; -1 otherwise */
  int line_lo, line_hi;  /* the .po lines its members come from (0: none) */
  const char *name;  /* an identifier: "grp3_margin_L12" */
  int nmem;
  int *mem;          /* node ids in emission order (increasing): home members and, in a
                        later stage, recomputed per-token copies */
} ir_group;

typedef struct ir_fusion {
  int nstages;       /* loops over the examples (recompute) */
  int ngroups;       /* 0 until fuse runs */
  ir_group *groups;
} ir_fusion;

typedef struct ir_arena ir_arena;

typedef struct ir_graph {
  const po_source *src;
  ir_node *nodes;
  int n, cap;
  ir_domain *doms;
  int ndoms, capdoms;
  ir_model *models;
  int nmodels;
  ir_knob *knobs;
  int nknobs;
  ir_field *fields;
  int nfields;
  const char *data_kind;  /* "pairs" or "points" (NULL when none is declared) */
  const char **seqs;      /* `sequence NAME` declarations, in source order */
  int nseqs;
  int train_seed;         /* the train block's seed, 1 when absent */
  int loss;               /* the per-example objective, -1 until lowered */
  po_loc loss_loc;
  ir_report *reports;
  int nreports;
  ir_grad *grads;
  int ngrads;
  ir_batch *plan;
  int nplan;
  bool separable;         /* no batch reduction carries gradient into the loss */
  bool differentiated;
  bool unfused;           /* the fuse pass makes one group per node (poc build --unfused) */
  ir_fusion fusion;
  ir_arena *arena;
} ir_graph;

/* ---- ir.c: graph construction ---------------------------------------------------- */

ir_graph *ir_new(const po_source *src);
void ir_free(ir_graph *g);
/* calloc that never returns NULL: a compiler out of memory stops with a message. */
void *ir_xcalloc(size_t n, size_t size);
void *ir_alloc(ir_graph *g, size_t n);          /* zeroed, freed with the graph */
char *ir_strdup(ir_graph *g, const char *s);
char *ir_fmt(ir_graph *g, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

/* Appends a node whose level and domain are given; returns its id. */
int ir_push(ir_graph *g, ir_node n);
/* Builders that infer level and domain from the inputs (they do not diagnose: the
 * lowering checks first, the verifier catches builder misuse). */
int ir_const(ir_graph *g, double v, po_loc loc);
int ir_unary(ir_graph *g, ir_op op, int a, po_loc loc);
int ir_binary(ir_graph *g, ir_op op, int a, int b, po_loc loc);
int ir_ternary(ir_graph *g, ir_op op, int a, int b, int c, po_loc loc);
int ir_reduce(ir_graph *g, ir_op op, int a, int b, po_loc loc); /* TOKR, BATR; b = -1 */
int ir_slice(ir_graph *g, int a, int lo, int hi, po_loc loc);
int ir_fit(ir_graph *g, int a, int like, int lo, po_loc loc);
int ir_bcast(ir_graph *g, int a, int like, po_loc loc);
int ir_leaf(ir_graph *g, ir_op op, ir_level level, int dom, int idx, po_loc loc);

/* Domains are interned: asking twice for the same one gives the same id. */
int ir_dom_seq(ir_graph *g, const char *name);
int ir_dom_slice(ir_graph *g, int base, int lo, int hi);
int ir_dom_prefix(ir_graph *g, int k);
int ir_dom_anchor(ir_graph *g, const char *name);
/* The domain a token vector of domain d sliced [lo:hi] lives in. */
int ir_dom_of_slice(ir_graph *g, int d, int lo, int hi);

/* The batch's sort order of x[0..B): perm[k] is the example holding the k-th smallest
 * value; ties keep example order, NaN sorts after every number (batch_sort and its
 * adjoint; the generated objective's poc_k_batch_order is the same rule). */
void ir_batch_order(const double *x, int B, int *perm);

/* Whether gradient flows from node n into its input k (not through comparisons, floor,
 * counts, masks, sg, or the shape-only inputs of fit and bcast). */
bool ir_input_differentiable(const ir_node *n, int k);

/* Recomputes IR_F_DERIVED flags of every node. */
void ir_infer_flags(ir_graph *g);

/* Well-formedness: SSA order, arity, levels and domains, roots. Returns 0, or -1 with a
 * message in err (size errlen). */
int ir_verify(const ir_graph *g, char *err, size_t errlen);

/* "token[chosen]", "example", "batch", "const" */
const char *ir_type_str(const ir_graph *g, const ir_node *n, char *buf, size_t len);
/* One node a line, then roots; with `plan` also the batching plan and hoisting marks. */
void ir_print(const ir_graph *g, FILE *f, bool plan);
void ir_print_dot(const ir_graph *g, FILE *f);

/* Number of nodes reading each node (array of g->n, caller frees). */
int *ir_use_counts(const ir_graph *g);

/* ---- lower.c --------------------------------------------------------------------- */
/* Size limits of lowering, each reported as an error at the construct that crosses it.
 * The examples lower to under 100 nodes; the limits are there so that hostile or
 * runaway input (defs that expand exponentially) ends in a second with a message. */
#define IR_MAX_NODES 50000     /* nodes of the lowered graph                          */
#define IR_MAX_INLINED 100000  /* expression nodes instantiated from def bodies       */
/* AST → IR: inlines defs, resolves names, infers levels and token domains, and reports
 * what the language cannot say on d with the source position. Returns NULL when any
 * error was reported. The program must have passed po_check. */
ir_graph *ir_lower(const po_program *prog, po_diag *d);
/* The front of every command that needs the graph: read, parse, check, lower (lowering
 * only when parsing and checking found nothing wrong). NULL after any error. */
ir_graph *ir_front(const char *path, po_diag *d);

/* ---- passes.c -------------------------------------------------------------------- */
/* Each pass returns 0, or -1 with err filled when the verifier rejects its result. */
typedef struct ir_pass {
  const char *name;
  int (*run)(ir_graph *g, char *err, size_t errlen);
} ir_pass;

int ir_fold(ir_graph *g, char *err, size_t errlen);
int ir_cse(ir_graph *g, char *err, size_t errlen);
int ir_dce(ir_graph *g, char *err, size_t errlen);
int ir_hoist(ir_graph *g, char *err, size_t errlen);
int ir_batch_plan(ir_graph *g, char *err, size_t errlen);
int ir_separability(ir_graph *g, char *err, size_t errlen);
/* The whole pipeline after lowering: fold, cse, dce, hoist, separability, autodiff,
 * then fold, cse, dce, hoist, batch again over the joint graph, then recompute and fuse
 * (fuse.c) — verifier after each. `trace` (may be NULL) gets one line per pass. */
int ir_pipeline(ir_graph *g, FILE *trace, char *err, size_t errlen);

/* Replaces uses of node i by map[i] everywhere (inputs and roots); map[i] == i keeps. */
void ir_replace(ir_graph *g, const int *map);

/* ---- fuse.c ---------------------------------------------------------------------- */
/* recompute: each node's stage (batch reductions and sorts before it), and the marks for
 * what crosses stages: IR_F_RECOMP on per-token values a later stage reads (computed
 * again there: elementwise over model outputs, cheaper than a batch of vectors) and
 * IR_F_STORE on per-example values kept in arrays. */
int ir_recompute(ir_graph *g, char *err, size_t errlen);
/* fuse: g->fusion, the groups generated code emits, and each node's home group; with
 * g->unfused one group per node. */
int ir_fuse(ir_graph *g, char *err, size_t errlen);
/* The fusion's invariants (ir_verify calls it once groups exist): every node in exactly
 * one home group, a value computed before the group that reads it, a per-token value
 * in two stages marked recomputed, a per-example one read across stages marked stored,
 * and the head's per-token outputs read again by a later loop only when that loop needs
 * a value the earlier one could not have. */
int ir_verify_fusion(const ir_graph *g, char *err, size_t errlen);
/* What the emitters share about a node's role in a loop over tokens. */
bool ir_tok_leaf(const ir_node *n);      /* model outputs, per-token fields */
bool ir_tok_computed(const ir_node *n);  /* a per-token statement in a loop */
bool ir_value_input(const ir_graph *g, const ir_node *n, int k); /* read as a value */
bool ir_offset_read(const ir_graph *g, const ir_node *n, int k); /* read off index t */
void ir_print_fusion(const ir_graph *g, FILE *f);
const char *ir_group_kind_name(ir_group_kind k);

/* ---- autodiff.c ------------------------------------------------------------------ */
/* Appends the backward graph of d(batch mean of loss)/d(call) for every LOGP and
 * ENTROPY call of a trainable model, and fills g->grads (zeros where every path is
 * under sg). */
int ir_autodiff(ir_graph *g, char *err, size_t errlen);

/* ---- eval.c ---------------------------------------------------------------------- */
/* A value of one node over a batch: CONST and BATCH one number, EXAMPLE B numbers,
 * TOKEN len[i] numbers for example i starting at v[off[i]]. */
typedef struct ir_val {
  int *len, *off;    /* TOKEN only */
  double *v;
  int total;
} ir_val;

typedef struct ir_env {
  int B;
  uint64_t seed;
  const double *knobs;      /* [nknobs] */
  int *const *domlen;       /* [ndoms] → [B] token counts, NULL where not known */
  /* [n] leaf values for LOGP, ENTROPY, LOGSUMSQ, FIELD nodes: TOKEN values concatenated per
   * example in the domain's lengths, EXAMPLE values B numbers */
  const double *const *leaf;
} ir_env;

/* Evaluates every node (forward and backward) in float64. Returns an array of g->n
 * values, or NULL with err filled (missing leaves, unknown lengths). */
ir_val *ir_eval(const ir_graph *g, const ir_env *env, char *err, size_t errlen);
void ir_vals_free(const ir_graph *g, ir_val *vals);
/* The token count of domain d per example implied by env (sequence domains given,
 * slices of them computed); -1 entries when unknown. Caller frees. */
int *ir_dom_lengths(const ir_graph *g, const ir_env *env, int d);
/* Positions pick(y, n) selects: partial Fisher–Yates over [0, len) with the stream
 * poc_rng_derive(seed, pick index, example). Writes a 0/1 mask of len entries. */
void ir_pick_mask(uint64_t seed, int pick, int example, int len, double n, double *mask);

#endif
