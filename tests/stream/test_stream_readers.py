from __future__ import annotations

import collections
import json
import os
import warnings

import pytest
from stream_fixtures import NCBI_TRAIN, make_docs

from pureml.nlp.doc import Doc, Span
from pureml.stream import read_jsonl, read_standoff, write_jsonl, write_standoff


def _key(doc: Doc) -> tuple:
    return (
        doc.id,
        doc.text,
        [(s.start, s.end, s.label, s.attributes, s.id) for s in doc.spans.get("gold", [])],
        doc.meta,
    )


@pytest.mark.skipif(not os.path.isdir(NCBI_TRAIN), reason="NCBI-disease not available")
def test_ncbi_disease_counts_and_round_trip(tmp_path):
    docs = list(read_standoff(NCBI_TRAIN))
    labels = collections.Counter(s.label for d in docs for s in d.spans["gold"])
    assert len(docs) == 593
    assert sum(labels.values()) == 5145
    assert labels == {
        "SpecificDisease": 2972,
        "Modifier": 1289,
        "DiseaseClass": 769,
        "CompositeMention": 115,
    }
    # mention types are the labels; the only attribute NCBI carries is the normalisation
    # (N lines: 5248 references, composite mentions have up to 3, joined with "|")
    assert {k for d in docs for s in d.spans["gold"] for k in s.attributes} == {"norm"}
    assert sum(len(s.attributes["norm"].split("|")) for d in docs for s in d.spans["gold"]) == 5248
    assert docs[0].id == "10021369"
    assert docs[0].spans["gold"][0].attributes == {"norm": "MeSH:D011125"}
    # writing them back gives byte-identical files
    write_standoff(docs, tmp_path / "out")
    for name in ("10021369", "10051005", "1562739"):
        for ext in (".txt", ".ann"):
            with (
                open(f"{NCBI_TRAIN}/{name}{ext}", "rb") as f,
                open(tmp_path / "out" / f"{name}{ext}", "rb") as g,
            ):
                assert f.read() == g.read(), name + ext


def test_standoff_round_trip_attributes_discontinuous_and_kept_lines(tmp_path):
    d = tmp_path / "in"
    d.mkdir()
    text = "Aspirin does not cause\r\nbleeding ulcers in the stomach."
    (d / "x.txt").write_bytes(text.encode())
    (d / "x.ann").write_text(
        "T1\tDrug 0 7\tAspirin\n"
        "T2\tDisease 24 32;40 42\tbleeding in\n"
        "A1\tNegated T2\n"
        "M2\tCertainty T2 Low\n"
        "N1\tReference T2 MeSH:D1\n"
        "N2\tReference T2 OMIM:2\n"
        "#1\tAnnotatorNotes T1\tbrand name\n"
        "R1\tCauses Arg1:T1 Arg2:T2\n",
        encoding="utf-8",
    )
    (doc,) = read_standoff(d)
    t1, t2 = doc.spans["gold"]
    assert (t1.start, t1.end, t1.label, t1.attributes) == (0, 7, "Drug", {"note": "brand name"})
    assert (t2.start, t2.end) == (24, 42)
    assert t2.attributes == {
        "fragments": [[24, 32], [40, 42]],
        "Negated": True,
        "Certainty": "Low",
        "norm": "MeSH:D1|OMIM:2",
    }
    assert doc.meta == {"standoff_lines": ["R1\tCauses Arg1:T1 Arg2:T2"]}
    write_standoff([doc], tmp_path / "out")
    (again,) = read_standoff(tmp_path / "out")
    assert _key(again) == _key(doc)
    assert (tmp_path / "out" / "x.txt").read_bytes() == text.encode()


def test_standoff_txt_without_ann_and_nested_ids(tmp_path):
    (tmp_path / "a" / "b").mkdir(parents=True)
    (tmp_path / "a" / "b" / "n.txt").write_text("No annotations here.")
    (tmp_path / "a" / "m.txt").write_text("Nor here.")
    with pytest.warns(UserWarning, match="have no .ann"):
        docs = list(read_standoff(tmp_path))
    assert [d.id for d in docs] == ["a/b/n", "a/m"]
    assert all(d.spans["gold"] == [] for d in docs)


