#!/usr/bin/env python3
"""examples/trl/cpo_*.po and examples/trl/orpo.po against TRL's own CPOTrainer and
ORPOTrainer, as installed.

TRL's loss code runs unchanged (get_batch_loss_metrics: concatenated_inputs,
concatenated_forward with its cross-entropy NLL, get_batch_logps, cpo_loss /
odds_ratio_loss) on a stub `self` carrying the config fields, and a fake model whose
forward returns random float64 logits over a small vocabulary. The batches are ragged
(prompt, chosen and rejected lengths differ per example) and padded as TRL's collator
pads them. poc gets, through `poc probe --inputs`, the per-token log-probabilities those
logits give the scored tokens, and its dL/dlogp is chained through the softmax,
dL/dlogits[row, t-1] = Σ_t g_t (onehot(token_t) - softmax(logits[row, t-1])), to
compare with the gradient torch takes of TRL's loss with respect to the logits.

Values (the loss and every report TRL also logs) to 1e-9, gradients to 1e-7, both
relative to the largest entry compared.

usage: check_trl_cpo.py --poc POC --root REPO --file cpo_sigmoid|...|orpo
"""

import argparse
import contextlib
import json
import os
import random
import subprocess
import sys
import tempfile
import types

sys.dont_write_bytecode = True
sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
from pycheck import check, finish, need  # noqa: E402

RTOL_VALUE = 1e-9
RTOL_GRAD = 1e-7
VOCAB = 11
PAD = 0
SEEDS = (1, 2, 3)
BATCHES = (1, 2, 3, 5)

# Per file: TRL's trainer, its loss_type, the config fields the file names as knobs with
# TRL's defaults, and --set variations (each knob moved at least once).
CPO_FILES = {
    "cpo_sigmoid": ("sigmoid", {"beta": 0.1, "label_smoothing": 0.0, "cpo_alpha": 1.0,
                                "alpha": 0.0},
                    [{"beta": 0.5, "label_smoothing": 0.2}, {"cpo_alpha": 0.0},
                     {"alpha": 0.25, "cpo_alpha": 0.3}, {"alpha": -0.1}]),
    "cpo_hinge": ("hinge", {"beta": 0.1, "cpo_alpha": 1.0, "alpha": 0.0},
                  [{"beta": 0.7}, {"cpo_alpha": 0.0, "beta": 0.05}, {"alpha": 0.2}]),
    "cpo_ipo": ("ipo", {"beta": 0.1, "cpo_alpha": 1.0, "alpha": 0.0},
                [{"beta": 0.5, "cpo_alpha": 0.2}, {"alpha": 0.4}]),
    "cpo_simpo": ("simpo", {"beta": 0.1, "label_smoothing": 0.0, "cpo_alpha": 1.0,
                            "simpo_gamma": 0.5, "alpha": 0.0},
                  [{"beta": 2.0, "simpo_gamma": 1.2}, {"label_smoothing": 0.3, "cpo_alpha": 0.0},
                   {"alpha": 0.5, "beta": 1.0}]),
    "cpo_alphapo": ("alphapo", {"beta": 0.1, "label_smoothing": 0.0, "simpo_gamma": 0.5,
                                "alpha": 0.0},
                    [{"alpha": 0.25, "beta": 2.0}, {"alpha": -0.2, "simpo_gamma": 1.0},
                     {"label_smoothing": 0.1, "alpha": 0.1}]),
}
ORPO_KNOBS = ({"beta": 0.1}, [{"beta": 1.0}, {"beta": 0.02}])
# examples/cpo.po and examples/orpo.po (SEEDS.md's knob names) by default follow TRL too:
# file -> (TRL's loss_type, {knob: TRL's config field}, poc defaults, variations).
MAIN_FILES = {
    "main_cpo": ("cpo", "sigmoid", {"beta": "beta", "lambda": "cpo_alpha"},
                 {"beta": 0.1, "lambda": 1.0}, [{"beta": 0.5, "lambda": 0.3}]),
    "main_orpo": ("orpo", None, {"lambda": "beta"}, {"lambda": 0.1}, [{"lambda": 1.0}]),
}
# TRL logs these too; poc cannot state them (a mean over the vocabulary's raw logits).
NOT_STATED = {"logits/chosen", "logits/rejected"}


