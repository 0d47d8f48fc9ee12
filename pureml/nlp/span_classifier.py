"""Predict attribute values of given spans (for example a mention's type).

``attributes`` maps each attribute name to its possible values; with ``None`` (or a list of
names) they are inferred in ``post_init`` from the attributes of the training spans. A value
seen at training or evaluation time that the classifier does not know is ignored in the loss
(with one warning), never an error; at inference the classifier only writes known values.

The loss is the cross-entropy summed over spans and attributes, divided by the **global**
number of spans (``batch["stats"]["<name>_spans"]``), so sub-batch losses add up to the batch
loss.

>>> from pureml.nlp.doc import Doc, Span
>>> from pureml.nlp import Pipeline, ScratchEncoder
>>> doc = Doc("Familial breast cancer.")
>>> doc.spans["gold"] = [Span(9, 22, "Disease", {"type": "Specific"})]
>>> clf = SpanClassifier(attributes={"type": ["Class", "Specific"]})
>>> nlp = Pipeline({"embedding": ScratchEncoder(width=16, depth=1), "types": clf})
>>> nlp(doc).spans["gold"][0].attributes["type"] in ("Class", "Specific")
True
"""

from __future__ import annotations

import warnings
from typing import Any

import torch
import torch.nn.functional as F

from ..registry import components
from .component import Component, ForwardContext
from .span_pooler import MODES as POOLING_MODES
from .span_pooler import SpanPooler, get_spans


