"""The CPU's GEMM peak with the kernels in use, and the device line, for the benchmarks'
reports: MFU is measured against this peak, so a BLAS on generic kernels shows up as a
number rather than as a model that happens to be slow."""
import os
import re
import subprocess


def bench_model_path(poc):
    """bench_model next to a build's poc (BUILD/poc → BUILD/bench/model/bench_model)."""
    return os.path.join(os.path.dirname(os.path.abspath(poc)), "bench", "model", "bench_model")


def gemm_peak(bench_model, n=2048, env=None):
    """(GFLOP/s of sgemm n×n×n, best of 5; the kernels; the device line)."""
    p = subprocess.run([bench_model, "--gemm-peak", str(n)], capture_output=True, text=True,
                       env=env, check=True)
    m = re.search(r"kernels=(\S+) gflops=([0-9.]+)", p.stdout)
    device = next((l for l in p.stderr.splitlines() if l.startswith("cpu: ")), "")
    return float(m.group(2)), m.group(1), device

