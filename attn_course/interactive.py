"""Kernel-free interactive figures: precomputed frames behind a slider, for the HTML book.

An ipywidgets explorer needs a running kernel; the published book has none, so a slider there
would change nothing. ``slider_figure`` draws one matplotlib figure per parameter value and
wraps the frames in matplotlib's own JavaScript player (``FuncAnimation.to_jshtml``): the
frames are PNGs embedded in the page, the player is inline JavaScript, so moving the slider
really changes the figure, offline, in any browser, with no kernel.

The player's markup is adjusted so the page stays clean and accessible:

* the icon font that matplotlib links from a CDN is dropped; the buttons show text glyphs
  (they already carry ``aria-label``s);
* the image gets alt text, the slider a label, and a readout shows the parameter's value;
* the image shrinks to the width of a phone screen.

* ``slider_figure``  frames of ``draw(fig, value)`` for each value, behind a slider.
"""

from __future__ import annotations

import html
import json
import math
import re
from collections.abc import Callable, Sequence
from numbers import Real
from typing import Any

from attn_course._validation import require_int

__all__ = ["slider_figure"]

# Text glyphs for the player's buttons (matplotlib draws them with an icon font from a CDN).
_ICONS = {  # characters every system font has (U+23EE..23F8 media symbols often are missing)
    "fa fa-minus": "&minus;",
    "fa fa-fast-backward": "|&lsaquo;",
    "fa fa-step-backward": "&lsaquo;",
    "fa fa-play fa-flip-horizontal": "&#x25C0;",
    "fa fa-pause": "&#x2016;",
    "fa fa-play": "&#x25B6;",
    "fa fa-step-forward": "&rsaquo;",
    "fa fa-fast-forward": "&rsaquo;|",
    "fa fa-plus": "+",
}

# Frames at this many dots per inch: sharp enough on a laptop screen, small enough to embed.
_DPI = 80


def _check_values(values: object) -> list[float]:
    if isinstance(values, (str, bytes)) or not isinstance(values, Sequence):
        raise TypeError(f"values must be a sequence of numbers, got {type(values).__name__}")
    if len(values) < 2:
        raise ValueError(f"values must hold at least 2 numbers (one frame each), got {len(values)}")
    out = []
    for i, v in enumerate(values):
        if isinstance(v, bool) or not isinstance(v, Real) or not math.isfinite(float(v)):
            raise TypeError(f"values[{i}] must be a finite real number, got {v!r}")
        out.append(float(v))
    return out


def _accessible(markup: str, *, label: str, alt: str, values: list[float], fmt: str, start: int) -> str:
    """matplotlib's player with no CDN link, text button glyphs, alt text, a labelled slider and a readout."""
    markup = re.sub(r'<link rel="stylesheet"\s+href="[^"]*font-awesome[^"]*">', "", markup)
    for cls, glyph in _ICONS.items():
        markup = markup.replace(f'<i class="{cls}"></i>', f'<span aria-hidden="true">{glyph}</span>')
    anim_id = re.search(r'<img id="_anim_img(\w+)">', markup)
    if anim_id is None:  # matplotlib changed its template: fail loudly rather than ship an unlabelled figure
        raise RuntimeError("unexpected to_jshtml markup: no <img id=\"_anim_img...\">")
    uid = anim_id.group(1)
    markup = markup.replace(
        f'<img id="_anim_img{uid}">',
        f'<img id="_anim_img{uid}" class="slider-figure-frame" alt="{html.escape(alt)}" '
        'style="max-width: 100%; height: auto;">',
    )
    readouts = [fmt.format(v) for v in values]
    markup = markup.replace(
        f'<input id="_anim_slider{uid}" type="range" class="anim-slider"',
        f'<label for="_anim_slider{uid}" class="slider-figure-label">{html.escape(label)} = '
        f'<output id="_anim_value{uid}" for="_anim_slider{uid}">{html.escape(readouts[start])}</output></label>\n'
        f'    <input id="_anim_slider{uid}" type="range" class="anim-slider" aria-label="{html.escape(label)}"',
    )
    # The readout follows the slider, whichever control moved it (buttons set the slider's value
    # without an input event, so watch the frame shown instead).
    script = f"""
<script>
  (function() {{
    var readouts = {json.dumps(readouts)};
    var img = document.getElementById("_anim_img{uid}");
    var slider = document.getElementById("_anim_slider{uid}");
    var out = document.getElementById("_anim_value{uid}");
    function update() {{ out.textContent = readouts[parseInt(slider.value)] || ""; }}
    slider.addEventListener("input", update);
    new MutationObserver(update).observe(img, {{attributes: true, attributeFilter: ["src"]}});
    setTimeout(function() {{ if (window["anim{uid}"]) {{ window["anim{uid}"].set_frame({start}); }} update(); }}, 0);
  }})();
</script>
"""
    return f'<div class="slider-figure">\n{markup}\n{script}</div>'


def slider_figure(
    draw: Callable[[Any, float], None],
    values: Sequence[float],
    label: str,
    *,
    alt: str,
    start: int = 0,
    figsize: tuple[float, float] = (6.4, 4.0),
    fmt: str = "{:.3g}",
    interval_ms: int = 400,
) -> Any:
    """A figure with a slider over ``values`` that works without a kernel (offline HTML).

    ``draw(fig, value)`` draws the picture for one value on an empty ``matplotlib.figure.Figure``
    (add axes with ``fig.subplots()``; don't call ``plt.show``). It is called once per value,
    in order; the frames are embedded as PNGs, so keep ``values`` to a few dozen.

    Args:
        draw: ``draw(fig, value) -> None``.
        values: the slider's positions, at least 2 finite numbers.
        label: the parameter's name, shown next to the slider and read by screen readers.
        alt: alt text for the figure (what it shows, for a reader who cannot see it).
        start: index of the frame shown first.
        figsize: inches; frames are drawn at 80 dots per inch.
        fmt: how the readout formats a value.
        interval_ms: milliseconds per frame when the reader presses play.

    Returns:
        an ``IPython.display.HTML`` (a notebook shows it; the book embeds it).
    """
    from IPython.display import HTML
    from matplotlib.animation import FuncAnimation
    from matplotlib.figure import Figure

    if not callable(draw):
        raise TypeError(f"draw must be callable as draw(fig, value), got {type(draw).__name__}")
    vals = _check_values(values)
    if not isinstance(label, str) or not label.strip():
        raise ValueError(f"label must be a non-empty string, got {label!r}")
    if not isinstance(alt, str) or not alt.strip():
        raise ValueError("alt must be a non-empty string describing the figure")
    require_int(start, "start (an index into values)", 0, len(vals) - 1)
    require_int(interval_ms, "interval_ms")
    fmt.format(vals[0])  # a bad format fails here, with Python's own message

    # A Figure, not pyplot: nothing is left open for the notebook to show a second time.
    fig = Figure(figsize=figsize, dpi=_DPI, layout="constrained")

    def frame(i: int) -> list:
        fig.clear()
        draw(fig, vals[i])
        return []

    anim = FuncAnimation(fig, frame, frames=len(vals), interval=interval_ms, repeat=False)
    markup = anim.to_jshtml(default_mode="once")
    return HTML(_accessible(markup, label=label, alt=alt, values=vals, fmt=fmt, start=start))
