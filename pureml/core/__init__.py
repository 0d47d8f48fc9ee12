"""The functional core: RNG, state tree, spike guard and the compiled pure step.

Knows nothing of NLP: it trains any ``loss_fn(params, buffers, batch, key) -> (loss, aux)``.
"""

from pureml.core.flat import FlatLayout
from pureml.core.guard import GuardOutcome, guard_update, init_guard
from pureml.core.rng import dropout, fold_in, make_key, random_bits, stable_hash, uniform
from pureml.core.state import (
    CheckpointError,
    TrainState,
    fingerprint,
    load_state,
    save_state,
    state_from_flat,
    state_to_flat,
    tree_flatten_with_paths,
    tree_leaves,
    tree_map,
)

_STEP_NAMES = ("Step", "init_state", "make_step", "module_loss_fn")


def __getattr__(name: str):
    # The step needs pureml.optim, which needs pureml.core.state: importing the step lazily
    # keeps `import pureml.optim` free of an import cycle.
    if name in _STEP_NAMES:
        from pureml.core import step

        return getattr(step, name)
    raise AttributeError(f"module 'pureml.core' has no attribute {name!r}")


__all__ = [
    "CheckpointError",
    "FlatLayout",
    "GuardOutcome",
    "Step",
    "TrainState",
    "dropout",
    "fingerprint",
    "fold_in",
    "guard_update",
    "init_guard",
    "init_state",
    "load_state",
    "make_key",
    "make_step",
    "module_loss_fn",
    "random_bits",
    "save_state",
    "stable_hash",
    "state_from_flat",
    "state_to_flat",
    "tree_flatten_with_paths",
    "tree_leaves",
    "tree_map",
    "uniform",
]
