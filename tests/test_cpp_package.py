"""The C++ core as a C++ user gets it: configured and installed with LibTorch alone (CMake's
find_package(Python) disabled), and cpp/examples built out of tree against that install."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest
import symprune
import torch
from conftest import folder_bytes
from symprune.checkpoint import CheckpointFolder

ROOT = Path(__file__).resolve().parents[1]
INSTALL = ROOT / "build" / "core-install"


@pytest.fixture(scope="module")
def examples(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """cpp/examples configured and built against the LibTorch-only install, outside the repo."""
    assert shutil.which("cmake") and shutil.which("ninja"), "cmake and ninja are required (scripts/setup.sh)"
    subprocess.run(["bash", str(ROOT / "scripts" / "build-core.sh")], check=True, capture_output=True)
    config = INSTALL.glob("lib*/cmake/symprune/*.cmake")
    absolute = [p.name for p in config if re.search(r"/(work|root|home|tmp)/|site-packages", p.read_text())]
    assert not absolute, f"installed package config names paths of the build machine: {absolute}"
    example = tmp_path_factory.mktemp("cpp-package") / "example"
    configure = [
        "cmake", "-S", str(ROOT / "cpp" / "examples"), "-B", str(example), "-G", "Ninja",
        f"-DCMAKE_PREFIX_PATH={INSTALL};{torch.utils.cmake_prefix_path}",
        "-DCMAKE_DISABLE_FIND_PACKAGE_Python=ON",
    ]
    subprocess.run(configure, check=True, capture_output=True)
    subprocess.run(["cmake", "--build", str(example)], check=True, capture_output=True)
    return example


def test_version_header_matches_the_package() -> None:
    header = INSTALL / "include" / "symprune" / "version.h"
    if not header.exists():
        subprocess.run(["bash", str(ROOT / "scripts" / "build-core.sh")], check=True, capture_output=True)
    assert f'#define SYMPRUNE_VERSION "{symprune.__version__}"' in header.read_text()


def test_prune_tensor_example(examples: Path) -> None:
    run = subprocess.run([str(examples / "prune_tensor")], check=True, capture_output=True, text=True)
    found = re.search(r"wanda 2:4 \+ dsnot: kept (\d+) of (\d+); dsnot moved (\d+) weights", run.stdout)
    assert found, run.stdout
    kept, total, moved = map(int, found.groups())
    assert (kept, total) == (64 * 64, 64 * 128)
    assert moved > 0


def test_serve_pruned_example_equals_python(examples: Path, sharded_model_dir: Path) -> None:
    """The server pattern (load with the core's reader, prune in memory, matmul) prunes exactly
    as symprune.prune does in Python."""
    for method, pattern in [("magnitude", "2:4"), ("symmetric", "0.6")]:
        run = subprocess.run([str(examples / "serve_pruned"), str(sharded_model_dir), "", method, pattern],
                             capture_output=True, text=True, check=False)
        assert run.returncode == 0, run.stderr
        found = re.search(r"symprune (\S+); (\S+) .*; zeros (\S+); abs sum (\S+); output relative error (\S+)",
                          run.stdout)
        assert found, run.stdout
        version, name, zeros, abs_sum, error = found.groups()
        assert version == symprune.__version__
        weight = CheckpointFolder(sharded_model_dir).load([name])[name]
        nm = pattern if ":" in pattern else None
        recipe = symprune.Recipe(method, None if nm else float(pattern), nm=nm)
        pruned = symprune.prune(weight, recipe).weight
        assert float(abs_sum) == pytest.approx(float(pruned.double().abs().sum()), rel=1e-9)
        assert float(zeros) == pytest.approx(float((pruned == 0).double().mean()), abs=1e-9)
        assert 0 < float(error) < 1

    refused = subprocess.run([str(examples / "serve_pruned"), str(sharded_model_dir), "", "wanda", "0.5"],
                             capture_output=True, text=True, check=False)
    assert refused.returncode == 1 and "needs calibration statistics" in refused.stderr
    bad = subprocess.run([str(examples / "serve_pruned"), str(sharded_model_dir), "", "magnitude", "3:2"],
                         capture_output=True, text=True, check=False)
    assert bad.returncode == 1 and "1 <= n < m" in bad.stderr


def test_stream_prune_example_matches_python(examples: Path, sharded_model_dir: Path, tmp_path: Path) -> None:
    out = tmp_path / "cpp"
    run = subprocess.run([str(examples / "stream_prune"), str(sharded_model_dir), str(out), "magnitude", "2:4"],
                         capture_output=True, text=True, check=False)
    assert run.returncode == 0, run.stderr
    assert re.search(r"pruned 14 tensors .* [2-9] shards \(0 resumed\)", run.stdout), run.stdout
    symprune.prune_checkpoint(sharded_model_dir, tmp_path / "py", method="magnitude", nm="2:4", progress=False)
    python = folder_bytes(tmp_path / "py")
    assert "symprune_report.json" in python  # the Python front end's report; the engine writes none
    del python["symprune_report.json"]
    assert folder_bytes(out) == python

    bad = subprocess.run([str(examples / "stream_prune"), str(sharded_model_dir), str(out), "wanda", "0.5"],
                         capture_output=True, text=True, check=False)
    assert bad.returncode == 1 and "needs activation statistics" in bad.stderr
    if not torch.cuda.is_available():
        no_gpu = subprocess.run([str(examples / "stream_prune"), str(sharded_model_dir), str(tmp_path / "gpu"),
                                 "magnitude", "2:4", "--device", "cuda"], capture_output=True, text=True, check=False)
        assert no_gpu.returncode == 1 and re.search("built without CUDA|sees no CUDA GPU", no_gpu.stderr)