def test_a_txt_without_its_ann_is_flagged_unless_annotations_are_not_read(tmp_path):
    # an annotator's forgotten export trained as a note without entities, silently (QA)
    for name in ("a", "b", "c", "d", "e"):
        (tmp_path / f"{name}.txt").write_text("Breast cancer.")
    for name in ("a", "e"):
        (tmp_path / f"{name}.ann").write_text("T1\tDisease 0 6\tBreast\n")
    with pytest.warns(UserWarning) as record:
        read_standoff(tmp_path)
    assert [str(w.message) for w in record] == [
        f"{tmp_path}: 3 .txt file(s) have no .ann (treated as documents without entities): "
        "b.txt, c.txt, d.txt"
    ]
    (tmp_path / "f.txt").write_text("x")
    with pytest.warns(
        UserWarning, match=r": 4 \.txt file\(s\) .*: b\.txt, c\.txt, d\.txt, \.\.\.$"
    ):
        read_standoff(tmp_path)
    # texts alone (what predict reads): nothing is missing, no .ann is opened, even a bad one
    (tmp_path / "e.ann").write_text("T1\tDisease 0 6\tWrong\n")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        docs = list(read_standoff(tmp_path, annotations=False))
    assert [(d.id, d.spans["gold"]) for d in docs] == [(n, []) for n in "abcdef"]
    for name in "bcdf":
        (tmp_path / f"{name}.ann").write_text("")  # an empty .ann: a note without entities
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        read_standoff(tmp_path)


def test_hidden_files_and_folders_are_not_documents(tmp_path):
    # a notebook's checkpoint copies and macOS resource files beside a corpus
    (tmp_path / "corpus" / ".ipynb_checkpoints").mkdir(parents=True)
    corpus = tmp_path / "corpus"
    (corpus / "n.txt").write_text("Breast cancer.")
    (corpus / "n.ann").write_text("T1\tDisease 0 13\tBreast cancer\n")
    (corpus / ".ipynb_checkpoints" / "n-checkpoint.txt").write_text("Breast cancer.")
    (corpus / "._n.txt").write_bytes(b"\x00\x05\x16\x07\xff")
    (corpus / "._n.ann").write_bytes(b"\x00\x05\x16\x07\xff")
    assert [d.id for d in read_standoff(corpus)] == ["n"]
    write_jsonl(read_standoff(corpus), tmp_path / "j" / "d.jsonl")
    (tmp_path / "j" / ".ipynb_checkpoints").mkdir()
    (tmp_path / "j" / ".ipynb_checkpoints" / "d-checkpoint.jsonl").write_text('{"text": "a"}\n')
    (tmp_path / "j" / "._d.jsonl").write_bytes(b"\x00\x05\x16\x07\xff")
    assert [d.id for d in read_jsonl(tmp_path / "j")] == ["n"]
    # a hidden folder named by the user is read: only what lies below it is filtered
    hidden = tmp_path / ".data"
    corpus.rename(hidden)
    assert [d.id for d in read_standoff(hidden)] == ["n"]


def test_jsonl_round_trip(tmp_path):
    docs = make_docs(5)
    docs[0].spans["gold"][0].attributes["norm"] = "MeSH:D1"
    docs[1].meta["source"] = "synthetic"
    assert write_jsonl(docs, tmp_path / "d.jsonl") == 5
    again = list(read_jsonl(tmp_path / "d.jsonl"))
    assert [_key(d) for d in again] == [_key(d) for d in docs]
    # the writer writes what the reader reads: one object per line
    first = json.loads((tmp_path / "d.jsonl").read_text().splitlines()[0])
    assert set(first) == {"id", "text", "spans"}


