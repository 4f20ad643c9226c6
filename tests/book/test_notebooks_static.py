"""Checks on the notebooks as committed (no execution): Colab cell, no outputs, table of contents."""

import json
import re
import subprocess
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
CONFIG = yaml.safe_load((ROOT / "_config.yml").read_text())
REPO_URL = CONFIG["repository"]["url"].rstrip("/")


def course_notebooks():
    """Every notebook a learner opens: chapters, learner exercises and their sources."""
    return sorted(
        list((ROOT / "chapters").glob("*.ipynb"))
        + list((ROOT / "exercises").glob("*.ipynb"))
        + list((ROOT / "exercises" / "source").glob("*.ipynb"))
    )


def tracked_notebooks():
    try:
        out = subprocess.run(["git", "ls-files", "*.ipynb"], cwd=ROOT, capture_output=True, text=True, check=True)
        files = [ROOT / f for f in out.stdout.split()]
    except (OSError, subprocess.CalledProcessError):
        files = []
    return sorted(set(files) | set(course_notebooks()) | set((ROOT / "tests" / "submissions").glob("*.ipynb")))


def test_config_has_one_repository_url_and_colab_launch():
    assert REPO_URL.startswith("https://github.com/")
    assert CONFIG["launch_buttons"]["colab_url"].startswith("https://colab.research.google.com")
    assert CONFIG["execute"]["execute_notebooks"] == "cache"


def test_there_are_course_notebooks():
    assert any((ROOT / "chapters").glob("*.ipynb")) and any((ROOT / "exercises").glob("*.ipynb"))


@pytest.mark.parametrize("path", course_notebooks(), ids=lambda p: str(p.relative_to(ROOT)))
def test_first_code_cell_installs_the_package_in_colab_only(path):
    nb = json.loads(path.read_text())
    code = [c for c in nb["cells"] if c["cell_type"] == "code"]
    assert code, "no code cells"
    first = "".join(code[0]["source"])
    assert 'if "google.colab" in sys.modules:' in first, "the install must run only in Colab"
    assert re.search(rf"git\+{re.escape(REPO_URL)}(?![\w./-])", first), f"the install cell must name {REPO_URL} (from _config.yml)"
    assert "pip" in first and "torch" not in first.replace("Colab's own torch", ""), "never (re)install torch"
    assert nb["cells"][0]["cell_type"] == "markdown" and "".join(nb["cells"][0]["source"]).startswith("# ")


@pytest.mark.parametrize("path", tracked_notebooks(), ids=lambda p: str(p.relative_to(ROOT)))
def test_notebooks_are_committed_without_outputs(path):
    nb = json.loads(path.read_text())  # every committed notebook is valid JSON
    dirty = [i for i, c in enumerate(nb["cells"]) if c["cell_type"] == "code" and (c.get("outputs") or c.get("execution_count"))]
    assert not dirty, f"cells {dirty} have outputs; strip them with `attn-course strip`"


def toc_files():
    toc = yaml.safe_load((ROOT / "_toc.yml").read_text())
    files = [toc["root"]]
    for part in toc.get("parts", []):
        for ch in part.get("chapters", []):
            files.append(ch["file"])
            files += [s["file"] for s in ch.get("sections", [])]
    return files


def test_toc_entries_exist_and_every_page_is_listed():
    listed = set()
    for f in toc_files():
        matches = [p for p in (ROOT / f"{f}.ipynb", ROOT / f"{f}.md") if p.exists()]
        assert matches, f"_toc.yml names {f}, which does not exist"
        listed.add(matches[0].relative_to(ROOT).with_suffix("").as_posix())
    pages = {p.relative_to(ROOT).with_suffix("").as_posix() for p in (ROOT / "chapters").glob("*.ipynb")}
    pages |= {p.relative_to(ROOT).with_suffix("").as_posix() for p in (ROOT / "exercises").glob("*.ipynb")}
    assert not pages - listed, f"not in _toc.yml: {sorted(pages - listed)}"


@pytest.mark.parametrize("number", range(14, 29))
def test_every_chapter_of_parts_iv_and_v_has_a_figure_the_reader_can_move(number):
    """At least one kernel-free slider (attn_course.interactive.slider_figure) per chapter of Parts IV-V;
    the browser test checks that each one responds in the built book."""
    (path,) = (ROOT / "chapters").glob(f"{number:02d}_*.ipynb")
    nb = json.loads(path.read_text(encoding="utf-8"))
    code = "\n".join("".join(c["source"]) for c in nb["cells"] if c["cell_type"] == "code")
    assert "slider_figure(" in code, f"{path.name} has no slider figure"
