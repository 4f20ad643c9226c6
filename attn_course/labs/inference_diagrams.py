"""Conceptual diagrams for Part IV (inference): decoding, the KV cache and how to shrink it.

Same conventions as every part's diagrams: each public ``draw_*`` function returns the
``matplotlib.figure.Figure`` it drew (a cell ``draw_prefill_decode();`` shows it), ``ALT[name]``
is its alt text (the chapters copy it into the cell metadata) and the figure's label, data
units are inches, the axes are off, and colours mean the same thing as there
(``attn_course.diagrams.COLORS``: queries blue, keys orange, values green, attention weights
purple, other states grey).

Drawn with the kit of ``attn_course.diagrams`` (``box``, ``arrow``, ``label``, ``canvas``, ...).

Dimension glossary (as in the library): B batch, T prompt length, t tokens so far, H query
heads, H_kv key/value heads, W sliding window, P block (page) size.
"""

from __future__ import annotations

import math

import matplotlib.pyplot as plt
from matplotlib.figure import Figure
from matplotlib.patches import Circle, Wedge

from attn_course._validation import require_int
from attn_course.diagrams import COLORS, INK, MUTED, arrow, box, canvas, label, light, rect

__all__ = [
    "ALT",
    "CACHE_STEP_SIZE",
    "draw_decoding_loop",
    "draw_prefill_decode",
    "draw_cache_step",
    "draw_gqa_heads",
    "draw_sliding_window_ring",
    "draw_paged_cache",
    "draw_ring_buffer_step",
    "draw_paging_step",
    "draw_weight_mapping",
]

NEW = COLORS["context"]  # magenta: what this step computes (the new token)

ALT = {
    "draw_decoding_loop": (
        "The autoregressive loop: the tokens so far go into the model, which outputs a probability "
        "distribution over the next token; a sampler (greedy, temperature, top-k or top-p) picks one "
        "token, which is appended to the sequence and fed back in for the next step."
    ),
    "draw_prefill_decode": (
        "Two panels. Prefill: all T prompt tokens go through the model in one pass; their keys and "
        "values are computed and written to the cache. Decode: one new token is computed; its query "
        "attends over keys and values read from the cache, and its own key and value are appended."
    ),
    "draw_cache_step": (
        "One step of generation with a preallocated cache. Left: one layer's key and value slots; the "
        "positions cached before this call are pale, the ones this call writes are magenta, the rest are "
        "empty. Right: this call's queries (rows, at their positions) against every key it attends over "
        "(columns): a cell is filled where the query may see the key, that is where the key's position is "
        "not after the query's."
    ),
    "draw_gqa_heads": (
        "Three panels of eight query heads each, connected to their key/value heads: multi-head "
        "attention has eight KV heads (one per query head), grouped-query attention has two (each shared "
        "by a group of four query heads), multi-query attention has one shared by all eight."
    ),
    "draw_sliding_window_ring": (
        "A ring buffer of W slots around a circle. Position p is stored in slot p mod W, so the newest "
        "position overwrites the oldest; the slots always hold the last W positions, which is exactly "
        "what a sliding-window mask lets the newest query see."
    ),
    "draw_paged_cache": (
        "Two sequences' block tables point into a pool of fixed-size physical blocks. Both sequences "
        "start with the same prompt, so their first table entries point to the same full blocks, "
        "each with reference count 2; their later blocks are their own, and a shared block that one "
        "of them writes into is copied first (copy on write)."
    ),
    "draw_ring_buffer_step": (
        "A ring buffer of W = 5 slots while decoding, one frame per step. Position p is written to slot "
        "p mod 5: the ring fills for five steps, then each new position overwrites the oldest one, which "
        "has just left the window. Beside the ring, the positions so far (the last five, the window, "
        "highlighted) and the keys update returns, in slot order rather than time order."
    ),
    "draw_paging_step": (
        "A paged cache during a forked generation, one frame per step: three sequences' block tables and "
        "a pool of blocks of 2 slots with their reference counts. The prompt's blocks are shared after the "
        "fork (reference count 3); at the first decode step two sequences copy the half-full shared block "
        "(copy on write) and the third writes in place; later steps take free blocks as sequences fill "
        "their last one."
    ),
    "draw_weight_mapping": (
        "Hugging Face GPT-2 parameter names on the left mapped to the course's GPT on the right: "
        "wte, wpe and ln_f keep their names; each block's attn.c_attn becomes attn.qkv and "
        "attn.c_proj becomes attn.out, and these and the MLP's weights are transposed, because GPT-2's "
        "Conv1D stores (in, out) while nn.Linear stores (out, in); lm_head is tied to wte."
    ),
}


