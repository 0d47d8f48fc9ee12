"""The transforms a stream is made of, as immutable records (a Stream is a source plus a tuple).

``describe`` gives what a saved state is checked against on resume: kinds, sizes and seeds,
not function identities (a rebuilt stream has new function objects; their names are compared
apart, as a warning: see :mod:`pureml.stream.fingerprint`).

>>> describe(Batch(parse_size("2000 words"), drop_last=False))
'batch(2000 words)'
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import attrs

from .batching import DatasetSize, SplitCount, StatSize, parse_size  # noqa: F401 - example


@attrs.frozen(eq=False)
class Map:
    """map(fn): per item (cached by source index when ``cache`` is a dict) or per element."""

    fn: Callable[[Any], Any]
    cache: dict[int, Any] | None  # by source index, shared by streams derived from this one


@attrs.frozen(eq=False)
class Filter:
    """filter(fn): keep items or elements for which ``fn`` is true."""

    fn: Callable[[Any], bool]


@attrs.frozen
class Shuffle:
    """shuffle: ``"dataset"`` or within chunks of a stat size, seeded by (seed, epoch)."""

    mode: str | StatSize  # "dataset" or a chunk size
    seed: int


@attrs.frozen
class Loop:
    """loop(): epochs forever."""


@attrs.frozen
class Batch:
    """batch(size): greedy stat-aware batches."""

    size: StatSize | DatasetSize
    drop_last: bool


@attrs.frozen
class Split:
    """split(size): sub-batches by a stat size or into N parts balanced by ``by``."""

    size: StatSize | SplitCount
    by: str


@attrs.frozen
class Shard:
    """shard(rank, world_size): this rank's part of each global batch."""

    rank: int
    world_size: int
    by: str


@attrs.frozen
class Prefetch:
    """prefetch(n): upstream computed in a thread, ``n`` elements ahead."""

    n: int


@attrs.frozen(eq=False)
class Apply:
    """apply(fn): any generator function over the elements (resumed by replay)."""

    fn: Callable[[Iterator[Any]], Iterator[Any]]


INDEXED = (Map, Filter, Shuffle, Loop)


def describe(stage: Any) -> str:
    """What the resume check compares: kinds, sizes and seeds (not function identities)."""
    if isinstance(stage, Map):
        return "map(cache)" if stage.cache is not None else "map"
    if isinstance(stage, Filter):
        return "filter"
    if isinstance(stage, Shuffle):
        return f"shuffle({stage.mode}, seed={stage.seed})"
    if isinstance(stage, Loop):
        return "loop"
    if isinstance(stage, Batch):
        return f"batch({stage.size}{', drop_last' if stage.drop_last else ''})"
    if isinstance(stage, Split):
        return f"split({stage.size}, by={stage.by})"
    if isinstance(stage, Shard):
        return f"shard({stage.rank}/{stage.world_size}, by={stage.by})"
    if isinstance(stage, Prefetch):
        return f"prefetch({stage.n})"
    return "apply"


def kind_after(stages: tuple[Any, ...]) -> str:
    """What elements a chain yields: "items", "batch", "sub_batches" or "opaque" (after apply)."""
    kind = "items"
    for s in stages:
        if isinstance(s, Batch):
            kind = "batch"
        elif isinstance(s, Split):
            kind = "sub_batches"
        elif isinstance(s, Apply):
            kind = "opaque"
    return kind
