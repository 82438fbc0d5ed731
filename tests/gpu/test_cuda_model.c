/* test_cuda_model.c — the CUDA model against the CPU fp32 reference.
 *
 * Both backends get the same weights, rounded to bf16 beforehand so the device holds
 * exactly what the reference uses; what remains is bf16 rounding of activations, which
 * sets the tolerances: per-token log-probs and entropies within 2% in relative norm,
 * every tensor's gradient within 5%, the fused and textbook heads on the device within
 * 1e-4 of each other, no NaN anywhere. Outputs are poisoned with NaN before each call so
 * an unwritten element fails. Without a GPU the test says so and exits 77 (skipped).
 */
#include "gt.h"

static poc_backend *cpu, *gpu;

typedef struct {
  const char *label;
  poc_config c;
  int n_seq;
  int ctx[6], tgt[6];
} gt_case;

static void compare_case(const gt_case *k) {
  char err[POC_ERR_LEN] = "";
  poc_layout lay;
  CHECK(poc_layout_init(&lay, &k->c, err) == 0);
  size_t P = lay.n_params;
  float *w = malloc(P * 4), *gc = malloc(P * 4), *gg = malloc(P * 4);
  gt_weights(&lay, w, 5, 1);
  static gt_pack mp;
  gt_pack_make(&mp, k->n_seq, k->ctx, k->tgt, k->c.vocab_size, 3);
  const int n = poc_pack_targets(&mp.p), T = mp.p.n_tok;
  poc_bmodel *mc = cpu->model_new(cpu, &lay, w, 1, T, err);
  poc_bmodel *mg = gpu->model_new(gpu, &lay, w, 1, T, err);
  CHECK_MSG(mc && mg, "%s: %s", k->label, err);
  if (!mc || !mg) return;
  float *lc = malloc(n * 4), *ec = malloc(n * 4), *lg = malloc(n * 4), *eg = malloc(n * 4);
  float *lu = malloc(n * 4), *eu = malloc(n * 4), *dl = malloc(n * 4), *de = malloc(n * 4);
  gt_fill(lg, n, NAN);
  gt_fill(eg, n, NAN);
  gt_fill(lu, n, NAN);
  gt_fill(eu, n, NAN);
  int fl = POC_FWD_SAVE | POC_FWD_ENTROPY;
  CHECK(cpu->forward(mc, &mp.p, fl, lc, ec, err) == 0);
  CHECK_MSG(gpu->forward(mg, &mp.p, fl | POC_FWD_UNFUSED, lu, eu, err) == 0, "%s", err);
  CHECK_MSG(gpu->forward(mg, &mp.p, fl, lg, eg, err) == 0, "%s", err);
  double r_lp = gt_rel(lg, lc, n), r_en = gt_rel(eg, ec, n), r_fu = gt_rel(lg, lu, n),
         r_feu = gt_rel(eg, eu, n);
  printf("%s: %d tokens, %d targets: logp rel %.2e, entropy rel %.2e, fused vs textbook %.2e/%.2e\n",
         k->label, T, n, r_lp, r_en, r_fu, r_feu);
  CHECK_MSG(r_lp < 2e-2 && r_en < 2e-2, "%s: forward differs from the CPU", k->label);
  CHECK_MSG(r_fu < 1e-4 && r_feu < 1e-4, "%s: fused and textbook heads differ", k->label);

  /* backward from random seeds: every tensor's gradient */
  poc_rng r;
  poc_rng_seed(&r, 9);
  for (int i = 0; i < n; i++) {
    dl[i] = (float)gt_uniform(&r);
    de[i] = (float)(0.5 * gt_uniform(&r));
  }
  CHECK(cpu->backward(mc, &mp.p, dl, de, err) == 0);
  CHECK_MSG(gpu->backward(mg, &mp.p, dl, de, err) == 0, "%s", err);
  CHECK(cpu->get_grad(mc, gc, err) == 0 && gpu->get_grad(mg, gg, err) == 0);
  double worst = 0;
  const char *worst_name = "";
  for (int t = 0; t < lay.n_tensors; t++) {
    double e = gt_rel(gg + lay.tensors[t].offset, gc + lay.tensors[t].offset, lay.tensors[t].numel);
    if (!(e <= worst)) {
      worst = e;
      worst_name = lay.tensors[t].name;
    }
  }
  printf("%s: worst gradient %s rel %.2e\n", k->label, worst_name, worst);
  CHECK_MSG(worst < 5e-2, "%s: gradient of %s differs by %.3g", k->label, worst_name, worst);

  /* the textbook head's backward gives the fused one's gradients */
  float *gu = malloc(P * 4);
  CHECK(gpu->zero_grad(mg, err) == 0);
  CHECK(gpu->forward(mg, &mp.p, fl | POC_FWD_UNFUSED, lu, eu, err) == 0);
  CHECK(gpu->backward(mg, &mp.p, dl, de, err) == 0 && gpu->get_grad(mg, gu, err) == 0);
  double r_gu = gt_rel(gu, gg, P);
  CHECK_MSG(r_gu < 1e-3, "%s: textbook head gradients differ by %.3g", k->label, r_gu);

  /* gradient norm and AdamW against the CPU backend fed the same gradient */
  double nc = 0, ng = 0;
  CHECK(cpu->set_grad(mc, gu, err) == 0 && cpu->grad_norm(mc, &nc, err) == 0);
  CHECK(gpu->grad_norm(mg, &ng, err) == 0);
  CHECK_NEAR(ng, nc, 1e-5);
  poc_adamw h = {.lr = 1e-3, .beta1 = 0.9, .beta2 = 0.95, .eps = 1e-8, .weight_decay = 0.1,
                 .step = 1, .grad_scale = 0.7};
  CHECK(cpu->adamw_step(mc, &h, err) == 0 && gpu->adamw_step(mg, &h, err) == 0);
  CHECK(cpu->get_weights(mc, gc, err) == 0 && gpu->get_weights(mg, gg, err) == 0);
  double r_w = gt_rel(gg, gc, P);
  CHECK_MSG(r_w < 1e-6, "%s: AdamW weights differ by %.3g", k->label, r_w);

  /* a few whole steps of loss = −mean logp on both; losses stay together */
  for (int step = 2; step <= 4; step++) {
    double loss[2];
    poc_backend *bs[2] = {cpu, gpu};
    poc_bmodel *ms[2] = {mc, mg};
    for (int b = 0; b < 2; b++) {
      gt_fill(lg, n, NAN);
      CHECK(bs[b]->zero_grad(ms[b], err) == 0);
      CHECK(bs[b]->forward(ms[b], &mp.p, POC_FWD_SAVE, lg, NULL, err) == 0);
      loss[b] = 0;
      for (int i = 0; i < n; i++) {
        loss[b] -= lg[i] / n;
        dl[i] = -1.f / n;
      }
      CHECK(bs[b]->backward(ms[b], &mp.p, dl, NULL, err) == 0);
      h.step = step;
      h.grad_scale = 1;
      CHECK(bs[b]->adamw_step(ms[b], &h, err) == 0);
    }
    printf("%s: step %d loss cpu %.5f cuda %.5f\n", k->label, step, loss[0], loss[1]);
    CHECK(loss[1] == loss[1]);
    CHECK_NEAR(loss[1], loss[0], 2e-2);
  }

  /* greedy generation: the first token agrees (random weights leave clear maxima) */
  int32_t prompt[] = {1, 2, 3, 4, 5}, oc[6], og[6];
  int kc = cpu->generate(mc, prompt, 5, 6, 0, 1, -1, NULL, oc, err);
  int kg = gpu->generate(mg, prompt, 5, 6, 0, 1, -1, NULL, og, err);
  CHECK_MSG(kc == 6 && kg == 6, "%s", err);
  CHECK(oc[0] == og[0]);

  /* bad input is an error on the device too */
  CHECK(gpu->backward(mg, &mp.p, dl, NULL, err) == -1);
  mp.tok[0] = k->c.vocab_size;
  CHECK(gpu->forward(mg, &mp.p, 0, lg, NULL, err) == -1 && strstr(err, "vocabulary"));

  cpu->model_free(mc);
  gpu->model_free(mg);
  free(w); free(gc); free(gg); free(gu); free(lc); free(ec); free(lg); free(eg);
  free(lu); free(eu); free(dl); free(de);
  poc_layout_free(&lay);
}

int main(void) {
  char err[POC_ERR_LEN] = "";
  gpu = poc_backend_open("cuda", err);
  if (!gpu) {
    printf("skipped: no CUDA device (%s)\n", err);
    return 77;
  }
  printf("device: %s\n", gpu->device);
  cpu = poc_backend_open("cpu", err);
  /* a small head chunk so the fused head streams several chunks even at small V */
  setenv("POC_CUDA_HEAD_CHUNK", "384", 1);
  gt_case cases[] = {
      {"tiny", gt_config(64, 176, 1000, 2, 4, 2, 16, 0, 0, 0), 4, {5, 40, 3, 20}, {7, 30, 1, 45}},
      {"qwen-like", gt_config(256, 512, 1500, 2, 4, 1, 64, 1, 1, 1), 3, {17, 2, 33}, {16, 70, 9}},
      {"hd128", gt_config(256, 384, 700, 1, 2, 2, 128, 0, 0, 0), 2, {1, 60}, {100, 5}},
  };
  for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) compare_case(&cases[i]);
  poc_backend_close(cpu);
  poc_backend_close(gpu);
  return check_summary("cuda_model");
}
