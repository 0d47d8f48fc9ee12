"""hf_transformer with a tiny random BERT built locally (never downloaded)."""

import pytest
import torch

from pureml import optim
from pureml.core.step import init_state, make_step
from pureml.nlp import Doc, NerCrf, Pipeline, load
from pureml.nlp.hf_transformer import best_window, window_starts
from pureml.nlp.synthetic import make_corpus

transformers = pytest.importorskip("transformers")
tokenizers = pytest.importorskip("tokenizers")


@pytest.fixture(scope="module")
def tiny_bert(tmp_path_factory):
    path = tmp_path_factory.mktemp("tiny-bert")
    tok = tokenizers.Tokenizer(tokenizers.models.WordPiece(unk_token="[UNK]"))
    tok.normalizer = tokenizers.normalizers.BertNormalizer(lowercase=True)
    tok.pre_tokenizer = tokenizers.pre_tokenizers.BertPreTokenizer()
    trainer = tokenizers.trainers.WordPieceTrainer(
        vocab_size=300, special_tokens=["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    )
    tok.train_from_iterator([d.text for d in make_corpus(50, seed=3)], trainer)
    fast = transformers.BertTokenizerFast(
        tokenizer_object=tok,
        unk_token="[UNK]",
        pad_token="[PAD]",
        cls_token="[CLS]",
        sep_token="[SEP]",
        mask_token="[MASK]",
    )
    fast.save_pretrained(path)
    config = transformers.BertConfig(
        vocab_size=fast.vocab_size,
        hidden_size=32,
        num_hidden_layers=1,
        num_attention_heads=2,
        intermediate_size=64,
        max_position_embeddings=24,  # shorter than most notes: windows are needed
    )
    torch.manual_seed(0)
    transformers.BertModel(config).save_pretrained(path)
    return path


def test_windows_cover_every_token_once_with_most_context():
    for n in range(0, 40):
        starts = window_starts(n, 8, 5)
        picks = best_window(n, 8, 5)
        assert len(picks) == n
        for t, (k, pos) in enumerate(picks):
            assert starts[k] + pos == t and pos < 8
            # no other window gives the token more context
            margin = min(pos, min(starts[k] + 8, n) - 1 - t)
            for s in starts:
                if s <= t < min(s + 8, n):
                    assert min(t - s, min(s + 8, n) - 1 - t) <= margin


def _ents(doc):
    return [(s.start, s.end, s.label) for s in doc.spans["ents"]]


def test_trains_with_the_functional_step_and_saves(tiny_bert, tmp_path):
    from pureml.nlp.hf_transformer import HfTransformer

    torch.manual_seed(0)
    nlp = Pipeline(
        {
            "embedding": HfTransformer(str(tiny_bert), window=16, stride=12, dropout=0.1),
            "ner": NerCrf(),
        }
    )
    docs = make_corpus(24, seed=4)
    nlp.post_init(docs)
    assert nlp.get_pipe("ner").labels == ["drug", "problem", "test"]
    items = [nlp.preprocess(d, supervision=True) for d in docs]
    assert max(it["stats"]["embedding_tokens"] for it in items) > 16  # several windows
    opt = optim.adamw(3e-3)
    state = init_state(nlp, optimizer=opt, seed=0)
    step = make_step(nlp.loss_fn(), opt, compile=False)
    losses = []
    for i in range(12):
        batch = nlp.collate(items[(i % 3) * 8 : (i % 3) * 8 + 8])
        state, metrics = step(state, [batch])
        losses.append(float(metrics["loss/ner"]))
    assert all(torch.isfinite(torch.tensor(losses)))
    assert sum(losses[-3:]) < sum(losses[:3])
    nlp.load_state_dict(state.params, strict=False)

    texts = [d.text for d in make_corpus(6, seed=8)] + ["", " ".join(["fever"] * 100)]
    before = [_ents(d) for d in nlp.pipe(texts, batch_size=4)]
    nlp.to_disk(tmp_path / "model")
    assert (tmp_path / "model" / "embedding" / "config.json").is_file()
    loaded = load(tmp_path / "model")  # rebuilt from the saved config, not the original folder
    assert [_ents(d) for d in loaded.pipe(texts, batch_size=4)] == before
    assert loaded("").spans["ents"] == []


def test_missing_model_folder_is_a_clear_error(tmp_path):
    from pureml.nlp.hf_transformer import HfTransformer

    with pytest.raises(FileNotFoundError, match="config.json"):
        Pipeline({"embedding": HfTransformer(str(tmp_path / "nope"))})
    with pytest.raises(ValueError, match="stride"):
        HfTransformer(str(tmp_path), window=8, stride=9)


def test_word_vectors_average_sub_words(tiny_bert):
    from pureml.nlp.hf_transformer import HfTransformer

    nlp = Pipeline({"embedding": HfTransformer(str(tiny_bert), window=16, stride=12)})
    emb = nlp.get_pipe("embedding")
    doc = Doc("hypokalemia and fever")
    item = nlp.preprocess(doc)
    pieces = emb.tokenizer(doc.word_texts(), add_special_tokens=False)["input_ids"]
    assert item["embedding"]["ids"].tolist() == [t for p in pieces for t in p]
    batch = nlp.collate([item])
    from pureml.nlp.component import ForwardContext

    out = emb(batch["embedding"], ForwardContext(nlp, batch))["embeddings"][0]
    # the document's one window is the first row of the long windows' group
    ids = torch.tensor([[emb.tokenizer.cls_token_id, *item["embedding"]["ids"].tolist()]])
    ids = torch.cat([ids, torch.tensor([[emb.tokenizer.sep_token_id]])], dim=1)
    hidden = emb.model(input_ids=ids).last_hidden_state[0]
    n0 = len(pieces[0])
    assert torch.allclose(out[0], hidden[1 : 1 + n0].mean(0), atol=1e-6)
    assert torch.allclose(out[1], hidden[1 + n0], atol=1e-6)


def test_long_and_short_windows_each_give_their_tokens_an_unpadded_vector(tiny_bert):
    """Windows go to two groups padded to their own widths; every word still gets the mean of
    its sub-words' vectors, each from its best window run alone (no padding at all)."""
    from pureml.nlp.component import ForwardContext
    from pureml.nlp.hf_transformer import HfTransformer

    nlp = Pipeline({"embedding": HfTransformer(str(tiny_bert), window=16, stride=12)})
    emb = nlp.get_pipe("embedding")
    docs = [d for d in make_corpus(12, seed=5) if d.word_texts()][:6]
    items = [nlp.preprocess(d) for d in docs]
    batch = nlp.collate(items)
    long, short = batch["embedding"]["windows"]
    assert long["input_ids"].shape[1] > short["input_ids"].shape[1]  # both groups are used
    with torch.no_grad():
        out = emb(batch["embedding"], ForwardContext(nlp, batch))["embeddings"]
        cls, sep = emb.tokenizer.cls_token_id, emb.tokenizer.sep_token_id
        for i, item in enumerate(items[j] for j in batch["index"].tolist()):  # longest first
            ids = item["embedding"]["ids"].tolist()
            word_of = item["embedding"]["word_of"].tolist()
            starts = window_starts(len(ids), 16, 12)
            windows = [torch.tensor([[cls, *ids[s : s + 16], sep]]) for s in starts]
            alone = [emb.model(input_ids=w).last_hidden_state[0] for w in windows]
            tokens = torch.stack([alone[k][pos + 1] for k, pos in best_window(len(ids), 16, 12)])
            words = torch.zeros(item["embedding"]["n_words"], tokens.shape[1])
            words.index_add_(0, torch.tensor(word_of), tokens)
            words /= torch.bincount(torch.tensor(word_of)).unsqueeze(1)
            assert torch.allclose(out[i, : len(words)], words, atol=1e-5)


def test_training_batches_keep_one_structure_and_predictions_pad_no_more_than_needed(tiny_bert):
    """A compiled step must see the same structure at every batch: training batches always
    have two window groups of at least two rows. Prediction runs eagerly: a one-window
    document is one row, as before the groups."""
    from pureml.nlp.hf_transformer import HfTransformer

    nlp = Pipeline({"embedding": HfTransformer(str(tiny_bert), window=16, stride=12)})
    docs = [d for d in make_corpus(12, seed=5) if d.word_texts()]
    short = Doc("hypokalemia and fever")
    emb = nlp.get_pipe("embedding")
    for batch_docs in ([short], docs[:1], docs[:5]):
        n_windows = sum(
            len(window_starts(len(nlp.preprocess(d)["embedding"]["ids"]), 16, 12))
            for d in batch_docs
        )
        items = [nlp.preprocess(d, supervision=True) for d in batch_docs]
        windows = nlp.collate(items)["embedding"]["windows"]
        assert len(windows) == 2 and all(w["input_ids"].shape[0] >= 2 for w in windows)
        # prediction: the document's windows and no filler row
        windows = emb.collate([nlp.preprocess(d)["embedding"] for d in batch_docs])["windows"]
        assert sum(w["input_ids"].shape[0] for w in windows) == n_windows
    alone = nlp.collate([nlp.preprocess(short)])["embedding"]["windows"]
    assert [tuple(w["input_ids"].shape) for w in alone] == [(1, alone[0]["input_ids"].shape[1])]


def test_default_optimizer_finds_the_encoder_by_type(tiny_bert, tmp_path):
    """EDS-NLP's default puts the transformer in its own warmed-up group whatever its name."""
    import json

    from pureml import TrainingData, train
    from pureml.nlp.hf_transformer import HfTransformer, encoder_selector
    from pureml.stream import from_iterable
    from pureml.training.build import build_optimizer

    torch.manual_seed(0)
    nlp = Pipeline(
        {
            "bert": HfTransformer(str(tiny_bert), window=16, stride=12),
            "ner": NerCrf(embedding="bert"),
        }
    )
    docs = make_corpus(8, seed=4)
    nlp.post_init(docs)
    assert encoder_selector(nlp) == r"^(bert)\."
    names = [n for n, _ in nlp.named_parameters()]
    # a recipe's factory = "eds_default" without a transformer regex picks the same
    opt = build_optimizer({"factory": "eds_default"}, nlp)(names, 100)
    assert {opt.group_of(n).name for n in names if n.startswith("bert.")} == {"transformer"}
    assert {opt.group_of(n).name for n in names if n.startswith("ner.")} == {"default"}

    train(
        nlp,
        TrainingData(from_iterable(docs), batch_size="200 words"),
        max_steps=2,
        compile=False,
        logger=["json"],
        save_model=False,
        output_dir=tmp_path / "run",
    )
    first = json.loads((tmp_path / "run" / "metrics.jsonl").read_text().splitlines()[0])
    # the transformer warms up from 0; the rest starts at 3e-4
    assert (first["lr/transformer"], first["lr/default"]) == (0.0, pytest.approx(3e-4))


def test_word_cache_emptied_by_another_call_does_not_lose_words(tiny_bert, monkeypatch):
    # The trainer's prefetch thread preprocesses training documents while the main thread
    # predicts the validation documents: one call may empty the cache in the middle of another.
    from pureml.nlp import hf_transformer

    emb = hf_transformer.HfTransformer(str(tiny_bert), window=8, stride=6)
    emb.initialize()
    monkeypatch.setattr(hf_transformer, "WORD_CACHE_SIZE", 4)
    tokenize = emb.tokenizer
    expected = {
        w: tuple(tokenize([w], add_special_tokens=False)["input_ids"][0])
        for w in ["fever", "cough", "pain", "nausea", "rash", "chills", "edema"]
    }

    class Interleaved:
        """The tokenizer, with another caller's overflowing lookup in the middle of a call."""

        def __init__(self) -> None:
            self.inside = False

        def __call__(self, words, **kw):
            if not self.inside:
                self.inside = True
                emb._pieces(["rash", "chills", "edema", "nausea"])  # empties the cache
                self.inside = False
            return tokenize(words, **kw)

    emb._pieces(["fever", "cough"])
    emb.tokenizer = Interleaved()
    got = emb._pieces(["fever", "cough", "pain"])  # fever and cough were cached before
    assert got == [expected["fever"], expected["cough"], expected["pain"]]


@pytest.fixture(scope="module")
def tiny_roberta(tmp_path_factory):
    """A RoBERTa with a byte-level BPE tokenizer: <s> </s> <pad>=1, no prefix space, and
    position ids numbered from padding_idx + 1 (20 positions: 18 tokens)."""
    path = tmp_path_factory.mktemp("tiny-roberta")
    tok = tokenizers.Tokenizer(tokenizers.models.BPE())
    tok.pre_tokenizer = tokenizers.pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = tokenizers.decoders.ByteLevel()
    trainer = tokenizers.trainers.BpeTrainer(
        vocab_size=400,
        special_tokens=["<s>", "<pad>", "</s>", "<unk>", "<mask>"],
        initial_alphabet=tokenizers.pre_tokenizers.ByteLevel.alphabet(),
    )
    tok.train_from_iterator([d.text for d in make_corpus(50, seed=3)], trainer)
    specials = dict(bos_token="<s>", eos_token="</s>", cls_token="<s>", sep_token="</s>")
    fast = transformers.RobertaTokenizerFast(
        tokenizer_object=tok, unk_token="<unk>", pad_token="<pad>", mask_token="<mask>", **specials
    )
    fast.save_pretrained(path)
    config = transformers.RobertaConfig(
        vocab_size=len(fast),
        hidden_size=32,
        num_hidden_layers=1,
        num_attention_heads=2,
        intermediate_size=64,
        max_position_embeddings=20,
        pad_token_id=1,
    )
    torch.manual_seed(0)
    transformers.RobertaModel(config).save_pretrained(path)
    return path


def test_roberta_window_limit_counts_the_positions_after_padding_idx(tiny_roberta):
    # 17 + 2 <= 20 max_position_embeddings, but positions 2..20 overflow the table: the
    # forward used to fail with "index 20 is out of bounds" at the first long document
    from pureml.nlp.hf_transformer import HfTransformer

    with pytest.raises(ValueError, match=r"18 positions .*padding_idx 1.*window <= 16"):
        Pipeline({"embedding": HfTransformer(str(tiny_roberta), window=17, stride=12)})
    nlp = Pipeline({"embedding": HfTransformer(str(tiny_roberta), window=16, stride=12)})
    item = nlp.preprocess(Doc(" ".join(["hypokalemia"] * 30)))
    assert item["stats"]["embedding_tokens"] > 16
    batch = nlp.collate([item])
    from pureml.nlp.component import ForwardContext

    out = nlp.get_pipe("embedding")(batch["embedding"], ForwardContext(nlp, batch))
    assert out["embeddings"].shape[:2] == (1, 32) and torch.isfinite(out["embeddings"]).all()


def test_byte_level_bpe_words_get_their_running_text_pieces(tiny_roberta):
    # RoBERTa marks a word start with a space ("Ġfever"); a word tokenized alone without a
    # prefix space got its sentence-initial pieces instead, unlike anything pretraining saw
    from pureml.nlp.hf_transformer import HfTransformer

    nlp = Pipeline({"embedding": HfTransformer(str(tiny_roberta), window=16, stride=12)})
    words = ["patient", "with", "fever", "and", "cough"]
    raw = transformers.AutoTokenizer.from_pretrained(tiny_roberta)
    in_text = raw(" " + " ".join(words), add_special_tokens=False)["input_ids"]
    assert raw.convert_ids_to_tokens(in_text)[0].startswith("Ġ")
    assert nlp.preprocess(Doc(" ".join(words)))["embedding"]["ids"].tolist() == in_text


def test_tokenizer_without_special_tokens_is_a_clear_error(tiny_bert, tmp_path):
    import shutil

    from pureml.nlp.hf_transformer import HfTransformer

    shutil.copytree(tiny_bert, tmp_path / "bert")
    (tmp_path / "bert" / "tokenizer_config.json").unlink()
    bare = transformers.PreTrainedTokenizerFast(
        tokenizer_file=str(tmp_path / "bert" / "tokenizer.json"), unk_token="[UNK]"
    )
    bare.save_pretrained(tmp_path / "bert")
    with pytest.raises(ValueError, match="has no cls_token, sep_token, pad_token"):
        Pipeline({"embedding": HfTransformer(str(tmp_path / "bert"), window=8, stride=6)})


def test_a_lone_surrogate_in_a_text_names_the_document(tiny_bert):
    # texts given from Python: the tokenizers' TypeError said nothing of which document
    from pureml.nlp.hf_transformer import HfTransformer

    nlp = Pipeline({"embedding": HfTransformer(str(tiny_bert), window=16, stride=12)})
    with pytest.raises(
        ValueError, match=r"embedding: doc 'n1' has a lone surrogate .* character 5"
    ):
        nlp.preprocess(Doc("pain \ud83d here", id="n1"))


def _copy_with_model(tiny_bert, folder, *, vocab_size=None, pooler=True):
    """tiny_bert's tokenizer beside another model."""
    import shutil

    folder.mkdir()
    for f in tiny_bert.iterdir():
        if "token" in f.name or f.name == "vocab.txt":
            shutil.copy(f, folder)
    config = transformers.BertConfig.from_pretrained(tiny_bert)
    config.vocab_size = vocab_size or config.vocab_size
    torch.manual_seed(0)
    transformers.BertModel(config, add_pooling_layer=pooler).save_pretrained(folder)
    return folder


def test_a_tokenizer_with_ids_past_the_models_vocabulary_is_refused_at_load(tiny_bert, tmp_path):
    # an IndexError deep inside torch's embedding at the first such word
    from pureml.nlp.hf_transformer import HfTransformer

    folder = _copy_with_model(tiny_bert, tmp_path / "small-vocab", vocab_size=50)
    with pytest.raises(
        ValueError, match=r"small-vocab gives ids up to \d{3}, but the model has 50 embeddings"
    ):
        Pipeline({"embedding": HfTransformer(str(folder), window=16, stride=12)})


def test_loading_an_encoder_without_its_pooler_prints_no_load_report(tiny_bert, tmp_path):
    # each load printed transformers' "LOAD REPORT" table of the pooler weights it does not use
    import logging

    from transformers.utils import logging as hf_logging

    from pureml.nlp.hf_transformer import HfTransformer

    class Records(logging.Handler):
        def __init__(self):
            super().__init__(level=logging.DEBUG)
            self.messages = []

        def emit(self, record):
            self.messages.append(record.getMessage())

    folder = _copy_with_model(tiny_bert, tmp_path / "no-pooler", pooler=False)
    seen = Records()
    library = hf_logging.get_logger("transformers")  # what transformers' own handler prints
    library.addHandler(seen)
    before = hf_logging.get_verbosity()
    try:
        Pipeline({"embedding": HfTransformer(str(folder), window=16, stride=12)})
    finally:
        library.removeHandler(seen)
    assert not [m for m in seen.messages if "LOAD REPORT" in m]
    assert hf_logging.get_verbosity() == before  # silenced for that load only
