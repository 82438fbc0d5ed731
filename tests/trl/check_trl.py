#!/usr/bin/env python3
"""examples/trl/*.po against TRL's own DPOTrainer, as installed.

For each file of the table below and a few seeds, a random ragged batch (B >= 3, prompts
and responses of 1..6 tokens, a one-token response in every batch) goes two ways:

  TRL   DataCollatorForPreference builds the padded [chosen; rejected] batch, and
        DPOTrainer._compute_loss runs unbound on a stub trainer (the config's fields, an
        identity accelerator, the metric store) with fake policy and reference models
        whose output carries the per-token log-probs TRL's fused LM head returns (zero
        where the label is -100), plus the entropies, mean logits and top-1 flags its
        metric code reads. Float64; the gradient is autograd's, w.r.t. the policy's
        per-token log-probs.
  poc   `poc probe FILE --inputs` on the same numbers (policy/chosen, ref/chosen, ...),
        with the file's knobs set to the config's values.

The loss must agree to 1e-9 relative, every gradient entry to 1e-7 of the largest one,
and each report to TRL's metric of the same name (1e-9). Each file's knob defaults must
be DPOConfig's defaults for the fields of the same name (the exceptions are listed).

A new TRL option is one row of ROWS: the DPOConfig fields, the knobs that are not
DPOConfig fields, and `token` naming any extra per-token model output the file reads
(TRL's name, the probe's input key), which the fake model and the probe then both get.

usage: check_trl.py --poc POC --root REPO [--only NAME ...]
"""
import argparse
import json
import math
import os
import random
import re
import subprocess
import sys
import tempfile
import warnings
from collections import defaultdict
from types import SimpleNamespace

sys.dont_write_bytecode = True
sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
from pycheck import check, finish, need  # noqa: E402

RTOL_VALUE = 1e-9
RTOL_GRAD = 1e-7      # relative to the largest gradient entry of the batch
RTOL_ACC = 1e-6       # rewards/accuracies: TRL takes the mean of float32 0/1 flags
SEEDS = (1, 2, 3, 4)

# name -> cfg: DPOConfig fields (beyond the defaults) the check runs with; knobs: poc knobs
# that are not DPOConfig fields, with their value; dtype: torch dtype TRL computes in;
# token: extra per-token model outputs, (TRL's output attribute, probe input key); rtol: a
# looser value tolerance where TRL itself rounds to float32.
# Non-default values make the check see each knob.
ROWS = {
    "dpo_sigmoid": dict(cfg=dict(loss_type=["sigmoid"], beta=0.3)),
    "dpo_hinge": dict(cfg=dict(loss_type=["hinge"], beta=0.3)),
    "dpo_ipo": dict(cfg=dict(loss_type=["ipo"], beta=0.4)),
    # TRL makes ε a float32 tensor, so its log ε and log(1-ε) carry float32 rounding
    "dpo_exo_pair": dict(cfg=dict(loss_type=["exo_pair"], beta=0.3, label_smoothing=0.05),
                         rtol=1e-7),
    "dpo_nca_pair": dict(cfg=dict(loss_type=["nca_pair"], beta=0.3)),
    "dpo_robust": dict(cfg=dict(loss_type=["robust"], beta=0.3, label_smoothing=0.2)),
    "dpo_bco_pair": dict(cfg=dict(loss_type=["bco_pair"], beta=0.3)),
    "dpo_sppo_hard": dict(cfg=dict(loss_type=["sppo_hard"], beta=0.7)),
    "dpo_aot": dict(cfg=dict(loss_type=["aot"], beta=0.3, label_smoothing=0.1)),
    "dpo_aot_unpaired": dict(cfg=dict(loss_type=["aot_unpaired"], beta=0.3, label_smoothing=0.1)),
    "dpo_apo_zero": dict(cfg=dict(loss_type=["apo_zero"], beta=0.3)),
    "dpo_apo_down": dict(cfg=dict(loss_type=["apo_down"], beta=0.3)),
    "dpo_discopop": dict(cfg=dict(loss_type=["discopop"], beta=0.3, discopop_tau=0.2)),
    "dpo_sft": dict(cfg=dict(loss_type=["sft"], beta=0.3)),
    "dpo_sigmoid_norm": dict(cfg=dict(loss_type=["sigmoid_norm"], beta=0.3)),
    "dpo_sigmoid_forward_kl": dict(cfg=dict(loss_type=["sigmoid"], beta=0.3,
                                            f_divergence_type="forward_kl")),
    "dpo_sigmoid_js_divergence": dict(cfg=dict(loss_type=["sigmoid"], beta=0.3,
                                               f_divergence_type="js_divergence")),
    # TRL's alpha-divergence branch looks up a clamp bound by dtype and has none for
    # float64, so this row runs TRL in float32 (on float32-representable inputs) and
    # compares at float32's precision.
    "dpo_sigmoid_alpha_divergence": dict(cfg=dict(loss_type=["sigmoid"], beta=0.3,
                                                  f_divergence_type="alpha_divergence",
                                                  f_alpha_divergence_coef=0.3),
                                         dtype="float32"),
    "dpo_sigmoid_ld": dict(cfg=dict(loss_type=["sigmoid"], beta=0.3, ld_alpha=0.4)),
    "dpo_mpo": dict(cfg=dict(loss_type=["sigmoid", "bco_pair", "sft"], loss_weights=[0.7, 0.4, 1.3],
                             beta=0.3),
                    knobs=dict(loss_weights_sigmoid=0.7, loss_weights_bco_pair=0.4,
                               loss_weights_sft=1.3)),
    "dpo_rpo": dict(cfg=dict(loss_type=["sigmoid", "sft"], loss_weights=[1.0, 0.6], beta=0.3),
                    knobs=dict(rpo_alpha=0.6)),
    # WPO: the fused head's per-token log Σ_v p(v)² is poc's logsumsq(policy, y)
    "dpo_sigmoid_wpo": dict(cfg=dict(loss_type=["sigmoid"], beta=0.3, use_weighting=True),
                            token=(("log_sum_sq_probs", "logsumsq"),)),
}

