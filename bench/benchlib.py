"""What the benchmark scripts share: the machine's description, running a training binary
as a child and reading its metrics, the FLOP count of a Llama-family config, synthetic
preference data, and the id-word tokenizer that lets TRL read poc's token-id data.

Import it with `sys.path.insert(0, <repo>/bench)`; nothing here needs torch or TRL at
import time."""
import json
import os
import platform
import random
import statistics
import time

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), ".."))


def cpu_name():
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


def cpu_flags():
    """The vector-unit flags that decide a CPU's GEMM kernels."""
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("flags"):
                have = set(line.split(":", 1)[1].split())
                return " ".join(f for f in ("avx2", "fma", "avx512f", "avx512_bf16", "amx_bf16",
                                            "amx_tile") if f in have)
    except OSError:
        pass
    return ""


def read_metrics(out):
    """The logged steps of a run directory's metrics.jsonl (the evaluation-only line of
    step 0 left out)."""
    rows = [json.loads(l) for l in open(os.path.join(out, "metrics.jsonl")) if l.strip()]
    return [r for r in rows if "tokens_per_s" in r]


def median_after_first(values):
    """The median over the steps after the first (which pays for warm-up)."""
    return statistics.median(values[1:] or values)


def measure(binary, steps, out, args=(), env=None, cwd=ROOT):
    """Runs a training binary as a child for `steps` steps into `out`: (tokens/s as the
    median over the steps after the first, wall seconds, peak resident MiB from wait4's
    ru_maxrss). stdout is dropped, stderr kept in out.stderr for the failure message."""
    t0 = time.time()
    pid = os.fork()
    if pid == 0:
        try:
            os.chdir(cwd)
            fd = os.open(os.devnull, os.O_WRONLY)
            os.dup2(fd, 1)
            err = os.open(out + ".stderr", os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
            os.dup2(err, 2)
            argv = [binary, "--steps", str(steps), "--out", out, *args]
            if env is None:
                os.execv(binary, argv)
            os.execve(binary, argv, env)
        finally:
            os._exit(127)
    _, status, ru = os.wait4(pid, 0)
    wall = time.time() - t0
    if status:
        raise RuntimeError(f"{binary} failed ({status}):\n" + open(out + ".stderr").read()[-2000:])
    tps = [r["tokens_per_s"] for r in read_metrics(out)]
    return median_after_first(tps), wall, ru.ru_maxrss / 1024.0


def target_fraction(pairs):
    """Target tokens over pack tokens of DPO's policy packs (prompt ++ chosen, prompt ++
    rejected): the head runs on target rows only."""
    tgt = tok = 0
    for line in open(pairs):
        r = json.loads(line)
        tgt += len(r["chosen"]) + len(r["rejected"])
        tok += 2 * len(r["prompt"]) + len(r["chosen"]) + len(r["rejected"])
    return tgt / tok


def layer_params(cfg):
    """The decoder layers' matmul weights of a Llama-family config.json."""
    h, layers, f = cfg["hidden_size"], cfg["num_hidden_layers"], cfg["intermediate_size"]
    hd = cfg.get("head_dim") or h // cfg["num_attention_heads"]
    qd, kvd = cfg["num_attention_heads"] * hd, cfg["num_key_value_heads"] * hd
    return layers * (2 * h * qd + 2 * h * kvd + 3 * h * f)


def model_flops_per_token(cfg, head_rows, attn_pairs=0.0, lora=False):
    """Training FLOPs per trained (pack) token, the formula `poc bench` uses
    (docs/language.md §15): c·P + c·H·V·head_rows + 12·L·qd·attn_pairs, c = 6 (4 with
    LoRA, whose base weights get no gradient); head_rows = rows through the loss head per
    token, attn_pairs = causal attention's (query, key) pairs per token."""
    h, layers, v = cfg["hidden_size"], cfg["num_hidden_layers"], cfg["vocab_size"]
    hd = cfg.get("head_dim") or h // cfg["num_attention_heads"]
    qd = cfg["num_attention_heads"] * hd
    c = 4 if lora else 6
    return c * layer_params(cfg) + c * h * v * head_rows + 12 * layers * qd * attn_pairs


def pair_counts(rows):
    """(tokens, head rows, attention pairs) of DPO's policy packs over pairs `rows`."""
    tok = head = pairs = 0
    for r in rows:
        for resp in ("chosen", "rejected"):
            n = len(r["prompt"]) + len(r[resp])
            tok += n
            head += len(r[resp])
            pairs += n * (n + 1) / 2
    return tok, head, pairs


def write_pairs(path, n, prompt_len, response_len, vocab, eos, seed=0):
    """n synthetic preference pairs of random ids in [3, vocab), every prompt
    prompt_len long and every response response_len long ending in eos: all sequences
    of one length, so a padded batch (PyTorch, TRL) holds no padding and does the work
    poc's packs do."""
    rng = random.Random(seed)

    def ids(k):
        return [rng.randrange(3, vocab) for _ in range(k)]

    with open(path, "w") as f:
        for _ in range(n):
            f.write(json.dumps({"prompt": ids(prompt_len),
                                "chosen": ids(response_len - 1) + [eos],
                                "rejected": ids(response_len - 1) + [eos]}) + "\n")


def id_char(i):
    """Token id i as one character outside ASCII (and outside the surrogates, which are
    not characters), so no normaliser or splitter touches it."""
    c = 0x100 + i
    return chr(c + 0x800 if c >= 0xD800 else c)


def ids_text(ids):
    return "".join(id_char(i) for i in ids)


def id_tokenizer(vocab, eos):
    """A transformers tokenizer with one character per token id (id_char): text made
    with ids_text() tokenises back to exactly those ids and no special token is added, so
    TRL's own data path sees poc's data."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast
    tk = Tokenizer(models.WordLevel({id_char(i): i for i in range(vocab)}, unk_token=id_char(0)))
    tk.pre_tokenizer = pre_tokenizers.Split(pattern="", behavior="isolated")
    return PreTrainedTokenizerFast(tokenizer_object=tk, eos_token=id_char(eos),
                                   pad_token=id_char(0), unk_token=id_char(0))


def trl_rows(rows):
    """poc's pairs as the text rows TRL's DPOTrainer reads."""
    return [{"prompt": ids_text(r["prompt"]), "chosen": ids_text(r["chosen"]),
             "rejected": ids_text(r["rejected"])} for r in rows]


def step_parser():
    """The command line bench/gpu/run.py gives both baselines (torch_dpo.py, trl_dpo.py):
    MODEL_DIR PAIRS [--steps] [--batch] [--micro] [--device] [--precision] [--lr] [--beta];
    each script adds its own flags."""
    import argparse
    ap = argparse.ArgumentParser()
    ap.add_argument("model")
    ap.add_argument("pairs")
    ap.add_argument("--steps", type=int, default=4)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--micro", type=int, default=4)
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--precision", choices=("bf16", "fp32"), default="bf16")
    ap.add_argument("--lr", type=float, default=1e-6)
    ap.add_argument("--beta", type=float, default=0.1)
    return ap
