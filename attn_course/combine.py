"""Combining a context vector with the decoder state: three classic ways.

Attention gives a decoder, at every step, a context vector ``c`` (a weighted sum of encoder
states). The decoder must then merge it with its own state ``h``. Three designs:

* ``LuongCombine``     ``h~ = tanh(W_c [c; h])``                        (Luong et al., 2015, eq. 5)
  The "attentional hidden state" ``h~`` then feeds the output layer.
* ``GRUInputCombine``  ``s_t = GRU([y_{t-1}; c_t], s_{t-1})``           (Bahdanau et al., 2015)
  The context enters the recurrence as extra input; the result is the new decoder state.
  (Bahdanau's GRU has separate matrices for ``y`` and ``c``; one matrix on the concatenation
  ``[y; c]`` is the same function.)
* ``GatedCombine``     ``g = sigmoid(W_g [c; h] + b_g)``, ``out = g * c + (1 - g) * h``
  A learned, per-feature choice between the context and the state (as in gated fusion layers).

Interface (all three)::

    LuongCombine(context_dim, state_dim, out_dim)(context, state)            -> (..., out_dim)
    GatedCombine(context_dim, state_dim)(context, state)                     -> (..., state_dim)
    GRUInputCombine(context_dim, input_dim, state_dim)(context, state, prev_input)
                                                                             -> (..., state_dim)

Each module has ``context_dim``, ``state_dim`` and ``out_dim`` attributes. Tensors are
batch-first: ``(B, D)`` for one decoder step, or ``(B, T, D)`` for every step at once (any
leading dims work for ``LuongCombine`` and ``GatedCombine``); ``context`` and ``state`` must
have the same leading dims. See ``GRUInputCombine`` for what its ``(B, T, D)`` form means.

Dimension glossary (see ``attn_course`` for the full one)::

    B    batch size        T    number of decoder steps
    C    context_dim       Hs   state_dim (decoder hidden size)
    E    input_dim (embedding of the previous target token)     O   out_dim
"""

from __future__ import annotations

import torch
from torch import nn

from attn_course._validation import require_floating, require_int, require_ndim, shape_error

__all__ = [
    "LuongCombine",
    "GRUInputCombine",
    "GatedCombine",
]


# --------------------------------------------------------------------------- validation


def _check_input(x: object, name: str, width: int, width_name: str, min_ndim: int = 1) -> torch.Tensor:
    """``x`` is a floating tensor ``(..., width)``."""
    expected = f"(B, {width}) or (B, T, {width}) ({width_name} = {width})"
    require_floating(x, name)
    require_ndim(x, name, min_ndim, expected)
    if x.shape[-1] != width:
        raise shape_error(name, x, expected)
    return x


def _check_pair(context: object, state: object, context_dim: int, state_dim: int) -> None:
    """``context (..., C)`` and ``state (..., Hs)`` with the same leading dims and dtype."""
    _check_input(context, "context", context_dim, "context_dim")
    _check_input(state, "state", state_dim, "state_dim")
    if state.dtype != context.dtype:
        raise TypeError(f"state has dtype {state.dtype}; expected context's dtype {context.dtype}")
    if state.shape[:-1] != context.shape[:-1]:
        lead = ", ".join(str(s) for s in context.shape[:-1])
        raise shape_error("state", state, f"({lead}, {state_dim}): the same leading dims as context's")


# --------------------------------------------------------------------------- the three combiners


class LuongCombine(nn.Module):
    """Luong's attentional hidden state ``h~ = tanh(W_c [c; h])``.

    Args:
        context_dim: C.  state_dim: Hs.  out_dim: O, the width of ``h~``.
        bias: add a bias inside the tanh (Luong et al. write none; default False).

    Parameters: ``W_c`` of shape ``(O, C + Hs)`` (+ ``O`` with ``bias``), i.e.
    ``O * (C + Hs) [+ O]``.

    Shapes: ``context (..., C)``, ``state (..., Hs)`` -> ``(..., O)``.
    """

    def __init__(self, context_dim: int, state_dim: int, out_dim: int, bias: bool = False) -> None:
        super().__init__()
        self.context_dim = require_int(context_dim, "context_dim")
        self.state_dim = require_int(state_dim, "state_dim")
        self.out_dim = require_int(out_dim, "out_dim")
        self.W_c = nn.Linear(context_dim + state_dim, out_dim, bias=bias)

    def forward(self, context: torch.Tensor, state: torch.Tensor) -> torch.Tensor:
        _check_pair(context, state, self.context_dim, self.state_dim)
        both = torch.cat([context, state], dim=-1)  # (..., C) ++ (..., Hs) -> (..., C + Hs)
        return torch.tanh(self.W_c(both))  # (..., O)

    def extra_repr(self) -> str:
        return f"context_dim={self.context_dim}, state_dim={self.state_dim}, out_dim={self.out_dim}"


