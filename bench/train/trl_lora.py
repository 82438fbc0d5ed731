#!/usr/bin/env python3
"""TRL's DPOTrainer with a PEFT LoRA adapter on the CPU, for bench/train/lora.py: trains the
given model folder on the given pairs (token ids, as poc reads them) for N optimizer steps
and prints one JSON line: tokens/s (median over the steps after the first, counting each
sequence's prompt + response tokens without padding, as poc counts its packed tokens).
Peak memory is the caller's to measure (this is one process).

usage: trl_lora.py MODEL_DIR PAIRS.jsonl --steps N [--r 16 --alpha 32 --dropout 0.05]
                   [--full]   (no adapter: full DPO, TRL's reference a second model copy)

The token ids become text with one character per id (bench/benchlib.py), so TRL's own
tokenisation gives back exactly the ids of the data.
"""
import argparse
import json
import os
import statistics
import sys
import tempfile
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
from benchlib import id_tokenizer, trl_rows  # noqa: E402

def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("model")
    ap.add_argument("pairs")
    ap.add_argument("--steps", type=int, default=6)
    ap.add_argument("--r", type=int, default=16)
    ap.add_argument("--alpha", type=float, default=32)
    ap.add_argument("--dropout", type=float, default=0.05)
    ap.add_argument("--full", action="store_true")
    a = ap.parse_args()
    import torch
    from datasets import Dataset
    from peft import LoraConfig
    from transformers import AutoModelForCausalLM, TrainerCallback
    from trl import DPOConfig, DPOTrainer

    cfg = json.load(open(os.path.join(a.model, "config.json")))
    tok = id_tokenizer(cfg["vocab_size"], cfg["eos_token_id"])
    rows = [json.loads(l) for l in open(a.pairs) if l.strip()]

    ds = Dataset.from_list(trl_rows(rows))
    batch, micro = 16, 8
    tokens = [sum(2 * len(r["prompt"]) + len(r["chosen"]) + len(r["rejected"])
                  for r in rows[s * batch:(s + 1) * batch]) for s in range(a.steps)]
    model = AutoModelForCausalLM.from_pretrained(a.model, dtype=torch.float32)
    times = []

    class Clock(TrainerCallback):
        def on_step_begin(self, args, state, control, **kw):
            self.t0 = time.perf_counter()

        def on_step_end(self, args, state, control, **kw):
            times.append(time.perf_counter() - self.t0)

    with tempfile.TemporaryDirectory() as out:
        args = DPOConfig(output_dir=out, per_device_train_batch_size=micro,
                         gradient_accumulation_steps=batch // micro, max_steps=a.steps,
                         learning_rate=2e-4, lr_scheduler_type="cosine", beta=0.1,
                         max_length=64, logging_steps=1, report_to=[], save_strategy="no",
                         use_cpu=True, bf16=False, seed=1, dataloader_num_workers=0)
        peft_cfg = None if a.full else LoraConfig(
            r=a.r, lora_alpha=a.alpha, lora_dropout=a.dropout, task_type="CAUSAL_LM",
            target_modules=["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj",
                            "down_proj"])
        tr = DPOTrainer(model=model, args=args, train_dataset=ds, processing_class=tok,
                        peft_config=peft_cfg, callbacks=[Clock()])
        tr.train()
    tps = [n / t for n, t in zip(tokens[1:], times[1:])] or [tokens[0] / times[0]]
    print(json.dumps({"tokens_per_s": statistics.median(tps), "steps": len(times)}))


if __name__ == "__main__":
    sys.exit(main())
