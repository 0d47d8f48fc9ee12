"""NCBI-disease data and the one scorer every benchmark contender is judged by.

Each contender reads the brat files its own way (that is part of what is measured), but all of
them hand their dev predictions back as ``{doc_id: [(start_char, end_char, label), ...]}`` and are
scored here against the gold read straight from the ``.ann`` files, so no framework's own scorer
(or tokenizer) decides the F1 that is compared.

>>> gold = {"d1": [(0, 5, "Disease")], "d2": [(3, 9, "Disease")]}
>>> pred = {"d1": [(0, 5, "Disease")], "d2": [(3, 8, "Disease")]}
>>> score(gold, pred)["f1"]
0.5

Standard library only: it is imported by contenders running in other virtual environments.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from pathlib import Path

DATA_DIR = Path("/work/shared/data/ncbi-disease")

SpanT = tuple[int, int, str]

# The same rule as pureml.nlp.tokenizer (copied, not imported: this module must run in
# interpreters where pureml is not importable). vs_edsnlp.py checks that both give the same
# word count on the training text so words/s are counted in the same unit for all contenders.
_WORD = re.compile(r"\d+(?:[.,]\d+)+|[^\W_]+|\S")


def count_words(text: str) -> int:
    """Number of words of ``text`` by pureml's tokenizer rule.

    >>> count_words("BRCA1-associated breast cancer (2.5 mg).")
    10
    """
    return sum(1 for _ in _WORD.finditer(text))


def word_offsets(text: str) -> list[tuple[int, int]]:
    """(start, end) character offsets of the words of ``text`` (pureml's rule)."""
    return [m.span() for m in _WORD.finditer(text)]


def read_split(split: str, data_dir: Path | str = DATA_DIR) -> list[dict]:
    """Read ``data_dir/split`` as ``[{"id", "text", "spans": [(start, end, label)]}]``, sorted by id.

    Only text-bound annotations (``T`` lines) are kept; NCBI has no discontinuous ones.

    >>> docs = read_split("devel")
    >>> len(docs), sorted({s[2] for d in docs for s in d["spans"]})[:2]
    (100, ['CompositeMention', 'DiseaseClass'])
    """
    folder = Path(data_dir) / split
    docs = []
    for txt in sorted(folder.glob("*.txt")):
        text = txt.read_text(encoding="utf-8")
        spans: list[SpanT] = []
        ann = txt.with_suffix(".ann")
        if ann.exists():
            for line in ann.read_text(encoding="utf-8").splitlines():
                if not line.startswith("T"):
                    continue
                _, label_offsets, _surface = line.split("\t", 2)
                label, offsets = label_offsets.split(" ", 1)
                if ";" in offsets:  # discontinuous: not representable as one span
                    continue
                start, end = (int(x) for x in offsets.split())
                spans.append((start, end, label))
        docs.append({"id": txt.stem, "text": text, "spans": sorted(set(spans))})
    return docs


def gold_of(docs: Iterable[dict]) -> dict[str, list[SpanT]]:
    """``{doc_id: spans}`` of documents read by :func:`read_split`."""
    return {d["id"]: list(d["spans"]) for d in docs}


def score(gold: dict[str, list[SpanT]], pred: dict[str, list[SpanT]]) -> dict:
    """Exact-match micro precision / recall / F1 over (doc, start, end, label), plus per label.

    Documents missing from ``pred`` count as predicting nothing; predictions for unknown
    documents are false positives.
    """
    g = {(doc, *s) for doc, spans in gold.items() for s in spans}
    p = {(doc, *s) for doc, spans in pred.items() for s in spans}

    def prf(gs: set, ps: set) -> dict:
        tp = len(gs & ps)
        precision = tp / len(ps) if ps else 0.0
        recall = tp / len(gs) if gs else 0.0
        f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
        return {
            "precision": precision,
            "recall": recall,
            "f1": f1,
            "tp": tp,
            "n_gold": len(gs),
            "n_pred": len(ps),
        }

    out = prf(g, p)
    labels = sorted({x[3] for x in g | p})
    out["per_label"] = {
        lab: prf({x for x in g if x[3] == lab}, {x for x in p if x[3] == lab}) for lab in labels
    }
    return out
