"""Invalid input raises ValueError with a message naming the problem.

The regexes are deliberately loose (a key word, case-insensitive): they pin down that the
message is about the right thing, not its wording."""

import pytest
import torch

import symprune
from cases import make_norm, make_weight

OUT, IN = 6, 16
W = make_weight((OUT, IN), "randn", key=("err",))
SCORE = W.abs()
IN_NORM = make_norm(IN, key=("err",))
OUT_NORM = make_norm(OUT, key=("err_out",))


def read_by(method: str, in_norm: torch.Tensor = IN_NORM, out_norm: torch.Tensor = OUT_NORM) -> dict:
    """The statistics ``method`` reads (others are refused)."""
    info = symprune.method_info(method)
    return {**({"in_norm": in_norm} if info["needs_input_stats"] else {}),
            **({"out_norm": out_norm} if info["needs_output_stats"] else {})}

SPARSITY_RE = r"(?i)sparsity"
NM_RE = r"(?i)n:m|\bnm\b|\bn\b|\bm\b"


# ------------------------------------------------------------------------ sparsity / N:M

@pytest.mark.parametrize("s", [-0.1, -1e-9, 1.0, 1.5, float("nan")])
def test_sparsity_out_of_range(s):
    with pytest.raises(ValueError, match=SPARSITY_RE):
        symprune.mask(SCORE, s)
    with pytest.raises(ValueError, match=SPARSITY_RE):
        symprune.mask(SCORE, s, group="layer")
    w = W.clone()
    with pytest.raises(ValueError, match=SPARSITY_RE):
        symprune.prune_(w, "magnitude", s)
    assert torch.equal(w, W), "a rejected prune_ must leave the weight untouched"


@pytest.mark.parametrize("nm", [(4, 4), (5, 4), (0, 4), (-1, 4), (8, 8), (2, 1)])
def test_bad_nm(nm):
    with pytest.raises(ValueError, match=NM_RE):
        symprune.mask(SCORE, nm=nm)
    with pytest.raises(ValueError, match=NM_RE):
        symprune.prune_(W.clone(), "magnitude", nm=nm)


@pytest.mark.parametrize("nm", [(2, 4), (1, 4), (4, 8)])
def test_in_features_not_divisible_by_m(nm):
    score = make_weight((4, 12 if nm[1] == 8 else 10), "randn", key=("div",)).abs()
    with pytest.raises(ValueError, match=r"(?i)divis|multiple"):
        symprune.mask(score, nm=nm)
    with pytest.raises(ValueError, match=r"(?i)divis|multiple"):
        symprune.mask(score, nm=nm, permute=True)
    with pytest.raises(ValueError, match=r"(?i)divis|multiple"):
        symprune.prune_(score.clone(), "magnitude", nm=nm)


def test_channel_permutation_not_divisible():
    with pytest.raises(ValueError, match=r"(?i)divis|multiple"):
        symprune.channel_permutation(make_weight((4, 10), "randn").abs(), 4)


def test_both_sparsity_and_nm():
    with pytest.raises(ValueError, match=r"(?i)sparsity|n:m|\bnm\b"):
        symprune.mask(SCORE, 0.5, nm=(2, 4))
    with pytest.raises(ValueError, match=r"(?i)sparsity|n:m|\bnm\b"):
        symprune.prune_(W.clone(), "magnitude", 0.5, nm=(2, 4))


def test_neither_sparsity_nor_nm():
    with pytest.raises(ValueError, match=r"(?i)sparsity|n:m|\bnm\b"):
        symprune.mask(SCORE)
    with pytest.raises(ValueError, match=r"(?i)sparsity|n:m|\bnm\b"):
        symprune.prune_(W.clone(), "magnitude")


def test_permute_without_nm():
    with pytest.raises(ValueError, match=r"(?i)permut|n:m|\bnm\b"):
        symprune.mask(SCORE, 0.5, permute=True)


@pytest.mark.parametrize("group", ["column", "ROWS", ""])
def test_unknown_group(group):
    with pytest.raises(ValueError, match=r"(?i)group"):
        symprune.mask(SCORE, 0.5, group=group)
    with pytest.raises(ValueError, match=r"(?i)group"):
        symprune.prune_(W.clone(), "magnitude", 0.5, group=group)


def test_nm_with_layer_group():
    # Not in semantics.md: symprune rejects group="layer" together with nm (N:M groups are
    # fixed runs of m columns of one row) instead of silently ignoring it.
    with pytest.raises(ValueError, match=r"(?i)group"):
        symprune.mask(SCORE, nm=(2, 4), group="layer")


