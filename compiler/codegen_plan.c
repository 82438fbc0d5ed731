/* codegen_plan.c — plan.c: the poc_program constant that describes one experiment to the
 * training runtime (models, data, fields, calls with their token segments, anchors,
 * knobs, reports, the train block, separability) and the main() that hands it over.
 * Everything here is data; the arithmetic of the objective is in kernels.c. */
#include <math.h>
#include <string.h>

#include "codegen.h"
#include "program.h"

_Static_assert(PO_MAX_EXTRA_SEQS == POC_MAX_EXTRA_SEQS, "one limit on sequence declarations");

/* ---- segments ---------------------------------------------------------------------- */

typedef struct seg {
  const char *src;   /* "POC_SRC_CHOSEN" ... */
  int anchor;
  int lo, hi;        /* -1: open */
} seg;

/* A sequence domain as one segment: slices of slices compose into one slice. */
static int seg_of_dom(const cg_prog *p, int d, seg *s) {
  const ir_graph *g = p->g;
  const ir_domain *dm = &g->doms[d];
  if (dm->kind == IR_DOM_SLICE) {
    if (seg_of_dom(p, dm->base, s)) return -1;
    int lo1 = s->lo, hi1 = s->hi;
    s->lo = lo1 + dm->lo;
    s->hi = dm->hi < 0 ? hi1 : hi1 < 0 || lo1 + dm->hi < hi1 ? lo1 + dm->hi : hi1;
    return 0;
  }
  s->anchor = 0;
  s->lo = 0;
  s->hi = -1;
  if (dm->kind == IR_DOM_ANCHOR) {
    s->src = "POC_SRC_ANCHOR";
    for (int k = 0; k < p->nanchors; k++)
      if (p->anchors[k] == dm->sample) s->anchor = k;
    return 0;
  }
  if (dm->kind != IR_DOM_SEQ) return -1;
  static const struct { const char *name, *src; } seqs[] = {
      {"prompt", "POC_SRC_PROMPT"}, {"chosen", "POC_SRC_CHOSEN"},
      {"rejected", "POC_SRC_REJECTED"}, {"response", "POC_SRC_RESPONSE"}};
  for (size_t k = 0; k < sizeof seqs / sizeof seqs[0]; k++)
    if (!strcmp(dm->name, seqs[k].name)) {
      s->src = seqs[k].src;
      return 0;
    }
  /* `sequence NAME`: the k-th declared is POC_SRC_EXTRA + k */
  static const char *const extra[POC_MAX_EXTRA_SEQS] = {
      "POC_SRC_EXTRA", "POC_SRC_EXTRA + 1", "POC_SRC_EXTRA + 2", "POC_SRC_EXTRA + 3"};
  for (int k = 0; k < g->nseqs && k < POC_MAX_EXTRA_SEQS; k++)
    if (!strcmp(dm->name, g->seqs[k])) {
      s->src = extra[k];
      return 0;
    }
  return -1;
}

static void emit_bound(FILE *f, int v, bool open) {
  if (open) fputs("POC_OPEN", f);
  else fprintf(f, "%d", v);
}

static void emit_seg(FILE *f, const seg *s) {
  fprintf(f, "    {.src = %s, .anchor = %d, .lo = ", s->src, s->anchor);
  emit_bound(f, s->lo, s->lo == 0);
  fputs(", .hi = ", f);
  emit_bound(f, s->hi, s->hi < 0);
  fputs("},\n", f);
}

/* The segments of a context (nctx 0: the default, the prompt), named NAME. Literal
 * token arrays come first as NAME_litK. Returns the count, -1 on a domain that is not a
 * sequence. */
static int emit_context(FILE *f, const cg_prog *p, const ir_call *c, const char *name) {
  if (!c || c->nctx == 0) {
    fprintf(f, "static const poc_segment %s[] = {\n", name);
    emit_seg(f, &(seg){.src = "POC_SRC_PROMPT", .lo = 0, .hi = -1});
    fputs("};\n", f);
    return 1;
  }
  for (int k = 0; k < c->nctx; k++) {
    if (c->ctx[k].dom >= 0) continue;
    fprintf(f, "static const int32_t %s_lit%d[] = {", name, k);
    for (int j = 0; j < c->ctx[k].ntoks; j++)
      fprintf(f, "%s%lld", j ? ", " : "", (long long)c->ctx[k].toks[j]);
    fputs("};\n", f);
  }
  fprintf(f, "static const poc_segment %s[] = {\n", name);
  for (int k = 0; k < c->nctx; k++) {
    if (c->ctx[k].dom < 0) {
      fprintf(f, "    {.src = POC_SRC_LITERAL, .lo = POC_OPEN, .hi = POC_OPEN, .n_lit = %d, "
                 ".lit = %s_lit%d},\n", c->ctx[k].ntoks, name, k);
      continue;
    }
    seg s;
    if (seg_of_dom(p, c->ctx[k].dom, &s)) return -1;
    emit_seg(f, &s);
  }
  fputs("};\n", f);
  return c->nctx;
}

