#!/usr/bin/env python3
"""bf16 on the CPU: poc's cpu-bf16 device (oneDNN GEMMs, bf16 operands, fp32 master weights
and AdamW state) against a hand-written PyTorch DPO step under
torch.autocast("cpu", dtype=torch.bfloat16), and poc fp32, side by side in one run, on
random Llamas (bench/train/make_model.py) of ~20M and ~60M parameters with vocabularies of
32k and 128k.

One optimizer step, for both: the batch of examples/dpo.po's train block (16 pairs,
micro-batches of 8, max_len 64) from examples/data/pairs.jsonl; the policy's forward on
prompt ++ chosen and prompt ++ rejected, the frozen reference's forward on the same, DPO's
loss (β = 0.1) on the responses' summed log-probabilities, backward, gradient clipping to
1.0 and AdamW (lr 2e-5, weight decay 0). poc's binary is built with --no-hoist so that its
step computes the reference as PyTorch's does (by default poc caches the reference before
training; that row is reported too). PyTorch pads each micro-batch to its longest
sequence; poc packs. tokens/s counts the same thing for both: the policy's real (unpadded)
tokens per second of step, the median over the steps after the first. Peak memory is each
process's VmHWM (wait4's ru_maxrss), library and interpreter included.

Each configuration is its own process; the best of --rounds, alternated. Runs from the
repository root. Writes bench/results/cpu_bf16.md.

usage: bench/cpu/bf16.py [--poc build/poc] [--steps 3] [--rounds 1] [--models 20M-32k,...]
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
import time

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))

SIZES = {"20M": [], "60M": ["--hidden", "640", "--intermediate", "1728", "--layers", "10",
                            "--heads", "10", "--kv-heads", "2"]}
VOCABS = {"32k": 32000, "128k": 128256}
BATCH, MICRO, MAX_LEN, BETA, LR = 16, 8, 64, 0.1, 2e-5


MEMORY_NOTE = """Why the memory target is out of reach with fp32 state: cpu-bf16 keeps what
mixed precision needs per trainable parameter — fp32 master weight (4 B), fp32 gradient
(4), AdamW's two fp32 moments (8) and the bf16 compute copy (2) — plus the frozen
reference's bf16 copy (2): 20 bytes per parameter before any activation, the floor of any
trainer that keeps fp32 master weights and AdamW state, as poc does on every device.
PyTorch autocast holds at least 4 + 4 + 8 for the policy, 4 for the fp32 reference and
the bf16 casts of the policy's weights that autocast keeps for the backward (2): 22 bytes
per parameter, plus activations, logits and 300–400 MiB of libraries. A third of that is
below poc's floor of 20 wherever the parameters dominate; the target is within reach only
where PyTorch's activations, logits and libraries outweigh its parameter state (a small
model). What poc saves is everything but that state: no padded batch, no [tokens ×
vocabulary] logits (the fused head streams them in cache-sized blocks), no autograd
graph, a runtime of a few MiB."""


def params_of(cfg):
    h, L, i, v = (cfg["hidden_size"], cfg["num_hidden_layers"], cfg["intermediate_size"],
                  cfg["vocab_size"])
    kvd = cfg["num_key_value_heads"] * (h // cfg["num_attention_heads"])
    return v * h + L * (2 * h * h + 2 * h * kvd + 3 * h * i + 2 * h) + h


def cpu_name():
    for line in open("/proc/cpuinfo"):
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return platform.processor() or "unknown CPU"


def cpu_flags():
    for line in open("/proc/cpuinfo"):
        if line.startswith("flags"):
            have = set(line.split(":", 1)[1].split())
            return " ".join(f for f in ("avx2", "avx512f", "avx512_bf16", "amx_bf16", "amx_tile")
                            if f in have)
    return ""


def spawn(argv, stderr_path):
    """Runs argv from the repository root; (exit status, wall s, VmHWM MiB)."""
    t0 = time.time()
    pid = os.fork()
    if pid == 0:
        os.chdir(ROOT)
        fd = os.open(os.devnull, os.O_WRONLY)
        os.dup2(fd, 1)
        err = os.open(stderr_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        os.dup2(err, 2)
        os.execv(argv[0], argv)
    _, status, ru = os.wait4(pid, 0)
    return os.waitstatus_to_exitcode(status), time.time() - t0, ru.ru_maxrss / 1024.0


def poc_run(binary, steps, out):
    rc, _, hwm = spawn([binary, "--backend", "cpu", "--steps", str(steps), "--out", out],
                       out + ".stderr")
    err = open(out + ".stderr").read()
    if rc:
        raise RuntimeError(f"{binary} failed ({rc}):\n{err[-2000:]}")
    rows = [json.loads(l) for l in open(os.path.join(out, "metrics.jsonl")) if l.strip()]
    tps = [r["tokens_per_s"] for r in rows if "tokens_per_s" in r]
    return statistics.median(tps[1:] or tps), hwm, err.splitlines()[0]


def torch_run(mdir, pairs, steps, out):
    rc, _, hwm = spawn([sys.executable, os.path.abspath(__file__), "--torch-worker", mdir, pairs,
                        str(steps), out], out + ".stderr")
    if rc:
        raise RuntimeError(f"PyTorch step failed ({rc}):\n{open(out + '.stderr').read()[-2000:]}")
    tps = json.load(open(out))["tokens_per_s"]
    return statistics.median(tps[1:] or tps), hwm


def torch_worker(mdir, pairs, steps, out):
    """The PyTorch DPO step, written here from DPO's definition."""
    import torch
    import torch.nn.functional as F
    from transformers import LlamaForCausalLM
    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", os.cpu_count())))
    torch.manual_seed(1)
    policy = LlamaForCausalLM.from_pretrained(mdir, torch_dtype=torch.float32)
    ref = LlamaForCausalLM.from_pretrained(mdir, torch_dtype=torch.float32)
    ref.eval().requires_grad_(False)
    policy.train()
    opt = torch.optim.AdamW(policy.parameters(), lr=LR, weight_decay=0.0)
    data = [json.loads(l) for l in open(pairs)]

    def batch(rows):
        """prompt ++ response for chosen then rejected, truncated to MAX_LEN, right-padded;
        mask marks the response's target positions"""
        seqs, starts = [], []
        for key in ("chosen", "rejected"):
            for r in rows:
                s = (r["prompt"] + r[key])[:MAX_LEN]
                seqs.append(s)
                starts.append(min(len(r["prompt"]), len(s)))
        n = max(len(s) for s in seqs)
        ids = torch.zeros(len(seqs), n, dtype=torch.long)
        att = torch.zeros(len(seqs), n, dtype=torch.long)
        mask = torch.zeros(len(seqs), n - 1)
        for i, s in enumerate(seqs):
            ids[i, :len(s)] = torch.tensor(s)
            att[i, :len(s)] = 1
            mask[i, starts[i] - 1:len(s) - 1] = 1
        return ids, att, mask, sum(len(s) for s in seqs)

    def seq_logp(model, ids, att, mask):
        logits = model(input_ids=ids, attention_mask=att).logits[:, :-1].float()
        lp = torch.gather(F.log_softmax(logits, -1), 2, ids[:, 1:, None]).squeeze(2)
        return (lp * mask).sum(-1)

    rates = []
    for step in range(steps):
        rows = data[step * BATCH:(step + 1) * BATCH]
        t0, tokens = time.perf_counter(), 0
        opt.zero_grad(set_to_none=True)
        for m0 in range(0, BATCH, MICRO):
            ids, att, mask, ntok = batch(rows[m0:m0 + MICRO])
            tokens += ntok
            with torch.autocast("cpu", dtype=torch.bfloat16):
                with torch.no_grad():
                    r = seq_logp(ref, ids, att, mask)
                p = seq_logp(policy, ids, att, mask)
            k = len(rows[m0:m0 + MICRO])
            margin = (p[:k] - r[:k]) - (p[k:] - r[k:])
            loss = -F.logsigmoid(BETA * margin).sum() / BATCH
            loss.backward()
        torch.nn.utils.clip_grad_norm_(policy.parameters(), 1.0)
        opt.step()
        rates.append(tokens / (time.perf_counter() - t0))
    json.dump({"tokens_per_s": rates}, open(out, "w"))


