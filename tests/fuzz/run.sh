#!/bin/sh
# run.sh — build a fuzz target with clang + libFuzzer + ASan + UBSan in its own build
# directory and fuzz it for a bounded time.
#
#   tests/fuzz/run.sh SECONDS WORKDIR [frontend|data]
#
#   frontend  any bytes through the .po front end (scanner, parser, checker);
#             seeds in tests/fuzz/corpus, dictionary po.dict
#   data      any bytes as a JSONL data file through the training runtime's reader
#             (runtime/data.c); seeds in tests/fuzz/corpus_data, dictionary data.dict
#
# The seed corpus is copied into WORKDIR/corpus, where new inputs accumulate; the
# repository is never written. Crashes, leaks, timeouts (-timeout=10) and sanitizer
# reports (-fno-sanitize-recover: any UBSan finding stops the run) land in
# WORKDIR/artifacts and make the script exit non-zero. Exits 77 (ctest: skipped) with
# the reason when clang, libFuzzer, flex, bison or cJSON's headers are missing (exit 1
# with POC_FUZZ_REQUIRED=1).
set -eu
SECS=${1:?usage: run.sh SECONDS WORKDIR [frontend|data]}
WORK=${2:?usage: run.sh SECONDS WORKDIR [frontend|data]}
TARGET=${3:-frontend}
HERE=$(cd "$(dirname "$0")" && pwd)
ROOT=$(cd "$HERE/../.." && pwd)
CC=${POC_FUZZ_CC:-clang}

# CI sets POC_FUZZ_REQUIRED=1: there a missing tool is a failure, not a quiet skip.
skip() {
  if [ "${POC_FUZZ_REQUIRED:-0}" = 1 ]; then echo "fuzz: cannot run: $*" >&2; exit 1; fi
  echo "fuzz: skipped: $*"; exit 77
}
command -v "$CC" >/dev/null 2>&1 || skip "$CC not found"

mkdir -p "$WORK/build" "$WORK/corpus" "$WORK/artifacts"
B="$WORK/build"
probe="$B/probe.c"
printf '#include <stddef.h>\n#include <stdint.h>\nint LLVMFuzzerTestOneInput(const uint8_t *d, size_t n) { (void)d; (void)n; return 0; }\n' > "$probe"
"$CC" -fsanitize=fuzzer "$probe" -o "$B/probe" >/dev/null 2>&1 ||
  skip "$CC cannot link -fsanitize=fuzzer (libFuzzer not installed)"

FLAGS="-std=c11 -g -O1 -D_POSIX_C_SOURCE=200809L -D_DEFAULT_SOURCE -fsanitize=fuzzer,address,undefined -fno-sanitize-recover=all"
case "$TARGET" in
frontend)
  command -v flex >/dev/null 2>&1 || skip "flex not found"
  command -v bison >/dev/null 2>&1 || skip "bison not found"
  flex -o "$B/lexer.c" --header-file="$B/lexer.h" "$ROOT/dsl/lexer.l"
  bison -Wall -Wno-yacc -o "$B/parser.c" --defines="$B/parser.h" "$ROOT/dsl/parser.y"
  # shellcheck disable=SC2086
  "$CC" $FLAGS -I"$ROOT/dsl" -I"$B" -Wall -Wextra -Werror "$ROOT"/dsl/*.c "$HERE/fuzz_frontend.c" \
    -Wno-unused-function -Wno-sign-compare -Wno-unused-parameter -Wno-unreachable-code \
    "$B/lexer.c" "$B/parser.c" -lm -o "$B/fuzz_frontend"
  SEEDS=corpus DICT=po.dict ;;
data)
  CJSON=$(pkg-config --cflags --libs libcjson 2>/dev/null || echo "-I/usr/include/cjson -lcjson")
  printf '#include <cJSON.h>\nint main(void) { return cJSON_Parse("1") == 0; }\n' > "$B/cjson.c"
  # shellcheck disable=SC2086
  "$CC" "$B/cjson.c" $CJSON -o "$B/cjson" >/dev/null 2>&1 || skip "cJSON's headers or library not found"
  # shellcheck disable=SC2086
  "$CC" $FLAGS -I"$ROOT/runtime" -Wall -Wextra -Werror "$HERE/fuzz_data.c" "$ROOT/runtime/data.c" \
    "$ROOT/runtime/rng.c" "$ROOT/runtime/st_read.c" $CJSON -lm -o "$B/fuzz_data"
  SEEDS=corpus_data DICT=data.dict ;;
*)
  echo "run.sh: unknown target '$TARGET' (frontend or data)" >&2
  exit 2 ;;
esac

cp "$HERE/$SEEDS"/* "$WORK/corpus/" 2>/dev/null || true
echo "fuzz: $TARGET under ASan and UBSan for $SECS s, corpus $WORK/corpus, artifacts $WORK/artifacts"
"$B/fuzz_$TARGET" -max_total_time="$SECS" -timeout=10 -rss_limit_mb=2048 -max_len=65536 \
  -dict="$HERE/$DICT" -artifact_prefix="$WORK/artifacts/" -print_final_stats=1 \
  "$WORK/corpus"
