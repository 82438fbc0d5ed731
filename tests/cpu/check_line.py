#!/usr/bin/env python3
"""The device line of real runs — a training binary built from examples/dpo.po (1 step)
and `poc logp` on the bundled model — names kernels consistent with this machine's
/proc/cpuinfo flags, or, when OPENBLAS_CORETYPE is preset, the kernels it names and that
the user set them. Then the settings: POC_CPU_KERNELS=blas, a forced core (a restart of
the same process with the same arguments), a name OpenBLAS lacks, and the marker that
stops a second restart.

usage: check_line.py --poc BUILD/poc --root REPO --scratch DIR
"""
import argparse
import os
import re
import shutil
import subprocess
import sys

LINE = re.compile(r"^cpu: OpenBLAS (\d+)\.(\d+)\.(\d+), (\S+) kernels \((.*)\), (\d+) threads?, (.*)$")
RANK = {"prescott": 1, "core2": 2, "nehalem": 3, "sandybridge": 4, "haswell": 5, "zen": 5,
        "skylakex": 6, "cooperlake": 7, "sapphirerapids": 8}
failed = passed = 0


def check(cond, what):
    global failed, passed
    if cond:
        passed += 1
    else:
        failed += 1
        print("FAIL:", what)


def flags():
    for line in open("/proc/cpuinfo"):
        if line.startswith("flags"):
            return set(line.split(":", 1)[1].split())
    return set()


def expected(f, version):
    """The strongest OpenBLAS core these flags allow (an independent reading of the rule)."""
    if {"avx512f", "avx512dq", "avx512bw", "avx512vl", "avx2", "fma"} <= f:
        if {"avx512_bf16", "amx_tile", "amx_bf16"} <= f and version >= (0, 3, 22):
            return "sapphirerapids"
        return "cooperlake" if "avx512_bf16" in f else "skylakex"
    if {"avx2", "fma"} <= f:
        return "haswell"
    if "avx" in f:
        return "sandybridge"
    if "sse4_2" in f:
        return "nehalem"
    return "core2" if "ssse3" in f else "prescott"


