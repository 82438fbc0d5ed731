/* attention.cu — causal grouped-query attention over packed sequences, flash style, with
 * the dot products on tensor cores (mma_bf16_16816, poc_common.cuh).
 *
 * Rows of many sequences are concatenated without padding; row t attends to keys
 * [kbeg[t], t] (its own sequence, causally); send[t] is one past its sequence's last row.
 * The forward also takes a query offset q0: query row t sits at key position q0 + t and
 * attends to keys [kbeg[t], q0 + t], so key rows may outnumber query rows (the KV cache of
 * a decode step: q0 is the cache's length). Packs and the backward use q0 = 0.
 * Query head h reads kv head h / (nh/nkv). No T×T score matrix is ever stored.
 *
 * forward, per block of 64 query rows × head (FlashAttention-2):
 *   S = Q Kᵀ/√hd over a tile of keys, masked to [kbeg, q0 + t];
 *   running row max m and l = Σ e^{s − m}; when a tile raises the max to m', l and the
 *   output accumulator are scaled by e^{m − m'};  O += P V with P = e^{S − m} rounded to
 *   bf16 for the product (l sums the fp32 values);  out = O / l,  lse = m + log l.
 * backward recomputes P = e^{S − lse}:
 *   D_i = dO_i·O_i,  dP = dO Vᵀ,  dS = P ∘ (dP − D)/√hd,
 *   dQ = dS K          (attn_bwd_dq: per block of 64 query rows × head, key tiles)
 *   dK = dSᵀ Q, dV = Pᵀ dO
 *                      (attn_bwd_dkv: per block of 64 key rows × kv head, query tiles of
 *                       the rows i in [j, send[j]) for each of the group's query heads)
 * P and dS are rounded to bf16 as operands of the second products; every sum is fp32.
 * Each output has one owner (a warp's registers), the loops run in a fixed order and no
 * atomics are used, so results are the same bits on every run.
 *
 * Tiling. A block is 4 warps; each warp owns 16 rows (query rows, or key rows in dkv),
 * the M = 16 of one m16n8k16 product, and keeps them in registers as A fragments for the
 * whole kernel (Q in the forward, Q and dO in dq, K and V in dkv). The head dim is padded
 * with zeros to HDP = a multiple of 16 (the product's K); tiles of ATT_BN key (or query)
 * rows of the other operands stream through shared memory, two buffers: cp.async fills
 * the next tile while the warps multiply the current one. Shared rows are HDP + 8 bf16
 * long: 16-byte aligned for cp.async, and the 8 rows a fragment load touches fall in
 * different banks. Fragment loads (g = lane/4, t = lane%4, as in poc_common.cuh):
 *   A from row-major X (rows = M):  a[j] = X[g + 8(j&1)][16ks + 2t + 8(j>>1) .. +1]
 *   B for · Yᵀ (Y row-major, its rows are the N):  b[i] = Y[n0 + g][k0 + 2t + 8i .. +1]
 *   B for · X  (X row-major, its rows are the K):  b[i] = X[k0 + 2t + 8i][n0 + g],
 *                                                        X[k0 + 2t + 8i + 1][n0 + g]
 * and a C result of two adjacent 8-column tiles is the A operand of the next product
 * (mma_c_to_a): S → P for P V, dS for dS K, and so on.
 */
#include "poc_common.cuh"

#if POC_HD % 2
#error "head_dim must be even"
#endif

#define ATT_HDP ((POC_HD + 15) / 16 * 16) /* head dim padded to the product's K */
#define ATT_KS (ATT_HDP / 16)             /* k-steps over the head dim */
#define ATT_DN (ATT_HDP / 8)              /* 8-column tiles over the head dim */
#define ATT_SROW (ATT_HDP + 8)            /* shared row, in bf16 */
#define ATT_BM 64                         /* rows per block: 4 warps × 16 */
/* rows per streamed tile: 2 buffers × 2 operands × ATT_BN × ATT_SROW bf16 stay under the
 * 48 KB of static shared memory up to hd 256 */
