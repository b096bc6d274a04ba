"""OWL layer sparsity: the core's outlier counts and block sparsities against plain fp64
oracles, the recipe's checks, and the pipeline's dense pass on tiny random models."""

from __future__ import annotations

import copy
import math

import pytest
import torch
from conftest import TINY_VOCAB, build_tiny_model

import symprune
from symprune.blocks import block_linears
from symprune.pipeline import find_decoder_blocks, prune_model

pytestmark = pytest.mark.usefixtures("single_thread")


# --------------------------------------------------------------------------- oracles


def oracle_outliers(weights: list[torch.Tensor], in_norms: list[torch.Tensor], m: float) -> tuple[int, int]:
    """Entries of |W| * in_norm (fp64, all weights together) above m times their mean."""
    metric = torch.cat([(w.double().abs() * n.double()).flatten() for w, n in zip(weights, in_norms)])
    return int((metric > m * metric.mean()).sum()), metric.numel()


def oracle_sparsities(ratios: list[float], s: float, lam: float) -> list[float]:
    lo, hi = min(ratios), max(ratios)
    scaled = [0.0 if hi == lo else (d - lo) / (hi - lo) * 2 * lam for d in ratios]
    mean = sum(scaled) / len(scaled)
    return [s - (d - mean) for d in scaled]


