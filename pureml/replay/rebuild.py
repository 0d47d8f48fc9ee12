"""Rebuild a finished (or running) run from its folder: pipeline, step function, state, streams.

Everything is built by the trainer's own code from the run's resolved recipe (``config.toml``),
so a replay constructs the same parameters, the same compiled step (same backend) and the same
stream chain as the run did; the state and stream positions come from
``checkpoints/step-NNNNNN`` (or from the initial state when no checkpoint precedes the step).
Nothing is written to the run folder.

The trainer does its set-up inside ``Trainer.run``; :class:`ReplayTrainer` is the small adapter
that calls the same private pieces in the same order, without the file writes (see the report
of issue 6 for the public hooks that would replace it).

>>> run = RebuiltRun("artifacts/quickstart")               # doctest: +SKIP
>>> phase = run.start(before_step=41)         # doctest: +SKIP
>>> subs, streams, ids = phase.draw()          # doctest: +SKIP
>>> state, metrics = phase.step_fn(phase.state, subs)      # doctest: +SKIP
"""

from __future__ import annotations

import functools
import os
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import attrs
import torch

from ..core.state import CheckpointError as CoreCheckpointError
from ..core.state import TrainState, load_state
from ..training import checkpoint as ckpt
from ..training.records import STEPS_FILE, params_fingerprint, read_records
from ..training.trainer import Trainer


class ReplayError(RuntimeError):
    """The run folder cannot be replayed as asked (missing record, step out of range, ...)."""


class ReplayTrainer(Trainer):
    """The trainer, used only for its building code; ``breakpoint_in_loss`` wraps the loss.

    With ``breakpoint_in_loss`` set, the loss function calls :func:`breakpoint` before each
    evaluation (once per sub-batch), inside the step function: only meaningful eagerly.
    """

    breakpoint_in_loss: bool = False

    def _loss_fn(self) -> Callable[..., Any]:
        loss_fn = super()._loss_fn()
        if not self.breakpoint_in_loss:
            return loss_fn

        def loss_fn_with_breakpoint(params, buffers, batch, key):
            # pureml replay --pdb: `s` steps into the pipeline's loss, `up` shows the step
            breakpoint()
            return loss_fn(params, buffers, batch, key)

        return loss_fn_with_breakpoint


@attrs.define
class Phase:
    """One phase of a rebuilt run, positioned before step ``next_step``."""

    index: int
    components: list[str]
    step_fn: Any
    state: TrainState
    iterators: dict[str, Any]
    next_phase_step: int
    trainer: ReplayTrainer

    @property
    def next_step(self) -> int:
        return self.index * self.trainer.max_steps + self.next_phase_step

    @property
    def done(self) -> bool:
        return self.next_phase_step > self.trainer.max_steps

    def draw(self) -> tuple[list[dict], dict[str, dict], list[str]]:
        """The next batch, exactly as the trainer draws it: ``(sub_batches, streams, doc_ids)``,
        the sub-batches on the run's device."""
        from ..training.trainer import _to_device

        subs, streams, ids = self.trainer._draw(self.iterators)
        return [_to_device(sb, self.trainer.device) for sb in subs], streams, ids

    @property
    def indices(self) -> list[int]:
        """The global indices of this process's sub-batches in the batch last drawn (the
        dropout keys depend on them; 0, 1, ... in a single process)."""
        return list(self.trainer.sub_batch_indices)

    def advance(self, state: TrainState) -> None:
        self.state = state
        self.next_phase_step += 1

    def close(self) -> None:
        for it in self.iterators.values():
            if hasattr(it, "close"):
                it.close()


