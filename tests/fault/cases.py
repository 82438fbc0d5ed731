#!/usr/bin/env python3
"""Faults around a training run that poc must meet with a clear message, or recover
from, without losing or changing a checkpoint.

  cases.py cache --poc POC --root ROOT --scratch DIR
      poc run's cache: truncated, emptied, altered and unsealed entries are named in one
      line, removed and rebuilt; temporaries of dead builds are removed and live ones
      kept; a different poc executable gets its own entry; concurrent runs all succeed.
  cases.py input --poc POC --root ROOT --scratch DIR
      the .po input must be a regular file: a FIFO, a directory and devices are refused
      by name, at once, with exit 2, by check, graph, build, run and probe.
"""
import argparse
import hashlib
import os
import re
import shutil
import socket
import subprocess
import sys
import time

ap = argparse.ArgumentParser()
ap.add_argument("mode", choices=("cache", "input"))
ap.add_argument("--poc", required=True)
ap.add_argument("--root", required=True)
ap.add_argument("--scratch", required=True)
a = ap.parse_args()

sys.dont_write_bytecode = True  # nothing written into the source tree
sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
import pycheck  # noqa: E402  (tests/pycheck.py: the pass/fail tally)
from pycheck import check  # noqa: E402


work = os.path.abspath(a.scratch)
shutil.rmtree(work, ignore_errors=True)
os.makedirs(work)
CACHE = os.path.join(work, "cache")
env = dict(os.environ, POC_CACHE_DIR=CACHE, OMP_NUM_THREADS="1", OPENBLAS_NUM_THREADS="1")
env.pop("POC_KEEP_C", None)


def poc(*args, timeout=120, exe=None, extra=None):
    e = dict(env, **(extra or {}))
    p = subprocess.run([exe or a.poc] + list(args), cwd=work, env=e, capture_output=True,
                       text=True, timeout=timeout)
    return p.returncode, p.stderr


def sha(path):
    with open(path, "rb") as f:
        return hashlib.sha256(f.read()).hexdigest()


def ckpts(run):
    out = {}
    for d in sorted(os.listdir(run)):
        if re.fullmatch(r"ckpt-\d+", d):
            for f in sorted(os.listdir(os.path.join(run, d))):
                out[d + "/" + f] = sha(os.path.join(run, d, f))
    return out


# dpo.po with absolute paths, 48 pairs, a checkpoint every step
with open(os.path.join(a.root, "examples", "dpo.po")) as f:
    src = f.read()
with open(os.path.join(a.root, "examples", "data", "pairs.jsonl")) as f:
    pairs = f.readlines()[:48]
with open(os.path.join(work, "pairs.jsonl"), "w") as f:
    f.writelines(pairs)
src = src.replace('"examples/data/pairs.jsonl"', '"%s/pairs.jsonl"' % work)
src = src.replace('"examples/', '"%s/examples/' % a.root)
src = re.sub(r"train \{.*\}", """train {
  lr = 2e-5; batch = 4; micro_batch = 4; max_len = 32; seed = 1
  steps = 3; ckpt_every = 1
}""", src, flags=re.S)
PO = os.path.join(work, "dpo.po")
with open(PO, "w") as f:
    f.write(src)

# a run directory with two checkpoints, made through poc run itself
rc, err = poc("run", PO, "--backend", "cpu", "--out", "D", "--steps", "2")
check(rc == 0, "poc run trains: " + err)
D = os.path.join(work, "D")
before = ckpts(D)
check(sorted({k.split("/")[0] for k in before}) == ["ckpt-1", "ckpt-2"], "two checkpoints: %s" % before)


def unchanged(what):
    now = ckpts(D)
    check(all(now.get(k) == v for k, v in before.items()),
          "%s: the earlier checkpoints are all there, unchanged" % what)


def entries():
    return sorted(f for f in os.listdir(CACHE) if ".tmp-" not in f)


