"""Chapter 2's experiment: attention as a soft lookup, on a 1-D regression problem.

The mechanism (hard lookup, Gaussian scores, Nadaraya-Watson) is :mod:`attn_course.lookup`.
This lab holds the chapter's synthetic data, its measurements, its figures and its widget:

* ``true_function``, ``make_regression_data``  the noisy 1-D regression problem.
* ``bandwidth_sweep``, ``local_weight_mass``   test error by bandwidth; how local the weights are.
* ``lookup_frame``, ``lookup_explorer``        what the explorer shows for one query and bandwidth,
  and the ipywidgets explorer itself (ipywidgets and IPython are imported only when it is built).
  The HTML book does not run widgets: the chapter also draws a static figure from the same
  pure function.
* ``plot_soft_lookup``, ``plot_kernel_weights``, ``plot_regression_fit``, ``plot_mse_by_bandwidth``.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from numbers import Real
from typing import Any

import matplotlib.pyplot as plt
import torch
from matplotlib.axes import Axes

from attn_course._validation import (
    check_query_key,
    check_value,
    fmt_shape,
    require_floating,
    require_int,
    require_positive_number,
    shape_error,
)
from attn_course.lookup import effective_number_of_keys, nadaraya_watson
from attn_course.plotting import check_curves, finish_axes, new_axes


def true_function(x: torch.Tensor) -> torch.Tensor:
    """The regression target ``2 sin(x) + x^0.8`` (defined for ``x >= 0``)."""
    require_floating(x, "x")
    return 2.0 * torch.sin(x) + x.clamp(min=0).pow(0.8)


def make_regression_data(
    n: int,
    generator: torch.Generator | None = None,
    *,
    x_max: float = 5.0,
    noise: float = 0.5,
    dtype: torch.dtype = torch.float32,
) -> tuple[torch.Tensor, torch.Tensor]:
    """``n`` noisy samples of ``true_function``: ``x ~ Uniform(0, x_max)``, sorted; ``y = f(x) + noise * N(0, 1)``.

    Args:
        n: number of points (S, when they are used as keys/values).
        generator: a ``torch.Generator`` for reproducible draws.
        x_max: inputs lie in ``[0, x_max]``.  noise: standard deviation of the label noise.

    Returns:
        ``(x, y)``, each ``(n, 1)``: ready to be keys and values.
    """
    require_int(n, "n")
    if generator is not None and not isinstance(generator, torch.Generator):
        raise TypeError(f"generator must be a torch.Generator, got {type(generator).__name__}")
    if not (isinstance(x_max, Real) and x_max > 0):
        raise ValueError(f"x_max must be a positive number, got {x_max!r}")
    if not (isinstance(noise, Real) and noise >= 0):
        raise ValueError(f"noise must be a non-negative number, got {noise!r}")
    x = torch.rand(n, generator=generator, dtype=dtype).sort().values * x_max  # (n,)
    y = true_function(x) + noise * torch.randn(n, generator=generator, dtype=dtype)  # (n,)
    return x.unsqueeze(-1), y.unsqueeze(-1)  # (n, 1), (n, 1)


def bandwidth_sweep(
    keys: torch.Tensor,
    values: torch.Tensor,
    queries: torch.Tensor,
    targets: torch.Tensor,
    bandwidths: Sequence[float],
) -> list[dict[str, float]]:
    """Fit ``nadaraya_watson`` with each bandwidth and measure it.

    Args:
        keys: training inputs ``(..., S, d_k)``.  values: training labels ``(..., S, d_v)``.
        queries: test inputs ``(..., L, d_k)``.  targets: what the predictions should be there,
            ``(..., L, d_v)`` (e.g. ``true_function(queries)``).
        bandwidths: the ``h`` values to try.

    Returns:
        one dict per bandwidth, in the order given: ``bandwidth``; ``test_mse``, the mean squared
        error against ``targets`` at the queries; ``train_mse``, the error against the training
        labels when the keys themselves are the queries (0 means the labels, noise included,
        are memorised); ``effective_keys``, the mean of ``effective_number_of_keys`` over the
        test queries.
    """
    check_query_key(queries, keys, "queries", "keys")
    check_value(values, keys, queries, names=("values", "keys", "queries"))
    require_floating(targets, "targets")
    expected = (*queries.shape[:-1], values.shape[-1])
    if tuple(targets.shape) != expected:
        raise shape_error("targets", targets, f"{fmt_shape(expected)}: one target per query (..., L, d_v)")
    if isinstance(bandwidths, (str, bytes)) or not isinstance(bandwidths, Sequence) or not bandwidths:
        raise ValueError("bandwidths must be a non-empty sequence of positive numbers")
    rows = []
    for h in bandwidths:
        predictions, weights = nadaraya_watson(queries, keys, values, h)  # (..., L, d_v), (..., L, S)
        fitted, _ = nadaraya_watson(
            keys, keys, values, h
        )  # (..., S, d_v): predictions at the training inputs
        rows.append(
            {
                "bandwidth": float(h),
                "test_mse": float(((predictions - targets) ** 2).mean()),
                "train_mse": float(((fitted - values) ** 2).mean()),
                "effective_keys": float(effective_number_of_keys(weights).mean()),
            }
        )
    return rows


def local_weight_mass(
    weights: torch.Tensor, queries: torch.Tensor, keys: torch.Tensor, radius: float
) -> torch.Tensor:
    """How much of each query's weight falls on keys within ``radius`` of it.

    Args:
        weights: ``(..., L, S)``.  queries: ``(..., L, d_k)``.  keys: ``(..., S, d_k)``.
        radius: the distance ``||q - k||`` (inclusive) that counts as "near".

    Returns:
        ``(..., L)``: the summed weight on the near keys (1 when all of it is near).
    """
    check_query_key(queries, keys, "queries", "keys")
    require_floating(weights, "weights")
    if not (isinstance(radius, Real) and not isinstance(radius, bool) and radius >= 0):
        raise ValueError(f"radius must be a non-negative number, got {radius!r}")
    L, S = queries.shape[-2], keys.shape[-2]
    if weights.dim() < 2 or tuple(weights.shape[-2:]) != (L, S):
        raise shape_error("weights", weights, f"(..., {L}, {S}): one weight per (query, key) pair")
    dist = (queries.unsqueeze(-2) - keys.unsqueeze(-3)).norm(dim=-1)  # (..., L, S)
    return (weights * (dist <= radius)).sum(dim=-1)  # (..., L)

@dataclass(frozen=True, eq=False)  # eq=False: the weights are a tensor
class LookupFrame:
    """One picture of a soft lookup: a scalar query against 1-D keys.

    Attributes:
        query: the query x.  bandwidth: the kernel width h.
        weights: ``(S,)`` attention weights over the keys (they sum to 1).
        prediction: the returned value, ``sum_j weights[j] * values[j]``.
        effective_keys: ``1 / sum_j weights[j]^2``: 1 for a hard lookup, S for a plain mean.
        top_key: index of the key with the largest weight.
    """

    query: float
    bandwidth: float
    weights: torch.Tensor
    prediction: float
    effective_keys: float
    top_key: int


def _check_1d_pairs(keys: object, values: object) -> None:
    require_floating(keys, "keys")
    require_floating(values, "values")
    if keys.dim() != 2 or keys.shape[-1] != 1:
        raise shape_error("keys", keys, "(S, 1): one scalar key per row")
    S = keys.shape[0]
    if tuple(values.shape) != (S, 1):
        raise shape_error("values", values, f"({S}, 1): one scalar value per key")
    if values.dtype != keys.dtype:
        raise TypeError(f"values has dtype {values.dtype}; expected keys' dtype {keys.dtype}")


def lookup_frame(query: float, keys: torch.Tensor, values: torch.Tensor, bandwidth: float) -> LookupFrame:
    """Everything ``lookup_explorer`` draws for one slider position: a Gaussian soft lookup.

    Args:
        query: the scalar query x.
        keys: ``(S, 1)`` scalar keys (e.g. training inputs).  values: ``(S, 1)`` scalar values.
        bandwidth: ``h > 0``.

    Returns:
        a ``LookupFrame``.
    """
    _check_1d_pairs(keys, values)
    if isinstance(query, bool) or not isinstance(query, Real) or not math.isfinite(float(query)):
        raise TypeError(f"query must be a finite real number, got {query!r}")
    h = require_positive_number(bandwidth, "bandwidth")
    q = torch.tensor([[float(query)]], dtype=keys.dtype)  # (L=1, 1)
    prediction, weights = nadaraya_watson(q, keys, values, h)  # (1, 1), (1, S)
    w = weights[0]  # (S,)
    return LookupFrame(
        query=float(query),
        bandwidth=h,
        weights=w,
        prediction=float(prediction[0, 0]),
        effective_keys=float(effective_number_of_keys(w)),
        top_key=int(w.argmax()),
    )


def lookup_explorer(
    keys: torch.Tensor,
    values: torch.Tensor,
    *,
    query: float | None = None,
    bandwidth: float = 0.3,
    bandwidth_range: tuple[float, float] = (0.01, 10.0),
    truth: Callable[[torch.Tensor], torch.Tensor] | None = None,
) -> Any:
    """Two sliders (query x and bandwidth h) over a 1-D soft lookup; returns an ``ipywidgets.VBox``.

    The figure shows the (key, value) pairs coloured by their attention weight, the query and
    the returned value (top), and the weights over the keys (bottom). Each redraw calls
    ``lookup_frame`` and ``attn_course.plotting.plot_soft_lookup``; the latest frame is kept in
    the box's ``frame`` attribute. Building the widget needs no display (it works headless).

    Args:
        keys: ``(S, 1)``.  values: ``(S, 1)``.
        query: initial query (default: the middle of the keys' range).
        bandwidth: initial bandwidth, inside ``bandwidth_range`` (a log-scale slider).
        truth: optional function ``x -> f(x)`` drawn as a dashed curve (e.g. ``labs.soft_lookup.true_function``).
    """
    import ipywidgets as widgets
    from IPython.display import display
    from matplotlib.figure import Figure


    _check_1d_pairs(keys, values)
    lo_h, hi_h = (require_positive_number(b, "bandwidth") for b in bandwidth_range)
    if not lo_h < hi_h:
        raise ValueError(f"bandwidth_range must be (low, high) with low < high, got {bandwidth_range!r}")
    h0 = require_positive_number(bandwidth, "bandwidth")
    if not lo_h <= h0 <= hi_h:
        raise ValueError(f"bandwidth {h0} is outside bandwidth_range {bandwidth_range!r}")
    if truth is not None and not callable(truth):
        raise TypeError(f"truth must be callable or None, got {type(truth).__name__}")
    lo, hi = float(keys.min()), float(keys.max())
    q0 = (lo + hi) / 2 if query is None else float(query)

    grid = None
    if truth is not None:
        x_grid = torch.linspace(lo, hi, 200, dtype=keys.dtype)  # (200,)
        grid = (x_grid, truth(x_grid))

    query_slider = widgets.FloatSlider(
        value=min(max(q0, lo), hi),
        min=lo,
        max=hi,
        step=(hi - lo) / 200 or 0.01,
        description="query x",
        readout_format=".2f",
        continuous_update=False,
    )
    bandwidth_slider = widgets.FloatLogSlider(
        value=h0,
        base=10,
        min=math.log10(lo_h),
        max=math.log10(hi_h),
        step=0.02,
        description="bandwidth h",
        readout_format=".3f",
        continuous_update=False,
    )
    readout = widgets.HTML()
    out = widgets.Output()
    box = widgets.VBox([query_slider, bandwidth_slider, readout, out])

    def redraw(_change: object = None) -> None:
        frame = lookup_frame(query_slider.value, keys, values, bandwidth_slider.value)
        box.frame = frame
        readout.value = (
            f"returned value <b>{frame.prediction:.3f}</b>; effective number of keys "
            f"<b>{frame.effective_keys:.1f}</b> of {keys.shape[0]}; largest weight "
            f"<b>{float(frame.weights[frame.top_key]):.2f}</b> on key x = {float(keys[frame.top_key, 0]):.2f}"
        )
        fig = Figure(figsize=(7.0, 4.8), layout="constrained")
        axes = fig.subplots(2, 1, sharex=True, height_ratios=[2, 1])
        plot_soft_lookup(
            keys,
            values,
            frame.weights,
            frame.query,
            frame.prediction,
            truth=grid,
            axes=tuple(axes),
            title=f"query x = {frame.query:.2f}, bandwidth h = {frame.bandwidth:.3g}",
        )
        out.clear_output(wait=True)
        with out:
            display(fig)

    query_slider.observe(redraw, names="value")
    bandwidth_slider.observe(redraw, names="value")
    redraw()
    return box

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
    ax = new_axes(ax, figsize=(6.0, 5.0))
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
    ax = new_axes(ax)
    ax.scatter(_flat(x_train), _flat(y_train), s=10, color="0.4", label="training data", zorder=2)
    if truth is not None:
        ax.plot(_flat(x_grid), _flat(truth), color="0.5", linestyle="--", linewidth=1, label="true function")
    ax.plot(_flat(x_grid), _flat(prediction), color="tab:orange", linewidth=2, label=label)
    return finish_axes(ax, xlabel="x", ylabel="y", title=title, legend_fontsize="small")


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
    check_curves(curves, "curves")
    ax = new_axes(ax)
    for label, values in curves.items():
        ax.plot(list(bandwidths), list(values), marker="o", markersize=4, label=label)
    for i, (label, level) in enumerate((references or {}).items()):
        ax.axhline(level, color=f"{0.3 + 0.25 * i:.2f}", linestyle="--", linewidth=1, label=label)
    ax.set_xscale("log")
    return finish_axes(ax, xlabel="bandwidth h (log scale)", ylabel=ylabel, title=title, legend_fontsize="small")
