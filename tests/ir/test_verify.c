/* test_verify.c — the verifier rejects malformed graphs (and accepts the well-formed
 * one each case starts from), and pick() draws the masks its documentation promises. */
#include <stdio.h>
#include <string.h>

#include "../check.h"
#include "pocrt.h"
#include "ir_test.h"

static const po_loc nl;

/* A well-formed base: loss = sum(x) - sum(r), x trainable, r frozen. */
typedef struct base { ir_graph *g; int x, r, sx, sr, loss; } base;

static base make(void) {
  base b;
  b.g = t_graph();
  b.x = t_call(b.g, IR_LOGP, 0, "chosen", -1);
  b.r = t_call(b.g, IR_LOGP, 1, "chosen", -1);
  b.sx = ir_reduce(b.g, IR_SUM, b.x, -1, nl);
  b.sr = ir_reduce(b.g, IR_SUM, b.r, -1, nl);
  b.loss = ir_binary(b.g, IR_SUB, b.sx, b.sr, nl);
  b.g->loss = b.loss;
  return b;
}

static void expect_reject(base b, const char *what, const char *msg) {
  char err[512] = "";
  int rc = ir_verify(b.g, err, sizeof err);
  CHECK_MSG(rc == -1, "%s: accepted", what);
  CHECK_MSG(strstr(err, msg) != NULL, "%s: expected '%s', got '%s'", what, msg, err);
  ir_free(b.g);
}

static void test_verifier(void) {
  char err[512];
  base b = make();
  CHECK_MSG(ir_verify(b.g, err, sizeof err) == 0, "%s", err);
  ir_free(b.g);

  b = make();
  b.g->nodes[b.sx].in[0] = b.loss;
  expect_reject(b, "ssa", "SSA order");
  b = make();
  b.g->nodes[b.loss].in[1] = -1;
  expect_reject(b, "dangling", "dangling");
  b = make();
  b.g->nodes[b.loss].nin = 1;
  expect_reject(b, "arity", "1 inputs, expected 2");
  b = make();
  ir_binary(b.g, IR_ADD, b.x, t_call(b.g, IR_LOGP, 0, "rejected", -1), nl);
  expect_reject(b, "domains", "combines per-token values of 'rejected' and 'chosen'");
  b = make();
  b.g->nodes[b.loss].level = IR_LTOKEN;
  b.g->nodes[b.loss].dom = 1;
  expect_reject(b, "level", "level token, but its inputs make it example");
  b = make();
  ir_reduce(b.g, IR_SUM, b.sx, -1, nl);
  expect_reject(b, "token reduction", "is not a per-token value");
  b = make();
  ir_reduce(b.g, IR_BMEAN, b.x, -1, nl);
  expect_reject(b, "batch reduction", "per-example value to a batch value");
  b = make();
  b.g->loss = b.x;
  expect_reject(b, "loss level", "loss %0 is not per-example");
  b = make();
  b.g->loss = 99;
  expect_reject(b, "loss range", "out of range");
  b = make();
  b.g->grads = ir_alloc(b.g, sizeof *b.g->grads);
  b.g->grads[0] = (ir_grad){.call = b.r, .grad = b.r};
  b.g->ngrads = 1;
  expect_reject(b, "frozen grad", "not a call of a trainable model");
  b = make();
  b.g->grads = ir_alloc(b.g, sizeof *b.g->grads);
  b.g->grads[0] = (ir_grad){.call = b.x, .grad = b.sx};
  b.g->ngrads = 1;
  expect_reject(b, "grad shape", "is not shaped like");
  b = make();
  ir_const(b.g, 1.0 / 0.0, nl);
  expect_reject(b, "const", "not finite");
  b = make();
  b.g->nodes[b.x].call = NULL;
  expect_reject(b, "call", "must be per-token over its target");
  b = make();
  ir_slice(b.g, b.x, 0, 4, nl);
  b.g->nodes[b.g->n - 1].dom = 2;
  expect_reject(b, "slice domain", "does not follow from");
  b = make();
  ir_bcast(b.g, b.x, b.sx, nl);
  expect_reject(b, "bcast", "cannot broadcast token to example");
}

/* pick: floor(n) distinct positions, clamped to the length, reproducible, and drawn by
 * the partial Fisher–Yates the documentation states */
static void test_pick(void) {
  double m[16], m2[16];
  for (int len = 0; len <= 12; len++)
    for (double n = -1; n <= 14; n += 0.75) {
      ir_pick_mask(5, 2, 3, len, n, m);
      int ones = 0;
      for (int t = 0; t < len; t++) {
        CHECK(m[t] == 0 || m[t] == 1);
        ones += m[t] == 1;
      }
      int want = n < 0 ? 0 : (int)n > len ? len : (int)n;
      CHECK_MSG(ones == want, "len %d n %g: %d ones", len, n, ones);
      ir_pick_mask(5, 2, 3, len, n, m2);
      CHECK(!memcmp(m, m2, sizeof(double) * (size_t)len));
    }
  /* reference draw */
  int perm[10];
  for (int t = 0; t < 10; t++) perm[t] = t;
  poc_rng r = poc_rng_derive(42, 1, 4);
  double ref[10] = {0};
  for (int j = 0; j < 4; j++) {
    int q = j + (int)(poc_rng_uniform(&r) * (10 - j));
    int tmp = perm[j];
    perm[j] = perm[q];
    perm[q] = tmp;
    ref[perm[j]] = 1;
  }
  ir_pick_mask(42, 1, 4, 10, 4.9, m);
  CHECK(!memcmp(m, ref, sizeof ref));
  /* another example or pick index draws another stream */
  int differ = 0;
  for (int e = 0; e < 8; e++) {
    ir_pick_mask(42, 1, e, 10, 4, m2);
    differ += memcmp(m, m2, sizeof ref) != 0;
  }
  CHECK(differ >= 6);
}

int main(void) {
  test_verifier();
  test_pick();
  return check_summary("ir.verify");
}
