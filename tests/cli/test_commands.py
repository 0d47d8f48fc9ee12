"""evaluate / plot / recipe-reference, a run's config.toml as a recipe, and train() from Python
(the callable module)."""

from __future__ import annotations

import json
import subprocess
import sys
import warnings

import pytest
from click.testing import CliRunner

from pureml.cli import main


@pytest.fixture(scope="module")
def trained(tmp_path_factory, corpus):
    from .conftest import TINY

    folder = tmp_path_factory.mktemp("trained")
    recipe = folder / "recipe.toml"
    recipe.write_text(TINY.format(corpus=corpus, out=folder / "out"))
    result = CliRunner().invoke(main, ["train", str(recipe)])
    assert result.exit_code == 0, result.output
    return folder / "out"


def test_evaluate_json_has_ner_micro_and_per_label(trained, corpus):
    result = CliRunner().invoke(
        main, ["evaluate", str(trained / "model-last"), str(corpus / "dev"), "--json"]
    )
    assert result.exit_code == 0, result.output
    scores = json.loads(result.stdout)
    assert set(scores["ner"]["micro"]) == {"p", "r", "f1"}
    assert set(scores["ner"]["per_label"]) <= {"drug", "problem", "test"}
    assert scores["speed"]["words_per_s"] > 0
    text = CliRunner().invoke(main, ["evaluate", str(trained / "model-last"), str(corpus / "dev")])
    assert text.exit_code == 0 and "micro" in text.stdout and "words/s" in text.stdout


def test_evaluate_missing_model_is_one_line(tmp_path, corpus):
    result = CliRunner().invoke(main, ["evaluate", str(tmp_path / "nope"), str(corpus / "dev")])
    assert result.exit_code == 2
    assert result.stderr == f"error: no model at {tmp_path / 'nope'}\n"


def test_evaluate_unknown_reader_is_bad_input(trained, corpus):
    """A misspelt --reader is the user's input (exit 2, one line), not a crash asking for
    --debug."""
    result = CliRunner().invoke(
        main, ["evaluate", str(trained / "model-last"), str(corpus / "dev"), "--reader", "jsonll"]
    )
    assert result.exit_code == 2, result.output
    assert result.stderr == (
        "error: --reader: unknown reader 'jsonll' "
        "(known: jsonl, quickstart_corpus, standoff, standoff_label_as_attribute)\n"
    )


def _edited_dev(corpus, tmp_path, edit):
    """A copy of the corpus's brat dev folder, each .ann file's text passed through ``edit``."""
    dev = tmp_path / "dev"
    dev.mkdir()
    for txt in (corpus / "dev").glob("*.txt"):
        (dev / txt.name).write_text(txt.read_text())
        ann = txt.with_suffix(".ann")
        (dev / ann.name).write_text(edit(ann.read_text()))
    return dev


def test_evaluate_default_attribute_fills_what_brat_leaves_out(corpus, tmp_path):
    from training.tiny_recipes import tiny_template

    template = tiny_template(multitask=True, max_steps=4, checkpoint_interval=None)
    recipe = tmp_path / "recipe.toml"
    recipe.write_text(template.format(corpus=corpus, out=tmp_path / "out"))
    result = CliRunner().invoke(main, ["train", str(recipe)])
    assert result.exit_code == 0, result.output
    # the dev notes with every "affirmed" A line removed: brat's way of writing a default value
    dev = _edited_dev(
        corpus,
        tmp_path,
        lambda ann: "".join(
            line
            for line in ann.splitlines(keepends=True)
            if not line.rstrip().endswith(" affirmed")
        ),
    )
    model = str(tmp_path / "out" / "model-last")

    def scores(*args):
        result = CliRunner().invoke(main, ["evaluate", model, *args, "--json"])
        assert result.exit_code == 0, result.output
        return json.loads(result.stdout)["span_attributes"]

    full = scores(str(corpus / "dev"))
    # no gold "affirmed": every affirmed prediction is wrong, and evaluate says what to pass
    with pytest.warns(UserWarning, match=r"none has 'affirmed'.*--default-attribute status="):
        assert scores(str(dev)) != full
    assert scores(str(dev), "--default-attribute", "status=affirmed") == full
    # the same notes as JSON lines, as tools export them: the default works there too
    from pureml.stream import read_standoff, write_jsonl

    write_jsonl(read_standoff(dev), tmp_path / "dev.jsonl")
    with pytest.warns(UserWarning, match=r"--default-attribute status=affirmed"):
        assert scores(str(tmp_path / "dev.jsonl")) != full
    assert scores(str(tmp_path / "dev.jsonl"), "--default-attribute", "status=affirmed") == full
    bad = CliRunner().invoke(main, ["evaluate", model, str(dev), "--default-attribute", "status"])
    assert bad.exit_code == 2
    assert bad.stderr == "error: --default-attribute: expected NAME=VALUE, got 'status'\n"


