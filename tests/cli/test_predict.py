"""pureml predict: a saved pipeline annotates a folder or a JSONL file, written whole or not at all."""

from __future__ import annotations

import json
import shutil

import pytest
from click.testing import CliRunner

from pureml.cli import main
from pureml.nlp import Doc, load
from pureml.stream import read_jsonl, read_standoff


@pytest.fixture(scope="module")
def model(tmp_path_factory, corpus):
    from training.tiny_recipes import tiny_template

    folder = tmp_path_factory.mktemp("predict")
    recipe = folder / "recipe.toml"
    template = tiny_template(multitask=True, max_steps=40, checkpoint_interval=None, validate=False)
    # the status of what the NER head finds, as the quickstart does
    template = template.replace(
        'attributes = ["status"]', 'attributes = ["status"]\nspan_getter = ["gold", "ents"]'
    )
    recipe.write_text(template.format(corpus=corpus, out=folder / "out"))
    result = CliRunner().invoke(main, ["train", str(recipe)])
    assert result.exit_code == 0, result.output
    return folder / "out" / "model-last"


def _spans(docs, group):
    return {
        d.id: sorted(
            (s.start, s.end, s.label, tuple(sorted(s.attributes.items()))) for s in d.spans[group]
        )
        for d in docs
    }


def _predict(*args):
    return CliRunner().invoke(main, ["predict", *map(str, args)])


def test_predict_writes_what_the_pipeline_predicts_as_brat_and_jsonl(model, corpus, tmp_path):
    result = _predict(model, corpus / "dev", tmp_path / "pred")
    assert result.exit_code == 0, result.output
    # what the pipeline predicts on the bare texts, in Python
    nlp = load(model)
    expected = _spans(nlp.pipe(Doc(d.text, id=d.id) for d in read_standoff(corpus / "dev")), "ents")
    assert sum(map(len, expected.values())) > 0, "the tiny model predicts nothing: a vacuous test"
    written = _spans(read_standoff(tmp_path / "pred"), "gold")
    assert written == expected
    assert result.stdout.startswith(
        f"wrote 10 documents ({sum(map(len, expected.values()))} spans)"
    )
    assert not (tmp_path / "pred" / "MANIFEST.json").exists()
    # the gold annotations of the input are not copied through: the model's own scores on its
    # predictions are perfect, which they would not be if any gold span had leaked in
    scores = CliRunner().invoke(main, ["evaluate", str(model), str(tmp_path / "pred"), "--json"])
    assert json.loads(scores.stdout)["ner"]["micro"]["f1"] == 1.0
    assert json.loads(scores.stdout)["span_attributes"]["status"]["micro"]["f1"] == 1.0

    result = _predict(model, corpus / "dev", tmp_path / "pred.jsonl")
    assert result.exit_code == 0, result.output
    assert _spans(read_jsonl(tmp_path / "pred.jsonl"), "gold") == expected


def test_predict_reads_plain_texts_and_jsonl(model, corpus, tmp_path):
    plain = tmp_path / "plain"
    plain.mkdir()
    for txt in (corpus / "dev").glob("*.txt"):  # no .ann: notes nobody annotated yet
        shutil.copy(txt, plain / txt.name)
    assert _predict(model, plain, tmp_path / "a").exit_code == 0
    assert _predict(model, corpus / "dev", tmp_path / "b").exit_code == 0
    from pureml.stream import write_jsonl

    write_jsonl(read_standoff(corpus / "dev"), tmp_path / "dev.jsonl")
    assert _predict(model, tmp_path / "dev.jsonl", tmp_path / "c.jsonl").exit_code == 0
    a = _spans(read_standoff(tmp_path / "a"), "gold")
    assert a == _spans(read_standoff(tmp_path / "b"), "gold")
    assert a == _spans(read_jsonl(tmp_path / "c.jsonl"), "gold")


