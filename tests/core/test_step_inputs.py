"""What ``init_state`` and a step say when given the wrong shape of input."""

from __future__ import annotations

import pytest
import torch

from pureml import optim
from pureml.core.step import init_state, make_step


def _loss_fn(params, buffers, batch, key):
    return ((params["w"] * batch["x"]).sum() - 1.0) ** 2, {}


@pytest.mark.parametrize(
    ("params", "message"),
    [
        # these failed with "'dict' object has no attribute 'detach'" and the like
        ({"encoder": {"w": torch.zeros(2)}}, r"parameter 'encoder' is dict; .*'a\.w'"),
        ({"w": 1.0}, r"parameter 'w' is float"),
        ([torch.zeros(2)], r"params must be a dict \{name: tensor\}, got list"),
        # failed at the first step: "only Tensors of floating point dtype can require gradients"
        ({"w": torch.zeros(2, dtype=torch.int64)}, r"parameter 'w' is a torch.int64 tensor"),
    ],
)
def test_init_state_names_the_parameter_it_cannot_train(params, message):
    with pytest.raises(TypeError, match=message):
        init_state(params, optimizer=optim.sgd(0.1))


def test_a_step_given_one_batch_instead_of_a_list_says_so():
    # a dict batch was iterated: its keys became the sub-batches
    opt = optim.sgd(0.1)
    state = init_state({"w": torch.zeros(3)}, optimizer=opt)
    step = make_step(_loss_fn, opt, compile=False)
    with pytest.raises(TypeError, match=r"step\(state, \[batch\]\)"):
        step(state, {"x": torch.ones(3)})
    state, metrics = step(state, [{"x": torch.ones(3)}])
    assert float(metrics["loss"]) == 1.0
