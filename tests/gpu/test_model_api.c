/* test_model_api.c — the model API's device-independent contract (pocrt.h), on the "cpu"
 * device: AdamW matches torch's formula element by element and decays matrices only,
 * the gradient norm is the double sum, host copies round-trip in either element type,
 * misuse (a backward without a saved forward, a frozen model's gradient or optimizer) is
 * an error with a message, and the float device agrees with the double one ("cpu64")
 * within float tolerance. Every device must pass the same; tests/gpu/test_cuda_model.c
 * holds CUDA to the CPU. */
#include "gt.h"
#include "cpu/cpu_features.h"

#define MAXN 64

static double max_rel(const double *a, const double *b, size_t n, double floor) {
  double worst = 0;
  for (size_t i = 0; i < n; i++)
    worst = fmax(worst, fabs(a[i] - b[i]) / fmax(floor, fmax(fabs(a[i]), fabs(b[i]))));
  return worst;
}

static void fill_seeds(int n, double *dl, double *de) {
  for (int i = 0; i < n; i++) {
    dl[i] = 0.1 * (i % 7) - 0.3;
    de[i] = 0.05 * (i % 3);
  }
}

/* cpu against cpu64 on the same weights: forward and every tensor's gradient. */
static void test_cpu_vs_cpu64(poc_device *cpu, poc_device *c64) {
  char err[POC_ERR_LEN] = "";
  poc_config c = gt_config(32, 48, 40, 2, 4, 2, 8, 1, 0, 1);
  poc_layout lay;
  CHECK(poc_layout_init(&lay, &c, err) == 0);
  size_t P = lay.n_params;
  float *w = malloc(P * 4);
  double *g32 = malloc(P * 8), *g64 = malloc(P * 8);
  gt_weights(&lay, w, 7, 0);
  static gt_pack mp;
  int ctx[] = {3, 9, 1}, tgt[] = {5, 20, 2};
  gt_pack_make(&mp, 3, ctx, tgt, c.vocab_size, 11);
  int n = poc_pack_targets(&mp.p);
  double lp[2][MAXN], en[2][MAXN], dl[MAXN], de[MAXN];
  fill_seeds(n, dl, de);
  poc_device *ds[2] = {cpu, c64};
  double *gs[2] = {g32, g64};
  for (int k = 0; k < 2; k++) {
    poc_model *m = poc_model_new(ds[k], &lay, w, POC_DT_F32, 1, 64, err);
    CHECK_MSG(m != NULL, "%s: %s", ds[k]->name, err);
    if (!m) return;
    CHECK(poc_model_device(m) == ds[k] && poc_model_layout(m) == &lay);
    for (int i = 0; i < n; i++) lp[k][i] = en[k][i] = NAN;
    CHECK(poc_model_forward(m, &mp.p, POC_FWD_SAVE | POC_FWD_ENTROPY, lp[k], en[k], err) == 0);
    CHECK(poc_model_backward(m, &mp.p, dl, de, err) == 0);
    CHECK(poc_model_get(m, POC_PART_GRAD, gs[k], POC_DT_F64, err) == 0);
    poc_model_free(m);
  }
  double rl = max_rel(lp[0], lp[1], (size_t)n, 1), re = max_rel(en[0], en[1], (size_t)n, 1);
  CHECK_MSG(rl < 1e-5 && re < 1e-5, "cpu vs cpu64: logp %g entropy %g", rl, re);
  double scale = 0, worst = 0;
  for (size_t i = 0; i < P; i++) scale = fmax(scale, fabs(g64[i]));
  for (size_t i = 0; i < P; i++) worst = fmax(worst, fabs(g32[i] - g64[i]) / scale);
  CHECK_MSG(scale > 0 && worst < 1e-4, "cpu vs cpu64 gradients differ by %g (scale %g)", worst,
            scale);
  printf("cpu vs cpu64: logp %.1e, entropy %.1e, gradients %.1e\n", rl, re, worst);
  free(w); free(g32); free(g64);
  poc_layout_free(&lay);
}

