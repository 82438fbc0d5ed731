#!/usr/bin/env python3
"""A hand-written PyTorch DPO step, the baseline a researcher would write without a
trainer: the model from transformers (SDPA attention), fp32 master weights under bf16
autocast, the textbook log-probs (full logits, log-softmax, gather on the response
tokens), the sigmoid DPO loss, gradient accumulation over micro-batches, global-norm
clipping and torch's AdamW. Trains MODEL_DIR on PAIRS (poc's token-id JSONL) for N
optimizer steps and prints one JSON line:

  {"tokens_per_s": median over the steps after the first, "step_s": ..., "peak_mib": ...,
   "loss": [every step's loss], "device": ..., "steps": N}

tokens count each sequence's prompt + response without padding, as poc counts its packed
tokens; peak memory is torch's peak allocation on CUDA, the process's peak resident set on
the CPU. With --precompute-ref the reference log-probs of every example are computed once
before training from the initial weights (what poc's hoisting and TRL's
precompute_ref_log_probs do); without it a frozen copy runs forward every step.

usage: torch_dpo.py MODEL_DIR PAIRS.jsonl [--steps 4] [--batch 8] [--micro 4]
                    [--device cuda|cpu] [--precision bf16|fp32] [--lr 1e-6] [--beta 0.1]
                    [--clip 1.0] [--precompute-ref]
"""
import copy
import json
import os
import resource
import statistics
import sys
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
from benchlib import step_parser  # noqa: E402


def main():
    ap = step_parser()
    ap.add_argument("--clip", type=float, default=1.0)
    ap.add_argument("--precompute-ref", action="store_true")
    a = ap.parse_args()
    if a.batch % a.micro:
        sys.exit("torch_dpo.py: --micro must divide --batch")
    import torch
    import torch.nn.functional as F
    from transformers import AutoModelForCausalLM

    dev = torch.device(a.device)
    cuda = dev.type == "cuda"
    torch.manual_seed(0)
    rows = [json.loads(l) for l in open(a.pairs) if l.strip()]
    if len(rows) < a.steps * a.batch:
        sys.exit(f"torch_dpo.py: {a.pairs} has {len(rows)} pairs, {a.steps} steps of "
                 f"{a.batch} need {a.steps * a.batch}")
    rows = rows[:a.steps * a.batch]
    model = AutoModelForCausalLM.from_pretrained(a.model, dtype=torch.float32,
                                                 attn_implementation="sdpa").to(dev)
    model.config.use_cache = False
    model.train()
    ref = None if a.precompute_ref else copy.deepcopy(model).eval().requires_grad_(False)
    opt = torch.optim.AdamW(model.parameters(), lr=a.lr, betas=(0.9, 0.999), eps=1e-8,
                            weight_decay=0.0, **({"fused": True} if cuda else {}))
    amp = torch.autocast(dev.type, dtype=torch.bfloat16, enabled=a.precision == "bf16")

    def batch_of(ex):
        """[2b, T] ids of prompt ++ chosen then prompt ++ rejected, right-padded; the
        response mask on the predicted positions; the unpadded token count."""
        seqs, resp = [], []
        for key in ("chosen", "rejected"):
            for r in ex:
                seqs.append(r["prompt"] + r[key])
                resp.append(len(r[key]))
        T = max(len(s) for s in seqs)
        ids = torch.zeros(len(seqs), T, dtype=torch.long)
        att = torch.zeros(len(seqs), T, dtype=torch.long)
        mask = torch.zeros(len(seqs), T - 1)
        for i, (s, n) in enumerate(zip(seqs, resp)):
            ids[i, :len(s)] = torch.tensor(s)
            att[i, :len(s)] = 1
            mask[i, len(s) - 1 - n:len(s) - 1] = 1  # position t predicts token t + 1
        return ids.to(dev), att.to(dev), mask.to(dev), sum(len(s) for s in seqs)

    def seq_logps(m, ids, att, mask):
        """Σ over response tokens of log p(token | before): the full logits, log-softmax
        in fp32, gather."""
        with amp:
            logits = m(input_ids=ids, attention_mask=att).logits[:, :-1]
        lp = F.log_softmax(logits.float(), dim=-1).gather(-1, ids[:, 1:, None]).squeeze(-1)
        return (lp * mask).sum(-1)

    ref_lp = {}
    if a.precompute_ref:
        with torch.no_grad():
            for i in range(0, len(rows), a.micro):
                ids, att, mask, _ = batch_of(rows[i:i + a.micro])
                ref_lp[i] = seq_logps(model, ids, att, mask)

    times, tokens, losses = [], [], []
    n_micro = a.batch // a.micro
    for step in range(a.steps):
        if cuda:
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        step_loss, step_tokens = 0.0, 0
        for k in range(n_micro):
            i = step * a.batch + k * a.micro
            ids, att, mask, ntok = batch_of(rows[i:i + a.micro])
            step_tokens += ntok
            pol = seq_logps(model, ids, att, mask)
            if a.precompute_ref:
                rl = ref_lp[i]
            else:
                with torch.no_grad():
                    rl = seq_logps(ref, ids, att, mask)
            b = pol.shape[0] // 2
            margin = (pol[:b] - rl[:b]) - (pol[b:] - rl[b:])
            loss = -F.logsigmoid(a.beta * margin).mean() / n_micro
            loss.backward()
            step_loss += loss.item()
        if a.clip > 0:
            torch.nn.utils.clip_grad_norm_(model.parameters(), a.clip)
        opt.step()
        opt.zero_grad(set_to_none=True)
        if cuda:
            torch.cuda.synchronize()
        times.append(time.perf_counter() - t0)
        tokens.append(step_tokens)
        losses.append(step_loss)
    tps = [n / t for n, t in zip(tokens, times)]
    if cuda:
        peak = torch.cuda.max_memory_allocated() / 2**20
        device = torch.cuda.get_device_name()
    else:
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0
        device = "cpu"
    print(json.dumps({"tokens_per_s": statistics.median(tps[1:] or tps),
                      "step_s": statistics.median(times[1:] or times), "peak_mib": peak,
                      "loss": losses, "device": device, "steps": a.steps}))


if __name__ == "__main__":
    sys.exit(main())
