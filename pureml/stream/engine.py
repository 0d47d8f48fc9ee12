"""Iterating a stream: item positions, greedy batching, and the iterator that tracks state.

Items of the indexed part come with the position just after them, ``(epoch, block start,
block stop, offset)``; every later stage passes that position along with its element (a
batch carries its last item's), so the consumer-side iterator knows the position after the
last element it handed out, whatever prefetch threads have read ahead. That position is the
state: greedy batching restarts exactly at a batch boundary.

>>> from .sources import ListSource
>>> it = StreamIterator(ListSource("abc"), (), {"items": 3, "chain": []}, None)
>>> next(it), it.state_dict()["offset"]
('a', 1)
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from .batching import DatasetSize, StatSize, stat_value
from .errors import StreamError
from .prefetch import prefetch as _prefetch
from .shuffle import ChunkBlocks, block_order
from .sources import Source
from .split import shard_batch, split_batch
from .stages import (
    INDEXED,
    Apply,
    Batch,
    Filter,
    Loop,
    Map,
    Prefetch,
    Shard,
    Shuffle,
    Split,
)

STATE_VERSION = 1
# what a state keeps besides the position to say on resume what changed (fingerprint.py);
# older states lack them, and a step record leaves them out (see ``position_of``)
IDENTITY_KEYS = ("functions", "source")
DROP = object()  # what a filtered-out item evaluates to

Pos = tuple[int, int, int | None, int]  # (epoch, block start, block stop or None, offset)


class Indexed:
    """The indexed part of a chain: values of source items and their per-epoch order."""

    def __init__(self, source: Source, stages: tuple[Any, ...]) -> None:
        self.source = source
        self.ops: list[Map | Filter] = []
        self.shuffle: Shuffle | None = None
        self.pre = 0  # ops before the shuffle (what chunk stats are measured on)
        self.loop = False
        for s in stages:
            if isinstance(s, Shuffle):
                self.shuffle, self.pre = s, len(self.ops)
            elif isinstance(s, Loop):
                self.loop = True
            else:
                self.ops.append(s)
        self.n = len(source)
        self.chunks: ChunkBlocks | None = None
        if self.shuffle is not None and isinstance(self.shuffle.mode, StatSize):
            size = self.shuffle.mode
            self.chunks = ChunkBlocks(size, self._measure, self.n)

    def _measure(self, index: int) -> int | None:
        value = self.value(index, self.pre)
        assert self.chunks is not None
        return None if value is DROP else stat_value(value, self.chunks.size.stat, self.chunks.size)

    def value(self, index: int, upto: int | None = None) -> Any:
        """Item ``index`` after the first ``upto`` ops (all by default); ``DROP`` if filtered."""
        ops = self.ops if upto is None else self.ops[:upto]
        first, value = 0, None
        for j in range(len(ops) - 1, -1, -1):  # start after the latest cached result
            op = ops[j]
            if isinstance(op, Map) and op.cache is not None and index in op.cache:
                first, value = j + 1, op.cache[index]
                break
        if first == 0:
            value = self.source[index]
        for op in ops[first:]:
            if value is DROP:
                break
            try:
                result = op.fn(value)
            except Exception as e:  # the user's own exception, told which document raised it
                e.add_note(f"while running map/filter on {self.source.describe(index)}")
                raise
            if isinstance(op, Map):
                value = result
                if op.cache is not None:
                    op.cache[index] = value
            elif not result:
                value = DROP
        return value

    def stop(self, start: int) -> int:
        return self.n if self.chunks is None else self.chunks.stop(start)

    def order(self, epoch: int, start: int, stop: int) -> list[int]:
        seed = None if self.shuffle is None else self.shuffle.seed
        return block_order(seed, epoch, start, stop)

    def items(self, pos: Pos) -> Iterator[tuple[Any, Pos]]:
        """(item, position just after it) from ``pos`` on."""
        epoch, start, stop, offset = pos
        while True:
            yielded = False
            while start < self.n:
                if stop is None:
                    stop = self.stop(start)
                order = self.order(epoch, start, stop)
                for k in range(offset, len(order)):
                    value = self.value(order[k])
                    if value is not DROP:
                        yielded = True
                        yield value, (epoch, start, stop, k + 1)
                start, stop, offset = stop, None, 0
            if not self.loop:
                return
            if self.n == 0 or (not yielded and pos[3] == 0 and pos[1] == 0):
                raise StreamError(f"loop(): epoch {epoch} yielded no item (all filtered out?)")
            pos = (epoch + 1, 0, None, 0)
            epoch, start, stop, offset = epoch + 1, 0, None, 0


def batches(pairs: Iterator[tuple[Any, Pos]], stage: Batch) -> Iterator[tuple[Any, Pos]]:
    batch: list[Any] = []
    total, last, first_epoch = 0, None, 0
    size = stage.size
    for item, pos in pairs:
        if isinstance(size, DatasetSize):
            if batch and pos[0] != last[0]:  # type: ignore[index]
                yield batch, last
                batch = []
        else:
            value = stat_value(item, size.stat, size)
            if batch and total + value > size.amount:
                yield batch, last
                batch, total = [], 0
            if not batch and pos is not None:
                first_epoch = pos[0]
            elif not total and pos is not None and pos[0] > first_epoch + 1:
                # a looped stream whose items all have 0 of the stat would grow this batch forever
                raise StreamError(
                    f"batch({size}): a whole epoch of items has no {size.stat!r} "
                    "(empty documents?): no batch can ever fill"
                )
            total += value
        batch.append(item)
        last = pos
    # drop_last drops a partial batch only: one that reached its budget is kept
    if batch and not (stage.drop_last and isinstance(size, StatSize) and total < size.amount):
        yield batch, last


class Cursor:
    """Where one iteration stands: the position after the last element handed out.

    A :class:`Stream` keeps its latest iteration's cursor, not the iterator itself, so an
    iteration abandoned by ``break`` is collected (stopping its prefetch threads) while
    ``stream.state_dict()`` still describes where it stopped.
    """

    def __init__(
        self,
        stages: tuple[Any, ...],
        signature: dict[str, Any],
        start: Any,
        source: Source | None = None,
    ) -> None:
        self._sig = signature
        self._source = source
        if start is None:
            start = {"epoch": 0, "block": [0, None], "offset": 0, "skip": 0}
        self.anchor: Pos = (
            int(start["epoch"]),
            int(start["block"][0]),
            None if start["block"][1] is None else int(start["block"][1]),
            int(start["offset"]),
        )
        self.skip = int(start.get("skip", 0))
        self.replay = any(isinstance(s, Apply) for s in stages)
        self.pos: Pos = self.anchor
        self.count = 0  # elements handed out (used when replaying apply)

    def state_dict(self) -> dict[str, Any]:
        if self.replay:
            epoch, start, stop, offset = self.anchor
            skip = self.skip + self.count
        else:
            epoch, start, stop, offset = self.pos
            skip = 0
        state = {
            "version": STATE_VERSION,
            "epoch": epoch,
            "block": [start, stop],
            "offset": offset,
            "skip": skip,
            "items": self._sig["items"],
            "chain": list(self._sig["chain"]),
        }
        if "functions" in self._sig:
            state["functions"] = list(self._sig["functions"])
        # computed on the first call (not when iteration starts: reading a folder to predict
        # needs none) and shared, not copied: a trainer asks for the state at every step
        fingerprint = None if self._source is None else self._source.fingerprint()
        if fingerprint is not None:
            state["source"] = fingerprint
        return state


def position_of(state: dict[str, Any]) -> dict[str, Any]:
    """A state without what identifies the data and functions: the position alone, what a
    training step's record keeps (the same size whatever the number of files)."""
    return {k: v for k, v in state.items() if k not in IDENTITY_KEYS}


