"""The tiny recipe (small encoder, eager step, synthetic notes) every suite trains, and runners.

:func:`tiny_template` is the one place the recipe is written. It returns a ``str.format``
template (``{corpus}``: the synthetic corpus folder, ``{out}``: the run folder; fill them with
:func:`write_recipe`): a 16-wide scratch encoder and a CRF NER head. Its defaults are this
suite's ``SINGLE``. What a suite or module runs differently is passed as keywords where it is
used (``tests/cli/conftest.py``, ``tests/replay/conftest.py``, ``test_loggers.py``); what one
test changes on top stays a text replacement next to that test (``test_inductor.py``,
``tests/faults/conftest.py``, the CLI error tests). Other suites import this module as
``training.tiny_recipes``: pytest puts ``tests/`` (the first folder up without an
``__init__.py``) on ``sys.path``.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

MODEL = """[nlp.components.embedding]
factory = "scratch_encoder"
width = 16
depth = 1
rows = [500, 100, 250, 100]

[nlp.components.ner]
factory = "ner_crf"
embedding = "embedding"
"""

# The training notes, as each reader reads them (quickstart_corpus also needs ``[paths]``).
READERS = {
    "quickstart_corpus": '{{ factory = "quickstart_corpus", path = "${{paths.corpus}}", '
    'split = "train", n_train = 40, n_dev = 10 }}',
    "standoff": '{{ factory = "standoff", path = "{corpus}/train" }}',
}

VAL_DATA = """[val_data]
factory = "quickstart_corpus"
path = "${{paths.corpus}}"
split = "dev"
n_train = 40
n_dev = 10
"""


def lines(*rows: str) -> str:
    """One TOML table's text (a template's: literal braces are doubled)."""
    return "".join(f"{row}\n" for row in rows)


def tiny_template(
    *,
    multitask: bool = False,
    reader: str = "quickstart_corpus",
    batch_size: str | int = "250 words",
    sub_batch_size: str | None = "2 splits",
    validate: bool = True,
    schedule: bool = True,
    max_steps: int = 60,
    validation_interval: int = 20,
    checkpoint_interval: int | None = 20,
    compile_backend: str | None = None,
    logger: Sequence[str] = ("json", "csv"),
) -> str:
    """The tiny recipe as a ``str.format`` template; the defaults give :data:`SINGLE`.

    Args:
        multitask: also a span classifier (``status``) on the shared embedding, trained from its
            own stream: NER batches of "250 words", status batches of "24 spans" in sub-batches
            of "12 spans" (``batch_size`` and ``sub_batch_size`` then do not apply).
        reader: ``quickstart_corpus`` (40 train / 10 dev notes, through ``[paths] corpus``) or
            ``standoff`` (the ``{corpus}/train`` folder as it is).
        batch_size, sub_batch_size: the single ``notes`` stream's (``None``: no sub-batches).
        validate: a ``[val_data]`` table (the quickstart corpus's dev notes).
        schedule: a linear schedule (10% warmup) on AdamW's 3e-3; ``False``: constant rate.
        checkpoint_interval: ``None`` leaves the key out (the trainer's default).
        compile_backend: ``None``: eager (``compile = false``); else compiled with it.
        max_steps, validation_interval, logger: the ``[train]`` keys of these names.
    """
    assert reader in READERS, reader
    assert not (validate and reader != "quickstart_corpus"), "val_data reads the quickstart corpus"
    data = READERS[reader]
    sections = [lines("[paths]", 'corpus = "{corpus}"')] if reader == "quickstart_corpus" else []
    sections.append(MODEL)
    if multitask:
        status = [
            'factory = "span_classifier"',
            'embedding = "embedding"',
            'attributes = ["status"]',
        ]
        sections += [
            lines("[nlp.components.status]", *status),
            lines(
                "[train_data.ner]",
                f"data = {data}",
                'batch_size = "250 words"',
                'pipe_names = ["ner"]',
            ),
            lines(
                "[train_data.status]",
                f"data = {data}",
                'batch_size = "24 spans"',
                'sub_batch_size = "12 spans"',
                'pipe_names = ["status"]',
            ),
        ]
    else:
        # json.dumps writes these strings, ints and lists as TOML does
        notes = [f"data = {data}", f"batch_size = {json.dumps(batch_size)}"]
        if sub_batch_size is not None:
            notes.append(f"sub_batch_size = {json.dumps(sub_batch_size)}")
        sections.append(lines("[train_data.notes]", *notes))
    if validate:
        sections.append(VAL_DATA)
    optimizer = ["[optimizer]", 'factory = "adamw"', "learning_rate = 3e-3"]
    if schedule:
        optimizer.append('schedule = {{ factory = "linear", warmup_rate = 0.1 }}')
    sections.append(lines(*optimizer))
    train = ["[train]", f"max_steps = {max_steps}", f"validation_interval = {validation_interval}"]
    if checkpoint_interval is not None:
        train.append(f"checkpoint_interval = {checkpoint_interval}")
    train.append('output_dir = "{out}"')
    if compile_backend is None:
        train.append("compile = false")
    else:
        train += ["compile = true", f"compile_backend = {json.dumps(compile_backend)}"]
    train += ["threads = 1", f"logger = {json.dumps(list(logger))}"]
    sections.append(lines(*train))
    return "\n" + "\n".join(sections)


# 60 steps of "250 words" batches in two sub-batches, validated and checkpointed every 20.
SINGLE = tiny_template()
# NER and a span classifier sharing one embedding, fed by two streams of different batch sizes.
MULTITASK = tiny_template(multitask=True)
assert MULTITASK != SINGLE


def write_recipe(template: str, folder: Path, corpus: Path, out: Path, **replace: str) -> Path:
    """``folder/recipe.toml`` from a template, its ``{corpus}`` and ``{out}`` filled in, then
    each ``old=new`` text replacement made (each ``old`` must be there)."""
    folder.mkdir(parents=True, exist_ok=True)
    body = template.format(corpus=corpus, out=out)
    for old, new in replace.items():
        assert old in body, old
        body = body.replace(old, new)
    path = folder / "recipe.toml"
    path.write_text(body)
    return path


def train_cmd(recipe: Path, *args: str) -> list[str]:
    return [sys.executable, "-m", "pureml.train", str(recipe), *args]


ENV = {**os.environ, "PYTHONWARNINGS": "ignore"}


def run(recipe: Path, *args: str, check: bool = True) -> subprocess.CompletedProcess:
    proc = subprocess.run(train_cmd(recipe, *args), capture_output=True, text=True, env=ENV)
    if check and proc.returncode != 0:
        raise AssertionError(f"exit {proc.returncode}\n{proc.stderr[-3000:]}")
    return proc


def tiny_pipeline() -> Any:
    """The same model for the Python-API tests: a 16-wide scratch encoder and a CRF NER head,
    initialised from torch's global RNG seeded with 0."""
    import torch

    from pureml.nlp import NerCrf, Pipeline, ScratchEncoder

    torch.manual_seed(0)
    return Pipeline({"embedding": ScratchEncoder(width=16, depth=1), "ner": NerCrf()})


def train_tiny(nlp: Any, train_dir: Path, out: Path, **options: Any) -> Any:
    """``pureml.train`` on the brat folder ``train_dir`` into ``out``: batches of 200 words, 6
    eager steps, a checkpoint every 3, JSON logs only, no model saved; ``options`` override."""
    from pureml import TrainingData, train
    from pureml.stream import read_standoff

    settings = dict(
        max_steps=6, checkpoint_interval=3, compile=False, logger=["json"], save_model=False
    )
    return train(
        nlp,
        TrainingData(read_standoff(train_dir), batch_size="200 words"),
        output_dir=out,
        **{**settings, **options},
    )
