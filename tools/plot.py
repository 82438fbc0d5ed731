#!/usr/bin/env python3
"""plot.py — draws metrics of one or more run directories against the optimizer step.

Each run directory holds the metrics.jsonl a training binary writes (one JSON object a
line, every line with "step"). One figure per metric, or per group of metrics joined with
'+' ("rewards/chosen+rewards/rejected" draws both in one figure), every run a line named
in the legend. A line whose value is null (cJSON's spelling of a non-finite number, a
skipped step's loss) leaves a gap rather than ending the run's curve.

usage: tools/plot.py RUN_DIR... --metrics a,b+c,... [--out DIR] [--format png|svg]
                     [--names n1,n2,...] [--title T] [--smooth K] [--x KEY]

Figures are named after their metrics ('/' becomes '_'): OUT/rewards_margins.svg.
Exit 0 on success, 2 on bad input (a missing run directory, an unknown metric, a
malformed metrics line), with the reason on stderr.
"""
import argparse
import json
import math
import os
import sys


def fail(msg):
    print("plot.py: error: " + msg, file=sys.stderr)
    sys.exit(2)


def read_run(d):
    """The run's metric lines, in step order; a line cut short by a crash (no newline,
    not JSON) is where a resumed run would drop it too: ignored only as the last line."""
    path = os.path.join(d, "metrics.jsonl")
    if not os.path.isdir(d):
        fail("%s: no such run directory" % d)
    if not os.path.isfile(path):
        fail("%s: no metrics.jsonl (not a run directory, or the run wrote nothing yet)" % d)
    rows = []
    with open(path) as f:
        lines = f.read().split("\n")
    for i, line in enumerate(lines):
        if not line.strip():
            continue
        try:
            o = json.loads(line)
        except ValueError as e:
            if i == len(lines) - 1:  # torn last line, no newline after it
                break
            fail("%s:%d: not a JSON object: %s" % (path, i + 1, e))
        if not isinstance(o, dict) or not isinstance(o.get("step"), (int, float)):
            fail("%s:%d: a metrics line needs a numeric \"step\"" % (path, i + 1))
        rows.append(o)
    rows.sort(key=lambda o: o["step"])
    return rows


def series(rows, metric, x="step"):
    """(xs, values) of one metric; None (non-finite) kept as NaN so the line breaks."""
    xs, ys = [], []
    for o in rows:
        if metric not in o or not isinstance(o.get(x), (int, float)):
            continue
        v = o[metric]
        if v is None:
            v = float("nan")
        elif isinstance(v, bool) or not isinstance(v, (int, float)):
            continue
        xs.append(o[x])
        ys.append(float(v))
    return xs, ys


def smooth(ys, k):
    """Trailing mean over k points (NaNs skipped), so noisy per-batch reports are readable."""
    if k <= 1:
        return ys
    out = []
    for i in range(len(ys)):
        w = [y for y in ys[max(0, i - k + 1):i + 1] if not math.isnan(y)]
        out.append(sum(w) / len(w) if w else float("nan"))
    return out


def main(argv):
    ap = argparse.ArgumentParser(prog="plot.py", description=__doc__.split("\n")[0])
    ap.add_argument("runs", nargs="+", metavar="RUN_DIR")
    ap.add_argument("--metrics", required=True,
                    help="comma-separated; a+b draws several metrics in one figure")
    ap.add_argument("--out", default=".", help="folder for the figures (created)")
    ap.add_argument("--format", default="png", choices=["png", "svg"])
    ap.add_argument("--names", help="comma-separated legend names, one per run directory "
                    "(default: the directories' base names)")
    ap.add_argument("--title", help="a title over every figure")
    ap.add_argument("--smooth", type=int, default=1, metavar="K",
                    help="trailing mean over K logged steps (default 1: raw)")
    ap.add_argument("--x", default="step", metavar="KEY",
                    help="the x axis: step (default) or another number every line has, "
                    "such as epoch")
    ap.add_argument("--prefix", default="", help="prepended to every figure's file name")
    a = ap.parse_args(argv)

    names = [os.path.basename(os.path.normpath(d)) for d in a.runs]
    if a.names is not None:
        names = a.names.split(",")
        if len(names) != len(a.runs):
            fail("--names gives %d names for %d run directories" % (len(names), len(a.runs)))
    groups = [[m.strip() for m in g.split("+") if m.strip()]
              for g in a.metrics.split(",") if g.strip()]
    if not groups:
        fail("--metrics names no metric")
    runs = [read_run(d) for d in a.runs]
    for d, rows in zip(a.runs, runs):
        have = sorted({k for o in rows for k, v in o.items()
                       if k != "step" and (v is None or (isinstance(v, (int, float))
                                                           and not isinstance(v, bool)))})
        if a.x != "step" and a.x not in have:
            fail("%s: no '%s' for the x axis; it has: %s" % (d, a.x, ", ".join(have)))
        for g in groups:
            for m in g:
                if m not in have:
                    fail("%s: no metric '%s'; it has: %s" % (d, m, ", ".join(have) or "none"))

    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    # SVG output should be text that diffs: fonts as text, no random ids, no date
    plt.rcParams["svg.fonttype"] = "none"
    plt.rcParams["svg.hashsalt"] = "poc"
    os.makedirs(a.out, exist_ok=True)
    written = []
    for g in groups:
        fig, ax = plt.subplots(figsize=(6.4, 3.8))
        styles = ["-", "--", ":", "-."]
        for ri, (name, rows) in enumerate(zip(names, runs)):
            for mi, m in enumerate(g):
                xs, ys = series(rows, m, a.x)
                label = name if len(g) == 1 else "%s: %s" % (name, m)
                ax.plot(xs, smooth(ys, a.smooth), styles[mi % len(styles)],
                        color="C%d" % (ri % 10), label=label, linewidth=1.4,
                        marker="o" if len(xs) <= 12 else None, markersize=3)
        ax.set_xlabel(a.x)
        ax.set_ylabel(" / ".join(g) if len(g) > 1 else g[0])
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize=8)
        title = a.title or ""
        if a.smooth > 1:
            title = (title + " " if title else "") + "(mean of %d logged steps)" % a.smooth
        if title:
            ax.set_title(title, fontsize=10)
        fig.tight_layout()
        path = os.path.join(a.out, a.prefix + "+".join(g).replace("/", "_") + "." + a.format)
        meta = {"Date": None} if a.format == "svg" else {}
        fig.savefig(path, format=a.format, metadata=meta)
        plt.close(fig)
        written.append(path)
    for p in written:
        print(p)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
