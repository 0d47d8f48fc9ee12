"""Fixtures of the fault-injection suite: a synthetic corpus and tiny recipes (CPU, eager)."""

from __future__ import annotations

from pathlib import Path

import pytest
from training.tiny_recipes import SINGLE, tiny_template, write_recipe

# 30 steps, a checkpoint every 3: 20 kills fit in the suite's budget
KILL = tiny_template(max_steps=30, validation_interval=15, checkpoint_interval=3)
assert KILL != SINGLE


@pytest.fixture(scope="session")
def corpus(tmp_path_factory) -> Path:
    from pureml.nlp.synthetic import write_corpus

    root = tmp_path_factory.mktemp("corpus")
    write_corpus(root, seed=0, splits={"train": 40, "dev": 10})
    return root


def write(template: str, folder: Path, corpus: Path, **replace: str) -> Path:
    """``folder/recipe.toml`` from a template (run folder ``folder/out``), with text replaced."""
    return write_recipe(template, folder, corpus, folder / "out", **replace)
