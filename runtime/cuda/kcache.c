/* kcache.c — the on-disk cache of JIT-compiled kernels.
 *
 * Without kernels built in by `poc build --arch`, the device compiles the model's kernels
 * with NVRTC (seconds per set of dimensions on a GPU machine). This keeps the cubin in
 * $POC_CACHE_DIR/cuda, else $XDG_CACHE_HOME/poc/cuda, else ~/.cache/poc/cuda — the
 * directory `poc run` caches binaries in — so a second run of the same model loads it.
 *
 * Key: the file name holds the FNV-1a hash of the full instantiated source (the dimension
 * prelude and every template), the architecture and NVRTC's version, so a change to any
 * of them is a different entry and nothing is ever invalidated in place.
 *
 * Safety: an entry is written under a temporary name unique to the process and renamed
 * over the final one, so concurrent runs each see a complete file (the last rename wins,
 * and both contents are the same cubin). Each entry starts with a header holding its size
 * and a hash of its content; an entry that is short, long or altered is reported in one
 * note and recompiled, never loaded. A cache directory that cannot be created or written
 * is not an error: one note, and the run compiles as if there were no cache.
 */
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "cuda_internal.h"

#define KC_MAGIC "POCKC01\n"

typedef struct kc_header {
  char magic[8];
  uint64_t size;                 /* bytes after the header */
  uint64_t content;              /* FNV-1a of those bytes */
  uint64_t source;               /* the source hash the name also holds */
} kc_header;

static uint64_t kc_fnv(const unsigned char *p, size_t n) {
  uint64_t h = 0xcbf29ce484222325ULL;
  for (size_t i = 0; i < n; i++) h = (h ^ p[i]) * 0x100000001b3ULL;
  return h;
}

static int kc_off;               /* the directory proved unusable: no more tries */

static void kc_disable(const char *dir, const char *why) {
  if (kc_off) return;
  kc_off = 1;
  fprintf(stderr, "poc: note: the kernel cache %s cannot be used (%s); kernels are compiled "
          "on every run\n", dir, why);
}

/* mkdir -p */
static int kc_mkdirs(char *path) {
  for (char *s = path + 1; *s; s++) {
    if (*s != '/') continue;
    *s = 0;
    int r = mkdir(path, 0755);
    *s = '/';
    if (r && errno != EEXIST) return -1;
  }
  return mkdir(path, 0755) && errno != EEXIST ? -1 : 0;
}

/* The cache directory (created), or -1 when there is none to use. */
static int kc_dir(char *dir, size_t cap) {
  if (kc_off) return -1;
  const char *c = getenv("POC_CACHE_DIR"), *x = getenv("XDG_CACHE_HOME"), *home = getenv("HOME");
  if (c && *c) snprintf(dir, cap, "%s/cuda", c);
  else if (x && *x) snprintf(dir, cap, "%s/poc/cuda", x);
  else if (home && *home) snprintf(dir, cap, "%s/.cache/poc/cuda", home);
  else {
    kc_disable("(none)", "neither POC_CACHE_DIR, XDG_CACHE_HOME nor HOME is set");
    return -1;
  }
  if (kc_mkdirs(dir)) {
    kc_disable(dir, strerror(errno));
    return -1;
  }
  return 0;
}

static void kc_path(char *path, size_t cap, const char *dir, uint64_t source, const char *arch) {
  snprintf(path, cap, "%s/%016llx-%s-nvrtc%s.cubin", dir, (unsigned long long)source, arch,
           poc_cuda_nvrtc_version());
}

int cu_cache_load(uint64_t source, const char *arch, unsigned char **data, size_t *n) {
  char dir[3072], path[4096];
  *data = NULL;
  *n = 0;
  if (kc_dir(dir, sizeof dir)) return 1;
  kc_path(path, sizeof path, dir, source, arch);
  FILE *f = fopen(path, "rb");
  if (!f) return 1;
  kc_header h;
  const char *bad = NULL;
  unsigned char *buf = NULL;
  struct stat st;
  if (fstat(fileno(f), &st) || fread(&h, sizeof h, 1, f) != 1 || memcmp(h.magic, KC_MAGIC, 8))
    bad = "no valid header";
  else if ((uint64_t)st.st_size != sizeof h + h.size || h.source != source)
    bad = "its size does not match its header";
  else if (!(buf = malloc(h.size ? h.size : 1)) || fread(buf, 1, h.size, f) != h.size)
    bad = "it cannot be read";
  else if (kc_fnv(buf, h.size) != h.content)
    bad = "its content does not match its hash";
  fclose(f);
  if (bad) {
    fprintf(stderr, "poc: note: kernel cache entry %s is damaged (%s); recompiling it\n", path,
            bad);
    free(buf);
    return 2;
  }
  *data = buf;
  *n = h.size;
  return 0;
}

void cu_cache_store(uint64_t source, const char *arch, const unsigned char *data, size_t n) {
  char dir[3072], path[4096], tmp[4200];
  if (kc_dir(dir, sizeof dir)) return;
  kc_path(path, sizeof path, dir, source, arch);
  static unsigned seq;
  snprintf(tmp, sizeof tmp, "%s.tmp.%ld.%u", path, (long)getpid(), seq++);
  int fd = open(tmp, O_WRONLY | O_CREAT | O_EXCL, 0644);
  if (fd < 0) {
    kc_disable(dir, strerror(errno));
    return;
  }
  kc_header h = {.size = n, .content = kc_fnv(data, n), .source = source};
  memcpy(h.magic, KC_MAGIC, 8);
  FILE *f = fdopen(fd, "wb");
  int ok = f && fwrite(&h, sizeof h, 1, f) == 1 && fwrite(data, 1, n, f) == n;
  if (f) ok = fclose(f) == 0 && ok;
  else close(fd);
  if (!ok || rename(tmp, path)) {
    int e = errno;
    unlink(tmp);
    kc_disable(dir, ok ? strerror(e) : "a write failed (disk full?)");
  }
}
