/* test_autodiff.c — reverse mode against central differences (float64, h = 1e-6) on
 * hand-built graphs that cover every differentiable op, broadcasting between levels,
 * token vectors of different lengths in one prefix domain, batch reductions, and sg.
 * Each case builds its objective over:
 *   x = logp(policy, chosen)   y = entropy(policy, chosen) (> 0)
 *   z = logp(policy, rejected) r = logp(ref, chosen) (frozen: never a gradient)     */
#include <math.h>
#include <stdio.h>

#include "../check.h"
#include "ir_test.h"

typedef struct leaves { int x, y, z, r; } leaves;
typedef int (*build_fn)(ir_graph *g, leaves l);

#define U(op, a) ir_unary(g, IR_##op, a, nl)
#define Bn(op, a, b) ir_binary(g, IR_##op, a, b, nl)
#define R(op, a) ir_reduce(g, IR_##op, a, -1, nl)
#define R2(op, a, b) ir_reduce(g, IR_##op, a, b, nl)
#define C(v) ir_const(g, v, nl)
static const po_loc nl;

static int b_add(ir_graph *g, leaves l) { return R(SUM, Bn(ADD, l.x, l.y)); }
static int b_sub(ir_graph *g, leaves l) { return Bn(MUL, R(SUM, Bn(SUB, l.x, l.y)), R(SUM, l.z)); }
static int b_mul(ir_graph *g, leaves l) { return R(SUM, Bn(MUL, l.x, l.y)); }
static int b_div(ir_graph *g, leaves l) { return R(SUM, Bn(DIV, l.x, l.y)); }
static int b_neg(ir_graph *g, leaves l) { return R(SUM, Bn(MUL, U(NEG, l.x), l.x)); }
static int b_exp(ir_graph *g, leaves l) { return R(SUM, U(EXP, Bn(MUL, l.x, l.y))); }
static int b_log(ir_graph *g, leaves l) { return R(SUM, U(LOG, Bn(MUL, l.y, U(NEG, l.x)))); }
static int b_log1p(ir_graph *g, leaves l) { return R(SUM, U(LOG1P, l.y)); }
static int b_log1mexp(ir_graph *g, leaves l) { return R(SUM, U(LOG1MEXP, l.x)); }
static int b_log1mexp_mean(ir_graph *g, leaves l) { return U(LOG1MEXP, R(MEAN, l.x)); }
static int b_sigmoid(ir_graph *g, leaves l) { return R(SUM, U(SIGMOID, Bn(MUL, l.x, l.y))); }
static int b_logsigmoid(ir_graph *g, leaves l) { return U(LOGSIGMOID, Bn(SUB, R(SUM, l.x), R(SUM, l.z))); }
static int b_softplus(ir_graph *g, leaves l) { return U(SOFTPLUS, Bn(MUL, R(SUM, l.x), C(-2))); }
static int b_tanh(ir_graph *g, leaves l) { return R(SUM, U(TANH, l.x)); }
static int b_abs(ir_graph *g, leaves l) { return R(SUM, U(ABS, Bn(ADD, l.x, C(1.01)))); }
static int b_sqrt(ir_graph *g, leaves l) { return R(SUM, U(SQRT, l.y)); }
static int b_pow(ir_graph *g, leaves l) { return R(SUM, Bn(POW, l.y, l.x)); }
static int b_min(ir_graph *g, leaves l) { return R(SUM, Bn(MIN, l.x, U(NEG, l.y))); }
static int b_max(ir_graph *g, leaves l) { return R(SUM, Bn(MAX, l.x, U(NEG, l.y))); }
static int b_where(ir_graph *g, leaves l) {
  return R(SUM, ir_ternary(g, IR_WHERE, Bn(GT, l.x, C(-1)), Bn(MUL, l.x, l.x), l.y, nl));
}
static int b_compare(ir_graph *g, leaves l) {
  int s = Bn(MUL, Bn(LT, l.x, C(-1)), l.y);
  s = Bn(ADD, s, Bn(MUL, Bn(LE, l.x, C(-1)), l.x));
  s = Bn(ADD, s, Bn(MUL, Bn(GE, l.x, C(-1)), l.x));
  s = Bn(ADD, s, Bn(MUL, Bn(EQ, l.x, l.x), l.y));
  s = Bn(ADD, s, Bn(MUL, Bn(NE, l.x, C(-1)), l.y));
  s = Bn(ADD, s, Bn(MUL, U(FLOOR, l.y), l.x));
  return R(SUM, s);
}
static int b_sg(ir_graph *g, leaves l) { return R(SUM, Bn(MUL, U(SG, l.x), l.y)); }
static int b_frozen(ir_graph *g, leaves l) { return R(SUM, Bn(MUL, l.r, l.x)); }
static int b_mean(ir_graph *g, leaves l) { return Bn(MUL, R(MEAN, l.x), R(SUM, l.y)); }
static int b_tmax(ir_graph *g, leaves l) { return Bn(MUL, R(TMAX, l.x), R(TMAX, l.z)); }
static int b_len(ir_graph *g, leaves l) { return Bn(MUL, R(LEN, l.x), R(SUM, l.x)); }
static int b_dot(ir_graph *g, leaves l) { return R2(DOT, l.x, l.y); }
static int b_norm(ir_graph *g, leaves l) { return R(NORM, l.x); }
static int b_cos(ir_graph *g, leaves l) { return R2(COS, l.x, l.y); }
/* chosen and rejected differ in length: their prefixes combine over the shorter one */
static int b_prefix_cos(ir_graph *g, leaves l) {
  return R2(COS, ir_slice(g, l.x, 0, 4, nl), ir_slice(g, l.z, 0, 4, nl));
}
static int b_prefix_dot(ir_graph *g, leaves l) {
  int a = ir_slice(g, l.x, 0, 3, nl), b = ir_slice(g, l.z, 0, 3, nl);
  return Bn(ADD, R2(DOT, a, b), R(SUM, Bn(MUL, Bn(SUB, a, b), a)));
}
static int b_slice(ir_graph *g, leaves l) {
  return Bn(MUL, R(SUM, ir_slice(g, l.x, 1, -1, nl)), R(SUM, ir_slice(g, l.x, 1, 3, nl)));
}
static int b_bsum(ir_graph *g, leaves l) { return Bn(MUL, R(SUM, l.x), R(BSUM, R(SUM, l.z))); }
static int b_bmean(ir_graph *g, leaves l) {
  int s = R(SUM, l.x), d = Bn(SUB, s, R(BMEAN, s));
  return Bn(MUL, d, d);
}
static int b_bstd(ir_graph *g, leaves l) {
  int s = R(SUM, l.x);
  return Bn(ADD, Bn(DIV, s, R(BSTD, s)), Bn(MUL, R(BSTD, R(SUM, l.z)), R(SUM, l.y)));
}
static int b_broadcast(ir_graph *g, leaves l) {
  int e = R(SUM, Bn(MUL, l.x, R(SUM, l.z)));           /* example into tokens */
  int b = R(SUM, Bn(MUL, l.y, R(BMEAN, R(MEAN, l.z))));  /* batch into tokens */
  return Bn(ADD, e, Bn(ADD, b, R(BMEAN, R(SUM, l.x))));   /* batch into examples */
}

