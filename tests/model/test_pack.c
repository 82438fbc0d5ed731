/* test_pack.c — packing: a pack of sequences gives the log-probs, entropies and
 * gradients each sequence gives alone (so attention never crosses a sequence and
 * positions restart); runs repeat bit for bit; the float device ("cpu") agrees with the
 * double one ("cpu64"); bad packs and misuse are refused with a message. */
#include "mt.h"
#include "cpu/cpu_features.h"

#define NSEQ 5
static const int CTX[NSEQ] = {4, 1, 6, 2, 3}, TGT[NSEQ] = {3, 5, 1, 4, 6};
/* long enough that every loop runs on a thread team (see MDL_PAR_MIN) */
static const int CTX_BIG[NSEQ] = {150, 20, 90, 61, 33}, TGT_BIG[NSEQ] = {60, 140, 50, 9, 80};
#define MAXT 1024

/* Forward and backward (seeds c, e) of a pack. */
static void fwd_bwd(poc_model *m, const poc_pack *p, int flags, const double *c,
                      const double *e, double *logp, double *ent) {
  char err[POC_ERR_LEN];
  int ok = poc_model_forward(m, p, flags | POC_FWD_SAVE | POC_FWD_ENTROPY, logp, ent, err);
  CHECK_MSG(ok == 0, "%s", err);
  ok = poc_model_backward(m, p, c, e, err);
  CHECK_MSG(ok == 0, "%s", err);
}

static double maxrel(const double *a, const double *b, size_t n) {
  double worst = 0;
  for (size_t i = 0; i < n; i++) {
    double s = fmax(1, fmax(fabs(a[i]), fabs(b[i])));
    worst = fmax(worst, fabs(a[i] - b[i]) / s);
  }
  return worst;
}

