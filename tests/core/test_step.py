"""The pure step: sub-batch sums, dropout keys, skips, policies, recompilation, frozen params.

Logic runs eagerly or with the "eager"/"aot_eager" backends (cheap); the inductor checks are in
test_step_compiled.py.
"""

import sys
from pathlib import Path

import pytest
import torch
from torch._dynamo.testing import CompileCounter

from pureml import optim
from pureml.core.state import fingerprint, state_to_flat
from pureml.core.step import init_state, make_step

sys.path.insert(0, str(Path(__file__).parent))
from step_model import init_params, loss_fn, make_batch, make_optimizer  # noqa: E402
from test_guard import pandas_ewm  # noqa: E402


def _same(a, b):
    return all(
        torch.equal(x, y) for x, y in zip(state_to_flat(a).values(), state_to_flat(b).values())
    )


def mlp(params, x):
    """The step model's MLP without dropout."""
    h = torch.tanh(x @ params["l1.w"].T + params["l1.b"])
    return h @ params["l2.w"].T + params["l2.b"]


def test_sub_batch_gradients_are_summed():
    # without dropout the sum of two sub-batches' losses is the loss of their concatenation
    def plain_loss(params, buffers, batch, key):
        return ((mlp(params, batch["x"]) - batch["y"]) ** 2).sum() / batch["n"], {}

    opt = optim.sgd(0.1)
    a, b = make_batch(5, 1), make_batch(5, 2)
    n = torch.tensor(40.0)
    a["n"] = b["n"] = n
    whole = {"x": torch.cat([a["x"], b["x"]]), "y": torch.cat([a["y"], b["y"]]), "n": n}
    step = make_step(plain_loss, opt, compile=False, grad_max_norm=None)
    s0 = init_state(init_params(), {}, opt)
    s_split, m_split = step(s0, [a, b])
    s_whole, m_whole = step(s0, [whole])
    assert m_split["loss"].item() == pytest.approx(m_whole["loss"].item(), rel=1e-6)
    assert m_split["grad_norm"].item() == pytest.approx(m_whole["grad_norm"].item(), rel=1e-6)
    for k in s_whole.params:
        torch.testing.assert_close(s_split.params[k], s_whole.params[k], rtol=1e-6, atol=1e-7)
    assert int(s_split.step) == 1 and int(s_split.opt[-1].count) == 1


def test_dropout_key_follows_global_sub_batch_index():
    # rank r of a data-parallel job passes first_index = r * n_local: its masks must be the ones
    # a single process gives sub-batch r * n_local + i
    opt = make_optimizer()
    step = make_step(loss_fn, opt, compile=False)
    s0 = init_state(init_params(), {}, opt, seed=3)
    a, b = make_batch(5, 1), make_batch(5, 2)
    _, both = step(s0, [a, b])
    _, first = step(s0, [a], first_index=0)
    _, second = step(s0, [b], first_index=1)
    _, wrong = step(s0, [b], first_index=0)
    assert both["loss/mask"] == first["loss/mask"] + second["loss/mask"]
    assert wrong["loss/mask"] != second["loss/mask"]
    # and the key changes with the step
    s1, _ = step(s0, [a])
    _, later = step(s1, [a])
    assert later["loss/mask"] != first["loss/mask"]


@pytest.mark.parametrize("compile", [False, True])
def test_non_finite_gradient_skips_bitwise(compile):
    opt = make_optimizer()
    step = make_step(loss_fn, opt, compile=compile, backend="eager", grad_dev_policy=None)
    state = init_state(init_params(), {}, opt)
    state, _ = step(state, [make_batch(5, 1)])
    bad = make_batch(5, 2)
    bad["x"][0, 0, 0] = float("nan")
    after, metrics = step(state, [bad])
    assert bool(metrics["skipped"]) and not bool(metrics["spike"])
    assert not torch.isfinite(metrics["grad_norm"])
    for k in state.params:
        assert torch.equal(after.params[k], state.params[k])
    flat_before, flat_after = state_to_flat(state), state_to_flat(after)
    for path in flat_before:
        if path.startswith("opt."):  # moments, counts (the schedule's clock) and lr
            assert torch.equal(flat_before[path], flat_after[path]), path
    assert int(after.step) == int(state.step) + 1  # the RNG/log counter always advances
    assert int(after.guard["skips"]) == 1 and int(after.guard["count"]) == 1
    assert torch.equal(after.hparams["lr/default"], state.hparams["lr/default"])
    # the next finite step proceeds from the unchanged state
    again, metrics = step(after, [make_batch(5, 3)])
    assert not bool(metrics["skipped"]) and int(again.opt[1].count) == 2


