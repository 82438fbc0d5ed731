/* model_cuda.c — the Llama-family model on a CUDA device, behind backend.h.
 *
 * The same math as the CPU reference (runtime/model_fp.c, whose comments give it), in
 * mixed precision:
 *   weights:      fp32 master copy (trainable models), bf16 compute copy (all models)
 *   activations:  the residual stream in fp32; GEMM inputs and attention operands in bf16
 *   GEMMs:        cuBLAS, bf16 inputs with fp32 accumulation; residual adds are GEMMs with
 *                 β = 1 into the fp32 stream; weight gradients accumulate in fp32 the same way
 *   the rest:     the kernels of kernels/templates, compiled for the model's dimensions
 * Per layer forward: rmsnorm → q,k,v GEMMs → bias + RoPE → flash attention → o GEMM
 * (+= residual) → rmsnorm → gate, up GEMMs → SwiGLU → down GEMM (+= residual). Backward
 * recomputes the two normed inputs and the SwiGLU output instead of keeping them.
 *
 * Work is issued on the legacy default stream, so kernels, cuBLAS and copies run in order;
 * the device→host copies of the results are the synchronisation points, and asynchronous
 * kernel faults surface there as errors.
 */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cuda_internal.h"

#define MC_NO_BIAS POC_NO_TENSOR
#define MC_SLICES 64          /* column-sum partial slices */
#define MC_NORM_BLOCKS 1024   /* gradient-norm partial sums */
#define MC_HEAD_CHUNK 4096    /* vocabulary columns per fused-head GEMM */

typedef poc_layer_offsets mc_layer_off;

typedef struct {
  CUdeviceptr x, rstd1, q, k, v, att, lse, h1, rstd2, g, u;
} mc_saved;

typedef struct {
  poc_bmodel base;
  cu_backend *be;
  cu_kernels *K;
  int H, F, V, L, nh, nkv, hd, qd, kvd, max_tokens, n_slots, chunk;
  size_t P;
  mc_layer_off *lo;
  size_t off_embed, off_norm, off_head;

  CUdeviceptr w32, w16, grad, mom, var;  /* w32, grad, mom, var: 0 when frozen */
  CUdeviceptr arena, text;               /* text: the textbook head's logits, on first use */
  CUdeviceptr tok, pos, kbeg, send, hrow, htgt, cosb, sinb;
  mc_saved *sv;
  CUdeviceptr xf, xn16, a16, hf16, rstdf, hm, hs, ha, htl, hlse, hmu, chunkbuf, dlog16;
  CUdeviceptr logp, ent, dlogp, dent, genlog, normpart;
  CUdeviceptr dX, dX16, da16, dg16, du16, dxn, dO16, dq, dk, dv, dq16, dk16, dv16, D, part, dh;
  int32_t *h_i32;                        /* host staging, 6 × max_tokens */
  float *h_gen;                          /* [V] */
  int saved_n_tok, saved_flags;
} mc_model;

static mc_model *mc_of(poc_bmodel *m) { return (mc_model *)m; }

/* ---- small helpers ------------------------------------------------------------------ */

static int mc_cu(CUresult r, const char *what, char *err) {
  if (r == CUDA_SUCCESS) return 0;
  snprintf(err, POC_ERR_LEN, "cuda: %s failed: %s", what, cu_errstr(r));
  return -1;
}
#define CU_TRY(call, what) \
  do {                     \
    if (mc_cu((call), what, err)) return -1; \
  } while (0)

static int mc_launch(CUfunction f, const char *name, unsigned gx, unsigned gy, unsigned bx,
                     void **args, char *err) {
  if (gx == 0 || gy == 0) return 0;
  CUresult r = cu.cuLaunchKernel(f, gx, gy, 1, bx, 1, 1, 0, NULL, args, NULL);
  if (r == CUDA_SUCCESS) return 0;
  snprintf(err, POC_ERR_LEN, "cuda: launching %s failed: %s", name, cu_errstr(r));
  return -1;
}
/* LAUNCH(kernel, grid x, grid y, threads, &arg...): arguments are addresses of locals of
 * exactly the kernel's parameter types (int, float, unsigned long long, CUdeviceptr). */
