/* test_cuda_emul.c — the CUDA emulation catches what it claims to catch.
 *
 * Runs through the backend's own loader tables (cu, nv, cb) with POC_CUDA_EMULATE set by
 * ctest, and through poc_cuda_compile/poc_cuda_load, so the path is the backend's:
 *   - a block that reads its neighbour's shared-memory slot without __syncthreads gets
 *     wrong numbers, different from run to run; with the barrier, exact ones;
 *   - block_sum (poc_common.cuh) over several blocks is exact and the same every run;
 *   - threads at two different __syncthreads, lanes at two different shuffles, lanes that
 *     return while their warp waits, launches beyond __launch_bounds__, stray pointers and
 *     out-of-range copies are errors with messages;
 *   - a compile error comes back as NVRTC's would;
 *   - cublasGemmEx matches a double-precision reference for every transpose and output type.
 */
#include <dlfcn.h>
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "check.h"
#include "cuda_internal.h"

static const char *emu_src =
    "#define POC_H 64\n#define POC_F 64\n#define POC_V 64\n#define POC_NH 1\n#define POC_NKV 1\n"
    "#define POC_HD 16\n#define POC_EPS 1e-5f\n"
    "#include \"poc_common.cuh\"\n"
    "extern \"C\" __global__ void neighbour(const float *in, float *out, int sync) {\n"
    "  __shared__ float sh[128];\n"
    "  int t = threadIdx.x, n = blockDim.x;\n"
    "  sh[t] = in[blockIdx.x * n + t];\n"
    "  if (sync) __syncthreads();\n"
    "  out[blockIdx.x * n + t] = sh[(t + 1) % n];\n"
    "}\n"
    "extern \"C\" __global__ void reduce(const float *in, float *out) {\n"
    "  __shared__ float sh[32];\n"
    "  float v = in[blockIdx.x * blockDim.x + threadIdx.x];\n"
    "  float s = block_sum(v, sh), m = block_max(v, sh);\n"
    "  if (threadIdx.x == 0) { out[2 * blockIdx.x] = s; out[2 * blockIdx.x + 1] = m; }\n"
    "}\n"
    "extern \"C\" __global__ void two_barriers(float *out) {\n"
    "  if (threadIdx.x < 32) __syncthreads();\n"
    "  else __syncthreads();\n"
    "  out[threadIdx.x] = 1.f;\n"
    "}\n"
    "extern \"C\" __global__ void two_shuffles(float *out) {\n"
    "  float v = threadIdx.x;\n"
    "  if (threadIdx.x & 1) v = __shfl_xor_sync(0xffffffffu, v, 1);\n"
    "  else v = __shfl_xor_sync(0xffffffffu, v, 2);\n"
    "  out[threadIdx.x] = v;\n"
    "}\n"
    "extern \"C\" __global__ void half_warp(float *out) {\n"
    "  if (threadIdx.x >= 16) return;\n"
    "  out[threadIdx.x] = __shfl_down_sync(0xffffffffu, 1.f, 1);\n"
    "}\n"
    "extern \"C\" __global__ void __launch_bounds__(64) bounded(float *out) {\n"
    "  out[threadIdx.x] = (float)__ballot_sync(0xffffffffu, threadIdx.x & 1);\n"
    "}\n";

static CUmodule mod;
static char err[POC_ERR_LEN];

static CUfunction fn(const char *name) {
  CUfunction f = NULL;
  CHECK_MSG(cu.cuModuleGetFunction(&f, mod, name) == CUDA_SUCCESS, "kernel %s", name);
  return f;
}

static const char *last_error(void) {
  const char *(*f)(void) = (const char *(*)(void))dlsym(cu.lib, "poc_cuemu_last_error");
  return f ? f() : "";
}

/* A kernel fault is sticky, as on a device: the context is reset to go on. */
static CUcontext ctx;
static void reset(void) {
  cu.cuDevicePrimaryCtxRelease(0);
  CHECK(cu.cuDevicePrimaryCtxRetain(&ctx, 0) == CUDA_SUCCESS);
  CHECK(cu.cuCtxSetCurrent(ctx) == CUDA_SUCCESS);
}

