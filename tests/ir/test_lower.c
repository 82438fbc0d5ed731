/* test_lower.c — lowering's diagnostics (message and position) and the passes on
 * graphs lowered from source: fold, cse, dce, hoist, batching, separability. */
#include <stdio.h>
#include <string.h>

#include "../check.h"
#include "ir_test.h"

#define HEAD                                               \
  "policy = model(\"m\")\n"                                \
  "ref = frozen(policy)\n"                                 \
  "data = pairs(\"d.jsonl\")\n"                            \
  "param beta = 0.1\n"

/* Lowers HEAD + body; returns the graph (NULL on errors) and the diagnostics text. */
static ir_graph *lower(const char *body, char *diag, size_t len) {
  char text[4096];
  snprintf(text, sizeof text, "%s%s", HEAD, body);
  FILE *f = tmpfile();
  po_diag *d = po_diag_new(f);
  po_source *src = po_source_from_memory("t.po", text, strlen(text));
  po_program *prog = po_parse(src, d);
  ir_graph *g = NULL;
  if (prog && !po_diag_errors(d) && !po_check(prog, d) && !po_diag_errors(d)) g = ir_lower(prog, d);
  po_diag_free(d);
  fflush(f);
  rewind(f);
  size_t n = fread(diag, 1, len - 1, f);
  diag[n] = 0;
  fclose(f);
  return g;
}

static void expect_error(const char *body, const char *where, const char *msg) {
  char diag[8192];
  ir_graph *g = lower(body, diag, sizeof diag);
  CHECK_MSG(g == NULL, "no error for: %s", body);
  CHECK_MSG(strstr(diag, msg) != NULL, "expected '%s' in:\n%s", msg, diag);
  CHECK_MSG(strstr(diag, where) != NULL, "expected position '%s' in:\n%s", where, diag);
  ir_free(g);
}

static ir_graph *expect_ok(const char *body) {
  char diag[8192];
  ir_graph *g = lower(body, diag, sizeof diag);
  CHECK_MSG(g != NULL, "unexpected errors for:\n%s\n%s", body, diag);
  if (!g) return NULL;
  char err[512];
  int rc = ir_pipeline(g, NULL, err, sizeof err);
  CHECK_MSG(rc == 0, "pipeline: %s", err);
  if (rc) {
    ir_free(g);
    return NULL;
  }
  return g;
}

