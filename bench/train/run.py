#!/usr/bin/env python3
"""Training-step benchmark on the CPU: tokens/s and peak memory of whole training
binaries, fused vs --unfused, for DPO, SimPO, CoPO and InSPO, on the bundled tiny model
and on a ~20M-parameter random Llama (vocabulary 32k); and hoisting: DPO with the
reference log-probs cached before training vs computed every step (--no-hoist).

Each configuration is its own process (peak memory is the process's VmHWM, read from
wait4's ru_maxrss); tokens/s is the median over the logged steps after the first, from
metrics.jsonl, and the best of --rounds such runs, alternated between the variants so that
a shared machine's slow spells do not land on one of them. Runs from the repository root, since the examples name their data
relative to it. Writes bench/results/train_cpu.md.

usage: bench/train/run.py [--poc build/poc] [--steps 12] [--tiny-steps 64] [--rounds 3]
                          [--methods dpo,simpo,copo,inspo] [--baseline OTHER_POC]

With --baseline, each method's fused binary is built by both pocs and the two are run side
by side (alternating rounds), to show that a change of the runtime costs no speed; the
table goes to bench/results/train_cpu_baseline.md instead.
knobs: OMP_NUM_THREADS (all cores unless set), NOTE (a sentence added to the results)
"""
import argparse
import datetime
import os
import platform
import re
import subprocess
import sys
import tempfile

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))
sys.path.insert(0, os.path.join(ROOT, "bench", "cpu"))
sys.path.insert(0, os.path.join(ROOT, "bench"))
import peak  # noqa: E402  (the sgemm peak of the kernels in use, and the device line)
from benchlib import cpu_name, measure  # noqa: E402


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--poc", default=os.path.join(ROOT, "build", "poc"))
    ap.add_argument("--steps", type=int, default=12, help="optimizer steps on the 20M model")
    ap.add_argument("--tiny-steps", type=int, default=64,
                    help="optimizer steps on the tiny model, whose steps take milliseconds")
    ap.add_argument("--methods", default="dpo,simpo,copo,inspo")
    ap.add_argument("--rounds", type=int, default=3,
                    help="runs of each binary, alternating; the best is kept")
    ap.add_argument("--baseline", help="another poc (e.g. an earlier commit's build): compare "
                                       "its fused binaries with this poc's, side by side")
    a = ap.parse_args()
    methods = a.methods.split(",")
    gemm_gflops, kernels, device = peak.gemm_peak(peak.bench_model_path(a.poc))
    rows, hoist = [], []
    with tempfile.TemporaryDirectory(prefix="poc-bench-") as tmp:
        m20 = os.path.join(tmp, "llama20m")
        subprocess.run([sys.executable, os.path.join(ROOT, "bench", "train", "make_model.py"), m20],
                       check=True, stdout=subprocess.DEVNULL)
        # the first examples and held-out prompts only: a run of a few steps should not
        # spend its time caching the reference over the whole data set or evaluating
        # 500 prompts on the 20M model
        subsets = {}
        most = max(a.steps, a.tiny_steps)
        for kind, src, n in (("pairs", "examples/data/pairs.jsonl", 16 * (most + 1)),
                             ("points", "examples/data/points.jsonl", 16 * (most + 1)),
                             ("prompts", "examples/data/eval.jsonl", 16)):
            dst = os.path.join(tmp, os.path.basename(src))
            with open(os.path.join(ROOT, src)) as f, open(dst, "w") as g:
                g.writelines(f.readlines()[:n])
            subsets[kind] = (src, dst)
        models = [("tiny", "examples/tiny", a.tiny_steps), ("20M, vocab 32k", m20, a.steps)]
        for mname, mpath, steps in models:
            for method in methods:
                text = open(os.path.join(ROOT, "examples", method + ".po")).read()
                text = re.sub(r'model\("examples/tiny"\)', f'model("{mpath}")', text)
                for src, dst in subsets.values():
                    text = text.replace(f'"{src}"', f'"{dst}"')
                po = os.path.join(tmp, f"{method}.po")
                open(po, "w").write(text)
                if a.baseline:
                    variants = [("fused", [], a.poc), ("baseline", [], a.baseline)]
                else:
                    variants = [("fused", [], a.poc), ("unfused", ["--unfused"], a.poc)]
                    if method == "dpo":
                        variants.append(("fused, --no-hoist", ["--no-hoist"], a.poc))
                bins = {}
                for i, (label, flags, poc) in enumerate(variants):
                    bins[label] = os.path.join(tmp, f"{method}-{i}")
                    subprocess.run([poc, "build", po, "-o", bins[label], *flags], check=True,
                                   cwd=ROOT, stdout=subprocess.DEVNULL)
                # rounds alternate the variants, so a slow spell of a shared machine falls
                # on all of them; each keeps its best round
                res = {}
                for r in range(a.rounds):
                    for i, (label, _, _) in enumerate(variants):
                        out = os.path.join(tmp, f"run-{method}-{len(rows)}-{i}-{r}")
                        tps, wall, hwm = measure(bins[label], steps, out)
                        old = res.get(label)
                        res[label] = (max(tps, old[0]) if old else tps, wall,
                                      max(hwm, old[2]) if old else hwm)
                for label, _, _ in variants:
                    print(f"{mname:>15} {method:>6} {label:>18}: {res[label][0]:10.0f} tokens/s, "
                          f"{res[label][2]:8.1f} MiB peak", flush=True)
                rows.append((mname, method, res["fused"], res["baseline" if a.baseline else "unfused"]))
                if "fused, --no-hoist" in res:
                    hoist.append((mname, res["fused"], res["fused, --no-hoist"]))
    threads = os.environ.get("OMP_NUM_THREADS", str(os.cpu_count()))
    if a.baseline:
        write_baseline(a, rows, most, threads, gemm_gflops, kernels, device)
        return
    out = os.path.join(ROOT, "bench", "results", "train_cpu.md")
    os.makedirs(os.path.dirname(out), exist_ok=True)
    with open(out, "w") as f:
        f.write("# Training step on the CPU: fused vs unfused, and hoisting\n\n")
        f.write(f"Measured {datetime.date.today().isoformat()} on {cpu_name()} ({os.cpu_count()} "
                f"cores, OMP_NUM_THREADS={threads}), {platform.system()} {platform.release()}, "
                f"by `bench/train/run.py --steps {a.steps} --tiny-steps {a.tiny_steps} --rounds {a.rounds}`. Each cell is the best of {a.rounds} processes (alternating with the other variants of the row) running "
                f"the example's train block (batch 16, micro-batch 8, max_len 64) for "
                f"{a.tiny_steps} optimizer steps (tiny) or {a.steps} (20M) on the first "
                f"{16 * (most + 1)} lines of its data; tokens/s (the trainable model's tokens per second of step) is the "
                f"median over the steps after the first (metrics.jsonl), peak memory the "
                f"process's VmHWM.\n\n")
        f.write(f"Device line: `{device}`; sgemm 2048³ peak with these {kernels} kernels: "
                f"{gemm_gflops:.1f} GFLOP/s (bench/cpu/run.py has the MFU of the DPO step against it).\n\n")
        if os.environ.get("NOTE"):
            f.write(os.environ["NOTE"] + "\n\n")
        f.write("| model | method | fused tokens/s | unfused tokens/s | speed-up | fused peak MiB | unfused peak MiB |\n")
        f.write("|---|---|---:|---:|---:|---:|---:|\n")
        for mname, method, fu, un in rows:
            f.write(f"| {mname} | {method} | {fu[0]:.0f} | {un[0]:.0f} | {fu[0] / un[0]:.2f}× | "
                    f"{fu[2]:.0f} | {un[2]:.0f} |\n")
        f.write("\nThe embedded task's answers are a few tokens long, so a micro-batch puts under a "
                "hundred target rows through the loss head: their rows × 32k logits fit in the "
                "cache, the textbook head pays no memory traffic for them, and the fused head's "
                "recomputing GEMM shows as its cost. Peak memory here is mostly weights, "
                "gradients, AdamW moments and the frozen copy, above a floor of about 240 MiB "
                "that is the CUDA libraries these binaries link when poc is built with CUDA "
                "(cuBLASLt alone adds 147 MiB of resident pages when it loads) although a CPU "
                "run never calls them; loading them only for --backend cuda would remove it. "
                "The head's own trade-off at larger packs is in bench/results/model_cpu.md.\n")
        f.write("\n## Hoisting (DPO, fused)\n\n")
        f.write("The reference's log-probs of the data depend on no trainable weight, so they are "
                "computed once before training and cached; `--no-hoist` runs the reference forward "
                "every step instead. The design expects about a quarter less time per step "
                "hoisted.\n\n")
        f.write("| model | hoisted tokens/s | every step tokens/s | time per step saved |\n|---|---:|---:|---:|\n")
        for mname, h, n in hoist:
            f.write(f"| {mname} | {h[0]:.0f} | {n[0]:.0f} | {100 * (1 - n[0] / h[0]):.0f}% |\n")
    print(f"wrote {out}")


