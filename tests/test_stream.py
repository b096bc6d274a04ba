"""The streaming engine: safetensors I/O, calibrate + apply, resume, and the magnitude fast path."""

from __future__ import annotations

import json
import os
import re
import shutil
from pathlib import Path
from typing import Any

import pytest
import safetensors.torch as st
import symprune
import torch
from cases import (
    DTYPES,
    NM_PATTERNS,
    NM_SHAPES,
    SHAPES,
    SPARSITIES,
    WEIGHT_KINDS,
    make_weight,
)
from conftest import build_tiny_model, byte_tokenizer, folder_bytes, one_weight_checkpoint, stream_job
from oracles import oracle_nm_mask, oracle_row_mask, oracle_score
from symprune.cli import main
from symprune.report import PruneReport
from transformers import AutoModelForCausalLM

pytestmark = pytest.mark.usefixtures("single_thread")


# --------------------------------------------------------------------------- magnitude fast path


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("kind", [*WEIGHT_KINDS, "quantised_nonzero"])
@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("s", SPARSITIES)
def test_magnitude_row_mask_matches_oracle(dtype: str, kind: str, shape: tuple[int, int], s: float) -> None:
    w = make_weight(shape, kind, DTYPES[dtype], key=("mag", dtype))
    w[0, 0] = -0.0  # -0 and +0 tie, as in the fp32 score
    expected = oracle_row_mask(oracle_score(w, "magnitude"), s)
    assert torch.equal(symprune.magnitude_mask(w, s), expected)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("kind", WEIGHT_KINDS)
@pytest.mark.parametrize(("shape", "nm"), [
    (shape, nm) for shape in NM_SHAPES for nm in [*NM_PATTERNS, (5, 40)] if shape[1] % nm[1] == 0
])
def test_magnitude_nm_mask_matches_oracle(dtype: str, kind: str, shape: tuple[int, int], nm: tuple[int, int]) -> None:
    w = make_weight(shape, kind, DTYPES[dtype], key=("mag-nm", dtype))
    expected = oracle_nm_mask(oracle_score(w, "magnitude"), *nm)
    assert torch.equal(symprune.magnitude_mask(w, nm=nm), expected)


def test_magnitude_mask_layer_group_and_errors() -> None:
    w = make_weight((9, 16), "quantised", torch.bfloat16)
    assert torch.equal(symprune.magnitude_mask(w, 0.5, group="layer"),
                       symprune.mask(symprune.score(w, "magnitude"), 0.5, group="layer"))
    with pytest.raises(ValueError, match="NaN or Inf"):
        symprune.magnitude_mask(torch.tensor([[1.0, float("nan")]]).half(), 0.5)
    with pytest.raises(ValueError, match="divisible"):
        symprune.magnitude_mask(w, nm=(2, 5))


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float32, torch.float64])
def test_apply_mask_is_masked_fill(dtype: torch.dtype) -> None:
    w = make_weight((7, 13), "zero_rows_cols", dtype)
    w[1, 2] = -0.0
    keep = torch.rand(7, 13, generator=torch.Generator().manual_seed(0)) > 0.5
    out = symprune.apply_mask(w, keep)
    expected = w.masked_fill(~keep, 0)
    assert torch.equal(_bits(out), _bits(expected))  # bit for bit, +0 for pruned


# --------------------------------------------------------------------------- safetensors files


ALL_DTYPES = [torch.bool, torch.uint8, torch.int8, torch.int16, torch.int32, torch.int64, torch.float16,
              torch.bfloat16, torch.float32, torch.float64, torch.float8_e4m3fn, torch.float8_e5m2,
              torch.uint16, torch.uint32, torch.uint64]


def _bits(t: torch.Tensor) -> torch.Tensor:
    return t.reshape(-1).view(torch.uint8)


def _sample(dtype: torch.dtype, shape: tuple[int, ...]) -> torch.Tensor:
    return (torch.arange(int(torch.tensor(shape).prod()) if shape else 1) % 5).reshape(shape).to(dtype)


def test_save_and_load_round_trip_with_safetensors_library(tmp_path: Path) -> None:
    tensors = {f"t.{i}": _sample(dtype, (3, 5) if i % 2 else (4,)) for i, dtype in enumerate(ALL_DTYPES)}
    tensors["empty"] = torch.zeros(0, 3)
    tensors["scalar"] = torch.tensor(2.5)
    ours = tmp_path / "ours.safetensors"
    symprune.save_safetensors(str(ours), tensors, {"format": "pt", "note": "é"})
    theirs = st.load_file(str(ours))
    assert all(torch.equal(_bits(theirs[k]), _bits(v)) for k, v in tensors.items())
    with open(ours, "rb") as f:
        assert (8 + int.from_bytes(f.read(8), "little")) % 8 == 0  # data starts 8-byte aligned

    other = tmp_path / "theirs.safetensors"
    st.save_file(tensors, str(other), metadata={"format": "pt"})
    loaded = symprune.load_safetensors(str(other))
    assert all(torch.equal(_bits(loaded[k]), _bits(v)) for k, v in tensors.items())
    header = symprune.safetensors_header(str(other))
    assert header["metadata"] == {"format": "pt"}
    assert header["tensors"]["t.1"]["shape"] == [3, 5] and header["tensors"]["t.1"]["dtype"] == "U8"
    assert list(symprune.load_safetensors(str(other), ["t.3"])) == ["t.3"]
    with pytest.raises(ValueError, match="has no tensor 'nope'"):
        symprune.load_safetensors(str(other), ["nope"])


def test_save_is_atomic(tmp_path: Path) -> None:
    path = tmp_path / "x.safetensors"
    symprune.save_safetensors(str(path), {"a": torch.ones(2)})
    with pytest.raises(ValueError):  # complex has no safetensors dtype: nothing is written
        symprune.save_safetensors(str(path), {"a": torch.ones(2, dtype=torch.complex64)})
    assert torch.equal(symprune.load_safetensors(str(path))["a"], torch.ones(2))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["x.safetensors"]


# --------------------------------------------------------------------------- calibrate + apply


