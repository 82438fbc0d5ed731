/* attn_bounds.h — per-element tolerances for the tensor-core attention kernels against
 * the CPU twin, from the one place they round differently.
 *
 * Both devices get the same bf16 inputs and sum in fp32 (≈1e-7 relative, any order). The
 * CUDA kernels in addition round the left operand of their second products to bf16, as
 * FlashAttention-2 does: P for P·V and Pᵀ·dO, dS for dS·K and dSᵀ·Q. Rounding to nearest
 * with bf16's 8 significant bits moves a value by at most 2^-8 of itself, so an output
 * Σ_j x_j y_j with x rounded moves by at most 2^-8 Σ_j |x_j| |y_j|:
 *   out[t,h,d]  ≤ 2^-8 Σ_j p_tj |v_jd|          (then out's own bf16 rounding, rtol)
 *   dq[i,h,d]   ≤ 2^-8 Σ_j |dS_ij| |k_jd|
 *   dk[j,g,d]   ≤ 2^-8 Σ_{h in g} Σ_i |dS_ij| |q_id|
 *   dv[j,g,d]   ≤ 2^-8 Σ_{h in g} Σ_i p_ij |dO_id|
 * with p_ij = e^{s_ij − lse_i}, dS_ij = p_ij (dO_i·v_j − D_i)/√hd computed here in double
 * from the inputs. A dropped key, a wrong mask or a misplaced fragment moves an output by
 * a whole term, which these bounds (2^-8 of the terms' magnitudes) do not cover. */
#ifndef POC_ATTN_BOUNDS_H
#define POC_ATTN_BOUNDS_H

#include <math.h>
#include <stdint.h>
#include <stdlib.h>

#define AB_U_BF16 (1.0 / 256) /* bf16 rounding: at most 2^-8 relative */

/* T query rows at key positions q0 + t, keys [kbeg[t], q0 + t] (q0 = 0 for packs, where
 * send[j] ends key j's sequence); q [T × nh·hd], k, v [(q0 + T) × nkv·hd] */
typedef struct {
  int T, q0, nh, nkv, hd;
  const int32_t *kbeg, *send;
} ab_shape;

static double ab_dot(const float *a, const float *b, int n) {
  double s = 0;
  for (int d = 0; d < n; d++) s += (double)a[d] * b[d];
  return s;
}

/* lse[t·nh + h] in double (NULL: not wanted) and tol[t·qd + h·hd + d] for out */
static void ab_fwd(const ab_shape *s, const float *q, const float *k, const float *v,
                   double *lse, double *tol) {
  const int qd = s->nh * s->hd, kvd = s->nkv * s->hd, grp = s->nh / s->nkv, hd = s->hd;
  const double scale = 1 / sqrt((double)hd);
  double *sc = malloc(sizeof(double) * (size_t)(s->q0 + s->T));
  for (int t = 0; t < s->T; t++)
    for (int h = 0; h < s->nh; h++) {
      const float *qt = q + (size_t)t * qd + (size_t)h * hd;
      const size_t ko = (size_t)(h / grp) * hd;
      const int kb = s->kbeg[t], ke = s->q0 + t;
      double mx = -INFINITY, l = 0;
      for (int j = kb; j <= ke; j++) {
        sc[j] = ab_dot(qt, k + (size_t)j * kvd + ko, hd) * scale;
        mx = sc[j] > mx ? sc[j] : mx;
      }
      for (int j = kb; j <= ke; j++) l += exp(sc[j] - mx);
      const double ls = mx + log(l);
      if (lse) lse[(size_t)t * s->nh + h] = ls;
      double *tt = tol + (size_t)t * qd + (size_t)h * hd;
      for (int d = 0; d < hd; d++) tt[d] = 0;
      for (int j = kb; j <= ke; j++) {
        const double p = exp(sc[j] - ls);
        const float *vj = v + (size_t)j * kvd + ko;
        for (int d = 0; d < hd; d++) tt[d] += p * fabs(vj[d]);
      }
      for (int d = 0; d < hd; d++) tt[d] *= AB_U_BF16;
    }
  free(sc);
}

/* tolerances for dq [T × qd], dk, dv [T × kvd] (q0 = 0), given the output o and lse the
 * backward was fed */
static void ab_bwd(const ab_shape *s, const float *q, const float *k, const float *v,
                   const float *o, const float *lse, const float *dO, double *tq, double *tk,
                   double *tv) {
  const int T = s->T, qd = s->nh * s->hd, kvd = s->nkv * s->hd, grp = s->nh / s->nkv,
            hd = s->hd;
  const double scale = 1 / sqrt((double)hd);
  for (size_t e = 0; e < (size_t)T * qd; e++) tq[e] = 0;
  for (size_t e = 0; e < (size_t)T * kvd; e++) tk[e] = tv[e] = 0;
  for (int i = 0; i < T; i++)
    for (int h = 0; h < s->nh; h++) {
      const size_t qo = (size_t)i * qd + (size_t)h * hd, ko = (size_t)(h / grp) * hd;
      const float *qi = q + qo, *dOi = dO + qo;
      const double Di = ab_dot(dOi, o + qo, hd), li = lse[(size_t)i * s->nh + h];
      for (int j = s->kbeg[i]; j <= i; j++) {
        const float *kj = k + (size_t)j * kvd + ko, *vj = v + (size_t)j * kvd + ko;
        const double p = exp(ab_dot(qi, kj, hd) * scale - li);
        const double ds = fabs(p * (ab_dot(dOi, vj, hd) - Di) * scale);
        double *tqi = tq + qo, *tkj = tk + (size_t)j * kvd + ko, *tvj = tv + (size_t)j * kvd + ko;
        for (int d = 0; d < hd; d++) {
          tqi[d] += ds * fabs(kj[d]);
          tkj[d] += ds * fabs(qi[d]);
          tvj[d] += p * fabs(dOi[d]);
        }
      }
    }
  for (size_t e = 0; e < (size_t)T * qd; e++) tq[e] *= AB_U_BF16;
  for (size_t e = 0; e < (size_t)T * kvd; e++) {
    tk[e] *= AB_U_BF16;
    tv[e] *= AB_U_BF16;
  }
}

#endif
