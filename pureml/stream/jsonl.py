"""JSON lines: one document per line.

Each line is an object ``{"text": str, "id"?: str, "spans"?: [...], "meta"?: {...}}`` where a
span is ``{"start": int, "end": int, "label": str, "attributes"?: {...}, "id"?: str,
"text"?: str}`` (character offsets into ``text``, end excluded; a span's ``"text"``, when
given, must equal ``text[start:end]``). Spans go in ``doc.spans["gold"]``. A document without
``"id"`` (or with ``null``) gets ``"<file stem>:<line>"``; other keys are ignored.
Blank lines are skipped; anything else that is not such an object (or a text with a lone
UTF-16 surrogate, ``"\\ud83d"`` without its pair) raises :class:`DataError` naming ``file:line``,
as does a line of EDS-NLP's schemas (``"note_text"``, or ``"entities"`` without ``"spans"``),
whose entities would otherwise be lost: the message names the keys to rename.

>>> import tempfile, pathlib
>>> p = pathlib.Path(tempfile.mkdtemp()) / "docs.jsonl"
>>> _ = p.write_text('{"id": "d1", "text": "Breast cancer.", "spans": [{"start": 0, "end": 13, "label": "Disease"}]}\\n')
>>> [(d.id, d.spans["gold"][0].label) for d in read_jsonl(p)]
[('d1', 'Disease')]
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from ..nlp.doc import Doc, Span, lone_surrogate
from ..registry import readers
from .attributes import check_default_attributes, fill_attributes
from .errors import DataError
from .fingerprint import files_fingerprint
from .sources import Source, folder_files
from .standoff import read_text
from .stream import Stream

# what an EDS-NLP export (its "omop" and "standoff" JSON schemas) has to be renamed to
_SCHEMA_HINT = (
    'pureml reads {"id", "text", "spans": [{"start", "end", "label", "attributes"}]} '
    "(README: Data formats); rename the keys"
)


def parse_doc(obj: Any, *, path: str, line: int, default_id: str, annotations: bool = True) -> Doc:
    """A Doc from one decoded JSON line (validated); ``annotations=False`` leaves out (and does
    not look at) its ``"spans"``."""

    def fail(msg: str) -> DataError:
        return DataError(msg, path=path, line=line)

    if not isinstance(obj, dict):
        raise fail(f"expected a JSON object, got {type(obj).__name__}")
    text = obj.get("text")
    if text is None and "note_text" in obj:
        raise fail(f'missing "text": "note_text" is EDS-NLP\'s OMOP schema; {_SCHEMA_HINT}')
    if not isinstance(text, str):
        raise fail('missing "text" (a string)' if text is None else '"text" must be a string')
    if (at := lone_surrogate(text)) is not None:
        # JSON's "\ud83d" without its pair decodes to half a character, which no tokenizer takes
        raise fail(
            f'"text" has a lone surrogate {text[at]!r} at character {at} (half of a UTF-16 '
            "pair, as a broken export writes a split emoji): fix or remove it in the file"
        )
    doc_id = obj.get("id")
    if doc_id is None:  # absent or null
        doc_id = default_id
    elif not isinstance(doc_id, str):
        doc_id = str(doc_id)
    if annotations and "entities" in obj and "spans" not in obj:
        # read as a document without entities, a training set would silently teach nothing
        raise fail(f'"entities" is not read (EDS-NLP\'s schema?); {_SCHEMA_HINT}')
    raw_spans = obj.get("spans", []) if annotations else []
    if not isinstance(raw_spans, list):
        raise fail('"spans" must be a list')
    spans = []
    for j, raw in enumerate(raw_spans):
        if not isinstance(raw, dict):
            raise fail(f"span #{j}: expected an object")
        start, end, label = raw.get("start"), raw.get("end"), raw.get("label")
        if not all(isinstance(v, int) and not isinstance(v, bool) for v in (start, end)):
            raise fail(f'span #{j}: "start" and "end" must be integers')
        if not 0 <= start <= end <= len(text):
            raise fail(
                f"span #{j}: offsets {start}-{end} are outside the text ({len(text)} characters)"
                if end > len(text) or start < 0
                else f"span #{j}: offsets {start}-{end} are reversed"
            )
        if not isinstance(label, str):
            raise fail(f'span #{j}: "label" must be a string')
        attributes = raw.get("attributes", {})
        if not isinstance(attributes, dict):
            raise fail(f'span #{j}: "attributes" must be an object')
        span_text = raw.get("text")
        if span_text is not None and span_text != text[start:end]:
            raise fail(f"span #{j}: text {span_text!r} does not match {text[start:end]!r}")
        spans.append(Span(start, end, label, dict(attributes), id=raw.get("id")))
    meta = obj.get("meta", {})
    if not isinstance(meta, dict):
        raise fail('"meta" must be an object')
    return Doc(text, id=doc_id, spans={"gold": spans}, meta=dict(meta))


class JsonlSource(Source):
    """Lines of one ``.jsonl`` file or of all ``*.jsonl`` files under a folder (sorted, hidden
    ones skipped).

    The files are read once at construction to find the lines (bytes only); each line is
    decoded and parsed on first access.
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        default_attributes: dict[str, Any] | None = None,
        annotations: bool = True,
    ) -> None:
        super().__init__()
        root = Path(path)
        self._defaults = check_default_attributes(default_attributes)
        self._annotations = annotations
        self.name = f"jsonl:{root}"
        if root.is_dir():
            self._base, self._names = root, folder_files(root, ".jsonl")
        elif root.exists():
            self._base, self._names = root.parent, [root.name]
        else:
            raise DataError("no such file or directory", path=str(root))
        files = [self._base / name for name in self._names]
        self._lines: list[tuple[str, int, str]] = []  # (file, line number, content)
        for file in files:
            text = read_text(file)
            if text.startswith("\ufeff"):  # a BOM some editors add (as .ann files may have)
                text = text[1:]
            for lineno, line in enumerate(text.split("\n"), start=1):
                if line.strip():
                    self._lines.append((str(file), lineno, line))
        if not self._lines:
            raise DataError("no documents (non-empty JSON lines) found", path=str(root))
        self._stems = {str(f): f.stem for f in files}

    def __len__(self) -> int:
        return len(self._lines)

    def describe(self, index: int) -> str:
        file, lineno, _ = self._lines[index]
        return f"{file}:{lineno}"

    def _make_fingerprint(self) -> dict[str, Any]:
        return files_fingerprint(self._base, self._names)

    def _load(self, index: int) -> Doc:
        file, lineno, line = self._lines[index]
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as e:
            raise DataError(
                f"invalid JSON: {e.msg} (column {e.colno})", path=file, line=lineno
            ) from None
        doc = parse_doc(
            obj,
            path=file,
            line=lineno,
            default_id=f"{self._stems[file]}:{lineno}",
            annotations=self._annotations,
        )
        return fill_attributes(doc, self._defaults)


