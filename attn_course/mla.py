"""Multi-head latent attention (MLA, DeepSeek-V2, DeepSeek-AI 2024): cache one small latent per token.

Grouped-query attention shrinks the cache by sharing key/value heads. MLA instead caches, per
token and layer, one **latent** vector ``c_kv = x W_dkv`` of width ``d_c`` (much less than
``2 H d``) and rebuilds every head's key and value from it with up-projections::

    k_h = c_kv W_uk_h        v_h = c_kv W_uv_h          (W_uk_h, W_uv_h: d_c x d)

**Absorbed projections** (decode). The keys never need to be rebuilt: for one query head,
``q_h . k_h = q_h . (W_uk_h^T c) = (W_uk_h q_h) . c``, so fold ``W_uk_h`` into the query and
score the latents directly; and ``sum_j P_j v_h,j = W_uv_h^T (sum_j P_j c_j)``, so attend over
the latents and fold ``W_uv_h`` into the output projection. Every head then reads the same
``(S, d_c)`` cache, as in multi-query attention with head width ``d_c``.

**Decoupled RoPE.** A rotary embedding between ``q`` and ``W_uk`` would depend on the key's
position and could not be folded into the query. MLA keeps the latent part position-free and
adds a small rotary part: ``d_r`` extra dimensions per query head and *one* rotary key
``k_r = RoPE(x W_kr)`` per token shared by all heads, cached beside ``c_kv``. The score is
``[q_nope; q_rope] . [k_nope; k_rope]`` over ``d + d_r`` dimensions.

Cache per token and layer: ``d_c + d_r`` numbers (DeepSeek-V2: 512 + 64 = 576, against
``2 H d = 32,768`` for multi-head attention with its 128 heads of 128: 57x less).
(DeepSeek-V2 also compresses the queries through a latent to save activation memory in
training; that changes no cache and is left out here.)

* ``MultiHeadLatentAttention``   the layer: ``forward(x, cache=None, layer=0, absorbed=False)``;
                                 ``absorbed=True`` computes the same output from the latents.
* ``LatentCache``                the per-layer ``c_kv (B, S, d_c)`` and ``k_rope (B, S, d_r)``.
* ``mla_bytes_per_token``, ``MLA_SHAPES``   the cache's size, and DeepSeek-V2's shape.

Dimension glossary: B batch, T new tokens, S keys (cached + new), D model width, H heads,
d head_dim (the position-free part), d_r rotary part, d_c latent width.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn

from attn_course._validation import require_floating, require_int, shape_error
from attn_course.positional import apply_rope

__all__ = ["MultiHeadLatentAttention", "LatentCache", "mla_bytes_per_token", "MLAShape", "MLA_SHAPES"]


class LatentCache:
    """Per layer, the latents ``c_kv (B, S, d_c)`` and the shared rotary keys ``k_rope (B, S, d_r)``."""

    def __init__(self, num_layers: int, latent_dim: int, rope_dim: int) -> None:
        self.num_layers = require_int(num_layers, "num_layers")
        self.latent_dim = require_int(latent_dim, "latent_dim")
        self.rope_dim = require_int(rope_dim, "rope_dim", minimum=0)
        self.latents: list[torch.Tensor | None] = [None] * num_layers
        self.rope_keys: list[torch.Tensor | None] = [None] * num_layers
        self._lengths = [0] * num_layers

    @property
    def seq_len(self) -> int:
        return self._lengths[-1]

    def past(self, layer: int) -> int:
        """Positions layer ``layer`` holds before this pass."""
        return self._lengths[layer]

    def update(self, layer: int, c: torch.Tensor, k_rope: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Append ``c (B, T, d_c)`` and ``k_rope (B, T, d_r)``; return all ``(B, S, d_c)``, ``(B, S, d_r)``."""
        if self.latents[layer] is None:
            self.latents[layer], self.rope_keys[layer] = c, k_rope
        else:
            self.latents[layer] = torch.cat([self.latents[layer], c], dim=1)
            self.rope_keys[layer] = torch.cat([self.rope_keys[layer], k_rope], dim=1)
        self._lengths[layer] += c.shape[1]
        return self.latents[layer], self.rope_keys[layer]

    def allocated_bytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in self.latents + self.rope_keys if t is not None)


