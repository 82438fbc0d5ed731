#!/usr/bin/env python3
"""Generated objective kernels against the reference interpreter.

For each .po file given: draw random log-probs, entropies, log Σ p² and fields of random lengths
(several batches, several seeds), evaluate them with `poc probe` (compiler/eval.c, float64),
then with the generated kernels.c, fused and --unfused, linked into kernel_harness.c; the
loss, every per-example loss, every report and every gradient must agree to 1e-12
relative.

usage: kernel_check.py --poc POC --harness kernel_harness.c --include DIR --lib LIBPOCRT
                       [--cflags "..."] [--rounds N] FILE.po ...
"""
import argparse
import json
import os
import random
import re
import shlex
import subprocess
import sys
import tempfile

TOL = 1e-12
worst = [0.0, 0]  # the largest relative difference seen, and how many numbers compared


def close(a, b):
    if a is None or b is None:
        return a is None and b is None
    worst[1] += 1
    if a != b:
        worst[0] = max(worst[0], abs(a - b) / max(abs(a), abs(b)))
    return abs(a - b) <= TOL * max(abs(a), abs(b)) or a == b


def seq_len(target, lens, b):
    """Token count of a target as written in a probe key: NAME or NAME[lo:hi]."""
    m = re.fullmatch(r"([A-Za-z_][A-Za-z0-9_]*)((?:\[\d*:\d*\])*)", target)
    name, slices = m.group(1), m.group(2)
    n = lens[name][b]
    for lo, hi in re.findall(r"\[(\d*):(\d*)\]", slices):
        lo = int(lo) if lo else 0
        h = n if hi == "" or int(hi) > n else int(hi)
        n = max(0, h - lo)
    return n


def make_input(template, fseq, rng, B, seed):
    names = set()
    for sec in ("logp", "entropy", "logsumsq"):
        for key in template.get(sec, {}):
            names.add(re.match(r"[^/]*/([A-Za-z_][A-Za-z0-9_]*)", key).group(1))
    names |= set(template.get("tokens", {}))
    names |= {"prompt", "chosen", "rejected", "response"}
    # counts from 0: sequences without tokens take every reduction's empty case
    lens = {n: [rng.randint(0 if n != "prompt" else 1, 9) for _ in range(B)] for n in names}
    inp = {"batch": B, "seed": seed}
    for sec, lo, hi in (("logp", -4.0, -0.01), ("entropy", 0.05, 3.0), ("logsumsq", -3.0, -0.01)):
        if sec in template:
            inp[sec] = {}
            for key in template[sec]:
                target = key.split("/", 1)[1].split("|", 1)[0]
                inp[sec][key] = [[rng.uniform(lo, hi) for _ in range(seq_len(target, lens, b))]
                                 for b in range(B)]
    if "fields" in template:
        inp["fields"] = {}
        for name in template["fields"]:
            if name in fseq:  # per token, over its declared sequence
                inp["fields"][name] = [[rng.uniform(-2, 2) for _ in range(lens[fseq[name]][b])]
                                       for b in range(B)]
            else:
                inp["fields"][name] = [rng.uniform(-2, 2) for _ in range(B)]
    if "reward" in template:  # a reward model's score: one number per example
        inp["reward"] = {key: [rng.uniform(-3, 3) for _ in range(B)] for key in template["reward"]}
    if "tokens" in template:
        inp["tokens"] = {n: lens[n] for n in template["tokens"]}
    return inp


def field_seqs(po_text):
    return dict(re.findall(r"field\s+([A-Za-z_]\w*)\s*\[\s*([A-Za-z_]\w*)\s*\]", po_text))


def run(cmd, **kw):
    return subprocess.run(cmd, capture_output=True, text=True, **kw)


