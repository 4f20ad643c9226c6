"""Interactive explorers for the chapters (ipywidgets), each backed by a pure, tested function.

A widget's callback only reads its sliders, calls the pure function and draws the result, so
everything it shows is computed by code the tests run without a display. ``ipywidgets`` and
``IPython`` are imported inside the functions that build widgets: the rest of the package does
not need them.

* ``lookup_frame``     what the soft-lookup explorer shows for one query and bandwidth.
* ``lookup_explorer``  sliders for the query and the bandwidth over a 1-D Nadaraya-Watson lookup.

The HTML book does not run widgets: every chapter that shows one also draws a static figure
from the same pure function.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from numbers import Real
from typing import Any

import torch

from attn_course._checks import require_floating, shape_error
from attn_course.lookup import _check_bandwidth, effective_number_of_keys, nadaraya_watson

__all__ = ["LookupFrame", "lookup_frame", "lookup_explorer"]


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
    h = _check_bandwidth(bandwidth)
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
        truth: optional function ``x -> f(x)`` drawn as a dashed curve (e.g. ``lookup.true_function``).
    """
    import ipywidgets as widgets
    from IPython.display import display
    from matplotlib.figure import Figure

    from attn_course.plotting import plot_soft_lookup

    _check_1d_pairs(keys, values)
    lo_h, hi_h = (_check_bandwidth(b) for b in bandwidth_range)
    if not lo_h < hi_h:
        raise ValueError(f"bandwidth_range must be (low, high) with low < high, got {bandwidth_range!r}")
    h0 = _check_bandwidth(bandwidth)
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
