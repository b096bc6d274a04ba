"""Chooses ADMM's coordinates, penalty schedule, patience and starting mask on calibration data
only (docs/semantics.md#admm).

Gathers the Grams of four Linears (q, o, up, down) of a few blocks of the dense SmolLM2-135M
over windows of the first 80 % of the calibration file (the evaluation text is never read),
prunes each Linear with every variant (from Wanda's mask unless the variant names another
start: RIA's, SparseGPT's or the magnitude mask), and prints each variant's layer
output error ||X (W - V)^T||^2 / ||X W^T||^2 relative to the refit of Wanda's mask, measured
in the same run (lower is better), with its time.

    .venv/bin/python bench/ablation_admm.py
    .venv/bin/python bench/ablation_admm.py --blocks 3,15 --patterns 2:4 --nsamples 16
    .venv/bin/python bench/ablation_admm.py --patterns 2:4 --only default   # the default and its variants

"unscaled" is the ADMM symprune shipped before (the projection ranks |w|, rho relative to
mean(diag H)), written here in plain PyTorch as the baseline of the change.
"""

from __future__ import annotations

import argparse
import time
from typing import Any, Callable

import torch

import symprune
from protocol import _text_windows, model_dir

LINEARS = ["self_attn.q_proj", "self_attn.o_proj", "mlp.up_proj", "mlp.down_proj"]


