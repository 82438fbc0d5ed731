/* test_units.c — the training runtime's pure parts: learning-rate schedules, AdamW against
 * a hand computation, the data loader's validation (each kind of bad line, with its line
 * number) and truncation, the visiting order, pick masks, checkpoints (atomic write,
 * discovery that skips partial folders, exact reload) and metrics truncation. */
#include <fcntl.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cjson/cJSON.h>

#include "device.h"
#include "train_internal.h"
#include "tt.h"

static char dir[512];

static void test_schedule(void) {
  /* transformers' schedules: step s runs at factor(s − 1); warmup i/W, then the decay over
   * the T − W remaining updates (tests/trl_train compares with transformers itself) */
  poc_train t = POC_TRAIN_DEFAULTS;
  t.lr = 1;
  t.warmup = 0.25;
  CHECK(trn_warmup_steps(&t, 8) == 2);
  CHECK(trn_warmup_steps(&t, 9) == 3);                    /* ceil(2.25) */
  CHECK_NEAR(trn_lr(&t, 1, 8), 0, 1e-12);                 /* lr 0 on the first update */
  CHECK_NEAR(trn_lr(&t, 2, 8), 0.5, 1e-12);
  CHECK_NEAR(trn_lr(&t, 3, 8), 1.0, 1e-12);               /* p = 0 */
  CHECK_NEAR(trn_lr(&t, 4, 8), 0.5 * (1 + cos(M_PI / 6)), 1e-12);
  CHECK_NEAR(trn_lr(&t, 8, 8), 0.5 * (1 + cos(M_PI * 5 / 6)), 1e-12);
  t.schedule = POC_SCHED_LINEAR;
  CHECK_NEAR(trn_lr(&t, 5, 8), 1 - 2.0 / 6, 1e-12);
  CHECK_NEAR(trn_lr(&t, 8, 8), 1 - 5.0 / 6, 1e-12);
  t.schedule = POC_SCHED_CONSTANT;
  CHECK_NEAR(trn_lr(&t, 7, 8), 1, 1e-12);
  CHECK_NEAR(trn_lr(&t, 2, 8), 0.5, 1e-12);
  t.warmup = 3; /* >= 1: steps */
  CHECK(trn_warmup_steps(&t, 100) == 3);
  CHECK_NEAR(trn_lr(&t, 2, 100), 1.0 / 3, 1e-12);
  t.warmup = 0.01; /* any ratio > 0 is at least one step */
  CHECK(trn_warmup_steps(&t, 10) == 1);
  CHECK_NEAR(trn_lr(&t, 1, 10), 0, 1e-12);
  t.warmup = 0;
  t.schedule = POC_SCHED_COSINE;
  CHECK_NEAR(trn_lr(&t, 1, 10), 1, 1e-12);
  CHECK_NEAR(trn_lr(&t, 6, 10), 0.5 * (1 + cos(M_PI * 0.5)), 1e-12);
  t.warmup = 12; /* longer than the run: the peak is never reached */
  CHECK_NEAR(trn_lr(&t, 10, 10), 9.0 / 12, 1e-12);
  /* total steps */
  poc_train u = POC_TRAIN_DEFAULTS;
  u.batch = 16;
  u.epochs = 2;
  CHECK(trn_total_steps(&u, 100) == 12);
  u.steps = 5;
  CHECK(trn_total_steps(&u, 100) == 5);
  u.steps = 0;
  CHECK(trn_total_steps(&u, 3) == 1);
}

/* Training's AdamW is the model's (poc_model_adamw): three steps with decay, changing lr
 * and a gradient scale against a hand computation in double, on the CPU device. */
