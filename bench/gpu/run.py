#!/usr/bin/env python3
"""The GPU comparison behind bench/gpu/run.sh: one DPO step of a 1B Llama (sequences of
1024 tokens, vocabulary 32k and 128k) and of a Qwen2.5-0.5B-shaped model, by poc (fused
and unfused, through `poc bench --backend cuda`), by a hand-written PyTorch bf16 step
(torch_dpo.py) and by TRL's DPOTrainer, with and without Liger's kernels (trl_dpo.py),
on the same data, batch, micro-batch and hoisted reference; tokens/s, peak device memory
and MFU against the bf16 GEMM peak poc measures on the device.

  run.py prepare WORK [--models a,b] [--steps 4]   model folders, data, .po files
  run.py measure WORK --poc POC [--deadline EPOCH] [--backend cuda|cpu] [--results DIR]

`measure` runs each variant with a time cap and skips (saying so) what the deadline no
longer leaves time for; it writes RESULTS/gpu_<device>.md and .json. `--models tiny
--backend cpu` runs the whole pipeline on a small model on the CPU (tests/bench does).
"""
import argparse
import datetime
import json
import os
import re
import signal
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))
from benchlib import ROOT, layer_params, model_flops_per_token, pair_counts, write_pairs  # noqa: E402

# make_model.py arguments and the step's shape for each model. Llama-3.2-1B's shape
# (rope scaling left out: it changes no FLOP); Qwen2.5-0.5B's (q/k/v biases, tied, 151,936
# tokens). Sequences: prompt 512 + response 512 = 1024 tokens; 8 pairs a step in
# micro-batches of 4 (16 sequences, 16,384 tokens a step).
LLAMA_1B = ["--hidden", "2048", "--intermediate", "8192", "--layers", "16", "--heads", "32",
            "--kv-heads", "8", "--head-dim", "64", "--max-pos", "2048", "--rope-theta",
            "500000", "--dtype", "bf16"]
MODELS = {
    "llama-1b-32k": {"args": LLAMA_1B + ["--vocab", "32000"], "prompt": 512, "response": 512,
                     "batch": 8, "micro": 4},
    "llama-1b-128k": {"args": LLAMA_1B + ["--vocab", "128256"], "prompt": 512, "response": 512,
                      "batch": 8, "micro": 4},
    "qwen2.5-0.5b": {"args": ["--model-type", "qwen2", "--hidden", "896", "--intermediate", "4864",
                              "--layers", "24", "--heads", "14", "--kv-heads", "2", "--head-dim",
                              "64", "--vocab", "151936", "--max-pos", "2048", "--rope-theta",
                              "1000000", "--dtype", "bf16"],
                     "prompt": 512, "response": 512, "batch": 8, "micro": 4},
    # the CPU dry run of the whole pipeline (tests/bench)
    "tiny": {"args": ["--hidden", "32", "--intermediate", "64", "--layers", "2", "--heads", "2",
                      "--kv-heads", "1", "--vocab", "128"], "prompt": 6, "response": 5,
             "batch": 4, "micro": 2, "lr": 1e-3},
}
GPU_MODELS = "llama-1b-128k,llama-1b-32k,qwen2.5-0.5b"
# seconds each variant may take at most, per model size (a 1B step is ~0.1-0.5 s on an
# H100; the rest is start-up: loading, kernel compilation, the reference's precomputation)
CAPS = {"poc": 150, "torch": 90, "trl": 120, "trl+liger": 120}


def po_text(model_dir, pairs, m):
    """DPO as examples/dpo.po states it, on this model and data, with the step's shape, a
    constant learning rate, the file's order, and no evaluation set."""
    lr = m.get("lr", 1e-6)
    return f"""# written by bench/gpu/run.py
policy = model("{model_dir}")
ref    = frozen(policy)
data   = pairs("{pairs}")
param beta = 0.1
def S(m, y) = sum(logp(m, y))
chosen_r   = S(policy, chosen)   - S(ref, chosen)
rejected_r = S(policy, rejected) - S(ref, rejected)
loss = -logsigmoid(beta * (chosen_r - rejected_r))
train {{
  lr = {lr}; schedule = constant; warmup = 0
  batch = {m['batch']}; micro_batch = {m['micro']}; epochs = 1; max_len = {m['prompt'] + m['response']}
  clip = 1.0; precision = bf16; seed = 1; order = sequential; weight_decay = 0
}}
"""


def prepare(a):
    os.makedirs(a.work, exist_ok=True)
    procs = []
    for name in a.models.split(","):
        m = MODELS[name]
        d = os.path.join(a.work, name)
        os.makedirs(d, exist_ok=True)
        pairs = os.path.join(d, "pairs.jsonl")
        cfg_vocab = int(m["args"][m["args"].index("--vocab") + 1])
        write_pairs(pairs, a.steps * m["batch"], m["prompt"], m["response"], cfg_vocab, eos=2, seed=1)
        open(os.path.join(d, "dpo.po"), "w").write(po_text(os.path.join(d, "model"), pairs, m))
        if not os.path.exists(os.path.join(d, "model", "model.safetensors")):
            # the models are written side by side (numpy's generator is one core each)
            procs.append(subprocess.Popen([sys.executable, os.path.join(ROOT, "bench", "train", "make_model.py"),
                                           os.path.join(d, "model"), *m["args"]]))
    for p in procs:
        if p.wait():
            sys.exit("run.py prepare: make_model.py failed")


