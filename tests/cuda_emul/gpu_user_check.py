#!/usr/bin/env python3
"""What a GPU user meets, on the CUDA emulation: kernels built in by `poc build --arch`,
the JIT kernel cache, and kernel faults.

  arch   `poc build --arch sm_90` embeds a cubin and PTX (`BIN --kernel-images` lists
         them); on an sm_90 device a training step runs without a single
         nvrtcCompileProgram; on sm_91 the driver takes the compute_90 PTX (still no
         NVRTC); on sm_80 neither fits, and the run says so and compiles with NVRTC.
  cache  without --arch: the first run compiles and writes the cache entry, the second
         loads it (no compile), a corrupted entry is reported, recompiled and replaced,
         two concurrent runs on an empty cache both succeed, and an unusable cache
         directory is one note, not an error.
  fault  the 5th launch of attn_bwd_dq faults (step 2, layer 3 of the tiny model's
         backward): with POC_CUDA_SYNC=1 the run stops with one error line naming the
         kernel and the model stage, exit code 1, and the step-1 checkpoint resumes;
         without it, the line says POC_CUDA_SYNC=1 would name them.

The emulation counts NVRTC compiles in POC_CUDA_EMU_NVRTC_LOG, reports a chosen compute
capability with POC_CUDA_EMU_CC and injects faults with POC_CUDA_EMU_FAULT.

usage: gpu_user_check.py --poc POC --emu LIBPOC_CUEMU --root REPO --scratch DIR arch|cache|fault
"""
import argparse
import glob
import os
import shutil
import struct
import subprocess
import sys

PO = """# a DPO step on the bundled tiny model, for the CUDA emulation
policy = model("{root}/examples/tiny")
ref    = frozen(policy)
data   = pairs("{scratch}/pairs.jsonl")
param beta = 0.1
def S(m, y) = sum(logp(m, y))
loss = -logsigmoid(beta * ((S(policy, chosen) - S(ref, chosen)) - (S(policy, rejected) - S(ref, rejected))))
train {{
  lr = 1e-4; batch = 2; micro_batch = 2; epochs = 1; max_len = 32; ckpt_every = 1; seed = 1
}}
"""

fails = 0


def check(ok, what, detail=""):
    global fails
    print(("ok   " if ok else "FAIL ") + what)
    if not ok:
        fails += 1
        if detail:
            print("     " + detail.strip().replace("\n", "\n     ")[-3000:])


class Env:
    def __init__(self, a):
        self.a = a
        self.scratch = os.path.abspath(a.scratch)
        shutil.rmtree(self.scratch, ignore_errors=True)
        os.makedirs(self.scratch)
        with open(os.path.join(a.root, "examples/data/pairs.jsonl")) as f:
            lines = [l for l in f if l.strip()][:6]
        with open(os.path.join(self.scratch, "pairs.jsonl"), "w") as f:
            f.writelines(lines)
        self.po = os.path.join(self.scratch, "step.po")
        with open(self.po, "w") as f:
            f.write(PO.format(root=os.path.abspath(a.root), scratch=self.scratch))
        self.nvrtc_log = os.path.join(self.scratch, "nvrtc.log")
        self.runs = 0

    def env(self, **extra):
        e = dict(os.environ, POC_CUDA_EMULATE=self.a.emu, OMP_NUM_THREADS="2",
                 OMP_WAIT_POLICY="PASSIVE", ASAN_OPTIONS="detect_leaks=0",
                 POC_CUDA_EMU_NVRTC_LOG=self.nvrtc_log,
                 POC_CACHE_DIR=os.path.join(self.scratch, "cache"))
        for k in ("POC_CUDA_SYNC", "POC_CUDA_EMU_FAULT", "POC_CUDA_EMU_CC", "POC_KEEP_CU"):
            e.pop(k, None)
        e.update({k: str(v) for k, v in extra.items()})
        return e

    def build(self, name, *flags):
        binary = os.path.join(self.scratch, name)
        r = subprocess.run([self.a.poc, "build", self.po, "-o", binary, *flags],
                           capture_output=True, text=True, env=self.env(), timeout=900)
        check(r.returncode == 0, f"poc build {' '.join(flags)}", r.stderr)
        return binary

    def compiles(self):
        if not os.path.exists(self.nvrtc_log):
            return 0
        with open(self.nvrtc_log) as f:
            return sum(1 for l in f if l.startswith("nvrtcCompileProgram"))

    def start(self, binary, steps=1, out=None, **extra):
        self.runs += 1
        out = out or os.path.join(self.scratch, f"run{self.runs}")
        return subprocess.Popen([binary, "--backend", "cuda", "--steps", str(steps), "--out", out],
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                env=self.env(**extra))

    def run(self, binary, steps=1, out=None, **extra):
        """(exit code, stderr, NVRTC compiles during the run)"""
        before = self.compiles()
        p = self.start(binary, steps, out, **extra)
        _, err = p.communicate(timeout=900)
        return p.returncode, err, self.compiles() - before


