/* metrics_wandb.c — --log wandb: an offline Weights & Biases run, written in the layout
 * wandb's own offline mode leaves, so `wandb sync OUT/wandb/offline-run-*` uploads it:
 *
 *     OUT/wandb/offline-run-<YYYYMMDD_HHMMSS>-<id>/run-<id>.wandb
 *
 * The .wandb file is wandb's transaction log: a 7-byte header (":W&B", the magic 0xBEE1
 * as uint16, version 0), then LevelDB's log format: 32 KiB blocks of chunks, each
 *     uint32 crc | uint16 length | uint8 type | data
 * with type 1 a whole record, 2/3/4 its first/middle/last piece when it does not fit in
 * the block's rest; fewer than 7 bytes left in a block are zero padding. crc is zlib's
 * CRC-32 of the type byte followed by the data (not masked). Each record is a Record
 * message of wandb_internal.proto (the field numbers below):
 *     Record       { int64 num = 1; HistoryRecord history = 2; SummaryRecord summary = 3;
 *                    RunRecord run = 17; RunExitRecord exit = 18; HeaderRecord header = 21;
 *                    RecordInfo _info = 200; }
 *     RunRecord    { run_id = 1; project = 3; ConfigRecord config = 4; display_name = 8;
 *                    host = 13; Timestamp start_time = 17 {seconds = 1, nanos = 2} }
 *     ConfigRecord { repeated ConfigItem update = 1 { key = 1; value_json = 16; } }
 *     HistoryRecord{ repeated HistoryItem item = 1 { key = 1; value_json = 16; };
 *                    HistoryStep step = 2 { int64 num = 1; } }
 *     SummaryRecord{ repeated SummaryItem update = 1 { key = 1; value_json = 16; } }
 *     RunExitRecord{ int32 exit_code = 1; int32 runtime = 2; }
 *     HeaderRecord { VersionInfo version_info = 1 { producer = 1; min_consumer = 2; } }
 *     RecordInfo   { string stream_id = 1; }       (the run id)
 *
 * The records: header, run (knobs and train settings as its config), then per metrics
 * line a history record (every number but "step", plus wandb's _step, _timestamp and
 * _runtime; a null is left out) and a summary record of the same values, and at the end
 * an exit record. A resume cuts the log back after the last history record of a step
 * <= the checkpoint's (with its summary), which also drops the exit record. */
#include <dirent.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "train_internal.h"

#define WB_BLOCK 32768
#define WB_HDR 7 /* a chunk's header, and the file's */
enum { WB_FULL = 1, WB_FIRST = 2, WB_MIDDLE = 3, WB_LAST = 4 };
enum { R_NUM = 1, R_HISTORY = 2, R_SUMMARY = 3, R_RUN = 17, R_EXIT = 18, R_HEADER = 21,
       R_INFO = 200 };

