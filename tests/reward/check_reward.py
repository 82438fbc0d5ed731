#!/usr/bin/env python3
"""Reward models against TRL's RewardTrainer and transformers' sequence classifiers.

  trl      examples/reward.po and reward_margin.po through `poc probe`: loss, reports
           (accuracy, margin, mean_reward) and dL/dr against TRL's own
           RewardTrainer.compute_loss (called unbound on a stub trainer whose fake model
           returns the scores as logits, float64, autograd for the gradient), with and
           without center_rewards_coefficient and the margin column
  ckpt     examples/reward.po trained a few steps; its checkpoint loads in transformers'
           AutoModelForSequenceClassification and scores every record of a data file as
           `poc score` does (1e-4); config.json names LlamaForSequenceClassification, 1 label
  hf       random LlamaForSequenceClassification / Qwen2ForSequenceClassification made and
           saved by transformers: `poc score` (plain and --per-token) equals transformers
  train    tests/reward/objectives/mixed.po (a trainable and a frozen, hoisted reward model
           beside a policy, a batch reduction): fused and --unfused binaries give the same
           losses; 4 steps and 2 + --resume to 4 give byte-identical checkpoints;
           online.po (a frozen reward model scoring each step's samples) trains
  cuda_emul (only with --only cuda_emul, under POC_CUDA_EMULATE) reward.po trained a few
           steps on the CUDA device and the CPU, and `poc score` on both
  bad      heads of the wrong size: a config with 2 labels, a score.weight of the wrong
           shape, no score.weight; each an error naming the file and the tensor, from
           `poc score` and from a training binary before it writes anything; a bad record
           leaves `poc score --out FILE` untouched

Exits 77 (ctest's skip) when torch, transformers or trl cannot be had.
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

why = need("torch", "transformers", "trl")
if why:
    print(f"skipped: {why}")
    sys.exit(77)

import torch  # noqa: E402
import transformers  # noqa: E402
from collections import defaultdict  # noqa: E402
from types import SimpleNamespace  # noqa: E402
from transformers import (AutoModelForSequenceClassification, LlamaConfig,  # noqa: E402
                          LlamaForSequenceClassification, Qwen2Config,
                          Qwen2ForSequenceClassification)
from trl.trainer.reward_trainer import RewardTrainer  # noqa: E402

transformers.logging.set_verbosity_error()
torch.set_num_threads(1)
TOL = 1e-4


def run(cmd, **kw):
    return subprocess.run(cmd, capture_output=True, text=True, **kw)


# ---- trl: the loss through poc probe against RewardTrainer.compute_loss --------------------

class Acc:
    """The accelerator's gathers on one process: identity."""
    def gather_for_metrics(self, x):
        return x

    def gather(self, x):
        return x


def trl_loss(rc, rr, margin, coef):
    """TRL's compute_loss on scores rc, rr (float64); returns loss, d/drc, d/drr, metrics."""
    B = len(rc)
    logits = torch.tensor(list(rc) + list(rr), dtype=torch.float64).reshape(2 * B, 1)
    logits.requires_grad_(True)
    stub = SimpleNamespace(model=SimpleNamespace(training=True),
                           args=SimpleNamespace(center_rewards_coefficient=coef),
                           accelerator=Acc(), _metrics=defaultdict(lambda: defaultdict(list)),
                           _total_train_tokens=0, _tp_size=1)
    inputs = {"input_ids": torch.zeros(2 * B, 3, dtype=torch.long),
              "attention_mask": torch.ones(2 * B, 3, dtype=torch.long)}
    if margin is not None:
        inputs["margin"] = torch.tensor(margin, dtype=torch.float64)
    fake = lambda **kw: SimpleNamespace(logits=logits)  # noqa: E731
    loss = RewardTrainer.compute_loss(stub, fake, inputs)
    loss.backward()
    g = logits.grad.reshape(-1).tolist()
    m = {k: v[-1] for k, v in stub._metrics["train"].items()}
    return loss.item(), g[:B], g[B:], m


def close(a, b, tol):
    return abs(a - b) <= tol * max(1.0, abs(a), abs(b))


