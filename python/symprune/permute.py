"""RIA's channel permutation, made deployable.

An N:M mask found in permuted input order is N:M in storage order only once the Linear's input
channels are physically permuted, and the model then computes the same function only if the
Linear that produces those inputs permutes its output rows the same way. That holds where the
channels pass through elementwise operations only:

- a gated MLP, ``down_proj(act(gate_proj(x)) * up_proj(x))``: ``gate_proj`` and ``up_proj`` rows;
- an OPT-style MLP, ``fc2(act(fc1(x)))``: ``fc1`` rows and bias.

``o_proj`` reads the attention heads (a permutation would have to stay inside each head, the same
for every query head of a key/value group), and q/k/v and gate/up read the normalised residual
stream, which every block shares: those layers keep the unpermuted mask.
"""

from __future__ import annotations

import torch
from torch import nn

# (producers, consumer) by their names inside one module.
_ABSORBING = ((("gate_proj", "up_proj"), "down_proj"), (("fc1",), "fc2"))


def absorbing_producers(block: nn.Module) -> dict[str, list[str]]:
    """For each Linear of ``block`` (by name inside the block) whose input permutation its
    producers can absorb, those producers' names."""
    found: dict[str, list[str]] = {}
    for prefix, module in block.named_modules():
        children = dict(module.named_children())
        for producers, consumer in _ABSORBING:
            if all(isinstance(children.get(name), nn.Linear) for name in (*producers, consumer)):
                qualify = (lambda name: f"{prefix}.{name}") if prefix else (lambda name: name)
                found[qualify(consumer)] = [qualify(name) for name in producers]
    return found


@torch.no_grad()
def permute_channels(consumer: nn.Linear, producers: list[nn.Linear], permutation: torch.Tensor) -> None:
    """Consumer input column j becomes column ``permutation[j]``, and so do the producers'
    output rows (weights and biases): the composed function is unchanged."""
    perm = permutation.to(consumer.weight.device)
    consumer.weight.copy_(consumer.weight.index_select(1, perm))
    for layer in producers:
        layer.weight.copy_(layer.weight.index_select(0, perm))
        if layer.bias is not None:
            layer.bias.copy_(layer.bias.index_select(0, perm))
