/* kernel_harness.c — runs a generated objective kernel on `poc probe` input, so that the
 * kernel can be compared with the reference interpreter number for number.
 *
 * Built by kernel_check.py together with a generated plan.c (compiled with
 * -Dpoc_train_main=poc_harness_main, so its main() lands here) and kernels.c:
 *
 *     harness IN.json [--set k=v ...]
 *
 * prints {"loss", "per_example", "reports", "grad", "grad_entropy"} in the probe's form:
 * the batch-mean loss, each report averaged over the batch, and dL/dlogp of every call
 * the kernel writes a gradient for. Example indices are 0..B-1 and the pick seed is the
 * input's "seed" (else the train block's), as the probe draws them. */
#include <cjson/cJSON.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "pocrt.h"
#include "program.h"

int poc_harness_main(const poc_program *prog, int argc, char **argv);

static char *slurp(const char *path) {
  FILE *f = fopen(path, "rb");
  if (!f) return NULL;
  fseek(f, 0, SEEK_END);
  long n = ftell(f);
  fseek(f, 0, SEEK_SET);
  char *buf = malloc((size_t)n + 1);
  if (buf && fread(buf, 1, (size_t)n, f) != (size_t)n) {
    free(buf);
    buf = NULL;
  }
  if (buf) buf[n] = 0;
  fclose(f);
  return buf;
}

static void die(const char *msg, const char *what) {
  fprintf(stderr, "harness: %s%s%s\n", msg, what ? ": " : "", what ? what : "");
  exit(2);
}

/* A ragged array of B arrays: values and offsets. */
static void ragged(const cJSON *arr, int B, double **v, int32_t **off, const char *what) {
  if (!cJSON_IsArray(arr) || cJSON_GetArraySize(arr) != B) die("not B arrays", what);
  *off = calloc((size_t)B + 1, sizeof **off);
  int total = 0;
  for (int b = 0; b < B; b++) total += cJSON_GetArraySize(cJSON_GetArrayItem(arr, b));
  *v = calloc((size_t)total + 1, sizeof **v);
  int k = 0;
  for (int b = 0; b < B; b++) {
    const cJSON *row = cJSON_GetArrayItem(arr, b), *x;
    cJSON_ArrayForEach(x, row) (*v)[k++] = x->valuedouble;
    (*off)[b + 1] = k;
  }
}

static void num(double x) {
  if (isfinite(x)) printf("%.17g", x);
  else printf("null");
}

