"""Data parallelism end to end: torchrun with two CPU (gloo) ranks on a shrunken quickstart.

Every launch costs ~15 s of imports on a loaded 2-core machine, so the runs are shared: one
uninterrupted 2-rank run and one 1-process "2 splits" run (started together), then the kill and
the world-size-change resume reuse them as references. Ranks report through
PUREML_RANK_TRACE files (pid, doc ids per step), never through interleaved stdout.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from torchrun_launch import clean_env, launcher

ROOT = Path(__file__).resolve().parents[2]
RECIPE = ROOT / "recipes" / "quickstart.toml"
STEPS = 30


def _overrides(out: Path, corpus: Path, *extra: str) -> list[str]:
    sets = [
        f"train.max_steps={STEPS}",
        f"train.output_dir={out}",
        f"paths.corpus={corpus}",  # one corpus for every run: same recipe hash, same data
        "train.compile=false",
        "train.checkpoint_interval=10",
        f"train.validation_interval={STEPS}",
        'train.logger=["json"]',
        "nlp.components.embedding.width=16",
        "nlp.components.embedding.depth=1",
        "train_data.notes.data.n_train=40",
        "train_data.notes.data.n_dev=10",
        "val_data.n_train=40",
        "val_data.n_dev=10",
        'train_data.notes.batch_size="250 words"',
        *extra,
    ]
    return [a for s in sets for a in ("--set", s)]


def _command(nproc: int, out: Path, corpus: Path, *extra: str) -> list[str]:
    return [*launcher(nproc), "-m", "pureml.train", str(RECIPE), *_overrides(out, corpus, *extra)]


def _env(trace: Path, sleep_s: float = 0.0) -> dict[str, str]:
    env = clean_env(PUREML_RANK_TRACE=str(trace))
    if sleep_s:
        env["PUREML_RANK_TRACE_SLEEP"] = str(sleep_s)
    return env


def _start(cmd: list[str], env: dict[str, str], log: Path) -> subprocess.Popen:
    return subprocess.Popen(cmd, env=env, cwd=ROOT, stdout=log.open("w"), stderr=subprocess.STDOUT)


def _finish(proc: subprocess.Popen, log: Path, timeout: float = 240) -> str:
    rc = proc.wait(timeout=timeout)
    text = log.read_text()
    assert rc == 0, text[-3000:]
    return text


def _trace(folder: Path, rank: int) -> dict[int, dict]:
    lines = (folder / f"rank{rank}.jsonl").read_text().splitlines()
    return {r["step"]: r for r in map(json.loads, lines) if "step" in r}


def _start_fingerprints(folder: Path, rank: int) -> list[str]:
    lines = (folder / f"rank{rank}.jsonl").read_text().splitlines()
    return [r["fingerprint"] for r in map(json.loads, lines) if r.get("event") == "start"]


def _steps(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "steps.jsonl").read_text().splitlines()]


def _params(out: Path, step: int = STEPS) -> dict[str, torch.Tensor]:
    flat = load_file(out / "checkpoints" / f"step-{step:06d}" / "state" / "state.safetensors")
    return {k: v for k, v in flat.items() if k.startswith("params.")}


def _max_rel_diff(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> float:
    assert a.keys() == b.keys() and a
    return max(((a[k] - b[k]).abs().max() / a[k].abs().max().clamp_min(1e-12)).item() for k in a)


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """An uninterrupted 2-rank run and a 1-process run with each batch split in two."""
    from pureml.training.build import quickstart_corpus

    base = tmp_path_factory.mktemp("dp")
    corpus = base / "corpus"
    len(quickstart_corpus(str(corpus), "train", n_train=40, n_dev=10).source)  # written once
    r = {"base": base, "corpus": corpus}
    procs = {}
    for name, nproc, extra in (
        ("two", 2, ()),
        ("one", 1, ('train_data.notes.sub_batch_size="2 splits"',)),
    ):
        r[name], r[name + "_trace"], r[name + "_log"] = (
            base / name,
            base / f"{name}_trace",
            base / f"{name}.log",
        )
        cmd = _command(nproc, r[name], corpus, *extra)
        procs[name] = _start(cmd, _env(r[name + "_trace"]), r[name + "_log"])
    for name, proc in procs.items():
        r[name + "_output"] = _finish(proc, r[name + "_log"])
    return r


def test_two_ranks_equal_one_process_with_two_splits(runs):
    assert _max_rel_diff(_params(runs["one"]), _params(runs["two"])) <= 1e-5
    one = _steps(runs["one"])
    ranks = [_trace(runs["two_trace"], r) for r in (0, 1)]
    assert len(one) == STEPS and all(sorted(t) == list(range(1, STEPS + 1)) for t in ranks)
    for record in one:
        step = record["step"]
        parts = [set(t[step]["doc_ids"]) for t in ranks]
        assert all(parts), f"step {step}: a rank got no documents"
        assert not parts[0] & parts[1], f"step {step}: ranks share documents"
        assert parts[0] | parts[1] == set(record["streams"]["notes"]["doc_ids"])
        # rank 1's sub-batch is the single process's second one: dropout key index 1
        assert [t[step]["first_index"] for t in ranks] == [0, 1]
    # the records say how many processes shared each batch, and diff says so first
    assert {r.get("world_size") for r in _steps(runs["two"])} == {2}
    assert all("world_size" not in r for r in one)
    from click.testing import CliRunner

    from pureml.cli import main

    diff = CliRunner().invoke(main, ["diff", str(runs["one"]), str(runs["two"])])
    assert diff.exit_code == 1, diff.output
    lines = diff.stdout.splitlines()
    assert lines[0].startswith("first difference at step 1: world_size, batch"), diff.stdout
    assert lines[1].startswith("  trained by 1 vs 2 processes: each record holds rank 0's share")


def test_only_rank_zero_writes(runs):
    out = runs["two"]
    # one line per step: rank 1 would have doubled (or interleaved) these files
    assert len(_steps(out)) == STEPS
    assert len((out / "metrics.jsonl").read_text().splitlines()) == STEPS
    assert runs["two_output"].count("saved the pipeline") == 1
    assert (out / "model-last" / "model.safetensors").exists()
    meta = json.loads((out / "checkpoints" / "step-000020" / "trainer.json").read_text())
    assert meta["world_size"] == 2 and meta["step"] == 20
    # stream positions are global (shard moves no boundary), so one copy serves every rank
    assert meta["streams"]["notes"]["offset"] > 0


def test_same_initial_parameters_checked_on_every_rank(runs):
    # the trainer compares these with check_same_everywhere before the first step; they are
    # also the single process's: the initial state does not depend on the world size
    (fp,) = _start_fingerprints(runs["one_trace"], 0)
    assert _start_fingerprints(runs["two_trace"], 0) == _start_fingerprints(runs["two_trace"], 1)
    assert _start_fingerprints(runs["two_trace"], 0) == [fp]


def test_kill_one_rank_then_resume_ends_where_uninterrupted_run_ends(runs):
    out, trace = runs["base"] / "killed", runs["base"] / "killed_trace"
    log = runs["base"] / "killed.log"
    proc = _start(_command(2, out, runs["corpus"]), _env(trace, sleep_s=0.25), log)
    deadline = time.monotonic() + 180
    rank1 = trace / "rank1.jsonl"
    while time.monotonic() < deadline and proc.poll() is None:
        if rank1.exists() and len(rank1.read_text().splitlines()) >= 13:
            break
        time.sleep(0.05)
    assert proc.poll() is None, "the run ended before it could be killed:\n" + log.read_text()
    os.kill(int((trace / "rank1.pid").read_text()), signal.SIGKILL)
    killed_at = time.monotonic()
    rc = proc.wait(timeout=90)
    exit_s = time.monotonic() - killed_at
    (runs["base"] / "kill_exit_s.txt").write_text(f"{exit_s:.2f} rc={rc}")
    assert rc != 0
    assert exit_s < 60
    assert "exitcode  : -9" in log.read_text() or "Signal 9" in log.read_text()
    assert not (out / "checkpoints" / f"step-{STEPS:06d}").exists()

    shutil.rmtree(trace)
    log = runs["base"] / "resumed.log"
    text = _finish(_start(_command(2, out, runs["corpus"]), _env(trace), log), log)
    assert "resuming from" in text
    resumed_from = min(_trace(trace, 0))
    assert resumed_from in (11, 21)
    uninterrupted = _params(runs["two"])
    resumed = _params(out)
    assert all(torch.equal(uninterrupted[k], resumed[k]) for k in uninterrupted)
    assert [r["batch"] for r in _steps(out)] == [r["batch"] for r in _steps(runs["two"])]


def test_resume_two_rank_checkpoint_in_one_process_reshards(runs):
    """World size is not part of the checkpoint: one process resumes a 2-rank run and trains on
    the same global batches from the same position (dropout masks follow the new layout)."""
    out = runs["base"] / "reshard"
    shutil.copytree(runs["two"], out, ignore=shutil.ignore_patterns("model-last"))
    shutil.rmtree(out / "checkpoints" / f"step-{STEPS:06d}")
    trace = runs["base"] / "reshard_trace"
    log = runs["base"] / "reshard.log"
    text = _finish(_start(_command(1, out, runs["corpus"]), _env(trace), log), log)
    assert "checkpoint written with 2 processes, resuming with 1" in text
    alone = _trace(trace, 0)
    assert sorted(alone) == list(range(21, STEPS + 1))
    two = [_trace(runs["two_trace"], r) for r in (0, 1)]
    for step, record in alone.items():
        assert record["doc_ids"] == two[0][step]["doc_ids"] + two[1][step]["doc_ids"]
        assert record["first_index"] == 0
    # steps 21.. follow checkpoint 20 in one process's layout: one process replays them
    replayed = _replay(1, out, 25)
    assert replayed.returncode == 0, replayed.stdout[-2000:] + replayed.stderr[-3000:]
    assert "all 5 steps (21..25) match the record bit for bit" in replayed.stdout
    # without the checkpoints before step 21, a replay of 25 would run steps 1..20 (2 ranks'
    # layout) and 21..25 (one process's) alike: refused, rather than a MISMATCH at step 1
    gone = runs["base"] / "reshard_gone"
    shutil.copytree(out, gone, ignore=shutil.ignore_patterns("model-last"))
    for step in (10, 20):
        shutil.rmtree(gone / "checkpoints" / f"step-{step:06d}", ignore_errors=True)
    from pureml.replay.rebuild import RebuiltRun
    from pureml.replay.replay import ReplayError

    with pytest.raises(ReplayError, match=r"steps 1\.\.25 of .* were not all trained by as many"):
        RebuiltRun(gone).target_step(25)


def _replay(nproc: int, run: Path, step: int, *extra: str) -> subprocess.CompletedProcess:
    cmd = [*launcher(nproc), "-m", "pureml.cli", "replay", str(run), "--step", str(step), *extra]
    env = _env(run.parent / f"replay{nproc}_trace")
    return subprocess.run(cmd, env=env, cwd=ROOT, capture_output=True, text=True, timeout=240)


def test_replay_of_a_two_rank_run_needs_two_ranks_and_then_matches(runs):
    # steps.jsonl holds rank 0's share of each batch: one process cannot replay it bit for bit,
    # and says so instead of reporting a mismatch at the first step
    alone = _replay(1, runs["two"], 25)
    assert alone.returncode == 2, alone.stdout + alone.stderr
    assert "was trained by 2 processes, this replay runs 1" in alone.stderr
    assert "torchrun --nproc_per_node 2 -m pureml.cli replay" in alone.stderr
    assert "MISMATCH" not in alone.stdout
    # two ranks replay it from the checkpoint before the step; rank 0 alone reports
    dump = runs["base"] / "dump"
    both = _replay(2, runs["two"], 25, "--dump", str(dump))
    assert both.returncode == 0, both.stdout[-2000:] + both.stderr[-3000:]
    assert both.stdout.count("replaying ") == 1
    assert "all 5 steps (21..25) match the record bit for bit" in both.stdout
    # the dump is rank 0's share, as steps.jsonl records it (every rank wrote there, and the
    # last writer's documents came with the other rank's tensors)
    batch = json.loads((dump / "batch.json").read_text())
    (record,) = [r for r in _steps(runs["two"]) if r["step"] == 25]
    assert batch["batch"] == record["batch"]
    assert batch["streams"]["notes"]["doc_ids"] == record["streams"]["notes"]["doc_ids"]


def test_two_streams_on_two_ranks_equal_one_process_with_two_splits(tmp_path):
    # Each sub-batch's dropout key follows its index in one process's order (stream after
    # stream). Ranks numbered theirs rank-major, so with two streams rank 0's second stream
    # took the key of the first stream's second split: with dropout on, step 1's loss was
    # 2.2254 on 2 ranks against 2.1881 in 1 process (the QA report), off by 2%.
    from training.tiny_recipes import tiny_template, write_recipe

    from pureml.nlp.synthetic import write_corpus

    corpus = tmp_path / "corpus"
    write_corpus(corpus, seed=0, splits={"train": 40, "dev": 10})
    template = tiny_template(multitask=True, max_steps=3, validate=False, logger=["json"])
    # batches large enough that every rank gets documents of both streams at every step
    two = template.replace('sub_batch_size = "12 spans"\n', "").replace('"24 spans"', '"60 spans"')
    one = two.replace('pipe_names = ["ner"]', 'pipe_names = ["ner"]\nsub_batch_size = "2 splits"')
    one = one.replace(
        'pipe_names = ["status"]', 'pipe_names = ["status"]\nsub_batch_size = "2 splits"'
    )
    losses = {}
    for name, nproc, text in (("two", 2, two), ("one", 1, one)):
        (tmp_path / name).mkdir()
        recipe = write_recipe(text, tmp_path / name, corpus, tmp_path / name / "out")
        proc = subprocess.run(
            [*launcher(nproc), "-m", "pureml.train", str(recipe)],
            cwd=ROOT,
            env=clean_env(),
            capture_output=True,
            text=True,
            timeout=240,
        )
        assert proc.returncode == 0, proc.stderr[-3000:]
        lines = (tmp_path / name / "out" / "metrics.jsonl").read_text().splitlines()
        losses[name] = [json.loads(line)["loss"] for line in lines]
    assert len(losses["one"]) == 3
    for a, b in zip(losses["one"], losses["two"], strict=True):
        assert abs(a - b) <= 1e-5 * abs(a), losses