static void test_barriers(void) {
  enum { B = 4, N = 128 };
  float in[B * N], out[B * N];
  for (int i = 0; i < B * N; i++) in[i] = (float)(i + 1);
  CUdeviceptr din, dout;
  CHECK(cu.cuMemAlloc(&din, sizeof in) == 0 && cu.cuMemAlloc(&dout, sizeof out) == 0);
  CHECK(cu.cuMemcpyHtoD(din, in, sizeof in) == 0);
  CUfunction f = fn("neighbour");
  int wrong_runs = 0, differ = 0;
  float first[B * N];
  for (int run = 0; run < 4; run++) {
    int sync = 0;
    void *args[] = {&din, &dout, &sync};
    CHECK(cu.cuLaunchKernel(f, B, 1, 1, N, 1, 1, 0, NULL, args, NULL) == CUDA_SUCCESS);
    CHECK(cu.cuMemcpyDtoH(out, dout, sizeof out) == 0);
    int wrong = 0;
    for (int b = 0; b < B; b++)
      for (int t = 0; t < N; t++) wrong += !(out[b * N + t] == in[b * N + (t + 1) % N]);
    wrong_runs += wrong > 0;
    if (run == 0) memcpy(first, out, sizeof out);
    else differ |= memcmp(first, out, sizeof out) != 0;
    if (run == 0) printf("missing barrier: %d of %d reads wrong\n", wrong, B * N);
  }
  CHECK_MSG(wrong_runs == 4, "a missing __syncthreads went unnoticed in %d of 4 runs", 4 - wrong_runs);
  CHECK_MSG(differ, "a missing __syncthreads gave the same numbers every run");
  int sync = 1;
  void *args[] = {&din, &dout, &sync};
  CHECK(cu.cuLaunchKernel(f, B, 1, 1, N, 1, 1, 0, NULL, args, NULL) == CUDA_SUCCESS);
  CHECK(cu.cuMemcpyDtoH(out, dout, sizeof out) == 0);
  int wrong = 0;
  for (int b = 0; b < B; b++)
    for (int t = 0; t < N; t++) wrong += out[b * N + t] != in[b * N + (t + 1) % N];
  CHECK_MSG(wrong == 0, "with the barrier %d reads are wrong", wrong);
  cu.cuMemFree(din);
  cu.cuMemFree(dout);
}

static void test_reduce(void) {
  enum { B = 5, N = 256 };
  float in[B * N], out[2 * B], again[2 * B];
  for (int i = 0; i < B * N; i++) in[i] = (float)((i * 37) % 101 - 50); /* exact sums */
  CUdeviceptr din, dout;
  CHECK(cu.cuMemAlloc(&din, sizeof in) == 0 && cu.cuMemAlloc(&dout, sizeof out) == 0);
  CHECK(cu.cuMemcpyHtoD(din, in, sizeof in) == 0);
  void *args[] = {&din, &dout};
  for (int run = 0; run < 3; run++) {
    CHECK(cu.cuLaunchKernel(fn("reduce"), B, 1, 1, N, 1, 1, 0, NULL, args, NULL) == CUDA_SUCCESS);
    CHECK(cu.cuMemcpyDtoH(run ? again : out, dout, sizeof out) == 0);
    if (run) CHECK(!memcmp(out, again, sizeof out));
  }
  for (int b = 0; b < B; b++) {
    float s = 0, m = -INFINITY;
    for (int t = 0; t < N; t++) s += in[b * N + t], m = fmaxf(m, in[b * N + t]);
    CHECK_MSG(out[2 * b] == s && out[2 * b + 1] == m, "block %d: sum %g (want %g), max %g (want %g)",
              b, out[2 * b], s, out[2 * b + 1], m);
  }
  cu.cuMemFree(din);
  cu.cuMemFree(dout);
}

/* a launch that must fail with `want`, reporting `msg` */
static void expect_fault(const char *kernel, unsigned threads, CUresult want, const char *msg) {
  CUdeviceptr d;
  CHECK(cu.cuMemAlloc(&d, 4096) == 0);
  void *args[] = {&d};
  CUresult r = cu.cuLaunchKernel(fn(kernel), 1, 1, 1, threads, 1, 1, 0, NULL, args, NULL);
  CHECK_MSG(r == want, "%s: got %s", kernel, cu_errstr(r));
  CHECK_MSG(strstr(last_error(), msg) && strstr(last_error(), kernel), "%s: message '%s'", kernel,
            last_error());
  reset();
  cu.cuMemFree(d);
}

