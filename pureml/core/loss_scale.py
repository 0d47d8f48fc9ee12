"""Dynamic loss scaling for float16 training: ``torch.amp.GradScaler``'s rule, branchless.

float16 keeps about 5 significant decimal digits and nothing below 6e-8: small gradients of
activations computed under float16 autocast round to zero. The step multiplies the backward's
seed by ``scale`` (so every gradient in the backward is ``scale`` times larger) and divides the
summed gradients by it before the norm, clipping and update. A non-finite gradient (the scale
was too large: something overflowed) skips the update, as any non-finite gradient does, and
halves the scale; after ``growth_interval`` finite steps in a row the scale doubles. bfloat16
has float32's exponent range and needs none of this.

The statistics live in the state (``TrainState.loss_scale``), so a resumed run continues with
the scale it had, and they are plain 0-d tensors updated with ``torch.where`` inside the compiled
update.

Example::

    stats = init_loss_scale(2.0**16)
    stats = update_loss_scale(stats, finite=torch.tensor(False))   # overflow: halve
    float(stats["scale"])   # 32768.0
"""

from __future__ import annotations

import torch
from torch import Tensor

__all__ = ["init_loss_scale", "update_loss_scale"]


def init_loss_scale(
    scale: float = 2.0**16, device: torch.device | str | None = None
) -> dict[str, Tensor]:
    """The statistics at step 0: ``scale`` (float32) and ``good_steps`` (finite steps in a row
    since the last change, int64)."""
    if not (scale > 0 and scale != float("inf")):
        raise ValueError(f"loss_scale must be a positive finite number, got {scale}")
    return {
        "scale": torch.tensor(float(scale), dtype=torch.float32, device=device),
        "good_steps": torch.zeros((), dtype=torch.int64, device=device),
    }


def update_loss_scale(
    stats: dict[str, Tensor],
    finite: Tensor,
    *,
    growth_interval: int = 2000,
    growth_factor: float = 2.0,
    backoff_factor: float = 0.5,
) -> dict[str, Tensor]:
    """The statistics after a step whose gradients were ``finite`` (a bool 0-d tensor):
    ``scale * backoff_factor`` after an overflow, ``scale * growth_factor`` after
    ``growth_interval`` finite steps in a row, else unchanged (GradScaler's defaults)."""
    scale, good = stats["scale"], stats["good_steps"]
    good = torch.where(finite, good + 1, torch.zeros_like(good))
    grow = good >= growth_interval
    grown = scale * growth_factor
    grown = torch.where(torch.isfinite(grown), grown, scale)  # float32 overflow: keep the scale
    scale = torch.where(finite, torch.where(grow, grown, scale), scale * backoff_factor)
    return {"scale": scale, "good_steps": torch.where(grow, torch.zeros_like(good), good)}
