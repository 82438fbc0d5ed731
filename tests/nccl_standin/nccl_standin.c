/* nccl_standin.c — a libnccl.so.2 for tests without a GPU (test-only; never installed):
 * the NCCL entry points poc uses (runtime/cuda/nccl_abi.h), carried out with MPI inside
 * the MPI job that loads it, on the memory of the CUDA emulation (tests/cuda_emul).
 *
 * Assumptions, checked where they can be:
 *   - It serves poc's CUDA emulation only: the emulated device's memory is host memory, so
 *     a device pointer is read and written here directly. POC_CUDA_EMULATE must name the
 *     emulation and the process must have loaded it; every buffer must lie inside one live
 *     allocation of it (poc_cuemu_mem_range), as on a device where a host pointer would
 *     fault. A real GPU's pointers would not be readable here: that is what real NCCL is for.
 *   - NCCL's ranks are MPI_COMM_WORLD's (nranks and rank must be MPI's), and MPI is
 *     initialised by the program before ncclCommInitRank.
 *   - A collective runs at its call (or at the group's end), on whichever stream it is
 *     given (the default one, NULL, or a live one of the emulation: checked), as the
 *     emulation's own work does. So a rank blocks in the call until every rank has made
 *     it, where a device would queue it and let the host go on: a program whose ranks
 *     issue a collective and then wait for one another elsewhere before the peers issue
 *     theirs deadlocks here, though not on GPUs. poc issues its collectives so that this
 *     never happens (comm_nccl.h's overlap). No collective is ever half done: a timeout
 *     that aborts one in flight is not exercised.
 *
 * Strict, like the emulation: before each collective the ranks exchange its sequence
 * number and signature (operation, count, type, root); a rank that differs from rank 0 is
 * an error naming both ranks and both calls, and the communicator stays failed
 * (ncclCommGetAsyncError, ncclGetLastError). Sums are over f32, f64 and bf16 only, in rank
 * order (the same result on every rank); bf16 is summed in fp32 and rounded to nearest
 * even once. ncclGroupStart/End queue the collectives of a group and run them in order at
 * the outermost End.
 */
#define _GNU_SOURCE /* RTLD_NOLOAD */
#include <dlfcn.h>
#include <mpi.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "nccl_abi.h"

#ifndef NCCL_VERSION_CODE
#define NCCL_VERSION_CODE 21800 /* the ABI of nccl_abi.h's declarations */
#endif

#define SD_MAGIC "poc-nccl-standin"
#define SD_CHUNK ((size_t)1 << 20) /* elements per MPI exchange */

enum { SD_ALLREDUCE, SD_REDUCESCATTER, SD_ALLGATHER, SD_BROADCAST };
static const char *const sd_names[] = {"ncclAllReduce", "ncclReduceScatter", "ncclAllGather",
                                       "ncclBroadcast"};

struct ncclComm {
  MPI_Comm mc;
  int rank, size;
  uint64_t seq;                  /* collectives run so far */
  ncclResult_t async;            /* the first failure: the communicator stays failed */
  char last[1024];
};

static char sd_last[1024];       /* ncclGetLastError(NULL): the last failure anywhere */

