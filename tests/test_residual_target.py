"""The residual target (Recipe target="residual"): the core's target weights against an fp64
least-squares oracle of the objective, the cross-product statistics, the staged pipeline against a
plain PyTorch oracle of it on a tiny Llama, and the errors."""

from __future__ import annotations

import copy

import pytest
import symprune
import torch
from conftest import TINY_VOCAB, build_tiny_model
from symprune.blocks import block_linears, capture_block_inputs, find_decoder_blocks
from symprune.staged import ResidualSites, linear_stages, residual_sites

pytestmark = pytest.mark.usefixtures("single_thread")

PERCDAMP = 0.01


def activations(tokens: int, cols: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """LLM-like pruned-model inputs X~ (outlier channels, one dead input) and dense inputs X near them."""
    g = torch.Generator().manual_seed(seed)
    scale = torch.rand(cols, generator=g, dtype=torch.float64) + 0.1
    scale[torch.randperm(cols, generator=g)[:3]] *= 30
    pruned = torch.randn(tokens, cols, generator=g, dtype=torch.float64) * scale
    pruned[:, 5] = 0
    dense = pruned + 0.3 * torch.randn(tokens, cols, generator=g, dtype=torch.float64) * scale
    return pruned, dense


def oracle_objective_solve(weight: torch.Tensor, pruned: torch.Tensor, dense: torch.Tensor,
                           residual: torch.Tensor | None, keep: torch.Tensor | None = None) -> torch.Tensor:
    """Per row, argmin over V (on `keep`, everywhere if None) of ||X~ v - (X w + r)||^2 + lam ||v - w||^2,
    lam = percdamp * mean(diag X~^T X~), by an fp64 least-squares solve of the stacked system."""
    w = weight.double()
    lam = PERCDAMP * (pruned.square().sum(0)).mean()
    goal = dense @ w.T + (0 if residual is None else residual.double())
    out = torch.zeros_like(w)
    for i in range(w.shape[0]):
        cols = torch.arange(w.shape[1]) if keep is None else keep[i].nonzero().flatten()
        a = torch.cat([pruned[:, cols], lam.sqrt() * torch.eye(w.shape[1], dtype=torch.float64)[:, cols]])
        b = torch.cat([goal[:, i], lam.sqrt() * w[i]])
        out[i, cols] = torch.linalg.lstsq(a, b.unsqueeze(1), driver="gelsd").solution.flatten()
    return out


@pytest.mark.parametrize("with_residual", [False, True], ids=["dense", "residual"])
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32, torch.bfloat16], ids=str)
def test_residual_target_is_the_unconstrained_optimum(dtype: torch.dtype, with_residual: bool) -> None:
    for seed in range(3):
        pruned, dense = activations(200, 24, seed)
        g = torch.Generator().manual_seed(seed + 10)
        weight = torch.randn(11, 24, generator=g, dtype=torch.float64).to(dtype)
        residual = torch.randn(200, 11, generator=g, dtype=torch.float64) * 5 if with_residual else None
        expect = oracle_objective_solve(weight, pruned, dense, residual)
        got = symprune.residual_target(weight, pruned.T @ pruned, pruned.T @ dense,
                                       None if residual is None else pruned.T @ residual, percdamp=PERCDAMP)
        assert got.dtype == (torch.float64 if dtype == torch.float64 else torch.float32)
        tolerance = 1e-9 if dtype == torch.float64 else 1e-5
        torch.testing.assert_close(got.double(), expect, rtol=tolerance, atol=tolerance * expect.abs().max())
        # The dead input's target is the weight itself: no token asks for anything else.
        torch.testing.assert_close(got[:, 5].double(), weight[:, 5].double(), rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("recipe", [
    dict(method="wanda", nm="2:4", update="refit"),
    dict(method="ria", sparsity=0.5, update="refit", refine="dsnot", refine_options={"skip": "none"}),
    dict(method="sparsegpt", sparsity=0.5),
    dict(method="admm", nm="2:4"),
], ids=lambda r: " ".join(f"{k}={v}" for k, v in r.items()))
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
def test_prune_towards_the_residual_target(recipe: dict, dtype: torch.dtype) -> None:
    """prune() with the residual target equals the same recipe on the target weights, and on its
    support the weights solve the residual objective (for the methods that end with the refit)."""
    pruned, dense = activations(300, 32, seed=3)
    g = torch.Generator().manual_seed(4)
    weight = torch.randn(12, 32, generator=g, dtype=torch.float64).to(dtype)
    residual = torch.randn(300, 12, generator=g, dtype=torch.float64) * 3
    stats = symprune.ActivationStats(32)
    stats.update(pruned)
    gram, cross, residual_cross = pruned.T @ pruned, pruned.T @ dense, pruned.T @ residual
    aiming = symprune.Recipe(**recipe, target="residual")
    layer = symprune.Recipe(**recipe)
    assert aiming.target == "residual" and layer.target == "layer" and aiming.needs_cross
    norms = dict(in_norm=stats.in_norm) if aiming.needs_input_stats else {}
    refine = dict(in_mean=stats.in_mean, in_var=stats.in_var) if aiming.needs_refine_stats else {}
    got = symprune.prune(weight, aiming, **norms, **refine, gram=gram, cross=cross, residual_cross=residual_cross)
    target = symprune.residual_target(weight, gram, cross, residual_cross, percdamp=PERCDAMP)
    same = symprune.prune(target, layer, **norms, **refine, gram=gram)
    assert got.weight.dtype == dtype and got.weight.shape == weight.shape
    torch.testing.assert_close(got.weight, same.weight.to(dtype), rtol=0, atol=0)
    assert torch.equal(got.keep, same.keep)
    assert not torch.signbit(got.weight[got.weight == 0]).any()
    if aiming.update == "refit" or aiming.method == "admm":
        expect = oracle_objective_solve(weight.double(), pruned, dense, residual, keep=got.keep)
        scale = expect.abs().max()
        tolerance = 1e-4 if dtype == torch.float32 else 1e-2
        torch.testing.assert_close(got.weight.double(), expect, rtol=tolerance, atol=tolerance * scale)


def test_cross_stats_sum_the_products_of_two_streams() -> None:
    g = torch.Generator().manual_seed(0)
    a, b = torch.randn(3, 17, 6, generator=g), torch.randn(3, 17, 4, generator=g)
    stats = symprune.CrossStats(6, 4)
    for i in range(3):
        stats.update(a[i], b[i])
    assert stats.tokens == 51 and stats.sum.dtype == torch.float64
    expect = sum(a[i].double().T @ b[i].double() for i in range(3))
    torch.testing.assert_close(stats.sum, expect, rtol=1e-6, atol=1e-5)
    other = symprune.CrossStats(6, 4)
    other.load_state(stats.state())
    assert other.tokens == 51 and torch.equal(other.sum, stats.sum)
    with pytest.raises(ValueError, match="tokens"):
        stats.update(a[0], b[0, :5])
    with pytest.raises(ValueError, match="expected b of shape"):
        stats.update(a[0], a[0])
    with pytest.raises(ValueError, match="undefined before any update"):
        _ = symprune.CrossStats(2, 2).sum


def test_bad_recipes_and_inputs_are_refused() -> None:
    with pytest.raises(ValueError, match="needs a method that solves the weights"):
        symprune.Recipe("wanda", 0.5, target="residual")
    with pytest.raises(ValueError, match="unknown target 'dense'"):
        symprune.Recipe("sparsegpt", 0.5, target="dense")
    with pytest.raises(ValueError, match="does not support permute"):
        symprune.Recipe("ria", nm="2:4", permute=True, update="refit", target="residual")
    recipe = symprune.Recipe("sparsegpt", 0.5, target="residual")
    assert "residual target" in recipe.describe() and '"target":"residual"' in recipe.to_json()
    assert "target" not in symprune.Recipe("sparsegpt", 0.5).to_json()  # older recipe texts stay equal
    pruned, dense = activations(100, 16, seed=0)
    weight, gram, cross = torch.randn(6, 16), pruned.T @ pruned, pruned.T @ dense
    with pytest.raises(ValueError, match="needs cross"):
        symprune.prune(weight, recipe, gram=gram)
    with pytest.raises(ValueError, match="cross given, but"):
        symprune.prune(weight, symprune.Recipe("sparsegpt", 0.5), gram=gram, cross=cross)
    with pytest.raises(ValueError, match=r"cross must have shape \(16, 16\)"):
        symprune.prune(weight, recipe, gram=gram, cross=cross[:8])
    with pytest.raises(ValueError, match=r"residual_cross must have shape \(16, 6\)"):
        symprune.prune(weight, recipe, gram=gram, cross=cross, residual_cross=torch.zeros(16, 5))
    bad = cross.clone()
    bad[2, 3] = float("nan")
    with pytest.raises(ValueError, match="cross"):
        symprune.prune(weight, recipe, gram=gram, cross=bad)
    with pytest.raises(ValueError, match="not positive definite"):
        symprune.residual_target(weight, torch.zeros(16, 16), cross, percdamp=0.0)


# --------------------------------------------------------------------------- the staged pipeline

# Per architecture: the stages, the Linear added to the block's input, the one added to the stream
# after it, and the module whose input is that stream.
LAYOUTS = {
    "llama": ([["self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj"], ["self_attn.o_proj"],
               ["mlp.gate_proj", "mlp.up_proj"], ["mlp.down_proj"]],
              "self_attn.o_proj", "mlp.down_proj", "post_attention_layernorm"),
    "opt": ([["self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj"], ["self_attn.out_proj"], ["fc1"],
             ["fc2"]], "self_attn.out_proj", "fc2", "final_layer_norm"),
}


def _inputs(block: torch.nn.Module, hidden: torch.Tensor, call, name: str, mid: str) -> dict[str, torch.Tensor]:
    """One full forward of ``block``: the input of Linear ``name`` and the stream entering module
    ``mid``, flattened to (tokens, features)."""
    seen: dict[str, torch.Tensor] = {}
    modules = dict(block.named_modules())
    handles = [modules[name].register_forward_pre_hook(lambda _m, a: seen.setdefault("x", a[0])),
               modules[mid].register_forward_pre_hook(lambda _m, a: seen.setdefault("mid", a[0]))]
    call.run(block, hidden)
    for h in handles:
        h.remove()
    return {k: v.reshape(-1, v.shape[-1]) for k, v in seen.items()}


def oracle_staged_prune(model: torch.nn.Module, arch: str, windows: list[torch.Tensor], recipe: symprune.Recipe) -> None:
    """Prune a model in place as the residual target is defined (docs/semantics.md): two streams,
    each block's stages in order, T from fp64 sums, the layer-target recipe on T."""
    stages, attention, mlp, mid = LAYOUTS[arch]
    layer_recipe = symprune.Recipe(recipe.method, recipe.sparsity, nm=recipe.nm, update=recipe.update)
    captured = capture_block_inputs(model, windows, progress=False)
    pruned_h, dense_h = list(captured.hidden), [h.clone() for h in captured.hidden]
    for block, calls in zip(find_decoder_blocks(model), captured.calls):
        reference = copy.deepcopy(block)
        for stage in stages:
            width = block_linears(block)[stage[0]].in_features
            h = g = torch.zeros(width, width, dtype=torch.float64)
            e: dict[str, torch.Tensor] = {}
            stats = symprune.ActivationStats(width)
            for call, p_in, d_in in zip(calls, pruned_h, dense_h):
                mine = _inputs(block, p_in, call, stage[0], mid)
                theirs = _inputs(reference, d_in, call, stage[0], mid)
                x = mine["x"].float()
                stats.update(mine["x"])
                h = h + (x.T @ x).double()
                g = g + (x.T @ theirs["x"].float()).double()
                error = {attention: (d_in - p_in).reshape(-1, d_in.shape[-1]), mlp: theirs["mid"] - mine["mid"]}
                for site in set(stage) & set(error):
                    e[site] = e.get(site, 0) + (x.T @ error[site].float()).double()
            for name in stage:
                linear = block_linears(block)[name]
                w = linear.weight.detach()
                lam = PERCDAMP * h.diagonal().mean()
                eye = torch.eye(width, dtype=torch.float64)
                rhs = (g + lam * eye) @ w.double().T + e.get(name, 0)
                target = torch.linalg.solve(h + lam * eye, rhs).T.float()
                norms = dict(in_norm=stats.in_norm) if layer_recipe.needs_input_stats else {}
                linear.weight.copy_(symprune.prune(target, layer_recipe, **norms, gram=h).weight)
        pruned_h = [call.run(block, x) for call, x in zip(calls, pruned_h)]
        dense_h = [call.run(reference, x) for call, x in zip(calls, dense_h)]


def _with_random_biases_and_norms(arch: str) -> torch.nn.Module:
    """The tiny model, its biases and norm weights made random (they start as 0 and 1), the same each call."""
    model, g = build_tiny_model(arch), torch.Generator().manual_seed(7)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if name.endswith("bias") or "norm" in name:
                param.add_(0.1 * torch.randn(param.shape, generator=g))
    return model


@pytest.mark.parametrize("arch", sorted(LAYOUTS))
@pytest.mark.parametrize("recipe", [dict(method="wanda", nm="2:4", update="refit"),
                                    dict(method="sparsegpt", sparsity=0.5)], ids=lambda r: r["method"])
def test_pipeline_equals_the_staged_oracle(recipe: dict, arch: str) -> None:
    windows = [torch.randint(0, TINY_VOCAB, (24,), generator=torch.Generator().manual_seed(i)) for i in range(4)]
    model, expect = _with_random_biases_and_norms(arch), _with_random_biases_and_norms(arch)
    with torch.no_grad():
        report = symprune.prune_model(model, windows, **recipe, target="residual", progress=False)
        oracle_staged_prune(expect, arch, windows, symprune.Recipe(**recipe))
    got, want = dict(model.named_parameters()), dict(expect.named_parameters())
    for name, param in want.items():
        assert torch.equal(got[name] == 0, param == 0), name
        torch.testing.assert_close(got[name], param, rtol=1e-4, atol=1e-5, msg=name)
    assert report.recipe["target"] == "residual" and len(report.blocks) == 2
    # Changed from the layer target (the same recipe without it), so the target was used.
    plain = _with_random_biases_and_norms(arch)
    with torch.no_grad():
        symprune.prune_model(plain, windows, **recipe, progress=False)
    mlp = LAYOUTS[arch][2]
    last = find_decoder_blocks(model)[1].get_submodule(mlp).weight
    assert not torch.equal(find_decoder_blocks(plain)[1].get_submodule(mlp).weight, last)


@pytest.mark.parametrize(("arch", "message"), [
    ("gemma3", r"normalises a branch's output \(pre_feedforward_layernorm"),
    ("opt-post-norm", "normalises the stream after each addition"),
    ("granite", r"scales each branch's output \(residual_multiplier\)"),
    ("bart", r"also attends to an encoder \(encoder_attn\)"),
])
def test_pipeline_refuses_blocks_without_known_residual_additions(arch: str, message: str) -> None:
    model = _unusual_model(arch)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(ValueError, match=message + ".*use target 'layer'"):
        symprune.prune_model(model, torch.randint(0, TINY_VOCAB, (2, 16)), method="sparsegpt", sparsity=0.5,
                             target="residual", progress=False)
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())  # nothing was pruned


