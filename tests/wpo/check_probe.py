#!/usr/bin/env python3
"""`poc probe` on examples/trl/dpo_sigmoid_wpo.po: `--template` names the logsumsq keys and
is accepted back as input, and an input missing one is an error naming the key and the
line that reads it. (The values and gradients against TRL's own DPOTrainer with
use_weighting=True are a row of tests/trl/check_trl.py.)"""
import argparse
import json
import os
import subprocess
import sys

sys.dont_write_bytecode = True
sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
import pycheck  # noqa: E402


def probe_io(a, po):
    """`--template` names the logsumsq keys and round-trips; a missing one is an error that
    names it and the line that reads it."""
    p = subprocess.run([a.poc, "probe", po, "--template"], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                       text=True, timeout=60)
    if not pycheck.check(p.returncode == 0, f"--template: exit {p.returncode}: {p.stderr}"):
        return
    t = json.loads(p.stdout)
    pycheck.check(sorted(t.get("logsumsq", {})) == ["policy/chosen", "policy/rejected"],
                  f"--template logsumsq keys: {sorted(t.get('logsumsq', {}))}")
    path = os.path.join(a.scratch, "template.json")
    with open(path, "w") as f:
        f.write(p.stdout)
    p = subprocess.run([a.poc, "probe", po, "--inputs", path], stdout=subprocess.PIPE,
                       stderr=subprocess.PIPE, text=True, timeout=60)
    pycheck.check(p.returncode == 0 and isinstance(json.loads(p.stdout or "{}").get("loss"), float),
                  f"the template as input: exit {p.returncode}: {p.stderr}")
    del t["logsumsq"]["policy/rejected"]
    with open(path, "w") as f:
        json.dump(t, f)
    p = subprocess.run([a.poc, "probe", po, "--inputs", path], stdout=subprocess.PIPE,
                       stderr=subprocess.PIPE, text=True, timeout=60)
    pycheck.check(p.returncode == 2 and "missing logsumsq['policy/rejected']" in p.stderr and
                  "dpo_sigmoid_wpo.po:" in p.stderr,
                  f"a missing logsumsq key: exit {p.returncode}: {p.stderr}")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--poc", required=True)
    ap.add_argument("--root", required=True)
    ap.add_argument("--scratch", required=True)
    a = ap.parse_args()
    os.makedirs(a.scratch, exist_ok=True)
    probe_io(a, os.path.join(a.root, "examples", "trl", "dpo_sigmoid_wpo.po"))
    return pycheck.finish("wpo_probe")


if __name__ == "__main__":
    sys.exit(main())