def _scaled_loss(params, buffers, batch, key):
    # gradient = batch["g"]: a crafted norm sequence through the whole step
    return (params["w"] * batch["g"]).sum(), {}


@pytest.mark.parametrize("policy", [None, "clip_mean", "clip_threshold", "skip"])
def test_spike_policies_through_the_step(policy):
    norms = [1.0, 1.1, 0.9, 1.0, 1.05, 0.95, 1.0, 30.0, 1.0]
    opt = optim.sgd(1.0)
    step = make_step(
        _scaled_loss,
        opt,
        compile=False,
        grad_max_norm=10.0,
        grad_ewm_window=5,
        grad_dev_policy=policy,
        grad_max_dev=3.0,
    )
    state = init_state({"w": torch.zeros(2, dtype=torch.float64)}, {}, opt)
    moves = []
    for x in norms:
        g = torch.tensor([x * 0.6, x * 0.8], dtype=torch.float64)
        before = state.params["w"]
        state, metrics = step(state, [{"g": g}])
        moves.append(torch.linalg.vector_norm(state.params["w"] - before).item())
        assert metrics["grad_norm"].item() == pytest.approx(x)  # logged before clipping
    assert int(state.guard["spikes"]) == 1
    assert int(state.guard["skips"]) == (policy == "skip")
    mean, std = pandas_ewm(norms[:7], 5)
    expected = {None: 10.0, "clip_mean": mean, "clip_threshold": mean + 3.0 * std, "skip": 0.0}
    assert moves[7] == pytest.approx(expected[policy], rel=1e-5)
    assert moves[:7] == pytest.approx(norms[:7], rel=1e-9)
    assert moves[8] == pytest.approx(1.0, rel=1e-9)
    # the schedule clock counts applied updates only
    assert int(state.opt[-1].count) == len(norms) - (policy == "skip")


def test_frozen_params_are_buffers_and_not_differentiated():
    opt = optim.param_groups({r"^l1\.": False}, default={"lr": 0.1}, optimizer="sgd")
    params = init_params()
    state = init_state(params, {"l1.scale": torch.tensor(1.0)}, opt)
    assert sorted(state.params) == ["l2.b", "l2.w"]
    assert sorted(state.buffers) == ["l1.b", "l1.scale", "l1.w"]
    step = make_step(loss_fn, opt, compile=True, backend="eager")
    new, _ = step(state, [make_batch(5, 0)])
    assert torch.equal(new.buffers["l1.w"], params["l1.w"])
    assert not torch.equal(new.params["l2.w"], params["l2.w"])
    assert list(new.opt) == ["default"]  # no optimizer state for the frozen group


def test_no_recompile_when_lr_changes_every_step():
    counter = CompileCounter()
    opt = optim.adamw(1e-3)
    step = make_step(loss_fn, opt, backend=counter)
    state = init_state(init_params(), {}, opt)
    for i in range(4):
        state = state.replace(opt=optim.set_learning_rate(state.opt, 1e-3 * (i + 1)))
        state, metrics = step(state, [make_batch(5, i)])
        assert metrics["lr/default"].item() == pytest.approx(1e-3 * (i + 1))
    assert counter.frame_count == 2  # the sub-batch gradient and the update


def test_batch_lengths_and_sub_batch_counts_do_not_recompile():
    counter = CompileCounter()
    opt = make_optimizer()
    step = make_step(loss_fn, opt, backend=counter)
    state = init_state(init_params(), {}, opt)
    for i, length in enumerate([5, 9, 7, 16, 5, 12]):
        state, _ = step(state, [make_batch(length, i)])
    assert counter.frame_count == 2  # the forward (its backward comes with it) and the update
    # more sub-batches: the same forward graph per sub-batch, gradients summed outside it
    for n in (2, 3, 1, 2):
        state, _ = step(state, [make_batch(5 + j, j) for j in range(n)])
    assert counter.frame_count == 2


