"""Part III's diagrams (chapters 11-13): one per application model, drawn with the kit of ``attn_course.diagrams``.

Each public ``draw_*`` function returns the ``Figure``; ``ALT[name]`` is its alt text (the chapter
cells copy it into their metadata) and the figure's label. Colours: queries blue, keys orange,
values green, attention weights purple, context magenta, other states grey.
"""

from __future__ import annotations

from matplotlib.figure import Figure
from matplotlib.patches import Rectangle

from attn_course.diagrams import COLORS, INK, MUTED, arrow, box, canvas, label, light, route

__all__ = ["ALT", "draw_attention_pooling", "draw_story_reader", "draw_sentence_scorer", "draw_vit",
           "draw_part_pooling", "draw_captioner", "draw_object_queries", "draw_vit_segmenter", "draw_listen_attend_spell", "draw_sasrec", "draw_gat"]


ALT = {
    "draw_attention_pooling": (
        "Word embeddings of a review go through a per-word layer; a learned query vector scores every word, "
        "a softmax turns the scores into weights, and the weighted sum of the words is classified. The cue "
        "word 'loved' gets the tallest weight bar; the mean-pooling baseline gives every word the same bar."
    ),
    "draw_story_reader": (
        "Each story sentence, a person and a room plus its time step, becomes a memory vector. The question "
        "'Where is Mary?' is the query; it scores every memory, the softmax weights pick the supporting "
        "sentence, and the read-out with the question predicts the room."
    ),
    "draw_sentence_scorer": (
        "A document's sentences are each averaged from their word vectors; attention pooling with a learned "
        "query weights the sentences to classify the topic, and the sentences with the largest weights are "
        "copied out as the extractive summary."
    ),
    "draw_vit": (
        "An 8 by 8 digit is cut into 16 patches of 2 by 2 pixels; each patch is projected to a token, a "
        "class token is put in front, position embeddings are added, two Transformer blocks let every token "
        "attend to every other, and the class token's final state is classified."
    ),
    "draw_part_pooling": (
        "An image goes through two convolutions to a feature map; attention pooling with a learned query "
        "puts its weight on the few positions of the small distinguishing part, while global average "
        "pooling spreads equal weight over the whole map."
    ),
    "draw_captioner": (
        "A scene with a red square and a blue disk becomes a grid of CNN features with positions. A GRU "
        "decoder writes the caption 'red square blue disk'; before each word its previous state queries the "
        "grid, and the weights, drawn over the image, light up the shape that the next word names."
    ),
    "draw_object_queries": (
        "A convolutional backbone turns the scene into a grid of features with position embeddings. A few "
        "learned object queries cross-attend to the grid; each query's output predicts one class and one "
        "box, and the Hungarian algorithm matches predictions to the true objects for the loss."
    ),
    "draw_vit_segmenter": (
        "An 8 by 8 image with a larger and a smaller shape is cut into 16 patches of 2 by 2 pixels; each patch "
        "becomes a token with its position, two Transformer blocks let every patch token attend to every "
        "other, and a linear head turns each final token into the class logits of its own 4 pixels: a mask "
        "of the larger shape. The baseline keeps only the blocks' MLP sublayers, so no patch sees another."
    ),
    "draw_listen_attend_spell": (
        "Audio frames are stacked in pairs and read by a GRU listener into a shorter sequence of states. "
        "The speller emits one label per step; its previous state queries the listener states with an "
        "additive score, and the context vector feeds the next label. The weights move monotonically "
        "along the frames."
    ),
    "draw_sasrec": (
        "A user's history of items, each an item embedding plus a position embedding, goes through causal "
        "Transformer blocks; the last position's state is scored against every item embedding to recommend "
        "the next item, and its attention weights show which past items it used."
    ),
    "draw_gat": (
        "A node i and its neighbours j. Each pair gets a score LeakyReLU of a_dst times W h_i plus a_src "
        "times W h_j; a softmax over the neighbourhood gives the weights alpha_ij, drawn as edge widths, and "
        "the new state of i is the weighted sum of W h_j. Mean aggregation would give every edge 1 over the degree."
    ),
}