@readers.register("jsonl")
def read_jsonl(
    path: str | os.PathLike[str],
    default_attributes: dict[str, Any] | None = None,
    annotations: bool = True,
) -> Stream:
    """A stream of the documents of a JSON lines file (or folder of them); spans in "gold".

    A folder is read with its sub-folders, without hidden files and folders
    (``.ipynb_checkpoints/``). ``default_attributes`` gives each span the attributes it lacks,
    as :func:`read_standoff`'s does. ``annotations=False`` reads the texts alone (``"spans"``
    neither read nor checked), as ``pureml predict`` does.
    """
    return Stream(JsonlSource(path, default_attributes, annotations))


def doc_to_json(doc: Doc, span_group: str = "gold") -> dict[str, Any]:
    """The JSON object :func:`read_jsonl` reads back into an equal document."""
    obj: dict[str, Any] = {"id": doc.id, "text": doc.text}
    spans = []
    for s in doc.spans.get(span_group, []):
        span: dict[str, Any] = {"start": s.start, "end": s.end, "label": s.label}
        if s.attributes:
            span["attributes"] = s.attributes
        if s.id is not None:
            span["id"] = s.id
        spans.append(span)
    obj["spans"] = spans
    if doc.meta:
        obj["meta"] = doc.meta
    return obj


def write_jsonl(
    docs: Iterable[Doc], path: str | os.PathLike[str], *, span_group: str = "gold"
) -> int:
    """Write one JSON object per document (spans of ``span_group``); returns the count."""
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    count = 0
    with out.open("w", encoding="utf-8", newline="\n") as f:
        for doc in docs:
            f.write(json.dumps(doc_to_json(doc, span_group), ensure_ascii=False) + "\n")
            count += 1
    return count
