/* attention.cu — causal grouped-query attention over packed sequences, flash style.
 *
 * Rows of many sequences are concatenated without padding; row t attends to keys
 * [kbeg[t], t] (its own sequence, causally); send[t] is one past its sequence's last row.
 * The forward also takes a query offset q0: query row t sits at key position q0 + t and
 * attends to keys [kbeg[t], q0 + t], so key rows may outnumber query rows (the KV cache of
 * a decode step: q0 is the cache's length). Packs and the backward use q0 = 0.
 * Query head h reads kv head h / (nh/nkv). No T×T score matrix is ever stored:
 *
 * forward (one block per 16 query rows × head; keys streamed in tiles of 32):
 *   s_j = q·k_j/√hd,  running max m and l = Σ e^{s_j − m}; when a tile raises the max to
 *   m', l and the output accumulator are scaled by e^{m − m'};  out = Σ_j e^{s_j − m} v_j / l,
 *   lse = m + log l (kept for backward).
 * backward recomputes p_ij = e^{s_ij − lse_i}:
 *   D_i = dO_i·O_i,  dS_ij = p_ij (dO_i·v_j − D_i),
 *   dq_i = Σ_j dS_ij k_j/√hd   (attn_bwd_dq: one block per 8 query rows × head)
 *   dk_j = Σ_i dS_ij q_i/√hd,  dv_j = Σ_i p_ij dO_i
 *                               (attn_bwd_dkv: one block per 8 key rows × kv head, summing
 *                                over the group's query heads and rows i in [j, send[j]))
 * Each output has one owner, so no atomics and the sums run in a fixed order.
 *
 * Inside a block, a warp owns a few rows; a lane owns one key (or query) of the current
 * tile for the dot products, and dims lane, lane+32, ... of the accumulators. Shared rows
 * read by "one row per lane" are padded by one word so the 32 lanes hit 32 banks.
 */
#include "poc_common.cuh"

#define ATT_WARPS 4
#define ATT_TILE 32                    /* keys (forward, dq) or queries (dkv) per tile */
#define ATT_DPL ((POC_HD + 31) / 32)   /* accumulator dims per lane */
#define ATT_PAD (POC_HD + 2)           /* padded shared row, in bf16 */
#define ATT_FQ 16                      /* query rows per forward block */
#define ATT_BQ 8                       /* query rows per dq block, key rows per dkv block */

#if POC_HD % 2
#error "head_dim must be even"
#endif

/* Σ_d a_d b_d over one head, reading bf16 pairs as 32-bit words (the low half is the even
 * element). */
__device__ __forceinline__ float att_dot(const bf16 *a, const bf16 *b) {
  const unsigned *a2 = (const unsigned *)a, *b2 = (const unsigned *)b;
  float acc = 0.f;
#pragma unroll 8
  for (int d = 0; d < POC_HALF; d++) {
    unsigned x = a2[d], y = b2[d];
    acc += __uint_as_float(x << 16) * __uint_as_float(y << 16);
    acc += __uint_as_float(x & 0xffff0000u) * __uint_as_float(y & 0xffff0000u);
  }
  return acc;
}

/* Copies rows [r0, r0 + n) (fewer at the end: zeros) of one head of a bf16 matrix with
 * row width `width` into shared rows of length `stride`. */
__device__ __forceinline__ void att_load(bf16 *dst, int stride, int rows, const bf16 *src, int width,
                                         int col, int r0, int rend) {
  for (int e = threadIdx.x; e < rows * POC_HD; e += blockDim.x) {
    int r = e / POC_HD, d = e % POC_HD;
    dst[r * stride + d] = r0 + r < rend ? src[(poc_size)(r0 + r) * width + col + d] : (bf16)0;
  }
}

/* Query rows [r0, r0 + nq) of the block sit at key positions [q0 + r0, q0 + r0 + nq); the
 * key tiles start at the block's first row's kbeg (kbeg never decreases along the rows of
 * a pack, nor of a decode step) and end after the last row's own position. */
