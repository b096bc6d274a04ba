#!/usr/bin/env python
"""Benchmark: symprune.sparsegpt, refit and admm on a GPU against the same calls on the CPU.

One layer: the weight and LLM-like Gram of bench_reconstruct.py (default 4096 x 11008), the
refit and ADMM starting from the layer's Wanda mask. Each method runs on CPU tensors (torch's
threads) and on CUDA tensors, in the same run; a line gives both times (best of --repeats, the
GPU's after a synchronize, its first run a warm-up), the CPU / GPU ratio, and how far the GPU's
result is from the CPU's: the fraction of entries whose pruned state differs (near-ties round
otherwise), and the ratio of the layer objectives sum_r (w_r - v_r)^T (H + lambda I) (w_r - v_r).
The CPU side of ADMM is the slow one: --cpu-methods leaves methods out of it.

    python bench/bench_reconstruct_device.py --cases 2:4
    python bench/bench_reconstruct_device.py --rows 512 --cols 1024   # a quick check
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable

import torch

import symprune
from bench_reconstruct import CASES, make_inputs, refit_objective
from timing import best_of

METHODS = ("sparsegpt", "refit", "admm")


def call(method: str, inputs: dict[str, torch.Tensor], case: str) -> Callable[[], torch.Tensor]:
    weight, gram, keep = inputs["weight"], inputs["gram"], inputs[f"keep {case}"]
    sparsity, nm = CASES[case]["sparsity"], CASES[case]["nm"]
    if method == "sparsegpt":
        return lambda: symprune.sparsegpt(weight, gram, sparsity, nm=nm)
    if method == "refit":
        return lambda: symprune.refit(weight, keep, gram)
    return lambda: symprune.admm(weight, gram, keep, sparsity, nm=nm)


def timed(fn: Callable[[], torch.Tensor], repeats: int, on_gpu: bool) -> tuple[float, torch.Tensor]:
    def run() -> torch.Tensor:
        out = fn()
        if on_gpu:
            torch.cuda.synchronize()
        return out

    if on_gpu:
        run()  # CUDA context, cuBLAS/cuSOLVER handles and workspaces
    return best_of(repeats, run)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rows", type=int, default=4096)
    ap.add_argument("--cols", type=int, default=11008)
    ap.add_argument("--cases", default=",".join(CASES), help="comma-separated: 50%%,2:4")
    ap.add_argument("--methods", default=",".join(METHODS), help="comma-separated: sparsegpt,refit,admm")
    ap.add_argument("--cpu-methods", default=None, help="methods also timed on the CPU (default: all of --methods)")
    ap.add_argument("--repeats", type=int, default=1)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    if not torch.cuda.is_available():
        raise SystemExit("needs a CUDA device")
    methods = [m for m in args.methods.split(",") if m]
    cpu_methods = set(methods if args.cpu_methods is None else [m for m in args.cpu_methods.split(",") if m])
    if unknown := (set(methods) | cpu_methods) - set(METHODS):
        raise SystemExit(f"unknown method(s) {sorted(unknown)}; choose from {', '.join(METHODS)}")
    cases = [c for c in args.cases.split(",") if c]
    if unknown_cases := [c for c in cases if c not in CASES]:
        raise SystemExit(f"unknown case(s) {unknown_cases}; choose from {list(CASES)}")
    torch.set_grad_enabled(False)
    start = time.perf_counter()
    cpu = make_inputs(args.rows, args.cols, 2 * args.cols, torch.float32, args.seed)
    gpu = {name: t.cuda() for name, t in cpu.items()}
    print(f"weight {args.rows}x{args.cols} fp32, Gram of {2 * args.cols} tokens (made in "
          f"{time.perf_counter() - start:.1f} s); {torch.cuda.get_device_name()} against {torch.get_num_threads()} "
          f"CPU threads; torch {torch.__version__}; best of {args.repeats}", flush=True)
    for case in cases:
        for method in methods:
            gpu_s, on_gpu = timed(call(method, gpu, case), args.repeats, on_gpu=True)
            on_gpu = on_gpu.cpu()
            line = f"{method} {case}: GPU {gpu_s:.3f} s"
            if method in cpu_methods:
                cpu_s, on_cpu = timed(call(method, cpu, case), args.repeats, on_gpu=False)
                differ = float(((on_gpu == 0) != (on_cpu == 0)).double().mean())
                objectives = [refit_objective(cpu["weight"], out, cpu["gram"], 0.01) for out in (on_gpu, on_cpu)]
                line += (f", CPU {cpu_s:.3f} s, CPU / GPU {cpu_s / gpu_s:.1f}x; pruned state differs on "
                         f"{differ:.2e} of entries, objective GPU / CPU {objectives[0] / objectives[1]:.6f}")
            print(line, flush=True)


if __name__ == "__main__":
    main()
