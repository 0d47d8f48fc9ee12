"""Resuming after the files or the functions changed: a warning naming each change, no error."""

from __future__ import annotations

import json
import warnings

import pytest

from pureml.stream import (
    StreamChangedWarning,
    StreamError,
    from_iterable,
    read_jsonl,
    read_standoff,
)


def words(item):
    return {"id": item.id, "stats": {"docs": 1, "words": len(item.text.split())}}


def words_too(item):
    return words(item)


def same(item):
    return item


def same_too(item):
    return item


def build(path, fn=words, *more):
    s = read_standoff(path).map(fn, cache=True)
    for extra in more:
        s = s.map(extra)
    return s.shuffle(seed=3).loop().batch("100 words")


def saved_state(path, fn=words, *more):
    s = build(path, fn, *more)
    it = iter(s)
    for _ in range(3):
        next(it)
    return json.loads(json.dumps(s.state_dict()))  # as a checkpoint holds it


def changes(stream, state):
    lines = []
    stream.load_state_dict(state, on_change=lines.append)
    return lines


def test_unchanged_data_and_functions_resume_without_a_word(corpus_dir):
    state = saved_state(corpus_dir)
    assert state["functions"] == [f"{__name__}.words"]
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        build(corpus_dir).load_state_dict(state)


def test_a_state_saved_before_fingerprints_resumes_without_a_word(corpus_dir):
    state = saved_state(corpus_dir)
    for key in ("source", "functions"):
        del state[key]
    (corpus_dir / "doc003.txt").write_text("edited")  # unknowable then: not compared
    fresh = build(corpus_dir, words_too)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        fresh.load_state_dict(state)
    assert fresh.state_dict()["functions"] == [f"{__name__}.words_too"]  # recorded from now on


def test_edited_files_warn_one_line_each_and_resume_at_the_position(corpus_dir):
    state = saved_state(corpus_dir)
    reference = build(corpus_dir)
    reference.load_state_dict(state)
    expected = [next(iter(reference))]
    txt = corpus_dir / "doc005.txt"
    size = txt.stat().st_size
    txt.write_text(txt.read_text() + " x")
    ann = corpus_dir / "doc007.ann"
    ann.write_text(ann.read_text().replace("Disease", "Diseasf"))  # same size
    fresh = build(corpus_dir)
    with pytest.warns(StreamChangedWarning) as caught:
        fresh.load_state_dict(state)
    assert [str(w.message) for w in caught] == [
        f"file doc005.txt changed size ({size} -> {size + 2} bytes)",
        "file doc007.ann changed (same size, other bytes)",
    ]
    # the position is kept (the documents under it may differ): same ids as before the edit
    assert [it["id"] for it in next(iter(fresh))] == [it["id"] for it in expected[0]]
    # and the edited files are what the resumed stream's own states record
    assert fresh.state_dict()["source"]["files"]["doc005.txt"][0] == size + 2


def test_a_renamed_document_is_gone_and_new(corpus_dir):
    state = saved_state(corpus_dir)
    for ext in (".txt", ".ann"):
        (corpus_dir / f"doc000{ext}").rename(corpus_dir / f"doc999{ext}")
    assert changes(build(corpus_dir), state) == [
        "file doc000.ann is gone",
        "file doc000.txt is gone",
        "file doc999.ann is new",
        "file doc999.txt is new",
    ]


def test_many_changed_files_are_counted_after_the_first_few(corpus_dir):
    state = saved_state(corpus_dir)
    sizes = {name: size for name, (size, _) in state["source"]["files"].items()}
    for i in range(1, 8):
        (corpus_dir / f"doc{i:03d}.txt").write_text("x " * 3)
    assert changes(build(corpus_dir), state) == [
        *(
            f"file doc{i:03d}.txt changed size ({sizes[f'doc{i:03d}.txt']} -> 6 bytes)"
            for i in range(1, 5)
        ),
        "and 3 more changed files",
    ]


def test_another_function_is_named(corpus_dir):
    state = saved_state(corpus_dir)
    assert changes(build(corpus_dir, words_too), state) == [
        f"map function was {__name__}.words, now {__name__}.words_too"
    ]
    state = saved_state(corpus_dir, words, same)
    assert changes(build(corpus_dir, words, same_too), state) == [
        f"map function was {__name__}.same, now {__name__}.same_too"
    ]
    state = saved_state(corpus_dir, words, same, same)  # one name, two stages: which one
    assert changes(build(corpus_dir, words, same, same_too), state) == [
        f"map #3 function was {__name__}.same, now {__name__}.same_too"
    ]


def test_a_changed_item_count_stays_an_error_that_names_the_files(corpus_dir):
    state = saved_state(corpus_dir)
    (corpus_dir / "extra.txt").write_text("one more document.")
    with pytest.raises(StreamError, match=r"this stream has 41 items, .*; file extra.txt is new$"):
        build(corpus_dir).load_state_dict(state)


def test_resuming_reads_no_document(corpus_dir):
    state = saved_state(corpus_dir)
    fresh = build(corpus_dir)
    fresh.load_state_dict(state)  # the files' sizes and edges are compared, nothing parsed
    assert fresh.source.n_parsed == 0


def test_jsonl_file_and_in_memory_sources(tmp_path):
    path = tmp_path / "docs.jsonl"
    path.write_text('{"id": "a", "text": "one"}\n{"id": "b", "text": "two"}\n')
    s = read_jsonl(path).batch(1)
    state = s.state_dict()
    assert list(state["source"]["files"]) == ["docs.jsonl"]  # stable wherever the data lies
    path.write_text('{"id": "a", "text": "one"}\n{"id": "b", "text": "two!"}\n')
    assert changes(read_jsonl(path).batch(1), state) == [
        "file docs.jsonl changed size (54 -> 55 bytes)"
    ]
    # in memory: nothing cheap to compare beyond the count, which is checked strictly
    assert "source" not in from_iterable([1, 2]).state_dict()
