"""Pruning one block towards the dense model (the recipe's residual target, docs/semantics.md).

The weight solvers then need, for each Linear, the cross-product of its inputs in the pruned
model X~ with the dense model's inputs X to the same Linear (G = X~^T X) and, where its output
is added to the residual stream, with that stream's error R = h_dense - h_pruned at the addition
(E = X~^T R); the core turns them into the target weights (``symprune.residual_target``).

So the dense model's hidden states flow next to the pruned ones (``DenseStream``), through an
unpruned copy of each block, and a block is pruned in stages: the Linears that read one input
(q/k/v, o, gate/up, down) form a stage, and each stage's statistics come from a forward through
the block with the earlier stages already pruned. Gathered from one forward instead, each stage
would correct again an error that an earlier one has already corrected (docs/dense-targets.md).

The residual additions are known (``ResidualSites``) for Llama-like blocks (Llama, Mistral,
Qwen2/3, SmolLM): ``h + self_attn.o_proj(...)`` on the block's input, then ``h + mlp.down_proj(...)``
on the input of ``post_attention_layernorm``; and for OPT's blocks with their norms before each
branch (every OPT but 350m): ``self_attn.out_proj``, then ``fc2`` on the input of
``final_layer_norm``. Other blocks are refused.
"""

from __future__ import annotations

import copy
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

import symprune
from symprune import distributed
from symprune.block_stats import LinearStats, collect_block_stats, input_key
from symprune.blocks import BlockCall, block_linears
from symprune.report import PruneReport


@dataclass(frozen=True)
class ResidualSites:
    """Where a block adds its two branches to the residual stream: the Linear whose output is
    added to the block's input, the one whose output is added to the stream after that, and the
    module whose input is that stream (after the first addition)."""

    attention: str
    mlp: str
    mid: str


_LAYOUTS = {
    "Llama-like blocks": ResidualSites("self_attn.o_proj", "mlp.down_proj", "post_attention_layernorm"),
    "OPT's blocks": ResidualSites("self_attn.out_proj", "fc2", "final_layer_norm"),
}
# Norms on a branch's output (Gemma's) would sit between the Linear and the addition.
_BRANCH_OUTPUT_NORMS = ("pre_feedforward_layernorm", "post_feedforward_layernorm")
_USE_LAYER = "; use target 'layer' (--target layer) for it"


@dataclass
class DenseStream:
    """The dense model's hidden states entering the next block, one tensor per window."""

    hidden: list[torch.Tensor]

    @classmethod
    def start(cls, hidden: Sequence[torch.Tensor]) -> DenseStream:
        """Both streams enter the first block equal; each block's forwards make new tensors, so
        they can share these."""
        return cls(list(hidden))


class _Reached(Exception):
    """Raised by the pre-hook of the Linear whose input a partial forward was run for."""


def residual_sites(block: nn.Module, index: int) -> ResidualSites:
    """Where ``block`` (block ``index`` of the model) adds its attention and MLP outputs to the
    stream, by its modules' names; ValueError for a block of no known layout, or one that scales,
    normalises or cross-attends around them. ``linear_stages`` then checks the additions on a window."""
    modules = dict(block.named_modules())
    found = [sites for sites in _LAYOUTS.values() if all(n in modules for n in (sites.attention, sites.mlp, sites.mid))]
    where = f"block {index} ({type(block).__name__})"
    if not found:
        known = "; ".join(f"{kind}: {sites.attention}, {sites.mlp}, {sites.mid}" for kind, sites in _LAYOUTS.items())
        raise ValueError(f"target 'residual' knows the residual additions of these layouts ({known}), and {where} "
                         f"has none of them{_USE_LAYER}")
    branch_norms = [name for name in _BRANCH_OUTPUT_NORMS if name in modules]
    problems = [
        (bool(branch_norms), f"normalises a branch's output ({', '.join(branch_norms)})"),
        (not getattr(block, "do_layer_norm_before", True), "normalises the stream after each addition (OPT-350m)"),
        (getattr(block, "residual_multiplier", 1) != 1, "scales each branch's output (residual_multiplier)"),
        ("encoder_attn" in modules, "also attends to an encoder (encoder_attn)"),
    ]
    for found_one, problem in problems:
        if found_one:
            raise ValueError(f"target 'residual' needs each branch's output Linear added to the stream as it is, and "
                             f"{where} {problem}{_USE_LAYER}")
    return found[0]


def linear_stages(block: nn.Module, sites: ResidualSites, hidden: torch.Tensor, call: BlockCall) -> list[list[str]]:
    """The block's Linears grouped by the input they read, in the order the block calls them,
    found by one forward of ``hidden`` (each input is kept alive until the end, so that a freed
    one's memory cannot be reused by a later input and taken for it). The same forward checks
    that the block adds the two output Linears to the stream as ``sites`` says: ValueError if not."""
    linears, modules = block_linears(block), dict(block.named_modules())
    seen: dict[tuple[int, tuple[int, ...], tuple[int, ...]], list[str]] = {}
    alive: list[torch.Tensor] = []
    flows: dict[str, torch.Tensor] = {}

    def record(name: str, x: torch.Tensor) -> None:
        alive.append(x)
        seen.setdefault(input_key(x), []).append(name)

    def keep(key: str, x: torch.Tensor) -> None:
        flows.setdefault(key, x.detach())

    handles = [m.register_forward_pre_hook(lambda _m, args, n=n: record(n, args[0])) for n, m in linears.items()]
    handles += [modules[sites.attention].register_forward_hook(lambda _m, _a, out: keep("attention", out)),
                modules[sites.mlp].register_forward_hook(lambda _m, _a, out: keep("mlp", out)),
                modules[sites.mid].register_forward_pre_hook(lambda _m, args: keep("mid", args[0]))]
    try:
        output = call.run(block, hidden)
    finally:
        for handle in handles:
            handle.remove()
    stages = list(seen.values())
    called = {name for stage in stages for name in stage}
    if called != set(linears):
        raise ValueError(f"the block did not call {sorted(set(linears) - called)} on a calibration window, and the "
                         f"residual target prunes a block in stages of Linears that all run on every window{_USE_LAYER}")
    _check_addition(flows.get("mid"), hidden, flows.get("attention"), f"the input of {sites.mid}", sites.attention)
    _check_addition(output, flows.get("mid"), flows.get("mlp"), "the block's output", sites.mlp)
    return stages


