"""End-to-end on the real SmolLM2-135M (converted from its GGUF on first use, ~1 min).

Small windows keep this near a minute on 2 cores; the full protocol is docs/protocol.md.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from symprune.data import (
    CALIBRATION_FILE, EVALUATION_FILE, calibration_windows, protocol_text,
    evaluation_windows, tokenize_file,
)
from symprune.evaluate import perplexity
from symprune.models import ensure_smollm2, is_hf_folder, load_model, load_tokenizer
from symprune.pipeline import prune_model

pytestmark = pytest.mark.slow


@pytest.fixture(scope="session")
def smollm2_dir() -> Path:
    return ensure_smollm2()


@pytest.fixture(scope="session")
def windows(smollm2_dir: Path) -> tuple[torch.Tensor, torch.Tensor]:
    """(4 calibration windows × 128 tokens, 2 evaluation windows × 512 tokens)."""
    tokenizer = load_tokenizer(smollm2_dir)
    calib = calibration_windows(tokenize_file(protocol_text(CALIBRATION_FILE), tokenizer), 4, 128, 0)
    evaluation = evaluation_windows(tokenize_file(protocol_text(EVALUATION_FILE), tokenizer), 2, 512)
    return calib, evaluation


@pytest.fixture(scope="session")
def dense_ppl(smollm2_dir: Path, windows: tuple[torch.Tensor, torch.Tensor]) -> float:
    return perplexity(load_model(smollm2_dir), windows[1], progress=False)


def test_conversion_is_cached(smollm2_dir: Path) -> None:
    assert is_hf_folder(smollm2_dir)
    assert ensure_smollm2() == smollm2_dir  # second call reuses the folder


def test_dense_perplexity_is_sane(dense_ppl: float) -> None:
    # ≈23 on the first 8×512 tokens (data/README.md); 2 windows vary a little.
    assert 10 < dense_ppl < 40


def test_wanda_beats_magnitude(
    smollm2_dir: Path, windows: tuple[torch.Tensor, torch.Tensor], dense_ppl: float
) -> None:
    calib, evaluation = windows
    result = {}
    for method in ("magnitude", "wanda"):
        model = load_model(smollm2_dir)
        report = prune_model(model, calib, method=method, sparsity=0.5, progress=False)
        assert len(report.layers) == 210  # 30 blocks × 7 projections
        assert report.overall_sparsity == pytest.approx(0.5, abs=1e-4)
        result[method] = perplexity(model, evaluation, progress=False)
    assert dense_ppl < result["wanda"] < result["magnitude"]
