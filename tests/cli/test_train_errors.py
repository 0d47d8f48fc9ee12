"""Bad recipes: one line on stderr naming the key path, exit 2, no traceback, nothing written."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
from click.testing import CliRunner

from pureml.cli import main

CASES = [
    # (replace old -> new in the tiny recipe, extra args, expected start of the message)
    (
        {"max_steps = 4": "max_stepz = 4"},
        [],
        "train.max_stepz: unknown key (did you mean 'max_steps'? expected one of:",
    ),
    (
        {"width = 16": 'width = "forty"'},
        [],
        "nlp.components.embedding.width: expected int, got 'forty'",
    ),
    (
        {'factory = "ner_crf"': 'factory = "ner_crff"'},
        [],
        "nlp.components.ner.factory: unknown component factory 'ner_crff'",
    ),
    (
        {"depth = 1": "depth = 1\nwindoww = 3"},
        [],
        "nlp.components.embedding.windoww: unknown key for component 'scratch_encoder'",
    ),
    (
        {'batch_size = "300 words"': 'batch_size = "300 wordz"'},
        [],
        "train_data.notes.batch_size: unknown stat 'wordz'",
    ),
    (
        {'batch_size = "300 words"': 'batch_size = "three words"'},
        [],
        "train_data.notes.batch_size: stat expression 'three words'",
    ),
    (
        {'batch_size = "300 words"': 'batch_size = "300 words"\npipe_names = ["nerr"]'},
        [],
        "train_data.notes.pipe_names[0]: unknown component 'nerr'",
    ),
    (
        {"max_steps = 4": "max_steps = -4"},
        [],
        "train.max_steps: expected a positive number, got -4",
    ),
    ({}, ["--set", "train.max_stepz=3"], "train.max_stepz: no such key to override"),
    (
        {},
        ["--set", "nlp.components.ner.dropout=high"],
        "nlp.components.ner.dropout: expected float, got 'high'",
    ),
    (
        {'factory = "adamw"': 'factory = "adamz"'},
        [],
        "optimizer.factory: unknown optimizer factory 'adamz'",
    ),
    (
        {"learning_rate = 3e-3": 'learning_rate = "3e-3"'},
        [],
        "optimizer.learning_rate: expected float, got '3e-3'",
    ),
    (
        {"learning_rate = 3e-3": 'learning_rate = 3e-3\n[optimizer.groups."^ner"]\nlr = "1e-3"'},
        [],
        "optimizer.groups.\"^ner\".lr: expected float, got '1e-3'",
    ),
    (
        {"learning_rate = 3e-3": 'learning_rate = 3e-3\n[optimizer.groups."^ner"]\nlrr = 1e-3'},
        [],
        "optimizer.groups.\"^ner\".lrr: unknown key for a parameter group of 'adamw' "
        "(did you mean 'lr'? expected one of: lr, schedule, name, optional, learning_rate, b1, b2, "
        "eps, weight_decay)",
    ),
    (
        {'embedding = "embedding"': 'embedding = "embeddin"'},
        [],
        "nlp.components.ner.embedding: unknown component 'embeddin' (components: embedding, ner)",
    ),
    (
        {'embedding = "embedding"': 'embedding = "ner"'},
        [],
        "nlp.components.ner.embedding: component 'ner' cannot use itself",
    ),
    (
        {},
        ["--set", "train.best_metric=ner//f1"],
        "train.best_metric: expected a score path like 'ner/micro/f1' (or a list of them), got 'ner//f1'",
    ),
    # a component's constructor or initialisation refusing a value: its key path, before the
    # run folder (a dropout rate was refused only by the first training step)
    (
        {},
        ["--set", "nlp.components.embedding.dropout=1.5"],
        "nlp.components.embedding.dropout: expected a rate in [0, 1), got 1.5",
    ),
    (
        {},
        ["--set", "nlp.components.embedding.width=-3"],
        "nlp.components.embedding.width: Trying to create tensor with negative dimension -3",
    ),
    (
        {
            "width = 16\ndepth = 1\nrows = [500, 100, 250, 100]": 'model = "no-such-model"',
            "scratch_encoder": "hf_transformer",
        },
        [],
        "nlp.components.embedding.model: no Hugging Face model config at no-such-model/config.json",
    ),
    (  # post_init: an attribute no training span has (the span classifier's own words follow)
        {
            'embedding = "embedding"\n': 'embedding = "embedding"\n\n[nlp.components.qualif]\n'
            'factory = "span_classifier"\nembedding = "embedding"\nattributes = ["Negatoin"]\n'
        },
        [],
        "error: nlp.components.qualif: ",
    ),
    (  # the keys a schedule takes, max included (the trainer fills it in when left out)
        {},
        ["--set", 'optimizer.schedule={factory="linear",warmup=0.1}'],
        "optimizer.schedule.warmup: unknown key for schedule 'linear' (did you mean "
        "'warmup_rate'? expected one of: start, max, end, warmup_rate, total_steps)",
    ),
    (
        {},
        ["--set", "optimizer.total_steps=10"],
        "optimizer.total_steps: set by the trainer for optimizer 'adamw': leave it out",
    ),
    ({"[train]": "[train"}, [], "invalid TOML"),
    ({'logger = ["json"]': 'logger = ["jsn"]'}, [], "train.logger[0]: unknown logger 'jsn'"),
]


@pytest.mark.parametrize("replace, args, message", CASES)
def test_bad_recipe_is_one_line_and_writes_nothing(tiny_recipe, tmp_path, replace, args, message):
    recipe = tiny_recipe(**replace)
    result = CliRunner().invoke(main, ["train", str(recipe), *args])
    assert result.exit_code == 2, result.output
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    assert message in lines[0], lines[0]
    assert "Traceback" not in result.output
    assert not (tmp_path / "out").exists()


def test_best_metric_without_validation_or_with_a_typo_is_one_line(tiny_recipe, tmp_path, corpus):
    from training.tiny_recipes import tiny_template, write_recipe

    no_val = write_recipe(tiny_template(validate=False), tmp_path, corpus, tmp_path / "out")
    result = CliRunner().invoke(
        main, ["train", str(no_val), "--set", "train.best_metric=ner/micro/f1"]
    )
    assert result.exit_code == 2, result.output
    assert result.stderr == "error: train.best_metric: needs a [val_data] table to score\n"
    assert not (tmp_path / "out").exists()
    # the scores' names are known at the first validation only: the run stops there, and the
    # same command with the key fixed resumes it
    result = CliRunner().invoke(
        main, ["train", str(tiny_recipe()), "--set", "train.best_metric=ner/micro/f"]
    )
    assert result.exit_code == 2, result.output
    assert result.stderr.splitlines()[-1] == (
        "error: train.best_metric: no score 'ner/micro/f' in the validation scores; "
        "did you mean 'ner/micro/f1'?"
    )
    # its steps are kept: the fixed command resumes at the step that failed
    assert [p.name for p in (tmp_path / "out" / "checkpoints").iterdir()] == ["step-000002"]
    result = CliRunner().invoke(
        main, ["train", str(tiny_recipe()), "--set", "train.best_metric=ner/micro/f1"]
    )
    assert result.exit_code == 0, result.output
    assert "resuming from" in result.stderr
    assert (tmp_path / "out" / "model-best").is_dir()
    assert "model-best: step 4" in result.stderr


def test_missing_data_path(tiny_recipe, tmp_path):
    recipe = tiny_recipe(
        text=(
            '[nlp.components.embedding]\nfactory = "scratch_encoder"\n'
            '[nlp.components.ner]\nfactory = "ner_crf"\n'
            '[train_data.main]\ndata = { factory = "standoff", path = "/nonexistent/train" }\n'
            f'[train]\noutput_dir = "{tmp_path / "out"}"\n'
        )
    )
    result = CliRunner().invoke(main, ["train", str(recipe)])
    assert result.exit_code == 2
    assert result.stderr.strip() == (
        "error: train_data.main.data.path: no such file or folder: '/nonexistent/train'"
    )
    assert not (tmp_path / "out").exists()


def test_python_m_pureml_train_and_debug(tiny_recipe, tmp_path):
    """The real entry point: one line without --debug, the traceback with it."""
    recipe = tiny_recipe(**{"width = 16": 'width = "forty"'})
    env = {**os.environ, "PYTHONWARNINGS": "ignore"}
    cmd = [sys.executable, "-m", "pureml.train", str(recipe)]
    plain = subprocess.run(cmd, capture_output=True, text=True, env=env)
    assert plain.returncode == 2
    assert plain.stderr == ("error: nlp.components.embedding.width: expected int, got 'forty'\n")
    debug = subprocess.run([*cmd, "--debug"], capture_output=True, text=True, env=env)
    assert debug.returncode != 0 and "Traceback" in debug.stderr
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("key", ["output_dir", "output_model_dir"])
@pytest.mark.parametrize("below", ["", "/sub"])
def test_output_folder_that_is_a_file(tiny_recipe, tmp_path, key, below):
    """A file where the run folder (or one of its parents) should be: the key path, exit 2."""
    recipe = tiny_recipe()
    taken = tmp_path / "taken"
    taken.write_text("not a folder\n")
    result = CliRunner().invoke(
        main, ["train", str(recipe), "--set", f"train.{key}={taken}{below}"]
    )
    assert result.exit_code == 2, result.output
    assert result.stderr == f"error: train.{key}: {str(taken)!r} is a file, not a folder\n"
    assert taken.read_text() == "not a folder\n"
    assert not (tmp_path / "out").exists()


def test_empty_output_dir_writes_nothing_in_the_working_directory(
    tiny_recipe, tmp_path, monkeypatch
):
    """``--set train.output_dir=$OUT`` with OUT unset is "": refused, not a run in the cwd."""
    recipe = tiny_recipe()
    cwd = tmp_path / "cwd"
    cwd.mkdir()
    monkeypatch.chdir(cwd)
    result = CliRunner().invoke(main, ["train", str(recipe), "--set", "train.output_dir="])
    assert result.exit_code == 2, result.output
    assert result.stderr == "error: train.output_dir: expected a folder path, got ''\n"
    assert list(cwd.iterdir()) == []


NER = '[nlp.components.embedding]\nfactory = "scratch_encoder"\n[nlp.components.ner]\n'
NER += 'factory = "ner_crf"\nembedding = "embedding"\n'


@pytest.mark.parametrize(
    "body, message",
    [
        (NER + "[train_data]\n", "train_data: no training stream (add a [train_data.NAME] table)"),
        (
            "[nlp.components]\n[train_data.notes]\ndata = {{ factory = 'standoff', path = '{data}' }}\n",
            "nlp.components: no components (add a [nlp.components.NAME] table)",
        ),
        (
            NER + "[train_data.notes]\ndata = {{ factory = 'standoff', path = '{data}' }}\n"
            "pipe_names = []\n",
            "train_data.notes.pipe_names: names no component (leave it out to feed them all)",
        ),
    ],
)
def test_recipe_that_trains_nothing_is_bad_input(tiny_recipe, tmp_path, corpus, body, message):
    """No stream, no component, or a stream feeding none: exit 2 and the key path, not exit 1
    and 'ValueError: ... (rerun with --debug)'."""
    out = tmp_path / "out"
    text = body.format(data=corpus / "train") + f'[train]\noutput_dir = "{out}"\n'
    result = CliRunner().invoke(main, ["train", str(tiny_recipe(text=text))])
    assert result.exit_code == 2, result.output
    assert result.stderr == f"error: {message}\n"
    assert not out.exists()


def test_bad_validation_file_touches_no_run_folder(tiny_recipe, tmp_path, corpus):
    """A broken val_data document is found before the output folder is created or cleared."""
    import shutil

    dev = tmp_path / "dev"
    shutil.copytree(corpus / "dev", dev)
    ann = sorted(dev.glob("*.ann"))[0]
    ann.write_text("T1\tproblem 0 3\tzzz\n")
    recipe = tiny_recipe(
        **{
            'factory = "quickstart_corpus"\npath = "${paths.corpus}"\nsplit = "dev"\n'
            "n_train = 40\nn_dev = 10\n": f'factory = "standoff"\npath = "{dev}"\n'
        }
    )
    out = tmp_path / "out"
    result = CliRunner().invoke(main, ["train", str(recipe)])
    assert result.exit_code == 2, result.output
    assert result.stderr.startswith(f"error: {ann}:1: T1 text 'zzz' does not match"), result.stderr
    assert len(result.stderr.splitlines()) == 1
    assert not out.exists(), sorted(out.rglob("*"))
    # an earlier run's folder is neither cleared (--restart) nor rewritten
    out.mkdir()
    (out / "config.toml").write_text("# an earlier run\n")
    (out / "metrics.jsonl").write_text("{}\n")
    again = CliRunner().invoke(main, ["train", str(recipe), "--restart"])
    assert again.exit_code == 2 and again.stderr == result.stderr
    assert sorted(p.name for p in out.iterdir()) == ["config.toml", "metrics.jsonl"]
    assert (out / "config.toml").read_text() == "# an earlier run\n"


def test_run_folder_in_use_by_another_run_is_refused(tiny_recipe, tmp_path):
    """A second run into a folder a live run writes to would interleave their files: refused
    (exit 2), the folder untouched, even with --restart; once the lock is free, it runs."""
    from pureml.training.checkpoint import lock_run_dir

    recipe = tiny_recipe()
    out = tmp_path / "out"
    out.mkdir()
    (out / "metrics.jsonl").write_text("{}\n")  # the live run's
    held = lock_run_dir(out)  # as a live run holds it (a lock is per open file, not per process)
    try:
        result = CliRunner().invoke(main, ["train", str(recipe), "--restart"])
    finally:
        os.close(held)
    assert result.exit_code == 2, result.output
    assert result.stderr == (
        f"error: {out} is in use by another run (a live process holds its lock): wait for it to "
        "end or stop it, or choose another train.output_dir\n"
    )
    assert sorted(p.name for p in out.iterdir()) == ["metrics.jsonl"]
    assert (out / "metrics.jsonl").read_text() == "{}\n"
    again = CliRunner().invoke(main, ["train", str(recipe)])
    assert again.exit_code == 0, again.output
    assert (out / "model-last").is_dir()


def test_python_m_pureml_train_takes_dash_h_like_pureml_train():
    from pureml.cli import train_main

    result = CliRunner().invoke(train_main, ["-h"])
    assert result.exit_code == 0, result.output
    assert "--set KEY=VALUE" in result.stdout and "-h, --help" in result.stdout


@pytest.mark.parametrize("compiled", [False, True])
def test_stream_feeding_no_loss_names_its_pipe_names(tiny_recipe, compiled):
    """A stream whose pipe_names hold only the embedding: no component computes a loss. The
    first step finds it; compiled, torch.compile reported it as an 'Unsupported: Observed
    exception' page, exit 1. Now: exit 2 and the stream's key path, compiled or not."""
    recipe = tiny_recipe(
        **{'batch_size = "300 words"': 'batch_size = "300 words"\npipe_names = ["embedding"]'}
    )
    args = (
        ["--set", "train.compile=true", "--set", "train.compile_backend=eager"] if compiled else []
    )
    result = CliRunner().invoke(main, ["train", str(recipe), *args])
    assert result.exit_code == 2, result.output
    assert result.stderr == (
        "error: train_data.notes.pipe_names: none of ['embedding'] computes a loss from its "
        "batches; name a component with targets (a ner_crf, a span_classifier) there\n"
    )


def _run_stopped_at_step_3(tmp_path, corpus):
    """A 4-step run over a copy of the corpus's brat training folder, checkpointed at step 2
    and as if killed at step 3: (its training folder, its recipe)."""
    import shutil

    from training.tiny_recipes import tiny_template

    train_dir = tmp_path / "corpus" / "train"
    shutil.copytree(corpus / "train", train_dir)
    template = tiny_template(
        reader="standoff", validate=False, max_steps=4, checkpoint_interval=2, logger=["json"]
    )
    recipe = tmp_path / "recipe.toml"
    recipe.write_text(template.format(corpus=tmp_path / "corpus", out=tmp_path / "out"))
    first = CliRunner().invoke(main, ["train", str(recipe)])
    assert first.exit_code == 0, first.output
    shutil.rmtree(tmp_path / "out" / "checkpoints" / "step-000004")
    return train_dir, recipe


def test_resuming_after_the_training_docs_changed_names_the_stream_and_the_fix(tmp_path, corpus):
    # the stream's own message did not say which stream, nor that --restart starts over
    train_dir, recipe = _run_stopped_at_step_3(tmp_path, corpus)
    for txt in sorted(train_dir.glob("*.txt"))[:5]:
        txt.unlink()
        txt.with_suffix(".ann").unlink()
    again = CliRunner().invoke(main, ["train", str(recipe)])
    assert again.exit_code == 2, again.output
    error = again.stderr.splitlines()[-1]  # after "resuming from ... (step 2)"
    assert error.startswith("error: train_data.notes: the training data changed since checkpoint ")
    assert "saved 40 items" in error and "this stream has 35 items" in error
    assert error.endswith(
        "pass --restart (restart=True) to start over there, or choose another train.output_dir"
    )


def test_resuming_after_the_training_docs_changed_the_labels_names_them(tmp_path, corpus):
    # the 'drug' entities renamed 'problem': same recipe, same documents, one label fewer; the
    # resume failed on a tensor's shape ('params.ner.transitions': expected (9, 9), got (13, 13))
    train_dir, recipe = _run_stopped_at_step_3(tmp_path, corpus)
    for ann in train_dir.glob("*.ann"):
        ann.write_text(ann.read_text().replace("\tdrug ", "\tproblem "))
    again = CliRunner().invoke(main, ["train", str(recipe)])
    assert again.exit_code == 2, again.output
    assert again.stderr.splitlines()[-1] == (
        "error: nlp.components.ner.labels: ['drug', 'problem', 'test'] in checkpoint "
        "step-000002, ['problem', 'test'] now, inferred from the training docs, which changed "
        "since: pass --restart (restart=True) to start over there, or choose another "
        "train.output_dir"
    )
