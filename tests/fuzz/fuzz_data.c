/* fuzz_data.c — libFuzzer entry point: any bytes as a JSONL data file through the
 * training runtime's reader (runtime/data.c, trn_data_load) for two fixed tiny programs:
 * pairs data with a per-example field and a per-token field, and points data with a
 * declared sequence (`sequence kl_response`), a label and a per-token field on the declared
 * sequence; vocabulary 32, max_len 16.
 * The reader takes a path, so each input is written to one unlinked temporary file
 * first, read back through /proc/self/fd. Its
 * messages (fprintf to stderr) go to /dev/null: stderr is pointed there, while libFuzzer
 * keeps the stream it took at start-up and the sanitizers write to fd 2 themselves.
 * Built and run by run.sh. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "train_internal.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static const poc_field_decl fields[] = {{"margin", -1}, {"chosen_scores", POC_SRC_CHOSEN}};
static const poc_field_decl kto_fields[] = {{"label", -1}, {"kl_scores", POC_SRC_EXTRA}};
static const char *const kto_seqs[] = {"kl_response"};

static void load(const poc_program *prog, const char *path) {
  trn_data d;
  if (trn_data_load(&d, prog, path, 32, 16) == 0) {
    /* read every token the reader stored, as packing does */
    int64_t sum = 0;
    for (int64_t i = 0; i < d.n_tok; i++) sum += d.tok[i];
    if (sum < 0) abort(); /* token ids were checked against the vocabulary */
    /* every slot in use lies inside the token array */
    for (int64_t e = 0; e < d.n; e++)
      for (int q = 0; q < d.n_seq; q++) {
        int64_t off = d.seq_off[e * TRN_MAX_SEQ + q], len = d.seq_len[e * TRN_MAX_SEQ + q];
        if (off < 0 || len < 0 || off + len > d.n_tok) abort();
      }
    trn_data_free(&d);
  }
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
  static char path[64];
  static int fd = -1;
  if (fd < 0) {
    FILE *sink = fopen("/dev/null", "w");
    if (sink) stderr = sink;
    char tmp[] = "/tmp/fuzz-data-XXXXXX";
    fd = mkstemp(tmp);
    if (fd < 0) abort();
    /* read through the descriptor's name, so nothing is left behind in /tmp */
    unlink(tmp);
    snprintf(path, sizeof path, "/proc/self/fd/%d", fd);
  }
  if (ftruncate(fd, 0) || (size && pwrite(fd, data, size, 0) != (ssize_t)size)) abort();
  poc_program prog;
  memset(&prog, 0, sizeof prog);
  prog.name = "fuzz";
  prog.data_kind = POC_DATA_PAIRS;
  prog.n_fields = 2;
  prog.fields = fields;
  load(&prog, path);
  prog.data_kind = POC_DATA_POINTS;
  prog.fields = kto_fields;
  prog.n_extra_seqs = 1;
  prog.extra_seqs = kto_seqs;
  load(&prog, path);
  return 0;
}
