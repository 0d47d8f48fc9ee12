"""Stats of items, stat expressions ("2000 words") and greedy stat-aware batching.

An item is a :class:`~pureml.nlp.doc.Doc` or a preprocessed dict carrying ``item["stats"]``.
The stat names come from the items themselves (whatever ``preprocess`` reports), so an
expression is only checked against a name when the first item is measured.

>>> from pureml.nlp.doc import Doc
>>> parse_size("2000 words")
StatSize(amount=2000, stat='words')
>>> parse_size(32)
StatSize(amount=32, stat='docs')
>>> items = [{"stats": {"words": n}} for n in (3, 4, 2, 9, 1)]
>>> [[it["stats"]["words"] for it in b] for b in greedy_batches(items, parse_size("6 words"))]
[[3], [4, 2], [9], [1]]
"""

from __future__ import annotations

import difflib
import re
from collections.abc import Iterable, Iterator, Mapping, Sequence
from typing import Any

import attrs

from ..nlp.doc import Doc
from .errors import StreamError

_EXPR = re.compile(r"^\s*(-?\d+)\s*([A-Za-z_][\w./-]*)?\s*$")


@attrs.frozen
class StatSize:
    """A budget on one stat: ``StatSize(2000, "words")`` is "2000 words"."""

    amount: int
    stat: str

    def __str__(self) -> str:
        return f"{self.amount} {self.stat}"


@attrs.frozen
class DatasetSize:
    """The whole epoch as one batch (``"dataset"``)."""

    def __str__(self) -> str:
        return "dataset"


@attrs.frozen
class SplitCount:
    """``"N splits"``: cut each batch into N parts balanced by a stat."""

    count: int

    def __str__(self) -> str:
        return f"{self.count} splits"


Size = StatSize | DatasetSize | SplitCount


def parse_size(
    expr: str | int | Size, *, allow_dataset: bool = True, allow_splits: bool = False
) -> Size:
    """Parse ``"2000 words"``, ``"16 spans"``, ``32`` (= ``"32 docs"``), ``"dataset"``, ``"4 splits"``.

    >>> parse_size("4 splits", allow_splits=True)
    SplitCount(count=4)
    """
    if isinstance(expr, StatSize | DatasetSize | SplitCount):
        parsed: Size = expr
    elif isinstance(expr, bool) or not isinstance(expr, int | str):
        raise StreamError(f"size {expr!r}: expected an int or a string like '2000 words'")
    elif isinstance(expr, int):
        parsed = StatSize(expr, "docs")
    elif expr.strip().lower() == "dataset":
        parsed = DatasetSize()
    else:
        m = _EXPR.match(expr)
        if m is None:
            raise StreamError(
                f"stat expression {expr!r}: expected '<positive int> <stat>' like '2000 words', "
                "'16 spans', '32 docs' or 'dataset'"
            )
        amount, stat = int(m.group(1)), (m.group(2) or "docs")
        if stat in ("split", "splits"):
            parsed = SplitCount(amount)
        else:
            parsed = StatSize(amount, {"doc": "docs"}.get(stat, stat))
    if isinstance(parsed, StatSize | SplitCount):
        amount = parsed.amount if isinstance(parsed, StatSize) else parsed.count
        if amount <= 0:
            raise StreamError(f"stat expression {str(expr)!r}: the amount must be positive")
    if isinstance(parsed, DatasetSize) and not allow_dataset:
        raise StreamError(f"size {expr!r}: 'dataset' is not allowed here")
    if isinstance(parsed, SplitCount) and not allow_splits:
        raise StreamError(f"size {expr!r}: 'N splits' is only allowed in split()")
    return parsed


