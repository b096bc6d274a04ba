"""Plain PyTorch oracles for symprune's statistics, scorers and masks.

Written directly from the definitions in docs/semantics.md (statistics, scores, masks).
They are deliberately slow and simple: Python
loops over rows / groups, one obvious formula per line, no cleverness. They import
nothing from symprune, so a bug in the library cannot leak into its own reference.

Conventions (docs/semantics.md):
- weights are ``nn.Linear.weight``, shape (out, in); masks are bool, True = kept;
- scores are fp32; row/column norms are accumulated in fp64 and rounded to fp32 once;
  ``in_norm ** a`` is ``torch.pow`` on the fp32 vector; a zero norm contributes 0;
- selections prune the lowest scores, ties to the lower index first (row-major for
  per-layer masks) -- exactly a stable ascending ``torch.sort``.
"""

from __future__ import annotations

import math

import torch

METHODS = ("magnitude", "wanda", "ria", "stochria", "symwanda", "owanda", "symmetric")
NEEDS_IN_NORM = ("wanda", "ria", "stochria", "symwanda")
NEEDS_OUT_NORM = ("symwanda", "owanda")


# --------------------------------------------------------------------------------------
# Statistics (docs/semantics.md#statistics, semantics.md "Statistics")
# --------------------------------------------------------------------------------------

def oracle_stats(updates):
    """Statistics after feeding every tensor of ``updates`` (each (..., F)) in order.

    - a 3-D or higher update counts prod(shape[:-2]) sequences, a 1-D or 2-D one sequence;
    - tokens = numel / F; everything accumulated in fp64, returned as fp32;
    - in_sq = sum x^2, in_norm = sqrt(in_sq / sequences), in_mean = sum x / sequences;
    - in_var = sum_u tokens_u * var_pop(x_u) / tokens (one update = one variance unit).
    """
    assert len(updates) > 0
    features = updates[0].shape[-1]
    sum_sq = torch.zeros(features, dtype=torch.float64)
    sum_x = torch.zeros(features, dtype=torch.float64)
    weighted_var = torch.zeros(features, dtype=torch.float64)
    tokens = 0
    sequences = 0
    for x in updates:
        assert x.shape[-1] == features
        if x.dim() >= 3:
            sequences += math.prod(x.shape[:-2])
        else:
            sequences += 1
        rows = x.to(torch.float64).reshape(-1, features)  # (tokens_u, F), exact upcast
        tokens_u = rows.shape[0]
        tokens += tokens_u
        sum_sq += (rows * rows).sum(dim=0)
        sum_x += rows.sum(dim=0)
        mean_u = rows.sum(dim=0) / tokens_u
        var_u = ((rows - mean_u) ** 2).sum(dim=0) / tokens_u  # population variance
        weighted_var += tokens_u * var_u
    return dict(
        in_sq=sum_sq.to(torch.float32),
        in_norm=torch.sqrt(sum_sq / sequences).to(torch.float32),
        in_mean=(sum_x / sequences).to(torch.float32),
        in_var=(weighted_var / tokens).to(torch.float32),
        tokens=tokens,
        sequences=sequences,
    )


# --------------------------------------------------------------------------------------
# Scores (docs/semantics.md#scores)
# --------------------------------------------------------------------------------------

def _lp_norm_fp64(values_fp64, p):
    """(sum |v|^p)^(1/p) of a 1-D fp64 tensor, as a Python float (fp64)."""
    total = 0.0
    for v in values_fp64.tolist():
        total += abs(v) ** p
    if p == 1:
        return total
    return total ** (1.0 / p)


def _row_norms(abs_w_fp64, p):
    """fp32 vector (out,): ||W_i:||_p accumulated in fp64, rounded to fp32 once."""
    out = abs_w_fp64.shape[0]
    norms = [_lp_norm_fp64(abs_w_fp64[i, :], p) for i in range(out)]
    return torch.tensor(norms, dtype=torch.float64).to(torch.float32)


def _col_norms(abs_w_fp64, p):
    """fp32 vector (in,): ||W_:j||_p accumulated in fp64, rounded to fp32 once."""
    inf = abs_w_fp64.shape[1]
    norms = [_lp_norm_fp64(abs_w_fp64[:, j], p) for j in range(inf)]
    return torch.tensor(norms, dtype=torch.float64).to(torch.float32)