/* ---- the train block ---------------------------------------------------------------- */

static int const_value(const po_expr *e, double *v) {
  double a, b;
  switch (e->kind) {
  case PO_E_NUM: *v = e->num; return 0;
  case PO_E_UNARY:
    if (const_value(e->lhs, &a)) return -1;
    *v = -a;
    return 0;
  case PO_E_BINARY:
    if (const_value(e->lhs, &a) || const_value(e->rhs, &b)) return -1;
    switch (e->op) {
    case PO_OP_ADD: *v = a + b; return 0;
    case PO_OP_SUB: *v = a - b; return 0;
    case PO_OP_MUL: *v = a * b; return 0;
    case PO_OP_DIV: *v = a / b; return 0;
    default: return -1;
    }
  default: return -1;
  }
}

typedef struct train_key {
  const char *key;
  char kind;          /* 'd' double, 'i' int, 'u' uint64, 's' schedule, 'p' precision,
                         'n' on_nonfinite, 'o' order */
  double dflt;
} train_key;

/* The order of poc_train's fields; defaults as POC_TRAIN_DEFAULTS spells them. */
static const train_key train_keys[] = {
    {"lr", 'd', 5e-7},          {"schedule", 's', 0},     {"warmup", 'd', 0.1},
    {"batch", 'i', 128},        {"micro_batch", 'i', 8},  {"epochs", 'i', 1},
    {"max_len", 'i', 512},      {"clip", 'd', 1.0},       {"precision", 'p', 1},
    {"seed", 'u', 1},           {"weight_decay", 'd', 0}, {"adam_beta1", 'd', 0.9},
    {"adam_beta2", 'd', 0.999}, {"adam_eps", 'd', 1e-8},  {"log_every", 'i', 1},
    {"ckpt_every", 'i', 500},   {"eval_every", 'i', 0},   {"eval_tokens", 'i', 0},
    {"steps", 'i', 0},          {"on_nonfinite", 'n', 0}, {"ckpt_minutes", 'd', 10},
    {"order", 'o', 0},
};

static int emit_train(FILE *f, const cg_prog *p, po_diag *d) {
  const po_stmt *tr = NULL;
  for (int i = 0; i < p->ast->nstmts; i++)
    if (p->ast->stmts[i]->kind == PO_S_TRAIN) tr = p->ast->stmts[i];
  int errors = 0;
  fputs("    .train = {\n", f);
  for (size_t k = 0; k < sizeof train_keys / sizeof train_keys[0]; k++) {
    const train_key *tk = &train_keys[k];
    const po_item *it = NULL;
    for (int j = 0; tr && j < tr->nitems; j++)
      if (!strcmp(tr->items[j].key, tk->key)) it = &tr->items[j];
    fprintf(f, "        .%s = ", tk->key);
    if (tk->kind == 's' || tk->kind == 'p' || tk->kind == 'n' || tk->kind == 'o') {
      const char *name = it && it->value->kind == PO_E_NAME ? it->value->str : NULL;
      static const char *const sched[] = {"cosine", "linear", "constant"};
      static const char *const prec[] = {"fp32", "bf16"};
      static const char *const nonf[] = {"stop", "skip"};
      static const char *const order[] = {"shuffle", "sequential"};
      const char *const *names = tk->kind == 's' ? sched : tk->kind == 'p' ? prec
                               : tk->kind == 'n' ? nonf : order;
      int n = tk->kind == 's' ? 3 : 2, v = (int)tk->dflt;
      if (name) {
        v = -1;
        for (int q = 0; q < n; q++)
          if (!strcmp(name, names[q])) v = q;
        if (v < 0) {
          po_error(d, it->value->loc, "train key '%s' has an unknown value", tk->key);
          errors++;
          v = 0;
        }
      }
      static const char *const sched_c[] = {"POC_SCHED_COSINE", "POC_SCHED_LINEAR", "POC_SCHED_CONSTANT"};
      static const char *const prec_c[] = {"POC_PREC_FP32", "POC_PREC_BF16"};
      static const char *const nonf_c[] = {"POC_NONFINITE_STOP", "POC_NONFINITE_SKIP"};
      static const char *const order_c[] = {"POC_ORDER_SHUFFLE", "POC_ORDER_SEQUENTIAL"};
      fprintf(f, "%s,", tk->kind == 's' ? sched_c[v] : tk->kind == 'p' ? prec_c[v]
                        : tk->kind == 'n' ? nonf_c[v] : order_c[v]);
    } else {
      double v = tk->dflt;
      if (it && const_value(it->value, &v)) {
        po_error(d, it->value->loc, "train key '%s' takes a number", tk->key);
        errors++;
      }
      bool whole = tk->kind != 'd';
      double max = tk->kind == 'i' ? 2147483647.0 : 9007199254740992.0;
      if (!isfinite(v) || (whole && (v != floor(v) || v < 0 || v > max))) {
        po_error(d, it ? it->value->loc : tr->loc, "train key '%s' is out of range for the runtime",
                 tk->key);
        errors++;
        v = tk->dflt;
      }
      if (tk->kind == 'd') cg_num(f, v);
      else if (tk->kind == 'i') fprintf(f, "%d", (int)v);
      else fprintf(f, "UINT64_C(%llu)", (unsigned long long)v);
      fputc(',', f);
    }
    if (it) {
      fputs(" /* ", f);
      cg_where(f, p, it->loc);
      fputs(" */", f);
    } else {
      fputs(" /* default */", f);
    }
    fputc('\n', f);
  }
  fputs("    },\n", f);
  return errors;
}

