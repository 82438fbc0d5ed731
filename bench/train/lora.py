#!/usr/bin/env python3
"""LoRA against full fine-tuning on the CPU: tokens/s and peak memory of DPO training
binaries on a random Llama (bench/train/make_model.py), full DPO (examples/dpo.po) against
LoRA DPO (examples/lora_dpo.po: r 16, alpha 32, dropout 0.05, all seven projections) and
LoRA without dropout, and TRL's DPOTrainer with the same PEFT LoRA (bench/train/trl_lora.py,
skipped when trl or peft is missing). Each configuration is its own process (peak memory: the process's
VmHWM from wait4); tokens/s is the median over the logged steps after the first; the best
of --rounds runs, alternated between the variants. Writes bench/results/lora_cpu.md.

usage: bench/train/lora.py [--poc build/poc] [--steps 8] [--rounds 2]
                           [--hidden 512 --layers 8 --intermediate 1408]
knobs: OMP_NUM_THREADS (all cores unless set), NOTE (a sentence added to the results)
"""
import argparse
import datetime
import json
import os
import platform
import subprocess
import sys
import tempfile

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))
sys.path.insert(0, os.path.join(ROOT, "bench"))
from benchlib import cpu_name, measure  # noqa: E402


def measure_trl(model, pairs, steps):
    """TRL + peft in a process of its own: (tokens/s, peak MiB)"""
    cmd = [sys.executable, os.path.join(ROOT, "bench", "train", "trl_lora.py"), model, pairs,
           "--steps", str(steps)]
    p = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    out = p.stdout.read()
    _, status, ru = os.wait4(p.pid, 0)
    if status:
        raise RuntimeError("trl_lora.py failed")
    return json.loads(out.strip().splitlines()[-1])["tokens_per_s"], ru.ru_maxrss / 1024.0


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--poc", default=os.path.join(ROOT, "build", "poc"))
    ap.add_argument("--steps", type=int, default=8)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--hidden", type=int, default=512)
    ap.add_argument("--intermediate", type=int, default=1408)
    ap.add_argument("--layers", type=int, default=8)
    ap.add_argument("--heads", type=int, default=8)
    a = ap.parse_args()
    res = {}
    with tempfile.TemporaryDirectory(prefix="poc-lora-bench-") as tmp:
        mdir = os.path.join(tmp, "llama")
        subprocess.run([sys.executable, os.path.join(ROOT, "bench", "train", "make_model.py"),
                        mdir, "--hidden", str(a.hidden), "--intermediate", str(a.intermediate),
                        "--layers", str(a.layers), "--heads", str(a.heads)], check=True,
                       stdout=subprocess.DEVNULL)
        n_params = os.path.getsize(os.path.join(mdir, "model.safetensors")) / 4e6
        pairs = os.path.join(tmp, "pairs.jsonl")
        with open(os.path.join(ROOT, "examples/data/pairs.jsonl")) as f, open(pairs, "w") as g:
            g.writelines(f.readlines()[:16 * (a.steps + 1)])
        evals = os.path.join(tmp, "eval.jsonl")
        with open(os.path.join(ROOT, "examples/data/eval.jsonl")) as f, open(evals, "w") as g:
            g.writelines(f.readlines()[:16])
        lora = open(os.path.join(ROOT, "examples/lora_dpo.po")).read()
        variants = [("full DPO", open(os.path.join(ROOT, "examples/dpo.po")).read()),
                    ("LoRA r16, dropout 0.05", lora),
                    ("LoRA r16, dropout 0", lora.replace("dropout = 0.05", "dropout = 0"))]
        bins = {}
        for i, (label, text) in enumerate(variants):
            text = text.replace('model("examples/tiny")', f'model("{mdir}")')
            text = text.replace('"examples/data/pairs.jsonl"', f'"{pairs}"')
            text = text.replace('"examples/data/eval.jsonl"', f'"{evals}"')
            po = os.path.join(tmp, f"v{i}.po")
            open(po, "w").write(text)
            bins[label] = os.path.join(tmp, f"v{i}")
            subprocess.run([a.poc, "build", po, "-o", bins[label]], check=True, cwd=ROOT,
                           stdout=subprocess.DEVNULL)
        try:
            import peft  # noqa: F401
            import trl  # noqa: F401
            have_trl = True
        except ImportError:
            have_trl = False
        trl_label = "TRL DPOTrainer + peft LoRA r16, dropout 0.05"
        for r in range(a.rounds):
            for i, (label, _) in enumerate(variants + ([(trl_label, None)] if have_trl else [])):
                if label == trl_label:
                    tps, hwm = measure_trl(mdir, pairs, a.steps)
                else:
                    tps, wall, hwm = measure(bins[label], a.steps, os.path.join(tmp, f"run{i}-{r}"))
                old = res.get(label)
                res[label] = (max(tps, old[0]) if old else tps, max(hwm, old[1]) if old else hwm)
                print(f"{label:>24}: {tps:9.0f} tokens/s, {hwm:8.1f} MiB peak", flush=True)
    threads = os.environ.get("OMP_NUM_THREADS", str(os.cpu_count()))
    out = os.path.join(ROOT, "bench", "results", "lora_cpu.md")
    with open(out, "w") as f:
        f.write("# LoRA against full fine-tuning: DPO on the CPU\n\n")
        f.write(f"Measured {datetime.date.today().isoformat()} on {cpu_name()} ({os.cpu_count()} "
                f"cores, OMP_NUM_THREADS={threads}), {platform.system()} {platform.release()}, by "
                f"`bench/train/lora.py --steps {a.steps} --rounds {a.rounds} --hidden {a.hidden} "
                f"--layers {a.layers} --intermediate {a.intermediate}`: a random Llama of "
                f"{n_params:.1f}M parameters (vocabulary 32k, tied embeddings), the examples' "
                f"train block (batch 16, micro-batch 8, max_len 64), {a.steps} optimizer steps "
                f"per process, best of {a.rounds} alternating processes; tokens/s is the median "
                f"over the steps after the first, peak memory the process's VmHWM (about 240 MiB "
                f"of it the CUDA libraries a CUDA-enabled build links).\n\n")
        if os.environ.get("NOTE"):
            f.write(os.environ["NOTE"] + "\n\n")
        f.write("| variant | tokens/s | peak MiB |\n|---|---:|---:|\n")
        for label, _ in variants + ([(trl_label, None)] if have_trl else []):
            f.write(f"| {label} | {res[label][0]:.0f} | {res[label][1]:.0f} |\n")
        f.write("\nFull DPO holds the policy's fp32 weights, gradient and two AdamW moments plus "
                "the reference's own copy of the weights; LoRA holds the base once (the "
                "reference is a view of it with the adapters off) and gradient and moments for "
                "the adapters only. Per step LoRA skips the weight-gradient GEMMs of the base "
                "and adds three rank-r GEMMs per projection; dropout adds a masked copy of each "
                "projection's input. TRL runs with its defaults for DPOConfig (gradient "
                "checkpointing on, the reference being the base with the adapter disabled, "
                "padded batches) in float32 on the CPU; its tokens/s counts the same unpadded "
                "prompt + response tokens per step as poc's.\n")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