static void test_adamw(void) {
  poc_config c = tt_config();
  poc_layout lay;
  char err[POC_ERR_LEN];
  CHECK(poc_layout_init(&lay, &c, err) == 0);
  size_t n = lay.n_params;
  float *w = malloc(n * sizeof *w), *g = malloc(n * sizeof *g);
  double *W = malloc(n * sizeof *W), *M = calloc(n, sizeof *M), *V = calloc(n, sizeof *V);
  poc_rng r;
  poc_rng_seed(&r, 4);
  for (size_t i = 0; i < n; i++) W[i] = w[i] = (float)(2 * poc_rng_uniform(&r) - 1);
  poc_device *d = poc_device_open("cpu", err);
  CHECK_MSG(d != NULL, "%s", err);
  if (!d) return;
  poc_model *m = poc_model_new(d, &lay, w, POC_DT_F32, 1, 4, err);
  CHECK_MSG(m != NULL, "%s", err);
  if (!m) return;
  poc_train t = POC_TRAIN_DEFAULTS;
  t.weight_decay = 0.1;
  t.adam_beta1 = 0.8;
  t.adam_beta2 = 0.95;
  t.adam_eps = 1e-6;
  double lr[3] = {0.01, 0.02, 0.005}, gs[3] = {1, 0.5, 1};
  for (int s = 1; s <= 3; s++) {
    for (size_t i = 0; i < n; i++) g[i] = (float)(2 * poc_rng_uniform(&r) - 1);
    poc_adamw h = {lr[s - 1], t.adam_beta1, t.adam_beta2, t.adam_eps, t.weight_decay, s, gs[s - 1]};
    CHECK(poc_model_set(m, POC_PART_GRAD, g, POC_DT_F32, err) == 0);
    CHECK_MSG(poc_model_adamw(m, &h, err) == 0, "%s", err);
    /* by hand, in double */
    for (int ti = 0; ti < lay.n_tensors; ti++) {
      const poc_tensor_info *T = &lay.tensors[ti];
      for (size_t j = 0; j < T->numel; j++) {
        size_t i = T->offset + j;
        double gi = g[i] * gs[s - 1];
        M[i] = 0.8 * M[i] + 0.2 * gi;
        V[i] = 0.95 * V[i] + 0.05 * gi * gi;
        double mh = M[i] / (1 - pow(0.8, s)), vh = V[i] / (1 - pow(0.95, s));
        if (T->ndim == 2) W[i] *= 1 - lr[s - 1] * 0.1;
        W[i] -= lr[s - 1] * mh / (sqrt(vh) + 1e-6);
      }
    }
  }
  CHECK(poc_model_get(m, POC_PART_WEIGHTS, w, POC_DT_F32, err) == 0);
  double worst = 0;
  for (size_t i = 0; i < n; i++)
    if (fabs(W[i] - w[i]) > worst) worst = fabs(W[i] - w[i]);
  printf("AdamW vs hand computation: %.3g\n", worst);
  CHECK_MSG(worst < 1e-6, "AdamW differs from the hand computation by %g", worst);
  /* decay only on 2-D tensors: a norm weight with zero gradient stays put */
  const poc_tensor_info *norm = poc_layout_find(&lay, "model.norm.weight");
  const poc_tensor_info *q = poc_layout_find(&lay, "model.layers.0.self_attn.q_proj.weight");
  memset(g, 0, n * sizeof *g);
  float nb = w[norm->offset], qb = w[q->offset];
  poc_model_free(m);
  m = poc_model_new(d, &lay, w, POC_DT_F32, 1, 4, err); /* fresh moments */
  CHECK_MSG(m != NULL, "%s", err);
  if (m) {
    poc_adamw h = {0.1, t.adam_beta1, t.adam_beta2, t.adam_eps, t.weight_decay, 1, 1};
    CHECK(poc_model_adamw(m, &h, err) == 0 && poc_model_get(m, POC_PART_WEIGHTS, w, POC_DT_F32, err) == 0);
    CHECK(w[norm->offset] == nb);
    CHECK_NEAR(w[q->offset], qb * (1 - 0.1 * 0.1), 1e-7);
    /* the norm: sqrt(3² + 4² + 12²) = 13 */
    memset(g, 0, n * sizeof *g);
    g[0] = 3, g[n / 2] = 4, g[n - 1] = 12;
    double norm2 = 0;
    CHECK(poc_model_set(m, POC_PART_GRAD, g, POC_DT_F32, err) == 0 &&
          poc_model_grad_norm(m, &norm2, err) == 0);
    CHECK_NEAR(norm2, 13, 1e-12);
    poc_model_free(m);
  }
  poc_device_close(d);
  free(w), free(g), free(W), free(M), free(V);
  poc_layout_free(&lay);
}

