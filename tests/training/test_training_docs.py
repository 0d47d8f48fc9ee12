"""What training leaves on the documents it reads."""

from __future__ import annotations

import torch

from pureml import TrainingData, train
from pureml.nlp import NerCrf, Pipeline, ScratchEncoder
from pureml.nlp.synthetic import make_corpus


def test_training_leaves_no_word_offsets_on_the_source_docs(tmp_path):
    # the stream keeps its parsed docs for the whole run: the word offsets computed to
    # preprocess them (a tuple per word) must not stay on them; the cached features are enough
    torch.manual_seed(0)
    docs = make_corpus(20, seed=2)
    assert all(d._words is None for d in docs)
    n_words = sum(len(d.copy().words) for d in docs)
    nlp = Pipeline({"embedding": ScratchEncoder(width=16, depth=1), "ner": NerCrf()})
    steps = 2 * n_words // 300 + 2  # two epochs: every document preprocessed
    train(
        nlp,
        TrainingData(docs, batch_size="300 words"),
        max_steps=steps,
        compile=False,
        output_dir=tmp_path,
        logger=False,
        save_model=False,
    )
    assert all(d._words is None for d in docs)
    assert all(d.spans["gold"] for d in docs)  # the docs themselves are untouched
