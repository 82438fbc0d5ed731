/* home.c — finds poc's files (home.h) and reads their link description. */
#include "home.h"

#include <errno.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#define DESC "lib/poc/link.txt"

static void *xalloc(void *p) {
  if (!p) {
    fprintf(stderr, "poc: out of memory\n");
    exit(1);
  }
  return p;
}

static char *join(const char *a, const char *b) {
  size_t n = strlen(a) + strlen(b) + 2;
  char *s = xalloc(malloc(n));
  snprintf(s, n, "%s%s%s", a, *a && a[strlen(a) - 1] == '/' ? "" : "/", b);
  return s;
}

static bool is_file(const char *path) {
  struct stat st;
  return stat(path, &st) == 0 && S_ISREG(st.st_mode);
}

static void push(char ***v, int *n, char *s) {
  *v = xalloc(realloc(*v, (size_t)(*n + 2) * sizeof **v));
  (*v)[(*n)++] = s;
  (*v)[*n] = NULL;
}

/* The directory of poc's executable, malloc'd; NULL when /proc does not say. */
static char *exe_dir(void) {
  size_t cap = 256;
  for (;;) {
    char *buf = xalloc(malloc(cap));
    ssize_t n = readlink("/proc/self/exe", buf, cap);
    if (n < 0) {
      free(buf);
      return NULL;
    }
    if ((size_t)n < cap) {
      buf[n] = 0;
      char *slash = strrchr(buf, '/');
      if (!slash) {
        free(buf);
        return NULL;
      }
      if (slash == buf) slash++; /* poc in / */
      *slash = 0;
      return buf;
    }
    free(buf);
    cap *= 2;
  }
}

/* The nearest of dir and its parents that holds DESC, malloc'd, or NULL. */
static char *find_up(const char *dir) {
  char *d = xalloc(strdup(dir));
  for (;;) {
    char *desc = join(d, DESC);
    bool found = is_file(desc);
    free(desc);
    if (found) return d;
    char *slash = strrchr(d, '/');
    if (!slash || (slash == d && !d[1])) break;
    if (slash == d) slash++; /* "/x" → "/" */
    *slash = 0;
  }
  free(d);
  return NULL;
}

/* A value from link.txt: "@/x" is under the home. */
static char *expand(const char *root, const char *v) {
  if (v[0] == '@' && (v[1] == '/' || !v[1])) return join(root, v[1] ? v + 2 : "");
  return xalloc(strdup(v));
}

static char *read_all(const char *path) {
  FILE *f = fopen(path, "rb");
  if (!f) return NULL;
  size_t cap = 4096, n = 0;
  char *buf = xalloc(malloc(cap));
  for (size_t r; (r = fread(buf + n, 1, cap - n - 1, f)) > 0;) {
    n += r;
    if (n + 1 == cap) buf = xalloc(realloc(buf, cap *= 2));
  }
  fclose(f);
  buf[n] = 0;
  return buf;
}

/* Reads h->desc into h; 0, or -1 after saying why. */
static int parse(poc_home *h) {
  h->text = read_all(h->desc);
  if (!h->text) {
    fprintf(stderr, "poc: cannot read %s: %s\n", h->desc, strerror(errno));
    return -1;
  }
  char *copy = xalloc(strdup(h->text));
  int line = 0, rc = 0;
  for (char *s = copy, *next; rc == 0 && s && *s; s = next) {
    next = strchr(s, '\n');
    if (next) *next++ = 0;
    line++;
    if (!*s || *s == '#') continue;
    char *v = strchr(s, ' ');
    if (!v || !v[1]) {
      fprintf(stderr, "poc: %s:%d: expected KEY VALUE\n", h->desc, line);
      rc = -1;
      break;
    }
    *v++ = 0;
    char *val = expand(h->root, v);
    if (!strcmp(s, "include") && !h->include) h->include = val;
    else if (!strcmp(s, "templates") && !h->templates) h->templates = val;
    else if (!strcmp(s, "runtime")) push(&h->runtime, &h->nruntime, val);
    else if (!strcmp(s, "cflag")) push(&h->cflags, &h->ncflags, val);
    else if (!strcmp(s, "link")) push(&h->link, &h->nlink, val);
    else {
      /* written by the CMake of the same poc: anything else means the two do not match */
      fprintf(stderr, "poc: %s:%d: unknown key '%s'; reinstall poc\n", h->desc, line, s);
      free(val);
      rc = -1;
    }
  }
  free(copy);
  if (rc == 0 && (!h->include || !h->templates || !h->nruntime)) {
    fprintf(stderr, "poc: %s lacks an include, templates or runtime line; reinstall poc\n", h->desc);
    rc = -1;
  }
  return rc;
}

const poc_home *poc_home_get(void) {
  static poc_home home;
  static int state; /* 0 not looked, 1 found, -1 not found */
  if (state) return state > 0 ? &home : NULL;
  state = -1;
  const char *env = getenv("POC_HOME");
  char *where;
  if (env && *env) {
    where = xalloc(strdup(env));
    char *desc = join(where, DESC);
    if (is_file(desc)) home.root = xalloc(strdup(where));
    free(desc);
  } else {
    where = exe_dir();
    if (!where) {
      fprintf(stderr, "poc: cannot tell where its executable is (/proc/self/exe); set POC_HOME "
                      "to the directory poc was installed to\n");
      return NULL;
    }
    home.root = find_up(where);
  }
  if (!home.root && env && *env) {
    fprintf(stderr, "poc: cannot find its runtime headers under %s, which POC_HOME names (no "
                    DESC " there); reinstall, or set POC_HOME to the directory poc was installed "
                    "to\n", where);
    free(where);
    return NULL;
  }
  if (!home.root) {
    fprintf(stderr, "poc: cannot find its runtime headers under %s or the directories above it "
                    "(no " DESC "); reinstall or set POC_HOME to the directory poc was installed "
                    "to\n", where);
    free(where);
    return NULL;
  }
  free(where);
  home.desc = join(home.root, DESC);
  if (parse(&home)) return NULL;
  char *h = join(home.include, "program.h");
  bool ok = is_file(h);
  free(h);
  if (!ok) {
    fprintf(stderr, "poc: cannot find its runtime headers under %s (named by %s); reinstall or "
                    "set POC_HOME\n", home.include, home.desc);
    return NULL;
  }
  state = 1;
  return &home;
}
