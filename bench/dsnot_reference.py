"""Vectorised plain-PyTorch DSnoT, the baseline for bench_dsnot.py.

Written from docs/semantics.md#dsnot (not copied from any other project), in
the style of DSnoT's public code: every row advances together, one swap per row per cycle,
with full stable sorts of every row up front and per-row pointers into the sorted lists.
It implements the project's exhaustion rule (a row stops when the side it needs has no
candidate left) and its tie rules, so it must give the same masks as symprune.dsnot and as
tests/dsnot_oracle.py. R2-DSnoT options are not implemented.

Masks are bool, True = kept.
"""

from __future__ import annotations

import torch

EPS_VAR = 1e-12


def _sorted_with_counts(key: torch.Tensor, cls: torch.Tensor, n_cls: int):
    """Rows of column indices ordered by class (0..n_cls-1), then by key ascending, then by
    column index (two stable sorts). Returns the order and the per-row count of each class."""
    order = torch.sort(key, dim=1, stable=True).indices
    cls_sorted = torch.gather(cls, 1, order)
    order = torch.gather(order, 1, torch.sort(cls_sorted, dim=1, stable=True).indices)
    counts = [(cls == c).sum(1) for c in range(n_cls)]
    return order, counts


@torch.no_grad()
def dsnot_reference(weight, keep_mask, *, in_norm, in_mean, in_var, nm=None, max_cycles=50,
                    threshold=0.1, var_power=1.0, initial_score=None):
    out_f, in_f = weight.shape
    device = weight.device
    w = weight.float()
    in_norm = in_norm.to(device, torch.float32)
    in_mean = in_mean.to(device, torch.float32)
    in_var = in_var.to(device, torch.float32)
    kept0 = keep_mask.to(device, torch.bool)
    mask = kept0.clone()
    rows = torch.arange(out_f, device=device)

    d = w * in_mean.unsqueeze(0)                                   # fp32
    g = d / torch.pow(in_var.clamp_min(EPS_VAR), var_power).unsqueeze(0)
    e = torch.where(kept0, 0.0, d.double()).sum(1)                # fp64
    e0 = e.clone()

    # Grow list: one stable ascending sort of g over all columns, non-candidates (kept, D == 0)
    # forced to 0. Reading from the low end gives g < 0 smallest first (ties lower index);
    # from the high end g > 0 largest first (ties higher index). The zero band in between is
    # never read: a pointer that would enter it means the side is exhausted.
    grow_cand = ~kept0 & (d != 0)
    g_key = torch.where(grow_cand, g, torch.zeros((), device=device))
    grow_order = torch.sort(g_key, dim=1, stable=True).indices
    n_neg = (g_key < 0).sum(1)
    n_pos = (g_key > 0).sum(1)
    lo = torch.zeros(out_f, dtype=torch.long, device=device)       # next g < 0
    hi = torch.full((out_f,), in_f - 1, dtype=torch.long, device=device)  # next g > 0

    if nm is None:
        # Prune list: kept entries with D != 0 ordered by the Wanda metric ascending; class 0 =
        # D < 0 (taken when e > 0), class 1 = D > 0 (taken when e < 0), class 2 = the rest.
        metric = w.abs() * in_norm.unsqueeze(0)
        cls = torch.full_like(mask, 2, dtype=torch.long)
        cls[kept0 & (d < 0)] = 0
        cls[kept0 & (d > 0)] = 1
        prune_order, (p_neg, p_pos, _) = _sorted_with_counts(metric, cls, 3)
        pn = torch.zeros(out_f, dtype=torch.long, device=device)   # into class 0
        pp = torch.zeros(out_f, dtype=torch.long, device=device)   # into class 1
    else:
        _, m = nm
        score = (w.abs() * in_norm.unsqueeze(0) if initial_score is None
                 else initial_score.to(device, torch.float32))
        inf = torch.tensor(float("inf"), device=device)
        # initially kept and not yet examined; an examined entry's score is raised to +inf
        avail = kept0.clone()
        key = torch.where(avail, score, inf)
        offsets = torch.arange(m, device=device)

    active = torch.ones(out_f, dtype=torch.bool, device=device)
    for _ in range(max_cycles):
        active &= e.abs() > threshold
        if not bool(active.any()):
            break
        pos = e > 0
        # grow
        r_ptr = torch.where(pos, hi, lo).clamp(0, in_f - 1)
        r = grow_order[rows, r_ptr]
        r_ok = torch.where(pos, hi >= in_f - n_pos, lo < n_neg)
        # prune
        if nm is None:
            p_ptr = torch.where(pos, pn, p_neg + pp).clamp(0, in_f - 1)
            p = prune_order[rows, p_ptr]
            p_ok = torch.where(pos, pn < p_neg, pp < p_pos)
        else:
            block = (r - r % m).unsqueeze(1) + offsets            # (out, m)
            bkey = torch.gather(key, 1, block)
            p = torch.gather(block, 1, bkey.argmin(1, keepdim=True)).squeeze(1)
            p_ok = torch.gather(avail, 1, block).any(1)
        active &= r_ok & p_ok
        if not bool(active.any()):
            break
        e_new = e + (d[rows, p].double() - d[rows, r].double())
        if nm is not None:
            # examined whether or not the swap happens
            ar, ap = rows[active], p[active]
            avail[ar, ap] = False
            key[ar, ap] = inf
            active &= torch.sign(e_new) == torch.sign(e0)
        ar = rows[active]
        mask[ar, r[active]] = True
        mask[ar, p[active]] = False
        e = torch.where(active, e_new, e)
        hi = hi - (active & pos).long()
        lo = lo + (active & ~pos).long()
        if nm is None:
            pn = pn + (active & pos).long()
            pp = pp + (active & ~pos).long()
    return mask
