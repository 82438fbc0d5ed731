/* metrics_pb.c — what the logging sinks (metrics_tb.c, metrics_wandb.c) share: a
 * protocol-buffers encoder and field walker, the two CRCs their framings use, and
 * whole-buffer appends to a file.
 *
 * Protocol buffers' wire format: a message is a sequence of fields, each a key
 * varint(field_number << 3 | wire_type) and a payload: wire type 0 a varint, 1 eight
 * little-endian bytes (double, fixed64), 2 varint(length) and the bytes (strings,
 * submessages), 5 four little-endian bytes (float, fixed32). Varints are little-endian
 * base 128, the high bit of each byte saying "more follows". Nothing else is needed to
 * write TensorBoard's Event and wandb's Record messages. */
#include <errno.h>
#include <fcntl.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "train_internal.h"

static void pb_grow(trn_pb *p, size_t more) {
  if (p->oom || p->n + more <= p->cap) return;
  size_t cap = p->cap ? p->cap : 64;
  while (cap < p->n + more) cap *= 2;
  unsigned char *q = realloc(p->b, cap);
  if (!q) {
    p->oom = 1;
    return;
  }
  p->b = q;
  p->cap = cap;
}

void trn_pb_raw(trn_pb *p, const void *d, size_t n) {
  pb_grow(p, n);
  if (p->oom) return;
  if (n) memcpy(p->b + p->n, d, n);
  p->n += n;
}

void trn_pb_varint(trn_pb *p, uint64_t v) {
  unsigned char b[10];
  int k = 0;
  do {
    b[k] = (unsigned char)(v & 0x7f);
    v >>= 7;
    if (v) b[k] |= 0x80;
    k++;
  } while (v);
  trn_pb_raw(p, b, (size_t)k);
}

static void pb_key(trn_pb *p, int field, int wire) {
  trn_pb_varint(p, (uint64_t)field << 3 | (uint64_t)wire);
}

static void pb_le(trn_pb *p, uint64_t v, int bytes) {
  unsigned char b[8];
  for (int i = 0; i < bytes; i++) b[i] = (unsigned char)(v >> (8 * i));
  trn_pb_raw(p, b, (size_t)bytes);
}

void trn_pb_u64(trn_pb *p, int field, uint64_t v) {
  pb_key(p, field, 0);
  trn_pb_varint(p, v);
}

void trn_pb_f64(trn_pb *p, int field, double v) {
  uint64_t u;
  memcpy(&u, &v, 8);
  pb_key(p, field, 1);
  pb_le(p, u, 8);
}

void trn_pb_f32(trn_pb *p, int field, float v) {
  uint32_t u;
  memcpy(&u, &v, 4);
  pb_key(p, field, 5);
  pb_le(p, u, 4);
}

void trn_pb_bytes(trn_pb *p, int field, const void *d, size_t n) {
  pb_key(p, field, 2);
  trn_pb_varint(p, n);
  trn_pb_raw(p, d, n);
}

void trn_pb_str(trn_pb *p, int field, const char *s) { trn_pb_bytes(p, field, s, strlen(s)); }

void trn_pb_msg(trn_pb *p, int field, const trn_pb *m) {
  if (m->oom) p->oom = 1;
  trn_pb_bytes(p, field, m->b, m->n);
}

void trn_pb_free(trn_pb *p) {
  free(p->b);
  memset(p, 0, sizeof *p);
}

static int pb_read_varint(const unsigned char *b, size_t n, size_t *pos, uint64_t *v) {
  uint64_t x = 0;
  for (int shift = 0; shift < 64; shift += 7) {
    if (*pos >= n) return -1;
    unsigned char c = b[(*pos)++];
    x |= (uint64_t)(c & 0x7f) << shift;
    if (!(c & 0x80)) {
      *v = x;
      return 0;
    }
  }
  return -1;
}

