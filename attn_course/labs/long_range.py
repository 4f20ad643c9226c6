"""Chapter 19's experiment: what a sparse attention pattern costs in quality, on a long-range task.

The task (``SignalTask``): a sequence starts with a ``[CLS]`` token and is otherwise filler,
except for ONE signal token (one of ``n_signals`` kinds) at a random position. The model must
say, at ``[CLS]``, which signal it was. The answer may be anywhere in the sequence, so a
model whose attention only reaches ``window`` positions per layer can only find signals that
sit within ``layers * window`` of ``[CLS]``; everywhere else it guesses.

``SparsePatternClassifier`` is a small pre-norm Transformer encoder (the library's
``MultiHeadAttention``) whose every layer uses one fixed boolean mask (``True`` = may attend):
a sliding window, a window plus global tokens (Longformer), or full attention.
``train_pattern`` trains one, ``accuracy_by_position`` evaluates it by where the signal was.
``time_vs_length`` times dense-with-mask against block-skipping attention by N (``plot_cost``).

Dimension glossary: B batch, T sequence length, D model width, K number of signal kinds.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

import torch
from matplotlib.axes import Axes
from torch import nn

from attn_course._validation import require_int
from attn_course.labs.training import TrainHistory, run_steps
from attn_course.multihead import MultiHeadAttention
from attn_course.plotting import UNIT_YLIM, finish_axes, new_axes
from attn_course.sparse import block_sparse_attention, dense_masked_attention, layout_density, mask_to_layout
from attn_course.utils import best_seconds, num_threads

__all__ = [
    "SignalTask",
    "SparsePatternClassifier",
    "PatternRun",
    "train_pattern",
    "accuracy_by_position",
    "plot_accuracy_by_position_buckets",
    "time_vs_length",
    "plot_cost",
    "hops_to_connect",
]


@dataclass(frozen=True)
class SignalTask:
    """Token 0 is ``[CLS]``, tokens ``1 .. n_signals`` are the signals, the rest filler."""

    seq_len: int = 64  # T, [CLS] included
    n_signals: int = 8  # K: the classes (chance = 1 / K)
    n_filler: int = 16  # kinds of filler token

    def __post_init__(self) -> None:
        require_int(self.seq_len, "SignalTask.seq_len", 2)  # [CLS] and at least one more token
        require_int(self.n_signals, "SignalTask.n_signals", 2)  # one class is no classification
        require_int(self.n_filler, "SignalTask.n_filler")

    @property
    def vocab_size(self) -> int:
        return 1 + self.n_signals + self.n_filler

    def make_batch(self, n: int, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """``(tokens (n, T), labels (n,), positions (n,))``: the signal's kind and where it is."""
        T, K = self.seq_len, self.n_signals
        tokens = torch.randint(1 + K, self.vocab_size, (n, T), generator=generator)  # filler everywhere
        tokens[:, 0] = 0  # [CLS]
        labels = torch.randint(0, K, (n,), generator=generator)
        positions = torch.randint(1, T, (n,), generator=generator)
        tokens[torch.arange(n), positions] = 1 + labels  # the one signal
        return tokens, labels, positions


class _Block(nn.Module):
    """Pre-norm: x + attention(norm(x), mask); x + MLP(norm(x))."""

    def __init__(self, d_model: int, num_heads: int) -> None:
        super().__init__()
        self.norm1, self.norm2 = nn.LayerNorm(d_model), nn.LayerNorm(d_model)
        self.attn = MultiHeadAttention(d_model, num_heads)
        self.mlp = nn.Sequential(nn.Linear(d_model, 2 * d_model), nn.GELU(), nn.Linear(2 * d_model, d_model))

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        h = self.norm1(x)
        x = x + self.attn(h, h, h, attn_mask=mask, need_weights=False)[0]  # (B, T, D)
        return x + self.mlp(self.norm2(x))


