"""A tiny model with counter-RNG dropout for the step tests (also run as a subprocess script).

As a script: ``python step_model.py OUT.safetensors WARMUP MODE`` trains 20 compiled steps
after warm-up calls (on a throwaway state) with the batch lengths in WARMUP (e.g. "5,9"), and
writes the final params and the per-step dropout-mask fingerprints. MODE is the ``dynamic``
argument of make_step ("true", "false" or "none").
"""

from __future__ import annotations

import sys

import torch

from pureml import optim
from pureml.core.rng import dropout, random_bits
from pureml.core.step import init_state, make_step

DIM, HID, OUT = 8, 32, 3


def init_params(seed: int = 0) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return {
        "l1.w": torch.randn(HID, DIM, generator=g) / DIM**0.5,
        "l1.b": torch.zeros(HID),
        "l2.w": torch.randn(OUT, HID, generator=g) / HID**0.5,
        "l2.b": torch.zeros(OUT),
    }


def loss_fn(params, buffers, batch, key):
    params = {**buffers, **params}  # frozen parameters arrive as buffers, like functional_call
    h = torch.tanh(batch["x"] @ params["l1.w"].T + params["l1.b"])
    if "l1.scale" in params:
        h = h * params["l1.scale"]
    h = dropout(h, 0.2, key)
    out = h @ params["l2.w"].T + params["l2.b"]
    loss = ((out - batch["y"]) ** 2).sum() / batch["n"]
    # an exact, order-independent fingerprint of the dropout mask of this sub-batch
    keep = random_bits(key, h.shape) >= round(0.2 * 2**32)
    weights = torch.arange(keep.numel(), dtype=torch.int64).view(keep.shape) % 1009
    return loss, {"mse": loss, "mask": (keep.to(torch.int64) * weights).sum()}


def make_batch(length: int, seed: int, n_docs: int = 4) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return {
        "x": torch.randn(n_docs, length, DIM, generator=g),
        "y": torch.randn(n_docs, length, OUT, generator=g),
        "n": torch.tensor(float(n_docs * length)),
    }


LENGTHS = [5, 9, 5, 9, 7, 5, 9, 9, 5, 7] * 2


STEP_KW = {"grad_max_norm": 1.0}


def make_optimizer():
    return optim.adamw(optim.linear(0.0, 1e-2, 1e-3, 0.2, 20), weight_decay=0.01)


def train(step, steps: int = 20):
    state = init_state(init_params(), {}, make_optimizer(), seed=7)
    masks = []
    for i in range(steps):
        state, metrics = step(state, [make_batch(LENGTHS[i], 100 + i)])
        masks.append(int(metrics["loss/mask"]))
    return state, masks


def main(out: str, warmup: str, mode: str) -> None:
    from safetensors.torch import save_file

    torch.use_deterministic_algorithms(True)
    dynamic = {"true": True, "false": False, "none": None}[mode]
    opt = make_optimizer()
    step = make_step(loss_fn, opt, backend="inductor", dynamic=dynamic, **STEP_KW)
    junk = init_state(init_params(1), {}, opt, seed=1)
    for length in [int(x) for x in warmup.split(",") if x]:
        junk, _ = step(junk, [make_batch(length, 0)])
    state, masks = train(step)
    from torch._dynamo.utils import counters

    graphs = torch.tensor(counters["stats"]["unique_graphs"])
    save_file({**state.params, "masks": torch.tensor(masks), "graphs": graphs}, out)


if __name__ == "__main__":
    main(*sys.argv[1:])
