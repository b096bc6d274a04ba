#!/usr/bin/env bash
# Configures, builds and installs the C++ core the way a C++ user does: with LibTorch alone
# (CMake's find_package(Python) disabled), into build/core-install. Incremental; used by the
# tests of the installed package (tests/test_cpp_package.py).
#   scripts/build-core.sh [LIBTORCH_CMAKE_PREFIX]   (default: the venv torch's share/cmake)
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
TORCH_PREFIX="${1:-$("$ROOT/.venv/bin/python" -c 'import torch; print(torch.utils.cmake_prefix_path)')}"
export CCACHE_BASEDIR="$ROOT" CCACHE_NOHASHDIR=1
echo "==> C++ core with LibTorch only ($TORCH_PREFIX)"
cmake -S . -B build/core -G Ninja -DCMAKE_BUILD_TYPE=Release -DCMAKE_PREFIX_PATH="$TORCH_PREFIX" \
  -DSYMPRUNE_BUILD_PYTHON=OFF -DCMAKE_DISABLE_FIND_PACKAGE_Python=ON \
  -DCMAKE_INSTALL_PREFIX="$ROOT/build/core-install" >/dev/null
cmake --build build/core
cmake --install build/core >/dev/null
