#!/usr/bin/env python3
"""Data parallelism on the CPU: what R = 1, 2, 3 ranks cost per optimizer step.

For each model (the tiny one, and a 20M Llama made by bench/train/make_model.py) and
method, the example's train block with micro_batch = 2 (the batch of 16 is 8
micro-batches, dealt round-robin) runs --steps steps as one process and under mpirun
with 2 and 3 ranks in three modes: the all-reduce of the gradient after the backward
(--zero 0 --overlap 0), ZeRO-1 (reduce-scatter, sharded AdamW, all-gather; --overlap 0)
and ZeRO-1 with the reductions overlapped with the last micro-batch's backward (the
default). Rank 0's closing line gives, per step: the bytes it handed to sums and received
from all-gathers, what it sent under a ring algorithm, the seconds its collectives took
(from the first start to the end of the wait when overlapped), the part of them it spent
waiting (exposed) and the step's seconds; compute is the step less the exposed seconds.
The run's first lines give the AdamW state per rank. Each cell is the best of --rounds
runs, alternating modes. The second half of the report is the paper estimate for 1B and
7B models on H100s, its assumptions written out. Writes bench/results/dp_cpu.md.

usage: bench/dp/run.py [--poc build/poc] [--mpirun mpirun] [--steps 6] [--tiny-steps 40]
"""
import argparse
import datetime
import os
import re
import shutil
import subprocess
import sys
import tempfile

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))
sys.path.insert(0, os.path.join(ROOT, "bench"))
from benchlib import cpu_name  # noqa: E402

LINE = re.compile(r"data parallel: per step (\d+) bytes reduced, (\d+) gathered, (\d+) sent "
                  r"\(ring\), ([0-9.]+) s of ([0-9.]+) s in collectives, ([0-9.]+) s of it exposed")
STATE = re.compile(r"optimizer state \(AdamW moments\): (\d+) bytes per rank")
MODES = (("all-reduce", ["--zero", "0", "--overlap", "0"]),
         ("ZeRO-1", ["--zero", "1", "--overlap", "0"]),
         ("ZeRO-1 + overlap", ["--zero", "1", "--overlap", "1"]))


def measure(mpirun, binary, R, steps, out, flags):
    """(bytes reduced, gathered, sent, collective s, exposed s, step s, state bytes/rank)"""
    env = dict(os.environ, POC_DP_STATS="1", OMP_WAIT_POLICY="PASSIVE",
               OMP_NUM_THREADS=os.environ.get("OMP_NUM_THREADS", "1"))
    cmd = [binary, "--steps", str(steps), "--out", out, "--set", "train.micro_batch=2"] + flags
    if R > 1:
        cmd = [mpirun, "--oversubscribe", "-np", str(R), "-x", "OMP_NUM_THREADS", "-x",
               "OMP_WAIT_POLICY", "-x", "POC_DP_STATS"] + \
              (["--allow-run-as-root"] if os.geteuid() == 0 else []) + cmd
    r = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True)
    if r.returncode:
        raise RuntimeError(f"{' '.join(cmd)} failed:\n{r.stderr[-2000:]}")
    m = LINE.search(r.stderr)
    if not m:
        raise RuntimeError(f"no data-parallel line in:\n{r.stderr[-2000:]}")
    st = STATE.search(r.stderr)
    return (int(m.group(1)), int(m.group(2)), int(m.group(3)), float(m.group(4)),
            float(m.group(6)), float(m.group(5)), int(st.group(1)) if st else None)