static void test_diagnostics(void) {
  expect_error("loss = sum(logp(policy, chosen) - logp(policy, rejected))\n", "t.po:5:",
               "cannot combine per-token values of 'chosen' and 'rejected'; slice both to a "
               "common prefix, e.g. x[:8]");
  expect_error("loss = sum(sum(logp(policy, chosen)))\n", "t.po:5:12:",
               "sum reduces over tokens and expects a per-token value, but this is one number "
               "per example");
  expect_error("loss = sum(logp(policy, chosen)) + batch_mean(logp(policy, chosen))\n", "t.po:5:",
               "batch_mean reduces over the examples of a batch and expects one number per "
               "example, but this is per-token over 'chosen'");
  expect_error("loss = logp(policy, chosen)\n", "t.po:5:8:",
               "'loss' must be one number per example, but it is per-token over 'chosen'; "
               "reduce it with sum or mean");
  expect_error("loss = batch_mean(sum(logp(policy, chosen)))\n", "t.po:5:",
               "'loss' must be one number per example, but it is one number per batch");
  expect_error("loss = beta * 2\n", "t.po:5:", "but it is a constant");
  expect_error("loss = sum(logp(ref, chosen))\n", "t.po:5:", "does not depend on a trainable model");
  expect_error("loss = sg(sum(logp(policy, chosen)))\n", "t.po:5:", "does not depend on a trainable model");
  expect_error("loss = sum(logp(policy, chosen)) > 0\n", "t.po:5:", "does not depend on a trainable model");
  expect_error("loss = sum(logp(policy, beta))\n", "t.po:5:25:",
               "logp expects a sequence as its second argument");
  expect_error("loss = sum(logp(policy, chosen)[:beta])\n", "t.po:5:",
               "a slice bound must be a constant, but 'beta' is a knob");
  expect_error("loss = sum(logp(policy, chosen)[:1.5])\n", "t.po:5:",
               "a slice bound must be a non-negative integer, but it is 1.5");
  expect_error("loss = sum(logp(policy, chosen)) + len(sample(policy, prompt, tokens=4))\n",
               "t.po:5:", "sample(...) must be bound to a name");
  expect_error("a = sample(policy, prompt, tokens=4)\nloss = sum(logp(policy, chosen)) * a\n",
               "t.po:6:", "needs a number, but this is 'a', a sequence");
  expect_error("a = sample(policy, prompt)\nloss = sum(logp(policy, a))\n", "t.po:5:",
               "sample needs tokens=K");
  expect_error("m = pick(logp(policy, rejected), 2)\nloss = sum(logp(policy, rejected) * m)\n",
               "t.po:5:", "pick expects a sequence as its first argument");
  expect_error("m = pick(rejected, logp(policy, rejected))\nloss = sum(logp(policy, rejected) * m)\n",
               "t.po:5:", "pick's count must be one number per example");
  expect_error("def S(m, y) = sum(logp(m, y))\nloss = S(chosen, policy)\n", "t.po:5:",
               "logp expects a model as its first argument");
  expect_error("def S(m, y) = sum(logp(m, y))\nloss = S(chosen, policy)\n", "t.po:6:",
               "note: in 'S' used here");
  expect_error("loss = sum(logp(policy, chosen))\nreport r = logp(policy, chosen)\n", "t.po:6:",
               "report 'r' must be one number per example or per batch");
  expect_error("loss = sum(logp(policy, chosen ++ rejected))\n", "t.po:5:",
               "the target of logp must be one sequence");
  expect_error("loss = sum(logp(policy, chosen)) + chosen ++ [2]\n", "t.po:5:", "needs a number");
  expect_error("loss = sum(logp(policy, chosen)[3:1])\n", "t.po:5:", "is empty");
  expect_error("def F(y) = y + sum(logp(policy, chosen))\nloss = F(chosen | prompt)\n", "t.po:5:",
               "a sequence with a context (y | ctx), which only logp, entropy and logsumsq take");
  /* what the language can say */
  ir_free(expect_ok("x = logp(policy, chosen)[:4] * logp(policy, rejected)[:4]\nloss = sum(x)\n"));
  ir_free(expect_ok("sep = [2]\nloss = sum(logp(policy, chosen | prompt ++ sep ++ rejected ++ sep))\n"));
  ir_free(expect_ok("loss = sum(logp(policy, prompt[1:] | prompt[:1])) * clamp(len(chosen), 1, 4)\n"));
}

static int count_calls(const ir_graph *g, const char *key) {
  int n = 0;
  for (int i = 0; i < g->n; i++)
    n += (g->nodes[i].op == IR_LOGP || g->nodes[i].op == IR_ENTROPY) && !strcmp(g->nodes[i].key, key);
  return n;
}

static int find_call(const ir_graph *g, const char *key) {
  for (int i = 0; i < g->n; i++)
    if (g->nodes[i].op == IR_LOGP && !strcmp(g->nodes[i].key, key)) return i;
  return -1;
}

