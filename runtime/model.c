/* model.c — the Llama-family transformer, written once on the kernel interface (device.h):
 * packed forward and backward, the loss head (fused and textbook), the KV-cache decode
 * step with greedy and temperature/top-p sampling, the gradient norm and AdamW. Every
 * device runs this same sequence; only the kernels differ.
 *
 * A pack holds many sequences without padding; row t belongs to one sequence, sits at
 * position pos[t] inside it and attends to keys [kbeg[t], t]. Per layer:
 *   xn  = rmsnorm(x)·w_ln1
 *   q, k, v = xn·W_{q,k,v}ᵀ (+ b),  q, k ← rope(q, k)
 *   att = softmax(q·kᵀ/√hd, causal within the sequence)·v  (query head h uses kv head
 *         h / (nh/nkv))
 *   h1  = x + att·W_oᵀ (+ b_o)
 *   x'  = h1 + (silu(rmsnorm(h1)·w_ln2·W_gᵀ) ⊙ (rmsnorm(h1)·w_ln2·W_uᵀ))·W_dᵀ
 * then the final rmsnorm, only on the rows that predict a target, and the loss head. A
 * sequence-classification model (a reward model) instead normalises the last row of each
 * sequence and applies its score head, r = norm(x_last)·w_scoreᵀ: two GEMMs forward and
 * back on the same kernels, so every device has it.
 * Projections that read one input run as one GEMM: q, k, v into rows [q | k | v] and gate,
 * up into rows [g | u] (mdl_proj_fwd; split by qkv_bias_rope, read by swiglu).
 * Residual additions are GEMMs with β = 1 into the residual stream (acc); an o_proj bias
 * is a rank-1 GEMM ones·b_oᵀ added the same way, so no device needs an add kernel.
 * Backward recomputes the two normed inputs and the SwiGLU output of each layer instead of
 * keeping them.
 *
 * Precision is the device's: acc buffers (the stream, statistics, gradients, master
 * weights) and act buffers (GEMM and attention operands, the compute copy of the weights);
 * see device.h. Host arrays crossing the interface are double (log-probs and seeds) or the
 * caller's choice (weights).
 */
#include <limits.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "device.h"
#include "mplan.h"

typedef struct {
  poc_dptr x, rstd1, q, k, v, att, lse, h1, rstd2;
  poc_dptr gu;                   /* the fused gate/up projection [T × 2F]: row t = [g_t | u_t] */
  poc_dptr z[POC_LT_N];          /* LoRA: Z = (alpha/r)·drop(x)·Aᵀ per target [T × r] */
} mdl_saved;

struct poc_model {
  poc_device *d;
  poc_kset *k;
  const poc_layout *lay;
  poc_dims dm;
  int trainable, max_tokens, L, qd, kvd, qkvd, n_slots, rows_max, chunk;
  int cls;                       /* a classifier: one score per sequence, no loss head */
  size_t P, sa, sc;              /* parameters; bytes per act and acc element */
  poc_layer_offsets *lo;
  size_t off_embed, off_norm, off_head, off_score;

  poc_dptr w, wc;                /* master (acc; 0 for a frozen model on a bf16 device) and
                                    compute copy (act; the same buffer when shared_act) */
  poc_dptr grad, mom, var;       /* trainable only */
  poc_dptr arena, text, tdlog;   /* text/tdlog: the textbook head's logits, on first use */
  poc_dptr tok, pos, kbeg, send, hrow, htgt, cosb, sinb, ones;
  mdl_saved *sv;
  poc_dptr xf, xn, a, hf, rstdf, hm, hs, ha, hq, htl, hlse, hmu, chunkbuf, logp, ent, lss;
  poc_dptr dscore;               /* act [T]: the scores' seeds as a GEMM operand */
  poc_dptr qkv;                  /* act [T × qkvd]: the fused q/k/v projection, row [q | k | v] */
  poc_dptr dlogp, dent, dX, dX16, da, dgu, dxn, dO, dq, dk, dv, dqkv, D, dh, dlog;
  int32_t *h_i32;                /* host staging: 5 × max_tokens */
  int saved_n_tok, saved_flags;

  /* LoRA (pocrt.h): the adapters' layout and settings, NULL/0 without */
  const poc_layout *alay;
  const poc_lora_cfg *lc;
  int lora_on;                   /* forwards add the adapters (a base-only view: 0) */
  int base_grad;                 /* the base weights train (no adapters) */
  int view;                      /* the weights belong to another model (poc_model_view) */
  size_t PA;                     /* adapter parameters */
  void (*layer_hook)(void *, int); /* poc_model_set_layer_hook */
  void *layer_hook_ctx;
  size_t (*aoff)[POC_LT_N][2];   /* per layer and target: A, B offsets, or POC_NO_TENSOR */
  poc_dptr aw, awc;              /* adapters: master (acc) and compute copy (act) */
  poc_dptr dz, xd, tmpd;         /* scratch: dZ [T × r]; drop(x), dZ·A [T × widest input] */
  int drop_on, saved_drop;       /* dropout in the next forwards; in the saved one */
  uint64_t drop_seed, saved_seed;
  /* the trainable vector (gradients, moments): the base weights or the adapters */
  const poc_layout *tlay;
  size_t PT;
  poc_dptr tw, twc;
  /* ZeRO-1 (poc_model_shard): AdamW runs on [sh_lo, sh_hi) of the trainable vector, whose
   * moments alone are allocated (on first use: mdl_moments); the gradient and the weights
   * are padded to sh_pad = R·(sh_hi − sh_lo) elements for the collectives */
  int sharded;
  size_t sh_lo, sh_hi, sh_pad;
  /* gradient buckets (poc_model_grad_buckets) and the hook backward calls as each is
   * final; NULL/0 until asked */
  int n_buckets;
  size_t (*buckets)[2];
  poc_grad_hook hook;
  void *hook_ctx;
};

/* ---- helpers ---------------------------------------------------------------------------- */

#define ACT(p, i) ((p) + (poc_dptr)(i) * m->sa)
#define ACC(p, i) ((p) + (poc_dptr)(i) * m->sc)
#define W(off) ACT(m->wc, off)
#define G(off) ACC(m->grad, off)
#define BIAS(off) ((off) == POC_NO_TENSOR ? (poc_dptr)0 : W(off))
#define I32(p, i) ((p) + (poc_dptr)(i) * 4)
/* The device's stage marker (device.h): two stores, read only when something fails, so
 * an error names where in the model it happened ("in layer 3 attention backward"). */
#define STAGE(name, l) (m->d->stage = (name), m->d->layer = (l))

#define AW(off) ACT(m->awc, off)

/* Y[T×out] (=|+=) X[T×in]·Wᵀ for W [out×in] (HF layout) at parameter offset woff */
static void mdl_linear(poc_model *m, int T, int in, int out, poc_dptr X, size_t woff, poc_dptr Y,
                       int y_acc, float beta) {
  m->d->k.gemm(m->k, 0, 1, T, out, in, X, in, W(woff), in, beta, Y, y_acc, out);
}

/* Fused projections: n linear maps of one input X [T × in] (weights [out_i × in] at woff[i])
 * written side by side into Y (act [T × Σout_i]). Weights that are adjacent in the flat
 * layout form one [Σout × in] matrix, so each run of adjacent weights is one GEMM: q, k, v
 * are one GEMM and gate, up another unless biases sit between the weights (a model with
 * attention_bias keeps HF's flat order q.w, q.b, k.w, ..., so its q, k, v are three
 * GEMMs into the same columns). */
static int mdl_run(const size_t *woff, const int *out, int n, int in, int i) {
  int j = i + 1;
  while (j < n && woff[j] == woff[j - 1] + (size_t)out[j - 1] * in) j++;
  return j;
}

static void mdl_proj_fwd(poc_model *m, int T, int in, int n, const size_t *woff, const int *out,
                         poc_dptr X, poc_dptr Y) {
  int ld = 0;
  for (int i = 0; i < n; i++) ld += out[i];
  for (int i = 0, c = 0; i < n;) {
    int j = mdl_run(woff, out, n, in, i), w = 0;
    for (int e = i; e < j; e++) w += out[e];
    m->d->k.gemm(m->k, 0, 1, T, w, in, X, in, W(woff[i]), in, 0.f, ACT(Y, c), 0, ld);
    c += w;
    i = j;
  }
}

/* Its backward from dY (act [T × Σout_i], Y's layout): dW_i += dY_iᵀ·X (one GEMM per run)
 * and dX (acc) = Σ_i dY_i·W_i (one GEMM per run, K = the run's Σout). */
static void mdl_proj_bwd(poc_model *m, int T, int in, int n, const size_t *woff, const int *out,
                         poc_dptr X, poc_dptr dY, poc_dptr dX) {
  int ld = 0;
  for (int i = 0; i < n; i++) ld += out[i];
  for (int i = 0, c = 0; i < n;) {
    int j = mdl_run(woff, out, n, in, i), w = 0;
    for (int e = i; e < j; e++) w += out[e];
    if (m->base_grad)
      m->d->k.gemm(m->k, 1, 0, w, in, T, ACT(dY, c), ld, X, in, 1.f, G(woff[i]), 1, in);
    m->d->k.gemm(m->k, 0, 0, T, in, w, ACT(dY, c), ld, W(woff[i]), in, c ? 1.f : 0.f, dX, 1,
                 in);
    c += w;
    i = j;
  }
}

/* qkv [T × qkvd] = X·[W_q; W_k; W_v]ᵀ and its backward; gu [T × 2F] = X·[W_g; W_u]ᵀ */
static void mdl_qkv_fwd(poc_model *m, const poc_layer_offsets *o, int T, poc_dptr X, poc_dptr Y) {
  size_t w[3] = {o->wq, o->wk, o->wv};
  int out[3] = {m->qd, m->kvd, m->kvd};
  mdl_proj_fwd(m, T, m->dm.H, 3, w, out, X, Y);
}

static void mdl_qkv_bwd(poc_model *m, const poc_layer_offsets *o, int T, poc_dptr X, poc_dptr dY,
                        poc_dptr dX) {
  size_t w[3] = {o->wq, o->wk, o->wv};
  int out[3] = {m->qd, m->kvd, m->kvd};
  mdl_proj_bwd(m, T, m->dm.H, 3, w, out, X, dY, dX);
}

static void mdl_gu_fwd(poc_model *m, const poc_layer_offsets *o, int T, poc_dptr X, poc_dptr Y) {
  size_t w[2] = {o->wg, o->wu};
  int out[2] = {m->dm.F, m->dm.F};
  mdl_proj_fwd(m, T, m->dm.H, 2, w, out, X, Y);
}