def estimate():
    """The paper estimate: ring all-reduce of the fp32 gradient (the double accumulator is
    a CPU choice; a GPU sums the fp32 gradient) vs a DPO step's compute."""
    rows = []
    tokens = 128 * 2 * 512            # batch 128 pairs, chosen + rejected, 512 tokens each
    mfu_flops = 0.40 * 989e12         # H100 SXM dense bf16 peak, at 40% utilisation
    nvlink = 370e9                    # NCCL all-reduce bus bandwidth within an 8-GPU node
    ib = 8 * 50e9 * 0.8               # 8 × 400 Gb/s HDR/NDR NICs per node, 80% of line rate
    for name, params in (("1B", 1.0e9), ("7B", 7.0e9)):
        grad = 4 * params
        for setup, gpus, t_comm in (
                ("8 × H100, NVLink", 8, 2 * 7 / 8 * grad / nvlink),
                # hierarchical: reduce-scatter and all-gather in the node over NVLink, the
                # 1/8 shards all-reduced across the 2 nodes, each GPU on its own NIC
                ("2 × 8 × H100, 400 Gb/s IB", 16,
                 2 * 7 / 8 * grad / nvlink + 2 * (1 / 2) * (grad / 8) / (ib / 8))):
            # policy forward + backward (6 · P per token); the reference is hoisted
            t_compute = 6 * params * tokens / (gpus * mfu_flops)
            rows.append((name, setup, gpus, grad, t_compute, t_comm))
    return rows


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--poc", default=os.path.join(ROOT, "build", "poc"))
    ap.add_argument("--mpirun", default=shutil.which("mpirun") or "mpirun")
    ap.add_argument("--steps", type=int, default=6, help="steps on the 20M model")
    ap.add_argument("--tiny-steps", type=int, default=40)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--methods", default="dpo,copo")
    a = ap.parse_args()
    results = []
    load0 = os.getloadavg()[0]
    with tempfile.TemporaryDirectory(prefix="poc-dp-") as tmp:
        m20 = os.path.join(tmp, "llama20m")
        subprocess.run([sys.executable, os.path.join(ROOT, "bench", "train", "make_model.py"), m20],
                       check=True, stdout=subprocess.DEVNULL)
        most = max(a.steps, a.tiny_steps)
        subsets = {}
        for src, n in (("examples/data/pairs.jsonl", 16 * (most + 1)),
                       ("examples/data/eval.jsonl", 6)):
            dst = os.path.join(tmp, os.path.basename(src))
            with open(os.path.join(ROOT, src)) as f, open(dst, "w") as g:
                g.writelines(f.readlines()[:n])
            subsets[src] = dst
        for mname, mpath, steps in (("tiny", "examples/tiny", a.tiny_steps),
                                    ("20M, vocab 32k", m20, a.steps)):
            for method in a.methods.split(","):
                text = open(os.path.join(ROOT, "examples", method + ".po")).read()
                text = re.sub(r'model\("examples/tiny"\)', f'model("{mpath}")', text)
                for src, dst in subsets.items():
                    text = text.replace(f'"{src}"', f'"{dst}"')
                po = os.path.join(tmp, f"{method}.po")
                open(po, "w").write(text)
                binary = os.path.join(tmp, method)
                subprocess.run([a.poc, "build", po, "-o", binary], check=True, cwd=ROOT,
                               stdout=subprocess.DEVNULL)
                best = {}
                runs = [(1, "one process", [])] + [(R, mode, flags) for R in (2, 3)
                                                   for mode, flags in MODES]
                for rnd in range(a.rounds):
                    for j, (R, mode, flags) in enumerate(runs):
                        out = os.path.join(tmp, f"run-{method}-{len(results)}-{rnd}-{j}")
                        m = measure(a.mpirun, binary, R, steps, out, flags)
                        if (R, mode) not in best or m[5] < best[(R, mode)][5]:
                            best[(R, mode)] = m
                for R, mode, _ in runs:
                    m = best[(R, mode)]
                    print(f"{mname:>15} {method:>5} R={R} {mode:>16}: {m[0]:>10} B reduced, "
                          f"{m[1]:>10} gathered, step {m[5]:.4f} s, collectives {m[3]:.4f} s, "
                          f"exposed {m[4]:.4f} s", flush=True)
                    results.append((mname, method, R, mode) + m)
    threads = os.environ.get("OMP_NUM_THREADS", "1")
    load1 = os.getloadavg()[0]
    out = os.path.join(ROOT, "bench", "results", "dp_cpu.md")
    with open(out, "w") as f:
        f.write("# Data parallelism on the CPU, and the estimate for H100s\n\n")
        f.write(f"Measured {datetime.date.today().isoformat()} on {cpu_name()} "
                f"({os.cpu_count()} cores, OMP_NUM_THREADS={threads} per rank, Open MPI, "
                f"shared memory), by `bench/dp/run.py --steps {a.steps} --tiny-steps "
                f"{a.tiny_steps} --rounds {a.rounds}`. The example's train block with "
                "micro_batch = 2: a batch of 16 is 8 micro-batches, dealt round-robin "
                "(R = 3 gets 3, 3 and 2). Modes: *all-reduce* sums the double gradient over "
                "the ranks after the backward (`--zero 0 --overlap 0`); *ZeRO-1* "
                "reduce-scatters it, runs AdamW on each rank's shard and all-gathers the "
                "weights (`--overlap 0`); *+ overlap* starts each layer's reduce-scatter "
                "during the last micro-batch's backward (the default). Each cell is the best "
                "of the rounds; per step, for rank 0: the bytes handed to sums, the bytes "
                "received from all-gathers, the bytes sent under a ring algorithm, the "
                "step's seconds, the seconds of its collectives (overlapped: from the first "
                "start to the end of the wait) and the part of them spent waiting "
                "(exposed, waiting for slower ranks included); compute is the step less the "
                "exposed seconds. AdamW state is the optimizer memory per rank from the "
                "run's first lines. With 3 ranks on 2 cores the ranks share cores: R = 3 measures "
                "correctness and traffic, not speed. The machine's load average (1 min) was "
                f"{load0:.1f} at the start and {load1:.1f} at the end"
                f"{' (other work shared its cores, so the seconds are noisy)' if max(load0, load1) > os.cpu_count() else ''}"
                ".\n\n")
        f.write("| model | method | R | mode | AdamW state / rank | reduced / step | "
                "gathered / step | sent (ring) / step | step s | compute s | collectives s | "
                "exposed s | speed-up vs R = 1 |\n")
        f.write("|---|---|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|\n")
        base = {}
        for mname, method, R, mode, b, g, w, c, e, t, sb in results:
            if R == 1:
                base[(mname, method)] = t
            sbs = f"{sb:,}" if sb is not None else "(all)"
            f.write(f"| {mname} | {method} | {R} | {mode} | {sbs} | {b:,} | {g:,} | {w:,} | "
                    f"{t:.4f} | {t - e:.4f} | {c:.4f} | {e:.4f} | "
                    f"{base[(mname, method)] / t:.2f}× |\n")
        f.write("\nThe bytes reduced are the double-precision gradient sum (8 bytes per "
                "trainable parameter: the CPU sums each micro-batch's gradient in double so "
                "that any R gives one process's weights; under ZeRO padded to R equal "
                "shards), the step's loss, reports and token count, and for copo "
                "(batch_std: not separable) the gathered objective inputs, a few numbers "
                "per token and a length per example and call. ZeRO-1 adds the all-gather "
                "of the float weights (4 bytes per parameter) but sends (R−1)/R of the "
                "double gradient instead of 2(R−1)/R: a quarter less in all, and the "
                "AdamW state per rank falls to 1/R. One process reports no AdamW line "
                "(it holds all of it: 8 bytes per parameter). Overlap moves collective "
                "time out of the exposed column; whether the step gets shorter depends on "
                "free cores: with the ranks oversubscribed, their computation and MPI's "
                "progress (made in the hook's calls and the final wait) compete for the "
                "same cores.\n\n")
        f.write("## On paper: 1B and 7B DPO on H100s\n\n"
                "Assumptions: the global batch is 128 pairs of 512-token sequences (131,072 "
                "tokens a step); the reference is hoisted, so a step is the policy's forward "
                "and backward, 6 FLOPs per parameter and token; an H100 SXM sustains 40% of "
                "its 989 TFLOP/s dense bf16; the gradient is summed in fp32 (4 bytes per "
                "parameter) by a ring all-reduce, 2 (n-1)/n of the gradient through each "
                "GPU's link; NVLink gives NCCL's all-reduce about 370 GB/s of bus bandwidth "
                "within a node; across 2 nodes, each GPU has its own 400 Gb/s NIC at 80% "
                "of line rate and the all-reduce is hierarchical (reduce-scatter in the "
                "node, the 1/8 shard all-reduced across nodes, all-gather in the node). "
                "Unoverlapped reduces after the backward; overlapped (bucketed layer by "
                "layer during the backward, as the CPU path now does; the CUDA path does "
                "not yet) hides communication up to the backward's two thirds of the step. "
                "ZeRO-1 replaces the all-reduce by a reduce-scatter of the gradient and an "
                "all-gather of the updated weights: the same bytes when the fp32 master is "
                "gathered (as built), a quarter less if the bf16 compute copy were gathered "
                "instead.\n\n")
        f.write("| model | GPUs | fp32 gradient | compute / step | all-reduce / step | "
                "step, unoverlapped | step, overlapped | comm. share unoverlapped |\n")
        f.write("|---|---|---:|---:|---:|---:|---:|---:|\n")
        for name, setup, gpus, grad, tc, tm in estimate():
            over = tc + max(0.0, tm - tc * 2 / 3)
            f.write(f"| {name} | {setup} | {grad / 1e9:.0f} GB | {tc * 1e3:.0f} ms | "
                    f"{tm * 1e3:.0f} ms | {(tc + tm) * 1e3:.0f} ms | {over * 1e3:.0f} ms | "
                    f"{tm / (tc + tm) * 100:.0f}% |\n")
        f.write("\nNothing in this half was measured: no multi-GPU machine has run poc's "
                "data parallelism. The CPU rows above are what was.\n")
    print("wrote", os.path.relpath(out, ROOT))


if __name__ == "__main__":
    main()