def test_jsonl_default_ids_and_blank_lines(tmp_path):
    (tmp_path / "c.jsonl").write_text('{"text": "a"}\n\n{"text": "b", "spans": []}\n')
    assert [d.id for d in read_jsonl(tmp_path / "c.jsonl")] == ["c:1", "c:3"]
    # an explicit null id is no id: every such document would otherwise be called "None"
    (tmp_path / "n.jsonl").write_text('{"text": "a", "id": null}\n{"text": "b", "id": 7}\n')
    assert [d.id for d in read_jsonl(tmp_path / "n.jsonl")] == ["n:1", "7"]


def test_predictions_written_from_another_group(tmp_path):
    doc = Doc("Breast cancer.", id="p")
    doc.spans["ents"] = [Span(7, 13, "Disease")]
    write_standoff([doc], tmp_path, span_group="ents")
    assert (tmp_path / "p.ann").read_text() == "T1\tDisease 7 13\tcancer\n"


def test_readers_are_registered_for_recipes():
    from pureml.registry import readers

    assert readers.get("standoff") is read_standoff and readers.get("jsonl") is read_jsonl


def test_ann_with_a_byte_order_mark(tmp_path):
    (tmp_path / "b.txt").write_text("Breast cancer.")
    (tmp_path / "b.ann").write_bytes("\ufeffT1\tDisease 7 13\tcancer\n".encode())
    (doc,) = read_standoff(tmp_path)
    assert doc.spans["gold"][0].label == "Disease"


def test_jsonl_with_a_byte_order_mark(tmp_path):
    (tmp_path / "b.jsonl").write_bytes('\ufeff{"id": "b", "text": "Breast cancer."}\n'.encode())
    assert [d.id for d in read_jsonl(tmp_path / "b.jsonl")] == ["b"]


@pytest.mark.parametrize("doc_id", ["../escape", "/tmp/escape", "a/../../escape"])
def test_write_standoff_keeps_files_inside_the_folder(tmp_path, doc_id):
    from pureml.stream import DataError

    with pytest.raises(DataError, match="outside"):
        write_standoff([Doc("abc", id=doc_id)], tmp_path / "out")
    assert not (tmp_path / "escape.txt").exists()


@pytest.mark.parametrize(
    "doc_id, message",
    [
        # each was written, then read back as another id or not at all (QA of pureml predict)
        ("sub/.hidden", "names a hidden file, which the reader skips"),
        ("dir/", "is not a file path that reads back as this id"),
        (".", "is not a file path that reads back as this id"),
        ("a//b", "is not a file path that reads back as this id"),
        ("nul\0byte", "is not a file path that reads back as this id"),
        ("x" * 300, r"cannot write its files \(File name too long\)"),
    ],
)
def test_write_standoff_refuses_ids_that_would_not_read_back(tmp_path, doc_id, message):
    from pureml.stream import DataError

    with pytest.raises(DataError, match=message):
        write_standoff([Doc("ok", id="ok"), Doc("abc", id=doc_id)], tmp_path / "out")
    # the ids that read back as themselves: one file per document, under its own id
    docs = [Doc("a", id="a/b"), Doc("c", id="sub/c.d"), Doc("e", id="e f")]
    assert write_standoff(docs, tmp_path / "good") == 3
    assert [d.id for d in read_standoff(tmp_path / "good")] == ["a/b", "e f", "sub/c.d"]


def test_write_standoff_refuses_two_documents_with_one_id(tmp_path):
    from pureml.stream import DataError

    docs = [Doc("first", id="a"), Doc("second", id="a")]
    with pytest.raises(DataError, match="document #1: duplicate id 'a'"):
        write_standoff(docs, tmp_path)


