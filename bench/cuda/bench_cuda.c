/* bench_cuda.c — one DPO training step of the model on the CUDA device, timed.
 *
 * A step is what a DPO run does per micro-batch: the frozen reference forward over the
 * packed chosen and rejected sequences, the policy forward (saving activations), the DPO
 * loss and its seeds on the host, the policy backward, the gradient norm and one AdamW
 * step. Reported per configuration: tokens/s, the step's median time, the device memory
 * the two models allocate (everything is allocated up front, so this is the peak; counted
 * through the device's allocator, so the CUDA context and cuBLAS's workspace are not in
 * it), and
 *   MFU = 6 · params · tokens / (step time · measured bf16 GEMM rate)
 * with the rate measured here through the device's own GEMM kernel (cuBLAS, bf16 operands,
 * fp32 accumulation) on an 8192³ product, so the ratio is against what this device
 * actually delivers rather than a datasheet.
 *
 *   bench_cuda [--vocab V] [--tokens T] [--seq S] [--layers L] [--steps N] [--unfused]
 *              [--device NAME]
 * defaults: a Llama-3.2-1B shape (hidden 2048, 16 layers, 32/8 heads of 64, MLP 8192,
 * tied embeddings), vocab 128256, 8192 tokens a step in sequences of 512, device "cuda".
 */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "device.h"

static double bn_now(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return ts.tv_sec + 1e-9 * ts.tv_nsec;
}

static int bn_cmp(const void *a, const void *b) {
  double x = *(const double *)a, y = *(const double *)b;
  return (x > y) - (x < y);
}

/* The device's allocator, wrapped to count the bytes held and their peak. */
#define BN_MAX_BUFS 4096
static poc_dptr (*bn_alloc0)(poc_device *, size_t, const char *);
static void (*bn_free0)(poc_device *, poc_dptr);
static struct { poc_dptr p; size_t n; } bn_bufs[BN_MAX_BUFS];
static size_t bn_held, bn_peak;

static poc_dptr bn_alloc(poc_device *d, size_t bytes, const char *what) {
  poc_dptr p = bn_alloc0(d, bytes, what);
  if (!p) return p;
  for (int i = 0; i < BN_MAX_BUFS; i++)
    if (!bn_bufs[i].p) {
      bn_bufs[i].p = p;
      bn_bufs[i].n = bytes;
      break;
    }
  bn_held += bytes;
  if (bn_held > bn_peak) bn_peak = bn_held;
  return p;
}

static void bn_free(poc_device *d, poc_dptr p) {
  for (int i = 0; p && i < BN_MAX_BUFS; i++)
    if (bn_bufs[i].p == p) {
      bn_held -= bn_bufs[i].n;
      bn_bufs[i].p = 0;
      break;
    }
  bn_free0(d, p);
}

/* act-type (bf16) GEMM rate with acc (fp32) output in FLOP/s: median of 20 runs of an n³
 * product on random data, through the device's gemm kernel. 0 when it cannot run. */
static double bn_gemm_rate(poc_device *d, const poc_dims *dm, int n) {
  size_t e = (size_t)n * n;
  poc_kset *k = d->kernels(d, dm);
  poc_dptr A = k ? d->alloc(d, e * poc_dtype_size(d->act), "GEMM operand A") : 0;
  poc_dptr B = A ? d->alloc(d, e * poc_dtype_size(d->act), "GEMM operand B") : 0;
  poc_dptr C = B ? d->alloc(d, e * poc_dtype_size(d->acc), "GEMM result") : 0;
  float *h = malloc(e * sizeof *h);
  double rate = 0;
  if (C && h) {
    poc_rng r;
    poc_rng_seed(&r, 1);
    for (size_t i = 0; i < e; i++) h[i] = (float)(poc_rng_uniform(&r) - 0.5);
    d->put(d, A, d->act, h, POC_DT_F32, e);
    d->put(d, B, d->act, h, POC_DT_F32, e);
    double t[20];
    char err[POC_ERR_LEN] = "";
    int ok = 1;
    for (int i = -3; i < 20 && ok; i++) {
      ok = poc_dev_sync(d, err) == 0;
      double t0 = bn_now();
      d->k.gemm(k, 0, 0, n, n, n, A, n, B, n, 0.f, C, 1, n);
      ok = ok && poc_dev_sync(d, err) == 0;
      if (i >= 0) t[i] = bn_now() - t0;
    }
    if (ok) {
      qsort(t, 20, sizeof t[0], bn_cmp);
      rate = 2.0 * n * n * (double)n / t[10];
    } else {
      fprintf(stderr, "bench_cuda: the GEMM rate: %s\n", err);
    }
  }
  free(h);
  d->free(d, A);
  d->free(d, B);
  d->free(d, C);
  return rate;
}

