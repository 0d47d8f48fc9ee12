"""``pureml.train``: the training entry point, both a function and a runnable module.

From Python (the module itself is callable, so ``pureml.train`` works as the function)::

    from pureml import train
    train(nlp, TrainingData(stream, batch_size="2000 words"), max_steps=100)

From the shell (and under torchrun)::

    python -m pureml.train recipes/quickstart.toml --set train.max_steps=100
    torchrun --nproc-per-node 2 -m pureml.train recipes/quickstart.toml
"""

from __future__ import annotations

import inspect
import sys
import textwrap
import types
import warnings
from typing import Any

from pureml.training.trainer import (
    RunDirError,
    Trainer,
    TrainingData,
    TrainingInterrupted,
    train,
    train_from_recipe,
)

__all__ = [
    "RunDirError",
    "Trainer",
    "TrainingData",
    "TrainingInterrupted",
    "train",
    "train_from_recipe",
]


class _CallableModule(types.ModuleType):
    """``pureml.train`` is this module; calling it calls :func:`train` (no name clash)."""

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        return train(*args, **kwargs)


sys.modules[__name__].__class__ = _CallableModule

# inspect.signature(pureml.train) and help(pureml.train) describe the function, not the
# module's (*args, **kwargs) __call__: signature() reads a callable's __signature__ first, and
# help() shows the module's docstring, which then leads with train()'s.
__signature__ = inspect.signature(train, eval_str=True)
_plain = __signature__.replace(
    parameters=[p.replace(annotation=p.empty) for p in __signature__.parameters.values()],
    return_annotation=__signature__.empty,
)
__doc__ = (
    f"{__doc__.rstrip()}\n\ntrain{_plain}\n\n{textwrap.indent(inspect.getdoc(train), '    ')}\n"
)
del _plain

# `python -m pureml.train`: pureml/__init__ imports this module on purpose (the callable
# `pureml.train`), so runpy warns that it is already imported; on the CLI that noise would be an
# extra stderr line before the one-line error.
warnings.filterwarnings(
    "ignore", message=r"'pureml\.train' found in sys\.modules", category=RuntimeWarning
)

if __name__ == "__main__":
    from pureml.cli import train_main

    train_main(prog_name="python -m pureml.train")
