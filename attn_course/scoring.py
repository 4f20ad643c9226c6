"""Scoring functions: how well does each query match each key?

A score function turns queries ``q`` of shape ``(..., L, d_q)`` and keys ``k`` of shape
``(..., S, d_k)`` into a score matrix of shape ``(..., L, S)``: row ``i`` says how much query
``i`` "likes" every key. The softmax (``attn_course.masking``) later turns rows into weights.

Dimension glossary (see ``attn_course`` for the full one)::

    ...  any leading batch dimensions, e.g. (B,) or (B, H); they broadcast
    L    number of queries          S    number of keys
    d_q  query width                d_k  key width (d_q == d_k for the dot products)
    h    hidden width of the additive (Bahdanau) score

Four classic scores, from cheapest to most expensive:

* ``dot_score``         q . k                      (Luong "dot")
* ``scaled_dot_score``  q . k / sqrt(d_k)          (Vaswani et al., the Transformer)
* ``GeneralScore``      q^T W k                    (Luong "general"; learns W)
* ``AdditiveScore``     v^T tanh(W_q q + W_k k)    (Bahdanau; a one-hidden-layer MLP)

``score_cost`` gives the FLOPs and parameter counts of each, for the chapter that compares them.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from attn_course._validation import check_query_key, require_int

__all__ = [
    "dot_score",
    "scaled_dot_score",
    "default_scale",
    "GeneralScore",
    "AdditiveScore",
    "score_cost",
]


# --------------------------------------------------------------------------- parameter-free scores


def default_scale(d_k: int, scale: float | None = None) -> float:
    """The score multiplier: ``scale`` when given, else ``1 / sqrt(d_k)`` (why: ``scaled_dot_score``).

    The one place the default is written: every attention of the package (naive, tiled, sparse,
    Triton, ring) takes its ``scale=None`` from here, so they all agree with torch's default.
    """
    return 1.0 / math.sqrt(d_k) if scale is None else float(scale)


def _dot(q: torch.Tensor, k: torch.Tensor) -> torch.Tensor:
    # One matrix product computes all L*S dot products at once.
    return q @ k.transpose(-2, -1)  # (..., L, d_k) @ (..., d_k, S) -> (..., L, S)


def dot_score(q: torch.Tensor, k: torch.Tensor) -> torch.Tensor:
    """Dot-product score ``q . k`` for every query/key pair.

    Args:
        q: queries, ``(..., L, d_k)``.
        k: keys, ``(..., S, d_k)``; leading dims broadcast with ``q``'s.

    Returns:
        scores ``(..., L, S)`` with ``scores[..., i, j] = q[..., i, :] @ k[..., j, :]``.
    """
    check_query_key(q, k)
    return _dot(q, k)  # (..., L, S)


def scaled_dot_score(q: torch.Tensor, k: torch.Tensor, scale: float | None = None) -> torch.Tensor:
    """Scaled dot-product score ``q . k / sqrt(d_k)``.

    Why the scale: for q and k with independent unit-variance entries, ``q . k`` has variance
    ``d_k``; dividing by ``sqrt(d_k)`` brings it back to 1 so the softmax does not saturate.

    Args:
        q: queries, ``(..., L, d_k)``.
        k: keys, ``(..., S, d_k)``; leading dims broadcast with ``q``'s.
        scale: multiply by this instead of ``1 / sqrt(d_k)`` (as in torch's ``scale=``).

    Returns:
        scores ``(..., L, S)``.
    """
    check_query_key(q, k)
    return scaled_dot_score_unchecked(q, k, scale)  # (..., L, S)


def scaled_dot_score_unchecked(q: torch.Tensor, k: torch.Tensor, scale: float | None = None) -> torch.Tensor:
    """``scaled_dot_score`` for a caller that has validated ``q`` and ``k`` itself (the attention
    functions check them once, at their door): the inputs are trusted, nothing is checked again."""
    # not in place: the product may be needed for autograd
    return _dot(q, k) * default_scale(q.shape[-1], scale)  # (..., L, S)


# --------------------------------------------------------------------------- learned scores


class GeneralScore(nn.Module):
    """Luong's "general" score ``q^T W k`` with a learned ``W`` of shape ``(query_dim, key_dim)``.

    Unlike the dot product, queries and keys may have different widths. We compute ``(q W) . k``:
    project the L queries into key space once, then take dot products with the S keys.

    Args:
        query_dim: d_q.  key_dim: d_k.

    Shapes: ``q (..., L, d_q)``, ``k (..., S, d_k)`` -> ``(..., L, S)``.
    """

    def __init__(self, query_dim: int, key_dim: int) -> None:
        super().__init__()
        self.query_dim = require_int(query_dim, "query_dim")
        self.key_dim = require_int(key_dim, "key_dim")
        self.W = nn.Parameter(torch.empty(query_dim, key_dim))  # (d_q, d_k)
        nn.init.xavier_uniform_(self.W)

    def forward(self, q: torch.Tensor, k: torch.Tensor) -> torch.Tensor:
        check_query_key(q, k, d_q=self.query_dim, d_k=self.key_dim)
        q_in_key_space = q @ self.W  # (..., L, d_q) @ (d_q, d_k) -> (..., L, d_k)
        return _dot(q_in_key_space, k)  # (..., L, S); q and k were checked above

    def extra_repr(self) -> str:
        return f"query_dim={self.query_dim}, key_dim={self.key_dim}"


class AdditiveScore(nn.Module):
    """Bahdanau's additive score ``v^T tanh(W_q q + W_k k)``: a tiny MLP on each (query, key) pair.

    ``W_q: d_q -> h``, ``W_k: d_k -> h`` and ``v: h -> 1``, all without bias, as in
    Bahdanau et al. (2015, appendix A).

    Memory: the tanh is applied to an ``(..., L, S, h)`` tensor, one hidden vector per pair, so
    memory grows as L*S*h (the dot-product scores need only L*S). With L = S = 4096 and h = 256
    that is 4.3e9 floats (16 GiB in float32) per batch element: fine for RNN-era sentence
    lengths, one reason the Transformer chose the dot product.

    Args:
        query_dim: d_q.  key_dim: d_k.  hidden_dim: h.

    Shapes: ``q (..., L, d_q)``, ``k (..., S, d_k)`` -> ``(..., L, S)``.
    """

    def __init__(self, query_dim: int, key_dim: int, hidden_dim: int) -> None:
        super().__init__()
        self.query_dim = require_int(query_dim, "query_dim")
        self.key_dim = require_int(key_dim, "key_dim")
        self.hidden_dim = require_int(hidden_dim, "hidden_dim")
        self.W_q = nn.Linear(query_dim, hidden_dim, bias=False)
        self.W_k = nn.Linear(key_dim, hidden_dim, bias=False)
        self.v = nn.Linear(hidden_dim, 1, bias=False)

    def forward(self, q: torch.Tensor, k: torch.Tensor) -> torch.Tensor:
        check_query_key(q, k, d_q=self.query_dim, d_k=self.key_dim)
        # Project each query and each key once (L + S projections, not L*S) ...
        return self.score_projected_keys(q, self.W_k(k))  # k: (..., S, d_k) -> (..., S, h)

    def score_projected_keys(self, q: torch.Tensor, k_h: torch.Tensor) -> torch.Tensor:
        """The scores from keys already projected by ``W_k`` (``k_h`` ``(..., S, h)``): a decoder
        that asks the same keys at every step projects them once (``BahdanauDecoder.forward``).
        Inputs are trusted: ``forward`` is the checked entry point."""
        q_h = self.W_q(q)  # (..., L, h)
        # ... then broadcast to every pair. This is the (..., L, S, h) tensor that dominates memory.
        pairs = q_h.unsqueeze(-2) + k_h.unsqueeze(-3)  # (..., L, 1, h) + (..., 1, S, h) -> (..., L, S, h)
        hidden = torch.tanh(pairs)  # (..., L, S, h)
        return self.v(hidden).squeeze(-1)  # (..., L, S, 1) -> (..., L, S)

    def extra_repr(self) -> str:
        return f"query_dim={self.query_dim}, key_dim={self.key_dim}, hidden_dim={self.hidden_dim}"


# --------------------------------------------------------------------------- cost model

SCORE_KINDS = ("dot", "scaled_dot", "general", "additive")


def score_cost(kind: str, L: int, S: int, d_q: int, d_k: int, hidden: int | None = None) -> dict[str, int]:
    """FLOPs and parameter count of one score matrix ``(L, S)`` (one batch element, one head).

    Conventions: a multiply-add counts as 2 FLOPs (so an ``(m, n) @ (n, p)`` product costs
    ``2*m*n*p``); an elementwise add, multiply or tanh counts as 1. Multiply ``flops`` by
    ``B * H`` for a batch. Softmax and the weighted sum of values are not included: they are
    the same for every score.

    ============  =========================================  ===================
    kind          flops                                      params
    ============  =========================================  ===================
    "dot"         2*L*S*d                                    0
    "scaled_dot"  2*L*S*d + L*S          (the scaling)       0
    "general"     2*L*d_q*d_k + 2*L*S*d_k  (q W, then . k)   d_q*d_k
    "additive"    2*h*(L*d_q + S*d_k) + 4*L*S*h              h*(d_q + d_k + 1)
    ============  =========================================  ===================

    where ``d = d_q = d_k`` for the dot products and, for "additive", ``4*L*S*h`` is the
    broadcast add (1), tanh (1) and the product with ``v`` (2) for each of the L*S*h hidden units.
    "additive" also holds an ``(L, S, h)`` activation, see :class:`AdditiveScore`.

    Args:
        kind: one of ``"dot"``, ``"scaled_dot"``, ``"general"``, ``"additive"``.
        L, S: number of queries and keys.  d_q, d_k: their widths.
        hidden: h, required for ``"additive"`` and ignored otherwise.

    Returns:
        ``{"flops": int, "params": int}``.
    """
    for name, value in (("L", L), ("S", S), ("d_q", d_q), ("d_k", d_k)):
        require_int(value, name)
    if kind in ("dot", "scaled_dot"):
        if d_q != d_k:
            raise ValueError(f"{kind!r} score needs d_q == d_k, got d_q={d_q}, d_k={d_k}")
        flops = 2 * L * S * d_k + (L * S if kind == "scaled_dot" else 0)
        return {"flops": flops, "params": 0}
    if kind == "general":
        return {"flops": 2 * L * d_q * d_k + 2 * L * S * d_k, "params": d_q * d_k}
    if kind == "additive":
        if hidden is None:
            raise ValueError("'additive' score needs hidden (the hidden width h)")
        h = require_int(hidden, "hidden")
        return {"flops": 2 * h * (L * d_q + S * d_k) + 4 * L * S * h, "params": h * (d_q + d_k + 1)}
    raise ValueError(f"kind must be one of {', '.join(map(repr, SCORE_KINDS))}; got {kind!r}")
