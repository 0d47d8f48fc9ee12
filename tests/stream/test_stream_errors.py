from __future__ import annotations

import re

import pytest
from stream_fixtures import preprocessed

from pureml.stream import (
    DataError,
    StreamError,
    from_iterable,
    parse_size,
    read_jsonl,
    read_standoff,
)


def _standoff(tmp_path, text, ann):
    (tmp_path / "d.txt").write_text(text)
    (tmp_path / "d.ann").write_text(ann)
    return tmp_path


@pytest.mark.parametrize(
    "ann, message",
    [
        (
            "T1\tDisease 0 5\tBreas\nT2 Disease 0 5\n",
            r"d\.ann:2: cannot parse entity line 'T2 Disease 0 5'",
        ),
        ("T1\tDisease zero 5\tBreas\n", r"d\.ann:1: bad offsets 'zero 5'"),
        (
            "\nT1\tDisease 7 99\tcancer\n",
            r"d\.ann:2: T1 offsets 7 99 are outside the text \(14 characters\)",
        ),
        (
            "T1\tDisease 7 13\tcancers\n",
            r"d\.ann:1: T1 text 'cancers' does not match the text at 7 13: 'cancer'",
        ),
        ("T1\tDisease 9 7\tx\n", r"d\.ann:1: offsets 9 7 are reversed"),
        ("T1\tDisease 7 13\tcancer\nA1\tNegated T9\n", r"d\.ann:2: A1 refers to unknown entity T9"),
        ("X1\twhat\n", r"d\.ann:1: cannot parse line 'X1\\twhat': unknown annotation type 'X'"),
    ],
)
def test_bad_ann_lines_name_file_and_line(tmp_path, ann, message):
    d = _standoff(tmp_path, "Breast cancer.", ann)
    with pytest.raises(DataError, match=message):
        list(read_standoff(d))


def test_offsets_computed_without_the_txt_bom_get_a_hint(tmp_path):
    # brat counts a BOM as a character; a converter that stripped it first is off by one
    d = _standoff(tmp_path, "\ufeffBreast cancer.", "T1\tDisease 7 13\tcancer\n")
    with pytest.raises(DataError, match=r"T1 text 'cancer' does not match .*byte-order mark"):
        list(read_standoff(d))
    d = _standoff(tmp_path, "\ufeffBreast cancer.", "T1\tDisease 7 13\tcancers\n")
    with pytest.raises(DataError, match=r": ' cance'$"):  # not one off: no hint
        list(read_standoff(d))
    d = _standoff(tmp_path, "\ufeffBreast cancer.", "T1\tDisease 8 14\tcancer\n")
    assert [s.label for s in next(iter(read_standoff(d))).spans["gold"]] == ["Disease"]


def test_non_utf8_names_the_file(tmp_path):
    (tmp_path / "bad.txt").write_bytes("caf\u00e9".encode("latin-1"))
    (tmp_path / "bad.ann").write_text("")
    with pytest.raises(DataError, match=r"bad\.txt: not valid UTF-8 \(byte 3"):
        list(read_standoff(tmp_path))
    with pytest.raises(DataError, match=r"bad\.txt: not valid UTF-8 \(byte 3"):  # texts alone
        list(read_standoff(tmp_path, annotations=False))
    (tmp_path / "bad.jsonl").write_bytes(b'{"text": "caf\xe9"}\n')
    with pytest.raises(DataError, match=r"bad\.jsonl: not valid UTF-8"):
        read_jsonl(tmp_path / "bad.jsonl")


def test_empty_directory(tmp_path):
    with pytest.raises(DataError, match=re.escape(f"{tmp_path}: no documents (.txt files) found")):
        read_standoff(tmp_path)
    with pytest.raises(DataError, match="no documents"):
        read_jsonl(tmp_path)
    with pytest.raises(DataError, match="not a directory"):
        read_standoff(tmp_path / "missing")