class StreamIterator(Iterator[Any]):
    """One pass over a stream; knows the position after what it handed out."""

    def __init__(
        self,
        source: Source,
        stages: tuple[Any, ...],
        signature: dict[str, Any],
        start: dict[str, Any] | None,
    ) -> None:
        self.source, self.stages = source, stages
        self.cursor = Cursor(stages, signature, start, source)
        self._it: Iterator[Any] | None = None

    def _build(self) -> Iterator[Any]:
        stages = self.stages
        n_indexed = 0
        while n_indexed < len(stages) and isinstance(stages[n_indexed], INDEXED):
            n_indexed += 1
        indexed = Indexed(self.source, stages[:n_indexed])
        it: Iterator[Any] = indexed.items(self.cursor.anchor)
        kind = "items"
        for stage in stages[n_indexed:]:
            it = self._stage(it, stage, kind)
            if isinstance(stage, Batch):
                kind = "batch"
            elif isinstance(stage, Split):
                kind = "sub_batches"
            elif isinstance(stage, Apply):
                kind = "opaque"
        if self.cursor.skip:
            it = _skip(it, self.cursor.skip)
        return it

    def _stage(self, it: Iterator[Any], stage: Any, kind: str) -> Iterator[Any]:
        if isinstance(stage, Batch):
            return batches(it, stage)
        if isinstance(stage, Map):
            fn = stage.fn
            return ((fn(x), pos) for x, pos in it)
        if isinstance(stage, Filter):
            fn = stage.fn
            return ((x, pos) for x, pos in it if fn(x))
        if isinstance(stage, Split):
            size, by = stage.size, stage.by
            return ((split_batch(x, size, by), pos) for x, pos in it)
        if isinstance(stage, Shard):
            rank, world, by, subs = stage.rank, stage.world_size, stage.by, kind == "sub_batches"
            return ((shard_batch(x, rank, world, by=by, sub_batches=subs), pos) for x, pos in it)
        if isinstance(stage, Prefetch):
            return _prefetch(it, stage.n)
        if isinstance(stage, Apply):
            # positions cannot cross an arbitrary generator: replay-based resume from here on
            values = (x for x, _ in it)
            return ((y, None) for y in stage.fn(values))
        raise TypeError(f"unknown stage {stage!r}")

    def __next__(self) -> Any:
        if self._it is None:
            self._it = self._build()
        value, pos = next(self._it)
        if pos is not None:
            self.cursor.pos = pos
        self.cursor.count += 1
        return value

    def close(self) -> None:
        """Stop background threads early (also happens when the iterator is collected)."""
        if self._it is not None and hasattr(self._it, "close"):
            self._it.close()

    def state_dict(self) -> dict[str, Any]:
        return self.cursor.state_dict()


def _skip(it: Iterator[Any], n: int) -> Iterator[Any]:
    for _ in range(n):
        if next(it, None) is None:
            return
    yield from it
