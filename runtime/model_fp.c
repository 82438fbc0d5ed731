/* model_fp.c — the Llama-family transformer on the CPU: packed forward and backward.
 *
 * A pack holds many sequences without padding; row t belongs to one sequence, sits at
 * position pos[t] inside it and attends to keys [kbeg[t], t]. Per layer:
 *   xn  = rmsnorm(x)·w_ln1
 *   q, k, v = xn·W_{q,k,v}ᵀ (+ b),  q, k ← rope(q, k)
 *   att = softmax(q·kᵀ/√hd, causal within the sequence)·v  (query head h uses kv head
 *         h / (nh/nkv))
 *   h1  = x + att·W_oᵀ
 *   x'  = h1 + (silu(rmsnorm(h1)·w_ln2·W_gᵀ) ⊙ (rmsnorm(h1)·w_ln2·W_uᵀ))·W_dᵀ
 * then the final rmsnorm, only on the rows that predict a target, and the loss head.
 *
 * Determinism: every parallel loop owns its outputs (rows, heads, or columns of a
 * reduction), so no sum depends on thread scheduling; GEMMs are OpenBLAS's.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "model_internal.h"

typedef struct FP(poc_model) model;

/* ---- concerns ------------------------------------------------------------------------ */

void FP(mdl_linear)(int T, int in, int out, const real *X, const real *W, const real *b,
                    real *Y) {
  GEMM(CblasRowMajor, CblasNoTrans, CblasTrans, T, out, in, 1, X, in, W, in, 0, Y, out);
  if (b) {
#pragma omp parallel for schedule(static) if ((size_t)T * out >= MDL_PAR_MIN)
    for (int t = 0; t < T; t++)
      for (int j = 0; j < out; j++) Y[(size_t)t * out + j] += b[j];
  }
}

/* Weight gradient and input gradient of Y = X·Wᵀ:
 *   dW += dYᵀ·X,   dX (= or +=) dY·W. */
static void mdl_linear_bwd(int T, int in, int out, const real *X, const real *W,
                           const real *dY, real *dW, real *dX, int accumulate_dx) {
  GEMM(CblasRowMajor, CblasTrans, CblasNoTrans, out, in, T, 1, dY, out, X, in, 1, dW, in);
  GEMM(CblasRowMajor, CblasNoTrans, CblasNoTrans, T, in, out, 1, dY, out, W, in,
       accumulate_dx ? 1 : 0, dX, in);
}

/* db_j += Σ_t dY[t][j]; parallel over columns so each sum runs in one fixed order. */
static void mdl_colsum_acc(int T, int n, const real *dY, real *db) {
#pragma omp parallel for schedule(static) if ((size_t)T * n >= MDL_PAR_MIN)
  for (int j = 0; j < n; j++) {
    real s = 0;
    for (int t = 0; t < T; t++) s += dY[(size_t)t * n + j];
    db[j] += s;
  }
}

void FP(mdl_rmsnorm)(int T, int H, const real *x, const real *w, real eps, real *y,
                     real *rstd) {
#pragma omp parallel for schedule(static) if ((size_t)T * H >= MDL_PAR_MIN)
  for (int t = 0; t < T; t++) {
    const real *xr = x + (size_t)t * H;
    real *yr = y + (size_t)t * H;
    real ss = 0;
    for (int j = 0; j < H; j++) ss += xr[j] * xr[j];
    real r = 1 / R_SQRT(ss / H + eps);
    for (int j = 0; j < H; j++) yr[j] = w[j] * (xr[j] * r);
    if (rstd) rstd[t] = r;
  }
}

/* y = w ⊙ x·r with r = (mean(x²) + eps)^{-1/2}, so ∂r/∂x_k = −r³x_k/H:
 *   dx_k += r·(w_k dy_k − x_k·r²/H · Σ_j w_j dy_j x_j),   dw_k += Σ_t dy_k x_k r. */
