"""``train(...)`` called from Python the ways a user coming from EDS-NLP calls it."""

from __future__ import annotations

import json

import pytest
import torch

from pureml import TrainingData, train
from pureml.nlp import NerCrf, Pipeline, ScratchEncoder, SpanClassifier
from pureml.nlp.synthetic import make_corpus
from pureml.stream import Stream, StreamError
from pureml.train import RunDirError

RUN = dict(max_steps=3, compile=False, logger=False, save_model=False, seed=1)


def _nlp(status: bool = False) -> Pipeline:
    torch.manual_seed(0)
    comps = {"embedding": ScratchEncoder(width=16, depth=1), "ner": NerCrf()}
    if status:
        comps["status"] = SpanClassifier(attributes=["status"])
    return Pipeline(comps)


def test_a_generator_of_docs_trains_like_a_list(tmp_path):
    # post_init reads the data before training does: a generator was exhausted by it and the
    # run failed with "loop(): epoch 0 yielded no item"
    docs = make_corpus(20, seed=2)
    a = train(_nlp(), TrainingData(list(docs), "300 words"), output_dir=tmp_path / "a", **RUN)
    b = train(_nlp(), TrainingData(iter(docs), "300 words"), output_dir=tmp_path / "b", **RUN)
    sa, sb = a.state_dict(), b.state_dict()
    assert sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


def test_pipe_names_as_one_name_feeds_that_component(tmp_path):
    # EDS-NLP accepts pipe_names="ner"; it was iterated into 'n', 'e', 'r'
    assert TrainingData([], pipe_names="ner").pipe_names == ["ner"]
    docs = make_corpus(20, seed=2)
    run = {**RUN, "logger": ["json"]}
    train(
        _nlp(status=True),
        TrainingData(docs, "300 words", pipe_names="ner"),
        output_dir=tmp_path,
        **run,
    )
    first = json.loads((tmp_path / "metrics.jsonl").read_text().splitlines()[0])
    assert "loss/ner" in first and "loss/status" not in first


def test_train_data_as_a_dict_of_training_data_fields(tmp_path):
    docs = make_corpus(20, seed=2)
    a = train(_nlp(), TrainingData(docs, "300 words"), output_dir=tmp_path / "a", **RUN)
    b = train(_nlp(), {"data": docs, "batch_size": "300 words"}, output_dir=tmp_path / "b", **RUN)
    sa, sb = a.state_dict(), b.state_dict()
    assert all(torch.equal(sa[k], sb[k]) for k in sa)


def test_a_bare_stream_as_train_data_is_refused_with_the_fix(tmp_path):
    stream = Stream.from_items(make_corpus(5, seed=2))
    with pytest.raises(TypeError, match=r"wrap the stream: TrainingData\(stream"):
        train(_nlp(), stream, output_dir=tmp_path, **RUN)
    with pytest.raises(TypeError, match=r"train_data\[1\]: expected TrainingData .* got str"):
        train(_nlp(), [TrainingData(stream), "notes"], output_dir=tmp_path, **RUN)


@pytest.mark.parametrize(
    ("option", "message"),
    [
        # each was accepted: "fp8" trained in float16, a misspelt component's scale was
        # ignored, and validation_interval=-1 validated at every step
        ({"mixed_precision": "fp8"}, "mixed_precision: expected one of 'no', 'fp16', 'bf16'"),
        ({"loss_scales": {"nerr": 2.0}}, "loss_scales: unknown component 'nerr'"),
        ({"validation_interval": -1}, "validation_interval: expected a positive number"),
        ({"checkpoint_interval": 0}, "checkpoint_interval: expected a positive number"),
        # ZeroDivisionError at step 1, once the folder was set up
        ({"log_interval": 0}, "log_interval: expected a positive number"),
        ({"record_params_interval": 0}, "record_params_interval: expected a positive number"),
        ({"keep_checkpoints": 0}, "keep_checkpoints: expected a positive number"),
        # was refused only once the folder was set up: after resume=False had emptied it
        ({"logger": ["json", "jsn"]}, r"logger\[1\]: unknown logger 'jsn' \(known: csv, json"),
        # a KeyError deep in the step at its first spike check
        (
            {"grad_dev_policy": "clip"},
            "grad_dev_policy: expected one of 'clip_mean', 'clip_threshold', 'skip', got 'clip'",
        ),
    ],
)
def test_bad_options_are_refused_as_the_recipe_refuses_them(tmp_path, option, message):
    docs = make_corpus(5, seed=2)
    with pytest.raises(ValueError, match=message):
        train(_nlp(), TrainingData(docs), output_dir=tmp_path / "run", **{**RUN, **option})
    assert not (tmp_path / "run").exists()