def sub_batch_words(
    batch_size: str | int | Size, sub_batch_size: str | int | Size | None = None, parts: int = 1
) -> int | None:
    """The most words a training sub-batch normally holds, from its stream's sizes: ``parts``
    ranks share each batch, and each share is split by ``sub_batch_size``. ``None`` where the
    batch budget is not in words. Parts balanced by words miss an even share by up to a
    document: twice the even share leaves room for that. An item over the budget (a batch of
    its own) is not counted.

    >>> sub_batch_words("2000 words"), sub_batch_words("2000 words", "4 splits")
    (2000, 1000)
    >>> sub_batch_words("2000 words", "300 words", parts=2), sub_batch_words(32)
    (300, None)
    """
    batch = parse_size(batch_size)
    if not (isinstance(batch, StatSize) and batch.stat == "words"):
        return None
    sub = parse_size(
        sub_batch_size if sub_batch_size is not None else "1 splits", allow_splits=True
    )
    count = parts * (sub.count if isinstance(sub, SplitCount) else 1)
    words = batch.amount if count == 1 else min(batch.amount, -(-2 * batch.amount // count))
    if isinstance(sub, StatSize) and sub.stat == "words":
        words = min(words, sub.amount)
    return words


def stats_of(item: Any) -> Mapping[str, int]:
    """The stats of an item: ``item["stats"]`` for a preprocessed dict; for a Doc
    ``{"docs": 1, "words": len(doc.words), "spans": len(doc.spans["gold"])}``.

    >>> stats_of(Doc("Two words", spans={}))
    {'docs': 1, 'words': 2, 'spans': 0}
    """
    if isinstance(item, Doc):
        return {"docs": 1, "words": len(item.words), "spans": len(item.spans.get("gold", ()))}
    if isinstance(item, Mapping):
        stats = item.get("stats")
        if isinstance(stats, Mapping):
            return stats
    raise StreamError(
        f"cannot measure an item of type {type(item).__name__}: expected a Doc or a dict "
        "with a 'stats' dict (what preprocess returns)"
    )


def stat_value(item: Any, stat: str, expr: object = None) -> int:
    """``stats_of(item)[stat]``; "docs" counts 1 when not reported (or when the item has no
    stats at all: ``batch(32)`` works on any items); a clear error otherwise.

    >>> stat_value("any item", "docs")
    1
    """
    if stat == "docs" and not isinstance(item, Doc):
        stats = item.get("stats") if isinstance(item, Mapping) else None
        value = stats.get("docs") if isinstance(stats, Mapping) else None
        return 1 if value is None else int(value)
    stats = stats_of(item)
    value = stats.get(stat)
    if value is None:
        if stat == "docs":
            return 1
        if not stat.endswith("s") and stat + "s" in stats:
            return int(stats[stat + "s"])
        names = sorted(set(stats) | {"docs"})
        hint = difflib.get_close_matches(stat, names, n=1)
        what = f"stat expression {str(expr)!r}" if expr is not None else f"stat {stat!r}"
        raise StreamError(
            f"{what}: items report no stat {stat!r} (they report: {', '.join(names)})"
            + (f"; did you mean {hint[0]!r}?" if hint else "")
        )
    return int(value)


def greedy_batches(
    items: Iterable[Any], size: StatSize, *, drop_last: bool = False
) -> Iterator[list[Any]]:
    """Add items while the stat total stays within ``size``; an item larger than the budget gets
    a batch of its own. The last batch, when partial (under the budget), is yielded unless
    ``drop_last``."""
    batch: list[Any] = []
    total = 0
    for item in items:
        value = stat_value(item, size.stat, size)
        if batch and total + value > size.amount:
            yield batch
            batch, total = [], 0
        batch.append(item)
        total += value
    if batch and not (drop_last and total < size.amount):
        yield batch


def balanced_bounds(weights: Sequence[int], parts: int) -> list[int]:
    """Boundaries ``[0, b1, ..., len]`` cutting ``weights`` into ``parts`` contiguous parts whose
    totals are as close as possible to equal; every part is non-empty when there are enough
    items (when the total is 0, counts are balanced instead).

    >>> balanced_bounds([5, 1, 1, 1, 1, 1], 2)
    [0, 1, 6]
    >>> balanced_bounds([1], 3)
    [0, 1, 1, 1]
    """
    n = len(weights)
    total = sum(weights)
    if total <= 0:
        weights, total = [1] * n, n
    cum = [0]
    for w in weights:
        cum.append(cum[-1] + w)
    bounds = [0]
    for k in range(1, parts):
        lo = min(bounds[-1] + 1, n)
        hi = max(n - (parts - k), lo)
        target = total * k / parts
        best = lo
        for i in range(lo, hi + 1):
            if abs(cum[i] - target) < abs(cum[best] - target):
                best = i
            elif cum[i] > target:
                break
        bounds.append(best)
    bounds.append(n)
    return bounds
