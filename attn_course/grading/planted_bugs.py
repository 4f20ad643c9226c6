"""Attention functions with planted bugs, for the exercise that asks for a leakage test.

Every variant has the signature and the contract of
``attn_course.attention.scaled_dot_product_attention``::

    attention(query, key, value, mask=None, is_causal=False, scale=None) -> (output, weights)

    query (..., L, d), key (..., S, d), value (..., S, d_v); mask bool, True = may attend;
    output (..., L, d_v), weights (..., L, S); a fully masked row gives zeros.

``correct`` and ``correct_loop`` keep the contract (two implementations with different
rounding, so a test must compare with a tolerance); the others break it the way real code does:

``off_by_one``         the causal mask keeps one diagonal too many: query t also sees key t + 1
``missing_transpose``  a multi-head wrapper whose split forgets the transpose: with a head axis
                       (inputs ``(B, H, T, d)``, ``H >= 2``) tokens are mixed across positions,
                       so outputs see the future; with one head it is correct
``missing_scale``      no ``1 / sqrt(d)``: the default scale is 1 (an explicit ``scale`` works)

They are written here from torch operations (not by calling the package's attention), so that
a task may forbid the package's attention to the learner without flagging these.

Dimension glossary: B batch, H heads, L queries, S keys, T = L = S in self-attention, d width.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import torch

VARIANTS = ("correct", "correct_loop", "off_by_one", "missing_transpose", "missing_scale")
CORRECT = ("correct", "correct_loop")


def masked_softmax(scores: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
    """Softmax over the last dim where ``mask`` allows; a row with no allowed key gives zeros.

    A copy of the course's masked softmax, kept here on purpose: this module runs inside the
    grading sandbox, which must not expose the library modules that hold tasks' references.
    """
    if mask is not None:
        scores = scores.masked_fill(~mask, float("-inf"))
    top = scores.amax(-1, keepdim=True).clamp_min(torch.finfo(scores.dtype).min)  # finite on empty rows
    e = (scores - top).exp()  # -inf -> 0
    return e / e.sum(-1, keepdim=True).clamp_min(torch.finfo(scores.dtype).tiny)


def _allowed(L: int, S: int, mask: torch.Tensor | None, is_causal: bool, diagonal: int = 0) -> torch.Tensor | None:
    """The combined boolean mask: ``mask`` AND (when causal) key j <= query i + diagonal."""
    if not is_causal:
        return mask
    causal = torch.ones(L, S, dtype=torch.bool).tril(diagonal)  # (L, S)
    return causal if mask is None else mask & causal


def _attend(query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, mask: torch.Tensor | None,
            is_causal: bool, scale: float, diagonal: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    L, S = query.shape[-2], key.shape[-2]
    scores = (query @ key.transpose(-2, -1)) * scale  # (..., L, S)
    weights = masked_softmax(scores, _allowed(L, S, mask, is_causal, diagonal))  # (..., L, S)
    return weights @ value, weights  # (..., L, d_v), (..., L, S)


def _default(scale: float | None, d: int) -> float:
    return 1.0 / math.sqrt(d) if scale is None else float(scale)


def _correct(query, key, value, mask=None, is_causal=False, scale=None):
    return _attend(query, key, value, mask, is_causal, _default(scale, query.shape[-1]))


def _correct_loop(query, key, value, mask=None, is_causal=False, scale=None):
    # One query at a time: the same function, different rounding.
    L, S = query.shape[-2], key.shape[-2]
    s = _default(scale, query.shape[-1])
    allowed = _allowed(L, S, mask, is_causal)
    if allowed is not None:
        allowed = allowed.expand(torch.broadcast_shapes(allowed.shape, (*query.shape[:-1], S)))  # (..., L, S)
    outs, rows = [], []
    for i in range(L):
        scores = (query[..., i, None, :] * key).sum(-1) * s  # (..., 1, d) * (..., S, d) -> (..., S)
        row_mask = None if allowed is None else allowed[..., i, :]  # (..., S)
        w = masked_softmax(scores, row_mask)  # (..., S)
        outs.append((w[..., None] * value).sum(-2))  # (..., S, 1) * (..., S, d_v) -> (..., d_v)
        rows.append(w)
    return torch.stack(outs, -2), torch.stack(rows, -2)  # (..., L, d_v), (..., L, S)


def _off_by_one(query, key, value, mask=None, is_causal=False, scale=None):
    # BUG: tril(1) instead of tril(0): query t may attend to key t + 1.
    return _attend(query, key, value, mask, is_causal, _default(scale, query.shape[-1]), diagonal=1)


def _merge(x: torch.Tensor) -> torch.Tensor:
    *lead, H, T, d = x.shape
    return x.transpose(-3, -2).reshape(*lead, T, H * d)  # (..., H, T, d) -> (..., T, H, d) -> (..., T, D)


def _split(x: torch.Tensor, H: int) -> torch.Tensor:
    *lead, T, D = x.shape
    return x.reshape(*lead, T, H, D // H).transpose(-3, -2)  # (..., T, D) -> (..., T, H, d) -> (..., H, T, d)


def _split_without_transpose(x: torch.Tensor, H: int) -> torch.Tensor:
    *lead, T, D = x.shape
    return x.reshape(*lead, H, T, D // H)  # BUG: reads (T, D) memory as (H, T, d): mixes positions


def _missing_transpose(query, key, value, mask=None, is_causal=False, scale=None):
    # A multi-head wrapper, as a module would have it: heads merged to (..., T, D), split again
    # for the attention, and merged back; the split forgets the transpose.
    if query.dim() < 4 or query.shape[-3] == 1:
        return _correct(query, key, value, mask, is_causal, scale)
    H = query.shape[-3]
    q, k, v = (_split_without_transpose(_merge(x), H) for x in (query, key, value))  # (..., H, T, d)
    out, weights = _attend(q, k, v, mask, is_causal, _default(scale, query.shape[-1]))
    return _split(_merge(out), H), weights  # (..., H, L, d_v), (..., H, L, S)


def _missing_scale(query, key, value, mask=None, is_causal=False, scale=None):
    # BUG: forgets 1 / sqrt(d) when no scale is given.
    return _attend(query, key, value, mask, is_causal, 1.0 if scale is None else float(scale))


_IMPLEMENTATIONS: dict[str, Callable[..., Any]] = {
    "correct": _correct,
    "correct_loop": _correct_loop,
    "off_by_one": _off_by_one,
    "missing_transpose": _missing_transpose,
    "missing_scale": _missing_scale,
}


def planted_attention(variant: str) -> Callable[..., tuple[torch.Tensor, torch.Tensor]]:
    """The attention function ``variant`` (one of ``VARIANTS``), all with the same face.

    Every variant comes back as a function named ``attention`` with the same docstring, so that
    a test has to tell them apart by what they compute.
    """
    if variant not in _IMPLEMENTATIONS:
        raise ValueError(f"unknown variant {variant!r}; known: {', '.join(VARIANTS)}")
    impl = _IMPLEMENTATIONS[variant]

    def attention(query, key, value, mask=None, is_causal=False, scale=None):
        """Scaled dot-product attention: ``(output (..., L, d_v), weights (..., L, S))``."""
        return impl(query, key, value, mask=mask, is_causal=is_causal, scale=scale)

    return attention