def test_predict_refuses_to_harm_an_existing_folder_or_its_input(model, corpus, tmp_path):
    out = tmp_path / "pred"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    result = _predict(model, corpus / "dev", out)
    assert result.exit_code == 2
    assert result.stderr == f"error: {out}: already exists: pass --overwrite (overwrite=True)\n"
    assert [p.name for p in out.iterdir()] == ["keep.txt"]

    result = _predict(model, corpus / "dev", corpus / "dev" / "pred", "--overwrite")
    assert result.exit_code == 2
    assert "would overlap the input" in result.stderr
    result = _predict(model, corpus / "dev", corpus, "--overwrite")
    assert result.exit_code == 2 and "would overlap the input" in result.stderr
    assert (corpus / "dev").is_dir() and not (corpus / "dev" / "pred").exists()

    result = _predict(model, corpus / "dev", out, "--batch-size", "2000 wrds")
    assert result.exit_code == 2 and result.stderr.startswith("error: ")
    assert len(result.stderr.splitlines()) == 1

    result = _predict(model, corpus / "dev", out, "--overwrite")
    assert result.exit_code == 0, result.output
    assert sorted(p.suffix for p in out.iterdir()) == [".ann"] * 10 + [".txt"] * 10
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")], "temporaries left"


def test_an_interrupted_predict_leaves_the_previous_output(model, corpus, tmp_path, monkeypatch):
    from pureml.training import predict as predict_mod

    out = tmp_path / "pred"
    predict_mod.predict(model, corpus / "dev", out)
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    real = predict_mod.write_standoff

    def dies_midway(docs, path, **kwargs):
        real((d for i, d in enumerate(docs) if i < 3 or _raise()), path, **kwargs)

    def _raise():
        raise KeyboardInterrupt

    monkeypatch.setattr(predict_mod, "write_standoff", dies_midway)
    with pytest.raises(KeyboardInterrupt):
        predict_mod.predict(model, corpus / "dev", out, overwrite=True)
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before
    assert [p.name for p in tmp_path.iterdir()] == ["pred"]


def test_predict_never_replaces_the_model_or_a_folder_of_other_files(model, corpus, tmp_path):
    # --overwrite replaced a whole run folder (checkpoints, model-last) with brat files, or
    # the model folder it was reading (QA of pureml predict)
    run = tmp_path / "run"
    shutil.copytree(model.parent, run)
    result = _predict(run / "model-last", corpus / "dev", run, "--overwrite")
    assert result.exit_code == 2
    assert result.stderr == (
        f"error: {run}: the output would overlap the model {run / 'model-last'}: choose another "
        "output path\n"
    )
    notes = tmp_path / "notes"
    notes.mkdir()
    (notes / "a.txt").write_text("x")
    (notes / "list.csv").write_text("a")
    result = _predict(model, corpus / "dev", notes, "--overwrite")
    assert result.exit_code == 2
    assert "holds list.csv, not only .txt and .ann files" in result.stderr
    assert sorted(p.name for p in notes.iterdir()) == ["a.txt", "list.csv"]
    # a .json output is not silently a folder; .JSONL is JSON lines
    assert "written as .jsonl" in _predict(model, corpus / "dev", tmp_path / "p.json").stderr
    assert _predict(model, corpus / "dev", tmp_path / "P.JSONL").exit_code == 0
    assert (tmp_path / "P.JSONL").is_file()
    # spans: the input's are dropped before batching, so every document counted 0
    result = _predict(model, corpus / "dev", tmp_path / "q", "--batch-size", "16 spans")
    assert result.exit_code == 2
    assert result.stderr.startswith("error: --batch-size: '16 spans': predictions are batched")


def test_predict_reads_a_folder_by_what_its_sub_folders_hold(model, corpus, tmp_path):
    mixed = tmp_path / "mixed"
    shutil.copytree(corpus / "dev", mixed / "sub")
    from pureml.stream import write_jsonl

    write_jsonl(read_standoff(corpus / "dev"), mixed / "notes.jsonl")
    result = _predict(model, mixed, tmp_path / "out")
    assert result.exit_code == 2
    assert "holds both .txt (sub/" in result.stderr and "name the reader" in result.stderr
    assert _predict(model, mixed, tmp_path / "out", "--reader", "jsonl").exit_code == 0
    assert len(list(read_standoff(tmp_path / "out"))) == 10


def test_predict_removes_what_a_killed_predict_left(model, corpus, tmp_path):
    stale = tmp_path / ".tmp-pred-99999"  # SIGKILLed mid-write: its pid was in the name
    stale.mkdir()
    (stale / "a.txt").write_text("half")
    assert _predict(model, corpus / "dev", tmp_path / "pred").exit_code == 0
    assert sorted(p.name for p in tmp_path.iterdir()) == ["pred"]
