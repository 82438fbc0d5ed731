#!/usr/bin/env python3
"""logging_tensorboard / logging_wandb: a training binary's --log files, read by the
peer's own reader and compared with metrics.jsonl:

- a whole run: every metrics line is there once, at its step, with its values
  (TensorBoard keeps float32, so the comparison is with the value rounded to float32;
  wandb keeps the doubles exactly), the wandb run ends with one exit record;
- logging changes nothing in metrics.jsonl (a run without --log has the same lines);
- a crash after the last checkpoint (its checkpoint removed, a torn record appended) and
  --resume: the sink is cut back with metrics.jsonl and continues, no step twice, and
  the resumed run's lines equal the unbroken run's;
- --log turned on at a resume: the earlier steps are filled in from metrics.jsonl;
- a sink that cannot write warns and the run completes with metrics.jsonl whole;
- --log with an unknown sink is a usage error.

usage: test_logging.py tensorboard|wandb BIN SCRATCH"""
import json
import os
import shutil
import struct
import subprocess
import sys

sys.dont_write_bytecode = True
HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, ".."))
sys.path.insert(0, os.path.join(HERE, "..", "train"))
from pycheck import check, finish, need  # noqa: E402
import tt_fixture  # noqa: E402

SINK, BIN, SCRATCH = sys.argv[1], os.path.abspath(sys.argv[2]), os.path.abspath(sys.argv[3])
NAME = "logging_" + SINK


def run(args):
    env = dict(os.environ, TT_MODEL=MODEL, TT_DATA=DATA, TT_EVAL=EVAL, TT_CKPT_EVERY="4",
               OMP_NUM_THREADS="1")
    p = subprocess.run([BIN] + args, cwd=SCRATCH, env=env, capture_output=True, text=True,
                       timeout=240)
    return p.returncode, p.stderr


def metrics(d):
    with open(os.path.join(d, "metrics.jsonl")) as f:
        return [json.loads(l) for l in f if l.strip()]


def stable(lines):
    """metrics lines without the one wall-clock value"""
    return [{k: v for k, v in o.items() if k != "tokens_per_s"} for o in lines]


def f32(x):
    return struct.unpack("<f", struct.pack("<f", x))[0]


# ---- the peers' readers -----------------------------------------------------------------

def tb_read(d):
    """(events, scalars): every event as TensorBoard's loader yields it (it checks each
    record's CRCs), and the accumulator's scalars per tag as {step: value}."""
    from tensorboard.backend.event_processing import event_accumulator as ea
    from tensorboard.backend.event_processing import event_file_loader as efl
    tbdir = os.path.join(d, "tensorboard")
    files = sorted(f for f in os.listdir(tbdir) if "tfevents" in f)
    events = []
    for f in files:
        events += list(efl.EventFileLoader(os.path.join(tbdir, f)).Load())
    acc = ea.EventAccumulator(tbdir, size_guidance={ea.SCALARS: 0})
    acc.Reload()
    scalars = {}
    for tag in acc.Tags()["scalars"]:
        scalars[tag] = {}
        for e in acc.Scalars(tag):
            check(e.step not in scalars[tag], "%s: step %d of %s only once" % (d, e.step, tag))
            scalars[tag][e.step] = e.value
    return files, events, scalars


def wb_read(d):
    """The records wandb-core's transaction-log reader finds (`wandb leet inspect --json`),
    and what it says on stderr (a damaged chunk is reported there)."""
    top = os.path.join(d, "wandb")
    runs = sorted(os.listdir(top))
    check(len(runs) == 1 and runs[0].startswith("offline-run-"),
          "%s: one offline-run-* folder: %s" % (top, runs))
    run_dir = os.path.join(top, runs[0])
    logs = [f for f in os.listdir(run_dir) if f.startswith("run-") and f.endswith(".wandb")]
    check(len(logs) == 1 and logs[0] == "run-%s.wandb" % runs[0][-8:],
          "the log is run-<id>.wandb, the folder's id: %s" % logs)
    p = subprocess.run([sys.executable, "-m", "wandb", "leet", "inspect", "--json",
                        os.path.join(run_dir, logs[0])], capture_output=True, text=True,
                       timeout=120, env=dict(os.environ, WANDB_SILENT="true"))
    check(p.returncode == 0, "wandb leet inspect exits 0: %s" % p.stderr[-500:])
    recs = [json.loads(l) for l in p.stdout.splitlines() if l.strip()]
    return run_dir, recs, p.stderr


