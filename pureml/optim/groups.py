"""Parameter groups: regular expressions on parameter names pick each group's lr and schedule.

Selectors are tried in order with ``re.search``; the first that matches a name wins. A group spec
is a dict (``lr``, ``schedule``, an optional ``name``, and any other optimizer argument such as
``weight_decay``) or ``False``, which freezes the parameters: they get no optimizer state and the
step passes them to the model as buffers, so they are not differentiated at all.

Example::

    opt = param_groups(
        {
            "^embedding\\\\.": False,
            "^ner\\\\.": {"name": "ner", "lr": 1e-3, "schedule": {"name": "linear", "warmup_rate": 0.1}},
        },
        default={"lr": 3e-4},
        total_steps=1000,
    )
    trainable, frozen = opt.partition(params)
    state = opt.init(trainable)
"""

from __future__ import annotations

import inspect
import re
from collections.abc import Callable, Iterable, Mapping
from typing import Any

import attrs
import torch

from pureml.optim.base import GradientTransformation, Params, check_lr, describe
from pureml.registry import optimizers, schedules

__all__ = ["Group", "GroupedOptimizer", "param_groups", "get_optimizer", "get_schedule"]

_GROUP_KEYS = {"lr", "schedule", "name", "optional"}


def get_optimizer(name: str) -> Callable[..., GradientTransformation]:
    """The optimizer factory registered as ``name``; ValueError naming it if unknown."""
    import pureml.optim  # noqa: F401  (registers the built-in optimizers)

    try:
        return optimizers.get(name)
    except KeyError:
        raise ValueError(
            f"unknown optimizer {name!r} (known: {', '.join(optimizers.names())})"
        ) from None


def get_schedule(name: str) -> Callable[..., Callable[[torch.Tensor], torch.Tensor]]:
    """The schedule factory registered as ``name``; ValueError naming it if unknown."""
    import pureml.optim  # noqa: F401  (registers the built-in schedules)

    try:
        return schedules.get(name)
    except KeyError:
        raise ValueError(
            f"unknown schedule {name!r} (known: {', '.join(schedules.names())})"
        ) from None


def _build_schedule(spec: Any, lr: float | None, total_steps: int | None, group: str) -> Any:
    if spec is None or callable(spec):
        return spec
    if isinstance(spec, str):
        spec = {"name": spec}
    if not isinstance(spec, Mapping):
        raise ValueError(f"group {group!r}: schedule must be a name, a dict or a callable")
    spec = dict(spec)
    name = spec.pop("name", None) or spec.pop("@schedule", None)
    if name is None:
        raise ValueError(f"group {group!r}: schedule dict needs a 'name'")
    factory = get_schedule(name)
    accepted = inspect.signature(factory).parameters
    unknown = set(spec) - set(accepted)
    if unknown:
        raise ValueError(f"group {group!r}: schedule {name!r} has no argument(s) {sorted(unknown)}")
    # Like EDS-NLP: the peak (or constant) value defaults to the group's lr.
    for key in ("max", "value"):
        if key in accepted and key not in spec and lr is not None:
            spec[key] = lr
    if "total_steps" in accepted and "total_steps" not in spec:
        if total_steps is None:
            raise ValueError(
                f"group {group!r}: schedule {name!r} needs total_steps "
                "(pass total_steps= to param_groups)"
            )
        spec["total_steps"] = total_steps
    try:
        return factory(**spec)
    except ValueError as e:
        raise ValueError(f"group {group!r}: {e}") from None


@attrs.frozen
class Group:
    """One selector: its name, and its transformation (``None`` when frozen)."""

    selector: str
    name: str
    transform: GradientTransformation | None
    optional: bool = False

    @property
    def frozen(self) -> bool:
        return self.transform is None


