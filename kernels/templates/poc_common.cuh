/* poc_common.cuh — device helpers every poc kernel template includes.
 *
 * Templates are compiled by NVRTC with no CUDA headers on the include path (a machine may
 * have the driver and libnvrtc but no toolkit), so bf16 is handled as raw 16-bit words:
 * a bf16 is the top half of a float32, and rounding to it is round-to-nearest-even on the
 * 16 dropped bits.
 *
 * The model's dimensions arrive as a `#define` prelude written by poc_cuda_instantiate
 * (POC_H, POC_F, POC_V, POC_NH, POC_NKV, POC_HD, POC_EPS, ...), so loop bounds and
 * register arrays are compile-time constants.
 */
#ifndef POC_COMMON_CUH
#define POC_COMMON_CUH

typedef unsigned short bf16;
typedef unsigned long long poc_size;

#define POC_FULL_MASK 0xffffffffu
#define POC_NEG_INF __int_as_float(0xff800000)

#ifndef POC_HD
#error "instantiate templates through poc_cuda_instantiate (the dimension prelude is missing)"
#endif

#define POC_QD (POC_NH * POC_HD)   /* query width */
#define POC_KVD (POC_NKV * POC_HD) /* key/value width */
#define POC_GROUP (POC_NH / POC_NKV)
#define POC_HALF (POC_HD / 2)

__device__ __forceinline__ float bf2f(bf16 x) { return __uint_as_float(((unsigned)x) << 16); }

__device__ __forceinline__ bf16 f2bf(float f) {
  unsigned u = __float_as_uint(f);
  if ((u & 0x7fffffffu) > 0x7f800000u) return (bf16)((u >> 16) | 0x40u); /* keep NaN a NaN */
  u += 0x7fffu + ((u >> 16) & 1u);
  return (bf16)(u >> 16);
}

__device__ __forceinline__ float warp_sum(float v) {
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(POC_FULL_MASK, v, o);
  return v;
}

__device__ __forceinline__ float warp_max(float v) {
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) v = fmaxf(v, __shfl_xor_sync(POC_FULL_MASK, v, o));
  return v;
}

/* Sum over the block (blockDim.x a multiple of 32, at most 1024); every thread gets the
 * total. `sh` holds 32 floats; the leading barrier lets callers reuse it back to back. */
__device__ __forceinline__ float block_sum(float v, float *sh) {
  int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, nw = blockDim.x >> 5;
  v = warp_sum(v);
  __syncthreads();
  if (lane == 0) sh[warp] = v;
  __syncthreads();
  v = lane < nw ? sh[lane] : 0.f;
  return warp_sum(v);
}

__device__ __forceinline__ float block_max(float v, float *sh) {
  int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, nw = blockDim.x >> 5;
  v = warp_max(v);
  __syncthreads();
  if (lane == 0) sh[warp] = v;
  __syncthreads();
  v = lane < nw ? sh[lane] : POC_NEG_INF;
  return warp_max(v);
}

/* Online softmax state merge: (m, s) and (m2, s2) with s = Σ e^{x − m} become the pair
 * for the union, rescaling the side whose maximum is lower. */
__device__ __forceinline__ void softmax_merge(float &m, float &s, float m2, float s2) {
  float mn = fmaxf(m, m2);
  if (mn == POC_NEG_INF) return;
  s = s * __expf(m - mn) + s2 * __expf(m2 - mn);
  m = mn;
}

