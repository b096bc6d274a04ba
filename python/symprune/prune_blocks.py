"""``symprune prune --low-memory``: prune a checkpoint one decoder block at a time, writing each
block's weights as soon as it is pruned, so that a model larger than memory is pruned with any
recipe that ``calibrate`` runs, the Gram methods (sparsegpt, admm, refit) included.

The blocks go through ``calibrate``'s loop (one block's weights and Grams in memory, the
sequential pipeline of ``prune_model``), so the weights equal those of ``symprune prune``. The
output folder has one shard per block plus one for the other tensors (embeddings, final norm,
output head), an index, the input folder's other files (config, tokenizer) and the report; it
appears whole or not at all (``atomic_folder``). Under torchrun the ranks share the windows and
rank 0 writes.
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Mapping, Sequence
from contextlib import nullcontext
from pathlib import Path
from typing import Any

import torch
from torch import nn

from . import distributed
from ._C import Recipe, find_checkpoint, save_safetensors
from .atomic_folder import atomic_folder
from .calibrate import calibrate
from .checkpoint import CheckpointFolder
from .report import REPORT_FILE, PruneReport

INDEX_FILE = "model.safetensors.index.json"


def prune_folder_by_blocks(
    model_dir: str | os.PathLike[str],
    out_dir: str | os.PathLike[str],
    calibration: torch.Tensor | Sequence[torch.Tensor],
    recipe: Recipe,
    *,
    dtype: torch.dtype | None = None,
    progress: bool = True,
    device: str | torch.device = "cpu",
    extra: Mapping[str, Any] | None = None,
) -> PruneReport:
    """Prune the checkpoint in ``model_dir`` by ``recipe`` on ``calibration`` windows, holding one
    block at a time, and write the pruned folder to ``out_dir`` (saved in ``dtype``, default the
    checkpoint's); ``extra`` goes into the report. Under torchrun each rank forwards its share of
    the windows (``calibrate``) and rank 0 writes; every write ends with an agreement, so a
    failed write stops every rank. Returns the run's report (also written to
    ``out_dir/symprune_report.json``)."""
    folder = CheckpointFolder(model_dir)
    dtype = dtype or folder.dtype
    stored = set(folder.shard_of)  # tied or non-persistent parameters are not written
    writer = distributed.is_main()
    with atomic_folder(Path(out_dir)) if writer else nullcontext(Path()) as tmp:
        block_files: list[tuple[str, list[str]]] = []

        def save_block(index: int, name: str, block: nn.Module) -> None:
            tensors = {f"{name}.{key}": value.detach().to("cpu", dtype).contiguous()
                       for key, value in block.named_parameters() if f"{name}.{key}" in stored}
            file = f"block-{index}.safetensors"  # renamed once the number of shards is known
            save_safetensors(str(tmp / file), tensors, {"format": "pt"})
            block_files.append((file, list(tensors)))

        def write_block(index: int, name: str, block: nn.Module) -> None:
            distributed.together(lambda: save_block(index, name, block) if writer else None)

        result = calibrate(model_dir, calibration, prune=recipe, progress=progress, device=device,
                           on_block_pruned=write_block)
        report = result.report
        assert report is not None  # calibrate with a recipe always reports
        report.command = "prune"
        report.extra.update(low_memory=True, dtype=str(dtype), **(extra or {}))
        if distributed.launched_by_torchrun():
            report.extra["ranks"] = distributed.rank_and_world()[1]

        def finish() -> None:
            _finish_folder(Path(model_dir), tmp, folder, block_files, stored, dtype)
            report.to_json(tmp / REPORT_FILE)

        distributed.together(lambda: finish() if writer else None)
    return report


def _finish_folder(model_dir: Path, out: Path, folder: CheckpointFolder, block_files: list[tuple[str, list[str]]],
                   stored: set[str], dtype: torch.dtype) -> None:
    """The other tensors in one more shard, the shards' final names, the index and the input
    folder's other files."""
    written = {name for _, names in block_files for name in names}
    rest = sorted(stored - written)
    loaded = folder.load(rest)
    save_safetensors(str(out / "rest.safetensors"),
                     {name: t.to(dtype) if t.is_floating_point() else t for name, t in loaded.items()},
                     {"format": "pt"})
    del loaded
    files = [*block_files, ("rest.safetensors", rest)]
    weight_map: dict[str, str] = {}
    for number, (file, names) in enumerate(files, start=1):
        final = f"model-{number:05d}-of-{len(files):05d}.safetensors"
        os.rename(out / file, out / final)
        weight_map.update(dict.fromkeys(names, final))
    total = sum((out / shard).stat().st_size for shard in set(weight_map.values()))
    (out / INDEX_FILE).write_text(json.dumps({"metadata": {"total_size": total}, "weight_map": weight_map},
                                             indent=2) + "\n")
    checkpoint_files = set(find_checkpoint(str(model_dir))) | {INDEX_FILE, REPORT_FILE}
    for path in sorted(model_dir.iterdir()):
        if path.is_file() and path.name not in checkpoint_files and not path.name.startswith("."):
            shutil.copy2(path, out / path.name)
