"""Sequential, block-by-block pruning of a Hugging Face causal LM (docs/semantics.md,
"sequential pipeline").

This module only wires models to the core: every weight is pruned by the core's
``symprune.prune`` with a ``symprune.Recipe`` (score, mask, refinement), and every statistic
is accumulated by ``symprune.ActivationStats`` / ``symprune.OutputStats``.

Flow: one cheap pass records, for each calibration window, the hidden states entering
block 0 and the exact call (all keyword arguments: masks, position ids, rotary
embeddings, cache flags) the model makes to *every* block (Gemma-3 gives sliding and
global layers different masks and rotary tables, so block 0's call is not enough).
Then, per block: a dense forward with hooks on its Linear layers collects statistics,
every Linear is pruned, and the pruned block is re-run to produce the next block's inputs.
"""

from __future__ import annotations

import ctypes
import functools
import json
import math
import sys
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn
from tqdm.auto import tqdm

import symprune
from symprune import distributed
from symprune.block_stats import LinearStats, collect_block_stats
from symprune.blocks import (
    BlockCall,
    block_linears,
    capture_block_inputs,
    find_decoder_blocks,
)
from symprune._C import Recipe
from symprune.owl import owl_plan
from symprune.permute import absorbing_producers, permute_channels
from symprune.staged import DenseStream, prune_in_stages, residual_sites
from symprune.report import BlockReport, LayerReport, PruneReport, software_versions


def as_recipe(
    recipe: Recipe | None = None,
    *,
    method: str | None = None,
    sparsity: float | None = None,
    nm: tuple[int, int] | str | None = None,
    group: str = "row",
    permute: bool = False,
    refine: str | None = None,
    refine_options: Mapping[str, Any] | None = None,
    score_options: Mapping[str, Any] | None = None,
    update: str | None = None,
    update_options: Mapping[str, Any] | None = None,
    owl: bool = False,
    owl_options: Mapping[str, Any] | None = None,
    target: str = "layer",
) -> Recipe:
    """``recipe`` itself, or the core's :class:`symprune.Recipe` built (and validated) from the
    keyword arguments; ValueError for an invalid one or for both at once."""
    if recipe is not None:
        given = (method, sparsity, nm, refine, refine_options, score_options, update, update_options,
                 owl_options)
        if any(v is not None for v in given) or permute or owl or group != "row" or target != "layer":
            raise ValueError("give either a recipe or its fields (method, sparsity, ...), not both")
        return recipe
    if method is None:
        raise ValueError("give a recipe or a method (e.g. method='wanda', sparsity=0.5)")
    return Recipe(method, sparsity, nm=nm, group=group, permute=permute, refine=refine,
                  refine_options=None if refine_options is None else dict(refine_options),
                  score_options=None if score_options is None else dict(score_options),
                  update=update, update_options=None if update_options is None else dict(update_options),
                  owl=owl, owl_options=None if owl_options is None else dict(owl_options), target=target)


# --------------------------------------------------------------------------- pruning


def prune_linear(weight: torch.Tensor, stats: LinearStats, recipe: Recipe, name: str) -> Any:
    """The core's ``symprune.prune`` of one Linear weight (left unchanged) with its statistics:
    ``weight`` (the pruned copy), ``keep`` (True = kept, in the original column order also with
    ``permute``), ``refined`` (mask entries the refinement changed) and ``iterations`` (ADMM's).
    ``name`` (the weight's) is matched against the recipe's refine option ``skip``."""
    inputs, outputs, refined = stats.inputs, stats.outputs, recipe.refines(name)
    result = symprune.prune(
        weight, recipe, name=name,
        in_norm=inputs.in_norm if recipe.needs_input_stats else None,
        in_mean=inputs.in_mean if refined else None,
        in_var=inputs.in_var if refined else None,
        out_norm=outputs.out_norm if recipe.needs_output_stats and outputs is not None else None,
        gram=stats.gram.gram if recipe.needs_gram else None,
        cross=stats.cross.sum if recipe.needs_cross else None,
        residual_cross=stats.residual_cross.sum if stats.residual_cross is not None else None,
    )
    return result


def _energies(weight: torch.Tensor, keep: torch.Tensor, in_sq: torch.Tensor) -> tuple[float, float]:
    """(Σ W² · in_sq_j, Σ over pruned entries of W² · in_sq_j): ‖W X‖² and ‖ΔW X‖² without
    cross-channel terms (see LayerReport.recon_error)."""
    w2 = weight.detach().float().square()
    col = in_sq.float().to(w2.device)
    dense = float(torch.mv(w2, col).double().sum())
    lost = float(torch.mv(w2.masked_fill_(keep.to(w2.device), 0), col).double().sum())
    return dense, lost


