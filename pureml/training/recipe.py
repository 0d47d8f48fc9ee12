"""Recipes: TOML -> checked dict -> :class:`~pureml.training.config.Recipe`, and back to TOML.

Everything a recipe can get wrong is reported as a :class:`RecipeError` naming the key path,
before anything is written to disk::

    >>> data = parse_recipe_text('[train]\\nmax_steps = "forty"\\n', overrides=())
    >>> try:
    ...     structure_recipe(data)
    ... except RecipeError as e:
    ...     print(e)
    nlp: missing required key

Overrides use dotted key paths and TOML values (a bare word is taken as a string)::

    >>> d = apply_overrides({"train": {"max_steps": 10}}, ["train.max_steps=100"])
    >>> d["train"]["max_steps"]
    100
"""

from __future__ import annotations

import collections.abc
import copy
import hashlib
import inspect
import json
import os
import re
import types
import typing
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any, Literal, Union

import attrs

from ..toml_writer import dump_toml, join_path, toml_scalar

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10: the tomli backport has the same API
    import tomli as tomllib  # type: ignore[no-redef]

from .. import registry
from .config import (
    Recipe,
    RecipeError,
    Table,
    known_keys_hint,
    structure,
    structure_recipe,
    type_name,
    unknown_key,
    unstructure,
)

__all__ = [
    "RecipeError",
    "load_recipe",
    "parse_recipe_text",
    "apply_overrides",
    "resolve_references",
    "escape_references",
    "check_factory_table",
    "dump_toml",
    "recipe_hash",
    "resolved_dict",
    "recipe_reference",
]

# Where factory tables live in a recipe, and which registry names them. "*" is any key.
FACTORY_TABLES: tuple[tuple[tuple[str, ...], registry.Registry], ...] = (
    (("nlp", "components", "*"), registry.components),
    (("train_data", "*", "data"), registry.readers),
    (("val_data",), registry.readers),
    (("optimizer",), registry.optimizers),
    (("scorer",), registry.scorers),
)
# Factory tables nested inside other factory tables, by key name (``optimizer.schedule``).
NESTED_FACTORY_KEYS: dict[str, registry.Registry] = {"schedule": registry.schedules}
# Key paths (and whole sections) that do not change the weights a run computes: excluded from
# the recipe hash, so a run resumes after they change. Where and when it writes, validates and
# checkpoints; how it scores, and on which documents.
UNHASHED_KEYS: tuple[tuple[str, ...], ...] = (
    ("train", "output_dir"),
    ("train", "output_model_dir"),
    ("train", "logger"),
    ("train", "num_workers"),
    ("train", "validation_interval"),
    ("train", "checkpoint_interval"),
    ("train", "keep_checkpoints"),
    ("train", "save_model"),
    ("train", "best_metric"),
    ("train", "log_interval"),
    ("train", "record_params_interval"),
    ("val_data",),
    ("scorer",),
)


def _unhashed(path: Sequence[str]) -> bool:
    return any(tuple(path[: len(k)]) == k for k in UNHASHED_KEYS)


# --- parsing and overrides ---------------------------------------------------------------------


def split_key_path(path: str) -> list[str]:
    """``'optimizer.groups."^ner\\.".lr'`` -> ``['optimizer', 'groups', '^ner\\.', 'lr']``."""
    parts, buf, i, quoted = [], "", 0, False
    while i < len(path):
        c = path[i]
        if quoted:
            if c == "\\" and i + 1 < len(path):
                buf += path[i + 1]
                i += 1
            elif c == '"':
                quoted = False
            else:
                buf += c
        elif c == '"':
            quoted = True
        elif c == ".":
            parts.append(buf)
            buf = ""
        else:
            buf += c
        i += 1
    if quoted:
        raise RecipeError(path, "unterminated quote in key path")
    parts.append(buf)
    if any(p == "" for p in parts):
        raise RecipeError(path, "empty key in key path")
    return parts


