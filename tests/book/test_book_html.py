"""Checks of the built HTML book (run by `make test` after building it from executed notebooks).

BOOK_HTML names the built folder; without it these tests look at _build/html and skip if absent.
"""

import os
import re
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
HTML = Path(os.environ.get("BOOK_HTML", ROOT / "_build" / "html"))
REPO_URL = yaml.safe_load((ROOT / "_config.yml").read_text())["repository"]["url"].rstrip("/")

pytestmark = [pytest.mark.book, pytest.mark.skipif(not (HTML / "index.html").exists(), reason=f"no built book at {HTML}")]


def text(html: str) -> str:
    """The visible text: tags dropped (code highlighting splits words into spans)."""
    return re.sub(r"\s+", " ", re.sub(r"<[^>]+>", "", html))


def page(rel: str) -> str:
    path = HTML / rel
    assert path.exists(), f"{rel} was not built"
    return path.read_text(encoding="utf-8")


def test_index_leads_to_the_introduction():
    assert "intro.html" in page("index.html")  # Jupyter Book writes index.html as a redirect
    words = text(page("intro.html"))
    assert "Colab" in words and "attn-course grade" in words and "Why attention" in words


def chapter_pages():
    return sorted(p.relative_to(ROOT).with_suffix(".html").as_posix() for p in (ROOT / "chapters").glob("*.ipynb"))


@pytest.mark.parametrize("rel", chapter_pages())
def test_chapter_rendered_with_outputs_and_figures(rel):
    html = page(rel)
    assert "<h1" in html
    assert "cell_output" in html, "no executed outputs: was the book built from the executed copy?"
    images = re.findall(r'<img[^>]+src="([^"]+\.png)"', html)
    assert images, "no figure rendered"
    for src in images:
        assert (HTML / Path(rel).parent / src).resolve().exists(), f"missing image {src}"
    assert "Traceback (most recent call last)" not in text(html), "a cell raised"


@pytest.mark.parametrize("rel", chapter_pages())
def test_chapter_has_a_colab_launch_button_for_this_repository(rel):
    html = page(rel)
    slug = REPO_URL.removeprefix("https://github.com/")
    nb = Path(rel).with_suffix(".ipynb").as_posix()
    assert f"colab.research.google.com/github/{slug}/blob/main/{nb}" in html


def built_pages():
    return sorted(p for p in HTML.rglob("*.html") if not {"_static", "_sources"} & set(p.relative_to(HTML).parts))


def test_math_and_scripts_are_shipped_with_the_book():
    """The book works from disk: MathJax is in _static, no page loads a script or stylesheet from elsewhere."""
    assert (HTML / "_static" / "mathjax" / "tex-chtml.js").exists(), "offline MathJax (sphinx-mathjax-offline) missing"
    for path in built_pages():
        html = path.read_text(encoding="utf-8")
        remote = re.findall(r'<(?:script|link)\b[^>]*(?:src|href)="((?:https?:)?//[^"]+)"', html)
        remote = [u for u in remote if 'rel="canonical"' not in u]
        assert not remote, f"{path.relative_to(HTML)} loads {remote}"
        assert "THEBE_JS_URL" not in html, f"{path.relative_to(HTML)}: thebe's script is back"


def test_widgets_leave_no_empty_slot():
    """A widget (explorer, tqdm bar) needs a kernel: _ext/html_fixes.py drops its placeholder and state."""
    for path in built_pages():
        html = path.read_text(encoding="utf-8")
        assert "application/vnd.jupyter.widget-view+json" not in html, (
            f"{path.relative_to(HTML)}: a widget output left an empty slot (see _ext/html_fixes.py)"
        )
        assert "widget-state+json" not in html


def test_glossary_lists_the_terms_and_pages_link_it():
    glossary = page("glossary.html")
    for term in ("query", "key", "value", "alignment", "context vector", "head", "mask"):
        assert f'id="term-{term.replace(" ", "-")}"' in glossary, term
    assert 'href="glossary.html#term-query"' in page("intro.html")


def test_exercises_rendered():
    for nb in sorted((ROOT / "exercises").glob("*.ipynb")):
        html = page(f"exercises/{nb.stem}.html")
        assert "not implemented yet" in html  # the check cells ran against the stubs


def test_bibliography_lists_the_references():
    words = text(page("bibliography.html")).lower()
    assert "bahdanau" in words and "sequence to sequence learning" in words
