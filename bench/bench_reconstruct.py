#!/usr/bin/env python
"""Benchmark: symprune.sparsegpt and symprune.refit against plain PyTorch, in the same run.

Layer: a --rows x --cols weight (default 4096 x 11008, LLaMA-7B's down_proj) of N(0, 0.02)
entries, and the Gram of LLM-like inputs accumulated with symprune.GramStats: --tokens tokens
(default 2 * cols) whose channels have lognormal scales, a few outlier channels (x30, 0.2 % of
the channels, at least one) and a shared rank-8 component (correlated channels).

(a) SparseGPT, 50 % and 2:4: symprune.sparsegpt against torch_sparsegpt_factor + _walk
    below, the algorithm of docs/semantics.md#sparsegpt written with the reference code's
    column-at-a-time tensor ops. Its factorisations are the reference's (cholesky,
    cholesky_inverse, cholesky, in fp32; symprune factorises once in fp64, without forming the
    inverse); its walk runs in fp32 (fp64 for --dtype float64). Its time is shown
    split into factorisation and walk. Check: the masks agree up to a tiny fraction of
    near-ties, and in rows with the same mask the values agree to the compute dtype's precision.
(b) Refit on the Wanda mask of the same pattern: symprune.refit against a per-row
    torch.linalg.solve of the exact least-squares problem. The per-row solve is far too slow
    for a big layer: it runs on the first --solve-rows rows (default 32) and its time for the
    whole layer is EXTRAPOLATED per row (printed as such). Check: on those rows the refit's
    objective sum_r (w_r - v_r)^T (H + lambda I) (w_r - v_r) is within 1 % of the solve's.

Each measurement runs in its own subprocess so that its peak RSS (resource.getrusage
ru_maxrss: interpreter, torch and the layer's inputs included; the "inputs" line is that
floor) is its own. Times are the best of --repeats runs.

    .venv/bin/python bench/bench_reconstruct.py                        # full size: long
    .venv/bin/python bench/bench_reconstruct.py --rows 64 --cols 256   # a quick check
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time

import torch
from safetensors.torch import load_file, save_file

import symprune
from timing import best_of

CASES = {"50%": {"sparsity": 0.5, "nm": None}, "2:4": {"sparsity": None, "nm": (2, 4)}}
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16,
          "float64": torch.float64}
# Values in rows with the same mask: max |difference| / max |W| allowed, by weight dtype.
VALUE_TOLERANCE = {torch.float64: 1e-9, torch.float32: 1e-4, torch.bfloat16: 2e-2, torch.float16: 2e-2}
MASK_TOLERANCE = 1e-3  # fraction of entries whose pruned/kept state may differ (near-ties)
OBJECTIVE_TOLERANCE = 1.01  # refit objective <= 1.01 x the per-row solve's


def compute_dtype(dtype: torch.dtype) -> torch.dtype:
    return torch.float64 if dtype == torch.float64 else torch.float32


# --------------------------------------------------------------------------- inputs


def make_gram(cols: int, tokens: int, seed: int) -> torch.Tensor:
    """X^T X (fp64) of LLM-like activations, accumulated by symprune.GramStats in chunks."""
    g = torch.Generator().manual_seed(seed)
    scale = torch.exp(0.5 * torch.randn(cols, generator=g))
    outliers = torch.randperm(cols, generator=g)[: max(1, cols // 500)]
    scale[outliers] *= 30.0
    shared = 0.3 * torch.randn(8, cols, generator=g) * scale
    stats = symprune.GramStats(cols)
    for start in range(0, tokens, 2048):
        n = min(2048, tokens - start)
        stats.update(torch.randn(n, cols, generator=g) * scale + torch.randn(n, 8, generator=g) @ shared)
    return stats.gram.clone()  # .gram is the accumulator itself


def make_inputs(rows: int, cols: int, tokens: int, dtype: torch.dtype, seed: int) -> dict[str, torch.Tensor]:
    """The weight, the Gram, and the Wanda mask of each case (what the refit starts from)."""
    g = torch.Generator().manual_seed(seed + 1)
    weight = (0.02 * torch.randn(rows, cols, generator=g)).to(dtype)
    gram = make_gram(cols, tokens, seed)
    scores = symprune.score(weight, "wanda", in_norm=torch.diagonal(gram).sqrt().float())
    inputs = {"weight": weight, "gram": gram}
    for case, pattern in CASES.items():
        inputs[f"keep {case}"] = symprune.mask(scores, pattern["sparsity"], nm=pattern["nm"])
    return inputs


# --------------------------------------------------------------------------- plain PyTorch


def torch_sparsegpt_factor(gram: torch.Tensor, percdamp: float) -> tuple[torch.Tensor, torch.Tensor]:
    """U (upper Cholesky factor of the damped Gram's inverse) and the dead inputs, computed as the
    reference code does: cholesky, cholesky_inverse, cholesky, in fp32."""
    h = gram.float().clone()
    dead = torch.diag(h) == 0
    h[dead, dead] = 1
    h.diagonal().add_(percdamp * torch.mean(torch.diag(h)))
    u = torch.linalg.cholesky(torch.cholesky_inverse(torch.linalg.cholesky(h)), upper=True)
    return u, dead


def torch_sparsegpt_walk(weight: torch.Tensor, u: torch.Tensor, dead: torch.Tensor, sparsity: float | None,
                         nm: tuple[int, int] | None, blocksize: int) -> torch.Tensor:
    """SparseGPT's column blocks, masks and OBS updates, one column at a time (the reference's ops)."""
    compute = compute_dtype(weight.dtype)
    w = weight.to(compute).clone()
    w[:, dead] = 0
    u = u.to(compute)
    cols = w.shape[1]
    for i1 in range(0, cols, blocksize):
        i2 = min(i1 + blocksize, cols)
        w1 = w[:, i1:i2].clone()
        err = torch.zeros_like(w1)
        u1 = u[i1:i2, i1:i2]
        d = torch.diag(u1)
        if sparsity is not None:
            key = w1.square() / d.square().unsqueeze(0)
            threshold = torch.sort(key.flatten())[0][int(key.numel() * sparsity)]
            prune = key <= threshold
        else:
            prune = torch.zeros_like(w1, dtype=torch.bool)
        for i in range(i2 - i1):
            if nm is not None and i % nm[1] == 0:
                key = w1[:, i:i + nm[1]].square() / d[i:i + nm[1]].square().unsqueeze(0)
                lowest = torch.sort(key, dim=1, stable=True).indices[:, : nm[1] - nm[0]]
                prune.scatter_(1, i + lowest, True)
            q = w1[:, i].masked_fill(prune[:, i], 0)
            e = (w1[:, i] - q) / d[i]
            w1[:, i:] -= e.unsqueeze(1) * u1[i, i:].unsqueeze(0)
            w1[:, i] = q
            err[:, i] = e
        w[:, i1:i2] = w1
        w[:, i2:] -= err @ u[i1:i2, i2:]
    return w.to(weight.dtype)


def damped_gram(gram: torch.Tensor, percdamp: float) -> torch.Tensor:
    """H + percdamp * mean(diag H) * I in fp64, the refit's matrix (no dead-input rule)."""
    h = gram.double().clone()
    h.diagonal().add_(percdamp * torch.mean(torch.diag(h)))
    return h


