"""Data parallelism: R ranks under mpirun compute what one process computes.

For each example: `poc build`, then 8 steps as one process and as 2 and 3 ranks (Open
MPI, oversubscribed), with micro_batch = 3 so that the batch of 16 falls into micro-batches
of 3, 3, 3, 3, 3 and 1 dealt unevenly to the ranks. Per step, the loss and every report
agree to 1e-5 relative; the final weights lie within 1e-4 of the update's size (max |w_R -
w_1| <= 1e-4 · max |w_1 - w_0|); the evaluation accuracy is identical; and rank 0 alone
wrote the run (one metrics line per step, one checkpoint).

With several ranks ZeRO stage 1 is on by default: each rank holds the AdamW moments of
its shard of the trainable vector, reports their bytes in the run's first lines (about
1/R of the unsharded bytes, which --zero 0 holds on every rank) and writes them itself
(optimizer.index.json and optim/shard-*). On the examples named by --zero-off the same runs
with --zero 0, and with --overlap 0 (the gradient's reductions after the backward instead
of during it), meet the same criteria against one process and each other.

ZeRO checkpoints (first example): a run checkpointed and resumed as 1 → 2 → 3 → 1
processes (each resume reads the shards another R wrote) ends where an uninterrupted run
ends, by the same criteria; a missing or truncated shard and an index that does not match
the model are refused, naming the file.

Then, on the first example: ranks that differ in program or flags stop naming the rank;
a rank stopped with SIGSTOP makes the others give up after --collective-timeout, naming
rank and step; a rank killed makes the launcher end the others, which say where they
were; in both cases the newest checkpoint resumes.

usage: check_dp.py --poc POC --root ROOT --scratch DIR --mpirun MPIRUN [--ranks 2,3] NAME...
"""
import argparse
import json
import math
import os
import re
import shutil
import struct
import subprocess
import sys

sys.dont_write_bytecode = True
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from pycheck import check, f32_tensors, finish, run_metrics  # noqa: E402

ap = argparse.ArgumentParser()
ap.add_argument("--poc", required=True)
ap.add_argument("--root", required=True)
ap.add_argument("--scratch", required=True)
ap.add_argument("--mpirun", required=True)
ap.add_argument("--ranks", default="2,3")
ap.add_argument("--steps", type=int, default=8)
ap.add_argument("--backend", default="cpu")
ap.add_argument("--subset", type=int, default=0,
                help="train on the data file's first N lines and 8 held-out prompts")
ap.add_argument("--set", action="append", default=[], help="more --set for every run")
ap.add_argument("--no-faults", action="store_true", help="skip the failure cases")
ap.add_argument("--weight-ulps", type=float, default=0,
                help="also allow this many float32 spacings of each weight (a device that "
                     "sums the ranks' float gradients in another order than one process)")
ap.add_argument("--zero-off", default="",
                help="examples also run with --zero 0 (comma list)")
ap.add_argument("examples", nargs="+")
a = ap.parse_args()

ENV = dict(os.environ, OMP_NUM_THREADS="1", OMP_WAIT_POLICY="PASSIVE")
MPI = [a.mpirun, "--oversubscribe"] + (["--allow-run-as-root"] if os.geteuid() == 0 else [])
MPI += ["-x", "OMP_NUM_THREADS", "-x", "OMP_WAIT_POLICY"]
MPI += ["-x", "POC_CUDA_EMULATE"] if "POC_CUDA_EMULATE" in os.environ else []
SET = ["--backend", a.backend, "--set", "train.micro_batch=3"]
for kv in a.set:
    SET += ["--set", kv]




def state_bytes(err):
    """The run's first lines' AdamW state: (bytes per rank, unsharded bytes, sharded)."""
    m = re.search(r"optimizer state \(AdamW moments\): (\d+) bytes per rank \((ZeRO-1|--zero 0)"
                  r"[^;]*; (\d+) unsharded\)", err)
    return (int(m.group(1)), int(m.group(3)), m.group(2) == "ZeRO-1") if m else None


