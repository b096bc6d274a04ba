"""The installed C++ package works for a program outside this repository."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
BUILD = ROOT / "build" / "py"


@pytest.mark.skipif(shutil.which("cmake") is None, reason="cmake is not installed")
def test_example_builds_against_installed_package(tmp_path: Path) -> None:
    assert (BUILD / "CMakeCache.txt").exists(), "build the package first (scripts/setup.sh)"
    prefix = tmp_path / "prefix"
    subprocess.run(["cmake", "--install", str(BUILD), "--prefix", str(prefix)], check=True, capture_output=True)
    example = tmp_path / "example"
    configure = [
        "cmake", "-S", str(ROOT / "cpp" / "examples" / "prune_tensor"), "-B", str(example), "-G", "Ninja",
        f"-DCMAKE_PREFIX_PATH={prefix / 'symprune'}", f"-DPython_EXECUTABLE={sys.executable}",
    ]
    subprocess.run(configure, check=True, capture_output=True)
    subprocess.run(["cmake", "--build", str(example)], check=True, capture_output=True)
    run = subprocess.run([str(example / "prune_tensor")], check=True, capture_output=True, text=True)
    found = re.search(r"kept (\d+) of (\d+); dsnot moved (\d+) weights; kept after (\d+)", run.stdout)
    assert found, run.stdout
    kept, total, moved, kept_after = map(int, found.groups())
    assert (kept, total, kept_after) == (64 * 64, 64 * 128, 64 * 64)
    assert moved > 0
