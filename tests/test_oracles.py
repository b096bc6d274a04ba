"""Self-checks of the oracles themselves against hand-computed values.

These do not import symprune, so they run (and guard the reference) even before the
extension is built.
"""

import math

import pytest
import torch

from cases import SHAPES, make_norm, make_weight
from oracles import (
    oracle_channel_permutation,
    oracle_layer_mask,
    oracle_nm_mask,
    oracle_permuted_nm_mask,
    oracle_row_mask,
    oracle_score,
    oracle_stats,
    oracle_stochria_norms,
)


def test_stats_hand_example():
    a = torch.tensor([[1.0, 2.0], [3.0, 4.0]])            # one sequence, 2 tokens
    b = torch.tensor([[[1.0, 0.0]], [[3.0, 0.0]]])         # 2 sequences, 1 token each
    st = oracle_stats([a, b])
    assert st["tokens"] == 4 and st["sequences"] == 3
    torch.testing.assert_close(st["in_sq"], torch.tensor([1 + 9 + 1 + 9.0, 4 + 16.0]))
    torch.testing.assert_close(st["in_norm"], torch.tensor([math.sqrt(20 / 3), math.sqrt(20 / 3)]))
    torch.testing.assert_close(st["in_mean"], torch.tensor([8 / 3, 6 / 3]))
    # var_pop(a) = [1, 1] over 2 tokens; var_pop(b) = [1, 0] over 2 tokens (one update)
    torch.testing.assert_close(st["in_var"], torch.tensor([(2 * 1 + 2 * 1) / 4, (2 * 1 + 2 * 0) / 4]))


def test_stats_1d_and_4d_counts():
    st = oracle_stats([torch.ones(5), torch.ones(2, 3, 4, 5)])
    assert st["tokens"] == 1 + 24 and st["sequences"] == 1 + 6


def test_scores_hand_example():
    w = torch.tensor([[1.0, -2.0], [0.0, 4.0]])
    in_norm = torch.tensor([4.0, 9.0])
    out_norm = torch.tensor([1.0, 0.5])
    absw = w.abs()
    assert torch.equal(oracle_score(w, "magnitude"), absw)
    assert torch.equal(oracle_score(w, "wanda", in_norm=in_norm), absw * torch.tensor([4.0, 9.0]))
    assert torch.equal(oracle_score(w, "owanda", out_norm=out_norm), absw * torch.tensor([[1.0], [0.5]]))
    assert torch.equal(
        oracle_score(w, "symwanda", in_norm=in_norm, out_norm=out_norm),
        absw * torch.tensor([[5.0, 10.0], [4.5, 9.5]]),
    )
    # ria, p = 1, a = 0.5: column sums [1, 6], row sums [3, 4], in_norm^0.5 = [2, 3]
    ria = torch.tensor([[(1 / 1 + 1 / 3) * 2, (2 / 6 + 2 / 3) * 3], [0.0, (4 / 6 + 4 / 4) * 3]])
    torch.testing.assert_close(oracle_score(w, "ria", in_norm=in_norm), ria)
    # symmetric: column l2 [1, sqrt(20)], row l2 [sqrt(5), 4]
    sym = torch.tensor([[1 * (1 + math.sqrt(5)), 2 * (math.sqrt(20) + math.sqrt(5))],
                        [0.0, 4 * (math.sqrt(20) + 4)]])
    torch.testing.assert_close(oracle_score(w, "symmetric"), sym)


