#!/usr/bin/env python3
"""make_task.py — the embedded default: a synthetic addition task and a tiny Llama.

Vocabulary (32 ids):
    0 pad, 1 bos, 2 eos, 3 sep, 4..13 the digits '0'..'9', 14 '+', 15 '=', 16..31 spare.

Task: `bos a + b =` -> the digits of a + b, then eos, for 0 <= a, b < 1000. Every number is
written least significant digit first (the order a person adds in, so each answer digit
depends only on the digits at its place and the carry from the one before), and the
operands are zero-padded to three digits: 407 + 25 is `bos 7 0 4 + 5 2 0 =` -> `2 3 4 eos`.
Whether a response is right is decided by program, so accuracy is exact.

The SFT demonstrations come from a careless demonstrator: in FLAW = 60% of the problems
with a carry from the tens into the hundreds it forgets that carry (407 + 95 -> `2 0 4`,
402 instead of 502). SFT imitates the habit: the SFT model answers about 40% of prompts
wrong, always in this way, which is the middling, systematic error preference data can
fix: the preference pairs' rejected answers are subtly wrong answers of this and other
kinds, their chosen answers right.

Files written (one JSON object a line, token ids only):
    examples/data/sft.jsonl     points: {"prompt", "response", "reward"}: the demonstrations,
                                reward 1 when right and 0 when the habit struck (SFT
                                ignores it; a .po file could filter on it)
    examples/data/pairs.jsonl   pairs: chosen right, rejected subtly wrong (one digit off by
                                one, a dropped carry, or two neighbouring digits swapped),
                                plus "chosen_scores" (one score per chosen token, see below)
                                and "margin" (how many digits the rejected answer gets wrong)
    examples/data/points.jsonl  points: several responses per prompt, reward = 0.8 × the
                                fraction of answer digits that are right (1 for a right one)
    examples/data/eval.jsonl    {"prompt", "answer"}: held-out prompts (no training prompt
                                repeats here), the answer without eos
    examples/tiny/              config.json + model.safetensors (F32): a randomly
                                initialised Llama (hidden 64, 4 layers, 4 heads, 2 KV heads)

chosen_scores plays the per-token reward-model score CoPO reads: 1.0 on the chosen digits
that the rejected answer gets wrong (the tokens that decide the preference), 0.5 on the
other digits, 0.25 on eos.

Everything is deterministic from --seed. The random model is only the starting point: the
shipped examples/tiny/model.safetensors is that model after SFT by poc itself
(examples/sft.po); tools/make_default.sh runs the whole chain (this script, the SFT run,
then `--sft-from` on its last checkpoint). `--model-only` rewrites just the random model,
`--data-only` just the data, and `--sft-from DIR` copies a trained model folder over
examples/tiny.

Standard library only.
"""

import argparse
import json
import os
import random
import shutil
import struct
import sys

PAD, BOS, EOS, SEP = 0, 1, 2, 3
DIGIT0 = 4
PLUS, EQUALS = 14, 15
WIDTH = 3
# The SFT demonstrator's habit: it forgets the carry from the tens into the hundreds in
# this fraction of the problems that have one (see make_data).
FLAW = 0.6
VOCAB = 32


def written(n):
    """n's digits in the order the task writes them: least significant first."""
    return str(n)[::-1]


def digits(n):
    return tok(written(n))


def prompt_of(a, b):
    """Operands zero-padded to WIDTH digits, so digit i of each sits at a fixed place."""
    pad = lambda n: tok(written(n).ljust(WIDTH, "0"))  # noqa: E731
    return [BOS] + pad(a) + [PLUS] + pad(b) + [EQUALS]


def carry_columns(a, b):
    """The columns (0 = units) whose sum carries into the next one."""
    xa, xb = str(a)[::-1], str(b)[::-1]
    cols = max(len(xa), len(xb))
    carries = []
    carry = 0
    for i in range(cols):
        s = (int(xa[i]) if i < len(xa) else 0) + (int(xb[i]) if i < len(xb) else 0) + carry
        carry = s // 10
        if carry:
            carries.append(i)
    return carries


def tok(s):
    return [DIGIT0 + int(c) for c in s]


def add_dropping(a, b, drop):
    """a + b column by column, forgetting the carry out of column `drop`."""
    xa, xb = str(a)[::-1], str(b)[::-1]
    cols = max(len(xa), len(xb))
    out, carry = [], 0
    for i in range(cols):
        s = (int(xa[i]) if i < len(xa) else 0) + (int(xb[i]) if i < len(xb) else 0) + carry
        out.append(s % 10)
        carry = s // 10
        if i == drop:
            carry = 0
    if carry:
        out.append(carry)
    return int("".join(str(d) for d in reversed(out)))