static void mdl_gu_bwd(poc_model *m, const poc_layer_offsets *o, int T, poc_dptr X, poc_dptr dY,
                       poc_dptr dX) {
  size_t w[2] = {o->wg, o->wu};
  int out[2] = {m->dm.F, m->dm.F};
  mdl_proj_bwd(m, T, m->dm.H, 2, w, out, X, dY, dX);
}

/* dW += dYᵀ·X;  dX (=|+=) dY·W */
static void mdl_linear_bwd(poc_model *m, int T, int in, int out, poc_dptr X, size_t woff,
                           poc_dptr dY, poc_dptr dX, int dx_acc, float beta) {
  if (m->base_grad) m->d->k.gemm(m->k, 1, 0, out, in, T, dY, out, X, in, 1.f, G(woff), 1, in);
  m->d->k.gemm(m->k, 0, 0, T, in, out, dY, out, W(woff), in, beta, dX, dx_acc, in);
}

/* ---- LoRA: y = x·Wᵀ + s·drop(x)·Aᵀ·Bᵀ, s = alpha/r ----------------------------------------
 *
 * Forward keeps Z = s·drop(x)·Aᵀ [T × r] per layer and target (the only saved state, T·r
 * act elements each); backward with dY:
 *   dB += dYᵀ·Z,   dZ = s·dY·B,   dA += dZᵀ·drop(x),   dx += drop'(dZ·A)
 * where drop' multiplies by the same mask and 1/(1 − p); the mask is recomputed from its
 * seed (device.h's poc_drop_keep), never stored. With dropout off or p = 0 no mask is
 * computed and drop(x) is x itself: the cost is three rank-r GEMMs and a T×r scaling. */

/* The dropout stream of layer l's target t in a forward whose stream is `seed`. */
static uint64_t mdl_drop_stream(uint64_t seed, int l, int t) {
  return poc_rng_derive(seed, (uint64_t)l, (uint64_t)t).s;
}

static int mdl_has_adapter(const poc_model *m, int l, int t) {
  return m->lora_on && m->aoff[l][t][0] != POC_NO_TENSOR;
}

/* X act [T × in] → (with dropout) drop(X) in m->xd; else X itself */
static poc_dptr mdl_lora_input(poc_model *m, int l, int t, int T, int in, poc_dptr X, int drop,
                               uint64_t seed) {
  uint32_t thr = drop ? poc_drop_threshold(m->lc->dropout) : 0;
  if (!thr) return X;
  m->d->k.drop_scale(m->k, (size_t)T * in, X, m->xd, 0, 0.f, (float)(1 / (1 - m->lc->dropout)),
                     thr, mdl_drop_stream(seed, l, t));
  return m->xd;
}

/* Y (act, or acc when y_acc; row stride ldy) += s·drop(X)·Aᵀ·Bᵀ for layer l's target t;
 * Z into z. A fused projection's target is its columns of the fused output. */
static void mdl_lora_fwd(poc_model *m, int l, int t, int T, poc_dptr X, poc_dptr z, poc_dptr Y,
                         int ldy, int y_acc, int drop, uint64_t seed) {
  if (!mdl_has_adapter(m, l, t)) return;
  const poc_kernels *k = &m->d->k;
  int in, out, r = m->lc->r;
  poc_lora_dims(&m->lay->cfg, t, &in, &out);
  poc_dptr Xd = mdl_lora_input(m, l, t, T, in, X, drop, seed);
  k->gemm(m->k, 0, 1, T, r, in, Xd, in, AW(m->aoff[l][t][0]), in, 0.f, z, 0, r);
  k->drop_scale(m->k, (size_t)T * r, z, z, 0, 0.f, (float)(m->lc->alpha / r), 0, 0);
  k->gemm(m->k, 0, 1, T, out, r, z, r, AW(m->aoff[l][t][1]), r, 1.f, Y, y_acc, ldy);
}

/* The adapter's backward for layer l's target t: dY act [T × out] (row stride ldd); X the
 * forward's input (act, recomputed by the caller); dX (act, or acc when dx_acc)
 * accumulates. */
static void mdl_lora_bwd(poc_model *m, int l, int t, int T, poc_dptr X, poc_dptr z, poc_dptr dY,
                         int ldd, poc_dptr dX, int dx_acc) {
  if (!mdl_has_adapter(m, l, t)) return;
  const poc_kernels *k = &m->d->k;
  int in, out, r = m->lc->r;
  poc_lora_dims(&m->lay->cfg, t, &in, &out);
  size_t oa = m->aoff[l][t][0], ob = m->aoff[l][t][1];
  k->gemm(m->k, 1, 0, out, r, T, dY, ldd, z, r, 1.f, G(ob), 1, r);
  k->gemm(m->k, 0, 0, T, r, out, dY, ldd, AW(ob), r, 0.f, m->dz, 0, r);
  k->drop_scale(m->k, (size_t)T * r, m->dz, m->dz, 0, 0.f, (float)(m->lc->alpha / r), 0, 0);
  poc_dptr Xd = mdl_lora_input(m, l, t, T, in, X, m->saved_drop, m->saved_seed);
  k->gemm(m->k, 1, 0, r, in, T, m->dz, r, Xd, in, 1.f, G(oa), 1, in);
  uint32_t thr = m->saved_drop ? poc_drop_threshold(m->lc->dropout) : 0;
  if (!thr) {
    k->gemm(m->k, 0, 0, T, in, r, m->dz, r, AW(oa), in, 1.f, dX, dx_acc, in);
  } else {
    k->gemm(m->k, 0, 0, T, in, r, m->dz, r, AW(oa), in, 0.f, m->tmpd, 0, in);
    k->drop_scale(m->k, (size_t)T * in, m->tmpd, dX, dx_acc, 1.f,
                  (float)(1 / (1 - m->lc->dropout)), thr, mdl_drop_stream(m->saved_seed, l, t));
  }
}

/* Y[T×n] += ones·bᵀ: a bias added to an acc stream as a rank-1 GEMM */
static void mdl_add_bias(poc_model *m, int T, int n, size_t boff, poc_dptr ones, poc_dptr Y) {
  if (boff == POC_NO_TENSOR) return;
  m->d->k.gemm(m->k, 0, 0, T, n, 1, ones, 1, W(boff), n, 1.f, Y, 1, n);
}

/* cos/sin tables [npos × hd/2] for positions 0..npos-1, computed in double (llama3 scaling
 * applied by poc_rope_inv_freq) and stored as acc, so no angle is formed in low precision. */
static int mdl_rope_tables(poc_device *d, const poc_config *c, int npos, poc_dptr cosb,
                           poc_dptr sinb) {
  int half = c->head_dim / 2;
  size_t n = (size_t)npos * half;
  double *cs = malloc(2 * n * sizeof(double) + 1), *inv = malloc((size_t)(half + 1) * sizeof(double));
  if (!cs || !inv) {
    free(cs);
    free(inv);
    poc_dev_fail(d, "model: out of memory for RoPE tables");
    return -1;
  }
  poc_rope_inv_freq(c, inv);
  for (int p = 0; p < npos; p++)
    for (int i = 0; i < half; i++) {
      double a = (double)p * inv[i];
      cs[(size_t)p * half + i] = cos(a);
      cs[n + (size_t)p * half + i] = sin(a);
    }
  d->put(d, cosb, d->acc, cs, POC_DT_F64, n);
  d->put(d, sinb, d->acc, cs + n, POC_DT_F64, n);
  free(cs);
  free(inv);
  return 0;
}

/* The fused head's column chunk for blocks of `rows` rows. */
static int mdl_head_chunk(const poc_device *d, int rows, int V) {
  int c = d->head_chunk;
  while (c > 256 && (size_t)rows * (size_t)c > d->head_block) c /= 2;
  return c < V ? c : V;
}

/* ---- creation ----------------------------------------------------------------------------- */

/* The activation arena: the carve below lists every buffer of a micro-step with its
 * lifetime in the step (mplan.h); run once with no base it adds them to a plan, which
 * mplan.c packs, run again over the allocated arena it hands out the plan's offsets in
 * the same order. poc_model_plan runs the first half without a device, so `poc build`
 * prints the arena this code allocates. */
typedef struct {
  poc_mplan *plan;
  poc_dptr base;     /* 0: listing; else assigning from the solved plan */
  int k, layer;
} mdl_carver;

/* Lifetimes over a micro-step: a whole step (saved activations, the pack's indices,
 * scratch the backward reuses to recompute), the head's forward until the objective
 * has read its outputs back, the head's forward and backward, the head's backward only,
 * the backward only. Constant tables (RoPE, ones) are written once at creation: live
 * over the whole step, they share with nothing. */
enum { STEP, HEADOUT, HEADRUN, HBWD, BWD };
static const int mdl_life[][2] = {
    [STEP] = {POC_MP_FWD, POC_MP_LBWD},  [HEADOUT] = {POC_MP_HEAD, POC_MP_OBJ},
    [HEADRUN] = {POC_MP_HEAD, POC_MP_HBWD}, [HBWD] = {POC_MP_HBWD, POC_MP_HBWD},
    [BWD] = {POC_MP_HBWD, POC_MP_LBWD}};

static poc_dptr mdl_take(mdl_carver *c, const char *name, size_t bytes, int life) {
  if (!c->base) {
    poc_mplan_add(c->plan, name, c->layer, bytes, mdl_life[life][0], mdl_life[life][1]);
    return 0;
  }
  const poc_mbuf *b = &c->plan->buf[c->k++];
  return c->base + b->offset;
}

