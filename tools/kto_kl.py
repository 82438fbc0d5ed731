#!/usr/bin/env python3
"""kto_kl.py — adds KTO's mismatched completions to a labelled points file.

KTO estimates its KL reference point from (prompt, completion) pairs that do not belong
together. TRL's KTOTrainer makes them once, before training: it cuts the data set into
consecutive batches of per_device_train_batch_size lines and, inside each, gives line i
the completion of line i-1 (the first line takes the batch's last), so a batch's
mismatched completions are the same set as its own. This script writes them into each
line as "kl_response", for examples/trl/kto.po (`sequence kl_response`), which visits the
data in file order (train.order = sequential) in batches of the same size.

Input: a points file, {"prompt": [ids], "response": [ids], "label": 0 or 1, ...} a line
(other keys are kept), or with --from-pairs a pairs file, each pair written as two lines:
the chosen response with label 1, then the rejected one with label 0, the prompt the
only other key. (TRL's
unpair_preference_dataset puts a chunk's chosen lines before its rejected ones; the
interleaving keeps both labels in every batch.)

usage: kto_kl.py IN.jsonl -o OUT.jsonl --batch N [--from-pairs] [--limit LINES]
"""

import argparse
import json
import sys


def fail(path, line, msg):
    sys.exit(f"{path}:{line}: error: {msg}")


def ids(path, line, obj, key):
    v = obj.get(key)
    if not isinstance(v, list) or not v or not all(
            isinstance(t, int) and not isinstance(t, bool) and t >= 0 for t in v):
        fail(path, line, f"'{key}' is not a non-empty array of token ids")
    return v


def read_lines(path, from_pairs, limit):
    out = []
    with open(path) as f:
        for n, text in enumerate(f, 1):
            if not text.strip():
                continue
            try:
                obj = json.loads(text)
            except json.JSONDecodeError as e:
                fail(path, n, f"malformed JSON ({e.msg})")
            if not isinstance(obj, dict):
                fail(path, n, "expected a JSON object")
            ids(path, n, obj, "prompt")
            if from_pairs:
                chosen, rejected = ids(path, n, obj, "chosen"), ids(path, n, obj, "rejected")
                # only the prompt carries over: a pair's other keys (chosen_scores, margin)
                # describe the pair, not one response
                out.append({"prompt": obj["prompt"], "response": chosen, "label": 1})
                out.append({"prompt": obj["prompt"], "response": rejected, "label": 0})
            else:
                ids(path, n, obj, "response")
                if obj.get("label") not in (0, 1) or isinstance(obj.get("label"), bool):
                    fail(path, n, f"'label' is {obj.get('label')!r}; it must be 0 or 1")
                if "kl_response" in obj:
                    fail(path, n, "already has 'kl_response'")
                out.append(obj)
            if limit and len(out) >= limit:
                return out[:limit]
    return out


def add_kl(lines, batch):
    """Line i of each batch of `batch` consecutive lines gets line i-1's response, the
    batch's first line its last line's (a rotation by one)."""
    for start in range(0, len(lines), batch):
        chunk = lines[start:start + batch]
        responses = [ln["response"] for ln in chunk]
        for ln, kl in zip(chunk, responses[-1:] + responses[:-1]):
            ln["kl_response"] = list(kl)
    return lines


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("input")
    ap.add_argument("-o", "--output", required=True)
    ap.add_argument("--batch", type=int, required=True,
                    help="lines per batch: TRL's per_device_train_batch_size, poc's train.batch")
    ap.add_argument("--from-pairs", action="store_true",
                    help="the input is a pairs file: unpair it first")
    ap.add_argument("--limit", type=int, default=0, help="keep the first LINES output lines")
    a = ap.parse_args()
    if a.batch < 2:
        sys.exit("kto_kl.py: error: --batch must be at least 2 (a batch of one has no other "
                 "line to borrow a completion from)")
    lines = add_kl(read_lines(a.input, a.from_pairs, a.limit), a.batch)
    if not lines:
        sys.exit(f"{a.input}: error: no lines")
    with open(a.output, "w") as f:
        for ln in lines:
            f.write(json.dumps(ln, separators=(",", ":")) + "\n")
    if len(lines) % a.batch:
        print(f"kto_kl.py: note: {len(lines)} lines are not a whole number of batches of "
              f"{a.batch}; the last batch rotates among its {len(lines) % a.batch}",
              file=sys.stderr)
    print(f"kto_kl.py: wrote {len(lines)} lines to {a.output}")


if __name__ == "__main__":
    main()
