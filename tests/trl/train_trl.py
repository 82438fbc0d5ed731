#!/usr/bin/env python3
"""Training binaries of examples/trl files: `poc build` (fused and --unfused), a few
optimizer steps on the bundled tiny model and data, run from the repository root. Both
must finish with finite losses and TRL's metric names in metrics.jsonl, agree on loss,
grad_norm and every metric within float32 rounding, and start where DPO starts: at step 1
the policy is the reference, so every rewards/* metric is 0 up to float32 noise.

usage: train_trl.py --poc POC --root REPO [--steps N] NAME ...   (NAME: dpo_aot, ...)
"""
import argparse
import json
import math
import os
import subprocess
import sys
import tempfile

sys.dont_write_bytecode = True
sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
from pycheck import check, finish  # noqa: E402

REL = 2e-4    # float32 forward/backward through a different head, over a few steps
METRICS = ("rewards/chosen", "rewards/rejected", "rewards/margins", "rewards/accuracies",
           "logps/chosen", "logps/rejected")


def rows_of(path):
    with open(path) as f:
        rows = [json.loads(line) for line in f if line.strip()]
    return [r for r in rows if "loss" in r and "step" in r]


def near(a, b):
    return abs(a - b) <= REL * max(abs(a), abs(b), 1.0)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--poc", required=True)
    ap.add_argument("--root", required=True)
    ap.add_argument("--steps", type=int, default=2)
    ap.add_argument("names", nargs="+")
    a = ap.parse_args()
    env = dict(os.environ, ASAN_OPTIONS="detect_leaks=0")
    with tempfile.TemporaryDirectory(prefix="poc-trl-train-") as tmp:
        for name in a.names:
            po = os.path.join("examples", "trl", name + ".po")
            runs = {}
            for mode in ("fused", "unfused"):
                binary = os.path.join(tmp, f"{name}-{mode}")
                cmd = [a.poc, "build", po, "-o", binary] + (["--unfused"] if mode == "unfused" else [])
                r = subprocess.run(cmd, cwd=a.root, capture_output=True, text=True, env=env)
                if not check(r.returncode == 0, f"{name} ({mode}): poc build:\n{r.stderr[-3000:]}"):
                    continue
                out = os.path.join(tmp, f"{name}-{mode}-run")
                r = subprocess.run([binary, "--steps", str(a.steps), "--out", out, "--backend", "cpu"],
                                   cwd=a.root, capture_output=True, text=True, env=env, timeout=600)
                if not check(r.returncode == 0, f"{name} ({mode}): training exited {r.returncode}:\n"
                             f"{r.stderr[-3000:]}"):
                    continue
                rows = rows_of(os.path.join(out, "metrics.jsonl"))
                ok = check(len(rows) == a.steps, f"{name} ({mode}): {len(rows)} logged steps, "
                           f"wanted {a.steps}")
                for row in rows:
                    for k in ("loss", "grad_norm") + METRICS:
                        ok &= check(isinstance(row.get(k), (int, float)) and math.isfinite(row[k]),
                                    f"{name} ({mode}) step {row['step']}: {k} = {row.get(k)!r}")
                if ok and rows:
                    for k in ("rewards/chosen", "rewards/rejected", "rewards/margins"):
                        check(abs(rows[0][k]) < 1e-4, f"{name} ({mode}): {k} at step 1 is "
                              f"{rows[0][k]!r}, not 0 (the policy is the reference)")
                    runs[mode] = rows
            if len(runs) == 2:
                for fu, un in zip(runs["fused"], runs["unfused"]):
                    for k in ("loss", "grad_norm") + METRICS:
                        check(near(fu[k], un[k]), f"{name} step {fu['step']}: {k} fused {fu[k]!r} "
                              f"unfused {un[k]!r}")
    return finish("trl.train")


if __name__ == "__main__":
    sys.exit(main())
