"""Activation statistics of every Linear with one decoder block in memory at a time.

The model is built with its parameters on the meta device (buffers such as rotary tables are
real); the input embeddings are loaded for the capture pass, then each block's weights are
read from the shards when its turn comes and dropped after. Statistics follow the sequential
pipeline of docs/semantics.md: a dense forward with hooks per block. With a recipe the block
is then pruned in memory
and re-run, so the next block sees pruned activations: the statistics are exactly those
``prune_model`` uses, and ``symprune apply`` with the same settings reproduces
``symprune prune``. Without them, activations flow through the dense model.

The statistics file (``save_stats``) holds ``<weight name>.<stat>`` for every stat in
``STAT_NAMES`` plus metadata (``format=symprune-stats``, token and sequence counts, model).
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn
from tqdm.auto import tqdm

from . import distributed
from ._C import Recipe, save_safetensors
from .blocks import capture_block_inputs, find_decoder_blocks
from .block_stats import LinearStats, collect_block_stats
from .checkpoint import CheckpointFolder
from .report import PruneReport, software_versions
from .staged import DenseStream
from .pipeline import (
    as_windows,
    blocks_prefix,
    check_fits,
    new_report,
    peak_rss_mb,
    prune_block,
)

STATS_FORMAT = "symprune-stats"
STAT_NAMES = ("in_sq", "in_norm", "in_mean", "in_var", "out_sq", "out_norm")


@dataclass
class Calibration:
    """Statistics by ``<weight name>.<stat>`` and the file metadata describing them."""

    tensors: dict[str, torch.Tensor] = field(default_factory=dict)
    metadata: dict[str, str] = field(default_factory=dict)
    seconds: float = 0.0
    peak_rss_mb: float = 0.0
    # The run's PruneReport (command "calibrate"): the recipe propagated through (method "dense"
    # without one), per-layer sparsity when pruned, timings, versions.
    report: PruneReport | None = None

    def save(self, path: str | os.PathLike[str]) -> None:
        """Write the statistics file atomically (temporary name, fsync, rename); the report goes
        into its metadata (``report``), read back by ``PruneReport.from_statistics``."""
        metadata = dict(self.metadata)
        if self.report is not None:
            metadata["report"] = self.report.to_json()
        save_safetensors(str(path), self.tensors, metadata)


def build_skeleton(model_dir: str | os.PathLike[str]) -> nn.Module:
    """The model of ``model_dir`` with every parameter on the meta device (no memory)."""
    from accelerate import init_empty_weights
    from transformers import AutoConfig, AutoModelForCausalLM
    from transformers.initialization import no_init_weights

    config = AutoConfig.from_pretrained(model_dir)
    with no_init_weights(), init_empty_weights():
        model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    return model.eval()


def _materialize(module: nn.Module, prefix: str, names: Sequence[str], folder: CheckpointFolder) -> None:
    """Replace the module's meta parameters ``names`` by fp32 tensors from the checkpoint."""
    tensors = folder.load([prefix + name for name in names], dtype=torch.float32)
    module.load_state_dict({name: tensors[prefix + name] for name in names}, strict=False, assign=True)


def _load_outside_blocks(model: nn.Module, blocks_name: str, folder: CheckpointFolder) -> None:
    """Everything before the blocks (embeddings); the output head is never run here."""
    head = model.get_output_embeddings()
    head_name = next((n for n, m in model.named_modules() if m is head), None) if head is not None else None
    skipped = tuple(f"{name}." for name in (blocks_name, head_name) if name)
    names = [n for n, _ in model.named_parameters() if not n.startswith(skipped)]
    _materialize(model, "", names, folder)


def _move_loaded(model: nn.Module, device: torch.device) -> None:
    """Move the parameters and buffers that are not on the meta device (the embeddings, rotary
    tables) to ``device``; ``Module.to`` would fail on the meta ones."""
    for module in model.modules():
        for name, p in module._parameters.items():
            if p is not None and not p.is_meta:
                module._parameters[name] = nn.Parameter(p.to(device), requires_grad=False)
        for name, b in module._buffers.items():
            if b is not None and not b.is_meta:
                module._buffers[name] = b.to(device)


def refuse_unstreamable(recipe: Recipe | None, *, writes_weights: bool = False) -> None:
    """ValueError, naming the command that can, for a recipe that cannot be pruned one block (calibrate)
    or one tensor (apply) at a time. ``writes_weights``: the caller writes each pruned block itself
    (``prune --low-memory``), so recipes that solve weights from the Gram are fine."""
    if recipe is None:
        return
    if recipe.permute:
        raise ValueError(f"recipe '{recipe.describe()}' permutes channels across two Linears, which apply (one "
                         "weight at a time) cannot reproduce: use `symprune prune`")
    if recipe.owl:
        raise ValueError(f"recipe '{recipe.describe()}' uses OWL, whose block sparsities come from a dense pass "
                         "over every block first, which calibrate does not make: use `symprune prune`")
    if recipe.needs_gram and not writes_weights:
        raise ValueError(f"recipe '{recipe.describe()}' needs the Gram of each layer's inputs, which the "
                         "statistics file does not hold (apply could not reproduce it): use `symprune prune "
                         "--low-memory` (one block in memory at a time, each written once pruned)")