def _output_error(pruned: Sequence[torch.Tensor], dense: Sequence[torch.Tensor]) -> float:
    num = math.fsum(float((p.double() - d.double()).square().sum()) for p, d in zip(pruned, dense))
    den = math.fsum(float(d.double().square().sum()) for d in dense)
    num, den = distributed.sum_over_ranks([num, den])  # over every rank's windows
    return math.sqrt(num / den) if den > 0 else 0.0


def as_windows(calibration: torch.Tensor | Sequence[torch.Tensor]) -> list[torch.Tensor]:
    if isinstance(calibration, torch.Tensor):
        if calibration.dim() == 1:
            calibration = calibration.unsqueeze(0)
        if calibration.dim() != 2:
            raise ValueError(
                f"calibration must have shape (windows, seqlen), got {tuple(calibration.shape)}"
            )
    rows = [torch.as_tensor(row).reshape(-1).to(torch.long) for row in calibration]
    if not rows:
        raise ValueError("no calibration windows given")
    if any(row.numel() == 0 for row in rows):
        raise ValueError("calibration windows must not be empty")
    return rows


def check_fits(blocks: nn.ModuleList, recipe: Recipe) -> None:
    """ValueError, before anything runs, for blocks that ``recipe`` cannot prune: an N:M pattern
    that does not divide some Linear's inputs, the residual target on blocks it does not know."""
    if recipe.needs_cross:
        for i, block in enumerate(blocks):
            residual_sites(block, i)
    nm = recipe.nm
    if nm is None:
        return
    for i, block in enumerate(blocks):
        for name, layer in block_linears(block).items():
            if layer.in_features % nm[1]:
                raise ValueError(
                    f"N:M {nm[0]}:{nm[1]} needs in_features divisible by {nm[1]}, but block {i} "
                    f"{name} has {layer.in_features}"
                )


def peak_rss_mb() -> float:
    try:
        import resource
    except ImportError:  # not on POSIX
        return 0.0
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / (1024 * 1024) if sys.platform == "darwin" else peak / 1024


def return_freed_memory() -> None:
    """Give the C allocator's free memory back to the system (glibc's malloc_trim; a no-op
    elsewhere). Between blocks: the blocks' temporaries (a Gram's factors, tens of MB each) are
    freed into the allocator's heap, which otherwise keeps them resident, and a later block's
    peak would add to theirs."""
    trim = _malloc_trim()
    if trim is not None:
        trim(0)


@functools.cache
def _malloc_trim() -> Callable[[int], int] | None:
    try:
        return ctypes.CDLL("libc.so.6").malloc_trim
    except (OSError, AttributeError):  # not glibc
        return None


def blocks_prefix(model: nn.Module, blocks: nn.ModuleList) -> str:
    """The blocks' qualified name in ``model``, e.g. ``model.layers``."""
    return next(name for name, m in model.named_modules() if m is blocks)


def new_report(recipe: Recipe, windows: Sequence[torch.Tensor]) -> PruneReport:
    """An empty report describing ``recipe`` and the calibration windows."""
    return PruneReport(
        method=recipe.method, sparsity=recipe.sparsity, nm=recipe.nm,
        group=recipe.group, permute=recipe.permute, refine=recipe.refine, update=recipe.update,
        refine_options=dict(recipe.refine_options), score_options=dict(recipe.score_options),
        nsamples=len(windows), seqlen=max((row.numel() for row in windows), default=0),
        recipe=json.loads(recipe.to_json()), versions=software_versions(),
    )


