"""Scores: NER (exact and token level), span attributes, speed; and the default scorer.

The metric functions compare gold documents with predicted ones (same order)::

    >>> from pureml.nlp.doc import Doc, Span
    >>> gold = Doc("Familial breast cancer.", id="d")
    >>> gold.spans["gold"] = [Span(9, 22, "Disease")]
    >>> pred = gold.copy(drop=("gold",))
    >>> pred.spans["ents"] = [Span(16, 22, "Disease")]
    >>> s = ner_scores([gold], [pred])
    >>> s["micro"]["f1"], s["token"]["micro"]["r"]
    (0.0, 0.5)

The default scorer scores each task on copies of the validation documents with that task's gold
removed and the unrelated components disabled (so one head cannot see another's answers). Under
torchrun each rank predicts its share of the documents (:func:`validation_share`) and the ranks
exchange their predictions as text (:func:`encode_predictions`, :func:`merge_predictions`), so
every rank scores all of them.
"""

from __future__ import annotations

import contextlib
import inspect
import json
import time
import warnings
from collections import Counter
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

import torch

from ..distributed.collectives import gather_strings
from ..distributed.process_group import DistInfo
from ..nlp.doc import Doc, Span
from ..nlp.pipeline import INFERENCE_BATCH_SIZE, check_inference_batch_size
from ..nlp.span_pooler import span_groups
from ..registry import scorers
from ..stream.batching import balanced_bounds


def prf(tp: int, n_pred: int, n_gold: int) -> dict[str, float]:
    """Precision, recall, F1 (0 where undefined) with the counts behind them."""
    p = tp / n_pred if n_pred else 0.0
    r = tp / n_gold if n_gold else 0.0
    f1 = 2 * p * r / (p + r) if p + r else 0.0
    return {"p": p, "r": r, "f1": f1, "tp": tp, "n_pred": n_pred, "n_gold": n_gold}


def _scores(gold: set, pred: set, label_of) -> dict[str, Any]:
    labels = sorted({label_of(x) for x in gold | pred})
    tp = gold & pred
    per_label = {}
    for label in labels:
        n_tp = sum(1 for x in tp if label_of(x) == label)
        n_pred = sum(1 for x in pred if label_of(x) == label)
        n_gold = sum(1 for x in gold if label_of(x) == label)
        per_label[label] = prf(n_tp, n_pred, n_gold)
    return {"micro": prf(len(tp), len(pred), len(gold)), "per_label": per_label}


def _spans(doc: Doc, group: str) -> list[Span]:
    return doc.spans.get(group, [])


def ner_scores(
    gold_docs: Sequence[Doc],
    pred_docs: Sequence[Doc],
    *,
    gold_group: str = "gold",
    pred_group: str = "ents",
    labels: Iterable[str] | None = None,
) -> dict[str, Any]:
    """Exact-match and token-level P/R/F1, micro and per label.

    Exact: a prediction counts when (doc, start, end, label) equals a gold entity. Token level:
    each (doc, word, label) covered by an entity is an item. ``labels`` limits the gold spans
    scored (gold spans of other labels are ignored, e.g. labels the model was not trained on).
    """
    keep = set(labels) if labels is not None else None
    gold_exact, pred_exact, gold_tok, pred_tok = set(), set(), set(), set()
    for i, (g, p) in enumerate(zip(gold_docs, pred_docs, strict=True)):
        for group, doc, exact, tokens in (
            (gold_group, g, gold_exact, gold_tok),
            (pred_group, p, pred_exact, pred_tok),
        ):
            for span in _spans(doc, group):
                if keep is not None and span.label not in keep:
                    continue
                exact.add((i, span.start, span.end, span.label))
                first, last = doc.word_range(span)
                tokens.update((i, w, span.label) for w in range(first, last))
    out = _scores(gold_exact, pred_exact, lambda x: x[3])
    out["token"] = _scores(gold_tok, pred_tok, lambda x: x[2])
    return out


