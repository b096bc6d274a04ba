"""Sequential, block-by-block pruning of a Hugging Face causal LM (SPEC.md §7).

This module only wires models to the core: every score, mask and refinement is computed
by ``symprune.score`` / ``symprune.mask`` / ``symprune.dsnot`` and every statistic by
``symprune.ActivationStats`` / ``symprune.OutputStats``.

Flow: one cheap pass records, for each calibration window, the hidden states entering
block 0 and the exact call (all keyword arguments: masks, position ids, rotary
embeddings, cache flags) the model makes to *every* block (Gemma-3 gives sliding and
global layers different masks and rotary tables, so block 0's call is not enough).
Then, per block: a dense forward with hooks on its Linear layers collects statistics,
every Linear is pruned, and the pruned block is re-run to produce the next block's inputs.
"""

from __future__ import annotations

import math
import sys
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn
from tqdm.auto import tqdm

import symprune
from symprune.blocks import (
    BlockCall,
    block_linears,
    capture_block_inputs,
    find_decoder_blocks,
)
from symprune.report import BlockReport, LayerReport, PruneReport

METHODS: tuple[str, ...] = (
    "magnitude", "wanda", "ria", "stochria", "symwanda", "owanda", "symmetric",
)
REFINES: tuple[str, ...] = ("dsnot", "r2dsnot")
GROUPS: tuple[str, ...] = ("row", "layer")
# Which activation statistics each score needs (the rest are data-free).
_NEEDS_IN_NORM = frozenset({"wanda", "ria", "stochria", "symwanda"})
_NEEDS_OUT_NORM = frozenset({"symwanda", "owanda"})
SCORE_OPTION_KEYS = frozenset({"a", "p", "beta", "seed"})
REFINE_OPTION_KEYS = frozenset(
    {"max_cycles", "threshold", "var_power", "relative", "a", "gamma1", "gamma2", "q", "skip"}
)
# refine_options["skip"]: comma-separated name fragments of Linears left unrefined, e.g.
# "mlp" refines attention projections only (the DSnoT reference code's default).
# R²-DSnoT = DSnoT with these options; caller's refine_options override them. Chosen by
# bench/ablation_r2dsnot.py on held-out calibration text (docs/r2dsnot.md): the regularised
# decision boundary helps, relative importance in either phase did not on SmolLM2.
R2DSNOT_DEFAULTS: dict[str, Any] = {"gamma1": 0.1, "gamma2": 0.0}

# --------------------------------------------------------------------------- settings


@dataclass(frozen=True)
class PruneSettings:
    """Validated pruning options (see :func:`prune_model`)."""

    method: str
    sparsity: float | None
    nm: tuple[int, int] | None
    group: str
    permute: bool
    refine: str | None
    refine_options: dict[str, Any] = field(default_factory=dict)
    score_options: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def create(
        cls,
        method: str,
        sparsity: float | None,
        nm: tuple[int, int] | None,
        group: str,
        permute: bool,
        refine: str | None,
        refine_options: Mapping[str, Any] | None,
        score_options: Mapping[str, Any] | None,
    ) -> PruneSettings:
        if method not in METHODS:
            raise ValueError(f"unknown method {method!r}; choose one of {', '.join(METHODS)}")
        if (sparsity is None) == (nm is None):
            raise ValueError("give exactly one of sparsity (e.g. 0.5) or nm (e.g. (2, 4))")
        if sparsity is not None and not (isinstance(sparsity, (int, float)) and 0 <= sparsity < 1):
            raise ValueError(f"sparsity must be a fraction in [0, 1), got {sparsity!r}")
        if nm is not None:
            nm = parse_nm(nm)
        if group not in GROUPS:
            raise ValueError(f"group must be one of {GROUPS}, got {group!r}")
        if permute and nm is None:
            raise ValueError("permute only applies to N:M patterns (give nm)")
        if permute and refine is not None:
            raise ValueError("refine cannot be combined with permute: DSnoT's N:M groups are "
                             "consecutive columns, not the permuted ones")
        if refine is not None and refine not in REFINES:
            raise ValueError(f"unknown refine {refine!r}; choose one of {', '.join(REFINES)}")
        options = dict(refine_options or {})
        if options and refine is None:
            raise ValueError("refine_options given without refine ('dsnot' or 'r2dsnot')")
        _check_keys("refine_options", options, REFINE_OPTION_KEYS)
        if refine == "r2dsnot":
            options = {**R2DSNOT_DEFAULTS, **options}
        scores = dict(score_options or {})
        _check_keys("score_options", scores, SCORE_OPTION_KEYS)
        return cls(method, None if sparsity is None else float(sparsity), nm, group,
                   bool(permute), refine, options, scores)