def calibrate(
    model_dir: str | os.PathLike[str],
    calibration: torch.Tensor | Sequence[torch.Tensor],
    *,
    prune: Recipe | None = None,
    progress: bool = True,
    device: str | torch.device = "cpu",
    on_block_pruned: Callable[[int, str, nn.Module], None] | None = None,
) -> Calibration:
    """Statistics of every Linear of the decoder blocks of the checkpoint in ``model_dir``.

    Args:
        model_dir: Hugging Face folder with safetensors weights named as the model's parameters.
        calibration: token windows, shape ``(windows, seqlen)``.
        prune: the recipe each block is pruned with before it feeds the next (None: dense).
        device: where the forwards (and the pruning) run, one block at a time: ``cpu`` or
            ``cuda[:N]``; the statistics are accumulated in fp64 on the CPU either way.
        on_block_pruned: called with (index, name, block) once a block is pruned, before its
            weights are dropped (``symprune prune --low-memory`` writes them there). With it,
            recipes that need the Gram (sparsegpt, admm, refit) are accepted: their weights come
            from here, not from the statistics.
    """
    refuse_unstreamable(prune, writes_weights=on_block_pruned is not None)
    start = time.perf_counter()
    windows = as_windows(calibration)
    nsamples, seqlen = len(windows), max(row.numel() for row in windows)
    report = new_report(prune, windows) if prune is not None else None  # of every rank's windows
    windows = distributed.my_share(windows)  # under torchrun; the statistics are summed over the ranks
    folder = CheckpointFolder(model_dir)
    model = build_skeleton(model_dir)
    blocks = find_decoder_blocks(model)
    prefix = blocks_prefix(model, blocks)
    if prune is not None:
        check_fits(blocks, prune)
    _load_outside_blocks(model, prefix, folder)
    _move_loaded(model, torch.device(device))
    result = Calibration()

    with torch.no_grad():
        captured = capture_block_inputs(model, windows, progress=progress)
        hidden = captured.hidden
        dense = DenseStream.start(hidden) if prune is not None and prune.needs_cross else None
        bar = tqdm(list(enumerate(blocks)), desc="calibrating", unit="block", disable=not progress)
        for index, block in bar:
            block_name = f"{prefix}.{index}"

            def record(stats: Mapping[str, LinearStats], block_name: str = block_name) -> None:
                for linear, s in stats.items():
                    weight = f"{block_name}.{linear}.weight"
                    result.tensors.update({
                        f"{weight}.in_sq": s.inputs.in_sq, f"{weight}.in_norm": s.inputs.in_norm,
                        f"{weight}.in_mean": s.inputs.in_mean, f"{weight}.in_var": s.inputs.in_var,
                        f"{weight}.out_sq": s.outputs.out_sq, f"{weight}.out_norm": s.outputs.out_norm,
                    })
                    result.metadata.update(tokens=str(s.inputs.tokens), sequences=str(s.inputs.sequences))

            _materialize(block, f"{block_name}.", [n for n, _ in block.named_parameters()], folder)
            block.to(device)
            if prune is not None:
                hidden = prune_block(index, block, hidden, captured.calls[index], prune, True,
                                     block_name, report, on_stats=record, dense=dense)
                if on_block_pruned is not None:
                    on_block_pruned(index, block_name, block)
            else:
                stats, hidden = collect_block_stats(block, hidden, captured.calls[index], need_outputs=True)
                record(stats)
            block.to("meta")  # drop this block's weights before loading the next
    result.metadata.update(
        format=STATS_FORMAT, version="1", model=Path(model_dir).resolve().name,
        architecture=type(model).__name__, nsamples=str(nsamples), seqlen=str(seqlen),
        propagation="dense" if prune is None else f"pruned: {prune.describe()}",
    )
    if prune is not None:  # apply refuses these statistics for another recipe
        result.metadata["recipe"] = prune.to_json()
    result.seconds = time.perf_counter() - start
    result.peak_rss_mb = peak_rss_mb()
    result.report = report or PruneReport(method="dense", sparsity=None, nm=None, group="row", permute=False,
                                          refine=None, refine_options={}, score_options={}, nsamples=nsamples,
                                          seqlen=seqlen, versions=software_versions())
    result.report.command = "calibrate"
    if report is not None:
        result.report.finish_totals()
    result.report.wall_seconds, result.report.peak_rss_mb = result.seconds, result.peak_rss_mb
    return result