def _div_or_zero(num, den):
    """num / den elementwise in fp32, 0 where den == 0 ("a zero norm contributes 0")."""
    return torch.where(den == 0, torch.zeros_like(num), num / den)


def _py_round(x):
    # NOTE: semantics.md writes round(beta * n) without saying how halves round. Python's
    # round is half-to-even, C++ std::round is half-away-from-zero; the tests only use
    # (beta, n) pairs where the two conventions agree (see round_is_ambiguous()).
    return int(round(x))


def round_is_ambiguous(beta, n):
    """True when max(1, round(beta * n)) depends on how halves are rounded."""
    v = beta * n
    if abs((v - math.floor(v)) - 0.5) > 1e-9:
        return False
    return max(1, round(v)) != max(1, math.floor(v + 0.5))


def stochria_sample_sizes(out_features, in_features, beta):
    k_row = max(1, _py_round(beta * in_features))
    k_col = max(1, _py_round(beta * out_features))
    return k_row, k_col


def oracle_stochria_norms(weight, beta, seed):
    """Sampled l1 norms (row_norms (out,), col_norms (in,)), fp32, per semantics.md.

    g = torch.Generator().manual_seed(seed); for each row i in order,
    torch.randperm(in, generator=g)[:k_row] are the sampled columns; then for each column
    j in order, torch.randperm(out, generator=g)[:k_col] the sampled rows. The estimate
    is (n / k) * sum_sampled |W| in fp64, rounded to fp32.
    """
    out_features, in_features = weight.shape
    k_row, k_col = stochria_sample_sizes(out_features, in_features, beta)
    abs_w = weight.to(torch.float64).abs()
    g = torch.Generator().manual_seed(seed)
    row_est = []
    for i in range(out_features):
        cols = torch.randperm(in_features, generator=g)[:k_row]
        total = 0.0
        for j in cols.tolist():
            total += abs_w[i, j].item()
        row_est.append((in_features / k_row) * total)
    col_est = []
    for j in range(in_features):
        rows = torch.randperm(out_features, generator=g)[:k_col]
        total = 0.0
        for i in rows.tolist():
            total += abs_w[i, j].item()
        col_est.append((out_features / k_col) * total)
    row_norms = torch.tensor(row_est, dtype=torch.float64).to(torch.float32)
    col_norms = torch.tensor(col_est, dtype=torch.float64).to(torch.float32)
    return row_norms, col_norms


def _relative_importance(abs_w32, row_norms32, col_norms32):
    """|W|/||W_:j|| + |W|/||W_i:|| in fp32 (column term + row term)."""
    col_term = _div_or_zero(abs_w32, col_norms32.reshape(1, -1).expand_as(abs_w32))
    row_term = _div_or_zero(abs_w32, row_norms32.reshape(-1, 1).expand_as(abs_w32))
    return col_term + row_term


def oracle_score(weight, method, in_norm=None, out_norm=None, a=0.5, p=1.0, beta=0.1, seed=0):
    """fp32 importance score of ``weight`` (out, in); higher = more important."""
    assert weight.dim() == 2 and weight.is_floating_point()
    assert method in METHODS, method
    abs_w32 = weight.abs().to(torch.float32)  # |W| is exact in every float dtype
    abs_w64 = weight.to(torch.float64).abs()
    if in_norm is not None:
        in_norm = in_norm.to(torch.float32).reshape(1, -1)   # broadcast over rows
    if out_norm is not None:
        out_norm = out_norm.to(torch.float32).reshape(-1, 1)  # broadcast over columns

    if method == "magnitude":
        return abs_w32.clone()
    if method == "wanda":
        return abs_w32 * in_norm
    if method == "owanda":
        return abs_w32 * out_norm
    if method == "symwanda":
        return abs_w32 * (in_norm + out_norm)
    if method == "symmetric":
        col = _col_norms(abs_w64, 2).reshape(1, -1)
        row = _row_norms(abs_w64, 2).reshape(-1, 1)
        return abs_w32 * (col + row)
    if method == "ria":
        ri = _relative_importance(abs_w32, _row_norms(abs_w64, p), _col_norms(abs_w64, p))
        return ri * torch.pow(in_norm, a)
    if method == "stochria":  # p is ignored: stochria is ria with p = 1
        row, col = oracle_stochria_norms(weight, beta, seed)
        ri = _relative_importance(abs_w32, row, col)
        return ri * torch.pow(in_norm, a)
    raise AssertionError("unreachable")


