#!/usr/bin/env python3
"""prepare_data.py — a local Hugging Face dataset to poc's data files.

    tools/prepare_data.py --model MODEL_DIR --input DATA --out OUT.jsonl
                          [--format auto|pairs|hh|unpaired|points|prompts]
                          [--split NAME] [--max-length N] [--max-prompt-length M]
                          [--truncation-mode keep_start|keep_end] [--unpair]
                          [--reward-field NAME] [--limit N] [--quiet]

DATA is read from this machine only, never downloaded: a parquet file, a .json file (a
list of records) or .jsonl file (a record a line), a folder written by datasets'
save_to_disk, or a folder of such parquet/jsonl files (a hub snapshot; --split picks the
files whose name contains it, e.g. train_prefs).

What comes out (poc's data files, DESIGN.md "Data files"; one JSON object a line):

    pairs     {"prompt": [ids], "chosen": [ids], "rejected": [ids], <numeric fields>}
    unpaired  {"prompt": [ids], "response": [ids], "label": 1|0}      (KTO's labelled data)
    points    {"prompt": [ids], "response": [ids], "reward": x}
    prompts   {"prompt": [ids], "answer": [ids]}                       (evaluation prompts)

Record shapes understood (the ones TRL's trainers take):

    pairs     prompt/chosen/rejected as strings, or as conversations (lists of
              {"role", "content"} messages: UltraFeedback-binarized, trl-lib sets); without
              a prompt column the prompt is the common beginning of chosen and rejected, as
              TRL's extract_prompt takes it. Numeric columns (score_chosen, ...) are kept.
    hh        HH-RLHF: chosen/rejected transcripts "\\n\\nHuman: ... \\n\\nAssistant: ...",
              turned into conversations when the tokenizer has a chat template, else read
              as text with the common beginning as the prompt.
    unpaired  prompt/completion/label (KTO), or pairs with --unpair (chosen → label 1,
              rejected → label 0, as TRL's unpair_preference_dataset does).
    points    prompt/completion plus a numeric reward column (--reward-field, default reward).
    prompts   prompt, and the expected answer if a completion/answer/chosen column has one.

Tokenization follows TRL's DPOTrainer: conversations go through the model folder's chat
template (prompt with the generation prompt, prompt + completion without, the completion
being what follows their common prefix); text goes through the tokenizer as is, with the
eos token appended to a completion that does not end with it.

Truncation follows TRL's conventions: --max-length (TRL's max_length, default 1024)
bounds prompt + completion. keep_start (TRL's default) cuts the completion's end and drops
an example whose prompt alone fills max_length; keep_end cuts the prompt's beginning (one
shared prompt: by as much as the longer completion needs) and drops an example whose
completion alone fills it. --max-prompt-length first keeps the last M prompt tokens (the
older TRL and OpenRLHF convention). Every cut and drop is counted and reported by reason.

A record that lacks a field or has one of the wrong type stops the run with
`FILE: row N: error: ...` (exit 2) and nothing is written; OUT appears only when complete.
"""
import argparse
import json
import math
import os
import sys
import tempfile


class DataError(Exception):
    pass


def fail(msg):
    print(f"prepare_data: error: {msg}", file=sys.stderr)
    sys.exit(2)


# ------------------------------------------------------------------ reading records

def _parquet_rows(path):
    import pyarrow.parquet as pq
    try:
        pf = pq.ParquetFile(path)
    except Exception as e:
        raise DataError(f"{path}: error: not a readable parquet file: {e}")
    row = 0
    for batch in pf.iter_batches(batch_size=1024):
        for rec in batch.to_pylist():
            row += 1
            yield path, row, rec


def _jsonl_rows(path):
    with open(path, encoding="utf-8") as f:
        for n, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                rec = json.loads(line)
            except json.JSONDecodeError as e:
                raise DataError(f"{path}: row {n}: error: not valid JSON: {e.msg} (column {e.colno})")
            if not isinstance(rec, dict):
                raise DataError(f"{path}: row {n}: error: a record must be a JSON object")
            yield path, n, rec


def _json_rows(path):
    with open(path, encoding="utf-8") as f:
        try:
            doc = json.load(f)
        except json.JSONDecodeError as e:
            raise DataError(f"{path}: error: not valid JSON: {e.msg} (line {e.lineno})")
    if isinstance(doc, dict) and isinstance(doc.get("data"), list):
        doc = doc["data"]
    if not isinstance(doc, list):
        raise DataError(f"{path}: error: expected a list of records (or {{\"data\": [...]}})")
    for n, rec in enumerate(doc, 1):
        if not isinstance(rec, dict):
            raise DataError(f"{path}: row {n}: error: a record must be a JSON object")
        yield path, n, rec


