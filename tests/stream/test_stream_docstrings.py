"""The examples in the docstrings of pureml.stream run and give what they show."""

from __future__ import annotations

import doctest
import importlib

import pytest

MODULES = [
    "batching",
    "engine",
    "errors",
    "jsonl",
    "prefetch",
    "shuffle",
    "sources",
    "split",
    "stages",
    "standoff",
    "stream",
    "training",
    "transforms",
]


@pytest.mark.parametrize("name", MODULES)
def test_docstring_examples(name):
    module = importlib.import_module(f"pureml.stream.{name}")
    result = doctest.testmod(module, optionflags=doctest.ELLIPSIS)
    assert result.failed == 0