/* Runs trn_data_load with stderr captured; returns its result and the messages. */
static int load_capture(trn_data *d, const poc_program *p, const char *path, int max_len,
                        char *msg, size_t cap) {
  char cap_path[600];
  snprintf(cap_path, sizeof cap_path, "%s/stderr.txt", dir);
  fflush(stderr);
  int saved = dup(2), fd = open(cap_path, O_WRONLY | O_CREAT | O_TRUNC, 0644);
  dup2(fd, 2);
  close(fd);
  int rc = trn_data_load(d, p, path, TT_VOCAB, max_len);
  fflush(stderr);
  dup2(saved, 2);
  close(saved);
  FILE *f = fopen(cap_path, "r");
  size_t n = f ? fread(msg, 1, cap - 1, f) : 0;
  msg[n] = 0;
  if (f) fclose(f);
  return rc;
}

static void write_text(const char *path, const char *text) {
  FILE *f = fopen(path, "w");
  fputs(text, f);
  fclose(f);
}

#define GOOD "{\"prompt\":[1,5],\"chosen\":[6,2],\"rejected\":[7,2],\"margin\":1,\"chosen_scores\":[0.5,1]}\n"

static void test_data_errors(void) {
  struct {
    const char *line, *want;
  } cases[] = {
      {"{\"prompt\":[1,5],\"chosen\":[6,2]", "malformed JSON"},
      {"[1,2,3]", "expected a JSON object"},
      {"{\"prompt\":[1,5],\"rejected\":[7,2],\"margin\":1,\"chosen_scores\":[1]}", "missing 'chosen'"},
      {"{\"prompt\":[1,5],\"chosen\":6,\"rejected\":[7,2],\"margin\":1,\"chosen_scores\":[1]}", "'chosen' is not an array"},
      {"{\"prompt\":[1,5],\"chosen\":[6,2.5],\"rejected\":[7,2],\"margin\":1,\"chosen_scores\":[1,1]}", "not an integer token id"},
      {"{\"prompt\":[1,5],\"chosen\":[6,-1],\"rejected\":[7,2],\"margin\":1,\"chosen_scores\":[1,1]}", "outside the vocabulary"},
      {"{\"prompt\":[1,5],\"chosen\":[6,32],\"rejected\":[7,2],\"margin\":1,\"chosen_scores\":[1,1]}", "outside the vocabulary"},
      {"{\"prompt\":[1,5],\"chosen\":[6,\"a\"],\"rejected\":[7,2],\"margin\":1,\"chosen_scores\":[1,1]}", "is not a number"},
      {"{\"prompt\":[1,5],\"chosen\":[6,2],\"rejected\":[],\"margin\":1,\"chosen_scores\":[1,1]}", "'rejected' is empty"},
      {"{\"prompt\":[],\"chosen\":[6,2],\"rejected\":[7],\"margin\":1,\"chosen_scores\":[1,1]}", "'prompt' is empty"},
      {"{\"prompt\":[1,5],\"chosen\":[6,2],\"rejected\":[7],\"chosen_scores\":[1,1]}", "missing field 'margin'"},
      {"{\"prompt\":[1,5],\"chosen\":[6,2],\"rejected\":[7],\"margin\":1e999,\"chosen_scores\":[1,1]}", "not finite"},
      {"{\"prompt\":[1,5],\"chosen\":[6,2],\"rejected\":[7],\"margin\":\"x\",\"chosen_scores\":[1,1]}", "field 'margin' is not a number"},
      {"{\"prompt\":[1,5],\"chosen\":[6,2],\"rejected\":[7],\"margin\":1,\"chosen_scores\":[1]}", "has 1 numbers but 'chosen' has 2 tokens"},
      {"{\"prompt\":[1,5],\"chosen\":[6,2],\"rejected\":[7],\"margin\":1,\"chosen_scores\":[1,null]}", "'chosen_scores'[1] is not a number"},
  };
  char path[600], msg[4096], want[700];
  snprintf(path, sizeof path, "%s/bad.jsonl", dir);
  poc_program *p = tt_program("m", path, NULL, 1, 0, 1);
  for (size_t i = 0; i < sizeof cases / sizeof *cases; i++) {
    char text[1024];
    snprintf(text, sizeof text, GOOD "\n%s\n" GOOD, cases[i].line); /* a blank line 2 */
    write_text(path, text);
    trn_data d;
    int rc = load_capture(&d, p, path, 64, msg, sizeof msg);
    snprintf(want, sizeof want, "%s:3: error: ", path);
    CHECK_MSG(rc == -1, "case %zu accepted", i);
    CHECK_MSG(strstr(msg, want) != NULL, "case %zu: no '%s' in: %s", i, want, msg);
    CHECK_MSG(strstr(msg, cases[i].want) != NULL, "case %zu: no '%s' in: %s", i, cases[i].want, msg);
  }
  /* several bad lines: each reported */
  write_text(path, GOOD "{\n" GOOD "{\"prompt\":[1]}\n");
  trn_data d;
  CHECK(load_capture(&d, p, path, 64, msg, sizeof msg) == -1);
  snprintf(want, sizeof want, "%s:2: error:", path);
  CHECK(strstr(msg, want) != NULL);
  snprintf(want, sizeof want, "%s:4: error:", path);
  CHECK(strstr(msg, want) != NULL);
  /* an empty file and a missing one */
  write_text(path, "\n");
  CHECK(load_capture(&d, p, path, 64, msg, sizeof msg) == -1);
  CHECK(strstr(msg, "no examples") != NULL);
  snprintf(path, sizeof path, "%s/none.jsonl", dir);
  CHECK(load_capture(&d, p, path, 64, msg, sizeof msg) == -1);
  CHECK(strstr(msg, "cannot read") != NULL);
}

