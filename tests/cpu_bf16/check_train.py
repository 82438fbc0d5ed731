#!/usr/bin/env python3
"""examples/dpo.po trained on the CPU in fp32 and with precision = bf16 (--set
train.precision=bf16): the bf16 run must say on its first line that it runs the cpu-bf16
device and which ISA oneDNN uses, and its losses must track the fp32 run's.

Tolerance: the bf16 run computes with a bf16 copy of the weights and bf16 activations (8
significant bits, a relative rounding of up to 2^-8 per value). On the bundled model a
response's summed log-probability moves by a few hundredths of a nat under that rounding,
and DPO's loss -log σ(β·margin) moves by at most β/4 = 0.025 per nat of margin: the
per-step losses must agree to 0.02, their mean over the run to 0.01, and the gradient
norms to 25%. The fp32 run must keep its device ("cpu") and the bf16 run must be
deterministic: a run stopped after step 4 and resumed (the compute copy is rebuilt from
the checkpoint's master weights) logs the same losses, bit for bit, as an uninterrupted one.

usage: check_train.py --poc POC --root REPO --scratch DIR [--steps N]
"""
import argparse
import json
import os
import shutil
import subprocess
import sys

sys.dont_write_bytecode = True
sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
import pycheck  # noqa: E402
from pycheck import check  # noqa: E402


def run(cmd, root):
    return subprocess.run(cmd, cwd=root, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                          text=True, timeout=600)


def losses(out):
    rows = [json.loads(l) for l in open(os.path.join(out, "metrics.jsonl"))]
    return {r["step"]: r for r in rows if "loss" in r}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--poc", required=True)
    ap.add_argument("--root", required=True)
    ap.add_argument("--scratch", required=True)
    ap.add_argument("--steps", type=int, default=8)
    a = ap.parse_args()
    shutil.rmtree(a.scratch, ignore_errors=True)
    os.makedirs(a.scratch)
    binp = os.path.join(a.scratch, "dpo")
    p = run([a.poc, "build", "examples/dpo.po", "-o", binp], a.root)
    if not check(p.returncode == 0, f"poc build: exit {p.returncode}: {p.stderr}"):
        return pycheck.finish("cpu_bf16_train")
    n = a.steps
    bf16 = ["--set", "train.precision=bf16"]
    runs = {}
    for name, extra in (("fp32", []), ("bf16", bf16)):
        out = os.path.join(a.scratch, name)
        p = run([binp, "--backend", "cpu", "--steps", str(n), "--out", out] + extra, a.root)
        if check(p.returncode == 0, f"{name} run: exit {p.returncode}: {p.stderr[-2000:]}"):
            runs[name] = (out, p.stderr)
    if len(runs) < 2:
        return pycheck.finish("cpu_bf16_train")
    first = {k: v[1].splitlines()[0] for k, v in runs.items()}
    check(first["fp32"].startswith("cpu: "), f"fp32 device line: {first['fp32']}")
    line = first["bf16"]
    check(line.startswith("cpu-bf16: ") and "oneDNN " in line and "matmul " in line and
          any(isa in line for isa in ("avx512_core_bf16", "avx512_core_amx", "avx512_core",
                                      "avx2", "avx512_core_vnni", "avx2_vnni", "sse41")),
          f"bf16 device line: {line}")
    check("note: precision" not in runs["bf16"][1], f"a precision note: {runs['bf16'][1]}")
    f, b = losses(runs["fp32"][0]), losses(runs["bf16"][0])
    check(sorted(f) == list(range(1, n + 1)) and sorted(b) == sorted(f),
          f"steps logged: {sorted(f)} / {sorted(b)}")
    worst = 0.0
    for s in sorted(f):
        if s not in b:
            continue
        d = abs(f[s]["loss"] - b[s]["loss"])
        worst = max(worst, d)
        check(d <= 0.02, f"step {s}: loss fp32 {f[s]['loss']:.6f} bf16 {b[s]['loss']:.6f}")
        gf, gb = f[s]["grad_norm"], b[s]["grad_norm"]
        check(abs(gf - gb) <= 0.25 * gf, f"step {s}: grad_norm fp32 {gf:.4f} bf16 {gb:.4f}")
    mf = sum(r["loss"] for r in f.values()) / len(f)
    mb = sum(r["loss"] for r in b.values()) / len(b)
    check(abs(mf - mb) <= 0.01, f"mean loss fp32 {mf:.6f} bf16 {mb:.6f}")
    print(f"bf16 vs fp32 over {n} steps: largest loss difference {worst:.5f}, "
          f"mean loss {mf:.5f} / {mb:.5f}")
    # stop after step 4, resume to n: the same losses as the uninterrupted bf16 run
    out = os.path.join(a.scratch, "resumed")
    p = run([binp, "--backend", "cpu", "--steps", "4", "--out", out] + bf16, a.root)
    check(p.returncode == 0, f"bf16 run to step 4: {p.stderr[-2000:]}")
    p = run([binp, "--backend", "cpu", "--steps", str(n), "--resume", out] + bf16, a.root)
    if check(p.returncode == 0, f"bf16 resume: {p.stderr[-2000:]}"):
        r = losses(out)
        for s in range(1, n + 1):
            check(s in r and r[s]["loss"] == b[s]["loss"],
                  f"resumed step {s}: {r.get(s, {}).get('loss')} vs {b[s]['loss']}")
    return pycheck.finish("cpu_bf16_train")


if __name__ == "__main__":
    sys.exit(main())
