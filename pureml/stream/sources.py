"""Indexed sources: a finite list of items, each read and parsed at most once per run.

A source knows how many items it has without parsing them (a directory listing, a count of
lines), and parses item ``i`` on first access only. That is what makes resuming cheap: the
shuffled order of an epoch needs only the count, and a resumed stream parses only what it
will yield.

>>> src = ListSource(["a", "b"])
>>> len(src), src[1]
(2, 'b')
"""

from __future__ import annotations

import os
import threading
from collections.abc import Iterable
from pathlib import Path
from typing import Any


def folder_files(root: Path, suffix: str | tuple[str, ...]) -> list[str]:
    """Paths (relative, ``/``-separated, sorted) of the files named ``*suffix`` under ``root``
    (``suffix`` may be a tuple of suffixes).

    Hidden files and folders are not data: a notebook's ``.ipynb_checkpoints/`` holds copies of
    the documents beside it, and macOS writes ``._name.txt`` resource files on shared drives;
    read, they would train on duplicates or fail on binary bytes.

    >>> import tempfile
    >>> root = Path(tempfile.mkdtemp())
    >>> for name in ("b.txt", "a/c.txt", ".ipynb_checkpoints/b.txt", "._b.txt", "b.ann"):
    ...     (root / name).parent.mkdir(parents=True, exist_ok=True)
    ...     _ = (root / name).write_text("x")
    >>> folder_files(root, ".txt")
    ['a/c.txt', 'b.txt']
    """
    found: list[str] = []
    for folder, dirs, names in os.walk(root):  # one listing; nothing is opened here
        dirs[:] = [d for d in dirs if not d.startswith(".")]
        rel = os.path.relpath(folder, root)
        prefix = "" if rel == "." else rel.replace(os.sep, "/") + "/"
        found.extend(prefix + n for n in names if n.endswith(suffix) and not n.startswith("."))
    return sorted(found)


_UNSET = object()


class Source:
    """Base class: subclasses set ``name`` and implement ``__len__`` and ``_load(i)``."""

    name: str = "source"

    def __init__(self) -> None:
        self._cache: dict[int, Any] = {}
        self._lock = threading.Lock()
        self._fingerprint: Any = _UNSET

    def __len__(self) -> int:
        raise NotImplementedError

    def _load(self, index: int) -> Any:
        raise NotImplementedError

    def __getitem__(self, index: int) -> Any:
        try:
            return self._cache[index]
        except KeyError:
            pass
        # The lock keeps "parse once" true when a prefetch thread and the consumer share a source.
        with self._lock:
            if index not in self._cache:
                self._cache[index] = self._load(index)
            return self._cache[index]

    def describe(self, index: int) -> str:
        """Where item ``index`` comes from, for error messages (a file, ``file:line``)."""
        return f"item {index} of {self.name}"

    def fingerprint(self) -> dict[str, Any] | None:
        """What a saved stream state keeps of this source, to say on resume which data changed
        (see :mod:`pureml.stream.fingerprint`); ``None`` when there is nothing cheap to compare
        beyond the item count. Found without parsing, once per source: like the parsed items,
        it describes the data as this source first saw it."""
        if self._fingerprint is _UNSET:
            self._fingerprint = self._make_fingerprint()
        return self._fingerprint

    def _make_fingerprint(self) -> dict[str, Any] | None:
        return None

    @property
    def n_parsed(self) -> int:
        """How many items were parsed so far (resume tests check that skipped ones were not)."""
        return len(self._cache)


class ListSource(Source):
    """Items given in memory (or by an iterable, materialised on first use)."""

    def __init__(self, items: Iterable[Any], name: str = "iterable") -> None:
        super().__init__()
        self._items_in = items
        self._items: list[Any] | None = None
        self.name = name

    def _materialise(self) -> list[Any]:
        if self._items is None:
            self._items = list(self._items_in)
        return self._items

    def __len__(self) -> int:
        return len(self._materialise())

    def _load(self, index: int) -> Any:
        return self._materialise()[index]
