"""The from-scratch word encoder: hashed word features, a CNN, optionally a small transformer.

Needs no download and no vocabulary: each word's lower-cased form, prefix, suffix and shape are
hashed (``n_hashes`` hashes each, spaCy's "hash embedding" trick: collisions of one hash are
undone by the others) into fixed-size tables, so unseen words at inference still get vectors.
Registered as ``"scratch_encoder"`` (and the alias ``"hash_embedding"``).

>>> from pureml.nlp.doc import Doc
>>> enc = ScratchEncoder(width=16, depth=1)
>>> feats = enc.preprocess(Doc("BRCA1 mutations"))
>>> feats["ids"].shape  # words x features x hashes
torch.Size([2, 4, 4])
"""

from __future__ import annotations

import hashlib
from functools import lru_cache
from typing import Any

import torch

from ..registry import components
from .component import Component, ForwardContext, pad_length
from .small_transformer import SelfAttentionLayer
from .text_cnn import TextCNN
from .tokenizer import feature_text

FEATURES = ("norm", "prefix", "suffix", "shape")


def word_shape(word: str) -> str:
    """spaCy-style shape: ``"BRCA1" -> "XXXXd"``, ``"Cancer" -> "Xxxxx"`` (runs capped at 4)."""
    out = []
    prev, run = "", 0
    for ch in word:
        c = "X" if ch.isupper() else "x" if ch.isalpha() else "d" if ch.isdigit() else ch
        run = run + 1 if c == prev else 1
        prev = c
        if run <= 4:
            out.append(c)
    return "".join(out)


def word_features(word: str) -> tuple[str, str, str, str]:
    word = feature_text(word)
    low = word.lower()
    return (low, low[:3], low[-3:], word_shape(word))


@lru_cache(maxsize=1 << 18)
def _hashes(feature: str, value: str, n: int) -> tuple[int, ...]:
    digest = hashlib.blake2b(f"{feature}\x00{value}".encode(), digest_size=4 * n).digest()
    return tuple(int.from_bytes(digest[4 * i : 4 * i + 4], "little") for i in range(n))


def pack_rows(lengths: list[int], capacity: int, gap: int) -> tuple[list[tuple[int, int]], int]:
    """First-fit-decreasing packing of documents into rows of ``capacity`` positions.

    Returns ``(row, offset)`` per document (input order) and the number of rows (at least 1);
    documents in one row are separated by ``gap`` empty positions. Empty documents take no
    room.

    >>> pack_rows([6, 3, 2, 0], 8, gap=1)
    ([(0, 0), (1, 0), (1, 4), (0, 0)], 2)
    """
    order = sorted(range(len(lengths)), key=lambda i: -lengths[i])
    used: list[int] = []
    places = [(0, 0)] * len(lengths)
    for i in order:
        n = lengths[i]
        if n == 0:
            continue
        if n > capacity:
            raise ValueError(f"document of {n} words does not fit rows of {capacity}")
        for r, u in enumerate(used):
            start = u + gap if u else 0
            if start + n <= capacity:
                places[i] = (r, start)
                used[r] = start + n
                break
        else:
            places[i] = (len(used), 0)
            used.append(n)
    return places, max(len(used), 1)


