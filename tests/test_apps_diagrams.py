"""Part III's model diagrams: real figures of patches, each with its alt text."""

import inspect

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
import pytest  # noqa: E402

from attn_course.apps import diagrams  # noqa: E402

DRAW = sorted(n for n, f in inspect.getmembers(diagrams, inspect.isfunction)
              if n.startswith("draw_") and f.__module__ == diagrams.__name__)


def test_alt_text_covers_exactly_the_draw_functions():
    assert DRAW == sorted(diagrams.ALT) and len(DRAW) == 9
    for alt in diagrams.ALT.values():
        assert 40 < len(alt) < 500


@pytest.mark.parametrize("name", DRAW)
def test_each_diagram_is_a_figure_with_its_alt_text(name):
    fig = getattr(diagrams, name)()
    try:
        assert fig.get_label() == diagrams.ALT[name]
        assert len([p for ax in fig.axes for p in ax.patches]) >= 5
        w, h = fig.get_size_inches()
        assert 6 <= w <= 10.5 and h <= 5.5
    finally:
        plt.close(fig)
