"""A regex word tokenizer that keeps character offsets.

Biomedical text is full of tokens like ``BRCA1``, ``IL-2``, ``5'-UTR`` or ``2.5mg``; the rule
below keeps alphanumeric runs (with inner dots/commas between digits) together and splits every
punctuation mark, hyphens included, so that entity boundaries that fall on a hyphen
("BRCA1-associated") stay reachable.

>>> tokenize("BRCA1-associated breast cancer (2.5 mg).")
[(0, 5), (5, 6), (6, 16), (17, 23), (24, 30), (31, 32), (32, 35), (36, 38), (38, 39), (39, 40)]
"""

from __future__ import annotations

import re
import sys
import unicodedata


def _mark_class() -> str:
    """A regex class of the combining marks (categories Mn, Mc, Me): accents of decomposed
    (NFD) text, Indic vowel signs. ``re`` has no ``\\p{M}``; marks lie in planes 0, 1 and 14."""
    ranges: list[list[int]] = []
    for lo, hi in ((0, 0x20000), (0xE0000, min(0xE1000, sys.maxunicode + 1))):
        for c in range(lo, hi):
            if unicodedata.category(chr(c))[0] == "M":
                if ranges and ranges[-1][1] == c - 1:
                    ranges[-1][1] = c
                else:
                    ranges.append([c, c])
    return "".join(f"\\U{a:08x}-\\U{b:08x}" for a, b in ranges)


_M = _mark_class()
# Invisible characters of exported text (HTML, PDF, word processors). Inside a word, a soft hyphen
# (a hyphenation point), the zero-width (non-)joiners and the word joiner do not break it:
# "hyper\u00adtension" is one word. Alone they are no word, nor are the zero-width space and the
# byte order mark, which separate words without a visible space.
_JOIN = "\u00ad\u200c\u200d\u2060"
_INVISIBLE = _JOIN + "\u200b\ufeff"
_WORD = re.compile(
    rf"""
    \d+(?:[.,]\d+)+          # numbers with decimal or thousand separators: 2.5 1,000
  | (?:[^\W_][{_M}{_JOIN}]*)+  # letters/digits runs (unicode aware), with their combining marks
  | [^\s{_INVISIBLE}][{_M}]*  # any other single visible non-space character
    """,
    re.VERBOSE,
)
# _WORD for ASCII text, where no mark nor invisible character can occur: the same matches, 4x
# faster (the class of marks is tried after every letter).
_ASCII_WORD = re.compile(r"\d+(?:[.,]\d+)+|[^\W_]+|\S")


_DROP_INVISIBLE = dict.fromkeys(map(ord, _INVISIBLE))


def feature_text(word: str) -> str:
    """What a word's features read: composed (NFC) and without invisible characters, so that
    "ho\u0302pital" (decomposed) and "hyper\u00adtension" (soft hyphen) look like the words
    typed directly.

    >>> feature_text("hyper\u00adtension"), feature_text("ho\u0302pital") == "hôpital"
    ('hypertension', True)
    """
    if word.isascii():  # the common case: nothing to compose or drop
        return word
    return unicodedata.normalize("NFC", word).translate(_DROP_INVISIBLE)


def tokenize(text: str) -> list[tuple[int, int]]:
    """Return the (start, end) character offsets of the words of ``text``.

    Combining marks stay in their word, so decomposed (NFD) text gets the words of composed
    text:

    >>> import unicodedata
    >>> text = unicodedata.normalize("NFD", "Évaluée à l'hôpital")
    >>> [text[s:e] == unicodedata.normalize("NFD", w) for (s, e), w in zip(tokenize(text),
    ...     ["Évaluée", "à", "l", "'", "hôpital"])]
    [True, True, True, True, True]

    Soft hyphens and zero-width joiners stay inside words; zero-width spaces separate them:

    >>> text = "hyper\u00adtension\u200bnoted"
    >>> [text[s:e] for s, e in tokenize(text)]
    ['hyper\xadtension', 'noted']
    """
    pattern = _ASCII_WORD if text.isascii() else _WORD
    return [m.span() for m in pattern.finditer(text)]
