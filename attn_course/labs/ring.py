"""Chapter 23's experiment: ring attention on CPU processes, and its communication budget.

* ``rank_environment``: run inside a process started by ``attn_course.ring_attention.launch``; returns
  what ``torchrun`` would have set (``RANK``, ``WORLD_SIZE``, ...) and what the process group says.
* ``ring_schedule``: which key/value chunk each rank holds at each step, and whether it computes
  on it (causal: chunks from later ranks are skipped).
* ``step_times`` / ``plot_comm_vs_compute``: per ring step, the time to send one K/V chunk over a
  link vs the time to compute attention on it, as the chunk length grows
  (``attn_course.ring_attention.ring_communication_volume``).
* ``simulate_ring`` / ``draw_ring_step``: the ring run step by step in one process with the
  library's ``block_partial`` and ``merge_partials``: which chunk each rank holds, which chunks it
  has merged, and how far its running output is from the final one (the chapter's slider figure).
* ``causal_pairs_per_rank``: the causal (query, key) pairs each rank computes, with the tokens in
  order or in the "zigzag" layout that balances them.

Dimension glossary: P processes (world size), N sequence length, n = N / P tokens per process,
d head width, H heads.
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from dataclasses import dataclass

import matplotlib.pyplot as plt
import torch
import torch.distributed as dist
from matplotlib.axes import Axes
from matplotlib.figure import Figure
from matplotlib.patches import Circle

from attn_course._validation import require_int
from attn_course.diagrams import INK, MUTED, arrow, label, light
from attn_course.flash import block_partial, check_qkv, merge_partials, naive_attention
from attn_course.masking import causal_mask
from attn_course.plotting import finish_axes
from attn_course.ring_attention import ring_communication_volume

__all__ = [
    "rank_environment",
    "ring_schedule",
    "step_times",
    "plot_comm_vs_compute",
    "RingStep",
    "simulate_ring",
    "draw_ring_step",
    "causal_pairs_per_rank",
]


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


# --------------------------------------------------------------------------- the ring, step by step


@dataclass(frozen=True)
class RingStep:
    """Every rank's situation at the end of one ring step (lists indexed by rank)."""

    step: int
    held: list[int]  # the K/V chunk rank r holds (and attends to) in this step
    computed: list[bool]  # False: causal, and the chunk holds only future keys (skipped)
    merged: list[list[int]]  # the chunks folded into rank r's (m, l, acc) so far
    to_final: list[float]  # max |acc / l - final output| of rank r's queries


def simulate_ring(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, world_size: int,
                  causal: bool = False) -> list[RingStep]:
    """Ring attention's schedule run in this process, step by step, with the library's pieces.

    Rank r holds chunk r of the sequence; in step s it attends its queries to chunk (r - s) mod P
    with ``block_partial`` (the causal mask on its own chunk, chunks of later ranks skipped) and
    folds the result in with ``merge_partials``: what ``ring_attention`` does in each process,
    without the sending. ``q, k, v (B, H, N, d)`` with N divisible by ``world_size``.
    """
    check_qkv(q, k, v)
    P = require_int(world_size, "world_size")
    N = q.shape[2]
    if k.shape[2] != N or N % P:
        raise ValueError(f"q and k have lengths {N} and {k.shape[2]}; expected equal lengths divisible by "
                         f"world_size = {P}")
    n = N // P
    chunk = [slice(r * n, (r + 1) * n) for r in range(P)]
    final = naive_attention(q, k, v, causal=causal)  # (B, H, N, d_v): what every rank must end with
    own_mask = causal_mask(n, device=q.device) if causal else None  # (n, n)
    states: list = [None] * P
    merged: list[list[int]] = [[] for _ in range(P)]
    steps = []
    for s in range(P):
        held = [(r - s) % P for r in range(P)]
        computed = [not causal or held[r] <= r for r in range(P)]
        for r in range(P):
            if not computed[r]:
                continue
            c = held[r]
            part = block_partial(q[:, :, chunk[r]], k[:, :, chunk[c]], v[:, :, chunk[c]],
                                 mask=own_mask if c == r else None)
            states[r] = part if states[r] is None else merge_partials(*states[r], *part)
            merged[r].append(c)
        to_final = []
        for r in range(P):
            _, ell, acc = states[r]
            to_final.append((acc / ell.unsqueeze(-1) - final[:, :, chunk[r]]).abs().max().item())
        steps.append(RingStep(s, held, computed, [list(m) for m in merged], to_final))
    return steps


_CHUNK_COLORS = ["#d9730d", "#1b7837", "#2166ac", "#c51b7d", "#b8860b", "#35978f", "#762a83", "#4d4d4d"]