def prune_model(
    model: nn.Module,
    calibration: torch.Tensor | Sequence[torch.Tensor] | None,
    recipe: Recipe | None = None,
    *,
    method: str | None = None,
    sparsity: float | None = None,
    nm: tuple[int, int] | str | None = None,
    group: str = "row",
    permute: bool = False,
    refine: str | None = None,
    refine_options: Mapping[str, Any] | None = None,
    score_options: Mapping[str, Any] | None = None,
    update: str | None = None,
    update_options: Mapping[str, Any] | None = None,
    owl: bool = False,
    owl_options: Mapping[str, Any] | None = None,
    target: str = "layer",
    progress: bool = True,
) -> PruneReport:
    """Prune every Linear inside the decoder blocks of ``model``, in place.

    Args:
        model: a Hugging Face causal LM (Llama, Mistral, Qwen2/3, Gemma-3 text, OPT, ...).
        calibration: token windows, shape ``(windows, seqlen)`` (see ``data.calibration_windows``);
            None for a data-free recipe (magnitude, symmetric): no forward runs at all.
        recipe: a :class:`symprune.Recipe`; or give its fields as the keyword arguments below.
        method: a score (``symprune.score_methods()``), ``"sparsegpt"`` or ``"admm"``.
        sparsity: fraction pruned per row (``group="row"``) or per matrix (``"layer"``).
        nm: N:M pattern instead of ``sparsity``, e.g. ``(2, 4)`` or ``"2:4"`` keeps 2 of 4.
        permute: RIA's channel permutation for N:M, made deployable: the MLP's down projection
            (fc2) is pruned in permuted order and its input channels, with the rows of the
            Linears that produce them, are permuted in place, so every weight is N:M as stored
            and the model computes the same function; other Linears keep the unpermuted mask
            (``LayerReport.permuted`` says which were permuted).
        refine: ``"dsnot"`` or ``"r2dsnot"`` (DSnoT with ``symprune.r2dsnot_defaults()``).
        refine_options: options of the refinement (``symprune.refine_option_keys()``), e.g.
            ``{"skip": "mlp"}`` to refine attention projections only.
        score_options: options that the method reads (ria: ``a``, ``p``; stochria: ``a``,
            ``beta``, ``seed``; sparsegpt: ``blocksize``, ``percdamp``; admm: ``rho0``,
            ``growth``, ``max_iterations``, ``patience``, ``percdamp``).
        update: ``"refit"``: the exact least-squares refit of the kept weights, last.
        update_options: ``{"percdamp": ...}`` (0.01).
        owl: OWL layer sparsity: ``sparsity`` is the model-wide target and each block gets its
            own, from the outlier ratios of the dense model (one extra dense pass).
        owl_options: ``{"m": 5.0, "lambda": 0.08}``: the outlier multiple and the spread.
        target: what the weight solvers (sparsegpt, admm, refit) make each Linear reproduce:
            ``"layer"``, its own dense outputs on the inputs it sees; ``"residual"``, the dense
            model's outputs and, at the attention and MLP output projections, the residual
            stream's error too (Llama-like and OPT blocks; the dense model's hidden states flow
            next to the pruned ones, and each block is pruned in stages, docs/semantics.md).
        progress: show tqdm bars.

    Embeddings, norms, biases and ``lm_head`` are never touched.
    """
    recipe = as_recipe(recipe, method=method, sparsity=sparsity, nm=nm, group=group, permute=permute,
                       refine=refine, refine_options=refine_options, score_options=score_options,
                       update=update, update_options=update_options, owl=owl, owl_options=owl_options,
                       target=target)
    blocks = find_decoder_blocks(model)
    check_fits(blocks, recipe)
    prefix = blocks_prefix(model, blocks)
    if calibration is None:
        return _prune_data_free(blocks, prefix, recipe, progress)
    windows = as_windows(calibration)
    report = new_report(recipe, windows)
    windows = distributed.my_share(windows)  # under torchrun; the statistics are summed over the ranks
    need_outputs = recipe.needs_output_stats
    was_training = model.training
    model.eval()
    start = time.perf_counter()
    try:
        with torch.no_grad():
            t = time.perf_counter()
            captured = capture_block_inputs(model, windows, progress=progress)
            report.capture_seconds = time.perf_counter() - t
            hidden = captured.hidden
            dense = DenseStream.start(hidden) if recipe.needs_cross else None
            block_recipes = [recipe] * len(blocks)
            if recipe.owl:
                t = time.perf_counter()
                plan = owl_plan(blocks, hidden, captured.calls, recipe, progress=progress)
                report.owl = plan.to_dict(recipe)
                report.owl_seconds = time.perf_counter() - t
                block_recipes = [recipe.at_sparsity(s) for s in plan.sparsities]
            bar = tqdm(list(enumerate(blocks)), desc=f"pruning ({recipe.method})",
                       unit="block", disable=not progress)
            for index, block in bar:
                hidden = prune_block(index, block, hidden, captured.calls[index], block_recipes[index],
                                      need_outputs, f"{prefix}.{index}", report, dense=dense)
    finally:
        model.train(was_training)
    report.wall_seconds = time.perf_counter() - start
    report.peak_rss_mb = peak_rss_mb()
    report.finish_totals()
    return report