def parse_nm(value: str | Sequence[int]) -> tuple[int, int]:
    """Parse an N:M pattern, ``"2:4"`` or ``(2, 4)``: keep N of every M (1 <= N < M)."""
    if isinstance(value, str):
        parts = value.split(":")
        if len(parts) != 2 or not all(p.strip().isdigit() for p in parts):
            raise ValueError(f"N:M pattern must look like '2:4', got {value!r}")
        n, m = (int(p) for p in parts)
    else:
        if len(value) != 2:
            raise ValueError(f"nm must be a pair (n, m), got {value!r}")
        n, m = (int(v) for v in value)
    if not 1 <= n < m:
        raise ValueError(f"N:M needs 1 <= N < M (keep N of every M), got {n}:{m}")
    return n, m


def _check_keys(what: str, options: Mapping[str, Any], allowed: frozenset[str]) -> None:
    unknown = set(options) - allowed
    if unknown:
        raise ValueError(
            f"unknown {what} {sorted(unknown)}; allowed: {', '.join(sorted(allowed))}"
        )


# --------------------------------------------------------------------------- statistics


@dataclass
class LinearStats:
    """Calibration statistics of one Linear: inputs always, outputs when a score needs them."""

    inputs: Any  # symprune.ActivationStats
    outputs: Any | None  # symprune.OutputStats


def _sequences(x: torch.Tensor) -> Iterator[torch.Tensor]:
    """Split activations into single sequences: DSnoT's variance is per sequence."""
    if x.dim() <= 2:
        yield x
    else:
        yield from x.reshape(-1, x.shape[-2], x.shape[-1])


def collect_block_stats(
    block: nn.Module,
    hidden: Sequence[torch.Tensor],
    calls: Sequence[BlockCall],
    *,
    need_outputs: bool,
) -> tuple[dict[str, LinearStats], list[torch.Tensor]]:
    """Dense forward of every window through ``block`` with hooks on its Linears.

    Returns the statistics per Linear name and the dense block outputs.
    """
    linears = block_linears(block)
    stats = {
        name: LinearStats(
            symprune.ActivationStats(m.in_features),
            symprune.OutputStats(m.out_features) if need_outputs else None,
        )
        for name, m in linears.items()
    }

    def hook(name: str) -> Any:
        entry = stats[name]

        def fn(module: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any], out: Any) -> None:
            x = args[0] if args else kwargs["input"]
            for seq in _sequences(x.detach()):
                entry.inputs.update(seq)
            if entry.outputs is not None:
                for seq in _sequences(out.detach()):
                    entry.outputs.update(seq)

        return fn

    handles = [m.register_forward_hook(hook(name), with_kwargs=True) for name, m in linears.items()]
    try:
        outputs = [call.run(block, h) for h, call in zip(hidden, calls)]
    finally:
        for handle in handles:
            handle.remove()
    return stats, outputs


# --------------------------------------------------------------------------- pruning


def _score_inputs(settings: PruneSettings, stats: LinearStats) -> dict[str, Any]:
    kwargs: dict[str, Any] = dict(settings.score_options)
    if settings.method in _NEEDS_IN_NORM:
        kwargs["in_norm"] = stats.inputs.in_norm
    if settings.method in _NEEDS_OUT_NORM:
        kwargs["out_norm"] = stats.outputs.out_norm
    return kwargs


def linear_mask(
    weight: torch.Tensor, stats: LinearStats, settings: PruneSettings, name: str = ""
) -> tuple[torch.Tensor, int]:
    """Score, mask and optionally refine one Linear weight (left unchanged).

    Returns the keep mask (True = kept) and how many mask entries refinement flipped.
    With ``permute`` the mask is N:M in the permuted column order only.
    """
    weight = weight.detach()
    score = symprune.score(weight, settings.method, **_score_inputs(settings, stats))
    keep = symprune.mask(score, settings.sparsity, nm=settings.nm, group=settings.group,
                         permute=settings.permute)
    if settings.permute:
        keep, _ = keep
    options = dict(settings.refine_options)
    skipped = [part for part in str(options.pop("skip", "") or "").split(",") if part]
    if settings.refine is None or any(part in name for part in skipped):
        return keep, 0
    if settings.nm is not None:
        # DSnoT's N:M branch picks prune candidates by the score that built the mask.
        options["initial_score"] = score
    refined = symprune.dsnot(
        weight, keep, in_norm=stats.inputs.in_norm, in_mean=stats.inputs.in_mean,
        in_var=stats.inputs.in_var, nm=settings.nm, **options,
    )
    return refined, int((refined != keep).sum())


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


def check_nm_fits(blocks: nn.ModuleList, nm: tuple[int, int] | None) -> None:
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


def blocks_prefix(model: nn.Module, blocks: nn.ModuleList) -> str:
    """The blocks' qualified name in ``model``, e.g. ``model.layers``."""
    return next(name for name, m in model.named_modules() if m is blocks)


def new_report(settings: PruneSettings, windows: Sequence[torch.Tensor]) -> PruneReport:
    """An empty report describing ``settings`` and the calibration windows."""
    return PruneReport(
        method=settings.method, sparsity=settings.sparsity, nm=settings.nm,
        group=settings.group, permute=settings.permute, refine=settings.refine,
        refine_options=dict(settings.refine_options), score_options=dict(settings.score_options),
        nsamples=len(windows), seqlen=max(row.numel() for row in windows),
    )


