"""Functional optimizers against torch.optim, over 100 steps of a small MLP."""

import copy

import pytest
import torch

from pureml import optim


def _mlp(dtype: torch.dtype) -> torch.nn.Module:
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Linear(6, 16), torch.nn.Tanh(), torch.nn.Linear(16, 3)).to(
        dtype
    )


def _run_both(dtype, torch_opt, functional, steps=100, torch_sched=None):
    model = _mlp(dtype)
    ref = copy.deepcopy(model)
    topt = torch_opt(ref.parameters())
    sched = torch_sched(topt) if torch_sched else None
    params = {k: v.detach().clone() for k, v in model.named_parameters()}
    state = functional.init(params)
    g = torch.Generator().manual_seed(1)
    xs = torch.randn(steps, 32, 6, generator=g, dtype=dtype)
    ys = torch.randn(steps, 32, 3, generator=g, dtype=dtype)

    def loss(p, x, y):
        return ((torch.func.functional_call(model, p, (x,)) - y) ** 2).mean()

    for x, y in zip(xs, ys):
        topt.zero_grad()
        loss(dict(ref.named_parameters()), x, y).backward()
        topt.step()
        if sched is not None:
            sched.step()
        grads = torch.func.grad(loss)(params, x, y)
        updates, state = functional.update(grads, state, params)
        params = optim.apply_updates(params, updates)
    return params, dict(ref.named_parameters()), state


def _rel(params, ref):
    """Max over tensors of max|a - b| / max|b| (relative to each tensor's scale)."""
    return max(((params[k] - ref[k]).abs().max() / ref[k].abs().max()).item() for k in ref)


def _rel_elementwise(params, ref):
    return max(((params[k] - ref[k]).abs() / ref[k].abs()).max().item() for k in ref)


CASES = {
    "adamw": (
        lambda ps: torch.optim.AdamW(ps, lr=3e-3, betas=(0.8, 0.99), eps=1e-7, weight_decay=0.1),
        lambda: optim.adamw(3e-3, b1=0.8, b2=0.99, eps=1e-7, weight_decay=0.1),
    ),
    "adam": (
        lambda ps: torch.optim.Adam(ps, lr=3e-3, weight_decay=0.05),
        lambda: optim.adam(3e-3, weight_decay=0.05),
    ),
    "sgd": (
        lambda ps: torch.optim.SGD(ps, lr=0.05, momentum=0.9, weight_decay=0.01, nesterov=True),
        lambda: optim.sgd(0.05, momentum=0.9, weight_decay=0.01, nesterov=True),
    ),
    "sgd_plain": (
        lambda ps: torch.optim.SGD(ps, lr=0.05),
        lambda: optim.sgd(0.05),
    ),
}


@pytest.mark.parametrize("name", list(CASES))
def test_matches_torch_float64(name):
    torch_opt, functional = CASES[name]
    params, ref, _ = _run_both(torch.float64, torch_opt, functional())
    assert _rel_elementwise(params, ref) < 1e-6
    assert _rel(params, ref) < 1e-6


@pytest.mark.parametrize("name", list(CASES))
def test_matches_torch_float32(name):
    torch_opt, functional = CASES[name]
    params, ref, _ = _run_both(torch.float32, torch_opt, functional())
    assert _rel(params, ref) < 1e-5
    # and the run really moved the parameters (a no-op optimizer would "match" a no-op torch)
    start = dict(_mlp(torch.float32).named_parameters())
    assert _rel(start, ref) > 1e-2


def test_adam_is_bitwise_torch_on_cpu():
    # Same operation order as torch's addcdiv(m, denom, value=-lr/bc1): identical rounding.
    params, ref, _ = _run_both(torch.float32, CASES["adam"][0], CASES["adam"][1]())
    assert all(torch.equal(params[k], ref[k]) for k in ref)


