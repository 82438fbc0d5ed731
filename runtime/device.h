/* device.h — the kernel interface. The model (runtime/model.c: forward, backward, the
 * KV-cache decode step, the loss head, sampling, the gradient norm and AdamW) is written
 * once as a sequence of calls to these kernels; a device implements the kernels, never the
 * model:
 *
 *   cpu       float, OpenBLAS GEMMs and OpenMP loops (runtime/cpu/)
 *   cpu64     the same source compiled for double: gradient checks (runtime/cpu/)
 *   cpu-bf16  the same source compiled for bf16 operands and fp32 accumulators, oneDNN
 *             GEMMs (runtime/cpu/; built where oneDNN is found)
 *   cuda    bf16 operands, fp32 accumulators and master weights: kernels/templates through
 *           NVRTC, cuBLAS GEMMs (runtime/cuda/)
 *
 * Memory is addressed by poc_dptr: a device address (a host pointer on the CPU devices, a
 * CUdeviceptr on CUDA), 0 for "none". Every buffer has one of two *roles*, and the device
 * says which element type each role has:
 *
 *   acc  accumulators: the residual stream, norms' 1/rms, log-sum-exps, gradients, master
 *        weights and AdamW moments, the loss head's per-row state (f32 | f64 | f32 | f32)
 *   act  operands of GEMMs and attention: normed activations, q/k/v, SwiGLU values, the
 *        compute copy of the weights, dlogits                    (f32 | f64 | bf16 | bf16)
 * (cpu | cpu64 | cpu-bf16 | cuda).
 *
 * Where act and acc are one type (cpu and cpu64), the model uses one buffer for both
 * views (`shared_act`) and the device's cast kernel is a copy or nothing.
 *
 * Errors are sticky, as on a GPU stream: a failing kernel or copy records the first message
 * in `err` and sets `failed`; later kernels do nothing. The model checks at its
 * synchronisation points (poc_dev_sync), so the layer code reads as the math. Integers on
 * the device (tokens, positions, row lists) are int32.
 *
 * Adding a device: a file that fills a poc_device (the table below) and one line in the
 * registry (runtime/devices.c). Adding a kernel: a member here, its CPU version in
 * runtime/cpu/kernels_fp.c (act buffers through LD/ST: it is also the cpu-bf16 kernel),
 * its CUDA version in kernels/templates/ plus the launch in runtime/cuda/device_cuda.c,
 * and CPU-twin checks in tests/gpu and tests/cpu_bf16.
 */
#ifndef POC_DEVICE_H
#define POC_DEVICE_H

#include <stddef.h>
#include <stdint.h>

#include "pocrt.h"
#include "program.h"

typedef uint64_t poc_dptr;

size_t poc_dtype_size(poc_dtype t);

/* The dimensions kernels are specialised for (compile-time constants on CUDA). */
typedef struct poc_dims {
  int H, F, V, nh, nkv, hd;     /* hidden, intermediate, vocabulary, heads, kv heads, head dim */
  double eps;                   /* rms_norm_eps */
} poc_dims;

void poc_dims_from_config(const poc_config *c, poc_dims *d);

typedef struct poc_device poc_device;
typedef struct poc_kset poc_kset;

/* Dropout masks from a counter-based hash, the same bits on every device: element i of a
 * stream `seed` is kept when the top 32 bits of splitmix64's finaliser of
 * seed + (i + 1)·φ (φ = 0x9E3779B97F4A7C15) are >= thr, thr = round(p·2³²) for rate p.
 * No state: a mask is recomputed in backward from (seed, i) instead of being stored, and
 * a resumed run draws the same masks. */
static inline uint32_t poc_drop_bits(uint64_t seed, uint64_t i) {
  uint64_t z = seed + (i + 1) * 0x9E3779B97F4A7C15ull;
  z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
  z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
  return (uint32_t)((z ^ (z >> 31)) >> 32);
}
static inline int poc_drop_keep(uint64_t seed, uint64_t i, uint32_t thr) {
  return thr == 0 || poc_drop_bits(seed, i) >= thr;
}
static inline uint32_t poc_drop_threshold(double p) {
  double t = p * 4294967296.0 + 0.5;
  return p <= 0 ? 0 : t >= 4294967295.0 ? 4294967295u : (uint32_t)t;
}

/* A device's kernels for one set of dimensions. Devices extend it with their own state. */
struct poc_kset {
  poc_device *d;
  poc_dims dm;
};

/* The kernels. Shapes are row-major; "+=" accumulates into what is there. Every buffer is
 * acc- or act-typed as its comment says; `w` arguments are the compute copy of a weight
 * (act), `dw`/`dE`/`grad` arguments are gradients (acc). */
