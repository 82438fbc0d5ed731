/* test_robust.c — hostile input: the front end must report, never crash or hang.
 * Deep nesting, NUL bytes, megabyte tokens, every prefix of every good file, random
 * bytes and random token soups. Run under the sanitizer build, a crash or an
 * out-of-bounds access fails the test even where no CHECK is written.
 *
 * usage: test_dsl_robust GOOD_DIR SCRATCH_DIR */
#include <dirent.h>
#include <stdbool.h>
#include <stdint.h>
#include <sys/stat.h>

#include "fe_test.h"

static FILE *devnull;

/* Parse and check `len` bytes; returns the number of errors. */
static int run(const char *text, size_t len) {
  po_diag *d = po_diag_new(devnull);
  po_source *src = po_source_from_memory("r.po", text, len);
  po_program *p = po_parse(src, d);
  if (p) po_check(p, d);
  int n = po_diag_errors(d);
  po_diag_free(d);
  po_release_all();
  return n;
}

static char *repeat(const char *head, char c, size_t n, const char *tail) {
  size_t lh = strlen(head), lt = strlen(tail);
  char *s = malloc(lh + n + lt + 1);
  if (!s) abort();
  memcpy(s, head, lh);
  memset(s + lh, c, n);
  memcpy(s + lh + n, tail, lt + 1);
  return s;
}

static void test_deep(void) {
  const size_t n = 100000;
  char *s = repeat("x = ", '(', n, "1");
  CHECK(run(s, strlen(s)) >= 1);
  free(s);
  s = repeat("x = ", '[', n, "");
  CHECK(run(s, strlen(s)) >= 1);
  free(s);
  s = repeat("x = ", '-', n, "1");
  CHECK(run(s, strlen(s)) >= 1);
  free(s);
  s = repeat("train ", '{', n, "");
  CHECK(run(s, strlen(s)) >= 1);
  free(s);
  /* f(f(f(...))) */
  s = malloc(3 * n + 8);
  strcpy(s, "x = ");
  for (size_t i = 0; i < n; i++) memcpy(s + 4 + 2 * i, "f(", 2);
  s[4 + 2 * n] = 0;
  CHECK(run(s, strlen(s)) >= 1);
  free(s);
  /* a long flat program is fine: 20000 statements */
  char *big = malloc(20000 * 24 + 200);
  strcpy(big, "policy = model(\"m\")\ndata = pairs(\"d\")\nv0 = 1\n");
  size_t at = strlen(big);
  for (int i = 1; i < 20000; i++) at += (size_t)sprintf(big + at, "v%d = v%d + 1\n", i, i - 1);
  strcpy(big + at, "loss = v19999 * sum(logp(policy, chosen))\n");
  CHECK(run(big, strlen(big)) == 0);
  free(big);
}

static void test_big_tokens(void) {
  const size_t mb = 1 << 20;
  char *s = repeat("", 'a', mb, " = 1");
  CHECK(run(s, strlen(s)) >= 1); /* name too long */
  free(s);
  s = repeat("x = \"", 'a', mb, "\"");
  CHECK(run(s, strlen(s)) >= 1); /* string too long (and a string where none belongs) */
  free(s);
  s = repeat("x = ", '9', mb, "");
  CHECK(run(s, strlen(s)) >= 1); /* number out of range */
  free(s);
  s = repeat("#", 'c', mb, "\n");
  CHECK(run(s, strlen(s)) >= 1); /* only a comment: no data, no loss */
  free(s);
  s = repeat("x = ", ' ', mb, "");
  CHECK(run(s, strlen(s)) >= 1);
  free(s);
  s = repeat("", '\n', mb, "x");
  CHECK(run(s, strlen(s)) >= 1);
  free(s);
  s = repeat("x = \"", '\\', mb, "");
  CHECK(run(s, strlen(s)) >= 1);
  free(s);
}

static void test_nul(void) {
  CHECK(run("\0", 1) >= 1);
  CHECK(run("x = 1\0", 6) >= 1);
  CHECK(run("x = \"a\0b\"", 9) >= 1);
  CHECK(run("# a\0b\nx = 1", 11) >= 1);
  char *s = calloc(1, 100000);
  CHECK(run(s, 100000) >= 1);
  free(s);
}

static char *slurp(const char *path, size_t *len) {
  FILE *f = fopen(path, "rb");
  if (!f) return NULL;
  char *buf = malloc(1 << 20);
  *len = fread(buf, 1, (1 << 20) - 1, f);
  fclose(f);
  return buf;
}

/* Every prefix of every good file: the whole file has no errors; no prefix crashes;
 * a prefix that ends inside an open bracket has an error. */
