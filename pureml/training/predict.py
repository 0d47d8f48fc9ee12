"""``pureml predict MODEL DATA OUTPUT``: annotate documents with a saved pipeline.

The usual next step after training on a clinical corpus is pre-annotating the rest of it for
review in brat, or exporting the entities for analysis. The input is read as ``pureml evaluate``
reads it (a brat folder, plain ``.txt`` files without ``.ann``, or JSON lines), but without its
annotations where the pipeline predicts from the text alone: the output holds the pipeline's
spans only, and a malformed ``.ann`` of the input cannot stop a run that would not use it.

>>> n = predict("artifacts/model-last", "notes/", "notes-predicted/")   # doctest: +SKIP
"""

from __future__ import annotations

import inspect
import os
import time
from pathlib import Path
from typing import Any

from .. import registry
from ..nlp.doc import Doc, Span
from ..nlp.pipeline import INFERENCE_BATCH_SIZE, Pipeline, check_inference_batch_size
from ..nlp.span_pooler import span_groups
from ..stream.errors import DataError
from ..stream.jsonl import write_jsonl
from ..stream.standoff import write_standoff
from .checkpoint import write_atomic_dir
from .evaluate import check_reader_options, reader_for

#: the span group written to the output: every predicted span, whichever head wrote it
OUTPUT_GROUP = "predicted"


class PredictError(ValueError):
    """An output path that cannot be written without harming something (the input, a folder)."""


def output_groups(nlp: Pipeline) -> tuple[list[str], bool]:
    """The span groups holding the predictions, and whether the input's spans are kept.

    A pipeline with an NER head predicts into its ``span_setter`` group(s) from the text alone:
    the input's spans are dropped. A pipeline without one (a span classifier over given spans)
    classifies the input's spans: they are kept, and written with the predicted attributes.
    """
    comps = [nlp.get_pipe(name) for name in nlp.pipe_names]
    setters = [c.span_setter for c in comps if isinstance(getattr(c, "span_setter", None), str)]
    if setters:
        return list(dict.fromkeys(setters)), False
    getters = [g for c in comps for g in span_groups(getattr(c, "span_getter", None))]
    return list(dict.fromkeys(getters)) or ["gold"], True


def is_jsonl(output: Path) -> bool:
    """Whether ``output`` is written as JSON lines (else as a brat folder)."""
    return output.suffix.lower() == ".jsonl"


def _overlaps(a: Path, b: Path) -> bool:
    a, b = a.resolve(), b.resolve()
    return a == b or a.is_relative_to(b) or b.is_relative_to(a)


def _check_paths(model: Path | None, data: Path, output: Path, overwrite: bool) -> None:
    for what, path in (("input", data), ("model", model)):
        if path is not None and _overlaps(output, path):
            raise PredictError(
                f"{output}: the output would overlap the {what} {path}: choose another output path"
            )
    if output.suffix.lower() == ".json":
        raise PredictError(f"{output}: predictions are written as .jsonl (JSON lines) or a folder")
    if not output.exists():
        return
    if not overwrite:
        raise PredictError(f"{output}: already exists: pass --overwrite (overwrite=True)")
    if output.is_dir() == is_jsonl(output):
        what = "a folder" if output.is_dir() else "a file"
        raise PredictError(f"{output}: is {what}; cannot replace it with predictions")
    if output.is_dir():
        # --overwrite replaces earlier predictions, never a folder that holds anything else
        # (a run folder with its checkpoints, a corpus's notes)
        other = next(
            (p for p in output.rglob("*") if p.is_file() and p.suffix not in (".txt", ".ann")),
            None,
        )
        if other is not None:
            raise PredictError(
                f"{output}: holds {other.relative_to(output)}, not only .txt and .ann files: "
                "not earlier predictions; choose another output path"
            )


def check_batch_size(batch_size: int | str) -> Any:
    """The parsed budget of ``predict``'s ``batch_size``: words or documents only (spans are
    counted before the input's are dropped: "16 spans" put a whole corpus in one batch)."""
    size = check_inference_batch_size(batch_size)
    if size.stat not in ("words", "docs"):
        raise ValueError(
            f"{batch_size!r}: predictions are batched by words or documents (the input's "
            "spans are dropped first)"
        )
    return size


