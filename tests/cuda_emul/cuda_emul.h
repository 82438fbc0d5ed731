/* cuda_emul.h — CUDA device code as host C++, for the test-only CUDA emulation.
 *
 * The NVRTC stand-in (cuemu_nvrtc.c) compiles the very source poc hands NVRTC with
 * `c++ -std=c++17 -O1 -shared -fPIC -include cuda_emul.h`. This header turns the CUDA
 * dialect the kernel templates use into C++ and routes everything that makes threads
 * interact — __syncthreads, the warp shuffles and votes — to the scheduler in
 * cuemu_driver.c, which runs each CUDA thread as a fibre.
 *
 *   threadIdx, blockIdx, blockDim, gridDim   the running fibre's, kept in emu_rt by the
 *                                            scheduler at every switch
 *   __shared__                               `static` in a section of its own: blocks run
 *                                            one after another, so one copy is the block's
 *                                            shared memory; the scheduler fills it with
 *                                            0xff bytes (NaN) before each block
 *   __syncthreads()                          a checked barrier (every live thread, one call
 *                                            site)
 *   __shfl_*_sync, __ballot_sync, ...        warp-synchronous: all lanes of the mask meet
 *                                            at the call and exchange values there
 *
 * The part before `#ifdef __cplusplus` is plain C: the scheduler includes it for emu_rt.
 */
#ifndef POC_CUDA_EMUL_H
#define POC_CUDA_EMUL_H

#include <stdint.h>

typedef struct { unsigned x, y, z; } poc_emu_uint3;

/* Warp operations: all lanes named by the mask meet; each lane gets its result there. */
enum { POC_EMU_SHFL_IDX, POC_EMU_SHFL_XOR, POC_EMU_SHFL_DOWN, POC_EMU_SHFL_UP, POC_EMU_BALLOT,
       POC_EMU_SYNCWARP };

/* Modes of a kernel's registered launcher, poc_emu_kernel_NAME(mode, args). */
enum { POC_EMU_RUN, POC_EMU_CHECK, POC_EMU_BOUND, POC_EMU_SHARED };

/* What kernel code sees of the scheduler. The scheduler sets the module's poc_emu_rt_ptr
 * when it loads the module. */
typedef struct poc_emu_rt {
  poc_emu_uint3 tid, bid, bdim, gdim; /* the running thread's */
  void (*sync)(const char *file, int line);
  uint64_t (*warp)(int op, unsigned mask, uint64_t v, int arg, int width, const char *file,
                   int line);
  int (*check_ptr)(const void *p, int arg); /* a pointer argument of a launch */
  void (*trap)(const char *what, const char *file, int line);
} poc_emu_rt;

#ifdef __cplusplus

#include <cmath>
#include <cstddef>
#include <cstring>
#include <type_traits>
#include <utility>

extern "C" {
poc_emu_rt *poc_emu_rt_ptr;
/* the bounds of the module's __shared__ variables, for poisoning between blocks */
extern char __start_poc_emu_shared[] __attribute__((weak, visibility("hidden")));
extern char __stop_poc_emu_shared[] __attribute__((weak, visibility("hidden")));
void poc_emu_shared_range(char **b, char **e) {
  *b = __start_poc_emu_shared;
  *e = __stop_poc_emu_shared;
}
}

#define __global__
#define __device__
#define __host__
#define __constant__ static const
#define __forceinline__ inline
#define __noinline__ __attribute__((noinline))
#define __launch_bounds__(...)
#define __align__(n) __attribute__((aligned(n)))
#define __shared__ static __attribute__((section("poc_emu_shared")))

struct dim3 {
  unsigned x, y, z;
  dim3(unsigned a = 1, unsigned b = 1, unsigned c = 1) : x(a), y(b), z(c) {}
};
typedef poc_emu_uint3 uint3;

#define threadIdx (poc_emu_rt_ptr->tid)
#define blockIdx (poc_emu_rt_ptr->bid)
#define blockDim (poc_emu_rt_ptr->bdim)
#define gridDim (poc_emu_rt_ptr->gdim)
#define warpSize 32