def last_json(text):
    for line in reversed(text.strip().splitlines()):
        if line.startswith("{"):
            try:
                return json.loads(line)
            except json.JSONDecodeError:
                pass
    return None


def run_capped(cmd, cap, log):
    """(returncode or 'timeout', stdout, seconds) of cmd with a wall-clock cap; its output
    is kept in log. The command runs in a session of its own, so a cap ends its children
    too (poc bench's training binaries), not just the command."""
    t0 = time.time()
    with open(log, "w") as f:
        p = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=f, text=True,
                             start_new_session=True)
        try:
            out, _ = p.communicate(timeout=cap)
        except subprocess.TimeoutExpired:
            os.killpg(p.pid, signal.SIGKILL)
            out, _ = p.communicate()
            f.write(out or "")
            return "timeout", out or "", time.time() - t0
        f.write(out)
    return p.returncode, out, time.time() - t0


def device_line(backend):
    if backend != "cuda":
        from benchlib import cpu_name
        return f"cpu: {cpu_name()}"
    try:
        q = subprocess.run(["nvidia-smi", "--query-gpu=name,memory.total,driver_version,clocks.max.sm",
                            "--format=csv,noheader"], capture_output=True, text=True, timeout=30)
        return "cuda: " + q.stdout.strip().splitlines()[0]
    except Exception as e:  # noqa: BLE001 - the line says what is missing
        return f"cuda: (nvidia-smi unavailable: {e})"


def measure(a):
    deadline = a.deadline or time.time() + 1e9
    names = a.models.split(",")
    rows, peak = [], None
    for name in names:
        m, d = MODELS[name], os.path.join(a.work, name)
        cfg = json.load(open(os.path.join(d, "model", "config.json")))
        data = [json.loads(l) for l in open(os.path.join(d, "pairs.jsonl"))]
        steps = len(data) // m["batch"]
        tok, head, pairs = pair_counts(data)
        flops = model_flops_per_token(cfg, head / tok, pairs / tok)
        common = ["--steps", str(steps), "--batch", str(m["batch"]), "--micro", str(m["micro"]),
                  "--device", a.backend, "--precision", "bf16" if a.backend == "cuda" else "fp32",
                  "--lr", str(m.get("lr", 1e-6))]
        model, pairs_file = os.path.join(d, "model"), os.path.join(d, "pairs.jsonl")
        variants = [
            ("poc", [a.poc, "bench", os.path.join(d, "dpo.po"), "--backend", a.backend, "--steps",
                     str(steps), "--rounds", "1", "--out", os.path.join(d, "poc")] +
                    # the CPU dry run compares with fp32 PyTorch and TRL steps
                    ([] if a.backend == "cuda" else ["--set", "train.precision=fp32"])),
            ("torch", [sys.executable, os.path.join(HERE, "torch_dpo.py"), model, pairs_file, *common,
                       "--precompute-ref"]),
            ("trl", [sys.executable, os.path.join(HERE, "trl_dpo.py"), model, pairs_file, *common]),
            ("trl+liger", [sys.executable, os.path.join(HERE, "trl_dpo.py"), model, pairs_file, *common,
                           "--liger"]),
        ]
        if a.backend != "cuda":
            variants = variants[:3]  # Liger's kernels are Triton: GPU only
        for label, cmd in variants:
            left = deadline - time.time()
            cap = min(CAPS[label], left)
            if cap < 20:
                rows.append({"model": name, "variant": label, "skipped": "the time budget ran out"})
                print(f"{name:>14} {label:>10}: skipped (time budget)", flush=True)
                continue
            if label == "poc" and peak:
                # the GEMM peak is the machine's: measured once, for every model
                os.makedirs(os.path.join(d, "poc"), exist_ok=True)
                open(os.path.join(d, "poc", "peak.json"), "w").write(json.dumps(peak))
            rc, out, wall = run_capped(cmd, cap, os.path.join(d, f"{label}.log"))
            if rc != 0:
                why = f"over its {cap:.0f} s cap" if rc == "timeout" else f"failed (exit {rc}); see {label}.log"
                rows.append({"model": name, "variant": label, "skipped": why})
                print(f"{name:>14} {label:>10}: {why}", flush=True)
                continue
            if label == "poc":
                j = json.load(open(os.path.join(d, "poc", "bench.json")))
                peak = json.load(open(os.path.join(d, "poc", "peak.json")))
                for v in ("fused", "unfused"):
                    x = j["variants"][v]
                    mem = x["device_peak_mib"] if a.backend == "cuda" else x["peak_rss_mib"]
                    rows.append({"model": name, "variant": f"poc {v}", "tokens_per_s": x["tokens_per_s"],
                                 "peak_mib": mem, "loss": x["loss"], "flops": flops, "wall_s": wall,
                                 "split": x["split_s"], "step_s": x["step_s"]})
            else:
                r = last_json(out)
                if not r or "skipped" in r:
                    rows.append({"model": name, "variant": label,
                                 "skipped": (r or {}).get("skipped", "no result line")})
                    print(f"{name:>14} {label:>10}: skipped ({rows[-1]['skipped']})", flush=True)
                    continue
                rows.append({"model": name, "variant": label, "tokens_per_s": r["tokens_per_s"],
                             "peak_mib": r["peak_mib"], "loss": r["loss"], "flops": flops, "wall_s": wall,
                             "step_s": r["step_s"]})
            for r in rows[-2 if label == "poc" else -1:]:
                print(f"{name:>14} {r['variant']:>12}: {r['tokens_per_s']:10.0f} tokens/s, "
                      f"{r['peak_mib']:8.0f} MiB ({r['wall_s']:.0f} s)", flush=True)
    write(a, names, rows, peak)


