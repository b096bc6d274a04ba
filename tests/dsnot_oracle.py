"""Slow, obviously-correct oracle for DSnoT and R2-DSnoT (docs/semantics.md#dsnot and #r2-dsnot as refined by
docs/semantics.md).

Everything here is written from the specification, independently of symprune: one row at a
time, with Python loops and Python floats. Masks are bool, True = kept.

Precision rules (docs/semantics.md):
- D = fp32(W) * fp32(in_mean), an fp32 product.
- e = sum of D over the initially pruned entries, accumulated in fp64 (in column order) and
  updated in fp64 as e + (D_p - D_r).
- grow key g = D / torch.pow(clamp_min(in_var, 1e-12), v), in fp32.
- prune metric |W| * in_norm in fp32 (or RI * in_norm^a with relative="prune").
- RI = |W|/colsum + |W|/rowsum, the sums accumulated in fp64 and rounded to fp32 once, a zero
  sum contributing 0; in_norm^a is torch.pow on the fp32 vector.

Python floats hold fp32 values exactly, so comparing the ``.tolist()`` values compares the fp32
values themselves.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch

EPS_VAR = 1e-12
EPS_BOUNDARY = 1e-12


# --------------------------------------------------------------------------------------------
# statistics (docs/semantics.md#statistics)
# --------------------------------------------------------------------------------------------
def activation_stats(sequences) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(in_norm, in_mean, in_var) in fp32 from an iterable of (L, F) sequences.

    in_norm = sqrt(sum x^2 / nseq), in_mean = sum x / nseq (L x the per-token mean),
    in_var = token-weighted mean over sequences of the per-sequence population variance.
    Accumulated in fp64.
    """
    sum_sq = sum_ = wvar = None
    tokens = nseq = 0
    for x in sequences:
        x = x.reshape(-1, x.shape[-1]).double()
        t = x.shape[0]
        s2 = (x * x).sum(0)
        s1 = x.sum(0)
        mu = s1 / t
        var = ((x - mu) ** 2).sum(0) / t
        sum_sq = s2 if sum_sq is None else sum_sq + s2
        sum_ = s1 if sum_ is None else sum_ + s1
        wvar = var * t if wvar is None else wvar + var * t
        tokens += t
        nseq += 1
    if nseq == 0:
        raise ValueError("no sequences")
    in_norm = torch.sqrt(sum_sq / nseq).float()
    in_mean = (sum_ / nseq).float()
    in_var = (wvar / tokens).float()
    return in_norm, in_mean, in_var


# --------------------------------------------------------------------------------------------
# the per-matrix quantities, all fp32
# --------------------------------------------------------------------------------------------
def relative_importance(w32: torch.Tensor) -> torch.Tensor:
    """RIA's RI with p = 1: |W|/sum_i|W_ij| + |W|/sum_j|W_ij| (fp32; a zero sum contributes 0)."""
    absw = w32.abs()
    out_f, in_f = absw.shape
    colsum = [0.0] * in_f
    rowsum = [0.0] * out_f
    rows = absw.double().tolist()
    for i in range(out_f):
        for j in range(in_f):
            colsum[j] += rows[i][j]
            rowsum[i] += rows[i][j]
    col = torch.tensor(colsum, dtype=torch.float64).float()  # rounded to fp32 once
    row = torch.tensor(rowsum, dtype=torch.float64).float()
    zero = torch.zeros((), dtype=torch.float32)
    by_col = torch.where(col.unsqueeze(0) > 0, absw / col.unsqueeze(0), zero)
    by_row = torch.where(row.unsqueeze(1) > 0, absw / row.unsqueeze(1), zero)
    return by_col + by_row


def _as_f32(t: torch.Tensor) -> torch.Tensor:
    return t.detach().to(device="cpu", dtype=torch.float32)


@dataclass
class Quantities:
    d: torch.Tensor          # D = W * in_mean (fp32)
    grow_key: torch.Tensor   # g (fp32)
    prune_metric: torch.Tensor  # unstructured prune order (fp32)
    nm_score: torch.Tensor   # N:M initial score (fp32)
    phi_hat: list = field(default_factory=list)  # per row list of fp64 phi_hat (R2 boundary)


def quantities(weight, *, in_norm, in_mean, in_var, var_power=1.0, initial_score=None,
               relative=None, a=0.5, q=1.0, regularised=False) -> Quantities:
    w = _as_f32(weight)
    in_norm = _as_f32(in_norm)
    in_mean = _as_f32(in_mean)
    in_var = _as_f32(in_var)
    d = w * in_mean.unsqueeze(0)
    denom = torch.pow(in_var.clamp_min(EPS_VAR), var_power)
    wanda = w.abs() * in_norm.unsqueeze(0)
    ri = relative_importance(w) if relative in ("prune", "grow") else None
    if relative == "grow":
        grow_key = torch.sign(w) * ri * in_mean.unsqueeze(0) / denom.unsqueeze(0)
    else:
        grow_key = d / denom.unsqueeze(0)
    if relative == "prune":
        prune_metric = ri * torch.pow(in_norm, a).unsqueeze(0)
    else:
        prune_metric = wanda
    if relative == "prune":
        nm_score = prune_metric
    elif initial_score is not None:
        nm_score = _as_f32(initial_score)
    else:
        nm_score = wanda
    phi_hat = []
    if regularised:
        phi = torch.pow(w.abs(), q) * in_norm.unsqueeze(0)
        for row in phi.tolist():
            mean = math.fsum(row) / len(row)
            phi_hat.append([x / mean if mean > 0 else 0.0 for x in row])
    return Quantities(d, grow_key, prune_metric, nm_score, phi_hat)