# Knob defaults that differ from DPOConfig's on purpose, with the reason (the files say so).
DEFAULT_EXCEPTIONS = {
    ("dpo_exo_pair", "label_smoothing"): "TRL refuses exo_pair at its default 0; 1e-3 is EXO's",
    ("dpo_sigmoid_ld", "ld_alpha"): "TRL's default None turns LD off",
}

METRICS = ("rewards/chosen", "rewards/rejected", "rewards/margins", "rewards/accuracies",
           "logps/chosen", "logps/rejected")


def params_of(path):
    """The file's knobs and their default values as written (`param NAME = NUMBER`)."""
    out = {}
    for line in open(path):
        m = re.match(r"\s*param\s+([A-Za-z_]\w*)\s*=\s*([-+0-9.eE]+)", line)
        if m:
            out[m.group(1)] = float(m.group(2))
    return out


def make_batch(rng, seed):
    B = 3 + seed % 3
    ex = []
    for i in range(B):
        p, c, r = rng.randint(1, 4), rng.randint(1, 6), rng.randint(1, 6)
        ex.append(dict(prompt_ids=[rng.randint(4, 15) for _ in range(p)],
                       chosen_ids=[rng.randint(4, 15) for _ in range(c)],
                       rejected_ids=[rng.randint(4, 15) for _ in range(r)]))
    k = rng.randrange(B)  # a one-token response in every batch
    ex[k]["chosen_ids" if seed % 2 else "rejected_ids"] = ex[k]["chosen_ids"][:1]
    return ex


