"""Flat parameter storage: each bucket of parameters in one 1-D tensor, parameters as views.

A compiled update over ~200 separate tensors is host-bound on a GPU: dynamo guards ~800 inputs
and the runtime wraps ~600 new outputs (3.9 ms on an H100 for BERT-base, 1.45 ms of it on the
device). Over one flat buffer per bucket it is a handful of tensors (1.23 ms; see
benchmarks/RESULTS.md). A :class:`FlatLayout` says where each parameter lives:

- buckets group parameters by (optimizer group, dtype, device), so that every optimizer
  transform sees whole buckets and a group's lr and weight decay apply to its whole bucket;
- within a bucket parameters keep their order, each at an offset rounded up to ``ALIGN_BYTES``
  (the gaps hold zeros, which stay zeros: zero gradient, zero moments, zero update);
- ``flatten`` gives one tensor per bucket (no copy when the tensors already are views of such
  a tensor at the right offsets), ``views`` the parameters as views of it (no copy), ``split``
  the same views in a differentiable form for use inside a compiled graph (its backward is one
  flat gradient per bucket); ``pack``/``unpack`` do the same to every parameter-keyed dict of
  an optimizer state.

Example::

    layout = FlatLayout.build({"w": torch.ones(2, 3), "b": torch.zeros(3)})
    flat = layout.flatten(params)        # {"flat/float32/cpu": 1-D tensor}
    params = layout.views(flat)          # {"w": view (2, 3), "b": view (3,)}
"""

from __future__ import annotations

import operator
from collections.abc import Callable, Mapping
from typing import Any

import attrs
import torch
from torch import Tensor

from pureml.core.state import _is_namedtuple

__all__ = ["ALIGN_BYTES", "CPU_BUCKET_BYTES", "Bucket", "FlatLayout", "ViewCache"]

# Offsets are multiples of this many bytes: views start as aligned as separately allocated
# tensors on a CPU, so kernels (and their rounding) do not depend on where a view starts.
ALIGN_BYTES = 64

# Bucket size cap on a CPU. glibc's malloc serves blocks up to 32 MiB (once its adaptive
# threshold has grown) from its heap, reused from step to step; larger ones are mmapped afresh
# at each allocation and page-faulted in: with BERT-base in one 440 MB bucket, the update's
# three new buffers cost ~320k page faults and about doubled its time (1.0-1.3 s vs ~0.4-0.5 s
# in 16 MiB buckets, 1 thread on this 2-core machine; the per-tensor update took ~0.67 s).
CPU_BUCKET_BYTES = 16 << 20


@attrs.frozen
class Bucket:
    """Parameters stored in one flat tensor: their names, shapes and offsets (in elements)."""

    key: str
    group: str | None
    dtype: torch.dtype
    device: torch.device
    names: tuple[str, ...]
    shapes: tuple[torch.Size, ...]
    strides: tuple[tuple[int, ...], ...]  # contiguous strides of each shape
    offsets: tuple[int, ...]
    numel: int  # the flat length, alignment gaps included

    def pieces(self) -> list[int]:
        """Lengths that ``torch.split`` the flat tensor into: ``[size, gap, size, gap, ...]``."""
        out = []
        for i, (shape, off) in enumerate(zip(self.shapes, self.offsets)):
            end = self.offsets[i + 1] if i + 1 < len(self.offsets) else self.numel
            out += [shape.numel(), end - off - shape.numel()]
        return out


def _bucket_key(group: str | None, dtype: torch.dtype, device: torch.device) -> str:
    parts = ["flat", *([group] if group is not None else []), str(dtype).removeprefix("torch.")]
    return "/".join([*parts, str(device)])


class ViewCache:
    """The flat tensors behind the views a step handed out last, found again by identity.

    Checking ~200 views' bases and offsets costs ~0.1 ms; comparing them by identity with the
    views handed out costs ~5 us. Holds only the latest generation (``reset`` before handing out
    a new one), so it keeps no old state alive.
    """

    def __init__(self) -> None:
        self._known: dict[str, list[tuple[list[Tensor], Tensor]]] = {}

    def reset(self) -> None:
        """Forget every generation (the next ``remember`` starts a new one)."""
        self._known = {}

    def remember(self, key: str, views: list[Tensor], flat: Tensor) -> None:
        """``views`` (in bucket order) were made from ``flat`` for bucket ``key``."""
        self._known.setdefault(key, []).append((views, flat))

    def lookup(self, key: str, views: list[Tensor]) -> Tensor | None:
        """The flat tensor ``views`` were made from, if they are exactly those handed out."""
        for known, flat in self._known.get(key, ()):
            if known[0] is views[0] and all(map(operator.is_, known, views)):
                return flat
        return None


