#!/usr/bin/env bash
# Installs what poc needs on Debian 12: the C toolchain, flex/bison, cJSON, OpenBLAS, oneDNN,
# OpenMP, MPI, and (for the independent checks against their peers) torch, transformers,
# TRL, peft and matplotlib.
# Safe to run again; skips what is already there. POC_NO_PYTHON_DEPS=1 skips torch.
set -euo pipefail
SUDO=""
if [ "$(id -u)" != 0 ]; then SUDO=sudo; fi
need=()
for p in build-essential cmake ninja-build git flex bison pkg-config libcjson-dev libdnnl-dev \
         libopenblas-dev libopenblas-openmp-dev libomp-dev clang python3 python3-pip \
         openmpi-bin libopenmpi-dev; do
  dpkg -s "$p" >/dev/null 2>&1 || need+=("$p")
done
if [ ${#need[@]} -gt 0 ]; then
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${need[@]}"
fi
if [ "${POC_NO_PYTHON_DEPS:-0}" != 1 ]; then
  # The peers the tests compare against: transformers' models and schedules, TRL's
  # trainers, peft's adapters; matplotlib draws tools/plot.py's figures.
  if ! python3 -c 'import torch, transformers, safetensors, numpy, trl, peft, matplotlib' 2>/dev/null; then
    pkgs=(torch transformers safetensors numpy trl peft matplotlib)
    python3 -m pip install --quiet --no-input "${pkgs[@]}" \
      || python3 -m pip install --quiet --no-input --break-system-packages "${pkgs[@]}"
  fi
fi
