"""Process faults: SIGKILL at random points of training and at 10 points of a checkpoint write,
corrupted checkpoints, Ctrl-C, and a full disk. Every interrupted run is finished by the same
command and must end bitwise equal to an uninterrupted run (metrics, step records, weights).

Kill points come from ``PUREML_TEST_SEED`` (printed on failure) so a failure can be rerun.
"""

from __future__ import annotations

import os
import random
import shutil
import signal
import subprocess
import time
from contextlib import contextmanager
from pathlib import Path

import pytest
from safetensors.torch import load_file

from pureml.training import checkpoint as ckpt

from . import forkcli
from .conftest import KILL, write

SEED = int(os.environ.get("PUREML_TEST_SEED", time.time_ns() % 10_000))
MAX_STEPS, INTERVAL = 30, 3


def lines(path: Path) -> int:
    try:
        return path.read_bytes().count(b"\n")
    except FileNotFoundError:
        return 0


def valid_steps(out: Path) -> list[int]:
    """Steps of the checkpoints whose files match their manifest."""
    good = []
    for step, path in ckpt.list_checkpoints(out):
        try:
            ckpt.verify_dir(path)
            good.append(step)
        except ckpt.CheckpointError:
            pass
    return good


def assert_same_run(ref: Path, out: Path, context: str) -> None:
    for name in ("metrics.jsonl", "steps.jsonl", "metrics.csv"):
        a, b = (ref / name).read_text().splitlines(), (out / name).read_text().splitlines()
        assert len(a) == len(b), f"{name}: {len(a)} != {len(b)} lines ({context})"
        for i, (x, y) in enumerate(zip(a, b)):
            assert x == y, f"{name} line {i + 1} differs ({context}):\n{x}\n{y}"
    wa = load_file(str(ref / "model-last" / "model.safetensors"))
    wb = load_file(str(out / "model-last" / "model.safetensors"))
    assert wa.keys() == wb.keys()
    for k in wa:
        assert wa[k].equal(wb[k]), f"{k} ({context})"


def assert_resumed_from(stderr: str, step: int | None) -> None:
    if step is None:
        assert "resuming" not in stderr, stderr
    else:
        assert "resuming from " in stderr and f"step-{step:06d} (step {step})" in stderr, stderr
    assert "Traceback" not in stderr, stderr


@pytest.fixture(scope="module")
def reference(tmp_path_factory, corpus) -> Path:
    folder = tmp_path_factory.mktemp("reference")
    result = forkcli.train(write(KILL, folder, corpus), cwd=folder)
    assert result.code == 0, result.stderr
    return folder / "out"


def start(recipe: Path, env: dict | None = None) -> forkcli.Running:
    return forkcli.start_cli([str(recipe)], entry="train", cwd=recipe.parent, env=env)


def wait_for_resume(running: forkcli.Running, resumed: bool) -> None:
    """Once the process has cut its logs back to the checkpoint, line counts mean new steps."""
    if resumed:
        forkcli.wait_until(lambda: "resuming from" in running.stderr(), running)