# ---------------------------------------------------------------- chapter 14
def draw_decoding_loop(tokens: tuple[str, ...] = ("<bos>", "(", "[", "]")) -> Figure:
    """Tokens so far -> model -> next-token distribution -> sampler -> appended token -> again."""
    if not tokens or not all(isinstance(t, str) and t for t in tokens):
        raise ValueError(f"tokens must be a non-empty tuple of non-empty strings, got {tokens!r}")
    fig, ax = canvas(9.5, 3.2, ALT["draw_decoding_loop"])
    y = 2.35
    x = 0.45
    for tok in tokens:
        box(ax, x, y, 0.5, 0.42, tok, size=9, lw=1.2, rounding=0.05)
        x += 0.56
    box(ax, x, y, 0.5, 0.42, "?", NEW, size=10, ls="--", lw=1.2, rounding=0.05)
    label(ax, (0.2 + x + 0.25) / 2, y + 0.45, "the tokens so far, and the next one", size=9)
    mx = x + 1.35
    arrow(ax, (x + 0.3, y), (mx - 0.55, y), lw=1.2, mutation_scale=10)
    box(ax, mx, y, 1.1, 0.7, "GPT\n(causal)", size=10, lw=1.2, rounding=0.05)
    # the distribution: a small bar chart
    bx, by = mx + 1.2, y - 0.3
    probs = [0.05, 0.1, 0.55, 0.25, 0.05]
    for i, p in enumerate(probs):
        ax.add_patch(plt.Rectangle((bx + i * 0.2, by), 0.15, p * 1.1, facecolor=light(COLORS["weights"], 0.4),
                                   edgecolor=COLORS["weights"], lw=0.8, zorder=3))
    arrow(ax, (mx + 0.55, y), (bx - 0.05, y), lw=1.2, mutation_scale=10)
    label(ax, bx + 0.5, by - 0.2, "p(next | so far)", size=8.5, color=COLORS["weights"])
    sx = bx + 2.0
    arrow(ax, (bx + 1.05, y), (sx - 0.6, y), COLORS["weights"], lw=1.2, mutation_scale=10)
    box(ax, sx, y, 1.2, 0.7, "sampler\ngreedy, T,\ntop-k, top-p", COLORS["weights"], size=8.5, lw=1.2, rounding=0.05)
    # back to the sequence
    arrow(ax, (sx, y - 0.35), (x, y - 0.21), NEW, lw=1.6, rad=-0.35, mutation_scale=10)
    label(ax, (sx + x) / 2, 0.55, "append the chosen token, run again: one model call per generated token",
          size=9.5, color=NEW)
    return fig


