#!/usr/bin/env python3
"""examples/trl/dpo_sigmoid_wpo.po built and trained: `poc build`, then two optimizer steps
on the bundled model and data with the fused loss head and with the textbook one
(--unfused-head), which must log the same losses and reports (each step's weights come
from logsumsq, computed by the head). Every TRL metric the example reports is logged and
finite. At the first step the policy is the reference, so the loss is log 2 times the
batch mean of w(y+)·w(y-): below log 2 here, as the bundled model rarely produces the
rejected responses (their weights are small), and above 0. On the CPU also the same
weights from the frozen reference, whose logsumsq calls are hoisted and cached, must give
the example's first loss.

usage: check_train.py --poc POC --root REPO --scratch DIR [--backend cpu|cuda] [--set K=V ...]
                      [--lines N]
"""
import argparse
import json
import math
import os
import shutil
import subprocess
import sys

sys.dont_write_bytecode = True
sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
import pycheck  # noqa: E402

REPORTS = ("rewards/chosen", "rewards/rejected", "rewards/margins", "rewards/accuracies",
           "logps/chosen", "logps/rejected")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--poc", required=True)
    ap.add_argument("--root", required=True)
    ap.add_argument("--scratch", required=True)
    ap.add_argument("--backend", default="cpu")
    ap.add_argument("--set", action="append", default=[], help="KEY=VALUE for the training binary")
    ap.add_argument("--lines", type=int, default=0,
                    help="train on a copy of the example reading only this many data lines "
                         "(the reference is cached over the whole data set before step 1)")
    a = ap.parse_args()
    shutil.rmtree(a.scratch, ignore_errors=True)
    os.makedirs(a.scratch)
    binp = os.path.join(a.scratch, "wpo")
    po = "examples/trl/dpo_sigmoid_wpo.po"
    if a.lines:
        with open(os.path.join(a.root, "examples", "data", "pairs.jsonl")) as f:
            head = f.readlines()[:a.lines]
        data = os.path.join(a.scratch, "pairs.jsonl")
        with open(data, "w") as f:
            f.writelines(head)
        with open(os.path.join(a.root, po)) as f:
            src = f.read()
        pycheck.check('"examples/data/pairs.jsonl"' in src, "the example's data declaration moved")
        po = os.path.join(a.scratch, "dpo_sigmoid_wpo.po")
        with open(po, "w") as f:
            f.write(src.replace('"examples/data/pairs.jsonl"', json.dumps(data)))
    p = subprocess.run([a.poc, "build", po, "-o", binp], cwd=a.root,
                       stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, timeout=300)
    if not pycheck.check(p.returncode == 0, f"poc build: exit {p.returncode}: {p.stderr}"):
        return pycheck.finish("wpo_train")
    logs = {}
    for head in ("fused", "unfused"):
        out = os.path.join(a.scratch, "run_" + head)
        cmd = [binp, "--backend", a.backend, "--steps", "2", "--out", out] + \
              [x for kv in a.set for x in ("--set", kv)] + \
              (["--unfused-head"] if head == "unfused" else [])
        p = subprocess.run(cmd, cwd=a.root, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                           timeout=600)
        if p.returncode == 77 or (a.backend == "cuda" and "cannot load the CUDA driver" in p.stderr):
            print("skipped: no cuda device:", p.stderr.strip()[-300:])
            return 77
        if not pycheck.check(p.returncode == 0, f"{head}: exit {p.returncode}: {p.stderr[-2000:]}"):
            continue
        with open(os.path.join(out, "metrics.jsonl")) as f:
            lines = [json.loads(l) for l in f if l.strip()]
        steps = [l for l in lines if "loss" in l]
        pycheck.check(len(steps) == 2, f"{head}: {len(steps)} step lines, not 2")
        for s in steps:
            for k in ("loss", "grad_norm") + REPORTS:
                pycheck.check(k in s and s[k] is not None and math.isfinite(s[k]),
                              f"{head}: step {s.get('step')}: {k} = {s.get(k)}")
        logs[head] = steps
        print(f"{head}: " + "; ".join(f"step {s['step']} loss {s['loss']:.6f}" for s in steps))
    if "fused" in logs and "unfused" in logs:
        first = logs["fused"][0]["loss"]
        pycheck.check(0 < first < math.log(2), f"first loss {first}: not in (0, log 2)")
        # on CUDA the fused head folds bf16 chunks of logits (|Δl| ≤ 2^-9·|l|) where the
        # textbook head keeps fp32 ones: log-probs move by up to ~2·max|Δl|
        tol = 1e-5 if a.backend == "cpu" else 3e-2
        for x, y in zip(logs["fused"], logs["unfused"]):
            for k in ("loss",) + REPORTS:
                pycheck.check(abs(x[k] - y[k]) <= tol * (1 + abs(y[k])),
                              f"step {x['step']}: {k} fused {x[k]} vs textbook {y[k]}")
    if a.backend == "cpu" and "fused" in logs:
        frozen_weights(a, logs["fused"][0])
    return pycheck.finish("wpo_train")


