/* builtins.c — the language's vocabulary: built-in functions with their arity and
 * keyword arguments, the keys of a train block, and the did-you-mean helper. */
#include <string.h>

#include "front.h"

static const char *const sample_kwargs[] = {"tokens", "temperature", "top_p", NULL};
/* model(...) accepts these only to point them at lora(...) (dsl/check.c) */
static const char *const model_kwargs[] = {"lora_rank", "lora_alpha", "lora_dropout", NULL};
static const char *const lora_kwargs[] = {"r", "alpha", "dropout", "targets", "adapter", NULL};
/* lora's target names, short for the projections q_proj ... down_proj */
static const char *const lora_targets[] = {"q", "k", "v", "o", "gate", "up", "down", NULL};

const char *const *po_lora_targets(void) { return lora_targets; }

static const po_builtin_info builtins[PO_B_COUNT] = {
#define PO_X_INFO(id, nm, lo, hi, k) [PO_B_##id] = {nm, lo, hi, PO_BK_##k, NULL},
    PO_BUILTINS(PO_X_INFO)
#undef PO_X_INFO
};

const po_builtin_info *po_builtin_get(po_builtin b) {
  if (b <= PO_B_NONE || b >= PO_B_COUNT) return NULL;
  /* the keyword lists are attached here so the X-macro table stays one line each */
  static po_builtin_info table[PO_B_COUNT];
  static int ready;
  if (!ready) {
    memcpy(table, builtins, sizeof table);
    table[PO_B_SAMPLE].kwargs = sample_kwargs;
    table[PO_B_MODEL_DECL].kwargs = model_kwargs;
    table[PO_B_LORA].kwargs = lora_kwargs;
    ready = 1;
  }
  return &table[b];
}

po_builtin po_builtin_lookup(const char *name) {
  if (!name) return PO_B_NONE;
  for (int b = PO_B_NONE + 1; b < PO_B_COUNT; b++)
    if (!strcmp(builtins[b].name, name)) return (po_builtin)b;
  return PO_B_NONE;
}

static const char *const schedules[] = {"cosine", "linear", "constant", NULL};
static const char *const precisions[] = {"fp32", "bf16", NULL};
static const char *const nonfinite[] = {"stop", "skip", NULL};
static const char *const orders[] = {"shuffle", "sequential", NULL};

static const po_train_key train_keys[] = {
    {"lr", PO_TK_NUMBER, NULL, "peak learning rate"},
    {"schedule", PO_TK_NAME, schedules, "learning-rate schedule after warmup"},
    {"warmup", PO_TK_NUMBER, NULL, "warmup length: a fraction of all steps if < 1, else steps"},
    {"batch", PO_TK_NUMBER, NULL, "examples per optimizer step, over all ranks"},
    {"micro_batch", PO_TK_NUMBER, NULL, "examples per forward/backward pass on one rank"},
    {"epochs", PO_TK_NUMBER, NULL, "passes over the data set"},
    {"max_len", PO_TK_NUMBER, NULL, "longest prompt + response in tokens; longer ones are cut"},
    {"clip", PO_TK_NUMBER, NULL, "global gradient-norm clip (0: off)"},
    {"precision", PO_TK_NAME, precisions, "weights and activations on the GPU"},
    {"seed", PO_TK_NUMBER, NULL, "seed of every random draw (data order, pick, sample)"},
    {"weight_decay", PO_TK_NUMBER, NULL, "AdamW decoupled weight decay"},
    {"adam_beta1", PO_TK_NUMBER, NULL, "AdamW first-moment decay"},
    {"adam_beta2", PO_TK_NUMBER, NULL, "AdamW second-moment decay"},
    {"adam_eps", PO_TK_NUMBER, NULL, "AdamW denominator epsilon"},
    {"log_every", PO_TK_NUMBER, NULL, "steps between metric lines"},
    {"ckpt_every", PO_TK_NUMBER, NULL, "steps between checkpoints (default 500; 0: no step trigger)"},
    {"ckpt_minutes", PO_TK_NUMBER, NULL, "minutes between checkpoints (default 10; 0: off)"},
    {"on_nonfinite", PO_TK_NAME, nonfinite, "a step with a non-finite loss or gradient: stop or skip"},
    {"eval_every", PO_TK_NUMBER, NULL, "steps between evaluations on the prompts() set"},
    {"eval_tokens", PO_TK_NUMBER, NULL, "tokens generated per evaluation prompt"},
    {"steps", PO_TK_NUMBER, NULL, "cap on optimizer steps (default: epochs over the data)"},
    {"order", PO_TK_NAME, orders, "data order: a fresh shuffle each epoch, or the file's"},
    {NULL, PO_TK_NUMBER, NULL, NULL},
};

const po_train_key *po_train_keys(void) { return train_keys; }

/* Levenshtein distance with a band: rows stop early once every entry exceeds cap. */
int po_edit_distance(const char *a, const char *b, int cap) {
  int la = (int)strlen(a), lb = (int)strlen(b);
  if (la - lb > cap || lb - la > cap) return cap + 1;
  if (la > PO_MAX_NAME_LEN || lb > PO_MAX_NAME_LEN) return cap + 1;
  int prev[PO_MAX_NAME_LEN + 1], cur[PO_MAX_NAME_LEN + 1];
  for (int j = 0; j <= lb; j++) prev[j] = j;
  for (int i = 1; i <= la; i++) {
    cur[0] = i;
    int best = cur[0];
    for (int j = 1; j <= lb; j++) {
      int sub = prev[j - 1] + (a[i - 1] != b[j - 1]);
      int del = prev[j] + 1, ins = cur[j - 1] + 1;
      int v = sub < del ? sub : del;
      cur[j] = v < ins ? v : ins;
      if (cur[j] < best) best = cur[j];
    }
    if (best > cap) return cap + 1;
    memcpy(prev, cur, sizeof(int) * (size_t)(lb + 1));
  }
  return prev[lb] > cap ? cap + 1 : prev[lb];
}

/* Close enough: at most a third of the name's letters wrong (at least one, at most 3),
 * and never a suggestion that would replace the whole name. */
const char *po_did_you_mean(const char *name, const char *const *cands, int ncands) {
  int len = (int)strlen(name);
  int cap = len / 3;
  if (cap < 1) cap = 1;
  if (cap > 3) cap = 3;
  const char *best = NULL;
  int bestd = cap + 1;
  for (int i = 0; i < ncands; i++) {
    if (!cands[i] || !strcmp(cands[i], name)) continue;
    int d = po_edit_distance(name, cands[i], cap);
    if (d < bestd && d < (int)strlen(cands[i]) && d < len) {
      bestd = d;
      best = cands[i];
    }
  }
  return best;
}
