"""Named-entity recognition with a linear-chain CRF over BIOUL tags.

Labels are inferred from the training docs in ``post_init``. The loss is the negative
log-likelihood summed over documents and divided by the **global** number of words this
component sees in the step (``batch["stats"]["<name>_words"]``, which the trainer replaces by
the total over sub-batches and ranks), so summing the losses of sub-batches gives the loss of
the whole batch. Decoding is exact Viterbi restricted to valid BIOUL moves.

>>> from pureml.nlp import Pipeline, ScratchEncoder, NerCrf
>>> nlp = Pipeline({"embedding": ScratchEncoder(width=16, depth=1), "ner": NerCrf(labels=["X"])})
>>> nlp("Some text.").spans["ents"] is not None
True
"""

from __future__ import annotations

import difflib
import warnings
from typing import Any

import torch

from ..registry import components
from . import crf
from .component import Component, ForwardContext
from .doc import Span


@components.register("ner_crf")
class NerCrf(Component):
    """BIOUL CRF tagger on top of a word embedding component.

    Args:
        embedding: name of the embedding component (its outputs: ``embeddings``, ``mask``).
        labels: entity labels (one label may be given as a string); inferred from ``target_group`` spans in ``post_init`` if None.
        target_group: span group holding gold entities in training docs.
        span_setter: span group the predictions are written to.
        dropout: rate on the word vectors before the emission layer.
    """

    factory = "ner_crf"

    def __init__(
        self,
        embedding: str = "embedding",
        labels: list[str] | None = None,
        target_group: str = "gold",
        span_setter: str = "ents",
        dropout: float = 0.1,
    ) -> None:
        super().__init__()
        self.embedding = embedding
        # one label is one label, not the list of its letters
        self.labels = (
            [labels] if isinstance(labels, str) else None if labels is None else list(labels)
        )
        self.target_group = target_group
        self.span_setter = span_setter
        self.p = dropout
        self._warned: set[str] = set()
        # the CRF's product tree spans at least this many words (``plan_shapes``)
        self.tree_size = 2
        self._built_for: tuple[int, tuple[str, ...]] | None = None

    def config(self) -> dict[str, Any]:
        return dict(
            embedding=self.embedding,
            labels=list(self.labels or []),
            target_group=self.target_group,
            span_setter=self.span_setter,
            dropout=self.p,
        )

    def post_init(self, docs) -> None:
        docs = list(docs)
        seen = sorted({s.label for d in docs for s in d.spans.get(self.target_group, [])})
        if docs and not seen:
            from ..stream.errors import DataError  # the CLI's "bad input": one line, exit 2

            # else it trained to tag nothing, with no label (or only the given ones) to learn
            empty = (
                ""
                if any(d.text.strip() for d in docs)
                else "; they have no words: empty documents?"
            )
            raise DataError(
                f"{self.name}: no spans in group {self.target_group!r} of the training docs: "
                "nothing to learn (target_group names the annotated group, 'gold' for the "
                f"readers){empty}"
            )
        for label in self.labels or ():
            if label not in seen:
                close = [s for s in seen if s.lower() == label.lower()]
                close = close or difflib.get_close_matches(label, seen, n=1)
                hint = (
                    f"; did you mean {close[0]!r}?" if close else f" (they have: {', '.join(seen)})"
                )
                warnings.warn(
                    f"{self.name}: label {label!r} never occurs in group {self.target_group!r} "
                    f"of the training docs{hint}",
                    stacklevel=2,
                )
        if self.labels is None:
            self.labels = seen
        else:
            self.labels = self.labels + [lab for lab in seen if lab not in self.labels]

    def initialize(self) -> None:
        """(Re)build parameters once the labels and the embedding size are known."""
        if self.labels is None:
            return
        width = self.pipeline.get_pipe(self.embedding).output_size
        key = (width, tuple(self.labels))
        if self._built_for == key:
            return
        n = crf.num_tags(len(self.labels))
        self.emit = torch.nn.Linear(width, n)
        self.transitions = torch.nn.Parameter(torch.zeros(n, n))
        self.start = torch.nn.Parameter(torch.zeros(n))
        self.end = torch.nn.Parameter(torch.zeros(n))
        c_trans, c_start, c_end = crf.bioul_constraints(len(self.labels))
        self.register_buffer("c_trans", c_trans, persistent=False)
        self.register_buffer("c_start", c_start, persistent=False)
        self.register_buffer("c_end", c_end, persistent=False)
        self._built_for = key

    def _check_built(self) -> None:
        if self._built_for is None:
            raise RuntimeError(
                f"component {self.name!r} has no labels: pass labels=[...] or run "
                "nlp.post_init(training_docs) first"
            )

    # -- data -------------------------------------------------------------------------------
    def preprocess(self, doc, supervision: bool = False) -> dict[str, Any]:
        n = len(doc.words)
        out: dict[str, Any] = {"n_words": n, "stats": {"words": n}}
        if supervision:
            self._check_built()
            index = {lab: i for i, lab in enumerate(self.labels)}
            spans = []
            for span in doc.spans.get(self.target_group, []):
                if span.label not in index:
                    self._warn_once(
                        span.label,
                        f"{self.name}: label {span.label!r} (doc {doc.id!r}) was not seen in "
                        "training; its spans are treated as outside any entity",
                    )
                    continue
                frags = span.attributes.get("fragments")
                if isinstance(frags, list) and len(frags) > 1:  # brat's "Label 0 7;19 29"
                    parts = " … ".join(repr(doc.text[a:b]) for a, b in frags)
                    self._warn_once(
                        "discontinuous",
                        f"{self.name}: gold span {parts} (doc {doc.id!r}) is discontinuous; "
                        "the CRF tags contiguous entities, so it is trained as the whole "
                        f"stretch {doc.text[span.start : span.end]!r} (warned for the first "
                        "such span only)",
                    )
                first, last = doc.word_range(span)
                if first < last:
                    spans.append((first, last, index[span.label]))
                    start, end = doc.words[first][0], doc.words[last - 1][1]
                    if (start, end) != (span.start, span.end):
                        self._warn_once(
                            "boundaries",
                            f"{self.name}: gold span {doc.text[span.start : span.end]!r} "
                            f"(doc {doc.id!r}) does not start and end where words do; it is "
                            f"trained as the words it touches, {doc.text[start:end]!r} "
                            "(warned for the first such span only)",
                        )
                else:
                    self._warn_once(
                        "empty",
                        f"{self.name}: gold span {span.start}-{span.end} "
                        f"{doc.text[span.start : span.end]!r} (doc {doc.id!r}) covers no word "
                        "(empty, or only spaces); it is left out of training (warned for the "
                        "first such span only)",
                    )
            kept = crf.drop_overlaps(spans)
            if len(kept) < len(spans):
                self._warn_once(
                    "overlaps",
                    f"{self.name}: {len(spans) - len(kept)} gold span(s) of doc {doc.id!r} "
                    "overlap a longer one and are left out of training: the CRF tags one "
                    "entity per word (warned for the first such doc only)",
                )
            out["tags"] = crf.bioul_encode(kept, n)
        return out

    def plan_shapes(self, words: int | None) -> None:
        # The tree pads to the next power of two anyway, one compiled graph per octave of a
        # batch's word total; sized from the budget, sub-batches of 300 and 700 words share one.
        # The padding multiplies by identities: log Z is bitwise the same, the gradient's sums
        # over positions round differently in float64 (1e-13 relative), a function of the recipe.
        self.tree_size = 2 if words is None else max(2, words)

    def _warn_once(self, key: str, message: str) -> None:
        if key not in self._warned:
            self._warned.add(key)
            warnings.warn(message, stacklevel=3)

    def collate(self, features: list[dict[str, Any]]) -> dict[str, Any]:
        if not features or "tags" not in features[0]:
            return {}
        lengths = [f["n_words"] for f in features]
        # The documents' words end to end: the loss runs one CRF over the batch's real words
        # (crf.packed_log_likelihood) instead of rows padded to the longest document.
        # not repeat_interleave: with two or more torch threads it took 8 ms here, 200x this
        rows = torch.cat([torch.full((n,), i, dtype=torch.int64) for i, n in enumerate(lengths)])
        cols = torch.cat([torch.arange(n) for n in lengths])
        tags = torch.tensor([t for f in features for t in f["tags"]], dtype=torch.int64)
        return {"rows": rows, "cols": cols, "tags": tags}

    # -- model ------------------------------------------------------------------------------
    def potentials(self):
        """CRF transition, start and end scores with invalid BIOUL moves forbidden."""
        return (
            self.transitions + self.c_trans,
            self.start + self.c_start,
            self.end + self.c_end,
        )

    def forward(self, batch: dict[str, Any], ctx: ForwardContext) -> dict[str, Any]:
        self._check_built()
        emb = ctx.run(self.embedding)
        trans, start, end = self.potentials()
        if "tags" in batch:
            if batch["tags"].numel() == 0:  # only empty documents
                return {"loss": trans.sum() * 0.0}
            words = emb["embeddings"][batch["rows"], batch["cols"]]  # [N, D], real words only
            emissions = self.emit(ctx.dropout(words, self.p, self.name))
            ll = crf.packed_log_likelihood(
                emissions, batch["tags"], batch["cols"] == 0, trans, start, end, self.tree_size
            )
            support = ctx.stats[self.stat("words")].clamp(min=1)
            return {"loss": -ll / support, "emissions": emissions}
        x = ctx.dropout(emb["embeddings"], self.p, self.name)
        emissions = self.emit(x)
        tags = crf.viterbi(emissions, emb["mask"], trans, start, end)
        return {"tags": tags, "emissions": emissions}

    def postprocess(self, docs, outputs: dict[str, Any]):
        tags = outputs["tags"].tolist()
        for doc, row in zip(docs, tags):
            words = doc.words
            ents = []
            for first, last, lab in crf.bioul_decode(row[: len(words)]):
                ents.append(Span(words[first][0], words[last - 1][1], self.labels[lab]))
            doc.spans[self.span_setter] = ents
        return docs