def check_trl(poc, root, tmp):
    rng = random.Random(5)
    for po, with_margin in (("reward.po", False), ("reward_margin.po", True)):
        path = os.path.join(root, "examples", po)
        for coef in (None, 0.01, 0.3):
            for B in (1, 3, 8):
                rc = [rng.uniform(-3, 3) for _ in range(B)]
                rr = [rng.uniform(-3, 3) for _ in range(B)]
                if B > 1:
                    rr[0] = rc[0]  # a tie: neither accurate nor a margin
                margin = [rng.choice([0.0, 0.5, 2.0]) for _ in range(B)] if with_margin else None
                inp = {"batch": B, "reward": {"rm/chosen": rc, "rm/rejected": rr}}
                if with_margin:
                    inp["fields"] = {"margin": margin}
                f = os.path.join(tmp, "in.json")
                with open(f, "w") as fh:
                    json.dump(inp, fh)
                sets = [] if coef is None else ["--set", f"center_rewards_coefficient={coef}"]
                r = run([poc, "probe", path, "--inputs", f] + sets)
                if not check(r.returncode == 0, f"{po}: probe failed: {r.stderr}"):
                    continue
                out = json.loads(r.stdout)
                L, gc, gr, m = trl_loss(rc, rr, margin, coef)
                what = f"{po} coef={coef} B={B}"
                check(close(out["loss"], L, 1e-9), f"{what}: loss {out['loss']} vs TRL {L}")
                mine_c = out["grad_reward"]["rm/chosen"]
                mine_r = out["grad_reward"]["rm/rejected"]
                check(all(abs(a - b) <= 1e-9 for a, b in zip(mine_c, gc)) and
                      all(abs(a - b) <= 1e-9 for a, b in zip(mine_r, gr)),
                      f"{what}: dL/dr {mine_c} {mine_r} vs TRL {gc} {gr}")
                for name in ("accuracy", "margin", "mean_reward"):
                    # TRL averages accuracy in float32
                    check(close(out["reports"][name], m[name], 1e-6),
                          f"{what}: {name} {out['reports'][name]} vs TRL {m[name]}")


# ---- transformers: scoring -------------------------------------------------------------------

def hf_scores(model, recs, per_token=False):
    """The classifier's score of prompt ⊕ y for each record and response key, one sequence
    at a time (no padding), in float64."""
    out = []
    with torch.no_grad():
        for rec in recs:
            row = {}
            for key in ("response", "chosen", "rejected"):
                if key not in rec:
                    continue
                ids = rec["prompt"] + rec[key]
                x = torch.tensor([ids])
                logits = model(input_ids=x).logits.reshape(-1)
                if per_token:
                    # every prefix prompt ⊕ y[:k+1]
                    row[key] = [model(input_ids=torch.tensor([rec["prompt"] + rec[key][:k + 1]]))
                                .logits.reshape(-1)[0].item() for k in range(len(rec[key]))]
                else:
                    row[key] = logits[0].item()
            out.append(row)
    return out


def poc_score(poc, model_dir, data, tmp, extra=()):
    out = os.path.join(tmp, "scored.jsonl")
    if os.path.exists(out):
        os.remove(out)
    r = run([poc, "score", model_dir, data, "--out", out, "--backend", "cpu"] + list(extra))
    if not check(r.returncode == 0, f"poc score {model_dir}: {r.stderr}"):
        return None
    with open(out) as f:
        return [json.loads(line) for line in f]


def compare_scores(what, recs, scored, ref, name="reward"):
    worst, n = 0.0, 0
    keys = {"response": name, "chosen": f"{name}_chosen", "rejected": f"{name}_rejected"}
    ok = len(scored) == len(recs)
    for rec, got, want in zip(recs, scored, ref):
        for k, v in want.items():
            mine = got.get(keys[k])
            vs, ms = (v, mine) if isinstance(v, list) else ([v], [mine])
            if mine is None or len(ms) != len(vs):
                ok = False
                continue
            for a, b in zip(ms, vs):
                worst = max(worst, abs(a - b))
                n += 1
        # every original key survives unchanged
        ok &= all(got.get(k) == v for k, v in rec.items() if k not in keys.values())
    check(ok and n > 0 and worst <= TOL, f"{what}: {n} scores, largest difference {worst:.3g}")
    print(f"{what}: {n} scores, largest difference {worst:.3g}")


