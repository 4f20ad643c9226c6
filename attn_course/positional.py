"""Positional information: the four ways a Transformer learns where a token is.

Self-attention on its own is permutation-equivariant: shuffle the tokens and the outputs are
shuffled the same way, so "dog bites man" and "man bites dog" look alike. These functions put
the order back in.

Dimension glossary (see ``attn_course`` for the full one)::

    ...  any leading batch dimensions, e.g. (B,) or (B, H)
    T    sequence length         D  model width (added encodings)
    d    head width (RoPE acts on queries and keys of one head)     H  number of heads

* ``sinusoidal_encoding``          ``(T, D)`` fixed sines and cosines, added to the token
                                   embeddings (Vaswani et al., 2017).
* ``LearnedPositionalEmbedding``   one trained vector per position, added to the embeddings
                                   (BERT, GPT-2); knows nothing beyond ``max_len``.
* ``apply_rope``                   rotary embeddings (Su et al., 2021): rotate queries and keys
                                   by an angle proportional to their position, so that the score
                                   ``q_m . k_n`` depends on the offset ``m - n`` only.
* ``alibi_bias`` / ``alibi_slopes`` ``(H, T, T)`` linear distance penalties added to the scores
                                   (Press et al., 2022); no vector is added anywhere.

Conventions
-----------
Pairs. Sinusoidal encodings and RoPE both work on pairs of features ``(2i, 2i+1)`` with the
frequency ``theta_i = base^(-2i / dim)``, ``i = 0 .. dim/2 - 1``: pair 0 turns fastest (one
radian per position), the last pair slowest. ``apply_rope`` uses these *interleaved* pairs by
default, as in the RoFormer paper and Meta's original LLaMA code; ``interleaved=False`` gives the
*half-split* pairing ``(i, i + d/2)`` of GPT-NeoX and Hugging Face's models (``rotate_half``,
also for their LLaMA port, whose converted ``W_q``, ``W_k`` rows are permuted to match). The two
differ only by a fixed permutation of the features, but a model trained with one needs that one.

ALiBi. ``alibi_bias(..., symmetric=False)`` (the default, the paper's causal form) penalises
key ``j`` seen from query ``i`` by ``m_h * (i - j)`` for ``j <= i`` and leaves entries above
the diagonal at 0: use it together with a causal mask (the bias itself masks nothing).
``symmetric=True`` penalises ``m_h * |i - j|`` in both directions, for bidirectional
(encoder) attention.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from attn_course._validation import (
    fmt_shape,
    require_broadcastable,
    require_floating,
    require_int,
    require_ndim,
    require_tensor,
)

__all__ = [
    "sinusoidal_encoding",
    "LearnedPositionalEmbedding",
    "apply_rope",
    "alibi_slopes",
    "alibi_bias",
]


# --------------------------------------------------------------------------- validation


def _check_base(base: object) -> float:
    if isinstance(base, bool) or not isinstance(base, (int, float)) or not math.isfinite(base) or base <= 1:
        raise ValueError(f"base must be a finite number > 1, got {base!r}")
    return float(base)


def _inverse_frequencies(dim: int, base: float, dtype: torch.dtype, device=None) -> torch.Tensor:
    """``theta_i = base^(-2i / dim)`` for ``i = 0 .. ceil(dim/2) - 1``: shape ``(ceil(dim/2),)``."""
    two_i = torch.arange(0, dim, 2, dtype=dtype, device=device)  # (ceil(dim/2),): 0, 2, 4, ...
    return base ** (-two_i / dim)


# --------------------------------------------------------------------------- sinusoidal


def sinusoidal_encoding(
    seq_len: int,
    dim: int,
    *,
    base: float = 10000.0,
    dtype: torch.dtype = torch.float32,
    device: torch.device | str | None = None,
) -> torch.Tensor:
    """The Transformer's fixed positional encoding, a ``(seq_len, dim)`` table.

    For position ``pos`` and ``i = 0, 1, ...`` (Vaswani et al., 2017, section 3.5)::

        PE[pos, 2i]     = sin(pos / base^(2i / dim))
        PE[pos, 2i + 1] = cos(pos / base^(2i / dim))

    so ``PE[0] = [0, 1, 0, 1, ...]`` and every entry lies in ``[-1, 1]``. Each pair of columns
    is a point on a circle turning at its own frequency, which makes ``PE[pos + k]`` a fixed
    rotation of ``PE[pos]`` (per pair, by the angle ``k * theta_i``), the same for every ``pos``.

    Odd ``dim``: the formula is applied as written, column by column. The last column,
    ``dim - 1 = 2i`` with ``i = (dim - 1) / 2``, is even, so it is a sine whose cosine partner
    ``2i + 1`` would fall outside the table: the last frequency has only its sine.

    Args:
        seq_len: ``T``, the number of positions ``0 .. T - 1``.
        dim: ``D``, the model width.
        base: the wavelength scale (``10000`` in the paper): wavelengths run from ``2 pi`` to
            about ``2 pi * base``.
        dtype, device: of the result (computed in float64, then cast).

    Returns:
        ``(seq_len, dim)`` tensor, to be added to token embeddings ``(B, T, D)``.
    """
    require_int(seq_len, "seq_len")
    require_int(dim, "dim")
    base = _check_base(base)
    positions = torch.arange(seq_len, dtype=torch.float64)[:, None]  # (T, 1)
    angles = positions * _inverse_frequencies(dim, base, torch.float64)  # (T, 1) * (ceil(D/2),) -> (T, ceil(D/2))
    pe = torch.empty(seq_len, dim, dtype=torch.float64)  # (T, D)
    pe[:, 0::2] = torch.sin(angles)  # even columns 2i: ceil(D/2) of them
    pe[:, 1::2] = torch.cos(angles[:, : dim // 2])  # odd columns 2i+1: floor(D/2) (odd D: no last cosine)
    return pe.to(dtype=dtype, device=device)


# --------------------------------------------------------------------------- learned


class LearnedPositionalEmbedding(nn.Module):
    """One trained ``dim``-vector per position ``0 .. max_len - 1`` (as in BERT and GPT-2).

    ``forward`` does one of two things, depending on the dtype of its input:

    * a **floating** tensor ``x`` of shape ``(..., T, D)`` (token embeddings) returns
      ``x + weight[:T]``: the embedding of position ``t`` is added to token ``t`` of every
      sequence;
    * an **integer** tensor of positions, any shape ``(...)``, returns their embeddings
      ``(..., D)`` (e.g. to place a sequence at an offset).

    There is nothing to say about positions never trained: ``T > max_len`` (or a position
    outside ``[0, max_len)``) raises a ``ValueError``.

    Args:
        max_len: the number of positions the table holds.
        dim: ``D``, the model width.
        init_std: the table starts as ``N(0, init_std^2)`` (0.02, as in BERT and GPT-2).
    """

    def __init__(self, max_len: int, dim: int, *, init_std: float = 0.02):
        super().__init__()
        self.max_len = require_int(max_len, "max_len")
        self.dim = require_int(dim, "dim")
        self.weight = nn.Parameter(torch.randn(max_len, dim) * init_std)  # (max_len, D)

    def extra_repr(self) -> str:
        return f"max_len={self.max_len}, dim={self.dim}"

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        require_tensor(x, "x")
        if x.dtype == torch.bool or x.is_complex():
            raise TypeError(f"x must be float embeddings (..., T, D) or integer positions, got dtype {x.dtype}")
        if x.is_floating_point():
            require_ndim(x, "x", 2, f"(..., T, {self.dim})")
            T = x.shape[-2]
            if x.shape[-1] != self.dim:
                raise ValueError(f"x has shape {fmt_shape(x.shape)}; expected (..., T, {self.dim}) (D = dim)")
            if T > self.max_len:
                raise ValueError(
                    f"x has shape {fmt_shape(x.shape)}; expected T <= max_len = {self.max_len}: "
                    f"there is no learned embedding for positions {self.max_len} .. {T - 1}"
                )
            return x + self.weight[:T].to(x.dtype)  # (..., T, D) + (T, D) -> (..., T, D)
        if x.numel() and (int(x.min()) < 0 or int(x.max()) >= self.max_len):
            raise ValueError(
                f"positions must lie in [0, max_len) = [0, {self.max_len}), "
                f"got values from {int(x.min())} to {int(x.max())}"
            )
        return self.weight[x]  # (...) -> (..., D)


# --------------------------------------------------------------------------- rotary (RoPE)


def apply_rope(
    x: torch.Tensor,
    positions: torch.Tensor | None = None,
    base: float = 10000.0,
    *,
    interleaved: bool = True,
) -> torch.Tensor:
    """Rotary position embedding (RoPE, Su et al., 2021): rotate each feature pair of ``x``.

    The pair ``i`` of the vector at position ``m`` is turned by the angle ``m * theta_i``, with
    ``theta_i = base^(-2i / d)`` (the sinusoidal frequencies)::

        [x'_a]   [cos(m theta_i)  -sin(m theta_i)] [x_a]
        [x'_b] = [sin(m theta_i)   cos(m theta_i)] [x_b]

    Apply it to queries and keys (not values). Rotations preserve lengths and compose, so the
    score ``rope(q, m) . rope(k, n) = q . R((n - m) theta) k`` depends on the positions only
    through the offset ``n - m``; position 0 is the identity.

    Pairing ``(a, b)`` of pair ``i`` (see the module docstring):

    * ``interleaved=True`` (default; the RoFormer paper, Meta's LLaMA code): ``(2i, 2i + 1)``;
    * ``interleaved=False`` (GPT-NeoX, Hugging Face's ``rotate_half``): ``(i, i + d/2)``.

    Args:
        x: ``(..., T, d)`` floating, ``d`` even: queries or keys, e.g. ``(B, H, T, d)``.
        positions: the position of each of the ``T`` vectors, integer or float, shape ``(T,)``
            or broadcastable to ``x.shape[:-1]`` (e.g. ``(B, 1, T)`` for per-sequence offsets).
            Default ``arange(T)``.
        base: the frequency base (10000 in the paper).
        interleaved: the pairing convention, as above.

    Returns:
        the rotated ``x``, same shape and dtype (angles in float64, the rotation in float32, or
        float64 for float64 inputs).
    """
    require_floating(x, "x")
    require_ndim(x, "x", 2, "(..., T, d) with d even")
    d, T = x.shape[-1], x.shape[-2]
    if d % 2:
        raise ValueError(f"x has shape {fmt_shape(x.shape)}; expected (..., T, d) with d even (RoPE rotates pairs)")
    base = _check_base(base)
    compute = torch.float64 if x.dtype == torch.float64 else torch.float32
    if positions is None:
        positions = torch.arange(T, device=x.device)  # (T,)
    else:
        require_tensor(positions, "positions")
        if positions.dtype == torch.bool or positions.is_complex():
            raise TypeError(f"positions must be an integer or float tensor, got dtype {positions.dtype}")
        require_broadcastable(positions, "positions", x.shape[:-1], "(T,) or (..., T)")
    # Angles in float64 (not on MPS, which lacks it): in float32 an angle of 1000 radians is off by
    # ~1e-4, and then the score of a pair shifted far away no longer equals the unshifted one.
    exact = torch.float32 if x.device.type == "mps" else torch.float64
    angles = positions.to(exact)[..., None] * _inverse_frequencies(d, base, exact, x.device)  # (..., T, d/2)
    cos, sin = torch.cos(angles).to(compute), torch.sin(angles).to(compute)  # (..., T, d/2) each
    xc = x.to(compute)
    if interleaved:
        a, b = xc[..., 0::2], xc[..., 1::2]  # (..., T, d/2): features 2i and 2i+1
    else:
        a, b = xc[..., : d // 2], xc[..., d // 2 :]  # (..., T, d/2): features i and i + d/2
    ra = a * cos - b * sin  # (..., T, d/2)
    rb = a * sin + b * cos  # (..., T, d/2)
    if interleaved:
        out = torch.stack([ra, rb], dim=-1).flatten(-2)  # (..., T, d/2, 2) -> (..., T, d): a0 b0 a1 b1 ...
    else:
        out = torch.cat([ra, rb], dim=-1)  # (..., T, d): a0 a1 ... b0 b1 ...
    return out.to(x.dtype)


# --------------------------------------------------------------------------- ALiBi


def _power_of_two_slopes(n: int) -> list[float]:
    start = 2.0 ** (-8.0 / n)  # 2^(-8/n): the geometric sequence starts at its own ratio
    return [start ** (h + 1) for h in range(n)]


def alibi_slopes(num_heads: int) -> torch.Tensor:
    """The per-head ALiBi slopes ``m_h``, shape ``(H,)`` (float32), largest first.

    For ``H`` a power of two, ``m_h = 2^(-8 (h + 1) / H)``: e.g. ``H = 8`` gives
    ``1/2, 1/4, ..., 1/256``. Otherwise (as in the paper's code) take the ``2^k`` slopes of the
    largest power of two ``2^k < H`` and add every other slope of the ``2^(k+1)`` sequence
    (``1, 3, 5, ...`` of ``2^(-4 (h + 1) / 2^k)``) until there are ``H``.
    """
    require_int(num_heads, "num_heads")
    n = 2 ** math.floor(math.log2(num_heads))  # largest power of two <= H
    slopes = _power_of_two_slopes(n)
    if n < num_heads:
        slopes += _power_of_two_slopes(2 * n)[0::2][: num_heads - n]
    return torch.tensor(slopes, dtype=torch.float32)


def alibi_bias(
    num_heads: int,
    seq_len: int,
    *,
    symmetric: bool = False,
    dtype: torch.dtype = torch.float32,
    device: torch.device | str | None = None,
) -> torch.Tensor:
    """ALiBi's additive attention bias (Press et al., 2022), ``(H, T, T)``.

    Added to the scores ``q . k / sqrt(d)`` before the softmax, it lowers the score of key
    ``j`` seen from query ``i`` in proportion to their distance, with a different slope
    ``m_h`` per head (``alibi_slopes``)::

        symmetric=False (default, causal):  bias[h, i, j] = -m_h * (i - j)   for j <= i,  0 for j > i
        symmetric=True  (bidirectional):    bias[h, i, j] = -m_h * |i - j|

    The default is the paper's form for causal language models: combine it with a causal mask
    (``masking.causal_mask``), which hides the ``j > i`` entries; the bias does not mask them.
    The diagonal is 0 in both forms.

    Args:
        num_heads: ``H``.  seq_len: ``T`` (queries and keys).
        symmetric: penalise distance in both directions (for encoders).
        dtype, device: of the result.

    Returns:
        ``(H, T, T)``: broadcasts against scores ``(B, H, T, T)``.
    """
    require_int(seq_len, "seq_len")
    slopes = alibi_slopes(num_heads).to(dtype=dtype, device=device)  # (H,)
    pos = torch.arange(seq_len, device=device)  # (T,)
    distance = pos[:, None] - pos[None, :]  # (T, 1) - (1, T) -> (T, T): i - j, > 0 for past keys
    distance = distance.abs() if symmetric else distance.clamp(min=0)  # (T, T)
    return -slopes[:, None, None] * distance.to(dtype)  # (H, 1, 1) * (T, T) -> (H, T, T)