def torch_refit_rows(weight: torch.Tensor, keep: torch.Tensor, gram: torch.Tensor, percdamp: float) -> torch.Tensor:
    """Per row, v_S = (H_SS)^-1 (H w)_S of the damped Gram by torch.linalg.solve, in the compute dtype."""
    h = damped_gram(gram, percdamp).to(compute_dtype(weight.dtype))
    w = weight.to(h.dtype)
    hw = w @ h  # row r: (H w_r)^T, H symmetric
    out = torch.zeros_like(w)
    for r in range(w.shape[0]):
        s = keep[r].nonzero().flatten()
        if s.numel():
            out[r, s] = torch.linalg.solve(h[s][:, s], hw[r, s])
    return out.to(weight.dtype)


def refit_objective(weight: torch.Tensor, refitted: torch.Tensor, gram: torch.Tensor, percdamp: float) -> float:
    """sum over rows of (w - v)^T (H + lambda I) (w - v), in fp64."""
    d = weight.double() - refitted.double()
    return float(((d @ damped_gram(gram, percdamp)) * d).sum())


# --------------------------------------------------------------------------- one measurement


def measure(job: str, case: str, inputs: dict[str, torch.Tensor],
            args: argparse.Namespace) -> tuple[dict, torch.Tensor]:
    """Runs one job on one case; returns its timings and its result."""
    weight, gram = inputs["weight"], inputs["gram"]
    pattern = CASES[case]
    info: dict = {}
    if job == "inputs":
        seconds, out = 0.0, torch.zeros(1)
    elif job == "sparsegpt":
        seconds, out = best_of(args.repeats, lambda: symprune.sparsegpt(
            weight, gram, pattern["sparsity"], nm=pattern["nm"], blocksize=args.blocksize,
            percdamp=args.percdamp, backend=args.backend))
    elif job == "sparsegpt-torch":
        factor_s, (u, dead) = best_of(args.repeats, lambda: torch_sparsegpt_factor(gram, args.percdamp))
        walk_s, out = best_of(args.repeats, lambda: torch_sparsegpt_walk(
            weight, u, dead, pattern["sparsity"], pattern["nm"], args.blocksize))
        seconds, info["factor_seconds"] = factor_s + walk_s, factor_s
    elif job == "refit":
        seconds, out = best_of(args.repeats, lambda: symprune.refit(
            weight, inputs[f"keep {case}"], gram, percdamp=args.percdamp))
        out = out[: args.solve_rows].contiguous()  # the rows the solve is checked on
    elif job == "refit-solve":
        rows = min(args.solve_rows, weight.shape[0])
        keep = inputs[f"keep {case}"][:rows]
        seconds, out = best_of(args.repeats, lambda: torch_refit_rows(weight[:rows], keep, gram, args.percdamp))
        kept = keep.sum(1).double()
        info["solve_gflop"] = float((2.0 / 3.0 * kept.pow(3)).sum()) / 1e9  # LU of each H_SS
        info["rows_timed"] = rows
    else:
        raise ValueError(job)
    info.update(job=job, case=case, seconds=seconds, threads=torch.get_num_threads(),
                peak_rss_mib=resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)
    return info, out