static void test_data_truncation(void) {
  char path[600], msg[4096];
  snprintf(path, sizeof path, "%s/long.jsonl", dir);
  write_text(path,
             "{\"prompt\":[1,5,6],\"chosen\":[7,8,9,10,2],\"rejected\":[11,2],\"margin\":0.5,"
             "\"chosen_scores\":[0.1,0.2,0.3,0.4,0.5]}\n"
             "{\"prompt\":[1,4,5,6,7,8,9],\"chosen\":[7,2],\"rejected\":[11,12,2],\"margin\":-2,"
             "\"chosen_scores\":[0.6,0.7]}\n");
  poc_program *p = tt_program("m", path, NULL, 1, 0, 1);
  trn_data d;
  CHECK(load_capture(&d, p, path, 6, msg, sizeof msg) == 0);
  CHECK(d.n == 2 && d.n_truncated == 2);
  /* example 0: prompt 3 kept, chosen cut to 3, rejected 2 kept */
  CHECK(d.seq_len[0] == 3 && d.seq_len[1] == 3 && d.seq_len[2] == 2);
  CHECK(d.tok[d.seq_off[1]] == 7 && d.tok[d.seq_off[1] + 2] == 9);
  CHECK(d.tok[d.seq_off[2]] == 11);
  /* the per-token field follows the cut */
  CHECK_NEAR(d.tok_field[d.tf_off[0 * 2 + 1] + 2], 0.3, 0);
  CHECK_NEAR(d.ex_field[0 * 2 + 0], 0.5, 0);
  /* example 1: prompt keeps its last 5 tokens, each response 1 */
  CHECK(d.seq_len[TRN_MAX_SEQ] == 5 && d.tok[d.seq_off[TRN_MAX_SEQ]] == 5);
  CHECK(d.seq_len[TRN_MAX_SEQ + 1] == 1 && d.seq_len[TRN_MAX_SEQ + 2] == 1);
  CHECK_NEAR(d.tok_field[d.tf_off[1 * 2 + 1]], 0.6, 0);
  CHECK_NEAR(d.ex_field[1 * 2 + 0], -2, 0);
  trn_data_free(&d);
}

/* `sequence kl_response`: one more token array a line, after the data kind's own: read,
 * checked and cut to max_len like a response. */
