"""``pureml diff``: the first step at which two runs differ, and in what."""

from __future__ import annotations

from click.testing import CliRunner

from pureml.replay.cli import main as replay_cli
from pureml.replay.diff import diff_runs, first_difference

from .conftest import records


def test_altered_document_first_differs_at_the_step_whose_batch_holds_it(multi_run, altered_run):
    run_b, doc_id, step = altered_run
    report = diff_runs(multi_run, run_b)
    d = report.difference
    assert d is not None and d.step == step
    assert d.fields[0] == "batch" and "loss" in d.fields
    holding = [
        s
        for s in d.streams
        if doc_id in records(multi_run)[step - 1]["streams"][s.stream]["doc_ids"]
    ]
    assert holding and all(s.same_ids and s.changed == (doc_id,) for s in holding)
    # every earlier step is equal, parameters included
    assert report.compared == step
    result = CliRunner().invoke(replay_cli, ["diff", str(multi_run), str(run_b)])
    assert result.exit_code == 1
    assert result.output.splitlines()[0].startswith(f"first difference at step {step}: batch, ")
    assert f"documents that differ: {doc_id}" in result.output


def test_a_run_equals_itself(multi_run) -> None:
    result = CliRunner().invoke(replay_cli, ["diff", str(multi_run), str(multi_run)])
    assert result.exit_code == 0
    assert result.output.strip() == "identical: 8 steps, every record equal"


def _rec(step, ids, batch="b", loss="0x1p+0", params=None):
    r = {
        "step": step,
        "batch": batch,
        "loss": loss,
        "grad_norm": "0x1p-1",
        "losses": {},
        "lr": {"default": "0x1p-9"},
        "spike": False,
        "skipped": False,
        "streams": {"s": {"doc_ids": ids}},
    }
    if params:
        r["params"] = params
    return r


def test_batch_difference_names_the_documents_only_in_each_run() -> None:
    a = [_rec(1, ["d1", "d2"]), _rec(2, ["d3", "d4"], batch="x"), _rec(3, ["d5"], loss="0x1p+1")]
    b = [_rec(1, ["d1", "d2"]), _rec(2, ["d3", "d9"], batch="y"), _rec(3, ["d5"])]
    d = first_difference(a, b)
    assert d.step == 2 and d.fields == ("batch",)
    assert d.streams[0].only_a == ("d4",) and d.streams[0].only_b == ("d9",)
    # parameters are compared only where both runs recorded them
    a = [_rec(1, ["d1"], params="p"), _rec(2, ["d2"], params="q")]
    b = [_rec(1, ["d1"]), _rec(2, ["d2"], params="r")]
    assert first_difference(a, b).fields == ("params",)


def test_a_folder_that_is_not_a_run_is_one_line(multi_run, tmp_path) -> None:
    result = CliRunner().invoke(replay_cli, ["diff", str(multi_run), str(tmp_path / "nonexist")])
    assert result.exit_code == 2
    assert (
        result.output.strip()
        == f"error: {tmp_path / 'nonexist'} is not a run folder: it has no steps.jsonl"
    )
