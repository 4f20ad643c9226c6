"""A toy task that needs positions, and a one-layer attention model to try every scheme on.

The task: **is this sequence sorted?** Each example is ``T`` distinct tokens from a vocabulary
of ``V`` ordered symbols; half the examples are sorted (ascending), the other half are the
*same* token sets in a shuffled, unsorted order. A model that cannot see positions sees the
same multiset of tokens for a sorted example and its shuffle, so it must give both the same
answer and gets exactly one of each pair right: 50% accuracy, by construction.

The model (``PositionToyClassifier``): token embedding, optional positional information, one
pre-LayerNorm self-attention layer and one MLP with residuals, mean pooling over positions and
a linear classifier. The position scheme is one of ``POSITION_SCHEMES``:

    "none"         nothing: the model is permutation-invariant
    "sinusoidal"   sinusoidal_encoding added to the token embeddings
    "learned"      LearnedPositionalEmbedding added to the token embeddings
    "rope"         apply_rope on the queries and keys of every head
    "alibi"        alibi_bias added to the scores (symmetric |i - j| form: the model is
                   bidirectional; the causal form with a causal mask when ``is_causal``)

Dimension glossary (see ``attn_course`` for the full one)::

    B  batch size    T  sequence length    D  model width    H  heads    d = D // H    V  vocabulary
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import matplotlib.pyplot as plt
import torch
from matplotlib.axes import Axes
from torch import nn

from attn_course import utils
from attn_course._validation import fmt_shape, require_floating, require_int, require_ndim, require_tensor
from attn_course.attention import context_vector, scaled_dot_product_attention
from attn_course.labs.training import run_steps
from attn_course.masking import causal_mask, masked_softmax
from attn_course.plotting import as_array, check_curves, finish_axes, new_axes
from attn_course.positional import LearnedPositionalEmbedding, alibi_bias, apply_rope, sinusoidal_encoding

__all__ = [
    "POSITION_SCHEMES",
    "make_sorted_task",
    "PositionalSelfAttention",
    "PositionToyClassifier",
    "train_classifier",
    "accuracy",
    "AblationResult",
    "position_ablation",
    "plot_position_matrix",
    "plot_vs_offset",
    "plot_alibi_heads",
    "plot_scheme_accuracy",
]

POSITION_SCHEMES = ("none", "sinusoidal", "learned", "rope", "alibi")


def _check_scheme(position: object) -> str:
    if position not in POSITION_SCHEMES:
        raise ValueError(f"position must be one of {POSITION_SCHEMES}, got {position!r}")
    return position  # type: ignore[return-value]


# --------------------------------------------------------------------------- the task


def make_sorted_task(
    n_pairs: int, seq_len: int, vocab_size: int, generator: torch.Generator | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """``n_pairs`` sorted sequences and the same sequences shuffled out of order.

    Row ``k`` is ``seq_len`` distinct tokens from ``0 .. vocab_size - 1`` in ascending order
    (label 1); row ``n_pairs + k`` holds the same tokens in a random order that is never sorted
    (label 0). The two classes therefore have exactly the same token multisets.

    Returns:
        ``(tokens, labels)``: ``(2 n_pairs, T)`` and ``(2 n_pairs,)``, both ``torch.long``.
    """
    require_int(n_pairs, "n_pairs")
    require_int(seq_len, "seq_len", 2)
    require_int(vocab_size, "vocab_size")
    if seq_len > vocab_size:
        raise ValueError(f"seq_len = {seq_len} distinct tokens need vocab_size >= seq_len, got {vocab_size}")
    # T distinct tokens per row: the first T of a random permutation of the vocabulary.
    ranks = torch.rand(n_pairs, vocab_size, generator=generator).argsort(dim=-1)  # (N, V)
    sorted_rows = ranks[:, :seq_len].sort(dim=-1).values  # (N, T), ascending
    perm = torch.rand(n_pairs, seq_len, generator=generator).argsort(dim=-1)  # (N, T): one permutation per row
    identity = (perm == torch.arange(seq_len)).all(dim=-1)  # (N,): the shuffle left the row sorted
    perm[identity] = perm[identity].roll(1, dims=-1)  # a cyclic shift of a sorted row is not sorted
    shuffled_rows = sorted_rows.gather(-1, perm)  # (N, T)
    tokens = torch.cat([sorted_rows, shuffled_rows])  # (2N, T)
    labels = torch.cat([torch.ones(n_pairs, dtype=torch.long), torch.zeros(n_pairs, dtype=torch.long)])  # (2N,)
    return tokens, labels


# --------------------------------------------------------------------------- the model


class PositionalSelfAttention(nn.Module):
    """Multi-head self-attention with a choice of position scheme inside the attention.

    ``"rope"`` rotates the queries and keys of each head (``apply_rope``); ``"alibi"`` adds
    ``alibi_bias`` to the scores (symmetric, or causal with ``is_causal``); the other schemes
    act on the embeddings, outside this layer, and leave it position-blind.
    A deliberately small layer (one fused ``Linear`` for q, k, v), built on the package's
    ``scaled_dot_product_attention`` (or ``masked_softmax`` + ``context_vector`` when there is
    a bias to add).

    ``forward(x (B, T, D), is_causal=False) -> (output (B, T, D), weights (B, H, T, T))``.
    """

    def __init__(self, dim: int, num_heads: int = 1, position: str = "none", rope_base: float = 10000.0):
        super().__init__()
        require_int(dim, "dim")
        require_int(num_heads, "num_heads")
        if dim % num_heads:
            raise ValueError(f"dim = {dim} must be divisible by num_heads = {num_heads}")
        if _check_scheme(position) == "rope" and (dim // num_heads) % 2:
            raise ValueError(f"RoPE needs an even head width, got dim // num_heads = {dim // num_heads}")
        self.dim, self.num_heads, self.position, self.rope_base = dim, num_heads, position, rope_base
        self.qkv = nn.Linear(dim, 3 * dim)
        self.out = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor, is_causal: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
        require_floating(x, "x")
        require_ndim(x, "x", 3, f"(B, T, {self.dim})")
        if x.dim() != 3 or x.shape[-1] != self.dim:
            raise ValueError(f"x has shape {fmt_shape(x.shape)}; expected (B, T, {self.dim})")
        B, T, D = x.shape
        H, d = self.num_heads, D // self.num_heads
        q, k, v = self.qkv(x).view(B, T, 3, H, d).permute(2, 0, 3, 1, 4)  # (B, T, 3D) -> 3 x (B, H, T, d)
        if self.position == "rope":
            q, k = apply_rope(q, base=self.rope_base), apply_rope(k, base=self.rope_base)  # (B, H, T, d)
        if self.position == "alibi":
            bias = alibi_bias(H, T, symmetric=not is_causal, dtype=x.dtype, device=x.device)  # (H, T, T)
            scores = q @ k.transpose(-2, -1) / math.sqrt(d) + bias  # (B, H, T, T)
            mask = causal_mask(T, device=x.device) if is_causal else None  # (T, T)
            weights = masked_softmax(scores, mask)  # (B, H, T, T)
            heads = context_vector(weights, v)  # (B, H, T, d)
        else:
            heads, weights = scaled_dot_product_attention(q, k, v, is_causal=is_causal)  # (B, H, T, d), (B, H, T, T)
        merged = heads.transpose(1, 2).reshape(B, T, D)  # (B, H, T, d) -> (B, T, H, d) -> (B, T, D)
        return self.out(merged), weights


class PositionToyClassifier(nn.Module):
    """Embed, add positions, one attention layer and one MLP (pre-LayerNorm, residuals), mean-pool, classify.

    Without positions (``position="none"``) every step is permutation-equivariant and the
    mean pooling is permutation-invariant, so the logits do not depend on the token order.

    ``forward(tokens (B, T) long) -> logits (B, num_classes)``; ``T <= max_len``.
    """

    def __init__(
        self,
        vocab_size: int,
        max_len: int,
        position: str = "none",
        *,
        dim: int = 32,
        num_heads: int = 4,
        num_classes: int = 2,
    ):
        super().__init__()
        self.position = _check_scheme(position)
        self.vocab_size = require_int(vocab_size, "vocab_size")
        self.max_len = require_int(max_len, "max_len")
        self.embed = nn.Embedding(vocab_size, dim)
        if position == "sinusoidal":
            self.register_buffer("pe", sinusoidal_encoding(max_len, dim), persistent=False)  # (max_len, D)
        elif position == "learned":
            self.pos = LearnedPositionalEmbedding(max_len, dim)
        self.norm1 = nn.LayerNorm(dim)
        self.attn = PositionalSelfAttention(dim, num_heads, position)
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = nn.Sequential(nn.Linear(dim, 4 * dim), nn.GELU(), nn.Linear(4 * dim, dim))
        self.norm_out = nn.LayerNorm(dim)
        self.head = nn.Linear(dim, require_int(num_classes, "num_classes", 2))

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        require_tensor(tokens, "tokens")
        if tokens.dtype != torch.long or tokens.dim() != 2 or tokens.shape[1] > self.max_len:
            raise ValueError(
                f"tokens has shape {fmt_shape(tokens.shape)} and dtype {tokens.dtype}; "
                f"expected (B, T) torch.long with T <= max_len = {self.max_len}"
            )
        x = self.embed(tokens)  # (B, T, D)
        if self.position == "sinusoidal":
            x = x + self.pe[: tokens.shape[1]]  # (B, T, D) + (T, D)
        elif self.position == "learned":
            x = self.pos(x)  # (B, T, D)
        x = x + self.attn(self.norm1(x))[0]  # (B, T, D)
        x = x + self.mlp(self.norm2(x))  # (B, T, D)
        return self.head(self.norm_out(x.mean(dim=1)))  # (B, T, D) -> (B, D) -> (B, num_classes)


# --------------------------------------------------------------------------- training


def train_classifier(
    model: PositionToyClassifier,
    *,
    steps: int = 400,
    batch_pairs: int = 64,
    seq_len: int = 8,
    lr: float = 3e-3,
    generator: torch.Generator | None = None,
    progress: bool = True,
    desc: str = "training",
) -> list[float]:
    """Train on fresh batches of ``make_sorted_task`` (``2 * batch_pairs`` examples each) with AdamW.

    Returns the cross-entropy loss of every step.
    """
    if not isinstance(model, PositionToyClassifier):
        raise TypeError(f"model must be a PositionToyClassifier, got {type(model).__name__}")
    require_int(steps, "steps")
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.01)
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=lr, total_steps=steps, pct_start=0.1)

    def loss_for_step(i: int) -> torch.Tensor:
        tokens, labels = make_sorted_task(batch_pairs, seq_len, model.vocab_size, generator)  # (2N, T), (2N,)
        return nn.functional.cross_entropy(model(tokens), labels)

    return run_steps(model, loss_for_step, optimizer, schedule, steps, progress=progress, desc=desc)


@torch.no_grad()
def accuracy(model: nn.Module, tokens: torch.Tensor, labels: torch.Tensor) -> float:
    """Fraction of ``tokens (N, T)`` whose arg-max logit equals ``labels (N,)``."""
    was_training = model.training
    model.eval()
    predictions = model(tokens).argmax(dim=-1)  # (N,)
    model.train(was_training)
    return (predictions == labels).float().mean().item()


@dataclass
class AblationResult:
    """What ``position_ablation`` measured: test accuracy, loss curves and the trained models."""

    accuracy: dict[str, float] = field(default_factory=dict)
    losses: dict[str, list[float]] = field(default_factory=dict)
    models: dict[str, PositionToyClassifier] = field(default_factory=dict)


def position_ablation(
    schemes: tuple[str, ...] = POSITION_SCHEMES,
    *,
    seq_len: int = 8,
    vocab_size: int = 32,
    steps: int = 300,
    batch_pairs: int = 64,
    test_pairs: int = 1000,
    seed: int = 0,
    progress: bool = True,
    num_threads: int | None = 1,
    **model_kwargs,
) -> AblationResult:
    """Train one ``PositionToyClassifier`` per scheme on the sorted task; measure test accuracy.

    Every scheme starts from the same seed (same initial token embeddings and training batches
    of ``2 * batch_pairs`` examples) and is tested on the same ``test_pairs`` pairs
    (``2 * test_pairs`` examples, half sorted).
    ``num_threads``: torch's intra-op threads while training (restored afterwards). The tensors
    are tiny, so one thread is fastest, and far faster than several on a busy machine;
    ``None`` leaves the setting alone. ``model_kwargs`` go to ``PositionToyClassifier``.
    """
    for s in schemes:
        _check_scheme(s)
    with utils.num_threads(num_threads, name="num_threads"):
        test_tokens, test_labels = make_sorted_task(
            test_pairs, seq_len, vocab_size, torch.Generator().manual_seed(seed + 1)
        )
        result = AblationResult()
        for scheme in schemes:
            torch.manual_seed(seed)
            model = PositionToyClassifier(vocab_size, seq_len, scheme, **model_kwargs)
            result.losses[scheme] = train_classifier(
                model,
                steps=steps,
                batch_pairs=batch_pairs,
                seq_len=seq_len,
                generator=torch.Generator().manual_seed(seed),
                progress=progress,
                desc=f"{scheme:>10}",
            )
            result.accuracy[scheme] = accuracy(model, test_tokens, test_labels)
            result.models[scheme] = model
        return result


def plot_position_matrix(
    matrix: object,
    ax: Axes | None = None,
    *,
    title: str,
    xlabel: str,
    ylabel: str,
    cbar_label: str = "value",
    centered: bool = True,
    colorbar: bool = True,
) -> Axes:
    """Heatmap of a 2-D array: a ``(T, D)`` encoding table, a ``(T, T)`` score or bias matrix.

    Row 0 is at the top. ``centered`` uses a diverging colour map symmetric around 0 (blue
    negative, red positive); otherwise viridis. NaN cells are left blank (e.g. masked entries).
    """
    import numpy as np

    m = as_array(matrix, "matrix", 2)
    ax = new_axes(ax, figsize=(6.4, 4.8))
    if centered:
        limit = float(np.nanmax(np.abs(m))) if np.isfinite(m).any() else 1.0
        image = ax.imshow(m, cmap="RdBu_r", vmin=-limit, vmax=limit, aspect="auto", interpolation="nearest")
    else:
        image = ax.imshow(m, cmap="viridis", aspect="auto", interpolation="nearest")
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    if colorbar:
        ax.figure.colorbar(image, ax=ax, label=cbar_label, shrink=0.85)
    return ax


def plot_vs_offset(
    offsets: Sequence[float],
    curves: Mapping[str, Sequence[float]],
    ax: Axes | None = None,
    *,
    title: str,
    ylabel: str,
    xlabel: str = "offset n - m (key position minus query position)",
) -> Axes:
    """One line per curve against a position offset; dashes cycle so overlapping curves stay visible."""
    check_curves(curves, "curves")
    ax = new_axes(ax)
    styles = ["-", "--", ":", "-."]
    for i, (label, values) in enumerate(curves.items()):
        ax.plot(list(offsets), list(values), linestyle=styles[i % len(styles)], linewidth=1.5 + (i == 0), label=label)
    ax.axvline(0, color="0.6", linewidth=0.8)
    return finish_axes(ax, xlabel=xlabel, ylabel=ylabel, title=title, legend_fontsize="small")


def plot_alibi_heads(
    bias: object,
    slopes: Sequence[float] | None = None,
    *,
    ncols: int = 4,
    title: str = "ALiBi bias added to the scores, per head",
):
    """One heatmap per head of an ``(H, T, T)`` bias (query ``i`` down, key ``j`` across), one colour scale.

    NaN entries are left blank (e.g. the future keys a causal mask hides). ``slopes`` puts
    each head's slope in its title. Returns the ``(rows, ncols)`` array of axes.
    """
    import numpy as np

    b = as_array(bias, "bias", 3)
    H = b.shape[0]
    if slopes is not None and len(slopes) != H:
        raise ValueError(f"slopes has {len(slopes)} entries; expected H = {H}")
    rows = -(-H // ncols)
    fig, axes = plt.subplots(
        rows, ncols, figsize=(2.6 * ncols + 1, 2.6 * rows + 0.6), squeeze=False, layout="constrained"
    )
    low = float(np.nanmin(b)) if np.isfinite(b).any() else -1.0
    image = None
    for h, ax in enumerate(axes.flat):
        if h >= H:
            ax.axis("off")
            continue
        image = ax.imshow(b[h], cmap="Blues_r", vmin=low, vmax=0.0, interpolation="nearest")
        ax.set_title(f"head {h}" + (f": m = 1/{1 / slopes[h]:.4g}" if slopes is not None else ""), fontsize="small")
        ax.set_xlabel("key j", fontsize="small")
        ax.set_ylabel("query i", fontsize="small")
    fig.colorbar(image, ax=axes, label="bias (added to the score)", shrink=0.8)
    fig.suptitle(title)
    return axes


def plot_scheme_accuracy(
    accuracies: Mapping[str, float],
    ax: Axes | None = None,
    *,
    chance: float | None = None,
    title: str = "Test accuracy by position scheme",
    ylabel: str = "test accuracy",
) -> Axes:
    """A bar per scheme, its accuracy written on top; ``chance`` draws a dashed line."""
    check_curves(accuracies, "accuracies")
    ax = new_axes(ax)
    names, values = list(accuracies), [float(v) for v in accuracies.values()]
    bars = ax.bar(names, values, color=[f"C{i}" for i in range(len(names))])
    ax.bar_label(bars, labels=[f"{v:.1%}" for v in values], padding=2, fontsize="small")
    if chance is not None:
        ax.axhline(chance, color="0.3", linestyle="--", linewidth=1, label="chance")
        ax.legend(loc="upper left")
    ax.set_ylim(0, 1.1)
    ax.set_ylabel(ylabel)
    ax.set_xlabel("position scheme")
    ax.set_title(title)
    ax.grid(alpha=0.3, axis="y")
    return ax
