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
    else:
        j["decoder"] = {"type": "Metaspace", "replacement": "▁", "prepend_scheme": "always",
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
             ("metaspace", sentencepiece("metaspace"))]
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
        if name != "metaspace":  # (no byte decoding there: <0xNN> reads as itself)
            check(any("\ufffd" in tok.decode(s) for s in seqs),
                  f"{name}: the random ids include cut UTF-8 (U+FFFD)")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--root", required=True)
    ap.add_argument("--poc", required=True)
    a = ap.parse_args()
    why = need("tokenizers")
    if why:
        print("SKIP:", why)
        return 77
    w = tempfile.mkdtemp(prefix="poc-text-")
    try:
        rng = random.Random(7)
        tiny = os.path.join(a.root, "examples", "tiny")
        check_decode(a.poc, w, tiny, rng)
    finally:
        shutil.rmtree(w, ignore_errors=True)
    return finish("text")


if __name__ == "__main__":
    sys.exit(main())