static void test_faults(void) {
  expect_fault("two_barriers", 64, CUDA_ERROR_LAUNCH_FAILED, "barrier divergence");
  expect_fault("two_shuffles", 32, CUDA_ERROR_LAUNCH_FAILED, "warp divergence");
  expect_fault("half_warp", 32, CUDA_ERROR_LAUNCH_FAILED, "deadlock");
  expect_fault("bounded", 128, CUDA_ERROR_LAUNCH_OUT_OF_RESOURCES, "__launch_bounds__");
  /* the ballot itself, within bounds */
  CUdeviceptr d;
  float out[64];
  CHECK(cu.cuMemAlloc(&d, sizeof out) == 0);
  void *args[] = {&d};
  CHECK(cu.cuLaunchKernel(fn("bounded"), 1, 1, 1, 64, 1, 1, 0, NULL, args, NULL) == 0);
  CHECK(cu.cuMemcpyDtoH(out, d, sizeof out) == 0);
  CHECK(out[0] == (float)0xaaaaaaaau && out[63] == (float)0xaaaaaaaau);
  /* memory: copies past an allocation, into freed memory, stray kernel pointers */
  char host[512];
  CHECK(cu.cuMemcpyHtoD(d, host, sizeof out + 1) == CUDA_ERROR_INVALID_VALUE);
  CHECK(strstr(last_error(), "past the end") != NULL);
  CHECK(cu.cuMemcpyDtoH(host, d + 8, sizeof out - 8) == CUDA_SUCCESS);
  CUdeviceptr stray = (CUdeviceptr)(uintptr_t)host;
  void *sargs[] = {&stray};
  CHECK(cu.cuLaunchKernel(fn("bounded"), 1, 1, 1, 64, 1, 1, 0, NULL, sargs, NULL) ==
        CUDA_ERROR_ILLEGAL_ADDRESS);
  CHECK(strstr(last_error(), "pointer argument 0") != NULL);
  CHECK(cu.cuCtxSynchronize() == CUDA_ERROR_ILLEGAL_ADDRESS); /* sticky */
  reset();
  CHECK(cu.cuMemFree(d) == CUDA_SUCCESS);
  CHECK(cu.cuMemcpyDtoH(host, d, 4) == CUDA_ERROR_INVALID_VALUE);
  CHECK(cu.cuMemFree(d) == CUDA_ERROR_INVALID_VALUE);
}

/* Streams and events (for a library such as NCCL): handles are checked, work is complete
 * at once, kernels stay on the default stream. */
static void test_streams(void) {
  CUresult (*sc)(CUstream *, unsigned), (*sd)(CUstream), (*sq)(CUstream);
  CUresult (*ec)(CUevent *, unsigned), (*ed)(CUevent), (*er)(CUevent, CUstream);
  CUresult (*sw)(CUstream, CUevent, unsigned), (*cc)(CUcontext *);
  int (*live)(const void *);
  *(void **)&sc = dlsym(cu.lib, "cuStreamCreate");
  *(void **)&sd = dlsym(cu.lib, "cuStreamDestroy_v2");
  *(void **)&sq = dlsym(cu.lib, "cuStreamQuery");
  *(void **)&ec = dlsym(cu.lib, "cuEventCreate");
  *(void **)&ed = dlsym(cu.lib, "cuEventDestroy_v2");
  *(void **)&er = dlsym(cu.lib, "cuEventRecord");
  *(void **)&sw = dlsym(cu.lib, "cuStreamWaitEvent");
  *(void **)&cc = dlsym(cu.lib, "cuCtxGetCurrent");
  *(void **)&live = dlsym(cu.lib, "poc_cuemu_stream_live");
  CHECK(sc && sd && sq && ec && ed && er && sw && cc && live);
  if (!(sc && sd && sq && ec && ed && er && sw && cc && live)) return;
  CUcontext cur = NULL;
  CHECK(cc(&cur) == CUDA_SUCCESS && cur == ctx);
  CUstream s = NULL;
  CUevent e = NULL;
  CHECK(sc(&s, CU_STREAM_NON_BLOCKING) == CUDA_SUCCESS && s);
  CHECK(sc(&s, 0x80) == CUDA_ERROR_INVALID_VALUE);
  CHECK(ec(&e, CU_EVENT_DISABLE_TIMING) == CUDA_SUCCESS && e);
  CHECK(live(s) && live(NULL));
  CHECK(er(e, NULL) == CUDA_SUCCESS && sw(s, e, 0) == CUDA_SUCCESS);
  CHECK(er(e, s) == CUDA_SUCCESS && sw(NULL, e, 0) == CUDA_SUCCESS);
  CHECK(sq(s) == CUDA_SUCCESS && sq(NULL) == CUDA_SUCCESS);
  CHECK(sw(s, e, 1) == CUDA_ERROR_INVALID_VALUE);
  /* a kernel on another stream is refused */
  CUdeviceptr d;
  CHECK(cu.cuMemAlloc(&d, 256) == 0);
  void *args[] = {&d};
  CHECK(cu.cuLaunchKernel(fn("bounded"), 1, 1, 1, 32, 1, 1, 0, s, args, NULL) != CUDA_SUCCESS);
  reset();
  CHECK(sc(&s, 0) == CUDA_SUCCESS);
  CHECK(sd(s) == CUDA_SUCCESS);
  CHECK(!live(s) && sq(s) == CUDA_ERROR_INVALID_HANDLE && sd(s) == CUDA_ERROR_INVALID_HANDLE);
  CHECK(strstr(last_error(), "not a live stream") != NULL);
  CHECK(ed(e) == CUDA_SUCCESS && er(e, NULL) == CUDA_ERROR_INVALID_HANDLE);
  CHECK(strstr(last_error(), "not a live event") != NULL);
  cu.cuMemFree(d);
}

