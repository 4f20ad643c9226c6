"""Toy tasks for multi-head attention: where one head is not enough.

**Two-offset copy** (:class:`TwoOffsetCopyTask`): a sequence of random tokens; at every position
``t`` the model must output the token ``a`` steps back *and* the token ``b`` steps back,
``(x[t - a], x[t - b])``, as two separate predictions (slots). The model is
:class:`AttentionOnlyModel`: token + position embeddings, one causal
:class:`~attn_course.multihead.MultiHeadAttention` layer, and a *linear* readout, with no MLP
and no residual, so everything the readout knows comes out of the attention.

Why one head struggles: its output at ``t`` is a single weighted average of value vectors
``sum_j w_tj v_j``. To report two tokens it must spread its weight over both positions, and the
average no longer says which token sat at which offset; a linear readout then cannot route
"the token one step back" to slot 0 and "the token three steps back" to slot 1 (it can only
exploit small content-dependent differences in the weights). Two heads have two softmaxes:
each can look at one offset, and the concatenation keeps the two tokens apart.

* :func:`train_model` trains with Adam on fresh batches; :func:`evaluate` measures accuracy.
* :func:`offset_attention_mass` measures how much weight each head puts on each offset.
* :func:`compare_head_counts` trains one model per head count, same width, same data.

Dimension glossary (see ``attn_course`` for the full one)::

    B  batch size       T  sequence length       V  vocabulary size
    K  number of offsets (output slots)          D  embed_dim          H  number of heads
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from matplotlib.axes import Axes
from torch import nn

from attn_course._validation import require_int, require_tensor, shape_error
from attn_course.labs.training import TrainHistory, run_steps
from attn_course.multihead import MultiHeadAttention
from attn_course.plotting import plot_heatmap_row
from attn_course.utils import num_threads

__all__ = [
    "IGNORE",
    "TwoOffsetCopyTask",
    "AttentionOnlyModel",
    "train_model",
    "ToyAccuracy",
    "evaluate",
    "offset_attention_mass",
    "HeadCountRun",
    "compare_head_counts",
    "plot_head_attention",
]

IGNORE = -100
"""Target at positions with nothing to copy yet (``t < max(offsets)``); ``cross_entropy`` skips it."""


# --------------------------------------------------------------------------- the task


@dataclass(frozen=True)
class TwoOffsetCopyTask:
    """At every position ``t >= max(offsets)``, output ``(x[t - offsets[0]], x[t - offsets[1]], ...)``.

    Tokens are drawn uniformly from ``0 .. vocab_size - 1``, independently, so nothing but the
    tokens at those offsets says anything about the targets: chance is ``1 / vocab_size`` per
    slot and ``1 / vocab_size ** K`` for all ``K`` slots at once.

    Args:
        vocab_size: ``V``.  seq_len: ``T``.
        offsets: distinct positive look-back distances, one output slot each (default two).
    """

    vocab_size: int = 16
    seq_len: int = 12
    offsets: tuple[int, ...] = (1, 3)

    def __post_init__(self) -> None:
        require_int(self.vocab_size, "vocab_size")
        require_int(self.seq_len, "seq_len")
        offsets = tuple(self.offsets)
        if not offsets or len(set(offsets)) != len(offsets):
            raise ValueError(f"offsets must be distinct positive ints, got {self.offsets!r}")
        for o in offsets:
            require_int(o, "each offset")
        if max(offsets) >= self.seq_len:
            raise ValueError(
                f"the largest offset ({max(offsets)}) must be < seq_len ({self.seq_len}): "
                "otherwise no position has anything to copy"
            )
        object.__setattr__(self, "offsets", offsets)

    @property
    def num_slots(self) -> int:
        """``K``, the number of outputs per position."""
        return len(self.offsets)

    @property
    def first_target(self) -> int:
        """The first position with a target, ``max(offsets)``."""
        return max(self.offsets)

    def targets(self, tokens: torch.Tensor) -> torch.Tensor:
        """``tokens (B, T)`` -> targets ``(B, T, K)``: ``targets[b, t, k] = tokens[b, t - offsets[k]]``.

        Positions ``t < max(offsets)`` hold :data:`IGNORE` in every slot.
        """
        require_tensor(tokens, "tokens")
        if tokens.dim() != 2 or tokens.shape[1] != self.seq_len:
            raise shape_error("tokens", tokens, f"(B, {self.seq_len}) = (B, seq_len)")
        B, T = tokens.shape
        m = self.first_target
        targets = torch.full((B, T, self.num_slots), IGNORE, dtype=torch.long, device=tokens.device)
        for k, o in enumerate(self.offsets):
            targets[:, m:, k] = tokens[:, m - o : T - o]  # (B, T - m): position t copies t - o
        return targets

    def make_batch(
        self, batch_size: int, generator: torch.Generator | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """``batch_size`` fresh sequences: ``(tokens (B, T), targets (B, T, K))``."""
        require_int(batch_size, "batch_size")
        tokens = torch.randint(self.vocab_size, (batch_size, self.seq_len), generator=generator)  # (B, T)
        return tokens, self.targets(tokens)


# --------------------------------------------------------------------------- the model


class AttentionOnlyModel(nn.Module):
    """Embeddings, one causal multi-head attention layer, a linear readout: nothing else.

    ``logits = readout(attention(tok_emb(x) + pos_emb))``, reshaped to ``(B, T, K, V)``: one
    distribution over the vocabulary per output slot. Its parameter count does not depend on
    ``num_heads`` (heads split ``embed_dim``, they do not add weights), so models with
    different head counts and the same ``embed_dim`` are the same size.
    """

    def __init__(self, vocab_size: int, seq_len: int, embed_dim: int, num_heads: int, num_slots: int = 2):
        super().__init__()
        self.vocab_size = require_int(vocab_size, "vocab_size")
        self.seq_len = require_int(seq_len, "seq_len")
        self.num_slots = require_int(num_slots, "num_slots")
        self.tok_emb = nn.Embedding(vocab_size, embed_dim)
        self.pos_emb = nn.Embedding(seq_len, embed_dim)  # learned absolute positions
        self.attn = MultiHeadAttention(embed_dim, num_heads)
        self.readout = nn.Linear(embed_dim, num_slots * vocab_size)

    @classmethod
    def for_task(cls, task: TwoOffsetCopyTask, embed_dim: int, num_heads: int) -> AttentionOnlyModel:
        return cls(task.vocab_size, task.seq_len, embed_dim, num_heads, task.num_slots)

    def forward(
        self, tokens: torch.Tensor, need_weights: bool = False
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """``tokens (B, T)`` -> ``(logits (B, T, K, V), weights (B, H, T, T) or None)``."""
        require_tensor(tokens, "tokens")
        if tokens.dim() != 2 or not 1 <= tokens.shape[1] <= self.seq_len:
            raise shape_error("tokens", tokens, f"(B, T) with T <= seq_len = {self.seq_len}")
        T = tokens.shape[1]
        x = self.tok_emb(tokens) + self.pos_emb.weight[:T]  # (B, T, D) + (T, D) -> (B, T, D)
        h, weights = self.attn(x, x, x, is_causal=True, need_weights=need_weights)  # (B, T, D)
        logits = self.readout(h)  # (B, T, K * V)
        return logits.unflatten(-1, (self.num_slots, self.vocab_size)), weights  # (B, T, K, V)


# --------------------------------------------------------------------------- training and evaluation


def _check_model_task(model: object, task: object) -> None:
    if not isinstance(model, AttentionOnlyModel):
        raise TypeError(f"model must be an AttentionOnlyModel, got {type(model).__name__}")
    if not isinstance(task, TwoOffsetCopyTask):
        raise TypeError(f"task must be a TwoOffsetCopyTask, got {type(task).__name__}")
    theirs = (model.vocab_size, model.num_slots)
    if theirs != (task.vocab_size, task.num_slots) or model.seq_len < task.seq_len:
        raise ValueError(
            f"model (vocab_size, num_slots, seq_len) = {(*theirs, model.seq_len)} does not fit the task's "
            f"{(task.vocab_size, task.num_slots, task.seq_len)}"
        )


def train_model(
    model: AttentionOnlyModel,
    task: TwoOffsetCopyTask,
    steps: int,
    *,
    batch_size: int = 128,
    lr: float = 1e-2,
    generator: torch.Generator | None = None,
    progress: bool = True,
    desc: str = "training",
    threads: int | None = 1,
) -> TrainHistory:
    """Adam on fresh batches of ``task``; cross-entropy averaged over slots and target positions.

    The learning rate decays linearly to 10 % of ``lr`` over the run. Pass a seeded
    ``generator`` for repeatable batches. Leaves the model in eval mode.

    ``threads``: torch intra-op threads while training, restored afterwards (``None``: leave
    torch's setting). The tensors are tiny, so one thread is fastest, and it does not slow
    down by an order of magnitude when other processes share the CPU, as several threads do.
    """
    _check_model_task(model, task)
    require_int(steps, "steps")
    if not lr > 0:
        raise ValueError(f"lr must be positive, got {lr!r}")
    optimizer = torch.optim.Adam(model.parameters(), lr=lr)
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda i: 1.0 - 0.9 * i / steps)

    def loss_for_step(i: int) -> torch.Tensor:
        tokens, targets = task.make_batch(batch_size, generator=generator)  # (B, T), (B, T, K)
        logits, _ = model(tokens)  # (B, T, K, V)
        return F.cross_entropy(
            logits.reshape(-1, task.vocab_size),  # (B * T * K, V)
            targets.reshape(-1),  # (B * T * K,)
            ignore_index=IGNORE,
        )

    start = time.perf_counter()
    with num_threads(threads):
        losses = run_steps(
            model, loss_for_step, optimizer, schedule, steps, progress=progress, desc=desc, postfix_every=50
        )
    return TrainHistory(losses=losses, seconds=time.perf_counter() - start)


@dataclass
class ToyAccuracy:
    """What :func:`evaluate` returns (fractions of target positions)."""

    all_slots: float  # every slot right at once
    per_slot: list[float]  # slot k right (the token offsets[k] steps back)


@torch.no_grad()
def evaluate(
    model: AttentionOnlyModel,
    task: TwoOffsetCopyTask,
    n: int = 2000,
    generator: torch.Generator | None = None,
) -> ToyAccuracy:
    """Accuracy of greedy (argmax) predictions on ``n`` fresh sequences, target positions only."""
    _check_model_task(model, task)
    require_int(n, "n")
    was_training = model.training
    model.eval()
    tokens, targets = task.make_batch(n, generator=generator)  # (n, T), (n, T, K)
    logits, _ = model(tokens)  # (n, T, K, V)
    correct = logits.argmax(-1) == targets  # (n, T, K)
    live = targets[..., 0] != IGNORE  # (n, T): positions with something to copy
    model.train(was_training)
    return ToyAccuracy(
        all_slots=correct.all(-1)[live].float().mean().item(),
        per_slot=[correct[..., k][live].float().mean().item() for k in range(task.num_slots)],
    )


def offset_attention_mass(weights: torch.Tensor, offsets: Sequence[int]) -> torch.Tensor:
    """How much attention each head puts on each look-back offset, on average.

    ``mass[h, k]`` is the mean, over the batch and over the query positions
    ``t >= max(offsets)``, of ``weights[b, h, t, t - offsets[k]]``: 1 means head ``h`` always
    looks exactly ``offsets[k]`` steps back.

    Args:
        weights: self-attention weights ``(B, H, T, T)``.
        offsets: the look-back distances, each in ``1 .. T - 1``.

    Returns:
        ``(H, K)`` float tensor.
    """
    require_tensor(weights, "weights")
    if weights.dim() != 4 or weights.shape[-1] != weights.shape[-2]:
        raise shape_error("weights", weights, "(B, H, T, T) (self-attention weights)")
    T = weights.shape[-1]
    offsets = list(offsets)
    if not offsets:
        raise ValueError(f"offsets must be ints in [1, {T - 1}] (T = {T}), got {offsets!r}")
    for i, o in enumerate(offsets):
        require_int(o, f"offsets[{i}]", 1, T - 1)
    t = torch.arange(max(offsets), T, device=weights.device)  # query positions with a target
    return torch.stack(
        [weights[:, :, t, t - o].mean(dim=(0, 2)) for o in offsets],  # (B, H, len(t)) -> (H,)
        dim=-1,
    )  # (H, K)


# --------------------------------------------------------------------------- the ablation


@dataclass
class HeadCountRun:
    """One trained model of :func:`compare_head_counts`."""

    model: AttentionOnlyModel
    history: TrainHistory
    accuracy: ToyAccuracy


def compare_head_counts(
    task: TwoOffsetCopyTask,
    embed_dim: int,
    head_counts: Sequence[int],
    steps: int,
    *,
    seed: int = 0,
    batch_size: int = 128,
    lr: float = 1e-2,
    n_eval: int = 2000,
    progress: bool = True,
) -> dict[int, HeadCountRun]:
    """Train one :class:`AttentionOnlyModel` per head count, all of width ``embed_dim``.

    Every model starts from ``torch.manual_seed(seed)`` and sees the same batches (a generator
    seeded with ``seed``); all are evaluated on the same ``n_eval`` fresh sequences (seed
    ``seed + 1``). Returns ``{num_heads: HeadCountRun}``.
    """
    runs = {}
    for H in head_counts:
        torch.manual_seed(seed)
        model = AttentionOnlyModel.for_task(task, embed_dim, H)
        history = train_model(
            model,
            task,
            steps,
            batch_size=batch_size,
            lr=lr,
            generator=torch.Generator().manual_seed(seed),
            progress=progress,
            desc=f"{H} head{'s' if H > 1 else ''}",
        )
        accuracy = evaluate(model, task, n_eval, generator=torch.Generator().manual_seed(seed + 1))
        runs[H] = HeadCountRun(model, history, accuracy)
    return runs


def plot_head_attention(
    weights: object,
    offsets: Sequence[int] = (),
    axes: Sequence[Axes] | None = None,
    *,
    head_labels: Sequence[str] | None = None,
    suptitle: str | None = None,
):
    """One heatmap per head of self-attention weights ``(H, T, T)``; each look-back offset marked.

    Row ``t`` is the query position, column ``j`` the key position. Each offset ``o`` in
    ``offsets`` is drawn as hollow squares on the cells ``j = t - o`` (one colour per offset), so
    a head that looks ``o`` steps back lights up inside those squares. Drawn with
    ``plot_heatmap_row`` (weights on a 0 to 1 scale); returns its list of axes.
    """
    import numpy as np

    w = np.asarray(weights.detach().cpu() if hasattr(weights, "detach") else weights, dtype=float)
    if w.ndim != 3 or w.shape[1] != w.shape[2]:
        raise ValueError(f"weights has shape {w.shape}; expected (H, T, T) = (heads, queries, keys)")
    H, T = w.shape[0], w.shape[1]
    labels = [f"head {h}" for h in range(H)] if head_labels is None else [str(s) for s in head_labels]
    if len(labels) != H:
        raise ValueError(f"head_labels has {len(labels)} entries; expected one per head ({H})")
    axes = plot_heatmap_row(
        {label: w[h] for h, label in enumerate(labels)},
        axes,
        xlabel="key position j",
        ylabel="query position t",
        vmin=0.0,
        vmax=1.0,
        suptitle=suptitle,
    )
    colours = ["tab:red", "tab:orange", "tab:pink", "tab:cyan"]
    for ax in axes:
        for i, o in enumerate(offsets):
            ts = list(range(int(o), T))
            ax.scatter([t - o for t in ts], ts, marker="s", s=40, facecolors="none",
                       edgecolors=colours[i % len(colours)], linewidths=1.0, label=f"j = t - {o}")
        if len(offsets):
            ax.legend(loc="upper right", fontsize="x-small", framealpha=0.8)
    return axes
