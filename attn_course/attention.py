"""Scaled dot-product attention, built from its three parts.

    weights = masked_softmax(query @ key^T * scale, mask)     # attention_weights
    output  = weights @ value                                # context_vector

Dimension glossary (see ``attn_course`` for the full one)::

    ...  any leading batch dimensions, e.g. (B,) or (B, H); they broadcast
    L    number of queries            S    number of keys (= number of values)
    d_k  query/key width              d_v  value width

Shapes: ``query (..., L, d_k)``, ``key (..., S, d_k)``, ``value (..., S, d_v)``,
``mask`` boolean broadcastable to ``(..., L, S)`` with ``True`` = may attend, ->
``output (..., L, d_v)`` and ``weights (..., L, S)``.

There is one implementation of each step (``scoring.scaled_dot_score``,
``masking.masked_softmax``, ``context_vector``); ``scaled_dot_product_attention`` chains them.
Inputs are validated once, at the door: the public functions check their arguments, then run
the steps' ``*_unchecked`` cores, which trust their caller. ``attention_weights_unchecked`` is
that core for callers that have checked their own inputs (``multihead.MultiHeadAttention``).
``attention_loop`` is a deliberately slow twin that handles one query at a time, for reading
and for testing the vectorised version against.
"""

from __future__ import annotations

import math

import torch

from attn_course._validation import (
    batch_shape,
    check_mask,
    check_query_key,
    check_value,
    require_floating,
    require_ndim,
    shape_error,
)
from attn_course.masking import causal_mask, masked_softmax_unchecked
from attn_course.scoring import scaled_dot_score_unchecked

__all__ = [
    "scaled_dot_product_attention",
    "attention_weights",
    "attention_weights_unchecked",
    "context_vector",
    "attention_loop",
]


# --------------------------------------------------------------------------- validation


_NO_VALUE = object()  # attention_weights has no value to check (None would be a bad value)


def _check_inputs(query: object, key: object, mask: object, value: object = _NO_VALUE) -> None:
    """The door: ``query``/``key`` (and ``value``, if given) fit together and ``mask`` is boolean,
    broadcastable to ``(..., L, S)``."""
    batch = check_query_key(query, key, "query", "key")
    if value is not _NO_VALUE:
        check_value(value, key, query)
    if mask is not None:
        target = (*batch, query.shape[-2], key.shape[-2])  # (..., L, S): the scores' shape
        check_mask(mask, target, "a boolean (..., L, S) mask (True = may attend)")


# --------------------------------------------------------------------------- the three steps


def attention_weights(
    query: torch.Tensor,
    key: torch.Tensor,
    mask: torch.Tensor | None = None,
    scale: float | None = None,
    *,
    is_causal: bool = False,
) -> torch.Tensor:
    """Attention weights ``masked_softmax(query @ key^T * scale, mask)``.

    Args:
        query: ``(..., L, d_k)``.  key: ``(..., S, d_k)``; leading dims broadcast.
        mask: optional boolean, broadcastable to ``(..., L, S)``; ``True`` = may attend.
        scale: score multiplier, default ``1 / sqrt(d_k)``.
        is_causal: also apply ``causal_mask(L, S)`` (ANDed with ``mask``).

    Returns:
        weights ``(..., L, S)``; rows sum to 1, fully masked rows are all zero.
    """
    _check_inputs(query, key, mask)
    return attention_weights_unchecked(query, key, mask, scale, is_causal=is_causal)


def attention_weights_unchecked(
    query: torch.Tensor,
    key: torch.Tensor,
    mask: torch.Tensor | None = None,
    scale: float | None = None,
    *,
    is_causal: bool = False,
) -> torch.Tensor:
    """``attention_weights`` for a caller that has validated its inputs (the same arguments and
    shapes; ``mask`` boolean, broadcastable to ``(..., L, S)``): trusted, nothing is checked again."""
    if is_causal:
        causal = causal_mask(query.shape[-2], key.shape[-2], device=query.device)  # (L, S), upper-left
        mask = causal if mask is None else mask & causal  # broadcasts to at most (..., L, S)
    scores = scaled_dot_score_unchecked(query, key, scale)  # (..., L, S); default scale 1 / sqrt(d_k)
    return masked_softmax_unchecked(scores, mask, dim=-1)  # (..., L, S): normalise over the keys


