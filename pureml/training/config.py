"""The recipe's typed records: attrs classes that cattrs fills from TOML, with strict types.

A recipe is a TOML file whose top-level tables map to the fields of :class:`Recipe`::

    [nlp.components.embedding]
    factory = "scratch_encoder"
    [nlp.components.ner]
    factory = "ner_crf"
    embedding = "embedding"

    [train_data.main]
    data = { factory = "standoff", path = "data/train" }
    batch_size = "2000 words"

    [train]
    max_steps = 100

Tables that name a registered ``factory`` (components, readers, the optimizer, the scorer) stay
plain dicts here; :mod:`pureml.training.recipe` checks their keys against the factory's signature.

>>> structure({"max_steps": 5}, TrainConfig).max_steps
5
"""

from __future__ import annotations

import collections.abc
import types
import typing
from typing import Any, Literal, Union

import attrs
import cattrs
from cattrs.errors import ClassValidationError, ForbiddenExtraKeysError, IterableValidationError
from cattrs.gen import make_dict_structure_fn

from ..toml_writer import join_path

GRAD_DEV_POLICIES = ("clip_mean", "clip_threshold", "skip")
MIXED_PRECISION = ("no", "fp16", "bf16")
Table = dict[str, Any]


class RecipeError(ValueError):
    """A recipe problem, worded as ``key.path: what was expected`` (one line for the CLI)."""

    def __init__(self, path: str, message: str) -> None:
        self.path = path
        self.message = message
        super().__init__(f"{path}: {message}" if path else message)


def unknown_key(path: str, key: str, known: list[str], what: str = "") -> RecipeError:
    """The error for ``key`` (at ``path``) not among ``known``: the closest known key first (a
    typo is the usual cause), then all of them.

    >>> print(unknown_key("train.max_step", "max_step", ["max_steps", "seed"]))
    train.max_step: unknown key (did you mean 'max_steps'? expected one of: max_steps, seed)
    """
    return RecipeError(
        path, f"unknown key{' for ' + what if what else ''} ({known_keys_hint(key, known)})"
    )


def known_keys_hint(key: str, known: list[str]) -> str:
    """``did you mean 'max_steps'? expected one of: max_steps, seed`` (without the guess when no
    known key is close)."""
    import difflib

    close = difflib.get_close_matches(key, known, n=1)
    hint = f"did you mean {close[0]!r}? " if close else ""
    return f"{hint}expected one of: {', '.join(known)}"


class _FieldError(ValueError):
    """Raised by validators: cattrs does not know which field a validator rejected."""

    def __init__(self, name: str, message: str) -> None:
        self.name = name
        super().__init__(message)


def _positive(_inst: Any, attribute: attrs.Attribute, value: Any) -> None:
    if value is not None and value <= 0:
        raise _FieldError(attribute.name, f"expected a positive number, got {value!r}")


def _non_negative(_inst: Any, attribute: attrs.Attribute, value: Any) -> None:
    if value is not None and value < 0:
        raise _FieldError(attribute.name, f"expected a number >= 0, got {value!r}")


def _folder(_inst: Any, attribute: attrs.Attribute, value: Any) -> None:
    # "" (an unset shell variable in --set train.output_dir=$OUT) would be the working directory
    if isinstance(value, str) and not value.strip():
        raise _FieldError(attribute.name, f"expected a folder path, got {value!r}")


def _metric_path(_inst: Any, attribute: attrs.Attribute, value: Any) -> None:
    paths = value if isinstance(value, list) and value else [value]
    if not all(isinstance(p, str) and all(p.split("/")) for p in paths):
        raise _FieldError(
            attribute.name,
            f"expected a score path like 'ner/micro/f1' (or a list of them), got {value!r}",
        )


def _one_of(*choices: Any) -> Any:
    def check(_inst: Any, attribute: attrs.Attribute, value: Any) -> None:
        if value not in choices:
            expected = ", ".join(map(repr, choices))
            raise _FieldError(attribute.name, f"expected one of {expected}, got {value!r}")

    return check


def _doc(text: str) -> dict[str, str]:
    return {"doc": text}