static void test_nvrtc_errors(void) {
  const char *archs[] = {"sm_90"};
  poc_cuda_image img;
  char *log = NULL;
  CHECK(poc_cuda_compile("extern \"C\" __global__ void k(float *x) { x[0] = undeclared; }\n",
                         "broken.cu", archs, 1, &img, &log) == -1);
  CHECK_MSG(log && strstr(log, "NVRTC_ERROR_COMPILATION") && strstr(log, "undeclared"), "log: %s",
            log ? log : "(none)");
  free(log);
  /* a cubin for another architecture does not load; PTX for a lower one does */
  const char *a80[] = {"sm_80"};
  CHECK(poc_cuda_compile("extern \"C\" __global__ void k(float *x) { x[0] = 1.f; }\n", "ok.cu",
                         a80, 1, &img, &log) == 0);
  free(log);
  void *m = NULL;
  CHECK(img.n == 2 && !img.blob[0].is_ptx && img.blob[1].is_ptx);
  CHECK(poc_cuda_load(&img, &m, err) == 0); /* picks compute_80 PTX */
  if (m) cu.cuModuleUnload(m);
  img.n = 1; /* the cubin alone */
  CHECK(poc_cuda_load(&img, &m, err) == -1);
  img.n = 2;
  poc_cuda_image_free(&img);
}

/* cublasGemmEx against double loops, column-major, every transpose, fp32 and bf16 out */
static uint16_t f2bf(float f) {
  uint32_t u;
  memcpy(&u, &f, 4);
  u += 0x7fffu + ((u >> 16) & 1u);
  return (uint16_t)(u >> 16);
}
static float bf2f(uint16_t b) {
  uint32_t u = (uint32_t)b << 16;
  float f;
  memcpy(&f, &u, 4);
  return f;
}

