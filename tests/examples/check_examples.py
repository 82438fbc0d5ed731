#!/usr/bin/env python3
"""Checks one examples/NAME.po against its paper's formula, through `poc probe`.

For a few seeds and batch sizes it builds random inputs (ragged sequences, log-probs in
(-5, -0.01), positive entropies, data fields), runs `poc probe`, and compares the loss,
the per-example losses and the reports with formulas.py (an independent statement of
SEEDS.md, in float64), and every gradient with central finite differences of that
statement (stop-gradient terms held at the base point). It also runs `poc check`, the
`--template` round trip, `--set` variations, and per method the checks the papers' forms
call for (SGDPO's pick masks and its DPO limit, CoPO's batch statistics).

usage: check_examples.py --poc POC --root REPO --example NAME
"""

import argparse
import copy
import json
import math
import os
import random
import subprocess
import sys
import tempfile

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import formulas  # noqa: E402

RTOL_VALUE = 1e-9  # values: poc's evaluator and this one are both float64
ATOL_VALUE = 1e-12
RTOL_GRAD = 1e-6   # gradients against central differences with step FD_STEP
ATOL_GRAD = 1e-8
FD_STEP = 1e-6
SEEDS = (1, 2, 3)
BATCHES = (1, 2, 3, 4)
ANCHOR_TOKENS = 8  # CoPO's K: the anchor has 1..8 tokens


class Mismatch(Exception):
    pass


def fail(msg):
    raise Mismatch(msg)


def close(got, want, rtol, atol):
    if isinstance(got, bool) or not isinstance(got, (int, float)):
        return False
    if math.isnan(want):
        return math.isnan(got)
    return abs(got - want) <= atol + rtol * abs(want)


# ---- running poc ---------------------------------------------------------------------


class Poc:
    def __init__(self, exe, root, tmp):
        self.exe, self.root, self.tmp = exe, root, tmp
        self.n = 0

    def run(self, args, what):
        r = subprocess.run([self.exe] + args, cwd=self.root, capture_output=True, text=True,
                           timeout=120)
        if r.returncode != 0:
            fail(f"{what}: `poc {' '.join(args)}` exited {r.returncode}\n"
                 f"stdout:\n{r.stdout}\nstderr:\n{r.stderr}")
        return r

    def probe(self, po, inputs, sets, what):
        self.n += 1
        path = os.path.join(self.tmp, f"in{self.n}.json")
        with open(path, "w") as f:
            json.dump(inputs, f)
        args = ["probe", po, "--inputs", path]
        for k, v in sorted(sets.items()):
            args += ["--set", f"{k}={v!r}"]
        r = self.run(args, what)
        try:
            return json.loads(r.stdout)
        except json.JSONDecodeError as e:
            fail(f"{what}: probe output is not JSON ({e}):\n{r.stdout[:2000]}")


# ---- inputs --------------------------------------------------------------------------


def make_inputs(spec, B, rng, seed):
    """Random probe inputs: one length per sequence role and example, shared by every
    key whose target is that role."""
    roles = set(spec["logp"].values()) | set(spec.get("entropy", {}).values())
    roles |= {r for r in spec.get("fields", {}).values() if r}
    lens = [{r: rng.randint(1, ANCHOR_TOKENS if r == "a" else 6) for r in sorted(roles)}
            for _ in range(B)]

    def vec(role, lo, hi):
        return [[rng.uniform(lo, hi) for _ in range(lens[i][role])] for i in range(B)]

    inp = {"batch": B, "seed": seed, "logp": {}, "fields": {}}
    for key, role in sorted(spec["logp"].items()):
        inp["logp"][key] = vec(role, -5.0, -0.01)
    if spec.get("entropy"):
        inp["entropy"] = {k: vec(role, 0.01, 3.0) for k, role in sorted(spec["entropy"].items())}
    for name, role in sorted(spec.get("fields", {}).items()):
        inp["fields"][name] = vec(role, -1.0, 1.0) if role else [rng.uniform(-2.0, 2.0)
                                                                  for _ in range(B)]
    return inp


def as_x(inp):
    return {"logp": inp["logp"], "entropy": inp.get("entropy", {}),
            "fields": inp.get("fields", {})}


# ---- comparing -----------------------------------------------------------------------


