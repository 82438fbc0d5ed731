#!/usr/bin/env python3
"""logsumsq end to end on the bundled model: poc's per-token log Σ_v p(v)² (with logp and
entropy beside it) against transformers' LlamaForCausalLM in float64.

The reference is the peer's own forward: logits of examples/tiny loaded by
LlamaForCausalLM (float64), then log_softmax and logsumexp(2·logp) over the vocabulary
at each target position. transformers' Llama rounds three things to float32 even in a
float64 model: RMSNorm's statistics, the RoPE angles (inv_freq is made in float32) and, in
its eager attention, the softmax. Together they move log-probs by ~1e-5, so for a 1e-10
comparison the reference takes torch's SDPA attention (float64 throughout on the CPU) and
runs the norms and the rotary tables in float64 (the same formulas, the casts left out);
every other operation is the peer's. poc's side is tests/wpo/wpo_head.c, the runtime's
poc_model_forward_out on a device:

  cpu64  fused (chunks of 8 columns, blocks of 5 rows; and the device's own sizes) and
         textbook, to 1e-10
  cpu    the same: entropy and logsumsq to 8e-5, logp to 3e-4 of the float64 truth
         (float32 through four layers: a single token's log-prob carries its logit's
         rounding, ~1e-4, while the two sums over the vocabulary average it); and the
         float heads among themselves (fused in chunks, fused, textbook: the same hidden
         states) to 1e-5
  cuda   (--cuda: a real GPU or the emulation) fused and textbook, which must agree with
         each other to 3e-2 (relative to 1 + |value|: the fused head folds bf16 chunks of
         logits, |Δl| ≤ 2^-9·|l|, the textbook head fp32 ones, and logp, entropy and
         log Σ p² each move by up to ~2·max|Δl|), and with the reference as bf16 allows (median |Δ| 0.05, every
         token within 2 + 10%); the kernels themselves are held to their CPU twins in
         tests/cuda_emul/test_emul_kernels.c

Sequences are pairs.jsonl's prompts with their chosen and rejected responses, and some
responses conditioned on a longer context (prompt ++ rejected | chosen). Exit 77 (skip)
when torch or transformers cannot be had; with --cuda, also when no CUDA device opens.
"""
import argparse
import json
import os
import statistics
import subprocess
import sys

sys.dont_write_bytecode = True
sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
import pycheck  # noqa: E402

SKIP = 77


def sequences(root, n):
    seqs = []
    with open(os.path.join(root, "examples", "data", "pairs.jsonl")) as f:
        for i, line in enumerate(f):
            if i >= n:
                break
            e = json.loads(line)
            seqs.append((e["prompt"], e["chosen"]))
            seqs.append((e["prompt"], e["rejected"]))
            if i % 3 == 0:
                seqs.append((e["prompt"] + e["rejected"], e["chosen"]))
    return seqs


def float64_norms_and_rope(model):
    """RMSNorm and the rotary tables in float64 (see the module's docstring)."""
    import types
    import torch
    from transformers.models.llama import modeling_llama as ml

    def rms_forward(self, x):
        return self.weight * (x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.variance_epsilon))

    def rope_forward(self, x, position_ids):
        freqs = position_ids[..., None].double() * self.inv_freq.double()
        emb = torch.cat((freqs, freqs), dim=-1)
        return (emb.cos() * self.attention_scaling).to(x.dtype), (emb.sin() * self.attention_scaling).to(x.dtype)

    cfg = model.config
    dim = getattr(cfg, "head_dim", None) or cfg.hidden_size // cfg.num_attention_heads
    theta = cfg.rope_parameters["rope_theta"] if getattr(cfg, "rope_parameters", None) else cfg.rope_theta
    n = 0
    for mod in model.modules():
        if isinstance(mod, ml.LlamaRMSNorm):
            mod.forward = types.MethodType(rms_forward, mod)
            n += 1
        elif isinstance(mod, ml.LlamaRotaryEmbedding):
            mod.inv_freq = 1.0 / (theta ** (torch.arange(0, dim, 2, dtype=torch.float64) / dim))
            mod.forward = types.MethodType(rope_forward, mod)
            n += 1
    pycheck.check(n == 2 * cfg.num_hidden_layers + 2, f"patched {n} norm/rope modules")


def reference(root, seqs):
    import torch
    from transformers import LlamaForCausalLM
    torch.set_num_threads(1)
    model = LlamaForCausalLM.from_pretrained(os.path.join(root, "examples", "tiny"),
                                             dtype=torch.float64, attn_implementation="sdpa")
    model.eval()
    float64_norms_and_rope(model)
    rows = []
    with torch.no_grad():
        for ctx, tgt in seqs:
            ids = torch.tensor([ctx + tgt])
            logits = model(input_ids=ids).logits[0].double()
            ls = torch.log_softmax(logits[len(ctx) - 1:-1], dim=-1)
            t = torch.tensor(tgt)
            logp = ls.gather(1, t[:, None])[:, 0]
            ent = -(ls.exp() * ls).sum(-1)
            lss = torch.logsumexp(2 * ls, dim=-1)
            for k in range(len(tgt)):
                rows.append((logp[k].item(), ent[k].item(), lss[k].item()))
    return rows


