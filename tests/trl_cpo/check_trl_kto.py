#!/usr/bin/env python3
"""examples/trl/kto.po, examples/trl/kto_apo_zero_unpaired.po and tools/kto_kl.py against
TRL's own KTOTrainer, as installed.

1. The mismatched completions. Ragged random labelled lines are written as a points file
   and given "kl_response" by tools/kto_kl.py --batch N. The same lines, as text over a
   word-level tokenizer whose words are the token ids, go through TRL's
   KTOTrainer._prepare_dataset (tokenising, the EOS check, the KL completions it builds
   with per_device_train_batch_size = N); its KL_completion_ids must be the script's
   kl_response, line for line, and its prompt/completion ids the lines' own.
2. The loss. Each batch of N lines is collated by TRL's DataCollatorForUnpairedPreference
   and scored by TRL's KTOTrainer._compute_loss, unchanged, on a stub `self` carrying the
   config fields, with fake policy and reference models: their fused-head forward returns
   random float64 per-token log-probabilities (and entropies) at the labelled positions,
   as leaves, so the gradient of TRL's loss with respect to the policy's log-probs can be
   read off. poc gets the same per-token values through `poc probe --inputs`; the loss
   and TRL's metrics (rewards/chosen, rewards/rejected, rewards/margins, logps/chosen,
   logps/rejected, kl, entropy) are compared to 1e-9 and dL/dlogp to 1e-7, both relative
   to the largest entry. The KL pass runs under no_grad in TRL; poc's gradient for it must
   be zero (sg).

usage: check_trl_kto.py --poc POC --root REPO --file kto|kto_apo_zero_unpaired
"""

import argparse
import collections
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
VOCAB = 12
EOS = 2
PAD = 0
SEEDS = (1, 2, 3)
BATCHES = (2, 3, 5, 8)
N_BATCHES = 3          # batches of lines per data set (the last one short when it can be)
FILES = {
    "kto": ("kto", {"beta": 0.1, "desirable_weight": 1.0, "undesirable_weight": 1.0},
            [{"beta": 0.5}, {"desirable_weight": 1.33, "undesirable_weight": 0.7},
             {"beta": 2.0, "undesirable_weight": 2.5}]),
    "kto_apo_zero_unpaired": ("apo_zero_unpaired",
                              {"beta": 0.1, "desirable_weight": 1.0, "undesirable_weight": 1.0},
                              [{"beta": 0.7}, {"desirable_weight": 0.5, "beta": 1.5}]),
}
# TRL logs these too; poc cannot state them (a mean over the vocabulary's raw logits, a
# running count of tokens seen).
NOT_STATED = {"logits/chosen", "logits/rejected", "num_tokens"}


def run(cmd, **kw):
    return subprocess.run(cmd, capture_output=True, text=True, timeout=120, **kw)


# ---- data -----------------------------------------------------------------------------


def make_lines(rng, n):
    """Ragged labelled lines; every response ends with EOS, as TRL's KTO makes them."""
    lines = []
    for _ in range(n):
        lines.append({"prompt": [1] + [rng.randrange(3, VOCAB) for _ in range(rng.randint(0, 4))],
                      "response": [rng.randrange(3, VOCAB) for _ in range(rng.randint(0, 5))]
                      + [EOS],
                      "label": rng.randint(0, 1)})
    return lines


def word_tokenizer():
    """A tokenizer whose words are the token ids: "w5" is 5, "</s>" (EOS) is 2."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast
    vocab = {f"w{i}": i for i in range(VOCAB)}
    vocab["<pad>"], vocab["<s>"], vocab["</s>"] = PAD, 1, EOS
    del vocab["w0"], vocab["w1"], vocab["w2"]
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<pad>"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    return PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<pad>", bos_token="<s>",
                                   eos_token="</s>", unk_token="<pad>")


def text(tok, ids):
    return " ".join(tok.convert_ids_to_tokens(ids))


def trl_prepare(KTOTrainer, tok, lines, batch, loss_type):
    """TRL's own preprocessing of the lines as a text data set."""
    from datasets import Dataset
    ds = Dataset.from_dict({"prompt": [text(tok, ln["prompt"]) for ln in lines],
                            "completion": [" " + text(tok, ln["response"]) for ln in lines],
                            "label": [bool(ln["label"]) for ln in lines]})
    self_ = object.__new__(KTOTrainer)
    self_.__dict__.update(_tokenizer=tok, calculate_KL=loss_type == "kto",
                          desirable_weight=1.0, undesirable_weight=1.0)
    args = types.SimpleNamespace(dataset_num_proc=None, max_length=None,
                                 per_device_train_batch_size=batch)
    return KTOTrainer._prepare_dataset(self_, ds, tok, args, "train")


