#!/usr/bin/env python3
"""Builds examples and trains each two steps on the tiny model: the binary exits 0,
metrics.jsonl has steps 1 and 2 with a finite loss and every report the file declares,
and train.json records the file's data order.

For a file with a `sequence` declaration and order = sequential (kto.po), a copy of it
that also reports the summed log-probs of its response and of the declared sequence is
trained one step: before the first update the policy is the shipped model, so the
reports (batch means) must be the means over the file's first `batch` lines of what
`poc logp --field ...` gives for those lines: the declared sequence is read, packed after
the prompt and scored like the others, and the data is visited in file order.

usage: train_steps.py --poc POC --root REPO --scratch DIR FILE.po...
"""

import argparse
import json
import math
import os
import re
import shutil
import subprocess
import sys

sys.dont_write_bytecode = True
sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
from pycheck import check, finish  # noqa: E402


def check_sequence(poc, root, env, po, src, seqs, settings, work):
    data = re.search(r'points\("([^"]+)"\)', src).group(1)
    extra = "".join(f"\nreport check/{q} = sum(logp(policy, {q}))" for q in seqs + ["response"])
    copy = os.path.join(work, "seqcheck.po")
    with open(copy, "w") as f:
        f.write(src.replace("\ntrain {", extra + "\ntrain {", 1))
    binary, out = os.path.join(work, "seqcheck"), os.path.join(work, "seqcheck-run")
    r = subprocess.run([poc, "build", copy, "-o", binary], cwd=root, capture_output=True,
                       text=True, timeout=300, env=env)
    if not check(r.returncode == 0, f"{po} + reports: poc build exit {r.returncode}:\n{r.stderr}"):
        return
    r = subprocess.run([binary, "--backend", "cpu", "--steps", "1", "--out", out], cwd=root,
                       capture_output=True, text=True, timeout=600, env=env)
    if not check(r.returncode == 0, f"{po} + reports: 1 step exit {r.returncode}:\n{r.stderr}"):
        return
    with open(os.path.join(out, "metrics.jsonl")) as f:
        m = [x for x in map(json.loads, f) if x.get("step") == 1][0]
    B = settings["batch"]
    for q in seqs + ["response"]:
        r = subprocess.run([poc, "logp", os.path.join(root, "examples", "tiny"),
                            os.path.join(root, data), "--field", q, "--backend", "cpu"],
                           capture_output=True, text=True, timeout=300, env=env)
        if not check(r.returncode == 0, f"poc logp --field {q}: exit {r.returncode}: {r.stderr}"):
            continue
        sums = [json.loads(x)[q]["sum"] for x in r.stdout.splitlines() if x.startswith("{")]
        want = math.fsum(sums[:B]) / B
        got = m.get(f"check/{q}")
        check(got is not None and abs(got - want) <= 1e-4 * abs(want),
              f"{po}: step 1 mean S(policy, {q}) over the first {B} lines: training "
              f"{got!r}, poc logp {want!r}")
        print(f"{po}: step 1 mean S(policy, {q}) over lines 1..{B}: training {got:.6f}, "
              f"poc logp {want:.6f}")


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--poc", required=True)
    ap.add_argument("--root", required=True)
    ap.add_argument("--scratch", required=True)
    ap.add_argument("files", nargs="+")
    a = ap.parse_args()
    poc = os.path.abspath(a.poc)
    env = dict(os.environ, OMP_NUM_THREADS="1", OMP_WAIT_POLICY="PASSIVE")
    for po in a.files:
        name = os.path.splitext(os.path.basename(po))[0]
        src = open(os.path.join(a.root, po)).read()
        reports = re.findall(r"^report\s+([\w/]+)\s*=", src, re.M)
        order = "sequential" if re.search(r"\border\s*=\s*sequential\b", src) else "shuffle"
        work = os.path.join(os.path.abspath(a.scratch), name)
        shutil.rmtree(work, ignore_errors=True)
        os.makedirs(work)
        binary, out = os.path.join(work, "bin"), os.path.join(work, "run")
        r = subprocess.run([poc, "build", po, "-o", binary], cwd=a.root, capture_output=True,
                           text=True, timeout=300, env=env)
        if not check(r.returncode == 0, f"{po}: poc build exit {r.returncode}:\n{r.stderr}"):
            continue
        r = subprocess.run([binary, "--backend", "cpu", "--steps", "2", "--out", out],
                           cwd=a.root, capture_output=True, text=True, timeout=600, env=env)
        if not check(r.returncode == 0, f"{po}: 2 steps exit {r.returncode}:\n{r.stderr}"):
            continue
        with open(os.path.join(out, "metrics.jsonl")) as f:
            steps = {m["step"]: m for m in map(json.loads, f) if "loss" in m}
        check(sorted(steps) == [1, 2], f"{po}: metric lines for steps {sorted(steps)}")
        for s, m in sorted(steps.items()):
            check(isinstance(m["loss"], (int, float)) and math.isfinite(m["loss"]),
                  f"{po}: step {s} loss {m['loss']!r}")
            missing = [n for n in reports if n not in m]
            check(not missing, f"{po}: step {s} lacks the reports {missing}")
        with open(os.path.join(out, "train.json")) as f:
            settings = json.load(f)
        check(settings.get("order") == order,
              f"{po}: train.json records order {settings.get('order')!r}, the file {order!r}")
        seqs = re.findall(r"^sequence\s+(\w+)", src, re.M)
        if seqs and order == "sequential":
            check_sequence(poc, a.root, env, po, src, seqs, settings, work)
        last = steps.get(2, {})
        print(f"{name}: built, 2 steps: loss {last.get('loss')!r}, {len(reports)} reports, "
              f"order {order}")
    return finish("trl_cpo_train_steps")


if __name__ == "__main__":
    sys.exit(main())