@pytest.mark.parametrize(
    "span, message",
    [
        (Span(0, 6, "Specific Disease"), r"label 'Specific Disease'"),
        (Span(0, 6, "Disease", {"type": "Specific Disease"}), r"attribute 'type' value"),
        (Span(0, 6, "Disease", {"has type": True}), r"attribute name 'has type'"),
        (Span(0, 6, "Disease", {"note": "line one\nline two"}), r"note 'line one\\nline two'"),
        # where str.splitlines() ends a line too, as brat's reader (Python's codecs) does
        (Span(0, 6, "Disease", {"note": "one\u2028two"}), r"note 'one\\u2028two' contains a line"),
        (Span(0, 6, "Disease", {"norm": "D1", "norm_name": "a\x85b"}), r"norm_name 'a\\x85b' con"),
        (Span(0, 6, "Dis\x0cease"), r"label 'Dis\\x0cease' contains a line break"),
        (Span(6, 7, "Disease"), r"its text '\\r' is line breaks and whitespace only"),
        (Span(0, 6, "Disease", {"norm": "MeSH: D1"}), r"norm 'MeSH: D1'"),
        (Span(0, 6, "Disease", {"norm": "D1", "norm_name": "a\tb"}), r"norm_name 'a\\tb'"),
    ],
)
def test_write_standoff_refuses_what_brat_cannot_read_back(tmp_path, span, message):
    # brat fields are space- and tab-separated, one annotation per line: writing these would
    # give a file that read_standoff (and brat) reject or misread
    from pureml.stream import DataError

    doc = Doc("Breast\rcancer.", id="d", spans={"gold": [span]})
    with pytest.raises(DataError, match=r"document 'd', span T1: " + message):
        write_standoff([doc], tmp_path)
    assert not list(tmp_path.iterdir())


@pytest.mark.parametrize("newline", ["\r\n", "\n", "\r", "\u2028", "\x85", "\x0c", "\n\n"])
def test_a_span_across_a_line_break_is_written_in_fragments_as_brat_does(tmp_path, newline):
    # the writer replaced "\n" only: "cardiologie\r électrocardiogramme" broke the line in two
    # for brat and any reader of lines (QA: CRLF notes); brat itself splits such a mention in
    # fragments at the break, its text field their texts joined by a space
    text = f"COMPTE RENDU{newline}Service de cardiologie {newline}électrocardiogramme du foie."
    start, end = text.index("cardiologie"), text.index(".")
    doc = Doc(text, id="n", spans={"gold": [Span(0, 6, "X"), Span(start, end, "Examen")]})
    write_standoff([doc], tmp_path / "out")
    cut = text.index(newline, start)
    assert (tmp_path / "out" / "n.ann").read_bytes().decode() == (
        f"T1\tX 0 6\tCOMPTE\nT2\tExamen {start} {start + 11};{cut + len(newline)} {end}\t"
        "cardiologie électrocardiogramme du foie\n"
    )
    assert (tmp_path / "out" / "n.txt").read_bytes() == text.encode()
    (again,) = read_standoff(tmp_path / "out")
    assert again.text == text
    exam = again.spans["gold"][1]
    assert (exam.start, exam.end, exam.label) == (start, end, "Examen")
    assert exam.attributes == {"fragments": [[start, start + 11], [cut + len(newline), end]]}
    # written again as read: the same file
    write_standoff([again], tmp_path / "again")
    assert (tmp_path / "again" / "n.ann").read_bytes() == (tmp_path / "out" / "n.ann").read_bytes()


def test_write_standoff_keeps_spaces_and_tabs_where_brat_can(tmp_path):
    span = Span(0, 6, "Disease", {"norm": "D1", "norm_name": "breast cancer", "note": "a\tb c"})
    write_standoff([Doc("Breast cancer.", id="d", spans={"gold": [span]})], tmp_path)
    (doc,) = read_standoff(tmp_path)
    assert doc.spans["gold"][0].attributes == span.attributes