static void mdl_carve(poc_model *m, mdl_carver *cv) {
  size_t T = (size_t)m->max_tokens, H = m->dm.H, F = m->dm.F, qd = m->qd, kvd = m->kvd;
  size_t half = (size_t)m->dm.hd / 2, shared = m->d->shared_act;
#define CC(name, n, life) mdl_take(cv, name, (size_t)(n) * m->sc, life)
#define AA(name, n, life) mdl_take(cv, name, (size_t)(n) * m->sa, life)
#define II(name, n, life) mdl_take(cv, name, (size_t)(n) * 4, life)
/* an act view of an acc buffer: the buffer itself where the types agree */
#define VIEW(acc, name, n, life) (shared ? (acc) : AA(name, n, life))
  for (int s = 0; s < m->n_slots; s++) {
    mdl_saved *S = &m->sv[s];
    cv->layer = m->n_slots > 1 ? s : -1;
    S->x = CC("x", T * H, STEP);
    S->rstd1 = CC("rstd1", T, STEP);
    S->q = AA("q", T * qd, STEP);
    S->k = AA("k", T * kvd, STEP);
    S->v = AA("v", T * kvd, STEP);
    S->att = AA("att", T * qd, STEP);
    S->lse = CC("lse", T * m->dm.nh, STEP);
    S->h1 = CC("h1", T * H, STEP);
    S->rstd2 = CC("rstd2", T, STEP);
    S->gu = AA("gate_up", T * 2 * F, STEP);
    for (int t = 0; t < POC_LT_N; t++)
      S->z[t] = m->lora_on && (m->lc->targets >> t & 1) ? AA("lora_z", T * (size_t)m->lc->r, STEP) : 0;
  }
  cv->layer = -1;
  if (m->lora_on) {
    size_t wide = H > F ? H : F;
    if ((size_t)qd > wide) wide = qd;
    int drop = m->lc->dropout > 0 && m->trainable;
    m->dz = m->trainable ? AA("lora_dz", T * (size_t)m->lc->r, BWD) : 0;
    m->xd = drop ? AA("lora_xd", T * wide, STEP) : 0;
    m->tmpd = drop ? AA("lora_tmpd", T * wide, STEP) : 0;
  }
  m->tok = II("tok", T, STEP);
  m->pos = II("pos", T, STEP);
  m->kbeg = II("kbeg", T, STEP);
  m->send = II("send", T, STEP);
  m->hrow = II("hrow", T, STEP);
  m->htgt = II("htgt", T, STEP);
  m->cosb = CC("rope_cos", T * half, STEP);
  m->sinb = CC("rope_sin", T * half, STEP);
  m->ones = AA("ones", T, STEP);
  m->qkv = AA("qkv", T * (size_t)m->qkvd, STEP); /* forward scratch; dqkv in backward */
  m->xf = CC("xf", T * H, STEP);
  m->xn = AA("xn", T * H, STEP);
  m->a = AA("a", T * F, STEP);
  m->hf = AA("hf", T * H, STEP);
  m->rstdf = CC("rstdf", T, STEP);
  m->hm = CC("head_m", T, HEADRUN);
  m->hs = CC("head_s", T, HEADRUN);
  m->ha = CC("head_a", T, HEADRUN);
  m->hq = CC("head_q", T, HEADRUN);
  m->htl = CC("head_tl", T, HEADRUN);
  m->hlse = CC("head_lse", T, HEADRUN);
  m->hmu = CC("head_mu", T, HEADRUN);
  m->chunkbuf = m->d->head_chunk_acc ? CC("head_chunk", (size_t)m->rows_max * m->chunk, HEADRUN)
                                      : AA("head_chunk", (size_t)m->rows_max * m->chunk, HEADRUN);
  m->logp = CC("logp", T, HEADOUT);
  m->ent = CC("entropy", T, HEADOUT);
  m->lss = CC("logsumsq", T, HEADOUT);
  if (m->trainable) {
    /* head_chunk_bwd turns the chunk into dlogits in place, unless the chunk is acc and the
       dlogits act of another type (cpu-bf16) */
    m->dlog = m->d->head_chunk_acc && !shared
                  ? AA("head_dchunk", (size_t)m->rows_max * m->chunk, HBWD)
                  : m->chunkbuf;
    m->dlogp = CC("dlogp", T, HBWD);
    m->dent = CC("dentropy", T, HBWD);
    m->dX = CC("dX", T * H, BWD);
    m->dX16 = VIEW(m->dX, "dX_act", T * H, BWD);
    m->da = AA("da", T * F, BWD);
    m->dgu = AA("dgate_up", T * 2 * F, BWD);
    m->dxn = CC("dxn", T * H, BWD);
    m->dO = AA("dO", T * qd, BWD);
    m->dq = CC("dq", T * qd, BWD);
    m->dk = CC("dk", T * kvd, BWD);
    m->dv = CC("dv", T * kvd, BWD);
    m->dqkv = m->qkv; /* forward's scratch, free during backward */
    m->D = CC("attn_D", T * m->dm.nh, BWD);
    m->dh = CC("dh", T * H, HBWD);
    m->dscore = AA("dscore", T, HBWD);
  }
#undef CC
#undef AA
#undef II
#undef VIEW
}

int poc_model_plan(const poc_mplan_model *in, poc_mplan *p, char *err) {
  if (in->max_tokens <= 0) {
    snprintf(err, POC_ERR_LEN, "model: max_tokens must be positive (got %d)", in->max_tokens);
    return -1;
  }
  poc_device dev;
  poc_model m;
  memset(&dev, 0, sizeof dev);
  memset(&m, 0, sizeof m);
  dev.shared_act = in->shared_act;
  dev.head_chunk = in->head_chunk;
  dev.head_block = in->head_block;
  dev.head_chunk_acc = in->head_chunk_acc;
  m.d = &dev;
  poc_dims_from_config(&in->cfg, &m.dm);
  m.max_tokens = in->max_tokens;
  m.trainable = in->trainable;
  m.qd = m.dm.nh * m.dm.hd;
  m.kvd = m.dm.nkv * m.dm.hd;
  m.qkvd = m.qd + 2 * m.kvd;
  m.n_slots = in->trainable ? in->cfg.num_hidden_layers : 1;
  m.sa = poc_dtype_size(in->act);
  m.sc = poc_dtype_size(in->acc);
  m.lora_on = in->lora != NULL;
  m.lc = in->lora;
  m.rows_max = in->max_tokens < in->head_rows ? in->max_tokens : in->head_rows;
  m.chunk = mdl_head_chunk(&dev, m.rows_max, m.dm.V);
  m.sv = calloc((size_t)m.n_slots + 1, sizeof *m.sv);
  if (!m.sv) {
    snprintf(err, POC_ERR_LEN, "model: out of memory");
    return -1;
  }
  mdl_carver cv = {.plan = p, .layer = -1};
  mdl_carve(&m, &cv);
  free(m.sv);
  if (p->oom) {
    snprintf(err, POC_ERR_LEN, "model: out of memory");
    return -1;
  }
  return 0;
}

void poc_model_free(poc_model *m) {
  if (!m) return;
  poc_device *d = m->d;
  int own = !m->view;
  poc_dptr ps[] = {m->wc == m->w || !own ? 0 : m->wc, own ? m->w : 0,
                   m->awc == m->aw || !own ? 0 : m->awc, own ? m->aw : 0, m->grad, m->mom,
                   m->var, m->arena, m->text, m->tdlog == m->text ? 0 : m->tdlog};
  for (size_t i = 0; i < sizeof ps / sizeof ps[0]; i++)
    if (ps[i]) d->free(d, ps[i]);
  free(m->lo);
  free(m->buckets);
  free(m->aoff);
  free(m->sv);
  free(m->h_i32);
  free(m);
}

static int mdl_upload_weights(poc_model *m, const void *w, poc_dtype wt) {
  poc_device *d = m->d;
  if (!w) return d->failed ? -1 : 0; /* zeros, until the caller sets them */
  if (m->w) {
    d->put(d, m->w, d->acc, w, wt, m->P);
    if (m->wc != m->w) d->k.cast(m->k, m->P, m->w, m->wc);
  } else {
    d->put(d, m->wc, d->act, w, wt, m->P);
  }
  return d->failed ? -1 : 0;
}

/* Where each adapter sits, by PEFT key. */
static int mdl_lora_offsets(poc_model *m, char *err) {
  m->aoff = malloc((size_t)(m->L + 1) * sizeof *m->aoff);
  if (!m->aoff) {
    snprintf(err, POC_ERR_LEN, "model: out of memory");
    return -1;
  }
  for (int l = 0; l < m->L; l++)
    for (int t = 0; t < POC_LT_N; t++)
      for (int b = 0; b < 2; b++) {
        char key[96];
        poc_lora_key(key, sizeof key, l, t, b);
        const poc_tensor_info *ti = poc_layout_find(m->alay, key);
        m->aoff[l][t][b] = ti && (m->lc->targets >> t & 1) ? ti->offset : POC_NO_TENSOR;
      }
  return 0;
}

/* A model: plain (alay NULL), LoRA (alay set: base frozen, adapters trainable), or a
 * frozen view of src's weights (src set; adapters on when `adapters`). */