#define ATT_BN (ATT_HDP <= 64 ? 64 : ATT_HDP <= 128 ? 32 : 16)
#define ATT_FAR (1 << 30)                 /* a kbeg no key reaches: a row past the end */

/* Starts copying rows [r0, r0 + ATT_BN) of one head (columns col .. col + HD) of a bf16
 * matrix with rows of `width` into shared rows of ATT_SROW. Rows at or past rend and the
 * padding columns HD .. HDP are written as zeros (a zero times anything finite in a
 * product: the masked score of a missing key, a missing value row under P = 0). Aligned
 * 16-byte chunks go by cp.async; the rest (a head dim that is not a multiple of 8) by
 * plain stores. The caller commits the group and waits for it. */
__device__ __forceinline__ void att_tile(bf16 *dst, const bf16 *src, int width, int col, int r0,
                                         int rend) {
  enum { CH = ATT_HDP / 8 };
  for (int e = threadIdx.x; e < ATT_BN * CH; e += blockDim.x) {
    const int r = e / CH, c = (e % CH) * 8;
    bf16 *d = dst + r * ATT_SROW + c;
    const bool in = r0 + r < rend;
    const bf16 *s = src + (in ? (poc_size)(r0 + r) * width + col + c : 0);
    if (in && c + 8 <= POC_HD && ((poc_size)s & 15) == 0)
      cp_async16(d, s);
    else
      for (int i = 0; i < 8; i++) d[i] = in && c + i < POC_HD ? s[i] : (bf16)0;
  }
}

/* A fragments of 16 rows [row0, row0 + 16) of one head, straight from global memory into
 * the warp's registers (once per kernel); rows at or past rend and padding are zero. */
__device__ __forceinline__ void att_afrag(unsigned a[ATT_KS][4], const bf16 *src, int width,
                                          int col, int row0, int rend) {
  const int lane = threadIdx.x & 31, g = lane >> 2, t = lane & 3;
#pragma unroll
  for (int ks = 0; ks < ATT_KS; ks++)
#pragma unroll
    for (int j = 0; j < 4; j++) {
      const int r = row0 + g + 8 * (j & 1), c = 16 * ks + 2 * t + 8 * (j >> 1);
      a[ks][j] = r < rend && c < POC_HD ? *(const unsigned *)(src + (poc_size)r * width + col + c)
                                        : 0u;
    }
}

/* B fragment of Yᵀ for the product · Yᵀ: rows n0 .. n0+7 of the shared tile Y are the
 * product's columns, its dims k0 .. k0+15 the product's K. */
__device__ __forceinline__ void att_bT(unsigned b[2], const bf16 *Y, int n0, int k0) {
  const int lane = threadIdx.x & 31, g = lane >> 2, t = lane & 3;
  const bf16 *y = Y + (n0 + g) * ATT_SROW + k0 + 2 * t;
  b[0] = *(const unsigned *)y;
  b[1] = *(const unsigned *)(y + 8);
}

/* B fragment of X for the product · X: rows k0 .. k0+15 of the shared tile X are the
 * product's K, its dims n0 .. n0+7 the product's columns. */
__device__ __forceinline__ void att_bN(unsigned b[2], const bf16 *X, int k0, int n0) {
  const int lane = threadIdx.x & 31, g = lane >> 2, t = lane & 3;
  const bf16 *x = X + (k0 + 2 * t) * ATT_SROW + n0 + g;
  b[0] = bf16x2(x[0], x[ATT_SROW]);
  b[1] = bf16x2(x[8 * ATT_SROW], x[9 * ATT_SROW]);
}

/* Σ over the 4 lanes of a fragment row group (lanes 4g .. 4g+3), the same bits in each */
__device__ __forceinline__ float att_quad_sum(float v) {
  v += __shfl_xor_sync(POC_FULL_MASK, v, 1);
  return v + __shfl_xor_sync(POC_FULL_MASK, v, 2);
}
__device__ __forceinline__ float att_quad_max(float v) {
  v = fmaxf(v, __shfl_xor_sync(POC_FULL_MASK, v, 1));
  return fmaxf(v, __shfl_xor_sync(POC_FULL_MASK, v, 2));
}