#define __syncthreads() poc_emu_rt_ptr->sync(__FILE__, __LINE__)
#define __syncwarp(...) poc_emu_syncwarp(__FILE__, __LINE__, ##__VA_ARGS__)
#define __trap() poc_emu_rt_ptr->trap("__trap()", __FILE__, __LINE__)
#undef assert
#define assert(c) ((c) ? (void)0 : poc_emu_rt_ptr->trap("assert(" #c ")", __FILE__, __LINE__))

/* values cross lanes as their 64-bit pattern */
template <class T> static inline uint64_t poc_emu_bits(T v) {
  static_assert(sizeof(T) <= 8 && std::is_trivially_copyable<T>::value, "shuffle of a large type");
  uint64_t u = 0;
  std::memcpy(&u, &v, sizeof v);
  return u;
}
template <class T> static inline T poc_emu_from_bits(uint64_t u) {
  T v;
  std::memcpy(&v, &u, sizeof v);
  return v;
}

static inline void poc_emu_syncwarp(const char *f, int l, unsigned mask = 0xffffffffu) {
  poc_emu_rt_ptr->warp(POC_EMU_SYNCWARP, mask, 0, 0, 32, f, l);
}

#define POC_EMU_SHFL(name, op)                                                               \
  template <class T> static inline T poc_emu_##name(const char *f, int l, unsigned mask, T v, \
                                                     int a, int width = 32) {                 \
    return poc_emu_from_bits<T>(poc_emu_rt_ptr->warp(op, mask, poc_emu_bits(v), a, width, f, l)); \
  }
POC_EMU_SHFL(shfl, POC_EMU_SHFL_IDX)
POC_EMU_SHFL(shfl_xor, POC_EMU_SHFL_XOR)
POC_EMU_SHFL(shfl_down, POC_EMU_SHFL_DOWN)
POC_EMU_SHFL(shfl_up, POC_EMU_SHFL_UP)
#undef POC_EMU_SHFL
#define __shfl_sync(...) poc_emu_shfl(__FILE__, __LINE__, __VA_ARGS__)
#define __shfl_xor_sync(...) poc_emu_shfl_xor(__FILE__, __LINE__, __VA_ARGS__)
#define __shfl_down_sync(...) poc_emu_shfl_down(__FILE__, __LINE__, __VA_ARGS__)
#define __shfl_up_sync(...) poc_emu_shfl_up(__FILE__, __LINE__, __VA_ARGS__)
#define __ballot_sync(mask, p) \
  ((unsigned)poc_emu_rt_ptr->warp(POC_EMU_BALLOT, (mask), (p) ? 1 : 0, 0, 32, __FILE__, __LINE__))
#define __any_sync(mask, p) (__ballot_sync(mask, p) != 0u)
#define __all_sync(mask, p) (__ballot_sync(mask, p) == (unsigned)(mask))

/* One OS thread runs every fibre and switches only inside sync/warp calls, so plain
 * read-modify-writes are atomic here. */
template <class T> static inline T atomicAdd(T *p, T v) {
  T o = *p;
  *p = o + v;
  return o;
}
template <class T> static inline T atomicMax(T *p, T v) {
  T o = *p;
  *p = o > v ? o : v;
  return o;
}
template <class T> static inline T atomicMin(T *p, T v) {
  T o = *p;
  *p = o < v ? o : v;
  return o;
}
template <class T> static inline T atomicExch(T *p, T v) {
  T o = *p;
  *p = v;
  return o;
}
template <class T> static inline T atomicCAS(T *p, T cmp, T v) {
  T o = *p;
  if (o == cmp) *p = v;
  return o;
}

static inline float poc_emu_int_as_float(int i) { return poc_emu_from_bits<float>((uint32_t)i); }
static inline float poc_emu_uint_as_float(unsigned u) { return poc_emu_from_bits<float>(u); }
static inline int poc_emu_float_as_int(float f) { return (int)(uint32_t)poc_emu_bits(f); }
static inline unsigned poc_emu_float_as_uint(float f) { return (unsigned)poc_emu_bits(f); }

/* The intrinsics compute what their precise counterparts do: the emulation checks logic,
 * not the device's fast-math error. */
