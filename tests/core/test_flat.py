"""Flat parameter storage (``make_step(flat=True)``, pureml/core/flat.py).

Logic runs eagerly or with the "aot_eager" backend (the same autograd graphs as inductor, no
code generation); one small inductor check at the end.
"""

import sys
from pathlib import Path

import pytest
import torch

from pureml import optim
from pureml.core.flat import FlatLayout
from pureml.core.state import fingerprint, load_state, save_state, state_to_flat
from pureml.core.step import init_state, make_step

sys.path.insert(0, str(Path(__file__).parent))
from step_model import LENGTHS, init_params, loss_fn, make_batch  # noqa: E402


def grouped_adamw():
    """Two parameter groups with different learning rates (and schedules), weight decay."""
    return optim.param_groups(
        {r"^l1\.": {"name": "l1", "lr": 1e-2, "schedule": {"name": "linear", "warmup_rate": 0.2}}},
        default={"lr": 3e-3},
        weight_decay=0.05,
        total_steps=20,
    )


def train(step, opt, state=None, start=0, stop=20):
    """Steps ``start..stop`` of a run with dropout and two sub-batches per step."""
    state = state if state is not None else init_state(init_params(), {}, opt, seed=7)
    for i in range(start, stop):
        state, _ = step(state, [make_batch(LENGTHS[i], 100 + i), make_batch(5, 300 + i)])
    return state


def assert_bitwise(a, b, prefixes=("",)):
    fa, fb = state_to_flat(a), state_to_flat(b)
    assert list(fa) == list(fb)
    for path in fa:
        if path.startswith(prefixes):
            assert torch.equal(fa[path], fb[path]), path


# -- the layout --------------------------------------------------------------------------------


def test_layout_buckets_offsets_and_views():
    params = {
        "a.w": torch.randn(3, 5),
        "b.w": torch.randn(7, dtype=torch.float64),
        "a.b": torch.randn(5),
        "e": torch.randn(0),
    }
    layout = FlatLayout.build(params, group_of=lambda n: n[0])
    assert [b.key for b in layout.buckets] == [
        "flat/a/float32/cpu",
        "flat/b/float64/cpu",
        "flat/e/float32/cpu",
    ]
    a = layout.buckets[0]
    assert a.names == ("a.w", "a.b") and a.offsets == (0, 16) and a.numel == 21
    flat = layout.flatten(params)
    assert flat["flat/a/float32/cpu"][15] == 0  # the alignment gap
    views = layout.views(flat)
    assert list(views) == list(params)  # the caller's order, not the buckets'
    for k, v in params.items():
        assert torch.equal(views[k], v)
    assert views["a.w"]._base is flat["flat/a/float32/cpu"]
    # views of the flat tensors are found again without a copy
    again = layout.flatten(views)
    assert all(again[k] is flat[k] for k in flat)
    # the differentiable split gives the same views
    for k, v in layout.split(flat).items():
        assert torch.equal(v, views[k])


def test_layout_max_bytes_splits_a_bucket():
    params = {"a": torch.zeros(10), "b": torch.zeros(40), "c": torch.zeros(3), "d": torch.zeros(2)}
    layout = FlatLayout.build(params, max_bytes=128)  # 32 float32; 64-byte (16-element) slots
    assert [(b.key, b.names) for b in layout.buckets] == [
        ("flat/float32/cpu", ("a",)),
        ("flat/float32/cpu#1", ("b",)),  # larger than the cap: a bucket of its own
        ("flat/float32/cpu#2", ("c", "d")),
    ]
    views = layout.views(layout.flatten(params))
    assert list(views) == list(params) and layout.flatten(views).keys() == set(layout.keys)


def test_flatten_copies_when_a_view_was_replaced():
    params = {"w": torch.randn(4, 4), "b": torch.randn(4)}
    layout = FlatLayout.build(params)
    views = layout.views(layout.flatten(params))
    new_b = torch.full((4,), 7.0)
    flat = layout.flatten({**views, "b": new_b})["flat/float32/cpu"]
    assert flat.data_ptr() != views["w"].data_ptr()
    assert torch.equal(layout.views({"flat/float32/cpu": flat})["b"], new_b)
    with pytest.raises(ValueError, match="'b' is missing"):
        layout.flatten({"w": views["w"], "x": new_b})
    with pytest.raises(ValueError, match="expected shape"):
        layout.flatten({"w": views["w"], "b": torch.zeros(5)})