def _pooling_row(ax, words, weights, *, y=0.55, x0=0.7, step=0.85, color=COLORS["state"]):
    """Word boxes on a row, weight bars above them; returns the x centres."""
    xs = [x0 + step * k for k in range(len(words))]
    for x, w, v in zip(xs, words, weights):
        box(ax, x, y, 0.72, 0.38, w, color, size=8.5)
        ax.add_patch(Rectangle((x - 0.13, y + 0.32), 0.26, 1.0 * v, facecolor=light(COLORS["weights"], 0.35),
                               edgecolor=COLORS["weights"], lw=1.0, zorder=3))
    return xs


def draw_attention_pooling() -> Figure:
    """Attention pooling: a learned query weights the words, the weighted sum is classified."""
    fig, ax = canvas(10.0, 3.6, ALT["draw_attention_pooling"])
    words = ["the", "plot", "w17", "but", "I", "loved", "it"]
    w = [0.04, 0.05, 0.04, 0.05, 0.04, 0.72, 0.06]
    xs = _pooling_row(ax, words, w, x0=0.6, step=0.8)
    label(ax, (xs[0] + xs[-1]) / 2, 0.15, "words (embedding + per-word layer): keys and values", size=8.5)
    label(ax, xs[5], 1.45, "cue word", color=COLORS["context"], size=8.5)
    box(ax, 6.75, 2.9, 1.1, 0.45, "query $q$", COLORS["query"], size=9.5)
    label(ax, 6.75, 3.3, "learned, one for all inputs", size=8)
    arrow(ax, (6.2, 2.9), (xs[-1] + 0.3, 1.6), COLORS["query"], ls="--")
    label(ax, 5.2, 2.55, "scores $q \\cdot W_k x_t / \\sqrt{D}$\n→ softmax = weights", color=COLORS["weights"], size=8.5)
    box(ax, 7.95, 1.1, 1.3, 0.55, "$\\sum_t \\alpha_t x_t$", COLORS["context"], size=9.5)
    arrow(ax, (xs[-1] + 0.4, 0.85), (7.3, 1.0), COLORS["value"])
    box(ax, 9.3, 1.1, 0.9, 0.5, "label", size=9.5, fill="white")
    arrow(ax, (8.6, 1.1), (8.85, 1.1))
    label(ax, 8.6, 2.1, "baseline: mean pooling,\nevery $\\alpha_t = 1/T$", size=8.5, color=INK)
    return fig


def draw_story_reader() -> Figure:
    """A one-hop memory network: the question attends over the story's sentences."""
    fig, ax = canvas(9.0, 3.8, ALT["draw_story_reader"])
    story = ["Mary went to the kitchen.", "John went to the garden.", "Mary went to the office.",
             "Sandra went to the hallway."]
    w = [0.05, 0.03, 0.88, 0.04]
    for k, (s, v) in enumerate(zip(story, w)):
        y = 3.1 - 0.72 * k
        box(ax, 1.55, y, 2.8, 0.46, s, size=8.5)
        box(ax, 3.9, y, 0.9, 0.42, f"$m_{k + 1}$", COLORS["key"], size=9)
        arrow(ax, (2.95, y), (3.45, y))
        ax.add_patch(Rectangle((4.5, y - 0.14), 1.3 * v, 0.28, facecolor=light(COLORS["weights"], 0.35),
                               edgecolor=COLORS["weights"], lw=1.0, zorder=3))
        label(ax, 4.5 + 1.3 * v + 0.25, y, f"{v:.2f}", color=COLORS["weights"], size=8.5)
    label(ax, 1.55, 3.6, "story sentences → memories (person, room, time)", size=8.5)
    label(ax, 5.1, 3.6, "weights", color=COLORS["weights"], size=8.5)
    box(ax, 7.6, 3.1, 1.6, 0.46, "Where is Mary?", COLORS["query"], size=9)
    arrow(ax, (6.8, 3.1), (6.1, 2.2), COLORS["query"], ls="--")
    label(ax, 7.35, 2.5, "query: scores\nevery memory", color=COLORS["query"], size=8.5)
    box(ax, 7.6, 1.1, 1.6, 0.5, "read = $\\sum_t \\alpha_t W_v m_t$", COLORS["context"], size=8.5)
    arrow(ax, (6.0, 1.0), (6.8, 1.1), COLORS["value"])
    box(ax, 7.6, 0.3, 1.1, 0.4, "office", size=9.5, fill="white")
    arrow(ax, (7.6, 0.85), (7.6, 0.5))
    return fig


