"""``pureml diff RUN_A RUN_B``: the first step at which two runs' step records differ, and in what.

Reads only each run's ``steps.jsonl`` (see :mod:`pureml.training.records`). Steps are compared
in order on: the batch (fingerprint and the document ids of each stream), the losses, the
gradient norm, the learning rates, the spike/skip flags and, where both runs recorded one, the
parameters' fingerprint. When two batches have the same document ids but different fingerprints
(a document's text or annotations changed), the documents with those ids are read back through
each run's recipe (``config.toml``) and compared, to name the ones that differ.

>>> a = [{"step": 1, "loss": "0x1p+0", "batch": "aa", "streams": {"s": {"doc_ids": ["d1"]}}}]
>>> b = [{"step": 1, "loss": "0x1p+1", "batch": "aa", "streams": {"s": {"doc_ids": ["d1"]}}}]
>>> first_difference(a, b).fields
('loss',)
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import attrs

#: record keys compared as exact values, in the order they are reported
SCALARS = ("loss", "grad_norm", "spike", "skipped")


@attrs.frozen
class StreamDiff:
    """How one training stream's batch differs at a step."""

    stream: str
    only_a: tuple[str, ...] = ()
    only_b: tuple[str, ...] = ()
    #: ids present in both batches whose documents differ (filled by :func:`changed_documents`)
    changed: tuple[str, ...] | None = None
    same_ids: bool = False


@attrs.frozen
class Difference:
    """The first step whose records differ: which fields and how.

    ``fields`` uses record names: ``batch``, ``loss``, ``losses/<name>``, ``grad_norm``,
    ``lr/<group>``, ``spike``, ``skipped``, ``params``; ``values`` maps each to ``(a, b)``.
    """

    step: int
    fields: tuple[str, ...]
    values: Mapping[str, tuple[Any, Any]] = attrs.field(factory=dict)
    streams: tuple[StreamDiff, ...] = ()


@attrs.frozen
class DiffReport:
    """The result of :func:`diff_runs`: the first difference (or None) and the steps compared."""

    difference: Difference | None
    compared: int
    steps_a: int
    steps_b: int
    #: the last step with a params fingerprint in both runs before the difference, if any
    last_equal_params: int | None = None

    @property
    def identical(self) -> bool:
        return self.difference is None and self.steps_a == self.steps_b


def _ids(record: Mapping[str, Any]) -> dict[str, list[str]]:
    return {name: list(s.get("doc_ids", [])) for name, s in record.get("streams", {}).items()}


def _compare(a: Mapping[str, Any], b: Mapping[str, Any]) -> tuple[list[str], dict]:
    fields: list[str] = []
    values: dict[str, tuple[Any, Any]] = {}

    def check(name: str, va: Any, vb: Any) -> None:
        if va != vb:
            fields.append(name)
            values[name] = (va, vb)

    # each record holds rank 0's share of its batch: other layouts, other shares
    check("world_size", a.get("world_size", 1), b.get("world_size", 1))
    check("batch", a.get("batch"), b.get("batch"))
    if "batch" not in fields and _ids(a) != _ids(b):  # fingerprints include the ids; be safe
        check("batch", _ids(a), _ids(b))
    check("loss", a.get("loss"), b.get("loss"))
    la, lb = a.get("losses", {}), b.get("losses", {})
    for k in sorted(set(la) | set(lb)):
        check(f"losses/{k}", la.get(k), lb.get(k))
    check("grad_norm", a.get("grad_norm"), b.get("grad_norm"))
    ra, rb = a.get("lr", {}), b.get("lr", {})
    for k in sorted(set(ra) | set(rb)):
        check(f"lr/{k}", ra.get(k), rb.get(k))
    check("spike", a.get("spike"), b.get("spike"))
    check("skipped", a.get("skipped"), b.get("skipped"))
    if "params" in a and "params" in b:
        check("params", a["params"], b["params"])
    return fields, values


def _stream_diffs(a: Mapping[str, Any], b: Mapping[str, Any]) -> tuple[StreamDiff, ...]:
    ia, ib = _ids(a), _ids(b)
    out = []
    for name in sorted(set(ia) | set(ib)):
        xa, xb = ia.get(name, []), ib.get(name, [])
        only_a = tuple(d for d in xa if d not in set(xb))
        only_b = tuple(d for d in xb if d not in set(xa))
        out.append(StreamDiff(name, only_a, only_b, same_ids=xa == xb))
    return tuple(out)


def first_difference(
    records_a: Iterable[Mapping[str, Any]], records_b: Iterable[Mapping[str, Any]]
) -> Difference | None:
    """The first step (in ``step`` order, over the steps both have) whose records differ."""
    by_step_b = {r["step"]: r for r in records_b}
    for a in sorted(records_a, key=lambda r: r["step"]):
        b = by_step_b.get(a["step"])
        if b is None:
            continue
        fields, values = _compare(a, b)
        if fields:
            streams = _stream_diffs(a, b) if "batch" in fields else ()
            return Difference(a["step"], tuple(fields), values, streams)
    return None


