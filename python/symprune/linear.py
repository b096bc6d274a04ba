"""Prune one weight in place."""

from __future__ import annotations

from typing import Any

import torch

from ._C import Recipe, prune


@torch.no_grad()
def prune_(
    target: torch.nn.Linear | torch.Tensor,
    method: str,
    sparsity: float | None = None,
    *,
    nm: tuple[int, int] | str | None = None,
    group: str = "row",
    in_norm: torch.Tensor | None = None,
    out_norm: torch.Tensor | None = None,
    **score_options: Any,
) -> torch.Tensor:
    """Prunes ``target`` (an ``nn.Linear`` or its weight) in place; returns the keep mask.

    Exactly one of ``sparsity`` and ``nm`` must be given; ``score_options`` are those the method
    reads (ria: ``a``, ``p``; stochria: ``a``, ``beta``, ``seed``). The weight is only written
    once the mask has been computed, so a ``ValueError`` for bad input leaves it untouched.
    """
    weight = target.weight if isinstance(target, torch.nn.Linear) else target
    recipe = Recipe(method, sparsity, nm=nm, group=group, score_options=score_options)
    result = prune(weight.detach(), recipe, in_norm=in_norm, out_norm=out_norm)
    weight.copy_(result.weight)
    return result.keep
