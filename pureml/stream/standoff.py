"""brat standoff: a folder of ``name.txt`` + ``name.ann`` pairs.

What is read from ``.ann`` (one annotation per line, tab separated):

- ``T1<TAB>Label 0 5<TAB>text``: an entity, put in ``doc.spans["gold"]`` with ``id="T1"``. The
  text field must equal ``text[0:5]``. Discontinuous entities ``Label 0 5;10 15`` become one
  span from the first start to the last end with ``attributes["fragments"] = [[0, 5], [10, 15]]``
  (the text field is then the fragments joined by a space, as brat writes it).
- ``A1<TAB>Name T1 [Value]`` and the older ``M1`` lines: ``span.attributes[Name] = Value``
  (``True`` for a binary attribute).
- ``N1<TAB>Reference T1 MeSH:D011125[<TAB>name]``: normalisation, kept as
  ``span.attributes["norm"] = "MeSH:D011125"``; several N lines on one entity are joined
  with ``|`` in file order (NCBI-disease composite mentions carry up to 3). The optional name
  field is kept as ``attributes["norm_name"]``.
- ``#1<TAB>AnnotatorNotes T1<TAB>note``: ``span.attributes["note"]``.
- ``R``, ``E`` and ``*`` lines (relations, events, equivalences) are not modelled by ``Doc``;
  they are kept verbatim in ``doc.meta["standoff_lines"]`` and written back by
  :func:`write_standoff`, so nothing is dropped silently.

Any other line, bad offsets, a text field that differs from the text, or a reference to an
unknown entity raises :class:`DataError` naming ``file:line``. A ``.txt`` without its ``.ann``
is a document without entities, with one warning per folder naming the first few (an
annotator's forgotten export, more often than not); ``annotations=False`` reads the ``.txt``
files alone, without opening any ``.ann``.

>>> import tempfile, pathlib
>>> d = pathlib.Path(tempfile.mkdtemp())
>>> _ = (d / "a.txt").write_text("Familial breast cancer.")
>>> _ = (d / "a.ann").write_text("T1\\tDisease 9 22\\tbreast cancer\\n")
>>> docs = list(read_standoff(d))
>>> docs[0].id, [(s.start, s.end, s.label) for s in docs[0].spans["gold"]]
('a', [(9, 22, 'Disease')])
"""

from __future__ import annotations

import os
import shutil
import warnings
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from ..nlp.doc import Doc, Span
from ..registry import readers
from .attributes import check_default_attributes, fill_attributes
from .errors import DataError
from .fingerprint import files_fingerprint
from .sources import Source, folder_files
from .stream import Stream


def read_text(path: Path) -> str:
    """The file decoded as UTF-8 (no newline translation: brat offsets count ``\\r``)."""
    data = path.read_bytes()
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as e:
        raise DataError(
            f"not valid UTF-8 (byte {e.start}: {data[e.start : e.start + 1]!r}); "
            "convert the file to UTF-8",
            path=str(path),
        ) from None


def _parse_offsets(spec: str, where: tuple[str, int]) -> list[tuple[int, int]]:
    fragments = []
    for part in spec.split(";"):
        bits = part.split()
        if len(bits) != 2 or not all(b.isdigit() for b in bits):
            raise DataError(
                f"bad offsets {spec!r}: expected 'start end' pairs separated by ';'",
                path=where[0],
                line=where[1],
            )
        start, end = int(bits[0]), int(bits[1])
        if start > end:
            raise DataError(f"offsets {start} {end} are reversed", path=where[0], line=where[1])
        fragments.append((start, end))
    return fragments


