"""Plain PyTorch oracles of the weight-reconstruction methods, written from the algorithms
(docs/semantics.md#weight-reconstruction) in fp64, column by column and row by row. They import
nothing from symprune."""

from __future__ import annotations

import torch


def damped(gram: torch.Tensor, percdamp: float, dead_to_one: bool) -> tuple[torch.Tensor, torch.Tensor]:
    h = gram.double().clone()
    dead = torch.diag(h) == 0
    if dead_to_one:
        h[dead, dead] = 1
    h += percdamp * torch.mean(torch.diag(h)) * torch.eye(h.shape[0], dtype=torch.float64)
    return h, dead


def oracle_sparsegpt(weight: torch.Tensor, gram: torch.Tensor, sparsity: float | None = None,
                     nm: tuple[int, int] | None = None, blocksize: int = 128,
                     percdamp: float = 0.01) -> torch.Tensor:
    """The SparseGPT reference algorithm, one column at a time, in fp64; ties in a group go
    to the lower index first."""
    w = weight.double().clone()
    h, dead = damped(gram, percdamp, dead_to_one=True)
    w[:, dead] = 0
    u = torch.linalg.cholesky(torch.cholesky_inverse(torch.linalg.cholesky(h)), upper=True)
    rows, cols = w.shape
    for i1 in range(0, cols, blocksize):
        i2 = min(i1 + blocksize, cols)
        w1 = w[:, i1:i2].clone()
        err = torch.zeros_like(w1)
        u1 = u[i1:i2, i1:i2]
        d = torch.diag(u1)
        if sparsity is not None:
            key = w1 ** 2 / d.unsqueeze(0) ** 2
            threshold = torch.sort(key.flatten())[0][int(key.numel() * sparsity)]
            prune = key <= threshold
        else:
            prune = torch.zeros_like(w1, dtype=torch.bool)
        for i in range(i2 - i1):
            if nm is not None and i % nm[1] == 0:
                for r in range(rows):
                    key = [(float(w1[r, i + j] ** 2 / d[i + j] ** 2), j) for j in range(nm[1])]
                    for _, j in sorted(key)[: nm[1] - nm[0]]:  # ties: lower index first
                        prune[r, i + j] = True
            q = torch.where(prune[:, i], torch.zeros_like(w1[:, i]), w1[:, i])
            e = (w1[:, i] - q) / d[i]
            w1[:, i:] -= e.unsqueeze(1) * u1[i, i:].unsqueeze(0)
            w1[:, i] = q
            err[:, i] = e
        w[:, i1:i2] = w1
        w[:, i2:] -= err @ u[i1:i2, i2:]
    return w


def oracle_refit(weight: torch.Tensor, keep: torch.Tensor, gram: torch.Tensor,
                 percdamp: float = 0.01) -> torch.Tensor:
    """Per row, the kept weights v_S = H_SS^-1 (H w)_S of the damped Gram, by torch.linalg.solve."""
    h, _ = damped(gram, percdamp, dead_to_one=False)
    w = weight.double()
    out = torch.zeros_like(w)
    for r in range(w.shape[0]):
        s = keep[r].nonzero().flatten()
        if s.numel():
            out[r, s] = torch.linalg.solve(h[s][:, s], (h @ w[r])[s])
    return out


def objective(weight: torch.Tensor, pruned: torch.Tensor, gram: torch.Tensor, percdamp: float = 0.01) -> float:
    """Sum over rows of (w - v)^T (H + lambda I) (w - v)."""
    h, _ = damped(gram, percdamp, dead_to_one=False)
    d = weight.double() - pruned.double()
    return float(((d @ h) * d).sum())


def oracle_admm(weight: torch.Tensor, gram: torch.Tensor, initial_keep: torch.Tensor, project,
                percdamp: float = 0.01, rho0: float = 0.1, growth: float = 1.15,
                max_iterations: int = 300, patience: int = 10) -> torch.Tensor:
    """ADMM on min (B - V) Hs (B - V)^T with V in the pattern, in fp64, in the input-scaled
    coordinates B = W D, Hs = D^-1 H D^-1, D = sqrt(diag H): V by a linear solve per penalty,
    Z by `project` (a function of |V + U| returning the keep mask), the scaled dual U;
    rho = rho0 * growth^(iteration // 3); then, row by row, the better of the exact refits
    of the final and of the initial support."""
    h, _ = damped(gram, percdamp, dead_to_one=False)
    d = torch.diag(h).sqrt()
    hs = h / d[:, None] / d[None, :]
    b0 = weight.double() * d
    keep = initial_keep.clone()
    z = b0 * keep
    u = torch.zeros_like(z)
    unchanged = 0
    for it in range(max_iterations):
        if unchanged >= patience:
            break
        rho = rho0 * growth ** (it // 3)
        v = torch.linalg.solve(hs + rho * torch.eye(hs.shape[0], dtype=torch.float64), (b0 @ hs + rho * (z - u)).T).T
        new_keep = project((v + u).abs())
        z = (v + u) * new_keep
        u = u + v - z
        unchanged = unchanged + 1 if torch.equal(new_keep, keep) else 0
        keep = new_keep
    w0 = weight.double()
    found, start = oracle_refit(weight, keep, gram, percdamp), oracle_refit(weight, initial_keep, gram, percdamp)
    out = start.clone()
    for r in range(w0.shape[0]):  # each row keeps the better of the two refits
        if (w0[r] - found[r]) @ h @ (w0[r] - found[r]) <= (w0[r] - start[r]) @ h @ (w0[r] - start[r]):
            out[r] = found[r]
    return out
