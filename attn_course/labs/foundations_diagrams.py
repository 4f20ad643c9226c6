"""Parts I-II's conceptual diagrams (chapters 01-10), drawn with the kit of ``attn_course.diagrams``.

Each public ``draw_*`` function returns the ``matplotlib.figure.Figure`` it drew, so a notebook
cell ``draw_encoder_decoder();`` shows it. ``ALT[name]`` is the alt text of each diagram (the
chapters copy it into the cell metadata); each figure also carries it as its label.

Colours mean the same thing in every diagram: queries blue, keys orange, values green,
attention weights purple, context vectors magenta, other states grey.

Dimension glossary (as in the library): B batch, T sequence length, D model width
(``d_model``), H heads, d = D // H features per head, d_k query/key width.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

from matplotlib.figure import Figure
from matplotlib.patches import Arc, Circle, FancyArrowPatch, FancyBboxPatch, Rectangle

from attn_course._validation import require_int, require_positive_number
from attn_course.diagrams import COLORS, INK, MUTED, arrow, box, canvas, circle, label, light, route

__all__ = [
    "ALT",
    "draw_word_alignment",
    "draw_encoder_decoder",
    "draw_bahdanau_vs_luong",
    "draw_qkv_pipeline",
    "draw_split_merge_heads",
    "draw_rope_rotation",
    "draw_pre_post_norm",
]

# head colours for draw_split_merge_heads (none of them is a query/key/value colour)
_HEADS = ["#7b3294", "#e7298a", "#66a61e", "#a6761d", "#1f78b4", "#e6ab02", "#555555", "#d95f02"]

ALT = {
    "draw_word_alignment": (
        "An English sentence and its French translation as two rows of word boxes, with a line from "
        "each French word to the English word it translates; most lines run straight down, but "
        "'European Economic Area' and 'zone économique européenne' cross because French reverses the order."
    ),
    "draw_encoder_decoder": (
        "An RNN encoder reads x1 to x4 into hidden states; only its last state becomes a single "
        "fixed-size context vector c, highlighted, which feeds every step of the decoder that "
        "produces y1 to y3: the whole sentence must squeeze through that one vector."
    ),
    "draw_bahdanau_vs_luong": (
        "Two decoder steps side by side. Bahdanau: the previous state s(t-1) queries the encoder states "
        "with an additive score, and the context c(t) enters the GRU as input with the previous token's "
        "embedding. Luong: the GRU runs first, its new state h(t) queries with a bilinear score, and c(t) "
        "is combined with h(t) after the GRU as tanh(Wc[c(t); h(t)]) before the output."
    ),
    "draw_qkv_pipeline": (
        "The self-attention pipeline with shapes: X is projected by W_Q, W_K and W_V into Q, K and V; "
        "Q times K transposed over the square root of d_k gives a T by T score matrix, softmax over each "
        "row gives the weights, and the weights times V give the output."
    ),
    "draw_split_merge_heads": (
        "A (B, T, D) tensor whose feature columns are coloured by head is viewed as (B, T, H, d), "
        "transposed to (B, H, T, d) so each head attends separately, transposed back, reshaped to "
        "(B, T, D) and mixed by the output projection W_O."
    ),
    "draw_rope_rotation": (
        "Left: a pair of features drawn as a 2-D vector, and the same vector rotated by m times theta "
        "for position m, with the angle marked. Right: a query rotated by m theta and a key rotated by "
        "n theta; the angle between them is (m - n) theta, so their dot product depends only on the offset."
    ),
    "draw_pre_post_norm": (
        "Two transformer blocks. Post-norm (original Transformer): each sublayer's output is added to its "
        "input and then LayerNorm is applied, so the norm sits on the residual path. Pre-norm (GPT-2): "
        "LayerNorm comes before each sublayer, and the residual path from input to output is a clean "
        "chain of additions."
    ),
}



# ---------------------------------------------------------------- chapter 01


_SOURCE = "the agreement on the European Economic Area was signed in August 1992".split()
_TARGET = "l' accord sur la zone économique européenne a été signé en août 1992".split()
# (source index, target index): French reverses "European Economic Area"
_LINKS = [(0, 0), (1, 1), (2, 2), (3, 3), (6, 4), (5, 5), (4, 6), (7, 7), (7, 8), (8, 9), (9, 10),
          (10, 11), (11, 12)]


def _word_row(ax, words, y, width, color):
    """Boxes for ``words`` centred in ``width``; returns their x centres."""
    widths = [0.16 + 0.075 * len(w) for w in words]
    gap = min(0.12, max(0.03, (width - 0.4 - sum(widths)) / max(len(words) - 1, 1)))
    x = (width - sum(widths) - gap * (len(words) - 1)) / 2
    centres = []
    for word, w in zip(words, widths):
        box(ax, x + w / 2, y, w, 0.36, word, color, size=10)
        centres.append(x + w / 2)
        x += w + gap
    return centres


def draw_word_alignment(source: Sequence[str] | None = None, target: Sequence[str] | None = None,
                        links: Sequence[tuple[int, int]] | None = None) -> Figure:
    """Source words above, target words below, a line per ``(source_index, target_index)`` link.

    Defaults: the English-French pair of Bahdanau et al. (2015). Links that cross another link
    (the word order differs) are highlighted.
    """
    names = ("source", "target")
    if source is None and target is None and links is None:
        source, target, links, names = _SOURCE, _TARGET, _LINKS, ("English (source)", "French (target)")
    if source is None or target is None or links is None:
        raise ValueError("draw_word_alignment: pass source, target and links together (or none of them)")
    for name, words in (("source", source), ("target", target)):
        if isinstance(words, str) or not words or not all(isinstance(w, str) and w for w in words):
            raise ValueError(f"{name} must be a non-empty sequence of non-empty strings (words), got {words!r}")
    pairs = []
    for link in links:
        if not isinstance(link, Sequence) or len(link) != 2:
            raise ValueError(f"each link must be a pair (source_index, target_index) of ints, got {link!r}")
        s, t = require_int(link[0], "a link's source_index", 0), require_int(link[1], "a link's target_index", 0)
        if not (0 <= s < len(source) and 0 <= t < len(target)):
            raise ValueError(f"link {link!r} is out of range: source has {len(source)} words, "
                             f"target has {len(target)}")
        pairs.append((s, t))
    crossing = {p for p in pairs for q in pairs if (p[0] - q[0]) * (p[1] - q[1]) < 0}

    n = max(len(source), len(target))
    width = min(10.0, max(6.0, 0.1 * sum(len(w) for w in max(source, target, key=len)) + 0.3 * n))
    below = f"{names[1]}: each word attends to the word(s) it translates"
    note = "crossing links: the word order differs" if crossing else ""
    one_line = width >= 0.075 * (len(below) + len(note)) + 0.8  # ~0.075 in per character at 9.5 pt
    fig, ax = canvas(width, 2.9 if one_line else 3.1, ALT["draw_word_alignment"], y0=0.0 if one_line else -0.2)
    ys, yt = 2.2, 0.75
    xs = _word_row(ax, source, ys, width, COLORS["key"])  # read words: what is attended to
    xt = _word_row(ax, target, yt, width, COLORS["query"])  # written words: what attends
    for s, t in pairs:
        cross = (s, t) in crossing
        ax.plot([xs[s], xt[t]], [ys - 0.18, yt + 0.18], color=COLORS["weights"] if cross else MUTED,
                lw=2.0 if cross else 1.2, solid_capstyle="round", zorder=1)
    label(ax, 0.2, ys + 0.42, f"{names[0]}: the sentence that is read", ha="left", size=9.5)
    label(ax, 0.2, yt - 0.42, below, ha="left", size=9.5)
    if note:
        label(ax, width - 0.2 if one_line else 0.2, yt - (0.42 if one_line else 0.7), note,
               ha="right" if one_line else "left", size=9.5, color=COLORS["weights"])
    return fig


def draw_encoder_decoder() -> Figure:
    """An RNN encoder-decoder whose only link is one fixed-size context vector: the bottleneck."""
    fig, ax = canvas(10.0, 3.5, ALT["draw_encoder_decoder"])
    y, w, h = 1.55, 0.62, 0.48
    enc = [0.75 + 1.05 * i for i in range(4)]
    dec = [7.05 + 1.05 * i for i in range(3)]
    for i, x in enumerate(enc):
        box(ax, x, y, w, h, f"$h_{i + 1}$")
        box(ax, x, 0.4, 0.5, 0.38, f"$x_{i + 1}$", fill="white")
        arrow(ax, (x, 0.59), (x, y - h / 2))
        if i:
            arrow(ax, (enc[i - 1] + w / 2, y), (x - w / 2, y))
    cx, cw, ch = 5.4, 1.2, 0.62
    box(ax, cx, y, cw, ch, "$c = h_4$", COLORS["context"], size=13, lw=2.2, fill=light(COLORS["context"], 0.6))
    label(ax, cx, y + 0.62, "fixed-size context vector c\n(D numbers)", color=COLORS["context"], size=9.5)
    arrow(ax, (enc[-1] + w / 2, y), (cx - cw / 2, y), COLORS["context"], lw=1.8)
    for i, x in enumerate(dec):
        box(ax, x, y, w, h, f"$s_{i + 1}$")
        box(ax, x, 2.75, 0.5, 0.38, f"$y_{i + 1}$", fill="white")
        arrow(ax, (x, y + h / 2), (x, 2.56))
        if i:
            arrow(ax, (dec[i - 1] + w / 2, y), (x - w / 2, y))
            # c feeds every decoder step: later steps get it from below
            route(ax, [(cx + 0.3, y - ch / 2), (cx + 0.3, 0.75), (x, 0.75), (x, y - h / 2)], COLORS["context"],
                   lw=1.5)
        else:
            arrow(ax, (cx + cw / 2, y), (x - w / 2, y), COLORS["context"], lw=1.5)
    label(ax, (enc[0] + enc[-1]) / 2, 3.3, "encoder: reads the whole input", size=10, color=INK)
    label(ax, (dec[0] + dec[-1]) / 2, 3.3, "decoder: writes the output", size=10, color=INK)
    label(ax, cx, 3.3, "the bottleneck", size=10, color=COLORS["context"], weight="bold")
    label(ax, (cx + 0.3 + dec[-1]) / 2, 0.55, "the same c at every step", size=8.5, color=COLORS["context"])
    return fig


# ---------------------------------------------------------------- chapter 05
_ALPHA = [0.1, 0.6, 0.2, 0.1]


def _attention_block(ax, ox, score_text, query):
    """Encoder states with their weight bars, the score box (query from above) and c_t; returns c_t's centre."""
    xs = [ox + 2.55 + 0.6 * j for j in range(4)]
    ax.add_patch(FancyBboxPatch((xs[0] - 0.33, 0.12), xs[-1] - xs[0] + 0.66, 1.5,
                                boxstyle="round,pad=0,rounding_size=0.08", facecolor="#f6f6f6",
                                edgecolor="#dddddd", lw=1.0, zorder=1))
    label(ax, (xs[0] + xs[-1]) / 2, 1.45, "weights $\\alpha_{tj}$", size=8.5, color=COLORS["weights"])
    for j, x in enumerate(xs):
        box(ax, x, 0.42, 0.5, 0.38, f"$h_{j + 1}$")
        bar = 0.5 * _ALPHA[j]
        ax.add_patch(Rectangle((x - 0.13, 0.78), 0.26, bar, facecolor=light(COLORS["weights"], 0.35),
                               edgecolor=COLORS["weights"], lw=1.0, zorder=3))
        label(ax, x, 0.78 + bar + 0.1, f"{_ALPHA[j]:.1f}", size=8.5, color=COLORS["weights"])
    label(ax, (xs[0] + xs[-1]) / 2, 0.02, "encoder states $h_j$ (keys and values)", size=8.5, va="top")
    sx = ox + 0.85
    box(ax, sx, 0.95, 1.6, 0.62, score_text, COLORS["weights"], size=8)
    arrow(ax, (sx + 0.8, 0.95), (xs[0] - 0.2, 0.95), COLORS["weights"])
    label(ax, (sx + 0.8 + xs[0] - 0.33) / 2, 1.1, "softmax", size=7.5, color=COLORS["weights"])
    box(ax, sx, 2.2, 0.8, 0.42, query, COLORS["query"], size=11)
    arrow(ax, (sx, 1.99), (sx, 1.26), COLORS["query"], ls="--")
    label(ax, sx + 0.08, 1.62, "query", size=8.5, color=COLORS["query"], ha="left")
    c = ((xs[0] + xs[-1]) / 2, 2.2)
    box(ax, *c, 1.4, 0.42, "$c_t = \\sum_j \\alpha_{tj} h_j$", COLORS["context"], size=9.5)
    arrow(ax, (c[0], 1.62), (c[0], c[1] - 0.21), COLORS["context"])
    return sx, c