def unscaled_admm(w: torch.Tensor, gram: torch.Tensor, keep: torch.Tensor, sparsity: float | None,
                  nm: str | None, rho0: float = 0.1, growth: float = 1.3, patience: int = 10) -> torch.Tensor:
    """The previous ADMM: ADMM on W itself, then the better refit per row (as the core does)."""
    h = gram.double().clone()
    h.diagonal().add_(0.01 * h.diagonal().mean())
    scale = float(h.diagonal().mean())
    lam, q = torch.linalg.eigh(h)
    lam, q, w0 = lam.float(), q.float(), w.float()
    w0hq = w0 @ (h @ q.double()).float()
    z, u, current, unchanged = w0 * keep, torch.zeros_like(w0), keep, 0
    for it in range(300):
        if unchanged >= patience:
            break
        rho = rho0 * growth ** (it // 3) * scale
        v = ((w0hq + rho * (z - u) @ q) / (lam + rho)) @ q.T
        following = symprune.mask((v + u).abs(), sparsity, nm=nm)
        z = (v + u) * following
        u = u + v - z
        unchanged = 0 if (following != current).any() else unchanged + 1
        current = following
    found, start = symprune.refit(w, current, gram), symprune.refit(w, keep, gram)
    row_error = lambda v: (((w0 - v).double() @ h) * (w0 - v).double()).sum(1, keepdim=True)  # noqa: E731
    return torch.where(row_error(found) <= row_error(start), found, start)


def ria_mask(w: torch.Tensor, g: torch.Tensor, sp: float | None, nm: str | None) -> torch.Tensor:
    in_norm = g.diagonal().clamp(min=0).sqrt()
    return symprune.mask(symprune.score(w, "ria", in_norm=in_norm), sp, nm=nm)


def sparsegpt_mask(w: torch.Tensor, g: torch.Tensor, sp: float | None, nm: str | None) -> torch.Tensor | None:
    """SparseGPT's N:M mask (SmolLM2's weights have no exact zeros). Its unstructured mask is
    chosen per column block over all rows, so its rows keep different counts: not in ADMM's
    per-row pattern, and not a start (None)."""
    return symprune.sparsegpt(w, g, sp, nm=nm) != 0 if nm else None


def variants() -> dict[str, Callable[..., torch.Tensor]]:
    def admm(start: Callable[..., torch.Tensor] | None = None, **options: Any) -> Callable[..., torch.Tensor]:
        """ADMM from Wanda's mask (the default start) or from ``start(w, g, sp, nm)``."""
        def run(w: torch.Tensor, g: torch.Tensor, keep: torch.Tensor, sp: float | None,
                nm: str | None) -> torch.Tensor | None:
            first = keep if start is None else start(w, g, sp, nm)
            return None if first is None else symprune.admm(w, g, first, sp, nm=nm, **options)
        return run

    return {
        "sparsegpt": lambda w, g, keep, sp, nm: symprune.sparsegpt(w, g, sp, nm=nm),
        "unscaled (rho0 0.1, growth 1.3)": lambda w, g, keep, sp, nm: unscaled_admm(w, g, keep, sp, nm),
        "scaled, rho0 0.1, growth 1.3": admm(growth=1.3),
        "scaled, rho0 0.03, growth 1.15": admm(rho0=0.03),
        "scaled, rho0 0.1, growth 1.15 (default)": admm(),
        "scaled, rho0 0.1, growth 1.1": admm(growth=1.1),
        "scaled, rho0 0.1, growth 1.05": admm(growth=1.05, max_iterations=600),
        "default, patience 5": admm(patience=5),
        "default, from RIA's mask": admm(ria_mask),
        "default, from SparseGPT's mask": admm(sparsegpt_mask),
        "default, from the magnitude mask": admm(lambda w, g, sp, nm: symprune.magnitude_mask(w, sp, nm=nm)),
    }


def gather_grams(blocks: list[int], nsamples: int) -> tuple[Any, dict[tuple[int, str], torch.Tensor]]:
    from symprune.models import load_model, load_tokenizer

    folder = model_dir("smollm2")
    model = load_model(folder)
    windows, _ = _text_windows({"eval_on": "calibration", "nsamples": nsamples}, load_tokenizer(folder))
    grams: dict[tuple[int, str], torch.Tensor] = {}

    def hook(key: tuple[int, str]) -> Callable[..., None]:
        def add(_module: Any, inputs: tuple[torch.Tensor, ...], _output: Any) -> None:
            x = inputs[0].reshape(-1, inputs[0].shape[-1]).double()
            grams[key] = grams.get(key, 0) + x.T @ x
        return add

    handles = [model.model.layers[b].get_submodule(name).register_forward_hook(hook((b, name)))
               for b in blocks for name in LINEARS]
    for window in windows:
        model(window.reshape(1, -1))
    for handle in handles:
        handle.remove()
    return model, grams


def output_error(w: torch.Tensor, v: torch.Tensor, gram: torch.Tensor) -> float:
    d = (w - v).double()
    return float(((d @ gram) * d).sum() / ((w.double() @ gram) * w.double()).sum())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--blocks", default="3,9,15,25")
    parser.add_argument("--patterns", default="2:4,0.5,0.6")
    parser.add_argument("--nsamples", type=int, default=16, help="calibration windows of 512 tokens")
    parser.add_argument("--only", default="", help="run the variants whose name contains one of these "
                        "comma-separated strings (default: all)")
    args = parser.parse_args()
    torch.set_grad_enabled(False)
    model, grams = gather_grams([int(b) for b in args.blocks.split(",")], args.nsamples)
    wanted = [part for part in args.only.split(",") if part]
    chosen = {name: run for name, run in variants().items() if not wanted or any(part in name for part in wanted)}
    print(f"output error relative to the refit of Wanda's mask, mean over {len(grams)} Linears "
          f"(blocks {args.blocks}; q, o, up, down), {args.nsamples} x 512 calibration windows\n")
    print("| variant | pattern | error / refit's | seconds |\n|---|---|---|---|")
    for pattern in args.patterns.split(","):
        sparsity, nm = (None, pattern) if ":" in pattern else (float(pattern), None)
        ratios: dict[str, list[float]] = {name: [] for name in chosen}
        seconds = dict.fromkeys(chosen, 0.0)
        for (block, name), gram64 in grams.items():
            w = model.model.layers[block].get_submodule(name).weight.float()
            gram = gram64.float()
            keep = symprune.mask(w.abs() * gram64.diagonal().sqrt().float(), sparsity, nm=nm)
            baseline = output_error(w, symprune.refit(w, keep, gram), gram64)
            for variant, prune in chosen.items():
                start = time.perf_counter()
                pruned = prune(w, gram, keep, sparsity, nm)
                seconds[variant] += time.perf_counter() - start
                if pruned is not None:  # None: the variant does not apply to this pattern
                    ratios[variant].append(output_error(w, pruned, gram64) / baseline)
        label = pattern if nm else f"{sparsity:.0%}"
        for variant, values in ratios.items():
            if not values:
                print(f"| {variant} | {label} | does not apply | |", flush=True)
                continue
            print(f"| {variant} | {label} | {sum(values) / len(values):.4f} | {seconds[variant]:.1f} |", flush=True)


if __name__ == "__main__":
    main()
