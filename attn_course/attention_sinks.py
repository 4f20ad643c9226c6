"""Attention sinks (StreamingLLM, Xiao et al. 2024): keep the first tokens and a sliding window.

A model trained with full attention learns to park attention it does not need on the first
tokens of the text (they are visible to every query, so softmax can dump mass there): the
*attention sinks*. Decode it with a plain sliding window and those tokens are evicted once the
text outgrows the window; the mass they absorbed lands on the tokens left, and quality collapses.
StreamingLLM keeps the first ``num_sinks`` tokens' keys and values forever, plus the last
``window`` ones: a cache of ``num_sinks + window`` positions, and most of the full cache's quality.

* ``SinkCache``   a ``KVCache`` (``attn_course.kv_cache``) holding positions ``0 .. num_sinks - 1`` and
                  the last ``window``; usable with ``decoding.generate`` and ``GPT``.

While decoding (one token a call) the newest query sees the sinks and the last ``window``
positions, itself included. A chunk of several new tokens is attended in full (causal): its
queries see every key the cache still holds and the whole chunk; only then are the middle
positions evicted. (StreamingLLM also renumbers positions inside the cache for rotary models;
``attn_course.gpt.GPT`` adds learned absolute positions to its inputs, so keys keep theirs.)

Dimension glossary: B batch, H_kv key/value heads, S keys returned, d head_dim.
"""

from __future__ import annotations

import torch

from attn_course._validation import require_int
from attn_course.kv_cache import KVCache

__all__ = ["SinkCache"]


class SinkCache(KVCache):
    """The first ``num_sinks`` positions and the last ``window`` ones, per layer: ``(B, H_kv, <= s + W, d)``.

    ``num_sinks = 0`` is a plain sliding window of ``window`` positions (as ``SlidingWindowCache``
    while decoding); a ``window`` longer than the text is a full cache.
    """

    def __init__(self, num_layers: int, num_kv_heads: int, head_dim: int, num_sinks: int = 4,
                 window: int = 64) -> None:
        super().__init__(num_layers, num_kv_heads, head_dim)
        self.num_sinks = require_int(num_sinks, "num_sinks", minimum=0)
        self.recent = require_int(window, "window")
        self.keys: list[torch.Tensor | None] = [None] * num_layers
        self.values: list[torch.Tensor | None] = [None] * num_layers

    # ``window`` (the model's masking hint) stays None: the sinks lie outside any window, so the
    # cache itself decides what is visible by what it keeps.

    def _kept(self, total: int) -> tuple[int, int]:
        """``(sinks, recent)``: how many of the first and of the last positions are kept after ``total``."""
        sinks = min(self.num_sinks, total)
        return sinks, min(self.recent, total - sinks)

    def num_keys(self, num_new: int) -> int:
        return len(self.key_positions(num_new))

    def key_positions(self, num_new: int) -> torch.Tensor:
        past = self.seq_len
        if num_new == 1:  # decoding: what is kept after this token, itself included
            sinks, recent = self._kept(past + 1)
            return torch.cat([torch.arange(sinks), torch.arange(past + 1 - recent, past + 1)])  # (S,)
        sinks, recent = self._kept(past)  # a chunk: every kept key, then the whole chunk
        return torch.cat([torch.arange(sinks), torch.arange(past - recent, past + num_new)])

    def _store(self, layer, k, v):
        if self.keys[layer] is None:
            k_all, v_all = k, v
        else:
            k_all = torch.cat([self.keys[layer], k], dim=2)  # (B, H_kv, S, d): sinks, recent, new
            v_all = torch.cat([self.values[layer], v], dim=2)
        sinks, recent = self._kept(self._lengths[layer] + k.shape[2])
        S = k_all.shape[2]
        keep = torch.cat([torch.arange(sinks), torch.arange(S - recent, S)]).to(k.device)
        self.keys[layer], self.values[layer] = k_all[:, :, keep], v_all[:, :, keep]
        if k.shape[2] == 1:
            return self.keys[layer], self.values[layer]  # the sinks and the last `window`, the new one included
        return k_all, v_all

    def reset(self) -> None:
        super().reset()
        self.keys = [None] * self.num_layers
        self.values = [None] * self.num_layers

    def allocated_bytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in self.keys + self.values if t is not None)