# --------------------------------------------------------------------------------------
# Masks (docs/semantics.md#masks, semantics.md "Masks"); True = kept
# --------------------------------------------------------------------------------------

def _prune_lowest(values_1d, count):
    """Keep mask of a 1-D score: prune its ``count`` lowest, ties to the lower index."""
    keep = torch.ones(values_1d.numel(), dtype=torch.bool)
    order = torch.sort(values_1d, stable=True).indices  # ascending
    keep[order[:count]] = False
    return keep


def oracle_row_mask(score, s):
    """Every row loses exactly floor(in * s) entries."""
    out_features, in_features = score.shape
    count = math.floor(in_features * s)
    mask = torch.ones(out_features, in_features, dtype=torch.bool)
    for i in range(out_features):
        mask[i] = _prune_lowest(score[i], count)
    return mask


def oracle_layer_mask(score, s):
    """Exactly floor(out * in * s) entries of the whole matrix, ties by row-major index."""
    count = math.floor(score.numel() * s)
    return _prune_lowest(score.reshape(-1), count).reshape(score.shape)


def oracle_nm_mask(score, n, m):
    """Keep n of every m consecutive columns of each row (prune the m - n lowest)."""
    out_features, in_features = score.shape
    assert 1 <= n < m and in_features % m == 0
    rows = []
    for row_values in score.tolist():
        keep_row = []
        for start in range(0, in_features, m):
            group = row_values[start:start + m]
            # Python's sorted is stable: equal scores keep their column order, so the
            # lower column index comes first and is pruned first.
            ascending = sorted(range(m), key=lambda t: group[t])
            pruned = set(ascending[:m - n])
            keep_row.extend(t not in pruned for t in range(m))
        rows.append(keep_row)
    return torch.tensor(rows, dtype=torch.bool).reshape(out_features, in_features)


def oracle_channel_permutation(score, m):
    """perm (int64, (in,)): column sums (fp64), stable ascending argsort ``order``;
    c = in / m; perm[g*m + t] = order[t*c + g] (t even), order[(t+1)*c - 1 - g] (t odd)."""
    in_features = score.shape[1]
    assert in_features % m == 0
    c = in_features // m
    column_sums = score.to(torch.float64).sum(dim=0)
    order = torch.sort(column_sums, stable=True).indices.tolist()
    perm = [0] * in_features
    for g in range(c):
        for t in range(m):
            if t % 2 == 0:
                perm[g * m + t] = order[t * c + g]
            else:
                perm[g * m + t] = order[(t + 1) * c - 1 - g]
    return torch.tensor(perm, dtype=torch.int64)


def oracle_permuted_nm_mask(score, n, m):
    """(mask, perm): N:M chosen on score[:, perm], mapped back to the original columns,
    so that mask[:, perm] is N:M."""
    perm = oracle_channel_permutation(score, m)
    permuted_mask = oracle_nm_mask(score[:, perm], n, m)
    mask = torch.ones_like(permuted_mask)
    for new_col, old_col in enumerate(perm.tolist()):
        mask[:, old_col] = permuted_mask[:, new_col]
    return mask, perm


# --------------------------------------------------------------------------------------
# Count checks shared by the tests
# --------------------------------------------------------------------------------------

def assert_row_counts(mask, s):
    in_features = mask.shape[1]
    pruned = (~mask).sum(dim=1)
    assert torch.all(pruned == math.floor(in_features * s)), pruned.tolist()


def assert_layer_count(mask, s):
    assert int((~mask).sum()) == math.floor(mask.numel() * s)


def assert_nm(mask, n, m):
    out_features, in_features = mask.shape
    kept = mask.reshape(out_features, in_features // m, m).sum(dim=2)
    assert torch.all(kept == n), kept.tolist()
