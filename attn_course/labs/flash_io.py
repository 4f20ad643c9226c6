"""Chapter 21's experiment: what tiling saves, in memory and in slow-memory traffic.

* ``peak_extra_bytes``: the largest amount of memory NumPy allocates while an attention
  function runs, beyond its inputs (measured with ``tracemalloc``, which sees NumPy's buffers).
  The naive forward holds the ``(B, H, N, N)`` scores; the tiled one only a ``(Bq, Bk)`` tile per
  head, the running statistics and the output.
* ``traffic_table`` / ``plot_memory_traffic``: the reads and writes of slow memory (HBM) of
  naive vs tiled attention, from ``attn_course.flash.memory_traffic`` (Dao et al. 2022, Thm 2),
  as a function of N, head_dim d and the size M of fast memory (SRAM).
* ``query_outer_traffic``: the same count for FlashAttention-2's loop order (each query block
  read once, K and V streamed past it).
* ``online_softmax_trace`` / ``draw_online_softmax_step``: the running max, running sum and
  rescaling factor of the online softmax after each block (the chapter's slider figure).
* ``tiled_work``: the tiles ``attn_course.flash.tiled_attention`` computes, the block maxima it
  looks for and the blocks its lazy rescaling redoes, counted from the torch calls it makes.
* ``GPUMemory`` / ``H100_SXM``: the memory levels of one GPU, as NVIDIA states them.

Dimension glossary: B batch, H heads, N sequence length, d head width, M SRAM size,
Bq queries per block, Bk keys per block.
"""

from __future__ import annotations

import collections
import math
import tracemalloc
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import matplotlib.pyplot as plt
import numpy as np
import torch
from matplotlib.figure import Figure
from torch.overrides import TorchFunctionMode

from attn_course._validation import require_floating, require_int, shape_error
from attn_course.diagrams import COLORS, light
from attn_course.flash import (
    memory_traffic,
    online_softmax_stats_update,
    tiled_attention,
    tiled_attention_numpy,
)
from attn_course.plotting import finish_axes

__all__ = [
    "naive_attention_numpy",
    "peak_extra_bytes",
    "memory_by_length",
    "plot_memory_by_length",
    "traffic_table",
    "plot_memory_traffic",
    "query_outer_traffic",
    "OnlineSoftmaxStep",
    "online_softmax_trace",
    "draw_online_softmax_step",
    "tiled_work",
    "GPUMemory",
    "H100_SXM",
]


def naive_attention_numpy(q: np.ndarray, k: np.ndarray, v: np.ndarray, causal: bool = False) -> np.ndarray:
    """``softmax(q k^T / sqrt(d)) v`` in NumPy with the whole ``(B, H, L, S)`` score matrix."""
    s = q @ np.swapaxes(k, -1, -2) / np.sqrt(q.shape[-1]).astype(q.dtype)  # (B, H, L, S)
    if causal:
        s = np.where(np.triu(np.ones(s.shape[-2:], dtype=bool), 1), -np.inf, s)
    p = np.exp(s - s.max(axis=-1, keepdims=True))
    return (p / p.sum(axis=-1, keepdims=True)) @ v  # (B, H, L, d_v)


def peak_extra_bytes(fn: Callable[[], np.ndarray]) -> int:
    """Peak bytes NumPy allocated while ``fn()`` ran (its output included, its inputs not)."""
    tracemalloc.start()
    try:
        tracemalloc.reset_peak()
        fn()
        return tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


