#!/usr/bin/env python3
"""CPU kernel choice benchmark: the DPO training step of a ~20M and a ~60M random Llama
(vocabulary 32k) in fp32, with the BLAS's own kernels (POC_CPU_KERNELS=blas) and with
poc's choice (the default), side by side; each with the sgemm peak of its kernels and the
step's MFU against that peak. The choice is OpenBLAS's kernels, which only the fp32 device
runs: precision = bf16 runs the cpu-bf16 device, whose GEMMs are oneDNN's (its benchmark
against PyTorch is bench/cpu/bf16.py, bench/results/cpu_bf16.md).

Each run is its own process; tokens/s is the median over the logged steps after the
first (metrics.jsonl), the best of --rounds runs alternated between the two choices.
Runs from the repository root. Writes bench/results/cpu_kernels.md.

usage: bench/cpu/run.py [--poc build/poc] [--steps 4] [--rounds 2] [--models 20M,60M]
knobs: OMP_NUM_THREADS (all cores unless set), NOTE (a sentence added to the results)
"""
import argparse
import datetime
import json
import os
import platform
import re
import statistics
import subprocess
import sys
import tempfile

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import peak  # noqa: E402
from benchlib import cpu_flags, cpu_name, model_flops_per_token, target_fraction  # noqa: E402

# make_model.py arguments: ~20M (the training benchmark's) and ~60M parameters
MODELS = {"20M": [], "60M": ["--hidden", "640", "--intermediate", "1728", "--layers", "10",
                             "--heads", "10", "--kv-heads", "2"]}
CHOICES = [("BLAS's own", {"POC_CPU_KERNELS": "blas"}), ("poc's", {})]


