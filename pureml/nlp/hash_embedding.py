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
import re
from functools import lru_cache
from typing import Any

import torch

from ..registry import components
from .component import Component, ForwardContext, pad_length
from .small_transformer import SelfAttentionLayer
from .text_cnn import TextCNN

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
    low = word.lower()
    return (low, low[:3], low[-3:], word_shape(word))


@lru_cache(maxsize=1 << 18)
def _hashes(feature: str, value: str, n: int) -> tuple[int, ...]:
    digest = hashlib.blake2b(f"{feature}\x00{value}".encode(), digest_size=4 * n).digest()
    return tuple(int.from_bytes(digest[4 * i : 4 * i + 4], "little") for i in range(n))


_DIGITS = re.compile(r"\d")


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
        ids = torch.zeros(len(features), length, len(FEATURES), self.n_hashes, dtype=torch.int64)
        for i, f in enumerate(features):
            ids[i, : lengths[i]] = f["ids"]
        mask = torch.arange(length) < torch.tensor(lengths).unsqueeze(-1)
        return {"ids": ids, "mask": mask}

    def forward(self, batch: dict[str, Any], ctx: ForwardContext) -> dict[str, Any]:
        ids, mask = batch["ids"], batch["mask"]
        vecs = self.table(ids + self.offsets).sum(-2)  # [B, L, F, D]
        x = self.mix_norm(self.mix(vecs.flatten(-2)))
        x = ctx.dropout(x, self.p, self.name, "embed")
        if self.cnn is not None:
            # no dropout inside the CNN: in eager mode each counter-based mask costs ~60 integer
            # passes over the tensor, more than the layer itself on CPU
            x = self.cnn(x, mask)
        for i, layer in enumerate(self.attn):
            x = layer(x, mask, lambda h, what, i=i: ctx.dropout(h, self.p, self.name, what, i))
        x = x * mask.unsqueeze(-1).to(x.dtype)
        return {"embeddings": x, "mask": mask}