int main(int argc, char **argv) {
  int V = 128256, T = 8192, S = 512, L = 16, steps = 10, unfused = 0;
  const char *dev_name = "cuda";
  for (int i = 1; i < argc; i++) {
    if (!strcmp(argv[i], "--unfused")) unfused = 1;
    else if (i + 1 < argc && !strcmp(argv[i], "--device")) dev_name = argv[++i];
    else if (i + 1 < argc && !strcmp(argv[i], "--vocab")) V = atoi(argv[++i]);
    else if (i + 1 < argc && !strcmp(argv[i], "--tokens")) T = atoi(argv[++i]);
    else if (i + 1 < argc && !strcmp(argv[i], "--seq")) S = atoi(argv[++i]);
    else if (i + 1 < argc && !strcmp(argv[i], "--layers")) L = atoi(argv[++i]);
    else if (i + 1 < argc && !strcmp(argv[i], "--steps")) steps = atoi(argv[++i]);
    else {
      fprintf(stderr, "usage: bench_cuda [--vocab V] [--tokens T] [--seq S] [--layers L] "
              "[--steps N] [--unfused] [--device NAME]\n");
      return 2;
    }
  }
  if (V <= 0 || S < 2 || T < 2 * S || L <= 0 || steps <= 0) {
    fprintf(stderr, "bench_cuda: need vocab > 0, seq >= 2, tokens >= 2·seq, layers, steps > 0\n");
    return 2;
  }
  char err[POC_ERR_LEN];
  poc_device *dev = poc_device_open(dev_name, err);
  if (!dev) {
    fprintf(stderr, "bench_cuda: %s\n", err);
    return 1;
  }
  bn_alloc0 = dev->alloc;
  bn_free0 = dev->free;
  dev->alloc = bn_alloc;
  dev->free = bn_free;
  poc_config c;
  memset(&c, 0, sizeof c);
  snprintf(c.model_type, sizeof c.model_type, "llama");
  c.vocab_size = V;
  c.hidden_size = 2048;
  c.intermediate_size = 8192;
  c.num_hidden_layers = L;
  c.num_attention_heads = 32;
  c.num_key_value_heads = 8;
  c.head_dim = 64;
  c.max_position_embeddings = 131072;
  c.rope_theta = 500000;
  c.rms_norm_eps = 1e-5;
  c.tie_word_embeddings = 1;
  c.rope_llama3 = 1;
  c.rope_factor = 32;
  c.rope_low_freq_factor = 1;
  c.rope_high_freq_factor = 4;
  c.rope_original_max_position = 8192;
  c.bos_token_id = c.eos_token_id = -1;
  poc_layout lay;
  if (poc_layout_init(&lay, &c, err)) {
    fprintf(stderr, "bench_cuda: %s\n", err);
    return 1;
  }
  size_t P = lay.n_params;
  float *w = malloc(P * sizeof(float));
  if (!w) return 1;
  poc_rng r;
  poc_rng_seed(&r, 7);
  for (int t = 0; t < lay.n_tensors; t++) {
    const poc_tensor_info *ti = &lay.tensors[t];
    double a = ti->ndim == 2 ? 1.0 / sqrt((double)ti->shape[1]) : 0;
    for (size_t j = 0; j < ti->numel; j++)
      w[ti->offset + j] = ti->ndim == 2 ? (float)(a * (2 * poc_rng_uniform(&r) - 1)) : 1.f;
  }
  poc_model *pol = poc_model_new(dev, &lay, w, POC_DT_F32, 1, T, err);
  poc_model *ref = pol ? poc_model_new(dev, &lay, w, POC_DT_F32, 0, T, err) : NULL;
  free(w);
  if (!pol || !ref) {
    fprintf(stderr, "bench_cuda: %s\n", err);
    return 1;
  }
  /* pairs: each example is prompt ++ chosen and prompt ++ rejected, S tokens each, a
     quarter of it prompt */
  int n_seq = T / S, n_tok = n_seq * S;
  int32_t *tok = malloc((size_t)n_tok * 4), *ss = malloc((size_t)(n_seq + 1) * 4),
          *ts = malloc((size_t)n_seq * 4);
  for (int s = 0; s < n_seq; s++) {
    ss[s] = s * S;
    ts[s] = s * S + S / 4;
  }
  ss[n_seq] = n_tok;
  for (int i = 0; i < n_tok; i++) tok[i] = (int32_t)(poc_rng_next(&r) % (uint64_t)V);
  poc_pack pk = {n_seq, n_tok, tok, ss, ts};
  int n = poc_pack_targets(&pk);
  double *lp = malloc((size_t)n * 8), *lr = malloc((size_t)n * 8), *dl = malloc((size_t)n * 8);
  int per = n / n_seq;
  int flags = unfused ? POC_FWD_UNFUSED : 0;
  double *times = malloc((size_t)steps * sizeof(double)), beta = 0.1;
  for (int step = -2; step < steps; step++) {
    double t0 = bn_now();
    if (poc_model_forward(ref, &pk, flags, lr, NULL, err) || poc_model_zero_grad(pol, err) ||
        poc_model_forward(pol, &pk, flags | POC_FWD_SAVE, lp, NULL, err)) {
      fprintf(stderr, "bench_cuda: %s\n", err);
      return 1;
    }
    /* DPO over consecutive (chosen, rejected) sequences: L = −log σ(β(Δc − Δr)),
       dL/dlogp_t = ∓β·σ(−β(Δc − Δr)) / n_pairs */
    int pairs = n_seq / 2;
    for (int p = 0; p < pairs; p++) {
      double dc = 0, dr = 0;
      for (int j = 0; j < per; j++) {
        dc += lp[(2 * p) * per + j] - lr[(2 * p) * per + j];
        dr += lp[(2 * p + 1) * per + j] - lr[(2 * p + 1) * per + j];
      }
      double g = beta / (1 + exp(beta * (dc - dr))) / pairs;
      for (int j = 0; j < per; j++) {
        dl[(2 * p) * per + j] = -g;
        dl[(2 * p + 1) * per + j] = g;
      }
    }
    for (int j = 2 * pairs * per; j < n; j++) dl[j] = 0;
    double norm = 0;
    if (poc_model_backward(pol, &pk, dl, NULL, err) || poc_model_grad_norm(pol, &norm, err)) {
      fprintf(stderr, "bench_cuda: %s\n", err);
      return 1;
    }
    poc_adamw h = {1e-6, 0.9, 0.999, 1e-8, 0.0, step + 3, norm > 1 ? 1 / norm : 1};
    if (poc_model_adamw(pol, &h, err)) {
      fprintf(stderr, "bench_cuda: %s\n", err);
      return 1;
    }
    if (step >= 0) times[step] = bn_now() - t0;
    if (!(norm == norm)) {
      fprintf(stderr, "bench_cuda: NaN gradient norm at step %d\n", step);
      return 1;
    }
  }
  size_t mem = bn_peak;
  qsort(times, (size_t)steps, sizeof times[0], bn_cmp);
  poc_dims dm;
  poc_dims_from_config(&c, &dm);
  double med = times[steps / 2], rate = bn_gemm_rate(dev, &dm, 8192);
  double mfu = rate > 0 ? 6.0 * (double)P * n_tok / (med * rate) : 0;
  printf("device %s\n", dev->desc);
  printf("%-8s %-8s %8s %10s %12s %10s %8s %12s\n", "vocab", "head", "tokens", "step_ms",
         "tokens_per_s", "mem_GiB", "MFU", "gemm_TFLOPs");
  printf("%-8d %-8s %8d %10.1f %12.0f %10.2f %7.1f%% %12.1f\n", V, unfused ? "textbook" : "fused",
         n_tok, med * 1e3, n_tok / med, (double)mem / (1 << 30), 100 * mfu,
         rate / 1e12);
  poc_model_free(pol);
  poc_model_free(ref);
  poc_device_close(dev);
  poc_layout_free(&lay);
  free(tok); free(ss); free(ts); free(lp); free(lr); free(dl); free(times);
  return 0;
}
