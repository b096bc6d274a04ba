"""The ``symprune`` command line on a tiny saved random model (fast)."""

from __future__ import annotations

import json
import logging
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

import symprune
from symprune.cli import main
from symprune.report import PruneReport

pytestmark = pytest.mark.usefixtures("single_thread")


def _prune_args(model_dir: Path, out: Path, calib: Path, *extra: str) -> list[str]:
    return ["prune", str(model_dir), str(out), "--method", "wanda", "--calib", str(calib),
            "--nsamples", "4", "--seqlen", "32", "--quiet", *extra]


def _stalled_after(module: str, attribute: str, args: list[str]) -> subprocess.Popen[str]:
    """`symprune` with ``args`` in a subprocess whose ``module.attribute`` (a function or method)
    prints "saving" after its first call returns and then sleeps; returned once it has printed."""
    script = (
        "import importlib, sys, time\n"
        "from symprune.cli import main\n"
        f"owner = importlib.import_module({module!r})\n"
        f"*path, name = {attribute!r}.split('.')\n"
        "for part in path:\n"
        "    owner = getattr(owner, part)\n"
        "real = getattr(owner, name)\n"
        "def slow(*a, **k):\n"
        "    real(*a, **k); print('saving', flush=True); time.sleep(60)\n"
        "setattr(owner, name, slow)\n"
        f"sys.exit(main({[str(a) for a in args]!r}))\n"
    )
    proc = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    assert proc.stdout is not None and proc.stdout.readline().strip() == "saving"
    return proc


def _one_line_error(capsys: pytest.CaptureFixture[str], fragment: str) -> None:
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "Traceback" not in err, err
    assert fragment in err, err