def draw_sentence_scorer() -> Figure:
    """Attention over sentences: the topic classifier's weights pick the summary."""
    fig, ax = canvas(9.0, 3.4, ALT["draw_sentence_scorer"])
    w = [0.04, 0.41, 0.05, 0.04, 0.42, 0.04]
    xs = [0.8 + 1.0 * k for k in range(len(w))]
    for k, (x, v) in enumerate(zip(xs, w)):
        key = v > 0.2
        box(ax, x, 0.6, 0.82, 0.5, f"sentence\n{k + 1}", COLORS["context"] if key else COLORS["state"], size=8)
        ax.add_patch(Rectangle((x - 0.13, 0.95), 0.26, 1.6 * v, facecolor=light(COLORS["weights"], 0.35),
                               edgecolor=COLORS["weights"], lw=1.0, zorder=3))
    label(ax, 3.3, 0.1, "sentence vector = mean of its word vectors; magenta: a planted key fact", size=8.5)
    box(ax, 7.5, 2.8, 1.2, 0.45, "query $q$", COLORS["query"], size=9.5)
    arrow(ax, (6.9, 2.75), (6.2, 2.0), COLORS["query"], ls="--")
    box(ax, 7.9, 1.55, 1.5, 0.5, "topic classifier", size=8.5)
    arrow(ax, (6.3, 0.9), (7.15, 1.45), COLORS["value"])
    box(ax, 7.9, 0.55, 1.5, 0.5, "summary =\ntop-k weights", COLORS["weights"], size=8.5)
    arrow(ax, (7.9, 1.3), (7.9, 0.8), COLORS["weights"])
    label(ax, 3.3, 3.1, "trained only to name the topic; the weights then rank the sentences",
           color=INK, size=9)
    return fig


def draw_vit() -> Figure:
    """Patches → tokens, class token, positions, Transformer blocks, class-token head."""
    fig, ax = canvas(10.0, 3.4, ALT["draw_vit"])
    for r in range(4):
        for c in range(4):
            ax.add_patch(Rectangle((0.3 + 0.3 * c, 2.3 - 0.3 * r), 0.28, 0.28, facecolor=light(COLORS["state"], 0.5),
                                   edgecolor="white", lw=1.0, zorder=3))
    label(ax, 0.9, 0.95, "8×8 digit,\n16 patches of 2×2", size=8.5)
    arrow(ax, (1.6, 2.0), (2.1, 2.0))
    box(ax, 2.85, 2.0, 1.3, 0.6, "patch embedding\n$W_E$: 4 → D", size=8.5)
    arrow(ax, (3.5, 2.0), (3.95, 2.0))
    xs = [4.3 + 0.42 * k for k in range(6)]
    box(ax, xs[0], 2.0, 0.36, 0.5, "cls", COLORS["query"], size=7.5)
    for x in xs[1:5]:
        box(ax, x, 2.0, 0.36, 0.5, "", size=7.5)
    label(ax, xs[5], 2.0, "…", size=12, color=INK)
    label(ax, (xs[0] + xs[-1]) / 2, 2.55, "+ position embeddings", size=8)
    label(ax, (xs[0] + xs[-1]) / 2, 1.45, "1 + 16 tokens", size=8)
    arrow(ax, (6.65, 2.0), (7.05, 2.0))
    box(ax, 7.65, 2.0, 1.1, 0.9, "Transformer\nblock ×2\n(self-attention)", COLORS["weights"], size=8.5)
    arrow(ax, (8.2, 2.0), (8.6, 2.0))
    box(ax, 9.25, 2.0, 1.0, 0.6, "cls state\n→ digit", COLORS["query"], size=8.5)
    label(ax, 5.0, 0.45, "the class token attends to every patch: its weights are the attention map drawn later",
           size=8.5, color=INK)
    return fig


