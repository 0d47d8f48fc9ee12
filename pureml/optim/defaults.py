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
    transformer: str | None = None,
    weight_decay: float = 0.01,
    names: Iterable[str] | None = None,
) -> GroupedOptimizer:
    r"""AdamW with two groups: parameters whose name matches the regex ``transformer`` (group
    ``"transformer"``: warm-up from 0 to ``transformer_lr`` over ``warmup_rate`` of the steps, then
    linear decay to 0) and everything else (group ``"default"``: ``lr`` flat during the warm-up,
    then linear decay to 0). Models without a transformer simply have no such group.

    EDS-NLP picks the transformer by its type, not its name; so does pureml: when
    ``transformer`` is None, the trainer and recipes pass the pipeline's Hugging Face encoders
    (:func:`pureml.nlp.hf_transformer.encoder_selector`). Called directly, None means no
    transformer group.

    >>> opt = eds_default(100, names=["embedding.model.w", "ner.w"], transformer=r"^embedding\.")
    >>> [opt.group_of(n).name for n in ("embedding.model.w", "ner.w")]
    ['transformer', 'default']
    """
    groups = {}
    if transformer is not None:
        groups[transformer] = {
            "name": "transformer",
            "schedule": linear(0.0, transformer_lr, 0.0, warmup_rate, total_steps),
            "optional": True,
        }
    return param_groups(
        groups,
        default={"schedule": linear(lr, lr, 0.0, warmup_rate, total_steps)},
        names=names,
        optimizer="adamw",
        weight_decay=weight_decay,
    )
