"""Gradient transformations, optax style: pure ``init``/``update`` pairs over dicts of tensors.

Params, grads and updates are ``dict[str, Tensor]`` keyed by parameter name. A transformation's
state is a small tree (NamedTuples of tensors and dicts); every scalar that changes during
training (counts, learning rates) is a 0-d tensor in that state, so compiled code never sees it
as a constant and never recompiles for it. Updates use ``torch._foreach_*`` ops (one kernel per
dtype/device group in eager mode; inductor fuses them when compiled) and never write into their
inputs.

Example::

    opt = chain(clip_by_global_norm(1.0), adamw(1e-3))
    state = opt.init(params)
    updates, state = opt.update(grads, state, params)
    params = apply_updates(params, updates)
"""

from __future__ import annotations

import functools
import inspect
import re
from collections.abc import Callable, Mapping
from typing import Any, NamedTuple

import attrs
import torch
from torch import Tensor

from pureml.core.state import tree_map

__all__ = [
    "Params",
    "GradientTransformation",
    "ScaleByLrState",
    "describe",
    "chain",
    "apply_updates",
    "global_norm",
    "clip_coefficient",
    "scale_by_learning_rate",
    "clip_by_global_norm",
    "add_decayed_weights",
    "tree_select",
    "learning_rates",
    "set_learning_rate",
    "check_lr",
    "per_step_scalar",
]

Params = dict[str, Tensor]
Schedule = Callable[[Tensor], Tensor]


class GradientTransformation(NamedTuple):
    """``init(params) -> state`` and ``update(grads, state, params) -> (updates, state)``.

    ``config`` says what built it, ``{"factory": name, **arguments}`` (pureml's builders fill
    it in): :func:`describe` reads it, since ``init`` and ``update`` are closures whose repr is
    a memory address, and a run resumes only when its optimizer is described the same.
    """

    init: Callable[[Params], Any]
    update: Callable[[Params, Any, Params | None], tuple[Params, Any]]
    config: Mapping[str, Any] | None = None

    def __repr__(self) -> str:
        return f"GradientTransformation({describe(self)!r})"


# what object.__repr__ and function reprs add: it differs from one process to the next
_ADDRESS = re.compile(r" at 0x[0-9a-fA-F]+")


def _qualified_name(fn: Any) -> str:
    fn = inspect.unwrap(fn) if callable(fn) else fn
    qualname = getattr(fn, "__qualname__", None)
    if not isinstance(qualname, str):  # a callable object: its class says what it does
        return f"{type(fn).__module__}.{type(fn).__qualname__}"
    return f"{getattr(fn, '__module__', None) or type(fn).__module__}.{qualname}"


