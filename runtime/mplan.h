/* mplan.h — the memory plan: a step's buffers, each live over an interval of the step's
 * schedule, placed at offsets in one arena so that no two buffers live at the same time
 * share a byte; the arena's size is the plan's peak. The runtime carves a model's
 * activations and scratch from such a plan (runtime/model.c), and `poc build` makes the
 * same plan from the model's config.json to print the peak before any run. */
#ifndef POC_MPLAN_H
#define POC_MPLAN_H

#include <stddef.h>
#include <stdio.h>

#include "pocrt.h"

/* The schedule of one micro-step of one model, in order. A buffer live over [first,
 * last] holds its value from its first writer in `first` to its last reader in `last`. */
enum {
  POC_MP_FWD,   /* the layers' forward (saving activations when a backward follows) */
  POC_MP_HEAD,  /* the loss head's forward: per-token log-probs, entropies */
  POC_MP_OBJ,   /* the objective on the host, from the head's outputs read back */
  POC_MP_HBWD,  /* the loss head's backward, from the objective's gradients */
  POC_MP_LBWD,  /* the layers' backward */
  POC_MP_NSTEPS
};
extern const char *const poc_mp_step_names[POC_MP_NSTEPS];

typedef struct poc_mbuf {
  const char *name;  /* a static string: "x", "dlogp" */
  int layer;         /* a per-layer buffer's layer, else -1 */
  size_t bytes;
  int first, last;   /* live steps, inclusive */
  size_t offset;     /* set by poc_mplan_solve */
} poc_mbuf;

typedef struct poc_mplan {
  poc_mbuf *buf;
  int n, cap;
  size_t align;      /* every offset a multiple of it */
  size_t peak;       /* the arena's bytes once solved */
  size_t sum;        /* the bytes without sharing: what one buffer per value would take */
  const char *unit;  /* what sizes count, for printing: NULL is bytes */
  int oom;
} poc_mplan;

void poc_mplan_init(poc_mplan *p, size_t align);
void poc_mplan_free(poc_mplan *p);
/* Adds a buffer; its index (buffers keep the order they were added in). */
int poc_mplan_add(poc_mplan *p, const char *name, int layer, size_t bytes, int first, int last);
/* Places every buffer: largest first (ties: earliest first, then the order added), each
 * in the smallest gap between the buffers already placed whose lives overlap its own, or
 * after the last of them (best fit). Sets offsets and peak; -1 with err when memory for
 * the bookkeeping ran out or a lifetime is empty. */
int poc_mplan_solve(poc_mplan *p, char *err);
/* The plan's invariants: offsets aligned, within the peak, and no two buffers whose
 * lives overlap sharing a byte. 0, or -1 naming the pair. */
int poc_mplan_check(const poc_mplan *p, char *err, size_t errlen);
/* One line per buffer: offset, bytes, lifetime (steps named by steps[], NULL:
 * poc_mp_step_names), name. */
void poc_mplan_print(const poc_mplan *p, FILE *f, const char *indent, const char *const *steps);

/* What a model's arena depends on, without a device or weights. */
typedef struct poc_mplan_model {
  poc_config cfg;
  int max_tokens;          /* the longest pack the model runs: every call of it, all examples */
  int trainable;
  const poc_lora_cfg *lora;  /* NULL for a plain model */
  /* the device's formats and head blocking (poc_device's fields of the same names) */
  poc_dtype act, acc;
  int shared_act, head_rows, head_chunk, head_chunk_acc;
  size_t head_block;
} poc_mplan_model;

/* A device's formats and head blocking as its poc_device sets them: the CPU's (fp32 or
 * fp64) and CUDA's (bf16 compute, fp32 accumulation). */
void poc_mplan_cpu(poc_mplan_model *in, int fp64);
/* The CPU device a training run opens for the train block's precision: cpu-bf16 (bf16
 * operands, fp32 accumulators; device_cpu.c) for bf16 where this poc has it, else the
 * fp32 device. Returns "bf16" or "fp32". */
const char *poc_mplan_cpu_train(poc_mplan_model *in, int bf16);
void poc_mplan_cuda(poc_mplan_model *in);
/* The model's activation arena for a micro-step (runtime/model.c, the carve itself):
 * per-layer saved activations and scratch, added to p in the carve's order, unsolved. */
int poc_model_plan(const poc_mplan_model *in, poc_mplan *p, char *err);

/* A whole device: every model's weights (compute and master copies), adapters,
 * gradients and AdamW moments (live the whole run) and its solved arena, for a run's
 * models. Each model's arena is its own allocation; the device's peak is their sum. */
typedef struct poc_mplan_device {
  size_t weights, grads, optim, arenas, total;
} poc_mplan_device;
/* Adds model `in`'s whole-run memory to dev, its arena solved (the arena's plan left in
 * arena when not NULL, else freed). lay/alay: its layouts (alay NULL unless LoRA);
 * shares_weights: a frozen view of another model's weights (no weight memory). */
int poc_mplan_add_model(poc_mplan_device *dev, const poc_mplan_model *in, const poc_layout *lay,
                        const poc_layout *alay, int shares_weights, poc_mplan *arena, char *err);

#endif