def parse_ann(ann: str, text: str, path: str = "<ann>") -> tuple[list[Span], list[str]]:
    """Parse the content of a ``.ann`` file against its text: (entities, other kept lines)."""
    spans: dict[str, Span] = {}
    pending: list[tuple[int, str, str]] = []  # attribute/norm/note lines refer to entities
    kept: list[str] = []
    linked: list[tuple[int, str]] = []  # relation, event and equivalence lines
    if ann.startswith("\ufeff"):  # a BOM some editors add; never part of an annotation
        ann = ann[1:]
    for lineno, raw in enumerate(ann.split("\n"), start=1):
        line = raw.rstrip("\r")
        if not line.strip():
            continue
        fields = line.split("\t")
        ident = fields[0]
        kind = ident[:1]
        if kind == "T":
            if len(fields) < 3 or not ident[1:]:
                raise DataError(
                    f"cannot parse entity line {line!r}: expected 'T<n><TAB>Label start end<TAB>text'",
                    path=path,
                    line=lineno,
                )
            head = fields[1].split(" ", 1)
            if len(head) != 2 or not head[0]:
                raise DataError(f"cannot parse entity line {line!r}", path=path, line=lineno)
            label = head[0]
            fragments = _parse_offsets(head[1], (path, lineno))
            for start, end in fragments:
                if end > len(text):
                    raise DataError(
                        f"{ident} offsets {start} {end} are outside the text "
                        f"({len(text)} characters)",
                        path=path,
                        line=lineno,
                    )
            surface = "\t".join(fields[2:])
            expected = " ".join(text[s:e] for s, e in fragments)
            # brat writes newlines inside a mention as spaces
            if surface != expected and surface != expected.replace("\n", " "):
                hint = ""
                shifted = " ".join(text[s + 1 : e + 1] for s, e in fragments)
                if text.startswith("\ufeff") and surface in (shifted, shifted.replace("\n", " ")):
                    hint = (
                        "; the .txt starts with a byte-order mark (BOM), which brat counts as a "
                        "character and the tool that wrote these offsets did not: save the .txt "
                        "without it"
                    )
                raise DataError(
                    f"{ident} text {surface!r} does not match the text at {head[1]}: "
                    f"{expected!r}{hint}",
                    path=path,
                    line=lineno,
                )
            if ident in spans:
                raise DataError(f"duplicate id {ident}", path=path, line=lineno)
            attributes: dict[str, Any] = {}
            if len(fragments) > 1:
                attributes["fragments"] = [list(f) for f in fragments]
            spans[ident] = Span(fragments[0][0], fragments[-1][1], label, attributes, id=ident)
        elif kind in "AMN#":
            pending.append((lineno, line, kind))
        elif kind in "RE*":
            kept.append(line)
            linked.append((lineno, line))
        else:
            raise DataError(
                f"cannot parse line {line!r}: unknown annotation type {kind!r}",
                path=path,
                line=lineno,
            )
    for lineno, line, kind in pending:
        fields = line.split("\t")
        args = fields[1].split() if len(fields) > 1 else []
        if len(args) < 2 or (kind in "AM" and len(args) > 3) or (kind == "N" and len(args) != 3):
            raise DataError(f"cannot parse line {line!r}", path=path, line=lineno)
        target = spans.get(args[1])
        if target is None:
            if args[1][:1] in "RE":  # attributes of events/relations: keep with those
                kept.append(line)
                continue
            raise DataError(
                f"{fields[0]} refers to unknown entity {args[1]}", path=path, line=lineno
            )
        if kind in "AM":
            target.attributes[args[0]] = args[2] if len(args) == 3 else True
        elif kind == "N":
            prev = target.attributes.get("norm")
            target.attributes["norm"] = args[2] if prev is None else f"{prev}|{args[2]}"
            if len(fields) > 2:
                prev = target.attributes.get("norm_name")
                name = fields[2]
                target.attributes["norm_name"] = name if prev is None else f"{prev}|{name}"
        elif len(fields) > 2:
            target.attributes["note"] = "\t".join(fields[2:])
        else:  # "#1<TAB>AnnotatorNotes T1 the note": spaces where brat puts a tab
            target.attributes["note"] = " ".join(args[2:])
    events = {line.split("\t", 1)[0] for _, line in linked if line[:1] == "E"}
    for lineno, line in linked:
        _check_links(line, spans.keys() | events, (path, lineno))
    return sorted(spans.values(), key=lambda s: (s.start, s.end)), kept


