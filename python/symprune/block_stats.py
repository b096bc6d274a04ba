"""Calibration statistics of one decoder block: a dense forward of every window with hooks on
its Linears, accumulating the core's ActivationStats / OutputStats / GramStats."""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

import symprune
from symprune import distributed
from symprune.blocks import BlockCall, block_linears


@dataclass
class LinearStats:
    """Calibration statistics of one Linear: inputs always, outputs when a score needs them,
    the Gram of the inputs when the recipe reconstructs weights, and for the residual target the
    cross-products of the inputs with the dense model's inputs and with the residual stream's
    error (where the Linear's output joins that stream)."""

    inputs: Any  # symprune.ActivationStats
    outputs: Any | None  # symprune.OutputStats
    gram: Any | None = None  # symprune.GramStats, shared by the Linears that read the same input
    cross: Any | None = None  # symprune.CrossStats, shared like the Gram
    residual_cross: Any | None = None  # symprune.CrossStats


def input_key(x: torch.Tensor) -> tuple[int, tuple[int, ...], tuple[int, ...]]:
    """What identifies one input tensor during a forward: Linears called with equal keys read the
    same input (while each input is kept alive, its memory cannot be reused by a later one)."""
    return x.data_ptr(), tuple(x.shape), tuple(x.stride())


class SharedGrams:
    """One Gram per distinct input: Linears that read the same tensor (q/k/v, gate/up) share
    one accumulator, updated once per window.

    Inputs are recognised by their memory; each window's inputs are kept alive until the next
    window, so that a later input (the MLP's) cannot reuse a freed one's (the attention's)
    memory and be taken for it."""

    def __init__(self) -> None:
        self.of_linear: dict[str, Any] = {}
        # This window's inputs: (data pointer, shape, strides) -> (the input, its Gram).
        self._inputs: dict[tuple[int, tuple[int, ...], tuple[int, ...]], tuple[torch.Tensor, Any]] = {}
        self._updated: set[int] = set()

    def new_window(self) -> None:
        self._inputs.clear()
        self._updated.clear()

    def update(self, name: str, x: torch.Tensor) -> Any:
        key = input_key(x)
        gram = self.of_linear.get(name)
        if gram is None:  # the first window decides who shares
            gram = self._inputs[key][1] if key in self._inputs else symprune.GramStats(x.shape[-1])
            self.of_linear[name] = gram
        self._inputs.setdefault(key, (x, gram))
        if id(gram) not in self._updated:
            gram.update(x)
            self._updated.add(id(gram))
        return gram


def _sequences(x: torch.Tensor) -> Iterator[torch.Tensor]:
    """Split activations into single sequences: DSnoT's variance is per sequence."""
    if x.dim() <= 2:
        yield x
    else:
        yield from x.reshape(-1, x.shape[-2], x.shape[-1])


class _StageDone(Exception):
    """Raised after the last hooked Linear of a partial forward: the rest of the block need not run."""


def collect_block_stats(
    block: nn.Module,
    hidden: Sequence[torch.Tensor],
    calls: Sequence[BlockCall],
    *,
    need_outputs: bool,
    need_gram: bool = False,
    names: Sequence[str] | None = None,
    on_input: Callable[[int, str, torch.Tensor], None] | None = None,
) -> tuple[dict[str, LinearStats], list[torch.Tensor]]:
    """Dense forward of every window through ``block`` with hooks on its Linears.

    Returns the statistics per Linear name and the dense block outputs. With ``names`` (in the
    order the block calls them) only those Linears are hooked and each forward stops after the
    last of them, so no outputs are returned; ``on_input(window, name, x)`` sees each hooked
    Linear's input.
    """
    grams = SharedGrams() if need_gram else None
    linears = block_linears(block)
    hooked = list(linears) if names is None else list(names)
    stats = {
        name: LinearStats(
            symprune.ActivationStats(linears[name].in_features),
            symprune.OutputStats(linears[name].out_features) if need_outputs else None,
        )
        for name in hooked
    }
    window = [0]

    def hook(name: str) -> Any:
        entry = stats[name]

        def fn(module: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any], out: Any) -> None:
            x = args[0] if args else kwargs["input"]
            for seq in _sequences(x.detach()):
                entry.inputs.update(seq)
            if entry.outputs is not None:
                for seq in _sequences(out.detach()):
                    entry.outputs.update(seq)
            if grams is not None:
                entry.gram = grams.update(name, x.detach())
            if on_input is not None:
                on_input(window[0], name, x.detach())
            if names is not None and name == hooked[-1]:
                raise _StageDone

        return fn

    def run(index: int, h: torch.Tensor, call: BlockCall) -> torch.Tensor | None:
        window[0] = index
        if grams is not None:
            grams.new_window()
        try:
            return call.run(block, h)
        except _StageDone:
            return None

    handles = [linears[name].register_forward_hook(hook(name), with_kwargs=True) for name in hooked]
    try:
        outputs = [run(i, h, call) for i, (h, call) in enumerate(zip(hidden, calls))]
    finally:
        for handle in handles:
            handle.remove()
    _sum_over_ranks(stats)
    return stats, [out for out in outputs if out is not None]


def _sum_over_ranks(stats: dict[str, LinearStats]) -> None:
    """Under torchrun each rank saw its own windows: sum the statistics, in Linear order (each
    shared Gram once), so that every rank holds those of all the windows."""
    accumulators: list[Any] = []
    for entry in stats.values():
        accumulators += [entry.inputs] + ([entry.outputs] if entry.outputs is not None else [])
        if entry.gram is not None and all(entry.gram is not a for a in accumulators):
            accumulators.append(entry.gram)
    distributed.sum_states(accumulators)
