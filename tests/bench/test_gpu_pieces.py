#!/usr/bin/env python3
"""bench/gpu/run.py's pipeline on the CPU with a tiny random model: `prepare` writes the
model, the pairs and the .po; `measure --backend cpu` runs poc bench (fused and unfused),
bench/gpu/torch_dpo.py and bench/gpu/trl_dpo.py on them. The three must do the same work:
every step's loss agrees (after the first step the weights have moved, so this checks the
data, the log-probs, the loss, clipping and AdamW of each against TRL's own trainer), and
each reports positive tokens/s, memory and MFU.

usage: test_gpu_pieces.py POC SCRATCH_DIR   (run from the repository root)"""
import json
import os
import shutil
import subprocess
import sys

sys.dont_write_bytecode = True
sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
from pycheck import check, finish, need  # noqa: E402


def main():
    why = need("torch", "transformers", "datasets", "trl")
    if why:
        print("SKIP:", why)
        return 77
    poc, scratch = os.path.abspath(sys.argv[1]), os.path.abspath(sys.argv[2])
    shutil.rmtree(scratch, ignore_errors=True)
    work, results = os.path.join(scratch, "work"), os.path.join(scratch, "results")
    run = [sys.executable, "bench/gpu/run.py"]
    p = subprocess.run(run + ["prepare", work, "--models", "tiny", "--steps", "3"],
                       capture_output=True, text=True)
    if not check(p.returncode == 0, f"prepare: {p.stderr[-2000:]}"):
        return finish("bench_gpu_pieces")
    po = open(os.path.join(work, "tiny", "dpo.po")).read()
    check("schedule = constant" in po and "order = sequential" in po, "the .po's train block")
    p = subprocess.run(run + ["measure", work, "--models", "tiny", "--backend", "cpu", "--poc", poc,
                              "--results", results], capture_output=True, text=True)
    print(p.stdout)
    if not check(p.returncode == 0, f"measure: {p.stderr[-3000:]}"):
        return finish("bench_gpu_pieces")
    j = json.load(open(os.path.join(results, "gpu_dryrun_cpu.json")))
    rows = {r["variant"]: r for r in j["rows"]}
    want = ["poc fused", "poc unfused", "torch", "trl"]
    check(sorted(rows) == sorted(want), f"the variants: {sorted(rows)}")
    for v in want:
        r = rows.get(v, {})
        if not check("tokens_per_s" in r, f"{v} ran: {r.get('skipped')}"):
            continue
        check(r["tokens_per_s"] > 0 and r["peak_mib"] > 0 and 0 < r["mfu"] < 1,
              f"{v}: tokens/s {r['tokens_per_s']}, {r['peak_mib']} MiB, MFU {r['mfu']}")
        check(len(r["loss"]) == 3, f"{v}: {len(r['loss'])} losses")
    if all("loss" in rows.get(v, {}) for v in want):
        ref = rows["trl"]["loss"]
        check(abs(ref[0] - 0.6931471805599453) < 1e-6, f"step 1 is DPO at policy = reference: {ref[0]}")
        check(max(abs(x - ref[0]) for x in ref[1:]) > 1e-5, f"the loss moves after the first update: {ref}")
        for v in ("poc fused", "poc unfused", "torch"):
            for s, (x, y) in enumerate(zip(rows[v]["loss"], ref), 1):
                check(abs(x - y) <= 2e-6, f"step {s}: {v} loss {x} vs TRL {y}")
    md = open(os.path.join(results, "gpu_dryrun_cpu.md")).read()
    check("| tiny | poc fused |" in md and "| tiny | trl |" in md, "the Markdown table has the rows")
    return finish("bench_gpu_pieces")


if __name__ == "__main__":
    sys.exit(main())
