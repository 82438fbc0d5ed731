#!/usr/bin/env python3
"""Writes a randomly initialised Llama model in the Hugging Face layout (config.json +
model.safetensors, float32) for the training benchmark.

usage: make_model.py DIR [--hidden 384] [--layers 6] [--vocab 32000] [--seed 0]
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
    a = ap.parse_args()
    hd = a.hidden // a.heads
    cfg = {
        "architectures": ["LlamaForCausalLM"], "model_type": "llama",
        "vocab_size": a.vocab, "hidden_size": a.hidden, "intermediate_size": a.intermediate,
        "num_hidden_layers": a.layers, "num_attention_heads": a.heads,
        "num_key_value_heads": a.kv_heads, "head_dim": hd, "max_position_embeddings": a.max_pos,
        "rope_theta": 10000.0, "rms_norm_eps": 1e-5, "hidden_act": "silu",
        "tie_word_embeddings": True, "attention_bias": False, "bos_token_id": 1,
        "eos_token_id": 2, "pad_token_id": 0, "torch_dtype": "float32",
    }
    rng = np.random.default_rng(a.seed)
    tensors = {}

    def lin(name, out, inp):
        tensors[name] = (rng.standard_normal((out, inp)) * (1.0 / np.sqrt(inp))).astype(np.float32)

    tensors["model.embed_tokens.weight"] = (rng.standard_normal((a.vocab, a.hidden)) * 0.02).astype(np.float32)
    for i in range(a.layers):
        p = f"model.layers.{i}."
        tensors[p + "input_layernorm.weight"] = np.ones(a.hidden, np.float32)
        lin(p + "self_attn.q_proj.weight", a.heads * hd, a.hidden)
        lin(p + "self_attn.k_proj.weight", a.kv_heads * hd, a.hidden)
        lin(p + "self_attn.v_proj.weight", a.kv_heads * hd, a.hidden)
        lin(p + "self_attn.o_proj.weight", a.hidden, a.heads * hd)
        tensors[p + "post_attention_layernorm.weight"] = np.ones(a.hidden, np.float32)
        lin(p + "mlp.gate_proj.weight", a.intermediate, a.hidden)
        lin(p + "mlp.up_proj.weight", a.intermediate, a.hidden)
        lin(p + "mlp.down_proj.weight", a.hidden, a.intermediate)
    tensors["model.norm.weight"] = np.ones(a.hidden, np.float32)
    header, off = {}, 0
    for name, t in tensors.items():
        header[name] = {"dtype": "F32", "shape": list(t.shape), "data_offsets": [off, off + t.nbytes]}
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
