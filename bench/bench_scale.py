#!/usr/bin/env python
"""Benchmark: scale-out and memory against tensor size (docs/scale-out.md).

Two measurements, each run in its own processes:

1. **World size 1 against 2** (torchrun, gloo, on this machine):
   - `apply` (magnitude 50 %) of a synthetic bf16 checkpoint of SHARDS shards, each two
     4096 x 11008 weights: one process against `torchrun --nproc-per-node 2`; the two folders
     must be byte-identical;
   - `calibrate` (wanda 50 %) of the real SmolLM2-135M on CALIB windows of the protocol's
     calibration text: one process against two ranks; the statistics must agree to rounding
     (the largest relative difference is printed).
   Times are wall-clock of the whole command, interpreter start and rendezvous included.
   torchrun gives each rank one thread (OMP_NUM_THREADS=1) where the single process uses every
   core, so on 2 cores the ranks cannot be faster by more than their overlap of I/O and compute.
2. **Peak RSS against tensor size**: checkpoints of one weight each, about 90 MB (4096 x 11008),
   512 MB (16384 x 16384) and 1.7 GB (53248 x 16384, a Llama-3.1-405B MLP weight), all bf16,
   pruned by `apply` (no fsync) with magnitude 50 % (data-free), wanda 2:4, ria 50 % (a first
   pass for the column norms) and wanda 50 % per layer (two passes for the threshold), from
   statistics files with a random in_norm. Peak RSS is VmHWM of the apply process; the
   `import` row is the interpreter with symprune and torch imported. Every output is checked:
   the exact count of zeros in every row (50 %), in the whole weight (per layer) or in every
   group of four (2:4).

    .venv/bin/python bench/bench_scale.py                  # everything (~6 GB of scratch disk, ~6 min)
    .venv/bin/python bench/bench_scale.py --sizes 90MB     # a quick look
    .venv/bin/python bench/bench_scale.py --only memory    # or: --only ranks
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import symprune
import torch
from bench_stream import run_child
from symprune.report import REPORT_FILE

SIZES = {"90MB": (4096, 11008), "512MB": (16384, 16384), "1.7GB": (53248, 16384)}
RECIPES = {
    "magnitude 50%": ["--method", "magnitude", "--sparsity", "0.5"],
    "wanda 2:4": ["--method", "wanda", "--nm", "2:4"],
    "ria 50%": ["--method", "ria", "--sparsity", "0.5"],
    "wanda 50% per layer": ["--method", "wanda", "--sparsity", "0.5", "--group", "layer"],
}
NAME = "model.layers.0.mlp.up_proj.weight"


def one_weight_checkpoint(folder: Path, shape: tuple[int, int]) -> Path:
    """A folder holding one bf16 weight of ``shape`` (N(0, 0.02), written a slab at a time) and a
    statistics file with a random positive in_norm for it; returns the statistics file."""
    folder.mkdir(parents=True)
    generator = torch.Generator().manual_seed(0)
    weight = torch.empty(shape, dtype=torch.bfloat16)
    for begin in range(0, shape[0], 4096):  # no fp32 copy of the whole weight
        rows = weight[begin:begin + 4096]
        rows.copy_(torch.randn(rows.shape, generator=generator) * 0.02)
    symprune.save_safetensors(str(folder / "model.safetensors"), {NAME: weight}, {"format": "pt"})
    (folder / "config.json").write_text("{}")
    stats = folder.parent / f"{folder.name}.stats.safetensors"
    symprune.save_safetensors(str(stats), {f"{NAME}.in_norm": torch.rand(shape[1], generator=generator) + 0.1},
                              {"format": "symprune-stats"})
    return stats


def check_pattern(out: Path, recipe: str) -> None:
    """Every row keeps exactly half its entries (50 %), every group of four exactly two (2:4), the
    whole weight exactly half (per layer: N(0, 0.02) bf16 weights are never 0 before pruning)."""
    weight = symprune.load_safetensors(str(out / "model.safetensors"))[NAME]
    if "per layer" in recipe:
        assert int((weight == 0).sum()) == weight.numel() // 2, recipe
        return
    for begin in range(0, weight.shape[0], 4096):
        zeros = weight[begin:begin + 4096] == 0
        if "2:4" in recipe:
            assert torch.all(zeros.reshape(-1, 4).sum(1) == 2), recipe
        else:
            assert torch.all(zeros.sum(1) == weight.shape[1] // 2), recipe


def memory_against_size(work: Path, sizes: list[str]) -> None:
    base = run_child("import")["peak_mb"]
    print(f"\nPeak RSS of `apply` against the size of its one weight (import baseline {base:.0f} MB, "
          f"target baseline + 128 = {base + 128:.0f} MB)\n")
    print("| weight | MB | recipe | seconds | MB/s | peak RSS MB | over import MB |")
    print("|---|---|---|---|---|---|---|")
    for size in sizes:
        shape = SIZES[size]
        model = work / f"model-{size}"
        stats = one_weight_checkpoint(model, shape)
        nbytes = (model / "model.safetensors").stat().st_size
        for recipe, options in RECIPES.items():
            needs_stats = [] if recipe.startswith("magnitude") else ["--stats", str(stats)]
            out = work / "out"
            result = run_child("apply", str(model), str(out), *options, *needs_stats, "--no-fsync", "--quiet")
            check_pattern(out, recipe)
            shutil.rmtree(out)
            print(f"| {shape[0]}x{shape[1]} bf16 | {nbytes / 1e6:.0f} | {recipe} | {result['seconds']:.1f} "
                  f"| {nbytes / 1e6 / result['seconds']:.0f} | {result['peak_mb']:.0f} "
                  f"| {result['peak_mb'] - base:.0f} |", flush=True)
        shutil.rmtree(model)
        stats.unlink()


def timed(command: list[str]) -> float:
    os.sync()
    start = time.perf_counter()
    run = subprocess.run(command, capture_output=True, text=True, check=False)
    seconds = time.perf_counter() - start
    if run.returncode != 0:
        raise RuntimeError(f"{' '.join(command)} failed:\n{run.stderr[-3000:]}")
    return seconds


def symprune_command(ranks: int, *arguments: str) -> list[str]:
    if ranks == 1:
        return [sys.executable, "-m", "symprune", *arguments]
    return [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={ranks}",
            "-m", "symprune", *arguments]


def folder_digest(folder: Path) -> str:
    digest = hashlib.sha256()
    for path in sorted(folder.iterdir()):
        if path.name != REPORT_FILE:  # it records timings and the number of ranks
            digest.update(path.name.encode() + b"\0" + path.read_bytes())
    return digest.hexdigest()


def sharded_checkpoint(folder: Path, shards: int) -> None:
    folder.mkdir(parents=True)
    generator = torch.Generator().manual_seed(0)
    weight_map = {}
    for shard in range(shards):
        name = f"model-{shard + 1:05d}-of-{shards:05d}.safetensors"
        tensors = {f"model.layers.{shard}.mlp.{proj}.weight":
                   (torch.randn(4096, 11008, generator=generator) * 0.02).to(torch.bfloat16)
                   for proj in ("gate_proj", "up_proj")}
        symprune.save_safetensors(str(folder / name), tensors, {"format": "pt"})
        weight_map.update(dict.fromkeys(tensors, name))
    (folder / "model.safetensors.index.json").write_text(json.dumps({"metadata": {}, "weight_map": weight_map}))
    (folder / "config.json").write_text("{}")


def ranks(work: Path, shards: int, windows: int) -> None:
    print("\nWorld size 1 against 2 (gloo, this machine; wall-clock of the whole command)\n")
    print("| command | 1 process s | 2 ranks s | ratio | output |")
    print("|---|---|---|---|---|")
    model = work / "sharded"
    sharded_checkpoint(model, shards)
    recipe = ["--method", "magnitude", "--sparsity", "0.5", "--quiet"]
    seconds, digests = [], []
    for world in (1, 2):
        out = work / f"apply-{world}"
        seconds.append(timed(symprune_command(world, "apply", str(model), str(out), *recipe)))
        digests.append(folder_digest(out))
        shutil.rmtree(out)
    gigabytes = sum(p.stat().st_size for p in model.glob("*.safetensors")) / 1e9
    print(f"| apply magnitude 50%, {shards} shards, {gigabytes:.2f} GB | {seconds[0]:.1f} | {seconds[1]:.1f} "
          f"| {seconds[0] / seconds[1]:.2f} | {'byte-identical' if digests[0] == digests[1] else 'DIFFERENT'} |",
          flush=True)
    shutil.rmtree(model)

    from symprune.data import CALIBRATION_FILE, protocol_text
    from symprune.models import ensure_smollm2

    smollm2 = ensure_smollm2()
    calibrate = ["--method", "wanda", "--sparsity", "0.5", "--calib", str(protocol_text(CALIBRATION_FILE)),
                 "--nsamples", str(windows), "--seqlen", "512", "--quiet"]
    seconds, outputs = [], []
    for world in (1, 2):
        out = work / f"stats-{world}.safetensors"
        seconds.append(timed(symprune_command(world, "calibrate", str(smollm2), "--out", str(out), *calibrate)))
        outputs.append(symprune.load_safetensors(str(out)))
    one, two = outputs
    assert one.keys() == two.keys()
    worst = max(float(((two[k].double() - one[k].double()).abs() / one[k].double().abs().clamp_min(1e-30)).max())
                for k in one)
    print(f"| calibrate SmolLM2 wanda 50%, {windows}x512 windows | {seconds[0]:.1f} | {seconds[1]:.1f} "
          f"| {seconds[0] / seconds[1]:.2f} | statistics agree to {worst:.1e} (largest relative difference) |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--only", choices=["ranks", "memory"], default=None)
    parser.add_argument("--sizes", default=",".join(SIZES), help=f"comma-separated of {', '.join(SIZES)}")
    parser.add_argument("--shards", type=int, default=8, help="shards of the apply run (8: 1.4 GB)")
    parser.add_argument("--windows", type=int, default=16, help="calibration windows of the calibrate run")
    parser.add_argument("--workdir", default=None, help="scratch folder (default: a temp dir)")
    args = parser.parse_args()
    work = Path(args.workdir or tempfile.mkdtemp(prefix="bench-scale-"))
    work.mkdir(parents=True, exist_ok=True)
    print(f"torch {torch.__version__}, {os.cpu_count()} CPUs, symprune {symprune.__version__}")
    try:
        if args.only != "memory":
            ranks(work, args.shards, args.windows)
        if args.only != "ranks":
            memory_against_size(work, [s.strip() for s in args.sizes.split(",")])
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
