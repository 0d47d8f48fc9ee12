"""Every example in pureml's docstrings runs and prints what it claims (every module, so an
example in a new module is checked without being listed)."""

from __future__ import annotations

import doctest
import importlib
import pkgutil
import textwrap

import pytest

import pureml

MODULES = sorted(
    m.name
    for m in pkgutil.walk_packages(pureml.__path__, "pureml.")
    if not m.name.endswith("__main__")
)


def test_every_package_is_walked():
    # a sub-package the walk missed (no __init__.py, an import error) would go unchecked
    assert {"pureml.core.step", "pureml.nlp.pipeline", "pureml.stream.stream"} <= set(MODULES)
    assert {"pureml.training.trainer", "pureml.replay.replay", "pureml.optim.adamw"} <= set(MODULES)


@pytest.mark.parametrize("name", MODULES)
def test_docstring_examples(name, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # an example that writes a file writes it here
    result = doctest.testmod(importlib.import_module(name), optionflags=doctest.ELLIPSIS)
    assert result.failed == 0
    # run where a reader tries them (python -m doctest, a notebook), examples must not leave
    # files behind: Pipeline's wrote model/ into the current folder
    assert sorted(p.name for p in tmp_path.iterdir()) == []


def test_the_packages_training_example_runs(tmp_path, monkeypatch, capsys):
    # it trained an `nlp` it never defined, on a "train/" folder nothing made
    monkeypatch.chdir(tmp_path)
    block = textwrap.dedent(pureml.__doc__.split("::\n\n", 1)[1])
    exec(compile(block, pureml.__file__, "exec"), {"__name__": "docstring_example"})
    assert "'problem')" in capsys.readouterr().out