#define LAUNCH(k, gx, gy, bx, ...)                                              \
  do {                                                                          \
    void *args_[] = {__VA_ARGS__};                                              \
    if (mc_launch(m->K->k, #k, (unsigned)(gx), (unsigned)(gy), (bx), args_, err)) \
      return -1;                                                                \
  } while (0)

static unsigned mc_grid(const mc_model *m, size_t n, unsigned threads) {
  size_t g = (n + threads - 1) / threads, cap = (size_t)m->be->n_sm * 16;
  return (unsigned)(g < cap ? g : cap);
}

#define W16(off) (m->w16 + (CUdeviceptr)(off) * 2)
#define G32(off) (m->grad + (CUdeviceptr)(off) * 4)

/* Row-major C[M×N] (=, or += when beta = 1) op(A)[M×K]·op(B)[K×N], bf16 A and B, fp32
 * accumulation; C fp32 or bf16. cuBLAS is column-major, so it computes Cᵀ = op(B)ᵀ·op(A)ᵀ
 * on the same memory with the operands swapped. */
static int mc_gemm(mc_model *m, int ta, int tb, int M, int N, int K, CUdeviceptr A, int lda,
                   CUdeviceptr B, int ldb, float beta, CUdeviceptr C, int c_f32, int ldc,
                   char *err) {
  if (M == 0 || N == 0) return 0;
  const float one = 1.f;
  cublasStatus_t s = cublasGemmEx(
      m->be->blas, tb ? CUBLAS_OP_T : CUBLAS_OP_N, ta ? CUBLAS_OP_T : CUBLAS_OP_N, N, M, K,
      &one, (const void *)B, CUDA_R_16BF, ldb, (const void *)A, CUDA_R_16BF, lda, &beta,
      (void *)C, c_f32 ? CUDA_R_32F : CUDA_R_16BF, ldc, CUBLAS_COMPUTE_32F, CUBLAS_GEMM_DEFAULT);
  if (s == CUBLAS_STATUS_SUCCESS) return 0;
  snprintf(err, POC_ERR_LEN, "cuda: cuBLAS GEMM %d×%d×%d failed: %s", M, N, K,
           cublasGetStatusString(s));
  return -1;
}

/* Y[T×out] (=|+=) X[T×in]·Wᵀ for W [out×in] at parameter offset woff */
static int mc_linear(mc_model *m, int T, int in, int out, CUdeviceptr X, size_t woff,
                     CUdeviceptr Y, int y_f32, float beta, char *err) {
  return mc_gemm(m, 0, 1, T, out, in, X, in, W16(woff), in, beta, Y, y_f32, out, err);
}
/* dW += dYᵀ·X;  dX (=|+=) dY·W  (dY, X bf16) */
static int mc_linear_bwd(mc_model *m, int T, int in, int out, CUdeviceptr X, size_t woff,
                         CUdeviceptr dY, CUdeviceptr dX, int dx_f32, float beta, char *err) {
  if (mc_gemm(m, 1, 0, out, in, T, dY, out, X, in, 1.f, G32(woff), 1, in, err)) return -1;
  return mc_gemm(m, 0, 0, T, in, out, dY, out, W16(woff), in, beta, dX, dx_f32, in, err);
}

static int mc_cast(mc_model *m, CUdeviceptr x, CUdeviceptr y, size_t n, char *err) {
  unsigned long long nn = n;
  LAUNCH(cast_f32_bf16, mc_grid(m, n, 256), 1, 256, &nn, &x, &y);
  return 0;
}

/* out[width] += column sums of y [n × width] (fp32) */
static int mc_colsum(mc_model *m, int n, int width, CUdeviceptr y, CUdeviceptr out, char *err) {
  int slices = MC_SLICES;
  LAUNCH(colsum_partial, (width + 255) / 256, MC_SLICES, 256, &n, &width, &y, &m->part);
  LAUNCH(colsum_finish, (width + 255) / 256, 1, 256, &width, &slices, &m->part, &out);
  return 0;
}

/* rmsnorm weight gradient: grad[woff] += Σ_t dy·x[rows]·rstd */
static int mc_norm_dw(mc_model *m, int n, CUdeviceptr x, CUdeviceptr rows, CUdeviceptr rstd,
                      CUdeviceptr dy, size_t woff, char *err) {
  int width = m->H, slices = MC_SLICES;
  CUdeviceptr out = G32(woff);
  LAUNCH(rmsnorm_dw_partial, (width + 255) / 256, MC_SLICES, 256, &n, &x, &rows, &rstd, &dy,
         &m->part);
  LAUNCH(colsum_finish, (width + 255) / 256, 1, 256, &width, &slices, &m->part, &out);
  return 0;
}

/* bf16 round-to-nearest-even on the host, as f2bf in poc_common.cuh */
static uint16_t mc_f2bf(float f) {
  uint32_t u;
  memcpy(&u, &f, 4);
  if ((u & 0x7fffffffu) > 0x7f800000u) return (uint16_t)((u >> 16) | 0x40u);
  u += 0x7fffu + ((u >> 16) & 1u);
  return (uint16_t)(u >> 16);
}

/* ---- creation ----------------------------------------------------------------------- */

typedef struct { CUdeviceptr base; size_t used; } mc_carver;

static CUdeviceptr mc_take(mc_carver *c, size_t bytes) {
  size_t at = (c->used + 255) & ~(size_t)255;
  c->used = at + bytes;
  return c->base ? c->base + at : 0;
}

static void mc_carve(mc_model *m, mc_carver *cv) {
  size_t T = (size_t)m->max_tokens, H = m->H, F = m->F, qd = m->qd, kvd = m->kvd;
  size_t half = (size_t)m->hd / 2, C = (size_t)m->chunk;
  int train = m->base.trainable;
#define F32(n) mc_take(cv, (size_t)(n) * 4)
#define B16(n) mc_take(cv, (size_t)(n) * 2)
  for (int s = 0; s < m->n_slots; s++) {
    mc_saved *S = &m->sv[s];
    S->x = F32(T * H);
    S->rstd1 = F32(T);
    S->q = B16(T * qd);
    S->k = B16(T * kvd);
    S->v = B16(T * kvd);
    S->att = B16(T * qd);
    S->lse = F32(T * m->nh);
    S->h1 = F32(T * H);
    S->rstd2 = F32(T);
    S->g = B16(T * F);
    S->u = B16(T * F);
  }
  m->tok = F32(T);
  m->pos = F32(T);
  m->kbeg = F32(T);
  m->send = F32(T);
  m->hrow = F32(T);
  m->htgt = F32(T);
  m->cosb = F32(T * half);
  m->sinb = F32(T * half);
  m->xf = F32(T * H);
  m->xn16 = B16(T * H);
  m->a16 = B16(T * F);
  m->hf16 = B16(T * H);
  m->rstdf = F32(T);
  m->hm = F32(T);
  m->hs = F32(T);
  m->ha = F32(T);
  m->htl = F32(T);
  m->hlse = F32(T);
  m->hmu = F32(T);
  m->chunkbuf = F32(T * C);
  m->logp = F32(T);
  m->ent = F32(T);
  m->genlog = F32(m->V);
  if (train) {
    size_t wmax = H > qd ? H : qd;
    m->dlog16 = B16(T * C);
    m->dlogp = F32(T);
    m->dent = F32(T);
    m->normpart = F32(MC_NORM_BLOCKS);
    m->dX = F32(T * H);
    m->dX16 = B16(T * H);
    m->da16 = B16(T * F);
    m->dg16 = B16(T * F);
    m->du16 = B16(T * F);
    m->dxn = F32(T * H);
    m->dO16 = B16(T * qd);
    m->dq = F32(T * qd);
    m->dk = F32(T * kvd);
    m->dv = F32(T * kvd);
    m->dq16 = B16(T * qd);
    m->dk16 = B16(T * kvd);
    m->dv16 = B16(T * kvd);
    m->D = F32(T * m->nh);
    m->part = F32(MC_SLICES * wmax);
    m->dh = F32(T * H);
  }
#undef F32
#undef B16
}

static void mc_model_free(poc_bmodel *bm) {
  if (!bm) return;
  mc_model *m = mc_of(bm);
  cu.cuCtxSetCurrent(m->be->ctx);
  CUdeviceptr ps[] = {m->w32, m->w16, m->grad, m->mom, m->var, m->arena, m->text};
  for (size_t i = 0; i < sizeof ps / sizeof ps[0]; i++)
    if (ps[i]) cu.cuMemFree(ps[i]);
  free(m->lo);
  free(m->sv);
  free(m->h_i32);
  free(m->h_gen);
  free(m);
}

/* RoPE angles for positions [0, max_tokens): inv_freq as the CPU model computes it
 * (llama3 scaling included), cos and sin in double, stored as fp32. */
static int mc_rope_tables(mc_model *m, const poc_config *c, char *err) {
  int half = m->hd / 2;
  size_t n = (size_t)m->max_tokens * half;
  float *cs = malloc(2 * n * sizeof(float));
  double *inv = malloc((size_t)half * sizeof(double));
  if (!cs || !inv) {
    free(cs);
    free(inv);
    snprintf(err, POC_ERR_LEN, "cuda: out of memory for RoPE tables");
    return -1;
  }
  poc_rope_inv_freq(c, inv);
  for (int p = 0; p < m->max_tokens; p++)
    for (int i = 0; i < half; i++) {
      cs[(size_t)p * half + i] = (float)cos((double)p * inv[i]);
      cs[n + (size_t)p * half + i] = (float)sin((double)p * inv[i]);
    }
  CUresult r = cu.cuMemcpyHtoD(m->cosb, cs, n * sizeof(float));
  if (r == CUDA_SUCCESS) r = cu.cuMemcpyHtoD(m->sinb, cs + n, n * sizeof(float));
  free(cs);
  free(inv);
  return mc_cu(r, "uploading RoPE tables", err);
}

/* Uploads host fp32 weights: into the master copy and the bf16 copy (trainable), or
 * straight to bf16 (frozen). */
static int mc_upload_weights(mc_model *m, const float *w, char *err) {
  if (m->w32) {
    CU_TRY(cu.cuMemcpyHtoD(m->w32, w, m->P * 4), "uploading weights");
    return mc_cast(m, m->w32, m->w16, m->P, err);
  }
  enum { STEP = 1 << 20 };
  uint16_t *tmp = malloc(STEP * sizeof(uint16_t));
  if (!tmp) {
    snprintf(err, POC_ERR_LEN, "cuda: out of memory");
    return -1;
  }
  for (size_t a = 0; a < m->P; a += STEP) {
    size_t n = m->P - a < STEP ? m->P - a : STEP;
    for (size_t i = 0; i < n; i++) tmp[i] = mc_f2bf(w[a + i]);
    CUresult r = cu.cuMemcpyHtoD(m->w16 + a * 2, tmp, n * 2);
    if (mc_cu(r, "uploading weights", err)) {
      free(tmp);
      return -1;
    }
  }
  free(tmp);
  return 0;
}

static poc_bmodel *mc_model_new(poc_backend *pb, const poc_layout *lay, const float *w,
                                int trainable, int max_tokens, char *err) {
  cu_backend *b = (cu_backend *)pb;
  const poc_config *c = &lay->cfg;
  if (max_tokens <= 0) {
    snprintf(err, POC_ERR_LEN, "cuda: max_tokens must be positive (got %d)", max_tokens);
    return NULL;
  }
  if (cu.cuCtxSetCurrent(b->ctx) != CUDA_SUCCESS) {
    snprintf(err, POC_ERR_LEN, "cuda: cannot make the device current");
    return NULL;
  }
  poc_cuda_dims d;
  poc_cuda_dims_from_config(c, &d);
  cu_kernels *K = cu_kernels_get(b, &d, err);
  if (!K) return NULL;
  mc_model *m = calloc(1, sizeof *m);
  if (!m) {
    snprintf(err, POC_ERR_LEN, "cuda: out of memory");
    return NULL;
  }
  m->base = (poc_bmodel){pb, lay, trainable};
  m->be = b;
  m->K = K;
  m->H = d.H;
  m->F = d.F;
  m->V = d.V;
  m->L = c->num_hidden_layers;
  m->nh = d.NH;
  m->nkv = d.NKV;
  m->hd = d.HD;
  m->qd = d.NH * d.HD;
  m->kvd = d.NKV * d.HD;
  m->max_tokens = max_tokens;
  m->n_slots = trainable ? m->L : 1;
  m->P = lay->n_params;
  m->saved_n_tok = -1;
  const char *ch = getenv("POC_CUDA_HEAD_CHUNK");
  m->chunk = ch && atoi(ch) > 0 ? atoi(ch) : MC_HEAD_CHUNK;
  if (m->chunk > m->V) m->chunk = m->V;
  m->lo = calloc((size_t)m->L, sizeof *m->lo);
  m->sv = calloc((size_t)m->n_slots, sizeof *m->sv);
  m->h_i32 = malloc((size_t)max_tokens * 6 * sizeof(int32_t));
  m->h_gen = malloc((size_t)m->V * sizeof(float));
  if (!m->lo || !m->sv || !m->h_i32 || !m->h_gen) {
    snprintf(err, POC_ERR_LEN, "cuda: out of memory");
    goto fail;
  }
  poc_model_offsets mo;
  if (poc_layout_offsets(lay, &mo, err)) goto fail;
  m->off_embed = mo.embed;
  m->off_norm = mo.norm;
  m->off_head = mo.head;
  memcpy(m->lo, mo.layers, (size_t)m->L * sizeof *m->lo);
  free(mo.layers);
  if (c->o_proj_bias) {  /* Llama's attention_bias: the kernels add q/k/v biases only */
    snprintf(err, POC_ERR_LEN, "cuda: an o_proj bias (llama attention_bias) is not supported yet");
    goto fail;
  }
  mc_carver cv = {0, 0};
  mc_carve(m, &cv);
  CUresult r = cu.cuMemAlloc(&m->w16, m->P * 2);
  if (r == CUDA_SUCCESS && trainable) r = cu.cuMemAlloc(&m->w32, m->P * 4);
  if (r == CUDA_SUCCESS && trainable) r = cu.cuMemAlloc(&m->grad, m->P * 4);
  if (r == CUDA_SUCCESS && trainable) r = cu.cuMemAlloc(&m->mom, m->P * 4);
  if (r == CUDA_SUCCESS && trainable) r = cu.cuMemAlloc(&m->var, m->P * 4);
  if (r == CUDA_SUCCESS) r = cu.cuMemAlloc(&m->arena, cv.used);
  if (r != CUDA_SUCCESS) {
    snprintf(err, POC_ERR_LEN, "cuda: cannot allocate %.2f GiB of parameters and state plus "
             "%.2f GiB of activations for %d tokens: %s",
             (double)m->P * (trainable ? 18 : 2) / (1 << 30), (double)cv.used / (1 << 30),
             max_tokens, cu_errstr(r));
    goto fail;
  }
  cv = (mc_carver){m->arena, 0};
  mc_carve(m, &cv);
  if (trainable && (mc_cu(cu.cuMemsetD8(m->grad, 0, m->P * 4), "clearing gradients", err) ||
                    mc_cu(cu.cuMemsetD8(m->mom, 0, m->P * 4), "clearing AdamW state", err) ||
                    mc_cu(cu.cuMemsetD8(m->var, 0, m->P * 4), "clearing AdamW state", err)))
    goto fail;
  if (mc_rope_tables(m, c, err) || mc_upload_weights(m, w, err)) goto fail;
  CUresult sr = cu.cuCtxSynchronize();
  if (mc_cu(sr, "creating the model", err)) goto fail;
  return &m->base;
fail:
  mc_model_free(&m->base);
  return NULL;
}

/* ---- forward ------------------------------------------------------------------------ */

/* Checks the pack exactly as the CPU model does and uploads the per-row tables: token,
 * position, first key and sequence end of each row; row and target of each head row.
 * Returns the number of targets, or -1. */
static int mc_prepare(mc_model *m, const poc_pack *p, char *err) {
  if (p->n_tok > m->max_tokens) {
    snprintf(err, POC_ERR_LEN, "cuda: pack of %d tokens exceeds the workspace (%d tokens)",
             p->n_tok, m->max_tokens);
    return -1;
  }
  if (p->n_seq < 0 || p->seq_start[0] != 0 || p->seq_start[p->n_seq] != p->n_tok) {
    snprintf(err, POC_ERR_LEN, "cuda: pack sequences must start at 0 and end at %d tokens",
             p->n_tok);
    return -1;
  }
  const int T = p->n_tok, win = m->base.lay->cfg.sliding_window;
  int32_t *pos = m->h_i32, *kb = pos + m->max_tokens, *se = kb + m->max_tokens,
          *hr = se + m->max_tokens, *ht = hr + m->max_tokens;
  int n = 0;
  for (int s = 0; s < p->n_seq; s++) {
    int a = p->seq_start[s], b = p->seq_start[s + 1], ts = p->tgt_start[s];
    if (ts <= a || ts > b) {
      snprintf(err, POC_ERR_LEN,
               "cuda: pack sequence %d has an empty context or a target outside it "
               "(tokens %d..%d, target from %d)", s, a, b, ts);
      return -1;
    }
    if (win > 0 && b - a > win) {
      snprintf(err, POC_ERR_LEN,
               "cuda: pack sequence %d has %d tokens, longer than the sliding window (%d)", s,
               b - a, win);
      return -1;
    }
    for (int t = a; t < b; t++) {
      if (p->tokens[t] < 0 || p->tokens[t] >= m->V) {
        snprintf(err, POC_ERR_LEN, "cuda: token %d at pack position %d is outside the "
                 "vocabulary (%d)", p->tokens[t], t, m->V);
        return -1;
      }
      pos[t] = t - a;
      kb[t] = a;
      se[t] = b;
      if (t >= ts) {
        hr[n] = t - 1;
        ht[n] = p->tokens[t];
        n++;
      }
    }
  }
  if (T > 0) {
    CU_TRY(cu.cuMemcpyHtoD(m->tok, p->tokens, (size_t)T * 4), "uploading the pack");
    CU_TRY(cu.cuMemcpyHtoD(m->pos, pos, (size_t)T * 4), "uploading the pack");
    CU_TRY(cu.cuMemcpyHtoD(m->kbeg, kb, (size_t)T * 4), "uploading the pack");
    CU_TRY(cu.cuMemcpyHtoD(m->send, se, (size_t)T * 4), "uploading the pack");
  }
  if (n > 0) {
    CU_TRY(cu.cuMemcpyHtoD(m->hrow, hr, (size_t)n * 4), "uploading the pack");
    CU_TRY(cu.cuMemcpyHtoD(m->htgt, ht, (size_t)n * 4), "uploading the pack");
  }
  return n;
}

static int mc_layer_fwd(mc_model *m, int l, int T, mc_saved *S, CUdeviceptr out, char *err) {
  const mc_layer_off *o = &m->lo[l];
  const int H = m->H, F = m->F;
  CUdeviceptr null = 0, ln1 = W16(o->ln1), ln2 = W16(o->ln2);
  CUdeviceptr bq = o->bq == MC_NO_BIAS ? 0 : W16(o->bq), bk = o->bk == MC_NO_BIAS ? 0 : W16(o->bk),
              bv = o->bv == MC_NO_BIAS ? 0 : W16(o->bv);
  LAUNCH(rmsnorm_fwd, T, 1, 256, &T, &S->x, &null, &ln1, &m->xn16, &S->rstd1);
  if (mc_linear(m, T, H, m->qd, m->xn16, o->wq, S->q, 0, 0.f, err) ||
      mc_linear(m, T, H, m->kvd, m->xn16, o->wk, S->k, 0, 0.f, err) ||
      mc_linear(m, T, H, m->kvd, m->xn16, o->wv, S->v, 0, 0.f, err))
    return -1;
  LAUNCH(qkv_bias_rope, T, 1, 128, &T, &m->pos, &m->cosb, &m->sinb, &S->q, &S->k, &S->v, &bq,
         &bk, &bv);
  LAUNCH(attn_fwd, (T + 15) / 16, m->nh, 128, &T, &S->q, &S->k, &S->v, &m->kbeg, &S->att,
         &S->lse);
  CU_TRY(cu.cuMemcpyDtoD(S->h1, S->x, (size_t)T * H * 4), "copying the residual stream");
  if (mc_linear(m, T, m->qd, H, S->att, o->wo, S->h1, 1, 1.f, err)) return -1;
  LAUNCH(rmsnorm_fwd, T, 1, 256, &T, &S->h1, &null, &ln2, &m->xn16, &S->rstd2);
  if (mc_linear(m, T, H, F, m->xn16, o->wg, S->g, 0, 0.f, err) ||
      mc_linear(m, T, H, F, m->xn16, o->wu, S->u, 0, 0.f, err))
    return -1;
  unsigned long long nTF = (unsigned long long)T * F;
  LAUNCH(swiglu_fwd, mc_grid(m, nTF, 256), 1, 256, &nTF, &S->g, &S->u, &m->a16);
  CU_TRY(cu.cuMemcpyDtoD(out, S->h1, (size_t)T * H * 4), "copying the residual stream");
  return mc_linear(m, T, F, H, m->a16, o->wd, out, 1, 1.f, err);
}

/* Embedding and every layer on the T uploaded rows; the last layer's output lands in xf. */
static int mc_layers_fwd(mc_model *m, int T, int save, char *err) {
  CUdeviceptr E = W16(m->off_embed);
  LAUNCH(embed_fwd, T, 1, 256, &T, &m->tok, &E, &m->sv[0].x);
  for (int l = 0; l < m->L; l++) {
    mc_saved *S = &m->sv[save ? l : 0];
    CUdeviceptr out = l + 1 == m->L ? m->xf : save ? m->sv[l + 1].x : S->x;
    if (mc_layer_fwd(m, l, T, S, out, err)) return -1;
  }
  return 0;
}

static int mc_text_alloc(mc_model *m, char *err) {
  if (m->text) return 0;
  /* fp32 logits plus bf16 dlogits: the textbook head's n×V cost, paid only on request */
  size_t bytes = (size_t)m->max_tokens * m->V * (m->base.trainable ? 6 : 4);
  CUresult r = cu.cuMemAlloc(&m->text, bytes);
  if (r == CUDA_SUCCESS) return 0;
  m->text = 0;
  snprintf(err, POC_ERR_LEN, "cuda: cannot allocate %.2f GiB for the %d×%d textbook logits: %s",
           (double)bytes / (1 << 30), m->max_tokens, m->V, cu_errstr(r));
  return -1;
}

static int mc_head_fwd(mc_model *m, int n, int flags, char *err) {
  CUdeviceptr W = W16(m->off_head), ent = (flags & POC_FWD_ENTROPY) ? m->ent : 0;
  int H = m->H, V = m->V;
  if (flags & POC_FWD_UNFUSED) {
    if (mc_text_alloc(m, err) || mc_gemm(m, 0, 1, n, V, H, m->hf16, H, W, H, 0.f, m->text, 1, V, err))
      return -1;
    unsigned long long nV = (unsigned long long)n * V;
    LAUNCH(head_text_lse, n, 1, 256, &n, &V, &m->text, &m->hlse);
    LAUNCH(head_text_logsoftmax, mc_grid(m, nV, 256), 1, 256, &n, &V, &m->text, &m->hlse);
    LAUNCH(head_text_gather, n, 1, 256, &n, &V, &m->text, &m->htgt, &m->logp, &ent, &m->hmu);
    return 0;
  }
  for (int v0 = 0; v0 < V; v0 += m->chunk) {
    int c = V - v0 < m->chunk ? V - v0 : m->chunk;
    if (mc_gemm(m, 0, 1, n, c, H, m->hf16, H, W + (CUdeviceptr)v0 * H * 2, H, 0.f,
                m->chunkbuf, 1, c, err))
      return -1;
    LAUNCH(head_chunk_fwd, n, 1, 256, &n, &c, &v0, &m->chunkbuf, &m->htgt, &m->hm, &m->hs,
           &m->ha, &m->htl);
  }
  LAUNCH(head_finish, (n + 255) / 256, 1, 256, &n, &m->hm, &m->hs, &m->ha, &m->htl, &m->logp,
         &ent, &m->hlse, &m->hmu);
  return 0;
}

static int mc_forward(poc_bmodel *bm, const poc_pack *p, int flags, float *logp, float *entropy,
                      char *err) {
  mc_model *m = mc_of(bm);
  m->saved_n_tok = -1;
  if ((flags & POC_FWD_SAVE) && !bm->trainable) {
    snprintf(err, POC_ERR_LEN, "cuda: a forward for backward needs a trainable model");
    return -1;
  }
  if ((flags & POC_FWD_ENTROPY) && !entropy) {
    snprintf(err, POC_ERR_LEN, "cuda: entropy asked for without an output array");
    return -1;
  }
  CU_TRY(cu.cuCtxSetCurrent(m->be->ctx), "selecting the device");
  int n = mc_prepare(m, p, err);
  if (n < 0) return -1;
  const int T = p->n_tok, save = (flags & POC_FWD_SAVE) != 0;
  if (T == 0) return 0;
  if (mc_layers_fwd(m, T, save, err)) return -1;
  if (n > 0) {
    CUdeviceptr nw = W16(m->off_norm);
    LAUNCH(rmsnorm_fwd, n, 1, 256, &n, &m->xf, &m->hrow, &nw, &m->hf16, &m->rstdf);
    if (mc_head_fwd(m, n, flags, err)) return -1;
    CU_TRY(cu.cuMemcpyDtoH(logp, m->logp, (size_t)n * 4), "running the forward pass");
    if (flags & POC_FWD_ENTROPY)
      CU_TRY(cu.cuMemcpyDtoH(entropy, m->ent, (size_t)n * 4), "running the forward pass");
  } else {
    CU_TRY(cu.cuCtxSynchronize(), "running the forward pass");
  }
  if (save) {
    m->saved_n_tok = T;
    m->saved_flags = flags;
  }
  return 0;
}

/* ---- backward ----------------------------------------------------------------------- */

static int mc_head_bwd(mc_model *m, int n, int has_dent, char *err) {
  CUdeviceptr W = W16(m->off_head), gW = G32(m->off_head), dent = has_dent ? m->dent : 0;
  int H = m->H, V = m->V;
  if (m->saved_flags & POC_FWD_UNFUSED) {
    CUdeviceptr dl = m->text + (CUdeviceptr)m->max_tokens * V * 4;
    unsigned long long nV = (unsigned long long)n * V;
    LAUNCH(head_text_bwd, mc_grid(m, nV, 256), 1, 256, &n, &V, &m->text, &m->htgt, &m->hmu,
           &m->dlogp, &dent, &dl);
    if (mc_gemm(m, 0, 0, n, H, V, dl, V, W, H, 0.f, m->dh, 1, H, err) ||
        mc_gemm(m, 1, 0, V, H, n, dl, V, m->hf16, H, 1.f, gW, 1, H, err))
      return -1;
    return 0;
  }
  for (int v0 = 0; v0 < V; v0 += m->chunk) {
    int c = V - v0 < m->chunk ? V - v0 : m->chunk;
    CUdeviceptr Wc = W + (CUdeviceptr)v0 * H * 2, gWc = gW + (CUdeviceptr)v0 * H * 4;
    unsigned long long nc = (unsigned long long)n * c;
    if (mc_gemm(m, 0, 1, n, c, H, m->hf16, H, Wc, H, 0.f, m->chunkbuf, 1, c, err)) return -1;
    LAUNCH(head_chunk_bwd, mc_grid(m, nc, 256), 1, 256, &n, &c, &v0, &m->chunkbuf, &m->htgt,
           &m->hlse, &m->hmu, &m->dlogp, &dent, &m->dlog16);
    /* dh (=|+=) dlogits·W_chunk;  dW_chunk += dlogitsᵀ·h */
    if (mc_gemm(m, 0, 0, n, H, c, m->dlog16, c, Wc, H, v0 ? 1.f : 0.f, m->dh, 1, H, err) ||
        mc_gemm(m, 1, 0, c, H, n, m->dlog16, c, m->hf16, H, 1.f, gWc, 1, H, err))
      return -1;
  }
  return 0;
}

static int mc_layer_bwd(mc_model *m, int l, int T, mc_saved *S, char *err) {
  const mc_layer_off *o = &m->lo[l];
  const int H = m->H, F = m->F, qd = m->qd, kvd = m->kvd;
  CUdeviceptr null = 0, ln1 = W16(o->ln1), ln2 = W16(o->ln2);
  const size_t TH = (size_t)T * H;
  unsigned long long nTF = (unsigned long long)T * F;
  /* MLP: dX holds dL/d(layer output) */
  LAUNCH(rmsnorm_fwd, T, 1, 256, &T, &S->h1, &null, &ln2, &m->xn16, &null);
  LAUNCH(swiglu_fwd, mc_grid(m, nTF, 256), 1, 256, &nTF, &S->g, &S->u, &m->a16);
  if (mc_cast(m, m->dX, m->dX16, TH, err) ||
      mc_linear_bwd(m, T, F, H, m->a16, o->wd, m->dX16, m->da16, 0, 0.f, err))
    return -1;
  LAUNCH(swiglu_bwd, mc_grid(m, nTF, 256), 1, 256, &nTF, &S->g, &S->u, &m->da16, &m->dg16,
         &m->du16);
  if (mc_linear_bwd(m, T, H, F, m->xn16, o->wg, m->dg16, m->dxn, 1, 0.f, err) ||
      mc_linear_bwd(m, T, H, F, m->xn16, o->wu, m->du16, m->dxn, 1, 1.f, err))
    return -1;
  LAUNCH(rmsnorm_bwd, T, 1, 256, &T, &S->h1, &null, &ln2, &S->rstd2, &m->dxn, &m->dX);
  if (mc_norm_dw(m, T, S->h1, 0, S->rstd2, m->dxn, o->ln2, err)) return -1;
  /* attention: dX is now dL/dh1 */
  if (mc_cast(m, m->dX, m->dX16, TH, err) ||
      mc_linear_bwd(m, T, qd, H, S->att, o->wo, m->dX16, m->dO16, 0, 0.f, err))
    return -1;
  LAUNCH(attn_bwd_dq, (T + 7) / 8, m->nh, 128, &T, &S->q, &S->k, &S->v, &S->att, &m->dO16,
         &S->lse, &m->kbeg, &m->dq, &m->D);
  LAUNCH(attn_bwd_dkv, (T + 7) / 8, m->nkv, 128, &T, &S->q, &S->k, &S->v, &m->dO16, &S->lse,
         &m->D, &m->send, &m->dk, &m->dv);
  LAUNCH(rope_bwd, T, 1, 128, &T, &m->pos, &m->cosb, &m->sinb, &m->dq, &m->dk, &m->dv,
         &m->dq16, &m->dk16, &m->dv16);
  if (o->bq != MC_NO_BIAS &&
      (mc_colsum(m, T, qd, m->dq, G32(o->bq), err) || mc_colsum(m, T, kvd, m->dk, G32(o->bk), err) ||
       mc_colsum(m, T, kvd, m->dv, G32(o->bv), err)))
    return -1;
  LAUNCH(rmsnorm_fwd, T, 1, 256, &T, &S->x, &null, &ln1, &m->xn16, &null);
  if (mc_linear_bwd(m, T, H, qd, m->xn16, o->wq, m->dq16, m->dxn, 1, 0.f, err) ||
      mc_linear_bwd(m, T, H, kvd, m->xn16, o->wk, m->dk16, m->dxn, 1, 1.f, err) ||
      mc_linear_bwd(m, T, H, kvd, m->xn16, o->wv, m->dv16, m->dxn, 1, 1.f, err))
    return -1;
  LAUNCH(rmsnorm_bwd, T, 1, 256, &T, &S->x, &null, &ln1, &S->rstd1, &m->dxn, &m->dX);
  return mc_norm_dw(m, T, S->x, 0, S->rstd1, m->dxn, o->ln1, err);
}

static int mc_backward(poc_bmodel *bm, const poc_pack *p, const float *dlogp, const float *dent,
                       char *err) {
  mc_model *m = mc_of(bm);
  if (!bm->trainable || m->saved_n_tok < 0 || m->saved_n_tok != p->n_tok) {
    snprintf(err, POC_ERR_LEN, "cuda: backward must follow a forward with POC_FWD_SAVE on "
             "the same pack");
    return -1;
  }
  int T = p->n_tok, H = m->H, n = poc_pack_targets(p);
  m->saved_n_tok = -1;
  if (T == 0) return 0;
  CU_TRY(cu.cuCtxSetCurrent(m->be->ctx), "selecting the device");
  CU_TRY(cu.cuMemsetD8(m->dX, 0, (size_t)T * H * 4), "clearing the residual gradient");
  if (n > 0) {
    if (dlogp)
      CU_TRY(cu.cuMemcpyHtoD(m->dlogp, dlogp, (size_t)n * 4), "uploading seeds");
    else
      CU_TRY(cu.cuMemsetD8(m->dlogp, 0, (size_t)n * 4), "clearing seeds");
    if (dent) CU_TRY(cu.cuMemcpyHtoD(m->dent, dent, (size_t)n * 4), "uploading seeds");
    if (mc_head_bwd(m, n, dent != NULL, err)) return -1;
    CUdeviceptr nw = W16(m->off_norm);
    LAUNCH(rmsnorm_bwd, n, 1, 256, &n, &m->xf, &m->hrow, &nw, &m->rstdf, &m->dh, &m->dX);
    if (mc_norm_dw(m, n, m->xf, m->hrow, m->rstdf, m->dh, m->off_norm, err)) return -1;
  }
  for (int l = m->L - 1; l >= 0; l--)
    if (mc_layer_bwd(m, l, T, &m->sv[l], err)) return -1;
  CUdeviceptr gE = G32(m->off_embed);
  LAUNCH(embed_bwd, T, 1, 256, &T, &m->tok, &m->dX, &gE);
  CU_TRY(cu.cuCtxSynchronize(), "running the backward pass");
  return 0;
}

/* ---- generation --------------------------------------------------------------------- */

/* The logits of the last of n tokens (one sequence), recomputing the whole prefix: there
 * is no KV cache on this backend yet, so a step costs a forward over the sequence. */
static int mc_last_logits(mc_model *m, const int32_t *tok, int n, char *err) {
  int32_t *pos = m->h_i32, *kb = pos + m->max_tokens, *se = kb + m->max_tokens;
  for (int t = 0; t < n; t++) {
    pos[t] = t;
    kb[t] = 0;
    se[t] = n;
  }
  int last = n - 1, one = 1;
  CU_TRY(cu.cuMemcpyHtoD(m->tok, tok, (size_t)n * 4), "uploading tokens");
  CU_TRY(cu.cuMemcpyHtoD(m->pos, pos, (size_t)n * 4), "uploading tokens");
  CU_TRY(cu.cuMemcpyHtoD(m->kbeg, kb, (size_t)n * 4), "uploading tokens");
  CU_TRY(cu.cuMemcpyHtoD(m->send, se, (size_t)n * 4), "uploading tokens");
  CU_TRY(cu.cuMemcpyHtoD(m->hrow, &last, 4), "uploading tokens");
  if (mc_layers_fwd(m, n, 0, err)) return -1;
  CUdeviceptr nw = W16(m->off_norm), null = 0;
  LAUNCH(rmsnorm_fwd, 1, 1, 256, &one, &m->xf, &m->hrow, &nw, &m->hf16, &null);
  if (mc_gemm(m, 0, 1, 1, m->V, m->H, m->hf16, m->H, W16(m->off_head), m->H, 0.f, m->genlog, 1,
              m->V, err))
    return -1;
  CU_TRY(cu.cuMemcpyDtoH(m->h_gen, m->genlog, (size_t)m->V * 4), "computing logits");
  return 0;
}

static int mc_generate(poc_bmodel *bm, const int32_t *prompt, int n_prompt, int max_new,
                       double temperature, double top_p, int eos, poc_rng *rng, int32_t *out,
                       char *err) {
  mc_model *m = mc_of(bm);
  m->saved_n_tok = -1;
  if (poc_generate_check(m->V, prompt, n_prompt, max_new, temperature, rng, err)) return -1;
  if (max_new == 0) return 0;
  int win = bm->lay->cfg.sliding_window;
  if (n_prompt + max_new - 1 > m->max_tokens || (win > 0 && n_prompt + max_new > win)) {
    snprintf(err, POC_ERR_LEN, "generate: %d prompt + %d new tokens exceed the model's "
             "workspace (%d tokens) or sliding window", n_prompt, max_new, m->max_tokens);
    return -1;
  }
  CU_TRY(cu.cuCtxSetCurrent(m->be->ctx), "selecting the device");
  int32_t *seq = malloc((size_t)(n_prompt + max_new) * sizeof *seq);
  double *prob = temperature > 0 ? malloc((size_t)m->V * sizeof *prob) : NULL;
  if (!seq || (temperature > 0 && !prob)) {
    free(seq);
    free(prob);
    snprintf(err, POC_ERR_LEN, "generate: out of memory");
    return -1;
  }
  memcpy(seq, prompt, (size_t)n_prompt * sizeof *seq);
  int k = 0, n = n_prompt;
  while (k < max_new) {
    if (mc_last_logits(m, seq, n, err)) {
      k = -1;
      break;
    }
    /* as generate_fp.c: greedy takes the first maximum; sampling tempers, then top-p */
    const float *l = m->h_gen;
    int best = 0;
    for (int v = 1; v < m->V; v++)
      if (l[v] > l[best]) best = v;
    int tok = best;
    if (temperature > 0) {
      double mx = l[best], s = 0;
      for (int v = 0; v < m->V; v++) s += prob[v] = exp(((double)l[v] - mx) / temperature);
      for (int v = 0; v < m->V; v++) prob[v] /= s;
      tok = poc_sample_top_p(prob, m->V, top_p, rng);
    }
    out[k++] = tok;
    seq[n++] = tok;
    if (tok == eos) break;
  }
  free(seq);
  free(prob);
  return k;
}

/* ---- optimizer and host copies ------------------------------------------------------ */

static int mc_need_train(mc_model *m, const char *what, char *err) {
  if (m->base.trainable) return 0;
  snprintf(err, POC_ERR_LEN, "cuda: %s needs a trainable model", what);
  return -1;
}

static int mc_zero_grad(poc_bmodel *bm, char *err) {
  mc_model *m = mc_of(bm);
  if (mc_need_train(m, "zero_grad", err)) return -1;
  CU_TRY(cu.cuCtxSetCurrent(m->be->ctx), "selecting the device");
  CU_TRY(cu.cuMemsetD8(m->grad, 0, m->P * 4), "clearing gradients");
  return 0;
}

static int mc_grad_norm(poc_bmodel *bm, double *norm, char *err) {
  mc_model *m = mc_of(bm);
  if (mc_need_train(m, "grad_norm", err)) return -1;
  CU_TRY(cu.cuCtxSetCurrent(m->be->ctx), "selecting the device");
  unsigned long long n = m->P;
  LAUNCH(sumsq_partial, MC_NORM_BLOCKS, 1, 256, &n, &m->grad, &m->normpart);
  float part[MC_NORM_BLOCKS];
  CU_TRY(cu.cuMemcpyDtoH(part, m->normpart, sizeof part), "computing the gradient norm");
  double s = 0;
  for (int i = 0; i < MC_NORM_BLOCKS; i++) s += part[i];
  *norm = sqrt(s);
  return 0;
}

/* One launch per run of consecutive tensors that share a weight-decay setting. */
static int mc_adamw(poc_bmodel *bm, const poc_adamw *h, char *err) {
  mc_model *m = mc_of(bm);
  if (mc_need_train(m, "adamw_step", err)) return -1;
  if (h->step < 1) {
    snprintf(err, POC_ERR_LEN, "cuda: AdamW step numbers start at 1 (got %ld)", h->step);
    return -1;
  }
  CU_TRY(cu.cuCtxSetCurrent(m->be->ctx), "selecting the device");
  const poc_layout *lay = bm->lay;
  float lr = (float)h->lr, b1 = (float)h->beta1, b2 = (float)h->beta2, eps = (float)h->eps,
        gs = (float)h->grad_scale;
  float bc1 = (float)(1 - pow(h->beta1, (double)h->step));
  float bc2 = (float)(1 - pow(h->beta2, (double)h->step));
  for (int t = 0; t < lay->n_tensors;) {
    int dec = poc_backend_decays(lay, t), e = t;
    while (e < lay->n_tensors && poc_backend_decays(lay, e) == dec) e++;
    size_t a = lay->tensors[t].offset;
    size_t b = lay->tensors[e - 1].offset + lay->tensors[e - 1].numel;
    unsigned long long n = b - a;
    float wd = dec ? (float)h->weight_decay : 0.f;
    CUdeviceptr w = m->w32 + a * 4, g = m->grad + a * 4, mo = m->mom + a * 4,
                va = m->var + a * 4, w16 = m->w16 + a * 2;
    LAUNCH(adamw, mc_grid(m, n, 256), 1, 256, &n, &w, &g, &mo, &va, &w16, &lr, &b1, &b2, &eps,
           &wd, &bc1, &bc2, &gs);
    t = e;
  }
  CU_TRY(cu.cuCtxSynchronize(), "the AdamW step");
  return 0;
}

static int mc_get_weights(poc_bmodel *bm, float *w, char *err) {
  mc_model *m = mc_of(bm);
  CU_TRY(cu.cuCtxSetCurrent(m->be->ctx), "selecting the device");
  if (m->w32) {
    CU_TRY(cu.cuMemcpyDtoH(w, m->w32, m->P * 4), "reading weights");
    return 0;
  }
  uint16_t *tmp = malloc(m->P * 2);
  if (!tmp) {
    snprintf(err, POC_ERR_LEN, "cuda: out of memory");
    return -1;
  }
  CUresult r = cu.cuMemcpyDtoH(tmp, m->w16, m->P * 2);
  for (size_t i = 0; r == CUDA_SUCCESS && i < m->P; i++) {
    uint32_t u = (uint32_t)tmp[i] << 16;
    memcpy(&w[i], &u, 4);
  }
  free(tmp);
  return mc_cu(r, "reading weights", err);
}

static int mc_set_weights(poc_bmodel *bm, const float *w, char *err) {
  mc_model *m = mc_of(bm);
  CU_TRY(cu.cuCtxSetCurrent(m->be->ctx), "selecting the device");
  if (mc_upload_weights(m, w, err)) return -1;
  CU_TRY(cu.cuCtxSynchronize(), "uploading weights");
  return 0;
}

static int mc_get_grad(poc_bmodel *bm, float *g, char *err) {
  mc_model *m = mc_of(bm);
  if (mc_need_train(m, "get_grad", err)) return -1;
  CU_TRY(cu.cuCtxSetCurrent(m->be->ctx), "selecting the device");
  CU_TRY(cu.cuMemcpyDtoH(g, m->grad, m->P * 4), "reading gradients");
  return 0;
}

static int mc_set_grad(poc_bmodel *bm, const float *g, char *err) {
  mc_model *m = mc_of(bm);
  if (mc_need_train(m, "set_grad", err)) return -1;
  CU_TRY(cu.cuCtxSetCurrent(m->be->ctx), "selecting the device");
  CU_TRY(cu.cuMemcpyHtoD(m->grad, g, m->P * 4), "writing gradients");
  return 0;
}

static int mc_get_adam(poc_bmodel *bm, float *mom, float *var, char *err) {
  mc_model *m = mc_of(bm);
  if (mc_need_train(m, "get_adam", err)) return -1;
  CU_TRY(cu.cuCtxSetCurrent(m->be->ctx), "selecting the device");
  CU_TRY(cu.cuMemcpyDtoH(mom, m->mom, m->P * 4), "reading AdamW state");
  CU_TRY(cu.cuMemcpyDtoH(var, m->var, m->P * 4), "reading AdamW state");
  return 0;
}

static int mc_set_adam(poc_bmodel *bm, const float *mom, const float *var, char *err) {
  mc_model *m = mc_of(bm);
  if (mc_need_train(m, "set_adam", err)) return -1;
  CU_TRY(cu.cuCtxSetCurrent(m->be->ctx), "selecting the device");
  CU_TRY(cu.cuMemcpyHtoD(m->mom, mom, m->P * 4), "writing AdamW state");
  CU_TRY(cu.cuMemcpyHtoD(m->var, var, m->P * 4), "writing AdamW state");
  return 0;
}

void cu_model_install(poc_backend *b) {
  b->model_new = mc_model_new;
  b->model_free = mc_model_free;
  b->forward = mc_forward;
  b->backward = mc_backward;
  b->generate = mc_generate;
  b->zero_grad = mc_zero_grad;
  b->grad_norm = mc_grad_norm;
  b->adamw_step = mc_adamw;
  b->get_weights = mc_get_weights;
  b->set_weights = mc_set_weights;
  b->get_grad = mc_get_grad;
  b->set_grad = mc_set_grad;
  b->get_adam = mc_get_adam;
  b->set_adam = mc_set_adam;
}
