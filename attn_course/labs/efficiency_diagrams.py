"""Conceptual diagrams for Part V (efficient attention), in the style of ``attn_course.diagrams``.

Each public ``draw_*`` function returns the ``matplotlib.figure.Figure`` it drew; ``ALT[name]``
is its alt text (the chapters copy it into the cell metadata), also set as the figure's label.
Colours mean what they mean in ``attn_course.diagrams.COLORS``: queries blue, keys orange,
values green, scores and weights purple, other states grey.

The sparse-pattern pictures are drawn from the library's own masks (``attn_course.sparse``),
so a picture cannot disagree with the code it illustrates.
"""

from __future__ import annotations

from functools import partial

import torch
from matplotlib.figure import Figure
from matplotlib.patches import FancyArrowPatch, Rectangle

from attn_course._checks import require_int
from attn_course.diagrams import COLORS, INK, MUTED, arrow, box, canvas, label, light
from attn_course.sparse import (
    bigbird_layout,
    layout_to_mask,
    longformer_mask,
    mask_to_layout,
    sliding_window_mask,
    strided_mask,
)

__all__ = [
    "ALT",
    "draw_quadratic_growth",
    "draw_sparse_patterns",
    "draw_block_skipping",
    "draw_associativity",
    "draw_linear_recurrence",
]

_SKIP = "#eeeeee"  # tiles a block-sparse kernel never computes

ALT = {
    "draw_quadratic_growth": (
        "Two attention computations drawn to scale. With N tokens, Q (N by d) times K transposed (d by N) gives "
        "an N by N score matrix; with 2N tokens, Q and K are twice as long but the score matrix has four times "
        "as many cells: doubling the sequence doubles the inputs and quadruples the scores."
    ),
    "draw_sparse_patterns": (
        "Four 16 by 16 grids of query rows and key columns, a filled cell where the query may attend to the key: "
        "a sliding window (a band around the diagonal), local plus strided (the band plus every fourth diagonal), "
        "Longformer (the band plus a full first row and column for a global token) and BigBird (bands of blocks, "
        "a global block row and column, and a few random blocks)."
    ),
    "draw_block_skipping": (
        "A 16 by 16 sliding-window mask cut into 4 by 4 tiles. Tiles that contain an allowed pair are shaded and "
        "computed; the others are blank and skipped. Beside it, for each query block, the list of key blocks it "
        "needs: at most three, whatever the sequence length."
    ),
    "draw_associativity": (
        "The same product computed in two orders, boxes drawn to scale. Top: phi(Q) times phi(K) transposed gives "
        "an N by N matrix, which then multiplies V. Bottom: phi(K) transposed times V first gives a small D by d_v "
        "matrix, which phi(Q) then multiplies: no N by N matrix is ever formed."
    ),
    "draw_linear_recurrence": (
        "Top: causal linear attention as a recurrence. A fixed-size state S (D by d_v) and z is passed from token "
        "to token; token t adds phi(k_t) transposed times v_t to it and its query reads it. Bottom: softmax "
        "attention's KV cache for the same tokens grows by one key and one value row per token."
    ),
}


def _matrix(ax, x, y, rows, cols, cell, color, text="", *, size=9):
    """A ``rows x cols`` matrix drawn to scale with its lower-left corner at (x, y); returns (w, h)."""
    w, h = cols * cell, rows * cell
    ax.add_patch(Rectangle((x, y), w, h, facecolor=_light(color, 0.6), edgecolor=color, linewidth=1.2, zorder=3))
    if text:
        ax.text(x + w / 2, y + h / 2, text, ha="center", va="center", fontsize=size, color=_INK, zorder=4)
    return w, h


