/* cpu_dnnl.c — the bf16 CPU device's GEMMs: oneDNN's matmul primitive (C API).
 *
 * C[M×N] = op(A)·op(B) + beta·C with A, B bf16 and C f32 or bf16. Row-major operands with
 * row strides lda/ldb/ldc are described to oneDNN by strides alone, so a transpose costs
 * nothing: op(A) = Aᵀ is the [M×K] view with strides (1, lda) of the stored [K×M] rows.
 * beta is a sum post-op (oneDNN reads C, adds beta·C in f32, rounds once for a bf16 C).
 * oneDNN chooses the implementation for the machine (AVX512-BF16's dot products, AMX's
 * tiles, or a conversion path on older CPUs) and threads it on OpenMP, the same pool as the
 * other kernels.
 *
 * Creating a primitive costs 0.1–1 ms (and JIT code generation), more than many of the
 * GEMMs it runs, so a kernel set caches them by (M, N, K, transposes, strides, beta, C's
 * type). The weights' dimensions are fixed and a pack's token count is the only other
 * one, so a step whose pack lengths were seen before creates nothing and a new length
 * creates its handful once. After CPU_GEMM_SHAPES distinct shapes further ones share one
 * primitive per (transposes, beta, C's type) built with oneDNN's run-time dimensions (a
 * little slower per GEMM, never recreated): the cache cannot grow without bound.
 */
#include <oneapi/dnnl/dnnl.h>
#include <oneapi/dnnl/dnnl_debug.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cpu_internal.h"

#define CPU_GEMM_SHAPES 1024
#define CPU_GEMM_BUCKETS 509

struct cpu_dnnl {
  dnnl_engine_t eng;
  dnnl_stream_t st;
};

typedef struct gemm_key {
  int M, N, K, lda, ldb, ldc; /* all -1 for a run-time-dimension primitive */
  int ta, tb, c_acc;
  float beta;
} gemm_key;

typedef struct gemm_entry {
  gemm_key key;
  dnnl_primitive_t p;
  struct gemm_entry *next;
} gemm_entry;

struct cpu_gemm_cache {
  cpu_dnnl *e;
  gemm_entry *bucket[CPU_GEMM_BUCKETS];
  int shapes;   /* fixed-shape entries */
  long created; /* primitives created */
};

static const char *dnnl_isa_name(dnnl_cpu_isa_t isa) {
  switch (isa) {
  case dnnl_cpu_isa_sse41: return "sse41";
  case dnnl_cpu_isa_avx: return "avx";
  case dnnl_cpu_isa_avx2: return "avx2";
  case dnnl_cpu_isa_avx2_vnni: return "avx2_vnni";
  case dnnl_cpu_isa_avx512_mic: return "avx512_mic";
  case dnnl_cpu_isa_avx512_mic_4ops: return "avx512_mic_4ops";
  case dnnl_cpu_isa_avx512_core: return "avx512_core";
  case dnnl_cpu_isa_avx512_core_vnni: return "avx512_core_vnni";
  case dnnl_cpu_isa_avx512_core_bf16: return "avx512_core_bf16";
  case dnnl_cpu_isa_avx512_core_amx: return "avx512_core_amx";
  default: return "isa unknown";
  }
}

/* A's, B's and C's descriptors; rt: run-time dimensions and strides (creation only) */
static dnnl_status_t gemm_mds(const gemm_key *k, int rt, dnnl_memory_desc_t *a,
                              dnnl_memory_desc_t *b, dnnl_memory_desc_t *c) {
  const dnnl_dim_t R = DNNL_RUNTIME_DIM_VAL;
  dnnl_dim_t M = rt ? R : k->M, N = rt ? R : k->N, K = rt ? R : k->K;
  dnnl_dim_t lda = rt ? R : k->lda, ldb = rt ? R : k->ldb, ldc = rt ? R : k->ldc;
  dnnl_dims_t da = {M, K}, sa = {k->ta ? 1 : lda, k->ta ? lda : 1};
  dnnl_dims_t db = {K, N}, sb = {k->tb ? 1 : ldb, k->tb ? ldb : 1};
  dnnl_dims_t dc = {M, N}, sc = {ldc, 1};
  dnnl_status_t s = dnnl_memory_desc_init_by_strides(a, 2, da, dnnl_bf16, sa);
  if (s == dnnl_success) s = dnnl_memory_desc_init_by_strides(b, 2, db, dnnl_bf16, sb);
  if (s == dnnl_success)
    s = dnnl_memory_desc_init_by_strides(c, 2, dc, k->c_acc ? dnnl_f32 : dnnl_bf16, sc);
  return s;
}

