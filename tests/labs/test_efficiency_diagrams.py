"""Part V's conceptual diagrams: real figures of patches, with the alt text the chapters use."""

import inspect

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
import pytest  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402

from attn_course.labs import efficiency_diagrams as diagrams  # noqa: E402

DRAW = sorted(n for n, f in inspect.getmembers(diagrams, inspect.isfunction)
              if n.startswith("draw_") and f.__module__ == diagrams.__name__)
EXPECTED = {
    "draw_quadratic_growth": ["16 scores", "64 scores", "× 4 scores"],
    "draw_sparse_patterns": ["sliding window", "Longformer", "BigBird", "74 of 256 pairs"],
    "draw_block_skipping": ["computed: 10 of 16 tiles", "key blocks 0, 1, 2", "query block 3"],
    "draw_associativity": ["8 × 8", "3 × 3"],
    "draw_linear_recurrence": ["KV cache", "after token 4: 4 rows"],
    "draw_tiling": [],  # labels checked in tests/labs/test_flash_labs.py
    "draw_ring": [],
    "draw_memory_hierarchy": ["132 SMs", "50 MB", "≤ 228 KB", "80 GB", "3.35 TB/s", "FlashAttention's tiles"],
    "draw_gpu_execution": ["HBM (off chip)", "num_stages = 3 K/V buffers", "warp 3", "TMA\n(Hopper)",
                           "num_warps = 4 warps of 32 threads (4 warps = 1 warpgroup)", "in our Triton kernel"],
}
EXPECTED["draw_chunkwise"] = ["N = 12 tokens in 3 chunks of C = 4", "per chunk c:"]


@pytest.mark.parametrize("name", DRAW)
def test_each_diagram_is_a_figure_of_patches_with_its_alt_text(name):
    fig = getattr(diagrams, name)()
    try:
        assert isinstance(fig, Figure) and fig.get_label() == diagrams.ALT[name]
        assert len([p for ax in fig.axes for p in ax.patches]) >= 5
        w, h = fig.get_size_inches()
        assert 6 <= w <= 10.5 and h <= 5.5
        found = "\n".join(t.get_text() for t in fig.findobj(matplotlib.text.Text))
        for label in EXPECTED[name]:
            assert label in found, f"{name}: {label!r} missing"
    finally:
        plt.close(fig)


def test_alt_text_covers_exactly_the_draw_functions():
    assert DRAW == sorted(diagrams.ALT) == sorted(EXPECTED)
    assert all(40 < len(alt) < 500 for alt in diagrams.ALT.values())


def test_arguments_are_validated():
    with pytest.raises(ValueError, match="N"):
        diagrams.draw_quadratic_growth(N=0)


@pytest.mark.parametrize("frame, value, title", [
    (diagrams.score_memory_frame, 131072, "×2 tokens: ×4 score bytes, ×2 Q bytes"),
    (diagrams.sparse_pattern_frame, 4, "W = 4: 26% of pairs, 14 of 16 tiles"),
    (diagrams.decay_weights_frame, 0.9, "weights, decay γ = 0.9"),
])
def test_slider_frames_draw_two_panels(frame, value, title):
    fig = Figure(figsize=(9, 3.6))
    frame(fig, value)
    assert len(fig.axes) == 2
    assert title in [ax.get_title() for ax in fig.axes]


def test_frames_say_what_they_show():
    fig = Figure()
    diagrams.sparse_pattern_frame(fig, 1)  # W = 1: itself, plus the global token
    assert fig.axes[0].get_title() == "W = 1: 9% of pairs, 10 of 16 tiles"  # the diagonal, row 0, column 0
    fig = Figure()
    diagrams.decay_weights_frame(fig, 0.5)
    assert fig.axes[1].get_title() == "half of the weight on the newest key"  # gamma = 0.5: the newest alone
    fig = Figure()
    diagrams.decay_weights_frame(fig, 1.0)
    assert fig.axes[1].get_title() == "half of the weight on the newest 8 keys"  # no decay: spread out
    with pytest.raises(ValueError, match="decay"):
        diagrams.decay_weights_frame(Figure(), 1.5)


def test_chapters_18_to_20_use_the_alt_text_of_each_diagram():
    import json
    import re
    from pathlib import Path

    root = Path(__file__).resolve().parents[2]
    drawn = set()
    for name in ("18_quadratic_wall", "19_sparse_attention", "20_linear_attention"):
        nb = json.loads((root / "chapters" / f"{name}.ipynb").read_text(encoding="utf-8"))
        for cell in nb["cells"]:
            m = re.fullmatch(r"(?:from .*\n+)?(draw_\w+)\([^)]*\);", "".join(cell["source"]).strip())
            if cell["cell_type"] == "code" and m:
                assert cell["metadata"]["mystnb"]["image"]["alt"] == diagrams.ALT[m.group(1)], (name, m.group(1))
                drawn.add(m.group(1))
    assert drawn == {"draw_quadratic_growth", "draw_sparse_patterns", "draw_block_skipping", "draw_associativity",
                     "draw_linear_recurrence", "draw_chunkwise"}
