"""Counter-based random numbers from integer tensor ops: the same draw eager, compiled and replayed.

A key is a 0-d int64 tensor holding a non-negative 63-bit value, seen as two 32-bit words
``(hi, lo)`` with ``hi < 2**31``. Keys are derived, never advanced: ``fold_in(key, step, index)``
gives the key of one draw, and a draw is a pure function of its key and element index. There is
no generator object, so nothing breaks graphs or differs between eager and ``torch.compile``.

All mixing is 32-bit arithmetic carried in int64 tensors: every intermediate value stays in
``[0, 2**63)``, so there is no signed overflow, and right shifts only ever see non-negative
values (where arithmetic and logical shifts agree).

Example::

    key = make_key(42)
    k = fold_in(key, 7, "ner")          # step 7, component "ner"
    u = uniform(k, (2, 3))              # in [0, 1), float32
    y = dropout(torch.ones(4, 8), 0.1, k)
"""

from __future__ import annotations

import hashlib
import math

import torch
from torch import Tensor

__all__ = ["make_key", "fold_in", "uniform", "random_bits", "dropout", "stable_hash"]

_M32 = 0xFFFFFFFF
_M31 = 0x7FFFFFFF
_M16 = 0xFFFF
# Constants of Chris Wellons' "lowbias32" integer hash (good avalanche, two multiplies).
_C1 = 0x7FEB352D
_C2 = 0x846CA68B
# Odd constants that separate the roles words play in the mixing (golden ratio, sqrt 3 digits).
_G1 = 0x9E3779B9
_G2 = 0x85EBCA6B


def _mul32(x: Tensor, c: int) -> Tensor:
    """(x * c) mod 2**32 for x in [0, 2**32), never leaving [0, 2**63).

    One int64 multiply where ``c < 2**31`` (the product is below 2**63); otherwise ``c`` is split
    as ``2**31 + r`` and the ``2**31`` part is a shift of x's lowest bit. The 16-bit halves this
    replaced cost four more integer ops per multiply: 22% of a compiled dropout mask on CPU.
    """
    if c < 1 << 31:
        return (x * c) & _M32
    return (x * (c - (1 << 31)) + ((x & 1) << 31)) & _M32


def _mix(x: Tensor) -> Tensor:
    """The lowbias32 finaliser: a bijection of [0, 2**32) with strong avalanche."""
    x = x ^ (x >> 16)
    x = _mul32(x, _C1)
    x = x ^ (x >> 15)
    x = _mul32(x, _C2)
    return x ^ (x >> 16)


def _split(key: Tensor) -> tuple[Tensor, Tensor]:
    return (key >> 32) & _M31, key & _M32


def _join(hi: Tensor, lo: Tensor) -> Tensor:
    return ((hi & _M31) << 32) | (lo & _M32)


def stable_hash(text: str) -> int:
    """A 63-bit hash of a string, identical across processes (unlike ``hash``).

    >>> stable_hash("ner") == stable_hash("ner")
    True
    """
    return int.from_bytes(hashlib.blake2b(text.encode(), digest_size=8).digest(), "little") & (
        (1 << 63) - 1
    )


# What torch.compiler.assume_constant_result sets (a name is a constant of the graph; hashlib is
# untraceable). Calling it imports torch._dynamo: +78 MiB of RSS in every process, eager runs too.
stable_hash._dynamo_marked_constant = True  # type: ignore[attr-defined]


def _absorb(hi: Tensor, lo: Tensor, word: Tensor | int) -> tuple[Tensor, Tensor]:
    # Each 32-bit word goes through both halves so that every output bit depends on every input.
    hi = _mix(hi ^ word ^ _G1)
    lo = _mix(lo ^ ((hi + _G2) & _M32))
    hi = _mix(hi ^ lo)
    return hi, lo


def _words(data: int | str | Tensor) -> tuple[Tensor | int, Tensor | int]:
    if isinstance(data, str):
        data = stable_hash(data)
    if isinstance(data, Tensor):
        data = data.to(torch.int64)
        # Masking after the shift gives the two's complement bits even for negative data.
        return data & _M32, (data >> 32) & _M32
    data = int(data) & ((1 << 64) - 1)
    return data & _M32, (data >> 32) & _M32


