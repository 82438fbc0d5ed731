/* backend.h — one interface for the devices a model runs on: the CPU (fp32, the
 * reference) and CUDA (bf16 compute, fp32 master weights and optimizer state).
 *
 * A training loop, `poc logp` or `poc generate` opens a backend by name, creates model
 * instances on it from host fp32 weights, and talks to them only through host arrays:
 * packs and per-token seeds go in, per-token log-probs and entropies come out. Weights,
 * gradients and AdamW moments stay on the device; they cross to the host only for
 * checkpoints and for data parallelism over MPI.
 *
 *     char err[POC_ERR_LEN];
 *     poc_backend *be = poc_backend_open("cuda", err);      // NULL + message on failure
 *     poc_bmodel *m = be->model_new(be, &lay, w, 1, 4096, err);
 *     be->zero_grad(m, err);
 *     be->forward(m, &pack, POC_FWD_SAVE, logp, NULL, err);
 *     ... objective → dlogp ...
 *     be->backward(m, &pack, dlogp, NULL, err);
 *     be->grad_norm(m, &norm, err);
 *     be->adamw_step(m, &(poc_adamw){.lr = 5e-7, ..., .step = 1, .grad_scale = clip}, err);
 *     poc_backend_close(be);     // after freeing its models
 *
 * The optimizer belongs to the backend because its state lives where the weights live.
 * Both backends implement the same AdamW (torch.optim.AdamW: decoupled decay), with decay
 * applied only to matrices (2-D tensors), never to norm weights or biases.
 *
 * Conventions: 0 on success, -1 with a message in err (POC_ERR_LEN bytes). A backend is
 * used from one thread at a time. A model keeps a pointer to its layout, which must
 * outlive it.
 */
#ifndef POC_BACKEND_H
#define POC_BACKEND_H

#include <stddef.h>
#include <stdint.h>

#include "pocrt.h"

typedef struct poc_backend poc_backend;

/* A model instance on one backend; each backend extends this header with its own state. */
typedef struct poc_bmodel {
  poc_backend *be;
  const poc_layout *lay;
  int trainable;
} poc_bmodel;

/* One AdamW step. The gradient is multiplied by grad_scale first (1/accumulation steps,
 * times min(1, clip/norm) for clipping), then torch.optim.AdamW's update with bias
 * correction for `step` (1 for the first step). */
typedef struct poc_adamw {
  double lr, beta1, beta2, eps, weight_decay;
  long step;
  double grad_scale;
} poc_adamw;

struct poc_backend {
  const char *name;              /* "cpu" or "cuda" */
  char device[160];              /* for logs: "CPU, 8 threads", "NVIDIA H100 ... (sm_90, 80 GiB)" */

  /* A model from host fp32 weights w[lay->n_params] (copied). A trainable model has a
   * gradient accumulator (zeroed) and AdamW state (zero moments); a frozen one neither.
   * max_tokens bounds the packs it takes. */
  poc_bmodel *(*model_new)(poc_backend *b, const poc_layout *lay, const float *w,
                           int trainable, int max_tokens, char *err);
  void (*model_free)(poc_bmodel *m);

  /* poc_model_forward_f32 / poc_model_backward_f32's contract (pocrt.h), arrays on the
   * host: logp/entropy [poc_pack_targets(p)], flags POC_FWD_*. */
  int (*forward)(poc_bmodel *m, const poc_pack *p, int flags, float *logp, float *entropy,
                 char *err);
  int (*backward)(poc_bmodel *m, const poc_pack *p, const float *dlogp, const float *dentropy,
                  char *err);
  /* poc_generate_f32's contract; returns the number of tokens written, or -1. */
  int (*generate)(poc_bmodel *m, const int32_t *prompt, int n_prompt, int max_new,
                  double temperature, double top_p, int eos, poc_rng *rng, int32_t *out,
                  char *err);

  int (*zero_grad)(poc_bmodel *m, char *err);
  /* ‖grad‖₂ over all parameters, summed in double in a fixed order. */
  int (*grad_norm)(poc_bmodel *m, double *norm, char *err);
  int (*adamw_step)(poc_bmodel *m, const poc_adamw *h, char *err);

  /* Host copies, n_params floats each (checkpoints, resume, gradient all-reduce over
   * MPI). set_weights also refreshes the compute copy. For a frozen CUDA model the
   * weights read back are its bf16 compute copy. */
  int (*get_weights)(poc_bmodel *m, float *w, char *err);
  int (*set_weights)(poc_bmodel *m, const float *w, char *err);
  int (*get_grad)(poc_bmodel *m, float *g, char *err);
  int (*set_grad)(poc_bmodel *m, const float *g, char *err);
  int (*get_adam)(poc_bmodel *m, float *mom, float *var, char *err);
  int (*set_adam)(poc_bmodel *m, const float *mom, const float *var, char *err);

  void (*close)(poc_backend *b);
};

/* "cpu" or "cuda". "cuda" fails with "this poc was built without CUDA" in a CPU-only
 * build, and with the driver's own words when the driver or a device is missing. */
poc_backend *poc_backend_open(const char *name, char *err);
void poc_backend_close(poc_backend *b);

/* Whether AdamW decays tensor i of the layout (matrices only). */
int poc_backend_decays(const poc_layout *lay, int i);

/* The CUDA backend (runtime/cuda/backend_cuda.c); only in builds with POC_HAVE_CUDA. */
poc_backend *poc_backend_cuda_open(char *err);

#endif
