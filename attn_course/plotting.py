"""Plotting helpers for the chapters: labelled axes, titles and legends, no math.

Every function draws on ``ax`` if given (so several plots can share a figure) or on a new
figure otherwise, and returns the ``matplotlib.axes.Axes`` it drew on.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import matplotlib.pyplot as plt
from matplotlib.axes import Axes
from matplotlib.ticker import MaxNLocator

__all__ = [
    "UNIT_YLIM",
    "new_axes",
    "check_curves",
    "finish_axes",
    "plot_accuracy_by_length",
    "plot_accuracy_by_position",
    "plot_losses",
    "plot_attention_heatmap",
    "as_array",
    "plot_heatmap_row",
    "plot_grouped_accuracy",
]


UNIT_YLIM = (-0.02, 1.02)  # the y range of accuracy plots: 0 and 1 stay clear of the frame


def new_axes(ax: Axes | None, figsize: tuple[float, float] = (6.4, 4.0)) -> Axes:
    if ax is None:
        _, ax = plt.subplots(figsize=figsize, layout="constrained")
    return ax


def check_curves(results: object, name: str) -> None:
    if not isinstance(results, Mapping) or not results:
        raise TypeError(f"{name} must be a non-empty dict mapping a curve label to its values")


def finish_axes(
    ax: Axes,
    *,
    xlabel: str,
    ylabel: str,
    title: str,
    chance: float | None = None,
    integer_x: bool = False,
    ylim: tuple[float, float] | None = None,
    legend_fontsize: str | None = None,
    grid_which: str = "major",
) -> Axes:
    """The finishing steps most line plots share: labels, title, a light grid and the legend.

    ``chance`` first draws a dashed grey horizontal line labelled "chance" (so the legend lists
    it last); ``integer_x`` puts the x ticks on whole numbers; ``ylim`` fixes the y range.
    """
    if chance is not None:
        ax.axhline(chance, color="0.4", linestyle="--", linewidth=1, label="chance")
    ax.set_xlabel(xlabel)
    if integer_x:
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_ylabel(ylabel)
    if ylim is not None:
        ax.set_ylim(*ylim)
    ax.set_title(title)
    ax.grid(alpha=0.3, which=grid_which)
    if legend_fontsize is None:
        ax.legend()
    else:
        ax.legend(fontsize=legend_fontsize)
    return ax


def plot_accuracy_by_length(
    results: Mapping[str, Mapping[int, float]],
    ax: Axes | None = None,
    *,
    title: str = "Accuracy vs. sequence length",
    ylabel: str = "token accuracy",
    chance: float | None = None,
    train_range: tuple[int, int] | None = None,
) -> Axes:
    """One line per model: ``results = {"fixed context": {4: 1.0, 8: 0.97, ...}, ...}``.

    Args:
        results: curve label -> {sequence length -> accuracy in [0, 1]}.
        ax: axes to draw on (default: a new figure).
        title, ylabel: the plot's title and y-axis label.
        chance: draw a dashed horizontal line at this accuracy (e.g. ``1 / n_symbols``).
        train_range: shade the lengths ``[min, max]`` seen in training.
    """
    check_curves(results, "results")
    ax = new_axes(ax)
    if train_range is not None:
        ax.axvspan(train_range[0], train_range[1], color="0.92", zorder=0, label="training lengths")
    for label, by_length in results.items():
        lengths = sorted(by_length)
        ax.plot(lengths, [by_length[n] for n in lengths], marker="o", markersize=4, label=label)
    return finish_axes(
        ax, xlabel="source sequence length", ylabel=ylabel, title=title, chance=chance, integer_x=True, ylim=UNIT_YLIM
    )


def plot_accuracy_by_position(
    curves: Mapping[str, Sequence[float]],
    ax: Axes | None = None,
    *,
    title: str = "Accuracy at each output position",
    xlabel: str = "output position (0 = first token emitted)",
    ylabel: str = "token accuracy",
    chance: float | None = None,
) -> Axes:
    """One line per curve: ``curves = {"greedy": [acc at position 0, 1, ...], ...}``."""
    check_curves(curves, "curves")
    ax = new_axes(ax)
    for label, accs in curves.items():
        ax.plot(range(len(accs)), list(accs), marker="o", markersize=3, label=label)
    return finish_axes(ax, xlabel=xlabel, ylabel=ylabel, title=title, chance=chance, integer_x=True, ylim=UNIT_YLIM)


def plot_losses(
    losses: Mapping[str, Sequence[float]],
    ax: Axes | None = None,
    *,
    title: str = "Training loss",
) -> Axes:
    """Training-loss curves, one per label: ``{"fixed context": history.losses, ...}``."""
    check_curves(losses, "losses")
    ax = new_axes(ax)
    for label, values in losses.items():
        ax.plot(range(1, len(values) + 1), list(values), linewidth=1, label=label)
    return finish_axes(ax, xlabel="training step", ylabel="cross-entropy loss (nats per token)", title=title)


# --------------------------------------------------------------------------- soft lookup (chapter 02)
# Kernel regression as attention: 1-D keys/values, their weights and fits.


# --------------------------------------------------------------------------- attention in Seq2Seq (chapter 05)


def plot_attention_heatmap(
    weights: object,
    ax: Axes | None = None,
    *,
    src_labels: Sequence[object] | None = None,
    tgt_labels: Sequence[object] | None = None,
    true_positions: Sequence[int] | None = None,
    title: str = "Attention weights",
    xlabel: str = "source position j (input token)",
    ylabel: str = "output position t (token emitted)",
    colorbar: bool = True,
) -> Axes:
    """Heatmap of one decoder's ``(T, S)`` attention weights: row ``t`` is output step ``t``, column
    ``j`` source position ``j``; the colour is the weight (0 to 1) that step ``t`` puts on ``h_j``.

    Args:
        weights: ``(T, S)`` tensor or array, e.g. ``attn[b]`` from ``model(..., return_attention=True)``.
        ax: axes to draw on (default: a new figure).
        src_labels: ``S`` labels for the columns (e.g. the source tokens); default the positions.
        tgt_labels: ``T`` labels for the rows (e.g. the target tokens); default the positions.
        true_positions: ``T`` source positions, the true alignment of each output position
            (``-1`` or ``None``: none, e.g. at EOS); drawn as hollow squares.
        title, xlabel, ylabel: the texts.
        colorbar: add a colour bar for the weights.
    """
    import numpy as np

    w = np.asarray(weights.detach().cpu() if hasattr(weights, "detach") else weights, dtype=float)
    if w.ndim != 2:
        raise ValueError(
            f"weights has shape {w.shape}; expected (T, S) = (output positions, source positions)"
        )
    T, S = w.shape
    for name, labels, n in (("src_labels", src_labels, S), ("tgt_labels", tgt_labels, T)):
        if labels is not None and len(labels) != n:
            raise ValueError(f"{name} has {len(labels)} entries; expected {n} to match weights {w.shape}")
    if true_positions is not None and len(true_positions) != T:
        raise ValueError(f"true_positions has {len(true_positions)} entries; expected T = {T}")
    ax = new_axes(ax, figsize=(0.3 * S + 2.5, 0.3 * T + 1.5))
    image = ax.imshow(w, cmap="viridis", vmin=0.0, vmax=1.0, aspect="equal", interpolation="nearest")
    if true_positions is not None:
        rows = [(t, j) for t, j in enumerate(true_positions) if j is not None and int(j) >= 0]
        if rows:
            ts, js = zip(*rows, strict=True)
            ax.scatter(
                js,
                ts,
                marker="s",
                s=60,
                facecolors="none",
                edgecolors="tab:red",
                linewidths=1.2,
                label="true alignment",
            )
            ax.legend(loc="best", fontsize="small", framealpha=0.8)
    ax.set_xticks(
        range(S), [str(x) for x in src_labels] if src_labels is not None else range(S), fontsize="small"
    )
    ax.set_yticks(
        range(T), [str(y) for y in tgt_labels] if tgt_labels is not None else range(T), fontsize="small"
    )
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    if colorbar:
        ax.figure.colorbar(image, ax=ax, label="attention weight", shrink=0.8)
    return ax


# --------------------------------------------------------------------------- positional information (chapter 08)


def as_array(x: object, name: str, ndim: int):
    """A tensor or array as a float NumPy array with ``ndim`` dimensions."""
    import numpy as np

    a = np.asarray(x.detach().cpu() if hasattr(x, "detach") else x, dtype=float)
    if a.ndim != ndim:
        raise ValueError(f"{name} has shape {a.shape}; expected {ndim} dimensions")
    return a


# ----------------------------------------------------------------- self-attention, masking (chapters 06, 09)


def plot_heatmap_row(
    matrices: Mapping[str, object],
    axes: Sequence[Axes] | None = None,
    *,
    xlabel: str = "key position j",
    ylabel: str = "query position i",
    cbar_label: str = "attention weight",
    vmin: float | None = 0.0,
    vmax: float | None = None,
    cmap: str = "viridis",
    suptitle: str | None = None,
    bool_labels: tuple[str, str] = ("hidden (False)", "may attend (True)"),
):
    """Several 2-D matrices side by side on one colour scale, each titled by its key.

    Boolean matrices (masks) are drawn black = ``False`` and yellow = ``True``, with a
    two-entry colour bar labelled ``bool_labels``; other matrices share ``[vmin, vmax]`` (``vmax``
    defaults to the largest finite value over all of them). NaN cells are drawn red, so a
    NaN row stands out. Row 0 is at the top. Returns the list of axes.
    """
    import numpy as np
    from matplotlib.colors import ListedColormap

    check_curves(matrices, "matrices")
    mats = {}
    for name, m in matrices.items():
        a = np.asarray(m.detach().cpu() if hasattr(m, "detach") else m, dtype=float)
        if a.ndim != 2:
            raise ValueError(f"matrices[{name!r}] has shape {a.shape}; expected 2 dimensions")
        mats[name] = a
    boolean = all(str(getattr(m, "dtype", "")) in ("torch.bool", "bool") for m in matrices.values())
    if axes is None:
        n = len(mats)
        widest = max(m.shape[1] for m in mats.values())
        tallest = max(m.shape[0] for m in mats.values())
        size = min(3.2, max(2.0, 0.28 * max(widest, tallest)))
        _, axes = plt.subplots(
            1, n, figsize=(size * n + 1.2, size + 0.9), squeeze=False, layout="constrained"
        )
        axes = list(axes[0])
    if len(axes) != len(mats):
        raise ValueError(f"axes has {len(axes)} entries; expected one per matrix ({len(mats)})")
    if boolean:
        cm, lo, hi = ListedColormap(["#222222", "#f5d53f"]), 0.0, 1.0
    else:
        finite = [m[np.isfinite(m)] for m in mats.values()]
        finite = np.concatenate(finite) if any(f.size for f in finite) else np.zeros(1)
        cm = plt.get_cmap(cmap).copy()
        lo = float(finite.min()) if vmin is None else vmin
        hi = float(finite.max()) if vmax is None else vmax
        hi = hi if hi > lo else lo + 1.0
    cm.set_bad("tab:red")
    image = None
    for ax, (name, m) in zip(axes, mats.items()):
        image = ax.imshow(np.ma.masked_invalid(m), cmap=cm, vmin=lo, vmax=hi, interpolation="nearest")
        ax.set_title(name, fontsize="medium")
        ax.set_xlabel(xlabel)
        ax.set_ylabel(ylabel)
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.yaxis.set_major_locator(MaxNLocator(integer=True))
    fig = axes[0].figure
    if boolean:
        bar = fig.colorbar(image, ax=axes, ticks=[0.25, 0.75], shrink=0.8)
        bar.ax.set_yticklabels(list(bool_labels))
    else:
        fig.colorbar(image, ax=axes, label=cbar_label, shrink=0.8)
    if suptitle:
        fig.suptitle(suptitle)
    return axes


# --------------------------------------------------------------------------- multi-head attention (chapter 07)


def plot_grouped_accuracy(
    groups: Mapping[str, Mapping[str, float]],
    ax: Axes | None = None,
    *,
    chance: float | None = None,
    title: str = "Accuracy",
    ylabel: str = "accuracy",
) -> Axes:
    """Grouped bars, values written on top: ``{"1 head": {"both slots": 0.08, "slot 0": 1.0}, ...}``.

    One group per outer key (x-axis), one bar colour per inner key (legend); every group must
    have the same inner keys. ``chance`` draws a dashed horizontal line.
    """
    check_curves(groups, "groups")
    series = list(next(iter(groups.values())))
    for name, values in groups.items():
        if list(values) != series:
            raise ValueError(f"groups[{name!r}] has keys {list(values)}; expected {series} like the first group")
    ax = new_axes(ax)
    width = 0.8 / len(series)
    for i, s in enumerate(series):
        xs = [g + (i - (len(series) - 1) / 2) * width for g in range(len(groups))]
        values = [float(groups[name][s]) for name in groups]
        bars = ax.bar(xs, values, width=width, label=s, color=f"C{i}")
        ax.bar_label(bars, labels=[f"{v:.0%}" for v in values], padding=2, fontsize="x-small")
    if chance is not None:
        ax.axhline(chance, color="0.3", linestyle="--", linewidth=1, label="chance")
    ax.set_xticks(range(len(groups)), list(groups))
    ax.set_ylim(0, 1.25)
    ax.set_yticks([0, 0.2, 0.4, 0.6, 0.8, 1.0])
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.grid(alpha=0.3, axis="y")
    ax.legend(fontsize="small", loc="upper center", ncol=len(series) + (chance is not None))
    return ax


# --------------------------------------------------------------------------- encoder vs decoder (chapter 10)
