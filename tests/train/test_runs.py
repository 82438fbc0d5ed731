#!/usr/bin/env python3
"""Whole runs of a training binary (tt_dpo_main.c): exact resume, partial checkpoints,
metrics, evaluation, flags, and bad data that must stop the run before it touches the run
directory.

usage: test_runs.py BIN SCRATCH
"""
import hashlib
import json
import os
import shutil
import struct
import subprocess
import sys

BIN, SCRATCH = os.path.abspath(sys.argv[1]), os.path.abspath(sys.argv[2])
sys.dont_write_bytecode = True  # nothing written into the source tree
sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
import pycheck  # noqa: E402  (tests/pycheck.py: the pass/fail tally)
from pycheck import check  # noqa: E402


def run(args, variant="dpo", data=None, env_extra=None):
    env = dict(os.environ)
    env.update({"TT_MODEL": MODEL, "TT_DATA": data or DATA, "TT_EVAL": EVAL,
                "TT_VARIANT": variant})
    if env_extra:
        env.update(env_extra)
    p = subprocess.run([BIN] + args, cwd=SCRATCH, env=env, capture_output=True, text=True,
                       timeout=240)
    return p.returncode, p.stderr


def sha(path):
    with open(path, "rb") as f:
        return hashlib.sha256(f.read()).hexdigest()


def tree(d):
    out = {}
    for root, _, files in os.walk(d):
        for f in files:
            p = os.path.join(root, f)
            out[os.path.relpath(p, d)] = sha(p)
    return out


def metrics(d):
    with open(os.path.join(d, "metrics.jsonl")) as f:
        return [json.loads(l) for l in f if l.strip()]


def st_header(path):
    with open(path, "rb") as f:
        n = struct.unpack("<Q", f.read(8))[0]
        return json.loads(f.read(n))


shutil.rmtree(SCRATCH, ignore_errors=True)
os.makedirs(SCRATCH)

# A tiny random model and random pairs (tt_fixture.py).
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import tt_fixture  # noqa: E402
MODEL, DATA, EVAL = tt_fixture.make(SCRATCH)

# ---- a straight run: metrics, evaluation, checkpoints -------------------------------
rc, err = run(["--steps", "8", "--out", "A"])
check(rc == 0, "run A exits 0: " + err)
A = os.path.join(SCRATCH, "A")
m = metrics(A)
train_lines = [x for x in m if "loss" in x]
check([x["step"] for x in train_lines] == list(range(1, 9)), "a metrics line per step")
need = {"step", "epoch", "loss", "lr", "grad_norm", "tokens_per_s", "rewards/margins",
        "rewards/accuracies"}
check(all(need <= set(x) for x in train_lines), "metrics lines have every key")
ev = [x for x in m if "eval/accuracy" in x]
check([x["step"] for x in ev] == [0, 8], "eval/accuracy at step 0 and at the end: %s" % ev)
check(m[0]["step"] == 0 and "loss" not in m[0], "the step-0 line is the evaluation")
check(abs(train_lines[0]["loss"] - 0.6931471805599453) < 1e-6, "DPO starts at log 2")
check(train_lines[-1]["loss"] < train_lines[0]["loss"], "the loss falls")
check(train_lines[0]["lr"] == 0 and abs(train_lines[1]["lr"] - 5e-3 * 1 / 3) < 1e-12,
      "warmup lr 0 at step 1, a third of the peak at step 2 (12 steps, warmup "
      "ceil(0.2 * 12) = 3)")
check(abs(train_lines[1]["epoch"] - 0.5) < 1e-12, "epoch counts examples seen")
check(sorted(d for d in os.listdir(A) if d.startswith("ckpt-")) == ["ckpt-5", "ckpt-8"],
      "checkpoints every 5 steps and at the end")
check(os.path.isfile(os.path.join(A, "tt_dpo.po")), "the .po source is in the run directory")
h = st_header(os.path.join(A, "ckpt-8", "model.safetensors"))
check(h["model.embed_tokens.weight"]["dtype"] == "F32" and "lm_head.weight" in h,
      "the checkpoint holds HF-named F32 tensors")