extern "C" __global__ void __launch_bounds__(128)
attn_fwd(int T, int q0, const bf16 *__restrict__ q, const bf16 *__restrict__ k,
         const bf16 *__restrict__ v, const int *__restrict__ kbeg, bf16 *__restrict__ out,
         float *__restrict__ lse) {
  enum { RPW = ATT_FQ / ATT_WARPS };
  __shared__ __align__(16) bf16 sq[ATT_FQ][POC_HD];
  __shared__ __align__(16) bf16 sk[ATT_TILE][ATT_PAD];
  __shared__ __align__(16) bf16 sv[ATT_TILE][POC_HD];
  const int h = blockIdx.y, g = h / POC_GROUP, r0 = blockIdx.x * ATT_FQ;
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  const int nq = min(ATT_FQ, T - r0);
  const float scale = rsqrtf((float)POC_HD);
  att_load(&sq[0][0], POC_HD, ATT_FQ, q, POC_QD, h * POC_HD, r0, r0 + nq);

  float m[RPW], l[RPW], o[RPW][ATT_DPL];
  int rb[RPW];
#pragma unroll
  for (int i = 0; i < RPW; i++) {
    int r = warp * RPW + i;
    m[i] = POC_NEG_INF;
    l[i] = 0.f;
    rb[i] = r < nq ? kbeg[r0 + r] : 0;
#pragma unroll
    for (int dd = 0; dd < ATT_DPL; dd++) o[i][dd] = 0.f;
  }
  const int k_hi = q0 + r0 + nq;
  for (int k0 = kbeg[r0]; k0 < k_hi; k0 += ATT_TILE) {
    __syncthreads();
    att_load(&sk[0][0], ATT_PAD, ATT_TILE, k, POC_KVD, g * POC_HD, k0, k_hi);
    att_load(&sv[0][0], POC_HD, ATT_TILE, v, POC_KVD, g * POC_HD, k0, k_hi);
    __syncthreads();
    const int j = k0 + lane;
#pragma unroll
    for (int i = 0; i < RPW; i++) {
      const int r = warp * RPW + i, kp = q0 + r0 + r;  /* the row's own key position */
      if (r >= nq || k0 > kp) continue;
      float s = POC_NEG_INF;
      if (j >= rb[i] && j <= kp) s = att_dot(sq[r], sk[lane]) * scale;
      float mx = warp_max(s);
      if (mx == POC_NEG_INF) continue;
      float mn = fmaxf(m[i], mx), corr = __expf(m[i] - mn);
      float p = s == POC_NEG_INF ? 0.f : __expf(s - mn);
      l[i] = l[i] * corr + warp_sum(p);
#pragma unroll
      for (int dd = 0; dd < ATT_DPL; dd++) o[i][dd] *= corr;
      for (int jj = 0; jj < ATT_TILE; jj++) {
        float pj = __shfl_sync(POC_FULL_MASK, p, jj);
#pragma unroll
        for (int dd = 0; dd < ATT_DPL; dd++) {
          int d = lane + 32 * dd;
          if (d < POC_HD) o[i][dd] += pj * bf2f(sv[jj][d]);
        }
      }
      m[i] = mn;
    }
  }
#pragma unroll
  for (int i = 0; i < RPW; i++) {
    const int r = warp * RPW + i, t = r0 + r;
    if (r >= nq) continue;
    float inv = 1.f / l[i];
#pragma unroll
    for (int dd = 0; dd < ATT_DPL; dd++) {
      int d = lane + 32 * dd;
      if (d < POC_HD) out[(poc_size)t * POC_QD + h * POC_HD + d] = f2bf(o[i][dd] * inv);
    }
    if (lane == 0) lse[(poc_size)t * POC_NH + h] = m[i] + logf(l[i]);
  }
}

