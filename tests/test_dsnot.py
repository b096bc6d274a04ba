"""symprune.dsnot against the slow oracle (tests/dsnot_oracle.py), mask for mask.

The oracle is a row-at-a-time transcription of docs/semantics.md (DSnoT, R2-DSnoT);
bench/dsnot_reference.py (the vectorised benchmark baseline) is checked against it too.
Statistics come from symprune.ActivationStats fed one sequence per update, on synthetic
activations with per-channel offsets (so in_mean is far from 0) and per-channel scales.
"""

from __future__ import annotations

import collections
import functools
import pathlib
import sys
import zlib

import pytest
import torch

import symprune

HERE = pathlib.Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent / "bench"))

from dsnot_oracle import activation_stats, dsnot_oracle, initial_error  # noqa: E402
from dsnot_reference import dsnot_reference  # noqa: E402

SHAPES = [(7, 24), (16, 64), (3, 40), (1, 8)]
THRESHOLDS = ["tiny", "scaled", "huge"]


@pytest.fixture(autouse=True, params=["rows", "batched"])
def backend(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """Every test runs against both implementations of the walk: the per-row CPU kernel and
    the batched tensor-op path that CUDA tensors take (exercised here on the CPU)."""
    monkeypatch.setattr(symprune, "dsnot", functools.partial(_dsnot, backend=request.param))
    return request.param


_dsnot = symprune.dsnot


# --------------------------------------------------------------------------------------------
# data
# --------------------------------------------------------------------------------------------
def _stat(obj, *names):
    for name in names:
        if hasattr(obj, name):
            v = getattr(obj, name)
            return v() if callable(v) else v
    raise AttributeError(f"ActivationStats has none of {names}")


def symprune_stats(x: torch.Tensor):
    """(in_norm, in_mean, in_var) from symprune.ActivationStats, one sequence per update."""
    st = symprune.ActivationStats(x.shape[-1])
    for seq in x:
        st.update(seq)
    return (_stat(st, "in_norm", "norm"), _stat(st, "in_mean", "mean"),
            _stat(st, "in_var", "var"))


def seed_of(*parts) -> int:
    return zlib.crc32(repr(parts).encode()) % 10_000


def make_case(out_f, in_f, seed, *, dtype=torch.float32, quantise=False, duplicate=0,
              zero_var=0, zero_mean=0, nseq=4, tokens=32):
    """Weight and realistic statistics.

    Activations: nseq sequences of `tokens` tokens, x_tj = offset_j + scale_j * N(0, 1), with
    offsets ~ N(0, 0.5) and scales in [0.25, 1.75], so in_mean (= tokens x the per-token mean)
    is O(10) and D = W * in_mean is O(1). quantise rounds W to multiples of 1/16 (many ties and
    exact zeros); duplicate copies channel j to channel j+1 for the first `duplicate` even
    channels (identical statistics: ties in D, g and the Wanda metric when W ties as well).
    zero_var / zero_mean overwrite in_var / in_mean with exact zeros on that many channels
    (spread over the row).
    """
    g = torch.Generator().manual_seed(seed)
    offsets = torch.randn(in_f, generator=g) * 0.5
    scales = torch.rand(in_f, generator=g) * 1.5 + 0.25
    x = torch.randn(nseq, tokens, in_f, generator=g) * scales + offsets
    for k in range(duplicate):
        x[..., 2 * k + 1] = x[..., 2 * k]
    w = torch.randn(out_f, in_f, generator=g) * 0.1
    if quantise:
        w = torch.round(w * 16) / 16
    if duplicate:
        # make the duplicated columns tie in W as well, in about half the rows
        for k in range(duplicate):
            rows = torch.rand(out_f, generator=g) < 0.5
            w[rows, 2 * k + 1] = w[rows, 2 * k]
    w = w.to(dtype)
    in_norm, in_mean, in_var = symprune_stats(x)
    in_norm, in_mean, in_var = in_norm.clone(), in_mean.clone(), in_var.clone()
    step = max(1, in_f // max(1, zero_var))
    for k in range(zero_var):
        in_var[(k * step + 1) % in_f] = 0.0
    step = max(1, in_f // max(1, zero_mean))
    for k in range(zero_mean):
        in_mean[(k * step + 2) % in_f] = 0.0
    return dict(weight=w, in_norm=in_norm, in_mean=in_mean, in_var=in_var, x=x)


def initial_mask(case, init, *, sparsity=None, nm=None):
    w = case["weight"]
    if init == "magnitude":
        s = symprune.score(w, "magnitude")
    else:
        s = symprune.score(w, init, in_norm=case["in_norm"])
    if nm is not None:
        return symprune.mask(s, nm=nm)
    return symprune.mask(s, sparsity)


def threshold_for(case, keep, mode):
    if mode == "tiny":
        return 1e-6
    if mode == "huge":
        return 1e6
    e = torch.tensor(initial_error(case["weight"], keep, case["in_mean"]), dtype=torch.float64)
    return float(0.3 * e.abs().median())  # some rows converge quickly, others need swaps


def stats_kwargs(case):
    return dict(in_norm=case["in_norm"], in_mean=case["in_mean"], in_var=case["in_var"])


def run_both(case, keep, **kw):
    got = symprune.dsnot(case["weight"], keep, **stats_kwargs(case), **kw)
    want, info = dsnot_oracle(case["weight"], keep, **stats_kwargs(case), return_info=True, **kw)
    return got, want, info


def check_invariants(keep, out, nm=None):
    assert out.dtype == torch.bool and out.shape == keep.shape
    assert torch.equal(out.sum(1), keep.sum(1)), "kept count per row changed"
    if nm is not None:
        n, m = nm
        groups = out.reshape(out.shape[0], -1, m).sum(2)
        assert torch.equal(groups, torch.full_like(groups, n)), "N:M pattern broken"


def assert_same(got, want, what=""):
    if torch.equal(got, want):
        return
    diff = (got != want).any(1).nonzero().flatten().tolist()
    i = diff[0]
    cols = (got[i] != want[i]).nonzero().flatten().tolist()
    raise AssertionError(f"{what}: masks differ in rows {diff}; first row {i} at columns {cols}; "
                         f"symprune kept {got[i].nonzero().flatten().tolist()}, "
                         f"oracle kept {want[i].nonzero().flatten().tolist()}")


# --------------------------------------------------------------------------------------------
# statistics
# --------------------------------------------------------------------------------------------
def test_activation_stats_match_spec_formulas():
    case = make_case(5, 24, 0)
    n, mu, var = activation_stats(case["x"])
    torch.testing.assert_close(case["in_norm"], n, rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(case["in_mean"], mu, rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(case["in_var"], var, rtol=1e-6, atol=1e-6)
    assert case["in_mean"].abs().mean() > 3  # offsets make D large relative to 0.1


# --------------------------------------------------------------------------------------------
# exact DSnoT
# --------------------------------------------------------------------------------------------
@pytest.mark.parametrize("mode", THRESHOLDS)
@pytest.mark.parametrize("init", ["wanda", "ria"])
@pytest.mark.parametrize("sparsity", [0.5, 0.6])
@pytest.mark.parametrize("shape", SHAPES)
def test_unstructured(shape, sparsity, init, mode):
    case = make_case(*shape, seed=seed_of(shape, sparsity, init))
    keep = initial_mask(case, init, sparsity=sparsity)
    thr = threshold_for(case, keep, mode)
    got, want, info = run_both(case, keep, threshold=thr)
    check_invariants(keep, want)
    assert_same(got, want, f"{shape} {sparsity} {init} thr={thr}")
    if mode == "huge":
        assert torch.equal(got, keep)
    elif shape[0] > 1:
        assert not torch.equal(want, keep), "test data exercised no swap"


@pytest.mark.parametrize("mode", THRESHOLDS)
@pytest.mark.parametrize("init", ["wanda", "ria"])
@pytest.mark.parametrize("nm", [(2, 4), (4, 8)])
@pytest.mark.parametrize("shape", SHAPES)
def test_nm(shape, nm, init, mode):
    case = make_case(*shape, seed=seed_of(shape, nm, init, "nm"))
    keep = initial_mask(case, init, nm=nm)
    thr = threshold_for(case, keep, mode)
    got, want, info = run_both(case, keep, nm=nm, threshold=thr)
    check_invariants(keep, want, nm)
    check_invariants(keep, got, nm)
    assert_same(got, want, f"{shape} {nm} {init} thr={thr}")
    if mode == "huge":
        assert torch.equal(got, keep)
    elif shape[0] > 1:
        assert not torch.equal(want, keep), "test data exercised no swap"


@pytest.mark.parametrize("nm", [None, (2, 4)])
def test_nm_explicit_initial_score(nm):
    """initial_score (N:M branch) replaces the Wanda metric used to pick the pruned entry."""
    case = make_case(16, 64, 11)
    ria = symprune.score(case["weight"], "ria", in_norm=case["in_norm"])
    keep = symprune.mask(ria, 0.5) if nm is None else symprune.mask(ria, nm=nm)
    kw = dict(nm=nm, threshold=0.05)
    if nm is not None:
        kw["initial_score"] = ria
    got, want, _ = run_both(case, keep, **kw)
    check_invariants(keep, got, nm)
    assert_same(got, want, f"initial_score nm={nm}")
    if nm is not None:
        plain = symprune.dsnot(case["weight"], keep, **stats_kwargs(case), nm=nm, threshold=0.05)
        assert not torch.equal(plain, got), "initial_score had no effect on this data"


@pytest.mark.parametrize("max_cycles", [1, 3, 50])
@pytest.mark.parametrize("nm", [None, (2, 4)])
def test_max_cycles(max_cycles, nm):
    case = make_case(8, 256, 5)  # wide rows: enough candidates for 50 cycles
    keep = initial_mask(case, "wanda", sparsity=0.5, nm=nm)
    got, want, info = run_both(case, keep, nm=nm, threshold=1e-6, max_cycles=max_cycles)
    check_invariants(keep, got, nm)
    assert_same(got, want, f"max_cycles={max_cycles} nm={nm}")
    assert all(r.cycles <= max_cycles for r in info)
    if max_cycles < 50 or nm is None:
        assert any(r.cycles == max_cycles for r in info), "no row used every cycle"


def test_rows_converge_at_once_or_use_all_cycles():
    """Per-row thresholds: rows whose |e0| is below the threshold must stay untouched."""
    case = make_case(16, 64, 6)
    keep = initial_mask(case, "wanda", sparsity=0.5)
    e0 = torch.tensor(initial_error(case["weight"], keep, case["in_mean"])).abs()
    thr = float(e0.median())
    got, want, info = run_both(case, keep, threshold=thr)
    assert_same(got, want, "median threshold")
    quiet = e0 <= thr
    assert quiet.any() and (~quiet).any()
    assert torch.equal(got[quiet], keep[quiet])
    assert not torch.equal(got[~quiet], keep[~quiet])


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float32])
@pytest.mark.parametrize("nm", [None, (2, 4)])
def test_dtypes(dtype, nm):
    case = make_case(7, 24, 21, dtype=dtype)
    keep = initial_mask(case, "wanda", sparsity=0.5, nm=nm)
    got, want, _ = run_both(case, keep, nm=nm, threshold=0.1)
    check_invariants(keep, got, nm)
    assert_same(got, want, f"{dtype} nm={nm}")
    assert not torch.equal(want, keep)


@pytest.mark.parametrize("init", ["wanda", "magnitude", "ria"])
@pytest.mark.parametrize("nm", [None, (2, 4), (4, 8)])
def test_ties(init, nm):
    """Quantised weights and duplicated channels: exact ties in D, g and the prune metric."""
    case = make_case(16, 64, 31, quantise=True, duplicate=12)
    w32 = case["weight"].float()
    d = w32 * case["in_mean"]
    dup_ties = (d[:, 0:24:2] == d[:, 1:24:2]) & (d[:, 0:24:2] != 0)
    assert dup_ties.any()
    assert (w32 == 0).any()  # D == 0 entries from exact zero weights
    keep = initial_mask(case, init, sparsity=0.5, nm=nm)
    for thr in (1e-6, 0.2):
        got, want, _ = run_both(case, keep, nm=nm, threshold=thr)
        check_invariants(keep, got, nm)
        assert_same(got, want, f"ties {init} nm={nm} thr={thr}")
        assert not torch.equal(want, keep)


@pytest.mark.parametrize("nm", [None, (2, 4)])
def test_zero_variance_channels(nm):
    case = make_case(16, 64, 41, zero_var=6)
    keep = initial_mask(case, "wanda", sparsity=0.5, nm=nm)
    got, want, _ = run_both(case, keep, nm=nm, threshold=0.05)
    check_invariants(keep, got, nm)
    assert_same(got, want, f"zero variance nm={nm}")
    zv = case["in_var"] == 0
    regrown = got & ~keep
    assert regrown[:, zv].any(), "no zero-variance channel was regrown (its g is huge)"


@pytest.mark.parametrize("nm", [None, (2, 4)])
def test_zero_mean_channels(nm):
    case = make_case(16, 64, 51, zero_mean=8, quantise=True)
    keep = initial_mask(case, "wanda", sparsity=0.5, nm=nm)
    got, want, _ = run_both(case, keep, nm=nm, threshold=1e-6)
    check_invariants(keep, got, nm)
    assert_same(got, want, f"zero mean nm={nm}")
    d0 = (case["weight"].float() * case["in_mean"]) == 0
    # D == 0 is never a grow candidate (and never a prune candidate in the unstructured branch)
    assert not (got & ~keep & d0).any()
    if nm is None:
        assert not (~got & keep & d0).any()
    else:
        # semantics.md: the N:M prune candidate is the lowest-scored unexamined initially kept
        # entry of the group, whatever its D (the D != 0 rule is for the grow side there)
        assert (~got & keep & d0).any(), "data did not exercise pruning a D == 0 entry in N:M"


@pytest.mark.parametrize("v", [0.5, 2.0])
def test_var_power(v):
    case = make_case(16, 64, 61)
    keep = initial_mask(case, "wanda", sparsity=0.5)
    got, want, _ = run_both(case, keep, threshold=0.05, var_power=v)
    assert_same(got, want, f"var_power={v}")


def test_stop_reasons_are_exercised():
    """The oracle's bookkeeping: the data above reaches every way a row can stop."""
    reasons = collections.Counter()
    for seed in range(4):
        for shape in SHAPES:
            case = make_case(*shape, seed=seed)
            for nm in (None, (2, 4)):
                keep = initial_mask(case, "wanda", sparsity=0.5, nm=nm)
                for thr in (1e-6, 0.5):
                    got, want, info = run_both(case, keep, nm=nm, threshold=thr, max_cycles=8)
                    assert_same(got, want, f"stop reasons {shape} {nm} seed={seed} thr={thr}")
                    reasons.update((nm is None, r.stop) for r in info)
    for branch in (True, False):
        for stop in ("threshold", "grow_exhausted", "max_cycles"):
            assert reasons[(branch, stop)] > 0, (branch, stop, reasons)
    assert reasons[(True, "prune_exhausted")] > 0, reasons
    assert reasons[(False, "sign")] > 0, reasons


# --------------------------------------------------------------------------------------------
# R2-DSnoT options
# --------------------------------------------------------------------------------------------
R2_OPTIONS = [
    dict(relative="prune"),
    dict(relative="grow"),
    dict(relative="prune", a=1.0),
    dict(relative="prune", a=0.25),
    dict(relative="grow", a=0.25),  # a only matters for "prune"; must still agree
    dict(gamma1=0.0, gamma2=0.0),
    dict(gamma1=0.3),
    dict(gamma2=0.3),
    dict(gamma1=0.5, gamma2=0.2),
    dict(gamma1=0.5, gamma2=0.2, q=2.0),
    dict(gamma2=0.4, q=0.5),
    dict(relative="prune", gamma1=0.1, gamma2=0.1),
    dict(relative="grow", gamma1=0.1, gamma2=0.3, q=2.0),
]


@pytest.mark.parametrize("opts", R2_OPTIONS, ids=lambda o: ",".join(f"{k}={v}" for k, v in o.items()))
@pytest.mark.parametrize("nm", [None, (2, 4)])
@pytest.mark.parametrize("shape", [(7, 24), (16, 64)])
def test_r2_options(shape, nm, opts):
    case = make_case(*shape, seed=71)
    keep = initial_mask(case, "wanda", sparsity=0.5, nm=nm)
    thr = threshold_for(case, keep, "scaled") / 3
    got, want, info = run_both(case, keep, nm=nm, threshold=thr, **opts)
    check_invariants(keep, got, nm)
    assert_same(got, want, f"R2 {opts} nm={nm} shape={shape}")


def test_r2_options_change_the_result():
    """Every R2 option is exercised: each changes the mask relative to plain DSnoT somewhere."""
    cases = [(make_case(16, 64, s), nm) for s in (71, 72) for nm in (None, (2, 4))]
    plain = []
    for case, nm in cases:
        keep = initial_mask(case, "wanda", sparsity=0.5, nm=nm)
        plain.append((keep, symprune.dsnot(case["weight"], keep, **stats_kwargs(case), nm=nm,
                                           threshold=0.05)))
    rejected = 0
    for opts in [dict(relative="prune"), dict(relative="grow"), dict(gamma1=0.0, gamma2=0.0),
                 dict(gamma1=0.3), dict(gamma2=0.3)]:
        changed = False
        for (case, nm), (keep, base) in zip(cases, plain):
            out = symprune.dsnot(case["weight"], keep, **stats_kwargs(case), nm=nm,
                                 threshold=0.05, **opts)
            changed |= not torch.equal(out, base)
            if "gamma1" in opts or "gamma2" in opts:
                _, info = dsnot_oracle(case["weight"], keep, **stats_kwargs(case), nm=nm,
                                       threshold=0.05, return_info=True, **opts)
                rejected += sum(r.rejected for r in info)
        assert changed, f"{opts} never changed the mask"
    assert rejected > 0, "the regularised boundary never rejected a swap"
    # a and q change the result when their option is on
    case, nm = cases[0]
    keep = plain[0][0]
    r1 = symprune.dsnot(case["weight"], keep, **stats_kwargs(case), threshold=0.05,
                        relative="prune", a=0.5)
    r2 = symprune.dsnot(case["weight"], keep, **stats_kwargs(case), threshold=0.05,
                        relative="prune", a=2.0)
    assert not torch.equal(r1, r2)
    q1 = symprune.dsnot(case["weight"], keep, **stats_kwargs(case), threshold=0.05, gamma1=1.0)
    q2 = symprune.dsnot(case["weight"], keep, **stats_kwargs(case), threshold=0.05, gamma1=1.0,
                        q=3.0)
    assert not torch.equal(q1, q2)


@pytest.mark.parametrize("nm", [None, (2, 4), (4, 8)])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_r2_all_off_is_plain_dsnot(nm, dtype):
    case = make_case(16, 64, 81, dtype=dtype, quantise=True, duplicate=4)
    keep = initial_mask(case, "ria", sparsity=0.6, nm=nm)
    plain = symprune.dsnot(case["weight"], keep, **stats_kwargs(case), nm=nm, threshold=0.05)
    off = symprune.dsnot(case["weight"], keep, **stats_kwargs(case), nm=nm, threshold=0.05,
                         relative=None, gamma1=None, gamma2=None, a=0.9, q=3.0)
    assert torch.equal(plain, off)
    assert_same(plain, dsnot_oracle(case["weight"], keep, **stats_kwargs(case), nm=nm,
                                    threshold=0.05), f"plain nm={nm} {dtype}")
    assert not torch.equal(plain, keep)


# --------------------------------------------------------------------------------------------
# the vectorised benchmark baseline
# --------------------------------------------------------------------------------------------
@pytest.mark.parametrize("nm", [None, (2, 4), (4, 8)])
@pytest.mark.parametrize("seed", range(4))
def test_reference_matches_oracle(seed, nm):
    shapes = [(9, 32), (24, 128), (5, 16), (2, 8)]
    for k, (o, i) in enumerate(shapes):
        case = make_case(o, i, 1000 + 10 * seed + k, quantise=seed % 2 == 1,
                         duplicate=4 if seed >= 2 else 0, zero_mean=2 * (seed == 3),
                         zero_var=2 * (seed == 2))
        keep = initial_mask(case, "wanda", sparsity=0.5 + 0.1 * (k % 2), nm=nm)
        for thr, mc in ((1e-6, 50), (0.1, 50), (1e-6, 3)):
            kw = dict(nm=nm, threshold=thr, max_cycles=mc)
            want = dsnot_oracle(case["weight"], keep, **stats_kwargs(case), **kw)
            ref = dsnot_reference(case["weight"], keep, **stats_kwargs(case), **kw)
            assert_same(ref, want, f"reference vs oracle ({o},{i}) {kw}")


@pytest.mark.parametrize("nm", [None, (2, 4)])
def test_reference_matches_symprune_larger(nm):
    case = make_case(96, 512, 7, nseq=4, tokens=64)
    keep = initial_mask(case, "wanda", sparsity=0.5, nm=nm)
    got = symprune.dsnot(case["weight"], keep, **stats_kwargs(case), nm=nm)
    ref = dsnot_reference(case["weight"], keep, **stats_kwargs(case), nm=nm)
    assert_same(got, ref, f"symprune vs reference nm={nm}")
    assert not torch.equal(got, keep)


# --------------------------------------------------------------------------------------------
# errors
# --------------------------------------------------------------------------------------------
def _good():
    case = make_case(4, 16, 3)
    keep = initial_mask(case, "wanda", sparsity=0.5)
    return case, keep


def _call(case, keep, **over):
    kw = dict(stats_kwargs(case))
    kw.update(over)
    w = kw.pop("weight", case["weight"])
    return symprune.dsnot(w, keep, **kw)


@pytest.mark.parametrize("bad", [
    "weight_1d", "weight_3d", "mask_shape", "mask_float", "mask_int",
    "in_norm_len", "in_mean_len", "in_var_len", "in_mean_2d",
    "nan_weight", "nan_in_mean", "nan_in_var", "nan_in_norm",
    "nm_not_divisible", "relative_unknown",
])
def test_errors(bad):
    case, keep = _good()
    n, mu, var = case["in_norm"], case["in_mean"], case["in_var"]
    w = case["weight"]
    if bad == "weight_1d":
        call = lambda: _call(case, keep[0], weight=w[0])  # noqa: E731
    elif bad == "weight_3d":
        call = lambda: _call(case, keep.unsqueeze(0), weight=w.unsqueeze(0))  # noqa: E731
    elif bad == "mask_shape":
        call = lambda: _call(case, keep[:, :8])  # noqa: E731
    elif bad == "mask_float":
        call = lambda: _call(case, keep.float())  # noqa: E731
    elif bad == "mask_int":
        call = lambda: _call(case, keep.to(torch.uint8))  # noqa: E731
    elif bad == "in_norm_len":
        call = lambda: _call(case, keep, in_norm=n[:-1])  # noqa: E731
    elif bad == "in_mean_len":
        call = lambda: _call(case, keep, in_mean=torch.cat([mu, mu]))  # noqa: E731
    elif bad == "in_var_len":
        call = lambda: _call(case, keep, in_var=var[:3])  # noqa: E731
    elif bad == "in_mean_2d":
        call = lambda: _call(case, keep, in_mean=mu.unsqueeze(0))  # noqa: E731
    elif bad.startswith("nan_"):
        name = bad[4:]
        t = (w if name == "weight" else case[name]).clone()
        t.view(-1)[3] = float("nan")
        call = lambda: _call(case, keep, **{name: t})  # noqa: E731
    elif bad == "nm_not_divisible":
        call = lambda: _call(case, keep, nm=(2, 3))  # noqa: E731
    elif bad == "relative_unknown":
        call = lambda: _call(case, keep, relative="both")  # noqa: E731
    with pytest.raises(ValueError):
        call()


@pytest.mark.parametrize("how", ["omitted", "none"])
def test_missing_statistic(how):
    """A missing statistic is an error; Python's TypeError for a missing/None required
    argument is accepted as well as ValueError."""
    case, keep = _good()
    kw = dict(in_norm=case["in_norm"], in_mean=case["in_mean"])
    if how == "none":
        kw["in_var"] = None
    with pytest.raises((TypeError, ValueError)):
        symprune.dsnot(case["weight"], keep, **kw)
