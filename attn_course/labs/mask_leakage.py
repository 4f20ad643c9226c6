"""Combining masks, and checking that a model respects them.

Dimension glossary (see ``attn_course`` for the full one)::

    B   batch size        H   number of heads (1 in ``MaskedAttentionModel``)
    T   sequence length   L, S  query and key lengths of a mask (L == S == T in self-attention)
    D   model width       V   vocabulary size

Mask convention, as everywhere in the course: boolean, ``True`` = may attend.

* ``combine_masks``       AND of several masks, with broadcasting: ``(B, 1, 1, S) & (L, S)``.
* ``neg_inf_softmax``     the common recipe ``softmax(scores.masked_fill(~mask, -inf))``, which
                          gives NaN on a fully masked row (``masking.masked_softmax`` gives zeros).
* ``MaskedAttentionModel`` a tiny token model (embedding, self-attention layers with residuals,
                          output layer) that takes any mask and either softmax.
* ``perturb``, ``position_changes``, ``causal_leakage``, ``padding_leakage``: change some
  inputs and measure which output positions move.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence

import torch
from matplotlib.axes import Axes
from torch import nn

from attn_course._validation import fmt_shape, require_int, require_tensor, shape_error
from attn_course.attention import scaled_dot_product_attention
from attn_course.masking import causal_mask, combine_masks, finite_masked_softmax, neg_inf_softmax
from attn_course.plotting import check_curves, finish_axes, new_axes
from attn_course.self_attention import SelfAttention

__all__ = [
    "MaskedAttentionModel",
    "perturb",
    "position_changes",
    "causal_leakage",
    "padding_leakage",
    "plot_position_changes",
]


# --------------------------------------------------------------------------- a tiny model


class MaskedAttentionModel(nn.Module):
    """Tokens -> embedding -> ``num_layers`` x (x + self-attention(x)) -> logits; one head.

    Small enough to check masks on: no positional encoding (a causal mask alone tells positions
    apart), no LayerNorm, no MLP. Each layer is a ``SelfAttention(D, D)``; its scores are
    ``(B, 1, T, T)`` (one head), so a padding mask ``(B, 1, 1, T)`` from ``padding_mask``, a
    causal mask ``(T, T)`` and their ``combine_masks`` all broadcast against them.

    Args:
        vocab_size: V.  d_model: D.  num_layers: attention layers.
        causal: AND every mask with ``causal_mask(T)``.
        softmax: ``"masked"`` (``scaled_dot_product_attention``, zeros on fully masked rows),
            ``"neg_inf"`` (``neg_inf_softmax``: NaN on fully masked rows) or ``"finite"``
            (``finite_masked_softmax``: a large finite fill, uniform weights on fully masked rows).
    """

    def __init__(
        self,
        vocab_size: int,
        d_model: int = 16,
        num_layers: int = 2,
        *,
        causal: bool = False,
        softmax: str = "masked",
    ) -> None:
        super().__init__()
        for value, name in ((vocab_size, "vocab_size"), (d_model, "d_model"), (num_layers, "num_layers")):
            require_int(value, name)
        if softmax not in ("masked", "neg_inf", "finite"):
            raise ValueError(f"softmax must be 'masked', 'neg_inf' or 'finite', got {softmax!r}")
        self.vocab_size, self.causal, self.softmax = vocab_size, causal, softmax
        self.embed = nn.Embedding(vocab_size, d_model)
        self.layers = nn.ModuleList(SelfAttention(d_model, d_model) for _ in range(num_layers))
        self.out = nn.Linear(d_model, vocab_size)

    def _attend(self, layer: SelfAttention, x: torch.Tensor, mask: torch.Tensor | None):
        q, k, v = (t.unsqueeze(1) for t in layer.project(x))  # (B, 1, T, D) each: one head
        if self.softmax == "masked":
            return scaled_dot_product_attention(q, k, v, mask=mask)  # (B, 1, T, D), (B, 1, T, T)
        scores = q @ k.transpose(-2, -1) / math.sqrt(q.shape[-1])  # (B, 1, T, T)
        if self.softmax == "finite":
            weights = finite_masked_softmax(scores, mask)  # (B, 1, T, T); uniform rows where fully masked
        else:
            weights = neg_inf_softmax(scores, mask)  # (B, 1, T, T); NaN rows where fully masked
        return weights @ v, weights  # (B, 1, T, D), (B, 1, T, T)

    def forward(
        self, tokens: torch.Tensor, mask: torch.Tensor | None = None, *, need_weights: bool = False
    ) -> torch.Tensor | tuple[torch.Tensor, list[torch.Tensor]]:
        """Logits ``(B, T, V)`` (and each layer's weights ``(B, 1, T, T)`` if ``need_weights``).

        Args:
            tokens: integer ``(B, T)``.
            mask: optional boolean broadcastable to ``(B, 1, T, T)``; ``True`` = may attend.
        """
        require_tensor(tokens, "tokens")
        if tokens.dim() != 2 or tokens.is_floating_point() or tokens.dtype == torch.bool:
            raise shape_error("tokens", tokens, "(B, T) integer token ids")
        T = tokens.shape[1]
        mask = combine_masks(mask, causal_mask(T, device=tokens.device) if self.causal else None)
        x = self.embed(tokens)  # (B, T, D)
        all_weights = []
        for layer in self.layers:
            a, w = self._attend(layer, x, mask)  # (B, 1, T, D), (B, 1, T, T)
            x = x + a.squeeze(1)  # (B, T, D): residual
            all_weights.append(w)
        logits = self.out(x)  # (B, T, V)
        return (logits, all_weights) if need_weights else logits


# --------------------------------------------------------------------------- perturbation checks


def _output(fn: Callable[[torch.Tensor], object], x: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        out = fn(x)
    return out[0] if isinstance(out, tuple) else out


def _check_x(x: object) -> torch.Tensor:
    require_tensor(x, "x")
    if x.dim() < 2 or x.dtype == torch.bool:
        raise shape_error("x", x, "(B, T) integer tokens or (B, T, ...) floats")
    return x


def perturb(
    x: torch.Tensor,
    where: torch.Tensor,
    *,
    vocab_size: int | None = None,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """A copy of ``x`` with every position where ``where`` is ``True`` changed.

    Integer tokens ``(B, T)`` become a different token (``(x + r) % vocab_size`` with ``r`` in
    ``[1, vocab_size)``); floats ``(B, T, ...)`` get standard-normal noise added.

    Args:
        x: ``(B, T)`` integer tokens or ``(B, T, ...)`` floats.
        where: boolean broadcastable to ``(B, T)``.
        vocab_size: V, required for integer tokens.
    """
    _check_x(x)
    require_tensor(where, "where")
    if where.dtype != torch.bool:
        raise TypeError(f"where must be a boolean tensor, got dtype {where.dtype}")
    B, T = x.shape[:2]
    try:
        where = where.expand(B, T)  # (B, T)
    except RuntimeError:
        raise shape_error("where", where, f"a boolean mask broadcastable to (B, T) = ({B}, {T})") from None
    where = where.to(x.device)
    if x.is_floating_point():
        noise = torch.randn(x.shape, generator=generator, dtype=x.dtype).to(x.device)  # (B, T, ...)
        extra = (1,) * (x.dim() - 2)
        return torch.where(where.reshape(B, T, *extra), x + noise, x)
    if vocab_size is None or vocab_size < 2:
        raise ValueError(f"vocab_size (>= 2) is needed to change integer tokens, got {vocab_size!r}")
    shift = torch.randint(1, vocab_size, (B, T), generator=generator).to(x.device)  # never 0: always changes
    return torch.where(where, (x + shift) % vocab_size, x)


def position_changes(
    fn: Callable[[torch.Tensor], object], x: torch.Tensor, x_other: torch.Tensor
) -> torch.Tensor:
    """Largest absolute change of ``fn``'s output at each position, from ``x`` to ``x_other``.

    ``fn`` maps ``(B, T, ...)`` to ``(B, T, ...)`` (or a tuple whose first entry is that).

    Returns:
        ``(T,)``: entry ``t`` is ``max |fn(x)[:, t] - fn(x_other)[:, t]|`` over batch and features.
    """
    _check_x(x)
    if x_other.shape != x.shape:
        raise shape_error("x_other", x_other, f"{fmt_shape(x.shape)}, the shape of x")
    diff = (_output(fn, x) - _output(fn, x_other)).abs()  # (B, T, ...)
    return diff.transpose(0, 1).reshape(diff.shape[1], -1).amax(dim=1)  # (T,)


def causal_leakage(
    fn: Callable[[torch.Tensor], object],
    x: torch.Tensor,
    t: int,
    *,
    vocab_size: int | None = None,
    generator: torch.Generator | None = None,
) -> float:
    """How much the outputs at positions ``<= t`` move when every input after ``t`` changes.

    A causal model gives 0 (up to rounding): position ``t`` must not see the future.

    Args:
        fn: a model, ``(B, T, ...)`` -> ``(B, T, ...)``.  x: its input.  t: in ``[0, T)``.
        vocab_size: for integer tokens (see ``perturb``).

    Returns:
        ``max |fn(x)[:, :t+1] - fn(x')[:, :t+1]|``, where ``x'`` differs from ``x`` after ``t``.
    """
    _check_x(x)
    T = x.shape[1]
    require_int(t, "t", 0, T - 1)
    future = torch.arange(T) > t  # (T,)
    x_other = perturb(x, future, vocab_size=vocab_size, generator=generator)
    return float(position_changes(fn, x, x_other)[: t + 1].max())


def padding_leakage(
    fn: Callable[[torch.Tensor], object],
    x: torch.Tensor,
    lengths: torch.Tensor | Sequence[int],
    *,
    vocab_size: int | None = None,
    generator: torch.Generator | None = None,
) -> float:
    """How much the outputs at real positions move when the padding's contents change.

    Sequence ``b`` holds ``lengths[b]`` real tokens followed by padding (as ``padding_mask``
    assumes); every padding position of ``x`` is changed and the largest change of ``fn``'s
    output over the real positions is returned. A correctly masked model gives 0.
    """
    _check_x(x)
    B, T = x.shape[:2]
    lengths = torch.as_tensor(lengths)
    if lengths.shape != (B,):
        raise shape_error("lengths", lengths, f"({B},): one length per sequence")
    real = torch.arange(T) < lengths[:, None]  # (B, T)
    x_other = perturb(x, ~real, vocab_size=vocab_size, generator=generator)
    diff = (_output(fn, x) - _output(fn, x_other)).abs()  # (B, T, ...)
    diff = diff.reshape(B, T, -1).amax(dim=-1)  # (B, T)
    return float(diff[real].max()) if real.any() else 0.0


def plot_position_changes(
    changes: Mapping[str, Sequence[float]],
    t: int,
    ax: Axes | None = None,
    *,
    title: str = "Output change at each position when the inputs after t change",
    ylabel: str = "largest |change| of the output",
) -> Axes:
    """Per-position output changes (one marker line per model); positions ``<= t`` are shaded.

    ``changes = {"causal mask": position_changes(...), ...}``; a correctly causal model is 0 in
    the shaded region.
    """
    check_curves(changes, "changes")
    ax = new_axes(ax)
    n = max(len(v) for v in changes.values())
    ax.axvspan(-0.5, t + 0.5, color="0.92", zorder=0, label=f"positions <= t = {t}")
    markers = ["o", "s", "^", "D"]
    for i, (label, values) in enumerate(changes.items()):
        ys = [float(v) for v in values]
        ax.plot(range(len(ys)), ys, marker=markers[i % 4], markersize=5, label=label)
    ax.set_xlim(-0.5, n - 0.5)
    return finish_axes(ax, xlabel="output position", ylabel=ylabel, title=title, integer_x=True, legend_fontsize="small")
