"""The pipeline: named components, batched inference, training forward, save and load.

Parameter names are ``"<component>.<param>"`` (``"embedding.table.weight"``, ``"ner.start"``),
which is what optimizer groups match and what checkpoints store. Training goes through
``nlp.loss_fn()``, a pure ``loss_fn(params, buffers, batch, key)`` for
``pureml.core.step.make_step``::

    items = [nlp.preprocess(doc, supervision=True) for doc in docs]
    batch = nlp.collate(items)            # batch["stats"]: totals the losses are divided by
    loss, losses = nlp.loss_fn()(params, buffers, batch, key)

A saved model is a folder: ``config.toml`` (factories and constructor kwargs, labels included),
``model.safetensors`` (weights), and one sub-folder per component that needs extra files (a
Hugging Face tokenizer). Saving writes a temporary folder and renames it into place.

>>> from pureml.nlp import Pipeline, ScratchEncoder, NerCrf
>>> nlp = Pipeline({"embedding": ScratchEncoder(width=16, depth=1), "ner": NerCrf(labels=["X"])})
>>> [name for name, _ in nlp.named_parameters()][:2]
['embedding.table.weight', 'embedding.mix.weight']
"""

from __future__ import annotations

import os
import shutil
import uuid
import weakref
from collections.abc import Callable, Iterable, Iterator, Mapping
from pathlib import Path
from typing import Any

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10: the tomli backport has the same API
    import tomli as tomllib  # type: ignore[no-redef]

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from ..registry import components as registry
from ..toml_writer import dump_toml
from .component import Component, ForwardContext
from .doc import Doc

CONFIG = "config.toml"
WEIGHTS = "model.safetensors"
_RESERVED = {"stats", "index", "id"}
# what ``Pipeline.pipe`` (and the scorer) batch by default: a word budget bounds the memory of
# one inference batch (a fixed number of documents does not: documents differ in length)
INFERENCE_BATCH_SIZE = "2000 words"


def check_inference_batch_size(batch_size: int | str) -> Any:
    """The parsed budget of ``Pipeline.pipe``'s ``batch_size`` (``"2000 words"``, ``"32 docs"``
    or an int); a bad one raises ``ValueError`` naming it.

    >>> check_inference_batch_size("2000 wrds")
    Traceback (most recent call last):
    ...
    pureml.stream.errors.StreamError: ...
    """
    # pureml.stream imports pureml.nlp (Doc): imported here, not at the top of the module
    from ..stream.batching import parse_size, stat_value

    if isinstance(batch_size, int) and not isinstance(batch_size, bool) and batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    size = parse_size(batch_size, allow_dataset=False)
    stat_value(Doc(""), size.stat, batch_size)  # an unknown stat fails now, not at a batch
    return size


