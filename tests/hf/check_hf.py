#!/usr/bin/env python3
"""Independent check of poc's model against Hugging Face transformers.

For each supported architecture, builds a random tiny model with transformers, saves it
with save_pretrained (fp32, once bf16, once sharded), scores a pairs file with
`poc logp`, and compares every per-token log-prob with the HF model's (float64, eager
attention) to 1e-4 absolute. Then writes the model back through poc (model_tool resave:
poc_weights_load_f32 + poc_model_save_f32), loads that folder in transformers, and checks
it has the same weights, config and log-probs. Greedy `poc generate` is compared with an
argmax loop over the HF model.

Exits 77 (ctest's skip) when torch or transformers cannot be imported.
"""
import argparse
import json
import os
import random
import shutil
import subprocess
import sys
import time

SKIP = 77
TOL = 1e-4

try:
    import torch
    import transformers
    from transformers import (AutoConfig, AutoModelForCausalLM, LlamaConfig, MistralConfig,
                              Qwen2Config)
except Exception as e:  # noqa: BLE001 - any import failure means "cannot check here"
    print(f"skipped: torch/transformers not importable ({type(e).__name__}: {e})")
    sys.exit(SKIP)

transformers.logging.set_verbosity_error()
transformers.utils.logging.disable_progress_bar()
torch.set_num_threads(1)

COMMON = dict(num_hidden_layers=2, max_position_embeddings=128, rms_norm_eps=1e-5,
              hidden_act="silu", bos_token_id=1, eos_token_id=2)


def cases():
    """(name, config, save options) for each architecture and feature poc supports."""
    return [
        ("llama-gqa", LlamaConfig(hidden_size=64, intermediate_size=96, num_attention_heads=4,
                                  num_key_value_heads=2, vocab_size=211, tie_word_embeddings=False,
                                  **COMMON), {}),
        ("llama-tied-llama3",
         LlamaConfig(hidden_size=64, intermediate_size=80, num_attention_heads=4, num_key_value_heads=4,
                     vocab_size=173, tie_word_embeddings=True,
                     rope_theta=500000.0,
                     rope_scaling={"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0,
                                   "high_freq_factor": 4.0, "original_max_position_embeddings": 32},
                     **COMMON), {}),
        # HF's llama attention_bias puts biases on q, k, v and o.
        ("llama-attention-bias",
         LlamaConfig(hidden_size=32, intermediate_size=64, num_attention_heads=4, num_key_value_heads=2,
                     vocab_size=160, attention_bias=True, **COMMON), {}),
        ("llama-bf16", LlamaConfig(hidden_size=32, intermediate_size=64, num_attention_heads=4,
                                   num_key_value_heads=1, vocab_size=150, **COMMON), {"bf16": True}),
        ("llama-sharded", LlamaConfig(hidden_size=32, intermediate_size=64, num_attention_heads=2,
                                      num_key_value_heads=1, vocab_size=257, **COMMON),
         {"max_shard_size": "40KB"}),
        ("mistral", MistralConfig(hidden_size=48, intermediate_size=64, num_attention_heads=4,
                                  num_key_value_heads=2, head_dim=16, vocab_size=199, sliding_window=100,
                                  **COMMON), {}),
        ("qwen2", Qwen2Config(hidden_size=64, intermediate_size=96, num_attention_heads=4,
                              num_key_value_heads=2, vocab_size=233, tie_word_embeddings=True,
                              rope_theta=1000000.0, **COMMON), {}),
    ]


