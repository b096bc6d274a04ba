"""Pieces shared by the command-line commands: errors, argument types, calibration windows."""

from __future__ import annotations

import argparse
import math
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from symprune import distributed
from symprune.checkpoint import CheckpointFolder
from symprune.data import (
    CALIBRATION_FILE,
    DATA_ENV,
    EVALUATION_FILE,
    calibration_windows,
    evaluation_windows,
    protocol_text,
    tokenize_file,
    with_bos,
)
from symprune.report import REPORT_FILE, PruneReport
from symprune._C import (
    APPLY_JOB_FILE, Recipe, check_output_location, methods, refine_option_keys, refinements, targets, updates,
)


class CliError(Exception):
    """A user-facing error: printed as one line, exit status 1."""


class OptionError(CliError):
    """An option value that does not fit the model or the machine (windows beyond the model's
    context or beyond memory): one line, exit status 2, like a recipe error."""



# --------------------------------------------------------------------------- helpers


def parse_value(text: str) -> Any:
    """Turn an option value from the command line into None/bool/int/float/str."""
    lowered = text.lower()
    if lowered in ("none", "null"):
        return None
    if lowered in ("true", "false"):
        return lowered == "true"
    for kind in (int, float):
        try:
            return kind(text)
        except ValueError:
            pass
    return text


def parse_options(items: Sequence[str] | None, flag: str) -> dict[str, Any]:
    options: dict[str, Any] = {}
    for item in items or ():
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise ValueError(f"{flag} expects KEY=VALUE, got {item!r}")
        options[key.strip()] = parse_value(value.strip())
    return options


def existing_file(path: str, what: str) -> Path:
    p = Path(path)
    if not p.is_file():
        raise CliError(f"{what} not found: {p}")
    return p


def prepare_out_dir(model_dir: Path, out_dir: Path, overwrite: bool) -> None:
    """Refuse outputs that would destroy the input model or unrelated files."""
    check_output_location(str(model_dir), str(out_dir))
    dst = out_dir.resolve()
    if dst.exists() and not dst.is_dir():
        raise CliError(f"OUT_DIR {out_dir} exists and is not a folder")
    if dst.is_dir() and any(dst.iterdir()):
        if not overwrite:
            raise CliError(f"OUT_DIR {out_dir} is not empty; pass --overwrite to replace it")
        if not written_by_symprune(dst):
            raise CliError(f"OUT_DIR {out_dir} is not empty and was not written by symprune (no {REPORT_FILE}, "
                           "no apply job file); --overwrite replaces only symprune's output folders")


def written_by_symprune(folder: Path) -> bool:
    """A folder that ``prune`` or ``apply`` wrote (its report), or an unfinished ``apply`` (its job file)."""
    if (folder / APPLY_JOB_FILE).is_file():
        return True
    try:
        PruneReport.from_json(folder / REPORT_FILE)
    except (OSError, ValueError, TypeError, KeyError):
        return False
    return True


def windows_with_bos(windows: torch.Tensor, tokenizer: Any, bos: bool) -> torch.Tensor:
    if not bos:
        return windows
    if tokenizer.bos_token_id is None:
        raise CliError("--bos given but the tokenizer has no BOS token")
    return with_bos(windows, tokenizer.bos_token_id)


def _text_config(model_dir: Path) -> Any:
    from transformers import AutoConfig

    config = AutoConfig.from_pretrained(model_dir)
    return getattr(config, "text_config", None) or config


def _config_int(config: Any, *keys: str) -> int | None:
    return next((getattr(config, key) for key in keys if isinstance(getattr(config, key, None), int)), None)


def check_context(model_dir: Path, flag: str, seqlen: int, bos: bool) -> None:
    """Refuse windows longer than the model's context (its config's max_position_embeddings):
    past it, some models fail (OPT's position table), others silently extrapolate."""
    limit = _config_int(_text_config(model_dir), "max_position_embeddings", "n_positions", "max_sequence_length")
    tokens = seqlen + int(bos)
    if limit is not None and tokens > limit:
        raise OptionError(f"{flag} {seqlen}{' + BOS' if bos else ''} exceeds the model's context of {limit} tokens")


