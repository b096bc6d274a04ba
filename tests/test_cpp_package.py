"""The installed C++ package works for a program outside this repository."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import symprune
import torch
from conftest import folder_bytes

ROOT = Path(__file__).resolve().parents[1]
BUILD = ROOT / "build" / "py"


@pytest.fixture(scope="module")
def examples(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """cpp/examples configured and built against `cmake --install` output, outside the repo."""
    assert shutil.which("cmake"), "cmake is required (scripts/setup.sh installs it)"
    assert (BUILD / "CMakeCache.txt").exists(), "build the package first (scripts/setup.sh)"
    tmp_path = tmp_path_factory.mktemp("cpp-package")
    prefix = tmp_path / "prefix"
    subprocess.run(["cmake", "--install", str(BUILD), "--prefix", str(prefix)], check=True, capture_output=True)
    example = tmp_path / "example"
    configure = [
        "cmake", "-S", str(ROOT / "cpp" / "examples"), "-B", str(example), "-G", "Ninja",
        f"-DCMAKE_PREFIX_PATH={prefix / 'symprune'}", f"-DPython_EXECUTABLE={sys.executable}",
    ]
    subprocess.run(configure, check=True, capture_output=True)
    subprocess.run(["cmake", "--build", str(example)], check=True, capture_output=True)
    return example


def test_prune_tensor_example(examples: Path) -> None:
    run = subprocess.run([str(examples / "prune_tensor")], check=True, capture_output=True, text=True)
    found = re.search(r"kept (\d+) of (\d+); dsnot moved (\d+) weights; kept after (\d+)", run.stdout)
    assert found, run.stdout
    kept, total, moved, kept_after = map(int, found.groups())
    assert (kept, total, kept_after) == (64 * 64, 64 * 128, 64 * 64)
    assert moved > 0


def test_stream_prune_example_matches_python(examples: Path, sharded_model_dir: Path, tmp_path: Path) -> None:
    out = tmp_path / "cpp"
    run = subprocess.run([str(examples / "stream_prune"), str(sharded_model_dir), str(out), "magnitude", "2:4"],
                         capture_output=True, text=True, check=False)
    assert run.returncode == 0, run.stderr
    assert re.search(r"pruned 14 tensors .* [2-9] shards \(0 resumed\)", run.stdout), run.stdout
    symprune.prune_checkpoint(sharded_model_dir, tmp_path / "py", method="magnitude", nm="2:4", progress=False)
    assert folder_bytes(out) == folder_bytes(tmp_path / "py")

    bad = subprocess.run([str(examples / "stream_prune"), str(sharded_model_dir), str(out), "wanda", "0.5"],
                         capture_output=True, text=True, check=False)
    assert bad.returncode == 1 and "needs activation statistics" in bad.stderr
    if not torch.cuda.is_available():
        no_gpu = subprocess.run([str(examples / "stream_prune"), str(sharded_model_dir), str(tmp_path / "gpu"),
                                 "magnitude", "2:4", "--device", "cuda"], capture_output=True, text=True, check=False)
        assert no_gpu.returncode == 1 and re.search("built without CUDA|sees no CUDA GPU", no_gpu.stderr)
