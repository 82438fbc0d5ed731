#!/usr/bin/env python3
"""Every example builds and trains: `poc build` (fused and --unfused) of examples/NAME.po,
then a few optimizer steps on the bundled tiny model and data, run from the repository
root (the examples' paths are relative to it). Both binaries must finish, write
metrics.jsonl with finite losses, the .po source in the run directory, and give the same
loss and grad_norm on every logged step within float32 rounding (the kernels are double;
the model runs in float, and the unfused head sums the same logits in another order).

usage: train_check.py --poc POC --root REPO [--steps N] NAME ...
"""
import argparse
import json
import math
import os
import subprocess
import sys
import tempfile

REL = 2e-4   # float32 forward/backward through a different head, over a few steps


def metrics(path):
    rows = []
    with open(path) as f:
        for line in f:
            line = line.strip()
            if line:
                rows.append(json.loads(line))
    return [r for r in rows if "loss" in r and "step" in r]


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--poc", required=True)
    ap.add_argument("--root", required=True)
    ap.add_argument("--steps", type=int, default=2)
    ap.add_argument("names", nargs="+")
    a = ap.parse_args()
    env = dict(os.environ, ASAN_OPTIONS="detect_leaks=0", OMP_NUM_THREADS="2")
    fails = 0
    with tempfile.TemporaryDirectory(prefix="poc-train-") as tmp:
        for name in a.names:
            po = os.path.join("examples", name + ".po")
            runs = {}
            for mode in ("fused", "unfused"):
                binary = os.path.join(tmp, f"{name}-{mode}")
                cmd = [a.poc, "build", po, "-o", binary] + (["--unfused"] if mode == "unfused" else [])
                r = subprocess.run(cmd, cwd=a.root, capture_output=True, text=True, env=env)
                if r.returncode:
                    print(f"FAIL {name} ({mode}): poc build:\n{r.stderr[-3000:]}")
                    fails += 1
                    continue
                out = os.path.join(tmp, f"{name}-{mode}-run")
                r = subprocess.run([binary, "--steps", str(a.steps), "--out", out], cwd=a.root,
                                   capture_output=True, text=True, env=env, timeout=600)
                if r.returncode:
                    print(f"FAIL {name} ({mode}): training exited {r.returncode}:\n{r.stderr[-3000:]}")
                    fails += 1
                    continue
                mpath = os.path.join(out, "metrics.jsonl")
                if not os.path.exists(mpath):
                    print(f"FAIL {name} ({mode}): no metrics.jsonl in the run directory")
                    fails += 1
                    continue
                rows = metrics(mpath)
                if len(rows) < 1 or not all(isinstance(r["loss"], (int, float)) and math.isfinite(r["loss"])
                                            for r in rows):
                    print(f"FAIL {name} ({mode}): missing or non-finite losses: {rows}")
                    fails += 1
                    continue
                srcs = [f for f in os.listdir(out) if f.endswith(".po")]
                if not srcs or open(os.path.join(out, srcs[0])).read() != open(os.path.join(a.root, po)).read():
                    print(f"FAIL {name} ({mode}): the run directory lacks the .po source it was built from")
                    fails += 1
                runs[mode] = rows
            if len(runs) < 2:
                continue
            fu, un = runs["fused"], runs["unfused"]
            if len(fu) != len(un):
                print(f"FAIL {name}: {len(fu)} logged steps fused, {len(un)} unfused")
                fails += 1
                continue
            ok = True
            for x, y in zip(fu, un):
                for key in ("loss", "grad_norm"):
                    if key not in x:
                        continue
                    u, v = x[key], y.get(key)
                    if v is None or abs(u - v) > REL * max(abs(u), abs(v), 1e-6):
                        print(f"FAIL {name}: step {x['step']} {key}: fused {u!r}, unfused {v!r}")
                        ok = False
            fails += not ok
            if ok:
                print(f"ok: {name}: {len(fu)} steps, loss {fu[0]['loss']:.6g} -> {fu[-1]['loss']:.6g}, "
                      f"fused and unfused agree")
    print(f"train_check: {len(a.names)} example(s), {fails} failure(s)")
    return 1 if fails else 0


if __name__ == "__main__":
    sys.exit(main())