static void test_data_extra_seq(void) {
  char path[600], msg[4096];
  snprintf(path, sizeof path, "%s/extra.jsonl", dir);
  write_text(path,
             "{\"prompt\":[1,5,6],\"chosen\":[7,2],\"rejected\":[11,2],\"kl\":[8,9,10,2],"
             "\"margin\":0,\"chosen_scores\":[0.1,0.2]}\n"
             "{\"prompt\":[1,4],\"chosen\":[7,2],\"rejected\":[11,12,2],\"kl\":[3],"
             "\"margin\":0,\"chosen_scores\":[0.6,0.7]}\n");
  poc_program *p = tt_program("m", path, NULL, 1, 0, 1);
  static const char *const extra[] = {"kl"};
  p->n_extra_seqs = 1;
  p->extra_seqs = extra;
  trn_data d;
  CHECK(load_capture(&d, p, path, 5, msg, sizeof msg) == 0);
  CHECK(d.n == 2 && d.n_seq == 4);
  CHECK(trn_seq_slot(POC_DATA_PAIRS, POC_SRC_EXTRA) == 3);
  CHECK(trn_seq_slot(POC_DATA_POINTS, POC_SRC_EXTRA + 1) == 3);
  /* example 0: the prompt keeps 3, so kl keeps 5 - 3 = 2 of its 4 */
  CHECK(d.seq_len[3] == 2 && d.tok[d.seq_off[3]] == 8 && d.tok[d.seq_off[3] + 1] == 9);
  CHECK(d.seq_len[TRN_MAX_SEQ + 3] == 1 && d.tok[d.seq_off[TRN_MAX_SEQ + 3]] == 3);
  trn_data_free(&d);
  /* missing, empty, outside the vocabulary: each named with its line */
  static const struct { const char *line, *want; } bad[] = {
      {"{\"prompt\":[1],\"chosen\":[7],\"rejected\":[8],\"margin\":0,\"chosen_scores\":[0]}",
       "missing 'kl' (declared by `sequence kl`)"},
      {"{\"prompt\":[1],\"chosen\":[7],\"rejected\":[8],\"kl\":[],\"margin\":0,"
       "\"chosen_scores\":[0]}", "'kl' is empty"},
      {"{\"prompt\":[1],\"chosen\":[7],\"rejected\":[8],\"kl\":[99999],\"margin\":0,"
       "\"chosen_scores\":[0]}", "'kl'[0] = 99999 is outside the vocabulary"},
  };
  for (size_t i = 0; i < sizeof bad / sizeof *bad; i++) {
    char text[1024], want[700];
    snprintf(text, sizeof text, "%s\n", bad[i].line);
    write_text(path, text);
    CHECK_MSG(load_capture(&d, p, path, 64, msg, sizeof msg) == -1, "case %zu accepted", i);
    snprintf(want, sizeof want, "%s:1: error: %s", path, bad[i].want);
    CHECK_MSG(strstr(msg, want) != NULL, "case %zu: no '%s' in: %s", i, want, msg);
  }
  p->n_extra_seqs = 0;
  p->extra_seqs = NULL;
}

static void test_order_and_pick(void) {
  trn_data d = {0};
  d.n = 50;
  trn_order o, o2;
  trn_order_init(&o, &d, 11, 0);
  trn_order_init(&o2, &d, 11, 0);
  int seen[50] = {0}, same_as_e0 = 0;
  int64_t e0[50];
  for (int i = 0; i < 50; i++) {
    e0[i] = trn_order_at(&o, i);
    seen[e0[i]]++;
  }
  int perm = 1;
  for (int i = 0; i < 50; i++) perm &= seen[i] == 1;
  CHECK(perm);
  for (int i = 0; i < 50; i++) same_as_e0 += trn_order_at(&o, 50 + i) == e0[i];
  CHECK(same_as_e0 < 50);            /* a fresh order each epoch */
  CHECK(trn_order_at(&o2, 73) == trn_order_at(&o, 73)); /* random access = sequential */
  CHECK(trn_order_at(&o2, 4) == e0[4]);
  trn_order_free(&o);
  trn_order_free(&o2);
  /* train.order = sequential: the file's order, every epoch */
  trn_order_init(&o, &d, 11, 1);
  int in_order = 1;
  for (int i = 0; i < 120; i++) in_order &= trn_order_at(&o, i) == i % 50;
  CHECK(in_order);
  trn_order_free(&o);

  unsigned char m1[20], m2[20];
  poc_pick(5, 1, 42, 20, 7, m1);
  poc_pick(5, 1, 42, 20, 7, m2);
  int ones = 0;
  for (int i = 0; i < 20; i++) ones += m1[i];
  CHECK(ones == 7 && !memcmp(m1, m2, 20));
  poc_pick(5, 1, 43, 20, 7, m2);
  CHECK(memcmp(m1, m2, 20) != 0);
  poc_pick(5, 0, 42, 3, 9, m2);
  CHECK(m2[0] && m2[1] && m2[2]);
}