def compare(name, what, m1, mR, w1, out, wfile, upd, steps=None):
    """Per-step losses and reports within 1e-5 relative, final weights within 1e-4 of the
    update's size (plus --weight-ulps). Steps: only those lines (a resumed run's)."""
    by_step = {l["step"]: l for l in mR}
    worst, where = 0.0, ""
    for l1 in m1:
        if steps is not None and l1["step"] not in steps:
            continue
        lR = by_step.get(l1["step"])
        if not check(lR is not None, f"{name}: {what}: no metrics line for step {l1['step']}"):
            continue
        for k, v in l1.items():
            if k in ("tokens_per_s", "eval/accuracy") or not isinstance(v, (int, float)):
                continue
            w = lR.get(k)
            if not check(isinstance(w, (int, float)), f"{name}: {what}: step {l1['step']}: no {k}"):
                continue
            d = abs(w - v) / max(abs(v), abs(w), 1e-30)
            if abs(w - v) > 1e-12 and d > worst:
                worst, where = d, f"step {l1['step']} {k}: {w} vs {v}"
    check(worst <= 1e-5, f"{name}: {what}: relative difference {worst:.3g} > 1e-5 at {where}")
    wR = f32_tensors(os.path.join(out, f"ckpt-{a.steps}", wfile))
    dw = max(abs(x - y) for k in w1 for x, y in zip(w1[k], wR[k]))
    over = [(k, x, y) for k in w1 for x, y in zip(w1[k], wR[k])
            if abs(x - y) > 1e-4 * upd + a.weight_ulps * 2.0 ** (math.frexp(abs(x))[1] - 24)]
    check(not over, f"{name}: {what}: final weights differ by up to {dw:.3g} (update size "
          f"{upd:.3g}); {len(over)} beyond the tolerance, first {over[:1]}")
    return worst, dw


def run(cmd, what):
    r = subprocess.run(cmd, cwd=a.root, env=ENV, capture_output=True, text=True, timeout=600)
    if not check(r.returncode == 0, f"{what}: exit {r.returncode}\n{r.stderr[-3000:]}"):
        return None
    return r


