"""train.best_metric: model-best holds the weights of the best validation, across a resume."""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import load_file

from pureml import TrainingData, load, train
from pureml.nlp import NerCrf, Pipeline, ScratchEncoder
from pureml.nlp.synthetic import make_corpus
from pureml.training.best import BestMetricError


def _nlp() -> Pipeline:
    torch.manual_seed(0)
    return Pipeline({"embedding": ScratchEncoder(width=16, depth=1), "ner": NerCrf()})


class Stop(Exception):
    pass


def _scorer(values, stop_at=None):
    """A scorer that reports the given F1 values in turn (and fails at validation stop_at)."""
    calls = []

    def scorer(nlp, docs, mixed_precision="no"):
        calls.append(None)
        if len(calls) == stop_at:
            raise Stop
        return {"ner": {"micro": {"f1": values[len(calls) - 1]}}}

    return scorer


def _train(out, scorer, **kw):
    docs = make_corpus(24, seed=3)
    return train(
        _nlp(),
        TrainingData(docs[:20], "200 words"),
        val_data=docs[20:],
        **{
            "max_steps": 8,
            "validation_interval": 2,
            "keep_checkpoints": 10,
            "compile": False,
            "logger": False,
            "seed": 1,
            "scorer": scorer,
            "output_dir": out,
            "best_metric": "ner/micro/f1",
            **kw,
        },
    )


def _weights_at(out, step):
    """The parameters in the checkpoint of ``step`` (the state's flat file)."""
    state = out / "checkpoints" / f"step-{step:06d}" / "state" / "state.safetensors"
    flat = load_file(state)
    weights = {k[len("params.") :]: v for k, v in flat.items() if k.startswith("params.")}
    assert weights
    return weights


def _same(model, weights):
    sd = model.state_dict()
    return all(torch.equal(sd[k], v) for k, v in weights.items())


def test_model_best_is_the_best_validation_even_after_a_resume(tmp_path):
    # validations at steps 2, 4, 6, 8 score 0.2, 0.5, 0.4, 0.3: the best is step 4's model
    out = tmp_path / "run"
    # the first run dies in its third validation (step 6), before that step's checkpoint
    with pytest.raises(Stop):
        _train(out, _scorer([0.2, 0.5], stop_at=3))
    assert _same(load(out / "model-best"), _weights_at(out, 4))
    # resumed from step 4's checkpoint, whose best (0.5) the later 0.4 and 0.3 do not beat;
    # a run that forgot it would take step 6 as its first validation's best
    _train(out, _scorer([0.4, 0.3]))
    assert _same(load(out / "model-best"), _weights_at(out, 4))
    assert not _same(load(out / "model-best"), _weights_at(out, 6))
    # an uninterrupted run agrees
    other = tmp_path / "other"
    _train(other, _scorer([0.2, 0.5, 0.4, 0.3]))
    a, b = load(out / "model-best").state_dict(), load(other / "model-best").state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_a_later_better_score_replaces_model_best_and_restart_removes_it(tmp_path):
    out = tmp_path / "run"
    _train(out, _scorer([0.2, 0.5, 0.5, 0.7]))  # a tie is not an improvement
    assert _same(load(out / "model-best"), _weights_at(out, 8))
    _train(out, _scorer([0.2, 0.1, 0.1, 0.1]), resume=False)
    assert _same(load(out / "model-best"), _weights_at(out, 2))


def test_another_metric_on_resume_removes_the_old_model_best(tmp_path):
    out = tmp_path / "run"
    with pytest.raises(Stop):
        _train(out, _scorer([0.2, 0.5], stop_at=3))
    assert (out / "model-best").is_dir()

    def scorer(nlp, docs, mixed_precision="no"):  # no better than before for the new metric
        raise Stop

    # resumed with another metric: the folder held the old metric's best, which the run kept
    # until its first validation (and for good when none came)
    with pytest.raises(Stop):
        _train(out, scorer, best_metric="ner/micro/p")
    assert not (out / "model-best").exists()


def test_a_list_of_metrics_ranks_validations_by_their_mean(tmp_path):
    values = iter([(0.9, 0.1), (0.6, 0.6), (0.2, 0.9)])  # means 0.5, 0.6, 0.55

    def scorer(nlp, docs, mixed_precision="no"):
        ner, status = next(values)
        return {"ner": {"micro": {"f1": ner}}, "span_attributes": {"status": {"f1": status}}}

    out = tmp_path / "run"
    _train(out, scorer, max_steps=6, best_metric=["ner/micro/f1", "span_attributes/status/f1"])
    assert _same(load(out / "model-best"), _weights_at(out, 4))


def test_a_best_metric_the_scores_lack_names_its_neighbour(tmp_path):
    with pytest.raises(
        BestMetricError, match=r"best_metric: no score 'ner/micro/f' .*did you mean 'ner/micro/f1'"
    ):
        _train(tmp_path, _scorer([0.1]), best_metric="ner/micro/f")
    with pytest.raises(ValueError, match=r"best_metric: needs validation documents"):
        train(
            _nlp(),
            TrainingData(make_corpus(4, seed=3), "200 words"),
            max_steps=2,
            compile=False,
            logger=False,
            output_dir=tmp_path / "none",
            best_metric="ner/micro/f1",
        )
    assert not (tmp_path / "none").exists()
    with pytest.raises(ValueError, match=r"best_metric: expected a score path"):
        _train(tmp_path / "bad", _scorer([0.1]), best_metric=["ner/micro/f1", ""])
    with pytest.raises(ValueError, match=r"best_metric: expected a score path"):
        _train(tmp_path / "bad", _scorer([0.1]), best_metric="ner//f1")
