/* mplan.c — interval packing of a step's buffers into one arena (mplan.h).
 *
 * Placing buffers with known lifetimes at offsets so that live ones never overlap is
 * dynamic storage allocation, NP-hard in general; greedy placement by decreasing size,
 * each buffer in the best-fitting gap among the already placed buffers it is live with,
 * is the usual heuristic (it is what tensor-memory planners in ML compilers do) and is
 * optimal when no two lifetimes overlap partially, which is most of a training step. */
#include "mplan.h"

#include <limits.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "cpu/cpu_internal.h"

const char *const poc_mp_step_names[POC_MP_NSTEPS] = {"forward", "head", "objective",
                                                      "head backward", "backward"};

void poc_mplan_init(poc_mplan *p, size_t align) {
  memset(p, 0, sizeof *p);
  p->align = align ? align : 1;
}

void poc_mplan_free(poc_mplan *p) {
  free(p->buf);
  memset(p, 0, sizeof *p);
}

int poc_mplan_add(poc_mplan *p, const char *name, int layer, size_t bytes, int first, int last) {
  if (p->n == p->cap) {
    int cap = p->cap ? 2 * p->cap : 64;
    poc_mbuf *b = realloc(p->buf, (size_t)cap * sizeof *b);
    if (!b) {
      p->oom = 1;
      return -1;
    }
    p->buf = b;
    p->cap = cap;
  }
  p->buf[p->n] = (poc_mbuf){.name = name, .layer = layer, .bytes = bytes, .first = first,
                            .last = last};
  return p->n++;
}

static size_t round_up(size_t x, size_t a) { return (x + a - 1) / a * a; }

static int live_together(const poc_mbuf *a, const poc_mbuf *b) {
  return a->first <= b->last && b->first <= a->last;
}

static const poc_mplan *sort_plan; /* qsort has no context argument in C11 */

static int by_size(const void *x, const void *y) {
  const poc_mbuf *a = &sort_plan->buf[*(const int *)x], *b = &sort_plan->buf[*(const int *)y];
  if (a->bytes != b->bytes) return a->bytes > b->bytes ? -1 : 1;
  if (a->first != b->first) return a->first < b->first ? -1 : 1;
  return *(const int *)x - *(const int *)y;
}

static int by_offset(const void *x, const void *y) {
  const poc_mbuf *a = &sort_plan->buf[*(const int *)x], *b = &sort_plan->buf[*(const int *)y];
  if (a->offset != b->offset) return a->offset < b->offset ? -1 : 1;
  return *(const int *)x - *(const int *)y;
}

int poc_mplan_solve(poc_mplan *p, char *err) {
  if (p->oom) {
    snprintf(err, POC_ERR_LEN, "memory plan: out of memory");
    return -1;
  }
  int *order = malloc(((size_t)p->n + 1) * sizeof *order);
  int *placed = malloc(((size_t)p->n + 1) * sizeof *placed);
  int *near = malloc(((size_t)p->n + 1) * sizeof *near);
  if (!order || !placed || !near) {
    free(order), free(placed), free(near);
    snprintf(err, POC_ERR_LEN, "memory plan: out of memory");
    return -1;
  }
  p->peak = p->sum = 0;
  for (int i = 0; i < p->n; i++) {
    if (p->buf[i].first > p->buf[i].last) {
      snprintf(err, POC_ERR_LEN, "memory plan: buffer '%s' dies (step %d) before it is made "
               "(step %d)", p->buf[i].name, p->buf[i].last, p->buf[i].first);
      free(order), free(placed), free(near);
      return -1;
    }
    order[i] = i;
    p->buf[i].offset = 0;
    p->sum += round_up(p->buf[i].bytes, p->align);
  }
  sort_plan = p;
  qsort(order, (size_t)p->n, sizeof *order, by_size);
  int np = 0;
  for (int o = 0; o < p->n; o++) {
    poc_mbuf *b = &p->buf[order[o]];
    if (b->bytes == 0) continue; /* nothing to place: offset 0 */
    int nn = 0;
    for (int k = 0; k < np; k++)
      if (live_together(&p->buf[placed[k]], b)) near[nn++] = placed[k];
    qsort(near, (size_t)nn, sizeof *near, by_offset);
    /* the gaps between the live neighbours, in address order; best fit, else the end */
    size_t at = 0, best = SIZE_MAX, best_gap = SIZE_MAX;
    for (int k = 0; k < nn; k++) {
      const poc_mbuf *q = &p->buf[near[k]];
      if (q->offset >= at && q->offset - at >= b->bytes && q->offset - at < best_gap) {
        best = at;
        best_gap = q->offset - at;
      }
      size_t end = round_up(q->offset + q->bytes, p->align);
      if (end > at) at = end;
    }
    b->offset = best != SIZE_MAX ? best : at;
    if (round_up(b->offset + b->bytes, p->align) > p->peak)
      p->peak = round_up(b->offset + b->bytes, p->align);
    placed[np++] = order[o];
  }
  free(order);
  free(placed);
  free(near);
  return 0;
}

