#!/usr/bin/env python3
"""examples/trl/dpo_sigmoid_wpo.po against TRL's own DPOTrainer._compute_loss with
use_weighting=True (loss_type "sigmoid"), through `poc probe`.

TRL's method runs unmodified on a stand-in trainer (the attributes the method reads) and a
stand-in model whose output carries the per-token log-probs and log Σ_v p(v)² that the
probe input gives poc — the same numbers on both sides, laid out as TRL expects them
(chosen rows, then rejected rows; zeros where a row is padding, as TRL's fused head
writes for label -100; the reference log-probs precomputed). Compared: the loss, TRL's
metrics that the example reports (rewards/*, logps/*; TRL averages the accuracy in
float32, so that one to 1e-7), and the gradient of the loss with
respect to every policy log-prob, which TRL gets from autograd (its weights under
no_grad) and poc from its own reverse mode (the weights under sg). Also: `--template`
names the logsumsq keys and is accepted back, and a missing key is an error naming it.
Exit 77 (skip) when torch or trl cannot be had.
"""
import argparse
import json
import os
import random
import subprocess
import sys
import types

sys.dont_write_bytecode = True
sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
import pycheck  # noqa: E402

SKIP = 77
RTOL, ATOL = 1e-9, 1e-12   # both sides in float64
REPORTS = ("rewards/chosen", "rewards/rejected", "rewards/margins", "rewards/accuracies",
           "logps/chosen", "logps/rejected")


def close(a, b, rtol=RTOL):
    return abs(a - b) <= ATOL + rtol * max(abs(a), abs(b))


def make_inputs(rng, B):
    def ragged(lo, hi, lens):
        return [[rng.uniform(lo, hi) for _ in range(n)] for n in lens]
    lc = [rng.randint(1, 6) for _ in range(B)]
    lr = [rng.randint(1, 6) for _ in range(B)]
    return {"batch": B,
            "logp": {"policy/chosen": ragged(-4, -0.01, lc), "ref/chosen": ragged(-4, -0.01, lc),
                     "policy/rejected": ragged(-4, -0.01, lr), "ref/rejected": ragged(-4, -0.01, lr)},
            "logsumsq": {"policy/chosen": ragged(-2.5, -0.01, lc),
                         "policy/rejected": ragged(-2.5, -0.01, lr)}}


def trl_side(inp, beta, weighting=True):
    import torch
    from trl import DPOTrainer
    B = inp["batch"]
    rows = inp["logp"]["policy/chosen"] + inp["logp"]["policy/rejected"]
    refs = inp["logp"]["ref/chosen"] + inp["logp"]["ref/rejected"]
    lss = inp["logsumsq"]["policy/chosen"] + inp["logsumsq"]["policy/rejected"]
    L = 1 + max(len(r) for r in rows)           # one prompt token, then the completion
    lp = torch.zeros(2 * B, L - 1, dtype=torch.float64)
    ls = torch.full((2 * B, L - 1), -7.0, dtype=torch.float64)  # padding: must be masked out
    cm = torch.zeros(2 * B, L, dtype=torch.long)
    for i, r in enumerate(rows):
        lp[i, :len(r)] = torch.tensor(r, dtype=torch.float64)
        ls[i, :len(r)] = torch.tensor(lss[i], dtype=torch.float64)
        cm[i, 1:1 + len(r)] = 1
    lp.requires_grad_(True)
    out = types.SimpleNamespace(log_probs=lp, log_sum_sq_probs=ls,
                                entropy=torch.ones(2 * B, L - 1, dtype=torch.float64),
                                mean_logits=torch.zeros(2 * B, L - 1, dtype=torch.float64),
                                is_top1=torch.zeros(2 * B, L - 1, dtype=torch.bool))
    ref = torch.tensor([sum(r) for r in refs], dtype=torch.float64)
    inputs = {"input_ids": torch.ones(2 * B, L, dtype=torch.long), "attention_mask": torch.ones(2 * B, L),
              "completion_mask": cm, "ref_chosen_logps": ref[:B], "ref_rejected_logps": ref[B:]}
    acc = types.SimpleNamespace(device=torch.device("cpu"), gather_for_metrics=lambda x: x,
                                gather=lambda x: x)
    from collections import defaultdict
    metrics = {"train": defaultdict(list), "eval": defaultdict(list)}
    me = types.SimpleNamespace(model=types.SimpleNamespace(training=True), accelerator=acc,
                               aux_loss_enabled=False, ld_alpha=None, precompute_ref_logps=True,
                               f_divergence_type="reverse_kl", loss_types=["sigmoid"], loss_weights=[1.0],
                               beta=beta, use_weighting=weighting, _metrics=metrics, _total_train_tokens=0,
                               _tp_size=1, router_aux_loss_coef=0.0)
    loss = DPOTrainer._compute_loss(me, lambda **kw: out, inputs, False)
    loss.backward()
    g = lp.grad
    grad = {"policy/chosen": [[g[i, t].item() for t in range(len(rows[i]))] for i in range(B)],
            "policy/rejected": [[g[B + i, t].item() for t in range(len(rows[B + i]))] for i in range(B)]}
    reps = {k: metrics["train"][k][-1] for k in REPORTS}
    return loss.item(), reps, grad


