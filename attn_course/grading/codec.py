"""The value format that crosses from a grading kernel to the grader.

The kernel runs untrusted code, so what it sends back is loaded with
``torch.load(weights_only=True)``: tensors, numbers, strings, lists and dicts only, never
arbitrary pickled objects. Anything else the learner returns is replaced by a description.
"""

from __future__ import annotations

from typing import Any

import torch

# Tags for values that torch's safe loader cannot carry as themselves.
TUPLE, NDARRAY, OBJECT = "__tuple__", "__ndarray__", "__object__"


def encode(value: Any, depth: int = 0) -> Any:
    """Learner value -> safe-to-load value. Runs inside the grading kernel (see ``runner``)."""
    if depth > 8:
        return {OBJECT: "too deeply nested"}
    if isinstance(value, torch.Tensor):
        return value.detach().cpu().clone()
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    if isinstance(value, tuple):
        return {TUPLE: [encode(v, depth + 1) for v in value]}
    if isinstance(value, list):
        return [encode(v, depth + 1) for v in value]
    if isinstance(value, dict) and all(isinstance(k, str) for k in value) and not (value.keys() & {TUPLE, NDARRAY, OBJECT}):
        return {k: encode(v, depth + 1) for k, v in value.items()}
    try:  # numpy arrays (and scalars) without importing numpy here
        import numpy as np

        if isinstance(value, (np.ndarray, np.generic)):
            return {NDARRAY: torch.from_numpy(np.array(value, copy=True))}
    except Exception:
        pass
    return {OBJECT: type(value).__name__}


def decode(value: Any) -> Any:
    """Inverse of ``encode`` in the grader. Unknown objects become ``Opaque`` placeholders."""
    if isinstance(value, dict):
        if TUPLE in value and len(value) == 1:
            return tuple(decode(v) for v in value[TUPLE])
        if NDARRAY in value and len(value) == 1:
            import numpy as np

            return np.asarray(value[NDARRAY].numpy())
        if OBJECT in value and len(value) == 1:
            return Opaque(str(value[OBJECT]))
        return {k: decode(v) for k, v in value.items()}
    if isinstance(value, list):
        return [decode(v) for v in value]
    return value


class Opaque:
    """Stands for a returned object the kernel could not send (e.g. a generator)."""

    def __init__(self, type_name: str):
        self.type_name = type_name

    def __repr__(self) -> str:
        return f"<{self.type_name}>"
