/* comm_nccl.h — collectives on the device's own memory through NCCL (prefix trn_nccl_),
 * for data parallelism on the CUDA device: the gradient is summed where it lives instead
 * of being copied to the host, summed by MPI and copied back.
 *
 * NCCL is opened at run time (runtime/cuda/nccl.c): the library named by POC_NCCL_LIBRARY,
 * else libnccl.so.2. MPI (comm.h) starts the ranks and carries NCCL's bootstrap: rank 0
 * makes the unique id, trn_comm_bcast hands it to every rank, and each joins the
 * communicator on its own device. One communicator per process, on one device.
 *
 * Every call is collective over the ranks of comm.h, like those of comm.h: all ranks make
 * the same calls in the same order with the same counts and types. Work is queued on the
 * device's stream, behind what is already queued there (the overlap's on a stream of
 * NCCL's own, ordered by events; below); a failure (a NCCL error, or one
 * NCCL reports later through ncclCommGetAsyncError) becomes the device's sticky error and
 * is returned in err. When comm.h's collective timeout is set (--collective-timeout), each
 * call waits for its collective to finish for at most that long; then the communicator is
 * aborted and every rank stops with a message naming the rank and the step.
 *
 * Without the CUDA backend (POC_HAVE_NCCL unset) the same names exist and NCCL is never
 * available, so callers need no conditionals.
 */
#ifndef POC_COMM_NCCL_H
#define POC_COMM_NCCL_H

#include <stddef.h>
#include <stdio.h>

#include "device.h"

#ifdef POC_HAVE_NCCL
/* 0: the communicator is up on every rank. 1: NCCL is not used, for a reason every rank
 * agrees on (one process, a device other than cuda, a library that does not load on some
 * rank, the CUDA emulation without a stand-in library): the reason is in err, and the
 * caller may fall back to MPI through host memory. -1: an error (err). Collective. */
int trn_nccl_open(poc_device *d, char *err);
/* 1 when trn_nccl_open succeeded for d and trn_nccl_close has not run. */
int trn_nccl_active(const poc_device *d);
/* "NCCL 2.28.9 (libnccl.so.2)": for the run's first lines; "" when not open. */
const char *trn_nccl_desc(void);

/* x[0..n) of type t summed over the ranks, in place, the same result on every rank
 * (f32, f64, bf16, i32). */
int trn_nccl_sum(poc_device *d, poc_dptr x, poc_dtype t, size_t n, char *err);
/* send holds R·count elements; recv gets count: the sum over ranks of block `rank`. */
int trn_nccl_reduce_scatter(poc_device *d, poc_dptr send, poc_dptr recv, poc_dtype t,
                            size_t count, char *err);
/* send holds count elements; recv gets R·count: rank r's block at r·count. */
int trn_nccl_all_gather(poc_device *d, poc_dptr send, poc_dptr recv, poc_dtype t, size_t count,
                        char *err);
/* x[0..n) of rank `root` onto every rank. */
int trn_nccl_bcast(poc_device *d, poc_dptr x, poc_dtype t, size_t n, int root, char *err);
/* Between begin and end the calls above only queue their collectives (NCCL's group: one
 * launch for them all); end issues them and waits as a single call would. Not nested. */
void trn_nccl_group_begin(poc_device *d);
int trn_nccl_group_end(poc_device *d, char *err);
/* Overlap. sum_async queues the sum of x on NCCL's own stream after everything queued on
 * the device's stream so far, and returns at once; the device goes on (the backward of
 * other layers) while it runs. join makes the device's stream wait for every sum queued
 * since the last join (and waits on the host as trn_nccl_sum does, with a timeout).
 * Collective, in call order, like the others. */