static void mdl_rmsnorm_bwd(int T, int H, const real *x, const real *w, const real *rstd,
                            const real *dy, real *dx, real *dw) {
#pragma omp parallel for schedule(static) if ((size_t)T * H >= MDL_PAR_MIN)
  for (int t = 0; t < T; t++) {
    const real *xr = x + (size_t)t * H, *dyr = dy + (size_t)t * H;
    real *dxr = dx + (size_t)t * H;
    real r = rstd[t], dot = 0;
    for (int j = 0; j < H; j++) dot += w[j] * dyr[j] * xr[j];
    real c = dot * r * r / H;
    for (int j = 0; j < H; j++) dxr[j] += r * (w[j] * dyr[j] - xr[j] * c);
  }
#pragma omp parallel for schedule(static) if ((size_t)T * H >= MDL_PAR_MIN)
  for (int j = 0; j < H; j++) {
    real s = 0;
    for (int t = 0; t < T; t++) s += dy[(size_t)t * H + j] * x[(size_t)t * H + j] * rstd[t];
    dw[j] += s;
  }
}

/* RoPE, HF's rotate_half convention: within each head the pair (x_i, x_{i+hd/2}) is
 * rotated by θ = pos·inv_freq_i:  (x_i, x_{i+hd/2}) ← (x_i cos θ − x_{i+hd/2} sin θ,
 * x_{i+hd/2} cos θ + x_i sin θ). The backward is the rotation by −θ (dir = −1). */
static void mdl_rope_dir(int T, int nheads, int hd, real *x, const real *cosb,
                         const real *sinb, real dir) {
  int half = hd / 2;
#pragma omp parallel for schedule(static) if ((size_t)T * nheads * hd >= MDL_PAR_MIN)
  for (int t = 0; t < T; t++)
    for (int h = 0; h < nheads; h++) {
      real *xh = x + ((size_t)t * nheads + h) * hd;
      const real *c = cosb + (size_t)t * half, *s = sinb + (size_t)t * half;
      for (int i = 0; i < half; i++) {
        real x1 = xh[i], x2 = xh[i + half], sn = dir * s[i];
        xh[i] = x1 * c[i] - x2 * sn;
        xh[i + half] = x2 * c[i] + x1 * sn;
      }
    }
}

void FP(mdl_rope)(int T, int nheads, int hd, real *x, const real *cosb, const real *sinb) {
  mdl_rope_dir(T, nheads, hd, x, cosb, sinb, 1);
}

void FP(mdl_rope_tables)(const model *m, int T, const int32_t *pos, real *cosb, real *sinb) {
  int half = m->hd / 2;
#pragma omp parallel for schedule(static) if ((size_t)T * half >= MDL_PAR_MIN)
  for (int t = 0; t < T; t++)
    for (int i = 0; i < half; i++) {
      double a = (double)pos[t] * m->inv_freq[i];
      cosb[(size_t)t * half + i] = (real)cos(a);
      sinb[(size_t)t * half + i] = (real)sin(a);
    }
}


/* Causal grouped-query attention with an online softmax, one (row, head) per task:
 *   s_j = q·k_j/√hd for j in [kbeg, kend),  out = Σ_j e^{s_j − lse} v_j,
 *   lse = log Σ_j e^{s_j} (kept for backward). The running max m rescales the partial
 * sum and output whenever it grows, so no score row is stored. */