def span_attribute_scores(
    gold_docs: Sequence[Doc],
    pred_docs: Sequence[Doc],
    attributes: Iterable[str],
    *,
    gold_group: str = "gold",
    pred_group: str = "gold",
    span_labels: Mapping[str, Iterable[str]] | None = None,
) -> dict[str, Any]:
    """Per attribute, per value P/R/F1 of span attributes, and micro over the values.

    A gold span is matched with the predicted span at the same (start, end, label); for each
    attribute, a (span, value) pair is an item, so a wrong value counts as one false positive
    (the predicted value) and one false negative (the gold value). A gold span without a value
    for the attribute (not annotated: None, as in the loss) is not scored: what is predicted for
    it counts neither way. ``span_labels`` (``{attribute: [labels]}``, as the span classifier
    takes it) scores an attribute on the gold and predicted spans of those labels only.
    """
    out: dict[str, Any] = {}
    for attr in attributes:
        gold, pred, unannotated = set(), set(), set()
        only = set((span_labels or {}).get(attr, ())) or None
        for i, (g, p) in enumerate(zip(gold_docs, pred_docs, strict=True)):
            for span in _spans(g, gold_group):
                if only is not None and span.label not in only:
                    continue
                value = span.attributes.get(attr)
                key = (i, span.start, span.end, span.label)
                if value is None:
                    unannotated.add(key)
                else:
                    gold.add((*key, str(value)))
            for span in _spans(p, pred_group):
                if only is not None and span.label not in only:
                    continue
                value = span.attributes.get(attr)
                key = (i, span.start, span.end, span.label)
                if value is not None and key not in unannotated:
                    pred.add((*key, str(value)))
        scores = _scores(gold, pred, lambda x: x[4])
        out[attr] = {"micro": scores["micro"], "per_value": scores["per_label"]}
    return out


def count_words(docs: Iterable[Doc]) -> int:
    return sum(len(d.words) for d in docs)


def strip_counts(scores: Any) -> Any:
    """Drop tp/n_pred/n_gold counts (for a compact display)."""
    if isinstance(scores, dict):
        counts = ("tp", "n_pred", "n_gold") if "f1" in scores else ()
        return {k: strip_counts(v) for k, v in scores.items() if k not in counts}
    return scores


# --- validation split across ranks ------------------------------------------------------------


def validation_share(docs: Sequence[Doc], rank: int, world_size: int) -> range:
    """The indices of the documents rank ``rank`` of ``world_size`` predicts.

    Contiguous parts with about equal numbers of words: inference time grows with words, not
    documents, and contiguous parts merge back in order by concatenation, each rank batching its
    documents in the order one process would. A rank gets an empty range when there are fewer
    documents than ranks (it still takes part in the gather).

    >>> docs = [Doc("a b c d e f"), Doc("g"), Doc("h"), Doc("i j k l m n")]
    >>> [validation_share(docs, r, 2) for r in range(2)]
    [range(0, 2), range(2, 4)]
    >>> validation_share(docs[:1], 1, 2)
    range(1, 1)
    """
    bounds = balanced_bounds([len(d.words) for d in docs], world_size)
    return range(bounds[rank], bounds[rank + 1])


def encode_predictions(docs: Sequence[Doc], groups: Mapping[str, Sequence[str]]) -> str:
    """What scoring reads from predicted documents, as JSON: per document and per span group in
    ``groups``, each span's start, end, label and the attributes ``groups`` names for it.

    Attribute values go as ``str``: the scores compare ``str(value)``, and JSON would change
    some values (a tuple comes back a list, printed differently).

    >>> doc = Doc("No chest pain.")
    >>> doc.spans["ents"] = [Span(3, 13, "problem", {"status": "negated", "score": 0.9})]
    >>> encode_predictions([doc], {"ents": ["status"]})
    '[{"ents": [[3, 13, "problem", {"status": "negated"}]]}]'
    """
    out = []
    for doc in docs:
        entry = {}
        for group, attributes in groups.items():
            entry[group] = [
                [
                    span.start,
                    span.end,
                    span.label,
                    {
                        a: str(span.attributes[a])
                        for a in attributes
                        if span.attributes.get(a) is not None
                    },
                ]
                for span in doc.spans.get(group, [])
            ]
        out.append(entry)
    return json.dumps(out)


