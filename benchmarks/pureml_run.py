"""How the benchmark contenders drive pureml: time its steps, count compiled graphs, predict dev.

Everything goes through pureml's public training API (``build_training`` + ``train``); the only
intrusion is a wrapper around the step that ``pureml.core.step.make_step`` returns, which stamps
the time at each call and reads the batch's word count, so that step i lasts from its call to
the next one's (data loading, logging, checkpoints and validation of the loop included).

>>> t = StepTimer()
>>> t.durations(end=1.0)
[]
"""

from __future__ import annotations

import sys
import time
from pathlib import Path
from typing import Any

BENCH = Path(__file__).resolve().parent
sys.path.insert(0, str(BENCH))
sys.path.insert(0, str(BENCH.parent))

import ncbi  # noqa: E402

SKIPPED = 3  # exit code read by the drivers as "cannot run yet"


def skip(reason: str) -> None:
    """Print ``reason`` as the last line and exit with :data:`SKIPPED`."""
    print(reason, flush=True)
    sys.exit(SKIPPED)


def require_trainer() -> None:
    try:
        import pureml.core.step  # noqa: F401
        from pureml.training.build import build_training  # noqa: F401
        from pureml.training.trainer import train  # noqa: F401
    except ImportError as e:
        skip(f"pureml's trainer is not importable yet ({e})")


class StepTimer:
    """Wraps ``pureml.core.step.make_step`` so every step call is time-stamped."""

    def __init__(self) -> None:
        self.stamps: list[float] = []
        self.words: list[float] = []
        self._losses: list[Any] = []
        self._original = None

    def install(self) -> StepTimer:
        import pureml.core.step as core_step

        original = self._original = core_step.make_step

        def timed_make_step(*a: Any, **kw: Any):
            step = original(*a, **kw)

            def timed(state, sub_batches, *s_a, **s_kw):
                self.stamps.append(time.perf_counter())
                # the trainer gives every sub-batch the global totals: read the first one
                self.words.append(float(sub_batches[0]["stats"]["words"]))
                state, metrics = step(state, sub_batches, *s_a, **s_kw)
                self._losses.append(metrics.get("loss"))
                return state, metrics

            timed.adopt = step.adopt  # the trainer hands the step its own initial state
            return timed

        core_step.make_step = timed_make_step
        return self

    def losses(self) -> list[float | None]:
        """The loss of every step (read after training: no extra device sync while timing)."""
        return [None if v is None else float(v) for v in self._losses]

    def durations(self, end: float) -> list[float]:
        return [b - a for a, b in zip(self.stamps, self.stamps[1:] + [end])]


def compile_stats(times: list[float]) -> dict:
    """Graphs compiled, graph breaks and dynamo's total compile seconds (``compile_inner``:
    tracing + backend compile of every graph, recompiles included)."""
    from torch._dynamo.utils import compile_times, counters

    out = {
        "unique_graphs": int(counters["stats"].get("unique_graphs", 0)),
        "graph_breaks": int(sum(counters["graph_break"].values())),
        # make_step compiles two functions (per-sub-batch grads, update): more graphs are recompiles
        "recompiles": max(0, int(counters["stats"].get("unique_graphs", 0)) - 2),
    }
    try:
        names, values = compile_times(repr="csv", aggregate=True)
        table = dict(zip(names, (float(v) for v in values)))
        out["compile_s"] = table.get("_compile.compile_inner")
        out["backend_compile_s"] = table.get("OutputGraph.call_user_compiler")
    except Exception:  # the layout of compile_times is not a stable API
        out["compile_s"] = None
    if times:
        steady = min(times)
        out["slow_steps"] = [i for i, t in enumerate(times) if t > 5 * steady][:20]
    return out


def predict(nlp: Any, docs: list[dict], batch_size: int | str | None = None) -> dict:
    """``{doc_id: [(start, end, label)]}`` from the pipeline's ``ents`` on raw dev texts.

    ``batch_size``: None batches as ``nlp.pipe`` does by default (a word budget), as a user
    calling ``nlp.pipe(texts)`` would; EDS-NLP's contender uses its own default too.
    """
    import torch

    was = nlp.training
    nlp.eval()
    try:
        with torch.no_grad():
            texts = [d["text"] for d in docs]
            out = nlp.pipe(texts) if batch_size is None else nlp.pipe(texts, batch_size=batch_size)
            preds = {
                d["id"]: sorted({(s.start, s.end, s.label) for s in doc.spans.get("ents", [])})
                for d, doc in zip(docs, out)
            }
    finally:
        nlp.train(was)
    return preds


def dev_docs(data: str | Path) -> list[dict]:
    return ncbi.read_split("devel", data)