void FP(mdl_attention)(int T, int nh, int nkv, int hd, const real *q, const real *k,
                       const real *v, const int32_t *kbeg, const int32_t *kend, real *out,
                       real *lse) {
  const int grp = nh / nkv, qd = nh * hd, kvd = nkv * hd;
  const real scale = 1 / R_SQRT((real)hd);
#pragma omp parallel for collapse(2) schedule(static) if ((size_t)T * nh * hd * 8 >= MDL_PAR_MIN)
  for (int t = 0; t < T; t++)
    for (int h = 0; h < nh; h++) {
      const real *qi = q + (size_t)t * qd + (size_t)h * hd;
      real *o = out + (size_t)t * qd + (size_t)h * hd;
      size_t koff = (size_t)(h / grp) * hd;
      for (int d = 0; d < hd; d++) o[d] = 0;
      real mx = 0, s = 0;
      for (int j = kbeg[t]; j < kend[t]; j++) {
        const real *kj = k + (size_t)j * kvd + koff, *vj = v + (size_t)j * kvd + koff;
        real sc = 0;
        for (int d = 0; d < hd; d++) sc += qi[d] * kj[d];
        sc *= scale;
        if (j == kbeg[t])
          mx = sc;
        else if (sc > mx) {
          real r = R_EXP(mx - sc);
          s *= r;
          for (int d = 0; d < hd; d++) o[d] *= r;
          mx = sc;
        }
        real e = R_EXP(sc - mx);
        s += e;
        for (int d = 0; d < hd; d++) o[d] += e * vj[d];
      }
      for (int d = 0; d < hd; d++) o[d] /= s;
      lse[(size_t)t * nh + h] = mx + R_LOG(s);
    }
}

/* Attention backward, recomputing p_ij = e^{q_i·k_j/√hd − lse_i} instead of storing it:
 *   D_i = dO_i·O_i,  dS_ij = p_ij (dO_i·v_j − D_i),
 *   dq_i = Σ_j dS_ij k_j/√hd,  dk_j = Σ_i dS_ij q_i/√hd,  dv_j = Σ_i p_ij dO_i.
 * Two passes keep every output owned by one task: (query row, head) for dq, then
 * (key row, kv head) for dk and dv, summing over the group's query heads and the rows
 * i >= j of the same sequence (those with kbeg[i] == kbeg[j]). */
static void mdl_attention_bwd(const model *m, int T, const real *q, const real *k,
                              const real *v, const real *o, const real *lse, const real *dO,
                              real *dq, real *dk, real *dv, real *D) {
  const int nh = m->nh, nkv = m->nkv, hd = m->hd, grp = nh / nkv, qd = m->qd, kvd = m->kvd;
  const int32_t *kbeg = m->kbeg, *kend = m->kend;
  const real scale = 1 / R_SQRT((real)hd);
#pragma omp parallel for collapse(2) schedule(static) if ((size_t)T * qd >= MDL_PAR_MIN)
  for (int t = 0; t < T; t++)
    for (int h = 0; h < nh; h++) {
      const real *a = dO + (size_t)t * qd + (size_t)h * hd, *b = o + (size_t)t * qd + (size_t)h * hd;
      real s = 0;
      for (int d = 0; d < hd; d++) s += a[d] * b[d];
      D[(size_t)t * nh + h] = s;
    }
#pragma omp parallel for collapse(2) schedule(static) if ((size_t)T * qd * 8 >= MDL_PAR_MIN)
  for (int i = 0; i < T; i++)
    for (int h = 0; h < nh; h++) {
      size_t qo = (size_t)i * qd + (size_t)h * hd, koff = (size_t)(h / grp) * hd;
      const real *qi = q + qo, *dOi = dO + qo;
      real *dqi = dq + qo, li = lse[(size_t)i * nh + h], Di = D[(size_t)i * nh + h];
      for (int d = 0; d < hd; d++) dqi[d] = 0;
      for (int j = kbeg[i]; j < kend[i]; j++) {
        const real *kj = k + (size_t)j * kvd + koff, *vj = v + (size_t)j * kvd + koff;
        real sc = 0, dp = 0;
        for (int d = 0; d < hd; d++) {
          sc += qi[d] * kj[d];
          dp += dOi[d] * vj[d];
        }
        real ds = R_EXP(sc * scale - li) * (dp - Di) * scale;
        for (int d = 0; d < hd; d++) dqi[d] += ds * kj[d];
      }
    }
#pragma omp parallel for collapse(2) schedule(static) if ((size_t)T * qd * 8 >= MDL_PAR_MIN)
  for (int j = 0; j < T; j++)
    for (int g = 0; g < nkv; g++) {
      size_t ko = (size_t)j * kvd + (size_t)g * hd;
      const real *kj = k + ko, *vj = v + ko;
      real *dkj = dk + ko, *dvj = dv + ko;
      for (int d = 0; d < hd; d++) dkj[d] = dvj[d] = 0;
      for (int h = g * grp; h < (g + 1) * grp; h++)
        for (int i = j; i < T && kbeg[i] == kbeg[j]; i++) {
          size_t qo = (size_t)i * qd + (size_t)h * hd;
          const real *qi = q + qo, *dOi = dO + qo;
          real sc = 0, dp = 0;
          for (int d = 0; d < hd; d++) {
            sc += qi[d] * kj[d];
            dp += dOi[d] * vj[d];
          }
          real p = R_EXP(sc * scale - lse[(size_t)i * nh + h]);
          real ds = p * (dp - D[(size_t)i * nh + h]) * scale;
          for (int d = 0; d < hd; d++) {
            dvj[d] += p * dOi[d];
            dkj[d] += ds * qi[d];
          }
        }
    }
}