static poc_model *mdl_create(poc_device *d, const poc_layout *lay, const void *w, poc_dtype wt,
                             int trainable, const poc_layout *alay, const poc_lora_cfg *lc,
                             poc_model *src, int adapters, int max_tokens, char *err) {
  const poc_config *c = &lay->cfg;
  if (max_tokens <= 0) {
    snprintf(err, POC_ERR_LEN, "model: max_tokens must be positive (got %d)", max_tokens);
    return NULL;
  }
  poc_model *m = calloc(1, sizeof *m);
  if (!m) {
    snprintf(err, POC_ERR_LEN, "model: out of memory");
    return NULL;
  }
  m->d = d;
  m->lay = lay;
  poc_dims_from_config(c, &m->dm);
  m->trainable = trainable;
  m->view = src != NULL;
  if (src && adapters && src->alay) {
    alay = src->alay;
    lc = src->lc;
  } else if (src) {
    alay = NULL;
    lc = NULL;
  }
  m->alay = alay;
  m->lc = lc;
  m->lora_on = alay != NULL;
  m->PA = alay ? alay->n_params : 0;
  m->base_grad = trainable && !alay;
  m->tlay = alay ? alay : lay;
  m->PT = m->tlay->n_params;
  m->max_tokens = max_tokens;
  m->L = c->num_hidden_layers;
  m->qd = m->dm.nh * m->dm.hd;
  m->kvd = m->dm.nkv * m->dm.hd;
  m->qkvd = m->qd + 2 * m->kvd;
  m->n_slots = trainable ? m->L : 1;
  m->P = lay->n_params;
  m->sa = poc_dtype_size(d->act);
  m->sc = poc_dtype_size(d->acc);
  m->saved_n_tok = -1;
  m->rows_max = max_tokens < d->head_rows ? max_tokens : d->head_rows;
  m->chunk = mdl_head_chunk(d, m->rows_max, m->dm.V);
  m->lo = calloc((size_t)m->L + 1, sizeof *m->lo);
  m->sv = calloc((size_t)m->n_slots + 1, sizeof *m->sv);
  m->h_i32 = malloc((size_t)max_tokens * 5 * sizeof(int32_t));
  if (!m->lo || !m->sv || !m->h_i32) {
    snprintf(err, POC_ERR_LEN, "model: out of memory");
    goto fail;
  }
  poc_model_offsets mo;
  if (poc_layout_offsets(lay, &mo, err)) goto fail;
  m->off_embed = mo.embed;
  m->off_norm = mo.norm;
  m->off_head = mo.head;
  m->off_score = mo.score;
  m->cls = c->num_labels > 0;
  memcpy(m->lo, mo.layers, (size_t)m->L * sizeof *m->lo);
  free(mo.layers);
  if (alay && mdl_lora_offsets(m, err)) goto fail;
  STAGE("setting up the model", -1);
  if (!(m->k = d->kernels(d, &m->dm))) goto dev_fail;

  if (src) {
    m->wc = src->wc;
    m->aw = m->awc = alay ? src->awc : 0;
  } else if (d->shared_act) {
    m->w = m->wc = d->alloc(d, m->P * m->sc, alay ? "the base weights" : "the model's weights");
  } else {
    m->wc = d->alloc(d, m->P * m->sa, alay ? "the base weights" : "the model's compute weights");
    if (trainable && !alay) m->w = d->alloc(d, m->P * m->sc, "the model's master weights");
  }
  if (alay && !src) {
    m->aw = d->alloc(d, m->PA * m->sc, "the LoRA adapters");
    m->awc = d->shared_act ? m->aw : d->alloc(d, m->PA * m->sa, "the adapters' compute copy");
  }
  m->tw = alay ? m->aw : m->w;
  m->twc = alay ? m->awc : m->wc;
  if (trainable) {
    /* the moments on first use (mdl_moments), when a shard may have been chosen */
    m->grad = d->alloc(d, m->PT * m->sc, "the gradients");
  }
  if (d->failed) goto dev_fail;
  poc_mplan plan;
  poc_mplan_init(&plan, 256);
  mdl_carver cv = {.plan = &plan, .layer = -1};
  mdl_carve(m, &cv);
  if (poc_mplan_solve(&plan, err)) {
    poc_mplan_free(&plan);
    goto fail;
  }
  char what[96];
  snprintf(what, sizeof what, "activations for %d tokens", max_tokens);
  if (!(m->arena = d->alloc(d, plan.peak, what))) {
    poc_mplan_free(&plan);
    goto dev_fail;
  }
  cv = (mdl_carver){.plan = &plan, .base = m->arena, .layer = -1};
  mdl_carve(m, &cv);
  poc_mplan_free(&plan);
  /* host-memory devices hand out zeroed memory whose pages become resident on first
     touch: zeroing the state here would make it all resident while the models load (the
     load's own buffers and mapped files on top), raising the run's peak */
  if (trainable && !d->host_memory) {
    d->zero(d, m->grad, m->PT * m->sc);
  }
  if (alay && !src) {
    d->zero(d, m->aw, m->PA * m->sc);
    if (m->awc != m->aw) d->zero(d, m->awc, m->PA * m->sa);
  }
  float *one = malloc((size_t)max_tokens * sizeof(float));
  if (!one) {
    snprintf(err, POC_ERR_LEN, "model: out of memory");
    goto fail;
  }
  for (int i = 0; i < max_tokens; i++) one[i] = 1.f;
  d->put(d, m->ones, d->act, one, POC_DT_F32, (size_t)max_tokens);
  free(one);
  if (mdl_rope_tables(d, c, max_tokens, m->cosb, m->sinb) ||
      (!src && mdl_upload_weights(m, w, wt)))
    goto dev_fail;
  if (poc_dev_sync(d, err)) goto fail;
  return m;
dev_fail:
  poc_dev_sync(d, err);
fail:
  poc_model_free(m);
  return NULL;
}

poc_model *poc_model_new(poc_device *d, const poc_layout *lay, const void *w, poc_dtype wt,
                         int trainable, int max_tokens, char *err) {
  return mdl_create(d, lay, w, wt, trainable, NULL, NULL, NULL, 0, max_tokens, err);
}

poc_model *poc_model_new_lora(poc_device *d, const poc_layout *lay, const poc_layout *alay,
                              const poc_lora_cfg *lc, int max_tokens, char *err) {
  if (!alay || !lc || lc->r < 1 || !(lc->dropout >= 0 && lc->dropout < 1)) {
    snprintf(err, POC_ERR_LEN, "model: LoRA needs a rank >= 1 and a dropout in [0, 1)");
    return NULL;
  }
  return mdl_create(d, lay, NULL, POC_DT_F32, 1, alay, lc, NULL, 0, max_tokens, err);
}

poc_model *poc_model_view(poc_model *src, int adapters, int max_tokens, char *err) {
  return mdl_create(src->d, src->lay, NULL, POC_DT_F32, 0, NULL, NULL, src, adapters,
                    max_tokens, err);
}

void poc_model_lora_dropout(poc_model *m, int on, uint64_t seed) {
  m->drop_on = on && m->lc && m->lc->dropout > 0 && m->trainable;
  m->drop_seed = seed;
}

const poc_layout *poc_model_train_layout(const poc_model *m) { return m->tlay; }

const poc_layout *poc_model_layout(const poc_model *m) { return m->lay; }

int poc_model_outputs(const poc_model *m, const poc_pack *p) {
  return m->cls ? p->n_seq : poc_pack_targets(p);
}
poc_device *poc_model_device(const poc_model *m) { return m->d; }

/* ---- forward ---------------------------------------------------------------------------- */

/* Checks the pack and uploads the per-row tables: token, position, first key and sequence
 * end of each row; row and target of each head row. Returns the number of targets, or -1. */
static int mdl_prepare(poc_model *m, const poc_pack *p, char *err) {
  if (p->n_tok > m->max_tokens) {
    snprintf(err, POC_ERR_LEN, "model: pack of %d tokens exceeds the workspace (%d tokens)",
             p->n_tok, m->max_tokens);
    return -1;
  }
  if (p->n_seq < 0 || p->seq_start[0] != 0 || p->seq_start[p->n_seq] != p->n_tok) {
    snprintf(err, POC_ERR_LEN, "model: pack sequences must start at 0 and end at %d tokens",
             p->n_tok);
    return -1;
  }
  const int T = p->n_tok, win = m->lay->cfg.sliding_window, V = m->dm.V;
  int32_t *pos = m->h_i32, *kb = pos + m->max_tokens, *se = kb + m->max_tokens,
          *hr = se + m->max_tokens, *ht = hr + m->max_tokens;
  int n = 0;
  for (int s = 0; s < p->n_seq; s++) {
    int a = p->seq_start[s], b = p->seq_start[s + 1], ts = p->tgt_start[s];
    if (ts <= a || ts > b) {
      snprintf(err, POC_ERR_LEN,
               "model: pack sequence %d has an empty context or a target outside it "
               "(tokens %d..%d, target from %d)", s, a, b, ts);
      return -1;
    }
    if (win > 0 && b - a > win) {
      snprintf(err, POC_ERR_LEN,
               "model: pack sequence %d has %d tokens, longer than the sliding window (%d)",
               s, b - a, win);
      return -1;
    }
    if (m->cls) { /* the score reads the sequence's last row */
      hr[n] = b - 1;
      ht[n] = 0;
      n++;
    }
    for (int t = a; t < b; t++) {
      if (p->tokens[t] < 0 || p->tokens[t] >= V) {
        snprintf(err, POC_ERR_LEN, "model: token %d at pack position %d is outside the "
                 "vocabulary (%d)", p->tokens[t], t, V);
        return -1;
      }
      pos[t] = t - a;
      kb[t] = a;
      se[t] = b;
      if (t >= ts && !m->cls) {
        hr[n] = t - 1;
        ht[n] = p->tokens[t];
        n++;
      }
    }
  }
  poc_device *d = m->d;
  if (T > 0) {
    d->put(d, m->tok, POC_DT_I32, p->tokens, POC_DT_I32, (size_t)T);
    d->put(d, m->pos, POC_DT_I32, pos, POC_DT_I32, (size_t)T);
    d->put(d, m->kbeg, POC_DT_I32, kb, POC_DT_I32, (size_t)T);
    d->put(d, m->send, POC_DT_I32, se, POC_DT_I32, (size_t)T);
  }
  if (n > 0) {
    d->put(d, m->hrow, POC_DT_I32, hr, POC_DT_I32, (size_t)n);
    d->put(d, m->htgt, POC_DT_I32, ht, POC_DT_I32, (size_t)n);
  }
  return n;
}

/* One decoder layer on T rows of a pack, S->x → out (out may be S->x); drop/seed: the
 * adapters' dropout. */
static void mdl_layer_fwd(poc_model *m, int l, int T, mdl_saved *S, poc_dptr out, int drop,
                          uint64_t seed) {
  const poc_layer_offsets *o = &m->lo[l];
  const poc_kernels *k = &m->d->k;
  const int H = m->dm.H, F = m->dm.F;
  STAGE("attention", l);
  const int N = m->qkvd;
  k->rmsnorm_fwd(m->k, T, S->x, 0, W(o->ln1), m->xn, S->rstd1);
  mdl_qkv_fwd(m, o, T, m->xn, m->qkv);
  mdl_lora_fwd(m, l, POC_LT_Q, T, m->xn, S->z[POC_LT_Q], m->qkv, N, 0, drop, seed);
  mdl_lora_fwd(m, l, POC_LT_K, T, m->xn, S->z[POC_LT_K], ACT(m->qkv, m->qd), N, 0, drop, seed);
  mdl_lora_fwd(m, l, POC_LT_V, T, m->xn, S->z[POC_LT_V], ACT(m->qkv, m->qd + m->kvd), N, 0, drop,
               seed);
  k->qkv_bias_rope(m->k, T, m->pos, m->cosb, m->sinb, m->qkv, S->q, S->k, S->v, BIAS(o->bq),
                   BIAS(o->bk), BIAS(o->bv));
  k->attn_fwd(m->k, T, 0, S->q, S->k, S->v, m->kbeg, S->att, S->lse);
  m->d->copy(m->d, S->h1, S->x, (size_t)T * H * m->sc);
  mdl_linear(m, T, m->qd, H, S->att, o->wo, S->h1, 1, 1.f);
  mdl_lora_fwd(m, l, POC_LT_O, T, S->att, S->z[POC_LT_O], S->h1, H, 1, drop, seed);
  mdl_add_bias(m, T, H, o->bo, m->ones, S->h1);
  STAGE("MLP", l);
  k->rmsnorm_fwd(m->k, T, S->h1, 0, W(o->ln2), m->xn, S->rstd2);
  mdl_gu_fwd(m, o, T, m->xn, S->gu);
  mdl_lora_fwd(m, l, POC_LT_GATE, T, m->xn, S->z[POC_LT_GATE], S->gu, 2 * F, 0, drop, seed);
  mdl_lora_fwd(m, l, POC_LT_UP, T, m->xn, S->z[POC_LT_UP], ACT(S->gu, F), 2 * F, 0, drop, seed);
  k->swiglu_fwd(m->k, T, S->gu, m->a);
  if (out != S->h1) m->d->copy(m->d, out, S->h1, (size_t)T * H * m->sc);
  mdl_linear(m, T, F, H, m->a, o->wd, out, 1, 1.f);
  mdl_lora_fwd(m, l, POC_LT_DOWN, T, m->a, S->z[POC_LT_DOWN], out, H, 1, drop, seed);
}