def compare(where, ref, got):
    bad = []
    if not close(ref["loss"], got["loss"]):
        bad.append(f"loss {ref['loss']!r} vs {got['loss']!r}")
    for i, (x, y) in enumerate(zip(ref["per_example"], got["per_example"])):
        if not close(x, y):
            bad.append(f"per_example[{i}] {x!r} vs {y!r}")
    for name, x in ref["reports"].items():
        if not close(x, got["reports"].get(name)):
            bad.append(f"report {name} {x!r} vs {got['reports'].get(name)!r}")
    for key, vals in ref.get("grad_reward", {}).items():
        mine = got.get("grad_reward", {}).get(key)
        if mine is None or len(mine) != len(vals):
            bad.append(f"grad_reward {key}: {mine!r} vs {vals!r}")
            continue
        for b, (x, y) in enumerate(zip(vals, mine)):
            if not close(x, y):
                bad.append(f"grad_reward {key}[{b}] {x!r} vs {y!r}")
    for sec in ("grad", "grad_entropy"):
        for key, rows in ref.get(sec, {}).items():
            mine = got.get(sec, {}).get(key)
            if mine is None:
                # a call whose gradient is stopped everywhere gets none from the kernel
                if any(v != 0 for row in rows for v in row):
                    bad.append(f"{sec} {key}: not written but nonzero in the probe")
                continue
            for b, (r1, r2) in enumerate(zip(rows, mine)):
                if len(r1) != len(r2):
                    bad.append(f"{sec} {key}[{b}]: {len(r1)} vs {len(r2)} tokens")
                for t, (x, y) in enumerate(zip(r1, r2)):
                    if not close(x, y):
                        bad.append(f"{sec} {key}[{b}][{t}] {x!r} vs {y!r}")
    for line in bad[:8]:
        print(f"{where}: {line}")
    return not bad


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--poc", required=True)
    ap.add_argument("--harness", required=True)
    ap.add_argument("--include", required=True)
    ap.add_argument("--lib", required=True)
    ap.add_argument("--cflags", default="")
    ap.add_argument("--rounds", type=int, default=4)
    ap.add_argument("files", nargs="+")
    a = ap.parse_args()
    env = dict(os.environ, ASAN_OPTIONS="detect_leaks=0")
    cc = shlex.split(os.environ.get("CC", "cc"))
    failures = 0
    checked = 0
    with tempfile.TemporaryDirectory(prefix="poc-kcheck-") as tmp:
        for po in a.files:
            base = os.path.splitext(os.path.basename(po))[0]
            text = open(po, encoding="utf-8").read()
            fseq = field_seqs(text)
            r = run([a.poc, "probe", po, "--template"], env=env)
            if r.returncode:
                print(f"{po}: probe --template failed:\n{r.stderr}")
                failures += 1
                continue
            template = json.loads(r.stdout)
            bins = {}
            for mode in ("fused", "unfused"):
                d = os.path.join(tmp, f"{base}-{mode}")
                r = run([a.poc, "build", po, "--emit-c", d] + (["--unfused"] if mode == "unfused" else []),
                        env=env)
                if r.returncode:
                    print(f"{po} ({mode}): poc build --emit-c failed:\n{r.stderr}")
                    failures += 1
                    continue
                exe = os.path.join(d, "harness")
                cmd = cc + ["-std=c11", "-O0", "-Wall", "-Wextra", "-Werror", "-I", a.include,
                            "-Dpoc_train_main=poc_harness_main",
                            os.path.join(d, "plan.c"), os.path.join(d, "kernels.c"), a.harness,
                            *shlex.split(a.lib), "-lcjson", "-lm", "-fopenmp", "-o", exe] + shlex.split(a.cflags)
                r = run(cmd, env=env)
                if r.returncode:
                    print(f"{po} ({mode}): the generated code does not compile:\n{r.stderr[-3000:]}")
                    failures += 1
                    continue
                bins[mode] = exe
            rng = random.Random(hash(base) & 0xffff)
            for rnd in range(a.rounds):
                B = rng.choice([1, 2, 3, 5])
                seed = rng.randint(0, 1000)
                inp = make_input(template, fseq, rng, B, seed)
                path = os.path.join(tmp, f"{base}-{rnd}.json")
                with open(path, "w") as f:
                    json.dump(inp, f)
                r = run([a.poc, "probe", po, "--inputs", path], env=env)
                if r.returncode:
                    print(f"{po}: probe failed on {path}:\n{r.stderr}")
                    failures += 1
                    continue
                ref = json.loads(r.stdout)
                for mode, exe in bins.items():
                    r = run([exe, path], env=env)
                    if r.returncode:
                        print(f"{po} ({mode}): the kernel failed:\n{r.stderr}")
                        failures += 1
                        continue
                    got = json.loads(r.stdout)
                    checked += 1
                    if not compare(f"{po} ({mode}, round {rnd}, B={B})", ref, got):
                        failures += 1
    print(f"kernel_check: {checked} kernel runs ({worst[1]} numbers) compared with poc probe, "
          f"largest relative difference {worst[0]:.3g}, {failures} failure(s)")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
