"""Hostile and corrupt checkpoints: a one-line error naming the file and the problem, never a crash.

Each file is refused by the core's reader (``symprune.safetensors_header``), by ``symprune apply``
and by ``symprune calibrate`` (exit status 1, one line on stderr, no traceback, nothing written).
"""

from __future__ import annotations

import json
import re
import shutil
import struct
import subprocess
import sys
from pathlib import Path

import pytest
import symprune
from symprune.cli import main

ROOT = Path(__file__).resolve().parents[1]
T = {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]}


def _file(header: bytes | str | dict, data: bytes = b"", length: int | None = None) -> bytes:
    if isinstance(header, dict):
        header = json.dumps(header)
    if isinstance(header, str):
        header = header.encode()
    return struct.pack("<Q", len(header) if length is None else length) + header + data


def _entry(**changes: object) -> dict:
    return {"a": {**T, **changes}}


CASES: dict[str, tuple[bytes, str]] = {
    "empty": (b"", "too short for a safetensors header"),
    "truncated_length": (b"\x10\x00\x00", "too short for a safetensors header"),
    "header_beyond_file": (_file("{}", length=4096), "runs past the end of the"),
    "header_over_100mb": (_file("{}", length=200 << 20), "exceeds the 100 MB limit"),
    "invalid_json": (_file('{"a": {"dtype": "F32",', b"x" * 8), "not valid JSON"),
    "invalid_utf8": (_file(b'{"\xff\xfe": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]}}', b"x" * 8),
                     "not valid JSON"),
    "duplicate_names": (_file(f'{{"a": {json.dumps(T)}, "a": {json.dumps(T)}}}', b"x" * 8),
                        "duplicate key 'a'"),
    "overlapping_offsets": (_file({"a": T, "b": {**T, "shape": [1], "data_offsets": [4, 8]}}, b"x" * 8),
                            "overlaps the previous tensor"),
    "offsets_out_of_bounds": (_file(_entry(), b"x" * 4), "past the end of the data"),
    "offsets_gap": (_file(_entry(shape=[1], data_offsets=[4, 8]), b"x" * 8), "(gap)"),
    "trailing_bytes": (_file(_entry(), b"x" * 16), "tensors cover 8 bytes of data but the file holds 16"),
    "dtype_shape_mismatch": (_file(_entry(shape=[3]), b"x" * 8), "is 12 bytes but data_offsets span 8"),
    "shape_overflow": (_file(_entry(shape=[2**32, 2**32]), b"x" * 8), "shape product overflows"),
    "bytes_overflow": (_file(_entry(shape=[2**62]), b"x" * 8), "byte size overflows"),
    "unknown_dtype": (_file(_entry(dtype="F4"), b"x" * 8), "unknown dtype 'F4'"),
    "negative_dim": (_file(_entry(shape=[-2]), b"x" * 8), "every dim must be a non-negative integer"),
    "huge_dim": (_file(_entry(shape=[2**64 - 1]), b"x" * 8), "has a dim too large"),
    "float_dim": (_file(_entry(shape=[2.0]), b"x" * 8), "every dim must be a non-negative integer"),
    "metadata_not_object": (_file({"__metadata__": ["pt"], **_entry()}, b"x" * 8), "__metadata__ must be an object"),
    "metadata_not_strings": (_file({"__metadata__": {"n": 1}, **_entry()}, b"x" * 8), "must be a string"),
    "not_an_object": (_file("[1, 2]"), "header must be a JSON object"),
    "entry_not_object": (_file({"a": [1]}), "tensor 'a' must be an object"),
    "missing_offsets": (_file({"a": {"dtype": "F32", "shape": [2]}}, b"x" * 8), 'lacks "data_offsets"'),
    "extra_key": (_file(_entry(extra=1), b"x" * 8), "unknown key 'extra'"),
    "newline_in_name": (_file({"a\nb": {**T, "dtype": "F4"}}, b"x" * 8), "tensor 'a\\x0ab' has unknown dtype"),
    "deep_nesting": (_file('{"a": ' + "[" * 50000 + "]" * 50000 + "}"), "nested deeper"),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_reader_refuses_with_one_line(case: str, tmp_path: Path) -> None:
    data, fragment = CASES[case]
    path = tmp_path / f"{case}.safetensors"
    path.write_bytes(data)
    with pytest.raises(ValueError) as err:
        symprune.safetensors_header(str(path))
    message = str(err.value)
    assert message.startswith(f"{path}: ") and fragment in message and "\n" not in message, message


def _model_dir(root: Path, shard: bytes) -> Path:
    model = root / "model"
    model.mkdir()
    (model / "config.json").write_text('{"model_type": "llama"}')
    (model / "model.safetensors").write_bytes(shard)
    return model


@pytest.mark.parametrize("case", ["header_beyond_file", "duplicate_names", "shape_overflow", "invalid_utf8"])
def test_cli_apply_refuses_hostile_checkpoint(case: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    model = _model_dir(tmp_path, CASES[case][0])
    before = (model / "model.safetensors").read_bytes()
    status = main(["apply", str(model), str(tmp_path / "out"), "--method", "magnitude", "--sparsity", "0.5",
                   "--quiet"])
    err = capsys.readouterr().err.strip()
    assert status == 1 and "\n" not in err and "Traceback" not in err, err
    assert "model.safetensors" in err and CASES[case][1] in err, err
    assert not (tmp_path / "out").exists()
    assert (model / "model.safetensors").read_bytes() == before


def test_cli_calibrate_refuses_hostile_checkpoint(
    tmp_path: Path, tiny_model_dir: Path, text_files: tuple[Path, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    model = tmp_path / "model"
    shutil.copytree(tiny_model_dir, model)
    (model / "model.safetensors").write_bytes(CASES["offsets_out_of_bounds"][0])
    status = main(["calibrate", str(model), "--out", str(tmp_path / "s.safetensors"), "--calib",
                   str(text_files[0]), "--nsamples", "2", "--seqlen", "16", "--quiet"])
    err = capsys.readouterr().err.strip()
    assert status == 1 and "\n" not in err and "past the end of the data" in err, err
    assert not (tmp_path / "s.safetensors").exists()


@pytest.mark.parametrize("shard", ["../outside.safetensors", "/etc/passwd", ".."])
def test_index_cannot_point_outside_the_folder(shard: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    model = _model_dir(tmp_path, _file(_entry(), b"x" * 8))
    (model / "model.safetensors.index.json").write_text(json.dumps({"weight_map": {"a": shard}}))
    status = main(["apply", str(model), str(tmp_path / "out"), "--method", "magnitude", "--sparsity", "0.5"])
    err = capsys.readouterr().err
    assert status == 1 and "is not a plain file name" in err, err


def test_index_must_match_the_shards(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    model = _model_dir(tmp_path, _file(_entry(), b"x" * 8))
    (model / "model.safetensors.index.json").write_text(
        json.dumps({"weight_map": {"a": "model.safetensors", "ghost": "model.safetensors"}}))
    assert main(["apply", str(model), str(tmp_path / "out"), "--method", "magnitude", "--sparsity", "0.5"]) == 1
    assert "names 2 tensors but the shards hold 1" in capsys.readouterr().err


def test_nan_weights_are_refused_without_output(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    import torch

    model = tmp_path / "model"
    model.mkdir()
    w = torch.ones(4, 8)
    w[1, 3] = float("inf")
    symprune.save_safetensors(str(model / "model.safetensors"), {"model.layers.0.mlp.up_proj.weight": w})
    assert main(["apply", str(model), str(tmp_path / "out"), "--method", "magnitude", "--sparsity", "0.5"]) == 1
    err = capsys.readouterr().err.strip()
    assert re.search(r"model\.safetensors: tensor 'model\.layers\.0\.mlp\.up_proj\.weight': .*NaN or Inf", err), err
    assert not (tmp_path / "out").exists()  # refused before the output folder was made


def test_cli_subprocess_exit_status_and_no_traceback(tmp_path: Path) -> None:
    """The installed console entry point, as a user runs it."""
    model = _model_dir(tmp_path, CASES["header_over_100mb"][0])
    proc = subprocess.run([sys.executable, "-m", "symprune.cli", "apply", str(model), str(tmp_path / "o"),
                           "--method", "magnitude", "--sparsity", "0.5"], capture_output=True, text=True, check=False)
    assert proc.returncode == 1
    assert proc.stderr.count("\n") == 1 and "exceeds the 100 MB limit" in proc.stderr, proc.stderr


def test_no_pickle_in_loading_paths() -> None:
    """Nothing symprune loads can execute code: no pickle, no torch.load without weights_only."""
    sources = [*(ROOT / "python").rglob("*.py"), *(ROOT / "bench").rglob("*.py")]
    for path in sources:
        text = path.read_text()
        assert not re.search(r"^\s*(import|from)\s+(c?pickle|dill|joblib)\b", text, re.MULTILINE), path
        for call in re.findall(r"torch\.load\([^)]*\)", text):
            assert "weights_only=True" in call, f"{path}: {call}"
    models = (ROOT / "python" / "symprune" / "models.py").read_text()
    assert "use_safetensors=True" in models  # transformers must never fall back to pytorch_model.bin
