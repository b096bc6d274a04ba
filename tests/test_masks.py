"""symprune.mask / channel_permutation / prune_ against the oracles (docs/semantics.md#masks,
docs/semantics.md "Masks"). Masks are compared element for element (torch.equal): the
selection rule (stable ascending sort, prune the first k) leaves no room for ties."""

import math

import pytest
import torch

import symprune
from cases import (
    DTYPES,
    NM_PATTERNS,
    NM_SHAPES,
    SCORE_KINDS,
    SHAPES,
    SPARSITIES,
    WEIGHT_KINDS,
    make_norm,
    make_score,
    make_weight,
)
from oracles import (
    NEEDS_IN_NORM,
    NEEDS_OUT_NORM,
    assert_layer_count,
    assert_nm,
    assert_row_counts,
    oracle_channel_permutation,
    oracle_layer_mask,
    oracle_nm_mask,
    oracle_permuted_nm_mask,
    oracle_row_mask,
    oracle_score,
)

shape_id = lambda s: f"{s[0]}x{s[1]}"  # noqa: E731


def _same_mask(actual, expected):
    assert actual.dtype == torch.bool, actual.dtype
    assert actual.shape == expected.shape
    if not torch.equal(actual, expected):
        diff = (actual != expected).nonzero().tolist()
        raise AssertionError(
            f"{len(diff)} of {expected.numel()} mask entries differ, first at {diff[:8]} "
            f"(got kept={[bool(actual[i, j]) for i, j in diff[:8]]})")


# ---------------------------------------------------------------------------- unstructured

@pytest.mark.parametrize("s", SPARSITIES)
@pytest.mark.parametrize("kind", SCORE_KINDS)
@pytest.mark.parametrize("shape", SHAPES, ids=shape_id)
def test_row_mask(shape, kind, s):
    score = make_score(shape, kind)
    before = score.clone()
    got = symprune.mask(score, s, group="row")
    _same_mask(got, oracle_row_mask(score, s))
    assert_row_counts(got, s)
    assert torch.equal(score, before), "mask must not modify the score"


@pytest.mark.parametrize("s", SPARSITIES)
@pytest.mark.parametrize("kind", SCORE_KINDS)
@pytest.mark.parametrize("shape", SHAPES, ids=shape_id)
def test_layer_mask(shape, kind, s):
    score = make_score(shape, kind)
    got = symprune.mask(score, s, group="layer")
    _same_mask(got, oracle_layer_mask(score, s))
    assert_layer_count(got, s)


def test_row_is_the_default_group():
    score = make_score((7, 13), "ties")
    _same_mask(symprune.mask(score, 0.5), oracle_row_mask(score, 0.5))


@pytest.mark.parametrize("s", [0.01, 0.1, 0.3, 0.7, 0.75, 0.99])
@pytest.mark.parametrize("group", ["row", "layer"])
def test_more_sparsities(group, s):
    # fractional counts: floor(count * s) exactly, never +1 (RIA's S <= thresh would prune
    # floor(numel * s) + 1 plus ties; symprune does not)
    score = make_score((33, 64), "ties")
    got = symprune.mask(score, s, group=group)
    if group == "row":
        _same_mask(got, oracle_row_mask(score, s))
        assert_row_counts(got, s)
    else:
        _same_mask(got, oracle_layer_mask(score, s))
        assert_layer_count(got, s)


def test_all_tied_row_and_layer():
    score = torch.full((3, 10), 0.25)
    row = symprune.mask(score, 0.3, group="row")     # columns 0..2 of every row
    expect = torch.ones(3, 10, dtype=torch.bool)
    expect[:, :3] = False
    _same_mask(row, expect)
    layer = symprune.mask(score, 0.5, group="layer")  # the first 15 in row-major order
    expect = torch.ones(30, dtype=torch.bool)
    expect[:15] = False
    _same_mask(layer, expect.reshape(3, 10))


def test_sparsity_zero_keeps_everything():
    score = make_score((7, 13), "zero_rows_cols")
    for group in ("row", "layer"):
        assert symprune.mask(score, 0.0, group=group).all()


# ---------------------------------------------------------------------------------- N:M