def initial_error(weight, keep_mask, in_mean) -> list[float]:
    """e_i = sum of D over the pruned entries of row i (fp64, column order)."""
    d = (_as_f32(weight) * _as_f32(in_mean).unsqueeze(0)).tolist()
    keep = keep_mask.tolist()
    out = []
    for drow, krow in zip(d, keep):
        e = 0.0
        for dj, kj in zip(drow, krow):
            if not kj:
                e += dj
        out.append(e)
    return out


def _sign(x: float) -> int:
    return (x > 0) - (x < 0)


@dataclass
class RowInfo:
    e0: float
    e: float
    cycles: int = 0      # iterations that examined a candidate pair (swap, rejected swap)
    swaps: int = 0
    rejected: int = 0    # R2 rejections
    stop: str = "max_cycles"  # "threshold", "grow_exhausted", "prune_exhausted", "sign", "max_cycles"


def _refine_row(keep, d, g, pm, nms, phat, *, nm, max_cycles, threshold, gamma1, gamma2):
    """Refines one row in place (keep: list of bool). Returns RowInfo."""
    n_in = len(keep)
    initially_kept = list(keep)

    e = 0.0
    for j in range(n_in):
        if not initially_kept[j]:
            e += d[j]
    e0 = e
    info = RowInfo(e0=e0, e=e)

    # Grow candidates: initially pruned with D != 0.
    grow_c = [j for j in range(n_in) if not initially_kept[j] and d[j] != 0.0]
    # e > 0: largest g > 0 first, ties higher index first.
    grow_pos = sorted((j for j in grow_c if g[j] > 0), key=lambda j: (-g[j], -j))
    # e < 0: smallest g < 0 first, ties lower index first.
    grow_neg = sorted((j for j in grow_c if g[j] < 0), key=lambda j: (g[j], j))
    gp = gn = 0  # pointers into grow_pos / grow_neg

    if nm is None:
        prune_c = sorted((j for j in range(n_in) if initially_kept[j] and d[j] != 0.0),
                         key=lambda j: (pm[j], j))
        prune_dneg = [j for j in prune_c if d[j] < 0]  # taken when e > 0
        prune_dpos = [j for j in prune_c if d[j] > 0]  # taken when e < 0
        pn = pp = 0
    else:
        m = nm[1]
        examined = [False] * n_in

    regularised = gamma1 is not None or gamma2 is not None
    g1 = gamma1 or 0.0
    g2 = gamma2 or 0.0

    for _ in range(max_cycles):
        if not abs(e) > threshold:
            info.stop = "threshold"
            break
        positive = e > 0
        # grow candidate
        if positive:
            if gp >= len(grow_pos):
                info.stop = "grow_exhausted"
                break
            r = grow_pos[gp]
        else:
            if gn >= len(grow_neg):
                info.stop = "grow_exhausted"
                break
            r = grow_neg[gn]
        # prune candidate
        if nm is None:
            if positive:
                if pn >= len(prune_dneg):
                    info.stop = "prune_exhausted"
                    break
                p = prune_dneg[pn]
            else:
                if pp >= len(prune_dpos):
                    info.stop = "prune_exhausted"
                    break
                p = prune_dpos[pp]
        else:
            start = r - r % m
            avail = [j for j in range(start, start + m) if initially_kept[j] and not examined[j]]
            if not avail:
                info.stop = "prune_exhausted"
                break
            p = min(avail, key=lambda j: (nms[j], j))
            examined[p] = True
        # consume both candidates (only the side that was read)
        if positive:
            gp += 1
        else:
            gn += 1
        if nm is None:
            if positive:
                pn += 1
            else:
                pp += 1
        info.cycles += 1

        e_new = e + (d[p] - d[r])
        if nm is not None and _sign(e_new) != _sign(e0):
            info.stop = "sign"
            break
        if regularised:
            crit = (abs(e_new) - abs(e)) / (abs(e) + EPS_BOUNDARY) + g1 * phat[p] - g2 * phat[r]
            if not crit < 0:
                info.rejected += 1
                continue
        keep[r] = True
        keep[p] = False
        e = e_new
        info.swaps += 1
    info.e = e
    return info


def dsnot_oracle(weight, keep_mask, *, in_norm, in_mean, in_var, nm=None, max_cycles=50,
                 threshold=0.1, var_power=1.0, initial_score=None, relative=None, a=0.5,
                 gamma1=None, gamma2=None, q=1.0, return_info=False):
    """Reference DSnoT / R2-DSnoT. Returns the refined keep mask (bool, True = kept), and the
    per-row RowInfo list when return_info=True."""
    regularised = gamma1 is not None or gamma2 is not None
    qs = quantities(weight, in_norm=in_norm, in_mean=in_mean, in_var=in_var,
                    var_power=var_power, initial_score=initial_score, relative=relative,
                    a=a, q=q, regularised=regularised)
    d = qs.d.tolist()
    g = qs.grow_key.tolist()
    pm = qs.prune_metric.tolist()
    nms = qs.nm_score.tolist()
    keep = keep_mask.to("cpu").tolist()
    infos = []
    for i in range(len(keep)):
        infos.append(_refine_row(keep[i], d[i], g[i], pm[i], nms[i],
                                 qs.phi_hat[i] if regularised else None,
                                 nm=nm, max_cycles=max_cycles, threshold=threshold,
                                 gamma1=gamma1, gamma2=gamma2))
    out = torch.tensor(keep, dtype=torch.bool).reshape(keep_mask.shape)
    return (out, infos) if return_info else out
