"""B4: stream throughput (read + tokenise + batch("2000 words") + collate) and resume latency.

    python benchmarks/stream.py [--data PATH] [--repeats 3] [--no-write]

Measures, on NCBI-disease train:

- cold epoch: a fresh stream reads and parses every file, tokenises, preprocesses (word
  indices), batches by "2000 words" and collates (padded word-index tensors), single-threaded
  and with ``prefetch(4)``;
- warm epochs: the same stream in later epochs (files parsed and preprocessing cached once per
  run, as the trainer uses it), single-threaded and with prefetch;
- consumer waits: a consumer that "trains" at 25k words/s (sleeps) — how long it waits for the
  next batch in total, with and without prefetch, over the cold first epoch;
- resume: a brand-new stream (nothing read yet) loads a state from the middle of epoch 3 and
  yields its first batch; compared with the uninterrupted stream's batch.

Until the NLP pipeline exists, "collate" pads word-index tensors here (crc32 word hashing);
swap in ``pipeline.preprocess`` / ``pipeline.collate`` when it lands.
Prints a table; the last line is one JSON object with the headline figures; writes its section
of benchmarks/RESULTS.md between ``<!-- stream:start -->`` and ``<!-- stream:end -->``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
import zlib
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import harness  # noqa: E402

from pureml.nlp.doc import Doc  # noqa: E402
from pureml.stream import read_standoff, training_stream  # noqa: E402

DATA = "/work/shared/data/ncbi-disease/train"
BATCH = "2000 words"
TRAIN_WORDS_PER_S = 25_000  # what the B1 training step consumes (DESIGN.md)
VOCAB = 1 << 20
BUCKETS = (32, 64, 128, 256, 512, 1024)


_HASHES: dict[str, int] = {}


def word_id(word: str) -> int:
    """A stable index (crc32, memoised: a pure function of the word, so resume-safe)."""
    value = _HASHES.get(word)
    if value is None:
        value = _HASHES[word] = zlib.crc32(word.lower().encode()) % VOCAB
    return value


def preprocess(doc: Doc) -> dict[str, Any]:
    """Word indices by stable hashing (stands in for the pipeline's preprocess)."""
    ids = [word_id(w) for w in doc.word_texts()]
    return {"id": doc.id, "word_ids": ids, "stats": {"docs": 1, "words": len(ids)}}


def collate(batch: list[dict[str, Any]]) -> dict[str, torch.Tensor]:
    """Pad to a length bucket: (B, L) int64 indices and a bool mask."""
    longest = max(len(it["word_ids"]) for it in batch)
    length = next((b for b in BUCKETS if b >= longest), longest)
    ids = torch.zeros((len(batch), length), dtype=torch.int64)
    for i, it in enumerate(batch):
        ids[i, : len(it["word_ids"])] = torch.tensor(it["word_ids"], dtype=torch.int64)
    mask = ids != 0
    words = torch.tensor(float(sum(len(it["word_ids"]) for it in batch)))
    return {"word_ids": ids, "mask": mask, "stats": {"words": words}}


def make_pipeline() -> Any:
    """B1/B2's from-scratch pipeline: hashed-feature encoder + CRF NER (4 NCBI labels)."""
    from pureml.nlp import NerCrf, Pipeline, ScratchEncoder

    labels = ["CompositeMention", "DiseaseClass", "Modifier", "SpecificDisease"]
    return Pipeline({"embedding": ScratchEncoder(width=64, depth=1), "ner": NerCrf(labels=labels)})


def build(path: str, prefetch: int = 0, kind: str = "words", nlp: Any = None):
    """The trainer's chain; each element is [collated batch] (one sub-batch).

    ``kind="words"``: word-index preprocess/collate above (the stream's own cost);
    ``kind="pipeline"``: ``pipeline.preprocess(doc, supervision=True)`` / ``pipeline.collate``.
    """
    if kind == "pipeline":
        nlp = nlp if nlp is not None else make_pipeline()
        pre, col = (lambda d: nlp.preprocess(d, supervision=True)), nlp.collate
    else:
        pre, col = preprocess, collate
    s = training_stream(
        read_standoff(path), batch_size=BATCH, seed=42, preprocess=pre, collate=col, prefetch=0
    )
    s = s.map(lambda subs: subs[0])
    return s.prefetch(prefetch) if prefetch else s


def n_words(batch: dict[str, Any]) -> int:
    return int(batch["stats"]["words"])


def same(a: Any, b: Any) -> bool:
    """Bitwise equality of two collated batches (nested dicts of tensors)."""
    if isinstance(a, dict):
        return a.keys() == b.keys() and all(same(a[k], b[k]) for k in a)
    return torch.equal(a, b) if isinstance(a, torch.Tensor) else a == b


def words_of_epoch(path: str) -> tuple[int, int]:
    docs = list(read_standoff(path))
    return len(docs), sum(len(d.words) for d in docs)


def run_epochs(
    path: str, prefetch: int, epochs: int, total_words: int, kind: str = "words"
) -> dict[str, float]:
    """Words/s of the cold epoch 1 and of the next warm ``epochs``, by wall clock and by CPU
    time of this process (the machine is shared: CPU time is the stream's own cost)."""
    it = iter(build(path, prefetch, kind))
    seen, t0, c0, out = 0, time.perf_counter(), time.process_time(), {}
    while True:
        seen += n_words(next(it))
        if not out and seen >= total_words:
            t1, c1 = time.perf_counter(), time.process_time()
            out = {"cold": seen / (t1 - t0), "cold_cpu": seen / (c1 - c0)}
            seen_warm = seen
        if seen >= total_words * (1 + epochs):
            t2, c2 = time.perf_counter(), time.process_time()
            out["warm"] = (seen - seen_warm) / (t2 - t1)
            out["warm_cpu"] = (seen - seen_warm) / (c2 - c1)
            it.close()
            return out


def consumer_waits(
    path: str, prefetch: int, total_words: int, kind: str = "words"
) -> tuple[float, float]:
    """Total seconds a 25k words/s consumer waits for data over the cold first epoch."""
    it = iter(build(path, prefetch, kind))
    waited, seen, t0 = 0.0, 0, time.perf_counter()
    while seen < total_words:
        t = time.perf_counter()
        batch = next(it)
        waited += time.perf_counter() - t
        n = n_words(batch)
        seen += n
        time.sleep(n / TRAIN_WORDS_PER_S)
    it.close()
    return waited, time.perf_counter() - t0


def resume_latency(path: str, kind: str = "words") -> tuple[float, float, dict[str, Any]]:
    """Seconds from nothing to the first batch after loading a mid-epoch-3 state."""
    nlp = make_pipeline() if kind == "pipeline" else None  # model construction is not resume
    reference = build(path, 0, kind, nlp)
    it = iter(reference)
    while True:
        next(it)
        state = reference.state_dict()
        if state["epoch"] == 2 and state["offset"] >= len(reference.source) // 2:
            break
    expected = next(it)
    t0 = time.perf_counter()
    fresh = build(path, 0, kind, nlp)
    fresh.load_state_dict(json.loads(json.dumps(state)))
    first = next(iter(fresh))
    latency = time.perf_counter() - t0
    assert same(first, expected), "resumed batch differs"
    return latency, fresh.source.n_parsed / len(fresh.source), state


def machine() -> str:
    cpu = harness.cpu_name() or platform.processor() or platform.machine()
    return f"{cpu}, {os.cpu_count()} cores, Python {platform.python_version()}, torch {torch.__version__}"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", default=DATA)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--warm-epochs", type=int, default=3)
    ap.add_argument("--no-write", action="store_true", help="do not update benchmarks/RESULTS.md")
    args = ap.parse_args()
    torch.set_num_threads(1)

    n_docs, total_words = words_of_epoch(args.data)
    rows: dict[str, list[float]] = {}
    kinds = ("words", "pipeline")
    for _ in range(args.repeats):  # alternate configurations: the machine is shared and bursty
        for kind in kinds:
            for prefetch in (0, 4):
                res = run_epochs(args.data, prefetch, args.warm_epochs, total_words, kind)
                for key, value in res.items():
                    rows.setdefault(f"{kind}.{key}_{prefetch}", []).append(value)
            latency, parsed, state = resume_latency(args.data, kind)
            rows.setdefault(f"{kind}.resume", []).append(latency)
            rows.setdefault(f"{kind}.parsed", []).append(parsed)
    waits = {(k, p): consumer_waits(args.data, p, total_words, k) for k in kinds for p in (0, 4)}
    load = os.getloadavg()[0]  # the machine is shared: wall-clock rates depend on it
    med = {k: statistics.median(v) for k, v in rows.items()}

    def rate(key: str) -> str:
        cpu = med[key.replace("_", "_cpu_", 1)]
        return f"{med[key]:>11,.0f} words/s {cpu:>11,.0f} per CPU-s"

    b1 = TRAIN_WORDS_PER_S
    table: list[tuple[str, str]] = []
    for kind, title in (
        ("words", "word-index preprocess + padded collate (the stream's own cost)"),
        ("pipeline", "pipeline.preprocess + pipeline.collate (ScratchEncoder + NerCrf)"),
    ):
        table += [
            (f"[{title}]", ""),
            ("cold epoch: read+tokenise+preprocess+batch+collate", rate(f"{kind}.cold_0")),
            ("cold epoch, prefetch(4)", rate(f"{kind}.cold_4")),
            (f"warm epochs x{args.warm_epochs} (parse+preprocess cached)", rate(f"{kind}.warm_0")),
            (f"warm epochs x{args.warm_epochs}, prefetch(4)", rate(f"{kind}.warm_4")),
            (
                f"consumer at {b1 // 1000}k words/s, cold epoch: waited (no prefetch)",
                f"{waits[kind, 0][0] * 1000:.0f} ms of {waits[kind, 0][1]:.1f} s",
            ),
            (
                "  same, prefetch(4)",
                f"{waits[kind, 4][0] * 1000:.0f} ms of {waits[kind, 4][1]:.1f} s",
            ),
            (
                f"resume mid-epoch 3 (epoch index {state['epoch']}, offset {state['offset']})",
                f"{med[f'{kind}.resume'] * 1000:.1f} ms to the first batch "
                f"({med[f'{kind}.parsed']:.1%} of files parsed)",
            ),
            (
                f"vs B1 step ({b1 // 1000}k words/s): cold, warm (CPU-s)",
                f"{med[f'{kind}.cold_cpu_0'] / b1:.1f}x, {med[f'{kind}.warm_cpu_0'] / b1:.1f}x",
            ),
        ]
    width = max(len(k) for k, _ in table)
    lines = [
        f"NCBI-disease train: {n_docs} docs, {total_words:,} words; batch {BATCH!r}; "
        f"median of {args.repeats}; torch threads 1; "
        f"load average {load:.1f} on {os.cpu_count()} cores"
    ]
    lines += [f"{k:<{width}}  {v}".rstrip() for k, v in table]
    print("\n".join(lines))

    headline: dict[str, Any] = {"benchmark": "stream", "words_per_epoch": total_words}
    for kind in kinds:
        headline |= {
            f"{kind}_cold_words_per_s": round(med[f"{kind}.cold_0"]),
            f"{kind}_cold_words_per_cpu_s": round(med[f"{kind}.cold_cpu_0"]),
            f"{kind}_warm_words_per_s": round(med[f"{kind}.warm_0"]),
            f"{kind}_warm_words_per_cpu_s": round(med[f"{kind}.warm_cpu_0"]),
            f"{kind}_warm_prefetch_words_per_s": round(med[f"{kind}.warm_4"]),
            f"{kind}_consumer_wait_s": round(waits[kind, 0][0], 4),
            f"{kind}_consumer_wait_prefetch_s": round(waits[kind, 4][0], 4),
            f"{kind}_resume_s": round(med[f"{kind}.resume"], 4),
        }
    headline["load_average"] = round(load, 2)
    if not args.no_write:
        section = "\n".join(
            [
                "## B4: streams (`benchmarks/stream.py`)",
                "",
                f"- machine: {machine()}",
                f"- date: {harness.now_utc()}",
                f"- command: `python benchmarks/stream.py --repeats {args.repeats}`",
                "",
                "```",
                *lines,
                "```",
                "",
                f"`{json.dumps(headline)}`",
            ]
        )
        harness.write_section("stream", section)
    print(json.dumps(headline))


if __name__ == "__main__":
    main()
