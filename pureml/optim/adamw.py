"""Adam and AdamW as gradient transformations, numerically matching ``torch.optim.Adam(W)``.

Example::

    opt = adamw(1e-3, weight_decay=0.01)
    state = opt.init(params)
    updates, state = opt.update(grads, state, params)
    params = apply_updates(params, updates)
"""

from __future__ import annotations

from typing import NamedTuple

import torch
from torch import Tensor

from pureml.optim.base import (
    GradientTransformation,
    Params,
    ScaleByLrState,
    Schedule,
    per_step_scalar,
    scale_by_learning_rate,
)
from pureml.registry import optimizers

__all__ = ["AdamState", "scale_by_adam", "adam", "adamw"]


class AdamState(NamedTuple):
    count: Tensor
    mu: dict[str, Tensor]
    nu: dict[str, Tensor]


def scale_by_adam(b1: float = 0.9, b2: float = 0.999, eps: float = 1e-8) -> GradientTransformation:
    """The bias-corrected Adam direction ``m_hat / (sqrt(v_hat) + eps)`` (torch's formula:
    ``m / (1 - b1^t) / (sqrt(v) / sqrt(1 - b2^t) + eps)``)."""
    for name, b in (("b1", b1), ("b2", b2)):
        if not 0.0 <= b < 1.0:
            raise ValueError(f"adam {name} must be in [0, 1), got {b}")
    if eps < 0:
        raise ValueError(f"adam eps must be >= 0, got {eps}")

    def init(params: Params) -> AdamState:
        device = next(iter(params.values())).device if params else None
        zeros = {k: torch.zeros_like(p) for k, p in params.items()}
        return AdamState(
            torch.zeros((), dtype=torch.int64, device=device),
            zeros,
            {k: torch.zeros_like(p) for k, p in params.items()},
        )

    def update(
        grads: Params, state: AdamState, params: Params | None = None
    ) -> tuple[Params, AdamState]:
        if not grads:
            return {}, state._replace(count=state.count + 1)
        names = list(grads)
        g = list(grads.values())
        count = state.count + 1
        t = count.to(torch.float64)
        mu = torch._foreach_lerp([state.mu[k] for k in names], g, 1.0 - b1)
        nu = torch._foreach_mul([state.nu[k] for k in names], b2)
        torch._foreach_addcmul_(nu, g, g, 1.0 - b2)  # nu is a fresh list: inputs stay untouched
        bc1 = per_step_scalar(1.0 - b1**t)
        bc2_sqrt = per_step_scalar(torch.sqrt(1.0 - b2**t))
        denom = torch._foreach_sqrt(nu)
        torch._foreach_div_(denom, bc2_sqrt)
        torch._foreach_add_(denom, eps)
        direction = torch._foreach_div(mu, denom)
        torch._foreach_div_(direction, bc1)
        return dict(zip(names, direction)), AdamState(
            count, dict(zip(names, mu)), dict(zip(names, nu))
        )

    config = {"factory": "scale_by_adam", "b1": b1, "b2": b2, "eps": eps}
    return GradientTransformation(init, update, config)


def _scalar_dtype(dtype: torch.dtype) -> torch.dtype:
    # torch's "opmath" type: reduced-precision floats compute in float32
    return torch.float64 if dtype == torch.float64 else torch.float32