static double wb_now(void) {
  struct timespec ts;
  clock_gettime(CLOCK_REALTIME, &ts);
  return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

static void le(unsigned char *b, uint64_t v, int n) {
  for (int i = 0; i < n; i++) b[i] = (unsigned char)(v >> (8 * i));
}

/* Frames one record's bytes at file offset *off into `out`, in chunks that respect the
 * 32 KiB blocks. */
static void wb_frame(trn_pb *out, uint64_t *off, const trn_pb *rec) {
  size_t left = rec->n, used = 0;
  int first = 1;
  do {
    size_t room = WB_BLOCK - (size_t)(*off % WB_BLOCK);
    if (room < WB_HDR) {
      static const unsigned char zero[WB_HDR];
      trn_pb_raw(out, zero, room);
      *off += room;
      room = WB_BLOCK;
    }
    size_t take = left <= room - WB_HDR ? left : room - WB_HDR;
    int last = take == left;
    unsigned char type = first && last ? WB_FULL : first ? WB_FIRST : last ? WB_LAST : WB_MIDDLE;
    unsigned char h[WB_HDR];
    uint32_t crc = trn_crc32(trn_crc32(0, &type, 1), rec->b + used, take);
    le(h, crc, 4);
    le(h + 4, take, 2);
    h[6] = type;
    trn_pb_raw(out, h, WB_HDR);
    trn_pb_raw(out, rec->b + used, take);
    *off += WB_HDR + take;
    used += take;
    left -= take;
    first = 0;
  } while (left);
}

/* Record { num, <field>: body, _info { stream_id } }, framed onto `out`. */
static void wb_record(trn_wandb *w, trn_pb *out, uint64_t *off, int field, const trn_pb *body) {
  trn_pb rec = {0}, info = {0};
  trn_pb_u64(&rec, R_NUM, (uint64_t)++w->num);
  trn_pb_msg(&rec, field, body);
  trn_pb_str(&info, 1, w->run_id);
  trn_pb_msg(&rec, R_INFO, &info);
  if (rec.oom) out->oom = 1;
  wb_frame(out, off, &rec);
  trn_pb_free(&rec);
  trn_pb_free(&info);
}

static int wb_write(trn_wandb *w, trn_pb *out, uint64_t off, int64_t num0, char *err) {
  int rc = out->oom ? (trn_errf(err, "%s: out of memory", w->path), -1)
                    : trn_append_bytes(w->path, out->b, out->n, err);
  if (rc) w->num = num0; /* nothing of it reached the file */
  else w->off = off;
  trn_pb_free(out);
  return rc;
}

/* { key = 1; value_json = 16 } — ConfigItem, HistoryItem and SummaryItem alike */
static void wb_item(trn_pb *msg, int field, const char *key, const char *json) {
  trn_pb it = {0};
  trn_pb_str(&it, 1, key);
  trn_pb_str(&it, 16, json);
  trn_pb_msg(msg, field, &it);
  trn_pb_free(&it);
}

/* Reads the log: the offset just after the last record to keep (see the file comment),
 * the number of records before it, and whether the file is wandb's at all. */
static int wb_cut(trn_wandb *w, int64_t keep_step, char *err) {
  unsigned char *b;
  size_t n;
  if (trn_read_all(w->path, &b, &n)) {
    trn_errf(err, "%s: cannot read: %s", w->path, strerror(errno));
    return -1;
  }
  if (n < WB_HDR || memcmp(b, ":W&B\xe1\xbe\x00", WB_HDR)) {
    free(b);
    trn_errf(err, "%s: not a wandb transaction log (bad header)", w->path);
    return -1;
  }
  size_t pos = WB_HDR, cut = WB_HDR;
  int64_t num = 0, kept = 0;
  trn_pb rec = {0};
  int stop = 0;
  while (!stop && pos < n) {
    size_t room = WB_BLOCK - pos % WB_BLOCK;
    if (room < WB_HDR) {
      pos += room;
      continue;
    }
    if (n - pos < WB_HDR) break;
    size_t len = (size_t)b[pos + 4] | (size_t)b[pos + 5] << 8;
    unsigned char type = b[pos + 6];
    uint32_t crc = 0;
    for (int i = 0; i < 4; i++) crc |= (uint32_t)b[pos + i] << (8 * i);
    if (len > n - pos - WB_HDR || len > room - WB_HDR || type < WB_FULL || type > WB_LAST ||
        crc != trn_crc32(trn_crc32(0, &type, 1), b + pos + WB_HDR, len))
      break; /* torn or damaged: the rest goes */
    if (type == WB_FULL || type == WB_FIRST) rec.n = 0;
    trn_pb_raw(&rec, b + pos + WB_HDR, len);
    pos += WB_HDR + len;
    if (type != WB_FULL && type != WB_LAST) continue;
    /* a whole record: keep it unless it is the exit or a later step's history */
    size_t q = 0;
    trn_pb_field f;
    int got;
    while ((got = trn_pb_next(rec.b, rec.n, &q, &f)) == 1) {
      if (f.field == R_EXIT) stop = 1;
      if (f.field == R_HISTORY && f.wire == 2) {
        size_t q2 = 0;
        trn_pb_field g;
        while (trn_pb_next(f.d, f.len, &q2, &g) == 1)
          if (g.field == 2 && g.wire == 2) {
            size_t q3 = 0;
            trn_pb_field h;
            while (trn_pb_next(g.d, g.len, &q3, &h) == 1)
              if (h.field == 1 && h.wire == 0 && (int64_t)h.v > keep_step) stop = 1;
          }
      }
    }
    if (got < 0 || rec.oom) stop = 1;
    if (stop) break;
    num++;
    cut = pos;
    kept = num;
  }
  trn_pb_free(&rec);
  free(b);
  if (cut < n && truncate(w->path, (off_t)cut)) {
    trn_errf(err, "%s: cannot cut back to step %lld: %s", w->path, (long long)keep_step,
             strerror(errno));
    return -1;
  }
  w->num = kept;
  w->off = cut;
  return 0;
}

/* A run id as wandb makes them: 8 characters of [a-z0-9]. */
static void wb_run_id(char *id, const char *out, double now) {
  char seed[64];
  snprintf(seed, sizeof seed, "%.9f/%ld", now, (long)getpid());
  uint64_t h = trn_hash_str(trn_hash_str(0, out), seed);
  for (int i = 0; i < 8; i++) {
    id[i] = "abcdefghijklmnopqrstuvwxyz0123456789"[h % 36];
    h /= 36;
    if (i == 3) h ^= trn_hash_str(h, "run id");
  }
  id[8] = 0;
}

int trn_wandb_open(trn_wandb *w, const char *out, int64_t keep_step, const char *name,
                   const cJSON *config, char *err) {
  char top[4096];
  w->on = 0;
  w->t0 = wb_now();
  if (trn_path(top, sizeof top, "%s/wandb", out)) {
    trn_errf(err, "%s/wandb: path too long", out);
    return -1;
  }
  if (mkdir(top, 0777) && errno != EEXIST) {
    trn_errf(err, "%s: cannot create: %s", top, strerror(errno));
    return -1;
  }
  /* this run's log: the offline-run-* folder poc made before (resume or restart) */
  DIR *dd = opendir(top);
  if (!dd) {
    trn_errf(err, "%s: cannot read: %s", top, strerror(errno));
    return -1;
  }
  struct dirent *e;
  w->dir[0] = 0;
  while ((e = readdir(dd))) {
    const char *d = e->d_name;
    size_t len = strlen(d);
    if (strncmp(d, "offline-run-", 12) || len < 12 + 15 + 1 + 8 || d[len - 9] != '-') continue;
    char p[4200];
    trn_path(p, sizeof p, "%s/%s", top, d);
    if (!w->dir[0] || strcmp(p, w->dir) > 0) {
      memcpy(w->dir, p, sizeof p);
      snprintf(w->run_id, sizeof w->run_id, "%s", d + len - 8);
    }
  }
  closedir(dd);
  if (w->dir[0]) {
    trn_path(w->path, sizeof w->path, "%s/run-%s.wandb", w->dir, w->run_id);
    struct stat sb;
    if (keep_step >= 0 && stat(w->path, &sb) == 0) {
      if (wb_cut(w, keep_step, err)) return -1;
      w->on = 1;
      return 0;
    }
    /* a restart: the same run id and folder, the log written again from its start */
    if (truncate(w->path, 0) && errno != ENOENT) {
      trn_errf(err, "%s: cannot empty: %s", w->path, strerror(errno));
      return -1;
    }
  } else {
    double now = wb_now();
    time_t ts = (time_t)now;
    struct tm tm;
    char stamp[32];
    localtime_r(&ts, &tm);
    strftime(stamp, sizeof stamp, "%Y%m%d_%H%M%S", &tm);
    wb_run_id(w->run_id, out, now);
    if (trn_path(w->dir, sizeof w->dir, "%s/offline-run-%s-%s", top, stamp, w->run_id) ||
        trn_path(w->path, sizeof w->path, "%s/run-%s.wandb", w->dir, w->run_id)) {
      trn_errf(err, "%s: path too long", top);
      return -1;
    }
    if (mkdir(w->dir, 0777) && errno != EEXIST) {
      trn_errf(err, "%s: cannot create: %s", w->dir, strerror(errno));
      return -1;
    }
  }
  /* header and run records */
  trn_pb o = {0}, hdr = {0}, vi = {0}, run = {0}, cfg = {0}, ts = {0};
  static const unsigned char magic[WB_HDR] = {':', 'W', '&', 'B', 0xe1, 0xbe, 0x00};
  trn_pb_raw(&o, magic, WB_HDR);
  uint64_t off = WB_HDR;
  w->num = 0;
  trn_pb_str(&vi, 1, "poc");
  trn_pb_str(&vi, 2, "0.70.0"); /* the log format version wandb's own writer declares */
  trn_pb_msg(&hdr, 1, &vi);
  wb_record(w, &o, &off, R_HEADER, &hdr);
  char host[256] = "localhost";
  if (gethostname(host, sizeof host - 1)) strcpy(host, "localhost");
  host[sizeof host - 1] = 0;
  for (const cJSON *it = config ? config->child : NULL; it; it = it->next) {
    char *j = cJSON_PrintUnformatted(it);
    if (!j) cfg.oom = 1;
    else wb_item(&cfg, 1, it->string, j);
    cJSON_free(j);
  }
  double now = wb_now();
  trn_pb_u64(&ts, 1, (uint64_t)now);
  trn_pb_u64(&ts, 2, (uint64_t)((now - (double)(uint64_t)now) * 1e9));
  trn_pb_str(&run, 1, w->run_id);
  trn_pb_str(&run, 3, "poc");
  trn_pb_msg(&run, 4, &cfg);
  trn_pb_str(&run, 8, name);
  trn_pb_str(&run, 13, host);
  trn_pb_msg(&run, 17, &ts);
  wb_record(w, &o, &off, R_RUN, &run);
  trn_pb_free(&hdr);
  trn_pb_free(&vi);
  trn_pb_free(&run);
  trn_pb_free(&cfg);
  trn_pb_free(&ts);
  if (wb_write(w, &o, off, 0, err)) return -1;
  w->on = 1;
  return 1;
}

int trn_wandb_line(trn_wandb *w, const cJSON *line, char *err) {
  if (!w->on) return 0;
  const cJSON *s = cJSON_GetObjectItemCaseSensitive(line, "step");
  if (!cJSON_IsNumber(s)) return 0;
  trn_pb hist = {0}, sum = {0}, step = {0}, o = {0};
  char buf[64];
  double now = wb_now();
  for (const cJSON *it = line->child; it; it = it->next) {
    if (!it->string || !strcmp(it->string, "step") || !cJSON_IsNumber(it)) continue;
    char *j = cJSON_PrintUnformatted(it);
    if (!j) {
      hist.oom = 1;
      continue;
    }
    wb_item(&hist, 1, it->string, j);
    wb_item(&sum, 1, it->string, j);
    cJSON_free(j);
  }
  snprintf(buf, sizeof buf, "%lld", (long long)s->valuedouble);
  wb_item(&hist, 1, "_step", buf);
  wb_item(&sum, 1, "_step", buf);
  snprintf(buf, sizeof buf, "%.6f", now);
  wb_item(&hist, 1, "_timestamp", buf);
  wb_item(&sum, 1, "_timestamp", buf);
  snprintf(buf, sizeof buf, "%.6f", now - w->t0);
  wb_item(&hist, 1, "_runtime", buf);
  wb_item(&sum, 1, "_runtime", buf);
  trn_pb_u64(&step, 1, (uint64_t)s->valuedouble);
  trn_pb_msg(&hist, 2, &step);
  int64_t num0 = w->num;
  uint64_t off = w->off;
  wb_record(w, &o, &off, R_HISTORY, &hist);
  wb_record(w, &o, &off, R_SUMMARY, &sum);
  trn_pb_free(&hist);
  trn_pb_free(&sum);
  trn_pb_free(&step);
  return wb_write(w, &o, off, num0, err);
}

int trn_wandb_exit(trn_wandb *w, int exit_code, char *err) {
  if (!w->on) return 0;
  trn_pb ex = {0}, o = {0};
  trn_pb_u64(&ex, 1, (uint64_t)(int64_t)exit_code); /* int32: sign-extended */
  trn_pb_u64(&ex, 2, (uint64_t)(wb_now() - w->t0));
  int64_t num0 = w->num;
  uint64_t off = w->off;
  wb_record(w, &o, &off, R_EXIT, &ex);
  trn_pb_free(&ex);
  return wb_write(w, &o, off, num0, err);
}
