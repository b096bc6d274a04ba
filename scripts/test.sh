#!/usr/bin/env bash
# Sets up (if needed) and runs every test: the C++ core's GTest suite, then pytest.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
bash scripts/setup.sh
echo "==> C++ tests (ctest)"
ctest --test-dir build/py --output-on-failure -j2
echo "==> Python tests (pytest)"
.venv/bin/python -m pytest -q "$@"
