/* fuzz_frontend.c — libFuzzer entry point: any bytes through the whole front end
 * (scanner, parser, checker). Diagnostics go to /dev/null; the arena is released after
 * each input so memory stays flat over millions of runs. Built and run by run.sh. */
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>

#include "dsl.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
  static FILE *sink;
  if (!sink) sink = fopen("/dev/null", "w");
  po_diag *d = po_diag_new(sink);
  po_source *src = po_source_from_memory("fuzz.po", (const char *)data, size);
  po_program *prog = po_parse(src, d);
  if (prog) po_check(prog, d);
  po_diag_free(d);
  po_release_all();
  return 0;
}
