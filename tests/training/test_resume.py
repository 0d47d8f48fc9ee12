"""Exact resume: a run killed anywhere and restarted with the same command ends bitwise equal.

Each scenario runs the same recipe twice from scratch in separate processes: once without
interruption, once interrupted (SIGKILL, or SIGINT then SIGKILL) at a random step after the
first checkpoint and started again with the same command. The metrics and step records (every
line, byte for byte) and the final weights must be equal, which also shows that two runs with
the same recipe and seed are identical.
"""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import time
from pathlib import Path

import pytest
from safetensors.torch import load_file

from .tiny_recipes import ENV, MULTITASK, SINGLE, run, train_cmd, write_recipe

SEED = int(os.environ.get("PUREML_TEST_SEED", time.time_ns() % 10_000))


def lines(path: Path) -> int:
    try:
        return path.read_bytes().count(b"\n")
    except FileNotFoundError:
        return 0


def start_and_wait(recipe: Path, out: Path, step: int) -> subprocess.Popen:
    """Start training and return once metrics.jsonl has ``step`` lines."""
    proc = subprocess.Popen(
        train_cmd(recipe), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, env=ENV
    )
    deadline = time.monotonic() + 300
    while lines(out / "metrics.jsonl") < step:
        if proc.poll() is not None:
            raise AssertionError(f"training ended early ({proc.returncode}): {proc.stderr.read()}")
        assert time.monotonic() < deadline, "training too slow"
        time.sleep(0.05)
    return proc


def assert_same_run(a: Path, b: Path) -> None:
    for name in ("metrics.jsonl", "steps.jsonl", "metrics.csv"):
        la, lb = (a / name).read_text().splitlines(), (b / name).read_text().splitlines()
        assert len(la) == len(lb), name
        for i, (x, y) in enumerate(zip(la, lb)):
            assert x == y, f"{name} line {i + 1} differs:\n{x}\n{y}"
    wa = load_file(str(a / "model-last" / "model.safetensors"))
    wb = load_file(str(b / "model-last" / "model.safetensors"))
    assert wa.keys() == wb.keys()
    for k in wa:
        assert wa[k].equal(wb[k]), k


@pytest.fixture(scope="module")
def single_reference(tmp_path_factory, corpus):
    folder = tmp_path_factory.mktemp("single-ref")
    recipe = write_recipe(SINGLE, folder, corpus, folder / "out")
    run(recipe)
    return folder / "out"


