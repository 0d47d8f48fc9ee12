"""What the other ranks of a torchrun job say when one rank fails mid-run: one line naming them.

Rank 1 fails as it draws a batch (``PUREML_FAULT_RANK``, ``tests/faults/hooks.py``): it raises,
or it SIGKILLs itself (the OOM killer). Rank 0 then fails in that step's gradient all-reduce.
torchrun writes each rank's stderr to its own file (``--redirects 2``), so each line is
checked against the rank that printed it.
"""

from __future__ import annotations

import subprocess
import time
from pathlib import Path

import pytest
from torchrun_launch import clean_env, launcher
from training.tiny_recipes import tiny_template, write_recipe

from pureml.training import checkpoint as ckpt

ROOT = Path(__file__).resolve().parents[2]
HOOKED_TRAIN = ROOT / "tests" / "faults" / "hooked_train.py"
FAIL_AT = 5  # rank 1 fails after step 4, checkpointed (every 2 steps)


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> Path:
    from pureml.nlp.synthetic import write_corpus

    root = tmp_path_factory.mktemp("corpus")
    write_corpus(root, seed=0, splits={"train": 40, "dev": 10})
    return root


def _stderr(logs: Path, local_rank: int) -> str:
    (path,) = logs.glob(f"*/attempt_0/{local_rank}/stderr.log")
    return path.read_text()


def _launch(recipe: Path, logs: Path | None, **env: str) -> subprocess.CompletedProcess:
    """Two torchrun ranks of the hooked trainer (``PUREML_FAULT_RANK`` and friends in ``env``);
    with ``logs``, each rank's stderr goes to its own file there (read with ``_stderr``)."""
    redirect = ["--log-dir", str(logs), "--redirects", "2"] if logs is not None else []
    return subprocess.run(
        [*launcher(2), *redirect, str(HOOKED_TRAIN), str(recipe)],
        cwd=ROOT,
        env=clean_env(**env),
        capture_output=True,
        text=True,
        timeout=180,
    )


@pytest.mark.parametrize("how", ["raise", "kill"])
def test_survivor_says_in_one_line_that_another_rank_stopped(tmp_path, corpus, how):
    out, logs = tmp_path / "out", tmp_path / "logs"
    template = tiny_template(max_steps=30, checkpoint_interval=2, validation_interval=30)
    recipe = write_recipe(template, tmp_path, corpus, out)
    start = time.monotonic()
    proc = _launch(recipe, logs, PUREML_FAULT_RANK=f"1:{FAIL_AT}:{how}")
    assert time.monotonic() - start < 120
    assert proc.returncode != 0
    survivor, failed = _stderr(logs, 0), _stderr(logs, 1)
    errors = [line for line in survivor.splitlines() if line.startswith("error:")]
    # was: "error: RuntimeError: [.../gloo/transport/tcp/pair.cc:553] Connection closed by
    # peer [127.0.0.1]:9605. ..." (or "Read error ...: Connection reset by peer"), no rank named
    assert len(errors) == 1, survivor
    assert errors[0].startswith("error: rank 0: lost contact with the other ranks: another rank ")
    assert "by peer" in errors[0]  # the backend's own words, for diagnosis
    assert "Traceback" not in survivor
    if how == "raise":
        # the failing rank's own error, as it was
        assert f"error: RuntimeError: injected fault on rank 1 at step {FAIL_AT}" in failed
        assert "lost contact" not in failed
    else:
        assert "exitcode  : -9" in proc.stderr
    # rank 0 wrote the checkpoints; every one it left is whole, and no temporary is left behind
    saved = ckpt.list_checkpoints(out)
    assert saved, survivor
    for _, path in saved:
        ckpt.verify_dir(path)
    assert not list(out.rglob(".tmp*")) and not list(out.rglob(".*.tmp-*"))


def test_sigterm_to_one_rank_stops_every_rank_after_one_checkpoint(tmp_path, corpus):
    # Rank 1 alone gets SIGTERM while it draws the batch of step 5, during step 4. It used to
    # stop alone after step 4 (rank 1 writes nothing), and rank 0 went on into step 5's
    # all-reduce and died there: "lost contact", no checkpoint, the work since step 0 lost.
    out, logs = tmp_path / "out", tmp_path / "logs"
    template = tiny_template(max_steps=30, checkpoint_interval=30, validation_interval=30)
    recipe = write_recipe(template, tmp_path, corpus, out)
    proc = _launch(recipe, logs, PUREML_FAULT_RANK=f"1:{FAIL_AT}:term")
    assert proc.returncode != 0
    survivor = _stderr(logs, 0)
    assert "lost contact" not in survivor, survivor
    assert "a signal to another rank: checkpoint written at step 4" in survivor, survivor
    assert [step for step, _ in ckpt.list_checkpoints(out)] == [FAIL_AT - 1]
    resumed = _launch(recipe, None)
    assert resumed.returncode == 0, resumed.stderr
    assert [step for step, _ in ckpt.list_checkpoints(out)][-1] == 30
