#!/usr/bin/env python3
"""tools/make_task.py: deterministic output, valid lines, correct sums, wrong rejected
answers, eval prompts disjoint from training, a loadable F32 safetensors model.

usage: test_make_task.py MAKE_TASK SCRATCH
"""
import hashlib
import json
import os
import shutil
import struct
import subprocess
import sys

TOOL, SCRATCH = sys.argv[1], sys.argv[2]
fails = []


def check(c, what):
    if not c:
        fails.append(what)
        print("FAIL:", what, file=sys.stderr)


def digest(d):
    h = {}
    for root, _, files in os.walk(d):
        for f in files:
            p = os.path.join(root, f)
            h[os.path.relpath(p, d)] = hashlib.sha256(open(p, "rb").read()).hexdigest()
    return h


shutil.rmtree(SCRATCH, ignore_errors=True)
for k in ("a", "b"):
    subprocess.run([sys.executable, TOOL, "--out", os.path.join(SCRATCH, k), "--train", "300",
                    "--eval", "40"], check=True, capture_output=True)
A = os.path.join(SCRATCH, "a")
check(digest(A) == digest(os.path.join(SCRATCH, "b")), "same seed, same bytes")


def lines(name):
    return [json.loads(l) for l in open(os.path.join(A, "data", name))]


def num(ids):
    assert all(4 <= t <= 13 for t in ids), ids
    return int("".join(str(t - 4) for t in ids))


def parse_prompt(p):
    check(p[0] == 1 and p[-1] == 15 and 14 in p, "prompt shape %s" % p)
    i = p.index(14)
    return num(p[1:i]), num(p[i + 1:-1])


for d in lines("sft.jsonl"):
    a, b = parse_prompt(d["prompt"])
    check(d["response"][-1] == 2 and num(d["response"][:-1]) == a + b, "sft answer")
pairs = lines("pairs.jsonl")
check(len(pairs) == 300, "pairs count")
for d in pairs:
    a, b = parse_prompt(d["prompt"])
    check(num(d["chosen"][:-1]) == a + b, "chosen is right")
    check(d["rejected"][-1] == 2 and d["rejected"] != d["chosen"], "rejected differs")
    check(num(d["rejected"][:-1]) != a + b, "rejected is wrong")
    check(len(d["chosen_scores"]) == len(d["chosen"]), "a score per chosen token")
    check(all(t < 32 for t in d["prompt"] + d["chosen"] + d["rejected"]), "vocabulary")
pts = lines("points.jsonl")
for d in pts:
    a, b = parse_prompt(d["prompt"])
    right = num(d["response"][:-1]) == a + b
    check((d["reward"] == 1.0) == right, "reward 1 exactly for right answers")
check(len(pts) > len(pairs), "several responses per prompt")
train = {tuple(d["prompt"]) for d in pairs}
ev = lines("eval.jsonl")
check(len(ev) == 40 and not any(tuple(d["prompt"]) in train for d in ev), "eval disjoint")
for d in ev:
    a, b = parse_prompt(d["prompt"])
    check(num(d["answer"]) == a + b, "eval answer")

cfg = json.load(open(os.path.join(A, "tiny", "config.json")))
st = open(os.path.join(A, "tiny", "model.safetensors"), "rb").read()
n = struct.unpack("<Q", st[:8])[0]
hdr = json.loads(st[8:8 + n])
check(n % 8 == 0, "header padded to 8 bytes")
total = 0
for name, t in hdr.items():
    if name == "__metadata__":
        continue
    check(t["dtype"] == "F32", "F32")
    cnt = 1
    for s in t["shape"]:
        cnt *= s
    check(t["data_offsets"][1] - t["data_offsets"][0] == 4 * cnt, "offsets of " + name)
    total = max(total, t["data_offsets"][1])
check(len(st) == 8 + n + total, "file size")
check(hdr["model.layers.0.self_attn.k_proj.weight"]["shape"] ==
      [cfg["num_key_value_heads"] * cfg["head_dim"], cfg["hidden_size"]], "GQA shapes")
check(len(st) < 4 << 20, "a few MiB at most")
# --data-only leaves the model alone
before = digest(os.path.join(A, "tiny"))
subprocess.run([sys.executable, TOOL, "--out", A, "--data-only", "--seed", "2"], check=True,
               capture_output=True)
check(digest(os.path.join(A, "tiny")) == before, "--data-only keeps the model")
print("make_task: %d failed" % len(fails))
sys.exit(1 if fails else 0)