def _adam(
    learning_rate: float | Schedule,
    b1: float,
    b2: float,
    eps: float,
    weight_decay: float,
    decoupled: bool,
) -> GradientTransformation:
    name = "adamw" if decoupled else "adam"
    config = {"factory": name, "learning_rate": learning_rate, "b1": b1, "b2": b2, "eps": eps}
    # One transformation instead of a chain: torch folds lr and the first bias correction into a
    # single scalar (``addcdiv(m, denom, value=-lr / bc1)``); doing the same keeps the rounding
    # close to torch's (1e-6 rel in float32 after 100 steps) and saves two passes over memory.
    adam_t = scale_by_adam(b1, b2, eps)
    lr_t = scale_by_learning_rate(learning_rate)
    if weight_decay < 0:
        raise ValueError(f"weight_decay must be >= 0, got {weight_decay}")
    scheduled = callable(learning_rate)

    def init(params: Params) -> tuple[AdamState, ScaleByLrState]:
        return adam_t.init(params), lr_t.init(params)

    def update(
        grads: Params, state: tuple[AdamState, ScaleByLrState], params: Params | None = None
    ) -> tuple[Params, tuple[AdamState, ScaleByLrState]]:
        adam_s, lr_s = state
        lr = learning_rate(lr_s.count).to(lr_s.lr) if scheduled else lr_s.lr
        new_lr_s = ScaleByLrState(lr_s.count + 1, lr)
        if not grads:
            return {}, (adam_s._replace(count=adam_s.count + 1), new_lr_s)
        names = list(grads)
        g = list(grads.values())
        p = [params[k] for k in names] if params is not None and weight_decay else None
        if weight_decay and p is None:
            raise ValueError("adam with weight decay needs params")
        if weight_decay and not decoupled:
            g = torch._foreach_add(g, p, alpha=weight_decay)
        count = adam_s.count + 1
        t = count.to(torch.float64)
        # Scalars are computed in float64 (as torch does in Python) and rounded once to the
        # math dtype, like torch's scalar arguments: float64 scalars would drag whole kernels
        # into float64 arithmetic once compiled.
        sdt = _scalar_dtype(g[0].dtype)
        step_size = per_step_scalar((-lr / (1.0 - b1**t)).to(sdt))
        bc2_sqrt = per_step_scalar(torch.sqrt(1.0 - b2**t).to(sdt))
        mu = torch._foreach_lerp([adam_s.mu[k] for k in names], g, 1.0 - b1)
        nu = torch._foreach_mul([adam_s.nu[k] for k in names], b2)
        torch._foreach_addcmul_(nu, g, g, 1.0 - b2)  # nu is a fresh list: inputs stay untouched
        denom = torch._foreach_sqrt(nu)
        torch._foreach_div_(denom, bc2_sqrt)
        torch._foreach_add_(denom, eps)
        # torch's addcdiv computes ``value * m / denom`` in that order: keep it for the rounding.
        upd = torch._foreach_mul(mu, step_size)
        torch._foreach_div_(upd, denom)
        if weight_decay and decoupled:
            decay = per_step_scalar((-lr * weight_decay).to(sdt))
            torch._foreach_add_(upd, torch._foreach_mul(p, decay))
        new_adam = AdamState(count, dict(zip(names, mu)), dict(zip(names, nu)))
        return dict(zip(names, upd)), (new_adam, new_lr_s)

    return GradientTransformation(init, update, {**config, "weight_decay": weight_decay})


@optimizers.register("adam")
def adam(
    learning_rate: float | Schedule = 1e-3,
    b1: float = 0.9,
    b2: float = 0.999,
    eps: float = 1e-8,
    weight_decay: float = 0.0,
) -> GradientTransformation:
    """Adam with L2 regularisation added to the gradient, like ``torch.optim.Adam``.

    The state is ``(AdamState(count, mu, nu), ScaleByLrState(count, lr))``.
    """
    return _adam(learning_rate, b1, b2, eps, weight_decay, decoupled=False)


@optimizers.register("adamw")
def adamw(
    learning_rate: float | Schedule = 1e-3,
    b1: float = 0.9,
    b2: float = 0.999,
    eps: float = 1e-8,
    weight_decay: float = 0.01,
) -> GradientTransformation:
    """AdamW (decoupled weight decay), like ``torch.optim.AdamW`` with the same defaults:
    ``p <- p - lr * (adam_direction + weight_decay * p)``.

    >>> opt = adamw(0.1)
    >>> p = {"w": torch.ones(2)}
    >>> u, s = opt.update({"w": torch.ones(2)}, opt.init(p), p)
    >>> [round(x, 4) for x in u["w"].tolist()]
    [-0.101, -0.101]
    """
    return _adam(learning_rate, b1, b2, eps, weight_decay, decoupled=True)
