#!/usr/bin/env bash
# Builds the wheel, installs it into a scratch virtual environment that reuses the pinned torch
# and the other dependencies of .venv, and runs the demo from outside the repository: the
# installed package must find its own data (the protocol's texts) and libraries.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
PY="$ROOT/.venv/bin/python"
WORK="$(mktemp -d)"
trap 'rm -rf "$WORK"' EXIT
echo "==> wheel"
export CCACHE_BASEDIR="$ROOT" CCACHE_NOHASHDIR=1
# The same build folder and options as the editable install: only the packaging step runs.
"$PY" -m pip wheel -q --disable-pip-version-check --no-build-isolation --no-deps -w "$WORK/dist" . \
  -Ccmake.define.SYMPRUNE_BUILD_TESTS=ON
python3 -m venv "$WORK/venv"
SITE="$("$WORK/venv/bin/python" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')"
# The dependencies come from .venv (appended to sys.path, after the scratch venv's own packages).
"$PY" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])' > "$SITE/dependencies.pth"
"$WORK/venv/bin/python" -m pip install -q --disable-pip-version-check --no-deps "$WORK"/dist/symprune-*.whl
cd "$WORK"
"$WORK/venv/bin/python" - <<'PY'
import symprune, symprune.data as d
from pathlib import Path
assert "site-packages" in symprune.__file__ and "/.venv/" not in symprune.__file__, symprune.__file__
for name in (d.CALIBRATION_FILE, d.EVALUATION_FILE):
    path = d.protocol_text(name)
    assert path.is_relative_to(Path(symprune.__file__).parent), path
    assert len(d.read_text(path)) > 100_000, path
print("installed at", Path(symprune.__file__).parent)
PY
echo "==> demo from the installed wheel"
env -u SYMPRUNE_DATA SYMPRUNE_CACHE="$ROOT/.cache" "$WORK/venv/bin/symprune" demo --quiet \
  --nsamples 4 --seqlen 128 --nwindows 2 --eval-seqlen 128
