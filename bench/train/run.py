#!/usr/bin/env python3
"""Training-step benchmark on the CPU: tokens/s and peak memory of whole training
binaries, fused vs --unfused, for DPO, SimPO, CoPO and InSPO, on the bundled tiny model
and on a ~20M-parameter random Llama (vocabulary 32k); and hoisting: DPO with the
reference log-probs cached before training vs computed every step (--no-hoist).

Each configuration is its own process (peak memory is the process's VmHWM, read from
wait4's ru_maxrss); tokens/s is the median over the logged steps after the first, from
metrics.jsonl. Runs from the repository root, since the examples name their data
relative to it. Writes bench/results/train_cpu.md.

usage: bench/train/run.py [--poc build/poc] [--steps 4] [--methods dpo,simpo,copo,inspo]
knobs: OMP_NUM_THREADS (all cores unless set), NOTE (a sentence added to the results)
"""
import argparse
import datetime
import json
import os
import platform
import re
import statistics
import subprocess
import sys
import tempfile
import time

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))


def cpu_name():
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


def measure(binary, steps, out):
    # wait4 on our own child gives that process's peak resident set
    t0 = time.time()
    pid = os.fork()
    if pid == 0:
        os.chdir(ROOT)
        fd = os.open(os.devnull, os.O_WRONLY)
        os.dup2(fd, 1)
        err = os.open(out + ".stderr", os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        os.dup2(err, 2)
        os.execv(binary, [binary, "--steps", str(steps), "--out", out])
    _, status, ru = os.wait4(pid, 0)
    wall = time.time() - t0
    if status:
        raise RuntimeError(f"{binary} failed ({status}):\n" + open(out + ".stderr").read()[-2000:])
    rows = [json.loads(l) for l in open(os.path.join(out, "metrics.jsonl")) if l.strip()]
    rows = [r for r in rows if "tokens_per_s" in r]
    tps = [r["tokens_per_s"] for r in rows[1:]] or [r["tokens_per_s"] for r in rows]
    return statistics.median(tps), wall, ru.ru_maxrss / 1024.0


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--poc", default=os.path.join(ROOT, "build", "compiler", "poc"))
    ap.add_argument("--steps", type=int, default=4)
    ap.add_argument("--methods", default="dpo,simpo,copo,inspo")
    a = ap.parse_args()
    methods = a.methods.split(",")
    rows, hoist = [], []
    with tempfile.TemporaryDirectory(prefix="poc-bench-") as tmp:
        m20 = os.path.join(tmp, "llama20m")
        subprocess.run([sys.executable, os.path.join(ROOT, "bench", "train", "make_model.py"), m20],
                       check=True, stdout=subprocess.DEVNULL)
        models = [("tiny", "examples/tiny"), ("20M, vocab 32k", m20)]
        for mname, mpath in models:
            for method in methods:
                text = open(os.path.join(ROOT, "examples", method + ".po")).read()
                text = re.sub(r'model\("examples/tiny"\)', f'model("{mpath}")', text)
                po = os.path.join(tmp, f"{method}.po")
                open(po, "w").write(text)
                res = {}
                variants = [("fused", []), ("unfused", ["--unfused"])]
                if method == "dpo":
                    variants.append(("fused, --no-hoist", ["--no-hoist"]))
                for label, flags in variants:
                    binary = os.path.join(tmp, f"{method}-{len(res)}")
                    subprocess.run([a.poc, "build", po, "-o", binary, *flags], check=True, cwd=ROOT,
                                   stdout=subprocess.DEVNULL)
                    out = os.path.join(tmp, f"run-{method}-{len(res)}-{len(rows)}")
                    res[label] = measure(binary, a.steps, out)
                    print(f"{mname:>15} {method:>6} {label:>18}: {res[label][0]:10.0f} tokens/s, "
                          f"{res[label][2]:8.1f} MiB peak", flush=True)
                rows.append((mname, method, res["fused"], res["unfused"]))
                if "fused, --no-hoist" in res:
                    hoist.append((mname, res["fused"], res["fused, --no-hoist"]))
    out = os.path.join(ROOT, "bench", "results", "train_cpu.md")
    os.makedirs(os.path.dirname(out), exist_ok=True)
    threads = os.environ.get("OMP_NUM_THREADS", str(os.cpu_count()))
    with open(out, "w") as f:
        f.write("# Training step on the CPU: fused vs unfused, and hoisting\n\n")
        f.write(f"Measured {datetime.date.today().isoformat()} on {cpu_name()} ({os.cpu_count()} "
                f"cores, OMP_NUM_THREADS={threads}), {platform.system()} {platform.release()}, "
                f"by `bench/train/run.py --steps {a.steps}`. Each cell is one process running "
                f"the example's train block (batch 16, micro-batch 8, max_len 64) for "
                f"{a.steps} optimizer steps; tokens/s is the median over the steps after the "
                f"first (metrics.jsonl), peak memory the process's VmHWM.\n\n")
        if os.environ.get("NOTE"):
            f.write(os.environ["NOTE"] + "\n\n")
        f.write("| model | method | fused tokens/s | unfused tokens/s | speed-up | fused peak MiB | unfused peak MiB |\n")
        f.write("|---|---|---:|---:|---:|---:|---:|\n")
        for mname, method, fu, un in rows:
            f.write(f"| {mname} | {method} | {fu[0]:.0f} | {un[0]:.0f} | {fu[0] / un[0]:.2f}× | "
                    f"{fu[2]:.0f} | {un[2]:.0f} |\n")
        f.write("\n## Hoisting (DPO, fused)\n\n")
        f.write("The reference's log-probs of the data depend on no trainable weight, so they are "
                "computed once before training and cached; `--no-hoist` runs the reference forward "
                "every step instead. The design expects about a quarter less time per step "
                "hoisted.\n\n")
        f.write("| model | hoisted tokens/s | every step tokens/s | time per step saved |\n|---|---:|---:|---:|\n")
        for mname, h, n in hoist:
            f.write(f"| {mname} | {h[0]:.0f} | {n[0]:.0f} | {100 * (1 - n[0] / h[0]):.0f}% |\n")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