def _check_links(line: str, known: set[str], where: tuple[str, int]) -> None:
    """A relation (``R1<TAB>Type Arg1:T1 Arg2:T2``), event (``E1<TAB>Type:T1 Role:T2``) or
    equivalence (``*<TAB>Equiv T1 T2``) line must name entities (or events) of its file: kept
    verbatim, a dangling one would be written back into a file brat refuses."""
    fields = line.split("\t")
    args = fields[1].split() if len(fields) > 1 else []
    kind = line[:1]
    if kind == "*":
        refs = args[1:]
        ok = len(refs) >= 2
    else:  # Role:ID pairs, after the relation's type (an event's type is a pair too)
        pairs = [a.partition(":") for a in (args[1:] if kind == "R" else args)]
        refs = [p[2] for p in pairs]
        ok = all(all(p) for p in pairs) and (len(pairs) == 2 if kind == "R" else bool(pairs))
    if not ok:
        raise DataError(f"cannot parse line {line!r}", path=where[0], line=where[1])
    for ref in refs:
        if ref not in known:
            raise DataError(
                f"{fields[0]} refers to unknown entity {ref}", path=where[0], line=where[1]
            )


def read_standoff_doc(txt_path: Path, doc_id: str, annotations: bool = True) -> Doc:
    """One document from ``name.txt`` and, when present (and ``annotations``), ``name.ann``."""
    text = read_text(txt_path)
    ann_path = txt_path.with_suffix(".ann")
    spans: list[Span] = []
    meta: dict[str, Any] = {}
    if annotations and ann_path.exists():
        spans, kept = parse_ann(read_text(ann_path), text, str(ann_path))
        if kept:
            meta["standoff_lines"] = kept
    return Doc(text, id=doc_id, spans={"gold": spans}, meta=meta)


class StandoffSource(Source):
    """The ``.txt`` files under a folder (recursively, sorted, hidden ones skipped); parsed one by
    one on demand."""

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
        self.name = f"standoff:{root}"
        if not root.is_dir():
            raise DataError("not a directory", path=str(root))
        self._root = root
        self._files = files = folder_files(root, (".txt", ".ann"))
        txts = [name[:-4] for name in files if name.endswith(".txt")]
        anns = [name[:-4] for name in files if name.endswith(".ann")]
        if not txts:
            raise DataError("no documents (.txt files) found", path=str(root))
        # ids are file stems, with sub-folders kept so that they stay unique
        self._ids = sorted(txts)
        orphans = sorted(set(anns) - set(txts))
        if orphans:
            raise DataError(
                f"{len(orphans)} .ann file(s) without a .txt, e.g. {orphans[0]}.ann",
                path=str(root),
            )
        missing = sorted(set(txts) - set(anns)) if annotations else []
        if missing:
            # training and evaluation data: most often an annotator's forgotten export, which
            # would train (or score) as a note without any entity
            names = ", ".join(f"{m}.txt" for m in missing[:3]) + (", ..." if missing[3:] else "")
            warnings.warn(
                f"{root}: {len(missing)} .txt file(s) have no .ann (treated as documents "
                f"without entities): {names}",
                stacklevel=2,
            )

    def __len__(self) -> int:
        return len(self._ids)

    def describe(self, index: int) -> str:
        return str(self._root / f"{self._ids[index]}.txt")

    def _make_fingerprint(self) -> dict[str, Any]:
        return files_fingerprint(self._root, self._files)

    def _load(self, index: int) -> Doc:
        doc_id = self._ids[index]
        return fill_attributes(
            read_standoff_doc(self._root / f"{doc_id}.txt", doc_id, self._annotations),
            self._defaults,
        )