/* The fused head on n rows of hf: streams blocks of rows × vocabulary chunks, folding
 * each chunk of logits into per-row online state; the n×V logits never exist. ent and
 * lss (log Σ p²) are produced when not 0; lss costs one more [n] running sum. */
static void mdl_head_fused_fwd(poc_model *m, int n, poc_dptr ent, poc_dptr lss) {
  const poc_kernels *k = &m->d->k;
  const int H = m->dm.H, V = m->dm.V;
  for (int r0 = 0; r0 < n; r0 += m->rows_max) {
    int rb = n - r0 < m->rows_max ? n - r0 : m->rows_max;
    for (int v0 = 0; v0 < V; v0 += m->chunk) {
      int c = V - v0 < m->chunk ? V - v0 : m->chunk;
      k->gemm(m->k, 0, 1, rb, c, H, ACT(m->hf, (size_t)r0 * H), H, W(m->off_head + (size_t)v0 * H),
              H, 0.f, m->chunkbuf, m->d->head_chunk_acc, c);
      k->head_chunk_fwd(m->k, rb, c, v0, m->chunkbuf, I32(m->htgt, r0), ACC(m->hm, r0),
                        ACC(m->hs, r0), ACC(m->ha, r0), lss ? ACC(m->hq, r0) : 0,
                        ACC(m->htl, r0));
    }
    k->head_finish(m->k, rb, ACC(m->hm, r0), ACC(m->hs, r0), ACC(m->ha, r0),
                   lss ? ACC(m->hq, r0) : 0, ACC(m->htl, r0), ACC(m->logp, r0),
                   ent ? ACC(ent, r0) : 0, lss ? ACC(lss, r0) : 0, ACC(m->hlse, r0),
                   ACC(m->hmu, r0));
  }
}

/* Backward of the fused head from the forward's lse and μ: each chunk is regenerated and
 * turned into dlogits, then dh (=|+=) dlogits·W_chunk and dW_chunk += dlogitsᵀ·h. */
static void mdl_head_fused_bwd(poc_model *m, int n, poc_dptr dent) {
  const poc_kernels *k = &m->d->k;
  const int H = m->dm.H, V = m->dm.V;
  for (int r0 = 0; r0 < n; r0 += m->rows_max) {
    int rb = n - r0 < m->rows_max ? n - r0 : m->rows_max;
    poc_dptr hb = ACT(m->hf, (size_t)r0 * H);
    for (int v0 = 0; v0 < V; v0 += m->chunk) {
      int c = V - v0 < m->chunk ? V - v0 : m->chunk;
      poc_dptr Wc = W(m->off_head + (size_t)v0 * H), gWc = G(m->off_head + (size_t)v0 * H);
      k->gemm(m->k, 0, 1, rb, c, H, hb, H, Wc, H, 0.f, m->chunkbuf, m->d->head_chunk_acc, c);
      k->head_chunk_bwd(m->k, rb, c, v0, m->chunkbuf, I32(m->htgt, r0), ACC(m->hlse, r0),
                        ACC(m->hmu, r0), ACC(m->dlogp, r0), dent ? ACC(dent, r0) : 0, m->dlog);
      k->gemm(m->k, 0, 0, rb, H, c, m->dlog, c, Wc, H, v0 ? 1.f : 0.f,
              ACC(m->dh, (size_t)r0 * H), 1, H);
      if (m->base_grad) k->gemm(m->k, 1, 0, c, H, rb, m->dlog, c, hb, H, 1.f, gWc, 1, H);
    }
  }
}

static int mdl_text_alloc(poc_model *m, char *err) {
  if (m->text) return 0;
  poc_device *d = m->d;
  size_t nV = (size_t)m->max_tokens * m->dm.V;
  m->text = d->alloc(d, nV * m->sc, "the textbook head's logits");
  if (m->text && m->trainable)
    m->tdlog = d->shared_act ? m->text : d->alloc(d, nV * m->sa, "the textbook head's dlogits");
  return poc_dev_sync(d, err);
}

int poc_model_forward(poc_model *m, const poc_pack *p, int flags, double *logp, double *entropy,
                      char *err) {
  poc_fwd_out o = {logp, entropy, NULL};
  return poc_model_forward_out(m, p, flags, &o, err);
}

int poc_model_forward_out(poc_model *m, const poc_pack *p, int flags, const poc_fwd_out *o,
                          char *err) {
  poc_device *d = m->d;
  const poc_kernels *k = &d->k;
  m->saved_n_tok = -1;
  if ((flags & POC_FWD_SAVE) && !m->trainable) {
    snprintf(err, POC_ERR_LEN, "model: a forward for backward needs a trainable model");
    return -1;
  }
  if (m->cls && (flags & (POC_FWD_ENTROPY | POC_FWD_LOGSUMSQ))) {
    snprintf(err, POC_ERR_LEN, "model: a sequence-classification model has no token "
             "distribution to take the %s of; it gives one score per sequence",
             (flags & POC_FWD_ENTROPY) ? "entropy" : "log Σ p²");
    return -1;
  }
  if (m->cls) flags &= ~POC_FWD_UNFUSED; /* no vocabulary head to choose */
  if ((flags & POC_FWD_ENTROPY) && !o->entropy) {
    snprintf(err, POC_ERR_LEN, "model: entropy asked for without an output array");
    return -1;
  }
  if ((flags & POC_FWD_LOGSUMSQ) && !o->logsumsq) {
    snprintf(err, POC_ERR_LEN, "model: log Σ p² asked for without an output array");
    return -1;
  }
  int n = mdl_prepare(m, p, err);
  if (n < 0) return -1;
  const int T = p->n_tok, H = m->dm.H, V = m->dm.V, save = (flags & POC_FWD_SAVE) != 0;
  if (T == 0) return 0;
  if ((flags & POC_FWD_UNFUSED) && mdl_text_alloc(m, err)) return -1;

  STAGE("the embedding", -1);
  k->embed_fwd(m->k, T, m->tok, W(m->off_embed), m->sv[0].x);
  for (int l = 0; l < m->L; l++) {
    mdl_saved *S = &m->sv[save ? l : 0];
    poc_dptr out = l + 1 == m->L ? m->xf : save ? m->sv[l + 1].x : S->x;
    mdl_layer_fwd(m, l, T, S, out, m->drop_on, m->drop_seed);
  }
  if (n > 0 && m->cls) {
    /* r_s = norm(x[last_s])·w_scoreᵀ: [n × H]·[1 × H]ᵀ */
    STAGE("the score head", -1);
    k->rmsnorm_fwd(m->k, n, m->xf, m->hrow, W(m->off_norm), m->hf, m->rstdf);
    k->gemm(m->k, 0, 1, n, 1, H, m->hf, H, W(m->off_score), H, 0.f, m->logp, 1, 1);
    d->get(d, o->logp, POC_DT_F64, m->logp, d->acc, (size_t)n);
  } else if (n > 0) {
    poc_dptr ent = (flags & POC_FWD_ENTROPY) ? m->ent : 0;
    poc_dptr lss = (flags & POC_FWD_LOGSUMSQ) ? m->lss : 0;
    STAGE("the loss head", -1);
    k->rmsnorm_fwd(m->k, n, m->xf, m->hrow, W(m->off_norm), m->hf, m->rstdf);
    if (flags & POC_FWD_UNFUSED) {
      k->gemm(m->k, 0, 1, n, V, H, m->hf, H, W(m->off_head), H, 0.f, m->text, 1, V);
      k->head_text_fwd(m->k, n, m->text, m->htgt, m->logp, ent, lss, m->hlse, m->hmu);
    } else {
      mdl_head_fused_fwd(m, n, ent, lss);
    }
    d->get(d, o->logp, POC_DT_F64, m->logp, d->acc, (size_t)n);
    if (ent) d->get(d, o->entropy, POC_DT_F64, m->ent, d->acc, (size_t)n);
    if (lss) d->get(d, o->logsumsq, POC_DT_F64, m->lss, d->acc, (size_t)n);
  }
  if (poc_dev_sync(d, err)) return -1;
  if (save) {
    m->saved_n_tok = T;
    m->saved_flags = flags;
    m->saved_drop = m->drop_on;
    m->saved_seed = m->drop_seed;
  }
  return 0;
}

/* ---- backward ----------------------------------------------------------------------------- */

/* One decoder layer backward: dX holds dL/d(layer output) and leaves holding
 * dL/d(layer input); weight gradients are accumulated. */
static void mdl_layer_bwd(poc_model *m, int l, int T, const mdl_saved *S) {
  const poc_layer_offsets *o = &m->lo[l];
  const poc_kernels *k = &m->d->k;
  const int H = m->dm.H, F = m->dm.F, qd = m->qd, kvd = m->kvd, N = m->qkvd;
  const size_t TH = (size_t)T * H;
  /* MLP */
  STAGE("MLP backward", l);
  k->rmsnorm_fwd(m->k, T, S->h1, 0, W(o->ln2), m->xn, 0);
  k->swiglu_fwd(m->k, T, S->gu, m->a);
  k->cast(m->k, TH, m->dX, m->dX16);
  mdl_linear_bwd(m, T, F, H, m->a, o->wd, m->dX16, m->da, 0, 0.f);
  mdl_lora_bwd(m, l, POC_LT_DOWN, T, m->a, S->z[POC_LT_DOWN], m->dX16, H, m->da, 0);
  k->swiglu_bwd(m->k, T, S->gu, m->da, m->dgu);
  mdl_gu_bwd(m, o, T, m->xn, m->dgu, m->dxn);
  mdl_lora_bwd(m, l, POC_LT_GATE, T, m->xn, S->z[POC_LT_GATE], m->dgu, 2 * F, m->dxn, 1);
  mdl_lora_bwd(m, l, POC_LT_UP, T, m->xn, S->z[POC_LT_UP], ACT(m->dgu, F), 2 * F, m->dxn, 1);
  k->rmsnorm_bwd(m->k, T, S->h1, 0, W(o->ln2), S->rstd2, m->dxn, m->dX);
  if (m->base_grad) k->rmsnorm_dw(m->k, T, S->h1, 0, S->rstd2, m->dxn, G(o->ln2));
  /* attention: dX is now dL/dh1 */
  STAGE("attention backward", l);
  k->cast(m->k, TH, m->dX, m->dX16);
  mdl_linear_bwd(m, T, qd, H, S->att, o->wo, m->dX16, m->dO, 0, 0.f);
  mdl_lora_bwd(m, l, POC_LT_O, T, S->att, S->z[POC_LT_O], m->dX16, H, m->dO, 0);
  if (o->bo != POC_NO_TENSOR && m->base_grad) k->colsum(m->k, T, H, m->dX, G(o->bo));
  k->attn_bwd(m->k, T, S->q, S->k, S->v, S->att, m->dO, S->lse, m->kbeg, m->send, m->dq, m->dk,
              m->dv, m->D);
  k->rope_bwd(m->k, T, m->pos, m->cosb, m->sinb, m->dq, m->dk, m->dv, m->dqkv);
  if (o->bq != POC_NO_TENSOR && m->base_grad) {
    k->colsum(m->k, T, qd, m->dq, G(o->bq));
    k->colsum(m->k, T, kvd, m->dk, G(o->bk));
    k->colsum(m->k, T, kvd, m->dv, G(o->bv));
  }
  k->rmsnorm_fwd(m->k, T, S->x, 0, W(o->ln1), m->xn, 0);
  mdl_qkv_bwd(m, o, T, m->xn, m->dqkv, m->dxn);
  mdl_lora_bwd(m, l, POC_LT_Q, T, m->xn, S->z[POC_LT_Q], m->dqkv, N, m->dxn, 1);
  mdl_lora_bwd(m, l, POC_LT_K, T, m->xn, S->z[POC_LT_K], ACT(m->dqkv, qd), N, m->dxn, 1);
  mdl_lora_bwd(m, l, POC_LT_V, T, m->xn, S->z[POC_LT_V], ACT(m->dqkv, qd + kvd), N, m->dxn, 1);
  k->rmsnorm_bwd(m->k, T, S->x, 0, W(o->ln1), S->rstd1, m->dxn, m->dX);
  if (m->base_grad) k->rmsnorm_dw(m->k, T, S->x, 0, S->rstd1, m->dxn, G(o->ln1));
}

