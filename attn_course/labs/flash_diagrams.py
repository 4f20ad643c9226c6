"""Diagrams of Part V's second half: the tiles of FlashAttention and the ring of ring attention.

Drawn with matplotlib patches in the style and colours of ``attn_course.diagrams`` (queries
blue, keys orange, values green, attention weights purple, outputs magenta, other states grey).
Each public ``draw_*`` returns its ``Figure``; ``ALT[name]`` is its alt text (the chapters copy it
into the cell metadata) and the figure's label.

Dimension glossary: N sequence length, Bq queries per block, Bk keys per block, d head width,
P number of processes, n = N / P tokens per process.
"""

from __future__ import annotations

import math

from matplotlib.figure import Figure
from matplotlib.patches import Circle, FancyBboxPatch

from attn_course._checks import require_int
from attn_course.diagrams import COLORS, INK, MUTED, arrow, box, canvas, label, light, rect

__all__ = ["ALT", "draw_tiling", "draw_ring"]


ALT = {
    "draw_tiling": (
        "The N by N score matrix cut into tiles: a block of queries Q_i (blue, rows) meets one key "
        "block K_j (orange, columns) at a time; the tile S_ij, its probabilities P_ij and the value "
        "block V_j (green) live in fast memory, and the query block keeps only its running max m, "
        "running sum l and accumulator acc. With the causal mask the tiles above the diagonal are "
        "skipped and only the diagonal tiles are masked."
    ),
    "draw_ring": (
        "P processes in a ring, each holding one chunk of the sequence's queries and its own key/value "
        "chunk. At every step each process attends its queries to the key/value chunk it holds, "
        "merges the partial result into its online softmax, and passes the chunk to the next process; "
        "a table shows which chunk each rank holds at each step."
    ),
}


# The drawing primitives are attn_course.diagrams'; these names keep this module's sizes.
_INK, _MUTED, _light, _box, _rect, _arrow, _label = INK, MUTED, light, box, rect, arrow, label


def _canvas(width: float, height: float, name: str):
    return canvas(width, height, ALT[name])