def parse_value(text: str) -> Any:
    """A TOML value (``100``, ``1e-3``, ``true``, ``["a"]``), else the text as a string."""
    try:
        return tomllib.loads(f"v = {text}")["v"]
    except tomllib.TOMLDecodeError:
        return text


def _factory_for(parts: tuple[str, ...], table: Any) -> Callable[..., Any] | None:
    """The registered factory of the table at ``parts`` (None if it is no factory table)."""
    if not isinstance(table, dict) or not isinstance(table.get("factory"), str):
        return None
    reg = None
    for pattern, candidate in FACTORY_TABLES:
        if len(pattern) == len(parts) and all(p in ("*", q) for p, q in zip(pattern, parts)):
            reg = candidate
    if reg is None and parts and parts[-1] in NESTED_FACTORY_KEYS:
        reg = NESTED_FACTORY_KEYS[parts[-1]]
    if reg is None or table["factory"] not in reg:
        return None
    return reg.get(table["factory"])


def factory_params(factory: Callable[..., Any]) -> dict[str, inspect.Parameter]:
    """``factory``'s parameters by name (none when it has no signature to read)."""
    try:
        return dict(inspect.signature(factory).parameters)
    except (TypeError, ValueError):
        return {}


_NOT_BY_NAME = (
    inspect.Parameter.VAR_POSITIONAL,
    inspect.Parameter.VAR_KEYWORD,
    inspect.Parameter.POSITIONAL_ONLY,
)


def settable_params(factory: Callable[..., Any], supplied: Sequence[str] = ()) -> list[str]:
    """The arguments a recipe may set on ``factory``: its parameters passed by name, less those
    the trainer supplies itself (``supplied``). The one list that :func:`check_factory_table`
    accepts, its errors name and the reference documents."""
    return [
        n
        for n, p in factory_params(factory).items()
        if p.kind not in _NOT_BY_NAME and n not in supplied
    ]


def _unwrap_optional(hint: Any) -> Any:
    if typing.get_origin(hint) in (Union, types.UnionType):
        args = [a for a in typing.get_args(hint) if a is not type(None)]
        if len(args) == 1:
            return args[0]
    return hint


def _default_table(cls: type, name: str) -> dict[str, Any] | None:
    """The default of the field ``name`` of ``cls`` where it is a table (``scorer``'s
    ``{factory = "default"}``): what a recipe without that table has."""
    default = attrs.fields_dict(cls)[name].default
    if isinstance(default, attrs.Factory):  # type: ignore[arg-type]
        default = default.factory()
    return copy.deepcopy(default) if isinstance(default, dict) else None


def _check_key_exists(data: dict, parts: list[str], raw: str) -> dict[int, dict[str, Any]]:
    """Raise unless ``parts`` names a key the recipe schema (or a factory signature) knows.

    Returns, by depth, the default tables of the parts the recipe leaves out: an override
    inside one starts from it (``scorer.speed=false`` keeps ``factory = "default"``)."""
    hint: Any = Recipe
    node: Any = data
    defaults: dict[int, dict[str, Any]] = {}
    for depth, part in enumerate(parts):
        here = ".".join(map(join_path_part, parts[: depth + 1]))
        hint = _unwrap_optional(hint)
        if isinstance(hint, type) and attrs.has(hint):
            names = {a.name: a.type for a in attrs.fields(hint)}
            if part not in names:
                hint = known_keys_hint(part, sorted(names))
                raise RecipeError(here, f"no such key to override ({hint})")
            absent = not (isinstance(node, dict) and isinstance(node.get(part), dict))
            if absent and (default := _default_table(hint, part)) is not None:
                defaults[depth] = default
            hint = typing.get_type_hints(hint)[part]
        elif typing.get_origin(hint) is dict:
            value_hint = typing.get_args(hint)[1]
            if not (isinstance(node, dict) and part in node):
                factory = _factory_for(tuple(parts[:depth]), node)
                params = factory_params(factory) if factory else {}
                is_factory_param = part in params or any(
                    p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values()
                )
                last = depth == len(parts) - 1
                if not (
                    is_factory_param or (last and value_hint is Any and isinstance(node, dict))
                ):
                    hint_text = ""
                    if last and value_hint is not Any and not factory:
                        # a table of plain values (loss_scales): new keys come as a whole table,
                        # which replaces the one the recipe has: the hint repeats its entries
                        parent = ".".join(map(join_path_part, parts[:depth]))
                        kept = "".join(
                            f"{join_path_part(k)} = {toml_scalar(v)}, "
                            for k, v in (node if isinstance(node, dict) else {}).items()
                        )
                        hint_text = (
                            f" (to add one, set the whole table: "
                            f"{parent}={{{kept}{join_path_part(part)} = ...}})"
                        )
                    raise RecipeError(here, "no such key to override" + hint_text)
            hint = value_hint
        elif hint is Any:
            if not (isinstance(node, dict) and (part in node or depth == len(parts) - 1)):
                raise RecipeError(here, "no such key to override")
        else:
            raise RecipeError(here, f"no such key to override ({type_name(hint)} has no keys)")
        child = node.get(part) if isinstance(node, dict) else None
        node = defaults[depth] if child is None and depth in defaults else child
    return defaults