/* SwiGLU: a = silu(g)·u with silu(g) = g·σ(g). */
void FP(mdl_swiglu)(size_t n, const real *g, const real *u, real *a) {
#pragma omp parallel for schedule(static) if (n >= MDL_PAR_MIN)
  for (size_t i = 0; i < n; i++) a[i] = g[i] / (1 + R_EXP(-g[i])) * u[i];
}

/* silu'(g) = σ(g)·(1 + g·(1 − σ(g))):  dg = da·u·silu'(g),  du = da·silu(g). */
static void mdl_swiglu_bwd(size_t n, const real *g, const real *u, const real *da, real *dg,
                           real *du) {
#pragma omp parallel for schedule(static) if (n >= MDL_PAR_MIN)
  for (size_t i = 0; i < n; i++) {
    real sg = 1 / (1 + R_EXP(-g[i]));
    dg[i] = da[i] * u[i] * sg * (1 + g[i] * (1 - sg));
    du[i] = da[i] * g[i] * sg;
  }
}

/* ---- the instance ---------------------------------------------------------------- */

/* Hands out 64-byte aligned pieces of the arena; with base == NULL it only counts. */
typedef struct { char *base; size_t used; } mdl_carver;

static void *mdl_take(mdl_carver *c, size_t bytes) {
  size_t at = (c->used + 63) & ~(size_t)63;
  c->used = at + bytes;
  return c->base ? c->base + at : NULL;
}

#define TAKE_R(n) ((real *)mdl_take(cv, (size_t)(n) * sizeof(real)))
#define TAKE_I(n) ((int32_t *)mdl_take(cv, (size_t)(n) * sizeof(int32_t)))

