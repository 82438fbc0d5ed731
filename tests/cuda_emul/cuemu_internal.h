/* cuemu_internal.h — what the emulation's files share: device memory bookkeeping and
 * the sticky error of the (one) emulated context. */
#ifndef POC_CUEMU_INTERNAL_H
#define POC_CUEMU_INTERNAL_H

#include <stddef.h>
#include <stdint.h>

#include <cuda.h>

/* The "image" the NVRTC stand-in returns as cubin or PTX: this header, then the bytes of
 * the shared object the host compiler built. */
#define EMU_IMAGE_MAGIC "POCEMU1"
typedef struct {
  char magic[8];
  uint32_t is_ptx;
  uint32_t arch;  /* 90 for sm_90 / compute_90 */
  uint64_t size;  /* bytes of the .so that follow */
} emu_image;

/* 0 when [p, p + n) lies inside one live allocation; else -1 with *why set. n = 0 asks
 * only that p is inside (or one past) an allocation. */
int emu_mem_check(uintptr_t p, size_t n, const char **why);

/* Reports a misuse or fault on stderr as "cuda emulation: ..." and keeps it for
 * poc_cuemu_last_error(). */
void emu_report(const char *fmt, ...) __attribute__((format(printf, 1, 2)));

#endif