class RebuiltRun:
    """A run folder, rebuilt in this process by the trainer's code (read-only).

    Args:
        run_dir: the run folder (``config.toml``, ``steps.jsonl``, ``checkpoints/``).
        compile: ``None`` (as the run: its ``train.compile``), or False for an eager step.
        overrides: recipe overrides (``key=value``), e.g. to point at moved data.
    """

    def __init__(
        self,
        run_dir: str | os.PathLike,
        *,
        compile: bool | None = None,
        overrides: Sequence[str] = (),
    ) -> None:
        from ..training.build import build_training

        self.run_dir = Path(run_dir)
        config = self.run_dir / "config.toml"
        if not config.is_file():
            if (self.run_dir / STEPS_FILE).is_file():
                # train() from Python writes config.toml only when given recipe=
                raise FileNotFoundError(
                    f"{self.run_dir}: started from Python without a recipe (train() without "
                    "recipe=): it has no config.toml, so it cannot be rebuilt for replay "
                    "(pureml diff still compares its records)"
                )
            raise FileNotFoundError(
                f"{self.run_dir}: not a run folder (no config.toml, no {STEPS_FILE})"
            )
        kwargs = build_training(config, list(overrides))
        # nothing written, nothing resumed; prefetching does not change batches, so none
        kwargs.update(logger=False, save_model=False, num_workers=0, resume=False)
        self.recipe = kwargs.get("recipe")
        self.trainer = ReplayTrainer(**kwargs)
        if compile is not None:
            self.trainer.compile = compile
        self._setup_done = False
        self._records: dict[int, dict] | None = None

    # -- what the run wrote -------------------------------------------------------------------

    @property
    def records(self) -> dict[int, dict]:
        if self._records is None:
            self._records = {r["step"]: r for r in read_records(self.run_dir)}
        return self._records

    def target_step(self, step: int | None) -> int:
        """``step`` (None: the last recorded step), refused unless steps.jsonl records it."""
        records = self.records
        if not records:
            raise ReplayError(f"{self.run_dir}: steps.jsonl is empty")
        last = max(records)
        step = last if step is None else step
        if step not in records:
            raise ReplayError(
                f"step {step} is not recorded in {self.run_dir / 'steps.jsonl'} "
                f"(recorded: {min(records)}..{last})"
            )
        self._check_world_size(step)
        return step

    def world_size(self, step: int) -> int:
        """How many processes recorded ``step``: its record says so (none: 1). Records of older
        runs lack it: then those of the first checkpoint at or after the step (a resumed run
        rewrites the records after the checkpoint it resumes from), else of the latest
        checkpoint; 1 when there is none."""
        if self._sizes_recorded:
            return int(self.records.get(step, {}).get("world_size", 1))
        found = ckpt.list_checkpoints(self.run_dir)
        after = [p for s, p in found if s >= step] or [p for _, p in found[-1:]]
        for path in after:
            try:
                return int(ckpt.read_meta(path).get("world_size", 1))
            except (OSError, ValueError):
                continue
        return 1

    @functools.cached_property
    def _sizes_recorded(self) -> bool:
        """Whether the records say how many processes ran each step (runs since world_size
        went into steps.jsonl; older ones leave it to their checkpoints)."""
        return any("world_size" in r for r in self.records.values())

    def _check_world_size(self, step: int) -> None:
        """Refuse a replay with another number of processes than the run's: under data
        parallelism each rank trains on its own share of the batch with its own dropout keys,
        and steps.jsonl holds rank 0's share, so only the same layout replays bit for bit."""
        recorded, here = self.world_size(step), self.trainer.world.world_size
        before = self.checkpoint_before(step)
        first = int(ckpt.read_meta(before)["step"]) + 1 if before is not None else 1
        # a replay runs every step from the checkpoint before ``step`` in one layout (older
        # runs' records cannot say: their layout is their checkpoints')
        steps = range(first, step) if self._sizes_recorded else ()
        changed = [s for s in steps if self.world_size(s) != recorded]
        if changed:
            start = f"checkpoint {before.name}" if before is not None else "the initial state"
            raise ReplayError(
                f"steps {first}..{step} of {self.run_dir} were not all trained by as many "
                f"processes (step {changed[-1]}: {self.world_size(changed[-1])}, step {step}: "
                f"{recorded}; the run was resumed with another number): a replay of step {step} "
                f"re-runs them all from {start} in one layout; replay a step that a checkpoint "
                "of its own layout precedes"
            )
        if recorded == here:
            return
        how = (
            f"torchrun --nproc_per_node {recorded} -m pureml.cli replay {self.run_dir} "
            f"--step {step}"
            if recorded > 1
            else f"pureml replay {self.run_dir} --step {step}"
        )
        raise ReplayError(
            f"step {step} of {self.run_dir} was trained by {recorded} process"
            f"{'es' if recorded > 1 else ''}, this replay runs {here}: replay it with as many "
            f"({how})"
        )

    @property
    def backend(self) -> str:
        t = self.trainer
        return t.compile_backend if t.compile else "eager (not compiled)"

    def checkpoint_before(self, step: int) -> Path | None:
        """The newest valid checkpoint holding the state before ``step`` (at most ``step - 1``)."""
        return ckpt.latest_checkpoint(self.run_dir, at_most=step - 1)

    # -- building -----------------------------------------------------------------------------

    def setup(self) -> None:
        """What ``Trainer.run`` does before its first phase, minus the files it writes."""
        if self._setup_done:
            return
        t = self.trainer
        t.device = t.world.device if not t.cpu else torch.device("cpu")
        t._configure_torch()
        t.plan = t._phase_plan()
        t.total_steps = t.max_steps * len(t.plan)
        t.nlp.loss_scales = {**getattr(t.nlp, "loss_scales", {}), **t.loss_scales}
        t.val_docs = []
        t._post_init()
        t.nlp.to(t.device)
        # phase 0 from scratch starts from these; replays in the same process move the module
        self._initial = {k: v.detach().clone() for k, v in t.nlp.state_dict().items()}
        self._setup_done = True

    def phase(
        self, index: int, checkpoint: Path | None = None, loss_scale: dict | None = None
    ) -> Phase:
        """Phase ``index`` positioned at its start, or at ``checkpoint`` (of that phase).

        ``loss_scale``: the previous phase's final float16 loss-scale statistics, which a
        phase started from its beginning continues from, as in the trainer."""
        self.setup()
        t = self.trainer
        if index == 0 and checkpoint is None:
            t.nlp.load_state_dict(self._initial)
        comps, feeds = t.plan[index]
        step_fn, state = t._phase_state(index, comps, loss_scale)
        streams = {name: t._training_stream(index, name, td, pipes) for name, td, pipes in feeds}
        first = 0
        if checkpoint is not None:
            meta = ckpt.read_meta(checkpoint)
            try:
                state, _ = load_state(state, Path(checkpoint) / "state")
            except CoreCheckpointError as e:
                saved = meta.get("versions", {})
                raise ReplayError(
                    f"{checkpoint}: its state does not fit the step this code builds ({e}); "
                    f"was the code changed since the run? (written with {saved})"
                ) from e
            for name, stream in streams.items():
                stream.load_state_dict(meta["streams"][name])
            t._sync_module(state)
            first = meta["phase_step"]
        iterators = {name: iter(s) for name, s in streams.items()}
        return Phase(index, list(comps), step_fn, state, iterators, first + 1, t)

    def eager_step(self, index: int, *, breakpoint_in_loss: bool = False) -> Any:
        """An uncompiled step function of phase ``index`` (same loss, optimizer and options)."""
        self.setup()
        t = self.trainer
        saved = (t.compile, t.breakpoint_in_loss)
        t.compile, t.breakpoint_in_loss = False, breakpoint_in_loss
        try:
            step_fn, _ = t._phase_state(index, t.plan[index][0])
        finally:
            t.compile, t.breakpoint_in_loss = saved
        return step_fn

    def start(self, before_step: int) -> Phase:
        """The phase and state just before global step ``before_step`` is taken.

        Starts from the newest checkpoint before that step, or from the initial state; later
        phases start from the previous phase's final state, as in the trainer, so the steps in
        between are run (and should be checked by the caller: see :func:`pureml.replay.replay`).
        """
        self.setup()
        path = self.checkpoint_before(before_step)
        if path is None:
            return self.phase(0)
        meta = ckpt.read_meta(path)
        return self.phase(meta["phase"], path)

    def next_phase(self, phase: Phase) -> Phase | None:
        """The phase after a finished one (the pipeline synced to its final state), or None."""
        phase.close()
        t = self.trainer
        t._sync_module(phase.state)
        if phase.index + 1 >= len(t.plan):
            return None
        return self.phase(phase.index + 1, loss_scale=phase.state.loss_scale)

    # -- documents ----------------------------------------------------------------------------

    def documents(self, ids_by_stream: Mapping[str, Sequence[str]]) -> dict[str, dict[str, Any]]:
        """The original documents (with gold annotations) of each stream, by id."""
        from ..stream import Stream

        t = self.trainer
        out: dict[str, dict[str, Any]] = {}
        for name, td in zip(t.stream_names, t.train_data):
            if name not in ids_by_stream:
                continue
            wanted = set(ids_by_stream[name])
            data = td.data if isinstance(td.data, Stream) else Stream.from_items(td.data)
            out[name] = {d.id: d for d in data if d.id in wanted}
        return out


__all__ = ["Phase", "RebuiltRun", "ReplayError", "ReplayTrainer", "params_fingerprint"]
