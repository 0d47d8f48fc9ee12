"""SGD with optional momentum (and Nesterov), matching ``torch.optim.SGD``.

Example::

    opt = sgd(0.1, momentum=0.9)
"""

from __future__ import annotations

from typing import NamedTuple

import torch
from torch import Tensor

from pureml.optim.base import (
    GradientTransformation,
    Params,
    Schedule,
    add_decayed_weights,
    chain,
    scale_by_learning_rate,
)
from pureml.registry import optimizers

__all__ = ["TraceState", "trace", "sgd"]


class TraceState(NamedTuple):
    trace: dict[str, Tensor]


def trace(momentum: float, nesterov: bool = False) -> GradientTransformation:
    """Momentum buffer ``b <- momentum * b + g`` (zero-initialised, so the first buffer is ``g``
    exactly as torch's); the update is ``b`` or, with Nesterov, ``g + momentum * b``."""
    if not 0.0 <= momentum < 1.0:
        raise ValueError(f"sgd momentum must be in [0, 1), got {momentum}")

    def init(params: Params) -> TraceState:
        return TraceState({k: torch.zeros_like(p) for k, p in params.items()})

    def update(
        grads: Params, state: TraceState, params: Params | None = None
    ) -> tuple[Params, TraceState]:
        if not grads:
            return grads, state
        names = list(grads)
        g = list(grads.values())
        buf = torch._foreach_mul([state.trace[k] for k in names], momentum)
        torch._foreach_add_(buf, g)
        out = torch._foreach_add(g, buf, alpha=momentum) if nesterov else buf
        return dict(zip(names, out)), TraceState(dict(zip(names, buf)))

    config = {"factory": "trace", "momentum": momentum, "nesterov": nesterov}
    return GradientTransformation(init, update, config)


@optimizers.register("sgd")
def sgd(
    learning_rate: float | Schedule = 1e-2,
    momentum: float = 0.0,
    weight_decay: float = 0.0,
    nesterov: bool = False,
) -> GradientTransformation:
    """Stochastic gradient descent; weight decay is L2 added to the gradient (torch's).

    >>> opt = sgd(0.5)
    >>> p = {"w": torch.ones(1)}
    >>> opt.update({"w": torch.ones(1)}, opt.init(p), p)[0]["w"].tolist()
    [-0.5]
    """
    parts = [add_decayed_weights(weight_decay)]
    if momentum:
        parts.append(trace(momentum, nesterov))
    parts.append(scale_by_learning_rate(learning_rate))
    # described as called, not as the chain it is made of
    config = {
        "factory": "sgd",
        "learning_rate": learning_rate,
        "momentum": momentum,
        "weight_decay": weight_decay,
        "nesterov": nesterov,
    }
    return chain(*parts)._replace(config=config)
