/* cmd_text.c — text at poc's edges: `poc decode` (ids → text with the model folder's
 * tokenizer.json, in C: runtime/tok.c) and the encoder `poc generate --prompt` uses.
 *
 * Encoding goes through Python's `tokenizers` (or, for --chat, transformers' chat
 * template) rather than C: a faithful encoder needs each tokenizer's normalizers and its
 * pre-tokenizer regular expression over Unicode categories (GPT-2, Llama-3 and Qwen2 each
 * have their own), BPE merges with their dropout/continuation options, and for chat a
 * Jinja interpreter. An encoder that differs from the one the data was prepared with
 * (tools/prepare_data.py uses the same libraries) would feed the model ids it never saw,
 * silently. Encoding happens once per command, so a child process costs nothing that
 * matters; decoding, which every evaluation does, stays in C with no Python needed.
 * The interpreter is $POC_PYTHON, else python3 on PATH; a missing one or a missing
 * package is an error that says so and names --prompt-ids as the way around. */
#include <errno.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cjson/cJSON.h>

#include "driver.h"
#include "pocrt.h"

/* argv: MODEL_DIR TEXT CHAT(0|1). Prints the ids as one JSON list. Exit 3: a package is
 * missing; 4: the tokenizer failed (message on stderr). */
static const char tx_script[] =
    "import json, os, sys\n"
    "d, text, chat = sys.argv[1], sys.argv[2], sys.argv[3] == '1'\n"
    "try:\n"
    "    if chat:\n"
    "        from transformers import AutoTokenizer\n"
    "        tok = AutoTokenizer.from_pretrained(d, local_files_only=True)\n"
    "        r = tok.apply_chat_template([{'role': 'user', 'content': text}],\n"
    "                                    add_generation_prompt=True, tokenize=True, return_dict=True)\n"
    "        ids = [int(i) for i in r['input_ids']]\n"
    "    else:\n"
    "        from tokenizers import Tokenizer\n"
    "        ids = Tokenizer.from_file(os.path.join(d, 'tokenizer.json')).encode(text).ids\n"
    "except ImportError as e:\n"
    "    print(f\"the Python package '{e.name}' is missing (pip install \"\n"
    "          f\"{'transformers' if chat else 'tokenizers'})\", file=sys.stderr)\n"
    "    sys.exit(3)\n"
    "except Exception as e:\n"
    "    print(f'{type(e).__name__}: {e}', file=sys.stderr)\n"
    "    sys.exit(4)\n"
    "print(json.dumps(ids))\n";

int32_t *poc_text_encode(const char *cmd, const char *dir, const char *text, int chat, int *n) {
  const char *py = getenv("POC_PYTHON");
  if (!py || !*py) py = "python3";
  int fd[2];
  if (pipe(fd)) {
    fprintf(stderr, "poc %s: cannot make a pipe: %s\n", cmd, strerror(errno));
    return NULL;
  }
  pid_t pid = fork();
  if (pid < 0) {
    fprintf(stderr, "poc %s: cannot fork: %s\n", cmd, strerror(errno));
    close(fd[0]);
    close(fd[1]);
    return NULL;
  }
  if (pid == 0) {
    dup2(fd[1], 1);
    close(fd[0]);
    close(fd[1]);
    execlp(py, py, "-c", tx_script, dir, text, chat ? "1" : "0", (char *)NULL);
    _exit(127);
  }
  close(fd[1]);
  char *out = NULL;
  size_t len = 0, cap = 0;
  for (;;) {
    if (len + 4096 + 1 > cap) {
      cap = cap ? cap * 2 : 8192;
      char *q = realloc(out, cap);
      if (!q) break;
      out = q;
    }
    ssize_t got = read(fd[0], out + len, cap - len - 1);
    if (got < 0 && errno == EINTR) continue;
    if (got <= 0) break;
    len += (size_t)got;
  }
  close(fd[0]);
  int status = 0;
  while (waitpid(pid, &status, 0) < 0 && errno == EINTR) {
  }
  int code = WIFEXITED(status) ? WEXITSTATUS(status) : 128;
  const char *how = chat ? "--chat" : "--prompt";
  if (code == 127) {
    fprintf(stderr, "poc %s: %s encodes text with Python (%s, from $POC_PYTHON or PATH), which "
            "could not be run; give the ids with --prompt-ids instead\n", cmd, how, py);
  } else if (code == 3) {
    fprintf(stderr, "poc %s: %s needs that package in %s to encode text; or give the ids with "
            "--prompt-ids\n", cmd, how, py);
  } else if (code) {
    fprintf(stderr, "poc %s: %s: the tokenizer in %s could not encode the text (exit %d, above)\n",
            cmd, how, dir, code);
  }
  if (code || !out) {
    free(out);
    return NULL;
  }
  out[len] = 0;
  cJSON *a = cJSON_Parse(out);
  free(out);
  int k = cJSON_GetArraySize(a);
  int32_t *ids = cJSON_IsArray(a) ? malloc(((size_t)k + 1) * sizeof *ids) : NULL;
  *n = 0;
  const cJSON *it;
  cJSON_ArrayForEach(it, a) if (ids) ids[(*n)++] = (int32_t)it->valuedouble;
  cJSON_Delete(a);
  if (!ids) fprintf(stderr, "poc %s: %s: the encoder's output is not a list of ids\n", cmd, how);
  return ids;
}

