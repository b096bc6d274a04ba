"""Weight reconstruction (SparseGPT, the least-squares refit, Gram statistics) against the fp64
oracles of reconstruct_oracle.py, on random layers with outlier channels and dead inputs."""

from __future__ import annotations

import pytest
import symprune
import torch
from conftest import TINY_VOCAB, build_tiny_model
from reconstruct_oracle import objective, oracle_admm, oracle_refit, oracle_sparsegpt
from symprune.blocks import block_linears
from symprune.pipeline import collect_block_stats, find_decoder_blocks

pytestmark = pytest.mark.usefixtures("single_thread")

PATTERNS = [
    {"sparsity": 0.5}, {"sparsity": 0.7, "blocksize": 16}, {"sparsity": 0.3, "blocksize": 40},
    {"nm": (2, 4)}, {"nm": (4, 8), "blocksize": 16}, {"nm": (1, 4), "blocksize": 8},
    {"nm": (8, 32), "blocksize": 32},  # groups over 16 columns: selected by a sort, not by ranks
]


def layer(rows: int = 24, cols: int = 64, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """A weight and the Gram of LLM-like inputs: a few outlier channels, one dead input."""
    g = torch.Generator().manual_seed(seed)
    scale = torch.rand(cols, generator=g, dtype=torch.float64) + 0.1
    scale[torch.randperm(cols, generator=g)[:3]] *= 30  # outlier channels
    x = torch.randn(4 * cols, cols, generator=g, dtype=torch.float64) * scale
    x[:, 5] = 0  # a dead input
    return torch.randn(rows, cols, generator=g, dtype=torch.float64), x.T @ x


def _assert_pruned_zeros_positive(out: torch.Tensor) -> None:
    zeros = out == 0
    assert not torch.signbit(out[zeros]).any(), "a pruned entry is -0.0"


@pytest.mark.parametrize("backend", ["rows", "columns"])
@pytest.mark.parametrize("pattern", PATTERNS, ids=str)
def test_sparsegpt_equals_oracle_fp64(pattern: dict, backend: str) -> None:
    for seed in range(3):
        w, gram = layer(seed=seed)
        expect = oracle_sparsegpt(w, gram, **pattern)
        got = symprune.sparsegpt(w, gram, **pattern, backend=backend)
        assert torch.equal(got == 0, expect == 0)
        torch.testing.assert_close(got, expect, rtol=1e-9, atol=1e-9)
        assert got.dtype == torch.float64
        assert (got[:, 5] == 0).all()  # the dead input is pruned
        _assert_pruned_zeros_positive(got)
        if "nm" in pattern:
            n, m = pattern["nm"]
            assert ((got != 0).reshape(w.shape[0], -1, m).sum(-1) <= n).all()


@pytest.mark.parametrize("backend", ["rows", "columns"])
@pytest.mark.parametrize("nm", [(2, 4), (3, 8), (8, 32)], ids=str)
def test_sparsegpt_breaks_nm_ties_by_the_lower_index(nm: tuple[int, int], backend: str) -> None:
    """With a diagonal Gram nothing is updated, and equal |w| tie every key of a group: the
    lowest-indexed m - n entries of each group are pruned."""
    n, m = nm
    w = torch.ones(5, 2 * m, dtype=torch.float64)
    w[:, 1::3] = -1.0
    got = symprune.sparsegpt(w, torch.eye(2 * m, dtype=torch.float64) * 7, nm=nm, blocksize=m, backend=backend)
    expect = w.clone()
    expect.view(5, 2, m)[:, :, : m - n] = 0
    assert torch.equal(got, expect)
    torch.testing.assert_close(got, oracle_sparsegpt(w, torch.eye(2 * m, dtype=torch.float64) * 7, nm=nm,
                                                     blocksize=m), rtol=0, atol=0)


@pytest.mark.parametrize("pattern", [{"sparsity": 0.5}, {"nm": (2, 4)}], ids=str)
def test_sparsegpt_equals_oracle_fp64_on_a_wide_layer(pattern: dict) -> None:
    """Five blocks of columns, the last one short (601 = 4 x 128 + 89): the updates each block
    owes the earlier ones, through the factor R instead of U, still give the oracle's result to
    fp64 rounding."""
    w, gram = layer(rows=8, cols=604 if "nm" in pattern else 601, seed=5)
    expect = oracle_sparsegpt(w, gram, **pattern)
    got = symprune.sparsegpt(w, gram, **pattern)
    assert torch.equal(got == 0, expect == 0)
    torch.testing.assert_close(got, expect, rtol=1e-9, atol=1e-9)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
@pytest.mark.parametrize("pattern", [{"sparsity": 0.5}, {"nm": (2, 4)}], ids=str)
def test_sparsegpt_low_precision_close_to_oracle(pattern: dict, dtype: torch.dtype) -> None:
    """fp32 updates: the result is the oracle's on the rounded weight, up to fp32 rounding (and
    rounding to the weight's dtype); a near-tie may flip a few mask entries."""
    w, gram = layer(rows=32, cols=128, seed=4)
    w = w.to(dtype)
    got = symprune.sparsegpt(w, gram.float(), **pattern)
    expect = oracle_sparsegpt(w.double(), gram, **pattern)
    assert got.dtype == dtype
    assert ((got == 0) != (expect == 0)).float().mean() < 0.01
    same = (got != 0) & (expect != 0)
    rel = (got.double()[same] - expect[same]).abs().max() / expect.abs().max()
    assert rel < (1e-4 if dtype == torch.float32 else 2e-2)
    _assert_pruned_zeros_positive(got.float())


def test_sparsegpt_does_not_depend_on_the_gram_scale() -> None:
    """Without dead inputs (whose Gram diagonal becomes 1 whatever the scale, as in the
    reference) the result does not depend on the Gram's scale."""
    w, gram = layer(seed=1)
    gram[5, 5] = 1.0
    a = symprune.sparsegpt(w, gram, 0.5)
    b = symprune.sparsegpt(w, gram * 123.0, 0.5)
    torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-9)