def draw_part_pooling() -> Figure:
    """A feature map pooled by attention (weight on the part) or by the global mean."""
    fig, ax = canvas(9.0, 3.2, ALT["draw_part_pooling"])
    for name, x0, hot in (("attention pooling", 3.3, True), ("global average pooling", 6.3, False)):
        for r in range(5):
            for c in range(5):
                v = (0.9 if (r, c) == (1, 3) else 0.02) if hot else 0.3
                ax.add_patch(Rectangle((x0 + 0.32 * c, 2.3 - 0.32 * r), 0.3, 0.3,
                                       facecolor=light(COLORS["weights"], 1 - v), edgecolor="#cccccc", lw=0.6, zorder=3))
        label(ax, x0 + 0.8, 2.85, name, size=9, color=INK)
        box(ax, x0 + 0.8, 0.35, 1.5, 0.4, "pooled → class", COLORS["context"], size=8.5)
        arrow(ax, (x0 + 0.8, 1.0), (x0 + 0.8, 0.55), COLORS["context"])
    box(ax, 1.2, 1.7, 1.6, 0.7, "image → 2 convs\n→ feature map", size=8.5)
    arrow(ax, (2.0, 1.8), (3.2, 2.0))
    arrow(ax, (2.0, 1.6), (6.2, 1.4))
    label(ax, 1.2, 0.8, "the part: a 3×3 stroke", size=8.5)
    return fig


def draw_captioner() -> Figure:
    """Show, attend and tell: the decoder state queries the feature grid before each word."""
    fig, ax = canvas(10.0, 3.6, ALT["draw_captioner"])
    box(ax, 0.9, 1.7, 1.3, 0.9, "scene\n(16×16)", size=9, fill="white")
    arrow(ax, (1.55, 1.7), (2.0, 1.7))
    box(ax, 2.75, 1.7, 1.3, 0.7, "conv backbone\n+ positions", size=8.5)
    arrow(ax, (3.4, 1.7), (3.9, 1.7), COLORS["key"])
    hot = {(1, 0), (1, 1), (2, 0), (2, 1)}
    for r in range(4):
        for c in range(4):
            v = 0.55 if (r, c) in hot else 0.02
            ax.add_patch(Rectangle((4.0 + 0.25 * c, 1.2 + 0.25 * r), 0.23, 0.23,
                                   facecolor=light(COLORS["weights"], 1 - v), edgecolor=COLORS["key"], lw=0.6, zorder=3))
    label(ax, 4.5, 0.9, "feature grid (keys, values);\npurple: weights for 'square'", size=8)
    words = ["red", "square", "blue", "disk"]
    xs = [6.0 + 1.0 * k for k in range(4)]
    for k, (x, w) in enumerate(zip(xs, words)):
        box(ax, x, 2.9, 0.8, 0.4, f"$s_{k + 1}$", size=9)
        box(ax, x, 1.7, 0.8, 0.4, w, COLORS["context"] if k == 1 else COLORS["state"], size=8.5, fill="white")
        arrow(ax, (x, 2.7), (x, 1.9))
        if k:
            arrow(ax, (xs[k - 1] + 0.4, 2.9), (x - 0.4, 2.9))
    arrow(ax, (xs[0] + 0.1, 3.1), (5.05, 2.1), COLORS["query"], ls="--")
    label(ax, 5.3, 3.3, "previous state = query", color=COLORS["query"], size=8.5)
    label(ax, 7.5, 0.9, "context $c_t$ and previous word feed the GRU;\nbaseline: the grid's mean at every word",
           size=8, color=INK)
    return fig


