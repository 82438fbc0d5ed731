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

/* Since the start: the bytes this rank handed to collectives and the seconds it spent in
 * them (waiting for the other ranks included; nothing overlaps them yet). */
void trn_comm_stats(double *seconds, uint64_t *bytes);
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

#endif
