"""Part IV's diagrams: real figures of patches, with their alt text and the labels the chapters rely on."""

import inspect

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
import pytest  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402

from attn_course.labs import inference_diagrams as diagrams  # noqa: E402

DRAW = sorted(n for n, f in inspect.getmembers(diagrams, inspect.isfunction)
              if n.startswith("draw_") and f.__module__ == diagrams.__name__)

EXPECTED = {
    "draw_decoding_loop": ["GPT\n(causal)", "p(next | so far)", "top-k, top-p", "append the chosen token"],
    "draw_prefill_decode": ["prefill: the whole prompt, one pass", "decode: one new token per step", "k$_{5}$"],
    "draw_cache_step": ["decode: 1 token, its query sees every cached key", "cache (one layer): 6 of 8 slots filled",
                        "q$_{5}$", "key position"],
    "draw_gqa_heads": ["MHA: 8 query heads, 8 KV heads", "GQA: 8 query heads, 2 KV heads",
                       "MQA: 8 query heads, 1 KV head", "cache: 2/8 of MHA's"],
    "draw_sliding_window_ring": ["W = 6\nslots", "slot 3", "keys 4 .. 9 are attended"],
    "draw_paged_cache": ["sequence A: block table", "#0  ref 2", "#3  free", "copy on write"],
    "draw_ring_buffer_step": ["position 7: its query sees keys 3 .. 7", "W = 5 keys, itself included",
                              "position 7 -> slot 7 mod 5 = 2", "overwrote position 2"],
    "draw_paging_step": ["decode step 1: every sequence writes position 5", "ref 3", "free",
                         "sequence 0 copies shared block #2 to #3 (copy on write)",
                         "sequence 2 is now the only user of #2: it writes in place"],
    "draw_weight_mapping": ["h.i.attn.c_attn.weight  (D, 3D)", "h.i.attn.qkv.weight  (3D, D)", ".t()"],
}


@pytest.fixture
def draw():
    figs = []

    def call(name, *args, **kwargs):
        figs.append(getattr(diagrams, name)(*args, **kwargs))
        return figs[-1]

    yield call
    for fig in figs:
        plt.close(fig)


def texts(fig: Figure) -> str:
    return "\n".join(t.get_text() for t in fig.findobj(matplotlib.text.Text))


def test_alt_text_covers_exactly_the_public_draw_functions():
    assert DRAW == sorted(diagrams.ALT) == sorted(EXPECTED)
    for name, alt in diagrams.ALT.items():
        assert isinstance(alt, str) and 40 < len(alt) < 500, name


@pytest.mark.parametrize("name", DRAW)
def test_each_diagram_is_a_figure_of_patches_with_its_alt_text_and_labels(draw, name):
    fig = draw(name)
    assert isinstance(fig, Figure) and fig.get_label() == diagrams.ALT[name]
    assert len([p for ax in fig.axes for p in ax.patches]) >= 5
    w, h = fig.get_size_inches()
    assert 6 <= w <= 10.5 and h <= 5.5
    assert all(not ax.axison for ax in fig.axes)
    found = texts(fig)
    for label in EXPECTED[name]:
        assert label in found, f"{name}: {label!r} missing"


def test_arguments_change_the_drawing_and_are_checked(draw):
    assert "MQA: 4 query heads, 1 KV head" in texts(draw("draw_gqa_heads", 4, (4, 1)))
    assert "keys 0 .. 2 are attended" in texts(draw("draw_sliding_window_ring", 4, 2))
    with pytest.raises(ValueError, match="divide"):
        diagrams.draw_gqa_heads(8, (3,))
    with pytest.raises(ValueError, match="window"):
        diagrams.draw_sliding_window_ring(window=40)
    with pytest.raises(ValueError, match="prompt_len"):
        diagrams.draw_prefill_decode(prompt_len=0)


def test_step_figures_draw_any_step_on_a_given_figure(draw):
    """The slider frames: each step of a real cache's trace, drawn on the figure the player gives."""
    from attn_course.labs.cache_shrinking import trace_forked_paging, trace_ring_buffer

    ring = trace_ring_buffer(5, 12)
    fig = Figure(figsize=(8, 3.4))
    assert diagrams.draw_ring_buffer_step(ring[2], fig=fig) is fig
    assert "the ring is filling: 3 of 5 slots written" in texts(fig)
    assert fig.get_label() == diagrams.ALT["draw_ring_buffer_step"]
    assert "position 11 overwrote position 6" in texts(draw("draw_ring_buffer_step", ring[11]))
    paging = trace_forked_paging()
    fig = Figure(figsize=(10, 4.2))
    diagrams.draw_paging_step(paging[1], fig=fig)
    assert "reference counts of #0, #1, #2 go up to 3; nothing is copied" in texts(fig)
    assert "sequence 2 takes free block #10" in texts(draw("draw_paging_step", paging[-1]))


def test_cache_step_draws_prefill_chunks_and_a_given_mask(draw):
    assert "prefill: 4 tokens in one pass, causal mask" in texts(draw("draw_cache_step", 4, 4, 10))
    assert "3 tokens after 5 cached: the causal mask shifted by 5" in texts(draw("draw_cache_step", 8, 3, 10))
    purple = diagrams.light(diagrams.COLORS["weights"], 0.45)

    def filled_cells(fig):
        return sum(1 for p in fig.axes[0].patches if tuple(p.get_facecolor()[:3]) == pytest.approx(purple))

    assert filled_cells(draw("draw_cache_step", 3, 3, 4)) == 6  # the causal triangle of 3 queries
    assert filled_cells(draw("draw_cache_step", 3, 1, 4, allowed=[[False, True, True]])) == 2  # e.g. a padded key
    frame = Figure(figsize=diagrams.CACHE_STEP_SIZE)
    assert diagrams.draw_cache_step(5, 1, 6, fig=frame) is frame and frame.get_label() == diagrams.ALT["draw_cache_step"]
    with pytest.raises(ValueError, match="new <= filled"):
        diagrams.draw_cache_step(2, 3, 4)
    with pytest.raises(ValueError, match="allowed"):
        diagrams.draw_cache_step(3, 1, 4, allowed=[[True, True]])