int poc_mplan_check(const poc_mplan *p, char *err, size_t errlen) {
  for (int i = 0; i < p->n; i++) {
    const poc_mbuf *a = &p->buf[i];
    if (a->offset % p->align) {
      snprintf(err, errlen, "memory plan: '%s' at offset %zu is not %zu-aligned", a->name,
               a->offset, p->align);
      return -1;
    }
    if (a->bytes && a->offset + a->bytes > p->peak) {
      snprintf(err, errlen, "memory plan: '%s' ends at %zu, past the arena's %zu bytes", a->name,
               a->offset + a->bytes, p->peak);
      return -1;
    }
    for (int j = i + 1; j < p->n; j++) {
      const poc_mbuf *b = &p->buf[j];
      if (!a->bytes || !b->bytes || !live_together(a, b)) continue;
      if (a->offset < b->offset + b->bytes && b->offset < a->offset + a->bytes) {
        snprintf(err, errlen, "memory plan: '%s' (layer %d, steps %d-%d) and '%s' (layer %d, "
                 "steps %d-%d) are live together and overlap at [%zu, %zu) and [%zu, %zu)",
                 a->name, a->layer, a->first, a->last, b->name, b->layer, b->first, b->last,
                 a->offset, a->offset + a->bytes, b->offset, b->offset + b->bytes);
        return -1;
      }
    }
  }
  return 0;
}

void poc_mplan_print(const poc_mplan *p, FILE *f, const char *indent, const char *const *steps) {
  if (!steps) steps = poc_mp_step_names;
  for (int i = 0; i < p->n; i++) {
    const poc_mbuf *b = &p->buf[i];
    char name[64];
    if (b->layer >= 0) snprintf(name, sizeof name, "layer%d.%s", b->layer, b->name);
    else snprintf(name, sizeof name, "%s", b->name);
    fprintf(f, "%s%-16s @ %12zu  %12zu %s  %s", indent, name, b->offset, b->bytes,
            p->unit ? p->unit : "bytes", steps[b->first]);
    if (b->last != b->first) fprintf(f, " .. %s", steps[b->last]);
    fputc('\n', f);
  }
}

void poc_mplan_cpu(poc_mplan_model *in, int fp64) {
  /* device_cpu.c's poc_cpu_device_open */
  in->act = in->acc = fp64 ? POC_DT_F64 : POC_DT_F32;
  in->shared_act = 1;
  in->head_rows = CPU_HEAD_ROWS;
  in->head_chunk = 4096;
  in->head_block = CPU_HEAD_BLOCK;
  in->head_chunk_acc = 1;
}

const char *poc_mplan_cpu_train(poc_mplan_model *in, int bf16) {
  poc_mplan_cpu(in, 0);
#ifdef POC_HAVE_DNNL
  if (bf16) {
    in->act = POC_DT_BF16;
    in->shared_act = 0;
    return "bf16";
  }
#else
  (void)bf16;
#endif
  return "fp32";
}

void poc_mplan_cuda(poc_mplan_model *in) {
  /* device_cuda.c's device: bf16 compute, fp32 accumulation, every head row at once in
     column chunks (POC_CUDA_HEAD_CHUNK overrides the chunk there too) */
  const char *ch = getenv("POC_CUDA_HEAD_CHUNK");
  in->act = POC_DT_BF16;
  in->acc = POC_DT_F32;
  in->shared_act = 0;
  in->head_rows = INT_MAX;
  in->head_chunk = ch && atoi(ch) > 0 ? atoi(ch) : 4096;
  in->head_block = SIZE_MAX;
  in->head_chunk_acc = 0;
}

int poc_mplan_add_model(poc_mplan_device *dev, const poc_mplan_model *in, const poc_layout *lay,
                        const poc_layout *alay, int shares_weights, poc_mplan *arena, char *err) {
  size_t sa = poc_dtype_size(in->act), sc = poc_dtype_size(in->acc);
  size_t P = lay->n_params, PA = alay ? alay->n_params : 0, PT = alay ? PA : P;
  /* model.c's mdl_create: compute weights (and an fp32 master copy where the device
     computes in another format and the base trains), adapters, gradients, moments */
  if (!shares_weights) {
    dev->weights += in->shared_act ? P * sc : P * sa + (in->trainable && !alay ? P * sc : 0);
    if (alay) dev->weights += PA * sc + (in->shared_act ? 0 : PA * sa);
  }
  if (in->trainable) {
    dev->grads += PT * sc;
    dev->optim += 2 * PT * sc;
  }
  poc_mplan own, *p = arena ? arena : &own;
  poc_mplan_init(p, 256);
  if (poc_model_plan(in, p, err) || poc_mplan_solve(p, err)) {
    poc_mplan_free(p);
    return -1;
  }
  dev->arenas += p->peak;
  dev->total = dev->weights + dev->grads + dev->optim + dev->arenas;
  if (!arena) poc_mplan_free(p);
  return 0;
}