@pytest.mark.parametrize("nm", NM_PATTERNS, ids=lambda p: f"{p[0]}of{p[1]}")
@pytest.mark.parametrize("kind", SCORE_KINDS)
@pytest.mark.parametrize("shape", NM_SHAPES, ids=shape_id)
def test_nm_mask(shape, kind, nm):
    n, m = nm
    score = make_score(shape, kind)
    got = symprune.mask(score, nm=nm)
    _same_mask(got, oracle_nm_mask(score, n, m))
    assert_nm(got, n, m)


def test_nm_all_tied_prunes_lower_columns():
    score = torch.ones(2, 8)
    expect = torch.tensor([[False, False, True, True] * 2] * 2)
    _same_mask(symprune.mask(score, nm=(2, 4)), expect)
    expect = torch.tensor([[False, False, False, True] * 2] * 2)  # 1:4 keeps one of four
    _same_mask(symprune.mask(score, nm=(1, 4)), expect)
    expect = torch.tensor([[False] * 5 + [True] * 3] * 2)  # 3:8 keeps three of eight
    _same_mask(symprune.mask(score, nm=(3, 8)), expect)


@pytest.mark.parametrize("nm", [(1, 2), (2, 4), (4, 8)], ids=lambda p: f"{p[0]}of{p[1]}")
def test_nm_with_default_group(nm):
    # N:M is per row by construction; the default group="row" is accepted with nm
    # (group="layer" with nm is rejected, see test_errors.py::test_nm_with_layer_group).
    score = make_score((7, 24), "ties")
    _same_mask(symprune.mask(score, nm=nm, group="row"), oracle_nm_mask(score, *nm))


# --------------------------------------------------------------------- channel permutation

@pytest.mark.parametrize("m", [4, 8])
@pytest.mark.parametrize("kind", SCORE_KINDS)
@pytest.mark.parametrize("shape", NM_SHAPES, ids=shape_id)
def test_channel_permutation(shape, kind, m):
    score = make_score(shape, kind)
    got = symprune.channel_permutation(score, m)
    assert got.dtype == torch.int64 and got.shape == (shape[1],)
    assert sorted(got.tolist()) == list(range(shape[1]))
    assert torch.equal(got, oracle_channel_permutation(score, m)), (got.tolist(),)


def test_channel_permutation_hand_example():
    score = torch.arange(8.0).reshape(1, 8).repeat(3, 1)
    assert symprune.channel_permutation(score, 4).tolist() == [0, 3, 4, 7, 1, 2, 5, 6]
    # tied column sums keep the lower index first
    score = torch.tensor([[1.0, 1.0, 0.0, 0.0]])
    assert symprune.channel_permutation(score, 2).tolist() == [2, 1, 3, 0]


@pytest.mark.parametrize("nm", NM_PATTERNS, ids=lambda p: f"{p[0]}of{p[1]}")
@pytest.mark.parametrize("kind", SCORE_KINDS)
@pytest.mark.parametrize("shape", NM_SHAPES, ids=shape_id)
def test_permuted_nm_mask(shape, kind, nm):
    n, m = nm
    score = make_score(shape, kind)
    got_mask, got_perm = symprune.mask(score, nm=nm, permute=True)
    exp_mask, exp_perm = oracle_permuted_nm_mask(score, n, m)
    assert got_perm.dtype == torch.int64
    assert torch.equal(got_perm, exp_perm), (got_perm.tolist(), exp_perm.tolist())
    _same_mask(got_mask, exp_mask)
    assert_nm(got_mask[:, got_perm], n, m)  # N:M in the permuted order
    assert int(got_mask.sum()) == shape[0] * shape[1] * n // m


def test_permutation_changes_the_mask():
    # sanity: on a score with strongly unequal column importance, permuting makes a difference
    g = torch.Generator().manual_seed(0)
    score = torch.rand(8, 16, generator=g) * torch.tensor([10.0] * 4 + [1.0] * 12)
    plain = symprune.mask(score, nm=(2, 4))
    permuted, perm = symprune.mask(score, nm=(2, 4), permute=True)
    assert not torch.equal(plain, permuted)
    _same_mask(permuted, oracle_permuted_nm_mask(score, 2, 4)[0])


# ----------------------------------------------------------------------------- prune_

