/* cmd_check.c — `poc check FILE.po`: the front end and lowering (levels, domains and
 * the shape of the objective). Exit 0 when the file is a valid objective, 2 when any
 * diagnostic was an error. Lowering runs only when parsing and checking were clean, so
 * its messages never pile onto a broken tree. */
#include <stdio.h>
#include <string.h>

#include "driver.h"
#include "dsl.h"
#include "ir.h"

int poc_cmd_check(int argc, char **argv) {
  if (argc < 2) {
    fprintf(stderr, "usage: poc check FILE.po [FILE.po ...]\n");
    return 2;
  }
  int status = 0;
  for (int i = 1; i < argc; i++) {
    po_diag *d = po_diag_new(stderr);
    ir_free(ir_front(argv[i], d));
    if (po_diag_errors(d)) status = 2;
    po_diag_free(d);
  }
  return status;
}
