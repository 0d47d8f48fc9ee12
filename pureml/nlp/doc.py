"""Documents and spans: the data every layer above the streams talks about.

Readers put annotations in ``doc.spans["gold"]``; components write predictions to their own group
(``"ents"`` for NER by default) or onto span attributes. Offsets are character offsets into
``doc.text``; ``doc.words`` are the tokenizer's (start, end) offsets, computed once per document.

>>> doc = Doc("Familial breast cancer.", id="d1")
>>> doc.spans["gold"] = [Span(9, 22, "Disease")]
>>> doc.words
((0, 8), (9, 15), (16, 22), (22, 23))
>>> doc.word_range(doc.spans["gold"][0])
(1, 3)
"""

from __future__ import annotations

import bisect
import re
from typing import Any

import attrs

from .tokenizer import tokenize

_SURROGATE = re.compile("[\ud800-\udfff]")


def lone_surrogate(text: str) -> int | None:
    """The offset of the first lone UTF-16 surrogate in ``text`` (half of a character that a
    broken export split, such as JSON's ``"\\ud83d"`` without its pair), or None. No tokenizer
    or writer takes one.

    >>> lone_surrogate("pain \\ud83d here")
    5
    >>> lone_surrogate("pain \\U0001F600 here") is None
    True
    """
    found = _SURROGATE.search(text)
    return found.start() if found else None


@attrs.define(eq=False)
class Span:
    """A labelled character span with attributes (``{"type": "SpecificDisease"}``).

    >>> doc = Doc("No chest pain.")
    >>> span = Span(3, 13, "problem", {"status": "negated"})
    >>> doc.text[span.start : span.end], span.attributes["status"]
    ('chest pain', 'negated')
    """

    start: int
    end: int
    label: str
    attributes: dict[str, Any] = attrs.field(factory=dict)
    id: str | None = None

    def key(self) -> tuple[int, int, str]:
        return (self.start, self.end, self.label)

    def copy(self) -> Span:
        return Span(self.start, self.end, self.label, dict(self.attributes), self.id)


@attrs.define(eq=False)
class Doc:
    """A text with its words, span groups and free metadata.

    Words are character offsets, computed on first use by pureml's tokenizer; span groups are
    named lists (readers fill ``"gold"``, an NER head writes ``"ents"``).

    >>> doc = Doc("Mother had diabetes.", id="note-1")
    >>> doc.word_texts()
    ['Mother', 'had', 'diabetes', '.']
    >>> doc.spans["gold"] = [Span(11, 19, "problem", {"status": "family"})]
    >>> [(doc.text[s.start : s.end], s.label) for s in doc.spans["gold"]]
    [('diabetes', 'problem')]
    """

    text: str
    id: str = ""
    spans: dict[str, list[Span]] = attrs.field(factory=dict)
    meta: dict[str, Any] = attrs.field(factory=dict)
    _words: tuple[tuple[int, int], ...] | None = attrs.field(default=None, alias="words")
    # the words' start and end offsets, for word_range's bisections (built once: rebuilding
    # them for every span was a tenth of preprocessing's time on NCBI abstracts)
    _bounds: tuple[list[int], list[int]] | None = attrs.field(default=None, init=False, repr=False)

    @property
    def words(self) -> tuple[tuple[int, int], ...]:
        if self._words is None:
            self._words = tuple(tokenize(self.text))
        return self._words

    def word_texts(self) -> list[str]:
        return [self.text[s:e] for s, e in self.words]

    def word_range(self, span: Span) -> tuple[int, int]:
        """Indices [first, last) of the words a span covers (words it touches count)."""
        if self._bounds is None:
            self._bounds = [s for s, _ in self.words], [e for _, e in self.words]
        starts, ends = self._bounds
        first = bisect.bisect_right(ends, span.start)
        last = bisect.bisect_left(starts, span.end)
        return first, max(last, first)

    def copy(self, *, drop: tuple[str, ...] = ()) -> Doc:
        """A copy with copied spans; groups named in ``drop`` are left out."""
        return Doc(
            self.text,
            id=self.id,
            spans={k: [s.copy() for s in v] for k, v in self.spans.items() if k not in drop},
            meta=dict(self.meta),
            words=self._words,
        )
