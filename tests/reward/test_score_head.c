/* test_score_head.c — the sequence-classification (reward) head of runtime/model.c.
 *
 *   test_reward_score_head            on "cpu64": every weight's gradient of
 *                                     L = Σ_s c_s·r_s (random c) against central finite
 *                                     differences; packing independence (a sequence scored
 *                                     alone = in a pack); "cpu" float against "cpu64"
 *   test_reward_score_head DEVICE     DEVICE (the CUDA device under the emulation) against
 *                                     "cpu64": scores and the gradient
 *
 * r_s = norm(x_last(s))·score.weightᵀ, from the final hidden state of sequence s's last
 * token; the loss head is not run. */
#include "mt.h"
#include "cpu/cpu_features.h"

static poc_config cls_config(int bias, int tied) {
  poc_config c = mt_config(16, 24, 11, 2, 4, 2, 4, bias, tied, 0);
  c.num_labels = 1;
  return c;
}

static int forward_scores(poc_model *m, const mt_pack *mp, int save, double *r) {
  char err[POC_ERR_LEN] = "";
  int rc = poc_model_forward(m, &mp->p, save ? POC_FWD_SAVE : 0, r, NULL, err);
  CHECK_MSG(rc == 0, "forward: %s", err);
  return rc;
}

static double loss_of(poc_model *m, const double *w, const mt_pack *mp, const double *c) {
  char err[POC_ERR_LEN] = "";
  double r[64], L = 0;
  if (poc_model_set(m, POC_PART_WEIGHTS, w, POC_DT_F64, err) || forward_scores(m, mp, 0, r))
    return NAN;
  for (int s = 0; s < mp->p.n_seq; s++) L += c[s] * r[s];
  return L;
}

static void grad_check(int bias, int tied, uint64_t seed) {
  poc_device *d = mt_device("cpu64");
  char err[POC_ERR_LEN];
  poc_config cfg = cls_config(bias, tied);
  poc_layout lay;
  CHECK(poc_layout_init(&lay, &cfg, err) == 0);
  CHECK(poc_layout_find(&lay, "score.weight") != NULL);
  CHECK(poc_layout_find(&lay, "lm_head.weight") == NULL);
  double *w = malloc(lay.n_params * sizeof *w), *g = calloc(lay.n_params, sizeof *g);
  mt_weights(&lay, w, seed);
  const int ctx[] = {3, 1, 5, 2}, tgt[] = {4, 3, 2, 5};
  mt_pack mp;
  mt_pack_make(&mp, 4, ctx, tgt, cfg.vocab_size, seed + 1);
  double c[4] = {0.7, -1.3, 0.4, 1.1}, r[4], dr[4];
  poc_model *m = mt_model(d, &lay, w, 1, 64);
  CHECK(poc_model_outputs(m, &mp.p) == 4);
  forward_scores(m, &mp, 1, r);
  for (int s = 0; s < 4; s++) dr[s] = c[s];
  CHECK(poc_model_zero_grad(m, err) == 0);
  CHECK_MSG(poc_model_backward(m, &mp.p, dr, NULL, err) == 0, "backward: %s", err);
  mt_grad(m, g);
  /* every entry of every tensor: the model is small */
  int bad = 0, checked = 0;
  for (size_t i = 0; i < lay.n_params; i++) {
    double h = 1e-5, keep = w[i];
    w[i] = keep + h;
    double lp = loss_of(m, w, &mp, c);
    w[i] = keep - h;
    double lm = loss_of(m, w, &mp, c);
    w[i] = keep;
    double fd = (lp - lm) / (2 * h), s = fabs(fd) > fabs(g[i]) ? fabs(fd) : fabs(g[i]);
    checked++;
    if (!(fabs(fd - g[i]) <= 1e-6 * s + 1e-8)) {
      if (bad++ < 5) fprintf(stderr, "param %zu: analytic %.12g, numeric %.12g\n", i, g[i], fd);
    }
  }
  CHECK_MSG(bad == 0, "%d of %d gradient entries differ (bias %d, tied %d)", bad, checked, bias,
            tied);
  /* the score head's own gradient is non-zero (the check above is not vacuous) */
  const poc_tensor_info *st = poc_layout_find(&lay, "score.weight");
  double gs = 0;
  for (size_t j = 0; j < st->numel; j++) gs += fabs(g[st->offset + j]);
  CHECK(gs > 1e-3);
  /* a sequence alone scores what it scores in the pack */
  CHECK(poc_model_set(m, POC_PART_WEIGHTS, w, POC_DT_F64, err) == 0);
  forward_scores(m, &mp, 0, r);
  for (int s = 0; s < 4; s++) {
    mt_pack one;
    double r1;
    mt_pack_one(&one, &mp, s);
    forward_scores(m, &one, 0, &r1);
    CHECK_NEAR(r1, r[s], 1e-12);
  }
  /* float against double */
  poc_device *f = mt_device("cpu");
  poc_model *mf = mt_model(f, &lay, w, 0, 64);
  double rf[4];
  forward_scores(mf, &mp, 0, rf);
  for (int s = 0; s < 4; s++) CHECK_NEAR(rf[s], r[s], 1e-4);
  /* no token distribution to take an entropy of; no generation */
  double ent[64];
  CHECK(poc_model_forward(m, &mp.p, POC_FWD_ENTROPY, r, ent, err) != 0);
  int32_t out[4], prompt[2] = {1, 2};
  CHECK(poc_model_generate(m, prompt, 2, 2, 0, 1, -1, NULL, out, err) < 0);
  poc_model_free(mf);
  poc_device_close(f);
  poc_model_free(m);
  poc_layout_free(&lay);
  free(w);
  free(g);
  poc_device_close(d);
}