typedef struct poc_kernels {
  /* C[M×N] = op(A)[M×K]·op(B)[K×N] + beta·C; A, B act; C acc when c_acc, else act (an act
   * C with beta = 1 is read and rounded back: the LoRA path adds its low-rank term to a
   * projection's act output this way). op(X) = Xᵀ when t is set; lda/ldb/ldc are the row
   * strides. */
  void (*gemm)(poc_kset *k, int ta, int tb, int M, int N, int K, poc_dptr A, int lda,
               poc_dptr B, int ldb, float beta, poc_dptr C, int c_acc, int ldc);
  /* x[t] = E[tok[t]] (E act → x acc) */
  void (*embed_fwd)(poc_kset *k, int T, poc_dptr tok, poc_dptr E, poc_dptr x);
  /* dE[tok[t]] += dx[t], in a fixed order */
  void (*embed_bwd)(poc_kset *k, int T, poc_dptr tok, poc_dptr dx, poc_dptr dE);
  /* y[i] = w ⊙ x[r]·rstd_i with r = rows ? rows[i] : i, rstd_i = (mean(x[r]²) + eps)^-½;
   * x acc [.. × H], y act [n × H], rstd acc [n] (may be 0) */
  void (*rmsnorm_fwd)(poc_kset *k, int n, poc_dptr x, poc_dptr rows, poc_dptr w, poc_dptr y,
                      poc_dptr rstd);
  /* dx[r] += rstd_i·(w ⊙ dy_i − x[r]·rstd_i²/H · Σ_j w_j dy_ij x[r]_j); dy, dx acc */
  void (*rmsnorm_bwd)(poc_kset *k, int n, poc_dptr x, poc_dptr rows, poc_dptr w, poc_dptr rstd,
                      poc_dptr dy, poc_dptr dx);
  /* dw += Σ_i dy_i ⊙ x[r]·rstd_i, in a fixed order */
  void (*rmsnorm_dw)(poc_kset *k, int n, poc_dptr x, poc_dptr rows, poc_dptr rstd, poc_dptr dy,
                     poc_dptr dw);
  /* out[j] += Σ_t y[t][j] for y acc [n × width], in a fixed order */
  void (*colsum)(poc_kset *k, int n, int width, poc_dptr y, poc_dptr out);
  /* y (act) = x (acc), n elements; nothing when they are the same buffer */
  void (*cast)(poc_kset *k, size_t n, poc_dptr x, poc_dptr y);
  /* The q/k/v projections run as one GEMM whose output qkv (act [T × N], N = (nh + 2·nkv)·hd)
   * holds row t as [q_t | k_t | v_t]. This kernel splits it into q [T×nh·hd], k, v
   * [T×nkv·hd] (act, none of them qkv), adding the biases (act, may be 0) and rotating q
   * and k by RoPE at position pos[t] from the tables cosb/sinb [positions × hd/2] (acc),
   * HF's rotate_half convention. */
  void (*qkv_bias_rope)(poc_kset *k, int T, poc_dptr pos, poc_dptr cosb, poc_dptr sinb,
                        poc_dptr qkv, poc_dptr q, poc_dptr kk, poc_dptr v, poc_dptr bq,
                        poc_dptr bk, poc_dptr bv);
  /* Rotates dq, dk (acc) back by −θ in place and writes the act operand of the fused
   * projection's backward GEMMs, dqkv [T × N] with row t = [dq_t | dk_t | dv_t]. */
  void (*rope_bwd)(poc_kset *k, int T, poc_dptr pos, poc_dptr cosb, poc_dptr sinb, poc_dptr dq,
                   poc_dptr dk, poc_dptr dv, poc_dptr dqkv);
  /* Causal GQA attention. Query row t (q act [T×nh·hd]) sits at key position q0 + t and
   * attends to keys [kbeg[t], q0 + t] of k, v (act, indexed by key position):
   * out[t] = Σ_j softmax_j(q·k_j/√hd)·v_j (act), lse[t×nh + h] (acc) kept for backward.
   * Packs use q0 = 0; the decode step uses the cache's length. */
  void (*attn_fwd)(poc_kset *k, int T, int q0, poc_dptr q, poc_dptr kk, poc_dptr v,
                   poc_dptr kbeg, poc_dptr out, poc_dptr lse);
  /* Gradients of attn_fwd (q0 = 0) from dO (act): dq, dk, dv (acc, overwritten); D (acc
   * [T×nh]) is scratch; send[t] is one past the last row of t's sequence. */
  void (*attn_bwd)(poc_kset *k, int T, poc_dptr q, poc_dptr kk, poc_dptr v, poc_dptr o,
                   poc_dptr dO, poc_dptr lse, poc_dptr kbeg, poc_dptr send, poc_dptr dq,
                   poc_dptr dk, poc_dptr dv, poc_dptr D);
  /* The gate and up projections run as one GEMM whose output gu (act [T × 2F]) holds row
   * t as [g_t | u_t]: a = silu(g)·u (act [T × F]); backward dgu (act [T × 2F], the same
   * layout) with dg = da·u·silu'(g), du = da·silu(g). */
  void (*swiglu_fwd)(poc_kset *k, int T, poc_dptr gu, poc_dptr a);
  void (*swiglu_bwd)(poc_kset *k, int T, poc_dptr gu, poc_dptr da, poc_dptr dgu);
  /* The fused head's row work on one [n × c] chunk of logits for vocabulary columns
   * [v0, v0 + c). The chunk's type is the device's head_chunk_acc: act on CUDA, where the
   * GEMM that makes it accumulates in fp32 and rounds each logit once to bf16 (as a bf16
   * lm_head's output is), so no fp32 n×c chunk goes through device memory; acc on the CPU
   * devices, where the chunk lives in cache and full precision costs nothing. Folds the chunk into the running max m, s = Σe^{l−m},
   * a = Σe^{l−m}(l−m) and, when q is not 0, q = Σe^{2(l−m)} (all acc [n], started at
   * v0 = 0) and keeps the target's logit in tl. */
  void (*head_chunk_fwd)(poc_kset *k, int n, int c, int v0, poc_dptr logits, poc_dptr tgt,
                         poc_dptr m, poc_dptr s, poc_dptr a, poc_dptr q, poc_dptr tl);
  /* lse = m + log s, μ = m + a/s, logp = tl − lse, ent = log s − a/s (ent may be 0),
   * lss = log Σ p² = log q − 2 log s (lss may be 0; q is read only for it) */
  void (*head_finish)(poc_kset *k, int n, poc_dptr m, poc_dptr s, poc_dptr a, poc_dptr q,
                      poc_dptr tl, poc_dptr logp, poc_dptr ent, poc_dptr lss, poc_dptr lse,
                      poc_dptr mu);
  /* dlog (act [n × c]) = g·(1[v=t] − p) − e·p·(l − μ) with p = e^{l − lse}, from the act
   * chunk of logits l; dlog may be the logits buffer itself (the model turns each chunk
   * into its dlogits in place: one act n×c buffer per block, nothing in fp32); dlogp, dent
   * acc [n], each may be 0 */
  void (*head_chunk_bwd)(poc_kset *k, int n, int c, int v0, poc_dptr logits, poc_dptr tgt,
                         poc_dptr lse, poc_dptr mu, poc_dptr dlogp, poc_dptr dent,
                         poc_dptr dlog);
  /* Textbook head: logits [n × V] (acc) become the log-softmax ls in place; logp, ent and
   * lss = log Σ e^{2·ls} (ent and lss may be 0), lse and mu [n] (acc). */
  void (*head_text_fwd)(poc_kset *k, int n, poc_dptr logits, poc_dptr tgt, poc_dptr logp,
                        poc_dptr ent, poc_dptr lss, poc_dptr lse, poc_dptr mu);
  /* dlog (act [n × V], may be ls itself) from the stored log-softmax ls */
  void (*head_text_bwd)(poc_kset *k, int n, poc_dptr ls, poc_dptr tgt, poc_dptr mu,
                        poc_dptr dlogp, poc_dptr dent, poc_dptr dlog);
  /* torch.optim.AdamW on n elements: g ← g·gscale; m, v moments; decoupled decay
   *   w ← w·(1 − lr·wd) − lr·(m/bc1)/(√(v/bc2) + eps)
   * w, g, m, v acc; wc (act) is refreshed from w (nothing when it is w itself). */
  void (*adamw)(poc_kset *k, size_t n, poc_dptr w, poc_dptr g, poc_dptr m, poc_dptr v,
                poc_dptr wc, float lr, float b1, float b2, float eps, float wd, float bc1,
                float bc2, float gscale);
  /* The LoRA path's one elementwise kernel (model.c): over n elements
   *   y_i = beta·y_i + mul·keep_i·x_i,  keep_i = poc_drop_keep(seed, i, thr)
   * x act; y acc when y_acc, else act; y may be x; beta = 0 does not read y. thr = 0 keeps
   * every element and the mask is not computed: a plain scaling (the adapter's alpha/r).
   * Dropout at rate p is thr = poc_drop_threshold(p) with mul = scale/(1 − p). */
  void (*drop_scale)(poc_kset *k, size_t n, poc_dptr x, poc_dptr y, int y_acc, float beta,
                     float mul, uint32_t thr, uint64_t seed);
  /* Σ x² over n acc elements, in double on the host, in an order that does not depend on
   * scheduling. A synchronisation point. */
  double (*sumsq)(poc_kset *k, size_t n, poc_dptr x);
} poc_kernels;

