"""Input validation shared by every public function.

Errors name the argument, the shape received and the shape expected, so a learner
who passes ``(L, d)`` where ``(B, L, d)`` was wanted sees exactly that.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from numbers import Real

import torch


def fmt_shape(shape: Sequence[int]) -> str:
    """``torch.Size([2, 3])`` -> ``(2, 3)``."""
    return "(" + ", ".join(str(int(s)) for s in shape) + ("," if len(shape) == 1 else "") + ")"


def require_tensor(x: object, name: str) -> torch.Tensor:
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(x).__name__}")
    return x


def require_floating(x: torch.Tensor, name: str) -> torch.Tensor:
    require_tensor(x, name)
    if not x.is_floating_point():
        raise TypeError(f"{name} must be a floating-point tensor, got dtype {x.dtype}")
    return x


def require_ndim(x: torch.Tensor, name: str, min_ndim: int, expected: str) -> torch.Tensor:
    """At least ``min_ndim`` dimensions; ``expected`` is the shape pattern, e.g. ``"(..., L, d_k)"``."""
    require_tensor(x, name)
    if x.dim() < min_ndim:
        raise ValueError(f"{name} has shape {fmt_shape(x.shape)}; expected {expected}")
    return x


def shape_error(name: str, x: torch.Tensor, expected: str) -> ValueError:
    """A ValueError in the house format: ``{name} has shape (..); expected {expected}``."""
    return ValueError(f"{name} has shape {fmt_shape(x.shape)}; expected {expected}")


def require_broadcastable(x: torch.Tensor, name: str, target: Sequence[int], expected: str) -> torch.Tensor:
    """``x`` must broadcast to ``target`` (e.g. a mask against the score matrix)."""
    require_tensor(x, name)
    try:
        shape = torch.broadcast_shapes(tuple(x.shape), tuple(target))
    except RuntimeError:
        raise shape_error(name, x, f"{expected}, broadcastable to {fmt_shape(target)}") from None
    if tuple(shape) != tuple(target):
        raise shape_error(name, x, f"{expected}, broadcastable to {fmt_shape(target)}")
    return x


def _int_kind(minimum: int, maximum: int | None) -> str:
    """What ``require_int`` expects, in words: ``a positive int``, ``an int in [0, 4]``, ..."""
    if maximum is not None:
        return f"an int in [{minimum}, {maximum}]"
    return {1: "a positive int", 0: "a non-negative int"}.get(minimum, f"an int >= {minimum}")


def _is_int_in(value: object, minimum: int, maximum: int | None) -> bool:
    # bool is an int subclass, but True as a head count is a bug, not a 1
    if isinstance(value, bool) or not isinstance(value, int):
        return False
    return minimum <= value and (maximum is None or value <= maximum)


def require_int(value: object, name: str, minimum: int = 1, maximum: int | None = None) -> int:
    """An ``int`` (not a ``bool``) in ``[minimum, maximum]`` (no upper bound by default).

    The error names the argument, the value received and what was expected, e.g.
    ``num_heads must be a positive int, got 0`` or ``t must be an int in [0, 4], got 5``.
    """
    if not _is_int_in(value, minimum, maximum):
        raise ValueError(f"{name} must be {_int_kind(minimum, maximum)}, got {value!r}")
    return value


def require_optional_int(value: object, name: str, minimum: int = 1, maximum: int | None = None) -> int | None:
    """``None`` (meaning "use the default") or what ``require_int`` accepts; the error says so."""
    if value is not None and not _is_int_in(value, minimum, maximum):
        raise ValueError(f"{name} must be {_int_kind(minimum, maximum)} or None, got {value!r}")
    return value


def require_positive_number(value: object, name: str) -> float:
    """A finite real number > 0 (``bandwidth``, ``base``, ...), returned as a float."""
    if isinstance(value, bool) or not isinstance(value, Real):
        raise TypeError(f"{name} must be a positive number, got {type(value).__name__}")
    x = float(value)
    if not (math.isfinite(x) and x > 0):
        raise ValueError(f"{name} must be a positive finite number, got {value!r}")
    return x


def require_width(x: object, name: str, width: int, expected: str | None = None, min_ndim: int = 2) -> torch.Tensor:
    """A floating tensor whose last dim is ``width``; ``expected`` is the pattern for the error."""
    expected = expected or f"(..., T, {width})"
    require_floating(x, name)
    require_ndim(x, name, min_ndim, expected)
    if x.shape[-1] != width:
        raise shape_error(name, x, expected)
    return x


def check_mask(mask: object, target: Sequence[int], expected: str) -> torch.Tensor:
    """A boolean mask broadcastable to ``target`` (without growing it)."""
    require_tensor(mask, "mask")
    if mask.dtype != torch.bool:
        raise TypeError(
            f"mask must be a boolean tensor (True = may attend), got dtype {mask.dtype}; "
            "to convert an additive float mask use `mask == 0`"
        )
    return require_broadcastable(mask, "mask", target, expected)


def batch_shape(a: torch.Tensor, a_name: str, b: torch.Tensor, b_name: str, b_expected: str) -> torch.Size:
    """Broadcast the leading (batch) dims of ``a`` and ``b``; blame ``b`` if they do not broadcast."""
    try:
        return torch.broadcast_shapes(a.shape[:-2], b.shape[:-2])
    except RuntimeError:
        raise shape_error(
            b_name,
            b,
            f"{b_expected} whose leading (batch) dims broadcast with {a_name}'s {fmt_shape(a.shape[:-2])}",
        ) from None


def check_query_key(
    q: object,
    k: object,
    q_name: str = "q",
    k_name: str = "k",
    d_q: int | None = None,
    d_k: int | None = None,
) -> torch.Size:
    """Validate a query/key pair; return the broadcast batch shape.

    With ``d_q``/``d_k`` left as ``None`` the two widths must simply agree (dot products);
    the learned scores pass their configured widths instead.
    """
    require_floating(q, q_name)
    require_floating(k, k_name)
    require_ndim(q, q_name, 2, "(..., L, d_q)" if d_q is not None else "(..., L, d_k)")
    require_ndim(k, k_name, 2, "(..., S, d_k)")
    if k.dtype != q.dtype:
        raise TypeError(f"{k_name} has dtype {k.dtype}; expected {q_name}'s dtype {q.dtype}")
    if d_q is None and d_k is None:
        if k.shape[-1] != q.shape[-1]:
            raise shape_error(
                k_name,
                k,
                f"(..., S, {q.shape[-1]}): its last dim (d_k) must equal {q_name}'s last dim",
            )
    else:
        if q.shape[-1] != d_q:
            raise shape_error(q_name, q, f"(..., L, {d_q}) (d_q = query_dim = {d_q})")
        if k.shape[-1] != d_k:
            raise shape_error(k_name, k, f"(..., S, {d_k}) (d_k = key_dim = {d_k})")
    return batch_shape(q, q_name, k, k_name, "(..., S, d_k)")


def check_value(
    value: object, key: torch.Tensor, query: torch.Tensor, names: tuple[str, str, str] = ("value", "key", "query")
) -> None:
    """``value (..., S, d_v)``: the S of ``key``, the dtype of ``query``, batch dims that broadcast with both.

    ``names`` are the caller's argument names for value, key and query (``lookup`` says
    ``values``, ``keys``, ``queries``), so the errors name what the user passed.
    """
    v, k, q = names
    require_floating(value, v)
    require_ndim(value, v, 2, "(..., S, d_v)")
    if value.dtype != query.dtype:
        q_possessive = f"{q}'" if q.endswith("s") else f"{q}'s"
        raise TypeError(f"{v} has dtype {value.dtype}; expected {q_possessive} dtype {query.dtype}")
    S = key.shape[-2]
    if value.shape[-2] != S:
        raise shape_error(v, value, f"(..., {S}, d_v): one row per key ({k} has S = {S})")
    batch = torch.broadcast_shapes(query.shape[:-2], key.shape[:-2])
    try:
        torch.broadcast_shapes(batch, value.shape[:-2])
    except RuntimeError:
        raise shape_error(
            v, value, f"(..., S, d_v) whose leading (batch) dims broadcast with {fmt_shape(batch)}"
        ) from None
