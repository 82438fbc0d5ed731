/* test_check.c — the checker: scoping, builtins, data sequences, train keys,
 * duplicates, recursion; and the tables behind them. */
#include "fe_test.h"
#include "front.h" /* internal helpers: edit distance, did-you-mean */

#define HEAD                                   \
  "policy = model(\"m\")\n"                    \
  "ref = frozen(policy)\n"                     \
  "data = pairs(\"d\")\n"
#define POINTS                                 \
  "policy = model(\"m\")\n"                    \
  "data = points(\"d\")\n"

/* Checks `text` and asserts exactly `nerr` errors, each needle in the output. */
static void expect(const char *text, int nerr, const char *needle) {
  fe_run r = fe_compile(text, 1);
  CHECK_MSG(r.errors == nerr && (!needle || fe_has(&r, needle)),
            "%s\n--- %d errors (wanted %d with \"%s\"):\n%s", text, r.errors, nerr,
            needle ? needle : "", r.out ? r.out : "");
  fe_done(&r);
}

static void test_valid(void) {
  expect(HEAD "loss = -sum(logp(policy, chosen))\n", 0, NULL);
  expect(HEAD
         "param beta = 0.1\n"
         "def S(m, y) = sum(logp(m, y))\n"
         "def A(m, y) = mean(logp(m, y))\n"
         "sep = [2]\n"
         "w = S(policy, chosen | prompt ++ sep ++ rejected ++ sep) - S(ref, chosen)\n"
         "a = sample(policy, prompt, tokens=8, temperature=0.7, top_p=0.9)\n"
         "r = cos(logp(policy, a)[:8], sg(logp(ref, chosen))[:8])\n"
         "m = pick(rejected, 3)\n"
         "loss = -logsigmoid(beta * w) + r + sum(m * logp(policy, rejected))\n"
         "report a/b = w\n"
         "train { lr = 1e-6; schedule = linear; precision = fp32; batch = 8; micro_batch = 2 }\n",
         0, NULL);
  /* points data with a declared field; a def calling a def defined below it */
  expect(POINTS "field reward\ndef f(x) = g(x)\ndef g(x) = x * 2\n"
                "loss = f(reward - sum(logp(policy, response | prompt)))\n",
         0, NULL);
  /* a def's parameter shadows a top-level binding of the same name */
  expect(HEAD "y = 1\ndef S(m, y) = sum(logp(m, y))\nloss = -S(policy, chosen) + y\n", 0, NULL);
}

static void test_names(void) {
  expect(HEAD "loss = -sum(logp(policy, chosn))\n", 1,
         "undefined name 'chosn'; did you mean 'chosen'?");
  expect(HEAD "param beta = 1\nloss = bata\n", 1, "undefined name 'bata'; did you mean 'beta'?");
  expect(HEAD "loss = qqqqq\n", 1, "undefined name 'qqqqq'\n");
  expect(HEAD "x = y\ny = 1\nloss = x\n", 1, "t.po:4:5: error: 'y' is used before it is defined (line 5)");
  expect(HEAD "x = x\nloss = x\n", 1, "'x' is used in its own definition");
  expect(HEAD "def S(m) = later\nlater = 1\nloss = S(policy)\n", 1,
         "'later' is used before it is defined (line 5)");
  expect(HEAD "loss = logsigmod(1)\n", 1, "unknown function 'logsigmod'; did you mean 'logsigmoid'?");
  expect(HEAD "def Score(m) = 1\nloss = Scor(policy)\n", 1,
         "unknown function 'Scor'; did you mean 'Score'?");
  expect(HEAD "x = 1\nloss = x(2)\n", 1, "'x' is not a function");
  expect(HEAD "loss = chosen(2)\n", 1, "'chosen' is not a function");
  expect(HEAD "def f(g) = g(1)\nloss = f(1)\n", 1, "'g' is a parameter of 'f', not a function");
  expect(HEAD "def f(x) = x\nloss = f\n", 1, "'f' is a def; call it as f(...)");
  expect(HEAD "loss = exp\n", 1, "'exp' is a built-in function; call it as exp(...)");
  expect(HEAD "loss = policy\n", 1, "'policy' is a model");
  expect(HEAD "loss = data\n", 1, "'data' is a data set");
  expect(HEAD "loss = \"s\"\n", 1, "a string is only allowed as the path of");
  /* names of statements lost to syntax errors are not reported again */
  expect(HEAD "x = f(1 2)\nloss = x\n", 1, "expected ')' to close '('");
}