def _panel_title(ax, x, y, title, subtitle):
    label(ax, x, y, title, size=10.5, color=INK)
    label(ax, x, y - 0.27, subtitle, size=9)


def draw_bahdanau_vs_luong() -> Figure:
    """Which decoder state queries, and where the context enters: Bahdanau vs Luong."""
    fig, ax = canvas(10.0, 5.3, ALT["draw_bahdanau_vs_luong"], y0=-0.2)
    # Bahdanau: the previous state queries; c_t is an input of the GRU, with e(y_{t-1})
    ox = 0.0
    sx, (cx, cy) = _attention_block(ax, ox, "additive score\n$v^\\top\\tanh(W s_{t-1} + U h_j)$", "$s_{t-1}$")
    box(ax, cx, 3.3, 1.6, 0.6, "GRU\ninput $[e(y_{t-1}); c_t]$", size=9)
    arrow(ax, (cx, cy + 0.21), (cx, 3.0), COLORS["context"])
    box(ax, ox + 4.6, 2.65, 0.72, 0.42, "$e(y_{t-1})$", size=9, fill="white")
    route(ax, [(ox + 4.6, 2.86), (ox + 4.6, 3.3), (cx + 0.8, 3.3)])
    route(ax, [(sx, 2.41), (sx, 3.3), (cx - 0.8, 3.3)])
    label(ax, sx - 0.08, 2.85, "recurrent\nstate", size=8, ha="right")
    box(ax, cx, 4.15, 0.7, 0.42, "$s_t$", size=11)
    arrow(ax, (cx, 3.6), (cx, 3.94))
    box(ax, ox + 4.55, 4.15, 0.7, 0.42, "$y_t$", size=11, fill="white")
    arrow(ax, (cx + 0.35, 4.15), (ox + 4.2, 4.15))
    _panel_title(ax, ox + 2.5, 4.9, "Bahdanau: the previous state $s_{t-1}$ queries",
                 "$c_t$ enters the GRU as an input")
    # Luong: the GRU runs first; the current state queries; c_t is combined with h_t after the GRU
    ox = 5.1
    sx, (cx, cy) = _attention_block(ax, ox, "general score\n$h_t^\\top W_a h_j$", "$h_t$")
    box(ax, sx, 3.3, 0.9, 0.45, "GRU", size=10.5)
    arrow(ax, (sx, 3.075), (sx, 2.41))
    box(ax, sx - 0.45, 4.15, 0.8, 0.42, "$e(y_{t-1})$", size=9, fill="white")
    box(ax, sx + 0.45, 4.15, 0.7, 0.42, "$h_{t-1}$", size=10, fill="white")
    arrow(ax, (sx - 0.45, 3.94), (sx - 0.2, 3.525))
    arrow(ax, (sx + 0.45, 3.94), (sx + 0.2, 3.525))
    box(ax, cx, 3.3, 1.95, 0.45, "$\\tilde h_t = \\tanh(W_c[c_t; h_t])$", COLORS["context"], size=9.5)
    arrow(ax, (cx, cy + 0.21), (cx, 3.075), COLORS["context"])
    route(ax, [(sx + 0.4, 2.2), (sx + 0.75, 2.2), (sx + 0.75, 3.3), (cx - 0.975, 3.3)])
    box(ax, cx, 4.15, 0.7, 0.42, "$y_t$", size=11, fill="white")
    arrow(ax, (cx, 3.525), (cx, 3.94))
    _panel_title(ax, ox + 2.5, 4.9, "Luong: the current state $h_t$ queries",
                 "$c_t$ joins $h_t$ after the GRU step")
    ax.plot([5.0, 5.0], [0.1, 5.1], color="#cccccc", lw=1.0)
    return fig


