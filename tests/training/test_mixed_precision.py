"""mixed_precision: float16 trains with a dynamic loss scale kept in the state; bfloat16 without."""

import json
import shutil

import torch
from safetensors.torch import load_file

from pureml import TrainingData, train
from pureml.nlp import NerCrf, Pipeline, ScratchEncoder
from pureml.nlp.synthetic import write_corpus
from pureml.stream import read_standoff

from .tiny_recipes import tiny_pipeline, train_tiny


def _run(corpus, out, mixed_precision):
    train_tiny(tiny_pipeline(), corpus, out, mixed_precision=mixed_precision)
    return [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]


def _state(out, step):
    return load_file(out / "checkpoints" / f"step-{step:06d}" / "state" / "state.safetensors")


def test_float16_scales_the_loss_and_resumes_with_its_scale(tmp_path):
    corpus = write_corpus(tmp_path / "corpus", seed=0, splits={"train": 16})["train"]
    lines = _run(corpus, tmp_path / "fp16", "fp16")
    scales = [line["loss_scale"] for line in lines]
    assert scales[0] == 2.0**16
    # an overflow skips the step and halves the scale; otherwise it holds (growth needs 2000)
    for line, after in zip(lines, scales[1:]):
        assert after == (line["loss_scale"] / 2 if line["skipped"] else line["loss_scale"])
    assert not lines[-1]["skipped"]  # it settles on a scale that fits
    # the scale is part of the state: resumed from step 3, the run ends bitwise the same
    again = tmp_path / "again"
    shutil.copytree(tmp_path / "fp16", again)
    shutil.rmtree(again / "checkpoints" / "step-000006")
    assert "loss_scale.scale" in _state(again, 3)
    _run(corpus, again, "fp16")
    a, b = _state(tmp_path / "fp16", 6), _state(again, 6)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)

    lines = _run(corpus, tmp_path / "bf16", "bf16")
    assert "loss_scale" not in lines[0] and not any(line["skipped"] for line in lines)
    assert not any(k.startswith("loss_scale") for k in _state(tmp_path / "bf16", 6))


def test_one_loss_scale_for_the_whole_run_across_phases(tmp_path):
    """Two phases (two embeddings, each with its head): the second starts where the first's
    scale ended, as one GradScaler serves the whole run (not from 2**16 again)."""
    from pureml.nlp import SpanClassifier

    corpus = write_corpus(tmp_path / "corpus", seed=0, splits={"train": 16})["train"]
    torch.manual_seed(0)
    nlp = Pipeline(
        {
            "emb1": ScratchEncoder(width=16, depth=1),
            "ner": NerCrf(embedding="emb1"),
            "emb2": ScratchEncoder(width=16, depth=1),
            "status": SpanClassifier(embedding="emb2", attributes=["status"]),
        }
    )
    assert len(nlp.phases()) == 2
    train(
        nlp,
        TrainingData(read_standoff(corpus), batch_size="200 words"),
        max_steps=4,
        compile=False,
        logger=["json"],
        save_model=False,
        output_dir=tmp_path / "run",
        mixed_precision="fp16",
    )
    lines = [json.loads(x) for x in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    first, second = lines[:4], lines[4:]
    assert first[0]["loss_scale"] == 2.0**16 and first[0]["skipped"]  # overflow at the start
    end_of_first = first[-1]["loss_scale"] / (2 if first[-1]["skipped"] else 1)
    assert second[0]["loss_scale"] == end_of_first < 2.0**16
