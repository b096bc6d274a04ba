"""Faults at random moments: SIGTERM or SIGKILL during `prune`, `calibrate` and `apply` on a tiny
model, then a rerun. Whatever the moment, the output is absent, complete (byte-identical to an
uninterrupted run) or, for `apply`, a resumable run whose visible shards are complete; the rerun
finishes it; the input model is never changed.

The targeted fault cases live beside the code they exercise (all in CI):
- output policy (input, inside it, containing it, dangling symlink; --overwrite of a foreign
  folder; nothing of an overwritten folder survives): test_cli.py::test_prune_refuses_to_clobber,
  test_stream.py::test_apply_refuses_bad_requests, ::test_apply_overwrite_replaces_the_whole_folder,
  ::test_calibrate_cli_refuses_bad_requests;
- validation before writing (statistics missing, mis-sized, NaN, negative; recipe mismatch;
  --include with --stats; NaN/Inf weights in any shard, dtype and position):
  test_stream.py::test_apply_refuses_bad_statistics_before_writing,
  ::test_apply_refuses_statistics_of_another_recipe, ::test_apply_honours_include_with_statistics,
  ::test_nan_in_a_later_shard_is_refused_before_writing, ::test_the_prescan_finds_every_non_finite_value;
- option values and windows (one line, exit 2): test_cli.py::test_prune_errors_are_one_line;
- signals and killed runs: test_cli.py::test_prune_cleans_up_after_sigterm_and_killed_runs,
  ::test_low_memory_prune_interrupted_leaves_nothing, test_crash_safety.py; resume by checksum: test_stream.py::test_resume_checks_finished_shards_by_content;
- API contracts: test_errors.py::test_dsnot_refuses_a_mask_that_is_not_nm,
  ::test_score_refuses_options_the_method_does_not_read, ::test_statistics_a_method_does_not_read_are_refused;
- under torchrun (test_distributed.py): a failing rank, ::test_a_failing_rank_stops_every_rank_before_anything_is_written;
  a killed rank, then resume, ::test_a_killed_rank_leaves_a_run_that_resumes_to_the_same_bytes; another
  world size on resume, ::test_an_interrupted_run_resumes_with_another_number_of_ranks; ranks given different
  recipes or statistics, ::test_ranks_given_different_recipes_or_statistics_are_refused_up_front."""

from __future__ import annotations

import hashlib
import random
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import folder_bytes

REPORT = "symprune_report.json"  # its timings differ from run to run
JOB_FILE = ".symprune-apply.json"


def _digest(folder: Path) -> str:
    h = hashlib.sha256()
    for name, data in sorted(folder_bytes(folder).items()):
        h.update(name.encode() + b"\0" + data)
    return h.hexdigest()


def _content(path: Path) -> dict[str, bytes]:
    if path.is_file():  # a statistics file: its tensors and metadata, but the report (timings)
        import symprune

        metadata = symprune.safetensors_header(str(path))["metadata"]
        metadata.pop("report")
        tensors = symprune.load_safetensors(str(path))
        return {"": repr(sorted(metadata.items())).encode(),
                **{name: t.numpy().tobytes() for name, t in tensors.items()}}
    return {name: data for name, data in folder_bytes(path).items() if name != REPORT}


def _command(kind: str, model: Path, out: Path, calib: Path, *extra: str) -> list[str]:
    calibration = ["--calib", str(calib), "--nsamples", "4", "--seqlen", "32"]
    if kind == "prune":
        args = ["prune", str(model), str(out), "--method", "wanda", "--nm", "2:4", *calibration]
    elif kind == "calibrate":
        args = ["calibrate", str(model), "--out", str(out), "--method", "wanda", "--sparsity", "0.5", *calibration]
    else:
        args = ["apply", str(model), str(out), "--method", "magnitude", "--sparsity", "0.5"]
    return [sys.executable, "-m", "symprune.cli", *args, "--quiet", *extra]


def _rerun_flags(kind: str, out: Path) -> list[str]:
    if kind == "apply" and (out / JOB_FILE).exists():
        return ["--resume"]
    return ["--overwrite"] if out.exists() else []


@pytest.mark.parametrize("kind", ["prune", "calibrate", "apply"])
def test_random_faults_leave_nothing_broken(
    kind: str, tiny_model_dir: Path, text_files: tuple[Path, Path], tmp_path: Path
) -> None:
    model = tmp_path / "model"
    shutil.copytree(tiny_model_dir, model)
    before = _digest(model)
    name = "stats.safetensors" if kind == "calibrate" else "out"
    reference = tmp_path / f"reference-{name}"
    done = subprocess.run(_command(kind, model, reference, text_files[0]), capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    expected = _content(reference)

    rng = random.Random(kind)
    out = tmp_path / name
    for attempt in range(4):
        proc = subprocess.Popen(_command(kind, model, out, text_files[0], *_rerun_flags(kind, out)),
                                stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        time.sleep(rng.uniform(0.5, 6.0))  # imports take a few seconds: faults land in every phase
        sig = rng.choice([signal.SIGTERM, signal.SIGKILL])
        if proc.poll() is None:
            proc.send_signal(sig)
        _, err = proc.communicate(timeout=120)
        assert b"Traceback" not in err, err.decode()
        # -SIGTERM: it came during the imports, before the handler, when nothing is written yet.
        if sig == signal.SIGTERM and proc.returncode not in (0, 128 + signal.SIGTERM, -signal.SIGTERM):
            pytest.fail(f"attempt {attempt}: SIGTERM gave exit status {proc.returncode}: {err.decode()}")
        # Absent, complete, or (apply) a resumable run whose visible shards are complete.
        if out.exists() and not (kind == "apply" and (out / JOB_FILE).exists()):
            assert _content(out) == expected, f"attempt {attempt}: a visible output is incomplete"
        elif out.exists():
            for shard in out.glob("*.safetensors"):
                assert shard.read_bytes() == expected[shard.name], f"{shard.name} is visible but incomplete"
        leftovers = [p.name for p in tmp_path.iterdir() if p.name.startswith(f".{name}.")]
        if sig == signal.SIGTERM:
            assert leftovers == [], leftovers  # SIGTERM cleans up its temporaries
        assert _digest(model) == before

    final = subprocess.run(_command(kind, model, out, text_files[0], *_rerun_flags(kind, out)),
                           capture_output=True, text=True)
    assert final.returncode == 0, final.stderr
    assert _content(out) == expected
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []  # no temporaries left
    assert _digest(model) == before
