"""The book's own Sphinx extensions (_ext/), without building the book."""

import importlib.util
from pathlib import Path
from types import SimpleNamespace

import pytest

ROOT = Path(__file__).resolve().parents[2]


def load(name: str):
    spec = importlib.util.spec_from_file_location(name, ROOT / "_ext" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def figure_alt():
    return load("figure_alt")


@pytest.fixture(scope="module")
def html_fixes():
    return load("html_fixes")


def test_alt_lines_are_read_in_order(figure_alt):
    md = "## Title\n\nSome text.\n\n% alt: first figure\n% alt:  second figure \n"
    assert [a.strip() for a in figure_alt.ALT_LINE.findall(md)] == ["first figure", "second figure"]


def test_fallback_is_the_last_paragraph_as_plain_text(figure_alt):
    md = "Intro.\n\nThe {term}`weights <attention weights>` of `f` over $x$, see [here](a.html).\n\n% a comment"
    assert figure_alt._fallback(md) == "Figure: The weights of f over x, see here."
    long = "Word " * 200 + ". " + "More. " * 10
    assert len(figure_alt._fallback(long)) <= figure_alt.MAX_CHARS + len("Figure: ") + 3
    assert figure_alt._fallback("") == ""


class Script(str):
    """Stands in for Sphinx's JavaScript: a str (the file name) with attributes."""

    def __new__(cls, filename, **attributes):
        obj = super().__new__(cls, filename)
        obj.attributes = attributes
        return obj


def test_thebe_widget_state_and_duplicates_are_dropped(html_fixes):
    keep = Script("_static/doctools.js")
    scripts = [
        keep,
        Script("", body='const THEBE_JS_URL = "x"'),
        Script("_static/sphinx-thebe.js"),
        Script("", type="application/vnd.jupyter.widget-state+json", body="{}"),
        Script("", body="var a = 1"),
        Script("", body="var a = 1"),
    ]
    context = {"script_files": scripts, "body": '<div role="list" class="citation-list"><div role="doc-biblioentry">'}
    html_fixes.clean_scripts(None, "p", "page.html", context, None)
    assert scripts == [keep, Script("", body="var a = 1")]
    assert 'role="listitem"' in context["body"] and "doc-biblioentry" not in context["body"]


def test_widget_placeholders_are_removed(html_fixes):
    from docutils import nodes

    doc = nodes.container()
    doc += nodes.raw("", html_fixes.WIDGET_VIEW + '{"model_id": "x"}</script>', format="html")
    doc += nodes.raw("", "<p>kept</p>", format="html")
    html_fixes.drop_widget_views(SimpleNamespace(), doc, "page")
    assert [n.astext() for n in doc.children] == ["<p>kept</p>"]