@readers.register("standoff")
def read_standoff(
    path: str | os.PathLike[str],
    default_attributes: dict[str, Any] | None = None,
    annotations: bool = True,
) -> Stream:
    """A stream of the documents of a brat folder; ids are file stems; entities in "gold".

    Files are parsed lazily, once per run (the stream keeps them). Sub-folders are read too;
    hidden files and folders (``.ipynb_checkpoints/``, ``._name.txt``) are not.

    ``default_attributes`` gives each entity the attributes it lacks: brat writes a binary
    attribute (``A1<TAB>Negation T1``) only on the entities where it holds, so without
    ``{"Negation": False}`` a span classifier never sees the other value. In a recipe:
    ``data = { factory = "standoff", path = "data/train", default_attributes = { Negation = false } }``.

    A ``.txt`` without its ``.ann`` is read as a document without entities, with a warning
    (once, naming the first few): in training data it is most often a missing export.
    ``annotations=False`` reads the texts alone (no ``.ann`` is opened, so none can stop the
    reading, and none is missed): what ``pureml predict`` does, its pipeline predicting from
    the text.
    """
    return Stream(StandoffSource(path, default_attributes, annotations))


def _fmt_attr_value(value: Any) -> str:
    return str(value)


# Every character ``str.splitlines`` ends a line at: brat reads an .ann line by line with
# Python's codecs, which split there (as do most readers of a text file), not at "\n" alone.
LINE_BREAKS = "\n\r\x0b\x0c\x1c\x1d\x1e\x85\u2028\u2029"


def _unwritable(value: str, *, spaces: bool = False, tabs: bool = False) -> str | None:
    """Why ``value`` cannot be one brat field (``None`` when it can): fields are separated by
    spaces (unless ``spaces``) and tabs (unless ``tabs``: a note runs to the end of its line),
    and an annotation is one line."""
    if any(c in LINE_BREAKS for c in value):
        return "contains a line break"
    if not spaces and (not value or any(c.isspace() for c in value)):
        return "is empty or contains whitespace"
    if not tabs and "\t" in value:
        return "contains a tab"
    return None


def _check_writable(value: str, what: str, doc_id: str, ident: str, root: Path, **kw: bool) -> str:
    reason = _unwritable(value, **kw)
    if reason is not None:
        raise DataError(
            f"document {doc_id!r}, span {ident}: {what} {value!r} {reason}; "
            "brat standoff cannot store it",
            path=str(root),
        )
    return value


def _line_fragments(text: str, fragments: list[list[int]]) -> list[tuple[int, int]]:
    """``fragments`` split where the text has line breaks, as brat splits a mention drawn across
    lines: an .ann annotation is one line, and its text field must equal the fragments' text
    joined by spaces. The whitespace beside each break is left out (brat trims it too); the
    span's own first start and last end are kept, so that it reads back with its offsets.

    >>> _line_fragments("a cardiologie\\r\\nECG b", [[2, 18]])
    [(2, 13), (15, 18)]
    """
    out: list[tuple[int, int]] = []
    for start, end in fragments:
        pos = start
        for k in range(start, end + 1):
            if k < end and text[k] not in LINE_BREAKS:
                continue
            a, b = pos, k
            if a > start:  # after a break: no leading whitespace
                while a < b and text[a].isspace():
                    a += 1
            if b < end:  # before a break: no trailing whitespace
                while b > a and text[b - 1].isspace():
                    b -= 1
            if a < b or (a == start and b == end):  # an empty span stays one empty fragment
                out.append((a, b))
            pos = k + 1
    return out