def merge_predictions(
    docs: Sequence[Doc], parts: Sequence[str], groups: Mapping[str, Sequence[str]]
) -> list[Doc]:
    """Copies of ``docs`` holding the predictions of ``parts``: the :func:`encode_predictions`
    of consecutive shares (:func:`validation_share`), in rank order. The span groups named in
    ``groups`` are replaced; the others are kept as they are in ``docs``.

    >>> docs = [Doc("No chest pain."), Doc("Fever.")]
    >>> docs[1].spans["ents"] = [Span(0, 5, "problem")]
    >>> groups = {"ents": []}
    >>> parts = [encode_predictions(docs[:1], groups), encode_predictions(docs[1:], groups)]
    >>> [[s.key() for s in d.spans["ents"]] for d in merge_predictions(docs, parts, groups)]
    [[], [(0, 5, 'problem')]]
    """
    entries = [entry for part in parts for entry in json.loads(part)]
    if len(entries) != len(docs):
        raise RuntimeError(
            f"the ranks returned predictions for {len(entries)} of {len(docs)} validation "
            "documents (do they all read the same validation data?)"
        )
    merged = []
    for doc, entry in zip(docs, entries):
        copy = doc.copy(drop=tuple(groups))
        for group in groups:
            copy.spans[group] = [
                Span(start, end, label, attributes)
                for start, end, label, attributes in entry[group]
            ]
        merged.append(copy)
    return merged


def accepts_world(scorer: Callable[..., Any]) -> bool:
    """Whether ``scorer`` takes a ``world`` keyword (the trainer then passes its
    :class:`~pureml.distributed.DistInfo`). A ``**kwargs`` catch-all does not count: such a
    scorer never asked to be told, and may pass its keywords on to code that does not expect it.

    >>> accepts_world(Scorer()), accepts_world(lambda nlp, docs, **kw: {})
    (True, False)
    """
    try:
        params = inspect.signature(scorer).parameters
    except (TypeError, ValueError):  # no signature to read (some builtins): call it as before
        return False
    param = params.get("world")
    return param is not None and param.kind in (
        inspect.Parameter.POSITIONAL_OR_KEYWORD,
        inspect.Parameter.KEYWORD_ONLY,
    )


# --- data the model cannot be scored on fairly ---------------------------------------------------


def _toml_value(value: Any) -> str:
    """``value`` as a recipe writes it (``false``, ``"no"``, ``3``)."""
    if isinstance(value, bool):
        return "true" if value else "false"
    return json.dumps(value) if isinstance(value, str) else repr(value)


def _attribute_problems(name: str, comp: Any, docs: Sequence[Doc], training: bool) -> list[str]:
    """What is wrong with the gold values of a span classifier's attributes in ``docs``: none
    at all; a value the model predicts that no gold span has while some have none (brat's
    binary flags read without the default training had: every such prediction counts wrong);
    a value the model never learnt (another default than training's: every such span is a
    miss). Values compare as ``str``, as the scores do."""
    from ..nlp.span_pooler import get_spans

    span_labels = getattr(comp, "span_labels", None) or {}
    spans_word = "validation span(s)" if training else "gold span(s)"
    problems = []
    for attr, values in (comp.attributes or {}).items():
        only = span_labels.get(attr)
        gold = [
            s.attributes.get(attr)
            for d in docs
            for s in get_spans(d, comp.span_getter)
            if only is None or s.label in only
        ]
        present = {str(v): v for v in gold if v is not None}
        n_none = len(gold) - sum(v is not None for v in gold)
        missing = [v for v in values if str(v) not in present]
        unknown = [v for k, v in present.items() if k not in {str(x) for x in values}]
        if training:  # the fix is in the recipe
            value = missing[0] if missing else "VALUE"
            fix = (
                "give the validation reader the default_attributes of the training reader "
                f"(default_attributes = {{ {attr} = {_toml_value(value)} }}?)"
            )
        else:
            fix = f"if training gave it by default, pass --default-attribute {attr}="
            fix += str(missing[0]) if missing else "VALUE"
        if gold and not present:
            problems.append(
                f"{name}: no {spans_word} has a value for {attr!r}: nothing of it is scored ({fix})"
            )
            continue
        if missing and n_none:
            problems.append(
                f"{name}: {n_none} {spans_word} have no {attr!r} and none has "
                f"{missing[0]!r}, which the model predicts: {fix}"
            )
        if unknown:
            count = sum(str(v) == str(unknown[0]) for v in gold)
            problems.append(
                f"{name}: {count} {spans_word} have {attr} = {unknown[0]!r}, a value the model "
                f"never learnt (it predicts {', '.join(map(repr, values))}): each counts as a "
                "miss; read the data as training did ("
                + (
                    "the validation reader's default_attributes?)"
                    if training
                    else "--default-attribute?)"
                )
            )
    return problems


