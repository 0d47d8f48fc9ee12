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

import operator
import warnings
from collections.abc import Callable, Iterable, Iterator
from typing import Any

from .batching import DatasetSize, SplitCount, StatSize, parse_size
from .engine import STATE_VERSION, Cursor, StreamIterator
from .errors import StreamChangedWarning, StreamError
from .fingerprint import function_changes, function_name, source_changes
from .sources import ListSource, Source
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
    describe,
    kind_after,
)


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
        self._last: Cursor | None = None  # the latest iteration's position (not the iterator)

    # -- construction ----------------------------------------------------------------------

    @classmethod
    def from_items(cls, items: Iterable[Any], name: str = "iterable") -> Stream:
        """A stream over items given in memory (an iterable is materialised on first use)."""
        return cls(ListSource(items, name=name))

    def _with(self, stage: Any) -> Stream:
        return Stream(self.source, (*self.stages, stage))

    @property
    def _sequential(self) -> bool:
        return any(not isinstance(s, INDEXED) for s in self.stages)

    def _kind(self) -> str:
        return kind_after(self.stages)

    def _batch_stat(self) -> str:
        for s in reversed(self.stages):
            if isinstance(s, Batch):
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
        _check_fn("map", fn)
        if cache and self._sequential:
            raise StreamError("map(cache=True) caches items by source index: use it before batch()")
        return self._with(Map(fn, {} if cache else None))

    def filter(self, fn: Callable[[Any], bool]) -> Stream:
        """Keep the items (or batches) for which ``fn`` is true."""
        _check_fn("filter", fn)
        return self._with(Filter(fn))

    def shuffle(self, mode: str | int | bool = "dataset", *, seed: int = 0) -> Stream:
        """Shuffle each epoch: ``"dataset"`` (one permutation of everything) or within chunks
        cut by a stat expression (``"2000 words"``); ``False``/``None`` does nothing.

        EDS-NLP's ``"fragment"`` (shuffle the order of a dataset's file fragments and the items
        within each) is accepted for its configs and shuffles the whole dataset: pureml's
        sources are indexed, so a full permutation costs no more than a per-fragment one.

        The order of epoch ``e`` depends only on (seed, e); ``loop()`` reshuffles every epoch
        whether it comes before or after ``shuffle``.
        """
        seed = _int(seed, f"shuffle(seed={seed!r}): seed must be an int")
        if mode is False or mode is None:
            return self
        if self._sequential:
            raise StreamError("shuffle() works on items: put it before batch() and apply()")
        if any(isinstance(s, Shuffle) for s in self.stages):
            raise StreamError("a stream can only be shuffled once")
        if mode is True or mode == "fragment":
            mode = "dataset"
        size = parse_size(mode)
        if isinstance(size, SplitCount):
            raise StreamError(f"shuffle({mode!r}): expected 'dataset' or a stat expression")
        return self._with(Shuffle("dataset" if isinstance(size, DatasetSize) else size, int(seed)))

    def loop(self) -> Stream:
        """Repeat forever, epoch after epoch (epoch ``e`` shuffled with (seed, e))."""
        if self._sequential:
            raise StreamError("loop() works on items: put it before batch() and apply()")
        if any(isinstance(s, Loop) for s in self.stages):
            return self
        return self._with(Loop())

    def batch(self, size: str | int, *, drop_last: bool = False) -> Stream:
        """Greedy stat-aware batches: ``"2000 words"``, ``"16 spans"``, ``32`` / ``"32 docs"``,
        ``"dataset"``.

        Items are added while the total stays within the budget; an item larger than the
        budget gets a batch of its own. With ``loop()``, batches run across epoch boundaries
        (the last items of epoch e share a batch with the first of e+1), except ``"dataset"``,
        which is one batch per epoch. Without ``loop()``, the last batch, when partial (under
        the budget), is yielded unless ``drop_last``. Items reporting 0 of the stat never close
        a batch ("16 spans" keeps adding documents without spans until one with spans does not
        fit).
        """
        kind = self._kind()
        if kind not in ("items", "opaque") or any(isinstance(s, Batch) for s in self.stages):
            raise StreamError("batch() works on items: a stream is batched once")
        parsed = parse_size(size)
        assert not isinstance(parsed, SplitCount)
        if kind == "opaque" and isinstance(parsed, DatasetSize):
            raise StreamError("batch('dataset') needs epoch boundaries: put it before apply()")
        return self._with(Batch(parsed, drop_last))

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
        return self._with(Split(parsed, by or self._batch_stat()))

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
        Sharding sub-batches only balances ranks when there are at least ``world_size`` of
        them: ``split("1 splits").shard(r, 2)`` leaves rank 1 without work (still correct:
        the union is the global batch), so this warns; shard before split instead.
        """
        kind = self._kind()
        if kind not in ("batch", "sub_batches"):
            raise StreamError("shard() works on batches or sub-batches: put it after batch()")
        ints = all(isinstance(v, int) and not isinstance(v, bool) for v in (rank, world_size))
        if not (ints and 0 <= rank < world_size):
            raise StreamError(f"shard({rank}, {world_size}): need 0 <= rank < world_size")
        split = next((s for s in reversed(self.stages) if isinstance(s, Split)), None)
        if kind == "sub_batches" and isinstance(split.size, SplitCount):  # type: ignore[union-attr]
            count = split.size.count  # type: ignore[union-attr]
            if count % world_size:
                warnings.warn(
                    f"split('{count} splits').shard(rank, {world_size}): {count} sub-batches "
                    f"do not divide among {world_size} ranks, some get "
                    f"{count // world_size}; use batch(...).shard(rank, world_size).split(...) "
                    f"or split into a multiple of {world_size}",
                    stacklevel=2,
                )
        return self._with(Shard(rank, world_size, by or self._batch_stat()))

    def prefetch(self, n: int = 2) -> Stream:
        """Compute everything upstream in a background thread, up to ``n`` elements ahead.
        Never changes what is yielded nor ``state_dict()``."""
        message = f"prefetch({n!r}): n must be an int >= 1"
        n = _int(n, message)
        if n < 1:
            raise StreamError(message)
        return self._with(Prefetch(n))

    def apply(self, fn: Callable[[Iterator[Any]], Iterable[Any]]) -> Stream:
        """Plug any ``def fn(elements): ... yield ...`` into the chain.

        ``fn`` must be deterministic. Its internal state cannot be saved, so resuming a
        stream that contains ``apply`` replays from where the iteration started and skips
        what was consumed (exact, cost proportional to the distance).
        """
        _check_fn("apply", fn)
        return self._with(Apply(fn))

    # -- iteration and state --------------------------------------------------------------

    def __iter__(self) -> StreamIterator:
        it = StreamIterator(self.source, self.stages, self._signature(), self._start)
        self._last = it.cursor
        return it

    def state_dict(self) -> dict[str, Any]:
        """Plain JSON-able position after the last element handed out by the latest iteration
        (the loaded or initial position when not iterated yet), with what identifies the data
        and functions it means something for (``"source"``: the files' names, sizes and edge
        hashes, for a file source; ``"functions"``: the names of the map/filter/apply
        functions). The ``"source"`` value is shared between states: do not modify it."""
        if self._last is None:
            return Cursor(self.stages, self._signature(), self._start, self.source).state_dict()
        return self._last.state_dict()

    def load_state_dict(
        self, state: dict[str, Any], *, on_change: Callable[[str], None] | None = None
    ) -> None:
        """Start the next iteration where the stream that saved ``state`` stopped.

        The stream must be built the same way (same source size, transforms, sizes, seeds);
        a mismatch raises ``StreamError`` rather than silently yielding other batches.
        Changed files (same count) or map/filter/apply functions under another name are
        legitimate (a fixed annotation, a fixed preprocessing bug) but move what the position
        stands for: each is told in one line, through ``on_change`` if given, else as a
        :class:`StreamChangedWarning`. A state saved before these were recorded resumes
        without a word.
        """
        expected = self._signature()
        if not isinstance(state, dict) or state.get("version") != STATE_VERSION:
            raise StreamError(f"not a stream state (version {STATE_VERSION}): {state!r:.200}")
        changes = function_changes(state.get("functions"), self._functions())
        if "source" in state:  # only then: reading every file's edges is not free
            changes = source_changes(state["source"], self.source.fingerprint()) + changes
        if state.get("chain") != expected["chain"] or state.get("items") != expected["items"]:
            detail = "".join(f"; {line}" for line in changes)
            raise StreamError(
                "state was saved from a stream built differently: saved "
                f"{state.get('items')} items, {state.get('chain')}; this stream has "
                f"{expected['items']} items, {expected['chain']}{detail}"
            )
        for line in changes:
            if on_change is not None:
                on_change(line)
            else:
                warnings.warn(line, StreamChangedWarning, stacklevel=2)
        self._start = dict(state)
        self._last = None

    def _signature(self) -> dict[str, Any]:
        # prefetch and shard do not move batch boundaries: a state saved by any rank, with or
        # without prefetch, resumes the same global sequence (also under another world size)
        chain = [describe(s) for s in self.stages if not isinstance(s, Prefetch | Shard)]
        functions = [name for _, name in self._functions()]
        return {"items": len(self.source), "chain": chain, "functions": functions}

    def _functions(self) -> list[tuple[str, str]]:
        """(kind, ``module.qualname``) of each map, filter and apply, in chain order."""
        kinds = {Map: "map", Filter: "filter", Apply: "apply"}
        return [(kinds[type(s)], function_name(s.fn)) for s in self.stages if type(s) in kinds]

    def __repr__(self) -> str:
        chain = ".".join(describe(s) for s in self.stages)
        return f"Stream({self.source.name}{'.' if chain else ''}{chain})"


def _check_fn(name: str, fn: Any) -> None:
    # checked here, where the chain is built, rather than when the first item reaches it
    if not callable(fn):
        raise StreamError(f"{name}({fn!r:.60}): expected a function, got {type(fn).__name__}")


def _int(value: Any, message: str) -> int:
    # any integer (numpy's too), not a float or string that int() would quietly convert
    try:
        return operator.index(value)
    except TypeError:
        raise StreamError(message) from None
