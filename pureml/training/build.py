"""From a checked recipe to the objects ``train(...)`` takes: pipeline, streams, optimizer, scorer.

Every failure here is still a :class:`RecipeError` naming the key path, and nothing has been
written yet: the output folder is only touched once ``train`` starts.

>>> kwargs = build_training("recipes/quickstart.toml", ["train.max_steps=10"])  # doctest: +SKIP
>>> sorted(kwargs)[:3]                                                         # doctest: +SKIP
['checkpoint_interval', 'compile', 'compile_backend']
"""

from __future__ import annotations

import os
import re
import shutil
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch

from .. import registry
from ..stream import Source, Stream
from ..toml_writer import join_path
from .config import Recipe, RecipeError, structure, unknown_key
from .recipe import (
    SUPPLIED,
    check_factory_table,
    factory_params,
    load_recipe,
    settable_params,
)


def register_defaults() -> None:
    """Import the modules whose factories recipes name (they register themselves)."""
    import pureml.nlp  # noqa: F401
    import pureml.stream as stream

    from . import loggers, scorer  # noqa: F401

    for name, fn in (("standoff", stream.read_standoff), ("jsonl", stream.read_jsonl)):
        if name not in registry.readers:
            registry.readers.register(name)(fn)
    for name, fn in (
        ("quickstart_corpus", quickstart_corpus),
        ("standoff_label_as_attribute", standoff_label_as_attribute),
    ):
        if name not in registry.readers:
            registry.readers.register(name)(fn)
    import pureml.optim  # noqa: F401 - registers the optimizers


class _QuickstartSource(Source):
    """A source that writes the synthetic corpus to disk the first time it is read.

    Generation is deferred to first use so that a recipe refused later (an output folder with
    another recipe's checkpoints) has written nothing. Files go to a temporary folder renamed
    into place, so an interrupted first run never leaves a half corpus behind.
    """

    def __init__(self, root: Path, split: str, seed: int, n_train: int, n_dev: int) -> None:
        super().__init__()
        self.root, self.split = root, split
        self.seed, self.n_train, self.n_dev = seed, n_train, n_dev
        self._inner: Source | None = None
        self.name = f"quickstart_corpus:{root}/{split}"

    def _source(self) -> Source:
        if self._inner is None:
            from ..nlp.synthetic import write_corpus
            from ..stream.standoff import StandoffSource

            root = self.root
            if not (root / "train").is_dir() or not (root / "dev").is_dir():
                tmp = root.with_name(f".{root.name}.tmp-{os.getpid()}")
                shutil.rmtree(tmp, ignore_errors=True)
                write_corpus(tmp, seed=self.seed, splits={"train": self.n_train, "dev": self.n_dev})
                root.parent.mkdir(parents=True, exist_ok=True)
                try:
                    os.replace(tmp, root)
                except OSError:  # another process won the race: use its copy
                    shutil.rmtree(tmp, ignore_errors=True)
            self._inner = StandoffSource(root / self.split)
        return self._inner

    def __len__(self) -> int:
        return len(self._source())

    def _load(self, index: int) -> Any:
        return self._source()[index]


def quickstart_corpus(
    path: str, split: str = "train", seed: int = 0, n_train: int = 400, n_dev: int = 100
) -> Stream:
    """The synthetic clinical notes (``pureml.nlp.synthetic``), as brat files under ``path``,
    written on first use if absent; ``split`` is ``"train"`` or ``"dev"``."""
    if split not in ("train", "dev"):
        raise ValueError(f"split: expected 'train' or 'dev', got {split!r}")
    return Stream(_QuickstartSource(Path(path), split, seed, n_train, n_dev))


def standoff_label_as_attribute(path: str, attribute: str = "type", label: str = "Entity") -> Any:
    """A brat folder whose entity labels become an attribute of one label.

    ``SpecificDisease`` mentions become ``Disease`` spans with ``{"type": "SpecificDisease"}``:
    one NER label, and a span classifier that predicts the type.
    """
    from ..stream import read_standoff

    def relabel(doc: Any) -> Any:
        doc = doc.copy()
        for span in doc.spans.get("gold", []):
            span.attributes[attribute] = span.label
            span.label = label
        return doc

    return read_standoff(path).map(relabel, cache=True)