def test_zero_norm_contributes_zero():
    w = torch.tensor([[0.0, 0.0], [0.0, 2.0]])
    s = oracle_score(w, "ria", in_norm=torch.ones(2))
    assert torch.equal(s, torch.tensor([[0.0, 0.0], [0.0, 2.0]]))
    assert torch.equal(oracle_score(w, "symmetric"), torch.tensor([[0.0, 0.0], [0.0, 8.0]]))


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("p", [1.0, 2.0])
def test_ria_matches_vectorised_formula(shape, p):
    w = make_weight(shape, "randn")
    in_norm = make_norm(shape[1])
    absw = w.double().abs()
    col = absw.pow(p).sum(0).pow(1 / p)
    row = absw.pow(p).sum(1, keepdim=True).pow(1 / p)
    ref = (absw / col + absw / row) * in_norm.double() ** 0.5
    torch.testing.assert_close(oracle_score(w, "ria", in_norm=in_norm, p=p), ref.float(), rtol=1e-6, atol=0)


def test_stochria_full_sample_is_ria():
    w = make_weight((7, 13), "randn")
    in_norm = make_norm(13)
    torch.testing.assert_close(
        oracle_score(w, "stochria", in_norm=in_norm, beta=1.0),
        oracle_score(w, "ria", in_norm=in_norm, p=1.0), rtol=1e-6, atol=0)


def test_stochria_sampling_order():
    # Row samples are drawn first (one randperm(in) per row), then column samples.
    w = torch.arange(1.0, 13.0).reshape(3, 4)
    row, col = oracle_stochria_norms(w, beta=0.5, seed=3)
    g = torch.Generator().manual_seed(3)
    expect_row = []
    for i in range(3):
        idx = torch.randperm(4, generator=g)[:2]
        expect_row.append(2.0 * float(w[i, idx].sum()))
    expect_col = []
    for j in range(4):
        idx = torch.randperm(3, generator=g)[:2]  # round(1.5) = 2
        expect_col.append(1.5 * float(w[idx, j].sum()))
    assert row.tolist() == expect_row
    assert col.tolist() == expect_col


def test_row_and_layer_tie_breaking():
    s = torch.zeros(2, 5)
    keep = oracle_row_mask(s, 0.5)  # floor(2.5) = 2 lowest per row: columns 0, 1
    assert keep.tolist() == [[False, False, True, True, True]] * 2
    keep = oracle_layer_mask(s, 0.5)  # floor(5) = 5 lowest, row-major
    assert keep.tolist() == [[False] * 5, [True] * 5]
    s = torch.tensor([[3.0, 1.0, 2.0, 1.0, 0.5]])
    assert oracle_row_mask(s, 0.6).tolist() == [[True, False, True, False, False]]


def test_nm_tie_breaking():
    s = torch.tensor([[1.0, 1.0, 1.0, 1.0, 4.0, 3.0, 2.0, 1.0]])
    assert oracle_nm_mask(s, 2, 4).tolist() == [[False, False, True, True, True, True, False, False]]
    assert oracle_nm_mask(s, 1, 4).tolist() == [[False, False, False, True, True, False, False, False]]
    assert oracle_nm_mask(s, 3, 4).tolist() == [[False, True, True, True, True, True, True, False]]


def test_channel_permutation_snake():
    # column sums ascending are columns 0..7 in order; c = 2 groups of m = 4
    s = torch.arange(8.0).reshape(1, 8)
    assert oracle_channel_permutation(s, 4).tolist() == [0, 3, 4, 7, 1, 2, 5, 6]
    # reversed importance, and ties by lower index: columns 0 and 1 tie at the top
    s = torch.tensor([[7.0, 7.0, 5.0, 4.0, 3.0, 2.0, 1.0, 0.0]])
    order = [7, 6, 5, 4, 3, 2, 0, 1]
    expect = [order[0], order[3], order[4], order[7], order[1], order[2], order[5], order[6]]
    assert oracle_channel_permutation(s, 4).tolist() == expect


def test_permuted_nm_is_nm_in_permuted_order():
    s = make_weight((6, 16), "randn").abs()
    mask, perm = oracle_permuted_nm_mask(s, 2, 4)
    assert sorted(perm.tolist()) == list(range(16))
    kept = mask[:, perm].reshape(6, 4, 4).sum(2)
    assert torch.all(kept == 2)
