"""Pool word embeddings over spans: mean, max or learned attention.

The spans are read from the doc's span groups named by ``span_getter`` (in group order, then
document order); spans that cover no word are skipped (and stay unannotated). The pooler runs
the word embedding through ``ctx.run`` so a head sharing the embedding does not recompute it.

>>> from pureml.nlp.doc import Doc, Span
>>> doc = Doc("Familial breast cancer.")
>>> doc.spans["gold"] = [Span(9, 22, "Disease")]
>>> SpanPooler().preprocess(doc)["spans"]
[(1, 3)]
"""

from __future__ import annotations

from typing import Any

import torch

from ..registry import components
from .component import Component, ForwardContext, pad_length

MODES = ("mean", "max", "attention")


def span_groups(span_getter: str | list[str] | None) -> list[str]:
    """The group names ``span_getter`` names (a group name or a list of them)."""
    return [span_getter] if isinstance(span_getter, str) else list(span_getter or [])


def get_spans(doc, span_getter: str | list[str]) -> list:
    """The spans of ``doc`` in the groups ``span_getter`` names (a group name or a list)."""
    return [s for g in span_groups(span_getter) for s in doc.spans.get(g, [])]


@components.register("span_pooler")
class SpanPooler(Component):
    """Span vectors ``[S, width]`` from word vectors of component ``embedding``.

    Outputs ``{"span_embeddings": [S, D], "span_doc": [S]}`` where rows follow the collated
    batch order of docs, then span order within each doc.
    """

    factory = "span_pooler"

    def __init__(
        self,
        embedding: str = "embedding",
        span_getter: str | list[str] = "gold",
        mode: str = "mean",
    ) -> None:
        super().__init__()
        if mode not in MODES:
            raise ValueError(f"span_pooler mode must be one of {MODES}, got {mode!r}")
        self.embedding = embedding
        self.span_getter = span_getter
        self.mode = mode
        self._width: int | None = None

    def config(self) -> dict[str, Any]:
        return dict(embedding=self.embedding, span_getter=self.span_getter, mode=self.mode)

    @property
    def output_size(self) -> int:
        return self.pipeline.get_pipe(self.embedding).output_size

    def initialize(self) -> None:
        width = self.output_size
        if self.mode == "attention" and self._width != width:
            self.attention = torch.nn.Linear(width, 1)
        self._width = width

    def spans_of(self, doc) -> list[tuple[Any, int, int]]:
        """``(span, first_word, last_word_exclusive)`` of the spans this pooler embeds."""
        out = []
        for span in get_spans(doc, self.span_getter):
            first, last = doc.word_range(span)
            if first < last:
                out.append((span, first, last))
        return out

    def preprocess(self, doc, supervision: bool = False) -> dict[str, Any]:
        spans = [(f, last) for _, f, last in self.spans_of(doc)]
        return {"n_words": len(doc.words), "spans": spans, "stats": {"spans": len(spans)}}

    def collate(self, features: list[dict[str, Any]]) -> dict[str, Any]:
        length = pad_length(max((f["n_words"] for f in features), default=0))
        rows = [(i, f, last) for i, feat in enumerate(features) for f, last in feat["spans"]]
        width = pad_length(max((last - f for _, f, last in rows), default=1))
        index = torch.zeros(len(rows), width, dtype=torch.int64)
        mask = torch.zeros(len(rows), width, dtype=torch.bool)
        for s, (i, f, last) in enumerate(rows):
            index[s, : last - f] = torch.arange(i * length + f, i * length + last)
            mask[s, : last - f] = True
        doc = torch.tensor([i for i, _, _ in rows], dtype=torch.int64)
        return {"index": index, "mask": mask, "doc": doc}

    def forward(self, batch: dict[str, Any], ctx: ForwardContext) -> dict[str, Any]:
        words = ctx.run(self.embedding)["embeddings"]
        flat = words.reshape(-1, words.shape[-1])
        x = flat[batch["index"]]  # [S, W, D]
        mask = batch["mask"].unsqueeze(-1)
        if self.mode == "mean":
            pooled = (x * mask).sum(1) / mask.sum(1).clamp(min=1)
        elif self.mode == "max":
            pooled = x.masked_fill(~mask, -1e4).amax(1)
        else:
            scores = self.attention(x).masked_fill(~mask, -1e4)
            pooled = (scores.softmax(1) * x).sum(1)
        return {"span_embeddings": pooled, "span_doc": batch["doc"]}
