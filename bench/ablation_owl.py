"""Searches OWL's two hyperparameters on calibration data only (docs/semantics.md#owl-layer-sparsity).

Prunes the real SmolLM2-135M with Wanda per row, without OWL and with OWL at each (M, lambda)
of a coordinate search, and measures perplexity on held-out windows of the *calibration* file
(the evaluation text is never read; docs/protocol.md). First lambda at OWL's default M = 5, then
M at the lambda that did best at the first pattern. Results go to docs/ablation_owl.jsonl
(resumable) and a table on stdout. `--profile MODEL` instead prints what OWL sees: each block's
outlier ratio and the sparsity OWL gives it (defaults, first pattern, 8 calibration windows).

    .venv/bin/python bench/ablation_owl.py                       # 60 %, then 50 %
    .venv/bin/python bench/ablation_owl.py --patterns 0.6 --nsamples 16
    .venv/bin/python bench/ablation_owl.py --profile gemma3-270m
"""

from __future__ import annotations

import argparse
from typing import Any

from protocol import MODELS, _windows, ablation_parser, held_out, model_dir, run_all

DEFAULT_M = 5.0
DEFAULT_LAMBDA = 0.08
LAMBDAS = [0.02, 0.05, 0.08, 0.12, 0.2]
MULTIPLES = [3.0, 7.0, 10.0]
PROFILE_WINDOWS = 8

Options = dict[str, float] | None


def config(sparsity: float, options: Options, held_out_keys: dict[str, Any]) -> dict[str, Any]:
    row: dict[str, Any] = {"method": "wanda", "sparsity": sparsity, **held_out_keys}
    if options is not None:
        row.update(owl=True, owl_options=options)
    return row


def name(options: Options) -> str:
    return "no OWL" if options is None else f"M={options['m']:g}, lambda={options['lambda']:g}"


def search(args: argparse.Namespace, sparsities: list[float]) -> None:
    def measure(variants: list[Options]) -> dict[tuple[float, str], float]:
        pairs = [(s, v) for s in sparsities for v in variants]
        rows = run_all([config(s, v, held_out(args)) for s, v in pairs], args.results)
        return {(s, name(v)): row["perplexity"] for (s, v), row in zip(pairs, rows)}

    lambdas: list[Options] = [None] + [{"m": DEFAULT_M, "lambda": lam} for lam in LAMBDAS]
    ppl = measure(lambdas)
    first = sparsities[0]
    best_lambda = min(LAMBDAS, key=lambda lam: ppl[first, name({"m": DEFAULT_M, "lambda": lam})])
    multiples: list[Options] = [{"m": m, "lambda": best_lambda} for m in MULTIPLES]
    ppl.update(measure(multiples))

    print(f"\nheld-out calibration perplexity (wanda per row, {args.nsamples} x 512 calibration windows, "
          f"{args.eval_windows} x 512 held-out windows)")
    print("| variant | " + " | ".join(f"{s:.0%}" for s in sparsities) + " |")
    print("|---|" + "---|" * len(sparsities))
    for variant in lambdas + multiples:
        print(f"| {name(variant)} | " + " | ".join(f"{ppl[s, name(variant)]:.3f}" for s in sparsities) + " |")
    print(f"\nlambda chosen at {first:.0%}: {best_lambda:g}")


def profile(model_name: str, sparsity: float) -> None:
    """OWL's outlier ratio and sparsity per block, from the report of one pruning run."""
    import torch
    from symprune.models import load_model, load_tokenizer
    from symprune.pipeline import prune_model

    torch.set_grad_enabled(False)
    folder = model_dir(model_name)
    tokenizer = load_tokenizer(folder)
    calib, _ = _windows({"model": model_name, "eval_on": "calibration", "nsamples": PROFILE_WINDOWS}, tokenizer)
    report = prune_model(load_model(folder), calib, method="wanda", sparsity=sparsity, owl=True,
                         owl_options={"m": DEFAULT_M, "lambda": DEFAULT_LAMBDA}, progress=False)
    print(f"{MODELS[model_name][0]}, OWL M={DEFAULT_M:g} lambda={DEFAULT_LAMBDA:g} at {sparsity:.0%}, "
          f"{PROFILE_WINDOWS} calibration windows")
    print("| block | outlier ratio D | sparsity |\n|---|---|---|")
    for block, (ratio, block_sparsity) in enumerate(zip(report.owl["outlier_ratios"], report.owl["sparsities"])):
        print(f"| {block} | {ratio:.2%} | {block_sparsity:.3f} |")


def main() -> None:
    parser = ablation_parser(__doc__, "0.6,0.5", "comma-separated unstructured sparsities", "ablation_owl.jsonl")
    parser.add_argument("--profile", choices=sorted(MODELS), help="print OWL's block profile of this model instead")
    args = parser.parse_args()
    sparsities = [float(p) for p in args.patterns.split(",")]
    if args.profile:
        profile(args.profile, sparsities[0])
    else:
        search(args, sparsities)


if __name__ == "__main__":
    main()