/* ---- tensor cores: mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 ------------------
 *
 * One warp computes D = A·B + C for A 16×16 (bf16, row major), B 16×8 (bf16, "col": the
 * fragment holds B by columns), C, D 16×8 (fp32). Each lane holds fragments, named by
 *   g = lane / 4 (groupID), t = lane % 4 (threadID_in_group)
 * as the PTX ISA documents them (Matrix Fragments for mma.m16n8k16, floating point types);
 * two bf16 share a 32-bit register, the lower-indexed element in the low half:
 *   A, a[4]:  a[0] = A[g  ][2t, 2t+1]    a[1] = A[g+8][2t, 2t+1]
 *             a[2] = A[g  ][2t+8, 2t+9]  a[3] = A[g+8][2t+8, 2t+9]
 *   B, b[2]:  b[0] = B[2t, 2t+1][g]      b[1] = B[2t+8, 2t+9][g]     (k rows, column g)
 *   C, c[4]:  c[0], c[1] = C[g][2t], C[g][2t+1]    c[2], c[3] = C[g+8][2t], C[g+8][2t+1]
 * So the C fragments of two side-by-side 16×8 tiles (columns 0..7 and 8..15), rounded to
 * bf16, are exactly the A fragment of that 16×16 block: a result can be the left operand
 * of the next product without leaving registers (mma_c_to_a).
 *
 * On sm_80 and later it is the instruction. Under the CUDA emulation, and on older GPUs,
 * the same function is computed from the layouts above: each lane fetches, with warp
 * shuffles, the registers of the four lanes that hold its two rows of A and of the eight
 * that hold its two columns of B, then forms its four dot products in fp32 (the product of
 * two bf16 is exact in fp32). A wrong index in a caller's fragments therefore gives a wrong
 * product under the emulation just as it would on the device. */
__device__ __forceinline__ unsigned bf16x2(bf16 lo, bf16 hi) {
  return (unsigned)lo | ((unsigned)hi << 16);
}
/* two floats rounded to bf16, the first in the low half */
__device__ __forceinline__ unsigned pack_bf16x2(float lo, float hi) {
  return bf16x2(f2bf(lo), f2bf(hi));
}

#if defined(POC_CUDA_EMUL_H) || (defined(__CUDA_ARCH__) && __CUDA_ARCH__ < 800)
#define POC_MMA_SHUFFLED 1
#endif

__device__ __forceinline__ void mma_bf16_16816(float c[4], const unsigned a[4], const unsigned b[2]) {
#ifdef POC_MMA_SHUFFLED
  const int lane = threadIdx.x & 31, g = lane >> 2, t = lane & 3;
  /* ar[r][k] = A[g + 8r][k]: lane 4g + i holds k = 2i, 2i+1 (a[0], a[1]) and 2i+8, 2i+9
     (a[2], a[3]) of both rows */
  float ar[2][16], bc[2][16];
  const unsigned long long a01 = (unsigned long long)a[0] | ((unsigned long long)a[1] << 32),
                           a23 = (unsigned long long)a[2] | ((unsigned long long)a[3] << 32),
                           b01 = (unsigned long long)b[0] | ((unsigned long long)b[1] << 32);
  for (int i = 0; i < 4; i++) {
    unsigned long long lo = __shfl_sync(POC_FULL_MASK, a01, 4 * g + i);
    unsigned long long hi = __shfl_sync(POC_FULL_MASK, a23, 4 * g + i);
    for (int r = 0; r < 2; r++) {
      unsigned w0 = (unsigned)(lo >> (32 * r)), w1 = (unsigned)(hi >> (32 * r));
      ar[r][2 * i] = bf2f((bf16)(w0 & 0xffffu));
      ar[r][2 * i + 1] = bf2f((bf16)(w0 >> 16));
      ar[r][2 * i + 8] = bf2f((bf16)(w1 & 0xffffu));
      ar[r][2 * i + 9] = bf2f((bf16)(w1 >> 16));
    }
  }
  /* bc[n][k] = B[k][2t + n]: column 2t + n is held by lanes 4(2t + n) + i, i = 0..3, with
     k = 2i, 2i+1 (b[0]) and 2i+8, 2i+9 (b[1]) */
  for (int n = 0; n < 2; n++)
    for (int i = 0; i < 4; i++) {
      unsigned long long w = __shfl_sync(POC_FULL_MASK, b01, 4 * (2 * t + n) + i);
      unsigned w0 = (unsigned)w, w1 = (unsigned)(w >> 32);
      bc[n][2 * i] = bf2f((bf16)(w0 & 0xffffu));
      bc[n][2 * i + 1] = bf2f((bf16)(w0 >> 16));
      bc[n][2 * i + 8] = bf2f((bf16)(w1 & 0xffffu));
      bc[n][2 * i + 9] = bf2f((bf16)(w1 >> 16));
    }
  for (int r = 0; r < 2; r++)
    for (int n = 0; n < 2; n++) {
      float s = 0.f;
      for (int k = 0; k < 16; k++) s += ar[r][k] * bc[n][k];
      c[2 * r + n] += s;
    }
#else
  asm volatile(
      "mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 "
      "{%0, %1, %2, %3}, {%4, %5, %6, %7}, {%8, %9}, {%0, %1, %2, %3};\n"
      : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
      : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b[0]), "r"(b[1]));
