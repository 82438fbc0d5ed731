/* diag.c — diagnostics: `file:line:col: error: message`, the source line, a caret.
 *
 *   policy.po:4:12: error: undefined name 'chosn'; did you mean 'chosen'?
 *     x = sum(chosn)
 *             ^~~~~
 *
 * The caret line copies the tabs of the source line so the caret stays under the
 * right byte in any tab setting. Control bytes in the echoed line are shown as '?'
 * so a damaged file cannot drive the terminal. Very long lines are shown as a window
 * around the column. */
#include <stdarg.h>
#include <stdlib.h>
#include <string.h>

#include "front.h"

struct po_diag {
  FILE *out;
  int errors;
  bool last_printed; /* whether the last error was printed: its notes follow it */
};

enum { WINDOW_BEFORE = 60, WINDOW_AFTER = 100 };

po_diag *po_diag_new(FILE *out) {
  po_diag *d = calloc(1, sizeof *d);
  if (!d) {
    fprintf(stderr, "poc: out of memory\n");
    abort();
  }
  d->out = out ? out : stderr;
  return d;
}

void po_diag_free(po_diag *d) { free(d); }

int po_diag_errors(const po_diag *d) { return d ? d->errors : 0; }

bool po_diag_saturated(const po_diag *d) { return d && d->errors > PO_MAX_PRINTED_ERRORS; }

static void show_line(FILE *out, po_loc loc) {
  size_t len;
  const char *text = po_source_line(loc.src, loc.line, &len);
  if (!text) return;
  if (len && text[len - 1] == '\r') len--;
  size_t col = loc.col > 0 ? (size_t)loc.col - 1 : 0; /* 0-based byte of the caret */
  size_t from = 0, to = len;
  if (len > WINDOW_BEFORE + WINDOW_AFTER) {
    from = col > WINDOW_BEFORE ? col - WINDOW_BEFORE : 0;
    to = from + WINDOW_BEFORE + WINDOW_AFTER < len ? from + WINDOW_BEFORE + WINDOW_AFTER : len;
  }
  if (col > len) col = len; /* end of file or end of line: caret just after the text */
  if (col < from) col = from;
  const char *pre = from ? "..." : "";
  fprintf(out, "  %s", pre);
  for (size_t i = from; i < to; i++) {
    unsigned char c = (unsigned char)text[i];
    fputc(c == '\t' || c >= 0x20 ? (c == 0x7f ? '?' : c) : '?', out);
  }
  fprintf(out, "%s\n  %s", to < len ? "..." : "", from ? "   " : "");
  for (size_t i = from; i < col; i++) fputc(text[i] == '\t' ? '\t' : ' ', out);
  fputc('^', out);
  /* tildes under the rest of the construct, on this line only */
  size_t end = to;
  if (loc.end_line == loc.line && loc.end_col >= loc.col) {
    size_t e = (size_t)loc.end_col; /* 1-based inclusive == 0-based exclusive */
    if (e < end) end = e;
  }
  for (size_t i = col + 1; i < end; i++) fputc(text[i] == '\t' ? '\t' : '~', out);
  fputc('\n', out);
}

static void emit(po_diag *d, po_loc loc, const char *what, const char *fmt, va_list ap) {
  if (loc.src)
    fprintf(d->out, "%s:%d:%d: %s: ", loc.src->path, loc.line, loc.col, what);
  else
    fprintf(d->out, "%s: ", what);
  vfprintf(d->out, fmt, ap);
  fputc('\n', d->out);
  if (loc.src) show_line(d->out, loc);
}

void po_error(po_diag *d, po_loc loc, const char *fmt, ...) {
  d->errors++;
  d->last_printed = d->errors <= PO_MAX_PRINTED_ERRORS;
  if (!d->last_printed) {
    if (d->errors == PO_MAX_PRINTED_ERRORS + 1) fprintf(d->out, "too many errors, stopping\n");
    return;
  }
  va_list ap;
  va_start(ap, fmt);
  emit(d, loc, "error", fmt, ap);
  va_end(ap);
}

void po_note(po_diag *d, po_loc loc, const char *fmt, ...) {
  if (!d->last_printed) return;
  va_list ap;
  va_start(ap, fmt);
  emit(d, loc, "note", fmt, ap);
  va_end(ap);
}

void po_error_file(po_diag *d, const char *path, const char *fmt, ...) {
  d->errors++;
  d->last_printed = d->errors <= PO_MAX_PRINTED_ERRORS;
  if (!d->last_printed) {
    if (d->errors == PO_MAX_PRINTED_ERRORS + 1) fprintf(d->out, "too many errors, stopping\n");
    return;
  }
  fprintf(d->out, "%s: error: ", path);
  va_list ap;
  va_start(ap, fmt);
  vfprintf(d->out, fmt, ap);
  va_end(ap);
  fputc('\n', d->out);
}