@pytest.mark.parametrize("make_mask", ["wanda", "nm", "sparsegpt", "random"])
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32, torch.bfloat16])
def test_refit_equals_exact_least_squares(make_mask: str, dtype: torch.dtype) -> None:
    w, gram = layer(rows=20, cols=48, seed=2)
    norm = torch.diag(gram).sqrt().float()
    if make_mask == "wanda":
        keep = symprune.mask(symprune.score(w, "wanda", in_norm=norm), 0.5)
    elif make_mask == "nm":
        keep = symprune.mask(w.abs().float(), nm=(2, 4))
    elif make_mask == "sparsegpt":
        keep = symprune.sparsegpt(w, gram, 0.6) != 0
    else:  # rows with different numbers of kept weights, one row fully pruned
        keep = torch.rand(w.shape, generator=torch.Generator().manual_seed(0)) < 0.4
        keep[3] = False
    w = w.to(dtype)
    got = symprune.refit(w, keep, gram)
    expect = oracle_refit(w.double(), keep, gram)
    assert got.dtype == dtype
    assert not got[~keep].any()
    _assert_pruned_zeros_positive(got.float())
    tol = {torch.float64: 1e-8, torch.float32: 1e-5, torch.bfloat16: 1e-2}[dtype]
    torch.testing.assert_close(got.double(), expect, rtol=tol, atol=tol * float(expect.abs().max()))
    # Within 1 % of the exact optimum, and never worse than keeping the masked weights.
    optimum = objective(w.double(), expect, gram)
    assert objective(w.double(), got.double(), gram) <= optimum * 1.01 + 1e-12
    assert optimum <= objective(w.double(), w.double() * keep, gram)