/* Query rows [r0, r0 + nq) of the block sit at key positions [q0 + r0, q0 + r0 + nq); the
 * key tiles start at the block's first row's kbeg (kbeg never decreases along the rows of
 * a pack, nor of a decode step) and end after the last row's own position. A lane holds
 * rows w0 + g and w0 + g + 8 of its warp's 16 (index r = 0, 1 below) and, of each 8-key
 * column tile of S, keys 2t and 2t + 1. */
extern "C" __global__ void __launch_bounds__(128)
attn_fwd(int T, int q0, const bf16 *__restrict__ q, const bf16 *__restrict__ k,
         const bf16 *__restrict__ v, const int *__restrict__ kbeg, bf16 *__restrict__ out,
         float *__restrict__ lse) {
  __shared__ __align__(16) bf16 sk[2][ATT_BN * ATT_SROW];
  __shared__ __align__(16) bf16 sv[2][ATT_BN * ATT_SROW];
  const int h = blockIdx.y, kvh = h / POC_GROUP, r0 = blockIdx.x * ATT_BM;
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, g = lane >> 2, t = lane & 3;
  const int nq = min(ATT_BM, T - r0), w0 = r0 + 16 * warp;
  const float scale = rsqrtf((float)POC_HD);

  unsigned qa[ATT_KS][4];
  att_afrag(qa, q, POC_QD, h * POC_HD, w0, T);
  float m[2], l[2], o[ATT_DN][4];
  int kb[2], kp[2]; /* a row's keys: [kb, kp] */
#pragma unroll
  for (int r = 0; r < 2; r++) {
    const int row = w0 + g + 8 * r;
    m[r] = POC_NEG_INF;
    l[r] = 0.f;
    kb[r] = row < T ? kbeg[row] : ATT_FAR;
    kp[r] = q0 + row;
  }
#pragma unroll
  for (int dn = 0; dn < ATT_DN; dn++) o[dn][0] = o[dn][1] = o[dn][2] = o[dn][3] = 0.f;
  /* the warp's keys: from its first row's kbeg to its last row's own position */
  const bool wlive = w0 < T;
  const int wlo = wlive ? kbeg[w0] : 0, whi = q0 + min(w0 + 15, T - 1);

  const int k_lo = kbeg[r0], k_hi = q0 + r0 + nq;
  att_tile(sk[0], k, POC_KVD, kvh * POC_HD, k_lo, k_hi);
  att_tile(sv[0], v, POC_KVD, kvh * POC_HD, k_lo, k_hi);
  cp_async_commit();
  for (int it = 0, k0 = k_lo; k0 < k_hi; it++, k0 += ATT_BN) {
    const int buf = it & 1;
    if (k0 + ATT_BN < k_hi) { /* the next tile into the other buffer, then wait for this one */
      att_tile(sk[buf ^ 1], k, POC_KVD, kvh * POC_HD, k0 + ATT_BN, k_hi);
      att_tile(sv[buf ^ 1], v, POC_KVD, kvh * POC_HD, k0 + ATT_BN, k_hi);
      cp_async_commit();
      cp_async_wait<1>();
    } else {
      cp_async_wait<0>();
    }
    __syncthreads();
    if (wlive && k0 <= whi && k0 + ATT_BN > wlo) {
      /* S = Q Kᵀ: 16 rows × ATT_BN keys */
      float s[ATT_BN / 8][4];
#pragma unroll
      for (int nt = 0; nt < ATT_BN / 8; nt++) {
        s[nt][0] = s[nt][1] = s[nt][2] = s[nt][3] = 0.f;
#pragma unroll
        for (int ks = 0; ks < ATT_KS; ks++) {
          unsigned b[2];
          att_bT(b, sk[buf], 8 * nt, 16 * ks);
          mma_bf16_16816(s[nt], qa[ks], b);
        }
      }
      /* mask, scale, online softmax per row */
#pragma unroll
      for (int r = 0; r < 2; r++) {
        float mx = POC_NEG_INF;
#pragma unroll
        for (int nt = 0; nt < ATT_BN / 8; nt++)
#pragma unroll
          for (int c = 0; c < 2; c++) {
            const int key = k0 + 8 * nt + 2 * t + c;
            float x = key >= kb[r] && key <= kp[r] ? s[nt][2 * r + c] * scale : POC_NEG_INF;
            s[nt][2 * r + c] = x;
            mx = fmaxf(mx, x);
          }
        mx = att_quad_max(mx);
        const float mn = fmaxf(m[r], mx);
        /* a row with no key yet (mn = −∞) keeps l = 0, O = 0 */
        const float corr = mn == POC_NEG_INF ? 1.f : __expf(m[r] - mn);
        float sum = 0.f;
#pragma unroll
        for (int nt = 0; nt < ATT_BN / 8; nt++)
#pragma unroll
          for (int c = 0; c < 2; c++) {
            float x = s[nt][2 * r + c];
            float p = x == POC_NEG_INF ? 0.f : __expf(x - mn);
            s[nt][2 * r + c] = p;
            sum += p;
          }
        l[r] = l[r] * corr + sum; /* this lane's part of the row sum */
        m[r] = mn;
#pragma unroll
        for (int dn = 0; dn < ATT_DN; dn++) {
          o[dn][2 * r] *= corr;
          o[dn][2 * r + 1] *= corr;
        }
      }
      /* O += P V: P's C fragments are the A operand, 16 keys at a time */
#pragma unroll
      for (int kk = 0; kk < ATT_BN / 16; kk++) {
        unsigned pa[4];
        mma_c_to_a(pa, s[2 * kk], s[2 * kk + 1]);
#pragma unroll
        for (int dn = 0; dn < ATT_DN; dn++) {
          unsigned b[2];
          att_bN(b, sv[buf], 16 * kk, 8 * dn);
          mma_bf16_16816(o[dn], pa, b);
        }
      }
    }
    __syncthreads(); /* the buffer is refilled two tiles on */
  }
#pragma unroll
  for (int r = 0; r < 2; r++) {
    const int row = w0 + g + 8 * r;
    const float lt = att_quad_sum(l[r]);
    if (row >= T) continue;
    const float inv = 1.f / lt;
    bf16 *orow = out + (poc_size)row * POC_QD + h * POC_HD;
#pragma unroll
    for (int dn = 0; dn < ATT_DN; dn++) {
      const int c = 8 * dn + 2 * t;
      if (c < POC_HD) {
        orow[c] = f2bf(o[dn][2 * r] * inv);
        orow[c + 1] = f2bf(o[dn][2 * r + 1] * inv);
      }
    }
    if (t == 0) lse[(poc_size)row * POC_NH + h] = m[r] + logf(lt);
  }
}

