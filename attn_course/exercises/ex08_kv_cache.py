"""Exercise 8: decoding with a KV cache (practises chapters 14, 15 and 16).

Tasks:
    top_p_filter(logits, p)                       nucleus filtering: logits (..., V), the rest -> -inf
    cache_append(cache_k, cache_v, k, v)          (B, H, S, d) + (B, H, T, d) -> (B, H, S + T, d) twice
    attend_one_query(q, k_cache, v_cache, key_mask)   q (B, H, 1, d) over (B, H, S, d) -> (B, H, 1, d)
        key_mask (B, S) bool: True = a real token, False = left padding (never attended)
    kv_cache_bytes(num_layers, num_kv_heads, head_dim, tokens, batch, dtype_bytes)   -> int
    repeat_kv(x, n_rep)                           (B, H_kv, S, d) -> (B, H_kv * n_rep, S, d)

References: ``attn_course.decoding.top_p_filter``, ``attn_course.kv_cache.kv_cache_bytes``,
``attn_course.gqa.repeat_kv``; ``cache_append`` is what ``DynamicCache`` does per layer and
``attend_one_query`` the decode step of ``GroupedQueryAttention`` (tests check both against
the library).

Dimension glossary: B batch, H heads (H_kv key/value heads), S cached positions, T new
positions, d head_dim, V vocabulary.
"""

from __future__ import annotations

import torch

from ..attention import scaled_dot_product_attention
from ..decoding import top_p_filter
from ..gqa import repeat_kv
from ..grading.tasks import Case, Exercise, Task, randn
from ..kv_cache import kv_cache_bytes

_ATTENTIONS = ("attn_course.attention.scaled_dot_product_attention", "attn_course.attention.attention_weights_unchecked",
               "attn_course.gqa.grouped_query_attention",
               "torch.nn.functional.scaled_dot_product_attention",
               "torch.nn.functional.multi_head_attention_forward")


# --------------------------------------------------------------------------- references


