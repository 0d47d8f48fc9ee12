"""Run the upstream part of a stream in a background thread, ``n`` elements ahead.

The thread is the only consumer of the upstream iterator, so the order (and every value) is
exactly what a single thread would produce. Positions travel with the elements, so a stream's
``state_dict()`` describes what the consumer received, not what the thread read ahead.
Exceptions raised upstream are re-raised in the consumer at the point they occurred.

>>> list(prefetch(iter(range(5)), 2))
[0, 1, 2, 3, 4]
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Iterator
from typing import Any, TypeVar

T = TypeVar("T")

_DONE = object()


class _Raised:
    def __init__(self, exc: BaseException) -> None:
        self.exc = exc


def prefetch(upstream: Iterator[T], n: int = 2) -> Iterator[T]:
    """Yield what ``upstream`` yields, computed by a daemon thread up to ``n`` elements ahead."""
    if n < 1:
        raise ValueError(f"prefetch({n}): n must be >= 1")
    buffer: queue.Queue[Any] = queue.Queue(maxsize=n)
    stop = threading.Event()

    def put(value: Any) -> bool:
        while not stop.is_set():
            try:
                buffer.put(value, timeout=0.05)
                return True
            except queue.Full:
                continue
        return False

    def work() -> None:
        try:
            for value in upstream:
                if not put(value):
                    break
            else:
                put(_DONE)
        except BaseException as e:  # forwarded to the consumer, which re-raises it
            put(_Raised(e))
        finally:
            close = getattr(upstream, "close", None)
            if close is not None:
                close()

    thread = threading.Thread(target=work, name="pureml-prefetch", daemon=True)
    thread.start()
    try:
        while True:
            value = buffer.get()
            if value is _DONE:
                return
            if isinstance(value, _Raised):
                raise value.exc
            yield value
    finally:
        stop.set()
