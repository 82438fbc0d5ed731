#!/usr/bin/env python3
"""The reward-model chain on the embedded task: a reward model feeds the objectives that
read reward-model scores (RAO's `field reward`, CoPO's `field chosen_scores[chosen]`).

  1. train a reward model: examples/reward.po (Bradley–Terry on examples/data/pairs.jsonl)
     and measure how often it ranks a pair right (`poc score` on the pairs)
  2. sample completions of training prompts from the tiny SFT model (`poc generate`,
     temperature 1; 8 for each of 500 prompts by default) and mark which are right
  3. score them with the reward model (`poc score --field reward`); RAO regresses on
     rewards in [0, 1] like the shipped points, so each score s becomes σ(s)
  4. train RAO (examples/rao.po) on the scored points
  5. score the preference pairs token by token (`poc score --per-token`): chosen token t gets
     the reward of the prompt ⊕ the chosen response up to t, CoPO's quality weight
     (examples/copo.po keeps the chosen tokens scored above their response's mean)
  6. train CoPO on the pairs with those weights

and reports the task's exact-match accuracy (500 held-out prompts, greedy) before and
after RAO and CoPO, next to what the shipped, hand-made scores give when --baseline is set.
Everything goes under --work (default: a fresh temporary folder, kept); the report is
printed and written to WORK/report.json. About a minute on two cores.

usage: tools/chain.py [--poc build/poc] [--work DIR] [--prompts N] [--samples K] [--baseline]
"""
import argparse
import json
import math
import os
import random
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def sh(cmd, **kw):
    r = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, **kw)
    if r.returncode:
        sys.exit(f"chain: {' '.join(cmd)} failed (exit {r.returncode}):\n{r.stderr[-3000:]}")
    return r.stdout


def read_jsonl(path):
    with open(path) as f:
        return [json.loads(line) for line in f if line.strip()]


def write_jsonl(path, recs):
    with open(path, "w") as f:
        for r in recs:
            f.write(json.dumps(r) + "\n")


def train(poc, po_text, name, work, data_from, data_to):
    """Runs a copy of an example whose data path points at data_to; returns the run's
    folder, its eval/accuracy before and after, and its wall time."""
    po = os.path.join(work, f"{name}.po")
    with open(po, "w") as f:
        f.write(po_text.replace(f'"{data_from}"', json.dumps(data_to)))
    out = os.path.join(work, name)
    t0 = time.time()
    sh([poc, "run", po, "--out", out])
    acc = [m["eval/accuracy"] for m in read_jsonl(os.path.join(out, "metrics.jsonl"))
           if "eval/accuracy" in m]
    return out, acc[0] if acc else None, acc[-1] if acc else None, time.time() - t0