static ncclResult_t sd_fail(ncclComm_t c, ncclResult_t r, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

typedef struct {
  int kind;
  const void *send;
  void *recv;
  size_t count;                  /* NCCL's: per rank for reduce-scatter and all-gather */
  ncclDataType_t type;
  int root;
  ncclComm_t comm;
  ncclResult_t bad;              /* its argument check failed here: the peers are told */
} sd_op;

/* the group's collectives, until ncclGroupEnd */
typedef struct {
  sd_op *op;
  int n, cap;
} sd_list;
static sd_list sd_group;

static ncclResult_t sd_push(sd_list *l, const sd_op *o) {
  if (l->n == l->cap) {
    int cap = l->cap ? 2 * l->cap : 16;
    sd_op *q = realloc(l->op, (size_t)cap * sizeof *q);
    if (!q) return sd_fail(o->comm, ncclSystemError, "out of memory");
    l->op = q;
    l->cap = cap;
  }
  l->op[l->n++] = *o;
  return ncclSuccess;
}


/* ---- errors -------------------------------------------------------------------------- */

static ncclResult_t sd_fail(ncclComm_t c, ncclResult_t r, const char *fmt, ...) {
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(sd_last, sizeof sd_last, fmt, ap);
  va_end(ap);
  if (c) {
    if (c->async == ncclSuccess) {
      c->async = r;
      snprintf(c->last, sizeof c->last, "%s", sd_last);
    }
  }
  fprintf(stderr, "nccl stand-in: %s\n", sd_last);
  return r;
}

const char *ncclGetErrorString(ncclResult_t r) {
  switch (r) {
    case ncclSuccess: return "no error";
    case ncclUnhandledCudaError: return "unhandled cuda error";
    case ncclSystemError: return "unhandled system error";
    case ncclInternalError: return "internal error";
    case ncclInvalidArgument: return "invalid argument";
    case ncclInvalidUsage: return "invalid usage";
    case ncclRemoteError: return "remote process exited or there was a network error";
    case ncclInProgress: return "NCCL operation in progress";
    default: return "unknown result code";
  }
}

const char *ncclGetLastError(ncclComm_t c) { return c && c->last[0] ? c->last : sd_last; }

ncclResult_t ncclGetVersion(int *v) {
  if (!v) return sd_fail(NULL, ncclInvalidArgument, "ncclGetVersion: version is NULL");
  *v = NCCL_VERSION_CODE;
  return ncclSuccess;
}

/* ---- the emulation --------------------------------------------------------------------- */

static int (*sd_mem_range)(const void *, size_t, const char **);
static int (*sd_ctx_device)(int *);
static int (*sd_stream_live)(const void *);

static ncclResult_t sd_emulation(void) {
  if (sd_mem_range) return ncclSuccess;
  const char *path = getenv("POC_CUDA_EMULATE");
  if (!path || !*path)
    return sd_fail(NULL, ncclInvalidUsage, "this stand-in serves poc's CUDA emulation only "
                   "(POC_CUDA_EMULATE is not set): it reads device memory as host memory");
  void *h = dlopen(path, RTLD_NOW | RTLD_NOLOAD);
  if (!h)
    return sd_fail(NULL, ncclInvalidUsage, "the CUDA emulation %s is not loaded in this "
                   "process: open the device before NCCL", path);
  *(void **)&sd_mem_range = dlsym(h, "poc_cuemu_mem_range");
  *(void **)&sd_ctx_device = dlsym(h, "cuCtxGetDevice");
  *(void **)&sd_stream_live = dlsym(h, "poc_cuemu_stream_live");
  dlclose(h); /* NOLOAD took a reference; the program keeps its own */
  if (!sd_mem_range || !sd_ctx_device || !sd_stream_live) {
    sd_mem_range = NULL;
    return sd_fail(NULL, ncclInvalidUsage, "%s lacks poc_cuemu_mem_range, cuCtxGetDevice or "
                   "poc_cuemu_stream_live", path);
  }
  return ncclSuccess;
}

/* [p, p + n) must be device memory: inside one live allocation of the emulation */
static ncclResult_t sd_range(ncclComm_t c, const char *call, const char *which, const void *p,
                             size_t n) {
  const char *why = "";
  if (!p) return sd_fail(c, ncclInvalidArgument, "%s: %s is NULL", call, which);
  if (sd_mem_range(p, n, &why))
    return sd_fail(c, ncclInvalidArgument, "%s: %s [%p, +%zu bytes) is not device memory: %s",
                   call, which, p, n, why);
  return ncclSuccess;
}

/* ---- communicators ---------------------------------------------------------------------- */

static uint64_t sd_hash(const void *p, size_t n) {
  const unsigned char *b = p;
  uint64_t h = 1469598103934665603ull; /* FNV-1a */
  for (size_t i = 0; i < n; i++) h = (h ^ b[i]) * 1099511628211ull;
  return h;
}

ncclResult_t ncclGetUniqueId(ncclUniqueId *id) {
  if (!id) return sd_fail(NULL, ncclInvalidArgument, "ncclGetUniqueId: id is NULL");
  static unsigned counter;
  struct timespec t;
  clock_gettime(CLOCK_REALTIME, &t);
  memset(id, 0, sizeof *id);
  snprintf(id->internal, sizeof id->internal, SD_MAGIC " %ld %lld.%09ld %u", (long)getpid(),
           (long long)t.tv_sec, t.tv_nsec, counter++);
  return ncclSuccess;
}

ncclResult_t ncclCommInitRank(ncclComm_t *out, int nranks, ncclUniqueId id, int rank) {
  if (!out) return sd_fail(NULL, ncclInvalidArgument, "ncclCommInitRank: comm is NULL");
  *out = NULL;
  int have = 0, wsize = 0, wrank = 0, dev = -1;
  MPI_Initialized(&have);
  if (!have)
    return sd_fail(NULL, ncclInvalidUsage, "ncclCommInitRank: this stand-in runs inside an "
                   "MPI job, and MPI is not initialised");
  ncclResult_t r = sd_emulation();
  if (r) return r;
  if (sd_ctx_device(&dev) != 0)
    return sd_fail(NULL, ncclInvalidUsage, "ncclCommInitRank: no current CUDA context (NCCL "
                   "joins on the calling thread's device)");
  MPI_Comm_size(MPI_COMM_WORLD, &wsize);
  MPI_Comm_rank(MPI_COMM_WORLD, &wrank);
  if (nranks != wsize || rank != wrank)
    return sd_fail(NULL, ncclInvalidArgument, "ncclCommInitRank: rank %d of %d, but this "
                   "stand-in's ranks are MPI_COMM_WORLD's (rank %d of %d)", rank, nranks,
                   wrank, wsize);
  if (strncmp(id.internal, SD_MAGIC, strlen(SD_MAGIC)))
    return sd_fail(NULL, ncclInvalidArgument, "ncclCommInitRank: the unique id was not made "
                   "by this library's ncclGetUniqueId");
  ncclComm_t c = calloc(1, sizeof *c);
  if (!c) return sd_fail(NULL, ncclSystemError, "ncclCommInitRank: out of memory");
  MPI_Comm_dup(MPI_COMM_WORLD, &c->mc);
  c->rank = rank;
  c->size = nranks;
  /* every rank must join with the id rank 0 handed out */
  uint64_t h = sd_hash(id.internal, sizeof id.internal), *all = calloc((size_t)nranks, 8);
  if (!all) {
    MPI_Comm_free(&c->mc);
    free(c);
    return sd_fail(NULL, ncclSystemError, "ncclCommInitRank: out of memory");
  }
  MPI_Allgather(&h, 8, MPI_BYTE, all, 8, MPI_BYTE, c->mc);
  for (int i = 1; i < nranks; i++)
    if (all[i] != all[0]) {
      free(all);
      MPI_Comm_free(&c->mc);
      free(c);
      return sd_fail(NULL, ncclInvalidUsage, "ncclCommInitRank: rank %d joined with another "
                     "unique id than rank 0", i);
    }
  free(all);
  *out = c;
  return ncclSuccess;
}

static int sd_depth;             /* ncclGroupStart nesting */

ncclResult_t ncclCommDestroy(ncclComm_t c) {
  if (!c) return sd_fail(NULL, ncclInvalidArgument, "ncclCommDestroy: comm is NULL");
  if (sd_depth)
    return sd_fail(c, ncclInvalidUsage, "ncclCommDestroy inside ncclGroupStart/End");
  MPI_Comm_free(&c->mc);
  free(c);
  return ncclSuccess;
}

/* Abort is local: the peers may be gone, so no MPI call (the duplicate is left to MPI). */
ncclResult_t ncclCommAbort(ncclComm_t c) {
  if (!c) return sd_fail(NULL, ncclInvalidArgument, "ncclCommAbort: comm is NULL");
  free(c);
  return ncclSuccess;
}

ncclResult_t ncclCommGetAsyncError(ncclComm_t c, ncclResult_t *e) {
  if (!c || !e) return sd_fail(NULL, ncclInvalidArgument, "ncclCommGetAsyncError: NULL argument");
  *e = c->async;
  return ncclSuccess;
}

/* ---- collectives ------------------------------------------------------------------------ */

/* what every rank compares before moving data */
typedef struct {
  uint64_t seq, count;
  int32_t kind, type, root, bad;
} sd_sig;

static size_t sd_size(ncclDataType_t t) {
  switch ((int)t) {
    case ncclInt8: case ncclUint8: return 1;
    case ncclFloat16: case ncclBfloat16: return 2;
    case ncclInt32: case ncclUint32: case ncclFloat32: return 4;
    case ncclInt64: case ncclUint64: case ncclFloat64: return 8;
    default: return 0;
  }
}

static const char *sd_tname(int t) {
  static const char *n[] = {"int8", "uint8", "int32", "uint32", "int64", "uint64", "float16",
                            "float32", "float64", "bfloat16"};
  return t >= 0 && t < 10 ? n[t] : "an unknown type";
}

static float sd_bf16_to_f32(uint16_t b) {
  uint32_t u = (uint32_t)b << 16;
  float f;
  memcpy(&f, &u, 4);
  return f;
}

/* round to nearest even; NaN stays a quiet NaN */
static uint16_t sd_bf16_from_f32(float f) {
  uint32_t u;
  memcpy(&u, &f, 4);
  if ((u & 0x7fffffffu) > 0x7f800000u) return (uint16_t)((u >> 16) | 0x40);
  u += 0x7fffu + ((u >> 16) & 1);
  return (uint16_t)(u >> 16);
}

/* out[i] = Σ_r in[r·k + i] for r = 0..R-1 in rank order: the same on every rank */
static void sd_sum(void *out, const char *in, size_t k, int R, ncclDataType_t t) {
  for (size_t i = 0; i < k; i++) {
    if (t == ncclFloat64) {
      double s = ((const double *)in)[i];
      for (int r = 1; r < R; r++) s += ((const double *)in)[(size_t)r * k + i];
      ((double *)out)[i] = s;
    } else if (t == ncclFloat32) {
      float s = ((const float *)in)[i];
      for (int r = 1; r < R; r++) s += ((const float *)in)[(size_t)r * k + i];
      ((float *)out)[i] = s;
    } else { /* bf16: in fp32, rounded once */
      float s = sd_bf16_to_f32(((const uint16_t *)in)[i]);
      for (int r = 1; r < R; r++) s += sd_bf16_to_f32(((const uint16_t *)in)[(size_t)r * k + i]);
      ((uint16_t *)out)[i] = sd_bf16_from_f32(s);
    }
  }
}

/* Arguments, as NCCL checks them when a call is made (also inside a group). */
static ncclResult_t sd_check(const sd_op *o) {
  const char *call = sd_names[o->kind];
  ncclComm_t c = o->comm;
  if (c->async)
    return sd_fail(c, c->async, "%s: the communicator failed earlier: %s", call, c->last);
  size_t sz = sd_size(o->type);
  if (!sz) return sd_fail(c, ncclInvalidArgument, "%s: unknown data type %d", call, (int)o->type);
  int reduce = o->kind == SD_ALLREDUCE || o->kind == SD_REDUCESCATTER;
  if (reduce && o->type != ncclFloat32 && o->type != ncclFloat64 && o->type != ncclBfloat16)
    return sd_fail(c, ncclInvalidArgument, "%s: the stand-in sums float32, float64 and "
                   "bfloat16 only, not %s", call, sd_tname(o->type));
  if (o->kind == SD_BROADCAST && (o->root < 0 || o->root >= c->size))
    return sd_fail(c, ncclInvalidArgument, "%s: root %d of %d ranks", call, o->root, c->size);
  if (o->count == 0) return ncclSuccess;
  size_t R = (size_t)c->size, n = o->count * sz;
  size_t sn = o->kind == SD_REDUCESCATTER ? n * R : n, rn = o->kind == SD_ALLGATHER ? n * R : n;
  ncclResult_t r = ncclSuccess;
  if (o->kind != SD_BROADCAST || c->rank == o->root) r = sd_range(c, call, "sendbuff", o->send, sn);
  if (!r) r = sd_range(c, call, "recvbuff", o->recv, rn);
  if (r) return r;
  /* in place is NCCL's: the same buffer, or the rank's own block of the larger one */
  const char *s = o->send, *d = o->recv;
  int inplace = s == d || (o->kind == SD_REDUCESCATTER && d == s + (size_t)c->rank * n) ||
                (o->kind == SD_ALLGATHER && s == d + (size_t)c->rank * n);
  if (!inplace && (o->kind != SD_BROADCAST || c->rank == o->root) && s < d + rn && d < s + sn)
    return sd_fail(c, ncclInvalidArgument, "%s: sendbuff and recvbuff overlap but the call is "
                   "not in place", call);
  return ncclSuccess;
}

/* Every rank's signature against rank 0's: a mismatch names both ranks, on every rank. */
static ncclResult_t sd_agree(const sd_op *o) {
  ncclComm_t c = o->comm;
  sd_sig mine = {c->seq, o->count, o->kind, (int32_t)o->type,
                 o->kind == SD_BROADCAST ? o->root : 0, o->bad != ncclSuccess};
  sd_sig *all = calloc((size_t)c->size, sizeof *all);
  if (!all) return sd_fail(c, ncclSystemError, "out of memory");
  MPI_Allgather(&mine, sizeof mine, MPI_BYTE, all, sizeof mine, MPI_BYTE, c->mc);
  /* POC_NCCL_STANDIN_TRACE=FILE: rank 0 appends one line per collective (what the tests
     read to know which path a run took) */
  const char *trace = c->rank == 0 ? getenv("POC_NCCL_STANDIN_TRACE") : NULL;
  FILE *tf = trace && *trace ? fopen(trace, "a") : NULL;
  if (tf) {
    fprintf(tf, "%s %llu %s\n", sd_names[o->kind], (unsigned long long)o->count,
            sd_tname(o->type));
    fclose(tf);
  }
  /* a call refused on some rank fails on all of them: none waits for it */
  ncclResult_t r = o->bad;
  for (int i = 0; i < c->size && !r; i++)
    if (all[i].bad)
      r = sd_fail(c, ncclInvalidUsage, "collective #%llu (%s): rank %d refused its arguments "
                  "(its own message says why)", (unsigned long long)mine.seq + 1,
                  sd_names[all[i].kind], i);
  for (int i = 1; i < c->size && !r; i++) {
    const sd_sig *a = &all[0], *b = &all[i];
    if (!memcmp(a, b, sizeof *a)) continue;
    char ra[64] = "", rb[64] = "";
    if (a->kind == SD_BROADCAST) snprintf(ra, sizeof ra, " from root %d", a->root);
    if (b->kind == SD_BROADCAST) snprintf(rb, sizeof rb, " from root %d", b->root);
    r = sd_fail(c, ncclInvalidUsage, "the ranks disagree on collective #%llu: rank %d calls %s "
                "of %llu %s%s, rank 0 calls %s of %llu %s%s (every rank must make the same "
                "calls in the same order)", (unsigned long long)a->seq + 1, i,
                sd_names[b->kind], (unsigned long long)b->count, sd_tname(b->type), rb,
                sd_names[a->kind], (unsigned long long)a->count, sd_tname(a->type), ra);
  }
  free(all);
  return r;
}

static ncclResult_t sd_run(const sd_op *o) {
  ncclComm_t c = o->comm;
  ncclResult_t r = sd_agree(o);
  c->seq++;
  if (r) return r;
  size_t sz = sd_size(o->type), R = (size_t)c->size, n = o->count;
  if (n == 0) return ncclSuccess;
  size_t k0 = n < SD_CHUNK ? n : SD_CHUNK;
  char *tmp = malloc(R * k0 * sz), *pack = o->kind == SD_REDUCESCATTER ? malloc(R * k0 * sz) : NULL;
  if (!tmp || (o->kind == SD_REDUCESCATTER && !pack)) {
    free(tmp);
    free(pack);
    return sd_fail(c, ncclSystemError, "%s: out of memory", sd_names[o->kind]);
  }
  const char *s = o->send;
  char *d = o->recv;
  for (size_t off = 0; off < n; off += k0) {
    size_t k = n - off < k0 ? n - off : k0;
    int kb = (int)(k * sz);
    switch (o->kind) {
      case SD_ALLREDUCE:
        MPI_Allgather(s + off * sz, kb, MPI_BYTE, tmp, kb, MPI_BYTE, c->mc);
        sd_sum(d + off * sz, tmp, k, (int)R, o->type);
        break;
      case SD_REDUCESCATTER:
        /* block j of rank r goes to rank j: pack [R × k], exchange, sum what came */
        for (size_t j = 0; j < R; j++) memcpy(pack + j * k * sz, s + (j * n + off) * sz, k * sz);
        MPI_Alltoall(pack, kb, MPI_BYTE, tmp, kb, MPI_BYTE, c->mc);
        sd_sum(d + off * sz, tmp, k, (int)R, o->type);
        break;
      case SD_ALLGATHER:
        MPI_Allgather(s + off * sz, kb, MPI_BYTE, tmp, kb, MPI_BYTE, c->mc);
        for (size_t j = 0; j < R; j++) memcpy(d + (j * n + off) * sz, tmp + j * k * sz, k * sz);
        break;
      case SD_BROADCAST:
        if (c->rank == o->root) memcpy(tmp, s + off * sz, k * sz);
        MPI_Bcast(tmp, kb, MPI_BYTE, o->root, c->mc);
        memcpy(d + off * sz, tmp, k * sz);
        break;
    }
  }
  free(tmp);
  free(pack);
  return ncclSuccess;
}

static ncclResult_t sd_issue(int kind, const void *send, void *recv, size_t count,
                             ncclDataType_t type, int root, ncclComm_t comm, cudaStream_t st) {
  sd_op o = {kind, send, recv, count, type, root, comm, ncclSuccess};
  if (!comm) return sd_fail(NULL, ncclInvalidArgument, "%s: comm is NULL", sd_names[kind]);
  if (!sd_stream_live((const void *)st))
    o.bad = sd_fail(comm, ncclInvalidArgument, "%s: stream %p is not a live stream of the "
                    "CUDA emulation", sd_names[kind], (void *)st);
  else
    o.bad = sd_check(&o);
  ncclResult_t r = sd_depth ? sd_push(&sd_group, &o) : sd_run(&o);
  /* a refused call is queued too: where it runs, the peers are told */
  return o.bad ? o.bad : r;
}

ncclResult_t ncclAllReduce(const void *send, void *recv, size_t count, ncclDataType_t type,
                           ncclRedOp_t op, ncclComm_t comm, cudaStream_t st) {
  if (op != ncclSum)
    return sd_fail(comm, ncclInvalidArgument, "ncclAllReduce: the stand-in sums only (op %d)",
                   (int)op);
  return sd_issue(SD_ALLREDUCE, send, recv, count, type, 0, comm, st);
}

ncclResult_t ncclReduceScatter(const void *send, void *recv, size_t recvcount,
                               ncclDataType_t type, ncclRedOp_t op, ncclComm_t comm,
                               cudaStream_t st) {
  if (op != ncclSum)
    return sd_fail(comm, ncclInvalidArgument, "ncclReduceScatter: the stand-in sums only "
                   "(op %d)", (int)op);
  return sd_issue(SD_REDUCESCATTER, send, recv, recvcount, type, 0, comm, st);
}

ncclResult_t ncclAllGather(const void *send, void *recv, size_t sendcount, ncclDataType_t type,
                           ncclComm_t comm, cudaStream_t st) {
  return sd_issue(SD_ALLGATHER, send, recv, sendcount, type, 0, comm, st);
}

ncclResult_t ncclBroadcast(const void *send, void *recv, size_t count, ncclDataType_t type,
                           int root, ncclComm_t comm, cudaStream_t st) {
  return sd_issue(SD_BROADCAST, send, recv, count, type, root, comm, st);
}

ncclResult_t ncclGroupStart(void) {
  sd_depth++;
  return ncclSuccess;
}

/* The outermost End runs the group's collectives in the order they were called; the first
 * failure ends the group (the rest are dropped, as a failed group launches nothing). */
ncclResult_t ncclGroupEnd(void) {
  if (sd_depth == 0) return sd_fail(NULL, ncclInvalidUsage, "ncclGroupEnd without ncclGroupStart");
  if (--sd_depth) return ncclSuccess;
  ncclResult_t r = ncclSuccess;
  for (int i = 0; i < sd_group.n && !r; i++) r = sd_run(&sd_group.op[i]);
  sd_group.n = 0;
  return r;
}