_CREATES_PATH = {"quickstart_corpus"}


def _call(factory: Callable[..., Any], kwargs: dict[str, Any], where: str) -> Any:
    try:
        return factory(**kwargs)
    except RecipeError:
        raise
    except (ValueError, TypeError, KeyError) as e:
        msg = e.args[0] if isinstance(e, KeyError) and e.args else str(e)
        raise RecipeError(where, str(msg)) from None


def _rate_keys(kwargs: dict[str, Any], where: str) -> None:
    """A component's ``*dropout*`` values are rates in [0, 1): every component draws its masks
    with ``ctx.dropout``, which refuses others only at the first training step, once the run
    folder is set up."""
    for key, value in kwargs.items():
        if "dropout" not in key or isinstance(value, bool) or not isinstance(value, int | float):
            continue
        if not 0.0 <= value < 1.0:
            raise RecipeError(join_path(where, key), f"expected a rate in [0, 1), got {value}")


def _mentions(message: str, key: str, value: Any) -> bool:
    """Whether ``message`` names the argument ``key``: it starts with it or writes ``key=``, or
    holds its value where that is a path (a model folder) or a negative number (torch's
    "negative dimension -3": a count or width; a positive number may be anything)."""
    if re.match(rf"{re.escape(key)}\b", message) or f"{key}=" in message:
        return True
    if isinstance(value, int | float) and not isinstance(value, bool) and value < 0:
        return re.search(rf"(?<![\w.]){re.escape(str(value))}(?![\w.])", message) is not None
    if not isinstance(value, str) or not value:
        return False
    return ("/" in value and value in message) or f"{value.rstrip('/')}/" in message


def component_error(name: str, error: BaseException, table: dict[str, Any]) -> RecipeError:
    """``error``, raised while building or initialising the component ``name`` from its recipe
    ``table``, as a recipe error at ``nlp.components.NAME`` (``.KEY`` when the message names
    exactly one of the table's keys). The component's own prefix (``name: ...``,
    ``component 'name': ...``) is dropped: the key path says it.

    >>> str(component_error("ner", ValueError("ner: window=-1 is not > 0"), {"window": -1}))
    'nlp.components.ner.window: window=-1 is not > 0'
    """
    if isinstance(error, RecipeError):
        return error
    message = error.args[0] if isinstance(error, KeyError) and error.args else str(error)
    message = str(message) or type(error).__name__
    for prefix in (f"{name}: ", f"component {name!r}: "):
        message = message.removeprefix(prefix)
    where = join_path("nlp.components", name)
    named = [k for k, v in table.items() if k != "factory" and _mentions(message, k, v)]
    return RecipeError(join_path(where, named[0]) if len(named) == 1 else where, message)


def component_in_traceback(error: BaseException, comps: dict[str, Any]) -> str | None:
    """The name of the innermost component whose method ``error`` went through (None if none):
    which component a pipeline's initialisation failed in."""
    names = {id(c): n for n, c in comps.items()}
    found = None
    tb = error.__traceback__
    while tb is not None:
        owner = tb.tb_frame.f_locals.get("self")
        if id(owner) in names:
            found = names[id(owner)]
        tb = tb.tb_next
    return found


def _check_folder(value: str | None, where: str) -> None:
    """An output folder must be a folder, or creatable: no part of it may be a file."""
    if value is None:
        return
    path = Path(value)
    for part in (path, *path.parents):
        if part.exists() and not part.is_dir():
            raise RecipeError(where, f"{str(part)!r} is a file, not a folder")