static void test_reserved_and_duplicates(void) {
  expect(HEAD "sum = 1\nloss = 1\n", 1, "'sum' is a built-in function and cannot be redefined");
  expect(HEAD "param chosen = 1\nloss = 1\n", 1, "'chosen' is a data sequence and cannot be redefined");
  expect(HEAD "def f(exp) = 1\nloss = f(1)\n", 1, "'exp' is a built-in function");
  expect(HEAD "field loss\nloss = 1\n", 1, "'loss' is the objective and must be a binding");
  expect(HEAD "param beta = 1\nparam beta = 2\nloss = beta\n", 1,
         "t.po:5:7: error: duplicate param 'beta' (first defined at line 4)\n"
         "  param beta = 2\n"
         "        ^~~~\n"
         "t.po:4:7: note: 'beta' first defined here\n");
  expect(HEAD "x = 1\nparam x = 2\nloss = x\n", 1, "duplicate param 'x' (first defined at line 4)");
  expect(HEAD "def f(a, a) = a\nloss = f(1, 2)\n", 1, "duplicate parameter 'a' in def 'f'");
  expect(HEAD "report r = 1\nreport r = 2\nloss = 1\n", 1, "duplicate report 'r'");
  expect(HEAD "train { lr = 1 }\ntrain { lr = 1 }\nloss = 1\n", 1, "duplicate train block");
  expect(HEAD "train { lr = 1; lr = 2 }\nloss = 1\n", 1, "duplicate train key 'lr'");
  expect(HEAD "d2 = points(\"e\")\nloss = 1\n", 1, "a file declares one data set");
  expect(HEAD "loss = 1\n", 0, NULL);
  expect("policy = model(\"m\")\nloss = 1\n", 1, "t.po: error: no data set");
  expect(HEAD "x = 1\n", 1, "t.po: error: no objective");
}

