"""``train(...)``: the training loop, from a pipeline and streams to ``model-last``, resumable.

The loop, per phase (components that share parameters train together; phases in sequence)::

    for step in 1..max_steps:
        batches = one batch from each training stream, split into sub-batches, collated
        totals  = sum of every sub-batch's stats (and across ranks); put into each sub-batch
        state, metrics = compiled_step(state, sub_batches)     # pure: grads, clip, guard, update
        record (steps.jsonl), log (metrics.jsonl, ...), validate, checkpoint

The state is one :class:`~pureml.core.state.TrainState`; with the stream positions and the log
files' lengths it is the whole checkpoint, so a run killed anywhere and started again with the
same command ends bitwise equal to an uninterrupted run.

>>> from pureml.nlp import Pipeline, ScratchEncoder, NerCrf            # doctest: +SKIP
>>> nlp = Pipeline({"embedding": ScratchEncoder(), "ner": NerCrf()})  # doctest: +SKIP
>>> train(nlp, TrainingData(read_standoff("data/train"), "2000 words"),  # doctest: +SKIP
...       val_data=read_standoff("data/dev"), max_steps=200, output_dir="runs/x")
"""

from __future__ import annotations

import contextlib
import difflib
import inspect
import json
import os
import platform
import shutil
import signal
import sys
import time
import zlib
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import attrs
import torch

from ..core.state import CheckpointError, TrainState, fingerprint, load_state, save_state
from ..nlp.doc import Doc
from ..registry import loggers as logger_registry
from ..stream import Stream
from ..stream.engine import position_of
from ..stream.errors import EmptyShareError, StreamError
from . import checkpoint as ckpt
from .best import BEST_DIR, BestMetricError, BestScore, docs_key
from .loggers import BaseLogger, ProgressLogger
from .records import StepRecorder, batch_fingerprint, params_fingerprint, step_record
from .scorer import Scorer, accepts_world, warn_unscorable

FORMAT = "pureml.run/1"
RUN_FILES = (
    "config.toml",
    "metrics.jsonl",
    "timings.jsonl",
    "steps.jsonl",
    "metrics.csv",
    "validation.csv",
    "validation",
    "tensorboard",
    ckpt.CHECKPOINTS,
    BEST_DIR,  # another run's best model must not outlive a restart
)


class RunDirError(RuntimeError):
    """The output folder cannot be used for this run (it holds another recipe's checkpoints)."""


class TrainingInterrupted(KeyboardInterrupt):
    """Raised after Ctrl-C (or SIGTERM) once a checkpoint has been written."""


@attrs.define
class TrainingData:
    """A training stream and how it is batched (SEED.md's ``TrainingData``).

    Args:
        data: a :class:`~pureml.stream.Stream` (or any iterable) of documents, finite: the
            trainer shuffles and loops it.
        batch_size: a stat expression: ``"2000 words"``, ``"16 spans"``, ``32`` (= 32 docs).
        shuffle: ``"dataset"`` (EDS-NLP's ``"fragment"`` means the same here), a stat
            expression (shuffle within chunks), or False.
        sub_batch_size: gradient accumulation: a stat expression or ``"N splits"``.
        pipe_names: the components this stream feeds (default: all of the phase).
        post_init: let the components infer labels from this data before training.
        name: names the stream in records and checkpoints (default ``train_data_<i>``).

    >>> TrainingData([], batch_size=8).batch_size
    8
    """

    data: Any
    batch_size: str | int = "2000 words"
    shuffle: str | bool = "dataset"
    sub_batch_size: str | int | None = None
    # one name is one component, as in EDS-NLP (not a sequence of one-letter names)
    pipe_names: Sequence[str] | None = attrs.field(
        default=None, converter=lambda v: [v] if isinstance(v, str) else v
    )
    post_init: bool = True
    name: str | None = None


def _as_stream(data: Any) -> Stream:
    return data if isinstance(data, Stream) else Stream.from_items(data)


def _as_training_data(train_data: Any) -> list[TrainingData]:
    """``train``'s ``train_data``: TrainingData objects (or dicts of their fields, as EDS-NLP's
    config dicts), each with its data made a Stream once, so that a generator is read once and
    not exhausted by ``post_init`` before training reads it."""
    if isinstance(train_data, TrainingData | Mapping):
        train_data = [train_data]
    elif isinstance(train_data, Stream | str | os.PathLike):
        raise TypeError(
            f"train_data: expected TrainingData, got {type(train_data).__name__}; wrap the "
            'stream: TrainingData(stream, batch_size="2000 words")'
        )
    if not isinstance(train_data, Iterable):
        raise TypeError(
            f"train_data: expected TrainingData (or a list of them), got {type(train_data).__name__}"
        )
    out = []
    for i, td in enumerate(train_data):
        if isinstance(td, Mapping):
            td = TrainingData(**td)
        if not isinstance(td, TrainingData):
            raise TypeError(
                f"train_data[{i}]: expected TrainingData (or a dict of its fields), got "
                f"{type(td).__name__}"
            )
        from ..toml_writer import join_path

        where = join_path("train_data", td.name) if td.name else f"train_data[{i}]"
        td = attrs.evolve(td, data=_checked_stream(td.data, f"{where}.data"))
        _check_sizes(td, where)
        out.append(td)
    return out


def _checked_stream(data: Any, where: str) -> Stream:
    """``TrainingData.data`` as a Stream, refused (with its key path) unless it yields Docs: a
    path or texts failed in a component's post_init with an AttributeError."""
    if isinstance(data, str | os.PathLike):
        raise TypeError(
            f"{where}: expected a stream of Doc, got {type(data).__name__} (a path? read it "
            "with read_jsonl(...) or read_standoff(...))"
        )
    if not isinstance(data, Iterable):
        raise TypeError(f"{where}: expected a stream of Doc, got {type(data).__name__}")
    stream = _as_stream(data)
    first = next(iter(stream), None)  # a list, or a stream (which starts over when iterated)
    if first is not None and not isinstance(first, Doc):
        hint = (
            "a batched stream? pass the documents, without batch()"
            if isinstance(first, list | tuple)
            else "make Docs with pureml.Doc(text)"
        )
        raise TypeError(f"{where}: items are {type(first).__name__}, not Doc ({hint})")
    return stream


def _check_sizes(td: TrainingData, where: str) -> None:
    """``batch_size``, ``sub_batch_size`` and ``shuffle`` parsed now, with their key path."""
    from ..stream.batching import SplitCount, parse_size

    sizes = {"batch_size": td.batch_size, "sub_batch_size": td.sub_batch_size}
    if td.shuffle not in (False, None, True, "fragment"):
        sizes["shuffle"] = td.shuffle
    for key, value in sizes.items():
        if value is None:
            continue
        try:
            parsed = parse_size(value, allow_splits=key == "sub_batch_size")
        except StreamError as e:
            raise StreamError(f"{where}.{key}: {e}") from None
        if key == "shuffle" and isinstance(parsed, SplitCount):
            raise StreamError(f"{where}.shuffle: expected 'dataset' or a stat expression")


def _validation_docs(val_data: Iterable[Doc] | None) -> list[Doc]:
    """``val_data`` read once into a list of documents (a looped stream would never end)."""
    if val_data is None:
        return []
    if isinstance(val_data, str | os.PathLike):
        raise TypeError(
            f"val_data: expected documents, got {type(val_data).__name__} (a path? read it with "
            "read_jsonl(...) or read_standoff(...))"
        )
    from ..stream.stages import Loop

    if isinstance(val_data, Stream) and any(isinstance(s, Loop) for s in val_data.stages):
        raise ValueError(f"val_data: {val_data!r} loops forever; pass the stream without loop()")
    docs = list(val_data)
    for d in docs:
        if not isinstance(d, Doc):
            hint = (
                "a batched stream? pass the documents, without batch()"
                if isinstance(d, list | tuple)
                else "make Docs with pureml.Doc(text)"
            )
            raise TypeError(f"val_data: expected documents, got a {type(d).__name__} ({hint})")
    return docs


