"""Scores against hand-computed reference numbers."""

from __future__ import annotations

import warnings
from collections import Counter

import pytest

from pureml.nlp.doc import Doc, Span
from pureml.training.scorer import ner_scores, prf, span_attribute_scores


def doc(text, group, spans):
    d = Doc(text, id="d")
    d.spans[group] = [Span(*s) if len(s) == 3 else Span(s[0], s[1], s[2], s[3]) for s in spans]
    return d


def test_prf_reference_numbers():
    assert prf(2, 4, 5) == {
        "p": 0.5,
        "r": 0.4,
        "f1": pytest.approx(4 / 9),
        "tp": 2,
        "n_pred": 4,
        "n_gold": 5,
    }
    assert prf(0, 0, 0)["f1"] == 0.0


def test_ner_exact_and_token_level():
    text = "Familial breast cancer and ovarian cancer in BRCA1 carriers."
    #       0        9     15     22  26      34     41 44
    gold = doc(text, "gold", [(9, 22, "Disease"), (27, 41, "Disease"), (45, 50, "Gene")])
    pred = doc(text, "ents", [(16, 22, "Disease"), (27, 41, "Disease"), (45, 50, "Disease")])
    s = ner_scores([gold], [pred])
    # exact: 1 of 3 predictions right, 1 of 3 gold found
    assert s["micro"]["p"] == pytest.approx(1 / 3) and s["micro"]["r"] == pytest.approx(1 / 3)
    assert s["per_label"]["Disease"]["p"] == pytest.approx(1 / 3)
    assert s["per_label"]["Disease"]["r"] == pytest.approx(1 / 2)
    assert s["per_label"]["Gene"] == {
        "p": 0.0,
        "r": 0.0,
        "f1": 0.0,
        "tp": 0,
        "n_pred": 0,
        "n_gold": 1,
    }
    # tokens: gold {breast, cancer, ovarian, cancer}/Disease + {BRCA1}/Gene; pred {cancer,
    # ovarian, cancer, BRCA1}/Disease: 3 of 4 predicted tokens right, 3 of 5 gold found
    assert s["token"]["micro"]["p"] == pytest.approx(3 / 4)
    assert s["token"]["micro"]["r"] == pytest.approx(3 / 5)
    # labels= limits what is scored
    assert ner_scores([gold], [pred], labels=["Gene"])["micro"]["r"] == 0.0


def test_span_attributes_skip_gold_spans_without_a_value():
    # a corpus annotated for negation in some documents only: the other spans have no value,
    # the loss skips them, and what is predicted for them counted as false positives (p 0.5)
    text = "No pain. Cancer."
    gold = doc(text, "gold", [(3, 7, "D", {"negation": True}), (9, 15, "D", {})])
    pred = doc(text, "gold", [(3, 7, "D", {"negation": True}), (9, 15, "D", {"negation": False})])
    s = span_attribute_scores([gold], [pred], ["negation"])["negation"]["micro"]
    assert (s["p"], s["r"], s["n_pred"], s["n_gold"]) == (1.0, 1.0, 1, 1)
    # a predicted span that gold does not have at all still counts against precision
    extra = doc(text, "gold", [(3, 7, "D", {"negation": True}), (0, 2, "D", {"negation": False})])
    assert span_attribute_scores([gold], [extra], ["negation"])["negation"]["micro"]["p"] == 0.5


def test_span_attributes_per_value():
    text = "no fever, chest pain, and cough"
    gold = doc(
        text,
        "gold",
        [
            (3, 8, "p", {"status": "negated"}),
            (10, 20, "p", {"status": "affirmed"}),
            (26, 31, "p", {"status": "affirmed"}),
        ],
    )
    pred = doc(
        text,
        "gold",
        [
            (3, 8, "p", {"status": "affirmed"}),
            (10, 20, "p", {"status": "affirmed"}),
            (26, 31, "p", {"status": "affirmed"}),
        ],
    )
    s = span_attribute_scores([gold], [pred], ["status"])["status"]
    assert s["micro"]["p"] == pytest.approx(2 / 3) and s["micro"]["r"] == pytest.approx(2 / 3)
    assert s["per_value"]["affirmed"]["p"] == pytest.approx(2 / 3)
    assert s["per_value"]["affirmed"]["r"] == 1.0
    assert s["per_value"]["negated"]["r"] == 0.0


