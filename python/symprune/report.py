"""What a pruning run did, as plain dataclasses that round-trip through JSON.

One report type for ``prune``, ``calibrate`` and ``apply``, saved as ``symprune_report.json`` in
the output folder (``calibrate``: beside its statistics file), with the recipe and the versions of
the software that made the model."""

from __future__ import annotations

import json
import os
import tempfile
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

from . import _C


@dataclass
class LayerReport:
    """One pruned ``nn.Linear``.

    ``sparsity`` is ``zeros / numel`` of the weight after pruning, relative to the dense
    shape, so exact zeros already present in the checkpoint (``dense_zeros``) count too.
    ``recon_error`` is the relative diagonal reconstruction error
    ``sqrt(Σ_ij ΔW_ij² · in_sq_j) / sqrt(Σ_ij W_ij² · in_sq_j)`` with ``ΔW = W − W̃``: the
    ``‖ΔW X‖_F / ‖W X‖_F`` of the calibration inputs with cross-channel terms dropped
    (the quantity Wanda's score ranks single weights by).
    ``changed`` counts mask entries a refinement (DSnoT) flipped, twice per swap.
    ``permuted``: pruned with RIA's channel permutation, stored in permuted input order.
    ``iterations``: ADMM's iterations on this layer (0 for other methods).
    """

    name: str
    block: int
    shape: tuple[int, int]
    numel: int
    dense_zeros: int
    zeros: int
    sparsity: float
    recon_error: float | None  # None: pruned without calibration statistics (data-free)
    changed: int = 0
    permuted: bool = False  # its input channels (and its producers' rows) were permuted
    iterations: int = 0


@dataclass
class BlockReport:
    """One decoder block. ``output_error`` is the exact relative error of the block's
    output on the calibration windows, ``‖f̃(X) − f(X)‖_F / ‖f(X)‖_F``, with the same
    (already sparse-model) inputs X fed to the dense and the pruned block; with the residual
    target, against the dense model's own block outputs (its inputs the dense stream's)."""

    index: int
    output_error: float
    seconds: float