static void test_contract(poc_device *cpu) {
  char err[POC_ERR_LEN] = "";
  poc_config c = gt_config(32, 48, 40, 2, 4, 2, 8, 1, 0, 1);
  poc_layout lay;
  CHECK(poc_layout_init(&lay, &c, err) == 0);
  size_t P = lay.n_params;
  float *w = malloc(P * 4), *g = malloc(P * 4), *w1 = malloc(P * 4), *mo = malloc(P * 4),
        *va = malloc(P * 4), *w2 = malloc(P * 4);
  double *wd = malloc(P * 8);
  gt_weights(&lay, w, 7, 0);
  static gt_pack mp;
  int ctx[] = {3, 9, 1}, tgt[] = {5, 20, 2};
  gt_pack_make(&mp, 3, ctx, tgt, c.vocab_size, 11);
  int n = poc_pack_targets(&mp.p);

  poc_model *m = poc_model_new(cpu, &lay, w, POC_DT_F32, 1, 64, err);
  CHECK_MSG(m != NULL, "%s", err);
  if (!m) return;
  double lp[MAXN], ent[MAXN], lp2[MAXN], dl[MAXN], de[MAXN];
  fill_seeds(n, dl, de);
  CHECK(poc_model_forward(m, &mp.p, POC_FWD_SAVE | POC_FWD_ENTROPY, lp, ent, err) == 0);
  CHECK(poc_model_backward(m, &mp.p, dl, de, err) == 0);
  CHECK(poc_model_get(m, POC_PART_GRAD, g, POC_DT_F32, err) == 0);

  /* host copies: weights come back as given, in either type; the CPU device's own buffers
     are what get reads */
  CHECK(poc_model_get(m, POC_PART_WEIGHTS, w2, POC_DT_F32, err) == 0 && !memcmp(w, w2, P * 4));
  CHECK(poc_model_get(m, POC_PART_WEIGHTS, wd, POC_DT_F64, err) == 0);
  int same = 1;
  for (size_t i = 0; i < P; i++) same &= wd[i] == (double)w[i];
  CHECK(same);
  float *hw = poc_model_host_f32(m, POC_PART_WEIGHTS), *hg = poc_model_host_f32(m, POC_PART_GRAD);
  CHECK(hw && hg && !memcmp(hw, w, P * 4) && !memcmp(hg, g, P * 4));
  CHECK(poc_model_host_f32(m, POC_PART_MOM) && poc_model_host_f32(m, POC_PART_VAR));

  /* the norm, in double; the squared sum is its square */
  double norm = -1, sumsq = -1, want = 0;
  for (size_t i = 0; i < P; i++) want += (double)g[i] * g[i];
  CHECK(poc_model_grad_norm(m, &norm, err) == 0);
  CHECK(poc_model_grad_sumsq(m, &sumsq, err) == 0);
  CHECK_NEAR(norm, sqrt(want), 1e-12);
  CHECK_NEAR(sumsq, want, 1e-12);
  CHECK(norm > 0);

  /* AdamW, two steps element by element against torch's formula in double (the second
     step reads the moments of the first and its own bias correction). The device computes
     in float: both tolerances cover float rounding of w and of the moments. */
  poc_adamw h = {.lr = 1e-2, .beta1 = 0.9, .beta2 = 0.999, .eps = 1e-8, .weight_decay = 0.1,
                 .step = 1, .grad_scale = 0.5};
  double *M = calloc(P, 8), *Vv = calloc(P, 8), *Wr = malloc(P * 8);
  for (size_t i = 0; i < P; i++) Wr[i] = w[i];
  double worst = 0, worst_m = 0, worst_v = 0;
  for (int step = 1; step <= 2; step++) {
    h.step = step;
    CHECK_MSG(poc_model_adamw(m, &h, err) == 0, "%s", err);
    CHECK(poc_model_get(m, POC_PART_WEIGHTS, w1, POC_DT_F32, err) == 0);
    CHECK(poc_model_get(m, POC_PART_MOM, mo, POC_DT_F32, err) == 0);
    CHECK(poc_model_get(m, POC_PART_VAR, va, POC_DT_F32, err) == 0);
    double bc1 = 1 - pow(0.9, step), bc2 = 1 - pow(0.999, step);
    for (int t = 0; t < lay.n_tensors; t++) {
      double wdc = lay.tensors[t].ndim == 2 ? 0.1 : 0;
      CHECK(poc_model_decays(&lay, t) == (lay.tensors[t].ndim == 2));
      for (size_t j = 0; j < lay.tensors[t].numel; j++) {
        size_t i = lay.tensors[t].offset + j;
        double gi = 0.5 * g[i];
        M[i] = 0.9 * M[i] + 0.1 * gi;
        Vv[i] = 0.999 * Vv[i] + 0.001 * gi * gi;
        Wr[i] = Wr[i] * (1 - 1e-2 * wdc) - 1e-2 * (M[i] / bc1) / (sqrt(Vv[i] / bc2) + 1e-8);
        double d = fabs(Wr[i] - w1[i]) / fmax(fabs(Wr[i]), 0.1); /* float rounding of w */
        worst = fmax(worst, d);
        worst_m = fmax(worst_m, fabs(mo[i] - M[i]) / (fabs(M[i]) + 1e-12));
        worst_v = fmax(worst_v, fabs(va[i] - Vv[i]) / (fabs(Vv[i]) + 1e-20));
      }
    }
  }
  CHECK_MSG(worst < 1e-5, "AdamW differs from the formula by %g", worst);
  CHECK_MSG(worst_m < 1e-6, "AdamW's first moments differ from the formula by %g", worst_m);
  /* β2 reaches the device as a float: 1 − 0.999f is 1.3e-5 away from 0.001, so the second
     moments are held to that, not to float rounding alone (torch's fp32 AdamW does the same) */
  CHECK_MSG(worst_v < 3e-5, "AdamW's second moments differ from the formula by %g", worst_v);
  free(M); free(Vv); free(Wr);

  /* decay touches matrices only: on a fresh model (zero gradient and moments) a step is
     the decoupled shrink w·(1 − lr·λ) for matrices and nothing for norms and biases */
  CHECK(poc_model_zero_grad(m, err) == 0);
  CHECK(poc_model_grad_norm(m, &norm, err) == 0 && norm == 0);
  poc_model *m2 = poc_model_new(cpu, &lay, w, POC_DT_F32, 1, 64, err);
  CHECK(m2 != NULL);
  h.step = 1;
  CHECK(m2 && poc_model_adamw(m2, &h, err) == 0 &&
        poc_model_get(m2, POC_PART_WEIGHTS, w2, POC_DT_F32, err) == 0);
  const poc_tensor_info *ln = poc_layout_find(&lay, "model.layers.0.input_layernorm.weight");
  const poc_tensor_info *qb = poc_layout_find(&lay, "model.layers.1.self_attn.q_proj.bias");
  const poc_tensor_info *wq = poc_layout_find(&lay, "model.layers.1.self_attn.q_proj.weight");
  CHECK(ln && qb && wq);
  if (ln && qb && wq && m2) {
    CHECK(!memcmp(w2 + ln->offset, w + ln->offset, ln->numel * 4));
    CHECK(!memcmp(w2 + qb->offset, w + qb->offset, qb->numel * 4));
    /* within a float rounding of the shrink (the device may fuse the multiply-add) */
    int shrunk = 1;
    for (size_t j = 0; j < wq->numel; j++) {
      double want_w = (double)w[wq->offset + j] * (1 - 1e-2 * 0.1);
      shrunk &= fabs(w2[wq->offset + j] - want_w) <= 2.5e-7 * fabs(want_w);
      shrunk &= w2[wq->offset + j] != w[wq->offset + j] || w[wq->offset + j] == 0;
    }
    CHECK(shrunk);
  }
  poc_model_free(m2);

  /* set then get round-trips for every part, in float and in double */
  poc_part parts[4] = {POC_PART_WEIGHTS, POC_PART_GRAD, POC_PART_MOM, POC_PART_VAR};
  for (int k = 0; k < 4; k++) {
    for (size_t i = 0; i < P; i++) w1[i] = (float)(k + 1) * w[i];
    CHECK(poc_model_set(m, parts[k], w1, POC_DT_F32, err) == 0 &&
          poc_model_get(m, parts[k], w2, POC_DT_F32, err) == 0 && !memcmp(w1, w2, P * 4));
    for (size_t i = 0; i < P; i++) wd[i] = (double)w1[i];
    CHECK(poc_model_set(m, parts[k], wd, POC_DT_F64, err) == 0 &&
          poc_model_get(m, parts[k], w2, POC_DT_F32, err) == 0 && !memcmp(w1, w2, P * 4));
  }
  /* setting the weights is what the next forward uses */
  CHECK(poc_model_set(m, POC_PART_WEIGHTS, w, POC_DT_F32, err) == 0);
  CHECK(poc_model_forward(m, &mp.p, 0, lp2, NULL, err) == 0 && !memcmp(lp, lp2, n * 8));

  /* generation: a trainable and a frozen model of the same weights agree */
  int32_t prompt[] = {1, 2, 3}, out[8], out_ref[8];
  int k = poc_model_generate(m, prompt, 3, 8, 0, 1, -1, NULL, out, err);
  poc_model *fz = poc_model_new(cpu, &lay, w, POC_DT_F32, 0, 64, err);
  CHECK_MSG(fz != NULL, "%s", err);
  if (fz) {
    int k_ref = poc_model_generate(fz, prompt, 3, 8, 0, 1, -1, NULL, out_ref, err);
    CHECK(k == 8 && k_ref == 8 && !memcmp(out, out_ref, sizeof out));
    /* a frozen model has no gradient or optimizer state, and refuses a forward for
       backward; its plain forward is the trainable model's, bit for bit */
    CHECK(poc_model_zero_grad(fz, err) == -1 && strstr(err, "trainable"));
    CHECK(poc_model_grad_norm(fz, &norm, err) == -1 && strstr(err, "trainable"));
    CHECK(poc_model_get(fz, POC_PART_GRAD, w2, POC_DT_F32, err) == -1 && strstr(err, "trainable"));
    CHECK(poc_model_set(fz, POC_PART_MOM, w2, POC_DT_F32, err) == -1 && strstr(err, "trainable"));
    CHECK(poc_model_adamw(fz, &h, err) == -1 && strstr(err, "trainable"));
    CHECK(poc_model_host_f32(fz, POC_PART_GRAD) == NULL);
    CHECK(poc_model_forward(fz, &mp.p, POC_FWD_SAVE, lp2, NULL, err) == -1);
    CHECK(poc_model_backward(fz, &mp.p, dl, NULL, err) == -1);
    CHECK(poc_model_forward(fz, &mp.p, POC_FWD_ENTROPY, lp2, ent, err) == 0 &&
          !memcmp(lp, lp2, n * 8));
    poc_model_free(fz);
  }
  /* a backward needs a saved forward of the same pack, once */
  CHECK(poc_model_backward(m, &mp.p, dl, de, err) == -1 && strstr(err, "POC_FWD_SAVE"));
  CHECK(poc_model_forward(m, &mp.p, 0, lp2, NULL, err) == 0);
  CHECK(poc_model_backward(m, &mp.p, dl, de, err) == -1);
  CHECK(poc_model_forward(m, &mp.p, POC_FWD_SAVE, lp2, NULL, err) == 0);
  CHECK(poc_model_generate(m, prompt, 3, 2, 0, 1, -1, NULL, out, err) == 2);
  CHECK(poc_model_backward(m, &mp.p, dl, de, err) == -1); /* generation came in between */
  CHECK(poc_model_forward(m, &mp.p, POC_FWD_ENTROPY, lp2, NULL, err) == -1);
  /* bad input is an error, not a crash */
  CHECK(poc_model_new(cpu, &lay, w, POC_DT_F32, 1, 0, err) == NULL && err[0]);
  h.step = 0;
  CHECK(poc_model_adamw(m, &h, err) == -1 && strstr(err, "step"));

  poc_model_free(m);
  free(w); free(g); free(w1); free(w2); free(mo); free(va); free(wd);
  poc_layout_free(&lay);
}