@attrs.frozen(kw_only=True)
class TrainConfig:
    """The ``[train]`` table: the hyperparameters of ``pureml.train`` (SEED.md names and defaults)."""

    seed: int = attrs.field(default=42, metadata=_doc("seeds parameters, dropout and shuffling"))
    max_steps: int = attrs.field(
        default=1000, validator=_positive, metadata=_doc("optimizer steps per phase")
    )
    output_dir: str = attrs.field(
        default="artifacts", validator=_folder, metadata=_doc("the run folder")
    )
    output_model_dir: str | None = attrs.field(
        default=None,
        validator=_folder,
        metadata=_doc("where the pipeline is saved (default OUTPUT_DIR/model-last)"),
    )
    validation_interval: int | None = attrs.field(
        default=None,
        validator=_positive,
        metadata=_doc("validate every N steps (default max_steps // 10)"),
    )
    checkpoint_interval: int | None = attrs.field(
        default=None,
        validator=_positive,
        metadata=_doc("checkpoint every N steps (default validation_interval)"),
    )
    keep_checkpoints: int = attrs.field(
        default=3, validator=_positive, metadata=_doc("how many of the latest checkpoints to keep")
    )
    grad_max_norm: float = attrs.field(
        default=5.0, validator=_positive, metadata=_doc("global L2 gradient clip, every step")
    )
    grad_ewm_window: int = attrs.field(
        default=100, validator=_positive, metadata=_doc("span of the gradient-norm EMA statistics")
    )
    grad_dev_policy: str | None = attrs.field(
        default=None,
        validator=attrs.validators.optional(_one_of(*GRAD_DEV_POLICIES)),
        metadata=_doc("on a gradient-norm spike: clip_mean, clip_threshold or skip (unset: none)"),
    )
    grad_max_dev: float = attrs.field(
        default=7.0, validator=_positive, metadata=_doc("spike threshold in standard deviations")
    )
    loss_scales: dict[str, float] = attrs.field(
        factory=dict, metadata=_doc("per-component multiplier of its loss")
    )
    num_workers: int = attrs.field(
        default=0, validator=_non_negative, metadata=_doc("background data-preparation workers")
    )
    cpu: bool = attrs.field(default=False, metadata=_doc("force the CPU even when a GPU exists"))
    mixed_precision: str = attrs.field(
        default="no",
        validator=_one_of(*MIXED_PRECISION),
        metadata=_doc("no, fp16 (with a dynamic loss scale) or bf16"),
    )
    save_model: bool = attrs.field(
        default=True, metadata=_doc("write model-last with each checkpoint and at the end")
    )
    best_metric: str | list[str] | None = attrs.field(
        default=None,
        validator=attrs.validators.optional(_metric_path),
        metadata=_doc(
            "also write OUTPUT_DIR/model-best when this validation score (ner/micro/f1; a list: "
            "their mean) is the highest so far"
        ),
    )
    logger: list[str] = attrs.field(
        factory=lambda: ["progress", "json", "csv"],
        metadata=_doc("registered loggers: progress, json, csv, tensorboard"),
    )
    log_weight_grads: bool = attrs.field(
        default=False,
        metadata=_doc(
            "log per-parameter gradient (before clipping) and weight norms at each logged step"
        ),
    )
    log_interval: int = attrs.field(
        default=1,
        validator=_positive,
        metadata=_doc("write metrics every N steps, and at the last"),
    )
    record_params_interval: int | None = attrs.field(
        default=None,
        validator=_positive,
        metadata=_doc(
            "fingerprint the parameters every N steps (default: min(10, checkpoint_interval))"
        ),
    )
    compile: bool = attrs.field(default=True, metadata=_doc("compile the step with torch.compile"))
    compile_backend: str = attrs.field(
        default="inductor", metadata=_doc("torch.compile backend: inductor, aot_eager, eager")
    )
    flat_params: bool = attrs.field(
        default=True,
        metadata=_doc(
            "keep parameters and optimizer moments in flat buckets (make_step flat=True): "
            "fewer graph inputs and one update kernel per bucket"
        ),
    )
    deterministic: bool = attrs.field(
        default=True, metadata=_doc("torch deterministic algorithms (bitwise resume and replay)")
    )
    threads: int | None = attrs.field(
        default=None, validator=_positive, metadata=_doc("torch CPU threads (default: torch's)")
    )


@attrs.frozen(kw_only=True)
class TrainingDataConfig:
    """One ``[train_data.NAME]`` table: a training stream and how it is batched."""

    data: Table = attrs.field(metadata=_doc("a reader table: { factory = ..., path = ... }"))
    batch_size: int | str = attrs.field(
        default="2000 words", metadata=_doc('a stat expression: "2000 words", "16 spans", 32')
    )
    shuffle: bool | str = attrs.field(
        default="dataset", metadata=_doc('"dataset", "fragment", a stat expression, or false')
    )
    sub_batch_size: int | str | None = attrs.field(
        default=None, metadata=_doc('gradient accumulation: a stat expression or "N splits"')
    )
    pipe_names: list[str] | None = attrs.field(
        default=None, metadata=_doc("the components this stream feeds (default: all)")
    )
    post_init: bool = attrs.field(
        default=True, metadata=_doc("let components infer labels from this data first")
    )