def main():
    if len(sys.argv) > 1 and sys.argv[1] == "--torch-worker":
        return torch_worker(sys.argv[2], sys.argv[3], int(sys.argv[4]), sys.argv[5])
    ap = argparse.ArgumentParser()
    ap.add_argument("--poc", default=os.path.join(ROOT, "build", "poc"))
    ap.add_argument("--steps", type=int, default=3)
    ap.add_argument("--rounds", type=int, default=1)
    ap.add_argument("--models", default="20M-32k,20M-128k,60M-32k,60M-128k")
    a = ap.parse_args()
    rows, lines = [], {}
    with tempfile.TemporaryDirectory(prefix="poc-bf16bench-") as tmp:
        pairs = os.path.join(tmp, "pairs.jsonl")
        with open(os.path.join(ROOT, "examples/data/pairs.jsonl")) as f, open(pairs, "w") as g:
            g.writelines(f.readlines()[:BATCH * (a.steps + 1)])
        evals = os.path.join(tmp, "eval.jsonl")
        with open(os.path.join(ROOT, "examples/data/eval.jsonl")) as f, open(evals, "w") as g:
            g.writelines(f.readlines()[:16])
        for spec in a.models.split(","):
            size, voc = spec.split("-")
            mdir = os.path.join(tmp, "llama" + spec)
            subprocess.run([sys.executable, os.path.join(ROOT, "bench", "train", "make_model.py"),
                            mdir, *SIZES[size], "--vocab", str(VOCABS[voc])], check=True,
                           stdout=subprocess.DEVNULL)
            cfg = json.load(open(os.path.join(mdir, "config.json")))
            bins = {}
            for prec, hoist in (("fp32", False), ("bf16", False), ("bf16", True)):
                text = open(os.path.join(ROOT, "examples", "dpo.po")).read()
                text = re.sub(r'model\("examples/tiny"\)', f'model("{mdir}")', text)
                text = text.replace("precision = fp32", f"precision = {prec}")
                text = text.replace('"examples/data/pairs.jsonl"', json.dumps(pairs))
                text = text.replace('"examples/data/eval.jsonl"', json.dumps(evals))
                tag = f"{prec}{'-hoist' if hoist else ''}"
                po = os.path.join(tmp, f"dpo-{spec}-{tag}.po")
                open(po, "w").write(text)
                b = os.path.join(tmp, f"dpo-{spec}-{tag}")
                subprocess.run([a.poc, "build", po, "-o", b] + ([] if hoist else ["--no-hoist"]),
                               check=True, cwd=ROOT, stdout=subprocess.DEVNULL)
                bins[tag] = b
            res = {}
            order = ["torch", "bf16", "fp32", "bf16-hoist"]
            for r in range(a.rounds):
                for v in (order if r % 2 == 0 else order[::-1]):
                    out = os.path.join(tmp, f"run-{spec}-{v}-{r}")
                    if v == "torch":
                        tps, hwm = torch_run(mdir, pairs, a.steps, out + ".json")
                    else:
                        tps, hwm, line = poc_run(bins[v], a.steps, out)
                        lines[v] = line
                    old = res.get(v)
                    res[v] = (max(tps, old[0]) if old else tps, min(hwm, old[1]) if old else hwm)
                    print(f"{spec:>9} {v:>10}: {res[v][0]:8.0f} tokens/s, VmHWM {res[v][1]:7.0f} MiB",
                          flush=True)
            rows.append((spec, cfg, res))
    out = os.path.join(ROOT, "bench", "results", "cpu_bf16.md")
    threads = os.environ.get("OMP_NUM_THREADS", str(os.cpu_count()))
    import torch
    with open(out, "w") as f:
        f.write("# bf16 on the CPU: poc's cpu-bf16 device vs PyTorch autocast\n\n")
        f.write(f"Measured {datetime.date.today().isoformat()} on {cpu_name()} ({os.cpu_count()} "
                f"cores, OMP_NUM_THREADS={threads}; CPU flags {cpu_flags()}), {platform.system()} "
                f"{platform.release()}, torch {torch.__version__}, by `bench/cpu/bf16.py --steps "
                f"{a.steps} --rounds {a.rounds}`.\n\n")
        if os.environ.get("NOTE"):
            f.write(os.environ["NOTE"] + "\n\n")
        f.write("Device lines:\n\n")
        for v, line in sorted(lines.items()):
            f.write(f"- poc {v}: `{line}`\n")
        f.write(f"\nOne DPO optimizer step as bench/cpu/bf16.py's docstring defines it (batch "
                f"{BATCH}, micro-batch {MICRO}, max_len {MAX_LEN}, policy + reference forward, "
                f"backward, clipping, AdamW), {a.steps} steps per run, best of {a.rounds}. poc "
                f"rows compute the reference every step (`poc build --no-hoist`) like the "
                f"PyTorch step, except \"poc bf16, hoisted\" (poc's default: the reference is "
                f"cached before training, its time not in the step). Target: poc bf16 ≥ 1.5× "
                f"PyTorch's tokens/s at ≤ 1/3 of its peak memory.\n\n")
        f.write("| model | params | vocab | PyTorch bf16 tok/s | MiB | poc bf16 tok/s | MiB | "
                "poc fp32 tok/s | MiB | poc bf16 hoisted tok/s | MiB | speed ×PyTorch | memory "
                "/PyTorch |\n|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|\n")
        for spec, cfg, res in rows:
            params, v = params_of(cfg), cfg["vocab_size"]
            t, b, p, bh = res["torch"], res["bf16"], res["fp32"], res["bf16-hoist"]
            f.write(f"| {spec.split('-')[0]} | {params / 1e6:.1f}M | {v} | {t[0]:.0f} | {t[1]:.0f} | "
                    f"{b[0]:.0f} | {b[1]:.0f} | {p[0]:.0f} | {p[1]:.0f} | {bh[0]:.0f} | {bh[1]:.0f} | "
                    f"{b[0] / t[0]:.2f}× | {b[1] / t[1]:.2f} |\n")
        met_s = [spec for spec, _, res in rows if res["bf16"][0] >= 1.5 * res["torch"][0]]
        met_m = [spec for spec, _, res in rows if res["bf16"][1] <= res["torch"][1] / 3]
        f.write(f"\nAgainst the target: speed (≥ 1.5×) met for {len(met_s)} of {len(rows)} "
                f"models ({', '.join(met_s) or 'none'}); memory (≤ 1/3) met for {len(met_m)} of "
                f"{len(rows)} ({', '.join(met_m) or 'none'}). poc bf16's peak per parameter: "
                + ", ".join(f"{spec} {res['bf16'][1] * 2**20 / p:.1f} B"
                            for spec, p, res in ((s_, params_of(c_), r_) for s_, c_, r_ in rows))
                + ".\n\n" + MEMORY_NOTE + "\n")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