def _stable_seed(seed: int, *parts: str | int) -> int:
    text = "/".join(str(p) for p in (seed, *parts))
    return zlib.crc32(text.encode()) & 0x7FFFFFFF


def _versions() -> dict[str, str]:
    try:
        from importlib.metadata import version

        pureml_version = version("pureml")
    except Exception:
        pureml_version = "unknown"
    return {
        "pureml": pureml_version,
        "torch": torch.__version__,
        "python": platform.python_version(),
    }


def _to_device(tree: Any, device: torch.device) -> Any:
    if isinstance(tree, torch.Tensor):
        return tree.to(device, non_blocking=True)
    if isinstance(tree, dict):
        return {k: _to_device(v, device) for k, v in tree.items()}
    if isinstance(tree, list | tuple):
        return type(tree)(_to_device(v, device) for v in tree)
    return tree


def _scalar(v: Any) -> Any:
    if isinstance(v, torch.Tensor):
        v = v.item()
    return v


def _jsonable(tree: Any) -> Any:
    if isinstance(tree, dict):
        return {str(k): _jsonable(v) for k, v in tree.items()}
    if isinstance(tree, list | tuple):
        return [_jsonable(v) for v in tree]
    if isinstance(tree, torch.Tensor):
        return tree.tolist()
    if isinstance(tree, float | int | str | bool) or tree is None:
        return tree
    from ..optim import describe

    # a component's config value (a function, an object): without the memory address its repr
    # may hold, which would make every run a different recipe
    return describe(tree)


def empty_share_message(
    path: str, batch_size: Any, docs: Sequence[tuple[str, int]], world_size: int
) -> str | None:
    """Why a global batch of ``docs`` (``(id, size in the batch_size's stat)``, all ranks) left
    a rank without documents, when one document larger than the budget forms it alone (the
    batcher gives such a document a batch of its own); None otherwise.

    >>> import textwrap
    >>> message = empty_share_message("train_data.notes", "1000 words", [("cr_017", 2689)], 2)
    >>> print(textwrap.fill(message, 92))
    train_data.notes: document 'cr_017' (2689 words) is larger than train_data.notes.batch_size
    ("1000 words") and forms a batch alone, which 2 ranks cannot share: raise
    train_data.notes.batch_size to at least "5378 words" (room for it and as long a document for
    each other rank), shorten or split that document, or run fewer processes
    """
    from ..stream.batching import StatSize, parse_size

    size = parse_size(batch_size)
    if not isinstance(size, StatSize) or len(docs) >= world_size:
        return None
    over = [(doc_id, value) for doc_id, value in docs if value > size.amount]
    if not over:
        return None
    doc_id, value = max(over, key=lambda d: d[1])
    shown = json.dumps(batch_size) if isinstance(batch_size, str) else str(batch_size)
    return (
        f"{path}: document {doc_id!r} ({value} {size.stat}) is larger than {path}.batch_size "
        f"({shown}) and forms a batch alone, which {world_size} ranks cannot share: raise "
        f'{path}.batch_size to at least "{value * world_size} {size.stat}" (room for it and '
        "as long a document for each other rank), shorten or split that document, or run "
        "fewer processes"
    )


def _default_optimizer(nlp: Any, names: Sequence[str] | None, total_steps: int) -> Any:
    from ..nlp.hf_transformer import encoder_selector
    from ..optim import eds_default

    return eds_default(total_steps, names=names, transformer=encoder_selector(nlp))


def _make_optimizer(optimizer: Any, nlp: Any, names: Sequence[str] | None, total_steps: int) -> Any:
    """An optimizer object, or a ``(names, total_steps) -> optimizer`` factory, or None."""
    if optimizer is None:
        return _default_optimizer(nlp, names, total_steps)
    if hasattr(optimizer, "init") and hasattr(optimizer, "update"):
        return optimizer
    if callable(optimizer):
        return optimizer(names, total_steps)
    raise TypeError(f"optimizer: expected a GradientTransformation or a factory, got {optimizer!r}")


# what pureml's optimizer argument is, for a caller who gave something else
OPTIMIZER_FIX = (
    "pureml takes a GradientTransformation (pureml.optim.adamw(learning_rate=1e-3), ...) or a "
    "factory (param_names, total_steps) -> GradientTransformation"
)


def _check_optimizer(optimizer: Any) -> None:
    if optimizer is None or (hasattr(optimizer, "init") and hasattr(optimizer, "update")):
        return
    torch_class = optimizer if isinstance(optimizer, type) else type(optimizer)
    if issubclass(torch_class, torch.optim.Optimizer):  # a class is callable: not a factory
        raise TypeError(
            f"optimizer: got torch.optim.{torch_class.__name__}: {OPTIMIZER_FIX}, not a "
            "torch.optim optimizer"
        )
    if not callable(optimizer):
        raise TypeError(
            f"optimizer: expected a GradientTransformation, got {optimizer!r}: {OPTIMIZER_FIX}"
        )


def _check_nlp(nlp: Any) -> None:
    from ..nlp.pipeline import Pipeline

    if isinstance(nlp, Pipeline):
        return
    hint = ""
    if isinstance(nlp, str | os.PathLike):
        hint = " (a saved model? pureml.load(path))"
    elif isinstance(nlp, TrainingData | Stream | Mapping | list | tuple):
        hint = " (the arguments swapped? train(nlp, train_data, ...))"
    raise TypeError(f"nlp: expected a Pipeline, got {type(nlp).__name__}{hint}")


def _check_compile_backend(backend: Any) -> None:
    """A misspelt backend failed inside torch.compile, once the run folder was set up."""
    if not isinstance(backend, str):  # torch.compile also takes a backend function
        return
    from torch._dynamo import list_backends

    from .config import known_keys_hint

    known = sorted({*list_backends(), "eager", "aot_eager"})
    if backend not in known:
        raise ValueError(
            f"compile_backend: unknown backend {backend!r} ({known_keys_hint(backend, known)})"
        )


def _world(cpu: bool = False) -> Any:
    """This process's place in the job (torchrun's environment, or a single process)."""
    from ..distributed import init_distributed

    return init_distributed(cpu=cpu)


# How every refused resume ends: the two ways out.
START_OVER = "pass --restart (restart=True) to start over there, or choose another train.output_dir"


class _Interrupts:
    """Turns SIGINT/SIGTERM into a flag checked between steps (a second Ctrl-C stops at once)."""

    def __init__(self) -> None:
        self.requested: str | None = None
        self._old: dict[int, Any] = {}

    def __enter__(self) -> _Interrupts:
        if threading_main():
            for sig in (signal.SIGINT, signal.SIGTERM):
                self._old[sig] = signal.signal(sig, self._handle)
        return self

    def _handle(self, signum: int, frame: Any) -> None:
        if self.requested is not None:  # second signal: give up on the clean exit
            signal.signal(signum, self._old.get(signum, signal.SIG_DFL))
            raise KeyboardInterrupt(
                "stopped at once, without a checkpoint of this step: the same command resumes "
                "from the last one"
            )
        self.requested = signal.Signals(signum).name

    def __exit__(self, *exc: Any) -> None:
        for sig, handler in self._old.items():
            signal.signal(sig, handler)


def threading_main() -> bool:
    import threading

    return threading.current_thread() is threading.main_thread()


