"""SIGKILL `symprune apply` at random points, resume, and get the uninterrupted result byte for byte."""

from __future__ import annotations

import os
import random
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from conftest import folder_bytes, write_sharded_checkpoint

JOB_FILE = ".symprune-apply.json"
REPORT_FILE = "symprune_report.json"


@pytest.fixture(scope="module")
def many_shards(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """12 shards of 4 fp32 weights (1024 x 512) each, ~25 MB, with an index and a config."""
    g = torch.Generator().manual_seed(0)
    shards = []
    for shard in range(12):
        tensors = {f"model.layers.{shard}.mlp.{p}.weight": torch.randn(1024, 512, generator=g) for p in "abc"}
        tensors[f"model.layers.{shard}.norm.weight"] = torch.ones(512)
        shards.append(tensors)
    return write_sharded_checkpoint(tmp_path_factory.mktemp("many-shards"), shards)


def _apply(model: Path, out: Path, *extra: str) -> subprocess.Popen[bytes]:
    args = [sys.executable, "-m", "symprune.cli", "apply", str(model), str(out), "--method", "symmetric",
            "--sparsity", "0.6", "--quiet", *extra]
    return subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)


def _model_files(folder: Path) -> dict[str, bytes]:
    """The folder's files but the report, whose timings differ from run to run."""
    return {name: data for name, data in folder_bytes(folder).items() if name != REPORT_FILE}


def _check_visible_files(out: Path, reference: dict[str, bytes]) -> None:
    """Whatever is visible under a final name is complete: identical to the reference."""
    for path in out.iterdir():
        if path.suffix == ".safetensors":
            assert path.read_bytes() == reference[path.name], f"{path.name} is visible but incomplete"


def test_sigkill_and_resume_is_byte_identical(many_shards: Path, tmp_path: Path) -> None:
    reference_dir = tmp_path / "reference"
    assert _apply(many_shards, reference_dir).wait() == 0
    reference = _model_files(reference_dir)
    assert not (reference_dir / JOB_FILE).exists()  # a finished run leaves no job file
    out = tmp_path / "out"
    rng = random.Random(0)
    kills = 0
    for _ in range(8):
        proc = _apply(many_shards, out, "--resume")
        deadline = time.monotonic() + 60
        while not (out / JOB_FILE).exists() and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.01)  # the job file appears once planning is done and writing starts
        time.sleep(rng.uniform(0.0, 0.6))
        if proc.poll() is None:
            os.kill(proc.pid, signal.SIGKILL)
            kills += 1
        proc.wait()
        _check_visible_files(out, reference)
        if not (out / JOB_FILE).exists() and any(out.glob("*.safetensors")):
            # Finished (a kill may have come before its report): complete; start over, so that
            # every attempt has work left to interrupt.
            assert _model_files(out) == reference
            shutil.rmtree(out)
    assert kills >= 4, "the runs finished before they could be killed; make the checkpoint larger"
    final = _apply(many_shards, out, "--resume")  # resumes, or runs afresh after a finished attempt
    assert final.wait() == 0, final.stderr.read().decode() if final.stderr else ""
    assert _model_files(out) == reference and not (out / JOB_FILE).exists()
    assert not list(out.glob("*.partial"))
