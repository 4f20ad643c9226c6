"""The drawing kit of the course's conceptual diagrams: colours and matplotlib primitives.

A diagram is a ``canvas`` (a figure whose data units are inches, labelled with its alt text)
with ``box``, ``rect``, ``circle``, ``arrow``, ``route`` and ``label`` drawn on it. Each part's
diagrams live beside its labs and draw with this kit only: ``labs.foundations_diagrams``
(Parts I-II), ``labs.applications_diagrams`` (III), ``labs.inference_diagrams`` (IV),
``labs.efficiency_diagrams`` (V).

Colours mean the same thing in every diagram (``COLORS``): queries blue, keys orange, values
green, attention weights purple, context vectors magenta, other states grey.
"""

from __future__ import annotations

import matplotlib.pyplot as plt
from matplotlib.colors import to_rgb
from matplotlib.patches import Circle, FancyArrowPatch, FancyBboxPatch, Rectangle
from matplotlib.path import Path

__all__ = ["COLORS", "INK", "MUTED", "light", "canvas", "box", "rect", "circle", "arrow", "route", "label"]

COLORS = {
    "query": "#2166ac",  # blue
    "key": "#d9730d",  # orange
    "value": "#1b7837",  # green
    "weights": "#762a83",  # purple
    "context": "#c51b7d",  # magenta
    "state": "#4d4d4d",  # grey: hidden states, inputs, outputs
    "norm": "#b8860b",  # dark gold: LayerNorm
    "ffn": "#35978f",  # teal: feed-forward
}
INK = "#222222"
MUTED = "#666666"


# ---------------------------------------------------------------- primitives
def light(color: str, amount: float = 0.82) -> tuple[float, float, float]:
    """``color`` mixed with white (``amount`` = share of white): box fills."""
    r, g, b = to_rgb(color)
    return (r + (1 - r) * amount, g + (1 - g) * amount, b + (1 - b) * amount)


def canvas(width: float, height: float, alt: str, y0: float = 0.0):
    """A figure whose data units are inches (y from ``y0``): one axes over the whole figure, axis
    off; ``alt`` (the alt text) is the figure's label."""
    fig = plt.figure(figsize=(width, height))
    fig.set_label(alt)
    ax = fig.add_axes((0, 0, 1, 1))
    ax.set_xlim(0, width)
    ax.set_ylim(y0, y0 + height)
    ax.set_axis_off()
    return fig, ax


def box(ax, x, y, w, h, text="", color=COLORS["state"], *, size=10, fill=None, lw=1.3, ls="-", rounding=0.06):
    """A rounded box centred at (x, y), ``w`` by ``h`` inches, edged in ``color``, with ``text`` in it."""
    ax.add_patch(FancyBboxPatch((x - w / 2, y - h / 2), w, h, boxstyle=f"round,pad=0,rounding_size={rounding}",
                                facecolor=light(color) if fill is None else fill, edgecolor=color,
                                linewidth=lw, linestyle=ls, zorder=3))
    if text:
        ax.text(x, y, text, ha="center", va="center", fontsize=size, color=INK, zorder=4)


def rect(ax, x, y, w, h, color, *, amount=0.82, lw=0.8, edge=None, hatch=None):
    """A square-cornered cell (a matrix entry, a cache block) with lower-left corner (x, y)."""
    ax.add_patch(Rectangle((x, y), w, h, facecolor=light(color, amount), edgecolor=edge or color,
                           linewidth=lw, hatch=hatch, zorder=3))


def circle(ax, x, y, r, text, color=COLORS["state"], *, size=11):
    """A white circle (an operation: +, @) centred at (x, y)."""
    ax.add_patch(Circle((x, y), r, facecolor="white", edgecolor=color, linewidth=1.3, zorder=3))
    ax.text(x, y, text, ha="center", va="center", fontsize=size, color=INK, zorder=4)


def arrow(ax, start, end, color=INK, *, lw=1.3, ls="-", rad=0.0, head=True, mutation_scale=11):
    """An arrow from ``start`` to ``end`` (exactly: no shrinking, so it touches the boxes); ``rad``
    bends it, ``head=False`` draws a plain line."""
    ax.add_patch(FancyArrowPatch(start, end, arrowstyle="-|>" if head else "-", mutation_scale=mutation_scale,
                                 color=color, linewidth=lw, linestyle=ls, shrinkA=0, shrinkB=0, zorder=2,
                                 connectionstyle=f"arc3,rad={rad}"))


def route(ax, points, color=INK, *, lw=1.3):
    """An arrow along the polyline ``points`` (for paths that go around boxes)."""
    path = Path(points, [Path.MOVETO] + [Path.LINETO] * (len(points) - 1))
    ax.add_patch(FancyArrowPatch(path=path, arrowstyle="-|>", mutation_scale=11, color=color, linewidth=lw,
                                 zorder=2))


def label(ax, x, y, text, *, size=9, color=MUTED, ha="center", va="center", **kw):
    """Free text (captions, shapes, notes); muted grey unless ``color`` says otherwise."""
    ax.text(x, y, text, ha=ha, va=va, fontsize=size, color=color, **kw)
