"""The training loop reads and collates the next batch before it waits for the step's metrics
(on an accelerator that host work overlaps the device's), without changing what a run records."""

import json
import shutil

import pytest
import torch
from safetensors.torch import load_file

import pureml.training.trainer as trainer_module
from pureml.nlp.synthetic import write_corpus

from .tiny_recipes import tiny_pipeline, train_tiny


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    root = tmp_path_factory.mktemp("corpus")
    return write_corpus(root, seed=0, splits={"train": 16})["train"]


def test_next_batch_is_collated_before_the_step_metrics_are_read(corpus, tmp_path, monkeypatch):
    events: list[str] = []
    nlp = tiny_pipeline()
    collate = nlp.collate

    def logged_collate(items):
        events.append("collate")
        return collate(items)

    def logged_scalar(v):
        if isinstance(v, torch.Tensor):
            events.append("read")
        return scalar(v)

    scalar = trainer_module._scalar
    monkeypatch.setattr(nlp, "collate", logged_collate)
    monkeypatch.setattr(trainer_module, "_scalar", logged_scalar)
    train_tiny(nlp, corpus, tmp_path / "out")
    collates = [i for i, e in enumerate(events) if e == "collate"]
    reads = [i for i, e in enumerate(events) if e == "read"]
    assert len(collates) == 6  # one batch per step: none drawn past the last step
    # step k's metrics are read after batch k + 1 was collated
    assert reads[0] > collates[1]


def test_a_batch_that_fails_is_raised_after_the_step_before_it_is_recorded(
    corpus, tmp_path, monkeypatch
):
    nlp = tiny_pipeline()
    collate = nlp.collate
    calls = []

    def failing_collate(items):
        calls.append(1)
        if len(calls) == 3:
            raise ValueError("batch 3 is broken")
        return collate(items)

    monkeypatch.setattr(nlp, "collate", failing_collate)
    out = tmp_path / "out"
    with pytest.raises(ValueError, match="batch 3 is broken"):
        train_tiny(nlp, corpus, out)
    steps = [json.loads(line)["step"] for line in (out / "steps.jsonl").read_text().splitlines()]
    assert steps == [1, 2]
    # step 2 is checkpointed though off the interval (3): the run stops there, and the same
    # command resumes from it instead of from the start
    assert [p.name for p in (out / "checkpoints").iterdir()] == ["step-000002"]


def test_checkpoints_record_the_position_after_their_own_batch(corpus, tmp_path):
    """Resumed from step 3's checkpoint, a run ends bitwise where an uninterrupted one does:
    the batch drawn ahead for step 4 is not counted as consumed."""
    train_tiny(tiny_pipeline(), corpus, tmp_path / "ref")
    again = tmp_path / "again"
    shutil.copytree(tmp_path / "ref", again)
    shutil.rmtree(again / "checkpoints" / "step-000006")
    train_tiny(tiny_pipeline(), corpus, again)

    def state(out):
        return load_file(out / "checkpoints" / "step-000006" / "state" / "state.safetensors")

    a, b = state(tmp_path / "ref"), state(again)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    ref_steps = (tmp_path / "ref" / "steps.jsonl").read_text()
    assert (again / "steps.jsonl").read_text() == ref_steps
