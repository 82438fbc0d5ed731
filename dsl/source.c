/* source.c — reading .po files into memory, and finding lines for diagnostics.
 *
 * A source is kept whole and NUL-terminated. Bytes are checked here only for what
 * would make the file unusable as text at all (NUL bytes, size); everything else,
 * including where non-ASCII bytes may appear, is the scanner's business. */
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "front.h"

po_source *po_source_from_memory(const char *path, const char *text, size_t len) {
  po_source *src = po_alloc(sizeof *src);
  src->path = po_strdup(path ? path : "<input>");
  src->text = po_strndup(text ? text : "", text ? len : 0);
  src->len = text ? len : 0;
  return src;
}

/* What a non-regular file is, for the message that refuses it. */
static const char *file_kind(mode_t m) {
  if (S_ISDIR(m)) return "a directory";
  if (S_ISFIFO(m)) return "a FIFO";
  if (S_ISCHR(m)) return "a character device";
  if (S_ISBLK(m)) return "a block device";
  if (S_ISSOCK(m)) return "a socket";
  return "not a regular file";
}

po_source *po_source_read(const char *path, po_diag *d) {
  /* Only regular files: a FIFO would block the compiler until a writer came, and
   * /dev/urandom or /dev/zero would feed it forever. O_NONBLOCK makes the open itself
   * return at once on a FIFO; fstat on the descriptor then judges the file that was
   * opened, not one a stat of the name might have seen before a rename. */
  int fd = open(path, O_RDONLY | O_NONBLOCK | O_CLOEXEC);
  if (fd < 0) {
    po_error_file(d, path, "cannot open: %s", strerror(errno));
    return NULL;
  }
  struct stat st;
  if (fstat(fd, &st) != 0) {
    po_error_file(d, path, "cannot read: %s", strerror(errno));
    close(fd);
    return NULL;
  }
  if (!S_ISREG(st.st_mode)) {
    po_error_file(d, path, "cannot read: %s; a .po file must be a regular file",
                  file_kind(st.st_mode));
    close(fd);
    return NULL;
  }
  int fl = fcntl(fd, F_GETFL);
  if (fl >= 0) fcntl(fd, F_SETFL, fl & ~O_NONBLOCK);
  FILE *f = fdopen(fd, "rb");
  if (!f) {
    po_error_file(d, path, "cannot read: %s", strerror(errno));
    close(fd);
    return NULL;
  }
  /* Read in blocks rather than trusting the size from stat: the file may change under
   * us. */
  size_t cap = 4096, len = 0;
  char *buf = malloc(cap + 1);
  if (!buf) {
    fclose(f);
    po_error_file(d, path, "out of memory reading the file");
    return NULL;
  }
  for (;;) {
    if (len == cap) {
      if (cap > PO_MAX_SOURCE_BYTES) break;
      cap *= 2;
      char *nb = realloc(buf, cap + 1);
      if (!nb) {
        free(buf);
        fclose(f);
        po_error_file(d, path, "out of memory reading the file");
        return NULL;
      }
      buf = nb;
    }
    size_t got = fread(buf + len, 1, cap - len, f);
    len += got;
    if (got == 0) break;
  }
  int failed = ferror(f);
  int err = errno;
  fclose(f);
  if (failed) {
    free(buf);
    po_error_file(d, path, "cannot read: %s", strerror(err));
    return NULL;
  }
  if (len > PO_MAX_SOURCE_BYTES) {
    free(buf);
    po_error_file(d, path, "file is too large (more than %u MiB)", PO_MAX_SOURCE_BYTES >> 20);
    return NULL;
  }
  po_source *src = po_source_from_memory(path, buf, len);
  free(buf);
  /* A NUL byte means this is not a text file (or a damaged one): report where the
   * first one is and go no further. */
  const char *nul = memchr(src->text, 0, len);
  if (nul) {
    size_t off = (size_t)(nul - src->text);
    int line = 1, col = 1;
    for (size_t i = 0; i < off; i++) {
      if (src->text[i] == '\n') line++, col = 1;
      else col++;
    }
    po_loc loc = {src, line, col, line, col};
    po_error(d, loc, "NUL byte in source");
    return NULL;
  }
  return src;
}

const char *po_source_line(const po_source *src, int line, size_t *len) {
  if (!src || line < 1) return NULL;
  const char *p = src->text, *end = src->text + src->len;
  for (int l = 1; l < line; l++) {
    const char *nl = memchr(p, '\n', (size_t)(end - p));
    if (!nl) return NULL;
    p = nl + 1;
  }
  const char *nl = memchr(p, '\n', (size_t)(end - p));
  *len = (size_t)((nl ? nl : end) - p);
  return p;
}