def test_sigkill_then_same_command_resumes_bitwise(tmp_path, corpus, single_reference):
    rng = random.Random(SEED)
    kill_at = rng.randint(21, 56)
    out = tmp_path / "out"
    recipe = write_recipe(SINGLE, tmp_path, corpus, out)
    proc = start_and_wait(recipe, out, kill_at)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert lines(out / "metrics.jsonl") < 60, "finished before the kill"
    again = run(recipe)
    assert (
        "resuming from" in again.stderr
        and "step-000020" in again.stderr
        or "step-000040" in again.stderr
    ), again.stderr
    assert_same_run(single_reference, out), f"seed {SEED}, killed after step {kill_at}"
    records = [json.loads(x) for x in (out / "steps.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records] == list(range(1, 61))
    assert all("params" in r for r in records if r["step"] % 10 == 0)


def test_multitask_sigint_checkpoints_then_sigkill_resumes_bitwise(tmp_path_factory, corpus):
    rng = random.Random(SEED + 1)
    ref_folder = tmp_path_factory.mktemp("multi-ref")
    ref = write_recipe(MULTITASK, ref_folder, corpus, ref_folder / "out")
    run(ref)
    folder = tmp_path_factory.mktemp("multi")
    out = folder / "out"
    recipe = write_recipe(MULTITASK, folder, corpus, out)
    # Ctrl-C: a checkpoint at the current step, a clean exit
    proc = start_and_wait(recipe, out, rng.randint(21, 30))
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode in (0, 130), err
    assert "checkpoint written at step" in err, err
    step = max(int(p.name.split("-")[1]) for p in (out / "checkpoints").iterdir())
    assert step == lines(out / "metrics.jsonl") and step % 20 != 0 or step == 40
    # model-last follows the checkpoints (EDS-NLP saves "on schedule"): the stopped run leaves
    # a model to evaluate, with the checkpoint's weights
    model = load_file(str(out / "model-last" / "model.safetensors"))
    state = load_file(str(out / "checkpoints" / f"step-{step:06d}" / "state" / "state.safetensors"))
    params = {k.removeprefix("params."): v for k, v in state.items() if k.startswith("params.")}
    assert params and all(model[k].equal(v) for k, v in params.items())
    # then a hard kill later on, and the same command again
    proc = start_and_wait(recipe, out, rng.randint(step + 2, 57))
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    again = run(recipe)
    assert "resuming from" in again.stderr
    assert_same_run(ref_folder / "out", out)
    # both heads trained from both streams, and validation scored both tasks
    record = json.loads((out / "steps.jsonl").read_text().splitlines()[-1])
    assert set(record["streams"]) == {"ner", "status"} and set(record["losses"]) == {
        "ner",
        "status",
    }
    last = json.loads((out / "metrics.jsonl").read_text().splitlines()[-1])
    assert {"ner", "span_attributes"} <= set(last["validation"])


def test_other_recipe_is_refused_and_restart_starts_over(single_reference, tmp_path):
    import shutil

    out = tmp_path / "out"
    shutil.copytree(single_reference, out)
    recipe_text = (single_reference / "config.toml").read_text()
    recipe = tmp_path / "recipe.toml"
    recipe.write_text(recipe_text.replace(str(single_reference), str(out)))
    before = sorted((p.relative_to(out), p.stat().st_mtime_ns) for p in out.rglob("*"))
    refused = run(recipe, "--set", "train.seed=7", check=False)
    assert refused.returncode == 2
    assert refused.stderr.startswith(
        f"error: {out} holds checkpoints of a different recipe (differs in train.seed)"
    )
    assert sorted((p.relative_to(out), p.stat().st_mtime_ns) for p in out.rglob("*")) == before
    # the resolved config.toml is itself a recipe: the same command resumes (nothing left to do)
    same = run(recipe)
    assert "resuming from" in same.stderr and "step-000060" in same.stderr
    restarted = run(recipe, "--restart", "--set", "train.seed=7", "--set", "train.max_steps=3")
    assert "resuming" not in restarted.stderr
    assert [json.loads(x)["step"] for x in (out / "metrics.jsonl").read_text().splitlines()] == [
        1,
        2,
        3,
    ]
    assert sorted(p.name for p in (out / "checkpoints").iterdir()) == ["step-000003"]


def test_corrupted_checkpoint_is_skipped_for_the_previous_one(single_reference, tmp_path):
    import shutil

    out = tmp_path / "out"
    shutil.copytree(single_reference, out)
    recipe = tmp_path / "recipe.toml"
    recipe.write_text(
        (single_reference / "config.toml").read_text().replace(str(single_reference), str(out))
    )
    state = out / "checkpoints" / "step-000060" / "state" / "state.safetensors"
    data = bytearray(state.read_bytes())
    data[-5] ^= 0xFF
    state.write_bytes(bytes(data))
    shutil.rmtree(out / "model-last")
    again = run(recipe)
    assert "warning: skipping corrupted checkpoint" in again.stderr
    assert "checksum mismatch in state/state.safetensors" in again.stderr
    assert "resuming from" in again.stderr and "step-000040" in again.stderr
    assert_same_run(single_reference, out)


def test_per_tensor_params_run_resumes_bitwise(tmp_path_factory, corpus):
    # train.flat_params = false: one tensor per parameter and moment instead of the default
    # flat buckets; a checkpoint holds them by name either way, and the resumed run rebuilds
    # the per-tensor step (config.toml records the choice).
    per_tensor = SINGLE.replace("compile = false", "compile = false\nflat_params = false")
    assert per_tensor != SINGLE
    ref_dir, out_dir = tmp_path_factory.mktemp("tensor-ref"), tmp_path_factory.mktemp("tensor")
    run(write_recipe(per_tensor, ref_dir, corpus, ref_dir / "out"))
    assert "flat_params = false" in (ref_dir / "out" / "config.toml").read_text()
    out = out_dir / "out"
    recipe = write_recipe(per_tensor, out_dir, corpus, out)
    proc = start_and_wait(recipe, out, random.Random(SEED).randint(21, 56))
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    again = run(recipe)
    assert "resuming from" in again.stderr, again.stderr
    assert_same_run(ref_dir / "out", out), f"seed {SEED}"


def test_other_validation_checkpoint_and_scoring_settings_resume_to_the_same_weights(
    single_reference, tmp_path
):
    """What a run observes (when it validates and checkpoints, what it keeps, how and on what
    it scores) is not what it computes: changing it resumes, and the weights end the same."""
    import shutil

    out = tmp_path / "out"
    shutil.copytree(single_reference, out)
    for later in ("step-000040", "step-000060"):
        shutil.rmtree(out / "checkpoints" / later)
    recipe = tmp_path / "recipe.toml"
    recipe.write_text(
        (single_reference / "config.toml").read_text().replace(str(single_reference), str(out))
    )
    changed = (
        "train.validation_interval=25",
        "train.checkpoint_interval=15",
        "train.keep_checkpoints=1",
        "train.log_interval=2",
        "val_data.n_dev=5",
    )
    again = run(recipe, *(a for c in changed for a in ("--set", c)))
    assert "resuming from" in again.stderr and "step-000020" in again.stderr, again.stderr
    assert sorted(p.name for p in (out / "checkpoints").iterdir()) == ["step-000060"]
    wa = load_file(str(single_reference / "model-last" / "model.safetensors"))
    wb = load_file(str(out / "model-last" / "model.safetensors"))
    assert wa.keys() == wb.keys() and all(wa[k].equal(wb[k]) for k in wa)
    # a key that changes the weights is still refused
    refused = run(recipe, "--set", "optimizer.learning_rate=1e-3", check=False)
    assert refused.returncode == 2 and "differs in optimizer.learning_rate" in refused.stderr


def test_a_python_run_resumes_with_a_new_pipeline_or_the_same_one(tmp_path, capsys):
    """train() from Python (no recipe: the hash covers the components' config, labels read
    from the data included): a new process's pipeline, or the very object trained before."""
    import shutil

    import torch

    from pureml import TrainingData, train
    from pureml.nlp import NerCrf, Pipeline, ScratchEncoder
    from pureml.nlp.synthetic import write_corpus
    from pureml.stream import read_standoff

    corpus = write_corpus(tmp_path / "corpus", seed=0, splits={"train": 16})["train"]

    def pipeline():
        torch.manual_seed(0)
        return Pipeline({"embedding": ScratchEncoder(width=16, depth=1), "ner": NerCrf()})

    def go(nlp, out):
        data = TrainingData(read_standoff(corpus), batch_size="200 words")
        train(nlp, data, max_steps=4, checkpoint_interval=2, compile=False, logger=["json"],
              output_dir=out)  # fmt: skip

    first = pipeline()
    go(first, tmp_path / "ref")
    reference = load_file(str(tmp_path / "ref" / "model-last" / "model.safetensors"))
    for name, nlp in (("new", pipeline()), ("same", first)):
        out = tmp_path / name
        shutil.copytree(tmp_path / "ref", out)
        shutil.rmtree(out / "checkpoints" / "step-000004")
        capsys.readouterr()
        go(nlp, out)  # refused as "a different recipe" before
        assert "resuming from" in capsys.readouterr().err, name
        weights = load_file(str(out / "model-last" / "model.safetensors"))
        assert all(weights[k].equal(v) for k, v in reference.items()), name
        assert len((out / "metrics.jsonl").read_text().splitlines()) == 4


def test_a_python_run_with_its_own_optimizer_resumes_and_a_changed_one_is_named(tmp_path, capsys):
    """The run's identity describes the optimizer by its factories and arguments: another
    object built alike (a new lambda, a new adamw) resumes; another rate is refused by key."""
    import shutil

    import torch

    from pureml import TrainingData, optim, train
    from pureml.nlp import NerCrf, Pipeline, ScratchEncoder
    from pureml.nlp.synthetic import write_corpus
    from pureml.stream import read_standoff
    from pureml.training.trainer import RunDirError

    corpus = write_corpus(tmp_path / "corpus", seed=0, splits={"train": 16})["train"]

    def groups(lr):  # EDS-NLP's idiom: regex groups, each with its schedule
        return lambda names, total: optim.param_groups(
            {r"^embedding\.": {"lr": lr, "schedule": {"name": "linear", "warmup_rate": 0.1}}},
            default={"lr": 3e-3},
            names=names,
            total_steps=total,
        )

    def go(out, optimizer, max_steps):
        torch.manual_seed(0)
        nlp = Pipeline({"embedding": ScratchEncoder(width=16, depth=1), "ner": NerCrf()})
        data = TrainingData(read_standoff(corpus), batch_size="200 words")
        train(nlp, data, max_steps=max_steps, checkpoint_interval=2, compile=False,
              logger=["json"], output_dir=out, optimizer=optimizer)  # fmt: skip

    kept = []  # alive, so that no two optimizers share a memory address
    for name, make, changed, key in (
        ("groups", groups, 2e-3, 'optimizer.builds.groups."^embedding\\\\.".optimizer.'
         "learning_rate.max"),
        ("object", optim.adamw, 2e-3, "optimizer.learning_rate"),
    ):  # fmt: skip
        out = tmp_path / name
        kept.append(make(1e-3))
        go(out, kept[-1], 4)
        shutil.rmtree(out / "checkpoints" / "step-000004")
        capsys.readouterr()
        kept.append(make(1e-3))
        go(out, kept[-1], 4)  # refused as "a different recipe", the repr's address differing
        assert "resuming from" in capsys.readouterr().err, name
        with pytest.raises(RunDirError) as e:
            go(out, make(changed), 4)
        assert str(e.value) == (
            f"{out} holds checkpoints of a different recipe (differs in {key}): pass "
            "--restart (restart=True) to start over there, or choose another train.output_dir"
        )


def test_resume_with_another_validation_interval_drops_the_stopped_runs_later_validations(
    tmp_path, corpus
):
    """validation/ lists the validations the logs have: a file a stopped run wrote after the
    checkpoint resumed from goes, even when the resumed run no longer validates at that step."""
    import shutil

    from pureml.stream import read_standoff

    from .tiny_recipes import tiny_pipeline, train_tiny

    out = tmp_path / "out"
    dev = read_standoff(corpus / "dev")
    train_tiny(tiny_pipeline(), corpus / "train", out, max_steps=8, val_data=dev,
               checkpoint_interval=4, validation_interval=3)  # fmt: skip
    assert sorted(p.name for p in (out / "validation").iterdir()) == [
        "step-000003.json",
        "step-000006.json",
        "step-000008.json",
    ]
    shutil.rmtree(out / "checkpoints" / "step-000008")  # as if stopped after step 8's validation
    train_tiny(tiny_pipeline(), corpus / "train", out, max_steps=8, val_data=dev,
               checkpoint_interval=4, validation_interval=10)  # fmt: skip
    logged = [
        json.loads(line)["step"]
        for line in (out / "metrics.jsonl").read_text().splitlines()
        if "validation" in json.loads(line)
    ]
    assert logged == [3, 8]
    assert sorted(p.name for p in (out / "validation").iterdir()) == [
        "step-000003.json",
        "step-000008.json",
    ]


def _same_doc(doc):
    return doc


def _same_doc_too(doc):
    return doc


def test_resume_names_changed_files_and_functions_and_old_checkpoints_say_nothing(tmp_path, capsys):
    """Same number of documents, so the position still fits: an edited file or another map
    function is a warning per change, naming the stream's key path; a checkpoint from before
    these were recorded resumes as it always did."""
    import shutil

    from pureml import TrainingData, train
    from pureml.nlp.synthetic import write_corpus
    from pureml.stream import read_standoff
    from pureml.training.checkpoint import MANIFEST, META, _sha256

    from .tiny_recipes import tiny_pipeline

    corpus = write_corpus(tmp_path / "corpus", seed=0, splits={"train": 16})["train"]

    def go(fn, out):
        data = TrainingData(read_standoff(corpus).map(fn), batch_size="200 words", name="ner")
        capsys.readouterr()
        train(tiny_pipeline(), data, max_steps=4, checkpoint_interval=2, compile=False,
              logger=["json"], save_model=False, output_dir=out)  # fmt: skip
        return capsys.readouterr().err

    def stopped_after_step_2(name):
        out = tmp_path / name
        shutil.copytree(tmp_path / "ref", out)
        shutil.rmtree(out / "checkpoints" / "step-000004")
        return out

    go(_same_doc, tmp_path / "ref")
    reference = (tmp_path / "ref" / "steps.jsonl").read_text()
    assert '"source"' not in reference  # records keep positions only, whatever the file count

    old = stopped_after_step_2("old")
    folder = old / "checkpoints" / "step-000002"
    meta = json.loads((folder / META).read_text())
    for key in ("source", "functions"):
        del meta["streams"]["ner"][key]
    (folder / META).write_text(json.dumps(meta))
    manifest = json.loads((folder / MANIFEST).read_text())
    (folder / MANIFEST).write_text(json.dumps({**manifest, META: _sha256(folder / META)}))
    err = go(_same_doc, old)
    assert "resuming from" in err and "warning" not in err
    assert (old / "steps.jsonl").read_text() == reference

    edited = stopped_after_step_2("edited")
    txt = corpus / "note-0003.txt"
    size = txt.stat().st_size
    txt.write_text(txt.read_text() + " Seen.")
    err = go(_same_doc_too, edited)
    where = "warning: train_data.ner changed since step-000002: "
    assert [line for line in err.splitlines() if line.startswith("warning")] == [
        f"{where}file note-0003.txt changed size ({size} -> {size + 6} bytes)",
        f"{where}map function was {__name__}._same_doc, now {__name__}._same_doc_too",
        "warning: train_data.ner: resuming at the saved data position anyway, which may now "
        "stand for other documents; pass --restart (restart=True) to start over there, or "
        "choose another train.output_dir",
    ]
    # later checkpoints record the data as resumed: resuming from them says nothing again
    meta = json.loads((edited / "checkpoints" / "step-000004" / META).read_text())
    assert meta["streams"]["ner"]["source"]["files"]["note-0003.txt"][0] == size + 6