def test_prune_writes_loadable_folder(
    tiny_model_dir: Path, text_files: tuple[Path, Path], tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    calib, evaluation = text_files
    out = tmp_path / "pruned"
    status = main(_prune_args(tiny_model_dir, out, calib, "--sparsity", "0.5", "--eval",
                              str(evaluation), "--nwindows", "2", "--eval-seqlen", "32"))
    assert status == 0
    assert "sparsity reached 50.0000%" in capsys.readouterr().out
    assert {"config.json", "model.safetensors", "tokenizer.json", "symprune_report.json"} <= {
        p.name for p in out.iterdir()
    }
    model = AutoModelForCausalLM.from_pretrained(out)
    q = model.model.layers[0].self_attn.q_proj.weight
    assert torch.all((q == 0).sum(1) == q.shape[1] // 2)
    dense = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    assert torch.equal(model.model.embed_tokens.weight, dense.model.embed_tokens.weight)
    AutoTokenizer.from_pretrained(out)

    report = PruneReport.from_json(out / "symprune_report.json")
    assert report.method == "wanda" and report.overall_sparsity == 0.5
    assert report.nsamples == 4 and report.seqlen == 32
    assert report.perplexity["pruned"] > 1
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temp leftovers


def test_prune_nm_with_refine_and_options(
    tiny_model_dir: Path, text_files: tuple[Path, Path], tmp_path: Path
) -> None:
    out = tmp_path / "nm"
    status = main(_prune_args(tiny_model_dir, out, text_files[0], "--nm", "2:4", "--refine",
                              "dsnot", "--refine-option", "max_cycles=5"))
    assert status == 0
    report = json.loads((out / "symprune_report.json").read_text())
    assert report["nm"] == [2, 4] and report["refine_options"] == {"max_cycles": 5}


def test_prune_refuses_to_clobber(
    tiny_model_dir: Path, text_files: tuple[Path, Path], tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    calib = text_files[0]
    out = tmp_path / "out"
    out.mkdir()
    (out / "keep.txt").write_text("user data")
    assert main(_prune_args(tiny_model_dir, out, calib, "--sparsity", "0.5")) == 1
    _one_line_error(capsys, "--overwrite")
    assert (out / "keep.txt").exists()

    assert main(_prune_args(tiny_model_dir, out, calib, "--sparsity", "0.5", "--overwrite")) == 1
    _one_line_error(capsys, "was not written by symprune")
    assert (out / "keep.txt").read_text() == "user data"

    (out / "keep.txt").unlink()
    assert main(_prune_args(tiny_model_dir, out, calib, "--sparsity", "0.5")) == 0
    (out / "stale.txt").write_text("from before")
    # --overwrite replaces a folder symprune wrote, as a whole.
    assert main(_prune_args(tiny_model_dir, out, calib, "--sparsity", "0.6", "--overwrite")) == 0
    assert not (out / "stale.txt").exists()
    assert PruneReport.from_json(out / "symprune_report.json").sparsity == 0.6

    capsys.readouterr()
    for bad, fragment in [(tiny_model_dir, "is the input"), (tiny_model_dir / "sub", "lies inside the input"),
                          (tiny_model_dir.parent, "contains the input")]:
        assert main(_prune_args(tiny_model_dir, bad, calib, "--sparsity", "0.5", "--overwrite")) == 1
        _one_line_error(capsys, fragment)
    assert not (tiny_model_dir / "sub").exists()
    link = tmp_path / "dangling"
    link.symlink_to(tmp_path / "nowhere")
    assert main(_prune_args(tiny_model_dir, link, calib, "--sparsity", "0.5")) == 1
    _one_line_error(capsys, "dangling symbolic link")


def test_prune_cleans_up_after_sigterm_and_killed_runs(
    tiny_model_dir: Path, text_files: tuple[Path, Path], tmp_path: Path
) -> None:
    """The temporary folders of a process that is gone (SIGKILL) are removed by the next save;
    SIGTERM during a save exits 143 leaving no temporary folder."""
    import signal

    out = tmp_path / "out"
    orphan = tmp_path / ".out.tmp-999999999-abc"  # no such process
    orphan.mkdir()
    (orphan / "model.safetensors").write_bytes(b"x" * 1000)
    # The save stalls after writing the weights into the temporary folder.
    proc = _stalled_after("transformers", "PreTrainedModel.save_pretrained",
                          _prune_args(tiny_model_dir, out, text_files[0], "--sparsity", "0.5"))
    # The orphan went when the save began; this run's temporary folder is there.
    assert [p.name.startswith(f".out.tmp-{proc.pid}-") for p in tmp_path.iterdir()] == [True]
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 128 + signal.SIGTERM and "terminated (SIGTERM)" in err, err
    assert list(tmp_path.iterdir()) == []  # its own temporary folder is gone too
    assert main(_prune_args(tiny_model_dir, out, text_files[0], "--sparsity", "0.5")) == 0
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]


def test_data_free_prune_needs_no_calibration_text(
    tiny_model_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str],
    caplog: pytest.LogCaptureFixture,
) -> None:
    """magnitude reads no text and runs no forward; wanda without --calib reads the default text,
    here an empty $SYMPRUNE_DATA, and says so in one line."""
    monkeypatch.setenv("SYMPRUNE_DATA", str(tmp_path / "nothing"))
    out = tmp_path / "out"
    args = ["prune", str(tiny_model_dir), str(out), "--sparsity", "0.5", "--quiet"]
    assert main([*args, "--method", "magnitude"]) == 0
    report = PruneReport.from_json(out / "symprune_report.json")
    assert report.nsamples == 0 and report.blocks == [] and report.dense_forward_seconds == 0
    assert report.overall_sparsity == 0.5 and all(layer.recon_error is None for layer in report.layers)
    with caplog.at_level(logging.WARNING, logger="symprune"):  # a text it will not read is named
        assert main([*args, "--method", "magnitude", "--overwrite", "--calib", str(tmp_path / "unread.txt")]) == 0
    assert "--calib is not read: recipe 'magnitude 0.5 per row' is data-free" in caplog.text
    capsys.readouterr()
    assert main([*args, "--method", "wanda", "--overwrite"]) == 1
    _one_line_error(capsys, "calibration text (pass --calib or fix $SYMPRUNE_DATA) not found")


@pytest.mark.parametrize(("requested", "expected"), [("auto", torch.bfloat16), ("float32", torch.float32),
                                                     ("float16", torch.float16)])
def test_prune_keeps_the_checkpoint_dtype(
    text_files: tuple[Path, Path], tmp_path: Path, requested: str, expected: torch.dtype
) -> None:
    """A bf16 checkpoint comes back bf16 (same size), or in the --dtype asked for; pruned
    entries are +0.0 and every row loses half its weights."""
    from conftest import build_tiny_model, byte_tokenizer

    model_dir, out = tmp_path / "model", tmp_path / "out"
    build_tiny_model("llama").to(torch.bfloat16).save_pretrained(model_dir)
    byte_tokenizer().save_pretrained(model_dir)
    assert main(_prune_args(model_dir, out, text_files[0], "--sparsity", "0.5", "--dtype", requested)) == 0
    dense = symprune.load_safetensors(str(model_dir / "model.safetensors"))
    pruned = symprune.load_safetensors(str(out / "model.safetensors"))
    assert {t.dtype for t in pruned.values()} == {expected}
    config = json.loads((out / "config.json").read_text())
    assert config.get("dtype", config.get("torch_dtype")) == str(expected).removeprefix("torch.")
    if expected == torch.bfloat16:
        assert (out / "model.safetensors").stat().st_size == (model_dir / "model.safetensors").stat().st_size
    for name, w in pruned.items():
        zeros = w == 0
        assert not torch.signbit(w[zeros]).any(), name
        if ".layers." in name and name.endswith("proj.weight"):
            assert torch.all(zeros.sum(1) == w.shape[1] // 2), name
            kept = ~zeros
            assert torch.equal(w[kept].to(dense[name].dtype), dense[name][kept]), name
        else:
            assert torch.equal(w, dense[name].to(expected)), name


@pytest.mark.parametrize(
    ("extra", "fragment", "status"),
    [
        # An invalid recipe: usage errors (exit 2), found before the model is loaded.
        (["--sparsity", "0.5", "--refine-option", "max_cycles"], "KEY=VALUE", 2),
        (["--sparsity", "0.5", "--refine", "dsnot", "--refine-option", "cycles=3"],
         "unknown refine option 'cycles'", 2),
        (["--sparsity", "0.5", "--refine", "dsnot", "--refine-option", "max_cycles=1.5"],
         "'max_cycles' must be an integer", 2),
        (["--sparsity", "0.5", "--refine", "dsnot", "--refine-option", "threshold=abc"],
         "'threshold' must be a number", 2),
        (["--sparsity", "0.5", "--score-option", "alpha=1"], "unknown score option 'alpha'", 2),
        (["--sparsity", "0.5", "--score-option", "a=0.3"], "for method 'wanda'", 2),
        (["--sparsity", "0.5", "--refine-option", "q=1"], "without refine", 2),
        (["--sparsity", "1.5"], "sparsity must be in [0, 1)", 2),
        (["--nm", "2-4"], "must look like '2:4'", 2),
        (["--nm", "4:2"], "1 <= n < m", 2),
        (["--nm", "2:4", "--group", "layer"], "N:M groups are fixed", 2),
        (["--nm", "2:4", "--owl"], "not N:M", 2),
        (["--sparsity", "0.5", "--owl-m", "3"], "owl options given without owl", 2),
        (["--sparsity", "0.5", "--owl", "--owl-lambda", "-1"], "lambda must be >= 0", 2),
        # Windows that do not fit the model or the machine: exit 2 too.
        (["--sparsity", "0.5", "--nsamples", "2", "--seqlen", "100000"], "exceeds the model's context of 256", 2),
        (["--sparsity", "0.5", "--seqlen", "256", "--bos"], "--seqlen 256 + BOS exceeds the model's context", 2),
        (["--sparsity", "0.5", "--nsamples", "100000000", "--seqlen", "32"], "GiB available; use fewer", 2),
    ],
)
def test_prune_errors_are_one_line(
    tiny_model_dir: Path, text_files: tuple[Path, Path], tmp_path: Path,
    capsys: pytest.CaptureFixture[str], extra: list[str], fragment: str, status: int,
) -> None:
    out = tmp_path / "out"
    assert main(_prune_args(tiny_model_dir, out, text_files[0], *extra)) == status
    _one_line_error(capsys, fragment)
    assert not out.exists()


@pytest.mark.parametrize(("extra", "hint"), [
    (["--method", "wanda"], "available; add --low-memory (one block in memory at a time) (or"),
    (["--method", "wanda", "--eval", "EVAL"], "available; add --low-memory (one block in memory at a time) and drop --eval"),
    (["--method", "magnitude"], "available; use `symprune apply`"),
    (["--method", "wanda", "--owl"], "available; this run must hold the whole model: it needs more memory (or"),
])
def test_a_model_too_large_for_memory_is_told_how_not_to_hold_it(
    tiny_model_dir: Path, text_files: tuple[Path, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch, extra: list[str], hint: str,
) -> None:
    """When not holding the whole model would make the run fit, the way this recipe can do that is
    named (or none: OWL needs the whole model)."""
    import symprune.cli_common
    from symprune.checkpoint import CheckpointFolder

    model_bytes = 4 * CheckpointFolder(tiny_model_dir).float_elements
    monkeypatch.setattr(symprune.cli_common, "_available_bytes", lambda _device: model_bytes // 2)
    out = tmp_path / "out"
    extra = [str(text_files[1]) if arg == "EVAL" else arg for arg in extra]
    assert main(["prune", str(tiny_model_dir), str(out), "--calib", str(text_files[0]), "--nsamples", "1",
                 "--seqlen", "8", "--eval-seqlen", "8", "--sparsity", "0.5", "--quiet", *extra]) == 2
    _one_line_error(capsys, hint)
    assert not out.exists()


def test_prune_refuses_the_residual_target_on_gemma3_before_loading(
    text_files: tuple[Path, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Gemma-3's blocks normalise each branch's output: refused from the config alone, naming the way out."""
    from conftest import build_tiny_model

    import symprune.cli

    build_tiny_model("gemma3").save_pretrained(tmp_path / "gemma")
    monkeypatch.setattr(symprune.cli, "load_model", lambda *_a, **_k: pytest.fail("the model was loaded"))
    monkeypatch.setattr(symprune.cli, "load_tokenizer", lambda *_a, **_k: pytest.fail("the tokenizer was loaded"))
    out = tmp_path / "out"
    assert main(_prune_args(tmp_path / "gemma", out, text_files[0], "--sparsity", "0.5", "--update", "refit",
                            "--target", "residual")) == 1
    _one_line_error(capsys, "use target 'layer' (--target layer)")
    assert not out.exists()


def test_missing_inputs_are_one_line(
    tiny_model_dir: Path, text_files: tuple[Path, Path], tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    out = tmp_path / "out"
    assert main(_prune_args(tiny_model_dir, out, tmp_path / "nope.txt", "--sparsity", "0.5")) == 1
    _one_line_error(capsys, "calibration text not found")
    assert main(_prune_args(tmp_path / "nomodel", out, text_files[0], "--sparsity", "0.5")) == 1
    _one_line_error(capsys, "model folder not found")


@pytest.mark.parametrize(
    "extra",
    [
        ["--sparsity", "0.5", "--nm", "2:4"],
        [],  # neither --sparsity nor --nm
        ["--sparsity", "0.5", "--nsamples", "0"],
        ["--sparsity", "0.5", "--device", "tpu"],
        ["--sparsity", "0.5", "--device", "cuda:99"],  # no GPU here, or not that many
    ],
)
def test_usage_errors_exit_2(
    tiny_model_dir: Path, text_files: tuple[Path, Path], tmp_path: Path, extra: list[str]
) -> None:
    with pytest.raises(SystemExit) as info:
        main(_prune_args(tiny_model_dir, tmp_path / "out", text_files[0], *extra))
    assert info.value.code == 2


def test_eval_prints_perplexity(
    tiny_model_dir: Path, text_files: tuple[Path, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    args = ["eval", str(tiny_model_dir), "--text", str(text_files[1]), "--nwindows", "2",
            "--seqlen", "32", "--quiet"]
    assert main(args) == 0
    assert capsys.readouterr().out.startswith("perplexity ")
    assert main([*args, "--bos"]) == 0  # the byte tokenizer has a BOS token
    assert main([*args, "--device", "cpu"]) == 0
    assert main(["eval", str(tiny_model_dir), "--text", str(text_files[1]), "--nwindows",
                 "100000", "--seqlen", "64", "--quiet"]) == 1
    _one_line_error(capsys, "evaluation text too short")
    assert main(["eval", str(tiny_model_dir), "--text", str(text_files[1]), "--quiet"]) == 2
    _one_line_error(capsys, "--seqlen 512 exceeds the model's context of 256 tokens")


def test_console_error_has_no_traceback(tmp_path: Path) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "symprune.cli", "eval", str(tmp_path), "--text",
         str(tmp_path / "missing.txt")],
        capture_output=True, text=True, timeout=120,
    )
    assert result.returncode == 1
    assert result.stderr.strip() == (
        f"symprune eval: error: {tmp_path} is not a Hugging Face model folder (no config.json)"
    )


def test_missing_optional_package_is_one_line(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    import symprune.cli as cli

    def needs_gguf() -> None:
        raise ModuleNotFoundError("No module named 'gguf'", name="gguf")

    monkeypatch.setattr(cli, "ensure_smollm2", needs_gguf)
    assert main(["demo", "--quiet"]) == 1
    _one_line_error(capsys, "needs the Python package 'gguf': pip install 'symprune[gguf]'")


def test_model_may_be_a_hub_id_in_the_local_cache(
    tiny_model_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str],
) -> None:
    """An `org/name` that is not a folder is looked up in the Hugging Face cache, offline."""
    import shutil

    cache = tmp_path / "hub"
    snapshot = cache / "models--tiny-org--tiny-llama" / "snapshots" / "0123abcd"
    shutil.copytree(tiny_model_dir, snapshot)
    (cache / "models--tiny-org--tiny-llama" / "refs").mkdir()
    (cache / "models--tiny-org--tiny-llama" / "refs" / "main").write_text("0123abcd")
    import huggingface_hub.constants

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(cache))  # read at import otherwise
    monkeypatch.chdir(tmp_path)
    from symprune.models import resolve_model_dir

    assert resolve_model_dir("tiny-org/tiny-llama") == snapshot
    out = tmp_path / "out"
    assert main(["prune", "tiny-org/tiny-llama", str(out), "--method", "magnitude", "--sparsity", "0.5",
                 "--quiet"]) == 0
    assert (out / "model.safetensors").exists()
    capsys.readouterr()
    assert main(["eval", "tiny-org/not-cached", "--quiet"]) == 1
    _one_line_error(capsys, "not in the local Hugging Face cache")


@pytest.mark.parametrize("recipe", [["--method", "sparsegpt", "--sparsity", "0.5"],
                                    ["--method", "wanda", "--nm", "2:4", "--update", "refit"],
                                    ["--method", "admm", "--nm", "2:4"],
                                    ["--method", "wanda", "--nm", "2:4", "--update", "refit", "--target", "residual"],
                                    ["--method", "ria", "--sparsity", "0.5", "--refine", "dsnot"]],
                         ids=lambda r: " ".join(r))
def test_low_memory_prune_writes_the_weights_of_prune(recipe: list[str], tiny_model_dir: Path,
                                                       text_files: tuple[Path, Path], tmp_path: Path) -> None:
    """`prune --low-memory` holds one block at a time (Gram methods included) and writes the
    weights `prune` writes: the same tensors, names and values, in a loadable folder."""
    calib = ["--calib", str(text_files[0]), "--nsamples", "4", "--seqlen", "32", "--quiet"]
    assert main(["prune", str(tiny_model_dir), str(tmp_path / "whole"), *recipe, *calib]) == 0
    assert main(["prune", str(tiny_model_dir), str(tmp_path / "blocks"), *recipe, *calib, "--low-memory"]) == 0
    whole = symprune.load_safetensors(str(tmp_path / "whole" / "model.safetensors"))
    blocks: dict[str, torch.Tensor] = {}
    index = json.loads((tmp_path / "blocks" / "model.safetensors.index.json").read_text())
    for shard in sorted(set(index["weight_map"].values())):
        blocks.update(symprune.load_safetensors(str(tmp_path / "blocks" / shard)))
    assert blocks.keys() == whole.keys() and set(index["weight_map"]) == set(whole)
    for name, tensor in whole.items():
        assert torch.equal(blocks[name] == 0, tensor == 0), name
        torch.testing.assert_close(blocks[name], tensor, rtol=1e-5, atol=1e-6)
    report = PruneReport.from_json(tmp_path / "blocks" / "symprune_report.json")
    assert report.command == "prune" and report.extra["low_memory"] and report.overall_sparsity > 0.4
    assert AutoModelForCausalLM.from_pretrained(tmp_path / "blocks") is not None
    assert (tmp_path / "blocks" / "tokenizer.json").exists() or (tmp_path / "blocks" / "tokenizer_config.json").exists()


def test_low_memory_prune_refuses_what_needs_the_whole_model(tiny_model_dir: Path, tmp_path: Path,
                                                            capsys: pytest.CaptureFixture[str]) -> None:
    out = str(tmp_path / "out")
    for extra, message in [(["--method", "wanda", "--sparsity", "0.5", "--eval", "x.txt"], "--eval needs the whole"),
                           (["--method", "magnitude", "--sparsity", "0.5"], "symprune apply"),
                           (["--method", "wanda", "--sparsity", "0.5", "--owl"], "--owl and --permute")]:
        assert main(["prune", str(tiny_model_dir), out, *extra, "--low-memory", "--quiet"]) == 2
        assert message in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_low_memory_prune_interrupted_leaves_nothing(tiny_model_dir: Path, text_files: tuple[Path, Path],
                                                      tmp_path: Path) -> None:
    """SIGTERM after the first block's shard is written: exit 143, no OUT_DIR, no temporary
    folder; the next run writes the folder."""
    import signal

    out = tmp_path / "out"
    args = [*_prune_args(tiny_model_dir, out, text_files[0], "--sparsity", "0.5"), "--low-memory"]
    proc = _stalled_after("symprune.prune_blocks", "save_safetensors", args)  # once the first shard is written
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 128 + signal.SIGTERM and "terminated (SIGTERM)" in err, err
    assert list(tmp_path.iterdir()) == []
    assert main(args) == 0
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]
