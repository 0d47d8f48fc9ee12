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

_WORD = re.compile(
    r"""
    \d+(?:[.,]\d+)+          # numbers with decimal or thousand separators: 2.5 1,000
  | [^\W_]+                  # letters/digits runs (unicode aware)
  | \S                       # any other single non-space character
    """,
    re.VERBOSE,
)


def tokenize(text: str) -> list[tuple[int, int]]:
    """Return the (start, end) character offsets of the words of ``text``."""
    return [m.span() for m in _WORD.finditer(text)]