def draw_tiling(blocks: int = 4, query_block: int = 2, key_block: int = 1, causal: bool = True) -> Figure:
    """The score matrix as ``blocks x blocks`` tiles; query block ``query_block`` is being computed
    and key block ``key_block`` is the current tile. With ``causal``, tiles above the diagonal are
    skipped (hatched) and diagonal tiles are masked."""
    T = require_int(blocks, "blocks")
    i = require_int(query_block, "query_block", minimum=0)
    j = require_int(key_block, "key_block", minimum=0)
    if i >= T or j >= T:
        raise ValueError(f"query_block={i} and key_block={j} must be < blocks={T}")
    if causal and j > i:
        raise ValueError(f"key_block={j} > query_block={i}: with causal=True that tile is skipped, "
                         "pick key_block <= query_block")
    fig, ax = _canvas(10.0, 4.2, "draw_tiling")
    cell = min(0.65, 2.6 / T)
    x0, y0 = 1.2, 0.45  # lower-left corner of the score matrix
    top = y0 + T * cell
    # K^T above the matrix: one column block per key block; Q to the left: one row block per query block
    for c in range(T):
        _rect(ax, x0 + c * cell, top + 0.15, cell, 0.35, COLORS["key"], amount=0.45 if c == j else 0.82,
              lw=1.6 if c == j else 0.8)
        _label(ax, x0 + (c + 0.5) * cell, top + 0.325, f"$K_{c}$", size=9, color=_INK)
    _label(ax, x0 + T * cell / 2, top + 0.72, "key blocks $K_j^\\top$ ($B_k$ keys each)", size=9,
           color=COLORS["key"])
    for r in range(T):
        ry = top - (r + 1) * cell
        _rect(ax, x0 - 0.5, ry, 0.35, cell, COLORS["query"], amount=0.45 if r == i else 0.82,
              lw=1.6 if r == i else 0.8)
        _label(ax, x0 - 0.325, ry + cell / 2, f"$Q_{r}$", size=9, color=_INK)
    _label(ax, x0 - 0.95, top - T * cell / 2, "query\nblocks\n$Q_i$\n($B_q$\nrows)", size=8.5,
           color=COLORS["query"])
    for r in range(T):
        for c in range(T):
            cx, cy = x0 + c * cell, top - (r + 1) * cell
            if causal and c > r:
                _rect(ax, cx, cy, cell, cell, "#bbbbbb", amount=0.9, edge="#cccccc", hatch="///")
            elif r == i and c == j:
                _rect(ax, cx, cy, cell, cell, COLORS["weights"], amount=0.35, lw=2.2)
            elif r == i and c < j:
                _rect(ax, cx, cy, cell, cell, COLORS["weights"], amount=0.75)  # already folded in
            else:
                _rect(ax, cx, cy, cell, cell, COLORS["state"], amount=0.93, edge="#bbbbbb")
            if causal and c == r:  # the diagonal tile: half of it is masked
                ax.plot([cx, cx + cell], [cy + cell, cy], color=COLORS["weights"], lw=0.9, ls="--", zorder=4)
    _label(ax, x0 + T * cell / 2, y0 - 0.22,
           "scores $S = QK^\\top$, " + ("causal: hatched tiles skipped, diagonal tiles masked" if causal
                                       else "every tile visited"), size=8.5)
    # fast memory (SRAM): the tile being processed
    sx = x0 + T * cell + 0.4
    ax.add_patch(FancyBboxPatch((sx, 0.35), 3.0, 3.55, boxstyle="round,pad=0,rounding_size=0.1",
                                facecolor="#f6f6f6", edgecolor="#bbbbbb", lw=1.0, zorder=1))
    _label(ax, sx + 1.5, 3.68, "fast on-chip memory (SRAM)", size=9.5, color=_INK)
    _box(ax, sx + 0.7, 3.1, 1.1, 0.5, f"$Q_{i}$  ($B_q$ × d)", COLORS["query"], size=9)
    _box(ax, sx + 2.3, 3.1, 1.1, 0.5, f"$K_{j}$  ($B_k$ × d)", COLORS["key"], size=9)
    _box(ax, sx + 1.5, 2.2, 2.6, 0.55, f"$S_{{{i}{j}}} = Q_{i}K_{j}^\\top/\\sqrt{{d}}$  ($B_q$ × $B_k$)",
         COLORS["weights"], size=9)
    _arrow(ax, (sx + 0.7, 2.85), (sx + 0.9, 2.48), COLORS["query"])
    _arrow(ax, (sx + 2.3, 2.85), (sx + 2.1, 2.48), COLORS["key"])
    _box(ax, sx + 0.95, 1.25, 1.6, 0.55, f"$P = e^{{S_{{{i}{j}}} - m}}$", COLORS["weights"], size=9.5,
         fill=_light(COLORS["weights"], 0.6))
    _box(ax, sx + 2.4, 1.25, 0.8, 0.5, f"$V_{j}$", COLORS["value"], size=9.5)
    _arrow(ax, (sx + 0.95, 1.92), (sx + 0.95, 1.53), COLORS["weights"])
    _label(ax, sx + 1.5, 0.62, "only this $B_q \\times B_k$ tile is alive:\nextra memory does not grow as $N^2$",
           size=8.5)
    # the running statistics of the query block
    rx = sx + 3.0 + 0.25
    _label(ax, rx + 1.25, 3.68, f"running statistics of $Q_{i}$", size=9.5, color=_INK)
    rows = [("$m$", "running max\n($B_q$)", COLORS["state"]), ("$l$", "running sum\n($B_q$)", COLORS["state"]),
            ("acc", "weighted sum of $V$\n($B_q$ × d)", COLORS["context"])]
    for k, (sym, what, color) in enumerate(rows):
        y = 3.0 - 0.75 * k
        _box(ax, rx + 0.3, y, 0.5, 0.45, sym, color, size=10)
        _label(ax, rx + 0.65, y, what, size=8, ha="left")
    _label(ax, rx + 1.25, 0.95, "per tile: $m' = \\max(m, \\max_j S)$\n$l' = e^{m-m'}l + \\sum P$\n"
           "acc$' = e^{m-m'}$acc $+ PV_j$", size=8.5, color=_INK)
    _label(ax, rx + 1.25, 0.3, "at the end: $O_i$ = acc / $l$", size=8.5, color=COLORS["context"])
    _arrow(ax, (sx + 2.8, 1.25), (rx + 0.05, 1.6), COLORS["context"], lw=1.1, rad=0.2)
    return fig