static void test_prefixes(const char *dir) {
  DIR *dp = opendir(dir);
  CHECK_MSG(dp != NULL, "cannot open %s", dir);
  if (!dp) return;
  struct dirent *de;
  int files = 0;
  while ((de = readdir(dp))) {
    size_t nl = strlen(de->d_name);
    if (nl < 4 || strcmp(de->d_name + nl - 3, ".po")) continue;
    char path[4096];
    snprintf(path, sizeof path, "%s/%s", dir, de->d_name);
    size_t len;
    char *text = slurp(path, &len);
    if (!text) continue;
    files++;
    CHECK_MSG(run(text, len) == 0, "%s has errors", path);
    for (size_t cut = 0; cut < len; cut++) {
      int depth = 0;
      bool in_comment = false, in_string = false;
      for (size_t i = 0; i < cut; i++) {
        char c = text[i];
        if (in_comment) in_comment = c != '\n';
        else if (in_string) {
          if (c == '\\') i++;
          else in_string = c != '"';
        } else if (c == '#') in_comment = true;
        else if (c == '"') in_string = true;
        else depth += (c == '(' || c == '[' || c == '{') - (c == ')' || c == ']' || c == '}');
      }
      int errs = run(text, cut);
      if (depth > 0 || in_string) CHECK_MSG(errs >= 1, "%s cut at %zu: no error", path, cut);
    }
    free(text);
  }
  closedir(dp);
  CHECK(files >= 5);
}

static uint64_t rng = 0x9e3779b97f4a7c15u;
static uint64_t next(void) {
  rng ^= rng << 13;
  rng ^= rng >> 7;
  rng ^= rng << 17;
  return rng;
}

static void test_random(void) {
  char buf[512];
  for (int k = 0; k < 3000; k++) {
    size_t n = next() % sizeof buf;
    for (size_t i = 0; i < n; i++) buf[i] = (char)next();
    run(buf, n);
  }
  /* random printable text and random token soups reach deeper into the grammar */
  static const char *toks[] = {
      "x", "=", "==", "(", ")", "[", "]", "{", "}", ",", ":", ";", "|", "++", "+", "-", "*",
      "/", "<", "<=", "1", "0.5", "1e9", "\"s\"", "param", "def", "report", "field", "train",
      "logp", "sum", "chosen", "prompt", "policy", "model", "pairs", "loss", "\n", "#c\n",
      "sample", "tokens", "a/b", "max", "f", "g", "frozen", "points", "response"};
  const size_t nt = sizeof toks / sizeof toks[0];
  for (int k = 0; k < 5000; k++) {
    size_t at = 0, count = next() % 60;
    for (size_t i = 0; i < count && at + 16 < sizeof buf; i++) {
      const char *t = toks[next() % nt];
      at += (size_t)snprintf(buf + at, sizeof buf - at, "%s ", t);
    }
    run(buf, at);
  }
  /* deterministic cases the random ones stand for */
  CHECK(run("\xff", 1) == 1);
  CHECK(run("x = @", 5) >= 1);
}

static void test_files(const char *scratch) {
  po_diag *d = po_diag_new(devnull);
  CHECK(po_source_read(scratch, d) == NULL && po_diag_errors(d) == 1); /* a directory */
  char path[4096];
  snprintf(path, sizeof path, "%s/does-not-exist.po", scratch);
  CHECK(po_source_read(path, d) == NULL && po_diag_errors(d) == 2);
  snprintf(path, sizeof path, "%s/nul.po", scratch);
  FILE *f = fopen(path, "wb");
  CHECK_MSG(f != NULL, "cannot write in %s", scratch);
  if (!f) return;
  fwrite("x = 1\ny = \0\n", 1, 12, f);
  fclose(f);
  char *out = NULL;
  size_t outlen = 0;
  FILE *mem = open_memstream(&out, &outlen);
  po_diag *d2 = po_diag_new(mem);
  CHECK(po_source_read(path, d2) == NULL && po_diag_errors(d2) == 1);
  po_diag_free(d2);
  fclose(mem);
  CHECK(out && strstr(out, "nul.po:2:5: error: NUL byte in source"));
  free(out);
  snprintf(path, sizeof path, "%s/big.po", scratch);
  f = fopen(path, "wb");
  if (!f) return;
  char *block = repeat("", '#', 1 << 20, "");
  for (int i = 0; i < 17; i++) fwrite(block, 1, 1 << 20, f);
  fclose(f);
  free(block);
  CHECK(po_source_read(path, d) == NULL && po_diag_errors(d) == 3); /* over 16 MiB */
  remove(path);
  snprintf(path, sizeof path, "%s/nul.po", scratch);
  remove(path);
  po_diag_free(d);
  po_release_all();
}

int main(int argc, char **argv) {
  if (argc != 3) {
    fprintf(stderr, "usage: %s GOOD_DIR SCRATCH_DIR\n", argv[0]);
    return 2;
  }
  devnull = fopen("/dev/null", "w");
  test_deep();
  test_big_tokens();
  test_nul();
  test_prefixes(argv[1]);
  test_random();
  test_files(argv[2]);
  fclose(devnull);
  return check_summary("dsl_robust");
}
