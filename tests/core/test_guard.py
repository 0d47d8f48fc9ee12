"""Spike guard: pandas-style EWM statistics, detection rules and the four policies."""

import math

import pytest
import torch

from pureml.core.guard import ewm_std, guard_update, init_guard


def pandas_ewm(values, window):
    """pandas ``Series(values).ewm(span=window, adjust=True)``: last mean and std (bias=False)."""
    alpha = 2 / (window + 1)
    n = len(values)
    w = [(1 - alpha) ** (n - 1 - i) for i in range(n)]
    s1, s2 = sum(w), sum(x * x for x in w)
    mean = sum(wi * x for wi, x in zip(w, values)) / s1
    biased = sum(wi * (x - mean) ** 2 for wi, x in zip(w, values)) / s1
    var = biased * s1 * s1 / (s1 * s1 - s2) if s1 * s1 - s2 > 0 else math.nan
    return mean, math.sqrt(var)


def feed(norms, window, policy=None, max_dev=3.0):
    stats = init_guard()
    outs = []
    for x in norms:
        stats, out = guard_update(
            stats,
            torch.tensor(x, dtype=torch.float64),
            window=window,
            max_dev=max_dev,
            policy=policy,
        )
        outs.append(out)
    return stats, outs


def test_statistics_match_pandas_ewm():
    g = torch.Generator().manual_seed(0)
    norms = (1 + 0.3 * torch.rand(60, generator=g, dtype=torch.float64)).tolist()
    stats = init_guard()
    for i, x in enumerate(norms):
        stats, out = guard_update(
            stats, torch.tensor(x, dtype=torch.float64), window=10, max_dev=7.0, policy=None
        )
        mean, std = pandas_ewm(norms[: i + 1], 10)
        assert stats["mean"].item() == pytest.approx(mean, rel=1e-12)
        if i == 0:
            assert math.isnan(ewm_std(stats).item())
        else:
            assert ewm_std(stats).item() == pytest.approx(std, rel=1e-9)
        assert not out.spike
    assert int(stats["count"]) == 60


CRAFTED = [1.0, 1.1, 3.0, 0.9, 1.0, 1.05, 0.95, 1.0, 20.0, 1.02, float("nan"), 0.98, 1.0]
# window 5, max_dev 3: 3.0 arrives while fewer than 5 norms were fed -> fed, not a spike;
# 20.0 arrives after 8 fed norms: 20 - mean > 3 std -> spike, not fed; NaN -> skip, not fed.


def test_detection_rules_on_crafted_sequence():
    stats, outs = feed(CRAFTED, window=5)
    assert [bool(o.spike) for o in outs] == [i == 8 for i in range(len(CRAFTED))]
    assert [bool(o.skip) for o in outs] == [i == 10 for i in range(len(CRAFTED))]
    fed = [x for i, x in enumerate(CRAFTED) if i not in (8, 10)]
    mean, std = pandas_ewm(fed, 5)
    assert stats["mean"].item() == pytest.approx(mean, rel=1e-12)
    assert ewm_std(stats).item() == pytest.approx(std, rel=1e-9)
    assert (int(stats["count"]), int(stats["spikes"]), int(stats["skips"])) == (11, 1, 1)


def test_no_detection_during_first_window_steps():
    # the same jump is a spike after `window` fed norms, not before
    _, outs = feed([1.0, 1.01, 0.99, 1.0, 100.0], window=5)
    assert not any(bool(o.spike) for o in outs)
    _, outs = feed([1.0, 1.01, 0.99, 1.0, 1.0, 100.0], window=5)
    assert bool(outs[-1].spike)


@pytest.mark.parametrize("policy", [None, "clip_mean", "clip_threshold", "skip"])
def test_policies(policy):
    stats = init_guard()
    for x in CRAFTED[:8]:
        stats, _ = guard_update(
            stats, torch.tensor(x, dtype=torch.float64), window=5, max_dev=3.0, policy=policy
        )
    mean, std = pandas_ewm(CRAFTED[:8], 5)
    new, out = guard_update(
        stats,
        torch.tensor(20.0),
        window=5,
        max_dev=3.0,
        policy=policy,
        clipped_norm=torch.tensor(8.0),
    )
    assert bool(out.spike)
    expected_scale = {
        None: 1.0,
        "skip": 1.0,
        "clip_mean": mean / (8.0 + 1e-6),
        "clip_threshold": (mean + 3.0 * std) / (8.0 + 1e-6),
    }[policy]
    assert out.scale.item() == pytest.approx(expected_scale, rel=1e-9)
    assert bool(out.skip) == (policy == "skip")
    assert int(new["skips"]) == (policy == "skip")
    # whatever the policy, the spike is not fed back
    assert torch.equal(new["mean"], stats["mean"]) and torch.equal(new["count"], stats["count"])
    # a normal norm after it is unaffected by the policy
    _, out = guard_update(new, torch.tensor(1.0), window=5, max_dev=3.0, policy=policy)
    assert not out.skip and out.scale.item() == 1.0


def test_non_finite_always_skips():
    for policy in (None, "clip_mean", "clip_threshold", "skip"):
        stats, outs = feed([1.0, float("inf"), float("nan")], window=5, policy=policy)
        assert [bool(o.skip) for o in outs] == [False, True, True]
        assert not any(bool(o.spike) for o in outs)
        assert int(stats["count"]) == 1 and int(stats["skips"]) == 2
        assert stats["mean"].item() == 1.0


def test_unknown_policy():
    with pytest.raises(ValueError, match="clip_max"):
        guard_update(init_guard(), torch.tensor(1.0), window=5, max_dev=3.0, policy="clip_max")
