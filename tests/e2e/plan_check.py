#!/usr/bin/env python3
"""What plan.c tells the runtime, for examples whose plan says something particular:
segments of cross-conditioned contexts (InSPO), slices (RAO), anchors (CoPO), hoisting of
frozen calls and --no-hoist, calls whose gradient is stopped, entropy calls (StaPO),
separability, fields, knobs and the train block with its defaults.

usage: plan_check.py --poc POC --dump plan_dump.c --include DIR --lib LIBS [--cflags ...]
                     --root REPO
"""
import argparse
import json
import os
import shlex
import subprocess
import sys
import tempfile

fails = []


def expect(what, got, want):
    if got != want:
        print(f"FAIL {what}: got {got!r}, want {want!r}")
        fails.append(what)


def seg(src, **kw):
    d = {"src": src}
    d.update(kw)
    return d


def main():
    ap = argparse.ArgumentParser()
    for k in ("poc", "dump", "include", "lib", "root"):
        ap.add_argument("--" + k, required=True)
    ap.add_argument("--cflags", default="")
    a = ap.parse_args()
    env = dict(os.environ, ASAN_OPTIONS="detect_leaks=0")
    cc = shlex.split(os.environ.get("CC", "cc"))

    def plan(name, *flags):
        out = os.path.join(tmp, name + "-".join(flags))
        r = subprocess.run([a.poc, "build", f"examples/{name}.po", "--emit-c", out, *flags],
                           cwd=a.root, capture_output=True, text=True, env=env)
        if r.returncode:
            sys.exit(f"poc build --emit-c examples/{name}.po failed:\n{r.stderr}")
        exe = os.path.join(out, "dump")
        r = subprocess.run(cc + ["-std=c11", "-I", a.include, "-Dpoc_train_main=poc_dump_main",
                                 os.path.join(out, "plan.c"), os.path.join(out, "kernels.c"), a.dump,
                                 *shlex.split(a.lib), "-lcjson", "-lm", "-fopenmp", "-o", exe]
                           + shlex.split(a.cflags), capture_output=True, text=True)
        if r.returncode:
            sys.exit(f"plan_dump for {name} does not link:\n{r.stderr}")
        return json.loads(subprocess.run([exe], capture_output=True, text=True, env=env).stdout)

    def call(p, key):
        for c in p["calls"]:
            if c["key"] == key:
                return c
        fails.append(key)
        print(f"FAIL: no call {key} in {[c['key'] for c in p['calls']]}")
        return {}

    with tempfile.TemporaryDirectory(prefix="poc-plan-") as tmp:
        p = plan("dpo")
        expect("dpo name", p["name"], "dpo")
        expect("dpo source", p["source"], open(os.path.join(a.root, "examples/dpo.po")).read())
        expect("dpo models", [(m["name"], m["path"], m["trainable"], m["frozen_of"]) for m in p["models"]],
               [("policy", "examples/tiny", 1, -1), ("ref", "examples/tiny", 0, 0)])
        expect("dpo data", (p["data_kind"], p["data_path"], p["eval_path"]),
               ("pairs", "examples/data/pairs.jsonl", "examples/data/eval.jsonl"))
        expect("dpo calls", sorted(c["key"] for c in p["calls"]),
               ["policy/chosen", "policy/rejected", "ref/chosen", "ref/rejected"])
        pc, rc = call(p, "policy/chosen"), call(p, "ref/chosen")
        expect("dpo policy call", (pc["trainable"], pc["hoisted"], pc["want_logp"], pc["want_entropy"]), (1, 0, 1, 0))
        expect("dpo ref call hoisted", (rc["trainable"], rc["hoisted"]), (0, 1))
        expect("dpo target", pc["target"], [seg("chosen")])
        expect("dpo default context", pc["context"], [seg("prompt")])
        expect("dpo knobs", p["knobs"], {"beta": 0.1})
        expect("dpo reports", p["reports"],
               ["rewards/chosen", "rewards/rejected", "rewards/margins", "rewards/accuracies",
                "logps/chosen", "logps/rejected"])
        t = p["train"]
        expect("dpo train", (t["lr"], t["schedule"], t["warmup"], t["batch"], t["micro_batch"], t["epochs"],
                             t["max_len"], t["clip"], t["precision"], t["seed"]),
               (2e-5, 0, 0.1, 16, 8, 1, 64, 1.0, 0, 1))
        expect("dpo train defaults", (t["weight_decay"], t["adam_beta1"], t["adam_beta2"], t["adam_eps"],
                                      t["log_every"], t["ckpt_every"], t["eval_every"], t["eval_tokens"], t["steps"],
                                      t["on_nonfinite"], t["ckpt_minutes"], t["order"]),
               (0, 0.9, 0.999, 1e-8, 1, 500, 0, 0, 0, 0, 10, 0))
        expect("dpo separable", p["separable"], 1)

        p = plan("dpo", "--no-hoist")
        expect("dpo --no-hoist", [c["hoisted"] for c in p["calls"]], [0, 0, 0, 0])

        p = plan("inspo")
        c = call(p, "policy/chosen|prompt,sep,rejected,sep")
        expect("inspo context", c.get("context"),
               [seg("prompt"), seg("literal", lit=[3]), seg("rejected"), seg("literal", lit=[3])])
        expect("inspo cross-conditioned policy is not hoisted", c.get("hoisted"), 0)
        expect("inspo ref hoisted", call(p, "ref/rejected").get("hoisted"), 1)
        expect("inspo weight decay", p["train"]["weight_decay"], 0.01)

        p = plan("rao")
        c = call(p, "policy/prompt[1:]|prompt[:1]")
        expect("rao slice target", c.get("target"), [seg("prompt", lo=1)])
        expect("rao slice context", c.get("context"), [seg("prompt", hi=1)])
        expect("rao sg call needs no gradient", c.get("trainable"), 0)
        expect("rao response call trains", call(p, "policy/response").get("trainable"), 1)
        expect("rao data", p["data_kind"], "points")
        expect("rao field", p["fields"], [{"name": "reward", "seq": -1}])
        expect("rao separable (batch reductions in reports)", p["separable"], 0)

        p = plan("copo")
        expect("copo anchors", [(x["name"], x["model"], x["tokens"], x["temperature"], x["top_p"], x["context"])
                                for x in p["anchors"]], [("a", 0, 8, 0.7, 0.9, [seg("prompt")])])
        c = call(p, "policy/a")
        expect("copo anchor call", (c.get("target"), c.get("trainable"), c.get("hoisted")),
               ([seg("anchor", anchor=0)], 1, 0))
        expect("copo ref on the anchor is not hoisted", call(p, "ref/a").get("hoisted"), 0)
        expect("copo field", p["fields"], [{"name": "chosen_scores", "seq": 1}])
        expect("copo separable", p["separable"], 0)

        p = plan("stapo")
        c = call(p, "policy/chosen")
        expect("stapo entropy and logp on one call", (c.get("want_logp"), c.get("want_entropy")), (1, 1))

        p = plan("dpo", "--unfused")
        expect("dpo --unfused keeps the plan", len(p["calls"]), 4)
    print(f"plan_check: {len(fails)} failure(s)")
    return 1 if fails else 0


if __name__ == "__main__":
    sys.exit(main())
