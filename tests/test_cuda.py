"""CUDA tensors give the same results as CPU tensors. Runs only where torch sees a GPU."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import symprune
import torch
from conftest import folder_bytes, one_weight_checkpoint, stream_job
from symprune.cli import main
from test_distributed import prune_under_torchrun

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")


def _layer(out: int = 64, inp: int = 256) -> dict[str, torch.Tensor]:
    torch.manual_seed(0)
    stats = symprune.ActivationStats(inp)
    for _ in range(4):
        stats.update(torch.randn(32, inp) + torch.linspace(-1, 1, inp))
    return {"weight": torch.randn(out, inp), "in_norm": stats.in_norm, "in_mean": stats.in_mean, "in_var": stats.in_var}


def _cuda(tensors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {name: t.cuda() for name, t in tensors.items()}


@pytest.mark.parametrize("method", ["magnitude", "wanda", "ria", "symmetric"])
def test_scores_and_masks_match_cpu(method: str) -> None:
    layer = _layer()
    gpu = _cuda(layer)
    reads = symprune.method_info(method)["needs_input_stats"]  # a statistic a method does not read is refused
    cpu_scores = symprune.score(layer["weight"], method, **({"in_norm": layer["in_norm"]} if reads else {}))
    gpu_scores = symprune.score(gpu["weight"], method, **({"in_norm": gpu["in_norm"]} if reads else {}))
    assert gpu_scores.is_cuda
    torch.testing.assert_close(gpu_scores.cpu(), cpu_scores)
    for kwargs in ({"sparsity": 0.5}, {"sparsity": 0.5, "group": "layer"}, {"nm": (2, 4)}):
        assert torch.equal(symprune.mask(cpu_scores, **kwargs), symprune.mask(cpu_scores.cuda(), **kwargs).cpu())


@pytest.mark.parametrize("nm", [None, (2, 4)])
def test_dsnot_on_gpu_matches_cpu_rows(nm: tuple[int, int] | None) -> None:
    layer = _layer()
    scores = symprune.score(layer["weight"], "wanda", in_norm=layer["in_norm"])
    keep = symprune.mask(scores, None if nm else 0.5, nm=nm)
    stats = {k: layer[k] for k in ("in_norm", "in_mean", "in_var")}
    cpu = symprune.dsnot(layer["weight"], keep, **stats, nm=nm, threshold=0.0)
    gpu_stats = {k: v.cuda() for k, v in stats.items()}
    gpu = symprune.dsnot(layer["weight"].cuda(), keep.cuda(), **gpu_stats, nm=nm, threshold=0.0)
    assert gpu.is_cuda
    assert not torch.equal(cpu, keep)
    assert torch.equal(gpu.cpu(), cpu)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
def test_masks_on_gpu_equal_cpu_masks_with_ties(dtype: torch.dtype) -> None:
    """Masks of GPU scores are computed on the GPU (a stable sort); ties, -0 and odd shapes
    must fall exactly as on the CPU."""
    g = torch.Generator().manual_seed(1)
    score = (torch.randint(0, 4, (37, 24), generator=g).float() / 4 - 0.5).to(dtype)
    score[3] = -0.0
    for kwargs in ({"sparsity": 0.3}, {"sparsity": 0.5, "group": "layer"}, {"nm": (2, 4)}, {"nm": (3, 8)}):
        gpu = symprune.mask(score.cuda(), **kwargs)
        assert gpu.is_cuda
        assert torch.equal(gpu.cpu(), symprune.mask(score, **kwargs)), kwargs


def _weights_and_stats(path: Path) -> Path:
    """A checkpoint of two shards (index included) with bf16, fp16 and fp32 weights of growing
    and shrinking sizes, one over 4M elements, and statistics for every weight."""
    g = torch.Generator().manual_seed(2)
    shapes = [(64, 96), (600, 8192), (8, 16), (130, 200), (3, 8)]
    dtypes = [torch.bfloat16, torch.float16, torch.float32]
    weights = {f"model.layers.{i}.mlp.up_proj.weight": (torch.randn(s, generator=g) * 0.02).to(dtypes[i % 3])
               for i, s in enumerate(shapes)}
    stats = {}
    for name, w in weights.items():
        stats[f"{name}.in_norm"] = torch.rand(w.shape[1], generator=g) + 0.1
        stats[f"{name}.in_mean"] = torch.randn(w.shape[1], generator=g)
        stats[f"{name}.in_var"] = torch.rand(w.shape[1], generator=g) + 0.1
        stats[f"{name}.out_norm"] = torch.rand(w.shape[0], generator=g) + 0.1
    model = path / "model"
    model.mkdir()
    names = list(weights)
    shards = {"model-00001-of-00002.safetensors": names[:2], "model-00002-of-00002.safetensors": names[2:]}
    weight_map = {}
    for shard, members in shards.items():
        tensors = {n: weights[n] for n in members} | {f"{members[0]}.bias": torch.zeros(3)}  # copied, not pruned
        symprune.save_safetensors(str(model / shard), tensors)
        weight_map |= dict.fromkeys(tensors, shard)
    (model / "model.safetensors.index.json").write_text(json.dumps({"metadata": {}, "weight_map": weight_map}))
    symprune.save_safetensors(str(path / "stats.safetensors"), stats, {"format": "symprune-stats"})
    return model


@pytest.mark.parametrize(("method", "pattern", "refine"), [
    ("magnitude", {"sparsity": 0.5}, None), ("magnitude", {"sparsity": 0.6, "group": "layer"}, None),
    ("wanda", {"nm": (2, 4)}, None), ("wanda", {"sparsity": 0.5}, "dsnot"),
    ("symwanda", {"sparsity": 0.5}, None), ("owanda", {"nm": (2, 4)}, None),
])
def test_streaming_on_gpu_writes_the_cpu_bytes(method: str, pattern: dict, refine: str | None, tmp_path: Path) -> None:
    """Element-wise scores give the same bits on both devices, so a GPU run must write exactly
    the files of a CPU run, through every shard, dtype and size of the pinned buffers. (DSnoT
    sums its error in double in another order on the GPU: exact for these float terms unless
    their exponents span ~29 bits, which the fixed data here does not.)"""
    model = _weights_and_stats(tmp_path)
    stats = tmp_path / "stats.safetensors"
    common = {"method": method, "refine": refine, "stats": stats, "progress": False, **pattern}
    cpu = symprune.prune_checkpoint(model, tmp_path / "cpu", **common)
    gpu = symprune.prune_checkpoint(model, tmp_path / "gpu", device="cuda", **common)
    assert gpu["tensors_pruned"] == cpu["tensors_pruned"] == 5
    assert gpu["pruned_zeros"] == cpu["pruned_zeros"] > 0
    cpu_files, gpu_files = folder_bytes(tmp_path / "cpu"), folder_bytes(tmp_path / "gpu")
    job = json.loads(gpu_files.pop(".symprune-apply.json"))
    assert job["job"]["device"] == "cuda" and "device" not in json.loads(cpu_files.pop(".symprune-apply.json"))["job"]
    assert gpu_files == cpu_files


@pytest.mark.parametrize(("method", "pattern", "refine"), [
    ("magnitude", {"nm": (2, 4)}, None), ("wanda", {"sparsity": 0.5}, "dsnot"),
])
def test_streaming_on_gpu_prunes_large_weights_in_row_blocks(
    method: str, pattern: dict, refine: str | None, tmp_path: Path
) -> None:
    """4097 x 8192 is one row over the GPU's 32M-element block: the blocked result (a last block
    of one row) must be the CPU's, byte for byte."""
    g = torch.Generator().manual_seed(3)
    name = "model.layers.0.mlp.down_proj.weight"
    (tmp_path / "model").mkdir()
    symprune.save_safetensors(str(tmp_path / "model" / "model.safetensors"),
                              {name: (torch.randn(4097, 8192, generator=g) * 0.02).to(torch.bfloat16)})
    stats = {f"{name}.in_norm": torch.rand(8192, generator=g) + 0.1, f"{name}.in_mean": torch.randn(8192, generator=g),
             f"{name}.in_var": torch.rand(8192, generator=g) + 0.1}
    symprune.save_safetensors(str(tmp_path / "stats.safetensors"), stats, {"format": "symprune-stats"})
    common = {"method": method, "refine": refine, "stats": tmp_path / "stats.safetensors", "progress": False,
              **pattern}
    symprune.prune_checkpoint(tmp_path / "model", tmp_path / "cpu", **common)
    symprune.prune_checkpoint(tmp_path / "model", tmp_path / "gpu", device="cuda", **common)
    assert (tmp_path / "gpu" / "model.safetensors").read_bytes() == (tmp_path / "cpu" / "model.safetensors").read_bytes()