def _disk_rows(path, split):
    import datasets
    ds = datasets.load_from_disk(path)
    if isinstance(ds, datasets.DatasetDict):
        if split is None:
            if len(ds) != 1:
                raise DataError(f"{path}: error: the dataset has splits {sorted(ds)}; choose one with --split")
            split = next(iter(ds))
        if split not in ds:
            raise DataError(f"{path}: error: no split '{split}' (it has {sorted(ds)})")
        ds = ds[split]
    for n, rec in enumerate(ds, 1):
        yield path, n, rec


def _file_rows(path):
    low = path.lower()
    if low.endswith(".parquet"):
        return _parquet_rows(path)
    if low.endswith(".jsonl") or low.endswith(".ndjson"):
        return _jsonl_rows(path)
    if low.endswith(".json"):
        return _json_rows(path)
    raise DataError(f"{path}: error: unknown file type (expected .parquet, .json or .jsonl)")


def read_records(path, split):
    """Yields (file, row, record) from a file or folder on this machine."""
    if not os.path.exists(path):
        raise DataError(f"{path}: error: no such file or folder (prepare_data reads local data only)")
    if os.path.isdir(path):
        if os.path.exists(os.path.join(path, "dataset_dict.json")) or \
           os.path.exists(os.path.join(path, "state.json")):
            yield from _disk_rows(path, split)
            return
        files = []
        for root, _, names in os.walk(path):
            for name in names:
                if name.lower().endswith((".parquet", ".jsonl", ".json")) and \
                   (split is None or split in name):
                    files.append(os.path.join(root, name))
        if not files:
            raise DataError(f"{path}: error: no parquet/json/jsonl files"
                            + (f" whose name contains '{split}'" if split else ""))
        for f in sorted(files):
            yield from _file_rows(f)
        return
    yield from _file_rows(path)


# ------------------------------------------------------------------ record shapes

def is_conversation(v):
    return isinstance(v, list) and all(isinstance(m, dict) and "role" in m and "content" in m
                                       for m in v) and len(v) > 0


def need(rec, key, where, kinds=("text", "conversation")):
    if key not in rec or rec[key] is None:
        raise DataError(f"{where}: error: field '{key}' is missing")
    v = rec[key]
    if "text" in kinds and isinstance(v, str):
        return v
    if "conversation" in kinds and is_conversation(v):
        return v
    want = " or ".join({"text": "a string", "conversation": "a list of {role, content} messages"}[k]
                       for k in kinds)
    raise DataError(f"{where}: error: field '{key}' is {type(v).__name__}, expected {want}")


def split_common_prefix(chosen, rejected):
    """TRL's extract_prompt: the shared beginning of chosen and rejected is the prompt
    (whole messages for conversations; for text, a space before the split stays with the
    completion)."""
    idx = 0
    n = min(len(chosen), len(rejected))
    while idx < n and chosen[idx] == rejected[idx]:
        idx += 1
    if idx == n:
        return None
    if isinstance(chosen, str) and idx > 0 and chosen[idx - 1] == " ":
        idx -= 1
    return chosen[:idx], chosen[idx:], rejected[idx:]


HH_HUMAN, HH_ASSISTANT = "\n\nHuman:", "\n\nAssistant:"


def hh_messages(text, where, key):
    """An HH-RLHF transcript as a conversation."""
    out = []
    rest = text
    if not rest.startswith(HH_HUMAN):
        raise DataError(f"{where}: error: field '{key}' does not start with '\\n\\nHuman:'")
    while rest:
        if rest.startswith(HH_HUMAN):
            role, rest = "user", rest[len(HH_HUMAN):]
        elif rest.startswith(HH_ASSISTANT):
            role, rest = "assistant", rest[len(HH_ASSISTANT):]
        else:  # pragma: no cover - the loop only resumes at a marker
            break
        nxt = [i for i in (rest.find(HH_HUMAN), rest.find(HH_ASSISTANT)) if i >= 0]
        end = min(nxt) if nxt else len(rest)
        out.append({"role": role, "content": rest[:end].strip()})
        rest = rest[end:]
    if not out or out[-1]["role"] != "assistant":
        raise DataError(f"{where}: error: field '{key}' does not end with an Assistant turn")
    return out


def numeric_fields(rec, skip):
    out = {}
    for k, v in rec.items():
        if k in skip or isinstance(v, bool):
            continue
        if isinstance(v, (int, float)) and math.isfinite(v):
            out[k] = v
    return out


