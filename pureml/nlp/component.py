"""The trainable component protocol and the per-batch forward context.

A component is a ``torch.nn.Module`` with five extra methods, each one stage of the data flow::

    post_init(docs)                 # infer labels from training docs (before parameters exist)
    preprocess(doc, supervision)    # Doc -> features (plain Python) with "stats"
    collate(features)               # list of features -> dict of padded tensors
    forward(batch, ctx)             # tensors -> outputs ("loss" when the batch carries targets)
    postprocess(docs, outputs)      # outputs -> annotations written on the docs

Components find the embedding they use by name through ``ctx.run(name)``, which computes each
component at most once per batch; randomness comes only from ``ctx.dropout`` (counter-based, so
a step replays bit for bit, eager or compiled).

>>> pad_length(70)
80
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

import torch

if TYPE_CHECKING:
    from .doc import Doc
    from .pipeline import Pipeline

_BUCKETS = sorted({m * 2**k for k in range(1, 20) for m in (4, 5, 6)} | {1, 2, 4})


def pad_length(n: int) -> int:
    """Smallest bucket >= n among 1, 2, 4 then 2^k * (1, 1.25, 1.5): at most 25% padding."""
    for b in _BUCKETS:
        if b >= n:
            return b
    raise ValueError(f"sequence of {n} positions is longer than the largest bucket")


class Component(torch.nn.Module):
    """Base class of pipeline components; see the module docstring for the protocol.

    Subclasses pass their constructor kwargs to ``config()`` so a saved pipeline can be rebuilt
    from the registry: ``factory(**config())``.
    """

    #: registry name, set by ``@components.register`` users (used in saved configs)
    factory: str = ""

    def __init__(self) -> None:
        super().__init__()
        self.name = ""
        # a weak reference, set by the Pipeline: a plain attribute would register the pipeline
        # as a submodule of its own component (a cycle)
        self._pipeline_ref = None

    # -- wiring -----------------------------------------------------------------------------
    def dependencies(self) -> list[str]:
        """Names of the components this one runs through ``ctx.run`` (its embedding)."""
        emb = getattr(self, "embedding", None)
        return [emb] if isinstance(emb, str) else []

    @property
    def pipeline(self) -> Pipeline:
        pipeline = self._pipeline_ref() if self._pipeline_ref is not None else None
        if pipeline is None:
            raise RuntimeError(f"component {self.name!r} is not part of a Pipeline")
        return pipeline

    def initialize(self) -> None:
        """Build the parameters that depend on labels or on other components (idempotent)."""

    def stat(self, what: str) -> str:
        """Name of one of this component's stats in ``batch["stats"]``: ``"<name>_<what>"``."""
        return f"{self.name}_{what}"

    # -- protocol ---------------------------------------------------------------------------
    def post_init(self, docs: Iterable[Doc]) -> None:
        """Inspect training docs to infer labels; default: nothing to infer."""

    def plan_shapes(self, words: int | None) -> None:
        """Told before training the most words a training (sub-)batch normally holds (``None``:
        batches are not budgeted in words); a component may pad its shapes up to it, so that
        torch.compile builds one graph for all of them. Default: nothing to plan."""

    def preprocess(self, doc: Doc, supervision: bool = False) -> dict[str, Any]:
        raise NotImplementedError

    def collate(self, features: list[dict[str, Any]]) -> dict[str, Any]:
        raise NotImplementedError

    def forward(self, batch: dict[str, Any], ctx: ForwardContext) -> dict[str, Any]:
        raise NotImplementedError

    def postprocess(self, docs: list[Doc], outputs: dict[str, Any]) -> list[Doc]:
        return docs

    def config(self) -> dict[str, Any]:
        """Constructor kwargs (TOML-serialisable) that rebuild this component, labels included."""
        return {}

    # -- optional files beside the weights (tokenizers, model configs) ----------------------
    def to_disk(self, path) -> None:
        """Write extra files into ``path`` (a folder for this component); default: none."""

    def from_disk(self, path) -> None:
        """Read what ``to_disk`` wrote; called before the weights are loaded."""


class ForwardContext:
    """What a component's ``forward`` sees besides its own batch: other components, stats, key.

    ``key`` is the step's dropout key (0-d int64) or ``None`` for inference (no dropout).
    """

    def __init__(
        self, pipeline: Pipeline, batch: dict[str, Any], key: torch.Tensor | None = None
    ) -> None:
        self.pipeline = pipeline
        self.batch = batch
        self.step_key = key
        self.cache: dict[str, dict[str, Any]] = {}

    @property
    def training(self) -> bool:
        return self.step_key is not None

    @property
    def stats(self) -> dict[str, torch.Tensor]:
        return self.batch.get("stats", {})

    def run(self, name: str) -> dict[str, Any]:
        """Outputs of component ``name`` on this batch, computed once and cached."""
        if name not in self.cache:
            if name not in self.batch:
                raise KeyError(
                    f"component {name!r} has no features in this batch "
                    f"(batch has {sorted(k for k in self.batch if k not in ('stats', 'index'))})"
                )
            comp = self.pipeline.get_pipe(name)
            self.cache[name] = comp(self.batch[name], self)
        return self.cache[name]

    def key(self, *path: str | int) -> torch.Tensor:
        """A key derived from the step key and a stable path such as ``("ner", "dropout")``."""
        from ..core.rng import fold_in

        if self.step_key is None:
            raise RuntimeError("no random key at inference")
        return fold_in(self.step_key, *path)

    def dropout(self, x: torch.Tensor, p: float, *path: str | int) -> torch.Tensor:
        """Counter-based dropout keyed by ``path``; identity at inference or when ``p == 0``."""
        if not self.training or p <= 0:
            return x
        from ..core.rng import dropout

        return dropout(x, p, self.key(*path), True)