@pytest.mark.parametrize("recipe", [
    symprune.Recipe("magnitude", 0.5), symprune.Recipe("wanda", nm="2:4", refine="dsnot"),
    symprune.Recipe("owanda", nm="1:4"),  # out_norm: one entry per row, sliced with the block
    symprune.Recipe("symwanda", 0.5),
    symprune.Recipe("ria", 0.5),  # the whole weight's column norms, from a first pass on the CPU
    symprune.Recipe("wanda", 0.5, refine="r2dsnot", refine_options={"relative": "prune"}),
], ids=lambda r: r.describe())
def test_streaming_on_gpu_uploads_blocks_of_rows(recipe: symprune.Recipe, tmp_path: Path) -> None:
    """A device prunes a weight whose rows are independent a block of rows at a time (one row;
    three; 700, the last block shorter), uploaded and downloaded through the pinned buffers of a
    block: the bytes of the CPU's blocks. Scores that sum along rows (ria, R²-DSnoT) may round
    otherwise on the GPU: near-ties only."""
    model, name, weight, statistics = one_weight_checkpoint(tmp_path, seed=4)
    stats = tmp_path / "stats.safetensors"
    symprune.save_safetensors(str(stats), {f"{name}.{kind}": value for kind, value in statistics.items()},
                              {"format": "symprune-stats"})
    options = {"recipe": recipe, "stats": str(stats)}
    cpu = stream_job(model, tmp_path / "cpu", row_block_bytes=2048 * 3, **options)
    exact = recipe.method != "ria" and recipe.refine != "r2dsnot"
    for budget in (1, 2048 * 3, 2048 * 700):  # rows are 2048 bytes
        out = tmp_path / f"gpu-{budget}"
        report = stream_job(model, out, device="cuda", row_block_bytes=budget, **options)
        assert report["tensors_pruned"] == 1 and cpu["pruned_zeros"] > 0, budget
        gpu_weight = symprune.load_safetensors(str(out / "model.safetensors"))[name]
        cpu_weight = symprune.load_safetensors(str(tmp_path / "cpu" / "model.safetensors"))[name]
        differ = int((gpu_weight != cpu_weight).sum())
        assert differ == 0 if exact else differ <= 1e-3 * weight.numel(), (budget, differ)
        if exact:
            assert report["pruned_zeros"] == cpu["pruned_zeros"], budget
            assert (out / "model.safetensors").read_bytes() == (tmp_path / "cpu" / "model.safetensors").read_bytes()