# 12 x 32 forms rho (Hs + rho I)^-1; 8 x 64 (under a third as many rows as inputs) multiplies by
# the eigenvectors instead. Stopped after 2 iterations, the start's refit wins on some rows.
@pytest.mark.parametrize(("rows", "cols", "max_iterations"), [(12, 32, 300), (8, 64, 300), (12, 32, 2)])
@pytest.mark.parametrize("pattern", [{"sparsity": 0.5}, {"nm": (2, 4)}], ids=str)
def test_admm_equals_oracle_and_beats_the_refit_of_its_start(pattern: dict, rows: int, cols: int,
                                                             max_iterations: int) -> None:
    w, gram = layer(rows=rows, cols=cols, seed=6)
    keep = symprune.mask(symprune.score(w, "wanda", in_norm=torch.diag(gram).sqrt().float()),
                         pattern.get("sparsity"), nm=pattern.get("nm"))
    inputs = (w.clone(), gram.clone(), keep.clone())
    got = symprune.admm(w, gram, keep, pattern.get("sparsity"), nm=pattern.get("nm"), max_iterations=max_iterations)
    assert all(torch.equal(a, b) for a, b in zip(inputs, (w, gram, keep)))  # the support is tracked in a copy
    expect = oracle_admm(w, gram, keep, lambda m: symprune.mask(m.float(), pattern.get("sparsity"),
                                                                nm=pattern.get("nm")),
                         max_iterations=max_iterations)
    assert torch.equal(got == 0, expect == 0)
    torch.testing.assert_close(got, expect, rtol=1e-6, atol=1e-6)
    assert objective(w, got, gram) <= objective(w, symprune.refit(w, keep, gram), gram)
    if "nm" in pattern:
        assert ((got != 0).reshape(rows, -1, 4).sum(-1) <= 2).all()
    else:
        assert ((got == 0).sum(1) >= cols // 2).all()
    _assert_pruned_zeros_positive(got)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("pattern", [{"sparsity": 0.6}, {"nm": (4, 8)}], ids=str)
def test_admm_in_low_precision_keeps_the_dtype_and_matches_the_oracle(dtype: torch.dtype, pattern: dict) -> None:
    """fp32/bf16 weights run in fp32 and come back in their dtype, as good as the fp64 oracle."""
    w, gram = layer(rows=10, cols=40, seed=8)
    w = w.to(dtype)
    keep = symprune.mask(symprune.score(w, "wanda", in_norm=torch.diag(gram).sqrt().float()),
                         pattern.get("sparsity"), nm=pattern.get("nm"))
    got = symprune.admm(w, gram.float(), keep, pattern.get("sparsity"), nm=pattern.get("nm"))
    assert got.dtype == dtype
    _assert_pruned_zeros_positive(got.float())
    if "nm" in pattern:
        assert ((got != 0).reshape(10, -1, 8).sum(-1) <= 4).all()
    else:
        assert ((got == 0).sum(1) >= 24).all()
    expect = oracle_admm(w.double(), gram, keep, lambda m: symprune.mask(m.float(), pattern.get("sparsity"),
                                                                         nm=pattern.get("nm")))
    rounding = {torch.float32: 1e-4, torch.bfloat16: 2e-2}[dtype]  # of the result to its dtype
    assert objective(w, got, gram) <= objective(w, expect.to(dtype), gram) * (1 + rounding) + 1e-9


def test_admm_recipe_starts_from_wandas_mask() -> None:
    """prune(recipe admm) is admm() from Wanda's mask, with the Gram's diagonal as input norms."""
    w, gram = layer(rows=12, cols=32, seed=7)
    recipe = symprune.Recipe("admm", nm=(2, 4))
    got = symprune.prune(w, recipe, gram=gram)
    start = symprune.mask(symprune.score(w, "wanda", in_norm=torch.diag(gram).sqrt().float()), nm=(2, 4))
    torch.testing.assert_close(got.weight, symprune.admm(w, gram, start, nm=(2, 4)))
    assert torch.equal(got.keep, got.weight != 0)
    assert recipe.needs_gram and not recipe.needs_input_stats and recipe.describe() == "admm 2:4"


def test_refit_lowers_sparsegpt_reconstruction_error() -> None:
    """The exact refit on SparseGPT's own mask reconstructs the layer's output better."""
    w, gram = layer(rows=64, cols=128, seed=3)
    pruned = symprune.sparsegpt(w, gram, nm=(2, 4))
    refitted = symprune.refit(w, pruned != 0, gram)
    assert objective(w, refitted, gram) < objective(w, pruned, gram)


def half(w: torch.Tensor) -> torch.Tensor:
    """A 50 % per-row (and 2:4) mask of ``w``: in the pattern of admm(..., 0.5) and of 2:4."""
    return symprune.magnitude_mask(w, nm=(2, 4))


@pytest.mark.parametrize(
    ("call", "message"),
    [
        (lambda w, g: symprune.sparsegpt(w, g[:, :-1], 0.5), "square"),
        (lambda w, g: symprune.sparsegpt(w, g[:-1, :-1], 0.5), "input features"),
        (lambda w, g: symprune.refit(w, w != 0, g.index_fill(0, torch.tensor([2]), float("nan"))), "NaN"),
        (lambda w, g: symprune.sparsegpt(w, -g, 0.5), "negative diagonal"),
        (lambda w, g: symprune.sparsegpt(w, g, 0.5, percdamp=-1), "percdamp"),
        (lambda w, g: symprune.sparsegpt(w, g, nm=(2, 4), blocksize=6), "multiple of M"),
        (lambda w, g: symprune.sparsegpt(w, g), "exactly one"),
        (lambda w, g: symprune.refit(w, (w != 0)[:, :-1], g), "keep"),
        # A rank-one Gram without damping cannot be factorised: an error, never a silent no-op.
        (lambda w, g: symprune.sparsegpt(w, torch.ones_like(g), 0.5, percdamp=0.0), "positive definite"),
        (lambda w, g: symprune.refit(w, w != 0, torch.ones_like(g), percdamp=0.0), "positive definite"),
        (lambda w, g: symprune.admm(w, torch.ones_like(g), half(w), 0.5, percdamp=0.0), "positive definite"),
        (lambda w, g: symprune.admm(w, g, half(w), 0.5, percdamp=0.0), "positive definite"),  # a dead input
        (lambda w, g: symprune.admm(w, g, half(w), 0.5, growth=0.9), "growth must be >= 1"),
        # ADMM's start must be in its pattern: each row may keep the start's refit.
        (lambda w, g: symprune.admm(w, g, w != 0, 0.5), "keep 32 of the 64 weights of each row"),
        (lambda w, g: symprune.admm(w, g, half(w), nm=(1, 4)), "keep 1 of every 4 weights"),
    ],
)
def test_bad_input_is_a_value_error(call, message: str) -> None:
    w, gram = layer(seed=5)
    before = w.clone()
    with pytest.raises(ValueError, match=message):
        call(w, gram)
    assert torch.equal(w, before)


def test_gram_stats_equal_xtx() -> None:
    x = torch.randn(3, 10, 16)
    stats = symprune.GramStats(16)
    stats.update(x[0])
    stats.update(x[1:])
    flat = x.reshape(-1, 16).double()
    torch.testing.assert_close(stats.gram, flat.T @ flat, rtol=1e-6, atol=1e-6)
    assert stats.tokens == 30 and stats.gram.dtype == torch.float64
    with pytest.raises(ValueError, match="expected shape"):
        stats.update(torch.randn(2, 15))


def test_linears_reading_one_input_share_one_gram() -> None:
    model = build_tiny_model("llama")
    block = find_decoder_blocks(model)[0]
    windows = torch.randint(0, TINY_VOCAB, (2, 16), generator=torch.Generator().manual_seed(0))
    from symprune.blocks import capture_block_inputs

    captured = capture_block_inputs(model, list(windows), progress=False)
    stats, _ = collect_block_stats(block, captured.hidden, captured.calls[0], need_outputs=False, need_gram=True)
    attn = [stats[f"self_attn.{p}_proj"].gram for p in "qkv"]
    assert attn[0] is attn[1] is attn[2]
    assert stats["mlp.gate_proj"].gram is stats["mlp.up_proj"].gram
    assert stats["mlp.down_proj"].gram is not stats["mlp.up_proj"].gram
    assert stats["self_attn.o_proj"].gram is not attn[0]
    # The MLP's input has the attention input's shape and may be allocated where that input was.
    assert stats["mlp.gate_proj"].gram is not attn[0]
    for name, linear in block_linears(block).items():
        assert stats[name].gram.tokens == 32, name  # once per window, not once per Linear
        assert stats[name].gram.features == linear.in_features
    # Each Gram is X^T X of its own input: the input's statistics have its diagonal.
    for name in ("self_attn.q_proj", "self_attn.o_proj", "mlp.gate_proj", "mlp.down_proj"):
        torch.testing.assert_close(torch.diag(stats[name].gram.gram).float(), stats[name].inputs.in_sq,
                                   rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("recipe", [
    {"method": "sparsegpt", "nm": "2:4"},
    {"method": "sparsegpt", "sparsity": 0.5, "update": "refit"},
    {"method": "wanda", "sparsity": 0.5, "update": "refit"},
    {"method": "ria", "nm": (2, 4), "refine": "r2dsnot", "update": "refit"},
    {"method": "admm", "nm": "2:4"},
    {"method": "admm", "sparsity": 0.5, "score_options": {"rho0": 0.3, "max_iterations": 30}},
])
def test_pipeline_reconstruction_beats_the_plain_mask(recipe: dict) -> None:
    """Re-solving the kept weights lowers every block's output error against Wanda's mask alone."""
    windows = torch.randint(0, TINY_VOCAB, (4, 16), generator=torch.Generator().manual_seed(1))
    plain = symprune.prune_model(build_tiny_model("llama"), windows, method="wanda",
                                 **({"nm": recipe["nm"]} if "nm" in recipe else {"sparsity": 0.5}), progress=False)
    report = symprune.prune_model(build_tiny_model("llama"), windows, progress=False, **recipe)
    assert report.update == recipe.get("update")
    assert report.overall_sparsity >= 0.5
    assert report.blocks[0].output_error < plain.blocks[0].output_error


@pytest.mark.parametrize(("kwargs", "message"), [
    ({"method": "sparsegpt", "sparsity": 0.5, "refine": "dsnot"}, "refine applies to score masks"),
    ({"method": "sparsegpt", "nm": (2, 4), "permute": True}, "permute"),
    ({"method": "sparsegpt", "sparsity": 0.5, "group": "layer"}, "group does not apply"),
    ({"method": "sparsegpt", "sparsity": 0.5, "score_options": {"a": 1}}, "its options: blocksize, percdamp"),
    ({"method": "wanda", "sparsity": 0.5, "update": "solve"}, "unknown update"),
    ({"method": "admm", "nm": (2, 4), "update": "refit"}, "already finishes with the refit"),
    ({"method": "admm", "sparsity": 0.5, "score_options": {"growth": 0.5}}, "growth >= 1"),
    ({"method": "admm", "sparsity": 0.5, "refine": "dsnot"}, "refine applies to score masks"),
    ({"method": "wanda", "sparsity": 0.5, "update_options": {"percdamp": 0.1}}, "without update"),
])
def test_reconstruction_recipes_are_checked(kwargs: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        symprune.Recipe(**kwargs)


def test_streaming_and_calibrate_refuse_gram_recipes(sharded_model_dir, tiny_model_dir, tmp_path) -> None:
    with pytest.raises(ValueError, match="needs the Gram"):
        symprune.prune_checkpoint(sharded_model_dir, tmp_path / "out", method="sparsegpt", nm="2:4", progress=False)
    with pytest.raises(ValueError, match="needs the Gram"):
        symprune.calibrate(tiny_model_dir, torch.zeros(1, 8, dtype=torch.long),
                           prune=symprune.Recipe("wanda", 0.5, update="refit"), progress=False)
    assert not (tmp_path / "out").exists()

