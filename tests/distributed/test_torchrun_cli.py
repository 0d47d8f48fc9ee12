"""What a torchrun user sees when a 2-rank command fails on bad input: one line, not one per rank."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from pureml.distributed import is_node_leader

ROOT = Path(__file__).resolve().parents[2]
RECIPE = ROOT / "recipes" / "quickstart.toml"


def _torchrun(*args: str, timeout: float = 180) -> subprocess.CompletedProcess:
    env = dict(os.environ, OMP_NUM_THREADS="1")
    for v in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        env.pop(v, None)
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2"]
    return subprocess.run(
        [*cmd, *args], cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout
    )


def test_node_leader_is_local_rank_zero_or_no_torchrun():
    assert is_node_leader({})
    assert is_node_leader({"LOCAL_RANK": "0", "RANK": "8"})
    assert not is_node_leader({"LOCAL_RANK": "1", "RANK": "1"})


def test_recipe_typo_under_torchrun_prints_one_error_line_and_creates_nothing(tmp_path):
    out = tmp_path / "run"
    proc = _torchrun(
        "-m",
        "pureml.train",
        str(RECIPE),
        "--set",
        f"train.output_dir={out}",
        "--set",
        "train.max_stepz=3",
    )
    assert proc.returncode != 0
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    # both ranks fail alike (exit 2); only local rank 0 says so
    assert len(errors) == 1, proc.stderr[-3000:]
    assert "train.max_stepz: no such key to override" in errors[0]
    assert "exitcode  : 2" in proc.stderr
    assert not out.exists()


def test_batch_of_fewer_documents_than_ranks_is_one_clear_error(tmp_path):
    # was: gloo aborted one rank ("collective mismatch", terminate called) and the other
    # printed "Connection reset by peer"
    out = tmp_path / "run"
    proc = _torchrun(
        "-m",
        "pureml.train",
        str(RECIPE),
        "--set",
        f"train.output_dir={out}",
        "--set",
        "train.max_steps=3",
        "--set",
        'train_data.notes.batch_size="1 docs"',
        "--set",
        "train_data.notes.data.n_train=20",
        "--set",
        "val_data.n_train=20",
    )
    assert proc.returncode != 0
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1, proc.stderr[-3000:]
    assert "left rank 1 of 2 without documents" in errors[0]
    assert "exitcode  : 2" in proc.stderr and "terminate called" not in proc.stderr


def test_folder_locked_by_a_live_run_is_one_clear_error(tmp_path):
    from pureml.training.checkpoint import lock_run_dir

    out = tmp_path / "run"
    out.mkdir()
    lock = lock_run_dir(out)  # a live run (this test) writes there
    try:
        proc = _torchrun(
            "-m",
            "pureml.train",
            str(RECIPE),
            "--set",
            f"train.output_dir={out}",
            "--set",
            "train.max_steps=3",
            "--set",
            "train_data.notes.data.n_train=20",
        )
    finally:
        os.close(lock)
    assert proc.returncode != 0
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    # was: rank 0's line, then rank 1's "Connection closed by peer", blamed by torchrun
    assert len(errors) == 1 and "is in use by another run" in errors[0], proc.stderr[-3000:]
    assert "Connection closed" not in proc.stderr
    assert "exitcode  : 2" in proc.stderr
    assert not (out / "config.toml").exists()
