"""The stream a trainer builds from one ``TrainingData(data, batch_size, shuffle, sub_batch_size)``.

One place that fixes the order of the transforms, so every rank, every resumed run and every
replay builds the same global batches::

    data -> map(preprocess, cache) -> shuffle(seed) -> loop -> batch(batch_size)
         -> shard(rank, world_size) -> split(sub_batch_size) -> map(collate each) -> prefetch

Each element is the list of this rank's sub-batches (collated when ``collate`` is given).
Checkpoint ``stream.state_dict()`` after each step; a run resumed with
``stream.load_state_dict(state)`` yields the batches the interrupted run would have yielded.

>>> import itertools
>>> from pureml.stream import from_iterable
>>> items = [{"id": str(i), "stats": {"docs": 1, "words": 10 * i}} for i in range(1, 9)]
>>> s = training_stream(from_iterable(items), batch_size="60 words", sub_batch_size="2 splits", seed=1)
>>> [[[it["id"] for it in sub] for sub in step] for step in itertools.islice(s, 2)]
[[['3'], ['1']], [['5']]]
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from .stream import Stream


def training_stream(
    data: Stream,
    *,
    batch_size: str | int,
    shuffle: str | bool = "dataset",
    sub_batch_size: str | int | None = None,
    seed: int = 0,
    preprocess: Callable[[Any], Any] | None = None,
    collate: Callable[[list[Any]], Any] | None = None,
    rank: int = 0,
    world_size: int = 1,
    prefetch: int = 2,
) -> Stream:
    """An endless stream of steps: each element is a list of sub-batches for this rank.

    ``preprocess`` runs once per document per run (cached by source index); ``shuffle`` is
    ``"dataset"``, a chunk expression (``"2000 words"``) or ``False``; with ``world_size > 1``
    every rank cuts the same global batch into balanced parts and keeps its own (a part, so the
    list of sub-batches, can be empty only when a batch has fewer items than ranks);
    ``sub_batch_size=None`` gives one sub-batch per step.
    """
    s = data if preprocess is None else data.map(preprocess, cache=True)
    s = s.shuffle(shuffle, seed=seed).loop().batch(batch_size)
    if world_size > 1:
        s = s.shard(rank, world_size)
    s = s.split(sub_batch_size if sub_batch_size is not None else "1 splits")
    if collate is not None:
        s = s.map(lambda subs: [collate(sub) for sub in subs])
    return s.prefetch(prefetch) if prefetch else s
