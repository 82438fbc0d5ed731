/* metrics_tb.c — --log tensorboard: OUT/tensorboard/events.out.tfevents.<time>.<host>.
 *
 * An event file is a TFRecord stream: each record is
 *     uint64 length | uint32 masked_crc32c(length bytes) | data | uint32 masked_crc32c(data)
 * (little-endian; masked(c) = ((c >> 15) | (c << 17)) + 0xa282ead8), and each record's
 * data an Event message:
 *     Event   { double wall_time = 1; int64 step = 2; string file_version = 3;
 *               Summary summary = 5; }
 *     Summary { repeated Value value = 1; }
 *     Value   { string tag = 1; float simple_value = 2; }
 * The first event names the format ("brain.Event:2"); then one event per metrics line
 * with every number of the line except "step" as a scalar tagged with its key. Scalars
 * are float32 (simple_value), the precision TensorBoard keeps; metrics.jsonl keeps the
 * doubles. A null (a non-finite number, a skipped step's loss) is written as NaN. */
#include <dirent.h>
#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "train_internal.h"

#define TB_PREFIX "events.out.tfevents."

static uint32_t tb_mask(uint32_t c) { return ((c >> 15) | (c << 17)) + 0xa282ead8u; }

static double tb_now(void) {
  struct timespec ts;
  clock_gettime(CLOCK_REALTIME, &ts);
  return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

static void le(unsigned char *b, uint64_t v, int n) {
  for (int i = 0; i < n; i++) b[i] = (unsigned char)(v >> (8 * i));
}

/* The record framing around one serialized Event, appended with one write(). */
static int tb_append(const trn_tb *t, const trn_pb *ev, char *err) {
  if (ev->oom) {
    trn_errf(err, "%s: out of memory", t->path);
    return -1;
  }
  trn_pb r = {0};
  unsigned char h[12], c[4];
  le(h, ev->n, 8);
  le(h + 8, tb_mask(trn_crc32c(h, 8)), 4);
  le(c, tb_mask(trn_crc32c(ev->b, ev->n)), 4);
  trn_pb_raw(&r, h, 12);
  trn_pb_raw(&r, ev->b, ev->n);
  trn_pb_raw(&r, c, 4);
  int rc = r.oom ? (trn_errf(err, "%s: out of memory", t->path), -1)
                 : trn_append_bytes(t->path, r.b, r.n, err);
  trn_pb_free(&r);
  return rc;
}

/* Keeps the records up to the last one with step <= keep_step (the file_version event has
 * step 0), and drops a torn or damaged tail: the file's valid prefix, cut by truncation. */
static int tb_cut(const char *path, int64_t keep_step, char *err) {
  unsigned char *b;
  size_t n, pos = 0, cut = 0;
  if (trn_read_all(path, &b, &n)) {
    trn_errf(err, "%s: cannot read: %s", path, strerror(errno));
    return -1;
  }
  while (n - pos >= 12) {
    uint64_t len = 0;
    uint32_t hc = 0, dc = 0;
    for (int i = 0; i < 8; i++) len |= (uint64_t)b[pos + i] << (8 * i);
    for (int i = 0; i < 4; i++) hc |= (uint32_t)b[pos + 8 + i] << (8 * i);
    if (hc != tb_mask(trn_crc32c(b + pos, 8)) || len > n - pos - 12 || n - pos - 12 - len < 4)
      break;
    const unsigned char *d = b + pos + 12;
    for (int i = 0; i < 4; i++) dc |= (uint32_t)d[len + i] << (8 * i);
    if (dc != tb_mask(trn_crc32c(d, (size_t)len))) break;
    size_t q = 0;
    trn_pb_field f;
    int64_t step = 0;
    int got;
    while ((got = trn_pb_next(d, (size_t)len, &q, &f)) == 1)
      if (f.field == 2 && f.wire == 0) step = (int64_t)f.v;
    if (got < 0 || step > keep_step) break;
    pos += 12 + (size_t)len + 4;
    cut = pos;
  }
  free(b);
  if (cut < n && truncate(path, (off_t)cut)) {
    trn_errf(err, "%s: cannot cut back to step %lld: %s", path, (long long)keep_step,
             strerror(errno));
    return -1;
  }
  return 0;
}

int trn_tb_open(trn_tb *t, const char *out, int64_t keep_step, char *err) {
  char dir[4096];
  t->on = 0;
  if (trn_path(dir, sizeof dir, "%s/tensorboard", out)) {
    trn_errf(err, "%s/tensorboard: path too long", out);
    return -1;
  }
  if (mkdir(dir, 0777) && errno != EEXIST) {
    trn_errf(err, "%s: cannot create: %s", dir, strerror(errno));
    return -1;
  }
  /* this run's file: the one poc wrote before (a resume), whatever its time stamp */
  DIR *dd = opendir(dir);
  if (!dd) {
    trn_errf(err, "%s: cannot read: %s", dir, strerror(errno));
    return -1;
  }
  struct dirent *e;
  t->path[0] = 0;
  while ((e = readdir(dd)))
    if (!strncmp(e->d_name, TB_PREFIX, strlen(TB_PREFIX))) {
      char p[4200];
      trn_path(p, sizeof p, "%s/%s", dir, e->d_name);
      if (keep_step < 0) unlink(p); /* a run started afresh: its old events go */
      else if (!t->path[0] || strcmp(p, t->path) > 0) memcpy(t->path, p, sizeof p);
    }
  closedir(dd);
  if (t->path[0]) {
    if (tb_cut(t->path, keep_step, err)) return -1;
    t->on = 1;
    return 0;
  }
  char host[256] = "localhost";
  if (gethostname(host, sizeof host - 1)) strcpy(host, "localhost");
  host[sizeof host - 1] = 0;
  double now = tb_now();
  if (trn_path(t->path, sizeof t->path, "%s/" TB_PREFIX "%lld.%s", dir, (long long)now, host)) {
    trn_errf(err, "%s: path too long", dir);
    return -1;
  }
  trn_pb ev = {0};
  trn_pb_f64(&ev, 1, now);
  trn_pb_u64(&ev, 2, 0);
  trn_pb_str(&ev, 3, "brain.Event:2");
  int rc = tb_append(t, &ev, err);
  trn_pb_free(&ev);
  if (rc) return -1;
  t->on = 1;
  return 1;
}

int trn_tb_line(trn_tb *t, const cJSON *line, char *err) {
  if (!t->on) return 0;
  const cJSON *s = cJSON_GetObjectItemCaseSensitive(line, "step");
  if (!cJSON_IsNumber(s)) return 0;
  trn_pb sum = {0}, ev = {0};
  for (const cJSON *it = line->child; it; it = it->next) {
    if (!it->string || !strcmp(it->string, "step")) continue;
    if (!cJSON_IsNumber(it) && !cJSON_IsNull(it)) continue;
    trn_pb v = {0};
    trn_pb_str(&v, 1, it->string);
    trn_pb_f32(&v, 2, cJSON_IsNumber(it) ? (float)it->valuedouble : NAN);
    trn_pb_msg(&sum, 1, &v);
    trn_pb_free(&v);
  }
  trn_pb_f64(&ev, 1, tb_now());
  trn_pb_u64(&ev, 2, (uint64_t)s->valuedouble);
  trn_pb_msg(&ev, 5, &sum);
  int rc = tb_append(t, &ev, err);
  trn_pb_free(&sum);
  trn_pb_free(&ev);
  return rc;
}
