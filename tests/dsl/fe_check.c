/* fe_check.c — the front end alone on files, exactly as `poc check` runs it, for the
 * tests of dsl/ that must not depend on the rest of the compiler being linkable. */
#include <stdio.h>

#include "dsl.h"

int main(int argc, char **argv) {
  int status = 0;
  for (int i = 1; i < argc; i++) {
    po_diag *d = po_diag_new(stderr);
    po_source *src = po_source_read(argv[i], d);
    if (src) {
      po_program *prog = po_parse(src, d);
      if (prog) po_check(prog, d);
    }
    if (po_diag_errors(d)) status = 2;
    po_diag_free(d);
  }
  po_release_all();
  return status;
}