static void test_calls(void) {
  expect(HEAD "loss = sum(logp(policy, chosen, rejected))\n", 1, "'logp' takes 2 arguments, got 3");
  expect(HEAD "loss = max(1, 2, 3)\n", 1, "'max' takes 1 or 2 arguments, got 3");
  expect(HEAD "loss = clamp(1)\n", 1, "'clamp' takes 3 arguments, got 1");
  expect(HEAD "loss = sum()\n", 1, "'sum' takes 1 argument, got 0");
  expect(HEAD "def f(a, b) = a\nloss = f(1)\n", 1, "'f' takes 2 arguments, got 1");
  expect(HEAD "a = sample(policy, prompt, temprature=1)\nloss = 1\n", 1,
         "unknown keyword argument 'temprature' for 'sample'; did you mean 'temperature'?");
  expect(HEAD "a = sample(policy, prompt, tokens=1, tokens=2)\nloss = 1\n", 1,
         "duplicate keyword argument 'tokens'");
  expect(HEAD "a = sample(policy, tokens=1, prompt)\nloss = 1\n", 1,
         "positional argument after keyword arguments");
  expect(HEAD "loss = exp(1, base=2)\n", 1, "'exp' takes no keyword arguments");
  /* LoRA: model(...) keywords point at lora(...); lora's arguments are checked */
  expect("policy = model(\"m\", lora_rank=8, lora_alpha=16, lora_dropout=0.05)\ndata = pairs(\"d\")\nloss = 1\n",
         1, "'model' takes no LoRA settings; write lora(model(\"DIR\")");
  expect("policy = lora(model(\"m\"), r=16, alpha=32, dropout=0.05, targets=[q, k, v, o, gate, up, down])\n"
         "ref = frozen(policy)\ndata = pairs(\"d\")\nloss = sum(logp(policy, chosen)) - sum(logp(ref, chosen))\n",
         0, NULL);
  expect("policy = lora(model(\"m\"))\ndata = pairs(\"d\")\nloss = sum(logp(policy, chosen))\n", 0, NULL);
  expect("policy = lora(model(\"m\"), adapter=\"a\")\ndata = pairs(\"d\")\nloss = 1\n", 0, NULL);
  expect("policy = lora(model(\"m\"), r=0)\ndata = pairs(\"d\")\nloss = 1\n", 1,
         "'r' (the adapters' rank) must be a whole number from 1 to 65536, not 0");
  expect("policy = lora(model(\"m\"), r=2.5)\ndata = pairs(\"d\")\nloss = 1\n", 1,
         "'r' (the adapters' rank) must be a whole number");
  expect("policy = lora(model(\"m\"), alpha=-1)\ndata = pairs(\"d\")\nloss = 1\n", 1,
         "'alpha' must be a positive number");
  expect("policy = lora(model(\"m\"), dropout=1)\ndata = pairs(\"d\")\nloss = 1\n", 1,
         "'dropout' must be in [0, 1), not 1");
  expect("policy = lora(model(\"m\"), targets=[q, gat])\ndata = pairs(\"d\")\nloss = 1\n", 1,
         "unknown LoRA target 'gat' (one of q, k, v, o, gate, up, down); did you mean 'gate'?");
  expect("policy = lora(model(\"m\"), targets=[q, q])\ndata = pairs(\"d\")\nloss = 1\n", 1,
         "LoRA target 'q' is listed twice");
  expect("policy = lora(model(\"m\"), targets=q)\ndata = pairs(\"d\")\nloss = 1\n", 1,
         "'targets' takes a list of projections");
  expect("policy = lora(model(\"m\"), rank=8)\ndata = pairs(\"d\")\nloss = 1\n", 1,
         "unknown keyword argument 'rank' for 'lora'");
  expect("policy = lora(model(\"m\"), adapter=3)\ndata = pairs(\"d\")\nloss = 1\n", 1,
         "'adapter' takes the path of a PEFT adapter folder in quotes");
  expect("policy = lora(\"m\")\ndata = pairs(\"d\")\nloss = 1\n", 1,
         "'lora' takes a model declaration");
  expect("base = model(\"m\")\npolicy = lora(base)\ndata = pairs(\"d\")\nloss = 1\n", 1,
         "'lora' takes a model declaration");
  expect(HEAD "loss = sum(lora(model(\"m\")))\n", 1, "'lora' can only be the whole value of a binding");
  expect(HEAD "x = [q, v]\nloss = 1\n", 1, "a list of names is only allowed as lora's targets");
  expect(HEAD "loss = sum(model(\"x\"))\n", 1, "'model' can only be the whole value of a binding");
  expect(HEAD "m2 = model(x)\nloss = 1\n", 1, "'model' takes a path in quotes");
  expect(HEAD "r2 = frozen(data)\nloss = 1\n", 1, "'frozen' takes the name of a model");
  expect(HEAD "r2 = frozen(ref)\nloss = 1\n", 1, "'frozen' takes the name of a model");
  expect(HEAD "loss = sum(logp(chosen, chosen))\n", 1, "the first argument of 'logp' must be a model");
  expect(HEAD "loss = sum(logp(polcy, chosen))\n", 1, "undefined name 'polcy'; did you mean 'policy'?");
  /* conditioning only where a context belongs */
  expect(HEAD "loss = sum(entropy(policy, chosen | prompt))\n", 0, NULL);
  expect(HEAD "loss = sum(chosen | prompt)\n", 1,
         "'|' (conditioning) is only allowed in the second argument of logp, entropy or logsumsq");
  expect(HEAD "loss = chosen | prompt\n", 1, "'|' (conditioning) is only allowed");
  expect(HEAD "a = sample(policy, prompt | chosen)\nloss = 1\n", 1, "'|' (conditioning) is only allowed");
  expect(HEAD "loss = sum(pick(chosen, 2 | 3))\n", 1, "'|' (conditioning) is only allowed");
}

static void test_sequences(void) {
  expect(POINTS "loss = sum(logp(policy, chosen))\n", 1,
         "'chosen' is not a sequence of points data (it has prompt, response)");
  expect(HEAD "loss = sum(logp(policy, response))\n", 1,
         "'response' is not a sequence of pairs data (it has prompt, chosen, rejected)");
  expect(HEAD "field s[chosen]\nloss = sum(s)\n", 0, NULL);
  expect(HEAD "field s[response]\nloss = 1\n", 1, "'response' is not a sequence of pairs data");
  expect(HEAD "field s[rejectd]\nloss = 1\n", 1, "unknown sequence 'rejectd'; did you mean 'rejected'?");
  expect(HEAD "field s[zz]\nloss = 1\n", 1, "unknown sequence 'zz' (pairs data has prompt, chosen, rejected)");
  expect(POINTS "loss = reward\n", 1, "undefined name 'reward'");
}