def build_reader(table: dict[str, Any], where: str) -> Any:
    """A reader table -> a stream of documents (the data path must exist)."""
    factory, kwargs = check_factory_table(table, registry.readers, where)
    if table["factory"] not in _CREATES_PATH:
        for key in ("path", "paths"):
            if isinstance(kwargs.get(key), str) and not Path(kwargs[key]).exists():
                raise RecipeError(join_path(where, key), f"no such file or folder: {kwargs[key]!r}")
    return _call(factory, kwargs, where)


BASE_STATS = ("docs", "words", "spans")


def _check_size(
    value: Any,
    where: str,
    components: Sequence[str],
    *,
    splits: bool = False,
    shuffle: bool = False,
) -> None:
    """Parse a stat expression and check its stat is one the pipeline's items will report."""
    from ..stream import StatSize, parse_size

    if shuffle and value in (False, True, "dataset", "fragment"):
        return
    try:
        size = parse_size(value, allow_splits=splits)
    except ValueError as e:
        raise RecipeError(where, str(e)) from None
    if isinstance(size, StatSize):
        stat = size.stat
        if stat not in BASE_STATS and not any(stat.startswith(f"{c}_") for c in components):
            known = ", ".join([*BASE_STATS, *(f"{c}_<stat>" for c in components)])
            raise RecipeError(where, f"unknown stat {stat!r} in {value!r} (known: {known})")
        if size.amount <= 0:
            raise RecipeError(where, f"expected a positive size, got {value!r}")


def _schedule_spec(table: Any, where: str) -> Any:
    """A recipe schedule table (``{factory = "linear", ...}``) -> what ``param_groups`` takes."""
    if table is None:
        return None
    check_factory_table(table, registry.schedules, where)
    spec = dict(table)
    return {"name": spec.pop("factory"), **spec}


def build_optimizer(table: dict[str, Any] | None, nlp: Any = None) -> Any:
    """An optimizer table -> a ``(param_names, total_steps) -> optimizer`` factory.

    ``factory`` names a registered optimizer; the other keys are its arguments, plus an optional
    ``schedule`` table (its ``max`` defaults to the learning rate, ``total_steps`` to the phase's
    ``max_steps``) and ``groups``: ``{regex on parameter names: {lr, schedule, ...} | false}``
    (first match wins; false freezes; a group takes the top-level arguments, ``learning_rate``
    included, where it does not set its own, but not the top-level ``schedule``). Example::

        [optimizer]
        factory = "adamw"
        learning_rate = 3e-3
        schedule = { factory = "linear", warmup_rate = 0.1 }
        [optimizer.groups."^embedding\\."]
        lr = 1e-4

    A factory taking a ``transformer`` regex (``eds_default``) that the recipe leaves unset gets
    the one selecting ``nlp``'s Hugging Face encoders, as EDS-NLP picks them by type.
    """
    if table is None:
        return None
    from ..optim import param_groups

    table = dict(table)
    schedule = _schedule_spec(table.pop("schedule", None), "optimizer.schedule")
    groups_table = table.pop("groups", None) or {}
    if not isinstance(groups_table, dict):
        raise RecipeError("optimizer.groups", f"expected a table, got {groups_table!r}")
    factory, kwargs = check_factory_table(
        table, registry.optimizers, "optimizer", supplied=SUPPLIED["optimizer"]
    )
    takes = factory_params(factory)
    groups: dict[str, Any] = {}
    for selector, spec in groups_table.items():
        where = join_path("optimizer.groups", selector)
        try:
            re.compile(selector)
        except re.error as e:
            raise RecipeError(where, f"not a regular expression: {e}") from None
        if spec is False:
            groups[selector] = False
        elif isinstance(spec, dict):
            if "names" not in takes:  # else refused below: the factory builds its own groups
                _check_group(spec, table["factory"], factory, where)
            spec = dict(spec)
            if "schedule" in spec:
                spec["schedule"] = _schedule_spec(spec["schedule"], f"{where}.schedule")
            groups[selector] = spec
        else:
            raise RecipeError(where, f"expected a table of options or false, got {spec!r}")
    takes_names = "names" in takes
    if "transformer" in takes and "transformer" not in kwargs and nlp is not None:
        from ..nlp.hf_transformer import encoder_selector

        kwargs["transformer"] = encoder_selector(nlp)
    if takes_names and (groups or schedule):
        raise RecipeError(
            "optimizer", f"{table['factory']!r} builds its own groups: remove groups/schedule"
        )

    def make(names: Sequence[str] | None, total_steps: int) -> Any:
        if takes_names:
            return _call(
                lambda **kw: factory(**kw, names=names, total_steps=total_steps),
                kwargs,
                "optimizer",
            )
        kw = dict(kwargs)
        lr = kw.pop("learning_rate", kw.pop("lr", None))
        default = {"lr": lr} if lr is not None else {}
        if lr is not None:
            # like the other top-level arguments (weight_decay...), and like torch.optim's
            # defaults: a group without its own lr trains at the recipe's, not at the
            # optimizer's built-in 1e-3 (the schedule stays the default group's, as in EDS-NLP)
            kw["learning_rate"] = lr
        if schedule is not None:
            default["schedule"] = schedule
        return _call(
            lambda **kw: param_groups(
                groups,
                default,
                names=names,
                optimizer=table["factory"],
                total_steps=total_steps,
                **kw,
            ),
            kw,
            "optimizer",
        )

    make(None, 10)  # fail now, before anything is written, on a bad value
    return make


