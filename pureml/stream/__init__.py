"""Composable, deterministic, resumable streams of documents with stat-aware batching.

>>> from pureml.stream import read_standoff
>>> stream = (  # doctest: +SKIP
...     read_standoff("data/train")
...     .map(preprocess, cache=True)  # once per document per run
...     .shuffle("dataset", seed=42)  # epoch e's order depends on (42, e) only
...     .loop()
...     .batch("2000 words")
...     .shard(rank, world_size)
...     .split("2 splits")
...     .prefetch(2)
... )
>>> state = stream.state_dict()  # doctest: +SKIP
>>> stream.load_state_dict(state)  # doctest: +SKIP

``state_dict()`` is a small JSON-able position, after the last batch handed out.

:func:`training_stream` builds exactly this chain from a TrainingData's fields.
"""

from .batching import (
    DatasetSize,
    SplitCount,
    StatSize,
    balanced_bounds,
    greedy_batches,
    parse_size,
    stat_value,
    stats_of,
)
from .errors import DataError, StreamChangedWarning, StreamError
from .jsonl import read_jsonl, write_jsonl
from .sources import ListSource, Source
from .split import shard_batch, shard_range, split_batch
from .standoff import read_standoff, write_standoff
from .stream import Stream
from .training import training_stream
from .transforms import (
    apply,
    batch,
    filter,
    from_iterable,
    loop,
    map,
    prefetch,
    shard,
    shuffle,
    split,
)

__all__ = [
    "DataError",
    "DatasetSize",
    "ListSource",
    "Source",
    "SplitCount",
    "StatSize",
    "Stream",
    "StreamChangedWarning",
    "StreamError",
    "apply",
    "balanced_bounds",
    "batch",
    "filter",
    "from_iterable",
    "greedy_batches",
    "loop",
    "map",
    "parse_size",
    "prefetch",
    "read_jsonl",
    "read_standoff",
    "shard",
    "shard_batch",
    "shard_range",
    "shuffle",
    "split",
    "split_batch",
    "training_stream",
    "stat_value",
    "stats_of",
    "write_jsonl",
    "write_standoff",
]