def draw_object_queries() -> Figure:
    """DETR-style: learned object queries cross-attend to the feature grid, one box each."""
    fig, ax = canvas(10.0, 3.6, ALT["draw_object_queries"])
    box(ax, 0.9, 1.8, 1.3, 0.9, "scene\n(16×16)", size=9, fill="white")
    arrow(ax, (1.55, 1.8), (2.0, 1.8))
    box(ax, 2.75, 1.8, 1.3, 0.7, "conv backbone\n+ positions", size=8.5)
    arrow(ax, (3.4, 1.8), (3.9, 1.8), COLORS["key"])
    for r in range(4):
        for c in range(4):
            ax.add_patch(Rectangle((4.0 + 0.25 * c, 1.3 + 0.25 * r), 0.23, 0.23, facecolor=light(COLORS["key"], 0.6),
                                   edgecolor="white", lw=0.8, zorder=3))
    label(ax, 4.5, 1.0, "feature grid: keys, values", size=8, color=COLORS["key"])
    for k in range(3):
        box(ax, 6.1, 2.9 - 0.55 * k, 1.0, 0.38, f"query {k}", COLORS["query"], size=8.5)
    label(ax, 6.1, 3.35, "learned object queries", size=8, color=COLORS["query"])
    box(ax, 6.1, 0.9, 1.3, 0.55, "cross-attention\n(MultiHeadAttention)", COLORS["weights"], size=8)
    arrow(ax, (5.05, 1.6), (5.45, 1.0), COLORS["key"])
    arrow(ax, (6.1, 1.7), (6.1, 1.18), COLORS["query"])
    arrow(ax, (6.75, 0.9), (7.3, 0.9))
    for k in range(3):
        box(ax, 8.2, 2.4 - 0.55 * k, 1.5, 0.38, f"class {k}, box {k}", size=8)
    arrow(ax, (7.3, 0.9), (7.5, 1.3))
    box(ax, 8.2, 0.45, 1.6, 0.45, "Hungarian matching\nto the true objects", COLORS["context"], size=8)
    return fig


def _pixel_grid(ax, x0, y0, on, color, cell=0.12):
    """An 8x8 image of ``cell``-inch pixels (``on``: the lit (row, col) pixels), 2x2 patches outlined."""
    for r in range(8):
        for c in range(8):
            ax.add_patch(Rectangle((x0 + cell * c, y0 + cell * (7 - r)), cell, cell, edgecolor="white", lw=0.4,
                                   facecolor=light(color, 0.1) if (r, c) in on else "#f2f2f2", zorder=3))
    for r in range(4):
        for c in range(4):
            ax.add_patch(Rectangle((x0 + 2 * cell * c, y0 + 2 * cell * r), 2 * cell, 2 * cell, fill=False,
                                   edgecolor=MUTED, lw=0.7, zorder=4))