# ---------------------------------------------------------------- chapter 15
def draw_prefill_decode(prompt_len: int = 4) -> Figure:
    """Prefill (the prompt in one pass, K/V written) beside decode (one token, K/V read + appended)."""
    T = require_int(prompt_len, "prompt_len")
    if T > 6:
        raise ValueError(f"prompt_len must be at most 6 to fit the figure, got {T}")
    fig, ax = canvas(10.0, 3.9, ALT["draw_prefill_decode"])
    w = 0.42
    for panel, ox in (("prefill", 0.3), ("decode", 5.3)):
        decode = panel == "decode"
        n = T + 1 if decode else T
        label(ax, ox + 2.1, 3.65, "prefill: the whole prompt, one pass" if not decode
              else "decode: one new token per step", size=10.5, color=INK, weight="bold")
        for i in range(n):
            x = ox + 0.3 + i * (w + 0.12)
            new = (not decode) or i == n - 1
            c = NEW if new else MUTED
            box(ax, x, 0.45, w, 0.36, f"$x_{{{i + 1}}}$", c if new else COLORS["state"],
                  fill=light(c, 0.75) if new else "white", size=9, lw=1.2, rounding=0.05)
            # the key and value column of each position, in the cache
            for row, role in ((2.15, "key"), (1.65, "value")):
                computed = new
                box(ax, x, row, w, 0.36, ("k" if role == "key" else "v") + f"$_{{{i + 1}}}$", COLORS[role],
                      fill=light(COLORS[role], 0.55 if computed else 0.9), lw=2.0 if computed else 1.0,
                      ls="-" if computed else ":", size=9, rounding=0.05)
            if new:
                arrow(ax, (x, 0.63), (x, 1.47), NEW, lw=1.0, mutation_scale=10)
                box(ax, x, 2.75, w, 0.36, f"q$_{{{i + 1}}}$", COLORS["query"], size=9, lw=1.2, rounding=0.05)
        x_last = ox + 0.3 + (n - 1) * (w + 0.12)
        label(ax, ox - 0.05, 1.9, "cache", size=8.5, rotation=90)
        if decode:
            # the new query reads every cached key and value
            box(ax, ox + 0.3 + (T - 1) * (w + 0.12) / 2, 1.9, T * (w + 0.12) + 0.02, 1.05, "", MUTED,
                  fill="none", ls="--", lw=1.0, size=9.5, rounding=0.05)
            arrow(ax, (x_last - 0.15, 2.57), (ox + 0.3 + (T - 1) * (w + 0.12), 2.4), COLORS["query"], rad=0.25, lw=1.2, mutation_scale=10)
            label(ax, ox + 2.35, 3.2, f"q$_{{{n}}}$ reads all {n} keys and values;\n"
                  f"only k$_{{{n}}}$, v$_{{{n}}}$ are computed (and appended)", size=8.5, color=INK)
        else:
            label(ax, ox + 2.1, 3.2, f"{T} queries, {T} keys and values computed at once\n"
                  "(causal mask); K and V written to the cache", size=8.5, color=INK)
    label(ax, 5.0, 0.08, "solid, strong colour: computed this step;  dotted: read from the cache", size=8.5)
    return fig


CACHE_STEP_SIZE = (9.0, 3.4)  # inches: the figure ``draw_cache_step`` draws on (a slider's figsize)