# ------------------------------------------------------------------ tokenization

class Tokens:
    def __init__(self, model_dir):
        cfg_path = os.path.join(model_dir, "config.json")
        try:
            with open(cfg_path) as f:
                cfg = json.load(f)
        except OSError as e:
            fail(f"{cfg_path}: cannot read the model's config: {e.strerror}")
        except json.JSONDecodeError as e:
            fail(f"{cfg_path}: not valid JSON: {e.msg}")
        self.vocab = cfg.get("vocab_size")
        if not isinstance(self.vocab, int) or self.vocab <= 0:
            fail(f"{cfg_path}: no positive integer vocab_size")
        if not os.path.exists(os.path.join(model_dir, "tokenizer.json")) and \
           not os.path.exists(os.path.join(model_dir, "tokenizer_config.json")):
            fail(f"{model_dir}: no tokenizer.json or tokenizer_config.json: the model folder must "
                 "carry its tokenizer")
        from transformers import AutoTokenizer
        try:
            self.tok = AutoTokenizer.from_pretrained(model_dir, local_files_only=True)
        except Exception as e:
            fail(f"{model_dir}: cannot load the tokenizer: {type(e).__name__}: {e}")
        if len(self.tok) > self.vocab:
            fail(f"{model_dir}: the tokenizer has {len(self.tok)} tokens but config.json's "
                 f"vocab_size is {self.vocab}: tokenizer and model do not match")
        self.has_template = bool(getattr(self.tok, "chat_template", None))
        self.eos = self.tok.eos_token

    def _ids(self, x, where, **kw):
        if isinstance(x, list):
            if not self.has_template:
                raise DataError(f"{where}: error: the record is a conversation but the model "
                                "folder's tokenizer has no chat template")
            r = self.tok.apply_chat_template(x, tokenize=True, return_dict=True, **kw)
        else:
            r = self.tok(text=x)
        ids = list(r["input_ids"])
        for i in ids:
            if i >= self.vocab:
                raise DataError(f"{where}: error: token id {i} is outside the model's vocabulary "
                                f"({self.vocab})")
        return ids

    def prompt_completions(self, prompt, completions, where):
        """TRL's tokenize step: the prompt's ids and, for each completion, the ids that
        follow the common prefix of prompt and prompt + completion."""
        if isinstance(prompt, list):
            p = self._ids(prompt, where, add_generation_prompt=True)
            full = [self._ids(prompt + c, where) for c in completions]
        else:
            p = self._ids(prompt, where)
            eos = self.eos or ""
            full = [self._ids(prompt + (c if c.endswith(eos) else c + eos), where)
                    for c in completions]
        cut = len(p)
        for f in full:
            k = 0
            while k < min(len(p), len(f)) and p[k] == f[k]:
                k += 1
            cut = min(cut, k)
        return p[:cut], [f[cut:] for f in full]


# ------------------------------------------------------------------ truncation

class Stats:
    def __init__(self):
        self.read = self.written = 0
        self.cut = {}
        self.dropped = {}

    def note(self, table, why):
        table[why] = table.get(why, 0) + 1

    def report(self, out, stream):
        print(f"prepare_data: {self.read} records read, {self.written} written to {out}", file=stream)
        for why, n in sorted(self.cut.items()):
            print(f"  cut:     {n:8d}  {why}", file=stream)
        for why, n in sorted(self.dropped.items()):
            print(f"  dropped: {n:8d}  {why}", file=stream)


def truncate(prompt, comps, a, st):
    """TRL's truncation conventions on one example; None when it is dropped."""
    if a.max_prompt_length is not None and len(prompt) > a.max_prompt_length:
        prompt = prompt[len(prompt) - a.max_prompt_length:]
        st.note(st.cut, f"prompt kept its last {a.max_prompt_length} tokens (--max-prompt-length)")
    if a.max_length is None:
        return prompt, comps
    n = a.max_length
    longest = max(len(c) for c in comps) if comps else 0
    if a.truncation_mode == "keep_start":
        if len(prompt) >= n:
            st.note(st.dropped, f"prompt alone fills max_length {n} (keep_start)")
            return None
        if len(prompt) + longest > n:
            comps = [c[:n - len(prompt)] for c in comps]
            st.note(st.cut, f"completion cut to max_length {n} (keep_start)")
    else:
        if longest >= n:
            st.note(st.dropped, f"completion alone fills max_length {n} (keep_end)")
            return None
        if len(prompt) + longest > n:
            prompt = prompt[len(prompt) + longest - n:]
            st.note(st.cut, f"prompt's beginning cut to fit max_length {n} (keep_end)")
    if any(len(c) == 0 for c in comps):
        st.note(st.dropped, "empty completion after tokenization")
        return None
    return prompt, comps


