#!/usr/bin/env python3
"""results.py — trains every example on the embedded task and writes the README's table.

For each examples/*.po: `poc run FILE --out runs/results/NAME`, then from its
metrics.jsonl the held-out exact-match accuracy before the first step and after the last,
the wall time of the run (built beforehand, so not the build), the optimizer steps, and
the mean training tokens/s. The table replaces the
text between the README's `<!-- results:begin -->` and `<!-- results:end -->` markers.

usage: tools/results.py [--poc build/poc] [--only NAME ...] [--no-readme]
"""
import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BEGIN, END = "<!-- results:begin -->", "<!-- results:end -->"


def cpu_name():
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


def run_one(poc, name):
    out = os.path.join(ROOT, "runs", "results", name)
    shutil.rmtree(out, ignore_errors=True)
    # build (and run one step) first, so the timed run is not the build
    b = subprocess.run([poc, "run", os.path.join("examples", name + ".po"), "--steps", "1",
                        "--out", out + ".build"], cwd=ROOT, capture_output=True, text=True)
    shutil.rmtree(out + ".build", ignore_errors=True)
    t0 = time.monotonic()
    p = subprocess.run([poc, "run", os.path.join("examples", name + ".po"), "--out", out],
                       cwd=ROOT, capture_output=True, text=True)
    wall = time.monotonic() - t0
    if p.returncode != 0:
        sys.exit("results.py: %s failed (exit %d):\n%s%s" % (name, p.returncode, b.stderr,
                                                               p.stderr[-2000:]))
    with open(os.path.join(out, "metrics.jsonl")) as f:
        m = [json.loads(line) for line in f if line.strip()]
    ev = [x for x in m if "eval/accuracy" in x]
    steps = [x for x in m if "loss" in x]
    tps = [x["tokens_per_s"] for x in steps if "tokens_per_s" in x]
    return {"name": name, "before": ev[0]["eval/accuracy"], "after": ev[-1]["eval/accuracy"],
            "steps": steps[-1]["step"] if steps else 0, "wall": wall,
            "tokens_per_s": sum(tps) / len(tps) if tps else 0.0,
            "loss": steps[-1]["loss"] if steps else float("nan")}


def table(rows):
    n_eval = sum(1 for _ in open(os.path.join(ROOT, "examples", "data", "eval.jsonl")))
    lines = [
        "Every example trained on the embedded task from the SFT model, as shipped",
        "(`tools/results.py`, %s, %d cores, %s): exact-match accuracy of greedy answers on"
        % (cpu_name(), os.cpu_count() or 0, time.strftime("%Y-%m-%d")),
        "the %d held-out prompts before the first step and after the last, the run's wall" % n_eval,
        "time (training and both evaluations, not the build) and mean training tokens/s.",
        "",
        "| example | accuracy before | accuracy after | steps | time | tokens/s |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        lines.append("| %s.po | %.1f%% | %.1f%% | %d | %.0f s | %s |" % (
            r["name"], 100 * r["before"], 100 * r["after"], r["steps"], r["wall"],
            "{:,.0f}".format(r["tokens_per_s"])))
    return "\n".join(lines) + "\n"


def main(argv):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--poc", default=os.path.join(ROOT, "build", "poc"))
    ap.add_argument("--only", nargs="*", help="example names (default: every examples/*.po)")
    ap.add_argument("--no-readme", action="store_true", help="print the table only")
    a = ap.parse_args(argv)
    if not os.access(a.poc, os.X_OK):
        sys.exit("results.py: %s not found; build poc first" % a.poc)
    # the table measures task accuracy, which needs an evaluation set: reward models have
    # none (tools/chain.py measures what their scores do for other objectives)
    names = a.only or sorted(f[:-3] for f in os.listdir(os.path.join(ROOT, "examples"))
                             if f.endswith(".po") and "prompts(" in
                             open(os.path.join(ROOT, "examples", f)).read())
    rows = []
    for n in names:
        r = run_one(os.path.abspath(a.poc), n)
        print("%-12s %.3f -> %.3f  %4d steps  %5.1f s  %8.0f tok/s" % (
            n, r["before"], r["after"], r["steps"], r["wall"], r["tokens_per_s"]), flush=True)
        rows.append(r)
    t = table(rows)
    if a.no_readme or a.only:
        print(t)
        return 0
    path = os.path.join(ROOT, "README.md")
    with open(path) as f:
        text = f.read()
    if BEGIN not in text or END not in text:
        sys.exit("results.py: README.md has no %s ... %s markers" % (BEGIN, END))
    head, rest = text.split(BEGIN, 1)
    _, tail = rest.split(END, 1)
    with open(path + ".tmp", "w") as f:
        f.write(head + BEGIN + "\n" + t + END + tail)
    os.replace(path + ".tmp", path)
    print("wrote the table into README.md")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
