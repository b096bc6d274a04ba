#!/usr/bin/env python
"""Benchmark: symprune.dsnot against the vectorised PyTorch reference (dsnot_reference.py).

Layer: a 4096 x 11008 fp32 weight (the shape of LLaMA-7B's down_proj, out x in), with
synthetic but realistically shaped statistics (see `make_layer`):

- weights: N(0, 0.02) scaled per row by a lognormal factor (sigma 0.2) with Student-t
  (3 degrees of freedom) tails, i.e. a few large-magnitude outliers per row;
- activations, per input channel j: token std sigma_j ~ lognormal(mu=-1, sigma=0.6) and
  per-token mean mu_j ~ 0.15 * sigma_j * N(0, 1); 1% of the channels have a large mean
  (mu_j ~ sigma_j * N(0, 1)) and 0.2% are massive-activation channels (sigma_j x 30), as seen
  on real down_proj inputs;
- statistics are the expectations for 128 calibration sequences of L = 2048 tokens (DSnoT's
  setting) under that model: in_mean = L * mu_j (DSnoT's units), in_var = sigma_j^2 (the
  per-sequence population variance), in_norm = sqrt(L * (sigma_j^2 + mu_j^2)), with 1%
  multiplicative noise so that no two channels tie.

With these, |e| for a Wanda mask is O(1-10) per row, so with DSnoT's threshold 0.1 nearly
every row stays active for all 50 cycles: the worst case for run time.

Cases: 50% and 60% unstructured and 2:4, each from a Wanda initial mask (symprune.score +
symprune.mask), DSnoT defaults (max_cycles 50, threshold 0.1, v = 1).

By default each (case, implementation) runs in its own subprocess so that its peak RSS
(resource.getrusage ru_maxrss, which includes the interpreter, torch and the layer's inputs;
the "inputs" row shows that baseline) is its own; both implementations still run within one
invocation and their masks are compared. Times are the best of --repeats runs.

    .venv/bin/python bench/bench_dsnot.py            # full size
    .venv/bin/python bench/bench_dsnot.py --rows 512 # quick
"""

from __future__ import annotations

import argparse
import json
import os
import pathlib
import resource
import subprocess
import sys
import tempfile
import time

import torch
from safetensors.torch import load_file, save_file

HERE = pathlib.Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

CASES = {"50%": dict(sparsity=0.5), "60%": dict(sparsity=0.6), "2:4": dict(nm=(2, 4))}


