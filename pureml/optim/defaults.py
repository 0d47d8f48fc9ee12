"""EDS-NLP's default optimizer, rebuilt with functional parts.

Example::

    opt = eds_default(total_steps=1000)
    trainable, frozen = opt.partition(params)
"""

from __future__ import annotations

from collections.abc import Iterable

from pureml.optim.groups import GroupedOptimizer, param_groups
from pureml.optim.schedules import linear
from pureml.registry import optimizers

__all__ = ["eds_default"]


@optimizers.register("eds_default")
def eds_default(
    total_steps: int,
    *,
    lr: float = 3e-4,
    transformer_lr: float = 5e-5,
    warmup_rate: float = 0.1,
    transformer: str = r"transformer",
    weight_decay: float = 0.01,
    names: Iterable[str] | None = None,
) -> GroupedOptimizer:
    """AdamW with two groups: parameters whose name matches ``transformer`` (group
    ``"transformer"``: warm-up from 0 to ``transformer_lr`` over ``warmup_rate`` of the steps, then
    linear decay to 0) and everything else (group ``"default"``: ``lr`` flat during the warm-up,
    then linear decay to 0). Models without a transformer simply have no such group.

    >>> opt = eds_default(100, names=["embedding.transformer.w", "ner.w"])
    >>> [opt.group_of(n).name for n in ("embedding.transformer.w", "ner.w")]
    ['transformer', 'default']
    """
    return param_groups(
        {
            transformer: {
                "name": "transformer",
                "schedule": linear(0.0, transformer_lr, 0.0, warmup_rate, total_steps),
                "optional": True,
            }
        },
        default={"schedule": linear(lr, lr, 0.0, warmup_rate, total_steps)},
        names=names,
        optimizer="adamw",
        weight_decay=weight_decay,
    )
