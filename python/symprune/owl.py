"""OWL block sparsities (Yin et al., 2024) for the sequential pipeline.

The math (outlier counts, the sparsity of each block) is the core's; this module runs the dense
pass it needs: every calibration window through every *dense* block, measuring the input norms of
each Linear, as OWL measures outliers on the unpruned model.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import nn
from tqdm.auto import tqdm

import symprune
from symprune._C import Recipe
from symprune.blocks import BlockCall, block_linears


@dataclass
class OwlPlan:
    """Each block's outlier ratio and the sparsity OWL gives it."""

    outlier_ratios: list[float]
    sparsities: list[float]

    def to_dict(self, recipe: Recipe) -> dict[str, object]:
        return {**recipe.owl_options, "outlier_ratios": self.outlier_ratios, "sparsities": self.sparsities}


def owl_plan(
    blocks: nn.ModuleList,
    hidden: Sequence[torch.Tensor],
    calls: Sequence[Sequence[BlockCall]],
    recipe: Recipe,
    *,
    progress: bool = True,
) -> OwlPlan:
    """The block sparsities of an OWL ``recipe``, from one dense pass of the windows ``hidden``
    (block 0's inputs) through ``blocks``; ``calls[b][w]`` is how the model calls block b."""
    # Imported here: the pipeline imports this module.
    from symprune.pipeline import collect_block_stats

    multiple = float(recipe.owl_options["m"])
    ratios: list[float] = []
    bar = tqdm(list(enumerate(blocks)), desc="OWL outlier ratios", unit="block", disable=not progress)
    for index, block in bar:
        stats, hidden = collect_block_stats(block, hidden, calls[index], need_outputs=False)
        linears = block_linears(block)
        outliers, entries = symprune.count_outliers(
            [m.weight.detach() for m in linears.values()],
            [stats[name].inputs.in_norm for name in linears], multiple)
        ratios.append(outliers / entries)
    sparsities = symprune.owl_sparsities(ratios, float(recipe.sparsity),
                                         lambda_=float(recipe.owl_options["lambda"]))
    return OwlPlan(ratios, sparsities)
