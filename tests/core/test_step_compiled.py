"""The inductor-compiled step: equal to eager (dropout masks bitwise) and bitwise reproducible
across processes whatever batch shapes each process saw first.

Each process compiles the step with inductor (the second one mostly from inductor's cache), so
this is the expensive test of the core; everything else uses the eager backends.
"""

import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from pureml.core.step import make_step

HERE = Path(__file__).parent
sys.path.insert(0, str(HERE))
from step_model import STEP_KW, loss_fn, make_optimizer, train  # noqa: E402


def _run(tmp_path: Path, warmup: str) -> dict[str, torch.Tensor]:
    out = tmp_path / f"params-{warmup.replace(',', '-')}.safetensors"
    proc = subprocess.run(
        [sys.executable, str(HERE / "step_model.py"), str(out), warmup, "true"],
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    return load_file(out)


@pytest.mark.slow
def test_compiled_step_matches_eager_and_is_bitwise_across_processes(tmp_path):
    # Process 1 sees lengths 5, 9, 5 before training, process 2 sees 9, 5, 9: with shape-history
    # dependent kernels (torch's automatic dynamic shapes) they could round differently.
    first = _run(tmp_path, "5,9,5")
    second = _run(tmp_path, "9,5,9")
    # one gradient graph for every length, one update graph: nothing depended on shape history
    # (torch's automatic dynamic shapes would compile a static graph first: 3 graphs)
    assert int(first.pop("graphs")) == int(second.pop("graphs")) == 2
    for k in first:
        assert torch.equal(first[k], second[k]), k

    eager_state, eager_masks = train(make_step(loss_fn, make_optimizer(), compile=False, **STEP_KW))
    assert first["masks"].tolist() == eager_masks  # same dropout masks at every step
    for k, v in eager_state.params.items():
        rel = ((first[k] - v).abs().max() / v.abs().max()).item()
        assert rel < 1e-5, (k, rel)
    # training moved the parameters (the comparison is not between two untouched copies)
    from step_model import init_params

    assert not torch.allclose(eager_state.params["l1.w"], init_params()["l1.w"], atol=1e-3)
