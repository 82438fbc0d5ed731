/* cmd_probe.c — `poc probe FILE.po --inputs IN.json [--set k=v ...]` evaluates the
 * objective in float64 on log-probs given as JSON, with no model: the loss (batch mean),
 * the per-example losses, the reports, dL/dlogp for every call of a trainable model,
 * and the masks pick() drew. `poc probe FILE.po --template` prints an input it accepts.
 *
 * Input (every key but batch optional where the objective does not need it):
 *   {"batch": B, "seed": S,
 *    "logp":    {"policy/chosen": [[per-token log-probs] × B], ...},
 *    "entropy": {"policy/chosen": [[...] × B], ...},
 *    "logsumsq": {"policy/chosen": [[per-token log Σ_v p(v)²] × B], ...},
 *    "fields":  {"reward": [B numbers], "chosen_scores": [[per token] × B]},
 *    "tokens":  {"chosen": [B counts]}}
 * Token counts come from the arrays; "tokens" is needed only for a sequence no array
 * covers (one the objective only counts or picks from). "seed" defaults to the train
 * block's seed (else 1). Every number is printed with 17 significant digits. */
#include <cjson/cJSON.h>
#include <errno.h>
#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>
#include <math.h>
#include <stdarg.h>
#include <stdlib.h>
#include <string.h>

#include "driver.h"
#include "ir.h"

typedef struct probe {
  ir_graph *g;
  const char *in_path;
  int B;
  uint64_t seed;
  double *knobs;
  int **domlen;
  char **domsrc;         /* which array gave a domain's length, for messages */
  double **leaf;
} probe;