def test_streaming_on_gpu_with_sums_in_the_score_agrees_but_for_rounding(tmp_path: Path) -> None:
    """RIA and R²-DSnoT sum over rows and columns, which a GPU adds in another order: the
    result keeps the pattern exactly and differs from the CPU's at near-ties only."""
    model = _weights_and_stats(tmp_path)
    common = {"method": "ria", "nm": (2, 4), "refine": "r2dsnot", "stats": tmp_path / "stats.safetensors",
              "progress": False}
    symprune.prune_checkpoint(model, tmp_path / "cpu", **common)
    symprune.prune_checkpoint(model, tmp_path / "gpu", device="cuda", **common)
    differ = total = 0
    for shard in model.glob("*.safetensors"):
        cpu = symprune.load_safetensors(str(tmp_path / "cpu" / shard.name))
        gpu = symprune.load_safetensors(str(tmp_path / "gpu" / shard.name))
        for name, w in gpu.items():
            if w.dim() != 2:
                continue
            assert torch.equal((w != 0).reshape(-1, 4).sum(1), (cpu[name] != 0).reshape(-1, 4).sum(1)), name
            differ += int((w != cpu[name]).sum())
            total += w.numel()
    assert differ <= 1e-3 * total, (differ, total)


def test_streaming_on_gpu_fails_cleanly(tmp_path: Path) -> None:
    model = _weights_and_stats(tmp_path)
    shard = model / "model-00002-of-00002.safetensors"
    tensors = symprune.load_safetensors(str(shard))
    tensors["model.layers.3.mlp.up_proj.weight"][1, 2] = float("nan")
    symprune.save_safetensors(str(shard), tensors)
    common = {"method": "wanda", "nm": (2, 4), "stats": tmp_path / "stats.safetensors", "progress": False}
    with pytest.raises(ValueError, match=r"model.layers.3.mlp.up_proj.weight.*NaN or Inf"):
        symprune.prune_checkpoint(model, tmp_path / "out", device="cuda", **common)
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == [".symprune-apply.json",
                                                                     "model-00001-of-00002.safetensors"]
    with pytest.raises(ValueError, match="other options"):  # a GPU run resumes on the GPU only
        symprune.prune_checkpoint(model, tmp_path / "out", resume=True, **common)
    with pytest.raises(ValueError, match="only .* CUDA GPU"):
        symprune.prune_checkpoint(model, tmp_path / "other", device=f"cuda:{torch.cuda.device_count()}", **common)