o = st_header(os.path.join(A, "ckpt-8", "optimizer.safetensors"))
check("exp_avg.model.norm.weight" in o and "exp_avg_sq.lm_head.weight" in o,
      "optimizer moments are saved")
with open(os.path.join(A, "ckpt-8", "config.json")) as f:
    check(json.load(f)["hidden_size"] == 16, "config.json beside the weights")
with open(os.path.join(A, "ckpt-8", "state.json")) as f:
    s = json.load(f)
check(s["step"] == 8 and s["data_position"] == 32 and s["knobs"] == {"beta": 0.5},
      "state.json: %s" % s)

# ---- exact resume ---------------------------------------------------------------------
# B: 6 steps (checkpoints 5 and 6); then the last checkpoint is lost and a half-written
# temporary one left behind, as after a crash: the resume starts from ckpt-5, drops
# metrics after step 5, and must end byte-identical to the straight run.
rc, err = run(["--steps", "6", "--out", "B"])
check(rc == 0, "run B exits 0: " + err)
B = os.path.join(SCRATCH, "B")
shutil.rmtree(os.path.join(B, "ckpt-6"))
os.makedirs(os.path.join(B, ".tmp-ckpt-7"))
with open(os.path.join(B, ".tmp-ckpt-7", "state.json"), "w") as f:
    f.write('{"step": 7')
os.makedirs(os.path.join(B, "ckpt-9"))  # a folder missing its files
rc, err = run(["--resume", "B", "--steps", "8"])
check(rc == 0, "resume B exits 0: " + err)
check("resuming" in err and "ckpt-5" in err, "resumes from ckpt-5: " + err)
check("reference values" not in err, "the reference cache is reused on resume")
for f in ("model.safetensors", "optimizer.safetensors"):
    check(sha(os.path.join(A, "ckpt-8", f)) == sha(os.path.join(B, "ckpt-8", f)),
          "resumed %s is byte-identical to the straight run's" % f)
mb = metrics(B)
check([x["step"] for x in mb] == [x["step"] for x in m], "resumed metrics steps: %s" %
      [x["step"] for x in mb])
check([x.get("loss") for x in mb] == [x.get("loss") for x in m], "resumed losses identical")

# the same with an anchor drawn from the policy every step
rc, err = run(["--steps", "4", "--out", "C"], variant="anchor")
check(rc == 0, "anchor run exits 0: " + err)
rc, err = run(["--steps", "2", "--out", "D"], variant="anchor")
rc2, err2 = run(["--resume", "D", "--steps", "4"], variant="anchor")
check(rc == 0 and rc2 == 0, "anchor resume exits 0: " + err + err2)
check(sha(os.path.join(SCRATCH, "C", "ckpt-4", "model.safetensors")) ==
      sha(os.path.join(SCRATCH, "D", "ckpt-4", "model.safetensors")),
      "anchor run resumes byte-identically")

# the non-separable path end to end
rc, err = run(["--steps", "3", "--out", "E", "--set", "beta=0.25"], variant="centred")
check(rc == 0, "centred run exits 0: " + err)
me = [x for x in metrics(os.path.join(SCRATCH, "E")) if "loss" in x]
check(len(me) == 3 and all(abs(x["rewards/margins"]) < 1e-6 for x in me[:1]),
      "centred margins average to zero")
with open(os.path.join(SCRATCH, "E", "ckpt-3", "state.json")) as f:
    check(json.load(f)["knobs"]["beta"] == 0.25, "--set reaches the knobs")

# ---- flags ------------------------------------------------------------------------------
rc, err = run(["--set", "gamma=1", "--out", "F"])
check(rc == 2 and "unknown knob 'gamma'" in err and "beta" in err, "unknown knob: " + err)
check(not os.path.exists(os.path.join(SCRATCH, "F")), "no run directory after a usage error")
rc, err = run(["--backend", "cuda", "--out", "F"])
check(rc == 2 and "--backend cuda:" in err and "error" in err, "--backend cuda: " + err)
rc, err = run(["--help"])
check(rc == 0, "--help exits 0")
rc, err = run(["--bogus"])
check(rc == 2 and "unknown argument" in err, "unknown flag")
rc, err = run(["--steps", "x"])
check(rc == 2, "bad --steps")
rc, err = run(["--out", "A", "--steps", "1"])
check(rc == 2 and "already holds a run" in err, "refuses to overwrite a run: " + err)
os.makedirs(os.path.join(SCRATCH, "G"))
rc, err = run(["--resume", "G"])
check(rc == 2 and "no complete checkpoint" in err, "resume without checkpoints: " + err)

