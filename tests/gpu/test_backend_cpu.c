/* test_backend_cpu.c — the CPU backend behind backend.h: it is the fp32 reference model
 * bit for bit, and its AdamW, gradient norm and host copies do what backend.h says. */
#include "gt.h"
#include "cpu/cpu_kernels.h"

static void test_model_matches_reference(void) {
  char err[POC_ERR_LEN] = "";
  poc_config c = gt_config(32, 48, 40, 2, 4, 2, 8, 1, 0, 1);
  poc_layout lay;
  CHECK(poc_layout_init(&lay, &c, err) == 0);
  size_t P = lay.n_params;
  float *w = malloc(P * 4), *g_ref = calloc(P, 4), *g = malloc(P * 4), *wr = malloc(P * 4);
  gt_weights(&lay, w, 7, 0);
  memcpy(wr, w, P * 4);
  static gt_pack mp;
  int ctx[] = {3, 9, 1}, tgt[] = {5, 20, 2};
  gt_pack_make(&mp, 3, ctx, tgt, c.vocab_size, 11);
  int n = poc_pack_targets(&mp.p);

  poc_backend *be = poc_backend_open("cpu", err);
  CHECK_MSG(be != NULL, "%s", err);
  if (!be) return;
  CHECK(!strcmp(be->name, "cpu") && strstr(be->device, "CPU"));
  poc_bmodel *m = be->model_new(be, &lay, w, 1, 64, err);
  CHECK_MSG(m != NULL, "%s", err);
  poc_model_f32 *ref = poc_model_new_f32(&lay, wr, g_ref, 64);
  float lp[64], ent[64], lp_ref[64], ent_ref[64], dl[64], de[64];
  gt_fill(lp, 64, NAN);
  CHECK(be->forward(m, &mp.p, POC_FWD_SAVE | POC_FWD_ENTROPY, lp, ent, err) == 0);
  CHECK(poc_model_forward_f32(ref, &mp.p, POC_FWD_SAVE | POC_FWD_ENTROPY, lp_ref, ent_ref, err) == 0);
  CHECK(!memcmp(lp, lp_ref, n * 4) && !memcmp(ent, ent_ref, n * 4));
  for (int i = 0; i < n; i++) {
    dl[i] = (float)(0.1 * (i % 7) - 0.3);
    de[i] = (float)(0.05 * (i % 3));
  }
  CHECK(be->backward(m, &mp.p, dl, de, err) == 0);
  CHECK(poc_model_backward_f32(ref, &mp.p, dl, de, err) == 0);
  CHECK(be->get_grad(m, g, err) == 0);
  CHECK(!memcmp(g, g_ref, P * 4));

  /* the norm, in double */
  double norm = -1, want = 0;
  for (size_t i = 0; i < P; i++) want += (double)g[i] * g[i];
  CHECK(be->grad_norm(m, &norm, err) == 0);
  CHECK_NEAR(norm, sqrt(want), 1e-12);
  CHECK(norm > 0);

  /* AdamW, element by element against the formula in double */
  poc_adamw h = {.lr = 1e-2, .beta1 = 0.9, .beta2 = 0.999, .eps = 1e-8, .weight_decay = 0.1,
                 .step = 1, .grad_scale = 0.5};
  CHECK(be->adamw_step(m, &h, err) == 0);
  float *w1 = malloc(P * 4), *mo = malloc(P * 4), *va = malloc(P * 4);
  CHECK(be->get_weights(m, w1, err) == 0 && be->get_adam(m, mo, va, err) == 0);
  double worst = 0;
  for (int t = 0; t < lay.n_tensors; t++) {
    double wd = lay.tensors[t].ndim == 2 ? 0.1 : 0;
    for (size_t j = 0; j < lay.tensors[t].numel; j++) {
      size_t i = lay.tensors[t].offset + j;
      double gi = 0.5 * g[i], mi = 0.1 * gi, vi = 0.001 * gi * gi;
      double e = w[i] * (1 - 1e-2 * wd) - 1e-2 * (mi / 0.1) / (sqrt(vi / 0.001) + 1e-8);
      double d = fabs(e - w1[i]) / (fabs(e) > 0.1 ? fabs(e) : 0.1); /* float rounding of w */
      if (d > worst) worst = d;
      if (fabs(mo[i] - mi) > 1e-6 * fabs(mi) + 1e-12) worst = 1;
    }
  }
  CHECK_MSG(worst < 1e-5, "AdamW differs from the formula by %g", worst);

  /* decay touches matrices only: on a fresh model (zero gradient and moments) a step is
     the decoupled shrink w·(1 − lr·λ) for matrices and nothing for norms and biases */
  CHECK(be->zero_grad(m, err) == 0);
  CHECK(be->grad_norm(m, &norm, err) == 0 && norm == 0);
  float *w2 = malloc(P * 4);
  poc_bmodel *m2 = be->model_new(be, &lay, w, 1, 64, err);
  CHECK(m2 != NULL);
  h.step = 1;
  CHECK(m2 && be->adamw_step(m2, &h, err) == 0 && be->get_weights(m2, w2, err) == 0);
  const poc_tensor_info *ln = poc_layout_find(&lay, "model.layers.0.input_layernorm.weight");
  const poc_tensor_info *qb = poc_layout_find(&lay, "model.layers.1.self_attn.q_proj.bias");
  const poc_tensor_info *wq = poc_layout_find(&lay, "model.layers.1.self_attn.q_proj.weight");
  CHECK(ln && qb && wq);
  if (ln && qb && wq && m2) {
    CHECK(!memcmp(w2 + ln->offset, w + ln->offset, ln->numel * 4));
    CHECK(!memcmp(w2 + qb->offset, w + qb->offset, qb->numel * 4));
    int shrunk = 1;
    for (size_t j = 0; j < wq->numel; j++)
      shrunk &= w2[wq->offset + j] == w[wq->offset + j] * (1.f - 1e-2f * 0.1f);
    CHECK(shrunk);
  }
  be->model_free(m2);
  /* set_weights round trip, set_grad round trip */
  CHECK(be->set_weights(m, w, err) == 0 && be->get_weights(m, w2, err) == 0 && !memcmp(w, w2, P * 4));
  CHECK(be->set_grad(m, g, err) == 0 && be->get_grad(m, w2, err) == 0 && !memcmp(g, w2, P * 4));

  /* generation is poc_generate_f32 */
  int32_t prompt[] = {1, 2, 3}, out[8], out_ref[8];
  int k = be->generate(m, prompt, 3, 8, 0, 1, -1, NULL, out, err);
  poc_model_f32 *ref2 = poc_model_new_f32(&lay, w, NULL, 64);
  int k_ref = poc_generate_f32(ref2, prompt, 3, 8, 0, 1, -1, NULL, out_ref, err);
  CHECK(k == 8 && k_ref == 8 && !memcmp(out, out_ref, sizeof out));

  /* a frozen model has no gradient and refuses a forward for backward */
  poc_bmodel *fz = be->model_new(be, &lay, w, 0, 64, err);
  CHECK(fz != NULL);
  if (fz) {
    CHECK(be->zero_grad(fz, err) == -1 && strstr(err, "trainable"));
    CHECK(be->forward(fz, &mp.p, POC_FWD_SAVE, lp, NULL, err) == -1);
    CHECK(be->forward(fz, &mp.p, 0, lp, NULL, err) == 0 && !memcmp(lp, lp_ref, n * 4));
    be->model_free(fz);
  }
  /* bad input is an error, not a crash */
  CHECK(be->backward(m, &mp.p, dl, de, err) == -1);
  CHECK(be->model_new(be, &lay, w, 1, 0, err) == NULL && err[0]);
  h.step = 0;
  CHECK(be->adamw_step(m, &h, err) == -1 && strstr(err, "step"));

  poc_model_free_f32(ref2);
  poc_model_free_f32(ref);
  be->model_free(m);
  poc_backend_close(be);
  free(w); free(wr); free(g); free(g_ref); free(w1); free(w2); free(mo); free(va);
  poc_layout_free(&lay);
}

static void test_open_names(void) {
  char err[POC_ERR_LEN] = "";
  CHECK(poc_backend_open("gpu0", err) == NULL && strstr(err, "gpu0"));
  poc_backend *b = poc_backend_open("cuda", err);
#ifdef POC_HAVE_CUDA
  /* with the backend built in, a machine without a GPU gets the driver's reason */
  if (!b) CHECK(!strncmp(err, "cuda: ", 6));
#else
  CHECK(b == NULL && !strcmp(err, "this poc was built without CUDA"));
#endif
  poc_backend_close(b);
}

int main(void) {
  poc_cpu_start(0, NULL); /* the GEMM kernels the processor allows */
  test_model_matches_reference();
  test_open_names();
  return check_summary("backend_cpu");
}
