#!/usr/bin/env python3
"""No .po text becomes code: crafted files either fail with a diagnostic, or build C in
which every string is data.

For each crafted file (tests/e2e/inject/*.po, and a copy under a file name holding a
newline and a '*'):
  - files whose first comment line says "refused" must make `poc build` exit 2 with a
    file:line:col diagnostic;
  - the others: the generated plan.c and kernels.c compile with -Wall -Wextra -Werror;
    with string literals and comments removed, the C contains no identifier the crafted
    strings carry (system, pwned, main beyond plan.c's own); plan.c's poc_program, printed
    by plan_dump.c, holds the .po source and every path byte for byte; the full binary
    links, and running it (the model path does not exist, so it stops) creates no file
    named 'pwned' anywhere under its working directory.

usage: inject_check.py --poc POC --dump plan_dump.c --include DIR --lib LIBPOCRT
                       [--cflags "..."] FILE.po ...
"""
import argparse
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import tempfile


def strip_c(text):
    """The C text with string/char literals and comments blanked."""
    out, i, n = [], 0, len(text)
    while i < n:
        c = text[i]
        if text.startswith("/*", i):
            j = text.find("*/", i + 2)
            if j < 0:
                raise ValueError("unterminated comment")
            i = j + 2
            out.append(" ")
        elif text.startswith("//", i):
            j = text.find("\n", i)
            i = n if j < 0 else j
        elif c in "\"'":
            j = i + 1
            while j < n and text[j] != c:
                if text[j] == "\n":
                    raise ValueError("newline inside a literal")
                j += 2 if text[j] == "\\" else 1
            i = j + 1
            out.append('""')
        else:
            out.append(c)
            i += 1
    return "".join(out)


def po_strings(text):
    """The string literals of a .po file, unescaped (\\" and \\\\ only)."""
    res = []
    for m in re.finditer(r'"((?:[^"\\\n]|\\.)*)"', text):
        body = m.group(1)
        # comments hold quotes too; keep strings of statements only
        line_start = text.rfind("\n", 0, m.start()) + 1
        if "#" in text[line_start:m.start()]:
            continue
        res.append(re.sub(r"\\(.)", r"\1", body))
    return res


def run(cmd, **kw):
    return subprocess.run(cmd, capture_output=True, text=True, **kw)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--poc", required=True)
    ap.add_argument("--dump", required=True)
    ap.add_argument("--include", required=True)
    ap.add_argument("--lib", required=True)
    ap.add_argument("--cflags", default="")
    ap.add_argument("files", nargs="+")
    a = ap.parse_args()
    env = dict(os.environ, ASAN_OPTIONS="detect_leaks=0")
    cc = shlex.split(os.environ.get("CC", "cc"))
    fails = []

    def fail(msg):
        print("FAIL:", msg)
        fails.append(msg)

    with tempfile.TemporaryDirectory(prefix="poc-inject-") as tmp:
        files = list(a.files)
        # a file name that must not reach a comment as it is
        odd_dir = os.path.join(tmp, "x*")
        os.mkdir(odd_dir)
        for f in a.files:
            if "refused" not in open(f).readline():
                odd = os.path.join(odd_dir, "n\nl*" + os.path.basename(f))
                shutil.copy(f, odd)
                files.append(odd)
        for k, po in enumerate(files):
            text = open(po, encoding="utf-8").read()
            shown = po.replace("\n", "\\n")
            out = os.path.join(tmp, f"gen{k}")
            r = run([a.poc, "build", po, "--emit-c", out], env=env)
            if "refused" in text.split("\n", 1)[0]:
                if r.returncode != 2 or not re.search(r":\d+:\d+: error: ", r.stderr):
                    fail(f"{shown}: expected a diagnostic and exit 2, got {r.returncode}: {r.stderr}")
                else:
                    print(f"ok: {shown} refused: {r.stderr.splitlines()[0]}")
                continue
            if r.returncode:
                fail(f"{shown}: poc build --emit-c failed: {r.stderr}")
                continue
            for name in ("plan.c", "kernels.c"):
                c_text = open(os.path.join(out, name), encoding="utf-8").read()
                try:
                    code = strip_c(c_text)
                except ValueError as e:
                    fail(f"{shown}: {name}: {e}")
                    continue
                for word in ("system", "pwned", "touch"):
                    if re.search(r"\b%s\b" % word, code):
                        fail(f"{shown}: {name}: '{word}' appears outside literals and comments")
                if name == "plan.c" and len(re.findall(r"\bmain\s*\(", code)) != 1:
                    fail(f"{shown}: plan.c defines main more than once")
                r = run(cc + ["-std=c11", "-Wall", "-Wextra", "-Werror", "-I", a.include, "-c",
                              os.path.join(out, name), "-o", os.path.join(out, name + ".o")])
                if r.returncode:
                    fail(f"{shown}: {name} does not compile:\n{r.stderr}")
            # the program's strings, as the runtime will see them
            exe = os.path.join(out, "dump")
            r = run(cc + ["-std=c11", "-I", a.include, "-Dpoc_train_main=poc_dump_main",
                          os.path.join(out, "plan.c"), os.path.join(out, "kernels.c"), a.dump, *shlex.split(a.lib),
                          "-lcjson", "-lm", "-fopenmp", "-o", exe] + shlex.split(a.cflags))
            if r.returncode:
                fail(f"{shown}: plan_dump does not link:\n{r.stderr}")
                continue
            r = run([exe], env=env)
            prog = json.loads(r.stdout)
            if prog["source"] != text:
                fail(f"{shown}: the embedded source differs from the file")
            strings = po_strings(text)
            got = [m["path"] for m in prog["models"]] + [prog.get("data_path"), prog.get("eval_path")]
            for s in strings:
                if s not in got:
                    fail(f"{shown}: the string {s!r} did not reach poc_program intact (have {got!r})")
            # the whole binary: it links, runs, stops on the missing model, creates nothing
            work = os.path.join(tmp, f"run{k}")
            os.mkdir(work)
            binary = os.path.join(out, "bin")
            r = run([a.poc, "build", po, "-o", binary], env=env)
            if r.returncode:
                fail(f"{shown}: poc build -o failed:\n{r.stderr[-2000:]}")
                continue
            r = run([binary, "--steps", "1", "--out", os.path.join(work, "out")], cwd=work, env=env)
            if r.returncode == 0:
                fail(f"{shown}: training on a model path that does not exist succeeded")
            for root, _, names in os.walk(tmp):
                if "pwned" in names:
                    fail(f"{shown}: a file named pwned appeared in {root}")
            print(f"ok: {shown}: strings stay data; the binary stopped with: "
                  f"{(r.stderr.strip().splitlines() or ['?'])[-1][:120]}")
    print(f"inject_check: {len(files)} file(s), {len(fails)} failure(s)")
    return 1 if fails else 0


if __name__ == "__main__":
    sys.exit(main())