def prune_model(
    model: nn.Module,
    calibration: torch.Tensor | Sequence[torch.Tensor],
    *,
    method: str,
    sparsity: float | None = None,
    nm: tuple[int, int] | str | None = None,
    group: str = "row",
    permute: bool = False,
    refine: str | None = None,
    refine_options: Mapping[str, Any] | None = None,
    score_options: Mapping[str, Any] | None = None,
    progress: bool = True,
) -> PruneReport:
    """Prune every Linear inside the decoder blocks of ``model``, in place.

    Args:
        model: a Hugging Face causal LM (Llama, Mistral, Qwen2/3, Gemma-3 text, OPT, ...).
        calibration: token windows, shape ``(windows, seqlen)`` (see ``data.calibration_windows``).
        method: score, one of ``METHODS``.
        sparsity: fraction pruned per row (``group="row"``) or per matrix (``"layer"``).
        nm: N:M pattern instead of ``sparsity``, e.g. ``(2, 4)`` or ``"2:4"`` keeps 2 of 4.
        permute: RIA's channel permutation for N:M (the mask is N:M only in permuted order).
        refine: ``"dsnot"`` or ``"r2dsnot"`` (DSnoT with ``R2DSNOT_DEFAULTS``).
        refine_options: keyword options of ``symprune.dsnot`` (``REFINE_OPTION_KEYS``).
        score_options: keyword options of ``symprune.score`` (``a``, ``p``, ``beta``, ``seed``).
        progress: show tqdm bars.

    Embeddings, norms, biases and ``lm_head`` are never touched.
    """
    settings = PruneSettings.create(method, sparsity, nm, group, permute, refine,
                                    refine_options, score_options)
    windows = as_windows(calibration)
    blocks = find_decoder_blocks(model)
    check_nm_fits(blocks, settings.nm)
    prefix = blocks_prefix(model, blocks)
    report = new_report(settings, windows)
    need_outputs = settings.method in _NEEDS_OUT_NORM
    was_training = model.training
    model.eval()
    start = time.perf_counter()
    try:
        with torch.no_grad():
            t = time.perf_counter()
            captured = capture_block_inputs(model, windows, progress=progress)
            report.capture_seconds = time.perf_counter() - t
            hidden = captured.hidden
            bar = tqdm(list(enumerate(blocks)), desc=f"pruning ({settings.method})",
                       unit="block", disable=not progress)
            for index, block in bar:
                hidden = prune_block(index, block, hidden, captured.calls[index], settings,
                                      need_outputs, f"{prefix}.{index}", report)
    finally:
        model.train(was_training)
    report.wall_seconds = time.perf_counter() - start
    report.peak_rss_mb = peak_rss_mb()
    report.finish_totals()
    return report


def prune_block(
    index: int,
    block: nn.Module,
    hidden: list[torch.Tensor],
    calls: Sequence[BlockCall],
    settings: PruneSettings,
    need_outputs: bool,
    block_name: str,
    report: PruneReport,
    on_stats: Callable[[dict[str, LinearStats]], None] | None = None,
) -> list[torch.Tensor]:
    """Prune one block; return its pruned outputs (the next block's inputs).

    ``on_stats`` receives the block's statistics (by Linear name) before pruning.
    """
    block_start = time.perf_counter()
    stats, dense_out = collect_block_stats(block, hidden, calls, need_outputs=need_outputs)
    report.dense_forward_seconds += time.perf_counter() - block_start
    if on_stats is not None:
        on_stats(stats)

    t = time.perf_counter()
    for name, layer in block_linears(block).items():
        weight = layer.weight.detach()
        dense_zeros = weight.numel() - int(torch.count_nonzero(weight))
        keep, changed = linear_mask(weight, stats[name], settings, name=f"{block_name}.{name}")
        dense, lost = _energies(weight, keep, stats[name].inputs.in_sq)
        weight.masked_fill_(~keep.to(weight.device), 0)
        zeros = weight.numel() - int(torch.count_nonzero(weight))
        report.layers.append(LayerReport(
            name=f"{block_name}.{name}", block=index, shape=tuple(weight.shape),
            numel=weight.numel(), dense_zeros=dense_zeros, zeros=zeros,
            sparsity=zeros / weight.numel(),
            recon_error=math.sqrt(lost / dense) if dense > 0 else 0.0, changed=changed,
        ))
    report.prune_seconds += time.perf_counter() - t
    del stats

    t = time.perf_counter()
    pruned_out = [call.run(block, h) for h, call in zip(hidden, calls)]
    report.pruned_forward_seconds += time.perf_counter() - t
    report.blocks.append(BlockReport(index, _output_error(pruned_out, dense_out),
                                     time.perf_counter() - block_start))
    return pruned_out
