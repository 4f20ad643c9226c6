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
