#!/usr/bin/env python3
"""poc probe's gradients against central finite differences of its own loss, for
objectives with batch_sort and pos (their gradient rules: back through the permutation,
none through positions). Random ragged inputs as tests/e2e/kernel_check.py draws them
(lengths from 0), several batch sizes and seeds; every dL/dlogp entry of a trainable
call must agree to 1e-6 of the largest entry.

usage: probe_fd.py --poc POC FILE.po ...
"""
import argparse
import json
import os
import random
import subprocess
import sys
import tempfile

sys.dont_write_bytecode = True
HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, ".."))
sys.path.insert(0, os.path.join(HERE, "..", "e2e"))
from pycheck import check, finish  # noqa: E402
from kernel_check import field_seqs, make_input  # noqa: E402

STEP = 1e-6
RTOL = 1e-6


def probe(poc, po, inp, tmp):
    path = os.path.join(tmp, "in.json")
    with open(path, "w") as f:
        json.dump(inp, f)
    r = subprocess.run([poc, "probe", po, "--inputs", path], capture_output=True, text=True)
    if r.returncode:
        raise RuntimeError(r.stderr[-2000:])
    return json.loads(r.stdout)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--poc", required=True)
    ap.add_argument("files", nargs="+")
    a = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="poc-trl-fd-") as tmp:
        for po in a.files:
            r = subprocess.run([a.poc, "probe", po, "--template"], capture_output=True, text=True)
            if not check(r.returncode == 0, f"{po}: --template: {r.stderr}"):
                continue
            template = json.loads(r.stdout)
            fseq = field_seqs(open(po).read())
            for seed in (1, 2, 3):
                for B in (1, 3, 6):
                    rng = random.Random(seed * 100 + B)
                    inp = make_input(template, fseq, rng, B, seed)
                    base = probe(a.poc, po, inp, tmp)
                    grads = base.get("grad", {})
                    gmax = max([abs(x) for rows in grads.values() for row in rows for x in row] + [1e-12])
                    for key, rows in grads.items():
                        for b, row in enumerate(rows):
                            for t, g in enumerate(row):
                                vals = []
                                for s in (STEP, -STEP):
                                    inp["logp"][key][b][t] += s
                                    vals.append(probe(a.poc, po, inp, tmp)["loss"])
                                    inp["logp"][key][b][t] -= s
                                fd = (vals[0] - vals[1]) / (2 * STEP)
                                check(abs(fd - g) <= RTOL * gmax + 1e-9,
                                      f"{po} seed {seed} B={B}: d loss/d {key}[{b}][{t}] poc {g!r}, "
                                      f"finite differences {fd!r}")
    return finish("trl.fd")


if __name__ == "__main__":
    sys.exit(main())
