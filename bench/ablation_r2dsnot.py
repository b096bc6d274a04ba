"""Chooses R²-DSnoT's defaults on calibration data only (docs/r2dsnot.md).

Prunes the real SmolLM2-135M with Wanda at each pattern, refines with DSnoT and with each
R²-DSnoT component on its own and combined, and measures perplexity on held-out windows of
the *calibration* file (the evaluation text is never read). The options are defined in
docs/semantics.md#r2-dsnot, the model and texts in docs/protocol.md. Results go to
docs/ablation_r2dsnot.jsonl (resumable) and a table on stdout.

    .venv/bin/python bench/ablation_r2dsnot.py                 # 32 x 512 calibration windows
    .venv/bin/python bench/ablation_r2dsnot.py --nsamples 64
"""

from __future__ import annotations

from typing import Any

from protocol import ablation_parser, held_out, run_all

VARIANTS: list[tuple[str, dict[str, Any] | None]] = [
    ("no refinement", None),
    ("DSnoT", {}),
    ("relative prune, a=0.5", {"relative": "prune", "a": 0.5}),
    ("relative prune, a=1", {"relative": "prune", "a": 1.0}),
    ("relative prune, a=0.25", {"relative": "prune", "a": 0.25}),
    ("relative grow", {"relative": "grow"}),
    ("boundary g1=g2=0", {"gamma1": 0.0, "gamma2": 0.0}),
    ("boundary g1=0.1", {"gamma1": 0.1, "gamma2": 0.0}),
    ("relative prune + boundary g1=g2=0", {"relative": "prune", "a": 0.5, "gamma1": 0.0, "gamma2": 0.0}),
    ("boundary g1=0.3", {"gamma1": 0.3, "gamma2": 0.0}),
    ("boundary g1=0.1, g2=0.1", {"gamma1": 0.1, "gamma2": 0.1}),
    # Not R2 components, but what explains the rows above on a 576-wide model:
    ("DSnoT, attention only (reference default)", {"skip": "mlp"}),
    ("DSnoT, max_cycles=10", {"max_cycles": 10}),
    ("boundary g1=g2=0, attention only", {"gamma1": 0.0, "gamma2": 0.0, "skip": "mlp"}),
]


def main() -> None:
    args = ablation_parser(__doc__, "0.6,2:4", "comma-separated sparsities and N:M patterns",
                           "ablation_r2dsnot.jsonl").parse_args()

    patterns = [p.strip() for p in args.patterns.split(",")]
    configs = []
    for pattern in patterns:
        shape = {"nm": pattern} if ":" in pattern else {"sparsity": float(pattern)}
        for _, options in VARIANTS:
            config = {"method": "wanda", **shape, "eval_on": "calibration", "nsamples": args.nsamples,
                      "eval_windows": args.eval_windows}
            if options is not None:  # every variant refines every layer (skip=none)
                config.update(refine="dsnot", refine_options={"skip": None, **options})
            configs.append(config)
    rows = run_all(configs, args.results)

    print(f"\nheld-out calibration perplexity (wanda initial mask, {args.nsamples} x 512 calibration windows, "
          f"{args.eval_windows} x 512 held-out windows)")
    print("| variant | " + " | ".join(patterns) + " | mean |")
    print("|---|" + "---|" * (len(patterns) + 1))
    for i, (name, _) in enumerate(VARIANTS):
        ppl = [rows[p * len(VARIANTS) + i]["perplexity"] for p in range(len(patterns))]
        print(f"| {name} | " + " | ".join(f"{x:.3f}" for x in ppl) + f" | {sum(ppl) / len(ppl):.3f} |")


if __name__ == "__main__":
    main()