# The example's weights taken from the frozen reference instead: its logsumsq calls are
# hoisted (computed once over the data set before training, kept in OUT/ref_cache.bin).
# At step 1 the reference is the policy, so the loss must be the example's.
FROZEN = """policy = model("examples/tiny")
ref    = frozen(policy)
data   = pairs("examples/data/pairs.jsonl")
param beta = 0.1
def S(m, y) = sum(logp(m, y))
def w(m, y) = exp(mean(logp(m, y) - logsumsq(m, y)))
loss = -logsigmoid(beta * (S(policy, chosen) - S(ref, chosen) - S(policy, rejected) + S(ref, rejected)))
       * w(ref, chosen) * w(ref, rejected)
report lss/ref = mean(logsumsq(ref, rejected))
train { lr = 2e-5; schedule = cosine; warmup = 0.1; batch = 16; micro_batch = 8; epochs = 1
        max_len = 64; clip = 1.0; precision = fp32; seed = 1 }
"""


def frozen_weights(a, first):
    po = os.path.join(a.scratch, "frozen_weights.po")
    with open(po, "w") as f:
        f.write(FROZEN)
    g = subprocess.run([a.poc, "graph", po], cwd=a.root, stdout=subprocess.PIPE, text=True)
    pycheck.check(any("before training (hoisted" in l and "logsumsq:ref/chosen" in l
                      for l in g.stdout.splitlines()),
                  "the frozen model's logsumsq is not in the hoisted forward")
    binp = os.path.join(a.scratch, "frozen_weights")
    p = subprocess.run([a.poc, "build", po, "-o", binp], cwd=a.root, stdout=subprocess.PIPE,
                       stderr=subprocess.PIPE, text=True, timeout=300)
    if not pycheck.check(p.returncode == 0, f"frozen weights: poc build: {p.stderr}"):
        return
    out = os.path.join(a.scratch, "run_frozen")
    p = subprocess.run([binp, "--backend", a.backend, "--steps", "1", "--out", out], cwd=a.root,
                       stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, timeout=600)
    if not pycheck.check(p.returncode == 0, f"frozen weights: exit {p.returncode}: {p.stderr[-2000:]}"):
        return
    with open(os.path.join(out, "metrics.jsonl")) as f:
        step = [json.loads(l) for l in f if l.strip() and "loss" in l][0]
    pycheck.check(os.path.getsize(os.path.join(out, "ref_cache.bin")) > 0, "no reference cache written")
    pycheck.check(abs(step["loss"] - first["loss"]) <= 1e-5 * abs(first["loss"]),
                  f"frozen weights: step 1 loss {step['loss']} vs the example's {first['loss']}")
    pycheck.check(math.isfinite(step["lss/ref"]) and step["lss/ref"] < 0, f"lss/ref = {step['lss/ref']}")
    print(f"frozen-model weights (hoisted, cached): step 1 loss {step['loss']:.9f}, the example's "
          f"{first['loss']:.9f}")


if __name__ == "__main__":
    sys.exit(main())