static void test_params_and_train(void) {
  expect(HEAD "param a = -0.5\nparam b = 1/3\nparam c = (1 + 2) * -3\nloss = a + b + c\n", 0, NULL);
  expect(HEAD "param a = 1\nparam b = a\nloss = b\n", 1, "a param's value must be a constant number");
  expect(HEAD "param b = [1]\nloss = b\n", 1, "a param's value must be a constant number");
  expect(HEAD "loss = 1\ntrain { lrr = 1 }\n", 1, "unknown train key 'lrr'; did you mean 'lr'?");
  expect(HEAD "loss = 1\ntrain { foo = 1 }\n", 1, "unknown train key 'foo'\n");
  expect(HEAD "loss = 1\ntrain { schedule = cosin }\n", 1, "unknown schedule 'cosin'; did you mean 'cosine'?");
  expect(HEAD "loss = 1\ntrain { on_nonfinite = skp }\n", 1, "unknown on_nonfinite 'skp'; did you mean 'skip'?");
  expect(HEAD "loss = 1\ntrain { on_nonfinite = 1 }\n", 1, "train key 'on_nonfinite' takes one of stop or skip");
  expect(HEAD "loss = 1\ntrain { ckpt_minutes = -1 }\n", 1, "train key 'ckpt_minutes' must be at least 0");
  expect(HEAD "loss = 1\ntrain { on_nonfinite = skip; ckpt_minutes = 2.5 }\n", 0, NULL);
  expect(HEAD "loss = 1\ntrain { order = sequential }\n", 0, NULL);
  expect(HEAD "loss = 1\ntrain { order = sequentil }\n", 1, "unknown order 'sequentil'; did you mean 'sequential'?");
  expect(HEAD "loss = 1\ntrain { order = 0 }\n", 1, "train key 'order' takes one of shuffle or sequential");
  expect(HEAD "loss = 1\ntrain { schedule = 1 }\n", 1,
         "train key 'schedule' takes one of cosine, linear or constant");
  expect(HEAD "loss = 1\ntrain { precision = fp8 }\n", 1, "unknown precision 'fp8'");
  expect(HEAD "loss = 1\ntrain { lr = cosine }\n", 1, "train key 'lr' takes a number");
  expect(HEAD "loss = 1\ntrain { lr = -1 }\n", 1, "train key 'lr' must be greater than 0, got -1");
  expect(HEAD "loss = 1\ntrain { batch = 0.5 }\n", 1, "train key 'batch' must be a whole number of at least 1");
  expect(HEAD "loss = 1\ntrain { adam_beta1 = 1.5 }\n", 1, "train key 'adam_beta1' must be in [0, 1)");
  expect(HEAD "loss = 1\ntrain { batch = 10; micro_batch = 4 }\n", 1,
         "batch (10) must be a multiple of micro_batch (4)");
  expect(HEAD "loss = 1\ntrain { lr = 1e-4 * 2; warmup = 0; clip = 0; seed = 0; steps = 5 }\n", 0, NULL);
  /* huge values are range errors, not undefined conversions (found by fuzzing) */
  expect(HEAD "loss = 1\ntrain { batch = 128; micro_batch = 3444444444444444444444444444444 }\n", 1,
         "train key 'micro_batch' must be a whole number of at least 1, got 3.44444e+30");
  expect(HEAD "loss = 1\ntrain { batch = 1e300 * 1e300 }\n", 1, "got inf");
  expect(HEAD "param p = 1/0\nloss = p\n", 1, "the value of param 'p' is not a finite number");
}

static void test_recursion(void) {
  expect(HEAD "def f(x) = g(x)\ndef g(x) = f(x)\nloss = f(1)\n", 1, "recursive def 'f' (f -> g -> f)");
  expect(HEAD "def f(x) = f(x)\nloss = f(1)\n", 1, "recursive def 'f' (f -> f)");
  expect(HEAD "def a(x) = b(x) + c(x)\ndef b(x) = c(x)\ndef c(x) = x\nloss = a(1)\n", 0, NULL);
  /* two separate cycles, both reported */
  expect(HEAD "def f(x) = f(x)\ndef g(x) = h(x)\ndef h(x) = g(x)\nloss = 1\n", 2, "(g -> h -> g)");
}

static void test_cap(void) {
  char text[4000] = HEAD;
  for (int i = 0; i < 30; i++) sprintf(text + strlen(text), "v%d = u%d\n", i, i);
  strcat(text, "loss = 1\n");
  fe_run r = fe_compile(text, 1);
  CHECK(r.errors > PO_MAX_PRINTED_ERRORS);
  CHECK(fe_has(&r, "too many errors, stopping\n"));
  /* exactly PO_MAX_PRINTED_ERRORS errors were printed */
  int printed = 0;
  for (const char *p = r.out; (p = strstr(p, ": error: ")); p++) printed++;
  CHECK(printed == PO_MAX_PRINTED_ERRORS);
  fe_done(&r);
}

