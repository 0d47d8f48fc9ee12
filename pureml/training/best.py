"""``model-best``: the pipeline as it was at the validation with the highest ``best_metric``.

``model-last`` is where a run stopped; on a small clinical corpus the dev score often peaks
earlier and the last model has overfitted. With ``train.best_metric = "ner/micro/f1"`` (a path in
the validation scores, as ``metrics.jsonl`` names them) the trainer also writes
``OUTPUT_DIR/model-best`` whenever that score beats every earlier validation of the run. A list
of paths ranks validations by their mean: a pipeline with an NER head and a span classifier
(``["ner/micro/f1", "span_attributes/status/micro/f1"]``) keeps the model best at both. The
best so far is saved in each checkpoint, so a resumed run keeps comparing against it; it is
forgotten when the metric or the validation documents change.

>>> best = BestScore("ner/micro/f1", docs_key="d")
>>> best.update({"ner": {"micro": {"f1": 0.5}}}, step=10), best.update({"ner": {"micro": {"f1": 0.4}}}, step=20)
(True, False)
>>> best.state()
{'metric': 'ner/micro/f1', 'docs': 'd', 'step': 10, 'value': 0.5}
>>> both = BestScore(["a/f1", "b/f1"], docs_key="d")
>>> both.update({"a": {"f1": 0.5}, "b": {"f1": 1.0}}, step=10), both.value, both.name
(True, 0.75, 'mean of a/f1, b/f1')
"""

from __future__ import annotations

import difflib
import hashlib
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from ..nlp.doc import Doc
from .loggers import flatten

BEST_DIR = "model-best"


class BestMetricError(ValueError):
    """``best_metric`` names no score of the validation."""


def docs_key(docs: Iterable[Doc]) -> str:
    """A short fingerprint of validation documents (ids and texts): a best score measured on
    other documents is not comparable."""
    h = hashlib.sha256()
    for doc in docs:
        for part in (str(doc.id), doc.text):
            h.update(part.encode("utf-8", "surrogatepass"))
            h.update(b"\0")
    return h.hexdigest()[:16]


def metric_value(scores: Mapping[str, Any], metric: str) -> float:
    """The score at ``metric`` (``"ner/micro/f1"``) in nested validation ``scores``."""
    flat = {k: v for k, v in flatten(scores).items() if isinstance(v, int | float)}
    if metric not in flat:
        hint = difflib.get_close_matches(metric, list(flat), n=1)
        have = ", ".join(sorted(flat)[:12]) + (", ..." if len(flat) > 12 else "")
        raise BestMetricError(
            f"no score {metric!r} in the validation scores"
            + (f"; did you mean {hint[0]!r}?" if hint else f" (they have: {have})")
        )
    return float(flat[metric])


class BestScore:
    """The highest value of ``metric`` seen so far in a run, and its step (higher is better)."""

    def __init__(self, metric: str | Sequence[str], docs_key: str) -> None:
        self.metric = metric if isinstance(metric, str) else list(metric)
        self.docs_key = docs_key
        self.step: int | None = None
        self.value: float | None = None

    def update(self, scores: Mapping[str, Any], step: int) -> bool:
        """Record this validation; True when it beats every earlier one (write model-best)."""
        paths = [self.metric] if isinstance(self.metric, str) else self.metric
        value = sum(metric_value(scores, p) for p in paths) / len(paths)
        if value != value:  # NaN never counts as an improvement
            return False
        if self.value is not None and value <= self.value:
            return False
        self.step, self.value = step, value
        return True

    @property
    def name(self) -> str:
        """The metric as messages name it."""
        if isinstance(self.metric, str):
            return self.metric
        return "mean of " + ", ".join(self.metric)

    def state(self) -> dict[str, Any]:
        return {
            "metric": self.metric,
            "docs": self.docs_key,
            "step": self.step,
            "value": self.value,
        }

    def restore(self, saved: Mapping[str, Any] | None) -> bool:
        """Take a checkpoint's best so far, unless it was another metric or other documents;
        True when taken."""
        if not saved or saved.get("metric") != self.metric or saved.get("docs") != self.docs_key:
            return False
        self.step, self.value = saved.get("step"), saved.get("value")
        return True