def test_standoff_default_attributes_fill_what_brat_leaves_out(tmp_path):
    # brat writes a binary attribute only where it holds: "Negation" on T1, nothing on T2. With
    # no default, T2 had no value and a span classifier learnt Negation=True for every span.
    (tmp_path / "a.txt").write_text("No fever. Cough.", encoding="utf-8")
    (tmp_path / "a.ann").write_text(
        "T1\tproblem 3 8\tfever\nT2\tproblem 10 15\tCough\nA1\tNegation T1\n"
        "A2\tCertainty T2 Likely\n",
        encoding="utf-8",
    )
    (plain,) = list(read_standoff(tmp_path))
    assert [s.attributes for s in plain.spans["gold"]] == [
        {"Negation": True},
        {"Certainty": "Likely"},
    ]
    defaults = {"Negation": False, "Certainty": "Certain"}
    (doc,) = list(read_standoff(tmp_path, default_attributes=defaults))
    assert [s.attributes for s in doc.spans["gold"]] == [
        {"Negation": True, "Certainty": "Certain"},
        {"Negation": False, "Certainty": "Likely"},
    ]
    with pytest.raises(TypeError, match="default_attributes: expected a table"):
        read_standoff(tmp_path, default_attributes=["Negation"])


def test_jsonl_default_attributes_fill_what_the_export_leaves_out(tmp_path):
    path = tmp_path / "notes.jsonl"
    span = {"start": 3, "end": 8, "label": "problem"}
    lines = [
        {"text": "No fever.", "spans": [{**span, "attributes": {"Negation": True}}]},
        {"text": "A fever.", "spans": [{**span, "start": 2, "end": 7}]},
    ]
    path.write_text("".join(json.dumps(line) + "\n" for line in lines), encoding="utf-8")
    assert [d.spans["gold"][0].attributes for d in read_jsonl(path)] == [{"Negation": True}, {}]
    docs = list(read_jsonl(path, default_attributes={"Negation": False}))
    assert [d.spans["gold"][0].attributes for d in docs] == [
        {"Negation": True},
        {"Negation": False},
    ]
    with pytest.raises(TypeError, match="default_attributes: expected a table"):
        read_jsonl(path, default_attributes="Negation")


def _one_doc(tmp_path, ann: str):
    folder = tmp_path / "brat"
    folder.mkdir(exist_ok=True)
    (folder / "a.txt").write_text("Aspirin causes ulcers.", encoding="utf-8")
    (folder / "a.ann").write_text("T1\tDrug 0 7\tAspirin\nT2\tDisease 15 21\tulcers\n" + ann)
    return list(read_standoff(folder))


@pytest.mark.parametrize(
    ("line", "message"),
    [
        ("R1\tCauses Arg1:T1 Arg2:T9", r"a\.ann:3: R1 refers to unknown entity T9"),
        ("R1\tCauses T1", r"a\.ann:3: cannot parse line 'R1\\tCauses T1'"),
        ("E1\tTreat:T1 Theme:E7", r"a\.ann:3: E1 refers to unknown entity E7"),
        ("*\tEquiv T1 T3", r"a\.ann:3: \* refers to unknown entity T3"),
    ],
)
def test_relations_events_and_equivalences_must_name_known_entities(tmp_path, line, message):
    # they were kept verbatim unchecked, and written back into files brat refuses
    from pureml.stream import DataError

    with pytest.raises(DataError, match=message):
        _one_doc(tmp_path, line + "\n")


def test_kept_lines_go_back_with_the_entities_they_name_only(tmp_path):
    lines = "E2\tTreat:T1 Theme:E1\nE1\tHarm:T2\nR1\tCauses Arg1:T1 Arg2:T2\n*\tEquiv T1 T2\n"
    (doc,) = _one_doc(tmp_path, lines)  # an event may name one defined after it
    assert len(doc.meta["standoff_lines"]) == 4
    write_standoff([doc], tmp_path / "gold")
    assert (tmp_path / "gold" / "a.ann").read_text().endswith(lines)
    # predictions renumber their entities: the gold relations would name other spans (or none)
    doc.spans["ents"] = [Span(15, 21, "Disease")]
    write_standoff([doc], tmp_path / "pred", span_group="ents")
    assert (tmp_path / "pred" / "a.ann").read_text() == "T1\tDisease 15 21\tulcers\n"