def test_scheduled_adamw_matches_torch_lambda_lr():
    total = 40
    sched = optim.linear(0.0, 1e-2, 0.0, 0.25, total)

    def torch_sched(opt):
        return torch.optim.lr_scheduler.LambdaLR(opt, lambda i: float(sched(torch.tensor(i))))

    params, ref, state = _run_both(
        torch.float64,
        lambda ps: torch.optim.AdamW(ps, lr=1.0),
        optim.adamw(sched),
        steps=total,
        torch_sched=torch_sched,
    )
    assert _rel_elementwise(params, ref) < 1e-6
    assert int(state[1].count) == total
    assert float(state[1].lr) == float(sched(torch.tensor(total - 1)))


def test_update_does_not_mutate_inputs():
    opt = optim.adamw(0.1)
    params = {"w": torch.randn(4)}
    grads = {"w": torch.randn(4)}
    state = opt.init(params)
    before = [t.clone() for t in (params["w"], grads["w"], state[0].mu["w"], state[0].nu["w"])]
    opt.update(grads, state, params)
    after = (params["w"], grads["w"], state[0].mu["w"], state[0].nu["w"])
    assert all(torch.equal(a, b) for a, b in zip(before, after))


def test_chain_clip_and_set_learning_rate():
    opt = optim.chain(optim.clip_by_global_norm(1.0), optim.sgd(0.5))
    params = {"a": torch.zeros(2), "b": torch.zeros(1)}
    grads = {"a": torch.tensor([3.0, 0.0]), "b": torch.tensor([4.0])}
    state = opt.init(params)
    updates, state = opt.update(grads, state, params)
    # clipped to norm 1 (torch's 1e-6 in the denominator), then times -0.5
    assert updates["b"].item() == pytest.approx(-0.5 * 4 / 5, rel=1e-5)
    state = optim.set_learning_rate(state, 0.25)
    assert float(optim.learning_rates(state)["default"]) == 0.25
    updates, _ = opt.update(grads, state, params)
    assert updates["b"].item() == pytest.approx(-0.25 * 4 / 5, rel=1e-5)
    with pytest.raises(ValueError, match="-1"):
        optim.set_learning_rate(state, -1.0)


def test_clip_by_global_norm_refuses_a_negative_or_missing_max_norm():
    # a negative max_norm made the coefficient negative: every gradient reversed, silently
    for bad in (-1.0, float("nan"), None):
        with pytest.raises(ValueError, match="max_norm"):
            optim.clip_by_global_norm(bad)
    # 0 is torch's clip_grad_norm_(max_norm=0): all gradients zeroed
    t = optim.clip_by_global_norm(0.0)
    updates, _ = t.update({"a": torch.tensor([3.0, 4.0])}, t.init({}))
    assert updates["a"].tolist() == [0.0, 0.0]


@pytest.mark.parametrize(
    "grads",
    [
        {"a": torch.tensor([3.0, 0.5]), "b": torch.tensor([[4.0, -1.0]], dtype=torch.float64)},
        {"a": torch.tensor([1.0, float("nan")]), "b": torch.ones(2)},
        {"a": torch.tensor([1.0, float("inf")]), "b": torch.ones(2)},
        {"a": torch.zeros(3)},
    ],
)
@pytest.mark.parametrize("max_norm", [0.0, 1.0, 1e6])
def test_clip_by_global_norm_is_torch_clip_grad_norm(grads, max_norm):
    ref = {k: torch.nn.Parameter(torch.zeros_like(v)) for k, v in grads.items()}
    for k, p in ref.items():
        p.grad = grads[k].clone()
    norm = torch.nn.utils.clip_grad_norm_(list(ref.values()), max_norm)
    t = optim.clip_by_global_norm(max_norm)
    clipped, _ = t.update(grads, t.init({}))
    assert torch.equal(optim.global_norm(grads), norm) or norm.isnan()
    for k, p in ref.items():
        assert clipped[k].dtype == p.grad.dtype
        assert torch.equal(clipped[k].isnan(), p.grad.isnan())
        assert torch.equal(clipped[k].nan_to_num(), p.grad.nan_to_num())


