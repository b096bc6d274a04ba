"""Model pipeline, calibration data and perplexity on tiny random models (fast)."""

from __future__ import annotations

import copy
import json
import math
import random
from pathlib import Path
from typing import Any

import pytest
import torch
from conftest import TINY_ARCHS, TINY_VOCAB, build_tiny_model
from oracles import oracle_stats

import symprune
from symprune import pipeline
from symprune.blocks import block_linears, hidden_of
from symprune.data import (
    as_token_stream,
    calibration_windows,
    evaluation_windows,
    protocol_text,
    read_text,
    with_bos,
)
from symprune.evaluate import perplexity
from symprune.pipeline import capture_block_inputs, find_decoder_blocks, prune_model
from symprune.report import PruneReport

pytestmark = pytest.mark.usefixtures("single_thread")
SEQLEN = 16


def _windows(n: int = 3, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, TINY_VOCAB, (n, SEQLEN), generator=g)


def _linear_weights(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """Block Linear weights by full parameter name: the only tensors pruning may change."""
    blocks = find_decoder_blocks(model)
    prefix = next(name for name, m in model.named_modules() if m is blocks)
    return {
        f"{prefix}.{i}.{name}.weight": layer.weight
        for i, block in enumerate(blocks)
        for name, layer in block_linears(block).items()
    }


# --------------------------------------------------------------------------- data


@pytest.mark.parametrize(("name", "sha256"), [
    ("lee_background.cor", "5d78d6dafd953bbf65797bef09a9ffb9ec430583381be705f8fd460000f370fb"),
    ("enwiki_excerpt.txt", "19c9a27c325c1631b6b92b52cc03c4af822df956db2578f776d554a6b751bcd5"),
])
def test_protocol_texts_ship_with_the_package(name: str, sha256: str, monkeypatch: pytest.MonkeyPatch) -> None:
    import hashlib

    monkeypatch.delenv("SYMPRUNE_DATA", raising=False)
    path = protocol_text(name)
    assert path.is_relative_to(Path(symprune.__file__).parent) and path.name == name + ".gz"
    assert hashlib.sha256(read_text(path).encode("utf-8")).hexdigest() == sha256


def test_data_free_prune_model_runs_no_forward() -> None:
    model = build_tiny_model("llama")
    model.forward = None  # any forward would fail
    report = prune_model(model, None, method="magnitude", nm=(2, 4), progress=False)
    assert report.overall_sparsity == 0.5 and report.nsamples == 0
    assert "14 Linear layers in 2 blocks" in report.summary()  # no forwards, so no block errors
    with pytest.raises(ValueError, match="needs calibration windows"):
        prune_model(build_tiny_model("llama"), None, method="wanda", sparsity=0.5, progress=False)


def test_calibration_windows_match_global_random() -> None:
    tokens = torch.arange(1000)
    windows = calibration_windows(tokens, nsamples=8, seqlen=50, seed=3)
    state = random.getstate()
    try:
        random.seed(3)
        starts = [random.randint(0, 1000 - 50 - 1) for _ in range(8)]
    finally:
        random.setstate(state)
    assert windows.shape == (8, 50) and windows.dtype == torch.long
    assert windows[:, 0].tolist() == starts
    assert torch.equal(windows, torch.stack([tokens[s : s + 50] for s in starts]))


def test_calibration_windows_leave_global_random_alone() -> None:
    random.seed(123)
    expected = random.random()
    random.seed(123)
    calibration_windows(list(range(100)), nsamples=4, seqlen=10, seed=0)
    assert random.random() == expected


def test_evaluation_windows_are_first_non_overlapping() -> None:
    tokens = torch.arange(100).unsqueeze(0)  # (1, n) as tokenizers return
    windows = evaluation_windows(tokens, nwindows=3, seqlen=20)
    assert torch.equal(windows, torch.arange(60).reshape(3, 20))


@pytest.mark.parametrize(
    ("call", "message"),
    [
        (lambda: calibration_windows(torch.arange(10), 2, 10), "too short"),
        (lambda: evaluation_windows(torch.arange(10), 2, 6), "too short"),
        (lambda: calibration_windows(torch.arange(100), 0, 10), "nsamples"),
        (lambda: evaluation_windows(torch.arange(100), 2, 0), "seqlen"),
        (lambda: as_token_stream(torch.zeros(2, 3, dtype=torch.long)), "1-D"),
        (lambda: as_token_stream(torch.zeros(5)), "integers"),
    ],
)
def test_data_errors(call: Any, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        call()


def test_with_bos() -> None:
    out = with_bos(torch.ones(2, 3, dtype=torch.long), 7)
    assert out.tolist() == [[7, 1, 1, 1]] * 2


# --------------------------------------------------------------------------- evaluate


def test_perplexity_matches_transformers_loss() -> None:
    model = build_tiny_model("llama")
    windows = _windows(3)
    with torch.no_grad():
        losses = [model(input_ids=w[None], labels=w[None]).loss.item() for w in windows]
    expected = math.exp(sum(losses) / len(losses))
    assert perplexity(model, windows, progress=False) == pytest.approx(expected, rel=1e-5)


def test_perplexity_rejects_bad_windows() -> None:
    model = build_tiny_model("llama")
    with pytest.raises(ValueError, match="no evaluation windows"):
        perplexity(model, torch.zeros(0, 4, dtype=torch.long), progress=False)
    with pytest.raises(ValueError, match="at least 2 tokens"):
        perplexity(model, torch.zeros(1, 1, dtype=torch.long), progress=False)


# --------------------------------------------------------------------------- capture


@pytest.mark.parametrize("arch", TINY_ARCHS)
def test_captured_calls_reproduce_dense_model(arch: str) -> None:
    """Replaying the captured calls block by block gives the dense model's hidden states."""
    model = build_tiny_model(arch)
    windows = _windows(3)
    captured = capture_block_inputs(model, list(windows), progress=False)
    blocks = find_decoder_blocks(model)

    final: list[torch.Tensor] = []
    handle = blocks[-1].register_forward_hook(
        lambda mod, args, out: final.append(hidden_of(out))
    )
    with torch.no_grad():
        for row in windows:
            model(input_ids=row[None], use_cache=False)
        handle.remove()
        for i in range(len(windows)):
            h = captured.hidden[i]
            for k, block in enumerate(blocks):
                h = captured.calls[k][i].run(block, h)
            torch.testing.assert_close(h, final[i], rtol=0, atol=1e-6)

    kwargs = captured.calls[0][0].kwargs
    if arch == "opt":
        assert "position_embeddings" not in kwargs
    else:
        assert isinstance(kwargs["position_embeddings"], tuple)
    # Equal calls are shared across windows (one copy of masks and rotary tables).
    assert captured.calls[0][0] is captured.calls[0][2]
    if arch == "gemma3":  # sliding and global layers get different masks/rotary tables
        assert captured.calls[0][0] is not captured.calls[1][0]


def test_capture_restores_block_forward() -> None:
    model = build_tiny_model("llama")
    capture_block_inputs(model, list(_windows(1)), progress=False)
    assert all("forward" not in block.__dict__ for block in find_decoder_blocks(model))


# --------------------------------------------------------------------------- pruning


def _check_untouched(before: dict[str, torch.Tensor], model: torch.nn.Module) -> None:
    """Everything but block Linear weights equal; Linear weights only lost entries."""
    pruned = _linear_weights(model)
    for name, tensor in model.state_dict().items():
        if name in pruned:
            w = pruned[name]
            assert torch.equal(w, torch.where(w == 0, w, before[name])), name
        else:
            assert torch.equal(tensor, before[name]), f"{name} changed"


PATTERNS = {
    "row50": dict(method="wanda", sparsity=0.5),
    "nm24": dict(method="wanda", nm=(2, 4)),
    "dsnot": dict(method="wanda", sparsity=0.5, refine="dsnot"),
}


@pytest.mark.parametrize("arch", TINY_ARCHS)
@pytest.mark.parametrize("pattern", list(PATTERNS))
def test_prune_model_patterns(arch: str, pattern: str) -> None:
    model = build_tiny_model(arch)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    report = prune_model(model, _windows(3), progress=False, **PATTERNS[pattern])

    _check_untouched(before, model)
    weights = _linear_weights(model)
    assert [layer.name + ".weight" for layer in report.layers] == list(weights)
    for layer in report.layers:
        w = weights[layer.name + ".weight"]
        out_f, in_f = w.shape
        if pattern == "nm24":
            kept = (w != 0).reshape(out_f, in_f // 4, 4).sum(-1)
            assert torch.all(kept == 2), layer.name
        else:  # per row exactly floor(in/2) zeros; DSnoT swaps keep the count
            assert torch.all((w == 0).sum(1) == in_f // 2), layer.name
        assert layer.sparsity == 0.5 and layer.zeros == w.numel() // 2
        assert 0 < layer.recon_error < 1
    assert report.overall_sparsity == 0.5
    assert len(report.blocks) == 2 and all(b.output_error > 0 for b in report.blocks)
    if pattern == "dsnot":
        assert any(layer.changed > 0 for layer in report.layers)
    assert math.isfinite(perplexity(model, _windows(2, seed=1), progress=False))


def test_permuted_nm_prunes_n_of_m_in_permuted_order() -> None:
    model = build_tiny_model("llama")
    report = prune_model(model, _windows(2), method="wanda", nm=(2, 4), permute=True, progress=False)
    assert report.overall_sparsity == 0.5
    for w in _linear_weights(model).values():
        assert torch.all((w == 0).sum(1) == w.shape[1] // 2)


@pytest.mark.parametrize("arch", ["llama", "qwen3", "opt"])
def test_permute_is_deployable(arch: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """With permute, every stored weight is N:M; the MLP's down projection is permuted with its
    producers' rows, and undoing that permutation gives the same outputs (the same function)."""
    from symprune import permute as permute_module

    applied: list[tuple[torch.nn.Linear, list[torch.nn.Linear], torch.Tensor]] = []
    real = permute_module.permute_channels

    def record(consumer: torch.nn.Linear, producers: list[torch.nn.Linear], perm: torch.Tensor) -> None:
        applied.append((consumer, producers, perm.clone()))
        real(consumer, producers, perm)

    monkeypatch.setattr(pipeline, "permute_channels", record)
    model = build_tiny_model(arch)
    report = prune_model(model, _windows(2), method="ria", nm=(2, 4), permute=True, progress=False)
    mlp_out = "fc2" if arch == "opt" else "mlp.down_proj"
    assert [layer.name for layer in report.layers if layer.permuted] == \
        [layer.name for layer in report.layers if layer.name.endswith(mlp_out)]
    assert len(applied) == 2  # one per block
    for name, w in _linear_weights(model).items():
        groups = (w != 0).reshape(w.shape[0], -1, 4).sum(-1)
        assert torch.all(groups == 2), name  # N:M as stored
    assert any(not torch.equal(perm, torch.arange(perm.numel())) for _, _, perm in applied)

    # Undo the permutations on a copy: the masks are then N:M only in permuted order, and the
    # outputs do not change.
    undone = copy.deepcopy(model)
    originals = {id(m): c for m, c in zip(model.modules(), undone.modules())}
    for consumer, producers, perm in applied:
        inverse = torch.argsort(perm)
        real(originals[id(consumer)], [originals[id(p)] for p in producers], inverse)
        stored = originals[id(consumer)].weight
        assert not torch.all((stored != 0).reshape(stored.shape[0], -1, 4).sum(-1) == 2)
    windows = _windows(2, seed=5)
    with torch.no_grad():
        a = model(input_ids=windows).logits
        b = undone(input_ids=windows).logits
    torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)


def test_refine_skip_leaves_matching_layers_unrefined() -> None:
    windows = _windows(2)
    report = prune_model(build_tiny_model("llama"), windows, method="wanda", sparsity=0.5,
                         refine="dsnot", refine_options={"skip": "mlp", "threshold": 0.0},
                         progress=False)
    changed = {layer.name: layer.changed for layer in report.layers}
    assert all(n == 0 for name, n in changed.items() if ".mlp." in name)
    assert any(n > 0 for name, n in changed.items() if ".self_attn." in name)


def test_dsnot_refines_attention_only_by_default() -> None:
    """As DSnoT's public code: dsnot leaves the MLP alone unless skip=none; r2dsnot refines all."""
    def changed(**recipe: Any) -> dict[str, int]:
        report = prune_model(build_tiny_model("llama"), _windows(2), method="wanda", sparsity=0.5,
                             progress=False, **recipe)
        return {layer.name: layer.changed for layer in report.layers}

    default = changed(refine="dsnot", refine_options={"threshold": 0.0})
    assert all(n == 0 for name, n in default.items() if ".mlp." in name)
    assert any(n > 0 for name, n in default.items() if ".self_attn." in name)
    every = changed(refine="dsnot", refine_options={"threshold": 0.0, "skip": None})
    assert any(n > 0 for name, n in every.items() if ".mlp." in name)
    # Block 0 sees the same inputs in both runs: its attention is refined identically.
    first = [name for name in default if name.startswith("model.layers.0.self_attn.")]
    assert first and all(every[name] == default[name] for name in first)
    assert symprune.Recipe("wanda", 0.5, refine="dsnot") == \
        symprune.Recipe("wanda", 0.5, refine="dsnot", refine_options={"skip": "mlp"})
    assert symprune.Recipe("wanda", 0.5, refine="r2dsnot").refines("model.layers.0.mlp.up_proj.weight")


@pytest.mark.parametrize("method", ["magnitude", "symwanda", "owanda", "ria"])
def test_prune_model_layer_group_and_other_scores(method: str) -> None:
    model = build_tiny_model("qwen3")
    report = prune_model(model, _windows(2), method=method, sparsity=0.3, group="layer",
                         progress=False)
    for layer in report.layers:
        assert layer.zeros == math.floor(layer.numel * 0.3)


def test_first_block_stats_equal_dense_hooks(monkeypatch: pytest.MonkeyPatch) -> None:
    """The pipeline's block-0 statistics equal those of hooks on the dense model, and
    block 1 sees exactly the outputs of the *pruned* block 0 (sequential pruning)."""
    model = build_tiny_model("llama")
    dense = copy.deepcopy(model)
    windows = _windows(3)
    seen: list[tuple[Any, list[torch.Tensor]]] = []
    original = pipeline.collect_block_stats

    def spy(block: Any, hidden: Any, calls: Any, **kwargs: Any) -> Any:
        stats, outputs = original(block, hidden, calls, **kwargs)
        seen.append((stats, [h.clone() for h in hidden]))
        return stats, outputs

    monkeypatch.setattr(pipeline, "collect_block_stats", spy)
    prune_model(model, windows, method="symwanda", sparsity=0.5, progress=False)

    # Oracle statistics from plain hooks on block 0 of the dense model, one window per update.
    inputs: dict[str, list[torch.Tensor]] = {}
    outputs: dict[str, list[torch.Tensor]] = {}
    block0 = find_decoder_blocks(dense)[0]
    handles = []
    for name, layer in block_linears(block0).items():
        def hook(mod: Any, args: Any, out: Any, name: str = name) -> None:
            inputs.setdefault(name, []).append(args[0][0].clone())
            outputs.setdefault(name, []).append(out[0].clone())
        handles.append(layer.register_forward_hook(hook))
    with torch.no_grad():
        for row in windows:
            dense(input_ids=row[None], use_cache=False)
    for h in handles:
        h.remove()

    stats0 = seen[0][0]
    assert set(stats0) == set(inputs)
    for name, entry in stats0.items():
        expected_in = oracle_stats(inputs[name])
        expected_out = oracle_stats(outputs[name])
        assert entry.inputs.sequences == 3 and entry.inputs.tokens == 3 * SEQLEN
        for key in ("in_sq", "in_norm", "in_mean", "in_var"):
            torch.testing.assert_close(getattr(entry.inputs, key), expected_in[key],
                                       rtol=1e-5, atol=1e-6, msg=f"{name} {key}")
        torch.testing.assert_close(entry.outputs.out_sq, expected_out["in_sq"], rtol=1e-5, atol=1e-6)

    # Block 1's calibration inputs are what the final (pruned) model feeds block 1.
    block1_inputs: list[torch.Tensor] = []
    handle = find_decoder_blocks(model)[1].register_forward_pre_hook(
        lambda mod, args: block1_inputs.append(args[0].clone())
    )
    with torch.no_grad():
        for row in windows:
            model(input_ids=row[None], use_cache=False)
    handle.remove()
    for got, expected in zip(seen[1][1], block1_inputs):
        torch.testing.assert_close(got, expected, rtol=0, atol=1e-6)


def test_zero_sparsity_keeps_model() -> None:
    model = build_tiny_model("mistral")
    before = {k: v.clone() for k, v in model.state_dict().items()}
    report = prune_model(model, _windows(2), method="magnitude", sparsity=0.0, progress=False)
    for name, tensor in model.state_dict().items():
        assert torch.equal(tensor, before[name])
    assert report.overall_sparsity == 0.0
    assert all(b.output_error == 0 for b in report.blocks)


def test_dense_zeros_are_counted() -> None:
    model = build_tiny_model("llama")
    q = find_decoder_blocks(model)[0].self_attn.q_proj.weight
    with torch.no_grad():
        q[:, :40] = 0  # more than half of every row already zero
    report = prune_model(model, _windows(2), method="magnitude", sparsity=0.5, progress=False)
    entry = report.layers[0]
    assert entry.name.endswith("self_attn.q_proj")
    assert entry.dense_zeros == 40 * 64 and entry.zeros == 40 * 64
    assert entry.sparsity == pytest.approx(40 / 64)


def test_r2dsnot_uses_defaults() -> None:
    model = build_tiny_model("llama")
    report = prune_model(model, _windows(2), method="ria", sparsity=0.5, refine="r2dsnot",
                         refine_options={"max_cycles": 10}, progress=False)
    assert report.refine_options == {**symprune.r2dsnot_defaults(), "max_cycles": 10}
    assert report.refine == "r2dsnot"


def test_recipe_object_equals_its_fields() -> None:
    """prune_model(recipe) and prune_model(**fields) prune identically; both at once is refused."""
    windows = _windows(2)
    by_fields, by_recipe = build_tiny_model("llama"), build_tiny_model("llama")
    prune_model(by_fields, windows, method="wanda", nm="2:4", refine="r2dsnot", progress=False)
    recipe = symprune.Recipe("wanda", nm=(2, 4), refine="r2dsnot")
    prune_model(by_recipe, windows, recipe, progress=False)
    assert all(torch.equal(a, b) for a, b in zip(by_fields.state_dict().values(),
                                                 by_recipe.state_dict().values()))
    with pytest.raises(ValueError, match="not both"):
        prune_model(build_tiny_model("llama"), windows, recipe, method="wanda", progress=False)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        (dict(method="nope", sparsity=0.5), "unknown score method"),
        (dict(sparsity=0.5), "give a recipe or a method"),
        (dict(method="wanda"), "exactly one"),
        (dict(method="wanda", sparsity=0.5, nm=(2, 4)), "exactly one"),
        (dict(method="wanda", sparsity=1.0), r"\[0, 1\)"),
        (dict(method="wanda", nm=(1, 3)), "divisible by 3"),
        (dict(method="wanda", nm=(4, 4)), "1 <= n < m"),
        (dict(method="wanda", nm="2-4"), "look like"),
        (dict(method="wanda", sparsity=0.5, group="col"), "group"),
        (dict(method="wanda", sparsity=0.5, permute=True), "permute"),
        (dict(method="wanda", sparsity=0.5, refine="sparsegpt"), "unknown refine"),
        (dict(method="wanda", sparsity=0.5, refine_options={"q": 1}), "without refine"),
        (dict(method="wanda", sparsity=0.5, refine="dsnot", refine_options={"cycles": 1}),
         "unknown refine option 'cycles'"),
        (dict(method="wanda", sparsity=0.5, refine="dsnot", refine_options={"max_cycles": 1.5}),
         "must be an integer"),
        (dict(method="wanda", sparsity=0.5, score_options={"alpha": 1}), "unknown score option 'alpha'"),
        (dict(method="wanda", sparsity=0.5, score_options={"a": 0.3}), "its options: none"),
        (dict(method="wanda", nm=(2, 4), permute=True, refine="dsnot"), "permute"),
    ],
)
def test_prune_model_errors(kwargs: dict[str, Any], message: str) -> None:
    model = build_tiny_model("llama")
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(ValueError, match=message):
        prune_model(model, _windows(1), progress=False, **kwargs)
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())


def test_prune_model_rejects_bad_calibration() -> None:
    model = build_tiny_model("llama")
    with pytest.raises(ValueError, match="no calibration windows"):
        prune_model(model, [], method="wanda", sparsity=0.5, progress=False)
    with pytest.raises(ValueError, match="shape"):
        prune_model(model, torch.zeros(1, 2, 3, dtype=torch.long), method="wanda",
                    sparsity=0.5, progress=False)


def test_find_decoder_blocks_unknown_model() -> None:
    with pytest.raises(ValueError, match="cannot find the decoder blocks"):
        find_decoder_blocks(torch.nn.Linear(2, 2))


def test_parse_nm() -> None:
    assert symprune.parse_nm("2:4") == (2, 4) and symprune.parse_nm("16:32") == (16, 32)
    with pytest.raises(ValueError, match="look like"):
        symprune.parse_nm("2-4")


def test_report_json_round_trip(tmp_path: Any) -> None:
    model = build_tiny_model("opt")
    report = prune_model(model, _windows(2), method="wanda", nm=(2, 4), progress=False)
    report.perplexity["pruned"] = 12.5
    path = tmp_path / "symprune_report.json"
    report.to_json(path)
    assert PruneReport.from_json(path) == report
    assert "2:4" in report.summary()
    assert report.recipe == json.loads(symprune.Recipe("wanda", nm=(2, 4)).to_json())
    assert report.versions["torch"] == torch.__version__ and report.versions["symprune"] == symprune.__version__
    assert [p.name for p in tmp_path.iterdir()] == ["symprune_report.json"]  # no temporary file left


def test_report_counts_admm_iterations() -> None:
    """Each layer's ADMM iterations reach the report; the summary names layers stopped by
    max_iterations before their support settled."""
    model = build_tiny_model("llama")
    report = prune_model(model, _windows(2), method="admm", nm=(2, 4), progress=False)
    assert all(layer.iterations >= 10 for layer in report.layers)  # patience 10: at least that many
    assert "ADMM iterations per Linear" in report.summary() and "stopped at" not in report.summary()
    capped = prune_model(build_tiny_model("llama"), _windows(2), method="admm", nm=(2, 4),
                         score_options={"max_iterations": 3}, progress=False)
    assert {layer.iterations for layer in capped.layers} == {3}
    assert f"{len(capped.layers)} stopped at max_iterations=3" in capped.summary()
    assert all(layer.iterations == 0 for layer in prune_model(build_tiny_model("llama"), _windows(2), method="wanda",
                                                              nm=(2, 4), progress=False).layers)


def test_core_is_used() -> None:
    """The pipeline's scores are the core's: one Linear pruned by hand matches."""
    model = build_tiny_model("llama")
    reference = copy.deepcopy(model)
    windows = _windows(2)
    prune_model(model, windows, method="magnitude", sparsity=0.5, progress=False)
    w = find_decoder_blocks(reference)[0].mlp.down_proj.weight.detach().clone()
    keep = symprune.mask(symprune.score(w, "magnitude"), 0.5)
    expected = w.masked_fill(~keep, 0)
    assert torch.equal(find_decoder_blocks(model)[0].mlp.down_proj.weight, expected)
