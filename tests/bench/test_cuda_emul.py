#!/usr/bin/env python3
"""poc bench --backend cuda on the CUDA emulation with bench/gpu/run.py's tiny model: the
GEMM peak measured through the CUDA device, both binaries run with --profile on it (each
stage boundary a device synchronisation), the stages adding up to the step, the device
allocator's peak reported, and fused and unfused giving the same losses (bf16 compute).

usage: test_cuda_emul.py POC SCRATCH_DIR   (run from the repository root, with
POC_CUDA_EMULATE naming the emulation library)"""
import json
import os
import shutil
import subprocess
import sys

sys.dont_write_bytecode = True
sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
from pycheck import check, finish  # noqa: E402

STAGES = ["forward", "head", "objective", "backward", "optimizer", "comm", "other"]


def main():
    poc, scratch = os.path.abspath(sys.argv[1]), os.path.abspath(sys.argv[2])
    shutil.rmtree(scratch, ignore_errors=True)
    work, out = os.path.join(scratch, "work"), os.path.join(scratch, "bench")
    p = subprocess.run([sys.executable, "bench/gpu/run.py", "prepare", work, "--models", "tiny",
                        "--steps", "2"], capture_output=True, text=True)
    if not check(p.returncode == 0, f"prepare: {p.stderr[-2000:]}"):
        return finish("bench_cuda_emul")
    p = subprocess.run([poc, "bench", os.path.join(work, "tiny", "dpo.po"), "--backend", "cuda",
                        "--steps", "2", "--rounds", "1", "--gemm-n", "64", "--out", out],
                       capture_output=True, text=True)
    print(p.stdout)
    if not check(p.returncode == 0, f"poc bench --backend cuda: exit {p.returncode}\n{p.stderr[-3000:]}"):
        return finish("bench_cuda_emul")
    j = json.load(open(os.path.join(out, "bench.json")))
    check(j["backend"] == "cuda" and j["device"].startswith("cuda:"), f"the device: {j['device']}")
    check(j["peak"]["gemm"].startswith("bf16") and j["peak"]["n"] == 64 and j["peak"]["gflops"] > 0,
          f"the peak: {j['peak']}")
    for name, v in j["variants"].items():
        check(v["tokens_per_s"] > 0, f"{name}: tokens/s {v['tokens_per_s']}")
        check(v["device_peak_mib"] > 0, f"{name}: device peak {v['device_peak_mib']} MiB")
        named = sum(v["split_s"][s] for s in STAGES if s != "other")
        check(abs(named - v["step_s"]) <= 0.15 * v["step_s"],
              f"{name}: the stages {v['split_s']} against a step of {v['step_s']}")
    fu, un = j["variants"]["fused"]["loss"], j["variants"]["unfused"]["loss"]
    check(len(fu) == 2 and len(un) == 2, f"losses {fu} {un}")
    for a, b in zip(fu, un):
        check(abs(a - b) <= 2e-3 * max(1, abs(a)), f"fused loss {a} vs unfused {b}")
    return finish("bench_cuda_emul")


if __name__ == "__main__":
    sys.exit(main())
