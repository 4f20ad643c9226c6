"""The value format that crosses from a grading kernel to the grader.

The kernel runs untrusted code, so what it sends back is loaded with
``torch.load(weights_only=True)``: tensors, numbers, strings, lists and dicts only, never
arbitrary pickled objects. Anything else the learner returns is replaced by a description.
``load_bounded`` is the grader's side: it also refuses values nested too deeply, too many
values (a pickle can share one list many times over: 60 bytes can stand for 2**60 items),
and tensors that are too large or not plain CPU tensors.
"""

from __future__ import annotations

import io
from typing import Any

import torch

MAX_DEPTH = 16
MAX_NODES = 100_000  # values visited while checking, shared ones counted every time
MAX_ELEMENTS = 16_000_000  # tensor elements in all
MAX_STRING = 100_000


class ResultError(Exception):
    """A kernel's results could not be accepted; the message says why."""

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


def check_bounds(value: Any) -> None:
    """Raise ``ResultError`` unless ``value`` is small, shallow and made of the codec's types only."""
    stack = [(value, 0)]
    nodes = elements = 0
    while stack:
        v, depth = stack.pop()
        nodes += 1
        if nodes > MAX_NODES:
            raise ResultError(f"the results hold more than {MAX_NODES} values")
        if depth > MAX_DEPTH:
            raise ResultError(f"the results are nested deeper than {MAX_DEPTH} levels")
        if isinstance(v, torch.Tensor):
            if v.layout != torch.strided or v.device.type != "cpu" or v.is_quantized:
                raise ResultError("the results hold a tensor that is not a plain CPU tensor")
            elements += v.numel()
            if elements > MAX_ELEMENTS:
                raise ResultError(f"the results hold more than {MAX_ELEMENTS} tensor elements")
        elif isinstance(v, str):
            if len(v) > MAX_STRING:
                raise ResultError("the results hold a string that is too long")
        elif v is None or isinstance(v, (bool, int, float)):
            pass
        elif isinstance(v, (list, tuple)):
            stack.extend((x, depth + 1) for x in v)
        elif isinstance(v, dict):
            for k, x in v.items():
                if not isinstance(k, str):
                    raise ResultError("the results hold a dict with a key that is not a string")
                stack.append((x, depth + 1))
        else:
            raise ResultError(f"the results hold a {type(v).__name__}")


def load_bounded(data: bytes) -> Any:
    """Bytes a kernel wrote -> decoded value, or ``ResultError``."""
    try:
        value = torch.load(io.BytesIO(data), weights_only=True)
    except Exception as exc:
        raise ResultError(f"unreadable results ({type(exc).__name__})") from None
    check_bounds(value)
    return decode(value)