def _mask_grid(ax, x, y, mask: torch.Tensor, cell: float, color: str, *, shade=None, block: int | None = None):
    """Draw a boolean ``(N, N)`` mask with query 0 at the top: filled cells where True.

    ``shade`` (a boolean ``(N, N)``) paints a light background under those cells (computed tiles);
    ``block`` draws the tile boundaries.
    """
    N = mask.shape[0]
    top = y + N * cell
    ax.add_patch(Rectangle((x, y), N * cell, N * cell, facecolor="white", edgecolor=_MUTED, linewidth=0.8, zorder=2))
    for i in range(N):
        for j in range(N):
            if shade is not None and shade[i, j] and not mask[i, j]:
                ax.add_patch(Rectangle((x + j * cell, top - (i + 1) * cell), cell, cell,
                                       facecolor=_light(color, 0.85), edgecolor="none", zorder=2.5))
            if mask[i, j]:
                ax.add_patch(Rectangle((x + j * cell, top - (i + 1) * cell), cell, cell,
                                       facecolor=_light(color, 0.25), edgecolor="white", linewidth=0.4, zorder=3))
    if block:
        for b in range(0, N + 1, block):
            ax.plot([x + b * cell] * 2, [y, top], color=_INK, lw=1.0, zorder=4)
            ax.plot([x, x + N * cell], [top - b * cell] * 2, color=_INK, lw=1.0, zorder=4)


# ---------------------------------------------------------------- chapter 18
# The drawing primitives are attn_course.diagrams'; these names keep this module's sizes.
_INK, _MUTED, _light, _arrow, _label = INK, MUTED, light, arrow, label
_box = partial(box, rounding=0.04)


def _canvas(width: float, height: float, name: str):
    return canvas(width, height, ALT[name])


def draw_quadratic_growth(N: int = 4, d: int = 2) -> Figure:
    """Q, K^T and the score matrix for N and for 2N tokens, to scale."""
    N, d = require_int(N, "N"), require_int(d, "d")
    fig, ax = _canvas(9.0, 3.2, "draw_quadratic_growth")
    cell = 2.2 / (2 * N + d)
    for k, (n, ox) in enumerate(((N, 0.3), (2 * N, 4.6))):
        base = 0.6
        qw, qh = _matrix(ax, ox, base, n, d, cell, COLORS["query"], "$Q$")
        kx = ox + qw + 0.15
        _matrix(ax, kx, base + n * cell + 0.15, d, n, cell, COLORS["key"], "$K^\\top$", size=8)
        sw, sh = _matrix(ax, kx, base, n, n, cell, COLORS["weights"], f"{n * n} scores", size=10)
        label = "N" if k == 0 else "2N"
        _label(ax, ox, 0.25, f"{label} = {n} tokens: Q, K, V have {n} rows\n"
               f"{n} × {n} = {n * n} scores", size=9, color=_INK, ha="left")
    _arrow(ax, (3.05, 1.3), (4.4, 1.3))
    _label(ax, 3.7, 1.6, "× 2 tokens", size=9, color=_INK)
    _label(ax, 3.7, 1.0, "× 4 scores", size=9, color=COLORS["weights"])
    return fig


