/* comm.c — the collectives of comm.h: MPI when built with it (POC_HAVE_MPI) and started by
 * a launcher, else a single process for which every collective is the identity.
 *
 * MPI is initialised only when a launcher's environment says this process is one of
 * several (OMPI_COMM_WORLD_SIZE, PMI_SIZE, PMIX_RANK with a size, SLURM's PMI), so a
 * binary built with MPI and started on its own never touches MPI (no singleton start). */
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "comm.h"
#include "train_internal.h"

#ifdef POC_HAVE_MPI
#include <mpi.h>
#endif

static int g_rank = 0, g_size = 1, g_mpi = 0;
static char g_desc[64] = "single process";
static char g_name[256] = "poc";
static double g_timeout = 600;
static volatile sig_atomic_t g_step = 0;
static double g_comm_s = 0;
static uint64_t g_comm_bytes = 0;
static trn_comm_counters g_ct;

void trn_comm_stats(double *seconds, uint64_t *bytes) {
  *seconds = g_comm_s;
  *bytes = g_comm_bytes;
}

void trn_comm_counters_get(trn_comm_counters *c) {
  *c = g_ct;
  c->seconds = g_comm_s;
  c->bytes = g_comm_bytes;
}

void trn_comm_count(double seconds, uint64_t bytes) {
  g_comm_s += seconds;
  g_ct.exposed_s += seconds;
  g_comm_bytes += bytes;
}

void trn_comm_set_name(const char *name) { snprintf(g_name, sizeof g_name, "%s", name); }
void trn_comm_set_timeout(double seconds) { g_timeout = seconds; }
void trn_comm_set_step(int64_t step) { g_step = (sig_atomic_t)step; }
const char *trn_comm_name(void) { return g_name; }
int64_t trn_comm_step(void) { return (int64_t)g_step; }
double trn_comm_timeout(void) { return g_timeout; }
void trn_comm_account(double seconds, uint64_t bytes) {
  g_comm_s += seconds;
  g_comm_bytes += bytes;
}

#ifdef POC_HAVE_MPI
/* The launcher ends every rank with SIGTERM when one fails or dies: say which rank
 * stopped where (write(2) only: this runs in a signal handler), then end as SIGTERM does. */
static void put(char *b, size_t *n, size_t cap, const char *s) {
  while (*s && *n + 1 < cap) b[(*n)++] = *s++;
}
static void put_int(char *b, size_t *n, size_t cap, long long v) {
  char d[24];
  int k = 0;
  if (v < 0) v = 0;
  do d[k++] = (char)('0' + v % 10); while ((v /= 10) && k < 23);
  while (k && *n + 1 < cap) b[(*n)++] = d[--k];
}
static void on_term(int sig) {
  char b[512];
  size_t n = 0;
  put(b, &n, sizeof b, g_name);
  put(b, &n, sizeof b, ": rank ");
  put_int(b, &n, sizeof b, g_rank);
  if (g_step > 0) {
    put(b, &n, sizeof b, ": stopped during step ");
    put_int(b, &n, sizeof b, g_step);
  } else {
    put(b, &n, sizeof b, ": stopped before the first step");
  }
  put(b, &n, sizeof b, ": the launcher ended the job (another rank failed or died); "
      "checkpoints written so far are intact\n");
  ssize_t w = write(2, b, n);
  (void)w;
  signal(sig, SIG_DFL);
  raise(sig);
}
#endif

/* The size a launcher announces, or 0 when none started this process. */
static int launcher_size(void) {
  static const char *vars[] = {"OMPI_COMM_WORLD_SIZE", "PMI_SIZE", "PMIX_SIZE",
                               "MPI_LOCALNRANKS", "SLURM_NTASKS"};
  for (size_t i = 0; i < sizeof vars / sizeof *vars; i++) {
    const char *v = getenv(vars[i]);
    if (v && *v) {
      int n = atoi(v);
      if (n > 0) return n;
    }
  }
  return 0;
}

