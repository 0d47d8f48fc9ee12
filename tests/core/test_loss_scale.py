"""float16 dynamic loss scaling against torch.amp.GradScaler, and what it is for."""

import pytest
import torch

from pureml import optim
from pureml.core.loss_scale import init_loss_scale, update_loss_scale
from pureml.core.step import init_state, make_step

INF = float("inf")
# finite steps, an overflow, finite again: the scale grows, halves, grows (growth_interval=2)
XS = [[1.0, 1.0]] * 3 + [[INF, 1.0]] + [[1.0, -2.0]] * 2 + [[float("nan"), 0.0]] + [[0.5, 1.0]] * 3


def _grad_scaler_run(growth_interval: int) -> tuple[list[float], list[torch.Tensor]]:
    """The scale each step used and the parameters after it; then the scale after the run."""
    w = torch.nn.Parameter(torch.tensor([1.0, 2.0]))
    opt = torch.optim.SGD([w], lr=0.1)
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0**4, growth_interval=growth_interval)
    scales, params = [], []
    for x in XS:
        opt.zero_grad()
        scaler.scale((w * torch.tensor(x)).sum()).backward()
        scales.append(scaler.get_scale())
        scaler.step(opt)
        scaler.update()
        params.append(w.detach().clone())
    return [*scales, scaler.get_scale()], params


@pytest.mark.parametrize("compile", [False, True])
def test_step_scales_like_torch_grad_scaler(compile):
    def loss_fn(params, buffers, batch, key):
        return (params["w"] * batch["x"]).sum(), {}

    opt = optim.sgd(0.1)
    step = make_step(
        loss_fn,
        opt,
        grad_max_norm=None,
        compile=compile,
        backend="aot_eager",
        loss_scale_growth_interval=2,
    )
    state = init_state({"w": torch.tensor([1.0, 2.0])}, optimizer=opt, loss_scale=2.0**4)
    scales, params, skipped = [], [], []
    for x in XS:
        state, metrics = step(state, [{"x": torch.tensor(x)}])
        scales.append(float(metrics["loss_scale"]))
        params.append(state.params["w"].clone())
        skipped.append(bool(metrics["skipped"]))
    ref_scales, ref_params = _grad_scaler_run(growth_interval=2)
    assert [*scales, float(state.loss_scale["scale"])] == ref_scales
    for got, ref in zip(params, ref_params):
        assert torch.equal(got, ref), (got, ref)
    # an overflow skips the update (and the schedule), as GradScaler skips optimizer.step
    assert skipped == [not all(abs(v) < INF for v in x) for x in XS]


def test_float16_gradients_below_its_range_survive_only_with_scaling():
    """float16 rounds gradients below 6e-8 to zero; the scale lifts them into range."""
    torch.manual_seed(0)
    x, w0 = torch.randn(8, 3), torch.randn(2, 3)

    def loss_fn(params, buffers, batch, key):
        with torch.autocast("cpu", dtype=torch.float16):
            y = torch.nn.functional.linear(batch["x"], params["w"])
        return y.float().sum() * 1e-8, {}

    expected = float((torch.ones(2, 8) @ x * 1e-8).norm())  # d loss / d w, in float32
    norms = {}
    for scale in (None, 2.0**16):
        opt = optim.sgd(0.1)
        state = init_state({"w": w0.clone()}, optimizer=opt, loss_scale=scale)
        step = make_step(loss_fn, opt, grad_max_norm=None, compile=False)
        _, metrics = step(state, [{"x": x}])
        norms[scale] = float(metrics["grad_norm"])
    assert norms[None] == 0.0
    assert norms[2.0**16] == pytest.approx(expected, rel=2e-3)  # float16's precision


def test_growth_stops_short_of_float32_overflow_and_bad_scales_are_refused():
    stats = init_loss_scale(2.0**127)
    stats = update_loss_scale(stats, torch.tensor(True), growth_interval=1)
    assert float(stats["scale"]) == 2.0**127 and int(stats["good_steps"]) == 0
    for bad in (0.0, -1.0, INF):
        with pytest.raises(ValueError, match="loss_scale"):
            init_loss_scale(bad)


def test_grad_fn_and_apply_gradients_compose_like_the_step():
    """The step's two public halves, with a loss scale: gradients of the scaled loss in,
    unscaled inside; a one-element loss (not 0-d) is seeded too."""

    def loss_fn(params, buffers, batch, key):
        return (params["w"] * batch["x"]).sum().reshape(1), {}

    opt = optim.sgd(0.5)
    step = make_step(loss_fn, opt, grad_max_norm=None, compile=False)
    state = init_state({"w": torch.ones(2)}, optimizer=opt, loss_scale=2.0**16)
    batch = {"x": torch.tensor([1.0, -2.0])}
    whole, metrics = step(state, [batch])
    index = torch.zeros((), dtype=torch.int64)
    args = (state.params, state.buffers, batch, state.rng, state.step, index)
    grads, loss, _ = step.grad_fn(*args, scale=state.loss_scale["scale"])
    halves, metrics2 = step.apply_gradients(state, grads, {"loss": loss})
    assert torch.equal(halves.params["w"], whole.params["w"])
    assert whole.params["w"].tolist() == [0.5, 2.0]
    assert float(metrics2["grad_norm"]) == pytest.approx(5**0.5)