class GRUInputCombine(nn.Module):
    """Bahdanau's decoder update ``s_t = GRU([y_{t-1}; c_t], s_{t-1})``: the context is GRU input.

    ``forward(context, state, prev_input)`` takes, unlike the other combiners, a third tensor:
    the embedding of the previous target token ``y_{t-1}``. ``state`` is the previous decoder
    state ``s_{t-1}``; the result is the new state ``s_t`` (``out_dim == state_dim``).

    Two forms:

    * one step: ``context (B, C)``, ``state (B, Hs)``, ``prev_input (B, E)`` -> ``s_t (B, Hs)``.
      This is what an attention decoder calls: in Bahdanau's model ``c_t`` is computed from
      ``s_{t-1}``, so the steps cannot run in parallel.
    * ``T`` steps with contexts known in advance: ``context (B, T, C)``, ``prev_input (B, T, E)``
      and the initial ``state (B, Hs)`` -> every state ``(B, T, Hs)``, ``s_1 .. s_T``, by looping
      over the one-step form with the same weights.

    Args:
        context_dim: C.  input_dim: E.  state_dim: Hs.

    Parameters: a ``GRUCell(E + C, Hs)``: ``3 * Hs * (E + C) + 3 * Hs * Hs + 6 * Hs``.
    """

    def __init__(self, context_dim: int, input_dim: int, state_dim: int) -> None:
        super().__init__()
        self.context_dim = require_int(context_dim, "context_dim")
        self.input_dim = require_int(input_dim, "input_dim")
        self.state_dim = require_int(state_dim, "state_dim")
        self.out_dim = self.state_dim
        self.cell = nn.GRUCell(input_dim + context_dim, state_dim)

    def forward(self, context: torch.Tensor, state: torch.Tensor, prev_input: torch.Tensor) -> torch.Tensor:
        _check_input(context, "context", self.context_dim, "context_dim", min_ndim=2)
        _check_input(prev_input, "prev_input", self.input_dim, "input_dim", min_ndim=2)
        if context.dim() > 3:
            raise shape_error("context", context, f"(B, {self.context_dim}) or (B, T, {self.context_dim})")
        if prev_input.dtype != context.dtype:
            raise TypeError(
                f"prev_input has dtype {prev_input.dtype}; expected context's dtype {context.dtype}"
            )
        if prev_input.shape[:-1] != context.shape[:-1]:
            lead = ", ".join(str(s) for s in context.shape[:-1])
            raise shape_error("prev_input", prev_input, f"({lead}, {self.input_dim}): context's leading dims")
        B = context.shape[0]
        require_floating(state, "state")
        if state.shape != (B, self.state_dim):
            raise shape_error("state", state, f"({B}, {self.state_dim}): the (previous) state (B, state_dim)")
        if state.dtype != context.dtype:
            raise TypeError(f"state has dtype {state.dtype}; expected context's dtype {context.dtype}")
        if context.dim() == 2:
            x = torch.cat([prev_input, context], dim=-1)  # (B, E) ++ (B, C) -> (B, E + C)
            return self.cell(x, state)  # (B, Hs)
        states = []
        for x in torch.cat([prev_input, context], dim=-1).unbind(dim=1):  # (B, E + C) per step
            state = self.cell(x, state)  # (B, Hs)
            states.append(state)
        if not states:  # T = 0
            return context.new_zeros(B, 0, self.state_dim)  # (B, 0, Hs)
        return torch.stack(states, dim=1)  # T x (B, Hs) -> (B, T, Hs)

    def extra_repr(self) -> str:
        return f"context_dim={self.context_dim}, input_dim={self.input_dim}, state_dim={self.state_dim}"


class GatedCombine(nn.Module):
    """A learned gate between context and state: ``g = sigmoid(W_g [c; h] + b_g)``,
    ``out = g * c + (1 - g) * h``.

    Each output feature is a convex mix of the same feature of ``c`` and ``h``, so it lies
    between them; ``g`` near 1 copies the context, near 0 keeps the state. The mix is
    elementwise, so ``context_dim`` must equal ``state_dim`` (project one of them first if not).

    Args:
        context_dim: C.  state_dim: Hs (== C).

    Parameters: ``W_g (Hs, C + Hs)`` and ``b_g (Hs,)``: ``Hs * (C + Hs) + Hs``.

    Shapes: ``context (..., C)``, ``state (..., Hs)`` -> ``(..., Hs)``; :meth:`gate` gives ``g``.
    """

    def __init__(self, context_dim: int, state_dim: int) -> None:
        super().__init__()
        self.context_dim = require_int(context_dim, "context_dim")
        self.state_dim = require_int(state_dim, "state_dim")
        if context_dim != state_dim:
            raise ValueError(
                f"GatedCombine mixes context and state elementwise, so context_dim ({context_dim}) must "
                f"equal state_dim ({state_dim}); project one of them first (e.g. with nn.Linear)"
            )
        self.out_dim = self.state_dim
        self.W_g = nn.Linear(context_dim + state_dim, state_dim)

    def gate(self, context: torch.Tensor, state: torch.Tensor) -> torch.Tensor:
        """The gate ``g`` in ``(0, 1)``, ``(..., Hs)``: the share of the context in each feature."""
        _check_pair(context, state, self.context_dim, self.state_dim)
        both = torch.cat([context, state], dim=-1)  # (..., C + Hs)
        return torch.sigmoid(self.W_g(both))  # (..., Hs)

    def forward(self, context: torch.Tensor, state: torch.Tensor) -> torch.Tensor:
        g = self.gate(context, state)  # (..., Hs); validates the inputs
        return g * context + (1 - g) * state  # (..., Hs)

    def extra_repr(self) -> str:
        return f"context_dim={self.context_dim}, state_dim={self.state_dim}"
