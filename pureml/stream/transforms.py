"""The transforms of :class:`Stream` as plain functions: ``batch(stream, "2000 words")``.

Each takes a ``Stream`` or any iterable of items (wrapped with :func:`from_iterable`) and
returns a new ``Stream``, so both spellings compose the same chain:

>>> batch(shuffle(from_iterable(range(5)), seed=0), 2).state_dict()["chain"]
['shuffle(dataset, seed=0)', 'batch(2 docs)']
"""

from __future__ import annotations

import builtins
from collections.abc import Callable, Iterable, Iterator
from typing import Any

from .stream import Stream


def from_iterable(items: Iterable[Any], name: str = "iterable") -> Stream:
    """A stream over in-memory items (Docs or preprocessed dicts); materialised on first use,
    so ``items`` must be finite (positions index it); wrap an endless generator with
    ``apply`` instead (resumed by replay)."""
    return Stream.from_items(items, name=name)


def _stream(data: Stream | Iterable[Any]) -> Stream:
    return data if isinstance(data, Stream) else from_iterable(data)


def map(data: Stream | Iterable[Any], fn: Callable[[Any], Any], *, cache: bool = False) -> Stream:  # noqa: A001
    """See :meth:`Stream.map`."""
    return _stream(data).map(fn, cache=cache)


def filter(data: Stream | Iterable[Any], fn: Callable[[Any], bool]) -> Stream:  # noqa: A001
    """See :meth:`Stream.filter`."""
    return _stream(data).filter(fn)


def shuffle(
    data: Stream | Iterable[Any], mode: str | int | bool = "dataset", *, seed: int = 0
) -> Stream:
    """See :meth:`Stream.shuffle`."""
    return _stream(data).shuffle(mode, seed=seed)


def loop(data: Stream | Iterable[Any]) -> Stream:
    """See :meth:`Stream.loop`."""
    return _stream(data).loop()


def batch(data: Stream | Iterable[Any], size: str | int, *, drop_last: bool = False) -> Stream:
    """See :meth:`Stream.batch`."""
    return _stream(data).batch(size, drop_last=drop_last)


def split(data: Stream | Iterable[Any], size: str | int, *, by: str | None = None) -> Stream:
    """See :meth:`Stream.split`."""
    return _stream(data).split(size, by=by)


def shard(
    data: Stream | Iterable[Any], rank: int, world_size: int, *, by: str | None = None
) -> Stream:
    """See :meth:`Stream.shard`."""
    return _stream(data).shard(rank, world_size, by=by)


def prefetch(data: Stream | Iterable[Any], n: int = 2) -> Stream:
    """See :meth:`Stream.prefetch`."""
    return _stream(data).prefetch(n)


def apply(data: Stream | Iterable[Any], fn: Callable[[Iterator[Any]], Iterable[Any]]) -> Stream:
    """See :meth:`Stream.apply`."""
    return _stream(data).apply(fn)


__all__ = [n for n in builtins.list(globals()) if not n.startswith("_")]
