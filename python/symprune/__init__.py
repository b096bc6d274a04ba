"""symprune: post-training pruning of large language models.

The algorithms live in a libtorch C++ core (``symprune._C``); this package adds the model
pipeline, calibration data, evaluation and the command line around it.
Masks are bool tensors with **True = kept**.
"""

from __future__ import annotations

import torch  # noqa: F401  -- loads libtorch before the extension that links it

from ._C import (
    version,
    ActivationStats,
    CrossStats,
    GramStats,
    Pruned,
    Recipe,
    admm,
    apply_mask,
    channel_permutation,
    count_outliers,
    dsnot,
    load_safetensors,
    magnitude_mask,
    mask,
    method_info,
    methods,
    owl_sparsities,
    parse_nm,
    prune,
    prune_row_local,
    r2dsnot_defaults,
    refine_option_keys,
    refinements,
    refit,
    relative_importance,
    residual_target,
    safetensors_header,
    save_safetensors,
    score,
    score_methods,
    sparsegpt,
    targets,
    updates,
)

# The model-level API.
from .calibrate import calibrate
from .data import calibration_windows, evaluation_windows, tokenize_file
from .evaluate import perplexity
from .linear import prune_
from .pipeline import prune_model
from .report import PruneReport
from .stats import OutputStats
from .stream import prune_checkpoint

__version__ = version()

__all__ = [
    "ActivationStats",
    "CrossStats",
    "GramStats",
    "OutputStats",
    "PruneReport",
    "Pruned",
    "Recipe",
    "admm",
    "apply_mask",
    "calibrate",
    "calibration_windows",
    "channel_permutation",
    "count_outliers",
    "dsnot",
    "evaluation_windows",
    "load_safetensors",
    "magnitude_mask",
    "mask",
    "method_info",
    "methods",
    "owl_sparsities",
    "parse_nm",
    "perplexity",
    "prune",
    "prune_",
    "prune_checkpoint",
    "prune_model",
    "prune_row_local",
    "r2dsnot_defaults",
    "refine_option_keys",
    "refinements",
    "refit",
    "relative_importance",
    "residual_target",
    "safetensors_header",
    "save_safetensors",
    "score",
    "score_methods",
    "sparsegpt",
    "targets",
    "tokenize_file",
    "updates",
]