/* dq [T×QD] (fp32) and D [T×NH]. Rows as in the forward (q0 = 0); K and V tiles stream. */
extern "C" __global__ void __launch_bounds__(128)
attn_bwd_dq(int T, const bf16 *__restrict__ q, const bf16 *__restrict__ k, const bf16 *__restrict__ v,
            const bf16 *__restrict__ o, const bf16 *__restrict__ dO, const float *__restrict__ lse,
            const int *__restrict__ kbeg, float *__restrict__ dq, float *__restrict__ Dout) {
  __shared__ __align__(16) bf16 sk[2][ATT_BN * ATT_SROW];
  __shared__ __align__(16) bf16 sv[2][ATT_BN * ATT_SROW];
  const int h = blockIdx.y, kvh = h / POC_GROUP, r0 = blockIdx.x * ATT_BM;
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, g = lane >> 2, t = lane & 3;
  const int nq = min(ATT_BM, T - r0), w0 = r0 + 16 * warp;
  const float scale = rsqrtf((float)POC_HD);

  unsigned qa[ATT_KS][4], da[ATT_KS][4];
  att_afrag(qa, q, POC_QD, h * POC_HD, w0, T);
  att_afrag(da, dO, POC_QD, h * POC_HD, w0, T);
  /* D = dO·O per row: this lane's 8 dims of each 16, then the row group's sum */
  float Di[2], li[2], acc[ATT_DN][4];
  int kb[2], kp[2];
#pragma unroll
  for (int r = 0; r < 2; r++) {
    const int row = w0 + g + 8 * r;
    float s = 0.f;
    if (row < T)
#pragma unroll
      for (int ks = 0; ks < ATT_KS; ks++)
#pragma unroll
        for (int j = 0; j < 2; j++) {
          const int c = 16 * ks + 2 * t + 8 * j;
          if (c >= POC_HD) continue;
          const unsigned d2 = da[ks][r + 2 * j];
          const unsigned o2 = *(const unsigned *)(o + (poc_size)row * POC_QD + h * POC_HD + c);
          s += bf2f((bf16)(d2 & 0xffffu)) * bf2f((bf16)(o2 & 0xffffu));
          s += bf2f((bf16)(d2 >> 16)) * bf2f((bf16)(o2 >> 16));
        }
    Di[r] = att_quad_sum(s);
    li[r] = row < T ? lse[(poc_size)row * POC_NH + h] : 0.f;
    kb[r] = row < T ? kbeg[row] : ATT_FAR;
    kp[r] = row;
    if (row < T && t == 0) Dout[(poc_size)row * POC_NH + h] = Di[r];
  }
#pragma unroll
  for (int dn = 0; dn < ATT_DN; dn++) acc[dn][0] = acc[dn][1] = acc[dn][2] = acc[dn][3] = 0.f;
  const bool wlive = w0 < T;
  const int wlo = wlive ? kbeg[w0] : 0, whi = min(w0 + 15, T - 1);

  const int k_lo = kbeg[r0], k_hi = r0 + nq;
  att_tile(sk[0], k, POC_KVD, kvh * POC_HD, k_lo, k_hi);
  att_tile(sv[0], v, POC_KVD, kvh * POC_HD, k_lo, k_hi);
  cp_async_commit();
  for (int it = 0, k0 = k_lo; k0 < k_hi; it++, k0 += ATT_BN) {
    const int buf = it & 1;
    if (k0 + ATT_BN < k_hi) {
      att_tile(sk[buf ^ 1], k, POC_KVD, kvh * POC_HD, k0 + ATT_BN, k_hi);
      att_tile(sv[buf ^ 1], v, POC_KVD, kvh * POC_HD, k0 + ATT_BN, k_hi);
      cp_async_commit();
      cp_async_wait<1>();
    } else {
      cp_async_wait<0>();
    }
    __syncthreads();
    if (wlive && k0 <= whi && k0 + ATT_BN > wlo) {
      /* S = Q Kᵀ and dP = dO Vᵀ, 16 rows × ATT_BN keys; then dS in place of S */
      float s[ATT_BN / 8][4], dp[ATT_BN / 8][4];
#pragma unroll
      for (int nt = 0; nt < ATT_BN / 8; nt++) {
#pragma unroll
        for (int c = 0; c < 4; c++) s[nt][c] = dp[nt][c] = 0.f;
#pragma unroll
        for (int ks = 0; ks < ATT_KS; ks++) {
          unsigned b[2];
          att_bT(b, sk[buf], 8 * nt, 16 * ks);
          mma_bf16_16816(s[nt], qa[ks], b);
          att_bT(b, sv[buf], 8 * nt, 16 * ks);
          mma_bf16_16816(dp[nt], da[ks], b);
        }
#pragma unroll
        for (int c = 0; c < 4; c++) {
          const int r = c >> 1, key = k0 + 8 * nt + 2 * t + (c & 1);
          const float p = key >= kb[r] && key <= kp[r] ? __expf(s[nt][c] * scale - li[r]) : 0.f;
          s[nt][c] = p * (dp[nt][c] - Di[r]) * scale;
        }
      }
      /* dQ += dS K */
#pragma unroll
      for (int kk = 0; kk < ATT_BN / 16; kk++) {
        unsigned sa[4];
        mma_c_to_a(sa, s[2 * kk], s[2 * kk + 1]);
#pragma unroll
        for (int dn = 0; dn < ATT_DN; dn++) {
          unsigned b[2];
          att_bN(b, sk[buf], 16 * kk, 8 * dn);
          mma_bf16_16816(acc[dn], sa, b);
        }
      }
    }
    __syncthreads();
  }
#pragma unroll
  for (int r = 0; r < 2; r++) {
    const int row = w0 + g + 8 * r;
    if (row >= T) continue;
    float *drow = dq + (poc_size)row * POC_QD + h * POC_HD;
#pragma unroll
    for (int dn = 0; dn < ATT_DN; dn++) {
      const int c = 8 * dn + 2 * t;
      if (c < POC_HD) {
        drow[c] = acc[dn][2 * r];
        drow[c + 1] = acc[dn][2 * r + 1];
      }
    }
  }
}

