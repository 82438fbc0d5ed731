/* bench_cuda.c — one DPO training step on the CUDA backend, timed.
 *
 * A step is what a DPO run does per micro-batch: the frozen reference forward over the
 * packed chosen and rejected sequences, the policy forward (saving activations), the DPO
 * loss and its seeds on the host, the policy backward, the gradient norm and one AdamW
 * step. Reported per configuration: tokens/s, the step's median time, device memory in
 * use (everything is allocated up front, so this is the peak), and
 *   MFU = 6 · params · tokens / (step time · measured bf16 GEMM rate)
 * with the rate measured here by cuBLAS on an 8192³ bf16 GEMM (fp32 accumulation), so
 * the ratio is against what this device actually delivers rather than a datasheet.
 *
 *   bench_cuda [--vocab V] [--tokens T] [--seq S] [--layers L] [--steps N] [--unfused]
 * defaults: a Llama-3.2-1B shape (hidden 2048, 16 layers, 32/8 heads of 64, MLP 8192,
 * tied embeddings), vocab 128256, 8192 tokens a step in sequences of 512.
 */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "backend.h"
#include "cuda_internal.h"

static double bn_now(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return ts.tv_sec + 1e-9 * ts.tv_nsec;
}

static int bn_cmp(const void *a, const void *b) {
  double x = *(const double *)a, y = *(const double *)b;
  return (x > y) - (x < y);
}

/* bf16 GEMM rate in FLOP/s: median of 20 runs of an n³ product on random data. */
static double bn_gemm_rate(cu_backend *b, int n) {
  CUdeviceptr A, B, C;
  size_t e = (size_t)n * n;
  if (cu.cuMemAlloc(&A, e * 2) || cu.cuMemAlloc(&B, e * 2) || cu.cuMemAlloc(&C, e * 4)) return 0;
  uint16_t *h = malloc(e * 2);
  poc_rng r;
  poc_rng_seed(&r, 1);
  for (size_t i = 0; i < e; i++) h[i] = (uint16_t)(0x3c00 | (poc_rng_next(&r) & 0x7f)) ^ (i & 1 ? 0x8000 : 0);
  cu.cuMemcpyHtoD(A, h, e * 2);
  cu.cuMemcpyHtoD(B, h, e * 2);
  free(h);
  const float one = 1, zero = 0;
  double t[20];
  for (int k = -3; k < 20; k++) {
    cu.cuCtxSynchronize();
    double t0 = bn_now();
    cublasGemmEx(b->blas, CUBLAS_OP_N, CUBLAS_OP_N, n, n, n, &one, (void *)A, CUDA_R_16BF, n,
                 (void *)B, CUDA_R_16BF, n, &zero, (void *)C, CUDA_R_32F, n, CUBLAS_COMPUTE_32F,
                 CUBLAS_GEMM_DEFAULT);
    cu.cuCtxSynchronize();
    if (k >= 0) t[k] = bn_now() - t0;
  }
  cu.cuMemFree(A);
  cu.cuMemFree(B);
  cu.cuMemFree(C);
  qsort(t, 20, sizeof t[0], bn_cmp);
  return 2.0 * n * n * (double)n / t[10];
}

int main(int argc, char **argv) {
  int V = 128256, T = 8192, S = 512, L = 16, steps = 10, unfused = 0;
  for (int i = 1; i < argc; i++) {
    if (!strcmp(argv[i], "--unfused")) unfused = 1;
    else if (i + 1 < argc && !strcmp(argv[i], "--vocab")) V = atoi(argv[++i]);
    else if (i + 1 < argc && !strcmp(argv[i], "--tokens")) T = atoi(argv[++i]);
    else if (i + 1 < argc && !strcmp(argv[i], "--seq")) S = atoi(argv[++i]);
    else if (i + 1 < argc && !strcmp(argv[i], "--layers")) L = atoi(argv[++i]);
    else if (i + 1 < argc && !strcmp(argv[i], "--steps")) steps = atoi(argv[++i]);
    else {
      fprintf(stderr, "usage: bench_cuda [--vocab V] [--tokens T] [--seq S] [--layers L] "
              "[--steps N] [--unfused]\n");
      return 2;
    }
  }
  if (V <= 0 || S < 2 || T < 2 * S || L <= 0 || steps <= 0) {
    fprintf(stderr, "bench_cuda: need vocab > 0, seq >= 2, tokens >= 2·seq, layers, steps > 0\n");
    return 2;
  }
  char err[POC_ERR_LEN];
  poc_backend *be = poc_backend_open("cuda", err);
  if (!be) {
    fprintf(stderr, "bench_cuda: %s\n", err);
    return 1;
  }
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
  size_t free0 = 0, total = 0, free1 = 0;
  cu.cuMemGetInfo(&free0, &total);
  poc_bmodel *pol = be->model_new(be, &lay, w, 1, T, err);
  poc_bmodel *ref = pol ? be->model_new(be, &lay, w, 0, T, err) : NULL;
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
  float *lp = malloc((size_t)n * 4), *lr = malloc((size_t)n * 4), *dl = malloc((size_t)n * 4);
  int per = n / n_seq;
  int flags = unfused ? POC_FWD_UNFUSED : 0;
  double *times = malloc((size_t)steps * sizeof(double)), beta = 0.1;
  for (int step = -2; step < steps; step++) {
    double t0 = bn_now();
    if (be->forward(ref, &pk, flags, lr, NULL, err) ||
        be->zero_grad(pol, err) || be->forward(pol, &pk, flags | POC_FWD_SAVE, lp, NULL, err)) {
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
        dl[(2 * p) * per + j] = (float)-g;
        dl[(2 * p + 1) * per + j] = (float)g;
      }
    }
    for (int j = 2 * pairs * per; j < n; j++) dl[j] = 0;
    double norm = 0;
    if (be->backward(pol, &pk, dl, NULL, err) || be->grad_norm(pol, &norm, err)) {
      fprintf(stderr, "bench_cuda: %s\n", err);
      return 1;
    }
    poc_adamw h = {1e-6, 0.9, 0.999, 1e-8, 0.0, step + 3, norm > 1 ? 1 / norm : 1};
    if (be->adamw_step(pol, &h, err)) {
      fprintf(stderr, "bench_cuda: %s\n", err);
      return 1;
    }
    if (step >= 0) times[step] = bn_now() - t0;
    if (!(norm == norm)) {
      fprintf(stderr, "bench_cuda: NaN gradient norm at step %d\n", step);
      return 1;
    }
  }
  cu.cuMemGetInfo(&free1, &total);
  qsort(times, (size_t)steps, sizeof times[0], bn_cmp);
  double med = times[steps / 2], rate = bn_gemm_rate((cu_backend *)be, 8192);
  double mfu = rate > 0 ? 6.0 * (double)P * n_tok / (med * rate) : 0;
  printf("device %s\n", be->device);
  printf("%-8s %-8s %8s %10s %12s %10s %8s %12s\n", "vocab", "head", "tokens", "step_ms",
         "tokens_per_s", "mem_GiB", "MFU", "gemm_TFLOPs");
  printf("%-8d %-8s %8d %10.1f %12.0f %10.2f %7.1f%% %12.1f\n", V, unfused ? "textbook" : "fused",
         n_tok, med * 1e3, n_tok / med, (double)(free0 - free1) / (1 << 30), 100 * mfu,
         rate / 1e12);
  be->model_free(pol);
  be->model_free(ref);
  poc_backend_close(be);
  poc_layout_free(&lay);
  free(tok); free(ss); free(ts); free(lp); free(lr); free(dl); free(times);
  return 0;
}
