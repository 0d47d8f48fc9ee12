"""The CLI tests' tiny recipe (``training.tiny_recipes``) that trains in seconds, and its corpus."""

from __future__ import annotations

from pathlib import Path

import pytest
from training.tiny_recipes import tiny_template, write_recipe

# 4 steps of "300 words" batches (no sub-batches), validated every 2, a constant learning rate,
# no checkpoint interval, JSON log only. test_train_errors.py edits this text.
TINY = tiny_template(
    batch_size="300 words",
    sub_batch_size=None,
    schedule=False,
    max_steps=4,
    validation_interval=2,
    checkpoint_interval=None,
    logger=["json"],
)


@pytest.fixture(scope="session")
def corpus(tmp_path_factory) -> Path:
    from pureml.nlp.synthetic import write_corpus

    root = tmp_path_factory.mktemp("corpus")
    write_corpus(root, seed=0, splits={"train": 40, "dev": 10})
    return root


@pytest.fixture
def tiny_recipe(tmp_path, corpus):
    """``tiny_recipe(**replace)`` writes ``TINY`` (with text replacements) and returns its path,
    ``tiny_recipe(text=...)`` that text as it is; the run folder is ``tmp_path / "out"``."""

    def make(text: str | None = None, **replace: str) -> Path:
        if text is None:
            return write_recipe(TINY, tmp_path, corpus, tmp_path / "out", **replace)
        assert not replace, "replacements are for TINY"
        path = tmp_path / "recipe.toml"
        path.write_text(text)
        return path

    return make