static int file_exists(const char *p) {
  struct stat st;
  return stat(p, &st) == 0;
}

static void test_ckpt(void) {
  poc_config c = tt_config();
  poc_layout lay;
  char err[POC_ERR_LEN], out[600], got[700], p[800];
  poc_layout_init(&lay, &c, err);
  size_t n = lay.n_params;
  float *w = malloc(n * 4), *m = malloc(n * 4), *v = malloc(n * 4);
  poc_rng r;
  poc_rng_seed(&r, 8);
  for (size_t i = 0; i < n; i++) {
    w[i] = (float)poc_rng_uniform(&r);
    m[i] = (float)(poc_rng_uniform(&r) * 1e-3);
    v[i] = (float)(poc_rng_uniform(&r) * 1e-7);
  }
  snprintf(out, sizeof out, "%s/run", dir);
  mkdir(out, 0777);
  poc_program *prog = tt_program("m", "d", NULL, 1, 0, 1);
  trn_ckmodel cm = {"policy", &lay, w, m, v, NULL, NULL, 0, n, 0, 0};
  trn_state st = {.step = 7, .total = 20, .pos = 56, .epoch = 3.5, .seed = 12345678901234567ULL,
                  .program_hash = 0xfeedbeefcafe1234ULL, .n_knobs = 1, .knobs = {0.25}};
  CHECK(trn_ckpt_latest(out, got, sizeof got) == -1);
  CHECK(trn_ckpt_write(out, &st, prog, &cm, 1, err) == 0);
  st.step = 3;
  CHECK(trn_ckpt_write(out, &st, prog, &cm, 1, err) == 0);
  snprintf(p, sizeof p, "%s/.tmp-ckpt-7", out);
  CHECK(!file_exists(p));
  /* a half-written temporary folder and a folder missing files are ignored */
  snprintf(p, sizeof p, "%s/.tmp-ckpt-9", out);
  mkdir(p, 0777);
  snprintf(p, sizeof p, "%s/.tmp-ckpt-9/state.json", out);
  write_text(p, "{\"step\": 9}");
  snprintf(p, sizeof p, "%s/ckpt-8", out);
  mkdir(p, 0777);
  snprintf(p, sizeof p, "%s/ckpt-8/state.json", out);
  write_text(p, "{\"step\": 8}");
  snprintf(p, sizeof p, "%s/ckpt-x", out);
  mkdir(p, 0777);
  CHECK(trn_ckpt_latest(out, got, sizeof got) == 7);
  snprintf(p, sizeof p, "%s/ckpt-7", out);
  CHECK(!strcmp(got, p));
  float *w2 = calloc(n, 4), *m2 = calloc(n, 4), *v2 = calloc(n, 4);
  trn_ckmodel cm2 = {"policy", &lay, w2, m2, v2, NULL, NULL, 0, n, 0, 0};
  trn_state s2;
  CHECK(trn_ckpt_load(got, 7, &s2, prog, &cm2, 1, err) == 0);
  CHECK(s2.step == 7 && s2.total == 20 && s2.pos == 56 && s2.seed == 12345678901234567ULL);
  CHECK(s2.program_hash == 0xfeedbeefcafe1234ULL);
  CHECK(s2.knobs[0] == 0.25);
  CHECK(!memcmp(w, w2, n * 4) && !memcmp(m, m2, n * 4) && !memcmp(v, v2, n * 4));
  /* rewriting the same step replaces it whole */
  w[0] = 42;
  st.step = 7;
  CHECK(trn_ckpt_write(out, &st, prog, &cm, 1, err) == 0);
  CHECK(trn_ckpt_load(got, 7, &s2, prog, &cm2, 1, err) == 0);
  CHECK(w2[0] == 42);
  /* no checkpoint is ever written with a non-finite value */
  w[3] = NAN;
  st.step = 9;
  CHECK(trn_ckpt_write(out, &st, prog, &cm, 1, err) == -1 && strstr(err, "non-finite weight"));
  snprintf(p, sizeof p, "%s/ckpt-9", out);
  CHECK(!file_exists(p));
  w[3] = 0;
  /* state.json naming another step than its folder is damage */
  CHECK(trn_ckpt_load(got, 8, &s2, prog, &cm2, 1, err) == -1 && strstr(err, "'step'"));
  /* a write that cannot happen (the run folder is a file) fails cleanly */
  snprintf(p, sizeof p, "%s/notadir", dir);
  write_text(p, "x");
  CHECK(trn_ckpt_write(p, &st, prog, &cm, 1, err) == -1);
  CHECK(strstr(err, "cannot create") != NULL);
  free(w), free(m), free(v), free(w2), free(m2), free(v2);
  poc_layout_free(&lay);
}

