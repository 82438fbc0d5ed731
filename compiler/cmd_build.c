/* cmd_build.c — poc build / poc run: placeholder until the back end lands. */
#include <stdio.h>

#include "driver.h"

int poc_cmd_build(int argc, char **argv) {
  (void)argc;
  (void)argv;
  fprintf(stderr, "poc build: the code generator is not built yet\n");
  return 2;
}

int poc_cmd_run(int argc, char **argv) {
  (void)argc;
  (void)argv;
  fprintf(stderr, "poc run: the code generator is not built yet\n");
  return 2;
}
