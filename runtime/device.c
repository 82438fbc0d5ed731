/* device.c — the device-independent part of device.h: element sizes, the kernels'
 * dimensions from a model configuration, the sticky error every device shares, and bf16
 * conversions on the host. */
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <string.h>

#include "device.h"

size_t poc_dtype_size(poc_dtype t) {
  switch (t) {
  case POC_DT_F32: return 4;
  case POC_DT_F64: return 8;
  case POC_DT_BF16: return 2;
  case POC_DT_I32: return 4;
  }
  return 0;
}

void poc_dims_from_config(const poc_config *c, poc_dims *d) {
  d->H = c->hidden_size;
  d->F = c->intermediate_size;
  d->V = c->vocab_size;
  d->nh = c->num_attention_heads;
  d->nkv = c->num_key_value_heads;
  d->hd = c->head_dim;
  d->eps = c->rms_norm_eps;
}

/* Only the first failure is kept: what follows it is usually its consequence. */
static void dev_failv(poc_device *d, int staged, const char *fmt, va_list ap) {
  if (d->failed) return;
  int n = vsnprintf(d->err, sizeof d->err, fmt, ap);
  if (staged && d->stage && n >= 0 && (size_t)n < sizeof d->err) {
    if (d->layer >= 0)
      snprintf(d->err + n, sizeof d->err - (size_t)n, " in layer %d %s", d->layer, d->stage);
    else
      snprintf(d->err + n, sizeof d->err - (size_t)n, " in %s", d->stage);
  }
  d->failed = 1;
}

void poc_dev_fail(poc_device *d, const char *fmt, ...) {
  va_list ap;
  va_start(ap, fmt);
  dev_failv(d, 1, fmt, ap);
  va_end(ap);
}

void poc_dev_fail_unstaged(poc_device *d, const char *fmt, ...) {
  va_list ap;
  va_start(ap, fmt);
  dev_failv(d, 0, fmt, ap);
  va_end(ap);
}

int poc_dev_sync(poc_device *d, char *err) {
  if (d->sync) return d->sync(d, err);
  if (!d->failed) return 0;
  if (err) snprintf(err, POC_ERR_LEN, "%s", d->err);
  return -1;
}

/* ---- bf16 on the host (put/get of the devices, checkpoints) ------------------------------ */

/* bf16 is the top half of a float. Round to nearest even: add 0x7fff plus the bit that
 * lands in the last kept place, so exact halves go to the even neighbour; NaNs stay quiet
 * NaNs instead of rounding into infinity. */
uint16_t poc_bf16_from_f32(float f) {
  uint32_t u;
  memcpy(&u, &f, 4);
  if ((u & 0x7fffffffu) > 0x7f800000u) return (uint16_t)((u >> 16) | 0x40);
  return (uint16_t)((u + 0x7fffu + ((u >> 16) & 1)) >> 16);
}

/* From double, rounding to float first would round twice (a value just above a bf16 half
 * can land on it). Rounding to odd in the middle step cannot: float keeps 16 more bits than
 * bf16, so a sticky odd last bit still tells "above the half" from "on it". */
uint16_t poc_bf16_from_f64(double x) {
  float f = (float)x;
  if ((double)f != x && x == x) {
    uint32_t u;
    memcpy(&u, &f, 4);
    if (fabs((double)f) > fabs(x)) u -= 1; /* the neighbour towards zero (inf → FLT_MAX) */
    u |= 1;
    memcpy(&f, &u, 4);
  }
  return poc_bf16_from_f32(f);
}

float poc_bf16_to_f32(uint16_t b) {
  uint32_t u = (uint32_t)b << 16;
  float f;
  memcpy(&f, &u, 4);
  return f;
}
