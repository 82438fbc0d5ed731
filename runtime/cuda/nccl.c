/* nccl.c — comm_nccl.h on NCCL: collectives over the ranks of comm.h on the CUDA device's
 * memory, queued on the device's stream.
 *
 * NCCL is opened with dlopen (POC_NCCL_LIBRARY, else libnccl.so.2), never linked, like the
 * driver, NVRTC and cuBLAS: a poc built here runs where NCCL is missing and says so. Its
 * entry points are NCCL 2's C ABI (nccl_abi.h). The bootstrap goes through MPI: rank 0
 * makes the unique id, trn_comm_bcast hands it out, and every rank calls ncclCommInitRank
 * with the device's context current, which NCCL's runtime calls adopt (it is the device's
 * primary context).
 *
 * The device issues all its work on the legacy default stream (device_cuda.c), so the
 * plain collectives go there too: they start after the backward that wrote their input and
 * end before the optimizer that reads it, with no event between. The overlap's sums
 * (trn_nccl_sum_async, the layer buckets) go on a non-blocking stream of their own,
 * ordered by two events: after the backward of their layer, before the optimizer.
 *
 * Waiting: NCCL queues a collective and returns. With a collective timeout (comm.h) each
 * call polls the stream and ncclCommGetAsyncError until the collective has finished; past
 * the timeout it aborts the communicator (so no kernel keeps waiting for a peer) and ends
 * every rank through MPI. Without one, the next synchronisation of the device sees the
 * result, and an error NCCL records later is met by the next call here.
 */
#define _GNU_SOURCE /* dladdr */
#include <dlfcn.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "comm.h"
#include "comm_nccl.h"
#include "cuda_internal.h"
#include "nccl_abi.h"

#define NC_STR2(x) #x
#define NC_STR(x) NC_STR2(x) /* cuda.h's versioned name: cuStreamDestroy → _v2 */

/* Driver calls only the communication stream needs, looked up on its first use. */
static struct {
  CUresult (*stream_create)(CUstream *, unsigned);
  CUresult (*stream_destroy)(CUstream);
  CUresult (*event_create)(CUevent *, unsigned);
  CUresult (*event_destroy)(CUevent);
  CUresult (*event_record)(CUevent, CUstream);
  CUresult (*stream_wait_event)(CUstream, CUevent, unsigned);
} nd;

#ifndef POC_NCCL_SONAME
#define POC_NCCL_SONAME "libnccl.so.2"
#endif

typedef struct {
  void *lib;
#define NC_MEMBER(f) __typeof__(&f) f;
  POC_NCCL_FUNCS(NC_MEMBER)
#undef NC_MEMBER
  const char *(*last_error)(ncclComm_t); /* ncclGetLastError, NCCL 2.13+; may be NULL */
} nc_lib;

/* One communicator per process. */
static struct {
  nc_lib nl;
  poc_device *d;
  ncclComm_t comm;
  CUcontext ctx;                 /* the device's, made current before each collective */
  CUresult (*stream_query)(CUstream);
  CUresult (*ctx_get_current)(CUcontext *);
  /* the communication stream of trn_nccl_sum_async, made on first use: it waits for
   * ready (recorded on the device's stream), and the device's stream for done */
  CUstream cs;
  CUevent ready, done;
  int pending;                   /* sums queued on cs since the last join */
  double pending_t0;
  uint64_t pending_bytes;
  int group;                     /* between trn_nccl_group_begin and _end */
  double group_t0;
  uint64_t group_bytes;
  int failed;                    /* a collective failed: close aborts */
  char desc[600];
} g;

static double nc_now(void) {
  struct timespec t;
  clock_gettime(CLOCK_MONOTONIC, &t);
  return (double)t.tv_sec + 1e-9 * (double)t.tv_nsec;
}

/* Loads the library (once per process) and the two driver calls the polling needs; 0, or
 * -1 with the reason in why. */