def sample_records(path, n, seed):
    with open(path) as f:
        recs = [json.loads(line) for line in f if line.strip()]
    random.Random(seed).shuffle(recs)
    return recs[:n]


def check_ckpt(poc, root, tmp):
    out = os.path.join(tmp, "run")
    r = run([poc, "run", os.path.join(root, "examples", "reward.po"), "--out", out, "--steps", "3",
             "--backend", "cpu"], cwd=root)
    if not check(r.returncode == 0, f"training examples/reward.po: {r.stderr[-2000:]}"):
        return
    ck = os.path.join(out, "ckpt-3")
    cfg = json.load(open(os.path.join(ck, "config.json")))
    check(cfg.get("architectures") == ["LlamaForSequenceClassification"],
          f"checkpoint architectures {cfg.get('architectures')}")
    model = AutoModelForSequenceClassification.from_pretrained(ck, torch_dtype=torch.float64)
    model.eval()
    check(model.config.num_labels == 1, f"transformers reads num_labels {model.config.num_labels}")
    check(type(model).__name__ == "LlamaForSequenceClassification", type(model).__name__)
    for data, name in (("pairs.jsonl", "reward"), ("points.jsonl", "score")):
        recs = sample_records(os.path.join(root, "examples", "data", data), 40, 1)
        path = os.path.join(tmp, "sample.jsonl")
        with open(path, "w") as f:
            for rec in recs:
                f.write(json.dumps(rec) + "\n")
        scored = poc_score(poc, ck, path, tmp, ["--field", name])
        if scored is not None:
            compare_scores(f"ckpt: poc score {data} vs transformers", recs, scored,
                           hf_scores(model, recs), name)
    # the checkpoint's score head is not the fresh one: training moved it
    fresh = sample_records(os.path.join(root, "examples", "data", "pairs.jsonl"), 1, 2)
    check(len(fresh) == 1, "a record to score")


def make_hf(kind, seed, num_labels=1):
    torch.manual_seed(seed)
    common = dict(hidden_size=32, intermediate_size=48, num_attention_heads=4,
                  num_key_value_heads=2, num_hidden_layers=2, vocab_size=32,
                  max_position_embeddings=64, pad_token_id=0, bos_token_id=1, eos_token_id=2,
                  num_labels=num_labels)
    if kind == "qwen2":
        return Qwen2ForSequenceClassification(Qwen2Config(**common)).eval()
    return LlamaForSequenceClassification(LlamaConfig(**common)).eval()


def check_hf(poc, root, tmp):
    recs = sample_records(os.path.join(root, "examples", "data", "pairs.jsonl"), 30, 3)
    recs += sample_records(os.path.join(root, "examples", "data", "points.jsonl"), 10, 4)
    data = os.path.join(tmp, "mixed.jsonl")
    with open(data, "w") as f:
        for rec in recs:
            f.write(json.dumps(rec) + "\n")
    for kind in ("llama", "qwen2"):
        model = make_hf(kind, 7)
        d = os.path.join(tmp, f"hf-{kind}")
        model.save_pretrained(d)
        model = model.double()
        scored = poc_score(poc, d, data, tmp)
        if scored is not None:
            compare_scores(f"hf {kind}: poc score vs transformers", recs, scored,
                           hf_scores(model, recs))
        few = recs[:6]
        small = os.path.join(tmp, "few.jsonl")
        with open(small, "w") as f:
            for rec in few:
                f.write(json.dumps(rec) + "\n")
        scored = poc_score(poc, d, small, tmp, ["--per-token"])
        if scored is not None:
            compare_scores(f"hf {kind}: poc score --per-token vs transformers", few, scored,
                           hf_scores(model, few, per_token=True))


# ---- training: fused against unfused, exact resume ---------------------------------------

def losses(path):
    with open(path) as f:
        return [json.loads(line)["loss"] for line in f if '"loss"' in line]