int trn_comm_init(char *err) {
  int n = launcher_size();
  /* SLURM_NTASKS alone (an sbatch script's shell, not srun's tasks) is no launch */
  int launched = getenv("OMPI_COMM_WORLD_SIZE") || getenv("PMI_RANK") || getenv("PMIX_RANK") ||
                 getenv("SLURM_PROCID");
  if (!launched || n <= 1) return 0;
#ifdef POC_HAVE_MPI
  int have = 0;
  MPI_Initialized(&have);
  if (!have && MPI_Init(NULL, NULL) != MPI_SUCCESS) {
    trn_errf(err, "MPI_Init failed");
    return -1;
  }
  MPI_Comm_rank(MPI_COMM_WORLD, &g_rank);
  MPI_Comm_size(MPI_COMM_WORLD, &g_size);
  g_mpi = 1;
  struct sigaction sa;
  memset(&sa, 0, sizeof sa);
  sa.sa_handler = on_term;
  sigemptyset(&sa.sa_mask);
  sigaction(SIGTERM, &sa, NULL);
  snprintf(g_desc, sizeof g_desc, "MPI, %d rank%s", g_size, g_size > 1 ? "s" : "");
  return 0;
#else
  trn_errf(err, "started as one of %d ranks, but this binary was built without MPI (poc's "
           "CMake found no MPI): it can only train as a single process. Install MPI "
           "(Debian: openmpi-bin libopenmpi-dev), rebuild poc and the binary, or run it "
           "without mpirun", n);
  return -1;
#endif
}

void trn_comm_finalize(void) {
#ifdef POC_HAVE_MPI
  if (g_mpi) MPI_Finalize();
#endif
  g_mpi = 0;
}

void trn_comm_abort(int rc) {
  fflush(stdout);
  fflush(stderr);
#ifdef POC_HAVE_MPI
  if (g_mpi && g_size > 1) MPI_Abort(MPI_COMM_WORLD, rc ? rc : 1);
#endif
  (void)rc;
}

int trn_comm_rank(void) { return g_rank; }
int trn_comm_size(void) { return g_size; }
const char *trn_comm_desc(void) { return g_desc; }

#ifdef POC_HAVE_MPI
/* MPI counts are int: long arrays go in pieces */
#define CHUNK ((size_t)1 << 28)
static int mpi_fail(int rc, const char *what, char *err) {
  char msg[MPI_MAX_ERROR_STRING];
  int len = 0;
  MPI_Error_string(rc, msg, &len);
  trn_errf(err, "MPI %s failed: %.*s", what, len, msg);
  return -1;
}
static double mono_s(void) {
  struct timespec t;
  clock_gettime(CLOCK_MONOTONIC, &t);
  return (double)t.tv_sec + 1e-9 * (double)t.tv_nsec;
}

/* Waits for a non-blocking collective, at most --collective-timeout seconds: a rank that
 * never arrives (dead, stuck, or on another code path) ends the job with a message that
 * names this rank and the step, instead of a hang. Polls with a short sleep once the
 * first millisecond has passed, so a waiting rank leaves its core to the others. */
static int wait_req(MPI_Request *rq, double t0, const char *what, char *err) {
  for (;;) {
    int done = 0;
    int rc = MPI_Test(rq, &done, MPI_STATUS_IGNORE);
    if (rc != MPI_SUCCESS) return mpi_fail(rc, what, err);
    if (done) {
      g_comm_s += mono_s() - t0;
      g_ct.exposed_s += mono_s() - t0;
      return 0;
    }
    double dt = mono_s() - t0;
    if (g_timeout > 0 && dt > g_timeout) {
      if (g_step > 0)
        fprintf(stderr, "%s: error: rank %d: step %lld: %s waited %.0f s for the other ranks "
                "(--collective-timeout %g); one of them is dead or stuck, so every rank stops. "
                "Checkpoints written so far are intact\n", g_name, g_rank, (long long)g_step,
                what, dt, g_timeout);
      else
        fprintf(stderr, "%s: error: rank %d: before the first step: %s waited %.0f s for the "
                "other ranks (--collective-timeout %g); one of them is dead or stuck, so every "
                "rank stops\n", g_name, g_rank, what, dt, g_timeout);
      fflush(stderr);
      MPI_Abort(MPI_COMM_WORLD, 1);
    }
    if (dt > 1e-3) {
      struct timespec ts = {0, dt > 0.1 ? 1000000 : 50000};
      nanosleep(&ts, NULL);
    }
  }
}

