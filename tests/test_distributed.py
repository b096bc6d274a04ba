"""symprune under torchrun (gloo on CPU).

`apply`: the shards are split between the ranks, the folder is byte-identical to one process's, a
failure on one rank stops every rank before anything is written, a rank killed mid-run leaves a
run that resumes to the same bytes, and an interrupted run resumes with another number of ranks.
Ranks started with different arguments or files are refused up front. `prune` and `calibrate`: each rank forwards its share of the
windows, the statistics are summed over the ranks, and the result equals one process's up to
rounding (masks at least 99.9 % identical)."""

from __future__ import annotations

import json
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest
import symprune
import torch
from conftest import folder_bytes, write_sharded_checkpoint
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


@pytest.fixture(scope="module")
def many_shards(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Eight shards of two 1024 x 2048 fp32 weights each: big enough that a run takes a second."""
    generator = torch.Generator().manual_seed(0)
    return write_sharded_checkpoint(tmp_path_factory.mktemp("many-shards"), [
        {f"model.layers.{shard}.mlp.{proj}.weight": torch.randn(1024, 2048, generator=generator)
         for proj in ("up_proj", "down_proj")} for shard in range(8)])


def test_a_killed_rank_leaves_a_run_that_resumes_to_the_same_bytes(many_shards: Path, tmp_path: Path) -> None:
    """SIGKILL rank 1 once it has finished a shard: torchrun stops rank 0, the folder holds only
    finished shards and the job files, and a resume on 2 ranks writes what one process writes."""
    reference = tmp_path / "reference"
    symprune.prune_checkpoint(many_shards, reference, method="magnitude", sparsity=0.5, progress=False)
    out = tmp_path / "out"
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node=2",
               "-m", "symprune", *APPLY[:1], str(many_shards), str(out), *APPLY[1:], "--no-fsync"]
    launcher = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    rank_one_job = out / ".symprune-apply.rank-1.json"
    deadline = time.monotonic() + 120
    while not (rank_one_job.exists() and json.loads(rank_one_job.read_text())["finished"]):
        assert launcher.poll() is None and time.monotonic() < deadline, "rank 1 finished no shard"
        time.sleep(0.002)
    (rank_one,) = [p for p in psutil.Process(launcher.pid).children(recursive=True)
                   if p.environ().get("RANK") == "1" and "symprune" in " ".join(p.cmdline())]
    rank_one.send_signal(signal.SIGKILL)
    _, stderr = launcher.communicate(timeout=120)
    assert launcher.returncode != 0, stderr
    assert not (out / "model.safetensors.index.json").exists() and not (out / REPORT).exists()
    visible = sorted(out.glob("*.safetensors"))  # a shard appears only when complete
    assert visible and all(shard.read_bytes() == (reference / shard.name).read_bytes() for shard in visible)
    run = _apply(2, many_shards, out, "--resume")
    assert run.returncode == 0, run.stderr
    assert _written(out) == _written(reference)
    assert symprune.PruneReport.from_json(out / REPORT).extra["shards_resumed"] >= 1


def _driver(tmp_path: Path, arguments_by_rank: list[list[str]]) -> subprocess.CompletedProcess[str]:
    """torchrun a script that runs ``symprune.cli.main`` with each rank's own arguments, in its
    own working folder ``rankR`` (so a relative path names another file on each rank)."""
    script = tmp_path / "driver.py"
    script.write_text(
        "import json, os, sys\n"
        "from symprune.cli import main\n"
        "rank = int(os.environ['RANK'])\n"
        f"os.chdir({str(tmp_path)!r} + f'/rank{{rank}}')\n"
        f"sys.exit(main(json.loads({json.dumps(arguments_by_rank)!r})[rank]))\n")
    for rank in range(len(arguments_by_rank)):
        (tmp_path / f"rank{rank}").mkdir(exist_ok=True)
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone",
               f"--nproc-per-node={len(arguments_by_rank)}", str(script)]
    return subprocess.run(command, capture_output=True, text=True, timeout=300)


def test_ranks_given_different_recipes_or_statistics_are_refused_up_front(
        tiny_model_dir: Path, text_files: tuple[Path, Path], tmp_path: Path) -> None:
    stats = tmp_path / "rank0" / "stats.safetensors"
    stats.parent.mkdir()
    assert main(["calibrate", str(tiny_model_dir), "--out", str(stats), "--method", "wanda", "--sparsity", "0.5",
                 "--calib", str(text_files[0]), "--nsamples", "4", "--seqlen", "32", "--quiet"]) == 0
    other = tmp_path / "rank1" / "stats.safetensors"  # the same relative path, other contents
    other.parent.mkdir()
    tensors = symprune.load_safetensors(str(stats))
    symprune.save_safetensors(str(other), {name: 2 * t for name, t in tensors.items()},
                              symprune.safetensors_header(str(stats))["metadata"])
    out = tmp_path / "out"
    apply = ["apply", str(tiny_model_dir), str(out), "--stats", "stats.safetensors", "--method", "wanda"]
    cases = {"statistics files": [[*apply, "--sparsity", "0.5"]] * 2,
             "command-line arguments": [[*apply, "--sparsity", "0.5"], [*apply, "--sparsity", "0.6"]]}
    for differing, arguments_by_rank in cases.items():
        run = _driver(tmp_path, arguments_by_rank)
        assert run.returncode != 0
        errors = [line for line in run.stderr.splitlines() if line.startswith("symprune apply (rank")]
        assert len(errors) == 2 and all(f"started with different {differing}" in line for line in errors), run.stderr
        assert not out.exists()


def _weights(folder: Path) -> dict[str, torch.Tensor]:
    out: dict[str, torch.Tensor] = {}
    for shard in sorted(folder.glob("*.safetensors")):
        out.update(symprune.load_safetensors(str(shard)))
    return out


def _assert_same_up_to_rounding(one_folder: Path, two_folder: Path) -> None:
    """The same tensors; masks at least 99.9 % identical; values equal up to rounding."""
    one, two = _weights(one_folder), _weights(two_folder)
    assert one.keys() == two.keys()
    pruned = [name for name in one if ".layers." in name and one[name].dim() == 2]
    same = sum(int(((one[n] != 0) == (two[n] != 0)).sum()) for n in pruned)
    assert same >= 0.999 * sum(one[n].numel() for n in pruned)
    for name in one:
        torch.testing.assert_close(two[name], one[name], rtol=1e-4, atol=1e-6)


def prune_under_torchrun(ranks: int, recipe: list[str], model: Path, text_files: tuple[Path, Path], tmp_path: Path,
                         *extra: str) -> None:
    """`prune` on `ranks` ranks equals one process up to rounding, with the same report."""
    calib, evaluation = text_files
    args = ["prune", *recipe, "--calib", str(calib), "--nsamples", "8", "--seqlen", "32",
            "--eval", str(evaluation), "--nwindows", "4", "--eval-seqlen", "32", "--quiet", *extra]
    assert main([args[0], str(model), str(tmp_path / "one"), *args[1:]]) == 0
    run = _torchrun(ranks, args[0], model, tmp_path / "ranks", *args[1:])
    assert run.returncode == 0, run.stderr
    _assert_same_up_to_rounding(tmp_path / "one", tmp_path / "ranks")
    reports = [symprune.PruneReport.from_json(tmp_path / d / REPORT) for d in ("one", "ranks")]
    assert reports[1].extra["ranks"] == ranks and reports[1].nsamples == reports[0].nsamples == 8
    assert reports[1].perplexity["pruned"] == pytest.approx(reports[0].perplexity["pruned"], rel=1e-4)


@pytest.mark.parametrize(("ranks", "recipe"), [(2, ["--method", "wanda", "--nm", "2:4"]),
                                               (2, ["--method", "sparsegpt", "--sparsity", "0.5"]),
                                               (1, ["--method", "wanda", "--nm", "2:4"])])  # a group of one
def test_prune_under_torchrun_equals_one_process(ranks: int, recipe: list[str], tiny_model_dir: Path,
                                                 text_files: tuple[Path, Path], tmp_path: Path) -> None:
    prune_under_torchrun(ranks, recipe, tiny_model_dir, text_files, tmp_path)


@pytest.mark.parametrize("target", ["layer", "residual"])
def test_low_memory_prune_on_two_ranks_equals_one_process(target: str, tiny_model_dir: Path,
                                                           text_files: tuple[Path, Path], tmp_path: Path) -> None:
    """`prune --low-memory` with a Gram method: the ranks share the windows (the residual target's
    two streams and cross-products too), rank 0 writes."""
    args = ["prune", "--method", "sparsegpt", "--nm", "2:4", "--target", target, "--low-memory",
            "--calib", str(text_files[0]), "--nsamples", "8", "--seqlen", "32", "--quiet"]
    assert main([args[0], str(tiny_model_dir), str(tmp_path / "one"), *args[1:]]) == 0
    run = _torchrun(2, args[0], tiny_model_dir, tmp_path / "two", *args[1:])
    assert run.returncode == 0, run.stderr
    _assert_same_up_to_rounding(tmp_path / "one", tmp_path / "two")
    assert symprune.PruneReport.from_json(tmp_path / "two" / REPORT).extra["ranks"] == 2


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
    monkeypatch.setenv("RANK", "0")
    assert main(["eval", "some-model"]) == 2
    assert "launch it without torchrun" in capsys.readouterr().err
