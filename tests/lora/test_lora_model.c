/* test_lora_model.c — LoRA in the model (runtime/model.c) on the kernel interface:
 *
 *   cpu64   every adapter entry's gradient against central finite differences of
 *           L = Σ c·logp + Σ e·H, with dropout off and on (a fixed mask stream), on
 *           tiny models with GQA, QKV biases and an o_proj bias; no base-weight state;
 *           adapters off (B = 0, or a view with adapters = 0) = the plain model; the
 *           merged weights W + (alpha/r)·B·A in a plain model = the adapted model; the
 *           decode step (generation) with adapters = the packed forward's argmax
 *   cpu     float against cpu64: log-probs and adapter gradients, dropout on
 *   ARG     `test_lora_model cuda`: the same float comparison for the CUDA device
 *           (under tests/cuda_emul's emulation) against cpu64, bf16 tolerances
 */
#include "../model/mt.h"
#include "cpu/cpu_features.h"

static poc_config lt_cfg(int variant) {
  poc_config c = variant == 0 ? mt_config(16, 24, 37, 2, 4, 2, 4, 1, 0, 0)   /* GQA, qkv bias */
                              : mt_config(16, 20, 41, 2, 2, 2, 8, 1, 1, 0);  /* MHA, tied */
  if (variant == 1) c.o_proj_bias = 1;
  return c;
}

typedef struct {
  poc_config cfg;
  poc_layout lay, alay;
  poc_lora_cfg lc;
  double *w, *a;
  mt_pack mp;
  int n;
  double c[64], e[64];
} lt_case;

static void lt_make(lt_case *t, int variant, unsigned targets, double dropout, uint64_t seed) {
  char err[POC_ERR_LEN];
  memset(t, 0, sizeof *t);
  t->cfg = lt_cfg(variant);
  CHECK(poc_layout_init(&t->lay, &t->cfg, err) == 0);
  t->lc = (poc_lora_cfg){3, 5.0, dropout, targets};
  CHECK_MSG(poc_lora_layout(&t->lay, &t->lc, &t->alay, err) == 0, "%s", err);
  t->w = malloc(t->lay.n_params * sizeof(double));
  t->a = malloc(t->alay.n_params * sizeof(double));
  mt_weights(&t->lay, t->w, seed);
  /* nonzero B, or A's gradient would be zero and prove nothing */
  poc_rng r;
  poc_rng_seed(&r, seed + 7);
  for (size_t i = 0; i < t->alay.n_params; i++) t->a[i] = 0.4 * mt_uniform(&r);
  const int ctx[] = {3, 1, 5, 2}, tgt[] = {4, 3, 2, 5};
  mt_pack_make(&t->mp, 4, ctx, tgt, t->cfg.vocab_size, seed + 1);
  t->n = poc_pack_targets(&t->mp.p);
  for (int i = 0; i < t->n; i++) {
    t->c[i] = mt_uniform(&r);
    t->e[i] = mt_uniform(&r);
  }
}

static void lt_free(lt_case *t) {
  free(t->w);
  free(t->a);
  poc_layout_free(&t->alay);
  poc_layout_free(&t->lay);
}

static poc_model *lt_model(poc_device *d, lt_case *t) {
  char err[POC_ERR_LEN] = "";
  poc_model *m = poc_model_new_lora(d, &t->lay, &t->alay, &t->lc, 64, err);
  CHECK_MSG(m != NULL, "LoRA model on %s: %s", d->name, err);
  if (!m) exit(1);
  CHECK_MSG(poc_model_set(m, POC_PART_WEIGHTS, t->w, POC_DT_F64, err) == 0, "%s", err);
  CHECK_MSG(poc_model_set(m, POC_PART_ADAPTER, t->a, POC_DT_F64, err) == 0, "%s", err);
  return m;
}

/* L and the log-probs; flags add POC_FWD_SAVE for a backward */
static double lt_loss(poc_model *m, lt_case *t, int flags, double *logp) {
  char err[POC_ERR_LEN];
  double lp[64], en[64];
  if (!logp) logp = lp;
  if (poc_model_forward(m, &t->mp.p, flags | POC_FWD_ENTROPY, logp, en, err)) {
    fprintf(stderr, "forward failed: %s\n", err);
    return NAN;
  }
  double L = 0;
  for (int i = 0; i < t->n; i++) L += t->c[i] * logp[i] + t->e[i] * en[i];
  return L;
}