def randomize(model, seed):
    """HF's init (std 0.02) leaves every distribution near uniform; larger random weights
    make attention, RoPE and the norms matter to the log-probs being compared."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("norm.weight"):
                p.copy_(1 + 0.2 * torch.randn(p.shape, generator=g))
            elif name.endswith(".bias"):
                p.copy_(0.3 * torch.randn(p.shape, generator=g))
            else:
                fan_in = p.shape[-1]
                p.copy_(torch.randn(p.shape, generator=g) * (1.5 / fan_in ** 0.5))


def make_pairs(path, vocab, rng, n=7):
    """A pairs file: prompts of 1..14 tokens (one line has a 1-token prompt), responses of
    1..12; the last line holds the longest sequence."""
    rows = []
    for i in range(n):
        lp = 1 if i == 0 else rng.randint(1, 14)
        rows.append({"prompt": [rng.randrange(vocab) for _ in range(lp)],
                     "chosen": [rng.randrange(vocab) for _ in range(rng.randint(1, 12))],
                     "rejected": [rng.randrange(vocab) for _ in range(rng.randint(1, 12))],
                     "margin": 0.5})
    rows.append({"prompt": [rng.randrange(vocab) for _ in range(40)],
                 "chosen": [rng.randrange(vocab) for _ in range(30)],
                 "rejected": [rng.randrange(vocab) for _ in range(3)]})
    with open(path, "w") as f:
        for r in rows:
            f.write(json.dumps(r) + "\n")
    return rows


def hf_logps(model, prompt, resp):
    ids = torch.tensor([prompt + resp])
    with torch.no_grad():
        logits = model(input_ids=ids).logits[0].double()
    lp = torch.log_softmax(logits, dim=-1)
    n = len(prompt)
    return [lp[n - 1 + j, t].item() for j, t in enumerate(resp)]


def run(cmd, **kw):
    p = subprocess.run(cmd, capture_output=True, text=True, **kw)
    if p.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} exited {p.returncode}:\n{p.stderr}")
    return p.stdout


class Checker:
    def __init__(self):
        self.failures = 0
        self.checks = 0

    def ok(self, cond, what):
        self.checks += 1
        if not cond:
            self.failures += 1
            print(f"FAIL: {what}")


def compare_logp(chk, name, poc_out, rows, model, fields=("chosen", "rejected")):
    """poc's per-token log-probs and sums against the HF model's, line by line."""
    got = [json.loads(l) for l in poc_out.splitlines() if l.strip()]
    chk.ok(len(got) == len(rows), f"{name}: {len(got)} output lines for {len(rows)} input lines")
    worst = 0.0
    for i, (g, r) in enumerate(zip(got, rows)):
        chk.ok(g.get("line") == i + 1, f"{name}: line number {g.get('line')} != {i + 1}")
        for fld in fields:
            want = hf_logps(model, r["prompt"], r[fld])
            toks = g[fld]["tokens"]
            chk.ok(len(toks) == len(want), f"{name}: line {i + 1} {fld}: {len(toks)} tokens, want {len(want)}")
            err = max((abs(a - b) for a, b in zip(toks, want)), default=0.0)
            serr = abs(g[fld]["sum"] - sum(want))
            worst = max(worst, err, serr)
            chk.ok(err <= TOL, f"{name}: line {i + 1} {fld}: token log-prob differs by {err:.3g}")
            chk.ok(serr <= TOL, f"{name}: line {i + 1} {fld}: sum differs by {serr:.3g}")
    return worst


def check_case(chk, args, name, cfg, opts, seed):
    rng = random.Random(seed)
    torch.manual_seed(seed)
    base = os.path.join(args.scratch, name)
    shutil.rmtree(base, ignore_errors=True)
    os.makedirs(base)
    model = AutoModelForCausalLM.from_config(cfg, attn_implementation="eager", dtype=torch.float32)
    randomize(model, seed)
    model.eval()
    hf_dir = os.path.join(base, "hf")
    if opts.get("bf16"):
        model = model.to(torch.bfloat16)
    model.save_pretrained(hf_dir, max_shard_size=opts.get("max_shard_size", "5GB"))
    # The reference is what transformers itself reads back, in float64 (a model cast to
    # bf16 in memory would also have rounded its RoPE frequencies).
    model = AutoModelForCausalLM.from_pretrained(hf_dir, attn_implementation="eager", dtype=torch.float64)
    model.eval()
    files = os.listdir(hf_dir)
    if opts.get("max_shard_size"):
        chk.ok("model.safetensors.index.json" in files, f"{name}: save_pretrained did not shard ({files})")

    data = os.path.join(base, "pairs.jsonl")
    rows = make_pairs(data, cfg.vocab_size, rng)
    out = run([args.poc, "logp", hf_dir, data])
    worst = compare_logp(chk, name, out, rows, model)

    # --field picks one response; a points file uses "response".
    out = run([args.poc, "logp", hf_dir, data, "--field", "rejected"])
    compare_logp(chk, name + " --field", out, rows, model, fields=("rejected",))
    chk.ok(all("chosen" not in json.loads(l) for l in out.splitlines()), f"{name}: --field printed chosen")
    if name == "qwen2":
        pts = os.path.join(base, "points.jsonl")
        prow = [{"prompt": r["prompt"], "response": r["chosen"], "reward": 1.0} for r in rows]
        with open(pts, "w") as f:
            f.write("".join(json.dumps(r) + "\n" for r in prow))
        out = run([args.poc, "logp", hf_dir, pts])
        compare_logp(chk, name + " points", out, prow, model, fields=("response",))

    # poc's checkpoint, loaded by transformers: same config, same weights, same log-probs.
    poc_dir = os.path.join(base, "poc")
    run([args.model_tool, "resave", hf_dir, poc_dir])
    back, info = AutoModelForCausalLM.from_pretrained(poc_dir, attn_implementation="eager",
                                                      dtype=torch.float64, output_loading_info=True)
    back.eval()
    chk.ok(type(back).__name__ == type(model).__name__, f"{name}: poc's folder loads as {type(back).__name__}")
    for k in ("missing_keys", "unexpected_keys", "mismatched_keys"):
        chk.ok(not info.get(k), f"{name}: loading poc's folder: {k} = {info.get(k)}")
    c2 = AutoConfig.from_pretrained(poc_dir)
    for k in ("hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads",
              "num_key_value_heads", "vocab_size", "tie_word_embeddings", "max_position_embeddings",
              "rms_norm_eps", "head_dim", "attention_bias", "sliding_window"):
        a, b = getattr(cfg, k, None), getattr(c2, k, None)
        if k == "head_dim" and a is None:
            a = cfg.hidden_size // cfg.num_attention_heads
        chk.ok(a == b, f"{name}: config {k}: {a} vs poc's {b}")
    chk.ok(getattr(cfg, "rope_parameters", None) == getattr(c2, "rope_parameters", None),
           f"{name}: rope_parameters {getattr(cfg, 'rope_parameters', None)} vs {getattr(c2, 'rope_parameters', None)}")
    sd_a, sd_b = model.state_dict(), back.state_dict()
    same = sd_a.keys() == sd_b.keys() and all(torch.equal(sd_a[k], sd_b[k]) for k in sd_a)
    chk.ok(same, f"{name}: weights differ after a trip through poc")
    r = rows[-1]
    d = max(abs(a - b) for a, b in zip(hf_logps(back, r["prompt"], r["chosen"]),
                                       hf_logps(model, r["prompt"], r["chosen"])))
    chk.ok(d == 0.0, f"{name}: HF log-probs of poc's checkpoint differ by {d}")

    # And once as BF16: transformers reads the same rounding torch does.
    if name == "llama-gqa":
        bf_dir = os.path.join(base, "poc-bf16")
        run([args.model_tool, "resave", hf_dir, bf_dir, "BF16"])
        back16 = AutoModelForCausalLM.from_pretrained(bf_dir, attn_implementation="eager")
        sd16 = back16.state_dict()
        same = all(torch.equal(sd16[k].float(), sd_a[k].float().to(torch.bfloat16).float()) for k in sd_a)
        chk.ok(same, f"{name}: BF16 checkpoint differs from torch's rounding")
        chk.ok(str(back16.config.dtype) in ("torch.bfloat16", "bfloat16"),
               f"{name}: BF16 checkpoint's dtype is {back16.config.dtype}")

    # Greedy decoding: poc generate against an argmax loop over the HF model, up to eos.
    prompt = rows[1]["prompt"]
    out = json.loads(run([args.poc, "generate", hf_dir, "--prompt-ids", ",".join(map(str, prompt)),
                          "--tokens", "8"]))
    seq, want = list(prompt), []
    for _ in range(8):
        with torch.no_grad():
            nxt = int(model(input_ids=torch.tensor([seq])).logits[0, -1].argmax())
        want.append(nxt)
        seq.append(nxt)
        if nxt == cfg.eos_token_id:
            break
    chk.ok(out.get("prompt") == prompt, f"{name}: generate echoed prompt {out.get('prompt')}")
    chk.ok(out.get("tokens") == want, f"{name}: greedy tokens {out.get('tokens')} vs HF {want}")
    return worst


def check_errors(chk, args):
    """Bad data lines: file:line: error, exit 2, nothing printed."""
    base = os.path.join(args.scratch, "llama-gqa")
    hf_dir = os.path.join(base, "hf")
    bad = os.path.join(args.scratch, "bad.jsonl")
    cases = [
        ('{"prompt": [1], "chosen": [2], "rejected": [3]}\n{"prompt": [1], "chosen": [2],\n', 2, "malformed JSON"),
        ('{"chosen": [2], "rejected": [3]}\n', 1, 'missing "prompt"'),
        ('\n{"prompt": [1], "chosen": [2], "rejected": [999]}\n', 2, "token id 999 is outside the vocabulary"),
        ('{"prompt": [1], "chosen": [], "rejected": [3]}\n', 1, '"chosen" is empty'),
        ('{"prompt": [1], "chosen": [2.5], "rejected": [3]}\n', 1, "is not a token id"),
        ('{"prompt": [1]}\n', 1, "no response field"),
    ]
    for text, line, msg in cases:
        with open(bad, "w") as f:
            f.write(text)
        p = subprocess.run([args.poc, "logp", hf_dir, bad], capture_output=True, text=True)
        want = f"{bad}:{line}: error: "
        chk.ok(p.returncode == 2 and p.stdout == "" and want in p.stderr and msg in p.stderr,
               f"bad line ({msg}): exit {p.returncode}, stdout {p.stdout!r}, stderr {p.stderr!r}")
    p = subprocess.run([args.poc, "logp", hf_dir, bad, "--backend", "cuda"], capture_output=True, text=True)
    chk.ok(p.returncode == 2 and "--backend cuda" in p.stderr, f"--backend cuda: {p.stderr!r}")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--poc", required=True)
    ap.add_argument("--model-tool", required=True)
    ap.add_argument("--scratch", required=True)
    args = ap.parse_args()
    os.makedirs(args.scratch, exist_ok=True)
    chk = Checker()
    t0 = time.time()
    for i, (name, cfg, opts) in enumerate(cases()):
        try:
            worst = check_case(chk, args, name, cfg, opts, seed=100 + i)
            print(f"{name}: largest log-prob difference {worst:.2e}")
        except Exception as e:  # noqa: BLE001 - report and go on to the next model
            chk.ok(False, f"{name}: {type(e).__name__}: {e}")
    check_errors(chk, args)
    print(f"hf_logp: {chk.checks - chk.failures} passed, {chk.failures} failed "
          f"(torch {torch.__version__}, transformers {transformers.__version__}, {time.time() - t0:.1f} s)")
    return 1 if chk.failures else 0


if __name__ == "__main__":
    sys.exit(main())
