"""Grouped-query attention (GQA): fewer key/value heads than query heads.

    H query heads are split into H_kv groups of n_rep = H / H_kv heads; the heads of a group
    share one key head and one value head. H_kv = H is multi-head attention (MHA),
    H_kv = 1 is multi-query attention (MQA, Shazeer 2019), in between is GQA (Ainslie et al. 2023).

The point is the KV cache: it stores H_kv heads, not H, so it is H / H_kv times smaller
(Llama-3-8B: 32 query heads, 8 KV heads, a 4x smaller cache), and decoding, which reads the
whole cache every step, reads that much less.

Dimension glossary (see ``attn_course`` for the full one)::

    B  batch size       H  query heads       H_kv  key/value heads     n_rep = H // H_kv
    L  query length     S  key length        D  embed_dim              d = D // H, head_dim

* ``repeat_kv(x, n_rep)``            ``(B, H_kv, S, d) -> (B, H_kv * n_rep, S, d)``: copy each KV
                                     head to the n_rep query heads of its group.
* ``grouped_query_attention``        the attention step on ``q (B, H, L, d)`` and ``k, v
                                     (B, H_kv, S, d)``; ``naive=True`` repeats the KV heads and
                                     calls the package's ``scaled_dot_product_attention``, the
                                     fast path calls torch's fused SDPA.
* ``GroupedQueryAttention``          the module: one fused projection to ``H + 2 H_kv`` heads
                                     (GPT-2's ``c_attn`` layout when H_kv = H), attention, output
                                     projection; optionally reads and writes a KV cache.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F
from torch import nn

from attn_course._validation import require_int, require_ndim, shape_error
from attn_course.attention import scaled_dot_product_attention
from attn_course.multihead import merge_heads, split_heads

if TYPE_CHECKING:  # for annotations only: the cache is duck-typed (``update``)
    from attn_course.kv_cache import KVCache

__all__ = ["check_heads", "repeat_kv", "grouped_query_attention", "GroupedQueryAttention"]


def check_heads(num_heads: int, num_kv_heads: int, embed_dim: int | None = None,
                names: tuple[str, str, str] = ("num_heads", "num_kv_heads", "embed_dim")) -> None:
    """Raise ``ValueError`` unless ``num_kv_heads`` divides ``num_heads`` (and ``num_heads`` divides ``embed_dim``)."""
    h, hkv, dm = names
    for name, value in [(h, num_heads), (hkv, num_kv_heads)] + ([(dm, embed_dim)] if embed_dim is not None else []):
        require_int(value, name)
    if num_heads % num_kv_heads:
        raise ValueError(f"{hkv} = {num_kv_heads} must divide {h} = {num_heads} "
                         f"(each KV head serves a whole group of query heads)")
    if embed_dim is not None and embed_dim % num_heads:
        raise ValueError(f"{h} = {num_heads} must divide {dm} = {embed_dim}")


def repeat_kv(x: torch.Tensor, n_rep: int) -> torch.Tensor:
    """Repeat each key/value head ``n_rep`` times: ``(B, H_kv, S, d) -> (B, H_kv * n_rep, S, d)``.

    Head ``j`` of the output is input head ``j // n_rep``, so query head ``j`` (in group
    ``j // n_rep``) meets its group's key head. Same as ``x.repeat_interleave(n_rep, dim=1)``.
    """
    require_ndim(x, "x", 4, "(B, H_kv, S, d)")
    require_int(n_rep, "n_rep")
    if n_rep == 1:
        return x
    B, H_kv, S, d = x.shape
    x = x[:, :, None].expand(B, H_kv, n_rep, S, d)  # (B, H_kv, n_rep, S, d), a view
    return x.reshape(B, H_kv * n_rep, S, d)  # (B, H, S, d)


def grouped_query_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    mask: torch.Tensor | None = None,
    is_causal: bool = False,
    naive: bool = False,
    dropout_p: float = 0.0,
) -> torch.Tensor:
    """Attention of ``q (B, H, L, d)`` over ``k, v (B, H_kv, S, d)``, H_kv dividing H -> ``(B, H, L, d)``.

    ``mask``: boolean, broadcastable to ``(B, H, L, S)``, ``True`` = may attend.
    ``is_causal``: upper-left causal mask (use it only when L == S, i.e. no cache in front).
    ``naive``: the package's reference attention on repeated KV heads (for testing the fast path).
    """
    H, H_kv = q.shape[1], k.shape[1]
    if H % H_kv:
        raise shape_error("k", k, f"(B, H_kv, S, d) with H_kv dividing the {H} query heads")
    if naive:
        k, v = repeat_kv(k, H // H_kv), repeat_kv(v, H // H_kv)  # (B, H, S, d)
        out, _ = scaled_dot_product_attention(q, k, v, mask=mask, is_causal=is_causal)
        return out  # (B, H, L, d)
    if mask is not None:
        is_causal = False
    if H_kv != H:
        # torch's SDPA can broadcast the groups itself (enable_gqa, torch >= 2.5) without a copy.
        try:
            return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=dropout_p,
                                                  is_causal=is_causal, enable_gqa=True)
        except TypeError:  # older torch
            k, v = repeat_kv(k, H // H_kv), repeat_kv(v, H // H_kv)
    return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=dropout_p, is_causal=is_causal)


class GroupedQueryAttention(nn.Module):
    """Self-attention with ``num_kv_heads`` key/value heads shared by groups of query heads.

    Parameters: ``qkv`` (one ``Linear(D, (H + 2 H_kv) d)``: queries, then keys, then values,
    GPT-2's ``c_attn`` when H_kv = H) and ``out`` (``Linear(D, D)``).

    ``forward(x, mask=None, is_causal=False, cache=None, layer=0)``: ``x (B, T, D)``; with a
    ``cache`` (``attn_course.kv_cache``) the new keys/values are stored in it under ``layer`` and
    the queries attend over everything it returns; ``mask`` must then be ``(B or 1, 1, T, S)``
    for the keys it returns.
    """

    def __init__(self, embed_dim: int, num_heads: int, num_kv_heads: int | None = None, bias: bool = True,
                 dropout: float = 0.0, naive: bool = False) -> None:
        super().__init__()
        num_kv_heads = num_heads if num_kv_heads is None else num_kv_heads
        check_heads(num_heads, num_kv_heads, embed_dim)
        self.embed_dim, self.num_heads, self.num_kv_heads = embed_dim, num_heads, num_kv_heads
        self.head_dim = embed_dim // num_heads
        self.dropout, self.naive = dropout, naive
        self.qkv = nn.Linear(embed_dim, (num_heads + 2 * num_kv_heads) * self.head_dim, bias=bias)
        self.out = nn.Linear(embed_dim, embed_dim, bias=bias)

    def extra_repr(self) -> str:
        return f"heads={self.num_heads}, kv_heads={self.num_kv_heads}, head_dim={self.head_dim}"

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None, is_causal: bool = False,
                cache: KVCache | None = None, layer: int = 0) -> torch.Tensor:
        H, H_kv, d = self.num_heads, self.num_kv_heads, self.head_dim
        q, k, v = self.qkv(x).split([H * d, H_kv * d, H_kv * d], dim=-1)  # (B, T, H d), (B, T, H_kv d) x2
        q = split_heads(q, H)  # (B, H, T, d)
        k, v = split_heads(k, H_kv), split_heads(v, H_kv)  # (B, H_kv, T, d) each
        if cache is not None:
            k, v = cache.update(layer, k, v)  # (B, H_kv, S, d): the past and the new keys
        p = self.dropout if self.training else 0.0
        y = grouped_query_attention(q, k, v, mask, is_causal, naive=self.naive, dropout_p=p)  # (B, H, T, d)
        return self.out(merge_heads(y))  # (B, H, T, d) -> (B, T, D) -> (B, T, D)