/* dk, dv [T×KVD] (fp32). A warp owns 16 key rows j (a lane: rows g, g + 8 of them, as the
 * M of Sᵀ = K Qᵀ); query tiles of Q and dO stream, with each query's lse, D and kbeg, for
 * every query head of the group in turn. Query i reaches key j when j ≤ i < send[j] and
 * kbeg[i] ≤ j. */
extern "C" __global__ void __launch_bounds__(128)
attn_bwd_dkv(int T, const bf16 *__restrict__ q, const bf16 *__restrict__ k, const bf16 *__restrict__ v,
             const bf16 *__restrict__ dO, const float *__restrict__ lse, const float *__restrict__ D,
             const int *__restrict__ kbeg, const int *__restrict__ send, float *__restrict__ dk,
             float *__restrict__ dv) {
  __shared__ __align__(16) bf16 sq[2][ATT_BN * ATT_SROW];
  __shared__ __align__(16) bf16 sdo[2][ATT_BN * ATT_SROW];
  __shared__ float slse[2][ATT_BN], sD[2][ATT_BN];
  __shared__ int skb[2][ATT_BN];
  const int kvh = blockIdx.y, j0 = blockIdx.x * ATT_BM;
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, g = lane >> 2, t = lane & 3;
  const int nk = min(ATT_BM, T - j0), w0 = j0 + 16 * warp;
  const float scale = rsqrtf((float)POC_HD);

  unsigned ka[ATT_KS][4], va[ATT_KS][4];
  att_afrag(ka, k, POC_KVD, kvh * POC_HD, w0, T);
  att_afrag(va, v, POC_KVD, kvh * POC_HD, w0, T);
  float ak[ATT_DN][4], av[ATT_DN][4];
  int kj[2], je[2]; /* a key row and the end of its queries */
#pragma unroll
  for (int r = 0; r < 2; r++) {
    const int row = w0 + g + 8 * r;
    kj[r] = row;
    je[r] = row < T ? send[row] : 0;
  }
#pragma unroll
  for (int dn = 0; dn < ATT_DN; dn++)
#pragma unroll
    for (int c = 0; c < 4; c++) ak[dn][c] = av[dn][c] = 0.f;
  const bool wlive = w0 < T;
  const int whi = wlive ? send[min(w0 + 15, T - 1)] : 0; /* send never decreases */

  /* iterations run over (query head, query tile) pairs, head-major */
  const int i_hi = send[j0 + nk - 1], ntile = (i_hi - j0 + ATT_BN - 1) / ATT_BN;
  const int n_it = POC_GROUP * ntile;
#define ATT_DKV_LOAD(buf, itn)                                                             \
  do {                                                                                     \
    const int h_ = kvh * POC_GROUP + (itn) / ntile, i0_ = j0 + ((itn) % ntile) * ATT_BN; \
    att_tile(sq[buf], q, POC_QD, h_ * POC_HD, i0_, i_hi);                                 \
    att_tile(sdo[buf], dO, POC_QD, h_ * POC_HD, i0_, i_hi);                               \
    for (int e = threadIdx.x; e < ATT_BN; e += blockDim.x) {                               \
      const int i_ = i0_ + e;                                                              \
      slse[buf][e] = i_ < i_hi ? lse[(poc_size)i_ * POC_NH + h_] : 0.f;                    \
      sD[buf][e] = i_ < i_hi ? D[(poc_size)i_ * POC_NH + h_] : 0.f;                        \
      skb[buf][e] = i_ < i_hi ? kbeg[i_] : ATT_FAR;                                        \
    }                                                                                      \
    cp_async_commit();                                                                     \
  } while (0)
  ATT_DKV_LOAD(0, 0);
  for (int it = 0; it < n_it; it++) {
    const int buf = it & 1, i0 = j0 + (it % ntile) * ATT_BN;
    if (it + 1 < n_it) {
      ATT_DKV_LOAD(buf ^ 1, it + 1);
      cp_async_wait<1>();
    } else {
      cp_async_wait<0>();
    }
    __syncthreads();
    if (wlive && i0 < whi && i0 + ATT_BN > w0) {
      /* Sᵀ = K Qᵀ and dPᵀ = V dOᵀ: 16 keys × ATT_BN queries; then Pᵀ and dSᵀ */
      float p[ATT_BN / 8][4], ds[ATT_BN / 8][4];
#pragma unroll
      for (int nt = 0; nt < ATT_BN / 8; nt++) {
#pragma unroll
        for (int c = 0; c < 4; c++) p[nt][c] = ds[nt][c] = 0.f;
#pragma unroll
        for (int ks = 0; ks < ATT_KS; ks++) {
          unsigned b[2];
          att_bT(b, sq[buf], 8 * nt, 16 * ks);
          mma_bf16_16816(p[nt], ka[ks], b);
          att_bT(b, sdo[buf], 8 * nt, 16 * ks);
          mma_bf16_16816(ds[nt], va[ks], b);
        }
#pragma unroll
        for (int c = 0; c < 4; c++) {
          const int r = c >> 1, col = 8 * nt + 2 * t + (c & 1), i = i0 + col;
          const bool on = i >= kj[r] && i < je[r] && skb[buf][col] <= kj[r];
          const float pv = on ? __expf(p[nt][c] * scale - slse[buf][col]) : 0.f;
          p[nt][c] = pv;
          ds[nt][c] = pv * (ds[nt][c] - sD[buf][col]) * scale;
        }
      }
      /* dV += Pᵀ dO,  dK += dSᵀ Q */
#pragma unroll
      for (int kk = 0; kk < ATT_BN / 16; kk++) {
        unsigned pa[4], sa[4];
        mma_c_to_a(pa, p[2 * kk], p[2 * kk + 1]);
        mma_c_to_a(sa, ds[2 * kk], ds[2 * kk + 1]);
#pragma unroll
        for (int dn = 0; dn < ATT_DN; dn++) {
          unsigned b[2];
          att_bN(b, sdo[buf], 16 * kk, 8 * dn);
          mma_bf16_16816(av[dn], pa, b);
          att_bN(b, sq[buf], 16 * kk, 8 * dn);
          mma_bf16_16816(ak[dn], sa, b);
        }
      }
    }
    __syncthreads();
  }
#undef ATT_DKV_LOAD
#pragma unroll
  for (int r = 0; r < 2; r++) {
    const int row = w0 + g + 8 * r;
    if (row >= T) continue;
    float *krow = dk + (poc_size)row * POC_KVD + kvh * POC_HD,
          *vrow = dv + (poc_size)row * POC_KVD + kvh * POC_HD;
#pragma unroll
    for (int dn = 0; dn < ATT_DN; dn++) {
      const int c = 8 * dn + 2 * t;
      if (c < POC_HD) {
        krow[c] = ak[dn][2 * r];
        krow[c + 1] = ak[dn][2 * r + 1];
        vrow[c] = av[dn][2 * r];
        vrow[c + 1] = av[dn][2 * r + 1];
      }
    }
  }
}