# ---------------------------------------------------------------- chapter 19
def draw_sparse_patterns(N: int = 16, window: int = 2, stride: int = 4, block: int = 2) -> Figure:
    """Sliding window, local + strided, Longformer and BigBird masks on an N x N grid."""
    N, window, stride, block = (require_int(N, "N"), require_int(window, "window", 0), require_int(stride, "stride"),
                                require_int(block, "block"))
    nb = -(-N // block)
    masks = {
        "sliding window": sliding_window_mask(N, window),
        "local + strided\n(Sparse Transformer)": sliding_window_mask(N, window) | strided_mask(N, stride),
        "Longformer\n(window + global token 0)": longformer_mask(N, window, [0]),
        f"BigBird\n(blocks of {block}: window, global, random)": layout_to_mask(
            bigbird_layout(nb, window_blocks=3, global_blocks=1, random_blocks=1, seed=1), block, N, N),
    }
    fig, ax = _canvas(10.0, 3.4, "draw_sparse_patterns")
    cell = 2.0 / N
    for k, (name, mask) in enumerate(masks.items()):
        x = 0.3 + k * 2.45
        _mask_grid(ax, x, 0.55, mask, cell, COLORS["weights"])
        _label(ax, x + 1.0, 2.95, name, size=9, color=_INK)
        _label(ax, x + 1.0, 0.3, f"{int(mask.sum())} of {N * N} pairs ({mask.float().mean():.0%})", size=8.5)
    _label(ax, 0.15, 1.55, "queries", size=8, rotation=90)
    _label(ax, 1.3, 2.7, "keys →", size=8)
    return fig


def draw_block_skipping(N: int = 16, block: int = 4, window: int = 2) -> Figure:
    """A sliding-window mask in ``block x block`` tiles: computed tiles shaded, skipped tiles blank."""
    N, block, window = require_int(N, "N"), require_int(block, "block"), require_int(window, "window", 0)
    mask = sliding_window_mask(N, window)
    layout = mask_to_layout(mask, block)  # (Lb, Sb)
    shade = layout_to_mask(layout, block, N, N)
    fig, ax = _canvas(8.0, 3.6, "draw_block_skipping")
    cell = 2.8 / N
    _mask_grid(ax, 0.4, 0.35, mask, cell, COLORS["weights"], shade=shade, block=block)
    _label(ax, 0.2, 0.35 + 1.4, "query blocks", size=8, rotation=90)
    _label(ax, 0.4 + 1.4, 3.35, "key blocks", size=8)
    x0 = 3.7
    _label(ax, x0, 3.2, f"computed: {int(layout.sum())} of {layout.numel()} tiles "
           f"({int(mask.sum())} allowed pairs of {N * N})", size=10, color=_INK, ha="left")
    for i in range(layout.shape[0]):
        needed = layout[i].nonzero().flatten().tolist()
        y = 2.65 - i * 0.55
        _box(ax, x0 + 0.55, y, 1.1, 0.4, f"query block {i}", COLORS["query"], size=9)
        _arrow(ax, (x0 + 1.1, y), (x0 + 1.5, y))
        _box(ax, x0 + 2.6, y, 2.1, 0.4, "key blocks " + ", ".join(map(str, needed)), COLORS["key"], size=9)
    _label(ax, x0, 0.2, "shaded tiles are computed (dark: allowed pairs), blank tiles are skipped", size=8.5,
           ha="left")
    return fig


# ---------------------------------------------------------------- chapter 20
def draw_associativity(N: int = 8, D: int = 3, d_v: int = 3) -> Figure:
    """``(phi(Q) phi(K)^T) V`` vs ``phi(Q) (phi(K)^T V)``, every matrix to scale."""
    N, D, d_v = require_int(N, "N"), require_int(D, "D"), require_int(d_v, "d_v")
    fig, ax = _canvas(7.0, 4.7, "draw_associativity")
    c = 1.6 / N
    wcol = COLORS["weights"]

    def row(y, order):
        x = 0.3
        if order == "quadratic":
            _matrix(ax, x, y, N, D, c, COLORS["query"], "$\\phi(Q)$", size=8)
            x += D * c + 0.15
            _matrix(ax, x, y + (N - D) * c, D, N, c, COLORS["key"], "$\\phi(K)^\\top$", size=8)
            x += N * c + 0.25
            _arrow(ax, (x - 0.2, y + N * c / 2), (x, y + N * c / 2))
            _matrix(ax, x, y, N, N, c, wcol, f"{N} × {N}", size=9)
            x += N * c + 0.15
            _matrix(ax, x, y, N, d_v, c, COLORS["value"], "$V$", size=8)
            x += d_v * c + 0.15
            text = "$(\\phi(Q)\\,\\phi(K)^\\top)\\,V$: an N × N matrix, cost ~ $N^2 D$"
        else:
            _matrix(ax, x, y, N, D, c, COLORS["query"], "$\\phi(Q)$", size=8)
            x += D * c + 0.4
            _matrix(ax, x, y + (N - D) * c, D, N, c, COLORS["key"], "$\\phi(K)^\\top$", size=8)
            x += N * c + 0.15
            _matrix(ax, x, y, N, d_v, c, COLORS["value"], "$V$", size=8)
            x += d_v * c + 0.25
            _arrow(ax, (x - 0.2, y + N * c / 2), (x, y + N * c / 2))
            _matrix(ax, x, y + (N - D) * c, D, d_v, c, wcol, "", size=8)
            _label(ax, x + d_v * c / 2, y + (N - D) * c - 0.15, f"{D} × {d_v}", size=8, color=_INK)
            x += d_v * c + 0.15
            text = "$\\phi(Q)\\,(\\phi(K)^\\top V)$: a D × $d_v$ matrix, cost ~ $N D d_v$"
        ax.add_patch(FancyArrowPatch((x, y + N * c / 2), (x + 0.4, y + N * c / 2), arrowstyle="-|>",
                                     mutation_scale=11, color=_INK, shrinkA=0, shrinkB=0))
        _matrix(ax, x + 0.5, y, N, d_v, c, COLORS["context"], "out", size=8)
        _label(ax, 0.3, y + N * c + 0.2, text, size=10, color=_INK, ha="left")

    row(2.5, "quadratic")
    row(0.3, "linear")
    _label(ax, 6.8, 4.5, f"N = {N} tokens, feature width D = {D}, value width $d_v$ = {d_v}", size=9, ha="right")
    return fig


def draw_linear_recurrence(T: int = 4) -> Figure:
    """A fixed-size state passed from token to token (top) vs a KV cache that grows (bottom)."""
    T = require_int(T, "T")
    fig, ax = _canvas(9.5, 4.4, "draw_linear_recurrence")
    step = 8.0 / (T + 1)
    _label(ax, 0.2, 4.15, "linear attention: a state of fixed size D × $d_v$ (plus z, size D)", size=10,
           color=_INK, ha="left")
    for t in range(T + 1):
        x = 0.7 + t * step
        _box(ax, x, 3.1, 0.75, 0.6, f"$S_{t}, z_{t}$", COLORS["state"], size=9.5)
        if t < T:
            _arrow(ax, (x + 0.375, 3.1), (x + step - 0.375, 3.1))
            mid = x + step / 2
            _box(ax, mid, 3.75, 1.05, 0.34, f"$+\\phi(k_{t + 1})^\\top v_{t + 1}$", COLORS["key"], size=8)
            _arrow(ax, (mid, 3.58), (mid, 3.12), COLORS["key"])
            _box(ax, x + step, 2.3, 0.9, 0.36, f"$\\phi(q_{t + 1})\\,\\cdot$", COLORS["query"], size=8.5)
            _arrow(ax, (x + step, 2.8), (x + step, 2.48), COLORS["query"])
            _label(ax, x + step, 2.0, f"$y_{t + 1}$", size=9, color=_INK)
    _label(ax, 0.2, 1.55, "softmax attention: a KV cache that grows by one key and one value per token", size=10,
           color=_INK, ha="left")
    cell = 0.18
    for t in range(1, T + 1):
        x = 0.7 + t * step - 0.3
        for r in range(t):
            ax.add_patch(Rectangle((x, 1.2 - (r + 1) * cell), 0.28, cell * 0.9, facecolor=_light(COLORS["key"], 0.5),
                                   edgecolor=COLORS["key"], linewidth=0.8))
            ax.add_patch(Rectangle((x + 0.32, 1.2 - (r + 1) * cell), 0.28, cell * 0.9,
                                   facecolor=_light(COLORS["value"], 0.5), edgecolor=COLORS["value"], linewidth=0.8))
        _label(ax, x + 0.3, 1.32, f"after token {t}: {t} rows", size=8)
    return fig