def write_standoff(
    docs: Iterable[Doc],
    path: str | os.PathLike[str],
    *,
    span_group: str = "gold",
    overwrite: bool = False,
) -> int:
    """Write ``id.txt`` + ``id.ann`` per document (spans of ``span_group``); returns the count.

    Span ids are kept when present and unique; the relation, event and equivalence lines the
    reader kept are written back with the ``gold`` group under its own ids (they refer to those
    entities), never with another group's spans; attributes are written back as the reader reads
    them (``norm`` as N lines, ``note`` as ``#`` lines, ``fragments`` as discontinuous offsets,
    other values as A lines; ``False``/``None`` attributes are left out). A span across a line
    break is written as brat writes one, in fragments split at the break (the text field of an
    annotation is on its line: ``T1<TAB>Exam 25 36;38 49<TAB>cardiologie ECG du foie`` for a
    span 25-49 over ``"cardiologie\\r\\nECG du foie"``); it reads back with its start and end,
    and those fragments as ``attributes["fragments"]``. What brat cannot store (a label or
    attribute value with whitespace, a note with a line break, an id outside ``path``, two
    documents with one id) raises :class:`DataError` instead of writing a file that reads back
    differently.

    ``path`` may already hold documents: those written again are replaced. Any other ``.txt``
    or ``.ann`` there would be read back with the new ones, so a folder holding such files is
    refused (a :class:`DataError` naming it and one of them) unless ``overwrite=True``, which
    removes them; other files (brat's ``annotation.conf``, notes) are never touched. The files
    are written to a hidden temporary folder inside ``path`` and moved in once every document
    is written: a refusal or an error on any document leaves ``path`` as it was.
    """
    root = Path(path)
    if root.exists() and not root.is_dir():
        raise DataError("not a directory", path=str(root))
    created = not root.exists()
    root.mkdir(parents=True, exist_ok=True)
    # what a write killed before its cleanup left (SIGKILL, power loss); the reader skips it
    for leftover in root.glob(f"{_STAGE}*"):
        shutil.rmtree(leftover, ignore_errors=True)
    before = folder_files(root, (".txt", ".ann"))
    stage = root / f"{_STAGE}{os.getpid()}"
    stage.mkdir()
    try:
        written = _write_docs(docs, stage, root, span_group)
        stale = [name for name in before if name[:-4] not in written]
        if stale and not overwrite:
            raise DataError(
                f"holds {len(stale)} .txt/.ann file(s) of documents not written now, e.g. "
                f"{stale[0]}, which would be read back with them: pass overwrite=True to "
                "remove them (other files stay), or write into another folder",
                path=str(root),
            )
        _move_in(stage, root)
        for name in stale:
            _remove(root, name)
    except BaseException:
        if created:  # nothing of it existed: leave nothing
            shutil.rmtree(root, ignore_errors=True)
        raise
    finally:
        shutil.rmtree(stage, ignore_errors=True)
    return len(written)


# the temporary folder's name: hidden, so a reader of the folder never sees half a write
_STAGE = ".tmp-write_standoff-"


def _write_docs(docs: Iterable[Doc], stage: Path, root: Path, span_group: str) -> set[str]:
    """Each document's files under ``stage``; the file stems written (errors name ``root``)."""
    written: set[str] = set()
    for count, doc in enumerate(docs):
        name = _file_stem(doc.id, count, root)
        if name in written:  # its files would replace the earlier document's
            raise DataError(f"document #{count}: duplicate id {doc.id!r}", path=str(root))
        written.add(name)
        lines = _ann_lines(doc, span_group, root)
        txt = stage / f"{name}.txt"
        try:
            txt.parent.mkdir(parents=True, exist_ok=True)
            txt.write_text(doc.text, encoding="utf-8", newline="")
            txt.with_suffix(".ann").write_text(
                "".join(line + "\n" for line in lines), encoding="utf-8", newline=""
            )
        except OSError as e:  # a name too long for the file system, say
            raise DataError(
                f"document id {doc.id!r}: cannot write its files ({e.strerror})", path=str(root)
            ) from None
    return written


