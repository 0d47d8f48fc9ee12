"""Exceptions raised by streams, readers and writers.

Both are ``ValueError`` subclasses so callers that only know "bad input" can catch that;
the message always names what is wrong and where (``file:line``, or the expression).

>>> raise DataError("doc.ann:3: offsets 10-5 are reversed")
Traceback (most recent call last):
...
pureml.stream.errors.DataError: doc.ann:3: offsets 10-5 are reversed
"""

from __future__ import annotations


class StreamError(ValueError):
    """A stream built or used wrongly: bad stat expression, bad state, bad chain order."""


class DataError(StreamError):
    """Input data that cannot be read: the message starts with ``path`` or ``path:line``."""

    def __init__(self, message: str, *, path: str | None = None, line: int | None = None) -> None:
        where = path if line is None else f"{path}:{line}"
        super().__init__(f"{where}: {message}" if where else message)
        self.message = message
        self.path = path
        self.line = line


class EmptyShareError(StreamError):
    """A global batch with fewer documents than ranks: some rank would train on nothing."""


class StreamChangedWarning(UserWarning):
    """A stream resumed from a state saved with other files or other functions: the position
    may now stand for other documents. ``warnings.simplefilter("error", StreamChangedWarning)``
    makes it an error."""
