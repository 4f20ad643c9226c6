"""The conceptual diagrams: each draws a real figure with the labels its chapter relies on."""

import inspect

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
import pytest  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402

from attn_course.labs import foundations_diagrams as diagrams  # noqa: E402

DRAW = sorted(n for n, f in inspect.getmembers(diagrams, inspect.isfunction)
              if n.startswith("draw_") and f.__module__ == diagrams.__name__)


def texts(fig: Figure) -> str:
    """Every string drawn in the figure (axes texts and titles), joined."""
    out = [t.get_text() for t in fig.findobj(matplotlib.text.Text)]
    return "\n".join(out)


@pytest.fixture
def draw():
    """Call a draw_ function and close its figure after the test."""
    figs = []

    def call(name, *args, **kwargs):
        fig = getattr(diagrams, name)(*args, **kwargs)
        figs.append(fig)
        return fig

    yield call
    for fig in figs:
        plt.close(fig)


def test_alt_text_covers_exactly_the_public_draw_functions():
    assert DRAW == sorted(diagrams.ALT)
    assert len(DRAW) == 7
    for name, alt in diagrams.ALT.items():
        assert isinstance(alt, str) and 40 < len(alt) < 500, name


@pytest.mark.parametrize("name", DRAW)
def test_each_diagram_is_a_figure_of_patches_with_its_alt_text(draw, name):
    fig = draw(name)
    assert isinstance(fig, Figure)
    patches = [p for ax in fig.axes for p in ax.patches]
    assert len(patches) >= 5, "a diagram is drawn with patches (boxes, arrows)"
    assert fig.get_label() == diagrams.ALT[name]
    w, h = fig.get_size_inches()
    assert 6 <= w <= 10.5 and h <= 5.5, "fits a book column"
    assert all(not ax.axison for ax in fig.axes), "axes are off"


EXPECTED = {
    "draw_word_alignment": ["European", "européenne", "accord", "1992"],
    "draw_encoder_decoder": ["fixed-size context vector c", "(D numbers)", "$x_4$", "$y_3$"],
    "draw_bahdanau_vs_luong": ["Bahdanau", "Luong", "$s_{t-1}$", "$h_t$", "GRU", "additive", "general",
                               "tanh(W_c[c_t; h_t])"],
    "draw_qkv_pipeline": ["4 × 8", "8 × 4", "softmax", "\\sqrt{d_k}", "weights"],
    "draw_split_merge_heads": ["(2, 5, 8)", "(2, 5, 2, 4)", "(2, 2, 5, 4)", "view", "transpose", "reshape",
                               "W_O"],
    "draw_rope_rotation": ["m = 3", "(m-n)\\theta", "3×0.4"],
    "draw_pre_post_norm": ["Post-norm", "Pre-norm", "LayerNorm", "multi-head", "feed-forward"],
}


@pytest.mark.parametrize("name", DRAW)
def test_default_labels(draw, name):
    found = texts(draw(name))
    for label in EXPECTED[name]:
        assert label in found, f"{name}: {label!r} missing"


def test_shapes_come_from_the_arguments(draw):
    found = texts(draw("draw_qkv_pipeline", T=6, d_model=12, d_k=3))
    for label in ("6 × 12", "12 × 3", "6 × 3", "6 × 6"):
        assert label in found
    found = texts(draw("draw_split_merge_heads", B=3, T=4, D=12, H=3))
    for label in ("(3, 4, 12)", "(3, 4, 3, 4)", "(3, 3, 4, 4)", "head 3"):
        assert label in found
    found = texts(draw("draw_rope_rotation", position=5, theta=0.3))
    assert "m = 5" in found and "5×0.3" in found


def test_custom_sentence_pair(draw):
    fig = draw("draw_word_alignment", ["the", "black", "cat"], ["le", "chat", "noir"], [(0, 0), (1, 2), (2, 1)])
    found = texts(fig)
    assert "chat" in found and "black" in found and "crossing" in found
    found = texts(draw("draw_word_alignment", ["a", "b"], ["x", "y"], [(0, 0), (1, 1)]))
    assert "crossing" not in found


@pytest.mark.parametrize("call, error, message", [
    (lambda: diagrams.draw_split_merge_heads(D=7, H=2), ValueError, "D=7 is not divisible by H=2"),
    (lambda: diagrams.draw_split_merge_heads(H=0), ValueError, "H must be a positive int"),
    (lambda: diagrams.draw_qkv_pipeline(T=2.5), ValueError, "T must be a positive int"),
    (lambda: diagrams.draw_rope_rotation(position=-1), ValueError, "position must be a non-negative int"),
    (lambda: diagrams.draw_rope_rotation(theta="x"), TypeError, "theta"),
    (lambda: diagrams.draw_word_alignment(["a"], ["b"]), ValueError, "together"),
    (lambda: diagrams.draw_word_alignment(["a"], ["b"], [(0, 1)]), ValueError, "out of range"),
    (lambda: diagrams.draw_word_alignment("a b", ["b"], [(0, 0)]), ValueError, "source must be"),
    (lambda: diagrams.draw_word_alignment(["a"], ["b"], [(0,)]), ValueError, "pair"),
])
def test_bad_arguments_raise_clear_errors(call, error, message):
    before = plt.get_fignums()
    with pytest.raises(error, match=message.replace("(", r"\(").replace(")", r"\)")):
        call()
    assert plt.get_fignums() == before, "no figure is left open when the arguments are rejected"
