/* bench_model.c — whole-model forward + backward throughput and peak memory on the CPU
 * device, fused loss head vs the textbook one (POC_FWD_UNFUSED), on one configuration,
 * random weights, no files. One configuration per process, so the peak resident size
 * (VmHWM) belongs to it alone; bench/model/run.sh runs the grid.
 *
 * usage: bench_model --vocab V [--unfused] [--seqs S] [--len T] [--iters K] [--device D]
 *        bench_model --gemm-peak N     (sgemm N×N×N GFLOP/s with the kernels in use)
 * prints one line: key=value pairs (params, tokens, tokens_per_s, fwd_ms, bwd_ms, peak_mib,
 * head_chunk: the device's widest vocabulary chunk for the fused head). */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <cblas.h>

#include "cpu/cpu_features.h"
#include "device.h"

static double now(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

/* Peak resident set size of this process, in MiB. */
static double peak_mib(void) {
  FILE *f = fopen("/proc/self/status", "r");
  char line[256];
  double kb = -1;
  while (f && fgets(line, sizeof line, f))
    if (!strncmp(line, "VmHWM:", 6)) kb = atof(line + 6);
  if (f) fclose(f);
  return kb / 1024;
}

/* The GEMM peak the kernels in use reach: the best of 5 sgemm N×N×N after a warm-up,
 * 2N³ FLOPs each. A BLAS on generic kernels shows here as a small number. */
static int gemm_peak(int n) {
  char line[512];
  poc_cpu_describe(line, sizeof line); /* the device line, as a run's first */
  fprintf(stderr, "%s\n", line);
  size_t nn = (size_t)n * (size_t)n;
  float *a = malloc(nn * sizeof *a), *b = malloc(nn * sizeof *b), *c = malloc(nn * sizeof *c);
  if (!a || !b || !c) {
    fprintf(stderr, "bench_model: out of memory for sgemm %d\n", n);
    return 1;
  }
  for (size_t i = 0; i < nn; i++) {
    a[i] = (float)(i % 7) * 0.25f - 0.75f;
    b[i] = (float)(i % 5) * 0.125f - 0.25f;
  }
  double best = 1e30;
  for (int it = -1; it < 5; it++) {
    double t0 = now();
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, n, n, n, 1.0f, a, n, b, n, 0.0f, c, n);
    double t = now() - t0;
    if (it >= 0 && t < best) best = t;
  }
  printf("gemm=sgemm n=%d kernels=%s gflops=%.1f\n", n, poc_cpu_kernels_in_use(),
         2.0 * n * (double)n * n / best / 1e9);
  free(a);
  free(b);
  free(c);
  return 0;
}

