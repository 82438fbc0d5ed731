#!/usr/bin/env python3
"""plot_figures: tools/plot.py draws from run directories written here, one valid PNG or
SVG per metric group with every run in the legend, and refuses bad input with exit 2 and
a message that says what is wrong.

usage: test_plot.py PLOT_PY SCRATCH"""
import json
import math
import os
import shutil
import subprocess
import sys
import xml.etree.ElementTree as ET

sys.dont_write_bytecode = True
sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
from pycheck import check, finish, need  # noqa: E402

PLOT, SCRATCH = sys.argv[1], sys.argv[2]


def run_dir(name, n, skew, torn=False):
    d = os.path.join(SCRATCH, name)
    os.makedirs(d)
    with open(os.path.join(d, "metrics.jsonl"), "w") as f:
        f.write(json.dumps({"step": 0, "epoch": 0, "eval/accuracy": 0.5}) + "\n")
        for s in range(1, n + 1):
            o = {"step": s, "epoch": s / n, "loss": math.exp(-s / 10) + skew,
                 "lr": 1e-4, "rewards/chosen": 0.01 * s, "rewards/rejected": -0.02 * s}
            if s == 3:
                o["loss"] = None  # a skipped step: cJSON writes non-finite as null
            f.write(json.dumps(o) + "\n")
        f.write(json.dumps({"step": n, "eval/accuracy": 0.9}) + "\n")
        if torn:
            f.write('{"step": %d, "loss": 0.' % (n + 1))  # a crash mid-line
    return d


def plot(*args):
    return subprocess.run([sys.executable, PLOT] + list(args), capture_output=True, text=True)


def main():
    why = need("matplotlib")
    if why:
        print("plot_figures: skipped:", why)
        return 77
    shutil.rmtree(SCRATCH, ignore_errors=True)
    os.makedirs(SCRATCH)
    a = run_dir("run_a", 30, 0.0)
    b = run_dir("run_b", 20, 0.1, torn=True)
    out = os.path.join(SCRATCH, "fig")

    # PNG: one file per group, each a PNG the image reader decodes to the figure's size
    p = plot(a, b, "--metrics", "loss,rewards/chosen+rewards/rejected,eval/accuracy",
             "--out", out, "--names", "alpha,beta")
    check(p.returncode == 0, "png run exits 0: %s" % p.stderr)
    want = ["loss.png", "rewards_chosen+rewards_rejected.png", "eval_accuracy.png"]
    for w in want:
        path = os.path.join(out, w)
        if not check(os.path.isfile(path), "%s written" % w):
            continue
        with open(path, "rb") as f:
            check(f.read(8) == b"\x89PNG\r\n\x1a\n", "%s has the PNG signature" % w)
        import matplotlib.image as mpimg
        img = mpimg.imread(path)
        check(img.ndim == 3 and img.shape[0] > 100 and img.shape[1] > 100,
              "%s decodes to an image (%s)" % (w, getattr(img, "shape", None)))
        check(float(img[..., :3].std()) > 0.01, "%s is not blank" % w)
    check(sorted(os.listdir(out)) == sorted(want), "only the asked figures: %s" % os.listdir(out))

    # SVG: well-formed XML with an <svg> root, the legend's run names and the axis label
    out_svg = os.path.join(SCRATCH, "svg")
    p = plot(a, b, "--metrics", "loss", "--out", out_svg, "--format", "svg",
             "--names", "alpha,beta")
    check(p.returncode == 0, "svg run exits 0: %s" % p.stderr)
    path = os.path.join(out_svg, "loss.svg")
    if check(os.path.isfile(path), "loss.svg written"):
        root = ET.parse(path).getroot()
        check(root.tag.endswith("svg"), "loss.svg's root is <svg>: %s" % root.tag)
        text = open(path).read()
        check("alpha" in text and "beta" in text, "both run names in the SVG's legend")
        check("step" in text, "the x axis is labelled step")
        # the same input gives the same bytes: the figures can live in a repository
        p2 = plot(a, b, "--metrics", "loss", "--out", out_svg + "2", "--format", "svg",
                  "--names", "alpha,beta")
        check(p2.returncode == 0 and open(os.path.join(out_svg + "2", "loss.svg")).read() == text,
              "svg output is deterministic")

    # default names: the directories' base names
    p = plot(a, b, "--metrics", "lr", "--out", out_svg, "--format", "svg")
    check(p.returncode == 0 and "run_a" in open(os.path.join(out_svg, "lr.svg")).read(),
          "default legend names are the run directories' names")

    # another x axis: epoch (every line of these runs has one)
    p = plot(a, "--metrics", "loss", "--x", "epoch", "--out", out_svg, "--format", "svg",
             "--prefix", "by_epoch_")
    text = open(os.path.join(out_svg, "by_epoch_loss.svg")).read() if p.returncode == 0 else ""
    check(p.returncode == 0 and ">epoch<" in text, "--x epoch labels the x axis epoch: %s"
          % p.stderr)
    p = plot(a, "--metrics", "loss", "--x", "walltime", "--out", out_svg)
    check(p.returncode == 2 and "walltime" in p.stderr, "--x with an unknown key: exit 2")

    # errors: exit 2, a message naming what is wrong, nothing drawn
    p = plot(os.path.join(SCRATCH, "absent"), "--metrics", "loss", "--out", out_svg)
    check(p.returncode == 2 and "absent" in p.stderr and "no such run directory" in p.stderr,
          "a missing run directory: exit 2 and named (%d, %s)" % (p.returncode, p.stderr))
    empty = os.path.join(SCRATCH, "empty")
    os.makedirs(empty)
    p = plot(empty, "--metrics", "loss", "--out", out_svg)
    check(p.returncode == 2 and "no metrics.jsonl" in p.stderr,
          "a directory without metrics.jsonl: exit 2 (%s)" % p.stderr)
    p = plot(a, "--metrics", "loss,rewards/nope", "--out", os.path.join(SCRATCH, "none"))
    check(p.returncode == 2 and "rewards/nope" in p.stderr and
          "rewards/chosen" in p.stderr and "grad_norm" not in p.stderr,
          "an unknown metric: exit 2, named, the available ones listed (%s)" % p.stderr)
    check(not os.path.exists(os.path.join(SCRATCH, "none")), "nothing drawn on an error")
    p = plot(a, b, "--metrics", "loss", "--names", "only_one", "--out", out_svg)
    check(p.returncode == 2 and "--names" in p.stderr, "--names count mismatch: exit 2")
    bad = os.path.join(SCRATCH, "bad")
    os.makedirs(bad)
    with open(os.path.join(bad, "metrics.jsonl"), "w") as f:
        f.write('{"step": 1, "loss": 1}\nnot json\n{"step": 2, "loss": 1}\n')
    p = plot(bad, "--metrics", "loss", "--out", out_svg)
    check(p.returncode == 2 and "metrics.jsonl:2" in p.stderr,
          "a malformed line in the middle: exit 2 with file:line (%s)" % p.stderr)
    return finish("plot_figures")


if __name__ == "__main__":
    sys.exit(main())