@attrs.frozen(kw_only=True)
class NlpConfig:
    """The ``[nlp]`` table: components in pipeline order, each a factory table."""

    components: dict[str, Table] = attrs.field(
        metadata=_doc("[nlp.components.NAME] tables: { factory = ..., <constructor kwargs> }")
    )


@attrs.frozen(kw_only=True)
class Recipe:
    """A whole recipe. ``paths`` holds variables other strings refer to as ``${paths.NAME}``."""

    nlp: NlpConfig = attrs.field(metadata=_doc("the pipeline"))
    train_data: dict[str, TrainingDataConfig] = attrs.field(
        metadata=_doc("named training streams; each step draws one batch from each")
    )
    val_data: Table | None = attrs.field(
        default=None, metadata=_doc("a reader table for the validation documents")
    )
    optimizer: Table | None = attrs.field(
        default=None,
        metadata=_doc("an optimizer table (default: AdamW, two groups, as in edsnlp)"),
    )
    scorer: Table = attrs.field(
        factory=lambda: {"factory": "default"}, metadata=_doc("a scorer table")
    )
    train: TrainConfig = attrs.field(factory=TrainConfig, metadata=_doc("hyperparameters"))
    paths: dict[str, str] = attrs.field(
        factory=dict, metadata=_doc("variables for ${paths.NAME} in other strings")
    )


# --- strict structuring ------------------------------------------------------------------------

_PRIMITIVES = (bool, int, float, str)


def type_name(hint: Any) -> str:
    """A short human name for a type hint: ``int``, ``list[str]``, ``int | str``."""
    origin = typing.get_origin(hint)
    if hint is type(None):
        return "none"
    if origin in (Union, types.UnionType):
        return " | ".join(type_name(a) for a in typing.get_args(hint))
    if origin is Literal:
        return " | ".join(repr(a) for a in typing.get_args(hint))
    if origin is collections.abc.Callable:
        # a Python-only value (a schedule function): recipes give a table with a factory instead
        return "callable"
    if origin is not None:
        args = ", ".join(type_name(a) for a in typing.get_args(hint))
        return f"{getattr(origin, '__name__', str(origin))}[{args}]"
    if hint is Any:
        return "any"
    if isinstance(hint, type) and attrs.has(hint):
        return "table"
    return getattr(hint, "__name__", str(hint))


class _Mismatch(TypeError):
    pass


def _strict_primitive(t: type) -> Any:
    def structure(value: Any, _type: Any) -> Any:
        if t is float and isinstance(value, int) and not isinstance(value, bool):
            return float(value)
        if not isinstance(value, t) or (t in (int, float) and isinstance(value, bool)):
            raise _Mismatch(f"expected {t.__name__}, got {value!r}")
        return value

    return structure


def _matches(value: Any, hint: Any) -> bool:
    try:
        converter.structure(value, hint)
        return True
    except Exception:
        return False


def _is_union(hint: Any) -> bool:
    return typing.get_origin(hint) in (Union, types.UnionType)


def _structure_union(value: Any, hint: Any) -> Any:
    args = typing.get_args(hint)
    if value is None and type(None) in args:
        return None
    non_none = [a for a in args if a is not type(None)]
    if len(non_none) == 1:
        # Optional[X]: structure as X so that nested errors keep their path
        return converter.structure(value, non_none[0])
    # exact type first, so 3 stays an int in ``int | str`` and true stays a bool
    for arg in args:
        if arg in _PRIMITIVES and type(value) is arg:
            return value
    for arg in args:
        if arg is type(None):
            continue
        if _matches(value, arg):
            return converter.structure(value, arg)
    raise _Mismatch(f"expected {type_name(hint)}, got {value!r}")


def _structure_any(value: Any, _type: Any) -> Any:
    return value


converter = cattrs.Converter(forbid_extra_keys=True)
for _t in _PRIMITIVES:
    converter.register_structure_hook(_t, _strict_primitive(_t))
converter.register_structure_hook_func(_is_union, _structure_union)
converter.register_structure_hook(Any, _structure_any)


def _attrs_hook_factory(cl: type) -> Any:
    generated = make_dict_structure_fn(cl, converter, _cattrs_forbid_extra_keys=True)

    def structure_table(value: Any, _type: Any) -> Any:
        if not isinstance(value, dict):
            raise _Mismatch(f"expected a table, got {value!r}")
        return generated(value, _type)

    return structure_table


