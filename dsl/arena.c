/* arena.c — the front end's memory: one process-wide arena of chunks.
 *
 * Simplification, on purpose: sources, AST nodes and their strings are never freed
 * piecemeal. A compilation is short; every stage after parsing keeps pointers into
 * the tree; and syntax error recovery can drop half-built subtrees without tracking
 * them. The chunks stay reachable from `chunks` (so leak checkers see live memory, not
 * leaks) until po_release_all(), which tests and the fuzzer call between inputs. */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "front.h"

typedef struct chunk {
  struct chunk *next;
  size_t used, size;
  max_align_t data[]; /* aligned for any node type */
} chunk;

static chunk *chunks;

enum { CHUNK_BYTES = 64 * 1024 };

static void *oom(size_t n) {
  fprintf(stderr, "poc: out of memory (allocating %zu bytes)\n", n);
  abort();
}

void *po_alloc(size_t n) {
  const size_t align = sizeof(max_align_t);
  n = (n + align - 1) / align * align;
  if (!n) n = align;
  if (!chunks || chunks->size - chunks->used < n) {
    size_t size = n > CHUNK_BYTES ? n : CHUNK_BYTES;
    /* large requests get a chunk of their own, placed behind the current one so the
     * current chunk's free space is not abandoned */
    chunk *c = malloc(sizeof(chunk) + size);
    if (!c) return oom(n);
    c->used = 0;
    c->size = size;
    if (chunks && n > CHUNK_BYTES) {
      c->next = chunks->next;
      chunks->next = c;
      c->used = n;
      memset(c->data, 0, n);
      return c->data;
    }
    c->next = chunks;
    chunks = c;
  }
  void *p = (char *)chunks->data + chunks->used;
  chunks->used += n;
  memset(p, 0, n);
  return p;
}

char *po_strndup(const char *s, size_t n) {
  char *p = po_alloc(n + 1);
  memcpy(p, s, n);
  p[n] = 0;
  return p;
}

char *po_strdup(const char *s) { return po_strndup(s, strlen(s)); }

po_vec *po_vec_new(void) { return po_alloc(sizeof(po_vec)); }

void po_vec_push(po_vec *v, void *item) {
  if (v->n == v->cap) {
    int cap = v->cap ? v->cap * 2 : 4;
    void **items = po_alloc((size_t)cap * sizeof(void *));
    if (v->n) memcpy(items, v->items, (size_t)v->n * sizeof(void *));
    v->items = items;
    v->cap = cap;
  }
  v->items[v->n++] = item;
}

void po_release_all(void) {
  while (chunks) {
    chunk *next = chunks->next;
    free(chunks);
    chunks = next;
  }
}