int poc_harness_main(const poc_program *prog, int argc, char **argv) {
  if (argc > 1 && !strcmp(argv[1], "--unfused-head")) { /* an unfused build's main adds it */
    argv++;
    argc--;
  }
  if (argc < 2) die("usage: harness IN.json [--set k=v ...]", NULL);
  char *text = slurp(argv[1]);
  if (!text) die("cannot read", argv[1]);
  cJSON *in = cJSON_Parse(text);
  if (!in) die("malformed JSON", argv[1]);
  int B = cJSON_GetObjectItem(in, "batch")->valueint;
  const cJSON *seed = cJSON_GetObjectItem(in, "seed");
  const cJSON *lp = cJSON_GetObjectItem(in, "logp"), *en = cJSON_GetObjectItem(in, "entropy"),
              *lq = cJSON_GetObjectItem(in, "logsumsq");
  const cJSON *fl = cJSON_GetObjectItem(in, "fields"), *rw = cJSON_GetObjectItem(in, "reward");
  int C = prog->n_calls, F = prog->n_fields;
  const int32_t **off = calloc((size_t)C + 1, sizeof *off);
  const double **logp = calloc((size_t)C + 1, sizeof *logp), **ent = calloc((size_t)C + 1, sizeof *ent);
  const double **lss = calloc((size_t)C + 1, sizeof *lss);
  double **dlogp = calloc((size_t)C + 1, sizeof *dlogp), **dent = calloc((size_t)C + 1, sizeof *dent);
  for (int c = 0; c < C; c++) {
    const poc_call *pc = &prog->calls[c];
    for (int k = 0; k < 3; k++) {
      if (!(k == 2 ? pc->want_logsumsq : k ? pc->want_entropy : pc->want_logp)) continue;
      const cJSON *arr = cJSON_GetObjectItem(pc->reward ? rw : k == 2 ? lq : k ? en : lp, pc->key);
      if (!arr) die("no input for call", pc->key);
      double *v;
      int32_t *o;
      if (pc->reward) { /* one score per example: a ragged array of ones */
        v = calloc((size_t)B + 1, sizeof *v);
        int32_t *oo = calloc((size_t)B + 1, sizeof *oo);
        for (int b = 0; b < B; b++) {
          v[b] = cJSON_GetArrayItem(arr, b)->valuedouble;
          oo[b + 1] = b + 1;
        }
        o = oo;
      } else {
        ragged(arr, B, &v, &o, pc->key);
      }
      if (k == 2) lss[c] = v;
      else if (k) ent[c] = v;
      else logp[c] = v;
      off[c] = o;
      if (k == 2) continue; /* log Σ p² has no seed */
      double **d = k ? dent : dlogp;
      /* NaN where the kernel must write: a missed position shows up */
      if (pc->trainable) {
        d[c] = malloc(((size_t)o[B] + 1) * sizeof **d);
        for (int i = 0; i < o[B]; i++) d[c][i] = NAN;
      }
    }
  }
  const int32_t **foff = calloc((size_t)F + 1, sizeof *foff);
  const double **field = calloc((size_t)F + 1, sizeof *field);
  for (int f = 0; f < F; f++) {
    const cJSON *arr = cJSON_GetObjectItem(fl, prog->fields[f].name);
    if (!arr) die("no input for field", prog->fields[f].name);
    if (prog->fields[f].seq < 0) {
      double *v = calloc((size_t)B, sizeof *v);
      for (int b = 0; b < B; b++) v[b] = cJSON_GetArrayItem(arr, b)->valuedouble;
      field[f] = v;
    } else {
      double *v;
      int32_t *o;
      ragged(arr, B, &v, &o, prog->fields[f].name);
      field[f] = v;
      foff[f] = o;
    }
  }
  double *knobs = calloc((size_t)prog->n_knobs + 1, sizeof *knobs);
  for (int k = 0; k < prog->n_knobs; k++) knobs[k] = prog->knobs[k].value;
  for (int i = 2; i + 1 < argc; i += 2) {
    const char *eq = strchr(argv[i + 1], '=');
    for (int k = 0; eq && k < prog->n_knobs; k++)
      if (!strncmp(prog->knobs[k].name, argv[i + 1], (size_t)(eq - argv[i + 1])) &&
          strlen(prog->knobs[k].name) == (size_t)(eq - argv[i + 1]))
        knobs[k] = atof(eq + 1);
  }
  int64_t *example = calloc((size_t)B, sizeof *example);
  for (int b = 0; b < B; b++) example[b] = b;
  double *loss = calloc((size_t)B, sizeof *loss);
  double *report = calloc((size_t)(prog->n_reports + 1) * (size_t)B, sizeof *report);
  char err[POC_ERR_LEN] = "";
  poc_objective_args a = {
      .B = B, .B_norm = B, .example = example,
      .pick_seed = seed ? (uint64_t)seed->valuedouble : prog->train.seed, .knobs = knobs,
      .off = off, .logp = logp, .entropy = ent, .field_off = foff, .field = field, .loss = loss,
      .report = report, .dlogp = dlogp, .dentropy = dent, .err = err, .logsumsq = lss};
  if (prog->objective(&a)) die("the objective failed", err);
  double L = 0;
  for (int b = 0; b < B; b++) L += loss[b];
  printf("{\"loss\": ");
  num(L / B);
  printf(", \"per_example\": [");
  for (int b = 0; b < B; b++) {
    printf(b ? ", " : "");
    num(loss[b]);
  }
  printf("], \"reports\": {");
  for (int r = 0; r < prog->n_reports; r++) {
    double s = 0;
    for (int b = 0; b < B; b++) s += report[r * B + b];
    printf("%s\"%s\": ", r ? ", " : "", prog->reports[r]);
    num(s / B);
  }
  printf("}");
  for (int k = 0; k < 3; k++) {
    printf(", \"%s\": {", k == 2 ? "grad_reward" : k ? "grad_entropy" : "grad");
    int j = 0;
    for (int c = 0; c < C; c++) {
      double *d = k == 1 ? dent[c] : dlogp[c];
      if (!d || (k == 2) != (prog->calls[c].reward != 0)) continue;
      printf("%s\"%s\": [", j++ ? ", " : "", prog->calls[c].key);
      for (int b = 0; b < B && k == 2; b++) {
        printf(b ? ", " : "");
        num(d[b]);
      }
      for (int b = 0; b < B && k != 2; b++) {
        printf("%s[", b ? ", " : "");
        for (int i = off[c][b]; i < off[c][b + 1]; i++) {
          printf(i > off[c][b] ? ", " : "");
          num(d[i]);
        }
        printf("]");
      }
      printf("]");
    }
    printf("}");
  }
  printf("}\n");
  cJSON_Delete(in);
  free(text);
  return 0;
}