static void pack_case(poc_device *d64, poc_device *d32, const char *name, poc_config cfg, int flags, const int *CTX,
                      const int *TGT, uint64_t seed) {
  char err[POC_ERR_LEN];
  poc_layout lay;
  CHECK(poc_layout_init(&lay, &cfg, err) == 0);
  size_t P = lay.n_params;
  double *w = malloc(P * sizeof *w), *gp = calloc(P, sizeof *gp), *gs = calloc(P, sizeof *gs);
  mt_weights(&lay, w, seed);
  mt_pack mp, one;
  mt_pack_make(&mp, NSEQ, CTX, TGT, cfg.vocab_size, seed + 1);
  int n = poc_pack_targets(&mp.p);
  double c[MAXT], e[MAXT], lp[MAXT], en[MAXT], lp1[MAXT], en1[MAXT];
  poc_rng r;
  poc_rng_seed(&r, seed + 2);
  for (int i = 0; i < n; i++) {
    c[i] = mt_uniform(&r);
    e[i] = mt_uniform(&r);
  }

  /* float64: packed vs one at a time (gradients summed) */
  poc_model *mp64 = mt_model(d64, &lay, w, 1, MAXT);
  poc_model *ms64 = mt_model(d64, &lay, w, 1, MAXT);
  fwd_bwd(mp64, &mp.p, flags, c, e, lp, en);
  int at = 0;
  for (int s = 0; s < NSEQ; s++) {
    mt_pack_one(&one, &mp, s);
    fwd_bwd(ms64, &one.p, flags, c + at, e + at, lp1 + at, en1 + at);
    at += TGT[s];
  }
  CHECK(at == n);
  mt_grad(mp64, gp);
  mt_grad(ms64, gs);
  double d1 = maxrel(lp, lp1, (size_t)n), d2 = maxrel(en, en1, (size_t)n),
         d3 = maxrel(gp, gs, P);
  CHECK_MSG(d1 < 1e-12 && d2 < 1e-12, "%s: f64 packed vs alone logp %g entropy %g", name, d1, d2);
  CHECK_MSG(d3 < 1e-10, "%s: f64 packed vs alone gradients differ by %g", name, d3);

  /* a frozen model (no gradient buffer) computes the same forward */
  poc_model *mf = mt_model(d64, &lay, w, 0, MAXT);
  double lpf[MAXT], enf[MAXT];
  CHECK(poc_model_forward(mf, &mp.p, (flags & POC_FWD_UNFUSED) | POC_FWD_ENTROPY, lpf, enf,
                          err) == 0);
  CHECK(maxrel(lp, lpf, (size_t)n) == 0 && maxrel(en, enf, (size_t)n) == 0);
  CHECK(poc_model_forward(mf, &mp.p, POC_FWD_SAVE, lpf, NULL, err) == -1);
  poc_model_free(mf);

  /* bit-for-bit repeat: same pack, fresh gradient */
  double *g2 = calloc(P, sizeof *g2), lp2[MAXT], en2[MAXT];
  poc_model *mr = mt_model(d64, &lay, w, 1, MAXT);
  fwd_bwd(mr, &mp.p, flags, c, e, lp2, en2);
  mt_grad(mr, g2);
  CHECK(memcmp(lp, lp2, (size_t)n * sizeof(double)) == 0);
  CHECK(memcmp(gp, g2, P * sizeof(double)) == 0);
  /* gradients accumulate: a second backward adds the same again */
  fwd_bwd(mr, &mp.p, flags, c, e, lp2, en2);
  mt_grad(mr, g2);
  double worst = 0;
  for (size_t i = 0; i < P; i++) worst = fmax(worst, fabs(g2[i] - 2 * gp[i]));
  CHECK_MSG(worst < 1e-12, "%s: second backward did not accumulate (%g)", name, worst);
  poc_model_free(mr);

  /* float32: packed vs alone, and vs float64 */
  double *gpf = calloc(P, sizeof *gpf), *gsf = calloc(P, sizeof *gsf);
  double lpp[MAXT], enp[MAXT], lps[MAXT], ens[MAXT];
  poc_model *mp32 = mt_model(d32, &lay, w, 1, MAXT);
  poc_model *ms32 = mt_model(d32, &lay, w, 1, MAXT);
  fwd_bwd(mp32, &mp.p, flags, c, e, lpp, enp);
  at = 0;
  for (int s = 0; s < NSEQ; s++) {
    mt_pack_one(&one, &mp, s);
    fwd_bwd(ms32, &one.p, flags, c + at, e + at, lps + at, ens + at);
    at += TGT[s];
  }
  mt_grad(mp32, gpf);
  mt_grad(ms32, gsf);
  double wl = 0, we = 0, wg = 0, w64 = 0, wg64 = 0;
  for (int i = 0; i < n; i++) {
    wl = fmax(wl, fabs(lpp[i] - lps[i]) / fmax(1, fabs(lps[i])));
    we = fmax(we, fabs(enp[i] - ens[i]) / fmax(1, fabs(ens[i])));
    w64 = fmax(w64, fabs(lpp[i] - lp[i]) / fmax(1, fabs(lp[i])));
    w64 = fmax(w64, fabs(enp[i] - en[i]) / fmax(1, fabs(en[i])));
  }
  double gscale = 0;
  for (size_t i = 0; i < P; i++) gscale = fmax(gscale, fabs(gp[i]));
  for (size_t i = 0; i < P; i++) {
    wg = fmax(wg, fabs(gpf[i] - gsf[i]) / gscale);
    wg64 = fmax(wg64, fabs(gpf[i] - gp[i]) / gscale);
  }
  CHECK_MSG(wl < 1e-5 && we < 1e-5, "%s: f32 packed vs alone logp %g entropy %g", name, wl, we);
  CHECK_MSG(wg < 1e-5, "%s: f32 packed vs alone gradients %g", name, wg);
  CHECK_MSG(w64 < 1e-5, "%s: f32 forward off float64 by %g", name, w64);
  CHECK_MSG(wg64 < 1e-4, "%s: f32 gradients off float64 by %g", name, wg64);
  printf("%s: f64 %.1e/%.1e, f32 packing %.1e/%.1e, f32 vs f64 %.1e/%.1e\n", name, d1, d3,
         fmax(wl, we), wg, w64, wg64);

  poc_model_free(mp32);
  poc_model_free(ms32);
  poc_model_free(mp64);
  poc_model_free(ms64);
  free(w); free(gp); free(gs); free(g2); free(gpf); free(gsf);
  poc_layout_free(&lay);
}