class SparsePatternClassifier(nn.Module):
    """Embeddings + learned positions, ``num_layers`` blocks sharing one ``(T, T)`` mask, a
    linear readout at position 0 (``[CLS]``)."""

    def __init__(self, task: SignalTask, mask: torch.Tensor, d_model: int = 32, num_layers: int = 2,
                 num_heads: int = 2) -> None:
        super().__init__()
        T = task.seq_len
        if mask.dtype != torch.bool or tuple(mask.shape) != (T, T):
            raise ValueError(f"mask must be a boolean ({T}, {T}) tensor, got {mask.dtype} {tuple(mask.shape)}")
        self.register_buffer("mask", mask.clone())
        self.embed = nn.Embedding(task.vocab_size, d_model)
        self.pos = nn.Parameter(torch.randn(T, d_model) * 0.1)
        self.blocks = nn.ModuleList(_Block(d_model, num_heads) for _ in range(num_layers))
        self.norm = nn.LayerNorm(d_model)
        self.readout = nn.Linear(d_model, task.n_signals)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        """``(B, T)`` token ids -> ``(B, K)`` logits read at ``[CLS]``."""
        x = self.embed(tokens) + self.pos  # (B, T, D)
        for block in self.blocks:
            x = block(x, self.mask)
        return self.readout(self.norm(x[:, 0]))  # (B, K)


@dataclass
class PatternRun:
    model: SparsePatternClassifier
    history: TrainHistory
    accuracy: float  # on fresh sequences


def train_pattern(task: SignalTask, mask: torch.Tensor, steps: int = 300, batch_size: int = 64, lr: float = 3e-3,
                  seed: int = 0, eval_size: int = 2000, progress: bool = True, desc: str = "training",
                  **model_kwargs) -> PatternRun:
    """Train a ``SparsePatternClassifier`` with ``mask`` (one thread); accuracy on ``eval_size`` fresh sequences."""
    torch.manual_seed(seed)
    g = torch.Generator().manual_seed(seed)
    model = SparsePatternClassifier(task, mask, **model_kwargs)
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.0)
    schedule = torch.optim.lr_scheduler.LambdaLR(opt, lambda i: min(1.0, (i + 1) / 30))  # short warm-up

    def loss_for_step(_: int) -> torch.Tensor:
        tokens, labels, _ = task.make_batch(batch_size, g)
        return nn.functional.cross_entropy(model(tokens), labels)

    start = time.perf_counter()
    with num_threads(1):
        losses = run_steps(model, loss_for_step, opt, schedule, steps, grad_clip=1.0, progress=progress, desc=desc,
                           postfix_every=25)
    history = TrainHistory(losses, time.perf_counter() - start)
    correct, _ = accuracy_by_position(model, task, eval_size, torch.Generator().manual_seed(seed + 1))
    return PatternRun(model, history, float(correct.float().mean()))


@torch.no_grad()
def accuracy_by_position(model: nn.Module, task: SignalTask, n: int, generator: torch.Generator
                         ) -> tuple[torch.Tensor, torch.Tensor]:
    """``(correct (n,) bool, positions (n,))`` on ``n`` fresh sequences."""
    model.eval()
    tokens, labels, positions = task.make_batch(n, generator)
    with num_threads(1):
        correct = model(tokens).argmax(-1) == labels
    return correct, positions


def plot_accuracy_by_position_buckets(
    results: Mapping[str, tuple[torch.Tensor, torch.Tensor]],
    task: SignalTask,
    bucket: int = 4,
    ax: Axes | None = None,
    *,
    reach: int | None = None,
    title: str = "Accuracy by the signal's distance from [CLS]",
) -> Axes:
    """One line per pattern: accuracy for signals at positions ``[1, 1 + bucket)``, ...; a dotted
    line at ``reach`` (how far a local model's attention reaches)."""
    ax = new_axes(ax)
    edges = list(range(1, task.seq_len, bucket))
    for n, (name, (correct, positions)) in enumerate(results.items()):
        xs, ys = [], []
        for lo in edges:
            sel = (positions >= lo) & (positions < lo + bucket)
            if sel.any():
                xs.append(lo + (bucket - 1) / 2)
                ys.append(float(correct[sel].float().mean()))
        # equal curves stay visible: each line its own dash pattern and a smaller marker
        ax.plot(xs, ys, marker="o", markersize=7 - 2 * (n % 3), linestyle=("-", "--", ":")[n % 3], label=name)
    if reach is not None:
        ax.axvline(reach + 0.5, color="0.3", linestyle=":", label=f"reach of the window ({reach})")
    finish_axes(ax, xlabel="position of the signal (distance from [CLS])", ylabel="accuracy", title=title,
                chance=1 / task.n_signals, ylim=UNIT_YLIM)
    ax.legend(loc="center right")
    return ax


