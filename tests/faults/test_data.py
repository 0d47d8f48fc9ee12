"""Bad training data through the real CLI: exit 2 and one line naming the file (and the line,
where there is one); no traceback. Each case is a brat folder or a JSON lines file with one
broken document among good ones."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from . import forkcli
from .conftest import KILL, write

DATA = (
    'data = { factory = "quickstart_corpus", path = "${paths.corpus}", split = "train", '
    "n_train = 40, n_dev = 10 }"
)


SOURCE = "train_data.notes.data: "  # found when the reader is built: the key path comes first


def standoff(folder: Path, corpus: Path) -> Path:
    """Three good documents; the cases break ``note-0001``."""
    folder.mkdir()
    for i in range(3):
        for ext in ("txt", "ann"):
            shutil.copy(corpus / "train" / f"note-000{i}.{ext}", folder)
    return folder


def ann_line(folder: Path, line: str, at: int = 2) -> tuple[Path, int]:
    ann = folder / "note-0001.ann"
    rows = ann.read_text().splitlines()
    rows.insert(at - 1, line)
    ann.write_text("\n".join(rows) + "\n")
    return ann, at


def text_len(folder: Path) -> int:
    return len((folder / "note-0001.txt").read_text())


# (id, break the folder -> (file, line or None), what the message says)
STANDOFF = [
    ("ann-missing-text", lambda f: ann_line(f, "T9\tproblem 0 3"), "cannot parse entity line"),
    ("ann-bad-offsets", lambda f: ann_line(f, "T9\tproblem a b\tabc"), "bad offsets 'a b'"),
    ("ann-reversed-offsets", lambda f: ann_line(f, "T9\tproblem 5 2\tabc"), "are reversed"),
    (
        "ann-offsets-outside-text",
        lambda f: ann_line(f, f"T9\tproblem {text_len(f)} {text_len(f) + 4}\tabcd"),
        "outside the text",
    ),
    ("ann-text-mismatch", lambda f: ann_line(f, "T9\tproblem 0 3\tzzz"), "does not match the text"),
    ("ann-unknown-type", lambda f: ann_line(f, "X1\tfoo bar"), "unknown annotation type 'X'"),
    ("ann-unknown-entity", lambda f: ann_line(f, "A9\tstatus T99 negated"), "unknown entity T99"),
    (
        "ann-duplicate-id",
        lambda f: (ann_line(f, "T1\tproblem 0 0\t", at=1), (f / "note-0001.ann", 2))[1],
        "duplicate id T1",
    ),
    (
        "txt-not-utf8",
        lambda f: (
            (f / "note-0001.txt").write_bytes(b"caf\xe9 au lait\n"),
            (f / "note-0001.txt", None),
        )[1],
        "not valid UTF-8 (byte 3",
    ),
    (
        "ann-not-utf8",
        lambda f: (
            (f / "note-0001.ann").write_bytes(b"T1\tproblem 0 3\t\xff\xfe\n"),
            (f / "note-0001.ann", None),
        )[1],
        "not valid UTF-8",
    ),
    (
        "ann-without-txt",
        lambda f: ((f / "note-0001.txt").unlink(), (f, None))[1],
        "1 .ann file(s) without a .txt, e.g. note-0001.ann",
    ),
    (
        "no-documents",
        lambda f: ([p.unlink() for p in f.iterdir()], (f / "sub").mkdir(), (f, None))[2],
        "no documents (.txt files) found",
    ),
]


@pytest.mark.parametrize("name, breaks, message", STANDOFF, ids=[c[0] for c in STANDOFF])
def test_bad_standoff_names_file_and_line(tmp_path, corpus, name, breaks, message):
    folder = standoff(tmp_path / "data", corpus)
    path, line = breaks(folder)
    recipe = write(
        KILL, tmp_path, corpus, **{DATA: f'data = {{ factory = "standoff", path = "{folder}" }}'}
    )
    result = forkcli.train(recipe, cwd=tmp_path)
    assert result.code == 2 and "Traceback" not in result.stderr, result.stderr
    lines = result.stderr.splitlines()
    assert len(lines) == 1, result.stderr
    where = f"{path}:{line}: " if line else f"{path}: "
    assert lines[0].startswith((f"error: {where}", f"error: {SOURCE}{where}")), lines[0]
    assert message in lines[0], lines[0]


GOOD = {
    "id": "a",
    "text": "The patient has nausea.",
    "spans": [{"start": 16, "end": 22, "label": "problem"}],
}

JSONL = [
    ("not-an-object", "[1, 2]", 2, "expected a JSON object, got list"),
    ("missing-text", '{"id": "b"}', 2, 'missing "text"'),
    ("text-not-string", '{"text": 3}', 2, '"text" must be a string'),
    ("invalid-json", '{"text": "x",', 2, "invalid JSON"),
    (
        "span-outside-text",
        '{"text": "abc", "spans": [{"start": 1, "end": 9, "label": "p"}]}',
        2,
        "span #0",
    ),
    ("spans-not-list", '{"text": "abc", "spans": 3}', 2, '"spans" must be a list'),
]


@pytest.mark.parametrize("name, bad, line, message", JSONL, ids=[c[0] for c in JSONL])
def test_bad_jsonl_names_file_and_line(tmp_path, corpus, name, bad, line, message):
    data = tmp_path / "train.jsonl"
    data.write_text(json.dumps(GOOD) + "\n" + bad + "\n" + json.dumps({**GOOD, "id": "c"}) + "\n")
    recipe = write(
        KILL, tmp_path, corpus, **{DATA: f'data = {{ factory = "jsonl", path = "{data}" }}'}
    )
    result = forkcli.train(recipe, cwd=tmp_path)
    assert result.code == 2 and "Traceback" not in result.stderr, result.stderr
    lines = result.stderr.splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith(f"error: {data}:{line}: ") and message in lines[0], lines[0]


@pytest.mark.parametrize(
    "content", [b"", b"\n\n", b"\xff\xfe{}\n"], ids=["empty", "blank", "not-utf8"]
)
def test_empty_or_undecodable_jsonl(tmp_path, corpus, content):
    data = tmp_path / "train.jsonl"
    data.write_bytes(content)
    recipe = write(
        KILL, tmp_path, corpus, **{DATA: f'data = {{ factory = "jsonl", path = "{data}" }}'}
    )
    result = forkcli.train(recipe, cwd=tmp_path)
    assert result.code == 2 and "Traceback" not in result.stderr, result.stderr
    lines = result.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"error: {SOURCE}{data}: "), result.stderr


def test_documents_without_words_are_an_error_not_a_hang(tmp_path, corpus):
    """Only empty .txt files: batches by words can never fill; the run must stop with an error."""
    folder = tmp_path / "data"
    folder.mkdir()
    for i in range(3):
        (folder / f"empty-{i}.txt").write_text("")
        (folder / f"empty-{i}.ann").write_text("")  # annotated: none (else a warning too)
    recipe = write(
        KILL, tmp_path, corpus, **{DATA: f'data = {{ factory = "standoff", path = "{folder}" }}'}
    )
    running = forkcli.start_cli([str(recipe)], entry="train", cwd=tmp_path)
    result = running.wait(timeout=60)  # kills it on time-out
    assert result.code == 2 and "Traceback" not in result.stderr, result.stderr
    lines = result.stderr.splitlines()
    # ner's post_init finds no span to learn before any batch is drawn
    assert len(lines) == 1 and "no words: empty documents?" in lines[0], result.stderr
