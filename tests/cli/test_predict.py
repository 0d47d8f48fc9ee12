"""pureml predict: a saved pipeline annotates a folder or a JSONL file, written whole or not at all."""

from __future__ import annotations

import json
import shutil

import pytest
from click.testing import CliRunner

from pureml.cli import main
from pureml.nlp import Doc, Span, load
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


def test_predict_names_the_input_file_of_an_error_and_reads_no_annotation_it_drops(
    model, corpus, tmp_path, recwarn
):
    # QA: errors of the input were blamed on the output ("error: predbad:1: T1 text 'foo'
    # ..."), and a malformed .ann stopped a run that drops the input's annotations anyway
    bad = tmp_path / "bad"
    shutil.copytree(corpus / "dev", bad)
    ann = sorted(bad.glob("*.ann"))
    ann[0].write_text("T1\tproblem 0 3\tfoo\n", encoding="utf-8")
    ann[1].write_text(ann[1].read_text(encoding="utf-8") + "A99\tstatus T77 negated\n")
    ann[2].unlink()  # a note without its .ann: no warning, predict reads texts alone
    result = _predict(model, bad, tmp_path / "pred")
    assert result.exit_code == 0, result.output
    assert result.stderr == ""
    assert not [w for w in recwarn if ".ann" in str(w.message)]
    assert _predict(model, corpus / "dev", tmp_path / "clean").exit_code == 0
    assert _spans(read_standoff(tmp_path / "pred"), "gold") == _spans(
        read_standoff(tmp_path / "clean"), "gold"
    )
    # reading them, asked for: the input's file and line, as pureml evaluate names them
    ann[2].write_text("")
    result = _predict(model, bad, tmp_path / "p2", "--reader-option", "annotations=true")
    assert result.exit_code == 2
    text = ann[0].with_suffix(".txt").read_text(encoding="utf-8")
    assert result.stderr == (
        f"error: {ann[0]}:1: T1 text 'foo' does not match the text at 0 3: {text[:3]!r}\n"
    )
    assert not (tmp_path / "p2").exists()
    ann[0].write_text("")
    result = _predict(model, bad, tmp_path / "p2.jsonl", "--reader-option", "annotations=true")
    line = len(ann[1].read_text().splitlines())
    assert result.stderr == f"error: {ann[1]}:{line}: A99 refers to unknown entity T77\n"
    # a .txt that is not UTF-8 stops it, naming that file
    txt = sorted(bad.glob("*.txt"))[3]
    txt.write_bytes("fièvre".encode("latin-1"))
    result = _predict(model, bad, tmp_path / "p3")
    assert result.exit_code == 2
    assert result.stderr == (
        f"error: {txt}: not valid UTF-8 (byte 2: b'\\xe8'); convert the file to UTF-8\n"
    )
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bad", "clean", "pred"]
    # what the writer refuses names the output (not the temporary folder it was writing)
    (tmp_path / "ids.jsonl").write_text('{"id": "a//b", "text": "Chest pain."}\n')
    result = _predict(model, tmp_path / "ids.jsonl", tmp_path / "p4")
    assert result.stderr == (
        f"error: {tmp_path / 'p4'}: document id 'a//b' is not a file path that reads back as "
        "this id\n"
    )


def test_predict_writes_an_entity_across_a_crlf_as_brat_does(model, tmp_path, monkeypatch):
    # QA: "T1\tExamen 25 65\tcardiologie\r électrocardiogramme du foie" broke the .ann line in
    # two for brat and for any reader of lines; brat splits such a mention at the line break
    from pureml.nlp.pipeline import Pipeline

    notes = tmp_path / "notes"
    notes.mkdir()
    text = "COMPTE RENDU\r\nService de cardiologie\r\nélectrocardiogramme du foie.\r\n"
    (notes / "crlf_001.txt").write_bytes(text.encode())
    start, end = text.index("cardiologie"), text.index(".")
    real = Pipeline.pipe

    def pipe(self, docs, **kwargs):  # the model predicts the entity across the line break
        for doc in real(self, docs, **kwargs):
            doc.spans["ents"] = [Span(start, end, "Examen")]
            yield doc

    monkeypatch.setattr(Pipeline, "pipe", pipe)
    assert (start, end) == (25, 65)
    result = _predict(model, notes, tmp_path / "pred")
    assert result.exit_code == 0, result.output
    ann = (tmp_path / "pred" / "crlf_001.ann").read_bytes().decode("utf-8")
    assert ann == "T1\tExamen 25 36;38 65\tcardiologie électrocardiogramme du foie\n"
    assert (tmp_path / "pred" / "crlf_001.txt").read_bytes() == text.encode()
    (doc,) = read_standoff(tmp_path / "pred")
    assert [(s.start, s.end, s.label) for s in doc.spans["gold"]] == [(25, 65, "Examen")]
