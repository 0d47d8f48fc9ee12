"""Composable, deterministic, resumable streams of documents with stat-aware batching.

>>> from pureml.stream import read_standoff
>>> stream = (  # doctest: +SKIP
...     read_standoff("data/train")
...     .map(pipeline.preprocess_for_training, cache=True)
...     .shuffle("dataset", seed=42)
...     .loop()
...     .batch("2000 words")
...     .split("2 splits")
...     .shard(rank, world_size)
...     .prefetch(2)
... )
>>> state = stream.state_dict()  # doctest: +SKIP
>>> stream.load_state_dict(state)  # doctest: +SKIP
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
from .errors import DataError, StreamError
from .jsonl import read_jsonl, write_jsonl
from .sources import ListSource, Source
from .standoff import read_standoff, write_standoff
from .stream import Stream, shard_range, split_batch
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
    "shard_range",
    "shuffle",
    "split",
    "split_batch",
    "stat_value",
    "stats_of",
    "write_jsonl",
    "write_standoff",
]
