"""Schedules against a hand computation of the formulas in SEED.md."""

import math

import pytest
import torch

from pureml import optim


def linear_by_hand(step, start, peak, end, warmup_rate, total):
    w = total * warmup_rate
    if step < w:
        return start + (peak - start) * step / w
    return peak + (end - peak) * min(1.0, (step - w) / (total - w))


@pytest.mark.parametrize(
    "args",
    [
        (0.0, 5e-5, 0.0, 0.1, 1000),
        (3e-4, 3e-4, 0.0, 0.1, 1000),
        (1e-4, 1e-3, 1e-5, 0.3, 77),
        (2e-3, 2e-3, 0.0, 0.0, 50),
    ],
)
def test_linear_equals_seed_formula_exactly(args):
    sched = optim.linear(*args)
    for step in [0, 1, 2, 7, 9, 10, 11, 23, 76, 77, 99, 100, 101, 500, 999, 1000, 1500]:
        got = sched(torch.tensor(step)).item()
        assert got == linear_by_hand(step, *args), (step, got)


def test_linear_shape():
    s = optim.linear(0.0, 1.0, 0.0, 0.1, 100)
    values = [s(torch.tensor(i)).item() for i in range(0, 121)]
    assert values[0] == 0.0 and values[10] == 1.0 and values[100] == 0.0 and values[120] == 0.0
    assert values[5] == 0.5 and values[55] == 0.5


def test_cosine_and_constant():
    s = optim.cosine(max=2.0, total_steps=100, end=0.2, warmup_rate=0.1)
    for step in (0, 5, 10, 40, 100, 130):
        if step < 10:
            want = 2.0 * step / 10
        else:
            f = min(1.0, (step - 10) / 90)
            want = 0.2 + (2.0 - 0.2) * 0.5 * (1 + math.cos(math.pi * f))
        assert s(torch.tensor(step)).item() == pytest.approx(want, rel=1e-12, abs=1e-15)
    assert optim.constant(3e-4)(torch.tensor(12)).item() == 3e-4


def test_schedule_values_are_tensors_not_constants():
    # the value changes with the count tensor inside one compiled graph: no recompilation
    from torch._dynamo.testing import CompileCounter

    cnt = CompileCounter()
    s = optim.linear(0.0, 1.0, 0.0, 0.5, 10)
    f = torch.compile(s, backend=cnt, fullgraph=True)
    got = [f(torch.tensor(i)).item() for i in range(12)]
    assert got == [s(torch.tensor(i)).item() for i in range(12)]
    assert cnt.frame_count == 1


def test_bad_schedule_arguments():
    with pytest.raises(ValueError, match="start"):
        optim.linear(-1.0, 1.0, 0.0, 0.1, 10)
    with pytest.raises(ValueError, match="warmup_rate"):
        optim.linear(0.0, 1.0, 0.0, 1.5, 10)
    with pytest.raises(ValueError, match="total_steps"):
        optim.cosine(1.0, 0)