def time_vs_length(
    lengths: Sequence[int],
    mask_fn: Callable[[int], torch.Tensor],
    block_size: int = 64,
    B: int = 1,
    H: int = 4,
    d: int = 32,
    repeats: int = 3,
    seed: int = 0,
    threads: int | None = 1,
) -> list[dict[str, float]]:
    """Time dense-with-mask vs block-skipping attention for each ``N`` in ``lengths``.

    ``mask_fn(N)`` gives the ``(N, N)`` mask (e.g. ``lambda N: sliding_window_mask(N, 64)``); the
    block-sparse version computes only the tiles of ``mask_to_layout(mask, block_size)``.
    Returns one dict per N: ``N``, ``dense_ms``, ``sparse_ms``, ``speedup``, ``density`` (fraction
    of tiles computed), ``max_abs_diff`` (the two outputs agree). Both run with ``threads`` torch
    threads (default 1: the small per-block ops of the sparse loop lose most from threading, and
    timings on a shared machine are steadier); ``None`` keeps the current setting.
    """
    with num_threads(threads, "threads"):
        return _time_vs_length(lengths, mask_fn, block_size, B, H, d, repeats, seed)


def _time_vs_length(lengths, mask_fn, block_size, B, H, d, repeats, seed) -> list[dict[str, float]]:
    rows = []
    g = torch.Generator().manual_seed(seed)
    for N in lengths:
        q, k, v = (torch.randn(B, H, N, d, generator=g) for _ in range(3))
        mask = mask_fn(N)
        layout = mask_to_layout(mask, block_size)
        dense = best_seconds(lambda q=q, k=k, v=v, m=mask: dense_masked_attention(q, k, v, m), repeats)
        sparse = best_seconds(
            lambda q=q, k=k, v=v, m=mask, lay=layout: block_sparse_attention(q, k, v, lay, block_size, m), repeats
        )
        diff = (dense_masked_attention(q, k, v, mask) - block_sparse_attention(q, k, v, layout, block_size, mask))
        rows.append(dict(N=N, dense_ms=dense * 1e3, sparse_ms=sparse * 1e3, speedup=dense / sparse,
                         density=layout_density(layout), max_abs_diff=diff.abs().max().item()))
    return rows


def plot_cost(rows: Sequence[dict], ax: Axes | None = None, *, title: str) -> Axes:
    """``time_vs_length`` rows: dense-with-mask and block-skipping time against N, log-log."""
    ax = new_axes(ax)
    Ns = [r["N"] for r in rows]
    ax.plot(Ns, [r["dense_ms"] for r in rows], marker="o", label="dense scores + mask")
    ax.plot(Ns, [r["sparse_ms"] for r in rows], marker="s", label="block-sparse (skips tiles)")
    ax.set_xscale("log", base=2)
    ax.set_yscale("log")
    return finish_axes(ax, xlabel="sequence length N (log scale)", ylabel="time per call, ms (log scale)",
                       title=title, grid_which="both")


def hops_to_connect(mask: torch.Tensor, max_hops: int = 1024) -> int:
    """The fewest attention layers after which every query has (indirectly) seen every key.

    One layer moves information along the allowed pairs of ``mask`` (``(N, N)``, True = may
    attend; the diagonal is added: a residual connection keeps each position's own value).
    Returns the smallest ``L`` with ``mask^L`` all True (boolean matrix power), or ``-1`` if
    ``max_hops`` layers do not suffice (some key is never reached).
    """
    if mask.dtype != torch.bool or mask.dim() != 2 or mask.shape[0] != mask.shape[1]:
        raise ValueError(f"mask must be a square boolean (N, N) tensor, got {mask.dtype} {tuple(mask.shape)}")
    step = (mask | torch.eye(mask.shape[0], dtype=torch.bool)).float()  # (N, N)
    reach = step.clone()
    for hops in range(1, max_hops + 1):
        if bool((reach > 0).all()):
            return hops
        reach = ((reach @ step) > 0).float()  # (N, N): reachable in one more layer
    return -1