def check_values(tag, out, per, reports):
    B = len(per)
    loss = math.fsum(per) / B
    if not close(out.get("loss"), loss, RTOL_VALUE, ATOL_VALUE):
        fail(f"{tag}: loss: poc {out.get('loss')!r}, formula {loss!r}")
    got = out.get("per_example")
    if not isinstance(got, list) or len(got) != B:
        fail(f"{tag}: per_example: poc {got!r}, want {B} values")
    for i in range(B):
        if not close(got[i], per[i], RTOL_VALUE, ATOL_VALUE):
            fail(f"{tag}: per_example[{i}]: poc {got[i]!r}, formula {per[i]!r}")
    rep = out.get("reports", {})
    if set(rep) != set(reports):
        fail(f"{tag}: report names: poc {sorted(rep)}, expected {sorted(reports)}")
    for name, (level, want) in sorted(reports.items()):
        g = rep[name]
        if isinstance(g, list):
            # one value per example (a batch-level report repeats its value)
            w = want if level == "example" else [want] * B
            if len(g) != B or not all(close(a, b, RTOL_VALUE, ATOL_VALUE) for a, b in zip(g, w)):
                fail(f"{tag}: report {name}: poc {g!r}, formula {w!r}")
        else:
            w = math.fsum(want) / B if level == "example" else want
            if not close(g, w, RTOL_VALUE, ATOL_VALUE):
                fail(f"{tag}: report {name} (batch mean): poc {g!r}, formula {w!r}")


def fd_grad(fn, x, s, p, picks, section, key, i, t, only_example=None):
    """Central difference of the batch-mean loss (or of one example's loss) in one input,
    with stop-gradient terms held at s."""
    def loss_at(delta):
        xx = copy.copy(x)
        xx[section] = dict(x[section])
        rows = [list(r) for r in x[section][key]]
        rows[i][t] += delta
        xx[section][key] = rows
        per, _ = fn(xx, s, p, picks)
        if only_example is not None:
            return per[only_example]
        return math.fsum(per) / len(per)
    return (loss_at(FD_STEP) - loss_at(-FD_STEP)) / (2 * FD_STEP)


def check_grads(tag, spec, out, x, p, picks, counts):
    fn = spec["fn"]
    for section, out_key, keys in (("logp", "grad", spec["logp"]),
                                   ("entropy", "grad_entropy", spec.get("entropy", {}))):
        grads = out.get(out_key, {})
        for key in sorted(keys):
            if not key.startswith("policy/"):
                continue  # the reference is frozen: poc owes no gradient for it
            if key not in grads:
                if section == "entropy":
                    # entropy only feeds reports here: an absent gradient means zero
                    grads = dict(grads)
                    grads[key] = [[0.0] * len(r) for r in x[section][key]]
                else:
                    fail(f"{tag}: {out_key}: no gradient for {key}; poc gave {sorted(grads)}")
            g = grads[key]
            rows = x[section][key]
            if len(g) != len(rows) or any(len(a) != len(b) for a, b in zip(g, rows)):
                fail(f"{tag}: {out_key}[{key}] has the wrong shape: {g!r}")
            for i, row in enumerate(rows):
                for t in range(len(row)):
                    want = fd_grad(fn, x, x, p, picks, section, key, i, t)
                    if not close(g[i][t], want, RTOL_GRAD, ATOL_GRAD):
                        fail(f"{tag}: {out_key}[{key}][{i}][{t}]: poc {g[i][t]!r}, "
                             f"finite difference {want!r}")
                    counts["grad"] += 1


M64 = (1 << 64) - 1


def mix64(z):
    z = ((z ^ (z >> 30)) * 0xbf58476d1ce4e5b9) & M64
    z = ((z ^ (z >> 27)) * 0x94d049bb133111eb) & M64
    return z ^ (z >> 31)


def reference_pick(seed, index, example, L, n):
    """The draw the language promises: partial Fisher–Yates over [0, L) with the stream
    poc_rng_derive(seed, index of the pick call, example) (splitmix64, 53-bit uniforms)."""
    s = mix64(mix64(mix64(seed) ^ ((index + 0x632be59bd9b4e019) & M64))
              ^ ((example + 0x85157af5) & M64))
    perm = list(range(L))
    mask = [0] * L
    for j in range(min(n, L)):
        s = (s + 0x9e3779b97f4a7c15) & M64
        u = (mix64(s) >> 11) * 2.0 ** -53
        q = min(j + int(u * (L - j)), L - 1)
        perm[j], perm[q] = perm[q], perm[j]
        mask[perm[j]] = 1
    return mask


def picks_of(tag, spec, out, x, p, seed):
    """The masks poc drew for pick(...): the right length, 0/1, as many ones as asked."""
    if not spec.get("picks"):
        return {}
    got = out.get("picks")
    if not isinstance(got, dict) or set(got) != set(spec["picks"]):
        fail(f"{tag}: picks: poc {got!r}, expected keys {sorted(spec['picks'])}")
    B = formulas.batch(x)
    for i in range(B):
        n_w, n_l = formulas.sgdpo_counts(x, p, i)
        for index, (key, role, n) in enumerate(((formulas.PICK_CHOSEN, "chosen", n_w),
                                                (formulas.PICK_REJECTED, "rejected", n_l))):
            mask = got[key][i]
            L = len(x["logp"]["policy/" + role][i])
            if len(mask) != L or any(v not in (0, 1) for v in mask) or sum(mask) != n:
                fail(f"{tag}: {key}[{i}] = {mask!r}: want {L} entries of 0/1 with "
                     f"max(1, floor(r * {L})) = {n} ones")
            want = reference_pick(seed, index, i, L, n)
            if mask != want:
                fail(f"{tag}: {key}[{i}] = {mask!r}, but the stream poc_rng_derive({seed}, "
                     f"{index}, {i}) draws {want!r}")
    return got