def test_an_unknown_pipe_name_is_refused_with_the_streams_key_path(tmp_path):
    # the message named the stream's internal name ("notes.pipe_names"), not where it is set
    docs = make_corpus(5, seed=2)
    with pytest.raises(
        ValueError,
        match=r"^train_data\[0\]\.pipe_names\[1\]: unknown component 'nerr' \(components: embedding, ner",
    ):
        train(
            _nlp(),
            TrainingData(docs, pipe_names=["ner", "nerr"]),
            output_dir=tmp_path / "run",
            **RUN,
        )
    with pytest.raises(
        ValueError, match=r"^train_data\.notes\.pipe_names\[0\]: unknown component 'x'"
    ):
        data = TrainingData(docs, pipe_names=["x"], name="notes")
        train(_nlp(), data, output_dir=tmp_path / "run", **RUN)
    assert not (tmp_path / "run").exists()


def test_a_batch_size_on_a_stat_no_item_reports_is_refused_before_the_run(tmp_path):
    # "ner_foo" parses as a stat; only the first batch found no item reports it, once the run
    # folder was set up
    docs = make_corpus(5, seed=2)
    with pytest.raises(StreamError, match=r"^train_data\[0\]\.batch_size: .*'ner_foo'.*ner_words"):
        train(_nlp(), TrainingData(docs, "300 ner_foo"), output_dir=tmp_path / "run", **RUN)
    with pytest.raises(StreamError, match=r"^train_data\.notes\.sub_batch_size: .*'wordz'"):
        data = TrainingData(docs, "300 words", sub_batch_size="100 wordz", name="notes")
        train(_nlp(), data, output_dir=tmp_path / "run", **RUN)
    assert not (tmp_path / "run").exists()


def test_val_data_that_is_looped_or_batched_is_refused_before_the_run(tmp_path):
    # a looped stream hung the run forever while it was read into a list; a batched one
    # failed inside the scorer with "list.copy() takes no keyword arguments"
    dev = Stream.from_items(make_corpus(5, seed=3))
    with pytest.raises(ValueError, match=r"val_data: .* loops forever; .* without loop\(\)"):
        train(_nlp(), TrainingData(make_corpus(5)), val_data=dev.loop(), output_dir=tmp_path, **RUN)
    with pytest.raises(TypeError, match=r"val_data: expected documents, got a list"):
        train(
            _nlp(), TrainingData(make_corpus(5)), val_data=dev.batch(2), output_dir=tmp_path, **RUN
        )
    # a path, or texts: both said "a batched stream?"
    with pytest.raises(TypeError, match=r"val_data: expected documents, got str \(a path\? "):
        train(_nlp(), TrainingData(make_corpus(5)), val_data="dev/", output_dir=tmp_path, **RUN)
    with pytest.raises(TypeError, match=r"got a str \(make Docs with pureml\.Doc\(text\)\)"):
        train(_nlp(), TrainingData(make_corpus(5)), val_data=["a note"], output_dir=tmp_path, **RUN)


def test_the_world_goes_to_scorers_that_take_it_and_not_to_the_others(tmp_path):
    """A scorer written before the world was passed keeps working; one that names ``world``
    (as the default scorer does) gets the trainer's, to split validation across ranks."""
    from pureml.distributed import DistInfo

    calls = []

    def old_scorer(nlp, docs, *, mixed_precision="no"):
        calls.append(("old", len(docs)))
        return {"ner": {"micro": {"f1": 0.5}}}

    def new_scorer(nlp, docs, *, mixed_precision="no", world=None):
        calls.append(("new", world))
        return {"ner": {"micro": {"f1": 0.5}}}

    docs = make_corpus(8, seed=2)
    run = {**RUN, "validation_interval": 3}
    for name, scorer in (("a", old_scorer), ("b", new_scorer)):
        train(
            _nlp(),
            TrainingData(docs),
            val_data=docs,
            scorer=scorer,
            output_dir=tmp_path / name,
            **run,
        )
    assert calls == [("old", 8), ("new", DistInfo())]


