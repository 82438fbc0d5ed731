#!/usr/bin/env python3
"""examples/dpo.po against TRL's own DPOTrainer: 10 optimizer steps from the same weights
(examples/tiny), on the same examples in the same order, with the same settings; per step,
the loss, the gradient norm, the learning rate and TRL's reward and log-prob metrics must
agree.

How the two runs are made the same (docs/trl.md says it for users):

  settings   poc runs first, with --set overrides (beta, lr, AdamW, weight decay, steps,
             order); TRL's DPOConfig is then built from the run's own OUT/train.json and
             the knobs its checkpoint records, so both read one set of numbers:
             lr → learning_rate, schedule → lr_scheduler_type (constant:
             constant_with_warmup), warmup → warmup_steps (both a ratio when < 1),
             steps → max_steps, batch / micro_batch → per_device_train_batch_size =
             micro_batch and gradient_accumulation_steps = batch / micro_batch,
             adam_beta1/2, adam_eps, weight_decay (both skip the 1-D norm gains), clip →
             max_grad_norm, max_len → max_length.
  data       poc's pairs are token ids; TRL tokenizes text, so the test gives it a
             one-character-per-token tokenizer over the 32 ids (no special tokens added)
             and the data as those characters: TRL's own preparation turns them back into
             the same ids. Every response already ends with EOS (id 2), so TRL appends
             none, and every prompt starts with BOS (id 1), which neither side adds.
             No example reaches max_len, so neither truncates (their policies differ).
  order      poc with train.order = sequential, TRL with train_sampling_strategy = "sequential":
             both take lines 1-16 for step 1, 17-32 for step 2, ...
  reference  poc computes the reference log-probs once before training (hoisting), TRL
             with a frozen copy each step (precompute_ref_log_probs off): both from the
             initial weights in fp32.
  numerics   poc on the CPU float device (fp32, deterministic); TRL on the CPU in fp32
             with eager attention, one thread.

What is compared, per step (TRL's log_history against poc's metrics.jsonl):

  learning_rate / lr          to 2 ulp: both are transformers' schedule in double (the
                              last bit may go in metrics.jsonl's printing)
  loss, grad_norm             relative 1e-4 (TRL's grad_norm is clip_grad_norm_'s total
                              norm before clipping, poc's too)
  rewards/*, logps/*          1e-4 · max(1, |value|)
  rewards/accuracies          exactly (fractions of the 16 pairs; no pair of this run is
                              within rounding of a tie)

Why 1e-4: both sides compute in fp32 but add in different orders (packed sequences
against padded ones, poc's fused loss head against TRL's chunked one, RoPE angles in
double against fp32). On these examples each side's summed log-probs differ from a
float64 evaluation of the same model by up to 3e-5 per sequence, so already the first
step, from identical weights, differs by up to 6e-6 (gradient norm). AdamW divides each
gradient by its running RMS, so such differences become lr-sized weight differences;
over the ten steps the largest difference measured is 1.5e-5. A real mismatch moves the
metrics far more: leaving out the weight decay by up to 9e-4, adam_eps 1e-8 instead of
1e-6 by 2e-3, β 0.21 instead of 0.2 by 6e-2, a schedule one step late by 0.5.

usage: dpo_parity.py --poc POC --root REPO --scratch DIR
"""
import argparse
import json
import math
import os
import shutil
import subprocess
import sys

sys.dont_write_bytecode = True  # nothing written into the source tree
sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
from pycheck import check, finish, need  # noqa: E402

STEPS = 10
# Non-default values, so a setting that does not reach one side shows.
POC_SETS = ["beta=0.2", "train.lr=3e-4", "train.schedule=cosine", "train.warmup=0.12",
            "train.steps=%d" % STEPS, "train.batch=16", "train.micro_batch=8",
            "train.adam_beta1=0.85", "train.adam_beta2=0.95", "train.adam_eps=1e-6",
            "train.weight_decay=0.1", "train.clip=1.0", "train.order=sequential",
            "train.log_every=1"]
HF_SCHEDULE = {"cosine": "cosine", "linear": "linear", "constant": "constant_with_warmup"}
RTOL = 1e-4
LR_RTOL = 5e-16
EOS, BOS = 2, 1


