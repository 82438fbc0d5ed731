/* test_step.c — one optimizer step's gradient with the real model and hand-written
 * objectives: separable vs non-separable, micro-batch 1 vs 4, hoisted vs live reference,
 * the loss falling on a fixed batch, and (in float64, on the "cpu64" device) the whole
 * step against finite differences with a batch-coupled objective over uneven
 * micro-batches. */
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "device.h"
#include "train_internal.h"
#include "tt.h"
#include "cpu/cpu_features.h"

static char dir[512], model[600], data[600];
static poc_device *dev32, *dev64;

/* The policy (0) and the reference (1) as training makes them, on the float device or
 * the double one; wd[0] is the policy's weights in double, for perturbing. */
typedef struct {
  poc_program *p;
  trn_data d;
  poc_layout lay;
  trn_ctx c;
  trn_cache k;
  double *wd[2];
  trn_models ms;
  double knobs[1];
} env;

static int setup(env *e, poc_program *p, int micro, int f64) {
  char err[POC_ERR_LEN];
  memset(e, 0, sizeof *e);
  e->p = p;
  poc_config cfg;
  if (poc_config_load(model, &cfg, err) || poc_layout_init(&e->lay, &cfg, err)) {
    fprintf(stderr, "%s\n", err);
    return -1;
  }
  if (trn_data_load(&e->d, p, p->data_path, cfg.vocab_size, p->train.max_len)) return -1;
  e->knobs[0] = p->knobs[0].value;
  e->c = (trn_ctx){.prog = p, .data = &e->d, .knobs = e->knobs, .seed = 7, .micro_batch = micro};
  size_t n = e->lay.n_params;
  for (int m = 0; m < 2; m++) {
    e->c.lay[m] = &e->lay;
    e->c.eos[m] = TT_EOS;
    int longest;
    e->c.max_tokens[m] = trn_max_pack_tokens(&e->c, m, micro, &longest);
    /* the file holds float32: loaded as double it is the same values */
    e->wd[m] = malloc(n * sizeof(double));
    if (poc_weights_load_f64(model, &e->lay, e->wd[m], err)) return -1;
    e->ms.m[m] = poc_model_new(f64 ? dev64 : dev32, &e->lay, e->wd[m], POC_DT_F64, m == 0,
                               e->c.max_tokens[m], err);
    if (!e->ms.m[m]) {
      fprintf(stderr, "%s\n", err);
      return -1;
    }
  }
  if (p->calls[2].hoisted) {
    if (trn_cache_alloc(&e->k, p, e->d.n)) return -1;
    if (trn_hoist(&e->c, &e->ms, &e->k, err)) {
      fprintf(stderr, "hoist: %s\n", err);
      return -1;
    }
    e->c.cache = &e->k;
  }
  return 0;
}

static void teardown(env *e) {
  for (int m = 0; m < 2; m++) {
    poc_model_free(e->ms.m[m]);
    free(e->wd[m]);
  }
  trn_cache_free(&e->k);
  trn_data_free(&e->d);
  poc_layout_free(&e->lay);
}

static const int64_t batch_ex[8] = {3, 0, 7, 12, 5, 9, 1, 14};

/* The gradient of the step's mean loss over batch_ex[0..B) into a fresh array. */
static float *grad_f32(poc_program *p, int micro, int B, double *loss) {
  env e;
  if (setup(&e, p, micro, 0)) return NULL;
  char err[POC_ERR_LEN];
  trn_stepout so;
  float *g = NULL;
  if (trn_step_grad(&e.c, &e.ms, batch_ex, B, 1, &so, err)) {
    fprintf(stderr, "step: %s\n", err);
  } else {
    g = malloc(e.lay.n_params * sizeof *g);
    if (poc_model_get(e.ms.m[0], POC_PART_GRAD, g, POC_DT_F32, err)) {
      fprintf(stderr, "step: %s\n", err);
      free(g);
      g = NULL;
    }
    *loss = so.loss_sum / B;
  }
  teardown(&e);
  return g;
}

static size_t n_params(void) {
  poc_config c = tt_config();
  poc_layout lay;
  char err[POC_ERR_LEN];
  poc_layout_init(&lay, &c, err);
  size_t n = lay.n_params;
  poc_layout_free(&lay);
  return n;
}

/* max |a − b| / max(max |a|, 1e-12): a relative error over the whole vector. */
static double rel_diff(const float *a, const float *b, size_t n) {
  double d = 0, s = 0;
  for (size_t i = 0; i < n; i++) {
    double x = fabs((double)a[i] - b[i]);
    if (x > d) d = x;
    if (fabs(a[i]) > s) s = fabs(a[i]);
  }
  return d / (s > 1e-12 ? s : 1e-12);
}