def wrong_answers(a, b, rng):
    """Subtly wrong answers (as digit strings), each different from the right one."""
    right = str(a + b)
    outs = []
    # one digit off by one
    i = rng.randrange(len(right))
    d = int(right[i])
    nd = d + 1 if d < 9 and (d == 0 or rng.random() < 0.5) else d - 1
    if i == 0 and nd == 0 and len(right) > 1:
        nd = d + 1 if d < 9 else d - 1
    outs.append(right[:i] + str(nd) + right[i + 1:])
    # a dropped carry
    carries = carry_columns(a, b)
    if carries:
        outs.append(str(add_dropping(a, b, rng.choice(carries))))
    # two neighbouring digits swapped
    swaps = [j for j in range(len(right) - 1) if right[j] != right[j + 1]]
    if swaps and not (swaps == [0] and right[1] == "0"):
        j = rng.choice([s for s in swaps if not (s == 0 and right[1] == "0")] or swaps)
        outs.append(right[:j] + right[j + 1] + right[j] + right[j + 2:])
    seen, uniq = set(), []
    for w in outs:
        if w != right and w not in seen:
            seen.add(w)
            uniq.append(w)
    return uniq


def digit_score(right, wrong):
    """Fraction of the right answer's digits the wrong one matches, position by position."""
    hits = sum(1 for i, c in enumerate(right) if i < len(wrong) and wrong[i] == c)
    return hits / len(right)


def make_data(out_dir, seed, n_sft, n_train, n_eval):
    """n_sft SFT prompts; preference pairs and points on the first n_train of them."""
    rng = random.Random(seed)
    n_sft = max(n_sft, n_train)
    problems = set()
    while len(problems) < n_sft + n_eval:
        a = rng.randrange(0, 10 ** WIDTH)
        b = rng.randrange(0, 10 ** WIDTH)
        problems.add((a, b))
    problems = sorted(problems)
    rng.shuffle(problems)
    train, held = problems[:n_sft], problems[n_sft:]

    os.makedirs(out_dir, exist_ok=True)
    sft, pairs, points = [], [], []
    for k, (a, b) in enumerate(train):
        p = prompt_of(a, b)
        good = digits(a + b) + [EOS]
        demo = good
        if 1 in carry_columns(a, b) and rng.random() < FLAW:
            demo = digits(add_dropping(a, b, 1)) + [EOS]
        sft.append({"prompt": p, "response": demo, "reward": 1.0 if demo == good else 0.0})
        if k >= n_train:
            continue
        right = written(a + b)
        wrongs = [w[::-1] for w in wrong_answers(a, b, rng)]
        w = rng.choice(wrongs)
        scores = [1.0 if i >= len(w) or w[i] != c else 0.5 for i, c in enumerate(right)]
        scores.append(0.25)
        pairs.append({"prompt": p, "chosen": good, "rejected": tok(w) + [EOS],
                      "chosen_scores": scores,
                      "margin": float(sum(1 for s in scores if s == 1.0))})
        points.append({"prompt": p, "response": good, "reward": 1.0})
        for w2 in wrongs[:2]:
            points.append({"prompt": p, "response": tok(w2) + [EOS],
                           "reward": round(0.8 * digit_score(right, w2), 4)})
    evals = [{"prompt": prompt_of(a, b), "answer": digits(a + b)} for a, b in held]

    def dump(name, rows):
        path = os.path.join(out_dir, name)
        with open(path + ".tmp", "w") as f:
            for r in rows:
                f.write(json.dumps(r, separators=(",", ":")) + "\n")
        os.replace(path + ".tmp", path)

    dump("sft.jsonl", sft)
    dump("pairs.jsonl", pairs)
    dump("points.jsonl", points)
    dump("eval.jsonl", evals)
    return len(sft), len(pairs), len(points), len(evals)


# ---- the model --------------------------------------------------------------------------

CONFIG = {
    "architectures": ["LlamaForCausalLM"],
    "model_type": "llama",
    "vocab_size": VOCAB,
    "hidden_size": 64,
    "intermediate_size": 176,
    "num_hidden_layers": 4,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "head_dim": 16,
    "max_position_embeddings": 64,
    "rope_theta": 10000.0,
    "rms_norm_eps": 1e-5,
    "hidden_act": "silu",
    "tie_word_embeddings": False,
    "attention_bias": False,
    "bos_token_id": BOS,
    "eos_token_id": EOS,
    "pad_token_id": PAD,
    "torch_dtype": "float32",
}


