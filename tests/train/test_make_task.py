#!/usr/bin/env python3
"""tools/make_task.py: deterministic output, valid lines in the task's digit order, SFT
demonstrations that are right or wrong by exactly the demonstrator's habit (and about as
often as FLAW says), right chosen and wrong rejected answers with scores that mark the
difference, eval prompts disjoint from training, a loadable F32 safetensors model.

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
    subprocess.run([sys.executable, TOOL, "--out", os.path.join(SCRATCH, k), "--sft", "1000",
                    "--train", "300", "--eval", "40"], check=True, capture_output=True)
A = os.path.join(SCRATCH, "a")
check(digest(A) == digest(os.path.join(SCRATCH, "b")), "same seed, same bytes")


def lines(name):
    return [json.loads(l) for l in open(os.path.join(A, "data", name))]


def num(ids):
    """Digits written least significant first, as the task writes every number."""
    assert ids and all(4 <= t <= 13 for t in ids), ids
    return int("".join(str(t - 4) for t in reversed(ids)))


def parse_prompt(p):
    check(len(p) == 9 and p[0] == 1 and p[4] == 14 and p[-1] == 15,
          "prompt shape bos a0 a1 a2 + b0 b1 b2 = : %s" % p)
    return num(p[1:4]), num(p[5:8])


def forgot_tens_carry(a, b):
    """a + b with the carry from the tens into the hundreds forgotten (None: no such carry)."""
    units = a % 10 + b % 10
    tens = a // 10 % 10 + b // 10 % 10 + units // 10
    if tens < 10:
        return None
    return a + b - 100


# the sums of the SFT demonstrations: right, or wrong by the demonstrator's one habit
habit = eligible = 0
sft = lines("sft.jsonl")
check(len(sft) >= 300, "SFT prompts at least as many as pair prompts")
for d in sft:
    a, b = parse_prompt(d["prompt"])
    check(d["response"][-1] == 2 and 2 not in d["response"][:-1], "sft response ends in eos")
    got = num(d["response"][:-1])
    slip = forgot_tens_carry(a, b)
    eligible += slip is not None
    if got != a + b:
        habit += 1
        check(got == slip, "a wrong demonstration is the forgotten tens carry: %d + %d -> %d"
              % (a, b, got))
    check(d["reward"] == (1.0 if got == a + b else 0.0), "sft reward marks right answers")
check(eligible > 0 and 0.45 < habit / eligible < 0.75,
      "the habit strikes in about 60%% of the problems it can: %d of %d" % (habit, eligible))
pairs = lines("pairs.jsonl")
check(len(pairs) == 300, "pairs count")
for d in pairs:
    a, b = parse_prompt(d["prompt"])
    check(num(d["chosen"][:-1]) == a + b, "chosen is right")
    check(d["rejected"][-1] == 2 and d["rejected"] != d["chosen"], "rejected differs")
    check(num(d["rejected"][:-1]) != a + b, "rejected is wrong")
    check(len(d["chosen_scores"]) == len(d["chosen"]), "a score per chosen token")
    wrong = sum(1 for i, t in enumerate(d["chosen"][:-1])
                if i >= len(d["rejected"]) - 1 or d["rejected"][i] != t)
    check(d["margin"] == wrong and d["chosen_scores"].count(1.0) == wrong,
          "margin and scores mark the digits the rejected answer gets wrong")
    check(all(t < 32 for t in d["prompt"] + d["chosen"] + d["rejected"]), "vocabulary")
pts = lines("points.jsonl")
for d in pts:
    a, b = parse_prompt(d["prompt"])
    right = num(d["response"][:-1]) == a + b
    check((d["reward"] == 1.0) == right, "reward 1 exactly for right answers")
check(len(pts) > len(pairs), "several responses per prompt")
train = {tuple(d["prompt"]) for d in sft}
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
