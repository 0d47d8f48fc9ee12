"""Pipeline behaviour: losses, sharing, batching, inference, save/load and bad input."""

import os
import warnings

import pytest
import torch

from pureml.nlp import Doc, NerCrf, Pipeline, ScratchEncoder, Span, load, pad_length
from pureml.nlp.pipeline import INFERENCE_BATCH_SIZE
from pureml.nlp.synthetic import make_corpus
from pureml.registry import components

from .conftest import build


def _ents(doc):
    return [(s.start, s.end, s.label, s.attributes.get("status")) for s in doc.spans["ents"]]


def test_components_are_registered():
    for name in ("scratch_encoder", "hash_embedding", "hf_transformer", "span_pooler"):
        assert name in components
    for name in ("ner_crf", "span_classifier"):
        assert name in components


def test_training_learns_the_synthetic_corpus(trained, corpus):
    nlp, losses = trained
    assert sum(losses[-5:]) < 0.3 * sum(losses[:5])
    dev = make_corpus(30, seed=99)
    gold = {(d.id, s.start, s.end, s.label) for d in dev for s in d.spans["gold"]}
    preds = list(nlp.pipe([Doc(d.text, id=d.id) for d in dev]))
    pred = {(d.id, s.start, s.end, s.label) for d in preds for s in d.spans["ents"]}
    f1 = 2 * len(gold & pred) / (len(gold) + len(pred))
    assert f1 > 0.8, f1
    # the classifier ran on the spans the NER just wrote
    assert all("status" in s.attributes for d in preds for s in d.spans["ents"])


def test_losses_of_two_halves_sum_to_whole_batch(trained, corpus):
    nlp, _ = trained
    nlp = nlp.double()
    try:
        items = [nlp.preprocess(d, supervision=True) for d in corpus[:10]]
        whole = nlp.collate(items)
        total, parts = nlp(whole, None)
        halves = [nlp.collate(items[:4]), nlp.collate(items[4:])]
        sums = {"ner": 0.0, "status": 0.0}
        for h in halves:
            h["stats"] = whole["stats"]  # what the trainer does: global totals
            _, p = nlp(h, None)
            for k in sums:
                sums[k] = sums[k] + p[k]
        for k in sums:
            assert abs(sums[k].item() - parts[k].item()) < 1e-10 * abs(parts[k].item())
        # and the support is the global count of words / spans
        assert whole["stats"]["ner_words"].item() == sum(len(d.words) for d in corpus[:10])
        assert whole["stats"]["status_spans"].item() == sum(
            len(d.spans["gold"]) for d in corpus[:10]
        )
    finally:
        nlp.float()


def test_shared_embedding_runs_once_per_batch(trained, corpus, monkeypatch):
    nlp, _ = trained
    calls = []
    original = ScratchEncoder.forward

    def counting(self, batch, ctx):
        calls.append(1)
        return original(self, batch, ctx)

    monkeypatch.setattr(ScratchEncoder, "forward", counting)
    batch = nlp.collate([nlp.preprocess(d, supervision=True) for d in corpus[:4]])
    _, losses = nlp(batch, None)
    assert set(losses) == {"ner", "status"} and len(calls) == 1
    calls.clear()
    list(nlp.pipe([d.text for d in corpus[:6]], batch_size=3))
    assert len(calls) == 2  # two chunks, both heads share one embedding pass each


def test_collate_sorts_by_length_and_pads_to_buckets(trained, corpus):
    nlp, _ = trained
    items = [nlp.preprocess(d, supervision=True) for d in corpus[:7]]
    batch = nlp.collate(items)
    lengths = [items[i]["stats"]["words"] for i in batch["index"].tolist()]
    assert lengths == sorted(lengths, reverse=True)
    assert batch["embedding"]["ids"].shape[1] == pad_length(max(lengths))
    # the CRF loss reads the words end to end: rows and columns of each real word, in order
    ner = batch["ner"]
    assert ner["tags"].shape == ner["rows"].shape == ner["cols"].shape == (sum(lengths),)
    assert ner["rows"].bincount().tolist() == lengths
    assert bool((ner["cols"] < torch.tensor(lengths)[ner["rows"]]).all())
    shapes = {
        nlp.collate([nlp.preprocess(d) for d in corpus[i : i + 3]])["embedding"]["ids"].shape[1]
        for i in range(0, len(corpus), 3)
    }
    n_lengths = len({len(d.words) for d in corpus})
    assert len(shapes) <= 8 < n_lengths, (shapes, n_lengths)


def test_pipe_equals_one_call_per_text(trained):
    nlp, _ = trained
    texts = [d.text for d in make_corpus(1000, seed=5)]
    piped = [_ents(d) for d in nlp.pipe(texts, batch_size=64)]
    single = [_ents(nlp(t)) for t in texts]
    assert piped == single
    assert sum(map(len, piped)) > 1000


