"""torch.distributed for runs launched by torchrun: one process per rank, gloo between CPUs and
NCCL between GPUs. Without torchrun every helper here is the identity of a single process."""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from datetime import timedelta
from typing import TypeVar

import torch
import torch.distributed as dist

T = TypeVar("T")


class RankFailed(RuntimeError):
    """Another rank failed in the same step: it printed the reason; this one stops with it."""


_stopped_together = False  # a step failed and every rank knows it


def launched_by_torchrun() -> bool:
    return int(os.environ.get("WORLD_SIZE", "1")) > 1


def init_from_environment(timeout_minutes: float = 30) -> None:
    """Join the process group that torchrun describes in the environment (its own rendezvous:
    MASTER_ADDR, MASTER_PORT, RANK, WORLD_SIZE). CPU tensors go through gloo and, where torch
    has CUDA, GPU tensors through NCCL. A no-op without torchrun or when already joined."""
    if not launched_by_torchrun() or dist.is_initialized():
        return
    backend = "cpu:gloo,cuda:nccl" if torch.cuda.is_available() else "gloo"
    if torch.cuda.is_available():
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
    dist.init_process_group(backend=backend, timeout=timedelta(minutes=timeout_minutes))


def shutdown() -> None:
    if dist.is_initialized():
        dist.destroy_process_group()


def rank_and_world() -> tuple[int, int]:
    if dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def is_main() -> bool:
    return rank_and_world()[0] == 0


def together(step: Callable[[], T]) -> T:
    """Run ``step`` on every rank, then agree on the outcome: if any rank failed, every rank
    stops (the failed one with its own error, the others with RankFailed), so that no rank goes
    on to a step whose inputs another rank did not produce."""
    if not dist.is_initialized():
        return step()
    error: BaseException | None = None
    result: T | None = None
    try:
        result = step()
    except Exception as err:  # reported below, after the others have been told
        error = err
    failed = torch.tensor([0 if error is None else 1], dtype=torch.int64)
    dist.all_reduce(failed)
    global _stopped_together
    _stopped_together = bool(failed.item())
    if error is not None:
        raise error
    if failed.item():
        raise RankFailed(f"{failed.item()} other rank(s) failed; see their messages")
    return result  # type: ignore[return-value]


def wait_for_every_rank_after_a_failure() -> None:
    """After a step that failed on some rank: wait until every rank has reported its error, so
    that torchrun, which stops the other ranks once one exits, does not cut their messages."""
    if dist.is_initialized() and _stopped_together:
        dist.barrier()


def broadcast_flag(flag: bool | None) -> bool:
    """Rank 0's ``flag`` on every rank."""
    if not dist.is_initialized():
        return bool(flag)
    value = torch.tensor([int(bool(flag))], dtype=torch.int64)
    dist.broadcast(value, src=0)
    return bool(value.item())


def sum_counts(counts: Mapping[str, int | float]) -> dict[str, int | float]:
    """Counts summed over the ranks (fp64, so byte and element counts stay exact below 2**53);
    times become the slowest rank's."""
    if not dist.is_initialized():
        return dict(counts)
    keys = [k for k in counts if k != "seconds"]  # the same order on every rank: the engine's
    summed = torch.tensor([float(counts[k]) for k in keys], dtype=torch.float64)
    dist.all_reduce(summed)
    out: dict[str, int | float] = {k: int(v) for k, v in zip(keys, summed.tolist())}
    if "seconds" in counts:
        slowest = torch.tensor([float(counts["seconds"])], dtype=torch.float64)
        dist.all_reduce(slowest, op=dist.ReduceOp.MAX)
        out["seconds"] = slowest.item()
    return out


def all_reduce_fp64(tensors: list[torch.Tensor]) -> None:
    """Sum each tensor over the ranks in place, in fp64 and in the order given, so that the
    result depends on the world size only through rounding (and not on arrival order)."""
    if not dist.is_initialized():
        return
    for t in tensors:
        wide = t.to(torch.float64)
        dist.all_reduce(wide)
        t.copy_(wide)