def _layer(rows: int, cols: int, dtype: torch.dtype, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(rows, cols, generator=g)
    w[:, 1] *= 40  # an outlier input channel
    w[0, :] = 0  # a zero row
    norm = torch.rand(cols, generator=g) * 3
    norm[2] = 0  # a dead input
    return w.to(dtype), norm


# --------------------------------------------------------------------------- core


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
@pytest.mark.parametrize("m", [1.0, 3.0, 5.0])
def test_count_outliers_matches_oracle(dtype: torch.dtype, m: float) -> None:
    layers = [_layer(7, 13, dtype, 0), _layer(19, 13, dtype, 1), _layer(5, 31, dtype, 2)]
    weights, norms = [w for w, _ in layers], [n for _, n in layers]
    assert symprune.count_outliers(weights, norms, m) == oracle_outliers(weights, norms, m)


def test_count_outliers_on_wide_layers_in_slabs() -> None:
    """Weights wider than one fp64 slab are counted a block of rows at a time."""
    w, norm = _layer(300, 40000, torch.float32, 3)
    assert symprune.count_outliers([w], [norm], 4.0) == oracle_outliers([w], [norm], 4.0)


def test_count_outliers_ties_at_the_threshold_are_not_outliers() -> None:
    w = torch.tensor([[1.0, 1.0, 1.0, 1.0]])  # every entry equals the mean
    assert symprune.count_outliers([w], [torch.ones(4)], 1.0) == (0, 4)
    assert symprune.count_outliers([torch.zeros(2, 3)], [torch.ones(3)], 5.0) == (0, 6)


@pytest.mark.parametrize(
    ("weights", "norms", "message"),
    [
        ([torch.ones(2, 3)], [torch.ones(4)], "in_norm"),
        ([torch.ones(2, 3)], [torch.tensor([1.0, -1.0, 1.0])], ">= 0"),
        ([torch.ones(2, 3)], [torch.tensor([1.0, math.nan, 1.0])], "in_norm"),
        ([torch.full((2, 3), math.inf)], [torch.ones(3)], "weight"),
        ([torch.ones(2, 3)], [], "1 weights but 0 input norms"),
        ([], [], "at least one weight"),
    ],
)
def test_count_outliers_errors(weights: list[torch.Tensor], norms: list[torch.Tensor], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        symprune.count_outliers(weights, norms, 5.0)


@pytest.mark.parametrize(
    ("ratios", "s", "lam"),
    [([0.01, 0.03, 0.02, 0.05], 0.5, 0.08), ([0.2], 0.6, 0.1), ([0.1, 0.1, 0.1], 0.7, 0.08),
     ([0.0, 1.0], 0.5, 0.0), ([0.004, 0.011, 0.007, 0.009, 0.002], 0.6, 0.15)],
)
def test_owl_sparsities_match_oracle(ratios: list[float], s: float, lam: float) -> None:
    got = symprune.owl_sparsities(ratios, s, lambda_=lam)
    assert got == pytest.approx(oracle_sparsities(ratios, s, lam), abs=1e-15)
    assert sum(got) / len(got) == pytest.approx(s, abs=1e-15)
    # More outliers, more weights kept.
    order = sorted(range(len(ratios)), key=lambda b: ratios[b])
    assert all(got[a] >= got[b] for a, b in zip(order, order[1:]))


@pytest.mark.parametrize(
    ("ratios", "s", "lam", "message"),
    [([0.0, 1.0], 0.95, 0.1, "outside \\[0, 1\\)"), ([0.0, 1.0], 0.05, 0.1, "outside"),
     ([], 0.5, 0.1, "at least one block"), ([0.1, 1.5], 0.5, 0.1, "in \\[0, 1\\]"),
     ([0.1], 1.0, 0.1, "sparsity"), ([0.1], 0.5, -0.1, "lambda")],
)
def test_owl_sparsities_errors(ratios: list[float], s: float, lam: float, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        symprune.owl_sparsities(ratios, s, lambda_=lam)


# --------------------------------------------------------------------------- recipe


def test_owl_recipe() -> None:
    r = symprune.Recipe("wanda", 0.5, owl=True, owl_options={"m": 7, "lambda": 0.1})
    assert r.owl and r.owl_options == {"m": 7.0, "lambda": 0.1} and not r.data_free
    assert r != symprune.Recipe("wanda", 0.5) and "owl" in r.describe()
    block = r.at_sparsity(0.42)
    assert block == symprune.Recipe("wanda", 0.42) and not block.owl
    assert not symprune.Recipe("magnitude", 0.5, owl=True).data_free  # the dense pass reads activations
    with pytest.raises(ValueError, match="sets one sparsity per block"):
        symprune.prune(torch.ones(2, 4), r, in_norm=torch.ones(4))
    with pytest.raises(ValueError, match="unknown owl option 'M'"):
        symprune.Recipe("wanda", 0.5, owl=True, owl_options={"M": 5})
    with pytest.raises(ValueError, match="not N:M"):
        symprune.Recipe("wanda", nm=(2, 4), owl=True)
    with pytest.raises(ValueError, match="outlier multiple"):
        symprune.Recipe("wanda", 0.5, owl=True, owl_options={"m": 0})
    with pytest.raises(ValueError, match="unstructured"):
        symprune.Recipe("wanda", nm=(2, 4)).at_sparsity(0.5)


# --------------------------------------------------------------------------- pipeline


def _dense_in_norms(model: torch.nn.Module, windows: torch.Tensor) -> dict[tuple[int, str], torch.Tensor]:
    """in_norm of every block Linear of the dense model (hooks on a full forward per window)."""
    sums: dict[tuple[int, str], torch.Tensor] = {}
    handles = []
    for b, block in enumerate(find_decoder_blocks(model)):
        for name, layer in block_linears(block).items():
            def hook(_m: torch.nn.Module, args: tuple[torch.Tensor, ...], _out: torch.Tensor,
                     key: tuple[int, str] = (b, name)) -> None:
                x = args[0].double().reshape(-1, args[0].shape[-1])
                sums[key] = sums.get(key, 0) + x.square().sum(0)
            handles.append(layer.register_forward_hook(hook))
    with torch.no_grad():
        for row in windows:
            model(input_ids=row.reshape(1, -1), use_cache=False)
    for h in handles:
        h.remove()
    return {key: (total / len(windows)).sqrt() for key, total in sums.items()}


@pytest.mark.parametrize("arch", ["llama", "opt"])
def test_prune_model_owl_follows_the_dense_outliers(arch: str) -> None:
    model = build_tiny_model(arch)
    dense = copy.deepcopy(model)
    windows = torch.randint(0, TINY_VOCAB, (3, 16), generator=torch.Generator().manual_seed(0))
    report = prune_model(model, windows, method="wanda", sparsity=0.5, owl=True,
                         owl_options={"m": 3.0, "lambda": 0.05}, progress=False)

    norms = _dense_in_norms(dense, windows)
    ratios = []
    for b, block in enumerate(find_decoder_blocks(dense)):
        linears = block_linears(block)
        outliers, entries = oracle_outliers([m.weight for m in linears.values()],
                                            [norms[(b, n)] for n in linears], 3.0)
        ratios.append(outliers / entries)
    assert report.owl is not None and report.owl["m"] == 3.0
    # Statistics agree to rounding, which may move an entry lying on the threshold.
    assert report.owl["outlier_ratios"] == pytest.approx(ratios, abs=2 / entries)
    assert ratios[0] != ratios[1]
    expected = symprune.owl_sparsities(report.owl["outlier_ratios"], 0.5, lambda_=0.05)
    assert report.owl["sparsities"] == expected
    assert sorted(expected) == pytest.approx([0.45, 0.55])
    for layer in report.layers:
        rows, cols = layer.shape
        assert layer.zeros == rows * math.floor(cols * expected[layer.block]), layer.name
    assert report.overall_sparsity == pytest.approx(0.5, abs=0.01)


def test_owl_with_zero_lambda_equals_uniform_sparsity() -> None:
    windows = torch.randint(0, TINY_VOCAB, (2, 16), generator=torch.Generator().manual_seed(1))
    owl, plain = build_tiny_model("qwen2"), build_tiny_model("qwen2")
    prune_model(owl, windows, method="wanda", sparsity=0.5, owl=True, owl_options={"lambda": 0.0},
                progress=False)
    prune_model(plain, windows, method="wanda", sparsity=0.5, progress=False)
    for (name, a), b in zip(owl.state_dict().items(), plain.state_dict().values()):
        assert torch.equal(a, b), name


def test_calibrate_refuses_owl(tiny_model_dir) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(ValueError, match="OWL"):
        symprune.calibrate(tiny_model_dir, torch.zeros(1, 8, dtype=torch.long),
                           prune=symprune.Recipe("wanda", 0.5, owl=True))

