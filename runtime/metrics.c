/* metrics.c — OUT/metrics.jsonl (one JSON object a line) and the progress line on
 * stderr.
 *
 * A line is whole or absent: each is written by one write() of the line and its newline
 * on an O_APPEND descriptor, and a failed or short write is cut back off. A line torn
 * anyway (the machine lost power mid-write) is recognised on resume by its missing
 * newline, or by not parsing, and dropped with the lines after the checkpoint. */
#include <errno.h>
#include <fcntl.h>
#include <math.h>
#include <sys/stat.h>
#include <unistd.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cjson/cJSON.h>

#include "st.h"
#include "train_internal.h"

int trn_metrics_truncate(const char *path, int64_t max_step, char *err) {
  FILE *f = fopen(path, "r");
  if (!f) return 0;
  size_t cap = 0, n = 0, kept = 0;
  char *line = NULL, *buf = NULL;
  size_t bcap = 0;
  ssize_t got;
  int dropped = 0;
  while ((got = getline(&line, &cap, f)) >= 0) {
    /* a line without its newline was cut short by a crash, whatever it parses as */
    int whole = got > 0 && line[got - 1] == '\n' && (size_t)got == strlen(line);
    cJSON *o = whole ? cJSON_Parse(line) : NULL;
    const cJSON *s = cJSON_GetObjectItemCaseSensitive(o, "step");
    int keep = cJSON_IsNumber(s) && s->valuedouble <= (double)max_step;
    cJSON_Delete(o);
    n++;
    if (!keep) {
      dropped++;
      continue;
    }
    if (kept + (size_t)got + 2 > bcap) {
      bcap = (kept + (size_t)got + 2) * 2;
      char *q = realloc(buf, bcap);
      if (!q) {
        free(buf);
        free(line);
        fclose(f);
        trn_errf(err, "%s: out of memory", path);
        return -1;
      }
      buf = q;
    }
    memcpy(buf + kept, line, (size_t)got);
    kept += (size_t)got;
    if (buf[kept - 1] != '\n') buf[kept++] = '\n';
  }
  free(line);
  fclose(f);
  if (!dropped) {
    free(buf);
    return 0;
  }
  if (!buf) buf = calloc(1, 1);
  if (buf) buf[kept] = 0;
  int rc = buf ? st_write_text_atomic(path, buf, err) : -1;
  free(buf);
  return rc;
}

int trn_metrics_append(const char *path, const char *line, char *err) {
  size_t n = strlen(line);
  char *buf = malloc(n + 1);
  if (!buf) {
    trn_errf(err, "%s: out of memory", path);
    return -1;
  }
  memcpy(buf, line, n);
  buf[n++] = '\n';
  /* one write of the whole line, cut back off if it is short: a line is whole or absent */
  int rc = trn_append_bytes(path, buf, n, err);
  free(buf);
  return rc;
}

void trn_fmt_thousands(char *buf, size_t n, double x) {
  char raw[32];
  trn_path(raw, sizeof raw, "%.0f", x < 0 ? 0 : x);
  size_t len = strlen(raw), k = 0;
  for (size_t i = 0; i < len && k + 2 < n; i++) {
    if (i && (len - i) % 3 == 0) buf[k++] = ',';
    buf[k++] = raw[i];
  }
  buf[k] = 0;
}

void trn_progress(int64_t step, int64_t total, double loss, double tok_s, double secs_left,
                  int tty) {
  char ts[40];
  trn_fmt_thousands(ts, sizeof ts, tok_s);
  long s = secs_left > 0 ? (long)(secs_left + 0.5) : 0;
  char left[32];
  if (s >= 3600) trn_path(left, sizeof left, "%ld:%02ld:%02ld", s / 3600, s / 60 % 60, s % 60);
  else trn_path(left, sizeof left, "%02ld:%02ld", s / 60, s % 60);
  /* %.4g past a million: a diverging loss should not print 300 digits */
  fprintf(stderr, fabs(loss) < 1e6 ? "%sstep %lld/%lld | loss %.4f | %s tok/s | %s left%s"
                                   : "%sstep %lld/%lld | loss %.4g | %s tok/s | %s left%s",
          tty ? "\r" : "", (long long)step, (long long)total, loss, ts, left,
          tty ? "\033[K" : "\n");
  fflush(stderr);
}
