#!/usr/bin/env bash
# Sets up (if needed) and runs every test: the C++ core's GTest suite, the safetensors layer
# under AddressSanitizer/UBSan with the fuzz corpus replayed, the core built and installed with
# LibTorch alone (for the C++ examples' tests), pytest, then the wheel in a scratch venv.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
bash scripts/setup.sh
echo "==> C++ tests (ctest)"
ctest --test-dir build/py --output-on-failure -j2
bash scripts/sanitize.sh
bash scripts/build-core.sh
echo "==> Python tests (pytest)"
.venv/bin/python -m pytest -q "$@"
bash scripts/test-wheel.sh