def test_evaluate_counts_gold_labels_the_model_never_saw(trained, corpus, tmp_path):
    # dev's "test" entities renamed "allergy", a label the model was not trained on: they were
    # left out of the scores, so the micro recall ignored them
    dev = _edited_dev(corpus, tmp_path, lambda ann: ann.replace("\ttest ", "\tallergy "))
    model = str(trained / "model-last")
    before = json.loads(
        CliRunner().invoke(main, ["evaluate", model, str(corpus / "dev"), "--json"]).stdout
    )
    after = json.loads(CliRunner().invoke(main, ["evaluate", model, str(dev), "--json"]).stdout)
    assert after["ner"]["per_label"]["allergy"]["r"] == 0.0
    assert after["ner"]["micro"]["r"] < before["ner"]["micro"]["r"]


def test_run_folder_layout(trained):
    names = {p.name for p in trained.iterdir()}
    assert {"config.toml", "metrics.jsonl", "steps.jsonl", "checkpoints", "model-last"} <= names
    rows = [json.loads(x) for x in (trained / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [1, 2, 3, 4]
    assert all("loss" in r for r in rows) and "validation" in rows[1] and "validation" in rows[3]
    assert "speed" not in rows[1]["validation"]  # wall-clock figures live in timings.jsonl


def test_a_literal_dollar_brace_survives_config_toml(tiny_recipe, tmp_path):
    """``$${`` in ``--set`` is a literal ``${``; config.toml (read again as a recipe by the
    same command, replay and diff) keeps it literal, so the run resumes instead of failing on an
    unknown reference or refusing a different recipe."""
    recipe = tiny_recipe(**{"max_steps = 4": "max_steps = 2", "validation_interval = 2": ""})
    out = tmp_path / "runs" / "${run}"
    runner = CliRunner()
    first = runner.invoke(
        main, ["train", str(recipe), "--set", f"train.output_dir={tmp_path}/runs/$${{run}}"]
    )
    assert first.exit_code == 0, first.output
    assert f'output_dir = "{tmp_path}/runs/$${{run}}"' in (out / "config.toml").read_text()
    again = runner.invoke(main, ["train", str(out / "config.toml")])
    assert again.exit_code == 0, again.output
    assert "resuming from" in again.stderr, again.output


def test_plot(trained, tmp_path):
    result = CliRunner().invoke(main, ["plot", str(trained), "-o", str(tmp_path / "c.png")])
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        assert result.exit_code == 1
        assert "pip install 'pureml[plot]'" in result.stderr
    else:
        assert result.exit_code == 0 and (tmp_path / "c.png").stat().st_size > 0


def test_recipe_reference_prints_markdown():
    result = CliRunner().invoke(main, ["recipe-reference"])
    assert result.exit_code == 0
    assert "| `train.max_steps` | int | `1000` |" in result.stdout
    assert "| `ner_crf` |" in result.stdout and "| `standoff` |" in result.stdout


def test_train_from_python_is_the_callable_module(tmp_path, corpus):
    import pureml.nlp as nlp_mod
    from pureml import train
    from pureml.stream import read_standoff
    from pureml.train import TrainingData

    calls = []

    class Counting(nlp_mod.ScratchEncoder):
        def forward(self, batch, ctx):
            calls.append(1)
            return super().forward(batch, ctx)

    nlp = nlp_mod.Pipeline(
        {
            "embedding": Counting(width=16, depth=0, rows=[500, 100, 250, 100]),
            "ner": nlp_mod.NerCrf(),
            "status": nlp_mod.SpanClassifier(attributes=["status"]),
        }
    )
    out = train(
        nlp,
        TrainingData(
            read_standoff(corpus / "train"), batch_size="300 words", sub_batch_size="2 splits"
        ),
        max_steps=3,
        output_dir=tmp_path,
        compile=False,
        logger=False,
        save_model=False,
    )
    assert out is nlp
    records = [json.loads(x) for x in (tmp_path / "steps.jsonl").read_text().splitlines()]
    # both heads, one embedding forward per sub-batch
    assert all(set(r["losses"]) == {"ner", "status"} for r in records)
    assert len(calls) == sum(r["streams"]["train_data_0"]["sub_batches"] for r in records)


def test_evaluate_a_run_folder_or_broken_weights_is_one_line(trained, corpus, tmp_path):
    """Bad input, not a pureml bug: exit 2 and a line naming the file (no KeyError, no --debug)."""
    import shutil

    result = CliRunner().invoke(main, ["evaluate", str(trained), str(corpus / "dev")])
    assert result.exit_code == 2, result.output
    assert result.stderr == (
        f"error: {trained / 'config.toml'} is not a saved pipeline's config "
        f"(a run folder? its model is {trained / 'model-last'})\n"
    )
    model = tmp_path / "model"
    shutil.copytree(trained / "model-last", model)
    (model / "model.safetensors").write_bytes(b"not safetensors")
    broken = CliRunner().invoke(main, ["evaluate", str(model), str(corpus / "dev")])
    assert broken.exit_code == 2, broken.output
    assert broken.stderr.startswith(f"error: corrupted weights file {model / 'model.safetensors'}")
    assert len(broken.stderr.splitlines()) == 1 and "--debug" not in broken.stderr


def test_a_second_ctrl_c_says_what_it_skipped(capsys):
    # the second signal stops at once; it printed only "interrupted", though the first one's
    # clean exit writes a checkpoint of the step and this one does not
    import signal

    from pureml.cli import EXIT_INTERRUPTED, friendly_errors
    from pureml.training.trainer import _Interrupts

    @friendly_errors
    def twice() -> None:
        with _Interrupts() as interrupts:
            interrupts._handle(signal.SIGINT, None)
            assert interrupts.requested == "SIGINT"  # the first: a flag for the loop
            interrupts._handle(signal.SIGINT, None)

    with pytest.raises(SystemExit) as exit_info:
        twice()
    assert exit_info.value.code == EXIT_INTERRUPTED
    assert capsys.readouterr().err == (
        "interrupted: stopped at once, without a checkpoint of this step: the same command "
        "resumes from the last one\n"
    )


@pytest.mark.parametrize("local_rank, shown", [("0", 2), ("1", 1), (None, 2)])
def test_only_local_rank_zero_shows_puremls_warnings(monkeypatch, local_rank, shown):
    """Under torchrun every rank meets the same data: pureml's warnings come from local rank 0
    only (as the error lines); torch's, which may be one rank's own, from every rank."""
    from pureml import cli

    if local_rank is None:
        monkeypatch.delenv("LOCAL_RANK", raising=False)
    else:
        monkeypatch.setenv("LOCAL_RANK", local_rank)
    monkeypatch.setattr(warnings, "formatwarning", warnings.formatwarning)  # what it replaces
    with warnings.catch_warnings(record=True) as shown_warnings:
        warnings.simplefilter("always")
        cli._short_warnings()
        warnings.warn_explicit("torch's", UserWarning, "/site-packages/torch/x.py", 1)
        warnings.warn_explicit("unknown label", UserWarning, "/src/pureml/nlp/ner_crf.py", 1)
        text = [
            warnings.formatwarning(w.message, w.category, w.filename, w.lineno)
            for w in shown_warnings
        ]
    assert len(text) == shown
    assert "torch's" in text[0] and not text[0].startswith("warning:")
    if shown == 2:
        assert text[1] == "warning: unknown label\n"


def test_evaluate_warns_when_no_gold_label_is_the_models_and_takes_reader_options(trained, corpus):
    # Read otherwise than in training (every entity relabelled "Entity"), every NER score was
    # 0 with no word of why; and the reader's own keys (label=...) could not be given.
    model = str(trained / "model-last")
    args = ["evaluate", model, str(corpus / "dev"), "--reader", "standoff_label_as_attribute"]
    # a real process: pytest would catch the warning before the CLI prints it
    result = subprocess.run(
        [sys.executable, "-m", "pureml.cli", *args, "--json"], capture_output=True, text=True
    )
    assert result.returncode == 0, result.stderr
    assert result.stderr.startswith(
        "warning: ner: none of the gold labels (Entity) is one the model predicts ("
    ), result.stderr
    assert json.loads(result.stdout)["ner"]["micro"]["f1"] == 0.0
    # label=problem: the gold spans are "problem" again, and the model finds some of them
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        result = CliRunner().invoke(main, [*args, "--reader-option", "label=problem", "--json"])
    assert result.exit_code == 0, result.output
    assert set(json.loads(result.stdout)["ner"]["per_label"]) >= {"problem"}
    # a value the reader cannot take, and defaults for a reader without them: the user's flags
    for flag in (["--reader-option", "label=[1, 2]"], ["--default-attribute", "x=1"]):
        bad = CliRunner().invoke(main, [*args, *flag])
        assert bad.exit_code == 2, bad.output
        assert bad.stderr.startswith(f"error: {flag[0]}: "), bad.stderr
    bad = CliRunner().invoke(main, [*args, "--reader-option", "labl=problem"])
    assert bad.exit_code == 2
    assert bad.stderr == (
        "error: --reader-option: reader option 'labl': the standoff_label_as_attribute reader "
        "takes attribute, label\n"
    )