def test_annotator_note_after_a_space_is_kept(tmp_path):
    # brat puts a tab before the note; with a space the note was read as '' and lost
    (doc,) = _one_doc(tmp_path, "#1\tAnnotatorNotes T1 brand name\n")
    assert doc.spans["gold"][0].attributes == {"note": "brand name"}


def _snapshot(folder):
    return {
        p.relative_to(folder).as_posix(): p.read_bytes() for p in folder.rglob("*") if p.is_file()
    }


def test_write_standoff_replaces_the_documents_it_writes_again(tmp_path):
    write_standoff([Doc("first text", id="a"), Doc("b", id="sub/b")], tmp_path)
    assert write_standoff([Doc("second text", id="a"), Doc("b", id="sub/b")], tmp_path) == 2
    assert [(d.id, d.text) for d in read_standoff(tmp_path)] == [
        ("a", "second text"),
        ("sub/b", "b"),
    ]
    assert sorted(_snapshot(tmp_path)) == ["a.ann", "a.txt", "sub/b.ann", "sub/b.txt"]


def test_write_standoff_refuses_a_folder_with_other_documents_and_touches_nothing(tmp_path):
    from pureml.stream import DataError

    write_standoff([Doc("old a", id="a"), Doc("old b", id="b"), Doc("c", id="sub/c")], tmp_path)
    (tmp_path / "annotation.conf").write_text("[entities]\nDisease\n")
    before = _snapshot(tmp_path)
    with pytest.raises(DataError) as e:
        write_standoff([Doc("new a", id="a")], tmp_path)
    assert str(e.value) == (
        f"{tmp_path}: holds 4 .txt/.ann file(s) of documents not written now, e.g. b.ann, which "
        "would be read back with them: pass overwrite=True to remove them (other files stay), "
        "or write into another folder"
    )
    assert _snapshot(tmp_path) == before  # not even "a", and no temporary folder left
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.ann", "a.txt", "annotation.conf",
                                                          "b.ann", "b.txt", "sub"]  # fmt: skip
    # overwrite=True: the folder reads back as what was written; other files stay
    assert write_standoff([Doc("new a", id="a")], tmp_path, overwrite=True) == 1
    assert [(d.id, d.text) for d in read_standoff(tmp_path)] == [("a", "new a")]
    assert sorted(_snapshot(tmp_path)) == ["a.ann", "a.txt", "annotation.conf"]
    assert not (tmp_path / "sub").exists()  # emptied by removing c: removed too


def test_write_standoff_error_on_a_later_document_writes_nothing(tmp_path):
    from pureml.stream import DataError

    docs = [Doc("ok", id="ok"), Doc("bad", id="bad", spans={"gold": [Span(0, 3, "Two words")]})]
    with pytest.raises(DataError, match="label 'Two words'"):
        write_standoff(docs, tmp_path / "new" / "out")
    assert not (tmp_path / "new" / "out").exists()  # created for the write: gone again
    write_standoff([Doc("kept", id="ok")], tmp_path / "old")
    before = _snapshot(tmp_path / "old")
    with pytest.raises(DataError, match="label 'Two words'"):
        write_standoff(docs, tmp_path / "old")
    assert _snapshot(tmp_path / "old") == before


def test_write_standoff_removes_what_a_killed_write_left_and_refuses_a_file(tmp_path):
    from pureml.stream import DataError

    (tmp_path / ".tmp-write_standoff-99999").mkdir()  # a write killed before its cleanup
    (tmp_path / ".tmp-write_standoff-99999" / "x.txt").write_text("half")
    write_standoff([Doc("a", id="a")], tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.ann", "a.txt"]
    with pytest.raises(DataError, match=r"a\.txt: not a directory$"):
        write_standoff([Doc("a", id="a")], tmp_path / "a.txt")