# ---- the loss -------------------------------------------------------------------------


def fake_model_class(torch):
    class FakeModel(torch.nn.Module):
        """A model with TRL's fused LM head (model(..., labels=L, fused_lm_head=True)): per-token
        log-probs at the positions whose next label is not -100, 0 elsewhere; random, as
        float64 leaves. One table per input (the batch's sequences or its KL sequences)."""

        def __init__(self, gen, batch, with_entropy):
            super().__init__()
            self.is_gradient_checkpointing = False
            self.out = {}
            for which in ("", "KL_"):
                if which + "input_ids" not in batch:
                    continue
                ids = batch[which + "input_ids"]
                labels = ids.masked_fill(batch[which + "completion_mask"] == 0, -100)[:, 1:]
                mask = (labels != -100).double()
                lp = (-5 * torch.rand(labels.shape, generator=gen, dtype=torch.float64) - 0.01) * mask
                ent = 3 * torch.rand(labels.shape, generator=gen, dtype=torch.float64) * mask
                ml = torch.randn(labels.shape, generator=gen, dtype=torch.float64) * mask
                self.out[which] = (ids, lp.requires_grad_(True), ent if with_entropy else None, ml)

        def forward(self, input_ids=None, fused_lm_head=False, labels=None, **kw):
            assert fused_lm_head
            # by identity first: a batch's KL sequences can equal its own (one prompt,
            # one response), and are still a second call with its own values
            hit = [w for w, o in self.out.items() if input_ids is o[0]] or \
                  [w for w, o in self.out.items()
                   if input_ids.shape == o[0].shape and torch.equal(input_ids, o[0])]
            if hit:
                ids, lp, ent, ml = self.out[hit[0]]
                return types.SimpleNamespace(log_probs=lp, entropy=ent, mean_logits=ml,
                                             aux_loss=None)
            raise AssertionError("the fake model was called on an input it does not know")

    return FakeModel


class Accelerator:
    device = "cpu"

    @staticmethod
    def gather_for_metrics(x):
        return x


def trl_loss(torch, KTOTrainer, batch, loss_type, knobs, gen):
    FakeModel = fake_model_class(torch)
    policy = FakeModel(gen, batch, True)
    ref = FakeModel(gen, batch, False)
    self_ = object.__new__(KTOTrainer)
    self_.__dict__.update(
        model=policy, ref_model=ref, accelerator=Accelerator(), calculate_KL=loss_type == "kto",
        precompute_ref_logps=False, loss_type=loss_type, beta=knobs["beta"],
        desirable_weight=knobs["desirable_weight"], undesirable_weight=knobs["undesirable_weight"],
        aux_loss_enabled=False, _metrics={"train": collections.defaultdict(list)},
        _total_train_tokens=0, _tp_size=1,
        args=types.SimpleNamespace(gradient_checkpointing_kwargs=None))
    loss = KTOTrainer._compute_loss(self_, policy, batch, False)
    loss.backward()
    metrics = {k: v[-1] for k, v in self_._metrics["train"].items() if v}
    return loss, metrics, policy, ref


def per_example(batch, table, which, B):
    """Row b's values at its completion tokens: label position t+1 is column t."""
    mask = batch[which + "completion_mask"][:, 1:]
    table = table.detach()
    return [[float(table[b, t]) for t in range(mask.shape[1]) if mask[b, t]] for b in range(B)]


# ---- one file -------------------------------------------------------------------------


