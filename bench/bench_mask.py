"""Score + mask speed of symprune's core against the plain PyTorch way, in the same run.

The reference scores with the same tensor ops and selects with torch.sort(stable=True) per
row / over the flattened matrix and torch.topk per N:M group, which is how Wanda's and RIA's
public code do it. A copy of the weight is the memory-bandwidth floor. Every case checks
that both ways give the same mask.

    .venv/bin/python bench/bench_mask.py            # 4096 x 11008 (LLaMA-7B MLP), fp32 and bf16
    .venv/bin/python bench/bench_mask.py --rows 512 # quicker
"""

from __future__ import annotations

import argparse
import resource

import torch

import symprune
from timing import best_of


def reference_scores(weight: torch.Tensor, method: str, in_norm: torch.Tensor) -> torch.Tensor:
    abs_w = weight.float().abs()
    if method == "wanda":
        return abs_w * in_norm
    col = torch.linalg.vector_norm(abs_w, 1, dim=0, dtype=torch.float64).float()
    row = torch.linalg.vector_norm(abs_w, 1, dim=1, dtype=torch.float64).float()
    return (abs_w / col + abs_w / row.unsqueeze(1)) * torch.pow(in_norm, 0.5)


def reference_mask(scores: torch.Tensor, sparsity: float | None, nm: tuple[int, int] | None, group: str) -> torch.Tensor:
    keep = torch.ones_like(scores, dtype=torch.bool)
    if nm is not None:
        n, m = nm
        grouped = scores.reshape(scores.shape[0], -1, m)
        pruned = torch.topk(grouped, m - n, dim=-1, largest=False).indices
        return keep.reshape_as(grouped).scatter_(-1, pruned, False).reshape_as(scores)
    assert sparsity is not None
    if group == "row":
        order = torch.sort(scores, dim=1, stable=True).indices
        return keep.scatter_(1, order[:, : int(scores.shape[1] * sparsity)], False)
    order = torch.sort(scores.flatten(), stable=True).indices
    return keep.flatten().scatter_(0, order[: int(scores.numel() * sparsity)], False).reshape_as(scores)


def stable_nm_mask(scores: torch.Tensor, nm: tuple[int, int]) -> torch.Tensor:
    """topk orders ties arbitrarily; the check uses a stable sort per group instead."""
    n, m = nm
    grouped = scores.reshape(scores.shape[0], -1, m)
    order = torch.sort(grouped, dim=-1, stable=True).indices
    keep = torch.ones_like(grouped, dtype=torch.bool).scatter_(-1, order[..., : m - n], False)
    return keep.reshape_as(scores)


CASES = [
    ("wanda per-row 50%", "wanda", 0.5, None, "row"),
    ("ria per-layer 50%", "ria", 0.5, None, "layer"),
    ("wanda 2:4", "wanda", None, (2, 4), "row"),
]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=4096)
    parser.add_argument("--cols", type=int, default=11008)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()

    torch.manual_seed(0)
    print(f"weight {args.rows}x{args.cols}, torch {torch.__version__}, {torch.get_num_threads()} threads")
    print("| dtype | case | reference s | symprune s | speedup | copy floor s | symprune / copy | same mask |")
    print("|---|---|---|---|---|---|---|---|")
    for dtype in (torch.float32, torch.bfloat16):
        # Random weights need no real model for a speed measurement; quality lives in bench/quality.py.
        weight = (torch.randn(args.rows, args.cols) * 0.02).to(dtype)
        in_norm = torch.rand(args.cols) * 10 + 0.1
        copy_s, _ = best_of(args.repeats, weight.clone)
        for name, method, sparsity, nm, group in CASES:
            ref_s, ref = best_of(
                args.repeats, lambda: reference_mask(reference_scores(weight, method, in_norm), sparsity, nm, group)
            )
            ours_s, ours = best_of(
                args.repeats,
                lambda: symprune.mask(symprune.score(weight, method, in_norm=in_norm), sparsity, nm=nm, group=group),
            )
            same = torch.equal(ours, ref if nm is None else stable_nm_mask(reference_scores(weight, method, in_norm), nm))
            print(
                f"| {str(dtype).removeprefix('torch.')} | {name} | {ref_s:.3f} | {ours_s:.3f} | {ref_s / ours_s:.1f}x "
                f"| {copy_s:.3f} | {ours_s / copy_s:.1f}x | {same} |"
            )
    peak_mib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(f"peak RSS {peak_mib:.0f} MiB")


if __name__ == "__main__":
    main()
