/* main.c — the poc driver: one subcommand per stage a user can stop at. */
#include <stdio.h>
#include <string.h>

#include "cpu/cpu_features.h"
#include "driver.h"
#include "home.h"

static const struct {
  const char *name;
  int (*fn)(int, char **);
  const char *usage;
} commands[] = {
    {"check", poc_cmd_check, "check FILE.po                 front end only; diagnostics, exit 0/2"},
    {"graph", poc_cmd_graph, "graph FILE.po [--dot] [--unfused]   the IR before and after the passes, fuse groups, memory plan"},
    {"build", poc_cmd_build, "build FILE.po -o BIN [--unfused] [--arch sm_90,...]"},
    {"run", poc_cmd_run, "run FILE.po [BIN flags]       build into a cache keyed by content hash, then run"},
    {"bench", poc_cmd_bench,
     "bench FILE.po [--backend cpu|cuda] [--steps N] [--rounds R] [--out DIR] [--set k=v]   fused vs unfused: tokens/s, time split, memory, MFU"},
    {"probe", poc_cmd_probe, "probe FILE.po --inputs IN.json [--set k=v ...] | --template"},
    {"logp", poc_cmd_logp,
     "logp MODEL_DIR DATA.jsonl [--field NAME] [--adapter DIR] [--backend cpu|cuda]"},
    {"merge", poc_cmd_merge, "merge BASE_DIR ADAPTER_DIR -o OUT_DIR   LoRA merged into the base"},
    {"score", poc_cmd_score,
     "score MODEL_DIR DATA.jsonl [--field NAME] [--per-token] [--out FILE]   a reward model's scores added"},
    {"generate", poc_cmd_generate,
     "generate MODEL_DIR --prompt-ids 1,2,3 | --prompt TEXT [--chat] [--tokens N] [--temperature T] [--top-p P] [--seed N] [--adapter DIR] [--show-special]"},
    {"decode", poc_cmd_decode,
     "decode MODEL_DIR [--show-special] < IDS.jsonl   token ids → text with the folder's tokenizer.json"},
};

static void usage(FILE *f) {
  fprintf(f, "poc %s — a compiler for preference-optimization training\n\nusage:\n", POC_VERSION);
  for (size_t i = 0; i < sizeof commands / sizeof commands[0]; i++)
    fprintf(f, "  poc %s\n", commands[i].usage);
  fprintf(f, "  poc --home                    where poc's headers and libraries are (POC_HOME overrides)\n");
}

int main(int argc, char **argv) {
  poc_cpu_start(argc, argv); /* before the first GEMM: may restart with better kernels */
  if (argc < 2) {
    usage(stderr);
    return 2;
  }
  if (!strcmp(argv[1], "--help") || !strcmp(argv[1], "-h") || !strcmp(argv[1], "help")) {
    usage(stdout);
    return 0;
  }
  if (!strcmp(argv[1], "--version")) {
    printf("poc %s\n", POC_VERSION);
    return 0;
  }
  if (!strcmp(argv[1], "--home")) {
    /* which installation (or build tree) poc build takes its headers and libraries from */
    const poc_home *h = poc_home_get();
    if (!h) return 1;
    printf("%s\n", h->root);
    return 0;
  }
  for (size_t i = 0; i < sizeof commands / sizeof commands[0]; i++)
    if (!strcmp(argv[1], commands[i].name)) return commands[i].fn(argc - 1, argv + 1);
  fprintf(stderr, "poc: unknown command '%s'\n", argv[1]);
  usage(stderr);
  return 2;
}
