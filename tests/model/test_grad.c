/* test_grad.c — float64 gradient check of every weight tensor against central finite
 * differences, on tiny models covering GQA, QKV biases, tied and untied embeddings and
 * Llama-3 RoPE scaling, with a loss over several packed context-conditioned sequences:
 *   L = Σ_t c_t·logp_t + Σ_t e_t·H_t   (random c, e).
 * Small tensors are checked entry by entry, large ones on a sample that favours the
 * embedding rows the pack uses. Both heads (fused and textbook) are checked. The model
 * runs on the "cpu64" device (double everywhere); a perturbed weight goes in through
 * poc_model_set, as a whole host array. */
#include "mt.h"
#include "cpu/cpu_features.h"

typedef struct {
  poc_model *m;
  const double *w;
  const mt_pack *mp;
  const double *c, *e;
  double *logp, *ent;
  int flags;
} gc_ctx;

static double gc_loss(gc_ctx *g) {
  char err[POC_ERR_LEN];
  if (poc_model_set(g->m, POC_PART_WEIGHTS, g->w, POC_DT_F64, err) ||
      poc_model_forward(g->m, &g->mp->p, g->flags | POC_FWD_ENTROPY, g->logp, g->ent, err)) {
    fprintf(stderr, "forward failed: %s\n", err);
    return NAN;
  }
  int n = poc_pack_targets(&g->mp->p);
  double L = 0;
  for (int i = 0; i < n; i++) L += g->c[i] * g->logp[i] + g->e[i] * g->ent[i];
  return L;
}

static int gc_close(double a, double b) {
  double s = fabs(a) > fabs(b) ? fabs(a) : fabs(b);
  return fabs(a - b) <= 1e-6 * s + 1e-9;
}

static void gc_run(poc_device *d, const char *name, poc_config cfg, int unfused, uint64_t seed) {
  char err[POC_ERR_LEN];
  poc_layout lay;
  CHECK(poc_layout_init(&lay, &cfg, err) == 0);
  double *w = malloc(lay.n_params * sizeof *w), *gr = calloc(lay.n_params, sizeof *gr);
  mt_weights(&lay, w, seed);
  const int ctx[] = {3, 1, 5, 2}, tgt[] = {4, 3, 2, 5};
  mt_pack mp;
  mt_pack_make(&mp, 4, ctx, tgt, cfg.vocab_size, seed + 1);
  int n = poc_pack_targets(&mp.p);
  double c[64], e[64], logp[64], ent[64];
  poc_rng r;
  poc_rng_seed(&r, seed + 2);
  for (int i = 0; i < n; i++) {
    c[i] = mt_uniform(&r);
    e[i] = mt_uniform(&r);
  }
  poc_model *m = mt_model(d, &lay, w, 1, 64);
  gc_ctx g = {m, w, &mp, c, e, logp, ent, unfused ? POC_FWD_UNFUSED : 0};
  g.flags |= POC_FWD_SAVE;
  double L0 = gc_loss(&g);
  CHECK(L0 == L0);
  CHECK_MSG(poc_model_backward(m, &mp.p, c, e, err) == 0, "%s", err);
  mt_grad(m, gr);
  g.flags &= ~POC_FWD_SAVE;

  const double h = 1e-5;
  int checked = 0, bad = 0;
  double worst_all = 0;
  for (int ti = 0; ti < lay.n_tensors; ti++) {
    const poc_tensor_info *t = &lay.tensors[ti];
    int full = t->numel <= 200;
    int count = full ? (int)t->numel : 48;
    int is_embed = strstr(t->name, "embed_tokens") != NULL;
    double worst = 0;
    int tensor_bad = 0;
    for (int k = 0; k < count; k++) {
      size_t j;
      if (full)
        j = (size_t)k;
      else if (is_embed && k % 2 == 0) /* a row the pack uses */
        j = (size_t)mp.tok[poc_rng_next(&r) % mp.p.n_tok] * t->shape[1] +
            poc_rng_next(&r) % t->shape[1];
      else
        j = poc_rng_next(&r) % t->numel;
      double *p = w + t->offset + j, save = *p;
      *p = save + h;
      double Lp = gc_loss(&g);
      *p = save - h;
      double Lm = gc_loss(&g);
      *p = save;
      double num = (Lp - Lm) / (2 * h), ana = gr[t->offset + j];
      double s = fabs(num) > fabs(ana) ? fabs(num) : fabs(ana);
      if (s > 0 && fabs(num - ana) / s > worst) worst = fabs(num - ana) / s;
      checked++;
      if (!gc_close(ana, num)) {
        if (tensor_bad++ < 3)
          fprintf(stderr, "%s: %s[%zu]: analytic %.12g numeric %.12g\n", name, t->name, j,
                  ana, num);
        bad++;
      }
    }
    if (worst > worst_all) worst_all = worst;
    CHECK_MSG(tensor_bad == 0, "%s: %s: %d of %d entries off", name, t->name, tensor_bad,
              count);
  }
  /* every tensor received some gradient (a missing backward path would leave zeros) */
  for (int ti = 0; ti < lay.n_tensors; ti++) {
    const poc_tensor_info *t = &lay.tensors[ti];
    double s = 0;
    for (size_t j = 0; j < t->numel; j++) s += fabs(gr[t->offset + j]);
    CHECK_MSG(s > 0, "%s: %s has an all-zero gradient", name, t->name);
  }
  printf("%s: %d entries checked, %d off, worst relative error %.2e\n", name, checked, bad,
         worst_all);
  poc_model_free(m);
  free(w);
  free(gr);
  poc_layout_free(&lay);
}

int main(void) {
  poc_cpu_start(0, NULL); /* the GEMM kernels the processor allows */
  poc_device *d = mt_device("cpu64");
  /* GQA (4 heads over 2 kv heads), QKV bias, untied head */
  gc_run(d, "gqa_bias_untied", mt_config(16, 24, 47, 2, 4, 2, 4, 1, 0, 0), 0, 11);
  /* head_dim·heads ≠ hidden, tied embeddings, Llama-3 RoPE scaling */
  gc_run(d, "tied_llama3", mt_config(24, 20, 53, 2, 4, 2, 8, 0, 1, 1), 0, 22);
  /* plain multi-head attention through the textbook head, with biases and tying */
  gc_run(d, "mha_unfused", mt_config(16, 16, 41, 2, 2, 2, 8, 1, 1, 0), 1, 33);
  /* one kv head for all query heads (multi-query) */
  gc_run(d, "mqa", mt_config(16, 24, 40, 1, 4, 1, 4, 0, 0, 0), 0, 44);
  /* Llama with attention_bias: q, k, v and o_proj biases */
  poc_config ob = mt_config(16, 24, 43, 2, 4, 2, 4, 1, 0, 0);
  ob.o_proj_bias = 1;
  gc_run(d, "llama_o_bias", ob, 0, 55);
  poc_device_close(d);
  return check_summary("model_grad");
}
