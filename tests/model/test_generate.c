/* test_generate.c — decoding with the KV cache against recomputing the whole forward
 * each step (greedy and sampled, on the float and double CPU devices), eos, and the
 * nucleus sampler. */
#include "mt.h"
#include "cpu/cpu_features.h"

/* All next-token log-probs after `ctx` from the packed forward: one sequence ctx ++ [v]
 * for every v. */
#define GEN_MAXV 64
#define GEN_MAXC 24
static int32_t g_tok[GEN_MAXV * (GEN_MAXC + 1)], g_ss[GEN_MAXV + 1], g_ts[GEN_MAXV];

static poc_pack all_next(const int32_t *ctx, int n, int V) {
  for (int v = 0; v < V; v++) {
    g_ss[v] = v * (n + 1);
    g_ts[v] = g_ss[v] + n;
    memcpy(g_tok + g_ss[v], ctx, (size_t)n * sizeof(int32_t));
    g_tok[g_ts[v]] = v;
  }
  g_ss[V] = V * (n + 1);
  poc_pack p = {V, V * (n + 1), g_tok, g_ss, g_ts};
  return p;
}

/* What generation must produce, from full forwards: greedy argmax (first on ties), or
 * softmax(logp/T) — the same as of logits/T — drawn by the nucleus sampler. */
static int reference64(poc_model *m, int V, const int32_t *prompt, int np, int max_new,
                       double temp, double top_p, int eos, poc_rng *rng, int32_t *out) {
  int32_t ctx[GEN_MAXC];
  memcpy(ctx, prompt, (size_t)np * sizeof(int32_t));
  double lp[GEN_MAXV], pr[GEN_MAXV];
  char err[POC_ERR_LEN];
  int k = 0;
  while (k < max_new) {
    poc_pack p = all_next(ctx, np + k, V);
    if (poc_model_forward(m, &p, 0, lp, NULL, err)) return -1;
    int best = 0;
    for (int v = 1; v < V; v++)
      if (lp[v] > lp[best]) best = v;
    int tok = best;
    if (temp > 0) {
      double s = 0;
      for (int v = 0; v < V; v++) s += pr[v] = exp((lp[v] - lp[best]) / temp);
      for (int v = 0; v < V; v++) pr[v] /= s;
      tok = poc_sample_top_p(pr, V, top_p, rng);
    }
    out[k] = ctx[np + k] = tok;
    k++;
    if (tok == eos) break;
  }
  return k;
}

static void gen_case(poc_device *d64, poc_device *d32, const char *name, poc_config cfg,
                     uint64_t seed) {
  char err[POC_ERR_LEN];
  poc_layout lay;
  CHECK(poc_layout_init(&lay, &cfg, err) == 0);
  const int V = cfg.vocab_size, np = 5, max_new = 12;
  double *w = malloc(lay.n_params * sizeof *w);
  mt_weights(&lay, w, seed);
  /* sharper distributions make greedy paths less tie-prone and sampling less uniform */
  for (size_t i = 0; i < lay.n_params; i++) w[i] *= 1.3;
  poc_model *m = mt_model(d64, &lay, w, 0, GEN_MAXV * (GEN_MAXC + 1));
  /* a workspace far smaller than prompt + new tokens: the KV cache is generation's own */
  poc_model *mf = mt_model(d32, &lay, w, 0, 8);
  int32_t prompt[5] = {3, 1, 4, 1, 5}, want[32], got[32], gotf[32];

  int nw = reference64(m, V, prompt, np, max_new, 0, 1, -1, NULL, want);
  int ng = poc_model_generate(m, prompt, np, max_new, 0, 1, -1, NULL, got, err);
  int nf = poc_model_generate(mf, prompt, np, max_new, 0, 1, -1, NULL, gotf, err);
  CHECK(nw == max_new && ng == max_new && nf == max_new);
  CHECK_MSG(memcmp(want, got, sizeof(int32_t) * max_new) == 0, "%s: f64 greedy differs", name);
  CHECK_MSG(memcmp(want, gotf, sizeof(int32_t) * max_new) == 0, "%s: f32 greedy differs", name);
  int distinct = 0;
  for (int i = 0; i < max_new; i++) distinct += i == 0 || want[i] != want[i - 1];
  CHECK_MSG(distinct > 1, "%s: greedy path is one repeated token; a weak test", name);

  /* eos: stop right after the first occurrence of the fourth greedy token */
  int eos = want[3], first = 0;
  while (want[first] != eos) first++;
  CHECK(poc_model_generate(m, prompt, np, max_new, 0, 1, eos, NULL, got, err) == first + 1);
  CHECK(got[first] == eos);

  /* sampling: the same stream gives the same draws as the recomputing reference */
  for (int trial = 0; trial < 3; trial++) {
    poc_rng r1 = poc_rng_derive(seed, trial, 0), r2 = r1, r3 = r1;
    double temp = 0.7 + 0.3 * trial, top_p = 0.8 + 0.1 * trial;
    nw = reference64(m, V, prompt, np, max_new, temp, top_p, -1, &r1, want);
    ng = poc_model_generate(m, prompt, np, max_new, temp, top_p, -1, &r2, got, err);
    nf = poc_model_generate(mf, prompt, np, max_new, temp, top_p, -1, &r3, gotf, err);
    CHECK(nw == max_new && ng == max_new && nf == max_new);
    CHECK_MSG(memcmp(want, got, sizeof(int32_t) * max_new) == 0, "%s: f64 sampling differs",
              name);
    CHECK_MSG(memcmp(want, gotf, sizeof(int32_t) * max_new) == 0, "%s: f32 sampling differs",
              name);
  }
  /* errors */
  CHECK(poc_model_generate(m, prompt, 0, 4, 0, 1, -1, NULL, got, err) == -1);
  prompt[2] = V;
  CHECK(poc_model_generate(m, prompt, np, 4, 0, 1, -1, NULL, got, err) == -1);
  CHECK(strstr(err, "vocabulary") != NULL);
  prompt[2] = 4;
  CHECK(poc_model_generate(m, prompt, np, 4, 1.0, 1, -1, NULL, got, err) == -1);
  CHECK(poc_model_generate(m, prompt, np, 0, 0, 1, -1, NULL, got, err) == 0);
  poc_model_free(m);
  poc_model_free(mf);
  free(w);
  poc_layout_free(&lay);
}