def draw_cache_step(filled: int = 6, new: int = 1, capacity: int = 8, allowed=None,
                    fig: Figure | None = None) -> Figure:
    """One call of the model with a preallocated cache: what the cache holds after it, and its mask.

    Args:
        filled: positions the cache holds after the call; ``new`` of them were written by it (the
            queries of this call are positions ``filled - new .. filled - 1``).
        capacity: the preallocated slots (``StaticCache(max_len=capacity)``).
        allowed: the call's ``(new, filled)`` mask (nested lists or a boolean tensor, ``True`` = the
            query may see the key), e.g. from ``GPT._attention_mask``; ``None``: the causal rule
            ``key position <= query position``.
        fig: draw on this empty figure (a slider frame, ``CACHE_STEP_SIZE`` inches); ``None``: a new one.
    """
    S, T, C = require_int(filled, "filled"), require_int(new, "new"), require_int(capacity, "capacity")
    if T > S or S > C or C > 12:
        raise ValueError(f"need new <= filled <= capacity <= 12, got new = {T}, filled = {S}, capacity = {C}")
    past = S - T
    grid = [[k <= q for k in range(S)] for q in range(past, S)]  # (T, S): the causal rule
    if allowed is not None:
        rows = allowed.tolist() if hasattr(allowed, "tolist") else allowed
        if len(rows) != T or any(len(r) != S for r in rows):
            raise ValueError(f"allowed must be ({T}, {S}) = (new, filled), got {len(rows)} rows")
        grid = [[bool(a) for a in r] for r in rows]
    width, height = CACHE_STEP_SIZE
    if fig is None:
        fig, ax = canvas(width, height, ALT["draw_cache_step"])
    else:
        fig.set_layout_engine("none")
        fig.set_label(ALT["draw_cache_step"])
        ax = fig.add_axes((0, 0, 1, 1))
        ax.set_xlim(0, width)
        ax.set_ylim(0, height)
        ax.set_axis_off()
    if past == 0:
        what = f"prefill: {T} tokens in one pass, causal mask"
    elif T == 1:
        what = "decode: 1 token, its query sees every cached key"
    else:
        what = f"{T} tokens after {past} cached: the causal mask shifted by {past}"
    label(ax, width / 2, height - 0.22, what, size=10.5, color=INK, weight="bold")
    # left: one layer's key and value slots
    w, x0 = 0.4, 0.75
    label(ax, x0 + C * w / 2, height - 0.62, f"cache (one layer): {S} of {C} slots filled", size=9)
    for y, role, letter in ((1.95, "key", "k"), (1.4, "value", "v")):
        label(ax, x0 - 0.3, y + w / 2, letter.upper(), size=10, color=COLORS[role])
        for i in range(C):
            x = x0 + i * w
            if i < past:
                rect(ax, x, y, w, w, COLORS[role], amount=0.8)
            elif i < S:
                rect(ax, x, y, w, w, NEW, amount=0.5, lw=1.6)
            else:
                rect(ax, x, y, w, w, MUTED, amount=1.0, edge="0.75")
            if i < S:
                label(ax, x + w / 2, y + w / 2, f"{letter}$_{{{i}}}$", size=8, color=INK)
    for i in range(C):
        label(ax, x0 + i * w + w / 2, 1.18, str(i), size=7.5)
    label(ax, x0 + C * w / 2, 0.92, "position", size=8)
    label(ax, x0 + C * w / 2, 0.45, "pale: cached before this call;  magenta: written by it;  white: empty",
          size=8)
    # right: this call's queries against the keys
    cell = min(0.3, 2.9 / max(S, 1), 1.9 / T)
    gx = 5.7
    top = height - 0.95
    label(ax, gx + S * cell / 2, height - 0.62, "queries of this call x keys attended", size=9)
    for r in range(T):
        y = top - (r + 1) * cell
        label(ax, gx - 0.2, y + cell / 2, f"q$_{{{past + r}}}$", size=8, color=COLORS["query"])
        for k in range(S):
            if grid[r][k]:
                rect(ax, gx + k * cell, y, cell, cell, COLORS["weights"], amount=0.45)
            else:
                rect(ax, gx + k * cell, y, cell, cell, MUTED, amount=1.0, edge="0.8")
    for k in range(S):
        label(ax, gx + k * cell + cell / 2, top - T * cell - 0.14, str(k), size=7, color=COLORS["key"])
    label(ax, gx + S * cell / 2, top - T * cell - 0.38, "key position", size=8)
    return fig


# ---------------------------------------------------------------- chapter 16
_GROUP_COLORS = ["#1b7837", "#d9730d", "#762a83", "#2166ac", "#c51b7d", "#35978f", "#b8860b", "#4d4d4d"]