class GroupedOptimizer:
    """A gradient transformation that applies one transformation per parameter group.

    Its state is ``{group name: that group's state}``. Use :meth:`partition` to split
    parameters into trainable and frozen ones before ``init``.
    """

    def __init__(self, groups: list[Group], default: Group | None) -> None:
        self.groups = tuple(groups)
        self.default = default
        self._patterns = [re.compile(g.selector) for g in groups]
        self._labels: dict[str, Group | None] = {}

    def describe(self) -> dict[str, Any]:
        """Each group's selector, name and transformation (``False`` when frozen), in order:
        what a run's identity compares (see :func:`pureml.optim.describe`).

        >>> opt = param_groups({"^a": False}, default={"lr": 0.5}, optimizer="sgd")
        >>> opt.describe()["default"]["optimizer"]["learning_rate"]
        0.5
        """

        def group(g: Group | None) -> Any:
            if g is None or g.frozen:
                return False
            return {"name": g.name, "optional": g.optional, "optimizer": describe(g.transform)}

        return {
            "groups": {g.selector: group(g) for g in self.groups},
            "default": group(self.default),
        }

    def __repr__(self) -> str:
        return f"GroupedOptimizer({self.describe()!r})"

    def group_of(self, name: str) -> Group | None:
        """The group a parameter name belongs to (``None``: frozen, no group and no default)."""
        if name not in self._labels:
            self._labels[name] = next(
                (g for g, pat in zip(self.groups, self._patterns) if pat.search(name)),
                self.default,
            )
        return self._labels[name]

    def with_keys(self, keys: Mapping[str, str]) -> GroupedOptimizer:
        """The same groups and transforms, with more keys routed like parameter names:
        ``keys[key]`` is the parameter whose group ``key`` joins. A flat bucket of parameters
        (:mod:`pureml.core.flat`) is updated by its parameters' group this way.

        >>> opt = param_groups({"^a": {"lr": 0.1}}, names=["a.w", "b.w"])
        >>> opt.with_keys({"flat/^a/float32/cpu": "a.w"}).group_of("flat/^a/float32/cpu").name
        '^a'
        """
        new = GroupedOptimizer(list(self.groups), self.default)
        new._labels.update({k: self.group_of(name) for k, name in keys.items()})
        return new

    def check_names(self, names: Iterable[str]) -> None:
        """Raise ValueError naming any required selector that selects no parameter."""
        names = list(names)
        used = {id(self.group_of(n)) for n in names}
        for g in self.groups:
            if id(g) not in used and not g.optional:
                raise ValueError(
                    f"parameter group selector {g.selector!r} matches no parameter "
                    f"(or only parameters taken by an earlier selector); "
                    f"{len(names)} names, e.g. {names[:3]}"
                )

    def partition(self, params: Mapping[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
        """Split ``params`` into ``(trainable, frozen)`` dicts, checking every selector is used."""
        self.check_names(params)
        trainable, frozen = {}, {}
        for k, v in params.items():
            g = self.group_of(k)
            (frozen if g is None or g.frozen else trainable)[k] = v
        return trainable, frozen

    def _split(self, tree: Mapping[str, Any]) -> dict[str, dict[str, Any]]:
        out: dict[str, dict[str, Any]] = {}
        for k, v in tree.items():
            g = self.group_of(k)
            if g is None or g.frozen:
                raise ValueError(f"parameter {k!r} is frozen by the optimizer groups")
            out.setdefault(g.name, {})[k] = v
        return out

    def _active(self) -> list[Group]:
        groups = [g for g in self.groups if not g.frozen]
        if self.default is not None and not self.default.frozen:
            groups.append(self.default)
        return groups

    def init(self, params: Params) -> dict[str, Any]:
        split = self._split(params)
        return {g.name: g.transform.init(split[g.name]) for g in self._active() if g.name in split}

    def update(
        self, grads: Params, state: dict[str, Any], params: Params | None = None
    ) -> tuple[Params, dict[str, Any]]:
        split_g = self._split(grads)
        split_p = self._split(params) if params is not None else {}
        updates: dict[str, torch.Tensor] = {}
        new_state = dict(state)
        for g in self._active():
            if g.name not in state:
                continue
            u, new_state[g.name] = g.transform.update(
                split_g.get(g.name, {}), state[g.name], split_p.get(g.name)
            )
            updates.update(u)
        return {k: updates[k] for k in grads}, new_state


def _default_learning_rate(factory: Callable[..., Any]) -> float | None:
    try:
        param = inspect.signature(factory).parameters.get("learning_rate")
    except (TypeError, ValueError):
        return None
    default = None if param is None else param.default
    if isinstance(default, int | float) and not isinstance(default, bool):
        return float(default)
    return None


def _make_group(
    selector: str,
    spec: Mapping[str, Any],
    *,
    default_name: str,
    optimizer: str,
    optimizer_kwargs: Mapping[str, Any],
    total_steps: int | None,
) -> Group:
    name = str(spec.get("name", default_name))
    kwargs = {**optimizer_kwargs, **{k: v for k, v in spec.items() if k not in _GROUP_KEYS}}
    lr = spec.get("lr", kwargs.pop("learning_rate", None))
    factory = get_optimizer(optimizer)
    if lr is None:
        # The group trains at the optimizer's default rate: a schedule peaks there too (not at
        # the schedule's own default, linear's max=1.0).
        lr = _default_learning_rate(factory)
    if lr is not None:
        lr = check_lr(lr, f"lr of parameter group {name!r}")
    schedule = _build_schedule(spec.get("schedule"), lr, total_steps, name)
    if schedule is not None:
        kwargs["learning_rate"] = schedule
    elif lr is not None:
        kwargs["learning_rate"] = lr
    try:
        transform = factory(**kwargs)
    except TypeError as e:
        raise ValueError(f"parameter group {name!r}: bad {optimizer} argument: {e}") from None
    except ValueError as e:
        raise ValueError(f"parameter group {name!r}: {e}") from None
    return Group(selector, name, transform, bool(spec.get("optional", False)))


def param_groups(
    groups: Mapping[str, Mapping[str, Any] | bool],
    default: Mapping[str, Any] | bool | None = None,
    *,
    names: Iterable[str] | None = None,
    optimizer: str = "adamw",
    total_steps: int | None = None,
    **optimizer_kwargs: Any,
) -> GroupedOptimizer:
    """Build a :class:`GroupedOptimizer` from ``{selector regex: spec | False}``.

    ``default`` applies to parameters no selector matches: ``None`` (the default) or a dict makes
    a group named ``"default"`` (from ``optimizer_kwargs`` and the dict), ``False`` freezes them.
    ``names``, if given, are checked right away: a selector that selects nothing is an error.
    A group spec's ``schedule`` is a callable, a registered name or ``{"name": ..., **args}``
    whose ``max``/``value`` default to the group lr (without one, the optimizer's default lr)
    and ``total_steps`` to ``total_steps``.

    >>> opt = param_groups({"^a": {"lr": 0.1}, "^b": False}, names=["a.w", "b.w", "c.w"])
    >>> [getattr(opt.group_of(n), "name", None) for n in ("a.w", "b.w", "c.w")]
    ['^a', '^b', 'default']
    """
    get_optimizer(optimizer)
    built: list[Group] = []
    seen: set[str] = set()
    for selector, spec in groups.items():
        try:
            re.compile(selector)
        except re.error as e:
            raise ValueError(f"parameter group selector {selector!r} is not a regex: {e}") from None
        if spec is False:
            built.append(Group(selector, str(selector), None))
        elif isinstance(spec, Mapping):
            built.append(
                _make_group(
                    selector,
                    spec,
                    default_name=selector,
                    optimizer=optimizer,
                    optimizer_kwargs=optimizer_kwargs,
                    total_steps=total_steps,
                )
            )
        else:
            raise ValueError(
                f"parameter group {selector!r}: expected a dict of options or False, got {spec!r}"
            )
        if built[-1].name in seen:
            raise ValueError(f"two parameter groups are named {built[-1].name!r}")
        seen.add(built[-1].name)
    if default is not None and default is not False and not isinstance(default, Mapping):
        raise ValueError(
            f"parameter groups default: expected a dict of options, False or None, got {default!r}"
        )
    if default is False:
        default_group = None
    else:
        spec = dict(default) if isinstance(default, Mapping) else {}
        default_group = _make_group(
            "",
            {"name": "default", **spec},
            default_name="default",
            optimizer=optimizer,
            optimizer_kwargs=optimizer_kwargs,
            total_steps=total_steps,
        )
        if default_group.name in seen:
            raise ValueError(
                f"two parameter groups are named {default_group.name!r} (the default group "
                "and a selector's): rename the selector's group or pass default=False"
            )
    opt = GroupedOptimizer(built, default_group)
    if names is not None:
        opt.check_names(names)
    return opt
