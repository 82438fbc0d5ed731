"""Data parallelism: R ranks under mpirun compute what one process computes.

For each example: `poc build`, then 8 steps as one process and as 2 and 3 ranks (Open
MPI, oversubscribed), with micro_batch = 3 so that the batch of 16 falls into micro-batches
of 3, 3, 3, 3, 3 and 1 dealt unevenly to the ranks. Per step, the loss and every report
agree to 1e-5 relative; the final weights lie within 1e-4 of the update's size (max |w_R -
w_1| <= 1e-4 · max |w_1 - w_0|); the evaluation accuracy is identical; and rank 0 alone
wrote the run (one metrics line per step, one checkpoint). A rank's error names its rank.

usage: check_dp.py --poc POC --root ROOT --scratch DIR --mpirun MPIRUN [--ranks 2,3] NAME...
"""
import argparse
import json
import os
import shutil
import struct
import subprocess
import sys

sys.dont_write_bytecode = True
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from pycheck import check, finish  # noqa: E402

ap = argparse.ArgumentParser()
ap.add_argument("--poc", required=True)
ap.add_argument("--root", required=True)
ap.add_argument("--scratch", required=True)
ap.add_argument("--mpirun", required=True)
ap.add_argument("--ranks", default="2,3")
ap.add_argument("--steps", type=int, default=8)
ap.add_argument("examples", nargs="+")
a = ap.parse_args()

ENV = dict(os.environ, OMP_NUM_THREADS="1", OMP_WAIT_POLICY="PASSIVE")
MPI = [a.mpirun, "--oversubscribe"] + (["--allow-run-as-root"] if os.geteuid() == 0 else [])
MPI += ["-x", "OMP_NUM_THREADS", "-x", "OMP_WAIT_POLICY"]
SET = ["--set", "train.micro_batch=3"]


def tensors(path):
    """A safetensors file's F32 tensors as name -> list of floats."""
    with open(path, "rb") as f:
        n = struct.unpack("<Q", f.read(8))[0]
        head = json.loads(f.read(n))
        data = f.read()
    out = {}
    for k, v in head.items():
        if k == "__metadata__" or v["dtype"] != "F32":
            continue
        b, e = v["data_offsets"]
        out[k] = struct.unpack("<%df" % ((e - b) // 4), data[b:e])
    return out


def metrics(out):
    with open(os.path.join(out, "metrics.jsonl")) as f:
        return [json.loads(line) for line in f]


def run(cmd, what):
    r = subprocess.run(cmd, cwd=a.root, env=ENV, capture_output=True, text=True, timeout=600)
    if not check(r.returncode == 0, f"{what}: exit {r.returncode}\n{r.stderr[-3000:]}"):
        return None
    return r


shutil.rmtree(a.scratch, ignore_errors=True)
os.makedirs(a.scratch)
ranks = [int(x) for x in a.ranks.split(",")]
for name in a.examples:
    binary = os.path.join(a.scratch, name)
    po = os.path.join(a.root, "examples", name + ".po")
    if not run([a.poc, "build", po, "-o", binary], f"{name}: poc build"):
        continue
    one = os.path.join(a.scratch, name + "-1")
    if not run([binary, "--steps", str(a.steps), "--out", one] + SET, f"{name}: one process"):
        continue
    m1 = metrics(one)
    w1 = tensors(os.path.join(one, f"ckpt-{a.steps}", "model.safetensors"))
    w0 = tensors(os.path.join(a.root, "examples", "tiny", "model.safetensors"))
    upd = max(abs(x - y) for k in w1 for x, y in zip(w1[k], w0[k]))
    check(upd > 0, f"{name}: the weights moved")
    for R in ranks:
        out = os.path.join(a.scratch, f"{name}-{R}")
        r = run(MPI + ["-np", str(R), binary, "--steps", str(a.steps), "--out", out] + SET,
                f"{name}: {R} ranks")
        if not r:
            continue
        check(f"MPI, {R} ranks" in r.stderr, f"{name}: {R} ranks: the run says it is "
              f"data-parallel:\n{r.stderr[-2000:]}")
        check("[rank" not in r.stderr, f"{name}: {R} ranks: other ranks said something:\n"
              f"{r.stderr[-2000:]}")
        mR = metrics(out)
        check(len(mR) == len(m1), f"{name}: {R} ranks: {len(mR)} metric lines, one process "
              f"{len(m1)} (rank 0 alone writes)")
        worst, where = 0.0, ""
        for l1, lR in zip(m1, mR):
            for k, v in l1.items():
                if k == "tokens_per_s" or not isinstance(v, (int, float)):
                    continue
                w = lR.get(k)
                if k == "eval/accuracy":
                    check(w == v, f"{name}: {R} ranks: step {l1['step']}: eval/accuracy {w} "
                          f"!= {v}")
                    continue
                if not check(isinstance(w, (int, float)), f"{name}: {R} ranks: step "
                             f"{l1['step']}: no {k}"):
                    continue
                d = abs(w - v) / max(abs(v), abs(w), 1e-30)
                if abs(w - v) > 1e-12 and d > worst:
                    worst, where = d, f"step {l1['step']} {k}: {w} vs {v}"
        check(worst <= 1e-5, f"{name}: {R} ranks: relative difference {worst:.3g} > 1e-5 at "
              f"{where}")
        ck = sorted(d for d in os.listdir(out) if d.startswith("ckpt-"))
        check(ck == [f"ckpt-{a.steps}"], f"{name}: {R} ranks: checkpoints {ck}")
        wR = tensors(os.path.join(out, f"ckpt-{a.steps}", "model.safetensors"))
        dw = max(abs(x - y) for k in w1 for x, y in zip(w1[k], wR[k]))
        check(dw <= 1e-4 * upd, f"{name}: {R} ranks: final weights differ by {dw:.3g}, "
              f"update size {upd:.3g}")
        print(f"{name}: {R} ranks: worst relative difference {worst:.3g}, weights {dw:.3g} "
              f"(update {upd:.3g})")

# a rank's error names its rank, and the other ranks do not wait for it: --resume of a
# directory that holds no run fails on every rank; rank 0's message is the plain one
if a.examples:
    binary = os.path.join(a.scratch, a.examples[0])
    r = subprocess.run(MPI + ["-np", "2", binary, "--resume", os.path.join(a.scratch, "none")],
                       cwd=a.root, env=ENV, capture_output=True, text=True, timeout=300)
    check(r.returncode != 0, "a failing run under mpirun exits non-zero")
    check("no such run directory" in r.stderr, f"rank 0's error is shown:\n{r.stderr[-2000:]}")
sys.exit(finish("dp"))
