"""NCCL on the CUDA device, under the CUDA emulation with the NCCL stand-in as libnccl.so.2.

dpo (its data's first lines), 3 steps of a batch of 4 in micro-batches of 1:
  - 2 ranks with --comm nccl compute what one process computes (and so do 2 ranks with
    one micro-batch of 4, where rank 1 has no examples, against one process with that
    micro-batch, and 2 ranks with POC_NCCL_OVERLAP=0, the gradient summed whole instead of
    layer by layer): per step the loss and the reports agree to 1e-5 relative, the final
    weights to 1e-4 of the update's size plus one float32 spacing (the ranks' float
    gradients are summed in another order than one process's in-place sum), and rank 0
    alone wrote the run; its first lines say the gradient is summed by NCCL from the
    stand-in's file
  - a library that does not load: --comm nccl stops every rank before training with one
    message naming the library (and so does --comm nccl on the CPU); --comm auto says once
    that MPI sums through host memory, and trains

usage: check_nccl.py --poc POC --root ROOT --scratch DIR --mpirun MPIRUN --standin LIB
"""
import argparse
import json
import math
import os
import re
import shutil
import struct
import subprocess
import sys

sys.dont_write_bytecode = True
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from pycheck import check, f32_tensors, finish, run_metrics  # noqa: E402

ap = argparse.ArgumentParser()
ap.add_argument("--poc", required=True)
ap.add_argument("--root", required=True)
ap.add_argument("--scratch", required=True)
ap.add_argument("--mpirun", required=True)
ap.add_argument("--standin", required=True)
ap.add_argument("--steps", type=int, default=3)
ap.add_argument("--subset", type=int, default=32)
a = ap.parse_args()

ENV = dict(os.environ, OMP_NUM_THREADS="1", OMP_WAIT_POLICY="PASSIVE")
ENV.pop("POC_NCCL_LIBRARY", None)
MPI = [a.mpirun, "--oversubscribe"] + (["--allow-run-as-root"] if os.geteuid() == 0 else [])
MPI += ["-x", "OMP_NUM_THREADS", "-x", "OMP_WAIT_POLICY", "-x", "POC_CUDA_EMULATE",
        "-x", "POC_NCCL_LIBRARY"]
SET = ["--backend", "cuda", "--set", "train.batch=4", "--set", "train.micro_batch=1"]




def run(cmd, lib=None, **more):
    env = dict(ENV, **more)
    if lib:
        env["POC_NCCL_LIBRARY"] = lib
    return subprocess.run(cmd, cwd=a.root, env=env, capture_output=True, text=True, timeout=600)


shutil.rmtree(a.scratch, ignore_errors=True)
os.makedirs(a.scratch)
# dpo on the first lines of its data and 8 evaluation prompts: the emulation is slow
with open(os.path.join(a.root, "examples", "dpo.po")) as f:
    text = f.read()
for q in re.findall(r'"(examples/data/[a-z_]+\.jsonl)"', text):
    dst = os.path.join(a.scratch, os.path.basename(q))
    with open(os.path.join(a.root, q)) as f:
        keep = f.readlines()[:a.subset if "eval" not in q else 8]
    with open(dst, "w") as f:
        f.writelines(keep)
    text = text.replace(f'"{q}"', f'"{dst}"')
po = os.path.join(a.scratch, "dpo.po")
with open(po, "w") as f:
    f.write(text)
binary = os.path.join(a.scratch, "dpo")
r = run([a.poc, "build", po, "-o", binary])
if not check(r.returncode == 0, f"poc build: {r.stderr[-2000:]}"):
    sys.exit(finish("nccl"))

# a library that does not load: refused with --comm nccl before anything is trained
missing = os.path.join(a.scratch, "nowhere", "libnccl.so.2")
out = os.path.join(a.scratch, "missing-nccl")
r = run(MPI + ["-np", "2", binary, "--steps", "1", "--out", out, "--comm", "nccl"] + SET, missing)
check(r.returncode != 0 and "error: --comm nccl: cannot load NCCL" in r.stderr and
      missing in r.stderr, f"--comm nccl without a library: a clear error (exit "
      f"{r.returncode}):\n{r.stderr[-2000:]}")
check(r.stderr.count("cannot load NCCL") == 1, f"the ranks agree, and rank 0 alone says it:"
      f"\n{r.stderr[-2000:]}")
check(not os.path.exists(os.path.join(out, "ckpt-1")), "--comm nccl without a library: no training")
# and on the CPU, whose gradient is in host memory
out = os.path.join(a.scratch, "cpu-nccl")
r = run(MPI + ["-np", "2", binary, "--steps", "1", "--out", out, "--backend", "cpu", "--comm",
               "nccl"], a.standin)
check(r.returncode != 0 and r.stderr.count("error: --comm nccl: the device is cpu, not cuda") == 1,
      f"--backend cpu --comm nccl: one clear error (exit {r.returncode}):\n{r.stderr[-2000:]}")

w0 = f32_tensors(os.path.join(a.root, "examples", "tiny", "model.safetensors"))
ref = {}  # micro_batch -> (metrics, final weights, update size) of one process
for mb in (1, 4):
    one = os.path.join(a.scratch, f"one-{mb}")
    r = run([binary, "--steps", str(a.steps), "--out", one] + SET +
            ["--set", f"train.micro_batch={mb}"])
    if not check(r.returncode == 0, f"one process: exit {r.returncode}\n{r.stderr[-3000:]}"):
        sys.exit(finish("nccl"))
    w1 = f32_tensors(os.path.join(one, f"ckpt-{a.steps}", "model.safetensors"))
    upd = max(abs(x - y) for k in w1 if k in w0 for x, y in zip(w1[k], w0[k]))
    check(upd > 0, "the weights moved")
    ref[mb] = (run_metrics(one), w1, upd)


