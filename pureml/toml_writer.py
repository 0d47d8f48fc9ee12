"""A small TOML writer: ``tomllib`` only reads, and pureml writes recipes and model configs.

One writer for both, so a resolved recipe (``OUTPUT_DIR/config.toml``) and a saved pipeline's
``config.toml`` quote keys and format values the same way, and both read back equal.

>>> print(dump_toml({"components": {"ner": {"factory": "ner_crf", "labels": ["a b"]}}}), end="")
[components.ner]
factory = "ner_crf"
labels = ["a b"]
"""

from __future__ import annotations

import json
import math
from typing import Any

_BARE_KEY_CHARS = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789_-")


def quote_string(text: str) -> str:
    """A TOML basic string: JSON's escapes are TOML's, but TOML also forbids a raw DEL."""
    return json.dumps(text, ensure_ascii=False).replace("\x7f", "\\u007f")


def format_key(key: Any) -> str:
    """A dotted-path component, quoted as TOML would if it is not a bare key.

    Bare keys are ASCII letters, digits, ``_`` and ``-`` only (``str.isalnum`` would let
    ``entités`` through, which TOML cannot read back)::

        >>> format_key("ner"), format_key("entités"), format_key("a b")
        ('ner', '"entités"', '"a b"')
    """
    key = str(key)
    if key and all(c in _BARE_KEY_CHARS for c in key):
        return key
    return quote_string(key)


def join_path(prefix: str, key: Any) -> str:
    return f"{prefix}.{format_key(key)}" if prefix else format_key(key)


def toml_scalar(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        if math.isnan(value):
            return "nan"
        if math.isinf(value):
            return "inf" if value > 0 else "-inf"
        return repr(value)
    if isinstance(value, str):
        return quote_string(value)
    if isinstance(value, list | tuple):
        return "[" + ", ".join(toml_scalar(v) for v in value) + "]"
    if isinstance(value, dict):
        inner = ", ".join(f"{join_path('', k)} = {toml_scalar(v)}" for k, v in value.items())
        return "{ " + inner + " }" if inner else "{}"
    raise TypeError(f"cannot write {type(value).__name__} to TOML: {value!r}")


def dump_toml(data: dict[str, Any]) -> str:
    """Write a dict of tables as TOML (what ``tomllib.loads`` reads back equal).

    >>> print(dump_toml({"train": {"max_steps": 5, "logger": ["json"]}}), end="")
    [train]
    max_steps = 5
    logger = ["json"]
    """
    lines: list[str] = []

    def table(node: dict[str, Any], prefix: str) -> None:
        scalars = {k: v for k, v in node.items() if v is not None and not isinstance(v, dict)}
        subtables = {k: v for k, v in node.items() if isinstance(v, dict)}
        if prefix and (scalars or not subtables):
            if lines:
                lines.append("")
            lines.append(f"[{prefix}]")
        for k, v in scalars.items():
            lines.append(f"{join_path('', k)} = {toml_scalar(v)}")
        for k, v in subtables.items():
            table(v, join_path(prefix, k))

    top_scalars = {k: v for k, v in data.items() if not isinstance(v, dict)}
    for k, v in top_scalars.items():
        if v is not None:
            lines.append(f"{join_path('', k)} = {toml_scalar(v)}")
    table({k: v for k, v in data.items() if isinstance(v, dict)}, "")
    return "\n".join(lines) + "\n"