/* ---- poc decode --------------------------------------------------------------------- */

static int dec_usage(void) {
  fprintf(stderr, "usage: poc decode MODEL_DIR [--show-special] < IDS.jsonl   (one JSON list of "
          "ids a line in, one JSON string a line out)\n");
  return 2;
}

int poc_cmd_decode(int argc, char **argv) {
  const char *dir = NULL;
  int show = 0;
  for (int i = 1; i < argc; i++) {
    if (!strcmp(argv[i], "--show-special")) show = 1;
    else if (argv[i][0] == '-' && argv[i][1]) {
      fprintf(stderr, "poc decode: unknown option '%s'\n", argv[i]);
      return dec_usage();
    } else if (!dir) dir = argv[i];
    else return dec_usage();
  }
  if (!dir) return dec_usage();
  char err[POC_ERR_LEN], path[4096];
  poc_config cfg;
  int vocab = 0;
  snprintf(path, sizeof path, "%s/config.json", dir);
  if (!access(path, F_OK)) {
    if (poc_config_load(dir, &cfg, err)) {
      fprintf(stderr, "poc decode: %s\n", err);
      return 2;
    }
    vocab = cfg.vocab_size;
  }
  poc_tok *tok;
  int got = poc_tok_open(dir, vocab, &tok, err);
  if (got <= 0) {
    if (got < 0) fprintf(stderr, "poc decode: %s\n", err);
    else fprintf(stderr, "poc decode: %s has no tokenizer.json\n", dir);
    return 2;
  }
  if (poc_tok_unsupported(tok)) {
    fprintf(stderr, "poc decode: %s\n", poc_tok_unsupported(tok));
    poc_tok_free(tok);
    return 2;
  }
  char *line = NULL;
  size_t lcap = 0;
  long ln = 0;
  int rc = 0;
  int32_t *ids = NULL;
  while (getline(&line, &lcap, stdin) >= 0) {
    ln++;
    cJSON *a = cJSON_Parse(line);
    int k = cJSON_GetArraySize(a), n = 0, bad = !cJSON_IsArray(a);
    int32_t *q = bad ? NULL : realloc(ids, ((size_t)k + 1) * sizeof *q);
    if (q) ids = q;
    const cJSON *it;
    if (q)
      cJSON_ArrayForEach(it, a) {
        if (!cJSON_IsNumber(it) || it->valuedouble < 0 || it->valuedouble > 2147483647.0) bad = 1;
        else ids[n++] = (int32_t)it->valuedouble;
      }
    cJSON_Delete(a);
    if (bad || !q) {
      fprintf(stderr, "poc decode: <stdin>:%ld: expected a JSON list of token ids\n", ln);
      rc = 2;
      break;
    }
    size_t tn;
    char *text = poc_tok_decode(tok, ids, n, !show, &tn);
    char *js = text ? poc_tok_json(text, tn) : NULL;
    free(text);
    if (!js) {
      fprintf(stderr, "poc decode: out of memory\n");
      rc = 1;
      break;
    }
    puts(js);
    free(js);
  }
  free(ids);
  free(line);
  poc_tok_free(tok);
  return rc;
}