static int allreduce(void *x, size_t n, MPI_Datatype t, size_t el, MPI_Op op, char *err) {
  for (size_t i = 0; i < n; i += CHUNK) {
    size_t k = n - i < CHUNK ? n - i : CHUNK;
    MPI_Request rq;
    double t0 = mono_s();
    int rc = MPI_Iallreduce(MPI_IN_PLACE, (char *)x + i * el, (int)k, t, op, MPI_COMM_WORLD, &rq);
    if (rc != MPI_SUCCESS) return mpi_fail(rc, "all-reduce", err);
    g_comm_bytes += k * el;
    g_ct.reduced += k * el;
    g_ct.wire += 2 * (uint64_t)(g_size - 1) * k * el / (uint64_t)g_size;
    if (wait_req(&rq, t0, "an all-reduce", err)) return -1;
  }
  return 0;
}
#endif

int trn_comm_sum_f64(double *x, size_t n, char *err) {
#ifdef POC_HAVE_MPI
  if (g_size > 1) return allreduce(x, n, MPI_DOUBLE, sizeof *x, MPI_SUM, err);
#endif
  (void)x, (void)n, (void)err;
  return 0;
}

int trn_comm_sum_f32(float *x, size_t n, char *err) {
#ifdef POC_HAVE_MPI
  if (g_size > 1) return allreduce(x, n, MPI_FLOAT, sizeof *x, MPI_SUM, err);
#endif
  (void)x, (void)n, (void)err;
  return 0;
}

int trn_comm_sum_i64(int64_t *x, size_t n, char *err) {
#ifdef POC_HAVE_MPI
  if (g_size > 1) return allreduce(x, n, MPI_INT64_T, sizeof *x, MPI_SUM, err);
#endif
  (void)x, (void)n, (void)err;
  return 0;
}

int trn_comm_min_i64(int64_t *x, size_t n, char *err) {
#ifdef POC_HAVE_MPI
  if (g_size > 1) return allreduce(x, n, MPI_INT64_T, sizeof *x, MPI_MIN, err);
#endif
  (void)x, (void)n, (void)err;
  return 0;
}

int trn_comm_bcast(void *buf, size_t bytes, int root, char *err) {
#ifdef POC_HAVE_MPI
  if (g_size > 1)
    for (size_t i = 0; i < bytes; i += CHUNK) {
      size_t k = bytes - i < CHUNK ? bytes - i : CHUNK;
      MPI_Request rq;
      double t0 = mono_s();
      int rc = MPI_Ibcast((char *)buf + i, (int)k, MPI_BYTE, root, MPI_COMM_WORLD, &rq);
      if (rc != MPI_SUCCESS) return mpi_fail(rc, "broadcast", err);
      g_comm_bytes += k;
      g_ct.wire += k;
      if (wait_req(&rq, t0, "a broadcast", err)) return -1;
    }
#endif
  (void)buf, (void)bytes, (void)root, (void)err;
  return 0;
}

/* ---- ZeRO's reduce-scatter and all-gather on host arrays ------------------------------- */

#ifdef POC_HAVE_MPI
static int mpi_type(poc_dtype t, MPI_Datatype *mt) {
  switch (t) {
  case POC_DT_F32: *mt = MPI_FLOAT; return 0;
  case POC_DT_F64: *mt = MPI_DOUBLE; return 0;
  case POC_DT_I32: *mt = MPI_INT32_T; return 0;
  case POC_DT_BF16: *mt = MPI_UINT16_T; return 0; /* moved, never summed */
  }
  return -1;
}

/* MPI counts are int: a shard of more elements is refused (an 8-way shard of a 7B model
 * is 875M elements, well below) */
static int count_ok(size_t n, const char *what, char *err) {
  if (n <= 2147483647u) return 0;
  trn_errf(err, "%s of %zu elements per rank: MPI counts stop at 2^31 - 1", what, n);
  return -1;
}
#endif