def _unusual_model(arch: str) -> torch.nn.Module:
    """Tiny models whose Linears bear a known layout's names but whose additions are other ones."""
    import transformers as hf

    if arch == "opt-post-norm":  # OPT-350m's layout
        model = build_tiny_model("opt")
        for block in find_decoder_blocks(model):
            block.do_layer_norm_before = False
        return model
    if arch == "granite":
        return hf.GraniteForCausalLM(hf.GraniteConfig(
            vocab_size=TINY_VOCAB, hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
            num_key_value_heads=4, max_position_embeddings=256, residual_multiplier=0.5)).eval()
    if arch == "bart":
        return hf.BartForCausalLM(hf.BartConfig(
            vocab_size=TINY_VOCAB, d_model=64, decoder_layers=2, decoder_attention_heads=4, decoder_ffn_dim=128,
            encoder_layers=1, encoder_attention_heads=4, encoder_ffn_dim=128, max_position_embeddings=256)).eval()
    return build_tiny_model(arch)


def test_the_additions_are_checked_on_a_window() -> None:
    """A block that passes the check by its modules' names (Granite's looks like Llama's) but adds
    a scaled branch is caught by the forward that finds the stages."""
    model = _unusual_model("granite")
    captured = capture_block_inputs(model, [torch.randint(0, TINY_VOCAB, (16,))], progress=False)
    llama_like = ResidualSites("self_attn.o_proj", "mlp.down_proj", "post_attention_layernorm")
    with torch.no_grad(), pytest.raises(ValueError, match="the input of post_attention_layernorm is not the stream "
                                                          r"plus self_attn.o_proj's output.*--target layer"):
        linear_stages(find_decoder_blocks(model)[0], llama_like, captured.hidden[0], captured.calls[0][0])


def test_blocks_of_no_known_layout_are_refused() -> None:
    block = torch.nn.Module()
    block.fc = torch.nn.Linear(4, 4)
    with pytest.raises(ValueError, match=r"knows the residual additions of these layouts \(Llama-like blocks: "
                                         r"self_attn.o_proj, .*\), and block 3 \(Module\) has none of them"):
        residual_sites(block, 3)
