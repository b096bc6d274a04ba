#!/usr/bin/env python
"""Benchmark: the streaming engine (`symprune apply`) on a synthetic Llama-shaped checkpoint.

The checkpoint is bf16 with LLaMA-7B's shapes (hidden 4096, MLP 11008, vocab 32000), LAYERS
decoder blocks, written in shards of about 2 GB with an index (14 blocks: about 6.1 GB).
Weights are N(0, 0.02) bf16; the Wanda statistics file holds a random positive in_norm for
every Linear weight.

In one invocation it measures:
- `copy`: a plain copy of the same shards (shutil.copyfile, i.e. in-kernel copy_file_range),
  and `copy + fsync`, which also makes each copy durable, as apply does before renaming a
  shard into place; each runs before and after the pruning runs, the means are the baselines;
- `magnitude 50%` (data-free) and `wanda 2:4` (from the statistics file) with `symprune apply`,
  each in its own process, by default (durable) and with `--no-fsync`, reporting time,
  throughput, the ratio to both copies (a durable run compares like for like with `copy +
  fsync`, a `--no-fsync` run with the plain copy), and peak RSS (VmHWM of that process:
  interpreter and torch included; the `import` row is that baseline) against the target
  import baseline + 128 MB, whatever the tensor sizes (weights are pruned in blocks of rows).
Every timed run starts with `sync` (not timed), so that no run pays for writing back what the
previous one left in the page cache; the checkpoint itself stays cached in RAM throughout.
Every output is verified: each pruned tensor has the exact sparsity pattern, two per run are
compared element for element with a plain PyTorch reference (sort-based), every copied tensor
is byte-identical.

Peak RSS of `prune --low-memory` and `calibrate` + `apply` on the real SmolLM2 against
`symprune prune`, which loads the whole model (wanda 50%, 64 x 512 calibration windows of
lee_background.cor, as in docs/protocol.md; `--method sparsegpt`: prune and prune --low-memory
only, since apply cannot reproduce SparseGPT), with a check that each writes the weights of prune:

    .venv/bin/python bench/bench_stream.py                 # ~6.1 GB, needs ~20 GB free disk
    .venv/bin/python bench/bench_stream.py --layers 2      # quick
    .venv/bin/python bench/bench_stream.py --smollm2       # the real-model comparison
    .venv/bin/python bench/bench_stream.py --smollm2 --method sparsegpt --nsamples 16
    .venv/bin/python bench/bench_stream.py --device cuda   # also every run pruning on the GPU

With `--device cuda` the peak RSS of those runs includes the CUDA context and four pinned buffers
(two for uploads, two for downloads), so the CPU target does not apply to them.
"""

from __future__ import annotations

import argparse
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

HIDDEN, MLP, VOCAB = 4096, 11008, 32000
SHARD_BYTES = 2 << 30
LINEARS = {  # name inside a block: (out, in)
    "self_attn.q_proj": (HIDDEN, HIDDEN), "self_attn.k_proj": (HIDDEN, HIDDEN),
    "self_attn.v_proj": (HIDDEN, HIDDEN), "self_attn.o_proj": (HIDDEN, HIDDEN),
    "mlp.gate_proj": (MLP, HIDDEN), "mlp.up_proj": (MLP, HIDDEN), "mlp.down_proj": (HIDDEN, MLP),
}


def checkpoint_tensors(layers: int) -> list[tuple[str, tuple[int, ...]]]:
    names = [("model.embed_tokens.weight", (VOCAB, HIDDEN))]
    for i in range(layers):
        names += [(f"model.layers.{i}.{n}.weight", shape) for n, shape in LINEARS.items()]
        names += [(f"model.layers.{i}.input_layernorm.weight", (HIDDEN,)),
                  (f"model.layers.{i}.post_attention_layernorm.weight", (HIDDEN,))]
    names += [("model.norm.weight", (HIDDEN,)), ("lm_head.weight", (VOCAB, HIDDEN))]
    return names


