"""slider_figure: precomputed frames behind a slider, self-contained and accessible HTML."""

import re

import pytest

from attn_course.interactive import slider_figure


def draw_line(fig, slope):
    ax = fig.subplots()
    ax.plot([0, 1], [0, slope])
    ax.set_title(f"slope {slope}")


def frames(markup: str) -> list[str]:
    return re.findall(r'frames\[\d+\] = "(data:image/png;base64,[^"]+)"', markup)


def test_one_distinct_embedded_frame_per_value_and_nothing_fetched():
    calls = []

    def draw(fig, v):
        calls.append(v)
        draw_line(fig, v)

    markup = slider_figure(draw, [0.5, 1.0, 2.0], "slope", alt="a line through the origin").data
    assert calls[-3:] == [0.5, 1.0, 2.0]  # each value drawn, in order
    imgs = frames(markup)
    assert len(imgs) == 3 and len(set(imgs)) == 3, "each slider position shows its own picture"
    assert "http://" not in markup and "https://" not in markup, "nothing may come from the network"


def test_markup_is_accessible_and_fits_a_phone():
    markup = slider_figure(draw_line, [1, 2], "slope a", alt="a line whose slope follows the slider", fmt="{:.1f}").data
    img = re.search(r"<img [^>]+>", markup).group(0)
    assert 'alt="a line whose slope follows the slider"' in img
    assert "max-width: 100%" in img
    assert re.search(r'<input [^>]*class="anim-slider" aria-label="slope a"', markup)
    assert re.search(r'<label for="_anim_slider\w+"', markup)
    assert "fa fa-" not in markup, "icon-font glyphs need the CDN stylesheet"
    assert '["1.0", "2.0"]' in markup  # the readout's values, formatted


def test_start_frame_is_shown_first():
    markup = slider_figure(draw_line, [1, 2, 3], "slope", alt="a line", start=2).data
    assert ".set_frame(2)" in markup and ">3</output>" in markup


@pytest.mark.parametrize(
    "kwargs, error, match",
    [
        (dict(values=[1.0]), ValueError, "at least 2"),
        (dict(values="12"), TypeError, "sequence of numbers"),
        (dict(values=[1.0, float("nan")]), TypeError, r"values\[1\]"),
        (dict(values=[1.0, True]), TypeError, r"values\[1\]"),
        (dict(label=""), ValueError, "label"),
        (dict(alt=" "), ValueError, "alt"),
        (dict(start=5), ValueError, "start"),
        (dict(interval_ms=0), ValueError, "interval_ms"),
        (dict(draw=None), TypeError, "draw"),
    ],
)
def test_bad_arguments_are_named(kwargs, error, match):
    args = dict(draw=draw_line, values=[1.0, 2.0], label="slope", alt="a line") | kwargs
    with pytest.raises(error, match=match):
        slider_figure(args.pop("draw"), args.pop("values"), args.pop("label"), **args)