static void test_gemm(void) {
  cublasHandle_t h;
  CHECK(cb.cublasCreate(&h) == CUBLAS_STATUS_SUCCESS);
  enum { M = 13, N = 7, K = 21, LD = 24 };
  uint16_t A[LD * LD], B[LD * LD];
  for (int i = 0; i < LD * LD; i++) {
    A[i] = f2bf((float)((i * 7) % 11) / 8 - 0.5f);
    B[i] = f2bf((float)((i * 5) % 13) / 8 - 0.75f);
  }
  CUdeviceptr dA, dB, dC;
  CHECK(cu.cuMemAlloc(&dA, sizeof A) == 0 && cu.cuMemAlloc(&dB, sizeof B) == 0 &&
        cu.cuMemAlloc(&dC, LD * LD * 4) == 0);
  CHECK(cu.cuMemcpyHtoD(dA, A, sizeof A) == 0 && cu.cuMemcpyHtoD(dB, B, sizeof B) == 0);
  for (int ta = 0; ta < 2; ta++)
    for (int tb = 0; tb < 2; tb++)
      for (int f32 = 0; f32 < 2; f32++) {
        float C0[LD * LD], C[LD * LD], al = 1.5f, be = f32 ? 1.f : 0.f;
        for (int i = 0; i < LD * LD; i++) C0[i] = (float)(i % 5) - 2;
        if (f32) CHECK(cu.cuMemcpyHtoD(dC, C0, sizeof C0) == 0);
        cublasStatus_t s = cb.cublasGemmEx(h, ta ? CUBLAS_OP_T : CUBLAS_OP_N, tb ? CUBLAS_OP_T : CUBLAS_OP_N,
                                           M, N, K, &al, (void *)dA, CUDA_R_16BF, LD, (void *)dB,
                                           CUDA_R_16BF, LD, &be, (void *)dC,
                                           f32 ? CUDA_R_32F : CUDA_R_16BF, LD, CUBLAS_COMPUTE_32F,
                                           CUBLAS_GEMM_DEFAULT);
        CHECK(s == CUBLAS_STATUS_SUCCESS);
        if (f32) {
          CHECK(cu.cuMemcpyDtoH(C, dC, sizeof C) == 0);
        } else {
          uint16_t c16[LD * LD];
          CHECK(cu.cuMemcpyDtoH(c16, dC, sizeof c16) == 0);
          for (int i = 0; i < LD * LD; i++) C[i] = bf2f(c16[i]);
        }
        double worst = 0;
        for (int j = 0; j < N; j++)
          for (int i = 0; i < M; i++) {
            double acc = 0;
            for (int l = 0; l < K; l++)
              acc += (double)bf2f(ta ? A[l + i * LD] : A[i + l * LD]) *
                     bf2f(tb ? B[j + l * LD] : B[l + j * LD]);
            double want = al * acc + be * C0[i + j * LD];
            double got = C[i + j * LD], e = fabs(got - want) / (fabs(want) + 1);
            if (e > worst) worst = e;
          }
        CHECK_MSG(worst < (f32 ? 1e-6 : 4e-3), "gemm ta %d tb %d f32 %d: error %g", ta, tb, f32, worst);
      }
  /* an operand that runs past its allocation is refused */
  float al = 1, be = 0;
  CHECK(cb.cublasGemmEx(h, CUBLAS_OP_N, CUBLAS_OP_N, LD, LD, LD + 1, &al, (void *)dA, CUDA_R_16BF,
                        LD, (void *)dB, CUDA_R_16BF, LD + 1, &be, (void *)dC, CUDA_R_32F, LD,
                        CUBLAS_COMPUTE_32F, CUBLAS_GEMM_DEFAULT) == CUBLAS_STATUS_INVALID_VALUE);
  CHECK(cb.cublasDestroy(h) == CUBLAS_STATUS_SUCCESS);
  cu.cuMemFree(dA);
  cu.cuMemFree(dB);
  cu.cuMemFree(dC);
}

int main(void) {
  const char *emu = getenv("POC_CUDA_EMULATE");
  if (!emu || !*emu) {
    fprintf(stderr, "test_cuda_emul: run it through ctest (POC_CUDA_EMULATE names the emulation)\n");
    return 1;
  }
  CHECK_MSG(cu_driver_load(err) == 0 && cu_nvrtc_load(err) == 0 && cu_cublas_load(err) == 0, "%s", err);
  CHECK(cu.lib && cu.cuInit(0) == CUDA_SUCCESS);
  CHECK(cu.cuDevicePrimaryCtxRetain(&ctx, 0) == CUDA_SUCCESS && cu.cuCtxSetCurrent(ctx) == 0);
  const char *archs[] = {"sm_90"};
  poc_cuda_image img;
  char *log = NULL;
  int rc = poc_cuda_compile(emu_src, "emul_selftest.cu", archs, 1, &img, &log);
  CHECK_MSG(rc == 0, "%s", log ? log : "");
  free(log);
  void *m = NULL;
  CHECK_MSG(rc == 0 && poc_cuda_load(&img, &m, err) == 0, "%s", err);
  poc_cuda_image_free(&img);
  mod = m;
  if (mod) {
    test_barriers();
    test_reduce();
    test_faults();
    test_streams();
    cu.cuModuleUnload(mod);
  }
  test_nvrtc_errors();
  test_gemm();
  cu.cuDevicePrimaryCtxRelease(0);
  return check_summary("cuda_emul_self");
}
