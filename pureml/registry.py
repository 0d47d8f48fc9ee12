"""Named factories that recipes refer to (`factory = "ner_crf"`).

A recipe can only name what is registered here; users register their own from Python::

    from pureml.registry import components

    @components.register("my_head")
    class MyHead(Component): ...
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

F = TypeVar("F", bound=Callable[..., Any])


class Registry:
    """A name -> factory table for one kind of object (components, readers, ...).

    Recipes name factories (``factory = "ner_crf"``); registering one makes it nameable.

    >>> readers = Registry("reader")
    >>> @readers.register("lines")
    ... def lines(path: str) -> list[str]:
    ...     return open(path).read().splitlines()
    >>> readers.get("lines") is lines
    True
    >>> readers.get("line")
    Traceback (most recent call last):
    ...
    KeyError: "unknown reader factory 'line' (known: lines)"
    """

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self._factories: dict[str, Callable[..., Any]] = {}

    def register(self, name: str) -> Callable[[F], F]:
        def decorator(factory: F) -> F:
            if name in self._factories and self._factories[name] is not factory:
                raise ValueError(f"{self.kind} factory {name!r} is already registered")
            self._factories[name] = factory
            return factory

        return decorator

    def get(self, name: str) -> Callable[..., Any]:
        try:
            return self._factories[name]
        except KeyError:
            known = ", ".join(sorted(self._factories)) or "none"
            raise KeyError(f"unknown {self.kind} factory {name!r} (known: {known})") from None

    def __contains__(self, name: object) -> bool:
        return name in self._factories

    def names(self) -> list[str]:
        return sorted(self._factories)


components = Registry("component")
readers = Registry("reader")
optimizers = Registry("optimizer")
schedules = Registry("schedule")
scorers = Registry("scorer")
loggers = Registry("logger")
