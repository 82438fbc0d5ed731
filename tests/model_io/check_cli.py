#!/usr/bin/env python3
"""`poc logp` and `poc generate` on a random model folder written by poc, without torch:
output shape and arithmetic, packing independence (a line scores the same alone as in a
pack with others), every kind of bad data line, and generation's determinism."""
import argparse
import json
import math
import os
import random
import subprocess
import sys


class Checker:
    def __init__(self):
        self.passed = self.failed = 0

    def ok(self, cond, what):
        if cond:
            self.passed += 1
        else:
            self.failed += 1
            print(f"FAIL: {what}")


def poc(args, *argv):
    return subprocess.run([args.poc, *argv], capture_output=True, text=True)


def write(path, rows):
    with open(path, "w") as f:
        for r in rows:
            f.write((r if isinstance(r, str) else json.dumps(r)) + "\n")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--poc", required=True)
    ap.add_argument("--model-tool", required=True)
    ap.add_argument("--scratch", required=True)
    args = ap.parse_args()
    os.makedirs(args.scratch, exist_ok=True)
    chk = Checker()
    model = os.path.join(args.scratch, "model")
    p = subprocess.run([args.model_tool, "random", "llama", model, "5"], capture_output=True, text=True)
    if p.returncode:
        print(p.stderr)
        return 1

    rng = random.Random(3)
    V = 97
    rows = [{"prompt": [rng.randrange(V) for _ in range(rng.randint(1, 20))],
             "chosen": [rng.randrange(V) for _ in range(rng.randint(1, 15))],
             "rejected": [rng.randrange(V) for _ in range(rng.randint(1, 15))]} for _ in range(12)]
    data = os.path.join(args.scratch, "pairs.jsonl")
    write(data, rows[:6] + [""] + rows[6:])  # a blank line is skipped but counted
    p = poc(args, "logp", model, data)
    chk.ok(p.returncode == 0, f"logp exit {p.returncode}: {p.stderr}")
    out = [json.loads(l) for l in p.stdout.splitlines()]
    chk.ok(len(out) == 12, f"{len(out)} lines of output")
    for i, (o, r) in enumerate(zip(out, rows)):
        want_line = i + 1 if i < 6 else i + 2
        chk.ok(o["line"] == want_line, f"line {o['line']} should be {want_line}")
        for f in ("chosen", "rejected"):
            toks = o[f]["tokens"]
            chk.ok(len(toks) == len(r[f]), f"line {want_line} {f}: {len(toks)} tokens")
            chk.ok(all(t <= 0 and math.isfinite(t) for t in toks), f"line {want_line} {f}: log-probs {toks}")
            chk.ok(abs(sum(toks) - o[f]["sum"]) < 1e-5, f"line {want_line} {f}: sum")
        chk.ok(set(o) == {"line", "chosen", "rejected"}, f"keys {set(o)}")
    # the log-probs vary (a random model far from uniform), so the checks below mean something
    spread = [t for o in out for t in o["chosen"]["tokens"]]
    chk.ok(max(spread) - min(spread) > 0.5, f"log-probs barely vary: {min(spread)}..{max(spread)}")

    # Packing: each line alone gives the same numbers as in the shared pack.
    for i in (0, 5, 11):
        one = os.path.join(args.scratch, "one.jsonl")
        write(one, [rows[i]])
        p = poc(args, "logp", model, one)
        o = json.loads(p.stdout)
        for f in ("chosen", "rejected"):
            d = max(abs(a - b) for a, b in zip(o[f]["tokens"], out[i][f]["tokens"]))
            chk.ok(d < 1e-5, f"line {i + 1} {f} alone differs by {d}")

    # A prefix property of causal attention: the log-prob of chosen's first k tokens does
    # not depend on what follows them.
    r = rows[2]
    cut = os.path.join(args.scratch, "cut.jsonl")
    write(cut, [{"prompt": r["prompt"], "response": r["chosen"][:1]}])
    o = json.loads(poc(args, "logp", model, cut).stdout)
    chk.ok(abs(o["response"]["tokens"][0] - out[2]["chosen"]["tokens"][0]) < 1e-5, "causal prefix")

    # --field
    p = poc(args, "logp", model, data, "--field", "chosen")
    fo = [json.loads(l) for l in p.stdout.splitlines()]
    chk.ok(all(set(o) == {"line", "chosen"} for o in fo), "--field chosen prints chosen only")
    # A pack of chosen only has other shapes than one of both fields, and the CPU device's
    # GEMMs may round a row differently with the row count: the numbers agree to float
    # rounding, as a line alone does above, not bit for bit.
    chk.ok(all(abs(a["chosen"]["sum"] - b["chosen"]["sum"]) < 1e-5 and
               max(abs(x - y) for x, y in zip(a["chosen"]["tokens"], b["chosen"]["tokens"])) < 1e-5
               for a, b in zip(fo, out)), "--field chosen: same numbers")

    bad = os.path.join(args.scratch, "bad.jsonl")
    cases = [
        (['{"prompt": [1], "chosen": [2], "rejected": [3]}', '{"prompt": [1], "chosen": [2'], 2,
         "malformed JSON"),
        (['{"chosen": [2], "rejected": [3]}'], 1, 'missing "prompt"'),
        (['{"prompt": [], "chosen": [2], "rejected": [3]}'], 1, '"prompt" is empty'),
        (['{"prompt": [1], "chosen": [2], "rejected": [97]}'], 1,
         "rejected[0]: token id 97 is outside the vocabulary (0..96)"),
        (['{"prompt": [-1], "chosen": [2], "rejected": [3]}'], 1, "prompt[0]: token id -1 is outside"),
        (['{"prompt": [1], "chosen": [], "rejected": [3]}'], 1, '"chosen" is empty'),
        (['{"prompt": [1], "chosen": ["a"], "rejected": [3]}'], 1, 'chosen[0]: "a" is not a token id'),
        (['{"prompt": [1], "chosen": 5, "rejected": [3]}'], 1, '"chosen" must be an array'),
        (['[1, 2]'], 1, "expected a JSON object"),
        (['{"prompt": [1], "reward": 1}'], 1, "no response field"),
        (['{"prompt": [1], "response": [2]}', "", '{"prompt": [1], "response": [%s]}' % ",".join(["3"] * 300)],
         3, "more than max_position_embeddings (256)"),
    ]
    for lines, line, msg in cases:
        write(bad, lines)
        p = poc(args, "logp", model, bad)
        chk.ok(p.returncode == 2 and p.stdout == "" and f"{bad}:{line}: error: " in p.stderr and msg in p.stderr,
               f"bad data ({msg}): exit {p.returncode}, stderr {p.stderr!r}")
    write(bad, ['{"prompt": [1], "response": [2]}'])
    p = poc(args, "logp", model, bad, "--field", "chosen")
    chk.ok(p.returncode == 2 and f"{bad}:1: error: missing \"chosen\"" in p.stderr, f"--field missing: {p.stderr!r}")
    # several bad lines are all reported
    write(bad, ['{"prompt": [1]}', '{"prompt": [1], "response": [200]}', "{"])
    p = poc(args, "logp", model, bad)
    chk.ok(p.returncode == 2 and all(f"{bad}:{n}: error" in p.stderr for n in (1, 2, 3)), f"several: {p.stderr!r}")

    for argv, msg in [((model,), "usage"), ((model, data, "--bogus"), "unknown option"),
                      ((model, data, "--backend", "tpu"), "unknown device 'tpu'"),
                      ((model, data, "--backend", "cuda"), "--backend cuda"),
                      ((model, os.path.join(args.scratch, "nope.jsonl")), "cannot open"),
                      ((args.scratch, data), "config.json: cannot open")]:
        p = poc(args, "logp", *argv)
        chk.ok(p.returncode == 2 and msg in p.stderr, f"logp {argv[-1]}: exit {p.returncode} {p.stderr!r}")

    # generate: greedy is deterministic and a prefix of a longer greedy run; sampling
    # depends on the seed only.
    g = lambda *a: poc(args, "generate", model, "--prompt-ids", "5,6,7", *a)
    p = g("--tokens", "6")
    chk.ok(p.returncode == 0, f"generate: {p.stderr}")
    o = json.loads(p.stdout)
    chk.ok(o["prompt"] == [5, 6, 7] and 1 <= len(o["tokens"]) <= 6, f"generate output {o}")
    chk.ok(all(0 <= t < V for t in o["tokens"]), "generated ids in the vocabulary")
    chk.ok(2 not in o["tokens"][:-1], "generation stops at eos")
    o10 = json.loads(g("--tokens", "10").stdout)
    chk.ok(o10["tokens"][:len(o["tokens"])] == o["tokens"], "greedy prefix")
    s1 = g("--tokens", "8", "--temperature", "1.0", "--top-p", "0.9", "--seed", "4").stdout
    s2 = g("--tokens", "8", "--temperature", "1.0", "--top-p", "0.9", "--seed", "4").stdout
    chk.ok(s1 == s2 and s1, "same seed, same sample")
    for argv, msg in [(("--prompt-ids", "1,x"), "comma-separated"), (("--prompt-ids", "1,97"), "outside the vocabulary"),
                      (("--prompt-ids", "1", "--tokens", "300"), "exceed"), (("--prompt-ids", "1", "--top-p", "2"), "top-p"),
                      (("--tokens", "3",), "usage")]:
        p = poc(args, "generate", model, *argv)
        chk.ok(p.returncode == 2 and msg in p.stderr, f"generate {argv}: exit {p.returncode} {p.stderr!r}")

    print(f"model_io_cli: {chk.passed} passed, {chk.failed} failed")
    return 1 if chk.failed else 0


if __name__ == "__main__":
    sys.exit(main())
