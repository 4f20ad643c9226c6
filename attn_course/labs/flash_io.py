"""Chapter 21's experiment: what tiling saves, in memory and in slow-memory traffic.

* ``peak_extra_bytes``: the largest amount of memory NumPy allocates while an attention
  function runs, beyond its inputs (measured with ``tracemalloc``, which sees NumPy's buffers).
  The naive forward holds the ``(B, H, N, N)`` scores; the tiled one only a ``(Bq, Bk)`` tile per
  head, the running statistics and the output.
* ``traffic_table`` / ``plot_memory_traffic``: the reads and writes of slow memory (HBM) of
  naive vs tiled attention, from ``attn_course.flash.memory_traffic`` (Dao et al. 2022, Thm 2),
  as a function of N, head_dim d and the size M of fast memory (SRAM).

Dimension glossary: B batch, H heads, N sequence length, d head width, M SRAM size.
"""

from __future__ import annotations

import tracemalloc
from collections.abc import Callable, Sequence

import matplotlib.pyplot as plt
import numpy as np
from matplotlib.figure import Figure

from attn_course._validation import require_int
from attn_course.flash import memory_traffic, tiled_attention_numpy
from attn_course.plotting import finish_axes

__all__ = [
    "naive_attention_numpy",
    "peak_extra_bytes",
    "memory_by_length",
    "plot_memory_by_length",
    "traffic_table",
    "plot_memory_traffic",
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
