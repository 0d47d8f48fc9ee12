"""``pureml predict MODEL DATA OUTPUT``: annotate documents with a saved pipeline.

The usual next step after training on a clinical corpus is pre-annotating the rest of it for
review in brat, or exporting the entities for analysis. The input is read as ``pureml evaluate``
reads it (a brat folder, plain ``.txt`` files without ``.ann``, or JSON lines); its own
annotations are dropped before prediction, so the output holds the pipeline's spans only.

>>> n = predict("artifacts/model-last", "notes/", "notes-predicted/")   # doctest: +SKIP
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any

from .. import registry
from ..nlp.doc import Doc, Span
from ..nlp.pipeline import INFERENCE_BATCH_SIZE, Pipeline
from ..stream.jsonl import write_jsonl
from ..stream.standoff import write_standoff
from .checkpoint import write_atomic_dir
from .evaluate import reader_for

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
    getters: list[str] = []
    for comp in comps:
        getter = getattr(comp, "span_getter", None)
        getters += [getter] if isinstance(getter, str) else list(getter or [])
    return list(dict.fromkeys(getters)) or ["gold"], True


def _check_paths(data: Path, output: Path, overwrite: bool) -> None:
    src, out = data.resolve(), output.resolve()
    if out == src or out.is_relative_to(src) or src.is_relative_to(out):
        raise PredictError(
            f"{output}: the output would overlap the input {data}: choose another output path"
        )
    if output.exists() and not overwrite:
        raise PredictError(f"{output}: already exists: pass --overwrite (overwrite=True)")
    if output.exists() and output.is_dir() != (output.suffix != ".jsonl"):
        what = "a folder" if output.is_dir() else "a file"
        raise PredictError(f"{output}: is {what}; cannot replace it with predictions")


def predict(
    model: str | os.PathLike | Pipeline,
    data: str | os.PathLike,
    output: str | os.PathLike,
    *,
    reader: str | None = None,
    batch_size: int | str = INFERENCE_BATCH_SIZE,
    overwrite: bool = False,
) -> dict[str, Any]:
    """Annotate the documents at ``data`` with the pipeline at ``model``; write them to ``output``.

    ``output`` ending in ``.jsonl`` is written as JSON lines, anything else as a brat folder
    (``id.txt`` + ``id.ann``). It is written whole or not at all: into a temporary sibling,
    renamed into place at the end (an interrupted run leaves the previous output, if any). An
    existing ``output`` is replaced only with ``overwrite=True``; one that overlaps ``data`` is
    refused. Returns ``{"docs", "spans", "words_per_s"}``.
    """
    from ..nlp import load
    from .build import register_defaults

    register_defaults()
    data, output = Path(data), Path(output)
    if not data.exists():
        raise FileNotFoundError(f"no data at {data}")
    _check_paths(data, output, overwrite)
    nlp = model if isinstance(model, Pipeline) else load(model)
    groups, keep_input = output_groups(nlp)
    docs = registry.readers.get(reader_for(data, reader))(str(data))
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

    if output.suffix == ".jsonl":
        tmp = output.with_name(f".{output.name}.tmp-{os.getpid()}")
        try:
            write_jsonl(annotated(), tmp, span_group=OUTPUT_GROUP)
            os.replace(tmp, output)
        finally:
            tmp.unlink(missing_ok=True)
    else:
        write_atomic_dir(
            output,
            lambda tmp: write_standoff(annotated(), tmp, span_group=OUTPUT_GROUP),
            manifest=False,
        )
    elapsed = time.perf_counter() - start
    return {
        "docs": totals["docs"],
        "spans": totals["spans"],
        "words_per_s": totals["words"] / elapsed if elapsed > 0 else 0.0,
    }
