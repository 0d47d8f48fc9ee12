"""The few collectives training needs, in the forms the compiled step and the loop want.

Inside the compiled update the gradient sum goes through
``torch.distributed._functional_collectives``: those are traceable, so the all-reduce is part of
the one compiled graph instead of a graph break (measured: compiles with gloo and inductor).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence

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


def sub_batch_indices(counts: Sequence[Sequence[int]], rank: int) -> list[int]:
    """The global indices of ``rank``'s sub-batches, from every rank's sub-batch count per
    stream (``counts[r][s]``): the order a single process splitting the same global batch uses,
    each stream's sub-batches in rank order, stream after stream. The dropout key of a
    sub-batch follows its index, so 2 ranks train as 1 process with "2 splits" even with
    several streams (rank-major numbering gave the second rank's first stream the first rank's
    second stream's key).

    >>> sub_batch_indices([[1, 1], [1, 1]], rank=1)   # 1 process: [a0, a1, b0, b1]
    [1, 3]
    """
    out: list[int] = []
    before = 0  # sub-batches of the earlier streams, all ranks
    for s in range(len(counts[rank])):
        start = before + sum(counts[r][s] for r in range(rank))
        out.extend(range(start, start + counts[rank][s]))
        before += sum(counts[r][s] for r in range(len(counts)))
    return out


def global_stats(
    info: DistInfo, totals: Mapping[str, torch.Tensor], per_stream: Mapping[str, int]
) -> tuple[dict[str, torch.Tensor], list[int]]:
    """The step's stats summed over ranks, and the global indices of this rank's sub-batches.

    ``per_stream`` is this rank's sub-batch count for each training stream (by the key path
    that names the stream in messages, ``train_data.ner``). The counts go first, each rank in
    its own row (:func:`sub_batch_indices` numbers the sub-batches from them); then the stats.
    Two all-reduces, not one: a rank whose share of a stream's global batch is empty (a batch of
    fewer documents than ranks) lacks that stream's stats, so one combined tensor would differ
    in size between ranks (gloo aborts, NCCL hangs). With the counts first, every rank raises
    the same :class:`StreamError` instead.

    >>> global_stats(DistInfo(), {"words": torch.tensor(7.0)}, per_stream={"train_data.ner": 2})
    ({'words': tensor(7.)}, [0, 1])
    """
    if not info.is_distributed:
        return dict(totals), list(range(sum(per_stream.values())))
    names = list(per_stream)
    # on the rank's device: NCCL reduces CUDA tensors only (small copies, once per step)
    counts = torch.zeros(info.world_size, len(names), dtype=torch.float64, device=info.device)
    counts[info.rank] = torch.tensor([float(per_stream[n]) for n in names], dtype=torch.float64)
    dist.all_reduce(counts)
    table = [[int(c) for c in row] for row in counts.tolist()]
    for s, stream in enumerate(names):
        empty = [r for r, row in enumerate(table) if row[s] == 0]
        if empty:
            from ..stream.errors import EmptyShareError

            raise EmptyShareError(
                f"{stream}: a training batch left rank{'s' if len(empty) > 1 else ''} "
                f"{', '.join(map(str, empty))} of {info.world_size} without documents (each "
                "rank trains on its own part of each stream's global batch): raise "
                f"{stream}.batch_size or run fewer processes"
            )
    stats = sorted(totals)
    t = torch.tensor([float(totals[n]) for n in stats], dtype=torch.float64, device=info.device)
    dist.all_reduce(t)
    summed = {n: torch.tensor(v, dtype=totals[n].dtype) for n, v in zip(stats, t.tolist())}
    return summed, sub_batch_indices(table, info.rank)


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
