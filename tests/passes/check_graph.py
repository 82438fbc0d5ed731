"""check_graph.py — the passes as poc graph and poc build show them: the pipeline's trace
names recompute and fuse, the graph has the fuse and memplan sections (groups with the
.po's names and lines, recompute and store marks, every arena's buffers with offsets and
lifetimes), --unfused gives one group per node, poc build says the peak device memory for
the train block's micro_batch and max_len, and the generated objective carries the group
names and .po lines (fused: comments; unfused: function names)."""
import argparse
import os
import re
import subprocess
import sys
import tempfile

sys.dont_write_bytecode = True
sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
import pycheck  # noqa: E402
from pycheck import check  # noqa: E402


def run(cmd, cwd):
    return subprocess.run(cmd, cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                          timeout=300)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--poc", required=True)
    ap.add_argument("--root", required=True)
    a = ap.parse_args()
    root = a.root

    r = run([a.poc, "graph", "examples/dpo.po"], root)
    out = r.stdout
    check(r.returncode == 0, f"poc graph dpo: exit {r.returncode}: {r.stderr}")
    passes = out.split("== passes", 1)[-1].split("==", 1)[0]
    check(re.search(r"^  recompute\s+\d+ nodes$", passes, re.M) and
          re.search(r"^  fuse\s+\d+ nodes$", passes, re.M), f"the trace lacks recompute/fuse:\n{passes}")
    for sec in ("== fuse", "groups: ", "recomputed in a later stage:", "stored per example:", "== memplan"):
        check(sec in out, f"poc graph lacks '{sec}'")
    check(re.search(r"^  grp\d+_chosen_r_L17 .*example .*line", out, re.M) or
          re.search(r"%4=chosen_r", out), "no group carries chosen_r (dpo.po:17)")
    check(re.search(r"^  grp\d+_\w+ +tokens +stage 0, loop 0 over 'chosen'", out, re.M),
          "no token loop over chosen")
    m = re.search(r"^peak device memory: ([0-9.]+) GiB for micro_batch 8, max_len 64 \(cpu fp32; "
                  r"cuda bf16: ([0-9.]+) GiB\)$", out, re.M)
    check(m, "poc graph: no peak line for micro_batch 8, max_len 64")
    check(re.search(r"^  policy arena, 1024 tokens: \d+ bytes \(\d+ without sharing\), \d+ buffers$", out, re.M),
          "the policy's arena is not planned for 8 examples x 2 calls x 64 tokens")
    check(re.search(r"^    layer0\.x +@ +\d+ +\d+ bytes  forward \.\. backward$", out, re.M),
          "the plan does not list layer 0's saved input with its lifetime")
    check(re.search(r"^    logp +@ +\d+ +\d+ bytes  head \.\. objective$", out, re.M) and
          re.search(r"^    dX +@ +\d+ +\d+ bytes  head backward \.\. backward$", out, re.M),
          "the head's outputs and the backward's buffers lack their lifetimes")

    # a two-stage objective: recomputed per-token values in the later stage
    r = run([a.poc, "graph", "examples/copo.po"], root)
    check(r.returncode == 0 and "(recomputed)" in r.stdout and
          re.search(r"recomputed in a later stage: %\d+", r.stdout),
          f"copo: no recomputed per-token values: {r.stderr}")

    r = run([a.poc, "graph", "examples/dpo.po", "--unfused"], root)
    check(r.returncode == 0 and "(fusion off: one per node)" in r.stdout and
          re.search(r"^  grp\d+_\w+ +node ", r.stdout, re.M), f"--unfused graph: {r.stderr}")

    with tempfile.TemporaryDirectory() as tmp:
        for mode in ("fused", "unfused"):
            d = os.path.join(tmp, mode)
            r = run([a.poc, "build", "examples/dpo.po", "--emit-c", d] + (["--unfused"] if mode == "unfused" else []), root)
            check(r.returncode == 0, f"poc build {mode}: {r.stderr}")
            check(re.search(r"^peak device memory: [0-9.]+ GiB for micro_batch 8, max_len 64", r.stdout, re.M),
                  f"poc build {mode} does not say the peak: {r.stdout}")
            if m:
                check(m.group(0) in r.stdout, "poc build and poc graph disagree on the peak")
            src = open(os.path.join(d, "kernels.c")).read()
            if mode == "fused":
                check(re.search(r"/\* grp\d+_\w+_L\d+: tokens loop 0 over 'chosen', dpo\.po:\d+", src),
                      "fused kernels.c: no group comment with its .po line")
                check("[chosen_r]" in src, "fused kernels.c: the statement for chosen_r does not carry the name")
            else:
                check(re.search(r"^static int grp\d+_chosen_r_L17\(", src, re.M),
                      "unfused kernels.c: no function named after chosen_r and its line")

        # a model folder that cannot be read: the figure is unknown, not an error
        po = os.path.join(tmp, "nomodel.po")
        with open(po, "w") as f:
            f.write('policy = model("%s")\ndata = pairs("%s")\nloss = -sum(logp(policy, chosen))\n'
                    % (os.path.join(tmp, "absent"), os.path.join(root, "examples/data/pairs.jsonl")))
        r = run([a.poc, "build", po, "--emit-c", os.path.join(tmp, "nm")], root)
        check(r.returncode == 0 and "peak device memory: unknown for micro_batch 8, max_len 512" in r.stdout
              and "model 'policy'" in r.stdout, f"unknown model: rc {r.returncode}: {r.stdout} {r.stderr}")
    return pycheck.finish("passes.graph")


if __name__ == "__main__":
    sys.exit(main())