def context_vector(weights: torch.Tensor, values: torch.Tensor) -> torch.Tensor:
    """Weighted sum of values: output row ``i`` is ``sum_j weights[..., i, j] * values[..., j, :]``.

    Args:
        weights: ``(..., L, S)``.  values: ``(..., S, d_v)``; leading dims broadcast.

    Returns:
        ``(..., L, d_v)``.
    """
    require_floating(weights, "weights")
    require_floating(values, "values")
    require_ndim(weights, "weights", 2, "(..., L, S)")
    require_ndim(values, "values", 2, "(..., S, d_v)")
    if values.dtype != weights.dtype:
        raise TypeError(f"values has dtype {values.dtype}; expected weights' dtype {weights.dtype}")
    S = weights.shape[-1]
    if values.shape[-2] != S:
        raise shape_error("values", values, f"(..., {S}, d_v): its S must equal weights' last dim = {S}")
    batch_shape(weights, "weights", values, "values", "(..., S, d_v)")
    return _context(weights, values)  # (..., L, d_v)


def _context(weights: torch.Tensor, values: torch.Tensor) -> torch.Tensor:
    return weights @ values  # (..., L, S) @ (..., S, d_v) -> (..., L, d_v)


def scaled_dot_product_attention(
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    mask: torch.Tensor | None = None,
    is_causal: bool = False,
    scale: float | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """``softmax(query @ key^T / sqrt(d_k)) @ value``, returning the output and the weights.

    Agrees with ``torch.nn.functional.scaled_dot_product_attention(query, key, value,
    attn_mask=mask, is_causal=is_causal, scale=scale)`` on every row that has at least one
    allowed key; a fully masked row gives zero output and zero weights (torch versions differ
    there: some give NaN). ``is_causal`` uses torch's upper-left alignment when ``L != S``
    (see ``masking.causal_mask``) and is ANDed with ``mask``.

    Args:
        query: ``(..., L, d_k)``.  key: ``(..., S, d_k)``.  value: ``(..., S, d_v)``.
            Leading (batch) dims broadcast, e.g. one key/value set shared by all heads.
        mask: optional boolean broadcastable to ``(..., L, S)``; ``True`` = may attend.
        is_causal: forbid query ``i`` from attending to keys ``j > i``.
        scale: score multiplier, default ``1 / sqrt(d_k)``.

    Returns:
        ``(output, weights)``: ``(..., L, d_v)`` and ``(..., L, S)``.

    Raises:
        TypeError: a non-tensor, non-floating or mismatched-dtype input, or a non-boolean mask.
        ValueError: shapes that do not fit, naming the argument, its shape and the expected one.
    """
    _check_inputs(query, key, mask, value)
    # checked once, above: the three steps run unchecked
    weights = attention_weights_unchecked(query, key, mask, scale, is_causal=is_causal)  # (..., L, S)
    return _context(weights, value), weights  # (..., L, d_v), (..., L, S)


# --------------------------------------------------------------------------- the readable twin


def attention_loop(
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    mask: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Same result as ``scaled_dot_product_attention(query, key, value, mask)``, one query at a time.

    Slow on purpose (a Python loop over the L queries, no matrix products): it spells out what
    the vectorised version computes. Use it on small inputs only.

    Returns:
        ``(output, weights)``: ``(..., L, d_v)`` and ``(..., L, S)``.
    """
    _check_inputs(query, key, mask, value)
    batch = torch.broadcast_shapes(query.shape[:-2], key.shape[:-2])
    L, S, d_k = query.shape[-2], key.shape[-2], query.shape[-1]
    if mask is not None:
        mask = mask.expand(*batch, L, S)  # a view: lets us pick row i below
    outputs, weight_rows = [], []
    for i in range(L):
        q_i = query[..., i, :].unsqueeze(-2)  # (..., 1, d_k): the i-th query
        # Score of query i against every key: a dot product per key.
        scores_i = (q_i * key).sum(dim=-1) / math.sqrt(d_k)  # (..., 1, d_k) * (..., S, d_k) -> (..., S)
        mask_i = None if mask is None else mask[..., i, :]  # (..., S)
        w_i = masked_softmax_unchecked(scores_i, mask_i, dim=-1)  # (..., S): how much query i takes from each key
        # Output i: the values, each weighted by how much query i attends to it, summed.
        out_i = (w_i.unsqueeze(-1) * value).sum(dim=-2)  # (..., S, 1) * (..., S, d_v) -> (..., d_v)
        outputs.append(out_i)
        weight_rows.append(w_i)
    return torch.stack(outputs, dim=-2), torch.stack(weight_rows, dim=-2)  # (..., L, d_v), (..., L, S)
