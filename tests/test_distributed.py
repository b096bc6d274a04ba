"""symprune under torchrun (gloo on CPU).

`apply`: the shards are split between the ranks, the folder is byte-identical to one process's, a
failure on one rank stops every rank before anything is written, and an interrupted run resumes
with another number of ranks. `prune` and `calibrate`: each rank forwards its share of the
windows, the statistics are summed over the ranks, and the result equals one process's up to
rounding (masks at least 99.9 % identical)."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import symprune
import torch
from conftest import folder_bytes
from symprune.cli import main
from test_stream import _interrupted_apply

APPLY = ["apply", "--method", "magnitude", "--sparsity", "0.5"]
REPORT = "symprune_report.json"  # records timings and the number of ranks


def _torchrun(ranks: int, *arguments: str | Path) -> subprocess.CompletedProcess[str]:
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={ranks}",
               "-m", "symprune", *map(str, arguments)]
    return subprocess.run(command, capture_output=True, text=True, timeout=300)


def _apply(ranks: int, model: Path, out: Path, *extra: str) -> subprocess.CompletedProcess[str]:
    return _torchrun(ranks, APPLY[0], model, out, *APPLY[1:], *extra)


def _written(folder: Path) -> dict[str, bytes]:
    return {name: data for name, data in folder_bytes(folder).items() if name != REPORT}


@pytest.fixture(scope="module")
def single_process(sharded_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("single") / "out"
    symprune.prune_checkpoint(sharded_model_dir, out, method="magnitude", sparsity=0.5, progress=False)
    return out


def test_two_ranks_write_the_single_process_folder(sharded_model_dir: Path, single_process: Path,
                                                   tmp_path: Path) -> None:
    out = tmp_path / "out"
    run = _apply(2, sharded_model_dir, out)
    assert run.returncode == 0, run.stderr
    assert _written(out) == _written(single_process)
    assert run.stdout.count("tensors pruned") == 1  # rank 0 speaks for the job
    report = symprune.PruneReport.from_json(out / REPORT)
    assert report.extra["ranks"] == 2 and report.extra["shards"] == 3
    assert "Traceback" not in run.stderr


def test_a_failing_rank_stops_every_rank_before_anything_is_written(sharded_model_dir: Path,
                                                                     tmp_path: Path) -> None:
    model = tmp_path / "model"
    shutil.copytree(sharded_model_dir, model)
    shard = next(p for p in sorted(model.glob("*.safetensors")) if ".layers." in str(symprune.safetensors_header(str(p))))
    weights = symprune.load_safetensors(str(shard))
    name = next(n for n, w in weights.items() if w.dim() == 2 and ".layers." in n)
    weights[name][0, 0] = float("nan")
    symprune.save_safetensors(str(shard), weights, symprune.safetensors_header(str(shard))["metadata"])
    out = tmp_path / "out"
    run = _apply(2, model, out)
    assert run.returncode != 0
    assert not out.exists()
    errors = [line for line in run.stderr.splitlines() if line.startswith("symprune apply (rank")]
    assert len(errors) == 2, run.stderr  # one line from each rank
    assert any("holds NaN or Inf" in line for line in errors)
    assert any("other rank(s) failed" in line for line in errors)
    ranks_output = run.stderr.split("torch/distributed/elastic")[0]  # before the launcher's own report
    assert "Traceback" not in ranks_output


def test_an_interrupted_run_resumes_with_another_number_of_ranks(sharded_model_dir: Path, single_process: Path,
                                                                 tmp_path: Path) -> None:
    out = tmp_path / "out"
    _interrupted_apply(sharded_model_dir, out)  # one process, stopped after its first shard
    run = _apply(4, sharded_model_dir, out, "--resume")  # 3 shards: one rank has none
    assert run.returncode == 0, run.stderr
    assert _written(out) == _written(single_process)
    assert symprune.PruneReport.from_json(out / REPORT).extra["shards_resumed"] == 1


def _weights(folder: Path) -> dict[str, torch.Tensor]:
    out: dict[str, torch.Tensor] = {}
    for shard in sorted(folder.glob("*.safetensors")):
        out.update(symprune.load_safetensors(str(shard)))
    return out


@pytest.mark.parametrize("recipe", [["--method", "wanda", "--nm", "2:4"], ["--method", "sparsegpt", "--sparsity", "0.5"]])
def test_prune_on_two_ranks_equals_one_process(recipe: list[str], tiny_model_dir: Path, text_files: tuple[Path, Path],
                                               tmp_path: Path) -> None:
    calib, evaluation = text_files
    args = ["prune", *recipe, "--calib", str(calib), "--nsamples", "8", "--seqlen", "32",
            "--eval", str(evaluation), "--nwindows", "4", "--eval-seqlen", "32", "--quiet"]
    assert main([args[0], str(tiny_model_dir), str(tmp_path / "one"), *args[1:]]) == 0
    run = _torchrun(2, args[0], tiny_model_dir, tmp_path / "two", *args[1:])
    assert run.returncode == 0, run.stderr
    one, two = _weights(tmp_path / "one"), _weights(tmp_path / "two")
    pruned = [name for name in one if ".layers." in name and one[name].dim() == 2]
    same = sum(int(((one[n] != 0) == (two[n] != 0)).sum()) for n in pruned)
    assert same >= 0.999 * sum(one[n].numel() for n in pruned)
    for name in one:
        torch.testing.assert_close(two[name], one[name], rtol=1e-4, atol=1e-6)
    reports = [symprune.PruneReport.from_json(tmp_path / d / REPORT) for d in ("one", "two")]
    assert reports[1].extra["ranks"] == 2 and reports[1].nsamples == reports[0].nsamples == 8
    assert reports[1].perplexity["pruned"] == pytest.approx(reports[0].perplexity["pruned"], rel=1e-4)


def test_calibrate_on_three_ranks_equals_one_process(tiny_model_dir: Path, text_files: tuple[Path, Path],
                                                    tmp_path: Path) -> None:
    args = ["calibrate", "--method", "wanda", "--sparsity", "0.5", "--calib", str(text_files[0]),
            "--nsamples", "8", "--seqlen", "32", "--quiet"]  # 8 windows: 3 + 3 + 2
    assert main([args[0], str(tiny_model_dir), "--out", str(tmp_path / "one.safetensors"), *args[1:]]) == 0
    run = _torchrun(3, args[0], tiny_model_dir, "--out", tmp_path / "three.safetensors", *args[1:])
    assert run.returncode == 0, run.stderr
    one = symprune.load_safetensors(str(tmp_path / "one.safetensors"))
    three = symprune.load_safetensors(str(tmp_path / "three.safetensors"))
    assert one.keys() == three.keys()
    for name in one:
        torch.testing.assert_close(three[name], one[name], rtol=1e-5, atol=1e-7)
    header = symprune.safetensors_header(str(tmp_path / "three.safetensors"))["metadata"]
    assert header["nsamples"] == "8" and header["tokens"] == symprune.safetensors_header(
        str(tmp_path / "one.safetensors"))["metadata"]["tokens"]


def test_commands_that_run_in_one_process_refuse_torchrun(monkeypatch: pytest.MonkeyPatch,
                                                          capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setenv("WORLD_SIZE", "2")
    assert main(["eval", "some-model"]) == 2
    assert "launch it without torchrun" in capsys.readouterr().err
