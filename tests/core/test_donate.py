"""Buffer donation (``make_step(donate=True)``): the update written into the state's own tensors.

Donation must change where the results go, never what they are: every check compares against
the out-of-place step bit for bit, over steps with dropout, two parameter groups, clipping and a
skipped (non-finite) step.
"""

import sys
from pathlib import Path

import pytest

from pureml.core.state import fingerprint, state_to_flat
from pureml.core.step import init_state, make_step

sys.path.insert(0, str(Path(__file__).parent))
from step_model import LENGTHS, init_params, loss_fn, make_batch  # noqa: E402
from test_flat import assert_bitwise, grouped_adamw  # noqa: E402

NAN_STEP = 4


def batches(i):
    subs = [make_batch(LENGTHS[i], 100 + i), make_batch(5, 300 + i)]
    if i == NAN_STEP:  # a non-finite gradient: the step is skipped, params and moments kept
        subs[1]["x"][0, 0, 0] = float("nan")
    return subs


def run(step, opt, steps=8):
    state = init_state(init_params(), {}, opt, seed=7)
    skipped = []
    for i in range(steps):
        state, metrics = step(state, batches(i))
        skipped.append(bool(metrics["skipped"]))
    return state, skipped


@pytest.mark.parametrize("flat", [False, True])
@pytest.mark.parametrize("backend", [None, "aot_eager"])
def test_donated_step_is_bitwise_the_out_of_place_step(flat, backend):
    opt = grouped_adamw()
    kw = {"grad_max_norm": 1.0, "flat": flat, "compile": backend is not None}
    if backend is not None:
        kw["backend"] = backend
    ref, ref_skipped = run(make_step(loss_fn, opt, **kw), opt)
    got, skipped = run(make_step(loss_fn, opt, donate=True, **kw), opt)
    assert skipped == ref_skipped and skipped[NAN_STEP] and sum(skipped) == 1
    assert_bitwise(ref, got)


def test_donation_reuses_buffers_and_consumes_the_state():
    opt = grouped_adamw()
    step = make_step(loss_fn, opt, compile=False, donate=True)
    s0 = init_state(init_params(), {}, opt, seed=7)
    before = fingerprint(s0)
    s1, _ = step(s0, batches(0))
    # not a state this step handed out: copied first, the caller's tensors left alone
    assert fingerprint(s0) == before
    assert s1.params["l1.w"].data_ptr() != s0.params["l1.w"].data_ptr()
    s2, _ = step(s0, batches(0))  # s0 is still usable, and gives the same result
    assert fingerprint(s2) == fingerprint(s1)
    # params and moments written in place (0-d scalars such as counts are returned anew)
    ptrs = {k: t.data_ptr() for k, t in state_to_flat(s2).items() if t.ndim and k[0] in "po"}
    assert len(ptrs) == 12  # 4 params, their 2 moments
    s3, _ = step(s2, batches(1))
    assert {k: state_to_flat(s3)[k].data_ptr() for k in ptrs} == ptrs
    assert int(s3.step) == 2
    for consumer in (step, make_step(loss_fn, opt, compile=False)):
        with pytest.raises(ValueError, match="donated"):
            consumer(s2, batches(1))
    # s1 was never donated (s2 came from s0): still a valid input, not overwritten by s3
    s2b, _ = step(s1, batches(1))
    ref, _ = make_step(loss_fn, opt, compile=False)(s1, batches(1))
    assert_bitwise(ref, s2b)


def test_donated_inductor_step_matches_out_of_place():
    """Inductor writes the donated update in place (one loop per bucket instead of compute then
    copy); the arithmetic, and so the bits, must not change."""
    opt = grouped_adamw()
    kw = {"grad_max_norm": 1.0, "flat": True, "backend": "inductor"}
    ref, _ = run(make_step(loss_fn, opt, **kw), opt, steps=NAN_STEP + 2)
    got, _ = run(make_step(loss_fn, opt, donate=True, **kw), opt, steps=NAN_STEP + 2)
    assert_bitwise(ref, got)


def test_an_adopted_state_is_written_from_the_first_step():
    opt = grouped_adamw()
    step = make_step(loss_fn, opt, compile=False, donate=True)
    s0 = init_state(init_params(), {}, opt, seed=7)
    ref, _ = make_step(loss_fn, opt, compile=False)(s0, batches(0))
    w = s0.params["l1.w"]
    s1, _ = step(step.adopt(s0), batches(0))
    assert s1.params["l1.w"] is w  # no copy: the adopted tensors now hold step 1
    assert_bitwise(ref, s1)
    with pytest.raises(ValueError, match="donated"):
        step(s0, batches(1))
    with pytest.raises(ValueError, match="donated"):
        step.adopt(s0)
