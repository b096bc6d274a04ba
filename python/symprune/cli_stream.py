"""``symprune calibrate`` and ``symprune apply``: pruning a checkpoint without loading it whole."""

from __future__ import annotations

import argparse
import json
import logging
from pathlib import Path
from typing import Any

from symprune import distributed
from symprune._C import check_output_location
from symprune.models import resolve_model_dir
from symprune.cli_common import (
    CliError,
    OptionError,
    add_bos,
    add_calibration_options,
    add_common,
    add_device,
    add_pruning_options,
    calibration_file,
    check_context,
    check_memory,
    existing_file,
    load_calib_windows,
)

log = logging.getLogger("symprune")


def _refuse_unstreamable(args: argparse.Namespace) -> None:
    """The recipe checks of calibrate and the engine, made before anything is read (exit 2)."""
    from symprune.calibrate import refuse_unstreamable

    try:
        refuse_unstreamable(args.recipe)
    except ValueError as err:
        raise OptionError(str(err)) from None


def cmd_calibrate(args: argparse.Namespace) -> None:
    from symprune.calibrate import calibrate
    from symprune.models import load_tokenizer

    _refuse_unstreamable(args)
    model_dir, out = resolve_model_dir(args.model_dir), Path(args.out)
    calib = calibration_file(args)
    check_output_location(str(model_dir), str(out))
    check_context(model_dir, "--seqlen", args.seqlen, args.bos)
    check_memory(model_dir, args.device, whole_model=False, calibration=(args.nsamples, args.seqlen + args.bos))
    if out.exists() and not args.overwrite:
        raise CliError(f"{out} exists; pass --overwrite to replace it")
    if not out.parent.is_dir():
        raise CliError(f"folder of --out does not exist: {out.parent}")
    tokenizer = load_tokenizer(model_dir)
    windows = load_calib_windows(calib, tokenizer, args.nsamples, args.seqlen, args.seed, args.bos)
    result = calibrate(model_dir, windows, prune=args.recipe, progress=not args.quiet, device=args.device)
    result.metadata.update(calib=calib.name, seed=str(args.seed))
    if result.report is not None:
        result.report.extra.update(model_dir=str(model_dir), calib=str(calib), seed=args.seed,
                                   ranks=distributed.rank_and_world()[1])
    distributed.together(lambda: result.save(out) if distributed.is_main() else None)
    if distributed.is_main():
        layers = len(result.tensors) // 6
        print(f"statistics of {layers} Linear layers over {result.metadata['tokens']} tokens "
              f"({result.metadata['propagation']}) in {result.seconds:.1f} s, peak RSS "
              f"{result.peak_rss_mb:.0f} MB")
        log.info("wrote %s", out)


def cmd_apply(args: argparse.Namespace) -> None:
    from symprune.stream import prune_checkpoint

    _refuse_unstreamable(args)
    stats = existing_file(args.stats, "statistics file") if args.stats else None
    model_dir = resolve_model_dir(args.model_dir, require_config=False)
    if not (model_dir / "config.json").is_file() and distributed.is_main():
        log.warning("%s has no config.json: the pruned copy will not be loadable by transformers either",
                    model_dir)
    report = prune_checkpoint(
        model_dir, args.out_dir, args.recipe, stats=stats, include=args.include, resume=args.resume, overwrite=args.overwrite,
        durable=not args.no_fsync, device=args.device, progress=not args.quiet,
        allow_other_recipe=args.allow_other_recipe,
    )
    if distributed.is_main():
        _print_apply_report(report)
        log.info("wrote %s", args.out_dir)


def _print_apply_report(report: dict[str, Any]) -> None:
    sparsity = report["pruned_zeros"] / report["pruned_numel"] if report["pruned_numel"] else 0.0
    resumed = f", {report['shards_resumed']} kept from the interrupted run" if report["shards_resumed"] else ""
    print(f"{report['tensors_pruned']} tensors pruned (sparsity {sparsity:.4f}), "
          f"{report['tensors_copied']} copied, {report['shards']} shards{resumed}; "
          f"{report['bytes'] / 2**30:.2f} GiB in {report['seconds']:.1f} s")
    print(json.dumps(report))


def add_stream_commands(sub: Any) -> None:
    c = sub.add_parser(
        "calibrate", help="activation statistics of every Linear, one block in memory at a time",
        description="Run the calibration text through MODEL_DIR block by block (only one decoder "
        "block's weights in memory) and save the activation statistics of every Linear, keyed by weight "
        "name, for `symprune apply`. With --method and --sparsity/--nm each block is pruned in "
        "memory before it feeds the next, exactly as `symprune prune` does, so `apply` with the "
        "same options gives the same model; without, activations flow through the dense model. "
        "Example: symprune calibrate model/ --calib news.txt --out stats.safetensors",
    )
    c.add_argument("model_dir", metavar="MODEL_DIR", help="Hugging Face folder with safetensors weights")
    c.add_argument("--out", required=True, metavar="FILE", help="statistics file to write (.safetensors)")
    add_calibration_options(c)
    add_pruning_options(c, required=False)
    c.add_argument("--overwrite", action="store_true", help="replace an existing --out file")
    add_device(c, "the forwards and the pruning run, one block at a time (statistics are summed on the CPU)")
    add_bos(c)
    add_common(c)
    c.set_defaults(func=cmd_calibrate)

    a = sub.add_parser(
        "apply", help="prune a checkpoint tensor by tensor with bounded memory",
        description="Stream MODEL_DIR's safetensors shards tensor by tensor into OUT_DIR: every "
        "2-D weight with statistics in --stats is pruned (data-free methods without --stats: "
        "every 2-D weight matching --include), every other tensor and file (config, tokenizer) "
        "is copied byte for byte. Memory stays at a few tensors. Files appear only when complete; "
        "after an interruption rerun with --resume. Example: symprune apply model/ out/ "
        "--stats stats.safetensors --method wanda --nm 2:4",
    )
    a.add_argument("model_dir", metavar="MODEL_DIR", help="Hugging Face folder with safetensors weights")
    a.add_argument("out_dir", metavar="OUT_DIR", help="where the pruned folder goes (not MODEL_DIR)")
    add_pruning_options(a)
    a.add_argument("--stats", metavar="FILE", help="statistics from `symprune calibrate`")
    a.add_argument("--include", metavar="REGEX",
                   help="weights to prune, by name (searched): without --stats the 2-D weights of the decoder "
                   "blocks by default; with --stats, of the weights that have statistics, those that match")
    a.add_argument("--allow-other-recipe", action="store_true",
                   help="use statistics calibrated through another recipe than this one (for experts: the "
                   "weights then differ from what `symprune prune` writes)")
    a.add_argument("--resume", action="store_true", help="continue an interrupted run of the same job")
    a.add_argument("--overwrite", action="store_true", help="allow a non-empty OUT_DIR")
    a.add_argument("--no-fsync", action="store_true",
                   help="do not wait for each file to reach the disk: faster where fsync is slow; files "
                   "still appear only when complete if symprune dies, but not after a power loss")
    add_device(a, "weights are pruned (on a GPU through pinned buffers and separate streams for copies "
               "and pruning; files are read and written by the CPU)")
    add_common(a)
    a.set_defaults(func=cmd_apply)
