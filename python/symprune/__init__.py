"""symprune: post-training pruning of large language models.

The algorithms live in a libtorch C++ core (``symprune._C``); this package adds the model
pipeline, calibration data, evaluation and the command line around it.
Masks are bool tensors with **True = kept**.
"""

from __future__ import annotations

import torch  # noqa: F401  -- loads libtorch before the extension that links it

from ._C import ActivationStats, channel_permutation, dsnot, mask, relative_importance, score
from .linear import prune_
from .stats import OutputStats

__version__ = "0.1.0"

__all__ = [
    "ActivationStats",
    "OutputStats",
    "channel_permutation",
    "dsnot",
    "mask",
    "prune_",
    "relative_importance",
    "score",
]
