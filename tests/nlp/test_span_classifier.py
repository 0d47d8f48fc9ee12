"""Span classifier: attribute values inferred from training spans."""

import warnings

import pytest

from pureml.nlp import Doc, Pipeline, ScratchEncoder, Span, SpanClassifier, load


def _pipeline(**kwargs) -> Pipeline:
    return Pipeline(
        {
            "embedding": ScratchEncoder(width=8, depth=1, rows=[50, 20, 20, 10]),
            "clf": SpanClassifier(**kwargs),
        }
    )


def test_null_attribute_values_are_absent_not_a_class(tmp_path):
    # a JSONL span with "attributes": {"status": null} has no status: None is neither a value
    # to predict nor a target (saving the model failed: "cannot write NoneType to TOML")
    docs = []
    for value in ["negated", None, "affirmed", None]:
        doc = Doc("No chest pain.")
        doc.spans["gold"] = [Span(3, 13, "problem", {"status": value})]
        docs.append(doc)
    nlp = _pipeline()
    nlp.post_init(docs)
    assert nlp.get_pipe("clf").attributes == {"status": ["affirmed", "negated"]}
    item = nlp.preprocess(docs[1], supervision=True)
    assert item["clf"]["targets"]["status"] == [-100]
    nlp.to_disk(tmp_path / "model")
    assert load(tmp_path / "model").get_pipe("clf").attributes == nlp.get_pipe("clf").attributes


def test_non_scalar_attribute_values_are_a_clear_error():
    # brat discontinuous entities carry attributes["fragments"] (a list): inferring every
    # attribute failed with "unhashable type: 'list'"
    doc = Doc("pain here and there")
    doc.spans["gold"] = [Span(0, 19, "X", {"status": "a", "fragments": [[0, 4], [14, 19]]})]
    with pytest.raises(ValueError, match=r"'fragments'.*\[\[0, 4\], \[14, 19\]\].*attributes="):
        _pipeline().post_init([doc])
    nlp = _pipeline(attributes=["status"])  # naming the attributes leaves the others alone
    nlp.post_init([doc])
    assert nlp.get_pipe("clf").attributes == {"status": ["a"]}


def test_an_attribute_with_one_value_in_training_is_flagged(tmp_path):
    # brat's binary attributes: only the negated spans carry Negation=True; the others have no
    # value, which the loss skips, so the head learnt to say True for every span, silently
    docs = []
    for negated in [True, False, False]:
        doc = Doc("No chest pain.")
        doc.spans["gold"] = [Span(3, 13, "problem", {"Negation": True} if negated else {})]
        docs.append(doc)
    with pytest.warns(
        UserWarning, match=r"'Negation' has one value .*\(True\).*default_attributes"
    ):
        _pipeline().post_init(docs)
    for doc in docs[1:]:  # what read_standoff(default_attributes={"Negation": False}) gives
        doc.spans["gold"][0].attributes["Negation"] = False
    nlp = _pipeline()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        nlp.post_init(docs)
    assert nlp.get_pipe("clf").attributes == {"Negation": [False, True]}
