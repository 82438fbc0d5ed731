#!/bin/sh
# reproduce.sh — runs the seed papers' claims on the embedded task and writes
# docs/reproductions.md with its tables, verdicts and figures (docs/figures/*.svg).
#
#   tools/reproduce.sh            the full set (about 15 minutes on two cores)
#   tools/reproduce.sh --quick    short runs and one seed: checks the script, not the claims
#
# Builds poc first when build/poc is missing. Runs go to runs/reproduce/ (remade each
# time); every training run is single-threaded and the runs go one at a time, so the
# step-time comparisons see the same machine. Other options: tools/reproduce.py --help.
set -eu
cd "$(dirname "$0")/.."
if [ ! -x build/poc ]; then
  cmake -S . -B build -G Ninja -DCMAKE_BUILD_TYPE=Release >/dev/null
  cmake --build build --target poc
fi
python3 -c "import matplotlib" 2>/dev/null || {
  echo "reproduce.sh: the figures need matplotlib (python3 -m pip install matplotlib)" >&2
  exit 2
}
exec python3 tools/reproduce.py "$@"
