#!/usr/bin/env bash
# Quick start, part one: install what is missing, build poc, and train the embedded
# default (examples/dpo.po on the tiny model and the synthetic addition task), printing
# the task accuracy before and after.
set -euo pipefail
cd "$(dirname "$0")/.."
POC_NO_PYTHON_DEPS=${POC_NO_PYTHON_DEPS:-1} tools/deps.sh
cmake -S . -B build -G Ninja -DCMAKE_BUILD_TYPE=Release >/dev/null
cmake --build build -j "$(nproc)"
exec build/poc run examples/dpo.po "$@"