def fold_in(key: Tensor, *data: int | str | Tensor) -> Tensor:
    """Derive a new key from ``key`` and integers, strings or integer tensors (0-d), in order.

    Pure and deterministic: ``fold_in(k, 3, 1)`` is the same tensor in every process.
    Pass values that change every step (the step, a sub-batch index) as tensors inside
    compiled code, so they do not become constants that trigger recompilation.

    >>> k = fold_in(make_key(0), 5)
    >>> bool((k == fold_in(make_key(0), 5)).all()) and not bool((k == fold_in(make_key(0), 6)))
    True
    """
    hi, lo = _split(key)
    for d in data:
        w_lo, w_hi = _words(d)
        hi, lo = _absorb(hi, lo, w_lo)
        hi, lo = _absorb(hi, lo, w_hi)
    return _join(hi, lo)


def make_key(seed: int) -> Tensor:
    """The root key of a run: a 0-d int64 tensor derived from an integer seed.

    >>> make_key(42).dtype, make_key(42).shape
    (torch.int64, torch.Size([]))
    """
    return fold_in(torch.zeros((), dtype=torch.int64), int(seed))


def random_bits(key: Tensor, shape: tuple[int, ...] | torch.Size | list[int]) -> Tensor:
    """Uniform 32-bit integers (int64 tensor with values in [0, 2**32)) of ``shape``.

    Element ``i`` (row-major) is a hash of ``(key, i)``: the draw does not depend on how the
    tensor is later sliced, and a larger shape extends a smaller one's flat prefix.
    """
    hi, lo = _split(key.to(torch.int64))
    n = 1
    for s in shape:
        n = n * s
    idx = torch.arange(n, dtype=torch.int64, device=key.device)
    # Three rounds: the element index, then each key half; the second key half enters after a
    # mix so that xor-related keys do not give shifted copies of one stream.
    x = _mix((idx & _M32) ^ lo)
    x = _mix(x ^ hi ^ (((idx >> 32) * _G1) & _M32))
    x = _mix((x + lo) & _M32 ^ _G2)
    return x.reshape(tuple(shape))


def uniform(
    key: Tensor, shape: tuple[int, ...] | torch.Size | list[int], dtype: torch.dtype = torch.float32
) -> Tensor:
    """Uniform floats in [0, 1) of ``shape``: exact multiples of 2**-bits, never 1.0.

    >>> u = uniform(make_key(0), (1000,))
    >>> bool((u >= 0).all() and (u < 1).all())
    True
    """
    # Mantissa bits + 1 (eps = 2**-mantissa), capped by the 32 random bits available.
    bits = min(round(-math.log2(torch.finfo(dtype).eps)) + 1, 32)
    x = random_bits(key, shape) >> (32 - bits)
    return x.to(dtype) * (2.0**-bits)


def dropout(x: Tensor, p: float, key: Tensor, training: bool = True) -> Tensor:
    """Inverted dropout with a mask drawn from ``key``: zero with probability ``p``, scale the rest.

    The mask compares 32-bit integers with ``round(p * 2**32)``, so no float rounding enters the
    decision and eager and compiled masks are bitwise equal.

    >>> y = dropout(torch.ones(10_000), 0.25, make_key(1))
    >>> round(float((y == 0).float().mean()), 1), float(y.max())
    (0.2, 1.3333333730697632)
    """
    if not training or p == 0.0:
        return x
    if not 0.0 <= p < 1.0:
        raise ValueError(f"dropout probability must be in [0, 1), got {p}")
    threshold = round(p * 2**32)
    # keep = bits >= threshold as 0/1 arithmetic (the sign bit of bits - threshold), applied
    # as a product: backward then saves a 0/1 tensor of x's dtype, not a bool one. Inductor's
    # CPU code stores bool outputs of vectorised loops slowly: a 2000x256 dropout's forward +
    # backward cost 8.5 ms with torch.where, 3.6 ms like this. Kept values are x * scale as
    # before, bitwise; dropped ones are 0 with x's sign.
    keep = ((random_bits(key, x.shape) - threshold) >> 63) + 1
    return (x * (1.0 / (1.0 - p))) * keep.to(x.dtype)
