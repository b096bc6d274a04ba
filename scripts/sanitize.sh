#!/usr/bin/env bash
# Builds the torch-free safetensors layer with clang + AddressSanitizer/UBSan, runs its tests,
# replays the fuzz corpus and every past crash, then fuzzes for FUZZ_SECONDS (default 0).
#   scripts/sanitize.sh          # tests + replay (CI)
#   scripts/sanitize.sh 1800     # plus 30 minutes of fuzzing; new inputs go to build/sanitize/corpus
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
FUZZ_SECONDS="${1:-0}"
CXX="${SANITIZE_CXX:-$(command -v clang++ || command -v clang++-14 || true)}"
if [ -z "$CXX" ]; then
  echo "scripts/sanitize.sh needs clang (apt-get install clang libclang-rt-14-dev)" >&2
  exit 1
fi
OUT="$ROOT/build/sanitize"
mkdir -p "$OUT/corpus"
FLAGS=(-std=c++20 -g -O1 -fno-omit-frame-pointer -fsanitize=address,undefined -fno-sanitize-recover=all
       -I"$ROOT/cpp/include" -DSYMPRUNE_FUZZ_DIR="\"$ROOT/tests/fuzz\"")
SOURCES=(cpp/src/io/safetensors_header.cpp cpp/src/io/safetensors_io.cpp)

echo "==> safetensors tests under ASan/UBSan ($CXX)"
"$CXX" "${FLAGS[@]}" cpp/tests/test_safetensors.cpp "${SOURCES[@]}" -lgtest_main -lgtest -pthread \
  -o "$OUT/safetensors_tests"
"$OUT/safetensors_tests" --gtest_brief=1

echo "==> fuzz target: replaying tests/fuzz/corpus and tests/fuzz/regressions"
"$CXX" "${FLAGS[@]}" -fsanitize=fuzzer tests/fuzz/fuzz_header.cpp cpp/src/io/safetensors_header.cpp \
  -o "$OUT/fuzz_header"
"$OUT/fuzz_header" -runs=0 tests/fuzz/corpus tests/fuzz/regressions

if [ "$FUZZ_SECONDS" -gt 0 ]; then
  echo "==> fuzzing for $FUZZ_SECONDS s (crashes land in $OUT as crash-*)"
  "$OUT/fuzz_header" -max_total_time="$FUZZ_SECONDS" -max_len=4096 -print_final_stats=1 \
    -artifact_prefix="$OUT/" -dict=tests/fuzz/header.dict "$OUT/corpus" tests/fuzz/corpus
fi