shutil.rmtree(a.scratch, ignore_errors=True)
os.makedirs(a.scratch)
ranks = [int(x) for x in a.ranks.split(",")]
for name in a.examples:
    binary = os.path.join(a.scratch, name)
    po = os.path.join(a.root, "examples", name + ".po")
    if a.subset:
        # the same program on the first lines of its data (a slow device: the reference
        # is cached over the whole data set before the first step)
        with open(po) as f:
            text = f.read()
        for q in re.findall(r'"(examples/data/[a-z_]+\.jsonl)"', text):
            dst = os.path.join(a.scratch, os.path.basename(q))
            with open(os.path.join(a.root, q)) as f:
                keep = f.readlines()[:a.subset if "eval" not in q else 8]
            with open(dst, "w") as f:
                f.writelines(keep)
            text = text.replace(f'"{q}"', f'"{dst}"')
        po = os.path.join(a.scratch, name + ".po")
        with open(po, "w") as f:
            f.write(text)
    if not run([a.poc, "build", po, "-o", binary], f"{name}: poc build"):
        continue
    one = os.path.join(a.scratch, name + "-1")
    if not run([binary, "--steps", str(a.steps), "--out", one] + SET, f"{name}: one process"):
        continue
    m1 = run_metrics(one)
    # what trains: the model's weights, or a LoRA run's adapters (whose B starts at 0, so
    # B's largest entry is the update's size)
    wfile = "model.safetensors"
    if os.path.exists(os.path.join(one, f"ckpt-{a.steps}", "adapter_model.safetensors")):
        wfile = "adapter_model.safetensors"
    w1 = f32_tensors(os.path.join(one, f"ckpt-{a.steps}", wfile))
    if wfile == "model.safetensors":
        w0 = f32_tensors(os.path.join(a.root, "examples", "tiny", "model.safetensors"))
        upd = max(abs(x - y) for k in w1 if k in w0 for x, y in zip(w1[k], w0[k]))
    else:
        upd = max(abs(x) for k in w1 if "lora_B" in k for x in w1[k])
    check(upd > 0, f"{name}: the weights moved")
    for R in ranks:
        out = os.path.join(a.scratch, f"{name}-{R}")
        r = run(MPI + ["-np", str(R), binary, "--steps", str(a.steps), "--out", out] + SET,
                f"{name}: {R} ranks")
        if not r:
            continue
        check(f"MPI, {R} ranks" in r.stderr, f"{name}: {R} ranks: the run says it is "
              f"data-parallel:\n{r.stderr[-2000:]}")
        check("[rank" not in r.stderr, f"{name}: {R} ranks: other ranks said something:\n"
              f"{r.stderr[-2000:]}")
        mR = run_metrics(out)
        check(len(mR) == len(m1), f"{name}: {R} ranks: {len(mR)} metric lines, one process "
              f"{len(m1)} (rank 0 alone writes)")
        worst, where = 0.0, ""
        for l1, lR in zip(m1, mR):
            for k, v in l1.items():
                if k == "tokens_per_s" or not isinstance(v, (int, float)):
                    continue
                w = lR.get(k)
                if k == "eval/accuracy":
                    check(w == v, f"{name}: {R} ranks: step {l1['step']}: eval/accuracy {w} "
                          f"!= {v}")
                    continue
                if not check(isinstance(w, (int, float)), f"{name}: {R} ranks: step "
                             f"{l1['step']}: no {k}"):
                    continue
                d = abs(w - v) / max(abs(v), abs(w), 1e-30)
                if abs(w - v) > 1e-12 and d > worst:
                    worst, where = d, f"step {l1['step']} {k}: {w} vs {v}"
        check(worst <= 1e-5, f"{name}: {R} ranks: relative difference {worst:.3g} > 1e-5 at "
              f"{where}")
        # the evaluation is sharded over the ranks and gathered: rank 0's samples file
        # holds every prompt's generation, the same as one process's
        ev1 = sorted(os.listdir(os.path.join(one, "eval"))) if os.path.isdir(os.path.join(one, "eval")) else []
        evR = sorted(os.listdir(os.path.join(out, "eval"))) if os.path.isdir(os.path.join(out, "eval")) else []
        if check(evR == ev1, f"{name}: {R} ranks: evaluation sample files {evR}, one "
                 f"process {ev1}"):
            for f in ev1:
                with open(os.path.join(one, "eval", f), "rb") as x, \
                        open(os.path.join(out, "eval", f), "rb") as y:
                    check(x.read() == y.read(), f"{name}: {R} ranks: eval/{f} differs from one "
                          "process's")
        ck = sorted(d for d in os.listdir(out) if d.startswith("ckpt-"))
        check(ck == [f"ckpt-{a.steps}"], f"{name}: {R} ranks: checkpoints {ck}")
        wR = f32_tensors(os.path.join(out, f"ckpt-{a.steps}", wfile))
        dw = max(abs(x - y) for k in w1 for x, y in zip(w1[k], wR[k]))
        over = [(k, x, y) for k in w1 for x, y in zip(w1[k], wR[k])
                if abs(x - y) > 1e-4 * upd + a.weight_ulps * 2.0 ** (math.frexp(abs(x))[1] - 24)]
        check(not over, f"{name}: {R} ranks: final weights differ by up to {dw:.3g} (update "
              f"size {upd:.3g}); {len(over)} beyond the tolerance, first {over[:1]}")
        print(f"{name}: {R} ranks: worst relative difference {worst:.3g}, weights {dw:.3g} "
              f"(update {upd:.3g})")
        # ZeRO-1 (the default): ~1/R of the moments per rank, written as R shards
        sb = state_bytes(r.stderr)
        if check(sb is not None and sb[2], f"{name}: {R} ranks: no ZeRO-1 optimizer state "
                 f"line:\n{r.stderr[-2000:]}"):
            per, full, _ = sb
            # ⌈n/R⌉ elements per moment: at most R − 1 elements of padding over full/R
            check(per * R >= full and per * R - full < 2 * 4 * R and per < full,
                  f"{name}: {R} ranks: {per} bytes of optimizer state per rank, {full} unsharded")
            print(f"{name}: {R} ranks: optimizer state {per} bytes per rank of {full}")
        ckd = os.path.join(out, f"ckpt-{a.steps}")
        shards = sorted(os.listdir(os.path.join(ckd, "optim"))) if os.path.isdir(
            os.path.join(ckd, "optim")) else []
        check(os.path.exists(os.path.join(ckd, "optimizer.index.json")) and
              not os.path.exists(os.path.join(ckd, "optimizer.safetensors")) and
              shards == [f"shard-{i:05d}-of-{R:05d}.safetensors" for i in range(R)],
              f"{name}: {R} ranks: ZeRO checkpoint layout: {sorted(os.listdir(ckd))} {shards}")
        if name not in a.zero_off.split(","):
            continue
        out0 = os.path.join(a.scratch, f"{name}-{R}-zero0")
        r0 = run(MPI + ["-np", str(R), binary, "--steps", str(a.steps), "--out", out0, "--zero",
                        "0"] + SET, f"{name}: {R} ranks, --zero 0")
        if not r0:
            continue
        sb0 = state_bytes(r0.stderr)
        check(sb0 is not None and not sb0[2] and sb is not None and sb0[0] == sb0[1] == sb[1],
              f"{name}: {R} ranks, --zero 0: every rank holds all the moments: {sb0} vs {sb}")
        check(os.path.exists(os.path.join(out0, f"ckpt-{a.steps}", "optimizer.safetensors")),
              f"{name}: {R} ranks, --zero 0: one optimizer.safetensors")
        worst0, dw0 = compare(name, f"{R} ranks, --zero 0", m1, run_metrics(out0), w1, out0, wfile, upd)
        # ZeRO and the all-reduce path give the same numbers
        compare(name, f"{R} ranks, ZeRO vs --zero 0", run_metrics(out0), mR,
                f32_tensors(os.path.join(out0, f"ckpt-{a.steps}", wfile)), out, wfile, upd)
        print(f"{name}: {R} ranks, --zero 0: worst relative difference {worst0:.3g}, weights "
              f"{dw0:.3g}")
        # overlap off (the default starts the gradient's reductions during the backward)
        outb = os.path.join(a.scratch, f"{name}-{R}-blocking")
        rb = run(MPI + ["-np", str(R), binary, "--steps", str(a.steps), "--out", outb,
                        "--overlap", "0"] + SET, f"{name}: {R} ranks, --overlap 0")
        if rb:
            compare(name, f"{R} ranks, ZeRO, --overlap 0 vs 1", run_metrics(outb), mR,
                    f32_tensors(os.path.join(outb, f"ckpt-{a.steps}", wfile)), out, wfile, upd)