static void test_cse_dce_fold(void) {
  /* logp(ref, chosen) written in two defs is one call; ref on rejected stays distinct */
  ir_graph *g = expect_ok("def A(y) = sum(logp(ref, y))\ndef B(y) = mean(logp(ref, y))\n"
                          "u = sum(logp(ref, prompt))\n"
                          "loss = (1 + 2 * 3) * beta * sum(logp(policy, chosen)) - A(chosen) - "
                          "B(chosen) + mean(logp(ref, rejected))\n");
  if (!g) return;
  CHECK(count_calls(g, "ref/chosen") == 1);
  CHECK(count_calls(g, "ref/rejected") == 1);
  CHECK(count_calls(g, "policy/chosen") == 1);
  CHECK(count_calls(g, "ref/prompt") == 0); /* dce: u is read by nothing */
  bool seven = false, knob = false;
  for (int i = 0; i < g->n; i++) {
    const ir_node *n = &g->nodes[i];
    seven |= n->op == IR_CONST && n->num == 7;
    knob |= n->op == IR_PARAM;
    if (n->op == IR_MUL || n->op == IR_ADD)
      CHECK_MSG(!(g->nodes[n->in[0]].op == IR_CONST && g->nodes[n->in[1]].op == IR_CONST),
                "%%%d combines two numbers and was not folded", i);
  }
  CHECK(seven);
  CHECK(knob); /* knobs are runtime values */
  ir_free(g);
}

static void test_hoist_batch(void) {
  ir_graph *g = expect_ok(
      "a = sample(policy, prompt, tokens=4)\n"
      "ch = sum(logp(policy, chosen)) - sum(logp(ref, chosen))\n"
      "rj = sum(logp(policy, rejected)) - sum(logp(ref, rejected))\n"
      "ra = mean(logp(policy, a) - logp(ref, a))\n"
      "loss = -logsigmoid(beta * (ch - rj)) + ra + batch_mean(sum(logp(ref, chosen)))\n");
  if (!g) return;
  int rc = find_call(g, "ref/chosen"), rr = find_call(g, "ref/rejected"),
      ra = find_call(g, "ref/a"), pc = find_call(g, "policy/chosen");
  CHECK(rc >= 0 && rr >= 0 && ra >= 0 && pc >= 0);
  if (rc < 0 || rr < 0 || ra < 0 || pc < 0) goto out;
  CHECK(g->nodes[rc].flags & IR_F_HOIST);
  CHECK(g->nodes[rr].flags & IR_F_HOIST);
  CHECK(!(g->nodes[ra].flags & IR_F_HOIST)); /* reads this step's anchor */
  CHECK(!(g->nodes[pc].flags & IR_F_HOIST)); /* trainable */
  for (int i = 0; i < g->n; i++) {
    const ir_node *n = &g->nodes[i];
    if (n->op == IR_SUM && n->in[0] == rc) {
      CHECK(n->flags & IR_F_HOIST);
      CHECK(n->flags & IR_F_CACHE); /* per-step work reads it */
    }
    if (n->op == IR_BMEAN) CHECK(!(n->flags & IR_F_HOIST)); /* the batch changes each step */
    if (n->flags & IR_F_HOIST) CHECK(!(n->flags & (IR_F_TRAIN | IR_F_SAMPLED | IR_F_RANDOM)));
  }
  /* batching: policy per step (chosen, rejected), policy after sampling (a), ref hoisted
     (chosen, rejected), ref after sampling (a) */
  CHECK(g->nplan == 4);
  int seen = 0;
  for (int p = 0; p < g->nplan; p++) {
    const ir_batch *b = &g->plan[p];
    for (int k = 0; k < b->ncalls; k++) CHECK(g->nodes[b->calls[k]].idx == b->model);
    seen += b->ncalls;
    if (b->model == 1 && b->hoisted) CHECK(b->ncalls == 2);
    if (b->model == 0 && !b->after_sample) CHECK(b->ncalls == 2 && !b->hoisted);
    if (b->after_sample) CHECK(b->ncalls == 1);
  }
  CHECK(seen == 6);
  CHECK(g->separable); /* the batch mean reads only the reference */
out:
  ir_free(g);
}