def join_path_part(part: str) -> str:
    return join_path("", part)


def apply_overrides(data: dict[str, Any], overrides: Iterable[str]) -> dict[str, Any]:
    """Return a copy of ``data`` with each ``key.path=value`` applied (the key must exist).

    >>> apply_overrides({"train": {}}, ["train.nope=1"])
    Traceback (most recent call last):
    ...
    pureml.training.config.RecipeError: train.nope: no such key to override (expected one of: ...)
    """
    data = copy.deepcopy(data)
    for item in overrides:
        if "=" not in item:
            raise RecipeError(item, "an override is written key.path=value")
        key, text = item.split("=", 1)
        parts = split_key_path(key.strip())
        defaults = _check_key_exists(data, parts, key)
        node = data
        for depth, part in enumerate(parts[:-1]):
            child = node.get(part)
            if child is None:
                child = node[part] = defaults.get(depth, {})
            elif not isinstance(child, dict):
                here = ".".join(map(join_path_part, parts[: depth + 1]))
                raise RecipeError(here, f"expected a table to hold {parts[depth + 1]!r}")
            node = child
        node[parts[-1]] = parse_value(text.strip())
    return data


# ``${key.path}`` is a reference; ``$${`` is a literal ``${`` (a regex, a path that holds one).
# One pattern for both, scanned left to right, so ``$${a.b}`` is never read as ``$`` + ``${a.b}``.
_REFERENCE = re.compile(r"\$\$\{|\$\{([^}]*)\}")


def resolve_references(data: dict[str, Any]) -> dict[str, Any]:
    """Replace ``${key.path}`` in strings by the value at that path (``${paths.data}/train``),
    and ``$${`` by a literal ``${``.

    >>> resolve_references({"paths": {"d": "/data"}, "x": {"re": "$${paths.d} is ${paths.d}"}})["x"]
    {'re': '${paths.d} is /data'}
    """

    def lookup(ref: str, where: str) -> Any:
        node: Any = data
        try:
            parts = split_key_path(ref)
        except RecipeError as e:
            raise RecipeError(where, f"bad reference ${{{ref}}}: {e.message}") from None
        for part in parts:
            if not isinstance(node, dict) or part not in node:
                raise RecipeError(where, f"unknown reference ${{{ref}}}")
            node = node[part]
        return node

    def visit(node: Any, where: str, depth: int = 0) -> Any:
        if isinstance(node, dict):
            return {k: visit(v, join_path(where, k), depth) for k, v in node.items()}
        if isinstance(node, list):
            return [visit(v, f"{where}[{i}]", depth) for i, v in enumerate(node)]
        if isinstance(node, str) and "${" in node:
            if depth > 10:
                raise RecipeError(where, "references nest too deeply (a cycle?)")
            if "${" in _REFERENCE.sub("", node):
                raise RecipeError(where, f"unterminated reference: {node!r}")
            whole = _REFERENCE.fullmatch(node)
            if whole and whole.group(1) is not None:  # a lone reference keeps the value's type
                return visit(lookup(whole.group(1), where), where, depth + 1)

            def text(m: re.Match[str]) -> str:
                if m.group(1) is None:
                    return "${"
                value = visit(lookup(m.group(1), where), where, depth + 1)
                if isinstance(value, dict | list):
                    kind = "table" if isinstance(value, dict) else "list"
                    raise RecipeError(
                        where,
                        f"{m.group(0)} is a {kind}: only a whole-string reference takes it",
                    )
                return str(value)

            return _REFERENCE.sub(text, node)
        return node

    return visit(data, "")