/* ---- the program ---------------------------------------------------------------------- */

static const char *decl_path(const cg_prog *p, const char *builtin) {
  for (int i = 0; i < p->ast->nstmts; i++) {
    const po_stmt *s = p->ast->stmts[i];
    if (s->kind == PO_S_LET && s->value && s->value->kind == PO_E_CALL &&
        !strcmp(s->value->str, builtin) && s->value->nargs >= 1 &&
        s->value->args[0].value->kind == PO_E_STR)
      return s->value->args[0].value->str;
  }
  return NULL;
}

/* The GPU kernels `poc build --arch` compiled: cuda_images.c (written by the build, one
 * image per distinct model config) defines them; plan.c only points at them. */
static void emit_kernel_images_decl(FILE *f, const cg_prog *p) {
  if (p->opt->n_kernel_images <= 0) return;
  fprintf(f, "/* the GPU kernels compiled by poc build --arch (cuda_images.c) */\n"
             "extern const poc_kernel_image poc_kernel_images[%d];\n\n",
          p->opt->n_kernel_images);
}

static void emit_kernel_images_fields(FILE *f, const cg_prog *p) {
  if (p->opt->n_kernel_images <= 0) return;
  fprintf(f, "    .n_kernel_images = %d,\n    .kernel_images = poc_kernel_images,\n",
          p->opt->n_kernel_images);
}

