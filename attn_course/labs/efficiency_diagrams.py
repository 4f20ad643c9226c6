"""Part V's conceptual diagrams (chapters 18-23), drawn with the kit of ``attn_course.diagrams``:
quadratic growth, sparse patterns, block skipping, linear attention, a GPU's memory hierarchy,
FlashAttention's tiles, the GPU that runs them and the ring of ring attention.

Each public ``draw_*`` function returns the ``matplotlib.figure.Figure`` it drew; ``ALT[name]``
is its alt text (the chapters copy it into the cell metadata), also set as the figure's label.
Colours mean what they mean in ``attn_course.diagrams.COLORS``: queries blue, keys orange,
values green, scores and weights purple, outputs magenta, other states grey.

Dimension glossary: N sequence length, Bq queries per block, Bk keys per block, d head width,
P number of processes, n = N / P tokens per process.

The sparse-pattern pictures are drawn from the library's own masks (``attn_course.sparse``),
so a picture cannot disagree with the code it illustrates.
"""

from __future__ import annotations

import math

import torch
from matplotlib.figure import Figure
from matplotlib.patches import Circle, FancyArrowPatch, FancyBboxPatch, Rectangle

from attn_course._validation import require_int
from attn_course.diagrams import COLORS, INK, MUTED, arrow, box, canvas, label, light, rect
from attn_course.labs.flash_io import H100_SXM, GPUMemory
from attn_course.linear import linear_attention_weights
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
    "draw_tiling",
    "draw_ring",
    "draw_memory_hierarchy",
    "draw_gpu_execution",
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
    "draw_memory_hierarchy": (
        "The memory of an NVIDIA H100 SXM5 GPU as nested boxes. On the chip, 132 streaming multiprocessors "
        "(SMs), each with its own registers (256 KB) and shared memory (up to 228 KB), where FlashAttention "
        "keeps its tiles; below them a 50 MB L2 cache shared by all SMs. Off the chip, 80 GB of HBM3 at "
        "3.35 TB/s, where the naive N by N score matrix has to live. A column on the right lists the levels "
        "from small and fast to large and slow."
    ),
    "draw_gpu_execution": (
        "Left: off-chip HBM holding Q, K, V and O. Middle: one streaming multiprocessor (SM) of many, running "
        "one program of the kernel: shared memory holds num_stages K/V buffers, filled ahead by asynchronous "
        "copies (the TMA unit on Hopper); four warps of 32 threads (a warpgroup) multiply tiles on the tensor "
        "cores (mma, or wgmma on Hopper) and keep m, l and acc in registers. Right: what each part is in the "
        "Triton kernel; TMA and warp specialisation are not used."
    ),
}


def _matrix(ax, x, y, rows, cols, cell, color, text="", *, size=9):
    """A ``rows x cols`` matrix drawn to scale with its lower-left corner at (x, y); returns (w, h)."""
    w, h = cols * cell, rows * cell
    ax.add_patch(Rectangle((x, y), w, h, facecolor=light(color, 0.6), edgecolor=color, linewidth=1.2, zorder=3))
    if text:
        ax.text(x + w / 2, y + h / 2, text, ha="center", va="center", fontsize=size, color=INK, zorder=4)
    return w, h


def _mask_grid(ax, x, y, mask: torch.Tensor, cell: float, color: str, *, shade=None, block: int | None = None):
    """Draw a boolean ``(N, N)`` mask with query 0 at the top: filled cells where True.

    ``shade`` (a boolean ``(N, N)``) paints a light background under those cells (computed tiles);
    ``block`` draws the tile boundaries.
    """
    N = mask.shape[0]
    top = y + N * cell
    ax.add_patch(Rectangle((x, y), N * cell, N * cell, facecolor="white", edgecolor=MUTED, linewidth=0.8, zorder=2))
    for i in range(N):
        for j in range(N):
            if shade is not None and shade[i, j] and not mask[i, j]:
                ax.add_patch(Rectangle((x + j * cell, top - (i + 1) * cell), cell, cell,
                                       facecolor=light(color, 0.85), edgecolor="none", zorder=2.5))
            if mask[i, j]:
                ax.add_patch(Rectangle((x + j * cell, top - (i + 1) * cell), cell, cell,
                                       facecolor=light(color, 0.25), edgecolor="white", linewidth=0.4, zorder=3))
    if block:
        for b in range(0, N + 1, block):
            ax.plot([x + b * cell] * 2, [y, top], color=INK, lw=1.0, zorder=4)
            ax.plot([x, x + N * cell], [top - b * cell] * 2, color=INK, lw=1.0, zorder=4)


# ---------------------------------------------------------------- chapter 18
def draw_quadratic_growth(N: int = 4, d: int = 2) -> Figure:
    """Q, K^T and the score matrix for N and for 2N tokens, to scale."""
    N, d = require_int(N, "N"), require_int(d, "d")
    fig, ax = canvas(9.0, 3.2, ALT["draw_quadratic_growth"])
    cell = 2.2 / (2 * N + d)
    for k, (n, ox) in enumerate(((N, 0.3), (2 * N, 4.6))):
        base = 0.6
        qw, qh = _matrix(ax, ox, base, n, d, cell, COLORS["query"], "$Q$")
        kx = ox + qw + 0.15
        _matrix(ax, kx, base + n * cell + 0.15, d, n, cell, COLORS["key"], "$K^\\top$", size=8)
        sw, sh = _matrix(ax, kx, base, n, n, cell, COLORS["weights"], f"{n * n} scores", size=10)
        size_name = "N" if k == 0 else "2N"
        label(ax, ox, 0.25, f"{size_name} = {n} tokens: Q, K, V have {n} rows\n"
               f"{n} × {n} = {n * n} scores", size=9, color=INK, ha="left")
    arrow(ax, (3.05, 1.3), (4.4, 1.3))
    label(ax, 3.7, 1.6, "× 2 tokens", size=9, color=INK)
    label(ax, 3.7, 1.0, "× 4 scores", size=9, color=COLORS["weights"])
    return fig