def fake_model(torch, log_probs, extra, expect_labels):
    """What DPOTrainer reads from a causal LM called with fused_lm_head=True: a module
    (accelerate inspects its submodules) whose output is fixed."""

    class FakeModel(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.is_gradient_checkpointing = False
            self.out = SimpleNamespace(log_probs=log_probs, **extra)
            self.calls = 0

        def forward(self, **kw):
            self.calls += 1
            if not kw.get("fused_lm_head"):
                raise AssertionError("called without fused_lm_head")
            # the positions the fake log-probs fill are those TRL labels
            if not torch.equal(kw["labels"][:, 1:] != -100, expect_labels):
                raise AssertionError("TRL's labels do not match the layout of the fake log-probs")
            return self.out

    return FakeModel()


def run_trl(torch, F, trl, name, row, ex, vals, extra_tok, tmp):
    from trl import DPOConfig
    from trl.trainer.dpo_trainer import DataCollatorForPreference, DPOTrainer
    dt = getattr(torch, row.get("dtype", "float64"))
    inputs = DataCollatorForPreference(pad_token_id=0)(ex)
    B = len(ex)
    L = inputs["input_ids"].shape[1]
    shift = inputs["completion_mask"][:, 1:] == 1
    g = torch.Generator().manual_seed(7)

    def per_token(key_of):
        """(2B, L-1) tensor: row r's completion token j at column len(prompt) + j - 1."""
        t = torch.zeros(2 * B, L - 1, dtype=dt)
        for r in range(2 * B):
            i, side = r % B, ("chosen" if r < B else "rejected")
            p = len(ex[i]["prompt_ids"])
            for j, v in enumerate(key_of(side)[i]):
                t[r, p + j - 1] = v
        return t

    pol = per_token(lambda s: vals["policy/" + s]).requires_grad_(True)
    ref = per_token(lambda s: vals["ref/" + s])
    metric_out = dict(entropy=torch.rand(2 * B, L - 1, generator=g, dtype=dt) * shift,
                      mean_logits=torch.randn(2 * B, L - 1, generator=g, dtype=dt),
                      is_top1=torch.rand(2 * B, L - 1, generator=g) > 0.5, aux_loss=None)
    pol_extra = dict(metric_out)
    for attr, key in extra_tok:
        pol_extra[attr] = per_token(lambda s, key=key: vals[key + "/" + s])
    policy = fake_model(torch, pol, pol_extra, shift)
    refm = fake_model(torch, ref, dict(metric_out), shift)
    args = DPOConfig(output_dir=tmp, bf16=False, report_to=[], **row["cfg"])
    acc = SimpleNamespace(device=torch.device("cpu"), gather=lambda x: x,
                          gather_for_metrics=lambda x: x, unwrap_model=lambda m: m)
    # the attributes DPOTrainer.__init__ sets from its config, and nothing else
    stub = SimpleNamespace(
        args=args, model=policy, ref_model=refm, accelerator=acc, aux_loss_enabled=False,
        precompute_ref_logps=False, beta=args.beta, loss_types=args.loss_type,
        loss_weights=args.loss_weights or [1.0] * len(args.loss_type), ld_alpha=args.ld_alpha,
        f_divergence_type=args.f_divergence_type,
        f_alpha_divergence_coef=args.f_alpha_divergence_coef,
        label_smoothing=args.label_smoothing, use_weighting=args.use_weighting,
        _metrics={"train": defaultdict(list), "eval": defaultdict(list)},
        _total_train_tokens=0, _tp_size=1)
    loss = DPOTrainer._compute_loss(stub, policy, inputs, False)
    loss.backward()
    grad = {}
    for side, rows in (("chosen", range(B)), ("rejected", range(B, 2 * B))):
        grad["policy/" + side] = []
        for r in rows:
            p = len(ex[r % B]["prompt_ids"])
            n = len(ex[r % B][side + "_ids"])
            grad["policy/" + side].append([pol.grad[r, p + j - 1].item() for j in range(n)])
    metrics = {k: v[-1] for k, v in stub._metrics["train"].items()}
    check(policy.calls == 1 and refm.calls == 1, f"{name}: TRL called policy {policy.calls}, "
          f"reference {refm.calls} times")
    return loss.item(), grad, metrics


def run_poc(poc, root, path, inp, knobs, tmp):
    fin = os.path.join(tmp, "in.json")
    with open(fin, "w") as f:
        json.dump(inp, f)
    cmd = [poc, "probe", path, "--inputs", fin]
    for k, v in knobs.items():
        cmd += ["--set", f"{k}={v!r}"]
    r = subprocess.run(cmd, cwd=root, capture_output=True, text=True)
    if r.returncode:
        raise RuntimeError(f"poc probe exited {r.returncode}: {r.stderr[-2000:]}")
    return json.loads(r.stdout)


def close(a, b, tol):
    return abs(a - b) <= tol * max(abs(a), abs(b), 1e-300) or a == b


def check_file(torch, F, trl, poc, root, name, row, tmp):
    path = os.path.join("examples", "trl", name + ".po")
    if not check(os.path.exists(os.path.join(root, path)), f"{name}: {path} is missing"):
        return
    from trl import DPOConfig
    defaults = DPOConfig(output_dir=tmp, bf16=False, report_to=[])
    params = params_of(os.path.join(root, path))
    fields = {k: v for k, v in params.items() if hasattr(defaults, k)}
    for k, v in fields.items():
        d = getattr(defaults, k)
        if (name, k) in DEFAULT_EXCEPTIONS:
            continue
        check(isinstance(d, (int, float)) and float(d) == v,
              f"{name}: knob {k} defaults to {v}, DPOConfig's {k} to {d!r}")
    knobs = dict(row.get("knobs", {}))
    for k in fields:
        if k in row["cfg"]:
            knobs[k] = row["cfg"][k]
    unknown = set(params) - set(fields) - set(knobs)
    check(not unknown, f"{name}: knobs {sorted(unknown)} are neither DPOConfig fields nor in the row")
    lowp = row.get("dtype") == "float32"
    vt, gt = (2e-5, 2e-5) if lowp else (row.get("rtol", RTOL_VALUE), RTOL_GRAD)
    extra_tok = row.get("token", ())
    for seed in SEEDS:
        rng = random.Random(1000 * seed + len(name))
        ex = make_batch(rng, seed)
        B = len(ex)

        def draw(n, lo=-5.0, hi=-0.01):
            v = [rng.uniform(lo, hi) for _ in range(n)]
            if lowp:  # float32 values, so both sides read the same numbers
                v = [float(torch.tensor(x, dtype=torch.float32)) for x in v]
            return v
        vals = {}
        for m in ("policy", "ref"):
            for s in ("chosen", "rejected"):
                vals[f"{m}/{s}"] = [draw(len(e[s + "_ids"])) for e in ex]
        for _, key in extra_tok:
            for s in ("chosen", "rejected"):
                vals[f"{key}/{s}"] = [draw(len(e[s + "_ids"]), -3.0, -0.1) for e in ex]
        inp = {"batch": B, "seed": seed,
               "logp": {k: v for k, v in vals.items() if k.split("/")[0] in ("policy", "ref")}}
        for _, key in extra_tok:
            inp[key] = {"policy/" + s: vals[f"{key}/{s}"] for s in ("chosen", "rejected")}
        where = f"{name} seed {seed} (B={B})"
        try:
            tl, tg, tm = run_trl(torch, F, trl, name, row, ex, vals, extra_tok, tmp)
        except Exception as e:  # TRL refusing the configuration is a failure of the row
            check(False, f"{where}: TRL failed: {type(e).__name__}: {e}")
            continue
        try:
            out = run_poc(poc, root, path, inp, knobs, tmp)
        except Exception as e:
            check(False, f"{where}: {e}")
            continue
        check(close(out["loss"], tl, vt), f"{where}: loss poc {out['loss']!r} TRL {tl!r}")
        gmax = max([abs(x) for k in tg for r in tg[k] for x in r] + [1e-300])
        for k in tg:
            pg = out.get("grad", {}).get(k)
            if not check(pg is not None and [len(r) for r in pg] == [len(r) for r in tg[k]],
                         f"{where}: poc gives no gradient for {k} of TRL's shape"):
                continue
            worst = max(abs(a - b) for ra, rb in zip(pg, tg[k]) for a, b in zip(ra, rb))
            check(worst <= gt * gmax, f"{where}: d loss/d {k} differs by {worst:.3g} "
                  f"(largest entry {gmax:.3g})\n  poc {pg}\n  TRL {tg[k]}")
        reports = out.get("reports", {})
        check(set(METRICS) <= set(reports), f"{where}: reports lack {sorted(set(METRICS) - set(reports))}")
        for r, v in reports.items():
            # TRL averages the 0/1 accuracies in float32
            tol = max(vt, RTOL_ACC) if r == "rewards/accuracies" else vt
            if check(r in tm, f"{where}: report {r} is not a metric TRL logs ({sorted(tm)})"):
                check(close(v, tm[r], tol), f"{where}: report {r} poc {v!r} TRL {tm[r]!r}")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--poc", required=True)
    ap.add_argument("--root", required=True)
    ap.add_argument("--only", nargs="*")
    a = ap.parse_args()
    why = need("torch", "trl")
    if why:
        print("SKIP:", why)
        return 77
    warnings.filterwarnings("ignore", category=FutureWarning)
    import torch
    import torch.nn.functional as F
    import trl
    print(f"trl {trl.__version__}, torch {torch.__version__}")
    # every DPOTrainer file of examples/trl (dpo_*.po; tests/trl_cpo has the others) is in
    # the table, and every row has its file
    files = sorted(f[:-3] for f in os.listdir(os.path.join(a.root, "examples", "trl"))
                   if f.startswith("dpo_") and f.endswith(".po"))
    check(set(files) == set(ROWS), f"examples/trl/dpo_*.po and the table differ: files without a row "
          f"{sorted(set(files) - set(ROWS))}, rows without a file {sorted(set(ROWS) - set(files))}")
    with tempfile.TemporaryDirectory(prefix="poc-trl-") as tmp:
        for name, row in ROWS.items():
            if a.only and name not in a.only:
                continue
            check_file(torch, F, trl, a.poc, a.root, name, row, tmp)
    return finish("trl")


if __name__ == "__main__":
    sys.exit(main())
