"""Prune a safetensors checkpoint folder tensor by tensor with the core's StreamingPruner.

Memory stays at a few tensors whatever the model size; see ``symprune::StreamingPruner``.
"""

from __future__ import annotations

import os
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from tqdm.auto import tqdm

from . import distributed
from ._C import Recipe, StreamJob
from .pipeline import as_recipe, new_report, peak_rss_mb
from .report import REPORT_FILE


def prune_checkpoint(
    model_dir: str | os.PathLike[str],
    out_dir: str | os.PathLike[str],
    recipe: Recipe | None = None,
    *,
    method: str | None = None,
    sparsity: float | None = None,
    nm: tuple[int, int] | str | None = None,
    group: str = "row",
    refine: str | None = None,
    refine_options: Mapping[str, Any] | None = None,
    score_options: Mapping[str, Any] | None = None,
    stats: str | os.PathLike[str] | None = None,
    include: str | None = None,
    resume: bool = False,
    overwrite: bool = False,
    durable: bool = True,
    device: str | torch.device = "cpu",
    progress: bool = True,
    allow_other_recipe: bool = False,
) -> dict[str, Any]:
    """Write a pruned copy of the checkpoint in ``model_dir`` to ``out_dir``.

    The recipe is a :class:`symprune.Recipe` or the fields it can stream as keyword arguments,
    as in :func:`symprune.prune_model`: no ``permute`` or ``owl``, and nothing that solves weights
    from the Gram (``sparsegpt``, ``admm``, ``update``, hence no residual target;
    ``symprune prune --low-memory`` runs those).

    Every 2-D weight with statistics in ``stats`` (from ``symprune calibrate``) that matches
    ``include`` (if given) is pruned; without statistics (data-free methods only) every 2-D weight
    whose name matches ``include`` (default: the decoder blocks' weights). Statistics are checked
    before anything is written: every one the recipe needs, with the weight's size, finite, and
    non-negative for norms and variances (ValueError naming the statistics file). Other tensors are copied byte for byte, and so are the
    folder's other files (config, tokenizer). ``resume`` keeps the finished shards of an
    interrupted run of the same job. ``durable=False`` skips fsync: faster where fsync is slow,
    and files still appear only when complete if the process dies, but not if the machine
    does (after a power loss, start over rather than resume). ``device="cuda"`` (or ``"cuda:N"``,
    or a ``torch.device``) prunes on the GPU (pinned host buffers, separate streams for the copies
    and the pruning); files are still read and written by the CPU, and a GPU run resumes only on
    a GPU. Other devices, or cuda where torch has none, raise ValueError before anything is
    written. Statistics that ``calibrate`` propagated through a pruned model record its recipe and
    are refused for another one unless ``allow_other_recipe``. Returns the engine's report; ``out_dir/symprune_report.json`` records it with the
    recipe and the software versions, and the job file that allows resuming is removed.

    Under torchrun (torch.distributed initialised) the shards are split between the ranks by
    bytes: each rank validates and writes its own, rank 0 prepares the folder and, once every
    rank is done, writes the index, the other files and the report. If any rank fails, every
    rank stops with an error, the finished shards stay (with their checksums) and ``resume``
    continues, with any number of ranks. The folder is byte-identical to a single process's.
    """
    recipe = as_recipe(recipe, method=method, sparsity=sparsity, nm=nm, group=group, refine=refine,
                       refine_options=refine_options, score_options=score_options)
    bar: tqdm | None = None  # drawn at the first progress report: errors found while planning show no bar

    rank, world = distributed.rank_and_world()

    def report(shard: str, tensor: str, done: int, total: int) -> None:  # every rank: signals are seen here
        nonlocal bar
        if bar is None:
            bar = tqdm(total=total, unit="B", unit_scale=True, disable=not progress or rank != 0,
                       desc=f"pruning ({recipe.method})" + (f", rank 0 of {world}" if world > 1 else ""))
        bar.set_postfix_str(shard, refresh=False)
        bar.update(done - bar.n)

    start = time.perf_counter()
    try:
        job = distributed.together(lambda: StreamJob(
            str(model_dir), str(out_dir), recipe=recipe, stats=None if stats is None else str(stats),
            include=include, resume=resume, overwrite=overwrite, durable=durable, device=str(device),
            progress=report, allow_other_recipe=allow_other_recipe, rank=rank, world=world,
        ))
        resuming = distributed.broadcast_flag(distributed.together(lambda: job.prepare() if rank == 0 else None))
        counts = distributed.together(lambda: job.write(resuming))
        counts.pop("seconds")  # this rank's writing time; the whole run's replaces it below
        result: dict[str, Any] = dict(zip(counts, map(int, distributed.sum_over_ranks(list(counts.values())))))
        distributed.together(lambda: job.finish() if rank == 0 else None)
    finally:
        if bar is not None:
            bar.close()
    result["seconds"] = time.perf_counter() - start
    if world > 1:
        result["ranks"] = world
    if rank == 0:
        _write_report(recipe, result, Path(out_dir))
    return result


def _write_report(recipe: Recipe, result: dict[str, Any], out_dir: Path) -> None:
    """``symprune_report.json`` of a finished run: the recipe, versions and the engine's counts
    (per tensor only in total: the engine streams tensors, it keeps no per-layer record)."""
    report = new_report(recipe, [])
    report.command = "apply"
    report.total_weights = result["pruned_numel"]
    report.pruned_weights = result["pruned_zeros"]
    report.overall_sparsity = result["pruned_zeros"] / result["pruned_numel"] if result["pruned_numel"] else 0.0
    report.wall_seconds = result["seconds"]
    report.peak_rss_mb = peak_rss_mb()
    report.extra = dict(result)
    report.to_json(out_dir / REPORT_FILE)
