"""Fixtures for the training tests (recipes and runners are in ``tiny_recipes``)."""

from __future__ import annotations

from pathlib import Path

import pytest


@pytest.fixture(scope="session")
def corpus(tmp_path_factory) -> Path:
    from pureml.nlp.synthetic import write_corpus

    root = tmp_path_factory.mktemp("corpus")
    write_corpus(root, seed=0, splits={"train": 40, "dev": 10})
    return root