/* The nucleus: never a token outside it, frequencies as renormalised, ties by id. */
static void top_p_case(void) {
  const double p[6] = {0.05, 0.3, 0.1, 0.25, 0.2, 0.1};
  /* ranked 1 (.3), 3 (.25), 4 (.2): mass .75 >= .7 is the nucleus */
  const double want[6] = {0, 0.3 / 0.75, 0, 0.25 / 0.75, 0.2 / 0.75, 0};
  poc_rng r;
  poc_rng_seed(&r, 99);
  int cnt[6] = {0}, N = 20000;
  for (int i = 0; i < N; i++) {
    int t = poc_sample_top_p(p, 6, 0.7, &r);
    CHECK(t >= 0 && t < 6);
    if (t >= 0 && t < 6) cnt[t]++;
  }
  for (int v = 0; v < 6; v++) {
    if (want[v] == 0) CHECK_MSG(cnt[v] == 0, "token %d outside the nucleus drawn %d times", v, cnt[v]);
    else CHECK_MSG(fabs(cnt[v] / (double)N - want[v]) < 0.015, "token %d: %g vs %g", v,
                   cnt[v] / (double)N, want[v]);
  }
  /* ties: four equal tokens, top_p = 0.5 keeps exactly the two lowest ids */
  const double q[4] = {0.25, 0.25, 0.25, 0.25};
  int seen[4] = {0};
  for (int i = 0; i < 2000; i++) seen[poc_sample_top_p(q, 4, 0.5, &r)]++;
  CHECK(seen[0] > 800 && seen[1] > 800 && seen[2] == 0 && seen[3] == 0);
  /* top_p ≥ 1 keeps every token with mass; a tiny top_p only the most likely */
  int all[6] = {0};
  for (int i = 0; i < N; i++) all[poc_sample_top_p(p, 6, 1.0, &r)]++;
  for (int v = 0; v < 6; v++) CHECK_NEAR(all[v] / (double)N, p[v], 0.015);
  for (int i = 0; i < 100; i++) CHECK(poc_sample_top_p(p, 6, 1e-9, &r) == 1);
  /* zero-probability tokens are never drawn, even with top_p = 1 */
  const double z[3] = {0, 1, 0};
  for (int i = 0; i < 100; i++) CHECK(poc_sample_top_p(z, 3, 1.0, &r) == 1);
}

int main(void) {
  poc_cpu_start(0, NULL); /* the GEMM kernels the processor allows */
  poc_device *d64 = mt_device("cpu64"), *d32 = mt_device("cpu");
  top_p_case();
  gen_case(d64, d32, "gqa_bias_untied", mt_config(16, 24, 47, 2, 4, 2, 4, 1, 0, 0), 3);
  gen_case(d64, d32, "tied_llama3", mt_config(24, 20, 53, 2, 4, 2, 8, 0, 1, 1), 4);
  poc_device_close(d32);
  poc_device_close(d64);
  return check_summary("model_generate");
}
