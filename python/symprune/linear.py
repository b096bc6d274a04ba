"""Score, mask and zero one weight in place."""

from __future__ import annotations

import torch

from ._C import mask, score


@torch.no_grad()
def prune_(
    target: torch.nn.Linear | torch.Tensor,
    method: str,
    sparsity: float | None = None,
    *,
    nm: tuple[int, int] | None = None,
    group: str = "row",
    in_norm: torch.Tensor | None = None,
    out_norm: torch.Tensor | None = None,
    a: float = 0.5,
    p: float = 1.0,
    beta: float = 0.1,
    seed: int = 0,
) -> torch.Tensor:
    """Prunes ``target`` (an ``nn.Linear`` or its weight) in place; returns the keep mask.

    Exactly one of ``sparsity`` and ``nm`` must be given. The weight is only written once the
    mask has been computed, so a ``ValueError`` for bad input leaves it untouched.
    """
    weight = target.weight if isinstance(target, torch.nn.Linear) else target
    scores = score(weight, method, in_norm=in_norm, out_norm=out_norm, a=a, p=p, beta=beta, seed=seed)
    keep = mask(scores, sparsity, nm=nm, group=group)
    weight.masked_fill_(~keep, 0)
    return keep
