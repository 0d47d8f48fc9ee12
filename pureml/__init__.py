"""pureml: a functional, JAX-style training core for NLP models, in pure PyTorch.

The whole training state is one immutable tree, one step is a compiled pure function, data
flows through composable, resumable streams, and any step can be replayed bit for bit.

>>> import torch, pureml
>>> from pureml import optim
>>> opt = optim.adamw(1e-3)
>>> state = pureml.init_state({"w": torch.zeros(3)}, optimizer=opt, seed=0)
>>> int(state.step)
0

Training a pipeline from Python (see README.md for the recipe way)::

    from pureml import train, TrainingData
    from pureml.stream import read_standoff
    train(nlp, [TrainingData(read_standoff("train/"), batch_size="2000 words")], max_steps=100)
"""

from pureml import optim, stream
from pureml.core import (
    TrainState,
    fingerprint,
    init_state,
    load_state,
    make_step,
    save_state,
    state_from_flat,
    state_to_flat,
)
from pureml.nlp import Doc, Pipeline, Span, load
from pureml.registry import Registry

# `pureml.train` is the callable module: `train(...)` and `python -m pureml.train` both work.
from . import train
from .train import TrainingData

__version__ = "0.1.0"

__all__ = [
    "Doc",
    "Pipeline",
    "Registry",
    "Span",
    "TrainState",
    "TrainingData",
    "fingerprint",
    "init_state",
    "load",
    "load_state",
    "make_step",
    "optim",
    "save_state",
    "state_from_flat",
    "state_to_flat",
    "stream",
    "train",
]
