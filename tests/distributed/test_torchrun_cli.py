"""What a torchrun user sees of a 2-rank command's bad input: one line, not one per rank."""

from __future__ import annotations

import os
import re
import subprocess
from pathlib import Path

from torchrun_launch import clean_env, launcher

from pureml.distributed import is_node_leader

ROOT = Path(__file__).resolve().parents[2]
RECIPE = ROOT / "recipes" / "quickstart.toml"


def _train(out: Path, *sets: str) -> tuple[subprocess.CompletedProcess, list[str]]:
    """``python -m pureml.train`` the quickstart into ``out`` on 2 torchrun ranks with ``--set``
    ``sets``; the process and its ``error:`` lines."""
    overrides = [a for s in (f"train.output_dir={out}", *sets) for a in ("--set", s)]
    proc = subprocess.run(
        [*launcher(2), "-m", "pureml.train", str(RECIPE), *overrides],
        cwd=ROOT,
        env=clean_env(),
        capture_output=True,
        text=True,
        timeout=180,
    )
    return proc, [line for line in proc.stderr.splitlines() if line.startswith("error:")]


def test_node_leader_is_local_rank_zero_or_no_torchrun():
    assert is_node_leader({})
    assert is_node_leader({"LOCAL_RANK": "0", "RANK": "8"})
    assert not is_node_leader({"LOCAL_RANK": "1", "RANK": "1"})


def test_recipe_typo_under_torchrun_prints_one_error_line_and_creates_nothing(tmp_path):
    out = tmp_path / "run"
    proc, errors = _train(out, "train.max_stepz=3")
    assert proc.returncode != 0
    # both ranks fail alike (exit 2); only local rank 0 says so
    assert len(errors) == 1, proc.stderr[-3000:]
    assert "train.max_stepz: no such key to override" in errors[0]
    assert "exitcode  : 2" in proc.stderr
    assert not out.exists()


def test_batch_of_fewer_documents_than_ranks_is_one_clear_error(tmp_path):
    # was: gloo aborted one rank ("collective mismatch", terminate called) and the other
    # printed "Connection reset by peer"
    proc, errors = _train(
        tmp_path / "run",
        "train.max_steps=3",
        'train_data.notes.batch_size="1 docs"',
        "train_data.notes.data.n_train=20",
        "val_data.n_train=20",
    )
    assert proc.returncode != 0
    assert len(errors) == 1, proc.stderr[-3000:]
    assert "train_data.notes: a training batch left rank 1 of 2 without documents" in errors[0]
    assert "exitcode  : 2" in proc.stderr and "terminate called" not in proc.stderr


def test_document_larger_than_the_batch_budget_is_named_with_the_size_needed(tmp_path):
    # a note longer than "10 words" forms a batch alone: rank 1's share of it is empty. The
    # error said only "a training batch left rank 1 of 2 without documents"
    proc, errors = _train(
        tmp_path / "run",
        "train.max_steps=3",
        'train_data.notes.batch_size="10 words"',
        "train_data.notes.data.n_train=20",
        "val_data.n_train=20",
    )
    assert "exitcode  : 2" in proc.stderr and len(errors) == 1, proc.stderr[-3000:]
    found = re.fullmatch(
        r"error: train_data\.notes: document '([^']+)' \((\d+) words\) is larger than "
        r'train_data\.notes\.batch_size \("10 words"\) and forms a batch alone, which 2 ranks '
        r'cannot share: raise train_data\.notes\.batch_size to at least "(\d+) words" \(room '
        r"for it and as long a document for each other rank\), shorten or split that document, "
        r"or run fewer processes",
        errors[0],
    )
    assert found, errors[0]
    doc_id, words, needed = found.groups()
    assert int(words) > 10 and int(needed) == 2 * int(words)
    corpus = tmp_path / "run" / "corpus" / "train"
    assert (corpus / f"{doc_id}.txt").is_file(), sorted(p.name for p in corpus.iterdir())[:3]


def test_folder_locked_by_a_live_run_is_one_clear_error(tmp_path):
    from pureml.training.checkpoint import lock_run_dir

    out = tmp_path / "run"
    out.mkdir()
    lock = lock_run_dir(out)  # a live run (this test) writes there
    try:
        proc, errors = _train(out, "train.max_steps=3", "train_data.notes.data.n_train=20")
    finally:
        os.close(lock)
    assert proc.returncode != 0
    # was: rank 0's line, then rank 1's "Connection closed by peer", blamed by torchrun
    assert len(errors) == 1 and "is in use by another run" in errors[0], proc.stderr[-3000:]
    assert "Connection closed" not in proc.stderr
    assert "exitcode  : 2" in proc.stderr
    assert not (out / "config.toml").exists()


def test_a_warning_about_the_data_comes_once_not_once_per_rank(tmp_path):
    # was: both ranks met the unknown label in post_init and each printed the warning
    labels = '["problem", "drug", "test", "allergyy"]'
    proc, _ = _train(
        tmp_path / "run",
        "train.max_steps=1",
        "train_data.notes.data.n_train=20",
        "val_data.n_train=20",
        f"nlp.components.ner.labels={labels}",
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    output = (proc.stdout + proc.stderr).splitlines()
    assert [line for line in output if line.startswith("warning:")] == [
        "warning: ner: label 'allergyy' never occurs in group 'gold' of the training docs "
        "(they have: drug, problem, test)"
    ], proc.stderr[-3000:]