/* dq [T×QD] (fp32) and D [T×NH] */
extern "C" __global__ void __launch_bounds__(128)
attn_bwd_dq(int T, const bf16 *__restrict__ q, const bf16 *__restrict__ k, const bf16 *__restrict__ v,
            const bf16 *__restrict__ o, const bf16 *__restrict__ dO, const float *__restrict__ lse,
            const int *__restrict__ kbeg, float *__restrict__ dq, float *__restrict__ Dout) {
  enum { RPW = ATT_BQ / ATT_WARPS };
  __shared__ __align__(16) bf16 sq[ATT_BQ][POC_HD];
  __shared__ __align__(16) bf16 sdo[ATT_BQ][POC_HD];
  __shared__ __align__(16) bf16 sk[ATT_TILE][ATT_PAD];
  __shared__ __align__(16) bf16 sv[ATT_TILE][ATT_PAD];
  const int h = blockIdx.y, g = h / POC_GROUP, q0 = blockIdx.x * ATT_BQ;
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  const int nq = min(ATT_BQ, T - q0);
  const float scale = rsqrtf((float)POC_HD);
  att_load(&sq[0][0], POC_HD, ATT_BQ, q, POC_QD, h * POC_HD, q0, q0 + nq);
  att_load(&sdo[0][0], POC_HD, ATT_BQ, dO, POC_QD, h * POC_HD, q0, q0 + nq);
  __syncthreads();

  float acc[RPW][ATT_DPL], Di[RPW], li[RPW];
  int rb[RPW];
#pragma unroll
  for (int i = 0; i < RPW; i++) {
    const int r = warp * RPW + i, t = q0 + r;
    float s = 0.f;
#pragma unroll
    for (int dd = 0; dd < ATT_DPL; dd++) {
      int d = lane + 32 * dd;
      acc[i][dd] = 0.f;
      if (r < nq && d < POC_HD)
        s += bf2f(sdo[r][d]) * bf2f(o[(poc_size)t * POC_QD + h * POC_HD + d]);
    }
    Di[i] = warp_sum(s);
    li[i] = r < nq ? lse[(poc_size)t * POC_NH + h] : 0.f;
    rb[i] = r < nq ? kbeg[t] : 0;
    if (r < nq && lane == 0) Dout[(poc_size)t * POC_NH + h] = Di[i];
  }
  const int k_hi = q0 + nq;
  for (int k0 = kbeg[q0]; k0 < k_hi; k0 += ATT_TILE) {
    __syncthreads();
    att_load(&sk[0][0], ATT_PAD, ATT_TILE, k, POC_KVD, g * POC_HD, k0, k_hi);
    att_load(&sv[0][0], ATT_PAD, ATT_TILE, v, POC_KVD, g * POC_HD, k0, k_hi);
    __syncthreads();
    const int j = k0 + lane;
#pragma unroll
    for (int i = 0; i < RPW; i++) {
      const int r = warp * RPW + i, t = q0 + r;
      if (r >= nq || k0 > t) continue;
      float ds = 0.f;
      if (j >= rb[i] && j <= t) {
        float p = __expf(att_dot(sq[r], sk[lane]) * scale - li[i]);
        ds = p * (att_dot(sdo[r], sv[lane]) - Di[i]) * scale;
      }
      for (int jj = 0; jj < ATT_TILE; jj++) {
        float dsj = __shfl_sync(POC_FULL_MASK, ds, jj);
        if (dsj == 0.f) continue;
#pragma unroll
        for (int dd = 0; dd < ATT_DPL; dd++) {
          int d = lane + 32 * dd;
          if (d < POC_HD) acc[i][dd] += dsj * bf2f(sk[jj][d]);
        }
      }
    }
  }
#pragma unroll
  for (int i = 0; i < RPW; i++) {
    const int r = warp * RPW + i, t = q0 + r;
    if (r >= nq) continue;
#pragma unroll
    for (int dd = 0; dd < ATT_DPL; dd++) {
      int d = lane + 32 * dd;
      if (d < POC_HD) dq[(poc_size)t * POC_QD + h * POC_HD + d] = acc[i][dd];
    }
  }
}

