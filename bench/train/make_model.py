#!/usr/bin/env python3
"""Writes a randomly initialised Llama-family model in the Hugging Face layout
(config.json + model.safetensors) for the training benchmarks.

usage: make_model.py DIR [--hidden 384] [--intermediate 1024] [--layers 6] [--heads 6]
                     [--kv-heads 2] [--head-dim D] [--vocab 32000] [--max-pos 512] [--seed 0]
                     [--model-type llama|qwen2] [--rope-theta 10000] [--dtype f32|bf16]
                     [--untied]
qwen2 gives q/k/v biases (Qwen2's attention) and rms_norm_eps 1e-6; bf16 halves the file
(the GPU benchmark's 1B models).
"""
import argparse
import json
import os
import struct

import numpy as np


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("dir")
    ap.add_argument("--hidden", type=int, default=384)
    ap.add_argument("--intermediate", type=int, default=1024)
    ap.add_argument("--layers", type=int, default=6)
    ap.add_argument("--heads", type=int, default=6)
    ap.add_argument("--kv-heads", type=int, default=2)
    ap.add_argument("--vocab", type=int, default=32000)
    ap.add_argument("--max-pos", type=int, default=512)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--head-dim", type=int, default=0, help="default hidden / heads")
    ap.add_argument("--model-type", choices=("llama", "qwen2"), default="llama")
    ap.add_argument("--rope-theta", type=float, default=10000.0)
    ap.add_argument("--dtype", choices=("f32", "bf16"), default="f32")
    ap.add_argument("--untied", action="store_true", help="a separate lm_head")
    a = ap.parse_args()
    hd = a.head_dim or a.hidden // a.heads
    qwen = a.model_type == "qwen2"
    cfg = {
        "architectures": ["Qwen2ForCausalLM" if qwen else "LlamaForCausalLM"],
        "model_type": a.model_type,
        "vocab_size": a.vocab, "hidden_size": a.hidden, "intermediate_size": a.intermediate,
        "num_hidden_layers": a.layers, "num_attention_heads": a.heads,
        "num_key_value_heads": a.kv_heads, "head_dim": hd, "max_position_embeddings": a.max_pos,
        "rope_theta": a.rope_theta, "rms_norm_eps": 1e-6 if qwen else 1e-5, "hidden_act": "silu",
        "tie_word_embeddings": not a.untied, "bos_token_id": 1,
        "eos_token_id": 2, "pad_token_id": 0,
        "torch_dtype": "bfloat16" if a.dtype == "bf16" else "float32",
    }
    if qwen:
        cfg.update({"use_sliding_window": False, "sliding_window": None, "max_window_layers": a.layers})
    else:
        cfg["attention_bias"] = False
    rng = np.random.default_rng(a.seed)
    tensors = {}

    def normal(shape, std):
        return rng.standard_normal(shape, dtype=np.float32) * np.float32(std)

    def lin(name, out, inp):
        tensors[name] = normal((out, inp), 1.0 / np.sqrt(inp))

    tensors["model.embed_tokens.weight"] = normal((a.vocab, a.hidden), 0.02)
    for i in range(a.layers):
        p = f"model.layers.{i}."
        tensors[p + "input_layernorm.weight"] = np.ones(a.hidden, np.float32)
        lin(p + "self_attn.q_proj.weight", a.heads * hd, a.hidden)
        lin(p + "self_attn.k_proj.weight", a.kv_heads * hd, a.hidden)
        lin(p + "self_attn.v_proj.weight", a.kv_heads * hd, a.hidden)
        lin(p + "self_attn.o_proj.weight", a.hidden, a.heads * hd)
        if qwen:
            for proj, width in (("q", a.heads * hd), ("k", a.kv_heads * hd), ("v", a.kv_heads * hd)):
                tensors[p + f"self_attn.{proj}_proj.bias"] = normal((width,), 0.02)
        tensors[p + "post_attention_layernorm.weight"] = np.ones(a.hidden, np.float32)
        lin(p + "mlp.gate_proj.weight", a.intermediate, a.hidden)
        lin(p + "mlp.up_proj.weight", a.intermediate, a.hidden)
        lin(p + "mlp.down_proj.weight", a.hidden, a.intermediate)
    tensors["model.norm.weight"] = np.ones(a.hidden, np.float32)
    if a.untied:
        lin("lm_head.weight", a.vocab, a.hidden)
    if a.dtype == "bf16":
        # round to nearest even on the top 16 bits (the data are finite)
        for name, t in tensors.items():
            u = t.view(np.uint32)
            tensors[name] = ((u + np.uint32(0x7FFF) + ((u >> 16) & np.uint32(1))) >> 16).astype(np.uint16)
    dt = "BF16" if a.dtype == "bf16" else "F32"
    header, off = {}, 0
    for name, t in tensors.items():
        header[name] = {"dtype": dt, "shape": list(t.shape), "data_offsets": [off, off + t.nbytes]}
        off += t.nbytes
    hj = json.dumps(header).encode()
    hj += b" " * (-len(hj) % 8)
    os.makedirs(a.dir, exist_ok=True)
    with open(os.path.join(a.dir, "config.json"), "w") as f:
        json.dump(cfg, f, indent=2)
    with open(os.path.join(a.dir, "model.safetensors"), "wb") as f:
        f.write(struct.pack("<Q", len(hj)))
        f.write(hj)
        for t in tensors.values():
            f.write(t.tobytes())
    n = sum(t.size for t in tensors.values())
    print(f"{a.dir}: {n / 1e6:.1f}M parameters")


if __name__ == "__main__":
    main()
