"""The quickstart corpus: deterministic files that the readers parse back exactly."""

from pureml.nlp.synthetic import make_corpus, write_corpus
from pureml.stream import read_jsonl, read_standoff


def _key(docs):
    return [
        (d.id, d.text, [(s.start, s.end, s.label, s.attributes) for s in d.spans["gold"]])
        for d in docs
    ]


def test_same_seed_same_bytes_and_readers_round_trip(tmp_path):
    a = write_corpus(tmp_path / "a", seed=3, splits={"train": 20, "dev": 5})
    b = write_corpus(tmp_path / "b", seed=3, splits={"train": 20, "dev": 5})
    files = sorted(p.name for p in a["train"].iterdir())
    assert len(files) == 40
    for name in files:
        assert (a["train"] / name).read_bytes() == (b["train"] / name).read_bytes()
    expected = make_corpus(25, seed=3)
    got = list(read_standoff(a["train"])) + list(read_standoff(a["dev"]))
    assert _key(sorted(got, key=lambda d: d.id)) == _key(expected)
    j = write_corpus(tmp_path / "j", seed=3, splits={"train": 20, "dev": 5}, format="jsonl")
    assert _key(list(read_jsonl(j["train"]))) == _key(expected[:20])
    assert make_corpus(5, seed=4)[0].text != expected[0].text


def test_entities_and_attributes_are_varied_and_on_word_boundaries():
    docs = make_corpus(200, seed=0)
    spans = [(d, s) for d in docs for s in d.spans["gold"]]
    assert {s.label for _, s in spans} == {"problem", "drug", "test"}
    assert {s.attributes["status"] for _, s in spans} == {"affirmed", "negated", "family"}
    for d, s in spans:
        first, last = d.word_range(s)
        assert (d.words[first][0], d.words[last - 1][1]) == (s.start, s.end)