def diff_runs(run_a: str | Path, run_b: str | Path, *, documents: bool = True) -> DiffReport:
    """Compare the step records of two run folders.

    With ``documents=True``, batches with equal ids but different fingerprints are explained by
    reading both runs' documents (:func:`changed_documents`); failures to read them are ignored
    (the report then says only that the tensors differ).
    """
    from ..training.records import read_records

    ra, rb = read_records(Path(run_a)), read_records(Path(run_b))
    diff = first_difference(ra, rb)
    steps_b = {r["step"] for r in rb}
    limit = diff.step if diff is not None else None
    compared = sum(1 for r in ra if r["step"] in steps_b and (limit is None or r["step"] <= limit))
    params_b = {r["step"]: r.get("params") for r in rb if "params" in r}
    equal_params = [
        r["step"]
        for r in ra
        if "params" in r
        and params_b.get(r["step"]) == r["params"]
        and (limit is None or r["step"] < limit)
    ]
    if diff is not None and documents and diff.streams:
        explained = []
        for sd in diff.streams:
            if sd.same_ids:
                ids = next((r for r in ra if r["step"] == diff.step), {"streams": {}})["streams"][
                    sd.stream
                ]["doc_ids"]
                try:
                    changed = changed_documents(run_a, run_b, sd.stream, ids)
                except Exception:  # explanation only: the diff itself stands without it
                    changed = None
                sd = attrs.evolve(sd, changed=changed)
            explained.append(sd)
        diff = attrs.evolve(diff, streams=tuple(explained))
    return DiffReport(
        diff,
        compared,
        len(ra),
        len(rb),
        last_equal_params=max(equal_params) if equal_params else None,
    )


def _docs_by_id(run_dir: Path, stream: str, ids: Sequence[str]) -> dict[str, Any]:
    """The documents with ``ids`` of training stream ``stream``, read through the run's recipe."""
    from ..training.build import build_reader, register_defaults
    from ..training.recipe import load_recipe

    register_defaults()
    recipe, _ = load_recipe(Path(run_dir) / "config.toml")
    docs = build_reader(recipe.train_data[stream].data, f"train_data.{stream}.data")
    wanted = set(ids)
    found = {}
    for doc in docs:
        if doc.id in wanted:
            found[doc.id] = doc
    return found


def _doc_key(doc: Any) -> Any:
    from ..stream.jsonl import doc_to_json

    return doc_to_json(doc)


def changed_documents(
    run_a: str | Path, run_b: str | Path, stream: str, ids: Sequence[str]
) -> tuple[str, ...]:
    """Which of ``ids`` have different documents (text, gold spans, meta) in the two runs."""
    da = _docs_by_id(Path(run_a), stream, ids)
    db = _docs_by_id(Path(run_b), stream, ids)
    return tuple(
        i for i in ids if (i in da) != (i in db) or (i in da and _doc_key(da[i]) != _doc_key(db[i]))
    )


def _short(value: Any) -> str:
    from ..training.records import from_exact

    if isinstance(value, str) and value.startswith(("0x", "-0x")):
        return f"{from_exact(value):.9g} ({value})"
    return str(value)


def format_report(report: DiffReport, name_a: str = "A", name_b: str = "B") -> str:
    """The text ``pureml diff`` prints."""
    lines = []
    d = report.difference
    if d is None:
        if report.steps_a == report.steps_b:
            lines.append(f"identical: {report.compared} steps, every record equal")
        else:
            lines.append(
                f"the {report.compared} steps both runs recorded are equal; {name_a} has "
                f"{report.steps_a} steps, {name_b} has {report.steps_b}"
            )
        return "\n".join(lines)
    lines.append(f"first difference at step {d.step}: {', '.join(d.fields)}")
    if "world_size" in d.fields:
        va, vb = d.values["world_size"]
        lines.append(
            f"  trained by {va} vs {vb} processes: each record holds rank 0's share of the "
            "batch, so the batches and what follows from them differ between the records even "
            "when the global batches are the same"
        )
    for sd in d.streams:
        if sd.same_ids:
            if sd.changed:
                lines.append(
                    f"  batch[{sd.stream}]: same document ids; documents that differ: "
                    f"{', '.join(sd.changed)}"
                )
            elif sd.changed is not None:
                lines.append(
                    f"  batch[{sd.stream}]: same document ids and documents; tensors differ"
                )
            else:
                lines.append(f"  batch[{sd.stream}]: same document ids; tensors differ")
        else:
            lines.append(
                f"  batch[{sd.stream}]: only in {name_a}: {', '.join(sd.only_a) or '-'}; "
                f"only in {name_b}: {', '.join(sd.only_b) or '-'}"
            )
    for f in d.fields:
        if f == "world_size":
            continue
        if f == "batch":
            va, vb = d.values[f]
            if isinstance(va, str):
                lines.append(f"  batch fingerprint: {va} vs {vb}")
            continue
        va, vb = d.values[f]
        lines.append(f"  {f}: {_short(va)} vs {_short(vb)}")
    if report.last_equal_params is not None:
        lines.append(f"  parameters last recorded equal at step {report.last_equal_params}")
    return "\n".join(lines)


__all__ = [
    "DiffReport",
    "Difference",
    "StreamDiff",
    "changed_documents",
    "diff_runs",
    "first_difference",
    "format_report",
]