class Trainer:
    """One training run; :func:`train` builds it and calls :meth:`run`."""

    def __init__(
        self,
        nlp: Any,
        train_data: TrainingData | Sequence[TrainingData],
        val_data: Iterable[Doc] = (),
        *,
        seed: int = 42,
        max_steps: int = 1000,
        optimizer: Any = None,
        validation_interval: int | None = None,
        checkpoint_interval: int | None = None,
        grad_max_norm: float = 5.0,
        grad_ewm_window: int = 100,
        grad_dev_policy: str | None = None,
        grad_max_dev: float = 7.0,
        loss_scales: Mapping[str, float] | None = None,
        scorer: Callable[..., dict] | None = None,
        num_workers: int = 0,
        cpu: bool = False,
        mixed_precision: str = "no",
        output_dir: str | os.PathLike = "artifacts",
        output_model_dir: str | os.PathLike | None = None,
        save_model: bool = True,
        logger: bool | Sequence[str | BaseLogger] = True,
        log_weight_grads: bool = False,
        on_validation_callback: Callable[[dict], Any] | None = None,
        best_metric: str | Sequence[str] | None = None,
        keep_checkpoints: int = 3,
        log_interval: int = 1,
        record_params_interval: int | None = None,
        compile: bool = True,
        compile_backend: str = "inductor",
        flat_params: bool = True,
        deterministic: bool = True,
        threads: int | None = None,
        resume: bool = True,
        recipe: Mapping[str, Any] | None = None,
        recipe_hash: str | None = None,
    ) -> None:
        _check_nlp(nlp)
        train_data = _as_training_data(train_data)
        if not train_data:
            raise ValueError("train_data: give at least one TrainingData")
        if isinstance(max_steps, bool) or not isinstance(max_steps, int):
            raise TypeError(
                f"max_steps: expected an int, got {type(max_steps).__name__} {max_steps!r}"
            )
        if max_steps < 1:
            raise ValueError(f"max_steps: expected a positive number, got {max_steps}")
        _check_optimizer(optimizer)
        if compile:
            _check_compile_backend(compile_backend)
        # what the recipe's [train] table checks (config.TrainConfig), for Python callers too
        from .config import check_train_values

        check_train_values(
            {
                "mixed_precision": mixed_precision,
                "validation_interval": validation_interval,
                "checkpoint_interval": checkpoint_interval,
                "log_interval": log_interval,
                "record_params_interval": record_params_interval,
                "keep_checkpoints": keep_checkpoints,
                "best_metric": best_metric,
                "grad_dev_policy": grad_dev_policy,
            }
        )
        if isinstance(logger, str | BaseLogger):  # one logger, not the letters of its name
            logger = [logger]
        for i, item in enumerate(logger if isinstance(logger, list | tuple) else ()):
            # else refused once the folder is set up: with resume=False, after its files went
            if isinstance(item, str) and item not in logger_registry:
                known = ", ".join(logger_registry.names())
                raise ValueError(f"logger[{i}]: unknown logger {item!r} (known: {known})")
        for comp in loss_scales or {}:
            if comp not in nlp.pipe_names:
                raise ValueError(f"loss_scales: unknown component {comp!r} (have {nlp.pipe_names})")
        self.nlp = nlp
        self.train_data = train_data
        names = [td.name or f"train_data_{i}" for i, td in enumerate(self.train_data)]
        if len(set(names)) != len(names):
            raise ValueError(f"training streams need distinct names, got {names}")
        self.stream_names = names
        self._stream_paths = {n: self._stream_path(n, td) for n, td in zip(names, train_data)}
        self.val_data = val_data
        self.seed = seed
        self.max_steps = max_steps
        self.optimizer = optimizer
        self.validation_interval = validation_interval or max(1, max_steps // 10)
        self.checkpoint_interval = checkpoint_interval or self.validation_interval
        self.grad_max_norm = grad_max_norm
        self.grad_ewm_window = grad_ewm_window
        self.grad_dev_policy = grad_dev_policy
        self.grad_max_dev = grad_max_dev
        self.loss_scales = dict(loss_scales or {})
        self.scorer = scorer if scorer is not None else Scorer()
        self.num_workers = num_workers
        self.cpu = cpu
        self.mixed_precision = mixed_precision
        self.output_dir = Path(output_dir)
        self.output_model_dir = Path(output_model_dir or self.output_dir / "model-last")
        self.save_model = save_model
        self.best_metric = best_metric if isinstance(best_metric, str | None) else list(best_metric)
        self.logger_spec = logger
        self.log_weight_grads = log_weight_grads
        self.on_validation_callback = on_validation_callback
        self.keep_checkpoints = keep_checkpoints
        self.log_interval = log_interval
        self.record_params_interval = record_params_interval or min(10, self.checkpoint_interval)
        self.compile = compile
        self.compile_backend = compile_backend
        self.flat_params = flat_params
        self.deterministic = deterministic
        self.threads = threads
        self.resume = resume
        self.recipe = dict(recipe) if recipe is not None else None
        self._recipe_hash = recipe_hash
        self._signature: dict[str, Any] | None = None  # from Python: what the hash is of
        self._built_optimizers: dict[tuple[str, ...] | None, Any] = {}  # by parameter names
        self.loggers: list[BaseLogger] = []
        # before the process group (which may start CUDA): cuBLAS reads its workspace setting
        # when its first handle is created
        from ..replay.determinism import set_deterministic

        set_deterministic(self.deterministic, warn_only=True)
        self.world = _world(cpu)  # cpu=True on a GPU machine: gloo, not NCCL

    # -- set-up -------------------------------------------------------------------------------

    def _configure_torch(self) -> None:
        if self.threads:
            torch.set_num_threads(self.threads)

    def _run_signature(self) -> dict[str, Any]:
        """What the recipe hash is computed from when train() is called from Python."""
        tds = [
            {
                "name": n,
                "batch_size": td.batch_size,
                "shuffle": td.shuffle,
                "sub_batch_size": td.sub_batch_size,
                "pipe_names": list(td.pipe_names) if td.pipe_names is not None else None,
                "post_init": td.post_init,
                "data": repr(_as_stream(td.data)),
            }
            for n, td in zip(self.stream_names, self.train_data)
        ]
        comps = {
            n: {"class": type(self.nlp.get_pipe(n)).__name__, **self.nlp.get_pipe(n).config()}
            for n in self.nlp.pipe_names
        }
        return {
            "components": _jsonable(comps),
            "train_data": tds,
            "seed": self.seed,
            "max_steps": self.max_steps,
            "grad": [
                self.grad_max_norm,
                self.grad_ewm_window,
                self.grad_dev_policy,
                self.grad_max_dev,
            ],
            "loss_scales": self.loss_scales,
            "optimizer": self._optimizer_signature(),
            # flat changes the rounding of the clipped norm: part of what a run computes
            "compile": [
                self.compile,
                self.compile_backend,
                *(["flat"] if self.flat_params else []),
            ],
        }

    def _optimizer_signature(self) -> Any:
        """The optimizer as the run's identity compares it: its description (factories and
        arguments, see :func:`pureml.optim.describe`), never its repr, which holds memory
        addresses. A factory is named by its ``module.qualname`` and described by what it builds
        for the first phase (that object is the one the phase then trains with)."""
        from ..optim import describe

        if self.optimizer is None:
            return None  # the default: what it builds follows from the components
        if hasattr(self.optimizer, "init") and hasattr(self.optimizer, "update"):
            return describe(self.optimizer)
        plan = getattr(self, "plan", None) or self._phase_plan()
        return {
            "factory": describe(self.optimizer),
            "builds": describe(self._optimizer_for(self._phase_param_names(plan[0][0], plan))),
        }

    def _phase_param_names(self, comps: Sequence[str], plan: Sequence[Any]) -> list[str] | None:
        """The names a phase's optimizer factory is given: its trainable parameters' (None with
        several phases: a group selector may match another phase's parameters only)."""
        if len(plan) != 1:
            return None
        prefixes = tuple(f"{c}." for c in comps)
        return [k for k, _ in self.nlp.named_parameters() if k.startswith(prefixes)]

    def _optimizer_for(self, names: list[str] | None) -> Any:
        """The phase's optimizer, built once per set of names (the identity built it first)."""
        key = tuple(names) if names is not None else None
        if key not in self._built_optimizers:
            self._built_optimizers[key] = _make_optimizer(
                self.optimizer, self.nlp, names, self.max_steps
            )
        return self._built_optimizers[key]

    def recipe_hash(self) -> str:
        if self._recipe_hash is None:
            from .recipe import recipe_hash

            if self.recipe is None:
                # as JSON reads it back from a checkpoint, to compare key by key on resume
                self._signature = json.loads(json.dumps(self._run_signature(), default=repr))
            self._recipe_hash = recipe_hash(self.recipe or {"python": self._signature})
        return self._recipe_hash

    def _find_resume_point(self) -> Path | None:
        """The checkpoint to resume from, after checking it belongs to this recipe."""
        if not self.resume:
            return None
        found = ckpt.list_checkpoints(self.output_dir)
        if not found:
            return None
        path = ckpt.latest_checkpoint(
            self.output_dir, on_skip=lambda text: self.message(f"warning: {text}")
        )
        if path is None:
            self.message("warning: no usable checkpoint left: starting over")
            return None
        meta = ckpt.read_meta(path)
        if meta.get("recipe_hash") != self.recipe_hash():
            from .recipe import recipe_diff

            keys = None  # unknown: a checkpoint written before pureml recorded what it compares
            if self.recipe is not None and isinstance(meta.get("recipe"), dict):
                keys = recipe_diff(meta["recipe"], self.recipe)
            elif self._signature is not None and isinstance(meta.get("signature"), dict):
                keys = recipe_diff(meta["signature"], self._signature) or None
            # keys == []: only keys that older versions hashed differ (validation_interval, ...)
            if keys != []:
                detail = ""
                if keys:
                    more = ", ..." if len(keys) > 5 else ""
                    detail = f" (differs in {', '.join(keys[:5])}{more})"
                raise RunDirError(
                    f"{self.output_dir} holds checkpoints of a different recipe{detail}: "
                    f"{START_OVER}"
                )
        self._check_pipeline(meta.get("pipeline"), path)
        if (saved_world := meta.get("world_size", 1)) != self.world.world_size:
            self.message(
                f"warning: checkpoint written with {saved_world} "
                f"process{'es' if saved_world != 1 else ''}, resuming with "
                f"{self.world.world_size}: the same global batches, not bitwise the same "
                "updates (dropout masks follow the layout)"
            )
        saved = meta.get("versions", {})
        if saved.get("torch") not in (None, torch.__version__):
            self.message(
                f"warning: checkpoint written with torch {saved.get('torch')}, running "
                f"{torch.__version__}: the resumed run may not be bitwise equal"
            )
        return path

    def _pipeline_config(self) -> dict[str, Any]:
        """Each component's settings as built for this run, labels inferred from the training
        docs included (as JSON reads them back)."""
        configs = {name: self.nlp.get_pipe(name).config() for name in self.nlp.pipe_names}
        return json.loads(json.dumps(configs, default=str))

    def _check_pipeline(self, saved: Any, path: Path) -> None:
        """Refuse a checkpoint whose pipeline was built otherwise: the recipe is the same, so
        the training docs changed what ``post_init`` infers (labels, attribute values). Older
        checkpoints do not record it: their state shapes are checked when loaded."""
        if not isinstance(saved, dict):
            return
        now = self._pipeline_config()
        for name, config in now.items():
            before = saved.get(name, {})
            for key in sorted(set(config) | set(before)):
                if config.get(key) != before.get(key):
                    raise RunDirError(
                        f"nlp.components.{name}.{key}: {before.get(key)!r:.120} in checkpoint "
                        f"{path.name}, {config.get(key)!r:.120} now, inferred from the training "
                        f"docs, which changed since: {START_OVER}"
                    )

    def _clear_run_dir(self) -> None:
        for name in RUN_FILES:
            p = self.output_dir / name
            if p.is_dir():
                shutil.rmtree(p)
            elif p.exists():
                p.unlink()

    def _make_loggers(self, logger_state: Mapping[str, Any] | None) -> None:
        spec = self.logger_spec
        if spec is True:
            spec = ["progress", "json", "csv"]
        elif spec is False or spec is None:
            spec = []
        made: list[tuple[str, BaseLogger]] = []
        for i, item in enumerate(spec):
            if isinstance(item, str):
                made.append((item, logger_registry.get(item)()))
            else:
                made.append((f"{type(item).__name__}_{i}", item))
        if not self.world.is_main:
            made = []
        state = dict(logger_state or {})
        self.loggers = []
        self._logger_names = []
        for name, lg in made:
            lg.start(self.output_dir, self.total_steps, state.get(name))
            self.loggers.append(lg)
            self._logger_names.append(name)

    def message(self, text: str) -> None:
        if not self.world.is_main:
            return
        shown = False
        for lg in self.loggers:
            if isinstance(lg, ProgressLogger):
                lg.message(text)
                shown = True
        if not shown:
            print(text, file=sys.stderr, flush=True)

    # -- data ---------------------------------------------------------------------------------

    def _phase_plan(self) -> list[tuple[list[str], list[tuple[str, TrainingData, list[str]]]]]:
        """Per phase: its components, and the streams feeding it with their pipe names."""
        plan = []
        for phase in self.nlp.phases():
            feeds = []
            for name, td in zip(self.stream_names, self.train_data):
                wanted = list(td.pipe_names) if td.pipe_names is not None else list(phase)
                for i, p in enumerate(wanted):
                    if p not in self.nlp.pipe_names:
                        raise ValueError(
                            f"{self._stream_path(name, td)}.pipe_names[{i}]: unknown component "
                            f"{p!r} (components: {', '.join(self.nlp.pipe_names)})"
                        )
                pipes = [p for p in wanted if p in phase]
                if pipes:
                    feeds.append((name, td, pipes))
            if feeds:
                plan.append((list(phase), feeds))
        if not plan:
            raise ValueError("no training stream feeds a trainable component")
        return plan

    def _post_init(self) -> None:
        """Let each component infer labels from the docs of the streams that feed it."""
        torch.manual_seed(self.seed)  # parameters built now are a function of the seed
        docs_for: dict[str, list[Doc]] = {}
        cache: dict[str, list[Doc]] = {}
        for _phase, feeds in self.plan:
            for name, td, pipes in feeds:
                if not td.post_init:
                    continue
                if name not in cache:
                    cache[name] = list(_as_stream(td.data))
                for comp in self.nlp._closure(pipes):
                    docs_for.setdefault(comp, []).extend(cache[name])
        for comp, docs in docs_for.items():
            with self._component_errors(comp):
                self.nlp.get_pipe(comp).post_init(docs)
        with self._component_errors(None):
            self.nlp.initialize()

    @contextlib.contextmanager
    def _component_errors(self, name: str | None) -> Any:
        """From a recipe: a component's ``post_init`` or ``initialize`` refusing its settings
        (an attribute no training span has, a model folder without its config) as a recipe
        error at ``nlp.components.NAME`` (exit 2), raised before the run folder is touched.
        ``name`` None: the component the traceback went through."""
        try:
            yield
        except (ValueError, TypeError, KeyError, RuntimeError, OSError) as e:
            if self.recipe is None or isinstance(e, StreamError):
                raise
            from .build import component_error, component_in_traceback

            comps = {n: self.nlp.get_pipe(n) for n in self.nlp.pipe_names}
            name = name or component_in_traceback(e, comps)
            if name is None:
                raise
            table = self.recipe.get("nlp", {}).get("components", {}).get(name, {})
            raise component_error(name, e, table) from None

    def _stream_path(self, name: str, td: TrainingData) -> str:
        """A training stream's key path in messages: ``train_data.NAME`` as a recipe names it,
        ``train_data[i]`` for a stream passed to ``train`` without a name."""
        from ..toml_writer import join_path

        if td.name:
            return join_path("train_data", td.name)
        return f"train_data[{self.stream_names.index(name)}]"

    def _check_batch_stats(self) -> None:
        """Refuse a ``batch_size`` / ``sub_batch_size`` on a stat the stream's items do not
        report (``"2000 wrds"``, a component's stat it does not feed) now, on the first
        document, with the stream's key path: the first batch would raise it only once the run
        folder is set up."""
        from ..stream.batching import StatSize, parse_size, stat_value

        for _phase, feeds in self.plan:
            for name, td, pipes in feeds:
                exprs = {k: getattr(td, k) for k in ("batch_size", "sub_batch_size")}
                exprs = {k: e for k, e in exprs.items() if e is not None}
                sizes = {k: parse_size(e, allow_splits=True) for k, e in exprs.items()}
                stats = {
                    k: s.stat
                    for k, s in sizes.items()
                    if isinstance(s, StatSize) and s.stat != "docs"
                }
                first = next(iter(td.data), None) if stats else None
                if first is None:  # nothing to measure; an empty stream fails where it is batched
                    continue
                item = self.nlp.preprocess(first.copy(), supervision=True, pipe_names=pipes)
                where = self._stream_path(name, td)
                for key, stat in stats.items():
                    try:
                        stat_value(item, stat, exprs[key])
                    except StreamError as e:
                        raise StreamError(f"{where}.{key}: {e}") from None

    def _training_stream(self, phase: int, name: str, td: TrainingData, pipes: list[str]) -> Stream:
        nlp = self.nlp

        def preprocess(doc: Doc) -> dict[str, Any]:
            # a copy: the source keeps its parsed docs for the whole run, and the word offsets
            # preprocessing computes (~100 bytes a word) would stay on them; the features are
            # what is kept (map(cache=True) below)
            return nlp.preprocess(doc.copy(), supervision=True, pipe_names=pipes)

        stream = _as_stream(td.data).map(preprocess, cache=True)
        if td.shuffle:
            stream = stream.shuffle(td.shuffle, seed=_stable_seed(self.seed, phase, name))
        stream = stream.loop().batch(td.batch_size)
        # shard the global batch, then split this rank's part (training_stream's order): splitting
        # first would leave rank 1 without a sub-batch under "1 splits"
        if self.world.is_distributed:
            stream = stream.shard(self.world.rank, self.world.world_size)
        stream = stream.split(td.sub_batch_size if td.sub_batch_size is not None else "1 splits")
        if self.num_workers > 0:
            stream = stream.prefetch(max(2, self.num_workers))
        return stream

    def _plan_shapes(self, comps: list[str], feeds) -> None:
        """Tell each component of the phase the most words its training sub-batches hold (the
        largest over the streams feeding it; None when one is not budgeted in words)."""
        from ..stream.batching import sub_batch_words

        for comp in comps:
            bounds = [
                sub_batch_words(td.batch_size, td.sub_batch_size, self.world.world_size)
                for _, td, pipes in feeds
                if comp in pipes
            ]
            known = bool(bounds) and None not in bounds
            self.nlp.get_pipe(comp).plan_shapes(max(bounds) if known else None)

    def _draw(self, iterators: dict[str, Any]) -> tuple[list[dict], dict[str, dict], list[str]]:
        """One batch from each stream: collated sub-batches with global stats (on the host),
        and the record."""
        subs: list[dict] = []
        record: dict[str, dict] = {}
        ids: list[str] = []
        per_stream: dict[str, int] = {}
        drawn: dict[str, list] = {}
        for name, it in iterators.items():
            position = position_of(it.state_dict())  # the files' fingerprint is a checkpoint's
            sub_items = drawn[name] = next(it)
            stream_ids = [item["id"] for sub in sub_items for item in sub]
            record[name] = {
                "position": position,
                "doc_ids": stream_ids,
                "sub_batches": len(sub_items),
            }
            ids.extend(stream_ids)
            subs.extend(self.nlp.collate(sub) for sub in sub_items)
            per_stream[self._stream_paths[name]] = len(sub_items)
        totals: dict[str, torch.Tensor] = {}
        for sb in subs:
            for k, v in sb["stats"].items():
                totals[k] = totals[k] + v if k in totals else v.clone()
        try:
            totals, self.sub_batch_indices = self.reduce_stats(totals, per_stream)
        except EmptyShareError as e:  # every rank raises it, from the same all-reduced counts
            raise self._explain_empty_share(e, drawn) from None
        subs = [{**sb, "stats": dict(totals)} for sb in subs]
        return subs, record, ids

    def _explain_empty_share(self, error: StreamError, drawn: dict[str, list]) -> StreamError:
        """A global batch of fewer documents than ranks: say so with the document's id and size
        when one document larger than the budget forms the batch alone (every rank runs this,
        a collective: each sends its share's ids and sizes)."""
        from ..distributed import gather_strings
        from ..stream.batching import StatSize, parse_size, stat_value

        tds = dict(zip(self.stream_names, self.train_data))
        local = {}
        for name, sub_items in drawn.items():
            size = parse_size(tds[name].batch_size)
            stat = size.stat if isinstance(size, StatSize) else "docs"
            items = [item for sub in sub_items for item in sub]
            local[name] = [[item["id"], stat_value(item, stat, size)] for item in items]
        shares = [json.loads(text) for text in gather_strings(self.world, json.dumps(local))]
        for name in drawn:
            docs = [tuple(doc) for share in shares for doc in share[name]]
            message = empty_share_message(
                self._stream_paths[name], tds[name].batch_size, docs, self.world.world_size
            )
            if message is not None:
                return StreamError(message)
        return error

    def _explain_first_step(
        self, subs: list[dict], streams_rec: dict[str, dict], feeds: list[tuple]
    ) -> None:
        """A phase's first step failed because a sub-batch gave no component a loss: raise that
        with the key path of the stream it came from (its ``pipe_names`` hold only an
        embedding, say). Reruns the sub-batches' forward eagerly, without gradients, to find
        it; returns if none fails that way."""
        from ..nlp.pipeline import ModelError, NoLossError

        i = 0
        for name, td, pipes in feeds:
            count = streams_rec.get(name, {}).get("sub_batches", 0)
            for sub in subs[i : i + count]:
                try:
                    with torch.no_grad():
                        self.nlp(sub)
                except NoLossError:
                    raise ModelError(
                        f"{self._stream_path(name, td)}.pipe_names: none of {pipes} computes a loss from its batches; "
                        "name a component with targets (a ner_crf, a span_classifier) there"
                    ) from None
                except Exception:
                    return
            i += count

    def reduce_stats(
        self, totals: dict[str, torch.Tensor], per_stream: Mapping[str, int]
    ) -> tuple[dict[str, torch.Tensor], list[int]]:
        """Sum the step's stats across ranks, so losses are normalised by the global support;
        also the global indices of this rank's sub-batches (the step's ``indices``)."""
        from ..distributed import global_stats

        return global_stats(self.world, totals, per_stream)

    # -- the step -------------------------------------------------------------------------

    def _loss_fn(self) -> Callable[..., Any]:
        loss_fn = self.nlp.loss_fn()
        if self.mixed_precision == "no":
            return loss_fn
        dtype = torch.bfloat16 if self.mixed_precision == "bf16" else torch.float16
        device_type = self.device.type

        def autocast_loss_fn(params, buffers, batch, key):
            with torch.autocast(device_type, dtype=dtype):
                loss, aux = loss_fn(params, buffers, batch, key)
            return loss.float(), {k: v.float() for k, v in aux.items()}

        return autocast_loss_fn

    def _phase_state(
        self, phase_idx: int, comps: list[str], loss_scale: dict | None = None
    ) -> tuple[Any, TrainState]:
        """The compiled step and initial state of a phase (its components' parameters trainable).

        ``loss_scale``: the previous phase's final float16 loss-scale statistics, which this
        phase continues from (one scale for the run, as Accelerate keeps one GradScaler)."""
        from ..core.step import init_state, make_step

        prefixes = tuple(f"{c}." for c in comps)
        named = dict(self.nlp.named_parameters())
        params = {k: v.detach().clone() for k, v in named.items() if k.startswith(prefixes)}
        frozen = {k: v.detach().clone() for k, v in named.items() if not k.startswith(prefixes)}
        optimizer = self._optimizer_for(self._phase_param_names(comps, self.plan))
        step = make_step(
            self._loss_fn(),
            optimizer,
            grad_max_norm=self.grad_max_norm,
            grad_ewm_window=self.grad_ewm_window,
            grad_dev_policy=self.grad_dev_policy,
            grad_max_dev=self.grad_max_dev,
            compile=self.compile,
            backend=self.compile_backend,
            all_reduce=self._all_reduce(),
            param_grad_norms=self.log_weight_grads,
            flat=self.flat_params,
            # The loop never reuses a state it passed to the step, so the update may run in
            # place; compiled only, where inductor fuses each update into the old buffers. Eager,
            # donating only adds a copy: 2.0-3.3 s instead of 0.9 for 165M parameters (CPU).
            donate=self.compile,
        )
        state = init_state(
            params,
            frozen,
            optimizer,
            seed=_stable_seed(self.seed, "phase", phase_idx),
            grad_ewm_window=self.grad_ewm_window,
            # float16 gradients below 6e-8 round to zero: scale them (Accelerate's GradScaler)
            loss_scale=2.0**16 if self.mixed_precision == "fp16" else None,
        )
        if loss_scale:
            state = state.replace(loss_scale=loss_scale)
        return step, state

    def _all_reduce(self) -> Any:
        from ..distributed import make_all_reduce

        return make_all_reduce(self.world)

    def _sync_module(self, state: TrainState) -> None:
        """Copy the state's tensors into the pipeline's parameters (for scoring and saving)."""
        named = dict(self.nlp.named_parameters())
        with torch.no_grad():
            for tree in (state.buffers, state.params):
                for k, v in tree.items():
                    if k in named:
                        named[k].copy_(v)

    # -- checkpoints, validation, logging -------------------------------------------------

    def _checkpoint(self, state: TrainState, step: int, phase: int, phase_step: int, positions):
        if not self.world.is_main:
            return
        logging_state = {n: lg.state() for n, lg in zip(self._logger_names, self.loggers)}
        meta = {
            "format": FORMAT,
            "step": step,
            "phase": phase,
            "phase_step": phase_step,
            "recipe_hash": self.recipe_hash(),
            "recipe": self.recipe,
            # from Python, no recipe: what the hash covers, so a refusal can say what differs
            "signature": self._signature if self.recipe is None else None,
            "world_size": self.world.world_size,
            "versions": _versions(),
            "streams": positions,
            "logging": logging_state,
            "records": self.recorder.state(),
            "last_score": getattr(self, "_last_score", None),
            "pipeline": self._pipeline_config(),
            "best": self._best.state() if self._best is not None else None,
        }
        ckpt.save_checkpoint(
            self.output_dir,
            step,
            lambda d: save_state(state, d / "state", {"step": step}),
            meta,
            keep=self.keep_checkpoints,
        )
        if self.save_model:
            # as EDS-NLP: model-last follows the checkpoints, so a run that stops or dies
            # leaves a model to evaluate (to_disk replaces it atomically)
            self._sync_module(state)
            self.nlp.to_disk(self.output_model_dir)
            self._model_step = step

    def _validate(self, state: TrainState, step: int) -> tuple[dict | None, dict]:
        if not self.val_docs:
            return None, {}
        self._sync_module(state)
        # the default scorer splits the documents across ranks; a scorer that cannot be told the
        # world (written before it could) scores them all on every rank, as it always did
        world = {"world": self.world} if accepts_world(self.scorer) else {}
        scores = self.scorer(self.nlp, self.val_docs, mixed_precision=self.mixed_precision, **world)
        timing = {"validation/" + k: v for k, v in scores.get("speed", {}).items()}
        exact = {k: v for k, v in scores.items() if k != "speed"}
        if self.on_validation_callback is not None:
            self.on_validation_callback({"step": step, **scores})
        if self.world.is_main:
            out = self.output_dir / "validation"
            out.mkdir(exist_ok=True)
            (out / f"step-{step:06d}.json").write_text(json.dumps(scores, indent=1))
        return exact, timing

    def _save_if_best(self, validation: dict, step: int) -> Exception | None:
        """Write model-best if this validation is the best so far; the error to raise, once
        this step is checkpointed, when ``best_metric`` names no score (known only now: the
        same command, the key fixed, then resumes from here)."""
        assert self._best is not None
        try:
            improved = self._best.update(validation, step)
        except BestMetricError as e:
            if self.recipe is not None:
                from .config import RecipeError

                return RecipeError("train.best_metric", str(e))
            return BestMetricError(f"best_metric: {e}")
        if improved and self.world.is_main:
            # _validate synced the module with this step's weights
            self.nlp.to_disk(self.output_dir / BEST_DIR)
        return None

    def _log(self, step: int, metrics: dict, validation: dict | None, timing: dict) -> None:
        for lg in self.loggers:
            lg.log(step, metrics, validation, timing)

    # -- the run --------------------------------------------------------------------------

    def run(self) -> Any:
        self.device = self.world.device if not self.cpu else torch.device("cpu")
        self._configure_torch()
        self.plan = self._phase_plan()
        self.total_steps = self.max_steps * len(self.plan)
        # Before the hash, in every run: post_init (labels read from the data) changes the
        # components' config, which the hash of a run started from Python covers. Run again in
        # a new process or on the same pipeline object, the hash is then the same.
        self._post_init()
        self._check_batch_stats()
        # read (and check) the validation documents before the output folder is touched
        self.val_docs = _validation_docs(self.val_data)
        # as pureml evaluate does: validation read otherwise than training (no default_attributes)
        # scores part of the spans, silently, and that score picks model-best
        warn_unscorable(self.nlp, self.val_docs, training=True)
        if self.best_metric is not None and not self.val_docs:
            raise ValueError("best_metric: needs validation documents (val_data) to score")
        self.recipe_hash()
        lock, refused = None, ""
        if self.world.is_main:
            # one run at a time writes here; taken before its checkpoints are read
            self.output_dir.mkdir(parents=True, exist_ok=True)
            try:
                lock = ckpt.lock_run_dir(self.output_dir)
            except ckpt.CheckpointError as e:
                refused = str(e)
        # every rank stops alike when rank 0 is refused the folder (else the others wait in their
        # first collective until rank 0's exit breaks it: "Connection closed by peer")
        from ..distributed import gather_strings

        refused = gather_strings(self.world, refused)[0]
        if refused:
            raise ckpt.CheckpointError(refused)
        try:
            return self._run_locked()
        finally:
            if lock is not None:
                os.close(lock)

    def _run_locked(self) -> Any:
        resume_from = self._find_resume_point()  # may refuse: nothing written yet
        if self.world.is_main:
            ckpt.remove_stale_temporaries(self.output_dir)
            if resume_from is None:
                self._clear_run_dir()
            else:
                _remove_validations_after(self.output_dir, ckpt.read_meta(resume_from)["step"])
            if self.recipe is not None:
                from ..toml_writer import dump_toml
                from .recipe import escape_references

                # read back as a recipe (replay, diff): a resolved literal ${ stays literal
                config = dump_toml(escape_references(self.recipe))
                (self.output_dir / "config.toml").write_text(config)
        self.nlp.loss_scales = {**getattr(self.nlp, "loss_scales", {}), **self.loss_scales}
        self.nlp.to(self.device)

        meta = ckpt.read_meta(resume_from) if resume_from is not None else None
        self._make_loggers(meta["logging"] if meta else None)
        self.recorder = (
            StepRecorder(self.output_dir, meta["records"]["steps.jsonl"] if meta else None)
            if self.world.is_main
            else _NoRecorder()
        )
        self._last_score = meta.get("last_score") if meta else None
        self._best = None
        if self.best_metric is not None:
            self._best = BestScore(self.best_metric, docs_key(self.val_docs))
            saved = meta.get("best") if meta else None
            if saved and not self._best.restore(saved):
                why = (
                    f"was of {saved.get('metric')!r}"
                    if saved.get("metric") != self._best.metric
                    else "was measured on other validation documents"
                )
                if self.world.is_main:  # another metric's best model must not pass for this one's
                    shutil.rmtree(self.output_dir / BEST_DIR, ignore_errors=True)
                self.message(
                    f"best_metric: the checkpoint's best {why}; model-best starts over (removed)"
                )
        self._model_step: int | None = None  # the step model-last was last written at
        start_phase = meta["phase"] if meta else 0
        start_step = meta["phase_step"] if meta else 0
        if meta:
            self.message(
                f"resuming from {resume_from} (step {meta['step']}); "
                "pass --restart (restart=True) to start over"
            )
        try:
            with _Interrupts() as interrupts:
                state = None
                for phase_idx, (comps, feeds) in enumerate(self.plan):
                    if phase_idx < start_phase:
                        continue
                    first = start_step if phase_idx == start_phase else 0
                    state = self._run_phase(
                        phase_idx,
                        comps,
                        feeds,
                        first,
                        resume_from if meta else None,
                        interrupts,
                        state.loss_scale if state is not None else None,
                    )
                    self._sync_module(state)
                    resume_from, meta = None, None
        finally:
            for lg in self.loggers:
                lg.close()
            self.recorder.close()
        if self.save_model and self.world.is_main:
            if self._model_step != self.total_steps:  # else the last checkpoint wrote it
                self.nlp.to_disk(self.output_model_dir)
            self.message(f"saved the pipeline to {self.output_model_dir}")
        if self._best is not None and self._best.step is not None and self.world.is_main:
            self.message(
                f"model-best: step {self._best.step}, {self._best.name} "
                f"{self._best.value:.4f}, in {self.output_dir / BEST_DIR}"
            )
        return self.nlp

    def _run_phase(self, phase_idx, comps, feeds, first_step, resume_from, interrupts, loss_scale):
        self._plan_shapes(comps, feeds)
        step_fn, state = self._phase_state(phase_idx, comps, loss_scale)
        streams = {
            name: self._training_stream(phase_idx, name, td, pipes) for name, td, pipes in feeds
        }
        if resume_from is not None:
            try:
                state, _ = load_state(state, Path(resume_from) / "state")
            except CheckpointError as e:
                # unreadable, or made by a run whose state differs (an older pureml's layout)
                raise RunDirError(f"{e} (checkpoint {resume_from}): {START_OVER}") from None
            saved = ckpt.read_meta(resume_from)["streams"]
            for name, td, _pipes in feeds:
                where = self._stream_path(name, td)
                changes: list[str] = []
                try:
                    streams[name].load_state_dict(saved[name], on_change=changes.append)
                except StreamError as e:
                    raise RunDirError(
                        f"{where}: the training data changed since "
                        f"checkpoint {resume_from} ({e}): {START_OVER}"
                    ) from None
                # not an error: resuming after fixing a file or a preprocessing bug is fair
                for line in changes:
                    self.message(f"warning: {where} changed since {Path(resume_from).name}: {line}")
                if changes:
                    self.message(
                        f"warning: {where}: resuming at the saved data position anyway, which "
                        f"may now stand for other documents; {START_OVER}"
                    )
            self._sync_module(state)
        from ..distributed import RankTrace, any_rank, check_same_everywhere

        trace = RankTrace.from_env(self.world)
        check_same_everywhere(self.world, "initial parameters", trace.start(fingerprint(state)))
        iterators = {name: iter(s) for name, s in streams.items()}
        state = step_fn.adopt(state)  # its tensors are this loop's alone: no copy at step 1
        offset = phase_idx * self.max_steps
        words_seen, t_start = 0, time.perf_counter()

        def draw() -> tuple[list[dict], dict[str, dict], list[str], str, int, dict]:
            subs, streams_rec, ids = self._draw(iterators)
            # Hashed here, from the host tensors, while an accelerator runs the previous step:
            # after the step it would cost a device-to-host copy on the path between two steps.
            batch_fp = batch_fingerprint(ids, subs)
            subs = [_to_device(sb, self.device) for sb in subs]
            # where the streams stand after this batch: what a checkpoint at its step records
            positions = {name: it.state_dict() for name, it in iterators.items()}
            return subs, streams_rec, ids, batch_fp, self.sub_batch_indices, positions

        graphs = _graphs_compiled()
        if self.compile and self.compile_backend != "eager" and first_step < self.max_steps:
            # the first step stays silent while it compiles: say why it takes minutes
            # (the eager backend only traces: seconds)
            self.message(
                f"compiling the step ({self.compile_backend}): the first step takes a minute "
                "or more on a CPU (train.compile = false runs it eagerly)"
            )
        try:
            ahead: Any = draw() if first_step < self.max_steps else None
            for phase_step in range(first_step + 1, self.max_steps + 1):
                step = offset + phase_step
                t0 = time.perf_counter()
                subs, streams_rec, ids, batch_fp, indices, positions = ahead
                trace.step(step, ids, indices)
                try:
                    state, metrics = step_fn(state, subs, indices=indices)
                except Exception as e:
                    # compiled, the pipeline's NoLossError comes wrapped in a torch.compile error
                    if phase_step == first_step + 1 and "no component computed a loss" in str(e):
                        self._explain_first_step(subs, streams_rec, feeds)
                    raise
                # The next batch is read and collated while an accelerator runs this step
                # (reading the metrics waits for it); a failure to draw it is raised once this
                # step is recorded and checkpointed.
                ahead = None
                if phase_step < self.max_steps:
                    try:
                        ahead = draw()
                    except Exception as e:
                        ahead = e
                metrics = {k: _scalar(v) for k, v in metrics.items()}
                # per-parameter gradient norms (log_weight_grads) go to the logged lines only
                grad_norms = {
                    k: metrics.pop(k) for k in list(metrics) if k.startswith("grad_norm/")
                }
                dt = time.perf_counter() - t0
                if self.compile and (now := _graphs_compiled()) > graphs:
                    if phase_step > first_step + 1:  # a stall mid-run: say what it was
                        self.message(
                            f"step {step}: torch.compile built {now - graphs} more graph"
                            f"{'s' if now - graphs > 1 else ''} ({dt:.0f} s) for a batch of "
                            "another shape (README, Compilation)"
                        )
                    graphs = now
                n_words = int(_scalar(subs[0]["stats"].get("words", 0)))
                n_docs = int(_scalar(subs[0]["stats"].get("docs", 0)))
                words_seen += n_words
                params_fp = (
                    params_fingerprint(state)
                    if step % self.record_params_interval == 0 or phase_step == self.max_steps
                    else None
                )
                self.recorder.write(
                    step_record(
                        step=step,
                        phase=phase_idx,
                        phase_step=phase_step,
                        metrics=metrics,
                        streams=streams_rec,
                        batch=batch_fp,
                        params=params_fp,
                        world_size=self.world.world_size,
                    )
                )
                validation, val_timing = None, {}
                failed: Exception | None = None  # raised once this step is checkpointed
                if phase_step % self.validation_interval == 0 or phase_step == self.max_steps:
                    validation, val_timing = self._validate(state, step)
                    from .loggers import headline_score

                    self._last_score = headline_score(validation)
                    if self._best is not None and validation is not None:
                        failed = self._save_if_best(validation, step)
                # each phase's last step too: the progress line ends at max_steps and the
                # logs hold the final loss whatever log_interval divides
                last = phase_step == self.max_steps
                if step % self.log_interval == 0 or validation is not None or last:
                    line = {
                        "phase": phase_idx,
                        **{k: v for k, v in metrics.items()},
                        "docs": n_docs,
                        "words": n_words,
                    }
                    if self.log_weight_grads:
                        line.update(
                            {f"weight_norm/{k}": float(v.norm()) for k, v in state.params.items()}
                        )
                        line.update(grad_norms)
                    timing = {
                        "step_s": dt,
                        "words_per_s": n_words / dt if dt > 0 else 0.0,
                        "docs_per_s": n_docs / dt if dt > 0 else 0.0,
                        "elapsed_s": time.perf_counter() - t_start,
                        **val_timing,
                    }
                    self._log(step, line, validation, timing)
                # every rank stops after the same step: a signal lands on either side of this
                # line on different ranks, or reaches one rank only (kill PID, a scheduler)
                stop = any_rank(self.world, interrupts.requested is not None)
                if (
                    phase_step % self.checkpoint_interval == 0
                    or phase_step == self.max_steps
                    or stop
                    or isinstance(ahead, Exception)  # the run stops here: keep its steps
                    or failed is not None
                ):
                    self._checkpoint(state, step, phase_idx, phase_step, positions)
                if stop:
                    self.message(
                        f"{interrupts.requested or 'a signal to another rank'}: checkpoint "
                        f"written at step {step}; run the same command again to resume"
                    )
                    raise TrainingInterrupted(f"stopped at step {step}, after its checkpoint")
                if failed is not None:
                    raise failed
                if isinstance(ahead, Exception):
                    raise ahead
        finally:
            trace.close()
            for it in iterators.values():
                if hasattr(it, "close"):
                    it.close()
        return state


def _graphs_compiled() -> int:
    """Graphs torch.compile has built in this process (dynamo's own count)."""
    from torch._dynamo.utils import counters

    return int(counters["stats"].get("unique_graphs", 0))


def _remove_validations_after(run_dir: Path, step: int) -> None:
    """Remove ``validation/step-N.json`` for N > ``step``: a stopped run's validations after the
    checkpoint a run resumes from, which the resumed run redoes (or, if ``validation_interval``
    changed, does not: the folder would list validations that no log has)."""
    for path in (run_dir / "validation").glob("step-*.json"):
        n = path.stem.removeprefix("step-")
        if n.isdigit() and int(n) > step:
            path.unlink()


class _NoRecorder:
    def write(self, record: Any) -> None:
        pass

    def state(self) -> dict[str, int]:
        return {"steps.jsonl": 0}

    def close(self) -> None:
        pass


def train(
    nlp: Any,
    train_data: TrainingData | Sequence[TrainingData],
    val_data: Iterable[Doc] = (),
    seed: int = 42,
    max_steps: int = 1000,
    optimizer: Any = None,
    validation_interval: int | None = None,
    checkpoint_interval: int | None = None,
    grad_max_norm: float = 5.0,
    grad_ewm_window: int = 100,
    grad_dev_policy: str | None = None,
    grad_max_dev: float = 7.0,
    loss_scales: Mapping[str, float] | None = None,
    scorer: Callable[..., dict] | None = None,
    num_workers: int = 0,
    cpu: bool = False,
    mixed_precision: str = "no",
    output_dir: str | os.PathLike = "artifacts",
    output_model_dir: str | os.PathLike | None = None,
    save_model: bool = True,
    logger: bool | Sequence[str | BaseLogger] = True,
    log_weight_grads: bool = False,
    on_validation_callback: Callable[[dict], Any] | None = None,
    *,
    restart: bool = False,
    **options: Any,
) -> Any:
    """Train ``nlp`` on ``train_data``; resumes from ``output_dir``'s latest checkpoint.

    Parameters follow SEED.md (EDS-NLP's ``train``). pureml adds, as keyword options:
    ``keep_checkpoints`` (3), ``log_interval`` (1), ``record_params_interval`` (min(10,
    checkpoint_interval)), ``compile`` (True), ``compile_backend`` ("inductor"),
    ``flat_params`` (True; ``make_step(flat=True)``), ``deterministic`` (True), ``threads``
    (None), ``restart`` (False; True starts over, as ``--restart``: the same as
    ``resume=False``),
    ``best_metric`` (None; ``"ner/micro/f1"`` also writes ``OUTPUT_DIR/model-best`` at each best
    validation, see :mod:`pureml.training.best`),
    ``recipe`` (the resolved recipe dict, written to ``config.toml`` and hashed).

    ``optimizer`` is a ``GradientTransformation`` or a factory ``(param_names, total_steps) ->
    GradientTransformation`` (called once per phase); default: AdamW with EDS-NLP's two groups.
    A run resumes when its optimizer is described as the checkpoint's (:func:`pureml.optim.describe`:
    pureml's optimizers, schedules and groups by their arguments, a factory by its
    ``module.qualname`` and what it builds, a function of your own by its ``module.qualname``
    only: its body is not compared).

    Returns the trained pipeline. After Ctrl-C, writes a checkpoint and raises
    :class:`TrainingInterrupted` (a ``KeyboardInterrupt``).

    Example::

        from pureml import train
        from pureml.training import TrainingData
        train(nlp, TrainingData(read_standoff("data/train"), batch_size="2000 words"),
              val_data=read_standoff("data/dev"), max_steps=200, output_dir="runs/ner")
    """
    known = inspect.signature(Trainer.__init__).parameters
    for key in options:
        if key not in known or key == "self":
            # else Python names Trainer.__init__(), which the caller never called
            hint = difflib.get_close_matches(key, [k for k in known if k != "self"], n=1)
            raise TypeError(
                f"train() got an unexpected keyword argument {key!r}"
                + (f"; did you mean {hint[0]!r}?" if hint else "")
            )
    if restart:
        if options.get("resume") is True:
            raise ValueError(
                "restart=True and resume=True: pass one of them (restart=True starts over)"
            )
        options["resume"] = False
    trainer = Trainer(
        nlp,
        train_data,
        val_data,
        seed=seed,
        max_steps=max_steps,
        optimizer=optimizer,
        validation_interval=validation_interval,
        checkpoint_interval=checkpoint_interval,
        grad_max_norm=grad_max_norm,
        grad_ewm_window=grad_ewm_window,
        grad_dev_policy=grad_dev_policy,
        grad_max_dev=grad_max_dev,
        loss_scales=loss_scales,
        scorer=scorer,
        num_workers=num_workers,
        cpu=cpu,
        mixed_precision=mixed_precision,
        output_dir=output_dir,
        output_model_dir=output_model_dir,
        save_model=save_model,
        logger=logger,
        log_weight_grads=log_weight_grads,
        on_validation_callback=on_validation_callback,
        **options,
    )
    return trainer.run()


def train_from_recipe(
    path: str | os.PathLike, overrides: Sequence[str] = (), *, restart: bool = False
) -> Any:
    """What ``python -m pureml.train RECIPE --set k=v`` runs: check, build, train."""
    from .build import build_training

    kwargs = build_training(path, overrides)
    return train(**kwargs, restart=restart)


__all__ = [
    "RunDirError",
    "Trainer",
    "TrainingData",
    "TrainingInterrupted",
    "train",
    "train_from_recipe",
]
