"""Fixtures of the fault-injection suite: a synthetic corpus and tiny recipes (CPU, eager)."""

from __future__ import annotations

from pathlib import Path

import pytest
from training.tiny_recipes import SINGLE

# 30 steps, a checkpoint every 3: 20 kills fit in the suite's budget
KILL = (
    SINGLE.replace("max_steps = 60", "max_steps = 30")
    .replace("validation_interval = 20", "validation_interval = 15")
    .replace("checkpoint_interval = 20", "checkpoint_interval = 3")
)
assert KILL != SINGLE


@pytest.fixture(scope="session")
def corpus(tmp_path_factory) -> Path:
    from pureml.nlp.synthetic import write_corpus

    root = tmp_path_factory.mktemp("corpus")
    write_corpus(root, seed=0, splits={"train": 40, "dev": 10})
    return root


def write(template: str, folder: Path, corpus: Path, **replace: str) -> Path:
    """``folder/recipe.toml`` from a template (run folder ``folder/out``), with text replaced."""
    folder.mkdir(parents=True, exist_ok=True)
    body = template.format(corpus=corpus, out=folder / "out")
    for old, new in replace.items():
        assert old in body, old
        body = body.replace(old, new)
    path = folder / "recipe.toml"
    path.write_text(body)
    return path