static inline float poc_emu_expf(float x) { return expf(x); }
static inline float poc_emu_logf(float x) { return logf(x); }
static inline float poc_emu_log2f(float x) { return log2f(x); }
static inline float poc_emu_sinf(float x) { return sinf(x); }
static inline float poc_emu_cosf(float x) { return cosf(x); }
static inline float poc_emu_powf(float x, float y) { return powf(x, y); }
static inline float poc_emu_fdividef(float x, float y) { return x / y; }
static inline float poc_emu_frcp_rn(float x) { return 1.f / x; }
static inline float poc_emu_fsqrt_rn(float x) { return sqrtf(x); }
static inline float rsqrtf(float x) { return 1.f / sqrtf(x); }
static inline double rsqrt(double x) { return 1.0 / sqrt(x); }
static inline float poc_emu_saturatef(float x) { return x < 0.f ? 0.f : x > 1.f ? 1.f : x; }
static inline float poc_emu_fmaf_rn(float a, float b, float c) { return fmaf(a, b, c); }
static inline int poc_emu_popc(unsigned x) { return __builtin_popcount(x); }
static inline int poc_emu_ffs(int x) { return __builtin_ffs(x); }
static inline int poc_emu_clz(int x) { return x ? __builtin_clz((unsigned)x) : 32; }
/* glibc declares some of these names itself: macros avoid the clash */
#define __expf poc_emu_expf
#define __logf poc_emu_logf
#define __log2f poc_emu_log2f
#define __sinf poc_emu_sinf
#define __cosf poc_emu_cosf
#define __powf poc_emu_powf
#define __fdividef poc_emu_fdividef
#define __frcp_rn poc_emu_frcp_rn
#define __fsqrt_rn poc_emu_fsqrt_rn
#define __saturatef poc_emu_saturatef
#define __fmaf_rn poc_emu_fmaf_rn
#define __popc poc_emu_popc
#define __ffs poc_emu_ffs
#define __clz poc_emu_clz
#define __int_as_float poc_emu_int_as_float
#define __uint_as_float poc_emu_uint_as_float
#define __float_as_int poc_emu_float_as_int
#define __float_as_uint poc_emu_float_as_uint
static inline int min(int a, int b) { return a < b ? a : b; }
static inline int max(int a, int b) { return a > b ? a : b; }
static inline unsigned min(unsigned a, unsigned b) { return a < b ? a : b; }
static inline unsigned max(unsigned a, unsigned b) { return a > b ? a : b; }
static inline long long min(long long a, long long b) { return a < b ? a : b; }
static inline long long max(long long a, long long b) { return a > b ? a : b; }
static inline unsigned long long min(unsigned long long a, unsigned long long b) { return a < b ? a : b; }
static inline unsigned long long max(unsigned long long a, unsigned long long b) { return a > b ? a : b; }
static inline float min(float a, float b) { return fminf(a, b); }
static inline float max(float a, float b) { return fmaxf(a, b); }

/* The launcher registered for each kernel (the NVRTC stand-in appends one per
 * `extern "C" __global__` definition): unpacks cuLaunchKernel's void **args by the
 * kernel's own parameter types. */
template <class T> static inline int poc_emu_check_arg(void *a, int i) {
  if (!a) return poc_emu_rt_ptr->check_ptr(nullptr, -1 - i); /* a missing argument slot */
  if constexpr (std::is_pointer<T>::value) return poc_emu_rt_ptr->check_ptr(*(void **)a, i);
  return 0;
}
template <class... A, std::size_t... I>
static inline int poc_emu_call(void (*f)(A...), int mode, void **args, std::index_sequence<I...>) {
  if (mode == POC_EMU_CHECK) {
    int bad = 0;
    ((bad |= poc_emu_check_arg<std::decay_t<A>>(args[I], (int)I)), ...);
    return bad;
  }
  f(*static_cast<std::decay_t<A> *>(args[I])...);
  return 0;
}
template <class... A>
static inline int poc_emu_launch(void (*f)(A...), int mode, void **args, int bound,
                                 int uses_shared) {
  if (mode == POC_EMU_BOUND) return bound;        /* __launch_bounds__, 0 when none */
  if (mode == POC_EMU_SHARED) return uses_shared; /* its body declares __shared__ */
  return poc_emu_call(f, mode, args, std::index_sequence_for<A...>{});
}

#endif /* __cplusplus */
#endif