int poc_model_backward(poc_model *m, const poc_pack *p, const double *dlogp,
                       const double *dentropy, char *err) {
  poc_device *d = m->d;
  const poc_kernels *k = &d->k;
  if (!m->trainable || m->saved_n_tok < 0 || m->saved_n_tok != p->n_tok) {
    snprintf(err, POC_ERR_LEN, "model: backward must follow a forward with POC_FWD_SAVE on "
             "the same pack");
    return -1;
  }
  const int T = p->n_tok, H = m->dm.H, V = m->dm.V, n = poc_model_outputs(m, p);
  m->saved_n_tok = -1; /* the head's buffers are consumed below */
  if (T == 0) return 0;
  STAGE("the loss head backward", -1);
  d->zero(d, m->dX, (size_t)T * H * m->sc);
  if (n > 0 && m->cls) {
    /* dh = dr·w_score ([n × 1]·[1 × H]), dw_score += drᵀ·h ([1 × n]·[n × H]) */
    STAGE("the score head backward", -1);
    if (dlogp)
      d->put(d, m->dscore, d->act, dlogp, POC_DT_F64, (size_t)n);
    else
      d->zero(d, m->dscore, (size_t)n * m->sa);
    k->gemm(m->k, 0, 0, n, H, 1, m->dscore, 1, W(m->off_score), H, 0.f, m->dh, 1, H);
    k->gemm(m->k, 1, 0, 1, H, n, m->dscore, 1, m->hf, H, 1.f, G(m->off_score), 1, H);
    k->rmsnorm_bwd(m->k, n, m->xf, m->hrow, W(m->off_norm), m->rstdf, m->dh, m->dX);
    k->rmsnorm_dw(m->k, n, m->xf, m->hrow, m->rstdf, m->dh, G(m->off_norm));
  } else if (n > 0) {
    if (dlogp)
      d->put(d, m->dlogp, d->acc, dlogp, POC_DT_F64, (size_t)n);
    else
      d->zero(d, m->dlogp, (size_t)n * m->sc);
    poc_dptr dent = 0;
    if (dentropy) {
      d->put(d, m->dent, d->acc, dentropy, POC_DT_F64, (size_t)n);
      dent = m->dent;
    }
    if (m->saved_flags & POC_FWD_UNFUSED) {
      k->head_text_bwd(m->k, n, m->text, m->htgt, m->hmu, m->dlogp, dent, m->tdlog);
      k->gemm(m->k, 0, 0, n, H, V, m->tdlog, V, W(m->off_head), H, 0.f, m->dh, 1, H);
      if (m->base_grad)
        k->gemm(m->k, 1, 0, V, H, n, m->tdlog, V, m->hf, H, 1.f, G(m->off_head), 1, H);
    } else {
      mdl_head_fused_bwd(m, n, dent);
    }
    /* the final norm ran on gathered rows; its gradient scatters back (each row predicts
       one target, so no two targets share a row) */
    k->rmsnorm_bwd(m->k, n, m->xf, m->hrow, W(m->off_norm), m->rstdf, m->dh, m->dX);
    if (m->base_grad) k->rmsnorm_dw(m->k, n, m->xf, m->hrow, m->rstdf, m->dh, G(m->off_norm));
  }
  /* with a hook, each layer's bucket is handed over as soon as its gradient is final (the
     layers own disjoint ranges); the rest (embedding, final norm, head) at the end. The
     layer hook (NCCL's overlap) only queues work behind the layer on the device. */
  int layered = m->hook && m->n_buckets == m->L + 2;
  for (int l = m->L - 1; l >= 0; l--) {
    mdl_layer_bwd(m, l, T, &m->sv[l]);
    if (m->layer_hook && !d->failed) m->layer_hook(m->layer_hook_ctx, l);
    if (layered) {
      if (poc_dev_sync(d, err)) return -1;
      m->hook(m->hook_ctx, m, m->L - 1 - l);
    }
  }
  STAGE("the embedding backward", -1);
  if (m->base_grad) k->embed_bwd(m->k, T, m->tok, m->dX, G(m->off_embed));
  if (poc_dev_sync(d, err)) return -1;
  for (int i = layered ? m->L : 0; m->hook && i < m->n_buckets; i++) m->hook(m->hook_ctx, m, i);
  return 0;
}

/* Layer l's range of the trainable vector: its tensors ("model.layers.l." in the name,
 * PEFT's keys included) must fill [lo, hi) alone. */
static int mdl_layer_range(const poc_layout *lay, int l, size_t *lo, size_t *hi) {
  char pre[48];
  snprintf(pre, sizeof pre, "model.layers.%d.", l);
  size_t a = (size_t)-1, b = 0, n = 0;
  for (int t = 0; t < lay->n_tensors; t++) {
    const poc_tensor_info *ti = &lay->tensors[t];
    if (!strstr(ti->name, pre)) continue;
    if (ti->offset < a) a = ti->offset;
    if (ti->offset + ti->numel > b) b = ti->offset + ti->numel;
    n += ti->numel;
  }
  if (n == 0 || n != b - a) return -1;
  *lo = a;
  *hi = b;
  return 0;
}

int poc_model_grad_buckets(poc_model *m, const size_t (**b)[2]) {
  if (!m->trainable) return 0;
  if (!m->buckets) {
    size_t (*k)[2] = calloc((size_t)m->L + 2, sizeof *k);
    if (!k) return 0;
    /* layers L−1 … 0 (the order backward finishes them), then [end of the layers, n) and
       [0, start of the layers); one bucket [0, n) where the layers are not laid out so */
    size_t first = m->PT, last = 0, sum = 0;
    int ok = m->L > 0;
    for (int l = 0; l < m->L && ok; l++) {
      size_t *r = k[m->L - 1 - l];
      ok = !mdl_layer_range(m->tlay, l, &r[0], &r[1]);
      if (!ok) break;
      if (r[0] < first) first = r[0];
      if (r[1] > last) last = r[1];
      sum += r[1] - r[0];
    }
    if (ok && sum == last - first) {
      k[m->L][0] = last;
      k[m->L][1] = m->PT;
      k[m->L + 1][0] = 0;
      k[m->L + 1][1] = first;
      m->n_buckets = m->L + 2;
    } else {
      k[0][0] = 0;
      k[0][1] = m->PT;
      m->n_buckets = 1;
    }
    m->buckets = k;
  }
  *b = (const size_t(*)[2])m->buckets;
  return m->n_buckets;
}

void poc_model_grad_hook(poc_model *m, poc_grad_hook fn, void *ctx) {
  const size_t(*b)[2];
  if (fn && !poc_model_grad_buckets(m, &b)) fn = NULL;
  m->hook = fn;
  m->hook_ctx = ctx;
}

/* ---- generation: the KV-cache decode step ---------------------------------------------- */

typedef struct {
  int rows, n_ctx;              /* the most rows one step runs (the prompt); cache rows */
  poc_dptr arena;
  poc_dptr kc, vc;              /* act [L][n_ctx × kvd] */
  poc_dptr x, xn, qkv, q, att, lse, gu, a, ones, cosb, sinb, tok, pos, kbeg, last, logits;
  poc_dptr z;                   /* LoRA: Z [rows × r] (not kept: no backward) */
  double *logit_h, *prob;       /* host [V] */
} mdl_gen;

static int mdl_gen_alloc(poc_model *m, mdl_gen *g, int rows, int n_ctx, char *err) {
  poc_device *d = m->d;
  memset(g, 0, sizeof *g);
  g->rows = rows;
  g->n_ctx = n_ctx;
  size_t R = (size_t)rows, H = m->dm.H, F = m->dm.F, half = (size_t)m->dm.hd / 2;
  size_t cache = (size_t)m->L * n_ctx * m->kvd;
  /* one step (a decode step), every buffer live through it: no sharing */
  poc_mplan plan;
  poc_mplan_init(&plan, 256);
  mdl_carver cv = {.plan = &plan, .layer = -1};
  for (int pass = 0; pass < 2; pass++) {
#define CC(n) mdl_take(&cv, "gen", (size_t)(n) * m->sc, STEP)
#define AA(n) mdl_take(&cv, "gen", (size_t)(n) * m->sa, STEP)
#define II(n) mdl_take(&cv, "gen", (size_t)(n) * 4, STEP)
    g->kc = AA(cache);
    g->vc = AA(cache);
    g->x = CC(R * H);
    g->xn = AA(R * H);
    g->qkv = AA(R * m->qkvd);
    g->q = AA(R * m->qd);
    g->att = AA(R * m->qd);
    g->lse = CC(R * m->dm.nh);
    g->gu = AA(R * 2 * F);
    g->a = AA(R * F);
    g->ones = AA(R);
    g->cosb = CC((size_t)n_ctx * half);
    g->sinb = CC((size_t)n_ctx * half);
    g->tok = II(R);
    g->pos = II(R);
    g->kbeg = II(R);
    g->last = II(1);
    g->logits = CC(m->dm.V);
    g->z = m->lora_on ? AA(R * m->lc->r) : 0;
#undef CC
#undef AA
#undef II
    if (pass == 0) {
      char what[96];
      snprintf(what, sizeof what, "a %d-token KV cache", n_ctx);
      if (poc_mplan_solve(&plan, err)) {
        poc_mplan_free(&plan);
        return -1;
      }
      if (!(g->arena = d->alloc(d, plan.peak, what))) {
        poc_mplan_free(&plan);
        return poc_dev_sync(d, err);
      }
      cv = (mdl_carver){.plan = &plan, .base = g->arena, .layer = -1};
    }
  }
  poc_mplan_free(&plan);
  g->logit_h = malloc((size_t)m->dm.V * sizeof(double));
  g->prob = malloc((size_t)m->dm.V * sizeof(double));
  float *one = malloc(R * sizeof(float));
  int32_t *zero = calloc(R, sizeof(int32_t));
  if (!g->logit_h || !g->prob || !one || !zero) {
    free(one);
    free(zero);
    snprintf(err, POC_ERR_LEN, "generate: out of memory");
    return -1;
  }
  for (size_t i = 0; i < R; i++) one[i] = 1.f;
  d->put(d, g->ones, d->act, one, POC_DT_F32, R);
  d->put(d, g->kbeg, POC_DT_I32, zero, POC_DT_I32, R);
  free(one);
  free(zero);
  mdl_rope_tables(d, &m->lay->cfg, n_ctx, g->cosb, g->sinb);
  return poc_dev_sync(d, err);
}