# A parameter group's own keys; its other keys are arguments of the optimizer factory.
GROUP_KEYS: dict[str, Any] = {"lr": float, "schedule": None, "name": str, "optional": bool}


def _check_group(spec: dict[str, Any], opt_name: str, factory: Any, where: str) -> None:
    """Check a ``[optimizer.groups."REGEX"]`` table: its keys and value types, by key path."""
    params = settable_params(factory, SUPPLIED["optimizer"])
    for key, value in spec.items():
        if key in GROUP_KEYS:
            if GROUP_KEYS[key] is not None:
                structure(value, GROUP_KEYS[key], join_path(where, key))
        elif key not in params:
            known = [*GROUP_KEYS, *params]
            what = f"a parameter group of {opt_name!r}"
            raise unknown_key(join_path(where, key), key, known, what)
    options = {k: v for k, v in spec.items() if k not in GROUP_KEYS}
    check_factory_table(
        {"factory": opt_name, **options},
        registry.optimizers,
        where,
        supplied=SUPPLIED["optimizer"],
    )


def build_training(path: str | os.PathLike, overrides: Sequence[str] = ()) -> dict[str, Any]:
    """Read and check a recipe, build its objects; returns keyword arguments for ``train``."""
    from ..nlp import Pipeline
    from .trainer import TrainingData

    register_defaults()
    recipe, resolved = load_recipe(path, overrides)
    return build_from_recipe(recipe, resolved, Pipeline, TrainingData)


def _check_dependencies(recipe: Recipe, comps: dict[str, Any]) -> None:
    """Each component's embedding must be another component, above it: named by key path."""
    names = list(comps)
    for i, (name, comp) in enumerate(comps.items()):
        deps = comp.dependencies() if callable(getattr(comp, "dependencies", None)) else []
        for dep in deps:
            table = recipe.nlp.components[name]
            key = next((k for k, v in table.items() if k != "factory" and v == dep), None)
            where = join_path("nlp.components", name)
            where = join_path(where, key) if key is not None else where
            if dep not in comps:
                known = ", ".join(names)
                raise RecipeError(where, f"unknown component {dep!r} (components: {known})")
            if dep == name:
                raise RecipeError(where, f"component {name!r} cannot use itself")
            if names.index(dep) > i:
                raise RecipeError(
                    where,
                    f"component {dep!r} must come before {name!r}: move its table "
                    f"[{join_path('nlp.components', dep)}] above [{join_path('nlp.components', name)}]",
                )