def warn_unscorable(
    nlp: Any, docs: Sequence[Doc], *, training: bool = False, stacklevel: int = 2
) -> None:
    """Warn where ``docs`` hold what a component predicts otherwise than in training: NER
    labels none of which the model knows, span attribute values missing or never learnt.
    ``pureml evaluate`` calls it on the documents it scores, the trainer on the validation
    documents (``training=True``: the fix is then in the recipe, not a flag)."""
    docs = list(docs)
    for name in nlp.pipe_names:
        comp = nlp.get_pipe(name)
        problems = []
        if isinstance(getattr(comp, "attributes", None), dict):
            problems = _attribute_problems(name, comp, docs, training)
        labels, group = getattr(comp, "labels", None), getattr(comp, "target_group", None)
        if isinstance(labels, list) and isinstance(group, str):
            gold = {s.label for d in docs for s in d.spans.get(group, [])}
            if gold and not gold & set(labels):
                problems.append(
                    f"{name}: none of the gold labels ({', '.join(sorted(gold))}) is one the "
                    f"model predicts ({', '.join(labels)}): every {name} score is 0. Read the "
                    + (
                        "validation data as the training data (val_data's reader and options)"
                        if training
                        else "data as in training (--reader, --reader-option)"
                    )
                )
        for message in problems:
            warnings.warn(message, stacklevel=stacklevel)


# --- the default scorer ------------------------------------------------------------------------


def _task_of(component: Any) -> str | None:
    """``"ner"``, ``"span_classifier"`` or None, from the component's declared task."""
    task = getattr(component, "task", None)
    if task in ("ner", "span_classifier"):
        return task
    factory = getattr(component, "factory", "")
    if "ner" in factory:
        return "ner"
    if "span_classif" in factory:
        return "span_classifier"
    return None


def _needed(nlp: Any, name: str) -> list[str]:
    """``name`` and the components it depends on (its embedding), in pipeline order."""
    need, todo = set(), [name]
    while todo:
        n = todo.pop()
        if n in need:
            continue
        need.add(n)
        todo.extend(nlp.get_pipe(n).dependencies())
    return [n for n in nlp.pipe_names if n in need]


def _run(nlp: Any, docs: list[Doc], enable: list[str], batch_size: int | str) -> list[Doc]:
    """Run only the heads among ``enable`` (and what they depend on): unrelated components
    stay disabled, so a span classifier scored alone sees no spans an NER head wrote."""
    heads = [n for n in enable if n in nlp.heads()]
    return list(nlp.pipe(docs, batch_size=batch_size, heads=heads))