if a.mode == "cache":
    check(len(entries()) == 1, "one cache entry: %s" % entries())
    ENTRY = os.path.join(CACHE, entries()[0])
    rc, err = poc("run", PO, "--help")
    check(rc == 0 and "poc run:" not in err, "a sound entry runs as it is: " + err)

    def damage(name, how, resume=False):
        size = os.path.getsize(ENTRY)
        with open(ENTRY, "r+b") as f:
            how(f, size)
        if resume:
            rc, err = poc("run", PO, "--backend", "cpu", "--resume", "D", "--steps", "3")
        else:
            rc, err = poc("run", PO, "--help")
        lines = [l for l in err.splitlines() if l.startswith("poc run:")]
        check(rc == 0, "%s: the run goes on after a rebuild (exit %d): %s" % (name, rc, err))
        check(len(lines) == 2 and "is damaged" in lines[0] and ENTRY in lines[0] and
              "removing it and building again" in lines[0] and "built" in lines[1],
              "%s: one line names the damage, then the rebuild: %s" % (name, lines))
        print("  %s: %s" % (name, lines[0] if lines else err.strip()))
        rc, err = poc("run", PO, "--help")
        check(rc == 0 and "poc run:" not in err, "%s: the rebuilt entry is sound: %s" % (name, err))

    def truncate_half(f, size):
        f.truncate(size // 2)

    def empty(f, size):
        f.truncate(0)

    def flip(f, size):
        f.seek(size // 3)
        b = f.read(1)
        f.seek(size // 3)
        f.write(bytes([b[0] ^ 0x40]))

    def unseal(f, size):
        f.truncate(size - 24)  # the ELF image intact, its record gone

    damage("truncated", truncate_half)
    damage("emptied", empty)
    damage("one byte changed", flip)
    damage("record removed", unseal)
    damage("truncated, then a resume", truncate_half, resume=True)
    unchanged("a resume through a rebuilt entry")
    check("ckpt-3/model.safetensors" in ckpts(D), "the resume went on to ckpt-3")

    # temporaries of interrupted builds
    h = 0xcbf29ce484222325
    for c in socket.gethostname().encode():
        h = ((h ^ c) * 0x100000001b3) & 0xFFFFFFFFFFFFFFFF
    me = "%08x" % (h & 0xFFFFFFFF)
    dead = subprocess.Popen(["true"])
    dead.wait()
    tmps = {
        "dead": ENTRY + ".tmp-%d-%s" % (dead.pid, me),
        "live": ENTRY + ".tmp-%d-%s" % (os.getpid(), me),
        "old": os.path.join(CACHE, "x-0123456789abcdef.tmp-1-deadbeef"),
        "foreign": os.path.join(CACHE, "x-0123456789abcdef.tmp-2-deadbeef"),
    }
    for p in tmps.values():
        with open(p, "wb") as f:
            f.write(b"\x7fELF half a binary")
    old = time.time() - 2 * 3600
    os.utime(tmps["old"], (old, old))
    rc, err = poc("run", PO, "--help")
    check(rc == 0, "poc run with temporaries about: " + err)
    check(not os.path.exists(tmps["dead"]), "the temporary of a dead build is removed")
    check(not os.path.exists(tmps["old"]), "a temporary older than an hour is removed")
    check(os.path.exists(tmps["live"]), "the temporary of a live build is kept")
    check(os.path.exists(tmps["foreign"]), "a recent temporary of another host is kept")
    for p in tmps.values():
        if os.path.exists(p):
            os.unlink(p)

    # poc's own executable is part of the key: a changed poc does not reuse binaries
    home = subprocess.run([a.poc, "--home"], capture_output=True, text=True).stdout.strip()
    other = os.path.join(work, "poc-other")
    shutil.copy2(a.poc, other)
    with open(other, "ab") as f:
        f.write(b"\0" * 16)
    rc, err = poc("run", PO, "--help", exe=other, extra={"POC_HOME": home})
    check(rc == 0 and "built" in err, "another poc executable builds its own entry: " + err)
    check(len(entries()) == 2, "two entries, one per poc: %s" % entries())

    # concurrent runs of one .po into an empty cache all succeed
    shutil.rmtree(CACHE)
    procs = [subprocess.Popen([a.poc, "run", PO, "--help"], cwd=work, env=env,
                              stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
             for _ in range(4)]
    results = [(p.wait(timeout=300), p.stderr.read()) for p in procs]
    for p in procs:
        p.stderr.close()
    check(all(rc == 0 for rc, _ in results), "4 concurrent poc runs succeed: %s" % results)
    check(len(entries()) == 1 and len(os.listdir(CACHE)) == 1,
          "one entry, no temporaries left: %s" % os.listdir(CACHE))
    rc, err = poc("run", PO, "--help")
    check(rc == 0 and "poc run:" not in err, "the entry they left is sound: " + err)

else:
    fifo = os.path.join(work, "fifo.po")
    os.mkfifo(fifo)
    dirpo = os.path.join(work, "dir.po")
    os.mkdir(dirpo)
    zero = os.path.join(work, "zero.po")
    os.symlink("/dev/zero", zero)
    bad = [(fifo, "a FIFO"), (dirpo, "a directory"), ("/dev/urandom", "a character device"),
           (zero, "a character device")]
    cmds = [["check"], ["graph"], ["build", "-o", os.path.join(work, "never")],
            ["probe", "--template"], ["run"], ["run", "--resume", "D"]]
    for path, kind in bad:
        for c in cmds:
            args = c[:1] + [path] + c[1:] if c[0] != "run" else ["run", path] + c[1:]
            t = time.time()
            try:
                rc, err = poc(*args, timeout=20)
            except subprocess.TimeoutExpired:
                check(False, "poc %s hangs on %s" % (" ".join(args), kind))
                continue
            want = "%s: error: cannot read: %s; a .po file must be a regular file" % (path, kind)
            check(rc == 2 and err.splitlines()[:1] == [want],
                  "poc %s: exit %d, %r" % (" ".join(args), rc, err))
            check(time.time() - t < 5, "poc %s answers at once" % " ".join(args))
    check(not os.path.exists(os.path.join(work, "never")), "no binary from a bad input")
    # probe's --inputs JSON is read the same way
    for path, kind in bad[:3]:
        try:
            rc, err = poc("probe", PO, "--inputs", path, timeout=20)
        except subprocess.TimeoutExpired:
            check(False, "poc probe --inputs hangs on %s" % kind)
            continue
        check(rc == 2 and "%s: error: cannot read: not a regular file" % path in err,
              "poc probe --inputs %s: exit %d, %r" % (kind, rc, err))
    unchanged("bad inputs")

sys.exit(pycheck.finish(a.mode))