def test_pack_unpack_an_optimizer_state():
    opt = grouped_adamw()
    params = init_params()
    state = opt.init(params)
    layout = FlatLayout.build(params, group_of=lambda n: opt.group_of(n).name)
    packed = layout.pack(state)
    assert list(packed["l1"][0].mu) == ["flat/l1/float32/cpu"]
    assert list(packed["default"][0].nu) == ["flat/default/float32/cpu"]
    assert packed["l1"][1].lr is state["l1"][1].lr  # non-parameter leaves untouched
    unpacked = layout.unpack(packed)
    assert list(unpacked["l1"][0].mu) == ["l1.w", "l1.b"]
    assert all(torch.equal(a, b) for a, b in zip(_leaves(state), _leaves(unpacked)))


def _leaves(tree):
    return list(state_to_flat({"t": tree}).values())


# -- the step ----------------------------------------------------------------------------------


def test_flat_matches_per_tensor_eager():
    """20 steps, dropout, AdamW with weight decay, two groups with different lrs.

    Without clipping the flat step is bitwise the per-tensor one: the same per-element
    arithmetic on views of the flat tensors (aligned like separately allocated tensors, so the
    matmuls run the same kernels), and the gradient of ``split`` is the concatenation of the
    per-parameter gradients. With clipping the global norm is reduced over the flat gradient
    instead of over each tensor's norm: a different summation order, so the clip factor differs
    in its last bits (and so do the parameters, by ~1e-7 relative after 20 steps). The norm is
    also what the spike guard's statistics are fed, so those differ in the last bits anyway."""
    opt = grouped_adamw()
    for clip, exact in ((None, True), (1.0, False)):
        per_tensor = train(make_step(loss_fn, opt, compile=False, grad_max_norm=clip), opt)
        flat = train(make_step(loss_fn, opt, compile=False, grad_max_norm=clip, flat=True), opt)
        assert list(flat.opt) == ["l1", "default"]
        assert list(flat.opt["l1"][0].mu) == ["l1.w", "l1.b"]  # moments stay by name
        if exact:
            assert_bitwise(per_tensor, flat, ("params.", "opt.", "step", "hparams."))
        for k, ref in per_tensor.params.items():
            rel = ((flat.params[k] - ref).abs().max() / ref.abs().max()).item()
            assert rel < 1e-6, (clip, k, rel)
        assert float(flat.hparams["lr/l1"]) != float(flat.hparams["lr/default"])


def test_flat_compiled_agrees_with_flat_eager():
    opt = grouped_adamw()
    eager = train(make_step(loss_fn, opt, compile=False, flat=True, grad_max_norm=1.0), opt)
    compiled = train(
        make_step(loss_fn, opt, backend="aot_eager", flat=True, grad_max_norm=1.0), opt
    )
    assert_bitwise(eager, compiled)


def test_flat_resume_from_checkpoint_is_bitwise(tmp_path):
    opt = grouped_adamw()
    kw = {"backend": "aot_eager", "flat": True, "grad_max_norm": 1.0}
    whole = train(make_step(loss_fn, opt, **kw), opt)
    first = train(make_step(loss_fn, opt, **kw), opt, stop=10)
    save_state(first, tmp_path / "ckpt")  # views of flat tensors are saved by name
    template = init_state(init_params(1), {}, opt, seed=0)
    loaded, _ = load_state(template, tmp_path / "ckpt")
    assert fingerprint(loaded) == fingerprint(first)
    resumed = train(make_step(loss_fn, opt, **kw), opt, state=loaded, start=10)
    assert_bitwise(whole, resumed)


def test_old_state_unchanged_and_no_copy_between_steps(monkeypatch):
    opt = grouped_adamw()
    step = make_step(loss_fn, opt, compile=False, flat=True)
    copies = []
    concat = FlatLayout._concat
    monkeypatch.setattr(FlatLayout, "_concat", lambda *a: copies.append(1) or concat(*a))
    state = init_state(init_params(), {}, opt, seed=7)
    s1, _ = step(state, [make_batch(5, 0)])
    assert len(copies) == 6  # params, mu, nu of 2 buckets: the first call flattens (copies)
    before = fingerprint(s1)
    s2, _ = step(s1, [make_batch(5, 1)])
    s3, _ = step(s2, [make_batch(5, 2)])
    assert len(copies) == 6  # later calls find the flat tensors behind the views
    assert fingerprint(s1) == before  # nothing written in place
    assert s2.params["l1.w"].data_ptr() != s1.params["l1.w"].data_ptr()
    # an older state, not the last one handed out: found from the views' base, no copy either
    s2b, _ = step(s1, [make_batch(5, 1)])
    assert len(copies) == 6
    assert_bitwise(s2, s2b)
    # a state whose tensor was replaced is flattened again (a copy) with the new value
    w = torch.zeros_like(s3.params["l2.w"])
    s4, _ = step(s3.replace(params={**s3.params, "l2.w": w}), [make_batch(5, 3)])
    assert len(copies) == 7
    assert s4.params["l2.w"].abs().max() < 0.1


