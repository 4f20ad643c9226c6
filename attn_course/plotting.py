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


_UNIT = (-0.02, 1.02)  # the y range of accuracy plots: 0 and 1 stay clear of the frame


def _axes(ax: Axes | None, figsize: tuple[float, float] = (6.4, 4.0)) -> Axes:
    if ax is None:
        _, ax = plt.subplots(figsize=figsize, layout="constrained")
    return ax


def _check_curves(results: object, name: str) -> None:
    if not isinstance(results, Mapping) or not results:
        raise TypeError(f"{name} must be a non-empty dict mapping a curve label to its values")


def _finish(
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
    _check_curves(results, "results")
    ax = _axes(ax)
    if train_range is not None:
        ax.axvspan(train_range[0], train_range[1], color="0.92", zorder=0, label="training lengths")
    for label, by_length in results.items():
        lengths = sorted(by_length)
        ax.plot(lengths, [by_length[n] for n in lengths], marker="o", markersize=4, label=label)
    return _finish(
        ax, xlabel="source sequence length", ylabel=ylabel, title=title, chance=chance, integer_x=True, ylim=_UNIT
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
    _check_curves(curves, "curves")
    ax = _axes(ax)
    for label, accs in curves.items():
        ax.plot(range(len(accs)), list(accs), marker="o", markersize=3, label=label)
    return _finish(ax, xlabel=xlabel, ylabel=ylabel, title=title, chance=chance, integer_x=True, ylim=_UNIT)


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
    return _finish(ax, xlabel="training step", ylabel="cross-entropy loss (nats per token)", title=title)


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
    return _finish(ax, xlabel="query/key width $d_k$ (log scale)", ylabel=ylabel, title=title)


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
    return _finish(ax, xlabel=xlabel, ylabel=ylabel, title=title, integer_x=True, ylim=_UNIT)


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
    return _finish(ax, xlabel="x", ylabel="y", title=title, legend_fontsize="small")


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
    return _finish(ax, xlabel="bandwidth h (log scale)", ylabel=ylabel, title=title, legend_fontsize="small")


__all__ += ["plot_vs_dk", "plot_softmax_overflow"]  # chapters 03 and 04 (defined above)


# --------------------------------------------------------------------------- attention in Seq2Seq (chapter 05)

__all__ += ["plot_attention_heatmap"]


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
    ax = _axes(ax, figsize=(0.3 * S + 2.5, 0.3 * T + 1.5))
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

__all__ += ["plot_position_matrix", "plot_vs_offset", "plot_alibi_heads", "plot_scheme_accuracy"]


def _as_array(x: object, name: str, ndim: int):
    """A tensor or array as a float NumPy array with ``ndim`` dimensions."""
    import numpy as np

    a = np.asarray(x.detach().cpu() if hasattr(x, "detach") else x, dtype=float)
    if a.ndim != ndim:
        raise ValueError(f"{name} has shape {a.shape}; expected {ndim} dimensions")
    return a


def plot_position_matrix(
    matrix: object,
    ax: Axes | None = None,
    *,
    title: str,
    xlabel: str,
    ylabel: str,
    cbar_label: str = "value",
    centered: bool = True,
    colorbar: bool = True,
) -> Axes:
    """Heatmap of a 2-D array: a ``(T, D)`` encoding table, a ``(T, T)`` score or bias matrix.

    Row 0 is at the top. ``centered`` uses a diverging colour map symmetric around 0 (blue
    negative, red positive); otherwise viridis. NaN cells are left blank (e.g. masked entries).
    """
    import numpy as np

    m = _as_array(matrix, "matrix", 2)
    ax = _axes(ax, figsize=(6.4, 4.8))
    if centered:
        limit = float(np.nanmax(np.abs(m))) if np.isfinite(m).any() else 1.0
        image = ax.imshow(m, cmap="RdBu_r", vmin=-limit, vmax=limit, aspect="auto", interpolation="nearest")
    else:
        image = ax.imshow(m, cmap="viridis", aspect="auto", interpolation="nearest")
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    if colorbar:
        ax.figure.colorbar(image, ax=ax, label=cbar_label, shrink=0.85)
    return ax


def plot_vs_offset(
    offsets: Sequence[float],
    curves: Mapping[str, Sequence[float]],
    ax: Axes | None = None,
    *,
    title: str,
    ylabel: str,
    xlabel: str = "offset n - m (key position minus query position)",
) -> Axes:
    """One line per curve against a position offset; dashes cycle so overlapping curves stay visible."""
    _check_curves(curves, "curves")
    ax = _axes(ax)
    styles = ["-", "--", ":", "-."]
    for i, (label, values) in enumerate(curves.items()):
        ax.plot(list(offsets), list(values), linestyle=styles[i % len(styles)], linewidth=1.5 + (i == 0), label=label)
    ax.axvline(0, color="0.6", linewidth=0.8)
    return _finish(ax, xlabel=xlabel, ylabel=ylabel, title=title, legend_fontsize="small")


def plot_alibi_heads(
    bias: object,
    slopes: Sequence[float] | None = None,
    *,
    ncols: int = 4,
    title: str = "ALiBi bias added to the scores, per head",
):
    """One heatmap per head of an ``(H, T, T)`` bias (query ``i`` down, key ``j`` across), one colour scale.

    NaN entries are left blank (e.g. the future keys a causal mask hides). ``slopes`` puts
    each head's slope in its title. Returns the ``(rows, ncols)`` array of axes.
    """
    import numpy as np

    b = _as_array(bias, "bias", 3)
    H = b.shape[0]
    if slopes is not None and len(slopes) != H:
        raise ValueError(f"slopes has {len(slopes)} entries; expected H = {H}")
    rows = -(-H // ncols)
    fig, axes = plt.subplots(
        rows, ncols, figsize=(2.6 * ncols + 1, 2.6 * rows + 0.6), squeeze=False, layout="constrained"
    )
    low = float(np.nanmin(b)) if np.isfinite(b).any() else -1.0
    image = None
    for h, ax in enumerate(axes.flat):
        if h >= H:
            ax.axis("off")
            continue
        image = ax.imshow(b[h], cmap="Blues_r", vmin=low, vmax=0.0, interpolation="nearest")
        ax.set_title(f"head {h}" + (f": m = 1/{1 / slopes[h]:.4g}" if slopes is not None else ""), fontsize="small")
        ax.set_xlabel("key j", fontsize="small")
        ax.set_ylabel("query i", fontsize="small")
    fig.colorbar(image, ax=axes, label="bias (added to the score)", shrink=0.8)
    fig.suptitle(title)
    return axes


def plot_scheme_accuracy(
    accuracies: Mapping[str, float],
    ax: Axes | None = None,
    *,
    chance: float | None = None,
    title: str = "Test accuracy by position scheme",
    ylabel: str = "test accuracy",
) -> Axes:
    """A bar per scheme, its accuracy written on top; ``chance`` draws a dashed line."""
    _check_curves(accuracies, "accuracies")
    ax = _axes(ax)
    names, values = list(accuracies), [float(v) for v in accuracies.values()]
    bars = ax.bar(names, values, color=[f"C{i}" for i in range(len(names))])
    ax.bar_label(bars, labels=[f"{v:.1%}" for v in values], padding=2, fontsize="small")
    if chance is not None:
        ax.axhline(chance, color="0.3", linestyle="--", linewidth=1, label="chance")
        ax.legend(loc="upper left")
    ax.set_ylim(0, 1.1)
    ax.set_ylabel(ylabel)
    ax.set_xlabel("position scheme")
    ax.set_title(title)
    ax.grid(alpha=0.3, axis="y")
    return ax


# ----------------------------------------------------------------- self-attention, masking (chapters 06, 09)

__all__ += ["plot_heatmap_row", "plot_vs_length", "plot_position_changes"]


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

    _check_curves(matrices, "matrices")
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


def plot_vs_length(
    lengths: Sequence[int],
    curves: Mapping[str, Sequence[float]],
    ax: Axes | None = None,
    *,
    ylabel: str,
    title: str,
    xlabel: str = "sequence length T (log scale)",
    logy: bool = True,
    references: Mapping[str, Sequence[float]] | None = None,
) -> Axes:
    """One line per curve against the sequence length (log2 x axis, log y by default).

    ``references`` adds dashed grey lines, e.g. ``{"slope 2 (T^2)": [...]}`` to compare growth.
    """
    _check_curves(curves, "curves")
    ax = _axes(ax)
    for label, values in curves.items():
        ax.plot(list(lengths), list(values), marker="o", markersize=4, label=label)
    for i, (label, values) in enumerate((references or {}).items()):
        style = ["--", ":", "-."][i % 3]
        ax.plot(list(lengths), list(values), color="0.5", linestyle=style, linewidth=1, label=label)
    ax.set_xscale("log", base=2)
    ax.set_xticks(list(lengths), [str(n) for n in lengths])
    if logy:
        ax.set_yscale("log")
    return _finish(ax, xlabel=xlabel, ylabel=ylabel, title=title, legend_fontsize="small", grid_which="both")


def plot_position_changes(
    changes: Mapping[str, Sequence[float]],
    t: int,
    ax: Axes | None = None,
    *,
    title: str = "Output change at each position when the inputs after t change",
    ylabel: str = "largest |change| of the output",
) -> Axes:
    """Per-position output changes (one marker line per model); positions ``<= t`` are shaded.

    ``changes = {"causal mask": position_changes(...), ...}``; a correctly causal model is 0 in
    the shaded region.
    """
    _check_curves(changes, "changes")
    ax = _axes(ax)
    n = max(len(v) for v in changes.values())
    ax.axvspan(-0.5, t + 0.5, color="0.92", zorder=0, label=f"positions <= t = {t}")
    markers = ["o", "s", "^", "D"]
    for i, (label, values) in enumerate(changes.items()):
        ys = [float(v) for v in values]
        ax.plot(range(len(ys)), ys, marker=markers[i % 4], markersize=5, label=label)
    ax.set_xlim(-0.5, n - 0.5)
    return _finish(ax, xlabel="output position", ylabel=ylabel, title=title, integer_x=True, legend_fontsize="small")


# --------------------------------------------------------------------------- multi-head attention (chapter 07)

__all__ += ["plot_head_attention", "plot_grouped_accuracy"]


def plot_head_attention(
    weights: object,
    offsets: Sequence[int] = (),
    axes: Sequence[Axes] | None = None,
    *,
    head_labels: Sequence[str] | None = None,
    suptitle: str | None = None,
):
    """One heatmap per head of self-attention weights ``(H, T, T)``; each look-back offset marked.

    Row ``t`` is the query position, column ``j`` the key position. Each offset ``o`` in
    ``offsets`` is drawn as hollow squares on the cells ``j = t - o`` (one colour per offset), so
    a head that looks ``o`` steps back lights up inside those squares. Drawn with
    ``plot_heatmap_row`` (weights on a 0 to 1 scale); returns its list of axes.
    """
    import numpy as np

    w = np.asarray(weights.detach().cpu() if hasattr(weights, "detach") else weights, dtype=float)
    if w.ndim != 3 or w.shape[1] != w.shape[2]:
        raise ValueError(f"weights has shape {w.shape}; expected (H, T, T) = (heads, queries, keys)")
    H, T = w.shape[0], w.shape[1]
    labels = [f"head {h}" for h in range(H)] if head_labels is None else [str(s) for s in head_labels]
    if len(labels) != H:
        raise ValueError(f"head_labels has {len(labels)} entries; expected one per head ({H})")
    axes = plot_heatmap_row(
        {label: w[h] for h, label in enumerate(labels)},
        axes,
        xlabel="key position j",
        ylabel="query position t",
        vmin=0.0,
        vmax=1.0,
        suptitle=suptitle,
    )
    colours = ["tab:red", "tab:orange", "tab:pink", "tab:cyan"]
    for ax in axes:
        for i, o in enumerate(offsets):
            ts = list(range(int(o), T))
            ax.scatter([t - o for t in ts], ts, marker="s", s=40, facecolors="none",
                       edgecolors=colours[i % len(colours)], linewidths=1.0, label=f"j = t - {o}")
        if len(offsets):
            ax.legend(loc="upper right", fontsize="x-small", framealpha=0.8)
    return axes


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
    _check_curves(groups, "groups")
    series = list(next(iter(groups.values())))
    for name, values in groups.items():
        if list(values) != series:
            raise ValueError(f"groups[{name!r}] has keys {list(values)}; expected {series} like the first group")
    ax = _axes(ax)
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

__all__ += ["plot_attention_by_model"]


def plot_attention_by_model(
    weights: Mapping[str, object],
    tokens: Sequence[str],
    *,
    marks: Mapping[str, Sequence[tuple[int, int]]] | None = None,
    mark_label: str = "marked cells",
    suptitle: str | None = None,
):
    """A grid of self-attention heatmaps: one row per model, one column per head.

    Args:
        weights: model name -> its weights ``(H, T, T)`` for one sequence and one layer (all
            with the same ``H`` and ``T``); row ``t`` is the query position, column ``j`` the key.
        tokens: ``T`` labels for both axes (the tokens of the sequence).
        marks: model name -> ``(t, j)`` cells drawn as hollow red squares in each of that model's
            panels (e.g. where each position's answer is), labelled ``mark_label`` in the legend.
        suptitle: a title over the whole figure.

    Returns:
        the ``(rows, H)`` NumPy array of axes. All panels share one colour scale, 0 to 1.
    """
    import numpy as np

    _check_curves(weights, "weights")
    arrays = {}
    for name, w in weights.items():
        a = np.asarray(w.detach().cpu() if hasattr(w, "detach") else w, dtype=float)
        if a.ndim != 3 or a.shape[1] != a.shape[2]:
            raise ValueError(f"weights[{name!r}] has shape {a.shape}; expected (H, T, T) = (heads, queries, keys)")
        arrays[name] = a
    H, T = next(iter(arrays.values())).shape[:2]
    for name, a in arrays.items():
        if a.shape != (H, T, T):
            raise ValueError(f"weights[{name!r}] has shape {a.shape}; expected {(H, T, T)} like the first model")
    if len(tokens) != T:
        raise ValueError(f"tokens has {len(tokens)} entries; expected T = {T} to match the weights")
    size = min(3.0, max(2.2, 0.17 * T))
    fig, axes = plt.subplots(
        len(arrays), H, figsize=(size * H + 1.0, size * len(arrays) + 0.6), squeeze=False, layout="constrained"
    )
    image = None
    for r, (name, a) in enumerate(arrays.items()):
        for h in range(H):
            ax = axes[r, h]
            image = ax.imshow(a[h], cmap="viridis", vmin=0.0, vmax=1.0, interpolation="nearest")
            if marks and marks.get(name):
                ts, js = zip(*marks[name])
                ax.scatter(js, ts, marker="s", s=22, facecolors="none", edgecolors="tab:red",
                           linewidths=0.8, label=mark_label)
            ax.set_title(f"{name}, head {h}", fontsize="small")
            ax.set_xticks(range(T), list(tokens), fontsize=6, rotation=90)
            ax.set_yticks(range(T), list(tokens), fontsize=6)
            if r == len(arrays) - 1:
                ax.set_xlabel("key j", fontsize="small")
            if h == 0:
                ax.set_ylabel("query t", fontsize="small")
    if marks and any(marks.values()):
        handles, labels = next((a.get_legend_handles_labels() for a in axes.flat if a.collections), ([], []))
        fig.legend(handles[:1], labels[:1], loc="outside lower center", fontsize="small")  # matplotlib >= 3.7
    fig.colorbar(image, ax=axes, label="attention weight", shrink=0.7)
    if suptitle:
        fig.suptitle(suptitle)
    return axes