@attrs.frozen
class FlatLayout:
    """Where each parameter lives in its bucket's flat tensor.

    >>> layout = FlatLayout.build({"w": torch.ones(2, 3), "b": torch.zeros(3)})
    >>> [(b.key, b.names, b.offsets, b.numel) for b in layout.buckets]
    [('flat/float32/cpu', ('w', 'b'), (0, 16), 19)]
    >>> flat = layout.flatten({"w": torch.ones(2, 3), "b": torch.zeros(3)})
    >>> views = layout.views(flat)
    >>> views["w"].shape, views["w"]._base is flat["flat/float32/cpu"]
    (torch.Size([2, 3]), True)
    >>> layout.flatten(views)["flat/float32/cpu"] is flat["flat/float32/cpu"]  # no copy
    True
    """

    buckets: tuple[Bucket, ...]
    names: tuple[str, ...]  # every parameter, in the order of the dict it was built from

    @classmethod
    def build(
        cls,
        params: Mapping[str, Tensor],
        group_of: Callable[[str], str | None] | None = None,
        *,
        align_bytes: int = ALIGN_BYTES,
        max_bytes: int | None = None,
    ) -> FlatLayout:
        """A layout for ``params``: one bucket per (``group_of(name)``, dtype, device), or with
        ``max_bytes`` several, each of at most ``max_bytes`` unless one parameter is larger
        (consecutive parameters; later ones keyed ``<key>#1``, ``<key>#2``...).

        >>> layout = FlatLayout.build(
        ...     {"enc.w": torch.ones(4), "head.w": torch.ones(2)},
        ...     group_of=lambda n: n.split(".")[0],
        ... )
        >>> [b.key for b in layout.buckets]
        ['flat/enc/float32/cpu', 'flat/head/float32/cpu']
        """
        if not params:
            raise ValueError("a flat layout needs at least one parameter")
        members: dict[tuple, list[str]] = {}
        for name, t in params.items():
            group = group_of(name) if group_of is not None else None
            members.setdefault((group, t.dtype, t.device), []).append(name)
        buckets = []
        for (group, dtype, device), all_names in members.items():
            align = max(1, align_bytes // dtype.itemsize)
            limit = max_bytes // dtype.itemsize if max_bytes else None
            chunks: list[list[str]] = [[]]
            end = 0
            for n in all_names:
                size = -(-params[n].numel() // align) * align
                if limit is not None and chunks[-1] and end + size > limit:
                    chunks.append([])
                    end = 0
                chunks[-1].append(n)
                end += size
            key = _bucket_key(group, dtype, device)
            for i, names in enumerate(chunks):
                buckets.append(cls._bucket(f"{key}#{i}" if i else key, group, params, names, align))
        return cls(tuple(buckets), tuple(params))

    @staticmethod
    def _bucket(
        key: str, group: str | None, params: Mapping[str, Tensor], names: list[str], align: int
    ) -> Bucket:
        offsets, end = [], 0
        for n in names:
            offsets.append(end)
            end += -(-params[n].numel() // align) * align
        first = params[names[0]]
        return Bucket(
            key=key,
            group=group,
            dtype=first.dtype,
            device=first.device,
            names=tuple(names),
            shapes=tuple(params[n].shape for n in names),
            strides=tuple(_contiguous_strides(params[n].shape) for n in names),
            offsets=tuple(offsets),
            numel=offsets[-1] + params[names[-1]].numel(),
        )

    @property
    def keys(self) -> tuple[str, ...]:
        """The bucket keys, in order."""
        return tuple(b.key for b in self.buckets)

    # -- name-keyed <-> bucket-keyed -----------------------------------------------------------

    def flatten(
        self, tensors: Mapping[str, Tensor], cache: ViewCache | None = None
    ) -> dict[str, Tensor]:
        """One 1-D tensor per bucket holding ``tensors`` (keyed by parameter name).

        When the tensors of a bucket are views of one flat tensor at this layout's offsets (as
        :meth:`views` makes them), that tensor is returned as it is; otherwise the bucket is
        copied into a new one (``torch.cat``, zero gaps). ``tensors`` may be any
        parameter-shaped tree level (params, one optimizer moment) and may cover only some
        buckets, but each bucket whole.
        """
        out = {}
        for b in self.buckets:
            if b.names[0] not in tensors:
                if any(n in tensors for n in b.names):
                    raise ValueError(f"{b.key}: has only some of the bucket's parameters")
                continue
            try:
                ts = [tensors[n] for n in b.names]
            except KeyError as e:
                raise ValueError(f"{b.key}: parameter {e.args[0]!r} is missing") from None
            flat = cache.lookup(b.key, ts) if cache is not None else None
            if flat is None:
                flat = self._base_of(b, ts)
            if flat is None:
                flat = self._concat(b, ts)
            out[b.key] = flat
        return out

    def _base_of(self, b: Bucket, ts: list[Tensor]) -> Tensor | None:
        base = ts[0]._base
        if base is None or base.dim() != 1 or base.numel() != b.numel or base.dtype != ts[0].dtype:
            return None
        start = base.storage_offset()
        for t, shape, off in zip(ts, b.shapes, b.offsets):
            if t.numel() == 0:
                continue
            if (
                t._base is not base
                or t.storage_offset() != start + off
                or t.shape != shape
                or not t.is_contiguous()
            ):
                return None
        return base

    def _concat(self, b: Bucket, ts: list[Tensor]) -> Tensor:
        pieces = []
        dtype = ts[0].dtype
        for t, shape, gap in zip(ts, b.shapes, b.pieces()[1::2]):
            if t.shape != shape:
                raise ValueError(f"{b.key}: expected shape {tuple(shape)}, got {tuple(t.shape)}")
            if t.dtype != dtype or t.device != b.device:
                raise ValueError(
                    f"{b.key}: expected one dtype on {b.device}, got {t.dtype} on {t.device}"
                )
            pieces.append(t.detach().reshape(-1))
            if gap:
                pieces.append(t.new_zeros(gap))
        return torch.cat(pieces)

    def views(
        self, flat: Mapping[str, Tensor], cache: ViewCache | None = None
    ) -> dict[str, Tensor]:
        """The parameters as views of ``flat`` (no copy), in the layout's name order.

        For use outside compiled regions (``as_strided``: one cheap op per parameter; not meant
        to be differentiated, see :meth:`split`). With ``cache``, :meth:`flatten` finds ``flat``
        again from these views by identity.
        """
        out: dict[str, Tensor] = {}
        for b in self.buckets:
            if b.key not in flat:
                continue
            f = flat[b.key]
            start = f.storage_offset()
            vs = [
                f.as_strided(shape, stride, start + off)
                for shape, stride, off in zip(b.shapes, b.strides, b.offsets)
            ]
            if cache is not None:
                cache.remember(b.key, vs, f)
            out.update(zip(b.names, vs))
        return {n: out[n] for n in self.names if n in out}

    def split(self, flat: Mapping[str, Tensor]) -> dict[str, Tensor]:
        """:meth:`views` for inside a compiled (or differentiated) function: ``torch.split`` +
        ``view``, whose backward is one flat gradient per bucket (a single ``cat``)."""
        out: dict[str, Tensor] = {}
        for b in self.buckets:
            if b.key not in flat:
                continue
            pieces = torch.split(flat[b.key], b.pieces())[::2]
            out.update((n, p.view(s)) for n, p, s in zip(b.names, pieces, b.shapes))
        return {n: out[n] for n in self.names if n in out}

    # -- whole trees (optimizer states) ---------------------------------------------------------

    def pack(self, tree: Any, cache: ViewCache | None = None) -> Any:
        """``tree`` with every dict keyed by parameter names (with tensor values) replaced by
        the bucket-keyed dict :meth:`flatten` makes of it: an optimizer state by name becomes
        the state of the same optimizer run over the buckets."""
        names = set(self.names)
        return _map_dicts(
            tree,
            lambda d: all(k in names and isinstance(v, Tensor) for k, v in d.items()),
            lambda d: self.flatten(d, cache),
        )

    def unpack(self, tree: Any, cache: ViewCache | None = None) -> Any:
        """The inverse of :meth:`pack`: bucket-keyed dicts become views by parameter name."""
        keys = set(self.keys)
        return _map_dicts(tree, lambda d: all(k in keys for k in d), lambda d: self.views(d, cache))


def _map_dicts(tree: Any, select: Callable[[Mapping], bool], fn: Callable[[Mapping], Any]) -> Any:
    # ``fn`` applied to the non-empty dicts of ``tree`` that ``select`` picks, the rest rebuilt
    if isinstance(tree, Mapping):
        if tree and select(tree):
            return fn(tree)
        return {k: _map_dicts(v, select, fn) for k, v in tree.items()}
    if _is_namedtuple(tree):
        return type(tree)(*(_map_dicts(v, select, fn) for v in tree))
    if isinstance(tree, tuple | list):
        return type(tree)(_map_dicts(v, select, fn) for v in tree)
    return tree


def _contiguous_strides(shape: torch.Size) -> tuple[int, ...]:
    strides, acc = [], 1
    for d in reversed(shape):
        strides.append(acc)
        acc *= max(d, 1)
    return tuple(reversed(strides))