class Poc:
    def __init__(self, exe, root, tmp):
        self.exe, self.root, self.tmp, self.n = exe, root, tmp, 0

    def run(self, args):
        r = subprocess.run([self.exe] + args, cwd=self.root, capture_output=True, text=True,
                           timeout=120)
        return r

    def probe(self, po, inputs, sets):
        self.n += 1
        path = os.path.join(self.tmp, f"in{self.n}.json")
        with open(path, "w") as f:
            json.dump(inputs, f)
        args = ["probe", po, "--inputs", path]
        for k, v in sorted(sets.items()):
            args += ["--set", f"{k}={v!r}"]
        r = self.run(args)
        if not check(r.returncode == 0, f"poc {' '.join(args)} exited {r.returncode}:\n{r.stderr}"):
            return None
        return json.loads(r.stdout)


# ---- a ragged batch, laid out as TRL's tokenize_row and collator lay it out -------------


def make_examples(rng, B):
    ex = []
    for _ in range(B):
        ex.append({"prompt": [rng.randrange(1, VOCAB) for _ in range(rng.randint(1, 5))],
                   "chosen": [rng.randrange(1, VOCAB) for _ in range(rng.randint(1, 6))],
                   "rejected": [rng.randrange(1, VOCAB) for _ in range(rng.randint(1, 6))]})
    return ex


def trl_batch(torch, examples):
    """chosen_/rejected_ input_ids, attention_mask and labels (-100 on the prompt and on
    padding), right-padded per side to its longest row."""
    batch = {}
    for side in ("chosen", "rejected"):
        rows = [e["prompt"] + e[side] for e in examples]
        width = max(len(r) for r in rows)
        ids, mask, labels = [], [], []
        for e, r in zip(examples, rows):
            pad = width - len(r)
            ids.append(r + [PAD] * pad)
            mask.append([1] * len(r) + [0] * pad)
            labels.append([-100] * len(e["prompt"]) + e[side] + [-100] * pad)
        batch[f"{side}_input_ids"] = torch.tensor(ids)
        batch[f"{side}_attention_mask"] = torch.tensor(mask)
        batch[f"{side}_labels"] = torch.tensor(labels)
    return batch


class FakeModel:
    """Stands for the policy: random float64 logits over VOCAB for whatever input it is
    given, kept as a leaf so the gradient of TRL's loss can be read off it."""

    def __init__(self, torch, seed):
        self.torch, self.gen = torch, torch.Generator().manual_seed(seed)
        self.logits = None

    def __call__(self, input_ids, attention_mask=None, **kwargs):
        n, t = input_ids.shape
        self.logits = (2.0 * self.torch.randn(n, t, VOCAB, generator=self.gen,
                                              dtype=self.torch.float64)).requires_grad_(True)
        return types.SimpleNamespace(logits=self.logits)


class Accelerator:
    device = "cpu"

    @staticmethod
    def gather_for_metrics(x):
        return x


def stub(cls, **fields):
    """An instance of TRL's trainer class that skips __init__ (no model, no dataset):
    only the attributes its loss code reads."""
    obj = object.__new__(cls)
    obj.__dict__.update(dict(accelerator=Accelerator(), is_encoder_decoder=False,
                             aux_loss_enabled=False), **fields)
    return obj


@contextlib.contextmanager
def float64_kept(torch):
    """ORPOTrainer.odds_ratio_loss casts the log-probs with `.float()` (float32, for bf16
    training). The check runs in float64, so for the duration of the call `.float()`
    leaves float64 tensors as they are; everything else is TRL's code as installed."""
    orig = torch.Tensor.float

    def keep(self, *a, **k):
        return self if self.dtype == torch.float64 else orig(self, *a, **k)
    torch.Tensor.float = keep
    try:
        yield
    finally:
        torch.Tensor.float = orig


# ---- from logits to poc's inputs, and back ------------------------------------------------


def row_logps(torch, logits, row, ids, positions):
    """log-softmax of logits[row, t-1] at token ids[t] for each t in positions."""
    lsm = torch.log_softmax(logits[row].detach(), dim=-1)
    return [float(lsm[t - 1, ids[t]]) for t in positions]