def write_baseline(a, rows, most, threads, gemm_gflops, kernels, device):
    out = os.path.join(ROOT, "bench", "results", "train_cpu_baseline.md")
    base_rev = os.environ.get("BASELINE_NAME", a.baseline)
    with open(out, "w") as f:
        f.write("# Training step on the CPU: this runtime against a baseline, side by side\n\n")
        f.write(f"Measured {datetime.date.today().isoformat()} on {cpu_name()} ({os.cpu_count()} "
                f"cores, OMP_NUM_THREADS={threads}), {platform.system()} {platform.release()}, "
                f"by `bench/train/run.py --baseline ... --steps {a.steps} --tiny-steps "
                f"{a.tiny_steps} --rounds {a.rounds}`: the same fused .po built by this poc and "
                f"by the baseline ({base_rev}), each binary the best of {a.rounds} processes, "
                f"the two alternating; {a.tiny_steps} optimizer steps (tiny) or {a.steps} (20M) "
                f"on the first {16 * (most + 1)} lines of the data; tokens/s is the median over "
                f"the steps after the first, peak memory the process's VmHWM.\n\n")
        f.write(f"Device line: `{device}`; sgemm 2048³ peak with these {kernels} kernels: "
                f"{gemm_gflops:.1f} GFLOP/s.\n\n")
        if os.environ.get("NOTE"):
            f.write(os.environ["NOTE"] + "\n\n")
        f.write("| model | method | tokens/s | baseline tokens/s | ratio | peak MiB | baseline peak MiB |\n")
        f.write("|---|---|---:|---:|---:|---:|---:|\n")
        for mname, method, new, old in rows:
            f.write(f"| {mname} | {method} | {new[0]:.0f} | {old[0]:.0f} | {new[0] / old[0]:.3f} | "
                    f"{new[2]:.0f} | {old[2]:.0f} |\n")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