def check_train(poc, root, tmp):
    # a frozen reward model scoring the policy's samples each step: runs, losses finite
    online = os.path.join(root, "tests", "reward", "objectives", "online.po")
    out = os.path.join(tmp, "run-online")
    r = run([poc, "run", online, "--out", out, "--steps", "2", "--backend", "cpu"], cwd=root)
    if check(r.returncode == 0, f"online.po: {r.stderr[-1500:]}"):
        ls = losses(os.path.join(out, "metrics.jsonl"))
        check(len(ls) == 2 and all(abs(x) < 1e9 for x in ls), f"online.po losses {ls}")
    po = os.path.join(root, "tests", "reward", "objectives", "mixed.po")
    bins = {}
    for mode in ("fused", "unfused"):
        b = os.path.join(tmp, f"mixed-{mode}")
        r = run([poc, "build", po, "-o", b] + (["--unfused"] if mode == "unfused" else []), cwd=root)
        if check(r.returncode == 0, f"build {mode}: {r.stderr[-1500:]}"):
            bins[mode] = b
    if len(bins) < 2:
        return
    runs = {}
    for mode, b in bins.items():
        out = os.path.join(tmp, f"run-{mode}")
        r = run([b, "--out", out, "--steps", "4", "--backend", "cpu"], cwd=root)
        if check(r.returncode == 0, f"train {mode}: {r.stderr[-1500:]}"):
            runs[mode] = out
    if len(runs) == 2:
        a, b = (losses(os.path.join(runs[m], "metrics.jsonl")) for m in ("fused", "unfused"))
        check(len(a) == 4 and all(close(x, y, 1e-6) for x, y in zip(a, b)),
              f"fused {a} vs unfused {b}")
    out = os.path.join(tmp, "run-resume")
    r1 = run([bins["fused"], "--out", out, "--steps", "2", "--backend", "cpu"], cwd=root)
    r2 = run([bins["fused"], "--resume", out, "--steps", "4", "--backend", "cpu"], cwd=root)
    if check(r1.returncode == 0 and r2.returncode == 0, f"resume: {r1.stderr[-800:]} {r2.stderr[-800:]}") \
            and "fused" in runs:
        for sub in ("", "rm"):
            x = open(os.path.join(runs["fused"], "ckpt-4", sub, "model.safetensors"), "rb").read()
            y = open(os.path.join(out, "ckpt-4", sub, "model.safetensors"), "rb").read()
            check(x == y, f"resumed checkpoint {sub or 'policy'} differs from the unbroken run's")


# ---- the CUDA device under the emulation ------------------------------------------------

