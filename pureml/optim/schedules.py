"""Learning-rate schedules: pure functions of the optimizer's update count (a 0-d int64 tensor).

A schedule returns a 0-d float64 tensor computed with tensor ops only, so inside a compiled step
the value changes every step without recompiling. The count is the number of updates applied
before this one (0 for the first update); skipped steps do not advance it.

Example::

    sched = linear(start=0.0, max=5e-5, end=0.0, warmup_rate=0.1, total_steps=1000)
    sched(torch.tensor(50))   # 2.5e-5, half-way through the warm-up
"""

from __future__ import annotations

import math

import attrs
import torch
from torch import Tensor

from pureml.optim.base import check_lr
from pureml.registry import schedules

__all__ = ["constant", "linear", "cosine", "Constant", "Linear", "Cosine"]


def _f64(count: Tensor) -> Tensor:
    return count.to(torch.float64)


def _check_values(kind: str, **values: float) -> None:
    for name, v in values.items():
        check_lr(v, f"{kind} schedule {name}")


@attrs.frozen
class Constant:
    """The same value at every step."""

    value: float

    def __attrs_post_init__(self) -> None:
        _check_values("constant", value=self.value)

    def __call__(self, count: Tensor) -> Tensor:
        return torch.full((), self.value, dtype=torch.float64, device=count.device)


@attrs.frozen
class Linear:
    """Linear warm-up from ``start`` to ``max`` over ``w = total_steps * warmup_rate`` steps, then
    linear decay to ``end`` at ``total_steps`` (and ``end`` after it), exactly as EDS-NLP:

    ``v = start + (max - start) * step / w`` while ``step < w``, else
    ``v = max + (end - max) * min(1, (step - w) / (total_steps - w))``.
    """

    start: float
    max: float
    end: float
    warmup_rate: float
    total_steps: int

    def __attrs_post_init__(self) -> None:
        _check_values("linear", start=self.start, max=self.max, end=self.end)
        if not 0.0 <= self.warmup_rate <= 1.0:
            raise ValueError(
                f"linear schedule warmup_rate must be in [0, 1], got {self.warmup_rate}"
            )
        if self.total_steps <= 0:
            raise ValueError(f"linear schedule total_steps must be > 0, got {self.total_steps}")

    def __call__(self, count: Tensor) -> Tensor:
        step = _f64(count)
        w = self.total_steps * self.warmup_rate
        rest = self.total_steps - w
        frac = torch.clamp((step - w) / rest, max=1.0) if rest > 0 else torch.ones_like(step)
        decay = self.max + (self.end - self.max) * frac
        if w <= 0:
            return decay
        warm = self.start + (self.max - self.start) * step / w
        return torch.where(step < w, warm, decay)


@attrs.frozen
class Cosine:
    """Optional linear warm-up from ``start`` to ``max`` (as :class:`Linear`), then a half cosine
    from ``max`` down to ``end`` at ``total_steps``: ``end + (max - end) * (1 + cos(pi * f)) / 2``
    with ``f = min(1, (step - w) / (total_steps - w))``."""

    max: float
    total_steps: int
    end: float = 0.0
    warmup_rate: float = 0.0
    start: float = 0.0

    def __attrs_post_init__(self) -> None:
        _check_values("cosine", start=self.start, max=self.max, end=self.end)
        if not 0.0 <= self.warmup_rate <= 1.0:
            raise ValueError(
                f"cosine schedule warmup_rate must be in [0, 1], got {self.warmup_rate}"
            )
        if self.total_steps <= 0:
            raise ValueError(f"cosine schedule total_steps must be > 0, got {self.total_steps}")

    def __call__(self, count: Tensor) -> Tensor:
        step = _f64(count)
        w = self.total_steps * self.warmup_rate
        rest = self.total_steps - w
        frac = torch.clamp((step - w) / rest, max=1.0) if rest > 0 else torch.ones_like(step)
        decay = self.end + (self.max - self.end) * 0.5 * (1.0 + torch.cos(math.pi * frac))
        if w <= 0:
            return decay
        warm = self.start + (self.max - self.start) * step / w
        return torch.where(step < w, warm, decay)


@schedules.register("constant")
def constant(value: float) -> Constant:
    """A constant schedule. ``constant(1e-3)(torch.tensor(7))`` is ``1e-3``."""
    return Constant(value)


@schedules.register("linear")
def linear(
    start: float = 0.0,
    max: float = 1.0,  # noqa: A002  (the name of the SEED formula's parameter)
    end: float = 0.0,
    warmup_rate: float = 0.0,
    total_steps: int = 1,
) -> Linear:
    """Linear warm-up then linear decay (see :class:`Linear`).

    >>> s = linear(start=0.0, max=1.0, end=0.0, warmup_rate=0.1, total_steps=100)
    >>> [round(float(s(torch.tensor(i))), 4) for i in (0, 5, 10, 55, 100, 200)]
    [0.0, 0.5, 1.0, 0.5, 0.0, 0.0]
    """
    return Linear(start, max, end, warmup_rate, total_steps)


@schedules.register("cosine")
def cosine(
    max: float,  # noqa: A002
    total_steps: int,
    end: float = 0.0,
    warmup_rate: float = 0.0,
    start: float = 0.0,
) -> Cosine:
    """Cosine decay with optional linear warm-up (see :class:`Cosine`).

    >>> s = cosine(max=1.0, total_steps=10)
    >>> [round(float(s(torch.tensor(i))), 3) for i in (0, 5, 10)]
    [1.0, 0.5, 0.0]
    """
    return Cosine(max, total_steps, end, warmup_rate, start)
