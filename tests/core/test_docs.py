"""The examples in the core and optim docstrings run and print what they claim."""

import doctest
import importlib

import pytest

MODULES = [
    "pureml.core.rng",
    "pureml.core.state",
    "pureml.core.step",
    "pureml.optim.base",
    "pureml.optim.adamw",
    "pureml.optim.sgd",
    "pureml.optim.schedules",
    "pureml.optim.groups",
    "pureml.optim.defaults",
]


@pytest.mark.parametrize("name", MODULES)
def test_docstring_examples(name):
    result = doctest.testmod(importlib.import_module(name), optionflags=doctest.ELLIPSIS)
    assert result.failed == 0