@components.register("span_classifier")
class SpanClassifier(Component):
    """Attribute classifier over spans pooled from a word embedding.

    Args:
        embedding: name of the word embedding component.
        span_getter: span group(s) whose spans are classified (and annotated at inference).
        attributes: ``{name: [values]}``, a list of names (or one name) to infer values for,
            or None (all).
        pooling: ``"mean"``, ``"max"`` or ``"attention"`` (see ``span_pooler``).
        dropout: rate on the pooled vectors.
    """

    factory = "span_classifier"

    def __init__(
        self,
        embedding: str = "embedding",
        span_getter: str | list[str] = "gold",
        attributes: dict[str, list] | list[str] | None = None,
        pooling: str = "mean",
        dropout: float = 0.1,
    ) -> None:
        super().__init__()
        if pooling not in POOLING_MODES:  # SpanPooler would name its own argument, mode
            raise ValueError(f"pooling: expected one of {POOLING_MODES}, got {pooling!r}")
        self.embedding = embedding
        self.span_getter = span_getter
        self.pooling = pooling
        self.p = dropout
        self.pooler = SpanPooler(embedding, span_getter, pooling)
        if isinstance(attributes, str):  # one name, not the list of its letters
            attributes = [attributes]
        if isinstance(attributes, dict):
            self.attributes: dict[str, list] | None = {k: list(v) for k, v in attributes.items()}
            self._names = list(attributes)
        else:
            self.attributes = None
            self._names = list(attributes) if attributes is not None else None
        self._built_for = None
        self._warned: set[tuple[str, str]] = set()

    def config(self) -> dict[str, Any]:
        return dict(
            embedding=self.embedding,
            span_getter=self.span_getter,
            attributes={k: list(v) for k, v in (self.attributes or {}).items()},
            pooling=self.pooling,
            dropout=self.p,
        )

    def post_init(self, docs) -> None:
        seen: dict[str, set] = {}
        n_spans = 0
        for doc in docs:
            for span in get_spans(doc, self.span_getter):
                n_spans += 1
                for k, v in span.attributes.items():
                    # None is no value (as in the loss and the scorer), not a class to predict
                    if v is not None and (self._names is None or k in self._names):
                        if not isinstance(v, str | int | float):  # bool is an int
                            raise ValueError(
                                f"{self.name}: attribute {k!r} of a span in doc {doc.id!r} has "
                                f"the value {v!r}; only str, int, float and bool values can be "
                                "predicted: name the attributes to predict (attributes=[...])"
                            )
                        seen.setdefault(k, set()).add(v)
        attrs = dict(self.attributes or {})
        for k in self._names or sorted(seen):
            known = attrs.setdefault(k, [])
            known.extend(sorted((v for v in seen.get(k, ()) if v not in known), key=repr))
            if not known:
                # a head with no value to predict trains on nothing and fails at inference
                raise ValueError(
                    f"{self.name}: no span in group(s) {self.span_getter!r} of the training "
                    f"docs has attribute {k!r}: nothing to learn (span_getter names the groups "
                    "holding the annotated spans, 'gold' for the readers)"
                )
            if len(seen.get(k, ())) == 1:
                (value,) = seen[k]
                # the loss skips spans without a value: nothing teaches the head another one
                warnings.warn(
                    f"{self.name}: attribute {k!r} has one value in the training docs "
                    f"({value!r}), so every span will be predicted {value!r}. A brat binary "
                    "attribute is written only where it holds: give the reader "
                    f"default_attributes = {{ {k} = false }} (or another default) for the "
                    f"spans without it ({n_spans} spans in all)",
                    stacklevel=2,
                )
        self.attributes = attrs

    def initialize(self) -> None:
        self.pooler.name = f"{self.name}.pooler"
        object.__setattr__(self.pooler, "_pipeline_ref", self._pipeline_ref)
        self.pooler.initialize()
        if not self.attributes:
            return
        width = self.pooler.output_size
        key = (width, tuple((k, tuple(v)) for k, v in self.attributes.items()))
        if self._built_for == key:
            return
        # one linear layer over all attributes' values; logits are split per attribute
        self.head = torch.nn.Linear(width, sum(len(v) for v in self.attributes.values()))
        self._built_for = key

    def _check_built(self) -> None:
        if self._built_for is None:
            raise RuntimeError(
                f"component {self.name!r} has no attributes to predict: pass attributes={{...}} "
                "or run nlp.post_init(training_docs) first"
            )

    def preprocess(self, doc, supervision: bool = False) -> dict[str, Any]:
        out = self.pooler.preprocess(doc)
        if supervision:
            self._check_built()
            targets = {}
            spans = [s for s, _, _ in self.pooler.spans_of(doc)]
            for k, values in self.attributes.items():
                index = {v: i for i, v in enumerate(values)}
                row = []
                for s in spans:
                    v = s.attributes.get(k)
                    if v is not None and v not in index and (k, repr(v)) not in self._warned:
                        self._warned.add((k, repr(v)))
                        warnings.warn(
                            f"{self.name}: value {v!r} of attribute {k!r} (doc {doc.id!r}) was "
                            "not seen in training; it is ignored in the loss",
                            stacklevel=2,
                        )
                    row.append(index.get(v, -100))
                targets[k] = row
            out["targets"] = targets
        return out

    def collate(self, features: list[dict[str, Any]]) -> dict[str, Any]:
        batch = self.pooler.collate(features)
        if features and "targets" in features[0]:
            batch["targets"] = {
                k: torch.tensor([t for f in features for t in f["targets"][k]], dtype=torch.int64)
                for k in self.attributes
            }
        return batch

    def forward(self, batch: dict[str, Any], ctx: ForwardContext) -> dict[str, Any]:
        self._check_built()
        pooled = self.pooler(batch, ctx)["span_embeddings"]
        x = ctx.dropout(pooled, self.p, self.name)
        sizes = [len(v) for v in self.attributes.values()]
        logits = dict(zip(self.attributes, self.head(x).split(sizes, dim=-1)))
        out: dict[str, Any] = {"logits": logits}
        if "targets" in batch:
            support = ctx.stats[self.stat("spans")].clamp(min=1)
            loss = sum(
                F.cross_entropy(logits[k], batch["targets"][k], ignore_index=-100, reduction="sum")
                for k in logits
            )
            out["loss"] = loss / support
        return out

    def postprocess(self, docs, outputs: dict[str, Any]):
        preds = {k: v.argmax(-1).tolist() for k, v in outputs["logits"].items()}
        i = 0
        for doc in docs:
            for span, _, _ in self.pooler.spans_of(doc):
                for k, values in self.attributes.items():
                    span.attributes[k] = values[preds[k][i]]
                i += 1
        return docs
