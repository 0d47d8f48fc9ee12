"""Checkpoint folders: atomic, checksummed, pruned, and corrupted ones skipped with a warning."""

from __future__ import annotations

import json
import os

import pytest

from pureml.training import checkpoint as ckpt
from pureml.training.records import AppendLog


def write(run, step, payload=b"x" * 100, keep=3):
    return ckpt.save_checkpoint(
        run, step, lambda d: (d / "state.bin").write_bytes(payload), {"step": step}, keep=keep
    )


def test_save_list_and_keep_last_k(tmp_path):
    for step in (10, 20, 30, 40):
        write(tmp_path, step, keep=2)
    assert [s for s, _ in ckpt.list_checkpoints(tmp_path)] == [30, 40]
    latest = ckpt.latest_checkpoint(tmp_path)
    assert latest.name == "step-000040" and ckpt.read_meta(latest) == {"step": 40}
    manifest = json.loads((latest / ckpt.MANIFEST).read_text())
    assert set(manifest) == {"state.bin", ckpt.META}


def test_corrupted_checkpoint_falls_back_with_a_warning(tmp_path):
    write(tmp_path, 20)
    p40 = write(tmp_path, 40)
    data = bytearray((p40 / "state.bin").read_bytes())
    data[3] ^= 1  # one flipped bit
    (p40 / "state.bin").write_bytes(bytes(data))
    with pytest.warns(UserWarning, match="checksum mismatch in state.bin"):
        assert ckpt.latest_checkpoint(tmp_path).name == "step-000020"
    # truncation and a missing manifest are caught too
    (p40 / "state.bin").write_bytes(b"x" * 10)
    (tmp_path / "checkpoints" / "step-000020" / ckpt.MANIFEST).unlink()
    with pytest.warns(UserWarning):
        assert ckpt.latest_checkpoint(tmp_path) is None


def test_a_crash_during_the_write_leaves_the_previous_checkpoint(tmp_path):
    write(tmp_path, 20)

    def crash(d):
        (d / "state.bin").write_bytes(b"half")
        raise OSError("disk full")

    with pytest.raises(OSError, match="disk full"):
        ckpt.save_checkpoint(tmp_path, 40, crash, {"step": 40}, keep=3)
    assert [s for s, _ in ckpt.list_checkpoints(tmp_path)] == [20]
    assert not [p for p in (tmp_path / "checkpoints").iterdir() if p.name.startswith(".")]


def test_stale_temporaries_are_removed(tmp_path):
    stale = tmp_path / "checkpoints" / ".tmp-step-000040-123"
    stale.mkdir(parents=True)
    ckpt.remove_stale_temporaries(tmp_path)
    assert not stale.exists()


def test_rewriting_a_step_replaces_it(tmp_path):
    write(tmp_path, 20, b"old")
    write(tmp_path, 20, b"new")
    assert (tmp_path / "checkpoints" / "step-000020" / "state.bin").read_bytes() == b"new"


def test_append_log_is_cut_back_to_the_checkpointed_length(tmp_path):
    log = AppendLog(tmp_path / "m.jsonl")
    log.write_line("a")
    offset = log.offset()
    log.write_line("b")
    log.close()
    log = AppendLog(tmp_path / "m.jsonl", offset)
    log.write_line("c")
    log.close()
    assert (tmp_path / "m.jsonl").read_text() == "a\nc\n"
    os.truncate(tmp_path / "m.jsonl", 1)
    with pytest.raises(FileNotFoundError, match="shorter"):
        AppendLog(tmp_path / "m.jsonl", offset)