def test_a_compiled_run_says_why_its_first_step_and_a_recompile_take_long(tmp_path, capsys):
    # One document per batch: word totals cross powers of two, and the CRF's tree compiles one
    # graph per octave. The stall was silent: a minute-long step with no word of why.
    docs = make_corpus(12, seed=2)
    assert len({len(d.words).bit_length() for d in docs}) > 1
    run = {**RUN, "max_steps": 6, "compile": True, "compile_backend": "aot_eager"}
    train(_nlp(), TrainingData(docs, 1, shuffle=False), output_dir=tmp_path, **run)
    err = capsys.readouterr().err
    assert err.startswith("compiling the step (aot_eager): the first step takes a minute"), err
    assert "torch.compile built 1 more graph" in err, err


def test_the_crf_tree_is_sized_from_the_word_budget_so_one_graph_serves(tmp_path, capsys):
    # "150 words" batches of these documents hold 83 to 148 words: two octaves of the CRF's
    # tree, one more graph (a minute with inductor) unless the tree is padded to the budget.
    docs = make_corpus(24, seed=2)
    run = {**RUN, "max_steps": 8, "compile": True, "compile_backend": "aot_eager"}
    nlp = _nlp()
    train(nlp, TrainingData(docs, "150 words", shuffle=False), output_dir=tmp_path, **run)
    assert nlp.get_pipe("ner").tree_size == 150
    assert "more graph" not in capsys.readouterr().err
    nlp = _nlp()
    split = TrainingData(docs, "600 words", sub_batch_size="4 splits")
    train(nlp, split, output_dir=tmp_path / "split", **RUN)
    assert nlp.get_pipe("ner").tree_size == 300  # twice an even share: room for one document
    nlp = _nlp()
    train(nlp, TrainingData(docs, 4), output_dir=tmp_path / "docs", **RUN)
    assert nlp.get_pipe("ner").tree_size == 2  # a budget in documents bounds no word total


def test_restart_true_starts_over_as_the_refusal_says(tmp_path, capsys):
    # the refusal says "pass --restart (restart=True)", but train() took no restart keyword
    docs = make_corpus(8, seed=2)
    train(_nlp(), TrainingData(docs, "300 words"), output_dir=tmp_path, **RUN)
    capsys.readouterr()
    train(_nlp(), TrainingData(docs, "300 words"), output_dir=tmp_path, **RUN)
    assert "pass --restart (restart=True) to start over" in capsys.readouterr().err
    other = {**RUN, "max_steps": 4}
    with pytest.raises(RunDirError, match=r"restart=True"):
        train(_nlp(), TrainingData(docs, "300 words"), output_dir=tmp_path, **other)
    train(_nlp(), TrainingData(docs, "300 words"), output_dir=tmp_path, restart=True, **other)
    assert "resuming" not in capsys.readouterr().err
    with pytest.raises(ValueError, match=r"restart=True and resume=True"):
        train(_nlp(), TrainingData(docs), output_dir=tmp_path, restart=True, resume=True, **RUN)


def test_one_logger_name_as_a_string_is_that_logger(tmp_path):
    # logger="json" was iterated into 'j', 's', ...: KeyError "unknown logger factory 'j'"
    docs = make_corpus(5, seed=2)
    train(_nlp(), TrainingData(docs), output_dir=tmp_path, **{**RUN, "logger": "json"})
    assert (tmp_path / "metrics.jsonl").exists() and not (tmp_path / "metrics.csv").exists()