def compare(d, label, want_exit=True):
    """The sink's content against metrics.jsonl."""
    lines = metrics(d)
    steps = [o["step"] for o in lines]
    if SINK == "tensorboard":
        files, events, scalars = tb_read(d)
        check(len(files) == 1, "%s: %s: one event file: %s" % (label, d, files))
        check(events and events[0].file_version == "brain.Event:2",
              "%s: the first event names the format" % label)
        ev_steps = [e.step for e in events[1:]]
        check(ev_steps == steps, "%s: one event per metrics line, in order: %s vs %s"
              % (label, ev_steps, steps))
        bad = []
        for o in lines:
            for k, v in o.items():
                if k == "step" or not isinstance(v, (int, float)):
                    continue
                got = scalars.get(k, {}).get(o["step"])
                if got is None or got != f32(v):
                    bad.append((o["step"], k, v, got))
        check(not bad, "%s: every value at its step (float32): %s" % (label, bad[:5]))
        n = sum(1 for o in lines for k, v in o.items()
                if k != "step" and isinstance(v, (int, float)))
        check(sum(len(s) for s in scalars.values()) == n,
              "%s: no scalar that metrics.jsonl lacks" % label)
    else:
        run_dir, recs, err = wb_read(d)
        check("corrupt" not in err and "error" not in err.lower(),
              "%s: the reader finds the log intact: %s" % (label, err[-300:]))
        types = [r.get("type") for r in recs]
        check(types[:2] == ["header", "run"], "%s: header and run first: %s" % (label, types[:3]))
        check([r["num"] for r in recs] == list(range(1, len(recs) + 1)),
              "%s: records numbered 1.. without gaps" % label)
        hist = [r["history"] for r in recs if r.get("type") == "history"]
        h_steps = [int(h["step"]["num"]) for h in hist]
        check(h_steps == steps, "%s: one history record per metrics line: %s vs %s"
              % (label, h_steps, steps))
        bad = []
        for o, h in zip(lines, hist):
            item = h["item"]
            check(item.get("_step") == o["step"], "%s: _step" % label)
            for k, v in o.items():
                if k != "step" and isinstance(v, (int, float)) and item.get(k) != v:
                    bad.append((o["step"], k, v, item.get(k)))
        check(not bad, "%s: every value exact: %s" % (label, bad[:5]))
        exits = [i for i, t in enumerate(types) if t == "exit"]
        if want_exit:
            check(exits == [len(types) - 1] and recs[-1]["exit"].get("exit_code", 0) == 0,
                  "%s: one exit record, last, code 0: %s" % (label, types[-3:]))
        run = recs[1]["run"]
        check(run.get("run_id") == os.path.basename(run_dir)[-8:] and run.get("project") == "poc",
              "%s: the run record names the run: %s" % (label, run))
        cfg = run.get("config", {}).get("update", {})
        check(cfg.get("beta") is not None and cfg.get("train", {}).get("batch") == 4,
              "%s: the config holds knobs and train settings: %s" % (label, cfg))