def draw_vit_segmenter() -> Figure:
    """A ViT's patch tokens, each decoded by a linear head into its own pixels' classes."""
    fig, ax = canvas(10.0, 3.6, ALT["draw_vit_segmenter"])
    big = {(r, c) for r in range(4) for c in range(4)}  # a 4x4 square: the larger shape
    small = {(r, c) for r in range(5, 8) for c in range(5, 8)}  # a 3x3 square
    _pixel_grid(ax, 0.3, 1.6, big | small, COLORS["state"])
    label(ax, 0.78, 1.3, "8×8 image,\n16 patches of 2×2", size=8.5)
    arrow(ax, (1.35, 2.08), (1.75, 2.08))
    box(ax, 2.45, 2.08, 1.3, 0.6, "patch embedding\n+ positions", size=8.5)
    arrow(ax, (3.1, 2.08), (3.45, 2.08))
    xs = [3.75 + 0.42 * k for k in range(5)]
    for x in xs[:4]:
        box(ax, x, 2.08, 0.36, 0.5, "", size=7.5)
    label(ax, xs[4], 2.08, "…", size=12, color=INK)
    label(ax, (xs[0] + xs[-1]) / 2, 2.6, "16 patch tokens\n(no class token)", size=8)
    arrow(ax, (5.85, 2.08), (6.2, 2.08))
    box(ax, 6.8, 2.08, 1.1, 0.9, "Transformer\nblock ×2\n(self-attention)", COLORS["weights"], size=8.5)
    arrow(ax, (7.35, 2.08), (7.65, 2.08))
    box(ax, 8.2, 2.08, 1.0, 0.75, "linear head\nper token:\n2 classes × 2×2", COLORS["query"], size=8)
    arrow(ax, (8.7, 2.08), (8.95, 2.08))
    _pixel_grid(ax, 9.0, 1.6, big, COLORS["weights"], cell=0.115)
    label(ax, 9.46, 1.3, "mask of\nthe larger", size=8.5)
    box(ax, 6.8, 0.75, 1.9, 0.55, "MLP sublayers only\n(no patch sees another)", size=8, ls="--")
    route(ax, [(4.8, 1.83), (4.8, 0.75), (5.85, 0.75)], MUTED)
    route(ax, [(7.75, 0.75), (8.2, 0.75), (8.2, 1.7)], MUTED)
    label(ax, 2.7, 0.75, "baseline: each patch is labelled from its own\n4 pixels and its position alone", size=8,
          color=INK)
    label(ax, 5.0, 3.1, "every patch token attends to every other: a patch of the large square can see the small one",
          size=8.5, color=INK)
    return fig


def draw_listen_attend_spell() -> Figure:
    """Frames → listener states (pairs) → speller with additive attention."""
    fig, ax = canvas(10.0, 3.8, ALT["draw_listen_attend_spell"])
    for k in range(12):
        ax.add_patch(Rectangle((0.4 + 0.38 * k, 0.25), 0.3, 0.45, facecolor=light(COLORS["state"], 0.5),
                               edgecolor="white", zorder=3))
    label(ax, 2.6, 0.05, "audio frames (features per time step)", size=8)
    xs = [0.74 + 0.76 * k for k in range(6)]
    for x in xs:
        arrow(ax, (x, 0.72), (x, 1.05))
        box(ax, x, 1.3, 0.55, 0.45, "$h_j$", COLORS["key"], size=9)
    label(ax, 5.3, 1.3, "listener: pairs of frames → GRU\n(half the time steps)", size=8, ha="left")
    w = [0.05, 0.08, 0.72, 0.1, 0.03, 0.02]
    for x, v in zip(xs, w):
        ax.add_patch(Rectangle((x - 0.12, 1.6), 0.24, 0.8 * v, facecolor=light(COLORS["weights"], 0.35),
                               edgecolor=COLORS["weights"], lw=1.0, zorder=3))
    box(ax, 7.3, 3.0, 1.0, 0.45, "$s_{t-1}$", COLORS["query"], size=9.5)
    box(ax, 8.9, 3.0, 1.0, 0.45, "$s_t$ → label", size=9)
    arrow(ax, (7.8, 3.0), (8.4, 3.0))
    arrow(ax, (6.8, 2.9), (xs[2] + 0.3, 2.1), COLORS["query"], ls="--")
    label(ax, 5.3, 2.75, "additive score (library BahdanauDecoder)", color=COLORS["weights"], size=8.5)
    box(ax, 7.3, 1.9, 1.2, 0.45, "context $c_t$", COLORS["context"], size=9)
    arrow(ax, (xs[3] + 0.3, 1.8), (6.7, 1.9), COLORS["context"])
    arrow(ax, (7.9, 2.1), (8.6, 2.78), COLORS["context"])
    label(ax, 8.8, 1.3, "baseline: one fixed $c$\n(the last listener state)", size=8, color=INK)
    return fig