def test_arch(e):
    binary = e.build("step-sm90", "--arch", "sm_90")
    r = subprocess.run([binary, "--kernel-images"], capture_output=True, text=True, env=e.env())
    check(r.returncode == 0 and "sm_90 cubin" in r.stdout and "compute_90 PTX" in r.stdout
          and "hidden 64" in r.stdout, "--kernel-images lists an sm_90 cubin and compute_90 PTX",
          r.stdout + r.stderr)
    compiled_by_build = e.compiles()
    check(compiled_by_build >= 1, "poc build --arch compiled the kernels with NVRTC")

    rc, err, n = e.run(binary)
    check(rc == 0, "sm_90 device: a training step runs", err)
    check(n == 0, f"sm_90 device: no nvrtcCompileProgram (got {n})", err)
    check("note" not in err, "sm_90 device: the cubin is used without a note", err)
    check(not glob.glob(os.path.join(e.scratch, "cache", "cuda", "*.cubin")),
          "sm_90 device: nothing written to the JIT cache")

    rc, err, n = e.run(binary, POC_CUDA_EMU_CC=91)
    check(rc == 0 and n == 0 and "compiles the compute_90 PTX" in err,
          "sm_91 device: the driver JIT-loads the compute_90 PTX, no NVRTC", err)

    rc, err, n = e.run(binary, POC_CUDA_EMU_CC=80)
    check(rc == 0 and n == 1 and "no cubin for sm_80" in err and "compiling them with NVRTC" in err,
          f"sm_80 device: a note, then NVRTC ({n} compiles)", err)


def valid_entry(path):
    """The cache entry's header (runtime/cuda/kcache.c) agrees with its content."""
    with open(path, "rb") as f:
        b = f.read()
    if len(b) < 32 or b[:8] != b"POCKC01\n":
        return False
    size, content = struct.unpack("<QQ", b[8:24])
    h = 0xcbf29ce484222325
    for x in b[32:]:
        h = ((h ^ x) * 0x100000001b3) & 0xFFFFFFFFFFFFFFFF
    return size == len(b) - 32 and h == content


def cache_entries(e, sub="cache"):
    return sorted(glob.glob(os.path.join(e.scratch, sub, "cuda", "*")))