static void perr(const char *path, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static void perr(const char *path, const char *fmt, ...) {
  va_list ap;
  va_start(ap, fmt);
  fprintf(stderr, "%s: error: ", path);
  vfprintf(stderr, fmt, ap);
  fputc('\n', stderr);
  va_end(ap);
}

static void json_str(FILE *f, const char *s) {
  fputc('"', f);
  for (; *s; s++) {
    unsigned char c = (unsigned char)*s;
    if (c == '"' || c == '\\') fprintf(f, "\\%c", c);
    else if (c < 0x20) fprintf(f, "\\u%04x", c);
    else fputc(c, f);
  }
  fputc('"', f);
}

static int nonfinite_out;
static void json_num(FILE *f, double x) {
  if (isfinite(x)) fprintf(f, "%.17g", x);
  else {
    fprintf(f, "null");
    nonfinite_out++;
  }
}

/* ---- the template ---------------------------------------------------------------- */

static bool domain_needs_tokens(const ir_graph *g, int d) {
  /* true when no logp/entropy/logsumsq/per-token field array gives the count of domain d */
  for (int i = 0; i < g->n; i++) {
    const ir_node *n = &g->nodes[i];
    if ((ir_head_call(n->op) || n->op == IR_FIELD) && n->level == IR_LTOKEN &&
        n->dom == d)
      return false;
  }
  if (g->doms[d].kind == IR_DOM_SLICE) return domain_needs_tokens(g, g->doms[d].base);
  return true;
}

/* the domains whose count the input must state under "tokens" */
static bool *tokens_needed(const ir_graph *g) {
  bool *need = calloc((size_t)g->ndoms + 1, sizeof *need);
  if (!need) exit(1);
  for (int i = 0; i < g->n; i++) {
    const ir_node *n = &g->nodes[i];
    if ((n->op == IR_SEQLEN || n->op == IR_PICK || n->op == IR_POS) && domain_needs_tokens(g, n->dom)) {
      int d = n->dom;
      while (g->doms[d].kind == IR_DOM_SLICE) d = g->doms[d].base;
      need[d] = true;
    }
  }
  return need;
}

static void template_calls(const ir_graph *g, ir_op op, const char *title, int *keyno) {
  int cnt = 0;
  for (int i = 0; i < g->n; i++) cnt += g->nodes[i].op == op;
  if (!cnt) return;
  printf(",\n  \"%s\": {", title);
  int k = 0;
  for (int i = 0; i < g->n; i++) {
    const ir_node *n = &g->nodes[i];
    if (n->op != op) continue;
    printf("%s\n    ", k++ ? "," : "");
    json_str(stdout, n->key);
    printf(": [");
    if (op == IR_REWARD) { /* one score per example */
      printf("%g, %g]", 0.5 + 0.25 * *keyno, -0.25 + 0.125 * *keyno);
      (*keyno)++;
      continue;
    }
    for (int e = 0; e < 2; e++) {
      printf("%s[", e ? ", " : "");
      for (int t = 0; t < 3; t++) {
        /* distinct, plausible numbers: log-probs and log Σ p² below 0, entropies above */
        double v = 0.25 + 0.5 * t + 0.375 * e + 0.0625 * ((*keyno * *keyno * 3 + *keyno + 1) % 11) +
                   0.03125 * ((*keyno + t + e) % 3);
        printf("%s%g", t ? ", " : "", op == IR_ENTROPY ? 1 + v : -v);
      }
      printf("]");
    }
    printf("]");
    (*keyno)++;
  }
  printf("\n  }");
}

static int print_template(const ir_graph *g) {
  printf("{\n  \"batch\": 2,\n  \"seed\": %d", g->train_seed);
  int keyno = 0;
  template_calls(g, IR_LOGP, "logp", &keyno);
  template_calls(g, IR_ENTROPY, "entropy", &keyno);
  template_calls(g, IR_LOGSUMSQ, "logsumsq", &keyno);
  template_calls(g, IR_REWARD, "reward", &keyno);
  bool *used = calloc((size_t)g->nfields + 1, sizeof *used);
  if (!used) return 1;
  int nf = 0;
  for (int i = 0; i < g->n; i++)
    if (g->nodes[i].op == IR_FIELD && !used[g->nodes[i].idx]) used[g->nodes[i].idx] = true, nf++;
  if (nf) {
    printf(",\n  \"fields\": {");
    int k = 0;
    for (int f = 0; f < g->nfields; f++) {
      if (!used[f]) continue;
      printf("%s\n    ", k++ ? "," : "");
      json_str(stdout, g->fields[f].name);
      if (g->fields[f].dom < 0) printf(": [%g, %g]", 0.5 + 0.25 * f, 1.0 + 0.25 * f);
      else printf(": [[0.1, 0.6, 0.3], [0.4, 0.2, 0.9]]");
    }
    printf("\n  }");
  }
  free(used);
  bool *need = tokens_needed(g);
  int k = 0;
  for (int d = 0; d < g->ndoms; d++) {
    if (!need[d]) continue;
    printf("%s\n    ", k++ ? "," : ",\n  \"tokens\": {");
    json_str(stdout, g->doms[d].name);
    printf(": [3, 3]");
  }
  if (k) printf("\n  }");
  free(need);
  printf("\n}\n");
  return 0;
}

/* ---- reading the input ----------------------------------------------------------- */

static char *read_file(const char *path, size_t *len) {
  /* a regular file only, checked on the opened descriptor: a FIFO would block here and
     /dev/urandom would never end (O_NONBLOCK keeps the open itself from waiting) */
  int fd = open(path, O_RDONLY | O_NONBLOCK | O_CLOEXEC);
  struct stat st;
  if (fd < 0 || fstat(fd, &st) != 0) {
    perr(path, "cannot open: %s", strerror(errno));
    if (fd >= 0) close(fd);
    return NULL;
  }
  if (!S_ISREG(st.st_mode)) {
    perr(path, "cannot read: not a regular file (%s)",
         S_ISDIR(st.st_mode) ? "a directory" : S_ISFIFO(st.st_mode) ? "a FIFO" : "a device");
    close(fd);
    return NULL;
  }
  int fl = fcntl(fd, F_GETFL);
  if (fl >= 0) fcntl(fd, F_SETFL, fl & ~O_NONBLOCK);
  FILE *f = fdopen(fd, "rb");
  if (!f) {
    perr(path, "cannot open: %s", strerror(errno));
    close(fd);
    return NULL;
  }
  size_t cap = 1 << 16, n = 0;
  char *buf = malloc(cap);
  for (;;) {
    if (!buf) break;
    if (n + 1 >= cap) {
      char *b = realloc(buf, cap *= 2);
      if (!b) {
        free(buf);
        buf = NULL;
        break;
      }
      buf = b;
    }
    size_t r = fread(buf + n, 1, cap - n - 1, f);
    n += r;
    if (r == 0) break;
  }
  bool bad = ferror(f);
  fclose(f);
  if (!buf || bad) {
    perr(path, "cannot read");
    free(buf);
    return NULL;
  }
  buf[n] = 0;
  *len = n;
  return buf;
}

static void where_in(const char *text, const char *at, int *line, int *col) {
  *line = 1;
  *col = 1;
  for (const char *p = text; p < at && *p; p++) {
    if (*p == '\n') (*line)++, *col = 1;
    else (*col)++;
  }
}

/* A finite number, or an error naming where it sits. */
static int want_number(probe *P, const cJSON *x, const char *what, double *out) {
  if (!cJSON_IsNumber(x)) {
    perr(P->in_path, "%s must be a number", what);
    return -1;
  }
  if (!isfinite(x->valuedouble)) {
    perr(P->in_path, "%s is not a finite number", what);
    return -1;
  }
  *out = x->valuedouble;
  return 0;
}

/* Reads B per-token arrays into one flat array; records or checks the domain's counts. */
static int read_ragged(probe *P, const cJSON *arr, const char *name, int dom, double **out) {
  const ir_graph *g = P->g;
  if (!cJSON_IsArray(arr)) {
    perr(P->in_path, "%s must be an array of %d arrays (one per example)", name, P->B);
    return -1;
  }
  int n = cJSON_GetArraySize(arr);
  if (n != P->B) {
    perr(P->in_path, "%s has %d example%s, but batch is %d", name, n, n == 1 ? "" : "s", P->B);
    return -1;
  }
  int *len = calloc((size_t)P->B, sizeof *len);
  size_t total = 0;
  int i = 0;
  const cJSON *ex;
  cJSON_ArrayForEach(ex, arr) {
    if (!cJSON_IsArray(ex)) {
      perr(P->in_path, "%s[%d] must be an array of per-token numbers", name, i);
      free(len);
      return -1;
    }
    len[i] = cJSON_GetArraySize(ex);
    total += (size_t)len[i];
    i++;
  }
  if (P->domlen[dom]) {
    for (i = 0; i < P->B; i++)
      if (P->domlen[dom][i] != len[i]) {
        perr(P->in_path, "%s[%d] has %d values, but %s[%d] has %d (both follow the tokens of '%s')",
             name, i, len[i], P->domsrc[dom], i, P->domlen[dom][i], g->doms[dom].name);
        free(len);
        return -1;
      }
    free(len);
  } else {
    P->domlen[dom] = len;
    P->domsrc[dom] = strdup(name);
  }
  double *v = calloc(total + 1, sizeof *v);
  size_t o = 0;
  i = 0;
  cJSON_ArrayForEach(ex, arr) {
    const cJSON *x;
    int t = 0;
    cJSON_ArrayForEach(x, ex) {
      char what[600];
      snprintf(what, sizeof what, "%s[%d][%d]", name, i, t);
      if (want_number(P, x, what, &v[o++])) {
        free(v);
        return -1;
      }
      t++;
    }
    i++;
  }
  *out = v;
  return 0;
}

/* A flat array of B numbers (a per-example field, a reward model's scores) into *out. */
static int read_per_example(probe *P, const cJSON *arr, const char *name, const char *what_each,
                            double **out) {
  if (!cJSON_IsArray(arr) || cJSON_GetArraySize(arr) != P->B) {
    perr(P->in_path, "%s must be an array of %d numbers (%s)", name, P->B, what_each);
    return -1;
  }
  *out = calloc((size_t)P->B, sizeof **out);
  if (!*out) {
    perr(P->in_path, "out of memory");
    return -1;
  }
  int e = 0;
  const cJSON *x;
  cJSON_ArrayForEach(x, arr) {
    char what[600];
    snprintf(what, sizeof what, "%s[%d]", name, e);
    if (want_number(P, x, what, &(*out)[e++])) return -1;
  }
  return 0;
}

static int read_calls(probe *P, const cJSON *obj, ir_op op, const char *title) {
  const ir_graph *g = P->g;
  if (obj && !cJSON_IsObject(obj)) {
    perr(P->in_path, "\"%s\" must be an object keyed like \"policy/chosen\"", title);
    return -1;
  }
  const cJSON *m;
  cJSON_ArrayForEach(m, obj) {
    bool known = false;
    for (int i = 0; i < g->n; i++)
      known |= g->nodes[i].op == op && !strcmp(g->nodes[i].key, m->string);
    if (!known) {
      fprintf(stderr, "%s: error: unknown key %s['%s']; the objective reads:", P->in_path, title,
              m->string);
      int k = 0;
      for (int i = 0; i < g->n; i++)
        if (g->nodes[i].op == op) fprintf(stderr, "%s '%s'", k++ ? "," : "", g->nodes[i].key);
      if (!k) fprintf(stderr, " none");
      fputc('\n', stderr);
      return -1;
    }
  }
  for (int i = 0; i < g->n; i++) {
    const ir_node *n = &g->nodes[i];
    if (n->op != op) continue;
    const cJSON *arr = obj ? cJSON_GetObjectItemCaseSensitive(obj, n->key) : NULL;
    if (!arr) {
      perr(P->in_path, "missing %s['%s'] (%s:%d reads it)", title, n->key, n->loc.src ? n->loc.src->path : "?", n->loc.line);
      return -1;
    }
    char name[512];
    snprintf(name, sizeof name, "%s['%s']", title, n->key);
    if (op == IR_REWARD) { /* a score per example */
      if (read_per_example(P, arr, name, "one score per example", &P->leaf[i])) return -1;
      continue;
    }
    if (read_ragged(P, arr, name, n->dom, &P->leaf[i])) return -1;
  }
  return 0;
}

static int read_fields(probe *P, const cJSON *obj) {
  const ir_graph *g = P->g;
  if (obj && !cJSON_IsObject(obj)) {
    perr(P->in_path, "\"fields\" must be an object keyed by field name");
    return -1;
  }
  const cJSON *m;
  cJSON_ArrayForEach(m, obj) {
    bool known = false;
    for (int f = 0; f < g->nfields; f++) known |= !strcmp(g->fields[f].name, m->string);
    if (!known) {
      fprintf(stderr, "%s: error: unknown field '%s'; the objective declares:", P->in_path, m->string);
      for (int f = 0; f < g->nfields; f++) fprintf(stderr, "%s '%s'", f ? "," : "", g->fields[f].name);
      if (!g->nfields) fprintf(stderr, " none");
      fputc('\n', stderr);
      return -1;
    }
  }
  for (int i = 0; i < g->n; i++) {
    const ir_node *n = &g->nodes[i];
    if (n->op != IR_FIELD) continue;
    const ir_field *fd = &g->fields[n->idx];
    const cJSON *arr = obj ? cJSON_GetObjectItemCaseSensitive(obj, fd->name) : NULL;
    char name[512];
    snprintf(name, sizeof name, "fields['%s']", fd->name);
    if (!arr) {
      perr(P->in_path, "missing %s (%s:%d reads it)", name, n->loc.src ? n->loc.src->path : "?", n->loc.line);
      return -1;
    }
    if (fd->dom >= 0) {
      if (read_ragged(P, arr, name, fd->dom, &P->leaf[i])) return -1;
      continue;
    }
    if (read_per_example(P, arr, name, "one per example", &P->leaf[i])) return -1;
  }
  return 0;
}

static int read_tokens(probe *P, const cJSON *obj) {
  const ir_graph *g = P->g;
  if (!obj) return 0;
  if (!cJSON_IsObject(obj)) {
    perr(P->in_path, "\"tokens\" must be an object of token counts keyed by sequence");
    return -1;
  }
  const cJSON *m;
  cJSON_ArrayForEach(m, obj) {
    int d = -1;
    for (int k = 0; k < g->ndoms; k++)
      if ((g->doms[k].kind == IR_DOM_SEQ || g->doms[k].kind == IR_DOM_ANCHOR) &&
          !strcmp(g->doms[k].name, m->string))
        d = k;
    if (d < 0) {
      perr(P->in_path, "tokens['%s']: the objective has no sequence of that name", m->string);
      return -1;
    }
    if (!cJSON_IsArray(m) || cJSON_GetArraySize(m) != P->B) {
      perr(P->in_path, "tokens['%s'] must be an array of %d token counts", m->string, P->B);
      return -1;
    }
    int *len = calloc((size_t)P->B, sizeof *len);
    int i = 0;
    const cJSON *x;
    cJSON_ArrayForEach(x, m) {
      double v;
      char what[300];
      snprintf(what, sizeof what, "tokens['%s'][%d]", m->string, i);
      if (want_number(P, x, what, &v)) {
        free(len);
        return -1;
      }
      if (v < 0 || v != floor(v) || v > 1e7) {
        perr(P->in_path, "%s must be a whole number of tokens", what);
        free(len);
        return -1;
      }
      len[i++] = (int)v;
    }
    if (P->domlen[d]) {
      for (i = 0; i < P->B; i++)
        if (P->domlen[d][i] != len[i]) {
          perr(P->in_path, "tokens['%s'][%d] is %d, but %s[%d] has %d values", m->string, i,
               len[i], P->domsrc[d], i, P->domlen[d][i]);
          free(len);
          return -1;
        }
      free(len);
    } else {
      P->domlen[d] = len;
      P->domsrc[d] = strdup("tokens");
    }
  }
  return 0;
}

static int read_input(probe *P, const char *text) {
  const char *end = NULL;
  cJSON *root = cJSON_ParseWithOpts(text, &end, 1);
  if (!root) {
    const char *at = cJSON_GetErrorPtr();
    int line, col;
    where_in(text, at ? at : text, &line, &col);
    char near[24] = "";
    if (at) {
      size_t k = 0;
      for (; k < sizeof near - 1 && at[k] && at[k] != '\n'; k++) near[k] = at[k];
      near[k] = 0;
    }
    fprintf(stderr, "%s:%d:%d: error: malformed JSON%s%s%s\n", P->in_path, line, col,
            near[0] ? " near '" : " (unexpected end of input)", near, near[0] ? "'" : "");
    return -1;
  }
  int rc = -1;
  static const char *const keys[] = {"batch",  "seed",   "logp",  "entropy",
                                     "logsumsq", "reward", "fields", "tokens"};
  const cJSON *m;
  if (!cJSON_IsObject(root)) {
    perr(P->in_path, "the input must be a JSON object {\"batch\": B, \"logp\": {...}, ...}");
    goto out;
  }
  cJSON_ArrayForEach(m, root) {
    bool ok = false;
    for (size_t k = 0; k < sizeof keys / sizeof keys[0]; k++) ok |= !strcmp(m->string, keys[k]);
    if (!ok) {
      perr(P->in_path, "unknown key '%s' (the input has batch, seed, logp, entropy, logsumsq, "
           "reward, fields, tokens)", m->string);
      goto out;
    }
  }
  const cJSON *b = cJSON_GetObjectItemCaseSensitive(root, "batch");
  double bv;
  if (!b) {
    perr(P->in_path, "missing \"batch\" (the number of examples)");
    goto out;
  }
  if (want_number(P, b, "batch", &bv)) goto out;
  if (bv < 1 || bv != floor(bv) || bv > 1e6) {
    perr(P->in_path, "batch must be a whole number of examples, at least 1");
    goto out;
  }
  P->B = (int)bv;
  const cJSON *s = cJSON_GetObjectItemCaseSensitive(root, "seed");
  if (s) {
    double sv;
    if (want_number(P, s, "seed", &sv)) goto out;
    if (sv < 0 || sv != floor(sv) || sv > 9007199254740992.0) {
      perr(P->in_path, "seed must be a whole number >= 0");
      goto out;
    }
    P->seed = (uint64_t)sv;
  }
  if (read_calls(P, cJSON_GetObjectItemCaseSensitive(root, "logp"), IR_LOGP, "logp") ||
      read_calls(P, cJSON_GetObjectItemCaseSensitive(root, "entropy"), IR_ENTROPY, "entropy") ||
      read_calls(P, cJSON_GetObjectItemCaseSensitive(root, "logsumsq"), IR_LOGSUMSQ, "logsumsq") ||
      read_calls(P, cJSON_GetObjectItemCaseSensitive(root, "reward"), IR_REWARD, "reward") ||
      read_fields(P, cJSON_GetObjectItemCaseSensitive(root, "fields")) ||
      read_tokens(P, cJSON_GetObjectItemCaseSensitive(root, "tokens")))
    goto out;
  rc = 0;
out:
  cJSON_Delete(root);
  return rc;
}

/* ---- the command ----------------------------------------------------------------- */

static int set_knob(const ir_graph *g, double *knobs, const char *kv, const char *file) {
  const char *eq = strchr(kv, '=');
  if (!eq || eq == kv) {
    fprintf(stderr, "poc probe: --set expects NAME=VALUE, got '%s'\n", kv);
    return -1;
  }
  size_t nl = (size_t)(eq - kv);
  int k = -1;
  for (int i = 0; i < g->nknobs; i++)
    if (strlen(g->knobs[i].name) == nl && !strncmp(g->knobs[i].name, kv, nl)) k = i;
  if (k < 0) {
    fprintf(stderr, "poc probe: unknown knob '%.*s'; ", (int)nl, kv);
    if (!g->nknobs) fprintf(stderr, "%s has no knobs (param)\n", file);
    else {
      fprintf(stderr, "the knobs of %s are:", file);
      for (int i = 0; i < g->nknobs; i++) fprintf(stderr, "%s %s", i ? "," : "", g->knobs[i].name);
      fputc('\n', stderr);
    }
    return -1;
  }
  char *end;
  errno = 0;
  double v = strtod(eq + 1, &end);
  if (!eq[1] || *end || errno == ERANGE || !isfinite(v)) {
    fprintf(stderr, "poc probe: --set %.*s: '%s' is not a finite number\n", (int)nl, kv, eq + 1);
    return -1;
  }
  knobs[k] = v;
  return 0;
}

static void print_output(probe *P, const ir_val *vals) {
  const ir_graph *g = P->g;
  FILE *f = stdout;
  const ir_val *le = &vals[g->loss];
  double loss = 0;
  for (int i = 0; i < P->B; i++) loss += le->v[i];
  loss /= P->B;
  fprintf(f, "{\n  \"loss\": ");
  json_num(f, loss);
  fprintf(f, ",\n  \"per_example\": [");
  for (int i = 0; i < P->B; i++) {
    if (i) fprintf(f, ", ");
    json_num(f, le->v[i]);
  }
  fprintf(f, "],\n  \"reports\": {");
  for (int r = 0; r < g->nreports; r++) {
    const ir_node *n = &g->nodes[g->reports[r].node];
    const ir_val *v = &vals[g->reports[r].node];
    double x = v->v[0];
    if (n->level == IR_LEXAMPLE) { /* per-example reports are averaged over the batch */
      x = 0;
      for (int i = 0; i < P->B; i++) x += v->v[i];
      x /= P->B;
    }
    fprintf(f, "%s\n    ", r ? "," : "");
    json_str(f, g->reports[r].name);
    fprintf(f, ": ");
    json_num(f, x);
  }
  fprintf(f, "%s}", g->nreports ? "\n  " : "");
  for (int pass = 0; pass < 3; pass++) {
    ir_op op = pass == 2 ? IR_REWARD : pass ? IR_ENTROPY : IR_LOGP;
    int cnt = 0;
    for (int k = 0; k < g->ngrads; k++) cnt += g->nodes[g->grads[k].call].op == op;
    if (pass && !cnt) continue;
    fprintf(f, ",\n  \"%s\": {", pass == 2 ? "grad_reward" : pass ? "grad_entropy" : "grad");
    int j = 0;
    for (int k = 0; k < g->ngrads; k++) {
      const ir_node *c = &g->nodes[g->grads[k].call];
      if (c->op != op) continue;
      const ir_val *v = &vals[g->grads[k].grad];
      fprintf(f, "%s\n    ", j++ ? "," : "");
      json_str(f, c->key);
      fprintf(f, ": [");
      for (int i = 0; i < P->B && op == IR_REWARD; i++) { /* one number per example */
        if (i) fprintf(f, ", ");
        json_num(f, v->v[i]);
      }
      for (int i = 0; i < P->B && op != IR_REWARD; i++) {
        fprintf(f, "%s[", i ? ", " : "");
        for (int t = 0; t < v->len[i]; t++) {
          if (t) fprintf(f, ", ");
          json_num(f, v->v[v->off[i] + t]);
        }
        fprintf(f, "]");
      }
      fprintf(f, "]");
    }
    fprintf(f, "%s}", j ? "\n  " : "");
  }
  int np = 0;
  for (int i = 0; i < g->n; i++) np += g->nodes[i].op == IR_PICK;
  if (np) {
    fprintf(f, ",\n  \"picks\": {");
    int j = 0;
    for (int id = 0; id < g->n; id++) {
      if (g->nodes[id].op != IR_PICK) continue;
      const ir_val *v = &vals[id];
      fprintf(f, "%s\n    ", j++ ? "," : "");
      json_str(f, g->nodes[id].key);
      fprintf(f, ": [");
      for (int i = 0; i < P->B; i++) {
        fprintf(f, "%s[", i ? ", " : "");
        for (int t = 0; t < v->len[i]; t++) fprintf(f, "%s%d", t ? ", " : "", (int)v->v[v->off[i] + t]);
        fprintf(f, "]");
      }
      fprintf(f, "]");
    }
    fprintf(f, "\n  }");
  }
  fprintf(f, "\n}\n");
}

static void usage(void) {
  fprintf(stderr, "usage: poc probe FILE.po --inputs IN.json [--set NAME=VALUE ...]\n"
                  "       poc probe FILE.po --template\n");
}

int poc_cmd_probe(int argc, char **argv) {
  const char *file = NULL, *inputs = NULL;
  bool templ = false;
  for (int i = 1; i < argc; i++) {
    if (!strcmp(argv[i], "--template")) templ = true;
    else if (!strcmp(argv[i], "--inputs") && i + 1 < argc) inputs = argv[++i];
    else if (!strcmp(argv[i], "--set") && i + 1 < argc) i++; /* read once the knobs are known */
    else if (!strncmp(argv[i], "--", 2)) {
      fprintf(stderr, "poc probe: unknown or incomplete option '%s'\n", argv[i]);
      usage();
      return 2;
    } else if (!file) file = argv[i];
    else {
      fprintf(stderr, "poc probe: one .po file at a time ('%s' is extra)\n", argv[i]);
      return 2;
    }
  }
  if (!file || (!templ && !inputs) || (templ && inputs)) {
    usage();
    return 2;
  }
  po_diag *d = po_diag_new(stderr);
  ir_graph *g = ir_front(file, d);
  bool front_ok = g && !po_diag_errors(d);
  po_diag_free(d);
  if (!front_ok) {
    ir_free(g);
    return 2;
  }
  char err[512];
  if (ir_pipeline(g, NULL, err, sizeof err)) {
    fprintf(stderr, "%s: internal error: %s\n", file, err);
    ir_free(g);
    return 1;
  }
  if (templ) {
    int rc = print_template(g);
    ir_free(g);
    return rc;
  }
  probe P = {.g = g, .in_path = inputs, .seed = (uint64_t)g->train_seed};
  P.knobs = calloc((size_t)g->nknobs + 1, sizeof *P.knobs);
  P.domlen = calloc((size_t)g->ndoms + 1, sizeof *P.domlen);
  P.domsrc = calloc((size_t)g->ndoms + 1, sizeof *P.domsrc);
  P.leaf = calloc((size_t)g->n + 1, sizeof *P.leaf);
  int rc = 2;
  char *text = NULL;
  ir_val *vals = NULL;
  for (int k = 0; k < g->nknobs; k++) P.knobs[k] = g->knobs[k].value;
  for (int i = 1; i < argc; i++)
    if (!strcmp(argv[i], "--set") && i + 1 < argc && set_knob(g, P.knobs, argv[++i], file)) goto out;
  size_t len;
  text = read_file(inputs, &len);
  if (!text) goto out;
  if (strlen(text) != len) {
    perr(inputs, "contains a NUL byte");
    goto out;
  }
  if (read_input(&P, text)) goto out;
  /* every sequence the objective counts or picks from needs a known count */
  ir_env env = {.B = P.B, .seed = P.seed, .knobs = P.knobs, .domlen = P.domlen,
                .leaf = (const double *const *)P.leaf};
  for (int i = 0; i < g->n; i++) {
    const ir_node *n = &g->nodes[i];
    if (n->op != IR_SEQLEN && n->op != IR_PICK && n->op != IR_POS) continue;
    int *l = ir_dom_lengths(g, &env, n->dom);
    bool unknown = l[0] < 0;
    free(l);
    if (unknown) {
      int b = n->dom;
      while (g->doms[b].kind == IR_DOM_SLICE) b = g->doms[b].base;
      perr(inputs, "cannot tell how many tokens '%s' has: no logp, entropy, logsumsq or per-token field "
           "array follows it; give \"tokens\": {\"%s\": [one count per example]}",
           g->doms[n->dom].name, g->doms[b].name);
      goto out;
    }
  }
  vals = ir_eval(g, &env, err, sizeof err);
  if (!vals) {
    perr(inputs, "%s", err);
    goto out;
  }
  nonfinite_out = 0;
  print_output(&P, vals);
  if (nonfinite_out)
    fprintf(stderr, "%s: warning: %d result%s not finite (printed as null); check the inputs "
            "against the objective's domain (e.g. log of a non-positive number)\n", file,
            nonfinite_out, nonfinite_out == 1 ? " is" : "s are");
  rc = 0;
out:
  ir_vals_free(g, vals);
  free(text);
  for (int i = 0; i < g->n; i++) free(P.leaf[i]);
  for (int dd = 0; dd < g->ndoms; dd++) free(P.domlen[dd]), free(P.domsrc[dd]);
  free(P.leaf);
  free(P.domlen);
  free(P.domsrc);
  free(P.knobs);
  ir_free(g);
  return rc;
}
