"""Tiny runs for the replay tests, trained once per session in separate processes.

- ``quick_run``: the quickstart recipe shrunk (width 16, 40 notes, "250 words" batches), eager
  step, 60 steps, checkpoints every 20 (all three kept): replayed from each checkpoint.
- ``multi_run`` / ``altered_run``: NER and a span classifier fed by two streams of different
  batch sizes (one split into sub-batches), 8 steps, checkpoints every 4; ``altered_run`` reads
  a copy of the corpus in which one word of one note was changed (same length, same tokens).
- ``inductor_run``: NER only, compiled with inductor, 4 steps of 2 notes, checkpoints every 2.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from training.tiny_recipes import tiny_template, write_recipe

ROOT = Path(__file__).resolve().parents[2]
ENV = {**os.environ, "PYTHONWARNINGS": "ignore"}

QUICK_OVERRIDES = [
    "train_data.notes.data.n_train=40",
    "train_data.notes.data.n_dev=10",
    "val_data.n_train=40",
    "val_data.n_dev=10",
    "nlp.components.embedding.width=16",
    "nlp.components.embedding.depth=1",
    "nlp.components.embedding.rows=[500, 100, 250, 100]",
    'train_data.notes.batch_size="250 words"',
    "train.max_steps=60",
    "train.checkpoint_interval=20",
    "train.validation_interval=1000",
    "train.compile=false",
    "train.threads=1",
    'train.logger=["json"]',
]

# NER and a span classifier, their two streams read straight from the corpus's train folder (so
# that altered_run's edited copy is what is read), no validation data.
MULTITASK = tiny_template(
    multitask=True,
    reader="standoff",
    validate=False,
    max_steps=8,
    validation_interval=1000,
    checkpoint_interval=4,
    logger=["json"],
)

# NER only, compiled with inductor, batches of 2 notes, no validation data.
INDUCTOR = tiny_template(
    batch_size=2,
    sub_batch_size=None,
    validate=False,
    max_steps=4,
    validation_interval=1000,
    checkpoint_interval=2,
    compile_backend="inductor",
    logger=["json"],
)


def train(recipe: Path, *overrides: str) -> None:
    cmd = [sys.executable, "-m", "pureml.train", str(recipe)]
    for o in overrides:
        cmd += ["--set", o]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=ENV, cwd=ROOT)
    if proc.returncode != 0:
        raise AssertionError(f"training failed ({proc.returncode}):\n{proc.stderr[-3000:]}")


def records(run: Path) -> list[dict]:
    return [json.loads(line) for line in (run / "steps.jsonl").read_text().splitlines()]


@pytest.fixture(scope="session")
def corpus(tmp_path_factory) -> Path:
    from pureml.nlp.synthetic import write_corpus

    root = tmp_path_factory.mktemp("replay-corpus")
    write_corpus(root, seed=0, splits={"train": 40, "dev": 10})
    return root


@pytest.fixture(scope="session")
def quick_run(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("quick") / "run"
    train(ROOT / "recipes" / "quickstart.toml", *QUICK_OVERRIDES, f"train.output_dir={out}")
    return out


@pytest.fixture(scope="session")
def multi_run(tmp_path_factory, corpus) -> Path:
    folder = tmp_path_factory.mktemp("multi")
    out = folder / "run"
    train(write_recipe(MULTITASK, folder, corpus, out))
    return out


def first_appearance(run: Path, doc_id: str) -> int | None:
    """The first step whose batch (any stream) holds ``doc_id``."""
    for r in records(run):
        if any(doc_id in s["doc_ids"] for s in r["streams"].values()):
            return r["step"]
    return None


def alter_one_word(txt: Path, ann: Path) -> None:
    """Change one letter of the first word outside every annotation (same length, same tokens)."""
    text = txt.read_text(encoding="utf-8")
    covered = set()
    for line in ann.read_text(encoding="utf-8").splitlines():
        if line.startswith("T"):
            for a, b in re.findall(r"(\d+) (\d+)", line.split("\t")[1]):
                covered.update(range(int(a), int(b)))
    for m in re.finditer(r"[a-z]{4,}", text):
        if not covered & set(range(m.start(), m.end())):
            i = m.start() + 1
            new = "x" if text[i] != "x" else "y"
            txt.write_text(text[:i] + new + text[i + 1 :], encoding="utf-8")
            return
    raise AssertionError(f"no free word in {txt}")


@pytest.fixture(scope="session")
def altered_run(tmp_path_factory, corpus, multi_run) -> tuple[Path, str, int]:
    """(run, changed doc id, first step whose batch holds it): a doc that first appears after
    step 1, so that the runs agree before it."""
    candidates = [
        (first_appearance(multi_run, p.stem) or 0, p.stem)
        for p in sorted((corpus / "train").glob("*.txt"))
    ]
    step, doc_id = next((s, d) for s, d in sorted(candidates) if s >= 3)
    folder = tmp_path_factory.mktemp("altered")
    copy = folder / "corpus"
    shutil.copytree(corpus, copy)
    alter_one_word(copy / "train" / f"{doc_id}.txt", copy / "train" / f"{doc_id}.ann")
    out = folder / "run"
    train(write_recipe(MULTITASK, folder, copy, out))
    return out, doc_id, step


@pytest.fixture(scope="session")
def inductor_run(tmp_path_factory, corpus) -> Path:
    folder = tmp_path_factory.mktemp("inductor")
    out = folder / "run"
    train(write_recipe(INDUCTOR, folder, corpus, out))
    return out