/* dk, dv [T×KVD] (fp32) */
extern "C" __global__ void __launch_bounds__(128)
attn_bwd_dkv(int T, const bf16 *__restrict__ q, const bf16 *__restrict__ k, const bf16 *__restrict__ v,
             const bf16 *__restrict__ dO, const float *__restrict__ lse, const float *__restrict__ D,
             const int *__restrict__ send, float *__restrict__ dk, float *__restrict__ dv) {
  enum { RPW = ATT_BQ / ATT_WARPS };
  __shared__ __align__(16) bf16 sk[ATT_BQ][POC_HD];
  __shared__ __align__(16) bf16 sv[ATT_BQ][POC_HD];
  __shared__ __align__(16) bf16 sq[ATT_TILE][ATT_PAD];
  __shared__ __align__(16) bf16 sdo[ATT_TILE][ATT_PAD];
  __shared__ float slse[ATT_TILE], sD[ATT_TILE];
  const int g = blockIdx.y, j0 = blockIdx.x * ATT_BQ;
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  const int nk = min(ATT_BQ, T - j0);
  const float scale = rsqrtf((float)POC_HD);
  att_load(&sk[0][0], POC_HD, ATT_BQ, k, POC_KVD, g * POC_HD, j0, j0 + nk);
  att_load(&sv[0][0], POC_HD, ATT_BQ, v, POC_KVD, g * POC_HD, j0, j0 + nk);

  float ak[RPW][ATT_DPL], av[RPW][ATT_DPL];
  int je[RPW];
#pragma unroll
  for (int i = 0; i < RPW; i++) {
    const int r = warp * RPW + i;
    je[i] = r < nk ? send[j0 + r] : 0;
#pragma unroll
    for (int dd = 0; dd < ATT_DPL; dd++) ak[i][dd] = av[i][dd] = 0.f;
  }
  const int i_hi = send[j0 + nk - 1];
  for (int h = g * POC_GROUP; h < (g + 1) * POC_GROUP; h++)
    for (int i0 = j0; i0 < i_hi; i0 += ATT_TILE) {
      __syncthreads();
      att_load(&sq[0][0], ATT_PAD, ATT_TILE, q, POC_QD, h * POC_HD, i0, i_hi);
      att_load(&sdo[0][0], ATT_PAD, ATT_TILE, dO, POC_QD, h * POC_HD, i0, i_hi);
      if (threadIdx.x < ATT_TILE) {
        int t = i0 + threadIdx.x;
        slse[threadIdx.x] = t < i_hi ? lse[(poc_size)t * POC_NH + h] : 0.f;
        sD[threadIdx.x] = t < i_hi ? D[(poc_size)t * POC_NH + h] : 0.f;
      }
      __syncthreads();
      const int qi = i0 + lane;
#pragma unroll
      for (int i = 0; i < RPW; i++) {
        const int r = warp * RPW + i, j = j0 + r;
        if (r >= nk || i0 >= je[i] || i0 + ATT_TILE <= j) continue;
        float p = 0.f, ds = 0.f;
        if (qi >= j && qi < je[i]) {
          p = __expf(att_dot(sq[lane], sk[r]) * scale - slse[lane]);
          ds = p * (att_dot(sdo[lane], sv[r]) - sD[lane]) * scale;
        }
        for (int jj = 0; jj < ATT_TILE; jj++) {
          float pj = __shfl_sync(POC_FULL_MASK, p, jj), dsj = __shfl_sync(POC_FULL_MASK, ds, jj);
          if (pj == 0.f && dsj == 0.f) continue;
#pragma unroll
          for (int dd = 0; dd < ATT_DPL; dd++) {
            int d = lane + 32 * dd;
            if (d < POC_HD) {
              av[i][dd] += pj * bf2f(sdo[jj][d]);
              ak[i][dd] += dsj * bf2f(sq[jj][d]);
            }
          }
        }
      }
    }
#pragma unroll
  for (int i = 0; i < RPW; i++) {
    const int r = warp * RPW + i, j = j0 + r;
    if (r >= nk) continue;
#pragma unroll
    for (int dd = 0; dd < ATT_DPL; dd++) {
      int d = lane + 32 * dd;
      if (d < POC_HD) {
        dk[(poc_size)j * POC_KVD + g * POC_HD + d] = ak[i][dd];
        dv[(poc_size)j * POC_KVD + g * POC_HD + d] = av[i][dd];
      }
    }
  }
}
