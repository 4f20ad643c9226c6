"""Part III's model diagrams: real figures of patches, each with its alt text."""

import inspect

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
import pytest  # noqa: E402

from attn_course.labs import applications_diagrams as diagrams  # noqa: E402

DRAW = sorted(n for n, f in inspect.getmembers(diagrams, inspect.isfunction)
              if n.startswith("draw_") and f.__module__ == diagrams.__name__)


def test_alt_text_covers_exactly_the_draw_functions():
    assert DRAW == sorted(diagrams.ALT) and len(DRAW) == 11
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


def test_chapters_use_the_alt_text_of_each_diagram():
    import json
    import re
    from pathlib import Path

    root = Path(__file__).resolve().parents[2] / "chapters"
    drawn = set()
    for name in ("11_attention_in_language", "12_attention_in_vision", "13_speech_recsys_graphs"):
        nb = json.loads((root / f"{name}.ipynb").read_text(encoding="utf-8"))
        for cell in nb["cells"]:
            src = "".join(cell["source"])
            m = re.fullmatch(r"(draw_\w+)\(\);", src.strip())
            if cell["cell_type"] == "code" and m:
                assert cell["metadata"]["mystnb"]["image"]["alt"] == diagrams.ALT[m.group(1)], (name, m.group(1))
                drawn.add(m.group(1))
    assert drawn == set(DRAW), "every Part III diagram is drawn in a chapter"


def test_optional_packages_load_lazily_and_name_the_pip_package():
    import subprocess
    import sys

    code = ("import sys, attn_course.apps.vision, attn_course.apps.graphs, attn_course.apps.text, "
            "attn_course.apps.speech, attn_course.apps.recsys, attn_course.labs.applications_diagrams;"
            "print(sorted(m for m in ('sklearn', 'scipy', 'timm', 'torch_geometric', 'torchvision') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"
    from attn_course.utils import require_package

    with pytest.raises(ImportError, match="pip install no-such-package-xyz"):
        require_package("no_such_module_xyz", "no-such-package-xyz", "this test")
