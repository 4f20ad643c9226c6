"""Plotting helpers for the chapters: labelled axes, titles and legends, no math.

Every function draws on ``ax`` if given (so several plots can share a figure) or on a new
figure otherwise, and returns the ``matplotlib.axes.Axes`` it drew on.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import matplotlib.pyplot as plt
from matplotlib.axes import Axes
from matplotlib.ticker import MaxNLocator

__all__ = ["plot_accuracy_by_length", "plot_accuracy_by_position", "plot_losses"]


def _axes(ax: Axes | None, figsize: tuple[float, float] = (6.4, 4.0)) -> Axes:
    if ax is None:
        _, ax = plt.subplots(figsize=figsize, layout="constrained")
    return ax


def _check_curves(results: object, name: str) -> None:
    if not isinstance(results, Mapping) or not results:
        raise TypeError(f"{name} must be a non-empty dict mapping a curve label to its values")


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
    _check_curves(results, "results")
    ax = _axes(ax)
    if train_range is not None:
        ax.axvspan(train_range[0], train_range[1], color="0.92", zorder=0, label="training lengths")
    for label, by_length in results.items():
        lengths = sorted(by_length)
        ax.plot(lengths, [by_length[n] for n in lengths], marker="o", markersize=4, label=label)
    if chance is not None:
        ax.axhline(chance, color="0.4", linestyle="--", linewidth=1, label="chance")
    ax.set_xlabel("source sequence length")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_ylabel(ylabel)
    ax.set_ylim(-0.02, 1.02)
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend()
    return ax


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
    _check_curves(curves, "curves")
    ax = _axes(ax)
    for label, accs in curves.items():
        ax.plot(range(len(accs)), list(accs), marker="o", markersize=3, label=label)
    if chance is not None:
        ax.axhline(chance, color="0.4", linestyle="--", linewidth=1, label="chance")
    ax.set_xlabel(xlabel)
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_ylabel(ylabel)
    ax.set_ylim(-0.02, 1.02)
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend()
    return ax


def plot_losses(
    losses: Mapping[str, Sequence[float]],
    ax: Axes | None = None,
    *,
    title: str = "Training loss",
) -> Axes:
    """Training-loss curves, one per label: ``{"fixed context": history.losses, ...}``."""
    _check_curves(losses, "losses")
    ax = _axes(ax)
    for label, values in losses.items():
        ax.plot(range(1, len(values) + 1), list(values), linewidth=1, label=label)
    ax.set_xlabel("training step")
    ax.set_ylabel("cross-entropy loss (nats per token)")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend()
    return ax


def plot_vs_dk(
    d_ks: Sequence[int],
    curves: Mapping[str, Sequence[float]],
    ax: Axes | None = None,
    *,
    ylabel: str,
    title: str,
    logy: bool = False,
    reference: Sequence[float] | None = None,
    reference_label: str = "expected",
) -> Axes:
    """A metric against the query/key width ``d_k`` (log2 x-axis), one line per curve.

    ``curves = {"unscaled": [value at d_ks[0], ...], "scaled": [...]}``; ``reference`` adds a
    dashed line (e.g. the theoretical variance ``d_k``).
    """
    _check_curves(curves, "curves")
    ax = _axes(ax)
    for label, values in curves.items():
        ax.plot(list(d_ks), list(values), marker="o", markersize=4, label=label)
    if reference is not None:
        ax.plot(list(d_ks), list(reference), color="0.4", linestyle="--", linewidth=1, label=reference_label)
    ax.set_xscale("log", base=2)
    ax.set_xticks(list(d_ks), [str(d) for d in d_ks])
    if logy:
        ax.set_yscale("log")
    ax.set_xlabel("query/key width $d_k$ (log scale)")
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend()
    return ax


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
    _check_curves(curves, "curves")
    ax = _axes(ax)
    styles = ["-", "--", "-.", ":"]
    for i, (label, values) in enumerate(curves.items()):
        ax.plot(list(shifts), list(values), linestyle=styles[i % len(styles)], linewidth=2, label=label)
    for i, (label, x) in enumerate((thresholds or {}).items()):
        ax.axvline(x, color=f"{0.2 + 0.3 * i:.1f}", linestyle=":", linewidth=1, label=label)
    ax.set_xlabel(xlabel)
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_ylabel(ylabel)
    ax.set_ylim(-0.02, 1.02)
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend()
    return ax


# --------------------------------------------------------------------------- soft lookup (chapter 02)
# Kernel regression as attention: 1-D keys/values, their weights and fits.

__all__ += ["plot_soft_lookup", "plot_kernel_weights", "plot_regression_fit", "plot_mse_by_bandwidth"]


def _flat(x: object):
    """A tensor, array or sequence as a flat float NumPy array (CPU tensors, no grad)."""
    import numpy as np

    if hasattr(x, "detach"):
        x = x.detach().cpu()
    return np.asarray(x, dtype=float).reshape(-1)


def plot_soft_lookup(
    keys: object,
    values: object,
    weights: object,
    query: float,
    prediction: float,
    *,
    truth: tuple[object, object] | None = None,
    axes: tuple[Axes, Axes] | None = None,
    title: str | None = None,
) -> tuple[Axes, Axes]:
    """One soft lookup over scalar keys: the pairs coloured by weight (top), the weights (bottom).

    Args:
        keys, values: ``S`` scalars each (tensors ``(S,)`` or ``(S, 1)`` are fine).
        weights: the ``S`` attention weights of the query.
        query: the query x.  prediction: the returned value (the weighted average of values).
        truth: optional ``(x_grid, f(x_grid))`` drawn as a dashed curve.
        axes: ``(top, bottom)`` axes to draw on (default: a new figure, bottom sharing x).
        title: title of the top axes.

    Returns:
        ``(top, bottom)``.
    """
    k, v, w = _flat(keys), _flat(values), _flat(weights)
    if not (len(k) == len(v) == len(w)):
        raise ValueError(f"keys, values and weights need one entry per key; got {len(k)}, {len(v)}, {len(w)}")
    if axes is None:
        _, axes = plt.subplots(
            2, 1, figsize=(6.4, 4.8), sharex=True, height_ratios=[2, 1], layout="constrained"
        )
    top, bottom = axes
    w_max = max(float(w.max()), 1e-12)
    if truth is not None:
        top.plot(
            _flat(truth[0]), _flat(truth[1]), color="0.5", linestyle="--", linewidth=1, label="true function"
        )
    points = top.scatter(
        k,
        v,
        c=w,
        cmap="viridis_r",
        vmin=0,
        vmax=w_max,
        s=12 + 80 * w / w_max,
        edgecolors="0.3",
        linewidths=0.3,
        zorder=2,
    )
    top.axvline(query, color="tab:red", linestyle=":", linewidth=1)
    top.plot(
        [query],
        [prediction],
        marker="*",
        markersize=14,
        color="tab:red",
        linestyle="none",
        markeredgecolor="k",
        label=f"returned value {prediction:.2f}",
        zorder=3,
    )
    # A neutral legend entry for the pairs (the scatter's own would take the first point's colour).
    top.plot([], [], "o", color="0.6", markeredgecolor="0.3", markersize=5, label="(key, value) pairs")
    top.set_ylabel("value y")
    top.set_title(title if title is not None else f"query x = {query:.2f}")
    top.grid(alpha=0.3)
    top.legend(loc="best", fontsize="small")
    top.figure.colorbar(points, ax=top, label="weight of the pair", shrink=0.9)
    bottom.vlines(k, 0, w, color="tab:blue", linewidth=1.5)
    bottom.plot(k, w, "o", color="tab:blue", markersize=2.5)
    bottom.axvline(query, color="tab:red", linestyle=":", linewidth=1, label="query")
    bottom.set_xlabel("key x (training input)")
    bottom.set_ylabel("weight")
    bottom.set_ylim(0, 1.05 * w_max)
    bottom.grid(alpha=0.3)
    bottom.legend(loc="best", fontsize="small")
    return top, bottom


def _cell_edges(centres):
    """Edges around sorted cell centres (midpoints inside, half a gap beyond the ends)."""
    import numpy as np

    if len(centres) == 1:
        return np.array([centres[0] - 0.5, centres[0] + 0.5])
    mids = (centres[1:] + centres[:-1]) / 2
    return np.concatenate([[2 * centres[0] - mids[0]], mids, [2 * centres[-1] - mids[-1]]])


def plot_kernel_weights(
    weights: object,
    queries: object,
    keys: object,
    ax: Axes | None = None,
    *,
    title: str = "Attention weights: queries x keys",
) -> Axes:
    """Heatmap of an ``(L, S)`` weight matrix, placed at the queries' and keys' real positions.

    Args:
        weights: ``(L, S)``.  queries: ``L`` scalars.  keys: ``S`` scalars (any order; they
            are sorted for drawing, with the weight columns).
    """
    import numpy as np

    q, k = _flat(queries), _flat(keys)
    w = np.asarray(weights.detach().cpu() if hasattr(weights, "detach") else weights, dtype=float)
    if w.shape != (len(q), len(k)):
        raise ValueError(f"weights has shape {w.shape}; expected ({len(q)}, {len(k)}) = (queries, keys)")
    q_order, k_order = np.argsort(q, kind="stable"), np.argsort(k, kind="stable")
    q, k, w = q[q_order], k[k_order], w[q_order][:, k_order]
    ax = _axes(ax, figsize=(6.0, 5.0))
    mesh = ax.pcolormesh(_cell_edges(k), _cell_edges(q), w, cmap="viridis", vmin=0, shading="flat")
    lo, hi = max(q.min(), k.min()), min(q.max(), k.max())
    ax.plot([lo, hi], [lo, hi], color="w", linestyle="--", linewidth=1, label="query = key")
    ax.figure.colorbar(mesh, ax=ax, label="attention weight")
    ax.set_xlabel("key x_i (training input)")
    ax.set_ylabel("query x")
    ax.invert_yaxis()
    ax.set_title(title)
    ax.legend(loc="lower left", fontsize="small")
    return ax


def plot_regression_fit(
    x_train: object,
    y_train: object,
    x_grid: object,
    prediction: object,
    ax: Axes | None = None,
    *,
    truth: object | None = None,
    title: str = "Kernel regression",
    label: str = "prediction",
) -> Axes:
    """Training points, the prediction on ``x_grid`` and (optionally) the true function there."""
    ax = _axes(ax)
    ax.scatter(_flat(x_train), _flat(y_train), s=10, color="0.4", label="training data", zorder=2)
    if truth is not None:
        ax.plot(_flat(x_grid), _flat(truth), color="0.5", linestyle="--", linewidth=1, label="true function")
    ax.plot(_flat(x_grid), _flat(prediction), color="tab:orange", linewidth=2, label=label)
    ax.set_xlabel("x")
    ax.set_ylabel("y")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend(fontsize="small")
    return ax


def plot_mse_by_bandwidth(
    bandwidths: Sequence[float],
    curves: Mapping[str, Sequence[float]],
    ax: Axes | None = None,
    *,
    references: Mapping[str, float] | None = None,
    title: str = "Error against bandwidth",
    ylabel: str = "mean squared error",
) -> Axes:
    """One line per curve over the bandwidths (log x axis); ``references`` draws labelled levels."""
    _check_curves(curves, "curves")
    ax = _axes(ax)
    for label, values in curves.items():
        ax.plot(list(bandwidths), list(values), marker="o", markersize=4, label=label)
    for i, (label, level) in enumerate((references or {}).items()):
        ax.axhline(level, color=f"{0.3 + 0.25 * i:.2f}", linestyle="--", linewidth=1, label=label)
    ax.set_xscale("log")
    ax.set_xlabel("bandwidth h (log scale)")
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend(fontsize="small")
    return ax


__all__ += ["plot_vs_dk", "plot_softmax_overflow"]  # chapters 03 and 04 (defined above)