@dataclass
class PruneReport:
    """A whole pruning run. Times are wall-clock seconds; ``dense_forward_seconds`` is the
    time of the statistic-collecting dense block forwards, ``pruned_forward_seconds`` the
    re-runs of pruned blocks, ``prune_seconds`` scoring + masking + refinement."""

    method: str
    sparsity: float | None
    nm: tuple[int, int] | None
    group: str
    permute: bool
    refine: str | None
    refine_options: dict[str, Any]
    score_options: dict[str, Any]
    nsamples: int
    seqlen: int
    update: str | None = None
    # OWL: its options, each block's outlier ratio and the sparsity it was pruned at.
    owl: dict[str, Any] | None = None
    layers: list[LayerReport] = field(default_factory=list)
    blocks: list[BlockReport] = field(default_factory=list)
    pruned_weights: int = 0
    total_weights: int = 0
    overall_sparsity: float = 0.0
    wall_seconds: float = 0.0
    capture_seconds: float = 0.0
    dense_forward_seconds: float = 0.0
    prune_seconds: float = 0.0
    pruned_forward_seconds: float = 0.0
    owl_seconds: float = 0.0  # OWL's dense pass
    peak_rss_mb: float = 0.0
    command: str = "prune"  # prune, calibrate or apply
    recipe: dict[str, Any] = field(default_factory=dict)  # Recipe.to_json(), every field
    versions: dict[str, str] = field(default_factory=dict)  # symprune, torch, transformers
    # Filled by callers that evaluate (the CLI); free-form, e.g. {"pruned": 31.2}.
    perplexity: dict[str, float] = field(default_factory=dict)
    extra: dict[str, Any] = field(default_factory=dict)

    def finish_totals(self) -> None:
        """Recompute the overall counts from the per-layer entries."""
        self.total_weights = sum(layer.numel for layer in self.layers)
        self.pruned_weights = sum(layer.zeros for layer in self.layers)
        self.overall_sparsity = (
            self.pruned_weights / self.total_weights if self.total_weights else 0.0
        )

    def pattern(self) -> str:
        """Human-readable sparsity pattern, e.g. ``50% row`` or ``2:4``."""
        if self.nm is not None:
            return f"{self.nm[0]}:{self.nm[1]}" + (" permuted" if self.permute else "")
        return f"{self.sparsity:.0%} {self.group}"

    def summary(self) -> str:
        """A few lines for a terminal."""
        refine = f" + {self.refine}" if self.refine else ""
        refine += f" + {self.update}" if self.update else ""
        refine += " + owl" if self.owl else ""
        lines = [
            (f"method {self.method}{refine}, pattern {self.pattern()}, "
             f"{len(self.layers)} Linear layers in {len({layer.block for layer in self.layers})} blocks"),
            (f"sparsity reached {self.overall_sparsity:.4%} "
             f"({self.pruned_weights:,} of {self.total_weights:,} weights)"),
            (f"wall time {self.wall_seconds:.1f} s (dense forwards {self.dense_forward_seconds:.1f} s, "
             f"pruning {self.prune_seconds:.1f} s, pruned forwards "
             f"{self.pruned_forward_seconds:.1f} s), peak RSS {self.peak_rss_mb:.0f} MB"),
        ]
        lines += self._admm_lines()
        lines += [f"perplexity ({k}): {v:.3f}" for k, v in self.perplexity.items()]
        return "\n".join(lines)

    def _admm_lines(self) -> list[str]:
        """ADMM's iterations per Linear, and the layers whose support was still moving."""
        counts = sorted(layer.iterations for layer in self.layers if layer.iterations > 0)
        if not counts:
            return []
        line = f"ADMM iterations per Linear: {counts[0]}–{counts[-1]} (median {counts[len(counts) // 2]})"
        limit = self.recipe.get("admm", {}).get("max_iterations")
        stopped = sum(count >= limit for count in counts) if limit else 0
        if stopped:
            line += (f"; {stopped} stopped at max_iterations={limit} with the support still moving "
                     "(raise max_iterations)")
        return [line]

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def to_json(self, path: str | os.PathLike[str] | None = None) -> str:
        """Serialise to JSON; also write it to ``path`` when given (atomically: a temporary file
        renamed into place)."""
        text = json.dumps(self.to_dict(), indent=2)
        if path is not None:
            target = Path(path)
            fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", dir=target.parent)
            try:
                with os.fdopen(fd, "w", encoding="utf-8") as f:
                    f.write(text + "\n")
                os.replace(tmp, target)
            except BaseException:
                Path(tmp).unlink(missing_ok=True)
                raise
        return text

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> PruneReport:
        known = {f.name for f in fields(cls)}
        unknown = set(data) - known
        if unknown:
            raise ValueError(f"unknown report fields: {sorted(unknown)}")
        values = dict(data)
        values["layers"] = [
            LayerReport(**{**layer, "shape": tuple(layer["shape"])})
            for layer in data.get("layers", [])
        ]
        values["blocks"] = [BlockReport(**block) for block in data.get("blocks", [])]
        if values.get("nm") is not None:
            values["nm"] = tuple(values["nm"])
        return cls(**values)

    @classmethod
    def from_json(cls, path: str | os.PathLike[str]) -> PruneReport:
        return cls.from_dict(json.loads(Path(path).read_text(encoding="utf-8")))

    @classmethod
    def from_statistics(cls, path: str | os.PathLike[str]) -> PruneReport:
        """The report of the ``symprune calibrate`` run that wrote the statistics file ``path``
        (kept in its metadata, so that it cannot be separated from the statistics)."""
        metadata = _C.safetensors_header(str(path))["metadata"]
        if "report" not in metadata:
            raise ValueError(f"{path}: holds no symprune report (not written by symprune calibrate?)")
        return cls.from_dict(json.loads(metadata["report"]))


REPORT_FILE = _C.REPORT_FILE  # the core recognises symprune's folders by it


def software_versions() -> dict[str, str]:
    """The versions of symprune, torch and transformers (when importable) in this process."""
    import torch

    import symprune

    versions = {"symprune": symprune.__version__, "torch": torch.__version__}
    try:
        import transformers
    except ImportError:
        return versions
    versions["transformers"] = transformers.__version__
    return versions