def scored(examples, orpo, B):
    """For each poc key: per example, (row of the concatenated batch, token ids of that
    row, positions scored)."""
    keys = {"policy/chosen": [], "policy/rejected": []}
    if orpo:
        keys["policy/prompt[1:]|prompt[:1]"] = []
    for i, e in enumerate(examples):
        p = len(e["prompt"])
        for side, row in (("chosen", i), ("rejected", B + i)):
            ids = e["prompt"] + e[side]
            keys["policy/" + side].append((row, ids, range(p, p + len(e[side]))))
        if orpo:
            keys["policy/prompt[1:]|prompt[:1]"].append((i, e["prompt"] + e["chosen"],
                                                         range(1, p)))
    return keys


def chain(torch, logits, keys, grad):
    """dL/dlogits from poc's dL/dlogp through the softmax."""
    out = torch.zeros_like(logits, dtype=torch.float64)
    probs = torch.softmax(logits.detach(), dim=-1)
    for key, rows in keys.items():
        for (row, ids, positions), g in zip(rows, grad[key]):
            for t, gt in zip(positions, g):
                out[row, t - 1] -= gt * probs[row, t - 1]
                out[row, t - 1, ids[t]] += gt
    return out


def rel_err(torch, got, want):
    scale = float(want.abs().max())
    return float((got - want).abs().max()) / (scale if scale > 0 else 1.0), scale


# ---- one file -------------------------------------------------------------------------