def check_memory(model_dir: Path, device: str | torch.device, *, whole_model: bool, calibration: tuple[int, int] | None = None,
                 evaluation_seqlen: int | None = None, lighter: str | None = None) -> None:
    """Refuse, before loading anything, a run whose estimated peak memory exceeds what the
    device has available (the OOM killer would end it without a word, perhaps hours in).

    The estimate is deliberately simple: the fp32 model (``whole_model``: prune and eval load
    it all; calibrate one block at a time), the calibration windows ``(n, seqlen)`` three times
    over (block inputs, dense and pruned outputs, kept for every window), and for evaluation
    one window's logits three times over and its causal mask. Ranks of a torchrun launch on
    one machine share its memory. ``lighter``: the command's own way not to hold the whole
    model, suggested where that is what would make the run fit. ``SYMPRUNE_NO_MEMORY_CHECK=1`` skips the check."""
    if os.environ.get("SYMPRUNE_NO_MEMORY_CHECK") == "1":
        return
    device = str(device)
    available = _available_bytes(device)
    if available is None:
        return
    config = _text_config(model_dir)
    hidden = _config_int(config, "hidden_size", "d_model", "n_embd") or 0
    vocab = _config_int(config, "vocab_size") or 0
    _, world = distributed.rank_and_world()
    local = int(os.environ.get("LOCAL_WORLD_SIZE", "1")) if device == "cpu" else 1
    parts = {"model": 4 * CheckpointFolder(model_dir).float_elements if whole_model else 0}
    if calibration is not None:
        windows, seqlen = calibration
        parts["calibration activations"] = 3 * 4 * hidden * seqlen * math.ceil(windows / world)
    if evaluation_seqlen is not None:
        parts["one evaluation window"] = 3 * 4 * vocab * evaluation_seqlen + 4 * evaluation_seqlen**2
    need = local * sum(parts.values())
    if need > available:
        detail = " + ".join(f"{what} {size / 2**30:.1f} GiB" for what, size in parts.items() if size)
        model = local * parts["model"]
        if model and need - model <= available:  # the windows fit once the whole model is not held
            remedy = lighter or "this run must hold the whole model: it needs more memory"
        else:
            remedy = "use fewer or shorter windows" + (f", and {lighter}" if lighter and model > available else "")
        raise OptionError(
            f"this run needs about {need / 2**30:.1f} GiB on {device} ({detail}"
            + (f", times {local} ranks" if local > 1 else "") + f"), more than the {available / 2**30:.1f} GiB "
            f"available; {remedy} (or SYMPRUNE_NO_MEMORY_CHECK=1 to try anyway)")


def _available_bytes(device: str) -> int | None:
    """Memory the device can still give this process: MemAvailable on the CPU (Linux), free
    memory on a GPU; None where unknown."""
    if device.startswith("cuda"):
        if not torch.cuda.is_available():
            return None
        return torch.cuda.mem_get_info(torch.device(device))[0]
    try:
        with open("/proc/meminfo", encoding="ascii") as meminfo:
            for line in meminfo:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        return None
    return None


def load_eval_windows(path: Path, tokenizer: Any, nwindows: int, seqlen: int, bos: bool) -> torch.Tensor:
    return windows_with_bos(
        evaluation_windows(tokenize_file(path, tokenizer), nwindows, seqlen), tokenizer, bos
    )


def load_calib_windows(
    path: Path, tokenizer: Any, nsamples: int, seqlen: int, seed: int, bos: bool
) -> torch.Tensor:
    return windows_with_bos(
        calibration_windows(tokenize_file(path, tokenizer), nsamples, seqlen, seed),
        tokenizer, bos,
    )


# --------------------------------------------------------------------------- argument types