static void lt_grad(poc_model *m, lt_case *t, int drop, double *g) {
  char err[POC_ERR_LEN];
  poc_model_lora_dropout(m, drop, 0xD50);
  CHECK(poc_model_zero_grad(m, err) == 0);
  lt_loss(m, t, POC_FWD_SAVE, NULL);
  CHECK_MSG(poc_model_backward(m, &t->mp.p, t->c, t->e, err) == 0, "%s", err);
  CHECK_MSG(poc_model_get(m, POC_PART_GRAD, g, POC_DT_F64, err) == 0, "%s", err);
}

static void lt_gradcheck(poc_device *d, const char *name, int variant, unsigned targets,
                         double dropout, uint64_t seed) {
  char err[POC_ERR_LEN];
  lt_case t;
  lt_make(&t, variant, targets, dropout, seed);
  poc_model *m = lt_model(d, &t);
  CHECK(poc_model_train_layout(m) == &t.alay);
  size_t PA = t.alay.n_params;
  double *g = malloc(PA * sizeof *g);
  lt_grad(m, &t, 1, g);
  /* finite differences with the same mask stream: dropout on in forwards without save */
  const double h = 1e-5;
  int bad = 0;
  double worst = 0;
  for (size_t j = 0; j < PA; j++) {
    double save = t.a[j];
    t.a[j] = save + h;
    poc_model_set(m, POC_PART_ADAPTER, t.a, POC_DT_F64, err);
    double Lp = lt_loss(m, &t, 0, NULL);
    t.a[j] = save - h;
    poc_model_set(m, POC_PART_ADAPTER, t.a, POC_DT_F64, err);
    double Lm = lt_loss(m, &t, 0, NULL);
    t.a[j] = save;
    double num = (Lp - Lm) / (2 * h), s = fabs(num) > fabs(g[j]) ? fabs(num) : fabs(g[j]);
    double rel = s > 0 ? fabs(num - g[j]) / s : 0;
    if (rel > worst && s > 1e-7) worst = rel;
    if (fabs(num - g[j]) > 1e-6 * s + 1e-9 && bad++ < 5)
      fprintf(stderr, "%s: adapter entry %zu: analytic %.12g numeric %.12g\n", name, j, g[j], num);
  }
  poc_model_set(m, POC_PART_ADAPTER, t.a, POC_DT_F64, err);
  CHECK_MSG(bad == 0, "%s: %d of %zu adapter entries off", name, bad, PA);
  /* every adapter tensor gets a gradient */
  for (int i = 0; i < t.alay.n_tensors; i++) {
    double s = 0;
    for (size_t k = 0; k < t.alay.tensors[i].numel; k++) s += fabs(g[t.alay.tensors[i].offset + k]);
    CHECK_MSG(s > 0, "%s: %s has an all-zero gradient", name, t.alay.tensors[i].name);
  }
  /* dropout changes the values (else the "on" check proved nothing) */
  if (dropout > 0) {
    poc_model_lora_dropout(m, 0, 0);
    double off = lt_loss(m, &t, 0, NULL);
    poc_model_lora_dropout(m, 1, 0xD50);
    double on = lt_loss(m, &t, 0, NULL);
    poc_model_lora_dropout(m, 1, 0xD51);
    double other = lt_loss(m, &t, 0, NULL);
    CHECK_MSG(fabs(on - off) > 1e-6 && fabs(on - other) > 1e-6,
              "%s: dropout has no effect (%g %g %g)", name, off, on, other);
  }
  printf("%s: %zu adapter entries checked, %d off, worst relative error %.2e\n", name, PA, bad,
         worst);
  free(g);
  poc_model_free(m);
  lt_free(&t);
}

