"""A tiny recipe (synthetic notes, small encoder, eager step) that trains in seconds."""

from __future__ import annotations

from pathlib import Path

import pytest

TINY = """
[paths]
corpus = "{corpus}"

[nlp.components.embedding]
factory = "scratch_encoder"
width = 16
depth = 1
rows = [500, 100, 250, 100]

[nlp.components.ner]
factory = "ner_crf"
embedding = "embedding"

[train_data.notes]
data = {{ factory = "quickstart_corpus", path = "${{paths.corpus}}", split = "train", n_train = 40, n_dev = 10 }}
batch_size = "300 words"

[val_data]
factory = "quickstart_corpus"
path = "${{paths.corpus}}"
split = "dev"
n_train = 40
n_dev = 10

[optimizer]
factory = "adamw"
learning_rate = 3e-3

[train]
max_steps = 4
validation_interval = 2
output_dir = "{out}"
compile = false
threads = 1
logger = ["json"]
"""


@pytest.fixture(scope="session")
def corpus(tmp_path_factory) -> Path:
    from pureml.nlp.synthetic import write_corpus

    root = tmp_path_factory.mktemp("corpus")
    write_corpus(root, seed=0, splits={"train": 40, "dev": 10})
    return root


@pytest.fixture
def tiny_recipe(tmp_path, corpus):
    """``tiny_recipe(**replace)`` writes the recipe (with text replacements) and returns its path;
    the run folder is ``tmp_path / "out"``."""

    def make(text: str | None = None, **replace: str) -> Path:
        body = text if text is not None else TINY.format(corpus=corpus, out=tmp_path / "out")
        for old, new in replace.items():
            assert old in body, old
            body = body.replace(old, new)
        path = tmp_path / "recipe.toml"
        path.write_text(body)
        return path

    return make