# ---------------------------------------------------------------- chapter 06
def draw_qkv_pipeline(T: int = 4, d_model: int = 8, d_k: int = 4) -> Figure:
    """X -> Q, K, V -> scaled scores -> row softmax -> weights -> weights @ V, with shapes."""
    T, d_model, d_k = require_int(T, "T"), require_int(d_model, "d_model"), require_int(d_k, "d_k")
    fig, ax = canvas(10.0, 3.9, ALT["draw_qkv_pipeline"])
    rows = {"Q": 3.1, "K": 1.95, "V": 0.8}
    box(ax, 0.65, rows["K"], 1.0, 0.9, f"$X$\n{T} × {d_model}", size=11)
    label(ax, 0.65, rows["K"] - 0.62, "(T × d_model)", size=8.5)
    for name, role in (("Q", "query"), ("K", "key"), ("V", "value")):
        y, c = rows[name], COLORS[role]
        arrow(ax, (1.15, rows["K"] + 0.2 * (rows[name] - rows["K"]) / 1.15), (1.85, y))
        box(ax, 2.3, y, 0.9, 0.6, f"$W_{name}$\n{d_model} × {d_k}", c, size=9.5)
        label(ax, 2.3, y - 0.42, "(d_model × d_k)", size=8)
        arrow(ax, (2.75, y), (3.25, y), c)
        box(ax, 3.7, y, 0.9, 0.6, f"${name}$\n{T} × {d_k}", c, size=10.5)
        label(ax, 3.7, y - 0.42, "(T × d_k)", size=8)
    sy, sx = (rows["Q"] + rows["K"]) / 2, 5.45
    box(ax, sx, sy, 1.5, 0.9, f"scores\n$QK^\\top/\\sqrt{{d_k}}$\n{T} × {T}", COLORS["weights"], size=9.5)
    label(ax, sx, sy - 0.62, "(T × T)", size=8)
    arrow(ax, (4.15, rows["Q"]), (sx - 0.75, sy + 0.2), COLORS["query"])
    arrow(ax, (4.15, rows["K"]), (sx - 0.75, sy - 0.2), COLORS["key"])
    label(ax, 4.45, sy, "$K^\\top$", size=9, color=COLORS["key"])
    wx = 7.55
    arrow(ax, (sx + 0.75, sy), (wx - 0.65, sy), COLORS["weights"])
    label(ax, (sx + wx) / 2 + 0.05, sy + 0.22, "softmax\n(each row)", size=8.5, color=COLORS["weights"])
    box(ax, wx, sy, 1.3, 0.9, f"weights\n{T} × {T}\nrows sum to 1", COLORS["weights"], size=9.5,
         fill=light(COLORS["weights"], 0.6))
    circle(ax, wx, rows["V"], 0.22, "@")
    arrow(ax, (wx, sy - 0.45), (wx, rows["V"] + 0.22), COLORS["weights"])
    arrow(ax, (4.15, rows["V"]), (wx - 0.22, rows["V"]), COLORS["value"])
    box(ax, 9.2, rows["V"], 1.2, 0.6, f"output\n{T} × {d_k}", size=10)
    label(ax, 9.2, rows["V"] - 0.42, "(T × d_k)", size=8)
    arrow(ax, (wx + 0.22, rows["V"]), (8.6, rows["V"]))
    label(ax, (wx + 8.6) / 2 + 0.1, rows["V"] + 0.2, "weights @ V", size=8, color=INK)
    return fig


