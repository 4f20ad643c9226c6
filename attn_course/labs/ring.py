"""Chapter 23's experiment: ring attention on CPU processes, and its communication budget.

* ``rank_environment``: run inside a process started by ``attn_course.ring_attention.launch``; returns
  what ``torchrun`` would have set (``RANK``, ``WORLD_SIZE``, ...) and what the process group says.
* ``ring_schedule``: which key/value chunk each rank holds at each step, and whether it computes
  on it (causal: chunks from later ranks are skipped).
* ``step_times`` / ``plot_comm_vs_compute``: per ring step, the time to send one K/V chunk over a
  link vs the time to compute attention on it, as the chunk length grows
  (``attn_course.ring_attention.ring_communication_volume``).

Dimension glossary: P processes (world size), N sequence length, n = N / P tokens per process,
d head width, H heads.
"""

from __future__ import annotations

import os
from collections.abc import Sequence

import matplotlib.pyplot as plt
import torch.distributed as dist
from matplotlib.axes import Axes

from attn_course._validation import require_int
from attn_course.plotting import finish_axes
from attn_course.ring_attention import ring_communication_volume

__all__ = ["rank_environment", "ring_schedule", "step_times", "plot_comm_vs_compute"]


def rank_environment() -> dict[str, object]:
    """Inside a launched process: the torchrun-style variables and the process group's view."""
    env = {key: os.environ.get(key) for key in ("MASTER_ADDR", "RANK", "WORLD_SIZE", "LOCAL_RANK")}
    env.update(rank=dist.get_rank(), world_size=dist.get_world_size(), backend=str(dist.get_backend()),
               pid=os.getpid())
    return env


def ring_schedule(world_size: int, causal: bool = False) -> list[list[tuple[int, bool]]]:
    """``schedule[step][rank] = (chunk held, computed?)``: rank r holds chunk (r - step) mod P."""
    P = require_int(world_size, "world_size")
    return [[((r - s) % P, not causal or (r - s) % P <= r) for r in range(P)] for s in range(P)]


def step_times(chunk_lengths: Sequence[int], head_dim: int, heads: int, flops_per_s: float,
               bytes_per_s: float, dtype_bytes: int = 2) -> list[dict[str, float]]:
    """Per ring step and process: seconds to send one K/V chunk, seconds to compute on it.

    One chunk of ``n`` tokens: ``ring_communication_volume(n * P, P, ...)`` for any P gives the
    per-step bytes ``2 H n d * dtype_bytes`` and FLOPs ``4 H n^2 d``.
    """
    rows = []
    for n in chunk_lengths:
        vol = ring_communication_volume(require_int(n, "chunk length") * 2, 2, head_dim, heads, 1, dtype_bytes)
        rows.append({"n": n, "send_s": vol.bytes_per_step / bytes_per_s, "compute_s": vol.flops_per_step / flops_per_s,
                     "flops_per_byte": vol.flops_per_byte})
    return rows


def plot_comm_vs_compute(chunk_lengths: Sequence[int], head_dim: int, heads: int, flops_per_s: float,
                         bandwidths: Sequence[float], dtype_bytes: int = 2, ax: Axes | None = None) -> Axes:
    """Time per step vs chunk length: one compute line, one send line per link bandwidth (bytes/s)."""
    if ax is None:
        _, ax = plt.subplots(figsize=(6.4, 4.0), layout="constrained")
    rows = step_times(chunk_lengths, head_dim, heads, flops_per_s, bandwidths[0], dtype_bytes)
    ax.loglog(chunk_lengths, [1e3 * r["compute_s"] for r in rows], "o-", lw=2.4, base=2,
              label=f"compute ({flops_per_s / 1e12:.0f} TFLOP/s)")
    for bw in bandwidths:
        rows = step_times(chunk_lengths, head_dim, heads, flops_per_s, bw, dtype_bytes)
        ax.loglog(chunk_lengths, [1e3 * r["send_s"] for r in rows], "--", base=2, label=f"send at {bw / 1e9:.0f} GB/s")
    return finish_axes(ax, xlabel="tokens per process n", ylabel="time per ring step (ms)",
                       title=f"One ring step: send a K/V chunk vs attend to it (H={heads}, d={head_dim})")
