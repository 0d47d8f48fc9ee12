"""Fault hooks a CLI process installs from its environment (see ``forkcli``): test-only.

``PUREML_FAULT_CKPT="k,n"``
    During this process's k-th checkpoint write, die (``os._exit(137)``, no cleanup: what a
    SIGKILL does) at the n-th I/O event of the write. Events, in the order the writer meets
    them: before the tensors file is written; after it is written, truncated to half (a torn
    write); before each fsync (tensors, state meta, trainer meta, manifest, the folder); before
    and after each rename; before each old checkpoint is pruned; before the parent's fsync.
    The k-th write counts from 1 in each process. ``n`` past the last event never fires.
``PUREML_FAULT_MODEL=n``
    Die at the n-th I/O event of the ``model-last`` write (``Pipeline.to_disk``): before the
    weights are written / after, torn in half / before each fsync / before and after each rename
    / before the old folder is removed.
``PUREML_FAULT_NAN_STEPS="5:nan,8:inf"``
    The batches of those steps (counted in this process) make the loss NaN or inf: the loss
    function multiplies its loss by a value the test put into the batch's stats.
``PUREML_FAULT_FSIZE=bytes``
    ``RLIMIT_FSIZE``: a larger write fails with EFBIG (the disk-full fallback when no tmpfs).
``PUREML_FAULT_RANK="rank:step:raise"`` (or ``...:kill``, ``...:term``)
    Under torchrun, the process of that ``RANK`` raises a ``RuntimeError`` (or SIGKILLs itself)
    once it has drawn the batch of that step (counted in this process; the draw's collectives
    done), so its peers wait for it in the gradient all-reduce: one rank failing mid-run.
    ``term`` sends that process SIGTERM instead (``kill PID``, a scheduler) and goes on.

A hook only wraps functions; it never changes what an unfaulted run computes.
"""

from __future__ import annotations

import os
import signal
from collections.abc import Callable
from pathlib import Path
from typing import Any

EXIT_KILLED = 137


def _die() -> None:
    os._exit(EXIT_KILLED)


def _wrap(fn: Any, event: Callable[[], None], after: bool = False) -> Any:
    """``fn`` with an I/O ``event`` before each call (and after it, if ``after``)."""

    def wrapped(*args: Any, **kwargs: Any) -> Any:
        event()
        result = fn(*args, **kwargs)
        if after:
            event()
        return result

    return wrapped


def install() -> None:
    if "PUREML_FAULT_CKPT" in os.environ:
        k, n = (int(x) for x in os.environ["PUREML_FAULT_CKPT"].split(","))
        _install_checkpoint_crash(k, n)
    if "PUREML_FAULT_MODEL" in os.environ:
        _install_model_crash(int(os.environ["PUREML_FAULT_MODEL"]))
    if "PUREML_FAULT_NAN_STEPS" in os.environ:
        steps = {}
        for item in os.environ["PUREML_FAULT_NAN_STEPS"].split(","):
            step, value = item.split(":")
            steps[int(step)] = float(value)
        _install_bad_batches(steps)
    if "PUREML_FAULT_RANK" in os.environ:
        rank, step, how = os.environ["PUREML_FAULT_RANK"].split(":")
        assert how in ("raise", "kill", "term"), how
        if os.environ.get("RANK") == rank:
            _install_rank_failure(int(rank), int(step), how)
    if "PUREML_FAULT_FSIZE" in os.environ:
        import resource

        limit = int(os.environ["PUREML_FAULT_FSIZE"])
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # EFBIG instead of a killed process
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))


def _install_checkpoint_crash(k: int, n: int) -> None:
    import safetensors.torch

    from pureml.training import checkpoint

    state = {"write": 0, "events": 0, "active": False}

    def event() -> None:
        if state["active"] and state["write"] == k:
            state["events"] += 1
            if state["events"] == n:
                _die()

    save_file = safetensors.torch.save_file

    def torn_save_file(tensors: Any, filename: str, *args: Any, **kwargs: Any) -> None:
        event()
        save_file(tensors, filename, *args, **kwargs)
        if state["active"] and state["write"] == k and state["events"] + 1 == n:
            os.truncate(filename, Path(filename).stat().st_size // 2)
        event()

    save_checkpoint = checkpoint.save_checkpoint

    def counted_save(*args: Any, **kwargs: Any) -> Any:
        state["write"] += 1
        state["active"] = True
        try:
            return save_checkpoint(*args, **kwargs)
        finally:
            state["active"] = False

    safetensors.torch.save_file = torn_save_file
    checkpoint.fsync_path = _wrap(checkpoint.fsync_path, event)
    checkpoint.save_checkpoint = counted_save
    # the trainer calls ckpt.save_checkpoint through the module, so the wrapper is seen
    os.replace = _wrap(os.replace, event, after=True)
    import shutil

    shutil.rmtree = _wrap(shutil.rmtree, event)


def _install_model_crash(n: int) -> None:
    import shutil

    from pureml.nlp import pipeline

    state = {"events": 0, "active": False}

    def event() -> None:
        if state["active"]:
            state["events"] += 1
            if state["events"] == n:
                _die()

    save_file = pipeline.save_file

    def torn_save_file(tensors: Any, filename: str, *args: Any, **kwargs: Any) -> None:
        event()
        save_file(tensors, filename, *args, **kwargs)
        if state["active"] and state["events"] + 1 == n:
            os.truncate(filename, Path(filename).stat().st_size // 2)
        event()

    to_disk = pipeline.Pipeline.to_disk

    def counted_to_disk(self: Any, path: Any) -> None:
        state["active"] = True
        try:
            to_disk(self, path)
        finally:
            state["active"] = False

    pipeline.save_file = torn_save_file
    pipeline._fsync_tree = _wrap(pipeline._fsync_tree, event)
    pipeline.Pipeline.to_disk = counted_to_disk
    os.rename = _wrap(os.rename, event, after=True)
    shutil.rmtree = _wrap(shutil.rmtree, event)


def _install_bad_batches(steps: dict[int, float]) -> None:
    import torch

    from pureml.training import trainer

    draw, make_loss = trainer.Trainer._draw, trainer.Trainer._loss_fn
    count = {"draws": 0}

    def faulty_draw(self: Any, iterators: Any) -> Any:
        subs, record, ids = draw(self, iterators)
        count["draws"] += 1
        factor = torch.tensor(steps.get(count["draws"], 1.0))
        subs = [{**sb, "fault_factor": factor} for sb in subs]
        return subs, record, ids

    def faulty_loss_fn(self: Any) -> Any:
        inner = make_loss(self)

        def loss_fn(params: Any, buffers: Any, batch: Any, key: Any) -> Any:
            batch = dict(batch)
            factor = batch.pop("fault_factor", None)
            loss, aux = inner(params, buffers, batch, key)
            return (loss if factor is None else loss * factor), aux

        return loss_fn

    trainer.Trainer._draw = faulty_draw
    trainer.Trainer._loss_fn = faulty_loss_fn


def _install_rank_failure(rank: int, step: int, how: str) -> None:
    from pureml.training import trainer

    draw = trainer.Trainer._draw
    count = {"draws": 0}

    def failing_draw(self: Any, iterators: Any) -> Any:
        drawn = draw(self, iterators)
        count["draws"] += 1
        if count["draws"] == step:
            if how == "term":
                os.kill(os.getpid(), signal.SIGTERM)
                return drawn
            if how == "kill":
                os.kill(os.getpid(), signal.SIGKILL)
            raise RuntimeError(f"injected fault on rank {rank} at step {step}")
        return drawn

    trainer.Trainer._draw = failing_draw