def corrupt(path: Path, how: str) -> None:
    tensors = path / "state" / "state.safetensors"
    data = bytearray(tensors.read_bytes())
    if how == "bitflip":
        data[len(data) // 2] ^= 0x10
    else:
        data = data[: len(data) // 2]
    tensors.write_bytes(bytes(data))


def test_sigkill_at_10_random_points_then_corrupted_checkpoints(tmp_path, corpus, reference):
    """10 SIGKILLs at random steps (and random moments within them); after the 4th and 7th, the
    latest checkpoint is corrupted (one flipped bit, then a truncation): the next start warns,
    skips it and resumes from the previous one."""
    rng = random.Random(SEED)
    recipe = write(KILL, tmp_path, corpus)
    metrics = tmp_path / "out" / "metrics.jsonl"
    corruptions = ["bitflip", "truncate"]  # after the 4th and 7th kills, or as soon as possible
    history = []
    for kill in range(1, 11):
        steps = valid_steps(tmp_path / "out")
        resume = steps[-1] if steps else None
        running = start(recipe)
        wait_for_resume(running, resume is not None)
        base = resume or 0
        # not too near the end, or a fast machine could finish before the kill lands: a step
        # of this recipe takes ~11 ms here, so 5 steps (the last checkpoint) fit in the 10 ms
        # poll + 50 ms sleep below; 10 steps do not
        target = min(base + rng.randint(2, 5), MAX_STEPS - 10)
        forkcli.wait_until(lambda t=target: lines(metrics) >= t, running)
        time.sleep(rng.uniform(0, 0.05))  # anywhere within the step
        os.kill(running.pid, signal.SIGKILL)
        result = running.wait()
        history.append((resume, target))
        context = f"PUREML_TEST_SEED={SEED}, kills {history}"
        assert result.code == -signal.SIGKILL, f"finished before the kill ({context})"
        assert_resumed_from(result.stderr, resume)
        steps = valid_steps(tmp_path / "out")
        if corruptions and kill >= (4 if len(corruptions) == 2 else 7) and len(steps) >= 2:
            corrupt(tmp_path / "out" / "checkpoints" / f"step-{steps[-1]:06d}", corruptions.pop(0))
            running = start(recipe)
            wait_for_resume(running, True)
            err = running.stderr()
            assert "skipping corrupted checkpoint" in err and "checksum mismatch" in err, err
            assert_resumed_from(err, steps[-2])
            os.kill(running.pid, signal.SIGKILL)
            running.wait()
    assert not corruptions, f"no two checkpoints to corrupt one ({history})"
    final = forkcli.train(recipe, cwd=tmp_path)
    assert final.code == 0, final.stderr
    assert_same_run(reference, tmp_path / "out", f"PUREML_TEST_SEED={SEED}, kills {history}")


# I/O events of one checkpoint write (hooks.PUREML_FAULT_CKPT); from event 11 on, the new
# checkpoint has been renamed into place and is complete.
EVENTS = 12
COMPLETE_FROM = 11


def test_crash_at_10_points_of_a_checkpoint_write(tmp_path, corpus, reference):
    rng = random.Random(SEED + 1)
    recipe = write(KILL, tmp_path, corpus)
    points = rng.sample(range(1, EVENTS + 1), 10)
    history = []
    for n in points:
        steps = valid_steps(tmp_path / "out")
        resume = steps[-1] if steps else 0
        k = rng.randint(1, 2) if resume + 2 * INTERVAL < MAX_STEPS else 1
        result = forkcli.train(recipe, cwd=tmp_path, env={"PUREML_FAULT_CKPT": f"{k},{n}"})
        history.append((resume, k, n))
        context = f"PUREML_TEST_SEED={SEED}, (resume, k-th write, event) {history}"
        assert result.code == 137, f"{result.code} {result.stderr} ({context})"
        assert_resumed_from(result.stderr, resume or None)
        writing = resume + k * INTERVAL
        now = valid_steps(tmp_path / "out")
        expected = writing if n >= COMPLETE_FROM else writing - INTERVAL
        assert now and now[-1] == expected or (not now and expected == 0), (now, context)
    final = forkcli.train(recipe, cwd=tmp_path)
    assert final.code == 0, final.stderr
    assert not [p for p in (tmp_path / "out").rglob(".tmp-*")], "stale temporaries left"
    assert_same_run(reference, tmp_path / "out", f"PUREML_TEST_SEED={SEED}, writes {history}")


# I/O events of a model-last rewrite (hooks.PUREML_FAULT_MODEL): weights before / torn, fsync,
# rename old away (before, after), rename new in (before, after), remove old
MODEL_EVENTS = 8


def test_crash_while_rewriting_model_last(tmp_path, corpus, reference):
    """A finished run started again re-saves model-last; dying at each point of that write leaves
    the old model or (between the two renames) its ``.old`` copy; the next start restores it."""
    out = tmp_path / "out"
    shutil.copytree(reference, out)
    recipe = tmp_path / "recipe.toml"
    recipe.write_text((reference / "config.toml").read_text().replace(str(reference), str(out)))
    model = snapshot(out / "model-last")
    for n in range(1, MODEL_EVENTS + 1):
        result = forkcli.train(recipe, cwd=tmp_path, env={"PUREML_FAULT_MODEL": str(n)})
        assert result.code == 137, (n, result.code, result.stderr)
        assert_resumed_from(result.stderr, MAX_STEPS)
        if (out / "model-last").exists():
            assert snapshot(out / "model-last") == model, f"event {n}: model-last changed"
        else:  # between the renames: the old model is still whole beside it
            (old,) = [p for p in out.iterdir() if p.name.startswith(".model-last.old-")]
            assert snapshot(old) == model, f"event {n}"
        again = forkcli.train(recipe, cwd=tmp_path)
        assert again.code == 0, again.stderr
        assert snapshot(out / "model-last") == model, f"event {n}: not restored"
    assert not [p for p in out.iterdir() if p.name.startswith(".")], "temporaries left"


def test_sigint_checkpoints_and_exits_cleanly(tmp_path, corpus, reference):
    """Ctrl-C: a checkpoint at the current step, exit 0/130, no traceback. Ctrl-C twice: stop at
    once (130), the checkpoints left are intact. The same command then finishes the run."""
    rng = random.Random(SEED + 2)
    recipe = write(KILL, tmp_path, corpus)
    metrics = tmp_path / "out" / "metrics.jsonl"
    running = start(recipe)
    target = rng.randint(4, 14)
    forkcli.wait_until(lambda: lines(metrics) >= target, running)
    os.kill(running.pid, signal.SIGINT)
    result = running.wait()
    assert result.code in (0, 130), result.stderr
    assert "Traceback" not in result.stderr
    step = lines(metrics)
    assert f"SIGINT: checkpoint written at step {step}" in result.stderr, result.stderr
    assert valid_steps(tmp_path / "out")[-1] == step
    # twice in a row: no clean exit wanted, but no traceback and nothing half-written
    running = start(recipe)
    wait_for_resume(running, True)
    forkcli.wait_until(lambda: lines(metrics) >= step + 2, running)
    os.kill(running.pid, signal.SIGINT)
    os.kill(running.pid, signal.SIGINT)
    second = running.wait()
    assert second.code in (0, 130) and "Traceback" not in second.stderr, second.stderr
    assert valid_steps(tmp_path / "out") == [s for s, _ in ckpt.list_checkpoints(tmp_path / "out")]
    final = forkcli.train(recipe, cwd=tmp_path)
    assert final.code == 0, final.stderr
    assert_same_run(reference, tmp_path / "out", "after Ctrl-C")


@contextmanager
def small_disk(folder: Path, size: str = "4m"):
    """A size-limited tmpfs at ``folder`` (root), else None: callers then use RLIMIT_FSIZE."""
    folder.mkdir(parents=True, exist_ok=True)
    command = ["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(folder)]
    if os.environ.get("PUREML_FAULTS_NO_TMPFS"):  # to exercise the fallback as root
        command = ["false"]
    proc = subprocess.run(command, capture_output=True)
    try:
        yield proc.returncode == 0
    finally:
        if proc.returncode == 0:
            subprocess.run(["umount", "-l", str(folder)], check=True)


def fill(folder: Path, leave: int) -> Path:
    """Fill the file system of ``folder`` up to ``leave`` free bytes."""
    filler = folder / "filler"
    free = shutil.disk_usage(folder).free
    with open(filler, "wb") as f:
        f.write(b"\0" * max(0, free - leave))
    return filler


def snapshot(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in folder.rglob("*") if p.is_file()}


def test_full_disk_keeps_previous_checkpoint_and_model(tmp_path, corpus, reference):
    disk = tmp_path / "disk"
    with small_disk(disk) as mounted:
        out = disk / "out"
        recipe = write(KILL, tmp_path, corpus, **{str(tmp_path / "out"): str(out)})
        if mounted:
            full_env, leave = {}, 24_000  # room for log lines, not for a checkpoint
        else:  # no tmpfs (not root): each file limited to 24 kB
            full_env, leave = {"PUREML_FAULT_FSIZE": "24000"}, None
        metrics = out / "metrics.jsonl"
        running = start(recipe)
        forkcli.wait_until(lambda: lines(metrics) >= 4, running)
        os.kill(running.pid, signal.SIGINT)
        assert running.wait().code in (0, 130)
        step = valid_steps(out)[-1]
        kept = snapshot(out / "checkpoints" / f"step-{step:06d}")
        filler = fill(disk, leave) if mounted else None
        # the next checkpoint does not fit: a clear one-line error, the previous one intact
        failed = forkcli.train(recipe, cwd=tmp_path, env=full_env)
        assert failed.code != 0 and "Traceback" not in failed.stderr, failed.stderr
        last = failed.stderr.strip().splitlines()[-1]
        assert last.startswith("error: ") and (
            "No space left on device" in last or "File too large" in last
        ), failed.stderr
        assert valid_steps(out)[-1] == step
        assert snapshot(out / "checkpoints" / f"step-{step:06d}") == kept
        assert not list(out.rglob(".tmp*")) and not list(out.rglob(".*.tmp-*"))
        if filler:
            filler.unlink()
        done = forkcli.train(recipe, cwd=tmp_path)
        assert done.code == 0, done.stderr
        assert_same_run(reference, out, "after a full disk")
        # the model does not fit either: model-last is left as it was
        model = snapshot(out / "model-last")
        filler = fill(disk, 24_000) if mounted else None
        again = forkcli.train(recipe, cwd=tmp_path, env=full_env)
        assert again.code != 0 and "Traceback" not in again.stderr, again.stderr
        assert snapshot(out / "model-last") == model
        assert not [p for p in out.iterdir() if p.name.startswith(".")]
        if filler:
            filler.unlink()