def check_cuda_emul(poc, root, tmp):
    """examples/reward.po on 16 pairs, 4 steps of 4 in micro-batches of 2, on the CUDA
    device (POC_CUDA_EMULATE) and the CPU: bf16 operands, so the first step's loss (same
    weights) within 2%, every loss finite, the mean within 10%; then `poc score` of the
    CPU's checkpoint on both devices within 3% of the scores' scale."""
    if not os.environ.get("POC_CUDA_EMULATE"):
        print("cuda_emul: POC_CUDA_EMULATE not set; nothing to check")
        return
    with open(os.path.join(root, "examples", "data", "pairs.jsonl")) as f:
        lines = [next(f) for _ in range(16)]
    data = os.path.join(tmp, "pairs16.jsonl")
    with open(data, "w") as f:
        f.writelines(lines)
    po = os.path.join(tmp, "reward16.po")
    with open(po, "w") as f:
        f.write(open(os.path.join(root, "examples", "reward.po")).read()
                .replace('"examples/data/pairs.jsonl"', json.dumps(data)))
    b = os.path.join(tmp, "reward16")
    r = run([poc, "build", po, "-o", b], cwd=root)
    if not check(r.returncode == 0, f"build: {r.stderr[-1500:]}"):
        return
    ls = {}
    for dev in ("cpu", "cuda"):
        out = os.path.join(tmp, f"r16-{dev}")
        r = run([b, "--out", out, "--steps", "4", "--backend", dev, "--set", "train.batch=4",
                 "--set", "train.micro_batch=2", "--set", "train.epochs=1"], cwd=root)
        if check(r.returncode == 0, f"train on {dev}: {r.stderr[-1500:]}"):
            ls[dev] = (losses(os.path.join(out, "metrics.jsonl")), out)
    if len(ls) < 2:
        return
    a, c = ls["cpu"][0], ls["cuda"][0]
    check(len(a) == 4 and len(c) == 4 and all(x == x and abs(x) < 1e9 for x in c),
          f"losses cpu {a}, cuda {c}")
    if a and c:
        check(abs(a[0] - c[0]) <= 0.02 * abs(a[0]), f"step-1 loss cpu {a[0]} vs cuda {c[0]}")
        check(abs(sum(a) - sum(c)) <= 0.1 * abs(sum(a)), f"mean loss cpu {a} vs cuda {c}")
        print(f"cuda_emul: losses cpu {a}, cuda {c}")
    ck = latest_ckpt(ls["cpu"][1])
    got = {}
    for dev in ("cpu", "cuda"):
        r = run([poc, "score", ck, data, "--backend", dev])
        if check(r.returncode == 0, f"poc score on {dev}: {r.stderr[-800:]}"):
            got[dev] = [json.loads(x) for x in r.stdout.splitlines()]
    if len(got) == 2:
        xs = [(p["reward_chosen"], q["reward_chosen"]) for p, q in zip(got["cpu"], got["cuda"])]
        scale = max(abs(x) for x, _ in xs)
        worst = max(abs(x - y) for x, y in xs)
        check(len(xs) == 16 and worst <= 0.03 * scale + 1e-3,
              f"poc score cuda vs cpu: largest difference {worst:.3g} of {scale:.3g}")
        print(f"cuda_emul: poc score cuda vs cpu, largest difference {worst:.3g} of {scale:.3g}")


def latest_ckpt(run):
    cks = [d for d in os.listdir(run) if d.startswith("ckpt-")]
    return os.path.join(run, max(cks, key=lambda d: int(d.split("-")[1])))


# ---- bad heads ---------------------------------------------------------------------------

