"""text_check.py — poc's text edges against the tokenizers library itself.

The test makes its own tokenizers with `tokenizers` (no download):
  - byte-level BPE (GPT-2 / Llama-3 / Qwen2 style) with special and non-special added tokens;
  - SentencePiece-style BPE with <0xNN> byte fallback, decoded as Llama-2 declares it
    (Replace ▁→space, ByteFallback, Fuse, Strip) and with a Metaspace decoder.
Checks:
  1. `poc decode` of random id sequences (multi-byte UTF-8 cut anywhere, byte-fallback runs,
     specials) equals Tokenizer.decode, skip_special_tokens both ways;
  2. `poc generate --prompt TEXT` encodes to Tokenizer.encode(TEXT).ids and prints the text of
     its generation as Tokenizer.decode does;
  3. a training run with prompts(...) writes OUT/eval/step-N.jsonl whose ids are the model's
     generations and whose text fields decode them;
  4. a tokenizer with ids past config.json's vocab_size is refused naming both files, by
     poc generate and by a training binary before it trains.
"""
import argparse
import json
import os
import random
import shutil
import subprocess
import sys
import tempfile

sys.dont_write_bytecode = True
sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
from pycheck import check, finish, need  # noqa: E402

CORPUS = [
    "Hello world, this is a small test of the tokenizer.",
    "Ünïcödé text: naïve café, Straße, façade — “quotes” and ‘more’.",
    "日本語のテキストと中文文本，还有한국어 텍스트.",
    "Emoji 😀🎉🚀 mixed with numbers 12345 and symbols #$%&*.",
    "Ελληνικά και русский текст, עברית ועربي.",
    "def f(x):\n    return x * 2  # code\n\tindented\n",
] * 20


