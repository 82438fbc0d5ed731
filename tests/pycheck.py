"""pycheck.py — the tally every Python test driver keeps: check() counts a condition and
names the failure, finish() prints the closing "NAME: N passed, M failed" line (the line
CI reads) and returns the exit status."""
import json
import os
import struct
import sys

passed = 0
failed = 0


def check(cond, what, stream=None):
    global passed, failed
    if cond:
        passed += 1
    else:
        failed += 1
        print("FAIL:", what, file=stream or sys.stderr)
    return bool(cond)


def finish(name):
    print(f"{name}: {passed} passed, {failed} failed")
    return 1 if failed else 0


def need(*packages):
    """Import each package (import name, or (import name, pip name)); install the missing
    ones with pip, as tools/deps.sh does, and import again. Returns None when all import,
    else the reason one does not (the caller exits 77, ctest's skip). Set
    POC_NO_PIP=1 to forbid installing (the suite then skips)."""
    import importlib
    import os
    import subprocess
    missing = []
    for p in packages:
        mod, pip_name = (p, p) if isinstance(p, str) else p
        try:
            importlib.import_module(mod)
        except Exception:
            missing.append((mod, pip_name))
    if not missing:
        return None
    if os.environ.get("POC_NO_PIP") == "1":
        return "not importable: " + ", ".join(m for m, _ in missing) + " (POC_NO_PIP=1)"
    names = [n for _, n in missing]
    cmd = [sys.executable, "-m", "pip", "install", "--quiet", "--no-input"] + names
    if subprocess.run(cmd).returncode != 0 and \
            subprocess.run(cmd + ["--break-system-packages"]).returncode != 0:
        return "pip could not install " + ", ".join(names)
    importlib.invalidate_caches()
    for mod, _ in missing:
        try:
            importlib.import_module(mod)
        except Exception as e:  # pragma: no cover - depends on the machine
            return f"{mod} still not importable after pip install: {type(e).__name__}: {e}"
    return None


def f32_tensors(path):
    """A safetensors file's F32 tensors as name -> tuple of floats (other dtypes left out)."""
    with open(path, "rb") as f:
        n = struct.unpack("<Q", f.read(8))[0]
        head = json.loads(f.read(n))
        data = f.read()
    out = {}
    for k, v in head.items():
        if k == "__metadata__" or v["dtype"] != "F32":
            continue
        b, e = v["data_offsets"]
        out[k] = struct.unpack("<%df" % ((e - b) // 4), data[b:e])
    return out


def run_metrics(out):
    """A run directory's metrics.jsonl, one dict per line."""
    with open(os.path.join(out, "metrics.jsonl")) as f:
        return [json.loads(line) for line in f]