def write(a, names, rows, peak):
    dev = device_line(a.backend)
    slug = re.sub(r"[^a-z0-9]+", "_", dev.split(":", 1)[1].split(",")[0].strip().lower()).strip("_")
    slug = slug.replace("nvidia_", "") or a.backend
    os.makedirs(a.results, exist_ok=True)
    base = os.path.join(a.results, f"gpu_{slug}" if a.backend == "cuda" else f"gpu_dryrun_{a.backend}")
    gflops = peak["gflops"] if peak else None
    for r in rows:
        if "tokens_per_s" in r and gflops:
            r["mfu"] = r["tokens_per_s"] * r["flops"] / (gflops * 1e9)
    json.dump({"device": dev, "peak": peak, "rows": rows, "date": datetime.date.today().isoformat()},
              open(base + ".json", "w"), indent=1)
    with open(base + ".md", "w") as f:
        f.write(f"# DPO step on one GPU: poc against PyTorch and TRL\n\n")
        f.write(f"Measured {datetime.date.today().isoformat()} by `bench/gpu/run.sh` on `{dev}`.\n\n")
        if peak:
            f.write(f"MFU is against the device's {peak['gemm']} peak that poc measured ({peak['n']}³): "
                    f"{peak['gflops'] / 1e3:.1f} TFLOP/s (`{peak['device']}`).\n\n")
        shapes = sorted({(MODELS[n]["prompt"], MODELS[n]["response"], MODELS[n]["batch"], MODELS[n]["micro"])
                         for n in names})
        shape = "; ".join(f"prompt {p} + response {q} tokens, {b} pairs a step in micro-batches of {mb}"
                          for p, q, b, mb in shapes)
        f.write("Every variant does the same work: the model's config and random weights "
                f"(bench/train/make_model.py), the same synthetic pairs ({shape}; all sequences "
                "of one length, so padded batches hold no padding), the reference's "
                "log-probs computed once before training (poc hoists them; the PyTorch step and TRL "
                "precompute them), fp32 master weights and AdamW, bf16 compute, clipping at 1.0. "
                "tokens/s counts prompt + response tokens of both sequences of a pair, the median "
                "over the steps after the first; peak memory is the device memory the process "
                "allocated (poc: through its allocator; PyTorch and TRL: "
                "torch.cuda.max_memory_allocated). FLOPs per token as `poc bench` counts them "
                "(docs/language.md §15).\n\n")
        f.write("| model | variant | tokens/s | step s | peak MiB | MFU | losses |\n|---|---|---:|---:|---:|---:|---|\n")
        for r in rows:
            if "skipped" in r:
                f.write(f"| {r['model']} | {r['variant']} | — | — | — | — | skipped: {r['skipped']} |\n")
                continue
            mfu = f"{100 * r['mfu']:.1f}%" if r.get("mfu") is not None else "—"
            losses = ", ".join(f"{x:.4f}" for x in r["loss"])
            f.write(f"| {r['model']} | {r['variant']} | {r['tokens_per_s']:.0f} | {r['step_s']:.4g} | "
                    f"{r['peak_mib']:.0f} | {mfu} | {losses} |\n")
        f.write("\nModels: " + "; ".join(
            f"{n} ({layer_params(json.load(open(os.path.join(a.work, n, 'model', 'config.json')))) / 1e6:.1f}M "
            f"layer weights)" for n in names) + ".\n")
    print(f"wrote {base}.md")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("mode", choices=("prepare", "measure"))
    ap.add_argument("work")
    ap.add_argument("--models", default=GPU_MODELS)
    ap.add_argument("--steps", type=int, default=4, help="optimizer steps (prepare: data for them)")
    ap.add_argument("--poc", default=os.path.join(ROOT, "build", "poc"))
    ap.add_argument("--backend", default="cuda", choices=("cuda", "cpu"))
    ap.add_argument("--deadline", type=float, default=0, help="epoch seconds: skip what would end after")
    ap.add_argument("--results", default=os.path.join(ROOT, "bench", "results"))
    a = ap.parse_args()
    a.work = os.path.abspath(a.work)
    a.poc = os.path.abspath(a.poc)
    prepare(a) if a.mode == "prepare" else measure(a)


if __name__ == "__main__":
    main()