def _check_addition(total: torch.Tensor | None, stream: torch.Tensor | None, branch: torch.Tensor | None, what: str,
                    linear: str) -> None:
    """ValueError unless ``total`` is ``stream + branch`` (as (tokens, features), to rounding)."""
    flat = [None if t is None else t.reshape(-1, t.shape[-1]) for t in (total, stream, branch)]
    if any(t is None or t.shape != flat[0].shape for t in flat) or not torch.allclose(
            flat[0], flat[1] + flat[2], rtol=1e-4, atol=1e-5 * float(flat[0].abs().max())):
        raise ValueError(f"{what} is not the stream plus {linear}'s output, which target 'residual' "
                         f"assumes{_USE_LAYER}")


class _DenseInputs:
    """Partial forwards of the dense block: for one window, the input of one Linear (``"x"``) and
    the stream entering module ``mid`` on the way (``"mid"``)."""

    def __init__(self, reference: nn.Module, linear: str, mid: str) -> None:
        self.reference, self.linear, self.mid = reference, linear, mid
        self.modules = dict(reference.named_modules())
        self.seen: dict[str, torch.Tensor] = {}

    def __call__(self, hidden: torch.Tensor, call: BlockCall) -> dict[str, torch.Tensor]:
        self.seen = {}

        def stop(_module: nn.Module, args: tuple[Any, ...]) -> None:
            self.seen["x"] = args[0].detach()
            raise _Reached

        handles = [self.modules[self.linear].register_forward_pre_hook(stop),
                   self.modules[self.mid].register_forward_pre_hook(
                       lambda _m, args: self.seen.__setitem__("mid", args[0].detach()))]
        try:
            call.run(self.reference, hidden)
        except _Reached:
            pass
        finally:
            for handle in handles:
                handle.remove()
        return self.seen


def _stage_stats(
    block: nn.Module, reference: nn.Module, hidden: Sequence[torch.Tensor], dense_hidden: Sequence[torch.Tensor],
    calls: Sequence[BlockCall], stage: list[str], need_outputs: bool, sites: ResidualSites,
) -> dict[str, LinearStats]:
    """Statistics of one stage's Linears (the block's earlier stages pruned): the usual ones, the
    cross-product with the dense inputs and, at a residual site, with the stream's error."""
    first = stage[0]
    linears = block_linears(block)
    width = linears[first].in_features
    cross = symprune.CrossStats(width, width)
    residual = {name: symprune.CrossStats(width, linears[name].out_features)
                for name in stage if name in (sites.attention, sites.mlp)}
    dense_inputs = _DenseInputs(reference, first, sites.mid)
    stream: dict[str, torch.Tensor] = {}  # the pruned block's stream entering sites.mid
    handle = dict(block.named_modules())[sites.mid].register_forward_pre_hook(
        lambda _m, args: stream.__setitem__("mid", args[0].detach()))

    def on_input(window: int, name: str, x: torch.Tensor) -> None:
        if name != first:
            return
        dense = dense_inputs(dense_hidden[window], calls[window])
        cross.update(x, dense["x"])
        for site, accumulator in residual.items():
            if site == sites.attention:  # added to the stream entering the block
                error = dense_hidden[window] - hidden[window]
            else:
                error = dense["mid"] - stream["mid"]
            accumulator.update(x, error)

    try:
        stats, _ = collect_block_stats(block, hidden, calls, need_outputs=need_outputs, need_gram=True,
                                       names=stage, on_input=on_input)
    finally:
        handle.remove()
    distributed.sum_states([cross, *residual.values()])
    for name in stage:
        stats[name].cross = cross
        stats[name].residual_cross = residual.get(name)
    return stats


def prune_in_stages(
    block: nn.Module,
    sites: ResidualSites,
    hidden: Sequence[torch.Tensor],
    dense_hidden: Sequence[torch.Tensor],
    calls: Sequence[BlockCall],
    need_outputs: bool,
    prune_stage: Callable[[dict[str, LinearStats]], None],
    report: PruneReport,
) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    """Prune ``block`` in place stage by stage, each stage by ``prune_stage(its statistics)``;
    return the pruned block's outputs on ``hidden`` and the dense block's on ``dense_hidden`` (the
    next block's two streams). ``sites``: the block's, from ``residual_sites`` (which the pipeline
    asks of every block before it starts)."""
    reference = copy.deepcopy(block)  # the dense block, for the dense stream
    stages = linear_stages(block, sites, hidden[0], calls[0])
    for stage in stages:
        t = time.perf_counter()
        stats = _stage_stats(block, reference, hidden, dense_hidden, calls, stage, need_outputs, sites)
        report.dense_forward_seconds += time.perf_counter() - t
        prune_stage(stats)
        del stats
    t = time.perf_counter()
    pruned_out = [call.run(block, h) for h, call in zip(hidden, calls)]
    dense_out = [call.run(reference, h) for h, call in zip(dense_hidden, calls)]
    report.pruned_forward_seconds += time.perf_counter() - t
    return pruned_out, dense_out