@components.register("scratch_encoder")
@components.register("hash_embedding")
class ScratchEncoder(Component):
    """Word vectors ``[B, L, width]`` from hashed features + residual CNN (+ transformer layers).

    Args:
        width: output (and hidden) size.
        rows: table size per feature, in ``FEATURES`` order.
        n_hashes: hashes summed per feature.
        depth / window / pieces: the CNN (``depth=0`` for none).
        transformer_layers / heads: small self-attention layers after the CNN (0 for none).
        dropout: rate on the embedded words (and in the attention layers).
    """

    factory = "scratch_encoder"

    def __init__(
        self,
        width: int = 128,
        rows: list[int] | tuple[int, ...] = (5000, 1000, 2500, 1000),
        n_hashes: int = 4,
        depth: int = 4,
        window: int = 1,
        pieces: int = 3,
        transformer_layers: int = 0,
        heads: int = 4,
        dropout: float = 0.1,
    ) -> None:
        super().__init__()
        if len(rows) != len(FEATURES):
            raise ValueError(f"rows needs one size per feature {FEATURES}, got {list(rows)}")
        self._config = dict(
            width=width,
            rows=list(rows),
            n_hashes=n_hashes,
            depth=depth,
            window=window,
            pieces=pieces,
            transformer_layers=transformer_layers,
            heads=heads,
            dropout=dropout,
        )
        self.output_size = width
        self.rows = list(rows)
        self.n_hashes = n_hashes
        self.p = dropout
        # zero positions between packed documents: each CNN layer sees `window` words on each
        # side, and padding is re-zeroed before every layer, so this gap isolates documents
        self.gap = window if depth else 0
        offsets = [0]
        for r in self.rows[:-1]:
            offsets.append(offsets[-1] + r)
        self.register_buffer("offsets", torch.tensor(offsets).view(1, 1, -1, 1), persistent=False)
        self.table = torch.nn.Embedding(sum(self.rows), width)
        torch.nn.init.normal_(self.table.weight, std=0.1)
        self.mix = torch.nn.Linear(width * len(FEATURES), width)
        self.mix_norm = torch.nn.LayerNorm(width)
        self.cnn = TextCNN(width, depth, window, pieces) if depth else None
        self.attn = torch.nn.ModuleList(
            SelfAttentionLayer(width, heads) for _ in range(transformer_layers)
        )

    def config(self) -> dict[str, Any]:
        return dict(self._config)

    def preprocess(self, doc, supervision: bool = False) -> dict[str, Any]:
        words = doc.word_texts()
        ids = [
            [_hashes(f, v, self.n_hashes) for f, v in zip(FEATURES, word_features(w))]
            for w in words
        ]
        ids_t = torch.tensor(ids, dtype=torch.int64).view(len(words), len(FEATURES), self.n_hashes)
        ids_t = ids_t % torch.tensor(self.rows).view(1, -1, 1)
        return {"ids": ids_t, "stats": {"words": len(words)}}

    def collate(self, features: list[dict[str, Any]]) -> dict[str, Any]:
        lengths = [f["ids"].shape[0] for f in features]
        length = pad_length(max(lengths, default=0))
        places, n_rows = pack_rows(lengths, length, gap=self.gap)
        ids = torch.zeros(n_rows, length, len(FEATURES), self.n_hashes, dtype=torch.int64)
        segments = torch.zeros(n_rows, length, dtype=torch.int64)
        unpack = torch.zeros(len(features), length, dtype=torch.int64)
        for i, (f, (row, offset)) in enumerate(zip(features, places)):
            n = lengths[i]
            ids[row, offset : offset + n] = f["ids"]
            segments[row, offset : offset + n] = i + 1
            # 1 + flat packed position; 0 points at a zero vector (padding)
            unpack[i, :n] = torch.arange(1, n + 1) + row * length + offset
        mask = torch.arange(length) < torch.tensor(lengths).unsqueeze(-1)
        return {"ids": ids, "segments": segments, "unpack": unpack, "mask": mask}

    def forward(self, batch: dict[str, Any], ctx: ForwardContext) -> dict[str, Any]:
        ids, segments = batch["ids"], batch["segments"]
        keep = segments > 0
        vecs = self.table(ids + self.offsets).sum(-2)  # [rows, R, F, D]
        x = self.mix_norm(self.mix(vecs.flatten(-2)))
        x = ctx.dropout(x, self.p, self.name, "embed")
        if self.cnn is not None:
            # no dropout inside the CNN: in eager mode each counter-based mask costs ~60 integer
            # passes over the tensor, more than the layer itself on CPU
            x = self.cnn(x, keep)
        for i, layer in enumerate(self.attn):
            x = layer(x, segments, lambda h, what, i=i: ctx.dropout(h, self.p, self.name, what, i))
        flat = torch.cat([x.new_zeros(1, x.shape[-1]), x.reshape(-1, x.shape[-1])])
        return {"embeddings": flat[batch["unpack"]], "mask": batch["mask"]}
