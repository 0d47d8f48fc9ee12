"""Loggers: the CSV files' columns; TensorBoard and ``pureml plot`` on real files of a tiny run.

CI installs the ``tensorboard`` and ``plot`` extras; without them these tests are skipped, and
the missing-extra messages are checked by hiding the modules in-process.
"""

from __future__ import annotations

import csv
import io
import json
import shutil
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner

from pureml.cli import main
from pureml.training.loggers import (
    CsvLogger,
    JsonLogger,
    ProgressLogger,
    TensorBoardLogger,
    tensorboard_available,
)

from .tiny_recipes import run, tiny_template, write_recipe

# 20 steps, validated and checkpointed at 10 and 20: two tiny runs cost a few seconds each
RECIPE = tiny_template(
    max_steps=20, validation_interval=10, checkpoint_interval=10, logger=["json", "tensorboard"]
)
assert 'logger = ["json", "tensorboard"]' in RECIPE and "max_steps = 20" in RECIPE
F1 = "validation/ner/micro/f1"


def metrics(out: Path) -> list[dict]:
    return [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]


def scalars(out: Path) -> dict[str, list[tuple[int, float]]]:
    """Every scalar tag as EventAccumulator (what TensorBoard shows) reads it: (step, value)."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(out / "tensorboard"), size_guidance={"scalars": 0})  # 0: keep all
    acc.Reload()
    return {tag: [(e.step, e.value) for e in acc.Scalars(tag)] for tag in acc.Tags()["scalars"]}


@pytest.fixture(scope="module")
def trained(tmp_path_factory, corpus) -> Path:
    pytest.importorskip("tensorboard")
    folder = tmp_path_factory.mktemp("tb")
    run(write_recipe(RECIPE, folder, corpus, folder / "out"))
    return folder / "out"


def test_tensorboard_scalars_match_metrics_jsonl(trained):
    rows = metrics(trained)
    tb = scalars(trained)
    assert [s for s, _ in tb["loss"]] == [r["step"] for r in rows] == list(range(1, 21))
    for (step, value), row in zip(tb["loss"], rows):
        assert value == pytest.approx(row["loss"], rel=1e-6, abs=1e-7), step  # stored as float32
    validated = [
        (r["step"], r["validation"]["ner"]["micro"]["f1"]) for r in rows if "validation" in r
    ]
    assert [s for s, _ in validated] == [10, 20]
    assert [s for s, _ in tb[F1]] == [10, 20]
    for (_, value), (_, f1) in zip(tb[F1], validated):
        assert value == pytest.approx(f1, rel=1e-6, abs=1e-7)
    assert {"grad_norm", "lr/default", "validation/ner/micro/p", "timing/step_s"} <= set(tb)


def test_resume_does_not_duplicate_tensorboard_steps(trained, tmp_path, corpus):
    out = tmp_path / "out"
    shutil.copytree(trained, out)
    # as if killed after step 20 was logged but before its checkpoint: resume from step 10
    shutil.rmtree(out / "checkpoints" / "step-000020")
    assert [s for s, _ in scalars(out)["loss"]][-1] == 20  # steps 11..20 are on disk already
    again = run(write_recipe(RECIPE, tmp_path, corpus, out))
    assert "step-000010" in again.stderr, again.stderr
    assert len(list((out / "tensorboard").iterdir())) == 2  # one event file per process
    tb = scalars(out)
    for tag in ("loss", F1):
        steps = [s for s, _ in tb[tag]]
        assert steps == sorted(set(steps)), (tag, steps)  # strictly increasing, no duplicates
    assert [s for s, _ in tb["loss"]] == list(range(1, 21))
    assert [s for s, _ in tb[F1]] == [10, 20]
    # the resumed run repeats the same steps (exact resume), so TensorBoard shows the same curve
    for (step, value), row in zip(tb["loss"], metrics(out)):
        assert value == pytest.approx(row["loss"], rel=1e-6, abs=1e-7), step


def test_plot_cli_writes_a_png(trained):
    pytest.importorskip("matplotlib")
    import matplotlib.image

    result = CliRunner().invoke(main, ["plot", str(trained)])
    assert result.exit_code == 0, result.output
    png = trained / "curves.png"
    assert result.stdout == f"{png}\n"
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    height, width, _ = matplotlib.image.imread(png).shape
    assert 300 <= height <= 2000 and 600 <= width <= 3000 and width > height


def test_plot_without_metrics_is_one_line_naming_the_folder(tmp_path):
    for folder in (tmp_path, tmp_path / "missing"):
        result = CliRunner().invoke(main, ["plot", str(folder)])
        assert result.exit_code == 2
        assert result.stderr == f"error: no metrics.jsonl in {folder}: is it a run folder?\n"


def test_plot_without_matplotlib_names_the_extra(tmp_path, monkeypatch):
    (tmp_path / "metrics.jsonl").write_text('{"step": 1, "loss": 1.0}\n')
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # None: import raises ImportError
    monkeypatch.setitem(sys.modules, "matplotlib.pyplot", None)
    result = CliRunner().invoke(main, ["plot", str(tmp_path)])
    assert result.exit_code == 1
    assert result.stderr.count("\n") == 1
    assert "pip install 'pureml[plot]'" in result.stderr
    assert not (tmp_path / "curves.png").exists()


def test_tensorboard_logger_without_the_extra_names_it(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", None)
    with pytest.raises(ImportError, match=r"pip install 'pureml\[tensorboard\]'"):
        TensorBoardLogger().start(tmp_path, 10, None)


def test_recipe_with_tensorboard_logger_without_the_extra_names_it(tmp_path, corpus, monkeypatch):
    monkeypatch.setitem(sys.modules, "tensorboard", None)
    assert not tensorboard_available()
    recipe = write_recipe(RECIPE, tmp_path, corpus, tmp_path / "out")
    result = CliRunner().invoke(main, ["train", str(recipe)])  # refused before any training
    assert result.exit_code == 2
    assert result.stderr.count("\n") == 1 and "train.logger[1]" in result.stderr
    assert "pip install 'pureml[tensorboard]'" in result.stderr
    assert not (tmp_path / "out" / "metrics.jsonl").exists()


def test_tensorboard_state_right_after_resume_keeps_the_purge_step(tmp_path):
    pytest.importorskip("tensorboard")
    logger = TensorBoardLogger()
    logger.start(tmp_path, 20, {"step": 11})  # resumed from the step-10 checkpoint
    try:
        assert logger.state() == {"step": 11}  # Ctrl-C before any new step: still purge from 11
        logger.log(11, {"loss": 1.0}, None, {})
        assert logger.state() == {"step": 12}
    finally:
        logger.close()


def test_log_weight_grads_logs_every_parameter_norm(tmp_path, corpus):
    recipe = RECIPE.replace("max_steps = 20", "max_steps = 3").replace(
        'logger = ["json", "tensorboard"]', 'logger = ["json"]\nlog_weight_grads = true'
    )
    assert "log_weight_grads = true" in recipe
    out = tmp_path / "out"
    run(write_recipe(recipe, tmp_path, corpus, out))
    from pureml.nlp.pipeline import load

    names = [k for k, _ in load(out / "model-last").named_parameters()]
    rows = metrics(out)
    assert len(rows) == 3
    for row in rows:
        grads = {k[len("grad_norm/") :]: v for k, v in row.items() if k.startswith("grad_norm/")}
        weights = {k[len("weight_norm/") :] for k in row if k.startswith("weight_norm/")}
        assert set(grads) == set(names) == weights
        assert all(v >= 0 for v in grads.values()) and any(v > 0 for v in grads.values())
        # the global norm is the norm of the per-parameter norms
        total = sum(v * v for v in grads.values()) ** 0.5
        assert total == pytest.approx(row["grad_norm"], rel=1e-4)


# Two phases as the trainer logs them: each its own losses and learning rates, and validation
# scores of the components trained so far.
PHASES = [
    (1, {"loss": 2.5, "loss/ner": 2.5, "lr/default": 1e-3, "grad_norm": 3.0}, None),
    (
        2,
        {"loss": 2.25, "loss/ner": 2.25, "lr/default": 2e-3, "grad_norm": 2.0},
        {"ner": {"f1": 0.5}},
    ),
    (3, {"loss": 1.5, "loss/status": 1.5, "lr/status": 3e-3, "grad_norm": 1.0}, None),
    (4, {"loss": 1.25, "loss/status": 1.25, "lr/status": 4e-3}, {"status": {"f1": 0.75}}),
]


def csv_rows(path: Path) -> tuple[list[str], list[dict[str, str]]]:
    with open(path, newline="") as f:
        reader = csv.DictReader(f)
        return list(reader.fieldnames or []), list(reader)


def log_steps(logger, steps) -> None:
    for step, metrics, validation in steps:
        logger.log(step, metrics, validation, {})


def test_csv_has_a_column_for_every_key_of_every_row(tmp_path):
    loggers = [CsvLogger(), JsonLogger()]
    for lg in loggers:
        lg.start(tmp_path, 4, None)
    for lg in loggers:
        log_steps(lg, PHASES)
    for lg in loggers:
        lg.close()
    header, rows = csv_rows(tmp_path / "metrics.csv")
    assert header == [
        "step", "loss", "loss/ner", "lr/default", "grad_norm", "loss/status", "lr/status"
    ]  # fmt: skip
    assert [r["step"] for r in rows] == ["1", "2", "3", "4"]
    # every value of metrics.jsonl in its column; a key a step did not log: an empty cell
    for row, line in zip(rows, metrics(tmp_path), strict=True):
        line.pop("validation", None)
        assert {k: v for k, v in row.items() if v != ""} == {k: str(v) for k, v in line.items()}
    header, rows = csv_rows(tmp_path / "validation.csv")
    assert header == ["step", "ner/f1", "status/f1"]
    assert rows == [
        {"step": "2", "ner/f1": "0.5", "status/f1": ""},
        {"step": "4", "ner/f1": "", "status/f1": "0.75"},
    ]


@pytest.mark.parametrize("checkpoint_after", [0, 1, 2, 3])
def test_csv_resume_cuts_back_a_widened_file_and_ends_as_uninterrupted(tmp_path, checkpoint_after):
    ref, out = tmp_path / "ref", tmp_path / "out"
    logger = CsvLogger()
    logger.start(ref, 4, None)
    log_steps(logger, PHASES)
    logger.close()
    # a run checkpointed after some step, then killed after the later phase widened the files
    logger = CsvLogger()
    logger.start(out, 4, None)
    log_steps(logger, PHASES[:checkpoint_after])
    names = ("metrics.csv", "validation.csv")
    state = json.loads(json.dumps(logger.state()))  # as the checkpoint's meta.json keeps it
    at_checkpoint = {n: (out / n).read_bytes() for n in names}
    log_steps(logger, PHASES[checkpoint_after:])
    logger.close()
    assert csv_rows(out / "metrics.csv")[0][-1] == "lr/status"
    resumed = CsvLogger()
    resumed.start(out, 4, state)
    assert {n: (out / n).read_bytes() for n in names} == at_checkpoint
    log_steps(resumed, PHASES[checkpoint_after:])
    resumed.close()
    for n in names:
        assert (out / n).read_bytes() == (ref / n).read_bytes(), n


def test_csv_resume_from_a_byte_length_of_an_earlier_checkpoint(tmp_path):
    # checkpoints written before rows were counted recorded the file's length in bytes
    logger = CsvLogger()
    logger.start(tmp_path, 4, None)
    log_steps(logger, PHASES[:2])
    logger.state()
    before = (tmp_path / "metrics.csv").read_bytes()
    log_steps(logger, PHASES[2:])
    logger.close()
    legacy = {
        "offset": len(before),
        "columns": ["step", "loss", "loss/ner", "lr/default", "grad_norm"],
    }
    resumed = CsvLogger()
    resumed.start(tmp_path, 4, {"metrics.csv": legacy})
    try:
        assert (tmp_path / "metrics.csv").read_bytes() == before
        assert resumed.state()["metrics.csv"] == {"rows": 2, "columns": legacy["columns"]}
    finally:
        resumed.close()


def test_csv_resume_without_the_checkpoint_rows_names_the_file(tmp_path):
    logger = CsvLogger()
    logger.start(tmp_path, 4, None)
    log_steps(logger, PHASES)
    state = logger.state()
    logger.close()
    header = (tmp_path / "metrics.csv").read_text().splitlines()[0]
    (tmp_path / "metrics.csv").write_text(header + "\n")
    with pytest.raises(FileNotFoundError, match=r"metrics.csv is shorter \(0 rows\) than at the"):
        CsvLogger().start(tmp_path, 4, state)
    (tmp_path / "metrics.csv").write_text("step,loss\n1,2.5\n")
    with pytest.raises(ValueError, match=r"metrics.csv: no column 'loss/ner'"):
        CsvLogger().start(tmp_path, 4, state)
    (tmp_path / "metrics.csv").unlink()
    with pytest.raises(FileNotFoundError, match=r"metrics.csv is missing"):
        CsvLogger().start(tmp_path, 4, state)


class _Tty(io.StringIO):
    def isatty(self) -> bool:
        return True


@pytest.mark.parametrize("name", ["progress", "rich"])  # rich: EDS-NLP's name, same display
def test_progress_lines_on_a_file_and_a_live_bar_on_a_terminal(name, tmp_path):
    from pureml import registry

    metrics = {"loss": 0.5, "lr/default": 3e-4, "grad_norm": 1.25}
    file_like, tty = io.StringIO(), _Tty()
    for stream in (file_like, tty):
        lg = registry.loggers.get(name)(stream=stream, width=10)
        lg.start(tmp_path, 40, None)
        for step in range(1, 41):
            validation = {"ner": {"micro": {"f1": 0.75}}} if step == 20 else None
            lg.log(step, metrics, validation, {"words_per_s": 1500.0})
        lg.message("saved")
        lg.close()
    # not a terminal: a line every 5% of the steps (every 2 here), then the message
    lines = file_like.getvalue().splitlines()
    assert [line.split()[1] for line in lines[:-1]] == [f"{s}/40" for s in range(2, 41, 2)]
    assert lines[9].startswith("step 20/40 [#####-----]  loss 0.5  lr 3.00e-04  gnorm 1.25")
    assert "1.5k words/s" in lines[9] and "f1 0.7500" in lines[9] and "f1" not in lines[8]
    assert lines[-1] == "saved"
    # a terminal: one line redrawn in place, kept after a validation and before a message
    text = tty.getvalue()
    assert text.count("\r\x1b[2K") == 40
    assert text.count("\n") == 3 and "step 20/40" in text.split("\n")[0].split("\r\x1b[2K")[-1]
    assert text.endswith("\nsaved\n")


def test_progress_line_keeps_the_last_score_across_a_resume(tmp_path):
    from pureml.training.loggers import ProgressLogger

    before = ProgressLogger(stream=io.StringIO())
    before.start(tmp_path, 40, None)
    before.log(10, {"loss": 0.5}, {"ner": {"micro": {"f1": 0.75}}}, {})
    saved = json.loads(json.dumps(before.state()))  # as the checkpoint keeps it
    after = ProgressLogger(stream=io.StringIO())
    after.start(tmp_path, 40, saved)  # resumed from step 10: no validation before step 20
    after.log(12, {"loss": 0.4}, None, {})
    assert "ner f1 0.7500" in after.stream.getvalue()


def test_plot_of_a_one_step_run_shows_its_loss(tmp_path):
    pytest.importorskip("matplotlib")
    import matplotlib.image
    import numpy as np

    from pureml.training.plot import plot_run

    (tmp_path / "metrics.jsonl").write_text('{"step": 1, "loss": 3.0}\n')
    pixels = matplotlib.image.imread(plot_run(tmp_path))[..., :3]
    loss_panel = pixels[:, : pixels.shape[1] // 2]
    blue = np.abs(loss_panel - np.array([0x1F, 0x77, 0xB4]) / 255).max(axis=-1) < 0.05  # C0
    assert blue.sum() > 20  # the point is drawn, not an empty panel


def test_log_interval_logs_every_nth_step_and_the_last(tmp_path, corpus):
    from .tiny_recipes import tiny_pipeline, train_tiny

    out = tmp_path / "out"
    train_tiny(tiny_pipeline(), corpus / "train", out, max_steps=5, log_interval=2)  # no val_data
    assert [r["step"] for r in metrics(out)] == [2, 4, 5]


def test_a_logger_instance_from_python_takes_the_options_the_reference_lists(corpus, tmp_path):
    # README's logger reference: a recipe names loggers, Python passes instances with options
    from .tiny_recipes import tiny_pipeline, train_tiny

    out = io.StringIO()
    train_tiny(
        tiny_pipeline(),
        corpus / "train",
        tmp_path / "run",
        logger=[ProgressLogger(stream=out, width=7)],
    )
    bars = [line for line in out.getvalue().splitlines() if line.startswith("step 6/6 ")]
    assert bars and "[" + "#" * 7 + "]" in bars[-1]