def draw_ring_step(fig: Figure, steps: Sequence[RingStep], step: int) -> None:
    """One frame of the slider figure: the ring with the K/V chunk each rank holds at ``step``
    (left), and which chunks each rank has merged so far (right)."""
    require_int(step, "step", 0, len(steps) - 1)
    now = steps[step]
    P = len(now.held)
    if P > len(_CHUNK_COLORS):
        raise ValueError(f"draw at most {len(_CHUNK_COLORS)} ranks, got {P}")
    ring_ax, table_ax = fig.subplots(1, 2, width_ratios=[1, 1.15])
    for ax in (ring_ax, table_ax):
        ax.set_aspect("equal")
        ax.set_axis_off()
    # left: the ring
    ring_ax.set_xlim(-2.1, 2.1)
    ring_ax.set_ylim(-2.2, 2.1)
    pos = [(1.35 * math.sin(2 * math.pi * r / P), 1.35 * math.cos(2 * math.pi * r / P)) for r in range(P)]
    for r, (x, y) in enumerate(pos):
        c = now.held[r]
        ring_ax.add_patch(Circle((x, y), 0.55, facecolor=light(_CHUNK_COLORS[c], 0.55 if now.computed[r] else 0.9),
                                 edgecolor=_CHUNK_COLORS[c], lw=2.0, ls="-" if now.computed[r] else "--", zorder=3))
        label(ring_ax, x, y + 0.2, f"rank {r}", size=9, color=INK, zorder=5)
        label(ring_ax, x, y - 0.15, f"holds KV{c}" + ("" if now.computed[r] else "\n(skipped)"), size=8,
              color=INK, zorder=5)
    if step < len(steps) - 1:
        for r in range(P):
            a, b = pos[r], pos[(r + 1) % P]
            dx, dy = b[0] - a[0], b[1] - a[1]
            dist = math.hypot(dx, dy)
            arrow(ring_ax, (a[0] + 0.6 * dx / dist, a[1] + 0.6 * dy / dist),
                  (b[0] - 0.6 * dx / dist, b[1] - 0.6 * dy / dist), MUTED, lw=1.2, rad=-0.25)
    label(ring_ax, 0, 0, "sending on\nto rank + 1" if step < len(steps) - 1 else "last step:\nnothing to send",
          size=8, color=MUTED)
    ring_ax.set_title(f"step {step} of {len(steps) - 1}: rank r holds KV of rank (r - {step}) mod {P}", fontsize=10)
    # right: what each rank has merged
    table_ax.set_xlim(-1.6, P + 0.2)
    table_ax.set_ylim(-1.2, P + 0.9)
    for c in range(P):
        label(table_ax, c + 0.5, P + 0.35, f"KV{c}", size=8.5, color=_CHUNK_COLORS[c])
    for r in range(P):
        y = P - 1 - r
        label(table_ax, -0.8, y + 0.5, f"rank {r}", size=8.5, color=INK)
        for c in range(P):
            done = c in now.merged[r]
            current = c == now.held[r] and now.computed[r]
            table_ax.add_patch(plt.Rectangle((c + 0.05, y + 0.05), 0.9, 0.9,
                                             facecolor=light(_CHUNK_COLORS[c], 0.3 if current else 0.7) if done else "white",
                                             edgecolor=_CHUNK_COLORS[c] if done else "#cccccc", lw=2.0 if current else 0.8))
    worst = max(now.to_final)
    label(table_ax, P / 2 - 0.7, -0.45, "merged into (m, l, acc) so far (dark: this step)", size=8, color=MUTED)
    label(table_ax, P / 2 - 0.7, -0.9, f"largest |acc / l - final output| = {worst:.1e}", size=8.5, color=INK)


def causal_pairs_per_rank(N: int, world_size: int, layout: str = "contiguous") -> list[int]:
    """The causal (query, key) pairs whose query lives on each rank: query i sees i + 1 keys.

    ``layout="contiguous"``: rank r holds tokens ``[r n, (r + 1) n)``. ``"zigzag"``: the sequence
    is cut into 2P chunks and rank r holds chunks r and 2P - 1 - r (an early and a late one).
    """
    N, P = require_int(N, "N"), require_int(world_size, "world_size")
    if layout == "contiguous":
        if N % P:
            raise ValueError(f"N = {N} must be divisible by world_size = {P}")
        n = N // P
        owned = [range(r * n, (r + 1) * n) for r in range(P)]
    elif layout == "zigzag":
        if N % (2 * P):
            raise ValueError(f"N = {N} must be divisible by 2 * world_size = {2 * P} for the zigzag layout")
        c = N // (2 * P)
        owned = [list(range(r * c, (r + 1) * c)) + list(range((2 * P - 1 - r) * c, (2 * P - r) * c)) for r in range(P)]
    else:
        raise ValueError(f"layout must be 'contiguous' or 'zigzag', got {layout!r}")
    return [sum(i + 1 for i in tokens) for tokens in owned]