@pytest.mark.parametrize("recipe", [["--method", "wanda", "--sparsity", "0.5"],
                                    ["--method", "wanda", "--nm", "2:4", "--update", "refit", "--target", "residual"]],
                         ids=["wanda", "residual-refit"])
def test_pruning_a_model_on_gpu_agrees_with_the_cpu(tiny_model_dir: Path, text_files: tuple[Path, Path],
                                                    tmp_path: Path, recipe: list[str]) -> None:
    """`symprune prune --device cuda`: the model runs and is pruned on the GPU (with the residual
    target, the dense stream and the staged blocks too). Its activations round differently from
    the CPU's, so masks may differ at near-ties only: the same sparsity in every row, and the same
    kept set almost everywhere."""
    common = [*recipe, "--calib", str(text_files[0]), "--nsamples", "4", "--seqlen", "32", "--quiet"]
    assert main(["prune", str(tiny_model_dir), str(tmp_path / "cpu"), *common]) == 0
    assert main(["prune", str(tiny_model_dir), str(tmp_path / "gpu"), *common, "--device", "cuda"]) == 0
    cpu = symprune.load_safetensors(str(tmp_path / "cpu" / "model.safetensors"))
    gpu = symprune.load_safetensors(str(tmp_path / "gpu" / "model.safetensors"))
    differ = total = 0
    for name, w in gpu.items():
        if ".layers." in name and w.dim() == 2:
            assert torch.equal((w == 0).sum(1), (cpu[name] == 0).sum(1)), name
            differ += int(((w == 0) != (cpu[name] == 0)).sum())
            total += w.numel()
            agree = (w != 0) & (cpu[name] != 0)  # the refit's values, where both kept the weight
            assert torch.linalg.norm((w - cpu[name])[agree]) <= 1e-3 * torch.linalg.norm(cpu[name][agree]), name
    assert total > 0 and differ <= 0.01 * total, (differ, total)


def test_prune_under_torchrun_on_gpus_equals_one_process(tiny_model_dir: Path, text_files: tuple[Path, Path],
                                                          tmp_path: Path) -> None:
    """`prune --device cuda` under torchrun, one rank per GPU (a single GPU makes a group of one):
    the process group has NCCL for CUDA tensors, and the result equals one process on the GPU."""
    ranks = min(torch.cuda.device_count(), 2)
    prune_under_torchrun(ranks, ["--method", "sparsegpt", "--sparsity", "0.5"], tiny_model_dir, text_files, tmp_path,
                         "--device", "cuda")