@scorers.register("default")
class Scorer:
    """Scores every NER and span-classifier component, plus speed (words/s, docs/s).

    Args:
        speed: time the full pipeline over the documents.
        autocast: run inference under autocast when training in mixed precision.
        batch_size: inference batches, as ``Pipeline.pipe`` takes them: a word budget
            (``"2000 words"``, the default: bounded memory whatever the documents' lengths) or
            a number of documents (an int or ``"32 docs"``).

    Called as ``scorer(nlp, docs, mixed_precision=..., world=...)``. With a distributed
    ``world`` (the trainer passes its :class:`~pureml.distributed.DistInfo` to any scorer whose
    signature names a ``world`` keyword, see :func:`accepts_world`), every rank must call it
    with the same documents: each predicts its :func:`validation_share`, the ranks gather the
    predictions, and every rank returns the scores one process would compute over all the
    documents (a rank batches only its share: predictions move as little as with another
    ``batch_size``, float rounding at most). Speed is then all the documents' words (and
    documents) over the time from the start of the timed pass to the end of its gather, the
    slowest rank's. A registered scorer without a ``world`` keyword is called as before: every
    rank scores every document.

    >>> Scorer(speed=False).batch_size
    '2000 words'
    """

    def __init__(
        self,
        speed: bool = True,
        autocast: bool = True,
        batch_size: int | str = INFERENCE_BATCH_SIZE,
    ) -> None:
        check_inference_batch_size(batch_size)  # a bad budget fails here, not at validation
        self.speed = speed
        self.autocast = autocast
        self.batch_size = batch_size

    def _autocast(self, nlp: Any, mixed_precision: str) -> contextlib.AbstractContextManager:
        if not self.autocast or mixed_precision == "no":
            return contextlib.nullcontext()
        device = next(iter(nlp.parameters()), torch.empty(0)).device
        dtype = torch.bfloat16 if mixed_precision == "bf16" else torch.float16
        return torch.autocast(device.type, dtype=dtype)

    def _predict(
        self,
        nlp: Any,
        inputs: list[Doc],
        enable: list[str],
        world: DistInfo | None,
        groups: Mapping[str, Sequence[str]],
    ) -> list[Doc]:
        """``inputs`` annotated by the heads among ``enable``: here, or this rank's share here
        and the others' through the gather (``groups``: what scoring reads of them)."""
        if world is None or not world.is_distributed:
            return _run(nlp, inputs, enable, self.batch_size)
        share = validation_share(inputs, world.rank, world.world_size)
        preds = _run(nlp, inputs[share.start : share.stop], enable, self.batch_size)
        parts = gather_strings(world, encode_predictions(preds, groups))
        return merge_predictions(inputs, parts, groups)

    def _time_pipeline(self, nlp: Any, inputs: list[Doc], world: DistInfo | None) -> float:
        """Seconds the full pipeline takes over ``inputs`` (over every rank's share, with
        a world: until the slowest rank is done, the same number on every rank)."""
        t0 = time.perf_counter()
        if world is None or not world.is_distributed:
            _run(nlp, inputs, list(nlp.pipe_names), self.batch_size)
            return max(time.perf_counter() - t0, 1e-9)
        share = validation_share(inputs, world.rank, world.world_size)
        _run(nlp, inputs[share.start : share.stop], list(nlp.pipe_names), self.batch_size)
        gather_strings(world, "")  # returns once every rank has finished its share
        elapsed = max(time.perf_counter() - t0, 1e-9)
        # ranks leave the gather a little apart: agree on the longest, so every rank's scores
        # (logged by rank 0, given to each rank's callback) are the same
        return max(float(v) for v in gather_strings(world, repr(elapsed)))

    def __call__(
        self,
        nlp: Any,
        docs: Sequence[Doc],
        *,
        mixed_precision: str = "no",
        world: DistInfo | None = None,
    ) -> dict[str, Any]:
        docs = list(docs)
        tasks = [(n, _task_of(nlp.get_pipe(n))) for n in nlp.pipe_names]
        tasks = [(n, t) for n, t in tasks if t is not None]
        counts = Counter(t for _, t in tasks)
        scores: dict[str, Any] = {}
        with torch.no_grad(), self._autocast(nlp, mixed_precision):
            for name, task in tasks:
                comp = nlp.get_pipe(name)
                key = "ner" if task == "ner" else "span_attributes"
                if counts[task] > 1:
                    key = name
                enable = _needed(nlp, name)
                if task == "ner":
                    pred_group = getattr(comp, "span_setter", "ents")
                    if not isinstance(pred_group, str):
                        pred_group = "ents"
                    gold_group = getattr(comp, "target_group", "gold")
                    inputs = [d.copy(drop=(gold_group, pred_group)) for d in docs]
                    preds = self._predict(nlp, inputs, enable, world, {pred_group: ()})
                    # every gold label, those the model never saw in training too: they are
                    # entities it misses (left out, they raised the micro recall)
                    scores[key] = ner_scores(
                        docs, preds, gold_group=gold_group, pred_group=pred_group
                    )
                else:
                    groups = span_groups(getattr(comp, "span_getter", "gold"))
                    attributes = list(getattr(comp, "attributes", None) or [])
                    inputs = []
                    for d in docs:
                        c = d.copy()
                        for group in groups:
                            for span in c.spans.get(group, []):
                                for a in attributes:
                                    span.attributes.pop(a, None)
                        inputs.append(c)
                    # a group no gold document fills (the NER head's "ents", read at inference)
                    # has nothing to score against
                    scored = [g for g in groups if any(d.spans.get(g) for d in docs)] or groups
                    preds = self._predict(
                        nlp, inputs, enable, world, {g: attributes for g in scored}
                    )
                    # an attribute restricted to some span labels is scored on those only
                    only = getattr(comp, "span_labels", None) or None
                    per_group = [
                        span_attribute_scores(
                            docs, preds, attributes, gold_group=g, pred_group=g, span_labels=only
                        )
                        for g in scored
                    ]
                    scores[key] = per_group[0] if len(scored) == 1 else dict(zip(scored, per_group))
            if self.speed and docs:
                inputs = [d.copy(drop=tuple(d.spans)) for d in docs]
                elapsed = self._time_pipeline(nlp, inputs, world)
                scores["speed"] = {
                    "words_per_s": count_words(docs) / elapsed,
                    "docs_per_s": len(docs) / elapsed,
                }
        return strip_counts(scores)
