/* memplan.c — the memplan pass: the memory of one training micro-step, planned before
 * any run, from the train block (micro_batch, max_len) and each model's config.json.
 *
 * Every model gets the arena the runtime will allocate for it: runtime/model.c's carve
 * lists its per-layer saved activations and scratch with lifetimes over the step
 * (forward, head, objective, head backward, backward), and runtime/mplan.c packs them,
 * so the figure printed here is the arena the run allocates for the same token count.
 * The token count is a bound: micro_batch examples of every call of the model, a call
 * being at most max_len tokens of prompt and response (more for contexts naming several
 * sequences, literal tokens or anchors). Weights, adapters, gradients and AdamW's moments
 * live the whole run and are added as they are allocated. The figures are given for the
 * CPU device (fp32) and the CUDA device (bf16 compute, fp32 master and optimizer state).
 * The verifier after the pass is poc_mplan_check on every arena. */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "codegen.h"

static int train_int(const po_program *ast, const char *key, int dflt) {
  for (int i = 0; i < ast->nstmts; i++) {
    const po_stmt *s = ast->stmts[i];
    if (s->kind != PO_S_TRAIN) continue;
    for (int j = 0; j < s->nitems; j++)
      if (!strcmp(s->items[j].key, key) && s->items[j].value->kind == PO_E_NUM &&
          s->items[j].value->num >= 1 && s->items[j].value->num < 1 << 30)
        return (int)s->items[j].value->num;
  }
  return dflt;
}

/* precision = bf16, the train block's default, unless it says fp32 */
static bool train_bf16(const po_program *ast) {
  for (int i = 0; i < ast->nstmts; i++) {
    const po_stmt *s = ast->stmts[i];
    if (s->kind != PO_S_TRAIN) continue;
    for (int j = 0; j < s->nitems; j++)
      if (!strcmp(s->items[j].key, "precision") && s->items[j].value->kind == PO_E_NAME)
        return strcmp(s->items[j].value->str, "fp32") != 0;
  }
  return true;
}

/* The most tokens one domain's vector can have per example. */
static long dom_bound(const ir_graph *g, int d, int max_len) {
  const ir_domain *dm = &g->doms[d];
  switch (dm->kind) {
  case IR_DOM_SEQ: return max_len;
  case IR_DOM_ANCHOR: return dm->tokens;
  case IR_DOM_SLICE: {
    long b = dom_bound(g, dm->base, max_len);
    long hi = dm->hi >= 0 && dm->hi < b ? dm->hi : b;
    return hi > dm->lo ? hi - dm->lo : 0;
  }
  case IR_DOM_PREFIX: return dm->hi;
  }
  return max_len;
}

/* A call's tokens, context and target, per example. The data's truncation keeps a prompt
 * and one response within max_len together. */
static long call_bound(const ir_graph *g, const ir_call *c, int max_len) {
  const ir_domain *t = &g->doms[c->target];
  bool prompt_only = c->nctx == 0 || (c->nctx == 1 && c->ctx[0].dom >= 0 &&
                                      g->doms[c->ctx[0].dom].kind == IR_DOM_SEQ &&
                                      !strcmp(g->doms[c->ctx[0].dom].name, "prompt"));
  if (prompt_only && t->kind == IR_DOM_SEQ && strcmp(t->name, "prompt")) return max_len;
  long n = dom_bound(g, c->target, max_len);
  if (c->nctx == 0) return n + max_len;
  for (int k = 0; k < c->nctx; k++)
    n += c->ctx[k].dom >= 0 ? dom_bound(g, c->ctx[k].dom, max_len) : c->ctx[k].ntoks;
  return n;
}

static const char *model_dir(const ir_graph *g, int m) {
  const ir_model *md = &g->models[m];
  return md->of >= 0 ? g->models[md->of].path : md->path;
}

void cg_memplan_free(cg_memplan *mp) {
  for (int k = 0; k < 2; k++)
    for (int m = 0; m < mp->nmodels; m++) poc_mplan_free(&mp->arena[k][m]);
  for (int k = 0; k < 2; k++) free(mp->arena[k]);
  free(mp->tokens);
  memset(mp, 0, sizeof *mp);
}

