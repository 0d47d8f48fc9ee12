"""A compiled (inductor) run: bitwise replay, and ``--eager`` close to the compiled step."""

from __future__ import annotations

import json
import subprocess
import sys

from click.testing import CliRunner

from pureml.replay.cli import main as replay_cli
from pureml.replay.determinism import set_deterministic

from .conftest import ROOT


def test_inductor_step_replays_bitwise_and_eager_differs_by_less_than_1e5(inductor_run):
    # step 4, two steps after the checkpoint: the compiled step donates (writes its update
    # into its input) from the second step on, and --eager must still see step 4's input
    result = CliRunner().invoke(replay_cli, ["replay", str(inductor_run), "--step", "4", "--eager"])
    assert result.exit_code == 0, result.output
    assert "(step: inductor)" in result.output
    assert "all 2 steps (3..4) match the record bit for bit" in result.output
    rel = {}
    for line in result.output.split("relative differences:")[1].splitlines()[1:]:
        name, value = line.split()[:2]
        rel[name] = float(value)
    assert {"loss", "loss/ner", "grad_norm", "params", "update"} <= set(rel)
    assert max(rel.values()) < 1e-5, rel


def test_determinism_is_free_on_cpu_and_the_gpu_benchmark_skips() -> None:
    assert set_deterministic(True) == {"deterministic": True, "cuda": False, "late": False}
    proc = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "determinism_gpu.py")],
        capture_output=True,
        text=True,
        check=True,
    )
    last = json.loads(proc.stdout.strip().splitlines()[-1])
    assert last["benchmark"] == "determinism_gpu" and "no CUDA device" in last["skipped"]
