"""Fixtures: arguments that are objects built on the kernel side, named by a safe marker.

A case's inputs cross into a grading kernel as plain data (``torch.load(weights_only=True)``:
tensors, numbers, strings, lists, dicts), so a case cannot hand the learner a function or a
model directly. Instead it passes a *marker*, ``fixture("planted_attention", diagonal=1, scale_power=1, split=0, loop=2)``,
a dict ``{"__attn_course_fixture__": name, **params}`` whose params are plain data too. Just
before the learner's function is called (``harness.call_local``, in the kernel or in the
checker's process) and before the reference is called (``compare.expected_outputs``),
``resolve`` replaces each marker with the object its factory builds. Only the factories in
``FACTORIES`` can be named: a marker never imports or evaluates anything else.

Factories:

``planted_attention(diagonal, scale_power, split, loop)``
                                   an attention function with the signature of
                                   ``scaled_dot_product_attention``, correct or with a planted
                                   bug (``planted_bugs``); the numbers name no bug
``table_lm(table, mix, pos)``      a tiny deterministic language model ``tokens (B, T) ->
                                   logits (B, T, V)`` (``TableLM``), for generation tasks

Dimension glossary: B batch, T sequence length, V vocabulary size.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch

from .._validation import require_tensor, shape_error
from .planted_bugs import planted_attention

MARKER = "__attn_course_fixture__"


def fixture(name: str, **params: Any) -> dict[str, Any]:
    """A marker for the object ``FACTORIES[name](**params)``; params must be plain data."""
    if name not in FACTORIES:
        raise ValueError(f"unknown fixture {name!r}; known: {', '.join(sorted(FACTORIES))}")
    if MARKER in params:
        raise ValueError(f"{MARKER} is reserved")
    return {MARKER: name, **params}


def is_fixture(value: Any) -> bool:
    return isinstance(value, dict) and isinstance(value.get(MARKER), str)


def resolve(value: Any) -> Any:
    """``value`` with every fixture marker replaced by its object.

    Containers without markers come back as the very same objects (tensors are never copied),
    so that in-place changes to the inputs stay visible to the caller.
    """
    if is_fixture(value):
        params = {k: v for k, v in value.items() if k != MARKER}
        return FACTORIES[value[MARKER]](**params)
    if isinstance(value, (tuple, list)):
        items = [resolve(v) for v in value]
        if all(a is b for a, b in zip(items, value)):
            return value
        return tuple(items) if isinstance(value, tuple) else items
    if isinstance(value, dict):
        items = {k: resolve(v) for k, v in value.items()}
        if all(items[k] is value[k] for k in value):
            return value
        return items
    return value


# --------------------------------------------------------------------------- a tiny language model


class TableLM:
    """A deterministic stand-in for a causal language model: ``tokens (B, T) -> logits (B, T, V)``.

    ``logits[b, t] = table[tokens[b, t]] + sum_{j <= t} mix[tokens[b, j]] + pos[t]``: the guess
    for the next token depends on the last token, on the whole prefix and on the position (not
    on later tokens), like a GPT's. Every row is computed on its own, so calling it on one row
    or on the batch gives the same numbers. ``pos`` is ``(max_len, V)``: like
    ``TransformerDecoder``, it refuses sequences longer than ``max_len``.
    """

    def __init__(self, table: torch.Tensor, mix: torch.Tensor, pos: torch.Tensor) -> None:
        V = table.shape[0]
        if table.shape != (V, V) or mix.shape != (V, V) or pos.dim() != 2 or pos.shape[1] != V:
            raise ValueError(f"table and mix must be (V, V) and pos (max_len, V), got {tuple(table.shape)}, "
                             f"{tuple(mix.shape)} and {tuple(pos.shape)}")
        self.table, self.mix, self.pos, self.max_len = table, mix, pos, pos.shape[0]
        self.vocab_size = V

    def __repr__(self) -> str:
        return f"TableLM(vocab_size={self.vocab_size}, max_len={self.max_len})"

    def __call__(self, tokens: torch.Tensor) -> torch.Tensor:
        require_tensor(tokens, "tokens")
        if tokens.dtype != torch.long:
            raise TypeError(f"tokens must be token ids (torch.long), got dtype {tokens.dtype}")
        if tokens.dim() != 2 or not 1 <= tokens.shape[1] <= self.max_len:
            raise shape_error("tokens", tokens, f"(B, T) with 1 <= T <= max_len = {self.max_len}")
        if int(tokens.min()) < 0 or int(tokens.max()) >= self.vocab_size:
            raise ValueError(f"tokens must be ids in [0, {self.vocab_size})")
        own = self.table[tokens]  # (B, T, V)
        prefix = self.mix[tokens].cumsum(dim=1)  # (B, T, V): position t sums tokens 0 .. t
        return own + prefix + self.pos[: tokens.shape[1]]  # (B, T, V)


def _table_lm(table: torch.Tensor, mix: torch.Tensor, pos: torch.Tensor) -> TableLM:
    return TableLM(table, mix, pos)


FACTORIES: dict[str, Callable[..., Any]] = {
    "planted_attention": planted_attention,
    "table_lm": _table_lm,
}
