#!/usr/bin/env python3
"""poc probe: every example's template is accepted as is and gives finite results; DPO's
numbers match the formula; --set and every kind of bad input get a clear error (exit 2)
and never a crash.  usage: probe_check.py POC REPO_ROOT"""
import glob
import json
import math
import os
import re
import subprocess
import sys
import tempfile

POC, ROOT = sys.argv[1], sys.argv[2]
failures = 0
passed = 0


def check(cond, what):
    global failures, passed
    if cond:
        passed += 1
    else:
        failures += 1
        print("FAIL:", what)


def probe(po, *args, inputs=None):
    with tempfile.TemporaryDirectory() as d:
        cmd = [POC, "probe", po, *args]
        if inputs is not None:
            path = os.path.join(d, "in.json")
            with open(path, "w") as f:
                f.write(inputs if isinstance(inputs, str) else json.dumps(inputs))
            cmd += ["--inputs", path]
        p = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT)
    crashed = p.returncode < 0 or "Sanitizer" in p.stderr or "runtime error" in p.stderr
    check(not crashed, f"{po} {args}: crashed: {p.stderr[-400:]}")
    return p


def template(po):
    p = probe(po, "--template")
    check(p.returncode == 0, f"{po} --template: exit {p.returncode}: {p.stderr}")
    return json.loads(p.stdout)


def expect_error(po, inputs, msg, *args):
    p = probe(po, *args, inputs=inputs)
    check(p.returncode == 2, f"{po}: expected exit 2 for '{msg}', got {p.returncode}")
    check(msg in p.stderr, f"{po}: expected '{msg}' in stderr, got: {p.stderr.strip()}")
    check(p.stdout == "", f"{po}: output despite error '{msg}'")


# every example: the template goes through as is
examples = sorted(glob.glob(os.path.join(ROOT, "examples", "*.po")))
check(len(examples) > 0, "no examples found")
for po in examples:
    t = template(po)
    check(t["batch"] == 2, f"{po}: template batch")
    for key, arr in t.get("logp", {}).items():
        check(len(arr) == 2 and all(len(a) == 3 for a in arr), f"{po}: template shape of {key}")
    p = probe(po, inputs=t)
    check(p.returncode == 0, f"{po}: template rejected: {p.stderr}")
    if p.returncode:
        continue
    out = json.loads(p.stdout)
    check(isinstance(out["loss"], float) and math.isfinite(out["loss"]), f"{po}: loss {out['loss']}")
    check(len(out["per_example"]) == 2, f"{po}: per_example")
    check(abs(sum(out["per_example"]) / 2 - out["loss"]) <= 1e-12 * max(1, abs(out["loss"])),
          f"{po}: loss is not the mean of per_example")
    policy_keys = {k for k in t.get("logp", {}) if not k.startswith("ref/")}
    check(set(out["grad"]) >= {k for k in policy_keys if k.startswith("policy/")},
          f"{po}: grad keys {sorted(out['grad'])} vs {sorted(policy_keys)}")
    for k, g in out["grad"].items():
        check([len(a) for a in g] == [len(a) for a in t["logp"][k]], f"{po}: grad shape of {k}")
    check(not any(k.startswith("ref/") for k in out["grad"]), f"{po}: gradient for a frozen call")

dpo = os.path.join(ROOT, "examples", "dpo.po")
t = template(dpo)


def logsig(x):
    return min(x, 0) - math.log1p(math.exp(-abs(x)))


def dpo_ref(inp, beta):
    lp = inp["logp"]
    losses, grads = [], []
    for i in range(inp["batch"]):
        h = (sum(lp["policy/chosen"][i]) - sum(lp["ref/chosen"][i])
             - sum(lp["policy/rejected"][i]) + sum(lp["ref/rejected"][i]))
        losses.append(-logsig(beta * h))
        grads.append(-beta / (1 + math.exp(beta * h)) / inp["batch"])
    return losses, grads


inp = json.loads(json.dumps(t))
inp["logp"]["policy/chosen"][1] = [-0.1, -2.5, -0.7]
inp["logp"]["ref/rejected"][0] = [-1.2, -0.3, -0.9]
for beta in (0.1, 0.7):
    p = probe(dpo, "--set", f"beta={beta}", inputs=inp)
    check(p.returncode == 0, f"dpo beta={beta}: {p.stderr}")
    out = json.loads(p.stdout)
    losses, grads = dpo_ref(inp, beta)
    for a, b in zip(out["per_example"], losses):
        check(abs(a - b) <= 1e-14 * max(1, abs(b)), f"dpo per-example {a} vs {b}")
    for i, gi in enumerate(grads):
        check(all(abs(x - gi) <= 1e-14 for x in out["grad"]["policy/chosen"][i]), "dpo grad chosen")
        check(all(abs(x + gi) <= 1e-14 for x in out["grad"]["policy/rejected"][i]), "dpo grad rejected")
    check("rewards/accuracies" in out["reports"], "dpo reports")