def escape_references(data: Any) -> Any:
    """``data`` with every ``${`` in its strings written ``$${``: a resolved recipe as a recipe
    that resolves back to it (``config.toml``, which replay and diff read as a recipe).

    >>> escape_references({"x": ["${a} $${b}", 3]})
    {'x': ['$${a} $$${b}', 3]}
    >>> resolve_references(escape_references({"x": "${a} $${b}"}))
    {'x': '${a} $${b}'}
    """
    if isinstance(data, dict):
        return {k: escape_references(v) for k, v in data.items()}
    if isinstance(data, list):
        return [escape_references(v) for v in data]
    if isinstance(data, str):
        return data.replace("${", "$${")
    return data


def parse_recipe_text(text: str, overrides: Iterable[str] = (), source: str = "recipe") -> dict:
    """Parse TOML text, apply overrides and ``${...}`` references (no structuring yet)."""
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        raise RecipeError("", f"{source}: invalid TOML: {e}") from None
    data = apply_overrides(data, overrides)
    return resolve_references(data)


def load_recipe(path: str | Path, overrides: Iterable[str] = ()) -> tuple[Recipe, dict[str, Any]]:
    """Read, override, check and structure a recipe file.

    Returns the :class:`Recipe` and the resolved dict (every key, defaults filled in), which is
    what ``config.toml`` holds and what the recipe hash is computed from.
    """
    path = Path(path)
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        raise RecipeError("", f"recipe not found: {path}") from None
    except OSError as e:
        raise RecipeError("", f"cannot read recipe {path}: {e}") from None
    try:
        text = raw.decode("utf-8-sig")  # a BOM, as some Windows editors write, is not TOML
    except UnicodeDecodeError as e:
        start = e.start
        line = raw[:start].count(b"\n") + 1
        column = start - (raw.rfind(b"\n", 0, start) + 1) + 1
        raise RecipeError(
            "",
            f"cannot read recipe {path}:{line}: not UTF-8 text "
            f"(byte 0x{raw[start]:02x} at column {column}): "
            "save the recipe as UTF-8",
        ) from None
    data = parse_recipe_text(text, overrides, source=str(path))
    recipe = structure_recipe(data)
    check_factories(recipe)
    return recipe, resolved_dict(recipe)


# --- factory tables ----------------------------------------------------------------------------


def _simple_hint(hint: Any) -> bool:
    """Whether ``hint`` is built only from types a TOML value can be checked against."""
    if hint in (int, float, str, bool, type(None), Any):
        return True
    origin = typing.get_origin(hint)
    if origin is Literal:
        return True
    if origin in (list, dict, tuple, Union, types.UnionType):
        return all(_simple_hint(a) for a in typing.get_args(hint) if a is not Ellipsis)
    return False


_NOT_FROM_TOML = object()


