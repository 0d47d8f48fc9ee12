"""pureml: a functional, JAX-style training core for NLP models, in pure PyTorch.

The whole training state is one immutable tree, one step is a compiled pure function, data
flows through composable, resumable streams, and any step can be replayed bit for bit.

>>> import torch, pureml
>>> from pureml import optim
>>> opt = optim.adamw(1e-3)
>>> state = pureml.init_state({"w": torch.zeros(3)}, optimizer=opt, seed=0)
>>> int(state.step)
0

Training a pipeline from Python (README.md's "Training from Python"; see it for recipes)::

    import torch

    from pureml import TrainingData, train
    from pureml.nlp import NerCrf, Pipeline, ScratchEncoder
    from pureml.nlp.synthetic import write_corpus
    from pureml.stream import read_standoff

    corpus = write_corpus("corpus", seed=0, splits={"train": 200, "dev": 50})  # synthetic notes
    torch.manual_seed(0)  # components draw their initial weights from torch's global RNG
    nlp = Pipeline({"embedding": ScratchEncoder(width=64, depth=2), "ner": NerCrf()})
    nlp = train(
        nlp,
        TrainingData(read_standoff(corpus["train"]), batch_size="1000 words"),
        val_data=read_standoff(corpus["dev"]),
        max_steps=30,
        output_dir="artifacts/python-quickstart",
        compile=False,
    )
    doc = nlp("Patient denies chest pain. Started metformin for type 2 diabetes mellitus.")
    print([(doc.text[s.start : s.end], s.label) for s in doc.spans["ents"]])
"""

# first, and torch-free: Ctrl-C while the imports below load torch (seconds) ends a pureml
# command with one line, as later, not a traceback through torch
from pureml.startup import interrupt_ends_command

with interrupt_ends_command():
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