static const struct { const char *name; build_fn fn; } cases[] = {
    {"add", b_add},         {"sub", b_sub},           {"mul", b_mul},
    {"div", b_div},         {"neg", b_neg},           {"exp", b_exp},
    {"log", b_log},         {"log1p", b_log1p},       {"log1mexp", b_log1mexp},
    {"log1mexp_mean", b_log1mexp_mean},               {"sigmoid", b_sigmoid},
    {"logsigmoid", b_logsigmoid},                     {"softplus", b_softplus},
    {"tanh", b_tanh},       {"abs", b_abs},           {"sqrt", b_sqrt},
    {"pow", b_pow},         {"min", b_min},           {"max", b_max},
    {"where", b_where},     {"compare_floor", b_compare},
    {"frozen", b_frozen},   {"mean", b_mean},         {"tmax", b_tmax},
    {"len", b_len},         {"dot", b_dot},           {"norm", b_norm},
    {"cos", b_cos},         {"prefix_cos", b_prefix_cos}, {"prefix_dot", b_prefix_dot},
    {"slice", b_slice},     {"batch_sum", b_bsum},    {"batch_mean", b_bmean},
    {"batch_std", b_bstd},  {"broadcast", b_broadcast},
};

static void run_case(const char *name, build_fn fn) {
  ir_graph *g = t_graph();
  leaves l = {t_call(g, IR_LOGP, 0, "chosen", -1), t_call(g, IR_ENTROPY, 0, "chosen", -1),
              t_call(g, IR_LOGP, 0, "rejected", -1), t_call(g, IR_LOGP, 1, "chosen", -1)};
  g->loss = fn(g, l);
  ir_infer_flags(g);
  char err[512];
  int rc = ir_pipeline(g, NULL, err, sizeof err);
  CHECK_MSG(rc == 0, "%s: %s", name, err);
  if (rc) {
    ir_free(g);
    return;
  }
  t_inputs in;
  memset(&in, 0, sizeof in);
  int ch = t_dom(g, "chosen"), rj = t_dom(g, "rejected");
  int lc[T_B] = {3, 5, 2}, lr[T_B] = {4, 1, 3};
  memcpy(in.len[ch], lc, sizeof lc);
  memcpy(in.len[rj], lr, sizeof lr);
  /* log-probs in (-3, -0.1): both branches of log1mexp, no ties, away from -1 and -1.01 */
  t_fill(&in, "policy/chosen", ch, -3, -0.1, 11);
  t_fill(&in, "policy/rejected", rj, -3, -0.1, 12);
  t_fill(&in, "ref/chosen", ch, -3, -0.1, 13);
  t_fill(&in, "entropy:policy/chosen", ch, 0.5, 2, 14);
  ir_val *vals = t_eval(g, &in, err, sizeof err);
  CHECK_MSG(vals != NULL, "%s: %s", name, err);
  if (!vals) goto out;
  CHECK_MSG(isfinite(t_loss(g, &in)), "%s: loss not finite", name);
  int ngrads = 0;
  for (int k = 0; k < g->ngrads; k++) {
    int c = g->grads[k].call, slot = t_slot(g, &in, c);
    const ir_val *gv = &vals[g->grads[k].grad];
    CHECK_MSG(slot >= 0, "%s: grad for unknown call %s", name, g->nodes[c].key);
    CHECK(g->models[g->nodes[c].idx].trainable);
    if (slot < 0) continue;
    ngrads++;
    double *p = in.vals[slot];
    for (int j = 0; j < gv->total; j++) {
      const double h = 1e-6;
      double keep = p[j];
      p[j] = keep + h;
      double lp = t_loss(g, &in);
      p[j] = keep - h;
      double lm = t_loss(g, &in);
      p[j] = keep;
      double fd = (lp - lm) / (2 * h);
      CHECK_MSG(fabs(gv->v[j] - fd) <= 1e-6 * fmax(1, fabs(fd)), "%s: d/d %s%s[%d] = %.12g, "
                "central difference %.12g", name, g->nodes[c].op == IR_ENTROPY ? "entropy " : "",
                g->nodes[c].key, j, gv->v[j], fd);
    }
  }
  /* one gradient per trainable call: logp chosen, entropy chosen, logp rejected (when
     the objective reads them), never the frozen ref */
  CHECK_MSG(ngrads >= 1, "%s: no gradients", name);
  ir_vals_free(g, vals);
out:
  ir_free(g);
  t_inputs_free(&in);
}