# ----------------------------------------------------------------------------- methods

@pytest.mark.parametrize("method", ["bogus", "sparsegpt_typo", ""])
def test_unknown_method(method):
    pattern = r"(?i)method|unknown|" + (method or "unknown")
    with pytest.raises(ValueError, match=pattern):
        symprune.score(W, method, in_norm=IN_NORM, out_norm=OUT_NORM)
    with pytest.raises(ValueError, match=pattern):
        symprune.prune_(W.clone(), method, 0.5, in_norm=IN_NORM, out_norm=OUT_NORM)


@pytest.mark.parametrize("method", ["wanda", "ria", "stochria", "symwanda"])
def test_missing_in_norm(method):
    outputs = {k: v for k, v in read_by(method).items() if k == "out_norm"}
    with pytest.raises(ValueError, match=r"(?i)in_norm"):
        symprune.score(W, method, **outputs)
    w = W.clone()
    with pytest.raises(ValueError, match=r"(?i)in_norm"):
        symprune.prune_(w, method, 0.5, **outputs)
    assert torch.equal(w, W)


@pytest.mark.parametrize("method", ["owanda", "symwanda"])
def test_missing_out_norm(method):
    inputs = {k: v for k, v in read_by(method).items() if k == "in_norm"}
    with pytest.raises(ValueError, match=r"(?i)out_norm"):
        symprune.score(W, method, **inputs)
    with pytest.raises(ValueError, match=r"(?i)out_norm"):
        symprune.prune_(W.clone(), method, 0.5, **inputs)


@pytest.mark.parametrize("bad", [IN + 1, IN - 1, (2, IN), (2, IN // 2)], ids=str)
@pytest.mark.parametrize("method", ["wanda", "ria", "stochria", "symwanda"])
def test_wrong_in_norm_shape(method, bad):
    in_norm = torch.ones(bad)
    with pytest.raises(ValueError, match=r"(?i)in_norm|shape|size"):
        symprune.score(W, method, **read_by(method, in_norm=in_norm))


@pytest.mark.parametrize("bad", [OUT + 1, IN, (2, OUT)], ids=str)
@pytest.mark.parametrize("method", ["owanda", "symwanda"])
def test_wrong_out_norm_shape(method, bad):
    out_norm = torch.ones(bad)
    with pytest.raises(ValueError, match=r"(?i)out_norm|shape|size"):
        symprune.score(W, method, **read_by(method, out_norm=out_norm))


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), float("-inf")], ids=str)
@pytest.mark.parametrize("method", ["magnitude", "wanda", "ria", "stochria", "symwanda", "owanda", "symmetric"])
def test_non_finite_weight(method, bad):
    w = W.clone()
    w[2, 3] = bad
    with pytest.raises(ValueError, match=r"(?i)nan|inf|finite"):
        symprune.score(w, method, **read_by(method))
    before = w.clone()
    with pytest.raises(ValueError, match=r"(?i)nan|inf|finite"):
        symprune.prune_(w, method, 0.5, **read_by(method))
    assert torch.equal(w.isnan(), before.isnan()) and torch.equal(w.nan_to_num(), before.nan_to_num())


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_non_finite_half_weight(dtype):
    w = W.to(dtype)
    w[0, 0] = float("nan")
    with pytest.raises(ValueError, match=r"(?i)nan|inf|finite"):
        symprune.score(w, "magnitude")


@pytest.mark.parametrize("method", ["wanda", "ria", "stochria", "symwanda"])
def test_nan_in_norm(method):
    in_norm = IN_NORM.clone()
    in_norm[5] = float("nan")
    with pytest.raises(ValueError, match=r"(?i)nan|finite|in_norm"):
        symprune.score(W, method, **read_by(method, in_norm=in_norm))


@pytest.mark.parametrize("shape", [(IN,), (2, OUT, IN), (1, 1, IN)], ids=str)
def test_weight_not_2d(shape):
    w = torch.ones(shape)
    with pytest.raises(ValueError, match=r"(?i)2-?d|dim|shape|matrix"):
        symprune.score(w, "magnitude")
    with pytest.raises(ValueError, match=r"(?i)2-?d|dim|shape|matrix"):
        symprune.prune_(w, "magnitude", 0.5)