def byte_level():
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tr = trainers.BpeTrainer(vocab_size=420, special_tokens=["<|endoftext|>", "<|im_start|>"],
                             initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tok.train_from_iterator(CORPUS, tr)
    tok.add_tokens(["<extra_plain>", " wörld"])  # added, not special
    tok.add_special_tokens(["<|im_end|>"])
    return tok


def sentencepiece(decoder):
    """BPE over ▁-joined text with <unk>, <s>, </s> and the 256 <0xNN> pieces in the model's
    vocabulary, as Llama-2's tokenizer.json has them."""
    from tokenizers import Tokenizer, models, normalizers, trainers
    base = Tokenizer(models.BPE())
    base.normalizer = normalizers.Sequence([normalizers.Prepend("▁"), normalizers.Replace(" ", "▁")])
    base.train_from_iterator(CORPUS, trainers.BpeTrainer(vocab_size=300, show_progress=False))
    j = json.loads(base.to_str())
    pieces = sorted(j["model"]["vocab"].items(), key=lambda kv: kv[1])
    front = ["<unk>", "<s>", "</s>"] + [f"<0x{b:02X}>" for b in range(256)]
    vocab = {p: i for i, p in enumerate(front)}
    for p, _ in pieces:
        vocab.setdefault(p, len(vocab))
    j["model"].update(vocab=vocab, byte_fallback=True, unk_token="<unk>", fuse_unk=True)
    j["added_tokens"] = [{"id": i, "content": c, "single_word": False, "lstrip": False,
                          "rstrip": False, "normalized": False, "special": True}
                         for i, c in enumerate(["<unk>", "<s>", "</s>"])]
    j["pre_tokenizer"] = None
    if decoder == "llama2":
        j["decoder"] = {"type": "Sequence", "decoders": [
            {"type": "Replace", "pattern": {"String": "▁"}, "content": " "},
            {"type": "ByteFallback"}, {"type": "Fuse"},
            {"type": "Strip", "content": " ", "start": 1, "stop": 0}]}
    else:  # "always", "first" or "never"
        j["decoder"] = {"type": "Metaspace", "replacement": "▁", "prepend_scheme": decoder,
                        "split": True}
    return Tokenizer.from_str(json.dumps(j))


def write_folder(d, tok, vocab_size, tiny):
    os.makedirs(d, exist_ok=True)
    tok.save(os.path.join(d, "tokenizer.json"))
    with open(os.path.join(tiny, "config.json")) as f:
        cfg = json.load(f)
    cfg["vocab_size"] = vocab_size
    with open(os.path.join(d, "config.json"), "w") as f:
        json.dump(cfg, f)


def poc_decode(poc, d, seqs, show):
    p = subprocess.run([poc, "decode", d] + (["--show-special"] if show else []),
                       input="".join(json.dumps(s) + "\n" for s in seqs),
                       capture_output=True, text=True, encoding="utf-8")
    if p.returncode:
        return None, p.stderr
    return [json.loads(l) for l in p.stdout.split("\n") if l], p.stderr


def check_decode(poc, w, tiny, rng):
    cases = [("byte-level", byte_level()), ("llama2", sentencepiece("llama2")),
             ("metaspace", sentencepiece("always")), ("metaspace-first", sentencepiece("first")),
             ("metaspace-never", sentencepiece("never"))]
    for name, tok in cases:
        d = os.path.join(w, name)
        n = tok.get_vocab_size(with_added_tokens=True)
        write_folder(d, tok, n + 5, tiny)
        seqs = [[rng.randrange(n) for _ in range(rng.randrange(0, 24))] for _ in range(400)]
        # whole texts too: the round trip of real text, and the same ids cut at every point
        for t in CORPUS[:6]:
            ids = tok.encode(t).ids
            seqs.append(ids)
            seqs += [ids[:k] for k in range(1, len(ids), 3)]
        byte_ids = [tok.token_to_id(f"<0x{b:02X}>") for b in (0xE2, 0x82, 0xAC, 0xF0, 0x9F)]
        if byte_ids[0] is not None:
            seqs += [byte_ids[:3], byte_ids[:2], byte_ids[3:] + byte_ids[:3], [byte_ids[1]]]
        for show in (False, True):
            got, err = poc_decode(poc, d, seqs, show)
            if not check(got is not None, f"{name}: poc decode failed: {err[-400:]}"):
                continue
            want = [tok.decode(s, skip_special_tokens=not show) for s in seqs]
            bad = [(s, g, x) for s, g, x in zip(seqs, got, want) if g != x]
            check(not bad, f"{name} (skip_special_tokens={not show}): {len(bad)} of {len(seqs)} "
                  f"differ, first {bad[:1]!r}")
        if not name.startswith("metaspace"):  # (no byte decoding there: <0xNN> reads as itself)
            check(any("\ufffd" in tok.decode(s) for s in seqs),
                  f"{name}: the random ids include cut UTF-8 (U+FFFD)")


TEMPLATE = ("{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n"
            "{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")


def make_model(d, tok):
    """A random Llama with the byte-level tokenizer (and a chat template) in its folder; the
    embedding is padded past the tokenizer, as real models' often are."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast
    n = tok.get_vocab_size(with_added_tokens=True)
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<|im_end|>",
                                   pad_token="<|endoftext|>")
    fast.chat_template = TEMPLATE
    os.makedirs(d, exist_ok=True)
    fast.save_pretrained(d)
    torch.manual_seed(0)
    eos = tok.token_to_id("<|im_end|>")
    cfg = LlamaConfig(vocab_size=n + 5, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=128,
                      eos_token_id=eos, bos_token_id=None, pad_token_id=0, tie_word_embeddings=False)
    LlamaForCausalLM(cfg).save_pretrained(d, safe_serialization=True)
    return fast


def run(cmd, **kw):
    return subprocess.run(cmd, capture_output=True, text=True, encoding="utf-8", **kw)


def generate(poc, d, *args):
    p = run([poc, "generate", d, "--backend", "cpu", *args])
    if p.returncode:
        return None, p.stderr
    return json.loads(p.stdout), p.stderr


def check_generate(poc, w, tok):
    d = os.path.join(w, "model")
    fast = make_model(d, tok)
    for text in ["Hello wörld, naïve café 😀", "日本語のテキスト", " leading space\nand tabs\t"]:
        out, err = generate(poc, d, "--prompt", text, "--tokens", "12")
        if not check(out is not None, f"generate --prompt {text!r}: {err[-400:]}"):
            continue
        check(out["prompt"] == tok.encode(text).ids,
              f"--prompt {text!r}: ids {out['prompt']} != tokenizers' {tok.encode(text).ids}")
        check(out["prompt_text"] == tok.decode(out["prompt"]), f"prompt_text of {text!r}")
        check(out["text"] == tok.decode(out["tokens"]),
              f"text {out['text']!r} != tokenizers' {tok.decode(out['tokens'])!r}")
        again, _ = generate(poc, d, "--prompt-ids", ",".join(map(str, out["prompt"])), "--tokens", "12",
                            "--show-special")
        check(again is not None and again["tokens"] == out["tokens"] and
              again["text"] == tok.decode(out["tokens"], skip_special_tokens=False),
              "--prompt-ids gives the same generation, --show-special keeps specials")
    out, err = generate(poc, d, "--prompt", "hi there", "--chat", "--tokens", "4")
    want = fast.apply_chat_template([{"role": "user", "content": "hi there"}],
                                    add_generation_prompt=True, tokenize=True, return_dict=True)
    check(out is not None and out["prompt"] == list(want["input_ids"]),
          f"--chat encodes through the folder's chat template: {err[-300:]}")
    # no tokenizer: ids only, and --prompt says what to do instead
    bare = os.path.join(w, "bare")
    os.makedirs(bare)
    for f in ("config.json", "model.safetensors"):
        shutil.copy(os.path.join(d, f), bare)
    out, err = generate(poc, bare, "--prompt-ids", "1,2", "--tokens", "2")
    check(out is not None and "text" not in out, f"a folder with no tokenizer gives ids only: {err}")
    out, err = generate(poc, bare, "--prompt", "hi", "--tokens", "2")
    check(out is None and "no tokenizer.json" in err and "--prompt-ids" in err,
          f"--prompt with no tokenizer is a clear error: {err!r}")
    # a decoder poc does not follow: decode refuses naming it, generate gives ids only
    odd = os.path.join(w, "odd-decoder")
    shutil.copytree(d, odd)
    with open(os.path.join(odd, "tokenizer.json"), encoding="utf-8") as f:
        j = json.load(f)
    j["decoder"] = {"type": "WordPiece", "prefix": "##", "cleanup": True}
    with open(os.path.join(odd, "tokenizer.json"), "w", encoding="utf-8") as f:
        json.dump(j, f)
    got, err = poc_decode(poc, odd, [[1, 2]], False)
    check(got is None and "WordPiece" in err and "tokenizer.json" in err,
          f"poc decode names an unsupported decoder: {err!r}")
    out, err = generate(poc, odd, "--prompt-ids", "1,2", "--tokens", "2")
    check(out is not None and "text" not in out and "WordPiece" in err,
          f"generate with an unsupported decoder: ids and a warning: {err!r}")
    # --prompt without Python's tokenizers: a clear error naming the way around
    p = run([poc, "generate", d, "--backend", "cpu", "--prompt", "hi"],
            env={**os.environ, "POC_PYTHON": os.path.join(w, "no-such-python")})
    check(p.returncode == 2 and "--prompt-ids" in p.stderr and "no-such-python" in p.stderr,
          f"--prompt with no Python: {p.stderr!r}")
    return d


PO = """policy  = model("{model}")
data    = points("{data}")
heldout = prompts("{eval}")

loss = -mean(logp(policy, response))

train {{
  lr = 1e-3; batch = 2; micro_batch = 2; epochs = 1; max_len = 64
  eval_every = 1; ckpt_every = 1; eval_tokens = 6; seed = 1
}}
"""


def check_eval_samples(poc, w, tok, model):
    texts = [("Q: 2+2=", "4"), ("Q: naïve?", " café"), ("Q: 日本", "語"), ("Q: 😀", "🎉")]
    eos = tok.token_to_id("<|im_end|>")
    data = os.path.join(w, "sft.jsonl")
    ev = os.path.join(w, "eval.jsonl")
    with open(data, "w") as f, open(ev, "w") as g:
        for q, a in texts * 2:
            f.write(json.dumps({"prompt": tok.encode(q).ids, "response": tok.encode(a).ids + [eos]}) + "\n")
        for q, a in texts:
            g.write(json.dumps({"prompt": tok.encode(q).ids, "answer": tok.encode(a).ids}) + "\n")
    po = os.path.join(w, "sft.po")
    with open(po, "w") as f:
        f.write(PO.format(model=model, data=data, eval=ev))
    binary = os.path.join(w, "sft")
    env = {**os.environ, "OMP_NUM_THREADS": "1", "OMP_WAIT_POLICY": "PASSIVE"}
    p = run([poc, "build", po, "-o", binary], env=env)
    if not check(p.returncode == 0, f"poc build: {p.stderr[-600:]}"):
        return
    out = os.path.join(w, "run")
    p = run([binary, "--backend", "cpu", "--steps", "2", "--out", out], env=env)
    if not check(p.returncode == 0, f"training: {p.stderr[-600:]}"):
        return
    names = sorted(os.listdir(os.path.join(out, "eval")))
    check(names == ["step-0.jsonl", "step-1.jsonl", "step-2.jsonl"], f"eval samples: {names}")
    with open(os.path.join(out, "metrics.jsonl")) as f:
        acc = {m["step"]: m["eval/accuracy"] for m in map(json.loads, f) if "eval/accuracy" in m}
    for name in names:
        step = int(name[5:-6])
        with open(os.path.join(out, "eval", name), encoding="utf-8") as f:
            rows = [json.loads(l) for l in f]
        check(len(rows) == len(texts), f"{name}: a line per prompt")
        for i, (row, (q, a)) in enumerate(zip(rows, texts)):
            gen = row["generated"]
            k = gen.index(eos) if eos in gen else len(gen)
            ok = (row["prompt"] == tok.encode(q).ids and row["answer"] == tok.encode(a).ids
                  and row["correct"] == (gen[:k] == row["answer"])
                  and row["prompt_text"] == q and row["answer_text"] == a
                  and row["generated_text"] == tok.decode(gen, skip_special_tokens=True)
                  and 1 <= len(gen) <= 6)
            check(ok, f"{name}[{i}]: {row!r}")
        check(abs(acc.get(step, -1) - sum(r["correct"] for r in rows) / len(rows)) < 1e-12,
              f"{name}: eval/accuracy in metrics.jsonl is the samples' share correct")
        if step == 0:  # before training: what poc generate makes of the same model
            for row in rows:
                g, _ = generate(poc, model, "--prompt-ids", ",".join(map(str, row["prompt"])),
                                "--tokens", "6")
                check(g is not None and g["tokens"] == row["generated"],
                      f"step-0 generation {row['generated']} equals poc generate's {g and g['tokens']}")
    # resume: the evaluations after the checkpoint are written again, the same
    with open(os.path.join(out, "eval", "step-2.jsonl"), "rb") as f:
        before = f.read()
    os.remove(os.path.join(out, "eval", "step-2.jsonl"))
    import glob
    for c in glob.glob(os.path.join(out, "ckpt-2")):
        shutil.rmtree(c)
    p = run([binary, "--backend", "cpu", "--steps", "2", "--resume", out], env=env)
    check(p.returncode == 0, f"resume: {p.stderr[-600:]}")
    path = os.path.join(out, "eval", "step-2.jsonl")
    check(os.path.exists(path) and open(path, "rb").read() == before,
          "a resumed run rewrites step-2.jsonl as it was")
    return binary


def check_mismatch(poc, w, tok, model):
    """Token ids past config.json's vocab_size: the tokenizer is another model's."""
    from tokenizers import Tokenizer
    bad = os.path.join(w, "mismatch")
    shutil.copytree(model, bad)
    t = Tokenizer.from_str(tok.to_str())
    t.add_tokens([f"<extra_{i}>" for i in range(12)])
    t.save(os.path.join(bad, "tokenizer.json"))
    out, err = generate(poc, bad, "--prompt-ids", "1,2", "--tokens", "2")
    check(out is None and "tokenizer.json" in err and "config.json" in err and "vocab_size" in err,
          f"poc generate refuses a mismatched tokenizer naming both files: {err!r}")
    po = os.path.join(w, "mismatch.po")
    with open(os.path.join(w, "sft.po")) as f:
        src = f.read().replace(model, bad)
    with open(po, "w") as f:
        f.write(src)
    binary = os.path.join(w, "mismatch-bin")
    env = {**os.environ, "OMP_NUM_THREADS": "1", "OMP_WAIT_POLICY": "PASSIVE"}
    p = run([poc, "build", po, "-o", binary], env=env)
    if not check(p.returncode == 0, f"poc build: {p.stderr[-600:]}"):
        return
    out = os.path.join(w, "run-mismatch")
    p = run([binary, "--backend", "cpu", "--steps", "2", "--out", out], env=env)
    check(p.returncode != 0 and "tokenizer.json" in p.stderr and "config.json" in p.stderr,
          f"training refuses a mismatched tokenizer: {p.stderr[-400:]!r}")
    check(not os.path.exists(os.path.join(out, "metrics.jsonl")), "before any training")
    return True


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--root", required=True)
    ap.add_argument("--poc", required=True)
    a = ap.parse_args()
    why = need("tokenizers")
    if why:
        print("SKIP:", why)
        return 77
    w = os.environ.get("POC_TEXT_KEEP") or tempfile.mkdtemp(prefix="poc-text-")
    try:
        rng = random.Random(7)
        tiny = os.path.join(a.root, "examples", "tiny")
        check_decode(a.poc, w, tiny, rng)
        why = need("torch", "transformers")
        if why:
            print("SKIP (generation and evaluation samples):", why)
        else:
            tok = byte_level()
            model = check_generate(a.poc, w, tok)
            if check_eval_samples(a.poc, w, tok, model):
                check_mismatch(a.poc, w, tok, model)
    finally:
        if not os.environ.get("POC_TEXT_KEEP"):
            shutil.rmtree(w, ignore_errors=True)
    return finish("text")


if __name__ == "__main__":
    sys.exit(main())
