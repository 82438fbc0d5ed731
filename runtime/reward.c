/* reward.c — a reward model from a folder: transformers' *ForSequenceClassification with
 * one label, as it is, or a causal LM of the same family given a fresh score head (the
 * usual start of reward-model training, as transformers does when a causal checkpoint is
 * loaded into a classification class). */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "pocrt.h"

int poc_reward_config(const char *model_dir, poc_config *cfg, int *fresh, char *err) {
  if (poc_config_load(model_dir, cfg, err)) return -1;
  *fresh = cfg->num_labels == 0;
  if (*fresh) cfg->num_labels = 1;
  return 0;
}

int poc_reward_load_f32(const char *model_dir, const poc_layout *lay, int fresh, uint64_t seed,
                        float *w, char *err) {
  if (!fresh) return poc_weights_load_f32(model_dir, lay, w, err);
  const poc_tensor_info *sc = poc_layout_find(lay, "score.weight");
  if (!sc) {
    snprintf(err, POC_ERR_LEN, "%s: the reward layout has no score.weight", model_dir);
    return -1;
  }
  /* the causal LM's own layout: its transformer tensors sit at the same offsets */
  poc_config causal = lay->cfg;
  causal.num_labels = 0;
  poc_layout cl;
  if (poc_layout_init(&cl, &causal, err)) return -1;
  float *tmp = malloc(cl.n_params * sizeof(float) + 1);
  int rc = -1;
  if (!tmp) snprintf(err, POC_ERR_LEN, "%s: out of memory", model_dir);
  else if (!poc_weights_load_f32(model_dir, &cl, tmp, err)) {
    memcpy(w, tmp, sc->offset * sizeof(float));
    /* N(0, 0.02²) by Box–Muller from one counter-based stream */
    poc_rng r = poc_rng_derive(seed, 0x73636f7265ULL /* "score" */, 0);
    for (size_t i = 0; i < sc->numel; i += 2) {
      double u1 = 1.0 - poc_rng_uniform(&r), u2 = poc_rng_uniform(&r);
      double rad = sqrt(-2.0 * log(u1)), th = 6.283185307179586 * u2;
      w[sc->offset + i] = (float)(0.02 * rad * cos(th));
      if (i + 1 < sc->numel) w[sc->offset + i + 1] = (float)(0.02 * rad * sin(th));
    }
    rc = 0;
  }
  free(tmp);
  poc_layout_free(&cl);
  return rc;
}
