"""A batch that makes the loss NaN or inf: the update is skipped (parameters and optimizer state
bitwise untouched), counted in the guard's state, logged with the step; training goes on."""

from __future__ import annotations

import json
import math

from safetensors.torch import load_file

from . import forkcli
from .conftest import KILL, write


def state(out, step):
    return load_file(str(out / "checkpoints" / f"step-{step:06d}" / "state" / "state.safetensors"))


def test_non_finite_loss_skips_the_update_and_training_goes_on(tmp_path, corpus):
    recipe = write(KILL, tmp_path, corpus)
    out = tmp_path / "out"
    result = forkcli.train(
        recipe,
        *("--set", "train.max_steps=10", "--set", "train.checkpoint_interval=1"),
        *("--set", "train.keep_checkpoints=20"),
        cwd=tmp_path,
        env={"PUREML_FAULT_NAN_STEPS": "5:nan,8:inf"},
    )
    assert result.code == 0, result.stderr
    logged = {
        r["step"]: r for r in map(json.loads, (out / "metrics.jsonl").read_text().split("\n")[:-1])
    }
    assert sorted(logged) == list(range(1, 11)), "training went on to the end"
    assert math.isnan(logged[5]["loss"]) and math.isinf(logged[8]["loss"])
    assert [s for s, r in logged.items() if r["skipped"]] == [5, 8]
    assert all(math.isfinite(r["loss"]) for s, r in logged.items() if s not in (5, 8))
    records = {
        r["step"]: r for r in map(json.loads, (out / "steps.jsonl").read_text().split("\n")[:-1])
    }
    assert [s for s, r in records.items() if r["skipped"]] == [5, 8]
    for bad in (5, 8):
        before, after = state(out, bad - 1), state(out, bad)
        for path in before:
            if path.startswith(("params.", "opt.")):
                assert before[path].equal(after[path]), f"step {bad} changed {path}"
        changed = [
            p
            for p in before
            if p.startswith("params.") and not before[p].equal(state(out, bad + 1)[p])
        ]
        assert changed, f"step {bad + 1} trained again"
    skips = {s: int(state(out, s)["guard.skips"]) for s in (4, 5, 7, 8, 10)}
    assert skips == {4: 0, 5: 1, 7: 1, 8: 2, 10: 2}
    weights = load_file(str(out / "model-last" / "model.safetensors"))
    assert all(bool(w.isfinite().all()) for w in weights.values() if w.is_floating_point())
