"""Attention functions with planted bugs, for the exercise that asks for a leakage test.

Every variant has the signature and the contract of
``attn_course.attention.scaled_dot_product_attention``::

    attention(query, key, value, mask=None, is_causal=False, scale=None) -> (output, weights)

    query (..., L, d), key (..., S, d), value (..., S, d_v); mask bool, True = may attend;
    output (..., L, d_v), weights (..., L, S); a fully masked row gives zeros.

A variant is four numbers, the same four for every variant (a marker in a grading kernel's
inputs file names no bug), and ``planted_attention`` builds them all as the same function
object: one code object, one closure cell holding the numbers. A test has to tell them apart
by what they compute.

``diagonal``     0; 1 or 2: BUG, the causal mask keeps that many diagonals too many (query t
                 also sees keys up to t + diagonal)
``scale_power``  1: the default scale is 1 / sqrt(d)**1; 0 or 2: BUG, 1 or 1 / d (an explicit
                 ``scale`` still works)
``split``        0; 1: BUG, a multi-head wrapper whose split forgets the transpose: with a head
                 axis (``(B, H, T, d)``, ``H >= 2``) tokens are mixed across positions, so outputs
                 see the future; with one head it is correct
``loop``         how it computes, with different rounding (a test must compare with a
                 tolerance): 0 vectorised, 1 one query at a time, 2 in chunks of two queries

They are written here from torch operations (not by calling the package's attention), so that
a task may forbid the package's attention to the learner without flagging these.

Dimension glossary: B batch, H heads, L queries, S keys, T = L = S in self-attention, d width.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch

KNOBS = {"diagonal": (0, 1, 2), "scale_power": (0, 1, 2), "split": (0, 1), "loop": (0, 1, 2)}
# Named variants, for tests and docs only: markers carry the numbers.
VARIANTS: dict[str, dict[str, int]] = {
    "correct": {"diagonal": 0, "scale_power": 1, "split": 0, "loop": 0},
    "correct_loop": {"diagonal": 0, "scale_power": 1, "split": 0, "loop": 1},
    "correct_chunked": {"diagonal": 0, "scale_power": 1, "split": 0, "loop": 2},
    "off_by_one": {"diagonal": 1, "scale_power": 1, "split": 0, "loop": 0},
    "off_by_two": {"diagonal": 2, "scale_power": 1, "split": 0, "loop": 1},
    "missing_transpose": {"diagonal": 0, "scale_power": 1, "split": 1, "loop": 0},
    "missing_scale": {"diagonal": 0, "scale_power": 0, "split": 0, "loop": 0},
    "scale_over_d": {"diagonal": 0, "scale_power": 2, "split": 0, "loop": 2},
}
CORRECT = ("correct", "correct_loop", "correct_chunked")


def is_correct(diagonal: int, scale_power: int, split: int, loop: int) -> bool:
    """Whether these knobs keep the contract (``loop`` only changes the rounding)."""
    return diagonal == 0 and scale_power == 1 and split == 0


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


def _rows(query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, allowed: torch.Tensor | None,
          scale: float, chunk: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The same attention, ``chunk`` queries at a time, with elementwise products (other rounding)."""
    L, S = query.shape[-2], key.shape[-2]
    if allowed is not None:
        allowed = allowed.expand(torch.broadcast_shapes(allowed.shape, (*query.shape[:-1], S)))  # (..., L, S)
    outs, rows = [], []
    for i in range(0, L, chunk):
        q = query[..., i:i + chunk, :]  # (..., c, d)
        scores = (q[..., :, None, :] * key[..., None, :, :]).sum(-1) * scale  # (..., c, 1, d) * (..., 1, S, d) -> (..., c, S)
        w = masked_softmax(scores, None if allowed is None else allowed[..., i:i + chunk, :])  # (..., c, S)
        outs.append(w @ value)  # (..., c, d_v)
        rows.append(w)
    return torch.cat(outs, -2), torch.cat(rows, -2)  # (..., L, d_v), (..., L, S)


def _attend(query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, mask: torch.Tensor | None,
            is_causal: bool, scale: float, diagonal: int, loop: int) -> tuple[torch.Tensor, torch.Tensor]:
    L, S = query.shape[-2], key.shape[-2]
    allowed = _allowed(L, S, mask, is_causal, diagonal)
    if loop:
        return _rows(query, key, value, allowed, scale, chunk=loop)  # loop 1: one query, loop 2: two
    scores = (query @ key.transpose(-2, -1)) * scale  # (..., L, S)
    weights = masked_softmax(scores, allowed)  # (..., L, S)
    return weights @ value, weights  # (..., L, d_v), (..., L, S)


def _merge(x: torch.Tensor) -> torch.Tensor:
    *lead, H, T, d = x.shape
    return x.transpose(-3, -2).reshape(*lead, T, H * d)  # (..., H, T, d) -> (..., T, H, d) -> (..., T, D)


def _split(x: torch.Tensor, H: int) -> torch.Tensor:
    *lead, T, D = x.shape
    return x.reshape(*lead, T, H, D // H).transpose(-3, -2)  # (..., T, D) -> (..., T, H, d) -> (..., H, T, d)


def _split_without_transpose(x: torch.Tensor, H: int) -> torch.Tensor:
    *lead, T, D = x.shape
    return x.reshape(*lead, H, T, D // H)  # BUG: reads (T, D) memory as (H, T, d): mixes positions


def _planted(knobs: tuple[int, int, int, int], query, key, value, mask, is_causal, scale):
    diagonal, scale_power, split, loop = knobs
    s = 1.0 / math.sqrt(query.shape[-1]) ** scale_power if scale is None else float(scale)
    if not split or query.dim() < 4 or query.shape[-3] == 1:
        return _attend(query, key, value, mask, is_causal, s, diagonal, loop)
    # A multi-head wrapper, as a module would have it: heads merged to (..., T, D), split again
    # for the attention, and merged back; the split forgets the transpose.
    H = query.shape[-3]
    q, k, v = (_split_without_transpose(_merge(x), H) for x in (query, key, value))  # (..., H, T, d)
    out, weights = _attend(q, k, v, mask, is_causal, s, diagonal, loop)
    return _split(_merge(out), H), weights  # (..., H, L, d_v), (..., H, L, S)


def planted_attention(diagonal: int = 0, scale_power: int = 1, split: int = 0,
                      loop: int = 0) -> Callable[..., tuple[torch.Tensor, torch.Tensor]]:
    """The attention function these knobs describe (see the module docstring), all with one face.

    Every variant is the same code object named ``attention`` with the same docstring and
    defaults, closing over one cell that holds the tuple of knobs.
    """
    given = {"diagonal": diagonal, "scale_power": scale_power, "split": split, "loop": loop}
    for k, v in given.items():
        if type(v) is not int or v not in KNOBS[k]:
            raise ValueError(f"planted_attention: {k} must be one of {KNOBS[k]}, got {v!r}")
    knobs = (diagonal, scale_power, split, loop)

    def attention(query, key, value, mask=None, is_causal=False, scale=None):
        """Scaled dot-product attention: ``(output (..., L, d_v), weights (..., L, S))``."""
        return _planted(knobs, query, key, value, mask, is_causal, scale)

    return attention