@pytest.mark.parametrize(
    "line, message",
    [
        ("[1, 2]", r"c\.jsonl:2: expected a JSON object, got list"),
        ('{"txt": "a"}', r'c\.jsonl:2: missing "text"'),
        ('{"text": "a"', r"c\.jsonl:2: invalid JSON"),
        (
            '{"text": "ab", "spans": [{"start": 0, "end": 5, "label": "X"}]}',
            r"c\.jsonl:2: span #0: offsets 0-5 are outside",
        ),
        (
            '{"text": "ab", "spans": [{"start": 0, "end": 1}]}',
            r'c\.jsonl:2: span #0: "label" must be a string',
        ),
        (
            '{"text": "ab", "spans": [{"start": 0, "end": true, "label": "X"}]}',
            r'c\.jsonl:2: span #0: "start" and "end" must be integers',
        ),
    ],
)
def test_bad_json_lines_name_file_and_line(tmp_path, line, message):
    (tmp_path / "c.jsonl").write_text('{"text": "fine"}\n' + line + "\n")
    with pytest.raises(DataError, match=message):
        list(read_jsonl(tmp_path / "c.jsonl"))


_SCHEMA = (
    'pureml reads {"id", "text", "spans": [{"start", "end", "label", "attributes"}]} '
    "(README: Data formats); rename the keys"
)


@pytest.mark.parametrize(
    "line, message",
    [
        # EDS-NLP's OMOP schema (and the QA's export, its entities with start/end/label)
        (
            '{"note_id": "n1", "note_text": "Pas de fièvre.", "entities": '
            '[{"start": 7, "end": 13, "label": "Pathologie", "negation": true}]}',
            f'c.jsonl:2: missing "text": "note_text" is EDS-NLP\'s OMOP schema; {_SCHEMA}',
        ),
        # EDS-NLP's standoff schema: read, its entities were silently lost
        (
            '{"doc_id": "n1", "text": "Pas de fièvre.", "entities": '
            '[{"label": "Pathologie", "fragments": [{"begin": 7, "end": 13}]}]}',
            f'c.jsonl:2: "entities" is not read (EDS-NLP\'s schema?); {_SCHEMA}',
        ),
    ],
)
def test_eds_nlp_json_lines_name_the_keys_pureml_reads(tmp_path, line, message):
    (tmp_path / "c.jsonl").write_text('{"text": "fine"}\n' + line + "\n", encoding="utf-8")
    with pytest.raises(DataError) as info:
        list(read_jsonl(tmp_path / "c.jsonl"))
    assert str(info.value) == f"{tmp_path}/{message}"


def test_jsonl_without_annotations_reads_texts_alone(tmp_path):
    # what predict reads: spans it would drop neither read nor checked
    (tmp_path / "c.jsonl").write_text(
        '{"id": "a", "text": "ab", "spans": [{"start": 0, "end": 5, "label": "X"}]}\n'
        '{"id": "b", "text": "cd", "entities": [], "meta": {"k": 1}}\n'
    )
    docs = list(read_jsonl(tmp_path / "c.jsonl", annotations=False))
    assert [(d.id, d.text, d.spans["gold"], d.meta) for d in docs] == [
        ("a", "ab", [], {}),
        ("b", "cd", [], {"k": 1}),
    ]
    with pytest.raises(DataError, match=r"c\.jsonl:1: span #0: offsets 0-5 are outside"):
        list(read_jsonl(tmp_path / "c.jsonl"))


def test_a_lone_surrogate_in_a_json_text_is_refused_with_its_offset(tmp_path):
    # json decodes "\\ud83d" to half a character: the HF tokenizer then failed 19 frames deep
    (tmp_path / "c.jsonl").write_text(
        '{"text": "fine \\ud83d\\ude00"}\n{"text": "pain \\ud83d here"}\n'
    )
    with pytest.raises(
        DataError, match=r"c\.jsonl:2: \"text\" has a lone surrogate '\\ud83d' at character 5"
    ):
        list(read_jsonl(tmp_path / "c.jsonl"))


