"""Tensors of a safetensors checkpoint folder, read by name through the core's validating reader.

A folder holds ``model.safetensors`` or shards named by ``model.safetensors.index.json``; its
shards are found by the core's rule (``find_checkpoint``: the index's shards when there is
one, refusing a ``.safetensors`` file it does not name; else every ``.safetensors`` file), the
same rule the streaming engine follows. :class:`CheckpointFolder` maps every tensor name to its
shard from the shard headers (never trusting the index alone) and loads just the tensors
asked for.
"""

from __future__ import annotations

import math
import os
from collections import defaultdict
from collections.abc import Iterable
from pathlib import Path

import torch

from ._C import find_checkpoint, load_safetensors, safetensors_header


# safetensors dtype names of the floating-point types a model is stored in.
_FLOAT_DTYPES = {"F32": torch.float32, "BF16": torch.bfloat16, "F16": torch.float16, "F64": torch.float64}


class CheckpointFolder:
    """The safetensors tensors of a Hugging Face folder, by name."""

    def __init__(self, folder: str | os.PathLike[str]) -> None:
        self.folder = Path(folder)
        shards = [self.folder / name for name in find_checkpoint(str(self.folder))]
        self.shard_of: dict[str, Path] = {}
        self._float_elements: dict[torch.dtype, int] = defaultdict(int)
        for shard in shards:
            for name, info in safetensors_header(str(shard))["tensors"].items():
                if name in self.shard_of:
                    raise ValueError(f"{shard}: tensor {name!r} is also in {self.shard_of[name].name}")
                self.shard_of[name] = shard
                if info["dtype"] in _FLOAT_DTYPES:
                    self._float_elements[_FLOAT_DTYPES[info["dtype"]]] += math.prod(info["shape"])

    @property
    def dtype(self) -> torch.dtype:
        """The floating-point dtype holding most of the checkpoint's elements (its storage dtype)."""
        if not self._float_elements:
            raise ValueError(f"{self.folder}: the checkpoint holds no floating-point tensor")
        return max(self._float_elements.items(), key=lambda item: item[1])[0]

    @property
    def float_elements(self) -> int:
        """Elements of the checkpoint's floating-point tensors."""
        return sum(self._float_elements.values())

    def load(self, names: Iterable[str], dtype: torch.dtype | None = None) -> dict[str, torch.Tensor]:
        """The named tensors (copies), converted to ``dtype`` if given."""
        by_shard: dict[Path, list[str]] = defaultdict(list)
        for name in names:
            if name not in self.shard_of:
                raise ValueError(f"{self.folder}: the checkpoint has no tensor {name!r}")
            by_shard[self.shard_of[name]].append(name)
        tensors: dict[str, torch.Tensor] = {}
        for shard, wanted in by_shard.items():
            for name, tensor in load_safetensors(str(shard), wanted).items():
                tensors[name] = tensor if dtype is None else tensor.to(dtype)
        return tensors

