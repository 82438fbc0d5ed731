/* test_fuse.c — the recompute and fuse passes on graphs lowered from source, and their
 * verifier on groupings broken on purpose: a value read before its group computes it, a
 * node in no group, a per-example value read across stages without its store mark, a
 * model output read by a second loop that needs nothing the first could not give, a
 * per-token value in two stages without its recompute mark. */
#include <stdio.h>
#include <string.h>

#include "../check.h"
#include "ir.h"

#define HEAD                                               \
  "policy = model(\"m\")\n"                                \
  "ref = frozen(policy)\n"                                 \
  "data = pairs(\"d.jsonl\")\n"                            \
  "param beta = 0.1\n"

static ir_graph *build(const char *body, bool unfused) {
  char text[4096];
  snprintf(text, sizeof text, "%s%s", HEAD, body);
  FILE *f = tmpfile();
  po_diag *d = po_diag_new(f);
  po_source *src = po_source_from_memory("t.po", text, strlen(text));
  po_program *prog = po_parse(src, d);
  ir_graph *g = NULL;
  if (prog && !po_diag_errors(d) && !po_check(prog, d) && !po_diag_errors(d)) g = ir_lower(prog, d);
  po_diag_free(d);
  fclose(f);
  CHECK_MSG(g != NULL, "lowering failed for:\n%s", body);
  if (!g) return NULL;
  g->unfused = unfused;
  char err[512];
  int rc = ir_pipeline(g, NULL, err, sizeof err);
  CHECK_MSG(rc == 0, "pipeline: %s", err);
  if (rc) {
    ir_free(g);
    return NULL;
  }
  return g;
}

/* The verifier's message after a corruption must contain `want`. */
static void expect_reject(const ir_graph *g, const char *want, const char *what) {
  char err[512] = "";
  int rc = ir_verify(g, err, sizeof err);
  CHECK_MSG(rc != 0, "%s: the verifier accepts it", what);
  CHECK_MSG(strstr(err, want) != NULL, "%s: expected '%s' in: %s", what, want, err);
}

/* Home groups again from first appearance, as fuse sets them. */
static void rehome(ir_graph *g) {
  for (int i = 0; i < g->n; i++) g->nodes[i].grp = -1;
  for (int gi = 0; gi < g->fusion.ngroups; gi++)
    for (int k = 0; k < g->fusion.groups[gi].nmem; k++)
      if (g->nodes[g->fusion.groups[gi].mem[k]].grp < 0) g->nodes[g->fusion.groups[gi].mem[k]].grp = gi;
}

static int find_group(const ir_graph *g, ir_group_kind kind, int stage, int at) {
  for (int gi = 0; gi < g->fusion.ngroups; gi++)
    if (g->fusion.groups[gi].kind == kind && g->fusion.groups[gi].stage == stage &&
        g->fusion.groups[gi].at == at)
      return gi;
  return -1;
}

static bool has_member(const ir_group *gr, int x) {
  for (int k = 0; k < gr->nmem; k++)
    if (gr->mem[k] == x) return true;
  return false;
}

/* DPO: one stage, every node in one home group, named after the .po's values. */
static void test_dpo(void) {
  ir_graph *g = build("def S(m, y) = sum(logp(m, y))\n"
                      "margin = S(policy, chosen) - S(ref, chosen) - S(policy, rejected) + S(ref, rejected)\n"
                      "loss = -logsigmoid(beta * margin)\n", false);
  if (!g) return;
  CHECK(g->fusion.nstages == 1);
  CHECK(g->fusion.ngroups > 3);
  int named = 0;
  for (int gi = 0; gi < g->fusion.ngroups; gi++) {
    const ir_group *gr = &g->fusion.groups[gi];
    CHECK_MSG(!strncmp(gr->name, "grp", 3), "group name %s", gr->name);
    named += strstr(gr->name, "margin_L6") != NULL || strstr(gr->name, "loss_L7") != NULL;
  }
  CHECK_MSG(named >= 1, "no group carries the names margin or loss with their lines");
  for (int i = 0; i < g->n; i++) CHECK(g->nodes[i].grp >= 0 && g->nodes[i].grp < g->fusion.ngroups);
  /* chosen's two sums share one loop: each call's log-probs read once per token */
  int loops = 0;
  for (int gi = 0; gi < g->fusion.ngroups; gi++) loops += g->fusion.groups[gi].kind == IR_G_TOKENS;
  CHECK_MSG(loops == 4, "%d token loops (two forward over chosen and rejected, two gradient writes)", loops);

  /* a group reading a value before it is computed: the loop over chosen after the
     per-example statements that read its sums */
  int tl = find_group(g, IR_G_TOKENS, 0, 0), ex = find_group(g, IR_G_EXAMPLE, 0, 1);
  CHECK(tl >= 0 && ex > tl);
  if (tl >= 0 && ex > tl) {
    ir_group t = g->fusion.groups[tl];
    g->fusion.groups[tl] = g->fusion.groups[ex];
    g->fusion.groups[ex] = t;
    rehome(g);
    expect_reject(g, "before", "a loop moved after its readers");
    g->fusion.groups[ex] = g->fusion.groups[tl];
    g->fusion.groups[tl] = t;
    rehome(g);
    char err[512];
    CHECK_MSG(ir_verify(g, err, sizeof err) == 0, "restored: %s", err);
  }
  /* a node in no group */
  if (ex >= 0) {
    ir_group *gr = &g->fusion.groups[ex];
    int saved = gr->nmem;
    gr->nmem--;
    int x = gr->mem[gr->nmem];
    g->nodes[x].grp = -1;
    expect_reject(g, "in no group", "a node dropped");
    gr->nmem = saved;
    g->nodes[x].grp = ex;
  }
  ir_free(g);
}

