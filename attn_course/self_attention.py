"""Self-attention: queries, keys and values all come from one sequence ``x``.

    q = x W_q,   k = x W_k,   v = x W_v          # each (..., T, d_out)
    output, weights = scaled_dot_product_attention(q, k, v)   # (..., T, d_out), (..., T, T)

Dimension glossary (see ``attn_course`` for the full one)::

    ...    any leading batch dimensions, e.g. (B,)
    T      sequence length (L == S == T in self-attention)
    d_in   input width             d_out  width of the queries, keys, values and output

Chapter 6 compares this layer with an RNN and a CNN: those layers and the measurements are in
:mod:`attn_course.labs.self_attention_vs_rnn`.
"""

from __future__ import annotations

import torch
from torch import nn

from attn_course._validation import require_int, require_width
from attn_course.attention import scaled_dot_product_attention

__all__ = [
    "SelfAttention",
]


# --------------------------------------------------------------------------- the layers


class SelfAttention(nn.Module):
    """Single-head self-attention: queries, keys and values are projections of the same ``x``.

    ``forward(x)`` computes ``q, k, v = x W_q, x W_k, x W_v`` (``project``) and returns
    ``scaled_dot_product_attention(q, k, v, mask, is_causal)``.

    Args:
        d_in: width of the input ``x``.  d_out: width of ``q``, ``k``, ``v`` and the output.
        bias: whether the three projections have a bias.
    """

    def __init__(self, d_in: int, d_out: int, bias: bool = False) -> None:
        super().__init__()
        self.d_in = require_int(d_in, "d_in")
        self.d_out = require_int(d_out, "d_out")
        self.W_q = nn.Linear(d_in, d_out, bias=bias)
        self.W_k = nn.Linear(d_in, d_out, bias=bias)
        self.W_v = nn.Linear(d_in, d_out, bias=bias)

    def project(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """``(q, k, v)``, each ``(..., T, d_out)``, from ``x`` ``(..., T, d_in)``."""
        require_width(x, "x", self.d_in, f"(..., T, {self.d_in}): the last dim must be d_in = {self.d_in}")
        return self.W_q(x), self.W_k(x), self.W_v(x)  # (..., T, d_out) each

    def forward(
        self, x: torch.Tensor, mask: torch.Tensor | None = None, is_causal: bool = False
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Attend from every position of ``x`` to every (allowed) position of ``x``.

        Args:
            x: ``(..., T, d_in)``.
            mask: optional boolean broadcastable to ``(..., T, T)``; ``True`` = may attend.
            is_causal: position ``i`` attends to positions ``j <= i`` only.

        Returns:
            ``(output, weights)``: ``(..., T, d_out)`` and ``(..., T, T)``.
        """
        q, k, v = self.project(x)  # (..., T, d_out) each
        return scaled_dot_product_attention(q, k, v, mask=mask, is_causal=is_causal)

    def extra_repr(self) -> str:
        return f"d_in={self.d_in}, d_out={self.d_out}"