def draw_gqa_heads(num_heads: int = 8, kv_heads: tuple[int, ...] = (8, 2, 1)) -> Figure:
    """Query heads over their shared key/value heads: MHA (H_kv = H), GQA, MQA (H_kv = 1)."""
    H = require_int(num_heads, "num_heads")
    if H > 8 or not kv_heads or any(require_int(k, "kv_heads") > H or H % k for k in kv_heads):
        raise ValueError(f"num_heads <= 8 and each of kv_heads must divide it; got {H}, {kv_heads!r}")
    fig, ax = canvas(10.0, 3.0, ALT["draw_gqa_heads"])
    pw = 10.0 / len(kv_heads)
    for p, H_kv in enumerate(kv_heads):
        ox = p * pw
        name = "MHA" if H_kv == H else "MQA" if H_kv == 1 else "GQA"
        label(ax, ox + pw / 2, 2.75, f"{name}: {H} query heads, {H_kv} KV head{'s' if H_kv > 1 else ''}",
              size=10, color=INK, weight="bold")
        step = (pw - 0.4) / H
        qx = [ox + 0.2 + step * (i + 0.5) for i in range(H)]
        group = H // H_kv
        kx = [sum(qx[g * group:(g + 1) * group]) / group for g in range(H_kv)]
        for i, x in enumerate(qx):
            c = _GROUP_COLORS[i // group]
            box(ax, x, 2.15, min(0.3, step * 0.8), 0.36, f"q{i}", COLORS["query"], size=7.5, lw=1.2, rounding=0.05)
            arrow(ax, (x, 1.97), (kx[i // group], 1.13), c, lw=1.0, head=False, mutation_scale=10)
        kw = min(0.9, max(0.3, step * group * 0.8))
        for g, x in enumerate(kx):
            box(ax, x, 0.95, kw, 0.36, f"k{g}" if kw < 0.5 else f"k{g}, v{g}", COLORS["key"], size=7.5, lw=1.2, rounding=0.05)
        label(ax, ox + pw / 2, 0.4, f"cache: {H_kv}/{H} of MHA's", size=9,
              color=COLORS["key"] if H_kv < H else MUTED)
    return fig


def draw_sliding_window_ring(window: int = 6, position: int = 9) -> Figure:
    """A ring of ``window`` slots after ``position + 1`` tokens: slot ``p % W`` holds position ``p``."""
    W = require_int(window, "window")
    p = require_int(position, "position", minimum=0)
    if not 3 <= W <= 12:
        raise ValueError(f"window must be in [3, 12] to fit the figure, got {W}")
    fig, ax = canvas(8.0, 3.4, ALT["draw_sliding_window_ring"])
    cx, cy, r = 1.8, 1.65, 1.15
    for s in range(W):
        held = max(q for q in range(p + 1 - W, p + 1) if q % W == s) if p + 1 >= W or s <= p else None
        a0 = 90 - 360 * (s + 1) / W
        newest = held == p
        c = NEW if newest else COLORS["key"]
        ax.add_patch(Wedge((cx, cy), r, a0, a0 + 360 / W, width=0.5, facecolor=light(c, 0.5 if newest else 0.85),
                           edgecolor="white" if held is not None else MUTED, lw=2, zorder=3))
        mid = math.radians(a0 + 180 / W)
        label(ax, cx + (r - 0.25) * math.cos(mid), cy + (r - 0.25) * math.sin(mid),
              "-" if held is None else f"{held}", size=9, color=INK, zorder=4)
        label(ax, cx + (r + 0.2) * math.cos(mid), cy + (r + 0.2) * math.sin(mid), f"slot {s}", size=7.5)
    ax.add_patch(Circle((cx, cy), r - 0.5, facecolor="white", edgecolor="none", zorder=3))
    label(ax, cx, cy, f"W = {W}\nslots", size=9, color=INK, zorder=4)
    # the same thing as a sliding-window mask row
    x0, y0 = 3.7, 2.0
    label(ax, x0, 2.95, f"query at position {p} with a sliding-window mask (W = {W}):", ha="left", size=9.5,
          color=INK)
    n = p + 1
    cell = min(0.3, 4.1 / n)
    for q in range(n):
        seen = p - W < q <= p
        box(ax, x0 + cell * (q + 0.5), y0 + 0.4, cell * 0.9, 0.3, "", COLORS["key"] if seen else MUTED,
              fill=light(NEW if q == p else COLORS["key"], 0.5 if q == p else 0.8) if seen else "white", lw=0.8, size=9.5, rounding=0.05)
        label(ax, x0 + cell * (q + 0.5), y0 + 0.05, f"{q}", size=7)
    label(ax, x0, 1.35, f"keys {max(0, p - W + 1)} .. {p} are attended: exactly the ring's contents.\n"
          f"Position p lives in slot p mod {W}, so writing position {p}\n"
          f"overwrote position {p - W}, which the mask hides anyway.\n"
          "Memory: W slots, however long the text.", ha="left", va="top", size=8.5)
    return fig


def draw_paged_cache(block_size: int = 4) -> Figure:
    """Two sequences sharing a prompt's blocks through their block tables (reference counts)."""
    P = require_int(block_size, "block_size")
    if P > 6:
        raise ValueError(f"block_size must be at most 6 to fit the figure, got {P}")
    fig, ax = canvas(10.0, 3.8, ALT["draw_paged_cache"])
    pool_x = [4.6 + 0.72 * i for i in range(7)]
    owner = {0: "shared", 1: "shared", 2: "A", 3: None, 4: "B", 5: None, 6: "B"}
    fill_of = {0: P, 1: P, 2: 2, 4: P, 6: 1}
    colour = {"shared": COLORS["weights"], "A": COLORS["key"], "B": COLORS["value"], None: MUTED}
    top, slot = 2.95, 0.26
    label(ax, 4.3, 3.6, f"physical blocks (the pool), {P} token slots each", ha="left", size=10, color=INK,
          weight="bold")
    for b, x in enumerate(pool_x):
        who = owner[b]
        for s in range(P):
            used = who is not None and s < fill_of[b]
            box(ax, x, top - s * slot, 0.55, slot * 0.85, "", colour[who],
                  fill=light(colour[who], 0.55) if used else "white", lw=0.8, size=9.5, rounding=0.05)
        ref = 2 if who == "shared" else 1 if who else 0
        label(ax, x, top + 0.3, f"#{b}  " + (f"ref {ref}" if ref else "free"), size=8, color=INK)
    bottom = top - (P - 1) * slot - slot * 0.45
    tables = {"A": (1.3, [0, 1, 2]), "B": (0.45, [0, 1, 4, 6])}
    for name, (y, blocks) in tables.items():
        c = colour[name]
        label(ax, 0.25, y + 0.33, f"sequence {name}: block table", ha="left", size=9.5, color=c)
        for j, b in enumerate(blocks):
            x = 0.5 + j * 0.55
            box(ax, x, y, 0.45, 0.32, f"{b}", c, size=9, lw=1.2, rounding=0.05)
            arrow(ax, (x + 0.22, y), (pool_x[b] + (-0.1 if name == "A" else 0.1), bottom), c, lw=0.9,
                  rad=0.2, mutation_scale=10)
    label(ax, 0.25, 2.75, "Blocks 0 and 1 hold the common prompt:\nstored once, shared (ref 2).\n"
          "A write into a shared, partly filled block\ncopies it first (copy on write).\n"
          "Waste per sequence: at most one partly\nfilled block, not a max_len reservation.",
          ha="left", va="center", size=8.5)
    return fig


def _canvas_on(fig: Figure | None, width: float, height: float, alt: str):
    """``canvas``, or the same on a figure that a slider player gives (``interactive.slider_figure``)."""
    if fig is None:
        return canvas(width, height, alt)
    fig.set_label(alt)
    fig.set_layout_engine("none")  # the axes fill the figure: nothing to lay out
    ax = fig.add_axes((0, 0, 1, 1))
    ax.set_xlim(0, width)
    ax.set_ylim(0, height)
    ax.set_axis_off()
    return fig, ax


def draw_ring_buffer_step(step=None, fig: Figure | None = None) -> Figure:
    """One step of a real ``SlidingWindowCache`` (a ``cache_shrinking.RingStep``): the ring, the window, the keys returned.

    ``step`` defaults to position 7 of ``trace_ring_buffer(window=5)``; ``fig``: draw on this
    (empty) figure instead of a new one (a slider frame). Figure size 8 x 3.4 inches.
    """
    if step is None:
        from attn_course.labs.cache_shrinking import trace_ring_buffer

        step = trace_ring_buffer(5, 8)[-1]
    p, W = step.position, step.window
    if not 3 <= W <= 12:
        raise ValueError(f"window must be in [3, 12] to fit the figure, got {W}")
    fig, ax = _canvas_on(fig, 8.0, 3.4, ALT["draw_ring_buffer_step"])
    cx, cy, r = 1.55, 1.6, 1.15
    for s, held in enumerate(step.slots):
        a0 = 90 - 360 * (s + 1) / W
        newest = held == p
        c = NEW if newest else COLORS["key"]
        ax.add_patch(Wedge((cx, cy), r, a0, a0 + 360 / W, width=0.5,
                           facecolor=light(c, 0.5 if newest else 0.85) if held is not None else "white",
                           edgecolor="white" if held is not None else MUTED, lw=2, zorder=3))
        mid = math.radians(a0 + 180 / W)
        label(ax, cx + (r - 0.25) * math.cos(mid), cy + (r - 0.25) * math.sin(mid),
              "-" if held is None else f"{held}", size=10, color=INK, zorder=4)
        label(ax, cx + (r + 0.22) * math.cos(mid), cy + (r + 0.22) * math.sin(mid), f"slot {s}", size=7.5)
    ax.add_patch(Circle((cx, cy), r - 0.5, facecolor="white", edgecolor="none", zorder=3))
    label(ax, cx, cy, f"W = {W}\nslots", size=9, color=INK, zorder=4)
    label(ax, cx, 0.12, f"position {p} -> slot {p} mod {W} = {p % W}", size=9, color=NEW)
    # the positions so far: the window (what the newest query sees) and what is gone
    x0 = 3.3
    label(ax, x0, 3.15, f"position {p}: its query sees keys {max(0, p - W + 1)} .. {p}", ha="left", size=9.5,
          color=INK)
    label(ax, 7.9, 3.15, f"W = {W} keys, itself included", ha="right", size=8.5)
    cell = min(0.36, 4.5 / (p + 1))
    for q in range(p + 1):
        seen = q > p - W
        c = NEW if q == p else COLORS["key"] if seen else MUTED
        box(ax, x0 + cell * (q + 0.5), 2.6, cell * 0.88, 0.34, f"{q}" if cell > 0.25 else "", c,
            fill=light(c, 0.5 if q == p else 0.82) if seen else "white", lw=0.9, size=8, rounding=0.04)
    label(ax, x0, 2.2, "orange: in the window, so in the ring" + (";  grey: overwritten, gone" if p >= W else ""),
          ha="left", size=8.5)
    # what update returns: the ring in slot order
    label(ax, x0, 1.75, "update returns the ring in slot order (key_positions):", ha="left", size=9.5, color=INK)
    for s, q in enumerate(step.returned):
        c = NEW if q == p else COLORS["key"]
        box(ax, x0 + 0.25 + 0.5 * s, 1.3, 0.42, 0.34, f"{q}", c, fill=light(c, 0.5 if q == p else 0.82),
            size=9, lw=1.0, rounding=0.04)
        label(ax, x0 + 0.25 + 0.5 * s, 0.98, f"slot {s}", size=7)
    if p < W:
        note = f"the ring is filling: {p + 1} of {W} slots written, nothing overwritten yet"
    else:
        note = f"position {p} overwrote position {p - W}, which had just left the window"
    label(ax, x0, 0.55, note, ha="left", size=9, color=INK)
    return fig


_SEQ_COLORS = [COLORS["key"], COLORS["value"], COLORS["query"], COLORS["norm"]]


def draw_paging_step(step=None, fig: Figure | None = None) -> Figure:
    """One step of a forked generation in a real ``PagedCache`` (a ``cache_shrinking.PagingStep``).

    Block tables on the left, the pool of blocks (slots, reference counts) on the right, what the
    step did below. ``step`` defaults to the first decode step of ``trace_forked_paging()``
    (copy on write); ``fig``: draw on this (empty) figure (a slider frame). 10 x 4.2 inches.
    """
    if step is None:
        from attn_course.labs.cache_shrinking import trace_forked_paging

        step = trace_forked_paging()[2]
    P, tables = step.block_size, step.block_tables
    if P > 4 or len(tables) > len(_SEQ_COLORS) or len(step.ref_counts) > 12:
        raise ValueError("draw_paging_step fits block_size <= 4, at most 4 sequences and 12 blocks")
    fig, ax = _canvas_on(fig, 10.0, 4.2, ALT["draw_paging_step"])
    label(ax, 0.2, 3.95, step.label, ha="left", size=10.5, color=INK, weight="bold")

    def colour(block: int) -> str:
        if step.ref_counts[block] > 1:
            return COLORS["weights"]  # shared
        owners = [b for b, t in enumerate(tables) if block in t]
        return _SEQ_COLORS[owners[0]] if owners else MUTED

    for b, table in enumerate(tables):
        y = 3.3 - 0.6 * b
        label(ax, 0.2, y, f"sequence {b}", ha="left", size=9, color=_SEQ_COLORS[b])
        for j, block in enumerate(table):
            c = colour(block)
            box(ax, 1.35 + 0.42 * j, y, 0.36, 0.32, f"{block}", c, size=9, lw=1.2, rounding=0.04)
    label(ax, 0.2, 3.3 - 0.6 * len(tables) + 0.15, "block tables: entry j is the block holding\n"
          f"positions {P}j .. {P}j + {P - 1} of that sequence", ha="left", size=8, va="top")
    # the pool
    x0, top, slot = 4.0, 3.3, 0.34
    label(ax, x0 - 0.2, 3.6, f"the pool: {len(step.ref_counts)} blocks of {P} slots (numbers: positions held)",
          ha="left", size=9.5, color=INK)
    for block, ref in enumerate(step.ref_counts):
        x = x0 + 0.5 * block
        c = colour(block) if ref else MUTED
        for s in range(P):
            held = step.contents[block][s]
            box(ax, x, top - 0.35 - s * slot, 0.4, slot * 0.88, "" if held is None else f"{held}", c,
                fill=light(c, 0.6) if held is not None else "white", lw=0.9, size=8.5, rounding=0.03)
        label(ax, x, top, f"#{block}", size=8, color=INK)
        label(ax, x, top - 0.35 - P * slot + 0.05, f"ref {ref}" if ref else "free", size=7.5,
              color=c if ref else MUTED)
    in_use = sum(1 for r in step.ref_counts if r)
    label(ax, x0 - 0.2, 1.85, f"purple: shared (reference count > 1).  Blocks in use: {in_use}; "
          f"copies on write so far: {step.copies_on_write}", ha="left", size=9, color=INK)
    for i, event in enumerate(step.events[:3]):
        label(ax, 0.2, 1.0 - 0.3 * i, event, ha="left", size=9, color=NEW)
    return fig


# ---------------------------------------------------------------- chapter 17
_MAPPING = [
    ("transformer.wte.weight  (V, D)", "wte.weight", False),
    ("transformer.wpe.weight  (T, D)", "wpe.weight", False),
    ("h.i.attn.c_attn.weight  (D, 3D)", "h.i.attn.qkv.weight  (3D, D)", True),
    ("h.i.attn.c_proj.weight  (D, D)", "h.i.attn.out.weight", True),
    ("h.i.mlp.c_fc.weight  (D, 4D)", "h.i.mlp.c_fc.weight  (4D, D)", True),
    ("h.i.mlp.c_proj.weight  (4D, D)", "h.i.mlp.c_proj.weight  (D, 4D)", True),
    ("h.i.ln_1, ln_2, ln_f", "h.i.ln_1, ln_2, ln_f", False),
    ("lm_head.weight", "tied: = wte.weight", False),
]


def draw_weight_mapping() -> Figure:
    """Hugging Face GPT-2 names -> the course's GPT names; Conv1D weights are transposed."""
    fig, ax = canvas(9.5, 3.6, ALT["draw_weight_mapping"])
    label(ax, 2.1, 3.35, "Hugging Face GPT2LMHeadModel", size=10, color=INK, weight="bold")
    label(ax, 7.3, 3.35, "attn_course.gpt.GPT", size=10, color=INK, weight="bold")
    for i, (theirs, ours, transpose) in enumerate(_MAPPING):
        y = 2.95 - i * 0.37
        c = COLORS["key"] if transpose else COLORS["state"]
        box(ax, 2.1, y, 3.6, 0.3, theirs, c, size=8.5, lw=1.2, rounding=0.05)
        box(ax, 7.3, y, 3.6, 0.3, ours, c, size=8.5, lw=1.2, rounding=0.05)
        arrow(ax, (3.9, y), (5.5, y), c, lw=1.2, mutation_scale=10)
        if transpose:
            label(ax, 4.7, y + 0.1, ".t()", size=8, color=COLORS["key"])
    label(ax, 4.75, 0.05, "orange: Conv1D stores (in, out), nn.Linear (out, in): transpose", size=8.5,
          color=COLORS["key"], va="bottom")
    return fig
