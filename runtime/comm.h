/* comm.h — the collectives data parallelism needs, over whichever transport the process
 * was started with (prefix trn_comm_):
 *
 *   single process   the default, and what a binary built without MPI always is
 *   MPI              when the binary was built with MPI (CMake found it) and a launcher
 *                    (mpirun, mpiexec, srun) started it: rank and size from MPI_COMM_WORLD
 *
 * One communicator per process, set up once by trn_comm_init. Every call is collective:
 * all ranks make the same calls in the same order, with the same counts. Sums are
 * elementwise over ranks; the result is the same on every rank.
 */
#ifndef POC_COMM_H
#define POC_COMM_H

#include <stddef.h>
#include <stdint.h>

#include "device.h"

/* Starts the transport. A process that a launcher started as one of R > 1 ranks but that
 * has no MPI built in is refused (-1 with the reason in err): it would train alone and
 * the R copies would race on one run directory. */
int trn_comm_init(char *err);
/* After a successful run: MPI_Finalize. */
void trn_comm_finalize(void);
/* A failing rank ends every rank with its exit status (MPI_Abort), so none waits forever
 * in a collective the failing one never reaches. Returns only with one rank. */
void trn_comm_abort(int rc);

/* For messages: the program's name, the step in progress (0 before the first), and how
 * long a collective may wait for the other ranks before every rank stops (seconds; 0:
 * forever). A SIGTERM from the launcher (another rank failed or died) is reported with
 * the rank and the step before the process ends. */
void trn_comm_set_name(const char *name);
void trn_comm_set_step(int64_t step);
void trn_comm_set_timeout(double seconds);

/* Since the start: the bytes this rank handed to collectives and the seconds they took
 * (waiting for the other ranks included; overlapped reductions from their first start to
 * the end of their wait). Collectives on device buffers (below) count too, their staging
 * copies included. */
void trn_comm_stats(double *seconds, uint64_t *bytes);
/* The same split up. bytes: handed to collectives (as above); reduced: the input of sums
 * (all-reduce, reduce-scatter); gathered: the output of all-gathers; wire: what this
 * rank sends under a ring algorithm (all-reduce 2(R−1)/R of its buffer, reduce-scatter
 * and all-gather (R−1)/R of the R-shard buffer, broadcast the buffer). seconds: in
 * collectives, overlapped time included; exposed_s: the part spent waiting on one (with
 * nothing overlapped, the same). */
typedef struct trn_comm_counters {
  double seconds, exposed_s;
  uint64_t bytes, reduced, gathered, wire;
} trn_comm_counters;
void trn_comm_counters_get(trn_comm_counters *c);
/* For collectives on the device (comm_nccl.h): the settings above, and their seconds and
 * bytes added to trn_comm_stats. */
const char *trn_comm_name(void);
int64_t trn_comm_step(void);
double trn_comm_timeout(void);
void trn_comm_account(double seconds, uint64_t bytes);

int trn_comm_rank(void);
int trn_comm_size(void);
/* "MPI, 3 ranks" / "single process": for the run's first line. */
const char *trn_comm_desc(void);

int trn_comm_sum_f64(double *x, size_t n, char *err);
int trn_comm_sum_f32(float *x, size_t n, char *err);
int trn_comm_sum_i64(int64_t *x, size_t n, char *err);
/* The minimum over ranks (agreement: every rank passes 1 for ok, 0 for failed). */
int trn_comm_min_i64(int64_t *x, size_t n, char *err);
int trn_comm_bcast(void *buf, size_t bytes, int root, char *err);

/* ZeRO's two collectives on host arrays of n·R (send) and n (recv) elements of type t
 * (F32, F64, I32; BF16 only gathered). reduce-scatter: recv = rank's n elements of the
 * elementwise sum of every rank's send (send may equal recv − rank·n: in place, send is
 * then clobbered). all-gather: recv[r·n ..] = rank r's send (send may equal
 * recv + rank·n: in place). One process: copies. */
int trn_comm_reduce_scatter(const void *send, void *recv, poc_dtype t, size_t n, char *err);
int trn_comm_all_gather(const void *send, void *recv, poc_dtype t, size_t n, char *err);
/* Overlapped reductions of double arrays (the CPU's gradient accumulators): each call
 * starts a non-blocking collective and returns; trn_comm_wait finishes every one started.
 * Every rank must start the same ones in the same order; a blocking collective may come
 * between the last start and the wait (every rank makes it after the whole group).
 * sum: x[0..n) summed over ranks in place. reduce-scatter: of send[lo, hi) (indices into
 * an array of R·count), the part in this rank's shard [rank·count, (rank + 1)·count)
 * lands in shard[] at its place in the shard (shard: count elements). The arrays must stay
 * untouched until the wait. Time: trn_comm_stats counts from the first start to the end of
 * the wait, exposed_s the wait. */
int trn_comm_start_sum_f64(double *x, size_t n, char *err);
int trn_comm_start_reduce_scatter_f64(const double *send, double *shard, size_t lo, size_t hi,
                                      size_t count, char *err);
/* Lets MPI move the data of the reductions in flight (call it now and then). */
void trn_comm_progress(void);
int trn_comm_wait(char *err);
/* Adds seconds and bytes of staging around a collective (comm_dev.c) to the counters. */
void trn_comm_count(double seconds, uint64_t bytes);

/* Collectives on device buffers of device d (t = element type of the buffer). */
int trn_comm_dev_sum(poc_device *d, poc_dptr x, poc_dtype t, size_t n, char *err);
/* send: R*count elements; recv: count elements = this rank's shard of the sum */
int trn_comm_dev_reduce_scatter(poc_device *d, poc_dptr send, poc_dptr recv, poc_dtype t, size_t count, char *err);
/* send: count elements (this rank's shard); recv: R*count, rank r's shard at r*count (in place allowed: send == recv + rank*count) */
int trn_comm_dev_all_gather(poc_device *d, poc_dptr send, poc_dptr recv, poc_dtype t, size_t count, char *err);
/* (reduce-scatter in place is allowed too: recv == send + rank*count, send clobbered) */

#endif