def tok_char(i):
    # one character per token id, outside ASCII so no normaliser or splitter touches it
    return chr(0x100 + i)


def char_tokenizer(vocab_size):
    """A tokenizers WordLevel model over single characters: id i <-> tok_char(i). It adds
    no special tokens, so TRL's prompt/chosen/rejected ids are exactly the data's."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast
    vocab = {tok_char(i): i for i in range(vocab_size)}
    t = Tokenizer(models.WordLevel(vocab=vocab, unk_token=tok_char(0)))
    t.pre_tokenizer = pre_tokenizers.Split(pattern="", behavior="isolated")
    return PreTrainedTokenizerFast(tokenizer_object=t, bos_token=tok_char(BOS),
                                   eos_token=tok_char(EOS), pad_token=tok_char(0),
                                   unk_token=tok_char(0))


def run_poc(a, out):
    binary = os.path.join(a.scratch, "dpo")
    p = subprocess.run([a.poc, "build", "examples/dpo.po", "-o", binary], cwd=a.root,
                       capture_output=True, text=True, timeout=300)
    if not check(p.returncode == 0, "poc build examples/dpo.po: " + p.stderr[-2000:]):
        return None
    cmd = [binary, "--backend", "cpu", "--out", out]
    for s in POC_SETS:
        cmd += ["--set", s]
    env = dict(os.environ, OMP_NUM_THREADS="1", OMP_WAIT_POLICY="PASSIVE")
    p = subprocess.run(cmd, cwd=a.root, env=env, capture_output=True, text=True, timeout=300)
    if not check(p.returncode == 0, "the poc run exits 0: " + p.stderr[-2000:]):
        return None
    with open(os.path.join(out, "metrics.jsonl")) as f:
        steps = [json.loads(l) for l in f if l.strip()]
    with open(os.path.join(out, "train.json")) as f:
        train = json.load(f)
    with open(os.path.join(out, "ckpt-%d" % STEPS, "state.json")) as f:
        knobs = json.load(f)["knobs"]
    return [m for m in steps if "loss" in m], train, knobs


def run_trl(a, train, knobs, pairs, model_dir):
    import torch
    import transformers
    from datasets import Dataset
    from trl import DPOConfig, DPOTrainer
    transformers.logging.set_verbosity_error()
    torch.set_num_threads(1)
    with open(os.path.join(model_dir, "config.json")) as f:
        vocab = json.load(f)["vocab_size"]
    text = lambda ids: "".join(tok_char(i) for i in ids)
    ds = Dataset.from_list([{"prompt": text(r["prompt"]), "chosen": text(r["chosen"]),
                             "rejected": text(r["rejected"])} for r in pairs])
    cfg = DPOConfig(
        output_dir=os.path.join(a.scratch, "trl"), report_to=[], save_strategy="no",
        logging_steps=1, disable_tqdm=True, use_cpu=True, bf16=False, fp16=False,
        gradient_checkpointing=False, dataloader_num_workers=0, seed=int(train["seed"]),
        model_init_kwargs={"dtype": torch.float32, "attn_implementation": "eager"},
        beta=knobs["beta"], loss_type=["sigmoid"], precompute_ref_log_probs=False,
        learning_rate=train["lr"], lr_scheduler_type=HF_SCHEDULE[train["schedule"]],
        warmup_steps=train["warmup"], max_steps=train["steps"],
        per_device_train_batch_size=train["micro_batch"],
        gradient_accumulation_steps=train["batch"] // train["micro_batch"],
        adam_beta1=train["adam_beta1"], adam_beta2=train["adam_beta2"],
        adam_epsilon=train["adam_eps"], weight_decay=train["weight_decay"],
        max_grad_norm=train["clip"], max_length=train["max_len"],
        train_sampling_strategy="sequential" if train["order"] == "sequential" else "random")
    tr = DPOTrainer(model=model_dir, args=cfg, train_dataset=ds,
                    processing_class=char_tokenizer(vocab))
    # TRL's own preparation must give back the data's ids
    prepared = tr.train_dataset
    same = all(prepared[i]["prompt_ids"] == pairs[i]["prompt"] and
               prepared[i]["chosen_ids"] == pairs[i]["chosen"] and
               prepared[i]["rejected_ids"] == pairs[i]["rejected"] for i in range(len(pairs)))
    check(same, "TRL's tokenized dataset holds the data file's ids")
    tr.train()
    return [h for h in tr.state.log_history if "loss" in h and "train_runtime" not in h]


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--poc", required=True)
    ap.add_argument("--root", required=True)
    ap.add_argument("--scratch", required=True)
    a = ap.parse_args()
    why = need("torch", "transformers", "datasets", "tokenizers", "trl")
    if why:
        print("skip: " + why)
        return 77
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    shutil.rmtree(a.scratch, ignore_errors=True)
    os.makedirs(a.scratch)

    got = run_poc(a, os.path.join(a.scratch, "poc"))
    if got is None:
        return finish("trl_dpo")
    poc, train, knobs = got
    check(len(poc) == STEPS, "poc logged %d steps, want %d" % (len(poc), STEPS))

    # the examples both runs see: the first steps · batch lines of the data, in file order
    with open(os.path.join(a.root, "examples", "data", "pairs.jsonl")) as f:
        pairs = [json.loads(l) for _, l in zip(range(STEPS * train["batch"]), f)]
    check(all(r["chosen"][-1] == EOS and r["rejected"][-1] == EOS and r["prompt"][0] == BOS
              for r in pairs), "every pair has BOS first and both responses end with EOS")
    longest = max(len(r["prompt"]) + max(len(r["chosen"]), len(r["rejected"])) for r in pairs)
    check(longest <= train["max_len"], "no example reaches max_len (%d)" % longest)

    trl = run_trl(a, train, knobs, pairs, os.path.join(a.root, "examples", "tiny"))
    check(len(trl) == STEPS, "TRL logged %d steps, want %d" % (len(trl), STEPS))

    worst, table = {}, []
    for s, (p, t) in enumerate(zip(poc, trl), 1):
        table.append([])
        pairs_of = [("lr", "learning_rate", "lr"), ("loss", "loss", "rel"),
                    ("grad_norm", "grad_norm", "rel"), ("rewards/accuracies",) * 2 + ("exact",)]
        pairs_of += [(k, k, "abs") for k in ("rewards/chosen", "rewards/rejected",
                                             "rewards/margins", "logps/chosen", "logps/rejected")]
        for pk, tk, kind in pairs_of:
            if not check(pk in p and tk in t, "step %d: %s in poc's line, %s in TRL's" % (s, pk, tk)):
                continue
            x, y = float(p[pk]), float(t[tk])
            if kind == "lr":
                ok = abs(x - y) <= LR_RTOL * max(abs(x), abs(y))
                err = abs(x - y) / max(abs(y), 1e-300)
            elif kind == "rel":
                err = abs(x - y) / max(abs(y), 1e-300)
                ok = err <= RTOL
            elif kind == "abs":
                err = abs(x - y) / max(1.0, abs(y))
                ok = err <= RTOL
            else:
                err = abs(x - y)
                ok = x == y
            worst[pk] = max(worst.get(pk, 0.0), err)
            table[-1].append((pk, err))
            check(ok and math.isfinite(x), "step %d %s: poc %r, TRL %r" % (s, pk, x, y))
    print("difference per step (relative; rewards and logps to max(1, |x|); accuracies "
          "absolute):")
    if table and table[0]:
        print("  step " + " ".join("%10s" % k.split("/")[-1][:10] for k, _ in table[0]))
    for s, row in enumerate(table, 1):
        print("  %4d " % s + " ".join("%10.1e" % e for _, e in row))
    print("  max  " + " ".join("%10.1e" % worst[k] for k, _ in table[0]) if table else "")
    # the run must have moved: a check of two frozen runs would prove nothing
    check(poc and poc[-1]["rewards/margins"] != 0 and poc[-1]["loss"] < poc[0]["loss"] - 1e-3,
          "the runs train (rewards move off 0, the loss falls)")
    return finish("trl_dpo")


if __name__ == "__main__":
    sys.exit(main())
