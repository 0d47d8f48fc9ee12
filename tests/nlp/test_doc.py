"""Words of a document: the tokenizer on unicode text."""

import unicodedata

import pytest

from pureml.nlp import Doc


@pytest.mark.parametrize(
    "text",
    [
        "Évaluée à l'hôpital Pitié-Salpêtrière, œdème aigu.",
        "Müller's naïve café: 38,5°C",
        "हिन्दी भाषा",  # Devanagari vowel signs and virama are combining marks even composed
    ],
)
def test_decomposed_text_has_the_words_of_composed_text(text):
    # combining marks (NFD accents, Indic vowel signs) belong to their word: they were split
    # off as one-character words, "hôpital" in NFD was "ho", "̂", "pital"
    nfc, nfd = unicodedata.normalize("NFC", text), unicodedata.normalize("NFD", text)
    words = Doc(nfc).word_texts()
    assert [unicodedata.normalize("NFC", w) for w in Doc(nfd).word_texts()] == words
    assert all(unicodedata.category(w[0])[0] != "M" for w in words)


def test_whitespace_and_symbols_split_words():
    doc = Doc("a\r\nb\tc  d\u00a0e 😀 ok")
    assert doc.word_texts() == ["a", "b", "c", "d", "e", "😀", "ok"]


def test_invisible_characters_of_exported_text():
    # HTML/PDF exports: a soft hyphen inside "hypertension" split it in three words (the middle
    # one invisible); a zero-width space or a byte order mark was a word of its own
    doc = Doc("\ufeffhyper\u00adtension\u200bnoted \u200b ZW\u200dJ")
    assert doc.word_texts() == ["hyper\u00adtension", "noted", "ZW\u200dJ"]


def test_word_features_read_the_word_as_typed():
    from pureml.nlp.hash_embedding import word_features

    assert word_features("Hyper\u00adtension") == word_features("Hypertension")
    assert word_features(unicodedata.normalize("NFD", "Hôpital")) == word_features("Hôpital")
    assert word_features("BRCA1") == ("brca1", "brc", "ca1", "XXXXd")


def test_ascii_text_gets_the_words_of_the_full_rule():
    # tokenize takes a shorter regex for ASCII text; it must split every ASCII string as the
    # full (Unicode) rule does, control characters and separators included
    import random
    import string

    from pureml.nlp import tokenizer

    rng = random.Random(0)
    alphabet = string.printable + "\x00\x1c\x1d\x1e\x1f\x7f" + "12.,,..5"
    texts = ["".join(rng.choice(alphabet) for _ in range(rng.randint(0, 60))) for _ in range(3000)]
    texts += ["2.5mg 1,000.0 a_b __x 5'-UTR IL-2 .5 5. x\x1cy"]
    for text in texts:
        assert text.isascii()
        full = [m.span() for m in tokenizer._WORD.finditer(text)]
        assert tokenizer.tokenize(text) == full, repr(text)
