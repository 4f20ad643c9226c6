"""Chapter 19's experiments: what a sparse attention pattern costs in quality, on long-range tasks.

Two tasks, both answered far from where the model reads:

* ``SignalTask``: a sequence starts with a ``[CLS]`` token and is otherwise filler, except for
  ONE signal token (one of ``n_signals`` kinds) at a random position. The model must say, at
  ``[CLS]``, which signal it was. A model whose attention reaches ``W - 1`` positions per layer
  (a window of ``W`` keys each way) only finds signals within ``layers * (W - 1)`` of ``[CLS]``.
  One global token at ``[CLS]`` repairs it completely, by construction: in one layer its row
  of the mask is full, so it computes exactly what full attention computes.
* ``PointerTask``: many queries, each needing its OWN far-away key at a random place: a memory
  of random symbols, then pointer tokens that each name a memory slot and must be answered
  with the symbol stored there. Here a few global tokens are a bottleneck: every query's
  answer would have to pass through them.

``SparsePatternClassifier`` (read at ``[CLS]``) and ``SparsePatternTagger`` (read at every
pointer) are small pre-norm Transformer encoders (the library's ``MultiHeadAttention``) whose
every layer uses one fixed boolean mask (``True`` = may attend): a sliding window, a window
plus global tokens (Longformer), or full attention. ``train_pattern`` / ``train_pointer``
train one; ``accuracy_by_position`` / ``pointer_accuracy`` evaluate it by where the answer was.
``time_vs_length`` times dense-with-mask against block-skipping attention by N (``plot_cost``).

Dimension glossary: B batch, T sequence length, D model width, K number of symbol (signal)
kinds, M number of pointer queries.
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
    "PointerTask",
    "SparsePatternTagger",
    "train_pointer",
    "pointer_accuracy",
    "plot_accuracy_by_distance",
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
                 num_heads: int = 2, n_outputs: int | None = None) -> None:
        super().__init__()
        T = task.seq_len
        if mask.dtype != torch.bool or tuple(mask.shape) != (T, T):
            raise ValueError(f"mask must be a boolean ({T}, {T}) tensor, got {mask.dtype} {tuple(mask.shape)}")
        self.register_buffer("mask", mask.clone())
        self.embed = nn.Embedding(task.vocab_size, d_model)
        self.pos = nn.Parameter(torch.randn(T, d_model) * 0.1)
        self.blocks = nn.ModuleList(_Block(d_model, num_heads) for _ in range(num_layers))
        self.norm = nn.LayerNorm(d_model)
        self.readout = nn.Linear(d_model, task.n_signals if n_outputs is None else n_outputs)

    def encode(self, tokens: torch.Tensor) -> torch.Tensor:
        """``(B, T)`` token ids -> ``(B, T, D)`` normalised final states."""
        x = self.embed(tokens) + self.pos  # (B, T, D)
        for block in self.blocks:
            x = block(x, self.mask)
        return self.norm(x)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        """``(B, T)`` token ids -> ``(B, K)`` logits read at ``[CLS]``."""
        return self.readout(self.encode(tokens)[:, 0])  # (B, K)


@dataclass
class PatternRun:
    model: nn.Module  # a SparsePatternClassifier or a SparsePatternTagger
    history: TrainHistory
    accuracy: float  # on fresh sequences


def _train(model: nn.Module, loss_for_batch: Callable[[torch.Generator], torch.Tensor], steps: int, lr: float,
           g: torch.Generator, progress: bool, desc: str) -> TrainHistory:
    """AdamW with a 30-step warm-up and gradient clipping, one thread; ``loss_for_batch(g)`` draws a batch."""
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.0)
    schedule = torch.optim.lr_scheduler.LambdaLR(opt, lambda i: min(1.0, (i + 1) / 30))  # short warm-up
    start = time.perf_counter()
    with num_threads(1):
        losses = run_steps(model, lambda _: loss_for_batch(g), opt, schedule, steps, grad_clip=1.0,
                           progress=progress, desc=desc, postfix_every=25)
    return TrainHistory(losses, time.perf_counter() - start)


def train_pattern(task: SignalTask, mask: torch.Tensor, steps: int = 300, batch_size: int = 64, lr: float = 3e-3,
                  seed: int = 0, eval_size: int = 2000, progress: bool = True, desc: str = "training",
                  **model_kwargs) -> PatternRun:
    """Train a ``SparsePatternClassifier`` with ``mask`` (one thread); accuracy on ``eval_size`` fresh sequences."""
    torch.manual_seed(seed)
    g = torch.Generator().manual_seed(seed)
    model = SparsePatternClassifier(task, mask, **model_kwargs)

    def loss_for_batch(gen: torch.Generator) -> torch.Tensor:
        tokens, labels, _ = task.make_batch(batch_size, gen)
        return nn.functional.cross_entropy(model(tokens), labels)

    history = _train(model, loss_for_batch, steps, lr, g, progress, desc)
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


# --------------------------------------------------------------------------- many far pairs


@dataclass(frozen=True)
class PointerTask:
    """``n_global`` global slots, ``n_memory`` random symbols, then ``n_queries`` pointers.

    Token 0 fills the global slots (the tokens a Longformer mask may make global), tokens
    ``1 .. n_symbols`` are the symbols, tokens ``n_symbols + 1 ..`` the pointers: pointer ``s``
    names memory slot ``s``, and its answer is the symbol stored there. Slots are drawn at
    random, so every query needs its own key, at a distance that changes from sequence to
    sequence. Chance is ``1 / n_symbols``.
    """

    n_memory: int = 16
    n_queries: int = 16  # M
    n_symbols: int = 8  # K
    n_global: int = 1

    def __post_init__(self) -> None:
        require_int(self.n_memory, "PointerTask.n_memory")
        require_int(self.n_queries, "PointerTask.n_queries")
        require_int(self.n_symbols, "PointerTask.n_symbols", 2)  # one symbol is no question
        require_int(self.n_global, "PointerTask.n_global", 0)

    @property
    def seq_len(self) -> int:
        return self.n_global + self.n_memory + self.n_queries

    @property
    def vocab_size(self) -> int:
        return 1 + self.n_symbols + self.n_memory

    @property
    def first_query(self) -> int:
        """Position of the first pointer; the pointers fill the rest of the sequence."""
        return self.n_global + self.n_memory

    def make_batch(self, n: int, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """``(tokens (n, T), targets (n, M), sources (n, M))``: the answer of each pointer and the
        position of the memory slot it names."""
        G, K = self.n_global, self.n_symbols
        symbols = torch.randint(0, K, (n, self.n_memory), generator=generator)  # (n, n_memory)
        slots = torch.randint(0, self.n_memory, (n, self.n_queries), generator=generator)  # (n, M)
        tokens = torch.cat([torch.zeros(n, G, dtype=torch.long), 1 + symbols, 1 + K + slots], dim=1)  # (n, T)
        return tokens, torch.gather(symbols, 1, slots), G + slots


class SparsePatternTagger(SparsePatternClassifier):
    """The same encoder, with its readout at every pointer position: ``(B, T)`` tokens -> ``(B, M, K)`` logits."""

    def __init__(self, task: PointerTask, mask: torch.Tensor, d_model: int = 32, num_layers: int = 2,
                 num_heads: int = 2) -> None:
        super().__init__(task, mask, d_model, num_layers, num_heads, n_outputs=task.n_symbols)
        self.first_query = task.first_query

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        return self.readout(self.encode(tokens)[:, self.first_query:])  # (B, M, K)


def train_pointer(task: PointerTask, mask: torch.Tensor, steps: int = 150, batch_size: int = 32, lr: float = 3e-3,
                  seed: int = 0, eval_size: int = 1000, progress: bool = True, desc: str = "training",
                  **model_kwargs) -> PatternRun:
    """Train a ``SparsePatternTagger`` with ``mask`` (one thread, cross-entropy over every pointer);
    ``accuracy`` over the pointers of ``eval_size`` fresh sequences."""
    torch.manual_seed(seed)
    g = torch.Generator().manual_seed(seed)
    model = SparsePatternTagger(task, mask, **model_kwargs)

    def loss_for_batch(gen: torch.Generator) -> torch.Tensor:
        tokens, targets, _ = task.make_batch(batch_size, gen)
        return nn.functional.cross_entropy(model(tokens).flatten(0, 1), targets.flatten())  # (B * M, K), (B * M,)

    history = _train(model, loss_for_batch, steps, lr, g, progress, desc)
    correct, _ = pointer_accuracy(model, task, eval_size, torch.Generator().manual_seed(seed + 1))
    return PatternRun(model, history, float(correct.float().mean()))


@torch.no_grad()
def pointer_accuracy(model: nn.Module, task: PointerTask, n: int, generator: torch.Generator
                     ) -> tuple[torch.Tensor, torch.Tensor]:
    """``(correct (n, M) bool, distance (n, M))`` on ``n`` fresh sequences: was each pointer
    answered right, and how far back was the slot it names."""
    model.eval()
    tokens, targets, sources = task.make_batch(n, generator)
    query_pos = torch.arange(task.first_query, task.seq_len)  # (M,)
    with num_threads(1):
        correct = model(tokens).argmax(-1) == targets  # (n, M)
    return correct, query_pos - sources


def plot_accuracy_by_distance(
    results: Mapping[str, tuple[torch.Tensor, torch.Tensor]],
    task: PointerTask,
    bucket: int = 4,
    ax: Axes | None = None,
    *,
    reach: int | None = None,
    title: str = "Accuracy by the distance to the slot a pointer names",
) -> Axes:
    """``pointer_accuracy`` results, one line per pattern: accuracy for distances ``[1, 1 + bucket)``,
    ...; a dotted line at ``reach`` (how far a window reaches in the model's layers)."""
    ax = new_axes(ax)
    for n, (name, (correct, distance)) in enumerate(results.items()):
        xs, ys = [], []
        for lo in range(1, task.seq_len, bucket):
            sel = (distance >= lo) & (distance < lo + bucket)
            if sel.any():
                xs.append(lo + (bucket - 1) / 2)
                ys.append(float(correct[sel].float().mean()))
        ax.plot(xs, ys, marker="o", markersize=7 - 2 * (n % 3), linestyle=("-", "--", ":")[n % 3], label=name)
    if reach is not None:
        ax.axvline(reach + 0.5, color="0.3", linestyle=":", label=f"reach of the window ({reach})")
    finish_axes(ax, xlabel="distance from the pointer back to its slot (positions)", ylabel="accuracy",
                title=title, chance=1 / task.n_symbols, ylim=UNIT_YLIM)
    ax.legend(loc="center right")
    return ax


# --------------------------------------------------------------------------- cost


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
    min_seconds: float = 0.1,
) -> list[dict[str, float]]:
    """Time dense-with-mask vs block-skipping attention for each ``N`` in ``lengths``.

    ``mask_fn(N)`` gives the ``(N, N)`` mask (e.g. ``lambda N: sliding_window_mask(N, 64)``); the
    block-sparse version computes only the tiles of ``mask_to_layout(mask, block_size)``.
    Returns one dict per N: ``N``, ``dense_ms``, ``sparse_ms``, ``speedup``, ``density`` (fraction
    of tiles computed), ``max_abs_diff`` (the two outputs agree). Both run with ``threads`` torch
    threads (default 1: the small per-block ops of the sparse loop lose most from threading, and
    timings on a shared machine are steadier); ``None`` keeps the current setting. Each time is
    the best of at least ``repeats`` runs and of ``min_seconds`` of them (short calls are noisy).
    """
    with num_threads(threads, "threads"):
        return _time_vs_length(lengths, mask_fn, block_size, B, H, d, repeats, seed, min_seconds)


def _time_vs_length(lengths, mask_fn, block_size, B, H, d, repeats, seed, min_seconds) -> list[dict[str, float]]:
    rows = []
    g = torch.Generator().manual_seed(seed)
    for N in lengths:
        q, k, v = (torch.randn(B, H, N, d, generator=g) for _ in range(3))
        mask = mask_fn(N)
        layout = mask_to_layout(mask, block_size)
        dense = best_seconds(lambda q=q, k=k, v=v, m=mask: dense_masked_attention(q, k, v, m), repeats,
                             min_seconds=min_seconds)
        sparse = best_seconds(
            lambda q=q, k=k, v=v, m=mask, lay=layout: block_sparse_attention(q, k, v, lay, block_size, m), repeats,
            min_seconds=min_seconds,
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
