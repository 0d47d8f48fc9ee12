"""Fixtures shared by several test layers."""

import pytest

from pureml.nlp import Pipeline


@pytest.fixture
def inference_batches(monkeypatch) -> list[list[int]]:
    """Words of each document of each inference batch, recorded as ``Pipeline.pipe`` runs them
    (from the moment the fixture is set up)."""
    sizes: list[list[int]] = []
    original = Pipeline._annotate

    def spy(self, docs, heads):
        sizes.append([len(d.words) for d in docs])
        return original(self, docs, heads)

    monkeypatch.setattr(Pipeline, "_annotate", spy)
    return sizes