def describe(obj: Any) -> Any:
    """A stable, JSON-able description of an optimizer, a schedule or one of their arguments:
    the same in every process for the same configuration, without memory addresses.

    pureml's optimizers and groups are described by their factory and arguments, schedules by
    their class and fields; a function or other callable without a known configuration (a
    lambda, a user's schedule function) by its ``module.qualname`` only: its body is not
    compared.

    >>> from pureml.optim import adamw, linear
    >>> lr = describe(adamw(linear(0.0, 1e-3, 0.0, 0.1, 100)))["learning_rate"]
    >>> lr["class"], lr["max"]
    ('pureml.optim.schedules.Linear', 0.001)
    >>> describe(scale_by_learning_rate(lambda count: 0.1))["learning_rate"]
    'pureml.optim.base.<lambda>'
    """
    from pureml.optim.groups import GroupedOptimizer

    if obj is None or isinstance(obj, bool | int | float | str):
        return obj
    if isinstance(obj, GradientTransformation):
        if obj.config is None:  # built by hand: its functions are all that is known
            return {"init": _qualified_name(obj.init), "update": _qualified_name(obj.update)}
        return describe(dict(obj.config))
    if isinstance(obj, GroupedOptimizer):
        return obj.describe()
    if isinstance(obj, torch.Tensor):
        return obj.tolist()
    if isinstance(obj, Mapping):
        return {str(k): describe(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [describe(v) for v in obj]
    if attrs.has(type(obj)):
        fields = {f.name: describe(getattr(obj, f.name)) for f in attrs.fields(type(obj))}
        return {"class": _qualified_name(type(obj)), **fields}
    if isinstance(obj, functools.partial):
        return {
            "partial": describe(obj.func),
            "args": describe(list(obj.args)),
            "keywords": describe(dict(obj.keywords)),
        }
    if callable(obj) or type(obj).__repr__ is object.__repr__:
        return _qualified_name(obj)
    return _ADDRESS.sub("", repr(obj))


def chain(*transforms: GradientTransformation) -> GradientTransformation:
    """Apply transformations in order; the state is the tuple of their states.

    >>> opt = chain(add_decayed_weights(0.0), scale_by_learning_rate(0.1))
    >>> u, s = opt.update({"w": torch.ones(2)}, opt.init({"w": torch.ones(2)}), {"w": torch.ones(2)})
    >>> u["w"].tolist()
    [-0.10000000149011612, -0.10000000149011612]
    """

    def init(params: Params) -> tuple:
        return tuple(t.init(params) for t in transforms)

    def update(grads: Params, state: tuple, params: Params | None = None) -> tuple[Params, tuple]:
        new_state = []
        for t, s in zip(transforms, state):
            grads, s = t.update(grads, s, params)
            new_state.append(s)
        return grads, tuple(new_state)

    return GradientTransformation(init, update, {"factory": "chain", "transforms": transforms})


def apply_updates(params: Params, updates: Params) -> Params:
    """``params + updates`` (a new dict; keys of ``params`` missing from ``updates`` are kept)."""
    names = [k for k in params if k in updates]
    new = torch._foreach_add([params[k] for k in names], [updates[k] for k in names])
    out = dict(params)
    out.update(zip(names, new))
    return out


def global_norm(tensors: Mapping[str, Tensor]) -> Tensor:
    """The L2 norm of all tensors together, as ``torch.nn.utils.clip_grad_norm_`` computes it.

    >>> float(global_norm({"a": torch.tensor([3.0]), "b": torch.tensor([4.0])}))
    5.0
    """
    norms = torch._foreach_norm(list(tensors.values()), 2.0)
    return torch.linalg.vector_norm(torch.stack(norms), 2.0)


def clip_coefficient(norm: Tensor, max_norm: float | Tensor) -> Tensor:
    """``min(1, max_norm / (norm + 1e-6))``: torch's clip_grad_norm_ factor (the 1e-6 included)."""
    return torch.clamp(max_norm / (norm + 1e-6), max=1.0)


def clip_by_global_norm(max_norm: float) -> GradientTransformation:
    """Scale all gradients together so their global L2 norm is at most ``max_norm`` (``>= 0``;
    ``0`` zeroes them, as ``torch.nn.utils.clip_grad_norm_`` does)."""
    if not isinstance(max_norm, int | float) or not max_norm >= 0:
        raise ValueError(f"clip_by_global_norm: max_norm must be a number >= 0, got {max_norm!r}")

    def init(params: Params) -> tuple:
        return ()

    def update(grads: Params, state: tuple, params: Params | None = None) -> tuple[Params, tuple]:
        if not grads:
            return grads, state
        coef = clip_coefficient(global_norm(grads), max_norm)
        return dict(zip(grads, torch._foreach_mul(list(grads.values()), coef))), state

    return GradientTransformation(
        init, update, {"factory": "clip_by_global_norm", "max_norm": max_norm}
    )


def per_step_scalar(x: Tensor) -> Tensor:
    """``x`` (0-d) computed once per step under torch.compile, not once per vector of elements.

    Inductor inlines 0-d pointwise producers into the kernels that read them: an update's bias
    corrections (``pow``, ``sqrt`` and divisions in float64) ran once per 16-float vector of the
    parameter loop, and the C++ compiler cannot hoist ``std::pow`` (errno). A reduction is its
    own kernel: the max of two copies of ``x`` is ``x`` bitwise and is computed once. A flat 4M
    parameter AdamW step on one CPU thread: 12.9 -> 9.9 ms.

    >>> float(per_step_scalar(torch.tensor(0.25)))
    0.25
    """
    return torch.stack([x, x]).amax(0)


def check_lr(value: float, what: str = "learning rate") -> float:
    """Reject negative or non-finite learning rates with a message naming ``what``."""
    try:
        value = float(value)
    except (TypeError, ValueError):
        raise ValueError(f"{what} must be a finite number >= 0, got {value!r}") from None
    if not value >= 0.0 or value == float("inf"):
        raise ValueError(f"{what} must be a finite number >= 0, got {value}")
    return value


class ScaleByLrState(NamedTuple):
    """``count``: updates applied so far (the schedule's clock; skipped steps do not count).
    ``lr``: the learning rate of the last update (for a constant rate, the rate itself, which
    can be replaced between steps with :func:`set_learning_rate` without recompiling)."""

    count: Tensor
    lr: Tensor


def scale_by_learning_rate(
    learning_rate: float | Schedule, *, flip_sign: bool = True
) -> GradientTransformation:
    """Multiply updates by ``-lr`` where ``lr`` is a constant (kept as a 0-d tensor in the
    state) or ``schedule(count)``.

    >>> t = scale_by_learning_rate(lambda count: 0.1 * count)
    >>> _, s = t.update({}, t.init({}))
    >>> _, s = t.update({}, s)
    >>> int(s.count), round(float(s.lr), 6)
    (2, 0.1)
    """
    scheduled = callable(learning_rate)
    if not scheduled:
        check_lr(learning_rate)

    def init(params: Params) -> ScaleByLrState:
        device = next(iter(params.values())).device if params else None
        count = torch.zeros((), dtype=torch.int64, device=device)
        lr = learning_rate(count) if scheduled else learning_rate
        return ScaleByLrState(
            count, torch.as_tensor(lr, dtype=torch.float64, device=device).clone()
        )

    def update(
        grads: Params, state: ScaleByLrState, params: Params | None = None
    ) -> tuple[Params, ScaleByLrState]:
        lr = learning_rate(state.count).to(state.lr) if scheduled else state.lr
        step = -lr if flip_sign else lr
        if grads:
            # one rounding of the float64 rate to the math dtype, as torch does with lr
            first = next(iter(grads.values())).dtype
            step = step.to(torch.float64 if first == torch.float64 else torch.float32)
        new = torch._foreach_mul(list(grads.values()), step) if grads else []
        return dict(zip(grads, new)), ScaleByLrState(state.count + 1, lr)

    config = {"factory": "scale_by_learning_rate", "learning_rate": learning_rate}
    return GradientTransformation(init, update, {**config, "flip_sign": flip_sign})


def add_decayed_weights(weight_decay: float) -> GradientTransformation:
    """``update + weight_decay * param`` (decoupled decay when followed by the lr scaling)."""
    if weight_decay < 0:
        raise ValueError(f"weight_decay must be >= 0, got {weight_decay}")

    def init(params: Params) -> tuple:
        return ()

    def update(grads: Params, state: tuple, params: Params | None = None) -> tuple[Params, tuple]:
        if weight_decay == 0.0 or not grads:
            return grads, state
        if params is None:
            raise ValueError("add_decayed_weights needs params")
        p = [params[k] for k in grads]
        return dict(
            zip(grads, torch._foreach_add(list(grads.values()), p, alpha=weight_decay))
        ), state

    config = {"factory": "add_decayed_weights", "weight_decay": weight_decay}
    return GradientTransformation(init, update, config)


def tree_select(pred: Tensor, on_true: Any, on_false: Any) -> Any:
    """Leafwise ``torch.where(pred, on_true, on_false)``: a branchless choice that compiles."""
    return tree_map(lambda a, b: torch.where(pred, a, b), on_true, on_false)


# A path into an optimizer state: dict keys are str, tuple and list indices int.
Path = tuple[str | int, ...]


def _find_lr_states(state: Any, path: Path = ()) -> list[tuple[Path, Any]]:
    found = []
    if isinstance(state, ScaleByLrState):
        return [(path, state)]
    if isinstance(state, Mapping):
        for k, v in state.items():
            found += _find_lr_states(v, (*path, str(k)))
    elif isinstance(state, tuple | list):
        for i, v in enumerate(state):
            found += _find_lr_states(v, (*path, i))
    return found


def _group_name(path: Path) -> str:
    # Grouped optimizers keep their state in a dict keyed by group name: the first dict key on
    # the path (a name may be all digits: only tuple indices are ints).
    names = [p for p in path if isinstance(p, str)]
    return names[0] if names else "default"


def learning_rates(opt_state: Any) -> dict[str, Tensor]:
    """The learning rate of the last update per group (``"default"`` without groups).

    >>> s = scale_by_learning_rate(0.5).init({"w": torch.ones(1)})
    >>> {k: float(v) for k, v in learning_rates(s).items()}
    {'default': 0.5}
    """
    return {_group_name(path): s.lr for path, s in _find_lr_states(opt_state)}


def set_learning_rate(opt_state: Any, lr: float | Tensor, group: str | None = None) -> Any:
    """A copy of ``opt_state`` with the (constant) learning rate of ``group`` (or all) replaced.

    The value stays a 0-d tensor, so the compiled step does not recompile. Scheduled rates are
    recomputed from the count at each update and would override the value set here.
    """

    def visit(state: Any, path: Path) -> Any:
        if isinstance(state, ScaleByLrState):
            if group is None or _group_name(path) == group:
                value = torch.as_tensor(lr, dtype=state.lr.dtype, device=state.lr.device)
                return state._replace(lr=value.clone())
            return state
        if isinstance(state, Mapping):
            return {k: visit(v, (*path, str(k))) for k, v in state.items()}
        if isinstance(state, tuple) and hasattr(state, "_fields"):
            return type(state)(*(visit(v, (*path, i)) for i, v in enumerate(state)))
        if isinstance(state, tuple | list):
            return type(state)(visit(v, (*path, i)) for i, v in enumerate(state))
        return state

    if not isinstance(lr, Tensor):
        check_lr(lr)
    return visit(opt_state, ())