def draw_ring(world_size: int = 4) -> Figure:
    """``world_size`` processes on a ring; the K/V chunks move one place per step (table of who holds what)."""
    P = require_int(world_size, "world_size", minimum=2)
    if P > 8:
        raise ValueError(f"world_size={P}: draw at most 8 processes")
    fig, ax = _canvas(10.0, 4.6, "draw_ring")
    cx, cy, R = 2.6, 2.2, 1.55
    pos = [(cx + R * math.sin(2 * math.pi * r / P), cy + R * math.cos(2 * math.pi * r / P)) for r in range(P)]
    for r, (x, y) in enumerate(pos):
        ax.add_patch(Circle((x, y), 0.48, facecolor="white", edgecolor=COLORS["state"], lw=1.4, zorder=3))
        _label(ax, x, y + 0.22, f"rank {r}", size=8.5, color=_INK, zorder=5)
        _rect(ax, x - 0.36, y - 0.2, 0.34, 0.26, COLORS["query"], amount=0.55)
        _label(ax, x - 0.19, y - 0.07, f"$Q_{r}$", size=8, color=_INK, zorder=5)
        _rect(ax, x + 0.02, y - 0.2, 0.34, 0.26, COLORS["key"], amount=0.55)
        _label(ax, x + 0.19, y - 0.07, f"$KV_{r}$", size=7, color=_INK, zorder=5)
    for r in range(P):
        a, b = pos[r], pos[(r + 1) % P]
        dx, dy = b[0] - a[0], b[1] - a[1]
        dist = math.hypot(dx, dy)
        ux, uy = dx / dist, dy / dist
        _arrow(ax, (a[0] + 0.52 * ux, a[1] + 0.52 * uy), (b[0] - 0.52 * ux, b[1] - 0.52 * uy), COLORS["key"],
               lw=1.6, rad=-0.25)
    _label(ax, cx, cy, "K/V chunks\nmove to\nrank + 1\nevery step", size=8.5, color=COLORS["key"])
    _label(ax, cx, 4.4, f"P = {P} processes, each holds n = N / P tokens", size=10, color=_INK)
    # table: which chunk rank r holds at step s
    tx, ty, cw, ch = 5.55, 3.6, 0.55, 0.4
    _label(ax, tx + (P + 1) * cw / 2, ty + 0.62, "K/V chunk held by each rank at each step\n"
           "chunk = (rank - step) mod P", size=9, color=_INK)
    _label(ax, tx + cw / 2, ty, "step", size=8.5, color=_INK)
    for r in range(P):
        _label(ax, tx + (r + 1.5) * cw, ty, f"r{r}", size=8.5, color=_INK)
    for s in range(P):
        y = ty - (s + 1) * ch
        _label(ax, tx + cw / 2, y, str(s), size=8.5, color=_INK)
        for r in range(P):
            chunk = (r - s) % P
            _rect(ax, tx + (r + 1) * cw + 0.03, y - ch / 2 + 0.03, cw - 0.06, ch - 0.06,
                  COLORS["key"], amount=0.55 if chunk == r else 0.85)
            _label(ax, tx + (r + 1.5) * cw, y, str(chunk), size=8.5, color=_INK, zorder=5)
    _label(ax, tx + (P + 1) * cw / 2, ty - (P + 1) * ch - 0.1,
           "each step: attend $Q_r$ to the chunk held, merge\n(m, l, acc) with merge_partials, send the chunk on",
           size=8.5, color=_MUTED)
    return fig
