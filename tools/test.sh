#!/usr/bin/env bash
# Quick start, part two: install what is missing (torch and transformers too, for the
# independent checks against Hugging Face), build poc, and run every test suite.
set -euo pipefail
cd "$(dirname "$0")/.."
tools/deps.sh
cmake -S . -B build -G Ninja -DCMAKE_BUILD_TYPE=Release >/dev/null
cmake --build build -j "$(nproc)"
cd build
ctest --output-on-failure -j "$(nproc)" "$@"