def check_bad(poc, root, tmp):
    from safetensors.torch import load_file, save_file
    data = os.path.join(root, "examples", "data", "pairs.jsonl")
    two = os.path.join(tmp, "bad-two-labels")
    make_hf("llama", 8, num_labels=2).save_pretrained(two)
    shape = os.path.join(tmp, "bad-shape")   # config: 1 label; score.weight [2, H]
    shutil.copytree(two, shape)
    cfg = json.load(open(os.path.join(shape, "config.json")))
    cfg["id2label"] = {"0": "LABEL_0"}
    cfg["label2id"] = {"LABEL_0": 0}
    json.dump(cfg, open(os.path.join(shape, "config.json"), "w"))
    missing = os.path.join(tmp, "bad-missing")
    make_hf("llama", 9).save_pretrained(missing)
    w = load_file(os.path.join(missing, "model.safetensors"))
    del w["score.weight"]
    save_file(w, os.path.join(missing, "model.safetensors"), metadata={"format": "pt"})
    cases = [(two, "config.json", "score.weight"), (shape, "model.safetensors", "score.weight"),
             (missing, "model.safetensors", "score.weight")]
    po_text = open(os.path.join(root, "examples", "reward.po")).read()
    for d, fname, tensor in cases:
        name = os.path.basename(d)
        target = os.path.join(tmp, "untouched.jsonl")
        with open(target, "w") as f:
            f.write("keep\n")
        r = run([poc, "score", d, data, "--out", target, "--backend", "cpu"])
        check(r.returncode == 2 and fname in r.stderr and tensor in r.stderr,
              f"{name}: poc score should fail naming {fname} and {tensor}: rc {r.returncode}, {r.stderr}")
        check(open(target).read() == "keep\n", f"{name}: poc score --out wrote over its file")
        po = os.path.join(tmp, f"{name}.po")
        with open(po, "w") as f:
            f.write(po_text.replace('model("examples/tiny")', json.dumps(d).join(["model(", ")"]))
                    .replace('"examples/data/', json.dumps(os.path.join(root, "examples", "data"))[:-1] + "/"))
        out = os.path.join(tmp, f"{name}-run")
        r = run([poc, "run", po, "--out", out, "--steps", "1", "--backend", "cpu"])
        check(r.returncode == 2 and fname in r.stderr and tensor in r.stderr,
              f"{name}: training should fail naming {fname} and {tensor}: rc {r.returncode}, "
              f"{r.stderr[-1500:]}")
        check(not os.path.exists(out), f"{name}: the failed run left {out}")
    # one model cannot be both a reward model and a causal LM
    mix = os.path.join(tmp, "mix.po")
    with open(mix, "w") as f:
        f.write('policy = model("examples/tiny")\ndata = pairs("examples/data/pairs.jsonl")\n'
                'loss = -logsigmoid(reward_score(policy, chosen) - sum(logp(policy, rejected)))\n')
    r = run([poc, "graph", mix], cwd=root)
    check(r.returncode == 2 and "mix.po:3:" in r.stderr and "read by both reward_score()" in r.stderr,
          f"reward_score and logp of one model: rc {r.returncode}, {r.stderr}")
    # a reward model has no language-model head: poc logp refuses it, and so does an
    # evaluation set when only reward models train
    r = run([poc, "logp", os.path.join(tmp, "hf-llama"), data, "--backend", "cpu"])
    check(r.returncode == 2 and "poc score" in r.stderr, f"poc logp on a reward model: {r.stderr}")
    po = os.path.join(tmp, "with_eval.po")
    with open(po, "w") as f:
        f.write(po_text.replace('data = pairs("examples/data/pairs.jsonl")',
                                'data = pairs("examples/data/pairs.jsonl")\n'
                                'heldout = prompts("examples/data/eval.jsonl")'))
    out = os.path.join(tmp, "with_eval-run")
    r = run([poc, "run", po, "--out", out, "--steps", "1", "--backend", "cpu"], cwd=root)
    check(r.returncode == 2 and "prompts()" in r.stderr and not os.path.exists(out),
          f"an evaluation set with only a reward model training: rc {r.returncode}, {r.stderr[-800:]}")
    # a causal LM is not a reward model for poc score
    r = run([poc, "score", os.path.join(root, "examples", "tiny"), data, "--backend", "cpu"])
    check(r.returncode == 2 and "config.json" in r.stderr, f"causal LM scored: {r.stderr}")
    # a bad record: file:line, and --out untouched
    bad = os.path.join(tmp, "bad.jsonl")
    with open(data) as f, open(bad, "w") as g:
        lines = [next(f) for _ in range(5)]
        g.writelines(lines[:3] + ['{"prompt": [1, 2], "chosen": [99]}\n'] + lines[3:])
    target = os.path.join(tmp, "untouched.jsonl")
    with open(target, "w") as f:
        f.write("keep\n")
    r = run([poc, "score", os.path.join(tmp, "hf-llama"), bad, "--out", target, "--backend", "cpu"])
    check(r.returncode == 2 and f"{bad}:4:" in r.stderr, f"bad record: rc {r.returncode}, {r.stderr}")
    check(open(target).read() == "keep\n", "a bad record: poc score --out wrote over its file")
    check(not any(n.startswith("untouched.jsonl.tmp") for n in os.listdir(tmp)),
          "poc score left its temporary file")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--poc", required=True)
    ap.add_argument("--root", required=True)
    ap.add_argument("--only", choices=["trl", "ckpt", "hf", "train", "bad", "cuda_emul"])
    a = ap.parse_args()
    poc = os.path.abspath(a.poc)
    with tempfile.TemporaryDirectory(prefix="poc-reward-") as tmp:
        env_cache = os.path.join(tmp, "cache")
        os.environ["POC_CACHE_DIR"] = env_cache
        for name, fn in (("trl", check_trl), ("ckpt", check_ckpt), ("hf", check_hf),
                         ("train", check_train), ("bad", check_bad),
                         ("cuda_emul", check_cuda_emul)):
            if a.only != name and (a.only or name == "cuda_emul"):
                continue
            if name == "bad" and not os.path.isdir(os.path.join(tmp, "hf-llama")):
                check_hf(poc, a.root, tmp)
            fn(poc, a.root, tmp)
    return finish("reward")


if __name__ == "__main__":
    sys.exit(main())