static void mdl_carve(model *m, mdl_carver *cv) {
  size_t T = (size_t)m->max_tokens, H = m->H, F = m->F;
  int train = m->grad != NULL;
  for (int s = 0; s < m->n_slots; s++) {
    FP(mdl_saved) *S = &m->sv[s];
    S->x = TAKE_R(T * H);
    S->rstd1 = TAKE_R(T);
    S->q = TAKE_R(T * m->qd);
    S->k = TAKE_R(T * m->kvd);
    S->v = TAKE_R(T * m->kvd);
    S->att = TAKE_R(T * m->qd);
    S->lse = TAKE_R(T * m->nh);
    S->h1 = TAKE_R(T * H);
    S->rstd2 = TAKE_R(T);
    S->g = TAKE_R(T * F);
    S->u = TAKE_R(T * F);
  }
  m->xf = TAKE_R(T * H);
  m->pos = TAKE_I(T);
  m->kbeg = TAKE_I(T);
  m->kend = TAKE_I(T);
  m->cosb = TAKE_R(T * (m->hd / 2));
  m->sinb = TAKE_R(T * (m->hd / 2));
  m->hrow = TAKE_I(T);
  m->htgt = TAKE_I(T);
  m->hf = TAKE_R(T * H);
  m->rstdf = TAKE_R(T);
  m->hlse = TAKE_R(T);
  m->hmu = TAKE_R(T);
  m->hscratch = TAKE_R(FP(head_scratch_len)(m->max_tokens, m->V));
  m->s_xn = TAKE_R(T * H);
  m->s_a = TAKE_R(T * H);
  m->s_b = TAKE_R(T * H);
  m->s_i0 = TAKE_R(T * F);
  if (train) {
    m->s_i1 = TAKE_R(T * F);
    m->s_i2 = TAKE_R(T * F);
    m->s_q = TAKE_R(T * m->qd);
    m->s_k = TAKE_R(T * m->kvd);
    m->s_v = TAKE_R(T * m->kvd);
    m->s_att = TAKE_R(T * m->qd);
    m->s_D = TAKE_R(T * m->nh);
    m->s_dx = TAKE_R(T * H);
  }
}

model *FP(poc_model_new)(const poc_layout *lay, real *w, real *grad, int max_tokens) {
  const poc_config *c = &lay->cfg;
  if (max_tokens <= 0 || !w) return NULL;
  model *m = calloc(1, sizeof *m);
  if (!m) return NULL;
  m->lay = lay;
  m->w = w;
  m->grad = grad;
  m->max_tokens = max_tokens;
  m->H = c->hidden_size;
  m->F = c->intermediate_size;
  m->V = c->vocab_size;
  m->L = c->num_hidden_layers;
  m->nh = c->num_attention_heads;
  m->nkv = c->num_key_value_heads;
  m->hd = c->head_dim;
  m->qd = m->nh * m->hd;
  m->kvd = m->nkv * m->hd;
  m->eps = (real)c->rms_norm_eps;
  m->saved_n_tok = -1;
  m->n_slots = grad ? m->L : 1;
  m->inv_freq = malloc((size_t)(m->hd / 2 + 1) * sizeof(double));
  m->lo = calloc((size_t)m->L, sizeof *m->lo);
  m->sv = calloc((size_t)m->n_slots, sizeof *m->sv);
  if (!m->inv_freq || !m->lo || !m->sv) goto fail;
  poc_rope_inv_freq(c, m->inv_freq);

  poc_model_offsets mo;
  char oerr[POC_ERR_LEN];
  if (poc_layout_offsets(lay, &mo, oerr)) goto fail;
  m->off_embed = mo.embed;
  m->off_norm = mo.norm;
  m->off_head = mo.head;
  memcpy(m->lo, mo.layers, (size_t)m->L * sizeof *m->lo);
  free(mo.layers);

  mdl_carver cv = {NULL, 0};
  mdl_carve(m, &cv);
  m->arena = malloc(cv.used + 64);
  if (!m->arena) goto fail;
  cv.base = (char *)(((uintptr_t)m->arena + 63) & ~(uintptr_t)63);
  cv.used = 0;
  mdl_carve(m, &cv);
  return m;
fail:
  FP(poc_model_free)(m);
  return NULL;
}

void FP(poc_model_free)(model *m) {
  if (!m) return;
  free(m->arena);
  free(m->logits);
  free(m->sv);
  free(m->lo);
  free(m->inv_freq);
  free(m);
}

#define WP(off) (m->w + (off))
#define GP(off) (m->grad + (off))
#define BIAS(off) ((off) == MDL_NO_BIAS ? NULL : m->w + (off))

/* Validates the pack and fills the per-row tables (positions, key ranges, RoPE angles,
 * head rows and targets); returns the number of targets, or -1. */
