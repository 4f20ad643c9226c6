"""A quantised KV cache: keys and values stored in 8 or 4 bits, dequantised when attended.

A float16 cache spends 16 bits per number. Keys and values tolerate far fewer: store each
group of numbers as small integers and one scale (and, asymmetric, one zero point) per group.

* **int8, per token** (symmetric): each token's ``d`` numbers of one head share a scale
  ``s = max |x| / 127``; code ``round(x / s)`` in ``[-127, 127]``; ``x ~ code * s``.
* **int4, KIVI** (Liu et al. 2024; asymmetric, ``2^4 = 16`` levels): a code is
  ``round((x - min) / s)`` with ``s = (max - min) / 15`` over a group of ``G`` numbers, and
  *the groups differ for keys and values*: keys are quantised **per channel** (a group is one
  channel over ``G`` consecutive tokens), values **per token** (a group is ``G`` channels of one
  token). Keys have a few channels with large magnitudes in every token (outlier channels): per
  channel, each channel gets its own range. Values have no such channels, and the attention
  output mixes values token by token, so per-token error is what matters there.

  Per-channel key groups need ``G`` tokens before they can be quantised: the newest
  ``< G`` tokens stay in full precision (KIVI's residual), and are quantised as a group when
  it fills. int4 codes are packed two per byte.

Error bounds (round to nearest): symmetric ``|x - x~| <= s / 2 = max|x| / 254``; asymmetric
``<= (max - min) / 30`` at 4 bits.

* ``quantize_symmetric`` / ``dequantize_symmetric``     int8 along the last axis.
* ``quantize_groups`` / ``dequantize_groups``           asymmetric ``bits``-bit codes in groups of ``G``
                                                         along an axis (int4: packed two per byte).
* ``QuantizedCache``     a ``KVCache`` (``attn_course.kv_cache``) storing ``"int8"`` or ``"int4"``
                         codes; ``decoding.generate(model, idx, n, cache=QuantizedCache(...))``.
* ``quantized_bytes_per_token``   the formula for bytes per token, scales included.

Dimension glossary: B batch, H_kv key/value heads, S tokens, d head_dim, G group size.
"""

from __future__ import annotations

import torch

from attn_course._validation import require_floating, require_int
from attn_course.kv_cache import KVCache

__all__ = [
    "SCHEMES",
    "quantize_symmetric",
    "dequantize_symmetric",
    "quantize_groups",
    "dequantize_groups",
    "QuantizedCache",
    "quantized_bytes_per_token",
]

SCHEMES = ("int8", "int4")
_SCALE_DTYPE = torch.float16  # scales and zero points are stored in 16 bits


# --------------------------------------------------------------------------- int8, symmetric


def quantize_symmetric(x: torch.Tensor, bits: int = 8) -> tuple[torch.Tensor, torch.Tensor]:
    """Symmetric per-row codes along the last axis: ``(codes int8 (..., d), scale (..., 1))``.

    ``scale = max |x| / (2^(bits-1) - 1)`` per row (float16); ``codes = round(x / scale)``.
    """
    require_floating(x, "x")
    levels = 2 ** (require_int(bits, "bits", minimum=2, maximum=8) - 1) - 1  # 127 for 8 bits
    scale = (x.abs().amax(dim=-1, keepdim=True) / levels).to(_SCALE_DTYPE)  # (..., 1)
    safe = scale.float().clamp_min(torch.finfo(_SCALE_DTYPE).tiny)
    codes = torch.round(x.float() / safe).clamp(-levels, levels).to(torch.int8)  # (..., d)
    return codes, scale