def prune_linears(
    index: int, block: nn.Module, recipe: Recipe, block_name: str, report: PruneReport,
    stats: dict[str, LinearStats] | None = None,
) -> None:
    """Prune the Linears of one block in place by ``recipe``, with their statistics: those that
    ``stats`` has (None: every Linear, by a data-free recipe without calibration, whose report
    has no ``recon_error``)."""
    t = time.perf_counter()
    linears = block_linears(block)
    if stats is not None:
        linears = {name: layer for name, layer in linears.items() if name in stats}
    # With permute, only Linears whose producers absorb the permutation use it (permute.py).
    absorbing = absorbing_producers(block) if recipe.permute else {}
    unpermuted = recipe.without_permute() if recipe.permute else recipe
    permutations: dict[str, torch.Tensor] = {}
    for name, layer in linears.items():
        weight = layer.weight.detach()
        dense_zeros = weight.numel() - int(torch.count_nonzero(weight))
        weight_name = f"{block_name}.{name}.weight"
        layer_recipe = recipe if name in absorbing else unpermuted
        if stats is None:
            result = symprune.prune(weight, layer_recipe, name=weight_name)
            recon_error = None
        else:
            result = prune_linear(weight, stats[name], layer_recipe, weight_name)
            dense, lost = _energies(weight, result.keep, stats[name].inputs.in_sq)
            recon_error = math.sqrt(lost / dense) if dense > 0 else 0.0
        weight.copy_(result.weight)
        if layer_recipe.needs_gram:
            return_freed_memory()  # a solver's n x n temporaries, before the next Linear's
        if result.permutation is not None:
            permutations[name] = result.permutation
        zeros = weight.numel() - int(torch.count_nonzero(weight))
        report.layers.append(LayerReport(
            name=f"{block_name}.{name}", block=index, shape=tuple(weight.shape),
            numel=weight.numel(), dense_zeros=dense_zeros, zeros=zeros,
            sparsity=zeros / weight.numel(), recon_error=recon_error, changed=result.refined,
            permuted=name in permutations, iterations=result.iterations,
        ))
    for name, permutation in permutations.items():
        permute_channels(linears[name], [linears[p] for p in absorbing[name]], permutation)
    report.prune_seconds += time.perf_counter() - t


def _prune_data_free(blocks: nn.ModuleList, prefix: str, recipe: Recipe, progress: bool) -> PruneReport:
    if not recipe.data_free:
        raise ValueError(f"recipe '{recipe.describe()}' needs calibration windows (only magnitude and "
                         "symmetric are data-free)")
    report = new_report(recipe, [])
    start = time.perf_counter()
    with torch.no_grad():
        for index, block in enumerate(tqdm(blocks, desc=f"pruning ({recipe.method})", unit="block",
                                           disable=not progress)):
            prune_linears(index, block, recipe, f"{prefix}.{index}", report)
    report.wall_seconds = time.perf_counter() - start
    report.peak_rss_mb = peak_rss_mb()
    report.finish_totals()
    return report


def prune_block(
    index: int,
    block: nn.Module,
    hidden: list[torch.Tensor],
    calls: Sequence[BlockCall],
    recipe: Recipe,
    need_outputs: bool,
    block_name: str,
    report: PruneReport,
    on_stats: Callable[[dict[str, LinearStats]], None] | None = None,
    dense: DenseStream | None = None,
) -> list[torch.Tensor]:
    """Prune one block; return its pruned outputs (the next block's inputs).

    ``on_stats`` receives the block's statistics (by Linear name) before pruning. A recipe with
    the residual target needs ``dense``, the dense model's hidden states, which move on a block.
    """
    block_start = time.perf_counter()

    def prune_stage(stats: dict[str, LinearStats]) -> None:
        if on_stats is not None:
            on_stats(stats)
        prune_linears(index, block, recipe, block_name, report, stats)
        distributed.same_on_every_rank([p for n, p in block.named_parameters() if n.rsplit(".", 1)[0] in stats])

    if recipe.needs_cross:
        if dense is None:
            raise ValueError(f"recipe '{recipe.describe()}' needs the dense model's hidden states next to the "
                             "pruned ones (DenseStream)")
        pruned_out, dense_out = prune_in_stages(block, residual_sites(block, index), hidden, dense.hidden, calls,
                                                need_outputs, prune_stage, report)
        dense.hidden = dense_out
    else:
        stats, dense_out = collect_block_stats(block, hidden, calls, need_outputs=need_outputs,
                                               need_gram=recipe.needs_gram)
        report.dense_forward_seconds += time.perf_counter() - block_start
        prune_stage(stats)
        del stats
        return_freed_memory()  # the block's statistics and Grams
        t = time.perf_counter()
        pruned_out = [call.run(block, h) for h, call in zip(hidden, calls)]
        report.pruned_forward_seconds += time.perf_counter() - t
    report.blocks.append(BlockReport(index, _output_error(pruned_out, dense_out),
                                     time.perf_counter() - block_start))
    return pruned_out