static void mdl_gen_free(poc_model *m, mdl_gen *g) {
  if (g->arena) m->d->free(m->d, g->arena);
  free(g->logit_h);
  free(g->prob);
}

/* Runs n tokens at positions p0.. through the model, appending their keys and values to
 * the cache, and leaves the logits of the last one in g->logit_h. The layer math is the
 * pack forward's; only attention reads the cache: row i sits at key position p0 + i. */
static int mdl_gen_step(poc_model *m, mdl_gen *g, const int32_t *tok, int n, int p0, char *err) {
  poc_device *d = m->d;
  const poc_kernels *k = &d->k;
  const int H = m->dm.H, F = m->dm.F, V = m->dm.V, N = m->qkvd;
  int32_t pos[1024];
  STAGE("a decode step's embedding", -1);
  d->put(d, g->tok, POC_DT_I32, tok, POC_DT_I32, (size_t)n);
  for (int i0 = 0; i0 < n; i0 += 1024) {
    int c = n - i0 < 1024 ? n - i0 : 1024;
    for (int i = 0; i < c; i++) pos[i] = p0 + i0 + i;
    d->put(d, g->pos + (poc_dptr)i0 * 4, POC_DT_I32, pos, POC_DT_I32, (size_t)c);
  }
  k->embed_fwd(m->k, n, g->tok, W(m->off_embed), g->x);
  for (int l = 0; l < m->L; l++) {
    const poc_layer_offsets *o = &m->lo[l];
    poc_dptr Kc = ACT(g->kc, (size_t)l * g->n_ctx * m->kvd), Vc = ACT(g->vc, (size_t)l * g->n_ctx * m->kvd);
    poc_dptr Kn = ACT(Kc, (size_t)p0 * m->kvd), Vn = ACT(Vc, (size_t)p0 * m->kvd);
    STAGE("decode step", l);
    k->rmsnorm_fwd(m->k, n, g->x, 0, W(o->ln1), g->xn, 0);
    mdl_qkv_fwd(m, o, n, g->xn, g->qkv);
    mdl_lora_fwd(m, l, POC_LT_Q, n, g->xn, g->z, g->qkv, N, 0, 0, 0);
    mdl_lora_fwd(m, l, POC_LT_K, n, g->xn, g->z, ACT(g->qkv, m->qd), N, 0, 0, 0);
    mdl_lora_fwd(m, l, POC_LT_V, n, g->xn, g->z, ACT(g->qkv, m->qd + m->kvd), N, 0, 0, 0);
    k->qkv_bias_rope(m->k, n, g->pos, g->cosb, g->sinb, g->qkv, g->q, Kn, Vn, BIAS(o->bq),
                     BIAS(o->bk), BIAS(o->bv));
    k->attn_fwd(m->k, n, p0, g->q, Kc, Vc, g->kbeg, g->att, g->lse);
    mdl_linear(m, n, m->qd, H, g->att, o->wo, g->x, 1, 1.f);
    mdl_lora_fwd(m, l, POC_LT_O, n, g->att, g->z, g->x, H, 1, 0, 0);
    mdl_add_bias(m, n, H, o->bo, g->ones, g->x);
    k->rmsnorm_fwd(m->k, n, g->x, 0, W(o->ln2), g->xn, 0);
    mdl_gu_fwd(m, o, n, g->xn, g->gu);
    mdl_lora_fwd(m, l, POC_LT_GATE, n, g->xn, g->z, g->gu, 2 * F, 0, 0, 0);
    mdl_lora_fwd(m, l, POC_LT_UP, n, g->xn, g->z, ACT(g->gu, F), 2 * F, 0, 0, 0);
    k->swiglu_fwd(m->k, n, g->gu, g->a);
    mdl_linear(m, n, F, H, g->a, o->wd, g->x, 1, 1.f);
    mdl_lora_fwd(m, l, POC_LT_DOWN, n, g->a, g->z, g->x, H, 1, 0, 0);
  }
  int32_t last = n - 1;
  STAGE("a decode step's head", -1);
  d->put(d, g->last, POC_DT_I32, &last, POC_DT_I32, 1);
  k->rmsnorm_fwd(m->k, 1, g->x, g->last, W(m->off_norm), g->xn, 0);
  k->gemm(m->k, 0, 1, 1, V, H, g->xn, H, W(m->off_head), H, 0.f, g->logits, 1, V);
  d->get(d, g->logit_h, POC_DT_F64, g->logits, d->acc, (size_t)V);
  return poc_dev_sync(d, err);
}

/* Greedy: the first token of highest logit. Sampling: p ∝ exp((l − max)/T), then top-p. */
static int mdl_gen_pick(const poc_model *m, mdl_gen *g, double temperature, double top_p,
                        poc_rng *rng) {
  const double *l = g->logit_h;
  const int V = m->dm.V;
  int best = 0;
  for (int v = 1; v < V; v++)
    if (l[v] > l[best]) best = v;
  if (temperature <= 0) return best;
  double mx = l[best], s = 0;
  for (int v = 0; v < V; v++) s += g->prob[v] = exp((l[v] - mx) / temperature);
  for (int v = 0; v < V; v++) g->prob[v] /= s;
  return poc_sample_top_p(g->prob, V, top_p, rng);
}

int poc_model_generate(poc_model *m, const int32_t *prompt, int n_prompt, int max_new,
                       double temperature, double top_p, int eos, poc_rng *rng, int32_t *out,
                       char *err) {
  m->saved_n_tok = -1;
  if (m->cls) {
    snprintf(err, POC_ERR_LEN, "generate: a sequence-classification model has no language "
             "model head to generate with");
    return -1;
  }
  if (poc_generate_check(m->dm.V, prompt, n_prompt, max_new, temperature, rng, err)) return -1;
  if (max_new == 0) return 0;
  int n_ctx = n_prompt + max_new, win = m->lay->cfg.sliding_window;
  if (win > 0 && n_ctx > win) {
    snprintf(err, POC_ERR_LEN, "generate: %d prompt + %d new tokens exceed the sliding "
             "window (%d)", n_prompt, max_new, win);
    return -1;
  }
  mdl_gen g;
  if (mdl_gen_alloc(m, &g, n_prompt, n_ctx, err)) {
    mdl_gen_free(m, &g);
    return -1;
  }
  int k = 0;
  if (mdl_gen_step(m, &g, prompt, n_prompt, 0, err)) k = -1;
  while (k >= 0 && k < max_new) {
    int32_t tok = mdl_gen_pick(m, &g, temperature, top_p, rng);
    out[k++] = tok;
    if (tok == eos || k == max_new) break;
    if (mdl_gen_step(m, &g, &tok, 1, n_prompt + k - 1, err)) k = -1;
  }
  mdl_gen_free(m, &g);
  return k;
}

/* ---- optimizer and host copies ------------------------------------------------------------- */

static int mdl_need_train(const poc_model *m, const char *what, char *err) {
  if (m->trainable) return 0;
  snprintf(err, POC_ERR_LEN, "model: %s needs a trainable model", what);
  return -1;
}

int poc_model_decays(const poc_layout *lay, int i) { return lay->tensors[i].ndim == 2; }

/* The moments' range [lo, hi) of the trainable vector: the shard (clipped to PT: the last
 * rank's may hold padding, or nothing), else all of it. */
static void mdl_range(const poc_model *m, size_t *lo, size_t *hi) {
  *lo = m->sharded ? (m->sh_lo < m->PT ? m->sh_lo : m->PT) : 0;
  *hi = m->sharded ? (m->sh_hi < m->PT ? m->sh_hi : m->PT) : m->PT;
}

/* AdamW's moments, allocated and zeroed on first use: sh_hi − sh_lo elements each for a
 * shard, PT otherwise. */
static int mdl_moments(poc_model *m) {
  if (m->mom) return 0;
  poc_device *d = m->d;
  size_t n = m->sharded ? m->sh_hi - m->sh_lo : m->PT;
  m->mom = d->alloc(d, n * m->sc + 1, "AdamW's first moments");
  m->var = d->alloc(d, n * m->sc + 1, "AdamW's second moments");
  if (!m->mom || !m->var) return -1;
  d->zero(d, m->mom, n * m->sc);
  d->zero(d, m->var, n * m->sc);
  return d->failed ? -1 : 0;
}

/* *p (n elements of el bytes) moved into a buffer of n_new, the tail zero */
static int mdl_grow(poc_model *m, poc_dptr *p, size_t n, size_t n_new, size_t el,
                    const char *what) {
  poc_device *d = m->d;
  poc_dptr b = d->alloc(d, n_new * el, what);
  if (!b) return -1;
  d->copy(d, b, *p, n * el);
  d->zero(d, b + (poc_dptr)(n * el), (n_new - n) * el);
  d->free(d, *p);
  *p = b;
  return d->failed ? -1 : 0;
}