/* adapters off = plain model; merged = adapted; views share weights */
static void lt_equivalences(poc_device *d) {
  char err[POC_ERR_LEN];
  lt_case t;
  lt_make(&t, 0, (1u << POC_LT_N) - 1, 0.0, 91);
  poc_model *m = lt_model(d, &t), *plain = mt_model(d, &t.lay, t.w, 0, 64);
  double lp_lora[64], lp_plain[64], lp_view[64], lp_base[64], lp_merged[64];
  lt_loss(m, &t, 0, lp_lora);
  lt_loss(plain, &t, 0, lp_plain);
  poc_model *vb = poc_model_view(m, 0, 64, err), *va = poc_model_view(m, 1, 64, err);
  CHECK_MSG(vb && va, "view: %s", err);
  lt_loss(vb, &t, 0, lp_base);
  lt_loss(va, &t, 0, lp_view);
  double dmax = 0, dview = 0, dbase = 0;
  for (int i = 0; i < t.n; i++) {
    dmax = fmax(dmax, fabs(lp_lora[i] - lp_plain[i]));
    dview = fmax(dview, fabs(lp_view[i] - lp_lora[i]));
    dbase = fmax(dbase, fabs(lp_base[i] - lp_plain[i]));
  }
  CHECK_MSG(dmax > 1e-3, "the adapters change nothing (%g)", dmax);
  CHECK_MSG(dview < 1e-12, "a view with adapters differs from its model by %g", dview);
  CHECK_MSG(dbase < 1e-12, "a base-only view differs from the plain model by %g", dbase);
  /* the merge: a plain model with W + (alpha/r)·B·A */
  float *wf = malloc(t.lay.n_params * sizeof *wf), *af = malloc(t.alay.n_params * sizeof *af);
  double *wm = malloc(t.lay.n_params * sizeof *wm);
  for (size_t i = 0; i < t.lay.n_params; i++) wf[i] = 0;
  for (size_t i = 0; i < t.alay.n_params; i++) af[i] = (float)t.a[i];
  poc_lora_merge(&t.lay, &t.alay, &t.lc, af, wf); /* the update alone, from zeros */
  for (size_t i = 0; i < t.lay.n_params; i++) wm[i] = t.w[i] + wf[i];
  /* the reference: the same adapters, as floats, in the adapted model */
  double *a64 = malloc(t.alay.n_params * sizeof *a64);
  for (size_t i = 0; i < t.alay.n_params; i++) a64[i] = af[i];
  poc_model_set(m, POC_PART_ADAPTER, a64, POC_DT_F64, err);
  lt_loss(m, &t, 0, lp_lora);
  poc_model_set(plain, POC_PART_WEIGHTS, wm, POC_DT_F64, err);
  lt_loss(plain, &t, 0, lp_merged);
  double dm = 0;
  for (int i = 0; i < t.n; i++) dm = fmax(dm, fabs(lp_merged[i] - lp_lora[i]));
  CHECK_MSG(dm < 1e-6, "merged weights differ from the adapters by %g in log-prob", dm);
  /* B = 0 (PEFT's initialisation) is the base model exactly */
  float *init = malloc(t.alay.n_params * sizeof *init);
  poc_lora_init(&t.alay, 5, init);
  double *i64 = malloc(t.alay.n_params * sizeof *i64);
  double nz = 0;
  for (size_t i = 0; i < t.alay.n_params; i++) nz += fabs(i64[i] = init[i]);
  CHECK(nz > 0);
  /* PEFT's: A ~ U(±1/√in) (variance 1/(3·in)), B = 0 */
  for (int k = 0; k < t.alay.n_tensors; k++) {
    const poc_tensor_info *ti = &t.alay.tensors[k];
    int is_b = strstr(ti->name, "lora_B") != NULL;
    double bound = 1 / sqrt((double)ti->shape[1]), ss = 0, mx = 0;
    for (size_t j = 0; j < ti->numel; j++) {
      double v = init[ti->offset + j];
      ss += v * v;
      mx = fmax(mx, fabs(v));
    }
    if (is_b) {
      CHECK_MSG(mx == 0, "%s is not zero at the start", ti->name);
    } else {
      double var = ss / (double)ti->numel, want = bound * bound / 3;
      CHECK_MSG(mx <= bound && fabs(var - want) < 0.25 * want, "%s: max %g (bound %g), "
                "variance %g (want %g)", ti->name, mx, bound, var, want);
    }
  }
  poc_model_set(m, POC_PART_ADAPTER, i64, POC_DT_F64, err);
  poc_model_set(plain, POC_PART_WEIGHTS, t.w, POC_DT_F64, err);
  lt_loss(m, &t, 0, lp_lora);
  lt_loss(plain, &t, 0, lp_plain);
  double d0 = 0;
  for (int i = 0; i < t.n; i++) d0 = fmax(d0, fabs(lp_lora[i] - lp_plain[i]));
  CHECK_MSG(d0 == 0, "fresh adapters (B = 0) change the log-probs by %g", d0);
  /* generation: the decode step adds the adapters too — greedy tokens from the adapted
     model equal the argmax of a packed forward over every vocabulary entry */
  poc_model_set(m, POC_PART_ADAPTER, t.a, POC_DT_F64, err);
  int32_t prompt[4] = {3, 9, 1, 5}, out[1];
  poc_rng rr;
  poc_rng_seed(&rr, 1);
  CHECK(poc_model_generate(m, prompt, 4, 1, 0.0, 1.0, -1, &rr, out, err) == 1);
  mt_pack all;
  int V = t.cfg.vocab_size, best = 0;
  double bestv = -1e300;
  for (int v = 0; v < V; v++) {
    int ctx[1] = {4}, tg[1] = {1};
    mt_pack_make(&all, 1, ctx, tg, V, 1);
    memcpy(all.tok, prompt, sizeof prompt);
    all.tok[4] = v;
    double lp;
    CHECK(poc_model_forward(m, &all.p, 0, &lp, NULL, err) == 0);
    if (lp > bestv) bestv = lp, best = v;
  }
  CHECK_MSG(out[0] == best, "greedy decode with adapters gave %d, the packed forward %d", out[0],
            best);
  free(init);
  free(i64);
  free(a64);
  free(wf);
  free(af);
  free(wm);
  poc_model_free(va);
  poc_model_free(vb);
  poc_model_free(plain);
  poc_model_free(m);
  lt_free(&t);
}