def test_span_attributes_restricted_to_span_labels_score_those_spans_only():
    # Certitude annotated on pathologies only: the classifier predicts it on them only, and a
    # drug span's gold value (or a predicted one) must not count either way
    text = "Pas de fievre. Aspirine."
    gold = doc(text, "gold", [(7, 13, "Patho", {"c": "sure"}), (15, 23, "Drug", {"c": "sure"})])
    pred = doc(text, "gold", [(7, 13, "Patho", {"c": "sure"}), (15, 23, "Drug", {})])
    s = span_attribute_scores([gold], [pred], ["c"], span_labels={"c": ["Patho"]})["c"]["micro"]
    assert (s["p"], s["r"], s["n_gold"]) == (1.0, 1.0, 1)
    assert span_attribute_scores([gold], [pred], ["c"])["c"]["micro"]["r"] == 0.5
    pred.spans["gold"][1].attributes["c"] = "unsure"  # predicted on a drug: not scored
    s = span_attribute_scores([gold], [pred], ["c"], span_labels={"c": ["Patho"]})["c"]["micro"]
    assert (s["p"], s["n_pred"]) == (1.0, 1)


def test_the_default_scorer_scores_attributes_on_their_span_labels_only():
    import torch

    from pureml.nlp import Pipeline, ScratchEncoder, SpanClassifier
    from pureml.nlp.synthetic import make_corpus
    from pureml.training.scorer import Scorer

    docs = make_corpus(8, seed=2)  # status on problem, test and drug spans
    torch.manual_seed(0)
    clf = SpanClassifier(attributes=["status"], span_labels={"status": ["problem"]})
    nlp = Pipeline({"embedding": ScratchEncoder(width=8, depth=0), "status": clf})
    nlp.post_init(docs)
    for d in docs:  # a value on the other spans no prediction can match: scored, it shows
        for span in d.spans["gold"]:
            if span.label != "problem":
                span.attributes["status"] = "other"
    scores = Scorer(speed=False)(nlp, docs)["span_attributes"]["status"]
    assert "other" not in scores["per_value"]
    assert set(scores["per_value"]) <= {"affirmed", "negated", "family"}


def test_scorer_batches_by_words_with_the_same_scores(inference_batches):
    import torch

    from pureml.nlp import NerCrf, Pipeline, ScratchEncoder
    from pureml.nlp.synthetic import make_corpus
    from pureml.training.scorer import Scorer

    torch.manual_seed(0)
    docs = make_corpus(80, seed=3)  # 4,005 words, 12 to 91 per document
    nlp = Pipeline({"embedding": ScratchEncoder(width=16, depth=1), "ner": NerCrf()})
    nlp.post_init(docs)
    batches = inference_batches
    scores = Scorer(speed=False)(nlp, docs)  # "2000 words" per batch by default
    assert scores["ner"]["micro"]["p"] > 0  # random weights still predict some entities
    # batches of at most 2000 words: 3 batches
    assert len(batches) == 3 and all(sum(b) <= 2000 for b in batches)
    assert sum(map(len, batches)) == len(docs)
    # batching never changes the scores
    assert Scorer(speed=False, batch_size=1)(nlp, docs) == scores
    assert Scorer(speed=False, batch_size="300 words")(nlp, docs) == scores


def test_ner_is_scored_against_the_component_target_group():
    """Gold entities in another span group than "gold" (NerCrf(target_group=...))."""
    import torch

    from pureml.nlp import NerCrf, Pipeline, ScratchEncoder
    from pureml.nlp.synthetic import make_corpus
    from pureml.training.scorer import Scorer

    docs = make_corpus(20, seed=3)
    moved = [d.copy() for d in docs]
    for d in moved:
        d.spans["entities"] = d.spans.pop("gold")
    scores = []
    for data, group in ((docs, "gold"), (moved, "entities")):
        torch.manual_seed(0)
        nlp = Pipeline(
            {"embedding": ScratchEncoder(width=16, depth=1), "ner": NerCrf(target_group=group)}
        )
        nlp.post_init(data)
        scores.append(Scorer(speed=False)(nlp, data)["ner"])
    assert scores[0]["micro"]["p"] > 0 and scores[1] == scores[0]