static int mdl_prepare(model *m, const poc_pack *p, char *err) {
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
  int win = m->lay->cfg.sliding_window, n = 0;
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
    for (int t = a; t < b; t++) {
      if (p->tokens[t] < 0 || p->tokens[t] >= m->V) {
        snprintf(err, POC_ERR_LEN, "model: token %d at pack position %d is outside the "
                 "vocabulary (%d)", p->tokens[t], t, m->V);
        return -1;
      }
      m->pos[t] = t - a;
      m->kbeg[t] = a;
      m->kend[t] = t + 1;
      if (t >= ts) {
        m->hrow[n] = t - 1;
        m->htgt[n] = p->tokens[t];
        n++;
      }
    }
  }
  FP(mdl_rope_tables)(m, p->n_tok, m->pos, m->cosb, m->sinb);
  return n;
}

/* One decoder layer on T rows, x → out (out may be x). */
static void mdl_layer_fwd(model *m, int l, int T, FP(mdl_saved) *S, real *out) {
  const FP(mdl_layer_off) *o = &m->lo[l];
  const int H = m->H, F = m->F;
  FP(mdl_rmsnorm)(T, H, S->x, WP(o->ln1), m->eps, m->s_xn, S->rstd1);
  FP(mdl_linear)(T, H, m->qd, m->s_xn, WP(o->wq), BIAS(o->bq), S->q);
  FP(mdl_linear)(T, H, m->kvd, m->s_xn, WP(o->wk), BIAS(o->bk), S->k);
  FP(mdl_linear)(T, H, m->kvd, m->s_xn, WP(o->wv), BIAS(o->bv), S->v);
  FP(mdl_rope)(T, m->nh, m->hd, S->q, m->cosb, m->sinb);
  FP(mdl_rope)(T, m->nkv, m->hd, S->k, m->cosb, m->sinb);
  FP(mdl_attention)(T, m->nh, m->nkv, m->hd, S->q, S->k, S->v, m->kbeg, m->kend, S->att,
                    S->lse);
  FP(mdl_linear)(T, m->qd, H, S->att, WP(o->wo), BIAS(o->bo), m->s_a);
  size_t TH = (size_t)T * H;
#pragma omp parallel for schedule(static) if (TH >= MDL_PAR_MIN)
  for (size_t i = 0; i < TH; i++) S->h1[i] = S->x[i] + m->s_a[i];
  FP(mdl_rmsnorm)(T, H, S->h1, WP(o->ln2), m->eps, m->s_xn, S->rstd2);
  FP(mdl_linear)(T, H, F, m->s_xn, WP(o->wg), NULL, S->g);
  FP(mdl_linear)(T, H, F, m->s_xn, WP(o->wu), NULL, S->u);
  FP(mdl_swiglu)((size_t)T * F, S->g, S->u, m->s_i0);
  FP(mdl_linear)(T, F, H, m->s_i0, WP(o->wd), NULL, m->s_a);
#pragma omp parallel for schedule(static) if (TH >= MDL_PAR_MIN)
  for (size_t i = 0; i < TH; i++) out[i] = S->h1[i] + m->s_a[i];
}

