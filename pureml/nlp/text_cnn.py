"""A residual window CNN that contextualises word vectors (spaCy's MaxoutWindowEncoder idea).

Each layer concatenates every word's vector with its ``window`` neighbours on each side, maps
them through a maxout layer and layer norm, and adds the result to its input. Padding words are
zeroed before each layer so nothing leaks across the end of a document.

>>> cnn = TextCNN(8, depth=2)
>>> cnn(torch.randn(2, 5, 8), torch.ones(2, 5, dtype=torch.bool)).shape
torch.Size([2, 5, 8])
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F


class Maxout(torch.nn.Module):
    """Linear map to ``pieces`` candidates per output unit, keep the largest."""

    def __init__(self, n_in: int, n_out: int, pieces: int = 3) -> None:
        super().__init__()
        self.pieces = pieces
        self.linear = torch.nn.Linear(n_in, n_out * pieces)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.linear(x)
        return y.view(*y.shape[:-1], -1, self.pieces).amax(-1)


class TextCNN(torch.nn.Module):
    """``depth`` residual maxout-window layers of width ``width``."""

    def __init__(self, width: int, depth: int = 4, window: int = 1, pieces: int = 3) -> None:
        super().__init__()
        self.window = window
        self.layers = torch.nn.ModuleList(
            Maxout(width * (2 * window + 1), width, pieces) for _ in range(depth)
        )
        self.norms = torch.nn.ModuleList(torch.nn.LayerNorm(width) for _ in range(depth))

    def forward(
        self,
        x: torch.Tensor,
        mask: torch.Tensor,
        dropout: Callable[[torch.Tensor, int], torch.Tensor] | None = None,
    ) -> torch.Tensor:
        """``x`` ``[B, L, D]``, ``mask`` ``[B, L]``; ``dropout(h, layer_index)`` after each layer."""
        keep = mask.unsqueeze(-1).to(x.dtype)
        length = x.shape[1]
        w = self.window
        for i, (layer, norm) in enumerate(zip(self.layers, self.norms)):
            xp = F.pad(x * keep, (0, 0, w, w))
            ctx = torch.cat([xp[:, j : j + length] for j in range(2 * w + 1)], dim=-1)
            h = norm(layer(ctx))
            if dropout is not None:
                h = dropout(h, i)
            x = x + h
        return x * keep