def test_pureml_train_has_the_signature_and_help_of_the_function():
    # the callable-module trick showed (*args, **kwargs), and help() never named an argument
    import inspect
    import pydoc

    import pureml
    from pureml.training.trainer import train as train_function

    signature = inspect.signature(pureml.train)
    assert signature == inspect.signature(train_function, eval_str=True)
    assert list(signature.parameters)[:3] == ["nlp", "train_data", "val_data"]
    text = pydoc.render_doc(pureml.train, renderer=pydoc.plaintext)
    assert "train(nlp, train_data, val_data=(), seed=42, max_steps=1000," in text
    assert "Train ``nlp`` on ``train_data``" in text


@pytest.mark.parametrize(
    ("data", "options", "error", "message"),
    [
        # each failed in ner_crf's post_init: AttributeError: 'str' object has no attribute 'spans'
        (
            "data/train.jsonl",
            {},
            TypeError,
            r"^train_data\[0\]\.data: expected a stream of Doc, got str \(a path\? read it with "
            r"read_jsonl\(\.\.\.\) or read_standoff",
        ),
        (
            ["text one", "text two"],
            {},
            TypeError,
            r"^train_data\[0\]\.data: items are str, not Doc \(make Docs with pureml\.Doc\(text\)\)",
        ),
        # a StreamError without the key path
        (
            None,
            {"batch_size": 0},
            StreamError,
            r"^train_data\[0\]\.batch_size: .* must be positive",
        ),
        (None, {"batch_size": 8.5}, StreamError, r"^train_data\[0\]\.batch_size: size 8\.5"),
        (None, {"shuffle": "datset"}, StreamError, r"^train_data\[0\]\.shuffle: .*'datset'"),
        (None, {"shuffle": "datset", "name": "notes"}, StreamError, r"^train_data\.notes\.shuffle"),
    ],
)
def test_bad_training_data_is_refused_with_its_key_path(tmp_path, data, options, error, message):
    data = make_corpus(5, seed=2) if data is None else data
    with pytest.raises(error, match=message):
        train(_nlp(), TrainingData(data, **options), output_dir=tmp_path / "run", **RUN)
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize(
    ("args", "options", "error", "message"),
    [
        # AttributeError: 'str' object has no attribute 'phases'
        (
            ("runs/r1/model-last", "data"),
            {},
            TypeError,
            r"^nlp: expected a Pipeline, got str \(a saved model\? pureml\.load\(path\)\)",
        ),
        # TypeError: 'Pipeline' object is not iterable
        (
            ("data", "nlp"),
            {},
            TypeError,
            r"^nlp: expected a Pipeline, got TrainingData \(the arguments swapped\?",
        ),
        # TypeError: '<' not supported between instances of 'str' and 'int'
        (
            ("nlp", "data"),
            {"max_steps": "30"},
            TypeError,
            r"^max_steps: expected an int, got str '30'",
        ),
        # "optimizer can only optimize Tensors", from inside torch, once the folder was set up
        (
            ("nlp", "data"),
            {"optimizer": torch.optim.AdamW},
            TypeError,
            r"^optimizer: got torch\.optim\.AdamW: pureml takes a GradientTransformation \(pureml\.optim\.adamw\(",
        ),
        # InvalidBackend from inside torch.compile, once the folder was set up
        (
            ("nlp", "data"),
            {"compile": True, "compile_backend": "inductr"},
            ValueError,
            r"^compile_backend: unknown backend 'inductr' \(did you mean 'inductor'\?",
        ),
    ],
)
def test_bad_arguments_are_refused_naming_the_argument(tmp_path, args, options, error, message):
    given = {
        "nlp": _nlp(),
        "data": TrainingData(make_corpus(5, seed=2)),
        "runs/r1/model-last": "runs/r1/model-last",
    }
    with pytest.raises(error, match=message):
        train(*(given[a] for a in args), output_dir=tmp_path / "run", **{**RUN, **options})
    assert not (tmp_path / "run").exists()


def test_an_unknown_keyword_names_train_and_its_neighbour(tmp_path):
    # was: "Trainer.__init__() got an unexpected keyword argument 'lr'"
    with pytest.raises(
        TypeError,
        match=r"^train\(\) got an unexpected keyword argument 'max_step'; did you mean 'max_steps'\?$",
    ):
        train(_nlp(), TrainingData(make_corpus(5)), output_dir=tmp_path / "run", max_step=3)
    assert not (tmp_path / "run").exists()
