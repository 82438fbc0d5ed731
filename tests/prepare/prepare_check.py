#!/usr/bin/env python3
"""prepare_check.py — tools/prepare_data.py, offline, against TRL's own tokenization.

The test makes everything it reads: a word-level tokenizer (with `tokenizers`) and a chat
template, a random Llama of that vocabulary (transformers), and small datasets in every
input form prepare_data reads (parquet, json, jsonl, a save_to_disk folder, a folder of
parquet shards). It checks:
  - pairs (text and conversations, UltraFeedback- and HH-shaped): the ids equal what TRL's
    DPOTrainer._prepare_dataset (TRL's own code, installed) makes of the same records;
  - every input form gives the same file; --unpair, points, prompts;
  - truncation (keep_start, keep_end, --max-prompt-length): bounds hold and the counts
    printed are the counts of examples actually cut or dropped;
  - bad input: a missing field, a wrong type, a malformed JSON line (each naming file and
    row), a tokenizer larger than the model's vocabulary, a missing input; exit 2 and the
    existing output file left as it was;
  - poc reads the result: `poc logp` on the prepared pairs with the random model.
Exits 77 (ctest's skip) when a peer cannot be imported or installed."""
import argparse
import json
import os
import subprocess
import sys
import tempfile

sys.dont_write_bytecode = True
sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
from pycheck import check, finish, need  # noqa: E402

WORDS = ("what is two plus three the sum five six seven it blue green red sky color "
         "where sun in sea hello hi thanks a an yes no ? . ,").split()
TEMPLATE = ("{% for m in messages %}<|{{ m['role'] }}|> {{ m['content'] }} </s> {% endfor %}"
            "{% if add_generation_prompt %}<|assistant|> {% endif %}")


def make_model(d, vocab_pad=0):
    from tokenizers import Tokenizer, models, pre_tokenizers, processors
    specials = ["<pad>", "<s>", "</s>", "<unk>", "<|user|>", "<|assistant|>", "<|system|>"]
    vocab = {w: i for i, w in enumerate(specials + WORDS)}
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tok.post_processor = processors.TemplateProcessing(single="<s> $A", special_tokens=[("<s>", 1)])
    from transformers import PreTrainedTokenizerFast
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="</s>",
                                   pad_token="<pad>", unk_token="<unk>")
    fast.chat_template = TEMPLATE
    os.makedirs(d, exist_ok=True)
    fast.save_pretrained(d)
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM
    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=len(vocab) + vocab_pad, hidden_size=32, intermediate_size=64,
                      num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                      max_position_embeddings=256, bos_token_id=1, eos_token_id=2, pad_token_id=0,
                      tie_word_embeddings=False)
    LlamaForCausalLM(cfg).save_pretrained(d, safe_serialization=True)
    return fast


def conv(*turns):
    return [{"role": r, "content": c} for r, c in turns]


def datasets_(n=12):
    uf, text, hh = [], [], []
    qs = ["what is two plus three ?", "what color is the sky ?", "where is the sun ?",
          "hello"]
    goods = ["five .", "it is blue .", "in the sky .", "hi"]
    bads = ["six .", "it is green .", "in the sea .", "yes"]
    for i in range(n):
        q, g, b = qs[i % 4], goods[i % 4], bads[i % 4]
        if i % 3 == 0:
            g = g + " thanks"
        uf.append({"prompt": q, "prompt_id": f"p{i}",
                   "chosen": conv(("user", q), ("assistant", g)),
                   "rejected": conv(("user", q), ("assistant", b)),
                   "score_chosen": 8.0 + i % 2, "score_rejected": 3.5})
        text.append({"prompt": q, "chosen": " " + g, "rejected": " " + b})
        hh.append({"chosen": f"\n\nHuman: {q}\n\nAssistant: {g}",
                   "rejected": f"\n\nHuman: {q}\n\nAssistant: {b}"})
    return uf, text, hh


def write_jsonl(path, rows):
    with open(path, "w") as f:
        for r in rows:
            f.write(json.dumps(r) + "\n")


def read_jsonl(path):
    with open(path) as f:
        return [json.loads(l) for l in f if l.strip()]


def trl_ids(records, tok, conversational_prompt_free):
    """TRL's own DPO tokenization of the records: DPOTrainer._prepare_dataset on a stub."""
    import datasets
    from trl import DPOConfig, DPOTrainer

    class Stub:
        pass
    s = Stub()
    s._tokenizer = tok
    rows = [{k: v for k, v in r.items() if not (conversational_prompt_free and k == "prompt")}
            for r in records]
    rows = [{k: v for k, v in r.items() if k in ("prompt", "chosen", "rejected")} for r in rows]
    ds = datasets.Dataset.from_list(rows)
    args = DPOConfig(output_dir=tempfile.mkdtemp(), max_length=None, report_to=[], use_cpu=True,
                     bf16=False, dataset_num_proc=None)
    out = DPOTrainer._prepare_dataset(s, ds, tok, args, "train")
    return [(list(e["prompt_ids"]), list(e["chosen_ids"]), list(e["rejected_ids"])) for e in out]


