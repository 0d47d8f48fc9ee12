"""Cutting a batch into sub-batches (``split``) and a global batch into ranks' parts (``shard``).

Both are pure functions of the batch, so they never move a stream's position.

>>> items = [{"stats": {"words": w}} for w in (5, 1, 1, 1, 1, 1)]
>>> [len(sub) for sub in split_batch(items, SplitCount(2), by="words")]
[1, 5]
>>> [shard_range(5, r, 2) for r in range(2)]
[(0, 3), (3, 5)]
"""

from __future__ import annotations

from typing import Any

from .batching import SplitCount, StatSize, balanced_bounds, stat_value


def split_batch(batch: list[Any], size: StatSize | SplitCount, by: str = "docs") -> list[list[Any]]:
    """The sub-batches of one batch (see :meth:`Stream.split`)."""
    if isinstance(size, StatSize):
        subs: list[list[Any]] = []
        total = 0
        for item in batch:
            value = stat_value(item, size.stat, size)
            if subs and subs[-1] and total + value <= size.amount:
                subs[-1].append(item)
                total += value
            else:
                subs.append([item])
                total = value
        return subs
    bounds = balanced_bounds([stat_value(it, by) for it in batch], size.count)
    return [batch[a:b] for a, b in zip(bounds, bounds[1:]) if b > a]


def shard_range(n: int, rank: int, world_size: int) -> tuple[int, int]:
    """Rank ``rank``'s contiguous share ``[start, stop)`` of ``n`` things, by count.

    >>> [shard_range(5, r, 2) for r in range(2)]
    [(0, 3), (3, 5)]
    """
    base, extra = divmod(n, world_size)
    start = rank * base + min(rank, extra)
    return start, start + base + (1 if rank < extra else 0)


def shard_batch(
    element: list[Any], rank: int, world_size: int, *, by: str = "docs", sub_batches: bool = False
) -> list[Any]:
    """This rank's part of a global batch: items cut into ``world_size`` contiguous parts
    balanced by ``by``; or, for a list of sub-batches, ``shard_range`` of them by count."""
    if sub_batches:
        start, stop = shard_range(len(element), rank, world_size)
        return element[start:stop]
    bounds = balanced_bounds([stat_value(it, by) for it in element], world_size)
    return element[bounds[rank] : bounds[rank + 1]]