/* device dev against cpu64: log-probs and adapter gradients with dropout on */
static void lt_compare(poc_device *dev, poc_device *ref, double tol_lp, double tol_g) {
  lt_case t;
  lt_make(&t, 0, (1u << POC_LT_N) - 1, 0.25, 17);
  poc_model *a = lt_model(dev, &t), *b = lt_model(ref, &t);
  size_t PA = t.alay.n_params;
  double *ga = malloc(PA * sizeof *ga), *gb = malloc(PA * sizeof *gb);
  double lpa[64], lpb[64];
  poc_model_lora_dropout(a, 1, 99);
  poc_model_lora_dropout(b, 1, 99);
  lt_loss(a, &t, 0, lpa);
  lt_loss(b, &t, 0, lpb);
  double dl = 0;
  for (int i = 0; i < t.n; i++) dl = fmax(dl, fabs(lpa[i] - lpb[i]));
  lt_grad(a, &t, 1, ga);
  lt_grad(b, &t, 1, gb);
  double gmax = 0, dg = 0;
  for (size_t i = 0; i < PA; i++) {
    gmax = fmax(gmax, fabs(gb[i]));
    dg = fmax(dg, fabs(ga[i] - gb[i]));
  }
  printf("%s vs cpu64: log-prob max diff %.2e, adapter gradient max diff %.2e (max |g| %.2e)\n",
         dev->name, dl, dg, gmax);
  CHECK_MSG(dl < tol_lp, "%s: log-probs differ by %g", dev->name, dl);
  CHECK_MSG(dg < tol_g * gmax, "%s: adapter gradients differ by %g", dev->name, dg);
  free(ga);
  free(gb);
  poc_model_free(a);
  poc_model_free(b);
  lt_free(&t);
}

int main(int argc, char **argv) {
  poc_cpu_start(argc, argv);
  poc_device *d64 = mt_device("cpu64");
  if (argc > 1 && !strcmp(argv[1], "cuda")) {
    poc_device *cu = mt_device("cuda");
    lt_compare(cu, d64, 0.05, 0.05);
    poc_device_close(cu);
    poc_device_close(d64);
    return check_summary("lora_model_cuda");
  }
  const unsigned all = (1u << POC_LT_N) - 1;
  lt_gradcheck(d64, "all_targets", 0, all, 0.0, 5);
  lt_gradcheck(d64, "all_targets_dropout", 0, all, 0.3, 6);
  lt_gradcheck(d64, "attn_only_tied_obias", 1,
               1u << POC_LT_Q | 1u << POC_LT_V | 1u << POC_LT_O, 0.2, 7);
  lt_gradcheck(d64, "mlp_only", 1, 1u << POC_LT_GATE | 1u << POC_LT_UP | 1u << POC_LT_DOWN, 0.0, 8);
  lt_equivalences(d64);
  poc_device *d32 = mt_device("cpu");
  lt_compare(d32, d64, 1e-4, 1e-4);
  poc_device_close(d32);
  poc_device_close(d64);
  return check_summary("lora_model");
}
