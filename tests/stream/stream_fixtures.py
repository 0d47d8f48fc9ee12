"""Small synthetic corpora shared by the stream tests (fast; NCBI only where the issue asks)."""

from __future__ import annotations

import random
from pathlib import Path

from pureml.nlp.doc import Doc, Span


def _ncbi_train() -> str:
    # CI lays shared/ beside the clone; a developer's checkout has it at /work/shared
    beside = Path(__file__).resolve().parents[2].parent / "shared/data/ncbi-disease/train"
    return str(beside if beside.is_dir() else Path("/work/shared/data/ncbi-disease/train"))


NCBI_TRAIN = _ncbi_train()

WORDS = ["breast", "cancer", "of", "the", "colon", "is", "a", "disease", "BRCA1", "gene"]


def make_docs(n: int, seed: int = 0) -> list[Doc]:
    """``n`` documents of 1 to 60 words with a few gold spans each."""
    rng = random.Random(seed)
    docs = []
    for i in range(n):
        words = [rng.choice(WORDS) for _ in range(rng.randint(1, 60))]
        text = " ".join(words) + "."
        spans, pos = [], 0
        for w in words:
            if w == "cancer":
                spans.append(Span(pos, pos + len(w), "Disease"))
            pos += len(w) + 1
        docs.append(Doc(text, id=f"doc{i:03d}", spans={"gold": spans}))
    return docs


def preprocessed(n: int, seed: int = 0) -> list[dict]:
    """Dict items as a pipeline's preprocess returns them (stats only, here)."""
    rng = random.Random(seed)
    return [
        {
            "id": f"it{i:03d}",
            "stats": {"docs": 1, "words": rng.randint(1, 400), "spans": rng.randint(0, 5)},
        }
        for i in range(n)
    ]


def ids(element):
    """Nested ids of an item, batch or list of sub-batches (for exact comparisons)."""
    if isinstance(element, list):
        return [ids(e) for e in element]
    return element["id"] if isinstance(element, dict) else element.id
