"""Decoder blocks of Hugging Face causal LMs and the exact calls the model makes to them.

One cheap pass records, for each calibration window, the hidden states entering block 0 and
the call (all keyword arguments: masks, position ids, rotary embeddings, cache flags) the
model makes to *every* block: Gemma-3 gives sliding and global layers different masks and
rotary tables, so block 0's call is not enough.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn
from tqdm.auto import tqdm

# Where common architectures keep their decoder blocks.
_BLOCK_PATHS: tuple[str, ...] = (
    "model.layers",  # Llama, Mistral, Qwen2/3, Gemma/Gemma-3 text, Phi-3
    "model.decoder.layers",  # OPT
    "model.language_model.layers",  # multimodal wrappers
    "transformer.h",  # GPT-2, Falcon, Bloom
    "gpt_neox.layers",  # Pythia
)
# Keyword arguments that would make block forwards touch a KV cache; pruning forwards
# must not (a cache would grow across windows and change attention).
_CACHE_KWARGS = ("cache", "past_key_value", "past_key_values")


# --------------------------------------------------------------------------- blocks


def find_decoder_blocks(model: nn.Module) -> nn.ModuleList:
    """The model's list of decoder blocks (``model.model.layers`` for Llama-like models)."""
    for path in _BLOCK_PATHS:
        obj: Any = model
        for attr in path.split("."):
            obj = getattr(obj, attr, None)
            if obj is None:
                break
        if isinstance(obj, nn.ModuleList) and len(obj) > 0:
            return obj
    # Unknown architecture: the only ModuleList as long as the config's layer count.
    count = getattr(getattr(model, "config", None), "num_hidden_layers", None)
    lists = [m for m in model.modules() if isinstance(m, nn.ModuleList) and len(m) == count]
    if len(lists) == 1:
        return lists[0]
    raise ValueError(
        f"cannot find the decoder blocks of {type(model).__name__}: expected one of "
        f"{', '.join(_BLOCK_PATHS)} to be an nn.ModuleList"
    )


def block_linears(block: nn.Module) -> dict[str, nn.Linear]:
    """The prunable layers of a block: every ``nn.Linear``, by name inside the block."""
    return {name: m for name, m in block.named_modules() if isinstance(m, nn.Linear)}


def hidden_of(output: Any) -> torch.Tensor:
    """Blocks return the hidden states, or a tuple starting with them (older models)."""
    return output[0] if isinstance(output, (tuple, list)) else output


@dataclass
class BlockCall:
    """How the model called one block for one window, except for the hidden states."""

    args: tuple[Any, ...]
    kwargs: dict[str, Any]
    hidden_key: str | None  # None: hidden states were the first positional argument

    def run(self, block: nn.Module, hidden: torch.Tensor) -> torch.Tensor:
        if self.hidden_key is None:
            return hidden_of(block(hidden, *self.args, **self.kwargs))
        return hidden_of(block(*self.args, **{self.hidden_key: hidden}, **self.kwargs))


@dataclass
class CapturedInputs:
    """Block-0 hidden states per window and each block's call per window."""

    hidden: list[torch.Tensor]
    calls: list[list[BlockCall]]  # calls[block][window]


class _StopForward(Exception):
    """Raised by the last block's recorder: nothing after the blocks needs to run."""


def _same(a: Any, b: Any) -> bool:
    """Structural equality for captured call arguments (tensors compared by value)."""
    if a is b:
        return True
    if isinstance(a, torch.Tensor) or isinstance(b, torch.Tensor):
        return (
            isinstance(a, torch.Tensor) and isinstance(b, torch.Tensor)
            and a.shape == b.shape and a.dtype == b.dtype and a.device == b.device
            and torch.equal(a, b)
        )
    if isinstance(a, (tuple, list)) and type(a) is type(b):
        return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b))
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(_same(a[k], b[k]) for k in a)
    try:
        return bool(a == b)
    except Exception:  # noqa: BLE001 - objects without a usable == (e.g. ambiguous truth values)
        return False


class _CallPool:
    """Shares identical calls across windows and blocks, so N windows of equal length
    keep one copy of the masks and rotary tables instead of N."""

    def __init__(self) -> None:
        self._calls: list[BlockCall] = []

    def intern(self, call: BlockCall) -> BlockCall:
        for known in self._calls:
            if known.hidden_key == call.hidden_key and _same(known.args, call.args) \
                    and _same(known.kwargs, call.kwargs):
                return known
        self._calls.append(call)
        return call


def _sanitize(kwargs: dict[str, Any]) -> dict[str, Any]:
    clean = dict(kwargs)
    for key in _CACHE_KWARGS:
        if key in clean:
            clean[key] = None
    if "use_cache" in clean:
        clean["use_cache"] = False
    return clean


def _model_device(model: nn.Module) -> torch.device:
    return next(model.parameters()).device


def capture_block_inputs(
    model: nn.Module, windows: Sequence[torch.Tensor], *, progress: bool = True
) -> CapturedInputs:
    """Record block 0's inputs and every block's call arguments for each window.

    Each block's ``forward`` is temporarily replaced by a recorder that returns its input
    unchanged, so the pass costs only the embeddings plus whatever the model computes once
    for all blocks (masks, rotary tables); the last block's recorder stops the forward.
    """
    blocks = find_decoder_blocks(model)
    hidden: list[torch.Tensor] = []
    calls: list[list[BlockCall]] = [[] for _ in blocks]
    pool = _CallPool()

    def recorder(index: int) -> Any:
        def forward(*args: Any, **kwargs: Any) -> torch.Tensor:
            if args:
                h, rest, key = args[0], tuple(args[1:]), None
            elif "hidden_states" in kwargs:
                key = "hidden_states"
                h, rest = kwargs.pop(key), ()
            else:
                raise ValueError(f"block {index} was called without hidden states")
            calls[index].append(pool.intern(BlockCall(rest, _sanitize(kwargs), key)))
            if index == 0:
                hidden.append(h.detach())
            if index == len(blocks) - 1:
                raise _StopForward
            return h

        return forward

    # Keep any instance-level forward (e.g. accelerate's hooks) to restore it exactly.
    saved = [block.__dict__.get("forward") for block in blocks]
    for i, block in enumerate(blocks):
        block.forward = recorder(i)
    device = _model_device(model)
    try:
        with torch.no_grad():
            for row in tqdm(windows, desc="capturing block inputs", unit="window",
                            disable=not progress):
                try:
                    model(input_ids=row.reshape(1, -1).to(device), use_cache=False)
                except _StopForward:
                    continue
                raise ValueError("the model's forward finished without calling its last block")
    finally:
        for block, forward in zip(blocks, saved):
            del block.forward
            if forward is not None:
                block.forward = forward
    for i, per_block in enumerate(calls):
        if len(per_block) != len(windows):
            raise ValueError(
                f"block {i} was called {len(per_block)} times for {len(windows)} windows; "
                "the model skips or repeats blocks (layer drop?), which the pipeline cannot follow"
            )
    return CapturedInputs(hidden, calls)
