"""Shuffled orders as pure functions of (seed, epoch): blocks of source indices, each permuted.

An epoch visits the source indices ``0..N`` cut into consecutive *blocks*:

- no shuffle: one block ``[0, N)`` in source order;
- ``"dataset"``: one block ``[0, N)`` permuted;
- a chunk expression (``"2000 words"``): blocks cut greedily by that stat in source order (the
  same rule as batching), each permuted on its own ("shuffle within chunks").

Block ``[start, stop)`` of epoch ``e`` is permuted by a generator seeded with
``(seed, e, start)`` only, so any block of any epoch can be rebuilt without the others: a
stream's position is ``(epoch, block, offset)`` and resuming needs no history.

>>> block_order(0, 0, 0, 5) == block_order(0, 0, 0, 5), sorted(block_order(0, 1, 0, 5))
(True, [0, 1, 2, 3, 4])
"""

from __future__ import annotations

import random
from collections.abc import Callable

from .batching import StatSize


def block_order(seed: int | None, epoch: int, start: int, stop: int) -> list[int]:
    """Source indices of block ``[start, stop)`` in the order epoch ``epoch`` visits them.

    ``seed=None`` keeps source order. ``random.Random`` seeded from a string is stable across
    Python versions and processes (no ``PYTHONHASHSEED`` dependence).
    """
    order = list(range(start, stop))
    if seed is not None:
        random.Random(f"pureml.stream.shuffle:{seed}:{epoch}:{start}").shuffle(order)
    return order


class ChunkBlocks:
    """Greedy chunk boundaries over source order, computed on demand and remembered.

    ``measure(i)`` returns the stat of source item ``i`` (or ``None`` when a filter before the
    shuffle dropped it, which then weighs nothing).
    """

    def __init__(self, size: StatSize, measure: Callable[[int], int | None], n: int) -> None:
        self.size = size
        self.measure = measure
        self.n = n
        self._stop: dict[int, int] = {}

    def stop(self, start: int) -> int:
        """End of the block that starts at ``start`` (``start`` must itself be a block start)."""
        if start not in self._stop:
            total, i, taken = 0, start, 0
            while i < self.n:
                value = self.measure(i)
                if value is not None:
                    if taken and total + value > self.size.amount:
                        break
                    total += value
                    taken += 1
                i += 1
            self._stop[start] = i
        return self._stop[start]