struct poc_device {
  const char *name;             /* "cpu", "cpu64", "cpu-bf16", "cuda" */
  char desc[512];               /* the run's first line: "cuda: NVIDIA H100 (sm_90, 80 GiB)" */
  poc_dtype acc, act;
  int shared_act;               /* acc and act are one type: one buffer serves both views */
  int host_memory;              /* device addresses are host pointers (the CPU devices) */
  /* The fused loss head streams blocks of at most head_rows rows × head_chunk columns of
   * logits (one buffer, turned into dlogits in place in backward where the chunk's type is
   * act), halving the chunk (down to 256) while a block holds more than head_block logits:
   * the CPU keeps a block in the last-level cache, a GPU takes every row at once.
   * head_chunk_acc: the chunk is acc (the CPU devices) rather than act (CUDA); the dlogits
   * are then a block of their own where act is another type (cpu-bf16). */
  int head_rows, head_chunk, head_chunk_acc;
  size_t head_block;

  int failed;                   /* sticky: set by the first failing kernel or copy */
  char err[POC_ERR_LEN];

  /* The model's stage marker: runtime/model.c sets it as it goes ("attention backward"
   * with layer 3, "loss head" with layer -1, ...) — two stores, no formatting, so it costs
   * nothing on the hot path — and poc_dev_fail names it in the error: "... in layer 3
   * attention backward". NULL outside the model. */
  const char *stage;
  int layer;                    /* -1: the stage is not a decoder layer's */