def _all_tensors(folder: Path) -> dict[str, torch.Tensor]:
    out: dict[str, torch.Tensor] = {}
    for shard in sorted(folder.glob("*.safetensors")):
        out.update(symprune.load_safetensors(str(shard)))
    return out


@pytest.mark.parametrize(("arch", "recipe", "propagation", "dtype"), [
    ("llama", ["--nm", "2:4", "--refine", "r2dsnot"], "wanda 2:4 + r2dsnot", torch.float32),
    ("gemma3", ["--nm", "2:4", "--refine", "r2dsnot"], "wanda 2:4 + r2dsnot", torch.float32),
    ("opt", ["--nm", "2:4", "--refine", "r2dsnot"], "wanda 2:4 + r2dsnot", torch.float32),
    # The refine option skip matches the weight's name in prune and apply alike.
    ("llama", ["--sparsity", "0.5", "--refine", "dsnot", "--refine-option", "skip=mlp",
               "--refine-option", "threshold=0"], "wanda 0.5 per row + dsnot", torch.float32),
    # bf16 checkpoints: prune computes in fp32 and saves bf16, apply prunes the bf16 tensors.
    ("llama", ["--sparsity", "0.5"], "wanda 0.5 per row", torch.bfloat16),
    ("qwen2", ["--nm", "2:4", "--refine", "r2dsnot"], "wanda 2:4 + r2dsnot", torch.bfloat16),
])
def test_calibrate_then_apply_equals_prune(
    arch: str, recipe: list[str], propagation: str, dtype: torch.dtype, tmp_path: Path,
    text_files: tuple[Path, Path]
) -> None:
    model_dir = tmp_path / "model"
    build_tiny_model(arch).to(dtype).save_pretrained(model_dir)
    byte_tokenizer().save_pretrained(model_dir)
    calib = ["--calib", str(text_files[0]), "--nsamples", "4", "--seqlen", "32", "--quiet"]
    recipe = ["--method", "wanda", *recipe]
    assert main(["prune", str(model_dir), str(tmp_path / "pruned"), *recipe, *calib]) == 0
    stats = tmp_path / "stats.safetensors"
    assert main(["calibrate", str(model_dir), "--out", str(stats), *recipe, *calib]) == 0
    assert main(["apply", str(model_dir), str(tmp_path / "applied"), "--stats", str(stats), *recipe,
                 "--quiet"]) == 0
    pruned, applied = _all_tensors(tmp_path / "pruned"), _all_tensors(tmp_path / "applied")
    assert pruned.keys() == applied.keys()
    assert all(pruned[k].dtype == applied[k].dtype == dtype for k in pruned)
    assert all(torch.equal(pruned[k].view(torch.uint8), applied[k].view(torch.uint8)) for k in pruned)
    meta = symprune.safetensors_header(str(stats))["metadata"]
    assert meta["format"] == "symprune-stats" and meta["tokens"] == "128"
    assert meta["propagation"] == f"pruned: {propagation}"
    report = json.loads((tmp_path / "pruned" / "symprune_report.json").read_text())
    calibrated = symprune.PruneReport.from_statistics(stats)  # one report type for every command
    assert calibrated.command == "calibrate" and calibrated.recipe == report["recipe"]
    assert [(layer.name, layer.zeros) for layer in calibrated.layers] == [
        (layer["name"], layer["zeros"]) for layer in report["layers"]]
    assert calibrated.nsamples == 4 and calibrated.versions == report["versions"]
    if "skip=mlp" in recipe:
        changed = {layer["name"]: layer["changed"] for layer in report["layers"]}
        assert all(n == 0 for name, n in changed.items() if ".mlp." in name)
        assert any(n > 0 for name, n in changed.items() if ".self_attn." in name)


def test_stray_shard_is_refused_everywhere(sharded_model_dir: Path, tmp_path: Path) -> None:
    """One shard-discovery rule: a .safetensors file that the index does not name is refused by
    the Python checkpoint reader and the streaming engine alike."""
    from symprune.checkpoint import CheckpointFolder

    model = tmp_path / "model"
    shutil.copytree(sharded_model_dir, model)
    symprune.save_safetensors(str(model / "model.safetensors"), {"x": torch.zeros(2)})
    with pytest.raises(ValueError, match="model.safetensors is not named by"):
        CheckpointFolder(model)
    with pytest.raises(ValueError, match="model.safetensors is not named by"):
        symprune.prune_checkpoint(model, tmp_path / "out", method="magnitude", sparsity=0.5, progress=False)
    assert not (tmp_path / "out").exists()