# ---------------------------------------------------------------- chapter 19
def draw_sparse_patterns(N: int = 16, window: int = 3, stride: int = 4, block: int = 2) -> Figure:
    """Sliding window (``window`` keys each way, itself included), local + strided, Longformer and
    BigBird masks on an N x N grid."""
    N, window, stride, block = (require_int(N, "N"), require_int(window, "window"), require_int(stride, "stride"),
                                require_int(block, "block"))
    nb = -(-N // block)
    masks = {
        "sliding window": sliding_window_mask(N, window),
        "local + strided\n(Sparse Transformer)": sliding_window_mask(N, window) | strided_mask(N, stride),
        "Longformer\n(window + global token 0)": longformer_mask(N, window, [0]),
        f"BigBird\n(blocks of {block}: window, global, random)": layout_to_mask(
            bigbird_layout(nb, window_blocks=3, global_blocks=1, random_blocks=1, seed=1), block, N, N),
    }
    fig, ax = canvas(10.0, 3.4, ALT["draw_sparse_patterns"])
    cell = 2.0 / N
    for k, (name, mask) in enumerate(masks.items()):
        x = 0.3 + k * 2.45
        _mask_grid(ax, x, 0.55, mask, cell, COLORS["weights"])
        label(ax, x + 1.0, 2.95, name, size=9, color=INK)
        label(ax, x + 1.0, 0.3, f"{int(mask.sum())} of {N * N} pairs ({mask.float().mean():.0%})", size=8.5)
    label(ax, 0.15, 1.55, "queries", size=8, rotation=90)
    label(ax, 1.3, 2.7, "keys →", size=8)
    return fig


def draw_block_skipping(N: int = 16, block: int = 4, window: int = 3) -> Figure:
    """A sliding-window mask in ``block x block`` tiles: computed tiles shaded, skipped tiles blank."""
    N, block, window = require_int(N, "N"), require_int(block, "block"), require_int(window, "window")
    mask = sliding_window_mask(N, window)
    layout = mask_to_layout(mask, block)  # (Lb, Sb)
    shade = layout_to_mask(layout, block, N, N)
    fig, ax = canvas(8.0, 3.6, ALT["draw_block_skipping"])
    cell = 2.8 / N
    _mask_grid(ax, 0.4, 0.35, mask, cell, COLORS["weights"], shade=shade, block=block)
    label(ax, 0.2, 0.35 + 1.4, "query blocks", size=8, rotation=90)
    label(ax, 0.4 + 1.4, 3.35, "key blocks", size=8)
    x0 = 3.7
    label(ax, x0, 3.2, f"computed: {int(layout.sum())} of {layout.numel()} tiles "
           f"({int(mask.sum())} allowed pairs of {N * N})", size=10, color=INK, ha="left")
    for i in range(layout.shape[0]):
        needed = layout[i].nonzero().flatten().tolist()
        y = 2.65 - i * 0.55
        box(ax, x0 + 0.55, y, 1.1, 0.4, f"query block {i}", COLORS["query"], size=9, rounding=0.04)
        arrow(ax, (x0 + 1.1, y), (x0 + 1.5, y))
        box(ax, x0 + 2.6, y, 2.1, 0.4, "key blocks " + ", ".join(map(str, needed)), COLORS["key"], size=9, rounding=0.04)
    label(ax, x0, 0.2, "shaded tiles are computed (dark: allowed pairs), blank tiles are skipped", size=8.5,
           ha="left")
    return fig


# ---------------------------------------------------------------- chapter 20
def draw_associativity(N: int = 8, D: int = 3, d_v: int = 3) -> Figure:
    """``(phi(Q) phi(K)^T) V`` vs ``phi(Q) (phi(K)^T V)``, every matrix to scale."""
    N, D, d_v = require_int(N, "N"), require_int(D, "D"), require_int(d_v, "d_v")
    fig, ax = canvas(7.0, 4.7, ALT["draw_associativity"])
    c = 1.6 / N
    wcol = COLORS["weights"]

    def row(y, order):
        x = 0.3
        if order == "quadratic":
            _matrix(ax, x, y, N, D, c, COLORS["query"], "$\\phi(Q)$", size=8)
            x += D * c + 0.15
            _matrix(ax, x, y + (N - D) * c, D, N, c, COLORS["key"], "$\\phi(K)^\\top$", size=8)
            x += N * c + 0.25
            arrow(ax, (x - 0.2, y + N * c / 2), (x, y + N * c / 2))
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
            arrow(ax, (x - 0.2, y + N * c / 2), (x, y + N * c / 2))
            _matrix(ax, x, y + (N - D) * c, D, d_v, c, wcol, "", size=8)
            label(ax, x + d_v * c / 2, y + (N - D) * c - 0.15, f"{D} × {d_v}", size=8, color=INK)
            x += d_v * c + 0.15
            text = "$\\phi(Q)\\,(\\phi(K)^\\top V)$: a D × $d_v$ matrix, cost ~ $N D d_v$"
        ax.add_patch(FancyArrowPatch((x, y + N * c / 2), (x + 0.4, y + N * c / 2), arrowstyle="-|>",
                                     mutation_scale=11, color=INK, shrinkA=0, shrinkB=0))
        _matrix(ax, x + 0.5, y, N, d_v, c, COLORS["context"], "out", size=8)
        label(ax, 0.3, y + N * c + 0.2, text, size=10, color=INK, ha="left")

    row(2.5, "quadratic")
    row(0.3, "linear")
    label(ax, 6.8, 4.5, f"N = {N} tokens, feature width D = {D}, value width $d_v$ = {d_v}", size=9, ha="right")
    return fig


def draw_linear_recurrence(T: int = 4) -> Figure:
    """A fixed-size state passed from token to token (top) vs a KV cache that grows (bottom)."""
    T = require_int(T, "T")
    fig, ax = canvas(9.5, 4.4, ALT["draw_linear_recurrence"])
    step = 8.0 / (T + 1)
    label(ax, 0.2, 4.15, "linear attention: a state of fixed size D × $d_v$ (plus z, size D)", size=10,
           color=INK, ha="left")
    for t in range(T + 1):
        x = 0.7 + t * step
        box(ax, x, 3.1, 0.75, 0.6, f"$S_{t}, z_{t}$", COLORS["state"], size=9.5, rounding=0.04)
        if t < T:
            arrow(ax, (x + 0.375, 3.1), (x + step - 0.375, 3.1))
            mid = x + step / 2
            box(ax, mid, 3.75, 1.05, 0.34, f"$+\\phi(k_{t + 1})^\\top v_{t + 1}$", COLORS["key"], size=8, rounding=0.04)
            arrow(ax, (mid, 3.58), (mid, 3.12), COLORS["key"])
            box(ax, x + step, 2.3, 0.9, 0.36, f"$\\phi(q_{t + 1})\\,\\cdot$", COLORS["query"], size=8.5, rounding=0.04)
            arrow(ax, (x + step, 2.8), (x + step, 2.48), COLORS["query"])
            label(ax, x + step, 2.0, f"$y_{t + 1}$", size=9, color=INK)
    label(ax, 0.2, 1.55, "softmax attention: a KV cache that grows by one key and one value per token", size=10,
           color=INK, ha="left")
    cell = 0.18
    for t in range(1, T + 1):
        x = 0.7 + t * step - 0.3
        for r in range(t):
            ax.add_patch(Rectangle((x, 1.2 - (r + 1) * cell), 0.28, cell * 0.9, facecolor=light(COLORS["key"], 0.5),
                                   edgecolor=COLORS["key"], linewidth=0.8))
            ax.add_patch(Rectangle((x + 0.32, 1.2 - (r + 1) * cell), 0.28, cell * 0.9,
                                   facecolor=light(COLORS["value"], 0.5), edgecolor=COLORS["value"], linewidth=0.8))
        label(ax, x + 0.3, 1.32, f"after token {t}: {t} rows", size=8)
    return fig


# ---------------------------------------------------------------- chapter 21


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
    fig, ax = canvas(10.0, 4.2, ALT["draw_tiling"])
    cell = min(0.65, 2.6 / T)
    x0, y0 = 1.2, 0.45  # lower-left corner of the score matrix
    top = y0 + T * cell
    # K^T above the matrix: one column block per key block; Q to the left: one row block per query block
    for c in range(T):
        rect(ax, x0 + c * cell, top + 0.15, cell, 0.35, COLORS["key"], amount=0.45 if c == j else 0.82,
              lw=1.6 if c == j else 0.8)
        label(ax, x0 + (c + 0.5) * cell, top + 0.325, f"$K_{c}$", size=9, color=INK)
    label(ax, x0 + T * cell / 2, top + 0.72, "key blocks $K_j^\\top$ ($B_k$ keys each)", size=9,
           color=COLORS["key"])
    for r in range(T):
        ry = top - (r + 1) * cell
        rect(ax, x0 - 0.5, ry, 0.35, cell, COLORS["query"], amount=0.45 if r == i else 0.82,
              lw=1.6 if r == i else 0.8)
        label(ax, x0 - 0.325, ry + cell / 2, f"$Q_{r}$", size=9, color=INK)
    label(ax, x0 - 0.95, top - T * cell / 2, "query\nblocks\n$Q_i$\n($B_q$\nrows)", size=8.5,
           color=COLORS["query"])
    for r in range(T):
        for c in range(T):
            cx, cy = x0 + c * cell, top - (r + 1) * cell
            if causal and c > r:
                rect(ax, cx, cy, cell, cell, "#bbbbbb", amount=0.9, edge="#cccccc", hatch="///")
            elif r == i and c == j:
                rect(ax, cx, cy, cell, cell, COLORS["weights"], amount=0.35, lw=2.2)
            elif r == i and c < j:
                rect(ax, cx, cy, cell, cell, COLORS["weights"], amount=0.75)  # already folded in
            else:
                rect(ax, cx, cy, cell, cell, COLORS["state"], amount=0.93, edge="#bbbbbb")
            if causal and c == r:  # the diagonal tile: half of it is masked
                ax.plot([cx, cx + cell], [cy + cell, cy], color=COLORS["weights"], lw=0.9, ls="--", zorder=4)
    label(ax, x0 + T * cell / 2, y0 - 0.22,
           "scores $S = QK^\\top$, " + ("causal: hatched tiles skipped, diagonal tiles masked" if causal
                                       else "every tile visited"), size=8.5)
    # fast memory (SRAM): the tile being processed
    sx = x0 + T * cell + 0.4
    ax.add_patch(FancyBboxPatch((sx, 0.35), 3.0, 3.55, boxstyle="round,pad=0,rounding_size=0.1",
                                facecolor="#f6f6f6", edgecolor="#bbbbbb", lw=1.0, zorder=1))
    label(ax, sx + 1.5, 3.68, "fast on-chip memory (SRAM)", size=9.5, color=INK)
    box(ax, sx + 0.7, 3.1, 1.1, 0.5, f"$Q_{i}$  ($B_q$ × d)", COLORS["query"], size=9)
    box(ax, sx + 2.3, 3.1, 1.1, 0.5, f"$K_{j}$  ($B_k$ × d)", COLORS["key"], size=9)
    box(ax, sx + 1.5, 2.2, 2.6, 0.55, f"$S_{{{i}{j}}} = Q_{i}K_{j}^\\top/\\sqrt{{d}}$  ($B_q$ × $B_k$)",
         COLORS["weights"], size=9)
    arrow(ax, (sx + 0.7, 2.85), (sx + 0.9, 2.48), COLORS["query"])
    arrow(ax, (sx + 2.3, 2.85), (sx + 2.1, 2.48), COLORS["key"])
    box(ax, sx + 0.95, 1.25, 1.6, 0.55, f"$P = e^{{S_{{{i}{j}}} - m}}$", COLORS["weights"], size=9.5,
         fill=light(COLORS["weights"], 0.6))
    box(ax, sx + 2.4, 1.25, 0.8, 0.5, f"$V_{j}$", COLORS["value"], size=9.5)
    arrow(ax, (sx + 0.95, 1.92), (sx + 0.95, 1.53), COLORS["weights"])
    label(ax, sx + 1.5, 0.62, "only this $B_q \\times B_k$ tile is alive:\nextra memory does not grow as $N^2$",
           size=8.5)
    # the running statistics of the query block
    rx = sx + 3.0 + 0.25
    label(ax, rx + 1.25, 3.68, f"running statistics of $Q_{i}$", size=9.5, color=INK)
    rows = [("$m$", "running max\n($B_q$)", COLORS["state"]), ("$l$", "running sum\n($B_q$)", COLORS["state"]),
            ("acc", "weighted sum of $V$\n($B_q$ × d)", COLORS["context"])]
    for k, (sym, what, color) in enumerate(rows):
        y = 3.0 - 0.75 * k
        box(ax, rx + 0.3, y, 0.5, 0.45, sym, color, size=10)
        label(ax, rx + 0.65, y, what, size=8, ha="left")
    label(ax, rx + 1.25, 0.95, "per tile: $m' = \\max(m, \\max_j S)$\n$l' = e^{m-m'}l + \\sum P$\n"
           "acc$' = e^{m-m'}$acc $+ PV_j$", size=8.5, color=INK)
    label(ax, rx + 1.25, 0.3, "at the end: $O_i$ = acc / $l$", size=8.5, color=COLORS["context"])
    arrow(ax, (sx + 2.8, 1.25), (rx + 0.05, 1.6), COLORS["context"], lw=1.1, rad=0.2)
    return fig


# ---------------------------------------------------------------- chapter 23


def draw_ring(world_size: int = 4) -> Figure:
    """``world_size`` processes on a ring; the K/V chunks move one place per step (table of who holds what)."""
    P = require_int(world_size, "world_size", minimum=2)
    if P > 8:
        raise ValueError(f"world_size={P}: draw at most 8 processes")
    fig, ax = canvas(10.0, 4.6, ALT["draw_ring"])
    cx, cy, R = 2.6, 2.2, 1.55
    pos = [(cx + R * math.sin(2 * math.pi * r / P), cy + R * math.cos(2 * math.pi * r / P)) for r in range(P)]
    for r, (x, y) in enumerate(pos):
        ax.add_patch(Circle((x, y), 0.48, facecolor="white", edgecolor=COLORS["state"], lw=1.4, zorder=3))
        label(ax, x, y + 0.22, f"rank {r}", size=8.5, color=INK, zorder=5)
        rect(ax, x - 0.36, y - 0.2, 0.34, 0.26, COLORS["query"], amount=0.55)
        label(ax, x - 0.19, y - 0.07, f"$Q_{r}$", size=8, color=INK, zorder=5)
        rect(ax, x + 0.02, y - 0.2, 0.34, 0.26, COLORS["key"], amount=0.55)
        label(ax, x + 0.19, y - 0.07, f"$KV_{r}$", size=7, color=INK, zorder=5)
    for r in range(P):
        a, b = pos[r], pos[(r + 1) % P]
        dx, dy = b[0] - a[0], b[1] - a[1]
        dist = math.hypot(dx, dy)
        ux, uy = dx / dist, dy / dist
        arrow(ax, (a[0] + 0.52 * ux, a[1] + 0.52 * uy), (b[0] - 0.52 * ux, b[1] - 0.52 * uy), COLORS["key"],
               lw=1.6, rad=-0.25)
    label(ax, cx, cy, "K/V chunks\nmove to\nrank + 1\nevery step", size=8.5, color=COLORS["key"])
    label(ax, cx, 4.4, f"P = {P} processes, each holds n = N / P tokens", size=10, color=INK)
    # table: which chunk rank r holds at step s
    tx, ty, cw, ch = 5.55, 3.6, 0.55, 0.4
    label(ax, tx + (P + 1) * cw / 2, ty + 0.62, "K/V chunk held by each rank at each step\n"
           "chunk = (rank - step) mod P", size=9, color=INK)
    label(ax, tx + cw / 2, ty, "step", size=8.5, color=INK)
    for r in range(P):
        label(ax, tx + (r + 1.5) * cw, ty, f"r{r}", size=8.5, color=INK)
    for s in range(P):
        y = ty - (s + 1) * ch
        label(ax, tx + cw / 2, y, str(s), size=8.5, color=INK)
        for r in range(P):
            chunk = (r - s) % P
            rect(ax, tx + (r + 1) * cw + 0.03, y - ch / 2 + 0.03, cw - 0.06, ch - 0.06,
                  COLORS["key"], amount=0.55 if chunk == r else 0.85)
            label(ax, tx + (r + 1.5) * cw, y, str(chunk), size=8.5, color=INK, zorder=5)
    label(ax, tx + (P + 1) * cw / 2, ty - (P + 1) * ch - 0.1,
           "each step: attend $Q_r$ to the chunk held, merge\n(m, l, acc) with merge_partials, send the chunk on",
           size=8.5, color=MUTED)
    return fig


def _size(n: float) -> str:
    """Bytes as NVIDIA writes them: binary KB and MB for on-chip memory, decimal GB for HBM."""
    if n >= 10**9:
        return f"{n / 10**9:.0f} GB"
    if n >= 2**20:
        return f"{n / 2**20:.0f} MB"
    return f"{n / 2**10:.0f} KB"


def draw_memory_hierarchy(gpu: GPUMemory = H100_SXM) -> Figure:
    """A GPU's memory levels as nested boxes (SMs with registers and shared memory, the L2, the HBM),
    with the sizes and the HBM bandwidth of ``gpu`` and a column listing the levels."""
    if not isinstance(gpu, GPUMemory):
        raise TypeError(f"gpu must be a GPUMemory (e.g. attn_course.labs.flash_io.H100_SXM), got {type(gpu).__name__}")
    fig, ax = canvas(10.0, 5.0, ALT["draw_memory_hierarchy"])
    grey, purple = COLORS["state"], COLORS["weights"]

    def both_ways(start, end, lw=1.0, color=grey):
        ax.add_patch(FancyArrowPatch(start, end, arrowstyle="<|-|>", mutation_scale=9, color=color, linewidth=lw,
                                     shrinkA=0, shrinkB=0, zorder=2))

    # the chip: SMs, each with registers and shared memory, above the L2 they all share
    ax.add_patch(FancyBboxPatch((0.2, 1.45), 6.1, 3.4, boxstyle="round,pad=0,rounding_size=0.12",
                                facecolor="#f6f6f6", edgecolor="#999999", lw=1.2, zorder=1))
    label(ax, 0.35, 4.66, f"{gpu.name}, on the chip: {gpu.sms} SMs (streaming multiprocessors)", size=9.5,
          color=INK, ha="left")
    for k, name in enumerate(["SM 1", "SM 2", "SM 3", f"SM {gpu.sms}"]):
        x = 0.45 + k * 1.5 + (0.3 if k == 3 else 0.0)
        ax.add_patch(FancyBboxPatch((x, 2.65), 1.2, 1.8, boxstyle="round,pad=0,rounding_size=0.06",
                                    facecolor="white", edgecolor=grey, lw=1.2, zorder=2))
        label(ax, x + 0.6, 4.27, name, size=9, color=INK)
        rect(ax, x + 0.1, 3.5, 1.0, 0.58, grey, amount=0.7)
        label(ax, x + 0.6, 3.79, f"registers\n{_size(gpu.registers_per_sm)}", size=8, color=INK, zorder=5)
        rect(ax, x + 0.1, 2.75, 1.0, 0.65, grey, amount=0.88)
        label(ax, x + 0.5, 3.12, f"shared\nmemory\n≤ {_size(gpu.shared_per_sm)}", size=7.5, color=INK, zorder=5)
        rect(ax, x + 0.86, 2.8, 0.18, 0.18, purple, amount=0.3)  # a tile of scores
        both_ways((x + 0.6, 2.65), (x + 0.6, 2.27))
    label(ax, 4.95, 3.55, "⋯", size=16, color=INK)
    box(ax, 3.25, 1.95, 5.8, 0.6, f"L2 cache: {_size(gpu.l2_bytes)}, shared by all {gpu.sms} SMs", grey, size=9.5,
        fill=light(grey, 0.8))
    # off the chip
    both_ways((3.25, 1.64), (3.25, 1.16), lw=2.2, color=INK)
    label(ax, 3.42, 1.4, f"{gpu.hbm_bytes_per_s / 1e12:.2f} TB/s", size=9, color=INK, ha="left")
    box(ax, 3.25, 0.65, 6.1, 0.9, "", grey, size=10, fill=light(grey, 0.7))
    label(ax, 0.45, 0.8, f"HBM3: {_size(gpu.hbm_bytes)}, off the chip", size=10, color=INK, ha="left")
    label(ax, 0.45, 0.48, "everything starts and ends here", size=8.5, color=MUTED, ha="left")
    rect(ax, 5.5, 0.37, 0.56, 0.56, purple, amount=0.55, hatch="///")
    label(ax, 5.4, 0.65, "naive attention's\nN × N scores", size=8, color=purple, ha="right")
    # the ladder: the same levels, fast and small at the top
    x0 = 6.65
    label(ax, x0 + 1.6, 4.7, "fast and small", size=9, color=INK)
    rows = [("registers", f"{_size(gpu.registers_per_sm)} per SM",
             f"× {gpu.sms} = {_size(gpu.sms * gpu.registers_per_sm)}", ""),
            ("shared memory", f"≤ {_size(gpu.shared_per_sm)} per SM", f"× {gpu.sms} = {_size(gpu.shared_total)}",
             "FlashAttention's tiles"),
            ("L2 cache", _size(gpu.l2_bytes), "one, on the chip", ""),
            ("HBM3", _size(gpu.hbm_bytes), f"{gpu.hbm_bytes_per_s / 1e12:.2f} TB/s", "naive N × N scores")]
    for k, (what, size, note, use) in enumerate(rows):
        y = 4.15 - 0.95 * k
        rect(ax, x0, y - 0.38, 3.2, 0.76, grey, amount=0.9 - 0.06 * k)
        label(ax, x0 + 0.1, y + 0.17, what, size=9, color=INK, ha="left", zorder=5)
        label(ax, x0 + 0.1, y - 0.16, size, size=8.5, color=INK, ha="left", zorder=5)
        label(ax, x0 + 3.1, y - 0.16, note, size=8, color=MUTED, ha="right", zorder=5)
        if use:
            label(ax, x0 + 3.1, y + 0.17, use, size=8, color=purple, ha="right", zorder=5)
    label(ax, x0 + 1.6, 0.2, "slow and large", size=9, color=INK)
    arrow(ax, (x0 - 0.15, 4.55), (x0 - 0.15, 0.35), MUTED, lw=1.0)
    return fig


# ---------------------------------------------------------------- chapter 22


def draw_gpu_execution(stages: int = 3, warps: int = 4) -> Figure:
    """HBM, one SM (shared memory with ``stages`` K/V buffers, ``warps`` warps, tensor cores, TMA)
    and what each part is in the Triton FlashAttention kernel."""
    stages = require_int(stages, "stages", maximum=5)
    warps = require_int(warps, "warps", maximum=8)
    fig, ax = canvas(10.0, 5.0, ALT["draw_gpu_execution"])
    # HBM, off chip
    ax.add_patch(FancyBboxPatch((0.2, 0.5), 1.6, 3.9, boxstyle="round,pad=0,rounding_size=0.1",
                                facecolor="#f3f3f3", edgecolor=MUTED, lw=1.2, zorder=1))
    label(ax, 1.0, 4.15, "HBM (off chip)", size=10, color=INK)
    label(ax, 1.0, 3.85, "large, ~TB/s", size=8)
    for k, (name, color) in enumerate((("Q", "query"), ("K", "key"), ("V", "value"), ("O", "context"))):
        box(ax, 1.0, 3.3 - 0.7 * k, 1.0, 0.45, f"${name}$", COLORS[color], size=10, rounding=0.03)
    # one SM
    sx, sw = 2.6, 4.6
    ax.add_patch(FancyBboxPatch((sx, 0.25), sw, 4.25, boxstyle="round,pad=0,rounding_size=0.12",
                                facecolor="white", edgecolor=COLORS["state"], lw=1.6, zorder=1))
    label(ax, sx + sw / 2, 4.72, "one SM (streaming multiprocessor) of many;\neach program (a thread block) "
           "runs on one SM", size=9, color=INK)
    for i in range(3):  # the SM's siblings, behind it
        ax.add_patch(Rectangle((sx + sw + 0.05 + 0.07 * i, 0.45 + 0.1 * i), 0.05, 4.1, facecolor="#e6e6e6",
                               edgecolor="#bbbbbb", lw=0.6, zorder=0))
    # TMA unit and shared memory with its pipeline stages
    box(ax, sx + 0.55, 3.55, 0.8, 0.55, "TMA\n(Hopper)", COLORS["key"], size=8.5, rounding=0.04)
    ax.add_patch(FancyBboxPatch((sx + 1.15, 3.05), 3.3, 1.05, boxstyle="round,pad=0,rounding_size=0.06",
                                facecolor=light(COLORS["key"], 0.93), edgecolor=COLORS["key"], lw=1.1, zorder=2))
    label(ax, sx + 2.8, 3.9, f"shared memory (SRAM): num_stages = {stages} K/V buffers", size=8.5, color=INK)
    bw = 3.1 / stages
    for i in range(stages):
        rect(ax, sx + 1.25 + i * bw, 3.15, bw - 0.1, 0.55, COLORS["key"], amount=0.55 if i == 0 else 0.78)
        label(ax, sx + 1.25 + i * bw + (bw - 0.1) / 2, 3.425,
               "$K_j, V_j$\nin use" if i == 0 else f"$K_{{j+{i}}}, V_{{j+{i}}}$\nloading", size=7.5, color=INK)
    arrow(ax, (1.5, 2.6), (sx + 0.15, 3.45), COLORS["key"], lw=1.4)
    label(ax, 2.2, 3.25, "tl.load\n(async copy)", size=7.5, color=COLORS["key"])
    arrow(ax, (sx + 0.95, 3.55), (sx + 1.15, 3.55), COLORS["key"])
    # warps, tensor cores, registers
    ww = (sw - 0.4) / warps
    for w in range(warps):
        x = sx + 0.2 + w * ww
        box(ax, x + ww / 2, 2.4, ww - 0.12, 0.5, f"warp {w}", COLORS["query"], size=8, rounding=0.03)
    slot0 = sx + 1.25 + (bw - 0.1) / 2  # the buffer in use feeds the warps
    arrow(ax, (slot0, 3.15), (slot0, 2.67), COLORS["key"], lw=1.0)
    label(ax, sx + sw / 2, 1.95, f"num_warps = {warps} warps of 32 threads (4 warps = 1 warpgroup)", size=8.5,
           color=INK)
    box(ax, sx + sw / 2, 1.4, sw - 0.4, 0.5, "tensor cores: tl.dot -> mma (per warp) / wgmma (Hopper, per warpgroup)",
         COLORS["weights"], size=8, rounding=0.03)
    arrow(ax, (sx + sw - 0.45, 2.14), (sx + sw - 0.45, 1.66), COLORS["weights"], lw=0.9)
    box(ax, sx + sw / 2, 0.65, sw - 0.4, 0.5, "registers: $m_i$, $l_i$, acc (float32), the score tile",
         COLORS["state"], size=8, rounding=0.03)
    arrow(ax, (sx + 0.2, 0.65), (1.5, 1.2), COLORS["context"], lw=1.2)
    label(ax, 2.05, 0.68, "tl.store", size=7.5, color=COLORS["context"])
    # the kernel's side
    rx = 8.0
    label(ax, rx + 0.95, 4.6, "in our Triton kernel", size=9.5, color=INK)
    rows = [
        ("program", "a (query block,\nbatch x head) pair"),
        ("num_warps", "4 or 8, autotuned"),
        ("tl.dot", "mma / wgmma:\nthe compiler picks"),
        ("num_stages", "2-3 buffers:\nload ahead"),
        ("TMA", "not used (plain\npointer loads)"),
        ("warp\nspecialisation", "not used (FA3\nand cuDNN do)"),
    ]
    for k, (name, what) in enumerate(rows):
        y = 3.95 - 0.66 * k
        label(ax, rx - 0.05, y, name, size=8, color=INK, ha="left")
        label(ax, rx + 0.95, y, what, size=7.5, ha="left")
    return fig


# ---------------------------------------------------------------- chapter 20: the chunkwise form

ALT.update({
    "draw_chunkwise": (
        "The causal N by N matrix of linear attention cut into chunks of C tokens. The triangular blocks on the "
        "diagonal are computed as small masked quadratic attention, C by C each. Everything below them is never "
        "formed: a state S (D by d_v) and z, passed from chunk to chunk, carries the sum over all earlier "
        "chunks; each chunk's queries read it once, then the chunk's keys and values are added to it."
    ),
})
__all__ += ["draw_chunkwise", "score_memory_frame", "sparse_pattern_frame", "decay_weights_frame"]


def draw_chunkwise(N: int = 12, chunk: int = 4) -> Figure:
    """Chunkwise causal linear attention: masked ``C x C`` blocks on the diagonal, a state between chunks."""
    N, C = require_int(N, "N"), require_int(chunk, "chunk")
    if N % C:
        raise ValueError(f"N={N} must be a multiple of chunk={C} for the picture")
    n = N // C
    fig, ax = canvas(9.5, 4.4, ALT["draw_chunkwise"])
    cell = 3.3 / N
    x0, y0 = 0.6, 0.45
    top = y0 + N * cell
    ax.add_patch(Rectangle((x0, y0), N * cell, N * cell, facecolor="white", edgecolor=MUTED, lw=0.8, zorder=2))
    for i in range(N):
        for j in range(i + 1):
            same_chunk = i // C == j // C
            ax.add_patch(Rectangle((x0 + j * cell, top - (i + 1) * cell), cell, cell, edgecolor="white", lw=0.4,
                                   facecolor=light(COLORS["weights"], 0.3) if same_chunk else light(COLORS["state"], 0.88),
                                   zorder=3))
    for b in range(n + 1):  # chunk boundaries
        ax.plot([x0 + b * C * cell] * 2, [y0, top], color=INK, lw=1.0, zorder=4)
        ax.plot([x0, x0 + N * cell], [top - b * C * cell] * 2, color=INK, lw=1.0, zorder=4)
    label(ax, x0 + N * cell / 2, top + 0.22, f"N = {N} tokens in {n} chunks of C = {C}", size=9.5, color=INK)
    label(ax, x0 - 0.25, y0 + N * cell / 2, "queries", size=8.5, rotation=90)
    label(ax, x0 + N * cell / 2, y0 - 0.2, "keys", size=8.5)
    # the state column: one box per chunk boundary, read by the chunk's queries, updated after it
    sx = x0 + N * cell + 0.9
    for c in range(n):
        yc = top - (c + 0.5) * C * cell
        box(ax, sx, yc, 1.0, 0.5, f"$S_{{{c}}}, z_{{{c}}}$", COLORS["state"], size=9.5, rounding=0.04)
        arrow(ax, (sx - 0.5, yc), (x0 + N * cell + 0.05, yc), COLORS["query"])
        if c + 1 < n:
            arrow(ax, (sx, yc - 0.25), (sx, yc - C * cell + 0.25), COLORS["key"])
            label(ax, sx + 0.15, yc - C * cell / 2, f"$+\\,\\phi(K_{{{c}}})^\\top V_{{{c}}}$", size=8.5,
                  color=COLORS["key"], ha="left")
    tx = sx + 1.6
    label(ax, tx, 3.75, "per chunk c:", size=10, color=INK, ha="left")
    label(ax, tx, 3.3, "inside: masked C × C attention\n(dark triangles), cost ~ $C^2 D$", size=9,
          color=COLORS["weights"], ha="left")
    label(ax, tx, 2.45, "before: read the state once,\n$\\phi(Q_c)\\,S_c$, cost ~ $C D d_v$", size=9,
          color=COLORS["query"], ha="left")
    label(ax, tx, 1.6, "after: add the chunk to the state,\n$S_{c+1} = S_c + \\phi(K_c)^\\top V_c$", size=9,
          color=COLORS["key"], ha="left")
    label(ax, tx, 0.75, "light cells: never formed\n(total ~ $N C D + N D d_v$, one state in memory)",
          size=9, ha="left")
    return fig


# ---------------------------------------------------------------- slider frames (chapters 18-20)
# Each ``*_frame(fig, value)`` draws one frame of a kernel-free slider figure
# (``attn_course.interactive.slider_figure``) on an empty Figure; cheap to draw, a few per page.


def score_memory_frame(fig: Figure, N: float, *, head_dim: int = 128, heads: int = 32, dtype_bytes: int = 2,
                       memory_gb: float = 141.0, n_max: int = 131072) -> None:
    """Chapter 18: one head's ``N x N`` score matrix next to its ``N x d`` queries, to scale, and
    the bytes of the scores (one head, all ``heads`` of a layer) and of Q against N (log-log),
    with a GPU's memory as a line."""
    N = require_int(int(N), "N")
    ax_pic, ax_plot = fig.subplots(1, 2, width_ratios=[1, 1.25])
    side = N / n_max  # the score matrix's side, as a fraction of the largest N's
    ax_pic.add_patch(Rectangle((0.12, 0.0), 0.88, 0.88, facecolor="white", edgecolor=MUTED, lw=0.8, ls="--"))
    ax_pic.add_patch(Rectangle((0.12, 0.88 - 0.88 * side), 0.88 * side, 0.88 * side,
                               facecolor=light(COLORS["weights"], 0.35), edgecolor=COLORS["weights"]))
    q_width = max(0.88 * head_dim / n_max * 8, 0.01)  # Q drawn 8 times wider than to scale, else invisible
    ax_pic.add_patch(Rectangle((0.12 - q_width - 0.02, 0.88 - 0.88 * side), q_width, 0.88 * side,
                               facecolor=light(COLORS["query"], 0.35), edgecolor=COLORS["query"]))
    ax_pic.set_xlim(0, 1.02)
    ax_pic.set_ylim(-0.12, 1.0)
    ax_pic.set_aspect("equal")
    ax_pic.set_axis_off()
    scores = N * N * dtype_bytes
    ax_pic.text(0.56, -0.07, f"N = {N:,}: one head's scores {scores / 1e9:,.3g} GB, its Q "
                f"{N * head_dim * dtype_bytes / 1e6:,.3g} MB", ha="center", fontsize=8.5, color=INK)
    ax_pic.text(0.56, 0.93, f"dashed: the scores at N = {n_max:,}, to scale", ha="center", fontsize=8, color=MUTED)
    Ns = [2**p for p in range(10, 18)]
    ax_plot.plot(Ns, [n * n * dtype_bytes * heads for n in Ns], marker="^", color=COLORS["context"],
                 label=f"scores, all {heads} heads of a layer")
    ax_plot.plot(Ns, [n * n * dtype_bytes for n in Ns], marker="o", color=COLORS["weights"], label="scores, one head")
    ax_plot.plot(Ns, [n * head_dim * dtype_bytes for n in Ns], marker="s", color=COLORS["query"],
                 label=f"Q of one head (N × {head_dim})")
    ax_plot.axhline(memory_gb * 1e9, color=INK, ls="--", lw=1, label=f"GPU memory, {memory_gb:g} GB")
    ax_plot.axvline(N, color=MUTED, lw=0.8, ls=":")
    ax_plot.set_xscale("log", base=2)
    ax_plot.set_yscale("log")
    ax_plot.set_xlabel("sequence length N (log scale)")
    ax_plot.set_ylabel("bytes, bf16 (log scale)")
    ax_plot.set_title("×2 tokens: ×4 score bytes, ×2 Q bytes", fontsize=10)
    ax_plot.grid(alpha=0.3, which="major")
    ax_plot.legend(fontsize=7.5, loc="upper left")


def sparse_pattern_frame(fig: Figure, window: float, *, N: int = 32, global_tokens: tuple[int, ...] = (0,),
                         block: int = 8) -> None:
    """Chapter 19: the Longformer mask (a window of ``window`` keys each way + global tokens) and
    the tiles a block-sparse kernel computes, with the share of pairs and tiles."""
    W = require_int(int(window), "window")
    mask = longformer_mask(N, W, list(global_tokens))  # (N, N)
    layout = mask_to_layout(mask, block)  # (N / b, N / b)
    tiles = layout_to_mask(layout, block, N, N)  # (N, N): pairs inside a computed tile
    image = torch.ones(N, N, 3)  # white: skipped
    image[tiles] = torch.tensor(light(COLORS["weights"], 0.85))
    image[mask] = torch.tensor(light(COLORS["weights"], 0.25))
    ax_mask, ax_bar = fig.subplots(1, 2, width_ratios=[1, 1])
    ax_mask.imshow(image.numpy(), interpolation="nearest")
    for b in range(0, N + 1, block):
        ax_mask.axhline(b - 0.5, color=INK, lw=0.6)
        ax_mask.axvline(b - 0.5, color=INK, lw=0.6)
    ax_mask.set_xlabel("key j")
    ax_mask.set_ylabel("query i")
    ax_mask.set_title(f"W = {W}: {mask.float().mean():.0%} of pairs, {int(layout.sum())} of {layout.numel()} tiles",
                      fontsize=10)
    keys = mask.sum(dim=1)  # (N,): keys per query
    ax_bar.bar(range(N), keys.tolist(), color=light(COLORS["weights"], 0.3), edgecolor=COLORS["weights"])
    ax_bar.axhline(min(2 * W - 1, N), color=INK, ls="--", lw=1, label=f"2W - 1 = {2 * W - 1}")
    ax_bar.set_ylim(0, N + 1)
    ax_bar.set_xlabel("query i")
    ax_bar.set_ylabel("keys it may see")
    ax_bar.set_title("global token: all N; others: the window + the global", fontsize=9)
    ax_bar.legend(fontsize=8, loc="upper right")


def decay_weights_frame(fig: Figure, decay: float, *, N: int = 16, d: int = 8, seed: int = 0) -> None:
    """Chapter 20: the weights decayed linear attention (elu+1) gives, for random queries and keys:
    the ``(N, N)`` matrix and the last query's row, for one ``decay``."""
    g = torch.Generator().manual_seed(seed)
    q, k = torch.randn(1, 1, N, d, generator=g), torch.randn(1, 1, N, d, generator=g)  # (1, 1, N, d)
    weights = linear_attention_weights(q, k, causal=True, decay=decay)[0, 0]  # (N, N)
    ax_mat, ax_row = fig.subplots(1, 2, width_ratios=[1, 1.2])
    ax_mat.imshow(weights.numpy(), cmap="Purples", vmin=0, vmax=0.5, interpolation="nearest")
    ax_mat.set_xlabel("key j")
    ax_mat.set_ylabel("query i")
    ax_mat.set_title(f"weights, decay γ = {decay:g}", fontsize=10)
    last = weights[-1]  # (N,)
    ax_row.bar(range(N), last.tolist(), color=light(COLORS["weights"], 0.3), edgecolor=COLORS["weights"])
    ax_row.set_ylim(0, 0.55)
    ax_row.set_xlabel("key j")
    ax_row.set_ylabel(f"weight from the last query (i = {N - 1})")
    half = sum(1 for w in last.flip(0).cumsum(0).tolist() if w < 0.5) + 1  # newest keys holding half the weight
    ax_row.set_title("half of the weight on the newest " + (f"{half} keys" if half > 1 else "key"), fontsize=10)