/* The primitive for key k (run-time dimensions when rt); impl, when not NULL, receives
 * oneDNN's name of the implementation it chose. */
static dnnl_status_t gemm_create(cpu_dnnl *e, const gemm_key *k, int rt, dnnl_primitive_t *p,
                                 char *impl, size_t n) {
  dnnl_memory_desc_t a, b, c;
  dnnl_matmul_desc_t md;
  dnnl_primitive_attr_t attr = NULL;
  dnnl_post_ops_t po = NULL;
  dnnl_primitive_desc_t pd = NULL;
  dnnl_status_t s = gemm_mds(k, rt, &a, &b, &c);
  if (s == dnnl_success) s = dnnl_matmul_desc_init(&md, &a, &b, NULL, &c);
  if (s == dnnl_success) s = dnnl_primitive_attr_create(&attr);
  if (s == dnnl_success && k->beta != 0.f) {
    s = dnnl_post_ops_create(&po);
    if (s == dnnl_success) s = dnnl_post_ops_append_sum(po, k->beta);
    if (s == dnnl_success) s = dnnl_primitive_attr_set_post_ops(attr, po);
  }
  if (s == dnnl_success) s = dnnl_primitive_desc_create(&pd, &md, attr, e->eng, NULL);
  if (s == dnnl_success && impl) {
    const char *name = NULL;
    if (dnnl_primitive_desc_query(pd, dnnl_query_impl_info_str, 0, &name) == dnnl_success &&
        name)
      snprintf(impl, n, "%s", name);
  }
  if (s == dnnl_success) s = dnnl_primitive_create(p, pd);
  if (pd) dnnl_primitive_desc_destroy(pd);
  if (po) dnnl_post_ops_destroy(po);
  if (attr) dnnl_primitive_attr_destroy(attr);
  return s;
}

cpu_dnnl *poc_cpu_dnnl_open(char *desc, size_t n, char *err) {
  cpu_dnnl *e = calloc(1, sizeof *e);
  if (!e) {
    snprintf(err, POC_ERR_LEN, "cpu-bf16: out of memory");
    return NULL;
  }
  dnnl_status_t s = dnnl_engine_create(&e->eng, dnnl_cpu, 0);
  if (s == dnnl_success) s = dnnl_stream_create(&e->st, e->eng, dnnl_stream_default_flags);
  /* a probe: the implementation oneDNN picks for a typical projection goes on the device
     line, so a run says whether its GEMMs use the machine's bf16 instructions */
  char impl[128] = "?";
  dnnl_primitive_t p = NULL;
  gemm_key k = {256, 1024, 1024, 1024, 1024, 1024, 0, 1, 1, 0.f};
  if (s == dnnl_success) s = gemm_create(e, &k, 0, &p, impl, sizeof impl);
  if (p) dnnl_primitive_destroy(p);
  if (s != dnnl_success) {
    snprintf(err, POC_ERR_LEN, "cpu-bf16: oneDNN cannot make a bf16 matmul here: %s",
             dnnl_status2str(s));
    poc_cpu_dnnl_close(e);
    return NULL;
  }
  const dnnl_version_t *v = dnnl_version();
  snprintf(desc, n, "oneDNN %d.%d.%d, %s, matmul %s", v->major, v->minor, v->patch,
           dnnl_isa_name(dnnl_get_effective_cpu_isa()), impl);
  return e;
}

void poc_cpu_dnnl_close(cpu_dnnl *e) {
  if (!e) return;
  if (e->st) dnnl_stream_destroy(e->st);
  if (e->eng) dnnl_engine_destroy(e->eng);
  free(e);
}

cpu_gemm_cache *poc_cpu_dnnl_cache_new(cpu_dnnl *e) {
  cpu_gemm_cache *c = calloc(1, sizeof *c);
  if (c) c->e = e;
  return c;
}

void poc_cpu_dnnl_cache_free(cpu_gemm_cache *c) {
  if (!c) return;
  for (int b = 0; b < CPU_GEMM_BUCKETS; b++)
    while (c->bucket[b]) {
      gemm_entry *x = c->bucket[b];
      c->bucket[b] = x->next;
      dnnl_primitive_destroy(x->p);
      free(x);
    }
  free(c);
}

long poc_cpu_dnnl_created(poc_kset *k) {
  cpu_gemm_cache *c = ((cpu_kset *)k)->gemms;
  return c ? c->created : 0;
}

static unsigned gemm_hash(const gemm_key *k) {
  uint32_t b;
  memcpy(&b, &k->beta, 4);
  uint64_t h = 1469598103934665603ull;
  const int v[] = {k->M, k->N, k->K, k->lda, k->ldb, k->ldc, k->ta, k->tb, k->c_acc, (int)b};
  for (size_t i = 0; i < sizeof v / sizeof v[0]; i++)
    h = (h ^ (uint32_t)v[i]) * 1099511628211ull;
  return (unsigned)(h % CPU_GEMM_BUCKETS);
}