def test_cache(e):
    binary = e.build("step")
    rc, err, n = e.run(binary)
    entries = cache_entries(e)
    check(rc == 0 and n == 1, f"first run compiles once ({n})", err)
    check(len(entries) == 1 and entries[0].endswith(".cubin") and "-sm_90-nvrtc" in entries[0],
          f"first run writes one entry keyed by source hash, arch and NVRTC version: {entries}")
    if not entries:
        return
    entry = entries[0]
    check(valid_entry(entry), "the entry's header matches its content")
    with open(entry, "rb") as f:
        good = f.read()

    rc, err, n = e.run(binary)
    check(rc == 0 and n == 0, f"second run loads the entry ({n} compiles)", err)

    bad = bytearray(good)
    bad[len(bad) // 2] ^= 0x55
    with open(entry, "wb") as f:
        f.write(bad)
    rc, err, n = e.run(binary)
    check(rc == 0 and n == 1 and "is damaged" in err,
          f"a corrupted entry is reported and recompiled ({n} compiles)", err)
    with open(entry, "rb") as f:
        check(f.read() != bytes(bad) and valid_entry(entry),
              "the recompiled entry replaced the corrupted one")
    with open(entry, "wb") as f:
        f.write(good[: len(good) // 3])
    rc, err, n = e.run(binary)
    check(rc == 0 and n == 1 and "is damaged" in err, "a truncated entry is recompiled too", err)

    # two runs on an empty cache at once: both compile, both rename, both succeed
    cdir = os.path.join(e.scratch, "cache2")
    ps = [e.start(binary, POC_CACHE_DIR=cdir) for _ in range(2)]
    outs = [p.communicate(timeout=900)[1] for p in ps]
    check(all(p.returncode == 0 for p in ps), "two concurrent runs both succeed", "\n".join(outs))
    entries2 = cache_entries(e, "cache2")
    check(len(entries2) == 1 and entries2[0].endswith(".cubin"),
          f"they leave one complete entry and no temporary file: {entries2}")
    check(entries2 and valid_entry(entries2[0]), "the concurrent runs' entry is intact")
    rc, err, n = e.run(binary, POC_CACHE_DIR=cdir)
    check(rc == 0 and n == 0, f"and a later run loads it ({n} compiles)", err)

    # a cache directory that cannot exist: a note, and the run goes on
    blocker = os.path.join(e.scratch, "not-a-dir")
    open(blocker, "w").close()
    rc, err, n = e.run(binary, POC_CACHE_DIR=blocker)
    check(rc == 0 and n == 1 and err.count("kernel cache") == 1 and "cannot be used" in err,
          "an unusable cache directory is one note, not an error", err)


def test_fault(e):
    binary = e.build("step")
    out = os.path.join(e.scratch, "fault-run")
    rc, err, _ = e.run(binary, steps=3, out=out, POC_CUDA_SYNC=1,
                       POC_CUDA_EMU_FAULT="attn_bwd_dq:5")
    lines = [l for l in err.splitlines() if "error" in l]
    check(rc == 1, f"a kernel fault exits 1 (got {rc})", err)
    check(len(lines) == 1 and "attn_bwd_dq" in lines[0] and "layer 3 attention backward" in lines[0]
          and "CUDA_ERROR_ILLEGAL_ADDRESS" in lines[0],
          "POC_CUDA_SYNC=1: one line naming the kernel, the driver's error and the model stage", err)
    print("     " + (lines[0] if lines else "(no error line)"))
    ck1 = os.path.join(out, "ckpt-1")
    files = ("state.json", "config.json", "model.safetensors", "optimizer.safetensors")
    check(all(os.path.exists(os.path.join(ck1, f)) for f in files), "the step-1 checkpoint is complete")
    check(not os.path.exists(os.path.join(out, "ckpt-2")), "no checkpoint of the failed step")
    # the checkpoint loads: resume it for the one step left to 2, on the CPU
    r = subprocess.run([binary, "--backend", "cpu", "--resume", out, "--steps", "2"],
                       capture_output=True, text=True, env=e.env(), timeout=600)
    check(r.returncode == 0 and os.path.exists(os.path.join(out, "ckpt-2")),
          "the step-1 checkpoint resumes", r.stderr)

    rc, err, _ = e.run(binary, steps=3, out=os.path.join(e.scratch, "fault-run2"),
                       POC_CUDA_EMU_FAULT="attn_bwd_dq:5")
    lines = [l for l in err.splitlines() if "error" in l]
    check(rc == 1 and len(lines) == 1 and "CUDA_ERROR_ILLEGAL_ADDRESS" in lines[0]
          and "POC_CUDA_SYNC=1 names the kernel" in lines[0],
          "without POC_CUDA_SYNC: one line that says how to name the kernel", err)
    print("     " + (lines[0] if lines else "(no error line)"))


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--poc", required=True)
    ap.add_argument("--emu", required=True)
    ap.add_argument("--root", required=True)
    ap.add_argument("--scratch", required=True)
    ap.add_argument("what", choices=("arch", "cache", "fault"))
    a = ap.parse_args()
    e = Env(a)
    {"arch": test_arch, "cache": test_cache, "fault": test_fault}[a.what](e)
    print(f"{a.what}: {'FAILED' if fails else 'passed'}")
    return 1 if fails else 0


if __name__ == "__main__":
    sys.exit(main())
