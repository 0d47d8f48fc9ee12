"""Mistakes a Python user makes with a pipeline, each answered by one clear error."""

from __future__ import annotations

import pytest

from pureml.nlp import Doc, NerCrf, Pipeline, ScratchEncoder, SpanClassifier, load
from pureml.nlp.synthetic import make_corpus


def _tiny() -> Pipeline:
    return Pipeline({"embedding": ScratchEncoder(width=8, depth=1), "ner": NerCrf(labels=["X"])})


def test_pipe_refuses_one_string_instead_of_a_list():
    # a str is an iterable of characters: it was annotated as one document per character
    nlp = _tiny()
    with pytest.raises(TypeError, match=r"iterable of texts .* nlp\(text\) takes one"):
        list(nlp.pipe("Patient denies fever."))
    with pytest.raises(TypeError, match="iterable of texts"):
        list(nlp.pipe(Doc("Patient denies fever.")))
    assert len(list(nlp.pipe(["Patient denies fever."]))) == 1


@pytest.mark.parametrize(
    ("arg", "message"),
    [
        (["a", "b"], r"got list \(nlp.pipe\(texts\) annotates several\)"),
        (None, "takes a text or a Doc, got NoneType"),
        (3, "got int"),
    ],
)
def test_calling_the_pipeline_on_a_non_text_names_what_it_takes(arg, message):
    # a list used to reach forward() and fail with "no component computed a loss"
    with pytest.raises(TypeError, match=message):
        _tiny()(arg)


def test_span_classifier_without_any_value_to_learn_fails_at_post_init():
    # span_getter naming a group the training docs lack: the head had 0 outputs, trained on
    # nothing, and inference failed with an IndexError from argmax
    clf = SpanClassifier(span_getter="ents", attributes=["status"])
    nlp = Pipeline({"embedding": ScratchEncoder(width=8, depth=1), "status": clf})
    with pytest.raises(ValueError, match=r"status: no span in group\(s\) 'ents' .* 'status'"):
        nlp.post_init(make_corpus(5, seed=0))
    ok = SpanClassifier(span_getter="gold", attributes=["status"])
    nlp = Pipeline({"embedding": ScratchEncoder(width=8, depth=1), "status": ok})
    nlp.post_init(make_corpus(5, seed=0))
    assert ok.attributes["status"]


def test_loading_a_run_folder_points_to_its_model(tmp_path):
    # train() from Python writes no config.toml in the run folder: the hint was missing
    _tiny().to_disk(tmp_path / "model-last")
    with pytest.raises(FileNotFoundError, match=r"a run folder\? its model is .*model-last"):
        load(tmp_path)
    assert load(tmp_path / "model-last").pipe_names == ["embedding", "ner"]


def test_one_string_where_a_list_is_expected_is_one_item():
    # NerCrf(labels="Disease") had the labels 'D', 'i', 's', ...; SpanClassifier(attributes=
    # "negation") learnt none of the attributes named 'n', 'e', ...
    assert NerCrf(labels="Disease").labels == ["Disease"]
    clf = SpanClassifier(attributes="status")
    nlp = Pipeline({"embedding": ScratchEncoder(width=8, depth=1), "status": clf})
    nlp.post_init(make_corpus(5, seed=0))
    assert list(clf.attributes) == ["status"]


def test_a_misspelt_argument_of_a_component_is_named():
    # "uses 'embeding', which must come before it": no order of the pipeline would fix it
    with pytest.raises(
        ValueError,
        match=r"^component 'ner': embedding='embeding': unknown component 'embeding' "
        r"\(components: embedding, ner\)",
    ):
        Pipeline({"embedding": ScratchEncoder(width=8), "ner": NerCrf(embedding="embeding")})
    with pytest.raises(ValueError, match="must come before"):  # an order to fix, as before
        Pipeline({"ner": NerCrf(labels=["X"]), "embedding": ScratchEncoder(width=8)})
    # the message named span_pooler's own argument, "span_pooler mode must be one of ..."
    with pytest.raises(ValueError, match=r"^pooling: expected one of .*'mean'.* got 'maen'"):
        SpanClassifier(pooling="maen")


def test_ner_without_any_gold_span_fails_at_post_init():
    # it trained with zero labels, silently, and predicted nothing
    nlp = Pipeline({"embedding": ScratchEncoder(width=8, depth=1), "ner": NerCrf()})
    with pytest.raises(ValueError, match=r"^ner: no spans in group 'gold' of the training docs"):
        nlp.post_init([Doc("a b c"), Doc("d e f")])
    ents = NerCrf(target_group="ents")
    nlp = Pipeline({"embedding": ScratchEncoder(width=8, depth=1), "ner": ents})
    with pytest.raises(
        ValueError, match=r"no spans in group 'ents' .*: nothing to learn \(target_group names"
    ):
        nlp.post_init(make_corpus(5, seed=0))


def test_a_given_label_the_training_docs_never_use_warns_with_the_close_one():
    # labels=["Problem"] beside the data's "problem" trained a label that never occurs, silently
    ner = NerCrf(labels=["Problem", "drug"])
    nlp = Pipeline({"embedding": ScratchEncoder(width=8, depth=1), "ner": ner})
    with pytest.warns(
        UserWarning,
        match=r"^ner: label 'Problem' never occurs in group 'gold' .*did you mean 'problem'\?",
    ) as seen:
        nlp.post_init(make_corpus(5, seed=0))
    assert len(seen) == 1  # "drug" occurs
