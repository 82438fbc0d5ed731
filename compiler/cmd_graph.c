/* cmd_graph.c — `poc graph FILE.po [--dot] [--unfused]`: the IR as lowered, then after
 * the passes and autodiff, with the batching plan and the hoisting marks, the fuse
 * pass's groups (one per node with --unfused) and recompute marks, and the memory plan.
 * With --dot, the final graph as Graphviz instead. */
#include <stdio.h>
#include <string.h>

#include "codegen.h"
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
  /* ir_front's steps, keeping the program: the memplan pass reads its train block */
  po_source *src = po_source_read(file, d);
  po_program *prog = src ? po_parse(src, d) : NULL;
  if (prog) po_check(prog, d);
  ir_graph *g = prog && !po_diag_errors(d) ? ir_lower(prog, d) : NULL;
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
  int rc = 0;
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
    /* the memplan pass needs the calls as the runtime sees them */
    po_diag *d2 = po_diag_new(stderr);
    cg_options opt = {.unfused = unfused};
    cg_prog p;
    if (cg_prepare(&p, prog, g, &opt, d2) == 0) {
      cg_memplan mp;
      cg_memplan_run(&p, &mp);
      printf("== memplan\n");
      cg_memplan_print(&mp, &p, stdout);
      if (cg_memplan_verify(&mp, err, sizeof err)) {
        fprintf(stderr, "%s: internal error: the verifier rejects the memory plan: %s\n", file, err);
        rc = 1;
      }
      cg_memplan_free(&mp);
      cg_release(&p);
    }
    po_diag_free(d2);
  }
  ir_free(g);
  return rc;
}