/* A loop reading a model output that a second loop over the same domain reads again
 * without needing anything the first computes: fusion must have put them together. */
static void test_head_once(void) {
  ir_graph *g = build("x = logp(policy, chosen)\n"
                      "loss = sum(x) + sum(x * x)\n", false);
  if (!g) return;
  int tl = find_group(g, IR_G_TOKENS, 0, 0);
  CHECK(tl >= 0);
  if (tl < 0) {
    ir_free(g);
    return;
  }
  /* split sum(x) out of the loop into a loop of its own right after it */
  ir_group *gr = &g->fusion.groups[tl];
  int sx = -1;
  for (int k = 0; k < gr->nmem; k++) {
    const ir_node *n = &g->nodes[gr->mem[k]];
    if (n->op == IR_SUM && ir_head_call(g->nodes[n->in[0]].op)) sx = gr->mem[k];
  }
  CHECK_MSG(sx >= 0, "sum(x) is not in the first loop");
  if (sx >= 0) {
    ir_fusion *F = &g->fusion;
    ir_group *v = ir_alloc(g, (size_t)(F->ngroups + 1) * sizeof *v);
    memcpy(v, F->groups, (size_t)(tl + 1) * sizeof *v);
    memcpy(v + tl + 2, F->groups + tl + 1, (size_t)(F->ngroups - tl - 1) * sizeof *v);
    ir_group *a = &v[tl], *b = &v[tl + 1];
    *b = *a;
    b->name = "grp_split";
    b->at = a->at + 1;
    int *am = ir_alloc(g, (size_t)a->nmem * sizeof *am), na = 0;
    for (int k = 0; k < a->nmem; k++)
      if (a->mem[k] != sx) am[na++] = a->mem[k];
    int *bm = ir_alloc(g, sizeof *bm);
    bm[0] = sx;
    a->mem = am;
    a->nmem = na;
    b->mem = bm;
    b->nmem = 1;
    F->groups = v;
    F->ngroups++;
    rehome(g);
    expect_reject(g, "must be read once", "a model output read by two loops");
  }
  ir_free(g);
}

/* Two stages (a batch mean): per-token values recomputed in the second, per-example ones
 * stored; the verifier wants both marks. */
static void test_stages(void) {
  ir_graph *g = build("w = logp(policy, chosen) * beta\n"
                      "s = sum(w)\n"
                      "loss = s - batch_mean(s) + sum(w * w) * batch_mean(sum(w))\n", false);
  if (!g) return;
  CHECK_MSG(g->fusion.nstages >= 2, "%d stages", g->fusion.nstages);
  int recomputed = -1, stored = -1;
  for (int i = 0; i < g->n; i++) {
    if ((g->nodes[i].flags & IR_F_RECOMP) && recomputed < 0) recomputed = i;
    if ((g->nodes[i].flags & IR_F_STORE) && g->nodes[i].level == IR_LEXAMPLE && ir_op_info(g->nodes[i].op)->cls != IR_BPERM && stored < 0)
      stored = i;
  }
  CHECK_MSG(recomputed >= 0, "no per-token value is recomputed in stage 1");
  CHECK_MSG(stored >= 0, "no per-example value is stored");
  /* the recomputed value sits in a loop of each stage */
  if (recomputed >= 0) {
    int in0 = 0, in1 = 0;
    for (int gi = 0; gi < g->fusion.ngroups; gi++) {
      const ir_group *gr = &g->fusion.groups[gi];
      if (gr->kind == IR_G_TOKENS && has_member(gr, recomputed)) *(gr->stage ? &in1 : &in0) += 1;
    }
    CHECK_MSG(in0 == 1 && in1 >= 1, "in %d loops of stage 0, %d of later ones", in0, in1);
    g->nodes[recomputed].flags &= ~(unsigned)IR_F_RECOMP;
    expect_reject(g, "not a recomputed per-token value", "recompute mark cleared");
    g->nodes[recomputed].flags |= IR_F_RECOMP;
  }
  if (stored >= 0) {
    g->nodes[stored].flags &= ~(unsigned)IR_F_STORE;
    expect_reject(g, "not marked stored", "store mark cleared");
    g->nodes[stored].flags |= IR_F_STORE;
  }
  char err[512];
  CHECK_MSG(ir_verify(g, err, sizeof err) == 0, "restored: %s", err);
  ir_free(g);
}

/* Fusion off: one group per node, in IR order. */
static void test_unfused(void) {
  ir_graph *g = build("margin = sum(logp(policy, chosen)) - sum(logp(policy, rejected))\n"
                      "loss = -logsigmoid(beta * margin)\n", true);
  if (!g) return;
  CHECK(g->fusion.ngroups == g->n);
  for (int gi = 0; gi < g->fusion.ngroups && gi < g->n; gi++) {
    CHECK(g->fusion.groups[gi].kind == IR_G_NODE);
    CHECK(g->fusion.groups[gi].nmem == 1 && g->fusion.groups[gi].mem[0] == gi);
    CHECK(g->nodes[gi].grp == gi);
  }
  bool margin = false;
  for (int gi = 0; gi < g->fusion.ngroups; gi++) margin |= strstr(g->fusion.groups[gi].name, "_margin_L5") != NULL;
  CHECK_MSG(margin, "no function is named after margin and its line");
  /* a node reading a later one's value: swap two dependent singletons */
  int a = g->loss, b = g->nodes[a].in[0];
  ir_group t = g->fusion.groups[a];
  g->fusion.groups[a] = g->fusion.groups[b];
  g->fusion.groups[b] = t;
  rehome(g);
  expect_reject(g, "before", "singletons out of order");
  ir_free(g);
}

int main(void) {
  test_dpo();
  test_head_once();
  test_stages();
  test_unfused();
  return check_summary("passes.fuse");
}