def _toml_hint(hint: Any) -> Any:
    """The part of a factory's type hint that a TOML value can take, to check values against.

    A recipe cannot write a callable (``learning_rate: float | Schedule`` takes only the float
    there) and writes a path as a str (``str | os.PathLike``); a bare ``list`` or ``dict`` is
    ``list[Any]`` or ``dict[str, Any]``. None where part of the hint is some other type: then
    the value is not checked here (the factory converts it).
    """
    if hint is list:
        return list[Any]
    if hint is dict:
        return dict[str, Any]
    origin = typing.get_origin(hint)
    if origin is collections.abc.Callable or hint is collections.abc.Callable:
        return _NOT_FROM_TOML
    if origin is os.PathLike or hint is os.PathLike:
        return _NOT_FROM_TOML
    if origin in (Union, types.UnionType):
        args = [_toml_hint(a) for a in typing.get_args(hint)]
        if any(a is None for a in args):
            return None
        args = [a for a in args if a is not _NOT_FROM_TOML]
        if not args:
            return None
        return args[0] if len(args) == 1 else Union[tuple(args)]  # noqa: UP007
    if origin in (list, dict, tuple):
        args = [_toml_hint(a) if a is not Ellipsis else a for a in typing.get_args(hint)]
        if any(a is None or a is _NOT_FROM_TOML for a in args):
            return None
        return origin[tuple(args)] if args else hint
    return hint if _simple_hint(hint) else None


def _check_literal(value: Any, hint: Any, path: str) -> None:
    choices = typing.get_args(hint)
    if value not in choices or type(value) not in {type(c) for c in choices}:
        raise RecipeError(path, f"expected one of {', '.join(map(repr, choices))}, got {value!r}")


def _factory_hints(factory: Callable[..., Any]) -> dict[str, Any]:
    target = factory.__init__ if isinstance(factory, type) else factory
    try:
        return typing.get_type_hints(target)
    except Exception:  # unresolvable annotations: skip type checks rather than fail
        return {}


def check_factory_table(
    table: Table, reg: registry.Registry, path: str, *, supplied: Iterable[str] | None = None
) -> tuple[Callable[..., Any], dict[str, Any]]:
    """Check a ``{factory = ..., **kwargs}`` table against the factory's signature.

    Returns the factory and its keyword arguments. ``supplied`` names parameters the caller
    passes itself, which the table may not set (default: ``SUPPLIED`` of the registry's kind);
    those ``DEFAULTED`` for the kind may be set or left out.

    >>> from pureml.training.build import register_defaults
    >>> register_defaults()
    >>> try:
    ...     check_factory_table({"factory": "linear", "warmup": 0.1}, registry.schedules, "s")
    ... except RecipeError as e:
    ...     print(e.path, "->", e.message.split("expected one of: ")[1])
    s.warmup -> start, max, end, warmup_rate, total_steps)
    """
    supplied = tuple(SUPPLIED.get(reg.kind, ()) if supplied is None else supplied)
    defaulted = DEFAULTED.get(reg.kind, {})
    if not isinstance(table, dict):
        raise RecipeError(path, f"expected a table, got {table!r}")
    name = table.get("factory")
    if name is None:
        raise RecipeError(join_path(path, "factory"), f"missing required key (a {reg.kind} name)")
    if not isinstance(name, str):
        raise RecipeError(join_path(path, "factory"), f"expected str, got {name!r}")
    if name not in reg:
        known = ", ".join(reg.names()) or "none registered"
        raise RecipeError(
            join_path(path, "factory"), f"unknown {reg.kind} factory {name!r} (known: {known})"
        )
    factory = reg.get(name)
    kwargs = {k: v for k, v in table.items() if k != "factory"}
    params = factory_params(factory)
    var_kw = any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values())
    hints = _factory_hints(factory)
    for key, value in kwargs.items():
        where = join_path(path, key)
        if key in supplied:  # passed by the trainer as well: "got multiple values"
            raise RecipeError(where, f"set by the trainer for {reg.kind} {name!r}: leave it out")
        if key not in settable_params(factory, supplied):
            if var_kw:
                continue
            known = settable_params(factory, supplied)
            raise unknown_key(where, key, known, f"{reg.kind} {name!r}")
        hint = hints.get(key)
        if hint is None:
            continue
        if isinstance(value, dict) and key in NESTED_FACTORY_KEYS and "factory" in value:
            check_factory_table(value, NESTED_FACTORY_KEYS[key], where)
            continue
        if typing.get_origin(hint) is Literal:
            _check_literal(value, hint, where)
        elif (checkable := _toml_hint(hint)) is not None:
            structure(value, checkable, where)
    for pname, param in params.items():
        if (
            param.default is inspect.Parameter.empty
            and param.kind
            in (inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY)
            and pname not in kwargs
            and pname not in supplied
            and pname not in defaulted
        ):
            raise RecipeError(join_path(path, pname), f"missing required key for {name!r}")
    return factory, kwargs


