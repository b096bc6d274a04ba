"""ActivationStats / OutputStats against oracles.oracle_stats (docs/semantics.md#statistics,
docs/semantics.md "Statistics")."""

import pytest
import torch

import symprune
from cases import DTYPES, _gen
from oracles import oracle_stats

F = 13  # an odd feature count


def _x(shape, dtype, key, offset=0.5, scale=2.0):
    g = _gen("x", shape, key)
    return (torch.randn(shape, generator=g) * scale + offset).to(dtype)


# Each layout is a list of update shapes fed in order.
LAYOUTS = {
    "2d": [(17, F)],
    "3d": [(3, 11, F)],
    "several_2d": [(9, F), (9, F), (5, F)],             # one sequence per call (DSnoT)
    "mixed": [(8, F), (2, 6, F), (1, F), (4, 3, F)],    # 2-D and 3-D updates together
    "1d_and_4d": [(F,), (2, 3, 5, F), (7, F)],         # 1-D = one token; 4-D = 6 sequences
}


def _compare(actual, expected):
    # Accumulation is fp64 in both, but summation order differs (per update vs per token,
    # vectorised vs sequential), so the fp64 totals can differ in the last fp64 bits; after
    # the single rounding to fp32 that is at most ~1 fp32 ulp. rtol 1e-6 is ~8 fp32 ulps;
    # any fp32/fp16 accumulation would miss it by orders of magnitude on these inputs.
    assert actual.dtype == torch.float32
    assert actual.shape == expected.shape
    torch.testing.assert_close(actual, expected, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("dtype", list(DTYPES))
@pytest.mark.parametrize("layout", list(LAYOUTS))
def test_activation_stats(dtype, layout):
    xs = [_x(shape, DTYPES[dtype], (layout, k)) for k, shape in enumerate(LAYOUTS[layout])]
    st = symprune.ActivationStats(F)
    for x in xs:
        st.update(x)
    ref = oracle_stats(xs)
    assert st.features == F
    assert st.tokens == ref["tokens"]
    assert st.sequences == ref["sequences"]
    for name in ("in_sq", "in_norm", "in_mean", "in_var"):
        _compare(getattr(st, name), ref[name])


@pytest.mark.parametrize("dtype", list(DTYPES))
@pytest.mark.parametrize("layout", ["2d", "3d", "mixed"])
def test_output_stats(dtype, layout):
    xs = [_x(shape, DTYPES[dtype], ("out", layout, k)) for k, shape in enumerate(LAYOUTS[layout])]
    ost = symprune.OutputStats(F)
    for y in xs:
        ost.update(y)
    ref = oracle_stats(xs)
    _compare(ost.out_sq, ref["in_sq"])
    _compare(ost.out_norm, ref["in_norm"])


def test_read_between_updates_does_not_freeze():
    xs = [_x((6, F), torch.float32, ("rb", k)) for k in range(3)]
    st = symprune.ActivationStats(F)
    st.update(xs[0])
    _compare(st.in_var, oracle_stats(xs[:1])["in_var"])
    st.update(xs[1])
    st.update(xs[2])
    ref = oracle_stats(xs)
    assert st.tokens == 18 and st.sequences == 3
    for name in ("in_sq", "in_norm", "in_mean", "in_var"):
        _compare(getattr(st, name), ref[name])


def test_update_does_not_modify_input():
    x = _x((2, 5, F), torch.float16, "nomod")
    before = x.clone()
    st = symprune.ActivationStats(F)
    st.update(x)
    assert torch.equal(x, before)


def test_fp16_squares_do_not_overflow():
    # 1000^2 = 1e6 overflows fp16 (max 65504): squares must be taken after upcasting.
    x = torch.full((4, 3), 1000.0, dtype=torch.float16)
    st = symprune.ActivationStats(3)
    st.update(x)
    assert torch.equal(st.in_sq, torch.full((3,), 4e6))
    assert torch.equal(st.in_norm, torch.full((3,), 2000.0))
    assert torch.equal(st.in_var, torch.zeros(3))


def test_accumulation_is_fp64_across_updates():
    # 2^24 followed by three updates of 1: an fp32 running sum stays at 2^24 (2^24 + 1 rounds
    # back down); an fp64 one reaches 2^24 + 3, which rounds (ties to even) to 2^24 + 4.
    st = symprune.ActivationStats(1)
    st.update(torch.tensor([[4096.0]]))
    for _ in range(3):
        st.update(torch.tensor([[1.0]]))
    assert torch.equal(st.in_sq, torch.tensor([16777220.0]))
    # in_mean = (4096 + 3) / 4 sequences
    assert torch.equal(st.in_mean, torch.tensor([4099.0 / 4]))


def test_single_token_updates_have_zero_variance():
    st = symprune.ActivationStats(4)
    xs = [torch.tensor([1.0, -2.0, 3.0, 0.5]), torch.tensor([[5.0, 5.0, 5.0, 5.0]])]
    for x in xs:
        st.update(x)
    assert st.tokens == 2 and st.sequences == 2
    # one update = one variance unit: both updates have a single token, so var = 0
    # (the pooled variance over both tokens would not be)
    assert torch.equal(st.in_var, torch.zeros(4))
    _compare(st.in_mean, oracle_stats(xs)["in_mean"])


def test_in_var_is_not_pooled():
    # two sequences with different means: the per-update average differs from the pooled
    # variance over all tokens
    a = torch.tensor([[0.0], [2.0]])      # mean 1, var 1
    b = torch.tensor([[10.0], [10.0], [16.0], [16.0]])  # mean 13, var 9
    st = symprune.ActivationStats(1)
    st.update(a)
    st.update(b)
    assert torch.equal(st.in_var, torch.tensor([(2 * 1.0 + 4 * 9.0) / 6]))
    assert torch.equal(st.in_mean, torch.tensor([(2.0 + 52.0) / 2]))
    # whereas a single 3-D update is one variance unit over all its tokens
    st3 = symprune.ActivationStats(1)
    st3.update(torch.tensor([[[0.0], [2.0]], [[10.0], [12.0]]]))
    assert st3.sequences == 2 and st3.tokens == 4
    pooled = torch.tensor([0.0, 2.0, 10.0, 12.0], dtype=torch.float64).var(unbiased=False)
    assert torch.equal(st3.in_var, pooled.float().reshape(1))


def test_states_of_disjoint_updates_sum_to_the_state_of_all():
    """What ranks under torchrun rely on: summing the states of accumulators that saw different
    updates (then load_state) gives the statistics of one that saw them all, against the fp64
    oracle of all the updates."""
    g = torch.Generator().manual_seed(3)
    updates = [torch.randn(2, 5, 12, generator=g) * 3 + 1, torch.randn(7, 12, generator=g),
               torch.randn(1, 4, 12, generator=g)]
    parts = [symprune.ActivationStats(12), symprune.ActivationStats(12)]
    grams = [symprune.GramStats(12), symprune.GramStats(12)]
    for i, x in enumerate(updates):
        parts[i % 2].update(x)
        grams[i % 2].update(x)
    combined, gram = symprune.ActivationStats(12), symprune.GramStats(12)
    combined.load_state(parts[0].state() + parts[1].state())
    gram.load_state(grams[0].state() + grams[1].state())
    expected = oracle_stats(updates)
    assert (combined.tokens, combined.sequences) == (expected["tokens"], expected["sequences"])
    for name in ("in_sq", "in_norm", "in_mean", "in_var"):
        torch.testing.assert_close(getattr(combined, name), expected[name], rtol=1e-6, atol=1e-6)
    rows = torch.cat([x.reshape(-1, 12).double() for x in updates])
    torch.testing.assert_close(gram.gram, rows.T @ rows, rtol=1e-6, atol=1e-6)
    assert gram.tokens == rows.shape[0]
    with pytest.raises(ValueError, match="expected"):
        combined.load_state(torch.zeros(5, dtype=torch.float64))
