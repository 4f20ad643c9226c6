"""Sparse attention patterns (Sparse Transformer, Longformer, BigBird) and an implementation that
skips the masked blocks, so its cost grows with the number of allowed blocks, not with N^2.

Dimension glossary (see ``attn_course`` for the full one)::

    B    batch size            H    number of heads
    L    number of queries     S    number of keys (= values); N when L == S
    d    query/key width       d_v  value width
    b    block size (queries and keys)
    Lb   number of query blocks, ceil(L / b)     Sb  number of key blocks, ceil(S / b)

Masks are boolean ``(L, S)`` with ``True`` = may attend (the course-wide convention); a block
*layout* is boolean ``(Lb, Sb)``: ``True`` where the ``b x b`` tile of the mask has any ``True``.

Element masks (for dense attention and for pictures):

* ``sliding_window_mask``  local attention with a window of ``W`` keys (Longformer, Mistral): causal,
                           query ``i`` sees keys ``i - W + 1 .. i``; non-causal, ``|i - j| < W``.
* ``strided_mask``         ``(i - j) % stride == 0`` (Sparse Transformer's strided heads).
* ``global_mask``          chosen tokens attend everywhere and are attended by everyone.
* ``longformer_mask``      sliding window OR global tokens.

The window ``W`` means what it means everywhere in the course (``kv_cache.SlidingWindowCache``,
``gpt.GPTConfig.sliding_window``): the number of keys a causal query sees, itself included. The
non-causal band is the causal window mirrored: ``W`` keys in each direction, the query itself
counted in both, so ``2W - 1`` keys in all, and ``sliding_window_mask(N, W, causal=True)`` is
exactly ``sliding_window_mask(N, W) & causal_mask(N)``.

Block layouts (what a kernel schedules):

* ``mask_to_layout`` / ``layout_to_mask``   between the two descriptions.
* ``bigbird_layout``        window blocks + global blocks + random blocks (BigBird).

Computation:

* ``dense_masked_attention``   full ``(L, S)`` scores, then the mask: cost O(L S) whatever the mask.
* ``block_sparse_attention``   for each query block, only its allowed key blocks: cost O(nnz b^2 d).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch

from attn_course._validation import require_int, require_tensor, shape_error
from attn_course.attention import scaled_dot_product_attention
from attn_course.flash import check_qkv
from attn_course.masking import masked_softmax
from attn_course.scoring import default_scale

__all__ = [
    "sliding_window_mask",
    "strided_mask",
    "global_mask",
    "longformer_mask",
    "mask_to_layout",
    "layout_to_mask",
    "bigbird_layout",
    "layout_density",
    "dense_masked_attention",
    "block_sparse_attention",
]


def _positions(N: int, device) -> tuple[torch.Tensor, torch.Tensor]:
    i = torch.arange(N, device=device).unsqueeze(1)  # (N, 1) query positions
    j = torch.arange(N, device=device).unsqueeze(0)  # (1, N) key positions
    return i, j


# --------------------------------------------------------------------------- element masks


def sliding_window_mask(N: int, window: int, causal: bool = False, device=None) -> torch.Tensor:
    """``(N, N)``: a window of ``W = window`` keys, the query's own position included.

    Causal: query ``i`` sees keys ``i - W + 1 .. i`` (``0 <= i - j < W``), the last ``W``
    positions, as ``SlidingWindowCache`` keeps them. Non-causal: the same window mirrored,
    ``|i - j| < W``: ``W - 1`` keys on each side and the query itself, ``2W - 1`` keys in all.
    Queries near the ends see fewer (the window is cut by the sequence).
    """
    require_int(N, "N")
    require_int(window, "window (W keys, the query itself included)")  # W >= 1: a query sees itself
    i, j = _positions(N, device)
    mask = (i - j).abs() < window  # (N, N) a band around the diagonal, W - 1 wide on each side
    return mask & (j <= i) if causal else mask


def strided_mask(N: int, stride: int, causal: bool = False, device=None) -> torch.Tensor:
    """``(N, N)``: query ``i`` sees keys ``j`` with ``(i - j) % stride == 0`` (every ``stride``-th position).

    Paired with a sliding window of ``W = stride`` keys (two heads, or OR-ed), every position
    reaches every earlier one in two steps (Child et al. 2019): a distance ``a * stride + r``
    with ``0 <= r < stride`` is one stride jump and one step inside the window.
    """
    require_int(N, "N")
    require_int(stride, "stride")
    i, j = _positions(N, device)
    mask = (i - j) % stride == 0  # (N, N)
    return mask & (j <= i) if causal else mask


def global_mask(N: int, global_tokens: Sequence[int], device=None) -> torch.Tensor:
    """``(N, N)``: the ``global_tokens`` attend to every key and every query attends to them."""
    require_int(N, "N")
    idx = torch.as_tensor(list(global_tokens), dtype=torch.long, device=device)
    if idx.numel() and (idx.min() < 0 or idx.max() >= N):
        raise ValueError(f"global_tokens must be positions in [0, {N}), got {list(global_tokens)}")
    is_global = torch.zeros(N, dtype=torch.bool, device=device)
    is_global[idx] = True
    return is_global.unsqueeze(1) | is_global.unsqueeze(0)  # (N, N): global rows OR global columns


def longformer_mask(N: int, window: int, global_tokens: Sequence[int] = (0,), device=None) -> torch.Tensor:
    """Longformer: a sliding window of ``window`` keys each way (see ``sliding_window_mask``) OR
    global tokens (e.g. ``[CLS]`` at position 0)."""
    return sliding_window_mask(N, window, device=device) | global_mask(N, global_tokens, device=device)


# --------------------------------------------------------------------------- block layouts


def mask_to_layout(mask: torch.Tensor, block_size: int) -> torch.Tensor:
    """``(L, S)`` mask -> ``(Lb, Sb)`` layout: True where the tile has at least one allowed pair."""
    require_tensor(mask, "mask")
    if mask.dtype != torch.bool or mask.dim() != 2:
        raise TypeError(f"mask must be a 2-D boolean (L, S) tensor, got dtype {mask.dtype} and shape {tuple(mask.shape)}")
    b = require_int(block_size, "block_size")
    L, S = mask.shape
    Lb, Sb = math.ceil(L / b), math.ceil(S / b)
    padded = torch.zeros(Lb * b, Sb * b, dtype=torch.bool, device=mask.device)
    padded[:L, :S] = mask
    return padded.view(Lb, b, Sb, b).any(dim=3).any(dim=1)  # (Lb, b, Sb, b) -> (Lb, Sb)


def layout_to_mask(layout: torch.Tensor, block_size: int, L: int | None = None, S: int | None = None) -> torch.Tensor:
    """``(Lb, Sb)`` layout -> ``(L, S)`` mask, every allowed tile fully True (cropped to ``L, S``)."""
    require_tensor(layout, "layout")
    if layout.dtype != torch.bool or layout.dim() != 2:
        raise TypeError(f"layout must be a 2-D boolean (Lb, Sb) tensor, got {layout.dtype} {tuple(layout.shape)}")
    b = require_int(block_size, "block_size")
    mask = layout.repeat_interleave(b, dim=0).repeat_interleave(b, dim=1)  # (Lb * b, Sb * b)
    return mask[: L or mask.shape[0], : S or mask.shape[1]]


def bigbird_layout(
    n_blocks: int,
    window_blocks: int = 3,
    global_blocks: int = 1,
    random_blocks: int = 2,
    causal: bool = False,
    seed: int = 0,
) -> torch.Tensor:
    """BigBird's block layout ``(n_blocks, n_blocks)`` (Zaheer et al. 2020).

    Each query block sees ``window_blocks`` neighbouring blocks (centred), the first
    ``global_blocks`` blocks (which also see everything) and ``random_blocks`` random blocks
    (fixed by ``seed``). With ``causal`` everything above the block diagonal is dropped.
    """
    require_int(n_blocks, "n_blocks")
    require_int(window_blocks, "window_blocks", 0)
    require_int(global_blocks, "global_blocks", 0)
    require_int(random_blocks, "random_blocks", 0)
    i, j = _positions(n_blocks, None)
    layout = (i - j).abs() <= window_blocks // 2  # (n, n) band of blocks
    layout[:global_blocks, :] = True
    layout[:, :global_blocks] = True
    g = torch.Generator().manual_seed(seed)
    for row in range(n_blocks):
        picks = torch.randperm(n_blocks, generator=g)[: min(random_blocks, n_blocks)]
        layout[row, picks] = True
    return layout & (j <= i) if causal else layout


def layout_density(layout: torch.Tensor) -> float:
    """Fraction of the blocks that are computed (1.0 = dense)."""
    return layout.float().mean().item()


# --------------------------------------------------------------------------- attention


def dense_masked_attention(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor, scale: float | None = None
) -> torch.Tensor:
    """All ``(L, S)`` scores, then the mask (``attn_course.attention``): rows with no key give 0."""
    check_qkv(q, k, v)
    return scaled_dot_product_attention(q, k, v, mask=mask, scale=scale)[0]


def block_sparse_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    layout: torch.Tensor,
    block_size: int,
    mask: torch.Tensor | None = None,
    scale: float | None = None,
) -> torch.Tensor:
    """Attention that computes only the tiles ``layout`` allows; equal to ``dense_masked_attention``
    with ``mask & layout_to_mask(layout)``.

    For query block ``i`` the keys of its allowed blocks are gathered into one contiguous
    ``(B, H, n_i * b, d)`` tensor and attended densely; skipped blocks cost nothing. With a
    fixed number of blocks per row (sliding window, BigBird) the cost is linear in N.

    Args:
        q: ``(B, H, L, d)``.  k: ``(B, H, S, d)``.  v: ``(B, H, S, d_v)``.
        layout: boolean ``(ceil(L / b), ceil(S / b))``.
        block_size: ``b``.
        mask: optional boolean ``(L, S)`` refining the allowed tiles element by element (e.g. the
            exact sliding window inside its blocks). Without it every allowed tile is dense.
        scale: score multiplier, default ``1 / sqrt(d)``.

    Returns:
        ``(B, H, L, d_v)``; a query with no allowed key gets 0 (as in ``masked_softmax``).
    """
    check_qkv(q, k, v)
    b = require_int(block_size, "block_size")
    B, H, L, d = q.shape
    S, d_v = k.shape[2], v.shape[3]
    Lb, Sb = math.ceil(L / b), math.ceil(S / b)
    require_tensor(layout, "layout")
    if layout.dtype != torch.bool or tuple(layout.shape) != (Lb, Sb):
        raise shape_error("layout", layout, f"boolean ({Lb}, {Sb}): (ceil(L / b), ceil(S / b)) for b = {b}")
    if mask is not None:
        require_tensor(mask, "mask")
        if mask.dtype != torch.bool or tuple(mask.shape) != (L, S):
            raise shape_error("mask", mask, f"boolean ({L}, {S}) (True = may attend)")
    c = default_scale(d, scale)
    out = torch.zeros(B, H, L, d_v, dtype=q.dtype, device=q.device)
    key_pos = torch.arange(S, device=q.device)
    for i in range(Lb):
        blocks = layout[i].nonzero().flatten().tolist()
        if not blocks:
            continue  # no allowed key: the output rows stay 0
        i0, i1 = i * b, min((i + 1) * b, L)
        idx = torch.cat([key_pos[j * b : (j + 1) * b] for j in blocks])  # (n_keys,) allowed key positions
        kb, vb = k[:, :, idx], v[:, :, idx]  # (B, H, n_keys, d), (B, H, n_keys, d_v): gathered
        scores = (q[:, :, i0:i1] @ kb.transpose(-2, -1)) * c  # (B, H, rows, n_keys): only allowed tiles
        rows_mask = None if mask is None else mask[i0:i1, idx]  # (rows, n_keys)
        out[:, :, i0:i1] = masked_softmax(scores, rows_mask) @ vb  # (B, H, rows, d_v)
    return out