static void test_metrics(void) {
  char path[600], err[POC_ERR_LEN], buf[1024];
  snprintf(path, sizeof path, "%s/metrics.jsonl", dir);
  write_text(path, "{\"step\":0,\"eval/accuracy\":0.1}\n{\"step\":1,\"loss\":2}\n"
                   "{\"step\":2,\"loss\":1}\n{\"step\":3,\"loss\":0.5}\n");
  CHECK(trn_metrics_truncate(path, 2, err) == 0);
  FILE *f = fopen(path, "r");
  size_t n = fread(buf, 1, sizeof buf - 1, f);
  buf[n] = 0;
  fclose(f);
  CHECK(!strcmp(buf, "{\"step\":0,\"eval/accuracy\":0.1}\n{\"step\":1,\"loss\":2}\n"
                     "{\"step\":2,\"loss\":1}\n"));
  CHECK(trn_metrics_append(path, "{\"step\":3}", err) == 0);
  /* a last line without its newline was torn by a crash: dropped, even if it parses */
  write_text(path, "{\"step\":1,\"loss\":2}\n{\"step\":2}");
  CHECK(trn_metrics_truncate(path, 5, err) == 0);
  f = fopen(path, "r");
  n = fread(buf, 1, sizeof buf - 1, f);
  buf[n] = 0;
  fclose(f);
  CHECK(!strcmp(buf, "{\"step\":1,\"loss\":2}\n"));
  /* JSONL lines: one value, no duplicate keys */
  char why[160];
  cJSON *j = trn_json_line("{\"a\":1} \r\n", why, sizeof why);
  CHECK(j != NULL);
  cJSON_Delete(j);
  CHECK(!trn_json_line("{\"a\":1}{\"a\":2}\n", why, sizeof why) && strstr(why, "column 8"));
  CHECK(!trn_json_line("{\"a\":1,\"b\":{\"c\":1,\"c\":2}}", why, sizeof why) &&
        strstr(why, "duplicate key 'c'"));
  char t[32];
  trn_fmt_thousands(t, sizeof t, 5120);
  CHECK(!strcmp(t, "5,120"));
  trn_fmt_thousands(t, sizeof t, 1234567.4);
  CHECK(!strcmp(t, "1,234,567"));
  trn_fmt_thousands(t, sizeof t, 12);
  CHECK(!strcmp(t, "12"));
}

int main(void) {
  snprintf(dir, sizeof dir, "%s/poc-train-units-XXXXXX", getenv("TMPDIR") ? getenv("TMPDIR") : "/tmp");
  if (!mkdtemp(dir)) return 1;
  test_schedule();
  test_adamw();
  test_data_errors();
  test_data_truncation();
  test_data_extra_seq();
  test_order_and_pick();
  test_ckpt();
  test_metrics();
  char cmd[700];
  snprintf(cmd, sizeof cmd, "rm -rf '%s'", dir);
  if (system(cmd)) fprintf(stderr, "could not remove %s\n", dir);
  return check_summary("train_units");
}