class Pipeline(torch.nn.Module):
    """Ordered named components; see the module docstring.

    Args:
        components: ``{name: component}`` in pipeline order (embeddings before their users).
        loss_scales: per-component multiplier of its loss in ``forward`` (default 1).

    Calling it on a document predicts (an untrained head's spans are noise, possibly none);
    ``pipe`` does the same over many documents in batches, ``to_disk`` / ``pureml.load``
    save and load it:

    >>> from pureml.nlp import Doc, NerCrf, ScratchEncoder
    >>> nlp = Pipeline({"embedding": ScratchEncoder(width=16, depth=1),
    ...                 "ner": NerCrf(labels=["Disease"])})
    >>> doc = nlp(Doc("Familial breast cancer."))
    >>> nlp.pipe_names, list(doc.spans), len(doc.words)
    (['embedding', 'ner'], ['ents'], 4)
    >>> docs = list(nlp.pipe([Doc("No disease."), Doc("")], batch_size="32 docs"))
    >>> import pureml, tempfile
    >>> with tempfile.TemporaryDirectory() as folder:
    ...     nlp.to_disk(f"{folder}/model")
    ...     pureml.load(f"{folder}/model").get_pipe("ner").labels
    ['Disease']
    """

    def __init__(
        self,
        components: dict[str, Component] | None = None,
        *,
        loss_scales: dict[str, float] | None = None,
    ) -> None:
        super().__init__()
        self.pipe_names: list[str] = []
        self.loss_scales: dict[str, float] = dict(loss_scales or {})
        for name, comp in (components or {}).items():
            self._attach(name, comp)
        self.initialize()

    # -- structure ----------------------------------------------------------------------------
    def _attach(self, name: str, comp: Component) -> None:
        if not isinstance(comp, Component):
            raise TypeError(
                f"pipeline component {name!r} is a {type(comp).__name__}, not a Component"
            )
        if name in _RESERVED or "." in name or not name or hasattr(Pipeline, name):
            raise ValueError(f"invalid component name {name!r}")
        if name in self.pipe_names:
            raise ValueError(f"a component named {name!r} is already in the pipeline")
        comp.name = name
        object.__setattr__(comp, "_pipeline_ref", weakref.ref(self))
        self.add_module(name, comp)
        self.pipe_names.append(name)

    def add_pipe(self, name: str, component: Component) -> Component:
        """Append ``component`` under ``name`` and build what it can; returns it."""
        self._attach(name, component)
        self.initialize()
        return component

    def get_pipe(self, name: str) -> Component:
        if name not in self.pipe_names:
            raise KeyError(f"no component {name!r} in the pipeline (have {self.pipe_names})")
        return getattr(self, name)

    def initialize(self) -> None:
        for name in self.pipe_names:
            comp = self.get_pipe(name)
            for dep in comp.dependencies():
                if dep not in self.pipe_names:  # a typo, not an order to fix
                    arg = next((k for k, v in comp.config().items() if v == dep), None)
                    raise ValueError(
                        f"component {name!r}: "
                        + (f"{arg}={dep!r}: " if arg else "")
                        + f"unknown component {dep!r} (components: {', '.join(self.pipe_names)})"
                    )
                if dep not in self.pipe_names[: self.pipe_names.index(name)]:
                    raise ValueError(
                        f"component {name!r} uses {dep!r}, which must come before it in the pipeline"
                    )
            comp.initialize()

    def _closure(self, names: Iterable[str]) -> list[str]:
        """``names`` plus what they depend on, in pipeline order."""
        need: set[str] = set()
        todo = list(names)
        while todo:
            n = todo.pop()
            if n not in need:
                need.add(n)
                todo.extend(self.get_pipe(n).dependencies())
        return [n for n in self.pipe_names if n in need]

    def heads(self) -> list[str]:
        """Components no other component depends on (the ones that produce annotations)."""
        used = {d for n in self.pipe_names for d in self.get_pipe(n).dependencies()}
        return [n for n in self.pipe_names if n not in used]

    def phases(self) -> list[list[str]]:
        """Groups of components connected by shared parameters (dependencies), in order."""
        parent = {n: n for n in self.pipe_names}

        def find(n: str) -> str:
            while parent[n] != n:
                n = parent[n]
            return n

        for n in self.pipe_names:
            for d in self.get_pipe(n).dependencies():
                parent[find(n)] = find(d)
        groups: dict[str, list[str]] = {}
        for n in self.pipe_names:
            groups.setdefault(find(n), []).append(n)
        return [g for g in groups.values() if any(True for _ in self._params_of(g))]

    def _params_of(self, names: list[str]) -> Iterator[str]:
        for n in names:
            for p, _ in self.get_pipe(n).named_parameters():
                yield f"{n}.{p}"

    # -- data ---------------------------------------------------------------------------------
    def post_init(self, docs: Iterable[Doc]) -> None:
        """Let every component infer labels from ``docs`` (read once), then build parameters."""
        docs = list(docs)
        for name in self.pipe_names:
            self.get_pipe(name).post_init(docs)
        self.initialize()

    def preprocess(
        self, doc: Doc, supervision: bool = False, pipe_names: Iterable[str] | None = None
    ) -> dict[str, Any]:
        """``{"id", "stats", <name>: features}`` for the components ``pipe_names`` and their
        embeddings. Stats: ``docs``, ``words``, ``spans`` (gold), and ``<name>_<stat>`` per
        component (``ner_words``, ``span_classifier_spans``)."""
        names = self._closure(pipe_names if pipe_names is not None else self.pipe_names)
        stats = {"docs": 1, "words": len(doc.words), "spans": len(doc.spans.get("gold", []))}
        item: dict[str, Any] = {"id": doc.id, "stats": stats}
        for name in names:
            feats = dict(self.get_pipe(name).preprocess(doc, supervision=supervision))
            for k, v in feats.pop("stats", {}).items():
                stats[f"{name}_{k}"] = v
            item[name] = feats
        return item

    def collate(self, items: list[dict[str, Any]]) -> dict[str, Any]:
        """Tensors of a batch of preprocessed items, longest document first.

        ``batch["index"][i]`` is the position in ``items`` of batch row ``i``; ``batch["stats"]``
        holds the sums of the items' stats as 0-d float32 tensors (the trainer may replace them
        by global totals before the step).
        """
        if not items:
            raise ValueError("cannot collate an empty batch")
        names = [n for n in self.pipe_names if n in items[0]]
        for it in items:
            if [n for n in self.pipe_names if n in it] != names:
                raise ValueError(
                    "all items of a batch must be preprocessed for the same components"
                )
        order = sorted(range(len(items)), key=lambda i: -items[i]["stats"]["words"])
        stat_names = sorted({k for it in items for k in it["stats"]})
        batch: dict[str, Any] = {
            "stats": {
                k: torch.tensor(float(sum(it["stats"].get(k, 0) for it in items)))
                for k in stat_names
            },
            "index": torch.tensor(order, dtype=torch.int64),
        }
        for name in names:
            batch[name] = self.get_pipe(name).collate([items[i][name] for i in order])
        return batch

    # -- compute ------------------------------------------------------------------------------
    def forward(
        self, batch: dict[str, Any], key: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """Sum of the (scaled) losses of the components with targets in ``batch``, and each loss.

        ``key`` is the step's dropout key; ``None`` disables dropout.
        """
        ctx = ForwardContext(self, batch, key)
        losses: dict[str, torch.Tensor] = {}
        for name in self.pipe_names:
            if name in batch:
                out = ctx.run(name)
                if "loss" in out:
                    losses[name] = out["loss"]
        if not losses:
            raise NoLossError(
                "no component computed a loss: preprocess the docs with supervision=True, for "
                f"a component with targets (this batch feeds {', '.join(sorted(batch)) or 'none'})"
            )
        total = sum(self.loss_scales.get(n, 1.0) * v for n, v in losses.items())
        return total, losses

    def loss_fn(self) -> Callable[..., tuple[torch.Tensor, dict[str, torch.Tensor]]]:
        """A pure ``loss_fn(params, buffers, batch, key) -> (loss, {name: loss})`` for
        ``make_step``: the pipeline's forward through ``torch.func.functional_call``."""

        from ..core.step import module_loss_fn

        return module_loss_fn(self)

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        # nlp("text") annotates; nlp(batch, key) is nn.Module's call (functional_call uses it)
        if args and isinstance(args[0], str | Doc) and len(args) == 1 and not kwargs:
            return next(iter(self.pipe([args[0]], batch_size=1)))
        if args and not isinstance(args[0], Mapping):
            hint = (
                " (nlp.pipe(texts) annotates several)" if isinstance(args[0], list | tuple) else ""
            )
            raise TypeError(
                f"nlp() takes a text or a Doc, got {type(args[0]).__name__}{hint}; "
                "nlp(batch, key) takes a collated batch (a dict)"
            )
        return super().__call__(*args, **kwargs)

    @torch.no_grad()
    def pipe(
        self,
        texts: Iterable[str | Doc],
        batch_size: int | str = INFERENCE_BATCH_SIZE,
        heads: Iterable[str] | None = None,
    ) -> Iterator[Doc]:
        """Annotate texts or docs in batches, yielding docs in input order.

        ``batch_size`` is a budget like the training batches': ``"2000 words"`` (the default)
        adds documents, in input order, while their words fit, so the memory a batch takes is
        bounded whatever the documents' lengths (a longer document gets a batch of its own);
        an int, or ``"32 docs"``, is a number of documents. Heads (default: all, see
        ``heads()``) run one after another on the same batch (a span classifier can classify
        the spans the NER just wrote); a shared embedding is computed once per batch. Batches
        go to the device of the pipeline's parameters.

        Predictions do not depend on how the documents are batched (up to float rounding).
        """
        from ..stream.batching import greedy_batches

        if isinstance(texts, str | Doc):  # would be read as one document per character
            raise TypeError("nlp.pipe() takes an iterable of texts or Docs; nlp(text) takes one")
        heads = list(heads) if heads is not None else self.heads()
        size = check_inference_batch_size(batch_size)
        was_training = self.training
        self.eval()
        try:
            docs = (t if isinstance(t, Doc) else Doc(t) for t in texts)
            for chunk in greedy_batches(docs, size):
                yield from self._annotate(chunk, heads)
        finally:
            self.train(was_training)

    def _annotate(self, docs: list[Doc], heads: list[str]) -> list[Doc]:
        ctx = ForwardContext(self, {}, None)
        device = next(iter(self.parameters()), torch.empty(0)).device
        for head in heads:
            names = self._closure([head])
            # embeddings already computed for this chunk are reused: same docs, same order
            items = [self.preprocess(d, pipe_names=names) for d in docs]
            batch = _to_device(self.collate(items), device)
            ctx.batch = batch
            ctx.cache.pop(head, None)
            out = ctx.run(head)
            ordered = [docs[i] for i in batch["index"].tolist()]
            self.get_pipe(head).postprocess(ordered, out)
        return docs

    # -- persistence --------------------------------------------------------------------------
    def to_disk(self, path: str | os.PathLike) -> None:
        """Save config, weights and extra files to the folder ``path``, replacing it atomically
        (a crash leaves either the old or the new model, never a mix)."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        # an earlier write killed midway left an incomplete temporary, or the previous model moved
        # aside (complete): bring that back if it is all there is, then drop the leftovers
        for stale in path.parent.glob(f".{path.name}.tmp-*"):
            shutil.rmtree(stale, ignore_errors=True)
        olds = sorted(path.parent.glob(f".{path.name}.old-*"), key=lambda p: p.stat().st_mtime)
        if olds and not path.exists():
            os.rename(olds.pop(), path)
        for stale in olds:
            shutil.rmtree(stale, ignore_errors=True)
        tmp = path.with_name(f".{path.name}.tmp-{uuid.uuid4().hex[:8]}")
        tmp.mkdir()
        try:
            config = {
                "nlp": {"pipeline": list(self.pipe_names), "loss_scales": dict(self.loss_scales)},
                "components": {
                    n: {"factory": self._factory(n), **self.get_pipe(n).config()}
                    for n in self.pipe_names
                },
            }
            (tmp / CONFIG).write_text(dump_toml(config), encoding="utf-8")
            # straight to host memory (safetensors writes from there): no second copy of the
            # weights on a GPU, where model-last is written at every checkpoint
            tensors = {
                k: v.detach().to("cpu", copy=True).contiguous()
                for k, v in self.state_dict().items()
            }
            save_file(tensors, str(tmp / WEIGHTS), metadata={"format": "pureml"})
            for n in self.pipe_names:
                sub = tmp / n
                self.get_pipe(n).to_disk(sub)
            _fsync_tree(tmp)
            if path.exists():
                old = path.with_name(f".{path.name}.old-{uuid.uuid4().hex[:8]}")
                os.rename(path, old)
                os.rename(tmp, path)
                shutil.rmtree(old)
            else:
                os.rename(tmp, path)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise

    def _factory(self, name: str) -> str:
        comp = self.get_pipe(name)
        factory = comp.factory
        if not factory or factory not in registry or registry.get(factory) is not type(comp):
            raise ValueError(
                f"component {name!r} ({type(comp).__name__}) is not registered under its "
                f"factory name {factory!r}: register it to save the pipeline"
            )
        return factory

    @classmethod
    def from_disk(cls, path: str | os.PathLike) -> Pipeline:
        """Rebuild a pipeline saved by ``to_disk``; errors name the missing or broken file."""
        path = Path(path)
        cfg_path = path / CONFIG
        # a run folder (its config.toml, if any, is the recipe) holds its model in model-last
        hint = ""
        if (path / "model-last").is_dir():
            hint = f" (a run folder? its model is {path / 'model-last'})"
        if not cfg_path.is_file():
            raise FileNotFoundError(f"no pipeline config at {cfg_path}{hint}")
        try:
            config = tomllib.loads(cfg_path.read_text(encoding="utf-8"))
        except tomllib.TOMLDecodeError as e:
            raise ModelError(f"{cfg_path}: invalid TOML: {e}") from None
        pipeline = config.get("nlp", {}).get("pipeline")
        if not isinstance(pipeline, list) or not isinstance(config.get("components"), dict):
            raise ModelError(f"{cfg_path} is not a saved pipeline's config{hint}")
        comps = {}
        for name in pipeline:
            kwargs = dict(config["components"][name])
            factory = kwargs.pop("factory")
            comp = registry.get(factory)(**kwargs)
            comp.from_disk(path / name)
            comps[name] = comp
        nlp = cls(comps, loss_scales=config["nlp"].get("loss_scales", {}))
        weights = path / WEIGHTS
        if not weights.is_file():
            raise FileNotFoundError(f"missing weights file {weights}")
        try:
            tensors = load_file(str(weights))
        except (SafetensorError, OSError, ValueError) as e:
            raise ModelError(f"corrupted weights file {weights}: {e}") from None
        expected = nlp.state_dict()
        missing = sorted(set(expected) - set(tensors))
        unexpected = sorted(set(tensors) - set(expected))
        if missing or unexpected:
            raise ModelError(
                f"weights file {weights} does not match {cfg_path}: "
                f"missing {missing[:5]}, unexpected {unexpected[:5]}"
            )
        for k, v in tensors.items():
            if v.shape != expected[k].shape:
                raise ModelError(
                    f"weights file {weights}: {k} has shape {tuple(v.shape)}, "
                    f"expected {tuple(expected[k].shape)}"
                )
        nlp.load_state_dict(tensors)
        return nlp


class ModelError(ValueError):
    """A saved pipeline folder that cannot be loaded: the message names the file."""


class NoLossError(ValueError):
    """A training batch from which no component computed a loss (targets missing, or only
    components without a loss, such as an embedding, were fed)."""


def load(path: str | os.PathLike) -> Pipeline:
    """Load a pipeline saved with ``nlp.to_disk(path)`` (weights read with safetensors).

    >>> import tempfile, torch
    >>> from pureml.nlp import NerCrf, Pipeline, ScratchEncoder
    >>> _ = torch.manual_seed(0)
    >>> nlp = Pipeline({"embedding": ScratchEncoder(width=8), "ner": NerCrf(labels=["problem"])})
    >>> nlp.initialize()
    >>> with tempfile.TemporaryDirectory() as folder:
    ...     nlp.to_disk(folder)
    ...     again = load(folder)
    >>> again.pipe_names
    ['embedding', 'ner']
    >>> all(torch.equal(a, b) for a, b in zip(nlp.state_dict().values(), again.state_dict().values()))
    True
    """
    return Pipeline.from_disk(path)


def _to_device(tree: Any, device: torch.device) -> Any:
    if isinstance(tree, torch.Tensor):
        return tree.to(device)
    if isinstance(tree, dict):
        return {k: _to_device(v, device) for k, v in tree.items()}
    return tree


def _fsync_tree(root: Path) -> None:
    for p in root.rglob("*"):
        if p.is_file():
            with open(p, "rb") as f:
                os.fsync(f.fileno())
