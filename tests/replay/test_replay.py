"""Replaying recorded steps: bitwise equal from every checkpoint, and mismatches are caught."""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

from click.testing import CliRunner
from training.tiny_recipes import write_recipe

from pureml.replay import RebuiltRun, replay
from pureml.replay.cli import main as replay_cli

from .conftest import records, train


def test_every_step_1_to_60_replays_bitwise_from_checkpoints_every_20(quick_run: Path) -> None:
    assert [p.name for p in sorted((quick_run / "checkpoints").iterdir())] == [
        "step-000020",
        "step-000040",
        "step-000060",
    ]
    run = RebuiltRun(quick_run)  # built once: three replays in one process
    replayed, starts = [], []
    for target in (20, 40):
        report = replay(quick_run, target, run=run)
        assert report.ok, report.first_mismatch
        replayed += [c.step for c in report.steps]
        starts.append(report.start)
    # the last stretch through the command line, as a user runs it
    result = CliRunner().invoke(replay_cli, ["replay", str(quick_run), "--step", "60"])
    assert result.exit_code == 0, result.output
    assert "from step-000040" in result.output
    assert "all 20 steps (41..60) match the record bit for bit" in result.output
    lines = [ln for ln in result.output.splitlines() if ln.startswith("step ")]
    replayed += [int(ln.split()[1]) for ln in lines]
    assert all("  ok  " in ln for ln in lines)
    assert starts == ["the initial state", "checkpoint step-000020"]
    assert replayed == list(range(1, 61))
    # parameter fingerprints were part of the check (every 10 steps)
    assert [r["step"] for r in records(quick_run) if "params" in r] == [10, 20, 30, 40, 50, 60]


def _copy_run(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst, ignore=shutil.ignore_patterns("model-last"))
    return dst


def test_a_changed_record_is_the_first_mismatch_and_exits_nonzero(quick_run, tmp_path) -> None:
    run = _copy_run(quick_run, tmp_path / "run")
    lines = (run / "steps.jsonl").read_text().splitlines()
    rec = json.loads(lines[42])  # step 43
    true_norm = rec["grad_norm"]
    rec["grad_norm"] = float.fromhex(true_norm).__add__(1e-7).hex()
    lines[42] = json.dumps(rec)
    (run / "steps.jsonl").write_text("\n".join(lines) + "\n")
    result = CliRunner().invoke(replay_cli, ["replay", str(run), "--step", "45", "-q"])
    assert result.exit_code == 1, result.output
    assert "first mismatch at step 43:" in result.output
    assert f"grad_norm: recorded {float.fromhex(rec['grad_norm']):.9g}" in result.output
    assert true_norm in result.output  # the replayed value is the original one
    assert "step 44" not in result.output  # stopped at the first mismatch


def test_unrecorded_step_is_an_input_error(quick_run) -> None:
    result = CliRunner().invoke(replay_cli, ["replay", str(quick_run), "--step", "61"])
    assert result.exit_code == 2
    # one line, the error: nothing announced a replay that cannot start
    (line,) = result.output.splitlines()
    assert line.startswith("error: step 61 is not recorded")
    assert line.endswith("(recorded: 1..60)")


def test_pdb_stops_inside_the_step_in_eager_mode(multi_run, monkeypatch) -> None:
    calls = []

    def hook(*args, **kwargs):
        frame = sys._getframe(1)  # the loss wrapper, called by the step's gradient function
        calls.append(sorted(frame.f_locals))

    monkeypatch.setattr(sys, "breakpointhook", hook)
    report = replay(multi_run, 5, pdb=True)
    assert report.ok
    assert report.eager is not None
    # once per sub-batch of step 5 (the two streams' sub-batches), with the step's arguments
    n_subs = sum(s["sub_batches"] for s in records(multi_run)[4]["streams"].values())
    assert len(calls) == n_subs >= 2
    assert {"params", "buffers", "batch", "key"} <= set(calls[0])


# Two phases (two embeddings, each with its own head), float16: the loss scale goes on from
# phase 0 to phase 1, and checkpoint 4 ends phase 0.
TWO_PHASES_FP16 = """
[nlp.components.emb1]
factory = "scratch_encoder"
width = 16
depth = 1

[nlp.components.ner]
factory = "ner_crf"
embedding = "emb1"

[nlp.components.emb2]
factory = "scratch_encoder"
width = 16
depth = 1

[nlp.components.status]
factory = "span_classifier"
embedding = "emb2"
attributes = ["status"]

[train_data.notes]
data = {{ factory = "standoff", path = "{corpus}/train" }}
batch_size = "200 words"

[train]
max_steps = 4
checkpoint_interval = 2
validation_interval = 100
output_dir = "{out}"
compile = false
mixed_precision = "fp16"
threads = 1
logger = ["json"]
"""


def test_replay_crosses_into_the_next_phase_with_the_runs_loss_scale(tmp_path, corpus):
    out = tmp_path / "run"
    train(write_recipe(TWO_PHASES_FP16, tmp_path, corpus, out))
    scales = [r["loss_scale"] for r in map(json.loads, (out / "metrics.jsonl").open())]
    assert scales[4] < 2.0**16  # phase 1 started from phase 0's scale, not from scratch
    # from checkpoint 4 (phase 0's last step) into phase 1: a fresh scale would overflow
    result = CliRunner().invoke(replay_cli, ["replay", str(out), "--step", "6"])
    assert result.exit_code == 0, result.output
    assert "all 2 steps (5..6) match the record bit for bit" in result.output


def test_a_replay_rank_whose_peer_died_says_so(quick_run, monkeypatch) -> None:
    # under torchrun, a replay rank fails in a collective when another rank dies: gloo's words
    # alone read like this rank's own bug
    def lost(*args, **kwargs):
        raise RuntimeError("[pair.cc:553] Connection closed by peer [127.0.0.1]:9605\nmore")

    monkeypatch.setattr("pureml.replay.rebuild.RebuiltRun", lost)
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "1")
    result = CliRunner().invoke(replay_cli, ["replay", str(quick_run), "--step", "5"])
    assert result.exit_code == 3
    line = result.output.splitlines()[-1]
    assert line.startswith("error: rank 1: lost contact with the other ranks")
    assert line.endswith("Connection closed by peer [127.0.0.1]:9605")


def test_a_run_trained_from_python_without_a_recipe_says_why_it_cannot_replay(tmp_path):
    # the message said "runs/x/config.toml: not a run folder (no config.toml)" of a run folder
    import torch

    from pureml import TrainingData
    from pureml import train as train_py
    from pureml.nlp import NerCrf, Pipeline, ScratchEncoder
    from pureml.nlp.synthetic import make_corpus

    torch.manual_seed(0)
    nlp = Pipeline({"embedding": ScratchEncoder(width=8, depth=1), "ner": NerCrf()})
    run = tmp_path / "run"
    train_py(
        nlp,
        TrainingData(make_corpus(6, seed=1)),
        max_steps=2,
        compile=False,
        logger=False,
        save_model=False,
        output_dir=run,
    )
    result = CliRunner().invoke(replay_cli, ["replay", str(run), "--step", "2"])
    assert result.exit_code == 2
    (line,) = result.output.splitlines()
    assert line == (
        f"error: {run}: started from Python without a recipe (train() without recipe=): it has "
        "no config.toml, so it cannot be rebuilt for replay (pureml diff still compares its "
        "records)"
    )
    result = CliRunner().invoke(replay_cli, ["replay", str(tmp_path), "--step", "2"])
    assert (
        result.output == f"error: {tmp_path}: not a run folder (no config.toml, no steps.jsonl)\n"
    )