def rank_pid(parent, rank):
    """The pid of the rank that the launcher `parent` started as `rank`."""
    for d in os.listdir("/proc"):
        if not d.isdigit():
            continue
        try:
            with open(f"/proc/{d}/stat") as f:
                ppid = int(f.read().rsplit(")", 1)[1].split()[1])
            with open(f"/proc/{d}/environ", "rb") as f:
                env = f.read().split(b"\0")
        except OSError:
            continue
        if ppid == parent and f"OMPI_COMM_WORLD_RANK={rank}".encode() in env:
            return int(d)
    return None


def stall(binary, out, sig, timeout_s):
    """Runs 2 ranks with a checkpoint every 2 steps, sends `sig` to rank 1 once step 3 is
    logged, and returns (exit status, stderr, seconds from the signal to the end)."""
    import signal
    import time
    cmd = MPI + ["-np", "2", binary, "--out", out, "--collective-timeout", str(timeout_s),
                 "--set", "train.ckpt_every=2"]
    pr = subprocess.Popen(cmd, cwd=a.root, env=ENV, stdout=subprocess.PIPE,
                          stderr=subprocess.PIPE, text=True)
    t_end = time.time() + 120
    pid = None
    while time.time() < t_end and pr.poll() is None:
        try:
            if len(run_metrics(out)) >= 4:
                pid = rank_pid(pr.pid, 1)
                break
        except (OSError, ValueError):
            pass
        time.sleep(0.05)
    if pid is None:
        pr.kill()
        pr.communicate()
        return None, "rank 1 not found or the run ended early", 0
    t0 = time.time()
    os.kill(pid, getattr(signal, sig))
    try:
        _, err = pr.communicate(timeout=timeout_s + 60)
    except subprocess.TimeoutExpired:
        pr.kill()
        _, err = pr.communicate()
        err += "\n(the job hung)"
    try:
        os.kill(pid, signal.SIGKILL)   # a stopped rank the launcher did not end
    except OSError:
        pass
    return pr.returncode, err, time.time() - t0