def predict(
    model: str | os.PathLike | Pipeline,
    data: str | os.PathLike,
    output: str | os.PathLike,
    *,
    reader: str | None = None,
    reader_options: dict[str, Any] | None = None,
    batch_size: int | str = INFERENCE_BATCH_SIZE,
    overwrite: bool = False,
) -> dict[str, Any]:
    """Annotate the documents at ``data`` with the pipeline at ``model``; write them to ``output``.

    ``output`` ending in ``.jsonl`` is written as JSON lines, anything else as a brat folder
    (``id.txt`` + ``id.ann``). It is written whole or not at all: into a temporary sibling,
    renamed into place at the end (an interrupted run leaves the previous output, if any). An
    existing ``output`` is replaced only with ``overwrite=True`` (a folder only if it holds
    nothing but ``.txt`` and ``.ann`` files); one that overlaps ``data`` or ``model`` is refused.
    ``reader_options`` go to the reader (as :func:`pureml.training.evaluate.evaluate`'s); a
    pipeline with an NER head has the input read with ``annotations=False`` where the reader
    takes it (standoff, jsonl) and the options do not say otherwise: its spans are not used.
    ``batch_size`` counts words or documents: the input's spans are dropped before batching.
    Returns ``{"docs", "spans", "words_per_s", "classified_input"}``.
    """
    from ..nlp import load
    from .build import register_defaults

    register_defaults()
    data, output = Path(data), Path(output)
    if not data.exists():
        raise FileNotFoundError(f"no data at {data}")
    _check_paths(None if isinstance(model, Pipeline) else Path(model), data, output, overwrite)
    check_batch_size(batch_size)
    nlp = model if isinstance(model, Pipeline) else load(model)
    groups, keep_input = output_groups(nlp)
    name = reader_for(data, reader)
    options = check_reader_options(name, reader_options)
    read = registry.readers.get(name)
    if not keep_input and "annotations" in inspect.signature(read).parameters:
        # the spans would be dropped below: not reading them spares a run stopped by an .ann
        # it does not need, and the standoff reader's warning about .txt files without one
        options.setdefault("annotations", False)
    docs = read(str(data), **options)
    if not keep_input:  # predict from the text alone; nothing of the input leaks through
        docs = docs.map(lambda d: Doc(d.text, id=d.id, meta=d.meta))
    totals = {"docs": 0, "spans": 0, "words": 0}
    start = time.perf_counter()

    def annotated():
        for doc in nlp.pipe(docs, batch_size=batch_size):
            spans: list[Span] = [s for g in groups for s in doc.spans.get(g, [])]
            spans.sort(key=lambda s: (s.start, s.end, s.label))
            totals["docs"] += 1
            totals["spans"] += len(spans)
            totals["words"] += len(doc.words)
            meta = {k: v for k, v in doc.meta.items() if k != "standoff_lines"}
            yield Doc(doc.text, id=doc.id, spans={OUTPUT_GROUP: spans}, meta=meta)

    # what an earlier predict killed before its cleanup left (SIGKILL, power loss); a
    # folder's temporaries write_atomic_dir removes itself
    for stale in output.parent.glob(f".{output.name}.tmp-*"):
        stale.unlink(missing_ok=True)

    def write_folder(tmp: Path) -> None:
        try:
            write_standoff(annotated(), tmp, span_group=OUTPUT_GROUP)
        except DataError as e:
            if e.path != str(tmp):  # the input's (read as the output is written): as it is
                raise
            # the writer names the temporary folder it was writing: name the output instead
            raise DataError(e.message, path=str(output), line=e.line) from None

    if is_jsonl(output):
        tmp = output.with_name(f".{output.name}.tmp-{os.getpid()}")
        try:
            write_jsonl(annotated(), tmp, span_group=OUTPUT_GROUP)
            os.replace(tmp, output)
        finally:
            tmp.unlink(missing_ok=True)
    else:
        write_atomic_dir(output, write_folder, manifest=False)
    elapsed = time.perf_counter() - start
    return {
        "docs": totals["docs"],
        "spans": totals["spans"],
        "words_per_s": totals["words"] / elapsed if elapsed > 0 else 0.0,
        "classified_input": keep_input,
    }