def run_file(torch, KTOTrainer, Collator, poc, root, tmp, name, loss_type, cfg, variations):
    po = os.path.join("examples", "trl", name + ".po")
    r = run([poc, "check", po], cwd=root)
    check(r.returncode == 0, f"{name}: poc check exit {r.returncode}: {r.stderr}")
    tok = word_tokenizer()
    kl = loss_type == "kto"
    worst_v = worst_g = 0.0
    n_batches = n_lines = 0
    for k, sets in enumerate([{}] + variations):
        knobs = dict(cfg, **sets)
        for seed in SEEDS:
            for N in BATCHES:
                tag = f"{name} seed {seed} N={N}" + "".join(f" {a}={b}" for a, b in sets.items())
                rng = random.Random(1000 * k + 10 * seed + N)
                lines = make_lines(rng, N * N_BATCHES - (1 if N > 2 else 0))
                # 1. tools/kto_kl.py against TRL's KL completions
                src, dst = os.path.join(tmp, "in.jsonl"), os.path.join(tmp, "out.jsonl")
                with open(src, "w") as f:
                    for ln in lines:
                        f.write(json.dumps(ln) + "\n")
                r = run([sys.executable, os.path.join(root, "tools", "kto_kl.py"), src, "-o", dst,
                         "--batch", str(N)])
                if not check(r.returncode == 0, f"{tag}: kto_kl.py exit {r.returncode}: {r.stderr}"):
                    continue
                with open(dst) as f:
                    ours = [json.loads(x) for x in f]
                prepared = trl_prepare(KTOTrainer, tok, lines, N, loss_type)
                check(len(prepared) == len(lines) == len(ours),
                      f"{tag}: TRL kept {len(prepared)} lines of {len(lines)}")
                for i, (ln, mine, theirs) in enumerate(zip(lines, ours, prepared)):
                    check(theirs["prompt_ids"] == ln["prompt"] and
                          theirs["completion_ids"] == ln["response"],
                          f"{tag}: line {i}: TRL tokenised {theirs['prompt_ids']} / "
                          f"{theirs['completion_ids']}, the line has {ln['prompt']} / {ln['response']}")
                    if kl:
                        check(mine["kl_response"] == theirs["KL_completion_ids"],
                              f"{tag}: line {i}: kto_kl.py gives {mine['kl_response']}, TRL's "
                              f"KL_completion_ids {theirs['KL_completion_ids']}")
                    n_lines += 1
                # 2. the loss, batch by batch, as TRL's sequential sampler deals them
                collate = Collator(pad_token_id=PAD)
                gen = torch.Generator().manual_seed(1000 * k + 10 * seed + N)
                for start in range(0, len(lines), N):
                    rows = [dict(prepared[i]) for i in range(start, min(start + N, len(lines)))]
                    B = len(rows)
                    batch = collate(rows)
                    loss, metrics, policy, ref = trl_loss(torch, KTOTrainer, batch, loss_type,
                                                          knobs, gen)
                    inp = {"batch": B, "seed": 1, "logp": {
                        "policy/response": per_example(batch, policy.out[""][1].detach(), "", B),
                        "ref/response": per_example(batch, ref.out[""][1], "", B)},
                        "entropy": {"policy/response": per_example(batch, policy.out[""][2], "", B)},
                        "fields": {"label": [ours[start + b]["label"] for b in range(B)]}}
                    if kl:
                        inp["logp"]["policy/kl_response"] = per_example(
                            batch, policy.out["KL_"][1].detach(), "KL_", B)
                        inp["logp"]["ref/kl_response"] = per_example(batch, ref.out["KL_"][1], "KL_", B)
                    path = os.path.join(tmp, "probe.json")
                    with open(path, "w") as f:
                        json.dump(inp, f)
                    args = [poc, "probe", po, "--inputs", path]
                    for a, b in sorted(sets.items()):
                        args += ["--set", f"{a}={b!r}"]
                    r = run(args, cwd=root)
                    if not check(r.returncode == 0, f"{tag}: poc probe exit {r.returncode}: {r.stderr}"):
                        continue
                    out = json.loads(r.stdout)
                    btag = f"{tag} lines {start}..{start + B - 1}"
                    want = loss.item()
                    e = abs(out["loss"] - want) / max(abs(want), 1e-300)
                    check(e <= RTOL_VALUE, f"{btag}: loss poc {out['loss']!r}, TRL {want!r}")
                    worst_v = max(worst_v, e)
                    names = set(metrics) - NOT_STATED
                    if not kl:
                        # no KL estimate: TRL logs kl as a constant 0, the file no report
                        check(metrics.get("kl") == 0.0, f"{btag}: TRL's kl {metrics.get('kl')!r}")
                        names.discard("kl")
                    rep = out["reports"]
                    labels = inp["fields"]["label"]
                    # TRL logs the chosen (rejected) means only when the batch has a
                    # desirable (undesirable) line, the margin only when it has both
                    stated = set(rep)
                    if not any(labels):
                        stated -= {"rewards/chosen", "logps/chosen", "rewards/margins"}
                    if all(labels):
                        stated -= {"rewards/rejected", "logps/rejected", "rewards/margins"}
                    check(stated == names, f"{btag}: reports {sorted(stated)}, TRL logs "
                          f"{sorted(names)} (besides {sorted(NOT_STATED)})")
                    scale = max([abs(want)] + [abs(float(metrics[m])) for m in names] + [1e-300])
                    for m in sorted(names & stated):
                        e = abs(rep[m] - float(metrics[m])) / scale
                        check(e <= RTOL_VALUE, f"{btag}: report {m}: poc {rep[m]!r}, TRL {metrics[m]!r}")
                        worst_v = max(worst_v, e)
                    g = torch.tensor([v for row in out["grad"]["policy/response"] for v in row],
                                     dtype=torch.float64)
                    tg = torch.tensor([v for row in per_example(batch, policy.out[""][1].grad, "", B)
                                       for v in row], dtype=torch.float64)
                    gscale = float(tg.abs().max())
                    e = float((g - tg).abs().max()) / (gscale if gscale > 0 else 1.0)
                    check(g.shape == tg.shape and e <= RTOL_GRAD,
                          f"{btag}: dL/dlogp max error {e:.3g} relative to {gscale:.3g}")
                    worst_g = max(worst_g, e)
                    if kl:
                        gk = out["grad"].get("policy/kl_response", [])
                        check(all(v == 0 for row in gk for v in row),
                              f"{btag}: poc's gradient for the KL sequences is not zero: {gk}")
                    n_batches += 1
    print(f"{name}: {n_lines} lines' {'KL completions and ' if kl else ''}token ids as TRL's "
          f"_prepare_dataset makes them; {n_batches} batches ({1 + len(variations)} knob "
          f"settings x seeds {SEEDS} x batch sizes {BATCHES}) against TRL's "
          f"KTOTrainer._compute_loss: worst value error {worst_v:.2g} (limit {RTOL_VALUE:g}), "
          f"worst gradient error {worst_g:.2g} (limit {RTOL_GRAD:g})")


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--poc", required=True)
    ap.add_argument("--root", required=True)
    ap.add_argument("--file", required=True, choices=sorted(FILES))
    a = ap.parse_args()
    why = need("torch", "trl", "datasets", "tokenizers")
    if why:
        print(f"trl_kto: skipped: {why}")
        return 77
    import torch
    from datasets.utils.logging import disable_progress_bar
    from trl import KTOTrainer
    from trl.trainer.kto_trainer import DataCollatorForUnpairedPreference
    disable_progress_bar()
    # TRL's advice on desirable/undesirable weights for unbalanced labels: not ours to act on
    import logging
    logging.getLogger("trl.trainer.kto_trainer").setLevel(logging.ERROR)
    loss_type, cfg, variations = FILES[a.file]
    with tempfile.TemporaryDirectory(prefix="poc-trl-kto-") as tmp:
        run_file(torch, KTOTrainer, DataCollatorForUnpairedPreference, os.path.abspath(a.poc),
                 a.root, tmp, a.file, loss_type, cfg, variations)
    return finish("trl_" + a.file)


if __name__ == "__main__":
    sys.exit(main())