  /* Memory. alloc returns 0 and records a message naming `what`, the size and the memory
   * free when it cannot; free(0) does nothing. Where host_memory is set, new memory reads
   * as zeros (and is resident only once touched). put/get copy n elements between host and
   * device, converting between the host type and the device type (f32, f64, bf16 — round
   * to nearest even — or i32 to i32). */
  poc_dptr (*alloc)(poc_device *d, size_t bytes, const char *what);
  void (*free)(poc_device *d, poc_dptr p);
  void (*put)(poc_device *d, poc_dptr dst, poc_dtype dt, const void *src, poc_dtype st,
              size_t n);
  void (*get)(poc_device *d, void *dst, poc_dtype dt, poc_dptr src, poc_dtype st, size_t n);
  void (*copy)(poc_device *d, poc_dptr dst, poc_dptr src, size_t bytes);
  void (*zero)(poc_device *d, poc_dptr dst, size_t bytes);
  /* Waits for queued work; returns -1 and the sticky message when anything failed. */
  int (*sync)(poc_device *d, char *err);
  /* Kernels for these dimensions, built on first use and kept until close; NULL and a
   * message in d->err (sticky) on failure. */
  poc_kset *(*kernels)(poc_device *d, const poc_dims *dm);
  void (*close)(poc_device *d);

  poc_kernels k;
};

/* bf16 on the host, round to nearest even (NaN stays a quiet NaN); from double without
 * double rounding. */
uint16_t poc_bf16_from_f32(float f);
uint16_t poc_bf16_from_f64(double x);
float poc_bf16_to_f32(uint16_t b);

/* Records the first error (printf-style) and marks the device failed; the stage marker,
 * when set, is appended ("... in layer 3 attention backward"). */
void poc_dev_fail(poc_device *d, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
/* The same without the stage: for a failure found at a synchronisation point, whose cause
 * may be any kernel queued since the last one, so the current stage would mislead. */
void poc_dev_fail_unstaged(poc_device *d, const char *fmt, ...)
    __attribute__((format(printf, 2, 3)));
/* d->sync, or just the sticky error: 0, or -1 with the message in err. */
int poc_dev_sync(poc_device *d, char *err);

/* ---- the registry (runtime/devices.c: the one place that knows every device) ----------- */

/* Opens a device by name: "cpu", "cpu64", "cpu-bf16", "cuda", "auto" (cuda when a usable
 * GPU is present, else cpu) or "auto-bf16" (cuda, else cpu-bf16). NULL with a message
 * ("this poc was built without CUDA", the driver's own words, ...). */
poc_device *poc_device_open(const char *name, char *err);
void poc_device_close(poc_device *d);

/* Device constructors, called by the registry only. */
poc_device *poc_cpu_device_open(int fp64, char *err);
poc_device *poc_cpu_bf16_device_open(char *err); /* only where POC_HAVE_DNNL */
poc_device *poc_cuda_device_open(char *err);
/* The kernels `poc build --arch` embedded in the program (program.h): the registry hands
 * them over before any device opens, and the CUDA device looks there first whenever it
 * needs kernels for a set of dimensions. Process-wide, as the program is; the images are
 * static data and are never copied. */
void poc_cuda_use_images(const poc_kernel_image *img, int n);

#endif