def _ann_lines(doc: Doc, span_group: str, root: Path) -> list[str]:
    """The ``.ann`` lines of one document (see :func:`write_standoff`)."""
    lines: list[str] = []
    spans = doc.spans.get(span_group, [])
    used = {s.id for s in spans if s.id}
    unique = len(used) == len(spans) and all(s.id and s.id[:1] == "T" for s in spans)
    n_attr = n_norm = n_note = 0
    for i, span in enumerate(spans, start=1):
        ident = span.id if unique else f"T{i}"
        where = (doc.id, ident, root)
        _check_writable(span.label, "label", *where)
        frags = _line_fragments(
            doc.text, span.attributes.get("fragments") or [[span.start, span.end]]
        )
        if not frags:
            raise DataError(
                f"document {doc.id!r}, span {ident}: its text {doc.text[span.start : span.end]!r}"
                " is line breaks and whitespace only; brat standoff cannot store it",
                path=str(root),
            )
        offsets = ";".join(f"{s} {e}" for s, e in frags)
        surface = " ".join(doc.text[s:e] for s, e in frags)
        lines.append(f"{ident}\t{span.label} {offsets}\t{surface}")
        for name, value in span.attributes.items():
            if name in ("fragments", "norm_name") or value is None or value is False:
                continue
            if name == "norm":
                names = str(span.attributes.get("norm_name", "")).split("|")
                for j, ref in enumerate(str(value).split("|")):
                    n_norm += 1
                    _check_writable(ref, "norm", *where)
                    tail = ""
                    if "norm_name" in span.attributes:
                        tail = "\t" + _check_writable(names[j], "norm_name", *where, spaces=True)
                    lines.append(f"N{n_norm}\tReference {ident} {ref}{tail}")
            elif name == "note":
                n_note += 1
                _check_writable(str(value), "note", *where, spaces=True, tabs=True)
                lines.append(f"#{n_note}\tAnnotatorNotes {ident}\t{value}")
            else:
                n_attr += 1
                _check_writable(name, "attribute name", *where)
                tail = ""
                if value is not True:
                    text = _fmt_attr_value(value)
                    tail = " " + _check_writable(text, f"attribute {name!r} value", *where)
                lines.append(f"A{n_attr}\t{name} {ident}{tail}")
    # relations and events refer to the entities read, by id: they stay true only for
    # those entities under their ids (not for predictions written from another group)
    if span_group == "gold" and unique:
        lines.extend(doc.meta.get("standoff_lines", []))
    return lines


def _move_in(stage: Path, root: Path) -> None:
    """Every file under ``stage`` to the same relative path under ``root`` (replacing it)."""
    for folder, _dirs, names in os.walk(stage):
        rel = Path(folder).relative_to(stage)
        for name in names:
            target = root / rel / name
            try:
                target.parent.mkdir(parents=True, exist_ok=True)
                os.replace(Path(folder) / name, target)
            except OSError as e:  # a folder where the file goes, say
                raise DataError(
                    f"cannot write {rel / name} ({e.strerror})", path=str(root)
                ) from None


def _remove(root: Path, name: str) -> None:
    """Remove ``root/name``, then the folders that held nothing else (up to ``root``)."""
    path = root / name
    path.unlink(missing_ok=True)
    for parent in path.parents:
        if parent == root:
            break
        try:
            parent.rmdir()
        except OSError:  # not empty: other files live there
            break


def _file_stem(doc_id: str | None, count: int, root: Path) -> str:
    """The path (relative, ``/``-separated, no suffix) a document's files get from its id, or
    a :class:`DataError` where the id would not read back as itself: ids become paths
    ("sub/name" makes a sub-folder), never outside the folder, never hidden (the reader skips
    those), and two ids never name one file ("a//b" and "a/b")."""
    if not doc_id:
        raise DataError(f"document #{count} has no id: cannot name its files", path=str(root))
    parts = doc_id.split("/")
    if Path(doc_id).is_absolute() or ".." in parts:
        raise DataError(f"document id {doc_id!r} would write outside the folder", path=str(root))
    if "\0" in doc_id or any(p in ("", ".") for p in parts):
        raise DataError(
            f"document id {doc_id!r} is not a file path that reads back as this id",
            path=str(root),
        )
    if any(p.startswith(".") for p in parts):
        raise DataError(
            f"document id {doc_id!r} names a hidden file, which the reader skips",
            path=str(root),
        )
    return doc_id