def test_marking_dims_dynamic_makes_history_irrelevant():
    # Why the bitwise cross-process test can fail without the strategy: with torch's automatic
    # dynamic shapes the first length gets a static graph and later ones a dynamic graph, so
    # which kernels run depends on what came first. Marking dims dynamic gives one graph.
    def graphs(dynamic, lengths):
        counter = CompileCounter()
        opt = make_optimizer()
        step = make_step(loss_fn, opt, backend=counter, dynamic=dynamic)
        state = init_state(init_params(), {}, opt)
        for i, length in enumerate(lengths):
            state, _ = step(state, [make_batch(length, i)])
        return counter.frame_count

    assert graphs(None, [5, 9, 5]) == 3  # static grad graph, then dynamic grad graph, update
    assert graphs(True, [5, 9, 5]) == 2


def test_compile_false_is_the_same_function():
    opt = make_optimizer()
    eager = make_step(loss_fn, opt, compile=False)
    traced = make_step(loss_fn, opt, backend="eager")
    s_e = s_t = init_state(init_params(), {}, opt, seed=5)
    for i in range(3):
        s_e, m_e = eager(s_e, [make_batch(5 + i, i), make_batch(6, 10 + i)])
        s_t, m_t = traced(s_t, [make_batch(5 + i, i), make_batch(6, 10 + i)])
        assert m_e["loss/mask"] == m_t["loss/mask"]
    assert fingerprint(s_e) == fingerprint(s_t)
    assert _same(s_e, s_t)


def test_a_loss_that_specialises_on_length_gets_a_graph_per_length_not_a_failure():
    # a Python loop over the length (like a log-depth scan) specialises the dimension that the
    # step marks dynamic; more than torch's default 8 lengths used to end in
    # FailOnRecompileLimitHit with fullgraph=True
    def scan_loss(params, buffers, batch, key):
        x = batch["x"] * params["w"]
        total = x[:, 0]
        for i in range(1, x.shape[1]):
            total = total + x[:, i]
        return total.pow(2).mean(), {}

    opt = optim.sgd(0.01)
    counter = CompileCounter()
    step = make_step(scan_loss, opt, backend=counter)
    state = init_state({"w": torch.ones(())}, optimizer=opt)
    for length in range(2, 14):
        state, metrics = step(state, [{"x": torch.ones(3, length)}])
        assert torch.isfinite(metrics["loss"])
    assert counter.frame_count >= 12  # one grad graph per length, all compiled


@pytest.mark.parametrize("backend", [None, "aot_eager"])
def test_param_grad_norms_are_each_gradient_norm_before_clipping(backend):
    def plain_loss(params, buffers, batch, key):
        return ((mlp(params, batch["x"]) - batch["y"]) ** 2).mean(), {}

    params, batch = init_params(), make_batch(6, 3)
    leaves = {k: v.clone().requires_grad_() for k, v in params.items()}
    loss, _ = plain_loss(leaves, {}, batch, None)
    expected = dict(zip(leaves, torch.autograd.grad(loss, list(leaves.values()))))
    opt = optim.sgd(0.1)
    step = make_step(
        plain_loss,
        opt,
        compile=backend is not None,
        backend=backend or "inductor",
        grad_max_norm=1e-3,  # clips hard: the logged norms must be the raw ones
        param_grad_norms=True,
    )
    _, metrics = step(init_state(params, {}, opt), [batch])
    assert {k for k in metrics if k.startswith("grad_norm/")} == {f"grad_norm/{k}" for k in params}
    for k, g in expected.items():
        assert metrics[f"grad_norm/{k}"].item() == pytest.approx(g.norm().item(), rel=1e-5)
    plain = make_step(plain_loss, opt, compile=False)
    _, metrics = plain(init_state(params, {}, opt), [batch])
    assert not any(k.startswith("grad_norm/") for k in metrics)


def test_steps_do_not_share_automatic_dynamic_state():
    # dynamo remembers per (file, line, function name) which sizes and ints changed between
    # calls; Steps sharing that memory made another Step's parameter sizes (or grad_max_norm)
    # symbolic inputs of this one's graphs: kernels that depended on the process's history
    def placeholders(size, max_norm):
        names = []

        def backend(gm, example_inputs):
            names.append([n.name for n in gm.graph.find_nodes(op="placeholder")])
            return gm.forward

        opt = optim.sgd(0.1)
        step = make_step(_scaled_loss, opt, backend=backend, grad_max_norm=max_norm)
        state = init_state({"w": torch.zeros(size)}, {}, opt)
        step(state, [{"g": torch.ones(size)}])
        return names

    first = placeholders(3, 1.0)
    assert placeholders(5, 2.0) == first
