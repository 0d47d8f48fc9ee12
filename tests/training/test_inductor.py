"""The compiled (inductor) step resumes bitwise too: the one test here that compiles for real.

Its cost is inductor's first compile of the CRF graphs (measured on the 2-core machine: about
4 minutes with a cold cache under load, 20 s per process with a warm one).
"""

from __future__ import annotations

import shutil

import pytest

from .test_resume import assert_same_run
from .tiny_recipes import SINGLE, run, write_recipe

INDUCTOR = (
    SINGLE.replace("max_steps = 60", "max_steps = 4")
    .replace("validation_interval = 20", "validation_interval = 4")
    .replace("checkpoint_interval = 20", "checkpoint_interval = 2")
    .replace("compile = false", 'compile = true\ncompile_backend = "inductor"')
    .replace('batch_size = "250 words"\nsub_batch_size = "2 splits"', "batch_size = 1")
    # one training document: every batch has the same shapes, so each function compiles once
    .replace('split = "train", n_train = 40', 'split = "train", n_train = 1')
    # the smallest graph: compile time, not training, is what this test pays for
    .replace("depth = 1", "depth = 0")
)


@pytest.mark.slow
def test_inductor_run_resumes_bitwise(tmp_path):
    assert INDUCTOR.count("inductor") == 1 and "n_train = 1," in INDUCTOR
    ref = tmp_path / "ref"
    recipe = write_recipe(INDUCTOR, tmp_path, tmp_path / "corpus", ref)
    run(recipe)
    # a run killed after writing step 4's lines but before its checkpoint: same files, minus it
    out = tmp_path / "out"
    shutil.copytree(ref, out)
    shutil.rmtree(out / "checkpoints" / "step-000004")
    shutil.rmtree(out / "model-last")
    recipe_b = tmp_path / "b.toml"
    recipe_b.write_text(recipe.read_text().replace(str(ref), str(out)))
    again = run(recipe_b)
    assert "step-000002" in again.stderr
    assert_same_run(ref, out)