def build_from_recipe(recipe: Recipe, resolved: dict, pipeline_cls: Any, td_cls: Any) -> dict:
    t = recipe.train
    for i, name in enumerate(t.logger):
        if name not in registry.loggers:
            known = ", ".join(registry.loggers.names())
            raise RecipeError(f"train.logger[{i}]", f"unknown logger {name!r} (known: {known})")
        if name == "tensorboard":
            from .loggers import tensorboard_available

            if not tensorboard_available():
                raise RecipeError(
                    f"train.logger[{i}]",
                    "tensorboard is not installed: pip install 'pureml[tensorboard]'",
                )
    for key in ("output_dir", "output_model_dir"):
        _check_folder(getattr(t, key), f"train.{key}")
    # data first: a missing path is the most common mistake and the cheapest to find
    train_data = []
    for name, td in recipe.train_data.items():
        where = join_path("train_data", name)
        comps = list(recipe.nlp.components)
        _check_size(td.batch_size, f"{where}.batch_size", comps)
        if td.sub_batch_size is not None:
            _check_size(td.sub_batch_size, f"{where}.sub_batch_size", comps, splits=True)
        _check_size(td.shuffle, f"{where}.shuffle", comps, shuffle=True)
        stream = build_reader(td.data, f"{where}.data")
        train_data.append(
            td_cls(
                data=stream,
                batch_size=td.batch_size,
                shuffle=td.shuffle,
                sub_batch_size=td.sub_batch_size,
                pipe_names=td.pipe_names,
                post_init=td.post_init,
                name=name,
            )
        )
    val_data = build_reader(recipe.val_data, "val_data") if recipe.val_data is not None else []
    if t.best_metric is not None and recipe.val_data is None:
        raise RecipeError("train.best_metric", "needs a [val_data] table to score")
    # parameters built by constructors are a function of the seed
    torch.manual_seed(t.seed)
    comps = {}
    for name, table in recipe.nlp.components.items():
        where = join_path("nlp.components", name)
        factory, kwargs = check_factory_table(
            table, registry.components, where, supplied=SUPPLIED["component"]
        )
        _rate_keys(kwargs, where)
        try:
            comps[name] = factory(**kwargs)
        except Exception as e:  # torch's too (a negative width): the recipe's values made it
            raise component_error(name, e, table) from None
    _check_dependencies(recipe, comps)
    try:
        nlp = pipeline_cls(comps, loss_scales=t.loss_scales)
    except Exception as e:  # a component's initialize(): a model folder without its config
        if (name := component_in_traceback(e, comps)) is not None:
            raise component_error(name, e, recipe.nlp.components[name]) from None
        if isinstance(e, ValueError):
            raise RecipeError("nlp.components", str(e)) from None
        raise
    scorer_factory, scorer_kwargs = check_factory_table(recipe.scorer, registry.scorers, "scorer")
    scorer = _call(scorer_factory, scorer_kwargs, "scorer")
    optimizer = build_optimizer(recipe.optimizer, nlp)
    return dict(
        nlp=nlp,
        train_data=train_data,
        val_data=val_data,
        seed=t.seed,
        max_steps=t.max_steps,
        optimizer=optimizer,
        validation_interval=t.validation_interval,
        checkpoint_interval=t.checkpoint_interval,
        grad_max_norm=t.grad_max_norm,
        grad_ewm_window=t.grad_ewm_window,
        grad_dev_policy=t.grad_dev_policy,
        grad_max_dev=t.grad_max_dev,
        loss_scales=t.loss_scales,
        scorer=scorer,
        num_workers=t.num_workers,
        cpu=t.cpu,
        mixed_precision=t.mixed_precision,
        output_dir=t.output_dir,
        output_model_dir=t.output_model_dir,
        save_model=t.save_model,
        best_metric=t.best_metric,
        logger=list(t.logger),
        log_weight_grads=t.log_weight_grads,
        keep_checkpoints=t.keep_checkpoints,
        log_interval=t.log_interval,
        record_params_interval=t.record_params_interval,
        compile=t.compile,
        compile_backend=t.compile_backend,
        flat_params=t.flat_params,
        deterministic=t.deterministic,
        threads=t.threads,
        recipe=resolved,
    )
