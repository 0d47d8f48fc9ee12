"""``pureml replay RUN_DIR --step N``: rerun recorded steps and check them bit for bit.

From the newest checkpoint before step ``N`` (or the initial state), each step draws its batch
from the rebuilt streams, runs the run's own (compiled) step function, and compares with the
record in ``steps.jsonl``: the stream positions and document ids, the batch fingerprint, the
loss and per-component losses, the gradient norm, the learning rates, the spike/skip flags, and
the parameters' fingerprint where the record has one. All values are compared exactly (the
record stores floats as ``float.hex``).

At step ``N`` it can also run the same step eagerly from the same state (``eager=True``) and
report the relative differences from the compiled numbers, stop in the debugger inside the loss
(``pdb=True``), and write the batch, losses and gradient norms (``dump=DIR``,
:mod:`pureml.replay.dump`).

>>> report = replay("artifacts/quickstart", step=60)   # doctest: +SKIP
>>> report.ok, [s.step for s in report.steps][:3]        # doctest: +SKIP
(True, [41, 42, 43])
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import attrs
import torch

from ..core.state import TrainState
from ..training.records import batch_fingerprint, from_exact, step_record
from .rebuild import Phase, RebuiltRun, ReplayError, params_fingerprint


@attrs.frozen
class Mismatch:
    """One field of a step that differs from its record (values as recorded)."""

    field: str
    recorded: Any
    replayed: Any


@attrs.frozen
class StepCheck:
    """The outcome of replaying one step."""

    step: int
    mismatches: tuple[Mismatch, ...]
    record: Mapping[str, Any]
    replayed: Mapping[str, Any]

    @property
    def ok(self) -> bool:
        return not self.mismatches


@attrs.frozen
class EagerComparison:
    """Step ``N`` run eagerly vs compiled, from the same state: relative differences."""

    step: int
    relative: Mapping[str, float]
    compiled: Mapping[str, float]
    eager: Mapping[str, float]

    @property
    def max_relative(self) -> float:
        return max(self.relative.values(), default=0.0)


@attrs.frozen
class ReplayReport:
    """All replayed steps, where the replay started, and the optional eager comparison."""

    run_dir: Path
    step: int
    start: str
    backend: str
    steps: tuple[StepCheck, ...]
    eager: EagerComparison | None = None
    dump_dir: Path | None = None

    @property
    def ok(self) -> bool:
        return all(s.ok for s in self.steps)

    @property
    def first_mismatch(self) -> StepCheck | None:
        return next((s for s in self.steps if not s.ok), None)


def _compare(
    record: Mapping[str, Any], replayed: Mapping[str, Any], rank: int = 0
) -> tuple[Mismatch, ...]:
    """The fields that differ. Under torchrun the record is rank 0's: its documents, sub-batch
    count and batch fingerprint are rank 0's share, so other ranks check only what every rank
    shares (stream positions, losses, gradient norm, learning rates, flags, parameters); any
    mismatch there is the same on every rank, so all ranks stop at the same step."""
    out = []
    for name, rec_stream in record.get("streams", {}).items():
        rep_stream = replayed["streams"].get(name, {})
        for key in ("position", "doc_ids", "sub_batches") if rank == 0 else ("position",):
            if rec_stream.get(key) != rep_stream.get(key):
                out.append(
                    Mismatch(f"streams/{name}/{key}", rec_stream.get(key), rep_stream.get(key))
                )
    shared = ("phase", "phase_step", "loss", "grad_norm", "spike", "skipped")
    for key in ("batch", *shared) if rank == 0 else shared:
        if record.get(key) != replayed.get(key):
            out.append(Mismatch(key, record.get(key), replayed.get(key)))
    for group in ("losses", "lr"):
        a, b = record.get(group, {}), replayed.get(group, {})
        for k in sorted(set(a) | set(b)):
            if a.get(k) != b.get(k):
                out.append(Mismatch(f"{group}/{k}", a.get(k), b.get(k)))
    if "params" in record and record["params"] != replayed.get("params"):
        out.append(Mismatch("params", record["params"], replayed.get("params")))
    return tuple(out)


def _relative(a: float, b: float) -> float:
    """``|a - b| / |b|`` (0 when both are 0; inf when only the reference is 0)."""
    if a == b:
        return 0.0
    if not (math.isfinite(a) and math.isfinite(b)):
        return math.inf
    return abs(a - b) / abs(b) if b != 0 else math.inf


def _tree_relative(a: Mapping[str, torch.Tensor], b: Mapping[str, torch.Tensor]) -> float:
    """``||a - b|| / ||b||`` over all tensors (float64)."""
    num = sum(float((a[k].double() - b[k].double()).pow(2).sum()) for k in b)
    den = sum(float(b[k].double().pow(2).sum()) for k in b)
    return math.sqrt(num) / math.sqrt(den) if den else (0.0 if num == 0 else math.inf)


def compare_eager(
    step: int,
    before: TrainState,
    compiled: tuple[TrainState, Mapping[str, Any]],
    eager: tuple[TrainState, Mapping[str, Any]],
) -> EagerComparison:
    """Relative differences of the scalar metrics, the new parameters and the update."""
    (cs, cm), (es, em) = compiled, eager
    rel: dict[str, float] = {}
    cvals: dict[str, float] = {}
    evals: dict[str, float] = {}
    for k in cm:
        if k == "loss" or k.startswith("loss/") or k == "grad_norm":
            c, e = float(cm[k]), float(em[k])
            cvals[k], evals[k] = c, e
            rel[k] = _relative(e, c)
    rel["params"] = _tree_relative(es.params, cs.params)
    cu = {k: cs.params[k] - before.params[k] for k in cs.params}
    eu = {k: es.params[k] - before.params[k] for k in cs.params}
    rel["update"] = _tree_relative(eu, cu)
    return EagerComparison(step, rel, cvals, evals)


def _replayed_record(
    record: Mapping[str, Any],
    step: int,
    phase: Phase,
    metrics: Mapping[str, Any],
    streams: Mapping[str, Any],
    ids: Sequence[str],
    subs: Sequence[Any],
    state: TrainState,
) -> dict[str, Any]:
    return step_record(
        step=step,
        phase=phase.index,
        phase_step=phase.next_phase_step,
        metrics={k: v.item() if isinstance(v, torch.Tensor) else v for k, v in metrics.items()},
        streams=streams,
        batch=batch_fingerprint(ids, subs),
        params=params_fingerprint(state) if "params" in record else None,
    )


def replay(
    run_dir: str | os.PathLike,
    step: int | None = None,
    *,
    eager: bool = False,
    pdb: bool = False,
    dump: str | os.PathLike | None = None,
    keep_going: bool = False,
    overrides: Sequence[str] = (),
    on_step: Callable[[StepCheck], None] | None = None,
    run: RebuiltRun | None = None,
) -> ReplayReport:
    """Replay the steps from the newest checkpoint before ``step`` up to ``step`` (default: the
    last recorded step), checking each against its record.

    Stops at the first mismatching step unless ``keep_going``. ``eager``: also run step ``step``
    uncompiled from the same state and compare (:class:`EagerComparison`). ``pdb``: the eager
    run of step ``step`` stops in the debugger inside the loss function (implies ``eager``).
    ``dump``: write step ``step``'s batch, losses and gradient norms there.
    ``on_step`` is called after each step (progress printing).
    """
    run = run if run is not None else RebuiltRun(run_dir, overrides=overrides)
    records = run.records
    step = run.target_step(step)
    rank = run.trainer.world.rank
    eager = eager or pdb
    checkpoint = run.checkpoint_before(step)
    start = f"checkpoint {checkpoint.name}" if checkpoint is not None else "the initial state"
    phase: Phase | None = run.start(step)
    checks: list[StepCheck] = []
    comparison = None
    try:
        while phase is not None:
            if phase.done:
                phase = run.next_phase(phase)
                continue
            n = phase.next_step
            record = records.get(n)
            if record is None:
                raise ReplayError(f"step {n} is not recorded: cannot check the way to step {step}")
            subs, streams, ids = phase.draw()
            before = phase.state
            # The trainer's compiled step writes the next state into the one it is given (donate):
            # at the step to examine, it gets a new TrainState object over the same tensors,
            # which it copies before writing, so that ``before`` still holds this step's input.
            given = before.replace() if n == step else before
            new_state, metrics = phase.step_fn(given, subs, indices=phase.indices)
            replayed = _replayed_record(record, n, phase, metrics, streams, ids, subs, new_state)
            check = StepCheck(n, _compare(record, replayed, rank), record, replayed)
            checks.append(check)
            if on_step is not None:
                on_step(check)
            if n == step:
                if eager:
                    eager_fn = run.eager_step(phase.index, breakpoint_in_loss=pdb)
                    comparison = compare_eager(
                        n,
                        before,
                        (new_state, metrics),
                        eager_fn(before, subs, indices=phase.indices),
                    )
                # rank 0's share of the batch, as steps.jsonl records it; every rank writing
                # one folder mixed the ranks' files
                if dump is not None and rank == 0:
                    from .dump import write_dump

                    write_dump(Path(dump), run, phase, before, new_state, subs, streams, metrics)
                break
            if not check.ok and not keep_going:
                break
            phase.advance(new_state)
    finally:
        if phase is not None:
            phase.close()
    return ReplayReport(
        run.run_dir,
        step,
        start,
        run.backend,
        tuple(checks),
        comparison,
        Path(dump) if dump is not None and checks and checks[-1].step == step else None,
    )


def _show(value: Any) -> str:
    if isinstance(value, str) and value.startswith(("0x", "-0x")):
        return f"{from_exact(value):.9g} ({value})"
    text = str(value)
    return text if len(text) <= 160 else text[:157] + "..."


def format_step(check: StepCheck) -> str:
    """One line per step: ``step 41  ok  loss ... grad_norm ... batch ... params ...``."""
    r = check.record
    if check.ok:
        loss = from_exact(r["loss"])
        gn = from_exact(r["grad_norm"])
        params = f"  params {r['params'][:12]}" if "params" in r else ""
        return (
            f"step {check.step:>6}  ok        loss {loss:.6g}  grad_norm {gn:.6g}  "
            f"batch {r['batch'][:12]}{params}"
        )
    fields = ", ".join(m.field for m in check.mismatches)
    return f"step {check.step:>6}  MISMATCH  {fields}"


def format_report(report: ReplayReport) -> str:
    """The summary ``pureml replay`` prints after the per-step lines."""
    lines = []
    bad = report.first_mismatch
    if bad is not None:
        lines.append(f"first mismatch at step {bad.step}:")
        for m in bad.mismatches:
            lines.append(f"  {m.field}: recorded {_show(m.recorded)}, replayed {_show(m.replayed)}")
    else:
        first = report.steps[0].step if report.steps else report.step
        lines.append(
            f"all {len(report.steps)} steps ({first}..{report.step}) match the record bit for bit"
        )
    if report.eager is not None:
        e = report.eager
        lines.append(f"step {e.step} eager vs compiled ({report.backend}), relative differences:")
        for k, v in e.relative.items():
            extra = (
                f"  (compiled {e.compiled[k]:.9g}, eager {e.eager[k]:.9g})"
                if k in e.compiled
                else ""
            )
            lines.append(f"  {k:<16} {v:.3e}{extra}")
    if report.dump_dir is not None:
        lines.append(
            f"wrote step {report.step}'s batch, losses and gradient norms to {report.dump_dir}"
        )
    return "\n".join(lines)


__all__ = [
    "EagerComparison",
    "Mismatch",
    "ReplayReport",
    "StepCheck",
    "compare_eager",
    "format_report",
    "format_step",
    "replay",
]