@pytest.mark.parametrize(
    "expr, message",
    [
        ("-3 docs", r"'-3 docs': the amount must be positive"),
        ("0 words", r"'0 words': the amount must be positive"),
        ("words 2000", r"'words 2000': expected '<positive int> <stat>'"),
        ("2000.5 words", r"expected '<positive int> <stat>'"),
        (True, r"expected an int or a string"),
    ],
)
def test_malformed_stat_expressions(expr, message):
    with pytest.raises(StreamError, match=message):
        parse_size(expr)


def test_unknown_stat_names_the_expression_when_measured():
    stream = from_iterable(preprocessed(5)).batch("2000 wrds")  # names come from the items
    with pytest.raises(
        StreamError,
        match=r"'2000 wrds': items report no stat 'wrds' \(they report: docs, spans, words\); did you mean 'words'\?",
    ):
        list(stream)


def test_chain_order_errors():
    s = from_iterable(preprocessed(5))
    with pytest.raises(StreamError, match="shuffle"):
        s.batch(2).shuffle("dataset")
    with pytest.raises(StreamError, match="split"):
        s.split("2 splits")
    with pytest.raises(StreamError, match="rank"):
        s.batch(2).shard(2, 2)
    with pytest.raises(StreamError, match="all filtered out"):
        next(iter(s.filter(lambda x: False).loop()))


def test_state_from_another_stream_is_refused():
    a = from_iterable(preprocessed(10)).shuffle(seed=1).batch(2)
    b = from_iterable(preprocessed(10)).shuffle(seed=2).batch(2)
    with pytest.raises(StreamError, match="built differently"):
        b.load_state_dict(a.state_dict())


def test_wrong_argument_types_are_named_where_the_chain_is_built():
    s = from_iterable(preprocessed(5))
    with pytest.raises(StreamError, match=r"map\(5\): expected a function"):
        s.map(5)
    with pytest.raises(StreamError, match=r"filter\('x'\): expected a function"):
        s.batch(2).filter("x")
    with pytest.raises(StreamError, match=r"apply\(None\): expected a function"):
        s.apply(None)
    with pytest.raises(StreamError, match=r"prefetch\('2'\): n must be an int >= 1"):
        s.prefetch("2")
    with pytest.raises(StreamError, match=r"shuffle\(seed='a'\): seed must be an int"):
        s.shuffle(seed="a")
    with pytest.raises(StreamError, match=r"shard\(True, 2\): need 0 <= rank < world_size"):
        s.batch(2).shard(True, 2)


def test_an_exception_in_map_or_filter_names_the_document(tmp_path):
    from pureml.stream import read_standoff

    for name in ("a", "b"):
        (tmp_path / f"{name}.txt").write_text("Breast cancer.")
        (tmp_path / f"{name}.ann").write_text("")

    def preprocess(doc):
        if doc.id == "b":
            raise KeyError("no such label")
        return doc

    for s in (
        read_standoff(tmp_path).map(preprocess, cache=True).batch(1).prefetch(2),
        read_standoff(tmp_path).filter(lambda d: preprocess(d) is d).batch(1),
    ):
        with pytest.raises(KeyError, match="no such label") as info:
            list(s)
        assert info.value.__notes__ == [f"while running map/filter on {tmp_path / 'b.txt'}"]
    (tmp_path / "c.jsonl").write_text('{"text": "a"}\n\n{"text": "b"}\n')
    with pytest.raises(ZeroDivisionError) as info:
        list(read_jsonl(tmp_path / "c.jsonl").map(lambda d: d.text == "b" and 1 / 0))
    assert info.value.__notes__ == [f"while running map/filter on {tmp_path / 'c.jsonl'}:3"]
    with pytest.raises(ZeroDivisionError) as info:
        list(from_iterable([1, 0]).map(lambda x: 1 / x))
    assert info.value.__notes__ == ["while running map/filter on item 1 of iterable"]


def test_a_looped_stream_of_empty_documents_is_an_error_not_a_hang():
    # what tests/faults' run of empty documents checked, until ner_crf refused them earlier
    from pureml.nlp import Doc

    stream = from_iterable([Doc(""), Doc(" ")]).loop().batch("10 words")
    with pytest.raises(
        StreamError, match=r"has no 'words' \(empty documents\?\): no batch can ever fill"
    ):
        next(iter(stream))