int cg_emit_plan(FILE *f, const cg_prog *p, po_diag *d) {
  const ir_graph *g = p->g;
  int errors = 0;
  fprintf(f, "/* plan.c — generated by poc %s from ", POC_VERSION);
  cg_file(f, p);
  fprintf(f, "; do not edit.\n *\n * The experiment as constant data for the training runtime "
             "(runtime/program.h):\n * models, data, %d model call%s, %d anchor%s, %d knob%s, "
             "%d report%s and the train block.\n * The objective's arithmetic is in kernels.c "
             "(%s). Build: poc build%s.\n */\n",
          p->ncalls, p->ncalls == 1 ? "" : "s", p->nanchors, p->nanchors == 1 ? "" : "s",
          g->nknobs, g->nknobs == 1 ? "" : "s", g->nreports, g->nreports == 1 ? "" : "s",
          p->opt->unfused ? "unfused: one function per IR node" : "fused",
          p->opt->unfused ? " --unfused" : "");
  fputs("#include <stdint.h>\n#include <stdlib.h>\n\n#include \"program.h\"\n\n", f);
  fputs("int poc_objective(const poc_objective_args *a); /* kernels.c */\n\n", f);

  /* the source, copied into the run directory */
  fputs("static const char source[] =\n    ", f);
  cg_cstrn(f, g->src && g->src->text ? g->src->text : "", g->src ? g->src->len : 0);
  fputs(";\n\n", f);

  /* models */
  fputs("static const poc_model_decl models[] = {\n", f);
  for (int m = 0; m < g->nmodels; m++) {
    int root = m;
    for (int hop = 0; g->models[root].of >= 0 && hop < g->nmodels; hop++) root = g->models[root].of;
    fputs("    {.name = ", f);
    cg_cstr(f, g->models[m].name);
    fputs(", .path = ", f);
    cg_cstr(f, g->models[root].path);
    fprintf(f, ", .trainable = %d, .frozen_of = %d", g->models[m].trainable ? 1 : 0,
            g->models[m].of);
    if (g->models[m].lora_r > 0) {
      fprintf(f, ", .lora_r = %d, .lora_alpha = %.17g, .lora_dropout = %.17g, .lora_targets = %uu, "
              ".lora_set = %uu", g->models[m].lora_r, g->models[m].lora_alpha,
              g->models[m].lora_dropout, g->models[m].lora_targets, g->models[m].lora_set);
      if (g->models[m].lora_adapter) {
        fputs(", .lora_adapter = ", f);
        cg_cstr(f, g->models[m].lora_adapter);
      }
    }
    fputs("}, /* ", f);
    cg_where(f, p, g->models[m].loc);
    fputs(" */\n", f);
  }
  fputs("};\n\n", f);

  /* fields */
  if (g->nfields) {
    fputs("static const poc_field_decl fields[] = {\n", f);
    for (int k = 0; k < g->nfields; k++) {
      seg s = {.src = "-1"};
      if (g->fields[k].dom >= 0 && seg_of_dom(p, g->fields[k].dom, &s)) s.src = "-1";
      fputs("    {.name = ", f);
      cg_cstr(f, g->fields[k].name);
      fprintf(f, ", .seq = %s},\n", s.src);
    }
    fputs("};\n\n", f);
  }

  /* `sequence NAME` declarations */
  if (g->nseqs) {
    fputs("static const char *const extra_seqs[] = {", f);
    for (int k = 0; k < g->nseqs; k++) {
      fputs(k ? ", " : "", f);
      cg_cstr(f, g->seqs[k]);
    }
    fputs("};\n\n", f);
  }

  /* calls: target and context segments */
  for (int c = 0; c < p->ncalls; c++) {
    const cg_call *cc = &p->calls[c];
    char name[48];
    seg t;
    fprintf(f, "/* call %d: ", c);
    cg_describe(f, p, cg_call_node(cc));
    fputs("   ", f);
    cg_where(f, p, g->nodes[cg_call_node(cc)].loc);
    fputs(" */\n", f);
    if (seg_of_dom(p, cc->call->target, &t)) {
      po_error(d, g->nodes[cg_call_node(cc)].loc,
               "the target of '%s' is not a sequence the runtime can score", cc->key);
      errors++;
      continue;
    }
    fprintf(f, "static const poc_segment call%d_target[] = {\n", c);
    emit_seg(f, &t);
    fputs("};\n", f);
    snprintf(name, sizeof name, "call%d_context", c);
    if (emit_context(f, p, cc->call, name) < 0) errors++;
  }
  if (p->ncalls) {
    fputs("\nstatic const poc_call calls[] = {\n", f);
    for (int c = 0; c < p->ncalls; c++) {
      const cg_call *cc = &p->calls[c];
      fputs("    {.key = ", f);
      cg_cstr(f, cc->key);
      fprintf(f, ", .model = %d, .want_logp = %d, .want_entropy = %d, ", cc->model, cc->logp >= 0,
              cc->entropy >= 0);
      if (cc->lss >= 0) fputs(".want_logsumsq = 1, ", f);
      fprintf(f, ".trainable = %d,\n"
                 "     .hoisted = %d, .n_target = 1, .target = call%d_target, .n_context = %d, "
                 ".context = call%d_context, .reward = %d},\n",
              cc->dlogp >= 0 || cc->dentropy >= 0, cc->hoisted, c,
              cc->call->nctx ? cc->call->nctx : 1, c, cc->reward);
    }
    fputs("};\n\n", f);
  }

  /* anchors */
  for (int k = 0; k < p->nanchors; k++) {
    char name[48];
    snprintf(name, sizeof name, "anchor%d_context", k);
    if (emit_context(f, p, g->nodes[p->anchors[k]].call, name) < 0) errors++;
  }
  if (p->nanchors) {
    fputs("static const poc_anchor anchors[] = {\n", f);
    for (int k = 0; k < p->nanchors; k++) {
      const ir_node *s = &g->nodes[p->anchors[k]];
      const ir_domain *dm = &g->doms[s->dom];
      const ir_call *c = s->call;
      fputs("    {.name = ", f);
      cg_cstr(f, dm->name);
      fprintf(f, ", .model = %d, .n_context = %d, .context = anchor%d_context, .tokens = %d,\n"
                 "     .temperature = ", s->idx, c && c->nctx ? c->nctx : 1, k, dm->tokens);
      cg_num(f, isfinite(dm->temperature) ? dm->temperature : 1);
      fputs(", .top_p = ", f);
      cg_num(f, isfinite(dm->top_p) ? dm->top_p : 1);
      fputs("}, /* ", f);
      cg_where(f, p, s->loc);
      fputs(" */\n", f);
    }
    fputs("};\n\n", f);
  }

  /* knobs and reports */
  if (g->nknobs) {
    fputs("static const poc_knob knobs[] = {\n", f);
    for (int k = 0; k < g->nknobs; k++) {
      if (!isfinite(g->knobs[k].value)) {
        po_error(d, g->knobs[k].loc, "param '%s' is not a finite number", g->knobs[k].name);
        errors++;
        continue;
      }
      fputs("    {.name = ", f);
      cg_cstr(f, g->knobs[k].name);
      fputs(", .value = ", f);
      cg_num(f, g->knobs[k].value);
      fputs("}, /* ", f);
      cg_where(f, p, g->knobs[k].loc);
      fputs(" */\n", f);
    }
    fputs("};\n\n", f);
  }
  if (g->nreports) {
    fputs("static const char *const reports[] = {\n", f);
    for (int r = 0; r < g->nreports; r++) {
      fputs("    ", f);
      cg_cstr(f, g->reports[r].name);
      fputs(", /* ", f);
      cg_where(f, p, g->reports[r].loc);
      fputs(" */\n", f);
    }
    fputs("};\n\n", f);
  }

  const char *data = decl_path(p, g->data_kind ? g->data_kind : "pairs");
  emit_kernel_images_decl(f, p);
  fputs("static const poc_program poc_this_program = {\n    .name = ", f);
  cg_cstr(f, p->name);
  fputs(",\n    .source = source,\n", f);
  fprintf(f, "    .n_models = %d,\n    .models = models,\n", g->nmodels);
  fprintf(f, "    .data_kind = %s,\n    .data_path = ",
          g->data_kind && !strcmp(g->data_kind, "points") ? "POC_DATA_POINTS" : "POC_DATA_PAIRS");
  cg_cstr(f, data);
  fprintf(f, ",\n    .n_fields = %d,\n    .fields = %s,\n", g->nfields,
          g->nfields ? "fields" : "NULL");
  fprintf(f, "    .n_extra_seqs = %d,\n    .extra_seqs = %s,\n    .eval_path = ", g->nseqs,
          g->nseqs ? "extra_seqs" : "NULL");
  cg_cstr(f, decl_path(p, "prompts"));
  fprintf(f, ",\n    .n_calls = %d,\n    .calls = %s,\n", p->ncalls, p->ncalls ? "calls" : "NULL");
  fprintf(f, "    .n_anchors = %d,\n    .anchors = %s,\n", p->nanchors, p->nanchors ? "anchors" : "NULL");
  fprintf(f, "    .n_knobs = %d,\n    .knobs = %s,\n", g->nknobs, g->nknobs ? "knobs" : "NULL");
  fprintf(f, "    .n_reports = %d,\n    .reports = %s,\n", g->nreports, g->nreports ? "reports" : "NULL");
  errors += emit_train(f, p, d);
  fprintf(f, "    .separable = %d, /* %s */\n", p->separable,
          p->separable ? "no batch reduction: one objective call per micro-batch"
                       : "batch reductions: one objective call over the whole step");
  fputs("    .objective = poc_objective,\n", f);
  emit_kernel_images_fields(f, p);
  fputs("};\n\n", f);

  /* main() first picks the CPU's GEMM kernels: OpenBLAS chose at load time, and a weaker
   * choice than the processor allows is corrected by restarting (runtime/cpu/) */
  if (p->opt->unfused) {
    fputs("/* Built with --unfused: the runtime computes the loss head the textbook way (full\n"
          " * logits, log-softmax, gather), the baseline the fused head is measured against. */\n"
          "int main(int argc, char **argv) {\n"
          "  poc_cpu_start(argc, argv);\n"
          "  char **args = calloc((size_t)argc + 2, sizeof *args);\n"
          "  if (!args) return 1;\n"
          "  args[0] = argv[0];\n"
          "  args[1] = \"--unfused-head\";\n"
          "  for (int i = 1; i < argc; i++) args[i + 1] = argv[i];\n"
          "  int rc = poc_train_main(&poc_this_program, argc + 1, args);\n"
          "  free(args);\n"
          "  return rc;\n"
          "}\n", f);
  } else {
    fputs("int main(int argc, char **argv) {\n"
          "  poc_cpu_start(argc, argv);\n"
          "  return poc_train_main(&poc_this_program, argc, argv);\n"
          "}\n", f);
  }
  return errors ? -1 : 0;
}
