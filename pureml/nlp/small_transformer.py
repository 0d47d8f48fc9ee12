"""A small pre-norm self-attention layer for the from-scratch encoder.

Written out rather than ``torch.nn.TransformerEncoderLayer`` because dropout must come from the
counter-based RNG (replayable, and cheap on CPU once fused) and fully padded rows (empty
documents) must give zeros, not NaN.

Rows may hold several packed documents: ``segments`` gives each position's document number
(0 for padding) and attention stays within a document.

>>> layer = SelfAttentionLayer(8, heads=2)
>>> layer(torch.randn(1, 4, 8), torch.tensor([[1, 1, 2, 0]])).shape
torch.Size([1, 4, 8])
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F


class SelfAttentionLayer(torch.nn.Module):
    """Pre-norm multi-head self-attention + feed-forward, both residual."""

    def __init__(self, width: int, heads: int = 4, ff: int | None = None) -> None:
        super().__init__()
        if width % heads:
            raise ValueError(f"width {width} is not divisible by heads {heads}")
        self.heads = heads
        self.norm1 = torch.nn.LayerNorm(width)
        self.qkv = torch.nn.Linear(width, 3 * width)
        self.out = torch.nn.Linear(width, width)
        self.norm2 = torch.nn.LayerNorm(width)
        self.ff1 = torch.nn.Linear(width, ff or 2 * width)
        self.ff2 = torch.nn.Linear(ff or 2 * width, width)

    def forward(
        self,
        x: torch.Tensor,
        segments: torch.Tensor,
        dropout: Callable[[torch.Tensor, str], torch.Tensor] | None = None,
    ) -> torch.Tensor:
        drop = dropout or (lambda t, _: t)
        bsz, length, width = x.shape
        q, k, v = self.qkv(self.norm1(x)).view(bsz, length, 3, self.heads, -1).unbind(2)
        q, k, v = (t.transpose(1, 2) for t in (q, k, v))  # [B, H, L, d]
        scores = q @ k.transpose(-1, -2) / (q.shape[-1] ** 0.5)
        same = (segments.unsqueeze(-1) == segments.unsqueeze(-2)) & (segments > 0).unsqueeze(-1)
        scores = scores.masked_fill(~same.unsqueeze(1), -1e4)
        # no dropout on the attention probabilities: [rows, heads, R, R] masks dominate an
        # eager CPU step; the outputs of both sub-layers are dropped instead
        probs = scores.softmax(-1)
        h = (probs @ v).transpose(1, 2).reshape(bsz, length, width)
        x = x + drop(self.out(h), "out")
        x = x + drop(self.ff2(F.gelu(self.ff1(self.norm2(x)))), "ff")
        return x * (segments > 0).unsqueeze(-1).to(x.dtype)
