"""Per-rank trace files, for tests and debugging of multi-process runs.

Only rank 0 writes the run folder, so what the other ranks did is invisible there. With
``PUREML_RANK_TRACE=DIR`` set, every rank writes ``DIR/rank<r>.pid`` (its process id, so a
test can kill one worker) and ``DIR/rank<r>.jsonl`` (the fingerprint of the state it starts
from, then per step: the documents it trained on, its first global sub-batch index and
sub-batch count). Files, never interleaved stdout.
``PUREML_RANK_TRACE_SLEEP=SECONDS`` also pauses after each step, so a test can act (kill a
rank) in the middle of a run that would otherwise finish in a blink.

>>> RankTrace.from_env(DistInfo(), env={}).enabled
False
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from .process_group import DistInfo

ENV_VAR = "PUREML_RANK_TRACE"
SLEEP_VAR = "PUREML_RANK_TRACE_SLEEP"


class RankTrace:
    """Writes this rank's pid file once, then one JSON line per step (no-op when disabled)."""

    def __init__(self, folder: Path | None, rank: int, sleep_s: float = 0.0) -> None:
        self.folder = folder
        self.rank = rank
        self.sleep_s = sleep_s
        self._file: Any = None
        if folder is not None:
            folder.mkdir(parents=True, exist_ok=True)
            (folder / f"rank{rank}.pid").write_text(str(os.getpid()))
            # kept open across steps (closed by close()); line-buffered so a killed rank leaves
            # whole lines
            self._file = open(folder / f"rank{rank}.jsonl", "a", buffering=1)  # noqa: SIM115

    @classmethod
    def from_env(cls, info: DistInfo, env: Mapping[str, str] | None = None) -> RankTrace:
        env = os.environ if env is None else env
        folder = env.get(ENV_VAR)
        return cls(Path(folder) if folder else None, info.rank, float(env.get(SLEEP_VAR, 0)))

    @property
    def enabled(self) -> bool:
        return self._file is not None

    def start(self, state_fingerprint: str) -> str:
        """Record the fingerprint of the state this rank starts (or resumes) from; returns it."""
        if self._file is not None:
            line = {"event": "start", "rank": self.rank, "fingerprint": state_fingerprint}
            self._file.write(json.dumps(line) + "\n")
        return state_fingerprint

    def step(self, step: int, doc_ids: Sequence[str], indices: Sequence[int]) -> None:
        if self._file is None:
            return
        line = {
            "step": step,
            "rank": self.rank,
            "first_index": indices[0] if indices else None,
            "indices": list(indices),
            "sub_batches": len(indices),
            "doc_ids": list(doc_ids),
        }
        self._file.write(json.dumps(line) + "\n")
        if self.sleep_s > 0:
            time.sleep(self.sleep_s)

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None