int trn_nccl_sum_async(poc_device *d, poc_dptr x, poc_dtype t, size_t n, char *err);
int trn_nccl_join(poc_device *d, char *err);
/* Gradient buckets per decoder layer for a model that trains its base weights in f32:
 *   init    at each step's start: 1 when m's layout allows it and POC_NCCL_OVERLAP is
 *           not 0 (the buckets are kept per model)
 *   arm     before the step's last backward of m on this rank: each layer's gradient is
 *           summed (sum_async) as soon as that layer's backward is queued, in backward order
 *   layers  right after the step's backwards, before any other collective: the layers not
 *           summed yet (a rank whose last micro-batch had none of m's examples, or that had
 *           no examples). A rank that went on to a host collective first would deadlock the
 *           others: their backward ends by synchronising the device, which waits for sums
 *           that need this rank.
 *   finish  then the rest of the gradient (embeddings, final norm, head), and join.
 * Every rank thus makes the same sums in the same order. */
int trn_nccl_overlap_init(poc_device *d, poc_model *m, const poc_layout *lay);
void trn_nccl_overlap_arm(poc_model *m, int on);
int trn_nccl_overlap_layers(poc_model *m, char *err);
int trn_nccl_overlap_finish(poc_model *m, char *err);
/* Destroys the communicator (aborts it when the device or a collective failed, so no
 * rank waits on it). Before the device is closed. */
void trn_nccl_close(poc_device *d);

#else /* built without the CUDA backend: NCCL is never available */

static inline int trn_nccl_open(poc_device *d, char *err) {
  (void)d;
  snprintf(err, POC_ERR_LEN, "this poc was built without the CUDA backend, so without NCCL");
  return 1;
}
static inline int trn_nccl_active(const poc_device *d) { return (void)d, 0; }
static inline const char *trn_nccl_desc(void) { return ""; }
static inline int trn_nccl_unavailable(char *err) {
  snprintf(err, POC_ERR_LEN, "NCCL is not available in this build");
  return -1;
}
static inline int trn_nccl_sum(poc_device *d, poc_dptr x, poc_dtype t, size_t n, char *err) {
  return (void)d, (void)x, (void)t, (void)n, trn_nccl_unavailable(err);
}
static inline int trn_nccl_reduce_scatter(poc_device *d, poc_dptr send, poc_dptr recv,
                                          poc_dtype t, size_t count, char *err) {
  return (void)d, (void)send, (void)recv, (void)t, (void)count, trn_nccl_unavailable(err);
}
static inline int trn_nccl_all_gather(poc_device *d, poc_dptr send, poc_dptr recv, poc_dtype t,
                                      size_t count, char *err) {
  return (void)d, (void)send, (void)recv, (void)t, (void)count, trn_nccl_unavailable(err);
}
static inline int trn_nccl_bcast(poc_device *d, poc_dptr x, poc_dtype t, size_t n, int root,
                                 char *err) {
  return (void)d, (void)x, (void)t, (void)n, (void)root, trn_nccl_unavailable(err);
}
static inline int trn_nccl_sum_async(poc_device *d, poc_dptr x, poc_dtype t, size_t n,
                                     char *err) {
  return (void)d, (void)x, (void)t, (void)n, trn_nccl_unavailable(err);
}
static inline int trn_nccl_join(poc_device *d, char *err) { return (void)d, (void)err, 0; }
static inline int trn_nccl_overlap_init(poc_device *d, poc_model *m, const poc_layout *lay) {
  return (void)d, (void)m, (void)lay, 0;
}
static inline void trn_nccl_overlap_arm(poc_model *m, int on) { (void)m, (void)on; }
static inline int trn_nccl_overlap_layers(poc_model *m, char *err) {
  return (void)m, trn_nccl_unavailable(err);
}
static inline int trn_nccl_overlap_finish(poc_model *m, char *err) {
  return (void)m, trn_nccl_unavailable(err);
}
static inline void trn_nccl_group_begin(poc_device *d) { (void)d; }
static inline int trn_nccl_group_end(poc_device *d, char *err) { return (void)d, (void)err, 0; }
static inline void trn_nccl_close(poc_device *d) { (void)d; }
#endif

#endif
