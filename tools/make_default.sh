#!/usr/bin/env bash
# Regenerates the embedded default from nothing: the addition task's data and a randomly
# initialised tiny model (tools/make_task.py), KTO's unpaired data (tools/kto_kl.py), SFT
# of that model by poc itself (examples/sft.po), and the SFT model's last checkpoint
# installed as examples/tiny.
# About two minutes on two cores.
#
# usage: tools/make_default.sh [BUILD_DIR]   (default: build, with build/poc built)
set -euo pipefail
cd "$(dirname "$0")/.."
poc="${1:-build}/poc"
if [ ! -x "$poc" ]; then
  echo "make_default.sh: $poc not found; build poc first (tools/demo.sh or cmake)" >&2
  exit 2
fi
python3 tools/make_task.py
# KTO's unpaired lines with their mismatched completions (examples/trl/kto.po)
python3 tools/kto_kl.py examples/data/pairs.jsonl --from-pairs --batch 16 --limit 512 \
  -o examples/data/kto.jsonl
run="runs/sft-default"
rm -rf "$run"
"$poc" run examples/sft.po --out "$run"
last="$(ls -d "$run"/ckpt-* | sed 's/.*ckpt-//' | sort -n | tail -1)"
python3 tools/make_task.py --sft-from "$run/ckpt-$last"
