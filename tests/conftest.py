"""Shared fixtures: tiny random Hugging Face models, a byte-level tokenizer, text files."""

from __future__ import annotations

import json
import random
from collections.abc import Iterator
from pathlib import Path

import pytest
import symprune
import torch
import transformers as hf

TINY_VOCAB = 260  # 256 byte tokens + specials of the byte tokenizer below
TINY_ARCHS = ("llama", "mistral", "qwen2", "qwen3", "gemma3", "opt")


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "slow: uses the real SmolLM2 model (about a minute)")


def build_tiny_model(arch: str, seed: int = 0) -> torch.nn.Module:
    """A 2-block, hidden-64 causal LM of the given architecture with random weights."""
    torch.manual_seed(seed)
    common = dict(
        vocab_size=TINY_VOCAB, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256,
    )
    if arch == "llama":
        model = hf.LlamaForCausalLM(hf.LlamaConfig(**common))
    elif arch == "mistral":
        model = hf.MistralForCausalLM(hf.MistralConfig(**common))
    elif arch == "qwen2":
        model = hf.Qwen2ForCausalLM(hf.Qwen2Config(**common))
    elif arch == "qwen3":
        model = hf.Qwen3ForCausalLM(hf.Qwen3Config(**common, head_dim=16))
    elif arch == "gemma3":
        # A short sliding window so the two layer types get different masks.
        model = hf.Gemma3ForCausalLM(hf.Gemma3TextConfig(
            **common, head_dim=16, sliding_window=8,
            layer_types=["sliding_attention", "full_attention"],
        ))
    elif arch == "opt":
        model = hf.OPTForCausalLM(hf.OPTConfig(
            vocab_size=TINY_VOCAB, hidden_size=64, ffn_dim=128, num_hidden_layers=2,
            num_attention_heads=4, word_embed_proj_dim=64, max_position_embeddings=256,
        ))
    else:
        raise ValueError(arch)
    return model.eval()


@pytest.fixture
def single_thread() -> Iterator[None]:
    """Tiny models run faster on one thread; with two, every small op pays an OpenMP
    barrier, which costs milliseconds when the CPU is shared (8 ms vs 0.04 ms a Linear)."""
    saved = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(saved)


def byte_tokenizer() -> hf.PreTrainedTokenizerFast:
    """A byte-level tokenizer built in code (no download): one token per UTF-8 byte."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers

    alphabet = sorted(pre_tokenizers.ByteLevel.alphabet())
    vocab = {ch: i for i, ch in enumerate(alphabet)}
    vocab.update({"<s>": 256, "</s>": 257})
    tok = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    return hf.PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="</s>")


def random_text(words: int, seed: int) -> str:
    """Deterministic pseudo-English filler text."""
    rng = random.Random(seed)
    vocab = ["the", "model", "weights", "are", "pruned", "after", "training", "and",
             "a", "mask", "keeps", "half", "of", "each", "row", "news", "today", "said"]
    return " ".join(rng.choice(vocab) for _ in range(words)) + "\n"


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A saved tiny Llama with its byte tokenizer: a real Hugging Face folder."""
    path = tmp_path_factory.mktemp("tiny-llama")
    build_tiny_model("llama").save_pretrained(path)
    byte_tokenizer().save_pretrained(path)
    return path


@pytest.fixture(scope="session")
def text_files(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """(calibration, evaluation) text files of ~6k bytes each, different content."""
    root = tmp_path_factory.mktemp("texts")
    calib, evaluation = root / "calib.txt", root / "eval.txt"
    calib.write_text(random_text(1200, seed=1), encoding="utf-8")
    evaluation.write_text(random_text(1200, seed=2), encoding="utf-8")
    return calib, evaluation


@pytest.fixture(scope="session")
def sharded_model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny bf16 Llama saved in several shards with an index, plus its tokenizer."""
    path = tmp_path_factory.mktemp("sharded")
    model = build_tiny_model("llama").to(torch.bfloat16)
    model.save_pretrained(path, max_shard_size="100KB")
    byte_tokenizer().save_pretrained(path)
    assert (path / "model.safetensors.index.json").exists()
    return path


def write_sharded_checkpoint(folder: Path, shards: list[dict[str, torch.Tensor]]) -> Path:
    """A checkpoint folder of the given shards (named as transformers names them), an index and
    an empty config."""
    weight_map = {}
    for number, tensors in enumerate(shards, start=1):
        name = f"model-{number:05d}-of-{len(shards):05d}.safetensors"
        symprune.save_safetensors(str(folder / name), tensors, {"format": "pt"})
        weight_map.update(dict.fromkeys(tensors, name))
    (folder / "model.safetensors.index.json").write_text(json.dumps({"metadata": {}, "weight_map": weight_map}))
    (folder / "config.json").write_text("{}")
    return folder


def folder_bytes(folder: Path) -> dict[str, bytes]:
    """Every file of a folder by name, with its contents."""
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir()) if p.is_file()}


def one_weight_checkpoint(folder: Path, seed: int) -> tuple[Path, str, torch.Tensor, dict[str, torch.Tensor]]:
    """A checkpoint (folder/model) of one bf16 1100 x 1024 down_proj weight, over 1 M elements,
    with column scales spread over decades (ties in bf16) and a dead column; with the weight's
    name, the weight, and statistics for it by kind (in_norm, out_norm, in_mean, in_var)."""
    model = folder / "model"
    model.mkdir()
    name = "model.layers.0.mlp.down_proj.weight"
    generator = torch.Generator().manual_seed(seed)
    weight = (torch.randn(1100, 1024, generator=generator) * torch.rand(1024, generator=generator) ** 3).to(torch.bfloat16)
    weight[:, 5] = 0  # a dead column
    symprune.save_safetensors(str(model / "model.safetensors"), {name: weight}, {"format": "pt"})
    statistics = {"in_norm": torch.rand(1024, generator=generator) + 0.1, "out_norm": torch.rand(1100, generator=generator),
                  "in_mean": torch.randn(1024, generator=generator), "in_var": torch.rand(1024, generator=generator)}
    return model, name, weight, statistics


def stream_job(model: Path, out: Path, **options: object) -> dict:
    """The core's streaming run, step by step, without the Python wrapper's report (its options,
    row_block_bytes included, as given)."""
    job = symprune._C.StreamJob(str(model), str(out), **options)
    report = job.write(job.prepare())
    job.finish()
    return report