def dequantize_symmetric(codes: torch.Tensor, scale: torch.Tensor, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """``codes * scale`` in ``dtype``."""
    return (codes.float() * scale.float()).to(dtype)


# --------------------------------------------------------------------------- asymmetric groups (KIVI)


def _pack4(codes: torch.Tensor) -> torch.Tensor:
    """uint8 codes in ``0..15`` along the last axis (even length) -> half as many bytes."""
    return codes[..., 0::2] | (codes[..., 1::2] << 4)


def _unpack4(packed: torch.Tensor) -> torch.Tensor:
    out = torch.stack([packed & 0xF, packed >> 4], dim=-1)  # (..., n/2, 2)
    return out.flatten(-2)


def quantize_groups(x: torch.Tensor, bits: int, group_size: int, dim: int) -> dict[str, torch.Tensor]:
    """Asymmetric ``bits``-bit codes for groups of ``group_size`` consecutive entries along ``dim``.

    Returns ``{"codes", "scale", "zero"}``: codes ``uint8`` (4 bits: two per byte, packed along
    the last axis), ``scale = (max - min) / (2^bits - 1)`` and ``zero = min`` per group (float16),
    shaped like ``x`` with ``dim`` divided by ``group_size``. ``x.shape[dim]`` must be a multiple
    of ``group_size``.
    """
    require_floating(x, "x")
    require_int(bits, "bits", minimum=2, maximum=8)
    require_int(group_size, "group_size")
    dim = dim % x.dim()
    n = x.shape[dim]
    if n % group_size:
        raise ValueError(f"x.shape[{dim}] = {n} is not a multiple of group_size = {group_size}")
    if bits == 4 and x.shape[-1] % 2:
        raise ValueError(f"4-bit codes are packed in pairs along the last axis; x.shape[-1] = {x.shape[-1]} is odd")
    levels = 2 ** bits - 1
    g = x.float().unflatten(dim, (n // group_size, group_size))  # the group axis right after dim
    lo = g.amin(dim=dim + 1, keepdim=True)
    hi = g.amax(dim=dim + 1, keepdim=True)
    scale = ((hi - lo) / levels).to(_SCALE_DTYPE)
    zero = lo.to(_SCALE_DTYPE)
    safe = scale.float().clamp_min(torch.finfo(_SCALE_DTYPE).tiny)
    codes = torch.round((g - zero.float()) / safe).clamp(0, levels).to(torch.uint8).flatten(dim, dim + 1)
    if bits == 4:
        codes = _pack4(codes)
    return {"codes": codes, "scale": scale.squeeze(dim + 1), "zero": zero.squeeze(dim + 1), "bits": bits,
            "group_size": group_size, "dim": dim}


def dequantize_groups(q: dict, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """The inverse of ``quantize_groups``: ``code * scale + zero`` for every entry."""
    codes = _unpack4(q["codes"]) if q["bits"] == 4 else q["codes"]
    dim, G = q["dim"], q["group_size"]
    g = codes.float().unflatten(dim, (codes.shape[dim] // G, G))
    x = g * q["scale"].float().unsqueeze(dim + 1) + q["zero"].float().unsqueeze(dim + 1)
    return x.flatten(dim, dim + 1).to(dtype)


def _nbytes(t: torch.Tensor) -> int:
    return t.numel() * t.element_size()


def _q_bytes(q: dict | tuple) -> int:
    if isinstance(q, tuple):
        return sum(_nbytes(t) for t in q)
    return _nbytes(q["codes"]) + _nbytes(q["scale"]) + _nbytes(q["zero"])


# --------------------------------------------------------------------------- the cache


class QuantizedCache(KVCache):
    """A ``KVCache`` that stores keys and values as ``"int8"`` (per token) or ``"int4"`` (KIVI) codes.

    ``update`` stores the new keys/values and returns every key and value *dequantised* (in the
    dtype of the input), so any model attends over it unchanged (a fused kernel would dequantise
    tiles on the fly instead; for speed this one also keeps the dequantised copies it returned,
    which ``allocated_bytes`` does not count: it counts what a quantised cache stores). int4 keeps the newest ``< group_size`` tokens in full precision
    until their per-channel group fills (``residual_len``); values use the same residual, so
    keys and values are quantised together.

    Args:
        num_layers, num_kv_heads, head_dim: the model's shape (N, H_kv, d).
        scheme: ``"int8"`` or ``"int4"``.
        group_size: G, int4 only: tokens per key group, channels per value group (divides d).
    """

    def __init__(self, num_layers: int, num_kv_heads: int, head_dim: int, scheme: str = "int8",
                 group_size: int = 32) -> None:
        super().__init__(num_layers, num_kv_heads, head_dim)
        if scheme not in SCHEMES:
            raise ValueError(f"scheme must be one of {SCHEMES}, got {scheme!r}")
        self.scheme = scheme
        self.group_size = require_int(group_size, "group_size")
        if scheme == "int4" and head_dim % group_size:
            raise ValueError(f"group_size = {group_size} must divide head_dim = {head_dim} (value groups are "
                             f"channels of one token)")
        self._quantized: list[list[tuple]] = [[] for _ in range(num_layers)]  # (key q, value q) per flushed chunk
        self._residual: list[tuple[torch.Tensor, torch.Tensor] | None] = [None] * num_layers
        self._dequantized: list[tuple[torch.Tensor, torch.Tensor] | None] = [None] * num_layers  # what was returned

    def _quantize(self, k: torch.Tensor, v: torch.Tensor) -> tuple:
        if self.scheme == "int8":
            return quantize_symmetric(k), quantize_symmetric(v)  # per token (and head): the last axis
        G = self.group_size
        return quantize_groups(k, 4, G, dim=2), quantize_groups(v, 4, G, dim=3)  # keys per channel, values per token

    def _dequantize(self, kq, vq, dtype) -> tuple[torch.Tensor, torch.Tensor]:
        if self.scheme == "int8":
            return dequantize_symmetric(*kq, dtype=dtype), dequantize_symmetric(*vq, dtype=dtype)
        return dequantize_groups(kq, dtype), dequantize_groups(vq, dtype)

    def _store(self, layer, k, v):
        self.dtype, self.device = k.dtype, k.device
        if self.scheme == "int8":
            new = self._quantize(k, v)
            self._quantized[layer].append(new)
            kd, vd = self._dequantize(*new, dtype=k.dtype)  # (B, H_kv, T, d)
            old = self._dequantized[layer]
            if old is not None:
                kd, vd = torch.cat([old[0], kd], dim=2), torch.cat([old[1], vd], dim=2)
            self._dequantized[layer] = (kd, vd)
            return kd, vd
        # int4: append to the full-precision residual, flush every full group of G tokens.
        res = self._residual[layer]
        rk, rv = (k, v) if res is None else (torch.cat([res[0], k], dim=2), torch.cat([res[1], v], dim=2))
        full = rk.shape[2] // self.group_size * self.group_size
        if full:
            chunk = self._quantize(rk[:, :, :full], rv[:, :, :full])
            self._quantized[layer].append(chunk)
            kd, vd = self._dequantize(*chunk, dtype=k.dtype)
            old = self._dequantized[layer]
            if old is not None:
                kd, vd = torch.cat([old[0], kd], dim=2), torch.cat([old[1], vd], dim=2)
            self._dequantized[layer] = (kd, vd)
            rk, rv = rk[:, :, full:], rv[:, :, full:]
        self._residual[layer] = (rk, rv)
        old = self._dequantized[layer]
        if old is None:
            return rk, rv
        return torch.cat([old[0], rk], dim=2), torch.cat([old[1], rv], dim=2)  # (B, H_kv, S, d)

    @property
    def residual_len(self) -> int:
        """Tokens held in full precision (int4: the newest ``seq_len mod G``; int8: none)."""
        res = self._residual[-1]
        return 0 if res is None else res[0].shape[2]

    def reset(self) -> None:
        super().reset()
        self._quantized = [[] for _ in range(self.num_layers)]
        self._residual = [None] * self.num_layers
        self._dequantized = [None] * self.num_layers

    def allocated_bytes(self) -> int:
        """Bytes of codes, scales and zero points, plus the full-precision residual (not the dequantised copies)."""
        total = 0
        for layer in range(self.num_layers):
            total += sum(_q_bytes(kq) + _q_bytes(vq) for kq, vq in self._quantized[layer])
            if self._residual[layer] is not None:
                total += sum(_nbytes(t) for t in self._residual[layer])
        return total


def quantized_bytes_per_token(num_layers: int, num_kv_heads: int, head_dim: int, scheme: str,
                              group_size: int = 32) -> float:
    """Bytes per token of a ``QuantizedCache`` once its groups are full (float16 scales and zeros).

    int8: ``2 N H_kv (d + 2)`` (a code per number, one scale per token and head, for K and V).
    int4: ``2 N H_kv (d / 2 + 2 d / G)``: half a byte per number; per group of ``G`` a scale and a
    zero (keys: one group per channel per ``G`` tokens, i.e. ``d / G`` per token; values ``d / G``).
    """
    for name, value in (("num_layers", num_layers), ("num_kv_heads", num_kv_heads), ("head_dim", head_dim),
                        ("group_size", group_size)):
        require_int(value, name)
    if scheme == "int8":
        per_head = head_dim + 2
    elif scheme == "int4":
        per_head = head_dim / 2 + 2 * 2 * head_dim / group_size
    else:
        raise ValueError(f"scheme must be one of {SCHEMES}, got {scheme!r}")
    return 2 * num_layers * num_kv_heads * per_head
