"""CUDA tensors give the same results as CPU tensors. Runs only where torch sees a GPU."""

from __future__ import annotations

import pytest
import torch

import symprune

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")


def _layer(out: int = 64, inp: int = 256) -> dict[str, torch.Tensor]:
    torch.manual_seed(0)
    stats = symprune.ActivationStats(inp)
    for _ in range(4):
        stats.update(torch.randn(32, inp) + torch.linspace(-1, 1, inp))
    return {"weight": torch.randn(out, inp), "in_norm": stats.in_norm, "in_mean": stats.in_mean, "in_var": stats.in_var}


def _cuda(tensors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {name: t.cuda() for name, t in tensors.items()}


@pytest.mark.parametrize("method", ["magnitude", "wanda", "ria", "symmetric"])
def test_scores_and_masks_match_cpu(method: str) -> None:
    layer = _layer()
    gpu = _cuda(layer)
    cpu_scores = symprune.score(layer["weight"], method, in_norm=layer["in_norm"])
    gpu_scores = symprune.score(gpu["weight"], method, in_norm=gpu["in_norm"])
    assert gpu_scores.is_cuda
    torch.testing.assert_close(gpu_scores.cpu(), cpu_scores)
    for kwargs in ({"sparsity": 0.5}, {"sparsity": 0.5, "group": "layer"}, {"nm": (2, 4)}):
        assert torch.equal(symprune.mask(cpu_scores, **kwargs), symprune.mask(cpu_scores.cuda(), **kwargs).cpu())


@pytest.mark.parametrize("nm", [None, (2, 4)])
def test_dsnot_on_gpu_matches_cpu_rows(nm: tuple[int, int] | None) -> None:
    layer = _layer()
    scores = symprune.score(layer["weight"], "wanda", in_norm=layer["in_norm"])
    keep = symprune.mask(scores, None if nm else 0.5, nm=nm)
    stats = {k: layer[k] for k in ("in_norm", "in_mean", "in_var")}
    cpu = symprune.dsnot(layer["weight"], keep, **stats, nm=nm, threshold=0.0)
    gpu_stats = {k: v.cuda() for k, v in stats.items()}
    gpu = symprune.dsnot(layer["weight"].cuda(), keep.cuda(), **gpu_stats, nm=nm, threshold=0.0)
    assert gpu.is_cuda
    assert not torch.equal(cpu, keep)
    assert torch.equal(gpu.cpu(), cpu)