class MultiHeadLatentAttention(nn.Module):
    """MLA: a latent ``c_kv`` of width ``latent_dim`` per token, keys/values up-projected from it.

    Args:
        d_model: D.  n_head: H.  head_dim: d (queries, keys and values per head, position-free part).
        latent_dim: d_c.  rope_dim: d_r (even; 0: no positions, as a model with learned positions).
    """

    def __init__(self, d_model: int, n_head: int, head_dim: int, latent_dim: int, rope_dim: int = 0,
                 rope_base: float = 10000.0) -> None:
        super().__init__()
        self.d_model, self.n_head = require_int(d_model, "d_model"), require_int(n_head, "n_head")
        self.head_dim, self.latent_dim = require_int(head_dim, "head_dim"), require_int(latent_dim, "latent_dim")
        self.rope_dim = require_int(rope_dim, "rope_dim", minimum=0)
        if rope_dim % 2:
            raise ValueError(f"rope_dim must be even (RoPE turns pairs of features), got {rope_dim}")
        self.rope_base = rope_base
        H, d = n_head, head_dim
        self.w_dkv = nn.Linear(d_model, latent_dim, bias=False)  # down: x -> c_kv
        self.w_uk = nn.Linear(latent_dim, H * d, bias=False)  # up: c_kv -> keys of every head
        self.w_uv = nn.Linear(latent_dim, H * d, bias=False)  # up: c_kv -> values of every head
        self.w_q = nn.Linear(d_model, H * (d + rope_dim), bias=False)  # queries: position-free + rotary parts
        self.w_kr = nn.Linear(d_model, rope_dim, bias=False) if rope_dim else None  # one shared rotary key
        self.w_o = nn.Linear(H * d, d_model, bias=False)

    def _inputs(self, x: torch.Tensor, cache: LatentCache | None, layer: int):
        """Queries ``(B, H, T, d)`` and ``(B, H, T, d_r)``, all latents ``(B, S, d_c)``, rotary keys ``(B, S, d_r)``."""
        require_floating(x, "x")
        if x.dim() != 3 or x.shape[-1] != self.d_model:
            raise shape_error("x", x, f"(B, T, {self.d_model}) = (B, T, d_model)")
        B, T, _ = x.shape
        past = cache.past(layer) if cache is not None else 0
        pos = torch.arange(past, past + T, device=x.device)
        q = self.w_q(x).view(B, T, self.n_head, self.head_dim + self.rope_dim).transpose(1, 2)  # (B, H, T, d + d_r)
        q_nope, q_rope = q.split([self.head_dim, self.rope_dim], dim=-1)
        c = self.w_dkv(x)  # (B, T, d_c): what the cache stores
        if self.rope_dim:
            q_rope = apply_rope(q_rope, pos, self.rope_base)
            k_rope = apply_rope(self.w_kr(x), pos, self.rope_base)  # (B, T, d_r): one key for all heads
        else:
            k_rope = x.new_zeros(B, T, 0)
        if cache is not None:
            c, k_rope = cache.update(layer, c, k_rope)  # (B, S, d_c), (B, S, d_r)
        return q_nope, q_rope, c, k_rope, past

    def _mask(self, T: int, S: int, past: int, device) -> torch.Tensor:
        q_pos = torch.arange(past, past + T, device=device)
        return torch.arange(S, device=device)[None, :] <= q_pos[:, None]  # (T, S): causal

    def forward(self, x: torch.Tensor, cache: LatentCache | None = None, layer: int = 0,
                absorbed: bool = False) -> torch.Tensor:
        """``x (B, T, D)`` -> ``(B, T, D)``, causal over the cached positions and ``x``; updates ``cache``."""
        q_nope, q_rope, c, k_rope, past = self._inputs(x, cache, layer)
        B, H, T, d = q_nope.shape
        S = c.shape[1]
        scale = 1 / math.sqrt(d + self.rope_dim)
        mask = self._mask(T, S, past, x.device)
        rope_scores = q_rope @ k_rope[:, None].transpose(-1, -2)  # (B, H, T, S): the shared rotary key
        if absorbed:
            w_uk = self.w_uk.weight.view(H, d, self.latent_dim)  # (H, d, d_c)
            q_lat = torch.einsum("bhtd,hdc->bhtc", q_nope, w_uk)  # W_uk folded into the query: (B, H, T, d_c)
            scores = q_lat @ c[:, None].transpose(-1, -2) + rope_scores  # latents scored directly
            weights = torch.softmax((scores * scale).masked_fill(~mask, float("-inf")), dim=-1)
            ctx = weights @ c[:, None]  # (B, H, T, d_c): attention over the latents
            w_uv = self.w_uv.weight.view(H, d, self.latent_dim)  # (H, d, d_c)
            w_o = self.w_o.weight.view(self.d_model, H, d)  # (D, H, d)
            w_ov = torch.einsum("Dhd,hdc->hcD", w_o, w_uv)  # W_uv folded into the output: (H, d_c, D)
            return torch.einsum("bhtc,hcD->btD", ctx, w_ov)
        k = self.w_uk(c).view(B, S, H, d).transpose(1, 2)  # (B, H, S, d): every head's keys rebuilt
        v = self.w_uv(c).view(B, S, H, d).transpose(1, 2)
        scores = q_nope @ k.transpose(-1, -2) + rope_scores  # (B, H, T, S)
        weights = torch.softmax((scores * scale).masked_fill(~mask, float("-inf")), dim=-1)
        out = (weights @ v).transpose(1, 2).reshape(B, T, H * d)  # (B, T, H d)
        return self.w_o(out)

    def new_cache(self, num_layers: int = 1) -> LatentCache:
        return LatentCache(num_layers, self.latent_dim, self.rope_dim)


def mla_bytes_per_token(num_layers: int, latent_dim: int, rope_dim: int, dtype_bytes: int = 2) -> int:
    """``layers x (d_c + d_r) x bytes``: one latent and one shared rotary key per token and layer."""
    require_int(num_layers, "num_layers")
    require_int(latent_dim, "latent_dim")
    require_int(rope_dim, "rope_dim", minimum=0)
    return num_layers * (latent_dim + rope_dim) * require_int(dtype_bytes, "dtype_bytes")


@dataclass(frozen=True)
class MLAShape:
    """A published MLA model's attention shape."""

    name: str
    num_layers: int
    num_heads: int
    head_dim: int  # the position-free part per head (d)
    latent_dim: int  # d_c
    rope_dim: int  # d_r

    def bytes_per_token(self, dtype_bytes: int = 2) -> int:
        return mla_bytes_per_token(self.num_layers, self.latent_dim, self.rope_dim, dtype_bytes)


# DeepSeek-V2 (DeepSeek-AI 2024, section 2.1 and appendix): 60 layers, 128 heads of 128,
# d_c = 4 d = 512, d_r = d / 2 = 64.
MLA_SHAPES: dict[str, MLAShape] = {"deepseek-v2": MLAShape("DeepSeek-V2", 60, 128, 128, 512, 64)}
