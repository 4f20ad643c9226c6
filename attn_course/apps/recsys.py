"""Attention in recommendation: SASRec-style next-item prediction (Kang and McAuley, 2018).

A user's history of items is a sequence; a causal Transformer (the library's ``TransformerBlock``
with ``causal=True``) reads it and the state at the last position scores every item by a dot
product with the item embeddings (shared with the input embeddings, as in SASRec). Its causal
attention weights say which past items the next recommendation is based on.

``make_histories`` plants a pattern a last-item rule cannot see: a user follows two interleaved
series (episodes of two shows, say), so the next item continues the series of the item *before*
the last one (lag 1 from the last item, two steps before the predicted one): the last item
belongs to the other series. ``popularity_scores`` and ``last_item_scores`` are the baselines without attention.

Dimension glossary: B users, T history length, D model width, V items (id 0 is padding).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from .._validation import require_int, shape_error
from ..transformer import TransformerBlock, TransformerConfig

__all__ = ["Histories", "make_histories", "SASRec", "popularity_scores", "last_item_scores", "hit_rate"]


@dataclass
class Histories:
    items: torch.Tensor  # (N, T) item ids 1 .. V - 1
    num_items: int  # V (id 0 is padding)


def make_histories(n: int, generator: torch.Generator, num_items: int = 100, length: int = 12,
                   noise: float = 0.1, popular: int = 10) -> Histories:
    """``n`` histories of ``length`` items: two interleaved series ``a, b, a+1, b+1, ...`` (mod items).

    With probability ``noise`` an item is replaced by one of the ``popular`` first items (impulse
    buys), which makes popularity a real, if weak, baseline.
    """
    n, V, T = require_int(n, "n"), require_int(num_items, "num_items", minimum=3), require_int(length, "length")
    starts = torch.randint(0, V - 1, (n, 2), generator=generator)  # (N, 2): where the two series start
    t = torch.arange(T)
    items = (starts[:, t % 2] + (t // 2)[None, :]) % (V - 1) + 1  # (N, T): ids 1 .. V - 1
    swap = torch.rand(n, T, generator=generator) < noise
    items = torch.where(swap, torch.randint(1, popular + 1, (n, T), generator=generator), items)
    return Histories(items, V)


class SASRec(nn.Module):
    """Item + position embeddings, causal Transformer blocks, scores = last state . item embeddings.

    ``forward(items (B, T))`` returns ``(scores (B, T, V), attention)``: position ``t``'s scores
    for the item at ``t + 1``, and each block's weights ``(B, H, T, T)``.
    """

    def __init__(self, num_items: int, max_len: int = 32, dim: int = 32, heads: int = 2, layers: int = 2) -> None:
        super().__init__()
        self.num_items, self.max_len = require_int(num_items, "num_items"), require_int(max_len, "max_len")
        self.item = nn.Embedding(num_items, dim, padding_idx=0)
        self.pos = nn.Embedding(max_len, dim)
        config = TransformerConfig(vocab_size=num_items, max_len=max_len, d_model=dim, num_heads=heads,
                                   num_layers=layers, d_ff=2 * dim)
        self.blocks = nn.ModuleList(TransformerBlock(config, causal=True) for _ in range(layers))
        self.norm = nn.LayerNorm(dim)

    def forward(self, items: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
        if items.dim() != 2 or items.dtype != torch.long or items.shape[1] > self.max_len:
            raise shape_error("items", items, f"(B, T) item ids (torch.long), T <= {self.max_len}")
        x = self.item(items) + self.pos(torch.arange(items.shape[1]))  # (B, T, D)
        maps = []
        for block in self.blocks:
            x, w = block(x, key_padding_mask=items != 0)  # (B, T, D), (B, H, T, T)
            maps.append(w)
        return self.norm(x) @ self.item.weight.T, maps  # (B, T, V)


def popularity_scores(train_items: torch.Tensor, num_items: int) -> torch.Tensor:
    """``(V,)`` how often each item was bought in training: recommend the best sellers to everyone."""
    counts = torch.bincount(train_items.flatten(), minlength=num_items).float()
    counts[0] = -1.0  # never recommend padding
    return counts


def last_item_scores(train_items: torch.Tensor, num_items: int) -> torch.Tensor:
    """``(V, V)`` transition counts ``last -> next`` in training: recommend what followed the last item."""
    counts = torch.zeros(num_items, num_items)
    prev, nxt = train_items[:, :-1].flatten(), train_items[:, 1:].flatten()
    counts.index_put_((prev, nxt), torch.ones(len(prev)), accumulate=True)
    counts[:, 0] = -1.0
    return counts


def hit_rate(scores: torch.Tensor, targets: torch.Tensor, k: int = 10) -> float:
    """Share of users whose next item is among the ``k`` best ``scores (B, V)``."""
    return (scores.topk(k, -1).indices == targets[:, None]).any(-1).float().mean().item()
