"""The gradient spike guard: EMA statistics of the gradient norm and what to do on a spike.

Statistics follow pandas ``Series.ewm(span=window, adjust=True)`` (alpha = 2 / (window + 1)):
``mean`` is the weighted mean with weights ``(1 - alpha)^age``, ``var()`` is the bias-corrected
weighted variance (``biased * S1^2 / (S1^2 - S2)`` with ``S1``, ``S2`` the sums of weights and
squared weights), updated online as EDS-NLP does. A step is a spike when at least ``window``
norms have been fed and ``norm - mean > max_dev * std``; spikes are not fed into the statistics.
Non-finite norms are never fed, never spikes, and always skip the update.

Everything is branchless tensor code (``torch.where``), so the guard lives inside the compiled
step. The statistics are float64 0-d tensors.

Example::

    stats = init_guard()
    stats, out = guard_update(stats, torch.tensor(1.3), window=100, max_dev=7.0, policy="skip")
    out.skip, out.spike, out.scale
"""

from __future__ import annotations

from typing import NamedTuple

import torch
from torch import Tensor

__all__ = ["POLICIES", "GuardOutcome", "init_guard", "guard_update", "ewm_std"]

POLICIES = (None, "clip_mean", "clip_threshold", "skip")


class GuardOutcome(NamedTuple):
    """``spike``: the norm was a spike; ``skip``: do not apply the update (spike under
    ``"skip"``, or a non-finite norm); ``scale``: factor for the (already clipped) gradients."""

    spike: Tensor
    skip: Tensor
    scale: Tensor


def init_guard(device: torch.device | str | None = None) -> dict[str, Tensor]:
    """Empty statistics: no norm fed yet, no spike, no skip."""

    def f(v: float) -> Tensor:
        return torch.tensor(v, dtype=torch.float64, device=device)

    def i() -> Tensor:
        return torch.zeros((), dtype=torch.int64, device=device)

    return {
        "mean": f(0.0),
        "var": f(0.0),  # biased weighted variance (pandas' running ``cov``)
        "sum_w": f(0.0),
        "sum_w2": f(0.0),
        "count": i(),  # norms fed into the statistics
        "spikes": i(),
        "skips": i(),
    }


def ewm_std(stats: dict[str, Tensor]) -> Tensor:
    """The bias-corrected standard deviation (pandas ``ewm(...).std()``); NaN before 2 norms."""
    s1, s2 = stats["sum_w"], stats["sum_w2"]
    denom = s1 * s1 - s2
    var = torch.where(denom > 0, stats["var"] * s1 * s1 / denom, torch.full_like(s1, float("nan")))
    return torch.sqrt(var)


def guard_update(
    stats: dict[str, Tensor],
    norm: Tensor,
    *,
    window: int,
    max_dev: float,
    policy: str | None,
    clipped_norm: Tensor | None = None,
) -> tuple[dict[str, Tensor], GuardOutcome]:
    """Feed ``norm`` (the gradient norm before clipping) and decide about this step.

    ``clipped_norm`` is the norm after the ``grad_max_norm`` clipping; the ``clip_mean`` and
    ``clip_threshold`` policies rescale from it to the mean or to ``mean + max_dev * std``
    (as ``clip_grad_norm_`` would: ``min(1, target / (clipped_norm + 1e-6))``).
    """
    if policy not in POLICIES:
        raise ValueError(f"unknown grad_dev_policy {policy!r} (known: {POLICIES})")
    if window < 1:
        raise ValueError(f"grad_ewm_window must be >= 1, got {window}")
    x = norm.detach().to(torch.float64)
    finite = torch.isfinite(x)
    mean, std = stats["mean"], ewm_std(stats)
    threshold = mean + max_dev * std
    spike = finite & (stats["count"] >= window) & (x > threshold)
    feed = finite & ~spike

    alpha = 2.0 / (window + 1.0)
    decay = 1.0 - alpha
    old_w = stats["sum_w"] * decay  # with adjust=True the old weight is the decayed weight sum
    xs = torch.where(finite, x, torch.zeros_like(x))  # keep NaN out of the unused branch
    new_mean = (old_w * mean + xs) / (old_w + 1.0)
    d1, d2 = mean - new_mean, xs - new_mean
    new_var = (old_w * (stats["var"] + d1 * d1) + d2 * d2) / (old_w + 1.0)
    fed = {
        "mean": new_mean,
        "var": new_var,
        "sum_w": old_w + 1.0,
        "sum_w2": stats["sum_w2"] * decay * decay + 1.0,
        "count": stats["count"] + 1,
    }
    new = {k: torch.where(feed, v, stats[k]) for k, v in fed.items()}

    skip = ~finite
    one = torch.ones((), dtype=torch.float64, device=x.device)
    scale = one
    if policy == "skip":
        skip = skip | spike
    elif policy in ("clip_mean", "clip_threshold"):
        target = mean if policy == "clip_mean" else threshold
        base = x if clipped_norm is None else clipped_norm.detach().to(torch.float64)
        scale = torch.where(spike, torch.clamp(target / (base + 1e-6), max=1.0), one)
    new["spikes"] = stats["spikes"] + spike.to(torch.int64)
    new["skips"] = stats["skips"] + skip.to(torch.int64)
    return new, GuardOutcome(spike, skip, scale)