int main(int argc, char **argv) {
  poc_cpu_start(argc, argv); /* the GEMM kernels the processor allows */
  int vocab = 32000, unfused = 0, seqs = 4, len = 128, iters = 3;
  const char *dev_name = "cpu";
  for (int i = 1; i < argc; i++) {
    if (!strcmp(argv[i], "--unfused")) unfused = 1;
    else if (i + 1 < argc && !strcmp(argv[i], "--device")) dev_name = argv[++i];
    else if (i + 1 < argc && !strcmp(argv[i], "--vocab")) vocab = atoi(argv[++i]);
    else if (i + 1 < argc && !strcmp(argv[i], "--seqs")) seqs = atoi(argv[++i]);
    else if (i + 1 < argc && !strcmp(argv[i], "--len")) len = atoi(argv[++i]);
    else if (i + 1 < argc && !strcmp(argv[i], "--iters")) iters = atoi(argv[++i]);
    else if (i + 1 < argc && !strcmp(argv[i], "--gemm-peak"))
      return gemm_peak(atoi(argv[++i]) > 0 ? atoi(argv[i]) : 2048);
    else {
      fprintf(stderr, "usage: bench_model --vocab V [--unfused] [--seqs S] [--len T] [--iters K] "
              "[--device D]\n       bench_model --gemm-peak N\n");
      return 2;
    }
  }
  if (vocab < 2 || seqs < 1 || len < 2 || iters < 1) {
    fprintf(stderr, "bench_model: sizes must be positive (len at least 2)\n");
    return 2;
  }
  /* A ~20M-parameter Llama at vocabulary 32k: 6 layers of width 384 (6 heads over 2 KV
   * heads, SwiGLU 1024) with tied embeddings, so the head is the embedding matrix. */
  poc_config c;
  memset(&c, 0, sizeof c);
  strcpy(c.model_type, "llama");
  c.vocab_size = vocab;
  c.hidden_size = 384;
  c.intermediate_size = 1024;
  c.num_hidden_layers = 6;
  c.num_attention_heads = 6;
  c.num_key_value_heads = 2;
  c.head_dim = 64;
  c.max_position_embeddings = 4096;
  c.rope_theta = 500000;
  c.rms_norm_eps = 1e-5;
  c.tie_word_embeddings = 1;
  c.bos_token_id = c.eos_token_id = -1;
  strcpy(c.torch_dtype, "float32");
  char err[POC_ERR_LEN];
  poc_layout lay;
  if (poc_layout_init(&lay, &c, err)) {
    fprintf(stderr, "bench_model: %s\n", err);
    return 1;
  }
  float *w = malloc(lay.n_params * sizeof *w);
  int n_tok = seqs * len, prompt = len / 4 > 0 ? len / 4 : 1;
  int32_t *tok = malloc((size_t)n_tok * sizeof *tok), *ss = malloc(((size_t)seqs + 1) * sizeof *ss),
          *ts = malloc((size_t)seqs * sizeof *ts);
  double *logp = malloc((size_t)n_tok * sizeof *logp), *dlogp = malloc((size_t)n_tok * sizeof *dlogp);
  if (!w || !tok || !ss || !ts || !logp || !dlogp) {
    fprintf(stderr, "bench_model: out of memory\n");
    return 1;
  }
  poc_rng r;
  poc_rng_seed(&r, 1);
  for (size_t i = 0; i < lay.n_params; i++) w[i] = (float)((poc_rng_uniform(&r) - 0.5) * 0.1);
  for (int t = 0; t < lay.n_tensors; t++)
    if (lay.tensors[t].ndim == 1)
      for (size_t i = 0; i < lay.tensors[t].numel; i++) w[lay.tensors[t].offset + i] = 1;
  for (int i = 0; i < n_tok; i++) tok[i] = (int32_t)(poc_rng_next(&r) % (uint64_t)vocab);
  for (int s = 0; s <= seqs; s++) ss[s] = s * len;
  for (int s = 0; s < seqs; s++) ts[s] = s * len + prompt;
  poc_pack pack = {seqs, n_tok, tok, ss, ts};
  int n_tgt = poc_pack_targets(&pack);
  for (int i = 0; i < n_tgt; i++) dlogp[i] = -1.0 / n_tgt;

  poc_device *d = poc_device_open(dev_name, err);
  poc_model *m = d ? poc_model_new(d, &lay, w, POC_DT_F32, 1, n_tok, err) : NULL;
  if (!m) {
    fprintf(stderr, "bench_model: %s\n", err);
    return 1;
  }
  /* the model holds its own copy; the host array would only add to the peak */
  free(w);
  int flags = POC_FWD_SAVE | (unfused ? POC_FWD_UNFUSED : 0);
  double fwd = 0, bwd = 0;
  for (int it = -1; it < iters; it++) {  /* iteration -1 warms up */
    double t0 = now();
    if (poc_model_forward(m, &pack, flags, logp, NULL, err)) {
      fprintf(stderr, "bench_model: %s\n", err);
      return 1;
    }
    double t1 = now();
    if (poc_model_backward(m, &pack, dlogp, NULL, err)) {
      fprintf(stderr, "bench_model: %s\n", err);
      return 1;
    }
    double t2 = now();
    if (it >= 0) {
      fwd += t1 - t0;
      bwd += t2 - t1;
    }
  }
  double lp = 0;
  for (int i = 0; i < n_tgt; i++) lp += logp[i];
  /* The model's FLOPs (what MFU counts, not what the fused head recomputes): forward
   * 2·tokens per matmul weight in the layers, 2·targets·H·V in the head (it sees target
   * rows only), causal attention 2·H·len² per layer and sequence (QKᵀ and PV, half the
   * square each); backward twice the forward. */
  double Hd = c.hidden_size, qd = (double)c.num_attention_heads * c.head_dim,
         kvd = (double)c.num_key_value_heads * c.head_dim;
  double per_layer = Hd * qd * 2 + 2 * Hd * kvd + 3 * Hd * c.intermediate_size;
  double fwd_flops = 2.0 * n_tok * per_layer * c.num_hidden_layers + 2.0 * n_tgt * Hd * vocab +
                     2.0 * Hd * (double)len * len * seqs * c.num_hidden_layers;
  fprintf(stderr, "%s\n", d->desc);
  printf("params=%zu vocab=%d head=%s tokens=%d targets=%d iters=%d tokens_per_s=%.1f fwd_ms=%.1f "
         "bwd_ms=%.1f peak_mib=%.1f mean_logp=%.4f head_chunk=%d device=%s model_gflops=%.1f\n",
         lay.n_params, vocab, unfused ? "unfused" : "fused", n_tok, n_tgt, iters,
         (double)n_tok * iters / (fwd + bwd), 1e3 * fwd / iters, 1e3 * bwd / iters, peak_mib(),
         lp / n_tgt, d->head_chunk, d->name, 3 * fwd_flops * iters / (fwd + bwd) / 1e9);
  poc_model_free(m);
  poc_device_close(d);
  free(tok);
  free(ss);
  free(ts);
  free(logp);
  free(dlogp);
  poc_layout_free(&lay);
  return 0;
}