def draw_sasrec() -> Figure:
    """Causal self-attention over a purchase history; the last state scores every item."""
    fig, ax = canvas(10.0, 3.4, ALT["draw_sasrec"])
    items = ["17", "52", "18", "53", "19", "54"]
    xs = [0.7 + 0.95 * k for k in range(len(items))]
    w = [0.03, 0.05, 0.08, 0.12, 0.62, 0.10]
    for x, it, v in zip(xs, items, w):
        box(ax, x, 0.55, 0.7, 0.42, f"item {it}", size=8.5)
        ax.add_patch(Rectangle((x - 0.12, 0.85), 0.24, 1.1 * v, facecolor=light(COLORS["weights"], 0.35),
                               edgecolor=COLORS["weights"], lw=1.0, zorder=3))
    label(ax, 2.9, 0.1, "history: item + position embeddings (two interleaved series)", size=8.5)
    box(ax, 6.9, 2.6, 1.7, 0.6, "causal Transformer\nblocks ×2", COLORS["weights"], size=8.5)
    arrow(ax, (xs[-1] + 0.2, 0.8), (6.7, 2.28))
    label(ax, 4.2, 2.35, "the last position attends\nto the past only", color=COLORS["weights"], size=8.5)
    box(ax, 9.0, 2.6, 1.5, 0.6, "· item embeddings\n→ top-10", COLORS["query"], size=8.5)
    arrow(ax, (7.75, 2.6), (8.25, 2.6))
    box(ax, 9.0, 1.3, 1.5, 0.6, "next: item 20", size=9, fill="white")
    arrow(ax, (9.0, 2.3), (9.0, 1.6))
    label(ax, 8.0, 0.55, "baselines: best sellers;\nwhat followed the last item", size=8, color=INK)
    return fig


def draw_gat() -> Figure:
    """A node, its neighbours, GAT scores and weights as edge widths."""
    fig, ax = canvas(9.0, 3.8, ALT["draw_gat"])
    cx, cy = 2.2, 1.9
    nbrs = [(0.6, 3.1, 0.55, True), (3.8, 3.1, 0.05, False), (0.5, 0.7, 0.06, False), (3.9, 0.7, 0.27, True),
            (2.2, 3.5, 0.07, False)]
    for x, y, v, good in nbrs:
        ax.plot([cx, x], [cy, y], color=COLORS["weights"], lw=0.6 + 10 * v, alpha=0.75, zorder=1)
        box(ax, x, y, 0.75, 0.4, "$h_j$", COLORS["value"] if good else COLORS["state"], size=9)
        label(ax, (cx + x) / 2 + 0.15, (cy + y) / 2 + 0.12, f"{v:.2f}", color=COLORS["weights"], size=8.5)
    box(ax, cx, cy, 0.75, 0.45, "$h_i$", COLORS["query"], size=10)
    label(ax, 6.6, 3.2, "$e_{ij} = \\mathrm{LeakyReLU}(a_{dst}^\\top W h_i + a_{src}^\\top W h_j)$",
           size=10, color=INK)
    label(ax, 6.6, 2.5, "$\\alpha_{ij} = \\mathrm{softmax}_{j \\in N(i)}\\, e_{ij}$   (edge width)",
           size=10, color=COLORS["weights"])
    label(ax, 6.6, 1.8, "$h_i' = \\sum_{j \\in N(i)} \\alpha_{ij} W h_j$", size=10, color=COLORS["context"])
    label(ax, 6.6, 0.9, "green: informative neighbours; grey: noise\nmean aggregation: every $\\alpha_{ij}$ = 1 / degree",
           size=8.5)
    return fig
