"""Deterministic test inputs shared by the oracle tests (weights, norms, scores)."""

from __future__ import annotations

import torch

DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}

# Odd shapes for unstructured scores and masks, and shapes whose in_features is
# divisible by both 4 and 8 for N:M.
SHAPES = [(7, 13), (1, 9), (33, 64), (5, 40)]
NM_SHAPES = [(5, 40), (33, 64), (1, 8), (7, 24), (3, 16)]
NM_PATTERNS = [(1, 4), (2, 4), (4, 8), (3, 8)]
SPARSITIES = [0.0, 0.5, 0.9]

WEIGHT_KINDS = ["randn", "quantised", "zero_rows_cols"]


def _gen(*key):
    """A generator seeded from the test case, so every case is reproducible."""
    seed = 0
    for part in key:
        for ch in str(part):
            seed = (seed * 131 + ord(ch)) % (2**31 - 1)
    return torch.Generator().manual_seed(seed)


def make_weight(shape, kind, dtype=torch.float32, key=()):
    """fp32 base weight of the requested kind, then cast to ``dtype``.

    randn            : continuous values, no ties (in fp32)
    quantised        : randint(-3, 4) / 4, full of ties and exact zeros
    quantised_nonzero: +-{1,2,3} / 4, full of ties but no zeros
    zero_rows_cols   : randn with whole rows and columns set to exactly zero
    """
    out_features, in_features = shape
    g = _gen("w", shape, kind, key)
    if kind == "randn":
        w = torch.randn(shape, generator=g)
    elif kind == "quantised":
        w = torch.randint(-3, 4, shape, generator=g).to(torch.float32) / 4
    elif kind == "quantised_nonzero":
        mag = torch.randint(1, 4, shape, generator=g).to(torch.float32)
        sign = torch.randint(0, 2, shape, generator=g).to(torch.float32) * 2 - 1
        w = sign * mag / 4
    elif kind == "zero_rows_cols":
        w = torch.randn(shape, generator=g)
        if out_features > 1:
            w[0::3, :] = 0
        w[:, 1::4] = 0
    else:
        raise ValueError(kind)
    return w.to(dtype)


def make_norm(n, kind="positive", key=()):
    """fp32 activation norm vector of length n (>= 0)."""
    g = _gen("norm", n, kind, key)
    v = torch.rand(n, generator=g) * 3 + 0.05
    if kind == "with_zeros":
        v[0::5] = 0
    elif kind != "positive":
        raise ValueError(kind)
    return v


SCORE_KINDS = ["randn", "ties", "const_rows", "zero_rows_cols", "bf16_wanda"]


def make_score(shape, kind, key=()):
    """fp32 score matrices that stress the selection code."""
    out_features, in_features = shape
    g = _gen("s", shape, kind, key)
    if kind == "randn":  # signed, continuous
        return torch.randn(shape, generator=g)
    if kind == "ties":  # quantised magnitudes: many equal values in every row
        return torch.randint(-3, 4, shape, generator=g).to(torch.float32).abs() / 4
    if kind == "const_rows":  # some rows entirely tied, one row all zero
        s = torch.rand(shape, generator=g)
        s[0, :] = 0.0
        s[1::2, :] = 0.75
        return s
    if kind == "zero_rows_cols":
        s = torch.rand(shape, generator=g)
        if out_features > 1:
            s[1::3, :] = 0
        s[:, 0::3] = 0
        return s
    if kind == "bf16_wanda":  # scores of a bf16 weight: coarse values, some ties
        w = torch.randn(shape, generator=g).to(torch.bfloat16)
        return w.abs().to(torch.float32) * (torch.rand(in_features, generator=g) + 0.5)
    raise ValueError(kind)