def model_tensors(cfg):
    """HF Llama tensor names and shapes, [out, in] for linear weights."""
    H, I, V = cfg["hidden_size"], cfg["intermediate_size"], cfg["vocab_size"]
    nh, nkv, hd = cfg["num_attention_heads"], cfg["num_key_value_heads"], cfg["head_dim"]
    t = [("model.embed_tokens.weight", (V, H))]
    for l in range(cfg["num_hidden_layers"]):
        p = "model.layers.%d." % l
        t += [(p + "input_layernorm.weight", (H,)),
              (p + "self_attn.q_proj.weight", (nh * hd, H)),
              (p + "self_attn.k_proj.weight", (nkv * hd, H)),
              (p + "self_attn.v_proj.weight", (nkv * hd, H)),
              (p + "self_attn.o_proj.weight", (H, nh * hd)),
              (p + "post_attention_layernorm.weight", (H,)),
              (p + "mlp.gate_proj.weight", (I, H)),
              (p + "mlp.up_proj.weight", (I, H)),
              (p + "mlp.down_proj.weight", (H, I))]
    t.append(("model.norm.weight", (H,)))
    if not cfg["tie_word_embeddings"]:
        t.append(("lm_head.weight", (V, H)))
    return t


def write_safetensors(path, tensors):
    """tensors: [(name, shape, [floats])] -> F32 safetensors, header padded to 8 bytes."""
    header, blobs, off = {}, [], 0
    for name, shape, vals in sorted(tensors, key=lambda x: x[0]):
        blob = struct.pack("<%df" % len(vals), *vals)
        header[name] = {"dtype": "F32", "shape": list(shape), "data_offsets": [off, off + len(blob)]}
        blobs.append(blob)
        off += len(blob)
    header["__metadata__"] = {"format": "pt"}
    h = json.dumps(header, separators=(",", ":")).encode()
    h += b" " * ((8 - len(h) % 8) % 8)
    with open(path + ".tmp", "wb") as f:
        f.write(struct.pack("<Q", len(h)))
        f.write(h)
        for b in blobs:
            f.write(b)
    os.replace(path + ".tmp", path)


def make_model(out_dir, seed, std=0.02):
    rng = random.Random(seed)
    os.makedirs(out_dir, exist_ok=True)
    tensors = []
    for name, shape in model_tensors(CONFIG):
        n = 1
        for s in shape:
            n *= s
        if name.endswith("norm.weight"):
            vals = [1.0] * n
        else:
            vals = [rng.gauss(0.0, std) for _ in range(n)]
        tensors.append((name, shape, vals))
    write_safetensors(os.path.join(out_dir, "model.safetensors"), tensors)
    with open(os.path.join(out_dir, "config.json"), "w") as f:
        json.dump(CONFIG, f, indent=2)
        f.write("\n")
    return sum(len(v) for _, _, v in tensors)


def main(argv):
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", default=os.path.join(root, "examples"),
                    help="examples folder (data/ and tiny/ are written inside)")
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--sft", type=int, default=20000, help="SFT prompts")
    ap.add_argument("--train", type=int, default=2000,
                    help="prompts with preference pairs and scored points (a subset of the SFT ones)")
    ap.add_argument("--eval", type=int, default=500, help="held-out prompts")
    g = ap.add_mutually_exclusive_group()
    g.add_argument("--data-only", action="store_true", help="write only examples/data")
    g.add_argument("--model-only", action="store_true",
                   help="write only the random-init model examples/tiny")
    g.add_argument("--sft-from", metavar="DIR",
                   help="install a trained model folder (config.json + model.safetensors, "
                        "e.g. runs/sft-.../ckpt-N) as examples/tiny")
    a = ap.parse_args(argv)
    if a.sft_from:
        dst = os.path.join(a.out, "tiny")
        os.makedirs(dst, exist_ok=True)
        for name in ("config.json", "model.safetensors"):
            src = os.path.join(a.sft_from, name)
            if not os.path.isfile(src):
                sys.exit("make_task.py: %s: missing" % src)
            shutil.copyfile(src, os.path.join(dst, name + ".tmp"))
            os.replace(os.path.join(dst, name + ".tmp"), os.path.join(dst, name))
        print("installed %s as %s" % (a.sft_from, dst))
        return 0
    if not a.model_only:
        n = make_data(os.path.join(a.out, "data"), a.seed, a.sft, a.train, a.eval)
        print("data: %d sft, %d pairs, %d points, %d eval lines" % n)
    if not a.data_only:
        n = make_model(os.path.join(a.out, "tiny"), a.seed)
        print("model: %d parameters (random init)" % n)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
