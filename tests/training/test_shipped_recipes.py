"""What the shipped recipes' pipelines do on new text, once trained (one step is enough)."""

from __future__ import annotations

from pathlib import Path

import pytest

from pureml import train
from pureml.nlp import Doc, Span
from pureml.nlp.synthetic import write_corpus
from pureml.stream import read_standoff
from pureml.training.build import build_training
from pureml.training.evaluate import format_scores
from pureml.training.scorer import Scorer

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize(
    "recipe, data", [("quickstart.toml", None), ("ncbi_disease_multitask.toml", "paths.ncbi")]
)
def test_span_classifier_annotates_what_the_ner_head_predicts(recipe, data, tmp_path):
    # On new text there are no gold spans: a classifier that only reads "gold" would classify
    # nothing the NER head found (the quickstart's status was never predicted by nlp(text)).
    overrides = [f"train.output_dir={tmp_path / 'run'}", "train.max_steps=1", "train.compile=false"]
    corpus = write_corpus(tmp_path / "corpus", seed=0, splits={"train": 20, "devel": 5})
    if data is not None:  # NCBI's layout (train/, devel/), synthetic notes
        overrides.append(f"{data}={corpus['train'].parent}")
    nlp = train(**build_training(ROOT / "recipes" / recipe, overrides))
    (name,) = [n for n in nlp.pipe_names if nlp.get_pipe(n).factory == "span_classifier"]
    attribute = next(iter(nlp.get_pipe(name).attributes))
    doc = Doc("Patient denies chest pain.")
    doc.spans["ents"] = [Span(15, 25, "problem")]  # as the NER head writes its predictions
    (out,) = nlp.pipe([doc], heads=[name])
    assert out.spans["ents"][0].attributes.get(attribute) is not None
    # scored against the gold spans only, as before ("ents" holds no gold), and printable
    dev = list(read_standoff(corpus["devel"] if data else tmp_path / "run" / "corpus" / "dev"))
    scores = Scorer(speed=False)(nlp, dev)
    (scored,) = [v for k, v in scores.items() if k != "ner"]
    assert list(scored) == [attribute] and "micro" in scored[attribute]
    assert f": {attribute}\n" in format_scores(scores)