def test_span_classifier_over_two_gold_groups_is_scored_and_printed_per_group():
    from pureml.nlp import Pipeline, ScratchEncoder, SpanClassifier
    from pureml.nlp.synthetic import make_corpus
    from pureml.training.evaluate import format_scores
    from pureml.training.scorer import Scorer

    docs = make_corpus(6, seed=1)
    for d in docs:  # a second annotated group: the same spans, their status kept
        d.spans["review"] = [
            Span(s.start, s.end, s.label, dict(s.attributes)) for s in d.spans["gold"]
        ]
    nlp = Pipeline(
        {
            "embedding": ScratchEncoder(width=8, depth=0),
            "status": SpanClassifier(span_getter=["gold", "review", "ents"], attributes=["status"]),
        }
    )
    nlp.get_pipe("status").post_init(docs)
    nlp.initialize()
    scores = Scorer(speed=False)(nlp, docs)["span_attributes"]
    assert list(scores) == ["gold", "review"]  # "ents": no gold document fills it
    assert scores["gold"] == scores["review"]
    text = format_scores({"span_attributes": scores})
    assert "span_attributes: gold.status\n" in text and "span_attributes: review.status\n" in text


def test_validation_shares_cover_the_documents_in_order_balanced_by_words():
    from pureml.nlp.synthetic import make_corpus
    from pureml.training.scorer import validation_share

    docs = make_corpus(30, seed=5)
    words = [len(d.words) for d in docs]
    for world_size in (1, 2, 3, 7):
        shares = [validation_share(docs, r, world_size) for r in range(world_size)]
        assert [i for s in shares for i in s] == list(range(len(docs)))
        # contiguous cuts: each part is within one document's words of an equal split
        for s in shares:
            assert abs(sum(words[i] for i in s) - sum(words) / world_size) <= max(words)
    # fewer documents than ranks: the last ranks get nothing, every document once
    shares = [validation_share(docs[:2], r, 4) for r in range(4)]
    assert [list(s) for s in shares] == [[0], [1], [], []]


def _scored_view(doc, groups):
    """What the scores read of a predicted document: spans of ``groups``, their attributes
    as strings."""
    return {
        group: [
            (s.key(), {a: str(s.attributes[a]) for a in attributes if a in s.attributes})
            for s in doc.spans.get(group, [])
        ]
        for group, attributes in groups.items()
    }


def test_predictions_of_each_share_merge_into_the_predictions_of_all():
    """What ranks exchange: each share predicted alone, encoded, then merged in rank order,
    gives the spans, attributes and scores of predicting every document at once."""
    import torch

    from pureml.nlp import NerCrf, Pipeline, ScratchEncoder, SpanClassifier
    from pureml.nlp.synthetic import make_corpus
    from pureml.training.scorer import (
        _run,
        encode_predictions,
        merge_predictions,
        validation_share,
    )

    torch.manual_seed(0)
    docs = make_corpus(25, seed=4)
    nlp = Pipeline(
        {
            "embedding": ScratchEncoder(width=16, depth=1),
            "ner": NerCrf(),
            "status": SpanClassifier(attributes=["status"]),
        }
    )
    nlp.post_init(docs)

    def inputs():  # the scorer's span-classifier inputs: gold spans, their status removed
        out = [d.copy(drop=("ents",)) for d in docs]
        for d in out:
            for span in d.spans["gold"]:
                span.attributes.pop("status", None)
        return out

    groups = {"gold": ["status"], "ents": []}
    with torch.no_grad():
        everything = _run(nlp, inputs(), nlp.pipe_names, "2000 words")
        # random weights still predict some entities, and statuses that vary by span
        assert any(d.spans["ents"] for d in everything)
        statuses = Counter(s.attributes["status"] for d in everything for s in d.spans["gold"])
        assert len(statuses) > 1, statuses
        for world_size in (2, 3, 40):  # 40: more ranks than documents
            todo = inputs()
            parts = []
            for rank in range(world_size):
                share = validation_share(todo, rank, world_size)
                preds = _run(nlp, todo[share.start : share.stop], nlp.pipe_names, "2000 words")
                parts.append(encode_predictions(preds, groups))
            merged = merge_predictions(inputs(), parts, groups)
            assert [_scored_view(d, groups) for d in merged] == [
                _scored_view(d, groups) for d in everything
            ]
            assert ner_scores(docs, merged) == ner_scores(docs, everything)
            assert span_attribute_scores(docs, merged, ["status"]) == span_attribute_scores(
                docs, everything, ["status"]
            )
    with pytest.raises(RuntimeError, match="predictions for 24 of 25 validation documents"):
        merge_predictions(docs, [encode_predictions(docs[1:], groups)], groups)


