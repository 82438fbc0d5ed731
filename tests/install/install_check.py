#!/usr/bin/env python3
"""An installed poc works on its own: `cmake --install` into a temporary prefix P, which
is then moved to P2 (so nothing can refer to P, and poc must find its files relative to
its executable), and from a working directory outside the checkout P2/bin/poc builds
examples/dpo.po, the binary trains 2 steps, and `poc run` does the same through its
cache. Everything lives in one temporary directory outside the source and build trees
(poc looks for its files in the directories above its executable, so a prefix inside the
build tree could fall back on it); that directory is removed at the end.

Also: a copy of poc alone finds nothing and says so, and POC_HOME points it at P2; the
installed link description names no path of the source or build tree.

usage: install_check.py --cmake CMAKE --build BUILD --source SRC [--config CFG]
"""
import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile


def inside(path, tree):
    path, tree = os.path.realpath(path), os.path.realpath(tree)
    return os.path.commonpath([path, tree]) == tree


def steps(path):
    rows = []
    with open(path) as f:
        for line in f:
            line = line.strip()
            if line:
                r = json.loads(line)
                if "step" in r and "loss" in r:
                    rows.append(r)
    return rows


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--cmake", required=True)
    ap.add_argument("--build", required=True)
    ap.add_argument("--source", required=True)
    ap.add_argument("--config", default="")
    a = ap.parse_args()
    fails = []

    def check(ok, what):
        if not ok:
            fails.append(what)
            print("FAIL " + what)
        return ok

    def run(cmd, **kw):
        r = subprocess.run(cmd, capture_output=True, text=True, timeout=240, **kw)
        if r.returncode:
            print(f"$ {' '.join(cmd)}\n{r.stdout[-2000:]}{r.stderr[-3000:]}")
        return r

    tmp = tempfile.mkdtemp(prefix="poc-install-")
    try:
        for tree in (a.build, a.source):
            if inside(tmp, tree):
                sys.exit(f"install_check: the temporary directory {tmp} is inside {tree}; "
                         "set TMPDIR to a directory outside the source and build trees")
        p, p2 = os.path.join(tmp, "P"), os.path.join(tmp, "P2")
        cmd = [a.cmake, "--install", a.build, "--prefix", p]
        if a.config:
            cmd += ["--config", a.config]
        if not check(run(cmd).returncode == 0, "cmake --install"):
            return 1
        os.rename(p, p2)
        poc = os.path.join(p2, "bin", "poc")

        desc = open(os.path.join(p2, "lib", "poc", "link.txt")).read()
        for tree in (a.build, a.source):
            check(os.path.realpath(tree) not in desc and os.path.abspath(tree) not in desc,
                  f"the installed link.txt names {tree}")

        work = os.path.join(tmp, "work")
        # dpo.po names its model and data relative to the working directory
        shutil.copytree(os.path.join(a.source, "examples", "tiny"), os.path.join(work, "examples", "tiny"))
        shutil.copytree(os.path.join(a.source, "examples", "data"), os.path.join(work, "examples", "data"))
        shutil.copy(os.path.join(a.source, "examples", "dpo.po"), os.path.join(work, "examples"))
        env = {k: v for k, v in os.environ.items() if k not in ("POC_HOME", "POC_TEMPLATE_DIR")}
        # one thread: beside other suites under ctest -j, OpenMP threads that wait for a
        # busy core make two tiny steps take a minute
        env.update(POC_CACHE_DIR=os.path.join(tmp, "cache"), OMP_NUM_THREADS="1",
                   ASAN_OPTIONS="detect_leaks=0")

        r = run([poc, "--home"], cwd=work, env=env)
        check(r.returncode == 0 and os.path.realpath(r.stdout.strip()) == os.path.realpath(p2),
              f"poc --home says {r.stdout.strip()!r}, not the moved prefix {p2}")

        r = run([poc, "build", "examples/dpo.po", "-o", "bin"], cwd=work, env=env)
        if check(r.returncode == 0, "poc build"):
            r = run([os.path.join(work, "bin"), "--steps", "2", "--out", "runs/b"], cwd=work, env=env)
            m = os.path.join(work, "runs", "b", "metrics.jsonl")
            if check(r.returncode == 0 and os.path.exists(m), "the built binary trains"):
                check(len(steps(m)) == 2, f"the built binary logged {len(steps(m))} steps, not 2")

        r = run([poc, "run", "examples/dpo.po", "--steps", "2", "--out", "runs/x"], cwd=work, env=env)
        m = os.path.join(work, "runs", "x", "metrics.jsonl")
        if check(r.returncode == 0 and os.path.exists(m), "poc run"):
            check(len(steps(m)) == 2, f"poc run logged {len(steps(m))} steps, not 2")

        # poc alone: no installation around it, and no build tree to fall back on
        lone = os.path.join(tmp, "lone", "poc")
        os.makedirs(os.path.dirname(lone))
        shutil.copy(poc, lone)
        r = subprocess.run([lone, "build", "examples/dpo.po", "-o", "bin2"], cwd=work, env=env,
                           capture_output=True, text=True)
        check(r.returncode != 0 and "cannot find its runtime headers" in r.stderr
              and "POC_HOME" in r.stderr, f"poc without an installation: {r.returncode} {r.stderr!r}")
        r = run([lone, "--home"], cwd=work, env=dict(env, POC_HOME=p2))
        check(r.returncode == 0 and r.stdout.strip() == p2, "POC_HOME does not override")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    if fails:
        print(f"{len(fails)} failure(s)")
        return 1
    print("install: P2/bin/poc builds and runs dpo.po from outside the checkout")
    return 0


if __name__ == "__main__":
    sys.exit(main())
