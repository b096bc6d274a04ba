"""torch.distributed for runs launched by torchrun: one process per rank, gloo between CPUs and
NCCL between GPUs. Without torchrun every helper here is the identity of a single process."""

from __future__ import annotations

import hashlib
import os
from collections.abc import Callable, Iterable, Mapping, Sequence
from datetime import timedelta
from typing import Any, TypeVar

import torch
import torch.distributed as dist

T = TypeVar("T")
W = TypeVar("W")


class RankFailed(RuntimeError):
    """Another rank failed in the same step: it printed the reason; this one stops with it."""


_stopped_together = False  # a step failed and every rank knows it


def launched_by_torchrun() -> bool:
    """torchrun (or any launcher of env:// rendezvous) sets RANK and WORLD_SIZE for every rank,
    also for a single one, which then joins a group of one: its collectives are the identity,
    but they run (NCCL on one GPU, for instance)."""
    return "RANK" in os.environ and "WORLD_SIZE" in os.environ


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


def shutdown(*, finished: bool) -> None:
    """Leave the process group. After a command that finished on this rank, first wait for every
    rank to finish too, so that no rank tears down its gloo connections while a peer may still
    be using them (the suspected cause of a rare abort, "terminate called without an active
    exception", in a rank of a successful run). After a failure there is no wait: the ranks that
    failed together have already met in ``wait_for_every_rank_after_a_failure``."""
    if not dist.is_initialized():
        return
    if finished:
        dist.barrier()
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


def my_share(windows: Sequence[W], what: str = "calibration windows") -> list[W]:
    """This rank's contiguous slice of ``windows`` (sizes differ by at most one); all of them
    without torchrun."""
    rank, world = rank_and_world()
    rows = list(windows)
    if world == 1:
        return rows
    if len(rows) < world:
        raise ValueError(f"{len(rows)} {what} cannot be shared between {world} ranks: give at least one per rank")
    base, extra = divmod(len(rows), world)
    start = rank * base + min(rank, extra)
    return rows[start:start + base + (rank < extra)]


def refuse_disagreement(facts: Mapping[str, bytes]) -> None:
    """Refuse, on every rank, a job whose ranks were given different ``facts`` (the same keys on
    every rank: the command line, the contents of the files it reads). Runs before any work, so a
    rank started with another recipe or another statistics file cannot mix its results in."""
    if not dist.is_initialized():
        return
    digests = torch.tensor([int.from_bytes(hashlib.sha256(value).digest()[:7], "little") for value in facts.values()],
                           dtype=torch.int64)
    high, low = digests.clone(), digests.clone()
    dist.all_reduce(high, op=dist.ReduceOp.MAX)
    dist.all_reduce(low, op=dist.ReduceOp.MIN)
    differing = [name for name, h, l in zip(facts, high.tolist(), low.tolist()) if h != l]
    if differing:
        raise ValueError(f"the ranks were started with different {' and '.join(differing)}: "
                         "start every rank with the same command and the same files")


def file_fingerprint(path: str | os.PathLike[str] | None) -> bytes:
    """The contents' SHA-256 of a file, or what stands in for it (no file given, none there), so
    that every rank has a value to compare and none fails alone."""
    if path is None:
        return b"none given"
    try:
        with open(path, "rb") as file:
            return hashlib.file_digest(file, "sha256").digest()
    except OSError as err:
        return f"unreadable: {err.strerror}".encode()


def sum_states(accumulators: Iterable[Any]) -> None:
    """Sum each statistics accumulator's state (``ActivationStats``, ``OutputStats``,
    ``GramStats``) over the ranks, one fp64 all-reduce each in the order given (the same on
    every rank): afterwards every rank holds the statistics of all the windows."""
    if not dist.is_initialized():
        return
    for accumulator in accumulators:
        state = accumulator.state()
        dist.all_reduce(state)
        accumulator.load_state(state)


def sum_over_ranks(values: Sequence[float]) -> list[float]:
    if not dist.is_initialized():
        return list(values)
    total = torch.tensor(list(values), dtype=torch.float64)
    dist.all_reduce(total)
    return total.tolist()


def same_on_every_rank(tensors: Sequence[torch.Tensor]) -> int:
    """Make ``tensors`` (a pruned block's parameters) rank 0's on every rank.

    Every rank prunes from the same summed statistics, so the results normally agree already:
    a position-weighted fp64 checksum per tensor is compared (two small all-reduces), and only
    tensors that differ (a near-tie rounded otherwise on another device) are broadcast from
    rank 0. Returns how many were."""
    if not dist.is_initialized() or not tensors:
        return 0
    sums = torch.stack([_checksum(t) for t in tensors])
    high, low = sums.clone(), sums.clone()
    dist.all_reduce(high, op=dist.ReduceOp.MAX)
    dist.all_reduce(low, op=dist.ReduceOp.MIN)
    differing = [t for t, h, l in zip(tensors, high.tolist(), low.tolist()) if h != l]
    for t in differing:
        dist.broadcast(t.data, src=0)
    return len(differing)


def _checksum(t: torch.Tensor) -> torch.Tensor:
    """Equal for equal tensors (the same computation), different, almost surely, for tensors
    that differ in any entry or in where their entries sit; no copy of a weight is made."""
    matrix = t.detach().float().reshape(t.shape[0] if t.dim() else 1, -1)
    columns = torch.linspace(1.0, 2.0, matrix.shape[1], device=matrix.device)
    rows = torch.linspace(1.0, 3.0, matrix.shape[0], dtype=torch.float64, device=matrix.device)
    return ((matrix @ columns).double() @ rows).cpu()
