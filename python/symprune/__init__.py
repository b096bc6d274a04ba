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

# The model-level API (after the core names above: the pipeline calls them).
from .data import calibration_windows, evaluation_windows, tokenize_file
from .evaluate import perplexity
from .pipeline import R2DSNOT_DEFAULTS, prune_model
from .report import PruneReport

__version__ = "0.1.0"

__all__ = [
    "ActivationStats",
    "OutputStats",
    "PruneReport",
    "R2DSNOT_DEFAULTS",
    "calibration_windows",
    "channel_permutation",
    "dsnot",
    "evaluation_windows",
    "mask",
    "perplexity",
    "prune_",
    "prune_model",
    "relative_importance",
    "score",
    "tokenize_file",
]