def memory_by_length(lengths: Sequence[int], head_dim: int = 32, block_size: int = 64,
                     heads: int = 1, seed: int = 0) -> dict[str, list[int]]:
    """Peak extra bytes of the naive and the tiled NumPy forward (float32) at each length N.

    Returns ``{"N": [...], "naive": [...], "tiled": [...], "output": [...]}`` (bytes).
    """
    d = require_int(head_dim, "head_dim")
    rng = np.random.default_rng(seed)
    out: dict[str, list[int]] = {"N": [], "naive": [], "tiled": [], "output": []}
    for N in lengths:
        N = require_int(N, "N")
        q, k, v = (rng.standard_normal((1, heads, N, d), dtype=np.float32) for _ in range(3))
        out["N"].append(N)
        out["naive"].append(peak_extra_bytes(lambda q=q, k=k, v=v: naive_attention_numpy(q, k, v)))
        out["tiled"].append(peak_extra_bytes(lambda q=q, k=k, v=v: tiled_attention_numpy(q, k, v, block_size=block_size)))
        out["output"].append(q.nbytes)  # the output has the shape of q
    return out


def plot_memory_by_length(mem: dict[str, list[int]], ax=None):
    """Peak extra memory (MiB) vs N, log-log, naive vs tiled."""
    if ax is None:
        _, ax = plt.subplots(figsize=(6.4, 4.0), layout="constrained")
    for key, style in (("naive", "o-"), ("tiled", "s-"), ("output", ":")):
        label = {"naive": "naive (N × N scores)", "tiled": "tiled (one tile + statistics)",
                 "output": "the output itself"}[key]
        ax.loglog(mem["N"], np.array(mem[key]) / 2**20, style, label=label, base=2)
    return finish_axes(ax, xlabel="sequence length N", ylabel="peak extra memory (MiB)",
                       title="Memory of one attention forward (NumPy, float32, measured)")


def traffic_table(lengths: Sequence[int], head_dims: Sequence[int], sram_bytes: int,
                  dtype_bytes: int = 2) -> list[dict[str, float]]:
    """One row per (d, N): slow-memory traffic in MB of naive and tiled attention and their ratio."""
    rows = []
    for d in head_dims:
        for N in lengths:
            t = memory_traffic(N, d, sram_bytes, dtype_bytes)
            rows.append({"d": d, "N": N, "naive_MB": t.naive_bytes / 1e6, "flash_MB": t.flash_bytes / 1e6,
                         "ratio": t.ratio, "B_c": t.block_cols})
    return rows


