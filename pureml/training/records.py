"""The per-step record (``steps.jsonl``): what replay and diff need to check a step bit for bit.

One JSON object per optimizer step, written before the next step starts::

    {"step": 21, "phase": 0, "phase_step": 21,
     "loss": "0x1.5c28f60000000p+1",            # float.hex of the float32 loss, exact
     "losses": {"ner": "0x1.5c28f6p+1"},         # per component (after loss_scales)
     "grad_norm": "0x1.0a3d70a000000p-1",        # before clipping, exact
     "lr": {"default": "0x1.89374bc6a7efap-9"},  # per optimizer group, exact
     "spike": false, "skipped": false,
     "streams": {"main": {"position": {...},     # stream position before this batch
                          "doc_ids": ["d12", "d3"], "sub_batches": 2}},
     "batch": "9f0c...",                         # fingerprint of doc ids + collated tensors
     "params": "41ab..."}                        # after the step; every record_params_interval

``step`` counts updates across phases (the state after it is what ``checkpoints/step-NNNNNN``
holds when a checkpoint is written at that step). Numbers are hex so that equality is exact.

>>> exact(0.1)
'0x1.999999999999ap-4'
>>> from_exact(exact(0.1)) == 0.1
True
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import torch

from ..core.state import hash_tensor

STEPS_FILE = "steps.jsonl"


def exact(value: float | torch.Tensor) -> str:
    """The exact text of a float (``float.hex``); tensors are read as Python floats first."""
    if isinstance(value, torch.Tensor):
        value = value.item()
    return float(value).hex()


def from_exact(text: str) -> float:
    return float.fromhex(text)


def _tensor_leaves(tree: Any, prefix: str = "") -> Iterable[tuple[str, torch.Tensor]]:
    if isinstance(tree, torch.Tensor):
        yield prefix, tree
    elif isinstance(tree, Mapping):
        for k in sorted(tree, key=str):
            yield from _tensor_leaves(tree[k], f"{prefix}.{k}" if prefix else str(k))
    elif isinstance(tree, list | tuple):
        for i, v in enumerate(tree):
            yield from _tensor_leaves(v, f"{prefix}.{i}" if prefix else str(i))


def batch_fingerprint(doc_ids: Iterable[str], sub_batches: Iterable[Any]) -> str:
    """Hash of the document ids and of every tensor's name, dtype, shape and bytes."""
    h = hashlib.sha256()
    for doc_id in doc_ids:
        h.update(str(doc_id).encode())
        h.update(b"\0")
    for i, batch in enumerate(sub_batches):
        for name, t in _tensor_leaves(batch, str(i)):
            hash_tensor(h, name, t)
    return h.hexdigest()[:32]


def params_fingerprint(state: Any) -> str:
    """The ``params`` value of a step record: a hash of ``state.params``, shortened.

    Training writes it and replay compares against it, so both call this one function. On the
    host, ``fingerprint`` (SHA-256 of the bytes: 0.4 s for 110M parameters, 6x faster than
    ``digest`` there); on an accelerator, ``digest``, which reduces on the device: copying
    BERT-base's parameters to the host and hashing them took ~1.1 s every 10 steps on an H100
    (43% of B3's wall time). A run and its replay share a device type, as bitwise equality does.
    """
    from ..core.state import digest, fingerprint

    params = state.params
    on_host = all(t.device.type == "cpu" for t in params.values())
    return (fingerprint(params) if on_host else digest(params))[:32]


def step_record(
    *,
    step: int,
    phase: int,
    phase_step: int,
    metrics: Mapping[str, Any],
    streams: Mapping[str, Mapping[str, Any]],
    batch: str,
    params: str | None = None,
    world_size: int = 1,
) -> dict[str, Any]:
    """Build one record from the step's metrics tensors (names as ``make_step`` returns them).

    Under torchrun the record holds rank 0's share of the batch, and says how many processes
    shared it (``world_size``, left out for one process): replay and diff need the layout of
    each step, which a run resumed with another number of processes changes midway."""
    losses = {k.split("/", 1)[1]: exact(v) for k, v in metrics.items() if k.startswith("loss/")}
    lrs = {k.split("/", 1)[1]: exact(v) for k, v in metrics.items() if k.startswith("lr/")}
    rec: dict[str, Any] = {
        "step": step,
        "phase": phase,
        "phase_step": phase_step,
        "loss": exact(metrics["loss"]),
        "losses": losses,
        "grad_norm": exact(metrics["grad_norm"]),
        "lr": lrs,
        "spike": bool(metrics.get("spike", False)),
        "skipped": bool(metrics.get("skipped", False)),
        "streams": {k: dict(v) for k, v in streams.items()},
        "batch": batch,
    }
    if params is not None:
        rec["params"] = params
    if world_size != 1:
        rec["world_size"] = world_size
    return rec


class AppendLog:
    """An append-only line file whose length is saved in checkpoints and restored on resume.

    On resume the file is cut back to the length it had when the checkpoint was written, so the
    lines of the steps after the checkpoint are written again, identically, and not twice.
    """

    def __init__(self, path: Path, offset: int | None = None) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        if offset is None:
            self.path.write_bytes(b"")
        else:
            size = self.path.stat().st_size if self.path.exists() else 0
            if size < offset:
                raise FileNotFoundError(
                    f"{self.path} is shorter ({size} bytes) than at the checkpoint ({offset})"
                )
            with open(self.path, "r+b") as f:
                f.truncate(offset)
        self._f = open(self.path, "ab")  # noqa: SIM115 - kept open for the run

    def write_line(self, text: str) -> None:
        self._f.write(text.encode("utf-8") + b"\n")

    def offset(self) -> int:
        """Flush and return the current length (what a checkpoint saves)."""
        self._f.flush()
        os.fsync(self._f.fileno())
        return self._f.tell()

    def flush(self) -> None:
        self._f.flush()

    def close(self) -> None:
        if not self._f.closed:
            self._f.close()


class StepRecorder:
    """Writes ``steps.jsonl``; its offset is part of the checkpoint's logging state."""

    def __init__(self, run_dir: Path, offset: int | None = None) -> None:
        self.log = AppendLog(Path(run_dir) / STEPS_FILE, offset)

    def write(self, record: Mapping[str, Any]) -> None:
        self.log.write_line(json.dumps(record, sort_keys=False, separators=(",", ":")))
        self.log.flush()

    def state(self) -> dict[str, int]:
        return {STEPS_FILE: self.log.offset()}

    def close(self) -> None:
        self.log.close()


def read_records(run_dir: Path) -> list[dict[str, Any]]:
    """All records of a run, in step order (what replay and diff read)."""
    path = Path(run_dir) / STEPS_FILE
    if not path.is_file():
        raise FileNotFoundError(f"{run_dir} is not a run folder: it has no {STEPS_FILE}")
    with open(path, encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]
