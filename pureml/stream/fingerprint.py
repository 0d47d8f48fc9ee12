"""What a saved stream state keeps of its data and functions, and how to say what changed.

A position (epoch, offset) means something only for the data and functions it was saved with.
The item count and the chain are checked strictly: another count or chain cannot resume. These
are softer, because fixing a preprocessing bug or a mislabelled file and resuming is legitimate;
a difference is a warning naming what changed:

- the files behind a source: relative names, byte sizes and a hash of each file's first and last
  4 KiB (the whole file when smaller, as most brat documents are). Found with one ``stat`` and
  at most two small reads per file, nothing parsed; no modification times, which a ``git
  clone`` or a copy changes.
- the ``module.qualname`` of each map, filter and apply function (not its code: an edited body
  under the same name goes unnoticed).

>>> import tempfile
>>> root = Path(tempfile.mkdtemp())
>>> _ = (root / "a.txt").write_text("Breast cancer.")
>>> saved = files_fingerprint(root, ["a.txt"])
>>> _ = (root / "a.txt").write_text("Breast cancers.")
>>> source_changes(saved, files_fingerprint(root, ["a.txt"]))
['file a.txt changed size (14 -> 15 bytes)']
"""

from __future__ import annotations

import functools
import hashlib
import inspect
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

EDGE = 4096  # bytes hashed at each end of a file: one page, so reading it costs one read
MAX_LINES = 5  # file lines in one message; the rest are counted


def _edges(path: Path, size: int) -> str:
    h = hashlib.blake2b(digest_size=8)
    with path.open("rb") as f:
        h.update(f.read(EDGE))
        if size > EDGE:
            f.seek(max(EDGE, size - EDGE))
            h.update(f.read(EDGE))
    return h.hexdigest()


def files_fingerprint(root: Path, names: Iterable[str]) -> dict[str, Any]:
    """``{"files": {name: [size, edge hash]}}`` for the files ``names`` (relative to ``root``)."""
    files: dict[str, list[Any]] = {}
    for name in names:
        path = root / name
        try:
            size = path.stat().st_size
            files[name] = [size, _edges(path, size)]
        except OSError:  # gone since the listing: the item count check or the parse reports it
            files[name] = [None, None]
    return {"files": files}


def source_changes(saved: Any, now: Any) -> list[str]:
    """One line per file that differs between two fingerprints (the first few, then a count);
    nothing when either is missing or of another kind (an older state, an in-memory source)."""
    if not (isinstance(saved, Mapping) and isinstance(now, Mapping)):
        return []
    a, b = saved.get("files"), now.get("files")
    if not (isinstance(a, Mapping) and isinstance(b, Mapping)):
        return []
    lines = []
    for name in sorted(a.keys() & b.keys()):
        (size_a, edges_a), (size_b, edges_b) = a[name], b[name]
        if size_a != size_b:
            lines.append(f"file {name} changed size ({size_a} -> {size_b} bytes)")
        elif edges_a != edges_b:
            lines.append(f"file {name} changed (same size, other bytes)")
    lines += [f"file {name} is gone" for name in sorted(a.keys() - b.keys())]
    lines += [f"file {name} is new" for name in sorted(b.keys() - a.keys())]
    if len(lines) > MAX_LINES:
        lines[MAX_LINES - 1 :] = [f"and {len(lines) - MAX_LINES + 1} more changed files"]
    return lines


def function_name(fn: Callable[..., Any]) -> str:
    """``module.qualname`` of a function, method, ``functools.partial`` or callable object.

    >>> function_name(function_name), function_name(functools.partial(source_changes, {}))
    ('pureml.stream.fingerprint.function_name', 'pureml.stream.fingerprint.source_changes')
    """
    fn = inspect.unwrap(fn)  # what a functools.wraps decorator wraps
    while isinstance(fn, functools.partial):
        fn = fn.func
    qualname = getattr(fn, "__qualname__", None)
    if not isinstance(qualname, str):  # a callable object: its class says what it does
        qualname = type(fn).__qualname__
        module = type(fn).__module__
    else:  # builtins' methods (str.lower) have no __module__
        module = getattr(fn, "__module__", None) or type(fn).__module__
    return f"{module}.{qualname}"


def function_changes(saved: Any, now: Sequence[tuple[str, str]]) -> list[str]:
    """One line per map/filter/apply whose function is another one: ``saved`` is the names a
    state recorded, ``now`` the (kind, name) of this chain's function stages, in order."""
    if not isinstance(saved, list) or len(saved) != len(now):
        return []  # an older state, without names
    lines = []
    kinds = [kind for kind, _ in now]
    for i, (old, (kind, new)) in enumerate(zip(saved, now)):
        if old != new:
            # the names say which stage, unless one name was given to several (then its rank
            # among the stages of its kind: a trainer adds a map of its own to every stream)
            which = kind
            if saved.count(old) > 1:
                which = f"{kind} #{kinds[: i + 1].count(kind)}"
            lines.append(f"{which} function was {old}, now {new}")
    return lines