def latest_ckpt(run):
    cks = [d for d in os.listdir(run) if d.startswith("ckpt-")]
    return os.path.join(run, max(cks, key=lambda d: int(d.split("-")[1])))


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--poc", default=os.path.join(ROOT, "build", "poc"))
    ap.add_argument("--work", default=None)
    ap.add_argument("--prompts", type=int, default=500, help="training prompts to sample for")
    ap.add_argument("--samples", type=int, default=8, help="completions per prompt")
    ap.add_argument("--baseline", action="store_true",
                    help="also train RAO and CoPO on the shipped scores, for comparison")
    a = ap.parse_args()
    poc = os.path.abspath(a.poc)
    work = os.path.abspath(a.work or tempfile.mkdtemp(prefix="poc-chain-"))
    os.makedirs(work, exist_ok=True)
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    ex = lambda p: open(os.path.join(ROOT, "examples", p)).read()  # noqa: E731
    report = {"work": work}
    t_all = time.time()

    # 1. the reward model
    print("chain: 1/6 training the reward model (examples/reward.po)", flush=True)
    rm_run, _, _, t = train(poc, ex("reward.po"), "reward", work, "examples/data/pairs.jsonl",
                            os.path.join(ROOT, "examples", "data", "pairs.jsonl"))
    rm = latest_ckpt(rm_run)
    scored_pairs = os.path.join(work, "pairs_scored.jsonl")
    sh([poc, "score", rm, "examples/data/pairs.jsonl", "--out", scored_pairs])
    pairs = read_jsonl(scored_pairs)
    report["reward_model"] = {
        "checkpoint": rm, "seconds": round(t, 1),
        "pair_accuracy": sum(p["reward_chosen"] > p["reward_rejected"] for p in pairs) / len(pairs)}

    # 2. completions from the SFT model, marked right or wrong by the task's rule
    print(f"chain: 2/6 sampling {a.samples} completions of {a.prompts} training prompts", flush=True)
    seen, prompts = set(), []
    for p in pairs:
        key = tuple(p["prompt"])
        if key not in seen:
            seen.add(key)
            prompts.append((p["prompt"], p["chosen"]))
    random.Random(1).shuffle(prompts)
    prompts = prompts[:a.prompts]
    samples = []
    for i, (prompt, right) in enumerate(prompts):
        for k in range(a.samples):
            out = json.loads(sh([poc, "generate", "examples/tiny", "--prompt-ids",
                                 ",".join(map(str, prompt)), "--tokens", "8", "--temperature",
                                 "1.0", "--seed", str(1000 * i + k), "--backend", "cpu"]))
            if out["tokens"]:
                samples.append({"prompt": prompt, "response": out["tokens"],
                                "right": out["tokens"] == right})
    samples_path = os.path.join(work, "samples.jsonl")
    write_jsonl(samples_path, samples)

    # 3. their rewards, as RAO's points
    print(f"chain: 3/6 scoring {len(samples)} completions (poc score)", flush=True)
    scored = os.path.join(work, "samples_scored.jsonl")
    sh([poc, "score", rm, samples_path, "--field", "score", "--out", scored])
    pts = read_jsonl(scored)
    right = [p["score"] for p in pts if p["right"]]
    wrong = [p["score"] for p in pts if not p["right"]]
    # how often a right completion outscores a wrong one of the same prompt
    by_prompt = {}
    for p in pts:
        by_prompt.setdefault(tuple(p["prompt"]), []).append(p)
    wins = ties = n = 0
    for group in by_prompt.values():
        for x in group:
            for y in group:
                if x["right"] and not y["right"]:
                    n += 1
                    wins += x["score"] > y["score"]
                    ties += x["score"] == y["score"]
    report["samples"] = {
        "completions": len(pts), "right": len(right),
        "mean_score_right": sum(right) / len(right) if right else None,
        "mean_score_wrong": sum(wrong) / len(wrong) if wrong else None,
        "right_outscores_wrong": (wins + 0.5 * ties) / n if n else None}
    rao_points = os.path.join(work, "rao_points.jsonl")
    write_jsonl(rao_points, [{"prompt": p["prompt"], "response": p["response"],
                              "reward": 1 / (1 + math.exp(-p["score"]))} for p in pts])

    # 4. RAO on the scored points
    print("chain: 4/6 training RAO on the scored completions (examples/rao.po)", flush=True)
    _, b, e, t = train(poc, ex("rao.po"), "rao", work, "examples/data/points.jsonl", rao_points)
    report["rao"] = {"accuracy_before": b, "accuracy_after": e, "seconds": round(t, 1)}

    # 5. per-token quality weights for CoPO
    print("chain: 5/6 scoring the pairs token by token (poc score --per-token)", flush=True)
    tok = os.path.join(work, "pairs_tokens.jsonl")
    sh([poc, "score", rm, "examples/data/pairs.jsonl", "--per-token", "--field", "q", "--out", tok])
    copo_pairs = os.path.join(work, "copo_pairs.jsonl")
    recs = []
    for p in read_jsonl(tok):
        p["chosen_scores"] = p.pop("q_chosen")
        p.pop("q_rejected", None)
        recs.append(p)
    write_jsonl(copo_pairs, recs)

    # 6. CoPO with them
    print("chain: 6/6 training CoPO with the reward model's token weights (examples/copo.po)",
          flush=True)
    _, b, e, t = train(poc, ex("copo.po"), "copo", work, "examples/data/pairs.jsonl", copo_pairs)
    report["copo"] = {"accuracy_before": b, "accuracy_after": e, "seconds": round(t, 1)}

    if a.baseline:
        print("chain: baselines on the shipped scores", flush=True)
        for name, po, data in (("rao", "rao.po", "examples/data/points.jsonl"),
                               ("copo", "copo.po", "examples/data/pairs.jsonl")):
            _, b, e, t = train(poc, ex(po), f"{name}_shipped", work, data,
                               os.path.join(ROOT, data))
            report[f"{name}_shipped_scores"] = {"accuracy_before": b, "accuracy_after": e,
                                                "seconds": round(t, 1)}
    report["seconds"] = round(time.time() - t_all, 1)
    with open(os.path.join(work, "report.json"), "w") as f:
        json.dump(report, f, indent=2)

    pc = lambda x: "-" if x is None else f"{100 * x:.1f}%"  # noqa: E731
    rmr, s = report["reward_model"], report["samples"]
    print(f"\nreward model: ranks {pc(rmr['pair_accuracy'])} of the training pairs right "
          f"({rmr['seconds']} s)")
    print(f"samples: {s['completions']} completions, {s['right']} right; a right completion "
          f"outscores a wrong one of the same prompt {pc(s['right_outscores_wrong'])} of the time")
    print("\n| objective | scores from | accuracy before | accuracy after | time |")
    print("|---|---|---:|---:|---:|")
    rows = [("rao.po", "the reward model (sampled points)", report["rao"]),
            ("copo.po", "the reward model (per-token)", report["copo"])]
    if a.baseline:
        rows += [("rao.po", "shipped data", report["rao_shipped_scores"]),
                 ("copo.po", "shipped data", report["copo_shipped_scores"])]
    for po, src, r in rows:
        print(f"| {po} | {src} | {pc(r['accuracy_before'])} | {pc(r['accuracy_after'])} | "
              f"{r['seconds']} s |")
    print(f"\nchain: {report['seconds']} s in all; everything is in {work}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