def test_flat_param_grad_norms_and_grad_fn_by_name():
    opt = grouped_adamw()
    state = init_state(init_params(), {}, opt, seed=7)
    batch = [make_batch(5, 0), make_batch(7, 1)]
    ref = make_step(loss_fn, opt, compile=False, param_grad_norms=True)
    flat = make_step(loss_fn, opt, backend="aot_eager", param_grad_norms=True, flat=True)
    _, m_ref = ref(state, batch)
    _, m_flat = flat(state, batch)
    norms = sorted(k for k in m_ref if k.startswith("grad_norm/"))
    assert norms == sorted(k for k in m_flat if k.startswith("grad_norm/")) and len(norms) == 4
    for k in norms:
        assert torch.equal(m_ref[k], m_flat[k]), k
    # replay's gradient dump calls grad_fn / grad_acc_fn with tensors by name
    index = torch.tensor(0)
    args = (state.params, state.buffers, batch[0], state.rng, state.step, index)
    g_ref, _, _ = ref.grad_fn(*args)
    g_flat, _, _ = flat.grad_fn(*args)
    acc_ref, _, _ = ref.grad_acc_fn(g_ref, *args)
    acc_flat, _, _ = flat.grad_acc_fn(g_flat, *args)
    for k in g_ref:
        assert torch.equal(g_ref[k], g_flat[k]) and torch.equal(acc_ref[k], acc_flat[k]), k


def _input_counter(counts):
    def backend(gm, example_inputs):
        counts.append(len(example_inputs))
        return gm.forward

    return backend


def test_flat_graphs_take_few_inputs():
    # 2 x 20 parameters: per tensor, the update graph takes 4 inputs per parameter (param,
    # grad, two moments; dynamo guards each); flat, 4 per bucket
    params = {f"l{i}.{p}": torch.randn(4, 4) for i in range(20) for p in "wb"}

    def deep_loss(params, buffers, batch, key):
        x = batch["x"]
        for i in range(20):
            x = torch.tanh(x @ params[f"l{i}.w"] + params[f"l{i}.b"])
        return x.square().mean(), {}

    inputs = {}
    for flat in (False, True):
        counts = []
        opt = optim.adamw(1e-3)
        step = make_step(deep_loss, opt, backend=_input_counter(counts), flat=flat)
        state = init_state(params, {}, opt)
        for _ in range(2):
            state, _ = step(state, [{"x": torch.randn(4, 4)}])
        assert len(counts) == 2  # one forward, one update graph: no recompilation
        inputs[flat] = counts
    # forward: rng, step, index, the batch and the params (40 of them, or one bucket)
    assert inputs[False][0] >= 44 and inputs[True][0] <= 5
    # update: params, grads, two moments (40 each, or one bucket each), counts, lr, guard
    assert inputs[False][1] >= 4 * 40 and inputs[True][1] <= 16


def test_flat_inductor_matches_eager():
    opt = grouped_adamw()
    eager = make_step(loss_fn, opt, compile=False, flat=True, grad_max_norm=1.0)
    compiled = make_step(loss_fn, opt, backend="inductor", flat=True, grad_max_norm=1.0)
    a = train(eager, opt, stop=3)
    b = train(compiled, opt, stop=3)
    for k in a.params:
        torch.testing.assert_close(b.params[k], a.params[k], rtol=1e-5, atol=1e-6)


def test_flat_with_all_reduce_and_a_frozen_group():
    opt = optim.param_groups(
        {r"^l1\.w": False, r"^l2\.": {"name": "head", "lr": 1e-2}},
        default={"lr": 3e-3},
        weight_decay=0.05,
    )
    calls = []

    def all_reduce(flat):  # one rank: the sum is the tensor itself
        calls.append(flat.numel())
        return flat.clone()

    ref = train(make_step(loss_fn, opt, compile=False, grad_max_norm=None), opt, stop=3)
    flat_step = make_step(
        loss_fn, opt, compile=False, grad_max_norm=None, flat=True, all_reduce=all_reduce
    )
    flat = train(flat_step, opt, stop=3)
    assert sorted(flat.buffers) == ["l1.w"] and list(flat.params) == ["l1.b", "l2.w", "l2.b"]
    assert [b.key for b in flat_step.layout.buckets] == [
        "flat/default/float32/cpu",
        "flat/head/float32/cpu",
    ]
    # per step one collective per dtype: float32 (both buckets and the losses), int64 (an aux)
    assert len(calls) == 2 * 3
    assert_bitwise(ref, flat, ("params.", "opt.", "buffers."))