#endif
}

/* The C fragments of two adjacent 16×8 tiles (columns 16j..16j+7 and 16j+8..16j+15 of a
 * 16-row result), rounded to bf16, as the A fragment of that 16×16 block (see above). */
__device__ __forceinline__ void mma_c_to_a(unsigned a[4], const float c0[4], const float c1[4]) {
  a[0] = pack_bf16x2(c0[0], c0[1]);
  a[1] = pack_bf16x2(c0[2], c0[3]);
  a[2] = pack_bf16x2(c1[0], c1[1]);
  a[3] = pack_bf16x2(c1[2], c1[3]);
}

/* ---- asynchronous global → shared copies (cp.async, sm_80+) ----------------------------
 *
 * cp_async16 starts a 16-byte copy (both addresses 16-byte aligned); cp_async_commit closes
 * the thread's current group of copies; cp_async_wait<N>() waits until at most N of the
 * thread's committed groups are still in flight. Other threads see the data after the wait
 * and a __syncthreads. Under the emulation a copy is deferred to the wait that completes
 * it (a queue per thread), so a kernel that reads a tile before waiting for it reads stale
 * shared memory there too; on GPUs before sm_80 the copies are plain loads and stores. */
#if defined(POC_CUDA_EMUL_H)
#define POC_CPA_MAX 64
struct poc_cpa_op {
  void *dst;
  const void *src;
  int group;
};
/* per thread of the running block (the emulation runs blocks one at a time) */
static poc_cpa_op poc_cpa_q[1024][POC_CPA_MAX];
static int poc_cpa_n[1024], poc_cpa_open[1024];
__device__ __forceinline__ int poc_cpa_tid() {
  return threadIdx.x + blockDim.x * (threadIdx.y + blockDim.y * threadIdx.z);
}
__device__ __forceinline__ void cp_async16(void *dst, const void *src) {
  const int i = poc_cpa_tid();
  if (poc_cpa_n[i] == POC_CPA_MAX) __trap();
  poc_cpa_q[i][poc_cpa_n[i]++] = poc_cpa_op{dst, src, poc_cpa_open[i]};
}
__device__ __forceinline__ void cp_async_commit() { poc_cpa_open[poc_cpa_tid()]++; }
template <int N> __device__ __forceinline__ void cp_async_wait() {
  /* the committed groups numbered below open − N are complete; copies not yet committed
     (group = open) stay pending, as on the device */
  const int i = poc_cpa_tid(), done = poc_cpa_open[i] - N;
  int keep = 0;
  for (int e = 0; e < poc_cpa_n[i]; e++) {
    poc_cpa_op o = poc_cpa_q[i][e];
    if (o.group < done) memcpy(o.dst, o.src, 16);
    else poc_cpa_q[i][keep++] = o;
  }
  poc_cpa_n[i] = keep;
}
#elif defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 800
__device__ __forceinline__ void cp_async16(void *dst, const void *src) {
  unsigned s; /* the shared-window address of dst */
  asm volatile("{ .reg .u64 p; cvta.to.shared.u64 p, %1; cvt.u32.u64 %0, p; }\n"
               : "=r"(s)
               : "l"(dst));
  asm volatile("cp.async.cg.shared.global [%0], [%1], 16;\n" ::"r"(s), "l"(src) : "memory");
}
__device__ __forceinline__ void cp_async_commit() {
  asm volatile("cp.async.commit_group;\n" ::: "memory");
}
template <int N> __device__ __forceinline__ void cp_async_wait() {
  asm volatile("cp.async.wait_group %0;\n" ::"n"(N) : "memory");
}
#else
__device__ __forceinline__ void cp_async16(void *dst, const void *src) {
  *(uint4 *)dst = *(const uint4 *)src;
}
__device__ __forceinline__ void cp_async_commit() {}
template <int N> __device__ __forceinline__ void cp_async_wait() {}
#endif

#endif