_tools = {}


def run(tool, *args):
    """tools/prepare_data.py's main() in this process (one import of transformers for the
    whole test, not one a run): its exit status and everything it printed."""
    import contextlib
    import importlib.util
    import io
    if tool not in _tools:
        spec = importlib.util.spec_from_file_location("prepare_data", tool)
        _tools[tool] = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(_tools[tool])
    buf = io.StringIO()
    with contextlib.redirect_stdout(buf), contextlib.redirect_stderr(buf):
        try:
            rc = _tools[tool].main(["--quiet", *args])
        except SystemExit as e:
            rc = e.code if isinstance(e.code, int) else 1
    return rc, buf.getvalue()


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--root", required=True)
    ap.add_argument("--poc", required=True)
    a = ap.parse_args()
    why = need("torch", "transformers", "tokenizers", "datasets", "pyarrow", "trl")
    if why:
        print("skipped:", why)
        return 77
    tool = os.path.join(a.root, "tools", "prepare_data.py")
    w = tempfile.mkdtemp(prefix="poc-prepare-")
    model = os.path.join(w, "model")
    tok = make_model(model)
    uf, text, hh = datasets_()

    import pyarrow as pa
    import pyarrow.parquet as pq
    import datasets
    pq.write_table(pa.Table.from_pylist(uf), os.path.join(w, "uf.parquet"))
    write_jsonl(os.path.join(w, "text.jsonl"), text)
    write_jsonl(os.path.join(w, "hh.jsonl"), hh)

    # 1. conversations (UltraFeedback-binarized shape) against TRL's own tokenization
    out = os.path.join(w, "uf.jsonl")
    rc, msg = run(tool, "--model", model, "--input", os.path.join(w, "uf.parquet"), "--out", out)
    check(rc == 0, f"uf parquet: exit {rc}: {msg}")
    got = read_jsonl(out) if rc == 0 else []
    want = trl_ids(uf, tok, True)
    check(len(got) == len(want), f"uf: {len(got)} examples, TRL {len(want)}")
    check(all((g["prompt"], g["chosen"], g["rejected"]) == t for g, t in zip(got, want)),
          "uf: ids differ from TRL's DPO tokenization")
    check(all(g.get("score_chosen") in (8.0, 9.0) and g.get("score_rejected") == 3.5 for g in got),
          "uf: numeric columns kept as fields")
    check(all("prompt_id" not in g for g in got), "uf: string columns are not fields")

    # 2. text pairs against TRL (eos appended to completions, as TRL does)
    out = os.path.join(w, "text_out.jsonl")
    rc, msg = run(tool, "--model", model, "--input", os.path.join(w, "text.jsonl"), "--out", out)
    check(rc == 0, f"text: exit {rc}: {msg}")
    got = read_jsonl(out) if rc == 0 else []
    want = trl_ids(text, tok, False)
    check([(g["prompt"], g["chosen"], g["rejected"]) for g in got] == want,
          "text: ids differ from TRL's DPO tokenization")
    check(all(g["chosen"][-1] == tok.eos_token_id for g in got), "text: completions end with eos")

    # 3. HH transcripts become conversations: same as TRL on the equivalent conversations
    out = os.path.join(w, "hh_out.jsonl")
    rc, msg = run(tool, "--model", model, "--input", os.path.join(w, "hh.jsonl"), "--out", out)
    check(rc == 0, f"hh: exit {rc}: {msg}")
    got = read_jsonl(out) if rc == 0 else []
    conv_hh = [{"chosen": r["chosen"], "rejected": r["rejected"]} for r in uf]
    want = trl_ids(conv_hh, tok, True)
    check([(g["prompt"], g["chosen"], g["rejected"]) for g in got] == want,
          "hh: transcripts not read as the conversations they are")

    # 4. every input form gives the same file
    ref = read_jsonl(os.path.join(w, "uf.jsonl"))
    with open(os.path.join(w, "uf.json"), "w") as f:
        json.dump(uf, f)
    write_jsonl(os.path.join(w, "uf2.jsonl"), uf)
    dd = datasets.DatasetDict({"train_prefs": datasets.Dataset.from_list(uf),
                               "test_prefs": datasets.Dataset.from_list(uf[:3])})
    dd.save_to_disk(os.path.join(w, "uf_disk"))
    shards = os.path.join(w, "snap", "data")
    os.makedirs(shards)
    pq.write_table(pa.Table.from_pylist(uf[:5]), os.path.join(shards, "train_prefs-00000-of-00002.parquet"))
    pq.write_table(pa.Table.from_pylist(uf[5:]), os.path.join(shards, "train_prefs-00001-of-00002.parquet"))
    pq.write_table(pa.Table.from_pylist(uf[:2]), os.path.join(shards, "test_prefs-00000-of-00001.parquet"))
    for name, extra in (("uf.json", []), ("uf2.jsonl", []), ("uf_disk", ["--split", "train_prefs"]),
                        ("snap", ["--split", "train_prefs"])):
        out = os.path.join(w, "form.jsonl")
        rc, msg = run(tool, "--model", model, "--input", os.path.join(w, name), "--out", out, *extra)
        check(rc == 0 and read_jsonl(out) == ref, f"input form {name}: exit {rc}, same records? {msg}")
    rc, msg = run(tool, "--model", model, "--input", os.path.join(w, "uf_disk"), "--out",
                  os.path.join(w, "x.jsonl"))
    check(rc == 2 and "--split" in msg, f"a DatasetDict without --split is refused: {msg}")

    # 5. unpaired, points, prompts
    out = os.path.join(w, "kto.jsonl")
    rc, msg = run(tool, "--model", model, "--input", os.path.join(w, "uf.parquet"), "--out", out,
                  "--unpair")
    got = read_jsonl(out) if rc == 0 else []
    check(rc == 0 and len(got) == 2 * len(ref), f"--unpair: two labelled records per pair: {msg}")
    check(all(g["label"] == 1 and g["response"] == r["chosen"] for g, r in zip(got[0::2], ref)) and
          all(g["label"] == 0 and g["response"] == r["rejected"] for g, r in zip(got[1::2], ref)),
          "--unpair: chosen → label 1, rejected → label 0")
    kto = [{"prompt": r["prompt"], "completion": r["chosen"][-1:] if isinstance(r["chosen"], list) else r["chosen"],
            "label": i % 2 == 0} for i, r in enumerate(uf)]
    kto = [{"prompt": conv(("user", r["prompt"])), "completion": r["completion"], "label": r["label"]}
           for r in kto]
    write_jsonl(os.path.join(w, "kto_in.jsonl"), kto)
    rc, msg = run(tool, "--model", model, "--input", os.path.join(w, "kto_in.jsonl"), "--out", out)
    got = read_jsonl(out) if rc == 0 else []
    check(rc == 0 and [g["label"] for g in got] == [int(r["label"]) for r in kto],
          f"KTO records keep their labels: {msg}")
    pts = [{"prompt": t["prompt"], "completion": t["chosen"], "score": float(i)} for i, t in enumerate(text)]
    write_jsonl(os.path.join(w, "pts.jsonl"), pts)
    rc, msg = run(tool, "--model", model, "--input", os.path.join(w, "pts.jsonl"), "--out", out,
                  "--reward-field", "score")
    got = read_jsonl(out) if rc == 0 else []
    check(rc == 0 and [g["reward"] for g in got] == [p["score"] for p in pts], f"points: rewards: {msg}")
    ev = [{"prompt": t["prompt"], "answer": t["chosen"]} for t in text]
    write_jsonl(os.path.join(w, "ev.jsonl"), ev)
    rc, msg = run(tool, "--model", model, "--input", os.path.join(w, "ev.jsonl"), "--out", out,
                  "--format", "prompts")
    got = read_jsonl(out) if rc == 0 else []
    check(rc == 0 and len(got) == len(ev) and all(g["answer"] and g["answer"][-1] != tok.eos_token_id
                                                   for g in got), f"prompts: answers without eos: {msg}")

    # evaluation prompts from conversations: the turns before the answer, through the chat
    # template, as the training pairs render them
    out = os.path.join(w, "uf_eval.jsonl")
    rc, msg = run(tool, "--model", model, "--input", os.path.join(w, "uf.parquet"), "--out", out,
                  "--format", "prompts")
    got = read_jsonl(out) if rc == 0 else []
    check(rc == 0 and [g["prompt"] for g in got] == [r["prompt"] for r in ref],
          f"prompts from conversations have the training pairs' prompts: {msg}")
    check(all(g["answer"] == r["chosen"][:len(g["answer"])] for g, r in zip(got, ref)),
          "prompts from conversations: the answer is the chosen reply")

    # 6. truncation
    full = read_jsonl(os.path.join(w, "text_out.jsonl"))
    for mode in ("keep_start", "keep_end"):
        n = 9
        out = os.path.join(w, f"trunc_{mode}.jsonl")
        rc, msg = run(tool, "--model", model, "--input", os.path.join(w, "text.jsonl"), "--out", out,
                      "--max-length", str(n), "--truncation-mode", mode)
        got = read_jsonl(out) if rc == 0 else []
        check(rc == 0, f"{mode}: exit {rc}: {msg}")
        check(all(len(g["prompt"]) + max(len(g["chosen"]), len(g["rejected"])) <= n for g in got),
              f"{mode}: prompt + completion within max_length")
        if mode == "keep_start":
            drop = sum(len(f["prompt"]) >= n for f in full)
            cut = sum(len(f["prompt"]) < n < len(f["prompt"]) + max(len(f["chosen"]), len(f["rejected"]))
                      for f in full)
            check(f"dropped: {drop:8d}  prompt alone fills" in msg if drop else "dropped" not in msg,
                  f"keep_start: {drop} dropped reported: {msg}")
            check(f"cut:     {cut:8d}  completion cut" in msg, f"keep_start: {cut} cut reported: {msg}")
            check(all(g["chosen"] == f["chosen"][:len(g["chosen"])] for g, f in
                      zip(got, [f for f in full if len(f["prompt"]) < n])),
                  "keep_start keeps the completion's start")
        else:
            check(all(g["prompt"] == f["prompt"][len(f["prompt"]) - len(g["prompt"]):]
                      for g, f in zip(got, full)), "keep_end keeps the prompt's end")
    out = os.path.join(w, "mpl.jsonl")
    rc, msg = run(tool, "--model", model, "--input", os.path.join(w, "text.jsonl"), "--out", out,
                  "--max-prompt-length", "3")
    got = read_jsonl(out) if rc == 0 else []
    check(rc == 0 and all(len(g["prompt"]) <= 3 and g["prompt"] == f["prompt"][-len(g["prompt"]):]
                          for g, f in zip(got, full)), f"--max-prompt-length keeps the prompt's end: {msg}")

    # 7. bad input: named file and row, exit 2, the existing output untouched
    keep = os.path.join(w, "keep.jsonl")
    with open(keep, "w") as f:
        f.write("precious\n")
    bad = [dict(t) for t in text]
    del bad[4]["rejected"]
    write_jsonl(os.path.join(w, "bad1.jsonl"), bad)
    bad = [dict(t) for t in text]
    bad[6]["chosen"] = 17
    write_jsonl(os.path.join(w, "bad2.jsonl"), bad)
    with open(os.path.join(w, "bad3.jsonl"), "w") as f:
        f.write(json.dumps(text[0]) + "\n" + '{"prompt": "hi", "chosen": \n')
    for name, want in (("bad1.jsonl", "row 5: error: field 'rejected' is missing"),
                       ("bad2.jsonl", "row 7: error: field 'chosen' is int"),
                       ("bad3.jsonl", "row 2: error: not valid JSON")):
        rc, msg = run(tool, "--model", model, "--input", os.path.join(w, name), "--out", keep)
        check(rc == 2 and want in msg and name in msg, f"{name}: exit {rc}, wants '{want}': {msg}")
        with open(keep) as f:
            check(f.read() == "precious\n", f"{name}: the existing output was left alone")
    check(not [n for n in os.listdir(w) if n.startswith(".prepare-")], "no temporary file left behind")
    small = os.path.join(w, "small")
    os.makedirs(small)
    for n in os.listdir(model):
        if n != "config.json":
            os.symlink(os.path.join(model, n), os.path.join(small, n))
    with open(os.path.join(model, "config.json")) as f:
        cfg = json.load(f)
    cfg["vocab_size"] = 10
    with open(os.path.join(small, "config.json"), "w") as f:
        json.dump(cfg, f)
    rc, msg = run(tool, "--model", small, "--input", os.path.join(w, "text.jsonl"), "--out", keep)
    check(rc == 2 and "vocab_size is 10" in msg, f"a tokenizer larger than the model is refused: {msg}")
    rc, msg = run(tool, "--model", model, "--input", os.path.join(w, "nope.parquet"), "--out", keep)
    check(rc == 2 and "nope.parquet" in msg and "no such file" in msg, f"a missing input: {msg}")

    # 8. poc reads what was written
    p = subprocess.run([a.poc, "logp", model, os.path.join(w, "uf.jsonl"), "--backend", "cpu"],
                       capture_output=True, text=True)
    lines = [json.loads(l) for l in p.stdout.splitlines() if l.startswith("{")]
    check(p.returncode == 0 and len(lines) == len(ref), f"poc logp reads the prepared pairs: {p.stderr[-500:]}")
    check(all(len(l["chosen"]["tokens"]) == len(r["chosen"]) for l, r in zip(lines, ref)),
          "poc scores every chosen token")
    return finish("prepare_check")


if __name__ == "__main__":
    sys.exit(main())
