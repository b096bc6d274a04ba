"""Token streams and the fixed windows of the evaluation protocol (docs/protocol.md).

A text is tokenized once, as a whole and without special tokens; windows are then cut
from the token stream. Everything here returns ``int64`` tensors of shape
``(windows, seqlen)`` so the pipeline and the evaluator share one input format.
"""

from __future__ import annotations

import gzip
import os
import random
from collections.abc import Sequence
from importlib import resources
from pathlib import Path
from typing import Any

import torch

DATA_ENV = "SYMPRUNE_DATA"
CALIBRATION_FILE = "lee_background.cor"  # the protocol's calibration text (docs/protocol.md) (news)
EVALUATION_FILE = "enwiki_excerpt.txt"  # the protocol's evaluation text (docs/protocol.md) (Wikipedia)

# A token stream: a 1-D tensor (or a (1, n) tensor as tokenizers return) or a list of ids.
Tokens = torch.Tensor | Sequence[int]


def protocol_text(name: str) -> Path:
    """Path of one of the protocol's texts (``CALIBRATION_FILE``, ``EVALUATION_FILE``): the file
    of that name in ``$SYMPRUNE_DATA`` when it is set, else the copy shipped inside the package
    (``symprune/texts/NAME.gz``; its README gives provenance and licences)."""
    env = os.environ.get(DATA_ENV)
    if env:
        return Path(env).expanduser() / name
    return Path(str(resources.files("symprune") / "texts" / f"{name}.gz"))


def read_text(path: str | os.PathLike[str]) -> str:
    """Read a UTF-8 text file (gzip-compressed if its name ends in ``.gz``), with a clear error
    if it is missing or empty."""
    p = Path(path)
    if not p.is_file():
        raise ValueError(f"text file not found: {p}")
    if p.suffix == ".gz":
        with gzip.open(p, "rt", encoding="utf-8") as f:
            text = f.read()
    else:
        text = p.read_text(encoding="utf-8")
    if not text.strip():
        raise ValueError(f"text file is empty: {p}")
    return text


def tokenize_text(text: str, tokenizer: Any) -> torch.Tensor:
    """Tokenize ``text`` as one piece without special tokens (no BOS/EOS)."""
    # Tokenizers warn when a text is longer than the model's context; that is expected
    # here (windows are cut afterwards), so the check is silenced for this call.
    saved = getattr(tokenizer, "model_max_length", None)
    try:
        if saved is not None:
            tokenizer.model_max_length = int(1e30)
        ids = tokenizer(text, add_special_tokens=False, return_attention_mask=False)["input_ids"]
    finally:
        if saved is not None:
            tokenizer.model_max_length = saved
    return torch.tensor(ids, dtype=torch.long)


def tokenize_file(path: str | os.PathLike[str], tokenizer: Any) -> torch.Tensor:
    """Tokenize a whole text file once, without special tokens."""
    return tokenize_text(read_text(path), tokenizer)


def as_token_stream(tokens: Tokens) -> torch.Tensor:
    """Normalise a token stream to a 1-D ``int64`` tensor."""
    t = torch.as_tensor(tokens)
    if t.dim() == 2 and t.shape[0] == 1:
        t = t[0]
    if t.dim() != 1:
        raise ValueError(
            f"expected a 1-D token stream (or shape (1, n)), got shape {tuple(t.shape)}"
        )
    if t.is_floating_point() or t.is_complex() or t.dtype == torch.bool:
        raise ValueError(f"token ids must be integers, got dtype {t.dtype}")
    return t.to(torch.long)


def _check_positive(name: str, value: int) -> None:
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise ValueError(f"{name} must be a positive integer, got {value!r}")


def calibration_windows(
    tokens: Tokens, nsamples: int = 64, seqlen: int = 512, seed: int = 0
) -> torch.Tensor:
    """Random calibration windows, exactly as Wanda/SparseGPT's loaders draw them.

    Equivalent to ``random.seed(seed)`` followed by, for each window,
    ``start = random.randint(0, n_tokens - seqlen - 1)``; a private ``random.Random``
    gives the same draws without touching the global generator.
    """
    _check_positive("nsamples", nsamples)
    _check_positive("seqlen", seqlen)
    stream = as_token_stream(tokens)
    n = stream.numel()
    if n < seqlen + 1:
        raise ValueError(
            f"calibration text too short: {n} tokens, need at least seqlen + 1 = {seqlen + 1}"
        )
    rng = random.Random(seed)
    starts = [rng.randint(0, n - seqlen - 1) for _ in range(nsamples)]
    return torch.stack([stream[s : s + seqlen] for s in starts])


def evaluation_windows(tokens: Tokens, nwindows: int = 32, seqlen: int = 512) -> torch.Tensor:
    """The first ``nwindows`` non-overlapping windows of ``seqlen`` tokens."""
    _check_positive("nwindows", nwindows)
    _check_positive("seqlen", seqlen)
    stream = as_token_stream(tokens)
    need = nwindows * seqlen
    if stream.numel() < need:
        raise ValueError(
            f"evaluation text too short: {stream.numel()} tokens, need nwindows × seqlen = "
            f"{nwindows} × {seqlen} = {need}; use fewer or shorter windows"
        )
    return stream[:need].reshape(nwindows, seqlen).clone()


def with_bos(windows: torch.Tensor, bos_token_id: int) -> torch.Tensor:
    """Prepend a BOS token to every window (models such as Gemma-3 need one)."""
    if windows.dim() != 2:
        raise ValueError(f"windows must have shape (n, seqlen), got {tuple(windows.shape)}")
    bos = torch.full((windows.shape[0], 1), bos_token_id, dtype=windows.dtype)
    return torch.cat([bos, windows], dim=1)
