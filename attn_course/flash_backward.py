"""FlashAttention's backward pass: gradients by recomputation (Dao et al. 2022, Alg. 4), chapter 22.

The forward keeps only the output ``O`` and one number per query, the log-sum-exp
``lse = m + log l`` (``(B, H, L)``). The backward recomputes each tile of probabilities
``P = exp(S - lse)`` from ``Q``, ``K`` and ``lse`` instead of storing the ``(L, S)`` matrix, then

    dV += P^T dO        dP = dO V^T        dS = P * (dP - D),  D = rowsum(dO * O)
    dQ += dS K * scale  dK += dS^T Q * scale

Dimension glossary: B batch, H heads, L queries, S keys, d head width, Bq/Bk block sizes.
"""

from __future__ import annotations

import math

import torch

from attn_course.flash import block_partial, check_qkv
from attn_course.masking import causal_mask

__all__ = ["forward_with_lse", "flash_backward"]


def forward_with_lse(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, causal: bool = False
                     ) -> tuple[torch.Tensor, torch.Tensor]:
    """Attention output ``(B, H, L, d_v)`` and the log-sum-exp of each score row ``(B, H, L)``."""
    check_qkv(q, k, v)
    mask = None
    if causal:
        mask = causal_mask(q.shape[2], k.shape[2], device=q.device)  # (L, S)
    m, row_sum, acc = block_partial(q, k, v, mask=mask)  # the whole row as one block: m and the sum exact
    return acc / row_sum.unsqueeze(-1), m + torch.log(row_sum)


def flash_backward(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, out: torch.Tensor, lse: torch.Tensor,
                   grad_out: torch.Tensor, causal: bool = False, block_size: int = 16
                   ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(dq, dk, dv)`` of attention, tile by tile: no ``(L, S)`` matrix is ever stored.

    Loops over key blocks (outer, as FlashAttention-2's backward: each writes its dK, dV once)
    and query blocks (inner), recomputing ``P`` from ``lse``.
    """
    check_qkv(q, k, v)
    L, S, d = q.shape[2], k.shape[2], q.shape[3]
    scale = 1.0 / math.sqrt(d)
    D = (grad_out * out).sum(-1)  # (B, H, L): rowsum(dO * O) = rowsum(P * dP)
    dq, dk, dv = torch.zeros_like(q), torch.zeros_like(k), torch.zeros_like(v)
    for j0 in range(0, S, block_size):
        kj, vj = k[:, :, j0 : j0 + block_size], v[:, :, j0 : j0 + block_size]  # (B, H, nk, d)
        cols = torch.arange(j0, j0 + kj.shape[2], device=q.device)
        for i0 in range(0, L, block_size):
            if causal and j0 > i0 + block_size - 1:
                continue  # this key block is in the future of every query of the block
            qi, doi = q[:, :, i0 : i0 + block_size], grad_out[:, :, i0 : i0 + block_size]  # (B, H, nq, d)
            s = (qi @ kj.transpose(-2, -1)) * scale  # (B, H, nq, nk): recomputed
            if causal:
                rows = torch.arange(i0, i0 + qi.shape[2], device=q.device)
                s = s.masked_fill(cols[None, :] > rows[:, None], float("-inf"))
            p = torch.exp(s - lse[:, :, i0 : i0 + block_size, None])  # (B, H, nq, nk): the true softmax
            dv[:, :, j0 : j0 + block_size] += p.transpose(-2, -1) @ doi
            dp = doi @ vj.transpose(-2, -1)  # (B, H, nq, nk)
            ds = p * (dp - D[:, :, i0 : i0 + block_size, None])
            dq[:, :, i0 : i0 + block_size] += (ds @ kj) * scale
            dk[:, :, j0 : j0 + block_size] += (ds.transpose(-2, -1) @ qi) * scale
    return dq, dk, dv