static double sq_norm(const float *g, size_t n) {
  double s = 0;
  for (size_t i = 0; i < n; i++) s += (double)g[i] * g[i];
  return s;
}

/* One AdamW step (train's defaults, lr) from weights w and gradient g; the new weights. */
static float *adamw_once(const poc_layout *lay, const float *w, const float *g, double lr) {
  char err[POC_ERR_LEN];
  size_t n = lay->n_params;
  poc_train t = POC_TRAIN_DEFAULTS;
  poc_adamw h = {lr, t.adam_beta1, t.adam_beta2, t.adam_eps, t.weight_decay, 1, 1};
  float *out = malloc(n * sizeof *out);
  poc_model *m = poc_model_new(dev32, lay, w, POC_DT_F32, 1, 4, err);
  int rc = !m || poc_model_set(m, POC_PART_GRAD, g, POC_DT_F32, err) ||
           poc_model_adamw(m, &h, err) || poc_model_get(m, POC_PART_WEIGHTS, out, POC_DT_F32, err);
  CHECK_MSG(rc == 0, "AdamW: %s", err);
  poc_model_free(m);
  return out;
}

static void test_paths_agree(void) {
  size_t n = n_params();
  double l_sep, l_non, l_mb1, l_live;
  float *g_sep = grad_f32(tt_program(model, data, NULL, 1, 0, 1), 4, 8, &l_sep);
  float *g_non = grad_f32(tt_program(model, data, NULL, 0, 0, 1), 4, 8, &l_non);
  float *g_mb1 = grad_f32(tt_program(model, data, NULL, 1, 0, 1), 1, 8, &l_mb1);
  float *g_live = grad_f32(tt_program(model, data, NULL, 1, 0, 0), 4, 8, &l_live);
  CHECK(g_sep && g_non && g_mb1 && g_live);
  if (!g_sep || !g_non || !g_mb1 || !g_live) return;
  double gn = sqrt(sq_norm(g_sep, n));
  CHECK_MSG(gn > 1e-6, "the DPO gradient is zero (%g)", gn);
  CHECK_NEAR(l_sep, l_non, 1e-6);
  double d1 = rel_diff(g_sep, g_non, n), d2 = rel_diff(g_sep, g_mb1, n),
         d3 = rel_diff(g_sep, g_live, n);
  CHECK_MSG(d1 < 1e-5, "separable vs non-separable gradients differ by %g", d1);
  CHECK_MSG(d2 < 1e-4, "micro-batch 4 vs 1 gradients differ by %g", d2);
  CHECK_MSG(d3 < 1e-5, "hoisted vs live reference gradients differ by %g", d3);
  CHECK_NEAR(l_sep, l_mb1, 1e-5);
  CHECK_NEAR(l_sep, l_live, 1e-5);
  /* at the initial weights policy = ref, so h = 0 and the DPO loss is log 2 */
  CHECK_NEAR(l_sep, log(2.0), 1e-6);

  /* one AdamW update from each: the same within float32 rounding */
  poc_config c = tt_config();
  poc_layout lay;
  char err[POC_ERR_LEN];
  poc_layout_init(&lay, &c, err);
  float *w0 = malloc(n * sizeof *w0);
  CHECK(poc_weights_load_f32(model, &lay, w0, err) == 0);
  float *w1 = adamw_once(&lay, w0, g_mb1, 1e-3), *w4 = adamw_once(&lay, w0, g_sep, 1e-3);
  /* Adam's first step moves each weight by ≈ lr·sign(g): compare moves where g is not tiny */
  int bad = 0;
  for (size_t i = 0; i < n; i++)
    if (fabs(g_sep[i]) > 1e-4 * gn && fabs(w1[i] - w4[i]) > 1e-6) bad++;
  CHECK_MSG(bad == 0, "%d weights moved differently with micro-batch 1 and 4", bad);
  free(w0), free(w1), free(w4);
  poc_layout_free(&lay);
  free(g_sep), free(g_non), free(g_mb1), free(g_live);
}