def positive(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not an integer: {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {value}")
    return value


def add_common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--quiet", action="store_true", help="no progress bars")


def device_type(text: str) -> torch.device:
    """--device: cpu or cuda[:N], refused up front when this torch cannot use it."""
    try:
        device = torch.device(text)
    except RuntimeError:
        raise argparse.ArgumentTypeError(f"not a device: {text!r} (cpu or cuda[:N])") from None
    if device.type == "cpu":
        return device
    if device.type != "cuda":
        raise argparse.ArgumentTypeError(f"device must be cpu or cuda, got {text}")
    if not torch.cuda.is_available():
        raise argparse.ArgumentTypeError(f"{text}: torch sees no CUDA GPU (this torch: {torch.__version__})")
    if device.index is not None and device.index >= torch.cuda.device_count():
        raise argparse.ArgumentTypeError(f"{text}: there are only {torch.cuda.device_count()} CUDA GPUs")
    return device


def add_device(p: argparse.ArgumentParser, what: str = "the model runs and is pruned") -> None:
    p.add_argument("--device", type=device_type, default=torch.device("cpu"), metavar="DEVICE",
                   help=f"where {what}: cpu (default) or cuda[:N]")


def add_bos(p: argparse.ArgumentParser) -> None:
    p.add_argument("--bos", action="store_true",
                   help="prepend the BOS token to every window (Gemma-3 needs it)")




def add_pruning_options(p: argparse.ArgumentParser, *, required: bool = True) -> None:
    """--method, --sparsity/--nm, --group, --refine and their options: the fields of a Recipe,
    built and checked by :func:`recipe_from_args`."""
    p.add_argument("--method", required=required, choices=methods(),
                   help="importance score: magnitude and symmetric are data-free; wanda, ria, "
                   "stochria use input activations; owanda/symwanda also outputs; sparsegpt and admm choose "
                   "the mask and re-solve the kept weights from the Gram of the inputs")
    pattern = p.add_mutually_exclusive_group(required=required)
    pattern.add_argument("--sparsity", type=float,
                         help="fraction of weights pruned (0.5 = half), per --group")
    pattern.add_argument("--nm", metavar="N:M",
                         help="semi-structured pattern keeping N of every M inputs, e.g. 2:4")
    p.add_argument("--group", choices=("row", "layer"), default="row",
                   help="with --sparsity: prune each output row equally (row, default) or "
                   "the whole matrix at once (layer)")
    p.add_argument("--refine", choices=refinements(),
                   help="training-free mask refinement: dsnot, or r2dsnot (DSnoT with "
                   "a regularised decision boundary)")
    p.add_argument("--refine-option", action="append", metavar="KEY=VALUE",
                   help=f"option for --refine ({', '.join(refine_option_keys())}; dsnot refines "
                   "attention projections only (skip=mlp) unless given skip=none); repeatable")
    p.add_argument("--score-option", action="append", metavar="KEY=VALUE",
                   help="option of the method: a and p (ria), a, beta and seed (stochria), blocksize and "
                   "percdamp (sparsegpt), rho0, growth, max_iterations, patience and percdamp (admm); "
                   "repeatable")
    p.add_argument("--update", choices=updates(),
                   help="last, re-solve the kept weights: refit = exact least squares on the final mask")
    p.add_argument("--update-option", action="append", metavar="KEY=VALUE",
                   help="option for --update (percdamp, default 0.01); repeatable")
    p.add_argument("--target", choices=targets(),
                   help="what --update refit, sparsegpt and admm make each Linear reproduce: its own dense "
                   "outputs (layer, default) or the dense model's, correcting the residual stream's error "
                   "at the attention and MLP outputs too (residual; Llama-like and OPT models; one more "
                   "stream of hidden states and a forward per stage)")
    p.add_argument("--owl", action="store_true",
                   help="OWL layer sparsity (unstructured --sparsity only): blocks with more outliers keep "
                   "more weights, the model-wide sparsity stays --sparsity")
    p.add_argument("--owl-m", type=float, metavar="M",
                   help="OWL's outlier multiple: |W|*||X|| above M times its block mean is an outlier (5)")
    p.add_argument("--owl-lambda", type=float, metavar="LAMBDA",
                   help="OWL's spread: block sparsities lie within --sparsity -/+ 2*LAMBDA (0.08)")


def recipe_from_args(args: argparse.Namespace) -> Recipe | None:
    """The command's Recipe from its pruning options, validated by the core (ValueError);
    None for a command run without --method (calibrate's dense statistics)."""
    if getattr(args, "method", None) is None:
        given = ("sparsity", "nm", "refine", "refine_option", "score_option", "update", "update_option",
                 "owl_m", "owl_lambda", "target")
        if any(getattr(args, name, None) is not None for name in given) or getattr(args, "group", "row") != "row" \
                or getattr(args, "owl", False):
            raise ValueError("--sparsity, --nm, --group, --refine, --update, --target, --owl and their options "
                             "need --method")
        return None
    sparsity, nm = getattr(args, "sparsity", None), getattr(args, "nm", None)
    if sparsity is None and nm is None:
        raise ValueError("--method needs --sparsity or --nm")
    return Recipe(
        args.method, sparsity, nm=nm, group=getattr(args, "group", "row"),
        permute=getattr(args, "permute", False), refine=getattr(args, "refine", None),
        refine_options=parse_options(getattr(args, "refine_option", None), "--refine-option"),
        score_options=parse_options(getattr(args, "score_option", None), "--score-option"),
        update=getattr(args, "update", None),
        update_options=parse_options(getattr(args, "update_option", None), "--update-option"),
        owl=getattr(args, "owl", False), owl_options=_owl_options(args),
        target=getattr(args, "target", None) or "layer",
    )


def _owl_options(args: argparse.Namespace) -> dict[str, float] | None:
    given = {key: getattr(args, f"owl_{key}", None) for key in ("m", "lambda")}
    options = {key: value for key, value in given.items() if value is not None}
    return options or None


def calibration_file(args: argparse.Namespace) -> Path:
    """--calib, or the protocol's calibration text shipped with symprune."""
    return existing_file(args.calib, "calibration text") if args.calib else \
        existing_file(str(protocol_text(CALIBRATION_FILE)), f"calibration text (pass --calib or fix ${DATA_ENV})")


def evaluation_file(path: str | None) -> Path:
    """``path``, or the protocol's evaluation text shipped with symprune."""
    return existing_file(path, "evaluation text") if path else \
        existing_file(str(protocol_text(EVALUATION_FILE)), f"evaluation text (pass --text or fix ${DATA_ENV})")


def add_text_option(p: argparse.ArgumentParser, flag: str, role: str, name: str) -> None:
    p.add_argument(flag, metavar="FILE",
                   help=f"{role} text (default: {name}, shipped with symprune, or that file in ${DATA_ENV}; "
                   "docs/protocol.md)")


def add_calibration_options(p: argparse.ArgumentParser) -> None:
    """--calib, --nsamples, --seqlen, --seed."""
    add_text_option(p, "--calib", "calibration", CALIBRATION_FILE)
    p.add_argument("--nsamples", type=positive, default=64, help="calibration windows (64)")
    p.add_argument("--seqlen", type=positive, default=512, help="tokens per calibration window (512)")
    p.add_argument("--seed", type=int, default=0, help="seed of the window positions (0)")
