"""Predict attribute values of given spans (for example a mention's type).

``attributes`` maps each attribute name to its possible values; with ``None`` (or a list of
names) they are inferred in ``post_init`` from the attributes of the training spans. A value
seen at training or evaluation time that the classifier does not know is ignored in the loss
(with one warning), never an error; at inference the classifier only writes known values.

``span_labels`` restricts an attribute to the spans of some labels (EDS-NLP's
``attributes={"Negation": ["Pathologie"]}``): it is learnt from those spans only and written
on those only. Under ``attributes=None`` the brat reader's bookkeeping (:data:`READER_KEYS`:
notes, normalisations, discontinuous fragments) is never inferred as a target.

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

import difflib
import json
import warnings
from typing import Any

import torch
import torch.nn.functional as F

from ..registry import components
from .component import Component, ForwardContext
from .span_pooler import MODES as POOLING_MODES
from .span_pooler import SpanPooler, get_spans

# What the brat reader (``stream/standoff.py``) stores in ``span.attributes`` besides brat's own
# A/M attributes: facts about the annotation, not properties of a mention. Inferred under
# attributes=None they became classes: an annotator note ("vu par le Dr ...") was then written
# onto every predicted entity, and a discontinuous entity's fragments stopped training.
READER_KEYS = {
    "note": "brat annotator notes (free text, which may name people)",
    "fragments": "the offsets of discontinuous brat entities",
    "norm_name": "the names of brat normalisations (N lines), written with norm",
    "norm": "brat normalisations (N lines)",
}
# Of those, the ones no recipe may name either; norm stays possible by name (entity linking
# over a small set of codes is a classification), never by default (NCBI-disease has hundreds).
NOT_PREDICTABLE = ("note", "fragments", "norm_name")


def _check_predictable(names: list[str]) -> None:
    for k in names:
        if k in NOT_PREDICTABLE:
            raise ValueError(
                f"attributes: {k!r} holds {READER_KEYS[k]}, not a value to predict; "
                "remove it from attributes"
            )


def _check_span_labels(value: Any) -> dict[str, list[str]]:
    """``span_labels`` as ``{attribute: [span labels]}`` ({} for None); TypeError otherwise."""
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise TypeError(
            "span_labels: expected a table {attribute = [span labels]}, got " + repr(value)
        )
    out = {}
    for k, labels in value.items():
        labels = [labels] if isinstance(labels, str) else labels  # one label, not its letters
        if not isinstance(labels, list | tuple) or not all(isinstance(x, str) for x in labels):
            raise TypeError(f"span_labels.{k}: expected a list of span labels, got {labels!r}")
        out[k] = list(labels)
    return out


@components.register("span_classifier")
class SpanClassifier(Component):
    """Attribute classifier over spans pooled from a word embedding.

    Args:
        embedding: name of the word embedding component.
        span_getter: span group(s) whose spans are classified (and annotated at inference).
        attributes: ``{name: [values]}``, a list of names (or one name) to infer values for,
            or None (all the training spans carry, but the brat reader's ``note``, ``norm``,
            ``norm_name`` and ``fragments``).
        span_labels: ``{name: [span labels]}``: the attribute is learnt from and predicted
            on spans of these labels only (attributes not named here: on every span).
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
        span_labels: dict[str, list[str]] | None = None,
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
        _check_predictable(self._names or [])
        self.span_labels = _check_span_labels(span_labels)
        unknown = [k for k in self.span_labels if self._names is not None and k not in self._names]
        if unknown:
            raise ValueError(
                f"span_labels: {unknown[0]!r} is not one of the attributes predicted "
                f"({', '.join(self._names or [])})"
            )
        self._built_for = None
        self._warned: set[tuple[str, str]] = set()

    def config(self) -> dict[str, Any]:
        out = dict(
            embedding=self.embedding,
            span_getter=self.span_getter,
            attributes={k: list(v) for k, v in (self.attributes or {}).items()},
            pooling=self.pooling,
            dropout=self.p,
        )
        # only when set: every other pipeline's config (and the run hash over it) stays as it was
        if self.span_labels:
            out["span_labels"] = {k: list(v) for k, v in self.span_labels.items()}
        return out

    def applies(self, attribute: str, span: Any) -> bool:
        """Whether ``attribute`` is learnt from, predicted on and scored on ``span``."""
        labels = self.span_labels.get(attribute)
        return labels is None or span.label in labels

    def post_init(self, docs) -> None:
        spans = [(doc, span) for doc in docs for span in get_spans(doc, self.span_getter)]
        labels_seen = {span.label for _, span in spans}
        present = {k for _, span in spans for k in span.attributes}
        skipped = sorted(present & READER_KEYS.keys()) if self._names is None else []
        candidates = (
            self._names if self._names is not None else sorted(present - READER_KEYS.keys())
        )
        seen: dict[str, set] = {}
        for doc, span in spans:
            for k in candidates:
                v = span.attributes.get(k)
                # None is no value (as in the loss and the scorer), not a class to predict
                if v is None or not self.applies(k, span):
                    continue
                if not isinstance(v, str | int | float):  # bool is an int
                    raise ValueError(
                        f"{self.name}: attribute {k!r} of a span in doc {doc.id!r} has "
                        f"the value {v!r}; only str, int, float and bool values can be "
                        "predicted: name the attributes to predict (attributes=[...])"
                    )
                seen.setdefault(k, set()).add(v)
        # all: the attributes some span gives a value (one always None is no target)
        names = self._names if self._names is not None else sorted(seen)
        self._check_against_labels(seen, labels_seen)
        for k in self.span_labels:
            if k not in names:
                raise ValueError(
                    f"{self.name}: span_labels names {k!r}, which no span in "
                    f"{self._where(k)} has: nothing to learn"
                )
        if not names:
            left_out = (
                f" ({', '.join(skipped)}: the brat reader's bookkeeping, not predicted unless "
                'named, as norm can be: attributes = ["norm"])'
                if skipped
                else ""
            )
            raise ValueError(
                f"{self.name}: no span in group(s) {self.span_getter!r} of the training docs "
                f"has an attribute to predict{left_out}"
            )
        attrs = dict(self.attributes or {})
        for k in names:
            known = attrs.setdefault(k, [])
            known.extend(sorted((v for v in seen.get(k, ()) if v not in known), key=repr))
            if not known:
                # a head with no value to predict trains on nothing and fails at inference
                raise ValueError(
                    f"{self.name}: no span in {self._where(k)} has attribute {k!r}: nothing "
                    "to learn (span_getter names the groups holding the annotated spans, "
                    "'gold' for the readers)"
                )
            if len(seen.get(k, ())) == 1:
                (value,) = seen[k]
                n = sum(self.applies(k, span) for _, span in spans)
                # the loss skips spans without a value: nothing teaches the head another one
                hint = (
                    ""
                    if k in READER_KEYS  # an N line is no flag to default (a norm = false?)
                    else ". A brat binary attribute is written only where it holds: give the "
                    f"reader default_attributes = {{ {k} = false }} (or another default) for "
                    "the spans without it"
                )
                warnings.warn(
                    f"{self.name}: attribute {k!r} has one value in the training docs "
                    f"({value!r}), so every span will be predicted {value!r}{hint} "
                    f"({n} spans in all)",
                    stacklevel=2,
                )
        self.attributes = attrs

    def _where(self, k: str) -> str:
        """Which training spans attribute ``k`` is read from, for messages."""
        where = f"group(s) {self.span_getter!r} of the training docs"
        if k in self.span_labels:
            where += f" labelled {' or '.join(map(repr, self.span_labels[k]))}"
        return where

    def _check_against_labels(self, seen: dict[str, set], labels_seen: set[str]) -> None:
        """Catch the EDS-NLP idiom ``attributes = {Negation = ["Pathologie"]}`` (span labels an
        attribute applies to), which here reads as the values of Negation: "Pathologie" became
        a class no span has. Also flag span_labels that no training span carries (a typo
        restricts the attribute to no span)."""
        given = self.attributes or {}
        as_labels = {
            k: [
                v
                for v in vs
                if isinstance(v, str) and v in labels_seen and v not in seen.get(k, ())
            ]
            for k, vs in given.items()
        }
        as_labels = {k: v for k, v in as_labels.items() if v}
        if as_labels:
            k, labels = next(iter(as_labels.items()))
            table = ", ".join(
                f"{a} = [{', '.join(json.dumps(x) for x in v)}]" for a, v in as_labels.items()
            )
            raise ValueError(
                f"{self.name}: attributes.{k} lists {labels[0]!r}, a span label, as a value of "
                f"{k!r}, and no training span has that value. A table under attributes gives "
                "each attribute its values; to learn and predict an attribute on spans of some "
                "labels only (what EDS-NLP's attributes table means), write attributes = "
                f"[{', '.join(json.dumps(a) for a in given)}] and span_labels = {{ {table} }}"
            )
        for k, labels in self.span_labels.items():
            for label in labels:
                if label not in labels_seen:
                    close = difflib.get_close_matches(label, sorted(labels_seen), n=1)
                    hint = f"; did you mean {close[0]!r}?" if close else ""
                    warnings.warn(
                        f"{self.name}: span_labels.{k}: no span of group(s) "
                        f"{self.span_getter!r} in the training docs is labelled {label!r}{hint}",
                        stacklevel=3,
                    )
        for k, values in given.items():
            unseen = [v for v in values if v not in seen.get(k, ())]
            if unseen:
                warnings.warn(
                    f"{self.name}: value {unseen[0]!r} of attribute {k!r} is given in "
                    "attributes but no training span has it: the head never learns to predict it",
                    stacklevel=3,
                )

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
                    if not self.applies(k, s):  # a span of another label: no target
                        row.append(-100)
                        continue
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
                    if self.applies(k, span):
                        span.attributes[k] = values[preds[k][i]]
                i += 1
        return docs