def write_checkpoint(folder: Path, layers: int) -> int:
    """Writes shards + index + config; returns the largest tensor's size in bytes."""
    g = torch.Generator().manual_seed(0)
    shards: list[list[tuple[str, tuple[int, ...]]]] = [[]]
    size = 0
    for name, shape in checkpoint_tensors(layers):
        nbytes = 2 * int(torch.tensor(shape).prod())
        if size + nbytes > SHARD_BYTES and shards[-1]:
            shards.append([])
            size = 0
        shards[-1].append((name, shape))
        size += nbytes
    weight_map = {}
    for k, shard in enumerate(shards):
        file = f"model-{k + 1:05d}-of-{len(shards):05d}.safetensors"
        tensors = {}
        for name, shape in shard:
            t = torch.ones(shape) if len(shape) == 1 else torch.randn(shape, generator=g) * 0.02
            tensors[name] = t.to(torch.bfloat16)
            weight_map[name] = file
        symprune.save_safetensors(str(folder / file), tensors, {"format": "pt"})
        del tensors
    total = sum((folder / f).stat().st_size for f in set(weight_map.values()))
    (folder / "model.safetensors.index.json").write_text(
        json.dumps({"metadata": {"total_size": total}, "weight_map": weight_map}, indent=2))
    (folder / "config.json").write_text(json.dumps({"model_type": "llama", "hidden_size": HIDDEN}))
    return max(2 * int(torch.tensor(s).prod()) for _, s in checkpoint_tensors(layers))


def write_stats(path: Path, layers: int) -> None:
    g = torch.Generator().manual_seed(1)
    tensors = {f"{name}.in_norm": torch.rand(shape[1], generator=g) + 0.1
               for name, shape in checkpoint_tensors(layers) if len(shape) == 2 and ".layers." in name}
    symprune.save_safetensors(str(path), tensors, {"format": "symprune-stats"})


def timed_copy(src: Path, dst: Path, durable: bool) -> float:
    """shutil.copyfile of every shard; `durable` also fsyncs each copy, as apply does."""
    dst.mkdir()
    os.sync()
    start = time.perf_counter()
    for shard in sorted(src.glob("*.safetensors")):
        shutil.copyfile(shard, dst / shard.name)
        if durable:
            fd = os.open(dst / shard.name, os.O_RDONLY)
            os.fsync(fd)
            os.close(fd)
    seconds = time.perf_counter() - start
    shutil.rmtree(dst)
    return seconds


# Peak RSS from VmHWM: getrusage's ru_maxrss would include the parent's peak, which exec inherits.
CHILD = """
import json, sys, time
import symprune
from symprune.cli import main
if sys.argv[1] == "import":
    status, seconds = 0, 0.0
else:
    start = time.perf_counter()
    status = main(sys.argv[1:])
    seconds = time.perf_counter() - start
hwm = next(line for line in open("/proc/self/status") if line.startswith("VmHWM:"))
print(json.dumps({"status": status, "seconds": seconds, "peak_mb": int(hwm.split()[1]) / 1024}))
"""


def run_child(*args: str) -> dict[str, float]:
    os.sync()
    proc = subprocess.run([sys.executable, "-c", CHILD, *args], capture_output=True, text=True, check=False)
    result = json.loads(proc.stdout.strip().splitlines()[-1]) if proc.returncode == 0 else {}
    if result.get("status") != 0:
        raise RuntimeError(f"symprune {' '.join(args)} failed:\n{proc.stderr[-3000:]}")
    return result