def run_poc(harness, model, path, backend, mode, chunk, rows):
    p = subprocess.run([harness, model, path, backend, mode, str(chunk), str(rows)],
                       stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, timeout=600)
    if p.returncode == SKIP:
        return None, p.stderr.strip()
    if p.returncode != 0:
        return [], f"exit {p.returncode}: {p.stderr.strip()}"
    return [tuple(float(x) for x in l.split()) for l in p.stdout.splitlines()], ""


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--harness", required=True)
    ap.add_argument("--root", required=True)
    ap.add_argument("--scratch", required=True)
    ap.add_argument("--cuda", action="store_true", help="check the cuda device instead of the CPU ones")
    ap.add_argument("--lines", type=int, default=12)
    a = ap.parse_args()
    why = pycheck.need("torch", "transformers")
    if why:
        print("skipped:", why)
        return SKIP
    os.makedirs(a.scratch, exist_ok=True)
    seqs = sequences(a.root, a.lines)
    path = os.path.join(a.scratch, "seqs.txt")
    with open(path, "w") as f:
        for ctx, tgt in seqs:
            f.write(",".join(map(str, ctx)) + "|" + ",".join(map(str, tgt)) + "\n")
    ref = reference(a.root, seqs)
    model = os.path.join(a.root, "examples", "tiny")
    names = ("logp", "entropy", "logsumsq")
    # the quantity under test must vary, or agreement would prove little
    spread = max(r[2] for r in ref) - min(r[2] for r in ref)
    pycheck.check(spread > 0.5, f"reference logsumsq spans only {spread:.3g}")
    print(f"{len(seqs)} sequences, {len(ref)} target tokens; reference logsumsq in "
          f"[{min(r[2] for r in ref):.4f}, {max(r[2] for r in ref):.4f}]")

    if a.cuda:
        got = {}
        for mode in ("fused", "unfused"):
            out, msg = run_poc(a.harness, model, path, "cuda", mode, 0, 0)
            if out is None:
                print("skipped: no cuda device:", msg)
                return SKIP
            if not pycheck.check(len(out) == len(ref), f"cuda {mode}: {len(out)} rows, {msg}"):
                return pycheck.finish("wpo_head_cuda")
            got[mode] = out
        for q in range(3):
            d_heads = max(abs(x[q] - y[q]) / (1 + abs(y[q])) for x, y in zip(got["fused"], got["unfused"]))
            pycheck.check(d_heads <= 3e-2, f"cuda fused vs textbook {names[q]}: {d_heads:.3g} > 3e-2")
            ds = [abs(x[q] - r[q]) for x, r in zip(got["fused"], ref)]
            med, mx = statistics.median(ds), max(ds)
            # bf16 weights and activations through four layers: typical tokens agree to a few
            # thousandths, a few move by more (the bound of tests/cuda_emul/cli_check.py)
            worst = max(abs(x[q] - r[q]) / (2 + 0.1 * abs(r[q])) for x, r in zip(got["fused"], ref))
            pycheck.check(med <= 0.05, f"cuda {names[q]} vs transformers: median |Δ| {med:.3g} > 0.05")
            pycheck.check(worst <= 1, f"cuda {names[q]} vs transformers: a token is off by more than "
                                      f"2 + 10% of its value (max |Δ| {mx:.3g})")
            print(f"cuda {names[q]:8s}: fused vs textbook {d_heads:.3g} (relative); vs transformers "
                  f"median |Δ| {med:.3g}, max {mx:.3g}")
        return pycheck.finish("wpo_head_cuda")

    for backend, tols in (("cpu64", (1e-10, 1e-10, 1e-10)), ("cpu", (3e-4, 8e-5, 8e-5))):
        first = None
        for mode, chunk, rows in (("fused", 8, 5), ("fused", 0, 0), ("unfused", 0, 0)):
            out, msg = run_poc(a.harness, model, path, backend, mode, chunk, rows)
            label = f"{backend} {mode}" + (f" chunk {chunk} rows {rows}" if chunk else "")
            if not pycheck.check(out is not None and len(out) == len(ref),
                                 f"{label}: {0 if out is None else len(out)} rows for {len(ref)}: {msg}"):
                continue
            for q in range(3):
                worst = max(abs(x[q] - r[q]) for x, r in zip(out, ref))
                pycheck.check(worst <= tols[q], f"{label} {names[q]}: max |Δ| {worst:.3g} > {tols[q]:g}")
                line = f"{label:28s} {names[q]:8s} max |Δ| {worst:.3g} (tolerance {tols[q]:g})"
                if first is not None:
                    heads = max(abs(x[q] - y[q]) for x, y in zip(out, first))
                    pycheck.check(heads <= 1e-5, f"{label} {names[q]}: {heads:.3g} from the chunked head")
                    line += f"; {heads:.3g} from the chunked head"
                print(line)
            first = first or out
    return pycheck.finish("wpo_head")


if __name__ == "__main__":
    sys.exit(main())