def compare(out, what, mb):
    m1, w1, upd = ref[mb]
    mR = run_metrics(out)
    check(len(mR) == len(m1), f"{what}: {len(mR)} metric lines, one process {len(m1)}")
    worst, where = 0.0, ""
    for l1, lR in zip(m1, mR):
        for k, v in l1.items():
            if k == "tokens_per_s" or not isinstance(v, (int, float)):
                continue
            w = lR.get(k)
            if not check(isinstance(w, (int, float)), f"{what}: step {l1['step']}: no {k}"):
                continue
            d = abs(w - v) / max(abs(v), abs(w), 1e-30)
            if abs(w - v) > 1e-12 and d > worst:
                worst, where = d, f"step {l1['step']} {k}: {w} vs {v}"
    check(worst <= 1e-5, f"{what}: relative difference {worst:.3g} > 1e-5 at {where}")
    ck = sorted(d for d in os.listdir(out) if d.startswith("ckpt-"))
    check(ck == [f"ckpt-{a.steps}"], f"{what}: checkpoints {ck}")
    wR = f32_tensors(os.path.join(out, f"ckpt-{a.steps}", "model.safetensors"))
    dw = max(abs(x - y) for k in w1 for x, y in zip(w1[k], wR[k]))
    over = [(k, x, y) for k in w1 for x, y in zip(w1[k], wR[k])
            if abs(x - y) > 1e-4 * upd + 2.0 ** (math.frexp(abs(x))[1] - 24)]
    check(not over, f"{what}: final weights differ by up to {dw:.3g} (update {upd:.3g}); "
          f"{len(over)} beyond the tolerance, first {over[:1]}")
    print(f"{what}: worst relative difference {worst:.3g}, weights {dw:.3g} (update {upd:.3g})")


# the gradient summed on the (emulated) device by the stand-in:
#   2 ranks, layer by layer as the backward of the last micro-batch goes (the default)
#   2 ranks, one micro-batch of 4: rank 1 has no examples and sums every layer after its
#   (empty) backward, while rank 0 sums them during its own
#   2 ranks, POC_NCCL_OVERLAP=0: one sum of the whole gradient after the backward
# (these three with --zero 0: the all-reduce path), and
#   2 ranks under ZeRO (the default): the gradient reduce-scattered and the updated
#   weights all-gathered on the device by the stand-in
for what, mb, env, zero in (("2 ranks, --comm nccl", 1, {}, "0"),
                            ("2 ranks, --comm nccl, an idle rank", 4, {}, "0"),
                            ("2 ranks, --comm nccl, POC_NCCL_OVERLAP=0", 1,
                             {"POC_NCCL_OVERLAP": "0"}, "0"),
                            ("2 ranks, --comm nccl, ZeRO", 1, {}, "1")):
    R = 2
    out = os.path.join(a.scratch, f"nccl-{mb}-{len(env)}-{zero}")
    trace = os.path.join(a.scratch, f"trace-{mb}-{len(env)}-{zero}")
    if os.path.exists(trace):
        os.remove(trace)
    env = dict(env, POC_NCCL_STANDIN_TRACE=trace)
    r = run(MPI + ["-x", "POC_NCCL_STANDIN_TRACE"] + (["-x", "POC_NCCL_OVERLAP"] if len(env) > 1 else []) +
            ["-np", str(R), binary, "--steps", str(a.steps), "--out", out, "--comm", "nccl",
             "--zero", zero] + SET + ["--set", f"train.micro_batch={mb}"], a.standin, **env)
    if not check(r.returncode == 0, f"{what}: exit {r.returncode}\n{r.stderr[-3000:]}"):
        continue
    head = "\n".join(r.stderr.splitlines()[:6])
    check(f"MPI, {R} ranks" in head and "gradients summed on the device by NCCL" in head and
          os.path.realpath(a.standin) in head, f"{what}: the first lines say NCCL from the "
          f"stand-in:\n{head}")
    check("[rank" not in r.stderr and "nccl stand-in:" not in r.stderr,
          f"{what}: nothing else was said:\n{r.stderr[-2000:]}")
    calls = open(trace).read() if os.path.exists(trace) else ""
    want = ("ncclReduceScatter", "ncclAllGather") if zero == "1" else ("ncclAllReduce",)
    check(all(w in calls for w in want), f"{what}: the stand-in served {', '.join(want)} "
          f"(its trace: {calls.splitlines()[:4]})")
    compare(out, what, mb)

# --comm auto where the library does not load: one line, then MPI through host memory
out = os.path.join(a.scratch, "auto")
r = run(MPI + ["-np", "2", binary, "--steps", "1", "--out", out] + SET, missing)
if check(r.returncode == 0, f"--comm auto without a library: exit {r.returncode}\n"
         f"{r.stderr[-3000:]}"):
    check(r.stderr.count("gradients summed by MPI through host memory, not NCCL: cannot load "
                         "NCCL") == 1, f"--comm auto says once why NCCL is not used:\n"
          f"{r.stderr[-2000:]}")
    check(os.path.exists(os.path.join(out, "ckpt-1")), "--comm auto: trained")
sys.exit(finish("nccl"))