def test_dense_calibration_matches_dense_hooks(
    tiny_model_dir: Path, text_files: tuple[Path, Path], tmp_path: Path
) -> None:
    from symprune.data import calibration_windows, tokenize_file
    from symprune.models import load_model, load_tokenizer

    windows = calibration_windows(tokenize_file(text_files[0], load_tokenizer(tiny_model_dir)), 3, 16, 0)
    result = symprune.calibrate(tiny_model_dir, windows, progress=False)
    assert result.metadata["propagation"] == "dense"
    assert result.report is not None and result.report.method == "dense" and result.report.command == "calibrate"
    model = load_model(tiny_model_dir)
    seen: dict[str, symprune.ActivationStats] = {}
    hooks = []
    for name, module in model.named_modules():
        if isinstance(module, torch.nn.Linear) and ".layers." in name:
            seen[name] = symprune.ActivationStats(module.in_features)
            hooks.append(module.register_forward_hook(
                lambda m, args, out, name=name: seen[name].update(args[0][0])))
    with torch.no_grad():
        for row in windows:
            model(row.reshape(1, -1))
    for h in hooks:
        h.remove()
    for name, stats in seen.items():
        torch.testing.assert_close(result.tensors[f"{name}.weight.in_norm"], stats.in_norm, rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(result.tensors[f"{name}.weight.in_var"], stats.in_var, rtol=1e-4, atol=1e-6)


def test_apply_magnitude_sharded(sharded_model_dir: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    report = symprune.prune_checkpoint(sharded_model_dir, out, method="magnitude", sparsity=0.5, progress=False)
    before, after = _all_tensors(sharded_model_dir), _all_tensors(out)
    pruned = [k for k in before if ".layers." in k and before[k].dim() == 2]
    assert report["tensors_pruned"] == len(pruned) == 14
    assert report["tensors_copied"] == len(before) - len(pruned)
    assert report["shards"] == len(list(sharded_model_dir.glob("*.safetensors"))) > 1
    for name, w in before.items():
        if name in pruned:
            keep = oracle_row_mask(oracle_score(w, "magnitude"), 0.5)
            assert torch.equal(after[name], w.masked_fill(~keep, 0)), name
        else:
            assert torch.equal(after[name], w), name
    # Index, config and tokenizer are copied byte for byte; the input folder is untouched.
    src, dst = folder_bytes(sharded_model_dir), folder_bytes(out)
    for name in ("model.safetensors.index.json", "config.json", "tokenizer.json"):
        assert dst[name] == src[name]
    model = AutoModelForCausalLM.from_pretrained(out)
    assert float((model.model.layers[1].mlp.up_proj.weight == 0).float().mean()) == 0.5


def test_apply_include_and_nm(sharded_model_dir: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    symprune.prune_checkpoint(sharded_model_dir, out, method="magnitude", nm="2:4",
                              include=r"mlp\.down_proj\.weight$", progress=False)
    after = _all_tensors(out)
    down = after["model.layers.0.mlp.down_proj.weight"]
    assert torch.all((down.reshape(-1, 4) != 0).sum(1) <= 2)
    assert torch.equal(after["model.layers.0.mlp.up_proj.weight"],
                       _all_tensors(sharded_model_dir)["model.layers.0.mlp.up_proj.weight"])


def test_resume_after_an_interruption_is_byte_identical(sharded_model_dir: Path, tmp_path: Path) -> None:
    reference, out = tmp_path / "reference", tmp_path / "out"
    kwargs: dict = {"method": "magnitude", "sparsity": 0.5, "progress": False}
    symprune.prune_checkpoint(sharded_model_dir, reference, **kwargs)
    _interrupted_apply(sharded_model_dir, out)
    shards = sorted(sharded_model_dir.glob("*.safetensors"))
    (out / (shards[-1].name + ".partial")).write_bytes(b"half-written")

    with pytest.raises(ValueError, match="other options"):
        symprune.prune_checkpoint(sharded_model_dir, out, method="magnitude", sparsity=0.6, resume=True,
                                  progress=False)
    with pytest.raises(ValueError, match="not empty"):
        symprune.prune_checkpoint(sharded_model_dir, out, **kwargs)
    report = symprune.prune_checkpoint(sharded_model_dir, out, resume=True, **kwargs)
    assert report["shards_resumed"] == 1 < len(shards)

    def written(folder: Path) -> dict[str, bytes]:  # the report records timings
        return {name: data for name, data in folder_bytes(folder).items() if name != "symprune_report.json"}

    assert written(out) == written(reference)
    symprune.prune_checkpoint(sharded_model_dir, out, method="magnitude", sparsity=0.6, overwrite=True,
                              progress=False)


@pytest.mark.parametrize("recipe", [
    symprune.Recipe("magnitude", 0.5),
    symprune.Recipe("wanda", nm="2:4", refine="dsnot"),
    symprune.Recipe("owanda", nm="1:4"),  # reads out_norm, one entry per row
    symprune.Recipe("ria", 0.5),  # reads the whole weight's column norms: a first pass
    symprune.Recipe("symmetric", nm="2:4"),  # the same, data-free
    symprune.Recipe("wanda", 0.5, group="layer"),  # a threshold over the whole weight: passes
    symprune.Recipe("ria", 0.6, group="layer"),
    # R²-DSnoT's relative metrics read the whole weight's l1 column norms: a first pass.
    symprune.Recipe("wanda", 0.5, refine="r2dsnot", refine_options={"relative": "prune"}),
    symprune.Recipe("ria", nm="2:4", refine="r2dsnot", refine_options={"relative": "grow"}),
    symprune.Recipe("wanda", 0.5, group="layer", refine="r2dsnot"),
], ids=lambda r: r.describe())
def test_row_blocks_write_the_bytes_of_whole_weights(recipe: symprune.Recipe, tiny_model_dir: Path,
                                                     text_files: tuple[Path, Path], tmp_path: Path) -> None:
    """A weight pruned a few rows at a time (one row; one or two; several, the last block
    shorter) is written exactly as when pruned whole."""
    stats = tmp_path / "stats.safetensors"
    assert main(["calibrate", str(tiny_model_dir), "--out", str(stats), "--calib", str(text_files[0]),
                 "--nsamples", "2", "--seqlen", "32", "--quiet"]) == 0
    options: dict[str, Any] = {} if recipe.data_free else {"stats": str(stats)}
    stream_job(tiny_model_dir, tmp_path / "whole", recipe=recipe, row_block_bytes=2**40, **options)
    for budget in (1, 700, 3000):  # rows are 256 or 512 bytes
        out = tmp_path / f"blocks-{budget}"
        stream_job(tiny_model_dir, out, recipe=recipe, row_block_bytes=budget, **options)
        assert (out / "model.safetensors").read_bytes() == (tmp_path / "whole" / "model.safetensors").read_bytes()


@pytest.mark.parametrize("recipe", [
    symprune.Recipe("ria", 0.5), symprune.Recipe("ria", nm="2:4", score_options={"p": 2.0}),
    symprune.Recipe("symmetric", 0.5), symprune.Recipe("magnitude", 0.5, group="layer"),
    symprune.Recipe("ria", 0.7, group="layer"), symprune.Recipe("owanda", 0.3, group="layer"),
    symprune.Recipe("wanda", 0.5, refine="r2dsnot", refine_options={"relative": "prune"}),
    symprune.Recipe("ria", nm="2:4", refine="r2dsnot", refine_options={"relative": "grow", "gamma1": 0.0}),
    # A per-layer mask, then a refinement that keeps each row's count: both in the last pass.
    symprune.Recipe("wanda", 0.5, group="layer", refine="dsnot", refine_options={"skip": None}),
    symprune.Recipe("ria", 0.6, group="layer", refine="r2dsnot", refine_options={"relative": "prune"}),
], ids=lambda r: r.describe())
def test_weights_read_in_passes_are_pruned_as_whole_weights(recipe: symprune.Recipe, tmp_path: Path) -> None:
    """A weight over 1 M elements, read in passes (its column norms summed over several blocks;
    a per-layer threshold found 16 bits per pass, with ties: the weight is bf16) and pruned in
    blocks of rows of every size, is written as the Python API prunes it whole in memory."""
    model, name, weight, statistics = one_weight_checkpoint(tmp_path, seed=3)
    read = {key: value for key, value in statistics.items() if key == "in_norm" and recipe.needs_input_stats
            or key == "out_norm" and recipe.needs_output_stats
            or key in ("in_mean", "in_var") and recipe.needs_refine_stats}
    options: dict[str, Any] = {} if recipe.data_free else {"stats": str(_stats_file(
        tmp_path / "stats.safetensors", {f"{name}.{key}": value for key, value in read.items()}))}
    stream_job(model, tmp_path / "whole", recipe=recipe, row_block_bytes=2**40, **options)
    whole = (tmp_path / "whole" / "model.safetensors").read_bytes()
    for budget in (1, 2048 * 3, 2048 * 700):  # rows are 2048 bytes
        out = tmp_path / f"blocks-{budget}"
        stream_job(model, out, recipe=recipe, row_block_bytes=budget, **options)
        assert (out / "model.safetensors").read_bytes() == whole, budget
    api = symprune.prune(weight, recipe, **read).weight
    assert torch.equal(symprune.load_safetensors(str(tmp_path / "whole" / "model.safetensors"))[name], api)


def test_apply_warns_when_the_folder_has_no_config(tiny_model_dir: Path, tmp_path: Path,
                                                  caplog: pytest.LogCaptureFixture) -> None:
    model = tmp_path / "tensors"
    model.mkdir()
    shutil.copy(tiny_model_dir / "model.safetensors", model)
    with caplog.at_level("WARNING", logger="symprune"):
        assert main(["apply", str(model), str(tmp_path / "out"), "--method", "magnitude", "--sparsity", "0.5",
                     "--quiet"]) == 0
    assert "no config.json" in caplog.text


def test_resume_checks_finished_shards_by_content(sharded_model_dir: Path, tmp_path: Path) -> None:
    """A finished shard whose bytes changed after it was recorded (same size, same mtime) is redone."""
    reference, out = tmp_path / "reference", tmp_path / "out"
    kwargs: dict = {"method": "magnitude", "sparsity": 0.5, "progress": False}
    symprune.prune_checkpoint(sharded_model_dir, reference, **kwargs)
    _interrupted_apply(sharded_model_dir, out)
    job = json.loads((out / ".symprune-apply.json").read_text())
    (finished,) = job["finished"]  # the first shard, with its checksum
    shard = out / finished
    stat = shard.stat()
    data = bytearray(shard.read_bytes())
    data[-1] ^= 0x01  # one bit of the last weight
    shard.write_bytes(bytes(data))
    os.utime(shard, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    report = symprune.prune_checkpoint(sharded_model_dir, out, resume=True, **kwargs)
    assert report["shards_resumed"] == 0

    def written(folder: Path) -> dict[str, bytes]:  # the report records timings
        return {name: data for name, data in folder_bytes(folder).items() if name != "symprune_report.json"}

    assert written(out) == written(reference)


def test_apply_overwrite_replaces_the_whole_folder(tiny_model_dir: Path, sharded_model_dir: Path,
                                                    tmp_path: Path) -> None:
    """--overwrite leaves nothing of the previous run (a stale single-file checkpoint beside new
    shards would be what transformers loads), and replaces only folders that symprune wrote."""
    out = tmp_path / "out"
    kwargs: dict = {"method": "magnitude", "sparsity": 0.5, "progress": False}
    symprune.prune_checkpoint(tiny_model_dir, out, **kwargs)
    assert (out / "model.safetensors").exists()
    symprune.prune_checkpoint(sharded_model_dir, out, overwrite=True, **kwargs)
    fresh = tmp_path / "fresh"
    symprune.prune_checkpoint(sharded_model_dir, fresh, **kwargs)
    assert sorted(p.name for p in out.iterdir()) == sorted(p.name for p in fresh.iterdir())

    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("mine")
    with pytest.raises(ValueError, match="not written by symprune"):
        symprune.prune_checkpoint(sharded_model_dir, foreign, overwrite=True, **kwargs)
    assert [p.name for p in foreign.iterdir()] == ["notes.txt"]


def test_no_fsync_writes_the_same_folder(sharded_model_dir: Path, tmp_path: Path) -> None:
    kwargs: dict = {"method": "magnitude", "sparsity": 0.5, "progress": False}
    symprune.prune_checkpoint(sharded_model_dir, tmp_path / "durable", **kwargs)
    symprune.prune_checkpoint(sharded_model_dir, tmp_path / "fast", durable=False, **kwargs)
    assert main(["apply", str(sharded_model_dir), str(tmp_path / "cli"), "--method", "magnitude",
                 "--sparsity", "0.5", "--no-fsync", "--quiet"]) == 0

    def written(folder: Path) -> dict[str, bytes]:  # the report records timings
        return {name: data for name, data in folder_bytes(folder).items() if name != "symprune_report.json"}

    assert written(tmp_path / "fast") == written(tmp_path / "cli") == written(tmp_path / "durable")
    assert not (tmp_path / "cli" / ".symprune-apply.json").exists()  # a finished run leaves no job file


def _interrupted_apply(model: Path, out: Path, **options: Any) -> None:
    """An apply stopped (by an exception in its progress callback) after its first shard."""
    def stop(shard: str, tensor: str, done: int, total: int) -> None:
        if shard != first:
            raise KeyboardInterrupt

    first = sorted(p.name for p in model.glob("*.safetensors"))[0]
    with pytest.raises(KeyboardInterrupt):
        stream_job(model, out, recipe=symprune.Recipe("magnitude", 0.5), progress=stop, **options)


def test_apply_report_and_job_file(sharded_model_dir: Path, tmp_path: Path) -> None:
    """A finished apply leaves symprune_report.json (recipe, versions, totals) and no job file; an
    interrupted one leaves the job file that --resume reads."""
    out = tmp_path / "out"
    _interrupted_apply(sharded_model_dir, out)
    assert (out / ".symprune-apply.json").exists() and not (out / "symprune_report.json").exists()
    result = symprune.prune_checkpoint(sharded_model_dir, out, method="magnitude", sparsity=0.5, resume=True,
                                       progress=False)
    assert result["shards_resumed"] == 1 and not (out / ".symprune-apply.json").exists()
    report = PruneReport.from_json(out / "symprune_report.json")
    assert report.command == "apply" and report.recipe["method"] == "magnitude" and report.recipe["sparsity"] == 0.5
    assert set(report.versions) == {"symprune", "torch", "transformers"}
    assert report.extra["shards_resumed"] == 1 and 0 < report.overall_sparsity <= 0.5
    with pytest.raises(ValueError, match="no interrupted run to resume"):
        symprune.prune_checkpoint(sharded_model_dir, out, method="magnitude", sparsity=0.5, resume=True,
                                  progress=False)


def test_no_fsync_run_resumes_only_within_the_same_boot(sharded_model_dir: Path, tmp_path: Path) -> None:
    """Without fsync, finished shards are safe only while the page cache lives: after a restart
    of the machine (another boot id) resume must refuse them."""
    kwargs: dict = {"method": "magnitude", "sparsity": 0.5, "progress": False, "durable": False}
    out = tmp_path / "out"
    _interrupted_apply(sharded_model_dir, out, durable=False)
    job_path = out / ".symprune-apply.json"
    job = json.loads(job_path.read_text())
    assert job["durable"] is False and job["boot_id"] == Path("/proc/sys/kernel/random/boot_id").read_text()
    job_path.write_text(json.dumps({**job, "boot_id": "another boot\n"}))
    with pytest.raises(ValueError, match="before the machine restarted"):
        symprune.prune_checkpoint(sharded_model_dir, out, resume=True, **kwargs)
    job_path.write_text(json.dumps(job))
    assert symprune.prune_checkpoint(sharded_model_dir, out, resume=True, **kwargs)["shards_resumed"] >= 1


def test_nan_in_a_later_shard_is_refused_before_writing(sharded_model_dir: Path, tmp_path: Path) -> None:
    """A NaN weight in the last shard is found by the plan's pass over the weights: nothing is
    written, not even the earlier shards."""
    model = tmp_path / "model"
    shutil.copytree(sharded_model_dir, model)
    shards = sorted(model.glob("*.safetensors"))
    prunable = {p: [n for n, t in symprune.load_safetensors(str(p)).items() if t.dim() == 2 and ".layers." in n]
                for p in shards}
    last = next(p for p in reversed(shards[1:]) if prunable[p])  # a later shard that has weights to prune
    tensors = symprune.load_safetensors(str(last))
    name = prunable[last][0]
    tensors[name][0, 1] = float("nan")
    symprune.save_safetensors(str(last), tensors, {"format": "pt"})
    out = tmp_path / "out"
    stats = _stats_file(tmp_path / "stats.safetensors", {
        f"{n}.in_norm": torch.ones(t.shape[1]) for n, t in _all_tensors(model).items() if t.dim() == 2 and ".layers." in n})
    with pytest.raises(ValueError, match=f"{last.name}: tensor '{name}': holds NaN or Inf; refused before"):
        symprune.prune_checkpoint(model, out, stats=stats, method="wanda", nm=(2, 4), progress=False)
    assert not out.exists() or not any(out.iterdir())


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float32])
@pytest.mark.parametrize("value", [float("nan"), float("inf"), float("-inf")])
@pytest.mark.parametrize("where", [(0, 0), (-1, -1)], ids=["first", "last"])
def test_the_prescan_finds_every_non_finite_value(dtype: torch.dtype, value: float, where: tuple[int, int],
                                                  tmp_path: Path) -> None:
    model = tmp_path / "model"
    model.mkdir()
    weight = torch.randn(33, 24).to(dtype)
    weight[where] = value
    symprune.save_safetensors(str(model / "model.safetensors"),
                              {"model.layers.0.mlp.up_proj.weight": weight, "model.layers.0.mlp.down_proj.weight":
                               torch.randn(24, 33).to(dtype)})
    with pytest.raises(ValueError, match="up_proj.weight': holds NaN or Inf; refused before"):
        symprune.prune_checkpoint(model, tmp_path / "out", method="magnitude", sparsity=0.5, progress=False)
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").iterdir())


@pytest.mark.parametrize(("method", "pattern"), [("magnitude", {"sparsity": 0.5}), ("wanda", {"nm": (2, 4)})])
def test_apply_mixed_dtypes_and_sizes_share_output_buffers(method: str, pattern: dict, tmp_path: Path) -> None:
    """Pruned weights of every float dtype and of growing and shrinking sizes pass through the
    engine's two reused output buffers: each must come out as if pruned alone."""
    g = torch.Generator().manual_seed(4)
    shapes = [(64, 96), (8, 16), (130, 200), (3, 8), (130, 200), (1, 4)]
    dtypes = [torch.bfloat16, torch.float16, torch.float32, torch.float64]
    weights = {f"model.layers.{i}.mlp.up_proj.weight": (torch.randn(shape, generator=g) * 0.02).to(dtypes[i % 4])
               for i, shape in enumerate(shapes)}
    norms = {f"{name}.in_norm": torch.rand(w.shape[1], generator=g) + 0.1 for name, w in weights.items()}
    (tmp_path / "model").mkdir()
    symprune.save_safetensors(str(tmp_path / "model" / "model.safetensors"), weights)
    stats = _stats_file(tmp_path / "stats.safetensors", norms) if method == "wanda" else None
    symprune.prune_checkpoint(tmp_path / "model", tmp_path / "out", method=method, stats=stats, progress=False,
                              **pattern)
    out = symprune.load_safetensors(str(tmp_path / "out" / "model.safetensors"))
    for name, w in weights.items():
        score = oracle_score(w, method, in_norm=norms[f"{name}.in_norm"])
        keep = oracle_nm_mask(score, 2, 4) if "nm" in pattern else oracle_row_mask(score, 0.5)
        assert out[name].dtype == w.dtype
        assert torch.equal(out[name], w.masked_fill(~keep, 0)), name


def test_apply_refuses_bad_requests(sharded_model_dir: Path, tiny_model_dir: Path, tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="is the input"):
        symprune.prune_checkpoint(sharded_model_dir, sharded_model_dir, method="magnitude", sparsity=0.5,
                                  overwrite=True, progress=False)
    with pytest.raises(ValueError, match="lies inside the input"):
        symprune.prune_checkpoint(sharded_model_dir, sharded_model_dir / "out", method="magnitude", sparsity=0.5,
                                  progress=False)
    with pytest.raises(ValueError, match="contains the input"):
        symprune.prune_checkpoint(sharded_model_dir, sharded_model_dir.parent, method="magnitude", sparsity=0.5,
                                  overwrite=True, progress=False)
    assert not (sharded_model_dir / "out").exists()
    with pytest.raises(ValueError, match="needs activation statistics"):
        symprune.prune_checkpoint(sharded_model_dir, tmp_path / "a", method="wanda", sparsity=0.5,
                                  progress=False)
    with pytest.raises(ValueError, match="not a valid regular expression"):
        symprune.prune_checkpoint(sharded_model_dir, tmp_path / "b", method="magnitude", sparsity=0.5,
                                  include="(", progress=False)
    with pytest.raises(ValueError, match="sparsity"):
        symprune.prune_checkpoint(sharded_model_dir, tmp_path / "c", method="magnitude", sparsity=1.5,
                                  progress=False)
    with pytest.raises(ValueError, match="not divisible by M=3"):
        symprune.prune_checkpoint(sharded_model_dir, tmp_path / "d", method="magnitude", nm=(1, 3),
                                  progress=False)
    assert not any((tmp_path / name).exists() and any((tmp_path / name).iterdir()) for name in "abcd")


def test_apply_refuses_devices_it_cannot_use(sharded_model_dir: Path, tmp_path: Path) -> None:
    common = {"method": "magnitude", "sparsity": 0.5, "progress": False}
    with pytest.raises(ValueError, match="device must be cpu or cuda"):
        symprune.prune_checkpoint(sharded_model_dir, tmp_path / "a", device="gpu0", **common)
    with pytest.raises(ValueError, match="device must be cpu or cuda, got meta"):
        symprune.prune_checkpoint(sharded_model_dir, tmp_path / "a", device="meta", **common)
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="built without CUDA|sees no CUDA GPU"):
            symprune.prune_checkpoint(sharded_model_dir, tmp_path / "a", device="cuda", **common)
    assert not (tmp_path / "a").exists()


def _stats_file(path: Path, tensors: dict[str, torch.Tensor], fmt: str = "symprune-stats") -> Path:
    symprune.save_safetensors(str(path), tensors, {"format": fmt})
    return path


def test_apply_checks_statistics(sharded_model_dir: Path, tmp_path: Path) -> None:
    weight = "model.layers.0.self_attn.q_proj.weight"
    good = {f"{weight}.in_norm": torch.ones(64)}
    run = lambda stats, **kw: symprune.prune_checkpoint(
        sharded_model_dir, tmp_path / "out", method=kw.pop("method", "wanda"), sparsity=0.5, stats=stats,
        overwrite=True, progress=False, **kw)
    report = run(_stats_file(tmp_path / "good.safetensors", good))
    assert report["tensors_pruned"] == 1
    with pytest.raises(ValueError, match="has 32 entries but the weight needs 64"):
        run(_stats_file(tmp_path / "short.safetensors", {f"{weight}.in_norm": torch.ones(32)}))
    with pytest.raises(ValueError, match="no such tensor"):
        run(_stats_file(tmp_path / "other.safetensors", {**good, "model.layers.9.x.weight.in_norm": torch.ones(4)}))
    with pytest.raises(ValueError, match="lacks 'model.layers.0.self_attn.q_proj.weight.out_norm'"):
        run(tmp_path / "good.safetensors", method="owanda")
    with pytest.raises(ValueError, match="not a symprune statistics file"):
        run(_stats_file(tmp_path / "plain.safetensors", good, fmt="pt"))
    with pytest.raises(ValueError, match="NaN or Inf"):
        run(_stats_file(tmp_path / "nan.safetensors", {f"{weight}.in_norm": torch.full((64,), float("nan"))}))


def test_apply_cli_errors_are_one_line(
    sharded_model_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (tmp_path / "busy").mkdir()
    (tmp_path / "busy" / "keep.txt").write_text("precious")
    status = main(["apply", str(sharded_model_dir), str(tmp_path / "busy"), "--method", "magnitude",
                   "--sparsity", "0.5", "--quiet"])
    err = capsys.readouterr().err.strip()
    assert status == 1 and "\n" not in err and "is not empty" in err
    assert (tmp_path / "busy" / "keep.txt").read_text() == "precious"
    with pytest.raises(SystemExit) as usage:  # a device is checked with the other arguments
        main(["apply", str(sharded_model_dir), str(tmp_path / "new"), "--method", "magnitude",
              "--sparsity", "0.5", "--device", "tpu", "--quiet"])
    assert usage.value.code == 2 and "device" in capsys.readouterr().err
    assert not (tmp_path / "new").exists()


@pytest.mark.parametrize("command", ["apply", "calibrate"])
@pytest.mark.parametrize(("recipe", "fragment"), [
    (["--method", "sparsegpt", "--nm", "2:4"], "use `symprune prune --low-memory`"),
    (["--method", "wanda", "--sparsity", "0.5", "--update", "refit"], "use `symprune prune --low-memory`"),
    (["--method", "wanda", "--sparsity", "0.5", "--owl"], "uses OWL"),
])
def test_streaming_commands_refuse_what_they_cannot_stream_up_front(
    command: str, recipe: list[str], fragment: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Refused before the model folder is even looked at (it does not exist here), with the command that can."""
    where = ["--out", str(tmp_path / "s.safetensors")] if command == "calibrate" else [str(tmp_path / "out")]
    assert main([command, str(tmp_path / "no-model"), *where, *recipe, "--quiet"]) == 2
    err = capsys.readouterr().err.strip()
    assert fragment in err and "\n" not in err, err
    assert sorted(p.name for p in tmp_path.iterdir()) == []


def test_apply_on_full_disk_loses_nothing(sharded_model_dir: Path, tmp_path: Path) -> None:
    """A write limit (RLIMIT_FSIZE, as a full disk) fails cleanly: clear error, no partial files."""
    import subprocess
    import sys

    out = tmp_path / "out"
    script = (
        "import resource, symprune\n"
        "resource.setrlimit(resource.RLIMIT_FSIZE, (60_000, 60_000))\n"
        f"symprune.prune_checkpoint({str(sharded_model_dir)!r}, {str(out)!r}, method='magnitude', "
        "sparsity=0.5, progress=False)\n"
    )
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=False)
    assert proc.returncode != 0
    assert "File too large" in proc.stderr
    assert not list(out.glob("*.partial"))
    before = folder_bytes(sharded_model_dir)
    shutil.rmtree(out)
    assert folder_bytes(sharded_model_dir) == before


def test_progress_reports_bytes(sharded_model_dir: Path, tmp_path: Path) -> None:
    seen: list[tuple[int, int]] = []
    stream_job(sharded_model_dir, tmp_path / "o", recipe=symprune.Recipe("magnitude", 0.5),
            progress=lambda shard, tensor, done, total: seen.append((done, total)))
    total = sum(os.path.getsize(p) for p in sharded_model_dir.glob("*.safetensors"))
    assert seen[-1][0] == seen[-1][1] and 0.9 * total < seen[-1][1] <= total
    assert [d for d, _ in seen] == sorted(d for d, _ in seen)


def test_stats_file_from_calibrate_loads(tiny_model_dir: Path, text_files: tuple[Path, Path], tmp_path: Path) -> None:
    out = tmp_path / "stats.safetensors"
    assert main(["calibrate", str(tiny_model_dir), "--out", str(out), "--calib", str(text_files[0]),
                 "--nsamples", "2", "--seqlen", "16", "--quiet"]) == 0
    header = symprune.safetensors_header(str(out))
    names = {n.rsplit(".", 1)[1] for n in header["tensors"]}
    assert names == {"in_sq", "in_norm", "in_mean", "in_var", "out_sq", "out_norm"}
    assert json.loads(json.dumps(header["metadata"]))["propagation"] == "dense"


def test_calibrate_cli_refuses_bad_requests(
    tiny_model_dir: Path, text_files: tuple[Path, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "stats.safetensors"
    out.write_bytes(b"precious")
    base = ["calibrate", str(tiny_model_dir), "--calib", str(text_files[0]), "--seqlen", "32", "--quiet"]
    cases = [  # (arguments, message, exit status: 2 for an invalid recipe)
        ([*base, "--out", str(out)], "exists; pass --overwrite", 1),
        ([*base, "--out", str(tmp_path / "s2"), "--sparsity", "0.5"], "need --method", 2),
        ([*base, "--out", str(tmp_path / "s2"), "--target", "residual"], "need --method", 2),
        ([*base, "--out", str(tmp_path / "s2"), "--method", "wanda", "--nm", "2:4", "--target", "residual"],
         "needs a method that solves the weights", 2),
        ([*base, "--out", str(tmp_path / "s2"), "--method", "sparsegpt", "--nm", "2:4", "--target", "residual"],
         "use `symprune prune --low-memory`", 2),
        ([*base, "--out", str(tmp_path / "s3"), "--method", "wanda"], "needs --sparsity or --nm", 2),
        ([*base, "--out", str(tmp_path / "missing" / "s.safetensors")], "folder of --out does not exist", 1),
        ([*base, "--out", str(tmp_path / "s4"), "--method", "wanda", "--nm", "2:3"], "needs in_features divisible by 3", 1),
        # The input model is never overwritten, not even with --overwrite.
        ([*base, "--out", str(tiny_model_dir / "model.safetensors"), "--overwrite"], "lies inside the input", 1),
    ]
    weights = (tiny_model_dir / "model.safetensors").read_bytes()
    for argv, fragment, status in cases:
        assert main(argv) == status
        err = capsys.readouterr().err.strip()
        assert fragment in err and "\n" not in err, err
    assert out.read_bytes() == b"precious"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["stats.safetensors"]
    assert (tiny_model_dir / "model.safetensors").read_bytes() == weights


@pytest.mark.parametrize(("method", "pattern", "refine"), [
    ("wanda", {"nm": (2, 4)}, "dsnot"), ("owanda", {"sparsity": 0.5}, None),
    ("symwanda", {"sparsity": 0.6}, "r2dsnot"), ("magnitude", {"nm": (2, 4)}, None),
])
def test_apply_prunes_large_weights_in_row_chunks_exactly(
    method: str, pattern: dict, refine: str | None, tmp_path: Path
) -> None:
    """600 x 8192 is over the engine's 4M-element chunk: with DSnoT the row-chunked result must
    equal the whole-matrix one (out_norm sliced per chunk, DSnoT per row); without, the
    row-at-a-time path must."""
    g = torch.Generator().manual_seed(0)
    name = "model.layers.0.self_attn.o_proj.weight"  # refined: dsnot leaves mlp alone by default
    w = (torch.randn(600, 8192, generator=g) * 0.02).to(torch.bfloat16)
    stats = {"in_norm": torch.rand(8192, generator=g) + 0.1, "in_mean": torch.randn(8192, generator=g),
             "in_var": torch.rand(8192, generator=g) + 0.1, "out_norm": torch.rand(600, generator=g) + 0.1}
    (tmp_path / "model").mkdir()
    symprune.save_safetensors(str(tmp_path / "model" / "model.safetensors"), {name: w})
    stats_path = _stats_file(tmp_path / "stats.safetensors", {f"{name}.{k}": v for k, v in stats.items()})
    symprune.prune_checkpoint(tmp_path / "model", tmp_path / "out", method=method, refine=refine,
                              stats=stats_path, progress=False, **pattern)
    out = symprune.load_safetensors(str(tmp_path / "out" / "model.safetensors"))[name]

    info = symprune.method_info(method)
    read = {k: stats[k] for k, needed in (("in_norm", info["needs_input_stats"]), ("out_norm", info["needs_output_stats"]))
            if needed}
    score = symprune.score(w, method, **read)
    keep = symprune.mask(score, pattern.get("sparsity"), nm=pattern.get("nm"))
    if refine:
        options = symprune.r2dsnot_defaults() if refine == "r2dsnot" else {}
        if "nm" in pattern:
            options["initial_score"] = score
        keep = symprune.dsnot(w, keep, in_norm=stats["in_norm"], in_mean=stats["in_mean"], in_var=stats["in_var"],
                              nm=pattern.get("nm"), **options)
    assert torch.equal(out, w.masked_fill(~keep, 0))


def _in_norms_for_every_block_weight(folder: Path) -> dict[str, torch.Tensor]:
    out = {}
    for shard in sorted(folder.glob("*.safetensors")):
        for name, info in symprune.safetensors_header(str(shard))["tensors"].items():
            if ".layers." in name and len(info["shape"]) == 2:
                out[f"{name}.in_norm"] = torch.ones(info["shape"][1])
    return out


@pytest.mark.parametrize(("value", "message"), [(float("nan"), "holds NaN or Inf"), (float("inf"), "holds NaN or Inf"),
                                                (-1.0, "has negative entries, which a norm cannot have")])
def test_apply_refuses_bad_statistics_before_writing(
    sharded_model_dir: Path, tmp_path: Path, value: float, message: str
) -> None:
    """A bad value in the statistics of the last layer stops apply before its first shard, and the
    message names the statistics file."""
    stats = _in_norms_for_every_block_weight(sharded_model_dir)
    last = sorted(stats)[-1]
    stats[last][3] = value
    path = _stats_file(tmp_path / "stats.safetensors", stats)
    with pytest.raises(ValueError, match=f"{path}: '{re.escape(last)}' {message}"):
        symprune.prune_checkpoint(sharded_model_dir, tmp_path / "out", method="wanda", sparsity=0.5, stats=path,
                                  progress=False)
    out = tmp_path / "out"
    assert not out.exists() or not any(out.iterdir())  # nothing written


def test_apply_honours_include_with_statistics(sharded_model_dir: Path, tmp_path: Path) -> None:
    stats = _stats_file(tmp_path / "stats.safetensors", _in_norms_for_every_block_weight(sharded_model_dir))
    every = symprune.prune_checkpoint(sharded_model_dir, tmp_path / "all", method="wanda", sparsity=0.5,
                                      stats=stats, progress=False)
    some = symprune.prune_checkpoint(sharded_model_dir, tmp_path / "some", method="wanda", sparsity=0.5,
                                     stats=stats, include=r"q_proj", progress=False)
    assert every["tensors_pruned"] == len(_in_norms_for_every_block_weight(sharded_model_dir))
    assert 0 < some["tensors_pruned"] < every["tensors_pruned"]
    dense, pruned = _all_tensors(sharded_model_dir), _all_tensors(tmp_path / "some")
    for name, w in pruned.items():
        assert torch.equal(w, dense[name]) != ("q_proj" in name), name


def test_calibrate_refuses_permute(tiny_model_dir: Path) -> None:
    with pytest.raises(ValueError, match="permutes channels"):
        symprune.calibrate(tiny_model_dir, torch.zeros(1, 8, dtype=torch.long),
                           prune=symprune.Recipe("ria", nm=(2, 4), permute=True))


def test_apply_refuses_statistics_of_another_recipe(
    tiny_model_dir: Path, text_files: tuple[Path, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Statistics propagated through a wanda 2:4 model are refused for ria 60% (the weights would not
    be those prune writes) unless --allow-other-recipe; dense statistics serve any recipe."""
    calib = ["--calib", str(text_files[0]), "--nsamples", "2", "--seqlen", "32", "--quiet"]
    pruned, dense = tmp_path / "pruned.safetensors", tmp_path / "dense.safetensors"
    assert main(["calibrate", str(tiny_model_dir), "--out", str(pruned), "--method", "wanda", "--nm", "2:4", *calib]) == 0
    assert main(["calibrate", str(tiny_model_dir), "--out", str(dense), *calib]) == 0
    assert symprune.Recipe("wanda", nm=(2, 4)).to_json() == \
        symprune.safetensors_header(str(pruned))["metadata"]["recipe"]
    other = ["--method", "ria", "--sparsity", "0.6", "--quiet"]
    capsys.readouterr()
    assert main(["apply", str(tiny_model_dir), str(tmp_path / "a"), "--stats", str(pruned), *other]) == 1
    err = capsys.readouterr().err
    assert "calibrated through another recipe (pruned: wanda 2:4)" in err and "--allow-other-recipe" in err, err
    assert not (tmp_path / "a").exists() or not any((tmp_path / "a").iterdir())
    assert main(["apply", str(tiny_model_dir), str(tmp_path / "b"), "--stats", str(pruned), *other,
                 "--allow-other-recipe"]) == 0
    assert main(["apply", str(tiny_model_dir), str(tmp_path / "c"), "--stats", str(pruned), "--method", "wanda",
                 "--nm", "2:4", "--quiet"]) == 0
    assert main(["apply", str(tiny_model_dir), str(tmp_path / "d"), "--stats", str(dense), *other]) == 0
