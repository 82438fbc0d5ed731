#!/usr/bin/env python3
"""TRL's DPOTrainer on the same work as poc's DPO step: MODEL_DIR trained on PAIRS (poc's
token-id JSONL, read through an id-word tokenizer so TRL's own data path gives back the
same ids) for N optimizer steps of BATCH pairs in micro-batches of MICRO, sigmoid loss,
constant learning rate, clipping at 1.0, no gradient checkpointing (poc keeps its
activations too), the reference's log-probs computed once before training
(precompute_ref_log_probs, as poc hoists them). Prints one JSON line like torch_dpo.py's:

  {"tokens_per_s", "step_s", "peak_mib", "loss": [...], "device", "steps", "liger"}

TRL 1.16's DPOTrainer computes the log-probs with its own chunked LM head (the full
logits are never stored). --liger adds Liger's kernels (use_liger_kernel: RMSNorm, RoPE,
SwiGLU); TRL 1.16 refuses Liger's fused linear cross-entropy, since it would replace that
head, so the loss itself stays TRL's. Without the liger_kernel package, --liger prints
{"skipped": reason} and exits 0.

usage: trl_dpo.py MODEL_DIR PAIRS.jsonl [--steps 4] [--batch 8] [--micro 4]
                  [--device cuda|cpu] [--precision bf16|fp32] [--lr 1e-6] [--beta 0.1]
                  [--liger]
"""
import json
import os
import resource
import statistics
import sys
import tempfile
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
from benchlib import id_tokenizer, step_parser, trl_rows  # noqa: E402


def main():
    ap = step_parser()
    ap.add_argument("--liger", action="store_true")
    a = ap.parse_args()
    if a.liger:
        try:
            import liger_kernel  # noqa: F401
        except ImportError as e:
            print(json.dumps({"skipped": f"liger_kernel is not installed ({e})"}))
            return 0
    import torch
    from datasets import Dataset
    from transformers import AutoModelForCausalLM, TrainerCallback
    from trl import DPOConfig, DPOTrainer

    cuda = a.device.startswith("cuda")
    cfg = json.load(open(os.path.join(a.model, "config.json")))
    eos = cfg["eos_token_id"]
    tok = id_tokenizer(cfg["vocab_size"], eos)
    rows = [json.loads(l) for l in open(a.pairs) if l.strip()][:a.steps * a.batch]
    if len(rows) < a.steps * a.batch:
        sys.exit(f"trl_dpo.py: {a.pairs} has too few pairs for {a.steps} steps of {a.batch}")
    if any(r["chosen"][-1] != eos or r["rejected"][-1] != eos for r in rows):
        # TRL appends eos to a response that lacks it: the work would differ from poc's
        sys.exit("trl_dpo.py: every response must end in the model's eos token")
    ds = Dataset.from_list(trl_rows(rows))
    tokens = [sum(2 * len(r["prompt"]) + len(r["chosen"]) + len(r["rejected"])
                  for r in rows[s * a.batch:(s + 1) * a.batch]) for s in range(a.steps)]
    longest = max(len(r["prompt"]) + max(len(r["chosen"]), len(r["rejected"])) for r in rows)
    model = AutoModelForCausalLM.from_pretrained(a.model, dtype=torch.float32,
                                                 attn_implementation="sdpa")
    times = []

    class Clock(TrainerCallback):
        def on_step_begin(self, args, state, control, **kw):
            if cuda:
                torch.cuda.synchronize()
            self.t0 = time.perf_counter()

        def on_step_end(self, args, state, control, **kw):
            if cuda:
                torch.cuda.synchronize()
            times.append(time.perf_counter() - self.t0)

    with tempfile.TemporaryDirectory() as out:
        args = DPOConfig(output_dir=out, per_device_train_batch_size=a.micro,
                         gradient_accumulation_steps=a.batch // a.micro, max_steps=a.steps,
                         learning_rate=a.lr, lr_scheduler_type="constant", warmup_steps=0,
                         weight_decay=0.0, max_grad_norm=1.0, beta=a.beta, loss_type=["sigmoid"],
                         max_length=longest, precompute_ref_log_probs=True,
                         gradient_checkpointing=False, logging_steps=1, report_to=[],
                         save_strategy="no", use_cpu=not cuda, bf16=a.precision == "bf16",
                         seed=1, dataloader_num_workers=0, use_liger_kernel=a.liger,
                         train_sampling_strategy="sequential")
        tr = DPOTrainer(model=model, args=args, train_dataset=ds, processing_class=tok,
                        callbacks=[Clock()])
        tr.train()
        losses = [h["loss"] for h in tr.state.log_history if "loss" in h]
    tps = [n / t for n, t in zip(tokens, times)]
    if cuda:
        peak = torch.cuda.max_memory_allocated() / 2**20
        device = torch.cuda.get_device_name()
    else:
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0
        device = "cpu"
    print(json.dumps({"tokens_per_s": statistics.median(tps[1:] or tps),
                      "step_s": statistics.median(times[1:] or times), "peak_mib": peak,
                      "loss": losses, "device": device, "steps": len(times), "liger": a.liger}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
