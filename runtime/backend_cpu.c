/* backend_cpu.c — the CPU backend (the fp32 reference model behind backend.h) and
 * poc_backend_open, which picks a backend by name.
 *
 * The model is poc_model_*_f32 on weights this backend owns; AdamW and the gradient norm
 * are plain loops with the same formulas as kernels/templates/adamw.cu.
 */
#include <math.h>
#include <omp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "backend.h"

typedef struct {
  poc_bmodel base;
  float *w, *grad, *mom, *var;   /* grad, mom, var: NULL when frozen */
  poc_model_f32 *mdl;
} cpu_model;

static cpu_model *cpu_of(poc_bmodel *m) { return (cpu_model *)m; }

int poc_backend_decays(const poc_layout *lay, int i) { return lay->tensors[i].ndim == 2; }

static void cpu_model_free(poc_bmodel *bm) {
  if (!bm) return;
  cpu_model *m = cpu_of(bm);
  poc_model_free_f32(m->mdl);
  free(m->w);
  free(m->grad);
  free(m->mom);
  free(m->var);
  free(m);
}

static poc_bmodel *cpu_model_new(poc_backend *b, const poc_layout *lay, const float *w,
                                 int trainable, int max_tokens, char *err) {
  size_t P = lay->n_params;
  cpu_model *m = calloc(1, sizeof *m);
  if (!m) goto oom;
  m->base = (poc_bmodel){b, lay, trainable};
  m->w = malloc(P * sizeof(float));
  if (!m->w) goto oom;
  memcpy(m->w, w, P * sizeof(float));
  if (trainable) {
    m->grad = calloc(P, sizeof(float));
    m->mom = calloc(P, sizeof(float));
    m->var = calloc(P, sizeof(float));
    if (!m->grad || !m->mom || !m->var) goto oom;
  }
  m->mdl = poc_model_new_f32(lay, m->w, m->grad, max_tokens);
  if (!m->mdl) {
    snprintf(err, POC_ERR_LEN, "cpu: cannot create a model for %d tokens (out of memory, or "
             "a layout without the model's tensors)", max_tokens);
    cpu_model_free(m ? &m->base : NULL);
    return NULL;
  }
  return &m->base;
oom:
  snprintf(err, POC_ERR_LEN, "cpu: out of memory for a model of %zu parameters", P);
  cpu_model_free(m ? &m->base : NULL);
  return NULL;
}

static int cpu_forward(poc_bmodel *m, const poc_pack *p, int flags, float *logp, float *ent,
                       char *err) {
  return poc_model_forward_f32(cpu_of(m)->mdl, p, flags, logp, ent, err);
}

static int cpu_backward(poc_bmodel *m, const poc_pack *p, const float *dlogp, const float *dent,
                        char *err) {
  return poc_model_backward_f32(cpu_of(m)->mdl, p, dlogp, dent, err);
}

static int cpu_generate(poc_bmodel *m, const int32_t *prompt, int n_prompt, int max_new,
                        double temperature, double top_p, int eos, poc_rng *rng, int32_t *out,
                        char *err) {
  return poc_generate_f32(cpu_of(m)->mdl, prompt, n_prompt, max_new, temperature, top_p, eos,
                          rng, out, err);
}

static int cpu_need_grad(cpu_model *m, const char *what, char *err) {
  if (m->grad) return 0;
  snprintf(err, POC_ERR_LEN, "cpu: %s needs a trainable model", what);
  return -1;
}

static int cpu_zero_grad(poc_bmodel *bm, char *err) {
  cpu_model *m = cpu_of(bm);
  if (cpu_need_grad(m, "zero_grad", err)) return -1;
  memset(m->grad, 0, m->base.lay->n_params * sizeof(float));
  return 0;
}

/* Σ g² in double over 64 fixed slices added in order: the same bits for any thread count. */
static int cpu_grad_norm(poc_bmodel *bm, double *norm, char *err) {
  cpu_model *m = cpu_of(bm);
  if (cpu_need_grad(m, "grad_norm", err)) return -1;
  enum { SLICES = 64 };
  double part[SLICES];
  size_t P = m->base.lay->n_params;
#pragma omp parallel for schedule(static)
  for (int s = 0; s < SLICES; s++) {
    size_t a = P * (size_t)s / SLICES, b = P * (size_t)(s + 1) / SLICES;
    double acc = 0;
    for (size_t i = a; i < b; i++) acc += (double)m->grad[i] * m->grad[i];
    part[s] = acc;
  }
  double total = 0;
  for (int s = 0; s < SLICES; s++) total += part[s];
  *norm = sqrt(total);
  return 0;
}