def run_file(torch, trl_cls, poc, name, cfg_knobs, variations, loss_type, orpo, po=None,
             rename=None):
    """rename: poc knob -> TRL config field, for a file that does not use TRL's names; such a
    file's reports need only be a subset of TRL's metrics."""
    po = po or os.path.join("examples", "trl", name + ".po")
    r = poc.run(["check", po])
    check(r.returncode == 0, f"{name}: poc check exit {r.returncode}: {r.stderr}")
    tmpl = json.loads(poc.run(["probe", po, "--template"]).stdout)
    want_keys = set(scored([], orpo, 0))
    check(set(tmpl["logp"]) == want_keys,
          f"{name}: --template keys {sorted(tmpl['logp'])}, expected {sorted(want_keys)}")
    worst_v = worst_g = 0.0
    n = 0
    for k, sets in enumerate([{}] + variations):
        knobs = dict(cfg_knobs, **sets)
        if rename:
            knobs = {rename.get(a, a): b for a, b in knobs.items()}
            knobs.setdefault("alpha", 0.0)
        for seed in SEEDS:
            for B in BATCHES:
                tag = f"{name} seed {seed} B={B}" + "".join(f" {a}={b}" for a, b in sets.items())
                rng = random.Random(10000 * k + 100 * seed + B)
                examples = make_examples(rng, B)
                model = FakeModel(torch, 10000 * k + 100 * seed + B)
                batch = trl_batch(torch, examples)
                if orpo:
                    self_ = stub(trl_cls, padding_value=PAD, beta=knobs["beta"])
                    with float64_kept(torch):
                        loss, metrics = trl_cls.get_batch_loss_metrics(self_, model, batch)
                else:
                    # CPOConfig.__post_init__: "alphapo" is "simpo" with cpo_alpha = 0
                    lt, cpo_alpha = loss_type, knobs.get("cpo_alpha", 1.0)
                    if lt == "alphapo":
                        lt, cpo_alpha = "simpo", 0.0
                    self_ = stub(trl_cls, pad_token_id=PAD, loss_type=lt, beta=knobs["beta"],
                                 label_smoothing=knobs.get("label_smoothing", 0.0),
                                 cpo_alpha=cpo_alpha, simpo_gamma=knobs.get("simpo_gamma", 0.5),
                                 alpha=knobs["alpha"])
                    loss, metrics = trl_cls.get_batch_loss_metrics(self_, model, batch)
                loss.backward()
                trl_grad = model.logits.grad

                keys = scored(examples, orpo, B)
                inp = {"batch": B, "seed": 1, "logp": {
                    key: [row_logps(torch, model.logits, row, ids, pos) for row, ids, pos in rows]
                    for key, rows in keys.items()}}
                out = poc.probe(po, inp, sets)
                if out is None:
                    continue

                want = loss.item()
                scale = max(abs(want), max(abs(float(v)) for v in metrics.values()), 1e-300)
                err = abs(out["loss"] - want) / max(abs(want), 1e-300)
                check(err <= RTOL_VALUE, f"{tag}: loss poc {out['loss']!r}, TRL {want!r}")
                worst_v = max(worst_v, err)
                rep = out["reports"]
                names = set(metrics) - NOT_STATED
                if loss_type == "alphapo":
                    # no NLL term: TRL logs nll_loss as a constant 0, the file no report
                    check(float(metrics["nll_loss"]) == 0.0, f"{tag}: TRL's nll_loss "
                          f"{metrics['nll_loss']!r} with cpo_alpha = 0")
                    names.discard("nll_loss")
                if rename:
                    check(set(rep) <= names, f"{tag}: reports {sorted(set(rep) - names)} are not "
                          f"among TRL's metrics {sorted(names)}")
                else:
                    check(set(rep) == names, f"{tag}: reports {sorted(rep)}, TRL logs "
                          f"{sorted(names)} (besides {sorted(NOT_STATED)})")
                for m in sorted(names & set(rep)):
                    tv = float(metrics[m])
                    e = abs(rep[m] - tv) / scale
                    if m == "rewards/accuracies":
                        # TRL averages the 0/1 outcomes in float32 (`.float()`): a fraction
                        # k/B, which float32 holds to half an ulp
                        e = abs(rep[m] - tv) / 2 ** -24 * RTOL_VALUE
                    else:
                        worst_v = max(worst_v, e)
                    check(e <= RTOL_VALUE, f"{tag}: report {m}: poc {rep[m]!r}, TRL {tv!r}")
                g = chain(torch, model.logits, keys, out["grad"])
                e, gscale = rel_err(torch, g, trl_grad)
                check(gscale > 0, f"{tag}: TRL's gradient is zero")
                check(e <= RTOL_GRAD, f"{tag}: dL/dlogits max error {e:.3g} relative to the "
                      f"largest entry {gscale:.3g}")
                worst_g = max(worst_g, e)
                n += 1
    print(f"{name}: {n} batches ({1 + len(variations)} knob settings x seeds {SEEDS} x "
          f"batches {BATCHES}) against TRL's {trl_cls.__name__}: worst value error "
          f"{worst_v:.2g} (limit {RTOL_VALUE:g}), worst gradient error {worst_g:.2g} "
          f"(limit {RTOL_GRAD:g})")


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--poc", required=True)
    ap.add_argument("--root", required=True)
    ap.add_argument("--file", required=True,
                    choices=sorted(CPO_FILES) + ["orpo"] + sorted(MAIN_FILES))
    a = ap.parse_args()
    why = need("torch", "trl")
    if why:
        print(f"trl_cpo: skipped: {why}")
        return 77
    import warnings
    import torch
    warnings.filterwarnings("ignore", message=".*experimental.*")
    with tempfile.TemporaryDirectory(prefix="poc-trl-cpo-") as tmp:
        poc = Poc(os.path.abspath(a.poc), a.root, tmp)
        if a.file in MAIN_FILES:
            base, lt, rename, knobs, variations = MAIN_FILES[a.file]
            if base == "orpo":
                from trl.experimental.orpo import ORPOTrainer as cls
            else:
                from trl.experimental.cpo import CPOTrainer as cls
            run_file(torch, cls, poc, base, knobs, variations, lt, base == "orpo",
                     po=os.path.join("examples", base + ".po"), rename=rename)
        elif a.file == "orpo":
            from trl.experimental.orpo import ORPOTrainer
            run_file(torch, ORPOTrainer, poc, "orpo", ORPO_KNOBS[0], ORPO_KNOBS[1], None, True)
        else:
            from trl.experimental.cpo import CPOTrainer
            lt, knobs, variations = CPO_FILES[a.file]
            run_file(torch, CPOTrainer, poc, a.file, knobs, variations, lt, False)
    return finish("trl_" + a.file)


if __name__ == "__main__":
    sys.exit(main())