# knobs
expect_error(dpo, t, "unknown knob 'betta'; the knobs of", "--set", "betta=1")
expect_error(dpo, t, "'abc' is not a finite number", "--set", "beta=abc")
expect_error(dpo, t, "is not a finite number", "--set", "beta=inf")
expect_error(os.path.join(ROOT, "examples", "sft.po"), template(os.path.join(ROOT, "examples", "sft.po")),
             "has no knobs", "--set", "beta=1")

# malformed inputs
expect_error(dpo, '{\n  "batch": 2,\n  "logp": {"policy/chosen": [[-1, ]]\n}', "in.json:3:")
expect_error(dpo, '{"batch": 2,', "malformed JSON")
expect_error(dpo, '[1, 2]', "must be a JSON object")
bad = json.loads(json.dumps(t)); del bad["logp"]["ref/chosen"]
expect_error(dpo, bad, "missing logp['ref/chosen']")
bad = json.loads(json.dumps(t)); bad["logp"]["policy/chosn"] = bad["logp"]["policy/chosen"]
expect_error(dpo, bad, "unknown key logp['policy/chosn']; the objective reads:")
bad = json.loads(json.dumps(t)); bad["lopg"] = {}
expect_error(dpo, bad, "unknown key 'lopg'")
bad = json.loads(json.dumps(t)); bad["batch"] = 3
expect_error(dpo, bad, "has 2 examples, but batch is 3")
bad = json.loads(json.dumps(t)); del bad["batch"]
expect_error(dpo, bad, "missing \"batch\"")
bad = json.loads(json.dumps(t)); bad["batch"] = 0
expect_error(dpo, bad, "batch must be a whole number")
bad = json.loads(json.dumps(t)); bad["logp"]["ref/chosen"][1] = [-1.0, -2.0]
expect_error(dpo, bad, "logp['ref/chosen'][1] has 2 values, but logp['policy/chosen'][1] has 3")
bad = json.loads(json.dumps(t)); bad["logp"]["policy/rejected"][0][1] = "x"
expect_error(dpo, bad, "logp['policy/rejected'][0][1] must be a number")
bad = re.sub(r'("policy/chosen": \[\[)[^,\]]+', r'\g<1>-1e999', json.dumps(t), count=1)
expect_error(dpo, bad, "is not a finite number")
bad = json.loads(json.dumps(t)); bad["logp"]["policy/chosen"] = [-1, -2]
expect_error(dpo, bad, "logp['policy/chosen'][0] must be an array")
bad = json.loads(json.dumps(t)); bad["seed"] = -1
expect_error(dpo, bad, "seed must be a whole number")

copo = os.path.join(ROOT, "examples", "copo.po")
if os.path.exists(copo):
    t = template(copo)
    check("policy/a" in t["logp"] and "ref/a" in t["logp"], "copo template names the anchor")
    bad = json.loads(json.dumps(t)); del bad["fields"]["chosen_scores"]
    expect_error(copo, bad, "missing fields['chosen_scores']")
    bad = json.loads(json.dumps(t)); bad["fields"]["chosen_scores"][0] = [1.0]
    expect_error(copo, bad, "fields['chosen_scores'][0] has 1 values")
    bad = json.loads(json.dumps(t)); bad["fields"]["reward"] = [1, 2]
    expect_error(copo, bad, "unknown field 'reward'")
    ok = json.loads(json.dumps(t))
    ok["logp"]["policy/a"] = [[-1.0] * 8, [-0.5, -2.0]]  # anchors stop early: ragged
    ok["logp"]["ref/a"] = [[-1.5] * 8, [-0.25, -1.0]]
    p = probe(copo, inputs=ok)
    check(p.returncode == 0, f"copo ragged anchor: {p.stderr}")
    if p.returncode == 0:
        out = json.loads(p.stdout)
        check([len(a) for a in out["grad"]["policy/a"]] == [8, 2], "copo anchor grad shape")

sgdpo = os.path.join(ROOT, "examples", "sgdpo.po")
if os.path.exists(sgdpo):
    t = template(sgdpo)
    t["logp"]["policy/chosen"] = [[-1.0] * 5, [-1.0] * 2]
    t["logp"]["ref/chosen"] = [[-1.5] * 5, [-1.5] * 2]
    outs = []
    for seed in (1, 1, 2):
        t["seed"] = seed
        p = probe(sgdpo, inputs=t)
        check(p.returncode == 0, f"sgdpo: {p.stderr}")
        outs.append(json.loads(p.stdout) if p.returncode == 0 else {})
    picks = outs[0].get("picks", {})
    check(len(picks) == 2, f"sgdpo picks: {picks}")
    for key, masks in picks.items():
        for m in masks:
            check(set(m) <= {0, 1}, "pick masks are 0/1")
    pw = picks.get("pick(chosen,n_w)", [[], []])
    check([sum(m) for m in pw] == [max(1, math.floor(0.8 * 5)), max(1, math.floor(0.8 * 2))],
          f"pick counts {pw}")
    check(outs[0] == outs[1], "same seed, same picks")

print(f"probe: {passed} passed, {failures} failed")
sys.exit(1 if failures else 0)