int trn_comm_reduce_scatter(const void *send, void *recv, poc_dtype t, size_t n, char *err) {
  size_t el = poc_dtype_size(t);
  if (t == POC_DT_BF16) {
    trn_errf(err, "reduce-scatter: bf16 sums are made in float (stage through f32)");
    return -1;
  }
#ifdef POC_HAVE_MPI
  if (g_size > 1) {
    MPI_Datatype mt;
    if (mpi_type(t, &mt) || count_ok(n, "a reduce-scatter", err)) return -1;
    char *self = (char *)recv - (size_t)g_rank * n * el;
    int inplace = (const char *)send == self;
    MPI_Request rq;
    double t0 = mono_s();
    /* in place, the sum of shard `rank` lands at the start of send: moved to recv after */
    int rc = MPI_Ireduce_scatter_block(inplace ? MPI_IN_PLACE : send, inplace ? self : recv,
                                       (int)n, mt, MPI_SUM, MPI_COMM_WORLD, &rq);
    if (rc != MPI_SUCCESS) return mpi_fail(rc, "reduce-scatter", err);
    g_comm_bytes += (uint64_t)g_size * n * el;
    g_ct.reduced += (uint64_t)g_size * n * el;
    g_ct.wire += (uint64_t)(g_size - 1) * n * el;
    if (wait_req(&rq, t0, "a reduce-scatter", err)) return -1;
    if (inplace && g_rank) memmove(recv, self, n * el);
    return 0;
  }
#endif
  if (send != recv) memmove(recv, send, n * el);
  (void)err;
  return 0;
}

int trn_comm_all_gather(const void *send, void *recv, poc_dtype t, size_t n, char *err) {
  size_t el = poc_dtype_size(t);
#ifdef POC_HAVE_MPI
  if (g_size > 1) {
    MPI_Datatype mt;
    if (mpi_type(t, &mt) || count_ok(n, "an all-gather", err)) return -1;
    int inplace = (const char *)send == (const char *)recv + (size_t)g_rank * n * el;
    MPI_Request rq;
    double t0 = mono_s();
    int rc = MPI_Iallgather(inplace ? MPI_IN_PLACE : send, (int)n, mt, recv, (int)n, mt,
                            MPI_COMM_WORLD, &rq);
    if (rc != MPI_SUCCESS) return mpi_fail(rc, "all-gather", err);
    g_comm_bytes += n * el;
    g_ct.gathered += (uint64_t)g_size * n * el;
    g_ct.wire += (uint64_t)(g_size - 1) * n * el;
    return wait_req(&rq, t0, "an all-gather", err);
  }
#endif
  if (send != recv) memmove(recv, send, n * el);
  (void)err;
  return 0;
}

/* ---- overlapped reductions ---------------------------------------------------------- */

#ifdef POC_HAVE_MPI
/* The collectives in flight, with the counts arrays MPI reads until they complete. */
static MPI_Request *g_rq;
static int **g_rq_counts;
static int g_n_rq, g_cap_rq;
static double g_window0;           /* when the first of them started */

static int push_req(char *err) {
  if (g_n_rq == g_cap_rq) {
    int cap = g_cap_rq ? 2 * g_cap_rq : 64;
    MPI_Request *r = realloc(g_rq, (size_t)cap * sizeof *r);
    if (r) g_rq = r;
    int **c = realloc(g_rq_counts, (size_t)cap * sizeof *c);
    if (c) g_rq_counts = c;
    if (!r || !c) {
      trn_errf(err, "out of memory for collectives in flight");
      return -1;
    }
    g_cap_rq = cap;
  }
  if (g_n_rq == 0) g_window0 = mono_s();
  g_rq_counts[g_n_rq] = NULL;
  return g_n_rq++;
}
#endif

int trn_comm_start_sum_f64(double *x, size_t n, char *err) {
#ifdef POC_HAVE_MPI
  if (g_size > 1 && n > 0) {
    if (count_ok(n, "an overlapped all-reduce", err)) return -1;
    int i = push_req(err);
    if (i < 0) return -1;
    int rc = MPI_Iallreduce(MPI_IN_PLACE, x, (int)n, MPI_DOUBLE, MPI_SUM, MPI_COMM_WORLD, &g_rq[i]);
    if (rc != MPI_SUCCESS) {
      g_n_rq--;
      return mpi_fail(rc, "all-reduce", err);
    }
    g_comm_bytes += n * sizeof *x;
    g_ct.reduced += n * sizeof *x;
    g_ct.wire += 2 * (uint64_t)(g_size - 1) * n * sizeof *x / (uint64_t)g_size;
  }
#endif
  (void)x, (void)n, (void)err;
  return 0;
}