/* DEVICE against cpu64: scores to its precision, and the gradient. */
static void device_check(const char *name) {
  char err[POC_ERR_LEN];
  poc_config cfg = cls_config(1, 0);
  poc_layout lay;
  CHECK(poc_layout_init(&lay, &cfg, err) == 0);
  double *w = malloc(lay.n_params * sizeof *w), *g0 = calloc(lay.n_params, sizeof *g0),
         *g1 = calloc(lay.n_params, sizeof *g1);
  mt_weights(&lay, w, 7);
  const int ctx[] = {3, 1, 5, 2}, tgt[] = {4, 3, 2, 5};
  mt_pack mp;
  mt_pack_make(&mp, 4, ctx, tgt, cfg.vocab_size, 8);
  double c[4] = {0.7, -1.3, 0.4, 1.1}, r0[4], r1[4];
  poc_device *ds[2] = {mt_device("cpu64"), mt_device(name)};
  double *gs[2] = {g0, g1}, *rs[2] = {r0, r1};
  for (int i = 0; i < 2; i++) {
    poc_model *m = mt_model(ds[i], &lay, w, 1, 64);
    forward_scores(m, &mp, 1, rs[i]);
    CHECK(poc_model_zero_grad(m, err) == 0);
    CHECK_MSG(poc_model_backward(m, &mp.p, c, NULL, err) == 0, "backward on %s: %s",
              ds[i]->name, err);
    mt_grad(m, gs[i]);
    poc_model_free(m);
  }
  /* bf16 operands: scores to a few per cent of their scale, the gradient likewise */
  double scale = 0, gmax = 0, gdiff = 0;
  for (int s = 0; s < 4; s++) scale = fmax(scale, fabs(r0[s]));
  for (int s = 0; s < 4; s++)
    CHECK_MSG(fabs(r1[s] - r0[s]) <= 0.03 * scale + 1e-3, "score %d: %s %.6g, cpu64 %.6g", s,
              name, r1[s], r0[s]);
  for (size_t i = 0; i < lay.n_params; i++) {
    gmax = fmax(gmax, fabs(g0[i]));
    gdiff = fmax(gdiff, fabs(g1[i] - g0[i]));
  }
  CHECK_MSG(gdiff <= 0.05 * gmax, "gradient: largest difference %.3g of %.3g", gdiff, gmax);
  poc_device_close(ds[0]);
  poc_device_close(ds[1]);
  poc_layout_free(&lay);
  free(w);
  free(g0);
  free(g1);
}

int main(int argc, char **argv) {
  poc_cpu_start(argc, argv);
  if (argc > 1) {
    device_check(argv[1]);
  } else {
    grad_check(0, 0, 11);
    grad_check(1, 1, 12);
  }
  return check_summary("reward score head");
}