def plot_memory_traffic(lengths: Sequence[int], head_dims: Sequence[int], sram_sizes: Sequence[int],
                        sram_bytes: int = 192 * 1024, N_fixed: int = 4096, dtype_bytes: int = 2) -> Figure:
    """Left: traffic vs N (per head, with ``sram_bytes``). Right: the ratio naive / tiled vs SRAM size."""
    fig, (a, b) = plt.subplots(1, 2, figsize=(10, 4), layout="constrained")
    M0 = sram_bytes
    for d in head_dims:
        naive = [memory_traffic(N, d, M0, dtype_bytes).naive_bytes / 1e6 for N in lengths]
        flash = [memory_traffic(N, d, M0, dtype_bytes).flash_bytes / 1e6 for N in lengths]
        line, = a.loglog(lengths, naive, "o-", base=2, label=f"naive, d = {d}")
        a.loglog(lengths, flash, "s--", base=2, color=line.get_color(), label=f"tiled, d = {d}")
    finish_axes(a, xlabel="sequence length N", ylabel="HBM reads + writes (MB, one head)",
                title=f"Traffic vs N (SRAM {M0 // 1024} KiB, {8 * dtype_bytes}-bit)")
    for d in head_dims:
        ratios = [memory_traffic(N_fixed, d, M, dtype_bytes).ratio for M in sram_sizes]
        b.semilogx([M // 1024 for M in sram_sizes], ratios, "o-", base=2, label=f"d = {d}")
    b.set_xticks([M // 1024 for M in sram_sizes], [str(M // 1024) for M in sram_sizes])
    b.axhline(1.0, color="grey", ls=":", lw=1)
    finish_axes(b, xlabel="SRAM size (KiB)", ylabel="naive / tiled traffic",
                title=f"How many times less traffic (N = {N_fixed})")
    return fig


def query_outer_traffic(N: int, head_dim: int, block_q: int, batch_heads: int = 1) -> int:
    """Slow-memory reads + writes (elements) of tiled attention in FlashAttention-2's loop order.

    Each block of ``block_q`` queries is read once and its output written once (``2 N d`` in all:
    the query block and its accumulator stay on chip), and all of K and V stream past every query
    block: ``ceil(N / Bq) * 2 N d``. Compare ``memory_traffic``, which counts the paper's
    Algorithm 1 (keys outside, so Q and O go back and forth once per key block).
    """
    for value, name in ((N, "N"), (head_dim, "head_dim"), (block_q, "block_q"), (batch_heads, "batch_heads")):
        require_int(value, name)
    qo = 2 * N * head_dim  # read Q once, write O once
    kv = math.ceil(N / block_q) * 2 * N * head_dim  # K and V once per query block
    return (qo + kv) * batch_heads


# --------------------------------------------------------------------------- the online softmax, step by step


@dataclass(frozen=True)
class OnlineSoftmaxStep:
    """The online softmax's state after folding in one block of a row."""

    block: int  # 0, 1, ...
    start: int  # the block is x[start:stop]
    stop: int
    block_max: float  # the largest value in this block
    m: float  # running max after this block
    ell: float  # l, the running sum of exp(x_j - m) over x[:stop]
    alpha: float  # exp(m_before - m): the factor the old sum was multiplied by (0 for the first block)


def online_softmax_trace(x: torch.Tensor, block_size: int) -> list[OnlineSoftmaxStep]:
    """Run ``attn_course.flash.online_softmax_stats_update`` over a 1-D row ``x (n,)`` in blocks and
    record ``m``, ``l`` and the rescaling factor after each block."""
    require_floating(x, "x")
    if x.dim() != 1:
        raise shape_error("x", x, "(n,): one row of scores")
    require_int(block_size, "block_size")
    m, ell = torch.tensor(float("-inf"), dtype=x.dtype), torch.tensor(0.0, dtype=x.dtype)
    steps = []
    for b, start in enumerate(range(0, x.shape[0], block_size)):
        block = x[start : start + block_size]
        m_new, ell = online_softmax_stats_update(m, ell, block)
        alpha = float(torch.exp(m - m_new))  # exp(-inf) = 0 on the first block
        m = m_new
        steps.append(OnlineSoftmaxStep(b, start, start + block.shape[0], float(block.max()), float(m), float(ell), alpha))
    return steps


def draw_online_softmax_step(fig: Figure, x: torch.Tensor, trace: Sequence[OnlineSoftmaxStep], step: int) -> None:
    """One frame of the slider figure: the scores seen so far with the running max (top), and
    ``exp(x_j - m)`` of the seen scores, whose sum is ``l`` (bottom); the previous frame's bars
    are drawn as outlines, so the rescaling by ``alpha`` shows when the max rises."""
    require_int(step, "step", 0, len(trace) - 1)
    xs = x.tolist()
    now = trace[step]
    top, bottom = fig.subplots(2, 1, sharex=True, height_ratios=[3, 2])
    purple = COLORS["weights"]
    for j, value in enumerate(xs):
        if j < now.start:  # seen in an earlier block
            top.bar(j, value, color=light(purple, 0.55), edgecolor=purple)
        elif j < now.stop:  # this block
            top.bar(j, value, color=purple, edgecolor=purple)
        else:  # not seen yet
            top.bar(j, value, color="white", edgecolor="#bbbbbb", linestyle="--")
    top.axhline(now.m, color=COLORS["context"], lw=1.6, ls="--", label=f"running max m = {now.m:g}")
    top.axvspan(now.start - 0.5, now.stop - 0.5, color=light(purple, 0.9), zorder=0)
    finish_axes(top, xlabel="", ylabel="score $x_j$",
                title=f"after block {step + 1} of {len(trace)}: m = {now.m:g}, $\\ell$ = {now.ell:.3f}, "
                      f"rescaled by $\\alpha$ = {now.alpha:.3f}")
    top.set_ylim(min(0.0, min(xs)) - 0.5, max(xs) + 1.5)
    if step > 0:  # the previous frame's terms, measured against the old max
        before = trace[step - 1]
        bottom.bar(range(before.stop), [math.exp(v - before.m) for v in xs[: before.stop]], color="none",
                   edgecolor="#999999", linestyle=":", label="before this block")
    terms = [math.exp(v - now.m) for v in xs[: now.stop]]
    bottom.bar(range(now.stop), terms, color=[light(purple, 0.55)] * now.start + [purple] * (now.stop - now.start),
               edgecolor=purple, label="$e^{x_j - m}$ now (their sum is $\\ell$)")
    bottom.set_xlim(-0.6, len(xs) - 0.4)
    bottom.set_xticks(range(len(xs)))
    finish_axes(bottom, xlabel="position j in the row", ylabel="$e^{x_j - m}$", title="", ylim=(0, 1.25))


# --------------------------------------------------------------------------- counting tiled_attention's work


class _CallCounter(TorchFunctionMode):
    """Counts the torch functions and tensor methods called inside the ``with`` block, by name."""

    def __init__(self) -> None:
        super().__init__()
        self.calls: collections.Counter[str] = collections.Counter()

    def __torch_function__(self, func, types, args=(), kwargs=None):
        self.calls[getattr(func, "__name__", str(func))] += 1
        return func(*args, **(kwargs or {}))


def tiled_work(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, causal: bool = False,
               block_size: int | tuple[int, int] = 64) -> dict[str, object]:
    """Run ``tiled_attention`` (one thread) and count, from the torch calls it makes, what it did.

    The loop of ``flash._tiled_rows`` computes one ``bmm`` (first key block of a query block) or one
    ``baddbmm_`` (later blocks) per score tile it folds in; every tile's scores come from one
    ``torch.baddbmm``, and a tile redone by the lazy rescaling calls ``torch.baddbmm`` a second
    time; ``amax`` (a block's own row max) is called on the first tile of each query block and on
    each redone tile only; ``masked_fill_`` once per tile that crosses the causal diagonal (twice
    if it is redone). Returns the output and ``{"tiles", "redone", "block_maxima", "masked"}``.
    """
    counter = _CallCounter()
    with counter:
        out = tiled_attention(q, k, v, causal=causal, block_size=block_size, threads=1)
    c = counter.calls
    tiles = c["bmm"] + c["baddbmm_"]
    return {"out": out, "tiles": tiles, "redone": c["baddbmm"] - tiles, "block_maxima": c["amax"],
            "masked": c["masked_fill_"]}


# --------------------------------------------------------------------------- the memory of a GPU


@dataclass(frozen=True)
class GPUMemory:
    """The memory levels of one GPU, in bytes (as the vendor states them), fastest first."""

    name: str
    sms: int  # streaming multiprocessors
    registers_per_sm: int  # register file of one SM
    shared_per_sm: int  # the most shared memory (on-chip SRAM) one SM can give its blocks
    l2_bytes: int  # on-chip cache shared by all SMs
    hbm_bytes: int  # off-chip high-bandwidth memory
    hbm_bytes_per_s: float
    source: str

    @property
    def shared_total(self) -> int:
        """The shared memory of all SMs together."""
        return self.sms * self.shared_per_sm


_KIB, _MIB = 1024, 1024**2  # NVIDIA's KB and MB of on-chip memory are binary; its "80 GB" of HBM is decimal

# NVIDIA H100 Tensor Core GPU Architecture whitepaper (2022): 132 SMs on the SXM5 board, a 256 KB
# register file and up to 228 KB of shared memory per SM, 50 MB of L2; H100 datasheet: 80 GB of
# HBM3 at 3.35 TB/s (H100 SXM).
H100_SXM = GPUMemory("NVIDIA H100 SXM5", sms=132, registers_per_sm=256 * _KIB, shared_per_sm=228 * _KIB,
                     l2_bytes=50 * _MIB, hbm_bytes=80 * 10**9, hbm_bytes_per_s=3.35e12,
                     source="NVIDIA H100 whitepaper (SMs, registers, shared memory, L2) and datasheet (HBM3)")
