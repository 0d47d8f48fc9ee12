"""Tiny recipes that train in seconds (small encoder, eager step) and a way to run them."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

SINGLE = """
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
batch_size = "250 words"
sub_batch_size = "2 splits"

[val_data]
factory = "quickstart_corpus"
path = "${{paths.corpus}}"
split = "dev"
n_train = 40
n_dev = 10

[optimizer]
factory = "adamw"
learning_rate = 3e-3
schedule = {{ factory = "linear", warmup_rate = 0.1 }}

[train]
max_steps = 60
validation_interval = 20
checkpoint_interval = 20
output_dir = "{out}"
compile = false
threads = 1
logger = ["json", "csv"]
"""

# NER and a span classifier sharing one embedding, fed by two streams of different batch sizes.
MULTITASK = SINGLE.replace(
    """[train_data.notes]
data = {{ factory = "quickstart_corpus", path = "${{paths.corpus}}", split = "train", n_train = 40, n_dev = 10 }}
batch_size = "250 words"
sub_batch_size = "2 splits"
""",
    """[nlp.components.status]
factory = "span_classifier"
embedding = "embedding"
attributes = ["status"]

[train_data.ner]
data = {{ factory = "quickstart_corpus", path = "${{paths.corpus}}", split = "train", n_train = 40, n_dev = 10 }}
batch_size = "250 words"
pipe_names = ["ner"]

[train_data.status]
data = {{ factory = "quickstart_corpus", path = "${{paths.corpus}}", split = "train", n_train = 40, n_dev = 10 }}
batch_size = "24 spans"
sub_batch_size = "12 spans"
pipe_names = ["status"]
""",
)
assert MULTITASK != SINGLE


def write_recipe(template: str, folder: Path, corpus: Path, out: Path) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "recipe.toml"
    path.write_text(template.format(corpus=corpus, out=out))
    return path


def train_cmd(recipe: Path, *args: str) -> list[str]:
    return [sys.executable, "-m", "pureml.train", str(recipe), *args]


ENV = {**os.environ, "PYTHONWARNINGS": "ignore"}


def run(recipe: Path, *args: str, check: bool = True) -> subprocess.CompletedProcess:
    proc = subprocess.run(train_cmd(recipe, *args), capture_output=True, text=True, env=ENV)
    if check and proc.returncode != 0:
        raise AssertionError(f"exit {proc.returncode}\n{proc.stderr[-3000:]}")
    return proc