# ---------------------------------------------------------------- chapter 07
def _grid(ax, x, y, T, heads, d, cell, *, gap=0.0, mix=False):
    """A T-row matrix with lower-left corner (x, y): d columns per head in ``heads``, ``gap`` between heads.

    Columns are coloured by head (grey when ``mix``: W_O has mixed them). Returns the drawn width.
    """
    cx = x
    for k, h in enumerate(heads):
        color = "#9a9a9a" if mix else _HEADS[h % len(_HEADS)]
        ax.add_patch(Rectangle((cx, y), d * cell, T * cell, facecolor=light(color, 0.45), edgecolor="none",
                               zorder=3))
        if cell >= 0.04:  # cell lines only while the cells are big enough to see
            for i in range(1, d):
                ax.plot([cx + i * cell] * 2, [y, y + T * cell], color="white", lw=0.6, zorder=4)
            for i in range(1, T):
                ax.plot([cx, cx + d * cell], [y + i * cell] * 2, color="white", lw=0.6, zorder=4)
        cx += d * cell + (gap if k < len(heads) - 1 else 0.0)
    return cx - x


def draw_split_merge_heads(B: int = 2, T: int = 5, D: int = 8, H: int = 2) -> Figure:
    """Split (B, T, D) into H heads of d = D // H features, attend per head, merge back, W_O."""
    B, T, D, H = (require_int(v, n) for v, n in ((B, "B"), (T, "T"), (D, "D"), (H, "H")))
    if D % H:
        raise ValueError(f"D={D} is not divisible by H={H}: each of the H heads gets d = D // H features, "
                         "so D must be a multiple of H")
    d, heads = D // H, range(H)
    # big tensors are drawn schematically: at most ~24 feature columns and a few rows (labels stay exact)
    dd, TT = (d if D <= 24 else max(1, 24 // H)), min(T, max(2, 16 // H))
    hgap, vgap = 0.08, min(0.15, 0.6 / max(H - 1, 1))
    # fixed widths (gaps, the head boxes, W_O) and cells: the row fits 10 in, the head stack ~2.3 in
    fixed = 5.55 + 2 * hgap * (H - 1)
    cell = min(0.13, (10.0 - fixed) / (5 * H * dd + 2 * dd), (2.3 - vgap * (H - 1)) / (H * TT))
    tall = TT * cell
    stack = H * tall + (H - 1) * vgap
    mid = 0.95 + stack / 2
    fig, ax = canvas(10.0, mid + stack / 2 + 0.95, ALT["draw_split_merge_heads"])
    heads_y = [mid + stack / 2 - tall - h * (tall + vgap) for h in heads]
    op_y = mid + stack / 2 + 0.22

    def caption(x, sym, nums):
        label(ax, x, 0.42, sym, size=9, color=INK)
        label(ax, x, 0.17, nums, size=8.5)

    def op(x0, x1, text):
        label(ax, (x0 + x1) / 2, op_y, text, size=8.5, color=INK, family="monospace")

    x = 0.25
    w = _grid(ax, x, mid - tall / 2, TT, heads, dd, cell)
    caption(x + w / 2, "(B, T, D)", f"({B}, {T}, {D})")
    x0, x = x + w, x + w + 0.6
    arrow(ax, (x0 + 0.05, mid), (x - 0.05, mid))
    op(x0, x, "view")
    w = _grid(ax, x, mid - tall / 2, TT, heads, dd, cell, gap=hgap)
    caption(x + w / 2, "(B, T, H, d)", f"({B}, {T}, {H}, {d})")
    x0, x = x + w, x + w + 0.75
    op(x0, x, "transpose\n(1, 2)")
    hw = dd * cell
    for h, hy in enumerate(heads_y):  # each head: its columns, its own attention, its output
        c = _HEADS[h % len(_HEADS)]
        arrow(ax, (x0 + 0.05, mid + tall / 2 - (h + 0.5) * tall / H), (x - 0.05, hy + tall / 2), c, lw=1.0)
        _grid(ax, x, hy, TT, [h], dd, cell)
        arrow(ax, (x + hw + 0.05, hy + tall / 2), (x + hw + 0.25, hy + tall / 2), c, lw=1.0)
        box(ax, x + hw + 0.625, hy + tall / 2, 0.75, max(min(tall, 0.36), 0.2),
             f"head {h + 1}" if H <= 4 else f"{h + 1}", c, size=8)
        arrow(ax, (x + hw + 1.0, hy + tall / 2), (x + hw + 1.2, hy + tall / 2), c, lw=1.0)
        _grid(ax, x + hw + 1.25, hy, TT, [h], dd, cell)
    caption(x + hw / 2, "(B, H, T, d)", f"({B}, {H}, {T}, {d})")
    label(ax, x + hw + 0.625, 0.3, "each head\nattends\nseparately", size=8.5, color=INK)
    caption(x + hw + 1.25 + hw / 2, "(B, H, T, d)", f"({B}, {H}, {T}, {d})")
    x0, x = x + 2 * hw + 1.25, x + 2 * hw + 1.25 + 0.75
    op(x0, x, "transpose\n(1, 2)")
    for h, hy in enumerate(heads_y):
        arrow(ax, (x0 + 0.05, hy + tall / 2), (x - 0.05, mid + tall / 2 - (h + 0.5) * tall / H),
               _HEADS[h % len(_HEADS)], lw=1.0)
    w = _grid(ax, x, mid - tall / 2, TT, heads, dd, cell, gap=hgap)
    caption(x + w / 2, "(B, T, H, d)", f"({B}, {T}, {H}, {d})")
    x0, x = x + w, x + w + 0.6
    arrow(ax, (x0 + 0.05, mid), (x - 0.05, mid))
    op(x0, x, "reshape")
    w = _grid(ax, x, mid - tall / 2, TT, heads, dd, cell)
    caption(x + w / 2, "(B, T, D)", f"({B}, {T}, {D})")
    x += w + 0.3
    arrow(ax, (x - 0.27, mid), (x - 0.03, mid))
    box(ax, x + 0.25, mid, 0.5, 0.45, "$W_O$", size=11)
    arrow(ax, (x + 0.53, mid), (x + 0.77, mid))
    x += 0.8
    w = _grid(ax, x, mid - tall / 2, TT, heads, dd, cell, mix=True)
    caption(x + w / 2, "(B, T, D)", "heads mixed")
    label(ax, 0.25, op_y + 0.45, f"One batch element of B = {B} shown. Colours: which of the D = {D} features go to "
           f"which of the H = {H} heads (d = D // H = {d} each)." + (" Drawn schematically." if (dd, TT) != (d, T) else ""),
           ha="left", size=9)
    return fig


# ---------------------------------------------------------------- chapter 08
_R = 1.3  # vector length in inches


def _polar(o, angle, r=_R):
    return o[0] + r * math.cos(angle), o[1] + r * math.sin(angle)


def _vector(ax, o, angle, color, text, *, r=_R, ls="-", lw=2.2):
    """An arrow of length ``r`` from ``o`` at ``angle`` (radians), labelled beyond its tip."""
    ax.add_patch(FancyArrowPatch(o, _polar(o, angle, r), arrowstyle="-|>", mutation_scale=15, color=color,
                                 lw=lw, linestyle=ls, shrinkA=0, shrinkB=0, zorder=3))
    if text:
        ha = "left" if math.cos(angle) >= 0 else "right"
        label(ax, *_polar(o, angle, r + 0.12), text, size=10, color=color, ha=ha)


def _angle(ax, o, a0, a1, r, color, text, label_r):
    """An arc from angle ``a0`` to ``a1`` around ``o``, labelled at radius ``label_r`` in its middle."""
    lo, hi = sorted((a0, a1))
    hi = lo + (hi - lo) % (2 * math.pi)
    ax.add_patch(Arc(o, 2 * r, 2 * r, theta1=math.degrees(lo), theta2=math.degrees(hi), color=color, lw=1.5,
                     zorder=3))
    label(ax, *_polar(o, (lo + hi) / 2, label_r), text, size=9.5, color=color)


def _plane(ax, o, x0, x1, y0, y1):
    """The feature plane's axes through ``o``, spanning x0..x1, y0..y1 (relative to ``o``)."""
    arrow(ax, (o[0] + x0, o[1]), (o[0] + x1, o[1]), "#aaaaaa", lw=0.9)
    arrow(ax, (o[0], o[1] + y0), (o[0], o[1] + y1), "#aaaaaa", lw=0.9)
    label(ax, o[0] + x1 + 0.05, o[1], "$x_{2i}$", ha="left", size=9)
    label(ax, o[0], o[1] + y1 + 0.03, "$x_{2i+1}$", va="bottom", size=9)


def draw_rope_rotation(position: int = 3, theta: float = 0.4) -> Figure:
    """RoPE on one feature pair: rotate by m*theta; q.k then depends only on (m - n)*theta."""
    m = require_int(position, "position", minimum=0)
    theta = require_positive_number(theta, "theta")
    n = m - 2 if m >= 2 else m + 2
    base = math.radians(15)
    angles = [base, base + m * theta, base + n * theta]
    # the plane's extent: room for every vector and its label, above and below the origin
    up = max(0.45, max(math.sin(a) for a in angles) * (_R + 0.35))
    down = max(0.3, -min(math.sin(a) for a in angles) * (_R + 0.35))
    fig, ax = canvas(10.0, up + down + 1.5, ALT["draw_rope_rotation"])
    for cx in (2.5, 7.5):
        o = (cx, 0.75 + down)
        _plane(ax, o, -1.7, 1.7, -down, up)
    top = 0.75 + down + up + 0.5
    o = (2.5, 0.75 + down)
    _vector(ax, o, base, MUTED, "", ls="--", lw=1.6)
    label(ax, o[0] + 0.75 * _R, o[1] - 0.08, "$x$ (position 0)", va="top", size=10)
    _vector(ax, o, base + m * theta, COLORS["query"], f"$R_{{{m}}}\\,x$")
    _angle(ax, o, base, base + m * theta, 0.5, COLORS["query"], f"$m\\theta$ = {m}×{theta:g}\n= {m * theta:.2f} rad", 0.95)
    label(ax, 2.5, top, f"position m = {m}: rotate the pair ($x_{{2i}}, x_{{2i+1}}$) by $m\\theta$", size=10.5,
           color=INK)
    label(ax, 2.5, 0.3, "$R_m x = (x_{2i}\\cos m\\theta - x_{2i+1}\\sin m\\theta,\\;"
           "x_{2i}\\sin m\\theta + x_{2i+1}\\cos m\\theta)$", size=9, color=INK)
    o = (7.5, 0.75 + down)
    _vector(ax, o, base, "#aaaaaa", "", ls="--", lw=1.2)
    label(ax, o[0] + 0.75 * _R, o[1] - 0.08, "q and k before rotation", va="top", size=8.5, color="#999999")
    _vector(ax, o, base + m * theta, COLORS["query"], f"$q$ at m = {m}")
    _vector(ax, o, base + n * theta, COLORS["key"], f"$k$ at n = {n}", r=0.8 * _R)
    _angle(ax, o, base + n * theta, base + m * theta, 0.85, COLORS["weights"], "$(m-n)\\theta$", 1.02)
    label(ax, 7.5, top, "query at m, key at n: the angle between them is $(m-n)\\theta$", size=10.5, color=INK)
    label(ax, 7.5, 0.3, "$q\\cdot k = |q|\\,|k|\\cos((m-n)\\theta)$: shift m and n together, nothing changes",
           size=9, color=INK)
    ax.plot([5.0, 5.0], [0.1, top + 0.1], color="#cccccc", lw=1.0)
    return fig


# ---------------------------------------------------------------- chapter 10
def _chain(ax, y, items, residual_from):
    """A left-to-right chain of (kind, text) items at height ``y``; a residual arrow from just after each
    item index in ``residual_from`` around the sublayer to the next '+'."""
    widths = {"io": 0.4, "+": 0.36, "ln": 1.0, "mha": 1.4, "ffn": 1.3}
    colors = {"ln": COLORS["norm"], "mha": COLORS["weights"], "ffn": COLORS["ffn"]}
    xs, x = [], 0.4
    for kind, _ in items:
        xs.append(x + widths[kind] / 2)
        x += widths[kind] + 0.45
    for i, (kind, text) in enumerate(items):
        cx, w = xs[i], widths[kind]
        if kind == "+":
            circle(ax, cx, y, 0.18, "+", size=12)
        elif kind == "io":
            label(ax, cx, y, text, size=12, color=INK)
        else:
            box(ax, cx, y, w, 0.55, text, colors[kind], size=9.5)
        if i:
            arrow(ax, (xs[i - 1] + widths[items[i - 1][0]] / 2 + 0.03, y), (cx - w / 2 - 0.03, y))
    plus = [i for i, (k, _) in enumerate(items) if k == "+"]
    for n, (start, p) in enumerate(zip(residual_from, plus)):
        sx = xs[start] + widths[items[start][0]] / 2 + 0.2
        ax.add_patch(Circle((sx, y), 0.045, color=INK, zorder=4))
        route(ax, [(sx, y), (sx, y + 0.6), (xs[p], y + 0.6), (xs[p], y + 0.18)], MUTED, lw=1.4)
        if n == 0:
            label(ax, (sx + xs[p]) / 2, y + 0.68, "residual (skip) path", size=8, va="bottom")


def draw_pre_post_norm() -> Figure:
    """Post-norm (x -> sublayer -> add -> LayerNorm) above pre-norm (x -> LayerNorm -> sublayer -> add)."""
    fig, ax = canvas(10.0, 4.05, ALT["draw_pre_post_norm"], y0=0.3)
    mha, ffn, ln, add = ("mha", "multi-head\nattention"), ("ffn", "feed-forward"), ("ln", "LayerNorm"), ("+", "")
    y = 3.15
    label(ax, 0.2, y + 1.05, "Post-norm (original Transformer): sublayer → add → LayerNorm", ha="left", size=10.5,
           color=INK)
    _chain(ax, y, [("io", "$x$"), mha, add, ln, ffn, add, ln, ("io", "out")], (0, 3))
    label(ax, 0.2, y - 0.5, "LayerNorm sits on the residual path: every sum is re-normalised before it "
           "reaches the next sublayer.", ha="left", size=9)
    y = 1.0
    label(ax, 0.2, y + 1.05, "Pre-norm (GPT-2): LayerNorm → sublayer → add", ha="left", size=10.5, color=INK)
    _chain(ax, y, [("io", "$x$"), ln, mha, add, ln, ffn, add, ("io", "out")], (0, 3))
    label(ax, 0.2, y - 0.5, "The residual path is additions only: a clean route from input to output "
           "(GPT-2 adds one final LayerNorm after the last block).", ha="left", size=9)
    return fig