# Parameters the trainer passes itself, per registry kind: a recipe cannot set them.
SUPPLIED: dict[str, tuple[str, ...]] = {
    "component": ("name",),
    "optimizer": ("total_steps", "names", "params"),
    "scorer": (),
    "reader": (),
    "schedule": (),
}
# Parameters a recipe may set or leave out, per registry kind: the trainer fills in those left
# out (with what, as the reference says). A schedule's peak is its group's learning rate and
# it ends with the phase, as in EDS-NLP.
DEFAULTED: dict[str, dict[str, str]] = {
    "schedule": {
        "max": "the learning rate",
        "value": "the learning rate",
        "total_steps": "`train.max_steps`",
    },
}


def check_factories(recipe: Recipe) -> None:
    """Check every factory table of a recipe (names, keys, value types)."""
    if not recipe.nlp.components:
        raise RecipeError("nlp.components", "no components (add a [nlp.components.NAME] table)")
    if not recipe.train_data:
        raise RecipeError("train_data", "no training stream (add a [train_data.NAME] table)")
    for name, table in recipe.nlp.components.items():
        check_factory_table(
            table,
            registry.components,
            join_path("nlp.components", name),
            supplied=SUPPLIED["component"],
        )
    for name, td in recipe.train_data.items():
        check_factory_table(td.data, registry.readers, join_path(f"train_data.{name}", "data"))
        if td.pipe_names is not None:
            if not td.pipe_names:
                raise RecipeError(
                    join_path(join_path("train_data", name), "pipe_names"),
                    "names no component (leave it out to feed them all)",
                )
            for i, pipe in enumerate(td.pipe_names):
                if pipe not in recipe.nlp.components:
                    known = ", ".join(recipe.nlp.components)
                    raise RecipeError(
                        f"train_data.{join_path('', name)}.pipe_names[{i}]",
                        f"unknown component {pipe!r} (components: {known})",
                    )
    if recipe.val_data is not None:
        check_factory_table(recipe.val_data, registry.readers, "val_data")
    if recipe.optimizer is not None:
        table = dict(recipe.optimizer)
        schedule = table.pop("schedule", None)
        table.pop("groups", None)  # regexes and their options: checked when built
        check_factory_table(table, registry.optimizers, "optimizer", supplied=SUPPLIED["optimizer"])
        if schedule is not None:
            check_factory_table(schedule, registry.schedules, "optimizer.schedule")
    check_factory_table(recipe.scorer, registry.scorers, "scorer")
    for comp in recipe.train.loss_scales:
        if comp not in recipe.nlp.components:
            raise RecipeError(join_path("train.loss_scales", comp), f"unknown component {comp!r}")


# --- resolved recipe, hash and TOML output -----------------------------------------------------


def resolved_dict(recipe: Recipe) -> dict[str, Any]:
    """The recipe as a plain dict with every default filled in (None values dropped)."""
    return _drop_none(unstructure(recipe))


def _drop_none(node: Any) -> Any:
    if isinstance(node, dict):
        return {k: _drop_none(v) for k, v in node.items() if v is not None}
    if isinstance(node, list):
        return [_drop_none(v) for v in node]
    return node