def main():
    why = need("tensorboard") if SINK == "tensorboard" else need("wandb")
    if not why and SINK == "wandb":
        # the reader is wandb-core's, through `wandb leet inspect` (recent wandb only)
        p = subprocess.run([sys.executable, "-m", "wandb", "leet", "inspect", "--help"],
                           capture_output=True, text=True, timeout=120)
        if p.returncode != 0:
            why = "this wandb has no `wandb leet inspect` (its transaction-log reader)"
    if why:
        print("%s: skipped: %s" % (NAME, why))
        return 77
    global MODEL, DATA, EVAL
    shutil.rmtree(SCRATCH, ignore_errors=True)
    os.makedirs(SCRATCH)
    MODEL, DATA, EVAL = tt_fixture.make(SCRATCH)

    # a whole run, and the same run without --log
    rc, err = run(["--out", "A", "--log", SINK])
    check(rc == 0, "a run with --log %s: %s" % (SINK, err[-800:]))
    rc, err = run(["--out", "B"])
    check(rc == 0, "the run without --log: " + err[-500:])
    full = metrics(os.path.join(SCRATCH, "A"))
    check(len(full) >= 10, "the run logged its steps: %d lines" % len(full))
    check(stable(full) == stable(metrics(os.path.join(SCRATCH, "B"))),
          "--log changes nothing in metrics.jsonl")
    check(not os.path.exists(os.path.join(SCRATCH, "B", "tensorboard")) and
          not os.path.exists(os.path.join(SCRATCH, "B", "wandb")), "no --log, no sink files")
    compare(os.path.join(SCRATCH, "A"), "whole run")

    # a crash after step 10 (checkpoints at 4 and 8): ckpt-10 is gone, the sink holds
    # steps 9 and 10 and a torn record; --resume cuts both back to 8 and goes on
    rc, err = run(["--out", "C", "--log", SINK, "--steps", "10"])
    check(rc == 0, "the run to step 10: " + err[-500:])
    C = os.path.join(SCRATCH, "C")
    shutil.rmtree(os.path.join(C, "ckpt-10"))
    if SINK == "tensorboard":
        tbd = os.path.join(C, "tensorboard")
        f = [x for x in os.listdir(tbd) if "tfevents" in x][0]
        with open(os.path.join(tbd, f), "ab") as fh:
            fh.write(struct.pack("<Q", 40) + b"\x01\x02")  # a record cut off mid-header
    else:
        wbd = os.path.join(C, "wandb")
        rd = os.path.join(wbd, os.listdir(wbd)[0])
        f = [x for x in os.listdir(rd) if x.endswith(".wandb")][0]
        with open(os.path.join(rd, f), "ab") as fh:
            fh.write(b"\x11\x22\x33\x44\x30\x00\x01partial")  # a chunk cut short
    rc, err = run(["--resume", "C", "--log", SINK])
    check(rc == 0, "--resume with --log: " + err[-800:])
    check(stable(metrics(C)) == stable(full), "the resumed run's metrics are the unbroken run's")
    compare(C, "crash and resume")

    # --log turned on only at the resume: the steps before it come from metrics.jsonl
    rc, err = run(["--out", "D", "--steps", "8"])
    check(rc == 0, "the run without --log to step 8: " + err[-500:])
    rc, err = run(["--resume", "D", "--log", SINK])
    check(rc == 0, "--resume turning --log on: " + err[-500:])
    compare(os.path.join(SCRATCH, "D"), "--log from a resume")

    # a sink that cannot write: a warning, the run completes, metrics.jsonl whole
    E = os.path.join(SCRATCH, "E")
    os.makedirs(E)
    with open(os.path.join(E, SINK), "w") as fh:
        fh.write("a file where the sink's folder would go\n")
    rc, err = run(["--out", "E", "--log", SINK])
    check(rc == 0 and "warning: --log %s" % SINK in err,
          "a failing sink warns and the run completes (%d): %s" % (rc, err[-500:]))
    check(stable(metrics(E)) == stable(full), "metrics.jsonl is whole despite the failing sink")

    # the flag itself
    rc, err = run(["--out", "F", "--log", "tensorboard,mlflow"])
    check(rc == 2 and "unknown sink 'mlflow'" in err and
          not os.path.exists(os.path.join(SCRATCH, "F")),
          "--log with an unknown sink: exit 2, named, no run directory (%d: %s)" % (rc, err))
    rc, err = run(["--out", "G", "--steps", "2", "--log", "tensorboard", "--log", "wandb"])
    G = os.path.join(SCRATCH, "G")
    check(rc == 0 and os.path.isdir(os.path.join(G, "tensorboard")) and
          os.path.isdir(os.path.join(G, "wandb")), "--log repeats: both sinks written")
    return finish(NAME)


if __name__ == "__main__":
    sys.exit(main())