def run(binary, steps, out, env):
    p = subprocess.run([binary, "--steps", str(steps), "--out", out], cwd=ROOT, env=env,
                       stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    if p.returncode:
        raise RuntimeError(f"{binary} failed ({p.returncode}):\n{p.stderr[-2000:]}")
    device = next((l for l in p.stderr.splitlines() if l.startswith("cpu: ")), "")
    rows = [json.loads(l) for l in open(os.path.join(out, "metrics.jsonl")) if l.strip()]
    tps = [r["tokens_per_s"] for r in rows if "tokens_per_s" in r]
    return statistics.median(tps[1:] or tps), device


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--poc", default=os.path.join(ROOT, "build", "poc"))
    ap.add_argument("--steps", type=int, default=4)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--models", default="20M,60M")
    a = ap.parse_args()
    bench_model = peak.bench_model_path(a.poc)
    base_env = dict(os.environ)
    base_env.pop("POC_CPU_KERNELS", None)
    base_env.pop("POC_CPU_KERNELS_SET", None)
    envs = {label: {**base_env, **extra} for label, extra in CHOICES}
    peaks = {label: peak.gemm_peak(bench_model, env=envs[label]) for label, _ in CHOICES}
    for label, (gf, kern, dev) in peaks.items():
        print(f"{label:>10}: sgemm 2048³ {gf:.1f} GFLOP/s on {kern} kernels  [{dev}]", flush=True)
    rows = []
    with tempfile.TemporaryDirectory(prefix="poc-cpubench-") as tmp:
        subsets = {}
        for src, n in (("examples/data/pairs.jsonl", 16 * (a.steps + 1)), ("examples/data/eval.jsonl", 16)):
            dst = os.path.join(tmp, os.path.basename(src))
            with open(os.path.join(ROOT, src)) as f, open(dst, "w") as g:
                g.writelines(f.readlines()[:n])
            subsets[src] = dst
        frac = target_fraction(subsets["examples/data/pairs.jsonl"])
        for mname in a.models.split(","):
            mdir = os.path.join(tmp, "llama" + mname)
            subprocess.run([sys.executable, os.path.join(ROOT, "bench", "train", "make_model.py"), mdir,
                            *MODELS[mname]], check=True, stdout=subprocess.DEVNULL)
            cfg = json.load(open(os.path.join(mdir, "config.json")))
            flops = model_flops_per_token(cfg, frac)
            for prec in ("fp32",):
                text = open(os.path.join(ROOT, "examples", "dpo.po")).read()
                text = re.sub(r'model\("examples/tiny"\)', f'model("{mdir}")', text)
                text = text.replace("precision = fp32", f"precision = {prec}")
                for src, dst in subsets.items():
                    text = text.replace(f'"{src}"', f'"{dst}"')
                po = os.path.join(tmp, f"dpo-{mname}-{prec}.po")
                open(po, "w").write(text)
                binary = os.path.join(tmp, f"dpo-{mname}-{prec}")
                subprocess.run([a.poc, "build", po, "-o", binary], check=True, cwd=ROOT,
                               stdout=subprocess.DEVNULL, env=base_env)
                res = {}
                for r in range(a.rounds):
                    # the order flips every round, so neither choice always runs second
                    for label, _ in (CHOICES if r % 2 == 0 else CHOICES[::-1]):
                        out = os.path.join(tmp, f"run-{mname}-{prec}-{label[:3]}-{r}")
                        tps, dev = run(binary, a.steps, out, envs[label])
                        old = res.get(label)
                        res[label] = (max(tps, old[0]) if old else tps, dev)
                for label, _ in CHOICES:
                    mfu = res[label][0] * flops / (peaks[label][0] * 1e9)
                    print(f"{mname:>4} {prec} {label:>10}: {res[label][0]:8.0f} tokens/s, MFU "
                          f"{100 * mfu:4.1f}%  [{res[label][1]}]", flush=True)
                rows.append((mname, cfg, prec, res))
    out = os.path.join(ROOT, "bench", "results", "cpu_kernels.md")
    threads = os.environ.get("OMP_NUM_THREADS", str(os.cpu_count()))
    pinned = {k: os.environ[k] for k in ("OPENBLAS_CORETYPE", "OPENBLAS_L2_SIZE") if k in os.environ}
    with open(out, "w") as f:
        f.write("# CPU GEMM kernels: the BLAS's own choice vs poc's\n\n")
        f.write(f"Measured {datetime.date.today().isoformat()} on {cpu_name()} ({os.cpu_count()} cores, "
                f"OMP_NUM_THREADS={threads}; CPU flags {cpu_flags()}), {platform.system()} "
                f"{platform.release()}, by `bench/cpu/run.py --steps {a.steps} --rounds {a.rounds}`. "
                f"Environment: {', '.join(f'{k}={v}' for k, v in pinned.items()) or 'no OPENBLAS_* variables'}.\n\n")
        if pinned.get("OPENBLAS_CORETYPE"):
            f.write("OPENBLAS_CORETYPE is preset on this machine, so both columns run the kernels it "
                    "names: an explicit setting wins over poc's choice, and the device line says it "
                    "was set by the user. The rows measure that poc's check and its device line cost "
                    "nothing where nothing needs correcting.\n\n")
        if os.environ.get("NOTE"):
            f.write(os.environ["NOTE"] + "\n\n")
        f.write("Device lines (the first line of each run):\n\n")
        for label, (gf, kern, dev) in peaks.items():
            f.write(f"- {label}: `{dev}`\n")
        f.write("\n| choice | kernels | sgemm 2048³ GFLOP/s |\n|---|---|---:|\n")
        for label, (gf, kern, dev) in peaks.items():
            f.write(f"| {label} | {kern} | {gf:.1f} |\n")
        f.write(f"\nDPO training step (`examples/dpo.po`'s train block: batch 16, micro-batch 8, "
                f"max_len 64, reference hoisted) on random Llama models (bench/train/make_model.py), "
                f"{a.steps} optimizer steps per run on the first {16 * (a.steps + 1)} pairs, best of "
                f"{a.rounds} runs alternating the two choices. tokens/s is the policy's pack tokens "
                f"per second of step (median over the steps after the first); MFU counts 6 FLOPs per "
                f"layer weight per token and the head on target rows ({100 * frac:.0f}% of the "
                f"tokens here), attention left out, against the sgemm peak of the same kernels. "
                f"fp32 only: precision = bf16 runs the cpu-bf16 device, whose GEMMs are oneDNN's "
                f"whatever OpenBLAS's kernels (bench/results/cpu_bf16.md).\n\n")
        f.write("| model | params | precision | BLAS's own tokens/s | MFU | poc's tokens/s | MFU | poc / BLAS |\n")
        f.write("|---|---:|---|---:|---:|---:|---:|---:|\n")
        for mname, cfg, prec, res in rows:
            flops = model_flops_per_token(cfg, frac)
            b, p = res["BLAS's own"][0], res["poc's"][0]
            h, L, i, v = cfg["hidden_size"], cfg["num_hidden_layers"], cfg["intermediate_size"], cfg["vocab_size"]
            kvd = cfg["num_key_value_heads"] * (cfg.get("head_dim") or h // cfg["num_attention_heads"])
            params = v * h + L * (2 * h * h + 2 * h * kvd + 3 * h * i + 2 * h) + h
            f.write(f"| {mname} | {params / 1e6:.1f}M | {prec} | {b:.0f} | "
                    f"{100 * b * flops / (peaks[CHOICES[0][0]][0] * 1e9):.1f}% | {p:.0f} | "
                    f"{100 * p * flops / (peaks[CHOICES[1][0]][0] * 1e9):.1f}% | {p / b:.2f}× |\n")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