def _norms(shape, method, kind):
    norm_kind = "with_zeros" if kind == "zero_rows_cols" else "positive"
    kw = {}
    if method in NEEDS_IN_NORM:
        kw["in_norm"] = make_norm(shape[1], norm_kind, key=("p_in",))
    if method in NEEDS_OUT_NORM:
        kw["out_norm"] = make_norm(shape[0], norm_kind, key=("p_out",))
    return kw


def _check_pruned(w_after, w_before, keep):
    assert w_after.dtype == w_before.dtype
    assert torch.equal(w_after[keep], w_before[keep]), "kept weights must be unchanged"
    assert (w_after[~keep] == 0).all(), "pruned weights must be zero"


ALL_METHODS = ["magnitude", "wanda", "ria", "stochria", "symwanda", "owanda", "symmetric"]


@pytest.mark.parametrize("s", SPARSITIES)
@pytest.mark.parametrize("group", ["row", "layer"])
@pytest.mark.parametrize("dtype", list(DTYPES))
@pytest.mark.parametrize("kind", WEIGHT_KINDS)
def test_prune_unstructured(kind, dtype, group, s):
    # end to end: prune_ = oracle score, then oracle mask, then zero the pruned weights
    # (the methods are looped here rather than parametrised to keep the suite fast; every
    # scorer is checked bit for bit on its own in test_scores.py)
    shape = (7, 13)
    for method in ALL_METHODS:
        w = make_weight(shape, kind, DTYPES[dtype], key=("prune",))
        kw = _norms(shape, method, kind)
        before = w.clone()
        seed = {"seed": 3} if method == "stochria" else {}  # options belong to their method
        keep = symprune.prune_(w, method, s, group=group, **seed, **kw)
        score = oracle_score(before, method, seed=3, **kw)
        expect = oracle_row_mask(score, s) if group == "row" else oracle_layer_mask(score, s)
        try:
            _same_mask(keep, expect)
            _check_pruned(w, before, keep)
        except AssertionError as e:
            raise AssertionError(f"method={method}: {e}") from None


@pytest.mark.parametrize("nm", NM_PATTERNS, ids=lambda p: f"{p[0]}of{p[1]}")
@pytest.mark.parametrize("dtype", list(DTYPES))
@pytest.mark.parametrize("kind", WEIGHT_KINDS)
def test_prune_nm(kind, dtype, nm):
    shape = (5, 40)
    for method in ["magnitude", "wanda", "ria", "symmetric"]:
        w = make_weight(shape, kind, DTYPES[dtype], key=("prune_nm",))
        kw = _norms(shape, method, kind)
        before = w.clone()
        keep = symprune.prune_(w, method, nm=nm, **kw)
        try:
            _same_mask(keep, oracle_nm_mask(oracle_score(before, method, **kw), *nm))
            _check_pruned(w, before, keep)
            assert_nm(keep, *nm)
        except AssertionError as e:
            raise AssertionError(f"method={method}: {e}") from None


@pytest.mark.parametrize("dtype", list(DTYPES))
def test_prune_linear(dtype):
    lin = torch.nn.Linear(40, 5, bias=True).to(DTYPES[dtype])
    with torch.no_grad():
        lin.weight.copy_(make_weight((5, 40), "quantised", DTYPES[dtype], key=("lin",)))
    before = lin.weight.detach().clone()
    bias = lin.bias.detach().clone()
    in_norm = make_norm(40, key=("lin",))
    keep = symprune.prune_(lin, "wanda", 0.5, in_norm=in_norm)
    _same_mask(keep, oracle_row_mask(oracle_score(before, "wanda", in_norm=in_norm), 0.5))
    _check_pruned(lin.weight.detach(), before, keep)
    assert torch.equal(lin.bias.detach(), bias), "bias is never pruned"
    assert lin.weight.dtype == DTYPES[dtype]


def test_prune_returns_same_mask_as_score_then_mask():
    w = make_weight((33, 64), "randn", key=("compose",))
    in_norm = make_norm(64, key=("compose",))
    expect = symprune.mask(symprune.score(w, "ria", in_norm=in_norm), 0.5, group="layer")
    got = symprune.prune_(w.clone(), "ria", 0.5, group="layer", in_norm=in_norm)
    _same_mask(got, expect)
    assert math.floor(w.numel() * 0.5) == int((~got).sum())