static void test_loss_falls(void) {
  poc_program *p = tt_program(model, data, NULL, 1, 0, 1);
  env e;
  CHECK(setup(&e, p, 4, 0) == 0);
  char err[POC_ERR_LEN];
  poc_train t = p->train;
  double first = 0, last = 0, acc_last = 0;
  for (int s = 1; s <= 15; s++) {
    trn_stepout so;
    poc_adamw h = {1e-2, t.adam_beta1, t.adam_beta2, t.adam_eps, t.weight_decay, s, 1};
    if (poc_model_zero_grad(e.ms.m[0], err) ||
        trn_step_grad(&e.c, &e.ms, batch_ex, 8, s, &so, err) ||
        poc_model_adamw(e.ms.m[0], &h, err)) {
      CHECK_MSG(0, "step %d: %s", s, err);
      break;
    }
    if (s == 1) first = so.loss_sum / 8;
    last = so.loss_sum / 8;
    acc_last = so.report_sum[1] / 8;
  }
  CHECK_MSG(last < first - 0.2, "loss %g → %g on a fixed batch", first, last);
  /* random pairs may repeat a response (both just eos): those stay at h = 0 */
  CHECK_MSG(acc_last >= 0.75, "reward accuracy after training %g", acc_last);
  teardown(&e);
}

/* The whole step in float64 against central differences: batch-centred DPO (needs the
 * non-separable path), 5 examples in micro-batches of 2 (uneven), reference hoisted. */
static double loss64(env *e, int B) {
  char err[POC_ERR_LEN];
  trn_stepout so;
  if (poc_model_set(e->ms.m[0], POC_PART_WEIGHTS, e->wd[0], POC_DT_F64, err) ||
      poc_model_zero_grad(e->ms.m[0], err) ||
      trn_step_grad(&e->c, &e->ms, batch_ex, B, 1, &so, err)) {
    fprintf(stderr, "%s\n", err);
    return NAN;
  }
  return so.loss_sum / B;
}

static void test_fd64(void) {
  poc_program *p = tt_program(model, data, NULL, 0, 1, 1);
  env e;
  if (setup(&e, p, 2, 1)) {
    CHECK(0);
    return;
  }
  /* move the policy away from the reference so h ≠ 0 */
  poc_rng r;
  poc_rng_seed(&r, 99);
  size_t n = e.lay.n_params;
  for (size_t i = 0; i < n; i++) e.wd[0][i] += 0.05 * (2 * poc_rng_uniform(&r) - 1);
  int B = 5;
  double L0 = loss64(&e, B);
  double *g = malloc(n * sizeof *g);
  char err[POC_ERR_LEN];
  CHECK(poc_model_get(e.ms.m[0], POC_PART_GRAD, g, POC_DT_F64, err) == 0);
  CHECK(isfinite(L0));
  int checked = 0, bad = 0;
  double gmax = 0;
  for (size_t i = 0; i < n; i++)
    if (fabs(g[i]) > gmax) gmax = fabs(g[i]);
  for (int t = 0; t < 24; t++) {
    size_t i = (size_t)(poc_rng_next(&r) % n);
    double h = 1e-5, w0 = e.wd[0][i];
    e.wd[0][i] = w0 + h;
    double lp = loss64(&e, B);
    e.wd[0][i] = w0 - h;
    double lm = loss64(&e, B);
    e.wd[0][i] = w0;
    double fd = (lp - lm) / (2 * h);
    checked++;
    if (fabs(fd - g[i]) > 1e-6 * gmax + 1e-5 * fabs(fd)) {
      bad++;
      fprintf(stderr, "param %zu: fd %.10g vs grad %.10g\n", i, fd, g[i]);
    }
  }
  CHECK_MSG(bad == 0, "%d of %d parameters disagree with finite differences", bad, checked);
  CHECK(gmax > 1e-6);
  free(g);
  teardown(&e);
}

int main(void) {
  poc_cpu_start(0, NULL); /* the GEMM kernels the processor allows */
  snprintf(dir, sizeof dir, "%s/poc-train-step-XXXXXX", getenv("TMPDIR") ? getenv("TMPDIR") : "/tmp");
  if (!mkdtemp(dir)) return 1;
  snprintf(model, sizeof model, "%s/model", dir);
  snprintf(data, sizeof data, "%s/pairs.jsonl", dir);
  if (tt_make_model(model, 5) || tt_write_pairs(data, 16, 3)) return 1;
  char err[POC_ERR_LEN];
  if (!(dev32 = poc_device_open("cpu", err)) || !(dev64 = poc_device_open("cpu64", err))) {
    fprintf(stderr, "%s\n", err);
    return 1;
  }
  test_paths_agree();
  test_loss_falls();
  test_fd64();
  poc_device_close(dev32);
  poc_device_close(dev64);
  char cmd[700];
  snprintf(cmd, sizeof cmd, "rm -rf '%s'", dir);
  if (system(cmd)) fprintf(stderr, "could not remove %s\n", dir);
  return check_summary("train_step");
}