converter.register_structure_hook_factory(attrs.has, _attrs_hook_factory)
converter.register_structure_hook_func(
    lambda t: typing.get_origin(t) is dict and typing.get_args(t)[:1] == (str,),
    lambda v, t: _structure_dict(v, t),
)


def _structure_list(value: Any, hint: Any) -> list:
    # cattrs would iterate a string into its characters: logger = "json" became ["j", "s", ...]
    if not isinstance(value, list | tuple):
        raise _Mismatch(f"expected {type_name(hint)}, got {value!r}")
    (vt,) = typing.get_args(hint) or (Any,)
    out, errors = [], []
    for i, v in enumerate(value):
        try:
            out.append(converter.structure(v, vt))
        except Exception as e:
            e.add_note(cattrs.errors.IterableValidationNote(f"index {i}", i, vt))
            errors.append(e)
    if errors:
        raise IterableValidationError("While structuring a list", errors, hint)
    return out


converter.register_structure_hook_func(
    lambda t: typing.get_origin(t) is list, lambda v, t: _structure_list(v, t)
)


def _structure_dict(value: Any, hint: Any) -> dict:
    if not isinstance(value, dict):
        raise _Mismatch(f"expected a table, got {value!r}")
    (_, vt) = typing.get_args(hint)
    out, errors = {}, []
    for k, v in value.items():
        try:
            out[k] = converter.structure(v, vt)
        except Exception as e:
            e.add_note(cattrs.errors.IterableValidationNote(f"key {k!r}", k, str))
            errors.append(e)
    if errors:
        raise IterableValidationError("While structuring a table", errors, hint)
    return out


def _first_error(exc: BaseException, path: str, hint_cls: Any = None) -> RecipeError:
    """Walk cattrs' exception groups down to the first leaf and name its key path."""
    for note in getattr(exc, "__notes__", []) or []:
        name = getattr(note, "name", None)
        index = getattr(note, "index", None)
        if name is not None:
            path = join_path(path, name)
        elif index is not None:
            path = f"{path}[{index}]" if isinstance(index, int) else join_path(path, index)
    if isinstance(exc, ForbiddenExtraKeysError):
        extra = sorted(exc.extra_fields)
        known = sorted(a.name for a in attrs.fields(exc.cl)) if attrs.has(exc.cl) else []
        return unknown_key(join_path(path, extra[0]), extra[0], known)
    sub = getattr(exc, "exceptions", None)
    if sub:
        return _first_error(sub[0], path)
    if isinstance(exc, KeyError):
        # a required attrs field was missing; cattrs' note already named it
        return RecipeError(path, "missing required key")
    if isinstance(exc, _FieldError):
        return RecipeError(join_path(path, exc.name), str(exc))
    message = str(exc)
    if isinstance(exc, TypeError) and "required" in message and "argument" in message:
        missing = message.rsplit(":", 1)[-1].strip().strip("'")
        return RecipeError(join_path(path, missing), "missing required key")
    return RecipeError(path, message)


def structure(data: Any, cls: Any, path: str = "") -> Any:
    """Structure ``data`` into ``cls`` strictly; errors become a :class:`RecipeError` with the path.

    >>> structure({"max_steps": "forty"}, TrainConfig, "train")
    Traceback (most recent call last):
    ...
    pureml.training.config.RecipeError: train.max_steps: expected int, got 'forty'
    """
    if attrs.has(cls) and not isinstance(data, dict):
        raise RecipeError(path, f"expected a table, got {data!r}")
    try:
        return converter.structure(data, cls)
    except (ClassValidationError, IterableValidationError) as e:
        raise _first_error(e, path) from None
    except (TypeError, ValueError, KeyError) as e:
        raise _first_error(e, path) from None


def structure_recipe(data: dict[str, Any]) -> Recipe:
    """Build a :class:`Recipe` from a parsed TOML dict (errors name the key path)."""
    return structure(data, Recipe)


def unstructure(obj: Any) -> Any:
    """The plain-dict form of a config record (what config.toml shows)."""
    return converter.unstructure(obj)


def check_train_values(values: collections.abc.Mapping[str, Any]) -> None:
    """Run the ``[train]`` table's validators on ``values`` (``train()``'s keyword arguments of
    the same names), so that a Python caller meets the checks a recipe meets; raises
    ``ValueError("name: problem")``.

    >>> check_train_values({"log_interval": 0})
    Traceback (most recent call last):
    ...
    ValueError: log_interval: expected a positive number, got 0
    """
    fields = attrs.fields_dict(TrainConfig)
    for name, value in values.items():
        validator = fields[name].validator
        if validator is None:
            continue
        try:
            validator(None, fields[name], value)
        except _FieldError as e:
            raise ValueError(f"{name}: {e}") from None
