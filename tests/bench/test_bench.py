#!/usr/bin/env python3
"""poc bench on examples/dpo.po (the tiny bundled model): both variants measured with
positive tokens/s, the step's stages adding up to its time, the fused and unfused builds
giving the same losses, the numbers in bench.json agreeing with the runs' own metrics and
with the FLOP formula, and clear errors for a bad file and a failing binary.

usage: test_bench.py POC SCRATCH_DIR   (run from the repository root)"""
import json
import os
import shutil
import subprocess
import sys

sys.dont_write_bytecode = True
sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
from pycheck import check, finish  # noqa: E402

STAGES = ["forward", "head", "objective", "backward", "optimizer", "comm", "other"]


def flops_per_token(cfg, head_rows, attn_pairs):
    """docs/language.md § poc bench: 6·P + 6·H·V·r_head + 12·L·qd·r_attn."""
    h, layers, f, v = cfg["hidden_size"], cfg["num_hidden_layers"], cfg["intermediate_size"], cfg["vocab_size"]
    hd = cfg.get("head_dim") or h // cfg["num_attention_heads"]
    qd, kvd = cfg["num_attention_heads"] * hd, cfg["num_key_value_heads"] * hd
    p = layers * (2 * h * qd + 2 * h * kvd + 3 * h * f)
    return 6 * p + 6 * h * v * head_rows + 12 * layers * qd * attn_pairs


def main():
    poc, scratch = os.path.abspath(sys.argv[1]), sys.argv[2]
    shutil.rmtree(scratch, ignore_errors=True)
    os.makedirs(scratch)
    out = os.path.join(scratch, "dpo")
    steps = 3
    p = subprocess.run([poc, "bench", "examples/dpo.po", "--steps", str(steps), "--out", out],
                       capture_output=True, text=True)
    if not check(p.returncode == 0, f"poc bench exit {p.returncode}:\n{p.stdout}\n{p.stderr}"):
        return finish("bench_poc")
    print(p.stdout)
    check("| fused |" in p.stdout and "| unfused |" in p.stdout, "the table has both rows")
    j = json.load(open(os.path.join(out, "bench.json")))
    md = open(os.path.join(out, "bench.md")).read()
    check(md.strip() in p.stdout, "bench.md is the printed table")
    cfg = json.load(open("examples/tiny/config.json"))
    peak = j["peak"]["gflops"]
    check(peak > 0, f"a positive GEMM peak ({peak})")
    check(not j["peak"]["cached"], "the first run measures the peak")
    check(set(j["variants"]) == {"fused", "unfused"}, f"both variants: {list(j['variants'])}")
    for name, v in j["variants"].items():
        check(v["tokens_per_s"] > 0, f"{name}: tokens/s {v['tokens_per_s']}")
        check(v["peak_rss_mib"] > 1 and v["device_peak_mib"] > 0,
              f"{name}: peak memory {v['peak_rss_mib']} / {v['device_peak_mib']} MiB")
        split = v["split_s"]
        check(set(split) == set(STAGES), f"{name}: stages {sorted(split)}")
        named = sum(split[s] for s in STAGES if s != "other")
        check(abs(named - v["step_s"]) <= 0.15 * v["step_s"],
              f"{name}: forward+objective+backward+optimizer+comm = {named:.5f} s against a "
              f"step of {v['step_s']:.5f} s (more than 15% apart)")
        check(all(split[s] > 0 for s in ("forward", "head", "backward", "optimizer")),
              f"{name}: forward, head, backward and optimizer take time: {split}")
        check(split["comm"] == 0, f"{name}: a single process has no communication ({split['comm']})")
        # the runs' own metrics: the medians bench.json reports come from them
        run = os.path.join(out, f"run-{name}-0", "metrics.jsonl")
        rows = [json.loads(l) for l in open(run) if l.strip()]
        rows = [r for r in rows if "tokens_per_s" in r]
        check(len(rows) == steps, f"{name}: {len(rows)} logged steps, wanted {steps}")
        for r in rows:
            parts = sum(r["time/" + s] for s in STAGES)
            check(abs(parts - r["time/step"]) <= 1e-6 + 1e-3 * r["time/step"],
                  f"{name} step {r['step']}: the stages sum to {parts}, the step took {r['time/step']}")
        check(not any(os.path.exists(os.path.join(out, f"run-{name}-0", f"ckpt-{s}"))
                      for s in range(1, steps + 1)), f"{name}: --no-checkpoint wrote none")
        f = flops_per_token(cfg, v["head_rows_per_token"], v["attn_pairs_per_token"])
        check(abs(f - v["flops_per_token"]) <= 1e-6 * f, f"{name}: FLOPs/token {v['flops_per_token']} vs {f}")
        mfu = v["tokens_per_s"] * f / (peak * 1e9)
        check(abs(mfu - v["mfu"]) <= 1e-6 * mfu and 0 < mfu < 1, f"{name}: MFU {v['mfu']} vs {mfu}")
        check(0 < v["head_rows_per_token"] < 1, f"{name}: head rows per token {v['head_rows_per_token']}")
    fu, un = j["variants"]["fused"], j["variants"]["unfused"]
    check(open(os.path.join(out, "fused"), "rb").read() != open(os.path.join(out, "unfused"), "rb").read(),
          "the fused and unfused binaries differ")
    check(len(fu["loss"]) == steps and len(un["loss"]) == steps, "every step's loss is kept")
    check(len(set(fu["loss"])) > 1, f"the loss moves over the steps: {fu['loss']}")
    for a, b in zip(fu["loss"], un["loss"]):
        check(abs(a - b) <= 1e-5 * max(1, abs(a)), f"fused loss {a} vs unfused {b}")
    check(j["loss_max_rel_gap"] <= 1e-5 and j["loss_steps_compared"] == steps,
          f"the reported loss gap {j['loss_max_rel_gap']} over {j['loss_steps_compared']} steps")

    # a second bench in the same place reuses the peak; a failing binary is named with
    # the end of its stderr
    p = subprocess.run([poc, "bench", "examples/dpo.po", "--steps", "2", "--rounds", "1",
                        "--out", out, "--set", "nosuch=1"], capture_output=True, text=True)
    check(p.returncode == 1, f"a failing binary: exit {p.returncode}")
    check("the fused binary failed" in p.stderr and "unknown knob 'nosuch'" in p.stderr,
          f"the failure and its cause are shown:\n{p.stderr}")
    check("cached" in p.stdout, f"the peak comes from peak.json the second time:\n{p.stdout}")

    bad = os.path.join(scratch, "bad.po")
    open(bad, "w").write('policy = model("examples/tiny")\nloss = 1 +\n')
    p = subprocess.run([poc, "bench", bad, "--out", os.path.join(scratch, "bad")],
                       capture_output=True, text=True)
    check(p.returncode == 2 and f"{bad}:2:" in p.stderr, f"a bad file: exit {p.returncode}, {p.stderr}")
    p = subprocess.run([poc, "bench", "examples/dpo.po", "--backend", "tpu"], capture_output=True, text=True)
    check(p.returncode == 2 and "unknown backend 'tpu'" in p.stderr, f"a bad backend: {p.stderr}")
    return finish("bench_poc")


if __name__ == "__main__":
    sys.exit(main())