# ---- bad data stops before anything in the run directory changes ----------------------
good = open(DATA).read().splitlines()
bad_lines = [
    ('{"prompt":[1,5],"chosen":[6,2]', "malformed JSON"),
    ('{"prompt":[1,5],"chosen":[6,99],"rejected":[7],"margin":0,"chosen_scores":[1,1]}', "outside the vocabulary"),
    ('{"prompt":[1,5],"chosen":[],"rejected":[7],"margin":0,"chosen_scores":[]}', "'chosen' is empty"),
    ('{"prompt":[1,5],"chosen":[6],"rejected":[7],"margin":NaN,"chosen_scores":[1]}', "malformed JSON"),
    ('{"prompt":[1,5],"chosen":[6],"rejected":[7],"chosen_scores":[1]}', "missing field 'margin'"),
    ('{"prompt":[1,5],"chosen":[6],"rejected":[7],"margin":1e400,"chosen_scores":[1]}', "not finite"),
    ('{"prompt":[1,5],"chosen":[6,3],"rejected":[7],"margin":0,"chosen_scores":[1]}', "has 1 numbers"),
    ('{"prompt":"x","chosen":[6],"rejected":[7],"margin":0,"chosen_scores":[1]}', "not an array"),
]
before = tree(B)
for i, (line, want) in enumerate(bad_lines):
    path = os.path.join(SCRATCH, "bad%d.jsonl" % i)
    with open(path, "w") as f:
        f.write("\n".join(good[:4] + [line] + good[4:]) + "\n")
    rc, err = run(["--resume", "B", "--steps", "10"], data=path)
    check(rc == 2, "bad line %d: exit 2 (got %d)" % (i, rc))
    check("%s:5: error:" % path in err and want in err, "bad line %d: message: %s" % (i, err))
    rc, err = run(["--out", "H%d" % i], data=path)
    check(rc == 2 and not os.path.exists(os.path.join(SCRATCH, "H%d" % i)),
          "bad line %d: no new run directory" % i)
check(tree(B) == before, "the run directory keeps what it had")

# train settings from the command line, no rebuild: the run uses them and records them
rc, err = run(["--out", "S", "--set", "train.lr=0", "--set", "train.steps=2",
               "--set", "train.schedule=constant", "--set", "train.ckpt_every=1"])
S = os.path.join(SCRATCH, "S")
check(rc == 0, "--set train.*: runs: " + err)
ms = [m for m in metrics(S) if "loss" in m]
check(len(ms) == 2 and all(m["lr"] == 0 for m in ms), "train.lr=0, train.steps=2: %s" % ms)
with open(os.path.join(S, "train.json")) as f:
    tj = json.load(f)
check(tj["lr"] == 0 and tj["steps"] == 2 and tj["schedule"] == "constant" and
      tj["ckpt_every"] == 1, "train.json holds the effective values: %s" % tj)
check(os.path.isdir(os.path.join(S, "ckpt-1")), "train.ckpt_every=1 checkpoints every step")
with open(os.path.join(S, "ckpt-2", "model.safetensors"), "rb") as f1, \
        open(os.path.join(S, "ckpt-1", "model.safetensors"), "rb") as f2:
    check(f1.read() == f2.read(), "lr 0 leaves the weights as they were")
for bad, want in (("train.batch=0", "not an integer in [1,"),
                  ("train.lr=-1", "not a number in [0,"),
                  ("train.schedule=step", "'step' is not one of cosine linear constant"),
                  ("train.epoch=2", "unknown train setting 'train.epoch'; they are: lr"),
                  ("train.micro_batch=2.5", "not an integer")):
    rc, err = run(["--out", "SB", "--set", bad])
    check(rc == 2 and want in err and not os.path.exists(os.path.join(SCRATCH, "SB")),
          "--set %s: exit 2, %r, no run directory (got %d: %s)" % (bad, want, rc, err))

sys.exit(pycheck.finish("train_runs"))
