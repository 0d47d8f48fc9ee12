"""Fixtures of the stream tests (helpers live in stream_fixtures.py)."""

from __future__ import annotations

import pytest
from stream_fixtures import make_docs


@pytest.fixture
def corpus_dir(tmp_path):
    from pureml.stream import write_standoff

    write_standoff(make_docs(40), tmp_path / "corpus")
    return tmp_path / "corpus"