def worker(args: argparse.Namespace) -> None:
    inputs = load_file(args.inputs)
    info, out = measure(args.worker, args.case, inputs, args)
    save_file({"out": out.contiguous()}, args.out)
    print("RESULT " + json.dumps(info), flush=True)


def spawn(job: str, case: str, args: argparse.Namespace, folder: str) -> tuple[dict, torch.Tensor]:
    out = os.path.join(folder, f"{job} {case}.safetensors")
    cmd = [sys.executable, __file__, "--worker", job, "--case", case,
           "--inputs", os.path.join(folder, "inputs.safetensors"), "--out", out, "--repeats", str(args.repeats), "--blocksize", str(args.blocksize),
           "--percdamp", str(args.percdamp), "--backend", args.backend, "--solve-rows", str(args.solve_rows),
           "--threads", str(args.threads)]
    proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        sys.stderr.write(proc.stdout + proc.stderr)
        raise SystemExit(f"worker {job} {case} failed with exit code {proc.returncode}")
    line = [ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")][-1]
    return json.loads(line[len("RESULT "):]), load_file(out)["out"]


# --------------------------------------------------------------------------- checks and report


def compare_sparsegpt(ours: torch.Tensor, ref: torch.Tensor, weight: torch.Tensor) -> dict:
    """Mask agreement, and the largest value difference in rows whose masks are equal."""
    differs = (ours == 0) != (ref == 0)
    same_rows = ~differs.any(1)
    scale = float(weight.double().abs().max())
    value = float((ours.double() - ref.double())[same_rows].abs().max()) / scale if same_rows.any() else float("nan")
    mismatch = float(differs.double().mean())
    agree = mismatch <= MASK_TOLERANCE and value <= VALUE_TOLERANCE[weight.dtype]
    return dict(mismatch=mismatch, rows_differing=int((~same_rows).sum()), value=value, agree=agree)


def rate(rows: int, seconds: float) -> str:
    return f"{rows / seconds:,.1f} rows/s" if seconds > 0 else "-"


def report_sparsegpt(case: str, ours: dict, ref: dict, check: dict, rows: int) -> bool:
    print(f"sparsegpt {case}: symprune {ours['seconds']:.3f} s ({rate(rows, ours['seconds'])}, peak RSS "
          f"{ours['peak_rss_mib']:.0f} MiB); torch {ref['seconds']:.3f} s = factor {ref['factor_seconds']:.3f} s "
          f"+ walk {ref['seconds'] - ref['factor_seconds']:.3f} s ({rate(rows, ref['seconds'])}, peak RSS "
          f"{ref['peak_rss_mib']:.0f} MiB); torch / symprune {ref['seconds'] / ours['seconds']:.2f}x")
    print(f"  agreement: mask differs on {check['mismatch']:.2e} of entries ({check['rows_differing']} of {rows} rows; "
          f"allowed {MASK_TOLERANCE:.0e}), max value difference in the other rows {check['value']:.2e} of max|W| "
          f"-> {'AGREE' if check['agree'] else 'DISAGREE'}")
    return check["agree"]


def report_refit(case: str, ours: dict, ref: dict, objectives: tuple[float, float], rows: int) -> bool:
    timed = ref["rows_timed"]
    per_row = ref["seconds"] / timed
    whole = per_row * rows
    extrapolated = "EXTRAPOLATED from " + f"{timed} of {rows} rows" if timed < rows else "measured on every row"
    ours_obj, solve_obj = objectives
    ok = ours_obj <= OBJECTIVE_TOLERANCE * solve_obj + 1e-12
    print(f"refit {case} (Wanda mask): symprune {ours['seconds']:.3f} s ({rate(rows, ours['seconds'])}, peak RSS "
          f"{ours['peak_rss_mib']:.0f} MiB); per-row torch.linalg.solve {ref['seconds']:.3f} s on {timed} rows = "
          f"{per_row:.4f} s/row ({ref['solve_gflop'] / ref['seconds']:.1f} GFLOP/s of LU, peak RSS "
          f"{ref['peak_rss_mib']:.0f} MiB) -> {whole:.3f} s for {rows} rows, {extrapolated}; "
          f"solve / symprune {whole / ours['seconds']:.1f}x")
    print(f"  objective on the first {timed} rows: refit {ours_obj:.6e}, solve {solve_obj:.6e}, ratio "
          f"{ours_obj / solve_obj if solve_obj > 0 else float('nan'):.6f} (allowed {OBJECTIVE_TOLERANCE}) "
          f"-> {'OK' if ok else 'WORSE'}")
    return ok


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rows", type=int, default=4096, help="output rows (4096)")
    ap.add_argument("--cols", type=int, default=11008, help="input columns (11008)")
    ap.add_argument("--tokens", type=int, default=0, help="calibration tokens in the Gram (0: 2 * cols)")
    ap.add_argument("--dtype", choices=DTYPES, default="float32", help="weight dtype (float32)")
    ap.add_argument("--cases", default=",".join(CASES), help="comma-separated: 50%%,2:4")
    ap.add_argument("--methods", default="sparsegpt,refit", help="comma-separated: sparsegpt,refit")
    ap.add_argument("--blocksize", type=int, default=128, help="SparseGPT's column blocks (128)")
    ap.add_argument("--percdamp", type=float, default=0.01, help="damping (0.01)")
    ap.add_argument("--backend", choices=("auto", "rows", "columns"), default="auto", help="symprune.sparsegpt's")
    ap.add_argument("--solve-rows", type=int, default=32, help="rows the per-row solve is timed on (32)")
    ap.add_argument("--repeats", type=int, default=1, help="best of this many runs (1)")
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    ap.add_argument("--seed", type=int, default=0)
    for hidden in ("--worker", "--case", "--inputs", "--out"):
        ap.add_argument(hidden, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.worker:
        return worker(args)

    cases = [c for c in args.cases.split(",") if c]
    if unknown := [c for c in cases if c not in CASES]:
        raise SystemExit(f"unknown case(s) {unknown}; choose from {list(CASES)}")
    methods = {m for m in args.methods.split(",") if m}
    if unknown := methods - {"sparsegpt", "refit"}:
        raise SystemExit(f"unknown method(s) {sorted(unknown)}; choose from sparsegpt, refit")
    tokens = args.tokens or 2 * args.cols
    dtype = DTYPES[args.dtype]
    print(f"weight {args.rows}x{args.cols} {args.dtype}, Gram of {tokens} tokens, blocksize {args.blocksize}, "
          f"percdamp {args.percdamp}, backend {args.backend}; torch {torch.__version__}, "
          f"{torch.get_num_threads()} threads; best of {args.repeats}; one subprocess per measurement", flush=True)
    ok = True
    with tempfile.TemporaryDirectory() as folder:
        start = time.perf_counter()
        inputs = make_inputs(args.rows, args.cols, tokens, dtype, args.seed)
        save_file(inputs, os.path.join(folder, "inputs.safetensors"))
        print(f"inputs made in {time.perf_counter() - start:.1f} s", flush=True)
        floor, _ = spawn("inputs", cases[0], args, folder)
        print(f"inputs only (interpreter, torch, weight, Gram, masks): peak RSS {floor['peak_rss_mib']:.0f} MiB",
              flush=True)
        for case in cases:
            if "sparsegpt" in methods:
                ours, ours_out = spawn("sparsegpt", case, args, folder)
                ref, ref_out = spawn("sparsegpt-torch", case, args, folder)
                ok &= report_sparsegpt(case, ours, ref, compare_sparsegpt(ours_out, ref_out, inputs["weight"]),
                                       args.rows)
                del ours_out, ref_out
            if "refit" not in methods:
                continue
            ours, ours_out = spawn("refit", case, args, folder)
            ref, ref_out = spawn("refit-solve", case, args, folder)
            timed = ref["rows_timed"]
            head = inputs["weight"][:timed]
            objectives = (refit_objective(head, ours_out[:timed], inputs["gram"], args.percdamp),
                          refit_objective(head, ref_out, inputs["gram"], args.percdamp))
            ok &= report_refit(case, ours, ref, objectives, args.rows)
    if not ok:
        raise SystemExit("a check failed (see DISAGREE / WORSE above)")


if __name__ == "__main__":
    main()
