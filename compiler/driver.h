/* driver.h — the poc subcommands. main.c dispatches on argv[1]; each command lives in
 * its own cmd_*.c file and returns the process exit status (0 ok, 1 runtime failure,
 * 2 bad input or usage). */
#ifndef POC_DRIVER_H
#define POC_DRIVER_H

int poc_cmd_check(int argc, char **argv);     /* cmd_check.c    */
int poc_cmd_graph(int argc, char **argv);     /* cmd_graph.c    */
int poc_cmd_probe(int argc, char **argv);     /* cmd_probe.c    */
int poc_cmd_build(int argc, char **argv);     /* cmd_build.c    */
int poc_cmd_run(int argc, char **argv);       /* cmd_build.c    */
int poc_cmd_bench(int argc, char **argv);     /* cmd_bench.c    */
int poc_cmd_logp(int argc, char **argv);      /* cmd_model.c    */
int poc_cmd_merge(int argc, char **argv);     /* cmd_model.c    */
int poc_cmd_generate(int argc, char **argv);  /* cmd_model.c    */
int poc_cmd_score(int argc, char **argv);     /* cmd_score.c    */
int poc_cmd_decode(int argc, char **argv);    /* cmd_text.c     */

#include <stdint.h>
/* Text → ids with DIR's tokenizer through Python (cmd_text.c says why); with chat, the
 * text as one user turn of the folder's chat template, ready for the reply. malloc'd;
 * NULL after saying on stderr why (no Python, no package, the tokenizer failed). */
int32_t *poc_text_encode(const char *cmd, const char *dir, const char *text, int chat, int *n);

#include <stddef.h>
/* A data line of nothing but white space (skipped by the line readers of logp and score). */
static inline int poc_blank_line(const char *s, size_t n) {
  for (size_t k = 0; k < n; k++)
    if (s[k] != ' ' && s[k] != '\t' && s[k] != '\n' && s[k] != '\r') return 0;
  return 1;
}

#endif