static void test_separability(void) {
  ir_graph *g = expect_ok("s = sum(logp(policy, chosen))\nloss = s - batch_mean(s)\n");
  if (g) CHECK(!g->separable);
  ir_free(g);
  g = expect_ok("s = sum(logp(policy, chosen))\nloss = s - sg(batch_mean(s))\n");
  if (g) CHECK(g->separable);
  ir_free(g);
  g = expect_ok("s = sum(logp(policy, chosen))\nloss = s / batch_std(s)\n");
  if (g) CHECK(!g->separable);
  ir_free(g);
}

/* batch_sort and pos: their diagnostics, levels, and what hoisting and separability
 * make of them */
static void test_sort_pos(void) {
  expect_error("loss = sum(logp(policy, chosen)) + sum(batch_sort(logp(policy, chosen)))\n", "t.po:5:",
               "batch_sort sorts the examples of a batch and expects one number per example, but "
               "this is per-token over 'chosen'");
  expect_error("loss = sum(pos(logp(policy, chosen)) * logp(policy, chosen))\n", "t.po:5:",
               "pos expects a sequence");
  /* a sorted reference margin depends on the step's batch: never hoisted */
  ir_graph *g = expect_ok("r = sum(logp(ref, chosen)) - sum(logp(ref, rejected))\n"
                          "loss = sum(logp(policy, chosen)) - batch_sort(r)\n");
  if (g) {
    CHECK(g->separable); /* no gradient goes through the sort */
    for (int i = 0; i < g->n; i++)
      if (g->nodes[i].op == IR_BSORT) {
        CHECK(g->nodes[i].level == IR_LEXAMPLE);
        CHECK(!(g->nodes[i].flags & (IR_F_HOIST | IR_F_DATA)));
      }
  }
  ir_free(g);
  g = expect_ok("loss = -logsigmoid(batch_sort(sum(logp(policy, chosen))))\n");
  if (g) CHECK(!g->separable);
  ir_free(g);
  g = expect_ok("w = where(pos(chosen) < len(rejected), 1, beta)\n"
                "loss = sum(w * logp(policy, chosen))\n");
  if (g) {
    int npos = 0;
    for (int i = 0; i < g->n; i++)
      if (g->nodes[i].op == IR_POS) {
        npos++;
        CHECK(g->nodes[i].level == IR_LTOKEN && !strcmp(g->doms[g->nodes[i].dom].name, "chosen"));
        CHECK(!(g->nodes[i].flags & IR_F_TRAIN));
      }
    CHECK(npos == 1);
    CHECK(g->separable);
  }
  ir_free(g);
}

/* the keys probe reads: as written, names of bound tokens, default context omitted */
static void test_keys(void) {
  ir_graph *g = expect_ok("sep = [2]\nc = prompt ++ [7]\n"
                          "loss = sum(logp(policy, chosen | prompt ++ sep ++ rejected ++ sep)) + "
                          "sum(logp(policy, prompt[1:] | prompt[:1])) + sum(logp(policy, rejected | c)) + "
                          "sum(logp(policy, chosen | prompt))\n");
  if (!g) return;
  CHECK(count_calls(g, "policy/chosen|prompt,sep,rejected,sep") == 1);
  CHECK(count_calls(g, "policy/prompt[1:]|prompt[:1]") == 1);
  CHECK(count_calls(g, "policy/rejected|c") == 1);
  CHECK(count_calls(g, "policy/chosen") == 1);
  ir_free(g);
  /* `y | ctx` handed to a def reaches its logp whole */
  g = expect_ok("sep = [2]\ndef S(m, y) = sum(logp(m, y))\n"
                "loss = S(policy, chosen | prompt ++ sep) - S(ref, chosen)\n");
  if (g) {
    CHECK(count_calls(g, "policy/chosen|prompt,sep") == 1);
    CHECK(count_calls(g, "ref/chosen") == 1);
  }
  ir_free(g);
}

int main(void) {
  test_diagnostics();
  test_cse_dce_fold();
  test_hoist_batch();
  test_separability();
  test_keys();
  test_sort_pos();
  return check_summary("ir.lower");
}
