"""Chapter 4's experiment: where the naive softmax overflows, and the stable one does not.

The mechanisms are :func:`attn_course.masking.naive_softmax` and
:func:`attn_course.masking.masked_softmax`; this lab draws the chapter's overflow figure.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from matplotlib.axes import Axes

from attn_course.plotting import UNIT_YLIM, check_curves, finish_axes, new_axes


def plot_softmax_overflow(
    shifts: Sequence[float],
    curves: Mapping[str, Sequence[float]],
    ax: Axes | None = None,
    *,
    thresholds: Mapping[str, float] | None = None,
    title: str = "Softmax of shifted logits: naive vs. max-subtracted",
    xlabel: str = "shift c added to every logit",
    ylabel: str = "largest softmax weight",
) -> Axes:
    """Softmax output against a shift of the logits; NaN values leave gaps in a curve.

    ``curves = {"naive, float32": [weight at shifts[0], ...], ...}``; ``thresholds`` draws a
    dotted vertical line per entry, e.g. ``{"float16 exp overflows": 11.09}``.
    """
    check_curves(curves, "curves")
    ax = new_axes(ax)
    styles = ["-", "--", "-.", ":"]
    for i, (label, values) in enumerate(curves.items()):
        ax.plot(list(shifts), list(values), linestyle=styles[i % len(styles)], linewidth=2, label=label)
    for i, (label, x) in enumerate((thresholds or {}).items()):
        ax.axvline(x, color=f"{0.2 + 0.3 * i:.1f}", linestyle=":", linewidth=1, label=label)
    return finish_axes(ax, xlabel=xlabel, ylabel=ylabel, title=title, integer_x=True, ylim=UNIT_YLIM)
