"""Masks and the masked softmax: turning scores into attention weights.

Dimension glossary (see ``attn_course`` for the full one)::

    ...  any leading batch dimensions, e.g. (B,) or (B, H)
    B    batch size     H  number of heads
    L    number of queries (rows of the score matrix)
    S    number of keys (columns of the score matrix)

Mask convention, the same everywhere in the course: a boolean tensor, broadcastable to the
scores ``(..., L, S)``, with ``True`` where query ``i`` **may attend** to key ``j``. (This is
the convention of ``torch.nn.functional.scaled_dot_product_attention``'s boolean ``attn_mask``;
note that ``nn.MultiheadAttention``'s ``key_padding_mask`` uses the opposite one.)

* ``masked_softmax``  the numerically stable softmax, with a mask; fully masked rows give zeros.
* ``naive_softmax``   the textbook ``exp(x) / sum(exp(x))``, kept to show how it overflows.
* ``causal_mask``     ``(L, S)``: query ``i`` sees keys ``0..i`` (no peeking at the future).
* ``padding_mask``    ``(B, 1, 1, S)``: hide the padding at the end of shorter sequences.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from attn_course._validation import check_mask, fmt_shape, require_floating, require_int, require_tensor

__all__ = [
    "masked_softmax",
    "naive_softmax",
    "causal_mask",
    "padding_mask",
]

# float16/bfloat16 have few mantissa bits (and float16 a small range): we exponentiate and
# sum in float32 and cast back, as torch's own fused softmax does.
_LOW_PRECISION = (torch.float16, torch.bfloat16)


def masked_softmax(scores: torch.Tensor, mask: torch.Tensor | None = None, dim: int = -1) -> torch.Tensor:
    """Softmax of ``scores`` along ``dim``, giving zero weight where ``mask`` is ``False``.

    Stable: we subtract each row's maximum before ``exp`` (softmax is unchanged by a shift), so
    logits of any magnitude work. A row with no allowed position (every entry masked, or every
    score ``-inf``) gets all-zero weights rather than NaN: "attend to nothing".

    Args:
        scores: floating tensor, e.g. ``(..., L, S)``. Not modified.
        mask: optional boolean tensor broadcastable to ``scores``; ``True`` = may attend.
        dim: the dimension that sums to one (the keys, ``-1``, for attention).

    Returns:
        weights with the shape and dtype of ``scores``: non-negative, each row with at least
        one allowed position sums to 1, masked positions are exactly 0. float16/bfloat16
        inputs are computed in float32 internally.
    """
    require_floating(scores, "scores")
    if mask is not None:
        check_mask(mask, scores.shape, "a boolean mask (True = may attend)")
    return masked_softmax_unchecked(scores, mask, dim)


def masked_softmax_unchecked(scores: torch.Tensor, mask: torch.Tensor | None = None, dim: int = -1) -> torch.Tensor:
    """``masked_softmax`` for a caller that has validated ``scores`` (floating) and ``mask`` (boolean,
    broadcastable to ``scores``) itself, as the attention functions do at their door: trusted."""
    x = scores.float() if scores.dtype in _LOW_PRECISION else scores  # .float() copies; never in place
    if mask is not None:
        x = x.masked_fill(~mask, float("-inf"))  # out of place: the caller's scores stay untouched
    # Row maximum, for stability. Detached: softmax does not depend on the shift, so no gradient
    # needs to flow through it. A fully masked row has max -inf; shift it by 0 instead so that
    # exp(-inf - 0) = 0 rather than exp(-inf - (-inf)) = exp(nan).
    row_max = x.detach().amax(dim=dim, keepdim=True)  # (..., L, 1) for dim=-1
    row_max = torch.where(torch.isfinite(row_max), row_max, torch.zeros_like(row_max))
    e = torch.exp(x - row_max)  # (..., L, S); masked entries are exp(-inf) = 0
    total = e.sum(dim=dim, keepdim=True)  # (..., L, 1); 0 only for a fully masked row
    # A fully masked row is 0 / 0; divide it by 1 instead so it stays 0 (and its gradient finite).
    total = torch.where(total > 0, total, torch.ones_like(total))
    return (e / total).to(scores.dtype)


def naive_softmax(x: torch.Tensor, dim: int = -1) -> torch.Tensor:
    """The textbook softmax ``exp(x) / sum(exp(x))``, without the max subtraction.

    Do not use it: kept to *show* why ``masked_softmax`` subtracts the maximum. In float32,
    ``exp`` overflows to ``inf`` beyond about 88.7, and ``inf / inf`` is NaN; very negative
    logits underflow to 0 and give ``0 / 0``.
    """
    require_floating(x, "x")
    e = torch.exp(x)
    return e / e.sum(dim=dim, keepdim=True)


def causal_mask(
    L: int,
    S: int | None = None,
    device: torch.device | str | None = None,
    *,
    align: str = "upper_left",
) -> torch.Tensor:
    """Boolean ``(L, S)`` mask, ``True`` on and below the diagonal: query ``i`` sees keys ``j <= i``.

    For ``L != S`` there are two conventions; the default matches torch::

        align="upper_left"   torch.ones(L, S).tril()            what F.scaled_dot_product_attention
                                                                 does with is_causal=True (and
                                                                 torch.nn.attention.bias.causal_upper_left)
        align="lower_right"  torch.ones(L, S).tril(S - L)       the diagonal ends in the bottom-right
                                                                 corner: the L queries are the *last*
                                                                 L positions, as when decoding with a
                                                                 KV cache (causal_lower_right)

    e.g. ``L=2, S=4``: upper_left ``[[1,0,0,0],[1,1,0,0]]``; lower_right ``[[1,1,1,0],[1,1,1,1]]``.
    With ``L > S`` and ``align="lower_right"`` the first ``L - S`` rows are fully masked.

    Args:
        L: number of queries.  S: number of keys (default ``L``).
        device: where to create the mask.
        align: ``"upper_left"`` (default, torch's ``is_causal``) or ``"lower_right"``.

    Returns:
        bool tensor ``(L, S)``; broadcasts against scores ``(..., L, S)``.
    """
    require_int(L, "L")
    S = L if S is None else require_int(S, "S")
    if align == "upper_left":
        diagonal = 0
    elif align == "lower_right":
        diagonal = S - L
    else:
        raise ValueError(f"align must be 'upper_left' or 'lower_right', got {align!r}")
    return torch.ones(L, S, dtype=torch.bool, device=device).tril(diagonal)  # (L, S)


def padding_mask(lengths: torch.Tensor | Sequence[int], max_len: int | None = None) -> torch.Tensor:
    """Mask out the padding of a batch of variable-length sequences.

    Sequence ``b`` holds ``lengths[b]`` real tokens followed by padding up to ``max_len``; its
    keys ``j < lengths[b]`` may be attended to, the padding may not.

    Shape choice: the result is ``(B, 1, 1, S)`` so that it broadcasts directly against the
    course's multi-head scores ``(B, H, L, S)``: the same for every head (dim 1) and every
    query (dim 2). For single-head scores ``(B, L, S)`` use ``padding_mask(...)[:, 0]``
    (``(B, 1, S)``); for per-sequence ``(B, S)`` use ``padding_mask(...)[:, 0, 0]``.
    (Passing the 4-D mask with 3-D scores is caught by the mask checks, not silently broadcast.)

    Args:
        lengths: ``(B,)`` integer tensor or sequence of ints, each in ``[0, max_len]``.
        max_len: S, the padded length; default ``max(lengths)``.

    Returns:
        bool tensor ``(B, 1, 1, S)`` on the device of ``lengths``, ``True`` = real token.
    """
    if not isinstance(lengths, torch.Tensor):
        lengths = torch.as_tensor(list(lengths), dtype=torch.long)
    if lengths.dtype == torch.bool or lengths.is_floating_point() or lengths.is_complex():
        raise TypeError(f"lengths must be an integer tensor, got dtype {lengths.dtype}")
    if lengths.dim() != 1:
        raise ValueError(f"lengths has shape {fmt_shape(lengths.shape)}; expected (B,)")
    if max_len is None:
        max_len = int(lengths.max()) if lengths.numel() else 0
    require_int(max_len, "max_len", minimum=0)
    if lengths.numel() and (int(lengths.min()) < 0 or int(lengths.max()) > max_len):
        raise ValueError(f"lengths must lie in [0, max_len={max_len}], got {lengths.tolist()}")
    positions = torch.arange(max_len, device=lengths.device)  # (S,)
    mask = positions < lengths.unsqueeze(-1)  # (1, S) < (B, 1) -> (B, S)
    return mask[:, None, None, :]  # (B, 1, 1, S): broadcasts over heads and queries


def combine_masks(*masks: torch.Tensor | None) -> torch.Tensor | None:
    """Positions allowed by **every** mask: the logical AND, broadcast to a common shape.

    ``None`` entries mean "no mask" and are skipped, so ``combine_masks(None, None)`` is
    ``None``. Shapes broadcast as in any elementwise operation, e.g. a padding mask
    ``(B, 1, 1, S)`` and a causal mask ``(L, S)`` give ``(B, 1, L, S)``.

    Raises:
        TypeError: an entry that is not a boolean tensor (named ``masks[i]``).
        ValueError: shapes that do not broadcast, with every shape listed.
    """
    present = []
    for i, mask in enumerate(masks):
        if mask is None:
            continue
        require_tensor(mask, f"masks[{i}]")
        if mask.dtype != torch.bool:
            raise TypeError(
                f"masks[{i}] must be a boolean tensor (True = may attend), got dtype {mask.dtype}"
            )
        present.append(mask)
    if not present:
        return None
    try:
        torch.broadcast_shapes(*(m.shape for m in present))
    except RuntimeError:
        shapes = ", ".join(fmt_shape(m.shape) for m in present)
        raise ValueError(f"masks have shapes {shapes}, which do not broadcast together") from None
    combined = present[0]
    for mask in present[1:]:
        combined = combined & mask  # broadcasts, e.g. (B, 1, 1, S) & (L, S) -> (B, 1, L, S)
    return combined


def neg_inf_softmax(scores: torch.Tensor, mask: torch.Tensor | None = None, dim: int = -1) -> torch.Tensor:
    """``torch.softmax(scores.masked_fill(~mask, -inf), dim)``: the recipe found in many codebases.

    Do not use it: kept to *show* its failure. A row whose every entry is masked becomes
    ``exp(-inf - (-inf)) = exp(nan)``: all NaN. ``masking.masked_softmax`` returns zeros there.
    """
    require_floating(scores, "scores")
    if mask is not None:
        scores = scores.masked_fill(~mask, float("-inf"))
    return torch.softmax(scores, dim=dim)


def finite_masked_softmax(
    scores: torch.Tensor, mask: torch.Tensor | None = None, dim: int = -1, fill: float | None = None
) -> torch.Tensor:
    """``torch.softmax(scores.masked_fill(~mask, fill), dim)`` with a large *finite* negative ``fill``.

    The convention of most libraries (``-1e9``, or ``torch.finfo(dtype).min``, the default
    here): a masked score becomes so negative that its ``exp`` underflows to exactly 0 in any
    row that keeps an allowed entry, so those rows equal ``masked_softmax``'s. A fully masked
    row is different: all its entries equal ``fill``, the softmax of a constant row is uniform,
    and the row gets weight ``1 / S`` on **every** (masked) key: no NaN, but not zeros either.

    Args:
        scores: floating tensor, e.g. ``(..., L, S)``. Not modified.
        mask: optional boolean tensor broadcastable to ``scores``; ``True`` = may attend.
        dim: the dimension that sums to one.
        fill: the finite value written into masked scores; default ``torch.finfo(dtype).min``.
    """
    require_floating(scores, "scores")
    if mask is None:
        return torch.softmax(scores, dim=dim)
    check_mask(mask, scores.shape, "a boolean mask (True = may attend)")
    fill = torch.finfo(scores.dtype).min if fill is None else fill
    return torch.softmax(scores.masked_fill(~mask, fill), dim=dim)  # out of place
