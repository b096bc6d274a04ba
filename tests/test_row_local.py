"""prune_row_local (score, mask and zeroing a row at a time) against the plain oracle."""

from __future__ import annotations

import pytest
import symprune
import torch
from cases import (
    DTYPES,
    NM_PATTERNS,
    NM_SHAPES,
    SHAPES,
    SPARSITIES,
    WEIGHT_KINDS,
    make_norm,
    make_weight,
)
from oracles import oracle_nm_mask, oracle_row_mask, oracle_score

METHODS = ["magnitude", "wanda", "symwanda", "owanda"]
ALL_DTYPES = {**DTYPES, "fp64": torch.float64}


def _norms(method: str, shape: tuple[int, int], key: tuple) -> dict[str, torch.Tensor]:
    norms = {}
    if method in ("wanda", "symwanda"):
        norms["in_norm"] = make_norm(shape[1], "with_zeros", key=key)
    if method in ("symwanda", "owanda"):
        norms["out_norm"] = make_norm(shape[0], key=key)
    return norms


def _weight(shape: tuple[int, int], kind: str, dtype: str, key: tuple) -> torch.Tensor:
    w = make_weight(shape, kind, ALL_DTYPES[dtype], key=key)
    w[0, 0] = -0.0  # -0 and +0 tie in the score; a kept -0 stays -0, a pruned entry becomes +0
    return w


def _expected(w: torch.Tensor, keep: torch.Tensor) -> torch.Tensor:
    return w.masked_fill(~keep, 0)


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("dtype", ALL_DTYPES)
@pytest.mark.parametrize("kind", WEIGHT_KINDS)
@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("s", SPARSITIES)
def test_per_row_matches_oracle(method: str, dtype: str, kind: str, shape: tuple[int, int], s: float) -> None:
    key = ("row-local", method, dtype)
    w, norms = _weight(shape, kind, dtype, key), _norms(method, shape, key)
    keep = oracle_row_mask(oracle_score(w, method, **norms), s)
    out = symprune.prune_row_local(w, method, s, **norms)
    assert out.dtype == w.dtype
    assert torch.equal(out.view(torch.uint8), _expected(w, keep).view(torch.uint8))  # bit for bit: signs of zero


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("dtype", ALL_DTYPES)
@pytest.mark.parametrize("kind", WEIGHT_KINDS)
@pytest.mark.parametrize(("shape", "nm"), [
    (shape, nm) for shape in NM_SHAPES for nm in [*NM_PATTERNS, (5, 40)] if shape[1] % nm[1] == 0
])
def test_nm_matches_oracle(method: str, dtype: str, kind: str, shape: tuple[int, int], nm: tuple[int, int]) -> None:
    key = ("row-local-nm", method, dtype)
    w, norms = _weight(shape, kind, dtype, key), _norms(method, shape, key)
    keep = oracle_nm_mask(oracle_score(w, method, **norms), *nm)
    out = symprune.prune_row_local(w, method, nm=nm, **norms)
    assert torch.equal(out.view(torch.uint8), _expected(w, keep).view(torch.uint8))


def test_equals_the_general_path_on_a_large_bf16_weight() -> None:
    g = torch.Generator().manual_seed(2)
    w = (torch.randn(300, 4096, generator=g) * 0.02).to(torch.bfloat16)
    in_norm, out_norm = torch.rand(4096, generator=g), torch.rand(300, generator=g)
    for method in METHODS:
        needed = _norms(method, (300, 4096), ())
        norms = {k: v for k, v in {"in_norm": in_norm, "out_norm": out_norm}.items() if k in needed}
        score = symprune.score(w, method, **norms)
        for pattern in ({"sparsity": 0.6}, {"nm": (2, 4)}):
            keep = symprune.mask(score, pattern.get("sparsity"), nm=pattern.get("nm"))
            assert torch.equal(symprune.prune_row_local(w, method, **pattern, **norms),
                               symprune.apply_mask(w, keep)), (method, pattern)


@pytest.mark.parametrize("method", METHODS)
def test_non_contiguous_weight(method: str) -> None:
    w = make_weight((24, 16), "quantised", torch.bfloat16).t()  # a (16, 24) view, column-major
    norms = _norms(method, (16, 24), ("strided",))
    keep = oracle_nm_mask(oracle_score(w, method, **norms), 2, 4)
    assert torch.equal(symprune.prune_row_local(w, method, nm=(2, 4), **norms), _expected(w, keep))


def test_errors_are_those_of_score_and_mask() -> None:
    w = make_weight((4, 8), "randn")
    with pytest.raises(ValueError, match="not row-local"):
        symprune.prune_row_local(w, "ria", 0.5, in_norm=torch.ones(8))
    with pytest.raises(ValueError, match="needs in_norm"):
        symprune.prune_row_local(w, "wanda", 0.5)
    with pytest.raises(ValueError, match="non-negative"):
        symprune.prune_row_local(w, "wanda", 0.5, in_norm=-torch.ones(8))
    with pytest.raises(ValueError, match="shape"):
        symprune.prune_row_local(w, "owanda", 0.5, out_norm=torch.ones(8))
    with pytest.raises(ValueError, match="sparsity"):
        symprune.prune_row_local(w, "magnitude", 1.0)
    with pytest.raises(ValueError, match="divisible"):
        symprune.prune_row_local(w, "magnitude", nm=(2, 3))
    with pytest.raises(ValueError, match="exactly one"):
        symprune.prune_row_local(w, "magnitude")
    for dtype in ALL_DTYPES.values():
        bad = w.to(dtype).clone()
        bad[2, 3] = float("nan")
        with pytest.raises(ValueError, match="weight contains NaN or Inf"):
            symprune.prune_row_local(bad, "wanda", nm=(2, 4), in_norm=torch.ones(8))
    # finite weights whose score overflows fp32: score() and mask() refuse it too
    huge = torch.full((2, 4), 3e38, dtype=torch.float64)
    with pytest.raises(ValueError, match="score contains NaN or Inf"):
        symprune.mask(symprune.score(huge, "wanda", in_norm=torch.full((4,), 2.0)), 0.5)
    with pytest.raises(ValueError, match="score contains NaN or Inf"):
        symprune.prune_row_local(huge, "wanda", 0.5, in_norm=torch.full((4,), 2.0))