static int cpu_adamw(poc_bmodel *bm, const poc_adamw *h, char *err) {
  cpu_model *m = cpu_of(bm);
  if (cpu_need_grad(m, "adamw_step", err)) return -1;
  if (h->step < 1) {
    snprintf(err, POC_ERR_LEN, "cpu: AdamW step numbers start at 1 (got %ld)", h->step);
    return -1;
  }
  const poc_layout *lay = m->base.lay;
  const float lr = (float)h->lr, b1 = (float)h->beta1, b2 = (float)h->beta2,
              eps = (float)h->eps, gs = (float)h->grad_scale;
  const float bc1 = (float)(1 - pow(h->beta1, (double)h->step));
  const float bc2 = (float)(1 - pow(h->beta2, (double)h->step));
  for (int t = 0; t < lay->n_tensors; t++) {
    const float wd = poc_backend_decays(lay, t) ? (float)h->weight_decay : 0.f;
    float *w = m->w + lay->tensors[t].offset, *g = m->grad + lay->tensors[t].offset;
    float *mo = m->mom + lay->tensors[t].offset, *va = m->var + lay->tensors[t].offset;
    size_t n = lay->tensors[t].numel;
#pragma omp parallel for schedule(static)
    for (size_t i = 0; i < n; i++) {
      float gi = g[i] * gs;
      float mi = b1 * mo[i] + (1.f - b1) * gi, vi = b2 * va[i] + (1.f - b2) * gi * gi;
      mo[i] = mi;
      va[i] = vi;
      w[i] = w[i] * (1.f - lr * wd) - lr * (mi / bc1) / (sqrtf(vi / bc2) + eps);
    }
  }
  return 0;
}

static int cpu_copy(float *dst, const float *src, size_t n, const char *what, char *err) {
  if (!dst || !src) {
    snprintf(err, POC_ERR_LEN, "cpu: %s needs a trainable model", what);
    return -1;
  }
  memcpy(dst, src, n * sizeof(float));
  return 0;
}

static int cpu_get_weights(poc_bmodel *bm, float *w, char *err) {
  return cpu_copy(w, cpu_of(bm)->w, bm->lay->n_params, "get_weights", err);
}
static int cpu_set_weights(poc_bmodel *bm, const float *w, char *err) {
  return cpu_copy(cpu_of(bm)->w, w, bm->lay->n_params, "set_weights", err);
}
static int cpu_get_grad(poc_bmodel *bm, float *g, char *err) {
  return cpu_copy(g, cpu_of(bm)->grad, bm->lay->n_params, "get_grad", err);
}
static int cpu_set_grad(poc_bmodel *bm, const float *g, char *err) {
  return cpu_copy(cpu_of(bm)->grad, g, bm->lay->n_params, "set_grad", err);
}
static int cpu_get_adam(poc_bmodel *bm, float *mom, float *var, char *err) {
  return cpu_copy(mom, cpu_of(bm)->mom, bm->lay->n_params, "get_adam", err) ||
         cpu_copy(var, cpu_of(bm)->var, bm->lay->n_params, "get_adam", err) ? -1 : 0;
}
static int cpu_set_adam(poc_bmodel *bm, const float *mom, const float *var, char *err) {
  return cpu_copy(cpu_of(bm)->mom, mom, bm->lay->n_params, "set_adam", err) ||
         cpu_copy(cpu_of(bm)->var, var, bm->lay->n_params, "set_adam", err) ? -1 : 0;
}

static void cpu_close(poc_backend *b) { free(b); }

static poc_backend *cpu_open(char *err) {
  poc_backend *b = calloc(1, sizeof *b);
  if (!b) {
    snprintf(err, POC_ERR_LEN, "cpu: out of memory");
    return NULL;
  }
  b->name = "cpu";
  snprintf(b->device, sizeof b->device, "CPU, %d threads", omp_get_max_threads());
  b->model_new = cpu_model_new;
  b->model_free = cpu_model_free;
  b->forward = cpu_forward;
  b->backward = cpu_backward;
  b->generate = cpu_generate;
  b->zero_grad = cpu_zero_grad;
  b->grad_norm = cpu_grad_norm;
  b->adamw_step = cpu_adamw;
  b->get_weights = cpu_get_weights;
  b->set_weights = cpu_set_weights;
  b->get_grad = cpu_get_grad;
  b->set_grad = cpu_set_grad;
  b->get_adam = cpu_get_adam;
  b->set_adam = cpu_set_adam;
  b->close = cpu_close;
  return b;
}

poc_backend *poc_backend_open(const char *name, char *err) {
  if (!strcmp(name, "cpu")) return cpu_open(err);
  if (!strcmp(name, "cuda")) {
#ifdef POC_HAVE_CUDA
    return poc_backend_cuda_open(err);
#else
    snprintf(err, POC_ERR_LEN, "this poc was built without CUDA");
    return NULL;
#endif
  }
  snprintf(err, POC_ERR_LEN, "unknown backend '%s' (cpu or cuda)", name);
  return NULL;
}

void poc_backend_close(poc_backend *b) {
  if (b) b->close(b);
}
