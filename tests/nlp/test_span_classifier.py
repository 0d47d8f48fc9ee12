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
    # inferring every attribute failed with "unhashable type: 'list'"
    doc = Doc("pain here and there")
    doc.spans["gold"] = [Span(0, 19, "X", {"status": "a", "codes": ["C1", "C2"]})]
    with pytest.raises(ValueError, match=r"'codes'.*\['C1', 'C2'\].*attributes="):
        _pipeline().post_init([doc])
    nlp = _pipeline(attributes=["status"])  # naming the attributes leaves the others alone
    nlp.post_init([doc])
    assert nlp.get_pipe("clf").attributes == {"status": ["a"]}


# a brat note as a hospital team writes them: one entity discontinuous, one normalised, one
# commented by its annotator (a name: it must never become a class, nor be written on spans)
BRAT_TXT = "Douleur intense et thoracique. Paracetamol."
BRAT_ANN = (
    "T1\tPathologie 0 7;19 29\tDouleur thoracique\n"
    "T2\tMedicament 31 42\tParacetamol\n"
    "A1\tNegation T1\n"
    "#1\tAnnotatorNotes T1\tvu par le Dr Hélène\n"
    "N1\tReference T2 ATC:N02BE01\tparacetamol\n"
)


def _brat_docs(tmp_path):
    from pureml.stream import read_standoff

    (tmp_path / "a.txt").write_text(BRAT_TXT)
    (tmp_path / "a.ann").write_text(BRAT_ANN)
    return list(read_standoff(tmp_path, default_attributes={"Negation": False}))


def test_what_the_brat_reader_keeps_is_never_inferred_as_a_class(tmp_path):
    from pureml.nlp.span_classifier import READER_KEYS

    docs = _brat_docs(tmp_path)
    stored = {k for s in docs[0].spans["gold"] for k in s.attributes} - {"Negation"}
    # every key the reader stores for N, # and discontinuous T lines is known as bookkeeping
    assert stored == set(READER_KEYS) == {"note", "norm", "norm_name", "fragments"}
    nlp = _pipeline()
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # nor suggested as a target in the one-value warning
        nlp.post_init(docs)
    assert nlp.get_pipe("clf").attributes == {"Negation": [False, True]}
    new = Doc(BRAT_TXT, spans={"gold": [Span(0, 7, "Pathologie"), Span(31, 42, "Medicament")]})
    assert [s.attributes.keys() for s in nlp(new).spans["gold"]] == [{"Negation"}] * 2
    # only bookkeeping: the error says why nothing is left to learn
    for span in docs[0].spans["gold"]:
        del span.attributes["Negation"]
    with pytest.raises(ValueError, match=r"no span .* attribute to predict .*fragments, norm"):
        _pipeline().post_init(docs)


def test_naming_a_note_or_fragments_is_refused_and_norm_is_allowed(tmp_path):
    for name in ("note", "fragments", "norm_name"):
        with pytest.raises(ValueError, match=rf"attributes: '{name}' holds .*not a value"):
            SpanClassifier(attributes=[name])
    with pytest.raises(ValueError, match=r"'note' holds brat annotator notes"):
        SpanClassifier(attributes={"note": ["x"]})
    nlp = _pipeline(attributes=["norm"], span_labels={"norm": ["Medicament"]})
    nlp.post_init(_brat_docs(tmp_path))  # entity linking as a classification, by name
    assert nlp.get_pipe("clf").attributes == {"norm": ["ATC:N02BE01"]}


def _qualified_docs():
    # EDS-NLP's use case: Negation annotated on pathologies only; a drug span has none
    docs = []
    for neg in (True, False):
        doc = Doc("Pas de fievre. Aspirine.", id=f"d{neg}")
        doc.spans["gold"] = [
            Span(7, 13, "Pathologie", {"Negation": neg}),
            Span(15, 23, "Medicament", {"Negation": True}),  # noise a restriction must skip
        ]
        docs.append(doc)
    return docs


def test_span_labels_restrict_an_attribute_to_spans_of_those_labels(tmp_path):
    nlp = _pipeline(attributes=["Negation"], span_labels={"Negation": "Pathologie"})
    docs = _qualified_docs()
    nlp.post_init(docs[1:])  # the Medicament span's True is not a value Pathologie spans have
    assert nlp.get_pipe("clf").attributes == {"Negation": [False]}
    nlp = _pipeline(attributes=["Negation"], span_labels={"Negation": ["Pathologie"]})
    nlp.post_init(docs)
    assert nlp.preprocess(docs[0], supervision=True)["clf"]["targets"] == {"Negation": [1, -100]}
    new = Doc("Pas de fievre. Aspirine.")
    new.spans["gold"] = [Span(7, 13, "Pathologie"), Span(15, 23, "Medicament")]
    out = nlp(new).spans["gold"]
    assert "Negation" in out[0].attributes and out[1].attributes == {}
    nlp.to_disk(tmp_path / "model")  # the saved model predicts as the trained one
    loaded = load(tmp_path / "model").get_pipe("clf")
    assert loaded.span_labels == {"Negation": ["Pathologie"]}
    assert loaded.config() == nlp.get_pipe("clf").config()
    # unset, the option is left out of the config: other saved models stay as they were
    assert "span_labels" not in SpanClassifier(attributes=["Negation"]).config()


def test_the_eds_nlp_attributes_table_is_not_read_as_values():
    # EDS-NLP: attributes = {Negation = ["Pathologie"]} means "on Pathologie spans"; here it
    # made "Pathologie" a class of Negation, predicted on every span
    nlp = _pipeline(attributes={"Negation": ["Pathologie"]})
    with pytest.raises(
        ValueError,
        match=r"'Pathologie', a span label, as a value of 'Negation'.*"
        r'span_labels = \{ Negation = \["Pathologie"\] \}',
    ):
        nlp.post_init(_qualified_docs())
    with pytest.raises(ValueError, match=r"span_labels: 'Certitude' is not one of the attributes"):
        SpanClassifier(attributes=["Negation"], span_labels={"Certitude": ["Pathologie"]})
    nlp = _pipeline(attributes=["Negation"], span_labels={"Negation": ["Pathology"]})
    with (
        pytest.warns(UserWarning, match=r"labelled 'Pathology'; did you mean 'Pathologie'"),
        pytest.raises(ValueError, match=r"labelled 'Pathology' has attribute 'Negation'"),
    ):
        nlp.post_init(_qualified_docs())


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
