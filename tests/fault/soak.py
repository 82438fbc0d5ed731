#!/usr/bin/env python3
"""A kill -9 soak of a training binary: examples/dpo.po, built once, with a checkpoint
after every step, is killed with SIGKILL at random moments and continued each time, by
--resume when a checkpoint exists and by the same command otherwise. At the end the
weights and optimizer state must be byte-identical to an uninterrupted run's, and at no
point may a checkpoint be half-written (every ckpt-N holds its four files, and each
parses), lost, or changed after it was written.

usage: soak.py --poc POC --root ROOT --scratch DIR [--kills N] [--seed S]

The kills are spread over several runs (campaigns) so that each is short; the soak goes
on until N kills have landed. A run killed before its first checkpoint must restart
with the very command that started it.
"""
import argparse
import hashlib
import json
import os
import random
import re
import shutil
import signal
import struct
import subprocess
import sys
import time

ap = argparse.ArgumentParser()
ap.add_argument("--poc", required=True)
ap.add_argument("--root", required=True)
ap.add_argument("--scratch", required=True)
ap.add_argument("--kills", type=int, default=50)
ap.add_argument("--seed", type=int, default=int(time.time()))
a = ap.parse_args()

STEPS = 12
FILES = ("config.json", "model.safetensors", "optimizer.safetensors", "state.json")
failures = []


def fail(msg):
    failures.append(msg)
    print("FAIL:", msg, file=sys.stderr)


def sha(path):
    with open(path, "rb") as f:
        return hashlib.sha256(f.read()).hexdigest()


def st_ok(path):
    """A safetensors file: header length, JSON header, and exactly the data it names."""
    with open(path, "rb") as f:
        data = f.read()
    if len(data) < 8:
        return False
    n = struct.unpack("<Q", data[:8])[0]
    if 8 + n > len(data):
        return False
    h = json.loads(data[8:8 + n])
    end = max((v["data_offsets"][1] for k, v in h.items() if k != "__metadata__"), default=0)
    return 8 + n + end == len(data)


def checkpoints(run):
    """{name: {file: sha}} of every ckpt-N, failing on any that is incomplete."""
    out = {}
    if not os.path.isdir(run):
        return out
    for d in sorted(os.listdir(run)):
        if not re.fullmatch(r"ckpt-\d+", d):
            continue
        p = os.path.join(run, d)
        missing = [f for f in FILES if not os.path.isfile(os.path.join(p, f))]
        if missing:
            fail("%s lacks %s" % (p, ", ".join(missing)))
            continue
        try:
            with open(os.path.join(p, "state.json")) as f:
                s = json.load(f)
            with open(os.path.join(p, "config.json")) as f:
                json.load(f)
            ok = s["step"] == int(d[5:]) and all(
                st_ok(os.path.join(p, f)) for f in ("model.safetensors", "optimizer.safetensors"))
        except (ValueError, KeyError, TypeError) as e:
            ok = False
            print("  %s: %s" % (p, e), file=sys.stderr)
        if not ok:
            fail("%s does not parse" % p)
            continue
        out[d] = {f: sha(os.path.join(p, f)) for f in FILES}
    return out


os.makedirs(a.scratch, exist_ok=True)
work = os.path.abspath(a.scratch)
for d in os.listdir(work):
    shutil.rmtree(os.path.join(work, d), ignore_errors=True)

# dpo.po with absolute data paths, a short run and a checkpoint after every step
with open(os.path.join(a.root, "examples", "dpo.po")) as f:
    src = f.read()
src = src.replace('"examples/', '"%s/examples/' % a.root)
# the pairs the run reads and no more: start-up (the reference model's pass over the
# data) stays short, and most kills land in training and checkpointing
with open(os.path.join(a.root, "examples", "data", "pairs.jsonl")) as f:
    pairs = f.readlines()[:4 * STEPS]
with open(os.path.join(work, "pairs.jsonl"), "w") as f:
    f.writelines(pairs)
src = src.replace('"%s/examples/data/pairs.jsonl"' % a.root, '"pairs.jsonl"')
src, n = re.subn(r"train \{.*\}", """train {
  lr = 2e-5; schedule = cosine; warmup = 0.1
  batch = 4; micro_batch = 4; epochs = 1; max_len = 32
  clip = 1.0; precision = fp32; seed = 1
  steps = %d; ckpt_every = 1; log_every = 1
}""" % STEPS, src, flags=re.S)
assert n == 1, "dpo.po has no train block to edit"
po = os.path.join(work, "soak.po")
with open(po, "w") as f:
    f.write(src)
