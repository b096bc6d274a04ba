"""Searches OWL's two hyperparameters on calibration data only (docs/semantics.md#owl-layer-sparsity).

Prunes the real SmolLM2-135M with Wanda per row, without OWL and with OWL at each (M, lambda)
of a coordinate search, and measures perplexity on held-out windows of the *calibration* file
(the evaluation text is never read; docs/protocol.md). First lambda at OWL's default M = 5, then
M at the lambda that did best at the first pattern. Results go to docs/ablation_owl.jsonl
(resumable) and a table on stdout.

    .venv/bin/python bench/ablation_owl.py                       # 60 %, then 50 %
    .venv/bin/python bench/ablation_owl.py --patterns 0.6 --nsamples 16
"""

from __future__ import annotations

from typing import Any

from protocol import ablation_parser, held_out, run_all

DEFAULT_M = 5.0
LAMBDAS = [0.02, 0.05, 0.08, 0.12, 0.2]
MULTIPLES = [3.0, 7.0, 10.0]


def config(sparsity: float, options: dict[str, float] | None, held_out_keys: dict[str, Any]) -> dict[str, Any]:
    row: dict[str, Any] = {"method": "wanda", "sparsity": sparsity, **held_out_keys}
    if options is not None:
        row.update(owl=True, owl_options=options)
    return row


def name(options: dict[str, float] | None) -> str:
    return "no OWL" if options is None else f"M={options['m']:g}, lambda={options['lambda']:g}"


def main() -> None:
    args = ablation_parser(__doc__, "0.6,0.5", "comma-separated unstructured sparsities", "ablation_owl.jsonl").parse_args()

    sparsities = [float(p) for p in args.patterns.split(",")]
    lambdas: list[dict[str, float] | None] = [None] + [{"m": DEFAULT_M, "lambda": lam} for lam in LAMBDAS]

    def measure(variants: list[dict[str, float] | None]) -> dict[tuple[float, str], float]:
        configs = [config(s, v, held_out(args)) for s in sparsities for v in variants]
        rows = run_all(configs, args.results)
        return {(c["sparsity"], name(v)): r["perplexity"] for c, r, v in
                zip(configs, rows, [v for _ in sparsities for v in variants])}

    ppl = measure(lambdas)
    first = sparsities[0]
    best_lambda = min(LAMBDAS, key=lambda lam: ppl[first, name({"m": DEFAULT_M, "lambda": lam})])
    multiples = [{"m": m, "lambda": best_lambda} for m in MULTIPLES]
    ppl.update(measure(multiples))

    print(f"\nheld-out calibration perplexity (wanda per row, {args.nsamples} x 512 calibration windows, "
          f"{args.eval_windows} x 512 held-out windows)")
    print("| variant | " + " | ".join(f"{s:.0%}" for s in sparsities) + " |")
    print("|---|" + "---|" * len(sparsities))
    for variant in lambdas + multiples:
        print(f"| {name(variant)} | " + " | ".join(f"{ppl[s, name(variant)]:.3f}" for s in sparsities) + " |")
    print(f"\nlambda chosen at {first:.0%}: {best_lambda:g}")


if __name__ == "__main__":
    main()