/* The double device keeps no float buffers to hand out. */
static void test_cpu64_host(poc_device *c64) {
  char err[POC_ERR_LEN] = "";
  poc_config c = gt_config(16, 24, 20, 1, 2, 1, 8, 0, 1, 0);
  poc_layout lay;
  CHECK(poc_layout_init(&lay, &c, err) == 0);
  double *w = calloc(lay.n_params, 8), *b = malloc(lay.n_params * 8);
  for (size_t i = 0; i < lay.n_params; i++) w[i] = 1.0 / 3 + (double)i; /* not a float */
  poc_model *m = poc_model_new(c64, &lay, w, POC_DT_F64, 1, 8, err);
  CHECK_MSG(m != NULL, "%s", err);
  if (m) {
    CHECK(poc_model_host_f32(m, POC_PART_WEIGHTS) == NULL);
    /* double weights stay double: the gradient checks rely on it */
    CHECK(poc_model_get(m, POC_PART_WEIGHTS, b, POC_DT_F64, err) == 0 &&
          !memcmp(w, b, lay.n_params * 8));
    poc_model_free(m);
  }
  free(w);
  free(b);
  poc_layout_free(&lay);
}

static void test_open_names(void) {
  char err[POC_ERR_LEN] = "";
  CHECK(poc_device_open("gpu0", err) == NULL && strstr(err, "gpu0"));
  poc_device *d = poc_device_open("cpu", err);
  CHECK(d && !strcmp(d->name, "cpu") && d->acc == POC_DT_F32 && d->host_memory && d->desc[0]);
  poc_device_close(d);
  d = poc_device_open("cpu64", err);
  CHECK(d && !strcmp(d->name, "cpu64") && d->acc == POC_DT_F64 && d->act == POC_DT_F64);
  poc_device_close(d);
  d = poc_device_open("cuda", err);
#ifdef POC_HAVE_CUDA
  /* with the device built in, a machine without a GPU gets the driver's reason */
  if (!d) CHECK(!strncmp(err, "cuda: ", 6));
#else
  CHECK(d == NULL && !strcmp(err, "this poc was built without CUDA"));
#endif
  poc_device_close(d);
  /* auto always opens something: the GPU, else the CPU */
  d = poc_device_open("auto", err);
  CHECK_MSG(d && (!strcmp(d->name, "cuda") || !strcmp(d->name, "cpu")), "%s", err);
  poc_device_close(d);
}

int main(void) {
  poc_cpu_start(0, NULL); /* the GEMM kernels the processor allows */
  char err[POC_ERR_LEN] = "";
  poc_device *cpu = poc_device_open("cpu", err), *c64 = cpu ? poc_device_open("cpu64", err) : NULL;
  CHECK_MSG(cpu && c64, "%s", err);
  if (cpu && c64) {
    test_contract(cpu);
    test_cpu_vs_cpu64(cpu, c64);
    test_cpu64_host(c64);
  }
  poc_device_close(cpu);
  poc_device_close(c64);
  test_open_names();
  return check_summary("model_api");
}