static int nc_load(char *why) {
  if (g.nl.lib) return 0;
  const char *env = getenv("POC_NCCL_LIBRARY");
  const char *name = env && *env ? env : POC_NCCL_SONAME;
  nc_lib l = {0};
  if (!(l.lib = dlopen(name, RTLD_NOW | RTLD_LOCAL))) {
    const char *e = dlerror();
    snprintf(why, POC_ERR_LEN, "cannot load NCCL (%s%s): %.300s", name,
             env && *env ? ", from POC_NCCL_LIBRARY" : "", e ? e : "not found");
    return -1;
  }
#define NC_LOOKUP(f)                                                                       \
  if (!(*(void **)&l.f = dlsym(l.lib, #f))) {                                              \
    snprintf(why, POC_ERR_LEN, "%s has no %s: not NCCL 2, or too old", name, #f);          \
    dlclose(l.lib);                                                                        \
    return -1;                                                                             \
  }
  POC_NCCL_FUNCS(NC_LOOKUP)
#undef NC_LOOKUP
  *(void **)&l.last_error = dlsym(l.lib, "ncclGetLastError");
  /* not in cuda_internal.h's table: only this file needs them */
  *(void **)&g.stream_query = cu.lib ? dlsym(cu.lib, "cuStreamQuery") : NULL;
  *(void **)&g.ctx_get_current = cu.lib ? dlsym(cu.lib, "cuCtxGetCurrent") : NULL;
  if (!g.stream_query || !g.ctx_get_current) {
    snprintf(why, POC_ERR_LEN, "the CUDA driver has no cuStreamQuery or cuCtxGetCurrent");
    dlclose(l.lib);
    return -1;
  }
  int v = 0;
  l.ncclGetVersion(&v);
  /* NCCL_VERSION: major·1000 + minor·100 + patch up to 2.8, major·10000 + minor·100 + patch
   * after */
  int ma = v >= 10000 ? v / 10000 : v / 1000, mi = v >= 10000 ? v / 100 % 100 : v / 100 % 10;
  Dl_info di;
  const char *path = dladdr(*(void **)&l.ncclAllReduce, &di) && di.dli_fname ? di.dli_fname : name;
  snprintf(g.desc, sizeof g.desc, "NCCL %d.%d.%d (%.500s)", ma, mi, v % 100, path);
  g.nl = l;
  return 0;
}

/* Why NCCL cannot serve this rank, or 0 when it can. */
static int nc_usable(char *why) {
  /* The emulation's device memory is host memory a real NCCL cannot reach; its tests name
   * a stand-in library (tests/nccl_standin) that can. */
  const char *emu = getenv("POC_CUDA_EMULATE"), *lib = getenv("POC_NCCL_LIBRARY");
  if (emu && *emu && !(lib && *lib)) {
    snprintf(why, POC_ERR_LEN, "the device is the CUDA emulation (POC_CUDA_EMULATE), whose "
             "memory NCCL cannot reach, and POC_NCCL_LIBRARY names no stand-in");
    return -1;
  }
  return nc_load(why);
}

static ncclDataType_t nc_type(poc_dtype t) {
  switch (t) {
    case POC_DT_F32: return ncclFloat32;
    case POC_DT_F64: return ncclFloat64;
    case POC_DT_BF16: return ncclBfloat16;
    case POC_DT_I32: return ncclInt32;
  }
  return ncclFloat32;
}

/* Records a NCCL failure as the device's sticky error: "nccl: <what>: <error> (<detail>)". */
static int nc_fail(poc_device *d, ncclResult_t r, const char *what, char *err) {
  const char *detail = g.nl.last_error && g.comm ? g.nl.last_error(g.comm) : NULL;
  poc_dev_fail_unstaged(d, "nccl: %s: %s%s%.400s%s", what, g.nl.ncclGetErrorString(r),
                        detail && *detail ? " (" : "", detail ? detail : "",
                        detail && *detail ? ")" : "");
  g.failed = 1;
  if (err) snprintf(err, POC_ERR_LEN, "%s", d->err);
  return -1;
}

/* The timeout: the message of comm.c's, then the communicator aborted and every rank
 * ended (MPI_Abort); does not return with several ranks. */
static void nc_timeout(const char *what, double dt, double timeout) {
  long long step = (long long)trn_comm_step();
  if (step > 0)
    fprintf(stderr, "%s: error: rank %d: step %lld: %s waited %.0f s for the other ranks "
            "(--collective-timeout %g); one of them is dead or stuck, so every rank stops. "
            "Checkpoints written so far are intact\n", trn_comm_name(), trn_comm_rank(), step,
            what, dt, timeout);
  else
    fprintf(stderr, "%s: error: rank %d: before the first step: %s waited %.0f s for the "
            "other ranks (--collective-timeout %g); one of them is dead or stuck, so every "
            "rank stops\n", trn_comm_name(), trn_comm_rank(), what, dt, timeout);
  fflush(stderr);
  g.nl.ncclCommAbort(g.comm);
  g.comm = NULL;
  g.failed = 1;
  trn_comm_abort(1);
}

/* After a collective (or a group) was queued at t0 on stream st: an error NCCL has recorded
 * since, and with a timeout the wait for the stream to drain. */
static int nc_wait(poc_device *d, const char *what, double t0, uint64_t bytes, CUstream st,
                   char *err) {
  double timeout = trn_comm_timeout();
  for (;;) {
    ncclResult_t ae = ncclSuccess, r = g.nl.ncclCommGetAsyncError(g.comm, &ae);
    if (r != ncclSuccess) return nc_fail(d, r, what, err);
    if (ae != ncclSuccess && ae != ncclInProgress) return nc_fail(d, ae, what, err);
    if (timeout <= 0) break;
    CUresult q = g.stream_query(st);
    if (q == CUDA_SUCCESS) break;
    if (q != CUDA_ERROR_NOT_READY) {
      poc_dev_fail_unstaged(d, "cuda: %s: %s", what, cu_errstr(q));
      g.failed = 1;
      if (err) snprintf(err, POC_ERR_LEN, "%s", d->err);
      return -1;
    }
    double dt = nc_now() - t0;
    if (dt > timeout) {
      nc_timeout(what, dt, timeout);
      poc_dev_fail_unstaged(d, "nccl: %s timed out", what);
      if (err) snprintf(err, POC_ERR_LEN, "%s", d->err);
      return -1;
    }
    /* as comm.c: spin the first millisecond, then leave the core to the others */
    if (dt > 1e-3) {
      struct timespec ts = {0, dt > 0.1 ? 1000000 : 50000};
      nanosleep(&ts, NULL);
    }
  }
  if (bytes) trn_comm_account(nc_now() - t0, bytes);
  return 0;
}

/* Before a collective: the communicator is d's, nothing has failed, the context is current. */
static int nc_begin(poc_device *d, char *err) {
  if (!g.comm || g.d != d) {
    snprintf(err, POC_ERR_LEN, "nccl: no communicator on this device (trn_nccl_open)");
    return -1;
  }
  if (d->failed) {
    snprintf(err, POC_ERR_LEN, "%s", d->err);
    return -1;
  }
  CUresult r = cu.cuCtxSetCurrent(g.ctx);
  if (r != CUDA_SUCCESS) {
    poc_dev_fail_unstaged(d, "cuda: selecting the device for NCCL: %s", cu_errstr(r));
    snprintf(err, POC_ERR_LEN, "%s", d->err);
    return -1;
  }
  return 0;
}

/* After queueing: a failed call is the device's error; otherwise wait unless in a group. */
static int nc_end(poc_device *d, ncclResult_t r, const char *what, double t0, uint64_t bytes,
                  char *err) {
  if (r != ncclSuccess && r != ncclInProgress) return nc_fail(d, r, what, err);
  if (g.group) {
    g.group_bytes += bytes;
    return 0;
  }
  return nc_wait(d, what, t0, bytes, NULL, err);
}

int trn_nccl_open(poc_device *d, char *err) {
  if (g.comm) {
    if (g.d == d) return 0;
    snprintf(err, POC_ERR_LEN, "nccl: a communicator is already open on another device");
    return -1;
  }
  int R = trn_comm_size(), rank = trn_comm_rank();
  if (R <= 1) {
    snprintf(err, POC_ERR_LEN, "one process: there is nothing to sum across ranks");
    return 1;
  }
  if (strcmp(d->name, "cuda")) {
    snprintf(err, POC_ERR_LEN, "the device is %s, not cuda", d->name);
    return 1;
  }
  char why[POC_ERR_LEN] = "";
  int64_t who = nc_usable(why) ? rank : INT64_MAX;
  /* every rank takes NCCL or none does: the lowest rank that cannot says why, everywhere */
  if (trn_comm_min_i64(&who, 1, err)) return -1;
  if (who != INT64_MAX) {
    if (trn_comm_bcast(why, sizeof why, (int)who, err)) return -1;
    if (who == rank) snprintf(err, POC_ERR_LEN, "%s", why);
    else snprintf(err, POC_ERR_LEN, "rank %lld: %.480s", (long long)who, why);
    return 1;
  }
  struct {
    int64_t ok;
    ncclUniqueId id;
    char why[256];
  } boot;
  memset(&boot, 0, sizeof boot);
  if (rank == 0) {
    ncclResult_t r = g.nl.ncclGetUniqueId(&boot.id);
    boot.ok = r == ncclSuccess;
    if (!boot.ok) snprintf(boot.why, sizeof boot.why, "%s", g.nl.ncclGetErrorString(r));
  }
  if (trn_comm_bcast(&boot, sizeof boot, 0, err)) return -1;
  if (!boot.ok) {
    snprintf(err, POC_ERR_LEN, "nccl: rank 0 cannot make the unique id: %s (NCCL_DEBUG=INFO "
             "says more)", boot.why);
    return -1;
  }
  /* the device's context current on this thread: NCCL joins on its device */
  if (d->sync(d, err)) return -1;
  CUresult cr = g.ctx_get_current(&g.ctx);
  if (cr != CUDA_SUCCESS || !g.ctx) {
    snprintf(err, POC_ERR_LEN, "cuda: no current context for NCCL: %s", cu_errstr(cr));
    return -1;
  }
  ncclComm_t comm = NULL;
  ncclResult_t r = g.nl.ncclCommInitRank(&comm, R, boot.id, rank);
  char mine[POC_ERR_LEN] = "";
  if (r != ncclSuccess) {
    const char *detail = g.nl.last_error ? g.nl.last_error(NULL) : NULL;
    snprintf(mine, sizeof mine, "nccl: rank %d cannot join the communicator: %s%s%.400s%s", rank,
             g.nl.ncclGetErrorString(r), detail && *detail ? " (" : "", detail ? detail : "",
             detail && *detail ? ")" : "");
  }
  who = r == ncclSuccess ? INT64_MAX : rank;
  if (trn_comm_min_i64(&who, 1, err)) return -1;
  if (who != INT64_MAX) {
    if (comm) g.nl.ncclCommAbort(comm);
    if (r != ncclSuccess) snprintf(err, POC_ERR_LEN, "%s", mine);
    else snprintf(err, POC_ERR_LEN, "nccl: rank %lld cannot join the communicator (its own "
                  "message says why)", (long long)who);
    return -1;
  }
  g.comm = comm;
  g.d = d;
  g.failed = 0;
  return 0;
}

int trn_nccl_active(const poc_device *d) { return g.comm && g.d == d; }

const char *trn_nccl_desc(void) { return g.comm ? g.desc : ""; }

int trn_nccl_sum(poc_device *d, poc_dptr x, poc_dtype t, size_t n, char *err) {
  if (nc_begin(d, err)) return -1;
  double t0 = nc_now();
  void *p = (void *)(uintptr_t)x;
  ncclResult_t r = g.nl.ncclAllReduce(p, p, n, nc_type(t), ncclSum, g.comm, NULL);
  return nc_end(d, r, "a NCCL all-reduce", t0, n * poc_dtype_size(t), err);
}

int trn_nccl_reduce_scatter(poc_device *d, poc_dptr send, poc_dptr recv, poc_dtype t,
                            size_t count, char *err) {
  if (nc_begin(d, err)) return -1;
  double t0 = nc_now();
  ncclResult_t r = g.nl.ncclReduceScatter((const void *)(uintptr_t)send, (void *)(uintptr_t)recv,
                                          count, nc_type(t), ncclSum, g.comm, NULL);
  return nc_end(d, r, "a NCCL reduce-scatter", t0,
                count * (size_t)trn_comm_size() * poc_dtype_size(t), err);
}

int trn_nccl_all_gather(poc_device *d, poc_dptr send, poc_dptr recv, poc_dtype t, size_t count,
                        char *err) {
  if (nc_begin(d, err)) return -1;
  double t0 = nc_now();
  ncclResult_t r = g.nl.ncclAllGather((const void *)(uintptr_t)send, (void *)(uintptr_t)recv,
                                      count, nc_type(t), g.comm, NULL);
  return nc_end(d, r, "a NCCL all-gather", t0, count * poc_dtype_size(t), err);
}

int trn_nccl_bcast(poc_device *d, poc_dptr x, poc_dtype t, size_t n, int root, char *err) {
  if (nc_begin(d, err)) return -1;
  double t0 = nc_now();
  void *p = (void *)(uintptr_t)x;
  ncclResult_t r = g.nl.ncclBroadcast(p, p, n, nc_type(t), root, g.comm, NULL);
  return nc_end(d, r, "a NCCL broadcast", t0, n * poc_dtype_size(t), err);
}

void trn_nccl_group_begin(poc_device *d) {
  if (!trn_nccl_active(d) || g.group) return;
  g.group = 1;
  g.group_t0 = nc_now();
  g.group_bytes = 0;
  g.nl.ncclGroupStart();
}

int trn_nccl_group_end(poc_device *d, char *err) {
  if (!trn_nccl_active(d) || !g.group) return 0;
  g.group = 0;
  ncclResult_t r = g.nl.ncclGroupEnd();
  if (r != ncclSuccess && r != ncclInProgress) return nc_fail(d, r, "a NCCL group", err);
  return nc_wait(d, "a NCCL group of collectives", g.group_t0, g.group_bytes, NULL, err);
}

/* ---- overlap: sums on the communication stream ------------------------------------------ */

static int nc_cufail(poc_device *d, CUresult r, const char *what, char *err) {
  poc_dev_fail_unstaged(d, "cuda: %s: %s", what, cu_errstr(r));
  g.failed = 1;
  if (err) snprintf(err, POC_ERR_LEN, "%s", d->err);
  return -1;
}

/* The communication stream and its events, on first use. Non-blocking: the legacy default
 * stream, where the device works, would otherwise wait for it (and it for the device). */
static int nc_streams(poc_device *d, char *err) {
  if (g.cs) return 0;
  if (!nd.stream_create) {
#define ND_LOOKUP(m, f)                                                                    \
  if (!(*(void **)&nd.m = dlsym(cu.lib, NC_STR(f)))) {                                     \
    poc_dev_fail_unstaged(d, "cuda: the driver has no %s", NC_STR(f));                     \
    snprintf(err, POC_ERR_LEN, "%s", d->err);                                              \
    return -1;                                                                             \
  }
    ND_LOOKUP(stream_destroy, cuStreamDestroy)
    ND_LOOKUP(event_create, cuEventCreate)
    ND_LOOKUP(event_destroy, cuEventDestroy)
    ND_LOOKUP(event_record, cuEventRecord)
    ND_LOOKUP(stream_wait_event, cuStreamWaitEvent)
    ND_LOOKUP(stream_create, cuStreamCreate)
#undef ND_LOOKUP
  }
  CUresult r;
  if ((r = nd.stream_create(&g.cs, CU_STREAM_NON_BLOCKING)) ||
      (r = nd.event_create(&g.ready, CU_EVENT_DISABLE_TIMING)) ||
      (r = nd.event_create(&g.done, CU_EVENT_DISABLE_TIMING)))
    return nc_cufail(d, r, "making NCCL's stream", err);
  return 0;
}

int trn_nccl_sum_async(poc_device *d, poc_dptr x, poc_dtype t, size_t n, char *err) {
  if (nc_begin(d, err) || nc_streams(d, err)) return -1;
  /* after everything queued on the device's stream so far: the cuStreamWaitEvent takes
   * the event's latest record, so one event serves every sum */
  CUresult cr;
  if ((cr = nd.event_record(g.ready, NULL)) || (cr = nd.stream_wait_event(g.cs, g.ready, 0)))
    return nc_cufail(d, cr, "ordering a NCCL all-reduce after the backward", err);
  if (!g.pending) {
    g.pending_t0 = nc_now();
    g.pending_bytes = 0;
  }
  g.pending++;
  g.pending_bytes += n * poc_dtype_size(t);
  void *p = (void *)(uintptr_t)x;
  ncclResult_t r = g.nl.ncclAllReduce(p, p, n, nc_type(t), ncclSum, g.comm, g.cs);
  if (r != ncclSuccess && r != ncclInProgress) return nc_fail(d, r, "a NCCL all-reduce", err);
  ncclResult_t ae = ncclSuccess;
  if ((r = g.nl.ncclCommGetAsyncError(g.comm, &ae)) != ncclSuccess)
    return nc_fail(d, r, "a NCCL all-reduce", err);
  if (ae != ncclSuccess && ae != ncclInProgress) return nc_fail(d, ae, "a NCCL all-reduce", err);
  return 0;
}

int trn_nccl_join(poc_device *d, char *err) {
  if (!g.pending) return 0;
  if (nc_begin(d, err)) return -1;
  g.pending = 0;
  CUresult cr;
  if ((cr = nd.event_record(g.done, g.cs)) || (cr = nd.stream_wait_event(NULL, g.done, 0)))
    return nc_cufail(d, cr, "ordering the device after NCCL's all-reduces", err);
  return nc_wait(d, "a NCCL all-reduce", g.pending_t0, g.pending_bytes, g.cs, err);
}

/* Layer buckets of one model: layer l's gradient is the contiguous range layer[l] of the
 * trainable vector (the layout puts each decoder layer's tensors together, layer after
 * layer); rest[] is what lies outside every layer (embeddings, final norm, head). */
typedef struct { size_t off, n; } nc_range;
static struct {
  poc_model *m;
  poc_device *d;
  int L, n_rest, armed, next, failed;
  nc_range *layer, rest[2];
  char err[POC_ERR_LEN];
} ov;

/* the decoder layer a tensor belongs to, or -1 */
static int nc_layer_of(const char *name) {
  int l = -1, n = 0;
  if (sscanf(name, "model.layers.%d.%n", &l, &n) == 1 && n > 0) return l;
  return -1;
}

/* model.c calls this after queueing layer l's backward (poc_model_set_layer_hook). Layers
 * come in backward order, L-1 down to 0, and so do the sums: the order every rank uses. */
static void nc_layer_done(void *ctx, int l) {
  (void)ctx;
  if (!ov.armed || ov.failed || l != ov.L - 1 - ov.next) return;
  char err[POC_ERR_LEN];
  poc_dptr g0 = poc_model_part_addr(ov.m, POC_PART_GRAD);
  if (trn_nccl_sum_async(ov.d, g0 + ov.layer[l].off * 4, POC_DT_F32, ov.layer[l].n, err)) {
    ov.failed = 1;
    snprintf(ov.err, sizeof ov.err, "%s", err);
    return;
  }
  ov.next++;
  /* The backward ends by synchronising the device, which would wait for these sums as long
   * as a stuck peer leaves them unfinished: with a timeout, the host waits for them here
   * instead, polling (the timed part of join's time: not counted twice). */
  if (l == 0 && trn_comm_timeout() > 0 &&
      nc_wait(ov.d, "a NCCL all-reduce of the gradient", nc_now(), 0, g.cs, err)) {
    ov.failed = 1;
    snprintf(ov.err, sizeof ov.err, "%s", err);
  }
}

int trn_nccl_overlap_init(poc_device *d, poc_model *m, const poc_layout *lay) {
  if (ov.m == m && ov.d == d) { /* a new step: no layer summed yet */
    ov.next = ov.armed = ov.failed = 0;
    return ov.L > 0;
  }
  free(ov.layer);
  memset(&ov, 0, sizeof ov);
  ov.m = m;
  ov.d = d;
  const char *off = getenv("POC_NCCL_OVERLAP");
  /* the base weights train (no adapters), in f32 on a device with NCCL */
  if ((off && !strcmp(off, "0")) || !trn_nccl_active(d) || d->acc != POC_DT_F32 ||
      poc_model_part_addr(m, POC_PART_ADAPTER) || !poc_model_part_addr(m, POC_PART_GRAD))
    return 0;
  int L = 0;
  for (int i = 0; i < lay->n_tensors; i++) {
    int l = nc_layer_of(lay->tensors[i].name);
    if (l + 1 > L) L = l + 1;
  }
  if (L == 0 || !(ov.layer = calloc((size_t)L, sizeof *ov.layer))) return 0;
  for (int l = 0; l < L; l++) ov.layer[l].off = SIZE_MAX;
  size_t lo = SIZE_MAX, hi = 0;
  for (int i = 0; i < lay->n_tensors; i++) {
    const poc_tensor_info *t = &lay->tensors[i];
    int l = nc_layer_of(t->name);
    if (l < 0) continue;
    nc_range *r = &ov.layer[l];
    /* each tensor extends its layer's range: contiguous, in layout order */
    if (r->off == SIZE_MAX) {
      r->off = t->offset;
      r->n = t->numel;
    } else if (t->offset == r->off + r->n) {
      r->n += t->numel;
    } else {
      goto no;
    }
    if (r->off < lo) lo = r->off;
    if (r->off + r->n > hi) hi = r->off + r->n;
  }
  /* layer after layer with nothing between, the rest before and after them */
  for (int l = 0; l < L; l++)
    if (ov.layer[l].off == SIZE_MAX || (l && ov.layer[l].off != ov.layer[l - 1].off + ov.layer[l - 1].n))
      goto no;
  if (lo != ov.layer[0].off || hi != ov.layer[L - 1].off + ov.layer[L - 1].n) goto no;
  for (int i = 0; i < lay->n_tensors; i++) {
    const poc_tensor_info *t = &lay->tensors[i];
    if (nc_layer_of(t->name) < 0 && t->offset < hi && t->offset + t->numel > lo) goto no;
  }
  if (lo > 0) ov.rest[ov.n_rest++] = (nc_range){0, lo};
  if (hi < lay->n_params) ov.rest[ov.n_rest++] = (nc_range){hi, lay->n_params - hi};
  ov.L = L;
  return 1;
no:
  free(ov.layer);
  ov.layer = NULL;
  ov.L = 0;
  return 0;
}

void trn_nccl_overlap_arm(poc_model *m, int on) {
  if (ov.m != m || !ov.L) return;
  ov.armed = on;
  if (on) {
    ov.next = 0;
    ov.failed = 0;
  }
  poc_model_set_layer_hook(m, on ? nc_layer_done : NULL, NULL);
}

int trn_nccl_overlap_layers(poc_model *m, char *err) {
  if (ov.m != m || !ov.L) {
    snprintf(err, POC_ERR_LEN, "nccl: no layer buckets for this model (trn_nccl_overlap_init)");
    return -1;
  }
  trn_nccl_overlap_arm(m, 0);
  if (ov.failed) {
    snprintf(err, POC_ERR_LEN, "%s", ov.err);
    return -1;
  }
  poc_dptr g0 = poc_model_part_addr(m, POC_PART_GRAD);
  for (int l = ov.L - 1 - ov.next; l >= 0; l--) {
    if (trn_nccl_sum_async(ov.d, g0 + ov.layer[l].off * 4, POC_DT_F32, ov.layer[l].n, err))
      return -1;
    ov.next++;
  }
  return 0;
}

int trn_nccl_overlap_finish(poc_model *m, char *err) {
  /* layers this rank's backward did not reach, should the caller not have issued them */
  if (trn_nccl_overlap_layers(m, err)) return -1;
  poc_dptr g0 = poc_model_part_addr(m, POC_PART_GRAD);
  for (int i = 0; i < ov.n_rest; i++)
    if (trn_nccl_sum_async(ov.d, g0 + ov.rest[i].off * 4, POC_DT_F32, ov.rest[i].n, err))
      return -1;
  return trn_nccl_join(ov.d, err);
}

void trn_nccl_close(poc_device *d) {
  if (ov.d == d) { /* (its model may be freed already: no hook to remove) */
    free(ov.layer);
    memset(&ov, 0, sizeof ov);
  }
  if (!g.comm || g.d != d) return;
  /* destroy waits for queued collectives: only when nothing failed, else abort */
  if (g.failed || d->failed || d->sync(d, NULL)) g.nl.ncclCommAbort(g.comm);
  else g.nl.ncclCommDestroy(g.comm);
  if (g.cs) {
    nd.event_destroy(g.ready);
    nd.event_destroy(g.done);
    nd.stream_destroy(g.cs);
    g.cs = NULL;
  }
  g.comm = NULL;
  g.d = NULL;
  g.ctx = NULL;
  g.group = 0;
  g.pending = 0;
}