def resumes(binary, out):
    """The newest checkpoint of `out` resumes as one process for one more step."""
    steps = sorted(int(d[5:]) for d in os.listdir(out) if d.startswith("ckpt-"))
    if not check(steps, f"{out}: no checkpoint was written"):
        return
    r = subprocess.run([binary, "--resume", out, "--steps", str(steps[-1] + 1)], cwd=a.root,
                       env=ENV, capture_output=True, text=True, timeout=300)
    check(r.returncode == 0, f"{out}: the newest checkpoint (step {steps[-1]}) does not resume:"
          f"\n{r.stderr[-2000:]}")


def zero_resume(name):
    """1 → 2 → 3 → 1 processes, resuming every 2 steps, against the uninterrupted run;
    then damaged shards and indexes are refused naming the file."""
    binary = os.path.join(a.scratch, name)
    one = os.path.join(a.scratch, name + "-1")
    if not (os.path.exists(binary) and os.path.exists(os.path.join(one, f"ckpt-{a.steps}"))):
        return
    out = os.path.join(a.scratch, name + "-chain")
    shutil.rmtree(out, ignore_errors=True)
    chain = [1, 2, 3, 1]
    per = max(1, a.steps // len(chain))
    for i, R in enumerate(chain):
        stop = a.steps if i == len(chain) - 1 else per * (i + 1)
        cmd = ([binary] if R == 1 else MPI + ["-np", str(R), binary]) + \
            ["--steps", str(stop)] + (["--out", out] if i == 0 else ["--resume", out]) + SET
        if not run(cmd, f"{name}: resume chain, {R} process(es) to step {stop}"):
            return
        if R > 1:
            check(os.path.exists(os.path.join(out, f"ckpt-{stop}", "optim",
                                              f"shard-{R - 1:05d}-of-{R:05d}.safetensors")),
                  f"{name}: resume chain: ckpt-{stop} holds {R} shards")
    wfile = "model.safetensors"
    if os.path.exists(os.path.join(one, f"ckpt-{a.steps}", "adapter_model.safetensors")):
        wfile = "adapter_model.safetensors"
    w1 = f32_tensors(os.path.join(one, f"ckpt-{a.steps}", wfile))
    w0 = f32_tensors(os.path.join(a.root, "examples", "tiny", "model.safetensors"))
    upd = max(abs(x - y) for k in w1 if k in w0 for x, y in zip(w1[k], w0[k])) \
        if wfile == "model.safetensors" else max(abs(x) for k in w1 if "lora_B" in k for x in w1[k])
    worst, dw = compare(name, "resume chain 1→2→3→1", run_metrics(one), run_metrics(out), w1, out,
                        wfile, upd, steps=set(range(per + 1, a.steps + 1)))
    # the moments too (one file at the end of both)
    o1 = f32_tensors(os.path.join(one, f"ckpt-{a.steps}", "optimizer.safetensors"))
    oc = f32_tensors(os.path.join(out, f"ckpt-{a.steps}", "optimizer.safetensors"))
    for kind in ("exp_avg.", "exp_avg_sq."):
        big = max(abs(x) for k in o1 if k.startswith(kind) for x in o1[k])
        dm = max(abs(x - y) for k in o1 if k.startswith(kind) for x, y in zip(o1[k], oc[k]))
        check(dm <= 1e-4 * big, f"{name}: resume chain: {kind[:-1]} differs by {dm:.3g} "
              f"(largest {big:.3g})")
    print(f"{name}: resume chain 1→2→3→1: worst relative difference {worst:.3g}, weights {dw:.3g}")

    # damage: a sharded checkpoint (the 2-rank run's) copied, then broken one way each
    src = os.path.join(a.scratch, f"{name}-2")
    if not os.path.isdir(os.path.join(src, f"ckpt-{a.steps}", "optim")):
        return
    shard1 = os.path.join("optim", "shard-00001-of-00002.safetensors")

    def broken(what, damage, expect):
        dst = os.path.join(a.scratch, f"{name}-broken")
        shutil.rmtree(dst, ignore_errors=True)
        shutil.copytree(src, dst)
        ck = os.path.join(dst, f"ckpt-{a.steps}")
        damage(ck)
        for R in (1, 2):
            cmd = ([binary] if R == 1 else MPI + ["-np", str(R), binary]) + \
                ["--resume", dst, "--steps", str(a.steps + 1)] + SET
            r = subprocess.run(cmd, cwd=a.root, env=ENV, capture_output=True, text=True,
                               timeout=300)
            check(r.returncode != 0 and expect(ck) in r.stderr,
                  f"{name}: {what}: {R} process(es) refuse it naming {expect(ck)} (exit "
                  f"{r.returncode}):\n{r.stderr[-2000:]}")

    def truncate(ck):
        p = os.path.join(ck, shard1)
        with open(p, "rb") as f:
            b = f.read()
        with open(p, "wb") as f:
            f.write(b[:len(b) // 2])

    def bad_index(ck):
        p = os.path.join(ck, "optimizer.index.json")
        with open(p) as f:
            j = json.load(f)
        j["n"] += 1
        with open(p, "w") as f:
            json.dump(j, f)

    broken("a missing shard", lambda ck: os.remove(os.path.join(ck, shard1)),
           lambda ck: os.path.join(ck, shard1))
    broken("a truncated shard", truncate, lambda ck: os.path.join(ck, shard1))
    broken("an index for another model", bad_index,
           lambda ck: os.path.join(ck, "optimizer.index.json") + ": the shards hold")


def read_lines(out):
    """metrics.jsonl's whole lines (one cut by a kill is left out); [] before there is one"""
    lines = []
    try:
        with open(os.path.join(out, "metrics.jsonl")) as f:
            for line in f:
                try:
                    lines.append(json.loads(line))
                except ValueError:
                    pass
    except OSError:
        pass
    return lines


def zero_kills(name, kills=4, seed=7):
    """kill -9 of a random rank at a random moment of a 2-rank ZeRO run that checkpoints
    every step, `kills` times, each time resuming the same folder: every ckpt-* left is
    complete, and the run finished as one process ends where the uninterrupted one did."""
    import random
    import signal
    import time
    binary = os.path.join(a.scratch, name)
    one = os.path.join(a.scratch, name + "-1")
    if not os.path.exists(os.path.join(one, f"ckpt-{a.steps}")):
        return
    rnd = random.Random(seed)
    killed = interrupted = 0
    out = os.path.join(a.scratch, name + "-kills")
    shutil.rmtree(out, ignore_errors=True)
    for i in range(kills):
        have = any(d.startswith("ckpt-") for d in os.listdir(out)) if os.path.isdir(out) else False
        cmd = MPI + ["-np", "2", binary, "--steps", str(a.steps), "--set", "train.ckpt_every=1"] + \
            (["--resume", out] if have else ["--out", out]) + SET
        pr = subprocess.Popen(cmd, cwd=a.root, env=ENV, stdout=subprocess.DEVNULL,
                              stderr=subprocess.DEVNULL)
        # once training runs (a metrics line past those already there), at a random moment
        # of the next steps and their checkpoints
        n0 = len(read_lines(out)) + 1
        t_end = time.time() + 120
        while time.time() < t_end and pr.poll() is None and len(read_lines(out)) < n0:
            time.sleep(0.02)
        time.sleep(rnd.uniform(0, 0.25))
        pid = rank_pid(pr.pid, rnd.randrange(2))
        if pid and pr.poll() is None:
            os.kill(pid, signal.SIGKILL)
            killed += 1
        try:
            pr.wait(timeout=120)
        except subprocess.TimeoutExpired:
            pr.kill()
            pr.wait()
            check(False, f"{name}: kill {i}: the job hung after a rank was killed")
        for d in sorted(os.listdir(out)):
            if not d.startswith("ckpt-"):
                continue
            ck = os.path.join(out, d)
            files = set(os.listdir(ck))
            ok = {"state.json", "model.safetensors", "config.json"} <= files and (
                "optimizer.safetensors" in files or ("optimizer.index.json" in files and len(
                    os.listdir(os.path.join(ck, "optim"))) == 2))
            check(ok, f"{name}: kill {i} (seed {seed}): {d} is incomplete: {sorted(files)}")
        done = sorted(int(d[5:]) for d in os.listdir(out) if d.startswith("ckpt-"))
        # a kill that lands after the last step's checkpoint (the job shutting down) is
        # timing, not a failure; the kills that cut a run short are what this tests
        interrupted += bool(done) and done[-1] < a.steps
        if done and done[-1] == a.steps:
            break
    left = sorted(int(d[5:]) for d in os.listdir(out) if d.startswith("ckpt-"))
    check(killed >= 1 and interrupted >= 1 and left, f"{name}: {killed} of {kills} kills "
          f"hit a rank, {interrupted} cut a run short; checkpoints left {left}")
    r = run([binary, "--steps", str(a.steps), "--resume", out] + SET,
            f"{name}: after {kills} kills, one process")
    if r and os.path.exists(os.path.join(out, f"ckpt-{a.steps}")):
        w1 = f32_tensors(os.path.join(one, f"ckpt-{a.steps}", "model.safetensors"))
        w0 = f32_tensors(os.path.join(a.root, "examples", "tiny", "model.safetensors"))
        upd = max(abs(x - y) for k in w1 if k in w0 for x, y in zip(w1[k], w0[k]))
        # a line cut by a kill is left out; a step redone after a resume counts last
        worst, dw = compare(name, f"after {kills} kills (seed {seed})", run_metrics(one),
                            read_lines(out), w1,
                            out, "model.safetensors", upd, steps={a.steps})
        print(f"{name}: {kills} kill -9 of a rank during ZeRO runs: resumed to the same "
              f"weights (difference {dw:.3g})")


if a.examples and not a.no_faults:
    zero_resume(a.examples[0])
    zero_kills(a.examples[0])

# a rank with no examples at all: copo's own micro_batch (8) makes 2 micro-batches of the
# batch of 16, so with 3 ranks rank 2 only joins the collectives
if a.no_faults:
    sys.exit(finish("dp"))

if "copo" in a.examples and os.path.exists(os.path.join(a.scratch, "copo")):
    binary = os.path.join(a.scratch, "copo")
    outs = {}
    for R in (1, 3):
        outs[R] = os.path.join(a.scratch, f"copo-idle-{R}")
        cmd = ([binary] if R == 1 else MPI + ["-np", str(R), binary]) + \
            ["--steps", "3", "--out", outs[R]]
        run(cmd, f"copo, micro_batch 8: {R} rank(s)")
    if all(os.path.exists(os.path.join(o, "metrics.jsonl")) for o in outs.values()):
        m1, m3 = run_metrics(outs[1]), run_metrics(outs[3])
        same = [all(abs(l1[k] - l3[k]) <= 1e-5 * max(abs(l1[k]), 1e-30) for k in
                    ("loss", "loss/rta", "rewards/margins") if k in l1)
                for l1, l3 in zip(m1, m3)]
        check(len(m1) == len(m3) and all(same), f"copo with an idle rank: {m3} vs {m1}")

if a.examples and os.path.exists(os.path.join(a.scratch, a.examples[0])):
    name = a.examples[0]
    binary = os.path.join(a.scratch, name)
    # a failing rank ends them all, and its error is shown
    r = subprocess.run(MPI + ["-np", "2", binary, "--resume", os.path.join(a.scratch, "none")],
                       cwd=a.root, env=ENV, capture_output=True, text=True, timeout=300)
    check(r.returncode != 0, "a failing run under mpirun exits non-zero")
    check("no such run directory" in r.stderr, f"rank 0's error is shown:\n{r.stderr[-2000:]}")

    # the ranks agree on the program, the data and the flags
    alt = os.path.join(a.scratch, "alt")
    os.makedirs(alt, exist_ok=True)
    with open(os.path.join(a.root, "examples", name + ".po")) as f:
        src = f.read()
    with open(os.path.join(alt, name + ".po"), "w") as f:
        f.write(src + "\n# another program\n")
    run([a.poc, "build", os.path.join(alt, name + ".po"), "-o", os.path.join(alt, name)],
        f"{name}: poc build (altered)")
    cases = [("program (its .po source)", [binary, "--out", os.path.join(a.scratch, "agree1")],
              [os.path.join(alt, name), "--out", os.path.join(a.scratch, "agree1")]),
             ("command line (flags)", [binary, "--out", os.path.join(a.scratch, "agree2")],
              [binary, "--out", os.path.join(a.scratch, "agree2"), "--steps", "3"])]
    # rank 1 started in a folder whose data file (same relative path) has one line less
    other = os.path.join(a.scratch, "otherdata")
    os.makedirs(os.path.join(other, "examples", "data"), exist_ok=True)
    for f in os.listdir(os.path.join(a.root, "examples", "data")):
        shutil.copy(os.path.join(a.root, "examples", "data", f),
                    os.path.join(other, "examples", "data", f))
    with open(os.path.join(other, "examples", "data", "pairs.jsonl")) as f:
        lines = f.readlines()
    with open(os.path.join(other, "examples", "data", "pairs.jsonl"), "w") as f:
        f.writelines(lines[:-1])
    if not os.path.exists(os.path.join(other, "examples", "tiny")):
        os.symlink(os.path.join(a.root, "examples", "tiny"), os.path.join(other, "examples", "tiny"))
    out3 = os.path.join(a.scratch, "agree3")
    cases.append(("data file", ["-wdir", a.root, binary, "--out", out3],
                  ["-wdir", other, binary, "--out", out3]))
    for what, c0, c1 in cases:
        r = subprocess.run(MPI + ["-np", "1"] + c0 + [":", "-np", "1"] + c1, cwd=a.root,
                           env=ENV, capture_output=True, text=True, timeout=300)
        check(r.returncode != 0 and f"rank 1's {what} differs" in r.stderr,
              f"ranks that differ in their {what} stop, naming rank 1 (exit {r.returncode}):"
              f"\n{r.stderr[-2000:]}")
        out_dir = c0[c0.index("--out") + 1]
        check(not os.path.exists(os.path.join(out_dir, "ckpt-1")), f"{what}: no training")

    # a stuck rank: the others give up after --collective-timeout, naming rank and step
    out = os.path.join(a.scratch, "stuck")
    rc, err, dt = stall(binary, out, "SIGSTOP", 10)
    check(rc not in (None, 0) and "(the job hung)" not in err, f"a stuck rank ends the job "
          f"(exit {rc}):\n{err[-2000:]}")
    check("rank 0: step" in err and "--collective-timeout 10" in err, f"the timeout names rank "
          f"and step:\n{err[-2000:]}")
    check(dt < 60, f"the job ended {dt:.0f} s after rank 1 stopped")
    resumes(binary, out)

    # a dead rank: the launcher ends the others, which say where they were
    out = os.path.join(a.scratch, "dead")
    rc, err, dt = stall(binary, out, "SIGKILL", 600)
    check(rc not in (None, 0) and "(the job hung)" not in err, f"a dead rank ends the job "
          f"(exit {rc}):\n{err[-2000:]}")
    check("rank 0: stopped during step" in err, f"rank 0 says where it stopped:\n{err[-2000:]}")
    check(dt < 60, f"the job ended {dt:.0f} s after rank 1 died")
    resumes(binary, out)
sys.exit(finish("dp"))