def device(stderr):
    lines = stderr.splitlines()
    i = next((k for k, l in enumerate(lines) if l.startswith("cpu: OpenBLAS")), None)
    if i is None:
        return None, None, ""
    warn = lines[i + 1] if i + 1 < len(lines) and lines[i + 1].startswith("cpu: warning: ") else ""
    return lines[i], LINE.match(lines[i]), warn


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--poc", required=True)
    ap.add_argument("--root", required=True)
    ap.add_argument("--scratch", required=True)
    a = ap.parse_args()
    shutil.rmtree(a.scratch, ignore_errors=True)
    os.makedirs(a.scratch)
    env = {k: v for k, v in os.environ.items() if k not in ("POC_CPU_KERNELS", "POC_CPU_KERNELS_SET")}
    f = flags()

    # a real training run of the embedded default, one step, on the first lines of its
    # data and held-out prompts (the whole sets would only make the test slower)
    text = open(os.path.join(a.root, "examples", "dpo.po")).read()
    for src, n in (("examples/data/pairs.jsonl", 32), ("examples/data/eval.jsonl", 8)):
        dst = os.path.join(a.scratch, os.path.basename(src))
        with open(os.path.join(a.root, src)) as fi, open(dst, "w") as fo:
            fo.writelines(fi.readlines()[:n])
        text = text.replace(f'"{src}"', f'"{dst}"')
    po = os.path.join(a.scratch, "dpo.po")
    open(po, "w").write(text)
    binary = os.path.join(a.scratch, "dpo")
    p = subprocess.run([a.poc, "build", po, "-o", binary], cwd=a.root, env=env,
                       capture_output=True, text=True)
    check(p.returncode == 0, f"poc build: {p.stderr}")
    p = subprocess.run([binary, "--steps", "1", "--out", os.path.join(a.scratch, "run")], cwd=a.root,
                       env=env, capture_output=True, text=True, timeout=300)
    check(p.returncode == 0, f"training run: exit {p.returncode}: {p.stderr[-2000:]}")
    first = (p.stderr.splitlines() or [""])[0]
    line, m, warn = device(p.stderr)
    check(line == first, f"the device line is the run's first line: {first!r}")
    check(m is not None, f"device line format: {line!r}")
    if not m:
        return 1
    print(line)
    version = tuple(int(x) for x in m.group(1, 2, 3))
    kernels, why, feats = m.group(4).lower(), m.group(5), m.group(7).split()
    check(int(m.group(6)) >= 1, f"threads: {line}")
    for flag in ("avx2", "fma", "avx512f", "avx512_bf16"):
        check((flag in feats) == (flag in f), f"feature {flag}: line says {feats}, cpuinfo {flag in f}")
    user = env.get("OPENBLAS_CORETYPE")
    best = expected(f, version)
    if user:
        check(f"OPENBLAS_CORETYPE={user}, set by the user" in why, f"user's setting reported: {line}")
        check(kernels == user.lower(), f"kernels {kernels} are the user's {user}")
    else:
        check(kernels in RANK and (RANK[kernels] == RANK[best] or warn),
              f"kernels {kernels} for flags allowing {best}, and no warning: {line} {warn}")
        check("OpenBLAS's choice" in why or "corrected from" in why, f"source: {line}")
    allows = re.search(r"the features allow (\S+)", why)
    if allows:
        check(allows.group(1).lower() == best, f"'features allow' names {best}: {line}")

    # poc logp prints the same line on stderr
    pairs = os.path.join(a.scratch, "pairs.jsonl")
    with open(os.path.join(a.root, "examples/data/pairs.jsonl")) as src, open(pairs, "w") as dst:
        dst.writelines(src.readlines()[:3])

    def logp(extra):
        e = dict(env)
        e.update(extra)
        return subprocess.run([a.poc, "logp", "examples/tiny", pairs], cwd=a.root, env=e,
                              capture_output=True, text=True, timeout=120)

    p = logp({})
    check(p.returncode == 0 and len(p.stdout.splitlines()) == 3, f"logp: {p.stderr}")
    check(device(p.stderr)[0] == line, f"logp's device line {device(p.stderr)[0]!r} == run's {line!r}")
    base = p.stdout

    p = logp({"POC_CPU_KERNELS": "blas"})
    l2, m2, _ = device(p.stderr)
    check(p.returncode == 0 and m2 and "POC_CPU_KERNELS=blas, set by the user" in m2.group(5),
          f"POC_CPU_KERNELS=blas: {l2!r}")

    if "avx" in f:
        # a forced weaker core: the driver restarts itself with OPENBLAS_CORETYPE set, with
        # the same arguments (logp still reads its files) and the same log-probs to 1e-5
        p = logp({"POC_CPU_KERNELS": "Sandybridge"})
        l3, m3, w3 = device(p.stderr)
        check(p.returncode == 0 and len(p.stdout.splitlines()) == 3, f"forced core: {p.stderr}")
        check(m3 and m3.group(4) == "Sandybridge" and "POC_CPU_KERNELS=Sandybridge" in m3.group(5)
              and not w3, f"forced core restarts onto it: {l3!r} {w3!r}")
        nums = lambda s: [float(x) for x in re.findall(r"-?\d+\.\d+(?:e-?\d+)?", s)]
        check(all(abs(x - y) <= 1e-5 * max(1, abs(x)) for x, y in zip(nums(base), nums(p.stdout))),
              "forced core: same log-probs")
        # the marker is set: no second restart, a warning instead of a loop
        p = logp({"POC_CPU_KERNELS": "Sandybridge", "POC_CPU_KERNELS_SET": "Nehalem:Prescott"})
        l4, m4, w4 = device(p.stderr)
        check(p.returncode == 0 and m4 and m4.group(4) != "Sandybridge" and "did not take" in w4,
              f"marker stops a restart: {l4!r} {w4!r}")

    p = logp({"POC_CPU_KERNELS": "NoSuchCore"})
    l5, m5, w5 = device(p.stderr)
    check(p.returncode == 0 and m5 and "POC_CPU_KERNELS=NoSuchCore" in w5, f"unknown name: {w5!r}")

    print(f"cpu_line: {passed} passed, {failed} failed")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
