"""Input validation shared by every public function.

Errors name the argument, the shape received and the shape expected, so a learner
who passes ``(L, d)`` where ``(B, L, d)`` was wanted sees exactly that.
"""

from __future__ import annotations

from collections.abc import Sequence

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