int cg_memplan_run(const cg_prog *p, cg_memplan *mp) {
  const ir_graph *g = p->g;
  memset(mp, 0, sizeof *mp);
  mp->micro_batch = train_int(p->ast, "micro_batch", 8);
  bool bf16 = train_bf16(p->ast);
  int batch = train_int(p->ast, "batch", 128);
  if (batch < mp->micro_batch) mp->micro_batch = batch; /* as the runtime clamps it */
  mp->max_len = train_int(p->ast, "max_len", 512);
  mp->nmodels = g->nmodels;
  mp->tokens = ir_xcalloc((size_t)g->nmodels + 1, sizeof *mp->tokens);
  for (int k = 0; k < 2; k++) mp->arena[k] = ir_xcalloc((size_t)g->nmodels + 1, sizeof *mp->arena[k]);
  for (int c = 0; c < p->ncalls; c++) {
    long n = (long)mp->micro_batch * call_bound(g, p->calls[c].call, mp->max_len);
    long t = mp->tokens[p->calls[c].model] + n;
    mp->tokens[p->calls[c].model] = t > 0x3fffffff ? 0x3fffffff : (int)t;
  }
  for (int m = 0; m < g->nmodels; m++) {
    const ir_model *md = &g->models[m];
    const char *dir = model_dir(g, m);
    if (!mp->tokens[m]) mp->tokens[m] = 1; /* the runtime's floor for an unused model */
    bool reward = false;
    for (int c = 0; c < p->ncalls; c++) reward |= p->calls[c].model == m && p->calls[c].reward;
    poc_mplan_model in;
    memset(&in, 0, sizeof in);
    char err[POC_ERR_LEN];
    int fresh = 0;
    if (!dir || (reward ? poc_reward_config(dir, &in.cfg, &fresh, err) : poc_config_load(dir, &in.cfg, err))) {
      snprintf(mp->why, sizeof mp->why, "model '%s': %s", md->name, dir ? err : "no folder");
      return -1;
    }
    poc_layout lay, alay;
    memset(&alay, 0, sizeof alay);
    if (poc_layout_init(&lay, &in.cfg, err)) {
      snprintf(mp->why, sizeof mp->why, "model '%s': %s", md->name, err);
      return -1;
    }
    /* a frozen snapshot of a LoRA model is a view of its base: no weights of its own */
    bool view = md->of >= 0 && g->models[md->of].lora_r > 0;
    poc_lora_cfg lc = {md->lora_r, md->lora_alpha, md->lora_dropout, md->lora_targets};
    bool lora = md->lora_r > 0;
    poc_lora_cfg f;
    if (lora && md->lora_adapter && !poc_lora_read_config(md->lora_adapter, &f, NULL, 0, err)) {
      lc.r = f.r; /* the run takes the adapter folder's shape (it rejects a clash) */
      lc.targets = f.targets;
    }
    if (lora && poc_lora_layout(&lay, &lc, &alay, err)) {
      snprintf(mp->why, sizeof mp->why, "model '%s': %s", md->name, err);
      free(lay.tensors);
      return -1;
    }
    in.max_tokens = mp->tokens[m];
    in.trainable = md->trainable;
    in.lora = lora ? &lc : NULL;
    int rc = 0;
    for (int k = 0; k < 2 && !rc; k++) {
      if (k == 0) mp->cpu_prec = poc_mplan_cpu_train(&in, bf16);
      else poc_mplan_cuda(&in);
      rc = poc_mplan_add_model(&mp->dev[k], &in, &lay, lora ? &alay : NULL, view, &mp->arena[k][m], err);
    }
    free(lay.tensors);
    free(alay.tensors);
    if (rc) {
      snprintf(mp->why, sizeof mp->why, "model '%s': %s", md->name, err);
      return -1;
    }
  }
  mp->ok = true;
  return 0;
}

int cg_memplan_verify(const cg_memplan *mp, char *err, size_t errlen) {
  for (int k = 0; k < 2 && mp->ok; k++)
    for (int m = 0; m < mp->nmodels; m++)
      if (poc_mplan_check(&mp->arena[k][m], err, errlen)) return -1;
  return 0;
}

static double gib(size_t b) { return (double)b / (1024.0 * 1024.0 * 1024.0); }

void cg_memplan_summary(const cg_memplan *mp, FILE *f) {
  if (!mp->ok) {
    fprintf(f, "peak device memory: unknown for micro_batch %d, max_len %d (%s)\n", mp->micro_batch,
            mp->max_len, mp->why);
    return;
  }
  fprintf(f, "peak device memory: %.3f GiB for micro_batch %d, max_len %d (cpu %s; cuda bf16: "
          "%.3f GiB)\n", gib(mp->dev[0].total), mp->micro_batch, mp->max_len, mp->cpu_prec,
          gib(mp->dev[1].total));
}

void cg_memplan_print(const cg_memplan *mp, const cg_prog *p, FILE *f) {
  const ir_graph *g = p->g;
  cg_memplan_summary(mp, f);
  /* the objective runs on the host: its vectors per example, its arrays per batch */
  cg_objmem om;
  if (cg_objective_memory(p, &om) == 0) {
    if (om.unfused) {
      fprintf(f, "objective (host): one buffer per node, %d nodes over the batch\n", om.unfused);
    } else {
      fprintf(f, "objective (host): scratch %zu vectors of T doubles (%zu without sharing), "
              "%d per-example arrays, %d pick masks\n", om.scratch.peak, om.scratch.sum,
              om.stored, om.masks);
      char names[64][16];
      const char *steps[64];
      for (int s = 0; s < 64; s++) {
        snprintf(names[s], sizeof names[s], "stage %d", s);
        steps[s] = names[s];
      }
      bool fits = true;
      for (int i = 0; i < om.scratch.n; i++) fits &= om.scratch.buf[i].last < 64;
      if (fits) poc_mplan_print(&om.scratch, f, "  ", steps);
    }
    poc_mplan_free(&om.scratch);
  }
  if (!mp->ok) return;
  static const char *const dev[2] = {"cpu fp32", "cuda bf16"};
  for (int k = 0; k < 2; k++) {
    const poc_mplan_device *d = &mp->dev[k];
    fprintf(f, "%s: weights %zu, gradients %zu, optimizer %zu, activation arenas %zu: %zu bytes\n",
            dev[k], d->weights, d->grads, d->optim, d->arenas, d->total);
    for (int m = 0; m < mp->nmodels; m++) {
      const poc_mplan *a = &mp->arena[k][m];
      fprintf(f, "  %s arena, %d tokens: %zu bytes (%zu without sharing), %d buffers\n",
              g->models[m].name, mp->tokens[m], a->peak, a->sum, a->n);
      if (k == 0) poc_mplan_print(a, f, "    ", NULL);
    }
  }
}
