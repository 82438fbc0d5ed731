#!/usr/bin/env python3
"""The embedded default shows preference optimisation work: the shipped examples/tiny (the
SFT model) answers a middling share of the held-out prompts right, and a whole run of
`poc run examples/NAME.po` raises that share by a clear margin, logged as eval/accuracy at
step 0 and after the last step. Run from the repository root, where the examples' paths
point; the run directory is a temporary one.

With 500 held-out prompts one prompt is 0.2%; the shipped SFT model answers about 59%
right and DPO about 97%, so the margins below leave room for another machine's rounding
without letting a run that learns nothing through.

usage: learn_check.py --poc POC --root REPO NAME ...
"""
import argparse
import json
import os
import subprocess
import sys
import tempfile

BEFORE_RANGE = (0.3, 0.8)   # middling: room to improve, not a broken model
MIN_GAIN = 0.15             # absolute accuracy points a whole run must add


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--poc", required=True)
    ap.add_argument("--root", required=True)
    ap.add_argument("names", nargs="+")
    a = ap.parse_args()
    failed = 0
    for name in a.names:
        with tempfile.TemporaryDirectory(prefix="poc-learn-") as tmp:
            out = os.path.join(tmp, "run")
            p = subprocess.run([a.poc, "run", os.path.join("examples", name + ".po"), "--out", out],
                               cwd=a.root, capture_output=True, text=True, timeout=600)
            if p.returncode != 0:
                print("FAIL %s: exit %d\n%s" % (name, p.returncode, p.stderr[-3000:]))
                failed += 1
                continue
            with open(os.path.join(out, "metrics.jsonl")) as f:
                m = [json.loads(line) for line in f if line.strip()]
        ev = [(x["step"], x["eval/accuracy"]) for x in m if "eval/accuracy" in x]
        last = max(x["step"] for x in m)
        problems = []
        if len(ev) < 2 or ev[0][0] != 0 or ev[-1][0] != last:
            problems.append("eval/accuracy not logged at step 0 and at the last step: %s" % ev)
        else:
            before, after = ev[0][1], ev[-1][1]
            if not BEFORE_RANGE[0] <= before <= BEFORE_RANGE[1]:
                problems.append("the shipped model's accuracy %.3f is not middling %s"
                                % (before, BEFORE_RANGE))
            if after < before + MIN_GAIN:
                problems.append("accuracy %.3f -> %.3f: less than +%.2f" % (before, after, MIN_GAIN))
        if problems:
            failed += 1
            for s in problems:
                print("FAIL %s: %s" % (name, s))
        else:
            print("ok   %s: eval/accuracy %.3f -> %.3f over %d steps" % (name, ev[0][1], ev[-1][1], last))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
