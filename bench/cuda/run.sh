#!/bin/sh
# Builds poc (Release) and runs the CUDA DPO-step benchmark on a ~1B Llama shape:
# vocab 32k and 128k, fused and textbook loss head. Needs a CUDA GPU. Prints a table
# (device line, header, one row per configuration); with $OUT set it is also kept in
# $OUT/bench_cuda.txt, with every run's full output in $OUT/bench_cuda.log.
#   bench/cuda/run.sh [extra bench_cuda flags, e.g. --tokens 4096]
set -eu
root=$(cd "$(dirname "$0")/../.." && pwd)
build=${BUILD_DIR:-$root/build-bench-cuda}
cmake -S "$root" -B "$build" -G Ninja -DCMAKE_BUILD_TYPE=Release >/dev/null
cmake --build "$build" --target bench_cuda -j"$(nproc)"
dir=${OUT:-$build}
log=$dir/bench_cuda.log
table=$dir/bench_cuda.txt
: >"$log"
: >"$table"
for v in 32000 128256; do
  for head in fused unfused; do
    flag=""
    [ "$head" = unfused ] && flag=--unfused
    if "$build/bench_cuda" --vocab "$v" $flag "$@" >"$dir/run.txt" 2>&1; then
      [ -s "$table" ] || head -2 "$dir/run.txt" >>"$table"
      tail -1 "$dir/run.txt" >>"$table"
    else
      echo "vocab $v $head: failed: $(tail -1 "$dir/run.txt")" >>"$table"
    fi
    cat "$dir/run.txt" >>"$log"
  done
done
rm -f "$dir/run.txt"
cat "$table"
