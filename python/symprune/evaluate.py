"""Perplexity as defined by the evaluation protocol (docs/protocol.md)."""

from __future__ import annotations

import math
from collections.abc import Iterable

import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from symprune import distributed


def window_losses(
    model: torch.nn.Module, windows: Iterable[torch.Tensor] | torch.Tensor, *, progress: bool = True
) -> list[float]:
    """Mean next-token cross-entropy of each window, in fp32, one window at a time."""
    rows = list(windows)
    if not rows:
        raise ValueError("no evaluation windows given")
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    losses: list[float] = []
    try:
        with torch.no_grad():
            for row in tqdm(rows, desc="perplexity", unit="window", disable=not progress):
                ids = torch.as_tensor(row, dtype=torch.long).reshape(1, -1).to(device)
                if ids.shape[1] < 2:
                    raise ValueError("every evaluation window needs at least 2 tokens")
                # Loss computed here rather than via labels= so it is fp32 whatever the
                # model dtype and identical across transformers versions.
                logits = model(input_ids=ids, use_cache=False).logits[0, :-1].float()
                losses.append(F.cross_entropy(logits, ids[0, 1:]).item())
    finally:
        model.train(was_training)
    return losses


def perplexity(
    model: torch.nn.Module, windows: Iterable[torch.Tensor] | torch.Tensor, *, progress: bool = True
) -> float:
    """exp(mean over windows of the causal-LM mean cross-entropy). Under torchrun each rank
    evaluates its share of the windows and the losses are summed over the ranks."""
    rows = list(windows)
    losses = window_losses(model, distributed.my_share(rows, "evaluation windows"), progress=progress)
    (total,) = distributed.sum_over_ranks([math.fsum(losses)])
    return math.exp(total / len(rows))
