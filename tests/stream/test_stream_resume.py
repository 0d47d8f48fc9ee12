"""Resume: a fresh stream given the saved state yields what the original would have yielded."""

from __future__ import annotations

import itertools
import json

import pytest
from stream_fixtures import ids

from pureml.stream import read_standoff
from pureml.stream.engine import position_of


def build(path, shuffle="dataset", prefetch=True):
    def preprocess(doc):
        return {
            "id": doc.id,
            "stats": {"docs": 1, "words": len(doc.words), "spans": len(doc.spans["gold"])},
        }

    s = (
        read_standoff(path)
        .map(preprocess, cache=True)
        .shuffle(shuffle, seed=7)
        .loop()
        .batch("300 words")
        .split("2 splits")
    )
    return s.prefetch(3) if prefetch else s


@pytest.mark.parametrize("shuffle", ["dataset", "250 words"])
def test_resume_at_several_points_yields_the_same_next_50(corpus_dir, shuffle):
    reference = [ids(b) for b in itertools.islice(build(corpus_dir, shuffle, prefetch=False), 130)]
    n_docs = 40
    epochs_seen = set()
    for k in (0, 1, 13, 37, 80):  # 40 docs, ~9 batches per epoch: crosses many epoch boundaries
        original = build(corpus_dir, shuffle)
        it = iter(original)
        consumed = [ids(next(it)) for _ in range(k)]
        assert consumed == reference[:k]
        state = json.loads(json.dumps(original.state_dict()))  # plain data
        assert len(json.dumps(position_of(state))) < 400  # the position is small plain data
        assert len(state["source"]["files"]) == 2 * n_docs  # what it means: one entry a file
        epochs_seen.add(state["epoch"])
        nxt = [ids(next(it)) for _ in range(50)]  # the prefetch thread was ahead meanwhile
        fresh = build(corpus_dir, shuffle)
        fresh.load_state_dict(state)
        resumed = [ids(b) for b in itertools.islice(fresh, 50)]
        assert resumed == nxt == reference[k : k + 50]
        # resuming parses what the next batch holds plus the one item that closes it (and, when
        # shuffling within chunks, the chunks these lie in), never the skipped documents
        lazy = build(corpus_dir, shuffle, prefetch=False)
        lazy.load_state_dict(state)
        first = next(iter(lazy))
        if shuffle == "dataset":
            assert lazy.source.n_parsed <= sum(len(sub) for sub in first) + 1
        assert lazy.source.n_parsed < n_docs / 2
    assert len(epochs_seen) >= 3


def test_state_after_every_batch_resumes_exactly(corpus_dir):
    """Each consumed batch's state resumes to the rest (cheap version: next 3 batches)."""
    s = build(corpus_dir, prefetch=False)
    it = iter(s)
    reference = [ids(b) for b in itertools.islice(build(corpus_dir, prefetch=False), 40)]
    for k in range(1, 30):
        next(it)
        fresh = build(corpus_dir, prefetch=False)
        fresh.load_state_dict(s.state_dict())
        assert [ids(b) for b in itertools.islice(fresh, 3)] == reference[k : k + 3]


def test_finished_stream_resumes_to_nothing(corpus_dir):
    s = read_standoff(corpus_dir).batch("500 words")
    n = len(list(s))
    state = s.state_dict()
    fresh = read_standoff(corpus_dir).batch("500 words")
    fresh.load_state_dict(state)
    assert list(fresh) == [] and n > 1


def test_state_is_shared_across_ranks_and_world_sizes(corpus_dir):
    """Shard is not part of the state: every rank saves the same global position."""
    a = build(corpus_dir, prefetch=False)
    it = iter(a.shard(0, 2))
    [next(it) for _ in range(5)]
    state = a.shard(0, 2)  # noqa: F841 - a different object; the iterator's own state is below
    saved = it.state_dict()
    for r in range(2):
        fresh = build(corpus_dir).shard(r, 2)
        fresh.load_state_dict(saved)
        got = next(iter(fresh))
        ref = list(itertools.islice(build(corpus_dir, prefetch=False).shard(r, 2), 6))[5]
        assert ids(got) == ids(ref)


def test_prefetch_does_not_change_the_saved_state(corpus_dir):
    plain, ahead = build(corpus_dir, prefetch=False), build(corpus_dir, prefetch=True)
    a, b = iter(plain), iter(ahead)
    for _ in range(12):
        next(a), next(b)
        assert plain.state_dict() == ahead.state_dict()


def _random_chain(cfg: dict, prefetch: bool):
    from stream_fixtures import preprocessed

    from pureml.stream import from_iterable

    keep = cfg["keep"]
    s = from_iterable(preprocessed(cfg["n"], seed=cfg["seed"]))
    s = s.filter(lambda it: int(it["id"][2:]) % keep == 0)
    s = s.shuffle(cfg["shuffle"], seed=cfg["seed"]).loop().batch(cfg["size"])
    if cfg["shard"]:
        s = s.shard(*cfg["shard"])
    if cfg["split"]:
        s = s.split(cfg["split"])
    return s.prefetch(2) if prefetch else s


def test_random_chains_resume_exactly():
    """Many chain shapes (shuffle modes, filters, sizes, split, shard, prefetch), random k."""
    import random

    rng = random.Random(0)
    for trial in range(25):
        cfg = {
            "seed": trial,
            "n": rng.randint(1, 40),
            "keep": rng.choice([1, 1, 2, 3]),
            "shuffle": rng.choice([False, "dataset", f"{rng.randint(50, 900)} words"]),
            "size": rng.choice(["300 words", "700 words", "4 spans", 3, "dataset"]),
            "split": rng.choice([None, "2 splits", "200 words"]),
            "shard": rng.choice([None, (0, 2), (1, 3)]),
        }
        if cfg["n"] < cfg["keep"]:
            cfg["keep"] = 1
        reference = [ids(b) for b in itertools.islice(_random_chain(cfg, False), 40)]
        k = rng.randint(0, 25)
        s = _random_chain(cfg, True)
        it = iter(s)
        for _ in range(k):
            next(it)
        fresh = _random_chain(cfg, rng.random() < 0.5)
        fresh.load_state_dict(json.loads(json.dumps(s.state_dict())))
        assert [ids(b) for b in itertools.islice(fresh, 15)] == reference[k : k + 15], cfg


def _threads_back_to(count: int) -> bool:
    """Whether the live threads fall back to ``count`` once garbage is collected (prefetch
    threads notice their stop flag within one put timeout)."""
    import gc
    import threading
    import time

    gc.collect()
    for _ in range(100):
        if threading.active_count() <= count:
            return True
        time.sleep(0.02)
    return False


def test_closed_prefetch_iterators_leave_no_threads(corpus_dir):
    import threading

    before = threading.active_count()
    s = build(corpus_dir)
    for _ in range(5):
        it = iter(s)
        next(it)
        it.close()
    del it, s
    assert _threads_back_to(before)


def test_breaking_out_of_a_prefetched_stream_stops_its_thread(corpus_dir):
    import threading

    before = threading.active_count()
    s = build(corpus_dir)  # endless (loop) and prefetched; the stream itself stays alive
    for i, _ in enumerate(s):
        if i == 3:
            break
    assert _threads_back_to(before)
    # the stream still knows where the abandoned iteration stopped
    fresh = build(corpus_dir, prefetch=False)
    fresh.load_state_dict(s.state_dict())
    reference = list(itertools.islice(build(corpus_dir, prefetch=False), 4, 8))
    assert [ids(b) for b in itertools.islice(fresh, 4)] == [ids(b) for b in reference]
