#!/usr/bin/env python3
"""Runs `poc check` over the front end's corpus.

  bad/NAME.po   must exit 2 and print exactly bad/NAME.expected on stderr
  good/NAME.po  must exit 0 and print nothing

bad/lower_*.po are errors of lowering (the size limits of def expansion and of the
graph), which the front end alone does not see: --bare leaves them out.

Files are passed as relative paths from this directory, so the expected text does not
depend on where the repository lives. --update rewrites the .expected files (review
the diff before committing them). --bare runs EXE FILE instead of EXE check FILE (for
fe_check, the front end alone).
"""
import os
import subprocess
import sys


def run(exe, rel, bare):
    # The size-limit cases must stop quickly, not merely eventually: they stood for
    # inputs that ran for minutes and out of memory before the limits.
    timeout = 10 if "limit" in rel else 60
    p = subprocess.run([exe, rel] if bare else [exe, "check", rel],
                       cwd=os.path.dirname(os.path.abspath(__file__)),
                       stdout=subprocess.PIPE, stderr=subprocess.PIPE, timeout=timeout)
    return p.returncode, p.stderr.decode("utf-8", "replace")


def main():
    args = [a for a in sys.argv[1:] if not a.startswith("--")]
    update = "--update" in sys.argv
    bare = "--bare" in sys.argv
    if len(args) != 1:
        sys.exit("usage: run_corpus.py [--update] [--bare] EXE")
    exe = os.path.abspath(args[0])
    if not os.access(exe, os.X_OK):
        sys.exit(f"corpus: {exe} is not built")
    here = os.path.dirname(os.path.abspath(__file__))
    failures = 0
    count = 0
    for kind in ("good", "bad"):
        for name in sorted(os.listdir(os.path.join(here, kind))):
            if not name.endswith(".po"):
                continue
            if bare and name.startswith("lower_"):
                continue
            rel = kind + "/" + name
            count += 1
            rc, err = run(exe, rel, bare)
            if kind == "good":
                if rc != 0 or err:
                    failures += 1
                    print(f"FAIL {rel}: exit {rc}, expected 0 and no output\n{err}")
                continue
            exp_path = os.path.join(here, kind, name[:-3] + ".expected")
            if update:
                with open(exp_path, "w", encoding="utf-8", newline="") as f:
                    f.write(err)
            try:
                with open(exp_path, encoding="utf-8", newline="") as f:
                    expected = f.read()
            except FileNotFoundError:
                expected = None
            if rc != 2 or err != expected:
                failures += 1
                print(f"FAIL {rel}: exit {rc} (expected 2)")
                if expected is None:
                    print(f"  missing {exp_path}")
                else:
                    import difflib
                    sys.stdout.writelines(difflib.unified_diff(
                        expected.splitlines(True), err.splitlines(True),
                        "expected", "actual"))
    print(f"corpus: {count - failures} passed, {failures} failed")
    sys.exit(1 if failures else 0)


if __name__ == "__main__":
    main()