def probe_io(a, po):
    """`--template` names the logsumsq keys and round-trips; a missing one is an error that
    names it and the line that reads it."""
    p = subprocess.run([a.poc, "probe", po, "--template"], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                       text=True, timeout=60)
    if not pycheck.check(p.returncode == 0, f"--template: exit {p.returncode}: {p.stderr}"):
        return
    t = json.loads(p.stdout)
    pycheck.check(sorted(t.get("logsumsq", {})) == ["policy/chosen", "policy/rejected"],
                  f"--template logsumsq keys: {sorted(t.get('logsumsq', {}))}")
    path = os.path.join(a.scratch, "template.json")
    with open(path, "w") as f:
        f.write(p.stdout)
    p = subprocess.run([a.poc, "probe", po, "--inputs", path], stdout=subprocess.PIPE,
                       stderr=subprocess.PIPE, text=True, timeout=60)
    pycheck.check(p.returncode == 0 and isinstance(json.loads(p.stdout or "{}").get("loss"), float),
                  f"the template as input: exit {p.returncode}: {p.stderr}")
    del t["logsumsq"]["policy/rejected"]
    with open(path, "w") as f:
        json.dump(t, f)
    p = subprocess.run([a.poc, "probe", po, "--inputs", path], stdout=subprocess.PIPE,
                       stderr=subprocess.PIPE, text=True, timeout=60)
    pycheck.check(p.returncode == 2 and "missing logsumsq['policy/rejected']" in p.stderr and
                  "dpo_sigmoid_wpo.po:" in p.stderr,
                  f"a missing logsumsq key: exit {p.returncode}: {p.stderr}")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--poc", required=True)
    ap.add_argument("--root", required=True)
    ap.add_argument("--scratch", required=True)
    a = ap.parse_args()
    why = pycheck.need("torch", "trl")
    if why:
        print("skipped:", why)
        return SKIP
    os.makedirs(a.scratch, exist_ok=True)
    po = os.path.join(a.root, "examples", "trl", "dpo_sigmoid_wpo.po")
    cases = 0
    for seed in (1, 2, 3):
        for B, beta in ((1, None), (3, None), (4, 0.35)):
            rng = random.Random(seed * 100 + B)
            inp = make_inputs(rng, B)
            path = os.path.join(a.scratch, f"in_{seed}_{B}.json")
            with open(path, "w") as f:
                json.dump(inp, f)
            cmd = [a.poc, "probe", po, "--inputs", path] + (["--set", f"beta={beta}"] if beta else [])
            p = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, timeout=120)
            what = f"seed {seed} batch {B} beta {beta or 0.1}"
            if not pycheck.check(p.returncode == 0, f"{what}: poc probe exit {p.returncode}: {p.stderr}"):
                continue
            got = json.loads(p.stdout)
            loss, reps, grad = trl_side(inp, beta or 0.1)
            pycheck.check(close(got["loss"], loss), f"{what}: loss {got['loss']!r} vs TRL {loss!r}")
            for k in REPORTS:
                # TRL takes the accuracy's mean in float32
                pycheck.check(close(got["reports"][k], reps[k], 1e-7 if k == "rewards/accuracies" else RTOL),
                              f"{what}: {k} {got['reports'][k]!r} vs TRL {reps[k]!r}")
            for key in ("policy/chosen", "policy/rejected"):
                gp, gt = got["grad"][key], grad[key]
                ok = len(gp) == len(gt) and all(len(x) == len(y) and all(close(u, v) for u, v in zip(x, y))
                                                for x, y in zip(gp, gt))
                pycheck.check(ok, f"{what}: dL/dlogp {key}: {gp} vs TRL {gt}")
            # the weights matter here: without them TRL's loss is plain DPO's, far from this one
            plain, _, _ = trl_side(inp, beta or 0.1, weighting=False)
            pycheck.check(abs(plain - got["loss"]) > 1e-2 * abs(plain),
                          f"{what}: the WPO loss {got['loss']} is plain DPO's {plain}: weights near 1")
            cases += 1
    probe_io(a, po)
    print(f"{cases} cases: loss, {len(REPORTS)} metrics and dL/dlogp agree with TRL's _compute_loss "
          f"(use_weighting=True) to {RTOL:g}")
    return pycheck.finish("wpo_trl")


if __name__ == "__main__":
    sys.exit(main())
