"""``pureml evaluate MODEL DATA``: score a saved pipeline on any dataset.

>>> scores = evaluate("artifacts/model-last", "data/dev")      # doctest: +SKIP
>>> scores["ner"]["micro"]["f1"]                               # doctest: +SKIP
0.93
"""

from __future__ import annotations

import inspect
import os
from pathlib import Path
from typing import Any

from .. import registry
from .scorer import Scorer, warn_unscorable


def reader_for(data: Path, reader: str | None) -> str:
    """The reader for ``data``: ``reader`` if given, else standoff for a folder of ``.txt``
    files, jsonl for a ``.jsonl`` file or a folder of them."""
    if reader is not None:
        return reader
    if data.is_dir():
        from ..stream.sources import folder_files

        # both readers read sub-folders: so does the choice between them
        jsonl, txt = folder_files(data, ".jsonl"), folder_files(data, ".txt")
        if jsonl and txt:
            from ..stream.errors import DataError

            raise DataError(
                f"holds both .txt ({txt[0]}) and .jsonl ({jsonl[0]}) files: name the reader "
                "(--reader standoff or --reader jsonl)",
                path=str(data),
            )
        return "jsonl" if jsonl else "standoff"
    return "jsonl"


def evaluate(
    model: str | os.PathLike,
    data: str | os.PathLike,
    *,
    reader: str | None = None,
    default_attributes: dict[str, Any] | None = None,
    reader_options: dict[str, Any] | None = None,
    **scorer_kwargs: Any,
) -> dict[str, Any]:
    """Scores of the pipeline saved at ``model`` on the documents at ``data``.

    ``data`` is a brat folder or a JSONL file (or name a registered ``reader``);
    ``default_attributes`` goes to the standoff or jsonl reader (``{"Negation": False}``), and
    ``reader_options`` to any reader (``{"label": "Disease"}``: the keys of its recipe table).
    Warns when an NER component predicts none of the gold labels (every score would be 0: the
    data read otherwise than in training). Returns
    ``{"ner": {"micro": {"p", "r", "f1"}, "per_label": {...}, "token": {...}}, "speed": {...}}``.
    """
    from ..nlp import load
    from .build import register_defaults

    register_defaults()
    model, data = Path(model), Path(data)
    if not model.exists():
        raise FileNotFoundError(f"no model at {model}")
    if not data.exists():
        raise FileNotFoundError(f"no data at {data}")
    name = reader_for(data, reader)
    kwargs: dict[str, Any] = {}
    if default_attributes:
        if name not in ("standoff", "jsonl"):
            raise ValueError(
                f"default attributes: the {name} reader takes none (standoff and jsonl do)"
            )
        kwargs["default_attributes"] = default_attributes
    read = registry.readers.get(name)
    kwargs.update(check_reader_options(name, reader_options))
    nlp = load(model)
    docs = list(read(str(data), **kwargs))
    warn_unscorable(nlp, docs, stacklevel=3)
    return Scorer(**scorer_kwargs)(nlp, docs)


def check_reader_options(name: str, options: dict[str, Any] | None) -> dict[str, Any]:
    """``options`` for the registered reader ``name``, refused (``ValueError`` starting with
    ``reader option``) where it takes no such keyword."""
    params = inspect.signature(registry.readers.get(name)).parameters
    accepted = [p for p in params if p not in ("path", "default_attributes")]
    for key in options or {}:
        if key not in accepted:
            raise ValueError(
                f"reader option {key!r}: the {name} reader takes "
                + (", ".join(accepted) if accepted else "no option")
                + (" (default_attributes has its own flag)" if key == "default_attributes" else "")
            )
    from .config import RecipeError
    from .recipe import check_factory_table

    try:  # the types a recipe's reader table is held to
        check_factory_table({"factory": name, "path": ".", **(options or {})}, registry.readers, "")
    except RecipeError as e:
        raise ValueError(f"reader option {e}") from None
    return dict(options or {})


def format_scores(scores: dict[str, Any]) -> str:
    """A plain-text table of scores (what ``pureml evaluate`` prints without ``--json``)."""
    lines = []
    for task, value in scores.items():
        if task == "speed":
            continue
        if "micro" in value:  # NER
            lines.append(f"{task}")
            lines.append(f"  {'label':<24} {'p':>7} {'r':>7} {'f1':>7}")
            rows = [("micro", value["micro"]), *value.get("per_label", {}).items()]
            for label, s in rows:
                lines.append(f"  {label:<24} {s['p']:7.4f} {s['r']:7.4f} {s['f1']:7.4f}")
            if "token" in value:
                s = value["token"]["micro"]
                lines.append(f"  {'token micro':<24} {s['p']:7.4f} {s['r']:7.4f} {s['f1']:7.4f}")
        else:  # span attributes: {attribute: scores}, or {group: {attribute: scores}}
            per_attribute = []
            for name, a in value.items():
                if "micro" in a:
                    per_attribute.append((name, a))
                else:
                    per_attribute.extend((f"{name}.{attr}", b) for attr, b in a.items())
            for attr, a in per_attribute:
                lines.append(f"{task}: {attr}")
                lines.append(f"  {'value':<24} {'p':>7} {'r':>7} {'f1':>7}")
                for label, s in [("micro", a["micro"]), *a.get("per_value", {}).items()]:
                    lines.append(f"  {label:<24} {s['p']:7.4f} {s['r']:7.4f} {s['f1']:7.4f}")
    if "speed" in scores:
        sp = scores["speed"]
        lines.append(f"speed: {sp['words_per_s']:.0f} words/s, {sp['docs_per_s']:.1f} docs/s")
    return "\n".join(lines)