def test_calibrating_on_gpu_agrees_with_the_cpu(tiny_model_dir: Path, text_files: tuple[Path, Path],
                                                 tmp_path: Path) -> None:
    """`symprune calibrate --device cuda`: blocks run (and are pruned) on the GPU one at a time;
    the statistics agree with the CPU's up to the rounding of the activations."""
    common = ["--method", "wanda", "--nm", "2:4", "--calib", str(text_files[0]), "--nsamples", "4",
              "--seqlen", "32", "--quiet"]
    for device in ("cpu", "cuda"):
        assert main(["calibrate", str(tiny_model_dir), "--out", str(tmp_path / f"{device}.safetensors"), *common,
                     "--device", device]) == 0
    cpu = symprune.load_safetensors(str(tmp_path / "cpu.safetensors"))
    gpu = symprune.load_safetensors(str(tmp_path / "cuda.safetensors"))
    assert cpu.keys() == gpu.keys()
    for name in cpu:
        torch.testing.assert_close(gpu[name], cpu[name], rtol=1e-3, atol=1e-5)


def _reconstruction_layer(rows: int = 96, cols: int = 256) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(1)
    x = torch.randn(4 * cols, cols, generator=g) * (torch.rand(cols, generator=g) + 0.1)
    return torch.randn(rows, cols, generator=g), (x.T @ x).double()


@pytest.mark.parametrize("pattern", [{"sparsity": 0.5}, {"nm": (2, 4)}], ids=str)
def test_reconstruction_matches_cpu(pattern: dict) -> None:
    """sparsegpt (the column backend on the GPU), refit and admm on CUDA tensors agree with the
    CPU up to fp32 rounding (a near-tie may flip a few mask entries)."""
    w, gram = _reconstruction_layer()
    sparsity, nm = pattern.get("sparsity"), pattern.get("nm")
    cpu = symprune.sparsegpt(w, gram, sparsity, nm=nm)
    gpu = symprune.sparsegpt(w.cuda(), gram.cuda(), sparsity, nm=nm)
    assert gpu.is_cuda and ((gpu.cpu() == 0) != (cpu == 0)).float().mean() < 0.01
    keep = cpu != 0
    torch.testing.assert_close(symprune.refit(w.cuda(), keep.cuda(), gram.cuda()).cpu(),
                               symprune.refit(w, keep, gram), rtol=1e-3, atol=1e-3)
    start = symprune.mask(symprune.score(w, "wanda", in_norm=gram.diagonal().sqrt().float()), sparsity, nm=nm)
    a_cpu = symprune.admm(w, gram, start, sparsity, nm=nm, max_iterations=30)
    a_gpu = symprune.admm(w.cuda(), gram.cuda(), start.cuda(), sparsity, nm=nm, max_iterations=30)
    assert ((a_gpu.cpu() == 0) != (a_cpu == 0)).float().mean() < 0.02


def test_residual_target_and_cross_stats_match_cpu() -> None:
    """The residual target's statistics and target weights on CUDA tensors agree with the CPU."""
    w, gram = _reconstruction_layer()
    g = torch.Generator().manual_seed(2)
    a, b = torch.randn(300, w.shape[1], generator=g), torch.randn(300, w.shape[1], generator=g)
    stats = {device: symprune.CrossStats(w.shape[1], w.shape[1]) for device in ("cpu", "cuda")}
    for device, accumulator in stats.items():
        accumulator.update(a.to(device), b.to(device))
    assert stats["cuda"].sum.is_cuda
    torch.testing.assert_close(stats["cuda"].sum.cpu(), stats["cpu"].sum, rtol=1e-5, atol=1e-3)
    cross = stats["cpu"].sum
    target = symprune.residual_target(w.cuda(), gram.cuda(), cross.cuda())
    assert target.is_cuda
    torch.testing.assert_close(target.cpu(), symprune.residual_target(w, gram, cross), rtol=1e-4, atol=1e-4)