# ------------------------------------------------------------------ formats

def detect(rec, unpair):
    keys = set(rec)
    if {"chosen", "rejected"} <= keys:
        c = rec["chosen"]
        if isinstance(c, str) and c.startswith(HH_HUMAN) and "prompt" not in keys:
            return "hh"
        return "unpaired" if unpair else "pairs"
    if {"completion", "label"} <= keys:
        return "unpaired"
    if "completion" in keys or "response" in keys:
        return "points"
    if "prompt" in keys:
        return "prompts"
    raise DataError("cannot tell the record's shape from its fields "
                    f"{sorted(keys)}; give --format")


def pair_parts(rec, where, fmt, tk):
    if fmt == "hh":
        c = need(rec, "chosen", where, ("text",))
        r = need(rec, "rejected", where, ("text",))
        if tk.has_template:
            c, r = hh_messages(c, where, "chosen"), hh_messages(r, where, "rejected")
    else:
        c = need(rec, "chosen", where)
        r = need(rec, "rejected", where)
    if type(c) is not type(r):
        raise DataError(f"{where}: error: 'chosen' and 'rejected' must both be text or both conversations")
    p = rec.get("prompt")
    if p is not None and isinstance(c, list) and isinstance(p, str):
        p = None  # UltraFeedback-binarized: the prompt is also the conversations' first turn
    if p is None:
        parts = split_common_prefix(c, r)
        if parts is None:
            raise DataError(f"{where}: error: 'chosen' and 'rejected' are identical or one is a "
                            "prefix of the other; there is no completion to prefer")
        return parts
    p = need(rec, "prompt", where)
    if isinstance(p, list) != isinstance(c, list):
        raise DataError(f"{where}: error: 'prompt' and the completions must both be text or both conversations")
    return p, c, r


def examples(records, a, tk, st):
    fmt = a.format
    for path, row, rec in records:
        where = f"{path}: row {row}"
        st.read += 1
        if a.limit is not None and st.read > a.limit:
            st.read -= 1
            return
        if fmt == "auto":  # the first record decides; every later one must have its fields
            try:
                fmt = detect(rec, a.unpair)
            except DataError as e:
                raise DataError(f"{where}: error: {e}")
        f = fmt
        if f in ("pairs", "hh") or (f == "unpaired" and {"chosen", "rejected"} <= set(rec)):
            unpaired = f == "unpaired" or a.unpair
            p, c, r = pair_parts(rec, where, "hh" if f == "hh" else "pairs", tk)
            pid, (cid, rid) = tk.prompt_completions(p, [c, r], where)
            t = truncate(pid, [cid, rid], a, st)
            if t is None:
                continue
            pid, (cid, rid) = t
            extra = numeric_fields(rec, {"prompt", "chosen", "rejected"})
            if unpaired:
                yield {"prompt": pid, "response": cid, "label": 1, **extra}
                yield {"prompt": pid, "response": rid, "label": 0, **extra}
            else:
                yield {"prompt": pid, "chosen": cid, "rejected": rid, **extra}
        elif f in ("unpaired", "points"):
            key = "completion" if "completion" in rec else "response"
            p = need(rec, "prompt", where)
            c = need(rec, key, where)
            if isinstance(p, list) != isinstance(c, list):
                raise DataError(f"{where}: error: 'prompt' and '{key}' must both be text or both conversations")
            if f == "unpaired":
                lab = rec.get("label")
                if not isinstance(lab, (bool, int)) or lab not in (0, 1, True, False):
                    raise DataError(f"{where}: error: field 'label' must be true/false (or 1/0), got {lab!r}")
                val = {"label": int(bool(lab))}
            else:
                rw = rec.get(a.reward_field)
                if isinstance(rw, bool) or not isinstance(rw, (int, float)) or not math.isfinite(rw):
                    raise DataError(f"{where}: error: field '{a.reward_field}' must be a finite number, got {rw!r}")
                val = {"reward": float(rw)}
            pid, (cid,) = tk.prompt_completions(p, [c], where)
            t = truncate(pid, [cid], a, st)
            if t is None:
                continue
            pid, (cid,) = t
            yield {"prompt": pid, "response": cid, **val}
        elif f == "prompts":
            ans = next((rec[k] for k in ("answer", "completion", "chosen") if rec.get(k) is not None), None)
            if ans is None:
                raise DataError(f"{where}: error: an evaluation prompt needs its expected answer "
                                "('answer', 'completion' or 'chosen')")
            if is_conversation(ans) and ans[-1].get("role") == "assistant" and len(ans) > 1:
                # a whole conversation (UltraFeedback's chosen): its turns before the last are
                # the prompt, rendered with the chat template as training renders them
                p, ans = ans[:-1], ans[-1:]
            else:
                p = need(rec, "prompt", where)
                if is_conversation(ans):
                    ans = ans[-1:]
                if isinstance(p, list) and isinstance(ans, str):
                    ans = [{"role": "assistant", "content": ans}]
                elif isinstance(p, str) and isinstance(ans, list):
                    ans = ans[-1]["content"]
            pid, (aid,) = tk.prompt_completions(p, [ans], where)
            if tk.tok.eos_token_id is not None and aid and aid[-1] == tk.tok.eos_token_id:
                aid = aid[:-1]
            if not pid:
                st.note(st.dropped, "empty prompt after tokenization")
                continue
            if not aid:
                st.note(st.dropped, "empty answer after tokenization")
                continue
            yield {"prompt": pid, "answer": aid}
        else:
            raise DataError(f"{where}: error: unknown format '{f}'")