def _assert_greedy(sizes: list[list[int]], budget: int) -> None:
    for i, b in enumerate(sizes):
        assert sum(b) <= budget or len(b) == 1, b  # within the budget, or one longer document
        if i + 1 < len(sizes):
            assert sum(b) + sizes[i + 1][0] > budget  # the next document did not fit


def test_pipe_batches_by_a_word_budget(trained, inference_batches):
    nlp, _ = trained
    texts = [d.text for d in make_corpus(120, seed=11)]  # 15 to 88 words each
    texts.insert(40, " ".join(["Started metformin 500 mg daily."] * 80))  # longer than 300 words
    lengths = [len(Doc(t).words) for t in texts]
    assert lengths[40] > 300
    sizes = inference_batches
    piped = [_ents(d) for d in nlp.pipe(texts, batch_size="300 words")]
    assert [n for b in sizes for n in b] == lengths  # every document once, in input order
    assert len(sizes) > 10 and [lengths[40]] in sizes  # a batch of its own
    _assert_greedy(sizes, 300)
    # the same predictions as one document per batch, and as the default batching
    sizes.clear()
    assert [_ents(d) for d in nlp.pipe(texts, batch_size=1)] == piped
    assert sizes == [[n] for n in lengths]
    sizes.clear()
    assert [_ents(d) for d in nlp.pipe(texts)] == piped
    # the default is a word budget (not a number of documents): 2000 words here
    assert INFERENCE_BATCH_SIZE == "2000 words"
    assert [n for b in sizes for n in b] == lengths and len(sizes) > 1
    _assert_greedy(sizes, 2000)
    assert max(len(b) for b in sizes) > 32  # short documents: more of them per batch
    sizes.clear()
    assert [_ents(d) for d in nlp.pipe(texts, batch_size="7 docs")] == piped
    assert [len(b) for b in sizes] == [7] * (len(texts) // 7) + [len(texts) % 7]


@pytest.mark.parametrize(
    ("batch_size", "message"),
    [
        (0, "batch_size must be >= 1"),
        ("0 words", "must be positive"),
        ("2000 wrods", "did you mean 'words'"),
        ("dataset", "not allowed"),
        (2.5, "expected an int or a string"),
    ],
)
def test_pipe_rejects_bad_batch_sizes(trained, batch_size, message):
    nlp, _ = trained
    with pytest.raises(ValueError, match=message):
        list(nlp.pipe(["Patient denies fever."], batch_size=batch_size))


def test_save_load_identical_predictions(trained, tmp_path):
    nlp, _ = trained
    texts = [d.text for d in make_corpus(40, seed=7)]
    path = tmp_path / "model"
    nlp.to_disk(path)
    nlp.to_disk(path)  # replaces the previous save
    assert sorted(os.listdir(tmp_path)) == ["model"]  # no temp folder left behind
    assert sorted(os.listdir(path)) == ["config.toml", "model.safetensors"]
    loaded = load(path)
    assert loaded.pipe_names == nlp.pipe_names
    for k, v in nlp.state_dict().items():
        assert torch.equal(v, loaded.state_dict()[k]), k
    assert [_ents(d) for d in loaded.pipe(texts)] == [_ents(d) for d in nlp.pipe(texts)]


def test_missing_or_corrupted_weights_name_the_file(trained, tmp_path):
    nlp, _ = trained
    path = tmp_path / "model"
    nlp.to_disk(path)
    weights = path / "model.safetensors"
    data = weights.read_bytes()
    weights.write_bytes(data[: len(data) // 2])
    with pytest.raises(ValueError, match="corrupted weights file .*model.safetensors"):
        load(path)
    weights.unlink()
    with pytest.raises(FileNotFoundError, match="model.safetensors"):
        load(path)
    with pytest.raises(FileNotFoundError, match="config.toml"):
        load(tmp_path / "nowhere")


def test_failed_save_keeps_previous_model(trained, tmp_path, monkeypatch):
    nlp, _ = trained
    path = tmp_path / "model"
    nlp.to_disk(path)
    before = (path / "model.safetensors").read_bytes()

    def boom(*a, **k):
        raise OSError("disk full")

    monkeypatch.setattr("pureml.nlp.pipeline.save_file", boom)
    with pytest.raises(OSError, match="disk full"):
        nlp.to_disk(path)
    assert (path / "model.safetensors").read_bytes() == before
    assert sorted(os.listdir(tmp_path)) == ["model"]


def test_empty_and_long_documents(trained):
    nlp, _ = trained
    assert nlp("").spans["ents"] == []
    long_text = " ".join(["Started metformin 500 mg daily."] * 700)  # 4,200 words
    docs = list(nlp.pipe(["", long_text, "Patient denies fever."], batch_size=3))
    assert docs[0].spans["ents"] == []
    assert len(docs[1].spans["ents"]) >= 600
    # a batch with an empty doc trains with a finite loss
    empty = Doc("", id="empty")
    empty.spans["gold"] = []
    batch = nlp.collate([nlp.preprocess(empty, supervision=True)])
    loss, parts = nlp(batch, None)
    assert torch.isfinite(loss) and loss.item() == 0.0


def test_unseen_labels_are_ignored_with_a_warning(trained):
    nlp, _ = trained
    doc = Doc("Patient denies fever.", id="x")
    doc.spans["gold"] = [Span(15, 20, "symptom", {"status": "uncertain"})]
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        item = nlp.preprocess(doc, supervision=True)
    messages = " ".join(str(w.message) for w in caught)
    assert "'symptom'" in messages and "'uncertain'" in messages
    assert set(item["ner"]["tags"]) == {0}
    assert item["status"]["targets"]["status"] == [-100]
    loss, _ = nlp(nlp.collate([item]), None)
    assert torch.isfinite(loss)


def test_untrained_head_and_bad_names_give_clear_errors():
    nlp = Pipeline({"embedding": ScratchEncoder(width=8, depth=1), "ner": NerCrf()})
    with pytest.raises(RuntimeError, match="no labels.*post_init"):
        nlp("text")
    with pytest.raises(ValueError, match="must come before"):
        Pipeline({"ner": NerCrf(labels=["X"]), "embedding": ScratchEncoder(width=8)})
    with pytest.raises(ValueError, match="invalid component name"):
        Pipeline({"stats": ScratchEncoder(width=8)})


def test_parameter_names_and_phases():
    nlp = build()
    nlp.post_init(make_corpus(5, seed=0))
    names = [n for n, _ in nlp.named_parameters()]
    assert names[0] == "embedding.table.weight"
    assert "ner.transitions" in names and "status.head.weight" in names
    assert nlp.phases() == [["embedding", "ner", "status"]]
    assert nlp.heads() == ["ner", "status"]


def test_functional_step_two_sub_batches_equal_one_batch():
    """Through make_step: sub-batches given the global stats update like the whole batch."""
    from pureml import optim
    from pureml.core.step import init_state, make_step

    torch.manual_seed(0)
    docs = make_corpus(8, seed=2)
    nlp = Pipeline(
        {
            "embedding": ScratchEncoder(width=16, depth=1, rows=[50, 20, 20, 10], dropout=0.0),
            "ner": NerCrf(dropout=0.0),
        }
    )
    nlp.post_init(docs)
    nlp.double()
    items = [nlp.preprocess(d, supervision=True) for d in docs]
    whole = nlp.collate(items)
    halves = [nlp.collate(items[:3]), nlp.collate(items[3:])]
    for h in halves:
        h["stats"] = whole["stats"]
    opt = optim.sgd(0.5)
    step = make_step(nlp.loss_fn(), opt, compile=False, grad_max_norm=None)
    s1, m1 = step(init_state(nlp, optimizer=opt, seed=0), [whole])
    s2, m2 = step(init_state(nlp, optimizer=opt, seed=0), halves)
    assert abs(float(m1["loss/ner"]) - float(m2["loss/ner"])) < 1e-12
    for k in s1.params:
        assert torch.allclose(s1.params[k], s2.params[k], rtol=0, atol=1e-12), k


def test_packed_encoder_equals_one_document_at_a_time():
    """Docs share packed rows (CNN + attention) yet get exactly their stand-alone vectors."""
    from pureml.nlp import ForwardContext

    torch.manual_seed(0)
    enc = ScratchEncoder(width=16, depth=3, window=2, transformer_layers=1, heads=2)
    nlp = Pipeline({"embedding": enc})
    docs = [Doc(d.text[:n]) for d, n in zip(make_corpus(5, seed=6), (400, 90, 30, 0, 60))]
    batch = nlp.collate([nlp.preprocess(d) for d in docs])
    assert batch["embedding"]["ids"].shape[0] < len(docs)  # several docs per row
    together = enc(batch["embedding"], ForwardContext(nlp, batch))["embeddings"]
    for row, i in enumerate(batch["index"].tolist()):
        one = nlp.collate([nlp.preprocess(docs[i])])
        alone = enc(one["embedding"], ForwardContext(nlp, one))["embeddings"][0]
        n = len(docs[i].words)
        assert torch.allclose(together[row, :n], alone[:n], atol=1e-5)
        assert together[row, n:].abs().max() == 0


def test_compiled_step_shares_one_graph_across_batch_shapes():
    """Doc counts, packed rows, lengths and word totals of one octave reuse the first graphs.

    The CRF runs over the batch's words end to end: totals of 95, 99, 111 and 122 words differ,
    but their trees pad to the same power of two; document counts and padded lengths differ too.
    """
    from torch._dynamo.testing import CompileCounter

    from pureml import optim
    from pureml.core.step import init_state, make_step

    torch.manual_seed(0)
    docs = make_corpus(60, seed=3)
    nlp = Pipeline(
        {
            "embedding": ScratchEncoder(width=16, depth=1, rows=[50, 20, 20, 10]),
            "ner": NerCrf(),
        }
    )
    nlp.post_init(docs)
    by_len = sorted(docs, key=lambda d: len(d.word_texts()))

    def batch(lo: int, hi: int, n: int) -> dict:
        pool = [d for d in by_len if lo < len(d.word_texts()) <= hi]
        # the longest of the pool sets the padded length; the rest fill the batch
        chosen = [pool[-1]] + by_len[: n - 1]
        return nlp.collate([nlp.preprocess(d, supervision=True) for d in chosen])

    batches = [batch(48, 64, 3), batch(32, 40, 5), batch(40, 48, 4), batch(64, 91, 3)]
    shapes = {(b["ner"]["tags"].shape, b["embedding"]["ids"].shape) for b in batches}
    assert len(shapes) == 4, shapes
    assert sorted(len(b["ner"]["tags"]) for b in batches) == [95, 99, 111, 122]
    counter = CompileCounter()
    opt = optim.adamw(1e-3)
    step = make_step(nlp.loss_fn(), opt, backend=counter)
    state = init_state(nlp, optimizer=opt, seed=0)
    for b in batches:
        state, metrics = step(state, [b])
        assert torch.isfinite(metrics["loss"])
    assert counter.frame_count == 2  # the forward (with its backward) and the update


def test_ner_says_which_gold_spans_it_cannot_train_on_as_written():
    # a CRF tags one entity per word, on word boundaries: nested entities were dropped and
    # sub-word ones widened without a word, and dev then scored those labels 0/0/0
    nlp = Pipeline({"embedding": ScratchEncoder(width=8, depth=1), "ner": NerCrf()})
    doc = Doc("Took 500mg of paracetamol. Chest pain on the left.", id="note")
    doc.spans["gold"] = [
        Span(5, 10, "dose"),  # "500mg": a word
        Span(8, 10, "unit"),  # "mg": inside the word "500mg"
        Span(27, 37, "problem"),  # "Chest pain"
        Span(33, 37, "symptom"),  # "pain", nested in it
        Span(45, 45, "problem"),  # zero-length, as brat can hold: "T5 problem 45 45"
    ]
    nlp.post_init([doc])
    nlp.initialize()
    with pytest.warns(UserWarning) as record:
        tags = nlp.preprocess(doc, supervision=True)["ner"]["tags"]
    messages = sorted(str(w.message) for w in record)
    assert messages == [
        "ner: 2 gold span(s) of doc 'note' overlap a longer one and are left out of training: "
        "the CRF tags one entity per word (warned for the first such doc only)",
        "ner: gold span 'mg' (doc 'note') does not start and end where words do; it is trained "
        "as the words it touches, '500mg' (warned for the first such span only)",
        "ner: gold span 45-45 '' (doc 'note') covers no word (empty, or only spaces); it is left "
        "out of training (warned for the first such span only)",
    ]
    assert sum(t != 0 for t in tags) == 3  # "500mg" (U) and "Chest pain" (B, L)
    with warnings.catch_warnings():  # once per component
        warnings.simplefilter("error")
        nlp.preprocess(doc, supervision=True)


def test_ner_says_a_discontinuous_entity_is_trained_as_its_whole_stretch(tmp_path):
    # brat's "T1 Pathologie 0 7;19 29" read as one span over "Douleur intense et thoracique":
    # the CRF learnt "intense et" as part of the entity, silently
    from pureml.stream import read_standoff

    (tmp_path / "a.txt").write_text("Douleur intense et thoracique.")
    (tmp_path / "a.ann").write_text("T1\tPathologie 0 7;19 29\tDouleur thoracique\n")
    (doc,) = read_standoff(tmp_path)
    nlp = Pipeline({"embedding": ScratchEncoder(width=8, depth=1), "ner": NerCrf()})
    nlp.post_init([doc])
    with pytest.warns(UserWarning) as record:
        tags = nlp.preprocess(doc, supervision=True)["ner"]["tags"]
    assert [str(w.message) for w in record] == [
        "ner: gold span 'Douleur' … 'thoracique' (doc 'a') is discontinuous; the CRF tags "
        "contiguous entities, so it is trained as the whole stretch 'Douleur intense et "
        "thoracique' (warned for the first such span only)"
    ]
    assert sum(t != 0 for t in tags) == 4  # B I I L: the four words