int trn_comm_start_reduce_scatter_f64(const double *send, double *shard, size_t lo, size_t hi,
                                      size_t count, char *err) {
  size_t mlo = (size_t)g_rank * count, mhi = mlo + count;
  size_t a = lo > mlo ? lo : mlo, b = hi < mhi ? hi : mhi;
#ifdef POC_HAVE_MPI
  if (g_size > 1 && hi > lo) {
    if (count_ok(hi - lo, "an overlapped reduce-scatter", err)) return -1;
    int i = push_req(err);
    if (i < 0) return -1;
    int *counts = malloc((size_t)g_size * sizeof *counts);
    if (!counts) {
      g_n_rq--;
      trn_errf(err, "out of memory for a reduce-scatter's counts");
      return -1;
    }
    /* [lo, hi) falls into consecutive ranks' shards in rank order: rank r gets the sum of
       [lo, hi) ∩ [r·count, (r + 1)·count) */
    for (int r = 0; r < g_size; r++) {
      size_t rl = (size_t)r * count, rh = rl + count;
      size_t x = lo > rl ? lo : rl, y = hi < rh ? hi : rh;
      counts[r] = y > x ? (int)(y - x) : 0;
    }
    g_rq_counts[i] = counts;
    int rc = MPI_Ireduce_scatter(send + lo, shard + (b > a ? a - mlo : 0), counts, MPI_DOUBLE,
                                 MPI_SUM, MPI_COMM_WORLD, &g_rq[i]);
    if (rc != MPI_SUCCESS) {
      free(counts);
      g_n_rq--;
      return mpi_fail(rc, "reduce-scatter", err);
    }
    g_comm_bytes += (hi - lo) * sizeof *send;
    g_ct.reduced += (hi - lo) * sizeof *send;
    g_ct.wire += (uint64_t)(g_size - 1) * (hi - lo) * sizeof *send / (uint64_t)g_size;
    return 0;
  }
#endif
  if (b > a) memcpy(shard + (a - mlo), send + a, (b - a) * sizeof *send);
  (void)err;
  return 0;
}

void trn_comm_progress(void) {
#ifdef POC_HAVE_MPI
  int done;
  if (g_n_rq) MPI_Testall(g_n_rq, g_rq, &done, MPI_STATUSES_IGNORE);
#endif
}

int trn_comm_wait(char *err) {
#ifdef POC_HAVE_MPI
  if (g_n_rq) {
    double t0 = mono_s();
    for (;;) {
      int done = 0;
      int rc = MPI_Testall(g_n_rq, g_rq, &done, MPI_STATUSES_IGNORE);
      if (rc != MPI_SUCCESS) return mpi_fail(rc, "overlapped reduction", err);
      if (done) break;
      double dt = mono_s() - t0;
      if (g_timeout > 0 && dt > g_timeout) {
        fprintf(stderr, "%s: error: rank %d: step %lld: the gradient's reductions waited %.0f s "
                "for the other ranks (--collective-timeout %g); one of them is dead or stuck, "
                "so every rank stops. Checkpoints written so far are intact\n", g_name, g_rank,
                (long long)g_step, dt, g_timeout);
        fflush(stderr);
        MPI_Abort(MPI_COMM_WORLD, 1);
      }
      if (dt > 1e-3) {
        struct timespec ts = {0, dt > 0.1 ? 1000000 : 50000};
        nanosleep(&ts, NULL);
      }
    }
    double t1 = mono_s();
    /* total: from the first start to the end of the wait; exposed: the wait */
    g_comm_s += t1 - g_window0;
    g_ct.exposed_s += t1 - t0;
    for (int i = 0; i < g_n_rq; i++) free(g_rq_counts[i]);
    g_n_rq = 0;
  }
#endif
  (void)err;
  return 0;
}