def reference_keep(w: torch.Tensor, method: str, in_norm: torch.Tensor | None) -> torch.Tensor:
    """Plain PyTorch: magnitude 50% per row (stable sort) or wanda 2:4 (stable sort per group)."""
    if method == "magnitude":
        score = w.float().abs()
        order = torch.sort(score, dim=1, stable=True).indices[:, : w.shape[1] // 2]
        return torch.ones_like(w, dtype=torch.bool).scatter_(1, order, False)
    score = (w.float().abs() * in_norm).reshape(-1, 4)
    order = torch.sort(score, dim=1, stable=True).indices[:, :2]
    return torch.ones_like(score, dtype=torch.bool).scatter_(1, order, False).reshape(w.shape)


def verify(src: Path, out: Path, method: str, stats: Path | None) -> str:
    norms = symprune.load_safetensors(str(stats)) if stats else {}
    checked = pruned = copied = 0
    for shard in sorted(src.glob("*.safetensors")):
        before = symprune.load_safetensors(str(shard))
        after = symprune.load_safetensors(str(out / shard.name))
        for name, w in before.items():
            o = after[name]
            if w.dim() == 2 and ".layers." in name:
                pruned += 1
                zeros = (o == 0)
                if method == "magnitude":
                    assert torch.all(zeros.sum(1) == w.shape[1] // 2), name
                else:
                    assert torch.all(zeros.reshape(-1, 4).sum(1) == 2), name
                if checked < 2:
                    keep = reference_keep(w, method, norms.get(f"{name}.in_norm"))
                    assert torch.equal(o, w.masked_fill(~keep, 0)), f"{name} differs from the reference"
                    checked += 1
            else:
                assert torch.equal(o.view(torch.uint8), w.view(torch.uint8)), name
                copied += 1
        del before, after
    return f"{pruned} pruned tensors with exact pattern, {checked} equal to the PyTorch reference, " \
           f"{copied} copied byte-identical"


def smollm2_memory(work: Path, method: str, nsamples: int) -> None:
    from symprune.data import CALIBRATION_FILE, protocol_text
    from symprune.models import ensure_smollm2

    model = ensure_smollm2()
    calib = protocol_text(CALIBRATION_FILE)
    recipe = ["--method", method, "--sparsity", "0.5"]
    windows = ["--calib", str(calib), "--nsamples", str(nsamples), "--seqlen", "512"]
    stats = work / "stats.safetensors"
    runs = {"prune (whole model)": run_child("prune", str(model), str(work / "pruned"), *recipe, *windows, "--quiet"),
            "prune --low-memory (one block)": run_child("prune", str(model), str(work / "blocks"), *recipe, *windows,
                                                        "--low-memory", "--quiet")}
    outputs = {"prune --low-memory": _folder_tensors(work / "blocks")}
    if method != "sparsegpt":  # the statistics file holds no Gram: apply cannot reproduce SparseGPT
        runs["calibrate (one block)"] = run_child("calibrate", str(model), "--out", str(stats), *recipe, *windows,
                                                  "--quiet")
        runs["apply (streaming)"] = run_child("apply", str(model), str(work / "applied"), "--stats", str(stats),
                                              *recipe, "--quiet")
        outputs["calibrate + apply"] = _folder_tensors(work / "applied")
    pruned = _folder_tensors(work / "pruned")
    print(f"SmolLM2-135M fp32 ({(model / 'model.safetensors').stat().st_size / 2**20:.0f} MiB), {method} 50%, "
          f"{nsamples}x512 windows")
    print("\n| command | seconds | peak RSS MB |\n|---|---|---|")
    for label, r in runs.items():
        print(f"| {label} | {r['seconds']:.1f} | {r['peak_mb']:.0f} |")
    for label, tensors in outputs.items():
        same = tensors.keys() == pruned.keys() and all(torch.equal(tensors[k], pruned[k]) for k in pruned)
        print(f"\n{label} wrote {'the same' if same else 'DIFFERENT'} weights as prune")


def _folder_tensors(folder: Path) -> dict[str, torch.Tensor]:
    tensors: dict[str, torch.Tensor] = {}
    for shard in sorted(folder.glob("*.safetensors")):
        tensors.update(symprune.load_safetensors(str(shard)))
    return tensors


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--layers", type=int, default=14, help="decoder blocks (14: ~6.1 GB)")
    parser.add_argument("--workdir", default=None, help="scratch folder (default: a temp dir)")
    parser.add_argument("--keep", action="store_true", help="keep the scratch folder")
    parser.add_argument("--smollm2", action="store_true", help="only the real-model memory comparison")
    parser.add_argument("--method", default="wanda", help="recipe of --smollm2, at 50%% (wanda; or sparsegpt)")
    parser.add_argument("--nsamples", type=int, default=64, help="calibration windows of --smollm2 (64)")
    parser.add_argument("--device", default="cpu",
                        help="also run both methods with `apply --device DEVICE` (e.g. cuda), durable and not")
    args = parser.parse_args()

    work = Path(args.workdir or tempfile.mkdtemp(prefix="bench-stream-"))
    if args.smollm2:
        try:
            smollm2_memory(work, args.method, args.nsamples)
        finally:
            if not args.keep:
                shutil.rmtree(work, ignore_errors=True)
        return
    model, stats = work / "model", work / "stats.safetensors"
    model.mkdir(parents=True, exist_ok=True)
    try:
        t = time.perf_counter()
        largest = write_checkpoint(model, args.layers)
        write_stats(stats, args.layers)
        size = sum(p.stat().st_size for p in model.glob("*.safetensors"))
        shards = len(list(model.glob("*.safetensors")))
        print(f"checkpoint: {args.layers} blocks, {size / 2**30:.2f} GiB in {shards} shards, largest tensor "
              f"{largest / 2**20:.0f} MiB (written in {time.perf_counter() - t:.0f} s)")
        copies = {"plain": [timed_copy(model, work / "copy", durable=False)],
                  "durable": [timed_copy(model, work / "copy", durable=True)]}
        base = run_child("import")
        target_mb = base["peak_mb"] + 128
        runs = {
            "magnitude 50%": ["--method", "magnitude", "--sparsity", "0.5"],
            "magnitude 50% --no-fsync": ["--method", "magnitude", "--sparsity", "0.5", "--no-fsync"],
            "wanda 2:4": ["--method", "wanda", "--nm", "2:4", "--stats", str(stats)],
            "wanda 2:4 --no-fsync": ["--method", "wanda", "--nm", "2:4", "--stats", str(stats), "--no-fsync"],
        }
        if args.device != "cpu":
            runs |= {f"{label} --device {args.device}": [*options, "--device", args.device]
                     for label, options in list(runs.items())}
        results = {}
        for label, options in runs.items():
            out = work / "out"
            results[label] = run_child("apply", str(model), str(out), *options, "--quiet")
            method = "magnitude" if "magnitude" in label else "wanda"
            results[label]["verified"] = verify(model, out, method, stats if method == "wanda" else None)
            shutil.rmtree(out)
        copies["plain"].append(timed_copy(model, work / "copy", durable=False))
        copies["durable"].append(timed_copy(model, work / "copy", durable=True))
        plain_s, durable_s = (sum(c) / len(c) for c in copies.values())

        print("\n| run | seconds | GB/s | × plain copy | × copy + fsync | peak RSS MB | target MB |")
        print("|---|---|---|---|---|---|---|")
        for label, key in (("plain copy", "plain"), ("copy + fsync per shard", "durable")):
            seconds = sum(copies[key]) / len(copies[key])
            print(f"| {label} (mean of {', '.join(f'{c:.1f}' for c in copies[key])} s) | {seconds:.1f} "
                  f"| {size / seconds / 1e9:.2f} | {plain_s / seconds:.2f} | {durable_s / seconds:.2f} | - | - |")
        print(f"| import symprune (baseline) | - | - | - | - | {base['peak_mb']:.0f} | - |")
        for label, r in results.items():
            target = "-" if "--device" in label else f"{target_mb:.0f}"  # pinned buffers, CUDA context
            print(f"| apply {label} | {r['seconds']:.1f} | {size / r['seconds'] / 1e9:.2f} "
                  f"| {plain_s / r['seconds']:.2f} | {durable_s / r['seconds']:.2f} | {r['peak_mb']:.0f} "
                  f"| {target} |")
        print()
        for label, r in results.items():
            print(f"{label}: {r['verified']}")
    finally:
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