int trn_pb_next(const unsigned char *b, size_t n, size_t *pos, trn_pb_field *f) {
  if (*pos >= n) return 0;
  uint64_t key;
  if (pb_read_varint(b, n, pos, &key)) return -1;
  f->field = (int)(key >> 3);
  f->wire = (int)(key & 7);
  f->d = NULL;
  f->len = 0;
  f->v = 0;
  switch (f->wire) {
  case 0:
    return pb_read_varint(b, n, pos, &f->v) ? -1 : 1;
  case 1:
  case 5: {
    size_t k = f->wire == 1 ? 8 : 4;
    if (n - *pos < k) return -1;
    for (size_t i = 0; i < k; i++) f->v |= (uint64_t)b[*pos + i] << (8 * i);
    *pos += k;
    return 1;
  }
  case 2: {
    uint64_t len;
    if (pb_read_varint(b, n, pos, &len) || len > n - *pos) return -1;
    f->d = b + *pos;
    f->len = (size_t)len;
    *pos += (size_t)len;
    return 1;
  }
  default:
    return -1;
  }
}

/* Both CRCs are the reflected, table-driven kind with initial and final inversion:
 * CRC-32C (Castagnoli, polynomial 0x1EDC6F41, reflected 0x82F63B78) for TFRecord,
 * CRC-32 (IEEE 802.3, 0x04C11DB7, reflected 0xEDB88320, zlib's) for wandb's log. */
static uint32_t crc_tab[2][256];
static int crc_ready;

static void crc_init(void) {
  const uint32_t poly[2] = {0x82F63B78u, 0xEDB88320u};
  for (int t = 0; t < 2; t++)
    for (uint32_t i = 0; i < 256; i++) {
      uint32_t c = i;
      for (int k = 0; k < 8; k++) c = c & 1 ? poly[t] ^ (c >> 1) : c >> 1;
      crc_tab[t][i] = c;
    }
  crc_ready = 1;
}

static uint32_t crc_update(int t, uint32_t crc, const void *d, size_t n) {
  if (!crc_ready) crc_init();
  const unsigned char *b = d;
  crc = ~crc;
  for (size_t i = 0; i < n; i++) crc = crc_tab[t][(crc ^ b[i]) & 0xff] ^ (crc >> 8);
  return ~crc;
}

uint32_t trn_crc32c(const void *d, size_t n) { return crc_update(0, 0, d, n); }

uint32_t trn_crc32(uint32_t crc, const void *d, size_t n) { return crc_update(1, crc, d, n); }

int trn_append_bytes(const char *path, const void *d, size_t n, char *err) {
  int fd = open(path, O_WRONLY | O_APPEND | O_CREAT | O_CLOEXEC, 0666);
  if (fd < 0) {
    trn_errf(err, "%s: cannot open: %s", path, strerror(errno));
    return -1;
  }
  off_t before = lseek(fd, 0, SEEK_END);
  ssize_t w;
  do w = write(fd, d, n);
  while (w < 0 && errno == EINTR);
  int e = errno;
  if (w != (ssize_t)n) {
    /* a record is whole or absent: a short write is cut back off (the run holds the
     * directory's lock, so nothing else appends) */
    if (w > 0 && before >= 0) (void)!ftruncate(fd, before);
    close(fd);
    trn_errf(err, "%s: cannot write: %s", path, w < 0 ? strerror(e) : "short write (disk full?)");
    return -1;
  }
  if (close(fd)) {
    trn_errf(err, "%s: cannot write: %s", path, strerror(errno));
    return -1;
  }
  return 0;
}

int trn_read_all(const char *path, unsigned char **out, size_t *n) {
  *out = NULL;
  *n = 0;
  int fd = open(path, O_RDONLY | O_CLOEXEC);
  if (fd < 0) return -1;
  size_t cap = 0, len = 0;
  unsigned char *b = NULL;
  for (;;) {
    if (len == cap) {
      cap = cap ? cap * 2 : 65536;
      unsigned char *q = realloc(b, cap);
      if (!q) {
        free(b);
        close(fd);
        return -1;
      }
      b = q;
    }
    ssize_t r = read(fd, b + len, cap - len);
    if (r < 0 && errno == EINTR) continue;
    if (r < 0) {
      free(b);
      close(fd);
      return -1;
    }
    if (r == 0) break;
    len += (size_t)r;
  }
  close(fd);
  *out = b;
  *n = len;
  return 0;
}