# ------------------------------------------------------------------ main

def progress(it, total, quiet):
    if quiet:
        return it
    try:
        from tqdm import tqdm
        return tqdm(it, total=total, unit=" rec", file=sys.stderr, mininterval=0.5)
    except ImportError:
        return it


def count_rows(path, split):
    """The number of records, when it is cheap to know (for the progress bar)."""
    try:
        if os.path.isfile(path) and path.lower().endswith(".parquet"):
            import pyarrow.parquet as pq
            return pq.ParquetFile(path).metadata.num_rows
    except Exception:
        pass
    return None


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", required=True, help="model folder with config.json and its tokenizer")
    ap.add_argument("--input", required=True, help="local dataset: parquet, json, jsonl, or a folder")
    ap.add_argument("--out", required=True, help="poc data file to write (.jsonl)")
    ap.add_argument("--format", default="auto",
                    choices=["auto", "pairs", "hh", "unpaired", "points", "prompts"])
    ap.add_argument("--split", help="split of a save_to_disk DatasetDict, or a substring of file names")
    ap.add_argument("--max-length", type=int, default=1024, help="TRL's max_length (0: no limit)")
    ap.add_argument("--max-prompt-length", type=int, help="keep the last M prompt tokens first")
    ap.add_argument("--truncation-mode", default="keep_start", choices=["keep_start", "keep_end"])
    ap.add_argument("--unpair", action="store_true", help="pairs → unpaired labelled completions")
    ap.add_argument("--reward-field", default="reward", help="points: the column holding the reward")
    ap.add_argument("--limit", type=int, help="read at most N records")
    ap.add_argument("--quiet", action="store_true", help="no progress bar")
    a = ap.parse_args(argv)
    if a.max_length is not None and a.max_length <= 0:
        a.max_length = None
    if a.max_prompt_length is not None and a.max_prompt_length <= 0:
        fail("--max-prompt-length must be positive")
    if a.limit is not None and a.limit <= 0:
        fail("--limit must be positive")
    out_dir = os.path.dirname(os.path.abspath(a.out))
    if not os.path.isdir(out_dir):
        fail(f"{a.out}: the folder {out_dir} does not exist")

    tk = Tokens(a.model)
    st = Stats()
    fd, tmp = tempfile.mkstemp(prefix=".prepare-", suffix=".jsonl", dir=out_dir)
    try:
        with os.fdopen(fd, "w") as f:
            recs = read_records(a.input, a.split)
            for ex in examples(progress(recs, count_rows(a.input, a.split), a.quiet), a, tk, st):
                f.write(json.dumps(ex, separators=(",", ":")) + "\n")
                st.written += 1
            f.flush()
            os.fsync(f.fileno())
        if st.written == 0:
            raise DataError(f"{a.input}: error: no example survived (see the counts above)")
        os.replace(tmp, a.out)
    except DataError as e:
        os.unlink(tmp)
        st.report(a.out, sys.stderr)
        print(e, file=sys.stderr)
        return 2
    except OSError as e:
        os.unlink(tmp)
        print(f"{a.out}: error: {e.strerror or e}", file=sys.stderr)
        return 2
    except BaseException:
        os.unlink(tmp)
        raise
    st.report(a.out, sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
