"""Functional optimizers (optax style) in pure PyTorch.

Example::

    from pureml import optim

    opt = optim.adamw(optim.linear(0.0, 1e-3, 0.0, 0.1, 1000), weight_decay=0.01)
    state = opt.init(params)
    updates, state = opt.update(grads, state, params)
    params = optim.apply_updates(params, updates)
"""

from pureml.optim.adamw import AdamState, adam, adamw, scale_by_adam
from pureml.optim.base import (
    GradientTransformation,
    Params,
    ScaleByLrState,
    add_decayed_weights,
    apply_updates,
    chain,
    clip_by_global_norm,
    clip_coefficient,
    describe,
    global_norm,
    learning_rates,
    scale_by_learning_rate,
    set_learning_rate,
    tree_select,
)
from pureml.optim.defaults import eds_default
from pureml.optim.groups import Group, GroupedOptimizer, get_optimizer, get_schedule, param_groups
from pureml.optim.schedules import Constant, Cosine, Linear, constant, cosine, linear
from pureml.optim.sgd import TraceState, sgd, trace

__all__ = [
    "AdamState",
    "Constant",
    "Cosine",
    "GradientTransformation",
    "Group",
    "GroupedOptimizer",
    "Linear",
    "Params",
    "ScaleByLrState",
    "TraceState",
    "adam",
    "adamw",
    "add_decayed_weights",
    "apply_updates",
    "chain",
    "clip_by_global_norm",
    "clip_coefficient",
    "constant",
    "cosine",
    "describe",
    "eds_default",
    "get_optimizer",
    "get_schedule",
    "global_norm",
    "learning_rates",
    "linear",
    "param_groups",
    "scale_by_adam",
    "scale_by_learning_rate",
    "set_learning_rate",
    "sgd",
    "trace",
    "tree_select",
]
