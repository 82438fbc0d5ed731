/* model_internal.h — the CPU transformer's insides, shared by model_fp.c (packed forward
 * and backward), head_fp.c (the loss head) and generate_fp.c (KV-cache decoding).
 * Include only from *_fp.c files, after fp.h: every name here takes the precision suffix.
 *
 * Each concern (rmsnorm, rope, attention, swiglu, head) is one function whose comment
 * gives its math; these are the shapes the CUDA kernel templates follow.
 */
#ifndef POC_MODEL_INTERNAL_H
#define POC_MODEL_INTERNAL_H

#include <stddef.h>
#include <stdint.h>

#include "fp.h"
#include "pocrt.h"

#define MDL_NO_BIAS POC_NO_TENSOR
/* Loops with less work than this (in multiply-adds, roughly) run on one thread: waking a
 * team costs more than they do. */
#define MDL_PAR_MIN ((size_t)1 << 15)

/* Offsets of one layer's tensors in the flat parameter array (MDL_NO_BIAS when absent). */
typedef poc_layer_offsets FP(mdl_layer_off);

/* What one layer keeps from forward for backward (pointers into the arena). */
typedef struct FP(mdl_saved) {
  real *x;     /* [T×H] residual stream entering the layer */
  real *rstd1; /* [T] 1/sqrt(mean(x²)+eps) of the attention norm */
  real *q;     /* [T×nh·hd] queries after RoPE */
  real *k;     /* [T×nkv·hd] keys after RoPE */
  real *v;     /* [T×nkv·hd] */
  real *att;   /* [T×nh·hd] attention output before o_proj */
  real *lse;   /* [T×nh] log-sum-exp of each query row's scaled scores */
  real *h1;    /* [T×H] residual stream after attention */
  real *rstd2; /* [T] */
  real *g;     /* [T×F] gate_proj output */
  real *u;     /* [T×F] up_proj output */
} FP(mdl_saved);

struct FP(poc_model) {
  const poc_layout *lay;
  real *w, *grad;
  int max_tokens;
  int H, F, V, L, nh, nkv, hd, qd, kvd; /* F: intermediate (MLP) size */
  real eps;
  double *inv_freq;             /* [hd/2] RoPE frequencies, llama3 scaling applied */
  FP(mdl_layer_off) *lo;
  size_t off_embed, off_norm, off_head;

  int n_slots;                  /* L when the model trains (grad != NULL), else 1 */
  FP(mdl_saved) *sv;            /* [n_slots] */
  real *xf;                     /* [T×H] residual stream after the last layer */

  /* per pack */
  int32_t *pos;                 /* [T] position inside its sequence */
  int32_t *kbeg;                /* [T] first key of the row's sequence */
  int32_t *kend;                /* [T] one past its last visible key (causal) */
  real *cosb, *sinb;            /* [T×hd/2] */
  int32_t *hrow;                /* [T] row predicting each target */
  int32_t *htgt;                /* [T] the target token */
  real *hf;                     /* [T×H] final-normed rows feeding the head */
  real *rstdf;                  /* [T] */
  real *hlse, *hmu;             /* [T] head log-sum-exp and mean logit (Σ p·logit) */
  real *hscratch;               /* head chunk buffer */
  real *logits;                 /* [T×V] textbook head, allocated on first use */

  /* scratch */
  real *s_xn, *s_a, *s_b;       /* [T×H] */
  real *s_i0, *s_i1, *s_i2;     /* [T×F] */
  real *s_q, *s_k, *s_v;        /* [T×qd], [T×kvd], [T×kvd] */
  real *s_att;                  /* [T×qd] */
  real *s_D;                    /* [T×nh] */
  real *s_dx;                   /* [T×H] gradient of the residual stream */

  void *arena;
  int saved_n_tok, saved_flags; /* the forward that backward may follow; -1 when none */
};

/* ---- concerns shared by model_fp.c and generate_fp.c --------------------------------- */

/* Y[T×out] = X[T×in]·Wᵀ (+ b) for W [out×in] in HF layout. */
void FP(mdl_linear)(int T, int in, int out, const real *X, const real *W, const real *b,
                    real *Y);
/* y = w ⊙ x·r, r = 1/sqrt(mean(x²) + eps), per row; stores r when rstd != NULL. */
void FP(mdl_rmsnorm)(int T, int H, const real *x, const real *w, real eps, real *y,
                     real *rstd);
/* Rotates each head's pairs (i, i + hd/2) by angle pos·inv_freq_i (cos/sin tables). */
void FP(mdl_rope)(int T, int nheads, int hd, real *x, const real *cosb, const real *sinb);
/* cos/sin tables [T×hd/2] for the given positions. */
void FP(mdl_rope_tables)(const struct FP(poc_model) *m, int T, const int32_t *pos, real *cosb,
                         real *sinb);
/* Causal GQA attention: row t of q attends to keys [kbeg[t], kend[t]) of k/v. */
void FP(mdl_attention)(int T, int nh, int nkv, int hd, const real *q, const real *k,
                       const real *v, const int32_t *kbeg, const int32_t *kend, real *out,
                       real *lse);
/* a = silu(g) ⊙ u. */
void FP(mdl_swiglu)(size_t n, const real *g, const real *u, real *a);

/* ---- the loss head with caller-provided scratch -------------------------------------- */

/* Rows per block of the fused head; the chunk of columns shrinks as the block grows. */
#define HEAD_ROWS 1024
size_t FP(head_scratch_len)(int n, int V);
/* Fused forward; lse and mu [n] (log-sum-exp, Σ softmax·logit) feed the backward. */
void FP(head_fused_fwd)(int n, int H, int V, const real *h, const real *W,
                        const int32_t *tgt, real *logp, real *ent, real *lse, real *mu,
                        real *scratch);
/* Fused backward from the forward's lse/mu: dh = dlogits·W (overwritten), dW +=
 * dlogitsᵀ·h. */
void FP(head_fused_bwd)(int n, int H, int V, const real *h, const real *W,
                        const int32_t *tgt, const real *lse, const real *mu, const real *dlogp,
                        const real *dent, real *dh, real *dW, real *scratch);
/* Textbook forward: logits [n×V] is left holding the log-softmax. */
void FP(head_text_fwd)(int n, int H, int V, const real *h, const real *W, const int32_t *tgt,
                       real *logp, real *ent, real *logits);
/* Textbook backward from that log-softmax (overwritten by dlogits). */
void FP(head_text_bwd)(int n, int H, int V, const real *h, const real *W, const int32_t *tgt,
                       const real *dlogp, const real *dent, real *logsm, real *dh, real *dW);

#endif