@pytest.mark.parametrize("dtype, tol", [(torch.float64, 1e-12), (torch.float32, 1e-5)])
def test_grouped_adamw_matches_torch_param_groups(dtype, tol):
    # per-group lr, weight decay only where asked, a scheduled group, an lr-0 group, a frozen one
    total = 30
    warm = optim.linear(0.0, 1e-2, 0.0, 0.2, total)
    opt = optim.param_groups(
        {
            r"bias$": {"name": "bias", "lr": 3e-3, "weight_decay": 0.0},
            r"^enc": {
                "name": "enc",
                "lr": 1e-2,
                "schedule": {"name": "linear", "warmup_rate": 0.2},
            },
            r"^still": {"name": "still", "lr": 0.0},
            r"^frozen": False,
        },
        default={"lr": 3e-3},
        total_steps=total,
        weight_decay=0.1,
    )
    g = torch.Generator().manual_seed(0)
    names = ["enc.w", "enc.bias", "head.w", "head.bias", "still.w", "frozen.w"]
    start = {n: torch.randn(4, 3, generator=g, dtype=dtype) for n in names}
    params, frozen = opt.partition(start)
    assert list(frozen) == ["frozen.w"]
    ref = {n: torch.nn.Parameter(v.clone()) for n, v in params.items()}
    topt = torch.optim.AdamW(
        [
            {"params": [ref["enc.bias"], ref["head.bias"]], "lr": 3e-3, "weight_decay": 0.0},
            {"params": [ref["enc.w"]], "lr": 1.0},
            {"params": [ref["still.w"]], "lr": 0.0},
            {"params": [ref["head.w"]], "lr": 3e-3},
        ],
        weight_decay=0.1,
    )
    lambdas = [lambda i: 1.0, lambda i: float(warm(torch.tensor(i))), lambda i: 1.0, lambda i: 1.0]
    sched = torch.optim.lr_scheduler.LambdaLR(topt, lambdas)
    state = opt.init(params)
    for _ in range(total + 5):  # past the end of the schedule
        grads = {n: torch.randn(4, 3, generator=g, dtype=dtype) for n in params}
        for n, p in ref.items():
            p.grad = grads[n].clone()
        topt.step()
        sched.step()
        updates, state = opt.update(grads, state, params)
        params = optim.apply_updates(params, updates)
    assert _rel(params, {k: v.detach() for k, v in ref.items()}) < tol
    assert torch.equal(params["still.w"], start["still.w"])
    assert _rel(start, {k: v.detach() for k, v in ref.items() if k != "still.w"}) > 1e-2


def _peak(count):  # a user's schedule: known by its name only
    return torch.full((), 1e-3, dtype=torch.float64)


def test_describe_is_the_same_for_optimizers_built_alike_and_holds_no_address():
    """What a run's identity compares: built twice (two objects, other closures), described
    the same; a changed argument, described otherwise; never a repr's ``at 0x...``."""

    def builders(lr):
        return [
            optim.adamw(optim.linear(0.0, lr, 0.0, 0.1, 100), weight_decay=0.0),
            optim.sgd(lr, momentum=0.9),
            optim.chain(optim.clip_by_global_norm(1.0), optim.adam(lr)),
            optim.param_groups(
                {"^a": {"lr": lr, "schedule": "cosine"}, "^b": False}, total_steps=10
            ),  # fmt: skip
            optim.eds_default(10, lr=lr, transformer="^emb"),
            optim.scale_by_learning_rate(_peak),
        ]

    first, again, other = builders(1e-3), builders(1e-3), builders(2e-3)
    for a, b in zip(first, again):
        assert optim.describe(a) == optim.describe(b) and repr(a) == repr(b)
        assert "0x" not in repr(a)
    assert [optim.describe(a) != optim.describe(c) for a, c in zip(first, other)] == [
        True,
        True,
        True,
        True,
        True,
        False,  # fmt: skip
    ]
    assert optim.describe(first[-1])["learning_rate"] == f"{__name__}._peak"
    by_hand = optim.GradientTransformation(*first[0][:2])
    assert optim.describe(by_hand) == {
        "init": "pureml.optim.adamw._adam.<locals>.init",
        "update": "pureml.optim.adamw._adam.<locals>.update",
    }
