"""Prepacked linear layers: reading the weights at the memory's speed when decoding on a CPU.

A cached decode step multiplies one row vector by every weight matrix of the model: a
matrix-vector product (GEMV) that does 2 FLOPs per 4-byte weight it reads. Its speed is set
by how fast the weights stream from memory, not by arithmetic (chapter 15 measures its
arithmetic intensity). A stock ``nn.Linear`` on a CPU hands that GEMV to the BLAS library,
which may run it on one core: on our 2-core test machine it reads 17 GB/s where two cores can
read 42 GB/s. oneDNN (the CPU kernel library inside PyTorch, also called mkldnn) can instead
*prepack* each weight once into the blocked layout its inner-product kernel streams fastest,
and that kernel splits the rows over every thread.

``prepack_linears(model)`` swaps every ``nn.Linear`` for a ``PackedLinear`` holding both the
original weight (the parameter, so ``state_dict`` and weight tying are untouched) and the packed
copy (one more copy of the weights in memory). The packed path is used only where it is exact
and safe -- CPU tensors, float32 or bfloat16, no gradient needed -- and the plain
``F.linear`` everywhere else, so a packed model still trains. If the weight changes in place
(an optimiser step), the packed copy is rebuilt on the next call.

This is the step that ``torch.compile`` takes for CPU inference when weights are frozen
(``torch._inductor.config.freezing``); here it is done by hand, without a compiler.
"""

from __future__ import annotations

import functools

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["PackedLinear", "prepack_linears", "prepack_available"]

_DTYPES = (torch.float32, torch.bfloat16)


@functools.cache  # looked up once, not on every forward
def _ops():
    """oneDNN's prepacking ops, or ``None`` where this torch build has none."""
    mkldnn = getattr(torch.ops, "mkldnn", None)
    try:
        return mkldnn._reorder_linear_weight, mkldnn._linear_pointwise
    except (AttributeError, RuntimeError):
        return None


def prepack_available(weight: torch.Tensor | None = None) -> bool:
    """Can this torch build prepack ``weight`` (a CPU float32/bfloat16 tensor) for oneDNN?"""
    if not torch.backends.mkldnn.is_available() or _ops() is None:
        return False
    if weight is None:
        return True
    if weight.device.type != "cpu" or weight.dtype not in _DTYPES:
        return False
    return weight.dtype != torch.bfloat16 or torch.ops.mkldnn._is_mkldnn_bf16_supported()


class PackedLinear(nn.Module):
    """``nn.Linear`` with a oneDNN-prepacked copy of its weight for inference on a CPU.

    ``forward(x)``: ``x (..., in_features)`` -> ``(..., out_features)``, the same values as
    ``F.linear(x, weight, bias)`` up to float rounding (the kernels add in another order).
    """

    def __init__(self, linear: nn.Linear, batch_size: int = 1) -> None:
        super().__init__()
        if not isinstance(linear, nn.Linear):
            raise TypeError(f"linear must be an nn.Linear, got {type(linear).__name__}")
        self.in_features, self.out_features = linear.in_features, linear.out_features
        self.weight = linear.weight  # the same Parameter: tying and state_dict are unchanged
        self.bias = linear.bias
        self.batch_size = batch_size  # rows oneDNN should expect: 1 while decoding one sequence
        self._packed: torch.Tensor | None = None
        self._packed_key: tuple | None = None

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, bias={self.bias is not None}"

    def __getstate__(self) -> dict:
        # oneDNN's packed tensor is opaque (no storage to copy): deepcopy and torch.save drop it,
        # and the copy packs its own weight on first use.
        state = self.__dict__.copy()
        state["_packed"], state["_packed_key"] = None, None
        return state

    def _packed_weight(self) -> torch.Tensor | None:
        w = self.weight
        # _version counts in-place writes: an optimiser step or load_state_dict makes it stale.
        key = (w.data_ptr(), w._version, w.dtype, w.device)
        if self._packed_key != key:
            self._packed = None
            if prepack_available(w):
                reorder, _ = _ops()
                with torch.no_grad():
                    self._packed = reorder(w.detach(), self.batch_size)
            self._packed_key = key
        return self._packed

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        tensors = (x, self.weight) if self.bias is None else (x, self.weight, self.bias)
        needs_grad = torch.is_grad_enabled() and any(t.requires_grad for t in tensors)
        plain = needs_grad or x.dtype != self.weight.dtype or x.device.type != "cpu"
        packed = None if plain else self._packed_weight()
        if packed is None:
            return F.linear(x, self.weight, self.bias)
        _, linear = _ops()
        y = linear(x.reshape(-1, self.in_features), packed, self.bias, "none", [], "")  # (rows, out)
        return y.view(*x.shape[:-1], self.out_features)


def prepack_linears(model: nn.Module, batch_size: int = 1) -> int:
    """Replace every ``nn.Linear`` inside ``model`` by a ``PackedLinear``, in place.

    Returns how many layers were replaced (0 when this torch build cannot prepack: the model
    is then left as it was). Tied weights stay tied: each ``PackedLinear`` keeps the original
    parameter. Extra memory: one packed copy of every replaced weight.
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be an nn.Module, got {type(model).__name__}")
    if not prepack_available():
        return 0
    replaced = 0
    for parent in list(model.modules()):
        for name, child in list(parent.named_children()):
            if type(child) is nn.Linear:  # not subclasses: they may compute something else
                setattr(parent, name, PackedLinear(child, batch_size))
                replaced += 1
    return replaced
