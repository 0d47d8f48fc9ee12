"""Malformed recipes through the real CLI: exit 2, ONE line on stderr naming the key path (or the
TOML line), no traceback, and the output folder neither created nor touched.

tests/cli checks a dozen of these in-process (CliRunner); here each case is a separate CLI
process (see ``forkcli``), and runs twice: with no output folder (it must not appear) and with an
existing run folder (every path, size and mtime must be unchanged).
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from . import forkcli
from .conftest import KILL, write

REPO = Path(__file__).resolve().parents[2]  # run as the README shows: from the repository
# (id, text replacements in the tiny recipe, extra CLI args, what the one line must contain)
CASES = [
    ("unknown-top-level-table", {"[optimizer]": "[optimiser]"}, [], "optimiser: unknown key"),
    ("unknown-train-key", {"max_steps = 30": "max_stepz = 24"}, [], "train.max_stepz: unknown key"),
    (
        "unknown-component-key",
        {"depth = 1": "depth = 1\nwindoww = 3"},
        [],
        "nlp.components.embedding.windoww: unknown key for component 'scratch_encoder'",
    ),
    (
        "wrong-type-int",
        {"width = 16": 'width = "forty"'},
        [],
        "nlp.components.embedding.width: expected int, got 'forty'",
    ),
    ("wrong-type-bool", {"compile = false": 'compile = "no"'}, [], "train.compile: expected bool"),
    (
        "wrong-type-table",
        {
            '[val_data]\nfactory = "quickstart_corpus"': 'val_data = "dev"\n[val_data_x]\nfactory = 1'
        },
        [],
        "val_data",
    ),
    (
        "wrong-type-list",
        {'logger = ["json", "csv"]': 'logger = "json"'},
        [],
        "train.logger: expected list[str]",
    ),
    (
        "unknown-component-factory",
        {'factory = "ner_crf"': 'factory = "ner_crff"'},
        [],
        "nlp.components.ner.factory: unknown component factory 'ner_crff'",
    ),
    (
        "unknown-reader-factory",
        {'data = { factory = "quickstart_corpus"': 'data = { factory = "quickstart_corpuz"'},
        [],
        "train_data.notes.data.factory: unknown reader factory 'quickstart_corpuz'",
    ),
    (
        "unknown-optimizer-factory",
        {'factory = "adamw"': 'factory = "adamz"'},
        [],
        "optimizer.factory: unknown optimizer factory 'adamz'",
    ),
    (
        "unknown-schedule-factory",
        {'factory = "linear"': 'factory = "linearr"'},
        [],
        "optimizer.schedule.factory: unknown schedule factory 'linearr'",
    ),
    (
        "missing-factory",
        {'factory = "ner_crf"\n': ""},
        [],
        "nlp.components.ner.factory: missing required key",
    ),
    (
        "missing-train-data",
        {"[train_data.notes]\n": "[unused]\n"},
        [],
        "train_data: missing required key",
    ),
    (
        "missing-reader-data",
        {
            'data = { factory = "quickstart_corpus", path = "${paths.corpus}", split = "train", '
            "n_train = 40, n_dev = 10 }\n": ""
        },
        [],
        "train_data.notes.data: missing required key",
    ),
    (
        "unknown-stat",
        {'batch_size = "250 words"': 'batch_size = "250 wordz"'},
        [],
        "train_data.notes.batch_size: unknown stat 'wordz'",
    ),
    (
        "bad-stat-expression",
        {'batch_size = "250 words"': 'batch_size = "two hundred words"'},
        [],
        "train_data.notes.batch_size: stat expression",
    ),
    (
        "bad-sub-batch-expression",
        {'sub_batch_size = "2 splits"': 'sub_batch_size = "2 splitz"'},
        [],
        "train_data.notes.sub_batch_size",
    ),
    (
        "unknown-pipe-name",
        {'sub_batch_size = "2 splits"': 'sub_batch_size = "2 splits"\npipe_names = ["nerr"]'},
        [],
        "train_data.notes.pipe_names[0]: unknown component 'nerr'",
    ),
    ("zero-steps", {"max_steps = 30": "max_steps = 0"}, [], "train.max_steps: expected a positive"),
    (
        "negative-steps",
        {"max_steps = 30": "max_steps = -4"},
        [],
        "train.max_steps: expected a positive number, got -4",
    ),
    (
        "zero-checkpoint-interval",
        {"checkpoint_interval = 3": "checkpoint_interval = 0"},
        [],
        "train.checkpoint_interval: expected a positive number, got 0",
    ),
    (
        "bad-grad-dev-policy",
        {"threads = 1": 'threads = 1\ngrad_dev_policy = "skipp"'},
        [],
        "train.grad_dev_policy: expected one of",
    ),
    (
        "bad-regex-in-eds-default-group",
        {
            'factory = "adamw"\nlearning_rate = 3e-3\n': 'factory = "eds_default"\ntransformer = "(["\n',
            'schedule = { factory = "linear", warmup_rate = 0.1 }\n': "",
        },
        [],
        "optimizer: parameter group selector '([' is not a regex",
    ),
    (
        "bad-regex-in-optimizer-groups",
        {"threads = 1": 'threads = 1\n[optimizer.groups."^ner\\\\.(["]\nlr = 1e-3'},
        [],
        'optimizer.groups."^ner\\\\.([": not a regular expression',
    ),
    (
        "optimizer-group-not-a-table",
        {"threads = 1": 'threads = 1\n[optimizer.groups]\n"^ner" = 3'},
        [],
        'optimizer.groups."^ner": expected a table of options or false, got 3',
    ),
    (
        "loss-scale-of-unknown-component",
        {"threads = 1": "threads = 1\nloss_scales = { nerr = 2.0 }"},
        [],
        "train.loss_scales.nerr: unknown component 'nerr'",
    ),
    (
        "unknown-reference",
        {'path = "${paths.corpus}", split = "train"': 'path = "${paths.corpuz}", split = "train"'},
        [],
        "unknown reference ${paths.corpuz}",
    ),
    (
        "missing-data-path",
        {
            'data = { factory = "quickstart_corpus", path = "${paths.corpus}", split = "train", '
            "n_train = 40, n_dev = 10 }": 'data = { factory = "standoff", path = "/nonexistent/train" }'
        },
        [],
        "no such file or folder: '/nonexistent/train'",
    ),
    ("override-missing-key", {}, ["--set", "train.max_stepz=3"], "train.max_stepz: no such key"),
    (
        "override-missing-component",
        {},
        ["--set", "nlp.components.nerr.dropout=0.1"],
        "nlp.components.nerr",
    ),
    (
        "override-wrong-type",
        {},
        ["--set", "train.max_steps=ten"],
        "train.max_steps: expected int, got 'ten'",
    ),
    ("override-without-value", {}, ["--set", "train.max_steps"], "train.max_steps: an override"),
    (
        "override-zero-steps",
        {},
        ["--set", "train.max_steps=0"],
        "train.max_steps: expected a positive",
    ),
    ("invalid-toml-unclosed-table", {"[train]": "[train"}, [], "invalid TOML: "),
    (
        "invalid-toml-duplicate-key",
        {"max_steps = 30": "max_steps = 30\nmax_steps = 25"},
        [],
        "invalid TOML: ",
    ),
    ("invalid-toml-bad-value", {"width = 16": "width = 16 16"}, [], "invalid TOML: "),
]
TOML_LINE = {  # invalid TOML: the message names the line of the recipe
    "invalid-toml-unclosed-table": "[train",
    "invalid-toml-duplicate-key": "max_steps = 25",
    "invalid-toml-bad-value": "width = 16 16",
}


def snapshot(folder: Path) -> list[tuple[str, int, int]]:
    return sorted(
        (str(p.relative_to(folder)), p.stat().st_size, p.stat().st_mtime_ns)
        for p in folder.rglob("*")
    )


def fake_run_folder(out: Path) -> None:
    """What a previous run leaves: its recipe, logs, a checkpoint and a model."""
    (out / "checkpoints" / "step-000003").mkdir(parents=True)
    (out / "checkpoints" / "step-000003" / "trainer.json").write_text("{}")
    (out / "model-last").mkdir()
    (out / "model-last" / "model.safetensors").write_bytes(b"x" * 64)
    (out / "config.toml").write_text("[train]\n")
    (out / "metrics.jsonl").write_text('{"step": 1}\n')
    os.utime(out / "metrics.jsonl", ns=(10**18, 10**18))


def check_one_line(result: forkcli.Result, expected: str) -> str:
    assert result.code == 2, (result.code, result.stderr)
    assert "Traceback" not in result.stderr + result.stdout
    lines = result.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    assert expected in lines[0], lines[0]
    return lines[0]


@pytest.mark.parametrize("name, replace, args, expected", CASES, ids=[c[0] for c in CASES])
def test_bad_recipe_one_line_nothing_written(tmp_path, corpus, name, replace, args, expected):
    recipe = write(KILL, tmp_path, corpus, **replace)
    out = tmp_path / "out"
    line = check_one_line(forkcli.train(recipe, *args, cwd=tmp_path), expected)
    if name in TOML_LINE:
        lineno = recipe.read_text().splitlines().index(TOML_LINE[name]) + 1
        assert f"line {lineno}" in line and str(recipe) in line, line
    assert not out.exists(), sorted(out.rglob("*"))
    fake_run_folder(out)
    before = snapshot(out)
    again = forkcli.train(recipe, *args, cwd=tmp_path)
    assert check_one_line(again, expected) == line
    assert snapshot(out) == before


def test_recipe_names_only_registered_factories(tmp_path, corpus):
    """No import path, callable or module name reaches Python from a recipe: only the registry."""
    for factory in ("os.system", "pureml.nlp.ner_crf.NerCrf", "__import__", "builtins.eval"):
        recipe = write(KILL, tmp_path, corpus, **{'factory = "ner_crf"': f'factory = "{factory}"'})
        line = check_one_line(
            forkcli.train(recipe, cwd=tmp_path),
            f"nlp.components.ner.factory: unknown component factory '{factory}'",
        )
        assert "known: " in line and "ner_crf" in line
    assert not (tmp_path / "out").exists()


def test_recipe_that_is_not_utf8_or_missing(tmp_path, corpus):
    recipe = write(KILL, tmp_path, corpus)
    recipe.write_bytes(recipe.read_bytes().replace(b"width = 16", b"width = 16 # \xff\xfe"))
    check_one_line(forkcli.train(recipe, cwd=tmp_path), f"cannot read recipe {recipe}")
    check_one_line(
        forkcli.train(tmp_path / "nope.toml", cwd=tmp_path),
        f"recipe not found: {tmp_path / 'nope.toml'}",
    )
    assert not (tmp_path / "out").exists()


def test_cold_python_m_pureml_train_prints_one_line(tmp_path, corpus):
    """The genuine ``python -m pureml.train`` (no forkserver, no PYTHONWARNINGS): import-time
    warnings would be extra lines on stderr."""
    recipe = write(KILL, tmp_path, corpus, **{"[train]": "[train"})
    result = forkcli.exec_cli([str(recipe)], cwd=REPO)
    check_one_line(result, "invalid TOML")
    assert not (tmp_path / "out").exists()
