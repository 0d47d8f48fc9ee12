"""Default span attribute values, shared by the readers that take ``default_attributes``.

brat writes a binary attribute (``A1<TAB>Negation T1``) only on the entities where it holds, and
JSONL exported from annotation tools often does the same; without a default, a span classifier
never sees the other value.

>>> from pureml.nlp.doc import Doc, Span
>>> doc = Doc("no fever", spans={"gold": [Span(3, 8, "problem")]})
>>> fill_attributes(doc, check_default_attributes({"Negation": False})).spans["gold"][0].attributes
{'Negation': False}
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from ..nlp.doc import Doc


def check_default_attributes(value: object) -> dict[str, Any]:
    """``value`` as a dict of attribute name -> value ({} for None); TypeError otherwise."""
    if value is None:
        return {}
    if not isinstance(value, Mapping) or not all(isinstance(k, str) for k in value):
        raise TypeError(f"default_attributes: expected a table of attribute names, got {value!r}")
    return dict(value)


def fill_attributes(doc: Doc, defaults: Mapping[str, Any]) -> Doc:
    """Give each gold span of ``doc`` the ``defaults`` it lacks (in place); returns ``doc``."""
    if defaults:
        for span in doc.spans.get("gold", []):
            for name, value in defaults.items():
                span.attributes.setdefault(name, value)
    return doc