@pytest.mark.parametrize("dtype", [torch.int32, torch.int64, torch.int8, torch.bool])
def test_non_float_weight(dtype):
    w = torch.ones(OUT, IN, dtype=dtype)
    with pytest.raises(ValueError, match=r"(?i)float|dtype"):
        symprune.score(w, "magnitude")
    with pytest.raises(ValueError, match=r"(?i)float|dtype"):
        symprune.prune_(w, "magnitude", 0.5)


# ------------------------------------------------------------------------------- stats

@pytest.mark.parametrize("name", ["in_sq", "in_norm", "in_mean", "in_var"])
def test_stats_before_update(name):
    st = symprune.ActivationStats(IN)
    with pytest.raises(ValueError, match=r"(?i)update|no data|empty|before|no activation"):
        getattr(st, name)


@pytest.mark.parametrize("name", ["out_sq", "out_norm"])
def test_output_stats_before_update(name):
    ost = symprune.OutputStats(OUT)
    with pytest.raises(ValueError, match=r"(?i)update|no data|empty|before|no activation"):
        getattr(ost, name)


@pytest.mark.parametrize("shape", [(4, IN + 1), (2, 3, IN - 1), (IN + 1,)], ids=str)
def test_stats_update_wrong_features(shape):
    st = symprune.ActivationStats(IN)
    with pytest.raises(ValueError, match=r"(?i)feature|shape|size"):
        st.update(torch.ones(shape))
    ost = symprune.OutputStats(OUT)
    with pytest.raises(ValueError, match=r"(?i)feature|shape|size"):
        ost.update(torch.ones(shape))


@pytest.mark.parametrize(("method", "option"), [("wanda", "a"), ("magnitude", "p"), ("ria", "beta"),
                                                ("ria", "seed"), ("symwanda", "a"), ("stochria", "p")])
def test_score_refuses_options_the_method_does_not_read(method, option):
    w = torch.randn(OUT, IN)
    norms = read_by(method, torch.rand(IN), torch.rand(OUT))
    with pytest.raises(ValueError, match=f"score option '{option}' is not read by method '{method}'"):
        symprune.score(w, method, **norms, **{option: 1})
    symprune.score(w, method, **norms)  # without the option: fine


@pytest.mark.parametrize("method", ["magnitude", "wanda", "owanda", "symmetric"])
def test_statistics_a_method_does_not_read_are_refused(method):
    """Refused, not ignored: passing them would suggest an effect they do not have."""
    unread = {k: v for k, v in {"in_norm": IN_NORM, "out_norm": OUT_NORM}.items() if k not in read_by(method)}
    for name, value in unread.items():
        with pytest.raises(ValueError, match=f"{name} given, but method '{method}' does not read it"):
            symprune.score(W, method, **read_by(method), **{name: value})
        with pytest.raises(ValueError, match=f"{name} given, but recipe '{method} 0.5 per row' does not read it"):
            symprune.prune_(W.clone(), method, 0.5, **read_by(method), **{name: value})
    with pytest.raises(ValueError, match="gram given, but recipe"):
        symprune.prune(W, symprune.Recipe("wanda", 0.5), in_norm=IN_NORM, gram=torch.eye(IN, dtype=torch.float64))
    with pytest.raises(ValueError, match="in_mean given, but recipe"):
        symprune.prune(W, symprune.Recipe("wanda", 0.5), in_norm=IN_NORM, in_mean=IN_NORM)
    if symprune.method_info(method)["row_local"]:
        for name, value in unread.items():
            with pytest.raises(ValueError, match=f"{name} given"):
                symprune.prune_row_local(W, method, 0.5, **read_by(method), **{name: value})


def test_dsnot_refuses_a_mask_that_is_not_nm():
    g = torch.Generator().manual_seed(0)
    w = torch.randn(OUT, 16, generator=g)
    stats = dict(in_norm=torch.rand(16, generator=g), in_mean=torch.randn(16, generator=g),
                 in_var=torch.rand(16, generator=g))
    keep = symprune.mask(w.abs(), nm=(2, 4))
    assert torch.equal(symprune.dsnot(w, keep, nm=(2, 4), **stats).reshape(OUT, 4, 4).sum(-1),
                       torch.full((OUT, 4), 2))
    bad = keep.clone()
    bad[0, :4] = True  # one group keeps 4
    with pytest.raises(ValueError, match="keep_mask is not 2:4"):
        symprune.dsnot(w, bad, nm=(2, 4), **stats)