# ---- the checks ----------------------------------------------------------------------


def check_front_end(poc, name, po, spec):
    poc.run(["check", po], f"{name}: poc check")
    print(f"{name}: poc check: exit 0")
    r = poc.run(["probe", po, "--template"], f"{name}: probe --template")
    try:
        tmpl = json.loads(r.stdout)
    except json.JSONDecodeError as e:
        fail(f"{name}: --template output is not JSON ({e}):\n{r.stdout[:2000]}")
    want_logp = set(spec["logp"])
    if set(tmpl.get("logp", {})) != want_logp:
        fail(f"{name}: template logp keys: poc {sorted(tmpl.get('logp', {}))}, "
             f"expected {sorted(want_logp)}")
    want_ent = set(spec.get("entropy", {}))
    if set(tmpl.get("entropy", {}) or {}) != want_ent:
        fail(f"{name}: template entropy keys: poc {sorted(tmpl.get('entropy') or {})}, "
             f"expected {sorted(want_ent)}")
    want_fields = set(spec.get("fields", {}))
    if set(tmpl.get("fields", {}) or {}) != want_fields:
        fail(f"{name}: template fields: poc {sorted(tmpl.get('fields') or {})}, "
             f"expected {sorted(want_fields)}")
    out = poc.probe(po, tmpl, {}, f"{name}: template fed back")
    if not isinstance(out.get("loss"), (int, float)) or not math.isfinite(out["loss"]):
        fail(f"{name}: template fed back: loss {out.get('loss')!r} is not a finite number")
    print(f"{name}: --template names {len(want_logp)} logp keys, {len(want_ent)} entropy "
          f"keys, {len(want_fields)} fields; fed back to --inputs: loss {out['loss']:.6g}")


def check_probe(poc, name, po, spec):
    counts = {"runs": 0, "grad": 0}
    settings = [{}] + formulas.VARIATIONS[name]
    all_picks = {}
    for k, sets in enumerate(settings):
        p = dict(spec["params"], **sets)
        for seed in SEEDS:
            for B in BATCHES:
                rng = random.Random(1000 * k + 10 * seed + B)
                inp = make_inputs(spec, B, rng, seed)
                tag = f"{name} seed {seed} B={B}" + "".join(f" {k}={v}" for k, v in sets.items())
                out = poc.probe(po, inp, sets, tag)
                x = as_x(inp)
                picks = picks_of(tag, spec, out, x, p, seed)
                if picks:
                    all_picks[(seed, B, tuple(sorted(sets.items())))] = (inp, picks)
                per, reports = spec["fn"](x, x, p, picks)
                check_values(tag, out, per, reports)
                check_grads(tag, spec, out, x, p, picks, counts)
                counts["runs"] += 1
    print(f"{name}: {counts['runs']} probe runs ({len(settings)} knob settings x seeds "
          f"{SEEDS} x batches {BATCHES}): loss, per_example, reports to {RTOL_VALUE:g} and "
          f"{counts['grad']} gradient entries against central differences to {RTOL_GRAD:g}")
    return all_picks