/* Bad packs and misuse are refused with a message, never a crash. */
static void pack_errors(poc_device *d64) {
  char err[POC_ERR_LEN];
  poc_config cfg = mt_config(16, 24, 40, 1, 4, 2, 4, 0, 0, 0);
  cfg.sliding_window = 8;
  poc_layout lay;
  CHECK(poc_layout_init(&lay, &cfg, err) == 0);
  double *w = calloc(lay.n_params, sizeof *w);
  poc_model *m = mt_model(d64, &lay, w, 1, 16);
  double lp[32];
  int32_t tok[20] = {1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16, 17, 18, 19, 20};
  int32_t ss[3] = {0, 4, 8}, ts[2] = {2, 4};
  poc_pack p = {2, 8, tok, ss, ts};
  CHECK(poc_model_forward(m, &p, 0, lp, NULL, err) == -1); /* empty context */
  CHECK(strstr(err, "sequence 1") != NULL);
  ts[1] = 5;
  CHECK(poc_model_forward(m, &p, 0, lp, NULL, err) == 0);
  CHECK(poc_model_backward(m, &p, lp, NULL, err) == -1); /* no saved forward */
  CHECK(strstr(err, "POC_FWD_SAVE") != NULL);
  tok[6] = 40;
  CHECK(poc_model_forward(m, &p, 0, lp, NULL, err) == -1);
  CHECK(strstr(err, "vocabulary") != NULL);
  tok[6] = 7;
  int32_t ss2[2] = {0, 9}, ts2[1] = {3};
  poc_pack p2 = {1, 9, tok, ss2, ts2};
  CHECK(poc_model_forward(m, &p2, 0, lp, NULL, err) == -1); /* beyond the window */
  CHECK(strstr(err, "sliding window") != NULL);
  int32_t ss3[2] = {0, 20}, ts3[1] = {3};
  poc_pack p3 = {1, 20, tok, ss3, ts3};
  CHECK(poc_model_forward(m, &p3, 0, lp, NULL, err) == -1); /* beyond the workspace */
  CHECK(strstr(err, "workspace") != NULL);
  CHECK(poc_model_forward(m, &p, POC_FWD_ENTROPY, lp, NULL, err) == -1);
  /* a backward consumes its forward: a second one has nothing saved to run on */
  CHECK(poc_model_forward(m, &p, POC_FWD_SAVE, lp, NULL, err) == 0);
  CHECK_MSG(poc_model_backward(m, &p, lp, NULL, err) == 0, "%s", err);
  CHECK(poc_model_backward(m, &p, lp, NULL, err) == -1);
  /* nor may a backward run on a pack other than the one its forward saved */
  CHECK(poc_model_forward(m, &p, POC_FWD_SAVE, lp, NULL, err) == 0);
  int32_t ss4[2] = {0, 6}, ts4[1] = {2};
  poc_pack p4 = {1, 6, tok, ss4, ts4};
  CHECK(poc_model_backward(m, &p4, lp, NULL, err) == -1);
  CHECK(poc_model_new(d64, &lay, w, POC_DT_F64, 1, 0, err) == NULL && err[0]);
  poc_model_free(m);
  free(w);
  poc_layout_free(&lay);
}

int main(void) {
  poc_cpu_start(0, NULL); /* the GEMM kernels the processor allows */
  poc_device *d64 = mt_device("cpu64"), *d32 = mt_device("cpu");
  pack_case(d64, d32, "gqa_bias", mt_config(16, 24, 47, 2, 4, 2, 4, 1, 0, 0), 0, CTX, TGT, 7);
  pack_case(d64, d32, "tied_llama3", mt_config(24, 20, 53, 2, 4, 2, 8, 0, 1, 1), 0, CTX, TGT, 8);
  pack_case(d64, d32, "textbook_head", mt_config(32, 40, 70, 2, 4, 2, 8, 1, 1, 0), POC_FWD_UNFUSED, CTX, TGT, 9);
  pack_case(d64, d32, "threaded", mt_config(64, 160, 300, 2, 4, 2, 16, 1, 0, 0), 0, CTX_BIG, TGT_BIG, 10);
  pack_errors(d64);
  poc_device_close(d32);
  poc_device_close(d64);
  return check_summary("model_pack");
}
