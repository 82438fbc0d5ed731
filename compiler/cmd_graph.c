/* cmd_graph.c — `poc graph FILE.po [--dot] [--unfused]`: the IR as lowered, then after
 * the passes and autodiff, with the batching plan and the hoisting marks, the fuse
 * pass's groups (one per node with --unfused) and recompute marks, and the memory plan.
 * With --dot, the final graph as Graphviz instead. */
#include <stdio.h>
#include <string.h>

#include "driver.h"
#include "ir.h"

int poc_cmd_graph(int argc, char **argv) {
  const char *file = NULL;
  bool dot = false, unfused = false;
  for (int i = 1; i < argc; i++) {
    if (!strcmp(argv[i], "--dot")) dot = true;
    else if (!strcmp(argv[i], "--unfused")) unfused = true;
    else if (argv[i][0] == '-') {
      fprintf(stderr, "poc graph: unknown option '%s'\nusage: poc graph FILE.po [--dot] [--unfused]\n", argv[i]);
      return 2;
    } else if (!file) file = argv[i];
    else {
      fprintf(stderr, "poc graph: one .po file at a time ('%s' is extra)\n", argv[i]);
      return 2;
    }
  }
  if (!file) {
    fprintf(stderr, "usage: poc graph FILE.po [--dot] [--unfused]\n");
    return 2;
  }
  po_diag *d = po_diag_new(stderr);
  ir_graph *g = ir_front(file, d);
  bool ok = g && !po_diag_errors(d);
  po_diag_free(d);
  if (!ok) {
    ir_free(g);
    return 2;
  }
  if (!dot) {
    printf("== %s: lowered (%d nodes)\n", file, g->n);
    ir_print(g, stdout, false);
    printf("== passes\n");
  }
  char err[512];
  g->unfused = unfused;
  if (ir_pipeline(g, dot ? NULL : stdout, err, sizeof err)) {
    fprintf(stderr, "%s: internal error: %s\n", file, err);
    ir_free(g);
    return 1;
  }
  if (dot) {
    ir_print_dot(g, stdout);
  } else {
    printf("== after fold, cse, dce, hoist, autodiff, batch, recompute, fuse (%d nodes)\n", g->n);
    ir_print(g, stdout, true);
    printf("== fuse%s\n", g->unfused ? " (off)" : "");
    ir_print_fusion(g, stdout);
  }
  ir_free(g);
  return 0;
}