def check_sgdpo(poc, root, po, spec):
    """pick draws: deterministic in the seed, different across seeds; r1 = r2 = 1 is
    DPO's value with half its gradient."""
    rng = random.Random(99)
    inp = make_inputs(spec, 4, rng, 1)
    a = poc.probe(po, inp, {}, "sgdpo determinism")
    b = poc.probe(po, inp, {}, "sgdpo determinism")
    if a.get("picks") != b.get("picks"):
        fail(f"sgdpo: the same seed drew different masks: {a.get('picks')} vs {b.get('picks')}")
    differs = False
    for seed in (2, 3, 4, 5):
        inp2 = dict(inp, seed=seed)
        c = poc.probe(po, inp2, {}, f"sgdpo seed {seed}")
        differs |= c.get("picks") != a.get("picks")
    if not differs:
        fail(f"sgdpo: seeds 1..5 all drew the same masks {a.get('picks')}")
    print("sgdpo: pick masks repeat for one seed and change with the seed")

    dpo_po = os.path.join(root, "examples", "dpo.po")
    n = 0
    for seed in SEEDS:
        for B in BATCHES:
            inp = make_inputs(spec, B, random.Random(500 + 10 * seed + B), seed)
            for beta in (0.1, 0.7):
                s = poc.probe(po, inp, {"r1": 1.0, "r2": 1.0, "beta": beta}, "sgdpo r=1")
                d = poc.probe(dpo_po, inp, {"beta": beta}, "dpo beside sgdpo r=1")
                tag = f"sgdpo r1=r2=1 beta={beta} seed {seed} B={B}"
                for key in (formulas.PICK_CHOSEN, formulas.PICK_REJECTED):
                    if any(v != 1 for row in s["picks"][key] for v in row):
                        fail(f"{tag}: {key} should pick every token: {s['picks'][key]}")
                if not close(s["loss"], d["loss"], RTOL_VALUE, ATOL_VALUE):
                    fail(f"{tag}: loss {s['loss']!r} differs from DPO's {d['loss']!r}")
                for key in formulas.PAIR_KEYS:
                    if not key.startswith("policy/"):
                        continue
                    for i, row in enumerate(d["grad"][key]):
                        for t, gd in enumerate(row):
                            gs = s["grad"][key][i][t]
                            if not close(gs, 0.5 * gd, RTOL_VALUE, 1e-15):
                                fail(f"{tag}: grad[{key}][{i}][{t}] = {gs!r}, half of DPO's "
                                     f"is {0.5 * gd!r}")
                n += 1
    print(f"sgdpo: r1 = r2 = 1 picks every token, equals DPO's loss and half its gradient "
          f"({n} cases)")


def check_copo(poc, po, spec):
    """Batch statistics couple the examples' values (w_RTA standardises the detached
    margins over the batch) but not their gradients: d(mean loss)/d x_j is exactly
    (1/B) d L_j / d x_j."""
    p = spec["params"]
    p = dict(p, lambda_rta=1.0, lambda_nll=0.5)
    sets = {"lambda_rta": 1.0, "lambda_nll": 0.5}
    n = 0
    for seed in SEEDS:
        B = 4
        inp = make_inputs(spec, B, random.Random(700 + seed), seed)
        out = poc.probe(po, inp, sets, f"copo coupling seed {seed}")
        x = as_x(inp)
        for key in ("policy/chosen", "policy/rejected", "policy/a"):
            for j in range(B):
                for t in range(len(x["logp"][key][j])):
                    own = formulas_fd_own(spec, x, p, key, j, t) / B
                    g = out["grad"][key][j][t]
                    if not close(g, own, RTOL_GRAD, ATOL_GRAD):
                        fail(f"copo seed {seed}: grad[{key}][{j}][{t}] = {g!r}, but example "
                             f"{j}'s own loss alone gives {own!r}: gradients couple")
                    n += 1
        # move example 0's chosen log-probs: its margin, so the batch mean and std, move
        moved = copy.deepcopy(inp)
        moved["logp"]["policy/chosen"][0] = [v - 0.7 for v in moved["logp"]["policy/chosen"][0]]
        out2 = poc.probe(po, moved, sets, f"copo coupling seed {seed} moved")
        per2, rep2 = spec["fn"](as_x(moved), as_x(moved), p, {})
        check_values(f"copo seed {seed} example 0 moved", out2, per2, rep2)
        if all(abs(out2["per_example"][i] - out["per_example"][i]) < 1e-12 for i in range(1, B)):
            fail(f"copo seed {seed}: moving example 0 left every other example's loss as it "
                 f"was; w_RTA should standardise over the batch")
    print(f"copo: batch statistics couple values across examples; {n} gradient entries "
          f"equal each example's own loss gradient / B")


def formulas_fd_own(spec, x, p, key, j, t):
    def own(xx, s, pp, picks):
        B = formulas.batch(xx)
        return [formulas.copo_example(xx, s, pp, i) for i in range(B)], {}
    return fd_grad(own, x, x, p, {}, "logp", key, j, t, only_example=j)


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--poc", required=True)
    ap.add_argument("--root", required=True, help="the repository root")
    ap.add_argument("--example", required=True, choices=sorted(formulas.SPECS))
    a = ap.parse_args()
    name = a.example
    spec = formulas.SPECS[name]
    po = os.path.join("examples", name + ".po")
    if not os.path.isfile(os.path.join(a.root, po)):
        print(f"{name}: {po} not found under {a.root}", file=sys.stderr)
        return 1
    with tempfile.TemporaryDirectory(prefix="poc-ex-") as tmp:
        poc = Poc(os.path.abspath(a.poc), a.root, tmp)
        try:
            check_front_end(poc, name, po, spec)
            check_probe(poc, name, po, spec)
            if name == "sgdpo":
                check_sgdpo(poc, a.root, po, spec)
            if name == "copo":
                check_copo(poc, po, spec)
        except Mismatch as e:
            print(f"FAIL {e}", file=sys.stderr)
            return 1
    print(f"{name}: ok")
    return 0


if __name__ == "__main__":
    sys.exit(main())