/* sg leaves an explicit zero seed, not a missing one */
static void test_sg_zero(void) {
  {
    ir_graph *g = t_graph();
    leaves l = {t_call(g, IR_LOGP, 0, "chosen", -1), t_call(g, IR_ENTROPY, 0, "chosen", -1), -1, -1};
    g->loss = b_sg(g, l);
    char err[512];
    CHECK(ir_pipeline(g, NULL, err, sizeof err) == 0);
    int nz = 0;
    for (int k = 0; k < g->ngrads; k++)
      if (g->nodes[g->grads[k].call].op == IR_LOGP) {
        const ir_node *d = &g->nodes[g->grads[k].grad];
        /* bcast of the constant 0: an explicit zero seed */
        CHECK(d->op == IR_BCAST && g->nodes[d->in[0]].op == IR_CONST && g->nodes[d->in[0]].num == 0);
        nz++;
      }
    CHECK(nz == 1);
    ir_free(g);
  }
  ir_graph *g = t_graph();
  int x = t_call(g, IR_LOGP, 0, "chosen", -1), z = t_call(g, IR_LOGP, 0, "rejected", -1);
  g->loss = ir_binary(g, IR_ADD, ir_reduce(g, IR_SUM, ir_unary(g, IR_SG, x, nl), -1, nl),
                      ir_reduce(g, IR_SUM, z, -1, nl), nl);
  char err[512];
  CHECK(ir_pipeline(g, NULL, err, sizeof err) == 0);
  CHECK(g->ngrads == 2);
  t_inputs in;
  memset(&in, 0, sizeof in);
  int ch = t_dom(g, "chosen"), rj = t_dom(g, "rejected");
  for (int i = 0; i < T_B; i++) in.len[ch][i] = 2 + i, in.len[rj][i] = 1 + i;
  t_fill(&in, "policy/chosen", ch, -2, -1, 1);
  t_fill(&in, "policy/rejected", rj, -2, -1, 2);
  ir_val *v = t_eval(g, &in, err, sizeof err);
  CHECK(v != NULL);
  for (int k = 0; v && k < g->ngrads; k++) {
    const ir_val *gv = &v[g->grads[k].grad];
    bool chosen = !strcmp(g->nodes[g->grads[k].call].key, "policy/chosen");
    for (int j = 0; j < gv->total; j++) CHECK_NEAR(gv->v[j], chosen ? 0 : 1.0 / T_B, 1e-15);
  }
  ir_vals_free(g, v);
  ir_free(g);
  t_inputs_free(&in);
}

int main(void) {
  for (size_t c = 0; c < sizeof cases / sizeof cases[0]; c++) run_case(cases[c].name, cases[c].fn);
  /* sg(x)·y: a finite difference sees x, autodiff must not */
  test_sg_zero();
  return check_summary("ir.autodiff");
}