binary = os.path.join(work, "soak")
subprocess.run([a.poc, "build", po, "-o", binary], check=True, stdout=subprocess.DEVNULL)

env = dict(os.environ, OMP_NUM_THREADS="1", OPENBLAS_NUM_THREADS="1")


def start(args):
    return subprocess.Popen([binary, "--backend", "cpu"] + args, cwd=work, env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)


t0 = time.time()
p = start(["--out", "ref"])
_, err = p.communicate(timeout=300)
if p.returncode != 0:
    sys.exit("the uninterrupted run failed:\n" + err)
T = time.time() - t0
ref = checkpoints(os.path.join(work, "ref"))
final = "ckpt-%d" % STEPS
if final not in ref:
    sys.exit("the uninterrupted run left no %s" % final)
print("soak: uninterrupted run %.2f s; seed %d" % (T, a.seed))

# A run killed after it made its run directory and before its first checkpoint: the
# same command must start it again. The random kills below land there too, but not
# every time.
early = False
for attempt in range(20):
    run = os.path.join(work, "early%d" % attempt)
    p = start(["--out", os.path.basename(run)])
    while p.poll() is None and not os.path.exists(os.path.join(run, "metrics.jsonl")):
        time.sleep(0.0005)
    if p.poll() is None and not os.path.exists(os.path.join(run, "ckpt-1")):
        p.send_signal(signal.SIGKILL)
        p.communicate()
        if not checkpoints(run):
            early = True
            break
    p.kill()
    p.communicate()
if not early:
    fail("could not kill a run between its start and its first checkpoint")
else:
    p = start(["--out", os.path.basename(run)])
    _, err = p.communicate(timeout=300)
    if p.returncode != 0:
        fail("a run killed before its first checkpoint does not restart with the same "
             "command (exit %d): %s" % (p.returncode, err.strip().splitlines()[-1:]))
    elif checkpoints(run).get(final) != ref[final]:
        fail("the restarted run's %s differs from the uninterrupted run's" % final)

rng = random.Random(a.seed)
kills = campaigns = restarts_fresh = resumes = 0
while kills < a.kills:
    campaigns += 1
    run = os.path.join(work, "c%d" % campaigns)
    first = ["--out", "c%d" % campaigns]
    seen = {}  # checkpoints as first seen: they must never change or vanish
    done = False
    for attempt in range(200):
        before = checkpoints(run)
        args = ["--resume", "c%d" % campaigns] if before else first
        if before:
            resumes += 1
        elif attempt:
            restarts_fresh += 1
        p = start(args)
        # a random moment: anywhere from start-up to past the end of a whole run
        delay = rng.uniform(0, T * 0.8)
        try:
            _, err = p.communicate(timeout=delay)
            finished = True
        except subprocess.TimeoutExpired:
            finished = False
        if not finished:
            p.send_signal(signal.SIGKILL)
            p.communicate()
            if p.returncode == -signal.SIGKILL:
                kills += 1
            finished = p.returncode == 0
            err = ""
        after = checkpoints(run)
        for name, h in seen.items():
            if after.get(name) != h:
                fail("campaign %d: %s %s after a kill" % (
                    campaigns, name, "vanished" if name not in after else "changed"))
        for name, h in after.items():
            seen.setdefault(name, h)
        if p.returncode not in (0, -signal.SIGKILL):
            if not before and "already holds a run" in err:
                fail("campaign %d: a run killed before its first checkpoint does not restart "
                     "with the same command: %s" % (campaigns, err.strip().splitlines()[-1]))
            fail("campaign %d: %s exited %d:\n%s" % (campaigns, " ".join(args), p.returncode, err))
            break
        if p.returncode == 0:
            done = True
            break
    if not done:
        fail("campaign %d never finished" % campaigns)
        break
    got = checkpoints(run)
    for f in ("model.safetensors", "optimizer.safetensors", "state.json"):
        if got.get(final, {}).get(f) != ref[final][f]:
            fail("campaign %d: %s/%s differs from the uninterrupted run's" % (campaigns, final, f))
    if time.time() - t0 > 170:
        fail("out of time after %d kills" % kills)
        break

print("soak: %d kills in %d campaigns (%d resumes, %d restarts before a first checkpoint), "
      "%.1f s" % (kills, campaigns, resumes, restarts_fresh, time.time() - t0))
if failures:
    print("soak: %d failures (seed %d)" % (len(failures), a.seed))
    sys.exit(1)
print("soak: final weights byte-identical in every campaign; no checkpoint half-written, "
      "lost or changed")