static int gemm_key_eq(const gemm_key *a, const gemm_key *b) {
  return a->M == b->M && a->N == b->N && a->K == b->K && a->lda == b->lda &&
         a->ldb == b->ldb && a->ldc == b->ldc && a->ta == b->ta && a->tb == b->tb &&
         a->c_acc == b->c_acc && !memcmp(&a->beta, &b->beta, sizeof a->beta);
}

/* The cached primitive for k, made when missing; NULL with the device failed. */
static dnnl_primitive_t gemm_find(poc_kset *ks, cpu_gemm_cache *c, gemm_key k) {
  int rt = 0;
  for (;;) {
    unsigned h = gemm_hash(&k);
    for (gemm_entry *x = c->bucket[h]; x; x = x->next)
      if (gemm_key_eq(&x->key, &k)) return x->p;
    if (rt || c->shapes < CPU_GEMM_SHAPES) break;
    /* full: the run-time-dimension primitive of this kind */
    rt = 1;
    k.M = k.N = k.K = k.lda = k.ldb = k.ldc = -1;
  }
  gemm_entry *x = calloc(1, sizeof *x);
  dnnl_status_t s = x ? gemm_create(c->e, &k, rt, &x->p, NULL, 0) : dnnl_out_of_memory;
  if (s != dnnl_success) {
    free(x);
    poc_dev_fail(ks->d, "%s: oneDNN matmul %s%d×%d·%s%d×%d: %s", ks->d->name,
                 k.ta ? "ᵀ" : "", k.M, k.K, k.tb ? "ᵀ" : "", k.K, k.N, dnnl_status2str(s));
    return NULL;
  }
  unsigned h = gemm_hash(&k);
  x->key = k;
  x->next = c->bucket[h];
  c->bucket[h] = x;
  c->shapes += !rt;
  c->created++;
  return x->p;
}

void poc_cpu_dnnl_gemm(poc_kset *ks, int ta, int tb, int M, int N, int K, const void *A,
                       int lda, const void *B, int ldb, float beta, void *C, int c_acc,
                       int ldc) {
  cpu_gemm_cache *c = ((cpu_kset *)ks)->gemms;
  if (K <= 0) {
    /* nothing to multiply: C = beta·C (oneDNN wants K ≥ 1) */
    for (int i = 0; i < M; i++)
      for (int j = 0; j < N; j++) {
        size_t o = (size_t)i * ldc + j;
        if (c_acc)
          ((float *)C)[o] = beta != 0.f ? beta * ((float *)C)[o] : 0.f;
        else
          ((uint16_t *)C)[o] = beta != 0.f ? poc_bf16_from_f32(
                                                 beta * poc_bf16_to_f32(((uint16_t *)C)[o]))
                                           : 0;
      }
    return;
  }
  gemm_key k = {M, N, K, lda, ldb, ldc, !!ta, !!tb, !!c_acc, beta};
  dnnl_primitive_t p = gemm_find(ks, c, k);
  if (!p) return;
  dnnl_memory_desc_t a, b, cd;
  dnnl_memory_t ma = NULL, mb = NULL, mc = NULL;
  dnnl_status_t s = gemm_mds(&k, 0, &a, &b, &cd);
  if (s == dnnl_success) s = dnnl_memory_create(&ma, &a, c->e->eng, (void *)A);
  if (s == dnnl_success) s = dnnl_memory_create(&mb, &b, c->e->eng, (void *)B);
  if (s == dnnl_success) s = dnnl_memory_create(&mc, &cd, c->e->eng, C);
  if (s == dnnl_success) {
    dnnl_exec_arg_t args[3] = {{DNNL_ARG_SRC, ma}, {DNNL_ARG_WEIGHTS, mb}, {DNNL_ARG_DST, mc}};
    s = dnnl_primitive_execute(p, c->e->st, 3, args);
  }
  if (s == dnnl_success) s = dnnl_stream_wait(c->e->st);
  if (ma) dnnl_memory_destroy(ma);
  if (mb) dnnl_memory_destroy(mb);
  if (mc) dnnl_memory_destroy(mc);
  if (s != dnnl_success)
    poc_dev_fail(ks->d, "%s: oneDNN matmul %s%d×%d·%s%d×%d: %s", ks->d->name, ta ? "ᵀ" : "",
                 M, K, tb ? "ᵀ" : "", K, N, dnnl_status2str(s));
}
