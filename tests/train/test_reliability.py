#!/usr/bin/env python3
"""What a training binary (tt_dpo_main.c) promises when things go wrong (docs/reliability.md,
"Training runs"): non-finite steps never kept, one process per run directory, checkpoints
validated on resume with a fallback, restartable runs, regular input files only, strict
JSONL, whole metric lines, model configs checked before step 1. Each case checks the
message, the exit code and that earlier checkpoints are byte-for-byte what they were.

usage: test_reliability.py BIN SCRATCH
"""
import fcntl
import hashlib
import json
import os
import shutil
import subprocess
import sys
import time

BIN, SCRATCH = os.path.abspath(sys.argv[1]), os.path.abspath(sys.argv[2])
sys.dont_write_bytecode = True  # nothing written into the source tree
sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
import pycheck  # noqa: E402  (tests/pycheck.py: the pass/fail tally)
from pycheck import check  # noqa: E402


def run(args, data=None, model=None, evalset=None, **env_extra):
    env = dict(os.environ)
    env.update({"TT_MODEL": model or MODEL, "TT_DATA": data or DATA,
                "TT_EVAL": EVAL if evalset is None else evalset, "TT_VARIANT": "dpo"})
    env.update(env_extra)
    p = subprocess.run([BIN] + args, cwd=SCRATCH, env=env, capture_output=True, text=True,
                       timeout=60)
    return p.returncode, p.stderr


def tree(d):
    out = {}
    for root, _, files in os.walk(d):
        for f in files:
            if f == ".lock":  # taken by every run, resumed or refused
                continue
            p = os.path.join(root, f)
            with open(p, "rb") as fh:
                out[os.path.relpath(p, d)] = hashlib.sha256(fh.read()).hexdigest()
    return out


def ckpts(d):
    return sorted((x for x in os.listdir(d) if x.startswith("ckpt-")),
                  key=lambda x: int(x[5:]))


def S(*p):
    return os.path.join(SCRATCH, *p)


shutil.rmtree(SCRATCH, ignore_errors=True)
os.makedirs(SCRATCH)
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import tt_fixture  # noqa: E402  (the tiny model, pairs and eval set test_runs.py uses too)
MODEL, DATA, EVAL = tt_fixture.make(SCRATCH)

# A run with checkpoints at 5 and 6 that the cases below copy and damage.
rc, err = run(["--steps", "6", "--out", "base"])
check(rc == 0 and ckpts(S("base")) == ["ckpt-5", "ckpt-6"], "base run: " + err)

# ---- 1. non-finite steps are never kept ------------------------------------------------
rc, err = run(["--out", "nf1", "--steps", "3", "--set", "beta=1e308"])
check(rc == 2 and "step 1: the gradient norm is NaN; the step was not applied" in err and
      "no checkpoint was written before it" in err and "on_nonfinite = skip" in err,
      "beta=1e308 stops at step 1: " + err)
check(ckpts(S("nf1")) == [], "no checkpoint after a non-finite first step")
shutil.copytree(S("base"), S("nf2"))
shutil.rmtree(S("nf2", "ckpt-6"))
before = tree(S("nf2", "ckpt-5"))
rc, err = run(["--resume", "nf2", "--steps", "8"], TT_LR="1e300")
check(rc == 2 and "step 6:" in err and "last good checkpoint is nf2/ckpt-5" in err,
      "a non-finite step names the last good checkpoint: " + err)
check(ckpts(S("nf2")) == ["ckpt-5"] and tree(S("nf2", "ckpt-5")) == before,
      "the last good checkpoint is untouched and no later one exists")
# an lr so large that the update itself overflows: caught after AdamW, nothing written
rc, err = run(["--out", "nf3", "--steps", "5"], TT_LR="1e300")
check(rc == 2 and "non-finite weights after the update" in err, "lr 1e300: " + err)
check(ckpts(S("nf3")) == [], "no checkpoint holds the overflowed weights")
# on_nonfinite = skip: no update, counted in the metrics and the checkpoint
rc, err = run(["--out", "nf4", "--steps", "3", "--set", "beta=1e308"], TT_ON_NONFINITE="skip")
check(rc == 0 and "step 1 skipped" in err, "skip policy runs on: " + err)
lines = [json.loads(x) for x in open(S("nf4", "metrics.jsonl"))]
steps = [x for x in lines if x["step"] > 0]
check([x.get("skipped") for x in steps] == [True] * 3 and steps[-1]["skipped_steps"] == 3,
      "skipped steps are marked and counted: %s" % steps)
