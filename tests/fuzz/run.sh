#!/bin/sh
# run.sh — build the front end with clang + libFuzzer (+ ASan, UBSan) and fuzz it.
#
#   tests/fuzz/run.sh SECONDS WORKDIR
#
# The seed corpus (tests/fuzz/corpus) is copied into WORKDIR/corpus, where new inputs
# accumulate; the repository is never written. Crashes, leaks, timeouts (-timeout=10)
# and sanitizer reports land in WORKDIR/artifacts and make the script exit non-zero.
# Exits 77 (ctest: skipped) with the reason when clang, libFuzzer, flex or bison is
# missing.
set -eu
SECS=${1:?usage: run.sh SECONDS WORKDIR}
WORK=${2:?usage: run.sh SECONDS WORKDIR}
HERE=$(cd "$(dirname "$0")" && pwd)
ROOT=$(cd "$HERE/../.." && pwd)
CC=${POC_FUZZ_CC:-clang}

skip() { echo "fuzz: skipped: $*"; exit 77; }
command -v "$CC" >/dev/null 2>&1 || skip "$CC not found"
command -v flex >/dev/null 2>&1 || skip "flex not found"
command -v bison >/dev/null 2>&1 || skip "bison not found"

mkdir -p "$WORK/build" "$WORK/corpus" "$WORK/artifacts"
probe="$WORK/build/probe.c"
printf '#include <stddef.h>\n#include <stdint.h>\nint LLVMFuzzerTestOneInput(const uint8_t *d, size_t n) { (void)d; (void)n; return 0; }\n' > "$probe"
"$CC" -fsanitize=fuzzer "$probe" -o "$WORK/build/probe" >/dev/null 2>&1 ||
  skip "$CC cannot link -fsanitize=fuzzer (libFuzzer not installed)"

B="$WORK/build"
flex -o "$B/lexer.c" --header-file="$B/lexer.h" "$ROOT/dsl/lexer.l"
bison -Wall -Wno-yacc -o "$B/parser.c" --defines="$B/parser.h" "$ROOT/dsl/parser.y"
FLAGS="-std=c11 -g -O1 -D_POSIX_C_SOURCE=200809L -D_DEFAULT_SOURCE -fsanitize=fuzzer,address,undefined -fno-sanitize-recover=all -I$ROOT/dsl -I$B"
# shellcheck disable=SC2086
"$CC" $FLAGS -Wall -Wextra -Werror "$ROOT"/dsl/*.c "$HERE/fuzz_frontend.c" \
  -Wno-unused-function -Wno-sign-compare -Wno-unused-parameter -Wno-unreachable-code \
  "$B/lexer.c" "$B/parser.c" -lm -o "$B/fuzz_frontend"

cp "$HERE"/corpus/* "$WORK/corpus/" 2>/dev/null || true
echo "fuzz: running for $SECS s, corpus $WORK/corpus, artifacts $WORK/artifacts"
"$B/fuzz_frontend" -max_total_time="$SECS" -timeout=10 -rss_limit_mb=2048 -max_len=65536 \
  -dict="$HERE/po.dict" -artifact_prefix="$WORK/artifacts/" -print_final_stats=1 \
  "$WORK/corpus"
