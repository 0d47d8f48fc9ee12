"""The few collectives training needs, in the forms the compiled step and the loop want.

Inside the compiled update the gradient sum goes through
``torch.distributed._functional_collectives``: those are traceable, so the all-reduce is part of
the one compiled graph instead of a graph break (measured: compiles with gloo and inductor).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping

import torch
import torch.distributed as dist
import torch.distributed._functional_collectives as fcol

from .process_group import DistInfo


def make_all_reduce(info: DistInfo) -> Callable[[torch.Tensor], torch.Tensor] | None:
    """A ``flat -> flat`` sum across ranks for ``make_step(all_reduce=...)``; None when alone."""
    if not info.is_distributed:
        return None

    # The group by name, not the ProcessGroup object: a compiled step would keep the object
    # in its guards, so destroy_process_group could not free the group (see init_distributed).
    group_name = dist.group.WORLD.group_name

    def all_reduce(flat: torch.Tensor) -> torch.Tensor:
        return fcol.all_reduce(flat, "sum", group_name)

    return all_reduce


def gather_strings(info: DistInfo, value: str) -> list[str]:
    """Every rank's ``value``, in rank order (used to compare fingerprints)."""
    if not info.is_distributed:
        return [value]
    out: list[str | None] = [None] * info.world_size
    dist.all_gather_object(out, value)
    return [str(v) for v in out]


def check_same_everywhere(info: DistInfo, what: str, value: str) -> None:
    """Fail on every rank if ``value`` (a fingerprint) differs between ranks."""
    values = gather_strings(info, value)
    if len(set(values)) > 1:
        detail = ", ".join(f"rank {r}: {v[:12]}" for r, v in enumerate(values))
        raise RuntimeError(f"{what} differ across ranks ({detail})")


def sum_across_ranks(info: DistInfo, values: Mapping[str, float]) -> dict[str, float]:
    """Sum named numbers over ranks (eager; for metrics such as validation counts)."""
    if not info.is_distributed:
        return dict(values)
    names = sorted(values)
    # on the rank's device: NCCL reduces CUDA tensors only
    t = torch.tensor([float(values[n]) for n in names], dtype=torch.float64, device=info.device)
    dist.all_reduce(t)
    return dict(zip(names, t.tolist()))


def global_stats(
    info: DistInfo, totals: Mapping[str, torch.Tensor], n_local: int
) -> tuple[dict[str, torch.Tensor], int]:
    """The step's stats summed over ranks, and this rank's first global sub-batch index.

    Each rank's sub-batch count goes first, in its own slot (a prefix sum of those gives
    ``first_index``, so the dropout key of every sub-batch is the one a single process splitting
    the same global batch would use); then the stats. Two all-reduces, not one: a rank whose
    share of the global batch is empty (a batch of fewer documents than ranks) has no stats, so
    one combined tensor would differ in size between ranks (gloo aborts, NCCL hangs). With the
    counts first, every rank raises the same :class:`StreamError` instead.

    >>> global_stats(DistInfo(), {"words": torch.tensor(7.0)}, n_local=2)
    ({'words': tensor(7.)}, 0)
    """
    if not info.is_distributed:
        return dict(totals), 0
    # on the rank's device: NCCL reduces CUDA tensors only (small copies, once per step)
    counts = torch.zeros(info.world_size, dtype=torch.float64, device=info.device)
    counts[info.rank] = float(n_local)
    dist.all_reduce(counts)
    per_rank = [int(c) for c in counts.tolist()]
    empty = [r for r, c in enumerate(per_rank) if c == 0]
    if empty:
        from ..stream.errors import StreamError

        raise StreamError(
            f"a training batch left rank{'s' if len(empty) > 1 else ''} "
            f"{', '.join(map(str, empty))} of {info.world_size} without documents (each rank "
            "trains on its own part of the global batch): raise the batch_size of "
            "[train_data] or run fewer processes"
        )
    names = sorted(totals)
    t = torch.tensor([float(totals[n]) for n in names], dtype=torch.float64, device=info.device)
    dist.all_reduce(t)
    summed = {n: torch.tensor(v, dtype=totals[n].dtype) for n, v in zip(names, t.tolist())}
    return summed, sum(per_rank[: info.rank])


def any_rank(info: DistInfo, flag: bool) -> bool:
    """True on every rank when ``flag`` is true on any: a decision all ranks must take alike
    (stopping after a signal that reached one rank, or reached them on either side of a step).

    >>> any_rank(DistInfo(), True)
    True
    """
    if not info.is_distributed:
        return flag
    t = torch.tensor([1.0 if flag else 0.0], device=info.device)
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return bool(t.item())


def barrier(info: DistInfo) -> None:
    if info.is_distributed:
        dist.barrier()