static void test_tables(void) {
  CHECK(po_builtin_lookup("logp") == PO_B_LOGP);
  CHECK(po_builtin_lookup("batch_std") == PO_B_BATCH_STD);
  CHECK(po_builtin_lookup("nope") == PO_B_NONE);
  CHECK(po_builtin_lookup(NULL) == PO_B_NONE);
  CHECK(po_builtin_get(PO_B_NONE) == NULL && po_builtin_get(PO_B_COUNT) == NULL);
  const po_builtin_info *mx = po_builtin_get(PO_B_TMAX);
  CHECK(mx && !strcmp(mx->name, "max") && mx->min_args == 1 && mx->max_args == 2 &&
        mx->kind == PO_BK_TOKR && !mx->kwargs);
  const po_builtin_info *sm = po_builtin_get(PO_B_SAMPLE);
  CHECK(sm->kind == PO_BK_MODEL && sm->kwargs && !strcmp(sm->kwargs[0], "tokens") &&
        !strcmp(sm->kwargs[2], "top_p") && !sm->kwargs[3]);
  CHECK(po_builtin_get(PO_B_MODEL_DECL)->kwargs && po_builtin_get(PO_B_MODEL_DECL)->kind == PO_BK_DECL);
  /* every builtin round-trips through its name */
  for (int b = PO_B_NONE + 1; b < PO_B_COUNT; b++)
    CHECK(po_builtin_lookup(po_builtin_get((po_builtin)b)->name) == (po_builtin)b);
  int nkeys = 0, has_schedule = 0, has_order = 0;
  for (const po_train_key *k = po_train_keys(); k->key; k++, nkeys++) {
    CHECK(k->doc && k->doc[0]);
    if (!strcmp(k->key, "schedule"))
      has_schedule = k->type == PO_TK_NAME && !strcmp(k->choices[0], "cosine");
    if (!strcmp(k->key, "order"))
      has_order = k->type == PO_TK_NAME && !strcmp(k->choices[0], "shuffle") &&
                  !strcmp(k->choices[1], "sequential") && !k->choices[2];
  }
  CHECK(nkeys == 22 && has_schedule && has_order);

  fe_run r = fe_compile(HEAD "param beta = 1\ndef S(m) = 1\nfield f\nsequence q\nloss = 1\n"
                             "report loss = 2\n", 1);
  CHECK(r.errors == 0);
  const po_stmt *s = po_program_find(r.prog, "beta");
  CHECK(s && s->kind == PO_S_PARAM);
  CHECK(po_program_find(r.prog, "S")->kind == PO_S_DEF);
  CHECK(po_program_find(r.prog, "f")->kind == PO_S_FIELD);
  CHECK(po_program_find(r.prog, "q")->kind == PO_S_SEQ);
  CHECK(po_program_find(r.prog, "loss")->kind == PO_S_LET); /* not the report */
  CHECK(po_program_find(r.prog, "nothing") == NULL);
  fe_done(&r);
}

static void test_diag_format(void) {
  /* tabs are copied into the caret line; tildes span the construct */
  fe_run r = fe_compile(HEAD "\tloss =\tsum(\tchosn)\n", 1);
  CHECK(fe_has(&r, "t.po:4:14: error: undefined name 'chosn'; did you mean 'chosen'?\n"
                   "  \tloss =\tsum(\tchosn)\n"
                   "  \t      \t    \t^~~~~\n"));
  fe_done(&r);
  /* an error at end of file points just past the last token */
  r = fe_compile("x = (1 +", 0);
  CHECK(fe_has(&r, "t.po:1:9: error: expected an expression, got end of file\n"
                   "  x = (1 +\n"
                   "          ^\n"));
  fe_done(&r);
  /* CR of a CRLF line is not echoed */
  r = fe_compile("x = 1 @\r\n", 0);
  CHECK(fe_has(&r, "  x = 1 @\n"));
  fe_done(&r);
  /* edit distance */
  CHECK(po_edit_distance("kitten", "sitting", 5) == 3);
  CHECK(po_edit_distance("abc", "abc", 1) == 0);
  CHECK(po_edit_distance("abc", "xyzxyz", 2) == 3);
  const char *cands[] = {"logsigmoid", "sigmoid", "softplus"};
  CHECK(!strcmp(po_did_you_mean("logsigmod", cands, 3), "logsigmoid"));
  CHECK(po_did_you_mean("xy", cands, 3) == NULL);
}

int main(void) {
  test_valid();
  test_names();
  test_reserved_and_duplicates();
  test_calls();
  test_sequences();
  test_params_and_train();
  test_recursion();
  test_cap();
  test_tables();
  test_diag_format();
  po_release_all();
  return check_summary("dsl_check");
}