def cache_append_reference(cache_k: torch.Tensor, cache_v: torch.Tensor, k: torch.Tensor,
                           v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``DynamicCache``'s step for one layer: new positions after the cached ones, along the sequence axis."""
    return torch.cat([cache_k, k], dim=2), torch.cat([cache_v, v], dim=2)  # (B, H, S + T, d)


def attend_one_query_reference(q: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor,
                               key_mask: torch.Tensor) -> torch.Tensor:
    """The decode step's attention: the newest query over every cached key that is a real token."""
    mask = key_mask[:, None, None, :]  # (B, 1, 1, S): broadcasts over heads and the one query
    out, _ = scaled_dot_product_attention(q, k_cache, v_cache, mask=mask)  # (B, H, 1, d)
    return out


def _top_p_reference(logits: torch.Tensor, p: float) -> torch.Tensor:
    return top_p_filter(logits, p)


def _bytes_reference(num_layers, num_kv_heads, head_dim, tokens, batch, dtype_bytes):
    return kv_cache_bytes(num_layers, num_kv_heads, head_dim, tokens, batch, dtype_bytes)


def _repeat_reference(x: torch.Tensor, n_rep: int) -> torch.Tensor:
    return repeat_kv(x, n_rep)


# --------------------------------------------------------------------------- cases


def _top_p_cases(g: torch.Generator) -> list[Case]:
    peaked = torch.tensor([[4.0, 1.0, 0.5, 0.0, -1.0, -2.0]])  # one token holds most of the mass
    return [
        Case("a batch of rows, p = 0.9", (randn(g, 3, 10, scale=2.0), 0.9)),
        Case("p = 0.5", (randn(g, 2, 7, scale=2.0), 0.5)),
        Case("one token already above p", (peaked, 0.8),
             hint="The most likely token is always kept, even when it alone holds more than p."),
        Case("p = 1 keeps every token", (randn(g, 2, 5), 1.0),
             hint="Drop a token only when the tokens ranked above it already reach p."),
        Case("tokens not in sorted order, batch and heads", (randn(g, 2, 3, 9, scale=3.0), 0.7),
             hint="Sort, decide on the sorted probabilities, then put the decisions back in vocabulary order "
                  "(scatter with the sort's indices)."),
    ]


def _append_cases(g: torch.Generator) -> list[Case]:
    return [
        Case("decode: one new position", (randn(g, 2, 3, 5, 4), randn(g, 2, 3, 5, 4), randn(g, 2, 3, 1, 4),
                                          randn(g, 2, 3, 1, 4))),
        Case("several new positions", (randn(g, 1, 2, 3, 8), randn(g, 1, 2, 3, 8), randn(g, 1, 2, 4, 8),
                                       randn(g, 1, 2, 4, 8))),
        Case("an empty cache (before prefill)", (randn(g, 2, 2, 0, 4), randn(g, 2, 2, 0, 4), randn(g, 2, 2, 6, 4),
                                                  randn(g, 2, 2, 6, 4)),
             hint="A cache with 0 positions: the result is just the new keys and values."),
        Case("keys and values differ", (randn(g, 3, 1, 2, 2), randn(g, 3, 1, 2, 2) + 5, randn(g, 3, 1, 1, 2),
                                        randn(g, 3, 1, 1, 2) - 5),
             hint="Append k to cache_k and v to cache_v, along the sequence axis (dim 2)."),
    ]


def _attend_cases(g: torch.Generator) -> list[Case]:
    def case(B, H, S, d, lengths):
        mask = torch.arange(S)[None] >= (S - torch.tensor(lengths))[:, None]  # (B, S): left padding
        return (randn(g, B, H, 1, d), randn(g, B, H, S, d), randn(g, B, H, S, d), mask)

    return [
        Case("no padding", case(2, 2, 5, 4, [5, 5])),
        Case("one cached key", case(1, 3, 1, 8, [1])),
        Case("left padding", case(3, 2, 6, 4, [6, 2, 4]),
             hint="Padding keys (key_mask False) must get weight exactly 0: set their scores to -inf "
                  "before the softmax."),
        Case("long cache, wide heads", case(2, 4, 40, 16, [40, 33]),
             hint="Scale the scores by 1 / sqrt(d), d = the last dimension of q."),
    ]


def _bytes_cases(g: torch.Generator) -> list[Case]:
    return [
        Case("GPT-2 small, 1024 tokens, float16", (12, 12, 64, 1024, 1, 2)),
        Case("Llama-3-8B, 8192 tokens, batch 4", (32, 8, 128, 8192, 4, 2)),
        Case("float32", (2, 4, 8, 10, 3, 4), hint="dtype_bytes is the size of one number: 4 for float32."),
        Case("no tokens yet", (4, 2, 16, 0, 2, 2)),
        Case("Llama-3-70B, 128k tokens", (80, 8, 128, 131072, 1, 2),
             hint="2 (one K and one V) x layers x kv_heads x head_dim x tokens x batch x dtype_bytes."),
    ]


def _repeat_cases(g: torch.Generator) -> list[Case]:
    return [
        Case("2 KV heads, 4 query heads", (randn(g, 2, 2, 5, 4), 2)),
        Case("MQA: 1 KV head, 6 query heads", (randn(g, 1, 1, 3, 8), 6)),
        Case("MHA: n_rep = 1", (randn(g, 2, 4, 3, 2), 1)),
        Case("order of the copies", (randn(g, 1, 3, 2, 2), 3),
             hint="Output head j is input head j // n_rep: each KV head is copied n_rep times in a row "
                  "(0, 0, 0, 1, 1, 1, ...), not the whole set n_rep times (0, 1, 2, 0, 1, 2, ...)."),
    ]


EXERCISE = Exercise(
    id="ex08_kv_cache",
    title="Decoding with a KV cache",
    tasks=(
        Task("top_p_filter", _top_p_reference, _top_p_cases, points=2, arg_names=("logits", "p"),
             forbidden=("attn_course.decoding.top_p_filter", "attn_course.decoding.sampling_distribution"),
             hint="probs = softmax of the sorted logits; mass_before = cumsum(probs) - probs; drop a token when "
                  "mass_before >= p; scatter the decisions back and set the dropped logits to -inf."),
        Task("cache_append", cache_append_reference, _append_cases, points=1,
             arg_names=("cache_k", "cache_v", "k", "v"),
             forbidden=("attn_course.kv_cache.KVCache.update",),
             hint="torch.cat along dim 2 (the sequence axis of (B, H, S, d)); return new tensors, "
                  "the inputs unchanged."),
        Task("attend_one_query", attend_one_query_reference, _attend_cases, points=2,
             arg_names=("q", "k_cache", "v_cache", "key_mask"), forbidden=_ATTENTIONS,
             hint="scores = q @ k_cache^T / sqrt(d): (B, H, 1, S); -inf where key_mask is False "
                  "(key_mask[:, None, None, :]); softmax over S; weights @ v_cache: (B, H, 1, d)."),
        Task("kv_cache_bytes", _bytes_reference, _bytes_cases, points=1,
             arg_names=("num_layers", "num_kv_heads", "head_dim", "tokens", "batch", "dtype_bytes"),
             forbidden=("attn_course.kv_cache.kv_cache_bytes", "attn_course.kv_cache.ModelShape.kv_bytes"),
             hint="2 (one K and one V) x num_layers x num_kv_heads x head_dim x tokens x batch x dtype_bytes, an int."),
        Task("repeat_kv", _repeat_reference, _repeat_cases, points=1, arg_names=("x", "n_rep"),
             forbidden=("attn_course.gqa.repeat_kv",),
             hint="(B, H_kv, S, d) -> (B, H_kv * n_rep, S, d): x.repeat_interleave(n_rep, dim=1), or "
                  "x[:, :, None].expand(B, H_kv, n_rep, S, d).reshape(B, H_kv * n_rep, S, d)."),
    ),
)