def _status_docs(edit):
    """Synthetic notes, each gold span's status ``edit(value, label)`` (None: no value)."""
    from pureml.nlp.synthetic import make_corpus

    docs = make_corpus(8, seed=2)
    for d in docs:
        for span in d.spans["gold"]:
            value = edit(span.attributes["status"], span.label)
            if value is None:
                del span.attributes["status"]
            else:
                span.attributes["status"] = value
    return docs


def test_validation_attributes_read_otherwise_than_training_warn_at_the_start(tmp_path):
    # the training reader had default_attributes, the validation reader not (or another
    # default): the attribute's F1 was computed over part of the spans and fed best_metric,
    # silently (pureml evaluate warned; training did not)
    from pureml import TrainingData, train
    from pureml.nlp import Pipeline, ScratchEncoder, SpanClassifier

    def run(val_docs):
        nlp = Pipeline(
            {
                "embedding": ScratchEncoder(width=8, depth=0),
                "status": SpanClassifier(attributes=["status"]),
            }
        )
        with warnings.catch_warnings(record=True) as record:
            warnings.simplefilter("always")
            train(
                nlp,
                TrainingData(_status_docs(lambda v, _: v)),
                val_data=val_docs,
                scorer=lambda nlp, docs, **kw: {},
                output_dir=tmp_path / str(len(list(tmp_path.iterdir()))),
                max_steps=1,
                compile=False,
                logger=False,
                save_model=False,
            )
        return [str(w.message) for w in record if "validation span" in str(w.message)]

    assert run(_status_docs(lambda v, _: v)) == []
    assert run(_status_docs(lambda v, _: None if v == "affirmed" else v)) == [
        "status: 27 validation span(s) have no 'status' and none has 'affirmed', which the "
        "model predicts: give the validation reader the default_attributes of the training "
        'reader (default_attributes = { status = "affirmed" }?)'
    ]
    assert run(_status_docs(lambda v, _: "no" if v == "affirmed" else v)) == [
        "status: 27 validation span(s) have status = 'no', a value the model never learnt (it "
        "predicts 'affirmed', 'family', 'negated'): each counts as a miss; read the data as "
        "training did (the validation reader's default_attributes?)"
    ]


def test_evaluate_warns_only_about_spans_an_attribute_is_scored_on():
    from pureml.nlp import SpanClassifier
    from pureml.training.scorer import warn_unscorable

    class _Nlp:  # what warn_unscorable reads of a pipeline
        pipe_names = ["status"]

        def __init__(self, comp):
            self.comp = comp

        def get_pipe(self, name):
            return self.comp

    clf = SpanClassifier(attributes={"status": ["affirmed", "negated"]})
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        # every span has a value, none "negated": a small dev set, nothing to fix ("0 gold
        # span(s) have no 'status'" was warned)
        warn_unscorable(_Nlp(clf), _status_docs(lambda v, _: "affirmed"))
        # the spans without a value are drugs and tests, which status is not predicted on
        clf.span_labels = {"status": ["problem"]}
        warn_unscorable(
            _Nlp(clf), _status_docs(lambda v, label: "negated" if label == "problem" else None)
        )
    clf.span_labels = {}
    with pytest.warns(
        UserWarning, match=r"status: 18 gold span\(s\) have no 'status' and none has 'affirmed'"
    ):
        warn_unscorable(
            _Nlp(clf), _status_docs(lambda v, label: "negated" if label == "problem" else None)
        )