int poc_model_shard(poc_model *m, int rank, int ranks, char *err) {
  if (mdl_need_train(m, "sharding the optimizer state", err)) return -1;
  if (ranks < 1 || rank < 0 || rank >= ranks || m->sharded || m->mom) {
    snprintf(err, POC_ERR_LEN, "model: shard %d of %d: %s", rank, ranks,
             m->sharded || m->mom ? "the optimizer state is already in use or sharded"
                                  : "no such shard");
    return -1;
  }
  STAGE("sharding the optimizer state", -1);
  size_t c = (m->PT + (size_t)ranks - 1) / (size_t)ranks, pad = c * (size_t)ranks;
  if (pad > m->PT) {
    poc_dptr w = m->tw, wc = m->twc;
    int shared = wc == w;
    if (mdl_grow(m, &m->grad, m->PT, pad, m->sc, "the gradients (padded to whole shards)") ||
        mdl_grow(m, &w, m->PT, pad, m->sc, "the trainable weights (padded to whole shards)") ||
        (!shared && mdl_grow(m, &wc, m->PT, pad, m->sa, "the trainable weights' compute copy")))
    {
      poc_dev_sync(m->d, err);
      return -1;
    }
    if (shared) wc = w;
    if (m->alay) {
      m->aw = w;
      m->awc = wc;
    } else {
      m->w = w;
      m->wc = wc;
    }
    m->tw = w;
    m->twc = wc;
  }
  m->sharded = 1;
  m->sh_lo = (size_t)rank * c;
  m->sh_hi = m->sh_lo + c;
  m->sh_pad = pad;
  return poc_dev_sync(m->d, err);
}

void poc_model_shard_range(const poc_model *m, size_t *lo, size_t *hi, size_t *count) {
  mdl_range(m, lo, hi);
  if (count) *count = m->sharded ? m->sh_hi - m->sh_lo : m->PT;
}

int poc_model_grad_reduce_scatter(poc_model *m, poc_shard_fn f, char *err) {
  if (!m->sharded) {
    snprintf(err, POC_ERR_LEN, "model: a reduce-scatter of the gradient needs a shard");
    return -1;
  }
  if (poc_dev_sync(m->d, err)) return -1;
  return f(m->d, m->grad, ACC(m->grad, m->sh_lo), m->d->acc, m->sh_hi - m->sh_lo, err);
}

int poc_model_weights_all_gather(poc_model *m, poc_shard_fn f, char *err) {
  if (!m->sharded) {
    snprintf(err, POC_ERR_LEN, "model: an all-gather of the weights needs a shard");
    return -1;
  }
  if (poc_dev_sync(m->d, err) ||
      f(m->d, ACC(m->tw, m->sh_lo), m->tw, m->d->acc, m->sh_hi - m->sh_lo, err))
    return -1;
  STAGE("refreshing the compute weights", -1);
  if (m->twc != m->tw) m->d->k.cast(m->k, m->sh_pad, m->tw, m->twc);
  return poc_dev_sync(m->d, err);
}

int poc_model_zero_grad(poc_model *m, char *err) {
  if (mdl_need_train(m, "zero_grad", err)) return -1;
  STAGE("clearing the gradients", -1);
  m->d->zero(m->d, m->grad, m->PT * m->sc);
  return poc_dev_sync(m->d, err);
}

int poc_model_grad_sumsq(poc_model *m, double *sumsq, char *err) {
  if (mdl_need_train(m, "grad_norm", err)) return -1;
  STAGE("the gradient norm", -1);
  size_t lo, hi;
  mdl_range(m, &lo, &hi);
  double s = m->d->k.sumsq(m->k, hi - lo, ACC(m->grad, lo));
  if (poc_dev_sync(m->d, err)) return -1;
  *sumsq = s;
  return 0;
}

int poc_model_weights_sumsq(poc_model *m, double *sumsq, char *err) {
  if (mdl_need_train(m, "weights_sumsq", err)) return -1;
  double s = m->d->k.sumsq(m->k, m->PT, m->tw);
  if (poc_dev_sync(m->d, err)) return -1;
  *sumsq = s;
  return 0;
}

int poc_model_grad_norm(poc_model *m, double *norm, char *err) {
  if (poc_model_grad_sumsq(m, norm, err)) return -1;
  *norm = sqrt(*norm);
  return 0;
}

/* One kernel launch per run of consecutive tensors that share a weight-decay setting
 * (matrices decay; norm weights and biases, whose natural values are not 0, do not). A
 * LoRA model's trainable vector is its adapters, all matrices. */
int poc_model_adamw(poc_model *m, const poc_adamw *h, char *err) {
  if (mdl_need_train(m, "adamw_step", err)) return -1;
  if (h->step < 1) {
    snprintf(err, POC_ERR_LEN, "model: AdamW step numbers start at 1 (got %ld)", h->step);
    return -1;
  }
  STAGE("AdamW", -1);
  if (mdl_moments(m)) {
    poc_dev_sync(m->d, err);
    return -1;
  }
  const poc_layout *lay = m->tlay;
  /* a shard updates its part of each run: [a, b) ∩ [lo, hi); moments index from lo */
  size_t lo, hi;
  mdl_range(m, &lo, &hi);
  float lr = (float)h->lr, b1 = (float)h->beta1, b2 = (float)h->beta2, eps = (float)h->eps,
        gs = (float)h->grad_scale;
  float bc1 = (float)(1 - pow(h->beta1, (double)h->step));
  float bc2 = (float)(1 - pow(h->beta2, (double)h->step));
  for (int t = 0; t < lay->n_tensors;) {
    int dec = poc_model_decays(lay, t), e = t;
    while (e < lay->n_tensors && poc_model_decays(lay, e) == dec) e++;
    size_t a = lay->tensors[t].offset;
    size_t b = lay->tensors[e - 1].offset + lay->tensors[e - 1].numel;
    float wd = dec ? (float)h->weight_decay : 0.f;
    t = e;
    if (a < lo) a = lo;
    if (b > hi) b = hi;
    if (a >= b) continue;
    m->d->k.adamw(m->k, b - a, ACC(m->tw, a), ACC(m->grad, a), ACC(m->mom, a - lo),
                  ACC(m->var, a - lo), ACT(m->twc, a), lr, b1, b2, eps, wd, bc1, bc2, gs);
  }
  return poc_dev_sync(m->d, err);
}

int poc_model_get(poc_model *m, poc_part part, void *dst, poc_dtype dt, char *err) {
  poc_device *d = m->d;
  if (part != POC_PART_WEIGHTS && part != POC_PART_ADAPTER &&
      mdl_need_train(m, "reading gradients or AdamW state", err))
    return -1;
  if (part == POC_PART_ADAPTER && !m->alay) {
    snprintf(err, POC_ERR_LEN, "model: no LoRA adapters to read");
    return -1;
  }
  STAGE("copying the model to the host", -1);
  size_t lo, hi;
  mdl_range(m, &lo, &hi);
  if ((part == POC_PART_MOM || part == POC_PART_VAR) && mdl_moments(m)) {
    poc_dev_sync(d, err);
    return -1;
  }
  switch (part) {
  case POC_PART_WEIGHTS:
    if (m->w)
      d->get(d, dst, dt, m->w, d->acc, m->P);
    else
      d->get(d, dst, dt, m->wc, d->act, m->P);
    break;
  case POC_PART_ADAPTER:
    if (m->aw)
      d->get(d, dst, dt, m->aw, d->acc, m->PA);
    else
      d->get(d, dst, dt, m->awc, d->act, m->PA);
    break;
  case POC_PART_GRAD: d->get(d, dst, dt, m->grad, d->acc, m->PT); break;
  case POC_PART_MOM: d->get(d, dst, dt, m->mom, d->acc, hi - lo); break;
  case POC_PART_VAR: d->get(d, dst, dt, m->var, d->acc, hi - lo); break;
  }
  return poc_dev_sync(d, err);
}

int poc_model_set(poc_model *m, poc_part part, const void *src, poc_dtype st, char *err) {
  poc_device *d = m->d;
  if (part != POC_PART_WEIGHTS && part != POC_PART_ADAPTER &&
      mdl_need_train(m, "writing gradients or AdamW state", err))
    return -1;
  if ((part == POC_PART_ADAPTER && (!m->alay || m->view)) || (part == POC_PART_WEIGHTS && m->view)) {
    snprintf(err, POC_ERR_LEN, "model: %s", m->view ? "a view's weights are its source's"
                                                      : "no LoRA adapters to write");
    return -1;
  }
  STAGE("copying the model to the device", -1);
  size_t lo, hi;
  mdl_range(m, &lo, &hi);
  if ((part == POC_PART_MOM || part == POC_PART_VAR) && mdl_moments(m)) {
    poc_dev_sync(d, err);
    return -1;
  }
  switch (part) {
  case POC_PART_WEIGHTS: mdl_upload_weights(m, src, st); break;
  case POC_PART_ADAPTER:
    d->put(d, m->aw, d->acc, src, st, m->PA);
    if (m->awc != m->aw) d->k.cast(m->k, m->PA, m->aw, m->awc);
    break;
  case POC_PART_GRAD: d->put(d, m->grad, d->acc, src, st, m->PT); break;
  case POC_PART_MOM: d->put(d, m->mom, d->acc, src, st, hi - lo); break;
  case POC_PART_VAR: d->put(d, m->var, d->acc, src, st, hi - lo); break;
  }
  return poc_dev_sync(d, err);
}

void poc_model_set_layer_hook(poc_model *m, void (*fn)(void *ctx, int layer), void *ctx) {
  m->layer_hook = fn;
  m->layer_hook_ctx = ctx;
}

uint64_t poc_model_part_addr(poc_model *m, poc_part part) {
  return part == POC_PART_WEIGHTS ? m->w : part == POC_PART_ADAPTER ? m->aw
       : part == POC_PART_GRAD    ? m->grad : part == POC_PART_MOM ? m->mom : m->var;
}

int poc_model_refresh_compute(poc_model *m, char *err) {
  poc_device *d = m->d;
  if (m->view) return 0;
  if (m->w && m->wc != m->w) d->k.cast(m->k, m->P, m->w, m->wc);
  if (m->aw && m->awc != m->aw) d->k.cast(m->k, m->PA, m->aw, m->awc);
  return poc_dev_sync(d, err);
}

float *poc_model_host_f32(poc_model *m, poc_part part) {
  if (!m->d->host_memory || m->d->acc != POC_DT_F32 || m->view) return NULL;
  if ((part == POC_PART_MOM || part == POC_PART_VAR) && m->trainable && mdl_moments(m))
    return NULL;
  /* gradients only where act and acc are one type: a bf16 device sums the micro-batches'
     gradients in place in fp32, as CUDA does, rather than in a host double accumulator
     that would cost 8 bytes per parameter, more than its bf16 copies save */
  if (part == POC_PART_GRAD && !m->d->shared_act) return NULL;
  return (float *)(uintptr_t)poc_model_part_addr(m, part);
}