int FP(poc_model_forward)(model *m, const poc_pack *p, int flags, real *logp, real *entropy,
                          char *err) {
  m->saved_n_tok = -1;
  if ((flags & POC_FWD_SAVE) && !m->grad) {
    snprintf(err, POC_ERR_LEN, "model: a forward for backward needs a model with gradients");
    return -1;
  }
  if ((flags & POC_FWD_ENTROPY) && !entropy) {
    snprintf(err, POC_ERR_LEN, "model: entropy asked for without an output array");
    return -1;
  }
  int n = mdl_prepare(m, p, err);
  if (n < 0) return -1;
  const int T = p->n_tok, H = m->H, save = (flags & POC_FWD_SAVE) != 0;
  if (T == 0) return 0;
  if ((flags & POC_FWD_UNFUSED) && !m->logits) {
    m->logits = malloc((size_t)m->max_tokens * m->V * sizeof(real));
    if (!m->logits) {
      snprintf(err, POC_ERR_LEN, "model: out of memory for %d×%d textbook logits",
               m->max_tokens, m->V);
      return -1;
    }
  }

  /* embedding lookup */
  real *x0 = m->sv[0].x;
  const real *E = WP(m->off_embed);
#pragma omp parallel for schedule(static) if ((size_t)T * H >= MDL_PAR_MIN)
  for (int t = 0; t < T; t++)
    memcpy(x0 + (size_t)t * H, E + (size_t)p->tokens[t] * H, (size_t)H * sizeof(real));

  for (int l = 0; l < m->L; l++) {
    FP(mdl_saved) *S = &m->sv[save ? l : 0];
    real *out = l + 1 == m->L ? m->xf : save ? m->sv[l + 1].x : S->x;
    mdl_layer_fwd(m, l, T, S, out);
  }

  /* final norm on the rows that predict a target, then the head */
  if (n > 0) {
#pragma omp parallel for schedule(static) if ((size_t)n * H >= MDL_PAR_MIN)
    for (int i = 0; i < n; i++)
      memcpy(m->s_b + (size_t)i * H, m->xf + (size_t)m->hrow[i] * H, (size_t)H * sizeof(real));
    FP(mdl_rmsnorm)(n, H, m->s_b, WP(m->off_norm), m->eps, m->hf, m->rstdf);
    real *ent = (flags & POC_FWD_ENTROPY) ? entropy : NULL;
    if (flags & POC_FWD_UNFUSED)
      FP(head_text_fwd)(n, H, m->V, m->hf, WP(m->off_head), m->htgt, logp, ent, m->logits);
    else
      FP(head_fused_fwd)(n, H, m->V, m->hf, WP(m->off_head), m->htgt, logp, ent, m->hlse,
                         m->hmu, m->hscratch);
  }
  if (save) {
    m->saved_n_tok = T;
    m->saved_flags = flags;
  }
  return 0;
}

/* One decoder layer backward: dX holds dL/d(layer output) and leaves holding
 * dL/d(layer input); weight gradients are accumulated. */
static void mdl_layer_bwd(model *m, int l, int T, const FP(mdl_saved) *S, real *dX) {
  const FP(mdl_layer_off) *o = &m->lo[l];
  const int H = m->H, F = m->F;
  const size_t TI = (size_t)T * F;
  /* MLP */
  FP(mdl_rmsnorm)(T, H, S->h1, WP(o->ln2), m->eps, m->s_xn, NULL);
  FP(mdl_swiglu)(TI, S->g, S->u, m->s_i0);
  mdl_linear_bwd(T, F, H, m->s_i0, WP(o->wd), dX, GP(o->wd), m->s_i1, 0);
  mdl_swiglu_bwd(TI, S->g, S->u, m->s_i1, m->s_i0, m->s_i2);
  mdl_linear_bwd(T, H, F, m->s_xn, WP(o->wg), m->s_i0, GP(o->wg), m->s_b, 0);
  mdl_linear_bwd(T, H, F, m->s_xn, WP(o->wu), m->s_i2, GP(o->wu), m->s_b, 1);
  mdl_rmsnorm_bwd(T, H, S->h1, WP(o->ln2), S->rstd2, m->s_b, dX, GP(o->ln2));
  /* attention: dX is now dL/dh1 */
  mdl_linear_bwd(T, m->qd, H, S->att, WP(o->wo), dX, GP(o->wo), m->s_att, 0);
  if (o->bo != MDL_NO_BIAS) mdl_colsum_acc(T, H, dX, GP(o->bo));
  mdl_attention_bwd(m, T, S->q, S->k, S->v, S->att, S->lse, m->s_att, m->s_q, m->s_k, m->s_v,
                    m->s_D);
  mdl_rope_dir(T, m->nh, m->hd, m->s_q, m->cosb, m->sinb, -1);
  mdl_rope_dir(T, m->nkv, m->hd, m->s_k, m->cosb, m->sinb, -1);
  if (o->bq != MDL_NO_BIAS) {
    mdl_colsum_acc(T, m->qd, m->s_q, GP(o->bq));
    mdl_colsum_acc(T, m->kvd, m->s_k, GP(o->bk));
    mdl_colsum_acc(T, m->kvd, m->s_v, GP(o->bv));
  }
  FP(mdl_rmsnorm)(T, H, S->x, WP(o->ln1), m->eps, m->s_xn, NULL);
  mdl_linear_bwd(T, H, m->qd, m->s_xn, WP(o->wq), m->s_q, GP(o->wq), m->s_b, 0);
  mdl_linear_bwd(T, H, m->kvd, m->s_xn, WP(o->wk), m->s_k, GP(o->wk), m->s_b, 1);
  mdl_linear_bwd(T, H, m->kvd, m->s_xn, WP(o->wv), m->s_v, GP(o->wv), m->s_b, 1);
  mdl_rmsnorm_bwd(T, H, S->x, WP(o->ln1), S->rstd1, m->s_b, dX, GP(o->ln1));
}

