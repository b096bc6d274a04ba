"""Output-side activation statistics for the symmetric scorers."""

from __future__ import annotations

import torch

from ._C import ActivationStats


class OutputStats:
    """Accumulates ``out_sq``/``out_norm`` of a layer's outputs ``y`` (docs/semantics.md#statistics).

    The same accumulator as :class:`ActivationStats`, named for the output side.
    """

    def __init__(self, features: int) -> None:
        self._stats = ActivationStats(features)

    def update(self, y: torch.Tensor) -> None:
        self._stats.update(y)

    @property
    def features(self) -> int:
        return self._stats.features

    @property
    def tokens(self) -> int:
        return self._stats.tokens

    @property
    def sequences(self) -> int:
        return self._stats.sequences

    @property
    def out_sq(self) -> torch.Tensor:
        return self._stats.in_sq

    @property
    def out_norm(self) -> torch.Tensor:
        return self._stats.in_norm

    def state(self) -> torch.Tensor:
        """See :meth:`ActivationStats.state`."""
        return self._stats.state()

    def load_state(self, state: torch.Tensor) -> None:
        self._stats.load_state(state)
