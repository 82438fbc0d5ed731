#!/usr/bin/env python3
"""poc's learning-rate schedules against transformers' own, step by step.

transformers' side is its own code: TrainingArguments.get_warmup_steps turns `warmup_steps`
(a ratio when < 1, else steps) into steps, get_scheduler builds the schedule the Trainer
builds (cosine, linear, constant_with_warmup), and the rate each optimizer step runs at is
the scheduler's get_last_lr() before that step, which is what the Trainer logs as
`learning_rate`. poc's side is trn_lr, read two ways:

  - lr_dump (lr_dump.c, a seam over the runtime's trn_lr and trn_warmup_steps) over a grid
    of schedules, run lengths and warmups (ratios, whole steps, 0, longer than the run);
  - the `lr` that a training binary built from examples/dpo.po logs in metrics.jsonl, for
    one run of each schedule, with the schedule set at run time by --set train.KEY=VALUE.

Both compute in double in the same order, so lr_dump's rates agree to the last bit; the
check allows 2 ulp (relative 5e-16), for a libm that rounds cos differently and for
metrics.jsonl, whose printer may drop the last bit.

usage: schedule_check.py --lr-dump BIN --poc POC --root REPO --scratch DIR
"""
import argparse
import json
import os
import shutil
import subprocess
import sys

sys.dont_write_bytecode = True  # nothing written into the source tree
sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
from pycheck import check, finish, need  # noqa: E402

HF_NAME = {"cosine": "cosine", "linear": "linear", "constant": "constant_with_warmup"}
TOTALS = [1, 2, 3, 7, 10, 16, 100, 1000]
WARMUPS = [0, 0.01, 0.1, 0.25, 0.5, 0.9999, 1, 3, 7.5, 12]
RTOL = 5e-16


def hf_schedule(args_cls, get_scheduler, torch, scratch, sched, warmup, total, lr):
    """(warmup steps, [lr of optimizer step 1..total]) as a transformers Trainer runs it."""
    a = args_cls(output_dir=scratch, learning_rate=lr, lr_scheduler_type=HF_NAME[sched],
                 warmup_steps=warmup, report_to=[], use_cpu=True)
    w = a.get_warmup_steps(total)
    p = torch.nn.Parameter(torch.zeros(1))
    opt = torch.optim.SGD([p], lr=a.learning_rate)
    s = get_scheduler(a.lr_scheduler_type, optimizer=opt, num_warmup_steps=w,
                      num_training_steps=total, scheduler_specific_kwargs=a.lr_scheduler_kwargs)
    out = []
    for _ in range(total):
        out.append(s.get_last_lr()[0])
        opt.step()
        s.step()
    return w, out


def close(a, b):
    return abs(a - b) <= RTOL * max(abs(a), abs(b))


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--lr-dump", required=True)
    ap.add_argument("--poc", required=True)
    ap.add_argument("--root", required=True)
    ap.add_argument("--scratch", required=True)
    a = ap.parse_args()
    why = need("torch", "transformers")
    if why:
        print("skip: " + why)
        return 77
    import torch
    import transformers
    from transformers import TrainingArguments, get_scheduler
    transformers.logging.set_verbosity_error()

    shutil.rmtree(a.scratch, ignore_errors=True)
    os.makedirs(a.scratch)
    hf = lambda *cfg: hf_schedule(TrainingArguments, get_scheduler, torch, a.scratch, *cfg)

    # ---- the grid, through lr_dump ------------------------------------------------------
    grid = [(s, w, t, 1e-3) for s in HF_NAME for t in TOTALS for w in WARMUPS]
    inp = "".join("%s %r %d %r\n" % g for g in grid)
    p = subprocess.run([a.lr_dump], input=inp, capture_output=True, text=True, timeout=60)
    check(p.returncode == 0, "lr_dump exits 0: " + p.stderr)
    lines = p.stdout.splitlines()
    check(len(lines) == len(grid), "lr_dump answers every line (%d of %d)" % (len(lines), len(grid)))
    bad = []
    exact = 0
    for g, line in zip(grid, lines):
        f = line.split()
        w_poc, lr_poc = int(f[0]), [float(x) for x in f[1:]]
        w_hf, lr_hf = hf(*g)
        if w_poc != w_hf or len(lr_poc) != len(lr_hf) or \
                not all(close(x, y) for x, y in zip(lr_poc, lr_hf)):
            first = next((i for i, (x, y) in enumerate(zip(lr_poc, lr_hf)) if not close(x, y)), 0)
            bad.append("%s warmup %r total %d: warmup steps poc %d, transformers %d; step %d: "
                       "poc %r, transformers %r" % (g[0], g[1], g[2], w_poc, w_hf, first + 1,
                                                     lr_poc[first:first + 1], lr_hf[first:first + 1]))
        exact += lr_poc == lr_hf
    check(not bad, "schedules differ from transformers':\n  " + "\n  ".join(bad[:10]))
    # warmup 0 starts at the peak; any warmup > 0 at 0 (the first update does not move)
    check(all(float(l.split()[1]) == (1e-3 if g[1] == 0 else 0.0) for g, l in zip(grid, lines)),
          "lr at step 1: the peak without warmup, 0 with")
    print("lr_dump: %d schedules (%d steps) match transformers, %d of them bit for bit"
          % (len(grid), sum(g[2] for g in grid), exact))

    # ---- the training binary's logged lr ----------------------------------------------------
    binary = os.path.join(a.scratch, "dpo")
    p = subprocess.run([a.poc, "build", "examples/dpo.po", "-o", binary], cwd=a.root,
                       capture_output=True, text=True, timeout=300)
    if not check(p.returncode == 0, "poc build examples/dpo.po: " + p.stderr[-2000:]):
        return finish("trl_schedule")
    env = dict(os.environ, OMP_NUM_THREADS="1", OMP_WAIT_POLICY="PASSIVE")
    for k, (sched, warmup, total) in enumerate([("cosine", 0.25, 9), ("linear", 2, 7),
                                                ("constant", 0.5, 5), ("linear", 0, 4)]):
        out = os.path.join(a.scratch, "run%d" % k)
        lr = 3e-4
        cmd = [binary, "--backend", "cpu", "--out", out, "--set", "train.schedule=" + sched,
               "--set", "train.warmup=%r" % warmup, "--set", "train.steps=%d" % total,
               "--set", "train.lr=%r" % lr, "--set", "train.log_every=1"]
        p = subprocess.run(cmd, cwd=a.root, env=env, capture_output=True, text=True, timeout=300)
        what = "%s warmup %r over %d steps" % (sched, warmup, total)
        if not check(p.returncode == 0, "%s: the run exits 0: %s" % (what, p.stderr[-2000:])):
            continue
        with open(os.path.join(out, "metrics.jsonl")) as f:
            logged = [json.loads(l) for l in f if l.strip()]
        got = [m["lr"] for m in logged if "lr" in m]
        _, want = hf(sched, warmup, total, lr)
        check(len(got) == total and all(close(x, y) for x, y in zip(got, want)),
              "%s: metrics.jsonl lr %s, transformers %s" % (what, got, want))
    return finish("trl_schedule")


if __name__ == "__main__":
    sys.exit(main())