st = json.load(open(S("nf4", "ckpt-3", "state.json")))
check(st["skipped_steps"] == 3 and st["data_position"] == 12, "state.json counts skips: %s" % st)
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))


def tensors(path):
    import struct
    with open(path, "rb") as f:
        n = struct.unpack("<Q", f.read(8))[0]
        h = json.loads(f.read(n))
        body = f.read()
    h.pop("__metadata__", None)
    out = {}
    for k, v in h.items():
        a, b = v["data_offsets"]
        raw = body[a:b]
        if v["dtype"] == "F32":
            out[k] = struct.unpack("<%df" % (len(raw) // 4), raw)
        elif v["dtype"] == "BF16":
            out[k] = tuple(struct.unpack("<f", b"\0\0" + raw[i:i + 2])[0]
                           for i in range(0, len(raw), 2))
    return out


t0, t1 = tensors(S("model", "model.safetensors")), tensors(S("nf4", "ckpt-3", "model.safetensors"))
check(all(t0[k] == t1[k] for k in t0), "skipped steps leave the weights as they were")
mo = tensors(S("nf4", "ckpt-3", "optimizer.safetensors"))
check(all(x == 0 for v in mo.values() for x in v), "skipped steps leave AdamW's moments at 0")

# ---- 2. one process per run directory -------------------------------------------------
shutil.copytree(S("base"), S("lk"))
before = tree(S("lk"))
fd = os.open(S("lk", ".lock"), os.O_RDWR | os.O_CREAT)
fcntl.flock(fd, fcntl.LOCK_EX)
os.ftruncate(fd, 0)
os.write(fd, b"4242\n")
rc, err = run(["--resume", "lk", "--steps", "8"])
check(rc == 2 and "lk is in use by another run (pid 4242)" in err, "locked --resume: " + err)
rc, err = run(["--out", "lk", "--steps", "8"])
check(rc == 2 and "in use by another run (pid 4242)" in err, "locked --out: " + err)
os.close(fd)
after = tree(S("lk"))
after.pop(".lock", None)
before.pop(".lock", None)
check(after == before, "a refused second writer changes nothing")
rc, err = run(["--resume", "lk", "--steps", "7"])
check(rc == 0, "the lock goes with its holder: " + err)
# default names: unique even when the timestamp's directory exists already
now = time.time()
for k in range(0, 4):
    os.makedirs(S("runs", "tt_dpo-" + time.strftime("%Y%m%d-%H%M%S", time.localtime(now + k))),
                exist_ok=True)
rc, err = run(["--steps", "1"])
made = sorted(x for x in os.listdir(S("runs")) if x.count("-") == 3)
check(rc == 0 and len(made) == 1 and made[0].endswith("-2"), "a suffixed default name: %s %s"
      % (made, err))

# ---- 3. checkpoints validated on resume --------------------------------------------------
def damaged(name, edit, keep_newest=False):
    d = S(name)
    shutil.copytree(S("base"), d)
    if not keep_newest:
        shutil.rmtree(os.path.join(d, "ckpt-6"))
    target = os.path.join(d, "ckpt-6" if keep_newest else "ckpt-5")
    edit(target)
    return d


def set_state(**kv):
    def edit(ck):
        p = os.path.join(ck, "state.json")
        s = json.load(open(p))
        for k, v in kv.items():
            if v is None:
                s.pop(k)
            else:
                s[k] = v
        open(p, "w").write(json.dumps(s))
    return edit


cases = [("data_position", -3, "'data_position' must be a whole number >= 0, got -3"),
         ("step", 1e300, "'step' must be a whole number >= 0"),
         ("seed", "abc", "'seed' must be a string of decimal digits"),
         ("knobs", {"beta": 0.5, "gamma": 1}, "'knobs' must be the program's knobs"),
         ("knobs", {}, "'knobs' must be the program's knobs"),
         ("knobs", {"beta": "x"}, "'knobs' must be the program's knobs")]
for i, (k, v, want) in enumerate(cases):
    d = damaged("sj%d" % i, set_state(**{k: v}))
    before = tree(d)
    rc, err = run(["--resume", "sj%d" % i, "--steps", "8"])
    check(rc == 2 and "ckpt-5/state.json: " + want in err and "no usable checkpoint" in err,
          "state.json %s=%r: %s" % (k, v, err))
    check(tree(d) == before, "state.json %s: nothing changed" % k)
# a damaged newest checkpoint is skipped for the one before it


def truncate(ck):
    p = os.path.join(ck, "model.safetensors")
    data = open(p, "rb").read()
    open(p, "wb").write(data[:len(data) // 2])


def nan_moment(ck):
    p = os.path.join(ck, "optimizer.safetensors")
    data = bytearray(open(p, "rb").read())
    data[-4:] = b"\x00\x00\xc0\x7f"
    open(p, "wb").write(bytes(data))


for name, edit in (("tr", truncate), ("nm", nan_moment), ("st", set_state(total_steps="x"))):
    d = damaged(name, edit, keep_newest=True)
    five = tree(os.path.join(d, "ckpt-5"))
    rc, err = run(["--resume", name, "--steps", "7"])
    check(rc == 0 and "skipping %s/ckpt-6, which is damaged" % name in err and
          "resuming from the previous complete checkpoint, %s/ckpt-5" % name in err,
          "%s: falls back to ckpt-5: %s" % (name, err))
    check(tree(os.path.join(d, "ckpt-5")) == five, "%s: ckpt-5 unchanged" % name)
    m = [json.loads(x)["step"] for x in open(os.path.join(d, "metrics.jsonl"))]
    check(m == [0, 1, 2, 3, 4, 5, 6, 7], "%s: metrics continue from 5: %s" % (name, m))
check(tree(S("tr", "ckpt-7")) == tree(S("nm", "ckpt-7")), "the fallback resumes exactly")
# the data set's content is part of the checkpoint
shutil.copytree(S("base"), S("dc"))
changed = S("pairs2.jsonl")
lines = open(DATA).read().splitlines()
st = json.load(open(S("dc", "ckpt-6", "state.json")))
check(st["input_hashes"].get(DATA) and st["input_hashes"].get(EVAL), "hashes recorded: %s" % st)
shutil.copy(DATA, S("data_saved"))
open(DATA, "w").write("\n".join(lines[1:] + lines[:1]) + "\n")
before = tree(S("dc"))
rc, err = run(["--resume", "dc", "--steps", "7"])
check(rc == 2 and DATA + " changed since dc/ckpt-6 was written" in err and
      "--allow-data-change" in err, "changed data refused: " + err)
check(tree(S("dc")) == before, "changed data: nothing written")
rc, err = run(["--resume", "dc", "--steps", "7", "--allow-data-change"])
check(rc == 0 and "resuming anyway" in err, "--allow-data-change: " + err)
shutil.copy(S("data_saved"), DATA)

# ---- 4. restartable runs, periodic checkpoints ------------------------------------------
os.makedirs(S("rs"))
shutil.copy(S("base", "tt_dpo.po"), S("rs", "tt_dpo.po"))
with open(S("rs", "metrics.jsonl"), "w") as f:
    f.write('{"step":0,"epoch":0,"eval/accuracy":0}\n{"step":1,"loss":0.7}\n{"step":2,"lo')
rc, err = run(["--resume", "rs", "--steps", "2"])
check(rc == 2 and "no complete checkpoint" in err and "without --resume" in err,
      "--resume before the first checkpoint: " + err)
rc, err = run(["--out", "rs", "--steps", "2"])
check(rc == 0 and "starting the run there afresh" in err, "killed before a checkpoint restarts: "
      + err)
m = [json.loads(x)["step"] for x in open(S("rs", "metrics.jsonl"))]
check(m == [0, 1, 2] and ckpts(S("rs")) == ["ckpt-2"], "the restart's metrics: %s" % m)
rc, err = run(["--out", "ck", "--steps", "4"], TT_CKPT_EVERY="0", TT_CKPT_MINUTES="1e-9")
check(rc == 0 and ckpts(S("ck")) == ["ckpt-1", "ckpt-2", "ckpt-3", "ckpt-4"],
      "ckpt_minutes triggers checkpoints: %s" % ckpts(S("ck")))
rc, err = run(["--out", "ck0", "--steps", "4"], TT_CKPT_EVERY="0", TT_CKPT_MINUTES="0")
check(rc == 0 and ckpts(S("ck0")) == ["ckpt-4"], "both triggers off: only the end")

# ---- 5. only regular files ----------------------------------------------------------------
os.mkfifo(S("fifo.jsonl"))
os.makedirs(S("adir.jsonl"))
for what, kw, want in (
        ("data FIFO", {"data": S("fifo.jsonl")}, "not a regular file (a FIFO)"),
        ("data device", {"data": "/dev/urandom"}, "not a regular file (a character device)"),
        ("data directory", {"data": S("adir.jsonl")}, "not a regular file (a directory)"),
        ("eval FIFO", {"evalset": S("fifo.jsonl")}, "not a regular file (a FIFO)")):
    rc, err = run(["--out", "rf"], **kw)
    check(rc == 2 and want in err and not os.path.exists(S("rf")), "%s: %s" % (what, err))
shutil.copytree(MODEL, S("fifomodel"))
os.unlink(S("fifomodel", "config.json"))
os.mkfifo(S("fifomodel", "config.json"))
rc, err = run(["--out", "rf"], model=S("fifomodel"))
check(rc == 2 and "fifomodel/config.json: not a regular file (a FIFO)" in err, "config FIFO: " + err)
shutil.copytree(MODEL, S("dirmodel"))
os.unlink(S("dirmodel", "model.safetensors"))
os.makedirs(S("dirmodel", "model.safetensors"))
rc, err = run(["--out", "rf"], model=S("dirmodel"))
check(rc == 2 and "model.safetensors: not a regular file (a directory)" in err,
      "weights directory: " + err)

# ---- 6. strict JSONL ------------------------------------------------------------------------
good = open(DATA).read().splitlines()
for what, line, want in (
        ("two objects", good[0] + good[1], "trailing content after the JSON value"),
        ("duplicate key", good[0][:-1] + ', "prompt": [1]}', "duplicate key 'prompt'")):
    p = S("j.jsonl")
    open(p, "w").write("\n".join(good[:2] + [line] + good[2:]) + "\n")
    rc, err = run(["--out", "jl"], data=p)
    check(rc == 2 and "%s:3: error: %s" % (p, want) in err, "data %s: %s" % (what, err))
    open(p, "w").write('{"prompt":[1,5],"answer":[7]}\n' + {
        "two objects": '{"prompt":[1],"answer":[2]} {"prompt":[1],"answer":[2]}',
        "duplicate key": '{"prompt":[1],"answer":[2],"answer":[3]}'}[what] + "\n")
    rc, err = run(["--out", "jl"], evalset=p)
    check(rc == 2 and "%s:2: error: " % p in err and (want.split("'")[0]) in err,
          "eval %s: %s" % (what, err))
check(not os.path.exists(S("jl")), "no run directory after bad JSONL")

# ---- 7. metric lines whole or not at all ------------------------------------------------------
shutil.copytree(S("base"), S("mt"))
shutil.rmtree(S("mt", "ckpt-6"))
with open(S("mt", "metrics.jsonl"), "a") as f:
    f.write('{"step":7,"loss":0.5')  # torn by a crash: no newline
rc, err = run(["--resume", "mt", "--steps", "6"])
raw = open(S("mt", "metrics.jsonl")).read()
check(rc == 0 and raw.endswith("\n") and [json.loads(x)["step"] for x in raw.splitlines()] ==
      list(range(0, 7)), "a torn last line is dropped on resume: %r" % raw[-200:])

# ---- 8. model configs before step 1 -------------------------------------------------------------
def model_with(name, **kv):
    d = S(name)
    shutil.copytree(MODEL, d)
    c = json.load(open(os.path.join(d, "config.json")))
    c.update(kv)
    open(os.path.join(d, "config.json"), "w").write(json.dumps(c))
    return d


for name, kv, want in (
        ("win1", {"model_type": "mistral", "sliding_window": 1}, "'sliding_window' must be at least 2"),
        ("win4", {"model_type": "mistral", "sliding_window": 4},
         "config.json: error: 'sliding_window' = 4 is shorter than the longest sequence"),
        ("eps0", {"rms_norm_eps": 0}, "'rms_norm_eps' must be positive"),
        ("kv3", {"num_key_value_heads": 3}, "not a multiple of num_key_value_heads"),
        ("theta", {"rope_theta": -1}, "'rope_theta' must be positive"),
        ("vocab0", {"vocab_size": 0}, "'vocab_size' must be positive")):
    rc, err = run(["--out", "cf"], model=model_with(name, **kv))
    check(rc == 2 and want in err and "config.json" in err and not os.path.exists(S("cf")),
          "config %s: %s" % (name, err))

sys.exit(pycheck.finish("train_reliability"))
