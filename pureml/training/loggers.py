"""Loggers: a plain progress line, ``metrics.jsonl``, CSV files and (optionally) TensorBoard.

Every logger gets the same calls from the trainer::

    logger.start(run_dir, total_steps, state)   # state: what logger.state() returned, or None
    logger.log(step, metrics, validation, timing)
    logger.state() -> dict                       # saved in each checkpoint
    logger.close()

``metrics`` and ``validation`` are functions of the recipe and the seed only, so a resumed run's
``metrics.jsonl`` is byte-identical to an uninterrupted run's. Wall-clock figures (words/s, step
time, scoring speed) are in ``timing`` and go to ``timings.jsonl`` and the progress line.

Register your own with ``@pureml.registry.loggers.register("name")`` (a class with those methods).
"""

from __future__ import annotations

import csv
import io
import json
import math
import os
import sys
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any, TextIO

from ..registry import loggers
from .checkpoint import fsync_path
from .records import AppendLog

METRICS_FILE = "metrics.jsonl"
TIMINGS_FILE = "timings.jsonl"
CSV_FILE = "metrics.csv"
VALIDATION_CSV_FILE = "validation.csv"


def flatten(tree: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """``{"ner": {"micro": {"f1": 0.5}}}`` -> ``{"ner/micro/f1": 0.5}``."""
    out: dict[str, Any] = {}
    for k, v in tree.items():
        key = f"{prefix}/{k}" if prefix else str(k)
        if isinstance(v, Mapping):
            out.update(flatten(v, key))
        else:
            out[key] = v
    return out


def headline_score(validation: Mapping[str, Any] | None) -> tuple[str, float] | None:
    """The score the progress line shows: the first ``.../micro/f1`` (or any ``f1``)."""
    if not validation:
        return None
    flat = flatten(validation)
    for key, value in flat.items():
        if key.endswith("micro/f1") and isinstance(value, float | int):
            return key.rsplit("/micro/f1", 1)[0] + " f1", float(value)
    for key, value in flat.items():
        if key.endswith("f1") and isinstance(value, float | int):
            return key, float(value)
    return None


class BaseLogger:
    def start(self, run_dir: Path, total_steps: int, state: dict[str, Any] | None) -> None:
        pass

    def log(
        self,
        step: int,
        metrics: Mapping[str, Any],
        validation: Mapping[str, Any] | None,
        timing: Mapping[str, Any],
    ) -> None:
        pass

    def message(self, text: str) -> None:
        pass

    def state(self) -> dict[str, Any]:
        return {}

    def close(self) -> None:
        pass


@loggers.register("json")
class JsonLogger(BaseLogger):
    """``metrics.jsonl``: one object per logged step, validation results merged at their step."""

    def start(self, run_dir: Path, total_steps: int, state: dict[str, Any] | None) -> None:
        state = state or {}
        self.metrics = AppendLog(run_dir / METRICS_FILE, state.get(METRICS_FILE))
        self.timings = AppendLog(run_dir / TIMINGS_FILE, state.get(TIMINGS_FILE))

    def log(self, step, metrics, validation, timing) -> None:
        line = {"step": step, **metrics}
        if validation is not None:
            line["validation"] = validation
        self.metrics.write_line(json.dumps(line))
        self.timings.write_line(json.dumps({"step": step, **timing}))
        self.metrics.flush()

    def state(self) -> dict[str, Any]:
        return {METRICS_FILE: self.metrics.offset(), TIMINGS_FILE: self.timings.offset()}

    def close(self) -> None:
        self.metrics.close()
        self.timings.close()


class _CsvFile:
    """A CSV file whose header grows: a key first seen in a later row adds a column.

    Columns are in the order keys first appear; a row has an empty cell for each column it
    lacks. A new key (a later phase's ``loss/<component>``, ``lr/<group>``) rewrites the file
    with the wider header, earlier rows padded with empty cells: into a temporary file that
    then replaces it, so the file on disk is always whole.

    The checkpoint keeps the number of rows and the columns at that point (a byte length would
    not survive a rewrite). On resume the file is cut back to those rows and those columns: the
    file the run had at the checkpoint, even if a later step widened it, so the steps after the
    checkpoint write it again as an uninterrupted run does.
    """

    def __init__(self, path: Path, state: dict[str, Any] | None) -> None:
        self.path = Path(path)
        state = state or {}
        self.columns: list[str] | None = state.get("columns")
        rows = self._restore(state) if self.columns is not None else []
        self._replace(rows)
        self.rows = len(rows)
        self.known = set(self.columns or ())
        self.log = AppendLog(self.path, self.path.stat().st_size)

    def write(self, row: Mapping[str, Any]) -> None:
        if self.columns is None:
            self.columns = list(row)
            self.known = set(row)
            self.log.write_line(_csv_line(self.columns))
        elif new := [k for k in row if k not in self.known]:
            self.log.close()
            _, rows = self._read()
            self.columns += new
            self.known.update(new)
            self._replace(rows)
            self.log = AppendLog(self.path, self.path.stat().st_size)
        self.log.write_line(_csv_line([_csv_value(row.get(c, "")) for c in self.columns]))
        self.rows += 1

    def state(self) -> dict[str, Any]:
        self.log.offset()  # flushed and fsynced: the rows counted are on disk
        columns = None if self.columns is None else list(self.columns)
        return {"rows": self.rows, "columns": columns}

    def close(self) -> None:
        self.log.close()

    def _read(self) -> tuple[list[str], list[list[str]]]:
        """The header and the rows as the file has them (none if it is missing or empty)."""
        try:
            with open(self.path, newline="", encoding="utf-8") as f:
                table = list(csv.reader(f))
        except FileNotFoundError:
            return [], []
        return (table[0], table[1:]) if table else ([], [])

    def _restore(self, state: Mapping[str, Any]) -> list[list[str]]:
        """The rows at the checkpoint, in its columns (the file may have been widened since)."""
        assert self.columns is not None
        header, rows = self._read()
        if not header:
            raise FileNotFoundError(f"{self.path} is missing or empty; the checkpoint has rows")
        missing = [c for c in self.columns if c not in header]
        if missing:
            raise ValueError(f"{self.path}: no column {missing[0]!r}, which the checkpoint has")
        index = [header.index(c) for c in self.columns]
        rows = [[row[i] if i < len(row) else "" for i in index] for row in rows]
        n = state["rows"] if "rows" in state else self._rows_in(state["offset"], rows)
        if len(rows) < n:
            raise FileNotFoundError(
                f"{self.path} is shorter ({len(rows)} rows) than at the checkpoint ({n})"
            )
        return rows[:n]

    def _rows_in(self, offset: int, rows: list[list[str]]) -> int:
        """How many rows fit in a byte length (what checkpoints recorded before rows)."""
        assert self.columns is not None
        size, n = _csv_size(self.columns), 0
        while size < offset and n < len(rows):
            size, n = size + _csv_size(rows[n]), n + 1
        if size < offset:
            raise FileNotFoundError(
                f"{self.path} is shorter ({size} bytes) than at the checkpoint ({offset})"
            )
        if size > offset:
            raise ValueError(f"{self.path}: no row ends at the checkpoint's length ({offset})")
        return n

    def _replace(self, rows: list[list[str]]) -> None:
        """Write the header and ``rows`` (padded to it) atomically: a temporary file, fsynced,
        renamed over the file, the folder fsynced."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_name(f".{self.path.name}.tmp")
        try:
            with open(tmp, "wb") as f:
                if self.columns is not None:
                    width = len(self.columns)
                    for cells in [self.columns, *rows]:
                        line = _csv_line([*cells, *[""] * (width - len(cells))])
                        f.write(line.encode("utf-8") + b"\n")
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, self.path)
        finally:
            tmp.unlink(missing_ok=True)
        if os.name == "posix":  # the rename itself survives a crash
            fsync_path(self.path.parent)


def _csv_line(cells: list[Any]) -> str:
    buf = io.StringIO()
    csv.writer(buf, lineterminator="").writerow(cells)
    return buf.getvalue()


def _csv_size(cells: list[Any]) -> int:
    """The bytes ``cells`` take as a line of the file."""
    return len(_csv_line(cells).encode("utf-8")) + 1


def _csv_value(v: Any) -> Any:
    return repr(v) if isinstance(v, float) else v


@loggers.register("csv")
class CsvLogger(BaseLogger):
    """``metrics.csv`` (a row per logged step) and ``validation.csv`` (a row per validation).

    Each has a column for every key any of its rows had (see :class:`_CsvFile`), so every
    metric of ``metrics.jsonl`` is in ``metrics.csv``, including those of later phases.
    """

    def start(self, run_dir: Path, total_steps: int, state: dict[str, Any] | None) -> None:
        state = state or {}
        self.steps = _CsvFile(run_dir / CSV_FILE, state.get(CSV_FILE))
        self.validations = _CsvFile(run_dir / VALIDATION_CSV_FILE, state.get(VALIDATION_CSV_FILE))

    def log(self, step, metrics, validation, timing) -> None:
        self.steps.write({"step": step, **metrics})
        if validation is not None:
            self.validations.write({"step": step, **flatten(validation)})

    def state(self) -> dict[str, Any]:
        return {CSV_FILE: self.steps.state(), VALIDATION_CSV_FILE: self.validations.state()}

    def close(self) -> None:
        self.steps.close()
        self.validations.close()


def _human(n: float) -> str:
    for unit in ("", "k", "M", "G"):
        if abs(n) < 1000:
            return f"{n:.1f}{unit}" if unit else f"{n:.0f}"
        n /= 1000
    return f"{n:.1f}T"


def _duration(seconds: float) -> str:
    if not math.isfinite(seconds):
        return "?"
    seconds = int(seconds)
    h, rem = divmod(seconds, 3600)
    m, s = divmod(rem, 60)
    return f"{h}h{m:02d}m" if h else (f"{m}m{s:02d}s" if m else f"{s}s")


@loggers.register("progress")
class ProgressLogger(BaseLogger):
    """A live one-line progress bar on a terminal; a line every ~5% of the steps otherwise."""

    def __init__(self, stream: TextIO | None = None, width: int = 20) -> None:
        self.stream = stream or sys.stderr
        self.width = width
        self.tty = bool(getattr(self.stream, "isatty", lambda: False)())
        self.last_score: tuple[str, float] | None = None
        self._drawn = False

    def start(self, run_dir: Path, total_steps: int, state: dict[str, Any] | None) -> None:
        self.total = total_steps
        self.every = max(1, total_steps // 20)
        self.t0 = time.perf_counter()
        self.first_step: int | None = None
        # a resumed run shows the last validation's score until it validates again
        saved = (state or {}).get("last_score")
        self.last_score = (saved[0], float(saved[1])) if saved else None

    def line(self, step: int, metrics: Mapping[str, Any], timing: Mapping[str, Any]) -> str:
        done = min(1.0, step / max(1, self.total))
        filled = int(done * self.width)
        bar = "#" * filled + "-" * (self.width - filled)
        lrs = [v for k, v in metrics.items() if k.startswith("lr/")]
        parts = [
            f"step {step}/{self.total} [{bar}]",
            f"loss {metrics.get('loss', float('nan')):.4g}",
        ]
        if lrs:
            parts.append(f"lr {max(lrs):.2e}")
        if "grad_norm" in metrics:
            parts.append(f"gnorm {metrics['grad_norm']:.3g}")
        if timing.get("words_per_s"):
            parts.append(f"{_human(timing['words_per_s'])} words/s")
        if self.last_score:
            parts.append(f"{self.last_score[0]} {self.last_score[1]:.4f}")
        if self.first_step is not None and step > self.first_step:
            rate = (time.perf_counter() - self.t0) / (step - self.first_step)
            parts.append(f"eta {_duration(rate * (self.total - step))}")
        return "  ".join(parts)

    def log(self, step, metrics, validation, timing) -> None:
        if self.first_step is None:
            self.first_step = step
            self.t0 = time.perf_counter()
        score = headline_score(validation)
        if score is not None:
            self.last_score = score
        text = self.line(step, metrics, timing)
        if self.tty:
            self.stream.write("\r\x1b[2K" + text)
            self._drawn = True
            if validation is not None:
                self.stream.write("\n")
                self._drawn = False
        elif step % self.every == 0 or validation is not None or step == self.total:
            self.stream.write(text + "\n")
        self.stream.flush()

    def state(self) -> dict[str, Any]:
        return {"last_score": list(self.last_score) if self.last_score else None}

    def message(self, text: str) -> None:
        if self._drawn:
            self.stream.write("\n")
            self._drawn = False
        self.stream.write(text + "\n")
        self.stream.flush()

    def close(self) -> None:
        if self._drawn:
            self.stream.write("\n")
            self._drawn = False
        self.stream.flush()


@loggers.register("rich")
class RichLogger(ProgressLogger):
    """EDS-NLP's default display, for its configs: the ``progress`` bar (no ``rich`` needed)."""


@loggers.register("tensorboard")
class TensorBoardLogger(BaseLogger):
    """TensorBoard event files in ``OUTPUT_DIR/tensorboard`` (extra: ``pureml[tensorboard]``)."""

    def start(self, run_dir: Path, total_steps: int, state: dict[str, Any] | None) -> None:
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError as e:
            raise ImportError(
                "train.logger: 'tensorboard' needs the extra: pip install 'pureml[tensorboard]'"
            ) from e
        # the first step after the checkpoint: TensorBoard hides what a killed run wrote from there
        purge = (state or {}).get("step")
        self.writer = SummaryWriter(str(run_dir / "tensorboard"), purge_step=purge)
        self.step = (purge or 1) - 1  # the last step logged, as if this process had logged it

    def log(self, step, metrics, validation, timing) -> None:
        self.step = step
        for k, v in {**metrics, **flatten(timing, "timing")}.items():
            if isinstance(v, int | float) and not isinstance(v, bool):
                self.writer.add_scalar(k, v, step)
        for k, v in flatten(validation or {}, "validation").items():
            if isinstance(v, int | float) and not isinstance(v, bool):
                self.writer.add_scalar(k, v, step)

    def state(self) -> dict[str, Any]:
        self.writer.flush()
        return {"step": self.step + 1}

    def close(self) -> None:
        self.writer.close()


def tensorboard_available() -> bool:
    try:
        import tensorboard  # noqa: F401
    except ImportError:
        return False
    return True