int FP(poc_model_backward)(model *m, const poc_pack *p, const real *dlogp, const real *dentropy,
                           char *err) {
  if (!m->grad || m->saved_n_tok < 0 || m->saved_n_tok != p->n_tok) {
    snprintf(err, POC_ERR_LEN, "model: backward must follow a forward with POC_FWD_SAVE on "
             "the same pack");
    return -1;
  }
  const int T = p->n_tok, H = m->H, n = poc_pack_targets(p);
  m->saved_n_tok = -1; /* the textbook head's buffer is consumed below */
  if (T == 0) return 0;
  real *dX = m->s_dx;
  memset(dX, 0, (size_t)T * H * sizeof(real));
  if (n > 0) {
    real *gW = GP(m->off_head);
    if (m->saved_flags & POC_FWD_UNFUSED)
      FP(head_text_bwd)(n, H, m->V, m->hf, WP(m->off_head), m->htgt, dlogp, dentropy,
                        m->logits, m->s_a, gW);
    else
      FP(head_fused_bwd)(n, H, m->V, m->hf, WP(m->off_head), m->htgt, m->hlse, m->hmu, dlogp,
                         dentropy, m->s_a, gW, m->hscratch);
    /* final norm, on the gathered rows, then scattered back (each row predicts one
       target, so no two targets share a row) */
#pragma omp parallel for schedule(static) if ((size_t)n * H >= MDL_PAR_MIN)
    for (int i = 0; i < n; i++)
      memcpy(m->s_b + (size_t)i * H, m->xf + (size_t)m->hrow[i] * H, (size_t)H * sizeof(real));
    memset(m->s_xn, 0, (size_t)n * H * sizeof(real));
    mdl_rmsnorm_bwd(n, H, m->s_b, WP(m->off_norm), m->rstdf, m->s_a, m->s_xn, GP(m->off_norm));
#pragma omp parallel for schedule(static) if ((size_t)n * H >= MDL_PAR_MIN)
    for (int i = 0; i < n; i++)
      memcpy(dX + (size_t)m->hrow[i] * H, m->s_xn + (size_t)i * H, (size_t)H * sizeof(real));
  }
  for (int l = m->L - 1; l >= 0; l--) mdl_layer_bwd(m, l, T, &m->sv[l], dX);

  /* embedding: dE[token] += dx over the rows holding it; columns in parallel so each
     sum runs in row order */
  real *gE = GP(m->off_embed);
#pragma omp parallel for schedule(static) if ((size_t)T * H >= MDL_PAR_MIN)
  for (int j = 0; j < H; j++)
    for (int t = 0; t < T; t++) gE[(size_t)p->tokens[t] * H + j] += dX[(size_t)t * H + j];
  return 0;
}