def recipe_hash(resolved: dict[str, Any]) -> str:
    """A stable hash of what a run computes (output locations and display settings excluded)."""
    data = copy.deepcopy(resolved)
    for *parents, key in UNHASHED_KEYS:
        table = data
        for name in parents:
            table = table.get(name) if isinstance(table, dict) else None
        if isinstance(table, dict):
            table.pop(key, None)
    text = json.dumps(data, sort_keys=True, separators=(",", ":"), default=repr)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def recipe_diff(a: dict[str, Any], b: dict[str, Any], prefix: str = "") -> list[str]:
    """Key paths whose values differ between two resolved recipes (hashed keys only)."""
    out = []
    for key in sorted(set(a) | set(b), key=str):
        path = join_path(prefix, key)
        va, vb = a.get(key), b.get(key)
        if isinstance(va, dict) and isinstance(vb, dict):
            out.extend(recipe_diff(va, vb, path))
        elif va != vb and not _unhashed(split_key_path(path)):
            out.append(path)
    return out


# --- reference documentation -------------------------------------------------------------------


def _default_text(field: attrs.Attribute) -> str:
    if field.default is attrs.NOTHING:
        return "required"
    if isinstance(field.default, attrs.Factory):  # type: ignore[arg-type]
        value = field.default.factory()
    else:
        value = field.default
    if value is None:
        return "unset"
    return f"`{toml_scalar(value)}`"


def _reference_rows(cls: type, prefix: str) -> list[str]:
    hints = typing.get_type_hints(cls)
    rows = []
    for field in attrs.fields(cls):
        key = join_path(prefix, field.name)
        hint = _unwrap_optional(hints[field.name])
        if isinstance(hint, type) and attrs.has(hint):
            rows.extend(_reference_rows(hint, key))
            continue
        if typing.get_origin(hint) is dict and attrs.has(typing.get_args(hint)[1]):
            rows.extend(_reference_rows(typing.get_args(hint)[1], f"{key}.NAME"))
            continue
        doc = field.metadata.get("doc", "")
        kind = type_name(hints[field.name]).replace("|", "or")
        rows.append(f"| `{key}` | {kind} | {_default_text(field)} | {doc} |")
    return rows


def _factory_rows(reg: registry.Registry) -> list[str]:
    rows = []
    for name in reg.names():
        factory = reg.get(name)
        hints = _factory_hints(factory)
        params = []
        signature = factory_params(factory)
        for pname in settable_params(factory, SUPPLIED.get(reg.kind, ())):
            if pname == "self":
                continue
            p = signature[pname]
            hint = type_name(hints[pname]).replace("|", "or") if pname in hints else "any"
            if pname in DEFAULTED.get(reg.kind, {}):
                default = DEFAULTED[reg.kind][pname]
            elif p.default is inspect.Parameter.empty:
                default = "required"
            else:
                default = f"`{toml_scalar(p.default)}`" if _tomlable(p.default) else "unset"
            params.append(f"`{pname}` ({hint}, {default})")
        summary = (inspect.getdoc(factory) or "").split("\n", 1)[0]
        rows.append(f"| `{name}` | {summary} | {'; '.join(params)} |")
    return rows


def _tomlable(value: Any) -> bool:
    try:
        toml_scalar(value)
        return value is not None
    except TypeError:
        return False


def recipe_reference() -> str:
    """Markdown reference of every recipe key and registered factory (for the README)."""
    out = [
        "### Recipe keys",
        "",
        "| key | type | default | meaning |",
        "|---|---|---|---|",
        *_reference_rows(Recipe, ""),
        "",
    ]
    for title, reg in (
        ("Components (`nlp.components.NAME.factory`)", registry.components),
        ("Readers (`train_data.NAME.data.factory`, `val_data.factory`)", registry.readers),
        ("Optimizers (`optimizer.factory`)", registry.optimizers),
        ("Schedules (`optimizer.schedule.factory`)", registry.schedules),
        ("Scorers (`scorer.factory`)", registry.scorers),
        ("Loggers (`train.logger`)", registry.loggers),
    ):
        # a recipe names its loggers; their options are for instances passed from Python
        keys = (
            "options (Python: `train(logger=[...])` instances)"
            if reg is registry.loggers
            else "keys"
        )
        out += [f"### {title}", "", f"| name | what | {keys} |", "|---|---|---|"]
        out += _factory_rows(reg) + [""]
    return "\n".join(out)