def make_layer(rows: int, cols: int, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    seq_len = 2048
    sigma = torch.exp(torch.randn(cols, generator=g) * 0.6 - 1.0)
    mu = 0.15 * sigma * torch.randn(cols, generator=g)
    big_mean = torch.rand(cols, generator=g) < 0.01
    mu[big_mean] = sigma[big_mean] * torch.randn(int(big_mean.sum()), generator=g)
    massive = torch.rand(cols, generator=g) < 0.002
    sigma[massive] *= 30.0
    noise = lambda: 1.0 + 0.01 * torch.randn(cols, generator=g)  # noqa: E731
    in_mean = (seq_len * mu * noise()).float()
    in_var = (sigma.square() * noise()).float()
    in_norm = torch.sqrt(seq_len * (sigma.square() + mu.square()) * noise()).float()

    # Generated in chunks of rows so that generation does not raise the peak RSS much above
    # the weight itself (the "inputs" row of the table is the baseline for both).
    w = torch.empty(rows, cols)
    row_scale = 0.02 * torch.exp(0.2 * torch.randn(rows, 1, generator=g))
    for r0 in range(0, rows, 256):
        r1 = min(rows, r0 + 256)
        chunk = torch.randn(r1 - r0, cols, generator=g)
        # Student-t(3) tails: divide by sqrt(chi2_3 / 3)
        chi2 = torch.zeros(r1 - r0, cols)
        for _ in range(3):
            chi2.add_(torch.randn(r1 - r0, cols, generator=g).square_())
        w[r0:r1] = chunk / (chi2 / 3.0).sqrt_() * row_scale[r0:r1]
    return w, in_norm, in_mean, in_var


def initial_mask(symprune, w, in_norm, case):
    s = symprune.score(w, "wanda", in_norm=in_norm)
    opts = CASES[case]
    if "nm" in opts:
        return symprune.mask(s, nm=opts["nm"])
    return symprune.mask(s, opts["sparsity"])


def run_impl(impl: str, case: str, rows: int, cols: int, repeats: int):
    import symprune

    w, in_norm, in_mean, in_var = make_layer(rows, cols)
    keep = initial_mask(symprune, w, in_norm, case)
    nm = CASES[case].get("nm")
    if impl == "symprune":
        fn = lambda: symprune.dsnot(w, keep, in_norm=in_norm, in_mean=in_mean,  # noqa: E731
                                    in_var=in_var, nm=nm)
    elif impl == "reference":
        from dsnot_reference import dsnot_reference

        fn = lambda: dsnot_reference(w, keep, in_norm=in_norm, in_mean=in_mean,  # noqa: E731
                                     in_var=in_var, nm=nm)
    elif impl == "inputs":
        fn = lambda: keep  # noqa: E731
    else:
        raise ValueError(impl)
    best = float("inf")
    out = None
    for _ in range(repeats):
        t0 = time.perf_counter()
        out = fn()
        best = min(best, time.perf_counter() - t0)
        del out
        out = None
    out = fn()
    changed_rows = int((out != keep).any(1).sum())
    return out, dict(impl=impl, case=case, seconds=best,
                     peak_rss_mib=resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
                     threads=torch.get_num_threads(), changed_rows=changed_rows,
                     kept=int(out.sum()), initial_kept=int(keep.sum()))


def worker(args):
    if args.threads:
        torch.set_num_threads(args.threads)
    mask, info = run_impl(args.worker, args.case, args.rows, args.cols, args.repeats)
    if args.mask_out:
        save_file({"mask": mask.contiguous()}, args.mask_out)
    print("RESULT " + json.dumps(info), flush=True)


def spawn(impl, case, args, mask_path):
    cmd = [sys.executable, __file__, "--worker", impl, "--case", case, "--rows", str(args.rows),
           "--cols", str(args.cols), "--repeats", str(args.repeats),
           "--mask-out", mask_path]
    if args.threads:
        cmd += ["--threads", str(args.threads)]
    proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        sys.stderr.write(proc.stdout + proc.stderr)
        raise SystemExit(f"worker {impl} {case} failed with exit code {proc.returncode}")
    line = [ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")][-1]
    return load_file(mask_path)["mask"], json.loads(line[len("RESULT "):])


def first_difference(a, b):
    rows = (a != b).any(1).nonzero().flatten()
    if rows.numel() == 0:
        return None
    i = int(rows[0])
    return i, int(rows.numel()), (a[i] != b[i]).nonzero().flatten()[:10].tolist()


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rows", type=int, default=4096, help="output rows (default 4096)")
    ap.add_argument("--cols", type=int, default=11008, help="input columns (default 11008)")
    ap.add_argument("--repeats", type=int, default=3, help="best of this many runs")
    ap.add_argument("--cases", default=",".join(CASES), help="comma-separated: 50%%,60%%,2:4")
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0: torch default)")
    ap.add_argument("--in-process", action="store_true",
                    help="run everything in this process (peak RSS is then cumulative)")
    ap.add_argument("--worker", help=argparse.SUPPRESS)
    ap.add_argument("--case", help=argparse.SUPPRESS)
    ap.add_argument("--mask-out", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.worker:
        return worker(args)
    if args.threads:
        torch.set_num_threads(args.threads)

    cases = [c for c in args.cases.split(",") if c]
    for c in cases:
        if c not in CASES:
            raise SystemExit(f"unknown case {c!r}; choose from {list(CASES)}")
    print(f"DSnoT benchmark: weight {args.rows} x {args.cols} fp32, Wanda initial mask, "
          f"max_cycles 50, threshold 0.1; best of {args.repeats}; "
          f"{'in-process' if args.in_process else 'one subprocess per run'}", flush=True)
    results = []
    ok = True
    with tempfile.TemporaryDirectory() as tmp:
        if not args.in_process:
            _, base = spawn("inputs", cases[0], args, os.path.join(tmp, "inputs.safetensors"))
            print(f"inputs only (interpreter, torch, layer, initial mask): peak RSS "
                  f"{base['peak_rss_mib']:.0f} MiB", flush=True)
        for case in cases:
            got = {}
            for impl in ("symprune", "reference"):
                if args.in_process:
                    mask, info = run_impl(impl, case, args.rows, args.cols, args.repeats)
                else:
                    mask, info = spawn(impl, case, args, os.path.join(tmp, f"{impl}.safetensors"))
                got[impl] = (mask, info)
            diff = first_difference(got["symprune"][0], got["reference"][0])
            same = diff is None
            ok &= same
            if not same:
                i, nrows, cols = diff
                print(f"  MISMATCH {case}: {nrows} rows differ, first row {i} columns {cols}",
                      flush=True)
            results.append((case, got["reference"][1], got["symprune"][1], same))
            r, s = got["reference"][1], got["symprune"][1]
            print(f"  {case}: reference {r['seconds']:.3f} s, symprune {s['seconds']:.3f} s, "
                  f"rows changed {s['changed_rows']}/{args.rows}, identical={same}", flush=True)

    print()
    hdr = (f"{'case':<6} {'reference s':>12} {'symprune s':>11} {'speedup':>8} "
           f"{'ref peak RSS MiB':>17} {'symprune peak RSS MiB':>22} {'threads':>8} {'identical':>10}")
    print(hdr)
    print("-" * len(hdr))
    for case, r, s, same in results:
        print(f"{case:<6} {r['seconds']:>12.3f} {s['seconds']:>11.3f} "
              f"{r['seconds'] / s['seconds']:>7.1f}x {r['peak_rss_mib']:>17.0f} "
              f"{s['peak_rss_mib']:>22.0f} {s['threads']:>8d} {str(same):>10}")
    if not ok:
        raise SystemExit("masks differ between symprune.dsnot and the reference")


if __name__ == "__main__":
    main()
