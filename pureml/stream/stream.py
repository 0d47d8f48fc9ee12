"""``Stream``: a chain of transforms over an indexed source, deterministic and resumable.

A stream has two parts:

1. the *indexed* part, before the first ``batch`` or ``apply``: ``map``, ``filter``,
   ``shuffle``, ``loop``. Items are visited epoch by epoch in an order that is a pure function
   of (seed, epoch) (see :mod:`pureml.stream.shuffle`); a position there is
   ``(epoch, block, offset)``: three integers.
2. the *sequential* part: ``batch``, ``split``, ``shard``, ``map``/``filter`` over batches,
   ``prefetch``, ``apply``. Every element carries the position of the source just after its
   last item; greedy batching restarts cleanly there, so that position is the whole state.

``state_dict()`` is the position after the last element handed to the consumer (prefetch
threads read ahead without moving it); ``load_state_dict(state)`` makes the next iteration
start there, parsing only what it yields. A chain containing ``apply`` (an arbitrary
generator, whose internal state is unknown) is resumed by replaying it from the last position
it was started at and skipping the elements already consumed: exact, but not free.

>>> s = Stream.from_items([{"id": str(i), "stats": {"words": i}} for i in range(1, 7)])
>>> [[it["id"] for it in b] for b in s.batch("6 words")]
[['1', '2', '3'], ['4'], ['5'], ['6']]
>>> it = iter(s.shuffle("dataset", seed=1).loop().batch("2 docs"))
>>> _ = next(it); state = it.state_dict()
>>> state["epoch"], state["offset"]
(0, 2)
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from typing import Any

import attrs

from .batching import (
    DatasetSize,
    SplitCount,
    StatSize,
    balanced_bounds,
    parse_size,
    stat_value,
)
from .errors import StreamError
from .prefetch import prefetch as _prefetch
from .shuffle import ChunkBlocks, block_order
from .sources import ListSource, Source

STATE_VERSION = 1
_DROP = object()

Pos = tuple[int, int, int | None, int]  # (epoch, block start, block stop or None, offset)


# -- stages (immutable descriptions; a Stream is a source plus a tuple of them) -------------


@attrs.frozen(eq=False)
class _Map:
    fn: Callable[[Any], Any]
    cache: dict[int, Any] | None  # by source index, shared by streams derived from this one


@attrs.frozen(eq=False)
class _Filter:
    fn: Callable[[Any], bool]


@attrs.frozen
class _Shuffle:
    mode: str | StatSize  # "dataset" or a chunk size
    seed: int


@attrs.frozen
class _Loop:
    pass


@attrs.frozen
class _Batch:
    size: StatSize | DatasetSize
    drop_last: bool


@attrs.frozen
class _Split:
    size: StatSize | SplitCount
    by: str


@attrs.frozen
class _Shard:
    rank: int
    world_size: int
    by: str


@attrs.frozen
class _Prefetch:
    n: int


@attrs.frozen(eq=False)
class _Apply:
    fn: Callable[[Iterator[Any]], Iterator[Any]]


_INDEXED = (_Map, _Filter, _Shuffle, _Loop)


def _describe(stage: Any) -> str:
    """What the resume check compares: kinds, sizes and seeds (not function identities)."""
    if isinstance(stage, _Map):
        return "map(cache)" if stage.cache is not None else "map"
    if isinstance(stage, _Filter):
        return "filter"
    if isinstance(stage, _Shuffle):
        return f"shuffle({stage.mode}, seed={stage.seed})"
    if isinstance(stage, _Loop):
        return "loop"
    if isinstance(stage, _Batch):
        return f"batch({stage.size}{', drop_last' if stage.drop_last else ''})"
    if isinstance(stage, _Split):
        return f"split({stage.size}, by={stage.by})"
    if isinstance(stage, _Shard):
        return f"shard({stage.rank}/{stage.world_size}, by={stage.by})"
    if isinstance(stage, _Prefetch):
        return f"prefetch({stage.n})"
    return "apply"


class Stream:
    """A lazily evaluated, re-iterable chain of transforms over a source of items.

    Every method returns a new ``Stream`` sharing the source (parsed items and ``map`` caches
    are shared, so a file is parsed once however many streams are built on it).
    Iterating twice gives the same sequence; each iteration starts from the loaded state
    (or the beginning), and ``state_dict()`` follows the most recent iteration.
    """

    def __init__(self, source: Source, stages: tuple[Any, ...] = ()) -> None:
        self.source = source
        self.stages = stages
        self._start: dict[str, Any] | None = None  # set by load_state_dict
        self._last: _StreamIterator | None = None

    # -- construction ----------------------------------------------------------------------

    @classmethod
    def from_items(cls, items: Iterable[Any], name: str = "iterable") -> Stream:
        """A stream over items given in memory (an iterable is materialised on first use)."""
        return cls(ListSource(items, name=name))

    def _with(self, stage: Any) -> Stream:
        return Stream(self.source, (*self.stages, stage))

    @property
    def _sequential(self) -> bool:
        return any(not isinstance(s, _INDEXED) for s in self.stages)

    def _kind(self) -> str:
        """What elements are at the end of the chain: items, batch, sub_batches or opaque."""
        kind = "items"
        for s in self.stages:
            if isinstance(s, _Batch):
                kind = "batch"
            elif isinstance(s, _Split):
                kind = "sub_batches"
            elif isinstance(s, _Apply):
                kind = "opaque"
        return kind

    def _batch_stat(self) -> str:
        for s in reversed(self.stages):
            if isinstance(s, _Batch):
                return s.size.stat if isinstance(s.size, StatSize) else "docs"
        return "docs"

    def map(self, fn: Callable[[Any], Any], *, cache: bool = False) -> Stream:
        """Apply ``fn`` to each item (before ``batch``) or each batch (after).

        ``cache=True`` (items only) keeps each result by source index, so a deterministic
        ``fn`` such as ``pipeline.preprocess`` runs once per document per run, not per epoch:

        >>> import itertools
        >>> calls = []
        >>> s = Stream.from_items([1, 2]).map(lambda x: calls.append(x) or x * 10, cache=True)
        >>> list(itertools.islice(s.loop(), 5))
        [10, 20, 10, 20, 10]
        >>> calls
        [1, 2]
        """
        if cache and self._sequential:
            raise StreamError("map(cache=True) caches items by source index: use it before batch()")
        return self._with(_Map(fn, {} if cache else None))

    def filter(self, fn: Callable[[Any], bool]) -> Stream:
        """Keep the items (or batches) for which ``fn`` is true."""
        return self._with(_Filter(fn))

    def shuffle(self, mode: str | int | bool = "dataset", *, seed: int = 0) -> Stream:
        """Shuffle each epoch: ``"dataset"`` (one permutation of everything) or within chunks
        cut by a stat expression (``"2000 words"``); ``False``/``None`` does nothing.

        The order of epoch ``e`` depends only on (seed, e); ``loop()`` reshuffles every epoch
        whether it comes before or after ``shuffle``.
        """
        if mode is False or mode is None:
            return self
        if self._sequential:
            raise StreamError("shuffle() works on items: put it before batch() and apply()")
        if any(isinstance(s, _Shuffle) for s in self.stages):
            raise StreamError("a stream can only be shuffled once")
        if mode is True:
            mode = "dataset"
        if mode == "fragment":
            raise StreamError(
                "shuffle('fragment') is not supported: sources are indexed, so 'dataset' costs "
                "no more; use 'dataset' or a chunk expression like '2000 words'"
            )
        size = parse_size(mode)
        if isinstance(size, SplitCount):
            raise StreamError(f"shuffle({mode!r}): expected 'dataset' or a stat expression")
        return self._with(_Shuffle("dataset" if isinstance(size, DatasetSize) else size, int(seed)))

    def loop(self) -> Stream:
        """Repeat forever, epoch after epoch (epoch ``e`` shuffled with (seed, e))."""
        if self._sequential:
            raise StreamError("loop() works on items: put it before batch() and apply()")
        if any(isinstance(s, _Loop) for s in self.stages):
            return self
        return self._with(_Loop())

    def batch(self, size: str | int, *, drop_last: bool = False) -> Stream:
        """Greedy stat-aware batches: ``"2000 words"``, ``"16 spans"``, ``32`` / ``"32 docs"``,
        ``"dataset"``.

        Items are added while the total stays within the budget; an item larger than the
        budget gets a batch of its own. With ``loop()``, batches run across epoch boundaries
        (the last items of epoch e share a batch with the first of e+1), except ``"dataset"``,
        which is one batch per epoch. Without ``loop()``, the last partial batch is yielded
        unless ``drop_last``. Items reporting 0 of the stat never close a batch ("16 spans"
        keeps adding documents without spans until one with spans does not fit).
        """
        kind = self._kind()
        if kind not in ("items", "opaque") or any(isinstance(s, _Batch) for s in self.stages):
            raise StreamError("batch() works on items: a stream is batched once")
        parsed = parse_size(size)
        assert not isinstance(parsed, SplitCount)
        if kind == "opaque" and isinstance(parsed, DatasetSize):
            raise StreamError("batch('dataset') needs epoch boundaries: put it before apply()")
        return self._with(_Batch(parsed, drop_last))

    def split(self, size: str | int, *, by: str | None = None) -> Stream:
        """Cut each batch into sub-batches (gradient accumulation): a stat expression (greedy,
        like ``batch``) or ``"N splits"`` (N contiguous parts balanced by ``by``, default the
        batch stat; fewer than N when the batch has fewer items). Elements become lists of
        non-empty sub-batches.
        """
        if self._kind() != "batch":
            raise StreamError("split() works on batches: put it after batch() (once)")
        parsed = parse_size(size, allow_dataset=False, allow_splits=True)
        assert not isinstance(parsed, DatasetSize)
        return self._with(_Split(parsed, by or self._batch_stat()))

    def shard(self, rank: int, world_size: int, *, by: str | None = None) -> Stream:
        """Keep this rank's part of every global batch (data parallelism).

        Every rank builds the same global batches (same sources, seeds and sizes), cuts each
        into ``world_size`` contiguous parts and keeps part ``rank``; parts are disjoint and
        their union is the global batch. On a batch stream, items are cut balanced by ``by``
        (default the batch stat), exactly as ``split("<world_size> splits")`` would, so a part
        may be empty only when the batch has fewer items than ranks. On a stream of
        sub-batches (after ``split``), the list of sub-batches is cut by count: rank r gets
        ``shard_range(m, r, world_size)`` of the m sub-batches (``m // world_size`` each when
        it divides, so rank r's first global sub-batch index is ``r * m // world_size``).
        """
        kind = self._kind()
        if kind not in ("batch", "sub_batches"):
            raise StreamError("shard() works on batches or sub-batches: put it after batch()")
        if not (isinstance(rank, int) and isinstance(world_size, int) and 0 <= rank < world_size):
            raise StreamError(f"shard({rank}, {world_size}): need 0 <= rank < world_size")
        return self._with(_Shard(rank, world_size, by or self._batch_stat()))

    def prefetch(self, n: int = 2) -> Stream:
        """Compute everything upstream in a background thread, up to ``n`` elements ahead.
        Never changes what is yielded nor ``state_dict()``."""
        if n < 1:
            raise StreamError(f"prefetch({n}): n must be >= 1")
        return self._with(_Prefetch(n))

    def apply(self, fn: Callable[[Iterator[Any]], Iterable[Any]]) -> Stream:
        """Plug any ``def fn(elements): ... yield ...`` into the chain.

        ``fn`` must be deterministic. Its internal state cannot be saved, so resuming a
        stream that contains ``apply`` replays from where the iteration started and skips
        what was consumed (exact, cost proportional to the distance).
        """
        return self._with(_Apply(fn))

    # -- iteration and state --------------------------------------------------------------

    def __iter__(self) -> _StreamIterator:
        it = _StreamIterator(self, self._start)
        self._last = it
        return it

    def state_dict(self) -> dict[str, Any]:
        """Plain JSON-able position after the last element handed out by the latest iteration
        (the loaded or initial position when not iterated yet)."""
        if self._last is not None:
            return self._last.state_dict()
        if self._start is not None:
            return dict(self._start)
        return _StreamIterator(self, None).state_dict()

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Start the next iteration where the stream that saved ``state`` stopped.

        The stream must be built the same way (same source size, transforms, sizes, seeds);
        a mismatch raises ``StreamError`` rather than silently yielding other batches.
        """
        expected = self._signature()
        if not isinstance(state, dict) or state.get("version") != STATE_VERSION:
            raise StreamError(f"not a stream state (version {STATE_VERSION}): {state!r:.200}")
        if state.get("chain") != expected["chain"] or state.get("items") != expected["items"]:
            raise StreamError(
                "state was saved from a stream built differently: saved "
                f"{state.get('items')} items, {state.get('chain')}; this stream has "
                f"{expected['items']} items, {expected['chain']}"
            )
        self._start = dict(state)
        self._last = None

    def _signature(self) -> dict[str, Any]:
        # prefetch and shard do not move batch boundaries: a state saved by any rank, with or
        # without prefetch, resumes the same global sequence (also under another world size)
        chain = [_describe(s) for s in self.stages if not isinstance(s, _Prefetch | _Shard)]
        return {"items": len(self.source), "chain": chain}

    def __repr__(self) -> str:
        chain = ".".join(_describe(s) for s in self.stages)
        return f"Stream({self.source.name}{'.' if chain else ''}{chain})"


# -- the engine ---------------------------------------------------------------------------


class _Indexed:
    """The indexed part of a chain: values of source items and their per-epoch order."""

    def __init__(self, source: Source, stages: tuple[Any, ...]) -> None:
        self.source = source
        self.ops: list[_Map | _Filter] = []
        self.shuffle: _Shuffle | None = None
        self.pre = 0  # ops before the shuffle (what chunk stats are measured on)
        self.loop = False
        for s in stages:
            if isinstance(s, _Shuffle):
                self.shuffle, self.pre = s, len(self.ops)
            elif isinstance(s, _Loop):
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
        return (
            None if value is _DROP else stat_value(value, self.chunks.size.stat, self.chunks.size)
        )

    def value(self, index: int, upto: int | None = None) -> Any:
        """Item ``index`` after the first ``upto`` ops (all by default); ``_DROP`` if filtered."""
        ops = self.ops if upto is None else self.ops[:upto]
        first, value = 0, None
        for j in range(len(ops) - 1, -1, -1):  # start after the latest cached result
            op = ops[j]
            if isinstance(op, _Map) and op.cache is not None and index in op.cache:
                first, value = j + 1, op.cache[index]
                break
        if first == 0:
            value = self.source[index]
        for op in ops[first:]:
            if value is _DROP:
                break
            if isinstance(op, _Map):
                value = op.fn(value)
                if op.cache is not None:
                    op.cache[index] = value
            elif not op.fn(value):
                value = _DROP
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
                    if value is not _DROP:
                        yielded = True
                        yield value, (epoch, start, stop, k + 1)
                start, stop, offset = stop, None, 0
            if not self.loop:
                return
            if self.n == 0 or (not yielded and pos[3] == 0 and pos[1] == 0):
                raise StreamError(f"loop(): epoch {epoch} yielded no item (all filtered out?)")
            pos = (epoch + 1, 0, None, 0)
            epoch, start, stop, offset = epoch + 1, 0, None, 0


def _batches(pairs: Iterator[tuple[Any, Pos]], stage: _Batch) -> Iterator[tuple[Any, Pos]]:
    batch: list[Any] = []
    total, last = 0, None
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
            total += value
        batch.append(item)
        last = pos
    if batch and not (stage.drop_last and isinstance(size, StatSize)):
        yield batch, last


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


def shard_batch(element: list[Any], stage: _Shard, kind: str) -> list[Any]:
    """This rank's part of a global batch (items) or of a list of sub-batches."""
    if kind == "sub_batches":
        start, stop = shard_range(len(element), stage.rank, stage.world_size)
        return element[start:stop]
    bounds = balanced_bounds([stat_value(it, stage.by) for it in element], stage.world_size)
    return element[bounds[stage.rank] : bounds[stage.rank + 1]]


class _StreamIterator(Iterator[Any]):
    """One pass over a stream; knows the position after what it handed out."""

    def __init__(self, stream: Stream, start: dict[str, Any] | None) -> None:
        self.stream = stream
        sig = stream._signature()
        self._sig = sig
        if start is None:
            start = {"epoch": 0, "block": [0, None], "offset": 0, "skip": 0}
        self._anchor: Pos = (
            int(start["epoch"]),
            int(start["block"][0]),
            None if start["block"][1] is None else int(start["block"][1]),
            int(start["offset"]),
        )
        self._skip = int(start.get("skip", 0))
        self._replay = any(isinstance(s, _Apply) for s in stream.stages)
        self._pos: Pos = self._anchor
        self._count = 0  # elements handed out (used when replaying apply)
        self._it: Iterator[Any] | None = None

    def _build(self) -> Iterator[Any]:
        stages = self.stream.stages
        n_indexed = 0
        while n_indexed < len(stages) and isinstance(stages[n_indexed], _INDEXED):
            n_indexed += 1
        indexed = _Indexed(self.stream.source, stages[:n_indexed])
        it: Iterator[Any] = indexed.items(self._anchor)
        kind = "items"
        for stage in stages[n_indexed:]:
            it = self._stage(it, stage, kind)
            if isinstance(stage, _Batch):
                kind = "batch"
            elif isinstance(stage, _Split):
                kind = "sub_batches"
            elif isinstance(stage, _Apply):
                kind = "opaque"
        if self._skip:
            it = _skip(it, self._skip)
        return it

    def _stage(self, it: Iterator[Any], stage: Any, kind: str) -> Iterator[Any]:
        if isinstance(stage, _Batch):
            return _batches(it, stage)
        if isinstance(stage, _Map):
            fn = stage.fn
            return ((fn(x), pos) for x, pos in it)
        if isinstance(stage, _Filter):
            fn = stage.fn
            return ((x, pos) for x, pos in it if fn(x))
        if isinstance(stage, _Split):
            size, by = stage.size, stage.by
            return ((split_batch(x, size, by), pos) for x, pos in it)
        if isinstance(stage, _Shard):
            return ((shard_batch(x, stage, kind), pos) for x, pos in it)
        if isinstance(stage, _Prefetch):
            return _prefetch(it, stage.n)
        if isinstance(stage, _Apply):
            # positions cannot cross an arbitrary generator: replay-based resume from here on
            values = (x for x, _ in it)
            return ((y, None) for y in stage.fn(values))
        raise TypeError(f"unknown stage {stage!r}")

    def __next__(self) -> Any:
        if self._it is None:
            self._it = self._build()
        value, pos = next(self._it)
        if pos is not None:
            self._pos = pos
        self._count += 1
        return value

    def close(self) -> None:
        """Stop background threads early (also happens when the iterator is collected)."""
        if self._it is not None and hasattr(self._it, "close"):
            self._it.close()

    def state_dict(self) -> dict[str, Any]:
        if self._replay:
            epoch, start, stop, offset = self._anchor
            skip = self._skip + self._count
        else:
            epoch, start, stop, offset = self._pos
            skip = 0
        return {
            "version": STATE_VERSION,
            "epoch": epoch,
            "block": [start, stop],
            "offset": offset,
            "skip": skip,
            "items": self._sig["items"],
            "chain": list(self._sig["chain"]),
        }


def _skip(it: Iterator[Any], n: int) -> Iterator[Any]:
    for _ in range(n):
        if next(it, None) is None:
            return
    yield from it
